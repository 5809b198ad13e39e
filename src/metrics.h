// metrics.h: request counters and latency histograms, rendered in Prometheus' text format.
#pragma once

#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "store.h"

namespace tdapi {

// Safe for concurrent use from several threads.
class Metrics {
 public:
  // Counts one answered request. route is a fixed route name ("GET /tests", "unmatched").
  void record(const std::string& route, int status, double duration_ms);

  // Counts a request refused by access control (401 or 403).
  void record_auth_denial(int status);
  // Counts an audit entry written.
  void record_audit_write();

  // Renders every metric, plus the store's counters and sizes. This function can't fail.
  std::string render(const StoreStats& store) const;

  // Upper bounds of the latency histogram buckets, in seconds.
  static const std::vector<double>& bucket_bounds();

 private:
  struct Histogram {
    std::vector<long long> buckets;  // cumulative counts are computed when rendering
    double sum_seconds = 0;
    long long count = 0;
  };
  mutable std::mutex mu_;
  std::map<std::pair<std::string, int>, long long> requests_;
  std::map<std::string, Histogram> latency_;
  std::map<int, long long> auth_denials_;
  long long audit_writes_ = 0;
};

// The process's metrics.
Metrics& global_metrics();

}  // namespace tdapi
