// url.cpp: telling a PostgreSQL URL from an SQLite path, and hiding its password.
#include "base/url.h"

#include <algorithm>
#include <cctype>

namespace tdapi {

bool is_postgres_url(const std::string& target) {
  return target.rfind("postgresql://", 0) == 0 || target.rfind("postgres://", 0) == 0 ||
         target.find("dbname=") != std::string::npos || target.find("host=") != std::string::npos;
}

std::string redact_url_text(const std::string& url) {
  auto lower = [](std::string t) {
    for (char& c : t) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return t;
  };
  std::string out = url;
  const size_t scheme = out.find("://");
  if (scheme != std::string::npos) {
    // URI: scheme://user:password@host/db?password=…&…
    const size_t auth_end = out.find_first_of("/?", scheme + 3);
    const size_t at = out.rfind('@', auth_end == std::string::npos ? out.size() : auth_end);
    if (at != std::string::npos && at > scheme) {
      const size_t colon = out.find(':', scheme + 3);
      if (colon != std::string::npos && colon < at) out.replace(colon + 1, at - colon - 1, "***");
    }
    const size_t query = out.find('?');
    if (query == std::string::npos) return out;
    std::string result = out.substr(0, query + 1);
    size_t i = query + 1;
    while (i <= out.size()) {
      size_t amp = out.find('&', i);
      if (amp == std::string::npos) amp = out.size();
      const std::string param = out.substr(i, amp - i);
      const size_t eq = param.find('=');
      const std::string key = lower(param.substr(0, eq));
      // A key that is, or may be once percent-decoded, "password": hide its value.
      const bool secret = key == "password" || key.find('%') != std::string::npos;
      result += secret && eq != std::string::npos ? param.substr(0, eq + 1) + "***" : param;
      if (amp < out.size()) result += '&';
      i = amp + 1;
    }
    return result;
  }
  // Keyword/value: password = value, the value bare or single-quoted with backslash escapes.
  std::string result;
  size_t i = 0;
  while (i < out.size()) {
    size_t key_begin = out.find_first_not_of(" \t\n", i);
    result += out.substr(i, key_begin == std::string::npos ? std::string::npos : key_begin - i);
    if (key_begin == std::string::npos) break;
    size_t eq = out.find('=', key_begin);
    if (eq == std::string::npos) {
      result += out.substr(key_begin);
      break;
    }
    std::string key = out.substr(key_begin, eq - key_begin);
    while (!key.empty() && (key.back() == ' ' || key.back() == '\t')) key.pop_back();
    size_t v = out.find_first_not_of(" \t", eq + 1);
    if (v == std::string::npos) v = out.size();
    size_t end = v;
    if (end < out.size() && out[end] == '\'') {
      for (++end; end < out.size() && out[end] != '\''; ++end) {
        if (out[end] == '\\') ++end;
      }
      end = std::min(end + 1, out.size());
    } else {
      while (end < out.size() && out[end] != ' ' && out[end] != '\t' && out[end] != '\n') ++end;
    }
    result += out.substr(key_begin, v - key_begin);
    result += lower(key) == "password" ? "***" : out.substr(v, end - v);
    i = end;
  }
  return result;
}

}  // namespace tdapi
