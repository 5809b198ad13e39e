// http_router.h: maps method + path onto a handler; 404 and 405 (with Allow) for the rest.
#pragma once

#include "http/http.h"
#include "security/access_control.h"
#include "store/store.h"

namespace tdapi {

// Dispatches one request. Path segments are percent-decoded before matching; the {test_id}
// segment is stored in request.path_param. Every route but /healthz needs an authenticated
// principal when auth is on: a missing, malformed, unknown or revoked token gets 401 with
// `WWW-Authenticate: Bearer` (recorded in the audit trail for routes that serve patient data),
// and request.principal is set for the handler. This function can't fail: every request gets a
// Response.
Response route_request(Request& request, Store& store, Authenticator& auth);

// As above with auth off and the audit trail on (the local mode).
Response route_request(Request& request, Store& store);

}  // namespace tdapi
