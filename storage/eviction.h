// The eviction order shared by the RAM and disk tiers (DESIGN.md §5).
//
// Rule. Every resident block carries a stamp (tick, depth):
//   tick  - logical time of the block's last use. One Lookup or one Get stamps every
//           block it touches with the same tick, so a chain ages as a unit. A Put uses
//           the tick and position remembered from the Lookup that missed the key (the
//           usual "look up, then put what missed" flow), else a fresh tick.
//   depth - the block's 0-based position in the chain of the last Lookup that touched it
//           (or, for a Put, of the Lookup that missed it; 0 when never seen in a chain).
// The victim is the block with the smallest tick (least recently used); among blocks of
// equal tick, the one with the greatest depth (the tail of the chain: a block is useless
// once its parent is gone, so parents outlive their children); then the older insertion.
// With a namespace quota, the same order restricted to that quota group's blocks.
//
//   EvictionIndex index;
//   index.Add({tick, depth, id}, group, key);
//   if (auto victim = index.Oldest(/*group=*/-1)) { ... index.Remove(victim->first, group); }
//
// Thread safety: EvictionIndex is not thread-safe; its owner serializes access.
#ifndef KVTIER_STORAGE_EVICTION_H_
#define KVTIER_STORAGE_EVICTION_H_

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>

#include "absl/container/flat_hash_map.h"

namespace kvtier::storage {

// When a block was last used and where it sits in its chain. See the rule above.
struct AccessStamp {
  uint64_t tick = 0;
  uint32_t depth = 0;
};

// Result of inserting a block into a tier.
enum class InsertResult : uint8_t {
  kInserted = 0,          // new block
  kPresentSame = 1,       // key present with the same checksum: nothing changed
  kPresentDifferent = 2,  // key present with a different checksum: nothing changed
};

// Position of one block in the eviction order.
struct EvictionPos {
  uint64_t tick = 0;
  uint32_t depth = 0;
  uint64_t id = 0;  // unique per insertion; breaks ties (older first)
  friend bool operator==(const EvictionPos&, const EvictionPos&) = default;
};

// Strict weak order: evicted first compares smallest.
struct EvictFirst {
  bool operator()(const EvictionPos& a, const EvictionPos& b) const {
    if (a.tick != b.tick) return a.tick < b.tick;
    if (a.depth != b.depth) return a.depth > b.depth;
    return a.id < b.id;
  }
};

// Ordered set of resident blocks, overall and per quota group (group -1: no quota).
class EvictionIndex {
 public:
  void Add(const EvictionPos& pos, int group, const std::string& key) {
    auto it = all_.emplace(pos, key).first;
    if (group >= 0) by_group_[group].emplace(pos, &it->second);
  }
  void Remove(const EvictionPos& pos, int group) {
    all_.erase(pos);
    if (group >= 0) {
      auto g = by_group_.find(group);
      if (g != by_group_.end()) {
        g->second.erase(pos);
        if (g->second.empty()) by_group_.erase(g);
      }
    }
  }
  // Re-stamps the entry at `from` to `to` (same group), reusing its tree nodes and key
  // string: no allocation, unlike Remove + Add. Every Lookup and Get re-stamps each block
  // it touches, so this is on the hot path. No-op when `from` is not present.
  void Move(const EvictionPos& from, const EvictionPos& to, int group) {
    auto node = all_.extract(from);
    if (node.empty()) return;
    node.key() = to;
    const std::string* key = &node.mapped();  // the node (and so the string) stays put
    all_.insert(std::move(node));
    if (group < 0) return;
    auto g = by_group_.find(group);
    if (g == by_group_.end()) return;
    auto gnode = g->second.extract(from);
    if (gnode.empty()) {
      g->second.emplace(to, key);
      return;
    }
    gnode.key() = to;
    g->second.insert(std::move(gnode));
  }
  // The next victim overall (group < 0) or within a quota group, or nullopt when empty.
  // The key pointer stays valid until the entry is removed.
  std::optional<std::pair<EvictionPos, const std::string*>> Oldest(int group) const {
    if (group < 0) {
      if (all_.empty()) return std::nullopt;
      return std::make_pair(all_.begin()->first, &all_.begin()->second);
    }
    auto g = by_group_.find(group);
    if (g == by_group_.end() || g->second.empty()) return std::nullopt;
    return std::make_pair(g->second.begin()->first, g->second.begin()->second);
  }
  size_t size() const { return all_.size(); }

 private:
  std::map<EvictionPos, std::string, EvictFirst> all_;
  absl::flat_hash_map<int, std::map<EvictionPos, const std::string*, EvictFirst>> by_group_;
};

}  // namespace kvtier::storage

#endif  // KVTIER_STORAGE_EVICTION_H_
