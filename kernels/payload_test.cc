#include "kernels/payload.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>

namespace kvtier::kernels {
namespace {

std::vector<uint8_t> RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) b = static_cast<uint8_t>(rng());
  return v;
}

std::vector<uint8_t> MakePayload(const PayloadHeader& h, uint32_t seed = 1) {
  std::vector<std::vector<uint8_t>> layers;
  std::vector<absl::Span<const uint8_t>> spans;
  for (int i = 0; i < h.num_layers; ++i)
    layers.push_back(RandomBytes(LayerSectionBytes(h), seed + i));
  for (auto& l : layers) spans.push_back(l);
  auto p = BuildPayload(h, spans);
  EXPECT_TRUE(p.ok()) << p.status();
  return *p;
}

TEST(PayloadTest, RoundTripsTilesBlock) {
  PayloadHeader h = MakeTilesHeader(Preset::kK4V2G128, 128, 3, 8, kFlagSink);
  auto bytes = MakePayload(h);
  ASSERT_EQ(bytes.size(), 64u + 3u * 8u * 13824u);
  auto v = ValidatePayload(bytes);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->header.preset, Preset::kK4V2G128);
  EXPECT_EQ(v->header.num_layers, 3);
  EXPECT_EQ(v->header.num_kv_heads, 8);
  EXPECT_EQ(v->header.token_count, 128u);
  EXPECT_EQ(v->header.flags, kFlagSink);
  EXPECT_EQ(v->layer(2).size(), 8u * 13824u);
  EXPECT_EQ(v->layer(1).data(), bytes.data() + 64 + 8 * 13824);
}

TEST(PayloadTest, RoundTripsFp16TailBlock) {
  PayloadHeader h = MakeFp16Header(Preset::kK4V2G64, 64, 2, 4, 17, kFlagTail);
  auto bytes = MakePayload(h);
  ASSERT_EQ(bytes.size(), 64u + 2u * 4u * 2u * 17u * 64u * 2u);
  auto v = ValidatePayload(bytes);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->header.encoding, BlockEncoding::kFp16);
  EXPECT_EQ(v->header.token_count, 17u);
}

TEST(PayloadTest, RejectsTruncatedAndOversized) {
  auto bytes = MakePayload(MakeTilesHeader(Preset::kK4V4G64, 64, 1, 2));
  auto shorter = bytes;
  shorter.pop_back();
  EXPECT_EQ(ValidatePayload(shorter).status().code(), absl::StatusCode::kInvalidArgument);
  auto longer = bytes;
  longer.push_back(0);
  EXPECT_EQ(ValidatePayload(longer).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidatePayload(absl::MakeConstSpan(bytes).first(10)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidatePayload({}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PayloadTest, BodyBitFlipIsDataLoss) {
  auto bytes = MakePayload(MakeTilesHeader(Preset::kK4V2G128, 128, 2, 1));
  bytes[64 + 1000] ^= 0x10;
  EXPECT_EQ(ValidatePayload(bytes).status().code(), absl::StatusCode::kDataLoss);
}

// IncrementalValidator agrees with ValidatePayload, whatever the pieces the bytes arrive in,
// on good payloads, flipped body bits, a corrupt header and a wrong size; one validator
// serves several payloads through Reset.
TEST(PayloadTest, IncrementalValidatorAgreesWithValidatePayload) {
  const auto good = MakePayload(MakeTilesHeader(Preset::kK4V2G128, 128, 3, 2));
  auto flipped = good;
  flipped[64 + 20000] ^= 0x01;
  auto bad_header = good;
  bad_header[20] ^= 0x01;
  auto short_one = good;
  short_one.pop_back();
  IncrementalValidator v;
  const std::vector<uint8_t>* const cases[] = {&good, &flipped, &bad_header, &short_one, &good};
  for (const std::vector<uint8_t>* bytes : cases) {
    const absl::Status want = ValidatePayload(*bytes).status();
    for (size_t piece : {size_t{1}, size_t{63}, size_t{64}, size_t{4097}, bytes->size()}) {
      v.Reset();
      for (size_t end = 0; end < bytes->size(); end += piece) {
        v.Update(absl::MakeConstSpan(bytes->data(), std::min(bytes->size(), end + piece)));
      }
      const absl::Status got = v.Finish(*bytes);
      EXPECT_EQ(got.code(), want.code()) << piece << ": " << got;
      EXPECT_EQ(got.message(), want.message()) << piece;
    }
    v.Reset();  // nothing fed: Finish hashes the whole payload itself
    EXPECT_EQ(v.Finish(*bytes).code(), want.code());
    IncrementalValidator fresh;  // no Reset before the first payload
    fresh.Update(absl::MakeConstSpan(bytes->data(), bytes->size() / 2));
    EXPECT_EQ(fresh.Finish(*bytes).code(), want.code());
  }
  EXPECT_TRUE(ValidatePayload(good).ok());
  EXPECT_EQ(ValidatePayload(flipped).status().code(), absl::StatusCode::kDataLoss);
}

TEST(PayloadTest, HeaderFieldCorruptionIsInvalidArgument) {
  const auto good = MakePayload(MakeTilesHeader(Preset::kK4V2G128, 128, 2, 2));
  // Every single-bit change of the header is rejected: a structurally impossible header as
  // kInvalidArgument, a plausible one (e.g. a flipped sink flag) by the header checksum.
  int data_loss = 0;
  for (size_t i = 0; i < kPayloadHeaderBytes; ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      auto bad = good;
      bad[i] ^= static_cast<uint8_t>(1u << bit);
      const auto code = ValidatePayload(bad).status().code();
      EXPECT_TRUE(code == absl::StatusCode::kInvalidArgument || code == absl::StatusCode::kDataLoss)
          << "byte " << i << " bit " << bit;
      data_loss += code == absl::StatusCode::kDataLoss;
    }
  }
  EXPECT_GT(data_loss, 0);
  auto flag = good;
  flag[10] ^= kFlagSink;  // sink flag on a compressed block: well-formed, wrong checksum
  EXPECT_EQ(ValidatePayload(flag).status().code(), absl::StatusCode::kDataLoss);
}

TEST(PayloadTest, RejectsInconsistentShapes) {
  PayloadHeader h = MakeTilesHeader(Preset::kK4V2G128, 128, 1, 1);
  std::vector<uint8_t> sec(LayerSectionBytes(h));
  std::vector<absl::Span<const uint8_t>> two = {sec, sec};
  EXPECT_EQ(BuildPayload(h, two).status().code(), absl::StatusCode::kInvalidArgument);
  std::vector<uint8_t> small(10);
  std::vector<absl::Span<const uint8_t>> one = {small};
  EXPECT_EQ(BuildPayload(h, one).status().code(), absl::StatusCode::kInvalidArgument);
  PayloadHeader bad_dim = MakeTilesHeader(Preset::kK4V2G128, 96, 1, 1);
  std::vector<absl::Span<const uint8_t>> none = {sec};
  EXPECT_EQ(BuildPayload(bad_dim, none).status().code(), absl::StatusCode::kInvalidArgument);
  // A partial FP16 block must carry the tail flag.
  PayloadHeader tail = MakeFp16Header(Preset::kK4V2G128, 128, 1, 1, 5, 0);
  std::vector<uint8_t> tsec(LayerSectionBytes(tail));
  std::vector<absl::Span<const uint8_t>> t = {tsec};
  EXPECT_EQ(BuildPayload(tail, t).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PayloadTest, RandomMutationsNeverPassAndNeverCrash) {
  const auto good = MakePayload(MakeTilesHeader(Preset::kK4V2G64, 128, 2, 2));
  std::mt19937 rng(7);
  for (int round = 0; round < 2000; ++round) {
    auto bad = good;
    const int edits = 1 + rng() % 4;
    for (int e = 0; e < edits; ++e)
      bad[rng() % bad.size()] ^= static_cast<uint8_t>(1 + rng() % 255);
    if (rng() % 4 == 0) bad.resize(rng() % (good.size() + 100));
    if (bad == good) continue;
    auto s = ValidatePayload(bad).status();
    EXPECT_TRUE(s.code() == absl::StatusCode::kInvalidArgument ||
                s.code() == absl::StatusCode::kDataLoss)
        << "round " << round << ": " << s;
  }
}

TEST(ChainHashTest, MatchesSha256OfParts) {
  // Expected values computed independently: printf 'kvtier-chain-v1' | sha256sum, and
  // hashlib.sha256(sha256(b'kvtier-chain-v1ns') + struct.pack('<3i', 1, 2, 3)).
  EXPECT_EQ(ChainHashHex(ChainSeed("")),
            "04977d73247172fae3aea9e1e170ee19f640fe0b54aa7631373bb52a7a6df6be");
  const std::vector<int32_t> first = {1, 2, 3};
  EXPECT_EQ(ChainHashHex(ChainNext(ChainSeed("ns"), first)),
            "56482b7e22a4032abc69fd3ea7406d35a7121a1e1c14acc47ee1c9c208ad0e62");
  const std::vector<int32_t> tokens = {1, 2, 3, 4, 5, 6, 7};
  auto hs = ChainHashes("ns", tokens, 3);
  ASSERT_EQ(hs.size(), 2u);
  EXPECT_EQ(hs[0], ChainNext(ChainSeed("ns"), absl::MakeConstSpan(tokens).first(3)));
  EXPECT_EQ(hs[1], ChainNext(hs[0], absl::MakeConstSpan(tokens).subspan(3, 3)));
  EXPECT_EQ(ChainHashes("ns", tokens, 3, /*include_partial=*/true).size(), 3u);
  EXPECT_NE(ChainHashes("other", tokens, 3)[0], hs[0]);
}

}  // namespace
}  // namespace kvtier::kernels
