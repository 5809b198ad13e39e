// write_engine.cpp: the group-commit engine (write_engine.h).
#include "store/write_engine.h"

#include <semaphore.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstdlib>
#include <utility>

#include "base/clock.h"
#include "base/log.h"

namespace tdapi {

namespace {
// Who wrote a record when no audit entry names a key (auth off).
const std::string kAnonymous = "anonymous";
}  // namespace

bool breaks_write_path(StatusCode code) {
  return code == StatusCode::kIoError || code == StatusCode::kReadOnly ||
         code == StatusCode::kCorrupt || code == StatusCode::kInternal ||
         code == StatusCode::kUnavailable || code == StatusCode::kOutcomeUnknown ||
         code == StatusCode::kFenced;
}

// One request's write, waiting in the queue for the writer thread.
struct WriteEngine::Job {
  const TestRecord* records = nullptr;
  size_t count = 0;             // 0: audit entries alone
  AuditEntry* audit = nullptr;  // audit_count entries, recorded in the same transaction
  size_t audit_count = 0;
  bool durable = true;  // false: crash-safe audit entries alone (AuditDurability::kCrashSafe)
  // A correction (count 0): refused or written by the engine's rules in run_transaction.
  const TestCorrection* correction = nullptr;
  CorrectionRefusal refusal = CorrectionRefusal::kNone;
  TestVersion version;  // the new version as written, or the stored one behind a refusal
  bool wrote = false;   // a record or a version written (kept only if the group commits)
  // kLeader: set (under mu_, before `done` is posted) when this job is to lead the next group.
  bool lead = false;
  std::chrono::steady_clock::time_point submitted;  // (WriteEngineOptions::deadline only)
  WriteOutcome outcome;
  // Posted by the writer once `outcome` is final; the submitting thread waits on it alone. (A
  // condition variable on the queue's mutex made every answered thread of a group take that
  // mutex again as it woke, against each other, the writer and new submitters: 4.5 futex calls
  // per POST under 32 connections.) glibc's sem_post touches the semaphore only before the
  // increment the waiter sees (the futex wake after it is a system call on the address), so
  // the job may end as soon as sem_wait returns.
  sem_t done;
  Job() { sem_init(&done, 0, 0); }
  ~Job() { sem_destroy(&done); }
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;
};

CommitMode commit_mode_from_env() {
  const char* v = std::getenv("WRITE_COMMIT");
  return v && std::string(v) == "leader" ? CommitMode::kLeader : CommitMode::kThread;
}

WriteEngine::WriteEngine(WriteBackend& backend, WriteEngineOptions options, WriteObserver* observer)
    : backend_(backend), options_(options), observer_(observer) {
  if (options_.mode == CommitMode::kLeader) {
    writer_thread_ = std::thread([this] { sync_loop(); });
  } else {
    writer_thread_ = std::thread([this] { writer_loop(); });
  }
}

WriteEngine::~WriteEngine() {
  {
    MutexLock lock(mu_);
    stopping_ = true;
  }
  queue_cv_.notify_all();
  sync_cv_.notify_all();
  commit_cv_.notify_all();
  if (writer_thread_.joinable()) writer_thread_.join();
}

WriteOutcome WriteEngine::insert(const TestRecord& record, AuditEntry* audit) {
  Job job;
  job.records = &record;
  job.count = 1;
  job.audit = audit;
  job.audit_count = audit ? 1 : 0;
  return submit(job);
}

WriteOutcome WriteEngine::insert_all(const std::vector<TestRecord>& records,
                                     std::vector<AuditEntry>* audits) {
  assert(!records.empty());
  Job job;
  job.records = records.data();
  job.count = records.size();
  if (audits && !audits->empty()) {
    job.audit = audits->data();
    job.audit_count = audits->size();
  }
  return submit(job);
}

Status WriteEngine::append_audit(AuditEntry& entry, AuditDurability durability) {
  Job job;
  job.audit = &entry;
  job.audit_count = 1;
  job.durable = durability == AuditDurability::kDurable;
  return submit(job).status;
}

CorrectionOutcome WriteEngine::correct(const TestCorrection& correction, AuditEntry* audit) {
  Job job;
  job.correction = &correction;
  job.audit = audit;
  job.audit_count = audit ? 1 : 0;
  WriteOutcome w = submit(job);
  CorrectionOutcome out;
  out.status = w.status;
  out.txn_id = w.txn_id;
  if (w.status.ok()) {
    out.refusal = job.refusal;
    out.current = std::move(job.version);
  }
  return out;
}

void WriteEngine::wait_for_commit(std::chrono::milliseconds timeout) {
  const auto until = std::chrono::steady_clock::now() + timeout;
  MutexLock lock(mu_);
  const unsigned long long seen = commit_generation_;
  while (commit_generation_ == seen && !stopping_) {
    const auto left = until - std::chrono::steady_clock::now();
    if (left <= left.zero()) return;
    mu_.wait_for(commit_cv_, left);
  }
}

namespace {

// The audit outcome of a correction: what PUT /tests/{id} answers.
int correction_audit_outcome(CorrectionRefusal refusal) {
  switch (refusal) {
    case CorrectionRefusal::kNone:
      return 200;
    case CorrectionRefusal::kNotFound:
    case CorrectionRefusal::kClinicDiffers:
      return 404;
    case CorrectionRefusal::kPatientDiffers:
    case CorrectionRefusal::kRetracted:
      return 400;
    case CorrectionRefusal::kVersionMismatch:
      return 412;
  }
  return 500;
}

}  // namespace

// The rules of a correction, inside the transaction (one place for both backends): the stored
// test as it is now decides; a refusal writes nothing (the job's audit entry still commits).
Status WriteEngine::run_correction(Job& job, const std::string& now) {
  const TestCorrection& c = *job.correction;
  bool found = false;
  TestVersion current;
  Status s = backend_.read_current(c.record.test_id, found, current);
  if (!s.ok()) return s;
  if (!found) {
    job.refusal = CorrectionRefusal::kNotFound;
    return Status::Ok();
  }
  if (current.record.clinic_id != c.record.clinic_id) {
    job.refusal = CorrectionRefusal::kClinicDiffers;
  } else if (current.record.patient_id != c.record.patient_id) {
    job.refusal = CorrectionRefusal::kPatientDiffers;
  } else if (current.record.status == TestStatus::kEnteredInError) {
    job.refusal = CorrectionRefusal::kRetracted;
  } else if (current.version != c.expected_version) {
    job.refusal = CorrectionRefusal::kVersionMismatch;
  }
  if (job.refusal != CorrectionRefusal::kNone) {
    job.version = std::move(current);
    return Status::Ok();
  }
  TestVersion next;
  next.record = c.record;
  next.version = current.version + 1;
  next.created_at = current.created_at;
  // A test's updated_at never goes back, also when the wall clock does.
  next.changed_at = std::max(now, current.changed_at);
  next.changed_by = c.changed_by;
  next.reason = c.reason;
  next.doc = test_document(next.record, next.created_at, next.version, next.changed_at);
  s = backend_.write_version(next);
  if (!s.ok()) return s;
  job.version = std::move(next);
  job.wrote = true;
  return Status::Ok();
}

WriteOutcome WriteEngine::submit(Job& job) {
  if (options_.deadline.count() > 0) job.submitted = std::chrono::steady_clock::now();
  if (options_.mode == CommitMode::kLeader) return submit_as_leader(job);
  {
    MutexLock lock(mu_);
    if (stopping_) {
      job.outcome.status = Status::Busy("store is shutting down");
      return job.outcome;
    }
    queue_.push_back(&job);
  }
  if (observer_) observer_->add_pending_writes(1);
  queue_cv_.notify_one();
  while (sem_wait(&job.done) != 0) {
    if (errno != EINTR) std::abort();  // EINVAL: a broken semaphore; never wait on it blindly
  }
  if (observer_) observer_->add_pending_writes(-1);
  return job.outcome;
}

bool WriteEngine::take_group(std::vector<Job*>& group) {
  // At most max_jobs requests and, past the first, max_records records: one huge transaction
  // would hold the write lock (shared by every process on PostgreSQL) and keep every request of
  // it waiting for its fsync.
  bool durable = false;
  size_t records = 0;
  while (!queue_.empty() && group.size() < options_.max_jobs &&
         (group.empty() || records + queue_.front()->count <= options_.max_records)) {
    records += queue_.front()->count;
    durable = durable || queue_.front()->durable;
    group.push_back(queue_.front());
    queue_.pop_front();
  }
  // Past the window, the group makes the commits before it durable too.
  return durable || (undurable_ && now() - undurable_since_ >= options_.sync_window);
}

void WriteEngine::writer_loop() {
  std::vector<Job*> group;
  for (;;) {
    bool durable = false;
    bool sync = false;
    {
      MutexLock lock(mu_);
      while (queue_.empty()) {
        if (!undurable_) {
          if (stopping_) return;  // everything queued has been answered, and is durable
          mu_.wait(queue_cv_);
          continue;
        }
        // A commit that did not wait for the disk: sync when its window ends (or at stop),
        // unless a group comes first.
        const auto left = undurable_since_ + options_.sync_window - now();
        if (stopping_ || left <= left.zero()) {
          sync = true;
          break;
        }
        mu_.wait_for(queue_cv_, left);
      }
      if (!sync) durable = take_group(group);
    }
    if (sync) {
      sync_undurable();
      continue;
    }
    commit_group(group, durable);
    for (Job* job : group) sem_post(&job->done);  // the job may end here: last access
    group.clear();
  }
}

WriteOutcome WriteEngine::submit_as_leader(Job& job) {
  bool lead;
  {
    MutexLock lock(mu_);
    if (stopping_) {
      job.outcome.status = Status::Busy("store is shutting down");
      return job.outcome;
    }
    queue_.push_back(&job);
    lead = !leader_active_;  // no leader: the queue was empty, this job is its first
    leader_active_ = true;
  }
  if (observer_) observer_->add_pending_writes(1);
  if (!lead) {
    // Answered by a leader's group, or made the leader (first in the queue).
    while (sem_wait(&job.done) != 0) {
      if (errno != EINTR) std::abort();  // EINVAL: a broken semaphore; never wait on it blindly
    }
    lead = job.lead;
  }
  if (lead) {
    std::vector<Job*> group;
    bool durable;
    {
      MutexLock lock(mu_);
      durable = take_group(group);  // this job first
    }
    commit_group(group, durable);
    {
      MutexLock lock(mu_);
      hand_off();
    }
    for (Job* other : group) {
      if (other != &job) sem_post(&other->done);  // the job may end here: last access
    }
  }
  if (observer_) observer_->add_pending_writes(-1);
  return job.outcome;
}

void WriteEngine::hand_off() {
  if (queue_.empty()) {
    leader_active_ = false;
    // The group just committed may have been taken before the window ended (so it left the
    // entries undurable) and ended after it: the syncing thread, which waits while a leader
    // works, syncs now rather than a whole window later.
    if (undurable_ && now() - undurable_since_ >= options_.sync_window) sync_cv_.notify_one();
    return;
  }
  Job* next = queue_.front();
  next->lead = true;
  sem_post(&next->done);
}

void WriteEngine::sync_loop() {
  for (;;) {
    {
      MutexLock lock(mu_);
      for (;;) {
        const bool busy = leader_active_;  // a leader holds the backend (or will: a queue)
        if (!undurable_) {
          if (stopping_ && !busy) return;  // every request answered, everything durable
          if (stopping_) {
            mu_.wait_for(sync_cv_, std::chrono::milliseconds(1));  // the last leaders finish
          } else {
            mu_.wait(sync_cv_);
          }
          continue;
        }
        const auto left = undurable_since_ + options_.sync_window - now();
        if (busy) {
          // The next group past the window commits durably; look again then, or when the last
          // leader lets go past the window (hand_off).
          mu_.wait_for(sync_cv_, stopping_ ? std::chrono::milliseconds(1) : options_.sync_window);
          continue;
        }
        if (stopping_ || left <= left.zero()) {
          leader_active_ = true;  // the backend is this thread's until hand_off
          break;
        }
        mu_.wait_for(sync_cv_, left);
      }
    }
    sync_undurable();
    MutexLock lock(mu_);
    hand_off();
  }
}

Status WriteEngine::run_transaction(const std::vector<Job*>& group, bool durable, long long txn_id,
                                    Status& storage_error) {
  Status status = backend_.begin(durable);
  if (!status.ok()) return status;
  // Taken inside the transaction (under the write lock): created_at grows with seq.
  const std::string created_at = utc_timestamp_ms();

  // The end of the audit chain, current inside the transaction.
  long long audit_seq = 0;
  std::string audit_head = kAuditGenesis;
  bool audited = false;
  for (const Job* job : group) audited = audited || job->audit_count > 0;
  if (audited) {
    status = backend_.audit_head(audit_seq, audit_head);
    if (!status.ok()) return status;
  }

  const bool savepoints =
      group.size() > 1 || group.front()->count > 1 || backend_.savepoint_for_lone_record();
  for (Job* job_ptr : group) {
    Job& job = *job_ptr;
    job.outcome.txn_id = txn_id;
    if (savepoints) {
      status = backend_.savepoint();
      if (!status.ok()) return status;
    }
    Status job_error;  // a failure of this job's own insert, other than a duplicate
    // A create's version-1 row names the key that wrote it (every entry of a job has the same).
    const std::string& changed_by = job.audit_count > 0 ? job.audit[0].key_id : kAnonymous;
    job.wrote = false;
    job.refusal = CorrectionRefusal::kNone;
    if (job.correction) job_error = run_correction(job, created_at);
    for (size_t i = 0; i < job.count; ++i) {
      const TestRecord& record = job.records[i];
      bool duplicate = false;
      Status s = backend_.insert_record(record, created_at, changed_by, duplicate);
      if (!s.ok()) {
        job_error = s;
        break;
      }
      if (duplicate) {
        job.outcome.duplicate_ids.push_back(record.test_id);
        job.outcome.status = Status::Duplicate("test_id already exists");
        // keep checking the job's other records, to name every duplicate
      }
    }
    if (job.count > 0) job.wrote = job_error.ok() && job.outcome.status.ok();
    if (!job_error.ok()) {
      job.wrote = false;
      job.outcome.status = job_error;
      job.outcome.duplicate_ids.clear();
      backend_.note_failure(job_error);
      if (job_error.code() != StatusCode::kInternal && breaks_write_path(job_error.code())) {
        storage_error = job_error;
      }
      // The database ended the transaction (or there is no savepoint to return to): the jobs
      // before this one are gone too.
      if (!savepoints || backend_.transaction_lost()) return job_error;
    }
    if (!job.outcome.status.ok() && savepoints) {
      status = backend_.rollback_to_savepoint();  // undo only this job
      if (!status.ok()) return status;
    }
    // The job's audit entries, in its savepoint: a stored write (201) or a duplicate (409). A
    // job that failed on its own storage error gets none (that failure is in the log): its
    // audit row would likely fail the same way and take the whole group with it.
    for (size_t a = 0; a < job.audit_count && job_error.ok(); ++a) {
      AuditEntry& entry = job.audit[a];
      if (job.count > 0) entry.outcome = job.outcome.status.ok() ? 201 : 409;
      if (job.correction) entry.outcome = correction_audit_outcome(job.refusal);
      // The chain link: each entry names the hash of the one before it.
      if (entry.ts.empty()) entry.ts = created_at;
      entry.seq = audit_seq + 1;
      entry.prev_hash = audit_head;
      entry.hash = audit_hash(entry);
      status = backend_.insert_audit(entry);
      if (!status.ok()) return status;
      audit_seq = entry.seq;
      audit_head = entry.hash;
    }
    if (savepoints) {
      status = backend_.release_savepoint();
      if (!status.ok()) return status;
    }
  }
  return backend_.commit();
}

void WriteEngine::sync_undurable() {
  const Status s = backend_.sync();
  if (!s.ok()) {
    backend_.note_failure(s);
    LogFields f;
    f.reason = s.name();
    f.detail =
        "could not sync crash-safe audit entries (the next durable commit will): " + s.message();
    log_event(LogLevel::kWarn, "audit_sync_failed", f);
  }
  MutexLock lock(mu_);
  // Cleared on failure too: the next durable commit covers them, and a stop must not spin.
  undurable_ = false;
  if (s.ok()) syncs_++;
}

void WriteEngine::commit_group(const std::vector<Job*>& taken, bool durable) {
  const auto start = std::chrono::steady_clock::now();
  long long txn_id;
  {
    MutexLock lock(mu_);
    txn_id = next_txn_id_++;
  }
  // With a deadline: a request that waited past it is answered busy, untried (nothing of it was
  // sent: it is not stored); the rest get what is left of the oldest one's time.
  std::vector<Job*> live;
  const std::vector<Job*>* group = &taken;
  if (options_.deadline.count() > 0) {
    live.reserve(taken.size());
    auto oldest = start;
    for (Job* job : taken) {
      if (start - job->submitted >= options_.deadline) {
        job->outcome.txn_id = txn_id;
        job->outcome.status = Status::Busy("waited for the writer longer than the write deadline");
        job->wrote = false;
        continue;
      }
      oldest = std::min(oldest, job->submitted);
      live.push_back(job);
    }
    group = &live;
    if (live.size() < taken.size()) {
      LogFields f;
      f.txn_id = txn_id;
      f.count = static_cast<long long>(taken.size() - live.size());
      f.reason = "busy";
      f.detail = "writes waited for the writer longer than the deadline (" +
                 std::to_string(options_.deadline.count()) + " ms): answered 503, not tried";
      log_event(LogLevel::kWarn, "writes_expired", f);
    }
    if (live.empty()) return;
    backend_.set_deadline(oldest + options_.deadline);
    MutexLock lock(mu_);
    committing_ = true;
    committing_since_ = oldest;
  }
  Status storage_error;  // a failure of one job that says storage is failing (for check_health)
  const Status group_status = run_transaction(*group, durable, txn_id, storage_error);
  if (!group_status.ok()) backend_.abort();
  if (group_status.code() == StatusCode::kOutcomeUnknown) {
    // Which writes the client must look up (ids only: no patient data).
    std::string ids;
    long long n = 0;
    for (const Job* job : *group) {
      for (size_t i = 0; i < job->count; ++i, ++n)
        ids += (ids.empty() ? "" : ",") + job->records[i].test_id;
      if (job->correction) {
        ids += (ids.empty() ? "" : ",") + job->correction->record.test_id;
        ++n;
      }
    }
    LogFields f;
    f.txn_id = txn_id;
    f.count = n;
    f.reason = group_status.name();
    f.test_id = ids;
    f.detail = group_status.message();
    log_event(LogLevel::kError, "write_outcome_unknown", f);
  }

  // Answer: a failed transaction fails every job of it that had not failed on its own.
  for (Job* job : *group) {
    job->outcome.txn_id = txn_id;
    // Duplicates too: their 409 and its audit entry were rolled back with the rest.
    const bool failed_alone =
        !job->outcome.status.ok() && job->outcome.status.code() != StatusCode::kDuplicate;
    if (!group_status.ok() && !failed_alone) {
      job->outcome.status = group_status;
      job->outcome.duplicate_ids.clear();
    }
    if (!group_status.ok()) job->wrote = false;
  }
  backend_.note_failure(group_status);
  LogFields f;
  f.txn_id = txn_id;
  f.count = static_cast<long long>(group->size());
  f.txn = group_status.ok() ? "commit" : "rollback";
  f.duration_ms = elapsed_ms(start);
  if (!group_status.ok()) {
    f.reason = group_status.name();
    f.detail = group_status.message();
  }
  LogLevel level = group_status.ok()                             ? LogLevel::kInfo
                   : group_status.code() == StatusCode::kCorrupt ? LogLevel::kError
                                                                 : LogLevel::kWarn;
  log_event(level, "txn", f);
  if (observer_)
    observer_->record_transaction(group->size(), f.duration_ms / 1000.0, group_status.ok());

  bool wrote = false;
  for (const Job* job : *group) wrote = wrote || job->wrote;
  MutexLock lock(mu_);
  if (group_status.ok() && wrote) {
    commit_generation_++;
    commit_cv_.notify_all();  // held long polls (wait_for_commit) look at the feed again
  }
  stats_.transactions++;
  (group_status.ok() ? stats_.commits : stats_.rollbacks)++;
  stats_.writes += static_cast<long long>(group->size());
  committing_ = false;
  if (group_status.ok() && durable) {
    undurable_ = false;
  } else if (group_status.ok()) {
    undurable_commits_++;
    if (!undurable_) {
      undurable_ = true;
      undurable_since_ = now();
      sync_cv_.notify_one();  // kLeader: the syncing thread starts counting the window
    }
  }
  if (!group_status.ok() && breaks_write_path(group_status.code())) storage_error = group_status;
  if (!storage_error.ok()) {
    write_failure_ = storage_error;
    write_failure_at_ = std::chrono::steady_clock::now();
  } else if (group_status.ok()) {
    write_failure_ = Status::Ok();
  }
}

Status WriteEngine::recent_failure() const {
  MutexLock lock(mu_);
  if (options_.deadline.count() > 0) {
    // The oldest unanswered write: in the group being committed, else first in the queue.
    const auto now = std::chrono::steady_clock::now();
    auto oldest = now;
    if (committing_) oldest = committing_since_;
    if (!queue_.empty()) oldest = std::min(oldest, queue_.front()->submitted);
    if (now - oldest > options_.deadline) {
      return Status::Unavailable("a write has waited longer than the write deadline (" +
                                 std::to_string(options_.deadline.count()) +
                                 " ms) for the database");
    }
  }
  if (!write_failure_.ok() &&
      std::chrono::steady_clock::now() - write_failure_at_ < kWriteFailureWindow) {
    return write_failure_;
  }
  return Status::Ok();
}

void WriteEngine::add_stats(StoreStats& out) const {
  MutexLock lock(mu_);
  out.transactions = stats_.transactions;
  out.commits = stats_.commits;
  out.rollbacks = stats_.rollbacks;
  out.writes = stats_.writes;
  out.undurable_commits = undurable_commits_;
  out.durability_syncs = syncs_;
}

}  // namespace tdapi
