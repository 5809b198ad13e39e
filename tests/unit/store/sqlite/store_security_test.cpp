// store_security_test.cpp: the audit trail and access keys where only the SQLite store can show
// them (a full database file, a schema of version 1). What both stores do with keys and the
// audit chain is the contract suite's (store/store_contract_test.cpp).
#include <gtest/gtest.h>
#include <sqlite3.h>

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

TEST(StoreAudit, NoAnswerAboutStoredDataGoesOutWithoutItsAuditEntry) {
  // A full database: the audit entry of a duplicate cannot be written, so the duplicate must
  // not be answered 409 (its entry rolled back with the transaction): it gets the storage error.
  TempDir dir;
  SqliteOptions o;
  o.path = dir.file("t.db");
  o.max_page_count = 40;
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
