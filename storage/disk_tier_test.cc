#include "storage/disk_tier.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "kernels/payload.h"
#include "storage/block_key.h"
#include "storage/testing.h"

namespace kvtier::storage {
namespace {

namespace fs = std::filesystem;

uint64_t Checksum(const Payload& p) {
  return kernels::Xxh3(absl::MakeConstSpan(*p).first(kernels::kPayloadHeaderBytes));
}
DiskTierOptions Opts(const std::string& path, uint64_t capacity) {
  DiskTierOptions o;
  o.path = path;
  o.capacity_bytes = capacity;
  return o;
}
std::string K(uint64_t i) { return EncodeBlockKey("ns", testing::Hash(i), 0); }

class DiskTierTest : public ::testing::Test {
 protected:
  std::unique_ptr<DiskTier> Open(uint64_t capacity = uint64_t{1} << 30) {
    absl::StatusOr<std::unique_ptr<DiskTier>> d =
        DiskTier::Open(Opts(dir_.path() + "/db", capacity));
    EXPECT_TRUE(d.ok()) << d.status();
    return d.ok() ? std::move(d).value() : nullptr;
  }
  void Put(DiskTier& d, uint64_t i, uint64_t tick, int layers = 12) {
    Payload p = testing::RandomPayload(i, layers);
    ASSERT_EQ(*d.Put(K(i), *p, Checksum(p), -1, {tick, 0}), InsertResult::kInserted);
  }
  std::vector<fs::path> Files(const std::string& ext) {
    std::vector<fs::path> out;
    for (const auto& e : fs::directory_iterator(dir_.path() + "/db")) {
      const std::string name = e.path().filename().string();
      if (name.size() >= ext.size() && name.compare(name.size() - ext.size(), ext.size(), ext) == 0)
        out.push_back(e.path());
    }
    return out;
  }
  // Flips `n` random bytes of each file.
  static void Flip(const std::vector<fs::path>& files, int n, uint64_t seed) {
    std::mt19937_64 rng(seed);
    for (const auto& f : files) {
      const uint64_t size = fs::file_size(f);
      if (size == 0) continue;
      std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
      for (int i = 0; i < n; ++i) {
        const uint64_t off = rng() % size;
        io.seekg(off);
        char c = 0;
        io.read(&c, 1);
        c = static_cast<char>(c ^ (1 + rng() % 255));
        io.seekp(off);
        io.write(&c, 1);
      }
    }
  }
  // After corruption: Open fails with kDataLoss, or every read is a miss, the exact
  // original payload, or kDataLoss. Returns the number of kDataLoss reads.
  int CheckNeverServesBadBytes(int blocks, int layers) {
    absl::StatusOr<std::unique_ptr<DiskTier>> d =
        DiskTier::Open(Opts(dir_.path() + "/db", uint64_t{1} << 30));
    if (!d.ok()) {
      EXPECT_EQ(d.status().code(), absl::StatusCode::kDataLoss) << d.status();
      return 0;
    }
    int lost = 0;
    for (int i = 0; i < blocks; ++i) {
      absl::StatusOr<Payload> p = (*d)->Get(K(i), 0);
      if (!p.ok()) {
        EXPECT_EQ(p.status().code(), absl::StatusCode::kDataLoss) << p.status();
        ++lost;
        EXPECT_EQ(*(*d)->Get(K(i), 0), nullptr) << "a corrupt block must be dropped";
        continue;
      }
      if (*p) {
        EXPECT_EQ(**p, *testing::RandomPayload(i, layers)) << "block " << i;
      }
    }
    EXPECT_EQ((*d)->corrupt_dropped() >= static_cast<uint64_t>(lost), true);
    return lost;
  }

  testing::TempDir dir_;
};

TEST_F(DiskTierTest, LargeValuesGoToBlobFiles) {
  auto d = Open();
  for (uint64_t i = 0; i < 4; ++i) Put(*d, i, i + 1);  // ~88 KB each, above 64 KiB
  ASSERT_TRUE(d->Flush().ok());
  EXPECT_FALSE(Files(".blob").empty());
  for (uint64_t i = 0; i < 4; ++i) EXPECT_EQ(**d->Get(K(i), 0), *testing::RandomPayload(i, 12));
}

TEST_F(DiskTierTest, IndexIsRebuiltOnOpenWithItsOrder) {
  const uint64_t b = testing::RandomPayloadBytes(12);
  {
    auto d = Open();
    for (uint64_t i = 0; i < 5; ++i) Put(*d, i, 10 - i);  // block 4 has the oldest tick
  }
  auto d = Open(/*capacity=*/4 * b);  // shrunk: the oldest goes at open
  EXPECT_EQ(d->blocks(), 4u);
  EXPECT_EQ(d->bytes(), 4 * b);
  EXPECT_EQ(d->evictions(), 1u);
  EXPECT_FALSE(d->Contains(K(4)));
  EXPECT_EQ(d->max_tick_at_open(), 10u);
  EXPECT_EQ(d->Checksum(K(0)), Checksum(testing::RandomPayload(0, 12)));
  d.reset();
  d = Open(4 * b);
  EXPECT_EQ(d->blocks(), 4u);  // the eviction's delete persisted
}

TEST_F(DiskTierTest, FlippedBytesInBlobFilesAreNeverServed) {
  {
    auto d = Open();
    for (uint64_t i = 0; i < 20; ++i) Put(*d, i, i + 1);
    ASSERT_TRUE(d->Flush().ok());
  }
  auto blobs = Files(".blob");
  ASSERT_FALSE(blobs.empty());
  Flip(blobs, 40, 1);
  EXPECT_GT(CheckNeverServesBadBytes(20, 12), 0);
}

TEST_F(DiskTierTest, FlippedBytesInSmallValuesAreNeverServed) {
  {
    auto d = Open();
    for (uint64_t i = 0; i < 20; ++i) Put(*d, i, i + 1, /*layers=*/1);  // inline in SSTs
    ASSERT_TRUE(d->Flush().ok());
  }
  auto ssts = Files(".sst");
  ASSERT_FALSE(ssts.empty());
  Flip(ssts, 40, 2);
  CheckNeverServesBadBytes(20, 1);
}

TEST_F(DiskTierTest, FlippedBytesInTheWalAreNeverServed) {
  {
    auto d = Open();
    for (uint64_t i = 0; i < 20; ++i) Put(*d, i, i + 1, 1);  // no flush: values in the WAL
  }
  auto logs = Files(".log");
  ASSERT_FALSE(logs.empty());
  Flip(logs, 20, 3);
  CheckNeverServesBadBytes(20, 1);
}

TEST_F(DiskTierTest, DirectoryStaysBoundedUnderEvictionChurn) {
  // 256 MB written through a 16 MiB tier: the WAL cap and blob GC keep the files small.
  auto d = Open(/*capacity=*/uint64_t{16} << 20);
  Payload p = testing::RandomPayload(1, 140);  // ~1 MB
  for (uint64_t i = 0; i < 256; ++i) {
    ASSERT_EQ(*d->Put(K(i), *p, Checksum(p), -1, {i + 1, 0}), InsertResult::kInserted);
  }
  d.reset();  // waits for a running GC pass
  uint64_t files = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir_.path() + "/db")) {
    if (e.is_regular_file()) files += e.file_size();
  }
  EXPECT_LT(files, uint64_t{160} << 20) << "written " << 256 * p->size();
  d = Open(uint64_t{16} << 20);
  EXPECT_LE(d->bytes(), uint64_t{16} << 20);
  EXPECT_EQ(**d->Get(K(255), 0), *p);
}

TEST_F(DiskTierTest, DeleteAndTouch) {
  auto d = Open();
  Put(*d, 1, 1);
  EXPECT_TRUE(d->Touch(K(1), {5, 2}));
  EXPECT_FALSE(d->Touch(K(2), {5, 2}));
  EXPECT_EQ(d->Stamp(K(1))->depth, 2u);
  EXPECT_TRUE(*d->Delete(K(1)));
  EXPECT_FALSE(*d->Delete(K(1)));
  EXPECT_EQ(*d->Get(K(1), 0), nullptr);
  EXPECT_EQ(d->bytes(), 0u);
}

}  // namespace
}  // namespace kvtier::storage
