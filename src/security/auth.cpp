// auth.cpp: token generation and parsing, scope checks. Hashing and randomness: crypto.h.
#include "security/auth.h"

#include "base/crypto.h"
#include "base/utf8.h"

namespace tdapi {

namespace {

constexpr std::string_view kTokenPrefix = "tdk_";
constexpr size_t kKeyIdBytes = 8;
constexpr size_t kSecretBytes = 32;
constexpr size_t kMaxScopeClinicChars = 128;

bool is_lower_hex(std::string_view s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

bool is_clinic_id(std::string_view s) {
  if (s.empty() || !is_valid_utf8(s)) return false;
  size_t chars = 0;
  bool blank = true;
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) return false;
    if (c != ' ') blank = false;
    chars += (c & 0xC0) != 0x80;
  }
  return !blank && chars <= kMaxScopeClinicChars;
}

}  // namespace

bool generate_key(NewKey& out) {
  std::string id_bytes, secret_bytes;
  if (!random_bytes(kKeyIdBytes, id_bytes) || !random_bytes(kSecretBytes, secret_bytes)) {
    return false;
  }
  std::string secret = to_hex(secret_bytes);
  out.key_id = to_hex(id_bytes);
  out.token = std::string(kTokenPrefix) + out.key_id + "_" + secret;
  out.secret_hash = hash_secret(secret);
  return true;
}

std::string hash_secret(std::string_view secret) { return sha256_hex(secret); }

bool secret_matches(std::string_view secret, std::string_view stored_hash) {
  return constant_time_equal(hash_secret(secret), stored_hash);
}

bool is_key_id(std::string_view s) { return s.size() == kKeyIdBytes * 2 && is_lower_hex(s); }

TokenParse parse_authorization(std::string_view h, std::string& key_id, std::string& secret) {
  while (!h.empty() && (h.front() == ' ' || h.front() == '\t')) h.remove_prefix(1);
  while (!h.empty() && (h.back() == ' ' || h.back() == '\t')) h.remove_suffix(1);
  if (h.empty()) return TokenParse::kMissing;
  // The scheme is case-insensitive (RFC 7235), then one or more spaces, then the token.
  constexpr std::string_view kScheme = "bearer";
  if (h.size() <= kScheme.size()) return TokenParse::kMalformed;
  for (size_t i = 0; i < kScheme.size(); ++i) {
    char c = h[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != kScheme[i]) return TokenParse::kMalformed;
  }
  std::string_view rest = h.substr(kScheme.size());
  if (rest.front() != ' ') return TokenParse::kMalformed;
  while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
  const size_t id_len = kKeyIdBytes * 2, secret_len = kSecretBytes * 2;
  if (rest.size() != kTokenPrefix.size() + id_len + 1 + secret_len) return TokenParse::kMalformed;
  if (rest.substr(0, kTokenPrefix.size()) != kTokenPrefix) return TokenParse::kMalformed;
  std::string_view id = rest.substr(kTokenPrefix.size(), id_len);
  if (rest[kTokenPrefix.size() + id_len] != '_') return TokenParse::kMalformed;
  std::string_view sec = rest.substr(kTokenPrefix.size() + id_len + 1);
  if (!is_lower_hex(id) || !is_lower_hex(sec)) return TokenParse::kMalformed;
  key_id.assign(id);
  secret.assign(sec);
  return TokenParse::kOk;
}

bool is_valid_scope(std::string_view scope) {
  if (scope == "audit" || scope == "metrics") return true;
  for (std::string_view prefix : {std::string_view("read:"), std::string_view("write:")}) {
    if (scope.substr(0, prefix.size()) != prefix) continue;
    std::string_view clinic = scope.substr(prefix.size());
    return clinic == "*" || is_clinic_id(clinic);
  }
  return false;
}

bool Principal::may(Access access, std::string_view clinic_id) const {
  if (unrestricted) return true;
  std::string_view prefix = access == Access::kRead ? "read:" : "write:";
  for (const std::string& s : scopes) {
    std::string_view v(s);
    if (v.size() <= prefix.size() || v.substr(0, prefix.size()) != prefix) continue;
    std::string_view clinic = v.substr(prefix.size());
    if (clinic == "*" || clinic == clinic_id) return true;
  }
  return false;
}

bool Principal::holds(std::string_view scope) const {
  if (unrestricted) return true;
  for (const std::string& s : scopes) {
    if (s == scope) return true;
  }
  return false;
}

}  // namespace tdapi
