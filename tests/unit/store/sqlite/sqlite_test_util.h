// sqlite_test_util.h: what the SQLite store's tests use to open a store and to look into its file.
#pragma once

#include <gtest/gtest.h>
#include <sqlite3.h>

#include <memory>
#include <string>

#include "store/sqlite/store_sqlite.h"

namespace tdapi {

// A store on path with default options; a failure to open fails the test.
inline std::unique_ptr<SqliteStore> open_sqlite_at(const std::string& path) {
  SqliteOptions o;
  o.path = path;
  std::unique_ptr<SqliteStore> store;
  Status s = SqliteStore::open(o, store);
  EXPECT_TRUE(s.ok()) << s.message();
  return store;
}

// Runs sql on its own connection to path; returns the first column of the first row, if any.
inline std::string sql_on(const std::string& path, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  sqlite3_busy_timeout(db, 5000);
  std::string first;
  char* err = nullptr;
  int rc = sqlite3_exec(
      db, sql.c_str(),
      [](void* out, int n, char** values, char**) {
        auto* s = static_cast<std::string*>(out);
        if (s->empty() && n > 0 && values[0]) *s = values[0];
        return 0;
      },
      &first, &err);
  EXPECT_EQ(rc, SQLITE_OK) << sql << ": " << (err ? err : "");
  sqlite3_free(err);
  sqlite3_close(db);
  return first;
}

}  // namespace tdapi
