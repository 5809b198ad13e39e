// validate.cpp: strict validation of test records on the cJSON tree.
#include "api/validate.h"

#include <optional>
#include <set>

#include "base/json.h"
#include "base/utf8.h"

namespace tdapi {

namespace {

struct FieldSpec {
  const char* name;
  std::string TestRecord::*member;
  size_t max_chars;
  bool multiline;  // result may hold tab, LF, CR; other fields no control characters at all
};

const FieldSpec kFields[] = {
    {"test_id", &TestRecord::test_id, kMaxIdChars, false},
    {"patient_id", &TestRecord::patient_id, kMaxIdChars, false},
    {"clinic_id", &TestRecord::clinic_id, kMaxIdChars, false},
    {"test_type", &TestRecord::test_type, kMaxTestTypeChars, false},
    {"result", &TestRecord::result, kMaxResultChars, true},
};

bool is_json_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

bool only_whitespace(std::string_view s) {
  for (char c : s) {
    if (!is_json_space(c) && c != '\f' && c != '\v') return false;
  }
  return true;
}

// Code points in valid UTF-8: bytes that are not continuation bytes.
size_t count_chars(std::string_view s) {
  size_t n = 0;
  for (char c : s) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return n;
}

// Decodes the code point of the well-formed UTF-8 sequence at s[i]; advances i past it.
char32_t next_code_point(std::string_view s, size_t& i) {
  unsigned char c = static_cast<unsigned char>(s[i]);
  size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
  char32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
  for (size_t k = 1; k < len && i + k < s.size(); ++k) {
    cp = (cp << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  }
  i += len;
  return cp;
}

// C0 controls, DEL and C1 controls (U+0080..U+009F, e.g. NEL).
bool is_control(char32_t cp) { return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F); }

// Characters that break or reorder lines when shown: U+2028/U+2029 (line and paragraph
// separators) and the bidirectional controls (ALM, LRM, RLM, U+202A..U+202E embeddings and
// overrides, U+2066..U+2069 isolates). In an id they forge log and UI text.
bool is_layout_control(char32_t cp) {
  return cp == 0x061C || cp == 0x200E || cp == 0x200F || (cp >= 0x2028 && cp <= 0x202E) ||
         (cp >= 0x2066 && cp <= 0x2069);
}

// Validates one field value; returns the problem or "" when fine.
std::string check_field(const cJSON* value, const FieldSpec& spec) {
  if (!cJSON_IsString(value)) return "must be a string";
  std::string_view s(value->valuestring);
  if (spec.multiline) {
    if (s.empty()) return "must not be empty";
    if (only_whitespace(s)) return "must not be only whitespace";
    if (count_chars(s) > spec.max_chars) {
      return "must be at most " + std::to_string(spec.max_chars) + " characters";
    }
    for (char ch : s) {
      unsigned char c = static_cast<unsigned char>(ch);
      if ((c < 0x20 && c != '\n' && c != '\r' && c != '\t') || c == 0x7f) {
        return "must not contain control characters other than tab and newline";
      }
    }
    return "";
  }
  if (spec.member == &TestRecord::test_id) return check_test_id(s);
  return check_id_text(s, spec.max_chars);
}

}  // namespace

std::string check_test_id(std::string_view s) {
  if (!is_valid_utf8(s)) return "must be valid UTF-8";
  std::string problem = check_id_text(s, kMaxIdChars);
  if (problem.empty() && (s == "." || s == "..")) return R"(must not be "." or "..")";
  return problem;
}

std::string check_id_text(std::string_view s, size_t max_chars) {
  if (s.empty()) return "must not be empty";
  // Printable ASCII, the usual case, in one pass: no controls or layout characters possible.
  bool printable_ascii = true;
  bool visible = false;
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c > 0x7e) {
      printable_ascii = false;
      break;
    }
    visible = visible || c != ' ';
  }
  if (printable_ascii) {
    if (!visible) return "must not be only whitespace";
    if (s.size() > max_chars) return "must be at most " + std::to_string(max_chars) + " characters";
    return "";
  }
  if (only_whitespace(s)) return "must not be only whitespace";
  if (count_chars(s) > max_chars)
    return "must be at most " + std::to_string(max_chars) + " characters";
  bool layout = false;
  for (size_t i = 0; i < s.size();) {
    char32_t cp = next_code_point(s, i);
    if (is_control(cp)) return "must not contain control characters";
    layout = layout || is_layout_control(cp);
  }
  if (layout) return "must not contain line separators or bidirectional controls";
  return "";
}

std::string check_body_bytes(std::string_view body) {
  if (body.find('\0') != std::string_view::npos) return "request body contains a NUL character";
  if (!is_valid_utf8(body)) return "request body is not valid UTF-8";
  // Find \u0000 inside strings: cJSON would decode it and cut the string there.
  bool in_string = false;
  for (size_t i = 0; i < body.size(); ++i) {
    char c = body[i];
    if (!in_string) {
      if (c == '"') in_string = true;
      continue;
    }
    if (c == '"') {
      in_string = false;
    } else if (c == '\\' && i + 1 < body.size()) {
      if (body[i + 1] == 'u' && body.substr(i + 2, 4) == "0000") {
        return "request body contains a NUL character";
      }
      ++i;  // skip the escaped character
    }
  }
  return "";
}

// Which body validate_record_object reads: a create's (the five fields, an optional status:
// preliminary or final) or a correction's (the five fields, a required status: final, amended,
// corrected or entered-in-error, and a required reason).
enum class BodyKind { kCreate, kCorrection };

// The reason's rules: result's (see check_field), at most kMaxReasonChars.
const FieldSpec kReasonSpec = {"reason", nullptr, kMaxReasonChars, true};

// The status of a body of `kind`: its problem, or "" with status set.
static std::string check_status(const cJSON* value, BodyKind kind, TestStatus& status) {
  const char* allowed = kind == BodyKind::kCreate
                            ? "must be preliminary or final"
                            : "must be final, amended, corrected or entered-in-error";
  if (!cJSON_IsString(value)) return "must be a string";
  std::optional<TestStatus> s = parse_test_status(value->valuestring);
  if (!s) return allowed;
  if (kind == BodyKind::kCreate && *s != TestStatus::kPreliminary && *s != TestStatus::kFinal) {
    return allowed;
  }
  if (kind == BodyKind::kCorrection && *s == TestStatus::kPreliminary) {
    return "must not be preliminary: a correction is final, amended, corrected or "
           "entered-in-error (preliminary is only for creates)";
  }
  status = *s;
  return "";
}

// Validates the fields of one parsed JSON object; appends problems (tagged with index) to
// errors. Returns true and fills record (and reason, for a correction) when there were none.
static bool validate_record_object(const cJSON* object, int index, BodyKind kind,
                                   TestRecord& record, std::string* reason,
                                   std::vector<FieldError>& errors) {
  bool problems = false;
  auto add = [&](std::string_view field, std::string message) {
    // A hostile body could name tens of thousands of problems: the answer lists the first
    // kMaxFieldErrors (validate.h), and the caller says how many more there were.
    problems = true;
    if (errors.size() < kMaxFieldErrors)
      errors.push_back({std::string(field), std::move(message), index});
  };
  // Keys: duplicates and unknown names, in document order.
  std::set<std::string_view> seen;
  for (const cJSON* item = object->child; item != nullptr; item = item->next) {
    std::string_view key(item->string);
    if (!seen.insert(key).second) {
      add(key, "duplicate key");
      continue;
    }
    bool known = key == "status" || (kind == BodyKind::kCorrection && key == "reason");
    for (const FieldSpec& spec : kFields) known = known || key == spec.name;
    if (!known) add(key, "unknown field");
  }
  for (const FieldSpec& spec : kFields) {
    const cJSON* value = cJSON_GetObjectItemCaseSensitive(object, spec.name);
    if (value == nullptr) {
      add(spec.name, "is required");
      continue;
    }
    std::string problem = check_field(value, spec);
    if (!problem.empty()) {
      add(spec.name, std::move(problem));
      continue;
    }
    record.*spec.member = value->valuestring;
  }
  const cJSON* status = cJSON_GetObjectItemCaseSensitive(object, "status");
  record.status = TestStatus::kFinal;
  if (status != nullptr) {
    std::string problem = check_status(status, kind, record.status);
    if (!problem.empty()) add("status", std::move(problem));
  } else if (kind == BodyKind::kCorrection) {
    add("status", "is required");
  }
  if (kind == BodyKind::kCorrection) {
    const cJSON* value = cJSON_GetObjectItemCaseSensitive(object, "reason");
    if (value == nullptr) {
      add("reason", "is required");
    } else {
      std::string problem = check_field(value, kReasonSpec);
      if (!problem.empty()) {
        add("reason", std::move(problem));
      } else if (reason != nullptr) {
        *reason = value->valuestring;
      }
    }
  }
  return !problems;
}

// The checks every JSON body gets before cJSON sees it: not blank, bytes fine, and one JSON
// document (scan_json: strict whitespace, at most kMaxBodyDepth levels). Nothing is allocated
// here, so a hostile body costs no more than its own bytes. Returns false with message set.
static bool precheck_body(std::string_view body, JsonScan& scan, std::string& message) {
  bool blank = true;
  for (char c : body) blank = blank && is_json_space(c);
  if (blank) {
    message = "request body is empty";
    return false;
  }
  message = check_body_bytes(body);
  if (!message.empty()) return false;
  scan = scan_json(body, kMaxBodyDepth);
  if (scan.outcome == JsonScan::Outcome::kTooDeep) {
    message = "request body is nested more than " + std::to_string(kMaxBodyDepth) + " levels deep";
    return false;
  }
  if (scan.outcome != JsonScan::Outcome::kOk) {
    message = "request body is not valid JSON";
    return false;
  }
  return true;
}

// After precheck_body and the caller's shape checks: the value budget, then the tree.
static JsonTree parse_within_budget(std::string_view body, const JsonScan& scan, size_t records,
                                    std::string& message) {
  if (scan.values > 1 + records * kMaxJsonValuesPerRecord) {
    message = "request body holds too many JSON values (at most " +
              std::to_string(kMaxJsonValuesPerRecord) + " per record)";
    return nullptr;
  }
  JsonTree tree = parse_json_document(body);
  if (!tree) message = "request body is not valid JSON";
  return tree;
}

JsonTree parse_json_body(std::string_view body, size_t max_values, std::string& message) {
  JsonScan scan;
  if (!precheck_body(body, scan, message)) return nullptr;
  if (scan.values > max_values) {
    message = "request body holds more than " + std::to_string(max_values) + " JSON values";
    return nullptr;
  }
  JsonTree tree = parse_json_document(body);
  if (!tree) message = "request body is not valid JSON";
  return tree;
}

namespace {

// A single record's body (a create's or a correction's): within the budgets, a JSON object of
// at most kMaxJsonValuesPerRecord values. Null with message set when it is not.
JsonTree parse_record_body(std::string_view body, std::string& message) {
  JsonScan scan;
  if (!precheck_body(body, scan, message)) return nullptr;
  if (scan.root != '{') {
    message = "request body must be a JSON object";
    return nullptr;
  }
  // The object itself is one of the record's values.
  return parse_within_budget(body, scan, 1, message);
}

}  // namespace

RecordValidation validate_test_record(std::string_view body) {
  RecordValidation v;
  JsonTree tree = parse_record_body(body, v.message);
  if (!tree) return v;
  if (!validate_record_object(tree.get(), -1, BodyKind::kCreate, v.record, nullptr, v.errors)) {
    v.message = "invalid test record";
    return v;
  }
  v.ok = true;
  return v;
}

CorrectionValidation validate_test_correction(std::string_view body) {
  CorrectionValidation v;
  JsonTree tree = parse_record_body(body, v.message);
  if (!tree) return v;
  if (!validate_record_object(tree.get(), -1, BodyKind::kCorrection, v.record, &v.reason,
                              v.errors)) {
    v.message = "invalid correction";
    return v;
  }
  v.ok = true;
  return v;
}

BatchValidation validate_test_batch(std::string_view body, size_t max_records) {
  BatchValidation v;
  JsonScan scan;
  if (!precheck_body(body, scan, v.message)) return v;
  if (scan.root != '[') {
    v.message = "request body must be a JSON array of test records";
    return v;
  }
  // Counted on the bytes: an over-long batch is refused before any tree is built.
  size_t n = scan.root_items;
  if (n == 0 || n > max_records) {
    v.message =
        "a batch holds 1 to " + std::to_string(max_records) + " records, not " + std::to_string(n);
    return v;
  }
  JsonTree tree = parse_within_budget(body, scan, n, v.message);
  if (!tree) return v;
  v.records.resize(n);
  int index = 0;
  for (const cJSON* item = tree->child; item != nullptr; item = item->next, ++index) {
    if (!cJSON_IsObject(item)) {
      if (v.errors.size() < kMaxFieldErrors)
        v.errors.push_back({"", "must be a JSON object", index});
      continue;
    }
    validate_record_object(item, index, BodyKind::kCreate, v.records[static_cast<size_t>(index)],
                           nullptr, v.errors);
  }
  if (!v.errors.empty()) {
    v.message = v.errors.size() < kMaxFieldErrors
                    ? "invalid test records"
                    : "invalid test records (the first " + std::to_string(kMaxFieldErrors) +
                          " problems are listed)";
    v.records.clear();
    return v;
  }
  v.ok = true;
  return v;
}

}  // namespace tdapi
