#include "service/validation.h"

#include <gtest/gtest.h>

namespace kvtier::service {
namespace {

TEST(ValidationTest, NamespaceSyntax) {
  EXPECT_TRUE(ValidateNamespace("tenantA/llama-3.1:8b/k4v2_g128/tp0").ok());
  EXPECT_EQ(ValidateNamespace("").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateNamespace(std::string(257, 'a')).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ValidateNamespace(std::string(256, 'a')).ok());
  EXPECT_EQ(ValidateNamespace("a b").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateNamespace("a/../b").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateNamespace(std::string("a\0b", 3)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateNamespace("caf\xc3\xa9").code(), absl::StatusCode::kInvalidArgument);
}

TEST(ValidationTest, ChainLengthAndHashSize) {
  google::protobuf::RepeatedPtrField<std::string> chain;
  EXPECT_EQ(ParseChain(chain, 4).status().code(), absl::StatusCode::kInvalidArgument);
  for (int i = 0; i < 4; ++i) *chain.Add() = std::string(32, static_cast<char>('a' + i));
  auto ok = ParseChain(chain, 4);
  ASSERT_TRUE(ok.ok()) << ok.status();
  ASSERT_EQ(ok->size(), 4u);
  EXPECT_EQ((*ok)[3][0], 'd');
  EXPECT_EQ(ParseChain(chain, 3).status().code(), absl::StatusCode::kInvalidArgument);
  *chain.Add() = std::string(31, 'x');
  auto short_hash = ParseChain(chain, 10);
  ASSERT_EQ(short_hash.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(short_hash.status().message().find("chain_hashes[4]"), std::string::npos);
}

TEST(ValidationTest, ByteSizes) {
  EXPECT_EQ(*ParseByteSize("4GiB"), uint64_t{4} << 30);
  EXPECT_EQ(*ParseByteSize("64GiB"), uint64_t{64} << 30);
  EXPECT_EQ(*ParseByteSize("8MiB"), uint64_t{8} << 20);
  EXPECT_EQ(*ParseByteSize("512"), 512u);
  EXPECT_EQ(*ParseByteSize("100B"), 100u);
  EXPECT_EQ(*ParseByteSize("1TiB"), uint64_t{1} << 40);
  EXPECT_EQ(*ParseByteSize("1.5KiB"), 1536u);
  EXPECT_EQ(ParseByteSize("lots").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseByteSize("-1GiB").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseByteSize("99999999999TiB").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ValidationTest, Quotas) {
  auto q = ParseQuotas("tenantA/=100GiB, tenantB/=1TiB");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(q->at("tenantA/"), uint64_t{100} << 30);
  EXPECT_EQ(q->at("tenantB/"), uint64_t{1} << 40);
  EXPECT_TRUE(ParseQuotas("")->empty());
  EXPECT_EQ(ParseQuotas("tenantA/").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseQuotas("=5GiB").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EvenChunkBytesTest, FewestChunksOfEqualSize) {
  constexpr size_t kMiB = size_t{1} << 20;
  EXPECT_EQ(EvenChunkBytes(100, 4 * kMiB), 100u);           // one chunk
  EXPECT_EQ(EvenChunkBytes(4 * kMiB, 4 * kMiB), 4 * kMiB);  // exactly one
  // 4 MiB + 960 bytes: two halves, not 4 MiB and 960 bytes.
  EXPECT_EQ(EvenChunkBytes(4 * kMiB + 960, 4 * kMiB), 2 * kMiB + 480);
  // 4,183,360 bytes in chunks of at most 1 MiB: 4 chunks of 1,045,840.
  EXPECT_EQ(EvenChunkBytes(4183360, kMiB), 1045840u);
  EXPECT_EQ(EvenChunkBytes(7, 2), 2u);  // 2 + 2 + 2 + 1
  EXPECT_EQ(EvenChunkBytes(0, kMiB), 1u);
  EXPECT_EQ(EvenChunkBytes(5, 0), 1u);
  for (size_t n : {size_t{1}, size_t{4095}, 3 * kMiB + 1, 16 * kMiB + 7}) {
    const size_t c = EvenChunkBytes(n, kMiB);
    EXPECT_LE(c, kMiB) << n;
    EXPECT_EQ((n + c - 1) / c, (n + kMiB - 1) / kMiB) << n;  // no more chunks than needed
  }
}

}  // namespace
}  // namespace kvtier::service
