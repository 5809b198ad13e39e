// store_sqlite_test.cpp: the SQLite store on a temp database: commit, duplicate, rollback,
// group commit under concurrency, reopen, refusal of damaged files.
#include "store_sqlite.h"

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <atomic>
#include <fstream>
#include <thread>
#include <vector>

#include "temp_dir.h"

namespace tdapi {
namespace {

TestRecord make_record(const std::string& id, const std::string& clinic = "c1") {
  return TestRecord{id, "patient-" + id, clinic, "blood", "result of " + id};
}

std::vector<std::string> list_ids(Store& store, const std::string& clinic) {
  std::vector<std::string> ids;
  Status s = store.list_by_clinic(clinic, [&](const StoredTestView& t) {
    ids.emplace_back(t.test_id);
    return true;
  });
  EXPECT_TRUE(s.ok()) << s.message();
  return ids;
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
  store->list_by_clinic("c1", [&](const StoredTestView& t) {
    ++rows;
    EXPECT_EQ(t.test_id, "t1");
    EXPECT_EQ(t.patient_id, "patient-t1");
    EXPECT_EQ(t.clinic_id, "c1");
    EXPECT_EQ(t.test_type, "blood");
    EXPECT_EQ(t.result, "result of t1");
    EXPECT_EQ(t.created_at.size(), 24u);
    EXPECT_EQ(t.created_at.back(), 'Z');
    return true;
  });
  EXPECT_EQ(rows, 1);
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
  WriterStats stats = store->writer_stats();
  EXPECT_EQ(stats.jobs, kThreads * kEach);
  EXPECT_EQ(stats.rollbacks, 0);
  EXPECT_LE(stats.transactions, stats.jobs);
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
  auto store = open_store(dir.file("t.db"), /*max_pages=*/8);
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

TEST(SqliteStore, DataSurvivesReopenAndSchemaIsVersioned) {
  TempDir dir;
  std::string path = dir.file("t.db");
  {
    auto store = open_store(path);
    ASSERT_TRUE(store->insert(make_record("keep")).status.ok());
  }
  auto store = open_store(path);
  EXPECT_EQ(list_ids(*store, "c1"), std::vector<std::string>{"keep"});
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
