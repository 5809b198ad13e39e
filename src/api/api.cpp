// api.cpp: the endpoint handlers.
#include "api/api.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <optional>
#include <set>

#include "api/validate.h"
#include "base/json.h"
#include "metrics/metrics.h"
#include "security/cursor.h"

namespace tdapi {

namespace {

// True for no Content-Encoding or "identity" (any case, blanks around): the only encodings the
// app reads. A compressed body would otherwise be parsed as if it were the JSON itself.
bool is_identity_encoding(std::string_view encoding) {
  while (!encoding.empty() && (encoding.front() == ' ' || encoding.front() == '\t')) {
    encoding.remove_prefix(1);
  }
  while (!encoding.empty() && (encoding.back() == ' ' || encoding.back() == '\t')) {
    encoding.remove_suffix(1);
  }
  if (encoding.empty()) return true;
  static constexpr std::string_view kIdentity = "identity";
  if (encoding.size() != kIdentity.size()) return false;
  for (size_t i = 0; i < kIdentity.size(); ++i) {
    if ((encoding[i] | 0x20) != kIdentity[i]) return false;
  }
  return true;
}

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
  if (!is_identity_encoding(req.content_encoding)) {
    error = error_response(415, "Content-Encoding is not supported; send the body uncompressed");
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

// Records an access in the audit trail (when the audit trail is on): committed before the answer,
// durably for a write's request (a denied one here) and as AUDIT_READS says for a read's. Ok when
// done.
Status record_access(const Request& req, Store& store, AuditEntry& entry) {
  if (!req.audit) return Status::Ok();
  const bool durable = req.audit_reads_durable || req.method == "POST";
  Status s =
      store.append_audit(entry, durable ? AuditDurability::kDurable : AuditDurability::kCrashSafe);
  if (s.ok()) global_metrics().record_audit_write();
  return s;
}

// 403 for a key without the scope, recorded in the audit trail with that outcome as exactly one
// entry, whatever the request touched (its detail bounded by the caller); nothing was read or
// written.
Response forbidden(const Request& req, Store& store, const char* action, const std::string& clinic,
                   std::string detail, std::string_view message) {
  global_metrics().record_auth_denial(403, DenialReason::kForbidden);
  AuditEntry a = audit_entry(req, action, clinic);
  a.detail = std::move(detail);
  a.outcome = 403;
  Status s = record_access(req, store, a);
  if (!s.ok()) return storage_error_response(s);
  Response r = error_response(403, message);
  r.log.reason = "forbidden";
  r.log.clinic_id = clinic;
  return r;
}

// How many ids or clinics a denied request's audit entry and answer name; the rest are counted.
constexpr size_t kMaxNamedInDenial = 5;

// The detail of a denied batch's one audit entry: the first few test ids, clinics and denied
// clinics, and how many there are of each, so that its size does not grow with the batch.
std::string denied_batch_detail(const std::vector<TestRecord>& records,
                                const std::set<std::string>& clinics,
                                const std::vector<std::string>& denied) {
  std::string out;
  JsonWriter j(out);
  j.begin_object();
  j.key("test_ids");
  j.begin_array();
  for (size_t i = 0; i < records.size() && i < kMaxNamedInDenial; ++i) j.string(records[i].test_id);
  j.end_array();
  j.field("test_count", static_cast<long long>(records.size()));
  j.key("clinics");
  j.begin_array();
  size_t named = 0;
  for (auto c = clinics.begin(); c != clinics.end() && named < kMaxNamedInDenial; ++c, ++named) {
    j.string(*c);
  }
  j.end_array();
  j.field("clinic_count", static_cast<long long>(clinics.size()));
  j.key("denied");
  j.begin_array();
  for (size_t i = 0; i < denied.size() && i < kMaxNamedInDenial; ++i) j.string(denied[i]);
  j.end_array();
  j.field("denied_count", static_cast<long long>(denied.size()));
  j.end_object();
  return out;
}

// {"test_ids":[…]}: the detail of a write's audit entry, for the records of one clinic (all
// records when clinic is null).
std::string written_detail(const std::vector<TestRecord>& records, const std::string* clinic) {
  std::string out;
  JsonWriter j(out);
  j.begin_object();
  j.key("test_ids");
  j.begin_array();
  for (const TestRecord& r : records) {
    if (!clinic || r.clinic_id == *clinic) j.string(r.test_id);
  }
  j.end_array();
  j.end_object();
  return out;
}

// The detail of a listing's audit entry: its filters and page.
std::string listing_detail(const ListQuery& q, long long page) {
  std::string out;
  JsonWriter j(out);
  j.begin_object();
  if (q.patient_id) j.field("patient_id", *q.patient_id);
  if (q.test_type) j.field("test_type", *q.test_type);
  if (page > 0) j.field("limit", page);
  if (q.after_seq > 0) j.field("after_seq", q.after_seq);
  j.end_object();
  return out;
}

}  // namespace

AuditEntry audit_entry(const Request& req, const char* action, std::string clinic_id) {
  AuditEntry a;
  a.request_id = req.request_id;
  a.key_id = req.principal.key_id;
  a.action = action;
  a.clinic_id = std::move(clinic_id);
  return a;
}

Response handle_create_test(const Request& req, Store& store) {
  Response error;
  if (!check_json_body(req, kMaxBodyBytes, error)) return error;
  RecordValidation v = validate_test_record(req.body);
  if (!v.ok) return invalid_body(v.message, v.errors);
  std::string detail = written_detail({v.record}, nullptr);
  if (!req.principal.may(Access::kWrite, v.record.clinic_id)) {
    return forbidden(req, store, "create", v.record.clinic_id, std::move(detail),
                     "this access key may not write tests of clinic " + v.record.clinic_id);
  }
  AuditEntry audit = audit_entry(req, "create", v.record.clinic_id);
  audit.detail = std::move(detail);
  WriteOutcome w = store.insert(v.record, req.audit ? &audit : nullptr);
  if (req.audit && w.status.ok()) global_metrics().record_audit_write();
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
  std::set<std::string> clinics;
  for (const TestRecord& rec : v.records) clinics.insert(rec.clinic_id);
  std::vector<std::string> denied;
  for (const std::string& c : clinics) {
    if (!req.principal.may(Access::kWrite, c)) denied.push_back(c);
  }
  if (!denied.empty()) {
    // One entry, whatever the batch's size: on the denied clinic when there is one, else on none
    // (its detail names the first few). The answer names the first few too.
    std::string names;
    for (size_t i = 0; i < denied.size() && i < kMaxNamedInDenial; ++i) {
      names += (i ? ", " : "") + denied[i];
    }
    if (denied.size() > kMaxNamedInDenial) {
      names += " and " + std::to_string(denied.size() - kMaxNamedInDenial) + " more";
    }
    return forbidden(
        req, store, "batch", denied.size() == 1 ? denied[0] : std::string(),
        denied_batch_detail(v.records, clinics, denied),
        "this access key may not write tests of clinic(s) " + names + "; nothing was stored");
  }
  // One audit entry per clinic the batch touches, naming that clinic's test ids, so the trail
  // of each clinic is complete.
  std::vector<AuditEntry> audits;
  for (const std::string& c : clinics) {
    AuditEntry a = audit_entry(req, "batch", c);
    a.detail = written_detail(v.records, &c);
    audits.push_back(std::move(a));
  }
  WriteOutcome w = store.insert_all(v.records, req.audit ? &audits : nullptr);
  if (req.audit && w.status.ok()) {
    for (size_t i = 0; i < audits.size(); ++i) global_metrics().record_audit_write();
  }
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

namespace {

// Parses limit text: decimal digits only. Returns a value outside 1..kMaxPageLimit for anything
// else, so the shared range check answers it.
long long parse_limit_text(const std::string& text) {
  if (text.empty() || text.size() > 4) return 0;
  long long v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return 0;
    v = v * 10 + (c - '0');
  }
  return v;
}

// A listing request as either parser (GET /tests query, POST /tests/search body) found it;
// list_tests_response checks the values, so both answer the same problems alike.
struct ListRequest {
  std::optional<std::string> clinic_id;
  std::optional<std::string> patient_id;
  std::optional<std::string> test_type;
  std::optional<std::string> cursor;
  std::optional<long long> limit;  // outside 1..kMaxPageLimit when the given value was not one
};

// Where a listing parameter given as text goes (both parsers share the names); null for limit
// (a number) and for unknown names.
std::optional<std::string>* text_slot(ListRequest& in, std::string_view name) {
  if (name == "clinic_id") return &in.clinic_id;
  if (name == "patient_id") return &in.patient_id;
  if (name == "test_type") return &in.test_type;
  if (name == "cursor") return &in.cursor;
  return nullptr;
}

// The listing both GET /tests and POST /tests/search answer: 400 for a bad value, else the
// clinic's tests streamed oldest first, paged when limit or cursor is given.
Response list_tests_response(const Request& req, const char* action, ListRequest in, Store& store) {
  ListQuery q;
  if (!in.clinic_id) return error_response(400, "clinic_id is required");
  struct {
    const char* name;
    std::optional<std::string>& value;
    size_t max_chars;
  } const filters[] = {{"clinic_id", in.clinic_id, kMaxIdChars},
                       {"patient_id", in.patient_id, kMaxIdChars},
                       {"test_type", in.test_type, kMaxTestTypeChars}};
  for (const auto& f : filters) {
    if (!f.value) continue;
    if (is_blank(*f.value)) return error_response(400, std::string(f.name) + " must not be empty");
    // The body's rules: a value that can't be stored can't match, and must not reach a log.
    std::string problem = check_id_text(*f.value, f.max_chars);
    if (!problem.empty()) return error_response(400, std::string(f.name) + " " + problem);
  }
  q.clinic_id = std::move(*in.clinic_id);
  q.patient_id = std::move(in.patient_id);
  q.test_type = std::move(in.test_type);
  long long page = -1;
  if (in.limit) {
    if (*in.limit < 1 || *in.limit > kMaxPageLimit) {
      return error_response(400,
                            "limit must be an integer from 1 to " + std::to_string(kMaxPageLimit));
    }
    page = *in.limit;
  }
  if (in.cursor) {
    std::string_view problem;
    std::optional<long long> after =
        decode_cursor(*in.cursor, q, store.instance_secret(), &problem);
    if (!after) return error_response(400, std::string(problem));
    q.after_seq = *after;
  }
  const bool paged = in.limit || in.cursor;
  q.limit = page > 0 ? page + 1 : -1;  // one more than the page: is there a next one?
  if (!req.principal.may(Access::kRead, q.clinic_id)) {
    return forbidden(req, store, action, q.clinic_id, listing_detail(q, page),
                     "this access key may not read tests of clinic " + q.clinic_id);
  }
  // The access is on record, durably, before the first byte of patient data leaves.
  AuditEntry audit = audit_entry(req, action, q.clinic_id);
  audit.outcome = 200;
  audit.detail = listing_detail(q, page);
  Status recorded = record_access(req, store, audit);
  if (!recorded.ok()) return storage_error_response(recorded);

  Response r;
  r.log.clinic_id = q.clinic_id;
  r.stream = [&store, q = std::move(q), page, paged](BodyWriter& out, LogFields& log) -> Status {
    // Holds up to one of the store's pages (about 256 KB) before it is sent: kept per thread
    // across listings, as growing a fresh one to a page's size each time cost more than the
    // page's query (callgrind: +11% instructions for a 1,000-test listing).
    thread_local std::string buf;
    buf.clear();
    buf.reserve(kStreamChunkBytes + 4096);
    buf += "{\"status\":\"success\",\"clinic_id\":";
    append_json_string(buf, q.clinic_id);
    buf += ",\"tests\":[";
    long long count = 0;
    long long last_seq = q.after_seq;
    bool more = false;
    bool client_gone = false;
    // Rows only go into buf (the store may hold its read snapshot meanwhile); what they made is
    // sent after each of the store's pages, with the snapshot released.
    auto on_row = [&](std::string_view json, long long seq) {
      if (page > 0 && count == page) {
        more = true;  // the extra row: only says a next page exists
        return false;
      }
      if (count > 0) buf += ',';
      append_json_text(buf, json);  // documents stored before output escaping hold raw U+2028
      ++count;
      last_seq = seq;
      return true;
    };
    auto on_page_end = [&] {
      if (buf.size() >= kStreamChunkBytes) {
        client_gone = !out.write(buf);
        buf.clear();
      }
      return !client_gone;
    };
    Status s = store.list_tests(q, on_row, on_page_end);
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
        const std::string cursor = encode_cursor(last_seq, q, store.instance_secret());
        if (cursor.empty()) return Status::Internal("cannot encrypt the next page's cursor");
        append_json_string(buf, cursor);
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

}  // namespace

Response handle_list_tests(const Request& req, Store& store) {
  QueryParams params;
  std::string problem;
  if (!parse_query(req.query, params, problem)) return error_response(400, problem);
  ListRequest in;
  for (auto& [name, value] : params) {
    std::optional<std::string>* slot = text_slot(in, name);
    if (!slot && name != "limit") return error_response(400, "unknown query parameter: " + name);
    bool repeated = slot ? slot->has_value() : in.limit.has_value();
    if (repeated) return error_response(400, name + " must be given once");
    if (slot) {
      *slot = std::move(value);
    } else {
      in.limit = parse_limit_text(value);
    }
  }
  return list_tests_response(req, "list", std::move(in), store);
}

Response handle_search_tests(const Request& req, Store& store) {
  Response error;
  if (!check_json_body(req, kMaxBodyBytes, error)) return error;
  std::string message;
  JsonTree tree = parse_json_body(req.body, kMaxJsonValuesPerRecord, message);
  if (!tree) return error_response(400, message);
  if (!cJSON_IsObject(tree.get())) return error_response(400, "request body must be a JSON object");
  ListRequest in;
  std::set<std::string_view> seen;
  for (const cJSON* item = tree->child; item != nullptr; item = item->next) {
    std::string_view name(item->string);
    std::optional<std::string>* slot = text_slot(in, name);
    if (!slot && name != "limit") return error_response(400, "unknown field: " + std::string(name));
    if (!seen.insert(name).second) {
      return error_response(400, std::string(name) + " must be given once");
    }
    if (slot) {
      if (!cJSON_IsString(item))
        return error_response(400, std::string(name) + " must be a string");
      *slot = std::string(item->valuestring);
      continue;
    }
    double v = cJSON_IsNumber(item) ? item->valuedouble : 0;
    bool integral = std::isfinite(v) && std::floor(v) == v && std::fabs(v) < 1e15;
    in.limit = integral ? static_cast<long long>(v) : 0;
  }
  return list_tests_response(req, "search", std::move(in), store);
}

Response handle_get_test(const Request& req, Store& store) {
  // An id that breaks the rules every stored test_id kept can name no test: answered exactly as
  // an unknown id, before it is looked up, recorded or logged (it might be 7 KB long, or carry
  // characters that forge lines or reorder text).
  if (!check_test_id(req.path_param).empty()) return error_response(404, "test not found");
  std::string json;
  // Access follows the row's clinic_id column, as listings do, not the clinic its document says:
  // the two disagree only in a row edited behind the service's back.
  std::string clinic;
  Status s = store.get_test(req.path_param, json, clinic);
  if (!s.ok() && s.code() != StatusCode::kNotFound) return storage_error_response(s);
  if (!s.ok()) clinic.clear();
  // A test of a clinic the key may not read is answered exactly as an unknown id.
  const bool readable = s.ok() && req.principal.may(Access::kRead, clinic);
  std::string detail;
  JsonWriter dj(detail);
  dj.begin_object();
  dj.field("test_id", req.path_param);
  if (s.ok() && !readable) dj.field("denied", "no read scope for the clinic");
  dj.end_object();
  AuditEntry audit = audit_entry(req, "get", clinic);
  audit.outcome = readable ? 200 : 404;
  audit.detail = std::move(detail);
  Status recorded = record_access(req, store, audit);
  if (!recorded.ok()) return storage_error_response(recorded);
  if (!readable) {
    // Not counted as a denial: a metric that moved only for foreign tests would tell a
    // metrics reader which ids exist.
    Response r = error_response(404, "test not found");
    r.log.test_id = req.path_param;
    return r;
  }
  Response r;
  r.body.reserve(json.size() + 32);
  r.body = "{\"status\":\"success\",\"test\":";
  append_json_text(r.body, json);  // documents stored before output escaping hold raw U+2028
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

Response handle_metrics(const Request& req, Store& store) {
  // GET /metrics/node/K: only node K answers (nginx routes it there; any other node was
  // reached by mistake, and its numbers would be taken for K's).
  if (!req.path_param.empty() && req.path_param != global_metrics().node()) {
    return error_response(404, "no such endpoint");
  }
  if (!req.principal.holds("metrics")) {
    global_metrics().record_auth_denial(403, DenialReason::kForbidden);
    Response e = error_response(403, "this access key may not read metrics (scope metrics)");
    e.log.reason = "forbidden";
    return e;
  }
  Response r;
  r.content_type = "text/plain; version=0.0.4; charset=utf-8";
  Status health = store.check_health();
  r.body = global_metrics().render(store.stats(), health);
  return r;
}

namespace {

// A time bound of GET /audit: the leading part of a UTC timestamp ("2026-11-28",
// "2026-11-28T10:00:00.000Z"): digits and - : T . Z only.
bool is_time_bound(const std::string& v) {
  if (v.empty() || v.size() > 32) return false;
  for (char c : v) {
    if (!((c >= '0' && c <= '9') || c == '-' || c == ':' || c == 'T' || c == '.' || c == 'Z')) {
      return false;
    }
  }
  return true;
}

}  // namespace

Response handle_audit(const Request& req, Store& store) {
  QueryParams params;
  std::string problem;
  if (!parse_query(req.query, params, problem)) return error_response(400, problem);
  AuditQuery q;
  long long page = 100;
  std::optional<std::string> cursor;
  std::set<std::string_view> given;
  for (const auto& [name, value] : params) {
    if (!given.insert(name).second) return error_response(400, name + " must be given once");
    if (name == "since" || name == "until") {
      if (!is_time_bound(value)) {
        return error_response(400, name + " must be a UTC time such as 2026-11-28T10:00:00Z");
      }
      (name == "since" ? q.since : q.until) = value;
    } else if (name == "clinic_id") {
      if (is_blank(value)) return error_response(400, "clinic_id must not be empty");
      // The id rules: a clinic id that can't be stored matches nothing, and is refused before
      // it reaches the trail or a log.
      std::string id_problem = check_id_text(value, kMaxIdChars);
      if (!id_problem.empty()) return error_response(400, "clinic_id " + id_problem);
      q.clinic_id = value;
    } else if (name == "limit") {
      if (!parse_limit(value, page)) {
        return error_response(
            400, "limit must be an integer from 1 to " + std::to_string(kMaxPageLimit));
      }
    } else if (name == "cursor") {
      cursor = value;  // decoded below, once every filter it is bound to is known
    } else {
      return error_response(400, "unknown query parameter: " + name);
    }
  }
  if (cursor) {
    std::string_view problem;
    std::optional<long long> after =
        decode_audit_cursor(*cursor, q, store.instance_secret(), &problem);
    if (!after) return error_response(400, std::string(problem));
    q.after_seq = *after;
  }
  std::string detail;
  JsonWriter dj(detail);
  dj.begin_object();
  if (q.since) dj.field("since", *q.since);
  if (q.until) dj.field("until", *q.until);
  if (q.clinic_id) dj.field("clinic_id", *q.clinic_id);
  dj.field("limit", page);
  if (q.after_seq > 0) dj.field("after_seq", q.after_seq);
  dj.end_object();
  const std::string clinic = q.clinic_id.value_or("");
  if (!req.principal.holds("audit")) {
    return forbidden(req, store, "audit_read", clinic, std::move(detail),
                     "this access key may not read the audit trail (scope audit)");
  }
  q.limit = page + 1;
  Response r;
  JsonWriter j(r.body);
  j.begin_object();
  j.field("status", "success");
  j.key("entries");
  j.begin_array();
  long long count = 0, last_seq = q.after_seq;
  bool more = false;
  Status s = store.list_audit(q, [&](const AuditEntry& e) {
    if (count == page) {
      more = true;
      return false;
    }
    j.raw(audit_entry_json(e));
    ++count;
    last_seq = e.seq;
    return true;
  });
  if (!s.ok()) return storage_error_response(s);
  j.end_array();
  j.field("count", count);
  j.key("next_cursor");
  if (more) {
    const std::string next = encode_audit_cursor(last_seq, q, store.instance_secret());
    if (next.empty()) return error_response(500, "cannot encrypt the next page's cursor");
    j.string(next);
  } else {
    j.null();
  }
  j.end_object();
  AuditEntry audit = audit_entry(req, "audit_read", clinic);
  audit.outcome = 200;
  audit.detail = std::move(detail);
  Status recorded = record_access(req, store, audit);
  if (!recorded.ok()) return storage_error_response(recorded);
  r.log.count = count;
  return r;
}

}  // namespace tdapi
