// test_record.h: a medical test record as stored, and the limits a record must respect.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

namespace tdapi {

// A result's status, after FHIR Observation.status. A create is preliminary or final; a
// correction makes it final, amended, corrected or entered-in-error (a retraction: the record
// stays, and takes no further correction).
enum class TestStatus { kPreliminary, kFinal, kAmended, kCorrected, kEnteredInError };

// "preliminary", "final", "amended", "corrected", "entered-in-error". This function can't fail.
const char* test_status_name(TestStatus status);
// The status named `name` exactly (lower case), or nullopt.
std::optional<TestStatus> parse_test_status(std::string_view name);

// The five fields a client submits, and the status it gives them. All strings are non-empty,
// valid UTF-8, within the limits below.
struct TestRecord {
  std::string test_id;
  std::string patient_id;
  std::string clinic_id;
  std::string test_type;
  std::string result;
  TestStatus status = TestStatus::kFinal;
};

// The record as the API returns it, one JSON object: the five fields, created_at, status,
// version, updated_at (in that order). This function can't fail.
std::string test_document(const TestRecord& record, std::string_view created_at, long long version,
                          std::string_view updated_at);

// The record's JSON before versions (the five fields, then created_at unless it is empty).
// Transitional: callers move to test_document.
std::string test_record_json(const TestRecord& record, std::string_view created_at);

// One version of a test as stored (every create is version 1; every correction adds one).
struct TestVersion {
  TestRecord record;                  // the five fields and the status of this version
  long long version = 0;              // from 1
  std::string created_at;             // when the test was created (the same in every version)
  std::string changed_at;             // when this version committed (the record's updated_at then)
  std::string changed_by;             // the key id that wrote it, or "anonymous" (auth off)
  std::optional<std::string> reason;  // the correction's reason; nullopt for version 1
  long long change_seq = 0;  // this version's place in the commit order of all changes (the
                             // change feed's position), strictly increasing, never reused
  std::string doc;           // test_document of this version, as stored
};

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
