// json.cpp: cJSON document parsing and JSON string escaping.
#include "json.h"

#include <cstdio>

namespace tdapi {

JsonTree parse_json_document(std::string_view text) {
  const char* end = nullptr;
  JsonTree tree(cJSON_ParseWithLengthOpts(text.data(), text.size(), &end, false));
  if (!tree) return nullptr;
  const char* stop = text.data() + text.size();
  while (end < stop && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r')) ++end;
  if (end != stop) return nullptr;  // trailing bytes after the document
  return tree;
}

void append_json_string(std::string& out, std::string_view s) {
  static const char kHex[] = "0123456789abcdef";
  out.reserve(out.size() + s.size() + 2);
  out += '"';
  size_t run = 0;  // start of the current run of bytes that need no escaping
  for (size_t i = 0; i < s.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\' && c != 0x7f) continue;
    out.append(s.data() + run, i - run);
    run = i + 1;
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
  char buf[32];
  int n = std::snprintf(buf, sizeof buf, "%.3f", v);
  out_.append(buf, static_cast<size_t>(n));
}

}  // namespace tdapi
