// http_router.cpp: the route table.
#include "http_router.h"

#include <string_view>
#include <vector>

#include "api.h"
#include "metrics.h"

namespace tdapi {

namespace {

using Handler = Response (*)(const Request&, Store&);

struct Route {
  const char* pattern;  // segments; "{test_id}" matches any one non-empty segment
  const char* method;
  const char* name;  // for metrics
  Handler handler;
  bool open;                 // answered without authentication (says only up or down)
  const char* audit_action;  // patient data: the audit trail's action; null otherwise
};

const Route kRoutes[] = {
    {"/tests", "GET", "GET /tests", handle_list_tests, false, "list"},
    {"/tests", "POST", "POST /tests", handle_create_test, false, "create"},
    {"/tests/batch", "POST", "POST /tests/batch", handle_create_batch, false, "batch"},
    {"/tests/search", "POST", "POST /tests/search", handle_search_tests, false, "search"},
    {"/tests/{test_id}", "GET", "GET /tests/{test_id}", handle_get_test, false, "get"},
    {"/audit", "GET", "GET /audit", handle_audit, false, "audit_read"},
    {"/healthz", "GET", "GET /healthz", handle_health, true, nullptr},
    {"/metrics", "GET", "GET /metrics", handle_metrics, false, nullptr},
    // One node's metrics when several run behind nginx (APP_NODES): nginx sends
    // /metrics/node/K to node K's socket; a node answers only for its own K.
    {"/metrics/node/{test_id}", "GET", "GET /metrics", handle_metrics, false, nullptr},
};

// The 401 for a request without valid credentials; recorded in the audit trail when the route
// serves patient data.
Response unauthenticated(const Request& req, const Route& route, AuthOutcome why, Store& store) {
  const char* message = why == AuthOutcome::kMissing   ? "authentication required: send "
                                                         "Authorization: Bearer <token>"
                        : why == AuthOutcome::kRevoked ? "the access key has been revoked"
                                                       : "invalid access token";
  Response r = error_response(401, message);
  r.headers.emplace_back("WWW-Authenticate", why == AuthOutcome::kMissing
                                                 ? "Bearer realm=\"testdata-api\""
                                                 : "Bearer realm=\"testdata-api\", "
                                                   "error=\"invalid_token\"");
  r.log.key_id = req.principal.key_id;
  r.log.reason = why == AuthOutcome::kMissing     ? "no_token"
                 : why == AuthOutcome::kMalformed ? "malformed_token"
                 : why == AuthOutcome::kRevoked   ? "revoked_key"
                                                  : "unknown_key";
  global_metrics().record_auth_denial(
      401, why == AuthOutcome::kMissing     ? DenialReason::kNoToken
           : why == AuthOutcome::kMalformed ? DenialReason::kMalformedToken
           : why == AuthOutcome::kRevoked   ? DenialReason::kRevokedKey
                                            : DenialReason::kUnknownKey);
  // A token that names a key is recorded (who tried, with what). Requests with no token or a
  // malformed one name nobody: they are logged and counted, not written to the audit trail,
  // so anonymous traffic cannot grow it (nginx rate-limits them per address besides).
  const bool names_a_key = why == AuthOutcome::kUnknownKey || why == AuthOutcome::kRevoked;
  if (route.audit_action && req.audit && names_a_key) {
    AuditEntry a = audit_entry(req, route.audit_action, "");
    a.outcome = 401;
    a.detail = "{\"denied\":\"" + r.log.reason + "\"}";
    Status s = store.append_audit(a);
    if (!s.ok()) return storage_error_response(s);
  }
  return r;
}

// Splits a raw path on '/' and percent-decodes each segment (so %2F stays inside a segment).
// False for a malformed escape, and for a NUL (%00) in any segment: a C string (libpq's) would
// end there, and name something else than the segment does.
bool decode_segments(const std::string& raw, std::vector<std::string>& out) {
  out.clear();
  if (raw.empty() || raw[0] != '/') return false;
  size_t pos = 1;
  for (;;) {
    size_t slash = raw.find('/', pos);
    std::string seg;
    if (!percent_decode(std::string_view(raw).substr(pos, slash - pos), false, seg)) return false;
    if (seg.find('\0') != std::string::npos) return false;
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
  static Authenticator local_mode(AccessOptions{});
  return route_request(req, store, local_mode);
}

Response route_request(Request& req, Store& store, Authenticator& auth) {
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
      req.audit = auth.options().audit;
      if (!route.open) {
        Status storage_error;
        AuthOutcome outcome =
            auth.authenticate(req.authorization, store, req.principal, storage_error);
        if (outcome == AuthOutcome::kStorageError) {
          Response r = storage_error_response(storage_error);
          r.route = route.name;
          return r;
        }
        if (outcome != AuthOutcome::kOk) {
          Response r = unauthenticated(req, route, outcome, store);
          r.route = route.name;
          return r;
        }
      }
      Response r = route.handler(req, store);
      r.route = route.name;
      if (r.log.key_id.empty() && !req.principal.unrestricted) r.log.key_id = req.principal.key_id;
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
