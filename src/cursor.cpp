// cursor.cpp: SipHash-2-4, base64url, and the cursor format.
#include "cursor.h"

#include <cstring>

namespace tdapi {

namespace {

uint64_t rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

uint64_t load_le64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

const char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

std::string base64url(const unsigned char* data, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = static_cast<uint32_t>(data[i]) << 16;
    if (i + 1 < n) v |= static_cast<uint32_t>(data[i + 1]) << 8;
    if (i + 2 < n) v |= data[i + 2];
    out += kB64[(v >> 18) & 63];
    out += kB64[(v >> 12) & 63];
    if (i + 1 < n) out += kB64[(v >> 6) & 63];
    if (i + 2 < n) out += kB64[v & 63];
  }
  return out;
}

// Decodes unpadded base64url; false on any character outside the alphabet or a bad length.
bool unbase64url(std::string_view in, std::string& out) {
  if (in.size() % 4 == 1) return false;
  out.clear();
  uint32_t acc = 0;
  int bits = 0;
  for (char c : in) {
    const char* p = c ? std::strchr(kB64, c) : nullptr;
    if (!p) return false;
    acc = (acc << 6) | static_cast<uint32_t>(p - kB64);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out += static_cast<char>((acc >> bits) & 0xff);
    }
  }
  return (acc & ((1u << bits) - 1)) == 0;  // unused trailing bits must be zero (canonical)
}

std::string tagged_text(long long seq, const ListQuery& q) {
  std::string t = "tdapi-cursor-v1";
  t += '\0';
  t += std::to_string(seq);
  t += '\0';
  t += q.clinic_id;
  t += '\0';
  t += q.patient_id ? "p:" + *q.patient_id : "-";
  t += '\0';
  t += q.test_type ? "t:" + *q.test_type : "-";
  return t;
}

}  // namespace

uint64_t siphash24(std::string_view key, std::string_view data) {
  unsigned char k[16] = {};
  std::memcpy(k, key.data(), key.size() < 16 ? key.size() : 16);
  uint64_t k0 = load_le64(k), k1 = load_le64(k + 8);
  uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
  uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
  auto round = [&] {
    v0 += v1;
    v1 = rotl(v1, 13);
    v1 ^= v0;
    v0 = rotl(v0, 32);
    v2 += v3;
    v3 = rotl(v3, 16);
    v3 ^= v2;
    v0 += v3;
    v3 = rotl(v3, 21);
    v3 ^= v0;
    v2 += v1;
    v1 = rotl(v1, 17);
    v1 ^= v2;
    v2 = rotl(v2, 32);
  };
  const auto* p = reinterpret_cast<const unsigned char*>(data.data());
  size_t n = data.size();
  size_t full = n / 8 * 8;
  for (size_t i = 0; i < full; i += 8) {
    uint64_t m = load_le64(p + i);
    v3 ^= m;
    round();
    round();
    v0 ^= m;
  }
  uint64_t last = static_cast<uint64_t>(n & 0xff) << 56;
  for (size_t i = 0; i < n - full; ++i) last |= static_cast<uint64_t>(p[full + i]) << (8 * i);
  v3 ^= last;
  round();
  round();
  v0 ^= last;
  v2 ^= 0xff;
  round();
  round();
  round();
  round();
  return v0 ^ v1 ^ v2 ^ v3;
}

std::string encode_cursor(long long after_seq, const ListQuery& query, std::string_view key) {
  unsigned char raw[16];
  uint64_t seq = static_cast<uint64_t>(after_seq);
  uint64_t tag = siphash24(key, tagged_text(after_seq, query));
  for (int i = 0; i < 8; ++i) {
    raw[i] = static_cast<unsigned char>(seq >> (56 - 8 * i));
    raw[8 + i] = static_cast<unsigned char>(tag >> (56 - 8 * i));
  }
  return base64url(raw, sizeof raw);
}

std::optional<long long> decode_cursor(std::string_view cursor, const ListQuery& query,
                                       std::string_view key) {
  std::string raw;
  if (cursor.size() != 22 || !unbase64url(cursor, raw) || raw.size() != 16) return std::nullopt;
  uint64_t seq = 0, tag = 0;
  for (int i = 0; i < 8; ++i) {
    seq = (seq << 8) | static_cast<unsigned char>(raw[i]);
    tag = (tag << 8) | static_cast<unsigned char>(raw[8 + i]);
  }
  long long position = static_cast<long long>(seq);
  if (position < 0) return std::nullopt;
  if (siphash24(key, tagged_text(position, query)) != tag) return std::nullopt;
  return position;
}

}  // namespace tdapi
