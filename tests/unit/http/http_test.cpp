// http_test.cpp: percent-decoding, query strings, media types, UTF-8, response sending.
#include "http/http.h"

#include <gtest/gtest.h>

#include "base/utf8.h"

namespace tdapi {
namespace {

TEST(PercentDecode, Table) {
  struct Case {
    const char* in;
    bool plus_as_space;
    bool ok;
    const char* out;
  } cases[] = {
      {"abc", true, true, "abc"},   {"a%20b", true, true, "a b"},
      {"a+b", true, true, "a b"},   {"a+b", false, true, "a+b"},
      {"%41%62", true, true, "Ab"}, {"%e2%82%AC", true, true, "\xe2\x82\xac"},
      {"%", true, false, ""},       {"%4", true, false, ""},
      {"%zz", true, false, ""},     {"a%2", true, false, ""},
      {"%2B", true, true, "+"},     {"", true, true, ""},
  };
  for (const Case& c : cases) {
    std::string out;
    EXPECT_EQ(percent_decode(c.in, c.plus_as_space, out), c.ok) << c.in;
    if (c.ok) {
      EXPECT_EQ(out, c.out) << c.in;
    }
  }
}

TEST(PercentEncode, KeepsUnreservedOnly) {
  EXPECT_EQ(percent_encode("t-1_a.b~"), "t-1_a.b~");
  EXPECT_EQ(percent_encode("a b/c?d"), "a%20b%2Fc%3Fd");
  EXPECT_EQ(percent_encode("\xe2\x82\xac"), "%E2%82%AC");
}

TEST(ParseQuery, SplitsAndDecodes) {
  QueryParams p;
  std::string err;
  ASSERT_TRUE(parse_query("clinic_id=c+1&x=%2F&&flag&", p, err));
  ASSERT_EQ(p.size(), 3u);
  EXPECT_EQ(p[0], (std::pair<std::string, std::string>("clinic_id", "c 1")));
  EXPECT_EQ(p[1], (std::pair<std::string, std::string>("x", "/")));
  EXPECT_EQ(p[2], (std::pair<std::string, std::string>("flag", "")));
  ASSERT_TRUE(parse_query("", p, err));
  EXPECT_TRUE(p.empty());
}

TEST(ParseQuery, RejectsBadEncodingUtf8AndNul) {
  QueryParams p;
  std::string err;
  EXPECT_FALSE(parse_query("clinic_id=%zz", p, err));
  EXPECT_EQ(err, "malformed percent-encoding in query string");
  EXPECT_FALSE(parse_query("clinic_id=%ff", p, err));
  EXPECT_EQ(err, "query string is not valid UTF-8");
  EXPECT_FALSE(parse_query("clinic_id=a%00b", p, err));
  EXPECT_EQ(err, "query string contains a NUL character");
}

TEST(ContentType, JsonWithParametersAnyCase) {
  EXPECT_TRUE(is_json_content_type("application/json"));
  EXPECT_TRUE(is_json_content_type("Application/JSON; charset=utf-8"));
  EXPECT_TRUE(is_json_content_type(" application/json ;charset=UTF-8"));
  EXPECT_FALSE(is_json_content_type(""));
  EXPECT_FALSE(is_json_content_type("text/plain"));
  EXPECT_FALSE(is_json_content_type("application/jsonp"));
  EXPECT_FALSE(is_json_content_type("application/x-www-form-urlencoded"));
}

TEST(Utf8, Table) {
  struct Case {
    std::string s;
    bool valid;
  } cases[] = {
      {"plain", true},
      {"\xc3\xa9", true},           // é
      {"\xe2\x82\xac", true},       // €
      {"\xf0\x9f\x98\x80", true},   // emoji
      {"\xc3", false},              // truncated
      {"\x80", false},              // lone continuation
      {"\xc0\xaf", false},          // overlong /
      {"\xe0\x80\xaf", false},      // overlong 3-byte
      {"\xed\xa0\x80", false},      // surrogate D800
      {"\xf4\x90\x80\x80", false},  // above U+10FFFF
      {"\xff", false},
      {std::string("a\0b", 3), true},  // NUL is valid UTF-8 (rejected elsewhere)
  };
  for (const Case& c : cases) EXPECT_EQ(is_valid_utf8(c.s), c.valid) << c.s;
}

class StringOutput : public ResponseOutput {
 public:
  bool write_head(const Response& r) override {
    EXPECT_FALSE(aborted) << "head after abort";
    heads++;
    status = r.status;
    return true;
  }
  bool write_body(std::string_view chunk) override {
    EXPECT_FALSE(aborted) << "body after abort";
    body += chunk;
    return true;
  }
  void abort() override { aborted = true; }
  int heads = 0;
  int status = 0;
  bool aborted = false;
  std::string body;
};

TEST(SendResponse, StreamFailureBeforeFirstChunkBecomesErrorResponse) {
  Response r;
  r.stream = [](BodyWriter&, LogFields&) { return Status::Busy("locked"); };
  StringOutput out;
  send_response(r, out);
  EXPECT_EQ(out.heads, 1);
  EXPECT_EQ(out.status, 503);
  EXPECT_EQ(r.status, 503);
  EXPECT_EQ(out.body, R"({"status":"error","message":"storage is busy, retry later"})");
  EXPECT_EQ(r.log.reason, "busy");
  EXPECT_FALSE(out.aborted);
  EXPECT_FALSE(r.aborted);
}

TEST(SendResponse, StreamFailureAfterFirstChunkAbortsTheResponse) {
  Response r;
  r.stream = [](BodyWriter& w, LogFields&) {
    w.write("{\"partial\":");
    return Status::IoError("disk I/O error");
  };
  StringOutput out;
  send_response(r, out);
  EXPECT_EQ(out.heads, 1);
  EXPECT_EQ(out.status, 200);
  EXPECT_EQ(out.body, "{\"partial\":");
  EXPECT_TRUE(out.aborted) << "a cut-short body must not look complete to the client";
  EXPECT_TRUE(r.aborted);
  EXPECT_EQ(r.status, 200);  // what the head said
  EXPECT_EQ(r.log.reason, "response_aborted");
  EXPECT_NE(r.log.detail.find("io_error"), std::string::npos) << r.log.detail;
}

TEST(SendResponse, CompleteStreamAndPlainBodyAreNotAborted) {
  Response r;
  r.stream = [](BodyWriter& w, LogFields&) {
    w.write("{}");
    return Status::Ok();
  };
  StringOutput out;
  send_response(r, out);
  EXPECT_EQ(out.body, "{}");
  EXPECT_FALSE(out.aborted);
  EXPECT_FALSE(r.aborted);
  Response plain = error_response(404, "no");
  StringOutput out2;
  send_response(plain, out2);
  EXPECT_EQ(out2.status, 404);
  EXPECT_FALSE(out2.aborted);
}

TEST(ErrorResponses, ShapeAndFieldList) {
  EXPECT_EQ(error_response(404, "no such endpoint").body,
            R"({"status":"error","message":"no such endpoint"})");
  Response r = field_errors_response("invalid test record",
                                     {{"test_id", "is required"}, {"x\"y", "unknown field"}});
  EXPECT_EQ(r.status, 400);
  EXPECT_EQ(r.body, R"({"status":"error","message":"invalid test record","errors":[)"
                    R"({"field":"test_id","message":"is required"},)"
                    R"({"field":"x\"y","message":"unknown field"}]})");
}

}  // namespace
}  // namespace tdapi

namespace tdapi {
namespace {

// Every status the service (app or nginx's JSON pages through it) answers with has its phrase.
TEST(ReasonPhrase, EveryStatusTheServiceSends) {
  const std::pair<int, const char*> expected[] = {
      {200, "OK"},
      {201, "Created"},
      {204, "No Content"},
      {304, "Not Modified"},
      {400, "Bad Request"},
      {401, "Unauthorized"},
      {403, "Forbidden"},
      {404, "Not Found"},
      {405, "Method Not Allowed"},
      {409, "Conflict"},
      {412, "Precondition Failed"},
      {413, "Payload Too Large"},
      {415, "Unsupported Media Type"},
      {428, "Precondition Required"},
      {429, "Too Many Requests"},
      {500, "Internal Server Error"},
      {503, "Service Unavailable"},
      {507, "Insufficient Storage"},
  };
  for (const auto& [status, phrase] : expected) EXPECT_STREQ(reason_phrase(status), phrase);
  EXPECT_STREQ(reason_phrase(299), "Unknown");
}

}  // namespace
}  // namespace tdapi
