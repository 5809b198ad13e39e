// audit.cpp: reading the audit trail from SQLite (the writer appends it: store_sqlite.cpp).
#include <optional>

#include "store/sqlite/internal.h"

namespace tdapi {

namespace {

void bind_optional(sqlite3_stmt* st, int index, const std::optional<std::string>& value) {
  if (value) {
    sqlite3_bind_text(st, index, value->data(), static_cast<int>(value->size()), SQLITE_STATIC);
  } else {
    sqlite3_bind_null(st, index);
  }
}

}  // namespace

Status SqliteStore::list_audit(const AuditQuery& q,
                               const std::function<bool(const AuditEntry&)>& on_entry) {
  Status status;
  std::unique_ptr<Connection> conn = acquire_reader(status);
  if (!conn) {
    note_failure(status);
    return status;
  }
  sqlite3_stmt* st = conn->audit_list;
  sqlite3_bind_int64(st, 1, q.after_seq);
  bind_optional(st, 2, q.since);
  bind_optional(st, 3, q.until);
  bind_optional(st, 4, q.clinic_id);
  sqlite3_bind_int64(st, 5, q.limit);
  int rc;
  AuditEntry e;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    e.seq = sqlite3_column_int64(st, 0);
    e.ts.assign(column_view(st, 1));
    e.request_id.assign(column_view(st, 2));
    e.key_id.assign(column_view(st, 3));
    e.action.assign(column_view(st, 4));
    e.clinic_id.assign(column_view(st, 5));
    e.detail.assign(column_view(st, 6));
    e.outcome = sqlite3_column_int(st, 7);
    e.prev_hash.assign(column_view(st, 8));
    e.hash.assign(column_view(st, 9));
    if (!on_entry(e)) {
      rc = SQLITE_DONE;
      break;
    }
  }
  if (rc != SQLITE_DONE) {
    status = status_from_sqlite(sqlite3_extended_errcode(conn->db), conn->db, "list audit", false);
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  note_failure(status);
  release_reader(std::move(conn));
  return status;
}

Status SqliteStore::count_audit(long long up_to, long long& rows) {
  Status status;
  std::unique_ptr<Connection> conn = acquire_reader(status);
  if (!conn) {
    note_failure(status);
    return status;
  }
  sqlite3_stmt* st = nullptr;
  int rc =
      sqlite3_prepare_v2(conn->db, "SELECT count(*) FROM audit WHERE seq <= ?1", -1, &st, nullptr);
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(st, 1, up_to);
    rc = sqlite3_step(st);
  }
  if (rc == SQLITE_ROW) {
    rows = sqlite3_column_int64(st, 0);
  } else {
    status = status_from_sqlite(sqlite3_extended_errcode(conn->db), conn->db, "count audit", false);
  }
  sqlite3_finalize(st);
  note_failure(status);
  release_reader(std::move(conn));
  return status;
}

}  // namespace tdapi
