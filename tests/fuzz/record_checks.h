// record_checks.h: what every record a validator accepted must be, for the fuzz targets.
#pragma once

#include <cassert>
#include <cstddef>
#include <string>

#include "api/validate.h"
#include "base/utf8.h"
#include "store/test_record.h"

namespace fuzz_checks {

// A field as accepted: not empty, UTF-8, no NUL, at most max_chars code points.
inline void check_field(const std::string& v, size_t max_chars) {
  assert(!v.empty());
  assert(tdapi::is_valid_utf8(v));
  assert(v.find('\0') == std::string::npos);
  size_t chars = 0;
  for (char c : v) chars += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  assert(chars <= max_chars);
}

// The five fields of an accepted record, each by its own limit.
inline void check_record(const tdapi::TestRecord& r) {
  check_field(r.test_id, tdapi::kMaxIdChars);
  check_field(r.patient_id, tdapi::kMaxIdChars);
  check_field(r.clinic_id, tdapi::kMaxIdChars);
  check_field(r.test_type, tdapi::kMaxTestTypeChars);
  check_field(r.result, tdapi::kMaxResultChars);
}

// The five fields of a and b are the same.
inline bool same_fields(const tdapi::TestRecord& a, const tdapi::TestRecord& b) {
  return a.test_id == b.test_id && a.patient_id == b.patient_id && a.clinic_id == b.clinic_id &&
         a.test_type == b.test_type && a.result == b.result;
}

}  // namespace fuzz_checks
