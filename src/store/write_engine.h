// write_engine.h: the group-commit engine both stores write through, over a small per-backend
// interface (WriteBackend). Modelled on LevelDB's writer queue (DBImpl::Write): requests queue,
// one writer takes what is queued (up to a cap) and commits it in one transaction, a savepoint
// per request, then answers each request on its own semaphore. The writer is a thread of the
// engine's own (CommitMode::kThread), or the first waiting request's thread, which commits its
// group and hands the lead to the next request waiting (CommitMode::kLeader, as LevelDB). The
// backend knows SQL; the engine knows the order of the steps, the audit chain link, the cap, the
// health window, the txn log line, the counters and the metrics (through the observer it is given).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "base/thread_annotations.h"
#include "store/audit.h"
#include "store/status.h"
#include "store/store.h"
#include "store/test_record.h"

namespace tdapi {

// What the engine reports to metrics. Given at construction (may be null: nothing reported).
class WriteObserver {
 public:
  virtual ~WriteObserver() = default;
  // One group-commit transaction of `jobs` write requests that took `seconds`: committed (ok)
  // or rolled back as a whole.
  virtual void record_transaction(size_t jobs, double seconds, bool ok) = 0;
  // A write request handed to the engine (+1), and answered (-1).
  virtual void add_pending_writes(int delta) = 0;
};

// One backend's side of a group-commit transaction. Called by the engine's writer thread only,
// one group at a time, in this order: begin, [audit_head], per job { [savepoint], insert_record
// per record or, for a correction, read_current and (unless refused) write_version,
// [rollback_to_savepoint], insert_audit per entry, [release_savepoint] }, commit; abort after any
// failure of the transaction as a whole. sync only between groups. The rules of a correction
// (what is refused, the next version's number and time) are the engine's; the backend only reads
// and writes rows.
class WriteBackend {
 public:
  virtual ~WriteBackend() = default;
  // Starts the group's transaction, (re)connecting when needed, holding whatever lock makes
  // write transactions take turns. durable false: its commit need not wait for the disk (it
  // must still survive a crash of the app), and a later sync or durable commit makes it durable.
  virtual Status begin(bool durable) = 0;
  // The end of the audit chain, current inside the transaction: seq 0 and kAuditGenesis when
  // the trail is empty.
  virtual Status audit_head(long long& seq, std::string& hash) = 0;
  // Whether a group of one job that stores one record still takes a savepoint for it (false:
  // that job's failure is the transaction's anyway).
  virtual bool savepoint_for_lone_record() const = 0;
  virtual Status savepoint() = 0;
  virtual Status rollback_to_savepoint() = 0;
  virtual Status release_savepoint() = 0;
  // Inserts one record stamped created_at as version 1 (status record.status, updated_at =
  // created_at, its document test_document), and its version-1 row in test_versions (changed_by,
  // no reason). Ok with duplicate set when its test_id exists (nothing written, the transaction
  // goes on); any other Status is the job's own failure.
  virtual Status insert_record(const TestRecord& record, const std::string& created_at,
                               const std::string& changed_by, bool& duplicate) = 0;
  // The stored current version of test_id, read inside the transaction: found false when there
  // is none. Fills record (the five fields and status), version, created_at, changed_at (the
  // test's updated_at) and doc. Any other Status is the job's own failure.
  virtual Status read_current(const std::string& test_id, bool& found, TestVersion& current) {
    (void)test_id, (void)current;
    found = false;
    return Status::Internal("corrections are not implemented by this backend");
  }
  // Writes `next` (every field set by the engine but change_seq) as the test's current version:
  // updates its tests row (status, version, updated_at = changed_at, doc, test_type, result) and
  // inserts its test_versions row, setting next.change_seq. Any other Status than Ok is the
  // job's own failure.
  virtual Status write_version(TestVersion& next) {
    (void)next;
    return Status::Internal("corrections are not implemented by this backend");
  }
  // Inserts one audit entry whose seq, ts, prev_hash and hash the engine has set.
  virtual Status insert_audit(const AuditEntry& entry) = 0;
  // After a job's own failure: whether the database ended the transaction (the jobs before it
  // are gone too), so the group fails as a whole.
  virtual bool transaction_lost() = 0;
  virtual Status commit() = 0;
  // After a failed group: ends the transaction (rolls back; starts over on a new connection
  // when that fails). Never fails: the next begin reports a connection it could not replace.
  virtual void abort() = 0;
  // Logs a storage failure (and whatever the backend marks for it, such as corruption).
  virtual void note_failure(const Status& status) = 0;
  // Called before begin when the engine has a deadline (WriteEngineOptions::deadline): the
  // group's transaction must be answered by `deadline` (a COMMIT not confirmed by then is
  // kOutcomeUnknown). Backends without deadlines ignore it.
  virtual void set_deadline(std::chrono::steady_clock::time_point deadline) { (void)deadline; }
  // Makes every transaction committed so far durable (outside a transaction).
  virtual Status sync() = 0;
};

// Write failures that say the write path is broken: WriteEngine::recent_failure reports them
// for kWriteFailureWindow or until a group commits. Full, Busy and Duplicate do not.
bool breaks_write_path(StatusCode code);
constexpr auto kWriteFailureWindow = std::chrono::seconds(60);

// Who commits a group: the engine's writer thread, or the first queued request's own thread.
enum class CommitMode { kThread, kLeader };
// The environment's WRITE_COMMIT: leader, else thread.
CommitMode commit_mode_from_env();

struct WriteEngineOptions {
  CommitMode mode = commit_mode_from_env();
  size_t max_jobs = 256;      // most write requests committed by one transaction
  size_t max_records = 4000;  // most records in one transaction (past its first request)
  // A group of crash-safe audit entries alone commits without waiting for the disk; the next
  // group committed this long after the first such commit is durable, or, when none comes, the
  // writer syncs (WriteBackend::sync) then.
  std::chrono::milliseconds sync_window{kCrashSafeSyncWindowMs};
  // > 0: every write is answered within this long of its submission: a request that waited
  // in the queue past it is answered kBusy without being tried, a group's transaction is
  // given what is left of its oldest request's time (WriteBackend::set_deadline), and
  // recent_failure reports a write unanswered for longer. 0: no deadline.
  std::chrono::milliseconds deadline{0};
  // The clock sync_window is measured on (tests give their own); null: steady_clock::now.
  std::function<std::chrono::steady_clock::time_point()> now;
};

// Safe for concurrent use from several threads. Starts its writer thread when constructed (in
// kLeader mode that thread only syncs undurable commits when no group comes).
class WriteEngine {
 public:
  WriteEngine(WriteBackend& backend, WriteEngineOptions options, WriteObserver* observer);
  // Finishes what is queued (answering every request) and stops the writer thread.
  ~WriteEngine();
  WriteEngine(const WriteEngine&) = delete;
  WriteEngine& operator=(const WriteEngine&) = delete;

  // The Store write calls (store.h), committed by the writer thread. Records and their entries
  // are always committed durably.
  WriteOutcome insert(const TestRecord& record, AuditEntry* audit = nullptr) EXCLUDES(mu_);
  WriteOutcome insert_all(const std::vector<TestRecord>& records,
                          std::vector<AuditEntry>* audits = nullptr) EXCLUDES(mu_);
  Status append_audit(AuditEntry& entry, AuditDurability durability = AuditDurability::kDurable)
      EXCLUDES(mu_);
  // Store::correct: one job, savepointed like a create. The engine reads the stored test inside
  // the transaction and refuses (in this order: not found, another clinic's, patient_id differs,
  // retracted, expected_version not current) or writes the next version; audit's outcome is
  // set to 200, 404, 400 or 412 accordingly. Always durable.
  CorrectionOutcome correct(const TestCorrection& correction, AuditEntry* audit) EXCLUDES(mu_);
  // Store::wait_for_commit: returns when a group that wrote a record or a version commits (the
  // commit generation moves), when the engine stops, or after timeout.
  void wait_for_commit(std::chrono::milliseconds timeout) EXCLUDES(mu_);

  // The latest failure of the write path within kWriteFailureWindow with no commit since, or
  // (with a deadline) a write unanswered for longer than the deadline, else Ok (for
  // check_health).
  Status recent_failure() const EXCLUDES(mu_);
  // transactions, commits (undurable_commits of them without waiting for the disk), rollbacks,
  // writes and durability_syncs since construction; the rest left as it is.
  void add_stats(StoreStats& out) const EXCLUDES(mu_);

 private:
  struct Job;

  WriteOutcome submit(Job& job) EXCLUDES(mu_);
  WriteOutcome submit_as_leader(Job& job) EXCLUDES(mu_);
  void writer_loop() EXCLUDES(mu_);
  // kLeader: the thread that syncs undurable commits when no leader comes within the window.
  void sync_loop() EXCLUDES(mu_);
  // Takes the next group off the queue (the cap applies); whether it must commit durably.
  bool take_group(std::vector<Job*>& group) REQUIRES(mu_);
  // kLeader: makes the first queued request the leader (waking it), or leaves none.
  void hand_off() REQUIRES(mu_);
  void commit_group(const std::vector<Job*>& group, bool durable) EXCLUDES(mu_);
  // A correction job's read, rules and write (run_transaction), stamped `now` when written;
  // the job's own storage failure, else Ok (a refusal too).
  Status run_correction(Job& job, const std::string& now);
  // Runs the group's transaction; the failure of the transaction as a whole, else Ok.
  // storage_error receives a job's own failure that says storage is failing.
  Status run_transaction(const std::vector<Job*>& group, bool durable, long long txn_id,
                         Status& storage_error);
  // Syncs what was committed without waiting for the disk (writer thread, between groups).
  void sync_undurable() EXCLUDES(mu_);
  std::chrono::steady_clock::time_point now() const {
    return options_.now ? options_.now() : std::chrono::steady_clock::now();
  }

  WriteBackend& backend_;
  const WriteEngineOptions options_;
  WriteObserver* const observer_;

  mutable Mutex mu_;
  std::condition_variable queue_cv_;  // waited on with mu_ held, by the writer thread (kThread)
  std::condition_variable sync_cv_;   // waited on with mu_ held, by the syncing thread (kLeader)
  // kLeader: a request's thread (or the syncing thread) holds the backend; set while the queue
  // is not empty.
  bool leader_active_ GUARDED_BY(mu_) = false;
  std::deque<Job*> queue_ GUARDED_BY(mu_);
  bool stopping_ GUARDED_BY(mu_) = false;
  // The submission time of the oldest request of the group being committed (deadline only).
  std::chrono::steady_clock::time_point committing_since_ GUARDED_BY(mu_);
  bool committing_ GUARDED_BY(mu_) = false;
  long long next_txn_id_ GUARDED_BY(mu_) = 1;
  StoreStats stats_ GUARDED_BY(mu_);
  Status write_failure_ GUARDED_BY(mu_);
  // Moved by every committed group that wrote a record or a version; commit_cv_ is notified
  // then (waited on with mu_ held, by wait_for_commit).
  unsigned long long commit_generation_ GUARDED_BY(mu_) = 0;
  std::condition_variable commit_cv_;
  std::chrono::steady_clock::time_point write_failure_at_ GUARDED_BY(mu_);
  // Set by a group committed without waiting for the disk; cleared by a durable commit or sync.
  bool undurable_ GUARDED_BY(mu_) = false;
  std::chrono::steady_clock::time_point undurable_since_ GUARDED_BY(mu_);
  long long undurable_commits_ GUARDED_BY(mu_) = 0;
  long long syncs_ GUARDED_BY(mu_) = 0;
  std::thread writer_thread_;
};

// A Store whose writes go through a WriteEngine: store.h's write calls, for both backends.
// The derived store creates engine_ once its writer connection is ready, and resets it first
// thing in its destructor (queued writes are answered while its connections still exist).
class EngineStore : public Store {
 public:
  using Store::insert;
  using Store::insert_all;
  WriteOutcome insert(const TestRecord& record, AuditEntry* audit) override {
    return engine_->insert(record, audit);
  }
  WriteOutcome insert_all(const std::vector<TestRecord>& records,
                          std::vector<AuditEntry>* audits) override {
    return engine_->insert_all(records, audits);
  }
  using Store::append_audit;
  Status append_audit(AuditEntry& entry, AuditDurability durability) override {
    return engine_->append_audit(entry, durability);
  }
  CorrectionOutcome correct(const TestCorrection& correction, AuditEntry* audit) override {
    return engine_->correct(correction, audit);
  }
  void wait_for_commit(std::chrono::milliseconds timeout) override {
    engine_->wait_for_commit(timeout);
  }

 protected:
  std::unique_ptr<WriteEngine> engine_;
};

}  // namespace tdapi
