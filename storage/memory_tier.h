// MemoryTier: the RAM tier (DESIGN.md §5). A sharded hash map from encoded block keys
// (storage/block_key.h) to immutable, reference-counted payloads, with a byte capacity,
// optional per-quota-group byte limits and the eviction order of storage/eviction.h.
//
//   MemoryTier ram({.capacity_bytes = 1 << 30});
//   ram.Insert(key, payload, checksum, /*group=*/-1, {tick, depth});
//   std::vector<EvictedBlock> victims = ram.EvictToFit(/*group=*/-1);  // demote them
//   Payload lease = ram.Get(key, tick);  // stays valid after eviction or Erase
//
// Insert never evicts by itself: the caller calls EvictToFit afterwards (so it can demote
// the victims without holding any tier lock). Byte counts are payload sizes.
//
// Thread safety: safe for concurrent use without external locking.
// Lock order: evict_mu_ before any Shard::mu; at most one Shard::mu held at a time.
#ifndef KVTIER_STORAGE_MEMORY_TIER_H_
#define KVTIER_STORAGE_MEMORY_TIER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "storage/eviction.h"
#include "storage/mutex.h"
#include "storage/tiered_store.h"

namespace kvtier::storage {

struct MemoryTierOptions {
  // Bytes of payload kept. Default: 4 GiB. Fixed after construction.
  uint64_t capacity_bytes = uint64_t{4} << 30;
  // Lock shards (clamped to 1..1024). Default: 16.
  int shards = 16;
  // Byte limit of each quota group, indexed by group; 0 = no limit. Default: none.
  std::vector<uint64_t> group_quota_bytes;
};

// A block removed by EvictToFit: the caller owns the last references.
struct EvictedBlock {
  std::string key;  // encoded key
  Payload payload;
  uint64_t checksum = 0;
  int group = -1;
  AccessStamp stamp;
  bool by_quota = false;  // evicted because its quota group was over its limit
};

class MemoryTier {
 public:
  explicit MemoryTier(const MemoryTierOptions& options);
  MemoryTier(const MemoryTier&) = delete;
  MemoryTier& operator=(const MemoryTier&) = delete;

  // Adds a block. A present key is left untouched (kPresentSame / kPresentDifferent by
  // checksum). `group` is the quota group (-1: none). Precondition: payload != nullptr.
  InsertResult Insert(const std::string& key, Payload payload, uint64_t checksum, int group,
                      AccessStamp stamp);

  // The payload (a lease) or nullptr on a miss. tick > 0 re-stamps the block's tick and
  // keeps its depth.
  Payload Get(const std::string& key, uint64_t tick);

  // Presence test that re-stamps tick and depth (a Lookup). false on a miss.
  bool Touch(const std::string& key, AccessStamp stamp);

  // The stored checksum, or nullopt on a miss. Does not re-stamp.
  std::optional<uint64_t> Checksum(const std::string& key) const;

  // Removes the key; false when absent. Leases stay valid.
  bool Erase(const std::string& key);

  // Evicts blocks, in eviction order, until `group` is within its quota (group >= 0) and
  // the tier is within its capacity. Returns the victims, in eviction order.
  std::vector<EvictedBlock> EvictToFit(int group);

  uint64_t capacity_bytes() const { return capacity_bytes_; }
  uint64_t quota_bytes(int group) const;
  uint64_t bytes() const { return bytes_.load(std::memory_order_relaxed); }
  uint64_t blocks() const { return blocks_.load(std::memory_order_relaxed); }
  uint64_t group_bytes(int group) const;
  uint64_t evictions() const { return evictions_.load(std::memory_order_relaxed); }

 private:
  struct Entry {
    Payload payload;
    uint64_t checksum = 0;
    uint64_t bytes = 0;
    int group = -1;
    EvictionPos pos;
  };
  struct Shard {
    mutable Mutex mu;
    absl::flat_hash_map<std::string, Entry> map ABSL_GUARDED_BY(mu);
    EvictionIndex order ABSL_GUARDED_BY(mu);
  };

  Shard& ShardFor(const std::string& key) const;
  void AddBytes(int group, uint64_t n);
  void SubBytes(int group, uint64_t n);
  bool OverQuota(int group) const;
  // Removes the next victim overall (group < 0) or in `group`; false when none.
  bool EvictOne(int group, EvictedBlock* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(evict_mu_);

  // Constant after construction.
  const uint64_t capacity_bytes_;
  const std::vector<uint64_t> quotas_;
  std::vector<std::unique_ptr<Shard>> shards_;
  std::unique_ptr<std::atomic<uint64_t>[]> group_bytes_;  // quotas_.size() counters

  std::atomic<uint64_t> next_id_{1};
  std::atomic<uint64_t> bytes_{0};
  std::atomic<uint64_t> blocks_{0};
  std::atomic<uint64_t> evictions_{0};

  // Serializes evictors so two threads never pick the same victim or over-evict.
  Mutex evict_mu_;
};

}  // namespace kvtier::storage

#endif  // KVTIER_STORAGE_MEMORY_TIER_H_
