// test_record.h: a medical test record as stored, and the limits a record must respect.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace tdapi {

// The five fields a client submits. All are non-empty, valid UTF-8, within the limits below.
struct TestRecord {
  std::string test_id;
  std::string patient_id;
  std::string clinic_id;
  std::string test_type;
  std::string result;
};

// The record as a JSON object (the five fields, then created_at unless it is empty), exactly as
// the API returns it. This function can't fail.
std::string test_record_json(const TestRecord& record, std::string_view created_at);

// Limits, in Unicode code points (documented in the README and docs).
constexpr size_t kMaxIdChars = 128;        // test_id, patient_id, clinic_id
constexpr size_t kMaxTestTypeChars = 128;  // test_type
constexpr size_t kMaxResultChars = 16384;  // result
// Largest POST /tests body, in bytes; nginx's client_max_body_size is the same.
constexpr size_t kMaxBodyBytes = 64 * 1024;
// Largest body the FastCGI adapter reads for any route (POST /tests/batch); each handler
// enforces its own limit below it.
constexpr size_t kMaxRequestBodyBytes = 4 * 1024 * 1024;

}  // namespace tdapi
