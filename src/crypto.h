// crypto.h: the project's one wrapper of OpenSSL's libcrypto: CSPRNG bytes, SHA-256, and a
// constant-time comparison. No cryptography is written here, only called.
#pragma once

#include <string>
#include <string_view>

namespace tdapi {

// Fills out with n bytes from OpenSSL's CSPRNG (seeded from the OS). Returns false, leaving out
// empty, when the generator fails (then no key may be created).
bool random_bytes(size_t n, std::string& out);

// SHA-256 of data as 64 lower-case hex digits. This function can't fail.
std::string sha256_hex(std::string_view data);

// True when a and b hold the same bytes; the time taken depends only on their lengths.
bool constant_time_equal(std::string_view a, std::string_view b);

// Lower-case hex of bytes. This function can't fail.
std::string to_hex(std::string_view bytes);

}  // namespace tdapi
