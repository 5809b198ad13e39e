// migrate.h: `testdata-api migrate --from PATH.db --to postgresql://…`: copies an SQLite
// database (tests and their versions, keys, the audit trail, the cursor key) into PostgreSQL and
// checks the copy.
#pragma once

#include <string>

namespace tdapi {

class Store;

// Counts and checksums over the ordered contents of one store: chained SHA-256 of seq,
// test_id, doc, status, version and updated_at of every test in seq order, and of every column
// of every version in change_seq order, so two stores agree only when they hold the same tests
// and the same versions in the same order.
struct StoreDigest {
  long long tests = 0;
  std::string checksum;
  long long versions = 0;
  std::string versions_checksum;
  long long audit_entries = 0;
  std::string audit_head;  // hash of the last audit entry
  long long keys = 0;
};

// Reads the whole store (in pages). Returns an empty string on success, else what failed.
std::string digest_store(Store& store, StoreDigest& out);

// The command: resumable (a second run continues after the highest seq already copied, each
// page of --batch tests committed on its own), refuses a target that holds other data, prints
// one JSON object with both digests, exits 0 when they agree, 1 when not or on failure, 2 on
// bad usage.
int run_migrate_command(int argc, char** argv);

}  // namespace tdapi
