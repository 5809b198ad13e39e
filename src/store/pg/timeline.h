// timeline.h: which history of a PostgreSQL cluster a write goes to, and the fence that keeps
// the service's writes off a history it has left (failover fencing).
//
// A server's history is its system identifier (pg_control_system(): the cluster, shared by
// every standby made from it) and its WAL timeline (a promotion starts a higher one). The
// service remembers the highest (system, timeline) it has written to in a file beside its data
// (DATA_DIR/postgresql-timeline, shared by the nodes of one DATA_DIR) and refuses to write to a
// read-write server of another system, or on an older timeline: a former primary started again
// after a standby was promoted (split brain).
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "store/status.h"

namespace tdapi {

struct ServerTimeline {
  std::string system_identifier;  // decimal, as pg_control_system() shows it
  long long timeline = 0;         // 0: not known
  bool known() const { return timeline > 0 && !system_identifier.empty(); }
  bool operator==(const ServerTimeline& o) const {
    return timeline == o.timeline && system_identifier == o.system_identifier;
  }
  bool operator!=(const ServerTimeline& o) const { return !(*this == o); }
  // "system 7716566631266182715, timeline 2"
  std::string text() const;
  // "7716566631266182715:2", as the meta table and the fence file hold it.
  std::string key() const;
};

// Parses ServerTimeline::key(); false when `key` is not one.
bool parse_timeline_key(std::string_view key, ServerTimeline& out);

// The timeline of a WAL file name (pg_walfile_name: its first 8 hex digits); false when `name`
// is not a WAL file name.
bool timeline_of_walfile(std::string_view name, long long& timeline);

// Why a write to `server` must be refused when the service last wrote to `fence`, or "" when it
// may go (no fence yet, the same history, or a later timeline of the same system).
std::string fence_refusal(const ServerTimeline& fence, const ServerTimeline& server);

// `conninfo` (a libpq URI or keyword/value string) without the hosts in `skip` ("HOST:PORT",
// as PQhost and PQport name a connection's), as a keyword/value string: a multi-host URL whose
// first read-write host is a fenced former primary leads to the others. conninfo itself when
// it names fewer than two hosts, when none of them is to be skipped, or when all of them are.
std::string without_hosts(const std::string& conninfo, const std::vector<std::string>& skip);

// The fence file: one line, ServerTimeline::key(). load_fence: a missing file is no fence
// (out unknown); a file that is not a fence is an error. save_fence writes a temp file beside
// it, fsyncs, renames it over the old one and fsyncs the directory (never through a link).
Status load_fence(const std::string& path, ServerTimeline& out);
Status save_fence(const std::string& path, const ServerTimeline& fence);

// Moves the fence at `path` to `server`, under an exclusive lock (flock of PATH.lock) shared by
// the nodes of one DATA_DIR, against the file as it is then: another node may have moved it
// further since it was read. `now` is the fence afterwards: `server`, or the newer one found
// (then fence_refusal(now, server) says why not).
Status advance_fence(const std::string& path, const ServerTimeline& server, ServerTimeline& now);
// What tells one state of the fence file from another without reading it (device, inode, change
// time, size; "" when it cannot be stat'ed): a node reads the file again when it changed.
std::string fence_file_stamp(const std::string& path);

}  // namespace tdapi
