// access_control.h: who is asking. Turns an Authorization header into a Principal through a
// short-lived cache of keys (so a revocation or a new key is felt within kKeyCacheTtl).
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "base/thread_annotations.h"
#include "security/auth.h"
#include "store/audit.h"
#include "store/store.h"

namespace tdapi {

struct AccessOptions {
  bool auth = false;  // off: the local mode, every request is `anonymous` and unrestricted
  bool audit = true;  // record every access to patient data in the audit trail
  // A read's entry on disk (fsync) before the answer; false: committed before the answer without
  // waiting for the disk (crash-safe), on disk within kCrashSafeSyncWindowMs.
  bool audit_reads_durable = false;
  // Failed authentications per client address (nginx's ANON_RATE/ANON_BURST): a request whose
  // token does not authenticate is as anonymous as one without, and over this limit is answered
  // 429. rate_per_minute: tokens added per minute; burst: the bucket's size.
  long long failure_rate_per_minute = 6000;
  long long failure_burst = 200;
};

// Failed authentications (a token that is malformed, names no key, has the wrong secret or a
// revoked key), per client address: a token bucket that limits them, and a tally per address
// and wall-clock minute that becomes one audit entry (action "auth_failed", outcome 401, the
// count and reasons in its detail) once the minute is over, instead of an entry per request.
// At most kMaxTallies addresses are tallied apart per minute, the rest under the address "*";
// at most kMaxBuckets addresses are limited apart (past that, idle ones are forgotten).
// Times are passed in (steady ms for the bucket, wall ms since the epoch for the minute), so
// this class is unit-testable. Safe for concurrent use from several threads.
class AuthFailures {
 public:
  static constexpr size_t kMaxTallies = 1000;
  static constexpr size_t kMaxBuckets = 10000;
  static constexpr size_t kMaxKeyIdsPerTally = 4;

  AuthFailures(long long rate_per_minute, long long burst)
      : rate_per_minute_(rate_per_minute), burst_(burst < 1 ? 1 : burst) {}

  // Counts one failure from addr (reason: no_token, malformed_token, unknown_key, wrong_secret,
  // revoked_key; key_id: the key the token named, or ""). Returns false when the address is
  // over its limit: the request is to be answered 429 (it is tallied all the same).
  // With tally false the failure only takes from the bucket (a request without a token).
  bool note(std::string_view addr, std::string_view reason, std::string_view key_id,
            std::string_view request_id, int64_t steady_ms, int64_t wall_ms, bool tally = true)
      EXCLUDES(mu_);

  // The audit entries of tallies whose minute ended before wall_ms (every tally with all),
  // taken out: the caller appends them. ts, seq and hashes are left to the store.
  std::vector<AuditEntry> take_due(int64_t wall_ms, bool all) EXCLUDES(mu_);

 private:
  struct Bucket {
    double tokens = 0;
    int64_t last_ms = 0;
  };
  struct Tally {
    int64_t minute = 0;  // wall ms / 60000
    long long failures = 0, limited = 0;
    std::map<std::string, long long> reasons;
    std::vector<std::string> key_ids;  // distinct, at most kMaxKeyIdsPerTally
    bool more_key_ids = false;
    std::string first_request_id;
  };
  static AuditEntry entry_of(const std::string& addr, const Tally& t);

  long long rate_per_minute_;
  long long burst_;
  Mutex mu_;
  std::unordered_map<std::string, Bucket> buckets_ GUARDED_BY(mu_);
  std::map<std::string, Tally> tallies_ GUARDED_BY(mu_);  // by address ("*": the rest)
  std::vector<AuditEntry> due_ GUARDED_BY(mu_);  // tallies of past minutes, replaced by a new one
};

enum class AuthOutcome {
  kOk,
  kMissing,       // no Authorization header: 401
  kMalformed,     // not a Bearer token of ours: 401
  kUnknownKey,    // no such key: 401
  kWrongSecret,   // the key exists but the secret does not match: 401 (told apart only in the
                  // audit trail's tally, never to the client)
  kRevoked,       // the key was revoked: 401
  kStorageError,  // the key could not be looked up: 503
};

// How long a looked-up key (or its absence) is trusted before it is read again.
constexpr std::chrono::milliseconds kKeyCacheTtl{500};

// Safe for concurrent use from several threads.
class Authenticator {
 public:
  explicit Authenticator(AccessOptions options)
      : options_(options), failures_(options.failure_rate_per_minute, options.failure_burst) {}
  const AccessOptions& options() const { return options_; }
  // Failed authentications of this process (http_router counts them; the server writes the
  // tallies to the audit trail).
  AuthFailures& failures() { return failures_; }

  // Resolves header into principal. Auth off: kOk with an unrestricted `anonymous` principal.
  // Otherwise kOk with the key's id and scopes, or why not; principal.key_id is set whenever a
  // well-formed token named a key (for the logs and the audit trail), "unknown" otherwise.
  // storage_error is set for kStorageError.
  AuthOutcome authenticate(std::string_view header, Store& store, Principal& principal,
                           Status& storage_error) EXCLUDES(mu_);

 private:
  struct Cached {
    bool found = false;
    ApiKey key;
    std::chrono::steady_clock::time_point fetched;
  };
  AccessOptions options_;
  AuthFailures failures_;
  Mutex mu_;
  std::unordered_map<std::string, Cached> cache_ GUARDED_BY(mu_);
};

}  // namespace tdapi
