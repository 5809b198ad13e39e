// api.cpp: the endpoint handlers.
#include "api.h"

#include <algorithm>
#include <set>

#include "cursor.h"
#include "json.h"
#include "metrics.h"
#include "validate.h"

namespace tdapi {

namespace {

// Checks what every JSON-body endpoint needs before parsing: size, media type, completeness.
// Returns true when the body can be parsed; otherwise sets error.
bool check_json_body(const Request& req, size_t limit, Response& error) {
  if (req.body_state == BodyState::kTooLarge || req.content_length > limit ||
      req.body.size() > limit) {
    error = error_response(413, "request body is larger than " + std::to_string(limit) + " bytes");
    return false;
  }
  if (!is_json_content_type(req.content_type)) {
    error = error_response(415, "Content-Type must be application/json");
    return false;
  }
  if (req.body_state == BodyState::kTruncated) {
    error = error_response(400, "request body is shorter than its Content-Length");
    return false;
  }
  return true;
}

bool is_blank(std::string_view s) {
  for (char c : s) {
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r' && c != '\f' && c != '\v') return false;
  }
  return true;
}

// A write that was rolled back: the storage error, logged with the request's ids.
Response rolled_back(const Status& s, LogFields log) {
  Response e = storage_error_response(s);
  log.reason = std::move(e.log.reason);
  log.txn = "rollback";
  e.log = std::move(log);
  return e;
}

// 400 for a body that failed validation, with the field errors when there are any.
Response invalid_body(const std::string& message, const std::vector<FieldError>& errors) {
  return errors.empty() ? error_response(400, message) : field_errors_response(message, errors);
}

// Parses limit: decimal digits only, 1..kMaxPageLimit.
bool parse_limit(const std::string& text, long long& out) {
  if (text.empty() || text.size() > 4) return false;
  long long v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
  }
  out = v;
  return v >= 1 && v <= kMaxPageLimit;
}

}  // namespace

Response handle_create_test(const Request& req, Store& store) {
  Response error;
  if (!check_json_body(req, kMaxBodyBytes, error)) return error;
  RecordValidation v = validate_test_record(req.body);
  if (!v.ok) return invalid_body(v.message, v.errors);
  WriteOutcome w = store.insert(v.record);
  LogFields log;
  log.test_id = v.record.test_id;
  log.clinic_id = v.record.clinic_id;
  log.txn_id = w.txn_id;
  if (!w.status.ok()) return rolled_back(w.status, std::move(log));
  Response r;
  r.status = 201;
  r.headers.emplace_back("Location", "/tests/" + percent_encode(v.record.test_id));
  JsonWriter j(r.body);
  j.begin_object();
  j.field("status", "success");
  j.field("test_id", v.record.test_id);
  j.end_object();
  r.log = std::move(log);
  r.log.txn = "commit";
  return r;
}

Response handle_create_batch(const Request& req, Store& store) {
  Response error;
  if (!check_json_body(req, kMaxBatchBodyBytes, error)) return error;
  BatchValidation v = validate_test_batch(req.body, kMaxBatchRecords);
  if (!v.ok) return invalid_body(v.message, v.errors);
  WriteOutcome w = store.insert_all(v.records);
  LogFields log;
  log.count = static_cast<long long>(v.records.size());
  log.txn_id = w.txn_id;
  if (w.status.code() == StatusCode::kDuplicate) {
    std::vector<std::string> ids;
    std::set<std::string> seen;
    for (const std::string& id : w.duplicate_ids) {
      if (seen.insert(id).second) ids.push_back(id);
    }
    Response r = rolled_back(w.status, std::move(log));
    r.body.clear();
    JsonWriter j(r.body);
    j.begin_object();
    j.field("status", "error");
    j.field("message", "test_ids already exist or appear twice in the batch; nothing was stored");
    j.key("test_ids");
    j.begin_array();
    for (const std::string& id : ids) j.string(id);
    j.end_array();
    j.end_object();
    return r;
  }
  if (!w.status.ok()) return rolled_back(w.status, std::move(log));
  Response r;
  r.status = 201;
  JsonWriter j(r.body);
  j.begin_object();
  j.field("status", "success");
  j.field("count", static_cast<long long>(v.records.size()));
  j.key("test_ids");
  j.begin_array();
  for (const TestRecord& rec : v.records) j.string(rec.test_id);
  j.end_array();
  j.end_object();
  r.log = std::move(log);
  r.log.txn = "commit";
  return r;
}

Response handle_list_tests(const Request& req, Store& store) {
  QueryParams params;
  std::string problem;
  if (!parse_query(req.query, params, problem)) return error_response(400, problem);
  ListQuery q;
  const std::string* clinic = nullptr;
  const std::string* cursor = nullptr;
  const std::string* limit_text = nullptr;
  std::set<std::string_view> given;
  for (const auto& [name, value] : params) {
    const std::string** slot = nullptr;
    std::optional<std::string>* filter = nullptr;
    if (name == "clinic_id")
      slot = &clinic;
    else if (name == "cursor")
      slot = &cursor;
    else if (name == "limit")
      slot = &limit_text;
    else if (name == "patient_id")
      filter = &q.patient_id;
    else if (name == "test_type")
      filter = &q.test_type;
    else
      return error_response(400, "unknown query parameter: " + name);
    if (!given.insert(name).second) return error_response(400, name + " must be given once");
    if (filter) {
      if (is_blank(value)) return error_response(400, name + " must not be empty");
      *filter = value;
    } else {
      *slot = &value;
    }
  }
  if (!clinic) return error_response(400, "clinic_id is required");
  if (is_blank(*clinic)) return error_response(400, "clinic_id must not be empty");
  q.clinic_id = *clinic;
  long long page = -1;
  if (limit_text && !parse_limit(*limit_text, page)) {
    return error_response(400,
                          "limit must be an integer from 1 to " + std::to_string(kMaxPageLimit));
  }
  if (cursor) {
    std::optional<long long> after = decode_cursor(*cursor, q, store.instance_secret());
    if (!after) return error_response(400, "cursor is malformed, altered, or for another query");
    q.after_seq = *after;
  }
  const bool paged = limit_text || cursor;
  q.limit = page > 0 ? page + 1 : -1;  // one more than the page: is there a next one?

  Response r;
  r.log.clinic_id = q.clinic_id;
  r.stream = [&store, q = std::move(q), page, paged](BodyWriter& out, LogFields& log) -> Status {
    std::string buf;
    buf.reserve(kStreamChunkBytes + 4096);
    buf += "{\"status\":\"success\",\"clinic_id\":";
    append_json_string(buf, q.clinic_id);
    buf += ",\"tests\":[";
    long long count = 0;
    long long last_seq = q.after_seq;
    bool more = false;
    bool client_gone = false;
    Status s = store.list_tests(q, [&](std::string_view json, long long seq) {
      if (page > 0 && count == page) {
        more = true;  // the extra row: only says a next page exists
        return false;
      }
      if (count > 0) buf += ',';
      buf.append(json);
      ++count;
      last_seq = seq;
      if (buf.size() >= kStreamChunkBytes) {
        client_gone = !out.write(buf);
        buf.clear();
      }
      return !client_gone;
    });
    log.count = count;
    if (!s.ok()) return s;
    if (client_gone) {
      log.detail = "client went away during the listing";
      return Status::Ok();
    }
    buf += "],\"count\":";
    buf += std::to_string(count);
    if (paged) {
      buf += ",\"next_cursor\":";
      if (more) {
        append_json_string(buf, encode_cursor(last_seq, q, store.instance_secret()));
      } else {
        buf += "null";
      }
    }
    buf += '}';
    out.write(buf);
    return Status::Ok();
  };
  return r;
}

Response handle_get_test(const Request& req, Store& store) {
  std::string json;
  Status s = store.get_test(req.path_param, json);
  if (s.code() == StatusCode::kNotFound) {
    Response r = error_response(404, "test not found");
    r.log.test_id = req.path_param;
    return r;
  }
  if (!s.ok()) return storage_error_response(s);
  Response r;
  r.body.reserve(json.size() + 32);
  r.body = "{\"status\":\"success\",\"test\":";
  r.body += json;
  r.body += '}';
  r.log.test_id = req.path_param;
  return r;
}

Response handle_health(const Request&, Store& store) {
  Status s = store.check_health();
  if (!s.ok()) {
    Response r = error_response(503, client_message_for(s.code()));
    r.log.reason = s.name();
    return r;
  }
  Response r;
  r.body = R"({"status":"ok"})";
  return r;
}

Response handle_metrics(const Request&, Store& store) {
  Response r;
  r.content_type = "text/plain; version=0.0.4; charset=utf-8";
  r.body = global_metrics().render(store.stats());
  return r;
}

}  // namespace tdapi
