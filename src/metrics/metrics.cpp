// metrics.cpp: Prometheus text exposition of the service's counters, gauges and histograms.
#include "metrics/metrics.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <utility>

namespace tdapi {

namespace {

// A sample's value: enough digits for Unix timestamps and growing sums.
std::string number(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.15g", v);
  return buf;
}

// A bucket bound, as the le label: short ("0.0005", "2.5").
std::string bound(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

double now_seconds() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// Label values as Prometheus' text format wants them: \ " and newline escaped.
std::string label_value(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out;
}

void header(std::string& out, const char* name, const char* type, const char* help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

void sample(std::string& out, const char* name, const std::string& labels, const std::string& v) {
  out += name;
  if (!labels.empty()) out += "{" + labels + "}";
  out += ' ';
  out += v;
  out += '\n';
}

void single(std::string& out, const char* name, const char* type, const char* help,
            const std::string& value) {
  header(out, name, type, help);
  sample(out, name, "", value);
}

struct DenialLabel {
  int status;
  const char* reason;
};
// Indexed by DenialReason.
constexpr DenialLabel kDenials[] = {
    {401, "no_token"},    {401, "malformed_token"}, {401, "unknown_key"},
    {401, "revoked_key"}, {403, "forbidden"},       {429, "auth_rate_limited"},
};

}  // namespace

// -- Histogram ----------------------------------------------------------------------------------

Histogram::Histogram(std::vector<double> bounds, double sum_scale)
    : bounds_(std::move(bounds)),
      sum_scale_(sum_scale),
      buckets_(new std::atomic<uint64_t>[bounds_.size() + 1]) {
  for (size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0, std::memory_order_relaxed);
}

void Histogram::observe(double value) {
  size_t i = 0;
  while (i < bounds_.size() && value > bounds_[i]) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  double scaled = value * sum_scale_;
  if (scaled > 0 && std::isfinite(scaled)) {
    sum_.fetch_add(static_cast<uint64_t>(std::llround(scaled)), std::memory_order_relaxed);
  }
  count_.fetch_add(1, std::memory_order_relaxed);
}

void Histogram::render(std::string& out, const std::string& name, const std::string& labels) const {
  const std::string sep = labels.empty() ? "" : ",";
  uint64_t cumulative = 0;
  for (size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += buckets_[i].load(std::memory_order_relaxed);
    std::string le = i < bounds_.size() ? bound(bounds_[i]) : "+Inf";
    out += name + "_bucket{" + labels + sep + "le=\"" + le + "\"} " + std::to_string(cumulative) +
           "\n";
  }
  std::string braces = labels.empty() ? "" : "{" + labels + "}";
  out += name + "_sum" + braces + " " +
         number(static_cast<double>(sum_.load(std::memory_order_relaxed)) / sum_scale_) + "\n";
  // The count is the +Inf bucket, so the two always agree within one scrape.
  out += name + "_count" + braces + " " + std::to_string(cumulative) + "\n";
}

// -- Metrics ------------------------------------------------------------------------------------

struct Metrics::RouteSlot {
  explicit RouteSlot(std::string n) : name(std::move(n)), latency(bucket_bounds(), 1e9) {}
  const std::string name;
  std::array<std::atomic<uint64_t>, kMaxStatus> by_status{};
  Histogram latency;
};

const std::vector<double>& Metrics::bucket_bounds() {
  static const std::vector<double> bounds = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                             0.05,   0.1,   0.25,   0.5,   1,    2.5};
  return bounds;
}

const std::vector<double>& Metrics::batch_bounds() {
  static const std::vector<double> bounds = {1, 2, 4, 8, 16, 32, 64, 128, 256};
  return bounds;
}

const std::vector<double>& Metrics::commit_bounds() {
  static const std::vector<double> bounds = {0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005,
                                             0.01,   0.025,   0.05,   0.1,   0.25,   1};
  return bounds;
}

Metrics::Metrics()
    : batch_size_(batch_bounds(), 1),
      commit_seconds_(commit_bounds(), 1e9),
      start_time_seconds_(now_seconds()) {}

Metrics::~Metrics() = default;

Metrics::RouteSlot* Metrics::slot_for(const std::string& route) {
  for (size_t i = 0; i < kMaxRoutes; ++i) {
    RouteSlot* s = slots_[i].load(std::memory_order_acquire);
    if (s == nullptr) break;
    if (s->name == route) return s;
  }
  // First sight of this route (a handful of times per process): add it under the lock.
  MutexLock lock(add_mu_);
  size_t i = 0;
  for (; i < kMaxRoutes; ++i) {
    RouteSlot* s = slots_[i].load(std::memory_order_acquire);
    if (s == nullptr) break;
    if (s->name == route) return s;
  }
  if (i == kMaxRoutes) {
    RouteSlot* other = slots_[kMaxRoutes].load(std::memory_order_acquire);
    if (other) return other;
    i = kMaxRoutes;
    owned_.push_back(std::make_unique<RouteSlot>("other"));
  } else {
    owned_.push_back(std::make_unique<RouteSlot>(route));
  }
  slots_[i].store(owned_.back().get(), std::memory_order_release);
  return owned_.back().get();
}

void Metrics::record(const std::string& route, int status, double duration_ms) {
  RouteSlot* slot = slot_for(route);
  if (status < 0 || status >= kMaxStatus) status = 0;
  slot->by_status[static_cast<size_t>(status)].fetch_add(1, std::memory_order_relaxed);
  slot->latency.observe(duration_ms / 1000.0);
}

void Metrics::record_auth_denial(int, DenialReason reason) {
  denials_[static_cast<size_t>(reason)].fetch_add(1, std::memory_order_relaxed);
}

void Metrics::record_audit_write() { audit_writes_.fetch_add(1, std::memory_order_relaxed); }

void Metrics::record_correction(TestStatus status) {
  corrections_[static_cast<size_t>(status)].fetch_add(1, std::memory_order_relaxed);
}

void Metrics::record_correction_refusal(CorrectionRefusal refusal) {
  refusals_[static_cast<size_t>(refusal)].fetch_add(1, std::memory_order_relaxed);
}

void Metrics::add_feed_waiting(int delta) {
  feed_waiting_.fetch_add(delta, std::memory_order_relaxed);
}

void Metrics::record_transaction(size_t jobs, double seconds, bool ok) {
  batch_size_.observe(static_cast<double>(jobs));
  commit_seconds_.observe(seconds);
  if (ok) {
    committed_.fetch_add(1, std::memory_order_relaxed);
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                  std::chrono::system_clock::now().time_since_epoch())
                  .count();
    last_commit_ms_.store(static_cast<int64_t>(ms), std::memory_order_relaxed);
  } else {
    rolled_back_.fetch_add(1, std::memory_order_relaxed);
  }
}

void Metrics::add_pending_writes(int delta) {
  pending_writes_.fetch_add(delta, std::memory_order_relaxed);
}

void Metrics::worker_busy() { busy_workers_.fetch_add(1, std::memory_order_relaxed); }
void Metrics::worker_done() { busy_workers_.fetch_sub(1, std::memory_order_relaxed); }
void Metrics::request_started() { in_flight_.fetch_add(1, std::memory_order_relaxed); }
void Metrics::request_finished() { in_flight_.fetch_sub(1, std::memory_order_relaxed); }

void Metrics::set_process_info(const ProcessInfo& info) {
  MutexLock lock(info_mu_);
  info_ = info;
}

std::string Metrics::node() const {
  MutexLock lock(info_mu_);
  return info_.node;
}

std::string Metrics::render(const StoreStats& store, const Status& health) const {
  std::string out;
  out.reserve(16384);
  ProcessInfo info;
  {
    MutexLock lock(info_mu_);
    info = info_;
  }

  std::vector<const RouteSlot*> routes;
  for (const auto& slot : slots_) {
    const RouteSlot* s = slot.load(std::memory_order_acquire);
    if (s) routes.push_back(s);
  }
  header(out, "tdapi_requests_total", "counter",
         "Requests answered by the app, by route and HTTP status.");
  for (const RouteSlot* s : routes) {
    for (int status = 0; status < kMaxStatus; ++status) {
      uint64_t n = s->by_status[static_cast<size_t>(status)].load(std::memory_order_relaxed);
      if (n == 0) continue;
      sample(out, "tdapi_requests_total",
             "route=\"" + label_value(s->name) + "\",status=\"" + std::to_string(status) + "\"",
             std::to_string(n));
    }
  }
  header(out, "tdapi_request_duration_seconds", "histogram",
         "Time from reading a request to its last byte, by route.");
  for (const RouteSlot* s : routes) {
    s->latency.render(out, "tdapi_request_duration_seconds",
                      "route=\"" + label_value(s->name) + "\"");
  }

  int64_t busy = busy_workers_.load(std::memory_order_relaxed);
  header(out, "tdapi_worker_threads", "gauge",
         "FastCGI worker threads: busy (serving a request) or idle (waiting for one, also on a "
         "kept-alive connection).");
  sample(out, "tdapi_worker_threads", "state=\"busy\"", std::to_string(busy));
  sample(out, "tdapi_worker_threads", "state=\"idle\"",
         std::to_string(std::max<int64_t>(0, info.worker_threads - busy)));
  single(out, "tdapi_requests_in_flight", "gauge",
         "Requests being served now (this scrape included).",
         std::to_string(in_flight_.load(std::memory_order_relaxed)));

  header(out, "tdapi_auth_denials_total", "counter",
         "Requests refused by access control, by status and reason.");
  for (size_t i = 0; i < denials_.size(); ++i) {
    sample(out, "tdapi_auth_denials_total",
           "status=\"" + std::to_string(kDenials[i].status) + "\",reason=\"" + kDenials[i].reason +
               "\"",
           std::to_string(denials_[i].load(std::memory_order_relaxed)));
  }
  single(out, "tdapi_audit_writes_total", "counter", "Audit trail entries written.",
         std::to_string(audit_writes_.load(std::memory_order_relaxed)));

  header(out, "tdapi_corrections_total", "counter",
         "Corrections committed (PUT /tests/{test_id}), by the status they gave the test.");
  for (TestStatus st : {TestStatus::kFinal, TestStatus::kAmended, TestStatus::kCorrected,
                        TestStatus::kEnteredInError}) {
    sample(out, "tdapi_corrections_total", std::string("status=\"") + test_status_name(st) + "\"",
           std::to_string(corrections_[static_cast<size_t>(st)].load(std::memory_order_relaxed)));
  }
  header(out, "tdapi_correction_refusals_total", "counter",
         "Corrections the store refused, by reason (another clinic's test counts as not_found).");
  const std::pair<CorrectionRefusal, const char*> kRefusals[] = {
      {CorrectionRefusal::kNotFound, "not_found"},
      {CorrectionRefusal::kPatientDiffers, "patient_differs"},
      {CorrectionRefusal::kRetracted, "retracted"},
      {CorrectionRefusal::kVersionMismatch, "version_mismatch"}};
  for (const auto& [refusal, name] : kRefusals) {
    uint64_t n = refusals_[static_cast<size_t>(refusal)].load(std::memory_order_relaxed);
    if (refusal == CorrectionRefusal::kNotFound) {
      n += refusals_[static_cast<size_t>(CorrectionRefusal::kClinicDiffers)].load(
          std::memory_order_relaxed);
    }
    sample(out, "tdapi_correction_refusals_total", std::string("reason=\"") + name + "\"",
           std::to_string(n));
  }
  single(out, "tdapi_feed_waiting", "gauge",
         "Long-polling change feed requests held open now, waiting for a change.",
         std::to_string(feed_waiting_.load(std::memory_order_relaxed)));

  single(out, "tdapi_commits_total", "counter", "Group-commit transactions committed.",
         std::to_string(store.commits));
  single(out, "tdapi_rollbacks_total", "counter",
         "Group-commit transactions rolled back as a whole.", std::to_string(store.rollbacks));
  single(out, "tdapi_commits_undurable_total", "counter",
         "Of the commits, those of crash-safe audit entries alone (AUDIT_READS=crash-safe): "
         "committed without waiting for the disk.",
         std::to_string(store.undurable_commits));
  single(out, "tdapi_durability_syncs_total", "counter",
         "Disk syncs that made such commits durable when no durable commit came within 100 ms.",
         std::to_string(store.durability_syncs));
  single(out, "tdapi_writes_total", "counter",
         "Write requests handled by the writer (records or batches).",
         std::to_string(store.writes));
  header(out, "tdapi_commit_batch_size", "histogram",
         "Write requests per group-commit transaction (committed or rolled back).");
  batch_size_.render(out, "tdapi_commit_batch_size", "");
  header(out, "tdapi_commit_duration_seconds", "histogram",
         "Time of one group-commit transaction, BEGIN to COMMIT (or ROLLBACK) returned.");
  commit_seconds_.render(out, "tdapi_commit_duration_seconds", "");
  int64_t last_ms = last_commit_ms_.load(std::memory_order_relaxed);
  single(out, "tdapi_last_commit_timestamp_seconds", "gauge",
         "When the last transaction committed (Unix time); 0 before the first since start.",
         number(static_cast<double>(last_ms) / 1000.0));
  single(out, "tdapi_writes_pending", "gauge",
         "Write requests handed to the store's writer and not answered yet.",
         std::to_string(pending_writes_.load(std::memory_order_relaxed)));

  single(out, "tdapi_database_size_bytes", "gauge",
         "Size of the database (SQLite: the file and its WAL; PostgreSQL: pg_database_size).",
         std::to_string(store.database_bytes));
  if (store.wal_bytes >= 0) {
    single(out, "tdapi_wal_size_bytes", "gauge",
           "SQLite: bytes written to the WAL since it last restarted (pages x page size).",
           std::to_string(store.wal_bytes));
  }
  if (store.database_pages >= 0) {
    single(out, "tdapi_database_pages", "gauge", "SQLite: pages in the database (page_count).",
           std::to_string(store.database_pages));
    single(out, "tdapi_database_max_pages", "gauge",
           "SQLite: the cap on page_count (MAX_DB_PAGES, else SQLite's own limit).",
           std::to_string(store.max_pages));
  }
  if (store.filesystem_bytes > 0) {
    single(out, "tdapi_filesystem_avail_bytes", "gauge",
           "SQLite: bytes free for this user on the database's filesystem.",
           std::to_string(store.filesystem_avail_bytes));
    single(out, "tdapi_filesystem_size_bytes", "gauge",
           "SQLite: size of the database's filesystem.", std::to_string(store.filesystem_bytes));
  }
  if (store.integrity != StoreStats::Integrity::kNone) {
    header(out, "tdapi_integrity_check", "gauge",
           "SQLite: 1 for the state of the file's integrity check since start (running: in the "
           "background after a clean-stop start; damaged: writes are refused), 0 for the others.");
    const std::pair<StoreStats::Integrity, const char*> states[] = {
        {StoreStats::Integrity::kRunning, "running"},
        {StoreStats::Integrity::kOk, "ok"},
        {StoreStats::Integrity::kDamaged, "damaged"},
        {StoreStats::Integrity::kFailed, "failed"}};
    for (const auto& [state, name] : states) {
      sample(out, "tdapi_integrity_check", std::string("state=\"") + name + "\"",
             store.integrity == state ? "1" : "0");
    }
    if (store.integrity_seconds >= 0) {
      single(out, "tdapi_integrity_check_seconds", "gauge",
             "SQLite: how long the integrity check since start took (at start, or in the "
             "background).",
             number(store.integrity_seconds));
    }
  }
  header(out, "tdapi_healthy", "gauge",
         "1 when the store's health check (what GET /healthz runs) passes; 0 with the reason "
         "(corrupt, io_error, busy, unavailable, ...).");
  sample(out, "tdapi_healthy", "reason=\"" + label_value(health.ok() ? "ok" : health.name()) + "\"",
         health.ok() ? "1" : "0");

  single(out, "process_start_time_seconds", "gauge",
         "Start time of the process since unix epoch in seconds.", number(start_time_seconds_));
  single(out, "tdapi_node_starts", "gauge",
         "How often the supervisor (scripts/run.sh) has started this node: 1, plus its restarts.",
         std::to_string(info.starts));
  header(out, "testdata_api_build_info", "gauge",
         "The running build: version, storage backend and node; always 1.");
  sample(out, "testdata_api_build_info",
         "version=\"" + label_value(info.version) + "\",backend=\"" + label_value(info.backend) +
             "\",node=\"" + label_value(info.node) + "\"",
         "1");
  return out;
}

Metrics& global_metrics() {
  static Metrics metrics;
  return metrics;
}

}  // namespace tdapi
