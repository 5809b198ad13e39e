// errors.cpp: what SQLite's result codes mean for the data.
//
// Result codes and what they become (http/storage_status.h says what each is over HTTP):
//   SQLITE_CONSTRAINT_PRIMARYKEY/UNIQUE -> Duplicate (409)
//   SQLITE_BUSY, SQLITE_LOCKED          -> Busy (503)
//   SQLITE_FULL                         -> Full (507)
//   SQLITE_IOERR on write               -> Full (507) when the filesystem is out of space
//                                          (statvfs), else IoError (503)
//   SQLITE_IOERR on read                -> IoError (503)
//   SQLITE_CORRUPT, SQLITE_NOTADB       -> Corrupt (503, logged at error level)
//   SQLITE_READONLY, SQLITE_CANTOPEN, SQLITE_PERM -> ReadOnly (503)
//   anything else                       -> Internal (500)

#include <sys/statvfs.h>

#include "store/sqlite/internal.h"

namespace tdapi {

StatusCode classify_write_io_error(const struct statvfs& fs) {
  unsigned long long free_bytes =
      static_cast<unsigned long long>(fs.f_bavail) * static_cast<unsigned long long>(fs.f_frsize);
  bool no_inodes = fs.f_files > 0 && fs.f_favail == 0;
  return free_bytes < kMinFreeBytes || no_inodes ? StatusCode::kFull : StatusCode::kIoError;
}

// An SQLITE_IOERR while writing: a full disk (507, freeing space helps) or a failing one (503).
// SQLite reports ENOSPC as SQLITE_FULL on most paths but as an IOERR on some (e.g. growing the
// shared-memory file), so the filesystem of the database is asked.
namespace {

Status write_io_error(sqlite3* db, std::string msg) {
  const char* file = db ? sqlite3_db_filename(db, "main") : nullptr;
  struct statvfs fs;
  if (file && *file && statvfs(file, &fs) == 0 &&
      classify_write_io_error(fs) == StatusCode::kFull) {
    return Status::Full(msg + "; the filesystem is out of space");
  }
  return Status::IoError(msg);
}

}  // namespace

Status status_from_sqlite(int rc, sqlite3* db, const std::string& what, bool writing) {
  std::string msg = what + ": " + (db ? sqlite3_errmsg(db) : sqlite3_errstr(rc)) + " (" +
                    sqlite3_errstr(rc) + ", code " + std::to_string(rc) + ")";
  switch (rc & 0xff) {
    case SQLITE_CONSTRAINT:
      if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE) {
        return Status::Duplicate(msg);
      }
      return Status::Internal(msg);
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return Status::Busy(msg);
    case SQLITE_FULL:
      return Status::Full(msg);
    case SQLITE_IOERR:
      if (rc == SQLITE_IOERR_NOMEM) return Status::Internal(msg);
      return writing ? write_io_error(db, msg) : Status::IoError(msg);
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return Status::Corrupt(msg);
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
      return Status::ReadOnly(msg);
    default:
      return Status::Internal(msg);
  }
}

std::string_view column_view(sqlite3_stmt* stmt, int i) {
  const unsigned char* text = sqlite3_column_text(stmt, i);
  int n = sqlite3_column_bytes(stmt, i);
  return text ? std::string_view(reinterpret_cast<const char*>(text), static_cast<size_t>(n))
              : std::string_view();
}

}  // namespace tdapi
