// backup.cpp: the backup and restore commands: temp files, fsyncs, renames, rotation, output.
// The SQLite work itself (online copy, checks, settling) is in store_sqlite.cpp.
#include "backup.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "clock.h"
#include "json.h"
#include "options.h"
#include "store_pg.h"

namespace tdapi {

namespace {

const char kBackupUsage[] =
    "usage: testdata-api backup [--db PATH] --to FILE\n"
    "       testdata-api backup [--db PATH] --to-dir DIR [--keep N]\n"
    "       testdata-api restore --from FILE [--db PATH]\n"
    "PATH: the SQLite database (default: $DB_PATH). DIR: default $BACKUP_DIR; N: how many of the\n"
    "newest backups in DIR to keep (default $BACKUP_KEEP, else 7). backup copies while the "
    "service\n"
    "runs; restore refuses while it runs. PostgreSQL (DATABASE_URL): use pg_dump/pg_basebackup.\n";

const char kPostgresAdvice[] =
    " names a PostgreSQL database: backup and restore copy SQLite files only. Back up PostgreSQL "
    "with its own tools: pg_dump --format=custom (a logical copy; restore it with pg_restore into "
    "an empty database while the service is stopped) or pg_basebackup with WAL archiving (a "
    "physical copy, for point-in-time recovery). See README 'Backup and restore'";

int usage(const std::string& why) {
  std::cerr << "testdata-api: " << why << "\n" << kBackupUsage;
  return kExitUsage;
}

// A PostgreSQL database: bad usage of these commands, answered with what to use instead.
int refuse_postgres(const std::string& why) {
  std::cerr << "testdata-api: " << why << kPostgresAdvice << "\n";
  return kExitUsage;
}

int fail(const char* command, const std::string& why) {
  std::cerr << "testdata-api " << command << ": " << why << "\n";
  return kExitFailure;
}

std::string dir_of(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
}

std::string base_of(const std::string& path) {
  size_t slash = path.rfind('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

std::string errno_text() { return std::strerror(errno); }

bool fsync_fd_path(const std::string& path, int flags) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = fsync(fd) == 0;
  ::close(fd);
  return ok;
}

bool fsync_file(const std::string& path) { return fsync_fd_path(path, O_RDONLY); }
bool fsync_dir(const std::string& dir) { return fsync_fd_path(dir, O_RDONLY | O_DIRECTORY); }

// Removes a temp database and whatever SQLite may have left beside it.
void remove_temp(const std::string& path) {
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
    ::unlink((path + suffix).c_str());
  }
}

// Creates an empty 0600 file "DIR/.NAME.TAG-XXXXXX" beside path; false with errno.
bool make_temp_beside(const std::string& path, const char* tag, std::string& out) {
  std::string tmpl = dir_of(path) + "/." + base_of(path) + "." + tag + "-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  int fd = mkstemp(buf.data());
  if (fd < 0) return false;
  ::close(fd);
  out.assign(buf.data());
  return true;
}

long long file_size(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? static_cast<long long>(st.st_size) : -1;
}

bool exists(const std::string& path) {
  struct stat st {};
  return ::lstat(path.c_str(), &st) == 0;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return elapsed_ms(start) / 1000.0;
}

// The pid of a process holding SQLite's shared lock on the database file (any connection in
// WAL mode holds it while open), or 0. Asked with F_GETLK before this process opens the file
// with SQLite (closing our descriptor would drop this process's own POSIX locks on it).
long holder_pid(const std::string& db) {
  int fd = ::open(db.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  struct flock lk {};
  lk.l_type = F_WRLCK;
  lk.l_whence = SEEK_SET;
  lk.l_start = 0x40000000 + 2;  // SQLite's SHARED_FIRST (PENDING_BYTE + 2), SHARED_SIZE bytes
  lk.l_len = 510;
  long pid = 0;
  if (fcntl(fd, F_GETLK, &lk) == 0 && lk.l_type != F_UNLCK) pid = lk.l_pid;
  ::close(fd);
  return pid;
}

// True when another process holds an flock on dir: scripts/run.sh holds one on its DATA_DIR
// for as long as it supervises the service, also while it restarts a crashed app.
bool dir_locked(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return false;
  bool locked = flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
  ::close(fd);  // releases the shared lock, if taken
  return locked;
}

// Copies the bytes of `from` into the open descriptor `to` and fsyncs it.
bool copy_into(const std::string& from, int to, std::string& error) {
  int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (in < 0) {
    error = "cannot read " + from + ": " + errno_text();
    return false;
  }
  std::vector<char> buf(1 << 20);
  bool ok = true;
  for (;;) {
    ssize_t n = ::read(in, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      error = "cannot read " + from + ": " + errno_text();
      ok = false;
      break;
    }
    if (n == 0) break;
    for (ssize_t done = 0; done < n;) {
      ssize_t w = ::write(to, buf.data() + done, static_cast<size_t>(n - done));
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        error = "cannot write the copy: " + errno_text();
        ok = false;
        break;
      }
      done += w;
    }
    if (!ok) break;
  }
  ::close(in);
  if (ok && fsync(to) != 0) {
    error = "cannot fsync the copy: " + errno_text();
    ok = false;
  }
  return ok;
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

}  // namespace

Status backup_database(const std::string& db, const std::string& dest, BackupResult& out) {
  out = BackupResult();
  auto start = std::chrono::steady_clock::now();
  if (exists(dest)) return Status::Internal(dest + " exists already; backup never replaces a file");
  std::string tmp;
  if (!make_temp_beside(dest, "tmp", tmp)) {
    return Status::ReadOnly("cannot create a file beside " + dest + ": " + errno_text());
  }
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
  if (s.ok() && !fsync_file(tmp)) s = Status::IoError("cannot fsync " + tmp + ": " + errno_text());
  // link() fails rather than replace a file that appeared at dest meanwhile.
  if (s.ok() && ::link(tmp.c_str(), dest.c_str()) != 0) {
    s = Status::Internal("cannot move the copy to " + dest + ": " + errno_text());
  }
  remove_temp(tmp);
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

std::string backup_file_name(const std::string& utc_timestamp) {
  return "testdata-" + compact_timestamp(utc_timestamp) + ".db";
}

std::string pre_migration_backup_path(const std::string& db, int from) {
  return db + ".pre-migration-v" + std::to_string(from) + "-" +
         compact_timestamp(utc_timestamp_ms());
}

bool is_backup_file_name(const std::string& name) {
  // testdata-YYYYMMDDTHHMMSS.mmmZ.db
  static const std::string shape = "testdata-00000000T000000.000Z.db";
  if (name.size() != shape.size()) return false;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == '0' ? (name[i] < '0' || name[i] > '9') : name[i] != shape[i]) return false;
  }
  return true;
}

Status rotate_backups(const std::string& dir, int keep, std::vector<std::string>& removed) {
  removed.clear();
  DIR* d = ::opendir(dir.c_str());
  if (!d) return Status::ReadOnly("cannot list " + dir + ": " + errno_text());
  std::vector<std::string> names;
  while (dirent* e = ::readdir(d)) {
    if (is_backup_file_name(e->d_name)) names.emplace_back(e->d_name);
  }
  ::closedir(d);
  std::sort(names.begin(), names.end());  // oldest first
  for (size_t i = 0; i + static_cast<size_t>(keep) < names.size(); ++i) {
    std::string path = dir + "/" + names[i];
    if (::unlink(path.c_str()) != 0) {
      return Status::ReadOnly("cannot remove the old backup " + path + ": " + errno_text());
    }
    removed.push_back(names[i]);
  }
  if (!removed.empty()) fsync_dir(dir);
  return Status::Ok();
}

Status restore_database(const std::string& from, const std::string& db, RestoreResult& out) {
  out = RestoreResult();
  auto start = std::chrono::steady_clock::now();
  struct stat from_st {};
  if (::stat(from.c_str(), &from_st) != 0 || !S_ISREG(from_st.st_mode)) {
    return Status::ReadOnly("no backup file at " + from);
  }
  if (exists(from + "-wal")) {
    return Status::Internal(from +
                            " has a -wal file beside it: it is a live database, not a "
                            "backup. Take a backup of it with testdata-api backup");
  }
  // A running service first: nothing is copied while it runs.
  if (dir_locked(dir_of(db))) {
    return Status::Busy(dir_of(db) +
                        " is locked by scripts/run.sh (make run): the service is running on "
                        "it; stop it first (Ctrl-C)");
  }
  const bool had_db = exists(db);
  if (had_db) {
    long pid = holder_pid(db);
    if (pid > 0) {
      return Status::Busy(db + " is open in process " + std::to_string(pid) +
                          " (the service is running on it): stop it first (systemctl stop "
                          "testdata-api, or Ctrl-C on make run)");
    }
  } else if (exists(db + "-wal")) {
    return Status::Internal(db + "-wal exists without " + db +
                            ": move it away first (it would be replayed into the restored file)");
  }

  std::string tmp;
  if (!make_temp_beside(db, "restore", tmp)) {
    return Status::ReadOnly("cannot create a file beside " + db + ": " + errno_text());
  }
  std::string error;
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CLOEXEC);
  bool copied = fd >= 0 && copy_into(from, fd, error);
  if (fd >= 0) ::close(fd);
  if (!copied) {
    remove_temp(tmp);
    return Status::IoError(error.empty() ? "cannot open " + tmp + ": " + errno_text() : error);
  }
  Status s = sqlite_check_file(tmp, true, out.facts);
  if (!s.ok()) {
    remove_temp(tmp);
    // Name the backup, not the temp copy the check ran on.
    std::string why = s.message();
    for (size_t at; (at = why.find(tmp)) != std::string::npos;) why.replace(at, tmp.size(), from);
    return s.code() == StatusCode::kInternal ? Status::Internal(why) : Status::Corrupt(why);
  }
  if (!fsync_file(tmp)) {
    remove_temp(tmp);
    return Status::IoError("cannot fsync " + tmp + ": " + errno_text());
  }

  // The database being replaced: its WAL checkpointed into it, so the file kept aside is
  // whole. SQLite's own lock says whether anyone still has it open. A WAL is copied aside first:
  // if the database turns out damaged, the copy stays beside the kept file, unread.
  if (had_db) out.replaced = db + ".replaced-" + compact_timestamp(utc_timestamp_ms());
  const std::string wal = db + "-wal", kept_wal = out.replaced + "-wal";
  bool wal_kept = false;
  if (had_db && file_size(wal) > 0) {
    int wfd = ::open(kept_wal.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (wfd < 0 || !copy_into(wal, wfd, error)) {
      if (wfd >= 0) ::close(wfd);
      ::unlink(kept_wal.c_str());
      remove_temp(tmp);
      return Status::ReadOnly("cannot keep a copy of " + wal + ": " +
                              (error.empty() ? errno_text() : error));
    }
    ::close(wfd);
    wal_kept = true;
  }
  if (had_db) {
    s = sqlite_settle_unused(db);
    if (s.code() == StatusCode::kBusy) {
      if (wal_kept) ::unlink(kept_wal.c_str());
      remove_temp(tmp);
      return Status::Busy(s.message() +
                          ": stop it first (systemctl stop testdata-api, or Ctrl-C "
                          "on make run)");
    }
    if (s.ok() && wal_kept) {
      ::unlink(kept_wal.c_str());  // checkpointed into the file kept aside
      wal_kept = false;
    }
  }
  // Run as root (e.g. sudo), the service user must still own its database.
  struct stat owner {};
  if (geteuid() == 0 && (::stat(had_db ? db.c_str() : dir_of(db).c_str(), &owner) == 0)) {
    if (::chown(tmp.c_str(), owner.st_uid, owner.st_gid) != 0) {
      if (wal_kept) ::unlink(kept_wal.c_str());
      remove_temp(tmp);
      return Status::ReadOnly("cannot give " + tmp + " to the owner of " + db + ": " +
                              errno_text());
    }
  }
  // The marker says the last stop was clean, of the file it belonged to: the restored file is
  // checked (PRAGMA quick_check) on the service's first start.
  ::unlink((db + "-clean").c_str());
  if (had_db) {
    if (::link(db.c_str(), out.replaced.c_str()) != 0) {
      if (wal_kept) ::unlink(kept_wal.c_str());
      remove_temp(tmp);
      return Status::ReadOnly("cannot keep " + db + " aside as " + out.replaced + ": " +
                              errno_text());
    }
    // Nothing of the old database may be replayed into the restored one.
    ::unlink(wal.c_str());
    ::unlink((db + "-shm").c_str());
  }
  if (::rename(tmp.c_str(), db.c_str()) != 0) {
    s = Status::ReadOnly("cannot move the restored copy to " + db + ": " + errno_text());
    remove_temp(tmp);
    return s;
  }
  out.swapped = true;
  if (!fsync_dir(dir_of(db))) {
    return Status::IoError("restored, but cannot fsync the directory of " + db + ": " +
                           errno_text());
  }
  out.seconds = seconds_since(start);
  return Status::Ok();
}

namespace {

// The database a command works on: --db, else $DB_PATH. DATABASE_URL (the service's choice of
// PostgreSQL) or a URL given as the database is refused with the advice.
bool resolve_db(const char* command, std::string& db, int& rc) {
  const char* url = std::getenv("DATABASE_URL");
  if (db.empty() && url && *url) {
    rc = refuse_postgres(std::string(command) + ": DATABASE_URL");
    return false;
  }
  if (db.empty()) {
    const char* env = std::getenv("DB_PATH");
    if (env) db = env;
  }
  if (db.empty()) {
    rc = usage(std::string(command) + ": --db PATH (or DB_PATH) is required");
    return false;
  }
  if (is_postgres_url(db)) {
    rc = refuse_postgres(std::string(command) + ": " + redact_url(db));
    return false;
  }
  return true;
}

void print_json(const std::string& json) {
  std::fwrite((json + "\n").data(), 1, json.size() + 1, stdout);
  std::fflush(stdout);
}

}  // namespace

int run_backup_command(int argc, char** argv) {
  std::string db, to, to_dir;
  long long keep = -1;
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--db" || arg == "--database-url" || arg == "--to" || arg == "--to-dir" ||
        arg == "--keep") {
      if (i + 1 >= argc) return usage("missing value for " + arg);
      std::string value = argv[++i];
      if (arg == "--db" || arg == "--database-url") db = value;
      if (arg == "--database-url" && !is_postgres_url(value)) {
        return usage("--database-url takes a PostgreSQL URL");
      }
      if (arg == "--to") to = value;
      if (arg == "--to-dir") to_dir = value;
      if (arg == "--keep" && !parse_integer(value.c_str(), 1, 100000, keep)) {
        return usage("--keep must be a whole number from 1 to 100000");
      }
    } else {
      return usage("unexpected " + arg);
    }
  }
  int rc = 0;
  if (!resolve_db("backup", db, rc)) return rc;
  if (to.empty() && to_dir.empty()) {
    const char* env = std::getenv("BACKUP_DIR");
    if (env && *env) to_dir = env;
  }
  if (to.empty() == to_dir.empty()) return usage("backup: give --to FILE or --to-dir DIR");
  if (!to.empty() && keep >= 0) return usage("backup: --keep goes with --to-dir");
  if (!to_dir.empty() && keep < 0) {
    const char* env = std::getenv("BACKUP_KEEP");
    keep = 7;
    if (env && *env && !parse_integer(env, 1, 100000, keep)) {
      return usage("backup: BACKUP_KEEP must be a whole number from 1 to 100000");
    }
  }
  if (!to_dir.empty()) {
    if (::mkdir(to_dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return fail("backup", "cannot create " + to_dir + ": " + errno_text());
    }
    to = to_dir + "/" + backup_file_name(utc_timestamp_ms());
  }
  BackupResult r;
  Status s = backup_database(db, to, r);
  if (!s.ok()) return fail("backup", s.message() + ". Nothing was written");
  std::vector<std::string> removed;
  Status rotated =
      to_dir.empty() ? Status::Ok() : rotate_backups(to_dir, static_cast<int>(keep), removed);
  std::string out;
  JsonWriter w(out);
  w.begin_object();
  w.field("status", "ok");
  w.field("file", r.file);
  w.field("bytes", r.bytes);
  write_facts(w, r.facts);
  w.field("backup_steps", r.facts.backup_steps);
  w.field("restarts", r.facts.restarts);
  w.field("copy_seconds", r.copy_seconds);
  w.field("verify_seconds", r.verify_seconds);
  w.field("seconds", r.seconds);
  if (!to_dir.empty()) {
    w.field("keep", keep);
    w.key("removed");
    w.begin_array();
    for (const std::string& name : removed) w.string(name);
    w.end_array();
  }
  w.end_object();
  print_json(out);
  if (!rotated.ok()) return fail("backup", "the backup is in place, but " + rotated.message());
  return 0;
}

int run_restore_command(int argc, char** argv) {
  std::string db, from;
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--db" || arg == "--database-url" || arg == "--from") {
      if (i + 1 >= argc) return usage("missing value for " + arg);
      std::string value = argv[++i];
      if (arg == "--from") {
        from = value;
      } else {
        db = value;
      }
    } else {
      return usage("unexpected " + arg);
    }
  }
  int rc = 0;
  if (!resolve_db("restore", db, rc)) return rc;
  if (from.empty()) return usage("restore: --from FILE is required");
  RestoreResult r;
  Status s = restore_database(from, db, r);
  if (!s.ok() && r.swapped) {
    // In place, but its rename may not survive a crash yet: not "nothing changed".
    return fail("restore",
                s.message() + ". The backup is in place at " + db +
                    (r.replaced.empty() ? "" : "; the replaced database is " + r.replaced) +
                    "; run sync, then check it");
  }
  if (!s.ok()) {
    return fail("restore",
                "refused: " + s.message() + ". Nothing was changed" +
                    (s.code() == StatusCode::kCorrupt || s.code() == StatusCode::kInternal
                         ? "; use another backup"
                         : ""));
  }
  std::string out;
  JsonWriter w(out);
  w.begin_object();
  w.field("status", "restored");
  w.field("db", db);
  w.field("from", from);
  w.key("replaced");
  if (r.replaced.empty()) {
    w.null();
  } else {
    w.string(r.replaced);
  }
  write_facts(w, r.facts);
  w.field("seconds", r.seconds);
  w.end_object();
  print_json(out);
  return 0;
}

}  // namespace tdapi
