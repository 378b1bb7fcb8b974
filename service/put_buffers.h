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
// Recycling: a buffer handed out by Take/TakeReady comes back when its last reference is
// dropped (the payload was evicted, deleted or rejected): if it has the hot size and fewer
// than `ready` are waiting, it waits to be taken again instead of being freed. A full
// store evicts about as many bytes as it receives, so in steady state Puts reuse evicted
// payloads' buffers: no allocation and no zeroing (4 MiB of memset per Put otherwise, on
// the receiving thread or the background one).
//
// The contents of a taken buffer are unspecified: zeros, or the bytes of an earlier
// payload. Callers must overwrite all n bytes before the buffer is used as a payload (the
// UCX and gRPC Put paths store a block only once all of its bytes have arrived).
//
// "The size most Puts have": the last size requested twice in a row (a size seen once
// among others does not make the thread throw away what it prepared). Sizes below
// `min_bytes`, or whose `ready` buffers would exceed `max_ready_bytes`, are never prepared.
//
// Thread-safe: Take and stats from any thread; one pool may serve several receivers (the
// server's gRPC and UCX Put paths share one, so that buffers freed by either come back to
// both).
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
#include "absl/time/time.h"

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
    // Take back buffers whose last reference was dropped (see the file comment).
    // Default: true.
    bool recycle = true;
    // Prepare buffers on the background thread; false keeps only recycled ones ready.
    // Default: true.
    bool prepare = true;
  };

  struct Stats {
    uint64_t taken_ready = 0;  // Take calls served by a prepared buffer
    uint64_t allocated = 0;    // Take calls that allocated on the caller's thread
    uint64_t not_ready = 0;    // TakeReady calls that returned null
    uint64_t prepared = 0;     // buffers the background thread prepared
    uint64_t discarded = 0;    // prepared buffers dropped because the hot size changed
    uint64_t recycled = 0;     // buffers that came back and were kept for another Take
  };

  explicit PutBuffers(const Options& options);
  PutBuffers(const PutBuffers&) = delete;
  PutBuffers& operator=(const PutBuffers&) = delete;
  ~PutBuffers();  // stops the thread; buffers already taken stay valid (and are freed, not
                  // recycled, when dropped)

  // A buffer of exactly n bytes (contents unspecified: see the file comment).
  // *from_ready (when given) says whether it was a prepared or recycled one.
  std::shared_ptr<std::vector<uint8_t>> Take(size_t n, bool* from_ready = nullptr);

  // A prepared buffer of exactly n bytes (contents unspecified), or null when none is ready; never
  // allocates (for callers that must not commit memory on a size a peer merely announced).
  // Counts toward the choice of the hot size like Take.
  std::shared_ptr<std::vector<uint8_t>> TakeReady(size_t n);

  Stats stats() const;

 private:
  // Everything the background thread and returning buffers touch; shared with the
  // buffers' deleters, which may run after the PutBuffers is gone.
  struct State {
    explicit State(const Options& o) : options(o) {}
    const Options options;
    absl::Mutex mu;
    bool stop ABSL_GUARDED_BY(mu) = false;
    size_t hot ABSL_GUARDED_BY(mu) = 0;        // size being prepared (0: none)
    size_t target ABSL_GUARDED_BY(mu) = 0;     // buffers of `hot` to keep ready
    size_t candidate ABSL_GUARDED_BY(mu) = 0;  // last size that missed
    std::deque<std::shared_ptr<std::vector<uint8_t>>> ready ABSL_GUARDED_BY(mu);
    Stats stats ABSL_GUARDED_BY(mu);
    absl::Time last_recycle ABSL_GUARDED_BY(mu) = absl::InfinitePast();
  };

  void Run();
  static size_t TargetFor(const Options& o, size_t n);
  // The prepared buffer for n or null; updates the hot size and stats (`allocated` counts
  // a miss when `counts_allocation`).
  std::shared_ptr<std::vector<uint8_t>> TakePrepared(size_t n, bool counts_allocation);
  // A fresh buffer of n bytes (zeros), its pages mapped in one call where the kernel
  // supports it (MADV_POPULATE_WRITE, Linux 5.14) rather than one fault per page.
  static std::unique_ptr<std::vector<uint8_t>> AllocateVector(size_t n);
  // v as a handed-out buffer: one that comes back when dropped (options.recycle), or not.
  std::shared_ptr<std::vector<uint8_t>> Owned(std::unique_ptr<std::vector<uint8_t>> v);
  // `v` (new'd) as a buffer that returns to `state` when its last reference is dropped.
  static std::shared_ptr<std::vector<uint8_t>> Own(std::vector<uint8_t>* v,
                                                   const std::shared_ptr<State>& state);
  // The deleter of Own: keeps `v` in state->ready when it has the hot size and there is
  // room, else frees it. Never called with state->mu held (buffers are released outside
  // the lock).
  static void Return(const std::weak_ptr<State>& state, std::vector<uint8_t>* v);

  const std::shared_ptr<State> state_;
  std::thread thread_;
};

}  // namespace kvtier::service

#endif  // KVTIER_SERVICE_PUT_BUFFERS_H_
