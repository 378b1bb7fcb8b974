#include "storage/tiered_store.h"

#include <gtest/gtest.h>

#include <memory>
#include <vector>

#include "kernels/payload.h"
#include "rocksdb/db.h"
#include "storage/block_key.h"
#include "storage/testing.h"

namespace kvtier::storage {
namespace {

using testing::Key;
using testing::RandomPayload;

const uint64_t kBlock = testing::RandomPayloadBytes();
constexpr char kNs[] = "tenant/model/k4v2_g128/tp0";

class TieredStoreTest : public ::testing::Test {
 protected:
  std::unique_ptr<TieredStore> Open(TieredStoreOptions o) {
    absl::StatusOr<std::unique_ptr<TieredStore>> s = TieredStore::Open(o);
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? std::move(s).value() : nullptr;
  }
  TieredStoreOptions RamOnly(uint64_t blocks) {
    TieredStoreOptions o;
    o.memory_capacity_bytes = blocks * kBlock;
    o.memory_shards = 4;
    return o;
  }
  TieredStoreOptions WithDisk(uint64_t ram_blocks, uint64_t disk_blocks) {
    TieredStoreOptions o = RamOnly(ram_blocks);
    o.disk_path = dir_.path() + "/db";
    o.disk_capacity_bytes = disk_blocks * kBlock;
    return o;
  }
  static std::vector<ChainHash> Chain(uint64_t first, size_t n) {
    std::vector<ChainHash> c;
    for (size_t i = 0; i < n; ++i) c.push_back(testing::Hash(first + i));
    return c;
  }
  // Looks the chain up, then puts the blocks that missed (the usual client flow).
  static void LookupThenPut(TieredStore& s, uint64_t first, size_t n) {
    const size_t hit = s.Lookup(kNs, Chain(first, n), 0);
    for (size_t i = hit; i < n; ++i) {
      ASSERT_TRUE(s.Put(Key(kNs, first + i), RandomPayload(first + i)).ok());
    }
  }
  static Lease GetOne(TieredStore& s, const BlockKey& k) {
    std::vector<absl::StatusOr<Lease>> r = s.Get({k});
    EXPECT_TRUE(r[0].ok()) << r[0].status();
    return r[0].ok() ? *r[0] : Lease{};
  }

  testing::TempDir dir_;
};

TEST_F(TieredStoreTest, OpenRejectsBadOptions) {
  TieredStoreOptions o = RamOnly(4);
  o.memory_capacity_bytes = 0;
  EXPECT_EQ(TieredStore::Open(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = RamOnly(4);
  o.memory_shards = 0;
  EXPECT_EQ(TieredStore::Open(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = RamOnly(4);
  o.namespace_quota_bytes["a/"] = 0;
  EXPECT_EQ(TieredStore::Open(o).status().code(), absl::StatusCode::kInvalidArgument);
  o = WithDisk(4, 4);
  o.disk_capacity_bytes = 0;
  EXPECT_EQ(TieredStore::Open(o).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(TieredStoreTest, PutValidatesThePayloadAndChangesNothingOnError) {
  auto s = Open(RamOnly(8));
  EXPECT_EQ(s->Put(Key(kNs, 1), nullptr).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<uint8_t> bytes = *RandomPayload(1);
  bytes[bytes.size() - 3] ^= 0x10;  // body byte: checksum mismatch
  EXPECT_EQ(
      s->Put(Key(kNs, 1), std::make_shared<const std::vector<uint8_t>>(bytes)).status().code(),
      absl::StatusCode::kDataLoss);
  bytes.pop_back();  // size no longer matches the header
  EXPECT_EQ(
      s->Put(Key(kNs, 1), std::make_shared<const std::vector<uint8_t>>(bytes)).status().code(),
      absl::StatusCode::kInvalidArgument);
  const StoreStats st = s->Stats();
  EXPECT_EQ(st.puts_rejected, 3u);
  EXPECT_EQ(st.memory.blocks, 0u);
  EXPECT_FALSE(GetOne(*s, Key(kNs, 1)));
}

TEST_F(TieredStoreTest, PutOfAPresentKeyIsACountedNoOp) {
  auto s = Open(RamOnly(8));
  ASSERT_EQ(*s->Put(Key(kNs, 1), RandomPayload(1)), PutOutcome::kStored);
  ASSERT_EQ(*s->Put(Key(kNs, 1), RandomPayload(1)), PutOutcome::kDeduplicated);
  const StoreStats st = s->Stats();
  EXPECT_EQ(st.puts_stored, 1u);
  EXPECT_EQ(st.puts_deduplicated, 1u);
  EXPECT_EQ(st.dedup_bytes_saved, kBlock);
  EXPECT_EQ(st.memory.blocks, 1u);
  EXPECT_EQ(st.memory.bytes, kBlock);
}

TEST_F(TieredStoreTest, PutWithADifferentChecksumIsRejectedAndTheStoredBlockKept) {
  auto s = Open(WithDisk(8, 8));
  ASSERT_EQ(*s->Put(Key(kNs, 1), RandomPayload(1)), PutOutcome::kStored);
  EXPECT_EQ(s->Put(Key(kNs, 1), RandomPayload(2)).status().code(),
            absl::StatusCode::kAlreadyExists);
  const StoreStats st = s->Stats();
  EXPECT_EQ(st.dedup_conflicts, 1u);
  EXPECT_EQ(st.puts_rejected, 1u);
  EXPECT_EQ(*GetOne(*s, Key(kNs, 1)).payload, *RandomPayload(1));
}

TEST_F(TieredStoreTest, LookupCountsLeadingBlocksOnly) {
  auto s = Open(RamOnly(16));
  for (uint64_t i : {0, 1, 3}) ASSERT_TRUE(s->Put(Key(kNs, i), RandomPayload(i)).ok());
  EXPECT_EQ(s->Lookup(kNs, Chain(0, 5), 0), 2u);
  EXPECT_EQ(s->Lookup(kNs, Chain(1, 1), 0), 1u);
  EXPECT_EQ(s->Lookup(kNs, Chain(2, 2), 0), 0u);
  EXPECT_EQ(s->Lookup(kNs, Chain(0, 2), /*part=*/1), 0u);
  EXPECT_EQ(s->Lookup("other/ns", Chain(0, 2), 0), 0u);
  EXPECT_EQ(s->Lookup(kNs, {}, 0), 0u);
}

TEST_F(TieredStoreTest, EvictsTheDeepestBlockOfALookedUpChainFirst) {
  auto s = Open(RamOnly(5));
  LookupThenPut(*s, 0, 4);    // chain A: blocks 0..3, one Lookup tick, depths 0..3
  LookupThenPut(*s, 100, 1);  // chain B: one block
  LookupThenPut(*s, 200, 1);  // chain C: needs room -> A's tail (block 3) goes
  EXPECT_EQ(s->Lookup(kNs, Chain(0, 4), 0), 3u);
  EXPECT_EQ(s->Stats().memory.evictions, 1u);
  // A was just looked up (newest): B is now the least recently used.
  LookupThenPut(*s, 300, 1);
  EXPECT_EQ(s->Lookup(kNs, Chain(100, 1), 0), 0u);
  EXPECT_EQ(s->Lookup(kNs, Chain(0, 3), 0), 3u);
  EXPECT_EQ(s->Lookup(kNs, Chain(200, 1), 0), 1u);
}

TEST_F(TieredStoreTest, PlainLruEvictsTheChainHeadFirst) {
  TieredStoreOptions o = RamOnly(5);
  o.chain_aware_eviction = false;
  auto s = Open(o);
  LookupThenPut(*s, 0, 4);
  LookupThenPut(*s, 100, 1);
  LookupThenPut(*s, 200, 1);  // evicts block 0: the whole chain A is now unreachable
  EXPECT_EQ(s->Lookup(kNs, Chain(0, 4), 0), 0u);
  EXPECT_EQ(s->Lookup(kNs, Chain(1, 3), 0), 3u);
}

TEST_F(TieredStoreTest, LeaseOutlivesEvictionAndDelete) {
  auto s = Open(RamOnly(1));
  ASSERT_TRUE(s->Put(Key(kNs, 1), RandomPayload(1)).ok());
  Lease lease = GetOne(*s, Key(kNs, 1));
  ASSERT_TRUE(lease);
  EXPECT_EQ(lease.tier, Tier::kMemory);
  ASSERT_TRUE(s->Put(Key(kNs, 2), RandomPayload(2)).ok());  // evicts block 1
  EXPECT_FALSE(GetOne(*s, Key(kNs, 1)));
  EXPECT_EQ(*lease.payload, *RandomPayload(1));
  Lease lease2 = GetOne(*s, Key(kNs, 2));
  EXPECT_EQ(*s->Delete({Key(kNs, 2), Key(kNs, 3)}), 1u);
  EXPECT_TRUE(kernels::ValidatePayload(*lease2.payload).ok());
  EXPECT_EQ(s->Stats().memory.blocks, 0u);
}

TEST_F(TieredStoreTest, BlockLargerThanATierIsResourceExhausted) {
  auto s = Open(RamOnly(1));
  EXPECT_EQ(s->Put(Key(kNs, 1), RandomPayload(1, /*layers=*/2)).status().code(),
            absl::StatusCode::kResourceExhausted);
  TieredStoreOptions o = RamOnly(8);
  o.namespace_quota_bytes["tenant/"] = kBlock;
  auto q = Open(o);
  EXPECT_EQ(q->Put(Key(kNs, 1), RandomPayload(1, 2)).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(q->Put(Key(kNs, 1), RandomPayload(1, 1)).ok());
}

TEST_F(TieredStoreTest, NamespaceOverQuotaEvictsOnlyItsOwnBlocks) {
  TieredStoreOptions o = RamOnly(100);
  o.namespace_quota_bytes["tenantA/"] = 2 * kBlock;
  o.namespace_quota_bytes["tenantA/vip/"] = 4 * kBlock;  // longest prefix wins
  auto s = Open(o);
  for (uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(s->Put(Key("tenantB/m", i), RandomPayload(i)).ok());
  for (uint64_t i = 10; i < 15; ++i) {
    ASSERT_TRUE(s->Put(Key("tenantA/m", i), RandomPayload(i)).ok());
  }
  for (uint64_t i = 20; i < 24; ++i) {
    ASSERT_TRUE(s->Put(Key("tenantA/vip/m", i), RandomPayload(i)).ok());
  }
  // tenantA/ keeps its 2 newest; tenantA/vip/ all 4; tenantB/ all 3.
  EXPECT_EQ(s->Lookup("tenantB/m", Chain(0, 3), 0), 3u);
  EXPECT_EQ(s->Lookup("tenantA/m", Chain(10, 1), 0), 0u);
  EXPECT_EQ(s->Lookup("tenantA/m", Chain(13, 2), 0), 2u);
  EXPECT_EQ(s->Lookup("tenantA/vip/m", Chain(20, 4), 0), 4u);
  const StoreStats st = s->Stats();
  EXPECT_EQ(st.quota_evictions, 3u);
  EXPECT_EQ(st.memory.evictions, 3u);
  EXPECT_EQ(st.memory.blocks, 9u);
}

TEST_F(TieredStoreTest, NamespaceQuotaAppliesOnDiskToo) {
  TieredStoreOptions o = WithDisk(100, 100);
  o.namespace_quota_bytes["tenantA/"] = 3 * kBlock;
  {
    auto s = Open(o);
    for (uint64_t i = 0; i < 4; ++i)
      ASSERT_TRUE(s->Put(Key("tenantB/m", i), RandomPayload(i)).ok());
    for (uint64_t i = 10; i < 16; ++i) {
      ASSERT_TRUE(s->Put(Key("tenantA/m", i), RandomPayload(i)).ok());
    }
    const StoreStats st = s->Stats();
    EXPECT_EQ(st.disk.blocks, 7u);      // 4 of tenantB + 3 of tenantA
    EXPECT_EQ(st.quota_evictions, 6u);  // 3 in RAM + 3 on disk
    EXPECT_EQ(st.disk.evictions, 3u);
  }
  // After a restart the rebuilt disk index still charges tenantA/ for its blocks.
  auto s = Open(o);
  EXPECT_EQ(s->Lookup("tenantB/m", Chain(0, 4), 0), 4u);
  EXPECT_EQ(s->Lookup("tenantA/m", Chain(13, 3), 0), 3u);
  EXPECT_EQ(s->Lookup("tenantA/m", Chain(12, 1), 0), 0u);
  ASSERT_TRUE(s->Put(Key("tenantA/m", 20), RandomPayload(20)).ok());
  // 13..15 were looked up as one chain: its tail (15) goes first.
  EXPECT_EQ(s->Lookup("tenantA/m", Chain(13, 3), 0), 2u);
  EXPECT_EQ(s->Lookup("tenantB/m", Chain(0, 4), 0), 4u);
  EXPECT_EQ(s->Stats().disk.blocks, 7u);
}

TEST_F(TieredStoreTest, DemotesOnEvictionAndPromotesOnDiskHit) {
  TieredStoreOptions o = WithDisk(2, 100);
  o.write_through = false;
  auto s = Open(o);
  for (uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(s->Put(Key(kNs, i), RandomPayload(i)).ok());
  StoreStats st = s->Stats();
  EXPECT_EQ(st.demotions, 1u);
  EXPECT_EQ(st.memory.blocks, 2u);
  EXPECT_EQ(st.disk.blocks, 1u);
  EXPECT_EQ(s->Lookup(kNs, Chain(0, 3), 0), 3u);  // block 0 counts from disk
  Lease l = GetOne(*s, Key(kNs, 0));
  ASSERT_TRUE(l);
  EXPECT_EQ(l.tier, Tier::kDisk);
  EXPECT_EQ(*l.payload, *RandomPayload(0));
  st = s->Stats();
  EXPECT_EQ(st.promotions, 1u);
  EXPECT_EQ(st.disk.hits, 1u);
  EXPECT_EQ(st.memory.misses, 1u);
  EXPECT_EQ(GetOne(*s, Key(kNs, 0)).tier, Tier::kMemory);  // promoted
  EXPECT_EQ(s->Stats().memory.hits, 1u);
  EXPECT_FALSE(GetOne(*s, Key(kNs, 50)));
  EXPECT_EQ(s->Stats().disk.misses, 1u);
}

TEST_F(TieredStoreTest, WriteThroughBlocksSurviveReopen) {
  {
    auto s = Open(WithDisk(4, 100));
    for (uint64_t i = 0; i < 6; ++i) ASSERT_TRUE(s->Put(Key(kNs, i), RandomPayload(i)).ok());
    ASSERT_TRUE(s->Flush().ok());
  }
  auto s = Open(WithDisk(4, 100));
  const StoreStats st = s->Stats();
  EXPECT_EQ(st.disk.blocks, 6u);
  EXPECT_EQ(st.disk.bytes, 6 * kBlock);
  EXPECT_EQ(st.memory.blocks, 0u);
  EXPECT_EQ(s->Lookup(kNs, Chain(0, 6), 0), 6u);
  for (uint64_t i = 0; i < 6; ++i) {
    Lease l = GetOne(*s, Key(kNs, i));
    ASSERT_TRUE(l);
    EXPECT_EQ(*l.payload, *RandomPayload(i));
  }
  EXPECT_EQ(*s->Put(Key(kNs, 0), RandomPayload(0)), PutOutcome::kDeduplicated);
  EXPECT_EQ(s->Put(Key(kNs, 1), RandomPayload(7)).status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_F(TieredStoreTest, DiskTierEvictsAtItsCapacity) {
  auto s = Open(WithDisk(2, 5));
  for (uint64_t i = 0; i < 9; ++i) ASSERT_TRUE(s->Put(Key(kNs, i), RandomPayload(i)).ok());
  const StoreStats st = s->Stats();
  EXPECT_EQ(st.disk.blocks, 5u);
  EXPECT_EQ(st.disk.bytes, 5 * kBlock);
  EXPECT_EQ(st.disk.evictions, 4u);
  EXPECT_EQ(s->Lookup(kNs, Chain(0, 1), 0), 0u);
  EXPECT_EQ(s->Lookup(kNs, Chain(4, 5), 0), 5u);
}

TEST_F(TieredStoreTest, DeleteRemovesFromEveryTier) {
  auto s = Open(WithDisk(4, 100));
  for (uint64_t i = 0; i < 3; ++i) ASSERT_TRUE(s->Put(Key(kNs, i), RandomPayload(i)).ok());
  EXPECT_EQ(*s->Delete({Key(kNs, 0), Key(kNs, 1), Key(kNs, 9)}), 2u);
  EXPECT_EQ(s->Lookup(kNs, Chain(0, 1), 0), 0u);
  EXPECT_EQ(s->Stats().disk.blocks, 1u);
  s.reset();
  s = Open(WithDisk(4, 100));
  EXPECT_EQ(s->Lookup(kNs, Chain(0, 3), 0), 0u);
  EXPECT_EQ(s->Lookup(kNs, Chain(2, 1), 0), 1u);
}

TEST_F(TieredStoreTest, CorruptDiskValueIsDataLossDroppedAndCounted) {
  const BlockKey key = Key(kNs, 1);
  {
    auto s = Open(WithDisk(4, 100));
    ASSERT_TRUE(s->Put(key, RandomPayload(1)).ok());
    ASSERT_TRUE(s->Put(Key(kNs, 2), RandomPayload(2)).ok());
  }
  {
    // Overwrite the stored value with a copy whose body has one flipped bit.
    rocksdb::DBOptions dbo;
    std::vector<rocksdb::ColumnFamilyDescriptor> cfs = {{rocksdb::kDefaultColumnFamilyName, {}},
                                                        {"meta", {}}};
    std::vector<rocksdb::ColumnFamilyHandle*> h;
    rocksdb::DB* db = nullptr;
    ASSERT_TRUE(rocksdb::DB::Open(dbo, dir_.path() + "/db", cfs, &h, &db).ok());
    std::vector<uint8_t> bad = *RandomPayload(1);
    bad[kernels::kPayloadHeaderBytes + 100] ^= 0x04;
    ASSERT_TRUE(db->Put({}, h[0], EncodeBlockKey(key),
                        rocksdb::Slice(reinterpret_cast<const char*>(bad.data()), bad.size()))
                    .ok());
    for (auto* x : h) db->DestroyColumnFamilyHandle(x);
    delete db;
  }
  auto s = Open(WithDisk(4, 100));
  std::vector<absl::StatusOr<Lease>> r = s->Get({key, Key(kNs, 2)});
  EXPECT_EQ(r[0].status().code(), absl::StatusCode::kDataLoss);
  ASSERT_TRUE(r[1].ok());
  EXPECT_EQ(*r[1]->payload, *RandomPayload(2));
  EXPECT_EQ(s->Stats().corrupt_dropped, 1u);
  EXPECT_FALSE(GetOne(*s, key));  // dropped: now a miss
  EXPECT_EQ(s->Lookup(kNs, Chain(1, 1), 0), 0u);
  EXPECT_EQ(*s->Put(key, RandomPayload(1)), PutOutcome::kStored);  // can be stored again
}

TEST_F(TieredStoreTest, FlushIsOkWithAndWithoutDisk) {
  EXPECT_TRUE(Open(RamOnly(2))->Flush().ok());
  auto s = Open(WithDisk(2, 2));
  ASSERT_TRUE(s->Put(Key(kNs, 1), RandomPayload(1)).ok());
  EXPECT_TRUE(s->Flush().ok());
}

TEST_F(TieredStoreTest, SecondOpenOfTheSameDirectoryIsUnavailable) {
  auto s = Open(WithDisk(2, 2));
  EXPECT_EQ(TieredStore::Open(WithDisk(2, 2)).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace kvtier::storage
