// store_pg_test.cpp: what only the PostgreSQL store has, against a real server (the CTest fixture
// starts one and sets TEST_PG_HOST, its socket directory), each test on a database of its own:
// several nodes on one database, lost connections and outages, its query plans, migrations and
// migrate. The contract both stores keep is tested once for both: store/store_contract_test.cpp.
// Registered only under the postgresql label (tests/CMakeLists.txt), where a missing server
// is a failure.
#include "store/pg/store_pg.h"

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <map>
#include <set>
#include <thread>
#include <vector>

#include "base/json.h"
#include "http/storage_status.h"
#include "metrics/metrics.h"
#include "store/audit.h"
#include "store/pg/pg_test_util.h"
#include "store/sqlite/store_sqlite.h"
#include "store/store_test_util.h"
#include "temp_dir.h"
#include "tools/migrate.h"

namespace tdapi {
namespace {

// A fresh database per test, dropped at the end.
class PgStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    database_.create();
    db_ = database_.name();
  }
  std::string url() const { return database_.url(); }
  std::unique_ptr<PgStore> open(PgOptions o = PgOptions()) {
    o.url = url();
    std::unique_ptr<PgStore> store;
    Status s = PgStore::open(o, store);
    EXPECT_TRUE(s.ok()) << s.message();
    return store;
  }
  // Runs sql on this test's database; "" or the error.
  std::string sql(const std::string& text) { return database_.sql(text); }
  PgTestDatabase database_;
  std::string db_;
};

TEST_F(PgStoreTest, AListingUsesItsClinicsIndexWhateverTheStatisticsSay) {
  auto store = open();
  std::vector<TestRecord> batch;
  for (int i = 0; i < 1000; ++i) batch.push_back(make_record("big" + std::to_string(i), "big"));
  ASSERT_TRUE(store->insert_all(batch).status.ok());
  ASSERT_EQ(sql("ANALYZE tests"), "");
  ASSERT_EQ(sql("INSERT INTO tests (test_id, patient_id, clinic_id, test_type, result, created_at,"
                " doc) SELECT 'o' || i, 'p', 'other', 'blood', 'r', 'x', '{}'"
                " FROM generate_series(1, 20000) i"),
            "");
  PGconn* c = PQconnectdb(url().c_str());
  PGresult* r = PQexec(c,
                       "SET plan_cache_mode = force_custom_plan; EXPLAIN SELECT doc, seq FROM tests"
                       " WHERE clinic_id = 'big' AND seq > 1000 ORDER BY seq LIMIT 1000");
  std::string plan;
  for (int i = 0; i < PQntuples(r); ++i) plan += std::string(PQgetvalue(r, i, 0)) + "\n";
  PQclear(r);
  PQfinish(c);
  EXPECT_NE(plan.find("tests_by_clinic"), std::string::npos) << plan;
  ListQuery q;
  q.clinic_id = "big";
  EXPECT_EQ(list_ids(*store, q).size(), 1000u);
}

// The PostgreSQL writer feeds the same transaction histograms as SQLite's (metrics.h).
TEST_F(PgStoreTest, CommitsFeedTheMetricsHistograms) {
  PgOptions o;
  o.observer = &global_metrics();  // as the service wires it (main.cpp)
  auto store = open(o);
  auto count = [](const char* series) {
    std::string text = global_metrics().render(StoreStats(), Status::Ok());
    size_t at = text.find(std::string("\n") + series + " ");
    return at == std::string::npos ? -1.0 : std::stod(text.substr(at + std::strlen(series) + 2));
  };
  double batches = count("tdapi_commit_batch_size_count");
  double commits = count("tdapi_commit_duration_seconds_count");
  ASSERT_TRUE(store->insert(make_record("pm1")).status.ok());
  ASSERT_TRUE(store->insert_all({make_record("pm2"), make_record("pm3")}).status.ok());
  EXPECT_EQ(count("tdapi_commit_batch_size_count") - batches, 2);
  EXPECT_EQ(count("tdapi_commit_duration_seconds_count") - commits, 2);
  EXPECT_GT(count("tdapi_last_commit_timestamp_seconds"), 0);
  EXPECT_EQ(count("tdapi_writes_pending"), 0);
  StoreStats s = store->stats();
  EXPECT_EQ(s.wal_bytes, -1);
  EXPECT_EQ(s.database_pages, -1);
}

// Two stores on one database are two app nodes: the database decides, exactly one wins.
TEST_F(PgStoreTest, RacingNodesStoreEachIdExactlyOnce) {
  auto node1 = open();
  auto node2 = open();
  std::map<std::string, int> wins;
  std::mutex mu;
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    PgStore* node = t % 2 ? node1.get() : node2.get();
    threads.emplace_back([&, node] {
      for (int i = 0; i < 40; ++i) {
        const std::string id = "race" + std::to_string(i);
        WriteOutcome out = node->insert(make_record(id));
        ASSERT_TRUE(out.status.ok() || out.status.code() == StatusCode::kDuplicate)
            << out.status.message();
        std::lock_guard<std::mutex> lock(mu);
        wins[id] += out.status.ok() ? 1 : 0;
      }
    });
  }
  for (auto& th : threads) th.join();
  ASSERT_EQ(wins.size(), 40u);
  for (const auto& [id, n] : wins) EXPECT_EQ(n, 1) << id;
  EXPECT_EQ(list_ids(*node1, "c1").size(), 40u);
}

TEST_F(PgStoreTest, TheAuditChainHasOneEndAcrossNodes) {
  auto node1 = open();
  auto node2 = open();
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    PgStore* node = t % 2 ? node1.get() : node2.get();
    threads.emplace_back([node, t] {
      for (int i = 0; i < 20; ++i) {
        AuditEntry e;
        e.key_id = "k" + std::to_string(t);
        e.action = "create";
        e.clinic_id = "c1";
        e.detail = "{}";
        node->insert(make_record("a" + std::to_string(t) + "_" + std::to_string(i)), &e);
        AuditEntry read;
        read.key_id = e.key_id;
        read.action = "list";
        read.clinic_id = "c1";
        read.detail = "{}";
        read.outcome = 200;
        node->append_audit(read);
      }
    });
  }
  for (auto& th : threads) th.join();
  AuditChainVerifier verifier;
  std::string problem;
  bool intact = true;
  ASSERT_TRUE(node1
                  ->list_audit(AuditQuery(),
                               [&](const AuditEntry& e) {
                                 intact = verifier.feed(e, problem);
                                 return intact;
                               })
                  .ok());
  EXPECT_TRUE(intact) << problem;
  EXPECT_EQ(verifier.checked(), 240);
  // An edited entry is found.
  ASSERT_EQ(sql("UPDATE audit SET outcome = 403 WHERE seq = 100"), "");
  AuditChainVerifier again;
  intact = true;
  node2->list_audit(AuditQuery(), [&](const AuditEntry& e) {
    intact = again.feed(e, problem);
    return intact;
  });
  EXPECT_FALSE(intact);
  EXPECT_EQ(again.checked(), 99);
}

TEST_F(PgStoreTest, MigrationsAreRecordedOnceAndANewerDatabaseIsRefused) {
  std::string secret;
  {
    auto store = open();
    secret = store->instance_secret();
    EXPECT_EQ(secret.size(), 16u);
  }
  {
    auto again = open();  // nothing to apply; the cursor key is kept
    EXPECT_EQ(again->instance_secret(), secret);
  }
  ASSERT_EQ(sql("INSERT INTO schema_migrations (version, description) VALUES (99, 'future')"), "");
  PgOptions o;
  o.url = url();
  std::unique_ptr<PgStore> store;
  Status s = PgStore::open(o, store);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("newer than this binary"), std::string::npos) << s.message();
}

TEST_F(PgStoreTest, TheAdminToolDoesNotCreateASchema) {
  PgOptions o;
  o.url = url();
  o.admin_tool = true;
  std::unique_ptr<PgStore> store;
  EXPECT_EQ(PgStore::open(o, store).code(), StatusCode::kReadOnly);
}

TEST_F(PgStoreTest, AnUnreachableServerIsUnavailableQuickly) {
  PgOptions o;
  o.url = "postgresql://tdapi@/nothere?host=/nonexistent-dir";
  std::unique_ptr<PgStore> store;
  Status s = PgStore::open(o, store);
  EXPECT_EQ(s.code(), StatusCode::kUnavailable);
  EXPECT_EQ(http_status_for(s.code()), 503);
}

// Connections killed by the server (a restart, a failover) are replaced by the next operation.
TEST_F(PgStoreTest, KilledConnectionsAreReopenedByTheNextOperation) {
  auto store = open();
  ASSERT_TRUE(store->insert(make_record("before")).status.ok());
  ASSERT_EQ(list_ids(*store, "c1").size(), 1u);
  ASSERT_EQ(admin_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '" +
                      db_ + "' AND pid <> pg_backend_pid()"),
            "");
  usleep(100 * 1000);
  EXPECT_TRUE(store->insert(make_record("after")).status.ok());
  EXPECT_EQ(list_ids(*store, "c1"), (std::vector<std::string>{"before", "after"}));
  EXPECT_TRUE(store->check_health().ok());
}

// The database's own errors keep their meaning: a read-only transaction (a standby) is 503.
TEST_F(PgStoreTest, AReadOnlyDatabaseRefusesWritesWithA503) {
  auto store = open();
  ASSERT_EQ(sql("ALTER DATABASE " + db_ + " SET default_transaction_read_only = on"), "");
  auto readonly = open();  // new connections pick the setting up
  ASSERT_TRUE(readonly);
  WriteOutcome out = readonly->insert(make_record("ro"));
  EXPECT_EQ(out.status.code(), StatusCode::kReadOnly) << out.status.message();
  EXPECT_EQ(http_status_for(out.status.code()), 503);
}

// GET /healthz's check must not wait for a reader: with every reader held by a slow read, it
// waited lock_timeout_ms for one and failed busy (a 503 from a server that was fine).
TEST_F(PgStoreTest, TheHealthCheckAnswersWhileSlowReadsHoldEveryReader) {
  PgOptions o;
  o.max_readers = 2;
  o.lock_timeout_ms = 1000;  // also how long an operation waits for a free reader
  auto store = open(o);
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->insert(make_record("held")).status.ok());
  // Reads of `tests` now go through a view that waits until the test lets them go (at most
  // 30 s; each statement of a volatile function sees the latest commit).
  ASSERT_EQ(sql("CREATE TABLE hold_release (go boolean);"
                "CREATE FUNCTION hold_reads() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$"
                " BEGIN FOR i IN 1..3000 LOOP"
                "   IF EXISTS (SELECT 1 FROM hold_release) THEN RETURN true; END IF;"
                "   PERFORM pg_sleep(0.01);"
                " END LOOP; RETURN true; END $$;"
                "ALTER TABLE tests RENAME TO tests_stored;"
                "CREATE VIEW tests AS SELECT * FROM tests_stored WHERE hold_reads();"),
            "");
  std::vector<Status> reads(o.max_readers);
  std::vector<std::thread> readers;
  for (size_t i = 0; i < o.max_readers; ++i) {
    readers.emplace_back([&, i] {
      std::string json;
      reads[i] = store->get_test("held", json);
    });
  }
  // Wait (at most 10 s) until every reader is inside its held read on the server.
  auto active_reads = [&] {
    PGconn* c = PQconnectdb(url().c_str());
    PGresult* r =
        PQexec(c,
               "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
               " AND state = 'active' AND query LIKE 'SELECT doc, clinic_id FROM tests%'");
    int n = PQresultStatus(r) == PGRES_TUPLES_OK ? std::atoi(PQgetvalue(r, 0, 0)) : -1;
    PQclear(r);
    PQfinish(c);
    return n;
  };
  int held = 0;
  for (int i = 0; i < 200 && held < static_cast<int>(o.max_readers); ++i) {
    held = active_reads();
    if (held < static_cast<int>(o.max_readers)) usleep(50 * 1000);
  }
  EXPECT_EQ(held, static_cast<int>(o.max_readers));
  Status health = store->check_health();
  EXPECT_TRUE(health.ok()) << health.name() << ": " << health.message();
  EXPECT_TRUE(store->check_health().ok());  // and again, on the same connection
  EXPECT_EQ(sql("INSERT INTO hold_release VALUES (true)"), "");
  for (auto& t : readers) t.join();
  for (const Status& s : reads) EXPECT_TRUE(s.ok()) << s.message();
  // A lost health connection is replaced by the next check.
  ASSERT_EQ(admin_sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '" +
                      db_ + "' AND pid <> pg_backend_pid()"),
            "");
  usleep(100 * 1000);
  health = store->check_health();
  EXPECT_TRUE(health.ok()) << health.name() << ": " << health.message();
}

TEST(PgStoreUrl, PasswordsAreRedacted) {
  EXPECT_EQ(redact_url("postgresql://u:secret@h/db"), "postgresql://u:***@h/db");
  EXPECT_EQ(redact_url("host=h password=secret dbname=d"), "host=h password=*** dbname=d");
  EXPECT_EQ(redact_url("postgresql://u@h/db?password=s&connect_timeout=1"),
            "postgresql://u@h/db?password=***&connect_timeout=1");
  EXPECT_EQ(redact_url("host=h port=1 user=lab password='s3 Wp9x\\' q' dbname=d"),
            "host=h port=1 user=lab password=*** dbname=d");
  EXPECT_EQ(redact_url("host=h password = s3 dbname=d"), "host=h password = *** dbname=d");
  // What libpq cannot parse (its own errors would quote it) is not shown at all.
  EXPECT_EQ(redact_url("postgres://h:5/d?user=lab&PassWord=s3&x=1"),
            "(a DATABASE_URL that libpq cannot parse)");
  EXPECT_EQ(redact_url("postgresql://tdapi:Sec%zzPW@/r1"),
            "(a DATABASE_URL that libpq cannot parse)");
  EXPECT_EQ(redact_url("postgresql://tdapi:PW@[::1/r1"),
            "(a DATABASE_URL that libpq cannot parse)");
  PgOptions bad;
  bad.url = "postgresql://tdapi:Sec%zzPW@/r1";
  std::unique_ptr<PgStore> store;
  Status s = PgStore::open(bad, store);
  EXPECT_EQ(s.code(), StatusCode::kInternal);
  EXPECT_EQ(s.message().find("PW"), std::string::npos) << s.message();
  EXPECT_EQ(redact_url("postgresql://u:p@ss@h/db"), "postgresql://u:***@h/db");
  EXPECT_TRUE(is_postgres_url("postgresql://u@h/db"));
  EXPECT_TRUE(is_postgres_url("postgres://h/db"));
  EXPECT_FALSE(is_postgres_url("var/testdata.db"));
}

TEST_F(PgStoreTest, MigrateCopiesAnSqliteDatabaseResumablyAndTheDigestsAgree) {
  TempDir dir;
  const std::string path = dir.file("source.db");
  {
    SqliteOptions so;
    so.path = path;
    std::unique_ptr<SqliteStore> source;
    ASSERT_TRUE(SqliteStore::open(so, source).ok());
    std::vector<TestRecord> batch;
    for (int i = 0; i < 1500; ++i) batch.push_back(make_record("m" + std::to_string(i)));
    AuditEntry e;
    e.key_id = "k";
    e.action = "batch";
    e.clinic_id = "c1";
    e.detail = "{}";
    std::vector<AuditEntry> audits{e};
    ASSERT_TRUE(source->insert_all(batch, &audits).status.ok());
    ApiKey k{"0123456789abcdef", "lab", {"read:c1"}, std::string(64, 'b'), "2026-01-01", ""};
    ASSERT_TRUE(source->create_key(k).ok());
  }
  const std::string to = url();
  auto run = [&](std::vector<std::string> extra) {
    std::vector<std::string> args{"testdata-api", "migrate", "--from", path, "--to", to};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    testing::internal::CaptureStdout();
    int rc = run_migrate_command(static_cast<int>(argv.size()), argv.data());
    std::string out = testing::internal::GetCapturedStdout();
    return std::make_pair(rc, out);
  };
  auto [rc, out] = run({"--batch", "400"});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("\"status\":\"verified\""), std::string::npos) << out;
  // More rows in the source later: a second run copies only those.
  {
    SqliteOptions so;
    so.path = path;
    std::unique_ptr<SqliteStore> source;
    ASSERT_TRUE(SqliteStore::open(so, source).ok());
    ASSERT_TRUE(source->insert(make_record("later")).status.ok());
  }
  std::tie(rc, out) = run({});
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("\"copied_tests\":1,"), std::string::npos) << out;
  // The copy serves like the original: same order, same cursor key.
  {
    auto target = open();  // a service on the target
    std::vector<std::string> ids = list_ids(*target, "c1");
    ASSERT_EQ(ids.size(), 1501u);
    EXPECT_EQ(ids.front(), "m0");
    EXPECT_EQ(ids.back(), "later");
    EXPECT_TRUE(target->insert(make_record("new-after-migrate")).status.ok());
    // No copying under a running service (it hands out seqs and cursors of its own).
    std::tie(rc, out) = run({});
    EXPECT_EQ(rc, 1);
    EXPECT_EQ(out, "");
  }
  // A target changed behind the copy's back no longer verifies.
  ASSERT_EQ(sql("UPDATE tests SET doc = doc || ' ' WHERE test_id = 'm7'"), "");
  std::tie(rc, out) = run({});
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("\"status\":\"mismatch\""), std::string::npos) << out;
}

}  // namespace
}  // namespace tdapi
