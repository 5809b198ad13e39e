// keys.h: access keys as the stores keep them (what a key may do is security/auth.h).
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace tdapi {

// An access key as stored: the hash of its secret, never the secret.
struct ApiKey {
  std::string key_id;  // 16 hex digits (auth.h)
  std::string name;
  std::vector<std::string> scopes;
  std::string secret_hash;  // SHA-256 hex of the secret
  std::string created_at;
  std::string revoked_at;  // empty while the key is valid
};

// A key's scopes as the stores keep them: a JSON array of strings, and back (what is not such
// an array reads as no scopes). These functions can't fail.
std::string scopes_json(const std::vector<std::string>& scopes);
std::vector<std::string> scopes_from_json(std::string_view text);

}  // namespace tdapi
