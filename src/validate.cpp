// validate.cpp: strict validation of test records on the cJSON tree.
#include "validate.h"

#include <set>

#include "json.h"

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

bool has_forbidden_control(std::string_view s, bool multiline) {
  for (char ch : s) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c == 0x7f) return true;
    if (c >= 0x20) continue;
    if (multiline && (c == '\n' || c == '\r' || c == '\t')) continue;
    return true;
  }
  return false;
}

// Validates one field value; returns the problem or "" when fine.
std::string check_field(const cJSON* value, const FieldSpec& spec) {
  if (!cJSON_IsString(value)) return "must be a string";
  std::string_view s(value->valuestring);
  if (s.empty()) return "must not be empty";
  if (only_whitespace(s)) return "must not be only whitespace";
  if (count_chars(s) > spec.max_chars) {
    return "must be at most " + std::to_string(spec.max_chars) + " characters";
  }
  if (has_forbidden_control(s, spec.multiline)) {
    return spec.multiline ? "must not contain control characters other than tab and newline"
                          : "must not contain control characters";
  }
  return "";
}

}  // namespace

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

// Validates the fields of one parsed JSON object; appends problems (tagged with index) to
// errors. Returns true and fills record when there were none.
static bool validate_record_object(const cJSON* object, int index, TestRecord& record,
                                   std::vector<FieldError>& errors) {
  size_t errors_before = errors.size();
  auto add = [&](std::string_view field, std::string message) {
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
    bool known = false;
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
  return errors.size() == errors_before;
}

// The checks every JSON body gets: not blank, bytes fine, one JSON document. Returns the tree,
// or null with message set.
static JsonTree parse_body(std::string_view body, std::string& message) {
  bool blank = true;
  for (char c : body) blank = blank && is_json_space(c);
  if (blank) {
    message = "request body is empty";
    return nullptr;
  }
  message = check_body_bytes(body);
  if (!message.empty()) return nullptr;
  JsonTree tree = parse_json_document(body);
  if (!tree) message = "request body is not valid JSON";
  return tree;
}

RecordValidation validate_test_record(std::string_view body) {
  RecordValidation v;
  JsonTree tree = parse_body(body, v.message);
  if (!tree) return v;
  if (!cJSON_IsObject(tree.get())) {
    v.message = "request body must be a JSON object";
    return v;
  }
  if (!validate_record_object(tree.get(), -1, v.record, v.errors)) {
    v.message = "invalid test record";
    return v;
  }
  v.ok = true;
  return v;
}

BatchValidation validate_test_batch(std::string_view body, size_t max_records) {
  BatchValidation v;
  JsonTree tree = parse_body(body, v.message);
  if (!tree) return v;
  if (!cJSON_IsArray(tree.get())) {
    v.message = "request body must be a JSON array of test records";
    return v;
  }
  size_t n = static_cast<size_t>(cJSON_GetArraySize(tree.get()));
  if (n == 0 || n > max_records) {
    v.message =
        "a batch holds 1 to " + std::to_string(max_records) + " records, not " + std::to_string(n);
    return v;
  }
  v.records.resize(n);
  int index = 0;
  for (const cJSON* item = tree->child; item != nullptr; item = item->next, ++index) {
    if (!cJSON_IsObject(item)) {
      v.errors.push_back({"", "must be a JSON object", index});
      continue;
    }
    validate_record_object(item, index, v.records[static_cast<size_t>(index)], v.errors);
  }
  if (!v.errors.empty()) {
    v.message = "invalid test records";
    v.records.clear();
    return v;
  }
  v.ok = true;
  return v;
}

}  // namespace tdapi
