// access_control.cpp: bearer-token authentication with a short-lived key cache.
#include "security/access_control.h"

#include <time.h>

#include <algorithm>
#include <iterator>

#include "base/json.h"

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
    MutexLock lock(mu_);
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
    MutexLock lock(mu_);
    if (cache_.size() >= kMaxCachedKeys) {
      // Unknown ids (a flood of made-up tokens) go first, so real keys stay cached.
      for (auto it = cache_.begin(); it != cache_.end();) {
        it = it->second.found ? std::next(it) : cache_.erase(it);
      }
      if (cache_.size() >= kMaxCachedKeys) cache_.clear();
    }
    cache_[key_id] = entry;
  }
  if (!entry.found) return AuthOutcome::kUnknownKey;
  if (!secret_matches(secret, entry.key.secret_hash)) return AuthOutcome::kWrongSecret;
  if (!entry.key.revoked_at.empty()) return AuthOutcome::kRevoked;
  principal.scopes = std::move(entry.key.scopes);
  return AuthOutcome::kOk;
}

bool AuthFailures::note(std::string_view addr, std::string_view reason, std::string_view key_id,
                        std::string_view request_id, int64_t steady_ms, int64_t wall_ms,
                        bool tally_it) {
  MutexLock lock(mu_);
  // The bucket: refilled at rate_per_minute_, at most burst_ tokens; a failure takes one.
  std::string address(addr);
  auto it = buckets_.find(address);
  if (it == buckets_.end()) {
    if (buckets_.size() >= kMaxBuckets) {
      // Forget addresses whose bucket has refilled (idle ones); if none has, all of them.
      for (auto b = buckets_.begin(); b != buckets_.end();) {
        double refilled = b->second.tokens + static_cast<double>(steady_ms - b->second.last_ms) *
                                                 static_cast<double>(rate_per_minute_) / 60000.0;
        b = refilled >= static_cast<double>(burst_) ? buckets_.erase(b) : std::next(b);
      }
      if (buckets_.size() >= kMaxBuckets) buckets_.clear();
    }
    it = buckets_.emplace(address, Bucket{static_cast<double>(burst_), steady_ms}).first;
  }
  Bucket& b = it->second;
  if (steady_ms > b.last_ms) {
    b.tokens = std::min(static_cast<double>(burst_),
                        b.tokens + static_cast<double>(steady_ms - b.last_ms) *
                                       static_cast<double>(rate_per_minute_) / 60000.0);
    b.last_ms = steady_ms;
  }
  const bool allowed = b.tokens >= 1.0;
  if (allowed) b.tokens -= 1.0;
  if (!tally_it) return allowed;

  // The tally of this address and minute.
  const int64_t minute = wall_ms / 60000;
  auto t = tallies_.find(address);
  if (t != tallies_.end() && t->second.minute != minute) {
    due_.push_back(entry_of(t->first, t->second));
    tallies_.erase(t);
    t = tallies_.end();
  }
  if (t == tallies_.end()) {
    if (tallies_.size() >= kMaxTallies) address = "*";
    t = tallies_.find(address);
    if (t != tallies_.end() && t->second.minute != minute) {
      due_.push_back(entry_of(t->first, t->second));
      tallies_.erase(t);
      t = tallies_.end();
    }
    if (t == tallies_.end()) {
      t = tallies_.emplace(address, Tally{}).first;
      t->second.minute = minute;
      t->second.first_request_id = std::string(request_id);
    }
  }
  Tally& tally = t->second;
  ++tally.failures;
  if (!allowed) ++tally.limited;
  ++tally.reasons[std::string(reason)];
  if (!key_id.empty() &&
      std::find(tally.key_ids.begin(), tally.key_ids.end(), key_id) == tally.key_ids.end()) {
    if (tally.key_ids.size() < kMaxKeyIdsPerTally) {
      tally.key_ids.emplace_back(key_id);
    } else {
      tally.more_key_ids = true;
    }
  }
  return allowed;
}

std::vector<AuditEntry> AuthFailures::take_due(int64_t wall_ms, bool all) {
  MutexLock lock(mu_);
  std::vector<AuditEntry> out = std::move(due_);
  due_.clear();
  const int64_t minute = wall_ms / 60000;
  for (auto t = tallies_.begin(); t != tallies_.end();) {
    if (all || t->second.minute < minute) {
      out.push_back(entry_of(t->first, t->second));
      t = tallies_.erase(t);
    } else {
      ++t;
    }
  }
  return out;
}

AuditEntry AuthFailures::entry_of(const std::string& addr, const Tally& t) {
  AuditEntry a;
  a.request_id = t.first_request_id;
  a.key_id = "unauthenticated";
  a.action = "auth_failed";
  a.outcome = 401;
  std::string& d = a.detail;
  JsonWriter w(d);
  w.begin_object();
  w.field("remote_addr", addr);
  w.key("minute");
  // The minute as UTC "YYYY-MM-DDTHH:MMZ".
  time_t secs = static_cast<time_t>(t.minute * 60);
  struct tm tm {};
  gmtime_r(&secs, &tm);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%MZ", &tm);
  w.string(buf);
  w.field("failures", t.failures);
  w.field("limited", t.limited);
  w.key("reasons");
  w.begin_object();
  for (const auto& [reason, n] : t.reasons) w.field(reason, n);
  w.end_object();
  w.key("key_ids");
  w.begin_array();
  for (const std::string& k : t.key_ids) w.string(k);
  w.end_array();
  if (t.more_key_ids) {
    w.key("more_key_ids");
    w.boolean(true);
  }
  w.end_object();
  return a;
}

}  // namespace tdapi
