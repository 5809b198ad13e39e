// metrics_test.cpp: the Prometheus exposition (metrics.h) and what the stores feed into it.
#include "metrics/metrics.h"

#include <gtest/gtest.h>

#include <chrono>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "store/sqlite/store_sqlite.h"
#include "store/store_test_util.h"
#include "temp_dir.h"

namespace tdapi {
namespace {

// The value of the sample line that starts with `series` (name and labels, exactly), or -1.
double value_of(const std::string& text, const std::string& series) {
  size_t at = 0;
  while ((at = text.find(series + " ", at)) != std::string::npos) {
    if (at == 0 || text[at - 1] == '\n') return std::stod(text.substr(at + series.size() + 1));
    ++at;
  }
  return -1;
}

StoreStats sqlite_like_stats() {
  StoreStats s;
  s.commits = 7;
  s.rollbacks = 2;
  s.writes = 30;
  s.database_bytes = 81920;
  s.wal_bytes = 4096;
  s.database_pages = 20;
  s.max_pages = 100;
  s.filesystem_bytes = 1 << 30;
  s.filesystem_avail_bytes = 1 << 20;
  return s;
}

TEST(Histogram, BucketsAreCumulativeAndCountEqualsTheInfBucket) {
  Histogram h({1, 2, 4}, 1);
  for (double v : {0.0, 1.0, 2.0, 3.0, 9.0}) h.observe(v);
  std::string out;
  h.render(out, "x", "a=\"b\"");
  EXPECT_EQ(out,
            "x_bucket{a=\"b\",le=\"1\"} 2\n"
            "x_bucket{a=\"b\",le=\"2\"} 3\n"
            "x_bucket{a=\"b\",le=\"4\"} 4\n"
            "x_bucket{a=\"b\",le=\"+Inf\"} 5\n"
            "x_sum{a=\"b\"} 15\n"
            "x_count{a=\"b\"} 5\n");
}

TEST(Histogram, SecondsAreSummedInNanosecondsWithoutLabels) {
  Histogram h({0.001}, 1e9);
  h.observe(0.0002);
  h.observe(0.0003);
  std::string out;
  h.render(out, "t", "");
  EXPECT_NE(out.find("t_bucket{le=\"0.001\"} 2\n"), std::string::npos) << out;
  EXPECT_NE(out.find("t_sum 0.0005\n"), std::string::npos) << out;
  EXPECT_NE(out.find("t_count 2\n"), std::string::npos) << out;
}

TEST(Metrics, RequestsByRouteAndStatusWithLatency) {
  Metrics m;
  m.record("GET /tests", 200, 0.7);
  m.record("GET /tests", 200, 30);
  m.record("POST /tests", 503, 2);
  std::string text = m.render(StoreStats(), Status::Ok());
  EXPECT_EQ(value_of(text, R"(tdapi_requests_total{route="GET /tests",status="200"})"), 2);
  EXPECT_EQ(value_of(text, R"(tdapi_requests_total{route="POST /tests",status="503"})"), 1);
  EXPECT_EQ(
      value_of(text, R"(tdapi_request_duration_seconds_bucket{route="GET /tests",le="0.001"})"), 1);
  EXPECT_EQ(
      value_of(text, R"(tdapi_request_duration_seconds_bucket{route="GET /tests",le="0.05"})"), 2);
  EXPECT_NEAR(value_of(text, R"(tdapi_request_duration_seconds_sum{route="GET /tests"})"), 0.0307,
              1e-9);
  EXPECT_EQ(text.find("status=\"404\""), std::string::npos);  // nothing rendered for zero
}

TEST(Metrics, ConcurrentRecordsAreAllCounted) {
  Metrics m;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&m, t] {
      for (int i = 0; i < 5000; ++i) {
        m.record(t % 2 ? "GET /tests" : "POST /tests", 200 + (i % 2), 1);
        m.request_started();
        m.request_finished();
      }
    });
  }
  for (auto& th : threads) th.join();
  std::string text = m.render(StoreStats(), Status::Ok());
  double total = 0;
  for (const char* route : {"GET /tests", "POST /tests"}) {
    for (int status : {200, 201}) {
      total += value_of(text, std::string("tdapi_requests_total{route=\"") + route +
                                  "\",status=\"" + std::to_string(status) + "\"}");
    }
    EXPECT_EQ(value_of(text, std::string("tdapi_request_duration_seconds_count{route=\"") + route +
                                 "\"}"),
              20000);
  }
  EXPECT_EQ(total, 40000);
  EXPECT_EQ(value_of(text, "tdapi_requests_in_flight"), 0);
}

TEST(Metrics, RoutesPastTheLimitCountAsOther) {
  Metrics m;
  for (size_t i = 0; i < Metrics::kMaxRoutes + 5; ++i) m.record("r" + std::to_string(i), 200, 1);
  std::string text = m.render(StoreStats(), Status::Ok());
  EXPECT_EQ(value_of(text, R"(tdapi_requests_total{route="r0",status="200"})"), 1);
  EXPECT_EQ(value_of(text, R"(tdapi_requests_total{route="other",status="200"})"), 5);
}

TEST(Metrics, DenialsByStatusAndReasonAllPresentFromTheStart) {
  Metrics m;
  m.record_auth_denial(401, DenialReason::kNoToken);
  m.record_auth_denial(401, DenialReason::kNoToken);
  m.record_auth_denial(401, DenialReason::kRevokedKey);
  m.record_auth_denial(403, DenialReason::kForbidden);
  m.record_audit_write();
  std::string text = m.render(StoreStats(), Status::Ok());
  EXPECT_EQ(value_of(text, R"(tdapi_auth_denials_total{status="401",reason="no_token"})"), 2);
  EXPECT_EQ(value_of(text, R"(tdapi_auth_denials_total{status="401",reason="revoked_key"})"), 1);
  EXPECT_EQ(value_of(text, R"(tdapi_auth_denials_total{status="401",reason="unknown_key"})"), 0);
  EXPECT_EQ(value_of(text, R"(tdapi_auth_denials_total{status="401",reason="malformed_token"})"),
            0);
  EXPECT_EQ(value_of(text, R"(tdapi_auth_denials_total{status="403",reason="forbidden"})"), 1);
  EXPECT_EQ(value_of(text, "tdapi_audit_writes_total"), 1);
}

TEST(Metrics, TransactionsFeedBatchSizeCommitTimeAndTheLastCommit) {
  Metrics m;
  std::string before = m.render(StoreStats(), Status::Ok());
  EXPECT_EQ(value_of(before, "tdapi_last_commit_timestamp_seconds"), 0);
  m.record_transaction(1, 0.0002, true);
  m.record_transaction(40, 0.003, true);
  m.record_transaction(3, 0.5, false);
  m.add_pending_writes(3);
  m.add_pending_writes(-1);
  std::string text = m.render(StoreStats(), Status::Ok());
  EXPECT_EQ(value_of(text, R"(tdapi_commit_batch_size_bucket{le="1"})"), 1);
  EXPECT_EQ(value_of(text, R"(tdapi_commit_batch_size_bucket{le="4"})"), 2);
  EXPECT_EQ(value_of(text, R"(tdapi_commit_batch_size_bucket{le="64"})"), 3);
  EXPECT_EQ(value_of(text, "tdapi_commit_batch_size_sum"), 44);
  EXPECT_EQ(value_of(text, R"(tdapi_commit_duration_seconds_bucket{le="0.00025"})"), 1);
  EXPECT_EQ(value_of(text, "tdapi_commit_duration_seconds_count"), 3);
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  EXPECT_NEAR(value_of(text, "tdapi_last_commit_timestamp_seconds"), now, 60);
  EXPECT_EQ(value_of(text, "tdapi_writes_pending"), 2);
}

TEST(Metrics, WorkersProcessAndBuildInfo) {
  Metrics m;
  ProcessInfo info;
  info.version = "1.2.3";
  info.backend = "postgresql";
  info.node = "2";
  info.starts = 3;
  info.worker_threads = 8;
  m.set_process_info(info);
  m.worker_busy();
  m.worker_busy();
  m.worker_done();
  std::string text = m.render(StoreStats(), Status::Ok());
  EXPECT_EQ(value_of(text, R"(tdapi_worker_threads{state="busy"})"), 1);
  EXPECT_EQ(value_of(text, R"(tdapi_worker_threads{state="idle"})"), 7);
  EXPECT_EQ(
      value_of(text, R"(testdata_api_build_info{version="1.2.3",backend="postgresql",node="2"})"),
      1);
  EXPECT_EQ(value_of(text, "tdapi_node_starts"), 3);
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  double started = value_of(text, "process_start_time_seconds");
  EXPECT_LE(started, now);
  EXPECT_GT(started, now - 60);
  EXPECT_EQ(m.node(), "2");
}

TEST(Metrics, StoreSizesAndHealth) {
  Metrics m;
  std::string text = m.render(sqlite_like_stats(), Status::Ok());
  EXPECT_EQ(value_of(text, "tdapi_commits_total"), 7);
  EXPECT_EQ(value_of(text, "tdapi_rollbacks_total"), 2);
  EXPECT_EQ(value_of(text, "tdapi_database_size_bytes"), 81920);
  EXPECT_EQ(value_of(text, "tdapi_wal_size_bytes"), 4096);
  EXPECT_EQ(value_of(text, "tdapi_database_pages"), 20);
  EXPECT_EQ(value_of(text, "tdapi_database_max_pages"), 100);
  EXPECT_EQ(value_of(text, "tdapi_filesystem_avail_bytes"), 1 << 20);
  EXPECT_EQ(value_of(text, R"(tdapi_healthy{reason="ok"})"), 1);

  // PostgreSQL: no WAL, pages or filesystem of its own to show; unhealthy with the reason.
  StoreStats pg;
  pg.database_bytes = 9000000;
  text = m.render(pg, Status::Corrupt("damaged"));
  EXPECT_EQ(text.find("tdapi_wal_size_bytes"), std::string::npos);
  EXPECT_EQ(text.find("tdapi_database_pages"), std::string::npos);
  EXPECT_EQ(text.find("tdapi_filesystem_avail_bytes"), std::string::npos);
  EXPECT_EQ(value_of(text, R"(tdapi_healthy{reason="corrupt"})"), 0);
}

// SQLite's integrity check: one state at 1, the others at 0; none for PostgreSQL.
TEST(Metrics, IntegrityCheckState) {
  Metrics m;
  StoreStats s = sqlite_like_stats();
  s.integrity = StoreStats::Integrity::kRunning;
  std::string text = m.render(s, Status::Ok());
  EXPECT_EQ(value_of(text, R"(tdapi_integrity_check{state="running"})"), 1);
  EXPECT_EQ(value_of(text, R"(tdapi_integrity_check{state="damaged"})"), 0);
  EXPECT_EQ(text.find("tdapi_integrity_check_seconds"), std::string::npos);  // none finished
  s.integrity = StoreStats::Integrity::kDamaged;
  s.integrity_seconds = 12.5;
  text = m.render(s, Status::Corrupt("damaged"));
  EXPECT_EQ(value_of(text, R"(tdapi_integrity_check{state="running"})"), 0);
  EXPECT_EQ(value_of(text, R"(tdapi_integrity_check{state="ok"})"), 0);
  EXPECT_EQ(value_of(text, R"(tdapi_integrity_check{state="damaged"})"), 1);
  EXPECT_EQ(value_of(text, R"(tdapi_integrity_check{state="failed"})"), 0);
  EXPECT_EQ(value_of(text, "tdapi_integrity_check_seconds"), 12.5);
  StoreStats pg;
  text = m.render(pg, Status::Ok());
  EXPECT_EQ(text.find("tdapi_integrity_check"), std::string::npos);
}

TEST(Metrics, EveryLineIsACommentOrASampleWithANumber) {
  Metrics m;
  m.record("GET /tests/{test_id}", 404, 3);
  m.record_transaction(2, 0.001, true);
  std::string text = m.render(sqlite_like_stats(), Status::Ok());
  const std::regex line(
      R"((# (HELP|TYPE) [a-z_]+ .+)|([a-z_]+(\{([a-z_]+="[^"\n]*",?)+\})? -?[0-9.e+]+))");
  size_t start = 0;
  int samples = 0;
  while (start < text.size()) {
    size_t end = text.find('\n', start);
    ASSERT_NE(end, std::string::npos);
    std::string l = text.substr(start, end - start);
    EXPECT_TRUE(std::regex_match(l, line)) << l;
    samples += l[0] != '#';
    start = end + 1;
  }
  EXPECT_GT(samples, 40);
}

// The SQLite store feeds the process's transaction histograms and its page counts.
TEST(SqliteStoreMetrics, CommitsFeedTheHistogramsAndPagesAreCounted) {
  TempDir dir;
  SqliteOptions o;
  o.path = dir.file("m.db");
  o.max_page_count = 5000;
  o.observer = &global_metrics();  // as the service wires it (main.cpp)
  std::unique_ptr<SqliteStore> store;
  ASSERT_TRUE(SqliteStore::open(o, store).ok());
  std::string before = global_metrics().render(store->stats(), Status::Ok());
  ASSERT_TRUE(store->insert(make_record("m1")).status.ok());
  ASSERT_TRUE(store->insert_all({make_record("m2"), make_record("m3")}).status.ok());
  StoreStats s = store->stats();
  std::string after = global_metrics().render(s, Status::Ok());
  EXPECT_EQ(value_of(after, "tdapi_commit_batch_size_count") -
                value_of(before, "tdapi_commit_batch_size_count"),
            2);
  EXPECT_EQ(value_of(after, "tdapi_commit_duration_seconds_count") -
                value_of(before, "tdapi_commit_duration_seconds_count"),
            2);
  EXPECT_GT(value_of(after, "tdapi_last_commit_timestamp_seconds"), 0);
  EXPECT_EQ(value_of(after, "tdapi_writes_pending"), 0);
  EXPECT_GT(s.database_pages, 1);
  EXPECT_EQ(s.max_pages, 5000);
  EXPECT_GT(s.wal_bytes, 0);
  EXPECT_GT(s.filesystem_bytes, 0);
  EXPECT_GE(s.filesystem_avail_bytes, 0);
}

TEST(SqliteStoreMetrics, WithoutACapMaxPagesIsSqlitesOwnLimit) {
  TempDir dir;
  SqliteOptions o;
  o.path = dir.file("m.db");
  std::unique_ptr<SqliteStore> store;
  ASSERT_TRUE(SqliteStore::open(o, store).ok());
  EXPECT_GT(store->stats().max_pages, 1000000);
}

}  // namespace
}  // namespace tdapi
