// DiskTier: the SSD tier (DESIGN.md §5), a RocksDB database with two column families:
//   "default" - encoded block key (storage/block_key.h) -> payload bytes. Values of at
//               least min_blob_size bytes live in blob files (RocksDB BlobDB), so
//               multi-MB payloads are written once and never rewritten by compaction.
//   "meta"    - encoded block key -> 32-byte record, little-endian:
//               u64 payload bytes, u64 checksum, u64 tick, u32 depth, u32 version (1).
// Both are written in one WriteBatch (atomic, WAL on), so after a crash a key has both
// or neither. On open, the meta family (small) is scanned to rebuild the in-memory
// eviction index (storage/eviction.h) and byte counts; payloads are not read.
//
// Every value is re-validated on read (kernels::ValidatePayload and the checksum in its
// meta record). A value that fails, or that RocksDB reports as corrupt, is deleted,
// counted in corrupt_dropped() and reported as kDataLoss; its bytes are never returned.
//
// Capacity counts live payload bytes. File space of deleted or evicted blobs is reclaimed
// by blob garbage collection: once the bytes deleted since the last pass reach a quarter
// of the capacity (at least 64 MiB), a background thread flushes the values family and
// compacts it with forced blob GC (blob files are capacity/32 bytes, 8..256 MiB); the WAL
// is capped at capacity/8 (32..256 MiB). The directory then stays within a few times the
// capacity for small capacities (64 MiB: at most ~5x) and close to it for large ones. Access order
// changes are kept in memory only; after a restart the order is that of the persisted (insertion)
// stamps.
//
//   KVTIER_ASSIGN_OR_RETURN(auto disk, DiskTier::Open({.path = "/var/lib/kvtier"}));
//   disk->Put(key, bytes, checksum, /*group=*/-1, {tick, depth});
//   absl::StatusOr<Payload> p = disk->Get(key, tick);  // nullptr on a miss
//
// Thread safety: safe for concurrent use without external locking.
// Lock order: a key stripe (stripes_) before index_mu_; never two stripes at once;
// gc_mu_ is taken alone.
#ifndef KVTIER_STORAGE_DISK_TIER_H_
#define KVTIER_STORAGE_DISK_TIER_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "storage/eviction.h"
#include "storage/mutex.h"
#include "storage/tiered_store.h"

namespace rocksdb {
class DB;
class ColumnFamilyHandle;
class Status;
class WriteBatch;
struct WriteOptions;
}  // namespace rocksdb

namespace kvtier::storage {

struct DiskTierOptions {
  // RocksDB directory, created when missing. Required.
  std::string path;
  // Bytes of payload kept. Default: 64 GiB. Fixed after Open.
  uint64_t capacity_bytes = uint64_t{64} << 30;
  // fsync the WAL on every Put (a completed Put survives power loss). Default: false.
  bool sync_writes = false;
  // Payloads of at least this many bytes are stored in blob files. Default: 64 KiB.
  uint64_t min_blob_size = uint64_t{64} << 10;
  // Byte limit of each quota group, indexed by group; 0 = no limit. Default: none.
  std::vector<uint64_t> group_quota_bytes;
  // Maps a namespace to its quota group (-1: none), for the index rebuilt on Open.
  // Default: every namespace in no group.
  std::function<int(std::string_view ns)> group_of;
};

class DiskTier {
 public:
  // Opens or creates the database. kDataLoss when RocksDB reports corruption,
  // kUnavailable for I/O errors (or a database locked by another process),
  // kInvalidArgument for bad options.
  static absl::StatusOr<std::unique_ptr<DiskTier>> Open(const DiskTierOptions& options);
  ~DiskTier();
  DiskTier(const DiskTier&) = delete;
  DiskTier& operator=(const DiskTier&) = delete;

  // Writes a block (value and meta, one batch). A present key is left as is
  // (kPresentSame / kPresentDifferent by checksum). Then evicts, in eviction order, until
  // `group` is within its quota and the tier within its capacity; the evicted keys are
  // appended to `evicted` when non-null. kUnavailable on a RocksDB write error.
  absl::StatusOr<InsertResult> Put(const std::string& key, absl::Span<const uint8_t> payload,
                                   uint64_t checksum, int group, AccessStamp stamp,
                                   std::vector<std::string>* evicted = nullptr);

  // Reads and validates a block: the payload, nullptr on a miss, kDataLoss when the
  // stored value is corrupt (dropped and counted), kUnavailable on an I/O error.
  // tick > 0 re-stamps the block's tick (in memory).
  absl::StatusOr<Payload> Get(const std::string& key, uint64_t tick);

  // Presence test from the index (no read) that re-stamps tick and depth. false on a miss.
  bool Touch(const std::string& key, AccessStamp stamp);
  bool Contains(const std::string& key) const;
  // The block's current stamp (no re-stamp), or nullopt on a miss.
  std::optional<AccessStamp> Stamp(const std::string& key) const;
  std::optional<uint64_t> Checksum(const std::string& key) const;

  // Deletes the key; false when absent.
  absl::StatusOr<bool> Delete(const std::string& key);

  // Flushes the memtables and syncs the WAL.
  absl::Status Flush();

  // Largest tick persisted when the database was opened (0 when empty).
  uint64_t max_tick_at_open() const { return max_tick_at_open_; }

  uint64_t capacity_bytes() const { return capacity_bytes_; }
  uint64_t bytes() const;
  uint64_t blocks() const;
  uint64_t group_bytes(int group) const;
  uint64_t evictions() const { return evictions_.load(std::memory_order_relaxed); }
  uint64_t quota_evictions() const { return quota_evictions_.load(std::memory_order_relaxed); }
  uint64_t corrupt_dropped() const { return corrupt_dropped_.load(std::memory_order_relaxed); }
  // Background blob garbage-collection passes started so far.
  uint64_t gc_passes() const { return gc_passes_.load(std::memory_order_relaxed); }

 private:
  struct Entry {
    uint64_t bytes = 0;
    uint64_t checksum = 0;
    int group = -1;
    EvictionPos pos;
  };
  static constexpr size_t kStripes = 64;

  DiskTier(const DiskTierOptions& options, rocksdb::DB* db,
           std::vector<rocksdb::ColumnFamilyHandle*> handles);
  absl::Status Rebuild(const std::function<int(std::string_view)>& group_of);
  Mutex& StripeFor(const std::string& key) const;
  uint64_t QuotaBytes(int group) const;
  void AddLocked(const std::string& key, const Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(index_mu_);
  void RemoveLocked(absl::flat_hash_map<std::string, Entry>::iterator it)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(index_mu_);
  // Picks victims until `group` and the tier fit; removes them from the index.
  void SelectVictimsLocked(int group, std::vector<std::string>* victims)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(index_mu_);
  // Deletes an evicted key's value and meta unless it was stored again meanwhile.
  void DeleteEvicted(const std::string& key);
  // Counts a corrupt value and drops it if the index still holds the same version
  // (pos.id == id). The caller holds the key's stripe lock.
  void DropCorruptLocked(const std::string& key, uint64_t id);
  // One index lookup + value read + validation, without the stripe lock. kInvalid: the
  // value failed validation (result holds the kDataLoss to return if it is confirmed).
  struct ReadResult {
    enum Kind { kDone, kInvalid } kind;
    uint64_t id;
    absl::StatusOr<Payload> result;
  };
  ReadResult ReadOnce(const std::string& key, uint64_t tick);
  absl::Status DeleteFromDb(const std::string& key, bool sync);
  // Counts deleted value bytes; starts a GC pass in the background past the threshold.
  void AddGarbage(uint64_t bytes);
  void CollectGarbage();
  rocksdb::Status WriteToDb(const rocksdb::WriteOptions& wo, rocksdb::WriteBatch* batch);

  // Constant after construction.
  const uint64_t capacity_bytes_;
  const bool sync_writes_;
  const std::vector<uint64_t> quotas_;
  rocksdb::DB* const db_;                              // owned
  std::vector<rocksdb::ColumnFamilyHandle*> handles_;  // owned; [0] values, [1] meta
  uint64_t max_tick_at_open_ = 0;                      // set by Rebuild before use

  mutable std::array<Mutex, kStripes> stripes_;

  mutable Mutex index_mu_;
  absl::flat_hash_map<std::string, Entry> index_ ABSL_GUARDED_BY(index_mu_);
  EvictionIndex order_ ABSL_GUARDED_BY(index_mu_);
  uint64_t bytes_ ABSL_GUARDED_BY(index_mu_) = 0;
  std::vector<uint64_t> group_bytes_ ABSL_GUARDED_BY(index_mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(index_mu_) = 1;

#ifdef KVTIER_STORAGE_TSAN
  Mutex tsan_write_mu_;  // see WriteToDb()
#endif

  std::atomic<uint64_t> garbage_bytes_{0};  // value bytes deleted since the last GC pass
  std::atomic<bool> gc_running_{false};
  Mutex gc_mu_;
  std::thread gc_thread_ ABSL_GUARDED_BY(gc_mu_);  // the last GC pass
  uint64_t gc_threshold_ = 0;                      // constant after construction
  std::atomic<uint64_t> gc_passes_{0};

  std::atomic<uint64_t> evictions_{0};
  std::atomic<uint64_t> quota_evictions_{0};
  std::atomic<uint64_t> corrupt_dropped_{0};
};

}  // namespace kvtier::storage

#endif  // KVTIER_STORAGE_DISK_TIER_H_
