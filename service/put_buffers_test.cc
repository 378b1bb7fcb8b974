#include "service/put_buffers.h"

#include <algorithm>
#include <atomic>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "gtest/gtest.h"

namespace kvtier::service {
namespace {

constexpr size_t kMiB = size_t{1} << 20;

bool AllZero(const std::vector<uint8_t>& v) {
  return std::all_of(v.begin(), v.end(), [](uint8_t b) { return b == 0; });
}

// Waits (bounded) until the background thread has prepared `n` buffers in total.
bool WaitPrepared(const PutBuffers& b, uint64_t n) {
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  while (b.stats().prepared < n) {
    if (absl::Now() > deadline) return false;
    absl::SleepFor(absl::Milliseconds(1));
  }
  return true;
}

// Buffers allocated fresh (nothing prepared or recycled yet) are exactly n zero bytes.
TEST(PutBuffersTest, FreshBuffersAreExactlyNZeroBytes) {
  PutBuffers::Options o;
  o.ready = 0;
  PutBuffers b(o);
  for (size_t n : {size_t{1}, size_t{4096}, 256 * size_t{1024} + 3, 4 * kMiB + 960}) {
    auto buf = b.Take(n);
    ASSERT_NE(buf, nullptr);
    EXPECT_EQ(buf->size(), n);
    EXPECT_TRUE(AllZero(*buf)) << n;
  }
}

// Preparation alone (recycling off: the buffers dropped here would otherwise come back).
TEST(PutBuffersTest, RepeatedSizeIsServedFromPreparedBuffers) {
  PutBuffers::Options o;
  o.ready = 3;
  o.recycle = false;
  PutBuffers b(o);
  const size_t n = 4 * kMiB + 960;
  // The first two takes of a size allocate (the second one makes it the hot size).
  EXPECT_EQ(b.Take(n)->size(), n);
  EXPECT_EQ(b.Take(n)->size(), n);
  EXPECT_EQ(b.stats().allocated, 2u);
  ASSERT_TRUE(WaitPrepared(b, 3));
  for (int i = 0; i < 3; ++i) {
    auto buf = b.Take(n);
    ASSERT_EQ(buf->size(), n);
    EXPECT_TRUE(AllZero(*buf));
  }
  EXPECT_EQ(b.stats().taken_ready, 3u);
  // The thread refills what was taken, and never holds more than `ready`.
  ASSERT_TRUE(WaitPrepared(b, 6));
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(b.stats().prepared, 6u);
}

TEST(PutBuffersTest, OneOffSizesDoNotDisplaceTheHotSize) {
  PutBuffers::Options o;
  o.ready = 2;
  o.recycle = false;
  PutBuffers b(o);
  const size_t hot = 1 * kMiB, other = 2 * kMiB;
  b.Take(hot);
  b.Take(hot);
  ASSERT_TRUE(WaitPrepared(b, 2));
  // other, hot, other, hot: no size twice in a row, so `hot` stays the prepared size.
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(b.Take(other)->size(), other);
    EXPECT_EQ(b.Take(hot)->size(), hot);
    ASSERT_TRUE(WaitPrepared(b, 3 + i));  // the taken one is replaced
  }
  PutBuffers::Stats s = b.stats();
  EXPECT_EQ(s.taken_ready, 2u);
  EXPECT_EQ(s.discarded, 0u);
  // Twice in a row switches, dropping the two prepared for the old size.
  b.Take(other);
  b.Take(other);
  ASSERT_TRUE(WaitPrepared(b, 6));
  EXPECT_EQ(b.Take(other)->size(), other);
  s = b.stats();
  EXPECT_EQ(s.discarded, 2u);
  EXPECT_EQ(s.taken_ready, 3u);
}

TEST(PutBuffersTest, TakeReadyNeverAllocates) {
  PutBuffers::Options o;
  o.ready = 1;
  PutBuffers b(o);
  const size_t n = 2 * kMiB;
  EXPECT_EQ(b.TakeReady(n), nullptr);
  EXPECT_EQ(b.TakeReady(n), nullptr);  // makes n the hot size
  ASSERT_TRUE(WaitPrepared(b, 1));
  auto buf = b.TakeReady(n);
  ASSERT_NE(buf, nullptr);
  EXPECT_EQ(buf->size(), n);
  EXPECT_TRUE(AllZero(*buf));
  PutBuffers::Stats s = b.stats();
  EXPECT_EQ(s.not_ready, 2u);
  EXPECT_EQ(s.allocated, 0u);
  EXPECT_EQ(s.taken_ready, 1u);
}

TEST(PutBuffersTest, SmallLargeAndDisabledAreNeverPrepared) {
  PutBuffers::Options o;
  o.ready = 4;
  o.recycle = false;
  o.min_bytes = kMiB;
  o.max_ready_bytes = 8 * kMiB;
  PutBuffers b(o);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(b.Take(kMiB - 1)->size(), kMiB - 1);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(b.Take(9 * kMiB)->size(), 9 * kMiB);
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(b.stats().prepared, 0u);
  EXPECT_EQ(b.stats().allocated, 8u);
  // max_ready_bytes caps the count: 8 MiB / 3 MiB = 2 buffers.
  b.Take(3 * kMiB);
  b.Take(3 * kMiB);
  ASSERT_TRUE(WaitPrepared(b, 2));
  absl::SleepFor(absl::Milliseconds(20));
  EXPECT_EQ(b.stats().prepared, 2u);

  PutBuffers::Options off;
  off.ready = 0;
  PutBuffers none(off);
  for (int i = 0; i < 4; ++i) EXPECT_EQ(none.Take(4 * kMiB)->size(), 4 * kMiB);
  EXPECT_EQ(none.stats().prepared, 0u);
  EXPECT_EQ(none.stats().taken_ready, 0u);
}

TEST(PutBuffersTest, ConcurrentTakesAndDestructionWhileBuffersAreOut) {
  std::vector<std::shared_ptr<std::vector<uint8_t>>> kept;
  {
    PutBuffers::Options o;
    o.ready = 2;
    PutBuffers b(o);
    std::atomic<int> bad{0};
    std::vector<std::thread> threads;
    std::vector<std::vector<std::shared_ptr<std::vector<uint8_t>>>> got(4);
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int i = 0; i < 25; ++i) {
          const size_t n = (t % 2 == 0 ? 512 : 768) * size_t{1024};
          auto buf = b.Take(n);
          if (buf->size() != n || (*buf)[n - 1] != 0) bad++;
          (*buf)[0] = static_cast<uint8_t>(t);  // owned by this taker alone
          if (i % 5 == 0) got[t].push_back(std::move(buf));
        }
      });
    }
    for (auto& th : threads) th.join();
    EXPECT_EQ(bad.load(), 0);
    PutBuffers::Stats s = b.stats();
    EXPECT_EQ(s.taken_ready + s.allocated, 100u);
    for (auto& g : got) kept.insert(kept.end(), g.begin(), g.end());
  }
  // Buffers taken before the pool was destroyed stay valid.
  for (const auto& buf : kept) EXPECT_GE(buf->size(), 512u * 1024);
}

// A dropped buffer of the hot size comes back (same memory, old bytes, nothing zeroed)
// while fewer than `ready` wait; other sizes, a full queue, or a destroyed pool free it.
TEST(PutBuffersTest, DroppedBuffersOfTheHotSizeComeBackWithoutZeroing) {
  PutBuffers::Options o;
  o.ready = 2;
  o.prepare = false;  // only returns fill the queue: deterministic
  auto b = std::make_unique<PutBuffers>(o);
  const size_t n = 1 * kMiB + 64;
  std::vector<std::shared_ptr<std::vector<uint8_t>>> held;
  for (int i = 0; i < 4; ++i) held.push_back(b->Take(n));  // n is hot from the second
  EXPECT_EQ(b->stats().allocated, 4u);
  std::vector<const uint8_t*> dropped;
  for (int i = 0; i < 2; ++i) {
    std::fill(held[i]->begin(), held[i]->end(), static_cast<uint8_t>(0xA0 + i));
    dropped.push_back(held[i]->data());
  }
  held.erase(held.begin(), held.begin() + 2);  // both come back
  EXPECT_EQ(b->stats().recycled, 2u);
  for (int i = 0; i < 2; ++i) {
    auto again = b->Take(n);
    ASSERT_EQ(again->size(), n);
    EXPECT_EQ(again->data(), dropped[i]) << "not the same memory";
    EXPECT_EQ((*again)[n / 2], static_cast<uint8_t>(0xA0 + i)) << "contents were touched";
    held.push_back(std::move(again));
  }
  EXPECT_EQ(b->stats().taken_ready, 2u);
  EXPECT_EQ(b->stats().allocated, 4u);
  // At most `ready` wait; further drops are freed.
  held.clear();  // 4 buffers
  EXPECT_EQ(b->stats().recycled, 4u);
  EXPECT_NE(b->TakeReady(n), nullptr);
  // Another size is never kept.
  b->Take(3 * kMiB).reset();
  EXPECT_EQ(b->stats().recycled, 5u);  // only the TakeReady one above came back
  // Buffers out when the pool goes away stay valid and are freed when dropped.
  auto out = b->Take(n);
  b.reset();
  std::fill(out->begin(), out->end(), uint8_t{7});
  out.reset();
}

// Many threads taking, filling and dropping one size: a buffer is never handed to two
// holders at once (each holder's pattern survives until it drops it).
TEST(PutBuffersTest, RecycledBuffersHaveOneHolderAtATime) {
  PutBuffers::Options o;
  o.ready = 3;
  PutBuffers b(o);
  const size_t n = 512 * size_t{1024};
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 200; ++i) {
        auto buf = b.Take(n);
        const auto tag = static_cast<uint8_t>(t * 50 + i % 50);
        (*buf)[0] = tag;
        (*buf)[n / 2] = tag;
        (*buf)[n - 1] = tag;
        std::this_thread::yield();
        if ((*buf)[0] != tag || (*buf)[n / 2] != tag || (*buf)[n - 1] != tag) bad++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
  PutBuffers::Stats s = b.stats();
  EXPECT_EQ(s.taken_ready + s.allocated, 800u);
  EXPECT_GT(s.recycled, 0u);
}

}  // namespace
}  // namespace kvtier::service
