// Golden vectors: tile records computed by an independent numpy implementation of DESIGN
// §3.1-§3.2 (tests/golden/make_golden.py), compared byte for byte with the C++ encoder.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "kernels/cpu/codec.h"
#include "tools/codec_npy.h"

namespace kvtier {
namespace {

using kernels::MakeTileLayout;
using kernels::Preset;

struct GoldenCase {
  Preset preset;
  int head_dim;
};

class GoldenTest : public ::testing::TestWithParam<GoldenCase> {};

TEST_P(GoldenTest, RecordMatchesNumpyByteForByte) {
  const auto [preset, d] = GetParam();
  const std::string base = std::string(KVTIER_GOLDEN_DIR) + "/" +
                           std::string(kernels::PresetName(preset)) + "_d" + std::to_string(d);
  auto k = tools::ReadNpy(base + "_k.npy");
  auto v = tools::ReadNpy(base + "_v.npy");
  auto want = tools::ReadFileBytes(base + ".rec");
  ASSERT_TRUE(k.ok()) << k.status();
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_TRUE(want.ok()) << want.status();
  const auto layout = MakeTileLayout(preset, d);
  ASSERT_EQ(k->dtype, tools::NpyDtype::kFloat16);
  ASSERT_EQ(k->shape, (std::vector<int64_t>{layout.group_size, d}));
  ASSERT_EQ(want->size(), layout.record_bytes);
  std::vector<uint8_t> got(layout.record_bytes);
  ASSERT_TRUE(kernels::cpu::EncodeTile(layout, k->data.data(), v->data.data(), got.data()).ok());
  size_t mismatches = 0, first = got.size();
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != (*want)[i]) {
      ++mismatches;
      first = std::min(first, i);
    }
  }
  EXPECT_EQ(mismatches, 0u) << "first differing byte at offset " << first << " (K codes end "
                            << layout.s_col_k_offset << ", V codes at " << layout.v_codes_offset
                            << ")";
}

INSTANTIATE_TEST_SUITE_P(
    AllPresets, GoldenTest,
    ::testing::Values(GoldenCase{Preset::kK4V2G128, 64}, GoldenCase{Preset::kK4V2G128, 128},
                      GoldenCase{Preset::kK4V4G128, 64}, GoldenCase{Preset::kK4V4G128, 128},
                      GoldenCase{Preset::kK4V2G64, 64}, GoldenCase{Preset::kK4V2G64, 128},
                      GoldenCase{Preset::kK4V4G64, 64}, GoldenCase{Preset::kK4V4G64, 128},
                      GoldenCase{Preset::kK4V2G64, 256}),
    [](const auto& info) {
      return std::string(kernels::PresetName(info.param.preset)) + "_d" +
             std::to_string(info.param.head_dim);
    });

}  // namespace
}  // namespace kvtier
