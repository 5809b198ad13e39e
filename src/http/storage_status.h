// storage_status.h: what a storage outcome (store/status.h) means to an HTTP client.
#pragma once

#include "store/status.h"

namespace tdapi {

// The HTTP status for a storage outcome: ok 200, duplicate 409, not_found 404, full 507,
// internal 500, every other (busy, corrupt, read_only, io_error, unavailable,
// outcome_unknown) 503.
int http_status_for(StatusCode code);

// The client-facing message for an error outcome (no file names, no internals).
const char* client_message_for(StatusCode code);

}  // namespace tdapi
