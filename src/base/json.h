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

// What a syntax check of a JSON text found, without building anything (no allocation).
struct JsonScan {
  enum class Outcome {
    kOk,       // one RFC 8259 JSON value, optionally surrounded by whitespace
    kInvalid,  // a syntax error, bytes after the value, or whitespace JSON does not allow
    kTooDeep,  // containers nested deeper than max_depth (scanning stopped there)
  };
  Outcome outcome = Outcome::kInvalid;
  char root = 0;          // first byte of the root value: '{', '[', '"', 't', 'f', 'n', '-', digit
  size_t values = 0;      // every value in the text, containers included
  size_t root_items = 0;  // elements of a root array, or members of a root object
};

// The deepest nesting scan_json can check.
constexpr size_t kMaxJsonScanDepth = 64;

// Checks `text` against the JSON grammar in one pass over the bytes and counts what a parse would
// build, so that oversized or over-deep documents can be refused before cJSON allocates a tree.
// Stricter than cJSON where cJSON is lax: only space, tab, LF and CR are whitespace (cJSON
// skips every byte up to 0x20), and numbers must have JSON's form (no "+1", "01", ".5", "1.").
// Like cJSON it does not check string contents beyond escapes (callers check UTF-8 and NULs).
// max_depth is capped at kMaxJsonScanDepth. This function can't fail.
JsonScan scan_json(std::string_view text, size_t max_depth);

// Parses exactly `text` as one JSON document: leading/trailing whitespace is allowed, any other
// byte after the document is not. Returns null on any syntax error, including what scan_json
// rejects (it runs first, with depth kMaxJsonScanDepth). cJSON decodes \u escapes; a \u0000
// inside a string would silently cut it, so callers reject those first (see validate).
JsonTree parse_json_document(std::string_view text);

// How JSON text is written (append_json_string, append_json_text, JsonWriter).
enum class JsonForm {
  // Every output of the app (responses, logs, the CLI's lines, audit exports): besides what JSON
  // requires, the C1 controls (U+0080..U+009F, NEL among them) and U+2028, U+2029 are escaped
  // (\u0085, \u2028): JSON allows them raw, but Unicode-aware line readers (JavaScript, Python's
  // splitlines) break a line at them, so one JSON line would read as several.
  kOutput,
  // The audit trail's canonical form, which entry hashes are computed over: those characters
  // are copied as they are, as they always were, so that entries written before still verify.
  kAuditHash,
};

// Appends `s` as a JSON string literal (with quotes). Escapes ", \ and all control characters
// (and DEL), and in kOutput form the C1 controls, U+2028 and U+2029; other well-formed UTF-8 is
// copied as it is, and every byte that is not part of a well-formed sequence becomes U+FFFD, so
// the output is always valid UTF-8 JSON whatever the input (a raw request path, say). This
// function can't fail.
void append_json_string(std::string& out, std::string_view s, JsonForm form = JsonForm::kOutput);

// Appends already-serialised JSON text (a stored document, an audit entry's detail). In kOutput
// form each raw C1 control, U+2028 and U+2029 in it becomes its \u escape (JSON text can hold
// them only inside strings, so the value is unchanged); kAuditHash copies the text as it is.
// This function can't fail.
void append_json_text(std::string& out, std::string_view json, JsonForm form = JsonForm::kOutput);

// Builds one JSON value into a string, tracking commas. Not thread-safe; cheap to create.
// Usage: w.begin_object(); w.key("a"); w.string("x"); w.end_object();
class JsonWriter {
 public:
  explicit JsonWriter(std::string& out, JsonForm form = JsonForm::kOutput)
      : out_(out), form_(form) {}
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
    append_json_string(out_, k, form_);
    out_ += ':';
    first_ = true;
  }
  void string(std::string_view v) {
    comma();
    append_json_string(out_, v, form_);
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
  // Appends already-serialised JSON as the next value (append_json_text).
  void raw(std::string_view json) {
    comma();
    append_json_text(out_, json, form_);
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
  JsonForm form_;
  bool first_ = true;
};

}  // namespace tdapi
