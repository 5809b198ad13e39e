// status.cpp: names of storage outcomes.
#include "store/status.h"

namespace tdapi {

const char* Status::name() const {
  switch (code_) {
    case StatusCode::kOk:
      return "ok";
    case StatusCode::kDuplicate:
      return "duplicate";
    case StatusCode::kNotFound:
      return "not_found";
    case StatusCode::kBusy:
      return "busy";
    case StatusCode::kFull:
      return "full";
    case StatusCode::kCorrupt:
      return "corrupt";
    case StatusCode::kReadOnly:
      return "read_only";
    case StatusCode::kIoError:
      return "io_error";
    case StatusCode::kUnavailable:
      return "unavailable";
    case StatusCode::kOutcomeUnknown:
      return "outcome_unknown";
    case StatusCode::kFenced:
      return "fenced";
    case StatusCode::kInternal:
      return "internal";
  }
  return "internal";
}

}  // namespace tdapi
