// api.cpp: the endpoint handlers.
#include "api/api.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <optional>
#include <set>

#include "api/validate.h"
#include "base/clock.h"
#include "base/json.h"
#include "metrics/metrics.h"
#include "security/cursor.h"
#include "store/read_after.h"

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
  const bool durable = req.audit_reads_durable || req.method == "POST" || req.method == "PUT";
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
  if (q.status) j.field("status", test_status_name(*q.status));
  if (q.created_from) j.field("created_from", *q.created_from);
  if (q.created_to) j.field("created_to", *q.created_to);
  if (q.updated_from) j.field("updated_from", *q.updated_from);
  if (q.updated_to) j.field("updated_to", *q.updated_to);
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

namespace {

// A write's answer carries where its commit is (X-Commit-Position), when the store has read
// replicas: a read that sends it back sees the write (store/read_after.h).
void add_commit_position(Response& r, const Store& store) {
  const uint64_t position = store.commit_position();
  if (position != 0) r.headers.emplace_back("X-Commit-Position", format_commit_position(position));
}

// The X-Commit-Position a read sent (0: none), or the 400 for one that is not a position.
std::optional<Response> read_commit_position(const Request& req, uint64_t& position) {
  position = 0;
  if (req.commit_position.empty() || parse_commit_position(req.commit_position, position)) {
    return std::nullopt;
  }
  return error_response(400,
                        "X-Commit-Position must be the value a write's answer carried, such as "
                        "16/B374D848");
}

}  // namespace

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
  add_commit_position(r, store);
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
  add_commit_position(r, store);
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
  std::optional<std::string> status;
  std::optional<std::string> created_from, created_to, updated_from, updated_to;
  std::optional<std::string> cursor;
  std::optional<long long> limit;  // outside 1..kMaxPageLimit when the given value was not one
};

// Where a listing parameter given as text goes (both parsers share the names); null for limit
// (a number) and for unknown names.
std::optional<std::string>* text_slot(ListRequest& in, std::string_view name) {
  if (name == "clinic_id") return &in.clinic_id;
  if (name == "patient_id") return &in.patient_id;
  if (name == "test_type") return &in.test_type;
  if (name == "status") return &in.status;
  if (name == "created_from") return &in.created_from;
  if (name == "created_to") return &in.created_to;
  if (name == "updated_from") return &in.updated_from;
  if (name == "updated_to") return &in.updated_to;
  if (name == "cursor") return &in.cursor;
  return nullptr;
}

// The listing both GET /tests and POST /tests/search answer: 400 for a bad value, else the
// clinic's tests streamed oldest first, paged when limit or cursor is given.
Response list_tests_response(const Request& req, const char* action, ListRequest in, Store& store) {
  ListQuery q;
  uint64_t read_after = 0;
  if (std::optional<Response> refused = read_commit_position(req, read_after)) {
    return std::move(*refused);
  }
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
  if (in.status) {
    q.status = parse_test_status(*in.status);
    if (!q.status) {
      return error_response(
          400, "status must be one of preliminary, final, amended, corrected, entered-in-error");
    }
  }
  struct {
    const char* name;
    std::optional<std::string>& given;
    std::optional<std::string>& bound;
  } const ranges[] = {{"created_from", in.created_from, q.created_from},
                      {"created_to", in.created_to, q.created_to},
                      {"updated_from", in.updated_from, q.updated_from},
                      {"updated_to", in.updated_to, q.updated_to}};
  for (const auto& r : ranges) {
    if (!r.given) continue;
    std::string utc;
    if (!parse_rfc3339_utc_ms(*r.given, utc)) {
      return error_response(400, std::string(r.name) +
                                     " must be an RFC 3339 date-time with a time zone, such as "
                                     "2026-12-07T10:00:00Z or 2026-12-07T12:00:00+02:00");
    }
    r.bound = std::move(utc);
  }
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
  r.stream = [&store, q = std::move(q), page, paged, read_after](BodyWriter& out,
                                                                 LogFields& log) -> Status {
    ReplicaReadScope replicas(read_after);  // the pages may come from a read replica
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

namespace {

// A search body's prologue, shared by POST /tests/search and POST /changes/search: within the
// body budgets, JSON, an object, each field once. on_field stores one field and answers "" or
// the error (an unknown field, a wrong type). Empty when every field was taken.
std::optional<Response> read_search_body(
    const Request& req,
    const std::function<std::string(std::string_view name, const cJSON* item)>& on_field) {
  Response error;
  if (!check_json_body(req, kMaxBodyBytes, error)) return error;
  std::string message;
  JsonTree tree = parse_json_body(req.body, kMaxJsonValuesPerRecord, message);
  if (!tree) return error_response(400, message);
  if (!cJSON_IsObject(tree.get())) return error_response(400, "request body must be a JSON object");
  std::set<std::string_view> seen;
  for (const cJSON* item = tree->child; item != nullptr; item = item->next) {
    std::string_view name(item->string);
    if (!seen.insert(name).second) {
      return error_response(400, std::string(name) + " must be given once");
    }
    message = on_field(name, item);
    if (!message.empty()) return error_response(400, message);
  }
  return std::nullopt;
}

// A JSON number that is a whole number of safe size, else `otherwise`.
long long integer_or(const cJSON* item, long long otherwise) {
  double v = cJSON_IsNumber(item) ? item->valuedouble : 0.5;
  bool integral = std::isfinite(v) && std::floor(v) == v && std::fabs(v) < 1e15;
  return integral ? static_cast<long long>(v) : otherwise;
}

}  // namespace

Response handle_search_tests(const Request& req, Store& store) {
  ListRequest in;
  std::optional<Response> refused =
      read_search_body(req, [&](std::string_view name, const cJSON* item) -> std::string {
        std::optional<std::string>* slot = text_slot(in, name);
        if (!slot && name != "limit") return "unknown field: " + std::string(name);
        if (!slot) {
          in.limit = integer_or(item, 0);
        } else if (!cJSON_IsString(item)) {
          return std::string(name) + " must be a string";
        } else {
          *slot = std::string(item->valuestring);
        }
        return "";
      });
  if (refused) return std::move(*refused);
  return list_tests_response(req, "search", std::move(in), store);
}

namespace {

// W/"<version>": a test's entity tag (weak: the document is the version's, not its bytes).
std::string etag_of(long long version) { return "W/\"" + std::to_string(version) + "\""; }

std::string_view trim_blanks(std::string_view v) {
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
  return v;
}

// The version an entity tag names: W/"N" or "N", N a decimal from 1 without leading zeros.
std::optional<long long> parse_etag(std::string_view tag) {
  tag = trim_blanks(tag);
  if (tag.size() >= 2 && tag[0] == 'W' && tag[1] == '/') tag.remove_prefix(2);
  if (tag.size() < 3 || tag.front() != '"' || tag.back() != '"') return std::nullopt;
  tag = tag.substr(1, tag.size() - 2);
  if (tag.empty() || tag.size() > 18 || tag[0] == '0') return std::nullopt;
  long long v = 0;
  for (char c : tag) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + (c - '0');
  }
  return v;
}

// If-None-Match against the current version (weak comparison): `*`, or a comma-separated list
// one of whose tags names it.
bool none_match_hits(std::string_view header, long long version) {
  header = trim_blanks(header);
  if (header == "*") return true;
  while (!header.empty()) {
    size_t comma = header.find(',');
    std::optional<long long> v = parse_etag(header.substr(0, comma));
    if (v && *v == version) return true;
    if (comma == std::string_view::npos) break;
    header.remove_prefix(comma + 1);
  }
  return false;
}

}  // namespace

Response handle_get_test(const Request& req, Store& store) {
  // An id that breaks the rules every stored test_id kept can name no test: answered exactly as
  // an unknown id, before it is looked up, recorded or logged (it might be 7 KB long, or carry
  // characters that forge lines or reorder text).
  if (!check_test_id(req.path_param).empty()) return error_response(404, "test not found");
  uint64_t read_after = 0;
  if (std::optional<Response> refused = read_commit_position(req, read_after)) {
    return std::move(*refused);
  }
  // Access follows the row's clinic_id column, as listings do, not the clinic its document says:
  // the two disagree only in a row edited behind the service's back.
  StoredDocument doc;
  Status s;
  {
    ReplicaReadScope replicas(read_after);  // may come from a read replica
    s = store.get_test(req.path_param, doc);
  }
  if (!s.ok() && s.code() != StatusCode::kNotFound) return storage_error_response(s);
  if (!s.ok()) doc.clinic_id.clear();
  // A test of a clinic the key may not read is answered exactly as an unknown id.
  const bool readable = s.ok() && req.principal.may(Access::kRead, doc.clinic_id);
  const bool not_modified = readable && doc.version > 0 && !req.if_none_match.empty() &&
                            none_match_hits(req.if_none_match, doc.version);
  std::string detail;
  JsonWriter dj(detail);
  dj.begin_object();
  dj.field("test_id", req.path_param);
  if (s.ok() && !readable) dj.field("denied", "no read scope for the clinic");
  dj.end_object();
  AuditEntry audit = audit_entry(req, "get", doc.clinic_id);
  audit.outcome = !readable ? 404 : not_modified ? 304 : 200;
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
  if (doc.version > 0) r.headers.emplace_back("ETag", etag_of(doc.version));
  r.log.test_id = req.path_param;
  if (not_modified) {
    r.status = 304;
    return r;
  }
  r.body.reserve(doc.json.size() + 32);
  r.body = "{\"status\":\"success\",\"test\":";
  append_json_text(r.body, doc.json);  // documents stored before output escaping hold raw U+2028
  r.body += '}';
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

namespace {

constexpr std::string_view kIfMatchRequired =
    "If-Match is required: send the version you are correcting, as W/\"<version>\" from GET "
    "/tests/{id}";

// {"test_id","from_version","to_version","status","reason"}: a correction's audit detail.
std::string correction_detail(const TestCorrection& c) {
  std::string out;
  JsonWriter j(out);
  j.begin_object();
  j.field("test_id", c.record.test_id);
  j.field("from_version", c.expected_version);
  j.field("to_version", c.expected_version + 1);
  j.field("status", test_status_name(c.record.status));
  j.field("reason", c.reason);
  j.end_object();
  return out;
}

Response field_error(int status, const std::string& message, const char* field,
                     const std::string& problem) {
  Response r = field_errors_response(message, {{field, problem, -1}});
  r.status = status;
  return r;
}

}  // namespace

Response handle_correct_test(const Request& req, Store& store) {
  Response error;
  if (!check_json_body(req, kMaxBodyBytes, error)) return error;
  CorrectionValidation v = validate_test_correction(req.body);
  if (!v.ok) return invalid_body(v.message, v.errors);
  if (v.record.test_id != req.path_param) {
    return field_error(400, "invalid correction", "test_id",
                       "must be the test_id of the path: test_id cannot change");
  }
  if (req.if_match.empty()) return error_response(428, kIfMatchRequired);
  std::optional<long long> expected = parse_etag(req.if_match);
  if (!expected) {
    return error_response(400,
                          "If-Match must be one version, as W/\"<version>\" from GET /tests/{id}");
  }
  TestCorrection c;
  c.record = std::move(v.record);
  c.reason = std::move(v.reason);
  c.expected_version = *expected;
  c.changed_by = req.principal.key_id.empty() || req.principal.unrestricted
                     ? std::string("anonymous")
                     : req.principal.key_id;
  const std::string& clinic = c.record.clinic_id;
  if (!req.principal.may(Access::kWrite, clinic)) {
    return forbidden(req, store, "correct", clinic, correction_detail(c),
                     "this access key may not write tests of clinic " + clinic);
  }
  LogFields log;
  log.test_id = c.record.test_id;
  log.clinic_id = clinic;
  // The stored clinic first, outside the transaction: it never changes, so this read cannot race
  // with another correction. Unknown, or another clinic's that the key may not see: 404 as GET.
  StoredDocument stored;
  Status s = store.get_test(c.record.test_id, stored);
  if (!s.ok() && s.code() != StatusCode::kNotFound) return storage_error_response(s);
  const bool visible = s.ok() && (req.principal.may(Access::kRead, stored.clinic_id) ||
                                  req.principal.may(Access::kWrite, stored.clinic_id));
  if (!s.ok() || stored.clinic_id != clinic) {
    const int status = visible ? 400 : 404;
    AuditEntry audit = audit_entry(req, "correct", visible ? stored.clinic_id : clinic);
    audit.outcome = status;
    audit.detail = correction_detail(c);
    Status recorded = record_access(req, store, audit);
    if (!recorded.ok()) return storage_error_response(recorded);
    global_metrics().record_correction_refusal(CorrectionRefusal::kNotFound);
    Response r = status == 404
                     ? error_response(404, "test not found")
                     : field_error(400, "invalid correction", "clinic_id",
                                   "cannot change: the test is clinic " + stored.clinic_id + "'s");
    r.log = std::move(log);
    return r;
  }
  AuditEntry audit = audit_entry(req, "correct", clinic);
  audit.detail = correction_detail(c);
  CorrectionOutcome out = store.correct(c, req.audit ? &audit : nullptr);
  if (req.audit && out.status.ok()) global_metrics().record_audit_write();
  log.txn_id = out.txn_id;
  if (!out.status.ok()) return rolled_back(out.status, std::move(log));
  if (out.refusal != CorrectionRefusal::kNone) {
    global_metrics().record_correction_refusal(out.refusal);
  }
  Response r;
  switch (out.refusal) {
    case CorrectionRefusal::kNone:
      break;
    case CorrectionRefusal::kNotFound:
    case CorrectionRefusal::kClinicDiffers:
      r = error_response(404, "test not found");
      r.log = std::move(log);
      return r;
    case CorrectionRefusal::kPatientDiffers:
      r = field_error(400, "invalid correction", "patient_id",
                      "patient_id cannot change: retract this result (status "
                      "entered-in-error) and send it again under the right patient");
      r.log = std::move(log);
      return r;
    case CorrectionRefusal::kRetracted:
      r = field_error(400, "invalid correction", "status",
                      "the test is entered-in-error and takes no further correction");
      r.log = std::move(log);
      return r;
    case CorrectionRefusal::kVersionMismatch: {
      r.status = 412;
      JsonWriter j(r.body);
      j.begin_object();
      j.field("status", "error");
      j.field("message",
              "If-Match is not the current version: read the test again (GET "
              "/tests/{id}) and correct that version");
      j.field("current_version", out.current.version);
      j.end_object();
      r.headers.emplace_back("ETag", etag_of(out.current.version));
      r.log = std::move(log);
      r.log.reason = "version_mismatch";
      return r;
    }
  }
  global_metrics().record_correction(out.current.record.status);
  r.headers.emplace_back("ETag", etag_of(out.current.version));
  add_commit_position(r, store);
  r.body.reserve(out.current.doc.size() + 32);
  r.body = "{\"status\":\"success\",\"test\":";
  append_json_text(r.body, out.current.doc);
  r.body += '}';
  r.log = std::move(log);
  r.log.txn = "commit";
  return r;
}

namespace {

// One version as history shows it.
void write_history_version(JsonWriter& j, const TestVersion& v) {
  j.begin_object();
  j.field("version", v.version);
  j.field("status", test_status_name(v.record.status));
  j.field("test_id", v.record.test_id);
  j.field("patient_id", v.record.patient_id);
  j.field("clinic_id", v.record.clinic_id);
  j.field("test_type", v.record.test_type);
  j.field("result", v.record.result);
  j.field("changed_at", v.changed_at);
  j.field("changed_by", v.changed_by);
  j.key("reason");
  if (v.reason) {
    j.string(*v.reason);
  } else {
    j.null();
  }
  j.end_object();
}

}  // namespace

Response handle_test_history(const Request& req, Store& store) {
  if (!check_test_id(req.path_param).empty()) return error_response(404, "test not found");
  QueryParams params;
  std::string problem;
  if (!parse_query(req.query, params, problem)) return error_response(400, problem);
  std::optional<long long> limit;
  std::optional<std::string> cursor;
  for (auto& [name, value] : params) {
    if (name != "limit" && name != "cursor") {
      return error_response(400, "unknown query parameter: " + name);
    }
    if (name == "limit" ? limit.has_value() : cursor.has_value()) {
      return error_response(400, name + " must be given once");
    }
    if (name == "cursor") {
      cursor = std::move(value);
      continue;
    }
    long long n = 0;
    if (!parse_limit(value, n)) {
      return error_response(400,
                            "limit must be an integer from 1 to " + std::to_string(kMaxPageLimit));
    }
    limit = n;
  }
  HistoryQuery q;
  q.test_id = req.path_param;
  if (cursor) {
    std::optional<long long> before =
        decode_history_cursor(*cursor, q.test_id, store.instance_secret());
    if (!before) return error_response(400, std::string(kCursorInvalid));
    q.before_version = *before;
  }
  const bool paged = limit || cursor;
  const long long page = limit.value_or(kMaxPageLimit);
  q.limit = paged ? page + 1 : -1;
  std::vector<TestVersion> versions;
  bool more = false;
  std::string clinic;
  Status s = store.list_history(q, clinic, [&](const TestVersion& v) {
    if (paged && static_cast<long long>(versions.size()) == page) {
      more = true;
      return false;
    }
    versions.push_back(v);
    return true;
  });
  if (!s.ok() && s.code() != StatusCode::kNotFound) return storage_error_response(s);
  if (!s.ok()) clinic.clear();
  const bool readable = s.ok() && req.principal.may(Access::kRead, clinic);
  std::string detail;
  JsonWriter dj(detail);
  dj.begin_object();
  dj.field("test_id", q.test_id);
  dj.field("count", readable ? static_cast<long long>(versions.size()) : 0LL);
  if (s.ok() && !readable) dj.field("denied", "no read scope for the clinic");
  dj.end_object();
  AuditEntry audit = audit_entry(req, "history", clinic);
  audit.outcome = readable ? 200 : 404;
  audit.detail = std::move(detail);
  Status recorded = record_access(req, store, audit);
  if (!recorded.ok()) return storage_error_response(recorded);
  if (!readable) {
    Response r = error_response(404, "test not found");
    r.log.test_id = q.test_id;
    return r;
  }
  Response r;
  JsonWriter j(r.body);
  j.begin_object();
  j.field("status", "success");
  j.field("test_id", q.test_id);
  j.key("versions");
  j.begin_array();
  for (const TestVersion& v : versions) write_history_version(j, v);
  j.end_array();
  if (paged) {
    j.key("next_cursor");
    if (more && !versions.empty()) {
      const std::string next =
          encode_history_cursor(versions.back().version, q.test_id, store.instance_secret());
      if (next.empty()) return error_response(500, "cannot encrypt the next page's cursor");
      j.string(next);
    } else {
      j.null();
    }
  }
  j.end_object();
  r.log.test_id = q.test_id;
  r.log.count = static_cast<long long>(versions.size());
  return r;
}

namespace {

// A feed request as either parser found it; feed_response checks the values.
struct FeedRequest {
  std::optional<std::string> clinic_id;
  std::optional<std::string> since;
  std::optional<long long> limit;  // outside 1..kMaxPageLimit when not an integer in range
  std::optional<long long> wait;   // outside 0..kMaxFeedWaitSeconds when not an integer in range
};

const char* change_kind(const TestVersion& v) {
  if (v.record.status == TestStatus::kEnteredInError) return "retraction";
  return v.version == 1 ? "create" : "correction";
}

// What every feed answer needs to be built again later (a held request's poll).
struct FeedContext {
  Store* store;
  AuditEntry audit;  // action, request id, key, clinic
  bool audit_on;
  bool durable;
  std::string clinic_id;
  long long after;
  long long limit;
  long long wait_seconds;
};

Status record_feed_access(const FeedContext& f, long long count) {
  if (!f.audit_on) return Status::Ok();
  AuditEntry a = f.audit;
  a.outcome = 200;
  std::string detail;
  JsonWriter dj(detail);
  dj.begin_object();
  dj.field("clinic_id", f.clinic_id);
  dj.field("count", count);
  if (f.wait_seconds > 0) dj.field("wait", f.wait_seconds);
  dj.end_object();
  a.detail = std::move(detail);
  Status s =
      f.store->append_audit(a, f.durable ? AuditDurability::kDurable : AuditDurability::kCrashSafe);
  if (s.ok()) global_metrics().record_audit_write();
  return s;
}

// One page of the feed: its changes as JSON objects, written as the rows come.
struct FeedPage {
  std::string items;  // the changes, comma-separated
  long long count = 0;
  long long last_change_seq = 0;
};

// Reads one page of the feed. Ok with the changes (maybe none), or the storage error.
Status read_feed(const FeedContext& f, FeedPage& page) {
  page = FeedPage();
  ChangeQuery q;
  q.clinic_id = f.clinic_id;
  q.after_change_seq = f.after;
  q.limit = f.limit;
  return f.store->list_changes(q, [&](const TestVersion& v) {
    if (page.count > 0) page.items += ',';
    page.items += "{\"change\":\"";
    page.items += change_kind(v);
    page.items += "\",\"changed_at\":";
    append_json_string(page.items, v.changed_at);
    page.items += ",\"changed_by\":";
    append_json_string(page.items, v.changed_by);
    page.items += ",\"reason\":";
    if (v.reason) {
      append_json_string(page.items, *v.reason);
    } else {
      page.items += "null";
    }
    page.items += ",\"test\":";
    append_json_text(page.items, v.doc);
    page.items += '}';
    page.last_change_seq = v.change_seq;
    return ++page.count < f.limit;
  });
}

// The answer for a page read (recorded in the audit trail first).
Response feed_answer(const FeedContext& f, const FeedPage& page) {
  Status recorded = record_feed_access(f, page.count);
  if (!recorded.ok()) return storage_error_response(recorded);
  const long long next_seq = page.count == 0 ? f.after : page.last_change_seq;
  const std::string next = encode_feed_token(next_seq, f.clinic_id, f.store->instance_secret());
  if (next.empty()) return error_response(500, "cannot encrypt the feed's next token");
  Response r;
  r.body.reserve(page.items.size() + next.size() + 64);
  r.body = "{\"status\":\"success\",\"changes\":[";
  r.body += page.items;
  r.body += "],\"next\":";
  append_json_string(r.body, next);
  r.body += '}';
  r.log.clinic_id = f.clinic_id;
  r.log.count = page.count;
  return r;
}

Response feed_response(const Request& req, const char* action, FeedRequest in, Store& store) {
  if (!in.clinic_id) return error_response(400, "clinic_id is required");
  if (is_blank(*in.clinic_id)) return error_response(400, "clinic_id must not be empty");
  std::string problem = check_id_text(*in.clinic_id, kMaxIdChars);
  if (!problem.empty()) return error_response(400, "clinic_id " + problem);
  const long long limit = in.limit.value_or(kDefaultFeedLimit);
  if (limit < 1 || limit > kMaxPageLimit) {
    return error_response(400,
                          "limit must be an integer from 1 to " + std::to_string(kMaxPageLimit));
  }
  const long long wait = in.wait.value_or(0);
  if (wait < 0 || wait > kMaxFeedWaitSeconds) {
    return error_response(400, "wait must be an integer from 0 to " +
                                   std::to_string(kMaxFeedWaitSeconds) + " (seconds)");
  }
  FeedContext f;
  f.store = &store;
  f.clinic_id = *in.clinic_id;
  f.limit = limit;
  f.wait_seconds = wait;
  f.after = 0;
  if (in.since) {
    std::optional<long long> after =
        decode_feed_token(*in.since, f.clinic_id, store.instance_secret());
    if (!after) {
      return error_response(400,
                            "since is malformed, altered, or not a token of this clinic's "
                            "feed: pass back a next token of the same clinic");
    }
    f.after = *after;
  }
  if (!req.principal.may(Access::kRead, f.clinic_id)) {
    std::string detail;
    JsonWriter dj(detail);
    dj.begin_object();
    dj.field("clinic_id", f.clinic_id);
    dj.end_object();
    return forbidden(req, store, action, f.clinic_id, std::move(detail),
                     "this access key may not read tests of clinic " + f.clinic_id);
  }
  f.audit = audit_entry(req, action, f.clinic_id);
  f.audit_on = req.audit;
  f.durable = req.audit_reads_durable || req.method == "POST";
  // The latest change before the page is read: a change that commits after it moves it, so a
  // held request wakes for it (fcgi_server.cpp's waiter).
  long long seen = 0;
  if (wait > 0) {
    Status s = store.latest_change(seen);
    if (!s.ok()) return storage_error_response(s);
  }
  FeedPage changes;
  Status s = read_feed(f, changes);
  if (!s.ok()) return storage_error_response(s);
  if (changes.count > 0 || wait == 0) return feed_answer(f, changes);
  Response r;
  r.log.clinic_id = f.clinic_id;
  r.wait = std::make_shared<DeferredResponse>();
  r.wait->deadline = std::chrono::steady_clock::now() + std::chrono::seconds(wait);
  r.wait->seen = seen;
  r.wait->key = std::to_string(f.after) + ' ' + std::to_string(f.limit) + ' ' + f.clinic_id;
  r.wait->poll = [f = std::move(f)](bool final) -> std::optional<Response> {
    FeedPage page;
    Status st = read_feed(f, page);
    if (!st.ok()) return storage_error_response(st);
    if (page.count == 0 && !final) return std::nullopt;  // another clinic's change: wait on
    return feed_answer(f, page);
  };
  return r;
}

// wait as a query value: decimal digits only, else a value the range check refuses.
long long parse_wait_text(const std::string& text) {
  if (text.empty() || text.size() > 3) return -1;
  long long v = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return -1;
    v = v * 10 + (c - '0');
  }
  return v;
}

}  // namespace

Response handle_changes(const Request& req, Store& store) {
  QueryParams params;
  std::string problem;
  if (!parse_query(req.query, params, problem)) return error_response(400, problem);
  FeedRequest in;
  std::set<std::string> given;
  for (auto& [name, value] : params) {
    if (name != "clinic_id" && name != "since" && name != "limit" && name != "wait") {
      return error_response(400, "unknown query parameter: " + name);
    }
    if (!given.insert(name).second) return error_response(400, name + " must be given once");
    if (name == "clinic_id") in.clinic_id = std::move(value);
    if (name == "since") in.since = std::move(value);
    if (name == "limit") in.limit = parse_limit_text(value);
    if (name == "wait") in.wait = parse_wait_text(value);
  }
  return feed_response(req, "changes", std::move(in), store);
}

Response handle_search_changes(const Request& req, Store& store) {
  FeedRequest in;
  std::optional<Response> refused =
      read_search_body(req, [&](std::string_view name, const cJSON* item) -> std::string {
        if (name == "clinic_id" || name == "since") {
          if (!cJSON_IsString(item)) return std::string(name) + " must be a string";
          (name == "clinic_id" ? in.clinic_id : in.since) = std::string(item->valuestring);
        } else if (name == "limit" || name == "wait") {
          (name == "limit" ? in.limit : in.wait) = integer_or(item, -1);
        } else {
          return "unknown field: " + std::string(name);
        }
        return "";
      });
  if (refused) return std::move(*refused);
  return feed_response(req, "changes", std::move(in), store);
}

}  // namespace tdapi
