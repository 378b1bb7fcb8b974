#include "storage/memory_tier.h"

#include <algorithm>
#include <utility>

#include "absl/hash/hash.h"

namespace kvtier::storage {

MemoryTier::MemoryTier(const MemoryTierOptions& options)
    : capacity_bytes_(options.capacity_bytes), quotas_(options.group_quota_bytes) {
  const int n = std::clamp(options.shards, 1, 1024);
  shards_.reserve(n);
  for (int i = 0; i < n; ++i) shards_.push_back(std::make_unique<Shard>());
  group_bytes_ = std::make_unique<std::atomic<uint64_t>[]>(std::max<size_t>(quotas_.size(), 1));
  for (size_t i = 0; i < quotas_.size(); ++i) group_bytes_[i].store(0);
}

MemoryTier::Shard& MemoryTier::ShardFor(const std::string& key) const {
  return *shards_[absl::Hash<std::string>()(key) % shards_.size()];
}

uint64_t MemoryTier::quota_bytes(int group) const {
  if (group < 0 || static_cast<size_t>(group) >= quotas_.size()) return 0;
  return quotas_[group];
}

uint64_t MemoryTier::group_bytes(int group) const {
  if (group < 0 || static_cast<size_t>(group) >= quotas_.size()) return 0;
  return group_bytes_[group].load(std::memory_order_relaxed);
}

void MemoryTier::AddBytes(int group, uint64_t n) {
  bytes_.fetch_add(n, std::memory_order_relaxed);
  blocks_.fetch_add(1, std::memory_order_relaxed);
  if (group >= 0 && static_cast<size_t>(group) < quotas_.size()) {
    group_bytes_[group].fetch_add(n, std::memory_order_relaxed);
  }
}

void MemoryTier::SubBytes(int group, uint64_t n) {
  bytes_.fetch_sub(n, std::memory_order_relaxed);
  blocks_.fetch_sub(1, std::memory_order_relaxed);
  if (group >= 0 && static_cast<size_t>(group) < quotas_.size()) {
    group_bytes_[group].fetch_sub(n, std::memory_order_relaxed);
  }
}

bool MemoryTier::OverQuota(int group) const {
  const uint64_t q = quota_bytes(group);
  return q > 0 && group_bytes(group) > q;
}

InsertResult MemoryTier::Insert(const std::string& key, Payload payload, uint64_t checksum,
                                int group, AccessStamp stamp) {
  Shard& s = ShardFor(key);
  const uint64_t n = payload->size();
  MutexLock lock(&s.mu);
  auto [it, inserted] = s.map.try_emplace(key);
  if (!inserted) {
    return it->second.checksum == checksum ? InsertResult::kPresentSame
                                           : InsertResult::kPresentDifferent;
  }
  Entry& e = it->second;
  e.payload = std::move(payload);
  e.checksum = checksum;
  e.bytes = n;
  e.group = group;
  e.pos = {stamp.tick, stamp.depth, next_id_.fetch_add(1, std::memory_order_relaxed)};
  s.order.Add(e.pos, group, key);
  AddBytes(group, n);
  return InsertResult::kInserted;
}

Payload MemoryTier::Get(const std::string& key, uint64_t tick) {
  Shard& s = ShardFor(key);
  MutexLock lock(&s.mu);
  auto it = s.map.find(key);
  if (it == s.map.end()) return nullptr;
  Entry& e = it->second;
  if (tick > 0 && tick != e.pos.tick) {
    const EvictionPos from = e.pos;
    e.pos.tick = tick;
    s.order.Move(from, e.pos, e.group);
  }
  return e.payload;
}

bool MemoryTier::Touch(const std::string& key, AccessStamp stamp) {
  Shard& s = ShardFor(key);
  MutexLock lock(&s.mu);
  auto it = s.map.find(key);
  if (it == s.map.end()) return false;
  Entry& e = it->second;
  if (stamp.tick != e.pos.tick || stamp.depth != e.pos.depth) {
    const EvictionPos from = e.pos;
    e.pos.tick = stamp.tick;
    e.pos.depth = stamp.depth;
    s.order.Move(from, e.pos, e.group);
  }
  return true;
}

std::optional<uint64_t> MemoryTier::Checksum(const std::string& key) const {
  Shard& s = ShardFor(key);
  MutexLock lock(&s.mu);
  auto it = s.map.find(key);
  if (it == s.map.end()) return std::nullopt;
  return it->second.checksum;
}

bool MemoryTier::Erase(const std::string& key) {
  Shard& s = ShardFor(key);
  Payload doomed;  // released after the lock
  MutexLock lock(&s.mu);
  auto it = s.map.find(key);
  if (it == s.map.end()) return false;
  s.order.Remove(it->second.pos, it->second.group);
  SubBytes(it->second.group, it->second.bytes);
  doomed = std::move(it->second.payload);
  s.map.erase(it);
  return true;
}

bool MemoryTier::EvictOne(int group, EvictedBlock* out) {
  for (;;) {
    // Find the shard whose head comes first in eviction order.
    Shard* best = nullptr;
    EvictionPos best_pos;
    for (auto& shard : shards_) {
      MutexLock lock(&shard->mu);
      auto head = shard->order.Oldest(group);
      if (head && (best == nullptr || EvictFirst()(head->first, best_pos))) {
        best = shard.get();
        best_pos = head->first;
      }
    }
    if (best == nullptr) return false;
    MutexLock lock(&best->mu);
    auto head = best->order.Oldest(group);
    // Re-stamped or erased meanwhile: look again.
    if (!head || !(head->first == best_pos)) continue;
    auto it = best->map.find(*head->second);
    Entry& e = it->second;
    out->key = it->first;
    out->payload = std::move(e.payload);
    out->checksum = e.checksum;
    out->group = e.group;
    out->stamp = {e.pos.tick, e.pos.depth};
    best->order.Remove(e.pos, e.group);
    SubBytes(e.group, e.bytes);
    best->map.erase(it);
    evictions_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
}

std::vector<EvictedBlock> MemoryTier::EvictToFit(int group) {
  std::vector<EvictedBlock> victims;
  MutexLock lock(&evict_mu_);
  while (OverQuota(group)) {
    EvictedBlock v;
    if (!EvictOne(group, &v)) break;
    v.by_quota = true;
    victims.push_back(std::move(v));
  }
  while (bytes() > capacity_bytes_) {
    EvictedBlock v;
    if (!EvictOne(-1, &v)) break;
    victims.push_back(std::move(v));
  }
  return victims;
}

}  // namespace kvtier::storage
