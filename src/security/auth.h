// auth.h: access keys: the token format, hashing of secrets, the Authorization header, scopes.
//
// A token is `tdk_<key_id>_<secret>`: key_id is 16 hex digits (64 random bits, public: it names
// the key in logs and the audit trail), secret is 64 hex digits (256 bits from the CSPRNG).
// Only SHA-256(secret) is stored; a presented secret is hashed and compared in constant time.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace tdapi {

// A freshly generated key: the token is shown once, only secret_hash is stored.
struct NewKey {
  std::string key_id;
  std::string token;
  std::string secret_hash;
};

// Generates a key from the CSPRNG. Returns false (out untouched) if the generator fails.
bool generate_key(NewKey& out);

// SHA-256 of a token's secret, hex. This function can't fail.
std::string hash_secret(std::string_view secret);

// True when secret hashes to stored_hash (constant time in the secret's content).
bool secret_matches(std::string_view secret, std::string_view stored_hash);

enum class TokenParse {
  kMissing,    // no Authorization header (or an empty one)
  kMalformed,  // not `Bearer tdk_<16 hex>_<64 hex>`
  kOk,
};

// Parses an Authorization header value. On kOk, key_id and secret are set.
TokenParse parse_authorization(std::string_view header, std::string& key_id, std::string& secret);

// True for a well-formed key id (16 lower-case hex digits): what `keys revoke` accepts.
bool is_key_id(std::string_view s);

// True for a scope a key may hold: `read:<clinic_id>`, `write:<clinic_id>`, `read:*`,
// `write:*`, `audit`, `metrics`. A clinic_id follows the record rules (1..128 code points of
// valid UTF-8, no control characters, not only whitespace).
bool is_valid_scope(std::string_view scope);

enum class Access { kRead, kWrite };

// What an authenticated caller may do. Auth off: `anonymous` with every permission.
struct Principal {
  std::string key_id = "anonymous";
  std::vector<std::string> scopes;
  bool unrestricted = false;  // auth off (the local mode): everything is allowed

  // True when the key may read (or write) the tests of clinic_id.
  bool may(Access access, std::string_view clinic_id) const;
  // True when the key holds exactly this scope ("audit", "metrics").
  bool holds(std::string_view scope) const;
};

}  // namespace tdapi
