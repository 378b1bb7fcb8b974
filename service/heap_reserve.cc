#include "service/heap_reserve.h"

#include <malloc.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"

namespace kvtier::service {
namespace {

constexpr uintptr_t kPage = 4096;
constexpr uintptr_t kHugePage = uintptr_t{2} << 20;

// The value of the "<field>: <n> kB" line of a /proc file, in bytes; 0 when absent.
uint64_t ProcKiBField(const char* path, absl::string_view field) {
  FILE* f = std::fopen(path, "r");
  if (f == nullptr) return 0;
  char line[256];
  uint64_t kib = 0;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    if (std::strncmp(line, field.data(), field.size()) == 0 && line[field.size()] == ':') {
      kib = std::strtoull(line + field.size() + 1, nullptr, 10);
      break;
    }
  }
  std::fclose(f);
  return kib << 10;
}

// Maps [begin, end) (page-aligned) for writing: one call where the kernel has
// MADV_POPULATE_WRITE, else a write per page (the memory is unused, so writing is safe).
void Populate(uintptr_t begin, uintptr_t end) {
#ifdef MADV_POPULATE_WRITE
  if (madvise(reinterpret_cast<void*>(begin), end - begin, MADV_POPULATE_WRITE) == 0) return;
#endif
  for (uintptr_t p = begin; p < end; p += kPage) *reinterpret_cast<volatile char*>(p) = 0;
}

// MemAvailable in bytes; else the physical memory; 0 when unknown.
uint64_t AvailableBytes() {
  if (uint64_t available = ProcKiBField("/proc/meminfo", "MemAvailable"); available > 0) {
    return available;
  }
  const long pages = sysconf(_SC_PHYS_PAGES);
  return pages > 0 ? static_cast<uint64_t>(pages) * kPage : 0;
}

}  // namespace

absl::StatusOr<HeapReserve> ReserveHeap(uint64_t bytes, bool huge_pages) {
  HeapReserve r;
  if (bytes == 0) return r;
  // Mapping more than the machine has would only end in the OOM killer.
  const uint64_t available = AvailableBytes();
  if (available > 0 && bytes > available) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot reserve ", bytes, " bytes: the machine has ", available, " bytes available"));
  }
  const absl::Time start = absl::Now();
  // Freed memory stays in the heap: the point of reserving it.
  mallopt(M_TRIM_THRESHOLD, -1);
  std::vector<void*> chunks;
  chunks.reserve(bytes / kReserveChunkBytes + 1);
  uint64_t got = 0;
  absl::Status failed;
  const size_t mapped_before = mallinfo2().hblks;
  while (got < bytes) {
    void* p = std::malloc(kReserveChunkBytes);
    if (p == nullptr) {
      failed = absl::ResourceExhaustedError(absl::StrCat(
          "cannot reserve ", bytes, " bytes of heap: malloc failed after ", got, " bytes"));
      break;
    }
    chunks.push_back(p);
    got += kReserveChunkBytes;
    // A chunk malloc placed in a mapping of its own (mallinfo2's hblks grows) would be
    // unmapped by free() instead of kept.
    if (mallinfo2().hblks != mapped_before) {
      failed = absl::FailedPreconditionError(
          "malloc placed a 16 MiB chunk in its own mapping (M_MMAP_THRESHOLD must be above "
          "16 MiB); memory not reserved");
      break;
    }
  }
  if (failed.ok()) {
    // Adjacent chunks (the usual case: they come from the top of the heap) form one range,
    // so that huge pages can span chunk boundaries.
    std::vector<uintptr_t> starts;
    for (void* p : chunks) starts.push_back(reinterpret_cast<uintptr_t>(p));
    std::sort(starts.begin(), starts.end());
    std::vector<std::pair<uintptr_t, uintptr_t>> ranges;
    for (uintptr_t s0 : starts) {
      if (!ranges.empty() && s0 - ranges.back().second <= 64) {
        ranges.back().second = s0 + kReserveChunkBytes;
      } else {
        ranges.emplace_back(s0, s0 + kReserveChunkBytes);
      }
    }
    for (const auto& [lo, hi] : ranges) {
      if (huge_pages) {  // whole huge pages inside the range; its edges stay 4 KiB pages
        const uintptr_t hlo = (lo + kHugePage - 1) & ~(kHugePage - 1);
        const uintptr_t hhi = hi & ~(kHugePage - 1);
        if (hhi > hlo) (void)madvise(reinterpret_cast<void*>(hlo), hhi - hlo, MADV_HUGEPAGE);
      }
      Populate((lo + kPage - 1) & ~(kPage - 1), hi & ~(kPage - 1));
    }
  }
  for (void* p : chunks) std::free(p);
  if (!failed.ok()) return failed;
  r.bytes = got;
  r.huge_page_bytes = ProcKiBField("/proc/self/smaps_rollup", "AnonHugePages");
  r.took = absl::Now() - start;
  return r;
}

}  // namespace kvtier::service
