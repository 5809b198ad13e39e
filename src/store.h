// store.h: the storage interface handlers use; SqliteStore (store_sqlite.h) implements it.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "status.h"
#include "test_record.h"

namespace tdapi {

// Which tests to list: one clinic, optionally narrowed, in insertion order.
struct ListQuery {
  std::string clinic_id;
  std::optional<std::string> patient_id;  // exact match when set
  std::optional<std::string> test_type;   // exact match when set
  long long after_seq = 0;                // only tests stored after this position (paging)
  long long limit = -1;                   // at most this many; < 0: all
};

// Counters since open, and the size of the database files.
struct StoreStats {
  long long transactions = 0;  // group-commit transactions (COMMIT or ROLLBACK of a batch)
  long long commits = 0;
  long long rollbacks = 0;
  long long writes = 0;          // write requests handled (single records and batches)
  long long database_bytes = 0;  // the database file plus its WAL
};

// What happened to one write.
struct WriteOutcome {
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
  virtual WriteOutcome insert(const TestRecord& record) = 0;

  // Stores all records in one transaction, or none: Ok after COMMIT; Duplicate with every
  // test_id that exists already or repeats within records (nothing written); other errors as
  // insert. records must not be empty.
  virtual WriteOutcome insert_all(const std::vector<TestRecord>& records) = 0;

  // Fetches one test's stored JSON object into json. Ok, NotFound, or a storage error.
  virtual Status get_test(std::string_view test_id, std::string& json) = 0;

  // Calls on_row for every test matching query, oldest first, until on_row returns false.
  // on_row gets the stored JSON object of the test (the five fields and created_at) and its
  // position `seq` (strictly increasing in insertion order); the view is valid only during the
  // call. Returns Ok (also when nothing matches) or the storage error that stopped the listing;
  // rows already delivered stay delivered.
  virtual Status list_tests(
      const ListQuery& query,
      const std::function<bool(std::string_view json, long long seq)>& on_row) = 0;

  // 16 random bytes created with the database and kept in it: the key that signs paging
  // cursors, so cursors stay valid across restarts. This function can't fail.
  virtual const std::string& instance_secret() const = 0;

  // Counters and sizes for metrics. This function can't fail.
  virtual StoreStats stats() const = 0;

  // Runs a real query against the database. Ok when it answers, else the error.
  virtual Status check_health() = 0;
};

}  // namespace tdapi
