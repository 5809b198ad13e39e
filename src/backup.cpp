// backup.cpp: the backup and restore commands: temp files, fsyncs, renames, rotation, output.
// The SQLite work itself (online copy, checks, settling) is in store_sqlite.cpp.
#include "backup.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sqlite3.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
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

bool fsync_dir(const std::string& dir) { return fsync_fd_path(dir, O_RDONLY | O_DIRECTORY); }

// Removes a temp database and whatever SQLite may have left beside it.
void remove_temp(const std::string& path) {
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) {
    ::unlink((path + suffix).c_str());
  }
}

// Creates an empty 0600 file "DIR/.NAME.TAG-XXXXXX" beside path (O_CREAT|O_EXCL: never through
// a link) and returns its open descriptor, or -1 with errno. The descriptor is what the temp file
// is: the name may be changed by whoever can write DIR, the descriptor not.
int make_temp_beside(const std::string& path, const char* tag, std::string& out) {
  std::string tmpl = dir_of(path) + "/." + base_of(path) + "." + tag + "-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  int fd = mkostemp(buf.data(), O_CLOEXEC);
  if (fd < 0) return -1;
  out.assign(buf.data());
  return fd;
}

// True when path (not followed if a link) is the file open as fd.
bool still_names(const std::string& path, int fd) {
  struct stat named {
  }, opened{};
  return ::lstat(path.c_str(), &named) == 0 && fstat(fd, &opened) == 0 && S_ISREG(named.st_mode) &&
         named.st_dev == opened.st_dev && named.st_ino == opened.st_ino;
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

// Drops root for good: becomes uid (its primary group, no supplementary groups).
Status become_user(uid_t uid, gid_t fallback_gid) {
  struct passwd* pw = getpwuid(uid);
  gid_t gid = pw ? pw->pw_gid : fallback_gid;
  if (setgroups(0, nullptr) != 0 || setresgid(gid, gid, gid) != 0 ||
      setresuid(uid, uid, uid) != 0) {
    return Status::Internal("cannot become user " + std::to_string(uid) + ": " + errno_text());
  }
  return Status::Ok();
}

// As root, a command that writes in `dir` works as the user who can change it: what it makes is
// that user's, and a link that user planted leads nowhere that user could not go. Refused where
// root must not work (who_else_changes).
Status act_as_owner_of(const std::string& dir) {
  if (geteuid() != 0) return Status::Ok();
  uid_t owner = 0;
  Status s = who_else_changes(dir, owner);
  if (!s.ok()) return s;
  if (owner == 0) return Status::Ok();
  struct stat st {};
  gid_t gid = ::stat(dir.c_str(), &st) == 0 ? st.st_gid : owner;
  return become_user(owner, gid);
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

// Copies the bytes of the open descriptor `in` (named `from`) into the open descriptor `to` and
// fsyncs it.
bool copy_fd(int in, const std::string& from, int to, std::string& error) {
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
  if (ok && fsync(to) != 0) {
    error = "cannot fsync the copy: " + errno_text();
    ok = false;
  }
  return ok;
}

// The same from a file named `from` (never through a link at its name).
bool copy_into(const std::string& from, int to, std::string& error) {
  int in = ::open(from.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (in < 0) {
    error = "cannot read " + from + ": " + errno_text();
    return false;
  }
  bool ok = copy_fd(in, from, to, error);
  ::close(in);
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

namespace {

// Where a backup stands in its database's history: the newest audit entry and the newest test
// it holds (audit first: every write appends one).
struct ContentPosition {
  long long audit = 0;
  long long tests = 0;
};

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

}  // namespace

Status rotate_backups(const std::string& dir, int keep, std::vector<std::string>& removed,
                      const std::string& just_made) {
  removed.clear();
  DIR* d = ::opendir(dir.c_str());
  if (!d) return Status::ReadOnly("cannot list " + dir + ": " + errno_text());
  const int dfd = dirfd(d);
  // What the files are, not what their names or dates say: regular files (a link is neither
  // followed nor counted) of this user that are databases, ranked by what they hold.
  struct Candidate {
    std::string name;
    ContentPosition position;
    struct timespec mtime;
  };
  std::vector<Candidate> older;
  bool made_here = false;
  while (dirent* e = ::readdir(d)) {
    if (!is_backup_file_name(e->d_name)) continue;
    struct stat st {};
    if (fstatat(dfd, e->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(st.st_mode) ||
        st.st_uid != geteuid()) {
      continue;
    }
    if (e->d_name == just_made) {
      made_here = true;  // never removed, and the newest of all
      continue;
    }
    ContentPosition position;
    if (!content_position(dir + "/" + e->d_name, position)) continue;  // no backup
    older.push_back({e->d_name, position, st.st_mtim});
  }
  std::sort(older.begin(), older.end(), [](const Candidate& a, const Candidate& b) {
    if (a.position.audit != b.position.audit) return a.position.audit > b.position.audit;
    if (a.position.tests != b.position.tests) return a.position.tests > b.position.tests;
    if (a.mtime.tv_sec != b.mtime.tv_sec) return a.mtime.tv_sec > b.mtime.tv_sec;
    if (a.mtime.tv_nsec != b.mtime.tv_nsec) return a.mtime.tv_nsec > b.mtime.tv_nsec;
    return a.name > b.name;
  });
  const size_t kept = static_cast<size_t>(keep) - (made_here ? 1 : 0);
  Status status;
  for (size_t i = older.size(); i-- > kept;) {  // oldest first
    if (unlinkat(dfd, older[i].name.c_str(), 0) != 0) {
      status = Status::ReadOnly("cannot remove the old backup " + dir + "/" + older[i].name + ": " +
                                errno_text());
      break;
    }
    removed.push_back(older[i].name);
  }
  if (!removed.empty()) fsync(dfd);
  ::closedir(d);
  return status;
}

namespace {

// restore_database on the backup open as from_fd (named `from`, for messages).
Status restore_from_fd(int from_fd, const std::string& from, const std::string& db,
                       RestoreResult& out,
                       const std::function<void(const std::string& tmp)>& after_check) {
  out = RestoreResult();
  auto start = std::chrono::steady_clock::now();
  struct stat from_st {};
  if (fstat(from_fd, &from_st) != 0 || !S_ISREG(from_st.st_mode)) {
    return Status::ReadOnly("no backup file at " + from);
  }
  if (exists(from + "-wal")) {
    return Status::Internal(from +
                            " has a -wal file beside it: it is a live database, not a "
                            "backup. Take a backup of it with testdata-api backup");
  }
  // Every step below works by name in db's directory: as root only where no other user can
  // change names (the command first becomes the directory's owner).
  Status where = only_root_changes(dir_of(db), "restore");
  if (!where.ok()) return where;
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

  // The temp copy is held open from its creation to its rename: it is given its owner through
  // the descriptor, and its name must still lead to it after the check and before the rename.
  std::string tmp;
  int fd = make_temp_beside(db, "restore", tmp);
  if (fd < 0) return Status::ReadOnly("cannot create a file beside " + db + ": " + errno_text());
  auto give_up = [&](Status why) {
    ::close(fd);
    remove_temp(tmp);
    return why;
  };
  std::string error;
  if (!copy_fd(from_fd, from, fd, error)) return give_up(Status::IoError(error));
  Status s = sqlite_check_file(tmp, true, out.facts);
  if (!s.ok()) {
    // Name the backup, not the temp copy the check ran on.
    std::string why = s.message();
    for (size_t at; (at = why.find(tmp)) != std::string::npos;) why.replace(at, tmp.size(), from);
    return give_up(s.code() == StatusCode::kInternal ? Status::Internal(why)
                                                     : Status::Corrupt(why));
  }
  if (after_check) after_check(tmp);
  const Status replaced_meanwhile = Status::Internal(
      tmp + " was replaced while it was checked (by a user who can write " + dir_of(db) + ")");
  if (!still_names(tmp, fd)) return give_up(replaced_meanwhile);
  if (fsync(fd) != 0) return give_up(Status::IoError("cannot fsync " + tmp + ": " + errno_text()));

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
      return give_up(Status::ReadOnly("cannot keep a copy of " + wal + ": " +
                                      (error.empty() ? errno_text() : error)));
    }
    ::close(wfd);
    wal_kept = true;
  }
  if (had_db) {
    s = sqlite_settle_unused(db);
    if (s.code() == StatusCode::kBusy) {
      if (wal_kept) ::unlink(kept_wal.c_str());
      return give_up(Status::Busy(s.message() +
                                  ": stop it first (systemctl stop testdata-api, or Ctrl-C "
                                  "on make run)"));
    }
    if (s.ok() && wal_kept) {
      ::unlink(kept_wal.c_str());  // checkpointed into the file kept aside
      wal_kept = false;
    }
  }
  // Run as root (e.g. sudo), the service user must still own its database: given through the
  // descriptor (never by name), to the owner of the file it replaces (not followed if a link),
  // else of the directory.
  struct stat owner {};
  if (geteuid() == 0 && ((had_db && ::lstat(db.c_str(), &owner) == 0 && S_ISREG(owner.st_mode)) ||
                         ::stat(dir_of(db).c_str(), &owner) == 0)) {
    if (fchown(fd, owner.st_uid, owner.st_gid) != 0 || fchmod(fd, 0600) != 0) {
      if (wal_kept) ::unlink(kept_wal.c_str());
      return give_up(
          Status::ReadOnly("cannot give " + tmp + " to the owner of " + db + ": " + errno_text()));
    }
  }
  // The marker says the last stop was clean, of the file it belonged to: the restored file is
  // checked (PRAGMA quick_check) on the service's first start.
  ::unlink((db + "-clean").c_str());
  if (had_db) {
    if (::link(db.c_str(), out.replaced.c_str()) != 0) {
      if (wal_kept) ::unlink(kept_wal.c_str());
      return give_up(Status::ReadOnly("cannot keep " + db + " aside as " + out.replaced + ": " +
                                      errno_text()));
    }
    // Nothing of the old database may be replayed into the restored one.
    ::unlink(wal.c_str());
    ::unlink((db + "-shm").c_str());
  }
  if (!still_names(tmp, fd)) return give_up(replaced_meanwhile);
  if (::rename(tmp.c_str(), db.c_str()) != 0) {
    return give_up(
        Status::ReadOnly("cannot move the restored copy to " + db + ": " + errno_text()));
  }
  out.swapped = true;
  const bool ours = still_names(db, fd);
  ::close(fd);
  if (!ours) {
    return Status::Internal(db + " was replaced right after the restored copy was moved there");
  }
  if (!fsync_dir(dir_of(db))) {
    return Status::IoError("restored, but cannot fsync the directory of " + db + ": " +
                           errno_text());
  }
  out.seconds = seconds_since(start);
  return Status::Ok();
}

}  // namespace

Status restore_database(const std::string& from, const std::string& db, RestoreResult& out,
                        const std::function<void(const std::string& tmp)>& after_check) {
  out = RestoreResult();
  int fd = ::open(from.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::ReadOnly("no backup file at " + from);
  Status s = restore_from_fd(fd, from, db, out, after_check);
  ::close(fd);
  return s;
}

namespace {

// Run as root: opens --from for reading one component at a time, each relative to the
// directory opened before it and without following a link (openat, O_NOFOLLOW), so nothing can
// be swapped in between a check and the open. A symbolic link on the way is followed (as the
// kernel would) only when root owns it: one of another user could lead root to a file that user
// cannot read. A link at the name itself is not followed at all. On success fd is open
// (O_RDONLY | O_NONBLOCK: a FIFO is refused by the caller, not waited on); else the Status
// says why (Internal: a link refused; ReadOnly: the path does not resolve).
Status open_as_root(const std::string& path, int& fd) {
  fd = -1;
  auto split = [](const std::string& p) {
    std::deque<std::string> parts;
    for (size_t at = 0; at <= p.size();) {
      size_t next = p.find('/', at);
      if (next == std::string::npos) next = p.size();
      if (next > at) parts.push_back(p.substr(at, next - at));
      at = next + 1;
    }
    return parts;
  };
  auto open_dir = [](const char* name) { return ::open(name, O_PATH | O_DIRECTORY | O_CLOEXEC); };
  int dir = open_dir(!path.empty() && path[0] == '/' ? "/" : ".");
  if (dir < 0) return Status::ReadOnly("cannot open " + path + " (" + errno_text() + ")");
  std::deque<std::string> todo = split(path);
  std::string walked = path.empty() || path[0] != '/' ? "." : "";
  Status result = Status::ReadOnly("no file at " + path);
  for (int links = 0; !todo.empty();) {
    const std::string part = todo.front();
    todo.pop_front();
    const std::string name = walked + "/" + part;
    int at = ::openat(dir, part.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC);
    struct stat st {};
    if (at < 0 || fstat(at, &st) != 0) {
      result = Status::ReadOnly("no backup file at " + name + " (" + errno_text() + ")");
      if (at >= 0) ::close(at);
      break;
    }
    if (S_ISLNK(st.st_mode)) {
      if (todo.empty() && links == 0) {
        ::close(at);
        result = Status::Internal(path +
                                  " is a symbolic link: as root, restore does not follow "
                                  "one; give the file it leads to");
        break;
      }
      if (st.st_uid != 0) {
        ::close(at);
        result = Status::Internal(name + " is a symbolic link owned by user " +
                                  std::to_string(st.st_uid) + ": root does not follow it");
        break;
      }
      std::vector<char> target(4097);
      ssize_t n = ::readlinkat(at, "", target.data(), target.size() - 1);
      ::close(at);
      if (n <= 0 || ++links > 40) {
        result = Status::Internal(name + ": a symbolic link that cannot be followed");
        break;
      }
      const std::string to(target.data(), static_cast<size_t>(n));
      std::deque<std::string> more = split(to);
      todo.insert(todo.begin(), more.begin(), more.end());
      if (to[0] == '/') {
        int root = open_dir("/");
        if (root < 0) break;
        ::close(dir);
        dir = root;
        walked = "";
      }
      continue;
    }
    if (!todo.empty()) {  // a directory on the way ("." and ".." included)
      if (!S_ISDIR(st.st_mode)) {
        ::close(at);
        result = Status::ReadOnly(name + " is not a directory");
        break;
      }
      ::close(dir);
      dir = at;
      walked = name;
      continue;
    }
    // The name itself: the file just looked at, opened for reading (the same one, by its inode).
    int file = ::openat(dir, part.c_str(), O_RDONLY | O_NONBLOCK | O_NOFOLLOW | O_CLOEXEC);
    struct stat again {};
    if (file < 0 || fstat(file, &again) != 0 || again.st_dev != st.st_dev ||
        again.st_ino != st.st_ino) {
      if (file >= 0) ::close(file);
      ::close(at);
      result = Status::ReadOnly("cannot open " + name + " (it changed while it was opened)");
      break;
    }
    ::close(at);
    fd = file;
    result = Status::Ok();
    break;
  }
  ::close(dir);
  return result;
}

const char kSqliteHeader[16] = {'S', 'Q', 'L', 'i', 't', 'e', ' ', 'f',
                                'o', 'r', 'm', 'a', 't', ' ', '3', '\0'};

// True when the file open as fd begins with the 16 bytes every SQLite database begins with.
bool has_sqlite_header(int fd) {
  char head[sizeof kSqliteHeader];
  ssize_t n = ::pread(fd, head, sizeof head, 0);
  return n == static_cast<ssize_t>(sizeof head) &&
         std::memcmp(head, kSqliteHeader, sizeof head) == 0;
}

// Run as root before it becomes the data directory's owner: copies the backup open as from_fd
// into a directory only root can read ($TMPDIR, else /tmp) and checks the copy there
// (sqlite_check_file). Only a backup that passes is handed on: from_fd is replaced by a read-only
// descriptor of the checked copy, whose name is already gone. Nothing of a file that is no backup
// ever reaches a place another user can read.
Status stage_as_root(int& from_fd, const std::string& from) {
  const char* env = std::getenv("TMPDIR");
  std::string base = env && env[0] == '/' ? env : "/tmp";
  while (base.size() > 1 && base.back() == '/') base.pop_back();
  std::string tmpl = base + "/testdata-api-restore-XXXXXX";
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  if (!mkdtemp(buf.data())) {
    return Status::ReadOnly("cannot create a directory in " + base +
                            " to check the backup in: " + errno_text());
  }
  const std::string stage_dir = buf.data(), staged = stage_dir + "/backup.db";
  auto clean = [&](Status why) {
    remove_temp(staged);
    ::rmdir(stage_dir.c_str());
    return why;
  };
  Status where = only_root_changes(stage_dir, "restore");
  if (!where.ok()) return clean(where);
  int fd = ::open(staged.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return clean(Status::ReadOnly("cannot create " + staged + ": " + errno_text()));
  std::string error;
  bool copied = copy_fd(from_fd, from, fd, error);
  ::close(fd);
  if (!copied) return clean(Status::IoError(error));
  DatabaseFacts facts;
  Status s = sqlite_check_file(staged, true, facts);
  if (!s.ok()) {
    std::string why = s.message();
    for (size_t at; (at = why.find(staged)) != std::string::npos;) {
      why.replace(at, staged.size(), from);
    }
    return clean(s.code() == StatusCode::kInternal ? Status::Internal(why) : Status::Corrupt(why));
  }
  fd = ::open(staged.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return clean(Status::ReadOnly("cannot open " + staged + ": " + errno_text()));
  ::close(from_fd);
  from_fd = fd;
  return clean(Status::Ok());
}

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
  while (to_dir.size() > 1 && to_dir.back() == '/') to_dir.pop_back();
  // Run as root into a directory another user owns (DATA_DIR/backups is the service user's): the
  // backup is made as that user (see act_as_owner_of). A directory yet to be made is judged by
  // the one it is made in, and made by that user.
  struct stat dir_st {};
  Status as = act_as_owner_of(to_dir.empty()                          ? dir_of(to)
                              : ::lstat(to_dir.c_str(), &dir_st) == 0 ? to_dir
                                                                      : dir_of(to_dir));
  if (!as.ok()) return fail("backup", "refused: " + as.message() + ". Nothing was written");
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
  Status rotated = to_dir.empty()
                       ? Status::Ok()
                       : rotate_backups(to_dir, static_cast<int>(keep), removed, base_of(r.file));
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
  // The backup is opened by the caller (root may read a root-only copy); the work in the
  // database's directory is done as its owner when that is another user (act_as_owner_of).
  // As root, what another user could have pointed --from at is refused before it is opened: a
  // link of theirs on its way; a link at its name is not followed at all.
  const bool as_root = geteuid() == 0;
  int from_fd = -1;
  if (as_root) {
    Status opened = open_as_root(from, from_fd);
    if (!opened.ok()) {
      return fail("restore",
                  "refused: " + opened.message() + " (--from " + from + "). Nothing was changed");
    }
  } else {
    // O_NONBLOCK: a FIFO named as the backup is refused, not waited on.
    from_fd = ::open(from.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (from_fd < 0) {
      return fail("restore", "refused: no backup file at " + from + " (" + errno_text() +
                                 "). Nothing was changed");
    }
  }
  struct stat from_st {};
  if (fstat(from_fd, &from_st) != 0 || !S_ISREG(from_st.st_mode)) {
    ::close(from_fd);
    return fail("restore", "refused: " + from + " is not a regular file. Nothing was changed");
  }
  if (!has_sqlite_header(from_fd)) {
    ::close(from_fd);
    return fail("restore", "refused: " + from +
                               " is not an SQLite database (it does not begin with the SQLite "
                               "header). Nothing was changed; use another backup");
  }
  if (exists(from + "-wal")) {
    ::close(from_fd);
    return fail("restore", "refused: " + from +
                               " has a -wal file beside it: it is a live database, not a backup. "
                               "Take a backup of it with testdata-api backup. Nothing was changed");
  }
  // As root for another user's directory: the backup is checked where only root can read it
  // before that user could read a byte of it.
  uid_t owner = 0;
  if (as_root && who_else_changes(dir_of(db), owner).ok() && owner != 0) {
    Status staged = stage_as_root(from_fd, from);
    if (!staged.ok()) {
      ::close(from_fd);
      return fail("restore", "refused: " + staged.message() + ". Nothing was changed" +
                                 (staged.code() == StatusCode::kCorrupt ||
                                          staged.code() == StatusCode::kInternal
                                      ? "; use another backup"
                                      : ""));
    }
  }
  Status as = act_as_owner_of(dir_of(db));
  if (!as.ok()) return fail("restore", "refused: " + as.message() + ". Nothing was changed");
  RestoreResult r;
  Status s = restore_from_fd(from_fd, from, db, r, nullptr);
  ::close(from_fd);
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
