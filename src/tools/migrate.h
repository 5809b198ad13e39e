// migrate.h: `testdata-api migrate --from PATH.db --to postgresql://…`: copies an SQLite
// database (tests, keys, the audit trail, the cursor key) into PostgreSQL and checks the copy.
#pragma once

#include <string>

namespace tdapi {

class Store;

// Counts and a checksum over the ordered documents of one store: chained SHA-256 of
// seq, test_id and doc of every test in seq order, so two stores agree only when they hold the
// same tests in the same order.
struct StoreDigest {
  long long tests = 0;
  std::string checksum;
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
