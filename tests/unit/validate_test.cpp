// validate_test.cpp: POST /tests body validation, one behaviour per row.
#include "validate.h"

#include <gtest/gtest.h>

namespace tdapi {
namespace {

const char kGood[] =
    R"({"test_id":"t1","patient_id":"p1","clinic_id":"c1","test_type":"blood","result":"ok"})";

std::string render_errors(const RecordValidation& v) {
  std::string out = v.message;
  for (const FieldError& e : v.errors) out += " | " + e.field + ": " + e.message;
  return out;
}

TEST(Validate, AcceptsAGoodRecord) {
  RecordValidation v = validate_test_record(kGood);
  ASSERT_TRUE(v.ok) << render_errors(v);
  EXPECT_EQ(v.record.test_id, "t1");
  EXPECT_EQ(v.record.patient_id, "p1");
  EXPECT_EQ(v.record.clinic_id, "c1");
  EXPECT_EQ(v.record.test_type, "blood");
  EXPECT_EQ(v.record.result, "ok");
}

TEST(Validate, AcceptsMultilineResultAndUnicode) {
  RecordValidation v = validate_test_record(
      R"({"test_id":"t\u00e9","patient_id":"p","clinic_id":"c","test_type":"x","result":"a\nb\tc\r\n€"})");
  ASSERT_TRUE(v.ok) << render_errors(v);
  EXPECT_EQ(v.record.test_id, "t\xc3\xa9");
  EXPECT_EQ(v.record.result, "a\nb\tc\r\n\xe2\x82\xac");
}

struct Case {
  const char* name;
  std::string body;
  std::string expected;  // message | field: problem | ...
};

void PrintTo(const Case& c, std::ostream* os) { *os << c.name; }

class ValidateRejects : public ::testing::TestWithParam<Case> {};

TEST_P(ValidateRejects, WithEveryProblemListed) {
  RecordValidation v = validate_test_record(GetParam().body);
  EXPECT_FALSE(v.ok);
  EXPECT_EQ(render_errors(v), GetParam().expected);
}

std::string with(const std::string& field, const std::string& json_value) {
  std::string fields[] = {"test_id", "patient_id", "clinic_id", "test_type", "result"};
  std::string out = "{";
  for (const std::string& f : fields) {
    if (out.size() > 1) out += ",";
    out += "\"" + f + "\":" + (f == field ? json_value : "\"v\"");
  }
  return out + "}";
}

const std::string kLong129(129, 'a');
const std::string kLongResult(16385, 'r');

INSTANTIATE_TEST_SUITE_P(
    Table, ValidateRejects,
    ::testing::Values(
        Case{"empty", "", "request body is empty"}, Case{"blank", " \n ", "request body is empty"},
        Case{"not_json", "test_id=t1", "request body is not valid JSON"},
        Case{"truncated", R"({"test_id":"t1")", "request body is not valid JSON"},
        Case{"trailing_bytes", std::string(kGood) + "x", "request body is not valid JSON"},
        Case{"two_documents", std::string(kGood) + "{}", "request body is not valid JSON"},
        Case{"array", "[1,2]", "request body must be a JSON object"},
        Case{"string", R"("hello")", "request body must be a JSON object"},
        Case{"null", "null", "request body must be a JSON object"},
        Case{"invalid_utf8", with("result", "\"\xff\""), "request body is not valid UTF-8"},
        Case{"overlong_utf8", with("result", "\"\xc0\xaf\""), "request body is not valid UTF-8"},
        Case{"raw_nul", with("result", std::string("\"a\0b\"", 5)),
             "request body contains a NUL character"},
        Case{"escaped_nul", with("result", R"("a\u0000b")"),
             "request body contains a NUL character"},
        Case{"escaped_nul_in_key", R"({"a\u0000":1})", "request body contains a NUL character"},
        Case{"lone_surrogate", with("result", R"("\ud800")"), "request body is not valid JSON"},
        Case{"empty_object", "{}",
             "invalid test record | test_id: is required | patient_id: is required | clinic_id: "
             "is required | test_type: is required | result: is required"},
        Case{"wrong_types",
             R"({"test_id":1,"patient_id":null,"clinic_id":["c"],"test_type":{},"result":true})",
             "invalid test record | test_id: must be a string | patient_id: must be a string | "
             "clinic_id: must be a string | test_type: must be a string | result: must be a "
             "string"},
        Case{"empty_string", with("patient_id", R"("")"),
             "invalid test record | patient_id: must not be empty"},
        Case{"whitespace_only", with("clinic_id", R"(" \t ")"),
             "invalid test record | clinic_id: must not be only whitespace"},
        Case{"unknown_field",
             R"({"test_id":"t","patient_id":"p","clinic_id":"c",)"
             R"("test_type":"x","result":"r","notes":"n","Extra":1})",
             "invalid test record | notes: unknown field | Extra: unknown field"},
        Case{"duplicate_key",
             R"({"test_id":"t","test_id":"u","patient_id":"p","clinic_id":"c",)"
             R"("test_type":"x","result":"r"})",
             "invalid test record | test_id: duplicate key"},
        Case{"control_in_id", with("test_id", R"("t\u0001")"),
             "invalid test record | test_id: must not contain control characters"},
        Case{"newline_in_id", with("clinic_id", R"("c\n1")"),
             "invalid test record | clinic_id: must not contain control characters"},
        Case{"bell_in_result", with("result", R"("a\u0007")"),
             "invalid test record | result: must not contain control characters other than tab "
             "and newline"},
        Case{"id_too_long", with("test_id", "\"" + kLong129 + "\""),
             "invalid test record | test_id: must be at most 128 characters"},
        Case{"result_too_long", with("result", "\"" + kLongResult + "\""),
             "invalid test record | result: must be at most 16384 characters"},
        Case{"several_problems",
             R"({"test_id":"","patient_id":5,"test_type":"x","result":"r",)"
             R"("clinic":"c"})",
             "invalid test record | clinic: unknown field | test_id: must not be empty | "
             "patient_id: must be a string | clinic_id: is required"}),
    [](const ::testing::TestParamInfo<Case>& info) { return info.param.name; });

TEST(Validate, LimitsCountCharactersNotBytes) {
  std::string id;
  for (int i = 0; i < 128; ++i) id += "\xc3\xa9";  // 128 characters, 256 bytes
  RecordValidation v = validate_test_record(with("test_id", "\"" + id + "\""));
  EXPECT_TRUE(v.ok) << render_errors(v);
}

TEST(Validate, EscapedBackslashBeforeU0000IsNotANul) {
  // "a\\u0000" is a backslash followed by the text u0000: allowed in result.
  RecordValidation v = validate_test_record(with("result", R"("a\\u0000")"));
  ASSERT_TRUE(v.ok) << render_errors(v);
  EXPECT_EQ(v.record.result, "a\\u0000");
}

}  // namespace
}  // namespace tdapi
