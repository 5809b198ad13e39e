// store.h: the storage interface handlers use; SqliteStore (store_sqlite.h) implements it.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "status.h"
#include "test_record.h"

namespace tdapi {

// A stored test as read back. The views are valid only during the callback that receives them.
struct StoredTestView {
  std::string_view test_id;
  std::string_view patient_id;
  std::string_view clinic_id;
  std::string_view test_type;
  std::string_view result;
  std::string_view created_at;  // "YYYY-MM-DDTHH:MM:SS.mmmZ", UTC
};

// What happened to one write.
struct WriteOutcome {
  Status status;                // Ok: committed and durable. Otherwise nothing was written.
  long long txn_id = -1;        // the transaction (group commit batch) it was part of
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

  // Calls on_row for every test of clinic_id, oldest first, until on_row returns false.
  // Returns Ok (also for a clinic with no tests) or the storage error that stopped the listing;
  // rows already delivered stay delivered.
  virtual Status list_by_clinic(std::string_view clinic_id,
                                const std::function<bool(const StoredTestView&)>& on_row) = 0;

  // Runs a real query against the database. Ok when it answers, else the error.
  virtual Status check_health() = 0;
};

}  // namespace tdapi
