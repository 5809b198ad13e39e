// schema.cpp: the SQLite schema: each version's DDL, migrations, and the check that a file's
// schema is the one this binary makes.
#include <algorithm>
#include <vector>

#include "base/log.h"
#include "store/sqlite/internal.h"

namespace tdapi {

namespace {

// `doc` is the test's current version as the API returns it (test_document), built by the
// writer when the version is written, so a listing copies bytes from SQLite's pages to the
// response. `seq` is the insertion order (equal to the rowid): see kInsertSql; a correction
// updates the row in place (doc, status, version, updated_at, test_type, result), its seq stays.
//
// Schema version 1, as it was created by the first release; migrations (kMigrations) bring it
// to kSchemaVersion.
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
    // The listing, covered: clinic, then insertion order, then the document.
    "CREATE INDEX IF NOT EXISTS tests_by_clinic ON tests (clinic_id, seq, doc);"
    // The filters of GET /tests.
    "CREATE INDEX IF NOT EXISTS tests_by_patient ON tests (clinic_id, patient_id, seq);"
    "CREATE INDEX IF NOT EXISTS tests_by_type ON tests (clinic_id, test_type, seq);"
    // Instance secrets: the key that signs paging cursors.
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL) STRICT;"
    "INSERT OR IGNORE INTO meta (name, value) VALUES ('cursor_key', randomblob(16));";

// Version 3: access keys (only hashes of their secrets) and the audit trail, a hash chain
// (audit.h) appended by the writer in the transactions of the writes it records.
const char kSecuritySchema[] =
    "CREATE TABLE IF NOT EXISTS api_keys ("
    "  key_id      TEXT PRIMARY KEY NOT NULL,"
    "  name        TEXT NOT NULL,"
    "  scopes      TEXT NOT NULL,"  // JSON array of strings
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

// Version 4: versions. tests gains status, version and updated_at; doc becomes the current
// version's test_document: the migration rewrites each document as text (its final `}` replaced
// by the three new fields; created_at is our own timestamp text, nothing to escape), never
// through a JSON function, which could change the escapes of the fields already there.
// test_versions holds every version of every test; change_seq is the commit order of all changes
// (the change feed's position): SQLite has one writer at a time, so the numbers a transaction
// takes are in commit order; like seq, a new one is one more than the highest ever committed
// (counters.last_change_seq), so none is handed out twice, also after the newest row went.
// Every existing test becomes its version 1, in seq order, written by "unknown" (no record says
// which key created rows written before versions).
const char kVersionsSchema[] =
    "ALTER TABLE tests ADD COLUMN status TEXT NOT NULL DEFAULT 'final';"
    "ALTER TABLE tests ADD COLUMN version INTEGER NOT NULL DEFAULT 1;"
    "ALTER TABLE tests ADD COLUMN updated_at TEXT NOT NULL DEFAULT '';"
    "UPDATE tests SET updated_at = created_at, doc = substr(doc, 1, length(doc) - 1) ||"
    " ',\"status\":\"final\",\"version\":1,\"updated_at\":\"' || created_at || '\"}';"
    "CREATE TABLE IF NOT EXISTS test_versions ("
    "  change_seq INTEGER PRIMARY KEY NOT NULL,"
    "  test_id    TEXT NOT NULL,"
    "  version    INTEGER NOT NULL,"
    "  clinic_id  TEXT NOT NULL,"
    "  status     TEXT NOT NULL,"
    "  changed_at TEXT NOT NULL,"
    "  changed_by TEXT NOT NULL,"
    "  reason     TEXT,"
    "  doc        TEXT NOT NULL,"
    "  UNIQUE (test_id, version)"
    ") STRICT;"
    "INSERT INTO test_versions (test_id, version, clinic_id, status, changed_at, changed_by,"
    " reason, doc) SELECT test_id, 1, clinic_id, 'final', created_at, 'unknown', NULL, doc"
    " FROM tests ORDER BY seq;"
    "INSERT OR IGNORE INTO counters (name, value)"
    " SELECT 'last_change_seq', coalesce(max(change_seq), 0) FROM test_versions;"
    // The change feed: one clinic's changes in commit order.
    "CREATE INDEX IF NOT EXISTS test_versions_by_clinic ON test_versions (clinic_id, change_seq);"
    // The date ranges and the status filter of the listings.
    "CREATE INDEX IF NOT EXISTS tests_by_created ON tests (clinic_id, created_at, seq);"
    "CREATE INDEX IF NOT EXISTS tests_by_updated ON tests (clinic_id, updated_at, seq);"
    "CREATE INDEX IF NOT EXISTS tests_by_status ON tests (clinic_id, status, seq);";

// Version 5: a create writes no test_versions row. A test created from version 5 on holds its
// version 1 in its tests row while that is current (created_by: the key that created it, NOT
// NULL), and takes its seq from the same numbering as change_seq (kInsertSql): its seq is its
// version 1's change_seq, in commit order with every other change. Its first correction moves
// version 1 into test_versions under that change_seq. Tests migrated from version 4 keep their
// version 1 in test_versions (created_by NULL), at the change_seq they already had, so a
// change-feed position handed out before the upgrade still means the same. A create then
// writes the b-trees it wrote before versions and the two date indexes: the status index holds
// only the tests that are not final (most are; a listing of the final ones walks the clinic).
// counters.last_seq_before_v5 is the last number taken before (kInsertSql's next one, less 1; 0
// for a file created at version 5): every test that can hold its version 1 in its row has a seq
// above it, so the feed and list_all_versions start their walk of those rows there
// (TDAPI_FIRST_VERSIONS_IN_ROWS_AFTER), not at the first migrated test after their position
// (which made a page of an upgraded clinic's feed read every migrated test after it).
const char kLazyFirstVersionSchema[] =
    "INSERT OR IGNORE INTO counters (name, value) SELECT 'last_seq_before_v5',"
    " max(coalesce((SELECT max(rowid) FROM tests), 0),"
    " coalesce((SELECT max(change_seq) FROM test_versions), 0),"
    " (SELECT coalesce(max(value), 0) FROM counters WHERE name IN ('last_seq',"
    " 'last_change_seq')));"
    "ALTER TABLE tests ADD COLUMN created_by TEXT;"
    "DROP INDEX tests_by_status;"
    "CREATE INDEX tests_by_status ON tests (clinic_id, status, seq) WHERE status <> 'final';";

// Version 6: tests_by_updated holds only the tests whose updated_at is not their created_at
// (those a correction moved on): a create writes one date index, not two. An updated range is
// the tests of that index in the range, and those whose updated_at is their created_at found
// through tests_by_created (list_sql). created_at is in the index so that its WHERE is read
// from the index, not from each test's row.
const char kUpdatedOnlyOfCorrectedSchema[] =
    "DROP INDEX IF EXISTS tests_by_updated;"
    "CREATE INDEX tests_by_updated ON tests (clinic_id, updated_at, seq, created_at)"
    " WHERE updated_at <> created_at;";

// Version 7: no index of created_at in every create. The service takes created_at under the
// write lock, so it grows with seq: a created range is a range of seq, found in created_marks
// (the first seq of each created_at, one row per transaction) and walked in the clinic's own
// index (list_sql). The tests that break that order (a clock stepped back, a created_at that is
// not this service's own form) are marked created_late and kept in tests_created_late, which
// holds only those; ranges add them. created_at itself is never changed. The migration marks
// the rows of an existing file (kRebuildCreatedOrderSql).
const char kCreatedOrderSchema[] =
    "ALTER TABLE tests ADD COLUMN created_late INTEGER;"
    "CREATE TABLE created_marks (created_at TEXT PRIMARY KEY NOT NULL, seq INTEGER NOT NULL)"
    " STRICT, WITHOUT ROWID;"
    "DROP INDEX IF EXISTS tests_by_created;"
    "CREATE INDEX tests_created_late ON tests (clinic_id, created_at, seq)"
    " WHERE created_late = 1;";

// kMigrations[v - 1] takes the schema from version v to v + 1.
const char* const kMigrations[] = {
    // 1 -> 2: `seq` was max(rowid)+1, so deleting the newest row would hand its number to the
    // next test and break cursors. counters.last_seq is the highest seq ever committed.
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL)"
    " STRICT, WITHOUT ROWID;"
    "INSERT OR IGNORE INTO counters (name, value)"
    " SELECT 'last_seq', coalesce(max(rowid), 0) FROM tests;",
    // 2 -> 3: access keys and the audit trail.
    kSecuritySchema,
    // 3 -> 4: versions, the change feed, date ranges.
    kVersionsSchema,
    // 4 -> 5: version 1 in the tests row; the status index only of tests not final.
    kLazyFirstVersionSchema,
    // 5 -> 6: the updated_at index only of tests a correction moved on.
    kUpdatedOnlyOfCorrectedSchema,
    // 6 -> 7: created ranges as ranges of seq (its rows: kRebuildCreatedOrderSql, below).
    kCreatedOrderSchema,
};
static_assert(sizeof kMigrations / sizeof kMigrations[0] == SqliteStore::kSchemaVersion - 1,
              "one migration per schema version");

}  // namespace

// created_at as this service writes it (utc_timestamp_ms): its text order is time order.
#define TDAPI_OWN_TIMESTAMP(column)                                   \
  column                                                              \
      " GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:" \
      "[0-9][0-9]:[0-9][0-9].[0-9][0-9][0-9]Z'"
// Marks every test whose created_at is below one of a test before it in seq order, or not in
// the service's own form, created_late, and writes created_marks from the others: each
// created_at with the first seq that has it. In seq order the tests not marked have
// non-decreasing created_at, which is what list_sql's ranges of seq rely on. (Tests written
// while the clock was far ahead are the writer's to repair: Backend::load_newest_mark.)
const char kRebuildCreatedOrderSql[] =
    "UPDATE tests SET created_late = NULL WHERE created_late IS NOT NULL;"
    "DELETE FROM created_marks;"
    "UPDATE tests SET created_late = 1 WHERE rowid IN (SELECT r FROM (SELECT r, created_at, own,"
    " max(CASE WHEN own THEN created_at END) OVER (ORDER BY seq ROWS BETWEEN UNBOUNDED PRECEDING"
    " AND 1 PRECEDING) AS before FROM (SELECT rowid AS r, seq, created_at, "
    TDAPI_OWN_TIMESTAMP("created_at") " AS own FROM tests)) WHERE NOT own OR created_at <"
    " before);"
    "INSERT INTO created_marks (created_at, seq) SELECT created_at, min(seq) FROM tests WHERE"
    " created_late IS NULL GROUP BY created_at;";
#undef TDAPI_OWN_TIMESTAMP

Status SqliteStore::migrate_schema(sqlite3* db, int version) {
  const std::string& path = options_.path;
  std::string ddl = "BEGIN IMMEDIATE;";
  if (version == 0) ddl += kSchemaV1;
  for (int v = std::max(version, 1); v < kSchemaVersion; ++v) ddl += kMigrations[v - 1];
  // A file from before version 7: mark its tests (kCreatedOrderSchema).
  if (version > 0 && version < 7) ddl += kRebuildCreatedOrderSql;
  ddl += "PRAGMA user_version=" + std::to_string(kSchemaVersion) + "; COMMIT;";
  int rc = sqlite3_exec(db, ddl.c_str(), nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) {
    Status s = status_from_sqlite(
        rc, db,
        "cannot " + std::string(version == 0 ? "create" : "migrate") + " the schema of " + path,
        true);
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    return s;
  }
  if (version > 0) {
    LogFields f;
    f.detail = path + ": schema version " + std::to_string(version) + " -> " +
               std::to_string(kSchemaVersion);
    log_event(LogLevel::kInfo, "schema_migrated", f);
  }
  return Status::Ok();
}

namespace {

// The schema objects of db other than SQLite's own (type, name, table and DDL, its whitespace
// runs made one space), sorted: what a file's schema is compared by.
int schema_objects(sqlite3* db, std::vector<std::string>& out) {
  out.clear();
  sqlite3_stmt* st = nullptr;
  // Skipped: only what SQLite itself makes, by name and type (the index of a PRIMARY KEY or
  // UNIQUE constraint, AUTOINCREMENT's counters, ANALYZE's statistics). Anything else named
  // sqlite_% was written with PRAGMA writable_schema and is compared like the rest: a trigger
  // named sqlite_x runs inside the service like any other.
  int rc = sqlite3_prepare_v2(
      db,
      "SELECT type, name, tbl_name, coalesce(sql, '') FROM sqlite_schema WHERE NOT ("
      " (type = 'index' AND sql IS NULL AND substr(name, 1, 17) = 'sqlite_autoindex_'"
      "  AND substr(name, 18) = tbl_name || '_' ||"
      "      CAST(CAST(substr(name, 19 + length(tbl_name)) AS INTEGER) AS TEXT))"
      " OR (type = 'table' AND name IN ('sqlite_sequence', 'sqlite_stat1', 'sqlite_stat2',"
      "     'sqlite_stat3', 'sqlite_stat4')))",
      -1, &st, nullptr);
  while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    std::string object;
    // Whitespace that cannot change the meaning of the DDL (runs, and any next to a
    // parenthesis or a comma) is dropped: the same schema typed otherwise compares equal.
    for (int i = 0; i < 4; ++i) {
      if (i > 0) object += ' ';
      bool space = false;
      const size_t field_start = object.size();
      for (char c : column_view(st, i)) {
        const bool blank = c == ' ' || c == '\t' || c == '\n' || c == '\r';
        const bool tight = c == '(' || c == ')' || c == ',';
        if (tight && object.size() > field_start && object.back() == ' ') object.pop_back();
        if (blank && !space && object.size() > field_start &&
            std::string_view("(,").find(object.back()) == std::string_view::npos) {
          object += ' ';
        }
        if (!blank) object += c;
        space = blank;
      }
    }
    out.push_back(std::move(object));
    rc = SQLITE_OK;
  }
  if (rc != SQLITE_DONE) rc = sqlite3_extended_errcode(db);
  sqlite3_finalize(st);
  std::sort(out.begin(), out.end());
  return rc == SQLITE_DONE ? SQLITE_OK : rc;
}

}  // namespace

// Ok when db's schema is exactly the one this binary creates for `version` (1 to
// kSchemaVersion): no other table, index, view or trigger, no table defined differently. A
// trigger or a changed table would run inside the service once the file is restored, e.g.
// dropping every insert (RAISE(IGNORE)) while the API answers 201, or replacing a test on a
// duplicate id instead of answering 409; a view would run at the first count below. With
// extras_only (the service's start), only what is there beyond that schema is refused.
Status check_schema(sqlite3* db, int version, const std::string& path, bool extras_only) {
  DbHandle ref;
  std::string ddl = kSchemaV1;
  for (int v = 1; v < version; ++v) ddl += kMigrations[v - 1];
  if (sqlite3_open_v2(":memory:", &ref.db, SQLITE_OPEN_READWRITE, nullptr) != SQLITE_OK ||
      sqlite3_exec(ref.db, ddl.c_str(), nullptr, nullptr, nullptr) != SQLITE_OK) {
    return Status::Internal("cannot build the reference schema: " +
                            std::string(ref.db ? sqlite3_errmsg(ref.db) : "out of memory"));
  }
  std::vector<std::string> want, have;
  int rc = schema_objects(ref.db, want);
  if (rc == SQLITE_OK) rc = schema_objects(db, have);
  if (rc != SQLITE_OK)
    return status_from_sqlite(rc, db, "cannot read the schema of " + path, false);
  std::vector<std::string> extra, missing;
  std::set_difference(have.begin(), have.end(), want.begin(), want.end(),
                      std::back_inserter(extra));
  if (!extras_only) {
    std::set_difference(want.begin(), want.end(), have.begin(), have.end(),
                        std::back_inserter(missing));
  }
  if (extra.empty() && missing.empty()) return Status::Ok();
  auto name_of = [](const std::string& object) {  // "table tests", "trigger drop_writes"
    size_t first = object.find(' ');
    return object.substr(0, object.find(' ', first + 1));
  };
  std::string why;
  for (const std::string& o : extra)
    why += (why.empty() ? "" : ", ") + std::string("unexpected ") + name_of(o);
  for (const std::string& o : missing)
    why += (why.empty() ? "" : ", ") + std::string("expected ") + name_of(o);
  return Status::Internal(path + " does not have the schema testdata-api creates for version " +
                          std::to_string(version) + " (" + why +
                          "): it was changed outside testdata-api");
}

}  // namespace tdapi
