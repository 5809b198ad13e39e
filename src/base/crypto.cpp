// crypto.cpp: the only file that includes OpenSSL headers.
#include "base/crypto.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <memory>

namespace tdapi {

bool random_bytes(size_t n, std::string& out) {
  out.assign(n, '\0');
  if (RAND_bytes(reinterpret_cast<unsigned char*>(out.data()), static_cast<int>(n)) != 1) {
    out.clear();
    return false;
  }
  return true;
}

std::string sha256_hex(std::string_view data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  // EVP_Digest with a built-in algorithm fails only on allocation failure.
  if (EVP_Digest(data.data(), data.size(), digest, &length, EVP_sha256(), nullptr) != 1) abort();
  return to_hex(std::string_view(reinterpret_cast<const char*>(digest), length));
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  return CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

std::string to_hex(std::string_view bytes) {
  static const char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char ch : bytes) {
    unsigned char c = static_cast<unsigned char>(ch);
    out += kHex[c >> 4];
    out += kHex[c & 0xf];
  }
  return out;
}

namespace {

constexpr size_t kSivTagBytes = 16;
constexpr size_t kSivKeyBytes = 64;

// AES-256-SIV from the default provider, fetched once (fetching is a provider look-up under a
// lock); null when the provider has none.
const EVP_CIPHER* siv_cipher() {
  static EVP_CIPHER* const cipher = EVP_CIPHER_fetch(nullptr, "AES-256-SIV", nullptr);
  return cipher;
}

struct CipherCtxFree {
  void operator()(EVP_CIPHER_CTX* c) const { EVP_CIPHER_CTX_free(c); }
};
using CipherCtx = std::unique_ptr<EVP_CIPHER_CTX, CipherCtxFree>;

const unsigned char* bytes(std::string_view s) {
  return reinterpret_cast<const unsigned char*>(s.data());
}

}  // namespace

bool hkdf_sha256(std::string_view key, std::string_view info, size_t length, std::string& out) {
  out.clear();
  EVP_KDF* kdf = EVP_KDF_fetch(nullptr, "HKDF", nullptr);
  EVP_KDF_CTX* ctx = kdf ? EVP_KDF_CTX_new(kdf) : nullptr;
  EVP_KDF_free(kdf);
  if (!ctx) return false;
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
                         OSSL_PARAM_construct_octet_string(
                             OSSL_KDF_PARAM_KEY, const_cast<char*>(key.data()), key.size()),
                         OSSL_PARAM_construct_octet_string(
                             OSSL_KDF_PARAM_INFO, const_cast<char*>(info.data()), info.size()),
                         OSSL_PARAM_construct_end()};
  out.assign(length, '\0');
  const bool ok =
      EVP_KDF_derive(ctx, reinterpret_cast<unsigned char*>(out.data()), length, params) == 1;
  EVP_KDF_CTX_free(ctx);
  if (!ok) out.clear();
  return ok;
}

bool siv_seal(std::string_view key, std::string_view aad, std::string_view plaintext,
              std::string& out) {
  out.clear();
  const EVP_CIPHER* cipher = siv_cipher();
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!cipher || !ctx || key.size() != kSivKeyBytes || plaintext.empty()) return false;
  std::string sealed(kSivTagBytes + plaintext.size(), '\0');
  auto* ct = reinterpret_cast<unsigned char*>(sealed.data()) + kSivTagBytes;
  int n = 0, tail = 0;
  // SIV takes the associated data first (an update without output), then the whole plaintext
  // in one update.
  if (EVP_EncryptInit_ex2(ctx.get(), cipher, bytes(key), nullptr, nullptr) != 1 ||
      EVP_EncryptUpdate(ctx.get(), nullptr, &n, bytes(aad), static_cast<int>(aad.size())) != 1 ||
      EVP_EncryptUpdate(ctx.get(), ct, &n, bytes(plaintext), static_cast<int>(plaintext.size())) !=
          1 ||
      static_cast<size_t>(n) != plaintext.size() ||
      EVP_EncryptFinal_ex(ctx.get(), ct + n, &tail) != 1 || tail != 0 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_GET_TAG, static_cast<int>(kSivTagBytes),
                          sealed.data()) != 1) {
    return false;
  }
  out = std::move(sealed);
  return true;
}

bool siv_open(std::string_view key, std::string_view aad, std::string_view sealed,
              std::string& plaintext) {
  plaintext.clear();
  const EVP_CIPHER* cipher = siv_cipher();
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (!cipher || !ctx || key.size() != kSivKeyBytes || sealed.size() <= kSivTagBytes) return false;
  std::string tag(sealed.substr(0, kSivTagBytes));
  std::string_view ct = sealed.substr(kSivTagBytes);
  std::string pt(ct.size(), '\0');
  int n = 0, tail = 0;
  // The update that decrypts also checks the tag, and fails when it does not match.
  const bool ok =
      EVP_DecryptInit_ex2(ctx.get(), cipher, bytes(key), nullptr, nullptr) == 1 &&
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_AEAD_SET_TAG, static_cast<int>(kSivTagBytes),
                          tag.data()) == 1 &&
      EVP_DecryptUpdate(ctx.get(), nullptr, &n, bytes(aad), static_cast<int>(aad.size())) == 1 &&
      EVP_DecryptUpdate(ctx.get(), reinterpret_cast<unsigned char*>(pt.data()), &n, bytes(ct),
                        static_cast<int>(ct.size())) == 1 &&
      static_cast<size_t>(n) == ct.size() &&
      EVP_DecryptFinal_ex(ctx.get(), reinterpret_cast<unsigned char*>(pt.data()) + n, &tail) == 1 &&
      tail == 0;
  if (ok) plaintext = std::move(pt);
  return ok;
}

}  // namespace tdapi
