// fuzz_query.cpp: libFuzzer target over query-string and percent decoding.
// Invariants: never crash; decoded names and values are valid UTF-8 without NUL;
// percent_decode(percent_encode(s)) == s for any bytes s.
#include <cassert>
#include <cstddef>
#include <cstdint>
#include <string>

#include "base/utf8.h"
#include "http/http.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view raw(reinterpret_cast<const char*>(data), size);
  tdapi::QueryParams params;
  std::string error;
  if (tdapi::parse_query(raw, params, error)) {
    for (const auto& [name, value] : params) {
      assert(tdapi::is_valid_utf8(name) && tdapi::is_valid_utf8(value));
      assert(name.find('\0') == std::string::npos && value.find('\0') == std::string::npos);
    }
  } else {
    assert(!error.empty());
  }
  std::string decoded;
  bool plus = size > 0 && (data[0] & 1);
  assert(tdapi::percent_decode(tdapi::percent_encode(raw), plus, decoded));
  assert(decoded == raw);
  return 0;
}
