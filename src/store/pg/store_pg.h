// store_pg.h: the PostgreSQL Store (libpq): one group-committing writer connection per app
// process, a bounded pool of reader connections, many app processes on one database.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "base/fifo_pool.h"
#include "base/thread_annotations.h"
#include "base/url.h"
#include "store/pg/timeline.h"
#include "store/read_after.h"
#include "store/store.h"
#include "store/write_engine.h"

namespace tdapi {

struct PgOptions {
  std::string url;  // libpq URI (postgresql://…) or keyword/value string
  // Read replicas (DATABASE_READ_URL: standbys, one or several hosts in one libpq string):
  // single reads and listings go there; empty: every read goes to `url`.
  std::string read_url;
  WriteEngineOptions writes;          // group commit: most requests and records per transaction
  WriteObserver* observer = nullptr;  // metrics of the group commits (null: none)
  int lock_timeout_ms = 5000;         // bound on waiting for a lock (the write lock, a row)
  int statement_timeout_ms = 30000;
  int connect_timeout_s = 5;
  // Every round trip to the server is answered within this (PQcancel past it), and every write
  // within this of its submission (WriteEngineOptions::deadline): a COMMIT not confirmed by then
  // is answered kOutcomeUnknown. DATABASE_ROUND_TRIP_TIMEOUT_MS.
  int round_trip_timeout_ms = 10000;
  // What a COMMIT waits for: on (the WAL flushed here, and on synchronous standbys when the
  // server names any), remote_write or remote_apply. DATABASE_SYNCHRONOUS_COMMIT.
  std::string synchronous_commit = "on";
  // Tests: called with the writer's server process id after the transaction id is taken and
  // before COMMIT is sent; and with the writer's socket and the transaction id just after
  // COMMIT is sent (before its answer is read).
  std::function<void(int backend_pid)> test_before_commit;
  std::function<void(int socket, const std::string& xid)> test_commit_sent;
  // Behind a pooler in transaction mode (PgBouncer pool_mode=transaction): nothing that outlives
  // a transaction on the server (statements sent unnamed, timeouts set per transaction).
  // DATABASE_POOLER=transaction (store/open_store.cpp).
  bool transaction_pooler = false;
  size_t max_readers = 16;  // reader connections of this process at most
  // application_name of its connections: migrate refuses to copy while connections of a
  // running service (testdata-api) are on the target; also what pg_stat_activity shows.
  std::string application_name = "testdata-api";
  // The administration commands: the schema must exist already (a mistyped URL must not get
  // one), nothing is logged for open and close.
  bool admin_tool = false;
  // The service: open all max_readers reader connections at open, not on demand (see
  // PgStore::open_readers); the commands (keys, audit, migrate) open them as they need them.
  bool open_readers_at_start = false;
  // Failover fencing (store/pg/timeline.h): the file that remembers the highest (system,
  // timeline) this service wrote to, shared by the nodes of one DATA_DIR. Empty: no fence (the
  // administration commands). Every write transaction, and the health check, compares the
  // read-write server's history with it.
  std::string timeline_file;
  // Tests: migrate only up to this schema version (0: all, kSchemaVersion), to test an upgrade
  // from an older schema. Nothing but a migration test opens a store with an older schema.
  int migrate_to = 0;
};

// Safe for concurrent use from several threads, and from several processes on one database.
// Writes go through the group-commit engine (store/write_engine.h): one writer thread per
// process commits whatever requests are queued in one transaction (group commit) under a
// transaction-scoped advisory lock: write transactions of all processes take turns, so `seq`
// (an identity column) grows in commit order, which keeps keyset cursors complete, and the
// audit chain has one end. A request's records are inserted with ON CONFLICT DO NOTHING, so
// the database decides duplicates (racing inserts of one id wait for each other) and names
// every one; a multi-record request that met a duplicate, or any request that failed on its
// own, is rolled back to its savepoint. 201 only after COMMIT returned, with
// synchronous_commit on.
// A connection lost (server restart, network) fails what was in flight with kUnavailable (503)
// and is reopened by the next operation.
class PgStore : public EngineStore, public ImportTarget {
 public:
  // Connects, applies the migrations this binary knows in one transaction (recorded in
  // schema_migrations; a newer database is refused), reads the cursor key, starts the writer.
  static Status open(const PgOptions& options, std::unique_ptr<PgStore>& out);
  ~PgStore() override;

  Status list_audit(const AuditQuery& query,
                    const std::function<bool(const AuditEntry&)>& on_entry) override;
  Status count_audit(long long up_to, long long& rows) override;
  Status create_key(const ApiKey& key) override;
  Status list_keys(std::vector<ApiKey>& out) override;
  Status revoke_key(std::string_view key_id, const std::string& when) override;
  Status find_key(std::string_view key_id, ApiKey& out) override;
  using Store::get_test;
  Status get_test(std::string_view test_id, StoredDocument& out) override;
  Status get_test(std::string_view test_id, std::string& json, std::string& clinic_id) override;
  Status list_history(const HistoryQuery& query, std::string& clinic_id,
                      const std::function<bool(const TestVersion&)>& on_version) override;
  Status list_changes(const ChangeQuery& query,
                      const std::function<bool(const TestVersion&)>& on_change) override;
  Status latest_change(long long& change_seq) override;
  using Store::list_tests;
  Status list_tests(const ListQuery& query, const RowFn& on_row,
                    const PageEndFn& on_page_end) override;
  // How many times a listing looked a date range's rows up through the range's index
  // (list_range_sql): a listing's cost as a deterministic count, for tests.
  long long listing_range_lookups() const { return range_lookups_.load(); }
  Status check_health() override EXCLUDES(health_mu_, size_mu_);
  // The position of the last commit, or kPositionUnknown while the last one's could not be
  // read (a later commit's position covers it).
  uint64_t commit_position() const override {
    return position_unknown_.load() ? kPositionUnknown : commit_position_.load();
  }
  // How many reads a replica could not serve in time for their commit position (they went to
  // the primary): for tests.
  long long replica_fallbacks() const { return replica_fallbacks_.load(); }
  // How many times a commit's log position was asked for (after durable commits only): for tests.
  long long commit_positions_read() const { return commit_positions_read_.load(); }
  const std::string& instance_secret() const override { return secret_; }
  StoreStats stats() const override EXCLUDES(size_mu_);

  ImportTarget* import_target() override { return this; }
  Status import_tests(const std::vector<StoredTest>& rows) override;
  Status import_audit(const std::vector<AuditEntry>& entries) override;
  Status import_keys(const std::vector<ApiKey>& keys) override;
  Status set_instance_secret(const std::string& secret) override;
  Status list_all_tests(long long after_seq, long long limit,
                        const std::function<bool(const StoredTest&)>& on_row) override;
  Status list_all_versions(long long after_change_seq, long long limit,
                           const std::function<bool(const TestVersion&)>& on_version) override;
  Status import_versions(const std::vector<TestVersion>& versions) override;
  Status count_service_sessions(long long& n) override;
  Status max_seqs(long long& tests_seq, long long& audit_seq) override;

  // Migrations, oldest first; kSchemaVersion is their count.
  static constexpr int kSchemaVersion = 4;

  struct Connection;  // a libpq connection and the statements prepared on it

 private:
  class Backend;  // the writer connection's side of the engine

  explicit PgStore(PgOptions options);
  Status connect(std::unique_ptr<Connection>& out) const { return connect(out, options_.url); }
  Status connect(std::unique_ptr<Connection>& out, const std::string& url) const;
  Status migrate(Connection& conn);
  Status load_secret(Connection& conn);
  std::unique_ptr<Connection> acquire_reader(Status& status);  // of readers_
  std::unique_ptr<Connection> acquire_reader(FifoPool<Connection>& pool, const std::string& url,
                                             Status& status);
  void release_reader(std::unique_ptr<Connection> conn);  // to readers_
  void release_reader(FifoPool<Connection>& pool, std::unique_ptr<Connection> conn);
  void note_failure(const Status& status);
  // Runs fn on a reader connection (returned to the pool when it is still healthy).
  // A read whose connection turned out to be gone is run once more on a new connection
  // (retry_when_lost); a write is not.
  void open_readers();  // the whole reader pool, at open (service only)
  Status with_reader(const char* what, const std::function<Status(Connection&)>& fn,
                     bool retry_when_lost = true);
  // A single read or a listing: inside a ReplicaReadScope, on a read replica when there is one
  // and it has replayed the scope's position within kReplicaWaitMs; else as with_reader.
  Status with_replica_reader(const char* what, const std::function<Status(Connection&)>& fn);
  // After a COMMIT on the writer connection: remembers where it is in the log (read_url only).
  void note_commit_position(Connection& writer);
  // Whether a write may go to `server` (the fence, timeline.h): Ok, or Fenced saying why not
  // (Unavailable when the fence file cannot be read or moved). advance: a later history than the
  // fence's becomes the fence (saved first).
  Status check_fence(const ServerTimeline& server, bool advance) const EXCLUDES(fence_mu_);
  // At open, with a timeline file: whether this role may read the server's history (else
  // fencing is off, with a warning) and, when the writer reached a fenced server, a connection
  // elsewhere.
  Status start_fencing();
  // The fence refused the server `c` is connected to: connections to options_.url leave its
  // host out (when the URL names others) for kFencedHostSkip, and `c` is dropped.
  void skip_fenced_host(Connection& c) const EXCLUDES(skip_mu_);
  std::vector<std::string> fenced_hosts() const EXCLUDES(skip_mu_);
  // Whether `after` is past every log position the primary has reached (asked, on a reader,
  // only when it is past those this process has seen): true too when that cannot be asked.
  bool beyond_primary(uint64_t after);

  PgOptions options_;
  std::atomic<long long> range_lookups_{0};  // listing_range_lookups()
  std::string secret_;
  std::unique_ptr<Connection> writer_;  // used by the writer thread only (and open)

  std::unique_ptr<Backend> backend_;

  FifoPool<Connection> readers_;          // at most options_.max_readers, first come first served
  FifoPool<Connection> replica_readers_;  // to options_.read_url, as many at most
  std::atomic<uint64_t> commit_position_{0};
  std::atomic<bool> position_unknown_{false};  // the last commit's position was not read
  std::atomic<uint64_t> primary_position_{0};  // the primary's position, when last asked
  // The furthest a replica was seen to have replayed, and until when (steady_clock ticks) a
  // read past it goes to the primary without waiting: a replica that lags does not hold every
  // read for kReplicaWaitMs.
  std::atomic<uint64_t> replica_replayed_{0};
  std::atomic<std::chrono::steady_clock::rep> replica_behind_until_{0};
  // Until when (steady_clock ticks) reads skip the replicas: a connection to them failed.
  std::atomic<std::chrono::steady_clock::rep> replica_down_until_{0};
  std::atomic<long long> replica_fallbacks_{0};
  std::atomic<long long> commit_positions_read_{0};

  // Every transaction and new connection reads the server's history (start_fencing).
  std::atomic<bool> fencing_{false};
  mutable Mutex fence_mu_;
  mutable ServerTimeline fence_ GUARDED_BY(fence_mu_);     // as the timeline file last said
  mutable std::string fence_stamp_ GUARDED_BY(fence_mu_);  // fence_file_stamp when last read
  mutable Mutex skip_mu_;
  // "HOST:PORT" of fenced servers, and until when connections leave them out.
  mutable std::map<std::string, std::chrono::steady_clock::time_point> fenced_hosts_
      GUARDED_BY(skip_mu_);

  // check_health's own connection (opened by the first check, reopened when lost): the check
  // never waits for a reader, so listings holding every reader cannot make GET /healthz fail.
  Mutex health_mu_;
  std::unique_ptr<Connection> health_conn_ GUARDED_BY(health_mu_);

  mutable Mutex size_mu_;
  long long database_bytes_ GUARDED_BY(size_mu_) = 0;
  std::chrono::steady_clock::time_point size_read_at_ GUARDED_BY(size_mu_);
};

// `url` with any password replaced by "***", for logs (redact_url_text, base/url.h); a URL
// libpq cannot parse is not shown at all (libpq's own errors would quote it).
std::string redact_url(const std::string& url);

}  // namespace tdapi
