// utf8.h: well-formed UTF-8, as JSON text, HTTP headers, ids and key names require it.
#pragma once

#include <cstddef>
#include <string_view>

namespace tdapi {

// Length of the well-formed UTF-8 sequence starting at s[i] (1-4), or 0 when the bytes there are
// not one (a stray continuation byte, an overlong form, a surrogate, above U+10FFFF, cut short).
size_t utf8_sequence_length(std::string_view s, size_t i);

// True when `s` is well-formed UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF).
bool is_valid_utf8(std::string_view s);

}  // namespace tdapi
