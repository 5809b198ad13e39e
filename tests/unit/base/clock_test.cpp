// clock_test.cpp: RFC 3339 parsing into the stored UTC millisecond form.
#include "base/clock.h"

#include <gtest/gtest.h>

namespace tdapi {
namespace {

std::string utc(std::string_view text) {
  std::string out = "unchanged";
  if (!parse_rfc3339_utc_ms(text, out)) return "refused";
  return out;
}

TEST(Rfc3339, UtcFormsNormalizeToMilliseconds) {
  EXPECT_EQ(utc("2026-12-07T10:00:00Z"), "2026-12-07T10:00:00.000Z");
  EXPECT_EQ(utc("2026-12-07t10:00:00z"), "2026-12-07T10:00:00.000Z");
  EXPECT_EQ(utc("2026-12-07T10:00:00.5Z"), "2026-12-07T10:00:00.500Z");
  EXPECT_EQ(utc("2026-12-07T10:00:00.123Z"), "2026-12-07T10:00:00.123Z");
  EXPECT_EQ(utc("2026-12-07T10:00:00.123000000Z"), "2026-12-07T10:00:00.123Z");
}

TEST(Rfc3339, OffsetsMoveToUtcAcrossDaysMonthsAndYears) {
  EXPECT_EQ(utc("2026-12-07T12:00:00+02:00"), "2026-12-07T10:00:00.000Z");
  EXPECT_EQ(utc("2026-12-07T10:00:00-05:30"), "2026-12-07T15:30:00.000Z");
  EXPECT_EQ(utc("2026-01-01T01:00:00+02:00"), "2025-12-31T23:00:00.000Z");
  EXPECT_EQ(utc("2026-12-31T23:30:00-01:00"), "2027-01-01T00:30:00.000Z");
  EXPECT_EQ(utc("2026-12-07T10:00:00+00:00"), "2026-12-07T10:00:00.000Z");
  EXPECT_EQ(utc("2026-12-07T10:00:00-00:00"), "2026-12-07T10:00:00.000Z");
}

TEST(Rfc3339, FinerFractionsRoundUpToTheNextMillisecond) {
  EXPECT_EQ(utc("2026-12-07T10:00:00.0001Z"), "2026-12-07T10:00:00.001Z");
  EXPECT_EQ(utc("2026-12-07T10:00:00.1231Z"), "2026-12-07T10:00:00.124Z");
  EXPECT_EQ(utc("2026-12-07T10:00:00.1230Z"), "2026-12-07T10:00:00.123Z");
  EXPECT_EQ(utc("2026-12-31T23:59:59.9999Z"), "2027-01-01T00:00:00.000Z");
}

TEST(Rfc3339, LeapDaysAndLeapSeconds) {
  EXPECT_EQ(utc("2024-02-29T00:00:00Z"), "2024-02-29T00:00:00.000Z");
  EXPECT_EQ(utc("2000-02-29T00:00:00Z"), "2000-02-29T00:00:00.000Z");
  EXPECT_EQ(utc("2024-03-01T00:30:00+01:00"), "2024-02-29T23:30:00.000Z");
  EXPECT_EQ(utc("2026-02-29T00:00:00Z"), "refused");
  EXPECT_EQ(utc("1900-02-29T00:00:00Z"), "refused");
  EXPECT_EQ(utc("2016-12-31T23:59:60Z"), "2017-01-01T00:00:00.000Z");
}

TEST(Rfc3339, RefusesOtherForms) {
  for (const char* bad : {"",
                          "2026-12-07",
                          "2026-12-07T10:00:00",
                          "2026-12-07 10:00:00Z",
                          "2026-12-07T10:00Z",
                          "2026-12-07T10:00:00.Z",
                          "2026-12-07T10:00:00+0200",
                          "2026-12-07T10:00:00+02",
                          "2026-13-07T10:00:00Z",
                          "2026-00-07T10:00:00Z",
                          "2026-12-00T10:00:00Z",
                          "2026-04-31T10:00:00Z",
                          "2026-12-07T24:00:00Z",
                          "2026-12-07T10:60:00Z",
                          "2026-12-07T10:00:61Z",
                          "2026-12-07T10:00:00+24:00",
                          "2026-12-07T10:00:00Z ",
                          " 2026-12-07T10:00:00Z",
                          "26-12-07T10:00:00Z",
                          "2026-12-07T10:00:00ZZ",
                          "+2026-12-07T10:00:00Z",
                          "2026-1-07T10:00:00Z",
                          "0000-01-01T00:00:00+00:01",
                          "9999-12-31T23:59:59-00:01"}) {
    EXPECT_EQ(utc(bad), "refused") << bad;
  }
  EXPECT_EQ(utc("0000-01-01T00:00:00Z"), "0000-01-01T00:00:00.000Z");
  EXPECT_EQ(utc("9999-12-31T23:59:59.999Z"), "9999-12-31T23:59:59.999Z");
}

}  // namespace
}  // namespace tdapi
