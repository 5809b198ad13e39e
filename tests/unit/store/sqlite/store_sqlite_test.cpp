// store_sqlite_test.cpp: what only the SQLite store has, on a temp database: its file (schema
// versions and migrations, WAL, size cap, damaged or missing files), its checkpoints, its query
// plans, and failures injected with its fault hook. The contract both stores keep is tested once
// for both: store/store_contract_test.cpp.
#include "store/sqlite/store_sqlite.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/statvfs.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "base/json.h"
#include "http/storage_status.h"
#include "store/sqlite/file_ops.h"
#include "store/sqlite/sqlite_test_util.h"
#include "store/store_test_util.h"
#include "store/test_record.h"
#include "temp_dir.h"

namespace tdapi {
namespace {

std::unique_ptr<SqliteStore> open_store(const SqliteOptions& o);

std::unique_ptr<SqliteStore> open_store(const std::string& path, long long max_pages = 0) {
  SqliteOptions o;
  o.path = path;
  o.max_page_count = max_pages;
  return open_store(o);
}

std::unique_ptr<SqliteStore> open_store(const SqliteOptions& o) {
  std::unique_ptr<SqliteStore> store;
  Status s = SqliteStore::open(o, store);
  EXPECT_TRUE(s.ok()) << s.message();
  return store;
}

// Every (test_id, seq) of a clinic, in listing order.
std::vector<std::pair<std::string, long long>> list_with_seq(Store& store, ListQuery q) {
  std::vector<std::pair<std::string, long long>> rows;
  Status s = store.list_tests(q, [&](std::string_view json, long long seq) {
    rows.emplace_back(field_of(json, "test_id"), seq);
    return true;
  });
  EXPECT_TRUE(s.ok()) << s.message();
  return rows;
}

TEST(SqliteStore, TheWalStaysBoundedUnderAStreamOfCommits) {
  TempDir dir;
  std::string path = dir.file("t.db");
  auto store = open_store(path);
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 2500; ++i) {
        store->insert(make_record("wal" + std::to_string(t) + "-" + std::to_string(i)));
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_GT(store->stats().commits, SqliteStore::kCheckpointPages * 4 / 8);
  EXPECT_GT(store->stats().database_bytes, 0);
  auto wal_bytes = std::filesystem::file_size(path + "-wal");
  EXPECT_LT(wal_bytes, 2u * 4 * SqliteStore::kCheckpointPages * 4096) << "the WAL never restarted";
}

TEST(SqliteStore, FullDatabaseRollsBackAndKeepsEveryAcknowledgedRecord) {
  TempDir dir;
  auto store = open_store(dir.file("t.db"), /*max_pages=*/32);
  std::vector<std::string> acknowledged;
  Status last;
  for (int i = 0; i < 2000; ++i) {
    TestRecord r = make_record("full-" + std::to_string(i));
    r.result = std::string(800, 'x');
    WriteOutcome w = store->insert(r);
    if (!w.status.ok()) {
      last = w.status;
      break;
    }
    acknowledged.push_back(r.test_id);
  }
  EXPECT_EQ(last.code(), StatusCode::kFull) << last.message();
  EXPECT_EQ(http_status_for(last.code()), 507);
  EXPECT_EQ(list_ids(*store, "c1"), acknowledged);  // the failed record left nothing behind
  // Reads and further duplicates still work while full.
  EXPECT_EQ(store->insert(make_record(acknowledged[0])).status.code(), StatusCode::kDuplicate);
  EXPECT_TRUE(store->check_health().ok());
}

// A correction that does not fit: Full (507), nothing of it written (not even its audit entry,
// which would fail the same way), the old version intact and readable, and a correction that
// fits still goes through.
TEST(SqliteStore, ACorrectionOnAFullDatabaseIsFullAndLeavesTheOldVersionIntact) {
  TempDir dir;
  auto store = open_store(dir.file("t.db"), /*max_pages=*/40);
  ASSERT_TRUE(store->insert(make_record("keep")).status.ok());
  Status last;
  for (int i = 0; i < 2000; ++i) {
    TestRecord r = make_record("fill-" + std::to_string(i));
    r.result = std::string(800, 'x');
    last = store->insert(r).status;
    if (!last.ok()) break;
  }
  ASSERT_EQ(last.code(), StatusCode::kFull) << last.message();
  StoredDocument before;
  ASSERT_TRUE(store->get_test("keep", before).ok());
  long long latest_before = 0;
  ASSERT_TRUE(store->latest_change(latest_before).ok());
  const size_t audit_before = [&] {
    size_t n = 0;
    EXPECT_TRUE(store->list_audit({}, [&](const AuditEntry&) { return ++n > 0; }).ok());
    return n;
  }();

  TestCorrection c;
  c.record = make_record("keep");
  c.record.result = std::string(kMaxResultChars, 'y');  // overflow pages: no room for them
  c.record.status = TestStatus::kCorrected;
  c.reason = "does not fit";
  c.expected_version = 1;
  c.changed_by = "anonymous";
  AuditEntry audit;
  audit.action = "correct";
  audit.clinic_id = "c1";
  audit.detail = "{}";
  CorrectionOutcome out = store->correct(c, &audit);
  EXPECT_EQ(out.status.code(), StatusCode::kFull) << out.status.message();
  EXPECT_EQ(http_status_for(out.status.code()), 507);

  StoredDocument after;
  ASSERT_TRUE(store->get_test("keep", after).ok());
  EXPECT_EQ(after.json, before.json);
  EXPECT_EQ(after.version, 1);
  long long latest_after = 0;
  ASSERT_TRUE(store->latest_change(latest_after).ok());
  EXPECT_EQ(latest_after, latest_before);
  size_t audit_after = 0;
  ASSERT_TRUE(store->list_audit({}, [&](const AuditEntry&) { return ++audit_after > 0; }).ok());
  EXPECT_EQ(audit_after, audit_before);
  std::string clinic;
  int versions = 0;
  ASSERT_TRUE(store
                  ->list_history({"keep", 0, -1}, clinic,
                                 [&](const TestVersion&) {
                                   ++versions;
                                   return true;
                                 })
                  .ok());
  EXPECT_EQ(versions, 1);
  EXPECT_TRUE(store->check_health().ok());  // full is not a broken write path
}

// A create writes no test_versions row: its version 1 stays in its tests row (created_by set),
// at the feed position of its seq, until its first correction moves it into test_versions under
// that same position. The feed and the history read the same either way.
TEST(SqliteStore, ACreateKeepsVersion1InItsRowUntilItsFirstCorrection) {
  TempDir dir;
  const std::string path = dir.file("t.db");
  auto store = open_store(path);
  ASSERT_TRUE(store->insert(make_record("a")).status.ok());
  ASSERT_TRUE(store->insert(make_record("b")).status.ok());
  EXPECT_EQ(sql_on(path, "SELECT count(*) FROM test_versions"), "0");
  EXPECT_EQ(sql_on(path, "SELECT group_concat(created_by) FROM tests"), "anonymous,anonymous");
  auto feed = [&] {
    std::vector<std::string> out;
    ChangeQuery q;
    q.clinic_id = "c1";
    EXPECT_TRUE(store
                    ->list_changes(q,
                                   [&](const TestVersion& v) {
                                     out.push_back(
                                         v.record.test_id + "@" + std::to_string(v.version) + ":" +
                                         std::to_string(v.change_seq) + ":" + v.changed_by);
                                     return true;
                                   })
                    .ok());
    return out;
  };
  const std::string a_seq = sql_on(path, "SELECT seq FROM tests WHERE test_id = 'a'");
  const std::string b_seq = sql_on(path, "SELECT seq FROM tests WHERE test_id = 'b'");
  const std::vector<std::string> before = {"a@1:" + a_seq + ":anonymous",
                                           "b@1:" + b_seq + ":anonymous"};
  EXPECT_EQ(feed(), before);

  TestCorrection c;
  c.record = make_record("a");
  c.record.status = TestStatus::kCorrected;
  c.record.result = "corrected";
  c.reason = "r";
  c.expected_version = 1;
  c.changed_by = "k1";
  CorrectionOutcome o = store->correct(c, nullptr);
  ASSERT_TRUE(o.status.ok()) << o.status.message();
  EXPECT_GT(o.current.change_seq, std::stoll(b_seq));
  EXPECT_EQ(sql_on(path,
                   "SELECT group_concat(test_id || '@' || version || ':' || change_seq)"
                   " FROM test_versions"),
            "a@1:" + a_seq + ",a@2:" + std::to_string(o.current.change_seq));
  std::vector<std::string> after = before;
  after.push_back("a@2:" + std::to_string(o.current.change_seq) + ":k1");
  EXPECT_EQ(feed(), after);
  std::vector<std::string> history;
  std::string clinic;
  ASSERT_TRUE(store
                  ->list_history({"a", 0, -1}, clinic,
                                 [&](const TestVersion& v) {
                                   history.push_back(std::to_string(v.version) + ":" +
                                                     v.record.result + ":" + v.changed_by);
                                   return true;
                                 })
                  .ok());
  EXPECT_EQ(history, (std::vector<std::string>{"2:corrected:k1",
                                               "1:" + make_record("a").result + ":anonymous"}));
  // A second correction adds its row only.
  c.expected_version = 2;
  c.record.result = "again";
  ASSERT_TRUE(store->correct(c, nullptr).status.ok());
  EXPECT_EQ(sql_on(path, "SELECT count(*) FROM test_versions"), "3");
}

// The first correction moves version 1 under its seq, the position the feed gave it, also where
// the rowids were renumbered outside the service (a reload from `.dump`): it was moved under its
// rowid, so the create changed its place in the feed, or the correction failed on a change_seq
// already taken.
TEST(SqliteStore, TheFirstCorrectionKeepsVersion1AtItsSeqWhenTheRowidDiffers) {
  TempDir dir;
  const std::string path = dir.file("t.db");
  {
    auto store = open_store(path);
    for (const char* id : {"a", "b", "c"}) ASSERT_TRUE(store->insert(make_record(id)).status.ok());
  }
  // a's rowid becomes 2 (b's seq), b's and c's move out of the way.
  sql_on(path,
         "UPDATE tests SET rowid = rowid + 10 WHERE test_id IN ('b', 'c');"
         " UPDATE tests SET rowid = 2 WHERE test_id = 'a'");
  ASSERT_EQ(sql_on(path, "SELECT rowid || ':' || seq FROM tests WHERE test_id = 'a'"), "2:1");
  auto store = open_store(path);
  TestCorrection c;
  c.record = make_record("a");
  c.record.status = TestStatus::kCorrected;
  c.reason = "r";
  c.expected_version = 1;
  c.changed_by = "k1";
  ASSERT_TRUE(store->correct(c, nullptr).status.ok());
  c.record = make_record("b");
  CorrectionOutcome o = store->correct(c, nullptr);
  ASSERT_TRUE(o.status.ok()) << o.status.message();
  std::vector<std::string> feed;
  ChangeQuery q;
  q.clinic_id = "c1";
  ASSERT_TRUE(store
                  ->list_changes(q,
                                 [&](const TestVersion& v) {
                                   feed.push_back(v.record.test_id + "@" +
                                                  std::to_string(v.version) + ":" +
                                                  std::to_string(v.change_seq));
                                   return true;
                                 })
                  .ok());
  EXPECT_EQ(feed, (std::vector<std::string>{"a@1:1", "b@1:2", "c@1:3", "a@2:14", "b@2:15"}));
}

// The app killed (SIGKILL) while it corrects: every correction acknowledged before is there
// after the restart, and no test is torn (its row's version, document and status are those of
// its newest test_versions row).
TEST(SqliteStore, EveryAcknowledgedCorrectionSurvivesAKill) {
  TempDir dir;
  const std::string path = dir.file("t.db");
  {
    auto store = open_store(path);
    std::vector<TestRecord> batch;
    for (int i = 0; i < 20; ++i) batch.push_back(make_record("t" + std::to_string(i)));
    ASSERT_TRUE(store->insert_all(batch).status.ok());
  }
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    close(fds[0]);
    SqliteOptions o;
    o.path = path;
    std::unique_ptr<SqliteStore> store;
    if (!SqliteStore::open(o, store).ok()) _exit(2);
    // Bounded: at most 5,000 corrections (the parent kills it long before).
    for (int i = 0; i < 5000; ++i) {
      const int t = i % 20;
      TestCorrection c;
      c.record = make_record("t" + std::to_string(t));
      c.record.status = TestStatus::kCorrected;
      c.record.result = "correction " + std::to_string(i);
      c.reason = "r";
      c.expected_version = i / 20 + 1;
      c.changed_by = "anonymous";
      CorrectionOutcome out = store->correct(c, nullptr);
      if (!out.status.ok() || out.refusal != CorrectionRefusal::kNone) _exit(3);
      // Acknowledged: the test's index and the version it is at.
      const long long ack[2] = {t, out.current.version};
      if (write(fds[1], ack, sizeof ack) != static_cast<ssize_t>(sizeof ack)) _exit(4);
    }
    _exit(5);
  }
  close(fds[1]);
  std::map<int, long long> acked;  // test index -> highest acknowledged version
  long long ack[2];
  int received = 0;
  while (read(fds[0], ack, sizeof ack) == static_cast<ssize_t>(sizeof ack)) {
    acked[static_cast<int>(ack[0])] = ack[1];
    if (++received == 300) kill(child, SIGKILL);  // mid-stream
  }
  close(fds[0]);
  int wstatus = 0;
  ASSERT_EQ(waitpid(child, &wstatus, 0), child);
  ASSERT_TRUE(WIFSIGNALED(wstatus)) << "the child ended on its own: " << wstatus;
  ASSERT_GE(received, 300);

  auto store = open_store(path);  // after an unclean stop: quick_check, then the WAL's commits
  ASSERT_TRUE(store);
  for (int t = 0; t < 20; ++t) {
    SCOPED_TRACE(t);
    const std::string id = "t" + std::to_string(t);
    StoredDocument d;
    ASSERT_TRUE(store->get_test(id, d).ok());
    EXPECT_GE(d.version, acked[t]);  // nothing acknowledged is lost
    std::string clinic;
    std::vector<TestVersion> h;
    ASSERT_TRUE(store
                    ->list_history({id, 0, -1}, clinic,
                                   [&](const TestVersion& v) {
                                     h.push_back(v);
                                     return true;
                                   })
                    .ok());
    ASSERT_FALSE(h.empty());
    EXPECT_EQ(h.front().version, d.version);  // not torn: the row and its newest version agree
    EXPECT_EQ(h.front().doc, d.json);
    EXPECT_EQ(static_cast<long long>(h.size()), d.version);  // every version kept
  }
}

// The EXPLAIN QUERY PLAN of sql on the database at path, one line per step ("" on failure).
std::string query_plan(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, ("EXPLAIN QUERY PLAN " + sql).c_str(), -1, &st, nullptr),
            SQLITE_OK);
  std::string plan;
  while (st && sqlite3_step(st) == SQLITE_ROW) {
    plan += reinterpret_cast<const char*>(sqlite3_column_text(st, 3));
    plan += "\n";
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  return plan;
}

TEST(SqliteStore, TheListingIsServedByTheCoveringIndex) {
  TempDir dir;
  std::string path = dir.file("t.db");
  auto store = open_store(path);
  std::string plan = query_plan(path,
                                "SELECT doc, seq FROM tests WHERE clinic_id = 'c'"
                                " AND seq > 0 ORDER BY seq LIMIT -1");
  EXPECT_NE(plan.find("USING COVERING INDEX tests_by_clinic"), std::string::npos) << plan;
  EXPECT_EQ(plan.find("TEMP B-TREE"), std::string::npos) << plan;  // no sort step
}

// The date ranges and the status filter: each listing statement searches its index (no scan of
// the clinic), and a range reads only the rows inside it. SQLite's own step counter
// (SQLITE_STMTSTATUS_VM_STEP, deterministic) shows it: a 10-row range of a 5,000-row clinic
// costs about what 10 rows cost, not what the clinic costs.
TEST(SqliteStore, DateRangesAndStatusAreServedByTheirIndexes) {
  TempDir dir;
  std::string path = dir.file("t.db");
  constexpr int kRows = 5000;
  {
    auto store = open_store(path);
    std::vector<TestRecord> batch;
    for (int i = 0; i < kRows; ++i) batch.push_back(make_record("t" + std::to_string(i), "c1"));
    for (int i = 0; i < 200; ++i) batch.push_back(make_record("o" + std::to_string(i), "c2"));
    ASSERT_TRUE(store->insert_all(batch).status.ok());
  }
  // One millisecond apart, in seq order. Every tenth test corrected a month later, updated_at
  // in the opposite order (as corrections may leave it); every hundredth amended. The others'
  // updated_at is their created_at. The documents are not read here.
  sql_on(path,
         "UPDATE tests SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', '2026-01-01', (seq / 1000.0)"
         " || ' seconds'); UPDATE tests SET updated_at = CASE WHEN seq % 10 = 0 THEN"
         " strftime('%Y-%m-%dT%H:%M:%fZ', '2026-02-01', ((10000 - seq) / 1000.0) || ' seconds')"
         " ELSE created_at END, version = CASE WHEN seq % 10 = 0 THEN 2 ELSE 1 END,"
         " status = CASE WHEN seq % 100 = 0 THEN 'amended' ELSE status END" +
             std::string(";") + kRebuildCreatedOrderSql);
  auto ms = [](int n) {  // the created_at of seq n
    char buf[40];
    std::snprintf(buf, sizeof buf, "2026-01-01T00:00:%06.3fZ", n / 1000.0);
    return std::string(buf);
  };
  auto updated = [](int n) {  // the updated_at of seq n
    char buf[40];
    std::snprintf(buf, sizeof buf, "2026-02-01T00:00:%06.3fZ", (10000 - n) / 1000.0);
    return std::string(buf);
  };
  ASSERT_EQ(sql_on(path, "SELECT created_at FROM tests WHERE seq = 2500"), ms(2500));
  ASSERT_EQ(sql_on(path, "SELECT updated_at FROM tests WHERE seq = 2500"), updated(2500));

  struct Case {
    const char* name;
    ListQuery q;
    std::vector<const char*> steps;  // the plan's steps that read tests
    size_t rows;                     // what the listing returns
  };
  std::vector<Case> cases;
  auto add = [&](const char* name, std::vector<const char*> steps, size_t rows, auto set) {
    Case k{name, {}, std::move(steps), rows};
    k.q.clinic_id = "c1";
    set(k.q);
    cases.push_back(k);
  };
  // A created range: the clinic's index between the seqs of the bounds' created_marks, and the
  // late tests of the range (none here) from tests_created_late.
  add("created_from",
      {"USING INDEX tests_by_clinic (clinic_id=? AND seq>?)",
       "USING INDEX tests_created_late (clinic_id=? AND created_at>?)"},
      10, [&](ListQuery& q) { q.created_from = ms(4991); });
  add("created_to",
      {"USING INDEX tests_by_clinic (clinic_id=? AND seq>? AND seq<?)",
       "USING INDEX tests_created_late (clinic_id=? AND created_at<?)"},
      10, [&](ListQuery& q) { q.created_to = ms(11); });
  add("created range",
      {"USING INDEX tests_by_clinic (clinic_id=? AND seq>? AND seq<?)",
       "USING INDEX tests_created_late (clinic_id=? AND created_at>? AND created_at<?)"},
      10, [&](ListQuery& q) {
        q.created_from = ms(2500);
        q.created_to = ms(2510);
      });
  // An updated range: the corrected tests through tests_by_updated, the others (updated_at =
  // created_at) as a created range.
  add("updated_from",
      {"USING INDEX tests_by_updated (clinic_id=? AND updated_at>?)",
       "USING INDEX tests_by_clinic (clinic_id=? AND seq>?)"},
      10, [&](ListQuery& q) { q.updated_from = updated(100); });
  add("updated_to",
      {"USING INDEX tests_by_clinic (clinic_id=? AND seq>? AND seq<?)",
       "USING INDEX tests_by_updated (clinic_id=? AND updated_at<?)"},
      9, [&](ListQuery& q) { q.updated_to = ms(11); });
  add("updated range",
      {"USING INDEX tests_by_updated (clinic_id=? AND updated_at>? AND updated_at<?)",
       "USING INDEX tests_by_clinic (clinic_id=? AND seq>? AND seq<?)"},
      10, [&](ListQuery& q) {
        q.updated_from = updated(2600);
        q.updated_to = updated(2500);
      });
  add("updated range of uncorrected tests",
      {"USING INDEX tests_by_clinic (clinic_id=? AND seq>? AND seq<?)",
       "USING INDEX tests_created_late (clinic_id=? AND created_at>? AND created_at<?)"},
      10, [&](ListQuery& q) {
        q.updated_from = ms(2500);
        q.updated_to = ms(2512);
      });
  add("created range and status",
      {"USING INDEX tests_by_status (clinic_id=? AND status=? AND seq>? AND seq<?)"}, 1,
      [&](ListQuery& q) {
        q.created_from = ms(2495);
        q.created_to = ms(2505);
        q.status = TestStatus::kAmended;
      });
  add("both ranges and a patient",
      {"USING INDEX tests_by_patient (clinic_id=? AND patient_id=? AND seq>? AND seq<?)"}, 1,
      [&](ListQuery& q) {
        q.created_from = ms(2500);
        q.created_to = ms(2510);
        q.updated_from = ms(2500);
        q.patient_id = "patient-t2503";
      });
  add("status", {"USING INDEX tests_by_status (clinic_id=? AND status=? AND seq>?)"}, 50,
      [&](ListQuery& q) { q.status = TestStatus::kAmended; });

  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    const std::string sql = list_tests_sql(k.q);
    const std::string plan = query_plan(path, sql);
    for (const char* step : k.steps) {
      EXPECT_NE(plan.find(std::string("SEARCH tests ") + step), std::string::npos) << plan;
    }
    EXPECT_EQ(plan.find("SCAN"), std::string::npos) << plan;
    // Run it as the store binds it, counting SQLite's steps.
    sqlite3_stmt* st = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr), SQLITE_OK);
    auto bind = [&](int i, const std::optional<std::string>& v) {
      if (v) sqlite3_bind_text(st, i, v->c_str(), -1, SQLITE_TRANSIENT);
    };
    sqlite3_bind_text(st, 1, "c1", -1, SQLITE_STATIC);
    bind(2, k.q.patient_id);
    sqlite3_bind_int64(st, 4, 0);
    sqlite3_bind_int64(st, 5, 1000);
    if (k.q.status) sqlite3_bind_text(st, 6, test_status_name(*k.q.status), -1, SQLITE_STATIC);
    bind(7, k.q.created_from);
    bind(8, k.q.created_to);
    bind(9, k.q.updated_from);
    bind(10, k.q.updated_to);
    size_t rows = 0;
    while (sqlite3_step(st) == SQLITE_ROW) ++rows;
    const int steps = sqlite3_stmt_status(st, SQLITE_STMTSTATUS_VM_STEP, 0);
    sqlite3_finalize(st);
    EXPECT_EQ(rows, k.rows);
    // A pass over the clinic's 5,000 rows takes more than 5,000 steps; 10 rows take a few
    // hundred (the status listing's 50, about a thousand).
    EXPECT_LT(steps, 1500) << plan;
  }
  // The same statements through the store.
  sqlite3_close(db);
  auto store = open_store(path);
  for (const Case& k : cases) EXPECT_EQ(list_ids(*store, k.q).size(), k.rows) << k.name;
}

// A whole listing with a date range costs about what its rows cost, also when the range holds
// most of the clinic: the store reads it page by page (1,000 rows each), and a page that sorted
// every row of the range after the last seq made a listing of the range quadratic (12 pages of
// 12,000 rows: 78,000 rows sorted; at 300,000 rows, 49 times slower than the same listing
// without the range). Every case is checked against the plain listing filtered here.
TEST(SqliteStore, AListingOfAWideDateRangeIsNotQuadratic) {
  TempDir dir;
  std::string path = dir.file("t.db");
  constexpr int kRows = 12000;
  {
    auto store = open_store(path);
    std::vector<TestRecord> batch;
    for (int i = 0; i < kRows; ++i) batch.push_back(make_record("t" + std::to_string(i), "c1"));
    ASSERT_TRUE(store->insert_all(batch).status.ok());
  }
  // created_at one millisecond apart in seq order; updated_at in the opposite order.
  sql_on(path,
         "UPDATE tests SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', '2026-01-01', (seq / 1000.0)"
         " || ' seconds'), updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', '2026-02-01', ((20000 - seq)"
         " / 1000.0) || ' seconds'), status = CASE WHEN seq % 100 = 0 THEN 'amended' ELSE status"
         " END" +
             std::string(";") + kRebuildCreatedOrderSql);
  auto ms = [](int n, const char* day) {
    char buf[40];
    std::snprintf(buf, sizeof buf, "%sT00:00:%06.3fZ", day, n / 1000.0);
    return std::string(buf);
  };
  auto store = open_store(path);
  struct Case {
    const char* name;
    ListQuery q;
    std::function<bool(int)> in;  // by seq
  };
  std::vector<Case> cases;
  auto add = [&](const char* name, std::function<bool(int)> in, auto set) {
    Case k{name, {}, std::move(in)};
    k.q.clinic_id = "c1";
    set(k.q);
    cases.push_back(std::move(k));
  };
  add(
      "every row by created_from", [](int) { return true; },
      [&](ListQuery& q) { q.created_from = ms(0, "2026-01-01"); });
  add(
      "every row by updated_to", [](int) { return true; },
      [&](ListQuery& q) { q.updated_to = "2027-01-01T00:00:00.000Z"; });
  add(
      "the middle third", [](int seq) { return seq >= 4000 && seq < 8000; },
      [&](ListQuery& q) {
        q.created_from = ms(4000, "2026-01-01");
        q.created_to = ms(8000, "2026-01-01");
      });
  add(
      "the last tenth by updated_to", [](int seq) { return seq > 10800; },
      [&](ListQuery& q) { q.updated_to = ms(20000 - 10800, "2026-02-01"); });
  add(
      "every hundredth in a wide range", [](int seq) { return seq % 100 == 0 && seq >= 10; },
      [&](ListQuery& q) {
        q.created_from = ms(10, "2026-01-01");
        q.status = TestStatus::kAmended;
      });
  add(
      "a wide range after a cursor, ten rows", [](int seq) { return seq > 6000 && seq <= 6010; },
      [&](ListQuery& q) {
        q.created_from = ms(0, "2026-01-01");
        q.after_seq = 6000;
        q.limit = 10;
      });
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    std::vector<std::string> want;
    for (int seq = 1; seq <= kRows; ++seq) {
      if (seq > k.q.after_seq && k.in(seq)) want.push_back("t" + std::to_string(seq - 1));
    }
    if (k.q.limit >= 0 && want.size() > static_cast<size_t>(k.q.limit)) want.resize(k.q.limit);
    const long long before = store->listing_steps();
    EXPECT_EQ(list_ids(*store, k.q), want);
    const long long steps = store->listing_steps() - before;
    // A pass over the clinic's 12,000 rows in seq order takes about 20 steps a row.
    EXPECT_LT(steps, 40LL * kRows) << steps;
    // Ten rows of a range after a cursor cost about what ten rows cost (a client's page).
    if (k.q.limit == 10) {
      EXPECT_LT(steps, 2000) << steps;
    }
  }
}

// Whichever way a page of a date range is read (walking the clinic where the range is dense,
// through the range's index where it is sparse), every row of the range comes once, in seq
// order: a range dense in seq order (created_at), scattered (a third of the rows), or both,
// listed whole or page by page from a position.
TEST(SqliteStore, AWideDateRangeIsListedOnceInSeqOrderWhateverItsDensity) {
  TempDir dir;
  std::string path = dir.file("t.db");
  constexpr int kRows = 6000;
  {
    auto store = open_store(path);
    std::vector<TestRecord> batch;
    for (int i = 0; i < kRows; ++i) {
      batch.push_back(make_record("w" + std::to_string(i), i % 7 == 0 ? "c2" : "c1"));
    }
    ASSERT_TRUE(store->insert_all(batch).status.ok());
  }
  // created_at grows with seq, but every 13th row's is 2.5 s back (a clock stepped back: a late
  // test, which ranges find outside their range of seq); every fifth row is uncorrected
  // (updated_at = created_at); of the others, updated_at is inside March for every third row
  // below seq 3000 and every row from 4000 on, else in February.
  sql_on(path,
         "UPDATE tests SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', '2026-01-01', ((seq - CASE"
         " WHEN seq % 13 = 0 THEN 2500 ELSE 0 END) / 1000.0) || ' seconds'); UPDATE tests SET "
         "updated_at = CASE WHEN seq % 5 = 1 THEN created_at"
         " WHEN (seq < 3000 AND seq % 3 = 0) OR seq >= 4000"
         " THEN strftime('%Y-%m-%dT%H:%M:%fZ', '2026-03-01', (seq / 1000.0) || ' seconds')"
         " ELSE '2026-02-01T00:00:00.000Z' END, version = CASE WHEN seq % 5 = 1 THEN 1 ELSE 2 END" +
             std::string(";") + kRebuildCreatedOrderSql);
  auto expected = [&](const std::string& where) {
    std::vector<std::string> ids;
    std::string all = sql_on(path,
                             "SELECT group_concat(test_id, ' ') FROM (SELECT test_id FROM"
                             " tests WHERE clinic_id = 'c1' AND " +
                                 where + " ORDER BY seq)");
    for (size_t at = 0; at < all.size();) {
      size_t end = all.find(' ', at);
      if (end == std::string::npos) end = all.size();
      ids.push_back(all.substr(at, end - at));
      at = end + 1;
    }
    return ids;
  };
  auto store = open_store(path);
  struct Case {
    const char* name;
    std::string where;
    std::function<void(ListQuery&)> set;
  };
  const std::vector<Case> cases = {
      {"every row by created_at", "created_at >= '2026-01-01T00:00:00.000Z'",
       [](ListQuery& q) { q.created_from = "2026-01-01T00:00:00.000Z"; }},
      {"the second half by created_at", "created_at >= '2026-01-01T00:00:03.000Z'",
       [](ListQuery& q) { q.created_from = "2026-01-01T00:00:03.000Z"; }},
      {"scattered then dense by updated_at", "updated_at >= '2026-03-01T00:00:00.000Z'",
       [](ListQuery& q) { q.updated_from = "2026-03-01T00:00:00.000Z"; }},
      {"corrected and uncorrected by updated_at",
       "updated_at >= '2026-01-01T00:00:02.000Z' AND updated_at < '2026-02-01T00:00:00.001Z'",
       [](ListQuery& q) {
         q.updated_from = "2026-01-01T00:00:02.000Z";
         q.updated_to = "2026-02-01T00:00:00.001Z";
       }},
      {"a created range",
       "created_at >= '2026-01-01T00:00:01.000Z' AND created_at < '2026-01-01T00:00:03.000Z'",
       [](ListQuery& q) {
         q.created_from = "2026-01-01T00:00:01.000Z";
         q.created_to = "2026-01-01T00:00:03.000Z";
       }},
      {"scattered only",
       "updated_at >= '2026-03-01T00:00:00.000Z' AND created_at < "
       "'2026-01-01T00:00:03.500Z'",
       [](ListQuery& q) {
         q.updated_from = "2026-03-01T00:00:00.000Z";
         q.created_to = "2026-01-01T00:00:03.500Z";
       }},
  };
  for (const Case& k : cases) {
    SCOPED_TRACE(k.name);
    const std::vector<std::string> want = expected(k.where);
    ASSERT_GT(want.size(), 500u);
    ListQuery q;
    q.clinic_id = "c1";
    k.set(q);
    EXPECT_EQ(list_ids(*store, q), want);
    // Page by page (as cursors do): 100 rows at a time from the last seq delivered.
    std::vector<std::string> paged;
    q.limit = 100;
    for (int page = 0; page < 1000; ++page) {
      size_t before = paged.size();
      long long last = q.after_seq;
      ASSERT_TRUE(store
                      ->list_tests(q,
                                   [&](std::string_view json, long long seq) {
                                     last = seq;
                                     paged.push_back(field_of(json, "test_id"));
                                     return true;
                                   })
                      .ok());
      if (paged.size() == before) break;
      q.after_seq = last;
    }
    EXPECT_EQ(paged, want);
  }
}

// A test created while created_marks holds a later created_at (the clock stepped back) is a late
// one: no mark, kept in tests_created_late, and found by every range that holds its created_at.
TEST(SqliteStore, ATestCreatedAfterTheClockSteppedBackIsInItsRanges) {
  TempDir dir;
  std::string path = dir.file("t.db");
  {
    auto store = open_store(path);
    for (const char* id : {"a", "b"}) ASSERT_TRUE(store->insert(make_record(id, "c1")).status.ok());
  }
  // b was created 50 s ahead of the clock (then the clock stepped back), less than the minute
  // past which the writer repairs.
  sql_on(path,
         "UPDATE tests SET created_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '+50 seconds')"
         " WHERE test_id = 'b'; UPDATE tests SET updated_at = created_at;" +
             std::string(kRebuildCreatedOrderSql));
  const std::string b_at = sql_on(path, "SELECT created_at FROM tests WHERE test_id = 'b'");
  ASSERT_EQ(sql_on(path, "SELECT count(*) FROM created_marks"), "2");
  auto store = open_store(path);
  for (const char* id : {"c", "d"}) ASSERT_TRUE(store->insert(make_record(id, "c1")).status.ok());
  EXPECT_EQ(sql_on(path, "SELECT group_concat(test_id) FROM tests WHERE created_late = 1"), "c,d");
  EXPECT_EQ(sql_on(path, "SELECT count(*) FROM created_marks"), "2");
  auto ids = [&](auto set) {
    ListQuery q;
    q.clinic_id = "c1";
    set(q);
    return list_ids(*store, q);
  };
  using V = std::vector<std::string>;
  EXPECT_EQ(ids([](ListQuery& q) { q.created_from = "2000-01-01T00:00:00.000Z"; }),
            (V{"a", "b", "c", "d"}));
  EXPECT_EQ(ids([&](ListQuery& q) {
              q.created_from = "2000-01-01T00:00:00.000Z";
              q.created_to = b_at;
            }),
            (V{"a", "c", "d"}));
  EXPECT_EQ(ids([&](ListQuery& q) { q.created_from = b_at; }), (V{"b"}));
  EXPECT_EQ(ids([&](ListQuery& q) { q.updated_to = b_at; }), (V{"a", "c", "d"}));
  EXPECT_EQ(ids([&](ListQuery& q) { q.updated_from = b_at; }), (V{"b"}));
  // A page after c: d alone.
  EXPECT_EQ(ids([&](ListQuery& q) {
              q.created_to = b_at;
              q.after_seq = std::stoll(sql_on(path, "SELECT seq FROM tests WHERE test_id = 'c'"));
            }),
            (V{"d"}));
}

// A mark more than a minute ahead of the clock (the clock was far ahead when it was written):
// the next write makes the tests since it late and drops it, so the tests after are in order
// again, each without an entry in tests_created_late. The migration does the same.
TEST(SqliteStore, CreatesAfterTheClockWasFarAheadAreInOrderAgain) {
  TempDir dir;
  std::string path = dir.file("t.db");
  {
    auto store = open_store(path);
    for (const char* id : {"a", "b"}) ASSERT_TRUE(store->insert(make_record(id, "c1")).status.ok());
  }
  // b was written with the clock in 2999: its created_at, and the mark the writer left.
  sql_on(path,
         "UPDATE tests SET created_at = '2999-01-01T00:00:00.000Z', updated_at ="
         " '2999-01-01T00:00:00.000Z' WHERE test_id = 'b'; DELETE FROM created_marks WHERE seq ="
         " (SELECT seq FROM tests WHERE test_id = 'b'); INSERT INTO created_marks SELECT"
         " created_at, seq FROM tests WHERE test_id = 'b'");
  auto store = open_store(path);
  // The first write after is a batch refused whole (a duplicate, rolled back to its savepoint):
  // the repair is made at BEGIN, outside the savepoint, so it stays.
  EXPECT_EQ(store->insert_all({make_record("x", "c1"), make_record("a", "c1")}).status.code(),
            StatusCode::kDuplicate);
  EXPECT_EQ(sql_on(path, "SELECT group_concat(test_id) FROM tests WHERE created_late = 1"), "b");
  for (const char* id : {"c", "d"}) ASSERT_TRUE(store->insert(make_record(id, "c1")).status.ok());
  auto ids = [&](auto set) {
    ListQuery q;
    q.clinic_id = "c1";
    set(q);
    return list_ids(*store, q);
  };
  using V = std::vector<std::string>;
  auto check = [&](const V& in_order, const char* late) {
    EXPECT_EQ(sql_on(path,
                     "SELECT group_concat(test_id) FROM (SELECT test_id FROM tests WHERE"
                     " created_late = 1 ORDER BY test_id)"),
              late);
    EXPECT_LT(sql_on(path, "SELECT max(created_at) FROM created_marks"), "2999");
    V all = in_order;
    all.insert(all.begin() + 1, "b");
    EXPECT_EQ(ids([](ListQuery& q) { q.created_from = "2000-01-01T00:00:00.000Z"; }), all);
    EXPECT_EQ(ids([](ListQuery& q) { q.created_to = "2998-01-01T00:00:00.000Z"; }), in_order);
    EXPECT_EQ(ids([](ListQuery& q) { q.created_from = "2999-01-01T00:00:00.000Z"; }), (V{"b"}));
    EXPECT_EQ(ids([](ListQuery& q) { q.updated_from = "2999-01-01T00:00:00.000Z"; }), (V{"b"}));
  };
  check({"a", "c", "d"}, "b");
  // Marked again from the rows (as a migration does), b is in order and its mark ahead again,
  // c and d late after it: the next write makes b late the same way.
  sql_on(path, kRebuildCreatedOrderSql);
  EXPECT_EQ(sql_on(path, "SELECT max(created_at) FROM created_marks"), "2999-01-01T00:00:00.000Z");
  ASSERT_TRUE(store->insert(make_record("e", "c1")).status.ok());
  check({"a", "c", "d", "e"}, "b,c,d");
}

// More tests written since a mark ahead of the clock than a repair takes on (the clock is behind
// now, say it lost its time): none of them is touched, and the tests written now are the late
// ones, still in every range that holds them.
TEST(SqliteStore, TestsWrittenWhileTheClockIsBehindAreTheLateOnes) {
  TempDir dir;
  std::string path = dir.file("t.db");
  constexpr int kAhead = 10001;
  {
    auto store = open_store(path);
    std::vector<TestRecord> batch;
    for (int i = 0; i < kAhead; ++i) batch.push_back(make_record("f" + std::to_string(i), "c1"));
    ASSERT_TRUE(store->insert_all(batch).status.ok());
  }
  // The batch was written in 2999 (by the clock then), and left its mark.
  sql_on(path,
         "UPDATE tests SET created_at = '2999-01-01T00:00:00.000Z', updated_at ="
         " '2999-01-01T00:00:00.000Z'; DELETE FROM created_marks; INSERT INTO created_marks"
         " SELECT created_at, min(seq) FROM tests");
  auto store = open_store(path);
  ASSERT_TRUE(store->insert(make_record("now", "c1")).status.ok());
  EXPECT_EQ(sql_on(path, "SELECT group_concat(test_id) FROM tests WHERE created_late = 1"), "now");
  EXPECT_EQ(sql_on(path, "SELECT group_concat(created_at) FROM created_marks"),
            "2999-01-01T00:00:00.000Z");
  ListQuery q;
  q.clinic_id = "c1";
  q.created_to = "2998-01-01T00:00:00.000Z";
  EXPECT_EQ(list_ids(*store, q), (std::vector<std::string>{"now"}));
  q.created_to.reset();
  q.created_from = "2999-01-01T00:00:00.000Z";
  EXPECT_EQ(list_ids(*store, q).size(), static_cast<size_t>(kAhead));
}

// The statement migrate pages through every test with: a range of the table's rowids, not a
// scan and a sort of the whole table per page.
TEST(SqliteStore, EveryTestIsPagedByARangeOfTheTable) {
  TempDir dir;
  std::string path = dir.file("t.db");
  auto store = open_store(path);
  std::string plan = query_plan(path, kListAllTestsSql);
  EXPECT_NE(plan.find("SEARCH tests USING INTEGER PRIMARY KEY (rowid>?)"), std::string::npos)
      << plan;
  EXPECT_EQ(plan.find("TEMP B-TREE"), std::string::npos) << plan;
}

// Each chunk of the background integrity check is a range of its b-tree, never a scan and a
// sort of the rest of it (which would make the check quadratic in the file's size).
TEST(SqliteStore, IntegrityCheckChunksAreRangesOfTheirBtree) {
  TempDir dir;
  std::string path = dir.file("t.db");
  auto store = open_store(path);
  std::vector<std::string> sqls = integrity_chunk_sql();
  EXPECT_EQ(sqls.size(), 13u);
  for (const std::string& sql : sqls) {
    std::string plan = query_plan(path, sql);
    EXPECT_EQ(plan.rfind("SEARCH ", 0), 0u) << sql << "\n" << plan;
    EXPECT_EQ(plan.find("TEMP B-TREE"), std::string::npos) << sql << "\n" << plan;
  }
}

// Opens path after a clean stop with the given chunk size and waits (at most 60 s) for the
// background integrity check to end; returns its state.
std::unique_ptr<SqliteStore> open_and_check(const std::string& path, int chunk_rows,
                                            StoreStats::Integrity& state) {
  SqliteOptions o;
  o.path = path;
  o.integrity_chunk_rows = chunk_rows;
  auto store = open_store(o);
  state = StoreStats::Integrity::kNone;
  if (!store) return store;
  for (int i = 0; i < 6000; ++i) {
    state = store->stats().integrity;
    if (state != StoreStats::Integrity::kRunning) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return store;
}

// Chunk by chunk, each after the last key of the one before, the check reads every entry of
// the tests table and its seven indexes, test_versions and its two, and the audit trail once
// (each test here is final and uncorrected, so in neither tests_by_status nor tests_by_updated,
// and holds its version 1 in its row, so test_versions is empty): also when the rows fill their
// last chunk exactly, and with chunks of one entry.
TEST(SqliteStore, BackgroundIntegrityCheckReadsEveryEntryOnce) {
  for (int rows : {49, 50}) {
    for (int chunk : {1, 7, 1000}) {
      SCOPED_TRACE(std::to_string(rows) + " rows, chunks of " + std::to_string(chunk));
      TempDir dir;
      std::string path = dir.file("t.db");
      {
        auto store = open_store(path);
        for (int i = 0; i < rows; ++i) {
          // Clinics and patients out of insertion order, so each index has its own order.
          TestRecord r = make_record("t" + std::to_string((i * 37) % rows),
                                     "c" + std::to_string(i % 3), i % 2 ? "blood" : "urine");
          AuditEntry audit;
          audit.action = "create";
          audit.detail = "{}";
          ASSERT_TRUE(store->insert(r, i % 2 ? &audit : nullptr).status.ok());
        }
      }  // a clean stop: the next open skips quick_check and checks in the background
      StoreStats::Integrity state;
      auto store = open_and_check(path, chunk, state);
      ASSERT_TRUE(store);
      EXPECT_EQ(state, StoreStats::Integrity::kOk);
      // Five entries a test, one a created_marks row (a create's created_at, unless the one
      // before took the same millisecond), one an audit entry.
      const int marks = std::stoi(sql_on(path, "SELECT count(*) FROM created_marks"));
      EXPECT_GE(marks, 1);
      EXPECT_EQ(store->integrity_entries(), rows * 5 + marks + rows / 2);
      EXPECT_GE(store->stats().integrity_seconds, 0);
      EXPECT_TRUE(store->check_health().ok());
    }
  }
}

// One leaf of an index garbled while the store was stopped: the check finds it, the store
// reports it and refuses every write.
TEST(SqliteStore, BackgroundIntegrityCheckFindsAGarbledPageAndRefusesWrites) {
  TempDir dir;
  std::string path = dir.file("t.db");
  {
    auto store = open_store(path);
    std::vector<TestRecord> batch;
    for (int i = 0; i < 300; ++i) batch.push_back(make_record("t" + std::to_string(i)));
    ASSERT_TRUE(store->insert_all(batch).status.ok());
  }
  std::string middle = sql_on(path,
                              "SELECT pageno FROM dbstat WHERE name = 'tests_by_patient' AND"
                              " pagetype = 'leaf' ORDER BY path LIMIT 1 OFFSET"
                              " (SELECT count(*) / 2 FROM dbstat WHERE name = 'tests_by_patient'"
                              " AND pagetype = 'leaf')");
  ASSERT_FALSE(middle.empty());
  ASSERT_GT(std::stoll(middle), 1);
  {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp((std::stoll(middle) - 1) * 4096);
    f << std::string(4096, '\xab');
  }
  StoreStats::Integrity state;
  auto store = open_and_check(path, 10, state);
  ASSERT_TRUE(store);
  EXPECT_EQ(state, StoreStats::Integrity::kDamaged);
  EXPECT_EQ(store->check_health().code(), StatusCode::kCorrupt);
  EXPECT_EQ(store->insert(make_record("new")).status.code(), StatusCode::kCorrupt);
  EXPECT_EQ(store->insert_all({make_record("new2")}).status.code(), StatusCode::kCorrupt);
  AuditEntry audit;
  audit.action = "read";
  audit.detail = "{}";
  EXPECT_EQ(store->append_audit(audit).code(), StatusCode::kCorrupt);
  EXPECT_EQ(store->stats().writes, 0);  // refused before the engine
}

// Every test_id list_all_tests returns, paging page_size at a time after the last seq seen,
// each page's seqs rising.
std::vector<std::string> page_all_tests(SqliteStore& store, long long page_size) {
  std::vector<std::string> paged;
  long long last = 0;
  for (int page = 0; page < 10; ++page) {
    size_t before = paged.size();
    Status s = store.list_all_tests(last, page_size, [&](const StoredTest& t) {
      EXPECT_GT(t.seq, last);
      last = t.seq;
      paged.push_back(t.test_id);
      return true;
    });
    EXPECT_TRUE(s.ok()) << s.message();
    if (!s.ok() || paged.size() - before < static_cast<size_t>(page_size)) break;
  }
  return paged;
}

// Pages of list_all_tests come in seq order, each after the last one's seq, and end.
TEST(SqliteStore, ListAllTestsPagesInSeqOrder) {
  TempDir dir;
  auto store = open_store(dir.file("t.db"));
  std::vector<std::string> written;
  for (int i = 0; i < 7; ++i) {
    written.push_back("t" + std::to_string(i));
    ASSERT_TRUE(store->insert(make_record(written.back(), i % 2 ? "c1" : "c2")).status.ok());
  }
  EXPECT_EQ(page_all_tests(*store, 3), written);
  EXPECT_TRUE(store->pages_all_tests_by_rowid());  // the range of kListAllTestsSql, not a sort
}

// SQLite may renumber an implicit rowid (a reload from .dump does): then the pages still come
// in seq order. One row's rowid moved above every seq, and one below.
TEST(SqliteStore, ListAllTestsKeepsSeqOrderWhenARowidWasRenumbered) {
  for (const char* renumber : {"UPDATE tests SET rowid = 100 WHERE test_id = 't0'",
                               "UPDATE tests SET rowid = -1 WHERE test_id = 't4'"}) {
    SCOPED_TRACE(renumber);
    TempDir dir;
    std::string path = dir.file("t.db");
    std::vector<std::string> written;
    {
      auto store = open_store(path);
      for (int i = 0; i < 5; ++i) {
        written.push_back("t" + std::to_string(i));
        ASSERT_TRUE(store->insert(make_record(written.back())).status.ok());
      }
    }
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, renumber, nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(db);
    auto store = open_store(path);
    EXPECT_EQ(page_all_tests(*store, 2), written);
    EXPECT_FALSE(store->pages_all_tests_by_rowid());
  }
}

TEST(SqliteStore, TheSchemaIsVersionedAndTheJournalIsAWal) {
  TempDir dir;
  std::string path = dir.file("t.db");
  auto store = open_store(path);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db, "PRAGMA user_version", -1, &st, nullptr);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_EQ(sqlite3_column_int(st, 0), SqliteStore::kSchemaVersion);
  sqlite3_finalize(st);
  sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, nullptr);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), "wal");
  sqlite3_finalize(st);
  sqlite3_close(db);
}

// A client that stops reading mid-listing must not pin a read snapshot: with one, no checkpoint
// can restart the WAL, and 20,000 commits grew it to 256 MB.
TEST(SqliteStore, AStalledListingDoesNotKeepTheWalFromRestarting) {
  TempDir dir;
  std::string path = dir.file("t.db");
  SqliteOptions o;
  o.path = path;
  o.synchronous = "OFF";  // WAL growth does not depend on fsync; this keeps the test quick
  auto store = open_store(o);
  constexpr int kBefore = 1500;  // more than one page of the listing
  for (int i = 0; i < kBefore; ++i)
    ASSERT_TRUE(store->insert(make_record("pre" + std::to_string(i))).status.ok());

  std::mutex mu;
  std::condition_variable cv;
  bool stalled = false, release = false;
  std::vector<std::pair<std::string, long long>> rows;
  std::thread lister([&] {
    ListQuery q;
    q.clinic_id = "c1";
    bool first_page = true;
    Status s = store->list_tests(
        q,
        [&](std::string_view json, long long seq) {
          rows.emplace_back(field_of(json, "test_id"), seq);
          return true;
        },
        [&] {
          // The handler sends after each page: a client that stops reading after the first
          // page stalls it here.
          if (first_page) {
            first_page = false;
            std::unique_lock<std::mutex> lock(mu);
            stalled = true;
            cv.notify_all();
            cv.wait(lock, [&] { return release; });
          }
          return true;
        });
    EXPECT_TRUE(s.ok()) << s.message();
  });
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return stalled; });
  }
  constexpr int kInserts = 20000;
  for (int i = 0; i < kInserts; ++i) {
    ASSERT_TRUE(store->insert(make_record("during" + std::to_string(i), "c2")).status.ok());
  }
  auto wal_bytes = std::filesystem::file_size(path + "-wal");
  {
    std::lock_guard<std::mutex> lock(mu);
    release = true;
    cv.notify_all();
  }
  lister.join();
  std::cout << "WAL after " << kInserts << " commits during a stalled listing: " << wal_bytes
            << " bytes\n";
  EXPECT_LT(wal_bytes, 64u * 1024 * 1024);
  ASSERT_EQ(rows.size(), static_cast<size_t>(kBefore));
  for (int i = 0; i < kBefore; ++i)
    EXPECT_EQ(rows[static_cast<size_t>(i)].first, "pre" + std::to_string(i));
}

// A job whose insert fails for its own reason (here a trigger that refuses one test_id) rolls
// back only its savepoint: the other jobs of the same transaction commit.
TEST(SqliteStore, OneJobFailingForItsOwnReasonLeavesTheRestOfItsBatchCommitted) {
  TempDir dir;
  std::string path = dir.file("t.db");
  open_store(path).reset();  // create the schema
  std::mutex mu;
  std::condition_variable cv;
  bool hold = true;
  SqliteOptions o;
  o.path = path;
  // Holds the first transaction at BEGIN, so that the jobs below queue up behind it and are
  // committed together by the next one.
  o.fault_hook = [&](const char* step) {
    if (std::string_view(step) == "BEGIN IMMEDIATE") {
      std::unique_lock<std::mutex> lock(mu);
      cv.wait(lock, [&] { return !hold; });
    }
    return SQLITE_OK;
  };
  auto store = open_store(o);
  // Added once the store is open (it refuses to start on a schema it did not make); its
  // statements are prepared again with the trigger on their next step.
  sql_on(path,
         "CREATE TRIGGER refuse_poison BEFORE INSERT ON tests WHEN NEW.test_id LIKE 'poison%'"
         " BEGIN SELECT RAISE(ABORT, 'refused'); END");
  bool shared = false;
  for (int round = 0; round < 5 && !shared; ++round) {
    std::string r = std::to_string(round);
    {
      std::lock_guard<std::mutex> lock(mu);
      hold = true;
    }
    std::thread first([&] { EXPECT_TRUE(store->insert(make_record("first" + r)).status.ok()); });
    std::vector<WriteOutcome> outcomes(9);
    std::vector<std::thread> threads;
    for (int t = 0; t < 9; ++t) {
      threads.emplace_back([&, t] {
        std::string id = (t == 4 ? "poison" : "ok" + std::to_string(t) + "-") + r;
        outcomes[static_cast<size_t>(t)] = store->insert(make_record(id));
      });
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(300));  // let them queue
    {
      std::lock_guard<std::mutex> lock(mu);
      hold = false;
      cv.notify_all();
    }
    first.join();
    for (auto& t : threads) t.join();
    EXPECT_EQ(outcomes[4].status.code(), StatusCode::kInternal) << outcomes[4].status.message();
    for (int t = 0; t < 9; ++t) {
      if (t == 4) continue;
      EXPECT_TRUE(outcomes[static_cast<size_t>(t)].status.ok())
          << t << ": " << outcomes[static_cast<size_t>(t)].status.message();
      if (outcomes[static_cast<size_t>(t)].txn_id == outcomes[4].txn_id) shared = true;
    }
  }
  EXPECT_TRUE(shared) << "the refused job never shared a transaction with another";
  std::string json;
  EXPECT_EQ(store->get_test("poison0", json).code(), StatusCode::kNotFound);
  EXPECT_TRUE(store->get_test("ok0-0", json).ok());
  EXPECT_TRUE(store->check_health().ok());  // the job's own failure says nothing of storage
}

// A failed COMMIT fails every job of its batch, as a storage I/O error (503), not "full".
// GET /healthz reports the failing write path until a write commits again.
TEST(SqliteStore, AFailedCommitIsAnIoErrorAndMakesTheStoreUnhealthyUntilAWriteCommits) {
  TempDir dir;
  std::atomic<int> fail_commits{0};
  SqliteOptions o;
  o.path = dir.file("t.db");
  o.fault_hook = [&](const char* step) {
    if (std::string_view(step) == "COMMIT" && fail_commits > 0) {
      fail_commits--;
      return SQLITE_IOERR_FSYNC;
    }
    return SQLITE_OK;
  };
  auto store = open_store(o);
  ASSERT_TRUE(store->insert(make_record("before")).status.ok());
  EXPECT_TRUE(store->check_health().ok());
  fail_commits = 1;
  WriteOutcome w = store->insert(make_record("lost"));
  EXPECT_EQ(w.status.code(), StatusCode::kIoError) << w.status.message();
  EXPECT_EQ(http_status_for(w.status.code()), 503);
  EXPECT_STREQ(client_message_for(w.status.code()), "storage I/O error");
  Status health = store->check_health();
  EXPECT_EQ(health.code(), StatusCode::kIoError) << "healthz must report a failing write path";
  std::string json;
  EXPECT_EQ(store->get_test("lost", json).code(), StatusCode::kNotFound);
  ASSERT_TRUE(store->insert(make_record("after")).status.ok());
  EXPECT_TRUE(store->check_health().ok());
  EXPECT_EQ(list_ids(*store, "c1"), (std::vector<std::string>{"before", "after"}));
}

// A ROLLBACK that fails leaves the connection inside the transaction, where every later BEGIN
// fails: the writer must start over on a fresh connection.
TEST(SqliteStore, AFailedRollbackDoesNotWedgeTheWriter) {
  TempDir dir;
  std::atomic<bool> fail{false};
  SqliteOptions o;
  o.path = dir.file("t.db");
  o.fault_hook = [&](const char* step) {
    std::string_view s(step);
    if (fail && (s == "COMMIT" || s == "ROLLBACK")) {
      if (s == "ROLLBACK") fail = false;
      return SQLITE_IOERR;
    }
    return SQLITE_OK;
  };
  auto store = open_store(o);
  fail = true;
  EXPECT_FALSE(store->insert(make_record("lost")).status.ok());
  EXPECT_FALSE(fail.load()) << "ROLLBACK was not attempted";
  for (int i = 0; i < 3; ++i) {
    WriteOutcome w = store->insert(make_record("after" + std::to_string(i)));
    EXPECT_TRUE(w.status.ok()) << w.status.message();
  }
  EXPECT_EQ(list_ids(*store, "c1"), (std::vector<std::string>{"after0", "after1", "after2"}));
}

TEST(SqliteStore, AnIoErrorOnWriteIsFullOnlyWhenTheFilesystemIsOutOfSpace) {
  struct statvfs fs {};
  fs.f_frsize = 4096;
  fs.f_files = 1000;
  fs.f_favail = 500;
  fs.f_bavail = 1000000;  // ~4 GB free: a failing disk, not a full one
  EXPECT_EQ(classify_write_io_error(fs), StatusCode::kIoError);
  fs.f_bavail = 10;  // 40 KB free
  EXPECT_EQ(classify_write_io_error(fs), StatusCode::kFull);
  fs.f_bavail = 1000000;
  fs.f_favail = 0;  // no inode left
  EXPECT_EQ(classify_write_io_error(fs), StatusCode::kFull);
  EXPECT_EQ(http_status_for(StatusCode::kFull), 507);
  EXPECT_EQ(http_status_for(StatusCode::kIoError), 503);
}

// The schema of version 1, exactly as the first release created it, and its INSERT.
const char kSchemaV1[] =
    "CREATE TABLE IF NOT EXISTS tests ("
    "  test_id    TEXT PRIMARY KEY NOT NULL,"
    "  seq        INTEGER NOT NULL,"
    "  patient_id TEXT NOT NULL,"
    "  clinic_id  TEXT NOT NULL,"
    "  test_type  TEXT NOT NULL,"
    "  result     TEXT NOT NULL,"
    "  created_at TEXT NOT NULL,"
    "  doc        TEXT NOT NULL"
    ") STRICT;"
    "CREATE INDEX IF NOT EXISTS tests_by_clinic ON tests (clinic_id, seq, doc);"
    "CREATE INDEX IF NOT EXISTS tests_by_patient ON tests (clinic_id, patient_id, seq);"
    "CREATE INDEX IF NOT EXISTS tests_by_type ON tests (clinic_id, test_type, seq);"
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) STRICT;"
    "INSERT OR IGNORE INTO meta (name, value) VALUES ('cursor_key', randomblob(16));";

// The copies the store took before migrating path (see pre_migration_backup_path).
std::vector<std::string> pre_migration_copies(const std::string& path) {
  std::vector<std::string> found;
  std::string prefix = std::filesystem::path(path).filename().string() + ".pre-migration-v";
  for (const auto& e :
       std::filesystem::directory_iterator(std::filesystem::path(path).parent_path())) {
    std::string name = e.path().filename().string();
    if (name.rfind(prefix, 0) == 0) found.push_back(e.path().string());
  }
  return found;
}

TEST(SqliteStore, MigratesAVersion1DatabaseAtStart) {
  TempDir dir;
  std::string path = dir.file("t.db");
  std::string v1 =
      std::string("PRAGMA journal_mode=WAL; BEGIN;") + kSchemaV1 + "PRAGMA user_version=1; COMMIT;";
  for (const char* id : {"a", "b", "c"}) {
    std::string doc = test_record_json(make_record(id), "2026-01-01T00:00:00.000Z");
    std::string quoted;
    for (char ch : doc) quoted += ch == '\'' ? std::string("''") : std::string(1, ch);
    v1 += std::string(
              "INSERT INTO tests (rowid, seq, test_id, patient_id, clinic_id, test_type,"
              " result, created_at, doc) SELECT m, m, '") +
          id + "', 'patient-" + id + "', 'c1', 'blood', 'result of " + id +
          "', '2026-01-01T00:00:00.000Z', '" + quoted +
          "' FROM (SELECT coalesce(max(rowid), 0) + 1 AS m FROM tests);";
  }
  v1 += "DELETE FROM tests WHERE test_id = 'c';";  // the newest, seq 3
  sql_on(path, v1);
  std::string key = sql_on(path, "SELECT hex(value) FROM meta WHERE name = 'cursor_key'");

  auto store = open_store(path);
  ASSERT_TRUE(store);
  EXPECT_EQ(sql_on(path, "PRAGMA user_version"), std::to_string(SqliteStore::kSchemaVersion));
  EXPECT_EQ(sql_on(path, "SELECT value FROM counters WHERE name = 'last_seq'"), "2");
  // A verified copy of the version-1 database was taken first, beside it.
  std::vector<std::string> copies = pre_migration_copies(path);
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(sql_on(copies[0], "PRAGMA user_version"), "1");
  EXPECT_EQ(sql_on(copies[0], "SELECT group_concat(test_id) FROM tests"), "a,b");
  EXPECT_EQ(sql_on(copies[0], "PRAGMA journal_mode"), "delete");
  ListQuery q;
  q.clinic_id = "c1";
  EXPECT_EQ(list_ids(*store, q), (std::vector<std::string>{"a", "b"}));
  ASSERT_TRUE(store->insert(make_record("d")).status.ok());
  auto rows = list_with_seq(*store, q);
  EXPECT_EQ(rows.back().first, "d");
  EXPECT_EQ(rows.back().second, 3);  // v1 had already forgotten c's 3; from now on none is lost
  EXPECT_EQ(sql_on(path, "SELECT hex(value) FROM meta WHERE name = 'cursor_key'"), key);
  store.reset();
  store = open_store(path);  // opening a current database again changes nothing (no new copy)
  EXPECT_EQ(list_ids(*store, q), (std::vector<std::string>{"a", "b", "d"}));
  EXPECT_EQ(pre_migration_copies(path).size(), 1u);
}

// Migrations 1 -> 2 and 2 -> 3 as the releases before versions ran them.
const char kMigrationsToV3[] =
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL)"
    " STRICT, WITHOUT ROWID;"
    "INSERT OR IGNORE INTO counters (name, value)"
    " SELECT 'last_seq', coalesce(max(rowid), 0) FROM tests;"
    "CREATE TABLE IF NOT EXISTS api_keys ("
    "  key_id      TEXT PRIMARY KEY NOT NULL,"
    "  name        TEXT NOT NULL,"
    "  scopes      TEXT NOT NULL,"
    "  secret_hash TEXT NOT NULL,"
    "  created_at  TEXT NOT NULL,"
    "  revoked_at  TEXT"
    ") STRICT;"
    "CREATE TABLE IF NOT EXISTS audit ("
    "  seq        INTEGER PRIMARY KEY NOT NULL,"
    "  ts         TEXT NOT NULL,"
    "  request_id TEXT NOT NULL,"
    "  key_id     TEXT NOT NULL,"
    "  action     TEXT NOT NULL,"
    "  clinic_id  TEXT NOT NULL,"
    "  detail     TEXT NOT NULL,"
    "  outcome    INTEGER NOT NULL,"
    "  prev_hash  TEXT NOT NULL,"
    "  hash       TEXT NOT NULL"
    ") STRICT;";

// A schema-3 database (tests without versions) is migrated at start: each document gains
// status, version and updated_at by text (the escapes already there unchanged), each test its
// version 1 in test_versions, in seq order, by "unknown"; the result passes restore's checks and
// takes corrections.
TEST(SqliteStore, MigratesAVersion3DatabaseToVersionsAtStart) {
  TempDir dir;
  std::string path = dir.file("t.db");
  std::string v3 = std::string("PRAGMA journal_mode=WAL; BEGIN;") + kSchemaV1 + kMigrationsToV3 +
                   "PRAGMA user_version=3;";
  std::map<std::string, std::string> old_docs;
  const std::vector<std::string> ids = {"z", "a", "m"};  // seq order, not id order
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string& id = ids[i];
    TestRecord r = make_record(id, i == 1 ? "c2" : "c1");
    r.result = "tab\there, \"quoted\", back\\slash, caf\xc3\xa9, \xe2\x80\xa8";
    const std::string created_at = "2026-01-0" + std::to_string(i + 1) + "T00:00:00.000Z";
    std::string doc = test_record_json(r, created_at);
    old_docs[id] = doc;
    auto quote = [](const std::string& text) {
      std::string q = "'";
      for (char ch : text) q += ch == '\'' ? std::string("''") : std::string(1, ch);
      return q + "'";
    };
    v3 +=
        "INSERT INTO tests (rowid, seq, test_id, patient_id, clinic_id, test_type, result,"
        " created_at, doc) VALUES (" +
        std::to_string(i + 1) + ", " + std::to_string(i + 1) + ", " + quote(id) + ", " +
        quote(r.patient_id) + ", " + quote(r.clinic_id) + ", " + quote(r.test_type) + ", " +
        quote(r.result) + ", " + quote(created_at) + ", " + quote(doc) + ");";
  }
  v3 += "UPDATE counters SET value = 3 WHERE name = 'last_seq'; COMMIT;";
  sql_on(path, v3);
  ASSERT_EQ(sql_on(path, "PRAGMA user_version"), "3");

  auto store = open_store(path);
  ASSERT_TRUE(store);
  EXPECT_EQ(sql_on(path, "PRAGMA user_version"), std::to_string(SqliteStore::kSchemaVersion));
  std::vector<std::string> copies = pre_migration_copies(path);
  ASSERT_EQ(copies.size(), 1u);
  EXPECT_EQ(sql_on(copies[0], "PRAGMA user_version"), "3");
  for (size_t i = 0; i < ids.size(); ++i) {
    SCOPED_TRACE(ids[i]);
    const std::string& old = old_docs[ids[i]];
    const std::string created_at = "2026-01-0" + std::to_string(i + 1) + "T00:00:00.000Z";
    const std::string want = old.substr(0, old.size() - 1) +
                             ",\"status\":\"final\",\"version\":1,\"updated_at\":\"" + created_at +
                             "\"}";
    StoredDocument d;
    ASSERT_TRUE(store->get_test(ids[i], d).ok());
    EXPECT_EQ(d.json, want);  // byte for byte: the old escapes kept
    EXPECT_EQ(d.version, 1);
    TestRecord r = make_record(ids[i], i == 1 ? "c2" : "c1");
    r.result = "tab\there, \"quoted\", back\\slash, caf\xc3\xa9, \xe2\x80\xa8";
    EXPECT_EQ(d.json, test_document(r, created_at, 1, created_at));  // what a create writes now
    std::string clinic;
    std::vector<TestVersion> h;
    ASSERT_TRUE(store
                    ->list_history({ids[i], 0, -1}, clinic,
                                   [&](const TestVersion& v) {
                                     h.push_back(v);
                                     return true;
                                   })
                    .ok());
    ASSERT_EQ(h.size(), 1u);
    EXPECT_EQ(h[0].version, 1);
    EXPECT_EQ(h[0].change_seq, static_cast<long long>(i + 1));  // seq order
    EXPECT_EQ(h[0].changed_by, "unknown");
    EXPECT_EQ(h[0].changed_at, created_at);
    EXPECT_FALSE(h[0].reason.has_value());
    EXPECT_EQ(h[0].doc, want);
    EXPECT_EQ(h[0].record.result, r.result);
  }
  EXPECT_EQ(sql_on(path,
                   "SELECT group_concat(status || version || (updated_at = created_at))"
                   " FROM tests"),
            "final11,final11,final11");
  // The feed starts with the migrated tests; new changes follow them.
  TestCorrection c;
  c.record = make_record("m");
  c.record.status = TestStatus::kCorrected;
  c.reason = "after the upgrade";
  c.expected_version = 1;
  c.changed_by = "anonymous";
  CorrectionOutcome o = store->correct(c, nullptr);
  ASSERT_TRUE(o.status.ok()) << o.status.message();
  EXPECT_EQ(o.refusal, CorrectionRefusal::kNone);
  EXPECT_EQ(o.current.change_seq, 4);
  std::vector<std::string> feed;
  ChangeQuery cq;
  cq.clinic_id = "c1";
  ASSERT_TRUE(store
                  ->list_changes(cq,
                                 [&](const TestVersion& v) {
                                   feed.push_back(v.record.test_id + "@" +
                                                  std::to_string(v.version));
                                   return true;
                                 })
                  .ok());
  EXPECT_EQ(feed, (std::vector<std::string>{"z@1", "m@1", "m@2"}));
  store.reset();
  // What restore would take: the exact schema and every row agreeing with its document.
  DatabaseFacts facts;
  Status s = sqlite_check_file(path, true, facts);
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(facts.tests, 3);
  EXPECT_EQ(facts.versions, 4);
}

// An upgraded clinic's feed and list_all_versions (migrate) cost what their page costs: the walk of
// the tests rows that hold a version 1 starts after the tests migrated from before schema 5
// (counters.last_seq_before_v5; none of them holds its version 1), not at the page's position.
// Every change is there once, in order, across the upgrade and whatever the page size.
TEST(SqliteStore, AnUpgradedClinicsFeedPageCostsWhatItsRowsCost) {
  TempDir dir;
  std::string path = dir.file("t.db");
  constexpr int kOld = 2000;
  sql_on(path,
         std::string("PRAGMA journal_mode=WAL; BEGIN;") + kSchemaV1 + kMigrationsToV3 +
             "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < " +
             std::to_string(kOld) +
             ") INSERT INTO tests (rowid, seq, test_id, patient_id, clinic_id, test_type, result,"
             " created_at, doc) SELECT i, i, 'old' || i, 'patient-old' || i, 'c1', 'blood',"
             " 'result of old' || i, '2026-01-01T00:00:00.000Z', json_object('test_id', 'old' ||"
             " i, 'patient_id', 'patient-old' || i, 'clinic_id', 'c1', 'test_type', 'blood',"
             " 'result', 'result of old' || i, 'created_at', '2026-01-01T00:00:00.000Z') FROM n;"
             "UPDATE counters SET value = " +
             std::to_string(kOld) + " WHERE name = 'last_seq'; PRAGMA user_version=3; COMMIT;");
  auto store = open_store(path);
  ASSERT_TRUE(store);
  EXPECT_EQ(sql_on(path, "SELECT value FROM counters WHERE name = 'last_seq_before_v5'"),
            std::to_string(kOld));
  ASSERT_TRUE(store->insert(make_record("new")).status.ok());
  TestCorrection c;
  c.record = make_record("old7");
  c.record.status = TestStatus::kCorrected;
  c.reason = "after the upgrade";
  c.expected_version = 1;
  c.changed_by = "anonymous";
  ASSERT_TRUE(store->correct(c, nullptr).status.ok());
  c.record = make_record("new");
  ASSERT_TRUE(store->correct(c, nullptr).status.ok());
  ASSERT_TRUE(store->insert(make_record("newer")).status.ok());

  std::vector<std::string> want;
  for (int i = 1; i <= kOld; ++i)
    want.push_back("old" + std::to_string(i) + "@1:" + std::to_string(i));
  for (const char* v : {"new@1:", "old7@2:", "new@2:", "newer@1:"}) {
    want.push_back(v + std::to_string(kOld + 1 + (want.size() - kOld)));
  }
  auto name = [](const TestVersion& v) {
    return v.record.test_id + "@" + std::to_string(v.version) + ":" + std::to_string(v.change_seq);
  };
  for (long long limit : {1000, 7, 1}) {
    SCOPED_TRACE(limit);
    std::vector<std::string> feed, all;
    ChangeQuery q;
    q.clinic_id = "c1";
    q.limit = limit;
    for (;;) {
      size_t got = 0;
      ASSERT_TRUE(store
                      ->list_changes(q,
                                     [&](const TestVersion& v) {
                                       feed.push_back(name(v));
                                       q.after_change_seq = v.change_seq;
                                       ++got;
                                       return true;
                                     })
                      .ok());
      if (got == 0) break;
    }
    EXPECT_EQ(feed, want);
    long long after = 0;
    for (;;) {
      size_t got = 0;
      ASSERT_TRUE(store
                      ->list_all_versions(after, limit,
                                          [&](const TestVersion& v) {
                                            all.push_back(name(v));
                                            after = v.change_seq;
                                            ++got;
                                            return true;
                                          })
                      .ok());
      if (got == 0) break;
    }
    EXPECT_EQ(all, want);
  }

  // A page of 10 from the start, counted in SQLite's steps (deterministic): about what 10 rows
  // cost, not a walk of the 2,000 migrated tests.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  for (const char* sql : {kChangesSql, kAllVersionsSql}) {
    SCOPED_TRACE(sql);
    sqlite3_stmt* st = nullptr;
    ASSERT_EQ(sqlite3_prepare_v2(db, sql, -1, &st, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
    const bool feed = sql == kChangesSql;
    int i = 1;
    if (feed) sqlite3_bind_text(st, i++, "c1", -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, i++, 0);
    sqlite3_bind_int64(st, i, 10);
    int rows = 0;
    while (sqlite3_step(st) == SQLITE_ROW) ++rows;
    const int steps = sqlite3_stmt_status(st, SQLITE_STMTSTATUS_VM_STEP, 0);
    sqlite3_finalize(st);
    EXPECT_EQ(rows, 10);
    EXPECT_LT(steps, 1500);
  }
  sqlite3_close(db);
  store.reset();
  DatabaseFacts facts;
  Status s = sqlite_check_file(path, true, facts);
  EXPECT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(facts.versions, kOld + 4);
}

// A migration that fails half-way leaves the database exactly as it was: one transaction.
TEST(SqliteStore, AFailedMigrationChangesNothing) {
  TempDir dir;
  std::string path = dir.file("t.db");
  // Version 1, plus a stray table named like the one migration 1 -> 2 creates, with other
  // columns: its CREATE TABLE IF NOT EXISTS passes, its INSERT fails.
  sql_on(path, std::string("PRAGMA journal_mode=WAL; BEGIN;") + kSchemaV1 +
                   "CREATE TABLE counters (x INTEGER); PRAGMA user_version=1; COMMIT;");
  std::string schema_before = sql_on(path, "SELECT group_concat(sql, ';') FROM sqlite_schema");
  SqliteOptions o;
  o.path = path;
  std::unique_ptr<SqliteStore> store;
  Status s = SqliteStore::open(o, store);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("cannot migrate the schema"), std::string::npos) << s.message();
  EXPECT_EQ(sql_on(path, "PRAGMA user_version"), "1");
  EXPECT_EQ(sql_on(path, "SELECT group_concat(sql, ';') FROM sqlite_schema"), schema_before);
  EXPECT_EQ(pre_migration_copies(path).size(), 1u);  // the copy was taken before
}

// No copy, no migration: an older database whose copy cannot be written stays as it is.
TEST(SqliteStore, NoMigrationWithoutABackupFirst) {
  TempDir dir;
  std::string sub = dir.file("db");
  std::filesystem::create_directory(sub);
  std::string path = sub + "/t.db";
  sql_on(path, std::string("PRAGMA journal_mode=WAL; BEGIN;") + kSchemaV1 +
                   "PRAGMA user_version=1; COMMIT;");
  // Another connection keeps the -wal and -shm files there, so the store can open the database
  // in a directory where nothing new can be created: no room for the copy.
  sqlite3* other = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &other), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(other, "SELECT count(*) FROM tests", nullptr, nullptr, nullptr),
            SQLITE_OK);
  // Root may write to a read-only directory: as root, the store opens in a child process that
  // has become an unprivileged user (nobody), with the files handed to it.
  const bool as_root = geteuid() == 0;
  constexpr uid_t kNobody = 65534;
  if (as_root) {
    for (const std::string& p :
         std::vector<std::string>{dir.path(), sub, path, path + "-wal", path + "-shm"}) {
      ASSERT_EQ(chown(p.c_str(), kNobody, kNobody), 0) << p;
    }
  }
  std::filesystem::permissions(
      sub, std::filesystem::perms::owner_read | std::filesystem::perms::owner_exec);
  auto open_store = [&] {
    SqliteOptions o;
    o.path = path;
    std::unique_ptr<SqliteStore> store;
    Status s = SqliteStore::open(o, store);
    // 0: refused as expected; 1: opened (migrated without a backup); 2: refused for another reason
    if (s.ok()) return 1;
    if (s.message().find("before migrating") == std::string::npos) {
      std::cerr << "refused, but not for the backup: " << s.message() << "\n";
      return 2;
    }
    return 0;
  };
  int outcome;
  if (as_root) {
    pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
      if (setgid(kNobody) != 0 || setuid(kNobody) != 0 || access(sub.c_str(), W_OK) == 0) _exit(3);
      _exit(open_store());
    }
    int wstatus = 0;
    ASSERT_EQ(waitpid(child, &wstatus, 0), child);
    ASSERT_TRUE(WIFEXITED(wstatus)) << wstatus;
    outcome = WEXITSTATUS(wstatus);
    ASSERT_NE(outcome, 3) << "could not become an unprivileged user in the child";
  } else {
    ASSERT_NE(access(sub.c_str(), W_OK), 0);
    outcome = open_store();
  }
  std::filesystem::permissions(sub, std::filesystem::perms::owner_all);
  sqlite3_close(other);
  EXPECT_EQ(outcome, 0) << "1: migrated without a backup; 2: refused for another reason";
  EXPECT_EQ(sql_on(path, "PRAGMA user_version"), "1");
}

TEST(SqliteStore, RefusesAFileThatIsNotADatabase) {
  TempDir dir;
  std::string path = dir.file("t.db");
  std::ofstream(path) << std::string(8192, 'g');
  SqliteOptions o;
  o.path = path;
  std::unique_ptr<SqliteStore> store;
  Status s = SqliteStore::open(o, store);
  EXPECT_EQ(s.code(), StatusCode::kCorrupt);
  EXPECT_NE(s.message().find(path), std::string::npos);
  EXPECT_FALSE(store);
}

TEST(SqliteStore, RefusesANewerSchema) {
  TempDir dir;
  std::string path = dir.file("t.db");
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_exec(db, "PRAGMA user_version=99", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  SqliteOptions o;
  o.path = path;
  std::unique_ptr<SqliteStore> store;
  Status s = SqliteStore::open(o, store);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("schema version 99"), std::string::npos);
}

TEST(SqliteStore, MissingDirectoryIsReportedWithThePath) {
  SqliteOptions o;
  o.path = "/nonexistent-dir-tdapi/t.db";
  std::unique_ptr<SqliteStore> store;
  Status s = SqliteStore::open(o, store);
  EXPECT_EQ(s.code(), StatusCode::kReadOnly);
  EXPECT_NE(s.message().find(o.path), std::string::npos);
}

}  // namespace
}  // namespace tdapi
