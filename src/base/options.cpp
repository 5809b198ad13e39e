// options.cpp: command line parsing and resource sizing for main.
#include "base/options.h"

#include <cctype>
#include <cerrno>
#include <cstdlib>

namespace tdapi {

int default_thread_count(unsigned cores) {
  if (cores == 0) cores = 2;
  unsigned long long n = 32ULL * cores;
  return static_cast<int>(n > kMaxDefaultThreads ? kMaxDefaultThreads : n);
}

long long required_open_files(int threads, int feed_max_waiting) {
  return 4LL * threads + feed_max_waiting + 64;
}

bool parse_integer(const char* text, long long min, long long max, long long& out) {
  if (text == nullptr || *text == '\0') return false;
  const char* p = text;
  if (*p == '-') ++p;
  if (!std::isdigit(static_cast<unsigned char>(*p))) return false;
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(text, &end, 10);
  if (errno != 0 || end == text || *end != '\0') return false;
  if (v < min || v > max) return false;
  out = v;
  return true;
}

bool parse_rate_per_minute(const std::string& text, long long& per_minute) {
  if (text.size() < 4) return false;
  std::string unit = text.substr(text.size() - 3);
  if (unit != "r/s" && unit != "r/m") return false;
  std::string digits = text.substr(0, text.size() - 3);
  if (digits.empty() || digits[0] == '-') return false;
  long long n = 0;
  if (!parse_integer(digits.c_str(), 1, 1000000, n)) return false;
  per_minute = unit == "r/s" ? n * 60 : n;
  return true;
}

bool parse_options(int argc, const char* const* argv, unsigned cores, AppOptions& out,
                   std::string& error) {
  out = AppOptions{};
  out.threads = default_thread_count(cores);
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (i + 1 >= argc) {
      error = "missing value for " + arg;
      return false;
    }
    const char* value = argv[++i];
    long long n = 0;
    auto number = [&](long long min, long long max) {
      if (parse_integer(value, min, max, n)) return true;
      error = arg + " must be a whole number from " + std::to_string(min) + " to " +
              std::to_string(max) + ", not '" + value + "'";
      return false;
    };
    if (arg == "--socket") {
      out.socket_path = value;
    } else if (arg == "--socket-mode") {
      // Octal; the owner always reads and writes, the group may, others never.
      std::string v = value;
      if (v == "0600" || v == "600") {
        out.socket_mode = 0600;
      } else if (v == "0660" || v == "660") {
        out.socket_mode = 0660;
      } else {
        error = "--socket-mode must be 0600 or 0660 (group may connect), not '" + v + "'";
        return false;
      }
    } else if (arg == "--db") {
      out.db_path = value;
    } else if (arg == "--database-url") {
      out.database_url = value;
    } else if (arg == "--threads") {
      if (!number(1, kMaxThreads)) return false;
      out.threads = static_cast<int>(n);
    } else if (arg == "--busy-timeout-ms") {
      if (!number(0, 3600000)) return false;
      out.busy_timeout_ms = static_cast<int>(n);
    } else if (arg == "--max-db-pages") {
      if (!number(0, 4294967294LL)) return false;
      out.max_db_pages = n;
    } else if (arg == "--stop-timeout-ms") {
      if (!number(0, 3600000)) return false;
      out.stop_timeout_ms = static_cast<int>(n);
    } else if (arg == "--feed-max-waiting") {
      if (!number(0, 100000)) return false;
      out.feed_max_waiting = static_cast<int>(n);
    } else if (arg == "--auth-failure-rate") {
      if (!parse_rate_per_minute(value, out.auth_failure_rate_per_minute)) {
        error = arg + " must look like 100r/s or 600r/m (1 to 1000000), not '" + value + "'";
        return false;
      }
    } else if (arg == "--auth-failure-burst") {
      if (!number(0, 1000000)) return false;
      out.auth_failure_burst = n;
    } else if (arg == "--user") {
      out.user = value;
    } else if (arg == "--log-file") {
      out.log_file = value;
    } else if (arg == "--auth" || arg == "--audit") {
      std::string v = value;
      if (v != "on" && v != "off") {
        error = arg + " must be on or off, not '" + v + "'";
        return false;
      }
      (arg == "--auth" ? out.auth : out.audit) = v == "on";
    } else if (arg == "--audit-reads") {
      std::string v = value;
      if (v != "durable" && v != "crash-safe") {
        error = "--audit-reads must be durable or crash-safe, not '" + v + "'";
        return false;
      }
      out.audit_reads_durable = v == "durable";
    } else {
      error = "unknown option " + arg;
      return false;
    }
  }
  if (out.socket_path.empty() || out.db_path.empty() == out.database_url.empty()) {
    error = "--socket and one of --db (SQLite) or --database-url (PostgreSQL) are required";
    return false;
  }
  if (!out.database_url.empty() && out.max_db_pages > 0) {
    error = "--max-db-pages caps an SQLite file; PostgreSQL's size is the server's to manage";
    return false;
  }
  if (out.auth && !out.audit) {
    error = "--audit off is only allowed with --auth off (the local mode)";
    return false;
  }
  return true;
}

}  // namespace tdapi
