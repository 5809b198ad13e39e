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

// Validates the fields of one already-parsed JSON object (used for single records and batches).
// Appends problems to errors, with field names prefixed by field_prefix ("" or "[3].").
// Returns true and fills record when there were none.
bool validate_record_object(const cJSON* object, std::string_view field_prefix, TestRecord& record,
                            std::vector<FieldError>& errors);

// Checks raw body bytes before JSON parsing: UTF-8, no NUL byte, no \u0000 escape in a string.
// Returns an empty string when fine, otherwise the client message.
std::string check_body_bytes(std::string_view body);

}  // namespace tdapi
