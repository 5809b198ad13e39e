// http_router.cpp: the route table.
#include "server/http_router.h"

#include <algorithm>
#include <chrono>
#include <string_view>
#include <vector>

#include "api/api.h"
#include "metrics/metrics.h"

namespace tdapi {

namespace {

// nginx's key check before it reads a batch's body (auth_request): 204 when the request's token
// authenticated (the router checked it before calling this) and the key may write some clinic
// (a write: scope); else 403 with X-Tdapi-Auth: no_write_scope (nginx answers the client its
// JSON 403), recorded as one denied batch, so a key that can never write a batch (metrics,
// audit, read:) cannot make nginx buffer 4 MB bodies. Which clinics the key may write is
// checked after the body, by the batch itself.
Response handle_auth_check(const Request& req, Store& store) {
  bool may_write = req.principal.unrestricted;
  for (const std::string& scope : req.principal.scopes) {
    if (scope.rfind("write:", 0) == 0) may_write = true;
  }
  if (may_write) {
    Response r;
    r.status = 204;
    r.content_type = "application/json";
    return r;
  }
  global_metrics().record_auth_denial(403, DenialReason::kForbidden);
  if (req.audit) {
    AuditEntry a = audit_entry(req, "batch", std::string());
    a.detail = "{\"reason\":\"no_write_scope\",\"body_read\":false}";
    a.outcome = 403;
    Status s = store.append_audit(a);
    if (!s.ok()) return storage_error_response(s);
    global_metrics().record_audit_write();
  }
  Response r = error_response(403, "this access key may not write tests (no write: scope)");
  r.log.reason = "forbidden";
  r.headers.emplace_back("X-Tdapi-Auth", "no_write_scope");
  return r;
}

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
    {"/tests/{test_id}", "PUT", "PUT /tests/{test_id}", handle_correct_test, false, "correct"},
    {"/tests/{test_id}/history", "GET", "GET /tests/{test_id}/history", handle_test_history, false,
     "history"},
    {"/changes", "GET", "GET /changes", handle_changes, false, "changes"},
    {"/changes/search", "POST", "POST /changes/search", handle_search_changes, false, "changes"},
    {"/audit", "GET", "GET /audit", handle_audit, false, "audit_read"},
    {"/healthz", "GET", "GET /healthz", handle_health, true, nullptr},
    // nginx's key check (auth_request) before it reads a request body: 204 for a valid key,
    // else what the request itself would get (401; 403 over the failed-authentication limit).
    // nginx answers a client's own /_auth with 404 (an internal location).
    {"/_auth", "GET", "GET /_auth", handle_auth_check, false, nullptr},
    {"/metrics", "GET", "GET /metrics", handle_metrics, false, nullptr},
    // One node's metrics when several run behind nginx (APP_NODES): nginx sends
    // /metrics/node/K to node K's socket; a node answers only for its own K.
    {"/metrics/node/{test_id}", "GET", "GET /metrics", handle_metrics, false, nullptr},
};

// The 401 for a request without valid credentials, or a 429 when its address is over the limit
// of failed authentications (AccessOptions). Failures are counted (metrics) and tallied per
// address and minute (AuthFailures: one audit entry per address and minute, written by the
// server), never appended to the audit trail one by one: made-up tokens cannot grow it, and a
// wrong secret for a real key id is not recorded under that key.
Response unauthenticated(const Request& req, AuthOutcome why, Authenticator& auth) {
  const char* reason = why == AuthOutcome::kMissing       ? "no_token"
                       : why == AuthOutcome::kMalformed   ? "malformed_token"
                       : why == AuthOutcome::kRevoked     ? "revoked_key"
                       : why == AuthOutcome::kWrongSecret ? "wrong_secret"
                                                          : "unknown_key";
  const auto steady = std::chrono::duration_cast<std::chrono::milliseconds>(
                          std::chrono::steady_clock::now().time_since_epoch())
                          .count();
  const auto wall = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
  // A request without a token is tallied nowhere (it names nobody: logged and counted only),
  // but it takes from the same per-address allowance as a failed token.
  const bool named = why != AuthOutcome::kMissing;
  const bool allowed = auth.failures().note(
      req.remote_addr, reason,
      named && why != AuthOutcome::kMalformed ? std::string_view(req.principal.key_id) : "",
      req.request_id, steady, wall, named);
  if (!allowed) {
    Response r =
        error_response(429, "too many failed authentications from this address; retry later");
    long long per_minute = std::max(1LL, auth.options().failure_rate_per_minute);
    r.headers.emplace_back("Retry-After",
                           std::to_string(std::max(1LL, (60 + per_minute - 1) / per_minute)));
    r.log.key_id = req.principal.key_id;
    r.log.reason = "auth_rate_limited";
    global_metrics().record_auth_denial(429, DenialReason::kAuthRateLimited);
    return r;
  }
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
  // The client is told no more than "invalid": a wrong secret logs and counts as unknown_key.
  r.log.reason = why == AuthOutcome::kWrongSecret ? "unknown_key" : reason;
  global_metrics().record_auth_denial(
      401, why == AuthOutcome::kMissing     ? DenialReason::kNoToken
           : why == AuthOutcome::kMalformed ? DenialReason::kMalformedToken
           : why == AuthOutcome::kRevoked   ? DenialReason::kRevokedKey
                                            : DenialReason::kUnknownKey);
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
      req.audit_reads_durable = auth.options().audit_reads_durable;
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
          Response r = unauthenticated(req, outcome, auth);
          r.route = route.name;
          // nginx's auth_request takes only 2xx, 401 and 403 from the key check: over the
          // limit it gets a 403 that says so, and answers the client 429 (nginx.conf).
          if (route.handler == handle_auth_check && r.status == 429) {
            r.status = 403;
            r.headers.emplace_back("X-Tdapi-Auth", "rate_limited");
          }
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
