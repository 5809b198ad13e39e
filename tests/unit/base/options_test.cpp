// options_test.cpp: command line parsing (strict numbers), default thread cap, descriptors.
#include "base/options.h"

#include <gtest/gtest.h>

#include <vector>

namespace tdapi {
namespace {

bool parse(std::vector<const char*> extra, AppOptions& out, std::string& error,
           unsigned cores = 2) {
  std::vector<const char*> argv = {"testdata-api", "--socket", "/s", "--db", "/d"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  return parse_options(static_cast<int>(argv.size()), argv.data(), cores, out, error);
}

TEST(Options, RejectsMalformedNumbers) {
  const char* bad[] = {
      "5s", "", " 5", "5 ", "+5", "1e3", "0x10", "5.0", "abc", "-", "99999999999999999999999"};
  for (const char* flag :
       {"--busy-timeout-ms", "--threads", "--max-db-pages", "--stop-timeout-ms"}) {
    for (const char* value : bad) {
      AppOptions o;
      std::string error;
      EXPECT_FALSE(parse({flag, value}, o, error)) << flag << " " << value;
      EXPECT_NE(error.find(flag), std::string::npos) << error;
    }
  }
}

TEST(Options, RejectsOutOfRange) {
  AppOptions o;
  std::string error;
  EXPECT_FALSE(parse({"--threads", "0"}, o, error));
  EXPECT_FALSE(parse({"--threads", "1025"}, o, error));
  EXPECT_FALSE(parse({"--busy-timeout-ms", "-1"}, o, error));
  EXPECT_FALSE(parse({"--max-db-pages", "-5"}, o, error));
}

TEST(Options, AcceptsWellFormedValues) {
  AppOptions o;
  std::string error;
  ASSERT_TRUE(parse({"--busy-timeout-ms", "5000", "--threads", "8", "--max-db-pages", "60",
                     "--stop-timeout-ms", "250", "--user", "svc", "--log-file", "/l"},
                    o, error))
      << error;
  EXPECT_EQ(o.busy_timeout_ms, 5000);
  EXPECT_EQ(o.threads, 8);
  EXPECT_EQ(o.max_db_pages, 60);
  EXPECT_EQ(o.stop_timeout_ms, 250);
  EXPECT_EQ(o.user, "svc");
  EXPECT_EQ(o.log_file, "/l");
}

TEST(Options, SocketModeIsOwnerOnlyOrGroup) {
  AppOptions o;
  std::string error;
  ASSERT_TRUE(parse({}, o, error)) << error;
  EXPECT_EQ(o.socket_mode, 0600);
  ASSERT_TRUE(parse({"--socket-mode", "0660"}, o, error)) << error;
  EXPECT_EQ(o.socket_mode, 0660);
  ASSERT_TRUE(parse({"--socket-mode", "0600"}, o, error)) << error;
  EXPECT_EQ(o.socket_mode, 0600);
  for (const char* bad : {"0666", "0777", "660x", "", "0640", "438"}) {
    EXPECT_FALSE(parse({"--socket-mode", bad}, o, error)) << bad;
    EXPECT_NE(error.find("--socket-mode"), std::string::npos) << error;
  }
}

TEST(Options, AuditReadsAreCrashSafeUnlessDurable) {
  AppOptions o;
  std::string error;
  ASSERT_TRUE(parse({}, o, error)) << error;
  EXPECT_FALSE(o.audit_reads_durable);
  ASSERT_TRUE(parse({"--audit-reads", "durable"}, o, error)) << error;
  EXPECT_TRUE(o.audit_reads_durable);
  ASSERT_TRUE(parse({"--audit-reads", "crash-safe"}, o, error)) << error;
  EXPECT_FALSE(o.audit_reads_durable);
  for (const char* bad : {"", "on", "Durable", "crash_safe", "off"}) {
    EXPECT_FALSE(parse({"--audit-reads", bad}, o, error)) << bad;
    EXPECT_NE(error.find("--audit-reads"), std::string::npos) << error;
  }
}

TEST(Options, TakesExactlyOneDatabase) {
  AppOptions o;
  std::string error;
  const char* pg[] = {"testdata-api", "--socket", "/s", "--database-url", "postgresql:///x"};
  ASSERT_TRUE(parse_options(5, pg, 2, o, error)) << error;
  EXPECT_EQ(o.database_url, "postgresql:///x");
  EXPECT_TRUE(o.db_path.empty());
  // Both, or an SQLite-only option with PostgreSQL: refused.
  EXPECT_FALSE(parse({"--database-url", "postgresql:///x"}, o, error));
  const char* capped[] = {"testdata-api",    "--socket",       "/s", "--database-url",
                          "postgresql:///x", "--max-db-pages", "10"};
  EXPECT_FALSE(parse_options(7, capped, 2, o, error));
  EXPECT_NE(error.find("--max-db-pages"), std::string::npos) << error;
}

TEST(Options, RequiresSocketAndDbAndKnownOptions) {
  AppOptions o;
  std::string error;
  const char* only_socket[] = {"testdata-api", "--socket", "/s"};
  EXPECT_FALSE(parse_options(3, only_socket, 2, o, error));
  EXPECT_FALSE(parse({"--bogus", "1"}, o, error));
  EXPECT_FALSE(parse({"--threads"}, o, error));
}

TEST(Options, DefaultThreadsAre32PerCoreCapped) {
  EXPECT_EQ(default_thread_count(1), 32);
  EXPECT_EQ(default_thread_count(2), 64);
  EXPECT_EQ(default_thread_count(8), 256);
  EXPECT_EQ(default_thread_count(64), kMaxDefaultThreads);
  EXPECT_EQ(default_thread_count(0), 64);
  AppOptions o;
  std::string error;
  ASSERT_TRUE(parse({}, o, error, 64));
  EXPECT_EQ(o.threads, kMaxDefaultThreads);
}

TEST(Options, OpenFilesGrowWithThreads) {
  EXPECT_GT(required_open_files(64), 2 * 64);
  EXPECT_LT(required_open_files(kMaxDefaultThreads), 4096);  // fits a common hard limit
}

}  // namespace
}  // namespace tdapi
