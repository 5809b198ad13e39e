// json.cpp: the JSON syntax pre-scan, cJSON document parsing, and JSON string escaping.
#include "base/json.h"

#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#ifdef __SSE2__
#include <emmintrin.h>
#endif

#include "base/utf8.h"

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

namespace {

const char kHexDigits[] = "0123456789abcdef";

// Writes into esc the escape of the well-formed sequence of len bytes at p when a Unicode line
// reader would break a line at it: a C1 control (C2 80..C2 9F) as \u00XX, U+2028 and U+2029
// (E2 80 A8, E2 80 A9) as \u2028 and \u2029. Returns the escape's length, 0 for any other
// sequence.
size_t line_break_escape(const unsigned char* p, size_t len, char (&esc)[6]) {
  if (len == 2 && p[0] == 0xC2 && p[1] < 0xA0) {
    esc[2] = '0';
    esc[3] = '0';
    esc[4] = kHexDigits[p[1] >> 4];
    esc[5] = kHexDigits[p[1] & 0xf];
  } else if (len == 3 && p[0] == 0xE2 && p[1] == 0x80 && (p[2] == 0xA8 || p[2] == 0xA9)) {
    esc[2] = '2';
    esc[3] = '0';
    esc[4] = '2';
    esc[5] = p[2] == 0xA8 ? '8' : '9';
  } else {
    return 0;
  }
  esc[0] = '\\';
  esc[1] = 'u';
  return sizeof esc;
}

// Whether every byte of s is below 0x80: the high bits of 32 bytes at a time ORed together
// (SSE2, in every x86-64), then of 8, then of the rest.
bool is_ascii(std::string_view s) {
  const char* p = s.data();
  size_t n = s.size();
#ifdef __SSE2__
  __m128i acc = _mm_setzero_si128();
  for (; n >= 32; p += 32, n -= 32) {
    acc = _mm_or_si128(acc, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    acc = _mm_or_si128(acc, _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16)));
  }
  if (_mm_movemask_epi8(acc) != 0) return false;
#endif
  std::uint64_t high = 0;
  for (; n >= 8; p += 8, n -= 8) {
    std::uint64_t w;
    std::memcpy(&w, p, 8);
    high |= w;
  }
  for (; n > 0; ++p, --n) high |= static_cast<unsigned char>(*p);
  return (high & 0x8080808080808080ULL) == 0;
}

}  // namespace

void append_json_text(std::string& out, std::string_view json, JsonForm form) {
  if (form == JsonForm::kAuditHash) {
    out.append(json);
    return;
  }
  // A document without a byte >= 0x80 (the usual one) has nothing to escape: one pass eight
  // bytes at a time says so, cheaper than the two memchr scans below (a 1,000-test listing
  // spent ~8% of its instructions in them).
  if (is_ascii(json)) {
    out.append(json);
    return;
  }
  // Every sequence to escape starts with C2 or E2: memchr finds those (a stored document is
  // mostly ASCII), and what lies between is copied in runs.
  const auto* begin = reinterpret_cast<const unsigned char*>(json.data());
  const unsigned char* end = begin + json.size();
  auto next = [end](const unsigned char* from, int byte) {
    const void* hit = std::memchr(from, byte, static_cast<size_t>(end - from));
    return hit ? static_cast<const unsigned char*>(hit) : end;
  };
  const unsigned char* run = begin;
  const unsigned char* c2 = next(begin, 0xC2);
  const unsigned char* e2 = next(begin, 0xE2);
  while (c2 != end || e2 != end) {
    const bool at_c2 = c2 < e2;
    const unsigned char*& at = at_c2 ? c2 : e2;
    const size_t len = at_c2 ? 2 : 3;
    char esc[6];
    size_t n = static_cast<size_t>(end - at) >= len ? line_break_escape(at, len, esc) : 0;
    if (n == 0) {
      at = next(at + 1, at_c2 ? 0xC2 : 0xE2);
      continue;
    }
    out.append(reinterpret_cast<const char*>(run), static_cast<size_t>(at - run));
    out.append(esc, n);
    run = at + len;
    at = next(run, at_c2 ? 0xC2 : 0xE2);
  }
  out.append(reinterpret_cast<const char*>(run), static_cast<size_t>(end - run));
}

void append_json_string(std::string& out, std::string_view s, JsonForm form) {
  out.reserve(out.size() + s.size() + 2);
  out += '"';
  size_t run = 0;  // start of the current run of bytes that need no escaping
  size_t i = 0;
  while (i < s.size()) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      size_t len = utf8_sequence_length(s, i);
      if (len > 0) {
        char esc[6];
        size_t n =
            form == JsonForm::kOutput
                ? line_break_escape(reinterpret_cast<const unsigned char*>(s.data()) + i, len, esc)
                : 0;
        if (n > 0) {
          out.append(s.data() + run, i - run);
          out.append(esc, n);
          run = i + len;
        }
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
        out += kHexDigits[c >> 4];
        out += kHexDigits[c & 0xf];
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
