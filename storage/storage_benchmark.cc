// storage_benchmark: micro benchmarks of the storage tiers (Google Benchmark).
//   RAM tier Put/Get of 256 KiB .. 16 MiB payloads vs memcpy of the same bytes;
//   disk tier Put/Get vs plain RocksDB writes/reads of the same values;
//   Lookup of 128-block chains.
// Results: docs/benchmarks/storage.md. The disk benchmarks write under $TMPDIR (or /tmp).
#include <benchmark/benchmark.h>

#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/payload.h"
#include "rocksdb/db.h"
#include "rocksdb/options.h"
#include "storage/block_key.h"
#include "storage/disk_tier.h"
#include "storage/testing.h"
#include "storage/tiered_store.h"

namespace kvtier::storage {
namespace {

// A payload of about `bytes` (whole k4v2_g128 head_dim-128 tile records of 13824 B,
// 1 KV head per layer, or 8 above 1024 records) with a random body.
Payload MakePayload(size_t bytes, uint64_t seed) {
  int records = std::max<int>(1, static_cast<int>(bytes / 13824));
  const int heads = records > 1024 ? 8 : 1;
  records /= heads;
  kernels::PayloadHeader h =
      kernels::MakeTilesHeader(kernels::Preset::kK4V2G128, 128, records, heads);
  std::vector<uint8_t> body(h.layer_section_bytes * records);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i + 8 <= body.size(); i += 8) {
    const uint64_t v = rng() | 1;
    std::memcpy(body.data() + i, &v, 8);
  }
  std::vector<absl::Span<const uint8_t>> s;
  for (int l = 0; l < records; ++l) {
    s.push_back(
        absl::MakeConstSpan(body).subspan(l * h.layer_section_bytes, h.layer_section_bytes));
  }
  return std::make_shared<const std::vector<uint8_t>>(*kernels::BuildPayload(h, s));
}

uint64_t Checksum(const Payload& p) {
  return kernels::Xxh3(absl::MakeConstSpan(*p).first(kernels::kPayloadHeaderBytes));
}

void SetBytes(benchmark::State& state, size_t bytes) {
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * bytes));
}

void BM_Memcpy(benchmark::State& state) {
  Payload p = MakePayload(state.range(0), 1);
  std::vector<uint8_t> dst(p->size());
  for (auto _ : state) {
    std::memcpy(dst.data(), p->data(), p->size());
    benchmark::DoNotOptimize(dst.data());
    benchmark::ClobberMemory();
  }
  SetBytes(state, p->size());
}

std::unique_ptr<TieredStore> RamStore(uint64_t capacity) {
  TieredStoreOptions o;
  o.memory_capacity_bytes = capacity;
  return std::move(TieredStore::Open(o)).value();
}

// Put of a new key: validation (checksum of every byte), insert, and eviction at
// capacity. The payload is shared, not copied (a Put takes a reference).
void BM_RamPut(benchmark::State& state) {
  Payload p = MakePayload(state.range(0), 2);
  auto store = RamStore(uint64_t{1} << 30);
  uint64_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(store->Put(testing::Key("bench", i++), p));
  }
  SetBytes(state, p->size());
}

// Get returns a lease (no copy); this benchmark also copies the bytes out, as a server
// writing them to a socket or a client filling a pinned buffer would.
void BM_RamGetCopy(benchmark::State& state) {
  Payload p = MakePayload(state.range(0), 3);
  auto store = RamStore(uint64_t{1} << 30);
  for (uint64_t i = 0; i < 16; ++i) (void)store->Put(testing::Key("bench", i), p);
  std::vector<uint8_t> dst(p->size());
  uint64_t i = 0;
  for (auto _ : state) {
    std::vector<absl::StatusOr<Lease>> r = store->Get({testing::Key("bench", i++ % 16)});
    std::memcpy(dst.data(), (*r[0]).payload->data(), dst.size());
    benchmark::ClobberMemory();
  }
  SetBytes(state, p->size());
}

void BM_RamGetLease(benchmark::State& state) {
  Payload p = MakePayload(state.range(0), 3);
  auto store = RamStore(uint64_t{1} << 30);
  for (uint64_t i = 0; i < 16; ++i) (void)store->Put(testing::Key("bench", i), p);
  uint64_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(store->Get({testing::Key("bench", i++ % 16)}));
  }
  SetBytes(state, p->size());
}

constexpr uint64_t kDiskCapacity = uint64_t{1} << 30;

std::unique_ptr<DiskTier> OpenDisk(const std::string& path) {
  DiskTierOptions o;
  o.path = path;
  o.capacity_bytes = kDiskCapacity;
  return std::move(DiskTier::Open(o)).value();
}

// DiskTier::Put of new keys (WAL on, no fsync, blob files; evicts at 1 GiB).
void BM_DiskPut(benchmark::State& state) {
  testing::TempDir dir;
  Payload p = MakePayload(state.range(0), 4);
  const uint64_t sum = Checksum(p);
  auto disk = OpenDisk(dir.path());
  uint64_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        disk->Put(EncodeBlockKey("bench", testing::Hash(i++), 0), *p, sum, -1, {i, 0}));
  }
  SetBytes(state, p->size());
}

// Plain RocksDB (default options: no blob files, WAL on, no fsync) Put of the same values;
// keys older than 1 GiB of data are deleted, as the disk tier's eviction does.
void BM_RocksDbPut(benchmark::State& state) {
  testing::TempDir dir;
  Payload p = MakePayload(state.range(0), 4);
  rocksdb::Options o;
  o.create_if_missing = true;
  o.compression = rocksdb::kNoCompression;
  rocksdb::DB* raw = nullptr;
  if (!rocksdb::DB::Open(o, dir.path(), &raw).ok()) {
    state.SkipWithError("rocksdb open failed");
    return;
  }
  std::unique_ptr<rocksdb::DB> db(raw);
  const uint64_t keep = std::max<uint64_t>(1, kDiskCapacity / p->size());
  const rocksdb::Slice value(reinterpret_cast<const char*>(p->data()), p->size());
  uint64_t i = 0;
  for (auto _ : state) {
    db->Put({}, EncodeBlockKey("bench", testing::Hash(i), 0), value).PermitUncheckedError();
    if (i >= keep) {
      db->Delete({}, EncodeBlockKey("bench", testing::Hash(i - keep), 0)).PermitUncheckedError();
    }
    ++i;
  }
  SetBytes(state, p->size());
}

constexpr int kReadKeys = 32;

// DiskTier::Get: RocksDB read + ValidatePayload + copy into the returned payload.
void BM_DiskGet(benchmark::State& state) {
  testing::TempDir dir;
  Payload p = MakePayload(state.range(0), 5);
  auto disk = OpenDisk(dir.path());
  for (int i = 0; i < kReadKeys; ++i) {
    (void)disk->Put(EncodeBlockKey("bench", testing::Hash(i), 0), *p, Checksum(p), -1,
                    {uint64_t(i) + 1, 0});
  }
  (void)disk->Flush();
  uint64_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(
        disk->Get(EncodeBlockKey("bench", testing::Hash(i++ % kReadKeys), 0), 0));
  }
  SetBytes(state, p->size());
}

// Plain RocksDB Get (PinnableSlice, checksums verified) of the same values.
void BM_RocksDbGet(benchmark::State& state) {
  testing::TempDir dir;
  Payload p = MakePayload(state.range(0), 5);
  rocksdb::Options o;
  o.create_if_missing = true;
  o.compression = rocksdb::kNoCompression;
  rocksdb::DB* raw = nullptr;
  if (!rocksdb::DB::Open(o, dir.path(), &raw).ok()) {
    state.SkipWithError("rocksdb open failed");
    return;
  }
  std::unique_ptr<rocksdb::DB> db(raw);
  const rocksdb::Slice value(reinterpret_cast<const char*>(p->data()), p->size());
  for (int i = 0; i < kReadKeys; ++i) {
    db->Put({}, EncodeBlockKey("bench", testing::Hash(i), 0), value).PermitUncheckedError();
  }
  db->Flush({}).PermitUncheckedError();
  uint64_t i = 0;
  for (auto _ : state) {
    rocksdb::PinnableSlice out;
    db->Get({}, db->DefaultColumnFamily(),
            EncodeBlockKey("bench", testing::Hash(i++ % kReadKeys), 0), &out)
        .PermitUncheckedError();
    benchmark::DoNotOptimize(out.data());
  }
  SetBytes(state, p->size());
}

// Lookup of a 128-block chain that is fully present in RAM (128 hits per Lookup).
void BM_Lookup128(benchmark::State& state) {
  auto store = RamStore(uint64_t{1} << 30);
  Payload p = MakePayload(13824, 6);
  std::vector<ChainHash> chain;
  ChainHash h = kernels::ChainSeed("bench");
  for (int i = 0; i < 128; ++i) {
    const int32_t tok = i;
    h = kernels::ChainNext(h, absl::MakeConstSpan(&tok, 1));
    chain.push_back(h);
    (void)store->Put(BlockKey{"bench", h, 0}, p);
  }
  for (auto _ : state) benchmark::DoNotOptimize(store->Lookup("bench", chain, 0));
  state.SetItemsProcessed(state.iterations());
  state.counters["blocks/s"] = benchmark::Counter(static_cast<double>(state.iterations()) * 128,
                                                  benchmark::Counter::kIsRate);
}

#define KVTIER_SIZES ->Arg(256 << 10)->Arg(1 << 20)->Arg(4 << 20)->Arg(16 << 20)->UseRealTime()
BENCHMARK(BM_Memcpy) KVTIER_SIZES;
BENCHMARK(BM_RamPut) KVTIER_SIZES;
BENCHMARK(BM_RamGetCopy) KVTIER_SIZES;
BENCHMARK(BM_RamGetLease) KVTIER_SIZES;
BENCHMARK(BM_DiskPut) KVTIER_SIZES;
BENCHMARK(BM_RocksDbPut) KVTIER_SIZES;
BENCHMARK(BM_DiskGet) KVTIER_SIZES;
BENCHMARK(BM_RocksDbGet) KVTIER_SIZES;
BENCHMARK(BM_Lookup128);

}  // namespace
}  // namespace kvtier::storage

BENCHMARK_MAIN();
