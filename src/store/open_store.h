// open_store.h: the one place that knows both backends. A target is what users write: an
// SQLite file path, or a PostgreSQL URL (base/url.h tells them apart).
#pragma once

#include <memory>
#include <string>

#include "base/config.h"
#include "store/store.h"
#include "store/write_engine.h"

namespace tdapi {

// Who opens the store; each role sets the backend's options the way it needs them.
enum class StoreRole {
  kService,          // the API server: creates or migrates the schema, pools readers
  kAdmin,            // keys and audit commands: the database must exist already
  kMigrationSource,  // migrate's SQLite source: read like an admin command
  kMigrationTarget,  // migrate's PostgreSQL target: the schema is created or migrated
};

struct StoreSettings {
  int threads = 1;                        // kService: sizes PostgreSQL's reader pool
  int busy_timeout_ms = 5000;             // SQLite busy_timeout, PostgreSQL lock_timeout
  long long max_db_pages = 0;             // SQLite: > 0 caps the database size
  WriteObserver* observer = nullptr;      // metrics of the group commits (null: none)
  bool transaction_pooler = false;        // PostgreSQL behind a pooler in transaction mode
  int round_trip_timeout_ms = 10000;      // PostgreSQL: the deadline of a round trip and a write
  std::string synchronous_commit = "on";  // PostgreSQL: on, remote_write or remote_apply
  std::string read_url;                   // kService, PostgreSQL: read replicas (DATABASE_READ_URL)
  std::string timeline_file;  // kService, PostgreSQL: the failover fence (store/pg/timeline.h)
};

// The storage settings of the settings table (base/config.h) the administration commands open
// a store with: DATABASE_POOLER, DATABASE_ROUND_TRIP_TIMEOUT_MS, DATABASE_SYNCHRONOUS_COMMIT (they
// reach PostgreSQL the way the service does). Values not valid for their setting are ignored.
StoreSettings tool_store_settings(const Environment& env);

// Opens the store `target` names for `role`. Errors as SqliteStore::open and PgStore::open
// say (Unavailable: a PostgreSQL server that cannot be reached now, worth waiting for).
Status open_store(const std::string& target, StoreRole role, const StoreSettings& settings,
                  std::unique_ptr<Store>& out);

// The target as logs and messages may show it: an SQLite path as it is, a PostgreSQL URL with
// its password hidden (and not at all when libpq cannot parse it).
std::string describe_target(const std::string& target);

// How open_store configures the store for `role` (the service's store_opened log line), e.g.
// "db=var/testdata.db synchronous=FULL journal_mode=WAL busy_timeout_ms=5000".
std::string describe_store(const std::string& target, StoreRole role,
                           const StoreSettings& settings);

}  // namespace tdapi
