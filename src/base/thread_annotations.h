// thread_annotations.h: clang's thread-safety annotations (-Wthread-safety), and a mutex the
// analysis understands. Under GCC the macros expand to nothing and Mutex is a plain std::mutex.
#pragma once

#include <condition_variable>
#include <mutex>

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
#define NO_THREAD_SAFETY_ANALYSIS TDAPI_TSA(no_thread_safety_analysis)

namespace tdapi {

// A std::mutex the analysis knows as a capability.
class CAPABILITY("mutex") Mutex {
 public:
  void lock() ACQUIRE() { mu_.lock(); }
  void unlock() RELEASE() { mu_.unlock(); }
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

 private:
  std::mutex mu_;
};

// Holds a Mutex for its scope.
class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& mu) ACQUIRE(mu) : mu_(mu) { mu_.lock(); }
  ~MutexLock() RELEASE() { mu_.unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& mu_;
};

}  // namespace tdapi
