// http_router.cpp: the route table.
#include "http_router.h"

#include <string_view>
#include <vector>

#include "api.h"

namespace tdapi {

namespace {

using Handler = Response (*)(const Request&, Store&);

struct Route {
  const char* pattern;  // segments; "{test_id}" matches any one non-empty segment
  const char* method;
  const char* name;  // for metrics
  Handler handler;
};

const Route kRoutes[] = {
    {"/tests", "GET", "GET /tests", handle_list_tests},
    {"/tests", "POST", "POST /tests", handle_create_test},
    {"/tests/batch", "POST", "POST /tests/batch", handle_create_batch},
    {"/tests/search", "POST", "POST /tests/search", handle_search_tests},
    {"/tests/{test_id}", "GET", "GET /tests/{test_id}", handle_get_test},
    {"/healthz", "GET", "GET /healthz", handle_health},
    {"/metrics", "GET", "GET /metrics", handle_metrics},
};

// Splits a raw path on '/' and percent-decodes each segment (so %2F stays inside a segment).
bool decode_segments(const std::string& raw, std::vector<std::string>& out) {
  out.clear();
  if (raw.empty() || raw[0] != '/') return false;
  size_t pos = 1;
  for (;;) {
    size_t slash = raw.find('/', pos);
    std::string seg;
    if (!percent_decode(std::string_view(raw).substr(pos, slash - pos), false, seg)) return false;
    out.push_back(std::move(seg));
    if (slash == std::string::npos) return true;
    pos = slash + 1;
  }
}

// True when segments match pattern; the {test_id} segment goes to param.
bool matches(const char* pattern, const std::vector<std::string>& segments, std::string& param) {
  std::vector<std::string> want;
  decode_segments(pattern, want);
  if (want.size() != segments.size()) return false;
  for (size_t i = 0; i < want.size(); ++i) {
    if (want[i] == "{test_id}") {
      if (segments[i].empty()) return false;
      param = segments[i];
    } else if (want[i] != segments[i]) {
      return false;
    }
  }
  return true;
}

}  // namespace

Response route_request(Request& req, Store& store) {
  std::vector<std::string> segments;
  if (!decode_segments(req.path, segments)) return error_response(400, "malformed path");
  std::string allow;
  for (const Route& route : kRoutes) {
    std::string param;
    if (!matches(route.pattern, segments, param)) continue;
    // HEAD is GET without a body (nginx drops the body of an upstream answer to HEAD).
    bool head_of_get = req.method == "HEAD" && std::string_view(route.method) == "GET";
    if (req.method == route.method || head_of_get) {
      req.path_param = std::move(param);
      Response r = route.handler(req, store);
      r.route = route.name;
      return r;
    }
    if (allow.find(route.method) == std::string::npos) {
      if (!allow.empty()) allow += ", ";
      allow += route.method;
      if (std::string_view(route.method) == "GET") allow += ", HEAD";
    }
  }
  if (allow.empty()) return error_response(404, "no such endpoint");
  Response r = error_response(405, "method not allowed; allowed: " + allow);
  r.headers.emplace_back("Allow", allow);
  return r;
}

}  // namespace tdapi
