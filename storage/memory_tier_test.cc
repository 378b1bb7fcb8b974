#include "storage/memory_tier.h"

#include <gtest/gtest.h>

#include "kernels/payload.h"
#include "storage/testing.h"

namespace kvtier::storage {
namespace {

const uint64_t kBlock = testing::RandomPayloadBytes();

MemoryTierOptions Opts(uint64_t capacity, int shards = 16, std::vector<uint64_t> quotas = {}) {
  MemoryTierOptions o;
  o.capacity_bytes = capacity;
  o.shards = shards;
  o.group_quota_bytes = std::move(quotas);
  return o;
}

std::string K(uint64_t i) { return "key" + std::to_string(i); }

class MemoryTierTest : public ::testing::Test {
 protected:
  // Inserts block i (its own payload) with the given stamp.
  InsertResult Put(MemoryTier& t, uint64_t i, AccessStamp s, int group = -1) {
    return t.Insert(K(i), testing::RandomPayload(i), i, group, s);
  }
  std::vector<std::string> Keys(const std::vector<EvictedBlock>& v) {
    std::vector<std::string> out;
    for (const auto& e : v) out.push_back(e.key);
    return out;
  }
};

TEST_F(MemoryTierTest, EvictsLeastRecentlyUsedFirst) {
  MemoryTier t(Opts(3 * kBlock, 4));
  Put(t, 1, {1, 0});
  Put(t, 2, {2, 0});
  Put(t, 3, {3, 0});
  EXPECT_TRUE(t.EvictToFit(-1).empty());
  ASSERT_NE(t.Get(K(1), /*tick=*/4), nullptr);  // 1 is now the most recent
  Put(t, 4, {5, 0});
  EXPECT_EQ(Keys(t.EvictToFit(-1)), std::vector<std::string>{K(2)});
  Put(t, 5, {6, 0});
  EXPECT_EQ(Keys(t.EvictToFit(-1)), std::vector<std::string>{K(3)});
  EXPECT_EQ(t.blocks(), 3u);
  EXPECT_EQ(t.bytes(), 3 * kBlock);
  EXPECT_EQ(t.evictions(), 2u);
}

TEST_F(MemoryTierTest, EvictsDeepestBlockOfAChainFirst) {
  MemoryTier t(Opts(4 * kBlock, 3));
  // One chain stamped by one Lookup (same tick): depths 0..3.
  for (uint32_t d = 0; d < 4; ++d) Put(t, d, {10, d});
  Put(t, 100, {11, 0});  // a newer block forces one eviction
  EXPECT_EQ(Keys(t.EvictToFit(-1)), std::vector<std::string>{K(3)});
  Put(t, 101, {12, 0});
  EXPECT_EQ(Keys(t.EvictToFit(-1)), std::vector<std::string>{K(2)});
  // Recency still comes first: an older tick goes before a deeper, newer block.
  EXPECT_TRUE(t.Touch(K(0), {13, 0}));
  EXPECT_TRUE(t.Touch(K(1), {13, 1}));
  Put(t, 102, {14, 0});
  EXPECT_EQ(Keys(t.EvictToFit(-1)), std::vector<std::string>{K(100)});
}

TEST_F(MemoryTierTest, LeaseStaysValidAfterEvictionAndErase) {
  MemoryTier t(Opts(kBlock, 1));
  Put(t, 1, {1, 0});
  Payload lease = t.Get(K(1), 2);
  ASSERT_NE(lease, nullptr);
  const std::vector<uint8_t> copy = *lease;
  Put(t, 2, {3, 0});
  EXPECT_EQ(Keys(t.EvictToFit(-1)), std::vector<std::string>{K(1)});
  EXPECT_EQ(t.Get(K(1), 0), nullptr);
  EXPECT_EQ(*lease, copy);
  EXPECT_TRUE(kernels::ValidatePayload(*lease).ok());
  Payload lease2 = t.Get(K(2), 0);
  EXPECT_TRUE(t.Erase(K(2)));
  EXPECT_FALSE(t.Erase(K(2)));
  EXPECT_TRUE(kernels::ValidatePayload(*lease2).ok());
  EXPECT_EQ(t.blocks(), 0u);
  EXPECT_EQ(t.bytes(), 0u);
}

TEST_F(MemoryTierTest, PresentKeyIsLeftUntouched) {
  MemoryTier t(Opts(10 * kBlock));
  EXPECT_EQ(Put(t, 1, {1, 0}), InsertResult::kInserted);
  EXPECT_EQ(t.Insert(K(1), testing::RandomPayload(1), 1, -1, {2, 0}), InsertResult::kPresentSame);
  EXPECT_EQ(t.Insert(K(1), testing::RandomPayload(9), 9, -1, {2, 0}),
            InsertResult::kPresentDifferent);
  EXPECT_EQ(t.Checksum(K(1)), 1u);
  EXPECT_EQ(*t.Get(K(1), 0), *testing::RandomPayload(1));
  EXPECT_EQ(t.blocks(), 1u);
}

TEST_F(MemoryTierTest, QuotaGroupEvictsOnlyItsOwnBlocks) {
  MemoryTier t(Opts(100 * kBlock, 16, {2 * kBlock, 0}));
  Put(t, 1, {1, 0}, /*group=*/-1);
  Put(t, 2, {2, 0}, /*group=*/1);  // group 1 has no limit
  Put(t, 10, {3, 0}, 0);
  Put(t, 11, {4, 0}, 0);
  EXPECT_TRUE(t.EvictToFit(0).empty());
  Put(t, 12, {5, 0}, 0);
  std::vector<EvictedBlock> v = t.EvictToFit(0);
  ASSERT_EQ(v.size(), 1u);
  EXPECT_EQ(v[0].key, K(10));  // the group's oldest, though 1 and 2 are older
  EXPECT_TRUE(v[0].by_quota);
  EXPECT_EQ(t.group_bytes(0), 2 * kBlock);
  EXPECT_NE(t.Get(K(1), 0), nullptr);
  EXPECT_NE(t.Get(K(2), 0), nullptr);
}

TEST_F(MemoryTierTest, GetWithoutTickKeepsOrder) {
  MemoryTier t(Opts(2 * kBlock));
  Put(t, 1, {1, 0});
  Put(t, 2, {2, 0});
  ASSERT_NE(t.Get(K(1), 0), nullptr);  // tick 0: no re-stamp
  Put(t, 3, {3, 0});
  EXPECT_EQ(Keys(t.EvictToFit(-1)), std::vector<std::string>{K(1)});
}

}  // namespace
}  // namespace kvtier::storage
