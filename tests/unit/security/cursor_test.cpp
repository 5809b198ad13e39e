// cursor_test.cpp: cursors round-trip, show nothing of their position, and are refused when
// altered, foreign, of the other kind, or of the earlier (clear) format.
#include "security/cursor.h"

#include <gtest/gtest.h>

#include <cstdint>

#include "base/crypto.h"

namespace tdapi {
namespace {

const std::string kKey = "0123456789abcdef";  // a database's 16-byte cursor key

ListQuery query(const std::string& clinic) {
  ListQuery q;
  q.clinic_id = clinic;
  return q;
}

AuditQuery audit_query(std::optional<std::string> clinic) {
  AuditQuery q;
  q.clinic_id = std::move(clinic);
  return q;
}

std::string big_endian(uint64_t v, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) out += static_cast<char>((v >> (8 * (n - 1 - i))) & 0xff);
  return out;
}

std::string little_endian(uint64_t v, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
  return out;
}

// Every plain encoding of seq that a cursor could carry: as bytes (8, 4 or 3 of them when the
// value fits, either byte order) in the decoded cursor, and as decimal or hex in its text.
void expect_no_plain_seq(const std::string& cursor, long long seq) {
  std::string raw;
  ASSERT_TRUE(unbase64url(cursor, raw)) << cursor;
  const uint64_t v = static_cast<uint64_t>(seq);
  for (size_t n : {8u, 4u, 3u}) {
    if (n < 8 && v >> (8 * n) != 0) continue;
    EXPECT_EQ(raw.find(big_endian(v, n)), std::string::npos) << "seq " << seq << ", " << n;
    EXPECT_EQ(raw.find(little_endian(v, n)), std::string::npos) << "seq " << seq << ", " << n;
  }
  EXPECT_EQ(cursor.find(std::to_string(seq)), std::string::npos) << cursor;
  EXPECT_EQ(raw.find(std::to_string(seq)), std::string::npos) << seq;
  EXPECT_EQ(to_hex(raw).find(to_hex(big_endian(v, 8)).substr(6)), std::string::npos) << seq;
}

TEST(Cursor, RoundTrips) {
  for (long long seq : {0LL, 1LL, 42LL, 1000000LL, 9007199254740993LL}) {
    std::string c = encode_cursor(seq, query("c1"), kKey);
    EXPECT_EQ(c.size(), 34u);
    EXPECT_EQ(decode_cursor(c, query("c1"), kKey), seq) << c;
    std::string a = encode_audit_cursor(seq, audit_query("c1"), kKey);
    EXPECT_EQ(decode_audit_cursor(a, audit_query("c1"), kKey), seq) << a;
  }
}

// A cursor carried the global seq in clear (base64url of 8 big-endian bytes): one clinic's key
// could count every clinic's writes between two of its pages.
TEST(Cursor, ShowsNothingOfItsPosition) {
  for (long long seq : {1234567LL, 7654321LL, 305419896LL, 4886718345LL, 9007199254740993LL}) {
    expect_no_plain_seq(encode_cursor(seq, query("c1"), kKey), seq);
    expect_no_plain_seq(encode_audit_cursor(seq, audit_query(std::nullopt), kKey), seq);
  }
  // Neighbouring positions share no byte pattern a reader could subtract: the cursors differ in
  // most of their bytes, not only in the last.
  std::string a, b;
  ASSERT_TRUE(unbase64url(encode_cursor(1000, query("c1"), kKey), a));
  ASSERT_TRUE(unbase64url(encode_cursor(1001, query("c1"), kKey), b));
  ASSERT_EQ(a.size(), b.size());
  size_t same = 0;
  for (size_t i = 1; i < a.size(); ++i) same += a[i] == b[i];
  EXPECT_LT(same, 6u) << "of " << a.size() - 1 << " bytes";
}

TEST(Cursor, RejectsMalformedAlteredAndForeign) {
  std::string c = encode_cursor(42, query("c1"), kKey);
  std::string_view problem;
  EXPECT_FALSE(decode_cursor(c, query("c2"), kKey, &problem));  // another clinic
  EXPECT_EQ(problem, kCursorInvalid);
  EXPECT_FALSE(decode_cursor(c, query("c10"), kKey));  // a look-alike clinic
  ListQuery filtered = query("c1");
  filtered.patient_id = "p1";
  EXPECT_FALSE(decode_cursor(c, filtered, kKey));  // other filters
  ListQuery typed = query("c1");
  typed.test_type = "p1";
  EXPECT_FALSE(decode_cursor(encode_cursor(42, filtered, kKey), typed, kKey));  // field swapped
  EXPECT_FALSE(decode_cursor(c, query("c1"), "another key 12345"));             // another database
  for (size_t i = 0; i < c.size(); ++i) {                                       // any one character
    std::string t = c;
    t[i] = t[i] == 'A' ? 'B' : 'A';
    EXPECT_FALSE(decode_cursor(t, query("c1"), kKey)) << i;
  }
  std::string raw;
  ASSERT_TRUE(unbase64url(c, raw));
  for (size_t i = 0; i < raw.size(); ++i) {  // any one bit of any byte
    for (int bit = 0; bit < 8; ++bit) {
      std::string t = raw;
      t[i] = static_cast<char>(t[i] ^ (1 << bit));
      EXPECT_FALSE(decode_cursor(base64url(t), query("c1"), kKey)) << i << "." << bit;
    }
  }
  EXPECT_FALSE(decode_cursor(base64url(raw.substr(0, raw.size() - 1)), query("c1"), kKey));
  EXPECT_FALSE(decode_cursor(base64url(raw + "x"), query("c1"), kKey));
  for (const char* bad : {"", "abc", "!!!!!!!!!!!!!!!!!!!!!!", "AAAAAAAAAAAAAAAAAAAAAAA",
                          "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}) {
    EXPECT_FALSE(decode_cursor(bad, query("c1"), kKey, &problem)) << bad;
    EXPECT_EQ(problem, kCursorInvalid) << bad;
  }
}

TEST(Cursor, ListingAndAuditCursorsAreNotInterchangeable) {
  std::string listing = encode_cursor(42, query("c1"), kKey);
  std::string audit = encode_audit_cursor(42, audit_query("c1"), kKey);
  EXPECT_NE(listing, audit);
  EXPECT_FALSE(decode_audit_cursor(listing, audit_query("c1"), kKey));
  EXPECT_FALSE(decode_cursor(audit, query("c1"), kKey));
  // An audit cursor is bound to its filters too.
  EXPECT_FALSE(decode_audit_cursor(audit, audit_query("c2"), kKey));
  EXPECT_FALSE(decode_audit_cursor(audit, audit_query(std::nullopt), kKey));
  AuditQuery since = audit_query("c1");
  since.since = "2026-01-01";
  EXPECT_FALSE(decode_audit_cursor(audit, since, kKey));
  AuditQuery until = audit_query("c1");
  until.until = "2026-01-01";
  EXPECT_FALSE(decode_audit_cursor(encode_audit_cursor(42, since, kKey), until, kKey));
}

TEST(Cursor, StatusAndTimeFiltersAreBoundAndAListingWithoutThemKeepsItsCursors) {
  ListQuery plain = query("c1");
  // A listing without the new filters binds what it bound before them (its cursors stay valid
  // across the upgrade); with one of them, the cursor is bound to it.
  EXPECT_EQ(decode_cursor(encode_cursor(42, plain, kKey), plain, kKey), 42);
  ListQuery with_status = plain;
  with_status.status = TestStatus::kAmended;
  ListQuery other_status = plain;
  other_status.status = TestStatus::kFinal;
  std::string c = encode_cursor(42, with_status, kKey);
  EXPECT_EQ(decode_cursor(c, with_status, kKey), 42);
  EXPECT_FALSE(decode_cursor(c, plain, kKey));
  EXPECT_FALSE(decode_cursor(c, other_status, kKey));
  EXPECT_FALSE(decode_cursor(encode_cursor(42, plain, kKey), with_status, kKey));
  ListQuery created = plain;
  created.created_from = "2026-01-01T00:00:00.000Z";
  ListQuery updated = plain;
  updated.updated_from = "2026-01-01T00:00:00.000Z";
  ListQuery created_to = plain;
  created_to.created_to = "2026-01-01T00:00:00.000Z";
  ListQuery later = plain;
  later.created_from = "2026-01-01T00:00:00.001Z";
  std::string r = encode_cursor(7, created, kKey);
  EXPECT_EQ(decode_cursor(r, created, kKey), 7);
  for (const ListQuery* other : {&plain, &updated, &created_to, &later}) {
    EXPECT_FALSE(decode_cursor(r, *other, kKey));
  }
}

TEST(Cursor, HistoryCursorsAndFeedTokensAreBoundToTheirTestAndClinicAndKind) {
  std::string h = encode_history_cursor(5, "t1", kKey);
  EXPECT_EQ(decode_history_cursor(h, "t1", kKey), 5);
  EXPECT_FALSE(decode_history_cursor(h, "t2", kKey));
  EXPECT_FALSE(decode_history_cursor(h, "t1", "another key 12345"));
  EXPECT_FALSE(decode_history_cursor(encode_history_cursor(0, "t1", kKey), "t1", kKey));
  std::string f = encode_feed_token(1234567, "c1", kKey);
  EXPECT_EQ(decode_feed_token(f, "c1", kKey), 1234567);
  EXPECT_EQ(decode_feed_token(encode_feed_token(0, "c1", kKey), "c1", kKey), 0);
  expect_no_plain_seq(f, 1234567);
  EXPECT_FALSE(decode_feed_token(f, "c2", kKey));
  EXPECT_FALSE(decode_feed_token(f, "c1", "another key 12345"));
  // No kind's position works as another's, even for names that look alike.
  EXPECT_FALSE(decode_feed_token(encode_history_cursor(5, "c1", kKey), "c1", kKey));
  EXPECT_FALSE(decode_history_cursor(encode_feed_token(5, "t1", kKey), "t1", kKey));
  EXPECT_FALSE(decode_feed_token(encode_cursor(5, query("c1"), kKey), "c1", kKey));
  EXPECT_FALSE(decode_cursor(encode_feed_token(5, "c1", kKey), query("c1"), kKey));
  EXPECT_FALSE(decode_audit_cursor(encode_feed_token(5, "c1", kKey), audit_query("c1"), kKey));
  for (size_t i = 0; i < f.size(); ++i) {
    std::string t = f;
    t[i] = t[i] == 'A' ? 'B' : 'A';
    EXPECT_FALSE(decode_feed_token(t, "c1", kKey)) << i;
  }
  for (const char* bad : {"", "0", "abc", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}) {
    EXPECT_FALSE(decode_feed_token(bad, "c1", kKey)) << bad;
  }
}

// Cursors of the earlier format (seq + SipHash tag in 22 characters; GET /audit's decimal seq)
// are refused with a message that says what to do.
TEST(Cursor, EarlierFormatsAreRefusedWithAClearMessage) {
  std::string_view problem;
  EXPECT_FALSE(decode_cursor("AAAAAAAAACpH0c5X5-O8Eg", query("c1"), kKey, &problem));
  EXPECT_EQ(problem, kCursorOutdated);
  EXPECT_FALSE(decode_audit_cursor("1234", audit_query(std::nullopt), kKey, &problem));
  EXPECT_EQ(problem, kCursorOutdated);
  EXPECT_FALSE(decode_audit_cursor("12x4", audit_query(std::nullopt), kKey, &problem));
  EXPECT_EQ(problem, kCursorInvalid);
}

TEST(Base64Url, RoundTripsAndRefusesNonCanonicalText) {
  for (std::string s : {std::string(), std::string("a"), std::string("ab"), std::string("abc"),
                        std::string("\xff\x00\xfe", 3)}) {
    std::string back;
    ASSERT_TRUE(unbase64url(base64url(s), back));
    EXPECT_EQ(back, s);
  }
  std::string out;
  EXPECT_FALSE(unbase64url("A", out));
  EXPECT_FALSE(unbase64url("AB", out));  // unused bits set
  EXPECT_FALSE(unbase64url("A=", out));
}

}  // namespace
}  // namespace tdapi
