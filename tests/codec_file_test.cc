// The codec tools' file formats: the .npy reader/writer, the codec container file
// (tools/codec_file.h), and the payload validator's wrong-preset / wrong-count cases.
#include "tools/codec_file.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/sequence.h"
#include "kernels/cpu/synth.h"
#include "tools/codec_npy.h"

namespace kvtier::tools {
namespace {

using kernels::PayloadHeader;
using kernels::Preset;

std::vector<uint8_t> RawNpy(const std::string& header_dict, size_t data_bytes, int major = 1) {
  std::string h = header_dict;
  const size_t prefix = major == 1 ? 10 : 12;
  h.append((64 - (prefix + h.size() + 1) % 64) % 64, ' ');
  h += '\n';
  std::vector<uint8_t> out = {0x93, 'N', 'U', 'M', 'P', 'Y', static_cast<uint8_t>(major), 0};
  out.push_back(static_cast<uint8_t>(h.size()));
  out.push_back(static_cast<uint8_t>(h.size() >> 8));
  if (major != 1) {
    out.push_back(0);
    out.push_back(0);
  }
  out.insert(out.end(), h.begin(), h.end());
  out.resize(out.size() + data_bytes, 0x3c);  // 0x3c3c as fp16 = 1.0586
  return out;
}

TEST(NpyTest, RoundTripsBothDtypesAndRanks) {
  const std::vector<float> data = {1.0f, -2.5f, 0.1f, 65504.0f, 3e-8f, 0.0f};
  for (NpyDtype dtype : {NpyDtype::kFloat16, NpyDtype::kFloat32}) {
    for (std::vector<int64_t> shape : {std::vector<int64_t>{6}, {2, 3}, {1, 2, 3}}) {
      const auto bytes = SerializeNpy(shape, data.data(), dtype);
      EXPECT_EQ((bytes.size() - 6 * (dtype == NpyDtype::kFloat16 ? 2 : 4)) % 64, 0u);
      auto a = ParseNpy(bytes, "x.npy");
      ASSERT_TRUE(a.ok()) << a.status();
      EXPECT_EQ(a->dtype, dtype);
      EXPECT_EQ(a->shape, shape);
      if (dtype == NpyDtype::kFloat32) {
        EXPECT_EQ(a->data, data);
      } else {
        EXPECT_EQ(a->data[0], 1.0f);
        EXPECT_EQ(a->data[2], 0.0999755859375f);  // fp16 rounding
        EXPECT_EQ(a->data[3], 65504.0f);
      }
    }
  }
  EXPECT_EQ(ParseNpy(SerializeNpy({2, 3}, data.data(), NpyDtype::kFloat32), "x")->ShapeString(),
            "(2, 3)");
}

TEST(NpyTest, ReadsFormatVersion2AndScalarishShapes) {
  auto v2 =
      ParseNpy(RawNpy("{'descr': '<f2', 'fortran_order': False, 'shape': (4,), }", 8, 2), "v2");
  ASSERT_TRUE(v2.ok()) << v2.status();
  EXPECT_EQ(v2->shape, std::vector<int64_t>{4});
  // Key order is free in the dict.
  auto reordered =
      ParseNpy(RawNpy("{'shape': (2, 2), 'fortran_order': False, 'descr': '<f4'}", 16), "r");
  ASSERT_TRUE(reordered.ok()) << reordered.status();
  EXPECT_EQ(reordered->shape, (std::vector<int64_t>{2, 2}));
}

TEST(NpyTest, RejectsBadFilesWithClearErrors) {
  auto code = [](const std::vector<uint8_t>& b) { return ParseNpy(b, "f.npy").status().code(); };
  auto msg = [](const std::vector<uint8_t>& b) {
    return std::string(ParseNpy(b, "f.npy").status().message());
  };
  const std::string ok = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  EXPECT_TRUE(ParseNpy(RawNpy(ok, 24), "f").ok());
  EXPECT_EQ(code(RawNpy(ok, 23)), absl::StatusCode::kInvalidArgument);  // truncated data
  EXPECT_EQ(code(RawNpy(ok, 25)), absl::StatusCode::kInvalidArgument);  // trailing bytes
  const auto f8 = RawNpy("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 3), }", 48);
  EXPECT_EQ(code(f8), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(msg(f8).find("unsupported dtype '<f8'"), std::string::npos) << msg(f8);
  const auto big_endian = RawNpy("{'descr': '>f4', 'fortran_order': False, 'shape': (2, 3), }", 24);
  EXPECT_NE(msg(big_endian).find("unsupported dtype '>f4'"), std::string::npos);
  const auto fortran = RawNpy("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24);
  EXPECT_NE(msg(fortran).find("Fortran"), std::string::npos);
  EXPECT_EQ(code(RawNpy("{'descr': '<f4', 'fortran_order': False}", 0)),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code(RawNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (2, x), }", 8)),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(
      code(RawNpy("{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999,), }", 8)),
      absl::StatusCode::kInvalidArgument);
  std::vector<uint8_t> bad_magic = RawNpy(ok, 24);
  bad_magic[1] = 'X';
  EXPECT_NE(msg(bad_magic).find("magic"), std::string::npos);
  std::vector<uint8_t> bad_version = RawNpy(ok, 24);
  bad_version[6] = 9;
  EXPECT_EQ(code(bad_version), absl::StatusCode::kInvalidArgument);
  std::vector<uint8_t> long_header = RawNpy(ok, 0);
  long_header[8] = 0xff;
  long_header[9] = 0xff;
  EXPECT_EQ(code(long_header), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({}), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ReadNpy("/nonexistent/dir/x.npy").status().code(), absl::StatusCode::kNotFound);
  // Every truncation of a valid file is rejected, never crashes.
  const auto good = RawNpy(ok, 24);
  for (size_t n = 0; n < good.size(); ++n) {
    EXPECT_EQ(ParseNpy(absl::MakeConstSpan(good).first(n), "t").status().code(),
              absl::StatusCode::kInvalidArgument)
        << n;
  }
}

class KvFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto kv = kernels::cpu::GenerateSynthKv({.tokens = 300,
                                             .num_kv_heads = 2,
                                             .num_q_heads = 2,
                                             .head_dim = 64,
                                             .num_queries = 1,
                                             .seed = 2});
    ASSERT_TRUE(kv.ok());
    kernels::cpu::SequenceOptions opt;
    auto p = kernels::cpu::EncodeSequence(opt, 64, 2, 300, kv->k.data(), kv->v.data());
    ASSERT_TRUE(p.ok());
    payloads_ = *p;
    info_ = {opt.preset, 1, 64, 2, 300};
    bytes_ = SerializeKvFile(info_, payloads_);
  }
  absl::StatusCode Code(const std::vector<uint8_t>& b) { return ParseKvFile(b).status().code(); }

  std::vector<std::vector<uint8_t>> payloads_;
  KvFileInfo info_;
  std::vector<uint8_t> bytes_;
};

TEST_F(KvFileTest, RoundTrips) {
  auto f = ParseKvFile(bytes_);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->info.preset, Preset::kK4V2G128);
  EXPECT_EQ(f->info.tokens, 300);
  EXPECT_EQ(f->info.sink_blocks, 1);
  ASSERT_EQ(f->blocks.size(), 3u);
  EXPECT_EQ(f->blocks[2].header.token_count, 44u);
  EXPECT_EQ(bytes_.size(), kKvFileHeaderBytes + 3 * 8 + payloads_[0].size() + payloads_[1].size() +
                               payloads_[2].size());
}

TEST_F(KvFileTest, RejectsCorruptionTruncationAndInconsistency) {
  auto b = bytes_;
  b[0] ^= 1;  // magic
  EXPECT_EQ(Code(b), absl::StatusCode::kInvalidArgument);
  b = bytes_;
  b[17] ^= 1;  // token count: header checksum
  EXPECT_EQ(Code(b), absl::StatusCode::kDataLoss);
  b = bytes_;
  b[bytes_.size() - 100] ^= 0x20;  // inside the last payload's body
  EXPECT_EQ(Code(b), absl::StatusCode::kDataLoss);
  for (size_t n : {size_t{0}, size_t{31}, size_t{40}, bytes_.size() - 1}) {
    EXPECT_EQ(Code(std::vector<uint8_t>(bytes_.begin(), bytes_.begin() + n)),
              absl::StatusCode::kInvalidArgument)
        << n;
  }
  b = bytes_;
  b.push_back(0);
  EXPECT_EQ(Code(b), absl::StatusCode::kInvalidArgument);
  // Header claims another preset than the payloads (with a valid header checksum).
  KvFileInfo other = info_;
  other.preset = Preset::kK4V4G128;
  EXPECT_EQ(Code(SerializeKvFile(other, payloads_)), absl::StatusCode::kInvalidArgument);
  other = info_;
  other.kv_heads = 3;
  EXPECT_EQ(Code(SerializeKvFile(other, payloads_)), absl::StatusCode::kInvalidArgument);
  // Token count that does not match the blocks.
  other = info_;
  other.tokens = 290;
  EXPECT_EQ(Code(SerializeKvFile(other, payloads_)), absl::StatusCode::kInvalidArgument);
  // Wrong block count, and a partial block in the middle.
  std::vector<std::vector<uint8_t>> two = {payloads_[0], payloads_[1]};
  EXPECT_EQ(Code(SerializeKvFile(info_, two)), absl::StatusCode::kInvalidArgument);
  std::vector<std::vector<uint8_t>> swapped = {payloads_[0], payloads_[2], payloads_[1]};
  EXPECT_EQ(Code(SerializeKvFile(info_, swapped)), absl::StatusCode::kInvalidArgument);
  // Random mutations never pass unnoticed and never crash.
  std::mt19937 rng(5);
  for (int i = 0; i < 300; ++i) {
    b = bytes_;
    b[rng() % b.size()] ^= static_cast<uint8_t>(1 + rng() % 255);
    const auto c = Code(b);
    EXPECT_TRUE(c == absl::StatusCode::kInvalidArgument || c == absl::StatusCode::kDataLoss) << i;
  }
}

// Payload validator (kernels/payload.h): a header rewritten with a consistent header checksum
// but a wrong preset or wrong counts is kInvalidArgument (structural), not kDataLoss.
TEST(ValidatorTest, WrongPresetAndWrongCountsAreInvalidArgument) {
  auto kv = kernels::cpu::GenerateSynthKv({.tokens = 128,
                                           .num_kv_heads = 2,
                                           .num_q_heads = 2,
                                           .head_dim = 128,
                                           .num_queries = 1,
                                           .seed = 4});
  ASSERT_TRUE(kv.ok());
  kernels::cpu::SequenceOptions opt;
  opt.sink_blocks = 0;
  auto p = kernels::cpu::EncodeSequence(opt, 128, 2, 128, kv->k.data(), kv->v.data());
  ASSERT_TRUE(p.ok());
  const std::vector<uint8_t> good = (*p)[0];
  auto h = kernels::ParseHeader(good);
  ASSERT_TRUE(h.ok());
  auto rewrite = [&](PayloadHeader hdr) {
    std::vector<uint8_t> b = good;
    kernels::EncodeHeader(hdr, b.data());  // recomputes the header checksum
    return kernels::ValidatePayload(b).status().code();
  };
  EXPECT_EQ(rewrite(*h), absl::StatusCode::kOk);
  PayloadHeader x = *h;
  x.preset = Preset::kK4V4G128;  // same G, different record size
  EXPECT_EQ(rewrite(x), absl::StatusCode::kInvalidArgument);
  x = *h;
  x.preset = Preset::kK4V2G64;  // different G
  EXPECT_EQ(rewrite(x), absl::StatusCode::kInvalidArgument);
  x = *h;
  x.preset = static_cast<Preset>(9);
  EXPECT_EQ(rewrite(x), absl::StatusCode::kInvalidArgument);
  x = *h;
  x.num_kv_heads = 3;
  EXPECT_EQ(rewrite(x), absl::StatusCode::kInvalidArgument);
  x = *h;
  x.num_layers = 2;
  EXPECT_EQ(rewrite(x), absl::StatusCode::kInvalidArgument);
  x = *h;
  x.num_layers = 0;
  EXPECT_EQ(rewrite(x), absl::StatusCode::kInvalidArgument);
  x = *h;
  x.token_count = 127;
  EXPECT_EQ(rewrite(x), absl::StatusCode::kInvalidArgument);
  x = *h;
  x.head_dim = 64;
  EXPECT_EQ(rewrite(x), absl::StatusCode::kInvalidArgument);
  // A flipped body bit with everything else intact is kDataLoss.
  std::vector<uint8_t> flipped = good;
  flipped[kernels::kPayloadHeaderBytes + 5] ^= 4;
  EXPECT_EQ(kernels::ValidatePayload(flipped).status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace kvtier::tools
