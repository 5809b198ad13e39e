// config_test.cpp: the settings table: validation naming every bad value, environment files as
// systemd reads them, serve's options, the rendered env file and table.
#include "base/config.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <string>
#include <vector>

namespace tdapi {
namespace {

std::vector<std::string> problems_of(const Environment& env) {
  std::vector<std::string> problems;
  validate_environment(env, problems);
  return problems;
}

bool mentions(const std::vector<std::string>& problems, const std::string& text) {
  for (const std::string& p : problems) {
    if (p.find(text) != std::string::npos) return true;
  }
  return false;
}

TEST(Config, DefaultsAndGoodValuesPass) {
  EXPECT_TRUE(problems_of({}).empty());
  Environment good = {{"THREADS", "8"},
                      {"AUTH", "on"},
                      {"AUDIT", "on"},
                      {"AUDIT_READS", "durable"},
                      {"BUSY_TIMEOUT_MS", "0"},
                      {"LISTEN", "[::1]:8443"},
                      {"ANON_RATE", "600r/m"},
                      {"LISTING_SPOOL_MAX", "2g"},
                      {"FASTCGI_READ_TIMEOUT", "500ms"},
                      {"LOG_FORWARD", "relp://logs.example.org:2514"},
                      {"APP_NODES", "4"},
                      {"DATABASE_URL", "postgresql://app@db/tests"},
                      {"WRITE_COMMIT", "leader"},
                      {"SOCKET_MODE", "0660"},
                      {"BACKUP_KEEP", "30"},
                      {"THREADS", ""}};
  EXPECT_TRUE(problems_of(good).empty()) << problems_of(good).front();
}

TEST(Config, NamesEveryBadValue) {
  Environment bad = {{"THREADS", "lots"},
                     {"AUTH", "maybe"},
                     {"BUSY_TIMEOUT_MS", "5s"},
                     {"LISTEN", "127.0.0.1:5000; listen 80"},
                     {"PORT", "70000"},
                     {"ANON_RATE", "100/s"},
                     {"LISTING_SPOOL_MAX", "1t"},
                     {"FASTCGI_READ_TIMEOUT", "soon"},
                     {"LOG_FORWARD", "udp://h:1"},
                     {"APP_NODES", "17"},
                     {"BACKUP_KEEP", "0"},
                     {"SERVICE_USER", "a b"},
                     {"WRITE_COMMIT", "thread|leader"}};
  std::vector<std::string> problems = problems_of(bad);
  EXPECT_EQ(problems.size(), bad.size());
  for (const auto& kv : bad) {
    EXPECT_TRUE(mentions(problems, kv.first + " must")) << kv.first;
    EXPECT_TRUE(mentions(problems, "'" + kv.second + "'")) << kv.second;
  }
}

TEST(Config, RefusesTheCombinationsTheAppRefuses) {
  EXPECT_TRUE(mentions(problems_of({{"DATABASE_URL", "postgresql://x"}, {"MAX_DB_PAGES", "9"}}),
                       "MAX_DB_PAGES"));
  EXPECT_TRUE(mentions(problems_of({{"AUTH", "on"}, {"AUDIT", "off"}}), "AUDIT=off"));
  EXPECT_TRUE(mentions(problems_of({{"APP_NODES", "2"}}), "needs DATABASE_URL"));
  EXPECT_TRUE(mentions(problems_of({{"TLS_CERT", "/c.pem"}}), "TLS_KEY"));
  EXPECT_TRUE(problems_of({{"AUTH", "off"}, {"AUDIT", "off"}}).empty());
}

TEST(Config, NginxBoundValuesLeaveNoRoomForAnotherDirective) {
  for (const char* listen :
       {"127.0.0.01:80", "-h.example.com:80", "h-.example.com:80", "127.1:80", "[::1;]:80"}) {
    EXPECT_TRUE(mentions(problems_of({{"LISTEN", listen}}), "LISTEN must")) << listen;
  }
  EXPECT_TRUE(mentions(problems_of({{"APP_NODES", "01"}}), "APP_NODES must"));
  EXPECT_TRUE(mentions(problems_of({{"TLS_CERT", "/c.pem; listen 0.0.0.0:1"}, {"TLS_KEY", "/k"}}),
                       "TLS_CERT must be a path of letters"));
  EXPECT_TRUE(
      mentions(problems_of({{"NGINX_TEMP_DIR", "tmp"}}), "NGINX_TEMP_DIR must be an absolute"));
  EXPECT_TRUE(problems_of({{"NGINX_TEMP_DIR", "/srv/nginx-tmp"},
                           {"LISTEN", "h-1.example.com:8080"},
                           {"ALLOW_PLAINTEXT", "1"}})
                  .empty());
}

TEST(Config, OffLoopbackNeedsKeysAndTls) {
  for (const char* listen : {"127.0.0.1:80", "127.9.9.9:80", "[::1]:80", "localhost:80"}) {
    EXPECT_TRUE(is_loopback_listen(listen)) << listen;
    EXPECT_TRUE(problems_of({{"LISTEN", listen}, {"AUTH", "off"}}).empty()) << listen;
  }
  for (const char* listen : {"0.0.0.0:80", "127.0.0.1.example.com:80", "localhost.example.com:80",
                             "[::]:80", "128.0.0.1:80"}) {
    EXPECT_FALSE(is_loopback_listen(listen)) << listen;
    EXPECT_TRUE(mentions(problems_of({{"LISTEN", listen}, {"AUTH", "off"}}), "AUTH=off is allowed"))
        << listen;
    EXPECT_TRUE(mentions(problems_of({{"LISTEN", listen}}), "set TLS_CERT and TLS_KEY")) << listen;
    EXPECT_TRUE(problems_of({{"LISTEN", listen}, {"ALLOW_PLAINTEXT", "1"}}).empty()) << listen;
    EXPECT_TRUE(problems_of({{"LISTEN", listen}, {"TLS_CERT", "/c"}, {"TLS_KEY", "/k"}}).empty());
  }
}

TEST(Config, MakeRunDefaultsFollowTheListener) {
  Environment out;
  std::vector<std::string> problems;
  ASSERT_TRUE(resolve_dev_environment({{"PORT", "8080"}}, 2, out, problems));
  EXPECT_EQ(out["LISTEN"], "127.0.0.1:8080");
  EXPECT_EQ(out["LOOPBACK"], "1");
  EXPECT_EQ(out["AUTH"], "off");
  EXPECT_EQ(out["ANON_RATE"], "50000r/s");
  EXPECT_EQ(out["THREADS"], std::to_string(default_thread_count(2)));
  EXPECT_EQ(out["APP_NODES"], "1");
  ASSERT_TRUE(resolve_dev_environment({{"LISTEN", "0.0.0.0:443"},
                                       {"ALLOW_PLAINTEXT", "1"},
                                       {"DATABASE_URL", "postgresql://lab:s3cret@db/t"}},
                                      2, out, problems));
  EXPECT_EQ(out["LOOPBACK"], "0");
  EXPECT_EQ(out["AUTH"], "on");
  EXPECT_EQ(out["ANON_RATE"], "100r/s");
  EXPECT_EQ(out["ANON_BURST"], "200");
  EXPECT_EQ(out["DATABASE_URL_SHOWN"], "postgresql://lab:***@db/t");
  // AUDIT=off is fine with the loopback default AUTH=off, not with the default AUTH=on elsewhere.
  EXPECT_TRUE(resolve_dev_environment({{"AUDIT", "off"}}, 2, out, problems));
  EXPECT_FALSE(resolve_dev_environment(
      {{"AUDIT", "off"}, {"LISTEN", "0.0.0.0:80"}, {"ALLOW_PLAINTEXT", "1"}}, 2, out, problems));
  EXPECT_TRUE(mentions(problems, "AUDIT=off"));
}

TEST(Config, ReadsEnvironmentFilesAsSystemdDoes) {
  Environment env;
  std::vector<std::string> problems;
  parse_environment_text(
      "# comment\n; also a comment\n\n  THREADS = 8 \nDB_PATH=\"/srv/a b.db\"\n"
      "AUTH='on'\nDATABASE_URL=host=db \\\ndbname=t\nPGPASSFILE=/etc/pg\nexport X=1\n"
      "THREAD=4\nAUDIT=\n",
      "f", env, problems);
  EXPECT_EQ(env["THREADS"], "8");
  EXPECT_EQ(env["DB_PATH"], "/srv/a b.db");
  EXPECT_EQ(env["AUTH"], "on");
  EXPECT_EQ(env["DATABASE_URL"], "host=db dbname=t");
  EXPECT_EQ(env["PGPASSFILE"], "/etc/pg");
  EXPECT_EQ(env["AUDIT"], "");
  ASSERT_EQ(problems.size(), 2u);
  EXPECT_EQ(problems[0], "f:10: not a NAME=value line");
  EXPECT_EQ(problems[1], "f:11: THREAD is not a setting of testdata-api (misspelt?)");
}

TEST(Config, ServeOptionsFromTheEnvironment) {
  AppOptions o;
  std::vector<std::string> problems;
  ASSERT_TRUE(options_from_environment({{"RUNTIME_DIRECTORY", "/run/testdata-api"},
                                        {"SOCKET_MODE", "0660"},
                                        {"DB_PATH", "/var/lib/t/t.db"},
                                        {"THREADS", "12"},
                                        {"FEED_MAX_WAITING", "7"},
                                        {"AUDIT_READS", "durable"},
                                        {"DATABASE_POOLER", "transaction"},
                                        {"DATABASE_ROUND_TRIP_TIMEOUT_MS", "2500"},
                                        {"DATABASE_SYNCHRONOUS_COMMIT", "remote_apply"},
                                        {"ANON_RATE", "10r/s"}},
                                       2, false, o, problems));
  EXPECT_EQ(o.socket_path, "/run/testdata-api/app.sock");
  EXPECT_EQ(o.socket_mode, 0660);
  EXPECT_EQ(o.db_path, "/var/lib/t/t.db");
  EXPECT_EQ(o.threads, 12);
  EXPECT_EQ(o.feed_max_waiting, 7);
  EXPECT_TRUE(o.auth);  // serve's default: on
  EXPECT_TRUE(o.audit_reads_durable);
  EXPECT_TRUE(o.transaction_pooler);
  EXPECT_EQ(o.round_trip_timeout_ms, 2500);
  EXPECT_EQ(o.synchronous_commit, "remote_apply");
  EXPECT_EQ(o.auth_failure_rate_per_minute, 600);
  EXPECT_EQ(o.user, "");

  ASSERT_TRUE(
      options_from_environment({{"DATA_DIR", "/d"}, {"AUTH", "off"}}, 2, true, o, problems));
  EXPECT_EQ(o.socket_path, "/d/run/app.sock");
  EXPECT_EQ(o.db_path, "/d/testdata.db");
  EXPECT_EQ(o.socket_mode, 0600);
  EXPECT_FALSE(o.auth);
  EXPECT_FALSE(o.transaction_pooler);
  EXPECT_EQ(o.round_trip_timeout_ms, 10000);
  EXPECT_EQ(o.synchronous_commit, "on");
  EXPECT_EQ(o.threads, default_thread_count(2));
  EXPECT_EQ(o.user, "testdata-api");

  EXPECT_FALSE(options_from_environment({{"THREADS", "lots"}}, 2, false, o, problems));
  EXPECT_TRUE(mentions(problems, "THREADS"));
  // PostgreSQL's local-only and off are not offered: a 201 always means flushed on the primary.
  for (const char* bad : {"off", "local", "on; DROP TABLE tests"}) {
    problems.clear();
    EXPECT_FALSE(
        options_from_environment({{"DATABASE_SYNCHRONOUS_COMMIT", bad}}, 2, false, o, problems));
    EXPECT_TRUE(mentions(problems, "DATABASE_SYNCHRONOUS_COMMIT")) << bad;
  }
  problems.clear();
  EXPECT_FALSE(
      options_from_environment({{"DATABASE_ROUND_TRIP_TIMEOUT_MS", "50"}}, 2, false, o, problems));
  EXPECT_TRUE(mentions(problems, "DATABASE_ROUND_TRIP_TIMEOUT_MS"));
}

TEST(Config, EnvFileAndTableListEverySetting) {
  const std::string file = render_environment_file();
  const std::string table = render_settings_table();
  for (const Setting& s : settings_table()) {
    const std::string name = s.name;
    EXPECT_NE(table.find("| `" + name + "` |"), std::string::npos) << name;
    if (s.place == SettingPlace::kEnvFile) {
      EXPECT_NE(file.find("\n" + name + "=" + s.package_value + "\n"), std::string::npos) << name;
    } else {
      EXPECT_NE(file.find("#   " + name), std::string::npos) << name;
    }
  }
  // The package's file is valid as it is, and says nothing unknown.
  Environment env;
  std::vector<std::string> problems;
  parse_environment_text(file, "env", env, problems);
  EXPECT_TRUE(problems.empty());
  EXPECT_TRUE(validate_environment(env, problems)) << problems.front();
  EXPECT_EQ(env["BACKUP_DIR"], "/var/lib/testdata-api/backups");
  EXPECT_EQ(env["BACKUP_KEEP"], "7");
  size_t longest = 0, start = 0;
  for (size_t nl = file.find('\n'); nl != std::string::npos; nl = file.find('\n', start)) {
    longest = std::max(longest, nl - start);
    start = nl + 1;
  }
  EXPECT_LE(longest, 95u);
}

}  // namespace
}  // namespace tdapi
