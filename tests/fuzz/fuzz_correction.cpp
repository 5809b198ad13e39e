// fuzz_correction.cpp: libFuzzer target over the PUT /tests/{id} body: body checks, JSON parsing
// and correction validation. Invariants: never crash; a refused body says why; an accepted
// correction is valid by every rule (the five fields', a status a correction may set, a reason
// of 1..kMaxReasonChars code points with no control characters but tab, LF and CR); accepting is
// stable (the correction re-serialised validates to the same correction).
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
using tdapi::TestStatus;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view body(reinterpret_cast<const char*>(data), size);
  tdapi::CorrectionValidation v = tdapi::validate_test_correction(body);
  if (!v.ok) {
    assert(!v.message.empty());
    return 0;
  }
  const TestRecord& r = v.record;
  fuzz_checks::check_record(r);
  assert(r.status != TestStatus::kPreliminary);  // only a create may say preliminary
  fuzz_checks::check_field(v.reason, tdapi::kMaxReasonChars);
  for (char c : v.reason) {
    unsigned char u = static_cast<unsigned char>(c);
    assert(u >= 0x20 || c == '\t' || c == '\n' || c == '\r');
    assert(u != 0x7F);
  }

  // The same correction written out again: the five fields, then status and reason.
  std::string again = tdapi::test_record_json(r, "");
  assert(!again.empty() && again.back() == '}');
  again.pop_back();
  again += ",\"status\":\"";
  again += tdapi::test_status_name(r.status);
  again += "\",\"reason\":";
  tdapi::append_json_string(again, v.reason);
  again += '}';
  tdapi::CorrectionValidation v2 = tdapi::validate_test_correction(again);
  assert(v2.ok);
  assert(v2.record.test_id == r.test_id && v2.record.patient_id == r.patient_id &&
         v2.record.clinic_id == r.clinic_id && v2.record.test_type == r.test_type &&
         v2.record.result == r.result && v2.record.status == r.status && v2.reason == v.reason);
  return 0;
}
