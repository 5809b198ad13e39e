// metrics.h: the service's counters, gauges and histograms, rendered in Prometheus' text format.
#pragma once

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "base/thread_annotations.h"
#include "store/status.h"
#include "store/store.h"
#include "store/write_engine.h"

namespace tdapi {

// A histogram with fixed upper bounds, updated lock-free (relaxed atomics: a scrape may see one
// observation's bucket before its count, which Prometheus tolerates). Values are summed in
// units of 1/sum_scale (e.g. 1e9 for seconds: nanoseconds; each value rounded to one), so the
// sum is an integer counter.
// Safe for concurrent use from several threads.
class Histogram {
 public:
  Histogram(std::vector<double> bounds, double sum_scale);
  // Counts one value. This function can't fail.
  void observe(double value);
  // Appends the _bucket, _sum and _count lines of `name` with `labels` (`a="b"` pairs,
  // comma-separated, or empty).
  void render(std::string& out, const std::string& name, const std::string& labels) const;
  const std::vector<double>& bounds() const { return bounds_; }
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }

 private:
  std::vector<double> bounds_;
  double sum_scale_;
  std::unique_ptr<std::atomic<uint64_t>[]> buckets_;  // per bound, and +Inf; not cumulative
  std::atomic<uint64_t> sum_{0};
  std::atomic<uint64_t> count_{0};
};

// Why access control refused a request (the reason label of tdapi_auth_denials_total).
enum class DenialReason {
  kNoToken,          // 401: no Authorization header
  kMalformedToken,   // 401
  kUnknownKey,       // 401
  kRevokedKey,       // 401
  kForbidden,        // 403: a valid key without the scope
  kAuthRateLimited,  // 429: too many failed authentications from the client's address
};

// The process's identity and configuration, shown as labels and gauges. Set once at start.
struct ProcessInfo {
  std::string version = "unknown";
  std::string backend = "sqlite";  // "sqlite" or "postgresql"
  std::string node = "1";          // APP_NODES: which node (TDAPI_NODE from scripts/run.sh)
  long long starts = 1;            // how often the supervisor started this node (TDAPI_STARTS)
  int worker_threads = 0;
};

// Safe for concurrent use from several threads. The request path (record, the worker gauges,
// denials) uses only relaxed atomics: no lock is taken per request once a route has been seen.
class Metrics : public WriteObserver {
 public:
  Metrics();
  ~Metrics();

  // Counts one answered request. route is a fixed route name ("GET /tests", "unmatched"); at
  // most kMaxRoutes distinct names are kept apart, the rest count as "other".
  void record(const std::string& route, int status, double duration_ms);

  // Counts a request refused by access control (401 or 403) and why.
  void record_auth_denial(int status, DenialReason reason);
  // Counts an audit entry written.
  void record_audit_write();

  // Counts a committed correction by the status it gave (final, amended, corrected,
  // entered-in-error), or a correction the store refused (CorrectionRefusal, kNone excluded).
  void record_correction(TestStatus status);
  void record_correction_refusal(CorrectionRefusal refusal);
  // Long-polling feed requests parked now (the server's parked set: +1 parked, -1 answered).
  void add_feed_waiting(int delta);
  int64_t feed_waiting() const { return feed_waiting_.load(std::memory_order_relaxed); }

  // One group-commit transaction of `jobs` write requests that took `seconds`: committed
  // (ok) or rolled back as a whole. Called by the write engine's writer thread (the service
  // gives the stores this object as their WriteObserver).
  void record_transaction(size_t jobs, double seconds, bool ok) override;
  // A write request handed to the write engine (+1), and answered (-1).
  void add_pending_writes(int delta) override;

  // A worker thread started serving a request (accepted it) or finished it.
  void worker_busy();
  void worker_done();
  // Requests between their first byte read and their log line.
  void request_started();
  void request_finished();

  void set_process_info(const ProcessInfo& info) EXCLUDES(info_mu_);
  // This process's node number (ProcessInfo::node).
  std::string node() const EXCLUDES(info_mu_);

  // Renders every metric, plus the store's counters and sizes and the result of its health
  // check (health: Ok, or what /healthz would report). This function can't fail.
  std::string render(const StoreStats& store, const Status& health) const EXCLUDES(info_mu_);

  // Upper bounds of the latency histogram buckets, in seconds.
  static const std::vector<double>& bucket_bounds();
  // Upper bounds of the group-commit batch size histogram (write requests per transaction).
  static const std::vector<double>& batch_bounds();
  // Upper bounds of the commit duration histogram, in seconds.
  static const std::vector<double>& commit_bounds();

  static constexpr size_t kMaxRoutes = 32;
  static constexpr int kMaxStatus = 600;

 private:
  struct RouteSlot;
  RouteSlot* slot_for(const std::string& route) EXCLUDES(add_mu_);

  Mutex add_mu_;  // taken only to add a route seen for the first time
  std::array<std::atomic<RouteSlot*>, kMaxRoutes + 1> slots_{};  // the last: "other"
  std::vector<std::unique_ptr<RouteSlot>> owned_ GUARDED_BY(add_mu_);
  std::array<std::atomic<uint64_t>, 6> denials_{};  // by DenialReason
  std::atomic<uint64_t> audit_writes_{0};
  std::array<std::atomic<uint64_t>, 5> corrections_{};  // by TestStatus
  std::array<std::atomic<uint64_t>, 6> refusals_{};     // by CorrectionRefusal
  std::atomic<int64_t> feed_waiting_{0};
  Histogram batch_size_;
  Histogram commit_seconds_;
  std::atomic<uint64_t> committed_{0}, rolled_back_{0};
  std::atomic<int64_t> last_commit_ms_{0};  // wall clock, ms since the epoch; 0: none yet
  std::atomic<int64_t> pending_writes_{0};
  std::atomic<int64_t> busy_workers_{0};
  std::atomic<int64_t> in_flight_{0};
  double start_time_seconds_;
  mutable Mutex info_mu_;
  ProcessInfo info_ GUARDED_BY(info_mu_);
};

// The process's metrics.
Metrics& global_metrics();

}  // namespace tdapi
