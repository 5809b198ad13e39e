// store_sqlite.h: the SQLite Store: one group-committing writer thread, pooled read connections.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/thread_annotations.h"
#include "store/store.h"
#include "store/write_engine.h"

struct sqlite3;
struct sqlite3_stmt;
struct statvfs;

namespace tdapi {

struct SqliteOptions {
  std::string path;                   // database file; created with the schema when missing
  int busy_timeout_ms = 5000;         // bound on waiting for a lock held by another process
  WriteEngineOptions writes;          // group commit: most requests and records per transaction
  WriteObserver* observer = nullptr;  // metrics of the group commits (null: none)
  std::string synchronous = "FULL";   // FULL: a commit survives a power cut (fsync per COMMIT)
  long long max_page_count = 0;       // > 0: cap the database size (tests of SQLITE_FULL)
  // The administration commands (keys, audit) open a database the service may be running on:
  // a missing file is an error (a mistyped --db must not create one), the clean-stop marker is
  // neither taken nor written (it belongs to the service), the O(size) integrity check is
  // skipped, and nothing is logged for the open and close.
  bool admin_tool = false;
  // The background integrity check after a clean-stop start reads each b-tree this many
  // entries per read transaction (SqliteStore::open). Tests set it small.
  int integrity_chunk_rows = 1000;
  // Test seam, never set by the service: called before the writer runs each transaction-control
  // step ("BEGIN IMMEDIATE", "SAVEPOINT", "ROLLBACK TO", "RELEASE", "COMMIT", "ROLLBACK"). A
  // non-zero SQLite result code it returns is taken as that step's failure; the step is not run.
  std::function<int(const char* step)> fault_hook;
};

// With fewer bytes than this free on the database's filesystem, an SQLITE_IOERR on a write
// is a full disk (kFull, 507) rather than a failing one (kIoError, 503).
constexpr unsigned long long kMinFreeBytes = 1024 * 1024;

// What an SQLITE_IOERR on a write means, given statvfs of the database's filesystem: kFull when
// less than kMinFreeBytes or no inode is free (for unprivileged use), else kIoError.
StatusCode classify_write_io_error(const struct statvfs& fs);

// The listing statement for a combination of ListQuery's filters (SqliteStore::list_tests):
// ?1 clinic_id, ?2 patient_id, ?3 test_type, ?4 the seq to start after, ?5 the limit, ?6 status,
// ?7 created_from, ?8 created_to, ?9 updated_from, ?10 updated_to (only those the query sets are
// in it). Here for its query-plan tests.
std::string list_tests_sql(const ListQuery& query);

// The statement of SqliteStore::list_all_tests (?1 the seq to start after, ?2 the page size);
// here for its query-plan test.
extern const char kListAllTestsSql[];

// Marks the tests whose created_at breaks its order in seq created_late and writes
// created_marks from the others (schema.cpp): run by the migration to schema 7; here for the
// tests that set created_at by hand, which must run it after.
extern const char kRebuildCreatedOrderSql[];

// The change feed's page (SqliteStore::list_changes: ?1 clinic_id, ?2 the change_seq to start
// after, ?3 the limit) and SqliteStore::list_all_versions' (?1 the change_seq to start after, ?2
// the limit); here for their cost tests.
extern const char kChangesSql[];
extern const char kAllVersionsSql[];

// The statements of the background integrity check (SqliteStore::open) that read a b-tree
// after the last key of the previous chunk (?1 the chunk's size, ?2... that key); here for
// their query-plan test: each must be a range of its b-tree, never a sort.
std::vector<std::string> integrity_chunk_sql();

// Safe for concurrent use from several threads. Writes go through the group-commit engine
// (store/write_engine.h), whose writer thread commits whatever requests are queued in one
// transaction: BEGIN IMMEDIATE, a SAVEPOINT per request (a request whose insert fails, as a
// duplicate or otherwise, rolls back only its own), COMMIT, then every request of the group is
// answered. Only a failure of the transaction itself (BEGIN, COMMIT, or an error after which
// SQLite ended the transaction) answers every request of the group with that error.
class SqliteStore : public EngineStore {
 public:
  // Opens or creates the database at options.path, refuses a damaged file (PRAGMA quick_check,
  // O(size): only after an unclean stop; after a clean one it runs in the background, below),
  // a schema newer than this binary (before writing anything to it) or one with objects this
  // binary does not make (a file edited in place: a trigger, view, table or index, also one named
  // like SQLite's own, or a table defined otherwise; Internal naming them), creates the schema on
  // first start, sets WAL mode and options.synchronous, and starts the writer. An older schema
  // is first copied beside the file (backup_database, to pre_migration_backup_path; no copy, no
  // migration), then migrated in one transaction. On error `out` stays null and the Status says
  // why (Corrupt, ReadOnly, Internal), with the file name in its message.
  //
  // After a clean-stop start (quick_check skipped) a thread of its own checks the file in the
  // background, on its own read connection, at low priority: each b-tree read in key order,
  // options.integrity_chunk_rows entries per read transaction (so checkpoints still restart
  // the WAL), pausing between chunks as long as the chunk took; the small tables by PRAGMA
  // quick_check(table). Damage found: check_health reports Corrupt, one database_corrupt line
  // is logged, and every write is refused with Corrupt from then on.
  static Status open(const SqliteOptions& options, std::unique_ptr<SqliteStore>& out);

  // Finishes queued writes, stops the writer, checkpoints the WAL and closes every connection.
  ~SqliteStore() override;

  Status list_audit(const AuditQuery& query,
                    const std::function<bool(const AuditEntry&)>& on_entry) override;
  Status count_audit(long long up_to, long long& rows) override;
  Status create_key(const ApiKey& key) override;
  Status list_keys(std::vector<ApiKey>& out) override;
  Status revoke_key(std::string_view key_id, const std::string& when) override;
  Status find_key(std::string_view key_id, ApiKey& out) override;
  // Corrupt without writing once the background integrity check found damage; else the
  // engine's (EngineStore).
  using Store::insert;
  using Store::insert_all;
  WriteOutcome insert(const TestRecord& record, AuditEntry* audit) override;
  WriteOutcome insert_all(const std::vector<TestRecord>& records,
                          std::vector<AuditEntry>* audits) override;
  using Store::append_audit;
  Status append_audit(AuditEntry& entry, AuditDurability durability) override;
  CorrectionOutcome correct(const TestCorrection& correction, AuditEntry* audit) override;
  using Store::get_test;
  Status get_test(std::string_view test_id, std::string& json, std::string& clinic_id) override;
  Status get_test(std::string_view test_id, StoredDocument& out) override;
  Status list_history(const HistoryQuery& query, std::string& clinic_id,
                      const std::function<bool(const TestVersion&)>& on_version) override;
  Status list_changes(const ChangeQuery& query,
                      const std::function<bool(const TestVersion&)>& on_change) override;
  Status latest_change(long long& change_seq) override;
  Status list_all_versions(long long after_change_seq, long long limit,
                           const std::function<bool(const TestVersion&)>& on_version) override;
  using Store::list_tests;
  Status list_tests(const ListQuery& query, const RowFn& on_row,
                    const PageEndFn& on_page_end) override;
  // SQLite's steps (SQLITE_STMTSTATUS_VM_STEP) every listing took so far: a listing's cost as a
  // deterministic count, for tests.
  long long listing_steps() const { return listing_steps_.load(); }
  // Ok when a real query answers, no operation has met a damaged database since open, and the
  // write path is not failing: a write transaction that failed with an I/O, read-only,
  // corruption or internal error within the last minute, with no commit since, is reported.
  Status check_health() override;
  Status list_all_tests(long long after_seq, long long limit,
                        const std::function<bool(const StoredTest&)>& on_row) override;
  // Whether list_all_tests pages by rowid (every row's rowid equals its seq, checked on its
  // first call) rather than by seq. For tests.
  bool pages_all_tests_by_rowid() const { return rowid_is_seq_.load() == 1; }
  // b-tree entries (rows of tables and indexes) the background integrity check has read. For
  // tests.
  long long integrity_entries() const { return integrity_entries_.load(); }

  const std::string& instance_secret() const override { return secret_; }

  StoreStats stats() const override;

  // 1: the first release. 2: counters.last_seq, so a seq is never handed out twice.
  // 3: api_keys and the audit trail. 4: versions (status, version, updated_at, test_versions),
  // the change feed and the date-range indexes. 5: a test's version 1 stays in its tests row
  // until its first correction (schema.cpp, kLazyFirstVersionSchema). 6: tests_by_updated only
  // of the tests whose updated_at is not their created_at (kUpdatedOnlyOfCorrectedSchema).
  static constexpr int kSchemaVersion = 7;
  // WAL size (pages) at which the checkpoint thread is woken; at four times this the writer
  // finishes the checkpoint itself, so the WAL restarts and stays bounded.
  static constexpr int kCheckpointPages = 1000;

 private:
  class Backend;  // the writer connection's side of the engine
  struct Connection;

  explicit SqliteStore(SqliteOptions options);
  Status open_writer();
  std::string writer_pragmas() const;
  // Creates (version 0) or upgrades the schema to kSchemaVersion in one transaction.
  Status migrate_schema(sqlite3* db, int version);
  // Prepares the writer's statements and installs its WAL hook.
  Status prepare_writer(Connection& conn);
  // Closes the writer connection (rolling back anything open on it) and opens a new one.
  Status reopen_writer();
  // Runs one transaction-control statement of the writer (see SqliteOptions::fault_hook).
  int run_step(sqlite3_stmt* stmt, const char* step);
  // After a failed batch: rolls back, and reopens the connection if it is still in a
  // transaction.
  void end_failed_transaction();
  Status open_reader(std::unique_ptr<Connection>& out);
  std::unique_ptr<Connection> acquire_reader(Status& status) EXCLUDES(readers_mu_);
  void release_reader(std::unique_ptr<Connection> conn) EXCLUDES(readers_mu_);
  // Runs fn on the admin connection (key management) inside BEGIN IMMEDIATE ... COMMIT.
  Status admin_write(const std::function<int(sqlite3*)>& fn, const char* what) EXCLUDES(admin_mu_);
  void checkpoint_loop() EXCLUDES(checkpoint_mu_, checkpoint_run_mu_);
  static int on_wal_commit(void* self, sqlite3* db, const char* name, int wal_pages);
  // Logs a storage failure (corruption loudly, once marking the store unhealthy).
  void note_failure(const Status& status);
  // Reads PRAGMA page_count on conn (the writer) into page_count_, for metrics.
  void read_page_count(Connection& conn);
  // The background integrity check (see open), on integrity_thread_.
  void integrity_check_loop() EXCLUDES(integrity_mu_);
  // Reads one b-tree chunk by chunk (integrity_check_loop); Ok when it is whole.
  Status walk_btree(sqlite3* db, size_t walk) EXCLUDES(integrity_mu_);
  // Waits `pause`, or less when the store is closing; false then.
  bool integrity_pause(std::chrono::steady_clock::duration pause) EXCLUDES(integrity_mu_);

  SqliteOptions options_;
  std::atomic<bool> corrupt_seen_{false};
  // Whether every test's rowid equals its seq (list_all_tests pages by rowid then): -1 not
  // checked yet, 0 no, 1 yes.
  std::atomic<int> rowid_is_seq_{-1};
  std::atomic<long long> listing_steps_{0};  // listing_steps()
  // For metrics (stats()): set by the writer thread, read by any.
  std::atomic<long long> wal_pages_{0};    // frames in the WAL after the last commit
  std::atomic<long long> page_count_{-1};  // PRAGMA page_count after the last commit
  std::atomic<long long> max_pages_{-1};   // PRAGMA max_page_count
  std::atomic<long long> page_size_{4096};
  // The integrity check of this start (StoreStats::integrity), and how long it took.
  std::atomic<StoreStats::Integrity> integrity_{StoreStats::Integrity::kNone};
  std::atomic<double> integrity_seconds_{-1};
  std::atomic<long long> integrity_entries_{0};
  // Set when the background integrity check found damage: writes are refused.
  std::atomic<bool> damaged_{false};
  bool check_in_background_ = false;  // set by open_writer: the clean-stop marker was taken
  Mutex integrity_mu_;
  std::condition_variable integrity_cv_;  // waited on with integrity_mu_ held
  bool integrity_stop_ GUARDED_BY(integrity_mu_) = false;
  std::thread integrity_thread_;
  std::string secret_;
  std::unique_ptr<Connection> writer_;
  Mutex admin_mu_;
  sqlite3* admin_ GUARDED_BY(admin_mu_) = nullptr;  // key management writes; opened on first use

  std::unique_ptr<Backend> backend_;

  std::unique_ptr<Connection> checkpointer_;
  Mutex checkpoint_mu_;
  // Held while a checkpoint runs, by the checkpoint thread and by the writer's own: SQLite lets
  // one checkpoint run at a time and answers a second PASSIVE one with SQLITE_BUSY at once.
  Mutex checkpoint_run_mu_;
  std::condition_variable checkpoint_cv_;  // waited on with checkpoint_mu_ held
  bool checkpoint_wanted_ GUARDED_BY(checkpoint_mu_) = false;
  bool checkpoint_stop_ GUARDED_BY(checkpoint_mu_) = false;
  std::thread checkpoint_thread_;

  Mutex readers_mu_;
  std::vector<std::unique_ptr<Connection>> idle_readers_ GUARDED_BY(readers_mu_);
};

}  // namespace tdapi
