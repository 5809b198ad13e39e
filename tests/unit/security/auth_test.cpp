// auth_test.cpp: token format, hashing, Authorization parsing and scope checks.
#include "security/auth.h"

#include <gtest/gtest.h>

#include <set>

#include "base/crypto.h"
#include "base/json.h"
#include "base/options.h"
#include "security/access_control.h"

namespace tdapi {
namespace {

TEST(Crypto, Sha256MatchesTheKnownVector) {
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(Crypto, ConstantTimeEqualComparesWholeValues) {
  EXPECT_TRUE(constant_time_equal("abc", "abc"));
  EXPECT_FALSE(constant_time_equal("abc", "abd"));
  EXPECT_FALSE(constant_time_equal("abc", "abcd"));
}

TEST(Auth, GeneratedKeysHaveTheDocumentedShapeAndDiffer) {
  std::set<std::string> tokens;
  for (int i = 0; i < 50; ++i) {
    NewKey k;
    ASSERT_TRUE(generate_key(k));
    EXPECT_TRUE(is_key_id(k.key_id)) << k.key_id;
    ASSERT_EQ(k.token.size(), 4u + 16 + 1 + 64) << k.token;
    EXPECT_EQ(k.token.substr(0, 4 + 16 + 1), "tdk_" + k.key_id + "_");
    std::string id, secret;
    ASSERT_EQ(parse_authorization("Bearer " + k.token, id, secret), TokenParse::kOk);
    EXPECT_EQ(id, k.key_id);
    EXPECT_TRUE(secret_matches(secret, k.secret_hash));
    EXPECT_EQ(k.secret_hash.size(), 64u);
    EXPECT_EQ(k.token.find(k.secret_hash), std::string::npos);  // the hash is not the secret
    tokens.insert(k.token);
  }
  EXPECT_EQ(tokens.size(), 50u);
}

TEST(Auth, AWrongSecretDoesNotMatch) {
  NewKey k;
  ASSERT_TRUE(generate_key(k));
  std::string id, secret;
  ASSERT_EQ(parse_authorization("Bearer " + k.token, id, secret), TokenParse::kOk);
  secret[10] = secret[10] == 'a' ? 'b' : 'a';
  EXPECT_FALSE(secret_matches(secret, k.secret_hash));
}

TEST(Auth, AuthorizationHeaders) {
  const std::string id(16, 'a'), sec(64, '0');
  const std::string token = "tdk_" + id + "_" + sec;
  struct Case {
    std::string header;
    TokenParse want;
  } cases[] = {
      {"", TokenParse::kMissing},
      {"   ", TokenParse::kMissing},
      {"Bearer " + token, TokenParse::kOk},
      {"bearer " + token, TokenParse::kOk},
      {"BEARER   " + token + " ", TokenParse::kOk},
      {"Bearer", TokenParse::kMalformed},
      {"Bearer ", TokenParse::kMalformed},
      {"Basic dXNlcjpwYXNz", TokenParse::kMalformed},
      {"Bearer" + token, TokenParse::kMalformed},
      {"Bearer tdk_" + id + "_" + sec.substr(1), TokenParse::kMalformed},
      {"Bearer tdk_" + id + "_" + sec + "0", TokenParse::kMalformed},
      {"Bearer tdk_" + id + "-" + sec, TokenParse::kMalformed},
      {"Bearer xdk_" + id + "_" + sec, TokenParse::kMalformed},
      {"Bearer tdk_" + std::string(16, 'A') + "_" + sec, TokenParse::kMalformed},
      {"Bearer tdk_" + id + "_" + std::string(63, '0') + "g", TokenParse::kMalformed},
      {"Bearer " + token + " extra", TokenParse::kMalformed},
  };
  for (const Case& c : cases) {
    std::string got_id, got_secret;
    EXPECT_EQ(parse_authorization(c.header, got_id, got_secret), c.want) << c.header;
  }
}

TEST(Auth, ScopeSyntax) {
  for (const char* ok : {"read:c1", "write:c1", "read:*", "write:*", "audit", "metrics",
                         "read:clinic with spaces", "write:Klinik-Ä"}) {
    EXPECT_TRUE(is_valid_scope(ok)) << ok;
  }
  for (const char* bad : {"", "read", "read:", "write: ", "admin", "Read:c1", "read:c\x01",
                          "audit:c1", "metrics ", "read:\xff"}) {
    EXPECT_FALSE(is_valid_scope(bad)) << bad;
  }
  EXPECT_FALSE(is_valid_scope("read:" + std::string(129, 'c')));
  EXPECT_TRUE(is_valid_scope("read:" + std::string(128, 'c')));
}

TEST(Auth, ScopesGrantExactlyWhatTheySay) {
  Principal p;
  p.key_id = "0123456789abcdef";
  p.scopes = {"read:c1", "write:c2", "metrics"};
  EXPECT_TRUE(p.may(Access::kRead, "c1"));
  EXPECT_FALSE(p.may(Access::kWrite, "c1"));
  EXPECT_TRUE(p.may(Access::kWrite, "c2"));
  EXPECT_FALSE(p.may(Access::kRead, "c2"));
  EXPECT_FALSE(p.may(Access::kRead, "c10"));
  EXPECT_FALSE(p.may(Access::kRead, "c"));
  EXPECT_TRUE(p.holds("metrics"));
  EXPECT_FALSE(p.holds("audit"));

  Principal all;
  all.scopes = {"read:*"};
  EXPECT_TRUE(all.may(Access::kRead, "anything"));
  EXPECT_FALSE(all.may(Access::kWrite, "anything"));

  Principal off;
  off.unrestricted = true;
  EXPECT_TRUE(off.may(Access::kWrite, "c9"));
  EXPECT_TRUE(off.holds("audit"));
  EXPECT_EQ(off.key_id, "anonymous");
}

TEST(AuthFailures, TheBucketAllowsTheBurstThenTheRatePerAddress) {
  AuthFailures f(60, 3);  // one a second, a burst of 3
  const int64_t wall = 60000 * 1000;
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(f.note("10.0.0.1", "unknown_key", "k", "r", 0, wall));
  EXPECT_FALSE(f.note("10.0.0.1", "unknown_key", "k", "r", 10, wall));
  EXPECT_TRUE(f.note("10.0.0.2", "unknown_key", "k", "r", 10, wall));    // its own allowance
  EXPECT_TRUE(f.note("10.0.0.1", "unknown_key", "k", "r", 1010, wall));  // refilled one
  EXPECT_FALSE(f.note("10.0.0.1", "unknown_key", "k", "r", 1020, wall));
  // Without a tally (no token): the same allowance.
  EXPECT_FALSE(f.note("10.0.0.1", "no_token", "", "r", 1030, wall, false));
}

TEST(AuthFailures, OneEntryPerAddressAndMinuteWithTheCount) {
  AuthFailures f(60, 1);
  const int64_t minute = 29000000LL * 60000;  // a whole minute, in ms
  for (int i = 0; i < 50; ++i) {
    f.note("10.0.0.1", i % 2 ? "wrong_secret" : "unknown_key", "k" + std::to_string(i % 6),
           "req" + std::to_string(i), i, minute + i);
  }
  f.note("10.0.0.2", "malformed_token", "", "other", 0, minute);
  EXPECT_TRUE(f.take_due(minute + 59999, false).empty());  // the minute is not over
  std::vector<AuditEntry> due = f.take_due(minute + 60000, false);
  ASSERT_EQ(due.size(), 2u);
  const AuditEntry& a = due[0];
  EXPECT_EQ(a.key_id, "unauthenticated");
  EXPECT_EQ(a.action, "auth_failed");
  EXPECT_EQ(a.outcome, 401);
  EXPECT_EQ(a.request_id, "req0");
  JsonTree d = parse_json_document(a.detail);
  ASSERT_TRUE(d);
  EXPECT_STREQ(cJSON_GetObjectItem(d.get(), "remote_addr")->valuestring, "10.0.0.1");
  EXPECT_EQ(cJSON_GetObjectItem(d.get(), "failures")->valueint, 50);
  EXPECT_EQ(cJSON_GetObjectItem(d.get(), "limited")->valueint, 49);
  const cJSON* reasons = cJSON_GetObjectItem(d.get(), "reasons");
  EXPECT_EQ(cJSON_GetObjectItem(reasons, "wrong_secret")->valueint, 25);
  EXPECT_EQ(cJSON_GetArraySize(cJSON_GetObjectItem(d.get(), "key_ids")), 4);
  EXPECT_TRUE(cJSON_IsTrue(cJSON_GetObjectItem(d.get(), "more_key_ids")));
  EXPECT_TRUE(f.take_due(minute + 120000, true).empty());  // taken once
  // A failure in a later minute moves the earlier tally out at once.
  f.note("10.0.0.1", "unknown_key", "", "a", 0, minute);
  f.note("10.0.0.1", "unknown_key", "", "b", 0, minute + 60000);
  EXPECT_EQ(f.take_due(minute + 60000, false).size(), 1u);
  EXPECT_EQ(f.take_due(minute + 60000, true).size(), 1u);  // a stop takes the current one
}

TEST(AuthFailures, AddressesBeyondTheBoundAreTalliedTogether) {
  AuthFailures f(6000, 10);
  for (size_t i = 0; i < AuthFailures::kMaxTallies + 500; ++i) {
    f.note("a" + std::to_string(i), "unknown_key", "", "r", 0, 0);
  }
  std::vector<AuditEntry> due = f.take_due(0, true);
  EXPECT_EQ(due.size(), AuthFailures::kMaxTallies + 1);
}

TEST(Options, AuthFailureRates) {
  long long n = 0;
  EXPECT_TRUE(parse_rate_per_minute("100r/s", n));
  EXPECT_EQ(n, 6000);
  EXPECT_TRUE(parse_rate_per_minute("600r/m", n));
  EXPECT_EQ(n, 600);
  for (const char* bad : {"", "r/s", "0r/s", "-1r/s", "10 r/s", "10r/h", "1e3r/s"}) {
    EXPECT_FALSE(parse_rate_per_minute(bad, n)) << bad;
  }
}

}  // namespace
}  // namespace tdapi
