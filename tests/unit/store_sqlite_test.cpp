// store_sqlite_test.cpp: the SQLite store on a temp database: commit, duplicate, rollback,
// group commit under concurrency, reopen, refusal of damaged files.
#include "store_sqlite.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <thread>
#include <vector>

#include "json.h"
#include "temp_dir.h"

namespace tdapi {
namespace {

TestRecord make_record(const std::string& id, const std::string& clinic = "c1") {
  return TestRecord{id, "patient-" + id, clinic, "blood", "result of " + id};
}

std::string field_of(std::string_view json, const char* name) {
  JsonTree tree = parse_json_document(json);
  const cJSON* v = tree ? cJSON_GetObjectItemCaseSensitive(tree.get(), name) : nullptr;
  return v && cJSON_IsString(v) ? v->valuestring : "<missing>";
}

std::vector<std::string> list_ids(Store& store, ListQuery q) {
  std::vector<std::string> ids;
  long long last = q.after_seq;
  Status s = store.list_tests(q, [&](std::string_view json, long long seq) {
    EXPECT_GT(seq, last);
    last = seq;
    ids.push_back(field_of(json, "test_id"));
    return true;
  });
  EXPECT_TRUE(s.ok()) << s.message();
  return ids;
}

std::vector<std::string> list_ids(Store& store, const std::string& clinic) {
  ListQuery q;
  q.clinic_id = clinic;
  return list_ids(store, q);
}

std::unique_ptr<SqliteStore> open_store(const std::string& path, long long max_pages = 0) {
  SqliteOptions o;
  o.path = path;
  o.max_page_count = max_pages;
  std::unique_ptr<SqliteStore> store;
  Status s = SqliteStore::open(o, store);
  EXPECT_TRUE(s.ok()) << s.message();
  return store;
}

TEST(SqliteStore, InsertCommitsAndListsEveryField) {
  TempDir dir;
  auto store = open_store(dir.file("t.db"));
  ASSERT_TRUE(store->insert(make_record("t1")).status.ok());
  int rows = 0;
  ListQuery q;
  q.clinic_id = "c1";
  store->list_tests(q, [&](std::string_view t, long long) {
    ++rows;
    EXPECT_EQ(field_of(t, "test_id"), "t1");
    EXPECT_EQ(field_of(t, "patient_id"), "patient-t1");
    EXPECT_EQ(field_of(t, "clinic_id"), "c1");
    EXPECT_EQ(field_of(t, "test_type"), "blood");
    EXPECT_EQ(field_of(t, "result"), "result of t1");
    std::string created_at = field_of(t, "created_at");
    EXPECT_EQ(created_at.size(), 24u);
    EXPECT_EQ(created_at.back(), 'Z');
    return true;
  });
  EXPECT_EQ(rows, 1);
  std::string json;
  ASSERT_TRUE(store->get_test("t1", json).ok());
  EXPECT_EQ(field_of(json, "result"), "result of t1");
  EXPECT_EQ(store->get_test("nope", json).code(), StatusCode::kNotFound);
  EXPECT_TRUE(list_ids(*store, "other").empty());
}

TEST(SqliteStore, DuplicateLeavesTheStoredRecordUntouched) {
  TempDir dir;
  auto store = open_store(dir.file("t.db"));
  ASSERT_TRUE(store->insert(make_record("t1")).status.ok());
  TestRecord again = make_record("t1", "c2");
  again.result = "different";
  WriteOutcome w = store->insert(again);
  EXPECT_EQ(w.status.code(), StatusCode::kDuplicate);
  ASSERT_EQ(w.duplicate_ids, std::vector<std::string>{"t1"});
  EXPECT_EQ(list_ids(*store, "c1"), std::vector<std::string>{"t1"});
  EXPECT_TRUE(list_ids(*store, "c2").empty());
}

TEST(SqliteStore, ListsOldestFirst) {
  TempDir dir;
  auto store = open_store(dir.file("t.db"));
  for (const char* id : {"z", "a", "m"}) ASSERT_TRUE(store->insert(make_record(id)).status.ok());
  EXPECT_EQ(list_ids(*store, "c1"), (std::vector<std::string>{"z", "a", "m"}));
}

TEST(SqliteStore, ConcurrentWritersAreAllStoredInFewerTransactions) {
  TempDir dir;
  auto store = open_store(dir.file("t.db"));
  constexpr int kThreads = 16, kEach = 100;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        std::string id = "w" + std::to_string(t) + "-" + std::to_string(i);
        if (!store->insert(make_record(id)).status.ok()) failures++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(list_ids(*store, "c1").size(), static_cast<size_t>(kThreads * kEach));
  StoreStats stats = store->stats();
  EXPECT_EQ(stats.writes, kThreads * kEach);
  EXPECT_EQ(stats.rollbacks, 0);
  EXPECT_LE(stats.transactions, stats.writes);
  EXPECT_GT(stats.database_bytes, 0);
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
  auto wal_bytes = std::filesystem::file_size(path + "-wal");
  EXPECT_LT(wal_bytes, 2u * 4 * SqliteStore::kCheckpointPages * 4096) << "the WAL never restarted";
}

TEST(SqliteStore, RacingOnOneIdExactlyOneWins) {
  TempDir dir;
  auto store = open_store(dir.file("t.db"));
  constexpr int kClients = 40;
  std::atomic<int> ok{0}, dup{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kClients; ++t) {
    threads.emplace_back([&, t] {
      TestRecord r = make_record("same");
      r.result = "from " + std::to_string(t);
      StatusCode c = store->insert(r).status.code();
      if (c == StatusCode::kOk) ok++;
      if (c == StatusCode::kDuplicate) dup++;
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ok.load(), 1);
  EXPECT_EQ(dup.load(), kClients - 1);
}

TEST(SqliteStore, FullDatabaseRollsBackAndKeepsEveryAcknowledgedRecord) {
  TempDir dir;
  auto store = open_store(dir.file("t.db"), /*max_pages=*/16);
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

TEST(SqliteStore, InsertAllIsAllOrNothingAndNamesEveryDuplicate) {
  TempDir dir;
  auto store = open_store(dir.file("t.db"));
  ASSERT_TRUE(store->insert(make_record("old")).status.ok());
  std::vector<TestRecord> batch = {make_record("b1"), make_record("old"), make_record("b2"),
                                   make_record("b1")};
  WriteOutcome w = store->insert_all(batch);
  EXPECT_EQ(w.status.code(), StatusCode::kDuplicate);
  EXPECT_EQ(w.duplicate_ids, (std::vector<std::string>{"old", "b1"}));
  EXPECT_EQ(list_ids(*store, "c1"), std::vector<std::string>{"old"});  // nothing written
  batch = {make_record("b1"), make_record("b2"), make_record("b3")};
  ASSERT_TRUE(store->insert_all(batch).status.ok());
  EXPECT_EQ(list_ids(*store, "c1"), (std::vector<std::string>{"old", "b1", "b2", "b3"}));
}

TEST(SqliteStore, FiltersAndPagesInInsertionOrder) {
  TempDir dir;
  auto store = open_store(dir.file("t.db"));
  for (int i = 0; i < 10; ++i) {
    TestRecord r = make_record("f" + std::to_string(i));
    r.patient_id = i % 2 ? "odd" : "even";
    r.test_type = i % 3 ? "blood" : "urine";
    ASSERT_TRUE(store->insert(r).status.ok());
  }
  ListQuery q;
  q.clinic_id = "c1";
  q.patient_id = "odd";
  EXPECT_EQ(list_ids(*store, q), (std::vector<std::string>{"f1", "f3", "f5", "f7", "f9"}));
  q.test_type = "urine";
  EXPECT_EQ(list_ids(*store, q), (std::vector<std::string>{"f3", "f9"}));
  q.patient_id.reset();
  EXPECT_EQ(list_ids(*store, q), (std::vector<std::string>{"f0", "f3", "f6", "f9"}));
  ListQuery page;
  page.clinic_id = "c1";
  page.limit = 4;
  std::vector<std::string> all;
  for (int guard = 0; guard < 10; ++guard) {
    long long last = -1;
    size_t before = all.size();
    store->list_tests(page, [&](std::string_view json, long long seq) {
      all.push_back(field_of(json, "test_id"));
      last = seq;
      return true;
    });
    if (all.size() == before) break;
    page.after_seq = last;
  }
  EXPECT_EQ(all,
            (std::vector<std::string>{"f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8", "f9"}));
}

TEST(SqliteStore, TheListingIsServedByTheCoveringIndex) {
  TempDir dir;
  std::string path = dir.file("t.db");
  auto store = open_store(path);
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db,
                               "EXPLAIN QUERY PLAN SELECT doc, seq FROM tests WHERE clinic_id = 'c'"
                               " AND seq > 0 ORDER BY seq LIMIT -1",
                               -1, &st, nullptr),
            SQLITE_OK);
  std::string plan;
  while (sqlite3_step(st) == SQLITE_ROW) {
    plan += reinterpret_cast<const char*>(sqlite3_column_text(st, 3));
    plan += "\n";
  }
  sqlite3_finalize(st);
  sqlite3_close(db);
  EXPECT_NE(plan.find("USING COVERING INDEX tests_by_clinic"), std::string::npos) << plan;
  EXPECT_EQ(plan.find("TEMP B-TREE"), std::string::npos) << plan;  // no sort step
}

TEST(SqliteStore, DataSurvivesReopenAndSchemaIsVersioned) {
  TempDir dir;
  std::string path = dir.file("t.db");
  {
    auto store = open_store(path);
    ASSERT_TRUE(store->insert(make_record("keep")).status.ok());
  }
  auto store = open_store(path);
  EXPECT_EQ(list_ids(*store, "c1"), std::vector<std::string>{"keep"});
  std::string secret = store->instance_secret();
  EXPECT_EQ(secret.size(), 16u);
  store.reset();
  store = open_store(path);
  EXPECT_EQ(store->instance_secret(), secret);  // cursors stay valid across restarts
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
