// http_router.cpp: the route table.
#include "http_router.h"

#include "api.h"

namespace tdapi {

namespace {

using Handler = Response (*)(const Request&, Store&);

struct Route {
  const char* path;
  const char* method;
  Handler handler;
};

const Route kRoutes[] = {
    {"/tests", "GET", handle_list_tests},
    {"/tests", "POST", handle_create_test},
    {"/healthz", "GET", handle_health},
};

}  // namespace

Response route_request(const Request& req, Store& store) {
  std::string path;
  if (!percent_decode(req.path, false, path)) return error_response(400, "malformed path");
  std::string allow;
  for (const Route& route : kRoutes) {
    if (path != route.path) continue;
    if (req.method == route.method) return route.handler(req, store);
    if (!allow.empty()) allow += ", ";
    allow += route.method;
  }
  if (allow.empty()) return error_response(404, "no such endpoint");
  Response r = error_response(405, "method not allowed; allowed: " + allow);
  r.headers.emplace_back("Allow", allow);
  return r;
}

}  // namespace tdapi
