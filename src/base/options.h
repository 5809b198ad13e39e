// options.h: the app's command line, exit statuses and resource sizing. Pure: unit-tested.
#pragma once

#include <string>

namespace tdapi {

// Exit statuses of testdata-api (scripts/run.sh acts on them).
constexpr int kExitOk = 0;               // clean stop (SIGTERM/SIGINT)
constexpr int kExitFailure = 1;          // failed while serving (stop timeout, accept loop
                                         // broken): the supervisor restarts the app
constexpr int kExitUsage = 2;            // bad command line: not restarted
constexpr int kExitStartupFailure = 78;  // start-up failed (sysexits' EX_CONFIG: damaged or
                                         // unwritable database, socket, user, descriptors,
                                         // log file): not restarted

// Worker threads by default: 32 per core (they mostly wait), at most kMaxDefaultThreads: each
// thread may hold a reader connection and a FastCGI connection (descriptors, memory).
constexpr int kMaxDefaultThreads = 256;
constexpr int kMaxThreads = 1024;
int default_thread_count(unsigned cores);

// Descriptors the app may need with `threads` workers: per worker one FastCGI connection and
// one SQLite reader connection (database and WAL file), plus the writer, checkpointer,
// listening socket, log and headroom.
// Each long poll held (FEED_MAX_WAITING at most) keeps its FastCGI connection: one more each.
long long required_open_files(int threads, int feed_max_waiting = 0);

struct AppOptions {
  std::string socket_path;
  int socket_mode = 0600;         // --socket-mode: 0600, or 0660 for a web server in the group
  std::string db_path;            // --db: the SQLite database file
  std::string database_read_url;  // DATABASE_READ_URL: PostgreSQL read replicas (none: "")
  std::string data_dir;      // DATA_DIR (serve): the service's own files (PostgreSQL: the fence)
  std::string database_url;  // --database-url: PostgreSQL (libpq URI or keywords) instead
  bool transaction_pooler = false;        // DATABASE_POOLER=transaction (serve only)
  int round_trip_timeout_ms = 10000;      // DATABASE_ROUND_TRIP_TIMEOUT_MS (serve only)
  std::string synchronous_commit = "on";  // DATABASE_SYNCHRONOUS_COMMIT (serve only)
  int threads = 0;
  int busy_timeout_ms = 5000;
  long long max_db_pages = 0;
  int stop_timeout_ms = 10000;
  // --feed-max-waiting N: long polls of the change feed held at once (0..100000); past it, a
  // long poll is answered at once with what there is.
  int feed_max_waiting = 1000;
  std::string user;      // --user: drop to this user after start (as root)
  std::string log_file;  // --log-file: append the log here (reopened on SIGHUP)
  bool auth = false;     // --auth on|off: bearer keys required (off: the local mode)
  bool audit = true;     // --audit on|off: the audit trail (off only with --auth off)
  // --audit-reads durable|crash-safe: a read's audit entry on disk before the answer, or
  // committed without waiting for the disk (on disk within 100 ms).
  bool audit_reads_durable = false;
  // --auth-failure-rate NNNr/s|NNNr/m and --auth-failure-burst N: failed authentications
  // allowed per client address (nginx's ANON_RATE/ANON_BURST); past them, 429.
  long long auth_failure_rate_per_minute = 6000;
  long long auth_failure_burst = 200;
};

// Parses a rate as nginx writes it, "100r/s" or "600r/m", into requests per minute (1 to
// 60,000,000). False for anything else.
bool parse_rate_per_minute(const std::string& text, long long& per_minute);

// Parses argv into `out` (defaults first, threads from `cores`). Numbers must be whole decimal
// integers in range ("5s", "", "1e3", "0x10" are refused). Returns false with `error` set.
bool parse_options(int argc, const char* const* argv, unsigned cores, AppOptions& out,
                   std::string& error);

// Strict decimal integer in [min, max]; false for anything else (sign, spaces, units, overflow).
bool parse_integer(const char* text, long long min, long long max, long long& out);

}  // namespace tdapi
