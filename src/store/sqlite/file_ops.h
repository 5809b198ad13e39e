// file_ops.h: whole-file operations on SQLite databases: the verified copy that the backup
// command and the copy before a schema migration make, and the rules for working as root in a
// directory others may change. None of them logs.
#pragma once

#include <sys/types.h>

#include <string>

#include "base/json.h"
#include "store/status.h"

namespace tdapi {

// What a database file holds: counted at a backup's snapshot or by sqlite_check_file.
struct DatabaseFacts {
  int schema_version = 0;       // PRAGMA user_version
  long long tests = 0;          // rows of tests
  long long versions = 0;       // rows of test_versions (0 before schema 4)
  long long audit_entries = 0;  // rows of audit (0 before schema 3)
  long long keys = 0;           // rows of api_keys (0 before schema 3)
  std::string audit_head;       // "SEQ:HASH" of the newest audit entry, "" when there is none
  long long backup_steps = 0;   // sqlite_backup_file: backup_step calls
  long long restarts = 0;       // sqlite_backup_file: times SQLite restarted the copy (0 expected)
};

// Whole-file operations (the backup and restore commands, backup.h, and the backup taken before
// a schema migration). None of them logs.
//
// Copies the database at `source` (a live WAL database: the service may be writing to it) into
// the new file `dest` with SQLite's online backup API, from one read snapshot: a read transaction
// is held on the source while the pages are copied in chunks, so writers go on (WAL readers never
// block them) and the copy is never restarted by their commits. `snapshot` receives the counts of
// that snapshot. dest keeps the source's journal mode in its header: sqlite_check_file settles it.
// Errors: ReadOnly (no such source file, dest not creatable), Corrupt, Busy, Full, IoError,
// Internal; dest may then be partly written (the caller removes it).
Status sqlite_backup_file(const std::string& source, const std::string& dest,
                          DatabaseFacts& snapshot);

// Checks a database file that no other process uses (a fresh copy): makes it self-contained
// (journal_mode DELETE: a WAL beside it is checkpointed into it and removed), runs PRAGMA
// integrity_check, requires a schema version from 1 to SqliteStore::kSchemaVersion with a cursor
// key, counts tests, versions, audit entries and keys, and verifies the audit chain (audit.h).
// Corrupt for a damaged file, a file that is not a database or a broken audit chain; Internal for a
// schema this binary does not know. Ok fills `out`. With exact_schema (restore), also Internal for
// a schema other than the one this binary creates for that version (an extra trigger, view, table
// or index, a table defined otherwise): it would run inside the service once restored. Checked
// before anything reads the tables. Only what SQLite makes itself is skipped (sqlite_autoindex_*
// indexes, sqlite_sequence, sqlite_stat1..4 tables); anything else named sqlite_* is compared.
// The audit chain is checked by verify_audit_trail (audit.h), as `audit verify` checks it.
// The file is opened with SQLITE_OPEN_NOFOLLOW (never through a link at its name).
Status sqlite_check_file(const std::string& path, bool exact_schema, DatabaseFacts& out);

// Takes the database at `path` out of service (restore): Busy when another process has it open
// (a WAL connection holds a shared lock on the file for as long as it is open, so leaving WAL
// mode needs every other connection gone: this is the "service is running" check); else
// checkpoints its WAL into it and switches it to journal_mode DELETE, so the file alone is the
// whole database and can be kept aside. Another error (Corrupt, ...) when it cannot be read.
Status sqlite_settle_unused(const std::string& path);

// Gives the database at `path`, which no other process uses (a restore's checked copy), a new
// cursor key: a restored database goes back in time, so the seqs and change numbers handed out
// after its backup are handed out again, and a listing cursor or feed token made before the
// restore could name a position past changes written after it, which would be skipped without a
// word. With a new key every earlier cursor and token is refused (400) instead.
Status sqlite_new_cursor_key(const std::string& path);

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
