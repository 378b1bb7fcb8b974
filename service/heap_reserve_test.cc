// ReserveHeap with the kvtier-server malloc settings: the memory is mapped once, kept by
// malloc, and reused by later payload-sized allocations without growing the process.
#include "service/heap_reserve.h"

#include <gtest/gtest.h>
#include <malloc.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <vector>

namespace kvtier::service {
namespace {

// Resident memory of this process in KiB (from /proc/self/statm).
long RssKiB() {
  FILE* f = std::fopen("/proc/self/statm", "r");
  if (f == nullptr) return -1;
  long size = 0, resident = 0;
  const int n = std::fscanf(f, "%ld %ld", &size, &resident);
  std::fclose(f);
  return n == 2 ? resident * (sysconf(_SC_PAGESIZE) / 1024) : -1;
}

// First: the heap has no free 16 MiB yet, so malloc would map each chunk on its own.
TEST(HeapReserveTest, ChunksInTheirOwnMappingsAreFailedPrecondition) {
  mallopt(M_MMAP_THRESHOLD, 1 << 20);  // 16 MiB chunks would each be an mmap
  auto r = ReserveHeap(uint64_t{32} << 20, /*huge_pages=*/false);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_NE(r.status().message().find("M_MMAP_THRESHOLD"), std::string::npos) << r.status();
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
}

TEST(HeapReserveTest, MoreThanTheMachineHasIsResourceExhaustedWithoutMappingIt) {
  const long before = RssKiB();
  auto r = ReserveHeap(uint64_t{1} << 50, /*huge_pages=*/true);  // 1 PiB
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  EXPECT_NE(r.status().message().find("available"), std::string::npos) << r.status();
  EXPECT_LT(RssKiB() - before, 4 * 1024);
}

// The malloc settings are process-wide; tests run in this order.
TEST(HeapReserveTest, ReservedMemoryIsMappedOnceAndReusedByLaterAllocations) {
  EXPECT_EQ(ReserveHeap(0, true)->bytes, 0u);

  // kvtier-server's settings (service/server_main.cc).
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_ARENA_MAX, 1);
  const long before = RssKiB();
  ASSERT_GT(before, 0);
  auto r = ReserveHeap(uint64_t{96} << 20, /*huge_pages=*/true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_GE(r->bytes, uint64_t{96} << 20);
  EXPECT_LT(r->bytes, uint64_t{96 + 16} << 20);
  EXPECT_GT(r->took, absl::ZeroDuration());
  std::printf("reserved %llu MiB in %s, %llu MiB of the process in huge pages\n",
              static_cast<unsigned long long>(r->bytes >> 20),
              absl::FormatDuration(r->took).c_str(),
              static_cast<unsigned long long>(r->huge_page_bytes >> 20));
  const long reserved = RssKiB();
  EXPECT_GE(reserved - before, 90 * 1024) << "the reserve was not mapped";

  // 20 payload-sized buffers (80 MiB), written in full: served from the reserve, so the
  // process grows by far less than they hold.
  std::vector<std::unique_ptr<std::vector<uint8_t>>> payloads;
  for (int i = 0; i < 20; ++i) {
    payloads.push_back(std::make_unique<std::vector<uint8_t>>(4 << 20, static_cast<uint8_t>(i)));
  }
  const long used = RssKiB();
  EXPECT_LT(used - reserved, 16 * 1024) << "payload buffers did not reuse the reserve";
  // Freed and allocated again: still no growth (trimming is off).
  payloads.clear();
  EXPECT_GE(RssKiB(), reserved - 1024) << "freed memory was returned to the kernel";
  for (int i = 0; i < 20; ++i) {
    payloads.push_back(std::make_unique<std::vector<uint8_t>>(4 << 20, static_cast<uint8_t>(i)));
  }
  EXPECT_LT(RssKiB() - reserved, 16 * 1024);
  for (int i = 0; i < 20; ++i) EXPECT_EQ((*payloads[i])[12345], static_cast<uint8_t>(i));
}

}  // namespace
}  // namespace kvtier::service
