// store.h: the storage interface handlers use; SqliteStore (store_sqlite.h) and PgStore
// (store_pg.h) implement it.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "store/audit.h"
#include "store/keys.h"
#include "store/status.h"
#include "store/test_record.h"

namespace tdapi {

// Which tests to list: one clinic, optionally narrowed, in insertion order, each at its current
// version.
struct ListQuery {
  std::string clinic_id;
  std::optional<std::string> patient_id;  // exact match when set
  std::optional<std::string> test_type;   // exact match when set
  std::optional<TestStatus> status;       // current status, exact match when set
  // Time ranges, half-open: from <= t < to. Each bound is a UTC timestamp in the stored form
  // ("YYYY-MM-DDTHH:MM:SS.mmmZ", as utc_timestamp_ms makes), so they compare as text. Served from
  // an index on (clinic_id, created_at) / (clinic_id, updated_at): no scan of the clinic's rows
  // outside the range.
  std::optional<std::string> created_from, created_to;
  std::optional<std::string> updated_from, updated_to;
  long long after_seq = 0;  // only tests stored after this position (paging)
  long long limit = -1;     // at most this many; < 0: all
};

// A correction (PUT /tests/{id}): the record as it is to become, checked against the stored one
// inside the write transaction.
struct TestCorrection {
  TestRecord record;           // test_id, patient_id and clinic_id as stored; status final,
                               // amended, corrected or entered-in-error
  std::string reason;          // 1..500 characters
  long long expected_version;  // If-Match: the version the client corrects
  std::string changed_by;      // the key id, or "anonymous"
};

// Why a correction wrote nothing although storage worked (checked in this order).
enum class CorrectionRefusal {
  kNone,             // committed
  kNotFound,         // no test with this test_id
  kClinicDiffers,    // the stored test is another clinic's (clinic_id cannot change)
  kPatientDiffers,   // patient_id cannot change
  kRetracted,        // the stored version is entered-in-error: no further correction
  kVersionMismatch,  // expected_version is not the current version
};

// What happened to one correction.
struct CorrectionOutcome {
  Status status;  // Ok: the transaction worked (see refusal); otherwise a storage error and
                  // nothing was written
  CorrectionRefusal refusal = CorrectionRefusal::kNone;
  long long txn_id = -1;
  // kNone: the new version as committed. A refusal other than kNotFound: the stored current
  // version (its number for the 412, its status for the 400, its clinic for the clinic check).
  TestVersion current;
};

// Which versions of one test to list: newest first.
struct HistoryQuery {
  std::string test_id;
  long long before_version = 0;  // only versions older than this (paging); 0: from the newest
  long long limit = -1;          // at most this many; < 0: all
};

// Which changes of one clinic to list: commit order.
struct ChangeQuery {
  std::string clinic_id;
  long long after_change_seq = 0;  // only changes after this position (the feed's token)
  long long limit = 100;           // at most this many (> 0)
};

// Which audit entries to list: oldest first, optionally narrowed.
struct AuditQuery {
  std::optional<std::string> since;      // ts >= since (UTC ISO 8601, compared as text)
  std::optional<std::string> until;      // ts < until
  std::optional<std::string> clinic_id;  // exact match
  long long after_seq = 0;               // only entries after this position (paging)
  long long limit = -1;                  // at most this many; < 0: all
};

// One row of the tests table with every column, for copying between stores (migrate).
struct StoredTest {
  long long seq = 0;
  std::string test_id, patient_id, clinic_id, test_type, result, created_at, doc;
  std::string status = "final";  // test_status_name of the current version
  long long version = 1;
  std::string updated_at;
};

// A test as the single read returns it: its current document, the clinic access is decided by,
// and its version (the ETag).
struct StoredDocument {
  std::string json;
  std::string clinic_id;
  long long version = 0;
};

// Counters since open, and the size of the database files.
struct StoreStats {
  long long transactions = 0;  // group-commit transactions (COMMIT or ROLLBACK of a batch)
  long long commits = 0;
  long long rollbacks = 0;
  long long writes = 0;             // write requests handled (single records and batches)
  long long undurable_commits = 0;  // commits that did not wait for the disk (crash-safe entries)
  long long durability_syncs = 0;   // syncs that made such commits durable (no commit came)
  long long database_bytes = 0;     // the database file plus its WAL
  // -1 where the backend has no such thing (PostgreSQL: the server's files are its own).
  long long wal_bytes = -1;               // SQLite: WAL content since its last restart
  long long database_pages = -1;          // SQLite: page_count after the last commit
  long long max_pages = -1;               // SQLite: max_page_count (MAX_DB_PAGES or SQLite's)
  long long filesystem_bytes = -1;        // SQLite: size of the database's filesystem
  long long filesystem_avail_bytes = -1;  // SQLite: free bytes on it for this user
  // SQLite: the integrity check of the file since start (kNone: PostgreSQL, whose server checks
  // its own pages). kRunning while the background check after a clean-stop start reads it.
  enum class Integrity { kNone, kRunning, kOk, kDamaged, kFailed };
  Integrity integrity = Integrity::kNone;
  double integrity_seconds = -1;  // how long the finished check took; < 0: none finished
};

// How an audit entry appended on its own (a read's, a denial's) is committed.
enum class AuditDurability {
  kDurable,    // on disk (fsync) before append_audit returns: survives a power cut
  kCrashSafe,  // committed before append_audit returns, without waiting for the disk: survives
               // the app's crash; on disk with the next durable commit or within
               // kCrashSafeSyncWindowMs (a power cut loses at most that window of such entries)
};
constexpr int kCrashSafeSyncWindowMs = 100;

// What happened to one write.
struct WriteOutcome {     // of a create: stores it as version 1 (status preliminary or final)
  Status status;          // Ok: committed and durable. Otherwise nothing was written.
  long long txn_id = -1;  // the transaction (group commit batch) it was part of
  std::vector<std::string> duplicate_ids;  // for kDuplicate: the test_ids that already exist
};

// Implementations are safe for concurrent use from several threads.
class Store {
 public:
  virtual ~Store() = default;

  // Stores one record durably. Returns Ok only after COMMIT succeeded; Duplicate when the
  // test_id exists (the stored record is untouched); Busy, Full, Corrupt, ReadOnly or Internal
  // when storage failed (rolled back: nothing of this record was written).
  WriteOutcome insert(const TestRecord& record) { return insert(record, nullptr); }

  // Stores all records in one transaction, or none: Ok after COMMIT; Duplicate with every
  // test_id that exists already or repeats within records (nothing written); other errors as
  // insert. records must not be empty.
  WriteOutcome insert_all(const std::vector<TestRecord>& records) {
    return insert_all(records, nullptr);
  }

  // As insert, and records `audit` in the same transaction: its outcome is set to 201 when the
  // record is stored or 409 for a duplicate (so the audit entry commits with the data), and
  // its seq, prev_hash and hash are filled in. audit may be null.
  virtual WriteOutcome insert(const TestRecord& record, AuditEntry* audit) = 0;
  // As insert_all, and records every entry of `audits` (one per clinic the batch touches) in
  // the same transaction, each with outcome 201 or 409. audits may be null.
  virtual WriteOutcome insert_all(const std::vector<TestRecord>& records,
                                  std::vector<AuditEntry>* audits) = 0;

  // Appends one audit entry (its outcome set by the caller) to the chain durably: Ok only after
  // COMMIT, with seq, prev_hash and hash filled in; otherwise a storage error.
  Status append_audit(AuditEntry& entry) { return append_audit(entry, AuditDurability::kDurable); }
  // The same, committed as `durability` says (kCrashSafe: Ok once committed without waiting for
  // the disk; the entry keeps its place in the chain).
  virtual Status append_audit(AuditEntry& entry, AuditDurability durability) = 0;

  // Calls on_entry for every audit entry matching query, oldest first, until it returns false.
  // Ok or the storage error that stopped the listing.
  virtual Status list_audit(const AuditQuery& query,
                            const std::function<bool(const AuditEntry&)>& on_entry) = 0;
  // The number of audit entries with seq <= up_to (`audit verify` compares it with the chain it
  // verified: an entry the listing did not show is a problem too).
  virtual Status count_audit(long long up_to, long long& rows) = 0;

  // Access keys. create_key: Ok, Duplicate (the key_id exists), or a storage error.
  virtual Status create_key(const ApiKey& key) = 0;
  // Every key, oldest first (with its hash: callers must not show it).
  virtual Status list_keys(std::vector<ApiKey>& out) = 0;
  // Marks the key revoked at `when`. Ok (also when it was revoked already), NotFound.
  virtual Status revoke_key(std::string_view key_id, const std::string& when) = 0;
  // Fetches one key. Ok, NotFound, or a storage error.
  virtual Status find_key(std::string_view key_id, ApiKey& out) = 0;

  // Corrects one test (PUT /tests/{id}) through the write engine: in one transaction, reads the
  // stored test, refuses (CorrectionOutcome::refusal) or writes the next version (the tests row
  // and a test_versions row) and `audit`, whose outcome the engine sets (200 committed; 404 not
  // found or another clinic's; 400 patient differs or retracted; 412 version mismatch). Ok only
  // after COMMIT. audit may be null.
  virtual CorrectionOutcome correct(const TestCorrection& correction, AuditEntry* audit) = 0;

  // Calls on_version for the versions of test_id, newest first, as query says, until it returns
  // false. NotFound when there is no such test; clinic_id receives its clinic (access).
  virtual Status list_history(const HistoryQuery& query, std::string& clinic_id,
                              const std::function<bool(const TestVersion&)>& on_version) = 0;

  // Calls on_change for the clinic's changes (every create and correction: the version it made)
  // after query.after_change_seq, in commit order, until it returns false. A change that commits
  // after a reader passed its position is never behind that position (change_seq is assigned in
  // commit order, also across app nodes). The five fields and created_at are in doc only
  // (record.patient_id, test_type, result and created_at are left empty: the feed sends the
  // document as it is). Ok (also when none) or a storage error.
  virtual Status list_changes(const ChangeQuery& query,
                              const std::function<bool(const TestVersion&)>& on_change) = 0;
  // The highest change_seq committed (0 when none), by a cheap query: what a held feed request
  // watches for (it also sees changes committed by other app nodes).
  virtual Status latest_change(long long& change_seq) = 0;
  // Returns when this process commits a change (a create or a correction), or after timeout:
  // held feed requests wake at once for local commits (and look at latest_change at least every
  // timeout for others').
  virtual void wait_for_commit(std::chrono::milliseconds timeout) = 0;

  // Fetches one test's current document, clinic and version. Ok, NotFound, or a storage error.
  virtual Status get_test(std::string_view test_id, StoredDocument& out) {
    return get_test(test_id, out.json, out.clinic_id);
  }
  // Fetches one test's stored JSON object into json, and its row's clinic_id column into
  // clinic_id (what access to it is decided by, as for listings). Ok, NotFound, or a storage
  // error.
  virtual Status get_test(std::string_view test_id, std::string& json, std::string& clinic_id) = 0;
  // The same without the clinic.
  Status get_test(std::string_view test_id, std::string& json) {
    std::string clinic_id;
    return get_test(test_id, json, clinic_id);
  }

  // Calls on_row for every test matching query, oldest first, until on_row returns false.
  // on_row gets the stored JSON object of the test (the five fields and created_at) and its
  // position `seq` (strictly increasing in insertion order); the view is valid only during the
  // call. The rows come page by page (at most 1,000 rows or about 256 KB of documents): on_row may
  // be called while the store holds the page's read snapshot, so it must not wait (keep the row in
  // memory); after each page, with the snapshot released, the store calls on_page_end (when given):
  // the place to send what the rows made, and to stop the listing by returning false. Returns Ok
  // (also when nothing matches) or the storage error that stopped the listing; rows already
  // delivered stay delivered.
  using RowFn = std::function<bool(std::string_view json, long long seq)>;
  using PageEndFn = std::function<bool()>;
  virtual Status list_tests(const ListQuery& query, const RowFn& on_row,
                            const PageEndFn& on_page_end) = 0;
  Status list_tests(const ListQuery& query, const RowFn& on_row) {
    return list_tests(query, on_row, nullptr);
  }

  // Every test after after_seq, in seq order, at most limit rows, until on_row returns false
  // (migrate copies and checks stores with it). Ok or the storage error.
  virtual Status list_all_tests(long long after_seq, long long limit,
                                const std::function<bool(const StoredTest&)>& on_row) = 0;
  // Every version after after_change_seq, in change_seq order, at most limit rows, until
  // on_version returns false (migrate). Ok or the storage error.
  virtual Status list_all_versions(long long after_change_seq, long long limit,
                                   const std::function<bool(const TestVersion&)>& on_version) = 0;

  // 16 random bytes created with the database and kept in it: the key that signs paging
  // cursors, so cursors stay valid across restarts. This function can't fail.
  virtual const std::string& instance_secret() const = 0;

  // Counters and sizes for metrics. This function can't fail.
  virtual StoreStats stats() const = 0;

  // Runs a real query against the database. Ok when it answers, else the error.
  virtual Status check_health() = 0;

  // Where this process's last commit is in the primary's log (store/read_after.h), for a
  // write's answer to carry: 0 when the store has no read replicas (nothing to wait for).
  virtual uint64_t commit_position() const { return 0; }

  // The import side of this store (`migrate` copies into it), or null when it has none.
  virtual class ImportTarget* import_target() { return nullptr; }
};

// What `migrate` needs of the store it copies into (PostgreSQL) beyond the Store contract.
class ImportTarget {
 public:
  virtual ~ImportTarget() = default;
  // Copies rows as they are (seq, created_at, doc kept) in one transaction, rows whose test_id
  // exists already skipped; moves the seq past the highest one.
  virtual Status import_tests(const std::vector<StoredTest>& rows) = 0;
  // Versions as they are (change_seq kept) in one transaction, versions whose change_seq exists
  // skipped; moves the change sequence past the highest one.
  virtual Status import_versions(const std::vector<TestVersion>& versions) = 0;
  // Audit entries as they are (seq and hashes kept); entries whose seq exists are skipped.
  virtual Status import_audit(const std::vector<AuditEntry>& entries) = 0;
  // Keys as they are; keys whose id exists are skipped.
  virtual Status import_keys(const std::vector<ApiKey>& keys) = 0;
  // Replaces the cursor key (so cursors issued by the source stay valid).
  virtual Status set_instance_secret(const std::string& secret) = 0;
  // Connections of running services (application_name testdata-api) to this database.
  virtual Status count_service_sessions(long long& n) = 0;
  // The highest seq of the tests and of the audit trail (0 when empty).
  virtual Status max_seqs(long long& tests_seq, long long& audit_seq) = 0;
};

}  // namespace tdapi
