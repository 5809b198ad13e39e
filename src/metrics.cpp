// metrics.cpp: Prometheus text exposition of the service's counters.
#include "metrics.h"

#include <cstdio>

namespace tdapi {

const std::vector<double>& Metrics::bucket_bounds() {
  static const std::vector<double> bounds = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                             0.05,   0.1,   0.25,   0.5,   1,    2.5};
  return bounds;
}

void Metrics::record(const std::string& route, int status, double duration_ms) {
  double seconds = duration_ms / 1000.0;
  const auto& bounds = bucket_bounds();
  size_t bucket = 0;
  while (bucket < bounds.size() && seconds > bounds[bucket]) ++bucket;
  std::lock_guard<std::mutex> lock(mu_);
  requests_[{route, status}]++;
  Histogram& h = latency_[route];
  if (h.buckets.empty()) h.buckets.assign(bounds.size() + 1, 0);
  h.buckets[bucket]++;
  h.sum_seconds += seconds;
  h.count++;
}

void Metrics::record_auth_denial(int status) {
  std::lock_guard<std::mutex> lock(mu_);
  auth_denials_[status]++;
}

void Metrics::record_audit_write() {
  std::lock_guard<std::mutex> lock(mu_);
  audit_writes_++;
}

static std::string number(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  return buf;
}

std::string Metrics::render(const StoreStats& store) const {
  std::string out;
  out += "# HELP tdapi_requests_total Requests answered by the app, by route and HTTP status.\n";
  out += "# TYPE tdapi_requests_total counter\n";
  std::lock_guard<std::mutex> lock(mu_);
  for (const auto& [key, n] : requests_) {
    out += "tdapi_requests_total{route=\"" + key.first + "\",status=\"" +
           std::to_string(key.second) + "\"} " + std::to_string(n) + "\n";
  }
  out += "# HELP tdapi_request_duration_seconds Time from reading a request to its last byte.\n";
  out += "# TYPE tdapi_request_duration_seconds histogram\n";
  const auto& bounds = bucket_bounds();
  for (const auto& [route, h] : latency_) {
    long long cumulative = 0;
    for (size_t i = 0; i <= bounds.size(); ++i) {
      cumulative += h.buckets[i];
      std::string le = i < bounds.size() ? number(bounds[i]) : "+Inf";
      out += "tdapi_request_duration_seconds_bucket{route=\"" + route + "\",le=\"" + le + "\"} " +
             std::to_string(cumulative) + "\n";
    }
    out += "tdapi_request_duration_seconds_sum{route=\"" + route + "\"} " + number(h.sum_seconds) +
           "\n";
    out += "tdapi_request_duration_seconds_count{route=\"" + route + "\"} " +
           std::to_string(h.count) + "\n";
  }
  auto counter = [&](const char* name, const char* help, long long v) {
    out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " counter\n" + name +
           " " + std::to_string(v) + "\n";
  };
  out += "# HELP tdapi_auth_denials_total Requests refused by access control, by status.\n";
  out += "# TYPE tdapi_auth_denials_total counter\n";
  for (int status : {401, 403}) {
    auto it = auth_denials_.find(status);
    out += "tdapi_auth_denials_total{status=\"" + std::to_string(status) + "\"} " +
           std::to_string(it == auth_denials_.end() ? 0 : it->second) + "\n";
  }
  counter("tdapi_audit_writes_total", "Audit trail entries written.", audit_writes_);
  counter("tdapi_commits_total", "Group-commit transactions committed.", store.commits);
  counter("tdapi_rollbacks_total", "Group-commit transactions rolled back as a whole.",
          store.rollbacks);
  counter("tdapi_writes_total", "Write requests handled by the writer (records or batches).",
          store.writes);
  out += "# HELP tdapi_database_size_bytes Size of the database file and its WAL.\n";
  out += "# TYPE tdapi_database_size_bytes gauge\n";
  out += "tdapi_database_size_bytes " + std::to_string(store.database_bytes) + "\n";
  return out;
}

Metrics& global_metrics() {
  static Metrics metrics;
  return metrics;
}

}  // namespace tdapi
