// cursor_test.cpp: SipHash-2-4 against its reference vector; cursor round trips and tampering.
#include "cursor.h"

#include <gtest/gtest.h>

namespace tdapi {
namespace {

TEST(SipHash, ReferenceVector) {
  // From the SipHash paper: key 00..0f, message 00..0e -> a129ca6149be45e5.
  std::string key, msg;
  for (int i = 0; i < 16; ++i) key += static_cast<char>(i);
  for (int i = 0; i < 15; ++i) msg += static_cast<char>(i);
  EXPECT_EQ(siphash24(key, msg), 0xa129ca6149be45e5ULL);
}

ListQuery query(const std::string& clinic) {
  ListQuery q;
  q.clinic_id = clinic;
  return q;
}

TEST(Cursor, RoundTrips) {
  const std::string key = "0123456789abcdef";
  for (long long seq : {0LL, 1LL, 42LL, 1000000LL, 9007199254740993LL}) {
    std::string c = encode_cursor(seq, query("c1"), key);
    EXPECT_EQ(c.size(), 22u);
    EXPECT_EQ(decode_cursor(c, query("c1"), key), seq) << c;
  }
}

TEST(Cursor, RejectsMalformedAlteredAndForeign) {
  const std::string key = "0123456789abcdef";
  std::string c = encode_cursor(42, query("c1"), key);
  EXPECT_FALSE(decode_cursor(c, query("c2"), key));  // another clinic
  ListQuery filtered = query("c1");
  filtered.patient_id = "p1";
  EXPECT_FALSE(decode_cursor(c, filtered, key));                     // other filters
  EXPECT_FALSE(decode_cursor(c, query("c1"), "another key 12345"));  // another database
  for (size_t i = 0; i < c.size(); ++i) {                            // any one character
    std::string t = c;
    t[i] = t[i] == 'A' ? 'B' : 'A';
    EXPECT_FALSE(decode_cursor(t, query("c1"), key)) << i;
  }
  for (const char* bad : {"", "abc", "!!!!!!!!!!!!!!!!!!!!!!", "AAAAAAAAAAAAAAAAAAAAAAA"}) {
    EXPECT_FALSE(decode_cursor(bad, query("c1"), key)) << bad;
  }
}

}  // namespace
}  // namespace tdapi
