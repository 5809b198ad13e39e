// clock.cpp: UTC timestamps with millisecond precision.
#include "base/clock.h"

#include <cstdio>
#include <ctime>

namespace tdapi {

std::string utc_timestamp_ms() {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  // Every log line carries a timestamp: the formatted second is kept per thread, so a line
  // costs only its milliseconds (gmtime_r and strftime were a twentieth of a small read's CPU).
  thread_local time_t cached_second = -1;
  thread_local char cached[24];  // "YYYY-MM-DDTHH:MM:SS"
  thread_local size_t cached_len = 0;
  if (ts.tv_sec != cached_second) {
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    cached_len = strftime(cached, sizeof cached, "%Y-%m-%dT%H:%M:%S", &tm);
    cached_second = ts.tv_sec;
  }
  long ms = ts.tv_nsec / 1000000;
  std::string out(cached, cached_len);
  const char tail[] = {'.', static_cast<char>('0' + ms / 100),
                       static_cast<char>('0' + ms / 10 % 10), static_cast<char>('0' + ms % 10),
                       'Z'};
  out.append(tail, sizeof tail);
  return out;
}

}  // namespace tdapi

namespace tdapi {

namespace {

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
long long days_from_civil(long long y, unsigned m, unsigned d) {
  y -= m <= 2;
  const long long era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<long long>(doe) - 719468;
}

// The date of a day count (civil_from_days).
void civil_from_days(long long z, long long& y, unsigned& m, unsigned& d) {
  z += 719468;
  const long long era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  d = doy - (153 * mp + 2) / 5 + 1;
  m = mp < 10 ? mp + 3 : mp - 9;
  y = static_cast<long long>(yoe) + era * 400 + (m <= 2);
}

bool leap_year(long long y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

// Reads exactly n digits at text[at..]; advances at.
bool digits(std::string_view text, size_t& at, size_t n, unsigned& out) {
  if (text.size() < at + n) return false;
  out = 0;
  for (size_t i = 0; i < n; ++i) {
    const char c = text[at + i];
    if (c < '0' || c > '9') return false;
    out = out * 10 + static_cast<unsigned>(c - '0');
  }
  at += n;
  return true;
}

bool expect(std::string_view text, size_t& at, char c) {
  if (at >= text.size() || text[at] != c) return false;
  ++at;
  return true;
}

void two(std::string& out, unsigned v) {
  out += static_cast<char>('0' + v / 10);
  out += static_cast<char>('0' + v % 10);
}

}  // namespace

bool parse_rfc3339_utc_ms(std::string_view text, std::string& out) {
  size_t at = 0;
  unsigned year, month, day, hour, minute, second;
  if (!digits(text, at, 4, year) || !expect(text, at, '-') || !digits(text, at, 2, month) ||
      !expect(text, at, '-') || !digits(text, at, 2, day)) {
    return false;
  }
  if (at >= text.size() || (text[at] != 'T' && text[at] != 't')) return false;
  ++at;
  if (!digits(text, at, 2, hour) || !expect(text, at, ':') || !digits(text, at, 2, minute) ||
      !expect(text, at, ':') || !digits(text, at, 2, second)) {
    return false;
  }
  static const unsigned kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (month < 1 || month > 12 || day < 1) return false;
  if (day > kDays[month - 1] + (month == 2 && leap_year(year) ? 1 : 0)) return false;
  if (hour > 23 || minute > 59 || second > 60) return false;
  long long ms = 0;
  if (at < text.size() && text[at] == '.') {
    ++at;
    size_t n = 0;
    bool finer = false;
    for (; at < text.size() && text[at] >= '0' && text[at] <= '9'; ++at, ++n) {
      if (n < 3) {
        ms = ms * 10 + (text[at] - '0');
      } else {
        finer = finer || text[at] != '0';
      }
    }
    if (n == 0) return false;
    for (size_t k = n; k < 3; ++k) ms *= 10;
    if (finer) ++ms;  // round up: see clock.h
  }
  long long offset_minutes = 0;
  if (at >= text.size()) return false;
  if (text[at] == 'Z' || text[at] == 'z') {
    ++at;
  } else if (text[at] == '+' || text[at] == '-') {
    const bool minus = text[at] == '-';
    ++at;
    unsigned oh, om;
    if (!digits(text, at, 2, oh) || !expect(text, at, ':') || !digits(text, at, 2, om) || oh > 23 ||
        om > 59) {
      return false;
    }
    offset_minutes = (minus ? -1 : 1) * static_cast<long long>(oh * 60 + om);
  } else {
    return false;
  }
  if (at != text.size()) return false;
  const long long day_ms = 86400000LL;
  long long t = days_from_civil(year, month, day) * day_ms + hour * 3600000LL + minute * 60000LL +
                second * 1000LL + ms - offset_minutes * 60000LL;
  long long days = t >= 0 ? t / day_ms : -((-t + day_ms - 1) / day_ms);
  long long rest = t - days * day_ms;
  long long y;
  unsigned m, d;
  civil_from_days(days, y, m, d);
  if (y < 0 || y > 9999) return false;
  out.clear();
  out.reserve(24);
  two(out, static_cast<unsigned>(y / 100));
  two(out, static_cast<unsigned>(y % 100));
  out += '-';
  two(out, m);
  out += '-';
  two(out, d);
  out += 'T';
  two(out, static_cast<unsigned>(rest / 3600000));
  out += ':';
  two(out, static_cast<unsigned>(rest / 60000 % 60));
  out += ':';
  two(out, static_cast<unsigned>(rest / 1000 % 60));
  out += '.';
  const unsigned msec = static_cast<unsigned>(rest % 1000);
  out += static_cast<char>('0' + msec / 100);
  two(out, msec % 100);
  out += 'Z';
  return true;
}

}  // namespace tdapi
