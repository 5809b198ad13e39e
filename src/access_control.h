// access_control.h: who is asking. Turns an Authorization header into a Principal through a
// short-lived cache of keys (so a revocation or a new key is felt within kKeyCacheTtl).
#pragma once

#include <chrono>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>

#include "auth.h"
#include "store.h"

namespace tdapi {

struct AccessOptions {
  bool auth = false;  // off: the local mode, every request is `anonymous` and unrestricted
  bool audit = true;  // record every access to patient data in the audit trail
};

enum class AuthOutcome {
  kOk,
  kMissing,       // no Authorization header: 401
  kMalformed,     // not a Bearer token of ours: 401
  kUnknownKey,    // no such key, or the secret does not match: 401
  kRevoked,       // the key was revoked: 401
  kStorageError,  // the key could not be looked up: 503
};

// How long a looked-up key (or its absence) is trusted before it is read again.
constexpr std::chrono::milliseconds kKeyCacheTtl{500};

// Safe for concurrent use from several threads.
class Authenticator {
 public:
  explicit Authenticator(AccessOptions options) : options_(options) {}
  const AccessOptions& options() const { return options_; }

  // Resolves header into principal. Auth off: kOk with an unrestricted `anonymous` principal.
  // Otherwise kOk with the key's id and scopes, or why not; principal.key_id is set whenever a
  // well-formed token named a key (for the logs and the audit trail), "unknown" otherwise.
  // storage_error is set for kStorageError.
  AuthOutcome authenticate(std::string_view header, Store& store, Principal& principal,
                           Status& storage_error);

 private:
  struct Cached {
    bool found = false;
    ApiKey key;
    std::chrono::steady_clock::time_point fetched;
  };
  AccessOptions options_;
  std::mutex mu_;
  std::unordered_map<std::string, Cached> cache_;
};

}  // namespace tdapi
