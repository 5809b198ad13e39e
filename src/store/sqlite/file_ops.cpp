// file_ops.cpp: the verified copy of a live database, and working as root among others' files.
#include "store/sqlite/file_ops.h"

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

#include "base/clock.h"
#include "base/files.h"

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
       out.facts.keys != snapshot.keys || out.facts.audit_entries != snapshot.audit_entries ||
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

}  // namespace tdapi
