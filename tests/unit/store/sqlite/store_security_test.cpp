// store_security_test.cpp: access keys and the audit trail in the SQLite store: audit entries
// commit with the writes they record, chain across restarts, and keys revoke.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <thread>
#include <vector>

#include "security/auth.h"
#include "store/sqlite/sqlite_test_util.h"
#include "store/sqlite/store_sqlite.h"
#include "temp_dir.h"

namespace tdapi {
namespace {

AuditEntry entry(const std::string& action, const std::string& clinic) {
  AuditEntry e;
  e.request_id = "r-" + action;
  e.key_id = "0123456789abcdef";
  e.action = action;
  e.clinic_id = clinic;
  e.detail = R"({"note":"x"})";
  return e;
}

std::vector<AuditEntry> all_audit(Store& store, AuditQuery q = {}) {
  std::vector<AuditEntry> out;
  Status s = store.list_audit(q, [&](const AuditEntry& e) {
    out.push_back(e);
    return true;
  });
  EXPECT_TRUE(s.ok()) << s.message();
  return out;
}

std::string verify(Store& store) {
  AuditChainVerifier v;
  std::string problem;
  store.list_audit({}, [&](const AuditEntry& e) { return v.feed(e, problem); });
  return problem;
}

TEST(StoreAudit, WritesCarryTheirOutcomeAndTheChainVerifies) {
  TempDir dir;
  auto store = open_sqlite_at(dir.file("t.db"));
  TestRecord r{"t1", "p1", "c1", "blood", "neg"};
  AuditEntry a = entry("create", "c1");
  ASSERT_TRUE(store->insert(r, &a).status.ok());
  EXPECT_EQ(a.outcome, 201);
  EXPECT_EQ(a.seq, 1);
  AuditEntry dup = entry("create", "c1");
  EXPECT_EQ(store->insert(r, &dup).status.code(), StatusCode::kDuplicate);
  EXPECT_EQ(dup.outcome, 409);
  AuditEntry read = entry("list", "c1");
  read.outcome = 200;
  ASSERT_TRUE(store->append_audit(read).ok());
  auto entries = all_audit(*store);
  ASSERT_EQ(entries.size(), 3u);
  EXPECT_EQ(entries[1].outcome, 409);
  EXPECT_EQ(entries[2].action, "list");
  EXPECT_EQ(entries[2].prev_hash, entries[1].hash);
  EXPECT_EQ(verify(*store), "");
}

TEST(StoreAudit, TheChainContinuesAcrossRestartsAndUnderConcurrency) {
  TempDir dir;
  {
    auto store = open_sqlite_at(dir.file("t.db"));
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 25; ++i) {
          TestRecord r{"t" + std::to_string(t) + "-" + std::to_string(i), "p", "c1", "x", "y"};
          AuditEntry a = entry("create", "c1");
          EXPECT_TRUE(store->insert(r, &a).status.ok());
        }
      });
    }
    for (auto& th : threads) th.join();
  }
  auto store = open_sqlite_at(dir.file("t.db"));
  AuditEntry a = entry("get", "c1");
  a.outcome = 404;
  ASSERT_TRUE(store->append_audit(a).ok());
  EXPECT_EQ(a.seq, 201);
  EXPECT_EQ(verify(*store), "");
}

TEST(StoreAudit, AnEditedRowIsFoundByVerify) {
  TempDir dir;
  auto store = open_sqlite_at(dir.file("t.db"));
  for (int i = 0; i < 5; ++i) {
    AuditEntry a = entry("list", "c" + std::to_string(i));
    a.outcome = 200;
    ASSERT_TRUE(store->append_audit(a).ok());
  }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(dir.file("t.db").c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, "UPDATE audit SET clinic_id = 'forged' WHERE seq = 3", nullptr,
                         nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  EXPECT_EQ(verify(*store).rfind("entry 3:", 0), 0u) << verify(*store);
}

TEST(StoreAudit, ListsFilterByClinicTimeAndPage) {
  TempDir dir;
  auto store = open_sqlite_at(dir.file("t.db"));
  for (int i = 0; i < 6; ++i) {
    AuditEntry a = entry("list", i % 2 ? "odd" : "even");
    a.outcome = 200;
    a.ts = "2026-11-2" + std::to_string(i) + "T00:00:00.000Z";
    ASSERT_TRUE(store->append_audit(a).ok());
  }
  AuditQuery q;
  q.clinic_id = "odd";
  EXPECT_EQ(all_audit(*store, q).size(), 3u);
  AuditQuery t;
  t.since = "2026-11-22";
  t.until = "2026-11-24";
  auto between = all_audit(*store, t);
  ASSERT_EQ(between.size(), 2u);
  EXPECT_EQ(between[0].seq, 3);
  AuditQuery page;
  page.after_seq = 4;
  page.limit = 1;
  auto one = all_audit(*store, page);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].seq, 5);
}

TEST(StoreAudit, NoAnswerAboutStoredDataGoesOutWithoutItsAuditEntry) {
  // A full database: the audit entry of a duplicate cannot be written, so the duplicate must
  // not be answered 409 (its entry rolled back with the transaction): it gets the storage error.
  TempDir dir;
  SqliteOptions o;
  o.path = dir.file("t.db");
  o.max_page_count = 24;
  std::unique_ptr<SqliteStore> store;
  ASSERT_TRUE(SqliteStore::open(o, store).ok());
  TestRecord first{"first", "p", "c1", "x", "y"};
  AuditEntry a = entry("create", "c1");
  ASSERT_TRUE(store->insert(first, &a).status.ok());
  for (size_t pad : {2000, 200, 20, 0}) {  // fill every last byte
    for (int i = 0; i < 5000; ++i) {
      AuditEntry fill = entry("list", "c1");
      fill.outcome = 200;
      fill.detail = "{\"pad\":\"" + std::string(pad, 'x') + "\"}";
      if (!store->append_audit(fill).ok()) break;
    }
  }
  AuditEntry dup = entry("create", "c1");
  dup.request_id = "the-duplicate";
  WriteOutcome w = store->insert(first, &dup);
  EXPECT_EQ(w.status.code(), StatusCode::kFull) << w.status.message();
  for (const AuditEntry& e : all_audit(*store)) EXPECT_NE(e.request_id, "the-duplicate");
}

TEST(StoreKeys, CreateFindListRevoke) {
  TempDir dir;
  auto store = open_sqlite_at(dir.file("t.db"));
  NewKey nk;
  ASSERT_TRUE(generate_key(nk));
  ApiKey k{nk.key_id, "lab", {"write:c1", "read:c1"}, nk.secret_hash, "2026-11-28T00:00:00Z", ""};
  ASSERT_TRUE(store->create_key(k).ok());
  EXPECT_EQ(store->create_key(k).code(), StatusCode::kDuplicate);
  ApiKey got;
  ASSERT_TRUE(store->find_key(nk.key_id, got).ok());
  EXPECT_EQ(got.name, "lab");
  EXPECT_EQ(got.scopes, (std::vector<std::string>{"write:c1", "read:c1"}));
  EXPECT_EQ(got.secret_hash, nk.secret_hash);
  EXPECT_EQ(got.revoked_at, "");
  std::vector<ApiKey> keys;
  ASSERT_TRUE(store->list_keys(keys).ok());
  ASSERT_EQ(keys.size(), 1u);
  ASSERT_TRUE(store->revoke_key(nk.key_id, "2026-11-28T01:00:00Z").ok());
  ASSERT_TRUE(store->revoke_key(nk.key_id, "2026-11-28T02:00:00Z").ok());  // idempotent
  ASSERT_TRUE(store->find_key(nk.key_id, got).ok());
  EXPECT_EQ(got.revoked_at, "2026-11-28T01:00:00Z");
  EXPECT_EQ(store->revoke_key("ffffffffffffffff", "x").code(), StatusCode::kNotFound);
  EXPECT_EQ(store->find_key("ffffffffffffffff", got).code(), StatusCode::kNotFound);
}

TEST(StoreKeys, AVersionOneDatabaseIsMigrated) {
  TempDir dir;
  {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(dir.file("t.db").c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db,
                           "CREATE TABLE tests (test_id TEXT PRIMARY KEY NOT NULL, seq INTEGER NOT "
                           "NULL, patient_id TEXT NOT NULL, clinic_id TEXT NOT NULL, test_type "
                           "TEXT NOT NULL, result TEXT NOT NULL, created_at TEXT NOT NULL, doc "
                           "TEXT NOT NULL) STRICT;"
                           "CREATE TABLE meta (name TEXT PRIMARY KEY NOT NULL, value BLOB NOT "
                           "NULL) STRICT;"
                           "INSERT INTO meta VALUES ('cursor_key', randomblob(16));"
                           "PRAGMA user_version=1;",
                           nullptr, nullptr, nullptr),
              SQLITE_OK);
    sqlite3_close(db);
  }
  auto store = open_sqlite_at(dir.file("t.db"));
  ASSERT_TRUE(store);
  AuditEntry a = entry("list", "c1");
  a.outcome = 200;
  EXPECT_TRUE(store->append_audit(a).ok());
}

}  // namespace
}  // namespace tdapi
