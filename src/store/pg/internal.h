// internal.h: what the PostgreSQL backend's files share (store/pg/ only; nothing outside the
// backend includes it): its connection type with the SQLSTATE mapping, result helpers, the
// advisory lock every write transaction takes, and row readers.
//
// SQLSTATEs and what they become (see status.h for the HTTP side):
//   23505 unique_violation                      -> Duplicate (409)
//   40001, 40P01, 55P03, 57014 (serialization, deadlock, lock timeout, statement timeout)
//                                               -> Busy (503)
//   53100 disk_full                             -> Full (507)
//   25006 read_only_sql_transaction (a standby) -> ReadOnly (503)
//   XX001, XX002 (data or index corrupted)      -> Corrupt (503, logged at error level)
//   58030 io_error                              -> IoError (503)
//   class 08, 57P01-57P03, 53300, no SQLSTATE, or the connection gone
//                                               -> Unavailable (503)
//   anything else                               -> Internal (500)
// Only the primary message of an error is kept: PostgreSQL's DETAIL can quote row values.
#pragma once

#include <libpq-fe.h>

#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_set>

#include "store/pg/store_pg.h"
#include "store/status.h"

namespace tdapi {

// Serializes the write transactions of every app process on the database (see PgStore).
constexpr const char* kWriteLockKey = "7416100";

// Rows per read transaction of a listing (tests, audit).
constexpr long long kListPageRows = 1000;

using PgResult = std::unique_ptr<PGresult, void (*)(PGresult*)>;
inline PgResult wrap(PGresult* r) { return PgResult(r, PQclear); }

inline bool result_ok(const PgResult& r) {
  if (!r) return false;
  ExecStatusType t = PQresultStatus(r.get());
  return t == PGRES_COMMAND_OK || t == PGRES_TUPLES_OK;
}

// First line of libpq's connection error message (it ends with a newline).
inline std::string first_line(const char* text) {
  std::string s = text ? text : "";
  size_t nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

inline std::string_view value_view(const PGresult* r, int row, int col) {
  return std::string_view(PQgetvalue(r, row, col), static_cast<size_t>(PQgetlength(r, row, col)));
}

inline long long value_int(const PGresult* r, int row, int col) {
  return std::strtoll(PQgetvalue(r, row, col), nullptr, 10);
}

// A connection and the names of the statements prepared on it, used by one thread at a time.
struct PgStore::Connection {
  PGconn* conn = nullptr;
  std::unordered_set<std::string> prepared;

  ~Connection() {
    if (conn) PQfinish(conn);
  }
  bool healthy() const { return conn && PQstatus(conn) == CONNECTION_OK; }
  bool in_transaction() const { return conn && PQtransactionStatus(conn) != PQTRANS_IDLE; }

  PgResult exec(const char* sql) { return wrap(PQexec(conn, sql)); }

  // Runs the statement `name` (prepared from sql on first use on this connection) with text
  // parameters (nullptr: NULL).
  PgResult run(const char* name, const char* sql, std::initializer_list<const char*> params) {
    return run(name, sql, params.begin(), static_cast<int>(params.size()));
  }
  PgResult run(const char* name, const char* sql, const char* const* params, int n) {
    if (prepared.count(name) == 0) {
      PgResult p = wrap(PQprepare(conn, name, sql, n, nullptr));
      if (!result_ok(p)) return p;
      prepared.insert(name);
    }
    return wrap(PQexecPrepared(conn, name, n, params, nullptr, nullptr, 0));
  }

  // What a failed result (or a null one) means. `what` names the operation.
  Status error(const PGresult* r, const std::string& what) const {
    const char* state = r ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : nullptr;
    const char* primary = r ? PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY) : nullptr;
    // Data exceptions (class 22) quote the offending value: only their SQLSTATE is kept.
    const bool quotes_data = state && std::strncmp(state, "22", 2) == 0;
    std::string msg = what + ": " +
                      (quotes_data ? std::string("invalid data")
                       : primary   ? std::string(primary)
                                   : first_line(conn ? PQerrorMessage(conn) : ""));
    if (state) msg += std::string(" (SQLSTATE ") + state + ")";
    if (!healthy() || !state) return Status::Unavailable(msg);
    std::string s(state);
    if (s == "23505") return Status::Duplicate(msg);
    if (s == "40001" || s == "40P01" || s == "55P03" || s == "57014") return Status::Busy(msg);
    if (s == "53100") return Status::Full(msg);
    if (s == "25006") return Status::ReadOnly(msg);
    if (s == "XX001" || s == "XX002") return Status::Corrupt(msg);
    if (s == "58030") return Status::IoError(msg);
    if (s.compare(0, 2, "08") == 0 || s.compare(0, 3, "57P") == 0 || s.compare(0, 2, "53") == 0) {
      return Status::Unavailable(msg);
    }
    return Status::Internal(msg);
  }
};

// Runs fn inside BEGIN ... COMMIT on c holding the write lock (import.cpp).
Status in_write_transaction(PgStore::Connection& c, const char* what,
                            const std::function<Status()>& fn);

}  // namespace tdapi
