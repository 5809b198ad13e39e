#include "store/read_after.h"

#include <gtest/gtest.h>

namespace tdapi {
namespace {

TEST(CommitPosition, ParsesAndFormatsPostgresLogPositions) {
  uint64_t p = 0;
  ASSERT_TRUE(parse_commit_position("16/B374D848", p));
  EXPECT_EQ(p, 0x16B374D848ull);
  EXPECT_EQ(format_commit_position(p), "16/B374D848");
  ASSERT_TRUE(parse_commit_position("0/0", p));
  EXPECT_EQ(p, 0u);
  ASSERT_TRUE(parse_commit_position("FFFFFFFF/ffffffff", p));
  EXPECT_EQ(p, ~0ull);
  EXPECT_EQ(format_commit_position(0x100000000ull), "1/0");
}

TEST(CommitPosition, RefusesAnythingElse) {
  uint64_t p = 7;
  for (const char* bad : {"", "/", "1/", "/1", "1", "123456789/1", "1/123456789", "1/2/3", "-1/2",
                          "+1/2", " 1/2", "1/2 ", "0x1/2", "g/1"}) {
    EXPECT_FALSE(parse_commit_position(bad, p)) << bad;
  }
}

TEST(ReplicaReadScope, HoldsThePositionForThisThreadOnlyWhileItLives) {
  EXPECT_FALSE(ReplicaReadScope::active());
  {
    ReplicaReadScope outer(5);
    EXPECT_TRUE(ReplicaReadScope::active());
    EXPECT_EQ(ReplicaReadScope::after(), 5u);
    {
      ReplicaReadScope inner(0);
      EXPECT_EQ(ReplicaReadScope::after(), 0u);
    }
    EXPECT_EQ(ReplicaReadScope::after(), 5u);
  }
  EXPECT_FALSE(ReplicaReadScope::active());
  EXPECT_EQ(ReplicaReadScope::after(), 0u);
}

TEST(ReplicaReadScope, StaysOnThePrimaryForTheRestOfTheScopeOnly) {
  ReplicaReadScope::stay_on_primary();  // outside any scope: nothing
  EXPECT_FALSE(ReplicaReadScope::on_primary());
  {
    ReplicaReadScope outer(5);
    EXPECT_FALSE(ReplicaReadScope::on_primary());
    ReplicaReadScope::stay_on_primary();
    EXPECT_TRUE(ReplicaReadScope::on_primary());
    {
      ReplicaReadScope inner(0);
      EXPECT_FALSE(ReplicaReadScope::on_primary());
    }
    EXPECT_TRUE(ReplicaReadScope::on_primary());
  }
  EXPECT_FALSE(ReplicaReadScope::on_primary());
  ReplicaReadScope next(5);
  EXPECT_FALSE(ReplicaReadScope::on_primary());
}

}  // namespace
}  // namespace tdapi
