// file_ops.cpp: the verified copy of a live database, and working as root among others' files.
#include "store/sqlite/file_ops.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <vector>

#include "base/clock.h"
#include "base/files.h"
#include "store/sqlite/internal.h"

namespace tdapi {

namespace {

// A path as an SQLite URI ("file:" and the path, percent-encoded where the URI syntax needs it).
std::string sqlite_uri(const std::string& path) {
  std::string out = "file:";
  for (unsigned char c : path) {
    if (std::isalnum(c) || std::strchr("/-._~", c)) {
      out += static_cast<char>(c);
    } else {
      char hex[4];
      std::snprintf(hex, sizeof hex, "%%%02X", c);
      out += hex;
    }
  }
  return out;
}

}  // namespace

// Reads a backup's ContentPosition with SQLite: read-only, immutable (nothing written beside
// it, no lock taken), never through a link. False when it is no database with a tests table:
// then it is no backup.
bool content_position(const std::string& path, ContentPosition& out) {
  out = ContentPosition();
  sqlite3* db = nullptr;
  const std::string uri = sqlite_uri(path) + "?mode=ro&immutable=1";
  int rc = sqlite3_open_v2(uri.c_str(), &db,
                           SQLITE_OPEN_READONLY | SQLITE_OPEN_URI | SQLITE_OPEN_NOFOLLOW, nullptr);
  auto one = [&](const char* sql, long long& value) {
    sqlite3_stmt* st = nullptr;
    bool ok = sqlite3_prepare_v2(db, sql, -1, &st, nullptr) == SQLITE_OK &&
              sqlite3_step(st) == SQLITE_ROW;
    if (ok) value = std::max(value, static_cast<long long>(sqlite3_column_int64(st, 0)));
    sqlite3_finalize(st);
    return ok;
  };
  bool ok = rc == SQLITE_OK && one("SELECT coalesce(max(seq), 0) FROM tests", out.tests);
  if (ok) {
    one("SELECT value FROM counters WHERE name = 'last_seq'", out.tests);  // schema 2 and later
    one("SELECT coalesce(max(seq), 0) FROM audit", out.audit);             // schema 3 and later
  }
  sqlite3_close(db);
  return ok;
}

// Removes a temp database and whatever SQLite may have left beside it.
void remove_database_temp(const std::string& path) {
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
    ::unlink((path + suffix).c_str());
  }
}

// Run as root: who else can change what the directory `dir` names. `owner` is the user other
// than root who owns it or a directory above it (0: nobody but root). Internal when root must not
// work there at all: a directory on the way writable by its group or by everyone (without the
// sticky bit), two such users on the way, or a symbolic link on the way owned by another user.
Status who_else_changes(const std::string& dir, uid_t& owner) {
  owner = 0;
  std::string absolute = dir;
  if (absolute.empty() || absolute[0] != '/') {
    char cwd[4096];
    if (!getcwd(cwd, sizeof cwd)) return Status::ReadOnly("cannot resolve " + dir);
    absolute = std::string(cwd) + "/" + dir;
  }
  char real[PATH_MAX];
  if (!realpath(absolute.c_str(), real)) {
    return Status::ReadOnly("cannot resolve " + dir + ": " + errno_text());
  }
  auto judge = [&](const std::string& path) -> Status {
    struct stat st {};
    if (::lstat(path.c_str(), &st) != 0) {
      return Status::ReadOnly("cannot inspect " + path + ": " + errno_text());
    }
    if (S_ISLNK(st.st_mode)) {
      if (st.st_uid == 0) return Status::Ok();
      return Status::Internal(path + " is a symbolic link owned by user " +
                              std::to_string(st.st_uid) + ": root does not follow it");
    }
    if (!S_ISDIR(st.st_mode)) return Status::ReadOnly(path + " is not a directory");
    if ((st.st_mode & (S_IWGRP | S_IWOTH)) != 0 && (st.st_mode & S_ISVTX) == 0) {
      return Status::Internal(path +
                              " can be written by users other than its owner (group or everyone): "
                              "root does not work in it");
    }
    if (st.st_uid != 0) {
      if (owner != 0 && owner != st.st_uid) {
        return Status::Internal(path +
                                " and a directory above it belong to different users: "
                                "root does not work in it");
      }
      owner = st.st_uid;
    }
    return Status::Ok();
  };
  // Every directory and link as written, then as resolved.
  for (const std::string& path : {absolute, std::string(real)}) {
    std::string prefix;
    size_t at = 0;
    Status s = judge("/");
    while (s.ok() && at < path.size()) {
      size_t next = path.find('/', at);
      if (next == std::string::npos) next = path.size();
      std::string part = path.substr(at, next - at);
      at = next + 1;
      if (part.empty() || part == ".") continue;
      prefix += "/" + part;
      s = judge(prefix);
    }
    if (!s.ok()) return s;
  }
  return Status::Ok();
}

// Run as root, the library functions work only where root alone can change names.
Status only_root_changes(const std::string& dir, const char* what) {
  if (geteuid() != 0) return Status::Ok();
  uid_t owner = 0;
  Status s = who_else_changes(dir, owner);
  if (s.ok() && owner != 0) {
    s = Status::Internal(dir + " (or a directory above it) belongs to user " +
                         std::to_string(owner) + ", who could change what its names lead to");
  }
  if (s.ok()) return s;
  return Status::Internal(std::string("as root, ") + what + " works only in a directory no other " +
                          "user can change: " + s.message() +
                          ". Run it as that directory's owner (the command does so itself)");
}

void write_facts(JsonWriter& w, const DatabaseFacts& f) {
  w.field("schema_version", f.schema_version);
  w.field("tests", f.tests);
  w.field("versions", f.versions);
  w.field("audit_entries", f.audit_entries);
  w.field("keys", f.keys);
  w.field("audit_head", f.audit_head);
}

std::string facts_json(const DatabaseFacts& f) {
  std::string out;
  JsonWriter w(out);
  w.begin_object();
  write_facts(w, f);
  w.end_object();
  return out;
}

// "2026-11-30T01:02:03.456Z" -> "20261130T010203.456Z".
std::string compact_timestamp(const std::string& ts) {
  std::string out;
  for (char c : ts) {
    if (c != '-' && c != ':') out += c;
  }
  return out;
}

Status backup_database(const std::string& db, const std::string& dest, BackupResult& out) {
  out = BackupResult();
  auto start = std::chrono::steady_clock::now();
  if (path_exists(dest))
    return Status::Internal(dest + " exists already; backup never replaces a file");
  // SQLite writes the copy by name: as root only where no other user can change names.
  Status where = only_root_changes(dir_of(dest), "backup");
  if (!where.ok()) return where;
  std::string tmp;
  int fd = make_temp_beside(dest, "tmp", tmp);
  if (fd < 0) return Status::ReadOnly("cannot create a file beside " + dest + ": " + errno_text());
  DatabaseFacts snapshot;
  Status s = sqlite_backup_file(db, tmp, snapshot);
  out.copy_seconds = seconds_since(start);
  auto verify_start = std::chrono::steady_clock::now();
  // What the service has been running on is copied as it is (a schema changed by hand shows at a
  // restore, which refuses it).
  if (s.ok()) s = sqlite_check_file(tmp, false, out.facts);
  if (s.ok() &&
      (out.facts.schema_version != snapshot.schema_version || out.facts.tests != snapshot.tests ||
       out.facts.versions != snapshot.versions || out.facts.keys != snapshot.keys ||
       out.facts.audit_entries != snapshot.audit_entries ||
       out.facts.audit_head != snapshot.audit_head)) {
    s = Status::Internal("the copy differs from the snapshot it was taken from: " +
                         facts_json(out.facts) + " instead of " + facts_json(snapshot));
  }
  if (s.ok() && !still_names(tmp, fd)) {
    s = Status::Internal(tmp + " was replaced while the copy was made");
  }
  if (s.ok() && fsync(fd) != 0) s = Status::IoError("cannot fsync " + tmp + ": " + errno_text());
  // link() fails rather than replace a file that appeared at dest meanwhile.
  if (s.ok() && ::link(tmp.c_str(), dest.c_str()) != 0) {
    s = Status::Internal("cannot move the copy to " + dest + ": " + errno_text());
  }
  ::close(fd);
  remove_database_temp(tmp);
  if (s.ok() && !fsync_dir(dir_of(dest))) {
    s = Status::IoError("cannot fsync the directory of " + dest + ": " + errno_text());
    ::unlink(dest.c_str());
  }
  if (!s.ok()) return s;
  out.facts.backup_steps = snapshot.backup_steps;
  out.facts.restarts = snapshot.restarts;
  out.file = dest;
  out.bytes = file_size(dest);
  out.verify_seconds = seconds_since(verify_start);
  out.seconds = seconds_since(start);
  return Status::Ok();
}

std::string pre_migration_backup_path(const std::string& db, int from) {
  return db + ".pre-migration-v" + std::to_string(from) + "-" +
         compact_timestamp(utc_timestamp_ms());
}

// ---- Online copy, check, settle --------------------------------------------------------

namespace {

// Pages per sqlite3_backup_step: 1 MiB of 4 KiB pages. The source's read transaction is held
// across steps, so the chunk size bounds only how long one call runs, not what writers see.
constexpr int kBackupStepPages = 256;
// Steps between two fdatasync calls on the copy: 16 MiB of dirty pages at most.
constexpr long long kBackupSyncSteps = 16;

// Runs sql and puts the first column of its first row into out ("" for no row). SQLITE_OK or
// the extended error code.
int query_one(sqlite3* db, const char* sql, std::string& out) {
  sqlite3_stmt* st = nullptr;
  int rc = sqlite3_prepare_v2(db, sql, -1, &st, nullptr);
  if (rc != SQLITE_OK) return sqlite3_extended_errcode(db);
  rc = sqlite3_step(st);
  out.clear();
  if (rc == SQLITE_ROW) out.assign(column_view(st, 0));
  rc = rc == SQLITE_ROW || rc == SQLITE_DONE ? SQLITE_OK : sqlite3_extended_errcode(db);
  sqlite3_finalize(st);
  return rc;
}

// Counts the facts of db (inside whatever transaction is open on it).
int count_facts(sqlite3* db, DatabaseFacts& f) {
  std::string v;
  int rc = query_one(db, "PRAGMA user_version", v);
  if (rc != SQLITE_OK) return rc;
  f.schema_version = std::atoi(v.c_str());
  rc = query_one(db, "SELECT count(*) FROM tests", v);
  if (rc != SQLITE_OK) return rc;
  f.tests = std::atoll(v.c_str());
  if (f.schema_version >= 4) {
    // From schema 5, an uncorrected test's version 1 is in its tests row (created_by set).
    rc = query_one(db,
                   f.schema_version >= 5
                       ? "SELECT (SELECT count(*) FROM test_versions) + (SELECT count(*) FROM tests"
                         " WHERE version = 1 AND created_by IS NOT NULL)"
                       : "SELECT count(*) FROM test_versions",
                   v);
    if (rc != SQLITE_OK) return rc;
    f.versions = std::atoll(v.c_str());
  }
  if (f.schema_version < 3) return SQLITE_OK;  // no keys, no audit trail yet
  rc = query_one(db, "SELECT count(*) FROM api_keys", v);
  if (rc != SQLITE_OK) return rc;
  f.keys = std::atoll(v.c_str());
  rc = query_one(db, "SELECT count(*) FROM audit", v);
  if (rc != SQLITE_OK) return rc;
  f.audit_entries = std::atoll(v.c_str());
  return query_one(db, "SELECT seq || ':' || hash FROM audit ORDER BY seq DESC LIMIT 1",
                   f.audit_head);
}

// The largest document a record the API accepts can have: every character of its fields
// escaped as a UTF-16 surrogate pair (12 bytes), plus names, punctuation and created_at.
constexpr long long kMaxDocBytes =
    12 * static_cast<long long>(3 * kMaxIdChars + kMaxTestTypeChars + kMaxResultChars) + 1024;

// The first test whose stored document (what GET /tests/{id} serves) disagrees with its columns
// (what listings and authorization read), or that is larger than the API accepts (validate.cpp's
// limits): exactly the keys test_document writes (before schema 4: test_record_json), each a
// string (version: an integer) equal to its column. From schema 4 on, also a test whose current
// version has no row in test_versions of its clinic and status; from schema 5 on, where the
// tests row holds version 1 (created_by set), a test with any row in test_versions or whose seq
// is taken there (its version 1's change_seq), whose rowid is not its seq (kAllVersionsSql), or
// whose seq is not above counters.last_seq_before_v5 (the feed would not read it). And a test
// that lacks one of its versions 1 to the current one (its history and the feed would).
std::string rows_check_sql(int schema_version) {
  const bool versions = schema_version >= 4;
  // keys a document has
  const std::string n = versions ? "(8 + (created_at != ''))" : "(5 + (created_at != ''))";
  std::string sql =
      "SELECT seq FROM tests WHERE length(test_id) > " + std::to_string(kMaxIdChars) +
      " OR length(patient_id) > " + std::to_string(kMaxIdChars) + " OR length(clinic_id) > " +
      std::to_string(kMaxIdChars) + " OR length(test_type) > " + std::to_string(kMaxTestTypeChars) +
      " OR length(result) > " + std::to_string(kMaxResultChars) +
      " OR length(created_at) > 64 OR length(CAST(doc AS BLOB)) > " + std::to_string(kMaxDocBytes);
  if (versions) {
    sql +=
        " OR length(updated_at) > 64 OR version < 1 OR status NOT IN ('preliminary', 'final',"
        " 'amended', 'corrected', 'entered-in-error')";
  }
  sql +=
      " OR CASE WHEN NOT json_valid(doc) OR json_type(doc) IS NOT 'object' THEN 1 ELSE ("
      "(SELECT count(*) FROM json_each(doc)) != " +
      n +
      " OR (SELECT count(DISTINCT key) FROM json_each(doc) WHERE key IN ('test_id', "
      "'patient_id', 'clinic_id', 'test_type', 'result', 'created_at'" +
      std::string(versions ? ", 'status', 'version', 'updated_at'" : "") + ")) != " + n;
  std::vector<std::string> columns = {"test_id", "patient_id", "clinic_id", "test_type", "result"};
  if (versions) {
    columns.push_back("status");
    columns.push_back("updated_at");
  }
  for (const std::string& c : columns) {
    sql += " OR json_type(doc, '$." + c + "') IS NOT 'text' OR json_extract(doc, '$." + c +
           "') IS NOT " + c;
  }
  if (versions) {
    sql +=
        " OR json_type(doc, '$.version') IS NOT 'integer' OR json_extract(doc, '$.version') IS "
        "NOT version";
  }
  sql +=
      " OR (created_at != '' AND (json_type(doc, '$.created_at') IS NOT 'text' OR "
      "json_extract(doc, '$.created_at') IS NOT created_at))) END";
  const std::string current_version_missing =
      "NOT EXISTS (SELECT 1 FROM test_versions v WHERE v.test_id = tests.test_id AND"
      " v.version = tests.version AND v.clinic_id = tests.clinic_id AND v.status = tests.status)";
  if (schema_version >= 5) {
    sql +=
        " OR length(created_by) > 128 OR CASE WHEN version = 1 AND created_by IS NOT NULL THEN"
        " rowid <> seq OR EXISTS (SELECT 1 FROM test_versions v WHERE v.test_id = tests.test_id)"
        " OR EXISTS (SELECT 1 FROM test_versions v WHERE v.change_seq = tests.seq)"
        " OR seq <= " TDAPI_FIRST_VERSIONS_IN_ROWS_AFTER " ELSE " +
        current_version_missing + " END";
  } else if (versions) {
    sql += " OR " + current_version_missing;
  }
  if (versions) {
    // Every version from 1 to the current one, each once (UNIQUE (test_id, version);
    // versions_check_sql refuses one newer than its test's).
    sql += " OR (SELECT count(*) FROM test_versions v WHERE v.test_id = tests.test_id)";
    if (schema_version >= 5) sql += " + (version = 1 AND created_by IS NOT NULL)";
    sql += " != version";
  }
  return sql + " LIMIT 1";
}

// Schema 4 and later: the first version (change_seq) whose document disagrees with its columns
// or with its test (the test_id, clinic and patient of the tests row, which never change; a
// version no newer than the test's current one), that is larger than the API accepts, or whose
// reason is missing on a correction (every version but 1) or present on a create.
std::string versions_check_sql() {
  std::string sql =
      "SELECT change_seq FROM test_versions v WHERE length(CAST(doc AS BLOB)) > " +
      std::to_string(kMaxDocBytes) +
      " OR length(changed_by) > 128 OR length(changed_at) > 64 OR length(reason) > 500"
      " OR version < 1 OR (version = 1) != (reason IS NULL)"
      " OR status NOT IN ('preliminary', 'final', 'amended', 'corrected', 'entered-in-error')"
      " OR CASE WHEN NOT json_valid(doc) OR json_type(doc) IS NOT 'object' THEN 1 ELSE ("
      "(SELECT count(*) FROM json_each(doc)) != (SELECT count(DISTINCT key) FROM json_each(doc)"
      " WHERE key IN ('test_id', 'patient_id', 'clinic_id', 'test_type', 'result', 'created_at',"
      " 'status', 'version', 'updated_at'))"
      " OR json_type(doc, '$.patient_id') IS NOT 'text' OR json_type(doc, '$.test_type') IS NOT"
      " 'text' OR json_type(doc, '$.result') IS NOT 'text'"
      " OR json_type(doc, '$.version') IS NOT 'integer' OR json_extract(doc, '$.version') IS NOT"
      " version";
  for (const char* c : {"test_id", "clinic_id", "status"}) {
    sql += std::string(" OR json_type(doc, '$.") + c + "') IS NOT 'text' OR json_extract(doc, '$." +
           c + "') IS NOT " + c;
  }
  sql +=
      " OR json_type(doc, '$.updated_at') IS NOT 'text' OR json_extract(doc, '$.updated_at') IS"
      " NOT changed_at"
      " OR NOT EXISTS (SELECT 1 FROM tests t WHERE t.test_id = v.test_id AND t.clinic_id ="
      " v.clinic_id AND t.version >= v.version AND t.patient_id IS json_extract(v.doc,"
      " '$.patient_id'))) END LIMIT 1";
  return sql;
}

}  // namespace

Status sqlite_backup_file(const std::string& source, const std::string& dest,
                          DatabaseFacts& snapshot) {
  snapshot = DatabaseFacts();
  if (!std::filesystem::exists(source)) return Status::ReadOnly("no database at " + source);
  DbHandle src, dst;
  int rc = open_connection(source, SQLITE_OPEN_READWRITE, &src.db);
  if (rc != SQLITE_OK) {
    return status_from_sqlite(rc, src.db, "cannot open database " + source, false);
  }
  sqlite3_extended_result_codes(src.db, 1);
  sqlite3_busy_timeout(src.db, 5000);
  // The snapshot: the first read of this transaction starts it; it is held until the copy is
  // done. In WAL mode it blocks no writer; commits made meanwhile are not in the copy.
  rc = sqlite3_exec(src.db, "PRAGMA query_only=1; BEGIN", nullptr, nullptr, nullptr);
  if (rc == SQLITE_OK) rc = count_facts(src.db, snapshot);
  if (rc != SQLITE_OK) {
    return status_from_sqlite(sqlite3_extended_errcode(src.db), src.db,
                              "cannot read database " + source, false);
  }
  rc = open_connection(dest, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOFOLLOW,
                       &dst.db);
  if (rc == SQLITE_OK) {
    sqlite3_extended_result_codes(dst.db, 1);
    // The copy is fsynced and checked as a whole afterwards: no journal, no syncs meanwhile.
    rc = sqlite3_exec(dst.db, "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF", nullptr, nullptr,
                      nullptr);
  }
  if (rc != SQLITE_OK) return status_from_sqlite(rc, dst.db, "cannot create " + dest, true);
  sqlite3_backup* b = sqlite3_backup_init(dst.db, "main", src.db, "main");
  if (!b) {
    return status_from_sqlite(sqlite3_extended_errcode(dst.db), dst.db,
                              "cannot start the backup into " + dest, true);
  }
  // The copy is written back to disk as it goes, a chunk at a time: left to the end, the
  // flush of the whole file made the service's own commit fsyncs wait about a second (measured
  // on a 570 MB database under a POST load).
  int sync_fd = ::open(dest.c_str(), O_RDONLY | O_CLOEXEC);
  int remaining = -1, busy = 0;
  do {
    rc = sqlite3_backup_step(b, kBackupStepPages);
    ++snapshot.backup_steps;
    if (sync_fd >= 0 && snapshot.backup_steps % kBackupSyncSteps == 0) fdatasync(sync_fd);
    int now = sqlite3_backup_remaining(b);
    if (remaining >= 0 && now > remaining) ++snapshot.restarts;
    remaining = now;
    if ((rc == SQLITE_BUSY || rc == SQLITE_LOCKED) && ++busy <= 500) {
      sqlite3_sleep(10);
      rc = SQLITE_OK;
    }
  } while (rc == SQLITE_OK);
  int finish_rc = sqlite3_backup_finish(b);
  if (sync_fd >= 0) {
    fdatasync(sync_fd);
    ::close(sync_fd);  // no SQLite lock of this process is on dest: closing drops nothing
  }
  if (rc != SQLITE_DONE || finish_rc != SQLITE_OK) {
    int code = rc != SQLITE_DONE ? rc : finish_rc;
    // The destination's message when it failed there (a full disk), else the source's.
    sqlite3* which = sqlite3_errcode(dst.db) != SQLITE_OK ? dst.db : src.db;
    return status_from_sqlite(code, which, "backup of " + source + " into " + dest, true);
  }
  return Status::Ok();
}

Status sqlite_check_file(const std::string& path, bool exact_schema, DatabaseFacts& out) {
  out = DatabaseFacts();
  if (!std::filesystem::exists(path)) return Status::ReadOnly("no file at " + path);
  DbHandle h;
  int rc = open_connection(path, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOFOLLOW, &h.db);
  if (rc != SQLITE_OK) return status_from_sqlite(rc, h.db, "cannot open " + path, false);
  sqlite3_extended_result_codes(h.db, 1);
  sqlite3_busy_timeout(h.db, 1000);
  std::string mode;
  rc = query_one(h.db, "PRAGMA journal_mode=DELETE", mode);
  if (rc != SQLITE_OK)
    return status_from_sqlite(rc, h.db, path + " is not a usable database", false);
  if (mode != "delete") return Status::Internal("cannot take " + path + " out of WAL mode");

  sqlite3_stmt* st = nullptr;
  rc = sqlite3_prepare_v2(h.db, "PRAGMA integrity_check(10)", -1, &st, nullptr);
  std::string verdict;
  while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
    verdict += (verdict.empty() ? "" : "; ") + std::string(column_view(st, 0));
    rc = SQLITE_OK;
  }
  if (rc != SQLITE_DONE) rc = sqlite3_extended_errcode(h.db);
  sqlite3_finalize(st);
  if (rc != SQLITE_DONE) {
    return status_from_sqlite(rc, h.db, path + " failed PRAGMA integrity_check", false);
  }
  if (verdict != "ok") return Status::Corrupt(path + " failed PRAGMA integrity_check: " + verdict);

  std::string v;
  rc = query_one(h.db, "PRAGMA user_version", v);
  if (rc != SQLITE_OK) return status_from_sqlite(rc, h.db, "cannot read " + path, false);
  const int version = std::atoi(v.c_str());
  if (version > SqliteStore::kSchemaVersion) {
    return Status::Internal(path + " has schema version " + v +
                            ": it was written by a newer release of testdata-api than this one "
                            "(schema " +
                            std::to_string(SqliteStore::kSchemaVersion) + ")");
  }
  if (version < 1) {
    return Status::Internal(path + " has schema version " + v +
                            ": it is not a testdata-api database");
  }
  if (exact_schema) {
    Status schema = check_schema(h.db, version, path, false);
    if (!schema.ok()) return schema;
  }
  rc = query_one(h.db, "SELECT length(value) FROM meta WHERE name = 'cursor_key'", v);
  if (rc != SQLITE_OK || v != "16") {
    return Status::Corrupt(path + " has no cursor key in its meta table");
  }
  if (exact_schema) {
    const std::string sql = rows_check_sql(version);
    rc = query_one(h.db, sql.c_str(), v);
    if (rc != SQLITE_OK)
      return status_from_sqlite(rc, h.db, "cannot check the tests of " + path, false);
    if (!v.empty()) {
      return Status::Corrupt(path + ": the test with seq " + v +
                             " has a stored document that disagrees with its columns (test_id, "
                             "patient_id, clinic_id, test_type, result, created_at, status, "
                             "version, updated_at) or its versions, or is larger than the API "
                             "accepts: it was changed outside testdata-api");
    }
    if (version >= 4) {
      const std::string vsql = versions_check_sql();
      rc = query_one(h.db, vsql.c_str(), v);
      if (rc != SQLITE_OK)
        return status_from_sqlite(rc, h.db, "cannot check the versions of " + path, false);
      if (!v.empty()) {
        return Status::Corrupt(path + ": the version with change_seq " + v +
                               " has a stored document that disagrees with its columns or its "
                               "test, or is larger than the API accepts: it was changed outside "
                               "testdata-api");
      }
    }
  }
  rc = count_facts(h.db, out);
  if (rc != SQLITE_OK)
    return status_from_sqlite(rc, h.db, "cannot count the rows of " + path, false);
  if (version < 3) return Status::Ok();

  // The audit chain, entry by entry (one SHA-256 each): the verifier of `audit verify` too.
  AuditChainVerifier verifier;
  std::string problem;
  AuditTrail trail;
  trail.list_all = [&](const std::function<bool(const AuditEntry&)>& on_entry) {
    sqlite3_stmt* st = nullptr;
    int rc = sqlite3_prepare_v2(h.db,
                                "SELECT seq, ts, request_id, key_id, action, clinic_id, detail,"
                                " outcome, prev_hash, hash FROM audit ORDER BY seq",
                                -1, &st, nullptr);
    AuditEntry e;
    while (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
      e.seq = sqlite3_column_int64(st, 0);
      std::string* texts[] = {&e.ts, &e.request_id, &e.key_id, &e.action, &e.clinic_id, &e.detail};
      for (int i = 0; i < 6; ++i) texts[i]->assign(column_view(st, i + 1));
      e.outcome = sqlite3_column_int(st, 7);
      e.prev_hash.assign(column_view(st, 8));
      e.hash.assign(column_view(st, 9));
      rc = on_entry(e) ? SQLITE_OK : SQLITE_DONE;
    }
    if (rc != SQLITE_DONE) rc = sqlite3_extended_errcode(h.db);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? Status::Ok()
                             : status_from_sqlite(rc, h.db, "cannot read the audit trail", false);
  };
  trail.count_up_to = [&](long long up_to, long long& rows) {
    std::string n;
    const std::string sql = "SELECT count(*) FROM audit WHERE seq <= " + std::to_string(up_to);
    int rc = query_one(h.db, sql.c_str(), n);
    rows = std::atoll(n.c_str());
    return rc == SQLITE_OK ? Status::Ok()
                           : status_from_sqlite(rc, h.db, "cannot count the audit trail", false);
  };
  Status chain = verify_audit_trail(trail, verifier, problem);
  if (!chain.ok()) return chain;
  if (!problem.empty()) return Status::Corrupt(path + ": the audit chain is broken: " + problem);
  const std::string head = verifier.checked() == 0
                               ? std::string()
                               : std::to_string(verifier.last_seq()) + ":" + verifier.last_hash();
  if (verifier.checked() != out.audit_entries || head != out.audit_head) {
    return Status::Corrupt(path + ": the audit chain does not end at its newest entry");
  }
  return Status::Ok();
}

Status sqlite_settle_unused(const std::string& path) {
  DbHandle h;
  int rc = open_connection(path, SQLITE_OPEN_READWRITE, &h.db);
  if (rc != SQLITE_OK) return status_from_sqlite(rc, h.db, "cannot open " + path, true);
  sqlite3_extended_result_codes(h.db, 1);
  sqlite3_busy_timeout(h.db, 0);  // a lock held by a running service is the answer, not a wait
  std::string mode;
  rc = query_one(h.db, "PRAGMA journal_mode=DELETE", mode);
  if ((rc & 0xff) == SQLITE_BUSY || (rc & 0xff) == SQLITE_LOCKED) {
    return Status::Busy(path + " is open in another process (the service is running on it)");
  }
  if (rc != SQLITE_OK) return status_from_sqlite(rc, h.db, "cannot settle " + path, true);
  if (mode != "delete") return Status::Internal("cannot take " + path + " out of WAL mode");
  return Status::Ok();
}

Status sqlite_new_cursor_key(const std::string& path) {
  DbHandle h;
  int rc = open_connection(path, SQLITE_OPEN_READWRITE, &h.db);
  if (rc != SQLITE_OK) return status_from_sqlite(rc, h.db, "cannot open " + path, true);
  sqlite3_extended_result_codes(h.db, 1);
  rc = sqlite3_exec(h.db, "UPDATE meta SET value = randomblob(16) WHERE name = 'cursor_key'",
                    nullptr, nullptr, nullptr);
  if (rc != SQLITE_OK) {
    return status_from_sqlite(sqlite3_extended_errcode(h.db), h.db,
                              "cannot give " + path + " a new cursor key", true);
  }
  if (sqlite3_changes(h.db) != 1) return Status::Internal(path + " has no cursor key");
  return Status::Ok();
}

}  // namespace tdapi
