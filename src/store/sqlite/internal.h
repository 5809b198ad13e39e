// internal.h: what the SQLite backend's files share (store/sqlite/ only; nothing outside the
// backend includes it): its connection type, its error mapping and small statement helpers.
#pragma once

#include <sqlite3.h>

#include <string>
#include <string_view>
#include <vector>

#include "store/sqlite/store_sqlite.h"
#include "store/status.h"

namespace tdapi {

// The number that every seq of a test whose version 1 may be in its tests row (created_by set) is
// above: counters.last_seq_before_v5, written by the migration to schema 5 (schema.cpp,
// kLazyFirstVersionSchema; 0 where it is missing). Tests at or below it came from schema 4 and
// have their version 1 in test_versions.
#define TDAPI_FIRST_VERSIONS_IN_ROWS_AFTER \
  "coalesce((SELECT value FROM counters WHERE name = 'last_seq_before_v5'), 0)"

// A connection with its prepared statements, used by one thread at a time.
struct SqliteStore::Connection {
  sqlite3* db = nullptr;
  std::vector<sqlite3_stmt*> stmts;
  sqlite3_stmt* insert = nullptr;
  // By the filters the listing uses (list_filters: a bit each), prepared on first use.
  sqlite3_stmt* list[256] = {};
  // A date range's walk of the clinic in seq order (list_walk_sql), by the same filters.
  sqlite3_stmt* list_walk[256] = {};
  sqlite3_stmt* health = nullptr;
  sqlite3_stmt* audit_insert = nullptr;
  sqlite3_stmt* audit_list = nullptr;
  sqlite3_stmt* audit_head = nullptr;
  sqlite3_stmt* key_get = nullptr;
  sqlite3_stmt* get_doc = nullptr;  // doc, clinic_id, version
  sqlite3_stmt* history = nullptr;
  sqlite3_stmt* changes = nullptr;
  sqlite3_stmt* latest_change = nullptr;
  // The writer's side of versions.
  sqlite3_stmt* insert_version = nullptr;
  sqlite3_stmt* move_first_version = nullptr;
  sqlite3_stmt* read_current = nullptr;
  sqlite3_stmt* update_test = nullptr;

  ~Connection() {
    for (sqlite3_stmt* s : stmts) sqlite3_finalize(s);
    if (db) sqlite3_close_v2(db);
  }
  // Prepares sql for reuse; the statement lives as long as the connection.
  int prepare(const char* sql, sqlite3_stmt** out) {
    int rc = sqlite3_prepare_v3(db, sql, -1, SQLITE_PREPARE_PERSISTENT, out, nullptr);
    if (rc == SQLITE_OK) stmts.push_back(*out);
    return rc;
  }
  int exec(const char* sql) { return sqlite3_exec(db, sql, nullptr, nullptr, nullptr); }
  // Runs a prepared statement that returns no rows; SQLITE_OK on success.
  static int run(sqlite3_stmt* stmt) {
    int rc = sqlite3_step(stmt);
    sqlite3_reset(stmt);
    return rc == SQLITE_DONE ? SQLITE_OK : rc;
  }

  // The writer's transaction control, prepared once.
  sqlite3_stmt* begin = nullptr;
  sqlite3_stmt* savepoint = nullptr;
  sqlite3_stmt* release = nullptr;
  sqlite3_stmt* rollback_to = nullptr;
  sqlite3_stmt* commit = nullptr;
  sqlite3_stmt* rollback = nullptr;
  sqlite3_stmt* bump_seq = nullptr;
  sqlite3_stmt* bump_change_seq = nullptr;
  sqlite3_stmt* newest_mark = nullptr;  // the highest created_at in created_marks
  sqlite3_stmt* add_mark = nullptr;
  sqlite3_stmt* count_since_future_mark = nullptr;  // these three: load_newest_mark
  sqlite3_stmt* late_from_future_mark = nullptr;
  sqlite3_stmt* drop_future_marks = nullptr;
  sqlite3_stmt* page_count = nullptr;  // for metrics, after each commit
  // The writer runs at PRAGMA synchronous=NORMAL (commits without a WAL sync) since a begin
  // that need not be durable; the store's own setting again after a durable one.
  bool relaxed = false;
};

// A connection opened for one operation, closed with it.
struct DbHandle {
  sqlite3* db = nullptr;
  ~DbHandle() {
    if (db) sqlite3_close_v2(db);
  }
};

// What an SQLite result code means for the data (errors.cpp has the table). `writing`: an
// SQLITE_IOERR is then asked of the filesystem (a full disk, or a failing one).
Status status_from_sqlite(int rc, sqlite3* db, const std::string& what, bool writing);

// sqlite3_open_v2 of path with flags, without SQLite's per-connection mutex (each connection is
// used by one thread at a time).
int open_connection(const std::string& path, int flags, sqlite3** db);

// A text column of the current row, valid until the statement steps or resets.
std::string_view column_view(sqlite3_stmt* stmt, int i);

// Ok when db's schema (at `version`) is exactly the one this binary creates for that version
// (schema.cpp); with extras_only, only objects this binary does not make are refused.
Status check_schema(sqlite3* db, int version, const std::string& path, bool extras_only);

}  // namespace tdapi
