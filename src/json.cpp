// json.cpp: the JSON syntax pre-scan, cJSON document parsing, and JSON string escaping.
#include "json.h"

#include <charconv>
#include <cmath>
#include <cstdio>

namespace tdapi {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_hex(char c) { return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }

// A cursor over the text for scan_json. Every step checks bounds.
class Scanner {
 public:
  explicit Scanner(std::string_view t) : t_(t) {}
  bool at_end() const { return i_ >= t_.size(); }
  char peek() const { return at_end() ? '\0' : t_[i_]; }
  void skip_space() {
    while (!at_end() && is_space(t_[i_])) ++i_;
  }
  bool eat(char c) {
    if (peek() != c || at_end()) return false;
    ++i_;
    return true;
  }
  // A string starting at '"': escapes must be JSON's; other bytes are not checked here.
  bool string() {
    if (!eat('"')) return false;
    while (!at_end()) {
      char c = t_[i_++];
      if (c == '"') return true;
      if (c != '\\') continue;
      if (at_end()) return false;
      char e = t_[i_++];
      if (e == 'u') {
        for (int k = 0; k < 4; ++k) {
          if (at_end() || !is_hex(t_[i_])) return false;
          ++i_;
        }
      } else if (e != '"' && e != '\\' && e != '/' && e != 'b' && e != 'f' && e != 'n' &&
                 e != 'r' && e != 't') {
        return false;
      }
    }
    return false;
  }
  // -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
  bool number() {
    eat('-');
    if (eat('0')) {
    } else if (is_digit(peek()) && !at_end()) {
      digits();
    } else {
      return false;
    }
    if (eat('.') && !digits()) return false;
    if (peek() == 'e' || peek() == 'E') {
      ++i_;
      if (peek() == '+' || peek() == '-') ++i_;
      if (!digits()) return false;
    }
    return true;
  }
  bool literal(std::string_view word) {
    if (t_.substr(i_, word.size()) != word) return false;
    i_ += word.size();
    return true;
  }

 private:
  bool digits() {
    size_t start = i_;
    while (!at_end() && is_digit(t_[i_])) ++i_;
    return i_ > start;
  }
  std::string_view t_;
  size_t i_ = 0;
};

}  // namespace

JsonScan scan_json(std::string_view text, size_t max_depth) {
  if (max_depth > kMaxJsonScanDepth) max_depth = kMaxJsonScanDepth;
  JsonScan out;
  Scanner s(text);
  char stack[kMaxJsonScanDepth];  // the open containers: '{' or '['
  size_t depth = 0;
  auto fail = [&out](JsonScan::Outcome why) {
    out.outcome = why;
    return out;
  };
  // A member's key and colon, with the whitespace around them.
  auto member_key = [&s]() {
    s.skip_space();
    if (!s.string()) return false;
    s.skip_space();
    if (!s.eat(':')) return false;
    s.skip_space();
    return true;
  };
  s.skip_space();
  for (;;) {
    // Here a value starts.
    char c = s.peek();
    if (s.at_end()) return fail(JsonScan::Outcome::kInvalid);
    ++out.values;
    if (depth == 0) out.root = c;
    if (depth == 1) ++out.root_items;
    bool value_done = true;  // false when a container was opened and its first value follows
    if (c == '{' || c == '[') {
      if (depth == max_depth) return fail(JsonScan::Outcome::kTooDeep);
      s.eat(c);
      stack[depth++] = c;
      s.skip_space();
      if (s.eat(c == '{' ? '}' : ']')) {
        --depth;
      } else {
        if (c == '{' && !member_key()) return fail(JsonScan::Outcome::kInvalid);
        value_done = false;
      }
    } else if (c == '"') {
      if (!s.string()) return fail(JsonScan::Outcome::kInvalid);
    } else if (c == 't' || c == 'f' || c == 'n') {
      if (!s.literal(c == 't' ? "true" : c == 'f' ? "false" : "null")) {
        return fail(JsonScan::Outcome::kInvalid);
      }
    } else if (!s.number()) {
      return fail(JsonScan::Outcome::kInvalid);
    }
    if (!value_done) continue;
    // After a value: commas, closing brackets, or the end of the text.
    for (;;) {
      s.skip_space();
      if (depth == 0) {
        if (!s.at_end()) return fail(JsonScan::Outcome::kInvalid);
        out.outcome = JsonScan::Outcome::kOk;
        return out;
      }
      char open = stack[depth - 1];
      if (s.eat(',')) {
        if (open == '{' && !member_key()) return fail(JsonScan::Outcome::kInvalid);
        s.skip_space();
        break;  // the next value
      }
      if (!s.eat(open == '{' ? '}' : ']')) return fail(JsonScan::Outcome::kInvalid);
      --depth;
    }
  }
}

JsonTree parse_json_document(std::string_view text) {
  if (scan_json(text, kMaxJsonScanDepth).outcome != JsonScan::Outcome::kOk) return nullptr;
  const char* end = nullptr;
  JsonTree tree(cJSON_ParseWithLengthOpts(text.data(), text.size(), &end, false));
  if (!tree) return nullptr;
  const char* stop = text.data() + text.size();
  while (end < stop && is_space(*end)) ++end;
  if (end != stop) return nullptr;  // trailing bytes after the document
  return tree;
}

size_t utf8_sequence_length(std::string_view s, size_t i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  size_t avail = s.size() - i;
  unsigned char c = p[0];
  if (c < 0x80) return 1;
  size_t len;
  unsigned int cp;
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
    cp = c & 0x1F;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    cp = c & 0x0F;
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    cp = c & 0x07;
  } else {
    return 0;  // continuation byte, overlong 2-byte lead (C0, C1), or above F4
  }
  if (avail < len) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((p[k] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (p[k] & 0x3F);
  }
  if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return 0;  // overlong
  if (cp >= 0xD800 && cp <= 0xDFFF) return 0;                            // surrogate
  if (cp > 0x10FFFF) return 0;
  return len;
}

void append_json_string(std::string& out, std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  out.reserve(out.size() + s.size() + 2);
  out += '"';
  size_t run = 0;  // start of the current run of bytes that need no escaping
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      size_t len = utf8_sequence_length(s, i);
      if (len > 0) {
        i += len;
        continue;
      }
      out.append(s.data() + run, i - run);
      out += "\xEF\xBF\xBD";  // U+FFFD REPLACEMENT CHARACTER for the stray byte
      run = ++i;
      continue;
    }
    if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f) {
      ++i;
      continue;
    }
    out.append(s.data() + run, i - run);
    run = ++i;
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        out += "\\u00";
        out += kHex[c >> 4];
        out += kHex[c & 0xf];
    }
  }
  out.append(s.data() + run, s.size() - run);
  out += '"';
}

void JsonWriter::number(double v) {
  comma();
  // Three decimals (a log line's durations), formatted by hand where the value fits: snprintf's
  // "%.3f" was a twentieth of a small read's CPU.
  if (!std::isfinite(v)) {
    out_ += "null";  // JSON has no NaN or infinity
    return;
  }
  if (std::fabs(v) < 1e15) {
    long long thousandths = std::llround(v * 1000.0);
    unsigned long long magnitude = thousandths < 0
                                       ? 0ULL - static_cast<unsigned long long>(thousandths)
                                       : static_cast<unsigned long long>(thousandths);
    if (thousandths < 0) out_ += '-';
    char digits[24];
    auto [end, ec] = std::to_chars(digits, digits + sizeof digits, magnitude / 1000);
    (void)ec;  // cannot fail: 20 digits at most
    out_.append(digits, static_cast<size_t>(end - digits));
    unsigned fraction = static_cast<unsigned>(magnitude % 1000);
    const char tail[] = {'.', static_cast<char>('0' + fraction / 100),
                         static_cast<char>('0' + fraction / 10 % 10),
                         static_cast<char>('0' + fraction % 10)};
    out_.append(tail, sizeof tail);
    return;
  }
  char buf[352];  // "%.3f" of DBL_MAX is 313 characters
  int n = std::snprintf(buf, sizeof buf, "%.3f", v);
  out_.append(buf, static_cast<size_t>(n));
}

}  // namespace tdapi
