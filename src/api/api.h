// api.h: one plain function per endpoint, (Request, Store) -> Response. No FastCGI here.
#pragma once

#include "http/http.h"
#include "store/store.h"
#include "store/test_record.h"

namespace tdapi {

// POST /tests: 201 + Location, 409, 400 (every field problem), 413, 415 (Content-Type not JSON,
// or a Content-Encoding other than identity), or 5xx from storage.
Response handle_create_test(const Request& request, Store& store);

// POST /tests/batch: a JSON array of 1..kMaxBatchRecords records, stored all or nothing.
// 201 with the stored ids; 400 with every invalid item's index and field errors; 409 naming
// every id that exists already or appears twice; 413, 415, 5xx as for one record.
Response handle_create_batch(const Request& request, Store& store);

// GET /tests?clinic_id=[&patient_id=][&test_type=][&limit=][&cursor=]: the clinic's tests,
// oldest first, streamed in chunks. With limit or cursor the answer carries next_cursor
// (null on the last page). 400 for a missing/empty clinic_id, a repeated or unknown parameter,
// a bad limit, a malformed or tampered cursor, a malformed query.
Response handle_list_tests(const Request& request, Store& store);

// POST /tests/search with {"clinic_id":…[,"patient_id":…][,"test_type":…][,"limit":N]
// [,"cursor":…]}: GET /tests with the filters in the body (FHIR's _search), so patient ids
// stay out of URLs. Same listing, answers and paging as GET /tests (one shared function); the
// body is strict: unknown fields, repeated keys and wrong types are 400; 413, 415 as for POST.
Response handle_search_tests(const Request& request, Store& store);

// GET /tests/{test_id}: 200 {"status":"success","test":{…}} with ETag: W/"<version>", 304 (no
// body) when If-None-Match names the current version (or is *), or 404.
Response handle_get_test(const Request& request, Store& store);

// PUT /tests/{test_id}: a correction. Body: the five fields, status (final, amended, corrected,
// entered-in-error) and reason; If-Match: W/"<version>" required. 200 {"status":"success",
// "test":{…}} with the new ETag after COMMIT; 400 (body, a test_id other than the path's, a
// malformed If-Match, a clinic_id or patient_id that differs from the stored one, a retracted
// test); 403; 404 (unknown, or another clinic's); 412 with current_version when If-Match is not
// the current version; 413, 415, 428 without If-Match; 5xx from storage. Never 409.
Response handle_correct_test(const Request& request, Store& store);

// GET /tests/{test_id}/history[?limit=&cursor=]: every version, newest first:
// {"status":"success","test_id":…,"versions":[…]}, with next_cursor when paged. 404 as GET.
Response handle_test_history(const Request& request, Store& store);

// GET /changes?clinic_id=&since=&limit=&wait=: the clinic's creates, corrections and
// retractions in commit order after `since`, {"status":"success","changes":[…],"next":…}.
// With wait (1..30 s) and nothing new, the answer waits (Response::wait) for a change.
Response handle_changes(const Request& request, Store& store);

// POST /changes/search: GET /changes with the fields in a strict JSON body.
Response handle_search_changes(const Request& request, Store& store);

// GET /healthz: 200 {"status":"ok"} when the database answers a real query and no corruption
// has been seen since start; otherwise 503 with the error shape.
Response handle_health(const Request& request, Store& store);

// GET /audit?since=&until=&clinic_id=&limit=&cursor=: one page of the audit trail, oldest first
// (scope `audit`): {"status":"success","entries":[…],"count":N,"next_cursor":…}. limit 1..1000
// (default 100); since/until compare with the entries' UTC timestamps (until exclusive).
Response handle_audit(const Request& request, Store& store);

// An audit entry for this request (request id, key id, action, clinic); the caller sets
// detail and, for reads and denials, outcome.
AuditEntry audit_entry(const Request& request, const char* action, std::string clinic_id);

// GET /metrics: Prometheus text format (see metrics.h).
Response handle_metrics(const Request& request, Store& store);

// Size of the chunks a streamed listing is written in.
constexpr size_t kStreamChunkBytes = 32 * 1024;
// Batch limits: records per batch, and body bytes (nginx's limit for /tests/batch too).
constexpr size_t kMaxBatchRecords = 1000;
constexpr size_t kMaxBatchBodyBytes = kMaxRequestBodyBytes;
// The most a page may hold.
constexpr long long kMaxPageLimit = 1000;
// The change feed: the page size when none is given, and the longest wait, in seconds.
constexpr long long kDefaultFeedLimit = 100;
constexpr long long kMaxFeedWaitSeconds = 30;

}  // namespace tdapi
