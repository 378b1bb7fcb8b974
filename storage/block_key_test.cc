#include "storage/block_key.h"

#include <gtest/gtest.h>

#include "storage/testing.h"

namespace kvtier::storage {
namespace {

TEST(BlockKeyTest, RoundTripsEveryField) {
  const BlockKey key{"tenant/model/k4v2_g128/tp0", testing::Hash(5), 0x01020304};
  const std::string e = EncodeBlockKey(key);
  ASSERT_EQ(e.size(), EncodedKeySize(key.ns.size()));
  absl::StatusOr<BlockKey> back = DecodeBlockKey(e);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, key);
  EXPECT_EQ(EncodedKeyNamespace(e), key.ns);
}

TEST(BlockKeyTest, LengthAndPartAreBigEndian) {
  const std::string e = EncodeBlockKey("ab", testing::Hash(1), 0x0A0B0C0D);
  EXPECT_EQ(e.substr(0, 4), std::string("\0\0\0\2", 4));
  EXPECT_EQ(e.substr(4, 2), "ab");
  EXPECT_EQ(e.substr(e.size() - 4), "\x0A\x0B\x0C\x0D");
}

TEST(BlockKeyTest, NamespacePrefixesAreUnambiguous) {
  // "a" and "ab" share bytes, but never an encoded prefix.
  const std::string a = EncodeBlockKey("a", testing::Hash(1), 0);
  const std::string ab = EncodeBlockKey("ab", testing::Hash(1), 0);
  EXPECT_NE(a.substr(0, EncodeNamespace("a").size()), ab.substr(0, EncodeNamespace("a").size()));
  EXPECT_EQ(ab.rfind(EncodeNamespace("ab"), 0), 0u);
  EXPECT_NE(ab.rfind(EncodeNamespace("a"), 0), 0u);
}

TEST(BlockKeyTest, SetEncodedChainReplacesOnlyTheHash) {
  std::string e = EncodeBlockKey("ns/x", testing::Hash(1), 7);
  SetEncodedChain(&e, testing::Hash(2));
  EXPECT_EQ(e, EncodeBlockKey("ns/x", testing::Hash(2), 7));
}

TEST(BlockKeyTest, MalformedEncodingIsDataLoss) {
  std::string e = EncodeBlockKey("ns", testing::Hash(1), 0);
  EXPECT_EQ(DecodeBlockKey(e.substr(0, 3)).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(DecodeBlockKey(e.substr(0, e.size() - 1)).status().code(), absl::StatusCode::kDataLoss);
  e[3] = 9;  // namespace length no longer matches the size
  EXPECT_EQ(DecodeBlockKey(e).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(EncodedKeyNamespace(e).empty());
}

}  // namespace
}  // namespace kvtier::storage
