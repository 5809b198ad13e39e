// backup.h: online backup and restore of the SQLite database: the `testdata-api backup` and
// `testdata-api restore` commands and the nightly rotation (--to-dir, --keep); the verified copy
// itself is store/sqlite/file_ops.h. PostgreSQL has its own tools (pg_dump,
// pg_basebackup): both commands refuse a PostgreSQL URL and say so.
#pragma once

#include <functional>
#include <string>
#include <vector>

#include "store/sqlite/file_ops.h"

namespace tdapi {

// The name --to-dir gives a backup taken at utc_timestamp ("2026-11-30T01:02:03.456Z"):
// "testdata-20261130T010203.456Z.db". Names in this form sort by time.
std::string backup_file_name(const std::string& utc_timestamp);
// True for exactly the names backup_file_name makes: the only files rotate_backups removes.
bool is_backup_file_name(const std::string& name);

// Keeps the `keep` (>= 1) newest backups in dir and removes the older ones. Backups are the
// regular files of this user named by backup_file_name (a link is neither followed nor removed;
// anything else in dir is left alone) that SQLite opens (read-only, immutable, not through a
// link) as databases with a tests table: a file that is none is neither counted nor removed.
// Ranked by what they hold (the newest audit seq, then the newest test seq), then by
// modification time, never by the time in their names (a clock that was fast or went back, or
// a planted name or date, must not outrank a newer copy). `just_made`
// (a name in dir, the copy just taken) is never removed and counts as the newest. `removed`
// lists what went.
Status rotate_backups(const std::string& dir, int keep, std::vector<std::string>& removed,
                      const std::string& just_made = "");

struct RestoreResult {
  std::string replaced;  // where the database that was at the target now is ("" if none)
  DatabaseFacts facts;   // counted in the restored copy
  double seconds = 0;
  bool swapped = false;  // the backup is at db (also when the last step, an fsync, failed)
};

// Puts the backup `from` in place of the database `db`. Refuses (Busy, nothing changed) while
// another process has db open: the running service. Copies `from` into a temp file beside db,
// fsyncs and checks it (sqlite_check_file: integrity, a schema version this binary knows and
// exactly its schema, the audit chain): a damaged, foreign or altered file is refused
// (Corrupt/Internal) and nothing changes.
// Then settles the database at db (its WAL checkpointed into it; a damaged one keeps its -wal
// beside it), keeps it as db.replaced-<time>, moves the copy to db (atomically: db is never
// missing), removes the clean-stop marker so the first start checks the file, and fsyncs the
// directory. Run as root: refused (Internal) in a directory another user owns or could change
// (run_restore_command first becomes that user); otherwise the temp copy is held open from its
// creation (O_EXCL) to its rename, given the owner of the file it replaces (or of the directory)
// with fchown/fchmod, and renamed only while its name still leads to it.
// after_check: a test seam, never set by the commands: called with the temp copy's path once
// it is checked (what another user who can write db's directory could do to it then).
Status restore_database(const std::string& from, const std::string& db, RestoreResult& out,
                        const std::function<void(const std::string& tmp)>& after_check = nullptr);

// The commands (argv[1] is "backup" or "restore"); see kBackupUsage in backup.cpp. Exit status:
// 0 done (one JSON object on stdout), 1 failed (why on stderr; nothing changed), 2 bad usage,
// including a PostgreSQL database (which these commands do not copy: the message says what does).
int run_backup_command(int argc, char** argv);
int run_restore_command(int argc, char** argv);

}  // namespace tdapi
