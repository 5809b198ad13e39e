// pg_test_util.h: what the PostgreSQL store's tests use: the test server (the CTest fixture
// starts one and sets TEST_PG_HOST, its socket directory) and a database of its own per test.
#pragma once

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <string>

namespace tdapi {

inline std::string pg_host() {
  const char* host = std::getenv("TEST_PG_HOST");
  return host ? host : "";
}

// Runs sql on the connection conninfo names; "" or the error.
inline std::string pg_sql_on(const std::string& conninfo, const std::string& sql) {
  PGconn* c = PQconnectdb(conninfo.c_str());
  std::string error;
  if (PQstatus(c) != CONNECTION_OK) {
    error = PQerrorMessage(c);
  } else {
    PGresult* r = PQexec(c, sql.c_str());
    if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK) {
      error = PQresultErrorMessage(r);
    }
    PQclear(r);
  }
  PQfinish(c);
  return error;
}

// Runs sql on the server's postgres database as the test role; "" or the error.
inline std::string admin_sql(const std::string& sql) {
  return pg_sql_on("host=" + pg_host() + " user=tdapi dbname=postgres", sql);
}

// A fresh database on the test server, dropped (connections and all) with this object.
class PgTestDatabase {
 public:
  PgTestDatabase() = default;
  PgTestDatabase(const PgTestDatabase&) = delete;
  PgTestDatabase& operator=(const PgTestDatabase&) = delete;
  ~PgTestDatabase() {
    if (!name_.empty()) admin_sql("DROP DATABASE IF EXISTS " + name_ + " WITH (FORCE)");
  }

  // Creates it; a failure fails the test (fatally: check HasFatalFailure()).
  void create() {
    ASSERT_FALSE(pg_host().empty()) << "TEST_PG_HOST is not set: run through ctest -L postgresql";
    static std::atomic<int> counter{0};
    name_ = "unit_" + std::to_string(getpid()) + "_" + std::to_string(counter++);
    ASSERT_EQ(admin_sql("DROP DATABASE IF EXISTS " + name_), "");
    ASSERT_EQ(admin_sql("CREATE DATABASE " + name_), "");
  }
  const std::string& name() const { return name_; }
  std::string url() const { return "postgresql://tdapi@/" + name_ + "?host=" + pg_host(); }
  // Runs sql on this database; "" or the error.
  std::string sql(const std::string& text) const { return pg_sql_on(url(), text); }

 private:
  std::string name_;
};

}  // namespace tdapi
