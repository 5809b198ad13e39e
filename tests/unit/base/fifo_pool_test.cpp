// fifo_pool_test.cpp: the bounded connection pool (fifo_pool.h) hands out first come, first
// served: a returned connection or a dropped one's slot goes to the longest waiter, never to a
// thread that arrives meanwhile.
#include "base/fifo_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace tdapi {
namespace {

using Clock = std::chrono::steady_clock;

Clock::time_point in(int ms) { return Clock::now() + std::chrono::milliseconds(ms); }

// A condition variable whose woken waiters stop at a gate, before they take the pool's mutex
// back, while the gate is closed: a woken thread slow to be scheduled, the case where a pool
// that only puts a returned connection back and wakes a waiter lets an arriving thread take it
// first (what the PostgreSQL store's pool did). Timed-out waits do not stop.
class GatedCondVar {
 public:
  static void close_gate() { set_gate(false); }
  static void open_gate() { set_gate(true); }

  template <class Duration>
  std::cv_status wait_until(std::unique_lock<std::mutex>& outer,
                            const std::chrono::time_point<Clock, Duration>& deadline) {
    std::unique_lock<std::mutex> own(mu_);  // taken before outer is let go: no lost notify
    outer.unlock();
    const bool woken = cv_.wait_until(own, deadline, [&] { return notified_; });
    notified_ = false;
    own.unlock();
    if (woken) {
      std::unique_lock<std::mutex> gate(gate_mu_);
      gate_cv_.wait(gate, [] { return gate_open_; });
    }
    outer.lock();
    return woken ? std::cv_status::no_timeout : std::cv_status::timeout;
  }
  void notify_one() {
    std::lock_guard<std::mutex> own(mu_);
    notified_ = true;
    cv_.notify_one();
  }

 private:
  static void set_gate(bool open) {
    std::lock_guard<std::mutex> gate(gate_mu_);
    gate_open_ = open;
    gate_cv_.notify_all();
  }
  std::mutex mu_;
  std::condition_variable cv_;
  bool notified_ = false;
  static inline std::mutex gate_mu_;
  static inline std::condition_variable gate_cv_;
  static inline bool gate_open_ = true;
};

using Pool = FifoPool<int>;
using GatedPool = FifoPool<int, GatedCondVar>;

// Closes the gate for a test's scope; opened again before the test's threads are joined (declare
// it after the Joiner).
struct ClosedGate {
  ClosedGate() { GatedCondVar::close_gate(); }
  ~ClosedGate() { GatedCondVar::open_gate(); }
};

// Joins a test's threads however the test ends (a failed expectation must not leave a
// joinable std::thread behind, which would end the whole test binary).
struct Joiner {
  std::vector<std::thread> threads;
  ~Joiner() {
    for (std::thread& t : threads) {
      if (t.joinable()) t.join();
    }
  }
};

// Polls (bounded) until `n` threads wait in the pool.
template <class P>
bool waiting_reaches(const P& pool, size_t n) {
  for (int i = 0; i < 5000 && pool.waiting() < n; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return pool.waiting() == n;
}

// Takes the one slot of a pool of one and opens "connection" 1 in it.
template <class P>
std::unique_ptr<int> take_the_only_slot(P& pool) {
  std::unique_ptr<int> held;
  EXPECT_EQ(pool.acquire(held, in(0)), P::Got::kOpenNew);
  return std::make_unique<int>(1);
}

TEST(FifoPool, OpensUpToItsBoundThenReusesWhatIsReturned) {
  Pool pool(2);
  std::unique_ptr<int> a, b, c;
  EXPECT_EQ(pool.acquire(a, in(0)), Pool::Got::kOpenNew);
  EXPECT_EQ(pool.acquire(b, in(0)), Pool::Got::kOpenNew);
  EXPECT_EQ(pool.acquire(c, in(0)), Pool::Got::kTimeout);  // both slots taken
  EXPECT_EQ(pool.waiting(), 0u);                           // the timed-out waiter left
  pool.release(std::make_unique<int>(7), true);
  EXPECT_EQ(pool.acquire(c, in(0)), Pool::Got::kIdle);
  ASSERT_NE(c, nullptr);
  EXPECT_EQ(*c, 7);
  EXPECT_EQ(pool.open(), 2u);
}

TEST(FifoPool, AReturnedConnectionGoesToTheWaiterNotToAThreadArrivingAfterIt) {
  GatedPool pool(1);
  std::unique_ptr<int> held = take_the_only_slot(pool);
  GatedPool::Got got_by_waiter{};
  int value_seen = 0;
  Joiner joiner;
  ClosedGate gate;
  joiner.threads.emplace_back([&] {
    std::unique_ptr<int> c;
    got_by_waiter = pool.acquire(c, in(20000));
    value_seen = c ? *c : 0;
    pool.release(std::move(c), true);
  });
  EXPECT_TRUE(waiting_reaches(pool, 1));
  pool.release(std::move(held), true);
  // The waiter is woken but held at the gate. The releasing thread comes straight back for
  // one, as a worker does with its next request: the connection is the waiter's already.
  std::unique_ptr<int> again;
  EXPECT_EQ(pool.acquire(again, in(0)), GatedPool::Got::kTimeout);
  GatedCondVar::open_gate();
  joiner.threads.back().join();
  EXPECT_EQ(got_by_waiter, GatedPool::Got::kIdle);
  EXPECT_EQ(value_seen, 1);
  EXPECT_EQ(pool.acquire(again, in(0)), GatedPool::Got::kIdle);  // given back by the waiter
}

TEST(FifoPool, ADroppedConnectionsSlotGoesToTheWaiterToOpenANewOne) {
  GatedPool pool(1);
  std::unique_ptr<int> held = take_the_only_slot(pool);
  GatedPool::Got got{};
  bool got_null = false;
  Joiner joiner;
  ClosedGate gate;
  joiner.threads.emplace_back([&] {
    std::unique_ptr<int> c;
    got = pool.acquire(c, in(20000));
    got_null = c == nullptr;
    pool.release(nullptr, false);  // as after a failed open: the slot is freed
  });
  EXPECT_TRUE(waiting_reaches(pool, 1));
  pool.release(std::move(held), false);  // broken: closed, not kept; its slot is the waiter's
  std::unique_ptr<int> again;
  EXPECT_EQ(pool.acquire(again, in(0)), GatedPool::Got::kTimeout);
  GatedCondVar::open_gate();
  joiner.threads.back().join();
  EXPECT_EQ(got, GatedPool::Got::kOpenNew);
  EXPECT_TRUE(got_null);
  EXPECT_EQ(pool.open(), 0u);
  EXPECT_EQ(pool.idle(), 0u);
}

TEST(FifoPool, WaitersAreServedInArrivalOrder) {
  Pool pool(1);
  std::unique_ptr<int> held = take_the_only_slot(pool);
  std::mutex order_mu;
  std::vector<int> order;
  Joiner joiner;
  for (int n = 0; n < 4; ++n) {
    joiner.threads.emplace_back([&, n] {
      std::unique_ptr<int> c;
      EXPECT_EQ(pool.acquire(c, in(20000)), Pool::Got::kIdle);
      {
        std::lock_guard<std::mutex> lock(order_mu);
        order.push_back(n);
      }
      pool.release(std::move(c), true);
    });
    EXPECT_TRUE(waiting_reaches(pool, static_cast<size_t>(n) + 1));
  }
  pool.release(std::move(held), true);
  for (std::thread& t : joiner.threads) t.join();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3}));
}

TEST(FifoPool, DropIdleClosesTheIdleOnesAndFreesTheirSlots) {
  Pool pool(2);
  std::unique_ptr<int> a, b;
  EXPECT_EQ(pool.acquire(a, in(0)), Pool::Got::kOpenNew);
  EXPECT_EQ(pool.acquire(b, in(0)), Pool::Got::kOpenNew);
  pool.release(std::make_unique<int>(1), true);
  pool.release(std::make_unique<int>(2), true);
  EXPECT_EQ(pool.idle(), 2u);
  pool.drop_idle();
  EXPECT_EQ(pool.idle(), 0u);
  EXPECT_EQ(pool.open(), 0u);
  EXPECT_EQ(pool.acquire(a, in(0)), Pool::Got::kOpenNew);
}

TEST(FifoPool, ManyThreadsNeverHoldMoreThanTheBound) {
  constexpr size_t kBound = 2;
  Pool pool(kBound);
  std::atomic<int> out{0};
  std::atomic<int> most{0};
  std::atomic<int> timeouts{0};
  Joiner joiner;
  for (int n = 0; n < 8; ++n) {
    joiner.threads.emplace_back([&, n] {
      for (int i = 0; i < 500; ++i) {
        std::unique_ptr<int> c;
        Pool::Got got = pool.acquire(c, in(20000));
        if (got == Pool::Got::kTimeout) {
          ++timeouts;
          continue;
        }
        if (got == Pool::Got::kOpenNew) c = std::make_unique<int>(n);
        int now = ++out;
        int seen = most.load();
        while (now > seen && !most.compare_exchange_weak(seen, now)) {
        }
        --out;
        // Every 50th is dropped as broken; its slot goes on to a waiter.
        pool.release(std::move(c), i % 50 != 0);
      }
    });
  }
  for (std::thread& t : joiner.threads) t.join();
  EXPECT_EQ(timeouts.load(), 0);
  EXPECT_LE(most.load(), static_cast<int>(kBound));
  EXPECT_LE(pool.open(), kBound);
  EXPECT_EQ(pool.waiting(), 0u);
  EXPECT_EQ(pool.idle(), pool.open());
}

}  // namespace
}  // namespace tdapi
