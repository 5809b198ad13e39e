// open_store.cpp: choosing the backend for a target and configuring it for a role.
#include "store/open_store.h"

#include <algorithm>
#include <vector>

#include "base/url.h"
#include "store/pg/store_pg.h"
#include "store/sqlite/store_sqlite.h"

namespace tdapi {

namespace {

SqliteOptions sqlite_options(const std::string& path, StoreRole role, const StoreSettings& s) {
  SqliteOptions o;
  o.path = path;
  o.busy_timeout_ms = s.busy_timeout_ms;
  o.max_page_count = s.max_db_pages;
  o.observer = s.observer;
  o.admin_tool = role != StoreRole::kService;
  return o;
}

PgOptions pg_options(const std::string& url, StoreRole role, const StoreSettings& s) {
  PgOptions o;
  o.url = url;
  o.lock_timeout_ms = s.busy_timeout_ms;
  o.observer = s.observer;
  o.transaction_pooler = s.transaction_pooler;
  o.round_trip_timeout_ms = s.round_trip_timeout_ms;
  o.synchronous_commit = s.synchronous_commit;
  switch (role) {
    case StoreRole::kService:
      // One reader connection per worker would be threads x nodes connections on the server;
      // a listing holds one only while a page is read, so a quarter of the workers is plenty.
      o.max_readers = static_cast<size_t>(std::max(4, s.threads / 4));
      o.open_readers_at_start = true;
      o.read_url = s.read_url;
      o.timeline_file = s.timeline_file;
      break;
    case StoreRole::kAdmin:
    case StoreRole::kMigrationSource:
      o.admin_tool = true;
      o.application_name = "testdata-api-admin";
      break;
    case StoreRole::kMigrationTarget:
      o.application_name = "testdata-api-migrate";
      break;
  }
  return o;
}

}  // namespace

StoreSettings tool_store_settings(const Environment& env) {
  StoreSettings s;
  Environment valid;
  for (const char* name :
       {"DATABASE_POOLER", "DATABASE_ROUND_TRIP_TIMEOUT_MS", "DATABASE_SYNCHRONOUS_COMMIT"}) {
    auto it = env.find(name);
    std::vector<std::string> problems;
    if (it != env.end() && validate_environment({{name, it->second}}, problems)) {
      valid[name] = it->second;
    }
  }
  AppOptions o;
  std::vector<std::string> problems;
  options_from_environment(valid, 1, false, o, problems);
  s.transaction_pooler = o.transaction_pooler;
  s.round_trip_timeout_ms = o.round_trip_timeout_ms;
  s.synchronous_commit = o.synchronous_commit;
  return s;
}

Status open_store(const std::string& target, StoreRole role, const StoreSettings& settings,
                  std::unique_ptr<Store>& out) {
  out.reset();
  Status s;
  if (is_postgres_url(target)) {
    std::unique_ptr<PgStore> pg;
    s = PgStore::open(pg_options(target, role, settings), pg);
    out = std::move(pg);
  } else {
    std::unique_ptr<SqliteStore> sqlite;
    s = SqliteStore::open(sqlite_options(target, role, settings), sqlite);
    out = std::move(sqlite);
  }
  return s;
}

std::string describe_target(const std::string& target) {
  return is_postgres_url(target) ? redact_url(target) : target;
}

std::string describe_store(const std::string& target, StoreRole role,
                           const StoreSettings& settings) {
  if (is_postgres_url(target)) {
    const PgOptions o = pg_options(target, role, settings);
    return "postgresql=" + redact_url(o.url) + " synchronous_commit=" + o.synchronous_commit +
           " lock_timeout_ms=" + std::to_string(o.lock_timeout_ms) +
           " round_trip_timeout_ms=" + std::to_string(o.round_trip_timeout_ms) +
           (o.transaction_pooler ? " pooler=transaction" : "") +
           " max_connections=" + std::to_string(o.max_readers + 2) +
           (o.read_url.empty() ? "" : " read_replicas=" + redact_url(o.read_url));
  }
  const SqliteOptions o = sqlite_options(target, role, settings);
  return "db=" + o.path + " synchronous=" + o.synchronous +
         " journal_mode=WAL busy_timeout_ms=" + std::to_string(o.busy_timeout_ms);
}

}  // namespace tdapi
