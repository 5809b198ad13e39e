// clock.h: wall-clock timestamps (UTC) and a monotonic stopwatch.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

namespace tdapi {

// Current UTC time as "YYYY-MM-DDTHH:MM:SS.mmmZ". This function can't fail.
std::string utc_timestamp_ms();

// Parses an RFC 3339 date-time ("2026-12-07T10:00:00Z", "2026-12-07T12:00:00.5+02:00"; `t` and
// `z` in lower case too; any number of fraction digits; seconds 60, a leap second, count as the
// next minute's first) into the stored form, UTC with milliseconds ("2026-12-07T10:00:00.000Z"),
// so that it compares as text with stored timestamps. A fraction finer than a millisecond rounds
// up to the next one: on millisecond timestamps a bound t <= x and x < t stay what they said.
// Returns false for anything else (a date alone, a missing offset, a day the month does not have,
// a year outside 0000..9999 once in UTC).
bool parse_rfc3339_utc_ms(std::string_view text, std::string& out);

// Milliseconds elapsed since `start` on the monotonic clock.
inline double elapsed_ms(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

// Seconds elapsed since `start` on the monotonic clock.
inline double seconds_since(std::chrono::steady_clock::time_point start) {
  return elapsed_ms(start) / 1000.0;
}

}  // namespace tdapi
