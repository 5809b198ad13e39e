// store_sqlite.cpp: the SQLite store's connections (the writer, pooled readers, the admin and
// checkpoint connections), its side of the group-commit engine, checkpoints, and the reads of
// tests. The schema is schema.cpp, errors errors.cpp, the audit trail's reads audit.cpp, keys
// keys.cpp, whole-file operations file_ops.cpp. Only store/sqlite/ includes sqlite3.h.
#include "store/sqlite/store_sqlite.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/resource.h>
#include <sys/statvfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <limits>
#include <thread>
#include <utility>

#include "base/clock.h"
#include "base/json.h"
#include "base/log.h"
#include "store/keys.h"
#include "store/sqlite/file_ops.h"
#include "store/sqlite/internal.h"

namespace tdapi {

namespace {

const char kAuditInsertSql[] =
    "INSERT INTO audit (seq, ts, request_id, key_id, action, clinic_id, detail, outcome,"
    " prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)";

const char kAuditListSql[] =
    "SELECT seq, ts, request_id, key_id, action, clinic_id, detail, outcome, prev_hash, hash"
    " FROM audit WHERE seq > ?1 AND (?2 IS NULL OR ts >= ?2) AND (?3 IS NULL OR ts < ?3)"
    " AND (?4 IS NULL OR clinic_id = ?4) ORDER BY seq LIMIT ?5";

// The next number of the one numbering that a new test's seq and a correction's change_seq
// share: one more than any seq or change_seq committed before, whether or not its row is still
// there (counters), or taken earlier in this transaction (the two rowids). One writer writes at
// a time, so the numbers are in commit order. A test's seq is also its version 1's change_seq.
#define TDAPI_NEXT_CHANGE                                                     \
  "(SELECT max(coalesce((SELECT max(rowid) FROM tests), 0),"                  \
  " coalesce((SELECT max(change_seq) FROM test_versions), 0),"                \
  " (SELECT coalesce(max(value), 0) FROM counters WHERE name IN ('last_seq'," \
  " 'last_change_seq'))) + 1 AS m)"
// The newest mark, and whether it is more than a minute ahead of ?1 (the clock at BEGIN):
// Backend::load_newest_mark.
#define TDAPI_AHEAD_OF_CLOCK "strftime('%Y-%m-%dT%H:%M:%fZ', ?1, '+60 seconds')"
const char kNewestMarkSql[] = "SELECT created_at, created_at > " TDAPI_AHEAD_OF_CLOCK
                              " FROM created_marks ORDER BY created_at DESC LIMIT 1";
// The tests from the first mark ahead of the clock on (those not late have a created_at at least
// that far ahead), among the newest kRepairLimit + 1 by rowid (rowid order is seq order: an
// insert sets rowid = seq, and a reload renumbers in order): a repair is made only when they
// are all there are.
#define TDAPI_TESTS_SINCE_FUTURE_MARK                                                          \
  "(SELECT r FROM (SELECT rowid AS r, seq FROM tests ORDER BY rowid DESC LIMIT 10001)"         \
  " WHERE seq >= (SELECT min(seq) FROM created_marks WHERE created_at > " TDAPI_AHEAD_OF_CLOCK \
  "))"
constexpr int kRepairLimit = 10000;  // the LIMIT above is one more
const char kCountSinceFutureMarkSql[] = "SELECT count(*) FROM " TDAPI_TESTS_SINCE_FUTURE_MARK;
const char kLateFromFutureMarkSql[] =
    "UPDATE tests SET created_late = 1 WHERE created_late IS NULL AND rowid "
    "IN " TDAPI_TESTS_SINCE_FUTURE_MARK;
const char kDropFutureMarksSql[] =
    "DELETE FROM created_marks WHERE created_at > " TDAPI_AHEAD_OF_CLOCK;
#undef TDAPI_TESTS_SINCE_FUTURE_MARK
#undef TDAPI_AHEAD_OF_CLOCK
// A new test is version 1 (updated_at = created_at), kept in its row (created_by set) until
// its first correction: no test_versions row (schema.cpp, kLazyFirstVersionSchema).
// ?10: created_late (1, or NULL), see Backend::insert_record.
const char kInsertSql[] =
    "INSERT INTO tests (rowid, seq, test_id, patient_id, clinic_id, test_type, result, created_at,"
    " doc, status, version, updated_at, created_by, created_late) SELECT m, m, ?1, ?2, ?3, ?4, ?5,"
    " ?6, ?7, ?8, 1, ?6, ?9, ?10 FROM " TDAPI_NEXT_CHANGE;
// A correction's row in test_versions, numbered next.
const char kInsertVersionSql[] =
    "INSERT INTO test_versions (change_seq, test_id, version, clinic_id, status, changed_at,"
    " changed_by, reason, doc) SELECT m, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8 FROM " TDAPI_NEXT_CHANGE;
#undef TDAPI_NEXT_CHANGE
// Before a test's first correction: its version 1 moves from its row into test_versions, under
// the change_seq it has had since its create (its seq: the feed's position of it, also where
// something outside renumbered the rowid, as a reload from `.dump` does). A no-op for a test
// already corrected, or migrated from schema 4 (created_by NULL: version 1 is there already).
const char kMoveFirstVersionSql[] =
    "INSERT INTO test_versions (change_seq, test_id, version, clinic_id, status, changed_at,"
    " changed_by, reason, doc) SELECT seq, test_id, 1, clinic_id, status, created_at,"
    " created_by, NULL, doc FROM tests WHERE test_id = ?1 AND version = 1 AND created_by IS NOT"
    " NULL";
// Run with kBumpSeqSql: remembers the highest change_seq committed.
const char kBumpChangeSeqSql[] =
    "UPDATE counters SET value = (SELECT max(change_seq) FROM test_versions)"
    " WHERE name = 'last_change_seq' AND value < (SELECT coalesce(max(change_seq), 0)"
    " FROM test_versions)";
const char kReadCurrentSql[] =
    "SELECT patient_id, clinic_id, test_type, result, status, version, created_at, updated_at, doc"
    " FROM tests WHERE test_id = ?1";
// patient_id and clinic_id never change (the engine refuses such a correction); seq stays, so a
// corrected test keeps its place in every listing.
const char kUpdateTestSql[] =
    "UPDATE tests SET test_type = ?2, result = ?3, status = ?4, version = ?5, updated_at = ?6,"
    " doc = ?7 WHERE test_id = ?1";

// The columns a TestVersion is read from (read_version): the five fields come from the
// version's document. The feed reads only the first nine (TDAPI_CHANGE_COLUMNS): its answer is
// the document itself, and taking fields out of every document made a page of 1,000 changes
// several times slower than a listing of the same rows.
#define TDAPI_CHANGE_COLUMNS \
  "change_seq, test_id, version, clinic_id, status, changed_at, changed_by, reason, doc"
#define TDAPI_DOC_FIELDS                                                   \
  ", json_extract(doc, '$.patient_id'), json_extract(doc, '$.test_type')," \
  " json_extract(doc, '$.result'), json_extract(doc, '$.created_at')"
#define TDAPI_VERSION_COLUMNS TDAPI_CHANGE_COLUMNS TDAPI_DOC_FIELDS
// A version 1 still in its tests row (kInsertSql), as the same columns: its change_seq is its
// seq (= rowid).
#define TDAPI_FIRST_VERSION_COLUMNS(seq) \
  seq ", test_id, 1, clinic_id, status, created_at, created_by, NULL, doc"
#define TDAPI_FIRST_VERSION_FIELDS ", patient_id, test_type, result, created_at"
#define TDAPI_FIRST_VERSION_IN_ROW " version = 1 AND created_by IS NOT NULL"
// One test's versions, newest first (the UNIQUE (test_id, version) index, backwards; and the
// tests row's version 1 when it is there).
const char kHistorySql[] =
    "SELECT " TDAPI_VERSION_COLUMNS
    " FROM test_versions WHERE test_id = ?1 AND version < ?2"
    " UNION ALL SELECT " TDAPI_FIRST_VERSION_COLUMNS("seq") TDAPI_FIRST_VERSION_FIELDS
    " FROM tests WHERE test_id = ?1 AND 1 < ?2 AND" TDAPI_FIRST_VERSION_IN_ROW
    " ORDER BY 3 DESC LIMIT ?3";
}  // namespace

// One clinic's changes in commit order: test_versions_by_clinic merged with the clinic's
// version-1 rows (tests_by_clinic, in seq order), whose walk starts after the tests migrated
// from schema 4 (none of them holds its version 1).
const char kChangesSql[] =
    "SELECT " TDAPI_CHANGE_COLUMNS
    " FROM test_versions WHERE clinic_id = ?1 AND change_seq > ?2"
    " UNION ALL SELECT " TDAPI_FIRST_VERSION_COLUMNS(
        "seq") " FROM tests WHERE clinic_id = ?1 AND seq > max(?2, " TDAPI_FIRST_VERSIONS_IN_ROWS_AFTER
               ") AND" TDAPI_FIRST_VERSION_IN_ROW " ORDER BY 1 LIMIT ?3";
// Every version in commit order: test_versions by its rowid merged with the tests table by its
// rowid (= seq: kInsertSql; restore refuses a file where a version-1 row's differ), from after
// the tests migrated from schema 4.
const char kAllVersionsSql[] =
    "SELECT " TDAPI_VERSION_COLUMNS
    " FROM test_versions WHERE change_seq > ?1"
    " UNION ALL SELECT " TDAPI_FIRST_VERSION_COLUMNS("rowid") TDAPI_FIRST_VERSION_FIELDS
    " FROM tests WHERE rowid > max(?1, " TDAPI_FIRST_VERSIONS_IN_ROWS_AFTER
    ") AND" TDAPI_FIRST_VERSION_IN_ROW " ORDER BY 1 LIMIT ?2";

namespace {

#undef TDAPI_FIRST_VERSION_COLUMNS
#undef TDAPI_FIRST_VERSION_FIELDS
#undef TDAPI_FIRST_VERSION_IN_ROW
#undef TDAPI_VERSION_COLUMNS
#undef TDAPI_CHANGE_COLUMNS
#undef TDAPI_DOC_FIELDS

// A TestVersion from the current row of a statement over TDAPI_VERSION_COLUMNS.
void read_version(sqlite3_stmt* st, TestVersion& v) {
  v.change_seq = sqlite3_column_int64(st, 0);
  v.record.test_id.assign(column_view(st, 1));
  v.version = sqlite3_column_int64(st, 2);
  v.record.clinic_id.assign(column_view(st, 3));
  v.record.status = parse_test_status(column_view(st, 4)).value_or(TestStatus::kFinal);
  v.changed_at.assign(column_view(st, 5));
  v.changed_by.assign(column_view(st, 6));
  if (sqlite3_column_type(st, 7) == SQLITE_NULL) {
    v.reason.reset();
  } else {
    v.reason.emplace(column_view(st, 7));
  }
  v.doc.assign(column_view(st, 8));
  if (sqlite3_column_count(st) < 13) {  // TDAPI_CHANGE_COLUMNS: the fields stay in doc
    v.record.patient_id.clear();
    v.record.test_type.clear();
    v.record.result.clear();
    v.created_at.clear();
    return;
  }
  v.record.patient_id.assign(column_view(st, 9));
  v.record.test_type.assign(column_view(st, 10));
  v.record.result.assign(column_view(st, 11));
  v.created_at.assign(column_view(st, 12));
}

void bind_text(sqlite3_stmt* st, int i, std::string_view text) {
  sqlite3_bind_text(st, i, text.data(), static_cast<int>(text.size()), SQLITE_STATIC);
}
// Run in every write transaction before COMMIT: remembers the highest seq committed.
const char kBumpSeqSql[] =
    "UPDATE counters SET value = (SELECT max(rowid) FROM tests)"
    " WHERE name = 'last_seq' AND value < (SELECT coalesce(max(rowid), 0) FROM tests)";

// A listing reads at most this many rows, or this many bytes of documents, per read
// transaction, then ends it before the rows are sent: a client that reads slowly never holds
// a snapshot, which would keep checkpoints from restarting the WAL.
// How long the writer's own checkpoint waits for one the checkpoint thread is running.
constexpr std::chrono::milliseconds kWriterCheckpointWait{5};
constexpr long long kListPageRows = 1000;
constexpr size_t kListPageBytes = 256 * 1024;

// The filters a listing uses, a bit each: the index of its statement in Connection::list.
enum ListFilter {
  kByPatient = 1,
  kByType = 2,
  kByStatus = 4,
  kCreatedFrom = 8,
  kCreatedTo = 16,
  kUpdatedFrom = 32,
  kUpdatedTo = 64,
  // With kByStatus, a status other than final: tests_by_status holds only those
  // (kLazyFirstVersionSchema), and SQLite uses a partial index only where the statement's own
  // text implies its WHERE.
  kStatusNotFinal = 128,
};
int list_filters(const ListQuery& q) {
  return (q.patient_id ? kByPatient : 0) | (q.test_type ? kByType : 0) |
         (q.status ? kByStatus : 0) | (q.created_from ? kCreatedFrom : 0) |
         (q.created_to ? kCreatedTo : 0) | (q.updated_from ? kUpdatedFrom : 0) |
         (q.updated_to ? kUpdatedTo : 0) |
         (q.status && *q.status != TestStatus::kFinal ? kStatusNotFinal : 0);
}

// One listing statement per combination of filters. Without a date range: the covering index
// (clinic_id, seq, doc), or the patient's, type's or status's index, in seq order.
//
// A created range is a range of seq (schema version 7): created_marks gives the first seq of the
// first created_at at or after each bound, and the tests not marked created_late have created_at
// non-decreasing in seq, so those in the range are exactly those between the two seqs. That part
// is walked in seq order in the same index as the listing without a range (each row's created_at
// checked still, for a late test among them), with no sort, and merged (UNION ALL ... ORDER BY:
// SQLite's MERGE) with the late tests in the range outside those seqs, read from
// tests_created_late and sorted (there are none unless a clock stepped back). A page reads the
// rows it returns, and the range's late tests.
// An updated range has three parts: the tests a correction moved on, from tests_by_updated
// (which holds only those; sorted by seq, so list_tests walks instead where that part is dense,
// list_walk_sql), and the others, whose updated_at is their created_at, as a created range with
// the same bounds.
namespace {

// The first seq of the first created_at at or after the bound ?param; past every seq if none.
std::string first_seq_at(int param) {
  return "coalesce((SELECT seq FROM created_marks WHERE created_at >= ?" + std::to_string(param) +
         " ORDER BY created_at LIMIT 1), 9223372036854775807)";
}

// The equality filters, and the status's, as terms of a WHERE.
std::string filter_terms(int filters) {
  std::string sql;
  if (filters & kByPatient) sql += " AND patient_id = ?2";
  if (filters & kByType) sql += " AND test_type = ?3";
  if (filters & kByStatus) sql += " AND status = ?6";
  if (filters & kStatusNotFinal) sql += " AND status <> 'final'";
  return sql;
}

// The two parts of a created range with the bounds ?from and ?to (0: none): the seqs between
// the bounds' marks, and the late tests in the range outside them. `terms`: the other conditions
// every row must meet. The part of seq has one lower bound (SQLite starts a range of an index
// at one), the later of the page's seq and the range's.
std::string created_range_parts(int from, int to, const std::string& terms) {
  std::string after = "?4", upper, in_range, outside;
  if (from) {
    after = "max(?4, " + first_seq_at(from) + " - 1)";
    in_range += " AND created_at >= ?" + std::to_string(from);
    outside = "seq < " + first_seq_at(from);
  }
  if (to) {
    upper = " AND seq < " + first_seq_at(to);
    in_range += " AND created_at < ?" + std::to_string(to);
    outside += (outside.empty() ? "" : " OR ") + std::string("seq >= ") + first_seq_at(to);
  }
  return "SELECT doc, seq FROM tests WHERE clinic_id = ?1" + terms + in_range + " AND seq > " +
         after + upper +
         " UNION ALL SELECT doc, seq FROM tests INDEXED BY tests_created_late WHERE"
         " clinic_id = ?1 AND created_late = 1" +
         in_range + " AND (" + outside + ")" + terms + " AND seq > ?4";
}

}  // namespace

std::string list_sql(int filters) {
  std::string terms = filter_terms(filters);
  if (filters & (kCreatedFrom | kCreatedTo)) {
    if (filters & kUpdatedFrom) terms += " AND updated_at >= ?9";
    if (filters & kUpdatedTo) terms += " AND updated_at < ?10";
    return created_range_parts(filters & kCreatedFrom ? 7 : 0, filters & kCreatedTo ? 8 : 0,
                               terms) +
           " ORDER BY seq LIMIT ?5";
  }
  if (filters & (kUpdatedFrom | kUpdatedTo)) {
    std::string updated;
    if (filters & kUpdatedFrom) updated += " AND updated_at >= ?9";
    if (filters & kUpdatedTo) updated += " AND updated_at < ?10";
    return created_range_parts(filters & kUpdatedFrom ? 9 : 0, filters & kUpdatedTo ? 10 : 0,
                               " AND updated_at = created_at" + terms) +
           " UNION ALL SELECT doc, seq FROM tests INDEXED BY tests_by_updated WHERE clinic_id = ?1"
           " AND updated_at <> created_at" +
           updated + terms + " AND seq > ?4 ORDER BY seq LIMIT ?5";
  }
  return "SELECT doc, seq FROM tests WHERE clinic_id = ?1" + terms +
         " AND seq > ?4 ORDER BY seq LIMIT ?5";
}

// An updated range's other statement: the clinic's (or the equality filter's) index walked in
// seq order from the seq after, at most ?5 rows, each with its document when it is in the range
// and NULL when not. Where the range is dense in seq order (a wide range), a page costs what its
// rows cost; list_sql's sort of the corrected tests would read every one of the range after the
// page again for each page.
std::string list_walk_sql(int filters) {
  std::string range;
  auto add = [&](const char* condition) {
    if (!range.empty()) range += " AND ";
    range += condition;
  };
  if (filters & kUpdatedFrom) add("updated_at >= ?9");
  if (filters & kUpdatedTo) add("updated_at < ?10");
  std::string sql =
      "SELECT CASE WHEN " + range + " THEN doc END, seq FROM tests WHERE clinic_id = ?1";
  if (filters & kByPatient) sql += " AND patient_id = ?2";
  if (filters & kByType) sql += " AND test_type = ?3";
  if (filters & kByStatus) sql += " AND status = ?6";
  return sql + " AND seq > ?4 ORDER BY seq LIMIT ?5";
}

// Reads the schema page and the first page of the tests table: a real query, but O(1).
const char kHealthSql[] =
    "SELECT (SELECT count(*) FROM sqlite_schema) + (SELECT count(*) FROM"
    " (SELECT 1 FROM tests LIMIT 1))";

}  // namespace

// By rowid, which every insert sets equal to seq (kInsertSql): a range of the table's own
// b-tree. `WHERE seq > ?1 ORDER BY seq` has no index to use, so each page scans and sorts the
// whole table (migrate and its verification read 1,000 rows a page: quadratic in the table's
// size). SQLite does not promise to keep an implicit rowid (a reload from `.dump` renumbers
// it, and so may VACUUM), so the store checks once that rowid = seq in every row and falls back
// to kListAllTestsBySeqSql.
const char kListAllTestsSql[] =
    "SELECT seq, test_id, patient_id, clinic_id, test_type, result, created_at, doc, status,"
    " updated_at, version FROM tests WHERE rowid > ?1 ORDER BY rowid LIMIT ?2";
const char kListAllTestsBySeqSql[] =
    "SELECT seq, test_id, patient_id, clinic_id, test_type, result, created_at, doc, status,"
    " updated_at, version FROM tests WHERE seq > ?1 ORDER BY seq LIMIT ?2";

std::string list_tests_sql(const ListQuery& query) { return list_sql(list_filters(query)); }

namespace {

// One b-tree of the schema (kSchemaVersion: open migrates older files first), read by the
// background integrity check in key order, a chunk per read transaction. Reading an entry
// makes SQLite load and parse every page on the way to it (with cell_size_check on, each
// cell's bounds too) and decode the record's columns (and their overflow pages): a garbled
// page is SQLITE_CORRUPT. What PRAGMA quick_check does beyond that is not done here: the
// freelist, pages used twice or never, the order of keys within a page.
struct BtreeWalk {
  const char* from;          // the table, and the index whose b-tree is read
  const char* key;           // the b-tree's order, unique (an index's entries end with the rowid)
  int key_columns;           // the first columns of the statement
  const char* values;        // the other columns read; none for an index (every column is its key)
  const char* partial = "";  // a partial index's WHERE, which the statement must imply
};
const BtreeWalk kBtreeWalks[] = {
    {"tests", "rowid", 1,
     ", seq, test_id, patient_id, clinic_id, test_type, result, created_at, doc, status, version,"
     " updated_at, created_by, created_late"},
    {"tests INDEXED BY sqlite_autoindex_tests_1", "test_id", 1, ""},
    {"tests INDEXED BY tests_by_clinic", "clinic_id, seq, doc, rowid", 4, ""},
    {"tests INDEXED BY tests_by_patient", "clinic_id, patient_id, seq, rowid", 4, ""},
    {"tests INDEXED BY tests_by_type", "clinic_id, test_type, seq, rowid", 4, ""},
    {"tests INDEXED BY tests_created_late", "clinic_id, created_at, seq, rowid", 4, "",
     "created_late = 1"},
    {"created_marks", "created_at", 1, ", seq"},
    {"tests INDEXED BY tests_by_updated", "clinic_id, updated_at, seq, created_at, rowid", 5, "",
     "updated_at <> created_at"},
    {"tests INDEXED BY tests_by_status", "clinic_id, status, seq, rowid", 4, "",
     "status <> 'final'"},
    {"test_versions", "change_seq", 1,
     ", test_id, version, clinic_id, status, changed_at, changed_by, reason, doc"},
    {"test_versions INDEXED BY sqlite_autoindex_test_versions_1", "test_id, version", 2, ""},
    {"test_versions INDEXED BY test_versions_by_clinic", "clinic_id, change_seq", 2, ""},
    {"audit", "seq", 1,
     ", ts, request_id, key_id, action, clinic_id, detail, outcome, prev_hash, hash"},
};
// Tables that stay small (no patient data either): PRAGMA quick_check(table), whole, each in
// one short read transaction.
const char* const kSmallTables[] = {"sqlite_schema", "meta", "counters", "api_keys"};

// The first chunk of a walk (?1 its size), or with `after` the next one, after the key ?2...
std::string walk_sql(const BtreeWalk& w, bool after) {
  std::string sql = std::string("SELECT ") + w.key + w.values + " FROM " + w.from;
  std::string where = w.partial;
  if (after) {
    where += std::string(where.empty() ? "" : " AND ") + "(" + w.key + ") > (";
    for (int i = 0; i < w.key_columns; ++i) where += (i ? ", ?" : "?") + std::to_string(i + 2);
    where += ")";
  }
  if (!where.empty()) sql += " WHERE " + where;
  return sql + " ORDER BY " + w.key + " LIMIT ?1";
}

}  // namespace

std::vector<std::string> integrity_chunk_sql() {
  std::vector<std::string> out;
  for (const BtreeWalk& w : kBtreeWalks) out.push_back(walk_sql(w, true));
  return out;
}

// The writer connection's side of the group-commit engine (store/write_engine.h): each step
// is one prepared statement on writer_, run through run_step (SqliteOptions::fault_hook).
class SqliteStore::Backend : public WriteBackend {
 public:
  explicit Backend(SqliteStore& store) : store_(store) {}

  // Not durable: PRAGMA synchronous=NORMAL for this transaction (WAL mode: COMMIT writes the
  // WAL without syncing it, so it survives the app's crash, not a power cut), set before BEGIN
  // (SQLite refuses to change it inside a transaction) and only when it changes.
  Status begin(bool durable) override {
    if (!store_.writer_) {  // a reset after a failed ROLLBACK failed too
      Status s = store_.reopen_writer();
      if (!s.ok()) return s;
    }
    Connection& w = *store_.writer_;
    const bool relax = !durable && syncs_every_commit();
    if (relax != w.relaxed) {
      const std::string pragma =
          "PRAGMA synchronous=" + (relax ? std::string("NORMAL") : store_.options_.synchronous);
      int rc = w.exec(pragma.c_str());
      if (rc != SQLITE_OK) return error(rc, "PRAGMA synchronous");
      w.relaxed = relax;
    }
    new_marks_.clear();
    Status s = step(w.begin, "BEGIN IMMEDIATE");
    // Here, not at the first insert: a repair (load_newest_mark) made inside a job's savepoint
    // would be undone with the job, and the marks would then be out of order.
    if (s.ok()) s = load_newest_mark(utc_timestamp_ms());
    return s;
  }
  // Syncs the WAL file, which holds every commit made without a sync (a checkpoint syncs the
  // WAL before it copies it, so what left the WAL is on disk already).
  Status sync() override {
    if (!store_.writer_) return Status::IoError("no writer connection to sync");
    sqlite3_file* wal = nullptr;
    int rc = sqlite3_file_control(db(), "main", SQLITE_FCNTL_JOURNAL_POINTER, &wal);
    if (rc != SQLITE_OK) return error(rc, "find the WAL");
    if (wal && wal->pMethods) {
      rc = wal->pMethods->xSync(wal, SQLITE_SYNC_NORMAL);
      return rc == SQLITE_OK ? Status::Ok() : error(rc, "sync the WAL");
    }
    // This connection has not opened the WAL (it was reopened since the undurable commits):
    // what they wrote is in the file all the same, so sync the file itself.
    const std::string path = store_.options_.path + "-wal";
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
      if (errno == ENOENT) return Status::Ok();  // no WAL: nothing unsynced
      return Status::IoError("cannot open " + path + " to sync it: " + std::strerror(errno));
    }
    const bool synced = fdatasync(fd) == 0;
    const int err = errno;
    ::close(fd);
    return synced ? Status::Ok()
                  : Status::IoError("cannot sync " + path + ": " + std::strerror(err));
  }
  // Reads the end of the audit chain (inside the writer's transaction, so it is current even
  // if another process appended).
  Status audit_head(long long& seq, std::string& hash) override {
    sqlite3_stmt* st = store_.writer_->audit_head;
    int rc = sqlite3_step(st);
    Status s;
    if (rc == SQLITE_ROW) {
      seq = sqlite3_column_int64(st, 0);
      hash.assign(column_view(st, 1));
    } else if (rc == SQLITE_DONE) {
      seq = 0;
      hash = kAuditGenesis;
    } else {
      s = error(sqlite3_extended_errcode(db()), "audit head");
    }
    sqlite3_reset(st);
    return s;
  }
  // A failed INSERT of a lone record would leave the transaction usable; the savepoint keeps
  // the steps the same for every group (and SqliteOptions::fault_hook sees them all).
  bool savepoint_for_lone_record() const override { return true; }
  Status savepoint() override { return step(store_.writer_->savepoint, "SAVEPOINT"); }
  Status rollback_to_savepoint() override {
    return step(store_.writer_->rollback_to, "ROLLBACK TO");
  }
  Status release_savepoint() override { return step(store_.writer_->release, "RELEASE"); }

  Status insert_record(const TestRecord& r, const std::string& created_at,
                       const std::string& changed_by, bool& duplicate) override {
    sqlite3_stmt* st = store_.writer_->insert;
    sqlite3_bind_text(st, 1, r.test_id.data(), static_cast<int>(r.test_id.size()), SQLITE_STATIC);
    sqlite3_bind_text(st, 2, r.patient_id.data(), static_cast<int>(r.patient_id.size()),
                      SQLITE_STATIC);
    sqlite3_bind_text(st, 3, r.clinic_id.data(), static_cast<int>(r.clinic_id.size()),
                      SQLITE_STATIC);
    sqlite3_bind_text(st, 4, r.test_type.data(), static_cast<int>(r.test_type.size()),
                      SQLITE_STATIC);
    sqlite3_bind_text(st, 5, r.result.data(), static_cast<int>(r.result.size()), SQLITE_STATIC);
    sqlite3_bind_text(st, 6, created_at.data(), static_cast<int>(created_at.size()), SQLITE_STATIC);
    const std::string doc = test_document(r, created_at, 1, created_at);
    bind_text(st, 7, doc);
    bind_text(st, 8, test_status_name(r.status));
    bind_text(st, 9, changed_by);
    // created_at below the newest in created_marks (a clock stepped back): the test is kept in
    // tests_created_late, which ranges read besides their range of seq (schema.cpp, version 7).
    const bool late = !own_timestamp(created_at) || created_at < newest_mark_;
    if (late) sqlite3_bind_int(st, 10, 1);  // else NULL
    int rc = sqlite3_step(st);
    Status s = rc == SQLITE_DONE ? Status::Ok() : error(sqlite3_extended_errcode(db()), "INSERT");
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (s.ok() && !late && created_at > newest_mark_) {
      // The first seq of a created_at, written at COMMIT: a job rolled back to its savepoint
      // takes its rows back, not the mark (its seq then goes to a later test, or to none; a
      // range of seq minds neither).
      newest_mark_ = created_at;
      new_marks_.emplace_back(created_at, sqlite3_last_insert_rowid(db()));
    }
    if (s.code() == StatusCode::kDuplicate) {
      duplicate = true;
      return Status::Ok();
    }
    return s;
  }

  Status read_current(const std::string& test_id, bool& found, TestVersion& current) override {
    sqlite3_stmt* st = store_.writer_->read_current;
    bind_text(st, 1, test_id);
    int rc = sqlite3_step(st);
    Status s;
    found = rc == SQLITE_ROW;
    if (found) {
      current.record.test_id = test_id;
      current.record.patient_id.assign(column_view(st, 0));
      current.record.clinic_id.assign(column_view(st, 1));
      current.record.test_type.assign(column_view(st, 2));
      current.record.result.assign(column_view(st, 3));
      current.record.status = parse_test_status(column_view(st, 4)).value_or(TestStatus::kFinal);
      current.version = sqlite3_column_int64(st, 5);
      current.created_at.assign(column_view(st, 6));
      current.changed_at.assign(column_view(st, 7));
      current.doc.assign(column_view(st, 8));
    } else if (rc != SQLITE_DONE) {
      s = error(sqlite3_extended_errcode(db()), "SELECT current version");
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return s;
  }

  Status write_version(TestVersion& next) override {
    sqlite3_stmt* move = store_.writer_->move_first_version;
    bind_text(move, 1, next.record.test_id);
    int move_rc = sqlite3_step(move);
    sqlite3_reset(move);
    sqlite3_clear_bindings(move);
    if (move_rc != SQLITE_DONE) {
      return error(sqlite3_extended_errcode(db()), "INSERT test_versions (version 1)");
    }
    sqlite3_stmt* st = store_.writer_->update_test;
    bind_text(st, 1, next.record.test_id);
    bind_text(st, 2, next.record.test_type);
    bind_text(st, 3, next.record.result);
    bind_text(st, 4, test_status_name(next.record.status));
    sqlite3_bind_int64(st, 5, next.version);
    bind_text(st, 6, next.changed_at);
    bind_text(st, 7, next.doc);
    int rc = sqlite3_step(st);
    Status s =
        rc == SQLITE_DONE ? Status::Ok() : error(sqlite3_extended_errcode(db()), "UPDATE tests");
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (!s.ok()) return s;
    return insert_version(next.record.test_id, next.version, next.record.clinic_id,
                          test_status_name(next.record.status), next.changed_at, next.changed_by,
                          next.reason ? &*next.reason : nullptr, next.doc, next.change_seq);
  }

  Status insert_audit(const AuditEntry& e) override {
    sqlite3_stmt* st = store_.writer_->audit_insert;
    sqlite3_bind_int64(st, 1, e.seq);
    const std::string* texts[] = {&e.ts,     &e.request_id, &e.key_id,
                                  &e.action, &e.clinic_id,  &e.detail};
    int i = 2;
    for (const std::string* t : texts) {
      sqlite3_bind_text(st, i++, t->data(), static_cast<int>(t->size()), SQLITE_STATIC);
    }
    sqlite3_bind_int(st, 8, e.outcome);
    sqlite3_bind_text(st, 9, e.prev_hash.data(), static_cast<int>(e.prev_hash.size()),
                      SQLITE_STATIC);
    sqlite3_bind_text(st, 10, e.hash.data(), static_cast<int>(e.hash.size()), SQLITE_STATIC);
    int rc = sqlite3_step(st);
    int err = rc == SQLITE_DONE ? SQLITE_OK : sqlite3_extended_errcode(db());
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return err == SQLITE_OK ? Status::Ok() : error(err, "INSERT audit");
  }

  // SQLite rolled the whole transaction back (it may, on I/O errors).
  bool transaction_lost() override { return sqlite3_get_autocommit(db()) != 0; }

  Status commit() override {
    int rc = Connection::run(store_.writer_->bump_seq);
    if (rc == SQLITE_OK) rc = Connection::run(store_.writer_->bump_change_seq);
    if (rc != SQLITE_OK) return error(rc, "UPDATE counters");
    for (const auto& [created_at, seq] : new_marks_) {
      sqlite3_stmt* st = store_.writer_->add_mark;
      bind_text(st, 1, created_at);
      sqlite3_bind_int64(st, 2, seq);
      rc = Connection::run(st);
      sqlite3_clear_bindings(st);
      if (rc != SQLITE_OK) return error(rc, "INSERT created_marks");
    }
    new_marks_.clear();
    Status s = step(store_.writer_->commit, "COMMIT");
    if (s.ok()) store_.read_page_count(*store_.writer_);
    return s;
  }
  void abort() override { store_.end_failed_transaction(); }
  void note_failure(const Status& status) override { store_.note_failure(status); }

 private:
  sqlite3* db() const { return store_.writer_ ? store_.writer_->db : nullptr; }
  Status error(int rc, const char* what) const { return status_from_sqlite(rc, db(), what, true); }
  // Whether the store's PRAGMA synchronous syncs the WAL at each COMMIT (FULL, EXTRA).
  bool syncs_every_commit() const {
    std::string level = store_.options_.synchronous;
    for (char& c : level) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return level == "FULL" || level == "EXTRA" || level == "2" || level == "3";
  }
  Status step(sqlite3_stmt* stmt, const char* what) {
    int rc = store_.run_step(stmt, what);
    return rc == SQLITE_OK ? Status::Ok() : error(rc, what);
  }
  // The highest created_at with a mark, read at the start of each transaction (under the write
  // lock, so also what another process wrote). A mark more than a minute ahead of the clock
  // (now) was written while the clock was ahead, or the clock is behind now. In the first case
  // every test until the clock caught up would be late (an index entry each, and sorted in
  // every range), so when at most kRepairLimit tests were written since that mark, they are
  // made late instead and the marks ahead dropped: the tests from now on are in order again.
  // More tests than that are taken as the second case (a clock that lost its time, and will be
  // set right): none is touched, and the tests written meanwhile are the late ones.
  Status load_newest_mark(const std::string& now) {
    for (int pass = 0; pass < 2; ++pass) {
      sqlite3_stmt* st = store_.writer_->newest_mark;
      bind_text(st, 1, now);
      int rc = sqlite3_step(st);
      bool ahead = false;
      newest_mark_.clear();
      if (rc == SQLITE_ROW) {
        newest_mark_.assign(column_view(st, 0));
        ahead = sqlite3_column_int(st, 1) == 1;
      }
      sqlite3_reset(st);
      sqlite3_clear_bindings(st);
      if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        return error(sqlite3_extended_errcode(db()), "SELECT created_marks");
      }
      if (!ahead || pass == 1) break;
      long long since = 0;
      Status s = count_since_future_mark(now, since);
      if (!s.ok()) return s;
      LogFields f;
      f.count = since;
      if (since > kRepairLimit) {
        if (reported_ahead_ != newest_mark_) {  // once per mark, not per transaction
          reported_ahead_ = newest_mark_;
          f.detail = "the newest created_at, " + newest_mark_ +
                     ", is more than 60 s ahead of the"
                     " clock (" +
                     now + ") and more than " + std::to_string(kRepairLimit) +
                     " tests were written since it: tests created now are kept as out of order"
                     " until the clock passes it";
          log_event(LogLevel::kWarn, "clock_behind_created_at", f);
        }
        break;
      }
      for (sqlite3_stmt* repair :
           {store_.writer_->late_from_future_mark, store_.writer_->drop_future_marks}) {
        bind_text(repair, 1, now);
        rc = Connection::run(repair);
        sqlite3_clear_bindings(repair);
        if (rc != SQLITE_OK) {
          return error(sqlite3_extended_errcode(db()), "mark tests created ahead of the clock");
        }
      }
      f.detail = "the newest created_at, " + newest_mark_ +
                 ", was more than 60 s ahead of the"
                 " clock (" +
                 now + "): the tests created since it are kept as out of order";
      log_event(LogLevel::kWarn, "clock_behind_created_at", f);
    }
    return Status::Ok();
  }
  Status count_since_future_mark(const std::string& now, long long& since) {
    sqlite3_stmt* st = store_.writer_->count_since_future_mark;
    bind_text(st, 1, now);
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) since = sqlite3_column_int64(st, 0);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc != SQLITE_ROW) return error(sqlite3_extended_errcode(db()), "count tests ahead");
    return Status::Ok();
  }
  // "YYYY-MM-DDTHH:MM:SS.mmmZ" (utc_timestamp_ms), whose text order is time order.
  static bool own_timestamp(std::string_view t) {
    static constexpr std::string_view kForm = "0000-00-00T00:00:00.000Z";
    if (t.size() != kForm.size()) return false;
    for (size_t i = 0; i < t.size(); ++i) {
      const bool digit = t[i] >= '0' && t[i] <= '9';
      if (kForm[i] == '0' ? !digit : t[i] != kForm[i]) return false;
    }
    return true;
  }
  // Inserts a test_versions row (reason null: none); change_seq receives its number.
  Status insert_version(const std::string& test_id, long long version, const std::string& clinic_id,
                        const char* status, const std::string& changed_at,
                        const std::string& changed_by, const std::string* reason,
                        const std::string& doc, long long& change_seq) {
    sqlite3_stmt* st = store_.writer_->insert_version;
    bind_text(st, 1, test_id);
    sqlite3_bind_int64(st, 2, version);
    bind_text(st, 3, clinic_id);
    bind_text(st, 4, status);
    bind_text(st, 5, changed_at);
    bind_text(st, 6, changed_by);
    if (reason) bind_text(st, 7, *reason);  // else NULL (cleared bindings)
    bind_text(st, 8, doc);
    int rc = sqlite3_step(st);
    Status s = rc == SQLITE_DONE ? Status::Ok()
                                 : error(sqlite3_extended_errcode(db()), "INSERT test_versions");
    if (s.code() == StatusCode::kDuplicate) {
      // (test_id, version) exists: a test_versions row left behind by hand; never a duplicate
      // of the API's kind.
      s = Status::Internal("test_versions already has version " + std::to_string(version) +
                           " of this test");
    }
    if (s.ok()) change_seq = sqlite3_last_insert_rowid(db());
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return s;
  }

  SqliteStore& store_;
  // This transaction's view of created_marks: its newest created_at, and the marks to add.
  std::string newest_mark_;
  std::string reported_ahead_;  // the mark ahead of the clock last logged without a repair
  std::vector<std::pair<std::string, long long>> new_marks_;
};

SqliteStore::SqliteStore(SqliteOptions options) : options_(std::move(options)) {}

void SqliteStore::note_failure(const Status& s) {
  if (s.ok() || s.code() == StatusCode::kDuplicate || s.code() == StatusCode::kNotFound) return;
  LogFields f;
  f.reason = s.name();
  f.detail = s.message();
  if (s.code() == StatusCode::kCorrupt) {
    corrupt_seen_.store(true);
    f.detail = "DATABASE CORRUPTION in " + options_.path + ": " + s.message() +
               ". The service now reports unhealthy (GET /healthz 503). Stop it, keep a copy of "
               "the file, and restore from a backup; see README 'Failure handling'";
    log_event(LogLevel::kError, "database_corrupt", f);
    return;
  }
  log_event(LogLevel::kWarn, "storage_error", f);
}

// Clean-stop marker, DB_PATH-clean: written and fsynced by the destructor after the final
// checkpoint and close; removed, durably, by open_writer before anything else. Found at open, it
// means the last stop was clean, so the O(size) PRAGMA quick_check is skipped; after a crash,
// SIGKILL or stop timeout there is no marker and the check runs.
static void fsync_parent_dir(const std::string& path) {
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    fsync(fd);
    ::close(fd);
  }
}

static bool take_clean_marker(const std::string& db_path) {
  std::string marker = db_path + "-clean";
  if (unlink(marker.c_str()) != 0) return false;
  fsync_parent_dir(marker);
  return true;
}

static void write_clean_marker(const std::string& db_path) {
  std::string marker = db_path + "-clean";
  int fd = ::open(marker.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return;  // no marker: the next start runs the full check
  bool ok = fsync(fd) == 0;
  ::close(fd);
  if (ok) fsync_parent_dir(marker);
}

int open_connection(const std::string& path, int flags, sqlite3** db) {
  return sqlite3_open_v2(path.c_str(), db, flags | SQLITE_OPEN_NOMUTEX, nullptr);
}

Status SqliteStore::open(const SqliteOptions& options, std::unique_ptr<SqliteStore>& out) {
  // Memory statistics cost a global mutex on every SQLite allocation, shared by all threads;
  // nothing here reads them. Only possible before SQLite initialises (later calls are no-ops).
  static const int configured = sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
  (void)configured;
  std::unique_ptr<SqliteStore> store(new SqliteStore(options));
  Status s = store->open_writer();
  if (!s.ok()) return s;
  s = store->open_reader(store->checkpointer_);
  if (!s.ok()) return s;
  store->backend_ = std::make_unique<Backend>(*store);
  store->engine_ =
      std::make_unique<WriteEngine>(*store->backend_, options.writes, options.observer);
  store->checkpoint_thread_ = std::thread([raw = store.get()] { raw->checkpoint_loop(); });
  if (store->check_in_background_) {
    store->integrity_thread_ = std::thread([raw = store.get()] { raw->integrity_check_loop(); });
  }
  out = std::move(store);
  return Status::Ok();
}

Status SqliteStore::open_writer() {
  const std::string& path = options_.path;
  auto conn = std::make_unique<Connection>();
  if (options_.admin_tool && !std::filesystem::exists(path)) {
    return Status::ReadOnly("no database at " + path +
                            " (it is created by the service's first start)");
  }
  int rc = open_connection(
      path, SQLITE_OPEN_READWRITE | (options_.admin_tool ? 0 : SQLITE_OPEN_CREATE), &conn->db);
  if (rc != SQLITE_OK) {
    return status_from_sqlite(rc, conn->db, "cannot open database " + path, true);
  }
  sqlite3_extended_result_codes(conn->db, 1);
  sqlite3_busy_timeout(conn->db, options_.busy_timeout_ms);

  // Refuse a damaged file before touching it: PRAGMA quick_check, O(size), skipped when the
  // last stop was clean (see take_clean_marker).
  auto check_start = std::chrono::steady_clock::now();
  const bool clean_stop = options_.admin_tool || take_clean_marker(path);
  sqlite3_stmt* check = nullptr;
  rc = sqlite3_prepare_v2(conn->db, clean_stop ? "SELECT 'ok'" : "PRAGMA quick_check", -1, &check,
                          nullptr);
  std::string verdict;
  if (rc == SQLITE_OK) {
    rc = sqlite3_step(check);
    if (rc == SQLITE_ROW) verdict = reinterpret_cast<const char*>(sqlite3_column_text(check, 0));
  }
  int check_rc = rc;
  sqlite3_finalize(check);
  if (check_rc != SQLITE_ROW) {
    return status_from_sqlite(check_rc, conn->db, "cannot read database " + path, false);
  }
  if (verdict != "ok") {
    return Status::Corrupt("database " + path + " failed PRAGMA quick_check: " + verdict);
  }
  LogFields checked;
  checked.detail = path;
  checked.reason = clean_stop ? "skipped_after_clean_stop" : "quick_check";
  checked.duration_ms = elapsed_ms(check_start);
  if (!options_.admin_tool) {
    log_event(LogLevel::kInfo, "integrity_check", checked);
    // Damage done to the file while it was stopped: found by the check in the background.
    check_in_background_ = clean_stop;
    integrity_.store(clean_stop ? StoreStats::Integrity::kRunning : StoreStats::Integrity::kOk);
    if (!clean_stop) integrity_seconds_.store(checked.duration_ms / 1000.0);
  }

  // Schema: created on first start, versioned by user_version for later migrations.
  sqlite3_stmt* version_stmt = nullptr;
  int version = -1;
  if (sqlite3_prepare_v2(conn->db, "PRAGMA user_version", -1, &version_stmt, nullptr) ==
          SQLITE_OK &&
      sqlite3_step(version_stmt) == SQLITE_ROW) {
    version = sqlite3_column_int(version_stmt, 0);
  }
  sqlite3_finalize(version_stmt);
  if (version < 0) return status_from_sqlite(sqlite3_errcode(conn->db), conn->db, path, false);
  if (version > kSchemaVersion) {
    return Status::Internal("database " + path + " has schema version " + std::to_string(version) +
                            ", newer than this binary's " + std::to_string(kSchemaVersion) +
                            ": it was written by a newer release of testdata-api, and this one "
                            "refuses to read or change it (no downgrades). Run that release, or "
                            "restore a backup taken by this one");
  }
  // A file edited in place (a trigger, view, table or index testdata-api did not make, or a
  // table defined otherwise) would run inside the service: refused before anything runs on it.
  // An older file is checked once migrated (below).
  if (version == kSchemaVersion) {
    Status schema = check_schema(conn->db, version, path, true);
    if (!schema.ok()) return schema;
  }
  // Only now is the file written to (WAL mode): a newer one was refused untouched.
  rc = conn->exec(writer_pragmas().c_str());
  if (rc != SQLITE_OK) return status_from_sqlite(rc, conn->db, "cannot configure " + path, true);
  if (version > 0 && version < kSchemaVersion) {
    // An upgrade: a verified copy of the database as it is comes first, beside it.
    BackupResult backup;
    std::string dest = pre_migration_backup_path(path, version);
    Status s = backup_database(path, dest, backup);
    if (!s.ok()) {
      return Status::Internal("cannot back up " + path + " before migrating its schema from " +
                              std::to_string(version) + " to " + std::to_string(kSchemaVersion) +
                              ", so it was not migrated: " + s.message() +
                              ". What to do: make room (the copy is about as large as the "
                              "database) or fix what the message names, then start again");
    }
    LogFields f;
    f.detail = "schema version " + std::to_string(version) + " -> " +
               std::to_string(kSchemaVersion) + ": " + path + " copied to " + dest + " first (" +
               std::to_string(backup.facts.tests) + " tests, verified)";
    f.count = backup.facts.tests;
    f.duration_ms = backup.seconds * 1000;
    log_event(LogLevel::kInfo, "schema_backup", f);
  }
  if (version < kSchemaVersion) {
    Status s = migrate_schema(conn->db, version);
    if (!s.ok()) return s;
  }
  if (version >= 1 && version < kSchemaVersion) {
    Status schema = check_schema(conn->db, kSchemaVersion, path, true);
    if (!schema.ok()) return schema;
  }
  sqlite3_stmt* key_stmt = nullptr;
  rc = sqlite3_prepare_v2(conn->db, "SELECT value FROM meta WHERE name = 'cursor_key'", -1,
                          &key_stmt, nullptr);
  if (rc == SQLITE_OK) rc = sqlite3_step(key_stmt);
  if (rc == SQLITE_ROW) {
    secret_.assign(static_cast<const char*>(sqlite3_column_blob(key_stmt, 0)),
                   static_cast<size_t>(sqlite3_column_bytes(key_stmt, 0)));
  }
  sqlite3_finalize(key_stmt);
  if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
    return status_from_sqlite(rc, conn->db, "cannot read the meta table of " + path, false);
  }
  if (secret_.size() != 16) {
    return Status::Internal("database " + path + " has no cursor key in its meta table");
  }
  Status s = prepare_writer(*conn);
  if (!s.ok()) return s;
  writer_ = std::move(conn);
  return Status::Ok();
}

std::string SqliteStore::writer_pragmas() const {
  std::string pragmas = "PRAGMA journal_mode=WAL; PRAGMA synchronous=" + options_.synchronous + ";";
  if (options_.max_page_count > 0) {
    pragmas += "PRAGMA max_page_count=" + std::to_string(options_.max_page_count) + ";";
  }
  return pragmas;
}

Status SqliteStore::prepare_writer(Connection& conn) {
  const std::pair<const char*, sqlite3_stmt**> statements[] = {
      {kInsertSql, &conn.insert},
      {kInsertVersionSql, &conn.insert_version},
      {kMoveFirstVersionSql, &conn.move_first_version},
      {kReadCurrentSql, &conn.read_current},
      {kUpdateTestSql, &conn.update_test},
      {"BEGIN IMMEDIATE", &conn.begin},
      {"SAVEPOINT job", &conn.savepoint},
      {"RELEASE job", &conn.release},
      {"ROLLBACK TO job", &conn.rollback_to},
      {"COMMIT", &conn.commit},
      {"ROLLBACK", &conn.rollback},
      {kBumpSeqSql, &conn.bump_seq},
      {kBumpChangeSeqSql, &conn.bump_change_seq},
      {kNewestMarkSql, &conn.newest_mark},
      {"INSERT INTO created_marks (created_at, seq) VALUES (?1, ?2)", &conn.add_mark},
      {kCountSinceFutureMarkSql, &conn.count_since_future_mark},
      {kLateFromFutureMarkSql, &conn.late_from_future_mark},
      {kDropFutureMarksSql, &conn.drop_future_marks},
      {kAuditInsertSql, &conn.audit_insert},
      {"SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1", &conn.audit_head},
      {"PRAGMA page_count", &conn.page_count}};
  for (const auto& [sql, stmt] : statements) {
    int rc = conn.prepare(sql, stmt);
    if (rc != SQLITE_OK) return status_from_sqlite(rc, conn.db, sql, false);
  }
  // The database's page size and page cap, for metrics (MAX_DB_PAGES is set by now).
  for (const auto& [sql, target] :
       {std::pair<const char*, std::atomic<long long>*>{"PRAGMA page_size", &page_size_},
        {"PRAGMA max_page_count", &max_pages_}}) {
    sqlite3_stmt* st = nullptr;
    if (sqlite3_prepare_v2(conn.db, sql, -1, &st, nullptr) == SQLITE_OK &&
        sqlite3_step(st) == SQLITE_ROW) {
      target->store(sqlite3_column_int64(st, 0), std::memory_order_relaxed);
    }
    sqlite3_finalize(st);
  }
  read_page_count(conn);
  // Checkpoints mostly run on their own thread and connection, off the commit path: the hook
  // tells that thread how large the WAL has grown (see on_wal_commit).
  sqlite3_wal_hook(conn.db, &SqliteStore::on_wal_commit, this);
  return Status::Ok();
}

Status SqliteStore::reopen_writer() {
  writer_.reset();  // closing a connection rolls back whatever transaction it still had open
  auto conn = std::make_unique<Connection>();
  int rc = open_connection(options_.path, SQLITE_OPEN_READWRITE, &conn->db);
  if (rc == SQLITE_OK) {
    sqlite3_extended_result_codes(conn->db, 1);
    sqlite3_busy_timeout(conn->db, options_.busy_timeout_ms);
    rc = conn->exec(writer_pragmas().c_str());
  }
  if (rc != SQLITE_OK) {
    return status_from_sqlite(rc, conn->db, "cannot reopen database " + options_.path, true);
  }
  Status s = prepare_writer(*conn);
  if (!s.ok()) return s;
  writer_ = std::move(conn);
  return Status::Ok();
}

int SqliteStore::run_step(sqlite3_stmt* stmt, const char* step) {
  if (options_.fault_hook) {
    int rc = options_.fault_hook(step);
    if (rc != SQLITE_OK) return rc;
  }
  return Connection::run(stmt);
}

void SqliteStore::end_failed_transaction() {
  if (!writer_ || sqlite3_get_autocommit(writer_->db)) return;
  int rc = run_step(writer_->rollback, "ROLLBACK");
  if (rc == SQLITE_OK && sqlite3_get_autocommit(writer_->db)) return;
  // Still inside the transaction: every later BEGIN would fail. Start over on a new connection.
  LogFields f;
  f.reason = "rollback_failed";
  f.detail = std::string("ROLLBACK: ") + sqlite3_errstr(rc) + "; reopening the writer connection";
  log_event(LogLevel::kWarn, "writer_reset", f);
  Status s = reopen_writer();
  if (!s.ok()) note_failure(s);  // writer_ stays null; the next batch tries again
}

void SqliteStore::read_page_count(Connection& conn) {
  if (sqlite3_step(conn.page_count) == SQLITE_ROW) {
    page_count_.store(sqlite3_column_int64(conn.page_count, 0), std::memory_order_relaxed);
  }
  sqlite3_reset(conn.page_count);
}

int SqliteStore::on_wal_commit(void* self, sqlite3* db, const char*, int wal_pages) {
  auto* store = static_cast<SqliteStore*>(self);
  store->wal_pages_.store(wal_pages, std::memory_order_relaxed);
  if (wal_pages >= kCheckpointPages * 4) {
    // Under a steady stream of commits the log can only restart from the beginning when the
    // writer itself finishes a checkpoint between two transactions. The checkpoint thread has
    // copied nearly everything by now, so this one is short. SQLite runs one checkpoint at a
    // time (a second PASSIVE one fails SQLITE_BUSY at once): skipped whenever the thread was
    // running one, the log missed its restart at random and grew to hundreds of MB under a
    // stream of commits (release build, 20,000 inserts). So the writer waits for the thread's
    // pass, but at most kWriterCheckpointWait (a commit is not held for a whole pass over a
    // large database); past that it calls off the pass asked for next and tries again after
    // its next commit.
    if (store->checkpoint_run_mu_.try_lock_for(kWriterCheckpointWait,
                                               std::chrono::microseconds(100))) {
      sqlite3_wal_checkpoint_v2(db, nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr);
      store->checkpoint_run_mu_.unlock();
    } else {
      MutexLock lock(store->checkpoint_mu_);
      store->checkpoint_wanted_ = false;
    }
  } else if (wal_pages >= kCheckpointPages) {
    MutexLock lock(store->checkpoint_mu_);
    store->checkpoint_wanted_ = true;
    store->checkpoint_cv_.notify_one();
  }
  return SQLITE_OK;
}

void SqliteStore::checkpoint_loop() {
  for (;;) {
    {
      MutexLock lock(checkpoint_mu_);
      while (!checkpoint_wanted_ && !checkpoint_stop_) checkpoint_mu_.wait(checkpoint_cv_);
      if (checkpoint_stop_) return;
      checkpoint_wanted_ = false;
    }
    // PASSIVE: copies what no reader still needs, never blocks the writer or readers.
    int rc;
    {
      MutexLock run(checkpoint_run_mu_);
      rc = sqlite3_wal_checkpoint_v2(checkpointer_->db, nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr,
                                     nullptr);
    }
    if (rc != SQLITE_OK && rc != SQLITE_BUSY) {
      note_failure(status_from_sqlite(rc, checkpointer_->db, "checkpoint", true));
    }
  }
}

SqliteStore::~SqliteStore() {
  {
    MutexLock lock(integrity_mu_);
    integrity_stop_ = true;
  }
  integrity_cv_.notify_all();
  if (integrity_thread_.joinable()) integrity_thread_.join();  // closes its connection
  engine_.reset();  // answers what is queued, then stops the writer thread
  {
    MutexLock lock(checkpoint_mu_);
    checkpoint_stop_ = true;
  }
  checkpoint_cv_.notify_all();
  if (checkpoint_thread_.joinable()) checkpoint_thread_.join();
  checkpointer_.reset();
  idle_readers_.clear();
  if (admin_) sqlite3_close_v2(admin_);
  if (writer_) {
    int rc = writer_->exec("PRAGMA wal_checkpoint(TRUNCATE)");
    writer_.reset();  // closes the database
    if (options_.admin_tool) return;
    if (rc == SQLITE_OK && !corrupt_seen_.load()) write_clean_marker(options_.path);
    LogFields f;
    f.detail = options_.path;
    f.reason = rc == SQLITE_OK ? "" : sqlite3_errstr(rc);
    log_event(rc == SQLITE_OK ? LogLevel::kInfo : LogLevel::kWarn, "store_closed", f);
  }
}

StoreStats SqliteStore::stats() const {
  StoreStats s;
  engine_->add_stats(s);
  std::error_code ec;
  for (const std::string& file : {options_.path, options_.path + "-wal"}) {
    auto size = std::filesystem::file_size(file, ec);
    if (!ec) s.database_bytes += static_cast<long long>(size);
  }
  const long long page_size = page_size_.load(std::memory_order_relaxed);
  s.wal_bytes = wal_pages_.load(std::memory_order_relaxed) * page_size;
  s.database_pages = page_count_.load(std::memory_order_relaxed);
  s.max_pages = max_pages_.load(std::memory_order_relaxed);
  s.integrity = integrity_.load();
  s.integrity_seconds = integrity_seconds_.load();
  struct statvfs fs;
  if (statvfs(options_.path.c_str(), &fs) == 0) {
    s.filesystem_bytes = static_cast<long long>(fs.f_blocks) * static_cast<long long>(fs.f_frsize);
    s.filesystem_avail_bytes =
        static_cast<long long>(fs.f_bavail) * static_cast<long long>(fs.f_frsize);
  }
  return s;
}

Status SqliteStore::open_reader(std::unique_ptr<Connection>& out) {
  auto conn = std::make_unique<Connection>();
  int rc = open_connection(options_.path, SQLITE_OPEN_READWRITE, &conn->db);
  if (rc != SQLITE_OK) return status_from_sqlite(rc, conn->db, "open reader", false);
  sqlite3_extended_result_codes(conn->db, 1);
  sqlite3_busy_timeout(conn->db, options_.busy_timeout_ms);
  rc = conn->exec("PRAGMA query_only=1");
  // The plain listing at once; the other combinations of filters when first used.
  if (rc == SQLITE_OK) rc = conn->prepare(list_sql(0).c_str(), &conn->list[0]);
  if (rc == SQLITE_OK) rc = conn->prepare(kHealthSql, &conn->health);
  if (rc == SQLITE_OK) {
    rc = conn->prepare("SELECT doc, clinic_id, version FROM tests WHERE test_id = ?1",
                       &conn->get_doc);
  }
  if (rc == SQLITE_OK) rc = conn->prepare(kHistorySql, &conn->history);
  if (rc == SQLITE_OK) rc = conn->prepare(kChangesSql, &conn->changes);
  if (rc == SQLITE_OK) {
    rc = conn->prepare(
        "SELECT max(coalesce((SELECT max(change_seq) FROM test_versions), 0),"
        " coalesce((SELECT max(rowid) FROM tests), 0))",
        &conn->latest_change);
  }
  if (rc == SQLITE_OK) rc = conn->prepare(kAuditListSql, &conn->audit_list);
  if (rc == SQLITE_OK) {
    rc = conn->prepare(
        "SELECT key_id, name, scopes, secret_hash, created_at, coalesce(revoked_at, '')"
        " FROM api_keys WHERE key_id = ?1",
        &conn->key_get);
  }
  if (rc != SQLITE_OK) return status_from_sqlite(rc, conn->db, "prepare reader", false);
  out = std::move(conn);
  return Status::Ok();
}

std::unique_ptr<SqliteStore::Connection> SqliteStore::acquire_reader(Status& status) {
  {
    MutexLock lock(readers_mu_);
    if (!idle_readers_.empty()) {
      auto conn = std::move(idle_readers_.back());
      idle_readers_.pop_back();
      return conn;
    }
  }
  std::unique_ptr<Connection> conn;
  status = open_reader(conn);
  return conn;
}

void SqliteStore::release_reader(std::unique_ptr<Connection> conn) {
  MutexLock lock(readers_mu_);
  idle_readers_.push_back(std::move(conn));
}

Status SqliteStore::list_tests(const ListQuery& q, const RowFn& on_row,
                               const PageEndFn& on_page_end) {
  Status status;
  std::unique_ptr<Connection> conn = acquire_reader(status);
  if (!conn) {
    note_failure(status);
    return status;
  }
  const int filters = list_filters(q);
  // An updated range without a created one may walk (list_walk_sql); a created range's part
  // of seq is a walk already.
  const bool ranged =
      (filters & (kUpdatedFrom | kUpdatedTo)) != 0 && (filters & (kCreatedFrom | kCreatedTo)) == 0;
  sqlite3_stmt* statements[2] = {nullptr, nullptr};  // list_sql's, and list_walk_sql's
  for (int i = 0; i < (ranged ? 2 : 1); ++i) {
    sqlite3_stmt*& slot = i == 0 ? conn->list[filters] : conn->list_walk[filters];
    if (!slot) {
      int rc = conn->prepare((i == 0 ? list_sql(filters) : list_walk_sql(filters)).c_str(), &slot);
      if (rc != SQLITE_OK) {
        slot = nullptr;
        status = status_from_sqlite(rc, conn->db, "prepare listing", false);
        note_failure(status);
        release_reader(std::move(conn));
        return status;
      }
    }
    statements[i] = slot;
  }
  const std::string_view status_name = q.status ? test_status_name(*q.status) : "";
  for (sqlite3_stmt* st : statements) {
    if (!st) continue;
    sqlite3_bind_text(st, 1, q.clinic_id.data(), static_cast<int>(q.clinic_id.size()),
                      SQLITE_STATIC);
    if (q.status) bind_text(st, 6, status_name);
    if (q.created_from) bind_text(st, 7, *q.created_from);
    if (q.created_to) bind_text(st, 8, *q.created_to);
    if (q.updated_from) bind_text(st, 9, *q.updated_from);
    if (q.updated_to) bind_text(st, 10, *q.updated_to);
    if (q.patient_id) {
      sqlite3_bind_text(st, 2, q.patient_id->data(), static_cast<int>(q.patient_id->size()),
                        SQLITE_STATIC);
    }
    if (q.test_type) {
      sqlite3_bind_text(st, 3, q.test_type->data(), static_cast<int>(q.test_type->size()),
                        SQLITE_STATIC);
    }
  }
  // Page by page: each row goes to on_row as it is read (on_row only keeps it in memory), the
  // page's read transaction ends (reset), then on_page_end sends; the next page continues after
  // the last seq. seq only grows, so the order is the same and every test is delivered once,
  // also while others are added. (Rows were first copied into a page buffer and delivered after
  // the reset: +7.5% instructions for a 1,000-test listing, measured with callgrind.)
  // With an updated range, a page walks the clinic in seq order (list_walk_sql) while at least one
  // row in kDenseWalk it walks is in the range; where fewer are, the next page is read through
  // the range's index (list_sql), and the walk goes on after it. Either way a page costs at most
  // about kDenseWalk times its rows, or the rows of the range after it where the range is sparse.
  constexpr long long kDenseWalk = 16;
  bool walking = ranged;
  long long after = q.after_seq;
  long long remaining = q.limit;  // < 0: no limit
  bool more = remaining != 0;
  while (more) {
    sqlite3_stmt* st = walking ? statements[1] : statements[0];
    const long long want = remaining < 0 ? kListPageRows : std::min(remaining, kListPageRows);
    sqlite3_bind_int64(st, 4, after);
    sqlite3_bind_int64(st, 5, want);
    long long got = 0;      // rows the statement returned (walked, for a walk)
    long long matched = 0;  // rows delivered
    size_t bytes = 0;
    bool stopped = false;
    int rc;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      after = sqlite3_column_int64(st, 1);
      ++got;
      if (sqlite3_column_type(st, 0) == SQLITE_NULL) continue;  // walked: outside the range
      std::string_view doc = column_view(st, 0);
      ++matched;
      bytes += doc.size();
      if (!on_row(doc, after)) {
        stopped = true;
        break;
      }
      if (bytes >= kListPageBytes) break;
    }
    if (!stopped && rc != SQLITE_ROW && rc != SQLITE_DONE) {
      status =
          status_from_sqlite(sqlite3_extended_errcode(conn->db), conn->db, "list tests", false);
    }
    listing_steps_ += sqlite3_stmt_status(st, SQLITE_STMTSTATUS_VM_STEP, 1);
    sqlite3_reset(st);  // ends the read transaction before anything is sent
    if (!status.ok() || stopped || got == 0) break;
    // Done when the query ran out of rows before the page's row limit.
    more = rc == SQLITE_ROW || got == want;
    if (remaining > 0) {
      remaining -= matched;
      if (remaining <= 0) more = false;
    }
    if (ranged) walking = !walking || matched * kDenseWalk >= got;
    if (matched > 0 && on_page_end && !on_page_end()) break;
  }
  for (sqlite3_stmt* st : statements) {
    if (st) sqlite3_clear_bindings(st);
  }
  note_failure(status);
  release_reader(std::move(conn));
  return status;
}

Status SqliteStore::get_test(std::string_view test_id, std::string& json, std::string& clinic_id) {
  StoredDocument d;
  Status s = get_test(test_id, d);
  json = std::move(d.json);
  clinic_id = std::move(d.clinic_id);
  return s;
}

Status SqliteStore::get_test(std::string_view test_id, StoredDocument& out) {
  Status status;
  std::unique_ptr<Connection> conn = acquire_reader(status);
  if (!conn) {
    note_failure(status);
    return status;
  }
  sqlite3_stmt* st = conn->get_doc;
  bind_text(st, 1, test_id);
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    out.json.assign(column_view(st, 0));
    out.clinic_id.assign(column_view(st, 1));
    out.version = sqlite3_column_int64(st, 2);
  } else if (rc == SQLITE_DONE) {
    status = Status::NotFound("no such test");
  } else {
    status = status_from_sqlite(sqlite3_extended_errcode(conn->db), conn->db, "get test", false);
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  note_failure(status);
  release_reader(std::move(conn));
  return status;
}

namespace {

// Steps st (bound, on conn) and hands each row to on_version as a TestVersion until it returns
// false; the statement is reset (its read transaction ended) before returning. Ok or the error.
Status each_version(sqlite3* db, sqlite3_stmt* st, const char* what,
                    const std::function<bool(const TestVersion&)>& on_version) {
  TestVersion v;
  int rc;
  while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
    read_version(st, v);
    if (!on_version(v)) {
      rc = SQLITE_DONE;
      break;
    }
  }
  Status status;
  if (rc != SQLITE_DONE) {
    status = status_from_sqlite(sqlite3_extended_errcode(db), db, what, false);
  }
  sqlite3_reset(st);
  sqlite3_clear_bindings(st);
  return status;
}

}  // namespace

Status SqliteStore::list_history(const HistoryQuery& q, std::string& clinic_id,
                                 const std::function<bool(const TestVersion&)>& on_version) {
  Status status;
  std::unique_ptr<Connection> conn = acquire_reader(status);
  if (!conn) {
    note_failure(status);
    return status;
  }
  // One read transaction: the clinic and the versions of the same snapshot. Versions are few
  // (a test is corrected a handful of times): they are read at once, delivered after the
  // snapshot ends.
  std::vector<TestVersion> versions;
  int rc = conn->exec("BEGIN");
  if (rc == SQLITE_OK) {
    sqlite3_stmt* st = conn->get_doc;  // its clinic
    bind_text(st, 1, q.test_id);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
      clinic_id.assign(column_view(st, 1));
      rc = SQLITE_OK;
    } else if (rc == SQLITE_DONE) {
      status = Status::NotFound("no such test");
      rc = SQLITE_OK;
    } else {
      rc = sqlite3_extended_errcode(conn->db);
    }
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
  }
  if (rc != SQLITE_OK) {
    status = status_from_sqlite(rc, conn->db, "list history", false);
  } else if (status.ok()) {
    sqlite3_stmt* st = conn->history;
    bind_text(st, 1, q.test_id);
    sqlite3_bind_int64(
        st, 2, q.before_version > 0 ? q.before_version : std::numeric_limits<long long>::max());
    sqlite3_bind_int64(st, 3, q.limit);
    status = each_version(conn->db, st, "list history", [&](const TestVersion& v) {
      versions.push_back(v);
      return true;
    });
  }
  conn->exec("COMMIT");
  if (status.ok()) {
    for (const TestVersion& v : versions) {
      if (!on_version(v)) break;
    }
  }
  note_failure(status);
  release_reader(std::move(conn));
  return status;
}

Status SqliteStore::list_changes(const ChangeQuery& q,
                                 const std::function<bool(const TestVersion&)>& on_change) {
  Status status;
  std::unique_ptr<Connection> conn = acquire_reader(status);
  if (!conn) {
    note_failure(status);
    return status;
  }
  // A feed page is at most ChangeQuery::limit rows (the API's cap is 1,000): read in one
  // statement, so on_change must not wait (as list_tests' on_row).
  sqlite3_stmt* st = conn->changes;
  bind_text(st, 1, q.clinic_id);
  sqlite3_bind_int64(st, 2, q.after_change_seq);
  sqlite3_bind_int64(st, 3, q.limit);
  status = each_version(conn->db, st, "list changes", on_change);
  note_failure(status);
  release_reader(std::move(conn));
  return status;
}

Status SqliteStore::latest_change(long long& change_seq) {
  change_seq = 0;
  Status status;
  std::unique_ptr<Connection> conn = acquire_reader(status);
  if (!conn) {
    note_failure(status);
    return status;
  }
  sqlite3_stmt* st = conn->latest_change;
  int rc = sqlite3_step(st);
  if (rc == SQLITE_ROW) {
    change_seq = sqlite3_column_int64(st, 0);
  } else {
    status =
        status_from_sqlite(sqlite3_extended_errcode(conn->db), conn->db, "latest change", false);
  }
  sqlite3_reset(st);
  note_failure(status);
  release_reader(std::move(conn));
  return status;
}

Status SqliteStore::list_all_versions(long long after_change_seq, long long limit,
                                      const std::function<bool(const TestVersion&)>& on_version) {
  Status status;
  std::unique_ptr<Connection> conn = acquire_reader(status);
  if (!conn) return status;
  sqlite3_stmt* st = nullptr;
  int rc = sqlite3_prepare_v2(conn->db, kAllVersionsSql, -1, &st, nullptr);
  if (rc != SQLITE_OK) {
    status = status_from_sqlite(rc, conn->db, "list all versions", false);
  } else {
    sqlite3_bind_int64(st, 1, after_change_seq);
    sqlite3_bind_int64(st, 2, limit);
    status = each_version(conn->db, st, "list all versions", on_version);
  }
  sqlite3_finalize(st);
  release_reader(std::move(conn));
  return status;
}

Status SqliteStore::list_all_tests(long long after_seq, long long limit,
                                   const std::function<bool(const StoredTest&)>& on_row) {
  Status status;
  std::unique_ptr<Connection> conn = acquire_reader(status);
  if (!conn) return status;
  if (rowid_is_seq_.load() < 0) {
    // One scan of the table, once per store (a page by seq would cost as much every time).
    sqlite3_stmt* check = nullptr;
    int rc =
        sqlite3_prepare_v2(conn->db, "SELECT NOT EXISTS (SELECT 1 FROM tests WHERE rowid <> seq)",
                           -1, &check, nullptr);
    if (rc == SQLITE_OK) rc = sqlite3_step(check);
    if (rc == SQLITE_ROW) rowid_is_seq_.store(sqlite3_column_int(check, 0) == 1 ? 1 : 0);
    sqlite3_finalize(check);
    if (rc != SQLITE_ROW) {
      status =
          status_from_sqlite(sqlite3_extended_errcode(conn->db), conn->db, "list all tests", false);
      release_reader(std::move(conn));
      return status;
    }
  }
  const char* sql = pages_all_tests_by_rowid() ? kListAllTestsSql : kListAllTestsBySeqSql;
  sqlite3_stmt* st = nullptr;
  int rc = sqlite3_prepare_v2(conn->db, sql, -1, &st, nullptr);
  if (rc == SQLITE_OK) {
    sqlite3_bind_int64(st, 1, after_seq);
    sqlite3_bind_int64(st, 2, limit);
    StoredTest t;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      t.seq = sqlite3_column_int64(st, 0);
      std::string* texts[] = {&t.test_id,    &t.patient_id, &t.clinic_id, &t.test_type, &t.result,
                              &t.created_at, &t.doc,        &t.status,    &t.updated_at};
      for (int i = 0; i < 9; ++i) texts[i]->assign(column_view(st, i + 1));
      t.version = sqlite3_column_int64(st, 10);
      if (!on_row(t)) {
        rc = SQLITE_DONE;
        break;
      }
    }
  }
  if (rc != SQLITE_DONE) {
    status =
        status_from_sqlite(sqlite3_extended_errcode(conn->db), conn->db, "list all tests", false);
  }
  sqlite3_finalize(st);
  release_reader(std::move(conn));
  return status;
}

namespace {
Status refused_as_damaged(const std::string& path) {
  return Status::Corrupt("database " + path +
                         " failed the integrity check: writes are refused until it is restored");
}
}  // namespace

WriteOutcome SqliteStore::insert(const TestRecord& record, AuditEntry* audit) {
  if (!damaged_.load()) return EngineStore::insert(record, audit);
  WriteOutcome out;
  out.status = refused_as_damaged(options_.path);
  return out;
}

WriteOutcome SqliteStore::insert_all(const std::vector<TestRecord>& records,
                                     std::vector<AuditEntry>* audits) {
  if (!damaged_.load()) return EngineStore::insert_all(records, audits);
  WriteOutcome out;
  out.status = refused_as_damaged(options_.path);
  return out;
}

CorrectionOutcome SqliteStore::correct(const TestCorrection& correction, AuditEntry* audit) {
  if (!damaged_.load()) return EngineStore::correct(correction, audit);
  CorrectionOutcome out;
  out.status = refused_as_damaged(options_.path);
  return out;
}

Status SqliteStore::append_audit(AuditEntry& entry, AuditDurability durability) {
  if (!damaged_.load()) return EngineStore::append_audit(entry, durability);
  return refused_as_damaged(options_.path);
}

bool SqliteStore::integrity_pause(std::chrono::steady_clock::duration pause) {
  const auto until = std::chrono::steady_clock::now() + pause;
  MutexLock lock(integrity_mu_);
  while (!integrity_stop_) {
    if (integrity_mu_.wait_until(integrity_cv_, until) == std::cv_status::timeout) break;
  }
  return !integrity_stop_;
}

Status SqliteStore::walk_btree(sqlite3* db, size_t walk) {
  const BtreeWalk& w = kBtreeWalks[walk];
  sqlite3_stmt* first = nullptr;
  sqlite3_stmt* next = nullptr;
  int rc = sqlite3_prepare_v2(db, walk_sql(w, false).c_str(), -1, &first, nullptr);
  if (rc == SQLITE_OK) rc = sqlite3_prepare_v2(db, walk_sql(w, true).c_str(), -1, &next, nullptr);
  std::vector<sqlite3_value*> last(static_cast<size_t>(w.key_columns), nullptr);
  const long long chunk = std::max(1, options_.integrity_chunk_rows);
  bool more = rc == SQLITE_OK;
  sqlite3_stmt* st = first;
  while (more) {
    const auto start = std::chrono::steady_clock::now();
    sqlite3_bind_int64(st, 1, chunk);
    long long rows = 0;
    while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
      if (++rows < chunk) continue;
      for (int i = 0; i < w.key_columns; ++i) {  // the key the next chunk starts after
        sqlite3_value_free(last[static_cast<size_t>(i)]);
        last[static_cast<size_t>(i)] = sqlite3_value_dup(sqlite3_column_value(st, i));
      }
    }
    if (rc == SQLITE_DONE)
      rc = SQLITE_OK;
    else
      rc = sqlite3_extended_errcode(db);
    sqlite3_reset(st);  // ends the read transaction: the WAL may restart until the next chunk
    integrity_entries_.fetch_add(rows);
    more = rc == SQLITE_OK && rows == chunk;
    if (!more) break;
    for (int i = 0; i < w.key_columns; ++i) {
      if (!last[static_cast<size_t>(i)]) {
        rc = SQLITE_NOMEM;
        more = false;
      }
      sqlite3_bind_value(next, i + 2, last[static_cast<size_t>(i)]);
    }
    st = next;
    // Low priority: as long again as the chunk took, so the check takes at most half a core.
    if (more && !integrity_pause(std::max<std::chrono::steady_clock::duration>(
                    std::chrono::steady_clock::now() - start, std::chrono::milliseconds(1)))) {
      break;
    }
  }
  for (sqlite3_value* v : last) sqlite3_value_free(v);
  sqlite3_finalize(first);
  sqlite3_finalize(next);
  if (rc == SQLITE_OK) return Status::Ok();
  return status_from_sqlite(rc, db, std::string("integrity check of ") + w.from, false);
}

void SqliteStore::integrity_check_loop() {
  // Low priority for this thread alone (Linux: a thread's nice value is its own).
  setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), 10);
  const auto start = std::chrono::steady_clock::now();
  Status status;
  sqlite3* db = nullptr;
  int rc = open_connection(options_.path, SQLITE_OPEN_READWRITE, &db);
  if (rc == SQLITE_OK) {
    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, options_.busy_timeout_ms);
    rc = sqlite3_exec(db, "PRAGMA query_only=1; PRAGMA cell_size_check=ON", nullptr, nullptr,
                      nullptr);
  }
  if (rc != SQLITE_OK) status = status_from_sqlite(rc, db, "integrity check", false);
  for (const char* table : kSmallTables) {
    if (!status.ok()) break;
    sqlite3_stmt* st = nullptr;
    std::string verdict;
    rc = sqlite3_prepare_v2(db, (std::string("PRAGMA quick_check(") + table + ")").c_str(), -1, &st,
                            nullptr);
    if (rc == SQLITE_OK) rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) verdict.assign(column_view(st, 0));
    sqlite3_finalize(st);
    if (rc != SQLITE_ROW) {
      status = status_from_sqlite(sqlite3_extended_errcode(db), db,
                                  std::string("integrity check of ") + table, false);
    } else if (verdict != "ok") {
      status = Status::Corrupt(std::string("PRAGMA quick_check(") + table + "): " + verdict);
    }
  }
  bool stopped = false;
  for (size_t walk = 0; walk < std::size(kBtreeWalks) && status.ok() && !stopped; ++walk) {
    status = walk_btree(db, walk);
    MutexLock lock(integrity_mu_);
    stopped = integrity_stop_;
  }
  sqlite3_close_v2(db);
  if (stopped && status.ok()) return;  // the store is closing: the next start checks again
  const double seconds = elapsed_ms(start) / 1000.0;
  integrity_seconds_.store(seconds);
  if (status.code() == StatusCode::kCorrupt) {
    damaged_.store(true);
    integrity_.store(StoreStats::Integrity::kDamaged);
    note_failure(Status::Corrupt("the integrity check after a clean-stop start found damage (" +
                                 status.message() + "); writes are refused"));
    return;
  }
  if (!status.ok()) {
    integrity_.store(StoreStats::Integrity::kFailed);
    note_failure(status);  // a storage_error line (warn): the check could not finish
    return;
  }
  integrity_.store(StoreStats::Integrity::kOk);
  LogFields f;
  f.detail = options_.path;
  f.reason = "ok";
  f.count = integrity_entries_.load();
  f.duration_ms = seconds * 1000;
  log_event(LogLevel::kInfo, "background_integrity_check", f);
}

Status SqliteStore::check_health() {
  if (corrupt_seen_.load()) {
    return Status::Corrupt("database " + options_.path + " reported corruption since start");
  }
  Status failure = engine_->recent_failure();
  if (!failure.ok()) return failure;
  Status status;
  std::unique_ptr<Connection> conn = acquire_reader(status);
  if (!conn) return status;
  int rc = sqlite3_step(conn->health);
  if (rc != SQLITE_ROW) {
    status =
        status_from_sqlite(sqlite3_extended_errcode(conn->db), conn->db, "health check", false);
  }
  sqlite3_reset(conn->health);
  release_reader(std::move(conn));
  note_failure(status);
  return status;
}

}  // namespace tdapi
