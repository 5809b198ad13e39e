#include "store/read_after.h"

#include <cstdio>

namespace tdapi {

namespace {

thread_local bool replica_reads = false;
thread_local uint64_t replica_reads_after = 0;
thread_local bool replica_reads_on_primary = false;

bool parse_hex_word(std::string_view text, uint64_t& out) {
  if (text.empty() || text.size() > 8) return false;
  out = 0;
  for (char c : text) {
    int digit;
    if (c >= '0' && c <= '9') {
      digit = c - '0';
    } else if (c >= 'A' && c <= 'F') {
      digit = c - 'A' + 10;
    } else if (c >= 'a' && c <= 'f') {
      digit = c - 'a' + 10;
    } else {
      return false;
    }
    out = out * 16 + static_cast<uint64_t>(digit);
  }
  return true;
}

}  // namespace

bool parse_commit_position(std::string_view text, uint64_t& out) {
  const size_t slash = text.find('/');
  if (slash == std::string_view::npos) return false;
  uint64_t high = 0, low = 0;
  if (!parse_hex_word(text.substr(0, slash), high) ||
      !parse_hex_word(text.substr(slash + 1), low)) {
    return false;
  }
  out = high << 32 | low;
  return true;
}

std::string format_commit_position(uint64_t position) {
  char text[24];
  std::snprintf(text, sizeof text, "%X/%X", static_cast<unsigned>(position >> 32),
                static_cast<unsigned>(position & 0xFFFFFFFFu));
  return text;
}

ReplicaReadScope::ReplicaReadScope(uint64_t after)
    : previous_active_(replica_reads),
      previous_after_(replica_reads_after),
      previous_on_primary_(replica_reads_on_primary) {
  replica_reads = true;
  replica_reads_after = after;
  replica_reads_on_primary = false;
}

ReplicaReadScope::~ReplicaReadScope() {
  replica_reads = previous_active_;
  replica_reads_after = previous_after_;
  replica_reads_on_primary = previous_on_primary_;
}

void ReplicaReadScope::stay_on_primary() {
  if (replica_reads) replica_reads_on_primary = true;
}

bool ReplicaReadScope::on_primary() { return replica_reads && replica_reads_on_primary; }

bool ReplicaReadScope::active() { return replica_reads; }

uint64_t ReplicaReadScope::after() { return replica_reads_after; }

}  // namespace tdapi
