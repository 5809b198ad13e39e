// cursor.h: opaque, encrypted, tamper-evident paging cursors for GET /tests, POST /tests/search,
// GET /tests/{id}/history and GET /audit, and the change feed's tokens.
//
// A cursor is base64url(version byte 2 + AES-256-SIV(seq as 8 bytes)), 34 characters: the
// position is encrypted, so a cursor shows nothing of it (a seq in clear would let one clinic's
// key count every clinic's writes), and authenticated together with the query it belongs to
// (which kind: listing, history, feed or audit; the clinic or test, the filters) as associated
// data, so a cursor edited by hand or replayed against another query is rejected. The cipher's key
// is derived with HKDF-SHA256 from the database's cursor key (meta `cursor_key`), never that key
// itself, so cursors stay valid across restarts, backups and migrate, and each database's cursors
// only work on it.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "store/store.h"

namespace tdapi {

// What the client is told about a cursor that decode_cursor refused.
inline constexpr std::string_view kCursorInvalid =
    "cursor is malformed, altered, or for another query";
inline constexpr std::string_view kCursorOutdated =
    "cursor is from an earlier version of the service; start the listing again without a cursor";

// Encodes the position after which the next page of `query` starts. Empty only when libcrypto
// fails (then no cursor can be given).
std::string encode_cursor(long long after_seq, const ListQuery& query, std::string_view key);

// Decodes a cursor for `query`. Returns the position, or nullopt when the text is malformed, was
// altered, or was issued for a different clinic or filters; then `problem` (when given) is
// kCursorOutdated for a cursor of the earlier format, else kCursorInvalid.
std::optional<long long> decode_cursor(std::string_view cursor, const ListQuery& query,
                                       std::string_view key, std::string_view* problem = nullptr);

// The same for GET /audit, bound to its filters (since, until, clinic_id). A cursor of one kind
// never works as the other.
std::string encode_audit_cursor(long long after_seq, const AuditQuery& query, std::string_view key);
std::optional<long long> decode_audit_cursor(std::string_view cursor, const AuditQuery& query,
                                             std::string_view key,
                                             std::string_view* problem = nullptr);

// GET /tests/{id}/history: the version the next page starts below, bound to the test_id. Decode
// returns nullopt for a malformed or altered cursor, or one of another test or kind.
std::string encode_history_cursor(long long before_version, const std::string& test_id,
                                  std::string_view key);
std::optional<long long> decode_history_cursor(std::string_view cursor, const std::string& test_id,
                                               std::string_view key);

// The change feed's `since`/`next` token: the change_seq a reader has seen up to, bound to the
// clinic. Decode returns nullopt for a malformed or altered token, or one of another clinic or
// kind.
std::string encode_feed_token(long long after_change_seq, const std::string& clinic_id,
                              std::string_view key);
std::optional<long long> decode_feed_token(std::string_view token, const std::string& clinic_id,
                                           std::string_view key);

// Unpadded base64url and back (false on a character outside the alphabet, a bad length or
// non-zero unused bits). Exposed for tests.
std::string base64url(std::string_view data);
bool unbase64url(std::string_view in, std::string& out);

}  // namespace tdapi
