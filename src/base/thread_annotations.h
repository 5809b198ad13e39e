// thread_annotations.h: clang's thread-safety annotations (-Wthread-safety), and a mutex the
// analysis understands. Under GCC the macros expand to nothing and Mutex is a plain std::mutex.
#pragma once

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#if defined(__clang__)
#define TDAPI_TSA(x) __attribute__((x))
#else
#define TDAPI_TSA(x)
#endif

#define CAPABILITY(x) TDAPI_TSA(capability(x))
#define SCOPED_CAPABILITY TDAPI_TSA(scoped_lockable)
#define GUARDED_BY(x) TDAPI_TSA(guarded_by(x))
#define PT_GUARDED_BY(x) TDAPI_TSA(pt_guarded_by(x))
#define REQUIRES(...) TDAPI_TSA(requires_capability(__VA_ARGS__))
#define EXCLUDES(...) TDAPI_TSA(locks_excluded(__VA_ARGS__))
#define ACQUIRE(...) TDAPI_TSA(acquire_capability(__VA_ARGS__))
#define RELEASE(...) TDAPI_TSA(release_capability(__VA_ARGS__))
#define TRY_ACQUIRE(...) TDAPI_TSA(try_acquire_capability(__VA_ARGS__))
#define NO_THREAD_SAFETY_ANALYSIS TDAPI_TSA(no_thread_safety_analysis)

namespace tdapi {

// A std::mutex the analysis knows as a capability.
class CAPABILITY("mutex") Mutex {
 public:
  void lock() ACQUIRE() { mu_.lock(); }
  void unlock() RELEASE() { mu_.unlock(); }
  // True when the mutex was free and is now held.
  bool try_lock() TRY_ACQUIRE(true) { return mu_.try_lock(); }
  // Polls try_lock every `poll` until it succeeds or `timeout` has passed; true when held.
  // (Polled, not std::timed_mutex: ThreadSanitizer in GCC 12 does not see
  // pthread_mutex_clocklock and reports its unlock as one of an unlocked mutex.)
  template <class Timeout, class Poll>
  bool try_lock_for(Timeout timeout, Poll poll) TRY_ACQUIRE(true) {
    const auto give_up = std::chrono::steady_clock::now() + timeout;
    while (!mu_.try_lock()) {
      if (std::chrono::steady_clock::now() >= give_up) return false;
      std::this_thread::sleep_for(poll);
    }
    return true;
  }
  // Waits on cv with this mutex held (released while waiting, held again on return).
  void wait(std::condition_variable& cv) REQUIRES(this) {
    std::unique_lock<std::mutex> lock(mu_, std::adopt_lock);
    cv.wait(lock);
    lock.release();
  }
  // The same, for at most `timeout`.
  template <class Duration>
  void wait_for(std::condition_variable& cv, Duration timeout) REQUIRES(this) {
    std::unique_lock<std::mutex> lock(mu_, std::adopt_lock);
    cv.wait_for(lock, timeout);
    lock.release();
  }
  // The same, until `deadline`; std::cv_status::timeout when it passed. CondVar: a
  // std::condition_variable, or anything waiting the same way on a std::unique_lock.
  template <class CondVar, class Clock, class Duration>
  std::cv_status wait_until(CondVar& cv, const std::chrono::time_point<Clock, Duration>& deadline)
      REQUIRES(this) {
    std::unique_lock<std::mutex> lock(mu_, std::adopt_lock);
    const std::cv_status status = cv.wait_until(lock, deadline);
    lock.release();
    return status;
  }

 private:
  std::mutex mu_;
};

// Holds a Mutex for its scope.
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  // Takes over a Mutex the caller already holds (after a successful try_lock_for).
  MutexLock(Mutex& mu, std::adopt_lock_t) REQUIRES(mu) : mu_(mu) {}
  ~MutexLock() RELEASE() { mu_.unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mu_;
};

}  // namespace tdapi
