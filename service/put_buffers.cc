#include "service/put_buffers.h"

#include <pthread.h>
#include <sys/mman.h>

#include <algorithm>
#include <utility>

namespace kvtier::service {

std::shared_ptr<std::vector<uint8_t>> PutBuffers::Allocate(size_t n) {
  auto buf = std::make_shared<std::vector<uint8_t>>();
  buf->reserve(n);
#ifdef MADV_POPULATE_WRITE
  // One call maps the whole range: about 1.6x faster than faulting page by page on fresh
  // memory (measured on the 2-vCPU VM), nearly free on memory malloc recycled. Older
  // kernels reject it (EINVAL) and the resize below faults as before. (MADV_HUGEPAGE was
  // tried first and made fresh 4 MiB buffers 2x slower on that VM: the faulting thread
  // zeroes whole 2 MiB pages.)
  constexpr uintptr_t kPage = 4096;
  constexpr size_t kMinPopulate = size_t{256} << 10;
  if (n >= kMinPopulate) {
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(buf->data()) + kPage - 1) & ~(kPage - 1);
    const uintptr_t end = (reinterpret_cast<uintptr_t>(buf->data()) + n) & ~(kPage - 1);
    if (end > begin) {
      (void)madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE);
    }
  }
#endif
  buf->resize(n);
  return buf;
}

PutBuffers::PutBuffers(const Options& options) : options_(options) {
  if (options_.ready > 0) thread_ = std::thread([this] { Run(); });
}

PutBuffers::~PutBuffers() {
  std::deque<std::shared_ptr<std::vector<uint8_t>>> drop;
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
    drop.swap(ready_);
  }
  if (thread_.joinable()) thread_.join();
}

size_t PutBuffers::TargetFor(size_t n) const {
  if (options_.ready <= 0 || n < options_.min_bytes || n == 0) return 0;
  return std::min<size_t>(static_cast<size_t>(options_.ready), options_.max_ready_bytes / n);
}

std::shared_ptr<std::vector<uint8_t>> PutBuffers::TakePrepared(size_t n, bool counts_allocation) {
  std::deque<std::shared_ptr<std::vector<uint8_t>>> drop;  // freed outside the lock
  absl::MutexLock lock(&mu_);
  if (n == hot_) candidate_ = 0;  // "twice in a row" means consecutive takes
  if (n == hot_ && !ready_.empty()) {
    std::shared_ptr<std::vector<uint8_t>> buf = std::move(ready_.front());
    ready_.pop_front();
    stats_.taken_ready++;
    return buf;
  }
  if (counts_allocation) {
    stats_.allocated++;
  } else {
    stats_.not_ready++;
  }
  if (n != hot_) {
    if (n == candidate_ && TargetFor(n) > 0) {
      hot_ = n;
      target_ = TargetFor(n);
      stats_.discarded += ready_.size();
      drop.swap(ready_);
    } else {
      candidate_ = n;
    }
  }
  // `drop` is destroyed after the lock is released (declared before it).
  return nullptr;
}

std::shared_ptr<std::vector<uint8_t>> PutBuffers::Take(size_t n) {
  std::shared_ptr<std::vector<uint8_t>> buf = TakePrepared(n, /*counts_allocation=*/true);
  return buf != nullptr ? buf : Allocate(n);
}

std::shared_ptr<std::vector<uint8_t>> PutBuffers::TakeReady(size_t n) {
  return TakePrepared(n, /*counts_allocation=*/false);
}

PutBuffers::Stats PutBuffers::stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void PutBuffers::Run() {
  pthread_setname_np(pthread_self(), "kvtier-putbuf");
  absl::MutexLock lock(&mu_);
  while (true) {
    mu_.Await(absl::Condition(
        +[](PutBuffers* b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(b->mu_) {
          return b->stop_ || (b->hot_ != 0 && b->ready_.size() < b->target_);
        },
        this));
    if (stop_) return;
    const size_t n = hot_;
    std::shared_ptr<std::vector<uint8_t>> buf;
    mu_.Unlock();
    buf = Allocate(n);
    mu_.Lock();
    if (!stop_ && hot_ == n && ready_.size() < target_) {
      ready_.push_back(std::move(buf));
      stats_.prepared++;
    } else {
      stats_.discarded++;
      mu_.Unlock();
      buf.reset();
      mu_.Lock();
    }
  }
}

}  // namespace kvtier::service
