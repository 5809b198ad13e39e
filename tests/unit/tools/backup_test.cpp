// backup_test.cpp: backup_database, restore_database, rotate_backups and sqlite_check_file on
// real files (the commands end to end, under a real service, are in tests/integration).
#include "tools/backup.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "base/clock.h"
#include "store/sqlite/sqlite_test_util.h"
#include "store/sqlite/store_sqlite.h"
#include "store/store_test_util.h"
#include "temp_dir.h"

namespace tdapi {
namespace {

namespace fs = std::filesystem;

std::set<std::string> names_in(const std::string& dir) {
  std::set<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.insert(e.path().filename().string());
  return names;
}

std::string bytes_of(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
}

// A store with n tests in clinic c1 and one audit entry per test.
std::unique_ptr<SqliteStore> store_with_tests(const std::string& path, int n) {
  auto store = open_sqlite_at(path);
  for (int i = 0; i < n; ++i) {
    AuditEntry audit;
    audit.key_id = "anonymous";
    audit.action = "create";
    audit.clinic_id = "c1";
    EXPECT_TRUE(store->insert(make_record("t" + std::to_string(i)), &audit).status.ok());
  }
  return store;
}

TEST(Backup, CopiesALiveStoreAndVerifiesTheCopy) {
  TempDir dir;
  auto store = store_with_tests(dir.file("live.db"), 50);
  BackupResult r;
  Status s = backup_database(dir.file("live.db"), dir.file("copy.db"), r);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(r.file, dir.file("copy.db"));
  EXPECT_EQ(r.facts.tests, 50);
  EXPECT_EQ(r.facts.audit_entries, 50);
  EXPECT_EQ(r.facts.schema_version, SqliteStore::kSchemaVersion);
  EXPECT_EQ(r.facts.restarts, 0);
  EXPECT_GT(r.bytes, 0);
  // Self-contained: no WAL mode, nothing beside it, and the service's store opens it.
  EXPECT_EQ(sql_on(r.file, "PRAGMA journal_mode"), "delete");
  EXPECT_EQ(sql_on(r.file, "PRAGMA integrity_check"), "ok");
  EXPECT_FALSE(fs::exists(r.file + "-wal"));
  EXPECT_EQ(names_in(dir.file("")).count("copy.db"), 1u);
  for (const std::string& name : names_in(dir.file(""))) {
    EXPECT_NE(name.rfind(".copy.db.tmp", 0), 0u) << "temp file left: " << name;
  }
  // Writes after the backup are not in it; the store goes on.
  ASSERT_TRUE(store->insert(make_record("later")).status.ok());
  EXPECT_EQ(sql_on(r.file, "SELECT count(*) FROM tests"), "50");
  store.reset();
  auto copy = open_sqlite_at(r.file);
  EXPECT_EQ(list_ids(*copy, "c1").size(), 50u);
}

TEST(Backup, NeverReplacesAFileAndLeavesNothingOnFailure) {
  TempDir dir;
  auto store = store_with_tests(dir.file("live.db"), 3);
  write_bytes(dir.file("copy.db"), "keep me");
  auto before = names_in(dir.file(""));
  BackupResult r;
  Status s = backup_database(dir.file("live.db"), dir.file("copy.db"), r);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(bytes_of(dir.file("copy.db")), "keep me");
  s = backup_database(dir.file("missing.db"), dir.file("copy2.db"), r);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("missing.db"), std::string::npos) << s.message();
  EXPECT_EQ(names_in(dir.file("")), before);
}

TEST(Restore, RefusesWhileTheStoreIsOpenAndChangesNothing) {
  TempDir dir;
  auto store = store_with_tests(dir.file("live.db"), 5);
  BackupResult b;
  ASSERT_TRUE(backup_database(dir.file("live.db"), dir.file("copy.db"), b).ok());
  auto before = names_in(dir.file(""));
  RestoreResult r;
  Status s = restore_database(dir.file("copy.db"), dir.file("live.db"), r);
  EXPECT_EQ(s.code(), StatusCode::kBusy) << s.message();
  EXPECT_EQ(names_in(dir.file("")), before);
  ASSERT_TRUE(store->insert(make_record("still-served")).status.ok());
}

TEST(Restore, RefusesADamagedOrForeignBackupAndChangesNothing) {
  TempDir dir;
  store_with_tests(dir.file("live.db"), 200).reset();
  BackupResult b;
  ASSERT_TRUE(backup_database(dir.file("live.db"), dir.file("copy.db"), b).ok());
  std::string good = bytes_of(dir.file("copy.db"));
  ASSERT_GT(good.size(), 16384u);
  std::string flipped = good;
  for (size_t i = good.size() / 2 - 2048; i < good.size() / 2 + 2048; ++i) flipped[i] ^= 0x5a;
  write_bytes(dir.file("flipped.db"), flipped);
  write_bytes(dir.file("truncated.db"), good.substr(0, good.size() / 2));
  write_bytes(dir.file("text.db"), std::string(8192, 'x'));
  // A database that is not one of ours (no schema version).
  sql_on(dir.file("other.db"), "CREATE TABLE t (x)");
  // The audit trail rewritten: one entry's detail changed, every page still well-formed.
  write_bytes(dir.file("forged.db"), good);
  sql_on(dir.file("forged.db"), "UPDATE audit SET detail = '{\"forged\":1}' WHERE seq = 7");
  // Written by a newer release.
  write_bytes(dir.file("newer.db"), good);
  sql_on(dir.file("newer.db"), "PRAGMA user_version = 99");

  std::string target = bytes_of(dir.file("live.db"));
  auto before = names_in(dir.file(""));
  for (const char* name :
       {"flipped.db", "truncated.db", "text.db", "other.db", "forged.db", "newer.db"}) {
    RestoreResult r;
    Status s = restore_database(dir.file(name), dir.file("live.db"), r);
    EXPECT_FALSE(s.ok()) << name << " was restored";
    EXPECT_FALSE(r.swapped) << name;
    EXPECT_NE(s.message().find(dir.file(name)), std::string::npos) << s.message();
    EXPECT_EQ(bytes_of(dir.file("live.db")), target) << name;
    EXPECT_EQ(names_in(dir.file("")), before) << name;
  }
  RestoreResult r;
  Status s = restore_database(dir.file("forged.db"), dir.file("live.db"), r);
  EXPECT_NE(s.message().find("audit chain"), std::string::npos) << s.message();
  s = restore_database(dir.file("newer.db"), dir.file("live.db"), r);
  EXPECT_NE(s.message().find("newer release"), std::string::npos) << s.message();
}

// A backup whose schema was changed outside testdata-api: what it adds would run inside the
// service after the restore (a trigger that drops every insert while the API answers 201, a
// tests table that replaces a test on a duplicate id instead of refusing it).
TEST(Restore, RefusesABackupWithASchemaTestdataApiDidNotCreate) {
  TempDir dir;
  store_with_tests(dir.file("live.db"), 5).reset();
  BackupResult b;
  ASSERT_TRUE(backup_database(dir.file("live.db"), dir.file("copy.db"), b).ok());
  const std::string good = bytes_of(dir.file("copy.db"));
  const std::pair<const char*, const char*> changes[] = {
      {"trigger.db",
       "CREATE TRIGGER drop_writes BEFORE INSERT ON tests BEGIN SELECT RAISE(IGNORE); END"},
      {"view.db", "CREATE VIEW v AS SELECT * FROM tests"},
      {"table.db", "CREATE TABLE extra (x)"},
      {"index.db", "CREATE INDEX extra ON tests (result)"},
      {"replace.db",
       "PRAGMA writable_schema=ON; UPDATE sqlite_schema SET sql = replace(sql, 'test_id    TEXT "
       "PRIMARY KEY NOT NULL', 'test_id TEXT PRIMARY KEY ON CONFLICT REPLACE NOT NULL') WHERE "
       "name = 'tests'"},
  };
  for (const auto& [name, sql] : changes) {
    write_bytes(dir.file(name), good);
    sql_on(dir.file(name), sql);
  }
  ASSERT_NE(sql_on(dir.file("replace.db"), "SELECT sql FROM sqlite_schema WHERE name = 'tests'")
                .find("ON CONFLICT REPLACE"),
            std::string::npos);
  const std::string target = bytes_of(dir.file("live.db"));
  const auto before = names_in(dir.file(""));
  for (const auto& [name, sql] : changes) {
    RestoreResult r;
    Status s = restore_database(dir.file(name), dir.file("live.db"), r);
    EXPECT_EQ(s.code(), StatusCode::kInternal) << name << ": " << s.message();
    EXPECT_NE(s.message().find("schema"), std::string::npos) << s.message();
    EXPECT_EQ(bytes_of(dir.file("live.db")), target) << name;
    EXPECT_EQ(names_in(dir.file("")), before) << name;
  }
  RestoreResult r;
  Status s = restore_database(dir.file("trigger.db"), dir.file("live.db"), r);
  EXPECT_NE(s.message().find("unexpected trigger drop_writes"), std::string::npos) << s.message();
  // The unchanged copy is still restored.
  s = restore_database(dir.file("copy.db"), dir.file("live.db"), r);
  EXPECT_TRUE(s.ok()) << s.message();
}

// Objects named like SQLite's own, written with PRAGMA writable_schema: the schema check used
// to skip every sqlite_% name, so a trigger named sqlite_x (dropping every insert while the API
// answers 201) was restored, and integrity_check says ok. Only what SQLite itself makes is
// skipped, by name and type; the service refuses such a file at start too.
const std::pair<const char*, const char*> kSqliteNamedObjects[] = {
    {"trigger sqlite_x",
     "PRAGMA writable_schema=ON; INSERT INTO sqlite_schema (type, name, tbl_name, rootpage, sql) "
     "VALUES ('trigger', 'sqlite_x', 'tests', 0, 'CREATE TRIGGER sqlite_x BEFORE INSERT ON tests "
     "BEGIN SELECT RAISE(IGNORE); END')"},
    {"view sqlite_v",
     "PRAGMA writable_schema=ON; INSERT INTO sqlite_schema (type, name, tbl_name, rootpage, sql) "
     "VALUES ('view', 'sqlite_v', 'sqlite_v', 0, 'CREATE VIEW sqlite_v AS SELECT * FROM tests')"},
    {"trigger sqlite_autoindex_tests_9",
     "PRAGMA writable_schema=ON; INSERT INTO sqlite_schema (type, name, tbl_name, rootpage, sql) "
     "VALUES ('trigger', 'sqlite_autoindex_tests_9', 'tests', 0, 'CREATE TRIGGER "
     "sqlite_autoindex_tests_9 BEFORE INSERT ON tests BEGIN SELECT RAISE(IGNORE); END')"},
    {"trigger sqlite_stat1",
     "PRAGMA writable_schema=ON; INSERT INTO sqlite_schema (type, name, tbl_name, rootpage, sql) "
     "VALUES ('trigger', 'sqlite_stat1', 'tests', 0, 'CREATE TRIGGER sqlite_stat1 BEFORE INSERT "
     "ON tests BEGIN SELECT RAISE(IGNORE); END')"},
};

TEST(Restore, RefusesObjectsNamedLikeSqlitesOwn) {
  TempDir dir;
  store_with_tests(dir.file("live.db"), 5).reset();
  BackupResult b;
  ASSERT_TRUE(backup_database(dir.file("live.db"), dir.file("copy.db"), b).ok());
  const std::string good = bytes_of(dir.file("copy.db"));
  const std::string target = bytes_of(dir.file("live.db"));
  const auto before = names_in(dir.file(""));
  for (const auto& [object, sql] : kSqliteNamedObjects) {
    write_bytes(dir.file("edited.db"), good);
    sql_on(dir.file("edited.db"), sql);
    RestoreResult r;
    Status s = restore_database(dir.file("edited.db"), dir.file("live.db"), r);
    EXPECT_EQ(s.code(), StatusCode::kInternal) << object << ": " << s.message();
    EXPECT_NE(s.message().find("unexpected " + std::string(object)), std::string::npos)
        << s.message();
    EXPECT_EQ(bytes_of(dir.file("live.db")), target) << object;
    ::unlink(dir.file("edited.db").c_str());
    EXPECT_EQ(names_in(dir.file("")), before) << object;
  }
  // What SQLite makes itself is not refused: ANALYZE's sqlite_stat1 (and the autoindexes).
  write_bytes(dir.file("analyzed.db"), good);
  sql_on(dir.file("analyzed.db"), "ANALYZE");
  ASSERT_EQ(sql_on(dir.file("analyzed.db"),
                   "SELECT count(*) FROM sqlite_schema WHERE name = 'sqlite_stat1'"),
            "1");
  RestoreResult r;
  Status s = restore_database(dir.file("analyzed.db"), dir.file("live.db"), r);
  EXPECT_TRUE(s.ok()) << s.message();
}

TEST(Restore, TheServiceRefusesToStartOnAFileEditedInPlace) {
  for (const auto& [object, sql] : kSqliteNamedObjects) {
    TempDir dir;
    store_with_tests(dir.file("live.db"), 2).reset();
    sql_on(dir.file("live.db"), sql);
    SqliteOptions options;
    options.path = dir.file("live.db");
    std::unique_ptr<SqliteStore> store;
    Status s = SqliteStore::open(options, store);
    EXPECT_FALSE(s.ok()) << object << ": the service started on it";
    EXPECT_EQ(store, nullptr);
    EXPECT_NE(s.message().find("unexpected " + std::string(object)), std::string::npos)
        << s.message();
  }
  // An unchanged file (and one ANALYZE ran on) still opens.
  TempDir dir;
  store_with_tests(dir.file("live.db"), 2).reset();
  sql_on(dir.file("live.db"), "ANALYZE");
  EXPECT_TRUE(open_sqlite_at(dir.file("live.db")));
}

// A row whose stored document (what GET /tests/{id} serves) disagrees with its columns (what
// listings and authorization by clinic read), or larger than the API accepts: restore took them
// (a test in clinic c2 served to a read:c1 key; a 150 MB row). Refused, naming the row by seq.
TEST(Restore, RefusesRowsWhoseDocumentDisagreesWithTheColumnsOrTooLarge) {
  TempDir dir;
  store_with_tests(dir.file("live.db"), 5).reset();
  BackupResult b;
  ASSERT_TRUE(backup_database(dir.file("live.db"), dir.file("copy.db"), b).ok());
  const std::string good = bytes_of(dir.file("copy.db"));
  const std::string big_result(16385, 'r');
  const std::pair<const char*, std::string> edits[] = {
      {"clinic column", "UPDATE tests SET clinic_id = 'c2' WHERE test_id = 't3'"},
      {"clinic in doc",
       "UPDATE tests SET doc = json_set(doc, '$.clinic_id', 'c9') WHERE test_id = 't3'"},
      {"test_id in doc",
       "UPDATE tests SET doc = json_set(doc, '$.test_id', 't4') WHERE test_id = 't3'"},
      {"patient in doc",
       "UPDATE tests SET doc = json_set(doc, '$.patient_id', 'p9') WHERE test_id = 't3'"},
      {"type in doc",
       "UPDATE tests SET doc = json_set(doc, '$.test_type', 'x') WHERE test_id = 't3'"},
      {"result in doc",
       "UPDATE tests SET doc = json_set(doc, '$.result', 'x') WHERE test_id = 't3'"},
      {"created_at in doc",
       "UPDATE tests SET doc = json_set(doc, '$.created_at', '1999') WHERE test_id = 't3'"},
      {"number for a string",
       "UPDATE tests SET clinic_id = '5', doc = json_set(doc, '$.clinic_id', 5) WHERE test_id = "
       "'t3'"},
      {"extra key", "UPDATE tests SET doc = json_set(doc, '$.extra', 1) WHERE test_id = 't3'"},
      {"duplicate key",
       "UPDATE tests SET doc = substr(doc, 1, length(doc) - 1) || ',\"clinic_id\":\"c2\"}' WHERE "
       "test_id = 't3'"},
      {"not json", "UPDATE tests SET doc = 'not json' WHERE test_id = 't3'"},
      {"not an object", "UPDATE tests SET doc = '[]' WHERE test_id = 't3'"},
      {"result too long", "UPDATE tests SET result = '" + big_result +
                              "', doc = json_set(doc, '$.result', '" + big_result +
                              "') WHERE test_id = 't3'"},
      {"id too long", "UPDATE tests SET test_id = '" + std::string(129, 'i') +
                          "', doc = json_set(doc, '$.test_id', '" + std::string(129, 'i') +
                          "') WHERE test_id = 't3'"},
      {"padded document",
       "UPDATE tests SET doc = '{' || printf('%.*c', 300000, ' ') || substr(doc, 2) WHERE test_id "
       "= 't3'"},
      // The columns of versions, and the rows of test_versions ("change_seq 4": t3's version 1;
      // kAsMigrated puts it there, as in a file upgraded from schema 4).
      {"status column", "UPDATE tests SET status = 'amended' WHERE test_id = 't3'"},
      {"unknown status",
       "UPDATE tests SET status = 'gone', doc = json_set(doc, '$.status', 'gone') WHERE test_id = "
       "'t3'"},
      {"version in doc",
       "UPDATE tests SET doc = json_set(doc, '$.version', 2) WHERE test_id = 't3'"},
      {"version as text",
       "UPDATE tests SET doc = json_set(doc, '$.version', '1') WHERE test_id = 't3'"},
      {"updated_at in doc",
       "UPDATE tests SET doc = json_set(doc, '$.updated_at', '1999') WHERE test_id = 't3'"},
      {"current version without its row",
       "UPDATE tests SET version = 2, doc = json_set(doc, '$.version', 2) WHERE test_id = 't3'"},
      {"version 1 missing under a later one",
       "UPDATE tests SET version = 2, doc = json_set(doc, '$.version', 2) WHERE test_id = 't3';"
       " INSERT INTO test_versions (change_seq, test_id, version, clinic_id, status, changed_at,"
       " changed_by, reason, doc) SELECT 99, test_id, 2, clinic_id, status, updated_at, 'k', 'r',"
       " doc FROM tests WHERE test_id = 't3'"},
      {"version 1 in its row under another rowid",
       "UPDATE tests SET rowid = 99 WHERE test_id = 't3'"},
      {"created_by too long",
       "UPDATE tests SET created_by = printf('%.*c', 129, 'k') WHERE test_id = 't3'"},
      {"version 1 in its row among the tests from schema 4",
       "INSERT INTO test_versions (change_seq, test_id, version, clinic_id, status, changed_at,"
       " changed_by, reason, doc) SELECT seq, test_id, 1, clinic_id, status, created_at,"
       " created_by, NULL, doc FROM tests WHERE seq < 4;"
       " UPDATE tests SET created_by = NULL WHERE seq < 4;"
       " INSERT OR REPLACE INTO counters (name, value) VALUES ('last_seq_before_v5', 4)"},
      {"version 1 in its row and in test_versions",
       "INSERT INTO test_versions (change_seq, test_id, version, clinic_id, status, changed_at,"
       " changed_by, reason, doc) SELECT 99, test_id, 1, clinic_id, status, created_at,"
       " created_by, NULL, doc FROM tests WHERE test_id = 't3'"},
      {"version 1 in its row at a taken change_seq",
       "INSERT INTO test_versions (change_seq, test_id, version, clinic_id, status, changed_at,"
       " changed_by, reason, doc) SELECT seq, 'zz', 2, clinic_id, status, created_at, 'k', 'r',"
       " doc FROM tests WHERE test_id = 't3'"},
      {"version's result not text",
       "UPDATE test_versions SET doc = json_set(doc, '$.result', 5) WHERE test_id = 't3'"},
      {"version's clinic",
       "UPDATE test_versions SET clinic_id = 'c2', doc = json_set(doc, '$.clinic_id', 'c2')"
       " WHERE test_id = 't3'"},
      {"version's patient",
       "UPDATE test_versions SET doc = json_set(doc, '$.patient_id', 'p9') WHERE test_id = 't3'"},
      {"version's extra key",
       "UPDATE test_versions SET doc = json_set(doc, '$.extra', 1) WHERE test_id = 't3'"},
      {"version 1 with a reason", "UPDATE test_versions SET reason = 'why' WHERE test_id = 't3'"},
      {"version's changed_at", "UPDATE test_versions SET changed_at = '1999' WHERE test_id = 't3'"},
  };
  const std::string kAsMigrated =
      "INSERT INTO test_versions (change_seq, test_id, version, clinic_id, status, changed_at,"
      " changed_by, reason, doc) SELECT seq, test_id, 1, clinic_id, status, created_at,"
      " created_by, NULL, doc FROM tests WHERE test_id = 't3';"
      " UPDATE tests SET created_by = NULL WHERE test_id = 't3';";
  const std::string target = bytes_of(dir.file("live.db"));
  const auto before = names_in(dir.file(""));
  for (const auto& [what, sql] : edits) {
    write_bytes(dir.file("edited.db"), good);
    if (sql.rfind("UPDATE test_versions", 0) == 0) sql_on(dir.file("edited.db"), kAsMigrated);
    sql_on(dir.file("edited.db"), sql);
    RestoreResult r;
    Status s = restore_database(dir.file("edited.db"), dir.file("live.db"), r);
    EXPECT_FALSE(s.ok()) << what << ": restored";
    EXPECT_FALSE(r.swapped) << what;
    EXPECT_NE(s.message().find("seq 4"), std::string::npos) << what << ": " << s.message();
    EXPECT_EQ(bytes_of(dir.file("live.db")), target) << what;
    ::unlink(dir.file("edited.db").c_str());
    EXPECT_EQ(names_in(dir.file("")), before) << what;
  }
  // The unchanged copy, and one whose document escapes characters the columns hold as they
  // are, are restored.
  write_bytes(dir.file("escaped.db"), good);
  sql_on(
      dir.file("escaped.db"),
      "UPDATE tests SET doc = replace(doc, '\"c1\"', '\"\\u0063\\u0031\"') WHERE test_id = 't3'");
  RestoreResult r;
  Status s = restore_database(dir.file("escaped.db"), dir.file("live.db"), r);
  EXPECT_TRUE(s.ok()) << s.message();
}

TEST(Restore, SwapsInTheBackupAndKeepsTheReplacedDatabaseAside) {
  TempDir dir;
  auto store = store_with_tests(dir.file("live.db"), 10);
  BackupResult b;
  ASSERT_TRUE(backup_database(dir.file("live.db"), dir.file("copy.db"), b).ok());
  ASSERT_TRUE(store->insert(make_record("after-backup")).status.ok());
  store.reset();  // a clean stop: the marker says so
  ASSERT_TRUE(fs::exists(dir.file("live.db-clean")));

  RestoreResult r;
  Status s = restore_database(dir.file("copy.db"), dir.file("live.db"), r);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_TRUE(r.swapped);
  EXPECT_EQ(r.facts.tests, 10);
  ASSERT_FALSE(r.replaced.empty());
  EXPECT_EQ(r.replaced.rfind(dir.file("live.db.replaced-"), 0), 0u) << r.replaced;
  // The replaced database, whole by itself, with the test written after the backup.
  EXPECT_EQ(sql_on(r.replaced, "SELECT count(*) FROM tests"), "11");
  EXPECT_FALSE(fs::exists(dir.file("live.db-wal")));
  // The restored file is checked on the next start: the old marker is gone.
  EXPECT_FALSE(fs::exists(dir.file("live.db-clean")));
  store = open_sqlite_at(dir.file("live.db"));
  ASSERT_TRUE(store);
  EXPECT_EQ(list_ids(*store, "c1").size(), 10u);
  ASSERT_TRUE(store->insert(make_record("after-restore")).status.ok());
}

TEST(Restore, MovesADamagedDatabaseAsideWithItsWal) {
  TempDir dir;
  store_with_tests(dir.file("live.db"), 3).reset();
  BackupResult b;
  ASSERT_TRUE(backup_database(dir.file("live.db"), dir.file("copy.db"), b).ok());
  write_bytes(dir.file("live.db"), std::string(8192, 'g'));
  write_bytes(dir.file("live.db-wal"), "stale wal");
  RestoreResult r;
  Status s = restore_database(dir.file("copy.db"), dir.file("live.db"), r);
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_EQ(bytes_of(r.replaced), std::string(8192, 'g'));
  EXPECT_EQ(bytes_of(r.replaced + "-wal"), "stale wal");
  EXPECT_FALSE(fs::exists(dir.file("live.db-wal")));
  EXPECT_EQ(sql_on(dir.file("live.db"), "SELECT count(*) FROM tests"), "3");
}

// Run as root (sudo, make restore), restore must not act by name on what another user can
// change: the service user owns the data directory and swaps the checked temp copy for a link
// to a root-owned file before the restored file is given its owner. Before, root chowned the
// link's target to the service user (exit 0, "restored").
TEST(Restore, AsRootNeverChangesAFileSwappedInForTheTempCopy) {
  if (geteuid() != 0) GTEST_SKIP() << "root-specific (CI runs as root)";
  TempDir dir;
  store_with_tests(dir.file("live.db"), 3).reset();
  BackupResult b;
  ASSERT_TRUE(backup_database(dir.file("live.db"), dir.file("copy.db"), b).ok());
  ASSERT_EQ(chown(dir.file("live.db").c_str(), 65534, 65534), 0);  // the service user's database
  write_bytes(dir.file("victim"), "root's own");
  ASSERT_EQ(chmod(dir.file("victim").c_str(), 0600), 0);
  const std::string target = bytes_of(dir.file("live.db"));
  RestoreResult r;
  Status s =
      restore_database(dir.file("copy.db"), dir.file("live.db"), r, [&](const std::string& tmp) {
        ASSERT_EQ(unlink(tmp.c_str()), 0);
        ASSERT_EQ(symlink(dir.file("victim").c_str(), tmp.c_str()), 0);
      });
  EXPECT_FALSE(s.ok()) << "restored through a link swapped in for the temp copy";
  EXPECT_FALSE(r.swapped);
  struct stat st {};
  ASSERT_EQ(lstat(dir.file("victim").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 0u) << "root's file was given to the service user";
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(bytes_of(dir.file("victim")), "root's own");
  ASSERT_EQ(lstat(dir.file("live.db").c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(bytes_of(dir.file("live.db")), target);
  // Unswapped, the restored file is the service user's, like the one it replaces.
  s = restore_database(dir.file("copy.db"), dir.file("live.db"), r);
  ASSERT_TRUE(s.ok()) << s.message();
  ASSERT_EQ(lstat(dir.file("live.db").c_str(), &st), 0);
  EXPECT_EQ(st.st_uid, 65534u);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

// Run as root, backup and restore refuse to work by name in a directory another user can
// change (the service user owns DATA_DIR and DATA_DIR/backups): SQLite creates the temp copy
// by name, and a link swapped in for it made root create any path holding the whole database.
// (The commands first become that user: see test_backup.py.)
TEST(Backup, AsRootRefusesADirectoryAnotherUserCanChange) {
  if (geteuid() != 0) GTEST_SKIP() << "root-specific (CI runs as root)";
  TempDir dir;
  store_with_tests(dir.file("live.db"), 3).reset();
  for (const auto& [name, uid, mode] :
       {std::make_tuple("service", 65534, 0700), std::make_tuple("everyone", 0, 0777),
        std::make_tuple("group", 0, 0770)}) {
    ASSERT_EQ(mkdir(dir.file(name).c_str(), 0700), 0);
    ASSERT_EQ(chown(dir.file(name).c_str(), uid, uid), 0);
    ASSERT_EQ(chmod(dir.file(name).c_str(), mode), 0);
    BackupResult r;
    Status s = backup_database(dir.file("live.db"), dir.file(name) + "/copy.db", r);
    EXPECT_FALSE(s.ok()) << name << ": backed up as root into a directory another user can change";
    EXPECT_NE(s.message().find(dir.file(name)), std::string::npos) << s.message();
    EXPECT_TRUE(names_in(dir.file(name)).empty()) << name;
    // Nor restored there.
    RestoreResult rr;
    s = restore_database(dir.file("live.db"), dir.file(name) + "/restored.db", rr);
    EXPECT_FALSE(s.ok()) << name << ": restored as root into a directory another user can change";
    EXPECT_TRUE(names_in(dir.file(name)).empty()) << name;
  }
  // A link on the way owned by another user is refused too; root's own directory is fine.
  ASSERT_EQ(symlink(dir.file("service").c_str(), dir.file("link").c_str()), 0);
  ASSERT_EQ(lchown(dir.file("link").c_str(), 65534, 65534), 0);
  BackupResult r;
  EXPECT_FALSE(backup_database(dir.file("live.db"), dir.file("link") + "/copy.db", r).ok());
  ASSERT_EQ(mkdir(dir.file("root").c_str(), 0700), 0);
  Status s = backup_database(dir.file("live.db"), dir.file("root/copy.db"), r);
  EXPECT_TRUE(s.ok()) << s.message();
}

// A file that looks like a backup to rotate_backups: an SQLite database whose newest test and
// audit entry have the given seqs.
void write_backup(const std::string& path, long long seq) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  const std::string sql =
      "CREATE TABLE tests (seq INTEGER); CREATE TABLE audit (seq INTEGER);"
      "INSERT INTO tests VALUES (" +
      std::to_string(seq) + "); INSERT INTO audit VALUES (" + std::to_string(seq) + ");";
  EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK);
  sqlite3_close(db);
}

void set_mtime(const std::string& path, time_t when) {
  struct timespec times[2] = {{when, 0}, {when, 0}};
  ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), times, 0), 0);
}

TEST(Rotation, KeepsTheNewestBackupsAndNothingElseIsTouched) {
  EXPECT_EQ(backup_file_name("2026-11-30T01:02:03.456Z"), "testdata-20261130T010203.456Z.db");
  EXPECT_TRUE(is_backup_file_name("testdata-20261130T010203.456Z.db"));
  for (const char* other :
       {"testdata.db", "testdata-20261130T010203.456Z.db-wal", "testdata-2026113XT010203.456Z.db",
        "xtestdata-20261130T010203.456Z.db", ".testdata-20261130T010203.456Z.db.tmp-abc123"}) {
    EXPECT_FALSE(is_backup_file_name(other)) << other;
  }
  TempDir dir;
  std::vector<std::string> made;
  for (int day = 10; day < 15; ++day) {
    made.push_back(backup_file_name("2026-11-" + std::to_string(day) + "T02:00:00.000Z"));
    write_backup(dir.file(made.back()), day);
  }
  write_bytes(dir.file("notes.txt"), "mine");
  write_bytes(dir.file("testdata-manual.db"), "mine too");
  std::vector<std::string> removed;
  ASSERT_TRUE(rotate_backups(dir.file(""), 3, removed).ok());
  EXPECT_EQ(removed, (std::vector<std::string>{made[0], made[1]}));
  EXPECT_EQ(names_in(dir.file("")),
            (std::set<std::string>{made[2], made[3], made[4], "notes.txt", "testdata-manual.db"}));
  ASSERT_TRUE(rotate_backups(dir.file(""), 3, removed).ok());
  EXPECT_TRUE(removed.empty());
}

// --keep ranks what the files are (the newest audit entry and test they hold), not the time in
// their names nor their modification times: two older backups named and dated in the future (a
// clock that was fast, or planted) made it remove the backup it had just taken, and then every
// genuine newer backup. A file that is no database is no backup: neither counted nor removed.
// A link named like a backup is neither followed nor removed.
TEST(Rotation, RanksByWhatTheBackupsHoldNeverByNameOrDateAndNeverFollowsLinks) {
  TempDir dir;
  const time_t now = time(nullptr);
  const time_t year_ahead = now + 365 * 86400;
  std::vector<std::string> genuine;
  for (int i = 0; i < 3; ++i) {
    genuine.push_back(backup_file_name("2026-12-0" + std::to_string(i + 1) + "T02:00:00.000Z"));
    write_backup(dir.file(genuine.back()), 100 + i);
    set_mtime(dir.file(genuine.back()), now - 86400 * (3 - i));
  }
  const std::string just_made = backup_file_name(utc_timestamp_ms());
  write_backup(dir.file(just_made), 50);  // even a copy of an older state is kept when just made
  const std::string ahead1 = "testdata-20991231T235959.000Z.db";
  const std::string ahead2 = "testdata-20990101T000000.000Z.db";
  write_backup(dir.file(ahead1), 10);
  write_backup(dir.file(ahead2), 11);
  set_mtime(dir.file(ahead1), year_ahead);
  set_mtime(dir.file(ahead2), year_ahead);
  const std::string planted = "testdata-20980101T000000.000Z.db";
  write_bytes(dir.file(planted), "planted, not a database");
  set_mtime(dir.file(planted), year_ahead);
  TempDir elsewhere;
  write_backup(elsewhere.file("precious"), 1000);
  const std::string before = bytes_of(elsewhere.file("precious"));
  const std::string link = "testdata-19990101T000000.000Z.db";
  ASSERT_EQ(symlink(elsewhere.file("precious").c_str(), dir.file(link).c_str()), 0);
  std::vector<std::string> removed;
  ASSERT_TRUE(rotate_backups(dir.file(""), 3, removed, just_made).ok());
  EXPECT_EQ(std::set<std::string>(removed.begin(), removed.end()),
            (std::set<std::string>{ahead1, ahead2, genuine[0]}));
  EXPECT_EQ(names_in(dir.file("")),
            (std::set<std::string>{just_made, genuine[1], genuine[2], planted, link}));
  EXPECT_EQ(bytes_of(elsewhere.file("precious")), before);
  // --keep 1: only the copy just made stays, whatever it holds.
  ASSERT_TRUE(rotate_backups(dir.file(""), 1, removed, just_made).ok());
  EXPECT_EQ(std::set<std::string>(removed.begin(), removed.end()),
            (std::set<std::string>{genuine[1], genuine[2]}));
}

TEST(Rotation, EqualContentsRankByModificationTime) {
  TempDir dir;
  const time_t now = time(nullptr);
  std::vector<std::string> names;
  for (int i = 0; i < 3; ++i) {
    names.push_back(backup_file_name("2026-12-0" + std::to_string(3 - i) + "T02:00:00.000Z"));
    write_backup(dir.file(names.back()), 7);
    set_mtime(dir.file(names.back()), now - 1000 + i);  // names[2] the newest
  }
  std::vector<std::string> removed;
  ASSERT_TRUE(rotate_backups(dir.file(""), 1, removed).ok());
  EXPECT_EQ(std::set<std::string>(removed.begin(), removed.end()),
            (std::set<std::string>{names[0], names[1]}));
}

}  // namespace
}  // namespace tdapi
