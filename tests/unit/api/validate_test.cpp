// validate_test.cpp: POST /tests body validation, one behaviour per row.
#include "api/validate.h"

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
        Case{"control_byte_as_whitespace", "\x01" + std::string(kGood),
             "request body is not valid JSON"},
        Case{"vertical_tab_between_tokens", with("result", "\x0b\"r\""),
             "request body is not valid JSON"},
        Case{"json_plus_number", with("result", "+1"), "request body is not valid JSON"},
        Case{"too_deep", with("result", std::string(17, '[') + std::string(17, ']')),
             "request body is nested more than 16 levels deep"},
        Case{"long_number_is_one_value", with("result", "[" + std::string(40, '1') + "]"),
             "invalid test record | result: must be a string"},
        Case{"too_many_values_for_a_record",
             with("result",
                  "[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28]"),
             "request body holds too many JSON values (at most 32 per record)"},
        Case{"line_separator_in_id", with("test_id", R"("a\u2028b")"),
             "invalid test record | test_id: must not contain line separators or bidirectional "
             "controls"},
        Case{"paragraph_separator_raw",
             with("patient_id",
                  "\"a\xe2\x80\xa9"
                  "b\""),
             "invalid test record | patient_id: must not contain line separators or bidirectional "
             "controls"},
        Case{"bidi_override_in_type", with("test_type", R"("\u202eevil")"),
             "invalid test record | test_type: must not contain line separators or bidirectional "
             "controls"},
        Case{"bidi_isolate_in_clinic", with("clinic_id", R"("c\u2066")"),
             "invalid test record | clinic_id: must not contain line separators or bidirectional "
             "controls"},
        Case{"c1_control_in_id", with("clinic_id", R"("c\u0085")"),
             "invalid test record | clinic_id: must not contain control characters"},
        Case{"dot_id", with("test_id", R"(".")"),
             R"(invalid test record | test_id: must not be "." or "..")"},
        Case{"dotdot_id", with("test_id", R"("..")"),
             R"(invalid test record | test_id: must not be "." or "..")"},
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

TEST(Validate, SeparatorsAndBidiControlsAreTextInResult) {
  RecordValidation v = validate_test_record(with("result", R"("a\u2028b\u202ec\u2066")"));
  EXPECT_TRUE(v.ok) << render_errors(v);
  v = validate_test_record(with("patient_id", R"("...")"));  // dots are fine elsewhere
  EXPECT_TRUE(v.ok) << render_errors(v);
  v = validate_test_record(with("test_id", R"("...")"));
  EXPECT_TRUE(v.ok) << render_errors(v);
}

TEST(CheckIdText, SharedByBodiesAndQueryFilters) {
  EXPECT_EQ(check_id_text("c1", 128), "");
  EXPECT_EQ(check_id_text("", 128), "must not be empty");
  EXPECT_EQ(check_id_text(" \t", 128), "must not be only whitespace");
  EXPECT_EQ(check_id_text(std::string(129, 'x'), 128), "must be at most 128 characters");
  EXPECT_EQ(check_id_text("a\x7f", 128), "must not contain control characters");
  EXPECT_EQ(check_id_text("a\xe2\x81\xa9", 128),  // U+2069
            "must not contain line separators or bidirectional controls");
  EXPECT_EQ(check_id_text("a\xe2\x80\x8f", 128),  // U+200F RLM
            "must not contain line separators or bidirectional controls");
  EXPECT_EQ(check_id_text("\xe2\x80\xaf\xe2\x81\xaa", 128), "");  // U+202F, U+206A: not bidi
}

TEST(CheckTestId, IsWhatTheBodyRulesAllowAsATestId) {
  // Ids named in a path have not been checked at all: the body's test_id rules, UTF-8 first.
  EXPECT_EQ(check_test_id("t1"), "");
  EXPECT_EQ(check_test_id("a/b c\xc3\xa9"), "");
  EXPECT_EQ(check_test_id(std::string(128, 'x')), "");
  EXPECT_EQ(check_test_id("..."), "");
  EXPECT_EQ(check_test_id("a\xff"), "must be valid UTF-8");
  EXPECT_EQ(check_test_id("a\xed\xa0\x80"), "must be valid UTF-8");  // a surrogate
  EXPECT_EQ(check_test_id(std::string("t1\0x", 4)), "must not contain control characters");
  EXPECT_EQ(check_test_id("a\xc2\x85"), "must not contain control characters");  // NEL
  EXPECT_EQ(check_test_id("a\xe2\x80\xa8"),
            "must not contain line separators or bidirectional controls");
  EXPECT_EQ(check_test_id(std::string(129, 'x')), "must be at most 128 characters");
  EXPECT_EQ(check_test_id(" "), "must not be only whitespace");
  EXPECT_EQ(check_test_id(""), "must not be empty");
  EXPECT_EQ(check_test_id("."), R"(must not be "." or "..")");
  EXPECT_EQ(check_test_id(".."), R"(must not be "." or "..")");
  // The same answer as a body's test_id gets.
  RecordValidation v = validate_test_record(
      R"({"test_id":"..","patient_id":"p","clinic_id":"c","test_type":"t","result":"r"})");
  ASSERT_EQ(v.errors.size(), 1u);
  EXPECT_EQ(v.errors[0].message, check_test_id(".."));
}

std::string batch_of(size_t n, const std::string& item) {
  std::string out = "[";
  for (size_t i = 0; i < n; ++i) out += (i ? "," : "") + item;
  return out + "]";
}

TEST(ValidateBatch, CountsRecordsOnTheBytes) {
  EXPECT_EQ(validate_test_batch(batch_of(1001, "0"), 1000).message,
            "a batch holds 1 to 1000 records, not 1001");
  EXPECT_EQ(validate_test_batch(batch_of(5, "{}"), 4).message,
            "a batch holds 1 to 4 records, not 5");
  EXPECT_EQ(validate_test_batch("[]", 4).message, "a batch holds 1 to 4 records, not 0");
  EXPECT_EQ(validate_test_batch("[\x01]", 4).message, "request body is not valid JSON");
}

TEST(ValidateBatch, ValueBudgetRefusesHostileShapesButNamesUnknownFields) {
  // One record holding 100,000 values: refused before a tree is built.
  EXPECT_EQ(validate_test_batch("[" + batch_of(100000, "0") + "]", 1000).message,
            "request body holds too many JSON values (at most 32 per record)");
  std::string wide = "[{";
  for (int i = 0; i < 40; ++i) wide += std::string(i ? "," : "") + "\"a\":0";
  EXPECT_EQ(validate_test_batch(wide + "}]", 1000).message,
            "request body holds too many JSON values (at most 32 per record)");
  // 1,000 records, each with five unknown fields (one nested): every one named.
  std::string item = std::string(kGood).substr(0, sizeof kGood - 2) +
                     R"(,"a":1,"b":"x","c":null,"d":[1,2],"e":{"f":[true]}})";
  BatchValidation v = validate_test_batch(batch_of(1000, item), 1000);
  ASSERT_FALSE(v.ok);
  EXPECT_EQ(v.message, "invalid test records");
  EXPECT_EQ(v.errors.size(), 5000u);
  EXPECT_EQ(v.errors.back().index, 999);
  EXPECT_EQ(v.errors.back().field, "e");
  EXPECT_EQ(v.errors.back().message, "unknown field");
  // Over-deep nesting is refused at the limit, whatever the length.
  EXPECT_EQ(
      validate_test_batch(std::string(2000000, '[') + std::string(2000000, ']'), 1000).message,
      "request body is nested more than 16 levels deep");
}

TEST(Validate, CreateTakesAnOptionalStatusPreliminaryOrFinal) {
  RecordValidation v = validate_test_record(kGood);
  ASSERT_TRUE(v.ok);
  EXPECT_EQ(v.record.status, TestStatus::kFinal);
  const std::string base(kGood, sizeof kGood - 2);  // without the closing brace
  v = validate_test_record(base + R"(,"status":"preliminary"})");
  ASSERT_TRUE(v.ok) << render_errors(v);
  EXPECT_EQ(v.record.status, TestStatus::kPreliminary);
  v = validate_test_record(base + R"(,"status":"final"})");
  ASSERT_TRUE(v.ok) << render_errors(v);
  EXPECT_EQ(v.record.status, TestStatus::kFinal);
  for (const char* bad : {R"("amended")", R"("entered-in-error")", R"("Final")", R"(1)"}) {
    v = validate_test_record(base + ",\"status\":" + bad + "}");
    EXPECT_FALSE(v.ok) << bad;
    ASSERT_EQ(v.errors.size(), 1u) << bad;
    EXPECT_EQ(v.errors[0].field, "status");
  }
  // A create has no reason.
  v = validate_test_record(base + R"(,"reason":"x"})");
  EXPECT_EQ(render_errors(v), "invalid test record | reason: unknown field");
}

std::string render_errors(const CorrectionValidation& v) {
  std::string out = v.message;
  for (const FieldError& e : v.errors) out += " | " + e.field + ": " + e.message;
  return out;
}

std::string correction(const std::string& status_json, const std::string& reason_json) {
  std::string out(kGood, sizeof kGood - 2);
  if (!status_json.empty()) out += ",\"status\":" + status_json;
  if (!reason_json.empty()) out += ",\"reason\":" + reason_json;
  return out + "}";
}

TEST(ValidateCorrection, AcceptsEveryCorrectionStatusWithAReason) {
  for (const auto& [name, status] :
       {std::pair{"final", TestStatus::kFinal}, std::pair{"amended", TestStatus::kAmended},
        std::pair{"corrected", TestStatus::kCorrected},
        std::pair{"entered-in-error", TestStatus::kEnteredInError}}) {
    CorrectionValidation v =
        validate_test_correction(correction(std::string("\"") + name + "\"", R"("typo\nfixed")"));
    ASSERT_TRUE(v.ok) << render_errors(v);
    EXPECT_EQ(v.record.status, status);
    EXPECT_EQ(v.record.test_id, "t1");
    EXPECT_EQ(v.record.result, "ok");
    EXPECT_EQ(v.reason, "typo\nfixed");
  }
}

TEST(ValidateCorrection, RefusesWhatTheCreateRefusesAndMore) {
  const std::string long_reason(501, 'r');
  std::string reason_500;
  for (int i = 0; i < 500; ++i) reason_500 += "\xc3\xa9";  // 500 characters, 1,000 bytes
  EXPECT_TRUE(validate_test_correction(correction(R"("amended")", "\"" + reason_500 + "\"")).ok);
  struct {
    std::string body, expected;
  } const cases[] = {
      {"", "request body is empty"},
      {"[]", "request body must be a JSON object"},
      {correction("", ""), "invalid correction | status: is required | reason: is required"},
      {correction(R"("preliminary")", R"("r")"),
       "invalid correction | status: must not be preliminary: a correction is final, amended, "
       "corrected or entered-in-error (preliminary is only for creates)"},
      {correction(R"("deleted")", R"("r")"),
       "invalid correction | status: must be final, amended, corrected or entered-in-error"},
      {correction(R"("amended")", R"("")"), "invalid correction | reason: must not be empty"},
      {correction(R"("amended")", R"(" \n ")"),
       "invalid correction | reason: must not be only whitespace"},
      {correction(R"("amended")", R"(5)"), "invalid correction | reason: must be a string"},
      {correction(R"("amended")", "\"" + long_reason + "\""),
       "invalid correction | reason: must be at most 500 characters"},
      {correction(R"("amended")", R"("a\u0007")"),
       "invalid correction | reason: must not contain control characters other than tab and "
       "newline"},
      {correction(R"("amended")", R"("r","version":2)"),
       "invalid correction | version: unknown field"},
      {correction(R"("amended")", R"("r","reason":"s")"),
       "invalid correction | reason: duplicate key"},
      {R"({"test_id":"t1","status":"amended","reason":"r"})",
       "invalid correction | patient_id: is required | clinic_id: is required | test_type: is "
       "required | result: is required"},
      {R"({"test_id":"t1","patient_id":"p1","clinic_id":"c1","test_type":"blood",)"
       R"("result":"a\u0001","status":"amended","reason":"r"})",
       "invalid correction | result: must not contain control characters other than tab and "
       "newline"},
  };
  for (const auto& c : cases) {
    CorrectionValidation v = validate_test_correction(c.body);
    EXPECT_FALSE(v.ok) << c.body;
    EXPECT_EQ(render_errors(v), c.expected) << c.body;
  }
}

}  // namespace
}  // namespace tdapi
