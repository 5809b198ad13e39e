// test_record.cpp: the JSON document of a test record.
#include "store/test_record.h"

#include "base/json.h"

namespace tdapi {

namespace {

// Opens a record's document in doc and writes its five fields, in the contract's order.
void begin_record(std::string& doc, JsonWriter& w, const TestRecord& r, size_t extra) {
  doc.reserve(r.test_id.size() + r.patient_id.size() + r.clinic_id.size() + r.test_type.size() +
              r.result.size() + extra);
  w.begin_object();
  w.field("test_id", r.test_id);
  w.field("patient_id", r.patient_id);
  w.field("clinic_id", r.clinic_id);
  w.field("test_type", r.test_type);
  w.field("result", r.result);
}

}  // namespace

std::string test_record_json(const TestRecord& r, std::string_view created_at) {
  std::string doc;
  JsonWriter w(doc);
  begin_record(doc, w, r, 128);
  if (!created_at.empty()) w.field("created_at", created_at);
  w.end_object();
  return doc;
}

const char* test_status_name(TestStatus status) {
  switch (status) {
    case TestStatus::kPreliminary:
      return "preliminary";
    case TestStatus::kFinal:
      return "final";
    case TestStatus::kAmended:
      return "amended";
    case TestStatus::kCorrected:
      return "corrected";
    case TestStatus::kEnteredInError:
      return "entered-in-error";
  }
  return "final";
}

std::optional<TestStatus> parse_test_status(std::string_view name) {
  for (TestStatus s : {TestStatus::kPreliminary, TestStatus::kFinal, TestStatus::kAmended,
                       TestStatus::kCorrected, TestStatus::kEnteredInError}) {
    if (name == test_status_name(s)) return s;
  }
  return std::nullopt;
}

std::string test_document(const TestRecord& r, std::string_view created_at, long long version,
                          std::string_view updated_at) {
  std::string doc;
  JsonWriter w(doc);
  begin_record(doc, w, r, 200);
  w.field("created_at", created_at);
  w.field("status", test_status_name(r.status));
  w.field("version", version);
  w.field("updated_at", updated_at);
  w.end_object();
  return doc;
}

}  // namespace tdapi
