// fuzz_batch.cpp: libFuzzer target over batch bodies: the byte pre-scan (scan_json), its budgets,
// JSON parsing and validation of every item.
// Invariants: never crash; an accepted batch holds 1..kMaxRecords records, each valid by every
// rule, as many as the scan counted; accepting is stable (the records re-serialised as an array
// validate to the same records); a body the scan calls invalid is never accepted.
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <string>

#include "api/validate.h"
#include "base/json.h"
#include "base/utf8.h"
#include "record_checks.h"
#include "store/test_record.h"

using tdapi::TestRecord;

namespace {

constexpr size_t kMaxRecords = 8;  // small, so the count limit is reached often

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  tdapi::BatchValidation v = tdapi::validate_test_batch(body, kMaxRecords);
  tdapi::JsonScan scan = tdapi::scan_json(body, tdapi::kMaxBodyDepth);
  if (!v.ok) {
    assert(!v.message.empty());
    assert(v.records.empty());
    return 0;
  }
  assert(scan.outcome == tdapi::JsonScan::Outcome::kOk && scan.root == '[');
  assert(!v.records.empty() && v.records.size() <= kMaxRecords);
  assert(v.records.size() == scan.root_items);
  std::string again = "[";
  for (const TestRecord& r : v.records) {
    fuzz_checks::check_record(r);
    assert(tdapi::check_id_text(r.test_id, tdapi::kMaxIdChars).empty());
    assert(r.test_id != "." && r.test_id != "..");
    if (again.size() > 1) again += ',';
    again += tdapi::test_record_json(r, "");
  }
  again += ']';
  tdapi::BatchValidation v2 = tdapi::validate_test_batch(again, kMaxRecords);
  assert(v2.ok && v2.records.size() == v.records.size());
  for (size_t i = 0; i < v.records.size(); ++i)
    assert(fuzz_checks::same_fields(v.records[i], v2.records[i]));
  return 0;
}
