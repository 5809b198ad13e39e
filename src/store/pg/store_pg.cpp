// store_pg.cpp: the PostgreSQL store's connections (the writer, pooled readers), its side of the
// group-commit engine, the reads of tests and health. The schema is schema.cpp, keys keys.cpp,
// the audit trail's reads audit.cpp, migrate's imports import.cpp. Only store/pg/ includes
// libpq-fe.h.
#include "store/pg/store_pg.h"

#include <libpq-fe.h>

#include <algorithm>
#include <cassert>
#include <cctype>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <unordered_set>
#include <utility>

#include "base/clock.h"
#include "base/crypto.h"
#include "base/json.h"
#include "base/log.h"
#include "base/utf8.h"
#include "store/keys.h"
#include "store/pg/internal.h"
#include "store/read_after.h"

namespace tdapi {

std::string redact_url(const std::string& url) {
  // libpq's own parse errors quote the raw text; what it cannot parse is not shown at all.
  char* parse_error = nullptr;
  PQconninfoOption* parsed = PQconninfoParse(url.c_str(), &parse_error);
  if (parsed == nullptr) {
    PQfreemem(parse_error);
    return "(a DATABASE_URL that libpq cannot parse)";
  }
  PQconninfoFree(parsed);
  return redact_url_text(url);
}

namespace {

// A create: the tests row and its version 1 (test_versions) in one statement; no row back means
// the id exists (nothing written). change_seq is taken here, under the write lock (schema.cpp).
const char kInsertSql[] =
    "WITH t AS (INSERT INTO tests (test_id, patient_id, clinic_id, test_type, result, created_at,"
    " doc, status, version, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 1, $6)"
    " ON CONFLICT (test_id) DO NOTHING RETURNING test_id)"
    " INSERT INTO test_versions (test_id, version, clinic_id, status, changed_at, changed_by,"
    " reason, doc) SELECT test_id, 1, $3, $8, $6, $9::text, NULL, $7 FROM t RETURNING change_seq";
const char kAuditInsertSql[] =
    "INSERT INTO audit (seq, ts, request_id, key_id, action, clinic_id, detail, outcome,"
    " prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)";

// The columns of a TestVersion as version_from reads them (the five fields and created_at from
// the version's document: they are not columns of test_versions).
// The feed reads only the first nine (TDAPI_CHANGE_COLUMNS, no parse of the document): its answer
// is the document itself.
#define TDAPI_CHANGE_COLUMNS                                                               \
  "v.change_seq, v.test_id, v.version, v.clinic_id, v.status, v.changed_at, v.changed_by," \
  " v.reason, v.doc"
#define TDAPI_DOC_FIELDS \
  ", d.j->>'patient_id', d.j->>'test_type', d.j->>'result', d.j->>'created_at'"
#define TDAPI_VERSION_COLUMNS TDAPI_CHANGE_COLUMNS TDAPI_DOC_FIELDS
#define TDAPI_VERSION_DOC " CROSS JOIN LATERAL (SELECT v.doc::jsonb AS j) d"

// One TestVersion from the row's columns from `col` on (TDAPI_VERSION_COLUMNS).
void version_from(const PGresult* r, int row, int col, TestVersion& v) {
  v.change_seq = value_int(r, row, col);
  v.record.test_id.assign(value_view(r, row, col + 1));
  v.version = value_int(r, row, col + 2);
  v.record.clinic_id.assign(value_view(r, row, col + 3));
  v.record.status = parse_test_status(value_view(r, row, col + 4)).value_or(TestStatus::kFinal);
  v.changed_at.assign(value_view(r, row, col + 5));
  v.changed_by.assign(value_view(r, row, col + 6));
  if (PQgetisnull(r, row, col + 7)) {
    v.reason.reset();
  } else {
    v.reason = std::string(value_view(r, row, col + 7));
  }
  v.doc.assign(value_view(r, row, col + 8));
  if (PQnfields(r) < col + 13) {  // TDAPI_CHANGE_COLUMNS: the fields stay in doc
    v.record.patient_id.clear();
    v.record.test_type.clear();
    v.record.result.clear();
    v.created_at.clear();
    return;
  }
  v.record.patient_id.assign(value_view(r, row, col + 9));
  v.record.test_type.assign(value_view(r, row, col + 10));
  v.record.result.assign(value_view(r, row, col + 11));
  v.created_at.assign(value_view(r, row, col + 12));
}

// Listing statements, one per combination of filters (bit i of the mask: kListFilters[i] is
// given); parameters numbered in order: $1 the clinic, the given filters, the seq to start
// after, the row limit. Filters 0-2 are equalities, 3-6 the time ranges.
constexpr const char* kListFilters[] = {"patient_id = $",  "test_type = $",  "status = $",
                                        "created_at >= $", "created_at < $", "updated_at >= $",
                                        "updated_at < $"};
constexpr int kListFilterCount = sizeof kListFilters / sizeof kListFilters[0];
constexpr unsigned kRangeFilters = 0x78;  // bits 3-6

// " AND f1 AND f2 …" for the filters of mask & which.
std::string list_conditions(unsigned mask, unsigned which) {
  std::string sql;
  int n = 2;
  for (int i = 0; i < kListFilterCount; ++i) {
    if (!(mask & (1u << i))) continue;
    if (which & (1u << i)) sql += std::string(" AND ") + kListFilters[i] + std::to_string(n);
    ++n;
  }
  return sql;
}
int list_param_count(unsigned mask) {
  int n = 1;
  for (int i = 0; i < kListFilterCount; ++i) n += (mask >> i) & 1u;
  return n + 2;
}

// Without a time range: one ordered walk of the filter's index from the seq after.
// With one, the first statement of a page walks the clinic's (or the equality filter's) index
// in seq order from the seq after, at most $limit rows, and returns each row's seq with its
// document when it is in the range (else NULL): where the range is dense in that walk, the page
// is served from it. Where it is not (fewer matches than wanted in the rows walked), the second
// statement (list_range_sql) finds the range's next rows through tests_by_created or
// tests_by_updated without walking the clinic. The planner cannot be left to choose between
// the two: the rows of a time range sit together in seq order (created_at grows with seq), which
// its statistics do not know; it took the ordered walk of tests_by_clinic for a narrow range,
// through every row of the clinic before it (a month of a year-long clinic: 33,000 rows read
// for 16).
std::string list_sql(unsigned mask) {
  const int n = list_param_count(mask);
  if (!(mask & kRangeFilters)) {
    return "SELECT doc, seq FROM tests WHERE clinic_id = $1" + list_conditions(mask, ~0u) +
           " AND seq > $" + std::to_string(n - 1) + " ORDER BY seq LIMIT $" + std::to_string(n);
  }
  std::string range = list_conditions(mask, kRangeFilters).substr(5);  // without " AND "
  return "SELECT CASE WHEN " + range + " THEN doc END, seq FROM (SELECT doc, seq, created_at," +
         " updated_at FROM tests WHERE clinic_id = $1" + list_conditions(mask, ~kRangeFilters) +
         " AND seq > $" + std::to_string(n - 1) + " ORDER BY seq LIMIT $" + std::to_string(n) +
         ") walked ORDER BY seq";
}
// The range's next rows after a seq, found through the range's index: the matching seqs first
// (ordered by an expression no index has, so that no ordered walk of the clinic is taken), then
// their documents. An updated range without a created one has two parts (migration 4): the
// tests a correction moved on, through tests_by_updated (which holds only those), and the
// others, whose updated_at is their created_at, through tests_by_created with the same bounds.
std::string list_range_sql(unsigned mask) {
  constexpr unsigned kCreated = 0x18, kUpdated = 0x60;  // bits 3-4, 5-6
  const int n = list_param_count(mask);
  std::string conditions;
  if ((mask & kUpdated) && !(mask & kCreated)) {
    const std::string as_updated = list_conditions(mask, kUpdated).substr(5);  // no " AND "
    std::string as_created = as_updated;
    for (size_t at = 0; (at = as_created.find("updated_at", at)) != std::string::npos;) {
      as_created.replace(at, 10, "created_at");
    }
    conditions = list_conditions(mask, ~kUpdated) + " AND ((updated_at = created_at AND " +
                 as_created + ") OR (updated_at <> created_at AND " + as_updated + "))";
  } else {
    conditions = list_conditions(mask, ~0u);
  }
  return "SELECT doc, seq FROM tests WHERE (seq + 0) IN (SELECT seq + 0 FROM tests"
         " WHERE clinic_id = $1" +
         conditions + " AND seq > $" + std::to_string(n - 1) + " ORDER BY seq * 1 LIMIT $" +
         std::to_string(n) + ") ORDER BY seq + 0";
}

// A listing reads at most kListPageRows rows (internal.h), aiming at this many bytes, per query,
// and delivers them after the query ended: a slow client never holds a snapshot or a connection.
constexpr size_t kListPageBytes = 256 * 1024;
constexpr long long kFirstPageRows = 16;
// A ranged page's walk (list_sql) is the page while at least one row in this many is in range.
constexpr long long kDenseWalk = 16;

constexpr auto kSizeRefresh = std::chrono::seconds(10);
// How long connections leave out a host the fence refused (then it is tried, and refused, again).
constexpr auto kFencedHostSkip = std::chrono::seconds(60);

// The health check's columns of the server's history (system identifier; WAL file name, or
// NULL on a standby).
#define kHealthFence                                                     \
  "(SELECT system_identifier FROM pg_control_system())::text, CASE WHEN" \
  " NOT pg_is_in_recovery() THEN pg_walfile_name(pg_current_wal_lsn()) END"

// The server's history from the kHealthFence columns at `col` and col + 1 of a one-row result:
// not known() on a standby (no WAL file name) or for an answer that is not one.
ServerTimeline history_at(const PGresult* r, int col) {
  ServerTimeline t;
  if (PQntuples(r) != 1 || PQgetisnull(r, 0, col + 1) ||
      !timeline_of_walfile(value_view(r, 0, col + 1), t.timeline)) {
    return ServerTimeline{};
  }
  t.system_identifier.assign(value_view(r, 0, col));
  return t;
}

}  // namespace

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
  void set_deadline(std::chrono::steady_clock::time_point deadline) override {
    deadline_ = deadline;
  }

  Status begin(bool durable) override {
    std::unique_ptr<Connection>& writer = store_.writer_;
    Status status;
    xid_.clear();
    for (int attempt = 0; attempt < 2; ++attempt) {
      status = Status::Ok();
      if (!writer || !writer->healthy()) {
        writer.reset();
        status = store_.connect(writer);
        if (!status.ok()) return status;
      }
      writer->deadline = deadline_;  // the group's: every round trip until COMMIT's answer
      durable_ = durable;
      PgResult r = writer->exec(durable ? "BEGIN" : "BEGIN; SET LOCAL synchronous_commit = off");
      if (result_ok(r)) break;
      status = writer->error(r.get(), "BEGIN");
      if (writer->healthy()) break;
    }
    if (!status.ok()) return status;
    // The transaction's id, taken now: a COMMIT whose connection drops is settled by asking the
    // server what became of it (settle). The server's history (system, timeline), for the
    // fence: asked in every transaction, as a pooler or a multi-host URL may have moved it to
    // another server since the last one.
    const bool fencing = store_.fencing_.load();
    txn_server_ = ServerTimeline{};
    PgResult r =
        fencing
            ? writer->run("write_lock_fenced",
                          "SELECT pg_advisory_xact_lock($1), pg_current_xact_id(), " kHealthFence,
                          {kWriteLockKey})
            : writer->run("write_lock", "SELECT pg_advisory_xact_lock($1), pg_current_xact_id()",
                          {kWriteLockKey});
    if (!result_ok(r)) return writer->error(r.get(), "take the write lock");
    xid_.assign(value_view(r.get(), 0, 1));
    if (!fencing) return Status::Ok();
    if (PQgetisnull(r.get(), 0, 3)) {
      return Status::ReadOnly("take the write lock: the server is a standby (in recovery)");
    }
    const ServerTimeline server = history_at(r.get(), 2);
    if (!server.known()) {
      return Status::Internal("take the write lock: no WAL timeline in the server's answer");
    }
    txn_server_ = server;
    // In every transaction, also on the history this node wrote to last: another node of this
    // DATA_DIR may have moved the fence past it since (it wrote to a promoted standby).
    Status fence = store_.check_fence(server, /*advance=*/true);
    if (!fence.ok()) {
      // The next transaction connects again: a multi-host URL may lead to another server.
      if (fence.code() == StatusCode::kFenced) store_.skip_fenced_host(*writer);
      writer->broken = true;
      return fence;
    }
    if (server == confirmed_) return Status::Ok();
    Status marked = mark_timeline(*writer, server);
    if (marked.ok()) pending_ = server;
    return marked;
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
  // each other); no row back means the id exists. The version-1 row comes with it (kInsertSql).
  Status insert_record(const TestRecord& rec, const std::string& created_at,
                       const std::string& changed_by, bool& duplicate) override {
    Connection& c = *store_.writer_;
    const std::string doc = test_document(rec, created_at, 1, created_at);
    PgResult r = c.run("insert", kInsertSql,
                       {rec.test_id.c_str(), rec.patient_id.c_str(), rec.clinic_id.c_str(),
                        rec.test_type.c_str(), rec.result.c_str(), created_at.c_str(), doc.c_str(),
                        test_status_name(rec.status), changed_by.c_str()});
    if (!result_ok(r)) return c.error(r.get(), "INSERT");
    duplicate = PQntuples(r.get()) == 0;
    return Status::Ok();
  }
  // The stored current version of test_id (found false: none). No row lock: every writer holds
  // the write lock (begin) until its COMMIT, so nothing changes the row before this transaction
  // ends.
  Status read_current(const std::string& test_id, bool& found, TestVersion& out) override {
    Connection& c = *store_.writer_;
    PgResult r = c.run("read_current",
                       "SELECT patient_id, clinic_id, test_type, result, status, version,"
                       " created_at, updated_at, doc FROM tests WHERE test_id = $1",
                       {test_id.c_str()});
    if (!result_ok(r)) return c.error(r.get(), "read the current version");
    found = PQntuples(r.get()) == 1;
    if (!found) return Status::Ok();
    const PGresult* p = r.get();
    out.record.test_id = test_id;
    out.record.patient_id.assign(value_view(p, 0, 0));
    out.record.clinic_id.assign(value_view(p, 0, 1));
    out.record.test_type.assign(value_view(p, 0, 2));
    out.record.result.assign(value_view(p, 0, 3));
    out.record.status = parse_test_status(value_view(p, 0, 4)).value_or(TestStatus::kFinal);
    out.version = value_int(p, 0, 5);
    out.created_at.assign(value_view(p, 0, 6));
    out.changed_at.assign(value_view(p, 0, 7));
    out.doc.assign(value_view(p, 0, 8));
    out.change_seq = 0;
    return Status::Ok();
  }
  // Makes `next` the current version: the tests row updated, its test_versions row added
  // (change_seq set; doc made from the rest when empty).
  Status write_version(TestVersion& next) override {
    Connection& c = *store_.writer_;
    if (next.doc.empty()) {
      next.doc = test_document(next.record, next.created_at, next.version, next.changed_at);
    }
    const std::string version = std::to_string(next.version);
    const char* status = test_status_name(next.record.status);
    const char* reason = next.reason ? next.reason->c_str() : nullptr;
    PgResult r = c.run(
        "write_version",
        "WITH t AS (UPDATE tests SET test_type = $2, result = $3, status = $4, version = $5,"
        " updated_at = $6, doc = $7 WHERE test_id = $1 RETURNING clinic_id)"
        " INSERT INTO test_versions (test_id, version, clinic_id, status, changed_at,"
        " changed_by, reason, doc) SELECT $1, $5, clinic_id, $4, $6, $8::text, $9::text, $7 FROM t"
        " RETURNING change_seq",
        {next.record.test_id.c_str(), next.record.test_type.c_str(), next.record.result.c_str(),
         status, version.c_str(), next.changed_at.c_str(), next.doc.c_str(),
         next.changed_by.c_str(), reason});
    if (!result_ok(r)) return c.error(r.get(), "write a version");
    if (PQntuples(r.get()) != 1) return Status::Internal("write a version: the test is gone");
    next.change_seq = value_int(r.get(), 0, 0);
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
  // 201 only for a COMMIT the server confirmed by the deadline, with no warning that the wait
  // for synchronous replication was cancelled (the transaction then committed locally, but its
  // durability goal was not met): otherwise kOutcomeUnknown, unless the connection dropped, and
  // the server, asked on a new one, says what happened (settle).
  Status commit() override {
    Status s = commit_transaction();
    if (s.ok() && pending_.known()) confirmed_ = pending_;
    pending_ = ServerTimeline{};
    return s;
  }
  Status commit_transaction() {
    Connection& c = *store_.writer_;
    const PgOptions& o = store_.options_;
    if (o.test_before_commit) o.test_before_commit(PQbackendPID(c.conn));
    PgResult r = wrap(nullptr);
    if (o.test_commit_sent) {
      c.start_round_trip();
      const bool sent = PQsendQuery(c.conn, "COMMIT") == 1;
      if (sent) o.test_commit_sent(PQsocket(c.conn), xid_);
      r = c.await(sent);
    } else {
      r = c.exec("COMMIT");
    }
    c.deadline = {};
    if (!c.warning.empty() && c.warning.find("synchronous replication") != std::string::npos) {
      c.broken = true;
      return Status::OutcomeUnknown("COMMIT of transaction " + xid_ +
                                    " not confirmed: " + c.warning);
    }
    if (c.timed_out) {
      c.broken = true;
      return Status::OutcomeUnknown("COMMIT of transaction " + xid_ + " not confirmed within " +
                                    std::to_string(c.round_trip_timeout.count()) +
                                    " ms (cancelled)");
    }
    if (!result_ok(r)) {
      Status failed = c.error(r.get(), "COMMIT");
      if (!c.healthy() && !xid_.empty()) {
        Status settled = settle(failed);
        // Committed: its position, read on the new connection (past the commit record).
        if (settled.ok() && durable_) store_.note_commit_position(*store_.writer_);
        return settled;
      }
      return failed;
    }
    if (std::strcmp(PQcmdStatus(r.get()), "COMMIT") != 0) {
      return Status::Internal("COMMIT: the transaction was rolled back");
    }
    // A write's answer carries its position; a commit that is not durable holds read audit
    // entries alone (no answer carries them): it costs no second round trip.
    if (durable_) store_.note_commit_position(c);
    return Status::Ok();
  }
  void abort() override {
    pending_ = ServerTimeline{};
    std::unique_ptr<Connection>& writer = store_.writer_;
    if (!writer) return;
    writer->deadline = {};
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

  // The COMMIT's connection dropped before its answer: the transaction may or may not have
  // committed. Asked on a new connection: committed (and no synchronous standby to wait for)
  // is Ok, aborted is the COMMIT's own failure, anything else kOutcomeUnknown.
  Status settle(const Status& failed) {
    std::unique_ptr<Connection>& writer = store_.writer_;
    writer.reset();
    Status s = store_.connect(writer);
    const std::string what = "COMMIT of transaction " + xid_ + ": " + failed.message();
    if (!s.ok()) {
      writer.reset();
      return Status::OutcomeUnknown(
          what + "; the server could not be asked what became of it: " + s.message());
    }
    // Only the server history the transaction ran on can tell: after a failover, the promoted
    // server may have given the same transaction id to another transaction.
    const bool fencing = txn_server_.known();
    PgResult r =
        fencing ? writer->run("xact_status_fenced",
                              "SELECT pg_xact_status($1::xid8),"
                              " current_setting('synchronous_standby_names') = '', " kHealthFence,
                              {xid_.c_str()})
                : writer->run("xact_status",
                              "SELECT pg_xact_status($1::xid8),"
                              " current_setting('synchronous_standby_names') = ''",
                              {xid_.c_str()});
    if (!result_ok(r) || PQntuples(r.get()) != 1 || PQgetisnull(r.get(), 0, 0)) {
      Status asked = writer->error(r.get(), "pg_xact_status");
      return Status::OutcomeUnknown(what + "; asking what became of it failed: " + asked.message());
    }
    const ServerTimeline now = fencing ? history_at(r.get(), 2) : ServerTimeline{};
    if (fencing && now != txn_server_) {
      return Status::OutcomeUnknown(
          what + "; the server reached now is " + (now.known() ? now.text() : "a standby") +
          ", not the one the transaction ran on (" + txn_server_.text() + "): it cannot say");
    }
    const std::string status(value_view(r.get(), 0, 0));
    const bool no_standby = value_view(r.get(), 0, 1) == "t";
    LogFields f;
    f.reason = status;
    f.detail = "the connection dropped during COMMIT of transaction " + xid_ +
               "; the server says it " +
               (status == "committed" ? "committed"
                : status == "aborted" ? "aborted"
                                      : "is " + status);
    log_event(LogLevel::kWarn, "commit_settled", f);
    if (status == "committed" && no_standby) return Status::Ok();
    if (status == "aborted") return failed;
    return Status::OutcomeUnknown(what + "; the server says " + status +
                                  (status == "committed" ? ", but not whether a synchronous "
                                                           "standby has it"
                                                         : ""));
  }

  // Under the write lock, in the write transaction: records the server's history in meta
  // ('timeline'), and when it differs from the one recorded there (a standby was promoted, or
  // the database was brought to another cluster), marks the failover boundary first: the tests'
  // seq and the feed's change_seq move kAuditFailoverGap past anything this server has used (the
  // lost primary may have handed out numbers after the last it replicated: none is handed out
  // twice, so a cursor or feed token taken there skips nothing here), and a `failover` entry
  // continues the audit chain from its last surviving entry, kAuditFailoverGap further on.
  Status mark_timeline(Connection& c, const ServerTimeline& server) {
    PgResult r = c.run("timeline_read",
                       "SELECT convert_from(value, 'UTF8') FROM meta WHERE name = 'timeline'", {});
    if (!result_ok(r)) return c.error(r.get(), "read the recorded timeline");
    ServerTimeline recorded;
    const bool known =
        PQntuples(r.get()) == 1 && parse_timeline_key(value_view(r.get(), 0, 0), recorded);
    if (known && recorded == server) return Status::Ok();
    if (known) {
      const std::string gap = std::to_string(kAuditFailoverGap);
      r = c.run(
          "failover_seqs",
          "SELECT setval(pg_get_serial_sequence('tests', 'seq'), greatest("
          "  coalesce(pg_sequence_last_value(pg_get_serial_sequence('tests', 'seq')::regclass), 0),"
          "  coalesce((SELECT max(seq + 0) FROM tests), 0)) + $1::bigint) + 1,"
          " setval(pg_get_serial_sequence('test_versions', 'change_seq'), greatest("
          "  coalesce(pg_sequence_last_value(pg_get_serial_sequence('test_versions',"
          "  'change_seq')::regclass), 0),"
          "  coalesce((SELECT max(change_seq) FROM test_versions), 0)) + $1::bigint) + 1",
          {gap.c_str()});
      if (!result_ok(r)) return c.error(r.get(), "move seq past the failover");
      const long long tests_from = value_int(r.get(), 0, 0);
      const long long changes_from = value_int(r.get(), 0, 1);
      long long head_seq = 0;
      std::string head_hash;
      Status s = audit_head(head_seq, head_hash);
      if (!s.ok()) return s;
      AuditEntry e;
      e.seq = head_seq + kAuditFailoverGap;
      e.ts = utc_timestamp_ms();
      e.key_id = kAuditFailoverKey;
      e.action = kAuditFailoverAction;
      std::string detail;
      JsonWriter w(detail, JsonForm::kAuditHash);
      w.begin_object();
      w.field("previous_seq", head_seq);
      w.key("from");
      w.begin_object();
      w.field("system_identifier", recorded.system_identifier);
      w.field("timeline", recorded.timeline);
      w.end_object();
      w.key("to");
      w.begin_object();
      w.field("system_identifier", server.system_identifier);
      w.field("timeline", server.timeline);
      w.end_object();
      w.field("tests_seq_from", tests_from);
      w.field("change_seq_from", changes_from);
      w.end_object();
      e.detail = detail;
      e.prev_hash = head_hash;
      e.hash = audit_hash(e);
      s = insert_audit(e);
      if (!s.ok()) return s;
      LogFields f;
      f.reason = "timeline";
      f.detail = "PostgreSQL's history changed from " + recorded.text() + " to " + server.text() +
                 ": audit entry " + std::to_string(e.seq) + " marks the failover; tests' seq " +
                 "continues at " + std::to_string(tests_from) + ", the feed's at " +
                 std::to_string(changes_from) +
                 " (writes the old primary acknowledged after its last replicated one are not "
                 "here)";
      log_event(LogLevel::kWarn, "failover_boundary", f);
    }
    const std::string key = server.key();
    r = c.run("timeline_write",
              "INSERT INTO meta (name, value) VALUES ('timeline', convert_to($1, 'UTF8'))"
              " ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
              {key.c_str()});
    return result_ok(r) ? Status::Ok() : c.error(r.get(), "record the timeline");
  }

  PgStore& store_;
  ServerTimeline confirmed_;   // the history whose meta record a committed transaction saw
  ServerTimeline pending_;     // the one this transaction recorded (begin), until its COMMIT
  ServerTimeline txn_server_;  // the one this transaction runs on (begin), for settle
  std::chrono::steady_clock::time_point deadline_{};
  std::string xid_;      // the group transaction's id (begin), for settle
  bool durable_ = true;  // the transaction's, as begin was told
};

PgStore::PgStore(PgOptions options)
    : options_(std::move(options)),
      readers_(options_.max_readers),
      replica_readers_(options_.max_readers) {}

void PgStore::skip_fenced_host(Connection& c) const {
  c.broken = true;
  if (c.conn == nullptr) return;
  const char* host = PQhost(c.conn);
  const char* port = PQport(c.conn);
  const std::string key = std::string(host ? host : "") + ":" + (port && *port ? port : "5432");
  {
    MutexLock lock(skip_mu_);
    fenced_hosts_[key] = std::chrono::steady_clock::now() + kFencedHostSkip;
  }
  LogFields f;
  f.reason = "fenced";
  f.detail =
      "the PostgreSQL server at " + key +
      " is refused by the fence (a former primary, or another cluster): new connections "
      "leave it out for " +
      std::to_string(std::chrono::duration_cast<std::chrono::seconds>(kFencedHostSkip).count()) +
      " s while DATABASE_URL names other hosts";
  log_event(LogLevel::kWarn, "fenced_host", f);
}

std::vector<std::string> PgStore::fenced_hosts() const {
  std::vector<std::string> out;
  MutexLock lock(skip_mu_);
  const auto now = std::chrono::steady_clock::now();
  for (const auto& [key, until] : fenced_hosts_) {
    if (until > now) out.push_back(key);
  }
  return out;
}

Status PgStore::connect(std::unique_ptr<Connection>& out, const std::string& given) const {
  // A fenced former primary among DATABASE_URL's hosts is left out while there are others.
  const std::string url = given == options_.url ? without_hosts(given, fenced_hosts()) : given;
  // Our defaults first: what the URL says wins (only the first dbname is expanded, and later
  // values override earlier ones).
  const std::string timeout = std::to_string(options_.connect_timeout_s);
  const char* keys[] = {"connect_timeout",     "application_name",
                        "keepalives",          "keepalives_idle",
                        "keepalives_interval", "keepalives_count",
                        "tcp_user_timeout",    "dbname",
                        "client_encoding",     nullptr};
  const char* values[] = {timeout.c_str(),
                          options_.application_name.c_str(),
                          "1",
                          "10",
                          "5",
                          "3",
                          "30000",
                          url.c_str(),
                          "UTF8",
                          nullptr};
  auto conn = std::make_unique<Connection>();
  conn->conn = PQconnectdbParams(keys, values, 1);
  if (!conn->healthy()) {
    return Status::Unavailable("cannot connect to PostgreSQL at " + redact_url(given) + ": " +
                               first_line(conn->conn ? PQerrorMessage(conn->conn) : ""));
  }
  PQsetNoticeReceiver(conn->conn, &Connection::on_notice, conn.get());
  conn->round_trip_timeout = std::chrono::milliseconds(options_.round_trip_timeout_ms);
  // client_encoding is a connection parameter (above, after the URL's: ours wins).
  const std::string statement_timeout = std::to_string(options_.statement_timeout_ms);
  const std::string lock_timeout = std::to_string(std::max(1, options_.lock_timeout_ms));
  if (options_.transaction_pooler) {
    // Nothing is SET on the connection: a pooler in transaction mode would leave it on a server
    // connection other clients get next, and run this client's next transaction on another
    // one. Every transaction sets them itself (Connection::exec, run).
    conn->pooled = true;
    conn->local_settings = "SET LOCAL synchronous_commit = " + options_.synchronous_commit +
                           "; SET LOCAL statement_timeout = " + statement_timeout +
                           "; SET LOCAL lock_timeout = " + lock_timeout +
                           "; SET LOCAL idle_in_transaction_session_timeout = 60000; ";
    conn->statement_timeout_ms = statement_timeout;
    conn->lock_timeout_ms = lock_timeout;
  } else {
    // With a fence, the server's history too: a connection to a fenced former primary would
    // read what it holds, without the writes made since the failover (reads are fenced too).
    const bool fence = fencing_.load() && given == options_.url;
    const std::string setup = "SET synchronous_commit = " + options_.synchronous_commit +
                              "; SET statement_timeout = " + statement_timeout +
                              "; SET lock_timeout = " + lock_timeout +
                              "; SET idle_in_transaction_session_timeout = 60000;" +
                              (fence ? " SELECT " kHealthFence : "");
    PgResult r = conn->exec(setup.c_str());
    if (!result_ok(r)) return conn->error(r.get(), "configure the connection");
    const ServerTimeline server = fence ? history_at(r.get(), 0) : ServerTimeline{};
    if (server.known()) {
      Status fenced = check_fence(server, /*advance=*/false);
      if (fenced.code() == StatusCode::kFenced) {
        skip_fenced_host(*conn);
        // Once more, when the URL names other hosts to go to.
        if (without_hosts(given, fenced_hosts()) != url) return connect(out, given);
        return fenced;
      }
    }
  }
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
  if (!options.read_url.empty()) {
    parsed = PQconninfoParse(options.read_url.c_str(), &parse_error);
    if (parsed == nullptr) {
      PQfreemem(parse_error);
      return Status::Internal("DATABASE_READ_URL is not a connection string libpq can parse");
    }
    PQconninfoFree(parsed);
  }
  if (options.synchronous_commit != "on" && options.synchronous_commit != "remote_write" &&
      options.synchronous_commit != "remote_apply") {
    return Status::Internal("synchronous_commit must be on, remote_write or remote_apply");
  }
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
  if (!options.timeline_file.empty()) {
    ServerTimeline saved;
    const std::string stamp = fence_file_stamp(options.timeline_file);
    s = load_fence(options.timeline_file, saved);
    if (!s.ok()) return s;
    {
      MutexLock lock(store->fence_mu_);
      store->fence_ = saved;
      store->fence_stamp_ = stamp;
    }
    s = store->start_fencing();
    if (!s.ok()) return s;
  }
  s = store->migrate(*store->writer_);
  if (!s.ok()) return s;
  s = store->load_secret(*store->writer_);
  if (!s.ok()) return s;
  if (options.open_readers_at_start) store->open_readers();
  store->backend_ = std::make_unique<Backend>(*store);
  WriteEngineOptions writes = options.writes;
  writes.deadline = std::chrono::milliseconds(options.round_trip_timeout_ms);
  store->engine_ = std::make_unique<WriteEngine>(*store->backend_, writes, options.observer);
  out = std::move(store);
  return Status::Ok();
}

PgStore::~PgStore() {
  const bool was_open = engine_ != nullptr;
  engine_.reset();  // answers what is queued, then stops the writer thread
  readers_.drop_idle();
  replica_readers_.drop_idle();
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
  return acquire_reader(readers_, options_.url, status);
}

void PgStore::release_reader(std::unique_ptr<Connection> conn) {
  release_reader(readers_, std::move(conn));
}

std::unique_ptr<PgStore::Connection> PgStore::acquire_reader(FifoPool<Connection>& pool,
                                                             const std::string& url,
                                                             Status& status) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::milliseconds(options_.lock_timeout_ms);
  std::unique_ptr<Connection> conn;
  switch (pool.acquire(conn, deadline)) {
    case FifoPool<Connection>::Got::kIdle:
      return conn;
    case FifoPool<Connection>::Got::kTimeout:
      status = Status::Busy("all " + std::to_string(options_.max_readers) +
                            " PostgreSQL connections of this process stayed busy");
      return nullptr;
    case FifoPool<Connection>::Got::kOpenNew:
      break;
  }
  status = connect(conn, url);
  if (!status.ok()) {
    pool.release(nullptr, false);  // the slot, to the next waiter
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

void PgStore::release_reader(FifoPool<Connection>& pool, std::unique_ptr<Connection> conn) {
  const bool keep = conn && conn->healthy() && !conn->in_transaction();
  pool.release(std::move(conn), keep);  // dropped: a new one is opened when needed
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

// -- read replicas ---------------------------------------------------------------------------

namespace {

// How long a read waits for a replica to replay past its commit position before it goes to the
// primary instead.
constexpr int kReplicaWaitMs = 1000;
// How long reads go to the primary without trying the replicas after a connection to them
// failed (a host that does not answer costs every attempt the whole connect_timeout).
constexpr int kReplicaRetryMs = 5000;

}  // namespace

void PgStore::note_commit_position(Connection& writer) {
  if (options_.read_url.empty()) return;
  // After COMMIT: the commit record is in the log below the current write position.
  ++commit_positions_read_;
  PgResult r = writer.exec("SELECT pg_current_wal_lsn()");
  uint64_t position = 0;
  if (!result_ok(r) || PQntuples(r.get()) != 1 ||
      !parse_commit_position(value_view(r.get(), 0, 0), position)) {
    // An older position (or none) would let a read that sends it back miss this commit: the
    // answers say "unknown" (read from the primary) until a later commit's position is read.
    position_unknown_.store(true);
    return;
  }
  uint64_t seen = commit_position_.load();
  while (seen < position && !commit_position_.compare_exchange_weak(seen, position)) {
  }
  position_unknown_.store(false);  // after the position that covers the commits before
}

bool PgStore::beyond_primary(uint64_t after) {
  if (after <= std::max(commit_position_.load(), primary_position_.load())) return false;
  uint64_t current = 0;
  Status s = with_reader("commit position", [&](Connection& c) {
    PgResult r = c.run("current_position", "SELECT pg_current_wal_lsn()", {});
    if (!result_ok(r)) return c.error(r.get(), "commit position");
    if (PQntuples(r.get()) != 1 || !parse_commit_position(value_view(r.get(), 0, 0), current)) {
      return Status::Internal("commit position: not a log position");
    }
    return Status::Ok();
  });
  if (!s.ok()) return true;  // not known: the primary answers
  uint64_t seen = primary_position_.load();
  while (seen < current && !primary_position_.compare_exchange_weak(seen, current)) {
  }
  return after > current;
}

Status PgStore::with_replica_reader(const char* what,
                                    const std::function<Status(Connection&)>& fn) {
  if (options_.read_url.empty() || !ReplicaReadScope::active()) return with_reader(what, fn);
  const uint64_t after = ReplicaReadScope::after();
  const auto to_primary = [&] {
    ++replica_fallbacks_;
    ReplicaReadScope::stay_on_primary();
    return with_reader(what, fn);
  };
  // The scope's reads went to the primary already (a listing's first pages), or the write's
  // position was not read.
  if (ReplicaReadScope::on_primary() || after == kPositionUnknown) return to_primary();
  const auto now = [] { return std::chrono::steady_clock::now().time_since_epoch().count(); };
  // A replica that did not reach a position within the wait lately is not waited for again
  // (every read would hold a worker and a replica connection for the whole wait) until the
  // wait's length has passed, unless it was seen past this read's position.
  if (after != 0 && after > replica_replayed_.load() && now() < replica_behind_until_.load()) {
    return to_primary();
  }
  if (now() < replica_down_until_.load()) return to_primary();
  Status status;
  std::unique_ptr<Connection> conn = acquire_reader(replica_readers_, options_.read_url, status);
  if (!conn && status.code() == StatusCode::kUnavailable) {
    // Not reachable: the reads go to the primary for kReplicaRetryMs (logged once an outage).
    const auto until =
        (std::chrono::steady_clock::now() + std::chrono::milliseconds(kReplicaRetryMs))
            .time_since_epoch()
            .count();
    if (replica_down_until_.exchange(until) < now()) {  // a new outage: said once
      LogFields f;
      f.reason = status.name();
      f.detail = status.message() + "; reads go to DATABASE_URL, the replicas are tried again in " +
                 std::to_string(kReplicaRetryMs / 1000) + " s";
      log_event(LogLevel::kWarn, "replica_unreachable", f);
    }
  }
  bool caught_up = conn != nullptr;
  if (conn && after != 0) {
    // A standby answers its replay position. A server that is not in recovery is not a
    // replica of the primary: one promoted while the primary goes on writing has a history of
    // its own, with log positions that pass the primary's without holding its commits (and
    // the primary, when named here too, is read as the primary below).
    const auto deadline =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(kReplicaWaitMs);
    int pause_ms = 1;
    for (bool first = true;; first = false) {
      PgResult r =
          conn->run("replayed", "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()", {});
      uint64_t replayed = 0;
      const bool standby = result_ok(r) && PQntuples(r.get()) == 1 &&
                           value_view(r.get(), 0, 0) == "t" &&
                           parse_commit_position(value_view(r.get(), 0, 1), replayed);
      if (!standby) {
        caught_up = false;
        break;
      }
      uint64_t seen = replica_replayed_.load();
      while (seen < replayed && !replica_replayed_.compare_exchange_weak(seen, replayed)) {
      }
      caught_up = replayed >= after;
      if (caught_up) break;
      // A position the primary has not reached (forged, or of a server no longer written to)
      // no replica will reach: the primary answers at once.
      if (first && beyond_primary(after)) break;
      if (std::chrono::steady_clock::now() >= deadline) {
        replica_behind_until_.store(
            (std::chrono::steady_clock::now() + std::chrono::milliseconds(kReplicaWaitMs))
                .time_since_epoch()
                .count());
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(pause_ms));
      pause_ms = std::min(pause_ms * 2, 20);
    }
  }
  if (caught_up) {
    status = fn(*conn);
    const bool lost = !conn->healthy();
    release_reader(replica_readers_, std::move(conn));
    if (status.ok() || status.code() == StatusCode::kNotFound) return status;
    // The replica failed this read (gone, a query cancelled for a conflict with recovery,
    // 40001, a lock or statement timeout, or any other error): the primary answers it.
    note_failure(status);
    if (lost) replica_readers_.drop_idle();
  } else if (conn) {
    release_reader(replica_readers_, std::move(conn));
  } else {
    replica_readers_.drop_idle();
  }
  // Not caught up in time, or no replica reachable: the primary has every commit.
  return to_primary();
}

Status PgStore::list_tests(const ListQuery& q, const RowFn& on_row, const PageEndFn& on_page_end) {
  // The filters in kListFilters' order (the status's name is never a user's text).
  const std::string status_name = q.status ? test_status_name(*q.status) : "";
  const std::string* const filters[kListFilterCount] = {
      q.patient_id ? &*q.patient_id : nullptr, q.test_type ? &*q.test_type : nullptr,
      q.status ? &status_name : nullptr,       q.created_from ? &*q.created_from : nullptr,
      q.created_to ? &*q.created_to : nullptr, q.updated_from ? &*q.updated_from : nullptr,
      q.updated_to ? &*q.updated_to : nullptr};
  // As in get_test: a filter that is not UTF-8 matches nothing stored.
  if (!is_valid_utf8(q.clinic_id)) return Status::Ok();
  unsigned mask = 0;
  for (int i = 0; i < kListFilterCount; ++i) {
    if (filters[i] == nullptr) continue;
    if (!is_valid_utf8(*filters[i])) return Status::Ok();
    mask |= 1u << i;
  }
  const std::string name = "list" + std::to_string(mask);
  const std::string sql = list_sql(mask);
  const bool ranged = (mask & kRangeFilters) != 0;
  const std::string range_name = "list_range" + std::to_string(mask);
  const std::string range_sql = ranged ? list_range_sql(mask) : std::string();
  long long after = q.after_seq;
  long long remaining = q.limit;  // < 0: no limit
  // The first page is small (the documents' size is not known yet); later ones aim at
  // kListPageBytes: a listing holds at most about that much, whatever its documents' size.
  long long page_rows = kFirstPageRows;
  bool more = remaining != 0;
  Status status;
  while (more) {
    const long long want = remaining < 0 ? page_rows : std::min(remaining, page_rows);
    // A ranged page walks twice the rows it wants (at least 32) before it looks up the range.
    const long long walk = ranged ? std::max<long long>(2 * want, 32) : want;
    std::string after_text = std::to_string(after);
    const std::string walk_text = std::to_string(walk);
    const char* params[kListFilterCount + 3];
    int n = 0;
    params[n++] = q.clinic_id.c_str();
    for (const std::string* f : filters) {
      if (f) params[n++] = f->c_str();
    }
    params[n++] = after_text.c_str();
    params[n++] = walk_text.c_str();
    PgResult page = wrap(nullptr);
    PgResult found = wrap(nullptr);  // the range's rows after the walk (ranged only)
    std::string rest;
    status = with_replica_reader("list tests", [&](Connection& c) {
      // Run again from here when the first try failed (on a replica, or a lost connection),
      // maybe after its range lookup had moved the parameters on: the page starts at `after`.
      after_text = std::to_string(after);
      params[n - 2] = after_text.c_str();
      params[n - 1] = walk_text.c_str();
      found = wrap(nullptr);
      page = c.run(name.c_str(), sql.c_str(), params, n);
      if (!result_ok(page)) return c.error(page.get(), "list tests");
      const int walked = PQntuples(page.get());
      long long matched = 0;
      for (int i = 0; ranged && i < walked; ++i) matched += !PQgetisnull(page.get(), i, 0);
      // Where the range is dense in the walk (at least one row in kDenseWalk), the page is the
      // rows walked, fewer than wanted: the lookup reads every row of the range after the walk,
      // and a page that took it whenever the walk came up short re-read a wide range once per
      // page (quadratic in the range).
      if (!ranged || matched >= want || walked < walk || matched * kDenseWalk >= walked) {
        return Status::Ok();
      }
      // Too little of the range in the rows walked: the rest of the page through its index.
      ++range_lookups_;
      after_text = std::to_string(value_int(page.get(), walked - 1, 1));
      rest = std::to_string(want - matched);
      params[n - 2] = after_text.c_str();
      params[n - 1] = rest.c_str();
      found = c.run(range_name.c_str(), range_sql.c_str(), params, n);
      return result_ok(found) ? Status::Ok() : c.error(found.get(), "list tests");
    });
    if (!status.ok()) break;
    // Delivered after the queries ended and their connection went back to the pool.
    long long got = 0;
    size_t bytes = 0;
    bool stopped = false;
    auto deliver = [&](const PGresult* r) {
      for (int i = 0; i < PQntuples(r) && got < want && !stopped; ++i) {
        if (PQgetisnull(r, i, 0)) continue;  // walked, outside the range
        std::string_view doc = value_view(r, i, 0);
        bytes += doc.size();
        ++got;
        after = value_int(r, i, 1);
        stopped = !on_row(doc, after);
      }
    };
    deliver(page.get());
    if (found) deliver(found.get());
    // The rows walked past the last one delivered were outside the range (or beyond the page).
    const int walked = PQntuples(page.get());
    if (!found && got < want && walked > 0) after = value_int(page.get(), walked - 1, 1);
    more = found ? got == want : (got == want || walked == walk);
    if (got == 0 || stopped) break;
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
                 "SELECT seq, test_id, patient_id, clinic_id, test_type, result, created_at, doc,"
                 " status, version, updated_at"
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
    t.status.assign(value_view(page.get(), i, 8));
    t.version = value_int(page.get(), i, 9);
    t.updated_at.assign(value_view(page.get(), i, 10));
    if (!on_row(t)) break;
  }
  return Status::Ok();
}

Status PgStore::list_all_versions(long long after_change_seq, long long limit,
                                  const std::function<bool(const TestVersion&)>& on_version) {
  const std::string after_text = std::to_string(after_change_seq);
  const std::string limit_text = std::to_string(limit);
  PgResult page = wrap(nullptr);
  Status s = with_reader("list all versions", [&](Connection& c) {
    page = c.run("list_all_versions",
                 "SELECT " TDAPI_VERSION_COLUMNS " FROM test_versions v" TDAPI_VERSION_DOC
                 " WHERE v.change_seq > $1 ORDER BY v.change_seq LIMIT $2",
                 {after_text.c_str(), limit_text.c_str()});
    return result_ok(page) ? Status::Ok() : c.error(page.get(), "list all versions");
  });
  if (!s.ok()) return s;
  TestVersion v;
  for (int i = 0; i < PQntuples(page.get()); ++i) {
    version_from(page.get(), i, 0, v);
    if (!on_version(v)) break;
  }
  return Status::Ok();
}

Status PgStore::list_history(const HistoryQuery& q, std::string& clinic_id,
                             const std::function<bool(const TestVersion&)>& on_version) {
  if (!is_valid_utf8(q.test_id) || q.test_id.find('\0') != std::string::npos) {
    return Status::NotFound("no such test");
  }
  // One statement, one snapshot: the test (its clinic; NotFound) and the page of its versions.
  const long long before_version =
      q.before_version > 0 ? std::min<long long>(q.before_version, INT_MAX) : INT_MAX;
  const std::string before = std::to_string(before_version);
  const std::string limit = std::to_string(q.limit);
  PgResult page = wrap(nullptr);
  Status s = with_reader("list history", [&](Connection& c) {
    page = c.run("history",
                 "SELECT t.clinic_id, " TDAPI_VERSION_COLUMNS
                 " FROM tests t LEFT JOIN LATERAL (SELECT * FROM test_versions w"
                 " WHERE w.test_id = t.test_id AND w.version < $2 ORDER BY w.version DESC"
                 " LIMIT $3) v ON true LEFT JOIN LATERAL (SELECT v.doc::jsonb AS j) d ON true"
                 " WHERE t.test_id = $1 ORDER BY v.version DESC",
                 {q.test_id.c_str(), before.c_str(), q.limit < 0 ? nullptr : limit.c_str()});
    return result_ok(page) ? Status::Ok() : c.error(page.get(), "list history");
  });
  if (!s.ok()) return s;
  const int rows = PQntuples(page.get());
  if (rows == 0) return Status::NotFound("no such test");
  clinic_id.assign(value_view(page.get(), 0, 0));
  TestVersion v;
  for (int i = 0; i < rows; ++i) {
    if (PQgetisnull(page.get(), i, 1)) break;  // the test, with no version on this page
    version_from(page.get(), i, 1, v);
    if (!on_version(v)) break;
  }
  return Status::Ok();
}

Status PgStore::list_changes(const ChangeQuery& q,
                             const std::function<bool(const TestVersion&)>& on_change) {
  if (!is_valid_utf8(q.clinic_id)) return Status::Ok();
  const std::string after = std::to_string(q.after_change_seq);
  const std::string limit = std::to_string(std::max<long long>(q.limit, 1));
  PgResult page = wrap(nullptr);
  // test_versions_by_clinic: the clinic's changes in change_seq order, from the token on. No
  // change below the last one a reader saw can commit after it saw it (schema.cpp).
  Status s = with_reader("list changes", [&](Connection& c) {
    page = c.run("changes",
                 "SELECT " TDAPI_CHANGE_COLUMNS
                 " FROM test_versions v"
                 " WHERE v.clinic_id = $1 AND v.change_seq > $2 ORDER BY v.change_seq LIMIT $3",
                 {q.clinic_id.c_str(), after.c_str(), limit.c_str()});
    return result_ok(page) ? Status::Ok() : c.error(page.get(), "list changes");
  });
  if (!s.ok()) return s;
  TestVersion v;
  for (int i = 0; i < PQntuples(page.get()); ++i) {
    version_from(page.get(), i, 0, v);
    if (!on_change(v)) break;
  }
  return Status::Ok();
}

Status PgStore::latest_change(long long& change_seq) {
  return with_reader("latest change", [&](Connection& c) {
    PgResult r =
        c.run("latest_change", "SELECT coalesce(max(change_seq), 0) FROM test_versions", {});
    if (!result_ok(r)) return c.error(r.get(), "latest change");
    change_seq = value_int(r.get(), 0, 0);
    return Status::Ok();
  });
}

Status PgStore::get_test(std::string_view test_id, std::string& json, std::string& clinic_id) {
  StoredDocument d;
  Status s = get_test(test_id, d);
  json = std::move(d.json);
  clinic_id = std::move(d.clinic_id);
  return s;
}

Status PgStore::get_test(std::string_view test_id, StoredDocument& out) {
  // The database holds UTF-8 only and refuses to compare with anything else; stored ids are
  // valid UTF-8 (validate.h), so no other id can name a test. Nor can one holding a NUL, which
  // libpq would read as the id's end (another id's name).
  if (!is_valid_utf8(test_id) || test_id.find('\0') != std::string_view::npos) {
    return Status::NotFound("no such test");
  }
  const std::string id(test_id);
  return with_replica_reader("get test", [&](Connection& c) {
    PgResult r =
        c.run("get", "SELECT doc, clinic_id, version FROM tests WHERE test_id = $1", {id.c_str()});
    if (!result_ok(r)) return c.error(r.get(), "get test");
    if (PQntuples(r.get()) == 0) return Status::NotFound("no such test");
    out.json.assign(value_view(r.get(), 0, 0));
    out.clinic_id.assign(value_view(r.get(), 0, 1));
    out.version = value_int(r.get(), 0, 2);
    return Status::Ok();
  });
}

Status PgStore::check_health() {
  // A write refused as read-only (25006: DATABASE_URL names a standby, or a primary demoted)
  // says nothing of the reads: the live check below decides.
  Status failure = engine_->recent_failure();
  if (!failure.ok() && failure.code() != StatusCode::kReadOnly) return failure;
  const bool refresh_size = [&] {
    MutexLock lock(size_mu_);
    return std::chrono::steady_clock::now() - size_read_at_ >= kSizeRefresh;
  }();
  // On a connection of its own, not a reader: with every reader held by slow listings, the
  // check waited for one and answered 503 (busy) while the server was fine. Checks take turns
  // on it (each one query, bounded by statement_timeout).
  if (!health_mu_.try_lock_for(std::chrono::milliseconds(options_.lock_timeout_ms),
                               std::chrono::milliseconds(1))) {
    return Status::Busy("the previous health check is still waiting for PostgreSQL");
  }
  MutexLock lock(health_mu_, std::adopt_lock);
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
    // The server's history too: a read-write server the fence refuses makes the service
    // unhealthy, and says why, before any write is tried.
    const bool fencing = fencing_.load();
    PgResult r = c.exec(
        !fencing       ? (refresh_size ? "SELECT pg_database_size(current_database())" : "SELECT 0")
        : refresh_size ? "SELECT pg_database_size(current_database()), " kHealthFence
                       : "SELECT 0, " kHealthFence);
    if (!result_ok(r)) {
      status = c.error(r.get(), "health check");
      if (c.healthy()) break;
      health_conn_.reset();
      continue;
    }
    if (refresh_size) {
      MutexLock size_lock(size_mu_);
      database_bytes_ = value_int(r.get(), 0, 0);
      size_read_at_ = std::chrono::steady_clock::now();
    }
    status = Status::Ok();
    const ServerTimeline server = fencing ? history_at(r.get(), 1) : ServerTimeline{};
    if (server.known()) {
      status = check_fence(server, /*advance=*/false);
      if (status.code() == StatusCode::kFenced) {
        skip_fenced_host(c);
        health_conn_.reset();
      }
    }
    break;
  }
  note_failure(status);
  return status;
}

Status PgStore::start_fencing() {
  PgResult r = writer_->exec("SELECT " kHealthFence);
  if (!result_ok(r)) {
    const char* state = r ? PQresultErrorField(r.get(), PG_DIAG_SQLSTATE) : nullptr;
    if (state == nullptr || std::strcmp(state, "42501") != 0) {
      return writer_->error(r.get(), "read the server's history (failover fencing)");
    }
    LogFields f;
    f.reason = "insufficient_privilege";
    f.detail =
        "failover fencing is off: this role may not call pg_control_system() or "
        "pg_current_wal_lsn() (GRANT EXECUTE on both to it to have writes and reads "
        "refused at a former primary after a failover)";
    log_event(LogLevel::kWarn, "fencing_off", f);
    return Status::Ok();
  }
  fencing_ = true;
  const ServerTimeline server = history_at(r.get(), 0);
  if (!server.known()) return Status::Ok();  // a standby: nothing is written there
  Status fenced = check_fence(server, /*advance=*/false);
  if (fenced.code() != StatusCode::kFenced) return Status::Ok();
  // The writer reached a fenced former primary: connections leave it out from now on (and
  // fail, when the URL names no other host).
  skip_fenced_host(*writer_);
  writer_.reset();
  return connect(writer_);
}

Status PgStore::check_fence(const ServerTimeline& server, bool advance) const {
  MutexLock lock(fence_mu_);
  const std::string& file = options_.timeline_file;
  if (file.empty()) return Status::Ok();
  // The file is the fence of every node of this DATA_DIR: another one may have moved it since
  // this node last read it. One stat per check; the file is read again only when it changed (a
  // check then needs no descriptor, and none may be left).
  Status s;
  const std::string stamp = fence_file_stamp(file);
  if (stamp != fence_stamp_) {
    ServerTimeline saved;
    s = load_fence(file, saved);
    if (!s.ok())
      return Status::Unavailable(s.message() + " (writes wait for it: failover fencing)");
    fence_stamp_ = stamp;  // taken before the read: a change since makes the next check read again
    if (saved.known()) fence_ = saved;
  }
  const std::string refusal = fence_refusal(fence_, server);
  if (!refusal.empty()) {
    return Status::Fenced(refusal + ". The fence is " + file +
                          ": if DATABASE_URL now leads to the right server, stop the "
                          "service, remove that file and start it again");
  }
  if (!advance || server == fence_) return Status::Ok();
  const ServerTimeline before = fence_;
  ServerTimeline now;
  s = advance_fence(file, server, now);
  if (!s.ok()) return Status::Unavailable(s.message() + " (writes wait for it: failover fencing)");
  fence_stamp_ = fence_file_stamp(file);
  if (now.known()) fence_ = now;
  if (now != server) {  // another node moved it further meanwhile
    return Status::Fenced(fence_refusal(now, server) + ". The fence is " + file);
  }
  if (before.known()) {
    LogFields f;
    f.reason = "timeline";
    f.detail = "the fence moves from " + before.text() + " to " + server.text() + " (" + file +
               "): writes to the older history are refused from now on";
    log_event(LogLevel::kWarn, "fence_moved", f);
  }
  return Status::Ok();
}

StoreStats PgStore::stats() const {
  StoreStats s;
  engine_->add_stats(s);
  MutexLock lock(size_mu_);
  s.database_bytes = database_bytes_;
  return s;
}

// -- keys and the audit trail ------------------------------------------------------------------

// -- writes ----------------------------------------------------------------------------------

// -- migrate's imports -------------------------------------------------------------------------

}  // namespace tdapi
