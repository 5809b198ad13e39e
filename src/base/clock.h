// clock.h: wall-clock timestamps (UTC) and a monotonic stopwatch.
#pragma once

#include <chrono>
#include <string>

namespace tdapi {

// Current UTC time as "YYYY-MM-DDTHH:MM:SS.mmmZ". This function can't fail.
std::string utc_timestamp_ms();

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
