// The group-commit engine (store/write_engine.h) against a fake backend: which jobs an error
// answers, the cap on a group, the audit chain across groups, the observer, which groups commit
// without waiting for the disk and when those are synced.
#include "store/write_engine.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "store/store_test_util.h"

namespace tdapi {
namespace {

// A transactional in-memory store. Its first begin() can be held closed (hold_first_begin), so
// the test queues jobs behind it and knows they form the next group.
class FakeBackend : public WriteBackend {
 public:
  Status begin(bool durable) override {
    std::unique_lock<std::mutex> lock(mu_);
    ++begins_;
    txn_durable_ = durable;
    in_begin_ = true;
    cv_.notify_all();
    cv_.wait(lock, [&] { return !held_; });
    in_begin_ = false;
    txn_records_.clear();
    txn_audit_.clear();
    txn_versions_.clear();
    return Status::Ok();
  }
  Status audit_head(long long& seq, std::string& hash) override {
    std::lock_guard<std::mutex> lock(mu_);
    seq = trail_.empty() ? 0 : trail_.back().seq;
    hash = trail_.empty() ? kAuditGenesis : trail_.back().hash;
    return Status::Ok();
  }
  bool savepoint_for_lone_record() const override { return true; }
  Status savepoint() override {
    std::lock_guard<std::mutex> lock(mu_);
    sp_records_ = txn_records_.size();
    sp_audit_ = txn_audit_.size();
    sp_versions_ = txn_versions_.size();
    return savepoint_error_;
  }
  Status rollback_to_savepoint() override {
    std::lock_guard<std::mutex> lock(mu_);
    txn_records_.resize(sp_records_);
    txn_audit_.resize(sp_audit_);
    txn_versions_.resize(sp_versions_);
    return Status::Ok();
  }
  Status release_savepoint() override { return Status::Ok(); }
  Status insert_record(const TestRecord& r, const std::string&, const std::string&,
                       bool& duplicate) override {
    std::lock_guard<std::mutex> lock(mu_);
    auto failing = fail_insert_.find(r.test_id);
    if (failing != fail_insert_.end()) return failing->second;
    for (const std::string& id : txn_records_) duplicate = duplicate || id == r.test_id;
    duplicate = duplicate || stored_.count(r.test_id) > 0;
    if (!duplicate) {
      txn_records_.push_back(r.test_id);
      TestVersion v;
      v.record = r;
      v.version = 1;
      txn_versions_.push_back(v);
    }
    return Status::Ok();
  }
  Status read_current(const std::string& test_id, bool& found, TestVersion& current) override {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto it = txn_versions_.rbegin(); it != txn_versions_.rend(); ++it) {
      if (it->record.test_id == test_id) {
        found = true;
        current = *it;
        return Status::Ok();
      }
    }
    auto it = current_.find(test_id);
    found = it != current_.end();
    if (found) current = it->second;
    return Status::Ok();
  }
  Status write_version(TestVersion& next) override {
    std::lock_guard<std::mutex> lock(mu_);
    next.change_seq = ++change_seq_;
    txn_versions_.push_back(next);
    return Status::Ok();
  }
  Status insert_audit(const AuditEntry& e) override {
    std::lock_guard<std::mutex> lock(mu_);
    txn_audit_.push_back(e);
    return Status::Ok();
  }
  bool transaction_lost() override { return false; }
  Status commit() override {
    std::lock_guard<std::mutex> lock(mu_);
    ++commits_;
    if (!commit_error_.ok() && commits_ >= fail_from_commit_) return commit_error_;
    stored_.insert(txn_records_.begin(), txn_records_.end());
    trail_.insert(trail_.end(), txn_audit_.begin(), txn_audit_.end());
    for (const TestVersion& v : txn_versions_) current_[v.record.test_id] = v;
    committed_durable_.push_back(txn_durable_);
    return Status::Ok();
  }
  void abort() override {
    std::lock_guard<std::mutex> lock(mu_);
    ++aborts_;
  }
  void note_failure(const Status&) override {}
  Status sync() override {
    std::lock_guard<std::mutex> lock(mu_);
    ++syncs_;
    cv_.notify_all();
    return Status::Ok();
  }

  void hold_first_begin() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = true;
  }
  // Waits (at most 10 s) until the writer is inside the held begin().
  bool wait_in_begin() {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return in_begin_; });
  }
  void release_begin() {
    std::lock_guard<std::mutex> lock(mu_);
    held_ = false;
    cv_.notify_all();
  }
  void fail_insert(const std::string& id, Status s) {
    std::lock_guard<std::mutex> lock(mu_);
    fail_insert_[id] = s;
  }
  // Commits number from_commit (counted from 1) and later fail with s.
  void fail_commit(Status s, int from_commit) {
    std::lock_guard<std::mutex> lock(mu_);
    commit_error_ = s;
    fail_from_commit_ = from_commit;
  }
  void fail_savepoint(Status s) {
    std::lock_guard<std::mutex> lock(mu_);
    savepoint_error_ = s;
  }
  TestVersion current(const std::string& id) {
    std::lock_guard<std::mutex> lock(mu_);
    return current_[id];
  }
  std::set<std::string> stored() {
    std::lock_guard<std::mutex> lock(mu_);
    return stored_;
  }
  std::vector<AuditEntry> trail() {
    std::lock_guard<std::mutex> lock(mu_);
    return trail_;
  }
  int aborts() {
    std::lock_guard<std::mutex> lock(mu_);
    return aborts_;
  }
  int begins() {
    std::lock_guard<std::mutex> lock(mu_);
    return begins_;
  }
  void set_deadline(std::chrono::steady_clock::time_point deadline) override {
    std::lock_guard<std::mutex> lock(mu_);
    deadlines_.push_back(deadline);
  }
  std::vector<std::chrono::steady_clock::time_point> deadlines() {
    std::lock_guard<std::mutex> lock(mu_);
    return deadlines_;
  }
  // For each committed group, in order: whether its begin asked for a durable commit.
  std::vector<bool> committed_durable() {
    std::lock_guard<std::mutex> lock(mu_);
    return committed_durable_;
  }
  int syncs() {
    std::lock_guard<std::mutex> lock(mu_);
    return syncs_;
  }
  // Waits (at most 10 s) until sync was called n times.
  bool wait_syncs(int n) {
    std::unique_lock<std::mutex> lock(mu_);
    return cv_.wait_for(lock, std::chrono::seconds(10), [&] { return syncs_ >= n; });
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool held_ = false, in_begin_ = false, txn_durable_ = true;
  int begins_ = 0, aborts_ = 0, commits_ = 0, fail_from_commit_ = 1, syncs_ = 0;
  std::vector<bool> committed_durable_;
  std::vector<std::chrono::steady_clock::time_point> deadlines_;
  std::set<std::string> stored_;
  std::vector<AuditEntry> trail_;
  std::vector<std::string> txn_records_;
  std::vector<AuditEntry> txn_audit_;
  size_t sp_records_ = 0, sp_audit_ = 0, sp_versions_ = 0;
  std::vector<TestVersion> txn_versions_;       // written in the open transaction, in order
  std::map<std::string, TestVersion> current_;  // committed: each test's current version
  long long change_seq_ = 0;
  std::map<std::string, Status> fail_insert_;
  Status commit_error_, savepoint_error_;
};

// Records what the engine reports.
class FakeObserver : public WriteObserver {
 public:
  void record_transaction(size_t jobs, double, bool ok) override {
    std::lock_guard<std::mutex> lock(mu_);
    groups_.push_back({jobs, ok});
  }
  void add_pending_writes(int delta) override { pending_ += delta; }
  // Waits (at most 10 s) until n writes are pending.
  bool wait_pending(int n) {
    for (int i = 0; i < 2000 && pending_.load() < n; ++i) usleep(5000);
    return pending_.load() >= n;
  }
  std::vector<std::pair<size_t, bool>> groups() {
    std::lock_guard<std::mutex> lock(mu_);
    return groups_;
  }
  std::atomic<int> pending_{0};

 private:
  std::mutex mu_;
  std::vector<std::pair<size_t, bool>> groups_;
};

// Runs each job on a thread of its own while the writer is held in the first group's begin(),
// so that every job queues behind it; then lets the writer go and waits for every answer.
// The first group holds one audit entry alone (`opener`).
void queue_behind_held_group(WriteEngine& engine, FakeBackend& backend, FakeObserver& observer,
                             const std::vector<std::function<void()>>& jobs) {
  backend.hold_first_begin();
  AuditEntry opener;
  opener.action = "opener";
  std::thread first([&] { EXPECT_TRUE(engine.append_audit(opener).ok()); });
  ASSERT_TRUE(backend.wait_in_begin());
  std::vector<std::thread> threads;
  for (const auto& job : jobs) threads.emplace_back(job);
  EXPECT_TRUE(observer.wait_pending(1 + static_cast<int>(jobs.size())));
  backend.release_begin();
  first.join();
  for (auto& t : threads) t.join();
}

// Every test runs in both commit modes: the engine's writer thread, and leader-based commit.
class Modes : public ::testing::TestWithParam<CommitMode> {
 protected:
  WriteEngineOptions engine_options() const {
    WriteEngineOptions o;
    o.mode = GetParam();
    return o;
  }
};

TEST_P(Modes, AJobThatFailsInItsSavepointIsAnsweredAloneTheRestCommit) {
  FakeBackend backend;
  FakeObserver observer;
  WriteEngine engine(backend, engine_options(), &observer);
  backend.fail_insert("bad", Status::Full("disk full"));
  WriteOutcome good, bad, dup_first, dup_second;
  const std::vector<TestRecord> pair = {make_record("d1"), make_record("d1")};
  queue_behind_held_group(engine, backend, observer,
                          {[&] { good = engine.insert(make_record("good")); },
                           [&] { bad = engine.insert(make_record("bad")); },
                           [&] { dup_first = engine.insert_all(pair); }});
  EXPECT_TRUE(good.status.ok());
  EXPECT_EQ(bad.status.code(), StatusCode::kFull);
  EXPECT_EQ(dup_first.status.code(), StatusCode::kDuplicate);
  EXPECT_EQ(dup_first.duplicate_ids, std::vector<std::string>{"d1"});
  EXPECT_EQ(good.txn_id, bad.txn_id);  // one group
  EXPECT_EQ(backend.stored(), std::set<std::string>{"good"});
  auto groups = observer.groups();
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[1], std::make_pair(size_t{3}, true));
  EXPECT_EQ(backend.aborts(), 0);
}

TEST_P(Modes, AFailingSavepointStatementFailsTheWholeGroup) {
  FakeBackend backend;
  FakeObserver observer;
  WriteEngine engine(backend, engine_options(), &observer);
  backend.fail_savepoint(Status::IoError("disk I/O error"));
  WriteOutcome w = engine.insert(make_record("s1"));
  EXPECT_EQ(w.status.code(), StatusCode::kIoError);
  EXPECT_TRUE(backend.stored().empty());
  EXPECT_EQ(backend.aborts(), 1);
}

TEST_P(Modes, AFailingCommitAnswersEveryJobOfTheGroupWithItsError) {
  FakeBackend backend;
  FakeObserver observer;
  WriteEngine engine(backend, engine_options(), &observer);
  backend.fail_commit(Status::IoError("disk I/O error"), /*from_commit=*/2);
  std::vector<WriteOutcome> out(3);
  std::vector<AuditEntry> audit(3);
  std::vector<std::function<void()>> jobs;
  for (int i = 0; i < 3; ++i) {
    jobs.push_back(
        [&, i] { out[i] = engine.insert(make_record("c" + std::to_string(i)), &audit[i]); });
  }
  queue_behind_held_group(engine, backend, observer, jobs);
  auto groups = observer.groups();
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_EQ(groups[1], std::make_pair(size_t{3}, false));
  for (const WriteOutcome& w : out) {
    EXPECT_EQ(w.status.code(), StatusCode::kIoError);
    EXPECT_TRUE(w.duplicate_ids.empty());
  }
  EXPECT_TRUE(backend.stored().empty());
  EXPECT_EQ(backend.trail().size(), 1u);  // the opener's entry only
  EXPECT_EQ(engine.recent_failure().code(), StatusCode::kIoError);
  StoreStats s;
  engine.add_stats(s);
  EXPECT_EQ(s.transactions, 2);
  EXPECT_EQ(s.commits, 1);
  EXPECT_EQ(s.rollbacks, 1);
  EXPECT_EQ(s.writes, 4);
  EXPECT_EQ(backend.aborts(), 1);
  // A later commit clears the health window.
  backend.fail_commit(Status::Ok(), 0);
  EXPECT_TRUE(engine.insert(make_record("after")).status.ok());
  EXPECT_TRUE(engine.recent_failure().ok());
}

// One cap for every backend: at most max_jobs requests and, past the first, max_records
// records per group; a request larger than the cap still goes, alone.
TEST_P(Modes, TheCapSplitsALargeQueueIntoSeveralGroups) {
  FakeBackend backend;
  FakeObserver observer;
  WriteEngineOptions options = engine_options();
  options.max_jobs = 3;
  options.max_records = 10;
  WriteEngine engine(backend, options, &observer);
  // Queued in this order: 4, 4, 4 records (12 > 10: split after two), then 1, 1, 1, 1 (three
  // jobs at most), then one of 25 records alone.
  std::vector<std::vector<TestRecord>> batches;
  const std::vector<size_t> sizes = {4, 4, 4, 1, 1, 1, 1, 25};
  for (size_t b = 0; b < sizes.size(); ++b) {
    batches.emplace_back();
    for (size_t i = 0; i < sizes[b]; ++i) {
      batches.back().push_back(make_record("b" + std::to_string(b) + "r" + std::to_string(i)));
    }
  }
  std::vector<WriteOutcome> out(batches.size());
  // Queued one by one, in order (each waits until the one before is pending).
  backend.hold_first_begin();
  AuditEntry opener;
  std::thread first([&] { EXPECT_TRUE(engine.append_audit(opener).ok()); });
  ASSERT_TRUE(backend.wait_in_begin());
  std::vector<std::thread> threads;
  for (size_t b = 0; b < batches.size(); ++b) {
    threads.emplace_back([&, b] { out[b] = engine.insert_all(batches[b]); });
    ASSERT_TRUE(observer.wait_pending(static_cast<int>(b) + 2));
  }
  backend.release_begin();
  first.join();
  for (auto& t : threads) t.join();
  for (const WriteOutcome& w : out) EXPECT_TRUE(w.status.ok()) << w.status.message();
  std::vector<size_t> jobs_per_group;
  for (const auto& g : observer.groups()) jobs_per_group.push_back(g.first);
  EXPECT_EQ(jobs_per_group, (std::vector<size_t>{1, 2, 3, 2, 1}));
  EXPECT_EQ(out[0].txn_id, out[1].txn_id);
  EXPECT_NE(out[1].txn_id, out[2].txn_id);
  EXPECT_EQ(out[2].txn_id, out[4].txn_id);
  EXPECT_NE(out[4].txn_id, out[5].txn_id);
  EXPECT_EQ(out[5].txn_id, out[6].txn_id);
  EXPECT_NE(out[6].txn_id, out[7].txn_id);
  EXPECT_EQ(backend.stored().size(), 41u);
}

// Each entry names its predecessor's hash, within a group and from one group to the next.
TEST_P(Modes, AuditEntriesChainAcrossGroups) {
  FakeBackend backend;
  FakeObserver observer;
  WriteEngine engine(backend, engine_options(), &observer);
  AuditEntry alone;
  alone.action = "alone";
  ASSERT_TRUE(engine.append_audit(alone).ok());
  std::vector<AuditEntry> entries(4);
  std::vector<std::function<void()>> jobs;
  for (size_t i = 0; i < entries.size(); ++i) {
    entries[i].action = "write";
    entries[i].clinic_id = "c1";
    jobs.push_back([&, i] {
      EXPECT_TRUE(engine.insert(make_record("a" + std::to_string(i)), &entries[i]).status.ok());
    });
  }
  queue_behind_held_group(engine, backend, observer, jobs);
  AuditEntry last;
  ASSERT_TRUE(engine.append_audit(last).ok());
  const std::vector<AuditEntry> trail = backend.trail();
  ASSERT_EQ(trail.size(), 7u);  // alone, opener, four writes, last
  EXPECT_EQ(observer.groups().size(), 4u);
  std::string prev = kAuditGenesis;
  for (size_t i = 0; i < trail.size(); ++i) {
    EXPECT_EQ(trail[i].seq, static_cast<long long>(i) + 1);
    EXPECT_EQ(trail[i].prev_hash, prev);
    EXPECT_EQ(trail[i].hash, audit_hash(trail[i]));
    prev = trail[i].hash;
  }
  for (const AuditEntry& e : entries) EXPECT_EQ(e.outcome, 201);
  EXPECT_EQ(last.prev_hash, trail[5].hash);
}

// A clock the test moves by hand (WriteEngineOptions::now).
struct FakeClock {
  std::atomic<long long> ms{0};
  std::function<std::chrono::steady_clock::time_point()> fn() {
    return [this] {
      return std::chrono::steady_clock::time_point() + std::chrono::milliseconds(ms.load());
    };
  }
};

AuditEntry read_entry(const char* action) {
  AuditEntry e;
  e.action = action;
  e.outcome = 200;
  return e;
}

// A crash-safe entry alone commits without waiting for the disk; the writer syncs once the
// window has passed on the engine's clock, not before.
TEST_P(Modes, ACrashSafeEntryAloneCommitsUndurablyAndIsSyncedWhenTheWindowEnds) {
  FakeBackend backend;
  FakeObserver observer;
  FakeClock clock;
  WriteEngineOptions options = engine_options();
  options.sync_window = std::chrono::milliseconds(100);
  options.now = clock.fn();
  WriteEngine engine(backend, options, &observer);
  AuditEntry read = read_entry("get");
  ASSERT_TRUE(engine.append_audit(read, AuditDurability::kCrashSafe).ok());
  EXPECT_EQ(backend.committed_durable(), std::vector<bool>{false});
  EXPECT_EQ(read.seq, 1);
  clock.ms = 99;
  AuditEntry second = read_entry("list");
  ASSERT_TRUE(engine.append_audit(second, AuditDurability::kCrashSafe).ok());
  EXPECT_EQ(backend.committed_durable(), (std::vector<bool>{false, false}));
  EXPECT_EQ(backend.syncs(), 0);  // the window counts from the first undurable commit
  clock.ms = 100;
  ASSERT_TRUE(backend.wait_syncs(1));
  // A durable entry commits durably; nothing is left to sync after it.
  clock.ms = 1000;
  AuditEntry durable = read_entry("get");
  ASSERT_TRUE(engine.append_audit(durable).ok());
  EXPECT_EQ(backend.committed_durable(), (std::vector<bool>{false, false, true}));
  EXPECT_EQ(backend.syncs(), 1);
  StoreStats s;
  engine.add_stats(s);  // the writer counted the sync before it took the last group
  EXPECT_EQ(s.commits, 3);
  EXPECT_EQ(s.undurable_commits, 2);
  EXPECT_EQ(s.durability_syncs, 1);
}

// Past the window, the next group commits durably (it makes the entries before it durable too)
// rather than waiting for a sync.
TEST_P(Modes, TheFirstGroupPastTheWindowCommitsDurably) {
  FakeBackend backend;
  FakeObserver observer;
  FakeClock clock;
  WriteEngineOptions options = engine_options();
  options.sync_window = std::chrono::milliseconds(100);
  options.now = clock.fn();
  WriteEngine engine(backend, options, &observer);
  AuditEntry first = read_entry("get");
  ASSERT_TRUE(engine.append_audit(first, AuditDurability::kCrashSafe).ok());
  // The writer is held in the next group's begin while the clock passes the window, so the
  // group after it is formed past the window.
  backend.hold_first_begin();
  AuditEntry held = read_entry("get");
  std::thread t([&] { EXPECT_TRUE(engine.append_audit(held, AuditDurability::kCrashSafe).ok()); });
  ASSERT_TRUE(backend.wait_in_begin());
  AuditEntry late = read_entry("list");
  std::thread u([&] { EXPECT_TRUE(engine.append_audit(late, AuditDurability::kCrashSafe).ok()); });
  ASSERT_TRUE(observer.wait_pending(2));
  clock.ms = 100;
  backend.release_begin();
  t.join();
  u.join();
  EXPECT_EQ(backend.committed_durable(), (std::vector<bool>{false, false, true}));
  EXPECT_EQ(backend.syncs(), 0);
}

// A group that holds a write, or a durable entry, commits durably whatever else it holds; the
// chain stays one chain across durable and undurable groups.
TEST_P(Modes, AGroupWithAWriteOrADurableEntryCommitsDurably) {
  FakeBackend backend;
  FakeObserver observer;
  FakeClock clock;
  WriteEngineOptions options = engine_options();
  options.now = clock.fn();
  WriteEngine engine(backend, options, &observer);
  std::vector<AuditEntry> reads(6, read_entry("get"));
  AuditEntry write_entry;
  write_entry.action = "create";
  queue_behind_held_group(
      engine, backend, observer,
      {[&] { EXPECT_TRUE(engine.append_audit(reads[0], AuditDurability::kCrashSafe).ok()); },
       [&] { EXPECT_TRUE(engine.insert(make_record("w1"), &write_entry).status.ok()); }});
  queue_behind_held_group(
      engine, backend, observer,
      {[&] { EXPECT_TRUE(engine.append_audit(reads[1], AuditDurability::kCrashSafe).ok()); },
       [&] { EXPECT_TRUE(engine.append_audit(reads[2], AuditDurability::kDurable).ok()); }});
  queue_behind_held_group(
      engine, backend, observer,
      {[&] { EXPECT_TRUE(engine.append_audit(reads[3], AuditDurability::kCrashSafe).ok()); },
       [&] { EXPECT_TRUE(engine.append_audit(reads[4], AuditDurability::kCrashSafe).ok()); }});
  // Each call queues a durable opener alone first: opener, mixed, opener, mixed, opener, reads.
  EXPECT_EQ(backend.committed_durable(), (std::vector<bool>{true, true, true, true, true, false}));
  const std::vector<AuditEntry> trail = backend.trail();
  ASSERT_EQ(trail.size(), 9u);
  std::string prev = kAuditGenesis;
  for (size_t i = 0; i < trail.size(); ++i) {
    EXPECT_EQ(trail[i].seq, static_cast<long long>(i) + 1);
    EXPECT_EQ(trail[i].prev_hash, prev);
    prev = trail[i].hash;
  }
}

// A group formed before the window ends commits undurably; when it ends past the window and no
// group follows, the sync comes at once, not a whole window later. (Leader mode: the syncing
// thread, which waits while a leader works, is woken when the last leader lets go past the
// window.) The window is an hour of real time here: only that wake-up brings the sync within the
// test's wait.
TEST_P(Modes, AnUndurableGroupEndingPastTheWindowIsSyncedAtOnce) {
  FakeBackend backend;
  FakeObserver observer;
  FakeClock clock;
  WriteEngineOptions options = engine_options();
  options.sync_window = std::chrono::hours(1);
  options.now = clock.fn();
  WriteEngine engine(backend, options, &observer);
  AuditEntry first = read_entry("get");
  ASSERT_TRUE(engine.append_audit(first, AuditDurability::kCrashSafe).ok());
  backend.hold_first_begin();
  AuditEntry held = read_entry("get");
  std::thread t([&] { EXPECT_TRUE(engine.append_audit(held, AuditDurability::kCrashSafe).ok()); });
  ASSERT_TRUE(backend.wait_in_begin());
  clock.ms = 3600 * 1000;  // the window ends while that group's transaction is open
  backend.release_begin();
  t.join();
  EXPECT_EQ(backend.committed_durable(), (std::vector<bool>{false, false}));
  EXPECT_TRUE(backend.wait_syncs(1));
}

// The stop syncs what is committed undurably; after a durable commit there is nothing to sync.
TEST_P(Modes, TheStopSyncsUndurableCommitsOnly) {
  FakeBackend backend;
  FakeClock clock;
  WriteEngineOptions options = engine_options();
  options.now = clock.fn();
  {
    WriteEngine engine(backend, options, nullptr);
    AuditEntry read = read_entry("get");
    ASSERT_TRUE(engine.append_audit(read, AuditDurability::kCrashSafe).ok());
    EXPECT_EQ(backend.syncs(), 0);
  }
  EXPECT_EQ(backend.syncs(), 1);
  {
    WriteEngine engine(backend, options, nullptr);
    AuditEntry read = read_entry("get");
    ASSERT_TRUE(engine.append_audit(read, AuditDurability::kCrashSafe).ok());
    ASSERT_TRUE(engine.insert(make_record("after-read")).status.ok());
  }
  EXPECT_EQ(backend.syncs(), 1);
  EXPECT_EQ(backend.committed_durable(), (std::vector<bool>{false, false, true}));
}

// The rules of a correction are the engine's, applied inside the transaction: two corrections
// of the same version in one group, the second sees the first (412); unknown (404), another
// clinic's (404), another patient (400), retracted (400); each audited with its outcome.
TEST_P(Modes, CorrectionsAreDecidedByTheEngineInsideTheTransaction) {
  FakeBackend backend;
  FakeObserver observer;
  WriteEngine engine(backend, engine_options(), &observer);
  ASSERT_TRUE(engine.insert(make_record("t1")).status.ok());
  ASSERT_TRUE(engine.insert(make_record("gone")).status.ok());
  auto correction = [](const std::string& id, long long expected, TestStatus status) {
    TestCorrection c;
    c.record = make_record(id);
    c.record.status = status;
    c.record.result = "corrected";
    c.reason = "why";
    c.expected_version = expected;
    c.changed_by = "k1";
    return c;
  };
  ASSERT_EQ(engine.correct(correction("gone", 1, TestStatus::kEnteredInError), nullptr).refusal,
            CorrectionRefusal::kNone);
  TestCorrection first = correction("t1", 1, TestStatus::kAmended);
  TestCorrection second = correction("t1", 1, TestStatus::kCorrected);
  TestCorrection unknown = correction("nope", 1, TestStatus::kCorrected);
  TestCorrection clinic = correction("t1", 1, TestStatus::kCorrected);
  clinic.record.clinic_id = "c2";
  TestCorrection patient = correction("t1", 2, TestStatus::kCorrected);
  patient.record.patient_id = "other";
  TestCorrection retracted = correction("gone", 2, TestStatus::kCorrected);
  std::vector<TestCorrection> jobs = {first, second, unknown, clinic, patient, retracted};
  std::vector<CorrectionOutcome> out(jobs.size());
  std::vector<AuditEntry> audit(jobs.size());
  std::vector<std::function<void()>> run;
  for (size_t i = 0; i < jobs.size(); ++i) {
    run.push_back([&, i] { out[i] = engine.correct(jobs[i], &audit[i]); });
  }
  queue_behind_held_group(engine, backend, observer, run);
  // first and second race for version 1 (their order in the group is the queue's): one commits,
  // the other sees its uncommitted version 2 and is refused. The rest are refused in any order.
  const size_t won = out[0].refusal == CorrectionRefusal::kNone ? 0 : 1;
  const size_t lost = 1 - won;
  const CorrectionRefusal want[] = {
      CorrectionRefusal::kNone,           CorrectionRefusal::kVersionMismatch,
      CorrectionRefusal::kNotFound,       CorrectionRefusal::kClinicDiffers,
      CorrectionRefusal::kPatientDiffers, CorrectionRefusal::kRetracted};
  const int outcomes[] = {200, 412, 404, 404, 400, 400};
  const size_t order[] = {won, lost, 2, 3, 4, 5};
  for (size_t k = 0; k < jobs.size(); ++k) {
    const size_t i = order[k];
    SCOPED_TRACE(i);
    ASSERT_TRUE(out[i].status.ok()) << out[i].status.message();
    EXPECT_EQ(out[i].refusal, want[k]);
    EXPECT_EQ(audit[i].outcome, outcomes[k]);
    EXPECT_EQ(out[i].txn_id, out[0].txn_id);  // one group
  }
  EXPECT_EQ(out[won].current.version, 2);
  EXPECT_EQ(out[lost].current.version, 2);  // the winner's, uncommitted when it ran
  TestVersion now = backend.current("t1");
  EXPECT_EQ(now.version, 2);
  EXPECT_EQ(now.record.status, jobs[won].record.status);
  EXPECT_EQ(now.changed_by, "k1");
  EXPECT_EQ(now.reason, std::optional<std::string>("why"));
  EXPECT_EQ(now.doc, test_document(jobs[won].record, now.created_at, 2, now.changed_at));
}

// A held long poll (wait_for_commit) wakes when a correction or a create commits.
TEST_P(Modes, WaitForCommitWakesWhenAWriteCommits) {
  FakeBackend backend;
  FakeObserver observer;
  WriteEngine engine(backend, engine_options(), &observer);
  for (bool by_correction : {false, true}) {
    SCOPED_TRACE(by_correction ? "correction" : "create");
    if (by_correction) {
      ASSERT_TRUE(engine.insert(make_record("c")).status.ok());
    }
    std::atomic<bool> woke{false};
    std::thread waiter([&] {
      engine.wait_for_commit(std::chrono::seconds(60));
      woke = true;
    });
    // Writes until the waiter wakes (it may not wait yet at the first); bounded.
    int writes = 0;
    for (; writes < 300 && !woke.load(); ++writes) {
      if (by_correction) {
        TestCorrection c;
        c.record = make_record("c");
        c.record.status = TestStatus::kCorrected;
        c.reason = "r";
        c.expected_version = writes + 1;
        ASSERT_EQ(engine.correct(c, nullptr).refusal, CorrectionRefusal::kNone);
      } else {
        ASSERT_TRUE(engine.insert(make_record("w" + std::to_string(writes))).status.ok());
      }
      usleep(1000);
    }
    EXPECT_TRUE(woke.load()) << "not woken by " << writes << " commits";
    waiter.join();
  }
}

// With a deadline, every write is answered within it: a write that waited for the writer
// longer is answered busy without being tried (nothing of it was sent, so it is not stored), a
// group is given what is left of its oldest write's time, and while a write waits longer than
// the deadline the health check says so.
TEST_P(Modes, AWriteThatWaitedPastTheDeadlineIsBusyUntriedAndHealthSaysSo) {
  FakeBackend backend;
  FakeObserver observer;
  WriteEngineOptions o = engine_options();
  o.deadline = std::chrono::milliseconds(200);
  WriteEngine engine(backend, o, &observer);
  backend.hold_first_begin();
  WriteOutcome first, late;
  const auto before = std::chrono::steady_clock::now();
  std::thread a([&] { first = engine.insert(make_record("first")); });
  ASSERT_TRUE(backend.wait_in_begin());
  std::thread b([&] { late = engine.insert(make_record("late")); });
  EXPECT_TRUE(observer.wait_pending(2));
  EXPECT_TRUE(engine.recent_failure().ok());
  usleep(300 * 1000);  // both have waited longer than the deadline
  EXPECT_EQ(engine.recent_failure().code(), StatusCode::kUnavailable);
  backend.release_begin();
  a.join();
  b.join();
  EXPECT_TRUE(first.status.ok()) << first.status.message();  // the fake keeps no deadline
  EXPECT_EQ(late.status.code(), StatusCode::kBusy) << late.status.message();
  EXPECT_EQ(backend.begins(), 1);
  EXPECT_EQ(backend.stored(), (std::set<std::string>{"first"}));
  ASSERT_EQ(backend.deadlines().size(), 1u);
  EXPECT_GE(backend.deadlines()[0], before + o.deadline);
  EXPECT_TRUE(engine.recent_failure().ok());
}

// Without a deadline (SQLite), nothing expires.
TEST_P(Modes, WithoutADeadlineAQueuedWriteWaitsItsTurn) {
  FakeBackend backend;
  FakeObserver observer;
  WriteEngine engine(backend, engine_options(), &observer);
  backend.hold_first_begin();
  WriteOutcome first, late;
  std::thread a([&] { first = engine.insert(make_record("first")); });
  ASSERT_TRUE(backend.wait_in_begin());
  std::thread b([&] { late = engine.insert(make_record("late")); });
  EXPECT_TRUE(observer.wait_pending(2));
  usleep(300 * 1000);
  EXPECT_TRUE(engine.recent_failure().ok());
  backend.release_begin();
  a.join();
  b.join();
  EXPECT_TRUE(first.status.ok());
  EXPECT_TRUE(late.status.ok());
  EXPECT_TRUE(backend.deadlines().empty());
}

// A commit whose outcome is unknown breaks the write path (health 503) until a group commits.
TEST_P(Modes, AnUnknownCommitOutcomeTurnsHealthRedUntilAGroupCommits) {
  FakeBackend backend;
  FakeObserver observer;
  WriteEngine engine(backend, engine_options(), &observer);
  backend.fail_commit(Status::OutcomeUnknown("COMMIT not confirmed"), 1);
  WriteOutcome out = engine.insert(make_record("maybe"));
  EXPECT_EQ(out.status.code(), StatusCode::kOutcomeUnknown);
  EXPECT_EQ(engine.recent_failure().code(), StatusCode::kOutcomeUnknown);
}

INSTANTIATE_TEST_SUITE_P(WriteEngine, Modes,
                         ::testing::Values(CommitMode::kThread, CommitMode::kLeader),
                         [](const ::testing::TestParamInfo<CommitMode>& info) {
                           return info.param == CommitMode::kLeader ? "leader" : "thread";
                         });

}  // namespace
}  // namespace tdapi
