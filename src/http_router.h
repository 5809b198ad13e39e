// http_router.h: maps method + path onto a handler; 404 and 405 (with Allow) for the rest.
#pragma once

#include "http.h"
#include "store.h"

namespace tdapi {

// Dispatches one request. Path segments are percent-decoded before matching; the {test_id}
// segment is stored in request.path_param. This function can't
// fail: every request gets a Response.
Response route_request(Request& request, Store& store);

}  // namespace tdapi
