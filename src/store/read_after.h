// read_after.h: read-your-writes across replicas. A write's answer carries the commit position
// of its transaction (X-Commit-Position, a PostgreSQL WAL position "X/Y" in hex); a read that
// presents it must see that commit. Stores with read replicas (PgStore with DATABASE_READ_URL)
// wait, bounded, for a replica to replay past it, else read from the primary; a store without
// replicas reads what it committed and never needs it.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace tdapi {

// "16/B374D848" <-> 0x16B374D848 (PostgreSQL's pg_lsn text form). parse is strict: 1-8 hex
// digits, '/', 1-8 hex digits; false for anything else.
bool parse_commit_position(std::string_view text, uint64_t& out);
// The position a write answers when its own could not be read after its COMMIT: no replica
// reaches it, so a read that sends it back goes to the primary at once ("FFFFFFFF/FFFFFFFF").
constexpr uint64_t kPositionUnknown = ~uint64_t{0};
std::string format_commit_position(uint64_t position);

// While the scope lives, the single reads and listings of this thread may go to a read replica
// (the API's GET handlers open one; a write's own reads never do), and must see the commit at
// `after` (0: any replica state will do).
class ReplicaReadScope {
 public:
  explicit ReplicaReadScope(uint64_t after);
  ~ReplicaReadScope();
  ReplicaReadScope(const ReplicaReadScope&) = delete;
  ReplicaReadScope& operator=(const ReplicaReadScope&) = delete;

  static bool active();
  static uint64_t after();
  // Once a read of the scope went to the primary (no replica had its position in time), its
  // later reads (a listing's next pages) go there too: at once, and never to a replica older
  // than the pages before.
  static void stay_on_primary();
  static bool on_primary();

 private:
  bool previous_active_;
  uint64_t previous_after_;
  bool previous_on_primary_;
};

}  // namespace tdapi
