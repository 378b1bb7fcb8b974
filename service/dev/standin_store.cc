// TEMPORARY dev scaffolding: an in-memory TieredStore used only until the storage branch's
// real implementation lands. Built only when no `kvtier_storage` target exists. Delete it
// once storage/ provides TieredStore::Open.
#include <map>

#include "absl/synchronization/mutex.h"
#include "storage/tiered_store.h"

namespace kvtier::storage {
namespace {

class StandinStore final : public TieredStore {
 public:
  explicit StandinStore(const TieredStoreOptions& o) : o_(o) {}
  absl::StatusOr<PutOutcome> Put(const BlockKey& key, Payload payload) override {
    auto v = kernels::ValidatePayload(*payload);
    if (!v.ok()) return v.status();
    absl::MutexLock l(&mu_);
    auto it = map_.find(K(key));
    if (it != map_.end()) {
      stats_.puts_deduplicated++;
      stats_.dedup_bytes_saved += payload->size();
      return PutOutcome::kDeduplicated;
    }
    stats_.memory.blocks++;
    stats_.memory.bytes += payload->size();
    stats_.puts_stored++;
    map_[K(key)] = std::move(payload);
    return PutOutcome::kStored;
  }
  size_t Lookup(std::string_view ns, absl::Span<const ChainHash> chain, uint32_t part) override {
    absl::MutexLock l(&mu_);
    size_t n = 0;
    for (const auto& h : chain) {
      BlockKey k{std::string(ns), h, part};
      if (!map_.count(K(k))) break;
      ++n;
    }
    return n;
  }
  std::vector<absl::StatusOr<Lease>> Get(absl::Span<const BlockKey> keys) override {
    absl::MutexLock l(&mu_);
    std::vector<absl::StatusOr<Lease>> out;
    for (const auto& k : keys) {
      auto it = map_.find(K(k));
      if (it == map_.end()) {
        out.push_back(Lease{});
      } else {
        out.push_back(Lease{it->second, Tier::kMemory});
      }
    }
    return out;
  }
  absl::StatusOr<size_t> Delete(absl::Span<const BlockKey> keys) override {
    absl::MutexLock l(&mu_);
    size_t n = 0;
    for (const auto& k : keys) {
      auto it = map_.find(K(k));
      if (it != map_.end()) {
        stats_.memory.blocks--;
        stats_.memory.bytes -= it->second->size();
        map_.erase(it);
        ++n;
      }
    }
    return n;
  }
  StoreStats Stats() const override {
    absl::MutexLock l(&mu_);
    StoreStats s = stats_;
    s.memory.capacity_bytes = o_.memory_capacity_bytes;
    return s;
  }
  absl::Status Flush() override { return absl::OkStatus(); }

 private:
  static std::string K(const BlockKey& k) {
    std::string s = k.ns;
    s.push_back('\0');
    s.append(reinterpret_cast<const char*>(k.chain.data()), k.chain.size());
    s.append(reinterpret_cast<const char*>(&k.part), 4);
    return s;
  }
  TieredStoreOptions o_;
  mutable absl::Mutex mu_;
  std::map<std::string, Payload> map_;
  StoreStats stats_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TieredStore>> TieredStore::Open(const TieredStoreOptions& o) {
  return std::unique_ptr<TieredStore>(new StandinStore(o));
}

}  // namespace kvtier::storage
