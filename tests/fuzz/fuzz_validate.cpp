// fuzz_validate.cpp: libFuzzer target over body checks, JSON parsing and record validation.
// Invariants: never crash; an accepted record is valid by every rule; accepting is stable
// (the record re-serialised validates to the same record).
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <string>

#include "api/validate.h"
#include "base/utf8.h"
#include "store/test_record.h"

using tdapi::TestRecord;

static void check_field(const std::string& v, size_t max_chars) {
  assert(!v.empty());
  assert(tdapi::is_valid_utf8(v));
  assert(v.find('\0') == std::string::npos);
  size_t chars = 0;
  for (char c : v) chars += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  assert(chars <= max_chars);
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  tdapi::RecordValidation v = tdapi::validate_test_record(body);
  if (!v.ok) {
    assert(!v.message.empty());
    return 0;
  }
  const TestRecord& r = v.record;
  check_field(r.test_id, tdapi::kMaxIdChars);
  check_field(r.patient_id, tdapi::kMaxIdChars);
  check_field(r.clinic_id, tdapi::kMaxIdChars);
  check_field(r.test_type, tdapi::kMaxTestTypeChars);
  check_field(r.result, tdapi::kMaxResultChars);

  tdapi::RecordValidation v2 = tdapi::validate_test_record(tdapi::test_record_json(r, ""));
  assert(v2.ok);
  assert(v2.record.test_id == r.test_id && v2.record.patient_id == r.patient_id &&
         v2.record.clinic_id == r.clinic_id && v2.record.test_type == r.test_type &&
         v2.record.result == r.result);
  return 0;
}
