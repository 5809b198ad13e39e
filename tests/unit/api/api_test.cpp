// api_test.cpp: routing and handlers, called directly (no FastCGI), on a temp database.
#include "api/api.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "base/json.h"
#include "metrics/metrics.h"
#include "security/access_control.h"
#include "security/auth.h"
#include "server/http_router.h"
#include "store/sqlite/sqlite_test_util.h"
#include "store/sqlite/store_sqlite.h"
#include "temp_dir.h"

namespace tdapi {
namespace {

struct Sent : ResponseOutput {
  bool write_head(const Response& r) override {
    status = r.status;
    headers = r.headers;
    return true;
  }
  bool write_body(std::string_view chunk) override {
    body += chunk;
    chunks++;
    return true;
  }
  void abort() override { aborted = true; }
  bool aborted = false;
  int status = 0;
  int chunks = 0;
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;
};

class Api : public ::testing::Test {
 protected:
  void SetUp() override {
    SqliteOptions o;
    o.path = dir_.file("api.db");
    ASSERT_TRUE(SqliteStore::open(o, store_).ok());
  }
  Sent call(const std::string& method, const std::string& uri, const std::string& body = "",
            const std::string& content_type = "application/json",
            BodyState state = BodyState::kComplete, const std::string& content_encoding = "") {
    Request req;
    req.content_encoding = content_encoding;
    req.method = method;
    size_t q = uri.find('?');
    req.path = uri.substr(0, q);
    if (q != std::string::npos) req.query = uri.substr(q + 1);
    req.body = body;
    req.content_type = content_type;
    req.body_state = state;
    req.authorization = authorization_;
    Response r =
        authorization_.empty() ? route_request(req, *store_) : route_request(req, *store_, keyed_);
    last_route_ = r.route;
    Sent sent;
    send_response(r, sent);
    last_log_ = r.log;
    // What the FastCGI adapter logs for every request (fcgi_server.cpp serve_one).
    last_log_.method = method;
    last_log_.path = req.path;
    last_log_.status = r.status;
    if (write_logs_) log_event(LogLevel::kInfo, "request", last_log_);
    return sent;
  }
  std::string header(const Sent& s, const std::string& name) {
    for (const auto& [n, v] : s.headers)
      if (n == name) return v;
    return "";
  }
  // Stores a key with these scopes; call() then sends its token, with AUTH on.
  void use_key(const std::vector<std::string>& scopes) {
    NewKey nk;
    ASSERT_TRUE(generate_key(nk));
    ApiKey key{nk.key_id, "test", scopes, nk.secret_hash, "2026-01-01T00:00:00.000Z", ""};
    ASSERT_TRUE(store_->create_key(key).ok());
    authorization_ = "Bearer " + nk.token;
  }
  // Every entry of the audit trail, oldest first.
  std::vector<AuditEntry> audit_trail() {
    std::vector<AuditEntry> out;
    EXPECT_TRUE(store_
                    ->list_audit({},
                                 [&](const AuditEntry& e) {
                                   out.push_back(e);
                                   return true;
                                 })
                    .ok());
    return out;
  }
  TempDir dir_;
  std::unique_ptr<SqliteStore> store_;
  Authenticator keyed_{AccessOptions{true, true}};
  std::string authorization_;  // empty: the local mode (auth off)
  LogFields last_log_;
  std::string last_route_;
  bool write_logs_ = false;  // call() writes each request's log line, as serve_one does
};

std::string record(const std::string& id, const std::string& clinic = "c1") {
  return R"({"test_id":")" + id + R"(","patient_id":"p1","clinic_id":")" + clinic +
         R"(","test_type":"blood","result":"ok"})";
}

TEST_F(Api, CreateThenList) {
  Sent created = call("POST", "/tests", record("t/1"));
  EXPECT_EQ(created.status, 201);
  EXPECT_EQ(created.body, R"({"status":"success","test_id":"t/1"})");
  EXPECT_EQ(header(created, "Location"), "/tests/t%2F1");
  EXPECT_EQ(last_log_.txn, "commit");
  EXPECT_EQ(last_log_.test_id, "t/1");

  Sent listed = call("GET", "/tests?clinic_id=c1");
  EXPECT_EQ(listed.status, 200);
  JsonTree tree = parse_json_document(listed.body);
  ASSERT_TRUE(tree) << listed.body;
  EXPECT_EQ(cJSON_GetObjectItem(tree.get(), "count")->valueint, 1);
  const cJSON* test = cJSON_GetArrayItem(cJSON_GetObjectItem(tree.get(), "tests"), 0);
  EXPECT_STREQ(cJSON_GetObjectItem(test, "patient_id")->valuestring, "p1");
  EXPECT_EQ(last_log_.count, 1);
}

TEST_F(Api, DuplicateIs409AndLoggedAsRollback) {
  ASSERT_EQ(call("POST", "/tests", record("t1")).status, 201);
  Sent dup = call("POST", "/tests", record("t1"));
  EXPECT_EQ(dup.status, 409);
  EXPECT_EQ(dup.body, R"({"status":"error","message":"test_id already exists"})");
  EXPECT_EQ(last_log_.txn, "rollback");
  EXPECT_EQ(last_log_.reason, "duplicate");
}

TEST_F(Api, BodyChecksTable) {
  struct Case {
    std::string content_type;
    BodyState state;
    std::string body;
    int status;
    std::string response;
  } cases[] = {
      {"application/json", BodyState::kTooLarge, "", 413,
       R"({"status":"error","message":"request body is larger than 65536 bytes"})"},
      {"text/plain", BodyState::kComplete, record("x"), 415,
       R"({"status":"error","message":"Content-Type must be application/json"})"},
      {"", BodyState::kComplete, record("x"), 415,
       R"({"status":"error","message":"Content-Type must be application/json"})"},
      {"application/json", BodyState::kTruncated, "{", 400,
       R"({"status":"error","message":"request body is shorter than its Content-Length"})"},
      {"application/json", BodyState::kComplete, "", 400,
       R"({"status":"error","message":"request body is empty"})"},
      {"application/json; charset=utf-8", BodyState::kComplete, R"({"test_id":"t"})", 400,
       R"({"status":"error","message":"invalid test record","errors":[)"
       R"({"field":"patient_id","message":"is required"},)"
       R"({"field":"clinic_id","message":"is required"},)"
       R"({"field":"test_type","message":"is required"},)"
       R"({"field":"result","message":"is required"}]})"},
  };
  for (const Case& c : cases) {
    Sent s = call("POST", "/tests", c.body, c.content_type, c.state);
    EXPECT_EQ(s.status, c.status) << c.response;
    EXPECT_EQ(s.body, c.response);
  }
}

TEST_F(Api, ListQueryTable) {
  struct Case {
    std::string uri;
    int status;
    std::string response;
  } cases[] = {
      {"/tests", 400, R"({"status":"error","message":"clinic_id is required"})"},
      {"/tests?clinic_id=", 400, R"({"status":"error","message":"clinic_id must not be empty"})"},
      {"/tests?clinic_id=+", 400, R"({"status":"error","message":"clinic_id must not be empty"})"},
      {"/tests?clinicid=c1", 400,
       R"({"status":"error","message":"unknown query parameter: clinicid"})"},
      {"/tests?clinic_id=c1&clinic_id=c2", 400,
       R"({"status":"error","message":"clinic_id must be given once"})"},
      {"/tests?clinic_id=%zz", 400,
       R"({"status":"error","message":"malformed percent-encoding in query string"})"},
      {"/tests?clinic_id=nobody", 200,
       R"({"status":"success","clinic_id":"nobody","tests":[],"count":0})"},
      {"/tests?clinic_id=a+b%2Fc", 200,
       R"({"status":"success","clinic_id":"a b/c","tests":[],"count":0})"},
  };
  for (const Case& c : cases) {
    Sent s = call("GET", c.uri);
    EXPECT_EQ(s.status, c.status) << c.uri;
    EXPECT_EQ(s.body, c.response) << c.uri;
  }
}

TEST_F(Api, DecodedClinicIdMatchesStoredValue) {
  ASSERT_EQ(call("POST", "/tests", record("t1", "a b/c")).status, 201);
  Sent s = call("GET", "/tests?clinic_id=a+b%2Fc");
  EXPECT_NE(s.body.find(R"("count":1)"), std::string::npos) << s.body;
}

TEST_F(Api, LargeListingIsStreamedInChunks) {
  for (int i = 0; i < 600; ++i) {
    ASSERT_EQ(call("POST", "/tests", record("bulk-" + std::to_string(i))).status, 201);
  }
  Sent s = call("GET", "/tests?clinic_id=c1");
  EXPECT_EQ(s.status, 200);
  EXPECT_GT(s.chunks, 1);
  JsonTree tree = parse_json_document(s.body);
  ASSERT_TRUE(tree);
  EXPECT_EQ(cJSON_GetObjectItem(tree.get(), "count")->valueint, 600);
  EXPECT_EQ(cJSON_GetArraySize(cJSON_GetObjectItem(tree.get(), "tests")), 600);
}

TEST_F(Api, GetOneTestByDecodedId) {
  ASSERT_EQ(call("POST", "/tests", record("a/b c")).status, 201);
  Sent s = call("GET", "/tests/a%2Fb%20c");
  EXPECT_EQ(s.status, 200);
  JsonTree tree = parse_json_document(s.body);
  ASSERT_TRUE(tree) << s.body;
  EXPECT_STREQ(cJSON_GetObjectItem(tree.get(), "status")->valuestring, "success");
  const cJSON* test = cJSON_GetObjectItem(tree.get(), "test");
  EXPECT_STREQ(cJSON_GetObjectItem(test, "test_id")->valuestring, "a/b c");
  EXPECT_TRUE(cJSON_GetObjectItem(test, "created_at"));
  Sent missing = call("GET", "/tests/nope");
  EXPECT_EQ(missing.status, 404);
  EXPECT_EQ(missing.body, R"({"status":"error","message":"test not found"})");
}

TEST_F(Api, BatchIsAllOrNothing) {
  Sent ok = call("POST", "/tests/batch", "[" + record("b1") + "," + record("b2") + "]");
  EXPECT_EQ(ok.status, 201);
  EXPECT_EQ(ok.body, R"({"status":"success","count":2,"test_ids":["b1","b2"]})");
  Sent dup = call("POST", "/tests/batch",
                  "[" + record("b3") + "," + record("b1") + "," + record("b3") + "]");
  EXPECT_EQ(dup.status, 409);
  EXPECT_EQ(dup.body,
            R"({"status":"error","message":"test_ids already exist or appear twice in the )"
            R"(batch; nothing was stored","test_ids":["b1","b3"]})");
  Sent bad = call("POST", "/tests/batch", "[" + record("b4") + R"(,{"test_id":"b5"},7])");
  EXPECT_EQ(bad.status, 400);
  EXPECT_EQ(bad.body, R"({"status":"error","message":"invalid test records","errors":[)"
                      R"({"index":1,"field":"patient_id","message":"is required"},)"
                      R"({"index":1,"field":"clinic_id","message":"is required"},)"
                      R"({"index":1,"field":"test_type","message":"is required"},)"
                      R"({"index":1,"field":"result","message":"is required"},)"
                      R"({"index":2,"message":"must be a JSON object"}]})");
  EXPECT_EQ(call("POST", "/tests/batch", "[]").body,
            R"({"status":"error","message":"a batch holds 1 to 1000 records, not 0"})");
  EXPECT_EQ(call("POST", "/tests/batch", record("x")).status, 400);
  Sent listed = call("GET", "/tests?clinic_id=c1");
  EXPECT_NE(listed.body.find(R"("count":2)"), std::string::npos) << listed.body;
}

TEST_F(Api, CursorWalkVisitsEveryTestOnceWhileTestsAreAdded) {
  for (int i = 0; i < 7; ++i)
    ASSERT_EQ(call("POST", "/tests", record("p" + std::to_string(i))).status, 201);
  std::vector<std::string> seen;
  std::string uri = "/tests?clinic_id=c1&limit=3";
  int added = 0;
  for (int guard = 0; guard < 20; ++guard) {
    Sent s = call("GET", uri);
    ASSERT_EQ(s.status, 200) << s.body;
    JsonTree tree = parse_json_document(s.body);
    ASSERT_TRUE(tree) << s.body;
    const cJSON* tests = cJSON_GetObjectItem(tree.get(), "tests");
    for (int i = 0; i < cJSON_GetArraySize(tests); ++i) {
      seen.push_back(cJSON_GetObjectItem(cJSON_GetArrayItem(tests, i), "test_id")->valuestring);
    }
    if (added < 2) {  // new tests arrive while the client pages
      ASSERT_EQ(call("POST", "/tests", record("late" + std::to_string(added++))).status, 201);
    }
    const cJSON* next = cJSON_GetObjectItem(tree.get(), "next_cursor");
    ASSERT_TRUE(next);
    if (cJSON_IsNull(next)) break;
    uri = std::string("/tests?clinic_id=c1&limit=3&cursor=") + next->valuestring;
  }
  EXPECT_EQ(seen,
            (std::vector<std::string>{"p0", "p1", "p2", "p3", "p4", "p5", "p6", "late0", "late1"}));
}

TEST_F(Api, PagingAndFilterErrors) {
  ASSERT_EQ(call("POST", "/tests", record("e1")).status, 201);
  Sent first = call("GET", "/tests?clinic_id=c1&limit=1");
  EXPECT_NE(first.body.find(R"("next_cursor":null)"), std::string::npos) << first.body;
  struct Case {
    std::string uri;
    std::string message;
  } cases[] = {
      {"/tests?clinic_id=c1&limit=0", "limit must be an integer from 1 to 1000"},
      {"/tests?clinic_id=c1&limit=1001", "limit must be an integer from 1 to 1000"},
      {"/tests?clinic_id=c1&limit=-1", "limit must be an integer from 1 to 1000"},
      {"/tests?clinic_id=c1&limit=ten", "limit must be an integer from 1 to 1000"},
      {"/tests?clinic_id=c1&limit=", "limit must be an integer from 1 to 1000"},
      {"/tests?clinic_id=c1&cursor=garbage", "cursor is malformed, altered, or for another query"},
      {"/tests?clinic_id=c1&cursor=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
       "cursor is malformed, altered, or for another query"},
      {"/tests?clinic_id=c1&cursor=AAAAAAAAAAAAAAAAAAAAAA",  // the earlier, readable format
       "cursor is from an earlier version of the service; start the listing again without a "
       "cursor"},
      {"/tests?clinic_id=c1&patient_id=", "patient_id must not be empty"},
      {"/tests?clinic_id=c1&test_type=a&test_type=b", "test_type must be given once"},
  };
  for (const Case& c : cases) {
    Sent s = call("GET", c.uri);
    EXPECT_EQ(s.status, 400) << c.uri;
    EXPECT_EQ(s.body, R"({"status":"error","message":")" + c.message + R"("})") << c.uri;
  }
}

TEST_F(Api, FiltersNarrowTheListing) {
  ASSERT_EQ(
      call(
          "POST", "/tests",
          R"({"test_id":"x1","patient_id":"p 1","clinic_id":"c1","test_type":"blood","result":"r"})")
          .status,
      201);
  ASSERT_EQ(
      call(
          "POST", "/tests",
          R"({"test_id":"x2","patient_id":"p2","clinic_id":"c1","test_type":"blood","result":"r"})")
          .status,
      201);
  ASSERT_EQ(
      call(
          "POST", "/tests",
          R"({"test_id":"x3","patient_id":"p 1","clinic_id":"c1","test_type":"urine","result":"r"})")
          .status,
      201);
  EXPECT_NE(call("GET", "/tests?clinic_id=c1&patient_id=p+1").body.find(R"("count":2)"),
            std::string::npos);
  EXPECT_NE(call("GET", "/tests?clinic_id=c1&test_type=blood").body.find(R"("count":2)"),
            std::string::npos);
  Sent both = call("GET", "/tests?clinic_id=c1&patient_id=p%201&test_type=urine");
  EXPECT_NE(both.body.find(R"("test_id":"x3")"), std::string::npos) << both.body;
  EXPECT_NE(both.body.find(R"("count":1)"), std::string::npos) << both.body;
  EXPECT_EQ(last_log_.clinic_id, "c1");
}

// Sends stderr (where log_event writes) to a temp file while alive; text() reads what arrived.
class StderrCapture {
 public:
  explicit StderrCapture(std::string path) : path_(std::move(path)) {
    fflush(stderr);
    saved_ = dup(STDERR_FILENO);
    FILE* f = fopen(path_.c_str(), "w");
    dup2(fileno(f), STDERR_FILENO);
    fclose(f);
  }
  ~StderrCapture() { restore(); }
  std::string text() {
    restore();
    std::ifstream in(path_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  void restore() {
    if (saved_ < 0) return;
    fflush(stderr);
    dup2(saved_, STDERR_FILENO);
    close(saved_);
    saved_ = -1;
  }
  std::string path_;
  int saved_ = -1;
};

TEST_F(Api, LogLinesCarryNoPatientIdsOrResults) {
  const std::string patient = "PATIENT-7731";
  const std::string result = "RESULT-5519";
  auto rec = [&](const std::string& id) {
    return R"({"test_id":")" + id + R"(","patient_id":")" + patient +
           R"(","clinic_id":"lc","test_type":"blood","result":")" + result + R"("})";
  };
  std::string log;
  {
    StderrCapture capture(dir_.file("stderr.log"));
    write_logs_ = true;
    ASSERT_EQ(call("POST", "/tests", rec("l1")).status, 201);
    ASSERT_EQ(call("POST", "/tests", rec("l1")).status, 409);
    ASSERT_EQ(call("POST", "/tests/batch", "[" + rec("l2") + "," + rec("l3") + "]").status, 201);
    ASSERT_EQ(call("POST", "/tests/batch", "[" + rec("l2") + "]").status, 409);
    Sent listed = call("GET", "/tests?clinic_id=lc&patient_id=" + patient);
    ASSERT_NE(listed.body.find(R"("count":3)"), std::string::npos) << listed.body;
    Sent found =
        call("POST", "/tests/search", R"({"clinic_id":"lc","patient_id":")" + patient + R"("})");
    ASSERT_NE(found.body.find(R"("count":3)"), std::string::npos) << found.body;
    ASSERT_EQ(call("GET", "/tests/l1").status, 200);
    ASSERT_EQ(call("POST", "/tests/search",
                   R"({"clinic_id":"lc","patient_id":")" + patient + R"(","x":1})")
                  .status,
              400);
    log = capture.text();
  }
  // The lines are really there (request lines with ids, the writer's txn lines) ...
  EXPECT_NE(log.find(R"("event":"request")"), std::string::npos) << log;
  EXPECT_NE(log.find(R"("test_id":"l1")"), std::string::npos) << log;
  EXPECT_NE(log.find(R"("path":"/tests/search")"), std::string::npos) << log;
  EXPECT_NE(log.find(R"("event":"txn")"), std::string::npos) << log;
  // ... and hold neither patient ids nor results.
  EXPECT_EQ(log.find(patient), std::string::npos) << log;
  EXPECT_EQ(log.find(result), std::string::npos) << log;
}

TEST_F(Api, SearchIsGetTestsWithTheFiltersInABody) {
  for (const char* id : {"s1", "s2", "s3"})
    ASSERT_EQ(call("POST", "/tests", record(id)).status, 201);
  Sent got = call("GET", "/tests?clinic_id=c1&patient_id=p1&test_type=blood&limit=2");
  Sent searched = call("POST", "/tests/search",
                       R"({"clinic_id":"c1","patient_id":"p1","test_type":"blood","limit":2})");
  EXPECT_EQ(searched.status, 200);
  EXPECT_EQ(last_route_, "POST /tests/search");
  EXPECT_EQ(searched.body, got.body);
  JsonTree tree = parse_json_document(searched.body);
  ASSERT_TRUE(tree);
  std::string cursor = cJSON_GetObjectItem(tree.get(), "next_cursor")->valuestring;
  Sent next =
      call("POST", "/tests/search",
           R"({"clinic_id":"c1","patient_id":"p1","test_type":"blood","limit":2,"cursor":")" +
               cursor + R"("})");
  EXPECT_NE(next.body.find(R"("tests":[{"test_id":"s3")"), std::string::npos) << next.body;
  EXPECT_NE(next.body.find(R"("next_cursor":null)"), std::string::npos) << next.body;
  struct Case {
    std::string body;
    int status;
    std::string message;
  } cases[] = {
      {R"({"clinic_id":"c1","x":1})", 400, "unknown field: x"},
      {R"({"clinic_id":"c1","limit":2,"limit":3})", 400, "limit must be given once"},
      {R"({"clinic_id":true})", 400, "clinic_id must be a string"},
      {R"({"clinic_id":"c1","test_type":5})", 400, "test_type must be a string"},
      {R"({"clinic_id":"c1","limit":"2"})", 400, "limit must be an integer from 1 to 1000"},
      {R"({"clinic_id":"c1","limit":2.5})", 400, "limit must be an integer from 1 to 1000"},
      {R"({"clinic_id":"c1","limit":-1})", 400, "limit must be an integer from 1 to 1000"},
      {R"({})", 400, "clinic_id is required"},
      {R"({"clinic_id":""})", 400, "clinic_id must not be empty"},
      {R"([])", 400, "request body must be a JSON object"},
      {"", 400, "request body is empty"},
  };
  for (const Case& c : cases) {
    Sent s = call("POST", "/tests/search", c.body);
    EXPECT_EQ(s.status, c.status) << c.body;
    EXPECT_EQ(s.body, R"({"status":"error","message":")" + c.message + R"("})") << c.body;
  }
  EXPECT_EQ(call("POST", "/tests/search", R"({"clinic_id":"c1"})", "text/plain").status, 415);
}

TEST_F(Api, ContentEncodingOtherThanIdentityIs415) {
  const std::string message =
      R"({"status":"error","message":"Content-Encoding is not supported; send the body uncompressed"})";
  for (const char* enc : {"gzip", "br", "x-gzip", "identity,gzip"}) {
    for (const char* path : {"/tests", "/tests/batch", "/tests/search"}) {
      Sent s = call("POST", path, record("ce"), "application/json", BodyState::kComplete, enc);
      EXPECT_EQ(s.status, 415) << enc << " " << path;
      EXPECT_EQ(s.body, message);
    }
  }
  for (const char* enc : {"", "identity", " IDENTITY "}) {
    EXPECT_NE(call("POST", "/tests", record(std::string("ce-") + enc), "application/json",
                   BodyState::kComplete, enc)
                  .status,
              415)
        << enc;
  }
}

TEST_F(Api, QueryFiltersHaveTheBodyLimits) {
  const std::string long_id(129, 'x');
  struct Case {
    std::string uri;
    std::string message;
  } cases[] = {
      {"/tests?clinic_id=" + std::string(7000, 'c'), "clinic_id must be at most 128 characters"},
      {"/tests?clinic_id=c1&patient_id=" + long_id, "patient_id must be at most 128 characters"},
      {"/tests?clinic_id=c1&test_type=" + long_id, "test_type must be at most 128 characters"},
      {"/tests?clinic_id=c%01", "clinic_id must not contain control characters"},
      {"/tests?clinic_id=c1&patient_id=%E2%80%AE1",
       "patient_id must not contain line separators or bidirectional controls"},
  };
  for (const Case& c : cases) {
    Sent s = call("GET", c.uri);
    EXPECT_EQ(s.status, 400) << c.uri;
    EXPECT_EQ(s.body, R"({"status":"error","message":")" + c.message + R"("})") << c.uri;
    EXPECT_EQ(last_log_.clinic_id, "");  // a refused value is not logged
  }
  EXPECT_EQ(call("GET", "/tests?clinic_id=" + std::string(128, 'c')).status, 200);
}

TEST_F(Api, MetricsAreRenderedAsPrometheusText) {
  global_metrics().record("GET /tests", 200, 0.7);
  Sent s = call("GET", "/metrics");
  EXPECT_EQ(s.status, 200);
  EXPECT_NE(s.body.find("# TYPE tdapi_requests_total counter"), std::string::npos);
  EXPECT_NE(s.body.find(R"(tdapi_request_duration_seconds_bucket{route="GET /tests",le="0.001"})"),
            std::string::npos);
  EXPECT_NE(s.body.find("tdapi_database_size_bytes "), std::string::npos);
  EXPECT_NE(s.body.find("tdapi_commits_total "), std::string::npos);
}

TEST_F(Api, RoutingTable) {
  struct Case {
    std::string method, uri;
    int status;
    std::string allow;
  } cases[] = {
      {"GET", "/nope", 404, ""},
      {"GET", "/tests/", 404, ""},
      {"DELETE", "/tests", 405, "GET, HEAD, POST"},
      {"PUT", "/tests", 405, "GET, HEAD, POST"},
      {"GET", "/%74ests?clinic_id=c", 200, ""},
      {"GET", "/te%zzsts", 400, ""},
      {"GET", "/healthz", 200, ""},
      {"POST", "/healthz", 405, "GET, HEAD"},
      {"DELETE", "/tests/x", 405, "GET, HEAD, PUT"},
      {"PUT", "/tests/x", 400, ""},  // a correction without a body
      {"GET", "/tests/batch", 404, ""},
      {"DELETE", "/tests/batch", 405, "POST, GET, HEAD, PUT"},
      {"GET", "/tests/search", 404, ""},
      {"DELETE", "/tests/search", 405, "POST, GET, HEAD, PUT"},
      {"POST", "/tests/x/history", 405, "GET, HEAD"},
      {"GET", "/tests/x/history", 404, ""},
      {"POST", "/changes", 405, "GET, HEAD"},
      {"GET", "/changes/search", 405, "POST"},
      {"HEAD", "/healthz", 200, ""},
      {"GET", "/tests/a/b", 404, ""},
  };
  for (const Case& c : cases) {
    Sent s = call(c.method, c.uri);
    EXPECT_EQ(s.status, c.status) << c.method << " " << c.uri;
    EXPECT_EQ(header(s, "Allow"), c.allow) << c.method << " " << c.uri;
    EXPECT_TRUE(parse_json_document(s.body)) << s.body;
  }
}

TEST_F(Api, ADeniedRequestCostsOneBoundedAuditEntry) {
  use_key({"metrics"});
  // A batch over 1,000 clinics the key may not write: one entry, not one per clinic, and a
  // detail that names a few clinics and ids and counts the rest.
  std::string batch = "[";
  for (int i = 0; i < 1000; ++i) {
    std::string clinic = std::to_string(i) + std::string(120, 'c');
    batch += (i ? "," : "") + record("deny-" + std::to_string(i) + std::string(100, 't'), clinic);
  }
  batch += "]";
  size_t before = audit_trail().size();
  Sent denied = call("POST", "/tests/batch", batch);
  EXPECT_EQ(denied.status, 403);
  EXPECT_LT(denied.body.size(), 4096u);
  std::vector<AuditEntry> trail = audit_trail();
  ASSERT_EQ(trail.size(), before + 1);
  const AuditEntry& e = trail.back();
  EXPECT_EQ((e.action + " " + std::to_string(e.outcome)), "batch 403");
  EXPECT_LT(e.detail.size() + e.clinic_id.size(), 4096u);
  JsonTree detail = parse_json_document(e.detail);
  ASSERT_TRUE(detail) << e.detail;
  EXPECT_EQ(cJSON_GetObjectItem(detail.get(), "clinic_count")->valueint, 1000);
  EXPECT_EQ(cJSON_GetObjectItem(detail.get(), "test_count")->valueint, 1000);
  // An id or filter that could never be stored is refused before anything is recorded.
  EXPECT_EQ(call("GET", "/tests/" + std::string(7000, 'x')).status, 404);
  EXPECT_EQ(call("GET", "/audit?clinic_id=" + std::string(7000, 'c')).status, 400);
  EXPECT_EQ(call("GET", "/tests?clinic_id=" + std::string(7000, 'c')).status, 400);
  EXPECT_EQ(audit_trail().size(), before + 1);
  // A denied batch of one clinic keeps that clinic on its entry.
  EXPECT_EQ(call("POST", "/tests/batch", "[" + record("one-a", "c9") + "]").status, 403);
  EXPECT_EQ(audit_trail().back().clinic_id, "c9");
}

TEST_F(Api, IdsThatCannotBeStoredAreRefusedBeforeTheyAreRecordedOrLogged) {
  ASSERT_EQ(call("POST", "/tests", record("t1")).status, 201);
  const std::string unknown = call("GET", "/tests/no-such-id").body;
  size_t before = audit_trail().size();
  const std::string bad_ids[] = {
      "a%E2%80%A8b",                               // U+2028 LINE SEPARATOR
      "a%E2%80%A9b",                               // U+2029
      "a%E2%80%AEb",                               // U+202E RIGHT-TO-LEFT OVERRIDE
      "a%E2%81%A6b",                               // U+2066 LEFT-TO-RIGHT ISOLATE
      "a%C2%85b",                                  // U+0085 NEXT LINE, a C1 control
      "a%0Ab",                                     // LF
      "a%FFb",                                     // not UTF-8
      "%20",                                       // only whitespace
      "..",          std::string(12 * 1024, 'x'),  // longer than 128 characters
  };
  for (const std::string& id : bad_ids) {
    Sent s = call("GET", "/tests/" + id);
    EXPECT_EQ(s.status, 404) << id;
    EXPECT_EQ(s.body, unknown) << id;  // exactly as an unknown id
    EXPECT_EQ(last_log_.test_id, "") << id;
    Sent q = call("GET", "/audit?clinic_id=" + id);
    EXPECT_EQ(q.status, id == ".." ? 200 : 400) << id;
    EXPECT_EQ(last_log_.clinic_id, "") << id;
  }
  // Only the audit read of clinic ".." (a clinic id that can be stored) was recorded.
  std::vector<AuditEntry> trail = audit_trail();
  ASSERT_EQ(trail.size(), before + 1);
  EXPECT_EQ(trail.back().clinic_id, "..");
  EXPECT_EQ(call("GET", "/audit?clinic_id=%E2%80%A8").body,
            R"({"status":"error","message":"clinic_id must not contain line separators or )"
            R"(bidirectional controls"})");
}

TEST_F(Api, ANulInAnyPathSegmentIs400) {
  ASSERT_EQ(call("POST", "/tests", record("t1")).status, 201);
  size_t before = audit_trail().size();
  for (const char* uri :
       {"/tests/t1%00x", "/tests/t1%00", "/tests%00/t1", "/metrics/node/1%00", "/healthz%00"}) {
    Sent s = call("GET", uri);
    EXPECT_EQ(s.status, 400) << uri;
    EXPECT_EQ(s.body, R"({"status":"error","message":"malformed path"})") << uri;
  }
  EXPECT_EQ(audit_trail().size(), before);
}

TEST_F(Api, GetAuthorizesByTheRowsClinicColumnNotItsDocument) {
  ASSERT_EQ(call("POST", "/tests", record("doctored", "c1")).status, 201);
  // A row edited behind the service's back (or restored so): its document still says c1.
  sql_on(dir_.file("api.db"), "UPDATE tests SET clinic_id = 'c2' WHERE test_id = 'doctored'");
  use_key({"read:c1"});
  Sent c1 = call("GET", "/tests/doctored");
  EXPECT_EQ(c1.status, 404);
  EXPECT_EQ(audit_trail().back().clinic_id, "c2");
  EXPECT_EQ(audit_trail().back().outcome, 404);
  use_key({"read:c2"});
  EXPECT_EQ(call("GET", "/tests/doctored").status, 200);
  EXPECT_EQ(audit_trail().back().clinic_id, "c2");
  EXPECT_EQ(audit_trail().back().outcome, 200);
}

TEST_F(Api, ResponsesEscapeWhatUnicodeLineReadersTakeForLineBreaks) {
  // Allowed in a result (it is text), but a raw U+2028, U+2029 or NEL would split a response
  // or log line for a Unicode-aware line reader.
  const std::string result =
      "one\xe2\x80\xa8two\xe2\x80\xa9three\xc2\x85"
      "four";
  std::string body = R"({"test_id":"sep","patient_id":"p1","clinic_id":"c1",)"
                     R"("test_type":"blood","result":"one\u2028two\u2029three\u0085four"})";
  ASSERT_EQ(call("POST", "/tests", body).status, 201);
  // A document stored by an earlier version holds them raw; it is served escaped all the same.
  ASSERT_EQ(call("POST", "/tests", record("old")).status, 201);
  sql_on(dir_.file("api.db"), "UPDATE tests SET doc = replace(doc, '\"ok\"', '\"" + result +
                                  "\"') WHERE test_id = 'old'");
  ASSERT_NE(sql_on(dir_.file("api.db"), "SELECT doc FROM tests WHERE test_id = 'old'").find(result),
            std::string::npos);
  for (const char* uri : {"/tests/sep", "/tests/old", "/tests?clinic_id=c1"}) {
    Sent s = call("GET", uri);
    EXPECT_EQ(s.status, 200) << uri;
    for (const char* raw : {"\xe2\x80\xa8", "\xe2\x80\xa9", "\xc2\x85"}) {
      EXPECT_EQ(s.body.find(raw), std::string::npos) << uri << ": " << s.body;
    }
    EXPECT_NE(s.body.find(R"(one\u2028two\u2029three\u0085four)"), std::string::npos) << s.body;
  }
  for (const char* uri : {"/tests/sep", "/tests/old"}) {
    JsonTree tree = parse_json_document(call("GET", uri).body);
    ASSERT_TRUE(tree) << uri;
    const cJSON* test = cJSON_GetObjectItem(tree.get(), "test");
    EXPECT_EQ(std::string(cJSON_GetObjectItem(test, "result")->valuestring), result) << uri;
  }
}

}  // namespace
}  // namespace tdapi
