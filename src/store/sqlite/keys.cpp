// keys.cpp: access keys in SQLite (hashes of their secrets only).
#include "store/keys.h"

#include <functional>
#include <mutex>

#include "store/sqlite/internal.h"

namespace tdapi {

Status SqliteStore::find_key(std::string_view key_id, ApiKey& out) {
  Status status;
  std::unique_ptr<Connection> conn = acquire_reader(status);
  if (!conn) {
    note_failure(status);
    return status;
  }
  sqlite3_stmt* st = conn->key_get;
  sqlite3_bind_text(st, 1, key_id.data(), static_cast<int>(key_id.size()), SQLITE_STATIC);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    out.key_id.assign(column_view(st, 0));
    out.name.assign(column_view(st, 1));
    out.scopes = scopes_from_json(column_view(st, 2));
    out.secret_hash.assign(column_view(st, 3));
    out.created_at.assign(column_view(st, 4));
    out.revoked_at.assign(column_view(st, 5));
  } else if (rc == SQLITE_DONE) {
    status = Status::NotFound("no such key");
  } else {
    status = status_from_sqlite(sqlite3_extended_errcode(conn->db), conn->db, "find key", false);
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  note_failure(status);
  release_reader(std::move(conn));
  return status;
}

Status SqliteStore::admin_write(const std::function<int(sqlite3*)>& fn, const char* what) {
  MutexLock lock(admin_mu_);
  if (!admin_) {
    int rc = open_connection(options_.path, SQLITE_OPEN_READWRITE, &admin_);
    if (rc != SQLITE_OK) {
      Status s = status_from_sqlite(rc, admin_, "open admin connection", true);
      sqlite3_close_v2(admin_);
      admin_ = nullptr;
      return s;
    }
    sqlite3_extended_result_codes(admin_, 1);
    sqlite3_busy_timeout(admin_, options_.busy_timeout_ms);
  }
  int rc = sqlite3_exec(admin_, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr);
  if (rc == SQLITE_OK) rc = fn(admin_);
  if (rc == SQLITE_OK) rc = sqlite3_exec(admin_, "COMMIT", nullptr, nullptr, nullptr);
  if (rc == SQLITE_OK) return Status::Ok();
  Status s = status_from_sqlite(sqlite3_extended_errcode(admin_), admin_, what, true);
  if (!sqlite3_get_autocommit(admin_)) sqlite3_exec(admin_, "ROLLBACK", nullptr, nullptr, nullptr);
  note_failure(s);
  return s;
}

// Runs one statement with text parameters on db; SQLITE_OK when it completed. changes, when
// given, receives the number of rows it changed.
static int run_text_statement(sqlite3* db, const char* sql, const std::vector<std::string>& params,
                              int* changes = nullptr) {
  sqlite3_stmt* st = nullptr;
  int rc = sqlite3_prepare_v2(db, sql, -1, &st, nullptr);
  if (rc != SQLITE_OK) return rc;
  int i = 1;
  for (const std::string& p : params) {
    sqlite3_bind_text(st, i++, p.data(), static_cast<int>(p.size()), SQLITE_TRANSIENT);
  }
  rc = sqlite3_step(st);
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) return sqlite3_extended_errcode(db);
  if (changes) *changes = sqlite3_changes(db);
  return SQLITE_OK;
}

Status SqliteStore::create_key(const ApiKey& key) {
  return admin_write(
      [&](sqlite3* db) {
        return run_text_statement(
            db,
            "INSERT INTO api_keys (key_id, name, scopes, secret_hash,"
            " created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            {key.key_id, key.name, scopes_json(key.scopes), key.secret_hash, key.created_at});
      },
      "create key");
}

Status SqliteStore::revoke_key(std::string_view key_id, const std::string& when) {
  bool found = false;
  Status s = admin_write(
      [&](sqlite3* db) {
        int changes = 0;
        int rc = run_text_statement(
            db, "UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?2) WHERE key_id = ?1",
            {std::string(key_id), when}, &changes);
        found = changes > 0;
        return rc;
      },
      "revoke key");
  if (s.ok() && !found) return Status::NotFound("no such key");
  return s;
}

Status SqliteStore::list_keys(std::vector<ApiKey>& out) {
  out.clear();
  std::vector<std::string> ids;
  Status status;
  std::unique_ptr<Connection> conn = acquire_reader(status);
  if (!conn) return status;
  sqlite3_stmt* st = nullptr;
  int rc = sqlite3_prepare_v2(conn->db, "SELECT key_id FROM api_keys ORDER BY created_at, key_id",
                              -1, &st, nullptr);
  while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    ids.emplace_back(column_view(st, 0));
    rc = SQLITE_OK;
  }
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) {
    status = status_from_sqlite(sqlite3_extended_errcode(conn->db), conn->db, "list keys", false);
  }
  release_reader(std::move(conn));
  for (const std::string& id : ids) {
    if (!status.ok()) break;
    ApiKey k;
    status = find_key(id, k);
    if (status.ok()) out.push_back(std::move(k));
  }
  return status;
}

}  // namespace tdapi
