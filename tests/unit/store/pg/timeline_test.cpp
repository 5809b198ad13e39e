// timeline_test.cpp: server histories, the fence rule and the fence file (store/pg/timeline.h).
#include "store/pg/timeline.h"

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <future>

#include "temp_dir.h"

namespace tdapi {
namespace {

ServerTimeline at(const char* system, long long timeline) {
  ServerTimeline t;
  t.system_identifier = system;
  t.timeline = timeline;
  return t;
}

TEST(Timeline, WalFileNamesCarryTheTimeline) {
  long long tl = 0;
  ASSERT_TRUE(timeline_of_walfile("000000010000000000000001", tl));
  EXPECT_EQ(tl, 1);
  ASSERT_TRUE(timeline_of_walfile("0000001A00000003000000FF", tl));
  EXPECT_EQ(tl, 26);
  EXPECT_FALSE(timeline_of_walfile("", tl));
  EXPECT_FALSE(timeline_of_walfile("00000001000000000000001", tl));    // 23
  EXPECT_FALSE(timeline_of_walfile("00000001000000000000000g", tl));   // not hex
  EXPECT_FALSE(timeline_of_walfile("000000000000000000000001", tl));   // timeline 0
  EXPECT_FALSE(timeline_of_walfile("0000000100000000000000010", tl));  // 25
}

TEST(Timeline, KeysRoundTrip) {
  ServerTimeline t;
  ASSERT_TRUE(parse_timeline_key(at("7716566631266182715", 3).key(), t));
  EXPECT_EQ(t, at("7716566631266182715", 3));
  for (const char* bad : {"", ":", "1:", ":1", "1:0", "x:1", "1:1x", "1:-1", "1:99999999999"}) {
    EXPECT_FALSE(parse_timeline_key(bad, t)) << bad;
  }
}

TEST(Timeline, TheFenceRefusesOlderTimelinesAndOtherSystems) {
  const ServerTimeline fence = at("42", 2);
  EXPECT_EQ(fence_refusal(ServerTimeline{}, at("42", 1)), "");  // no fence yet
  EXPECT_EQ(fence_refusal(fence, at("42", 2)), "");
  EXPECT_EQ(fence_refusal(fence, at("42", 3)), "");  // a later promotion
  const std::string older = fence_refusal(fence, at("42", 1));
  EXPECT_NE(older.find("older than timeline 2"), std::string::npos) << older;
  EXPECT_NE(older.find("failover fencing"), std::string::npos) << older;
  const std::string other = fence_refusal(fence, at("43", 5));
  EXPECT_NE(other.find("another cluster"), std::string::npos) << other;
}

TEST(Timeline, TheFenceFileKeepsTheLastSavedHistory) {
  TempDir dir;
  const std::string path = dir.path() + "/postgresql-timeline";
  ServerTimeline t = at("1", 1);
  ASSERT_TRUE(load_fence(path, t).ok());
  EXPECT_FALSE(t.known());  // no file: no fence
  ASSERT_TRUE(save_fence(path, at("99", 4)).ok());
  ASSERT_TRUE(load_fence(path, t).ok());
  EXPECT_EQ(t, at("99", 4));
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  std::ofstream(path) << "not a fence\n";
  EXPECT_EQ(load_fence(path, t).code(), StatusCode::kCorrupt);
  EXPECT_FALSE(t.known());
}

TEST(Timeline, TheFenceFileIsNotReadThroughALink) {
  TempDir dir;
  const std::string target = dir.path() + "/elsewhere";
  ASSERT_TRUE(save_fence(target, at("5", 1)).ok());
  const std::string path = dir.path() + "/postgresql-timeline";
  ASSERT_EQ(::symlink(target.c_str(), path.c_str()), 0);
  ServerTimeline t;
  EXPECT_EQ(load_fence(path, t).code(), StatusCode::kIoError);
  // Saving replaces the link itself, and the file it named stays as it was.
  ASSERT_TRUE(save_fence(path, at("5", 2)).ok());
  ASSERT_TRUE(load_fence(target, t).ok());
  EXPECT_EQ(t, at("5", 1));
  ASSERT_TRUE(load_fence(path, t).ok());
  EXPECT_EQ(t, at("5", 2));
}

TEST(Timeline, AFencedHostIsLeftOutOfAMultiHostUrl) {
  const std::string url =
      "postgresql://tdapi@/db?host=/tmp/a,/tmp/b&target_session_attrs=read-write";
  EXPECT_EQ(without_hosts(url, {}), url);
  EXPECT_EQ(without_hosts(url, {"/tmp/c:5432"}), url);                 // not one of its hosts
  EXPECT_EQ(without_hosts(url, {"/tmp/a:5432", "/tmp/b:5432"}), url);  // all: nothing to gain
  const std::string left = without_hosts(url, {"/tmp/a:5432"});
  EXPECT_NE(left.find("host='/tmp/b'"), std::string::npos) << left;
  EXPECT_EQ(left.find("/tmp/a"), std::string::npos) << left;
  EXPECT_NE(left.find("target_session_attrs='read-write'"), std::string::npos) << left;
  EXPECT_NE(left.find("dbname='db'"), std::string::npos) << left;
  EXPECT_NE(left.find("user='tdapi'"), std::string::npos) << left;
  // Ports by position, and values quoted for libpq.
  const std::string tcp = without_hosts(
      "host=db1,db2,db3 port=5433,5434,5435 password='it\\'s' dbname=x", {"db2:5434"});
  EXPECT_NE(tcp.find("host='db1,db3'"), std::string::npos) << tcp;
  EXPECT_NE(tcp.find("port='5433,5435'"), std::string::npos) << tcp;
  EXPECT_NE(tcp.find(R"(password='it\'s')"), std::string::npos) << tcp;
  // A port left out is PGPORT's, as PQport names the connection's.
  ::setenv("PGPORT", "6543", 1);
  const std::string by_env = without_hosts("host=db1,db2 dbname=x", {"db1:6543"});
  ::unsetenv("PGPORT");
  EXPECT_NE(by_env.find("host='db2'"), std::string::npos) << by_env;
  EXPECT_EQ(without_hosts("host=db1,db2 dbname=x", {"db1:6543"}), "host=db1,db2 dbname=x");
  // One host: nothing to leave it for.
  EXPECT_EQ(without_hosts("host=db1 dbname=x", {"db1:5432"}), "host=db1 dbname=x");
}

// A FIFO at the fence's path (or anything but a regular file) is an error at once: reading it
// must not block the writer (and the health check) until someone writes to it.
TEST(Timeline, AFenceThatIsAFifoIsRefusedWithoutBlocking) {
  TempDir dir;
  const std::string path = dir.file("postgresql-timeline");
  ASSERT_EQ(::mkfifo(path.c_str(), 0600), 0);
  auto loaded = std::async(std::launch::async, [&] {
    ServerTimeline t;
    return load_fence(path, t);
  });
  const bool answered = loaded.wait_for(std::chrono::seconds(3)) == std::future_status::ready;
  EXPECT_TRUE(answered) << "load_fence blocked on a FIFO";
  if (!answered) {  // let it go: a writer opens the FIFO and closes it (end of file)
    const int w = ::open(path.c_str(), O_WRONLY);
    if (w >= 0) ::close(w);
  }
  EXPECT_FALSE(loaded.get().ok());
}

TEST(Timeline, TheFenceMovesOnlyForwardUnderItsLock) {
  TempDir dir;
  const std::string path = dir.path() + "/postgresql-timeline";
  ServerTimeline now;
  ASSERT_TRUE(advance_fence(path, at("7", 2), now).ok());  // no fence yet
  EXPECT_EQ(now, at("7", 2));
  // Another node moved it to timeline 3 meanwhile: timeline 2 stays refused, the file as it is.
  ASSERT_TRUE(save_fence(path, at("7", 3)).ok());
  ASSERT_TRUE(advance_fence(path, at("7", 2), now).ok());
  EXPECT_EQ(now, at("7", 3));
  EXPECT_NE(fence_refusal(now, at("7", 2)), "");
  ASSERT_TRUE(load_fence(path, now).ok());
  EXPECT_EQ(now, at("7", 3));
  ASSERT_TRUE(advance_fence(path, at("7", 4), now).ok());
  EXPECT_EQ(now, at("7", 4));
}

}  // namespace
}  // namespace tdapi
