// json_log_test.cpp: JSON escaping, document parsing, and the shape of log lines.
#include <gtest/gtest.h>

#include "json.h"
#include "log.h"

namespace tdapi {
namespace {

TEST(JsonString, EscapesQuotesBackslashAndControls) {
  std::string out;
  append_json_string(out, "a\"b\\c\nd\te\x01\x7f\xc3\xa9");
  EXPECT_EQ(out, "\"a\\\"b\\\\c\\nd\\te\\u0001\\u007f\xc3\xa9\"");
}

TEST(JsonDocument, RejectsTrailingBytesAllowsWhitespace) {
  EXPECT_TRUE(parse_json_document(" {\"a\":1} \n"));
  EXPECT_FALSE(parse_json_document("{\"a\":1}x"));
  EXPECT_FALSE(parse_json_document("{\"a\":1}{}"));
  EXPECT_FALSE(parse_json_document("{\"a\":"));
  EXPECT_FALSE(parse_json_document(""));
}

TEST(LogLine, IsOneJsonObjectWithOnlySetFields) {
  LogFields f;
  f.request_id = "r1";
  f.method = "POST";
  f.path = "/tests";
  f.status = 201;
  f.duration_ms = 1.5;
  f.test_id = "t\"1";
  f.txn = "commit";
  f.txn_id = 7;
  std::string line = render_log_line(LogLevel::kInfo, "request", f);
  ASSERT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1);
  JsonTree tree = parse_json_document(line);
  ASSERT_TRUE(tree);
  EXPECT_STREQ(cJSON_GetObjectItem(tree.get(), "level")->valuestring, "info");
  EXPECT_STREQ(cJSON_GetObjectItem(tree.get(), "event")->valuestring, "request");
  EXPECT_STREQ(cJSON_GetObjectItem(tree.get(), "test_id")->valuestring, "t\"1");
  EXPECT_EQ(cJSON_GetObjectItem(tree.get(), "status")->valueint, 201);
  EXPECT_EQ(cJSON_GetObjectItem(tree.get(), "txn_id")->valueint, 7);
  EXPECT_EQ(cJSON_GetObjectItem(tree.get(), "clinic_id"), nullptr);
  EXPECT_EQ(cJSON_GetObjectItem(tree.get(), "count"), nullptr);
  std::string ts = cJSON_GetObjectItem(tree.get(), "ts")->valuestring;
  EXPECT_EQ(ts.size(), 24u);  // 2026-11-27T14:20:44.123Z
  EXPECT_EQ(ts.back(), 'Z');
}

}  // namespace
}  // namespace tdapi
