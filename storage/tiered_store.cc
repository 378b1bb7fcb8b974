// TieredStore implementation: MemoryTier in front of an optional DiskTier.
//
// Lock order: TieredStoreImpl::hint_mu_ is a leaf (never held while calling a tier).
// No tier lock is held while calling into the other tier: victims of the RAM tier are
// demoted after MemoryTier::EvictToFit has returned.
#include "storage/tiered_store.h"

#include <atomic>
#include <deque>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/payload.h"
#include "storage/block_key.h"
#include "storage/disk_tier.h"
#include "storage/memory_tier.h"
#include "storage/mutex.h"

namespace kvtier::storage {
namespace {

// Chain positions past the first miss remembered per Lookup (for the following Puts).
constexpr size_t kHintWindow = 4096;
// Remembered positions overall; the oldest are forgotten first.
constexpr size_t kMaxHints = size_t{1} << 16;

uint64_t HeaderChecksum(const std::vector<uint8_t>& payload) {
  return kernels::Xxh3(absl::MakeConstSpan(payload).first(kernels::kPayloadHeaderBytes));
}

class TieredStoreImpl final : public TieredStore {
 public:
  TieredStoreImpl(const TieredStoreOptions& options, std::vector<std::string> quota_prefixes,
                  std::vector<uint64_t> quotas)
      : write_through_(options.write_through),
        chain_aware_(options.chain_aware_eviction),
        quota_prefixes_(std::move(quota_prefixes)),
        quotas_(quotas),
        memory_(MemoryTierOptions{options.memory_capacity_bytes, options.memory_shards,
                                  std::move(quotas)}) {}

  absl::Status OpenDisk(const TieredStoreOptions& options) {
    if (options.disk_path.empty()) return absl::OkStatus();
    DiskTierOptions d;
    d.path = options.disk_path;
    d.capacity_bytes = options.disk_capacity_bytes;
    d.sync_writes = options.sync_writes;
    d.min_blob_size = options.disk_min_blob_size_bytes;
    d.group_quota_bytes = quotas_;
    d.group_of = [this](std::string_view ns) { return GroupOf(ns); };
    absl::StatusOr<std::unique_ptr<DiskTier>> disk = DiskTier::Open(d);
    if (!disk.ok()) return disk.status();
    disk_ = std::move(disk).value();
    next_tick_.store(disk_->max_tick_at_open() + 1);
    return absl::OkStatus();
  }

  absl::StatusOr<PutOutcome> Put(const BlockKey& key, Payload payload) override {
    if (payload == nullptr) {
      puts_rejected_.fetch_add(1, std::memory_order_relaxed);
      return absl::InvalidArgumentError("null payload");
    }
    absl::StatusOr<kernels::PayloadView> view = kernels::ValidatePayload(*payload);
    if (!view.ok()) {
      puts_rejected_.fetch_add(1, std::memory_order_relaxed);
      return view.status();
    }
    const uint64_t size = payload->size();
    const int group = GroupOf(key.ns);
    if (group >= 0 && size > quotas_[group]) {
      puts_rejected_.fetch_add(1, std::memory_order_relaxed);
      return absl::ResourceExhaustedError(
          absl::StrCat("block of ", size, " bytes exceeds the quota of namespace prefix '",
                       quota_prefixes_[group], "' (", quotas_[group], " bytes)"));
    }
    if (size > memory_.capacity_bytes() || (disk_ && size > disk_->capacity_bytes())) {
      puts_rejected_.fetch_add(1, std::memory_order_relaxed);
      return absl::ResourceExhaustedError(
          absl::StrCat("block of ", size, " bytes exceeds a tier's capacity"));
    }
    const uint64_t checksum = HeaderChecksum(*payload);
    const std::string ekey = EncodeBlockKey(key);
    const AccessStamp stamp = TakeHint(ekey);

    std::optional<uint64_t> present = memory_.Checksum(ekey);
    if (!present && disk_) present = disk_->Checksum(ekey);
    if (present) return Present(*present == checksum, size);

    if (disk_ && write_through_) {
      absl::StatusOr<InsertResult> r = disk_->Put(ekey, *payload, checksum, group, stamp);
      if (!r.ok()) return r.status();
      if (*r != InsertResult::kInserted) return Present(*r == InsertResult::kPresentSame, size);
    }
    const InsertResult r = memory_.Insert(ekey, payload, checksum, group, stamp);
    if (r != InsertResult::kInserted) return Present(r == InsertResult::kPresentSame, size);
    puts_stored_.fetch_add(1, std::memory_order_relaxed);
    Demote(memory_.EvictToFit(group));
    return PutOutcome::kStored;
  }

  size_t Lookup(std::string_view ns, absl::Span<const ChainHash> chain, uint32_t part) override {
    if (chain.empty()) return 0;
    const uint64_t tick = NextTick();
    std::string ekey = EncodeBlockKey(ns, chain[0], part);
    size_t i = 0;
    for (; i < chain.size(); ++i) {
      SetEncodedChain(&ekey, chain[i]);
      const AccessStamp stamp =
          chain_aware_ ? AccessStamp{tick, static_cast<uint32_t>(i)} : AccessStamp{NextTick(), 0};
      if (memory_.Touch(ekey, stamp)) continue;
      if (disk_ && disk_->Touch(ekey, stamp)) continue;
      break;
    }
    if (i < chain.size() && chain_aware_) {
      const size_t end = std::min(chain.size(), i + kHintWindow);
      MutexLock lock(&hint_mu_);
      for (size_t j = i; j < end; ++j) {
        SetEncodedChain(&ekey, chain[j]);
        RememberLocked(ekey, {tick, static_cast<uint32_t>(j)});
      }
    }
    return i;
  }

  std::vector<absl::StatusOr<Lease>> Get(absl::Span<const BlockKey> keys) override {
    std::vector<absl::StatusOr<Lease>> out;
    out.reserve(keys.size());
    const uint64_t tick = NextTick();
    for (const BlockKey& key : keys) {
      const std::string ekey = EncodeBlockKey(key);
      if (Payload p = memory_.Get(ekey, tick)) {
        memory_hits_.fetch_add(1, std::memory_order_relaxed);
        out.push_back(Lease{std::move(p), Tier::kMemory});
        continue;
      }
      memory_misses_.fetch_add(1, std::memory_order_relaxed);
      if (!disk_) {
        out.push_back(Lease{});
        continue;
      }
      const std::optional<AccessStamp> stamp = disk_->Stamp(ekey);
      absl::StatusOr<Payload> p = disk_->Get(ekey, tick);
      if (!p.ok()) {
        out.push_back(p.status());
        continue;
      }
      if (*p == nullptr) {
        disk_misses_.fetch_add(1, std::memory_order_relaxed);
        out.push_back(Lease{});
        continue;
      }
      disk_hits_.fetch_add(1, std::memory_order_relaxed);
      // Promote: the validated copy goes into RAM.
      const int group = GroupOf(key.ns);
      const AccessStamp promoted{tick, stamp ? stamp->depth : 0};
      if (memory_.Insert(ekey, *p, HeaderChecksum(**p), group, promoted) ==
          InsertResult::kInserted) {
        promotions_.fetch_add(1, std::memory_order_relaxed);
        Demote(memory_.EvictToFit(group));
      }
      out.push_back(Lease{std::move(p).value(), Tier::kDisk});
    }
    return out;
  }

  absl::StatusOr<size_t> Delete(absl::Span<const BlockKey> keys) override {
    size_t removed = 0;
    for (const BlockKey& key : keys) {
      const std::string ekey = EncodeBlockKey(key);
      bool present = memory_.Erase(ekey);
      if (disk_) {
        absl::StatusOr<bool> d = disk_->Delete(ekey);
        if (!d.ok()) return d.status();
        present = present || *d;
      }
      if (present) ++removed;
    }
    return removed;
  }

  StoreStats Stats() const override {
    StoreStats s;
    s.memory.blocks = memory_.blocks();
    s.memory.bytes = memory_.bytes();
    s.memory.capacity_bytes = memory_.capacity_bytes();
    s.memory.hits = memory_hits_.load(std::memory_order_relaxed);
    s.memory.misses = memory_misses_.load(std::memory_order_relaxed);
    s.memory.evictions = memory_.evictions();
    if (disk_) {
      s.disk.blocks = disk_->blocks();
      s.disk.bytes = disk_->bytes();
      s.disk.capacity_bytes = disk_->capacity_bytes();
      s.disk.hits = disk_hits_.load(std::memory_order_relaxed);
      s.disk.misses = disk_misses_.load(std::memory_order_relaxed);
      s.disk.evictions = disk_->evictions();
      s.corrupt_dropped = disk_->corrupt_dropped();
      s.quota_evictions += disk_->quota_evictions();
    }
    s.puts_stored = puts_stored_.load(std::memory_order_relaxed);
    s.puts_deduplicated = puts_deduplicated_.load(std::memory_order_relaxed);
    s.puts_rejected = puts_rejected_.load(std::memory_order_relaxed);
    s.dedup_conflicts = dedup_conflicts_.load(std::memory_order_relaxed);
    s.dedup_bytes_saved = dedup_bytes_saved_.load(std::memory_order_relaxed);
    s.quota_evictions += memory_quota_evictions_.load(std::memory_order_relaxed);
    s.promotions = promotions_.load(std::memory_order_relaxed);
    s.demotions = demotions_.load(std::memory_order_relaxed);
    return s;
  }

  absl::Status Flush() override { return disk_ ? disk_->Flush() : absl::OkStatus(); }

 private:
  int GroupOf(std::string_view ns) const {
    int best = -1;
    size_t best_len = 0;
    for (size_t g = 0; g < quota_prefixes_.size(); ++g) {
      const std::string& p = quota_prefixes_[g];
      if (ns.substr(0, p.size()) == p && (best < 0 || p.size() > best_len)) {
        best = static_cast<int>(g);
        best_len = p.size();
      }
    }
    return best;
  }

  uint64_t NextTick() { return next_tick_.fetch_add(1, std::memory_order_relaxed); }

  absl::StatusOr<PutOutcome> Present(bool same, uint64_t size) {
    if (same) {
      puts_deduplicated_.fetch_add(1, std::memory_order_relaxed);
      dedup_bytes_saved_.fetch_add(size, std::memory_order_relaxed);
      return PutOutcome::kDeduplicated;
    }
    dedup_conflicts_.fetch_add(1, std::memory_order_relaxed);
    puts_rejected_.fetch_add(1, std::memory_order_relaxed);
    return absl::AlreadyExistsError(
        "block key already stored with a different checksum; the stored block is kept");
  }

  // Writes RAM victims that the disk does not hold yet to disk. With write-through every
  // block went to disk when it was stored; one the disk has evicted since was colder than
  // what the disk keeps, so it is not written again.
  void Demote(std::vector<EvictedBlock> victims) {
    for (EvictedBlock& v : victims) {
      if (v.by_quota) memory_quota_evictions_.fetch_add(1, std::memory_order_relaxed);
      if (!disk_ || write_through_ || disk_->Contains(v.key)) continue;
      absl::StatusOr<InsertResult> r = disk_->Put(v.key, *v.payload, v.checksum, v.group, v.stamp);
      if (r.ok() && *r == InsertResult::kInserted) {
        demotions_.fetch_add(1, std::memory_order_relaxed);
      }
    }
  }

  AccessStamp TakeHint(const std::string& ekey) {
    {
      MutexLock lock(&hint_mu_);
      auto it = hints_.find(ekey);
      if (it != hints_.end()) {
        const AccessStamp s = it->second.stamp;
        hints_.erase(it);
        return s;
      }
    }
    return AccessStamp{NextTick(), 0};
  }

  void RememberLocked(std::string ekey, AccessStamp stamp) ABSL_EXCLUSIVE_LOCKS_REQUIRED(hint_mu_) {
    const uint64_t gen = ++hint_gen_;
    hints_.insert_or_assign(ekey, Hint{stamp, gen});
    hint_fifo_.emplace_back(std::move(ekey), gen);
    while (hint_fifo_.size() > kMaxHints) {
      auto it = hints_.find(hint_fifo_.front().first);
      if (it != hints_.end() && it->second.gen == hint_fifo_.front().second) hints_.erase(it);
      hint_fifo_.pop_front();
    }
  }

  struct Hint {
    AccessStamp stamp;
    uint64_t gen = 0;
  };

  // Constant after construction.
  const bool write_through_;
  const bool chain_aware_;
  const std::vector<std::string> quota_prefixes_;
  const std::vector<uint64_t> quotas_;
  MemoryTier memory_;
  std::unique_ptr<DiskTier> disk_;  // null without a disk tier; set before use

  std::atomic<uint64_t> next_tick_{1};

  // Positions of keys that a Lookup missed, for the Put that usually follows.
  Mutex hint_mu_;
  absl::flat_hash_map<std::string, Hint> hints_ ABSL_GUARDED_BY(hint_mu_);
  std::deque<std::pair<std::string, uint64_t>> hint_fifo_ ABSL_GUARDED_BY(hint_mu_);
  uint64_t hint_gen_ ABSL_GUARDED_BY(hint_mu_) = 0;

  std::atomic<uint64_t> memory_hits_{0}, memory_misses_{0}, disk_hits_{0}, disk_misses_{0};
  std::atomic<uint64_t> puts_stored_{0}, puts_deduplicated_{0}, puts_rejected_{0};
  std::atomic<uint64_t> dedup_conflicts_{0}, dedup_bytes_saved_{0};
  std::atomic<uint64_t> memory_quota_evictions_{0}, promotions_{0}, demotions_{0};
};

}  // namespace

absl::StatusOr<std::unique_ptr<TieredStore>> TieredStore::Open(const TieredStoreOptions& options) {
  if (options.memory_capacity_bytes == 0) {
    return absl::InvalidArgumentError("memory_capacity_bytes must be > 0");
  }
  if (options.memory_shards < 1 || options.memory_shards > 1024) {
    return absl::InvalidArgumentError("memory_shards must be in 1..1024");
  }
  if (!options.disk_path.empty() && options.disk_capacity_bytes == 0) {
    return absl::InvalidArgumentError("disk_capacity_bytes must be > 0");
  }
  std::vector<std::string> prefixes;
  std::vector<uint64_t> quotas;
  for (const auto& [prefix, limit] : options.namespace_quota_bytes) {
    if (limit == 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("namespace quota for prefix '", prefix, "' is 0"));
    }
    prefixes.push_back(prefix);
    quotas.push_back(limit);
  }
  auto store = std::make_unique<TieredStoreImpl>(options, std::move(prefixes), std::move(quotas));
  absl::Status st = store->OpenDisk(options);
  if (!st.ok()) return st;
  return std::unique_ptr<TieredStore>(std::move(store));
}

}  // namespace kvtier::storage
