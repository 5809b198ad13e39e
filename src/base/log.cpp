// log.cpp: renders LogFields as one JSON line and writes it to stderr atomically.
#include "base/log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "base/clock.h"
#include "base/json.h"

namespace tdapi {

static const char* level_name(LogLevel level) {
  switch (level) {
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarn:
      return "warn";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

std::string render_log_line(LogLevel level, const char* event, const LogFields& f) {
  std::string line;
  line.reserve(256);
  JsonWriter w(line);
  w.begin_object();
  w.field("ts", utc_timestamp_ms());
  w.field("level", level_name(level));
  w.field("event", event);
  if (!f.request_id.empty()) w.field("request_id", f.request_id);
  if (!f.method.empty()) w.field("method", f.method);
  if (!f.path.empty()) w.field("path", f.path);
  if (f.status != 0) w.field("status", f.status);
  if (f.duration_ms >= 0) w.field("duration_ms", f.duration_ms);
  if (!f.key_id.empty()) w.field("key_id", f.key_id);
  if (!f.test_id.empty()) w.field("test_id", f.test_id);
  if (!f.clinic_id.empty()) w.field("clinic_id", f.clinic_id);
  if (f.count >= 0) w.field("count", f.count);
  if (!f.txn.empty()) w.field("txn", f.txn);
  if (!f.reason.empty()) w.field("reason", f.reason);
  if (f.txn_id >= 0) w.field("txn_id", f.txn_id);
  if (!f.detail.empty()) w.field("detail", f.detail);
  w.end_object();
  line += '\n';
  return line;
}

namespace {
bool g_priority_prefix = false;
}  // namespace

void set_log_priority_prefix(bool on) { g_priority_prefix = on; }

void log_event(LogLevel level, const char* event, const LogFields& fields) {
  std::string line = render_log_line(level, event, fields);
  if (g_priority_prefix) {
    line.insert(0, level == LogLevel::kError ? "<3>" : level == LogLevel::kWarn ? "<4>" : "<6>");
  }
  // One write(2) per line keeps lines from several threads whole: lines are far shorter than
  // PIPE_BUF (4096), so a write to a pipe is atomic, and to an O_APPEND file one append.
  const char* p = line.data();
  size_t left = line.size();
  while (left > 0) {
    ssize_t n = write(STDERR_FILENO, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    p += n;
    left -= static_cast<size_t>(n);
  }
}

bool open_log_file(const std::string& path, std::string& error) {
  int fd = open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) {
    error = "cannot open log file " + path + ": " + std::strerror(errno);
    return false;
  }
  int rc = fd == STDERR_FILENO ? 0 : dup2(fd, STDERR_FILENO);
  int saved = errno;
  if (fd != STDERR_FILENO) close(fd);
  if (rc < 0) {
    error = "cannot redirect stderr to " + path + ": " + std::strerror(saved);
    return false;
  }
  return true;
}

}  // namespace tdapi
