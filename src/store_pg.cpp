// store_pg.cpp: PostgreSQL storage. The only file that includes libpq-fe.h.
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
#include "store_pg.h"

#include <libpq-fe.h>

#include <algorithm>
#include <cassert>
#include <cctype>
#include <cstring>
#include <unordered_set>
#include <utility>

#include "auth.h"
#include "clock.h"
#include "crypto.h"
#include "http.h"
#include "json.h"
#include "log.h"

namespace tdapi {

bool is_postgres_url(const std::string& target) {
  return target.rfind("postgresql://", 0) == 0 || target.rfind("postgres://", 0) == 0 ||
         target.find("dbname=") != std::string::npos || target.find("host=") != std::string::npos;
}

std::string redact_url(const std::string& url) {
  // libpq's own parse errors quote the raw text; what it cannot parse is not shown at all.
  char* parse_error = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(url.c_str(), &parse_error);
  if (parsed == nullptr) {
    PQfreemem(parse_error);
    return "(a DATABASE_URL that libpq cannot parse)";
  }
  PQconninfoFree(parsed);
  auto lower = [](std::string t) {
    for (char& c : t) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return t;
  };
  std::string out = url;
  const size_t scheme = out.find("://");
  if (scheme != std::string::npos) {
    // URI: scheme://user:password@host/db?password=…&…
    const size_t auth_end = out.find_first_of("/?", scheme + 3);
    const size_t at = out.rfind('@', auth_end == std::string::npos ? out.size() : auth_end);
    if (at != std::string::npos && at > scheme) {
      const size_t colon = out.find(':', scheme + 3);
      if (colon != std::string::npos && colon < at) out.replace(colon + 1, at - colon - 1, "***");
    }
    const size_t query = out.find('?');
    if (query == std::string::npos) return out;
    std::string result = out.substr(0, query + 1);
    size_t i = query + 1;
    while (i <= out.size()) {
      size_t amp = out.find('&', i);
      if (amp == std::string::npos) amp = out.size();
      const std::string param = out.substr(i, amp - i);
      const size_t eq = param.find('=');
      const std::string key = lower(param.substr(0, eq));
      // A key that is, or may be once percent-decoded, "password": hide its value.
      const bool secret = key == "password" || key.find('%') != std::string::npos;
      result += secret && eq != std::string::npos ? param.substr(0, eq + 1) + "***" : param;
      if (amp < out.size()) result += '&';
      i = amp + 1;
    }
    return result;
  }
  // Keyword/value: password = value, the value bare or single-quoted with backslash escapes.
  std::string result;
  size_t i = 0;
  while (i < out.size()) {
    size_t key_begin = out.find_first_not_of(" \t\n", i);
    result += out.substr(i, key_begin == std::string::npos ? std::string::npos : key_begin - i);
    if (key_begin == std::string::npos) break;
    size_t eq = out.find('=', key_begin);
    if (eq == std::string::npos) {
      result += out.substr(key_begin);
      break;
    }
    std::string key = out.substr(key_begin, eq - key_begin);
    while (!key.empty() && (key.back() == ' ' || key.back() == '\t')) key.pop_back();
    size_t v = out.find_first_not_of(" \t", eq + 1);
    if (v == std::string::npos) v = out.size();
    size_t end = v;
    if (end < out.size() && out[end] == '\'') {
      for (++end; end < out.size() && out[end] != '\''; ++end) {
        if (out[end] == '\\') ++end;
      }
      end = std::min(end + 1, out.size());
    } else {
      while (end < out.size() && out[end] != ' ' && out[end] != '\t' && out[end] != '\n') ++end;
    }
    result += out.substr(key_begin, v - key_begin);
    result += lower(key) == "password" ? "***" : out.substr(v, end - v);
    i = end;
  }
  return result;
}

namespace {

using PgResult = std::unique_ptr<PGresult, void (*)(PGresult*)>;
PgResult wrap(PGresult* r) { return PgResult(r, PQclear); }

bool result_ok(const PgResult& r) {
  if (!r) return false;
  ExecStatusType t = PQresultStatus(r.get());
  return t == PGRES_COMMAND_OK || t == PGRES_TUPLES_OK;
}

// First line of libpq's connection error message (it ends with a newline).
std::string first_line(const char* text) {
  std::string s = text ? text : "";
  size_t nl = s.find('\n');
  return nl == std::string::npos ? s : s.substr(0, nl);
}

std::string_view value_view(const PGresult* r, int row, int col) {
  return std::string_view(PQgetvalue(r, row, col), static_cast<size_t>(PQgetlength(r, row, col)));
}

long long value_int(const PGresult* r, int row, int col) {
  return std::strtoll(PQgetvalue(r, row, col), nullptr, 10);
}

// Serializes the write transactions of every app process on the database (see PgStore).
constexpr const char* kWriteLockKey = "7416100";
constexpr const char* kMigrationLockKey = "7416101";

// kMigrations[v - 1] takes the schema from version v - 1 to v. Rows are never updated: `doc` is
// the test's JSON object exactly as the API returns it. `seq` is the insertion order (identity;
// BY DEFAULT so that migrate can keep the source's numbers).
struct Migration {
  const char* description;
  const char* sql;
};
const Migration kMigrations[] = {
    {"tests and the cursor key",
     "CREATE TABLE tests ("
     "  seq        bigint GENERATED BY DEFAULT AS IDENTITY NOT NULL,"
     "  test_id    text COLLATE \"C\" PRIMARY KEY,"
     "  patient_id text COLLATE \"C\" NOT NULL,"
     "  clinic_id  text COLLATE \"C\" NOT NULL,"
     "  test_type  text COLLATE \"C\" NOT NULL,"
     "  result     text NOT NULL,"
     "  created_at text NOT NULL,"
     "  doc        text NOT NULL);"
     "CREATE INDEX tests_by_clinic ON tests (clinic_id, seq);"
     "CREATE INDEX tests_by_patient ON tests (clinic_id, patient_id, seq);"
     "CREATE INDEX tests_by_type ON tests (clinic_id, test_type, seq);"
     // All tests in seq order (migrate, digests), through an expression: a plain index on seq
     // would offer the listings a walk of every test in seq order, filtered by clinic, which
     // the planner takes when its statistics make a clinic look like most of the table (seen:
     // a 10-test clinic listed at 125/s after 80,000 inserts elsewhere, against 4,700/s).
     "CREATE UNIQUE INDEX tests_by_seq ON tests ((seq + 0));"
     "CREATE TABLE meta (name text PRIMARY KEY, value bytea NOT NULL);"},
    {"access keys and the audit trail",
     "CREATE TABLE api_keys ("
     "  key_id      text COLLATE \"C\" PRIMARY KEY,"
     "  name        text NOT NULL,"
     "  scopes      text NOT NULL,"  // JSON array of strings
     "  secret_hash text NOT NULL,"
     "  created_at  text NOT NULL,"
     "  revoked_at  text);"
     "CREATE TABLE audit ("
     "  seq        bigint PRIMARY KEY,"
     "  ts         text NOT NULL,"
     "  request_id text NOT NULL,"
     "  key_id     text NOT NULL,"
     "  action     text NOT NULL,"
     "  clinic_id  text COLLATE \"C\" NOT NULL,"
     "  detail     text NOT NULL,"
     "  outcome    integer NOT NULL,"
     "  prev_hash  text NOT NULL,"
     "  hash       text NOT NULL);"},
};
static_assert(sizeof kMigrations / sizeof kMigrations[0] == PgStore::kSchemaVersion,
              "one migration per schema version");

const char kInsertSql[] =
    "INSERT INTO tests (test_id, patient_id, clinic_id, test_type, result, created_at, doc)"
    " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (test_id) DO NOTHING RETURNING seq";
const char kAuditInsertSql[] =
    "INSERT INTO audit (seq, ts, request_id, key_id, action, clinic_id, detail, outcome,"
    " prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";
const char kAuditListSql[] =
    "SELECT seq, ts, request_id, key_id, action, clinic_id, detail, outcome, prev_hash, hash"
    " FROM audit WHERE seq > $1 AND ($2::text IS NULL OR ts >= $2)"
    " AND ($3::text IS NULL OR ts < $3) AND ($4::text IS NULL OR clinic_id = $4)"
    " ORDER BY seq LIMIT $5";
const char kKeyColumns[] =
    "SELECT key_id, name, scopes, secret_hash, created_at, coalesce(revoked_at, '')"
    " FROM api_keys";

// Listing statements, one per combination of filters; parameters numbered in order.
const char* const kListNames[] = {"list0", "list1", "list2", "list3"};
std::string list_sql(bool by_patient, bool by_type) {
  std::string sql = "SELECT doc, seq FROM tests WHERE clinic_id = $1";
  int n = 2;
  if (by_patient) sql += " AND patient_id = $" + std::to_string(n++);
  if (by_type) sql += " AND test_type = $" + std::to_string(n++);
  sql += " AND seq > $" + std::to_string(n++);
  return sql + " ORDER BY seq LIMIT $" + std::to_string(n);
}

// A listing reads at most this many rows, aiming at this many bytes, per query, and delivers
// them after the query ended: a slow client never holds a snapshot or a connection.
constexpr long long kListPageRows = 1000;
constexpr size_t kListPageBytes = 256 * 1024;
constexpr long long kFirstPageRows = 16;

constexpr auto kSizeRefresh = std::chrono::seconds(10);

void read_key(const PGresult* r, int row, ApiKey& out) {
  out.key_id.assign(value_view(r, row, 0));
  out.name.assign(value_view(r, row, 1));
  out.scopes = scopes_from_json(value_view(r, row, 2));
  out.secret_hash.assign(value_view(r, row, 3));
  out.created_at.assign(value_view(r, row, 4));
  out.revoked_at.assign(value_view(r, row, 5));
}

void read_audit(const PGresult* r, int row, AuditEntry& e) {
  e.seq = value_int(r, row, 0);
  e.ts.assign(value_view(r, row, 1));
  e.request_id.assign(value_view(r, row, 2));
  e.key_id.assign(value_view(r, row, 3));
  e.action.assign(value_view(r, row, 4));
  e.clinic_id.assign(value_view(r, row, 5));
  e.detail.assign(value_view(r, row, 6));
  e.outcome = static_cast<int>(value_int(r, row, 7));
  e.prev_hash.assign(value_view(r, row, 8));
  e.hash.assign(value_view(r, row, 9));
}

}  // namespace

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

// The writer connection's side of the group-commit engine (store/write_engine.h).
class PgStore::Backend : public WriteBackend {
 public:
  explicit Backend(PgStore& store) : store_(store) {}

  // BEGIN, on a new connection when the old one is gone (once more if it turns out to have
  // died while idle: nothing has been done yet), then the write lock: write transactions of
  // every app process take turns.
  // Not durable: synchronous_commit off for this transaction (its COMMIT is in the server's WAL
  // buffers, so it survives the app's crash; the server flushes it within its wal_writer_delay,
  // a later durable commit or sync at once).
  Status begin(bool durable) override {
    std::unique_ptr<Connection>& writer = store_.writer_;
    Status status;
    for (int attempt = 0; attempt < 2; ++attempt) {
      status = Status::Ok();
      if (!writer || !writer->healthy()) {
        writer.reset();
        status = store_.connect(writer);
        if (!status.ok()) return status;
      }
      PgResult r = writer->exec(durable ? "BEGIN" : "BEGIN; SET LOCAL synchronous_commit = off");
      if (result_ok(r)) break;
      status = writer->error(r.get(), "BEGIN");
      if (writer->healthy()) break;
    }
    if (!status.ok()) return status;
    PgResult r = writer->run("write_lock", "SELECT pg_advisory_xact_lock($1)", {kWriteLockKey});
    return result_ok(r) ? Status::Ok() : writer->error(r.get(), "take the write lock");
  }
  Status audit_head(long long& seq, std::string& hash) override {
    Connection& c = *store_.writer_;
    PgResult r = c.run("audit_head", "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", {});
    if (!result_ok(r)) return c.error(r.get(), "read the audit head");
    seq = 0;
    hash = kAuditGenesis;
    if (PQntuples(r.get()) == 1) {
      seq = value_int(r.get(), 0, 0);
      hash.assign(value_view(r.get(), 0, 1));
    }
    return Status::Ok();
  }
  // A lone single-record request needs no savepoint: its failure is the transaction's.
  bool savepoint_for_lone_record() const override { return false; }
  Status savepoint() override { return exec("SAVEPOINT job"); }
  Status rollback_to_savepoint() override { return exec("ROLLBACK TO SAVEPOINT job"); }
  Status release_savepoint() override { return exec("RELEASE SAVEPOINT job"); }

  // ON CONFLICT DO NOTHING: the database decides duplicates (racing inserts of one id wait for
  // each other); no row back means the id exists.
  Status insert_record(const TestRecord& rec, const std::string& created_at,
                       bool& duplicate) override {
    Connection& c = *store_.writer_;
    const std::string doc = test_record_json(rec, created_at);
    PgResult r =
        c.run("insert", kInsertSql,
              {rec.test_id.c_str(), rec.patient_id.c_str(), rec.clinic_id.c_str(),
               rec.test_type.c_str(), rec.result.c_str(), created_at.c_str(), doc.c_str()});
    if (!result_ok(r)) return c.error(r.get(), "INSERT");
    duplicate = PQntuples(r.get()) == 0;
    return Status::Ok();
  }
  Status insert_audit(const AuditEntry& e) override {
    Connection& c = *store_.writer_;
    const std::string seq = std::to_string(e.seq);
    const std::string outcome = std::to_string(e.outcome);
    PgResult r = c.run("audit_insert", kAuditInsertSql,
                       {seq.c_str(), e.ts.c_str(), e.request_id.c_str(), e.key_id.c_str(),
                        e.action.c_str(), e.clinic_id.c_str(), e.detail.c_str(), outcome.c_str(),
                        e.prev_hash.c_str(), e.hash.c_str()});
    return result_ok(r) ? Status::Ok() : c.error(r.get(), "INSERT audit");
  }
  bool transaction_lost() override { return !store_.writer_->healthy(); }
  Status commit() override {
    Connection& c = *store_.writer_;
    PgResult r = c.exec("COMMIT");
    if (!result_ok(r)) return c.error(r.get(), "COMMIT");
    if (std::strcmp(PQcmdStatus(r.get()), "COMMIT") != 0) {
      return Status::Internal("COMMIT: the transaction was rolled back");
    }
    return Status::Ok();
  }
  void abort() override {
    std::unique_ptr<Connection>& writer = store_.writer_;
    if (!writer) return;
    if (writer->healthy() && writer->in_transaction()) writer->exec("ROLLBACK");
    if (!writer->healthy() || writer->in_transaction()) writer.reset();  // start over
  }
  void note_failure(const Status& status) override { store_.note_failure(status); }
  // A durable COMMIT flushes the WAL up to its own record, and so every commit before it; a
  // transaction flushes at COMMIT only if it wrote WAL, hence the (transactional) logical
  // message, which writes a WAL record and nothing else.
  Status sync() override {
    std::unique_ptr<Connection>& writer = store_.writer_;
    if (!writer || !writer->healthy()) return Status::Unavailable("no connection to sync");
    PgResult r =
        writer->exec("BEGIN; SELECT pg_logical_emit_message(true, 'testdata-api', 'sync'); COMMIT");
    if (result_ok(r)) return Status::Ok();
    Status s = writer->error(r.get(), "sync");
    abort();
    return s;
  }

 private:
  Status exec(const char* sql) {
    Connection& c = *store_.writer_;
    PgResult r = c.exec(sql);
    return result_ok(r) ? Status::Ok() : c.error(r.get(), sql);
  }

  PgStore& store_;
};

PgStore::PgStore(PgOptions options)
    : options_(std::move(options)), readers_(options_.max_readers) {}

Status PgStore::connect(std::unique_ptr<Connection>& out) const {
  // Our defaults first: what the URL says wins (only the first dbname is expanded, and later
  // values override earlier ones).
  const std::string timeout = std::to_string(options_.connect_timeout_s);
  const char* keys[] = {"connect_timeout",
                        "application_name",
                        "keepalives",
                        "keepalives_idle",
                        "keepalives_interval",
                        "keepalives_count",
                        "tcp_user_timeout",
                        "dbname",
                        nullptr};
  const char* values[] = {timeout.c_str(),
                          options_.application_name.c_str(),
                          "1",
                          "10",
                          "5",
                          "3",
                          "30000",
                          options_.url.c_str(),
                          nullptr};
  auto conn = std::make_unique<Connection>();
  conn->conn = PQconnectdbParams(keys, values, 1);
  if (!conn->healthy()) {
    return Status::Unavailable("cannot connect to PostgreSQL at " + redact_url(options_.url) +
                               ": " + first_line(conn->conn ? PQerrorMessage(conn->conn) : ""));
  }
  const std::string setup =
      "SET synchronous_commit = on; SET client_encoding = 'UTF8';"
      " SET statement_timeout = " +
      std::to_string(options_.statement_timeout_ms) +
      "; SET lock_timeout = " + std::to_string(std::max(1, options_.lock_timeout_ms)) +
      "; SET idle_in_transaction_session_timeout = 60000;";
  PgResult r = conn->exec(setup.c_str());
  if (!result_ok(r)) return conn->error(r.get(), "configure the connection");
  out = std::move(conn);
  return Status::Ok();
}

Status PgStore::open(const PgOptions& options, std::unique_ptr<PgStore>& out) {
  char* parse_error = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(options.url.c_str(), &parse_error);
  if (parsed == nullptr) {
    PQfreemem(parse_error);  // it quotes the URL, password and all
    return Status::Internal("DATABASE_URL is not a connection string libpq can parse");
  }
  PQconninfoFree(parsed);
  std::unique_ptr<PgStore> store(new PgStore(options));
  Status s = store->connect(store->writer_);
  if (!s.ok()) return s;
  // Documents and ids are UTF-8; a database in another encoding would refuse some of them,
  // quoting the patient's characters in its errors.
  const char* encoding = PQparameterStatus(store->writer_->conn, "server_encoding");
  if (encoding == nullptr || std::string(encoding) != "UTF8") {
    return Status::Internal("the database's encoding is " +
                            std::string(encoding ? encoding : "unknown") +
                            ", not UTF8: create it with ENCODING 'UTF8'");
  }
  s = store->migrate(*store->writer_);
  if (!s.ok()) return s;
  s = store->load_secret(*store->writer_);
  if (!s.ok()) return s;
  if (options.open_readers_at_start) store->open_readers();
  store->backend_ = std::make_unique<Backend>(*store);
  store->engine_ =
      std::make_unique<WriteEngine>(*store->backend_, options.writes, options.observer);
  out = std::move(store);
  return Status::Ok();
}

Status PgStore::migrate(Connection& c) {
  const std::string where = "PostgreSQL at " + redact_url(options_.url);
  auto fail = [&](const PgResult& r, const std::string& what) {
    Status s = c.error(r.get(), what + " (" + where + ")");
    c.exec("ROLLBACK");
    return s;
  };
  PgResult r = c.exec("BEGIN");
  if (!result_ok(r)) return c.error(r.get(), "BEGIN (" + where + ")");
  // One process at a time migrates; the others wait here and then find the work done.
  r = c.run("migration_lock", "SELECT pg_advisory_xact_lock($1)", {kMigrationLockKey});
  if (!result_ok(r)) return fail(r, "take the migration lock");
  r = c.exec("SELECT to_regclass('schema_migrations') IS NOT NULL");
  if (!result_ok(r)) return fail(r, "look for schema_migrations");
  const bool exists = value_view(r.get(), 0, 0) == "t";
  if (!exists && options_.admin_tool) {
    c.exec("ROLLBACK");
    return Status::ReadOnly("no testdata-api schema in " + where +
                            " (it is created by the service's first start)");
  }
  if (!exists) {
    r = c.exec(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY,"
        " description text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())");
    if (!result_ok(r)) return fail(r, "create schema_migrations");
  }
  // Nothing else is written when the schema is current: a read-only standby can be opened.
  r = c.exec("SELECT coalesce(max(version), 0) FROM schema_migrations");
  if (!result_ok(r)) return fail(r, "read schema_migrations");
  const int version = static_cast<int>(value_int(r.get(), 0, 0));
  if (version > kSchemaVersion) {
    c.exec("ROLLBACK");
    return Status::Internal(where + " has schema version " + std::to_string(version) +
                            ", newer than this binary's " + std::to_string(kSchemaVersion));
  }
  for (int v = version + 1; v <= kSchemaVersion; ++v) {
    const Migration& m = kMigrations[v - 1];
    r = c.exec(m.sql);
    if (!result_ok(r))
      return fail(r, "migration " + std::to_string(v) + " (" + m.description + ")");
    const std::string vs = std::to_string(v);
    r = c.run("migration_record",
              "INSERT INTO schema_migrations (version, description) VALUES ($1, $2)",
              {vs.c_str(), m.description});
    if (!result_ok(r)) return fail(r, "record migration " + vs);
  }
  r = c.exec("COMMIT");
  if (!result_ok(r)) return c.error(r.get(), "COMMIT the migrations (" + where + ")");
  if (version < kSchemaVersion) {
    LogFields f;
    f.detail = where + ": schema version " + std::to_string(version) + " -> " +
               std::to_string(kSchemaVersion);
    log_event(LogLevel::kInfo, "schema_migrated", f);
  }
  return Status::Ok();
}

Status PgStore::load_secret(Connection& c) {
  // Read first: on a read-only standby the key exists already and nothing may be written.
  PgResult r = c.exec("SELECT encode(value, 'hex') FROM meta WHERE name = 'cursor_key'");
  if (!result_ok(r)) return c.error(r.get(), "read the cursor key");
  if (PQntuples(r.get()) == 0) {
    std::string fresh;
    if (!random_bytes(16, fresh)) return Status::Internal("cannot draw a cursor key");
    const std::string hex = "\\x" + to_hex(fresh);
    r = c.run("secret_init",
              "INSERT INTO meta (name, value) VALUES ('cursor_key', $1::bytea)"
              " ON CONFLICT (name) DO NOTHING",
              {hex.c_str()});
    if (!result_ok(r)) return c.error(r.get(), "store the cursor key");
    r = c.exec("SELECT encode(value, 'hex') FROM meta WHERE name = 'cursor_key'");
    if (!result_ok(r)) return c.error(r.get(), "read the cursor key");
  }
  if (PQntuples(r.get()) != 1) return Status::Internal("no cursor key in the meta table");
  std::string_view stored = value_view(r.get(), 0, 0);
  secret_.clear();
  for (size_t i = 0; i + 1 < stored.size(); i += 2) {
    secret_.push_back(static_cast<char>(std::stoi(std::string(stored.substr(i, 2)), nullptr, 16)));
  }
  if (secret_.size() != 16) return Status::Internal("the cursor key in meta is not 16 bytes");
  return Status::Ok();
}

Status PgStore::set_instance_secret(const std::string& secret) {
  const std::string hex = "\\x" + to_hex(secret);
  Status s = with_reader(
      "set the cursor key",
      [&](Connection& c) {
        PgResult r =
            c.run("secret_set", "UPDATE meta SET value = $1::bytea WHERE name = 'cursor_key'",
                  {hex.c_str()});
        return result_ok(r) ? Status::Ok() : c.error(r.get(), "set the cursor key");
      },
      /*retry_when_lost=*/false);
  if (s.ok()) secret_ = secret;
  return s;
}

PgStore::~PgStore() {
  const bool was_open = engine_ != nullptr;
  engine_.reset();  // answers what is queued, then stops the writer thread
  readers_.drop_idle();
  writer_.reset();
  health_conn_.reset();
  if (!options_.admin_tool && was_open) {
    LogFields f;
    f.detail = redact_url(options_.url);
    log_event(LogLevel::kInfo, "store_closed", f);
  }
}

void PgStore::note_failure(const Status& s) {
  if (s.ok() || s.code() == StatusCode::kDuplicate || s.code() == StatusCode::kNotFound) return;
  LogFields f;
  f.reason = s.name();
  f.detail = s.message();
  if (s.code() == StatusCode::kCorrupt) {
    f.detail = "DATABASE CORRUPTION reported by PostgreSQL: " + s.message() +
               ". See the server's log; restore from a backup";
    log_event(LogLevel::kError, "database_corrupt", f);
    return;
  }
  log_event(LogLevel::kWarn, "storage_error", f);
}

// -- readers ---------------------------------------------------------------------------------

std::unique_ptr<PgStore::Connection> PgStore::acquire_reader(Status& status) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.lock_timeout_ms);
  std::unique_ptr<Connection> conn;
  switch (readers_.acquire(conn, deadline)) {
    case FifoPool<Connection>::Got::kIdle:
      return conn;
    case FifoPool<Connection>::Got::kTimeout:
      status = Status::Busy("all " + std::to_string(options_.max_readers) +
                            " PostgreSQL connections of this process stayed busy");
      return nullptr;
    case FifoPool<Connection>::Got::kOpenNew:
      break;
  }
  status = connect(conn);
  if (!status.ok()) {
    readers_.release(nullptr, false);  // the slot, to the next waiter
    return nullptr;
  }
  return conn;
}

// Opens the whole reader pool before the first request. Opened on demand instead, the first
// burst of reads after a start (32 connections, 16 readers) waited for new server processes on
// a busy machine: up to 1.6 s, past wrk's 2 s for some (make bench's first PostgreSQL round).
// A reader that cannot be opened now is opened on demand later, as after a server restart; the
// shortfall is logged (the server's max_connections must allow every node its writer and
// max_readers readers: the store_opened line names the number).
void PgStore::open_readers() {
  std::vector<std::unique_ptr<Connection>> opened;
  Status failed;
  for (size_t i = 0; i < options_.max_readers; ++i) {
    std::unique_ptr<Connection> conn;
    if (readers_.acquire(conn, std::chrono::steady_clock::now()) !=
        FifoPool<Connection>::Got::kOpenNew) {
      break;
    }
    failed = connect(conn);
    if (!failed.ok()) {
      readers_.release(nullptr, false);
      break;
    }
    opened.push_back(std::move(conn));
  }
  if (!failed.ok()) {
    LogFields f;
    f.count = static_cast<long long>(opened.size());
    f.reason = failed.name();
    f.detail = "opened " + std::to_string(opened.size()) + " of " +
               std::to_string(options_.max_readers) +
               " reader connections at start; the rest are opened when needed: " + failed.message();
    log_event(LogLevel::kWarn, "readers_short", f);
  }
  for (auto& conn : opened) readers_.release(std::move(conn), true);
}

void PgStore::release_reader(std::unique_ptr<Connection> conn) {
  const bool keep = conn && conn->healthy() && !conn->in_transaction();
  readers_.release(std::move(conn), keep);  // dropped: a new one is opened when needed
}

Status PgStore::with_reader(const char* what, const std::function<Status(Connection&)>& fn,
                            bool retry_when_lost) {
  Status status;
  // A pooled connection may have died while idle (the server restarted): a read that failed
  // because its connection was gone runs once more on a new one. Reads change nothing; a write
  // is not repeated (it may have committed before the connection went).
  for (int attempt = 0; attempt < (retry_when_lost ? 2 : 1); ++attempt) {
    std::unique_ptr<Connection> conn = acquire_reader(status);
    if (!conn) break;
    status = fn(*conn);
    const bool lost = !conn->healthy();
    release_reader(std::move(conn));
    if (!lost || status.ok()) break;
    // The server went away, and the idle connections with it: drop them all, so the retry
    // (and every request after it) runs on a new connection.
    readers_.drop_idle();
  }
  (void)what;
  note_failure(status);
  return status;
}

Status PgStore::list_tests(const ListQuery& q, const RowFn& on_row, const PageEndFn& on_page_end) {
  // As in get_test: a filter that is not UTF-8 matches nothing stored.
  if (!is_valid_utf8(q.clinic_id) || (q.patient_id && !is_valid_utf8(*q.patient_id)) ||
      (q.test_type && !is_valid_utf8(*q.test_type))) {
    return Status::Ok();
  }
  const int variant = (q.patient_id ? 1 : 0) | (q.test_type ? 2 : 0);
  const std::string sql = list_sql(q.patient_id.has_value(), q.test_type.has_value());
  long long after = q.after_seq;
  long long remaining = q.limit;  // < 0: no limit
  // The first page is small (the documents' size is not known yet); later ones aim at
  // kListPageBytes: a listing holds at most about that much, whatever its documents' size.
  long long page_rows = kFirstPageRows;
  bool more = remaining != 0;
  Status status;
  while (more) {
    const long long want = remaining < 0 ? page_rows : std::min(remaining, page_rows);
    const std::string after_text = std::to_string(after);
    const std::string want_text = std::to_string(want);
    const char* params[5];
    int n = 0;
    params[n++] = q.clinic_id.c_str();
    if (q.patient_id) params[n++] = q.patient_id->c_str();
    if (q.test_type) params[n++] = q.test_type->c_str();
    params[n++] = after_text.c_str();
    params[n++] = want_text.c_str();
    PgResult page = wrap(nullptr);
    status = with_reader("list tests", [&](Connection& c) {
      page = c.run(kListNames[variant], sql.c_str(), params, n);
      return result_ok(page) ? Status::Ok() : c.error(page.get(), "list tests");
    });
    if (!status.ok()) break;
    // Delivered after the query ended and its connection went back to the pool.
    const int got = PQntuples(page.get());
    more = got == want;
    size_t bytes = 0;
    bool stopped = false;
    for (int i = 0; i < got; ++i) {
      std::string_view doc = value_view(page.get(), i, 0);
      bytes += doc.size();
      if (!on_row(doc, value_int(page.get(), i, 1))) {
        stopped = true;
        break;
      }
    }
    if (got == 0 || stopped) break;
    after = value_int(page.get(), got - 1, 1);
    if (remaining > 0) {
      remaining -= got;
      if (remaining <= 0) more = false;
    }
    // The next page aims at kListPageBytes of documents.
    const long long average = std::max<long long>(1, static_cast<long long>(bytes) / got);
    page_rows =
        std::clamp<long long>(static_cast<long long>(kListPageBytes) / average, 1, kListPageRows);
    if (on_page_end && !on_page_end()) break;
  }
  return status;
}

Status PgStore::list_all_tests(long long after_seq, long long limit,
                               const std::function<bool(const StoredTest&)>& on_row) {
  const std::string after_text = std::to_string(after_seq);
  const std::string limit_text = std::to_string(limit);
  PgResult page = wrap(nullptr);
  Status s = with_reader("list all tests", [&](Connection& c) {
    page = c.run("list_all",
                 "SELECT seq, test_id, patient_id, clinic_id, test_type, result, created_at, doc"
                 " FROM tests WHERE seq + 0 > $1 ORDER BY seq + 0 LIMIT $2",
                 {after_text.c_str(), limit_text.c_str()});
    return result_ok(page) ? Status::Ok() : c.error(page.get(), "list all tests");
  });
  if (!s.ok()) return s;
  StoredTest t;
  for (int i = 0; i < PQntuples(page.get()); ++i) {
    t.seq = value_int(page.get(), i, 0);
    t.test_id.assign(value_view(page.get(), i, 1));
    t.patient_id.assign(value_view(page.get(), i, 2));
    t.clinic_id.assign(value_view(page.get(), i, 3));
    t.test_type.assign(value_view(page.get(), i, 4));
    t.result.assign(value_view(page.get(), i, 5));
    t.created_at.assign(value_view(page.get(), i, 6));
    t.doc.assign(value_view(page.get(), i, 7));
    if (!on_row(t)) break;
  }
  return Status::Ok();
}

Status PgStore::max_seqs(long long& tests_seq, long long& audit_seq) {
  return with_reader("max seq", [&](Connection& c) {
    PgResult r = c.exec(
        "SELECT coalesce((SELECT max(seq + 0) FROM tests), 0), coalesce((SELECT max(seq) FROM "
        "audit), "
        "0)");
    if (!result_ok(r)) return c.error(r.get(), "max seq");
    tests_seq = value_int(r.get(), 0, 0);
    audit_seq = value_int(r.get(), 0, 1);
    return Status::Ok();
  });
}

Status PgStore::count_service_sessions(long long& n) {
  return with_reader("count service sessions", [&](Connection& c) {
    PgResult r = c.exec(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        " AND application_name = 'testdata-api'");
    if (!result_ok(r)) return c.error(r.get(), "count service sessions");
    n = value_int(r.get(), 0, 0);
    return Status::Ok();
  });
}

Status PgStore::get_test(std::string_view test_id, std::string& json, std::string& clinic_id) {
  // The database holds UTF-8 only and refuses to compare with anything else; stored ids are
  // valid UTF-8 (validate.h), so no other id can name a test. Nor can one holding a NUL, which
  // libpq would read as the id's end (another id's name).
  if (!is_valid_utf8(test_id) || test_id.find('\0') != std::string_view::npos) {
    return Status::NotFound("no such test");
  }
  const std::string id(test_id);
  return with_reader("get test", [&](Connection& c) {
    PgResult r = c.run("get", "SELECT doc, clinic_id FROM tests WHERE test_id = $1", {id.c_str()});
    if (!result_ok(r)) return c.error(r.get(), "get test");
    if (PQntuples(r.get()) == 0) return Status::NotFound("no such test");
    json.assign(value_view(r.get(), 0, 0));
    clinic_id.assign(value_view(r.get(), 0, 1));
    return Status::Ok();
  });
}

Status PgStore::check_health() {
  Status failure = engine_->recent_failure();
  if (!failure.ok()) return failure;
  const bool refresh_size = [&] {
    std::lock_guard<std::mutex> lock(size_mu_);
    return std::chrono::steady_clock::now() - size_read_at_ >= kSizeRefresh;
  }();
  // On a connection of its own, not a reader: with every reader held by slow listings, the
  // check waited for one and answered 503 (busy) while the server was fine. Checks take turns
  // on it (each one query, bounded by statement_timeout).
  // (A polled try_lock, not std::timed_mutex: ThreadSanitizer in GCC 12 does not see
  // pthread_mutex_clocklock and reports its unlock as one of an unlocked mutex.)
  std::unique_lock<std::mutex> lock(health_mu_, std::defer_lock);
  const auto give_up =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.lock_timeout_ms);
  while (!lock.try_lock() && std::chrono::steady_clock::now() < give_up) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  if (!lock.owns_lock()) {
    return Status::Busy("the previous health check is still waiting for PostgreSQL");
  }
  Status status;
  // A connection lost while idle (the server restarted) is replaced once, as a read's is.
  for (int attempt = 0; attempt < 2; ++attempt) {
    if (!health_conn_ || !health_conn_->healthy()) {
      health_conn_.reset();
      status = connect(health_conn_);
      if (!status.ok()) {
        health_conn_.reset();
        break;
      }
    }
    Connection& c = *health_conn_;
    PgResult r =
        refresh_size ? c.exec("SELECT pg_database_size(current_database())") : c.exec("SELECT 0");
    if (!result_ok(r)) {
      status = c.error(r.get(), "health check");
      if (c.healthy()) break;
      health_conn_.reset();
      continue;
    }
    if (refresh_size) {
      std::lock_guard<std::mutex> size_lock(size_mu_);
      database_bytes_ = value_int(r.get(), 0, 0);
      size_read_at_ = std::chrono::steady_clock::now();
    }
    status = Status::Ok();
    break;
  }
  note_failure(status);
  return status;
}

StoreStats PgStore::stats() const {
  StoreStats s;
  engine_->add_stats(s);
  std::lock_guard<std::mutex> lock(size_mu_);
  s.database_bytes = database_bytes_;
  return s;
}

// -- keys and the audit trail ------------------------------------------------------------------

Status PgStore::find_key(std::string_view key_id, ApiKey& out) {
  if (!is_valid_utf8(key_id)) return Status::NotFound("no such key");
  const std::string id(key_id);
  const std::string sql = std::string(kKeyColumns) + " WHERE key_id = $1";
  return with_reader("find key", [&](Connection& c) {
    PgResult r = c.run("key_get", sql.c_str(), {id.c_str()});
    if (!result_ok(r)) return c.error(r.get(), "find key");
    if (PQntuples(r.get()) == 0) return Status::NotFound("no such key");
    read_key(r.get(), 0, out);
    return Status::Ok();
  });
}

Status PgStore::list_keys(std::vector<ApiKey>& out) {
  out.clear();
  const std::string sql = std::string(kKeyColumns) + " ORDER BY created_at, key_id";
  return with_reader("list keys", [&](Connection& c) {
    out.clear();
    PgResult r = c.exec(sql.c_str());
    if (!result_ok(r)) return c.error(r.get(), "list keys");
    out.resize(static_cast<size_t>(PQntuples(r.get())));
    for (int i = 0; i < PQntuples(r.get()); ++i) read_key(r.get(), i, out[static_cast<size_t>(i)]);
    return Status::Ok();
  });
}

Status PgStore::create_key(const ApiKey& key) {
  const std::string scopes = scopes_json(key.scopes);
  return with_reader(
      "create key",
      [&](Connection& c) {
        PgResult r = c.run("key_create",
                           "INSERT INTO api_keys (key_id, name, scopes, secret_hash, created_at)"
                           " VALUES ($1, $2, $3, $4, $5)",
                           {key.key_id.c_str(), key.name.c_str(), scopes.c_str(),
                            key.secret_hash.c_str(), key.created_at.c_str()});
        return result_ok(r) ? Status::Ok() : c.error(r.get(), "create key");
      },
      /*retry_when_lost=*/false);
}

Status PgStore::revoke_key(std::string_view key_id, const std::string& when) {
  if (!is_valid_utf8(key_id)) return Status::NotFound("no such key");
  const std::string id(key_id);
  return with_reader(
      "revoke key",
      [&](Connection& c) {
        PgResult r = c.run("key_revoke",
                           "UPDATE api_keys SET revoked_at = coalesce(revoked_at, $2)"
                           " WHERE key_id = $1",
                           {id.c_str(), when.c_str()});
        if (!result_ok(r)) return c.error(r.get(), "revoke key");
        if (std::strcmp(PQcmdTuples(r.get()), "0") == 0) return Status::NotFound("no such key");
        return Status::Ok();
      },
      /*retry_when_lost=*/false);
}

Status PgStore::list_audit(const AuditQuery& q,
                           const std::function<bool(const AuditEntry&)>& on_entry) {
  long long after = q.after_seq;
  long long remaining = q.limit;
  bool more = remaining != 0;
  Status status;
  AuditEntry e;
  while (more) {
    const long long want = remaining < 0 ? kListPageRows : std::min(remaining, kListPageRows);
    const std::string after_text = std::to_string(after);
    const std::string want_text = std::to_string(want);
    const char* params[] = {after_text.c_str(), q.since ? q.since->c_str() : nullptr,
                            q.until ? q.until->c_str() : nullptr,
                            q.clinic_id ? q.clinic_id->c_str() : nullptr, want_text.c_str()};
    PgResult page = wrap(nullptr);
    status = with_reader("list audit", [&](Connection& c) {
      page = c.run("audit_list", kAuditListSql, params, 5);
      return result_ok(page) ? Status::Ok() : c.error(page.get(), "list audit");
    });
    if (!status.ok()) break;
    const int got = PQntuples(page.get());
    more = got == want;
    for (int i = 0; i < got; ++i) {
      read_audit(page.get(), i, e);
      if (!on_entry(e)) {
        more = false;
        break;
      }
    }
    if (got == 0) break;
    after = value_int(page.get(), got - 1, 0);
    if (remaining > 0) {
      remaining -= got;
      if (remaining <= 0) more = false;
    }
  }
  return status;
}

Status PgStore::count_audit(long long up_to, long long& rows) {
  const std::string up_to_text = std::to_string(up_to);
  return with_reader("count audit", [&](Connection& c) {
    PgResult r =
        c.run("audit_count", "SELECT count(*) FROM audit WHERE seq <= $1", {up_to_text.c_str()});
    if (!result_ok(r)) return c.error(r.get(), "count audit");
    rows = value_int(r.get(), 0, 0);
    return Status::Ok();
  });
}

// -- writes ----------------------------------------------------------------------------------

// -- migrate's imports -------------------------------------------------------------------------

// Runs fn inside BEGIN … COMMIT under the write lock on a pooled connection.
static Status in_write_transaction(PgStore::Connection& c, const char* what,
                                   const std::function<Status()>& fn) {
  PgResult r = c.exec("BEGIN");
  if (!result_ok(r)) return c.error(r.get(), what);
  r = c.run("write_lock", "SELECT pg_advisory_xact_lock($1)", {kWriteLockKey});
  Status s = result_ok(r) ? fn() : c.error(r.get(), what);
  if (s.ok()) {
    r = c.exec("COMMIT");
    if (!result_ok(r)) s = c.error(r.get(), what);
  }
  if (!s.ok() && c.healthy()) c.exec("ROLLBACK");
  return s;
}

Status PgStore::import_tests(const std::vector<StoredTest>& rows) {
  return with_reader(
      "import tests",
      [&](Connection& c) {
        return in_write_transaction(c, "import tests", [&] {
          for (const StoredTest& t : rows) {
            const std::string seq = std::to_string(t.seq);
            PgResult r =
                c.run("import_test",
                      "INSERT INTO tests (seq, test_id, patient_id, clinic_id, test_type, result,"
                      " created_at, doc) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                      " ON CONFLICT (test_id) DO NOTHING",
                      {seq.c_str(), t.test_id.c_str(), t.patient_id.c_str(), t.clinic_id.c_str(),
                       t.test_type.c_str(), t.result.c_str(), t.created_at.c_str(), t.doc.c_str()});
            if (!result_ok(r)) return c.error(r.get(), "import a test");
          }
          PgResult r = c.exec(
              "SELECT setval(pg_get_serial_sequence('tests', 'seq'),"
              " greatest((SELECT max(seq + 0) FROM tests), 1))");
          return result_ok(r) ? Status::Ok() : c.error(r.get(), "move the seq identity");
        });
      },
      /*retry_when_lost=*/false);
}

Status PgStore::import_audit(const std::vector<AuditEntry>& entries) {
  return with_reader(
      "import audit",
      [&](Connection& c) {
        return in_write_transaction(c, "import audit", [&] {
          for (const AuditEntry& e : entries) {
            const std::string seq = std::to_string(e.seq);
            const std::string outcome = std::to_string(e.outcome);
            PgResult r =
                c.run("import_audit",
                      "INSERT INTO audit (seq, ts, request_id, key_id, action, clinic_id,"
                      " detail, outcome, prev_hash, hash) VALUES"
                      " ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) ON CONFLICT (seq) DO NOTHING",
                      {seq.c_str(), e.ts.c_str(), e.request_id.c_str(), e.key_id.c_str(),
                       e.action.c_str(), e.clinic_id.c_str(), e.detail.c_str(), outcome.c_str(),
                       e.prev_hash.c_str(), e.hash.c_str()});
            if (!result_ok(r)) return c.error(r.get(), "import an audit entry");
          }
          return Status::Ok();
        });
      },
      /*retry_when_lost=*/false);
}

Status PgStore::import_keys(const std::vector<ApiKey>& keys) {
  return with_reader(
      "import keys",
      [&](Connection& c) {
        return in_write_transaction(c, "import keys", [&] {
          for (const ApiKey& k : keys) {
            const std::string scopes = scopes_json(k.scopes);
            const char* revoked = k.revoked_at.empty() ? nullptr : k.revoked_at.c_str();
            PgResult r =
                c.run("import_key",
                      "INSERT INTO api_keys (key_id, name, scopes, secret_hash, created_at,"
                      " revoked_at) VALUES ($1, $2, $3, $4, $5, $6)"
                      " ON CONFLICT (key_id) DO UPDATE SET revoked_at ="
                      " coalesce(api_keys.revoked_at, EXCLUDED.revoked_at)",
                      {k.key_id.c_str(), k.name.c_str(), scopes.c_str(), k.secret_hash.c_str(),
                       k.created_at.c_str(), revoked});
            if (!result_ok(r)) return c.error(r.get(), "import a key");
          }
          return Status::Ok();
        });
      },
      /*retry_when_lost=*/false);
}

}  // namespace tdapi
