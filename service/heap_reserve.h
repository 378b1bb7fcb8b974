// ReserveHeap: maps the RAM tier's memory when kvtier-server starts, before any Put.
//
// The server keeps block payloads in the malloc heap (one arena, mmap threshold 32 MiB;
// service/server_main.cc). Until the store is full every Put lands in memory the process
// never touched: a page fault per 4 KiB page, about 1.3-2 ms per 4 MiB on the 2-vCPU VM,
// more than the copy of the data. And a payload in 4 KiB pages is slower to read for a
// UCX Get over CMA (the reader pins the server's pages one by one): 4 MiB from memory not
// in cache took 1.24 ms in 4 KiB pages and 0.5 ms in 2 MiB pages there.
//
// ReserveHeap grows the heap by `bytes` in chunks below the mmap threshold, asks for
// transparent huge pages on it (MADV_HUGEPAGE, when `huge_pages`; the kernel gives them
// where it can and 4 KiB pages elsewhere), maps every page (MADV_POPULATE_WRITE, or a
// write per page on kernels before 5.14), then frees the chunks. It also turns heap
// trimming off (mallopt M_TRIM_THRESHOLD = -1), so malloc keeps the memory and serves
// later payload buffers from it: mapped, and in huge pages where the kernel gave them.
// The process holds `bytes` of resident memory from then on (as it would once full).
//
//   KVTIER_ASSIGN_OR_RETURN(HeapReserve r, ReserveHeap(capacity, /*huge_pages=*/true));
//
// Preconditions: glibc malloc with M_MMAP_THRESHOLD above kReserveChunkBytes (else the
// chunks are separate mappings that free() unmaps: kFailedPrecondition); called before
// other threads allocate much. Not thread-safe with itself.
#ifndef KVTIER_SERVICE_HEAP_RESERVE_H_
#define KVTIER_SERVICE_HEAP_RESERVE_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace kvtier::service {

// Heap growth step of ReserveHeap.
inline constexpr size_t kReserveChunkBytes = size_t{16} << 20;

struct HeapReserve {
  uint64_t bytes = 0;            // mapped and returned to malloc
  uint64_t huge_page_bytes = 0;  // of the process's anonymous memory in huge pages after
                                 // (AnonHugePages; 0 where /proc does not say)
  absl::Duration took;
};

// bytes == 0 does nothing. kResourceExhausted when `bytes` exceeds the memory available
// (MemAvailable in /proc/meminfo) or malloc cannot grow the heap by it (whatever was
// reserved is released to malloc again).
absl::StatusOr<HeapReserve> ReserveHeap(uint64_t bytes, bool huge_pages);

}  // namespace kvtier::service

#endif  // KVTIER_SERVICE_HEAP_RESERVE_H_
