// file_ops.h: whole-file operations on SQLite databases: the verified copy that the backup
// command and the copy before a schema migration make, and the rules for working as root in a
// directory others may change. None of them logs.
#pragma once

#include <sys/types.h>

#include <string>

#include "base/json.h"
#include "store/sqlite/store_sqlite.h"
#include "store/status.h"

namespace tdapi {

struct BackupResult {
  std::string file;     // the verified copy
  DatabaseFacts facts;  // counted in the copy (equal to the source's at the snapshot)
  long long bytes = 0;
  double copy_seconds = 0;    // the online copy (sqlite_backup_file)
  double verify_seconds = 0;  // integrity_check, counts, audit chain, fsync
  double seconds = 0;         // all of it
};

// Takes a consistent online copy of the SQLite database `db` (the service may be writing to it)
// into `dest`, which must not exist: copies into a temp file beside dest, settles and checks the
// copy (sqlite_check_file) and compares its counts and audit head with the snapshot's, fsyncs
// it, moves it to dest without replacing anything, and fsyncs the directory. On error nothing is
// left at dest nor beside it, and the Status says why. Run as root, refused (Internal) when
// dest's directory, or one above it, is owned by another user, writable by a group or everyone
// (without the sticky bit), or reached through another user's link: SQLite writes the temp copy
// by name (run_backup_command first becomes that directory's owner).
Status backup_database(const std::string& db, const std::string& dest, BackupResult& out);

// Where the store keeps the copy it takes before migrating db from schema version `from`:
// "<db>.pre-migration-v<from>-<YYYYMMDDTHHMMSS.mmmZ>", beside db.
std::string pre_migration_backup_path(const std::string& db, int from);

// Where a backup stands in its database's history: the newest audit entry and the newest test
// it holds (audit first: every write appends one).
struct ContentPosition {
  long long audit = 0;
  long long tests = 0;
};

// Reads a backup's ContentPosition with SQLite: read-only, immutable (nothing written beside
// it, no lock taken), never through a link. False when it is no database with a tests table:
// then it is no backup.
bool content_position(const std::string& path, ContentPosition& out);

// Removes a temp database and whatever SQLite may have left beside it (-wal, -shm, -journal).
void remove_database_temp(const std::string& path);

// Run as root: who else can change what the directory `dir` names. `owner` is the user other
// than root who owns it or a directory above it (0: nobody but root). Internal when root must not
// work there at all: a directory on the way writable by its group or by everyone (without the
// sticky bit), two such users on the way, or a symbolic link on the way owned by another user.
Status who_else_changes(const std::string& dir, uid_t& owner);

// Run as root, the library functions work only where root alone can change names: Internal
// naming `what` otherwise. Ok when not root.
Status only_root_changes(const std::string& dir, const char* what);

// The facts of a database as JSON fields / a JSON object (the commands' output).
void write_facts(JsonWriter& w, const DatabaseFacts& f);
std::string facts_json(const DatabaseFacts& f);

// "2026-11-30T01:02:03.456Z" -> "20261130T010203.456Z" (backup file names).
std::string compact_timestamp(const std::string& ts);

}  // namespace tdapi
