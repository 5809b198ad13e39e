// cursor.cpp: base64url and the cursor format (the cryptography is libcrypto's, in crypto.cpp).
#include "security/cursor.h"

#include <cstdint>
#include <cstring>

#include "base/crypto.h"

namespace tdapi {

namespace {

constexpr unsigned char kCursorVersion = 2;
constexpr size_t kSeqBytes = 8;
constexpr size_t kSealedBytes = 16 + kSeqBytes;                  // SIV tag + encrypted seq
constexpr size_t kCursorChars = (1 + kSealedBytes) * 4 / 3 + 1;  // 25 bytes: 34 characters
constexpr size_t kOldCursorChars = 22;  // version 1: seq + SipHash tag, clear

const char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

// The AES-256-SIV key for cursors, derived from the database's cursor key (kept per thread for
// the last key seen: a process serves one database). Empty when libcrypto fails.
const std::string& cipher_key(std::string_view key) {
  thread_local std::string from, derived;
  if (derived.empty() || from != key) {
    from.assign(key);
    if (!hkdf_sha256(key, "tdapi paging cursor v2 AES-256-SIV", 64, derived)) from.clear();
  }
  return derived;
}

// Appends a field of the associated data: present or not, then its length and bytes, so that
// no two different queries give the same text.
void add_field(std::string& out, const std::optional<std::string>& value) {
  if (!value) {
    out += '-';
    return;
  }
  out += '+';
  const uint64_t n = value->size();
  for (int i = 7; i >= 0; --i) out += static_cast<char>((n >> (8 * i)) & 0xff);
  out += *value;
}

std::string tests_aad(const ListQuery& q) {
  std::string aad = "tests";
  add_field(aad, q.clinic_id);
  add_field(aad, q.patient_id);
  add_field(aad, q.test_type);
  // The status and time filters, only when one is given: a cursor of a listing without them
  // reads the same as before they existed.
  if (q.status || q.created_from || q.created_to || q.updated_from || q.updated_to) {
    aad += "|status+ranges";
    add_field(aad,
              q.status ? std::optional<std::string>(test_status_name(*q.status)) : std::nullopt);
    add_field(aad, q.created_from);
    add_field(aad, q.created_to);
    add_field(aad, q.updated_from);
    add_field(aad, q.updated_to);
  }
  return aad;
}

std::string history_aad(const std::string& test_id) {
  std::string aad = "history";
  add_field(aad, test_id);
  return aad;
}

std::string changes_aad(const std::string& clinic_id) {
  std::string aad = "changes";
  add_field(aad, clinic_id);
  return aad;
}

std::string audit_aad(const AuditQuery& q) {
  std::string aad = "audit";
  add_field(aad, q.since);
  add_field(aad, q.until);
  add_field(aad, q.clinic_id);
  return aad;
}

std::string seal_cursor(long long after_seq, const std::string& aad, std::string_view key) {
  const std::string& k = cipher_key(key);
  if (k.empty()) return "";
  std::string plain(kSeqBytes, '\0');
  const uint64_t seq = static_cast<uint64_t>(after_seq);
  for (size_t i = 0; i < kSeqBytes; ++i) {
    plain[i] = static_cast<char>((seq >> (56 - 8 * i)) & 0xff);
  }
  std::string sealed;
  if (!siv_seal(k, aad, plain, sealed)) return "";
  return base64url(std::string(1, static_cast<char>(kCursorVersion)) + sealed);
}

std::optional<long long> open_cursor(std::string_view cursor, const std::string& aad,
                                     std::string_view key) {
  std::string raw, plain;
  if (cursor.size() != kCursorChars || !unbase64url(cursor, raw) ||
      raw.size() != 1 + kSealedBytes || static_cast<unsigned char>(raw[0]) != kCursorVersion) {
    return std::nullopt;
  }
  const std::string& k = cipher_key(key);
  if (k.empty() || !siv_open(k, aad, std::string_view(raw).substr(1), plain) ||
      plain.size() != kSeqBytes) {
    return std::nullopt;
  }
  uint64_t seq = 0;
  for (char c : plain) seq = (seq << 8) | static_cast<unsigned char>(c);
  const long long position = static_cast<long long>(seq);
  if (position < 0) return std::nullopt;
  return position;
}

}  // namespace

std::string base64url(std::string_view in) {
  const auto* data = reinterpret_cast<const unsigned char*>(in.data());
  const size_t n = in.size();
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

bool unbase64url(std::string_view in, std::string& out) {
  out.clear();
  if (in.size() % 4 == 1) return false;
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

std::string encode_cursor(long long after_seq, const ListQuery& query, std::string_view key) {
  return seal_cursor(after_seq, tests_aad(query), key);
}

std::optional<long long> decode_cursor(std::string_view cursor, const ListQuery& query,
                                       std::string_view key, std::string_view* problem) {
  std::optional<long long> position = open_cursor(cursor, tests_aad(query), key);
  if (!position && problem) {
    // Version 1 (22 characters of base64url): refused, as it showed the position in clear.
    std::string raw;
    const bool old = cursor.size() == kOldCursorChars && unbase64url(cursor, raw);
    *problem = old ? kCursorOutdated : kCursorInvalid;
  }
  return position;
}

std::string encode_history_cursor(long long before_version, const std::string& test_id,
                                  std::string_view key) {
  return seal_cursor(before_version, history_aad(test_id), key);
}

std::optional<long long> decode_history_cursor(std::string_view cursor, const std::string& test_id,
                                               std::string_view key) {
  std::optional<long long> v = open_cursor(cursor, history_aad(test_id), key);
  if (v && *v < 1) return std::nullopt;
  return v;
}

std::string encode_feed_token(long long after_change_seq, const std::string& clinic_id,
                              std::string_view key) {
  return seal_cursor(after_change_seq, changes_aad(clinic_id), key);
}

std::optional<long long> decode_feed_token(std::string_view token, const std::string& clinic_id,
                                           std::string_view key) {
  return open_cursor(token, changes_aad(clinic_id), key);
}

std::string encode_audit_cursor(long long after_seq, const AuditQuery& query,
                                std::string_view key) {
  return seal_cursor(after_seq, audit_aad(query), key);
}

std::optional<long long> decode_audit_cursor(std::string_view cursor, const AuditQuery& query,
                                             std::string_view key, std::string_view* problem) {
  std::optional<long long> position = open_cursor(cursor, audit_aad(query), key);
  if (!position && problem) {
    // Earlier, GET /audit's cursor was the seq in decimal.
    const bool old = !cursor.empty() && cursor.size() <= 18 &&
                     cursor.find_first_not_of("0123456789") == std::string_view::npos;
    *problem = old ? kCursorOutdated : kCursorInvalid;
  }
  return position;
}

}  // namespace tdapi
