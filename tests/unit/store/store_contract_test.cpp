// store_contract_test.cpp: the storage contract (store.h), written once and run against both
// stores, as a GoogleTest typed suite (LevelDB's env_test.cc is the model): SQLite on a file in
// a temp dir, PostgreSQL on a fresh database of the test server (TEST_PG_HOST). Each backend is
// a Target that opens a fresh, empty store and runs SQL on its database.
// tests/CMakeLists.txt runs StoreContract/Sqlite.* with the unit tests and
// StoreContract/Postgres.* as unit_pg_contract, which needs the postgresql fixture, and
// StoreContract/PostgresPooled.* (DATABASE_POOLER=transaction) as unit_pg_pooled_contract.
// What only one backend has (SQLite's files, checkpoints and fault hooks; PostgreSQL's outages,
// reconnects and several nodes on one database) is tested beside it: store_sqlite_test.cpp,
// store_pg_test.cpp, store_security_test.cpp.
#include <gtest/gtest.h>
#include <sqlite3.h>

#include <atomic>
#include <chrono>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "base/json.h"
#include "store/audit.h"
#include "store/pg/pg_test_util.h"
#include "store/pg/store_pg.h"
#include "store/sqlite/sqlite_test_util.h"
#include "store/sqlite/store_sqlite.h"
#include "store/store.h"
#include "store/store_test_util.h"
#include "temp_dir.h"

namespace tdapi {
namespace {

// SQLite: a database file in a temp dir of its own.
class SqliteTarget {
 public:
  static constexpr const char* kName = "Sqlite";
  void set_up() {}
  // A store on this test's database (the same one each time: reopening sees what was stored).
  std::unique_ptr<Store> open() { return open_sqlite_at(path()); }
  // Runs sql on the database on a connection of its own; "" or the error.
  std::string sql(const std::string& text) {
    sqlite3* db = nullptr;
    std::string error;
    if (sqlite3_open(path().c_str(), &db) != SQLITE_OK) {
      error = sqlite3_errmsg(db);
    } else {
      sqlite3_busy_timeout(db, 5000);
      char* err = nullptr;
      if (sqlite3_exec(db, text.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
        error = err ? err : "error";
      }
      sqlite3_free(err);
    }
    sqlite3_close(db);
    return error;
  }

 private:
  std::string path() const { return dir_.file("t.db"); }
  TempDir dir_;
};

// PostgreSQL: a database of its own on the test server, dropped after the test.
// PostgresPooled: the same with DATABASE_POOLER=transaction's code paths (unnamed statements,
// settings per transaction), straight to the server.
template <bool kPooled>
class PostgresTargetOf {
 public:
  static constexpr const char* kName = kPooled ? "PostgresPooled" : "Postgres";
  void set_up() { database_.create(); }
  std::unique_ptr<Store> open() {
    PgOptions o;
    o.url = database_.url();
    o.transaction_pooler = kPooled;
    std::unique_ptr<PgStore> store;
    Status s = PgStore::open(o, store);
    EXPECT_TRUE(s.ok()) << s.message();
    return store;
  }
  std::string sql(const std::string& text) { return database_.sql(text); }

 private:
  PgTestDatabase database_;
};

template <typename Target>
class StoreContract : public ::testing::Test {
 protected:
  void SetUp() override {
    target_.set_up();
    if (HasFatalFailure()) return;
    store_ = open();
    ASSERT_TRUE(store_);
  }
  void TearDown() override { store_.reset(); }  // before the target removes the database
  std::unique_ptr<Store> open() { return target_.open(); }
  // Closes the store and opens it again on the same database (a restart).
  void reopen() {
    store_.reset();
    store_ = open();
    ASSERT_TRUE(store_);
  }
  std::string sql(const std::string& text) { return target_.sql(text); }

  Target target_;
  std::unique_ptr<Store> store_;
};

struct TargetName {
  template <typename Target>
  static std::string GetName(int) {
    return Target::kName;
  }
};
using PostgresTarget = PostgresTargetOf<false>;
using PostgresPooledTarget = PostgresTargetOf<true>;
using Targets = ::testing::Types<SqliteTarget, PostgresTarget, PostgresPooledTarget>;
TYPED_TEST_SUITE(StoreContract, Targets, TargetName);

// (test_id, seq) of every test the query lists, with what the listing delivered checked: seq
// only grows, the listing ends Ok.
std::vector<std::pair<std::string, long long>> list_with_seq(Store& store, const ListQuery& q) {
  std::vector<std::pair<std::string, long long>> rows;
  Status s = store.list_tests(q, [&](std::string_view json, long long seq) {
    if (!rows.empty()) {
      EXPECT_GT(seq, rows.back().second);
    }
    rows.emplace_back(field_of(json, "test_id"), seq);
    return true;
  });
  EXPECT_TRUE(s.ok()) << s.message();
  return rows;
}

AuditEntry audit_entry(const std::string& action, const std::string& clinic) {
  AuditEntry e;
  e.request_id = "r-" + action;
  e.key_id = "0123456789abcdef";
  e.action = action;
  e.clinic_id = clinic;
  e.detail = R"({"note":"x"})";
  return e;
}

std::vector<AuditEntry> all_audit(Store& store, const AuditQuery& q = {}) {
  std::vector<AuditEntry> out;
  Status s = store.list_audit(q, [&](const AuditEntry& e) {
    out.push_back(e);
    return true;
  });
  EXPECT_TRUE(s.ok()) << s.message();
  return out;
}

// The whole trail verified as `audit verify` does: "" when intact, else the first problem.
std::string verify_trail(Store& store, long long* checked = nullptr) {
  AuditTrail trail;
  trail.list_all = [&](const std::function<bool(const AuditEntry&)>& on_entry) {
    AuditQuery everything;
    everything.after_seq = std::numeric_limits<long long>::min();
    return store.list_audit(everything, on_entry);
  };
  trail.count_up_to = [&](long long up_to, long long& rows) {
    return store.count_audit(up_to, rows);
  };
  AuditChainVerifier verifier;
  std::string problem;
  Status s = verify_audit_trail(trail, verifier, problem);
  EXPECT_TRUE(s.ok()) << s.message();
  if (checked) *checked = verifier.checked();
  return problem;
}

// -- create and get ---------------------------------------------------------------------------

TYPED_TEST(StoreContract, ACreatedTestReadsBackWhole) {
  Store& store = *this->store_;
  WriteOutcome w = store.insert(make_record("t1", "c1", "blood"));
  ASSERT_TRUE(w.status.ok()) << w.status.message();
  EXPECT_TRUE(w.duplicate_ids.empty());
  std::string json, clinic;
  ASSERT_TRUE(store.get_test("t1", json, clinic).ok());
  EXPECT_EQ(clinic, "c1");
  EXPECT_EQ(field_of(json, "test_id"), "t1");
  EXPECT_EQ(field_of(json, "patient_id"), "patient-t1");
  EXPECT_EQ(field_of(json, "clinic_id"), "c1");
  EXPECT_EQ(field_of(json, "test_type"), "blood");
  EXPECT_EQ(field_of(json, "result"), "result of t1");
  const std::string created_at = field_of(json, "created_at");
  EXPECT_EQ(created_at.size(), 24u) << created_at;  // 2026-01-01T00:00:00.000Z
  EXPECT_EQ(created_at.back(), 'Z');
  // The listing delivers the same document.
  std::vector<std::string> listed;
  ListQuery q;
  q.clinic_id = "c1";
  ASSERT_TRUE(store
                  .list_tests(q,
                              [&](std::string_view doc, long long) {
                                listed.emplace_back(doc);
                                return true;
                              })
                  .ok());
  EXPECT_EQ(listed, std::vector<std::string>{json});
  EXPECT_TRUE(list_ids(store, "c2").empty());
  EXPECT_EQ(store.stats().writes, 1);
}

TYPED_TEST(StoreContract, TestsAndTheCursorKeySurviveAReopen) {
  ASSERT_TRUE(this->store_->insert(make_record("keep")).status.ok());
  const std::string secret = this->store_->instance_secret();
  EXPECT_EQ(secret.size(), 16u);
  this->reopen();
  EXPECT_EQ(list_ids(*this->store_, "c1"), std::vector<std::string>{"keep"});
  EXPECT_EQ(this->store_->instance_secret(), secret);  // cursors stay valid across restarts
  ASSERT_TRUE(this->store_->insert(make_record("next")).status.ok());
  EXPECT_EQ(list_ids(*this->store_, "c1"), (std::vector<std::string>{"keep", "next"}));
}

// -- duplicates -------------------------------------------------------------------------------

TYPED_TEST(StoreContract, ADuplicateInAnyClinicLeavesTheStoredTestUntouched) {
  Store& store = *this->store_;
  ASSERT_TRUE(store.insert(make_record("t1", "c1")).status.ok());
  for (const char* clinic : {"c1", "c2"}) {
    SCOPED_TRACE(clinic);
    TestRecord again = make_record("t1", clinic, "urine");
    again.patient_id = "someone else";
    again.result = "different";
    WriteOutcome w = store.insert(again);
    EXPECT_EQ(w.status.code(), StatusCode::kDuplicate) << w.status.message();
    EXPECT_EQ(w.duplicate_ids, std::vector<std::string>{"t1"});
  }
  std::string json, clinic;
  ASSERT_TRUE(store.get_test("t1", json, clinic).ok());
  EXPECT_EQ(clinic, "c1");
  EXPECT_EQ(field_of(json, "result"), "result of t1");
  EXPECT_EQ(field_of(json, "patient_id"), "patient-t1");
  EXPECT_EQ(list_ids(store, "c1"), std::vector<std::string>{"t1"});
  EXPECT_TRUE(list_ids(store, "c2").empty());
}

TYPED_TEST(StoreContract, RacingInsertsOfOneIdExactlyOneWinsAndItsRecordIsStored) {
  Store& store = *this->store_;
  constexpr int kClients = 40;
  std::vector<WriteOutcome> outcomes(kClients);
  std::vector<std::thread> threads;
  for (int t = 0; t < kClients; ++t) {
    threads.emplace_back([&, t] {
      TestRecord r = make_record("same", "c" + std::to_string(t % 3));
      r.result = "from " + std::to_string(t);
      outcomes[static_cast<size_t>(t)] = store.insert(r);
    });
  }
  for (auto& th : threads) th.join();
  int winner = -1, duplicates = 0;
  for (int t = 0; t < kClients; ++t) {
    const WriteOutcome& w = outcomes[static_cast<size_t>(t)];
    if (w.status.ok()) {
      EXPECT_EQ(winner, -1) << "two inserts of one id succeeded: " << winner << " and " << t;
      winner = t;
    } else {
      EXPECT_EQ(w.status.code(), StatusCode::kDuplicate) << w.status.message();
      EXPECT_EQ(w.duplicate_ids, std::vector<std::string>{"same"});
      ++duplicates;
    }
  }
  ASSERT_NE(winner, -1);
  EXPECT_EQ(duplicates, kClients - 1);
  std::string json, clinic;
  ASSERT_TRUE(store.get_test("same", json, clinic).ok());
  EXPECT_EQ(field_of(json, "result"), "from " + std::to_string(winner));
  EXPECT_EQ(clinic, "c" + std::to_string(winner % 3));
}

// -- batches ----------------------------------------------------------------------------------

TYPED_TEST(StoreContract, ABatchIsAllOrNothingAcrossClinicsAndNamesEveryDuplicate) {
  Store& store = *this->store_;
  ASSERT_TRUE(store.insert(make_record("old", "c2")).status.ok());
  // An id stored already (in another clinic) and one repeated within the batch.
  WriteOutcome w = store.insert_all({make_record("b1", "c1"), make_record("old", "c1"),
                                     make_record("b2", "c2"), make_record("b1", "c2")});
  EXPECT_EQ(w.status.code(), StatusCode::kDuplicate) << w.status.message();
  EXPECT_EQ(w.duplicate_ids, (std::vector<std::string>{"old", "b1"}));
  EXPECT_TRUE(list_ids(store, "c1").empty());  // nothing of it written
  EXPECT_EQ(list_ids(store, "c2"), std::vector<std::string>{"old"});
  std::string json;
  EXPECT_EQ(store.get_test("b2", json).code(), StatusCode::kNotFound);
  // Only repeated within the batch: refused as well.
  w = store.insert_all({make_record("x"), make_record("x")});
  EXPECT_EQ(w.status.code(), StatusCode::kDuplicate) << w.status.message();
  EXPECT_EQ(w.duplicate_ids, std::vector<std::string>{"x"});
  EXPECT_EQ(store.get_test("x", json).code(), StatusCode::kNotFound);
  // A good batch: all of it, in its order, in one transaction.
  w = store.insert_all({make_record("b1", "c1"), make_record("b2", "c2"), make_record("b3", "c1")});
  ASSERT_TRUE(w.status.ok()) << w.status.message();
  EXPECT_EQ(list_ids(store, "c1"), (std::vector<std::string>{"b1", "b3"}));
  EXPECT_EQ(list_ids(store, "c2"), (std::vector<std::string>{"old", "b2"}));
}

// Batches racing for shared ids: for each id exactly one batch wins, and a batch that lost
// left none of its other records behind.
TYPED_TEST(StoreContract, RacingBatchesAreEachAllOrNothing) {
  Store& store = *this->store_;
  constexpr int kThreads = 8, kRounds = 20;
  std::vector<std::vector<bool>> won(kThreads, std::vector<bool>(kRounds));
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kRounds; ++i) {
        TestRecord own = make_record("own" + std::to_string(t) + "-" + std::to_string(i), "c1");
        TestRecord shared = make_record("shared" + std::to_string(i), "c2");
        shared.result = "from " + std::to_string(t);
        WriteOutcome w = store.insert_all({own, shared});
        EXPECT_TRUE(w.status.ok() || w.status.code() == StatusCode::kDuplicate)
            << w.status.message();
        if (w.status.code() == StatusCode::kDuplicate) {
          EXPECT_EQ(w.duplicate_ids, std::vector<std::string>{shared.test_id});
        }
        won[static_cast<size_t>(t)][static_cast<size_t>(i)] = w.status.ok();
      }
    });
  }
  for (auto& th : threads) th.join();
  std::set<std::string> expected_own;
  for (int i = 0; i < kRounds; ++i) {
    int winners = 0;
    for (int t = 0; t < kThreads; ++t) {
      if (!won[static_cast<size_t>(t)][static_cast<size_t>(i)]) continue;
      ++winners;
      expected_own.insert("own" + std::to_string(t) + "-" + std::to_string(i));
      std::string json;
      ASSERT_TRUE(store.get_test("shared" + std::to_string(i), json).ok());
      EXPECT_EQ(field_of(json, "result"), "from " + std::to_string(t));
    }
    EXPECT_EQ(winners, 1) << "shared" << i;
  }
  std::vector<std::string> own = list_ids(store, "c1");
  EXPECT_EQ(std::set<std::string>(own.begin(), own.end()), expected_own);
  EXPECT_EQ(own.size(), expected_own.size());
  EXPECT_EQ(list_ids(store, "c2").size(), static_cast<size_t>(kRounds));
}

TYPED_TEST(StoreContract, ConcurrentWritersAreAllStoredInFewerTransactions) {
  Store& store = *this->store_;
  constexpr int kThreads = 16, kEach = 50;
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        WriteOutcome w =
            store.insert(make_record("w" + std::to_string(t) + "-" + std::to_string(i)));
        if (!w.status.ok()) {
          ADD_FAILURE() << w.status.message();
          failures++;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  std::vector<std::string> ids = list_ids(store, "c1");
  EXPECT_EQ(ids.size(), static_cast<size_t>(kThreads * kEach));
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), ids.size());
  StoreStats stats = store.stats();
  EXPECT_EQ(stats.writes, kThreads * kEach);
  EXPECT_EQ(stats.rollbacks, 0);
  EXPECT_EQ(stats.commits, stats.transactions);
  // Group commit for real: 16 writers waiting on each other's commit share transactions.
  EXPECT_LT(stats.transactions, stats.writes);
}

// -- listings, paging, cursors ----------------------------------------------------------------

TYPED_TEST(StoreContract, ListsOldestFirstAndFiltersExactly) {
  Store& store = *this->store_;
  for (const char* id : {"z", "a", "m"}) ASSERT_TRUE(store.insert(make_record(id)).status.ok());
  EXPECT_EQ(list_ids(store, "c1"), (std::vector<std::string>{"z", "a", "m"}));
  for (int i = 0; i < 10; ++i) {
    TestRecord r = make_record("f" + std::to_string(i), "c2");
    r.patient_id = i % 2 ? "odd" : "even";
    r.test_type = i % 3 ? "blood" : "urine";
    ASSERT_TRUE(store.insert(r).status.ok());
  }
  ListQuery q;
  q.clinic_id = "c2";
  q.patient_id = "odd";
  EXPECT_EQ(list_ids(store, q), (std::vector<std::string>{"f1", "f3", "f5", "f7", "f9"}));
  q.test_type = "urine";
  EXPECT_EQ(list_ids(store, q), (std::vector<std::string>{"f3", "f9"}));
  q.patient_id.reset();
  EXPECT_EQ(list_ids(store, q), (std::vector<std::string>{"f0", "f3", "f6", "f9"}));
  // Exact matches only: no prefix, no case folding.
  q.test_type = "Urine";
  EXPECT_TRUE(list_ids(store, q).empty());
  q.test_type = "ur";
  EXPECT_TRUE(list_ids(store, q).empty());
  EXPECT_TRUE(list_ids(store, "c").empty());
  EXPECT_TRUE(list_ids(store, "C2").empty());
}

// Keyset paging (limit, after_seq) through a clinic of more rows than one of the store's own
// pages: every test once, in order; a limit past one page; on_page_end stops the listing.
TYPED_TEST(StoreContract, PagesWithLimitAndAfterSeqVisitEveryTestOnceInOrder) {
  Store& store = *this->store_;
  std::vector<TestRecord> batch;
  std::vector<std::string> even;
  for (int i = 0; i < 2500; ++i) {
    batch.push_back(make_record("t" + std::to_string(i), i % 2 ? "odd" : "even"));
    if (i % 2 == 0) even.push_back(batch.back().test_id);
  }
  ASSERT_TRUE(store.insert_all(batch).status.ok());
  EXPECT_EQ(list_ids(store, "even"), even);  // more than one page of the store's own

  ListQuery page;
  page.clinic_id = "even";
  page.limit = 3;
  auto rows = list_with_seq(store, page);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[2].first, "t4");
  page.after_seq = rows.back().second;
  EXPECT_EQ(list_ids(store, page), (std::vector<std::string>{"t6", "t8", "t10"}));

  // A walk of pages of 400, each after the last seq of the one before.
  std::vector<std::string> walked;
  page.after_seq = 0;
  page.limit = 400;
  for (int guard = 0; guard < 10; ++guard) {
    rows = list_with_seq(store, page);
    for (const auto& r : rows) walked.push_back(r.first);
    if (rows.size() < 400) break;
    page.after_seq = rows.back().second;
  }
  EXPECT_EQ(walked, even);

  // A limit larger than one of the store's pages: exactly that many.
  page.after_seq = 0;
  page.limit = 1100;
  rows = list_with_seq(store, page);
  ASSERT_EQ(rows.size(), 1100u);
  EXPECT_EQ(rows.back().first, even[1099]);
  page.after_seq = rows.back().second;
  page.limit = -1;
  EXPECT_EQ(list_ids(store, page).size(), 150u);

  // on_page_end returning false stops after the first page.
  ListQuery all;
  all.clinic_id = "even";
  size_t delivered = 0;
  int pages = 0;
  ASSERT_TRUE(store
                  .list_tests(
                      all,
                      [&](std::string_view, long long) {
                        ++delivered;
                        return true;
                      },
                      [&] {
                        ++pages;
                        return false;
                      })
                  .ok());
  EXPECT_EQ(pages, 1);
  EXPECT_GT(delivered, 0u);
  EXPECT_LE(delivered, 1000u);
  // on_row returning false stops at once.
  delivered = 0;
  ASSERT_TRUE(store
                  .list_tests(all,
                              [&](std::string_view, long long) {
                                ++delivered;
                                return delivered < 5;
                              })
                  .ok());
  EXPECT_EQ(delivered, 5u);
}

// Other clients add to the clinic between the listing's pages: every test that was there is
// delivered once and in order, and nothing twice. Sizes vary so that pages end on the byte
// bound as well as on the row bound.
TYPED_TEST(StoreContract, AListingWhileWritersAddReturnsEachTestOnceInOrder) {
  Store& store = *this->store_;
  std::vector<std::string> before;
  std::vector<TestRecord> batch;
  for (int i = 0; i < 3000; ++i) {
    TestRecord r = make_record("old" + std::to_string(i));
    r.result = std::string(i % 7 == 0 ? 3000 : 40, 'r');
    before.push_back(r.test_id);
    batch.push_back(r);
    if (batch.size() == 500) {
      ASSERT_TRUE(store.insert_all(batch).status.ok());
      batch.clear();
    }
  }
  ListQuery q;
  q.clinic_id = "c1";
  std::vector<std::pair<std::string, long long>> rows;
  int added = 0, pages = 0;
  Status s = store.list_tests(
      q,
      [&](std::string_view json, long long seq) {
        rows.emplace_back(field_of(json, "test_id"), seq);
        return true;
      },
      [&] {
        ++pages;
        for (int i = 0; i < 5 && added < 40; ++i) {
          EXPECT_TRUE(store.insert(make_record("new" + std::to_string(added++))).status.ok());
        }
        return true;
      });
  ASSERT_TRUE(s.ok()) << s.message();
  EXPECT_GT(pages, 3);
  for (size_t i = 1; i < rows.size(); ++i) ASSERT_LT(rows[i - 1].second, rows[i].second) << i;
  std::vector<std::string> old_ids;
  for (const auto& r : rows) {
    if (r.first.rfind("old", 0) == 0) old_ids.push_back(r.first);
  }
  EXPECT_EQ(old_ids, before);
  std::set<std::string> distinct;
  for (const auto& r : rows) EXPECT_TRUE(distinct.insert(r.first).second) << r.first;
  EXPECT_GT(rows.size(), before.size());  // added between pages, after the last seq seen
}

// A cursor after the newest test must not skip what comes next: a seq is never handed out
// twice, also after the newest test was deleted (by hand, in the database) and across restarts.
TYPED_TEST(StoreContract, ASeqIsNeverReusedAfterTheNewestTestIsDeleted) {
  ASSERT_TRUE(this->store_->insert(make_record("a")).status.ok());
  ASSERT_TRUE(this->store_->insert(make_record("b")).status.ok());
  ListQuery q;
  q.clinic_id = "c1";
  const long long seq_b = list_with_seq(*this->store_, q).back().second;
  ASSERT_EQ(this->sql("DELETE FROM tests WHERE test_id = 'b'"), "");
  ASSERT_TRUE(this->store_->insert(make_record("c")).status.ok());
  auto rows = list_with_seq(*this->store_, q);
  ASSERT_EQ(rows.size(), 2u);
  EXPECT_EQ(rows[1].first, "c");
  EXPECT_GT(rows[1].second, seq_b) << "c took the number of the deleted b";
  this->store_.reset();
  ASSERT_EQ(this->sql("DELETE FROM tests WHERE test_id = 'c'"), "");
  this->reopen();
  ASSERT_TRUE(this->store_->insert(make_record("d")).status.ok());
  EXPECT_GT(list_with_seq(*this->store_, q).back().second, rows[1].second);
}

// list_all_tests (migrate's copy and check): every column of every test, in seq order, paged
// after the last seq seen.
TYPED_TEST(StoreContract, ListAllTestsPagesEveryTestInSeqOrder) {
  Store& store = *this->store_;
  std::vector<std::string> written;
  for (int i = 0; i < 7; ++i) {
    written.push_back("t" + std::to_string(i));
    ASSERT_TRUE(store.insert(make_record(written.back(), i % 2 ? "c1" : "c2")).status.ok());
  }
  std::vector<StoredTest> paged;
  long long last = 0;
  for (int page = 0; page < 10; ++page) {
    size_t before = paged.size();
    Status s = store.list_all_tests(last, 3, [&](const StoredTest& t) {
      EXPECT_GT(t.seq, last);
      last = t.seq;
      paged.push_back(t);
      return true;
    });
    ASSERT_TRUE(s.ok()) << s.message();
    EXPECT_LE(paged.size() - before, 3u);
    if (paged.size() - before < 3) break;
  }
  ASSERT_EQ(paged.size(), written.size());
  for (size_t i = 0; i < paged.size(); ++i) {
    const StoredTest& t = paged[i];
    EXPECT_EQ(t.test_id, written[i]);
    EXPECT_EQ(t.patient_id, "patient-" + written[i]);
    EXPECT_EQ(t.clinic_id, i % 2 ? "c1" : "c2");
    EXPECT_EQ(t.test_type, "blood");
    EXPECT_EQ(t.result, "result of " + written[i]);
    std::string json;
    ASSERT_TRUE(store.get_test(t.test_id, json).ok());
    EXPECT_EQ(t.doc, json);
    EXPECT_EQ(t.created_at, field_of(json, "created_at"));
  }
  int seen = 0;
  ASSERT_TRUE(store
                  .list_all_tests(0, 100,
                                  [&](const StoredTest&) {
                                    ++seen;
                                    return seen < 2;
                                  })
                  .ok());
  EXPECT_EQ(seen, 2);  // stops when on_row returns false
}

// -- versions, corrections, history, the change feed -------------------------------------------

// A correction of test_id from the version expected, as the PUT handler makes it.
TestCorrection correction_of(const std::string& id, long long expected, TestStatus status,
                             const std::string& clinic = "c1") {
  TestCorrection c;
  c.record = make_record(id, clinic);
  c.record.result = "corrected " + id + " from v" + std::to_string(expected);
  c.record.status = status;
  c.reason = "recalibrated analyser";
  c.expected_version = expected;
  c.changed_by = "0123456789abcdef";
  return c;
}

std::vector<TestVersion> history_of(Store& store, const std::string& id, HistoryQuery q = {}) {
  q.test_id = id;
  std::vector<TestVersion> out;
  std::string clinic;
  Status s = store.list_history(q, clinic, [&](const TestVersion& v) {
    out.push_back(v);
    return true;
  });
  EXPECT_TRUE(s.ok()) << s.message();
  return out;
}

std::vector<TestVersion> changes_of(Store& store, const std::string& clinic, long long after = 0,
                                    long long limit = 1000) {
  ChangeQuery q;
  q.clinic_id = clinic;
  q.after_change_seq = after;
  q.limit = limit;
  std::vector<TestVersion> out;
  Status s = store.list_changes(q, [&](const TestVersion& v) {
    out.push_back(v);
    return true;
  });
  EXPECT_TRUE(s.ok()) << s.message();
  return out;
}

long long number_of(std::string_view json, const char* name) {
  JsonTree tree = parse_json_document(json);
  const cJSON* v = tree ? cJSON_GetObjectItemCaseSensitive(tree.get(), name) : nullptr;
  return v && cJSON_IsNumber(v) ? static_cast<long long>(v->valuedouble) : -1;
}

TYPED_TEST(StoreContract, ACreateIsVersion1WithItsHistoryRow) {
  Store& store = *this->store_;
  AuditEntry a = audit_entry("create", "c1");
  ASSERT_TRUE(store.insert(make_record("t1"), &a).status.ok());
  TestRecord pre = make_record("t2");
  pre.status = TestStatus::kPreliminary;
  ASSERT_TRUE(store.insert(pre).status.ok());  // no audit entry: written by "anonymous"

  StoredDocument doc;
  ASSERT_TRUE(store.get_test("t1", doc).ok());
  EXPECT_EQ(doc.version, 1);
  EXPECT_EQ(doc.clinic_id, "c1");
  const std::string created_at = field_of(doc.json, "created_at");
  EXPECT_EQ(doc.json, test_document(make_record("t1"), created_at, 1, created_at));
  EXPECT_EQ(field_of(doc.json, "status"), "final");
  EXPECT_EQ(number_of(doc.json, "version"), 1);
  EXPECT_EQ(field_of(doc.json, "updated_at"), created_at);
  ASSERT_TRUE(store.get_test("t2", doc).ok());
  EXPECT_EQ(field_of(doc.json, "status"), "preliminary");

  std::vector<TestVersion> h = history_of(store, "t1");
  ASSERT_EQ(h.size(), 1u);
  EXPECT_EQ(h[0].version, 1);
  EXPECT_EQ(h[0].record.test_id, "t1");
  EXPECT_EQ(h[0].record.patient_id, "patient-t1");
  EXPECT_EQ(h[0].record.clinic_id, "c1");
  EXPECT_EQ(h[0].record.test_type, "blood");
  EXPECT_EQ(h[0].record.result, "result of t1");
  EXPECT_EQ(h[0].record.status, TestStatus::kFinal);
  EXPECT_EQ(h[0].created_at, created_at);
  EXPECT_EQ(h[0].changed_at, created_at);
  EXPECT_EQ(h[0].changed_by, "0123456789abcdef");
  EXPECT_FALSE(h[0].reason.has_value());
  EXPECT_GT(h[0].change_seq, 0);
  ASSERT_TRUE(store.get_test("t1", doc).ok());
  EXPECT_EQ(h[0].doc, doc.json);
  std::vector<TestVersion> h2 = history_of(store, "t2");
  ASSERT_EQ(h2.size(), 1u);
  EXPECT_EQ(h2[0].changed_by, "anonymous");
  EXPECT_EQ(h2[0].record.status, TestStatus::kPreliminary);
  EXPECT_GT(h2[0].change_seq, h[0].change_seq);

  // A duplicate writes no version; a refused batch none either.
  EXPECT_EQ(store.insert(make_record("t1")).status.code(), StatusCode::kDuplicate);
  EXPECT_EQ(store.insert_all({make_record("t3"), make_record("t1")}).status.code(),
            StatusCode::kDuplicate);
  EXPECT_EQ(history_of(store, "t1").size(), 1u);
  std::string clinic;
  EXPECT_EQ(store
                .list_history({"t3", 0, -1}, clinic,
                              [](const TestVersion&) {
                                ADD_FAILURE();
                                return true;
                              })
                .code(),
            StatusCode::kNotFound);
  long long latest = -1;
  ASSERT_TRUE(store.latest_change(latest).ok());
  EXPECT_EQ(latest, h2[0].change_seq);

  // list_all_tests carries the new columns.
  std::vector<StoredTest> all;
  ASSERT_TRUE(store
                  .list_all_tests(0, 10,
                                  [&](const StoredTest& t) {
                                    all.push_back(t);
                                    return true;
                                  })
                  .ok());
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].status, "final");
  EXPECT_EQ(all[0].version, 1);
  EXPECT_EQ(all[0].updated_at, created_at);
  EXPECT_EQ(all[1].status, "preliminary");
}

TYPED_TEST(StoreContract, ACorrectionMakesVersion2AndHistoryAndFeedFollowCommitOrder) {
  Store& store = *this->store_;
  ASSERT_TRUE(store.insert(make_record("t1")).status.ok());
  ASSERT_TRUE(store.insert(make_record("other", "c2")).status.ok());
  ASSERT_TRUE(store.insert(make_record("t2")).status.ok());
  StoredDocument before;
  ASSERT_TRUE(store.get_test("t1", before).ok());
  const std::string created_at = field_of(before.json, "created_at");

  AuditEntry a = audit_entry("correct", "c1");
  TestCorrection c = correction_of("t1", 1, TestStatus::kAmended);
  c.record.test_type = "urine";
  CorrectionOutcome out = store.correct(c, &a);
  ASSERT_TRUE(out.status.ok()) << out.status.message();
  EXPECT_EQ(out.refusal, CorrectionRefusal::kNone);
  EXPECT_GE(out.txn_id, 0);
  EXPECT_EQ(a.outcome, 200);
  EXPECT_GT(a.seq, 0);
  EXPECT_EQ(out.current.version, 2);
  EXPECT_EQ(out.current.record.status, TestStatus::kAmended);
  EXPECT_EQ(out.current.created_at, created_at);
  EXPECT_GE(out.current.changed_at, created_at);
  EXPECT_EQ(out.current.changed_by, "0123456789abcdef");
  EXPECT_EQ(out.current.reason, std::optional<std::string>("recalibrated analyser"));
  EXPECT_EQ(out.current.doc, test_document(c.record, created_at, 2, out.current.changed_at));

  StoredDocument now;
  ASSERT_TRUE(store.get_test("t1", now).ok());
  EXPECT_EQ(now.version, 2);
  EXPECT_EQ(now.json, out.current.doc);
  EXPECT_EQ(field_of(now.json, "result"), c.record.result);
  EXPECT_EQ(field_of(now.json, "test_type"), "urine");
  EXPECT_EQ(field_of(now.json, "status"), "amended");
  EXPECT_EQ(field_of(now.json, "created_at"), created_at);
  EXPECT_EQ(field_of(now.json, "updated_at"), out.current.changed_at);

  // History: newest first, the old version intact.
  std::vector<TestVersion> h = history_of(store, "t1");
  ASSERT_EQ(h.size(), 2u);
  EXPECT_EQ(h[0].version, 2);
  EXPECT_EQ(h[0].doc, now.json);
  EXPECT_EQ(h[0].reason, std::optional<std::string>("recalibrated analyser"));
  EXPECT_EQ(h[0].record.test_type, "urine");
  EXPECT_EQ(h[0].change_seq, out.current.change_seq);
  EXPECT_EQ(h[1].version, 1);
  EXPECT_EQ(h[1].doc, before.json);
  EXPECT_EQ(h[1].record.result, "result of t1");
  EXPECT_FALSE(h[1].reason.has_value());

  // The listing shows the current version, in the test's old place.
  ListQuery q;
  q.clinic_id = "c1";
  std::vector<std::string> docs;
  ASSERT_TRUE(store
                  .list_tests(q,
                              [&](std::string_view json, long long) {
                                docs.emplace_back(json);
                                return true;
                              })
                  .ok());
  ASSERT_EQ(docs.size(), 2u);
  EXPECT_EQ(docs[0], now.json);

  // The feed: the clinic's changes in commit order, create then correction.
  std::vector<TestVersion> feed = changes_of(store, "c1");
  ASSERT_EQ(feed.size(), 3u);
  EXPECT_EQ(feed[0].record.test_id, "t1");
  EXPECT_EQ(feed[0].version, 1);
  EXPECT_EQ(feed[1].record.test_id, "t2");
  EXPECT_EQ(feed[2].record.test_id, "t1");
  EXPECT_EQ(feed[2].version, 2);
  EXPECT_EQ(feed[2].doc, now.json);
  EXPECT_LT(feed[0].change_seq, feed[1].change_seq);
  EXPECT_LT(feed[1].change_seq, feed[2].change_seq);
  std::vector<TestVersion> other = changes_of(store, "c2");
  ASSERT_EQ(other.size(), 1u);
  EXPECT_EQ(other[0].record.test_id, "other");
  long long latest = -1;
  ASSERT_TRUE(store.latest_change(latest).ok());
  EXPECT_EQ(latest, feed[2].change_seq);

  // A retraction, then a correction of the retracted test is refused.
  CorrectionOutcome retracted =
      store.correct(correction_of("t1", 2, TestStatus::kEnteredInError), nullptr);
  ASSERT_TRUE(retracted.status.ok()) << retracted.status.message();
  EXPECT_EQ(retracted.refusal, CorrectionRefusal::kNone);
  EXPECT_EQ(retracted.current.version, 3);
  ListQuery listed;
  listed.clinic_id = "c1";
  EXPECT_EQ(list_ids(store, listed), (std::vector<std::string>{"t1", "t2"}));  // still listed
  this->reopen();
  ASSERT_TRUE(this->store_->get_test("t1", now).ok());
  EXPECT_EQ(now.version, 3);
  EXPECT_EQ(field_of(now.json, "status"), "entered-in-error");
  EXPECT_EQ(history_of(*this->store_, "t1").size(), 3u);
}

TYPED_TEST(StoreContract, EveryRefusalWritesOnlyItsAuditEntry) {
  Store& store = *this->store_;
  ASSERT_TRUE(store.insert(make_record("t1")).status.ok());
  ASSERT_TRUE(store.insert(make_record("gone")).status.ok());
  ASSERT_TRUE(
      store.correct(correction_of("gone", 1, TestStatus::kEnteredInError), nullptr).status.ok());
  StoredDocument t1_before, gone_before;
  ASSERT_TRUE(store.get_test("t1", t1_before).ok());
  ASSERT_TRUE(store.get_test("gone", gone_before).ok());
  long long latest_before = -1;
  ASSERT_TRUE(store.latest_change(latest_before).ok());

  struct Case {
    const char* name;
    TestCorrection correction;
    CorrectionRefusal refusal;
    int outcome;
    long long current_version;  // -1: none reported
  };
  TestCorrection unknown = correction_of("nope", 1, TestStatus::kCorrected);
  TestCorrection clinic = correction_of("t1", 1, TestStatus::kCorrected, "c2");
  TestCorrection patient = correction_of("t1", 1, TestStatus::kCorrected);
  patient.record.patient_id = "someone else";
  TestCorrection retracted = correction_of("gone", 2, TestStatus::kCorrected);
  TestCorrection stale = correction_of("t1", 7, TestStatus::kCorrected);
  TestCorrection old = correction_of("t1", 0, TestStatus::kCorrected);
  std::vector<Case> cases = {
      {"not found", unknown, CorrectionRefusal::kNotFound, 404, -1},
      {"clinic differs", clinic, CorrectionRefusal::kClinicDiffers, 404, 1},
      {"patient differs", patient, CorrectionRefusal::kPatientDiffers, 400, 1},
      {"retracted", retracted, CorrectionRefusal::kRetracted, 400, 2},
      {"version mismatch", stale, CorrectionRefusal::kVersionMismatch, 412, 1},
      {"version mismatch (older)", old, CorrectionRefusal::kVersionMismatch, 412, 1},
  };
  const size_t audit_before = all_audit(store).size();
  for (Case& k : cases) {
    SCOPED_TRACE(k.name);
    AuditEntry a = audit_entry("correct", k.correction.record.clinic_id);
    CorrectionOutcome out = store.correct(k.correction, &a);
    ASSERT_TRUE(out.status.ok()) << out.status.message();
    EXPECT_EQ(out.refusal, k.refusal);
    EXPECT_EQ(a.outcome, k.outcome);
    EXPECT_GT(a.seq, 0);
    if (k.current_version > 0) {
      EXPECT_EQ(out.current.version, k.current_version);
      EXPECT_EQ(out.current.record.clinic_id, "c1");
    }
    if (k.refusal == CorrectionRefusal::kRetracted) {
      EXPECT_EQ(out.current.record.status, TestStatus::kEnteredInError);
    }
  }
  // Only the audit entries, each with its outcome; no test, version or change written.
  std::vector<AuditEntry> entries = all_audit(store);
  ASSERT_EQ(entries.size(), audit_before + cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    EXPECT_EQ(entries[audit_before + i].outcome, cases[i].outcome) << cases[i].name;
    EXPECT_EQ(entries[audit_before + i].action, "correct");
  }
  EXPECT_EQ(verify_trail(store), "");
  StoredDocument t1_after, gone_after;
  ASSERT_TRUE(store.get_test("t1", t1_after).ok());
  ASSERT_TRUE(store.get_test("gone", gone_after).ok());
  EXPECT_EQ(t1_after.json, t1_before.json);
  EXPECT_EQ(t1_after.version, 1);
  EXPECT_EQ(gone_after.json, gone_before.json);
  EXPECT_EQ(history_of(store, "t1").size(), 1u);
  EXPECT_EQ(history_of(store, "gone").size(), 2u);
  long long latest_after = -1;
  ASSERT_TRUE(store.latest_change(latest_after).ok());
  EXPECT_EQ(latest_after, latest_before);
  std::string json;
  EXPECT_EQ(store.get_test("nope", json).code(), StatusCode::kNotFound);
  EXPECT_EQ(store.stats().rollbacks, 0);  // a refusal is no transaction failure
}

TYPED_TEST(StoreContract, RacingCorrectionsWithOneExpectedVersionExactlyOneCommits) {
  Store& store = *this->store_;
  ASSERT_TRUE(store.insert(make_record("t1")).status.ok());
  constexpr int kClients = 50;
  std::vector<CorrectionOutcome> outcomes(kClients);
  std::vector<AuditEntry> audits(kClients, audit_entry("correct", "c1"));
  std::vector<std::thread> threads;
  for (int t = 0; t < kClients; ++t) {
    threads.emplace_back([&, t] {
      TestCorrection c = correction_of("t1", 1, TestStatus::kCorrected);
      c.record.result = "from " + std::to_string(t);
      outcomes[static_cast<size_t>(t)] = store.correct(c, &audits[static_cast<size_t>(t)]);
    });
  }
  for (auto& th : threads) th.join();
  int winner = -1, refused = 0;
  for (int t = 0; t < kClients; ++t) {
    const CorrectionOutcome& o = outcomes[static_cast<size_t>(t)];
    ASSERT_TRUE(o.status.ok()) << o.status.message();
    if (o.refusal == CorrectionRefusal::kNone) {
      EXPECT_EQ(winner, -1) << "two corrections of version 1 committed: " << winner << ", " << t;
      winner = t;
      EXPECT_EQ(audits[static_cast<size_t>(t)].outcome, 200);
    } else {
      EXPECT_EQ(o.refusal, CorrectionRefusal::kVersionMismatch);
      EXPECT_EQ(o.current.version, 2);
      EXPECT_EQ(audits[static_cast<size_t>(t)].outcome, 412);
      ++refused;
    }
  }
  ASSERT_NE(winner, -1);
  EXPECT_EQ(refused, kClients - 1);
  StoredDocument doc;
  ASSERT_TRUE(store.get_test("t1", doc).ok());
  EXPECT_EQ(doc.version, 2);
  EXPECT_EQ(field_of(doc.json, "result"), "from " + std::to_string(winner));
  EXPECT_EQ(history_of(store, "t1").size(), 2u);
  EXPECT_EQ(verify_trail(store), "");
}

// Corrections between the pages of a listing walk (seq order): every test once, in order; a
// corrected test stays in its place, at its version when its page was read.
TYPED_TEST(StoreContract, ACorrectionRacingAListingWalkSkipsAndRepeatsNoRow) {
  Store& store = *this->store_;
  std::vector<TestRecord> batch;
  std::vector<std::string> ids;
  for (int i = 0; i < 2500; ++i) {
    batch.push_back(make_record("t" + std::to_string(i)));
    ids.push_back(batch.back().test_id);
  }
  ASSERT_TRUE(store.insert_all(batch).status.ok());
  ListQuery q;
  q.clinic_id = "c1";
  q.limit = 300;
  std::vector<std::string> walked;
  std::atomic<bool> stop{false};
  std::atomic<int> corrected{0};
  std::thread corrector([&] {
    // Corrects tests all over the clinic (before and after the walk's position) while it walks.
    for (int i = 0; i < 200 && !stop.load(); ++i) {
      const std::string id = "t" + std::to_string((i * 389) % 2500);
      StoredDocument d;
      if (!store.get_test(id, d).ok()) continue;
      TestCorrection c = correction_of(id, d.version, TestStatus::kCorrected);
      CorrectionOutcome o = store.correct(c, nullptr);
      EXPECT_TRUE(o.status.ok()) << o.status.message();
      if (o.refusal == CorrectionRefusal::kNone) corrected++;
    }
  });
  for (int guard = 0; guard < 100; ++guard) {
    auto rows = list_with_seq(store, q);
    for (const auto& r : rows) walked.push_back(r.first);
    if (rows.size() < 300) break;
    q.after_seq = rows.back().second;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  stop = true;
  corrector.join();
  EXPECT_GT(corrected.load(), 0);
  EXPECT_EQ(walked, ids);
}

TYPED_TEST(StoreContract, StatusAndDateRangeFiltersNarrowTheListing) {
  Store& store = *this->store_;
  std::vector<std::string> created;  // created_at of t0..t5
  for (int i = 0; i < 6; ++i) {
    TestRecord r = make_record("t" + std::to_string(i));
    if (i == 5) r.status = TestStatus::kPreliminary;
    ASSERT_TRUE(store.insert(r).status.ok());
    ASSERT_TRUE(store.insert(make_record("o" + std::to_string(i), "c2")).status.ok());
    StoredDocument d;
    ASSERT_TRUE(store.get_test(r.test_id, d).ok());
    created.push_back(field_of(d.json, "created_at"));
    std::this_thread::sleep_for(std::chrono::milliseconds(3));  // distinct milliseconds
  }
  for (size_t i = 1; i < created.size(); ++i) ASSERT_LT(created[i - 1], created[i]);
  CorrectionOutcome o = store.correct(correction_of("t1", 1, TestStatus::kCorrected), nullptr);
  ASSERT_TRUE(o.status.ok() && o.refusal == CorrectionRefusal::kNone) << o.status.message();
  const std::string updated_t1 = o.current.changed_at;
  std::this_thread::sleep_for(std::chrono::milliseconds(3));  // t3's updated_at after t1's
  o = store.correct(correction_of("t3", 1, TestStatus::kEnteredInError), nullptr);
  ASSERT_TRUE(o.status.ok() && o.refusal == CorrectionRefusal::kNone) << o.status.message();
  const std::string updated_t3 = o.current.changed_at;
  ASSERT_GT(updated_t3, updated_t1);
  ASSERT_GT(updated_t1, created[5]);

  ListQuery q;
  q.clinic_id = "c1";
  q.status = TestStatus::kFinal;
  EXPECT_EQ(list_ids(store, q), (std::vector<std::string>{"t0", "t2", "t4"}));
  q.status = TestStatus::kEnteredInError;
  EXPECT_EQ(list_ids(store, q), std::vector<std::string>{"t3"});
  q.status = TestStatus::kPreliminary;
  EXPECT_EQ(list_ids(store, q), std::vector<std::string>{"t5"});
  q.status = TestStatus::kAmended;
  EXPECT_TRUE(list_ids(store, q).empty());
  q.status.reset();

  // Half-open ranges: from <= created_at < to.
  q.created_from = created[1];
  q.created_to = created[4];
  EXPECT_EQ(list_ids(store, q), (std::vector<std::string>{"t1", "t2", "t3"}));
  q.created_to.reset();
  EXPECT_EQ(list_ids(store, q), (std::vector<std::string>{"t1", "t2", "t3", "t4", "t5"}));
  q.created_from.reset();
  q.created_to = created[1];
  EXPECT_EQ(list_ids(store, q), std::vector<std::string>{"t0"});
  q.created_from = created[3];  // from >= to: empty
  EXPECT_TRUE(list_ids(store, q).empty());
  q.created_from.reset();
  q.created_to.reset();
  // updated_at: moved by the corrections.
  q.updated_from = created[5];
  std::vector<std::string> late = list_ids(store, q);
  EXPECT_EQ(late, (std::vector<std::string>{"t1", "t3", "t5"}));
  q.updated_to = updated_t3;
  EXPECT_EQ(list_ids(store, q), (std::vector<std::string>{"t1", "t5"}));
  q.updated_from.reset();
  EXPECT_EQ(list_ids(store, q), (std::vector<std::string>{"t0", "t1", "t2", "t4", "t5"}));
  // Combined with the other filters, a status and paging.
  q.updated_to.reset();
  q.created_from = created[1];
  q.status = TestStatus::kFinal;
  EXPECT_EQ(list_ids(store, q), (std::vector<std::string>{"t2", "t4"}));
  q.patient_id = "patient-t4";
  EXPECT_EQ(list_ids(store, q), std::vector<std::string>{"t4"});
  q.patient_id.reset();
  q.test_type = "urine";
  EXPECT_TRUE(list_ids(store, q).empty());
  q.test_type.reset();
  q.status.reset();
  q.limit = 2;
  auto page = list_with_seq(store, q);
  ASSERT_EQ(page.size(), 2u);
  EXPECT_EQ(page[1].first, "t2");
  q.after_seq = page[1].second;
  q.limit = -1;
  EXPECT_EQ(list_ids(store, q), (std::vector<std::string>{"t3", "t4", "t5"}));
  q.clinic_id = "c2";
  q.after_seq = 0;
  EXPECT_EQ(list_ids(store, q).size(), 5u);  // o1..o5: created after t1
}

TYPED_TEST(StoreContract, HistoryAndChangesPage) {
  Store& store = *this->store_;
  ASSERT_TRUE(store.insert(make_record("t1")).status.ok());
  for (long long v = 1; v < 7; ++v) {
    CorrectionOutcome o = store.correct(correction_of("t1", v, TestStatus::kCorrected), nullptr);
    ASSERT_TRUE(o.status.ok() && o.refusal == CorrectionRefusal::kNone) << v;
    ASSERT_TRUE(store.insert(make_record("n" + std::to_string(v))).status.ok());
  }
  // History, 3 at a time, each page before the last version seen.
  std::vector<long long> versions;
  HistoryQuery hq;
  hq.limit = 3;
  for (int guard = 0; guard < 10; ++guard) {
    std::vector<TestVersion> page = history_of(store, "t1", hq);
    for (const TestVersion& v : page) versions.push_back(v.version);
    if (page.size() < 3) break;
    hq.before_version = page.back().version;
  }
  EXPECT_EQ(versions, (std::vector<long long>{7, 6, 5, 4, 3, 2, 1}));
  std::string clinic;
  int seen = 0;
  ASSERT_TRUE(
      store.list_history({"t1", 0, -1}, clinic, [&](const TestVersion&) { return ++seen < 2; })
          .ok());
  EXPECT_EQ(seen, 2);
  EXPECT_EQ(clinic, "c1");

  // Changes, 4 at a time, each page after the last change_seq seen: every change once, in
  // commit order.
  std::vector<TestVersion> all = changes_of(store, "c1");
  ASSERT_EQ(all.size(), 13u);
  std::vector<std::string> walked;
  long long after = 0;
  for (int guard = 0; guard < 10; ++guard) {
    std::vector<TestVersion> page = changes_of(store, "c1", after, 4);
    for (const TestVersion& v : page) {
      EXPECT_GT(v.change_seq, after);
      after = v.change_seq;
      walked.push_back(v.record.test_id + "@" + std::to_string(v.version));
    }
    if (page.size() < 4) break;
  }
  std::vector<std::string> expected{"t1@1"};
  for (int v = 1; v < 7; ++v) {
    expected.push_back("t1@" + std::to_string(v + 1));
    expected.push_back("n" + std::to_string(v) + "@1");
  }
  EXPECT_EQ(walked, expected);
  EXPECT_TRUE(changes_of(store, "c1", after).empty());  // nothing new after the end
  ASSERT_TRUE(store.insert(make_record("later")).status.ok());
  std::vector<TestVersion> next = changes_of(store, "c1", after);
  ASSERT_EQ(next.size(), 1u);
  EXPECT_EQ(next[0].record.test_id, "later");

  // list_all_versions (migrate): every version of every clinic, in change_seq order, paged.
  std::vector<long long> seqs;
  long long last = 0;
  for (int guard = 0; guard < 20; ++guard) {
    size_t before = seqs.size();
    ASSERT_TRUE(store
                    .list_all_versions(last, 5,
                                       [&](const TestVersion& v) {
                                         EXPECT_GT(v.change_seq, last);
                                         last = v.change_seq;
                                         seqs.push_back(v.change_seq);
                                         return true;
                                       })
                    .ok());
    if (seqs.size() - before < 5) break;
  }
  EXPECT_EQ(seqs.size(), 14u);
}

// A feed position is never handed out twice: after the test of the newest version was deleted
// (by hand, in the database) and across restarts, the next change comes after it.
TYPED_TEST(StoreContract, AChangeSeqIsNeverReusedAfterTheNewestVersionIsDeleted) {
  ASSERT_TRUE(this->store_->insert(make_record("a")).status.ok());
  ASSERT_TRUE(this->store_->insert(make_record("b")).status.ok());
  long long latest = 0;
  ASSERT_TRUE(this->store_->latest_change(latest).ok());
  // b removed by hand: its versions, and its row (where SQLite keeps an uncorrected version 1).
  ASSERT_EQ(this->sql("DELETE FROM test_versions WHERE test_id = 'b'"), "");
  ASSERT_EQ(this->sql("DELETE FROM tests WHERE test_id = 'b'"), "");
  ASSERT_TRUE(this->store_->insert(make_record("c")).status.ok());
  std::vector<TestVersion> feed = changes_of(*this->store_, "c1");
  ASSERT_EQ(feed.size(), 2u);
  EXPECT_EQ(feed[1].record.test_id, "c");
  EXPECT_GT(feed[1].change_seq, latest) << "c took the position of b's deleted version";
  this->store_.reset();
  ASSERT_EQ(this->sql("DELETE FROM test_versions WHERE test_id = 'c'"), "");
  ASSERT_EQ(this->sql("DELETE FROM tests WHERE test_id = 'c'"), "");
  this->reopen();
  CorrectionOutcome o =
      this->store_->correct(correction_of("a", 1, TestStatus::kCorrected), nullptr);
  ASSERT_TRUE(o.status.ok()) << o.status.message();
  EXPECT_GT(o.current.change_seq, feed[1].change_seq);
}

TYPED_TEST(StoreContract, WaitForCommitReturnsWhenAChangeCommits) {
  Store& store = *this->store_;
  std::atomic<bool> woke{false};
  std::thread waiter([&] {
    store.wait_for_commit(std::chrono::seconds(60));
    woke = true;
  });
  // Commits until the waiter is woken (it may not be waiting yet at the first): a wait that only
  // ends at its timeout sees all of these go by.
  int commits = 0;
  for (; commits < 300 && !woke.load(); ++commits) {
    ASSERT_TRUE(store.insert(make_record("t" + std::to_string(commits))).status.ok());
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_TRUE(woke.load()) << "not woken by " << commits << " commits";
  waiter.join();
  // With nothing committed, it returns after the timeout.
  store.wait_for_commit(std::chrono::milliseconds(10));
}

// -- keys -------------------------------------------------------------------------------------

TYPED_TEST(StoreContract, KeysAreCreatedFoundListedAndRevoked) {
  Store& store = *this->store_;
  ApiKey k{"0123456789abcdef",         "lab", {"write:c1", "read:c1"}, std::string(64, 'a'),
           "2026-11-28T00:00:00.000Z", ""};
  ApiKey k2{"fedcba9876543210",         "reader", {"read:c2"}, std::string(64, 'b'),
            "2026-11-28T00:00:01.000Z", ""};
  ASSERT_TRUE(store.create_key(k).ok());
  ASSERT_TRUE(store.create_key(k2).ok());
  ApiKey other = k2;
  other.name = "impostor";
  EXPECT_EQ(store.create_key(other).code(), StatusCode::kDuplicate);
  ApiKey got;
  ASSERT_TRUE(store.find_key(k.key_id, got).ok());
  EXPECT_EQ(got.key_id, k.key_id);
  EXPECT_EQ(got.name, "lab");
  EXPECT_EQ(got.scopes, (std::vector<std::string>{"write:c1", "read:c1"}));
  EXPECT_EQ(got.secret_hash, k.secret_hash);
  EXPECT_EQ(got.created_at, k.created_at);
  EXPECT_EQ(got.revoked_at, "");
  ASSERT_TRUE(store.find_key(k2.key_id, got).ok());
  EXPECT_EQ(got.name, "reader");  // the refused duplicate changed nothing
  std::vector<ApiKey> keys;
  ASSERT_TRUE(store.list_keys(keys).ok());
  ASSERT_EQ(keys.size(), 2u);
  EXPECT_EQ(keys[0].key_id, k.key_id);  // oldest first
  EXPECT_EQ(keys[1].key_id, k2.key_id);
  ASSERT_TRUE(store.revoke_key(k.key_id, "2026-11-28T01:00:00.000Z").ok());
  ASSERT_TRUE(store.revoke_key(k.key_id, "2026-11-28T02:00:00.000Z").ok());  // idempotent
  ASSERT_TRUE(store.find_key(k.key_id, got).ok());
  EXPECT_EQ(got.revoked_at, "2026-11-28T01:00:00.000Z");  // the first revocation stays
  ASSERT_TRUE(store.find_key(k2.key_id, got).ok());
  EXPECT_EQ(got.revoked_at, "");
  EXPECT_EQ(store.revoke_key("ffffffffffffffff", "x").code(), StatusCode::kNotFound);
  EXPECT_EQ(store.find_key("ffffffffffffffff", got).code(), StatusCode::kNotFound);
  this->reopen();
  ASSERT_TRUE(this->store_->find_key(k.key_id, got).ok());
  EXPECT_EQ(got.revoked_at, "2026-11-28T01:00:00.000Z");
}

// -- the audit chain --------------------------------------------------------------------------

TYPED_TEST(StoreContract, WritesCarryTheirAuditOutcomeAndTheEntriesChain) {
  Store& store = *this->store_;
  AuditEntry created = audit_entry("create", "c1");
  ASSERT_TRUE(store.insert(make_record("t1"), &created).status.ok());
  EXPECT_EQ(created.outcome, 201);
  EXPECT_EQ(created.seq, 1);
  EXPECT_EQ(created.prev_hash, kAuditGenesis);
  EXPECT_EQ(created.hash, audit_hash(created));
  AuditEntry dup = audit_entry("create", "c1");
  EXPECT_EQ(store.insert(make_record("t1"), &dup).status.code(), StatusCode::kDuplicate);
  EXPECT_EQ(dup.outcome, 409);  // the refusal is audited too
  EXPECT_EQ(dup.seq, 2);
  AuditEntry read = audit_entry("list", "c1");
  read.outcome = 200;
  ASSERT_TRUE(store.append_audit(read).ok());
  EXPECT_EQ(read.seq, 3);
  EXPECT_EQ(read.prev_hash, dup.hash);
  EXPECT_FALSE(read.ts.empty());
  // A batch: one entry per clinic it touches, each with the batch's outcome.
  std::vector<AuditEntry> batch_audit{audit_entry("batch", "c1"), audit_entry("batch", "c2")};
  ASSERT_TRUE(store.insert_all({make_record("b1", "c1"), make_record("b2", "c2")}, &batch_audit)
                  .status.ok());
  EXPECT_EQ(batch_audit[0].outcome, 201);
  EXPECT_EQ(batch_audit[1].outcome, 201);
  std::vector<AuditEntry> refused{audit_entry("batch", "c1"), audit_entry("batch", "c2")};
  EXPECT_EQ(
      store.insert_all({make_record("b3", "c1"), make_record("b2", "c2")}, &refused).status.code(),
      StatusCode::kDuplicate);
  EXPECT_EQ(refused[0].outcome, 409);
  EXPECT_EQ(refused[1].outcome, 409);
  std::string json;
  EXPECT_EQ(store.get_test("b3", json).code(), StatusCode::kNotFound);

  std::vector<AuditEntry> entries = all_audit(store);
  ASSERT_EQ(entries.size(), 7u);
  for (size_t i = 0; i < entries.size(); ++i) {
    EXPECT_EQ(entries[i].seq, static_cast<long long>(i + 1));
    EXPECT_EQ(entries[i].prev_hash, i == 0 ? std::string(kAuditGenesis) : entries[i - 1].hash);
  }
  EXPECT_EQ(entries[0].hash, created.hash);
  EXPECT_EQ(entries[0].request_id, "r-create");
  EXPECT_EQ(entries[0].key_id, "0123456789abcdef");
  EXPECT_EQ(entries[0].detail, R"({"note":"x"})");
  EXPECT_EQ(entries[0].ts, created.ts);
  EXPECT_EQ(entries[1].outcome, 409);
  EXPECT_EQ(entries[2].action, "list");
  EXPECT_EQ(entries[4].clinic_id, "c2");
  EXPECT_EQ(entries[6].outcome, 409);
  long long checked = 0;
  EXPECT_EQ(verify_trail(store, &checked), "");
  EXPECT_EQ(checked, 7);
}

TYPED_TEST(StoreContract, TheAuditChainContinuesUnderConcurrencyAndAcrossAReopen) {
  {
    Store& store = *this->store_;
    std::vector<std::thread> threads;
    for (int t = 0; t < 8; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 15; ++i) {
          AuditEntry a = audit_entry("create", "c1");
          EXPECT_TRUE(
              store.insert(make_record("t" + std::to_string(t) + "-" + std::to_string(i)), &a)
                  .status.ok());
          AuditEntry read = audit_entry("get", "c1");
          read.outcome = 200;
          EXPECT_TRUE(store.append_audit(read).ok());
        }
      });
    }
    for (auto& th : threads) th.join();
  }
  long long rows = -1;
  ASSERT_TRUE(this->store_->count_audit(1000, rows).ok());
  EXPECT_EQ(rows, 240);
  this->reopen();
  AuditEntry a = audit_entry("get", "c1");
  a.outcome = 404;
  ASSERT_TRUE(this->store_->append_audit(a).ok());
  EXPECT_EQ(a.seq, 241);
  long long checked = 0;
  EXPECT_EQ(verify_trail(*this->store_, &checked), "");
  EXPECT_EQ(checked, 241);
}

TYPED_TEST(StoreContract, AnEditedOrRemovedAuditEntryIsFoundByVerify) {
  for (int i = 0; i < 5; ++i) {
    AuditEntry a = audit_entry("list", "c" + std::to_string(i));
    a.outcome = 200;
    ASSERT_TRUE(this->store_->append_audit(a).ok());
  }
  EXPECT_EQ(verify_trail(*this->store_), "");
  ASSERT_EQ(this->sql("UPDATE audit SET clinic_id = 'forged' WHERE seq = 3"), "");
  std::string problem = verify_trail(*this->store_);
  EXPECT_EQ(problem.rfind("entry 3:", 0), 0u) << problem;
  ASSERT_EQ(this->sql("UPDATE audit SET clinic_id = 'c2' WHERE seq = 3"), "");
  EXPECT_EQ(verify_trail(*this->store_), "");
  ASSERT_EQ(this->sql("DELETE FROM audit WHERE seq = 2"), "");
  problem = verify_trail(*this->store_);
  EXPECT_NE(problem, "");
}

TYPED_TEST(StoreContract, AuditListsFilterByClinicAndTimeAndPageAndCount) {
  Store& store = *this->store_;
  for (int i = 0; i < 6; ++i) {
    AuditEntry a = audit_entry("list", i % 2 ? "odd" : "even");
    a.outcome = 200;
    a.ts = "2026-11-2" + std::to_string(i) + "T00:00:00.000Z";
    ASSERT_TRUE(store.append_audit(a).ok());
  }
  AuditQuery q;
  q.clinic_id = "odd";
  std::vector<AuditEntry> odd = all_audit(store, q);
  ASSERT_EQ(odd.size(), 3u);
  EXPECT_EQ(odd[0].seq, 2);
  EXPECT_EQ(odd[2].seq, 6);
  AuditQuery t;
  t.since = "2026-11-22";
  t.until = "2026-11-24";
  auto between = all_audit(store, t);
  ASSERT_EQ(between.size(), 2u);
  EXPECT_EQ(between[0].seq, 3);
  EXPECT_EQ(between[1].seq, 4);
  AuditQuery page;
  page.after_seq = 4;
  page.limit = 1;
  auto one = all_audit(store, page);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].seq, 5);
  EXPECT_EQ(one[0].ts, "2026-11-24T00:00:00.000Z");
  int seen = 0;
  ASSERT_TRUE(store.list_audit({}, [&](const AuditEntry&) { return ++seen < 2; }).ok());
  EXPECT_EQ(seen, 2);
  long long rows = -1;
  ASSERT_TRUE(store.count_audit(3, rows).ok());
  EXPECT_EQ(rows, 3);
  ASSERT_TRUE(store.count_audit(100, rows).ok());
  EXPECT_EQ(rows, 6);
  ASSERT_TRUE(store.count_audit(0, rows).ok());
  EXPECT_EQ(rows, 0);
}

// -- errors and health ------------------------------------------------------------------------

// What cannot name a stored test, key or clinic (stored ids and filters are valid UTF-8 without
// NUL: validate.h) finds nothing: not found or an empty listing, never a storage error.
TYPED_TEST(StoreContract, WhatCannotNameAStoredThingIsNotFound) {
  Store& store = *this->store_;
  ASSERT_TRUE(store.insert(make_record("t1")).status.ok());
  ApiKey k{"0123456789abcdef", "lab", {"read:c1"}, std::string(64, 'a'), "2026-01-01", ""};
  ASSERT_TRUE(store.create_key(k).ok());
  std::string json, clinic;
  const std::string invalid_utf8 = "t1\xff";
  const std::string with_nul("t1\0x", 4);
  for (const std::string& id : {std::string("nope"), std::string("T1"), std::string("t"),
                                std::string(""), invalid_utf8, with_nul}) {
    Status s = store.get_test(id, json, clinic);
    EXPECT_EQ(s.code(), StatusCode::kNotFound) << s.message();
  }
  ASSERT_TRUE(store.get_test("t1", json, clinic).ok());  // the real one, still there
  ApiKey got;
  for (const std::string& id : {std::string("ffffffffffffffff"), std::string("0123456789abcde\xff"),
                                std::string("\xc3\x28")}) {
    EXPECT_EQ(store.find_key(id, got).code(), StatusCode::kNotFound);
    EXPECT_EQ(store.revoke_key(id, "2026-01-02").code(), StatusCode::kNotFound);
  }
  ListQuery q;
  q.clinic_id = "c1\xff";
  EXPECT_TRUE(list_ids(store, q).empty());
  q.clinic_id = "c1";
  q.patient_id = "\xe2\x82";
  EXPECT_TRUE(list_ids(store, q).empty());
  q.patient_id.reset();
  q.test_type = "blood\xff";
  EXPECT_TRUE(list_ids(store, q).empty());
  EXPECT_TRUE(store.check_health().ok());  // none of it says storage is failing
}

TYPED_TEST(StoreContract, AHealthyStoreSaysSoAndCountsItsWrites) {
  Store& store = *this->store_;
  Status health = store.check_health();
  EXPECT_TRUE(health.ok()) << health.name() << ": " << health.message();
  StoreStats before = store.stats();
  EXPECT_EQ(before.writes, 0);
  EXPECT_EQ(before.transactions, 0);
  ASSERT_TRUE(store.insert(make_record("h1")).status.ok());
  EXPECT_EQ(store.insert(make_record("h1")).status.code(), StatusCode::kDuplicate);
  ASSERT_TRUE(store.insert_all({make_record("h2"), make_record("h3")}).status.ok());
  StoreStats after = store.stats();
  EXPECT_EQ(after.writes, 3);  // requests, not records; a duplicate is a write handled
  EXPECT_EQ(after.rollbacks, 0);
  EXPECT_GE(after.commits, 1);
  EXPECT_LE(after.commits, 3);
  health = store.check_health();
  EXPECT_TRUE(health.ok()) << health.name() << ": " << health.message();
}

}  // namespace
}  // namespace tdapi
