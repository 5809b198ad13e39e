// api.cpp: the endpoint handlers.
#include "api.h"

#include "json.h"
#include "validate.h"

namespace tdapi {

namespace {

// Checks what every JSON-body endpoint needs before parsing: size, media type, completeness.
// Returns true and leaves `error` alone when the body can be parsed.
bool check_json_body(const Request& req, Response& error) {
  if (req.body_state == BodyState::kTooLarge) {
    error = error_response(413, "request body is larger than " + std::to_string(kMaxBodyBytes) +
                                    " bytes");
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

void append_test_json(std::string& out, const StoredTestView& t) {
  JsonWriter w(out);
  w.begin_object();
  w.field("test_id", t.test_id);
  w.field("patient_id", t.patient_id);
  w.field("clinic_id", t.clinic_id);
  w.field("test_type", t.test_type);
  w.field("result", t.result);
  w.field("created_at", t.created_at);
  w.end_object();
}

}  // namespace

Response handle_create_test(const Request& req, Store& store) {
  Response error;
  if (!check_json_body(req, error)) return error;
  RecordValidation v = validate_test_record(req.body);
  if (!v.ok) {
    return v.errors.empty() ? error_response(400, v.message)
                            : field_errors_response(v.message, v.errors);
  }
  WriteOutcome w = store.insert(v.record);
  Response r;
  r.log.test_id = v.record.test_id;
  r.log.clinic_id = v.record.clinic_id;
  r.log.txn_id = w.txn_id;
  if (w.status.ok()) {
    r.status = 201;
    r.headers.emplace_back("Location", "/tests/" + percent_encode(v.record.test_id));
    JsonWriter j(r.body);
    j.begin_object();
    j.field("status", "success");
    j.field("test_id", v.record.test_id);
    j.end_object();
    r.log.txn = "commit";
    return r;
  }
  Response e = error_response(http_status_for(w.status.code()), client_message_for(w.status.code()));
  e.log = std::move(r.log);
  e.log.txn = "rollback";
  e.log.reason = w.status.name();
  return e;
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

Response handle_list_tests(const Request& req, Store& store) {
  QueryParams params;
  std::string problem;
  if (!parse_query(req.query, params, problem)) return error_response(400, problem);
  const std::string* clinic_id = nullptr;
  for (const auto& [name, value] : params) {
    if (name != "clinic_id") return error_response(400, "unknown query parameter: " + name);
    if (clinic_id) return error_response(400, "clinic_id must be given once");
    clinic_id = &value;
  }
  if (!clinic_id) return error_response(400, "clinic_id is required");
  if (is_blank(*clinic_id)) return error_response(400, "clinic_id must not be empty");

  Response r;
  r.log.clinic_id = *clinic_id;
  r.stream = [&store, clinic = *clinic_id](BodyWriter& out, LogFields& log) -> Status {
    std::string buf;
    buf.reserve(kStreamChunkBytes + 4096);
    buf += "{\"status\":\"success\",\"clinic_id\":";
    append_json_string(buf, clinic);
    buf += ",\"tests\":[";
    long long count = 0;
    bool client_gone = false;
    Status s = store.list_by_clinic(clinic, [&](const StoredTestView& t) {
      if (count > 0) buf += ',';
      append_test_json(buf, t);
      ++count;
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
    buf += '}';
    out.write(buf);
    return Status::Ok();
  };
  return r;
}

}  // namespace tdapi
