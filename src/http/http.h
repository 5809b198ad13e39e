// http.h: the request and response values handlers work on, independent of FastCGI.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/log.h"
#include "http/storage_status.h"
#include "security/auth.h"
#include "store/status.h"

namespace tdapi {

// Whether the body nginx passed is whole.
enum class BodyState {
  kComplete,   // body holds CONTENT_LENGTH bytes
  kTooLarge,   // CONTENT_LENGTH is over the app's limit; body was not read
  kTruncated,  // fewer bytes arrived than CONTENT_LENGTH announced
};

struct Request {
  std::string method;        // "GET", "POST", ...
  std::string path;          // raw (still percent-encoded) path, without the query string
  std::string query;         // raw query string, without '?'
  std::string content_type;  // as sent, may be empty
  // Content-Encoding as sent, may be empty; handlers read only identity bodies (else 415).
  std::string content_encoding;
  std::string body;
  size_t content_length = 0;  // as announced by the client (CONTENT_LENGTH)
  BodyState body_state = BodyState::kComplete;
  std::string request_id;     // nginx's $request_id
  std::string path_param;     // the decoded {test_id} segment, set by the router
  std::string authorization;  // the Authorization header, as sent
  std::string remote_addr;    // the client's address as nginx saw it ($remote_addr)
  std::string if_match;       // the If-Match header, as sent (empty: none)
  std::string if_none_match;  // the If-None-Match header, as sent (empty: none)
  // X-Commit-Position as sent (empty: none): a read that must see the write that answered it
  // (store/read_after.h).
  std::string commit_position;
  // Set by the router: who is asking (unrestricted `anonymous` with auth off), and whether
  // accesses to patient data are recorded in the audit trail, and whether a read's entry is on
  // disk before the answer (else committed without waiting for the disk: AUDIT_READS).
  Principal principal;
  bool audit = false;
  bool audit_reads_durable = false;
};

// Receives a streamed response body chunk by chunk. write returns false when the client is gone.
class BodyWriter {
 public:
  virtual ~BodyWriter() = default;
  virtual bool write(std::string_view chunk) = 0;
};

struct Response;

// An answer that waits for a change (a long poll: GET /changes with wait). The server holds the
// request without a worker thread (fcgi_server.cpp) and, from one waiter thread, calls poll when
// the store's latest change moved past `seen`, or with final set once `deadline` passed (or the
// server stops, or no more requests may wait). poll returns the answer, or nullopt when there is
// still nothing for this request (never with final set). Requests with the same `key` (the same
// question: clinic, position, page size) would read the same page: after one of them found
// nothing, the others are not polled again for the same latest change.
struct DeferredResponse {
  std::chrono::steady_clock::time_point deadline;
  long long seen = 0;  // the store's latest change when the request last looked
  std::string key;
  std::function<std::optional<Response>(bool final)> poll;
};

struct Response {
  int status = 200;
  std::string content_type = "application/json";
  std::vector<std::pair<std::string, std::string>> headers;  // besides Content-Type
  std::string body;                                          // used when stream is empty
  // When set, the body is produced by calling stream, which writes chunks and may add to the
  // log fields. It returns the storage outcome. The head goes out just before the first chunk,
  // so a failure before any chunk still becomes a proper error response; a failure after it
  // aborts the response (ResponseOutput::abort), so the client sees a failed transfer rather
  // than a short body, and is logged.
  std::function<Status(BodyWriter&, LogFields&)> stream;
  // Set by send_response when the response was aborted after its head went out: `status` is
  // what the head said, but the request failed (log it as an error).
  bool aborted = false;
  // When set, there is no answer yet: see DeferredResponse. The other fields are unused.
  std::shared_ptr<DeferredResponse> wait;
  LogFields log;                    // ids and transaction outcome for this request's log line
  std::string route = "unmatched";  // the route that answered ("GET /tests"), for metrics
};

// Where a response is written: implemented by the FastCGI adapter and by tests.
class ResponseOutput {
 public:
  virtual ~ResponseOutput() = default;
  // Writes the status line and headers (Content-Type from the response).
  virtual bool write_head(const Response& response) = 0;
  // Writes body bytes; false when the client is gone.
  virtual bool write_body(std::string_view chunk) = 0;
  // Ends the response as a failure after its head was sent: the client must see the transfer
  // break (a connection closed before the body's end), never a complete-looking short body.
  // Nothing may be written afterwards.
  virtual void abort() = 0;
};

// Sends `response` to `out`: head then body, or for a streamed body, head then chunks. When a
// stream fails before its first chunk, the matching JSON error is sent instead; when it fails
// after, the response is aborted (out.abort(), response.aborted, log reason
// "response_aborted"). Afterwards response.status and response.log describe what was sent.
void send_response(Response& response, ResponseOutput& out);

// {"status":"error","message":message} with the given HTTP status.
Response error_response(int status, std::string_view message);

// The JSON error for a storage outcome that is not ok: its HTTP status and client message
// (status.h), with the outcome's name as the log reason.
Response storage_error_response(const Status& status);

// One problem with one field of a submitted record.
struct FieldError {
  std::string field;
  std::string message;
  int index = -1;  // position of the record in a batch; -1 for a single record
};

// {"status":"error","message":message,"errors":[{"field":…,"message":…},…]}, HTTP 400.
// Errors of batch items also carry "index".
Response field_errors_response(std::string_view message, const std::vector<FieldError>& errors);

// The reason phrase for an HTTP status ("Created" for 201); "Unknown" for codes not used here.
const char* reason_phrase(int status);

// Percent-decodes `in` into `out`. With plus_as_space, '+' becomes ' ' (query strings).
// Returns false on a malformed escape ('%' not followed by two hex digits).
bool percent_decode(std::string_view in, bool plus_as_space, std::string& out);

// Percent-encodes everything but RFC 3986 unreserved characters (for Location headers).
std::string percent_encode(std::string_view in);

using QueryParams = std::vector<std::pair<std::string, std::string>>;

// Splits a raw query string on '&' and '=', decoding names and values ('+' is space).
// Empty pieces ("a=1&&b=2", a trailing '&') are skipped. Returns false, with `error` set,
// for a malformed escape or a name/value that is not valid UTF-8.
bool parse_query(std::string_view raw, QueryParams& out, std::string& error);

// True when the media type (before any ';' parameters) is application/json, ignoring case.
bool is_json_content_type(std::string_view content_type);

}  // namespace tdapi
