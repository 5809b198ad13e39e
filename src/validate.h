// validate.h: request body -> TestRecord, or the list of every problem found. Pure; fuzzed.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "http.h"
#include "json.h"
#include "test_record.h"

namespace tdapi {

struct RecordValidation {
  bool ok = false;
  TestRecord record;               // filled when ok
  std::string message;             // when !ok: what is wrong with the body as a whole
  std::vector<FieldError> errors;  // when !ok: every field problem (may be empty)
};

// Validates a POST /tests body. Rejects: an empty body; bytes that are not UTF-8; a NUL byte or
// a \u0000 escape anywhere; invalid JSON or bytes after the document; a non-object; duplicate
// keys; unknown keys; and per field: missing, not a string, empty, whitespace only, too long,
// control characters (any in ids and test_type; in result only tab, LF and CR are allowed).
// This function can't fail: every input yields ok or a message with errors.
RecordValidation validate_test_record(std::string_view body);

struct BatchValidation {
  bool ok = false;
  std::vector<TestRecord> records;  // filled when ok
  std::string message;              // when !ok
  std::vector<FieldError> errors;   // when !ok: every problem of every item, with its index
};

// Validates a POST /tests/batch body: a JSON array of 1..max_records objects, each checked as
// validate_test_record checks one. This function can't fail.
BatchValidation validate_test_batch(std::string_view body, size_t max_records);

// Checks raw body bytes before JSON parsing: UTF-8, no NUL byte, no \u0000 escape in a string.
// Returns an empty string when fine, otherwise the client message.
std::string check_body_bytes(std::string_view body);

}  // namespace tdapi
