// log.h: structured logging, one JSON object per line on stderr, written with one write(2).
//
// Only the fields of LogFields can appear in a line. There is deliberately no free-form
// key/value API: patient ids and test results must never reach a log, and the way to
// guarantee that is to have no field that could carry them.
#pragma once

#include <string>

namespace tdapi {

enum class LogLevel { kInfo, kWarn, kError };

struct LogFields {
  // Request context.
  std::string request_id;
  std::string method;
  std::string path;         // path only, never the query string (filters may carry patient ids)
  int status = 0;           // 0: absent
  double duration_ms = -1;  // < 0: absent
  std::string key_id;       // the access key that made the request (its public id, never the token)
  // Record ids (ids are not patient data).
  std::string test_id;
  std::string clinic_id;
  long long count = -1;  // rows listed / records in a batch; < 0: absent
  // Transaction outcome of a write: "commit" or "rollback", with the reason for a rollback.
  std::string txn;
  std::string reason;
  long long txn_id = -1;  // the group-commit transaction a request was part of
  // Free text written by the service itself (file names, SQLite messages); never request data.
  std::string detail;
};

// Writes {"ts":…,"level":…,"event":event, …fields that are set…}\n to stderr in one write(2).
// Safe to call from several threads. Errors writing stderr are ignored: this function can't fail.
void log_event(LogLevel level, const char* event, const LogFields& fields);

// With `on`, every line starts with its syslog priority ("<3>" error, "<4>" warn, "<6>" info):
// for stderr connected to the journal, which takes the prefix as the line's priority. Set once,
// before threads start.
void set_log_priority_prefix(bool on);

// Opens `path` for appending (created mode 0600, O_CLOEXEC) and puts it in place of stderr
// with dup2, which is atomic for concurrent log_event calls: each line goes whole to the old
// file or whole to the new one. Called at start and on SIGHUP (after the file was renamed for
// rotation). On failure stderr is left as it was and `error` says why.
bool open_log_file(const std::string& path, std::string& error);

// Renders the line log_event would write (without writing it). For tests.
std::string render_log_line(LogLevel level, const char* event, const LogFields& fields);

}  // namespace tdapi
