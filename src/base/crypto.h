// crypto.h: the project's one wrapper of OpenSSL's libcrypto: CSPRNG bytes, SHA-256, a
// constant-time comparison, HKDF and AES-SIV. No cryptography is written here, only called.
#pragma once

#include <string>
#include <string_view>

namespace tdapi {

// Fills out with n bytes from OpenSSL's CSPRNG (seeded from the OS). Returns false, leaving out
// empty, when the generator fails (then no key may be created).
bool random_bytes(size_t n, std::string& out);

// SHA-256 of data as 64 lower-case hex digits. This function can't fail.
std::string sha256_hex(std::string_view data);

// True when a and b hold the same bytes; the time taken depends only on their lengths.
bool constant_time_equal(std::string_view a, std::string_view b);

// Lower-case hex of bytes. This function can't fail.
std::string to_hex(std::string_view bytes);

// HKDF-SHA256 (RFC 5869, no salt): `length` bytes of key material for the purpose `info`, drawn
// from `key`. Returns false, leaving out empty, when libcrypto fails.
bool hkdf_sha256(std::string_view key, std::string_view info, size_t length, std::string& out);

// AES-256-SIV (RFC 5297) under a 64-byte key with one associated-data string: deterministic
// authenticated encryption (equal inputs give equal outputs, which is all that shows).
// siv_seal: out = the 16-byte synthetic IV (the tag), then the ciphertext (as long as the
// plaintext, which must not be empty). Returns false, leaving out empty, when libcrypto fails.
bool siv_seal(std::string_view key, std::string_view aad, std::string_view plaintext,
              std::string& out);
// siv_open: the plaintext of what siv_seal made under the same key and aad. Returns false,
// leaving plaintext empty, when sealed is malformed or was altered, or the key or aad differ.
bool siv_open(std::string_view key, std::string_view aad, std::string_view sealed,
              std::string& plaintext);

}  // namespace tdapi
