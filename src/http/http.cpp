// http.cpp: error bodies, reason phrases, percent-coding, query strings, media types, UTF-8.
#include "http/http.h"

#include <cctype>

#include "base/json.h"
#include "base/utf8.h"

namespace tdapi {

Response error_response(int status, std::string_view message) {
  Response r;
  r.status = status;
  JsonWriter w(r.body);
  w.begin_object();
  w.field("status", "error");
  w.field("message", message);
  w.end_object();
  return r;
}

namespace {

// Passes stream chunks to a ResponseOutput, writing the head before the first one.
class HeadFirstWriter : public BodyWriter {
 public:
  HeadFirstWriter(Response& response, ResponseOutput& out) : response_(response), out_(out) {}
  bool write(std::string_view chunk) override {
    if (!head_sent_) {
      head_sent_ = true;
      if (!out_.write_head(response_)) return false;
    }
    return out_.write_body(chunk);
  }
  bool head_sent() const { return head_sent_; }

 private:
  Response& response_;
  ResponseOutput& out_;
  bool head_sent_ = false;
};

}  // namespace

void send_response(Response& response, ResponseOutput& out) {
  if (!response.stream) {
    if (out.write_head(response)) out.write_body(response.body);
    return;
  }
  HeadFirstWriter writer(response, out);
  Status s = response.stream(writer, response.log);
  if (s.ok()) return;
  if (writer.head_sent()) {
    response.aborted = true;
    response.log.reason = "response_aborted";
    response.log.detail = std::string(s.name()) + " after the head was sent: " + s.message();
    out.abort();
    return;
  }
  response.log.reason = s.name();
  Response error = storage_error_response(s);
  response.status = error.status;
  response.body = std::move(error.body);
  response.stream = nullptr;
  if (out.write_head(response)) out.write_body(response.body);
}

Response storage_error_response(const Status& status) {
  Response r = error_response(http_status_for(status.code()), client_message_for(status.code()));
  r.log.reason = status.name();
  return r;
}

Response field_errors_response(std::string_view message, const std::vector<FieldError>& errors) {
  Response r;
  r.status = 400;
  JsonWriter w(r.body);
  w.begin_object();
  w.field("status", "error");
  w.field("message", message);
  w.key("errors");
  w.begin_array();
  for (const FieldError& e : errors) {
    w.begin_object();
    if (e.index >= 0) w.field("index", e.index);
    if (!e.field.empty()) w.field("field", e.field);
    w.field("message", e.message);
    w.end_object();
  }
  w.end_array();
  w.end_object();
  return r;
}

const char* reason_phrase(int status) {
  // Every status the service sends (RFC 9110, RFC 6585 for 428/429, RFC 4918 for 507).
  switch (status) {
    case 200:
      return "OK";
    case 201:
      return "Created";
    case 204:
      return "No Content";
    case 304:
      return "Not Modified";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 409:
      return "Conflict";
    case 412:
      return "Precondition Failed";
    case 413:
      return "Payload Too Large";
    case 415:
      return "Unsupported Media Type";
    case 428:
      return "Precondition Required";
    case 429:
      return "Too Many Requests";
    case 500:
      return "Internal Server Error";
    case 502:
      return "Bad Gateway";
    case 503:
      return "Service Unavailable";
    case 504:
      return "Gateway Timeout";
    case 507:
      return "Insufficient Storage";
  }
  return "Unknown";
}

static int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool percent_decode(std::string_view in, bool plus_as_space, std::string& out) {
  out.clear();
  out.reserve(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    char c = in[i];
    if (c == '%') {
      if (i + 2 >= in.size()) return false;  // needs two hex digits after '%'
      int hi = hex_value(in[i + 1]);
      int lo = hex_value(in[i + 2]);
      if (hi < 0 || lo < 0) return false;
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else if (c == '+' && plus_as_space) {
      out += ' ';
    } else {
      out += c;
    }
  }
  return true;
}

std::string percent_encode(std::string_view in) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (char ch : in) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += ch;
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 0xf];
    }
  }
  return out;
}

bool parse_query(std::string_view raw, QueryParams& out, std::string& error) {
  out.clear();
  size_t pos = 0;
  while (pos <= raw.size()) {
    size_t amp = raw.find('&', pos);
    if (amp == std::string_view::npos) amp = raw.size();
    std::string_view piece = raw.substr(pos, amp - pos);
    pos = amp + 1;
    if (piece.empty()) continue;
    size_t eq = piece.find('=');
    std::string_view raw_name = piece.substr(0, eq);
    std::string_view raw_value =
        eq == std::string_view::npos ? std::string_view() : piece.substr(eq + 1);
    std::string name, value;
    if (!percent_decode(raw_name, true, name) || !percent_decode(raw_value, true, value)) {
      error = "malformed percent-encoding in query string";
      return false;
    }
    if (!is_valid_utf8(name) || !is_valid_utf8(value)) {
      error = "query string is not valid UTF-8";
      return false;
    }
    if (name.find('\0') != std::string::npos || value.find('\0') != std::string::npos) {
      error = "query string contains a NUL character";
      return false;
    }
    out.emplace_back(std::move(name), std::move(value));
  }
  return true;
}

bool is_json_content_type(std::string_view ct) {
  size_t semi = ct.find(';');
  std::string_view type = ct.substr(0, semi);
  while (!type.empty() && (type.front() == ' ' || type.front() == '\t')) type.remove_prefix(1);
  while (!type.empty() && (type.back() == ' ' || type.back() == '\t')) type.remove_suffix(1);
  static constexpr std::string_view kJson = "application/json";
  if (type.size() != kJson.size()) return false;
  for (size_t i = 0; i < kJson.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(type[i])) != kJson[i]) return false;
  }
  return true;
}

}  // namespace tdapi
