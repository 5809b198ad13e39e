// status.h: the outcome of a storage operation. Storage only: what each code means to a client
// over HTTP is said on the HTTP side (http/storage_status.h).
#pragma once

#include <string>
#include <utility>

namespace tdapi {

// Errors are values. The codes say what happened to the data, in storage's terms; the HTTP
// side maps each onto one answer (http/storage_status.h).
enum class StatusCode {
  kOk,
  kDuplicate,  // the test_id already exists; nothing was written
  kNotFound,
  kBusy,            // the database stayed locked past busy_timeout
  kFull,            // disk or database size limit reached; rolled back
  kCorrupt,         // SQLite reported a malformed database; logged loudly
  kReadOnly,        // the database file or directory cannot be written
  kIoError,         // the disk failed a read or write (not for lack of space); rolled back
  kUnavailable,     // the database server cannot be reached (PostgreSQL: connection lost,
                    // server restarting or shutting down, too many connections)
  kOutcomeUnknown,  // a write's commit was sent but not confirmed in time (PostgreSQL): it may
                    // or may not be stored; the client must look before retrying
  kFenced,          // PostgreSQL: the read-write server is a former primary, or another
                    // cluster, than the one the service last wrote to (failover fencing)
  kInternal,        // anything else; rolled back
};

class Status {
 public:
  Status() = default;
  static Status Ok() { return Status(); }
  static Status Duplicate(std::string m) { return Status(StatusCode::kDuplicate, std::move(m)); }
  static Status NotFound(std::string m) { return Status(StatusCode::kNotFound, std::move(m)); }
  static Status Busy(std::string m) { return Status(StatusCode::kBusy, std::move(m)); }
  static Status Full(std::string m) { return Status(StatusCode::kFull, std::move(m)); }
  static Status Corrupt(std::string m) { return Status(StatusCode::kCorrupt, std::move(m)); }
  static Status ReadOnly(std::string m) { return Status(StatusCode::kReadOnly, std::move(m)); }
  static Status IoError(std::string m) { return Status(StatusCode::kIoError, std::move(m)); }
  static Status Unavailable(std::string m) {
    return Status(StatusCode::kUnavailable, std::move(m));
  }
  static Status OutcomeUnknown(std::string m) {
    return Status(StatusCode::kOutcomeUnknown, std::move(m));
  }
  static Status Fenced(std::string m) { return Status(StatusCode::kFenced, std::move(m)); }
  static Status Internal(std::string m) { return Status(StatusCode::kInternal, std::move(m)); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  // Detail for logs (never sent to clients: it may name files). Empty when ok().
  const std::string& message() const { return message_; }
  // A short stable word for logs and metrics: "ok", "duplicate", "busy", "full", ...
  const char* name() const;

 private:
  Status(StatusCode c, std::string m) : code_(c), message_(std::move(m)) {}
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

}  // namespace tdapi
