// backup.cpp: the backup and restore commands: temp files, fsyncs, renames, rotation, output.
// The SQLite work itself (online copy, checks, settling) is in store/sqlite/file_ops.h.
#include "tools/backup.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
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

#include "base/clock.h"
#include "base/files.h"
#include "base/json.h"
#include "base/options.h"
#include "base/url.h"
#include "store/open_store.h"
#include "store/sqlite/file_ops.h"
#include "store/sqlite/store_sqlite.h"

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
    "physical copy, for point-in-time recovery). See docs/operations.md 'Backup and restore'";

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

}  // namespace

std::string backup_file_name(const std::string& utc_timestamp) {
  return "testdata-" + compact_timestamp(utc_timestamp) + ".db";
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
  if (path_exists(from + "-wal")) {
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
  const bool had_db = path_exists(db);
  if (had_db) {
    long pid = holder_pid(db);
    if (pid > 0) {
      return Status::Busy(db + " is open in process " + std::to_string(pid) +
                          " (the service is running on it): stop it first (systemctl stop "
                          "testdata-api, or Ctrl-C on make run)");
    }
  } else if (path_exists(db + "-wal")) {
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
    remove_database_temp(tmp);
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
  // Cursors and feed tokens of the database before the restore name positions of another
  // history: refused from now on (file_ops.h).
  s = sqlite_new_cursor_key(tmp);
  if (!s.ok()) return give_up(s);
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
    remove_database_temp(staged);
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
    rc = refuse_postgres(std::string(command) + ": " + describe_target(db));
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
  if (path_exists(from + "-wal")) {
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
