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
//   26000, 42P05 (a prepared statement missing, already there), class 08 (08P01: PgBouncer)
//                                               -> Unavailable (503), the connection replaced
//   anything else                               -> Internal (500)
// Only the primary message of an error is kept: PostgreSQL's DETAIL can quote row values.
#pragma once

#include <libpq-fe.h>
#include <poll.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <system_error>
#include <thread>
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
//
// Behind a pooler in transaction mode (PgOptions::transaction_pooler) each transaction may run
// on another server connection, shared with other clients: nothing may stay on the server past
// a transaction. Then run() sends every statement unnamed (nothing prepared), nothing is SET at
// connect, and each transaction sets its own timeouts (`local_settings`): a simple query or a
// BEGIN outside a transaction gets them as SET LOCAL in the same query string, a parameterized
// statement outside one gets them from set_config(..., true) in the same pipeline (one
// implicit transaction, one round trip).
struct PgStore::Connection {
  PGconn* conn = nullptr;
  std::unordered_set<std::string> prepared;
  bool pooled = false;         // behind a transaction-mode pooler (see above)
  std::string local_settings;  // pooled: "SET LOCAL …; " for each transaction
  std::string statement_timeout_ms, lock_timeout_ms;  // pooled: for set_config
  // The server side is not what this connection expects (a prepared statement missing or
  // already there, a protocol violation, a pooler error, a round trip past its deadline): the
  // connection is dropped and the next operation opens a new one.
  mutable bool broken = false;

  // Every round trip is answered by its deadline: round_trip_timeout from its start, or
  // `deadline` when that is set and earlier (the writer's group transaction). Past it the
  // statement is cancelled (PQcancel) and the server gets kCancelGrace to answer; the round
  // trip's result is then what the server said, or none, and timed_out is set.
  std::chrono::milliseconds round_trip_timeout{10000};
  std::chrono::steady_clock::time_point deadline{};  // none: the epoch
  bool timed_out = false;  // the last round trip passed its deadline and was cancelled
  bool cancel_sent = false;
  // The primary message of the last WARNING the server sent during the last round trip (e.g.
  // that a wait for synchronous replication was cancelled: the transaction committed locally).
  std::string warning;
  static constexpr std::chrono::milliseconds kCancelGrace{1000};

  ~Connection() {
    if (conn) PQfinish(conn);
  }
  bool healthy() const { return conn && !broken && PQstatus(conn) == CONNECTION_OK; }
  bool in_transaction() const { return conn && PQtransactionStatus(conn) != PQTRANS_IDLE; }

  // Receives the server's notices (connect sets it): warnings are kept, nothing is printed.
  static void on_notice(void* self, const PGresult* r) {
    const char* severity = PQresultErrorField(r, PG_DIAG_SEVERITY_NONLOCALIZED);
    const char* primary = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    if (severity && primary && std::strcmp(severity, "WARNING") == 0) {
      static_cast<Connection*>(self)->warning = primary;
    }
  }

  std::chrono::steady_clock::time_point round_trip_deadline() const {
    auto until = std::chrono::steady_clock::now() + round_trip_timeout;
    if (deadline.time_since_epoch().count() != 0 && deadline < until) until = deadline;
    return until;
  }
  void start_round_trip() {
    timed_out = false;
    cancel_sent = false;
    warning.clear();
  }

  // Asks the server to cancel the running statement, without waiting for it: PQcancel blocks
  // until the server closes the cancel connection, and a stalled server (stopped, or cut off by
  // the network) does not; the round trip's deadline must not depend on it. The request is sent
  // from a thread of its own, which ends when the server answers or the socket fails.
  void send_cancel() {
    PGcancel* cancel = PQgetCancel(conn);
    if (cancel == nullptr) return;
    try {
      std::thread([cancel] {
        char why[256];
        PQcancel(cancel, why, sizeof why);
        PQfreeCancel(cancel);
      }).detach();
    } catch (const std::system_error&) {  // no thread to be had: the grace period decides
      PQfreeCancel(cancel);
    }
  }

  // Waits until the next result can be read without blocking (or the connection failed, which
  // PQgetResult then reports): true. Past `until` the statement is cancelled and the server gets
  // kCancelGrace more; false when it did not answer by then (the connection is broken).
  bool wait_readable(std::chrono::steady_clock::time_point& until) {
    // As PQexec waits: poll, then read (no read before the first poll: an answer is never
    // there the moment a query was sent).
    for (;;) {
      if (!PQisBusy(conn) || PQstatus(conn) == CONNECTION_BAD) return true;
      const auto now = std::chrono::steady_clock::now();
      if (now >= until) {
        if (cancel_sent) {
          broken = true;
          return false;
        }
        timed_out = true;
        cancel_sent = true;
        send_cancel();
        until = now + kCancelGrace;
        continue;
      }
      pollfd p{};
      p.fd = PQsocket(conn);
      p.events = POLLIN;
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(until - now);
      const int rc = ::poll(&p, 1, static_cast<int>(std::max<long long>(1, left.count())));
      if (rc < 0 && errno != EINTR) {
        broken = true;
        return false;
      }
      if (rc > 0 && PQconsumeInput(conn) == 0) return true;  // failed: PQgetResult says so
    }
  }

  // The results of what was just sent, as PQexec gives them: the last one, or the first error.
  // Null when nothing was sent, or the deadline passed and the cancel was not answered either.
  PgResult await(bool sent) {
    if (!sent) {
      broken = true;
      return wrap(nullptr);
    }
    auto until = round_trip_deadline();
    PgResult last = wrap(nullptr);
    for (;;) {
      if (!wait_readable(until)) return wrap(nullptr);
      PGresult* r = PQgetResult(conn);
      if (r == nullptr) break;
      if (last && PQresultStatus(last.get()) == PGRES_FATAL_ERROR) {
        PQclear(r);
      } else {
        last = wrap(r);
      }
    }
    return last;
  }

  PgResult exec_now(const char* sql) {
    start_round_trip();
    return await(PQsendQuery(conn, sql) == 1);
  }

  PgResult exec(const char* sql) {
    if (!pooled || in_transaction()) return exec_now(sql);
    // Pooled, outside a transaction: the transaction's settings go with the query (after its
    // BEGIN, or ahead of its statements, which run as one implicit transaction).
    std::string text;
    if (std::strncmp(sql, "BEGIN", 5) == 0 && (sql[5] == '\0' || sql[5] == ';')) {
      text = "BEGIN; " + local_settings + (sql[5] == ';' ? sql + 6 : "");
    } else {
      text = local_settings + sql;
    }
    return exec_now(text.c_str());
  }

  // Runs the statement `name` (prepared from sql on first use on this connection; pooled: sent
  // unnamed each time) with text parameters (nullptr: NULL).
  PgResult run(const char* name, const char* sql, std::initializer_list<const char*> params) {
    return run(name, sql, params.begin(), static_cast<int>(params.size()));
  }
  PgResult run(const char* name, const char* sql, const char* const* params, int n) {
    if (pooled) {
      if (in_transaction()) {
        start_round_trip();
        return await(PQsendQueryParams(conn, sql, n, nullptr, params, nullptr, nullptr, 0) == 1);
      }
      return run_pipelined(sql, params, n);
    }
    if (prepared.count(name) == 0) {
      start_round_trip();
      PgResult p = await(PQsendPrepare(conn, name, sql, n, nullptr) == 1);
      if (!result_ok(p)) return p;
      prepared.insert(name);
    }
    start_round_trip();
    return await(PQsendQueryPrepared(conn, name, n, params, nullptr, nullptr, 0) == 1);
  }

  // Pooled, outside a transaction: set_config(…, true) of the timeouts, then the statement, then
  // one Sync: both run in one implicit transaction on one server connection. The statement's
  // result (or the first error).
  PgResult run_pipelined(const char* sql, const char* const* params, int n) {
    start_round_trip();
    if (PQenterPipelineMode(conn) != 1) return wrap(nullptr);
    const char* timeouts[] = {statement_timeout_ms.c_str(), lock_timeout_ms.c_str()};
    const bool sent = PQsendQueryParams(conn,
                                        "SELECT set_config('statement_timeout', $1, true),"
                                        " set_config('lock_timeout', $2, true)",
                                        2, nullptr, timeouts, nullptr, nullptr, 0) == 1 &&
                      PQsendQueryParams(conn, sql, n, nullptr, params, nullptr, nullptr, 0) == 1 &&
                      PQpipelineSync(conn) == 1;
    PgResult setup = wrap(nullptr);
    PgResult out = wrap(nullptr);
    bool complete = false;
    if (sent) {
      auto until = round_trip_deadline();
      // Each query's results end with a null; the Sync's is PGRES_PIPELINE_SYNC.
      int query = 0;
      for (int guard = 0; guard < 64 && PQstatus(conn) == CONNECTION_OK; ++guard) {
        if (!wait_readable(until)) break;
        PGresult* r = PQgetResult(conn);
        if (r == nullptr) {
          ++query;
          continue;
        }
        if (PQresultStatus(r) == PGRES_PIPELINE_SYNC) {
          PQclear(r);
          complete = true;
          break;
        }
        PgResult& slot = query == 0 ? setup : out;
        if (!slot) {
          slot = wrap(r);
        } else {
          PQclear(r);
        }
      }
    }
    if (!complete || PQexitPipelineMode(conn) != 1) broken = true;
    if (setup && !result_ok(setup)) return setup;
    if (!sent && !out) broken = true;
    return out;
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
    if (timed_out) {
      msg += " (no answer within the round-trip deadline of " +
             std::to_string(round_trip_timeout.count()) + " ms: cancelled)";
      // The server answered the cancel: the statement ended, the connection is usable.
      if (state && std::strcmp(state, "57014") == 0) return Status::Busy(msg);
    }
    if (!healthy() || !state) return Status::Unavailable(msg);
    std::string s(state);
    // A statement the server connection lacks (26000) or has already (42P05): the server side
    // changed under this connection (a pooler in transaction mode, a DISCARD). A protocol
    // violation (08P01) is what PgBouncer answers when it cannot serve the client. Each is
    // answered 503 and the connection replaced.
    if (s == "26000" || s == "42P05" || s.compare(0, 2, "08") == 0) {
      broken = true;
      return Status::Unavailable(msg);
    }
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
