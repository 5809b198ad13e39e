// json_log_test.cpp: JSON escaping, document parsing, and the shape of log lines.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <ctime>
#include <regex>

#include "base/clock.h"
#include "base/json.h"
#include "base/log.h"
#include "base/utf8.h"
#include "http/http.h"

namespace tdapi {
namespace {

TEST(JsonString, EscapesQuotesBackslashAndControls) {
  std::string out;
  append_json_string(out, "a\"b\\c\nd\te\x01\x7f\xc3\xa9");
  EXPECT_EQ(out, "\"a\\\"b\\\\c\\nd\\te\\u0001\\u007f\xc3\xa9\"");
}

TEST(JsonString, EscapesWhatUnicodeLineReadersTakeForLineBreaks) {
  // U+2028, U+2029 and the C1 controls (NEL U+0085 among them) are legal raw in JSON, but a
  // Unicode-aware line reader (Python's splitlines, JavaScript) splits a line at them.
  std::string out;
  append_json_string(out,
                     "a\xe2\x80\xa8"
                     "b\xe2\x80\xa9"
                     "c\xc2\x85"
                     "d\xc2\x80\xc2\x9f\xc2\xa0");
  EXPECT_EQ(out, "\"a\\u2028b\\u2029c\\u0085d\\u0080\\u009f\xc2\xa0\"");
  // Their neighbours are copied as they are.
  out.clear();
  append_json_string(out, "\xe2\x80\xa7\xe2\x80\xaa\xe2\x82\xac");
  EXPECT_EQ(out, "\"\xe2\x80\xa7\xe2\x80\xaa\xe2\x82\xac\"");
  // Already-serialised JSON a writer passes on (a stored document, an audit detail) too.
  out.clear();
  JsonWriter w(out);
  w.begin_array();
  w.raw("{\"r\":\"x\xe2\x80\xa8y\xc2\x85z\"}");
  w.end_array();
  EXPECT_EQ(out, "[{\"r\":\"x\\u2028y\\u0085z\"}]");
  // A log line stays one line for such readers.
  LogFields f;
  f.path = "/tests/\xe2\x80\xa8\xe2\x80\xa9\xc2\x85";
  std::string line = render_log_line(LogLevel::kInfo, "request", f);
  EXPECT_EQ(line.find("\xe2\x80"), std::string::npos) << line;
  EXPECT_EQ(line.find("\xc2\x85"), std::string::npos) << line;
  EXPECT_NE(line.find(R"("path":"/tests/\u2028\u2029\u0085")"), std::string::npos) << line;
}

TEST(JsonText, EscapesALineBreakerWhereverItIsAndPassesAsciiOnAsItIs) {
  // Stored documents go out through append_json_text: an ASCII one is copied whole, and a raw
  // U+2028 or C1 control is escaped at any offset: in the 32-byte blocks, the eight-byte words and
  // the tail.
  const std::string ascii = "{\"test_id\":\"t-1\",\"result\":\"0123456789abcdefghij\"}";
  std::string out = "[";
  append_json_text(out, ascii);
  EXPECT_EQ(out, "[" + ascii);
  for (size_t at = 0; at <= 70; ++at) {
    std::string doc(70, 'a');
    for (const auto& [raw, escaped] :
         {std::pair<std::string, std::string>{"\xe2\x80\xa8", "\\u2028"},
          {"\xc2\x85", "\\u0085"}}) {
      std::string in = doc.substr(0, at) + raw + doc.substr(at);
      out.clear();
      append_json_text(out, in);
      EXPECT_EQ(out, doc.substr(0, at) + escaped + doc.substr(at)) << at;
    }
  }
  // Other non-ASCII text is copied as it is.
  out.clear();
  append_json_text(out, "\"r\xc3\xa9sultat \xe2\x82\xac\"");
  EXPECT_EQ(out, "\"r\xc3\xa9sultat \xe2\x82\xac\"");
}

TEST(JsonString, ReplacesBytesThatAreNotUtf8) {
  struct Case {
    std::string in, out;
  } cases[] = {
      {"\xff", "\xef\xbf\xbd"},                                  // never valid
      {"a\xc3(", "a\xef\xbf\xbd("},                              // lead byte without continuation
      {"\xe2\x82", "\xef\xbf\xbd\xef\xbf\xbd"},                  // cut short at the end
      {"\xc0\xaf", "\xef\xbf\xbd\xef\xbf\xbd"},                  // overlong '/'
      {"\xed\xa0\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},  // a surrogate
      {"\xf4\x90\x80\x80", "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},  // > U+10FFFF
      {"\x80\"", "\xef\xbf\xbd\\\""},  // stray continuation, then a quote
      {"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"},  // kept
  };
  for (const Case& c : cases) {
    std::string out;
    append_json_string(out, c.in);
    EXPECT_EQ(out, "\"" + c.out + "\"");
    EXPECT_TRUE(is_valid_utf8(out));
  }
}

TEST(JsonString, EveryByteStringBecomesValidUtf8Json) {
  // All 2-byte strings, and 3-byte strings over the bytes that matter for UTF-8.
  const unsigned char probe[] = {0x00, 0x1f, 0x22, 0x41, 0x5c, 0x7f, 0x80, 0xa0, 0xbf, 0xc0,
                                 0xc2, 0xdf, 0xe0, 0xed, 0xef, 0xf0, 0xf4, 0xf5, 0xff};
  for (unsigned char a : probe) {
    for (unsigned char b : probe) {
      for (unsigned char c : probe) {
        std::string in{static_cast<char>(a), static_cast<char>(b), static_cast<char>(c)};
        std::string out;
        append_json_string(out, in);
        ASSERT_TRUE(is_valid_utf8(out)) << int(a) << " " << int(b) << " " << int(c);
        JsonTree tree = parse_json_document(out);
        ASSERT_TRUE(tree) << out;
        if (is_valid_utf8(in) && in.find('\0') == std::string::npos) {
          EXPECT_EQ(std::string(tree->valuestring), in);
        }
      }
    }
  }
}

TEST(LogLine, RawPathBytesBecomeValidUtf8) {
  LogFields f;
  f.path = "/tests/\xff\xfe";
  f.test_id = "\xc3";
  std::string line = render_log_line(LogLevel::kWarn, "request", f);
  EXPECT_TRUE(is_valid_utf8(line));
  JsonTree tree = parse_json_document(line);
  ASSERT_TRUE(tree) << line;
  EXPECT_STREQ(cJSON_GetObjectItem(tree.get(), "path")->valuestring,
               "/tests/\xef\xbf\xbd\xef\xbf\xbd");
  EXPECT_STREQ(cJSON_GetObjectItem(tree.get(), "test_id")->valuestring, "\xef\xbf\xbd");
}

TEST(JsonScan, AcceptsOnlyJsonWhitespace) {
  EXPECT_EQ(scan_json(" \t\r\n{ \"a\" :\t[ 1 , 2 ] }\n", 8).outcome, JsonScan::Outcome::kOk);
  for (std::string bad : {"\x01{}", "{}\x0b",
                          "{\"a\":\x0c"
                          "1}",
                          "[1\x1f]",
                          "[1,\x1f"
                          "2]",
                          "\x7f[]"}) {
    EXPECT_EQ(scan_json(bad, 8).outcome, JsonScan::Outcome::kInvalid) << bad;
    EXPECT_FALSE(parse_json_document(bad)) << bad;
  }
}

TEST(JsonScan, FollowsTheGrammar) {
  for (std::string ok :
       {"0", "-0", "12", "-1.5e+10", "1E-2", "0.25", "true", "false", "null",
        R"("a\"\\\/\b\f\n\r\t\u00e9")", "[]", "{}", R"({"a":[{"b":null}],"c":1})", "[[],[{}]]"}) {
    EXPECT_EQ(scan_json(ok, 8).outcome, JsonScan::Outcome::kOk) << ok;
  }
  for (std::string bad :
       {"",     " ",   "+1",       "01",        ".5",          "1.",       "1e",          "-",
        "--1",  "tru", "nul",      "True",      R"("a)",       R"("\x")",  R"("\u12g4")", "[1,]",
        "[,1]", "{,}", R"({"a"})", R"({"a":})", R"({"a":1,})", R"({1:2})", "[1 2]",       "{}{}",
        "[}",   "{]",  "[",        "]",         "1 2",         "'a'"}) {
    EXPECT_EQ(scan_json(bad, 8).outcome, JsonScan::Outcome::kInvalid) << bad;
  }
}

TEST(JsonScan, CountsValuesRootItemsAndDepth) {
  JsonScan s = scan_json(R"([{"a":1,"b":[2,3]},"x",[],{}])", 8);
  ASSERT_EQ(s.outcome, JsonScan::Outcome::kOk);
  EXPECT_EQ(s.root, '[');
  EXPECT_EQ(s.values, 9u);  // array, object, 1, [2,3], 2, 3, "x", [], {}
  EXPECT_EQ(s.root_items, 4u);
  s = scan_json(R"({"a":1,"b":{"c":2}})", 8);
  EXPECT_EQ(s.root, '{');
  EXPECT_EQ(s.root_items, 2u);
  EXPECT_EQ(scan_json("[[[]]]", 3).outcome, JsonScan::Outcome::kOk);
  EXPECT_EQ(scan_json("[[[[]]]]", 3).outcome, JsonScan::Outcome::kTooDeep);
  EXPECT_EQ(scan_json(std::string(100000, '['), 1000).outcome, JsonScan::Outcome::kTooDeep);
  EXPECT_EQ(scan_json("7", 0).outcome, JsonScan::Outcome::kOk);
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

TEST(JsonNumber, ThreeDecimalsLikePrintfAndNullWhenNotFinite) {
  auto render = [](double v) {
    std::string out;
    JsonWriter w(out);
    w.number(v);
    return out;
  };
  EXPECT_EQ(render(1.5), "1.500");
  EXPECT_EQ(render(0.0), "0.000");
  EXPECT_EQ(render(0.0004), "0.000");
  EXPECT_EQ(render(0.0126), "0.013");
  EXPECT_EQ(render(-2.25), "-2.250");
  EXPECT_EQ(render(12345.678), "12345.678");
  EXPECT_EQ(render(999.9996), "1000.000");
  // Past the hand-formatted range: printf's "%.3f", whole.
  char expected[400];
  std::snprintf(expected, sizeof expected, "%.3f", 1e300);
  EXPECT_EQ(render(1e300), expected);
  EXPECT_EQ(render(std::nan("")), "null");
  EXPECT_EQ(render(HUGE_VAL), "null");
}

TEST(Timestamp, IsUtcWithMillisecondsAndFollowsTheClock) {
  const std::regex shape(R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z)");
  std::string first = utc_timestamp_ms();
  EXPECT_TRUE(std::regex_match(first, shape)) << first;
  auto second_of = [](time_t t) {
    struct tm tm;
    gmtime_r(&t, &tm);
    char text[32];
    strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%S", &tm);
    return std::string(text);
  };
  std::string before = second_of(time(nullptr));
  std::string again = utc_timestamp_ms();
  std::string after = second_of(time(nullptr));
  EXPECT_TRUE(std::regex_match(again, shape)) << again;
  // The cached second is the clock's: between the seconds read just before and just after.
  EXPECT_GE(again.substr(0, 19), before) << again;
  EXPECT_LE(again.substr(0, 19), after) << again;
  EXPECT_GE(again, first);
}

}  // namespace
}  // namespace tdapi
