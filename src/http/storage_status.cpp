// storage_status.cpp: HTTP statuses and client messages of storage outcomes.
#include "http/storage_status.h"

namespace tdapi {

int http_status_for(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return 200;
    case StatusCode::kDuplicate:
      return 409;
    case StatusCode::kNotFound:
      return 404;
    case StatusCode::kBusy:
      return 503;
    case StatusCode::kFull:
      return 507;
    case StatusCode::kCorrupt:
      return 503;
    case StatusCode::kReadOnly:
      return 503;
    case StatusCode::kIoError:
      return 503;
    case StatusCode::kUnavailable:
      return 503;
    case StatusCode::kOutcomeUnknown:
      return 503;
    case StatusCode::kFenced:
      return 503;
    case StatusCode::kInternal:
      return 500;
  }
  return 500;
}

const char* client_message_for(StatusCode code) {
  switch (code) {
    case StatusCode::kOk:
      return "ok";
    case StatusCode::kDuplicate:
      return "test_id already exists";
    case StatusCode::kNotFound:
      return "not found";
    case StatusCode::kBusy:
      return "storage is busy, retry later";
    case StatusCode::kFull:
      return "storage is full";
    case StatusCode::kCorrupt:
      return "storage is unavailable (database damaged)";
    case StatusCode::kReadOnly:
      return "storage is unavailable (read-only)";
    case StatusCode::kIoError:
      return "storage I/O error";
    case StatusCode::kUnavailable:
      return "storage is unavailable (database unreachable), retry later";
    case StatusCode::kOutcomeUnknown:
      return "outcome unknown: the database did not confirm this write in time; it may or may "
             "not be stored: check GET /tests/{id} before retrying";
    case StatusCode::kFenced:
      return "storage is unavailable (failover fencing: the database server reached is a former "
             "primary, or another cluster, than the one this service last wrote to; writes are "
             "refused there)";
    case StatusCode::kInternal:
      return "internal storage error";
  }
  return "internal error";
}

}  // namespace tdapi
