// PutBuffers: buffers for incoming Put payloads, prepared ahead of time.
//
// The store keeps every payload it accepts, so until it is full and evicts, a Put's buffer
// is memory the process has never touched, and the first touch costs a page fault per
// 4 KiB page (about 1.3-2 ms per 4 MiB on the 2-vCPU VM, more than the copy of the data
// itself). A background thread prepares (allocates and pre-faults) a few buffers of the
// size most Puts have, so the thread that receives a payload (the UCX loop) finds one
// ready and its fault cost overlaps other work instead of delaying the transfer.
//
//   PutBuffers buffers(PutBuffers::Options{});
//   std::shared_ptr<std::vector<uint8_t>> buf = buffers.Take(n);  // buf->size() == n
//   ... receive exactly n bytes into buf->data(), then hand buf to the store ...
//
// The contents of a taken buffer are zeros (std::vector value-initializes); callers must
// overwrite all n bytes before the buffer is used as a payload.
//
// "The size most Puts have": the last size requested twice in a row (a size seen once
// among others does not make the thread throw away what it prepared). Sizes below
// `min_bytes`, or whose `ready` buffers would exceed `max_ready_bytes`, are never prepared.
//
// Thread-safe: Take and stats from any thread.
#ifndef KVTIER_SERVICE_PUT_BUFFERS_H_
#define KVTIER_SERVICE_PUT_BUFFERS_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace kvtier::service {

class PutBuffers {
 public:
  struct Options {
    // Buffers kept ready for the hot size; 0 starts no thread (Take always allocates).
    // Default: 4.
    int ready = 4;
    // Smallest size worth preparing. Default: 256 KiB.
    size_t min_bytes = size_t{256} << 10;
    // Most bytes held ready (fewer buffers for large sizes; none for a size above it).
    // Default: 64 MiB.
    size_t max_ready_bytes = size_t{64} << 20;
  };

  struct Stats {
    uint64_t taken_ready = 0;  // Take calls served by a prepared buffer
    uint64_t allocated = 0;    // Take calls that allocated on the caller's thread
    uint64_t not_ready = 0;    // TakeReady calls that returned null
    uint64_t prepared = 0;     // buffers the background thread prepared
    uint64_t discarded = 0;    // prepared buffers dropped because the hot size changed
  };

  explicit PutBuffers(const Options& options);
  PutBuffers(const PutBuffers&) = delete;
  PutBuffers& operator=(const PutBuffers&) = delete;
  ~PutBuffers();  // stops the thread; buffers already taken stay valid

  // A buffer of exactly n bytes (zeros).
  std::shared_ptr<std::vector<uint8_t>> Take(size_t n);

  // A prepared buffer of exactly n bytes (zeros), or null when none is ready; never
  // allocates (for callers that must not commit memory on a size a peer merely announced).
  // Counts toward the choice of the hot size like Take.
  std::shared_ptr<std::vector<uint8_t>> TakeReady(size_t n);

  Stats stats() const;

  // A fresh buffer of n bytes (zeros), its pages mapped in one call where the kernel
  // supports it (MADV_POPULATE_WRITE, Linux 5.14) rather than one fault per page.
  static std::shared_ptr<std::vector<uint8_t>> Allocate(size_t n);

 private:
  void Run();
  size_t TargetFor(size_t n) const;
  // The prepared buffer for n or null; updates the hot size and stats (`allocated` counts
  // a miss when `counts_allocation`).
  std::shared_ptr<std::vector<uint8_t>> TakePrepared(size_t n, bool counts_allocation);

  const Options options_;
  mutable absl::Mutex mu_;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  size_t hot_ ABSL_GUARDED_BY(mu_) = 0;        // size being prepared (0: none)
  size_t target_ ABSL_GUARDED_BY(mu_) = 0;     // buffers of hot_ to keep ready
  size_t candidate_ ABSL_GUARDED_BY(mu_) = 0;  // last size that missed
  std::deque<std::shared_ptr<std::vector<uint8_t>>> ready_ ABSL_GUARDED_BY(mu_);
  Stats stats_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace kvtier::service

#endif  // KVTIER_SERVICE_PUT_BUFFERS_H_
