// cursor.h: opaque, tamper-evident paging cursors for GET /tests.
//
// A cursor is base64url(seq as 8 big-endian bytes + SipHash-2-4 tag of 8 bytes), 22 characters.
// The tag covers the position and the query it belongs to (clinic and filters), keyed with the
// database's secret, so a cursor edited by hand or replayed against another query is rejected.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "store.h"

namespace tdapi {

// Encodes the position after which the next page of `query` starts. This function can't fail.
std::string encode_cursor(long long after_seq, const ListQuery& query, std::string_view key);

// Decodes a cursor for `query`. Returns the position, or nullopt when the text is malformed, was
// altered, or was issued for a different clinic or filters.
std::optional<long long> decode_cursor(std::string_view cursor, const ListQuery& query,
                                       std::string_view key);

// SipHash-2-4 of data under a 16-byte key (shorter keys are zero-padded). Exposed for tests.
uint64_t siphash24(std::string_view key, std::string_view data);

}  // namespace tdapi
