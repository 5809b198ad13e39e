// json.h: the project's one wrapper of cJSON (parsing) and a small JSON text writer (output).
#pragma once

#include <cjson/cJSON.h>

#include <memory>
#include <string>
#include <string_view>

namespace tdapi {

struct CjsonDeleter {
  void operator()(cJSON* node) const { cJSON_Delete(node); }
};
// Owns a parsed cJSON tree.
using JsonTree = std::unique_ptr<cJSON, CjsonDeleter>;

// Parses exactly `text` as one JSON document: leading/trailing whitespace is allowed, any other
// byte after the document is not. Returns null on any syntax error. cJSON decodes \u escapes;
// a \u0000 inside a string would silently cut it, so callers reject those first (see validate).
JsonTree parse_json_document(std::string_view text);

// Appends `s` as a JSON string literal (with quotes). Escapes ", \ and all control characters;
// other bytes are copied as they are (callers pass valid UTF-8). This function can't fail.
void append_json_string(std::string& out, std::string_view s);

// Builds one JSON value into a string, tracking commas. Not thread-safe; cheap to create.
// Usage: w.begin_object(); w.key("a"); w.string("x"); w.end_object();
class JsonWriter {
 public:
  explicit JsonWriter(std::string& out) : out_(out) {}
  void begin_object() {
    comma();
    out_ += '{';
    first_ = true;
  }
  void end_object() {
    out_ += '}';
    first_ = false;
  }
  void begin_array() {
    comma();
    out_ += '[';
    first_ = true;
  }
  void end_array() {
    out_ += ']';
    first_ = false;
  }
  void key(std::string_view k) {
    comma();
    append_json_string(out_, k);
    out_ += ':';
    first_ = true;
  }
  void string(std::string_view v) {
    comma();
    append_json_string(out_, v);
  }
  void number(long long v) {
    comma();
    out_ += std::to_string(v);
  }
  void number(double v);  // fixed, 3 decimals: durations in ms
  void boolean(bool v) {
    comma();
    out_ += v ? "true" : "false";
  }
  void null() {
    comma();
    out_ += "null";
  }
  // Appends already-serialised JSON as the next value.
  void raw(std::string_view json) {
    comma();
    out_ += json;
  }

  void field(std::string_view k, std::string_view v) {
    key(k);
    string(v);
  }
  void field(std::string_view k, const char* v) {
    key(k);
    string(v);
  }
  void field(std::string_view k, long long v) {
    key(k);
    number(v);
  }
  void field(std::string_view k, int v) {
    key(k);
    number(static_cast<long long>(v));
  }
  void field(std::string_view k, double v) {
    key(k);
    number(v);
  }

 private:
  void comma() {
    if (!first_) out_ += ',';
    first_ = false;
  }
  std::string& out_;
  bool first_ = true;
};

}  // namespace tdapi
