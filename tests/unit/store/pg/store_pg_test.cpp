// store_pg_test.cpp: what only the PostgreSQL store has, against a real server (the CTest fixture
// starts one and sets TEST_PG_HOST, its socket directory), each test on a database of its own:
// several nodes on one database, lost connections and outages, its query plans, migrations and
// migrate. The contract both stores keep is tested once for both: store/store_contract_test.cpp.
// Registered only under the postgresql label (tests/CMakeLists.txt), where a missing server
// is a failure.
#include "store/pg/store_pg.h"

#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <set>
#include <thread>
#include <vector>

#include "base/json.h"
#include "http/storage_status.h"
#include "metrics/metrics.h"
#include "store/audit.h"
#include "store/pg/internal.h"
#include "store/pg/pg_test_util.h"
#include "store/pg/timeline.h"
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
  // The first column of every row sql returns (a failure fails the test).
  std::vector<std::string> column(const std::string& text) {
    std::vector<std::string> out;
    PGconn* c = PQconnectdb(url().c_str());
    PGresult* r = PQexec(c, text.c_str());
    EXPECT_EQ(PQresultStatus(r), PGRES_TUPLES_OK) << PQresultErrorMessage(r);
    for (int i = 0; i < PQntuples(r); ++i) out.emplace_back(PQgetvalue(r, i, 0));
    PQclear(r);
    PQfinish(c);
    return out;
  }
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
                " doc, updated_at) SELECT 'o' || i, 'p', 'other', 'blood', 'r', 'x', '{}', 'x'"
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

// The test_ids of a listing read `page` at a time (each page after the last seq delivered, as
// the API's cursors do).
std::vector<std::string> list_ids_paged(Store& store, ListQuery q, long long page) {
  std::vector<std::string> ids;
  q.limit = page;
  for (;;) {
    long long got = 0;
    Status s = store.list_tests(q, [&](std::string_view json, long long seq) {
      EXPECT_GT(seq, q.after_seq);
      q.after_seq = seq;
      ids.push_back(field_of(json, "test_id"));
      ++got;
      return true;
    });
    EXPECT_TRUE(s.ok()) << s.message();
    if (got < page || !s.ok()) return ids;
  }
}

// Time ranges and the status filter at a size where the planner has to choose (100,000 tests
// of one clinic among 200,000, statistics taken): the range's rows are found through
// tests_by_created / tests_by_updated, not by walking the clinic from its first test, and the
// status through tests_by_status. The statements checked are the ones the store ran (read from
// pg_stat_activity), planned anew with the test's values.
TEST_F(PgStoreTest, TimeRangesAndStatusAreServedFromTheirIndexes) {
  PgOptions o;
  o.max_readers = 1;  // one reader: its last statement is the listing's
  auto store = open(o);
  ASSERT_TRUE(store);
  // created_at grows with seq (every 40 s from 2026-01-01), updated_at is 0-6 days later, one in
  // 1,000 is entered-in-error; even i: clinic big.
  ASSERT_EQ(sql("INSERT INTO tests (test_id, patient_id, clinic_id, test_type, result, created_at,"
                " doc, status, version, updated_at)"
                " SELECT 't' || i, 'p' || (i % 500), CASE WHEN i % 2 = 0 THEN 'big' ELSE 'other'"
                " END, 'blood', 'r', ts, '{\"test_id\":\"t' || i || '\"}',"
                " CASE WHEN i % 1000 = 0 THEN 'entered-in-error' ELSE 'final' END, 1,"
                " to_char(c + (i % 7) * interval '1 day', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')"
                " FROM generate_series(1, 200000) i,"
                " LATERAL (SELECT timestamp '2026-01-01' + i * interval '40 seconds' AS c) c,"
                " LATERAL (SELECT to_char(c.c, 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS ts) t"),
            "");
  ASSERT_EQ(sql("VACUUM ANALYZE tests"), "");
  auto expected = [&](const std::string& where) {
    return column("SELECT test_id FROM tests WHERE clinic_id = 'big' AND " + where +
                  " ORDER BY seq");
  };
  // Plans the statement the reader ran last that contains `marker` with these parameters.
  auto plan_of = [&](const std::string& marker, const std::string& args) {
    std::vector<std::string> q = column(
        "SELECT query FROM pg_stat_activity WHERE datname = current_database() AND"
        " application_name = 'testdata-api' AND query LIKE '%" +
        marker + "%'");
    EXPECT_EQ(q.size(), 1u) << marker;
    if (q.empty()) return std::string();
    std::string text;
    for (const std::string& line :
         column("PREPARE checked AS " + q[0] + "; EXPLAIN (ANALYZE, COSTS OFF) EXECUTE checked(" +
                args + ")")) {
      text += line + "\n";
    }
    return text;
  };

  // A day of created_at: 1,080 of the clinic's 100,000.
  ListQuery q;
  q.clinic_id = "big";
  q.created_from = "2026-02-01T00:00:00.000Z";
  q.created_to = "2026-02-02T00:00:00.000Z";
  std::vector<std::string> want =
      expected("created_at >= '2026-02-01T00:00:00.000Z' AND created_at < '2026-02-02'");
  ASSERT_EQ(want.size(), 1080u);
  EXPECT_EQ(list_ids(*store, q), want);
  std::string plan =
      plan_of("seq * 1", "'big', '2026-02-01T00:00:00.000Z', '2026-02-02T00:00:00.000Z', 0, 16");
  EXPECT_NE(plan.find("tests_by_created"), std::string::npos) << plan;
  EXPECT_EQ(plan.find("tests_by_clinic"), std::string::npos) << plan;
  EXPECT_EQ(plan.find("Seq Scan"), std::string::npos) << plan;
  EXPECT_EQ(plan.find("Rows Removed by Filter"), std::string::npos) << plan;
  EXPECT_EQ(list_ids_paged(*store, q, 37), want);

  // A day of updated_at: its rows are spread over a week of seqs. One in seven has updated_at
  // = created_at (as an uncorrected test does): those are found through tests_by_created,
  // the others through tests_by_updated, which holds only them.
  q = ListQuery();
  q.clinic_id = "big";
  q.updated_from = "2026-02-10T00:00:00.000Z";
  q.updated_to = "2026-02-11T00:00:00.000Z";
  want = expected("updated_at >= '2026-02-10T00:00:00.000Z' AND updated_at < '2026-02-11'");
  ASSERT_GT(want.size(), 500u);
  EXPECT_EQ(list_ids(*store, q), want);
  plan = plan_of("seq * 1", "'big', '2026-02-10T00:00:00.000Z', '2026-02-11T00:00:00.000Z', 0, 16");
  EXPECT_NE(plan.find("tests_by_updated"), std::string::npos) << plan;
  EXPECT_NE(plan.find("tests_by_created"), std::string::npos) << plan;
  EXPECT_EQ(plan.find("tests_by_clinic"), std::string::npos) << plan;
  EXPECT_EQ(plan.find("Seq Scan"), std::string::npos) << plan;
  EXPECT_EQ(sql("SELECT count(*) FROM tests WHERE clinic_id = 'big' AND updated_at = created_at"
                " AND updated_at >= '2026-02-10' AND updated_at < '2026-02-11'") != "0",
            true);
  EXPECT_EQ(list_ids_paged(*store, q, 100), want);

  // Retracted results: 200 of the clinic's 100,000.
  q = ListQuery();
  q.clinic_id = "big";
  q.status = TestStatus::kEnteredInError;
  want = expected("status = 'entered-in-error'");
  ASSERT_EQ(want.size(), 200u);
  EXPECT_EQ(list_ids(*store, q), want);
  plan = plan_of("status = $2 AND seq", "'big', 'entered-in-error', 0, 1000");
  EXPECT_NE(plan.find("tests_by_status"), std::string::npos) << plan;

  // A range most of the clinic is in, with a patient, and ranges on both times, paged: the
  // listings agree with the table whichever way each page is read.
  q = ListQuery();
  q.clinic_id = "big";
  q.created_from = "2026-01-15T00:00:00.000Z";
  q.created_to = "2026-03-01T00:00:00.000Z";
  want = expected("created_at >= '2026-01-15T00:00:00.000Z' AND created_at < '2026-03-01'");
  EXPECT_EQ(list_ids_paged(*store, q, 1000), want);
  q.patient_id = "p42";
  q.updated_from = "2026-02-01T00:00:00.000Z";
  want = expected(
      "created_at >= '2026-01-15T00:00:00.000Z' AND created_at < '2026-03-01' AND"
      " patient_id = 'p42' AND updated_at >= '2026-02-01T00:00:00.000Z'");
  ASSERT_GT(want.size(), 10u);
  EXPECT_EQ(list_ids_paged(*store, q, 7), want);
  // An empty range (from after to) lists nothing.
  q = ListQuery();
  q.clinic_id = "big";
  q.created_from = "2026-03-01T00:00:00.000Z";
  q.created_to = "2026-02-01T00:00:00.000Z";
  EXPECT_TRUE(list_ids(*store, q).empty());
}

// A listing of a range that holds one row in three of the clinic, scattered in seq order, is
// served by the ordered walk alone: a page that looked the rest up through the range's index
// whenever its walk came up short read every row of the range after it again, once per page.
TEST_F(PgStoreTest, AListingOfAScatteredWideRangeWalksTheClinic) {
  auto store = open();
  ASSERT_TRUE(store);
  ASSERT_EQ(sql("INSERT INTO tests (test_id, patient_id, clinic_id, test_type, result, created_at,"
                " doc, status, version, updated_at)"
                " SELECT 't' || i, 'p', 'big', 'blood', 'r', ts, '{\"test_id\":\"t' || i || '\"}',"
                " 'final', 1, CASE WHEN i % 3 = 0 THEN '2027' ELSE '2025' END || substr(ts, 5)"
                " FROM generate_series(1, 10000) i,"
                " LATERAL (SELECT to_char(timestamp '2026-01-01' + i * interval '40 seconds',"
                " 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS ts) t"),
            "");
  ASSERT_EQ(sql("VACUUM ANALYZE tests"), "");
  auto expected = [&](const std::string& where) {
    return column("SELECT test_id FROM tests WHERE clinic_id = 'big' AND " + where +
                  " ORDER BY seq");
  };
  ListQuery q;
  q.clinic_id = "big";
  q.updated_from = "2027-01-01T00:00:00.000Z";
  long long before = store->listing_range_lookups();
  std::vector<std::string> want = expected("updated_at >= '2027-01-01T00:00:00.000Z'");
  ASSERT_EQ(want.size(), 3333u);
  EXPECT_EQ(list_ids(*store, q), want);
  EXPECT_EQ(store->listing_range_lookups() - before, 0);
  // A block at the clinic's end: looked up once, to find where it starts, then walked.
  q = ListQuery();
  q.clinic_id = "big";
  q.created_from = "2026-01-05T00:00:00.000Z";
  before = store->listing_range_lookups();
  want = expected("created_at >= '2026-01-05T00:00:00.000Z'");
  ASSERT_GT(want.size(), 1000u);
  EXPECT_EQ(list_ids(*store, q), want);
  EXPECT_LE(store->listing_range_lookups() - before, 2);
}

// A listing's page that failed on a read replica after its range lookup had begun is read again
// on the primary from where the page started (the lookup had moved its parameters on: the
// second try skipped rows, or read a page length that was gone). The "replica" is this database
// through a role whose search_path finds a `+` for bigint that fails: the walk works there, the
// range lookup (seq + 0) does not.
TEST_F(PgStoreTest, AListingPageReadAgainOnThePrimaryStartsWhereThePageStarted) {
  ASSERT_TRUE(open());  // the schema
  ASSERT_EQ(sql("INSERT INTO tests (test_id, patient_id, clinic_id, test_type, result, created_at,"
                " doc, status, version, updated_at)"
                " SELECT 't' || i, 'p', 'big', 'blood', 'r', ts, '{\"test_id\":\"t' || i || '\"}',"
                " 'final', 1, ts"
                " FROM generate_series(1, 3000) i,"
                " LATERAL (SELECT to_char(timestamp '2026-01-01' + i * interval '40 seconds',"
                " 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS ts) t"),
            "");
  ASSERT_EQ(sql("VACUUM ANALYZE tests"), "");
  ASSERT_EQ(sql("DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname ="
                " 'tdapi_failing_reader') THEN CREATE ROLE tdapi_failing_reader LOGIN; END IF;"
                " END$$"),
            "");
  ASSERT_EQ(sql("CREATE SCHEMA failing;"
                " CREATE FUNCTION failing.plus(bigint, integer) RETURNS bigint LANGUAGE plpgsql"
                " AS 'BEGIN RAISE EXCEPTION ''not on this replica''; END';"
                " CREATE OPERATOR failing.+ (LEFTARG = bigint, RIGHTARG = integer,"
                " FUNCTION = failing.plus);"
                " GRANT USAGE ON SCHEMA failing TO tdapi_failing_reader;"
                " GRANT SELECT ON ALL TABLES IN SCHEMA public TO tdapi_failing_reader;"
                " ALTER ROLE tdapi_failing_reader IN DATABASE \"" +
                db_ + "\" SET search_path = failing, pg_catalog, public"),
            "");
  PgOptions o;
  o.read_url = "postgresql://tdapi_failing_reader@/" + db_ + "?host=" + pg_host();
  auto store = open(o);
  ASSERT_TRUE(store);
  ListQuery q;
  q.clinic_id = "big";
  q.created_from = "2026-01-02T00:00:00.000Z";  // a block at the clinic's end: looked up
  const std::vector<std::string> want = column(
      "SELECT test_id FROM tests WHERE created_at >= '2026-01-02T00:00:00.000Z' ORDER BY seq");
  ASSERT_GT(want.size(), 500u);
  std::vector<std::string> got;
  {
    ReplicaReadScope replicas(0);
    got = list_ids(*store, q);
  }
  EXPECT_EQ(got, want);
  EXPECT_GT(store->replica_fallbacks(), 0);
  EXPECT_GT(store->listing_range_lookups(), 0);
  store.reset();
  sql("REVOKE ALL ON ALL TABLES IN SCHEMA public FROM tdapi_failing_reader;"
      " DROP SCHEMA failing CASCADE;"
      " ALTER ROLE tdapi_failing_reader IN DATABASE \"" +
      db_ + "\" RESET search_path");
}

// With read replicas, a write's commit is followed by a query for its log position (for its
// answer's X-Commit-Position); a read's audit entry alone, committed without waiting for the disk,
// is in no answer: its commit costs the writer no second round trip.
// The fence file is shared by the nodes of one DATA_DIR: when another node has moved it to a
// later timeline (it wrote to a promoted standby), a node still connected to (or reconnecting
// to) the former primary must refuse it from its next write on, though it wrote there before.
TEST_F(PgStoreTest, AFenceAnotherNodeMovedOnRefusesTheServerThisNodeWroteTo) {
  TempDir dir;
  PgOptions o;
  o.timeline_file = dir.file("postgresql-timeline");
  auto store = open(o);
  ASSERT_TRUE(store);
  ASSERT_TRUE(store->insert(make_record("before")).status.ok());
  ServerTimeline fence;
  ASSERT_TRUE(load_fence(o.timeline_file, fence).ok());
  ASSERT_TRUE(fence.known());
  // Another node of this DATA_DIR wrote to the promoted standby (timeline + 1).
  ServerTimeline promoted = fence;
  ++promoted.timeline;
  ASSERT_TRUE(save_fence(o.timeline_file, promoted).ok());
  WriteOutcome out = store->insert(make_record("split"));
  EXPECT_EQ(out.status.code(), StatusCode::kFenced) << out.status.message();
  EXPECT_EQ(store->check_health().code(), StatusCode::kFenced);
  EXPECT_EQ(column("SELECT count(*) FROM tests WHERE test_id = 'split'"),
            std::vector<std::string>{"0"});
  // The fence file still says the later timeline.
  ASSERT_TRUE(load_fence(o.timeline_file, fence).ok());
  EXPECT_EQ(fence, promoted);
}

TEST_F(PgStoreTest, AReadsAuditEntryAloneDoesNotAskForTheCommitPosition) {
  PgOptions o;
  o.read_url = url();
  auto store = open(o);
  ASSERT_TRUE(store);
  std::vector<TestRecord> batch = {make_record("pos-1")};
  ASSERT_TRUE(store->insert_all(batch).status.ok());
  const long long after_write = store->commit_positions_read();
  EXPECT_GE(after_write, 1);
  const uint64_t position = store->commit_position();
  EXPECT_NE(position, 0u);
  for (int i = 0; i < 3; ++i) {
    AuditEntry read;
    read.action = "get";
    read.outcome = 200;
    ASSERT_TRUE(store->append_audit(read, AuditDurability::kCrashSafe).ok());
  }
  EXPECT_EQ(store->commit_positions_read(), after_write);
  EXPECT_EQ(store->commit_position(), position);
}

// A schema-2 database (before versions) is upgraded in place: every document rewritten by text
// (its escapes kept as they were), every test its own version 1 in seq order, written by
// "unknown"; the feed numbers new changes after them.
TEST_F(PgStoreTest, UpgradingToVersionsKeepsDocumentsAndNumbersEveryTestAVersion) {
  {
    PgOptions o;
    o.migrate_to = 2;
    auto old = open(o);
    ASSERT_TRUE(old);
  }
  ASSERT_EQ(column("SELECT max(version) FROM schema_migrations"), std::vector<std::string>{"2"});
  const std::string doc_z =
      "{\"test_id\":\"z1\",\"patient_id\":\"p1\",\"clinic_id\":\"c1\",\"test_type\":\"blood\","
      "\"result\":\"caf\\u00e9 \\/ 5\",\"created_at\":\"2026-01-01T00:00:00.000Z\"}";
  ASSERT_EQ(sql("INSERT INTO tests (test_id, patient_id, clinic_id, test_type, result,"
                " created_at, doc) VALUES"
                " ('z1', 'p1', 'c1', 'blood', 'caf\u00e9 / 5', '2026-01-01T00:00:00.000Z', '" +
                doc_z +
                "'),"
                " ('a2', 'p2', 'c2', 'urine', 'r', '2026-01-02T00:00:00.000Z',"
                " '{\"test_id\":\"a2\",\"patient_id\":\"p2\",\"clinic_id\":\"c2\","
                "\"test_type\":\"urine\",\"result\":\"r\",\"created_at\":\"2026-01-02T00:00:00."
                "000Z\"}')"),
            "");
  auto store = open();
  ASSERT_TRUE(store);
  ASSERT_EQ(column("SELECT max(version) FROM schema_migrations"),
            std::vector<std::string>{std::to_string(PgStore::kSchemaVersion)});
  StoredDocument d;
  ASSERT_TRUE(store->get_test("z1", d).ok());
  EXPECT_EQ(d.json, doc_z.substr(0, doc_z.size() - 1) +
                        ",\"status\":\"final\",\"version\":1,\"updated_at\":"
                        "\"2026-01-01T00:00:00.000Z\"}");
  EXPECT_EQ(d.version, 1);
  EXPECT_EQ(column("SELECT change_seq || ' ' || test_id || ' ' || version || ' ' || status || ' '"
                   " || changed_at || ' ' || changed_by || ' ' || (reason IS NULL) || ' ' ||"
                   " (doc = (SELECT doc FROM tests t WHERE t.test_id = v.test_id))"
                   " FROM test_versions v ORDER BY change_seq"),
            (std::vector<std::string>{"1 z1 1 final 2026-01-01T00:00:00.000Z unknown true true",
                                      "2 a2 1 final 2026-01-02T00:00:00.000Z unknown true true"}));
  EXPECT_EQ(column("SELECT status || ' ' || version || ' ' || updated_at FROM tests ORDER BY seq"),
            (std::vector<std::string>{"final 1 2026-01-01T00:00:00.000Z",
                                      "final 1 2026-01-02T00:00:00.000Z"}));
  std::string clinic;
  std::vector<TestVersion> versions;
  ASSERT_TRUE(store
                  ->list_history(HistoryQuery{"z1", 0, -1}, clinic,
                                 [&](const TestVersion& v) {
                                   versions.push_back(v);
                                   return true;
                                 })
                  .ok());
  EXPECT_EQ(clinic, "c1");
  ASSERT_EQ(versions.size(), 1u);
  EXPECT_EQ(versions[0].record.patient_id, "p1");
  EXPECT_EQ(versions[0].record.result, "caf\u00e9 / 5");
  EXPECT_EQ(versions[0].created_at, "2026-01-01T00:00:00.000Z");
  EXPECT_EQ(versions[0].changed_by, "unknown");
  EXPECT_FALSE(versions[0].reason.has_value());
  // A new create is change 3.
  ASSERT_TRUE(store->insert(make_record("new")).status.ok());
  long long latest = 0;
  ASSERT_TRUE(store->latest_change(latest).ok());
  EXPECT_EQ(latest, 3);
  std::vector<long long> seqs;
  ASSERT_TRUE(store
                  ->list_changes(ChangeQuery{"c1", 0, 100},
                                 [&](const TestVersion& v) {
                                   seqs.push_back(v.change_seq);
                                   return true;
                                 })
                  .ok());
  EXPECT_EQ(seqs, (std::vector<long long>{1, 3}));
}

// Two nodes write while a reader follows the feed with its token, a few changes at a time: it
// sees every change exactly once, in change_seq order (a change that commits after the reader
// moved past its number would be skipped).
TEST_F(PgStoreTest, AFeedReaderMissesNoChangeOfTwoWritingNodes) {
  auto node1 = open();
  auto node2 = open();
  auto reader = open();
  std::atomic<bool> writing{true};
  std::vector<std::thread> writers;
  for (int t = 0; t < 6; ++t) {
    PgStore* node = t % 2 ? node1.get() : node2.get();
    writers.emplace_back([node, t] {
      for (int i = 0; i < 40; ++i) {
        ASSERT_TRUE(node->insert(make_record("f" + std::to_string(t) + "_" + std::to_string(i)))
                        .status.ok());
      }
    });
  }
  std::thread joiner;  // joins the writers, then ends the reading
  std::vector<std::string> seen;
  long long token = 0;
  bool last_round = false;
  for (int round = 0; round < 100000 && !last_round; ++round) {
    last_round = !writing.load();
    for (;;) {
      long long got = 0;
      ASSERT_TRUE(reader
                      ->list_changes(ChangeQuery{"c1", token, 7},
                                     [&](const TestVersion& v) {
                                       EXPECT_GT(v.change_seq, token);
                                       token = v.change_seq;
                                       seen.push_back(v.record.test_id);
                                       ++got;
                                       return true;
                                     })
                      .ok());
      if (got < 7) break;
    }
    if (round == 0) {
      joiner = std::thread([&] {
        for (auto& w : writers) w.join();
        writing = false;
      });
    }
  }
  joiner.join();
  ASSERT_TRUE(last_round);
  std::set<std::string> distinct(seen.begin(), seen.end());
  EXPECT_EQ(seen.size(), 240u);
  EXPECT_EQ(distinct.size(), 240u);
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

// Corrections of one test on two nodes, every one expecting version 1: exactly one commits
// (version 2), the rest are refused with the version that won, and the feed has the create and
// that one correction, in order.
TEST_F(PgStoreTest, RacingCorrectionsOnTwoNodesExactlyOneCommits) {
  auto node1 = open();
  auto node2 = open();
  ASSERT_TRUE(node1->insert(make_record("fix")).status.ok());
  std::atomic<int> committed{0}, mismatched{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 10; ++t) {
    PgStore* node = t % 2 ? node1.get() : node2.get();
    threads.emplace_back([&, node, t] {
      TestCorrection c{make_record("fix"), "reason " + std::to_string(t), 1,
                       "k" + std::to_string(t)};
      c.record.result = "result " + std::to_string(t);
      c.record.status = TestStatus::kAmended;
      CorrectionOutcome out = node->correct(c, nullptr);
      ASSERT_TRUE(out.status.ok()) << out.status.message();
      if (out.refusal == CorrectionRefusal::kNone) {
        EXPECT_EQ(out.current.version, 2);
        committed++;
      } else {
        EXPECT_EQ(out.refusal, CorrectionRefusal::kVersionMismatch);
        EXPECT_EQ(out.current.version, 2);
        mismatched++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(committed.load(), 1);
  EXPECT_EQ(mismatched.load(), 9);
  std::vector<std::pair<long long, long long>> feed;  // (change_seq, version)
  ASSERT_TRUE(node2
                  ->list_changes(ChangeQuery{"c1", 0, 100},
                                 [&](const TestVersion& v) {
                                   feed.emplace_back(v.change_seq, v.version);
                                   return true;
                                 })
                  .ok());
  ASSERT_EQ(feed.size(), 2u);
  EXPECT_LT(feed[0].first, feed[1].first);
  EXPECT_EQ(feed[0].second, 1);
  EXPECT_EQ(feed[1].second, 2);
  StoredDocument d;
  ASSERT_TRUE(node2->get_test("fix", d).ok());
  EXPECT_EQ(d.version, 2);
  EXPECT_EQ(field_of(d.json, "status"), "amended");
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

// Every round trip has a deadline: past it the statement is cancelled (the server answers the
// cancel, so the connection works on) and the caller gets 503, not a wait.
TEST_F(PgStoreTest, AStatementPastTheRoundTripDeadlineIsCancelled) {
  PgStore::Connection c;
  c.conn = PQconnectdb(url().c_str());
  ASSERT_TRUE(c.healthy());
  c.round_trip_timeout = std::chrono::milliseconds(300);
  PgResult r = c.exec("SELECT pg_sleep(60)");
  ASSERT_FALSE(result_ok(r));
  EXPECT_TRUE(c.timed_out);
  Status s = c.error(r.get(), "sleep");
  EXPECT_EQ(s.code(), StatusCode::kBusy) << s.message();
  EXPECT_NE(s.message().find("round-trip deadline of 300 ms"), std::string::npos) << s.message();
  EXPECT_TRUE(c.healthy());
  r = c.run("one", "SELECT $1::int + 1", {"1"});
  ASSERT_TRUE(result_ok(r));
  EXPECT_FALSE(c.timed_out);
  EXPECT_EQ(std::string(PQgetvalue(r.get(), 0, 0)), "2");
}

// A write stuck behind another session's write lock (its own lock timeout far away) is answered
// by the write deadline: 503, not stored, and the store writes on once the lock is gone.
TEST_F(PgStoreTest, AWriteStuckOnTheServerIsAnsweredByTheDeadline) {
  PgOptions o;
  o.lock_timeout_ms = 120000;
  o.round_trip_timeout_ms = 500;
  auto store = open(o);
  ASSERT_TRUE(store);
  PGconn* holder = PQconnectdb(url().c_str());
  ASSERT_EQ(PQstatus(holder), CONNECTION_OK);
  PgResult held = wrap(PQexec(holder, "SELECT pg_advisory_lock(7416100)"));
  ASSERT_TRUE(result_ok(held));
  WriteOutcome out = store->insert(make_record("stuck"));
  EXPECT_EQ(out.status.code(), StatusCode::kBusy) << out.status.message();
  EXPECT_NE(out.status.message().find("deadline"), std::string::npos) << out.status.message();
  PQfinish(holder);
  EXPECT_TRUE(column("SELECT test_id FROM tests").empty());
  EXPECT_TRUE(store->insert(make_record("after")).status.ok());
}

// The writer's server process dies after the transaction id was taken and before COMMIT: the
// server, asked on a new connection, says the transaction aborted: the ordinary 503, not stored.
TEST_F(PgStoreTest, ACommitWhoseServerProcessDiedBeforeItIsSettledAsNotStored) {
  PgOptions o;
  o.test_before_commit = [&](int pid) {
    ASSERT_EQ(admin_sql("SELECT pg_terminate_backend(" + std::to_string(pid) + ")"), "");
    for (int i = 0; i < 200; ++i) {
      if (column("SELECT count(*) FROM pg_stat_activity WHERE pid = " + std::to_string(pid)) ==
          std::vector<std::string>{"0"}) {
        break;
      }
      usleep(10 * 1000);
    }
  };
  auto store = open(o);
  ASSERT_TRUE(store);
  WriteOutcome out = store->insert(make_record("lost"));
  EXPECT_EQ(out.status.code(), StatusCode::kUnavailable) << out.status.message();
  EXPECT_TRUE(column("SELECT test_id FROM tests").empty());
}

// The connection drops after the server committed and before its answer arrived: settled on a
// new connection (pg_xact_status: committed), the write is answered as what it is, stored.
TEST_F(PgStoreTest, ACommitWhoseAnswerIsLostIsSettledAsStored) {
  PgOptions o;
  o.test_commit_sent = [&](int socket, const std::string& xid) {
    for (int i = 0; i < 500; ++i) {
      if (column("SELECT pg_xact_status('" + xid + "'::xid8)") ==
          std::vector<std::string>{"committed"}) {
        break;
      }
      usleep(10 * 1000);
    }
    // The answer, if it came, is dropped with the socket: in its place one whose peer is gone.
    int pair[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
    ASSERT_EQ(dup2(pair[0], socket), socket);
    close(pair[0]);
    close(pair[1]);
  };
  auto store = open(o);
  ASSERT_TRUE(store);
  WriteOutcome out = store->insert(make_record("kept"));
  EXPECT_TRUE(out.status.ok()) << out.status.message();
  EXPECT_EQ(column("SELECT test_id FROM tests"), std::vector<std::string>{"kept"});
}

// DATABASE_SYNCHRONOUS_COMMIT: each offered value is what the writer's transactions run with
// (straight and behind a pooler: seen by a trigger inside the transaction); anything else is
// refused at open, never put into SQL.
TEST_F(PgStoreTest, EachSynchronousCommitValueIsWhatTheWritesRunWith) {
  bool traced = false;
  for (bool pooled : {false, true}) {
    for (const char* value : {"on", "remote_write", "remote_apply"}) {
      SCOPED_TRACE(std::string(value) + (pooled ? " pooled" : ""));
      PgOptions o;
      o.synchronous_commit = value;
      o.transaction_pooler = pooled;
      auto store = open(o);
      ASSERT_TRUE(store);
      if (!traced) {
        ASSERT_EQ(sql("CREATE TABLE seen (test_id text, setting text);"
                      "CREATE FUNCTION note_sync() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                      " INSERT INTO seen VALUES (NEW.test_id,"
                      " current_setting('synchronous_commit')); RETURN NEW; END $$;"
                      "CREATE TRIGGER note_sync AFTER INSERT ON tests FOR EACH ROW"
                      " EXECUTE FUNCTION note_sync()"),
                  "");
        traced = true;
      }
      const std::string id = std::string("sync-") + value + (pooled ? "-pooled" : "");
      ASSERT_TRUE(store->insert(make_record(id)).status.ok());
      EXPECT_EQ(column("SELECT setting FROM seen WHERE test_id = '" + id + "'"),
                std::vector<std::string>{value});
    }
  }
  PgOptions bad;
  bad.url = url();
  bad.synchronous_commit = "off";
  std::unique_ptr<PgStore> store;
  EXPECT_EQ(PgStore::open(bad, store).code(), StatusCode::kInternal);
}

// Behind a pooler in transaction mode the next transaction may run on another server
// connection: a pooled Connection leaves nothing on its session (no prepared statement, no
// setting) and each of its transactions sets its own timeouts.
TEST_F(PgStoreTest, APooledConnectionKeepsNothingPastATransaction) {
  PgStore::Connection c;
  c.conn = PQconnectdb(url().c_str());
  ASSERT_TRUE(c.healthy());
  c.pooled = true;
  c.local_settings = "SET LOCAL lock_timeout = 1234; SET LOCAL statement_timeout = 4321; ";
  c.statement_timeout_ms = "4321";
  c.lock_timeout_ms = "1234";
  const char* id = "x";
  // A statement outside a transaction runs with the timeouts, and so does a simple query and
  // a transaction's statement.
  PgResult r = c.run("timeouts",
                     "SELECT current_setting('lock_timeout'),"
                     " current_setting('statement_timeout'), $1::text",
                     {id});
  ASSERT_TRUE(result_ok(r)) << c.error(r.get(), "run").message();
  EXPECT_EQ(std::string(PQgetvalue(r.get(), 0, 0)), "1234ms");
  EXPECT_EQ(std::string(PQgetvalue(r.get(), 0, 1)), "4321ms");
  r = c.exec("SELECT current_setting('lock_timeout')");
  ASSERT_TRUE(result_ok(r));
  EXPECT_EQ(std::string(PQgetvalue(r.get(), 0, 0)), "1234ms");
  ASSERT_TRUE(result_ok(c.exec("BEGIN")));
  r = c.run("in_transaction", "SELECT current_setting('lock_timeout'), $1::text", {id});
  ASSERT_TRUE(result_ok(r));
  EXPECT_EQ(std::string(PQgetvalue(r.get(), 0, 0)), "1234ms");
  ASSERT_TRUE(result_ok(c.exec("COMMIT")));
  // Nothing left on the session.
  r = wrap(PQexec(c.conn,
                  "SELECT current_setting('lock_timeout'), (SELECT count(*) FROM"
                  " pg_prepared_statements)"));
  ASSERT_TRUE(result_ok(r));
  EXPECT_EQ(std::string(PQgetvalue(r.get(), 0, 0)), "0");
  EXPECT_EQ(std::string(PQgetvalue(r.get(), 0, 1)), "0");
  // A failing statement is the result (the pipeline's first error), and the connection works on.
  r = c.run("fails", "SELECT 1 / 0 WHERE $1::text IS NOT NULL", {id});
  EXPECT_FALSE(result_ok(r));
  EXPECT_EQ(c.error(r.get(), "divide").code(), StatusCode::kInternal);
  EXPECT_TRUE(c.healthy());
  EXPECT_TRUE(result_ok(c.run("again", "SELECT $1::text", {id})));
}

// A statement the server connection lacks (26000) or has already (42P05), as after a pooler
// moved the client to another server connection, is 503 and the connection is replaced.
TEST_F(PgStoreTest, AMissingOrDuplicatePreparedStatementIsUnavailableAndDropsTheConnection) {
  PgStore::Connection c;
  c.conn = PQconnectdb(url().c_str());
  ASSERT_TRUE(c.healthy());
  c.prepared.insert("get");  // believed prepared, not on this server connection
  PgResult r = c.run("get", "SELECT 1", {});
  ASSERT_FALSE(result_ok(r));
  Status s = c.error(r.get(), "get");
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.message();
  EXPECT_EQ(http_status_for(s.code()), 503);
  EXPECT_FALSE(c.healthy());

  PgStore::Connection d;
  d.conn = PQconnectdb(url().c_str());
  ASSERT_TRUE(result_ok(d.exec("PREPARE put AS SELECT 1")));  // left by an earlier client
  r = d.run("put", "SELECT 1", {});
  ASSERT_FALSE(result_ok(r));
  s = d.error(r.get(), "put");
  EXPECT_EQ(s.code(), StatusCode::kUnavailable) << s.message();
  EXPECT_FALSE(d.healthy());
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
               " AND state = 'active' AND query LIKE 'SELECT doc, clinic_id, version FROM tests%'");
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
    // m3 corrected: its versions 1 and 2 are copied, with who and why.
    TestCorrection fix{make_record("m3"), "wrong sample", 1, "k"};
    fix.record.result = "corrected result";
    fix.record.status = TestStatus::kCorrected;
    ASSERT_EQ(source->correct(fix, nullptr).refusal, CorrectionRefusal::kNone);
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
    std::string clinic;
    std::vector<TestVersion> history;
    ASSERT_TRUE(target
                    ->list_history(HistoryQuery{"m3", 0, -1}, clinic,
                                   [&](const TestVersion& v) {
                                     history.push_back(v);
                                     return true;
                                   })
                    .ok());
    ASSERT_EQ(history.size(), 2u);
    EXPECT_EQ(history[0].version, 2);
    EXPECT_EQ(history[0].record.result, "corrected result");
    EXPECT_EQ(history[0].record.status, TestStatus::kCorrected);
    EXPECT_EQ(history[0].reason.value_or("<none>"), "wrong sample");
    EXPECT_EQ(history[0].changed_by, "k");
    EXPECT_EQ(history[1].version, 1);
    StoredDocument d;
    ASSERT_TRUE(target->get_test("m3", d).ok());
    EXPECT_EQ(d.version, 2);
    EXPECT_EQ(d.json, history[0].doc);
    long long latest = 0;
    ASSERT_TRUE(target->latest_change(latest).ok());
    EXPECT_EQ(latest, 1502);  // 1,501 creates and one correction
    EXPECT_TRUE(target->insert(make_record("new-after-migrate")).status.ok());
    ASSERT_TRUE(target->latest_change(latest).ok());
    EXPECT_EQ(latest, 1503);
    // No copying under a running service (it hands out seqs and cursors of its own).
    std::tie(rc, out) = run({});
    EXPECT_EQ(rc, 1);
    EXPECT_EQ(out, "");
  }
  // A target changed behind the copy's back no longer verifies: a test's document, or a
  // version's author.
  ASSERT_EQ(sql("DELETE FROM tests WHERE test_id = 'new-after-migrate';"
                "DELETE FROM test_versions WHERE test_id = 'new-after-migrate'"),
            "");
  std::tie(rc, out) = run({});
  EXPECT_EQ(rc, 0) << out;
  ASSERT_EQ(sql("UPDATE test_versions SET changed_by = 'x' WHERE test_id = 'm3' AND version = 2"),
            "");
  std::tie(rc, out) = run({});
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("\"status\":\"mismatch\""), std::string::npos) << out;
  ASSERT_EQ(sql("UPDATE test_versions SET changed_by = 'k' WHERE test_id = 'm3' AND version = 2;"
                "UPDATE tests SET doc = doc || ' ' WHERE test_id = 'm7'"),
            "");
  std::tie(rc, out) = run({});
  EXPECT_EQ(rc, 1);
  EXPECT_NE(out.find("\"status\":\"mismatch\""), std::string::npos) << out;
}

// A database of the release before versions (schema 3, tests/fixtures) migrates: the SQLite
// store upgrades it as it opens it, and every test arrives as its version 1.
TEST_F(PgStoreTest, MigrateCopiesAnSqliteDatabaseOfTheSchemaBeforeVersions) {
  TempDir dir;
  const std::string path = dir.file("v3.db");
  {
    std::ifstream in(std::string(TDAPI_SOURCE_DIR) + "/tests/fixtures/schema-v3.db",
                     std::ios::binary);
    ASSERT_TRUE(in.good());
    std::ofstream out(path, std::ios::binary);
    out << in.rdbuf();
  }
  std::vector<std::string> args{"testdata-api", "migrate", "--from", path, "--to", url()};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  testing::internal::CaptureStdout();
  int rc = run_migrate_command(static_cast<int>(argv.size()), argv.data());
  std::string out = testing::internal::GetCapturedStdout();
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("\"status\":\"verified\""), std::string::npos) << out;
  const std::vector<std::string> tests = column("SELECT count(*) FROM tests");
  ASSERT_EQ(tests.size(), 1u);
  EXPECT_NE(tests[0], "0");
  EXPECT_EQ(column("SELECT count(*) FROM test_versions WHERE version = 1 AND changed_by ="
                   " 'unknown' AND doc = (SELECT doc FROM tests t WHERE t.test_id ="
                   " test_versions.test_id)"),
            tests);
}

// A database upgraded from schema 4 (tests/fixtures) and written since: the migrated tests keep
// their version 1 in test_versions, the new ones in their tests row until a first correction
// moves it. migrate copies every version at its position: the copy verifies, and the copy's feed
// and history read as the source's.
TEST_F(PgStoreTest, MigrateCopiesAnUpgradedSqliteDatabaseWithEveryVersionAtItsPosition) {
  TempDir dir;
  const std::string path = dir.file("v4.db");
  {
    std::ifstream in(std::string(TDAPI_SOURCE_DIR) + "/tests/fixtures/schema-v4.db",
                     std::ios::binary);
    ASSERT_TRUE(in.good());
    std::ofstream out(path, std::ios::binary);
    out << in.rdbuf();
  }
  auto feed_of = [](Store& store) {
    std::vector<std::string> out;
    ChangeQuery q;
    q.clinic_id = "c1";
    q.limit = 3;  // pages ending at each kind of row
    for (;;) {
      size_t got = 0;
      EXPECT_TRUE(store
                      .list_changes(q,
                                    [&](const TestVersion& v) {
                                      out.push_back(v.record.test_id + "@" +
                                                    std::to_string(v.version) + ":" +
                                                    std::to_string(v.change_seq) + ":" +
                                                    v.changed_by + ":" + v.doc);
                                      q.after_change_seq = v.change_seq;
                                      ++got;
                                      return true;
                                    })
                      .ok());
      if (got == 0) return out;
    }
  };
  std::vector<std::string> source_feed;
  {
    SqliteOptions so;
    so.path = path;
    std::unique_ptr<SqliteStore> source;
    ASSERT_TRUE(SqliteStore::open(so, source).ok());
    ASSERT_TRUE(source->insert(make_record("n1")).status.ok());
    ASSERT_TRUE(source->insert(make_record("n2")).status.ok());
    TestCorrection old_fix{TestRecord{"v-c1-0", "p0", "c1", "glucose", "5.1"}, "old one", 1, "k"};
    old_fix.record.status = TestStatus::kAmended;
    StoredDocument d;
    ASSERT_TRUE(source->get_test("v-c1-0", d).ok());
    old_fix.record.test_type = field_of(d.json, "test_type");
    CorrectionOutcome o = source->correct(old_fix, nullptr);
    ASSERT_TRUE(o.status.ok()) << o.status.message();
    ASSERT_EQ(o.refusal, CorrectionRefusal::kNone);
    TestCorrection new_fix{make_record("n1"), "new one", 1, "k2"};
    new_fix.record.status = TestStatus::kCorrected;
    new_fix.record.result = "corrected";
    ASSERT_EQ(source->correct(new_fix, nullptr).refusal, CorrectionRefusal::kNone);
    ASSERT_TRUE(source->insert(make_record("n3")).status.ok());
    source_feed = feed_of(*source);
  }
  ASSERT_EQ(source_feed.size(), 11u);  // 5 migrated creates and a correction; 3 creates, 2 fixes
  std::vector<std::string> args{"testdata-api", "migrate", "--from",  path,
                                "--to",         url(),     "--batch", "2"};
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  testing::internal::CaptureStdout();
  int rc = run_migrate_command(static_cast<int>(argv.size()), argv.data());
  std::string out = testing::internal::GetCapturedStdout();
  EXPECT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("\"status\":\"verified\""), std::string::npos) << out;
  EXPECT_NE(out.find("\"versions\":18,"), std::string::npos) << out;  // 13 from schema 4, 5 new
  auto target = open();
  EXPECT_EQ(feed_of(*target), source_feed);
  std::string clinic;
  std::vector<std::string> history;
  ASSERT_TRUE(target
                  ->list_history(HistoryQuery{"n1", 0, -1}, clinic,
                                 [&](const TestVersion& v) {
                                   history.push_back(std::to_string(v.version) + ":" +
                                                     std::to_string(v.change_seq) + ":" +
                                                     v.changed_by + ":" + v.record.result);
                                   return true;
                                 })
                  .ok());
  EXPECT_EQ(history, (std::vector<std::string>{"2:17:k2:corrected",
                                               "1:14:anonymous:" + make_record("n1").result}));
}

}  // namespace
}  // namespace tdapi
