// EvictionIndex: the order of victims overall and per quota group, and Move (the
// allocation-free re-stamp every Lookup and Get does) against Remove + Add.
#include "storage/eviction.h"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace kvtier::storage {
namespace {

TEST(EvictionIndexTest, VictimsComeOldestTickFirstThenDeepestThenOldestInsertion) {
  EvictionIndex index;
  index.Add({5, 0, 1}, -1, "a");
  index.Add({3, 1, 2}, -1, "b");
  index.Add({3, 4, 3}, -1, "c");
  index.Add({3, 4, 4}, -1, "d");
  std::vector<std::string> order;
  while (auto v = index.Oldest(-1)) {
    order.push_back(*v->second);
    index.Remove(v->first, -1);
  }
  EXPECT_EQ(order, (std::vector<std::string>{"c", "d", "b", "a"}));
}

TEST(EvictionIndexTest, MoveRestampsOverallAndInTheGroupAndKeepsTheKey) {
  EvictionIndex index;
  index.Add({1, 0, 1}, 7, "old");
  index.Add({2, 0, 2}, 7, "mid");
  index.Add({3, 0, 3}, -1, "free");
  ASSERT_EQ(*index.Oldest(-1)->second, "old");
  ASSERT_EQ(*index.Oldest(7)->second, "old");
  index.Move({1, 0, 1}, {9, 2, 1}, 7);  // "old" was just used
  EXPECT_EQ(index.size(), 3u);
  EXPECT_EQ(*index.Oldest(-1)->second, "mid");
  EXPECT_EQ(*index.Oldest(7)->second, "mid");
  index.Remove({2, 0, 2}, 7);
  auto v = index.Oldest(7);
  ASSERT_TRUE(v.has_value());
  EXPECT_EQ(*v->second, "old");
  EXPECT_EQ(v->first, (EvictionPos{9, 2, 1}));
  // Moving a position that is not there changes nothing.
  index.Move({42, 0, 42}, {0, 0, 42}, 7);
  EXPECT_EQ(index.size(), 2u);
  EXPECT_EQ(*index.Oldest(-1)->second, "free");
  index.Remove({9, 2, 1}, 7);
  EXPECT_FALSE(index.Oldest(7).has_value());
  EXPECT_EQ(*index.Oldest(-1)->second, "free");
}

TEST(EvictionIndexTest, MoveGivesTheSameOrderAsRemovePlusAddOnRandomOperations) {
  // Two indexes, one re-stamped with Move, one with Remove + Add: the victim sequences of
  // each group, then of what is left overall, must be the same.
  std::mt19937_64 rng(20261129);
  EvictionIndex moved, readded;
  struct Block {
    EvictionPos pos;
    int group;
    std::string key;
  };
  std::vector<Block> blocks;
  for (uint64_t id = 1; id <= 400; ++id) {
    Block b{{rng() % 50, static_cast<uint32_t>(rng() % 8), id},
            static_cast<int>(rng() % 4) - 1,
            "k" + std::to_string(id)};
    moved.Add(b.pos, b.group, b.key);
    readded.Add(b.pos, b.group, b.key);
    blocks.push_back(b);
  }
  for (int step = 0; step < 2000; ++step) {
    Block& b = blocks[rng() % blocks.size()];
    const EvictionPos to{50 + static_cast<uint64_t>(step / 10), static_cast<uint32_t>(rng() % 8),
                         b.pos.id};
    moved.Move(b.pos, to, b.group);
    readded.Remove(b.pos, b.group);
    readded.Add(to, b.group, b.key);
    b.pos = to;
  }
  for (int group : {0, 1, 2, -1}) {
    while (true) {
      auto a = moved.Oldest(group);
      auto r = readded.Oldest(group);
      ASSERT_EQ(a.has_value(), r.has_value()) << "group " << group;
      if (!a) break;
      ASSERT_EQ(a->first, r->first) << "group " << group;
      ASSERT_EQ(*a->second, *r->second) << "group " << group;
      // Remove from both (in its own group, so the overall order stays consistent).
      int g = group;
      if (group < 0) {
        for (const Block& b : blocks) {
          if (b.pos == a->first) g = b.group;
        }
      }
      moved.Remove(a->first, g);
      readded.Remove(r->first, g);
    }
  }
  EXPECT_EQ(moved.size(), 0u);
  EXPECT_EQ(readded.size(), 0u);
}

}  // namespace
}  // namespace kvtier::storage
