// api.h: one plain function per endpoint, (Request, Store) -> Response. No FastCGI here.
#pragma once

#include "http.h"
#include "store.h"

namespace tdapi {

// POST /tests: 201 + Location, 409, 400 (every field problem), 413, 415, or 5xx from storage.
Response handle_create_test(const Request& request, Store& store);

// GET /tests?clinic_id=: every test of the clinic, oldest first, streamed in chunks.
// 400 for a missing/empty clinic_id, a repeated or unknown parameter, a malformed query.
Response handle_list_tests(const Request& request, Store& store);

// GET /healthz: 200 {"status":"ok"} when the database answers a real query and no corruption
// has been seen since start; otherwise 503 with the error shape.
Response handle_health(const Request& request, Store& store);

// Size of the chunks a streamed listing is written in.
constexpr size_t kStreamChunkBytes = 32 * 1024;

}  // namespace tdapi
