// validate.h: request body -> TestRecord, or the list of every problem found. Pure; fuzzed.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "base/json.h"
#include "http/http.h"
#include "store/test_record.h"

namespace tdapi {

// The most field problems one answer lists: every problem of any sensible batch (six per record
// of a full one), while a hostile batch within the value budget (30 unknown fields in each of
// 1,000 records) cannot make the app build and send tens of thousands.
constexpr size_t kMaxFieldErrors = 6000;

struct RecordValidation {
  bool ok = false;
  TestRecord record;               // filled when ok
  std::string message;             // when !ok: what is wrong with the body as a whole
  std::vector<FieldError> errors;  // when !ok: every field problem (may be empty)
};

// Validates a POST /tests body. Rejects: an empty body; bytes that are not UTF-8; a NUL byte or
// a \u0000 escape anywhere; invalid JSON or bytes after the document; a non-object; duplicate
// keys; unknown keys; whitespace other than JSON's four between tokens; nesting deeper than
// kMaxBodyDepth; more than kMaxJsonValuesPerRecord values; and per field: missing, not a
// string, empty, whitespace only, too long, control characters (any in ids and test_type; in
// result only tab, LF and CR are allowed), line separators and bidi controls in ids and
// test_type (check_id_text), and a test_id of "." or "..".
// This function can't fail: every input yields ok or a message with errors.
// A create may also give `status`: preliminary or final (final when left out); anything else is
// a problem of the field status.
RecordValidation validate_test_record(std::string_view body);

// The most code points of a correction's reason.
constexpr size_t kMaxReasonChars = 500;

struct CorrectionValidation {
  bool ok = false;
  TestRecord record;               // filled when ok (status final, amended, corrected or
                                   // entered-in-error)
  std::string reason;              // filled when ok
  std::string message;             // when !ok
  std::vector<FieldError> errors;  // when !ok: every field problem (may be empty)
};

// Validates a PUT /tests/{id} body: validate_test_record's rules and budgets, plus a required
// `status` (final, amended, corrected or entered-in-error; preliminary is only for creates) and
// a required `reason` (result's text rules, 1..kMaxReasonChars code points). Whether the ids
// match the stored test is the handler's and the store's business. This function can't fail.
CorrectionValidation validate_test_correction(std::string_view body);

struct BatchValidation {
  bool ok = false;
  std::vector<TestRecord> records;  // filled when ok
  std::string message;              // when !ok
  std::vector<FieldError> errors;   // when !ok: every problem of every item, with its index
};

// Validates a POST /tests/batch body: a JSON array of 1..max_records objects, each checked as
// validate_test_record checks one. The array's length, the nesting depth and the value budget
// are checked on the bytes before cJSON builds a tree. This function can't fail.
BatchValidation validate_test_batch(std::string_view body, size_t max_records);

// Budgets checked on the bytes before a tree is built (see scan_json): nesting depth of any
// body, and JSON values (containers included) per record: a record is 6 (the object and its five
// fields), so 32 leaves room for unknown fields to be named. A batch may hold 1 + 32 x records.
constexpr size_t kMaxBodyDepth = 16;
constexpr size_t kMaxJsonValuesPerRecord = 32;

// Checks one id or test_type value, from a body or a query filter: not empty, not only
// whitespace, at most max_chars code points, no control characters (C0, DEL, C1), no line
// separators or bidirectional controls (U+2028/9, U+202A..E, U+2066..9, U+200E/F, U+061C).
// `s` must be valid UTF-8. Returns "" when fine, otherwise the problem ("must not be empty").
std::string check_id_text(std::string_view s, size_t max_chars);

// The rules of a stored test_id (validate_test_record's) for an id named in a request path, whose
// bytes nothing checked yet: valid UTF-8, then check_id_text with kMaxIdChars, and not "." or
// "..". An id that fails them can name no stored test. Returns "" when fine, else the problem.
std::string check_test_id(std::string_view s);

// The checks every JSON body gets, then the tree: not blank; check_body_bytes; strict JSON
// syntax (scan_json); at most kMaxBodyDepth levels and max_values values, counted on the bytes
// before cJSON allocates anything. Returns the tree, or null with the client message set.
JsonTree parse_json_body(std::string_view body, size_t max_values, std::string& message);

// Checks raw body bytes before JSON parsing: UTF-8, no NUL byte, no \u0000 escape in a string.
// Returns an empty string when fine, otherwise the client message.
std::string check_body_bytes(std::string_view body);

}  // namespace tdapi
