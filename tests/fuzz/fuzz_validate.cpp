// fuzz_validate.cpp: libFuzzer target over body checks, JSON parsing and record validation.
// Invariants: never crash; an accepted record is valid by every rule; accepting is stable
// (the record re-serialised validates to the same record).
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <string>

#include "api/validate.h"
#include "base/utf8.h"
#include "record_checks.h"
#include "store/test_record.h"

using tdapi::TestRecord;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  tdapi::RecordValidation v = tdapi::validate_test_record(body);
  if (!v.ok) {
    assert(!v.message.empty());
    return 0;
  }
  const TestRecord& r = v.record;
  fuzz_checks::check_record(r);

  tdapi::RecordValidation v2 = tdapi::validate_test_record(tdapi::test_record_json(r, ""));
  assert(v2.ok);
  assert(fuzz_checks::same_fields(v2.record, r));
  return 0;
}
