// fifo_pool_test.cpp: the bounded connection pool (fifo_pool.h) hands out first come, first
// served: a returned connection or a dropped one's slot goes to the longest waiter, never to a
// thread that arrives meanwhile.
#include "fifo_pool.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace tdapi {
namespace {

using Pool = FifoPool<int>;
using Clock = std::chrono::steady_clock;

Clock::time_point in(int ms) { return Clock::now() + std::chrono::milliseconds(ms); }

// Polls (bounded) until `n` threads wait in the pool.
bool waiting_reaches(const Pool& pool, size_t n) {
  for (int i = 0; i < 5000 && pool.waiting() < n; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return pool.waiting() == n;
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
  Pool pool(1);
  std::unique_ptr<int> held;
  ASSERT_EQ(pool.acquire(held, in(0)), Pool::Got::kOpenNew);
  held = std::make_unique<int>(1);
  std::promise<void> barged;
  Pool::Got got_by_waiter{};
  int value_seen = 0;
  std::thread waiter([&] {
    std::unique_ptr<int> c;
    got_by_waiter = pool.acquire(c, in(20000));
    value_seen = c ? *c : 0;
    barged.get_future().wait();  // keeps it until the other thread has tried
    pool.release(std::move(c), true);
  });
  ASSERT_TRUE(waiting_reaches(pool, 1));
  pool.release(std::move(held), true);
  // The releasing thread comes straight back for one (as a worker does with its next
  // request): the connection is the waiter's already, so this one finds none free.
  std::unique_ptr<int> again;
  EXPECT_EQ(pool.acquire(again, in(0)), Pool::Got::kTimeout);
  barged.set_value();
  waiter.join();
  EXPECT_EQ(got_by_waiter, Pool::Got::kIdle);
  EXPECT_EQ(value_seen, 1);
  EXPECT_EQ(pool.acquire(again, in(0)), Pool::Got::kIdle);  // given back by the waiter
}

TEST(FifoPool, WaitersAreServedInArrivalOrder) {
  Pool pool(1);
  std::unique_ptr<int> held;
  ASSERT_EQ(pool.acquire(held, in(0)), Pool::Got::kOpenNew);
  held = std::make_unique<int>(1);
  std::mutex order_mu;
  std::vector<int> order;
  std::vector<std::thread> threads;
  for (int n = 0; n < 4; ++n) {
    threads.emplace_back([&, n] {
      std::unique_ptr<int> c;
      EXPECT_EQ(pool.acquire(c, in(20000)), Pool::Got::kIdle);
      {
        std::lock_guard<std::mutex> lock(order_mu);
        order.push_back(n);
      }
      pool.release(std::move(c), true);
    });
    ASSERT_TRUE(waiting_reaches(pool, static_cast<size_t>(n) + 1));
  }
  pool.release(std::move(held), true);
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(order, (std::vector<int>{0, 1, 2, 3}));
}

TEST(FifoPool, ADroppedConnectionsSlotGoesToTheWaiterToOpenANewOne) {
  Pool pool(1);
  std::unique_ptr<int> held;
  ASSERT_EQ(pool.acquire(held, in(0)), Pool::Got::kOpenNew);
  held = std::make_unique<int>(1);
  Pool::Got got{};
  std::thread waiter([&] {
    std::unique_ptr<int> c;
    got = pool.acquire(c, in(20000));
    EXPECT_EQ(c, nullptr);
    pool.release(nullptr, false);  // as after a failed open: the slot is freed
  });
  ASSERT_TRUE(waiting_reaches(pool, 1));
  pool.release(std::move(held), false);  // broken: closed, not kept
  waiter.join();
  EXPECT_EQ(got, Pool::Got::kOpenNew);
  EXPECT_EQ(pool.open(), 0u);
  EXPECT_EQ(pool.idle(), 0u);
}

TEST(FifoPool, DropIdleClosesTheIdleOnesAndFreesTheirSlots) {
  Pool pool(2);
  std::unique_ptr<int> a, b;
  ASSERT_EQ(pool.acquire(a, in(0)), Pool::Got::kOpenNew);
  ASSERT_EQ(pool.acquire(b, in(0)), Pool::Got::kOpenNew);
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
  std::vector<std::thread> threads;
  for (int n = 0; n < 8; ++n) {
    threads.emplace_back([&, n] {
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
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(timeouts.load(), 0);
  EXPECT_LE(most.load(), static_cast<int>(kBound));
  EXPECT_LE(pool.open(), kBound);
  EXPECT_EQ(pool.waiting(), 0u);
  EXPECT_EQ(pool.idle(), pool.open());
}

}  // namespace
}  // namespace tdapi
