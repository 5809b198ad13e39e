// access_control.cpp: bearer-token authentication with a short-lived key cache.
#include "access_control.h"

#include <iterator>

namespace tdapi {

namespace {
constexpr size_t kMaxCachedKeys = 10000;  // unknown ids from a flood of bad tokens stay bounded
}

AuthOutcome Authenticator::authenticate(std::string_view header, Store& store, Principal& principal,
                                        Status& storage_error) {
  principal = Principal();
  if (!options_.auth) {
    principal.unrestricted = true;
    return AuthOutcome::kOk;
  }
  principal.key_id = "unknown";
  std::string key_id, secret;
  switch (parse_authorization(header, key_id, secret)) {
    case TokenParse::kMissing:
      return AuthOutcome::kMissing;
    case TokenParse::kMalformed:
      return AuthOutcome::kMalformed;
    case TokenParse::kOk:
      break;
  }
  principal.key_id = key_id;
  const auto now = std::chrono::steady_clock::now();
  Cached entry;
  bool fresh = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = cache_.find(key_id);
    if (it != cache_.end() && now - it->second.fetched < kKeyCacheTtl) {
      entry = it->second;
      fresh = true;
    }
  }
  if (!fresh) {
    Status s = store.find_key(key_id, entry.key);
    if (!s.ok() && s.code() != StatusCode::kNotFound) {
      storage_error = s;
      return AuthOutcome::kStorageError;
    }
    entry.found = s.ok();
    entry.fetched = now;
    std::lock_guard<std::mutex> lock(mu_);
    if (cache_.size() >= kMaxCachedKeys) {
      // Unknown ids (a flood of made-up tokens) go first, so real keys stay cached.
      for (auto it = cache_.begin(); it != cache_.end();) {
        it = it->second.found ? std::next(it) : cache_.erase(it);
      }
      if (cache_.size() >= kMaxCachedKeys) cache_.clear();
    }
    cache_[key_id] = entry;
  }
  if (!entry.found || !secret_matches(secret, entry.key.secret_hash)) {
    return AuthOutcome::kUnknownKey;
  }
  if (!entry.key.revoked_at.empty()) return AuthOutcome::kRevoked;
  principal.scopes = std::move(entry.key.scopes);
  return AuthOutcome::kOk;
}

}  // namespace tdapi
