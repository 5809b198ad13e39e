// fifo_pool.h: a bounded pool of connections handed out first come, first served.
//
// With a plain mutex + condition variable, a connection given back goes to whichever thread
// takes the mutex next: under load often a thread arriving with its next request, not the one
// woken for it, which finds the pool empty again and goes back to sleep. Here a returned
// connection, or the slot of one that was dropped, goes straight to the longest waiter; a thread
// that arrives while others wait queues behind them.
#pragma once

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "base/thread_annotations.h"

namespace tdapi {

// CondVar: std::condition_variable; a test seam (tests/unit/fifo_pool_test.cpp delays woken
// waiters with it, the scheduling under which a pool without the hand-off lets others barge in).
template <class T, class CondVar = std::condition_variable>
class FifoPool {
 public:
  enum class Got {
    kIdle,     // `out` holds a pooled connection
    kOpenNew,  // a slot is the caller's: open a connection, then release() it (or its slot)
    kTimeout,  // every slot stayed taken until the deadline
  };

  explicit FifoPool(size_t max_open) : max_open_(std::max<size_t>(1, max_open)) {}
  FifoPool(const FifoPool&) = delete;
  FifoPool& operator=(const FifoPool&) = delete;

  Got acquire(std::unique_ptr<T>& out, std::chrono::steady_clock::time_point deadline)
      EXCLUDES(mu_) {
    out.reset();  // not under the lock
    MutexLock lock(mu_);
    if (waiters_.empty()) {
      if (!idle_.empty()) {
        out = std::move(idle_.back());
        idle_.pop_back();
        return Got::kIdle;
      }
      if (open_ < max_open_) {
        ++open_;
        return Got::kOpenNew;
      }
    }
    Waiter w;
    waiters_.push_back(&w);
    while (!w.served) {
      if (mu_.wait_until(w.cv, deadline) == std::cv_status::timeout && !w.served) {
        waiters_.erase(std::find(waiters_.begin(), waiters_.end(), &w));
        return Got::kTimeout;
      }
    }
    if (!w.conn) return Got::kOpenNew;  // a dropped connection's slot, handed over
    out = std::move(w.conn);
    return Got::kIdle;
  }

  // Gives back what acquire() handed out: the connection, kept for reuse when `keep`, else
  // dropped (null after a failed open); either way it or its slot goes to the longest waiter.
  // A dropped connection is closed after the lock is released.
  void release(std::unique_ptr<T> conn, bool keep) EXCLUDES(mu_) {
    std::unique_ptr<T> dropped;
    keep = keep && conn;
    if (!keep) dropped = std::move(conn);
    MutexLock lock(mu_);
    if (!waiters_.empty()) {
      Waiter* w = waiters_.front();
      waiters_.pop_front();
      w->conn = std::move(conn);  // null: open a new one in the slot
      w->served = true;
      w->cv.notify_one();  // under the lock: w lives on its thread's stack until it sees served
      return;
    }
    if (keep) {
      idle_.push_back(std::move(conn));
    } else {
      --open_;
    }
  }

  // Closes every idle connection (their server went away) and frees their slots.
  void drop_idle() EXCLUDES(mu_) {
    std::vector<std::unique_ptr<T>> dropped;
    MutexLock lock(mu_);
    dropped.swap(idle_);
    open_ -= dropped.size();  // no thread waits while any is idle
  }

  size_t open() const EXCLUDES(mu_) {
    MutexLock lock(mu_);
    return open_;
  }
  size_t idle() const EXCLUDES(mu_) {
    MutexLock lock(mu_);
    return idle_.size();
  }
  size_t waiting() const EXCLUDES(mu_) {
    MutexLock lock(mu_);
    return waiters_.size();
  }

 private:
  // One thread waiting in acquire(). served and conn are guarded by the pool's mu_ (which the
  // analysis cannot name from a nested struct's members).
  struct Waiter {
    CondVar cv;  // waited on with mu_ held
    bool served = false;
    std::unique_ptr<T> conn;
  };

  const size_t max_open_;
  mutable Mutex mu_;
  std::vector<std::unique_ptr<T>> idle_ GUARDED_BY(mu_);
  std::deque<Waiter*> waiters_ GUARDED_BY(mu_);
  size_t open_ GUARDED_BY(mu_) = 0;  // connections out, idle, or being opened in a slot
};

}  // namespace tdapi
