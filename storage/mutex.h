// Mutex and MutexLock: absl::Mutex with ThreadSanitizer happens-before annotations.
//
// Debian's Abseil is not built with -fsanitize=thread, so TSan cannot see the
// synchronization inside absl::Mutex and reports every access it guards as a race.
// This wrapper adds the acquire/release edges in our (instrumented) code when compiled
// under TSan and is a plain absl::Mutex otherwise. Thread-safety annotations
// (ABSL_GUARDED_BY etc.) work on it as on absl::Mutex.
//
//   Mutex mu_;
//   int count_ ABSL_GUARDED_BY(mu_);
//   { MutexLock lock(&mu_); ++count_; }
//
// Thread safety: it is a mutex.
#ifndef KVTIER_STORAGE_MUTEX_H_
#define KVTIER_STORAGE_MUTEX_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

#if defined(__SANITIZE_THREAD__)
#define KVTIER_STORAGE_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define KVTIER_STORAGE_TSAN 1
#endif
#endif

#ifdef KVTIER_STORAGE_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace kvtier::storage {

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    mu_.Lock();
#ifdef KVTIER_STORAGE_TSAN
    __tsan_acquire(this);
#endif
  }
  void Unlock() ABSL_UNLOCK_FUNCTION() {
#ifdef KVTIER_STORAGE_TSAN
    __tsan_release(this);
#endif
    mu_.Unlock();
  }

 private:
  absl::Mutex mu_;
};

class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

}  // namespace kvtier::storage

#endif  // KVTIER_STORAGE_MUTEX_H_
