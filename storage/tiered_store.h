// TieredStore: the server's memory (DESIGN.md §5). Compressed block payloads in RAM
// (MemoryTier), spilling to SSD through RocksDB (DiskTier), keyed by prefix chain.
//
//   TieredStoreOptions o;
//   o.memory_capacity_bytes = 8ull << 30;
//   o.disk_path = "/var/lib/kvtier";
//   KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<TieredStore> store, TieredStore::Open(o));
//   KVTIER_ASSIGN_OR_RETURN(PutOutcome r, store->Put(key, payload));  // validates payload
//   size_t hit = store->Lookup("tenant/model/k4v2_g128/tp0", chain, /*part=*/0);
//   std::vector<absl::StatusOr<Lease>> got = store->Get(keys);         // miss: !lease
//
// Thread safety: every method is safe for concurrent use without external locking.
//
// Implementation notes (storage/tiered_store.cc, memory_tier.h, disk_tier.h, eviction.h):
// - Eviction order (both tiers, storage/eviction.h): least recently used first; among
//   blocks last used by the same Lookup/Get, the deepest chain position first (a block
//   is useless once its parent is gone). A Put takes the recency and chain position of
//   the Lookup that missed its key, so "Lookup, then Put what missed" stores a chain
//   whose tail is evicted before its head.
// - Without write_through, RAM evictions are demoted to disk when the disk lacks them
//   (with write_through every block reached disk when stored; one the disk evicted since
//   is not written again). A disk hit in Get is validated and promoted into RAM
//   (Lease::tier says kDisk for that Get).
// - Stats: TierStats::hits/misses count Get lookups per tier (a RAM miss that the disk
//   serves is a RAM miss and a disk hit); Lookup is a presence probe and not counted.
//   puts_rejected counts every failed Put (invalid payload, checksum conflict, too large).
// - Lock order: no lock is held across the two tiers; within a tier see its header.
#ifndef KVTIER_STORAGE_TIERED_STORE_H_
#define KVTIER_STORAGE_TIERED_STORE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/payload.h"

namespace kvtier::storage {

using kernels::ChainHash;

// (namespace, chain_hash, part): DESIGN §4.
struct BlockKey {
  std::string ns;
  ChainHash chain{};
  uint32_t part = 0;
  friend bool operator==(const BlockKey&, const BlockKey&) = default;
};

// An immutable payload (header + layer sections), shared by every reader that holds it.
using Payload = std::shared_ptr<const std::vector<uint8_t>>;

enum class Tier : uint8_t { kMemory = 0, kDisk = 1 };

// A reader's hold on a block: the bytes stay valid while the lease lives, even if the
// block is evicted or deleted meanwhile. A default Lease (payload == nullptr) is a miss.
struct Lease {
  Payload payload;
  Tier tier = Tier::kMemory;  // where the block was found
  explicit operator bool() const { return payload != nullptr; }
};

enum class PutOutcome : uint8_t {
  kStored = 0,        // new block
  kDeduplicated = 1,  // already present with the same checksum: no-op
};

struct TieredStoreOptions {
  // Bytes of payload kept in RAM. Default: 4 GiB. Fixed after Open.
  uint64_t memory_capacity_bytes = uint64_t{4} << 30;
  // Independent lock shards of the RAM tier. Default: 16.
  int memory_shards = 16;
  // RocksDB directory; empty means no disk tier (RAM only). Default: empty.
  std::string disk_path;
  // Bytes of payload kept on disk. Default: 64 GiB. Fixed after Open.
  uint64_t disk_capacity_bytes = uint64_t{64} << 30;
  // fsync the WAL on every disk write (a completed Put survives power loss). Default: false
  // (a completed Put survives a process crash, not a power loss).
  bool sync_writes = false;
  // Write every Put to disk as well as RAM (write-through) instead of only on demotion.
  // Default: true (blocks survive restarts).
  bool write_through = true;
  // Optional per-namespace byte limits, by namespace prefix (longest prefix wins), over
  // both tiers. A namespace over its limit evicts its own blocks, never others'.
  // Default: none.
  // The limit applies in each tier separately: a namespace holds at most its limit in RAM
  // and at most its limit on disk (with write_through, disk holds a superset of RAM, so
  // its distinct bytes stay within the limit). A limit of 0 is kInvalidArgument.
  std::map<std::string, uint64_t> namespace_quota_bytes;
  // Payloads of at least this many bytes go to RocksDB blob files rather than SST files.
  // Default: 64 KiB. Fixed after Open. (Added by the storage implementation.)
  uint64_t disk_min_blob_size_bytes = uint64_t{64} << 10;
  // Evict the deepest block of a chain first among equally recent blocks (see the notes
  // at the top). false: plain LRU, where a Lookup touches its chain head to tail, so the
  // head is the least recent. Default: true. Fixed after Open. (Added by the storage
  // implementation; false exists to measure the rule, see docs/benchmarks/storage.md.)
  bool chain_aware_eviction = true;
};

struct TierStats {
  uint64_t blocks = 0;
  uint64_t bytes = 0;
  uint64_t capacity_bytes = 0;
  uint64_t hits = 0;
  uint64_t misses = 0;
  uint64_t evictions = 0;
};

struct StoreStats {
  TierStats memory;
  TierStats disk;
  uint64_t puts_stored = 0;
  uint64_t puts_deduplicated = 0;
  uint64_t puts_rejected = 0;      // invalid payloads and checksum conflicts
  uint64_t dedup_conflicts = 0;    // a Put of a present key with a different checksum
  uint64_t dedup_bytes_saved = 0;  // payload bytes not stored again thanks to dedup
  uint64_t corrupt_dropped = 0;    // disk values that failed validation and were dropped
  uint64_t quota_evictions = 0;    // evictions forced by a namespace quota
  uint64_t promotions = 0;         // disk hits copied into RAM
  uint64_t demotions = 0;          // RAM evictions written to disk
};

class TieredStore {
 public:
  // Opens (or creates) the store. kInvalidArgument for bad options, kUnavailable or
  // kDataLoss when the RocksDB directory cannot be opened.
  static absl::StatusOr<std::unique_ptr<TieredStore>> Open(const TieredStoreOptions& options);
  virtual ~TieredStore() = default;

  // Stores a block. The payload is validated (kernels::ValidatePayload) first: malformed
  // -> kInvalidArgument, checksum -> kDataLoss; nothing changes then. A present key with
  // the same checksum -> kDeduplicated (counted); a different checksum -> kAlreadyExists
  // (counted, rejected, the stored block kept). kResourceExhausted when the block is
  // larger than a tier or its namespace quota.
  virtual absl::StatusOr<PutOutcome> Put(const BlockKey& key, Payload payload) = 0;

  // Number of leading blocks of `chain` present in any tier (stops at the first miss).
  virtual size_t Lookup(std::string_view ns, absl::Span<const ChainHash> chain, uint32_t part) = 0;

  // One result per key, in order: a Lease (empty on a miss) or kDataLoss when a disk value
  // failed validation (it is dropped and counted; never returned).
  virtual std::vector<absl::StatusOr<Lease>> Get(absl::Span<const BlockKey> keys) = 0;

  // Removes the keys from every tier; returns how many were present. Leases stay valid.
  virtual absl::StatusOr<size_t> Delete(absl::Span<const BlockKey> keys) = 0;

  virtual StoreStats Stats() const = 0;

  // Flushes RocksDB memtables and WAL (called on SIGTERM). OK without a disk tier.
  virtual absl::Status Flush() = 0;
};

}  // namespace kvtier::storage

#endif  // KVTIER_STORAGE_TIERED_STORE_H_
