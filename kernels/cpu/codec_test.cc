#include "kernels/cpu/codec.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "kernels/cpu/codec_internal.h"
#include "kernels/cpu/half.h"

namespace kvtier::kernels::cpu {
namespace {

using internal::NormalizeStep;

std::vector<float> Gaussian(size_t n, uint32_t seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

// ---------------------------------------------------------------- fp16 conversion

TEST(HalfTest, RoundsToNearestEven) {
  EXPECT_EQ(FloatToHalf(0.0f), 0x0000);
  EXPECT_EQ(FloatToHalf(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalf(1.0f), 0x3c00);
  EXPECT_EQ(FloatToHalf(0.1f), 0x2e66);
  EXPECT_EQ(FloatToHalf(-2.0f), 0xc000);
  EXPECT_EQ(FloatToHalf(65504.0f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65519.99f), 0x7bff);
  EXPECT_EQ(FloatToHalf(65520.0f), 0x7c00);  // tie to even rounds up to inf
  EXPECT_EQ(FloatToHalf(1e10f), 0x7c00);
  EXPECT_EQ(FloatToHalf(-INFINITY), 0xfc00);
  EXPECT_EQ(FloatToHalf(NAN) & 0x7e00, 0x7e00);
  // Ties in the normal range: 1 + 2^-11 is halfway between 1 and 1 + 2^-10.
  EXPECT_EQ(FloatToHalf(1.0f + 0x1p-11f), 0x3c00);
  EXPECT_EQ(FloatToHalf(1.0f + 3 * 0x1p-11f), 0x3c02);
  EXPECT_EQ(FloatToHalf(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
  // Subnormals: units of 2^-24.
  EXPECT_EQ(FloatToHalf(0x1p-24f), 0x0001);
  EXPECT_EQ(FloatToHalf(0x1p-25f), 0x0000);             // tie to even (0)
  EXPECT_EQ(FloatToHalf(3 * 0x1p-25f), 0x0002);         // 1.5 units -> 2
  EXPECT_EQ(FloatToHalf(0x1p-14f - 0x1p-26f), 0x0400);  // rounds up to the smallest normal
  EXPECT_EQ(FloatToHalf(1e-10f), 0x0000);
}

TEST(HalfTest, EveryHalfRoundTrips) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = HalfToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_EQ(h & 0x7c00u, 0x7c00u);
      continue;
    }
    ASSERT_EQ(FloatToHalf(f), h) << std::hex << h;
  }
  EXPECT_EQ(HalfToFloat(0x0001), 0x1p-24f);
  EXPECT_EQ(HalfToFloat(0x3555), 0.333251953125f);
  EXPECT_EQ(HalfToFloat(0x7bff), 65504.0f);
}

// ---------------------------------------------------------------- packing

TEST(PackTest, LsbFirstLayout) {
  const uint8_t two[] = {1, 2, 3, 0, 3, 3, 0, 1};
  uint8_t out[2];
  internal::PackRow(two, 8, 2, out);
  EXPECT_EQ(out[0], 0x39);  // 0b00'11'10'01
  EXPECT_EQ(out[1], 0x4f);  // 0b01'00'11'11
  const uint8_t four[] = {0xa, 0x5, 0x0, 0xf};
  internal::PackRow(four, 4, 4, out);
  EXPECT_EQ(out[0], 0x5a);
  EXPECT_EQ(out[1], 0xf0);
}

TEST(PackTest, RoundTripsEveryWidth) {
  std::mt19937 rng(3);
  for (int bits : {2, 4}) {
    for (int n : {64, 128, 256}) {
      std::vector<uint8_t> codes(n), packed(n * bits / 8), back(n);
      for (auto& c : codes) c = static_cast<uint8_t>(rng() & ((1u << bits) - 1));
      internal::PackRow(codes.data(), n, bits, packed.data());
      internal::UnpackRow(packed.data(), n, bits, back.data());
      EXPECT_EQ(codes, back) << "bits " << bits << " n " << n;
    }
  }
}

// ---------------------------------------------------------------- record layout

struct LayoutCase {
  Preset preset;
  int head_dim;
  size_t offsets[8];  // k codes, s_col_K, zp_K, s_row_K, V codes, s_col_V, s_row_V, zp_V
  size_t data_end;
  size_t record_bytes;
};

// Computed by hand from the table of DESIGN §3.2 (D ≥ 256: per-token slot rounded up to a
// power of two).
constexpr LayoutCase kLayoutCases[] = {
    {Preset::kK4V2G128, 64, {0, 4096, 4224, 4352, 4608, 6656, 6784, 7040}, 7296, 7296},
    {Preset::kK4V2G128, 128, {0, 8192, 8448, 8704, 8960, 13056, 13312, 13568}, 13824, 13824},
    {Preset::kK4V2G128, 256, {0, 16384, 16896, 17408, 17664, 25856, 26368, 26624}, 26880, 32768},
    {Preset::kK4V4G128, 64, {0, 4096, 4224, 4352, 4608, 8704, 8832, 9088}, 9344, 9344},
    {Preset::kK4V4G128, 128, {0, 8192, 8448, 8704, 8960, 17152, 17408, 17664}, 17920, 17920},
    {Preset::kK4V4G128, 256, {0, 16384, 16896, 17408, 17664, 34048, 34560, 34816}, 35072, 65536},
    {Preset::kK4V2G64, 64, {0, 2048, 2176, 2304, 2432, 3456, 3584, 3712}, 3840, 3840},
    {Preset::kK4V2G64, 128, {0, 4096, 4352, 4608, 4736, 6784, 7040, 7168}, 7296, 7296},
    {Preset::kK4V2G64, 256, {0, 8192, 8704, 9216, 9344, 13440, 13952, 14080}, 14208, 16384},
    {Preset::kK4V4G64, 64, {0, 2048, 2176, 2304, 2432, 4480, 4608, 4736}, 4864, 4864},
    {Preset::kK4V4G64, 128, {0, 4096, 4352, 4608, 4736, 8832, 9088, 9216}, 9344, 9344},
    {Preset::kK4V4G64, 256, {0, 8192, 8704, 9216, 9344, 17536, 18048, 18176}, 18304, 32768},
};

TEST(LayoutTest, EveryPresetAndHeadDimMatchesDesign) {
  for (const LayoutCase& c : kLayoutCases) {
    const TileLayout l = MakeTileLayout(c.preset, c.head_dim);
    SCOPED_TRACE(std::string(PresetName(c.preset)) + " D=" + std::to_string(c.head_dim));
    const size_t got[8] = {l.k_codes_offset, l.s_col_k_offset, l.zp_k_offset,    l.s_row_k_offset,
                           l.v_codes_offset, l.s_col_v_offset, l.s_row_v_offset, l.zp_v_offset};
    for (int i = 0; i < 8; ++i) EXPECT_EQ(got[i], c.offsets[i]) << "field " << i;
    EXPECT_EQ(l.data_end, c.data_end);
    EXPECT_EQ(l.record_bytes, c.record_bytes);
  }
  const TileLayout d128 = MakeTileLayout(Preset::kK4V2G128, 128);
  EXPECT_EQ(d128.record_bytes / 128, 108u);  // 108 B per token per head
  EXPECT_NEAR(512.0 / 108.0, 4.74, 0.005);
}

// ---------------------------------------------------------------- FWHT

// Sylvester Hadamard entry: (-1)^popcount(i & j).
double HadamardEntry(int i, int j) {
  return (std::popcount(static_cast<unsigned>(i & j)) & 1) ? -1 : 1;
}

TEST(FwhtTest, MatchesExplicitHadamardProduct) {
  for (int n : {64, 128, 256}) {
    const std::vector<float> x = Gaussian(n, 11 + n);
    std::vector<float> y = x;
    Fwht(y.data(), n);
    double max_err = 0;
    for (int j = 0; j < n; ++j) {
      double ref = 0;
      for (int i = 0; i < n; ++i) ref += x[i] * HadamardEntry(i, j);
      ref /= std::sqrt(static_cast<double>(n));
      max_err = std::max(max_err, std::abs(ref - y[j]));
    }
    EXPECT_LT(max_err, 2e-6) << "n " << n;
  }
}

TEST(FwhtTest, ExactOnSmallIntegers) {
  // n = 64: 1/sqrt(64) = 1/8 is exact, and sums of small integers are exact in fp32.
  std::vector<float> x(64);
  for (int i = 0; i < 64; ++i) x[i] = static_cast<float>((i * 7) % 13 - 6);
  std::vector<float> y = x;
  Fwht(y.data(), 64);
  for (int j = 0; j < 64; ++j) {
    double ref = 0;
    for (int i = 0; i < 64; ++i) ref += x[i] * HadamardEntry(i, j);
    EXPECT_EQ(y[j], static_cast<float>(ref / 8));
  }
}

TEST(FwhtTest, OrthonormalAndSelfInverse) {
  for (int n : {64, 128, 256}) {
    const std::vector<float> x = Gaussian(n, 5 + n, 3.0f);
    std::vector<float> y = x;
    Fwht(y.data(), n);
    double nx = 0, ny = 0;
    for (int i = 0; i < n; ++i) {
      nx += double{x[i]} * x[i];
      ny += double{y[i]} * y[i];
    }
    EXPECT_NEAR(ny / nx, 1.0, 1e-6);
    Fwht(y.data(), n);
    for (int i = 0; i < n; ++i) EXPECT_NEAR(y[i], x[i], 1e-5) << i;
  }
}

// ---------------------------------------------------------------- normalization

TEST(NormalizeTest, StdIsUnbiasedAndMeanSubtracted) {
  const float v[] = {1, 2, 3, 4};
  EXPECT_FLOAT_EQ(internal::StdDev(v, 4, 1), std::sqrt(5.0f / 3.0f));
  const float strided[] = {1, 100, 3, 100};  // stride 2 reads 1, 3
  EXPECT_FLOAT_EQ(internal::StdDev(strided, 2, 2), std::sqrt(2.0f));
}

TEST(NormalizeTest, ConstantsAreDesigns) {
  EXPECT_EQ(internal::kStdClampLo, 1e-3f);
  EXPECT_EQ(internal::kStdClampHi, 1e3f);
  EXPECT_EQ(internal::kLogScaleLo, -0.3f);
  EXPECT_EQ(internal::kLogScaleHi, 10.0f);
  EXPECT_EQ(internal::kImbalanceFloor, 1e-8f);
  EXPECT_EQ(internal::kMinScale, 1e-10f);
}

// A direct transcription of DESIGN §3.1's pseudo-code: Y recomputed from X everywhere.
internal::NormalizeResult NaiveNormalize(const std::vector<float>& x, int rows, int cols, int iters,
                                         std::vector<float>& lc, std::vector<float>& lr) {
  auto y_of = [&](const std::vector<float>& c, const std::vector<float>& r) {
    std::vector<float> y(x.size());
    for (int i = 0; i < rows; ++i) {
      for (int j = 0; j < cols; ++j) {
        y[i * cols + j] = x[i * cols + j] / internal::ExpF(c[j]) / internal::ExpF(r[i]);
      }
    }
    return y;
  };
  std::vector<float> c(cols, 0), r(rows, 0);
  lc = c;
  lr = r;
  internal::NormalizeResult best{internal::Imbalance(x.data(), rows, cols), 0};
  for (int it = 1; it <= iters; ++it) {
    std::vector<float> y = y_of(c, r);
    for (int j = 0; j < cols; ++j) {
      const float s = std::clamp(internal::StdDev(y.data() + j, rows, cols), 1e-3f, 1e3f);
      c[j] = std::clamp(c[j] + internal::LogF(s), -0.3f, 10.0f);
    }
    y = y_of(c, r);
    for (int i = 0; i < rows; ++i) {
      const float s = std::clamp(internal::StdDev(y.data() + i * cols, cols, 1), 1e-3f, 1e3f);
      r[i] = std::clamp(r[i] + internal::LogF(s), -0.3f, 10.0f);
    }
    y = y_of(c, r);
    const float imb = internal::Imbalance(y.data(), rows, cols);
    if (imb <= best.best_imbalance) {
      best = {imb, it};
      lc = c;
      lr = r;
    }
  }
  return best;
}

TEST(NormalizeTest, MatchesDirectTranscriptionBitForBit) {
  const int rows = 32, cols = 48;
  for (uint32_t seed = 1; seed <= 4; ++seed) {
    std::vector<float> x = Gaussian(rows * cols, seed);
    // Uneven scales so the iterations move: row r scaled by 1 + r, column c by 0.1 + c / 8.
    for (int i = 0; i < rows; ++i) {
      for (int j = 0; j < cols; ++j) x[i * cols + j] *= (1.0f + i) * (0.1f + j / 8.0f);
    }
    for (int iters : {0, 1, 3, 8}) {
      std::vector<float> lc(cols), lr(rows), nlc, nlr;
      const auto got = internal::NormalizeLog(x.data(), rows, cols, iters, lc.data(), lr.data());
      const auto want = NaiveNormalize(x, rows, cols, iters, nlc, nlr);
      EXPECT_EQ(got.best_iteration, want.best_iteration);
      EXPECT_EQ(got.best_imbalance, want.best_imbalance);
      EXPECT_EQ(lc, nlc);
      EXPECT_EQ(lr, nlr);
    }
  }
}

TEST(NormalizeTest, ColumnPassThenRowPass) {
  // Columns with std 2 and 8 alternate; rows are scaled by 1 and 4.
  const int rows = 4, cols = 4;
  std::vector<float> x(16);
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) {
      const float sign = ((i + j) % 2) ? 1.0f : -1.0f;
      x[i * cols + j] = sign * ((j % 2) ? 8.0f : 2.0f) * ((i % 2) ? 4.0f : 1.0f) + 0.25f * i;
    }
  }
  std::vector<NormalizeStep> trace;
  std::vector<float> lc(cols), lr(rows);
  internal::NormalizeLog(x.data(), rows, cols, 1, lc.data(), lr.data(), &trace);
  ASSERT_EQ(trace.size(), 1u);
  // Column pass on X itself.
  std::vector<float> want_lc(cols), want_lr(rows);
  for (int j = 0; j < cols; ++j) {
    want_lc[j] =
        std::clamp(internal::LogF(internal::StdDev(x.data() + j, rows, cols)), -0.3f, 10.0f);
  }
  EXPECT_EQ(trace[0].lc, want_lc);
  // Row pass on X / exp(lc), not on X.
  std::vector<float> y(16);
  bool order_matters = false;
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) y[i * cols + j] = x[i * cols + j] / internal::ExpF(want_lc[j]);
    want_lr[i] =
        std::clamp(internal::LogF(internal::StdDev(y.data() + i * cols, cols, 1)), -0.3f, 10.0f);
    const float row_first =
        std::clamp(internal::LogF(internal::StdDev(x.data() + i * cols, cols, 1)), -0.3f, 10.0f);
    order_matters = order_matters || row_first != want_lr[i];
  }
  EXPECT_TRUE(order_matters);
  EXPECT_EQ(trace[0].lr, want_lr);
}

TEST(NormalizeTest, ClampsStdAndLogScales) {
  const int rows = 8, cols = 8;
  // Huge values: every std is clamped to 1e3, so lc = log(1e3) after one column pass; the
  // second column pass adds another log(1e3) and the sum is clamped to 10.
  std::vector<float> big = Gaussian(rows * cols, 21, 1e9f);
  std::vector<NormalizeStep> trace;
  std::vector<float> lc(cols), lr(rows);
  internal::NormalizeLog(big.data(), rows, cols, 2, lc.data(), lr.data(), &trace);
  ASSERT_EQ(trace.size(), 2u);
  for (int j = 0; j < cols; ++j) {
    EXPECT_EQ(trace[0].lc[j], internal::LogF(1e3f));
    EXPECT_EQ(trace[1].lc[j], 10.0f);
  }
  for (int i = 0; i < rows; ++i) EXPECT_EQ(trace[0].lr[i], internal::LogF(1e3f));
  // Tiny values: std clamped to 1e-3, log = -6.9, then the log scale is clamped to -0.3.
  std::vector<float> tiny = Gaussian(rows * cols, 22, 1e-7f);
  trace.clear();
  internal::NormalizeLog(tiny.data(), rows, cols, 2, lc.data(), lr.data(), &trace);
  ASSERT_EQ(trace.size(), 2u);
  for (const auto& step : trace) {
    for (float v : step.lc) EXPECT_EQ(v, -0.3f);
    for (float v : step.lr) EXPECT_EQ(v, -0.3f);
  }
}

TEST(NormalizeTest, LaterTiesWin) {
  // A checkerboard: every row and column has the same std, at every iterate, so every
  // imbalance equals 2 exactly; with `<=` the last iterate is the best.
  const int rows = 16, cols = 16;
  std::vector<float> x(rows * cols);
  for (int i = 0; i < rows; ++i) {
    for (int j = 0; j < cols; ++j) x[i * cols + j] = ((i + j) % 2) ? 3.0f : -3.0f;
  }
  std::vector<NormalizeStep> trace;
  std::vector<float> lc(cols), lr(rows);
  const auto r = internal::NormalizeLog(x.data(), rows, cols, 5, lc.data(), lr.data(), &trace);
  EXPECT_EQ(r.best_imbalance, 2.0f);
  EXPECT_EQ(r.best_iteration, 5);
  EXPECT_EQ(lc, trace[4].lc);
  EXPECT_EQ(lr, trace[4].lr);
  EXPECT_NE(lc[0], 0.0f);
}

TEST(NormalizeTest, UntouchedTileIsACandidate) {
  // Tiny rows and columns: every std is clamped to 1e-3 and every log scale to -0.3, which
  // scales the tile uniformly except where the clamp bites first; every iterate is worse
  // (imbalance ~447) than the untouched tile (~264), so the untouched tile must win.
  const int rows = 3, cols = 3;
  const std::vector<float> x = {4e-10f,  -4e-9f, -4e-10f,  //
                                -2e-10f, -1e-9f, 0.0f,     //
                                -4e-7f,  -4e-6f, 1e-7f};
  std::vector<NormalizeStep> trace;
  std::vector<float> lc(cols, 7.0f), lr(rows, 7.0f);
  const auto r = internal::NormalizeLog(x.data(), rows, cols, 8, lc.data(), lr.data(), &trace);
  const float imb0 = internal::Imbalance(x.data(), rows, cols);
  EXPECT_NEAR(imb0, 263.58, 0.01);
  ASSERT_EQ(trace.size(), 8u);
  for (const auto& s : trace) EXPECT_GT(s.imbalance, 1.5f * imb0);
  EXPECT_EQ(r.best_iteration, 0);
  EXPECT_EQ(r.best_imbalance, imb0);
  for (float v : lc) EXPECT_EQ(v, 0.0f);
  for (float v : lr) EXPECT_EQ(v, 0.0f);
  // Zero iterations: the untouched tile is the only candidate.
  std::fill(lc.begin(), lc.end(), 7.0f);
  const auto r0 = internal::NormalizeLog(x.data(), rows, cols, 0, lc.data(), lr.data());
  EXPECT_EQ(r0.best_iteration, 0);
  EXPECT_EQ(r0.best_imbalance, imb0);
  for (float v : lc) EXPECT_EQ(v, 0.0f);
}

// ---------------------------------------------------------------- RTN

TEST(QuantizeTest, RoundsHalfToEven) {
  // lo = 0, hi = 15: scale 1, so (x - lo) / scale == x and the halves are exact.
  const float row[] = {0.0f, 0.5f, 1.5f, 2.5f, 15.0f, 7.5f, 8.5f, 14.5f};
  uint8_t codes[8];
  float scale, lo;
  internal::QuantizeRows(row, 1, 8, 4, codes, &scale, &lo);
  EXPECT_EQ(scale, 1.0f);
  EXPECT_EQ(lo, 0.0f);
  const uint8_t want[] = {0, 0, 2, 2, 15, 8, 8, 14};
  EXPECT_TRUE(std::equal(codes, codes + 8, want));
}

TEST(QuantizeTest, TwoBitRowsAndNegativeLo) {
  // lo = -1, hi = 2, qmax = 3: scale 1; -0.5 -> 0.5 -> 0, 0.5 -> 1.5 -> 2.
  const float rows[] = {-1.0f, -0.5f, 0.5f, 2.0f,   //
                        4.0f,  4.0f,  4.0f, 4.0f};  // constant: scale floor
  uint8_t codes[8];
  float scale[2], lo[2];
  internal::QuantizeRows(rows, 2, 4, 2, codes, scale, lo);
  EXPECT_EQ(scale[0], 1.0f);
  EXPECT_EQ(lo[0], -1.0f);
  const uint8_t want[] = {0, 0, 2, 3, 0, 0, 0, 0};
  EXPECT_TRUE(std::equal(codes, codes + 8, want));
  EXPECT_EQ(scale[1], 1e-10f);
  EXPECT_EQ(lo[1], 4.0f);
}

TEST(QuantizeTest, ScaleIsRangeOverQmax) {
  const float row[] = {-0.3f, 0.1f, 0.7f, 0.2f};
  uint8_t codes[4];
  float scale, lo;
  internal::QuantizeRows(row, 1, 4, 4, codes, &scale, &lo);
  EXPECT_EQ(lo, -0.3f);
  EXPECT_EQ(scale, (0.7f - -0.3f) / 15.0f);
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(codes[i], static_cast<uint8_t>(std::nearbyint((row[i] - lo) / scale)));
  }
  EXPECT_EQ(codes[2], 15);
}

// ---------------------------------------------------------------- tiles

TEST(TileTest, ReconstructionFormula) {
  const TileLayout l = MakeTileLayout(Preset::kK4V2G64, 64);
  std::mt19937 rng(9);
  std::vector<uint8_t> rec(l.record_bytes);
  for (auto& b : rec) b = static_cast<uint8_t>(rng());
  // Make every fp16 field a finite value in [0.5, 2).
  auto put_half = [&](size_t off, float v) {
    const uint16_t h = FloatToHalf(v);
    rec[off] = static_cast<uint8_t>(h);
    rec[off + 1] = static_cast<uint8_t>(h >> 8);
  };
  std::uniform_real_distribution<float> u(0.5f, 2.0f);
  for (size_t off = l.s_col_k_offset; off < l.v_codes_offset; off += 2) put_half(off, u(rng));
  for (size_t off = l.s_col_v_offset; off < l.data_end; off += 2) put_half(off, -u(rng));
  auto half_at = [&](size_t off) {
    return HalfToFloat(static_cast<uint16_t>(rec[off] | (rec[off + 1] << 8)));
  };
  const int d = 64, g = 64;
  std::vector<float> k(d * g), v(d * g);
  DecodeTile(l, rec.data(), k.data(), v.data());
  for (int c = 0; c < d; ++c) {
    for (int t = 0; t < g; ++t) {
      const int code = (rec[l.k_codes_offset + c * (g / 2) + t / 2] >> ((t % 2) * 4)) & 0xf;
      const float want =
          (code * half_at(l.s_col_k_offset + 2 * c) + half_at(l.zp_k_offset + 2 * c)) *
          half_at(l.s_row_k_offset + 2 * t);
      ASSERT_EQ(k[t * d + c], want) << "K c " << c << " t " << t;
    }
  }
  for (int t = 0; t < g; ++t) {
    for (int c = 0; c < d; ++c) {
      const int code = (rec[l.v_codes_offset + t * (d / 4) + c / 4] >> ((c % 4) * 2)) & 0x3;
      const float want =
          (code * half_at(l.s_row_v_offset + 2 * t) + half_at(l.zp_v_offset + 2 * t)) *
          half_at(l.s_col_v_offset + 2 * c);
      ASSERT_EQ(v[t * d + c], want) << "V t " << t << " c " << c;
    }
  }
}

double RelErr(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
    den += double{a[i]} * a[i];
  }
  return std::sqrt(num / den);
}

TEST(TileTest, EncodeDecodeRoundTripEveryPreset) {
  for (Preset p : kAllPresets) {
    for (int d : {64, 128}) {
      const TileLayout l = MakeTileLayout(p, d);
      const int g = l.group_size;
      std::vector<float> k = Gaussian(g * d, 100 + d), v = Gaussian(g * d, 200 + d);
      for (int t = 0; t < g; ++t) k[t * d + 3] += 6.0f;  // an outlier channel with a bias
      std::vector<uint8_t> rec(l.record_bytes, 0xcc);
      ASSERT_TRUE(EncodeTile(l, k.data(), v.data(), rec.data()).ok());
      for (size_t i = l.data_end; i < l.record_bytes; ++i) EXPECT_EQ(rec[i], 0) << "padding";
      std::vector<float> kr(g * d), vr(g * d);
      DecodeTile(l, rec.data(), kr.data(), vr.data());
      for (int t = 0; t < g; ++t) {
        Fwht(kr.data() + t * d, d);
        Fwht(vr.data() + t * d, d);
      }
      SCOPED_TRACE(std::string(PresetName(p)) + " D=" + std::to_string(d));
      EXPECT_LT(RelErr(k, kr), 0.12);
      EXPECT_LT(RelErr(v, vr), l.value_bits == 4 ? 0.12 : 0.5);
      // Rotated input gives the same record.
      std::vector<float> krot = k, vrot = v;
      for (int t = 0; t < g; ++t) {
        Fwht(krot.data() + t * d, d);
        Fwht(vrot.data() + t * d, d);
      }
      std::vector<uint8_t> rec2(l.record_bytes);
      ASSERT_TRUE(EncodeRotatedTile(l, krot.data(), vrot.data(), rec2.data()).ok());
      EXPECT_EQ(rec, rec2);
    }
  }
}

TEST(TileTest, RejectsBadInputAndWritesNothing) {
  const TileLayout l = MakeTileLayout(Preset::kK4V2G64, 64);
  std::vector<float> k = Gaussian(64 * 64, 1), v = Gaussian(64 * 64, 2);
  std::vector<uint8_t> rec(l.record_bytes, 0xab);
  k[100] = NAN;
  EXPECT_EQ(EncodeTile(l, k.data(), v.data(), rec.data()).code(),
            absl::StatusCode::kInvalidArgument);
  k[100] = INFINITY;
  EXPECT_EQ(EncodeTile(l, k.data(), v.data(), rec.data()).code(),
            absl::StatusCode::kInvalidArgument);
  k[100] = 0.5f;
  for (auto& x : v) x *= 1e30f;  // finite, but no fp16 scale can hold it
  EXPECT_EQ(EncodeTile(l, k.data(), v.data(), rec.data()).code(),
            absl::StatusCode::kInvalidArgument);
  v = Gaussian(64 * 64, 2);
  EXPECT_EQ(EncodeTile(l, k.data(), v.data(), rec.data(), {.iterations = 65}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeTile(l, k.data(), v.data(), rec.data(), {.iterations = -1}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeTile(TileLayout{}, k.data(), v.data(), rec.data()).code(),
            absl::StatusCode::kInvalidArgument);
  for (uint8_t b : rec) ASSERT_EQ(b, 0xab);
  EXPECT_TRUE(EncodeTile(l, k.data(), v.data(), rec.data(), {.iterations = 0}).ok());
}

TEST(TileTest, DecompressToFp16) {
  const TileLayout l = MakeTileLayout(Preset::kK4V4G64, 128);
  const int g = 64, d = 128;
  std::vector<float> k = Gaussian(g * d, 5), v = Gaussian(g * d, 6);
  std::vector<uint8_t> rec(l.record_bytes);
  ASSERT_TRUE(EncodeTile(l, k.data(), v.data(), rec.data()).ok());
  std::vector<float> kr(g * d), vr(g * d);
  DecodeTile(l, rec.data(), kr.data(), vr.data());
  std::vector<uint16_t> kh(g * d), vh(g * d), kh_rot(g * d), vh_rot(g * d);
  DecompressTile(l, rec.data(), kh.data(), vh.data());
  DecompressTile(l, rec.data(), kh_rot.data(), vh_rot.data(), /*rotated=*/true);
  for (int i = 0; i < g * d; ++i) {
    ASSERT_EQ(kh_rot[i], FloatToHalf(kr[i]));
    ASSERT_EQ(vh_rot[i], FloatToHalf(vr[i]));
  }
  for (int t = 0; t < g; ++t) {
    Fwht(kr.data() + t * d, d);
    Fwht(vr.data() + t * d, d);
  }
  for (int i = 0; i < g * d; ++i) {
    ASSERT_EQ(kh[i], FloatToHalf(kr[i]));
    ASSERT_EQ(vh[i], FloatToHalf(vr[i]));
  }
}

// ---------------------------------------------------------------- attention

// Builds sink FP16 block + 2 compressed blocks + a partial FP16 tail; the test decodes
// them independently and runs a float64 attention with an explicit Hadamard matrix.
TEST(AttentionTest, MixedBlocksWithGqaMatchFloat64) {
  const Preset preset = Preset::kK4V2G64;
  const int d = 64, g = 64, hk = 2, hq = 6, tail = 37;
  const TileLayout l = MakeTileLayout(preset, d);
  // Per block: K, V [tokens][hk][d].
  auto kv = [&](int tokens, uint32_t seed) {
    return Gaussian(static_cast<size_t>(tokens) * hk * d, seed);
  };
  std::vector<std::vector<uint8_t>> storage;
  std::vector<BlockSection> blocks;
  // Reference K/V per kv head, unrotated, double: [hk][token][d].
  std::vector<std::vector<double>> ref_k(hk), ref_v(hk);
  auto add_fp16 = [&](int tokens, uint32_t seed) {
    std::vector<float> k = kv(tokens, seed), v = kv(tokens, seed + 1);
    std::vector<uint16_t> sec(static_cast<size_t>(hk) * 2 * tokens * d);
    EncodeFp16Section(d, hk, tokens, k.data(), v.data(), sec.data());
    storage.emplace_back(sec.size() * 2);
    std::memcpy(storage.back().data(), sec.data(), storage.back().size());
    blocks.push_back({BlockEncoding::kFp16, tokens, storage.back().data()});
    for (int h = 0; h < hk; ++h) {
      const uint16_t* ks = sec.data() + static_cast<size_t>(h) * 2 * tokens * d;
      for (int t = 0; t < tokens; ++t) {
        for (int j = 0; j < d; ++j) {  // un-rotate with the explicit matrix
          double a = 0, b = 0;
          for (int i = 0; i < d; ++i) {
            a += HalfToFloat(ks[t * d + i]) * HadamardEntry(i, j);
            b += HalfToFloat(ks[tokens * d + t * d + i]) * HadamardEntry(i, j);
          }
          ref_k[h].push_back(a / 8);
          ref_v[h].push_back(b / 8);
        }
      }
    }
  };
  auto add_tiles = [&](uint32_t seed) {
    std::vector<float> k = kv(g, seed), v = kv(g, seed + 1);
    storage.emplace_back(static_cast<size_t>(hk) * l.record_bytes);
    std::vector<float> kt(g * d), vt(g * d), kr(g * d), vr(g * d);
    for (int h = 0; h < hk; ++h) {
      for (int t = 0; t < g; ++t) {
        std::copy_n(k.data() + (t * hk + h) * d, d, kt.data() + t * d);
        std::copy_n(v.data() + (t * hk + h) * d, d, vt.data() + t * d);
      }
      uint8_t* rec = storage.back().data() + h * l.record_bytes;
      ASSERT_TRUE(EncodeTile(l, kt.data(), vt.data(), rec).ok());
      DecodeTile(l, rec, kr.data(), vr.data());
      for (int t = 0; t < g; ++t) {
        for (int j = 0; j < d; ++j) {
          double a = 0, b = 0;
          for (int i = 0; i < d; ++i) {
            a += kr[t * d + i] * HadamardEntry(i, j);
            b += vr[t * d + i] * HadamardEntry(i, j);
          }
          ref_k[h].push_back(a / 8);
          ref_v[h].push_back(b / 8);
        }
      }
    }
    blocks.push_back({BlockEncoding::kTiles, g, storage.back().data()});
  };
  storage.reserve(8);
  add_fp16(g, 10);
  add_tiles(20);
  add_tiles(30);
  add_fp16(tail, 40);
  const int total = 3 * g + tail;
  const std::vector<float> q = Gaussian(hq * d, 50, 2.0f);
  const float scale = 1.0f / 8.0f;

  std::vector<double> want(hq * d), want_lse(hq);
  for (int qh = 0; qh < hq; ++qh) {
    const int h = qh / (hq / hk);
    std::vector<double> s(total);
    double m = -1e300;
    for (int t = 0; t < total; ++t) {
      double a = 0;
      for (int i = 0; i < d; ++i) a += double{q[qh * d + i]} * ref_k[h][t * d + i];
      s[t] = a * scale;
      m = std::max(m, s[t]);
    }
    double sum = 0;
    for (int t = 0; t < total; ++t) sum += std::exp(s[t] - m);
    for (int t = 0; t < total; ++t) {
      const double p = std::exp(s[t] - m) / sum;
      for (int i = 0; i < d; ++i) want[qh * d + i] += p * ref_v[h][t * d + i];
    }
    want_lse[qh] = m + std::log(sum);
  }
  for (bool f64 : {false, true}) {
    std::vector<float> out(hq * d, NAN), lse(hq, NAN);
    ASSERT_TRUE(
        AttendReference(l, hk, blocks, q.data(), hq, scale, out.data(), lse.data(), f64).ok());
    const double tol = f64 ? 1e-6 : 2e-4;
    for (int i = 0; i < hq * d; ++i)
      EXPECT_NEAR(out[i], want[i], tol) << "f64 " << f64 << " i " << i;
    for (int qh = 0; qh < hq; ++qh) EXPECT_NEAR(lse[qh], want_lse[qh], tol);
  }
  // GQA mapping: query heads 3..5 read KV head 1 only. Changing KV head 0 of the compressed
  // blocks leaves them unchanged.
  std::vector<float> before(hq * d), after(hq * d);
  ASSERT_TRUE(AttendReference(l, hk, blocks, q.data(), hq, scale, before.data(), nullptr).ok());
  storage[1][l.s_row_k_offset] ^= 0x40;  // block 1, head 0
  ASSERT_TRUE(AttendReference(l, hk, blocks, q.data(), hq, scale, after.data(), nullptr).ok());
  for (int i = 3 * d; i < hq * d; ++i) ASSERT_EQ(before[i], after[i]);
  bool changed = false;
  for (int i = 0; i < 3 * d; ++i) changed = changed || before[i] != after[i];
  EXPECT_TRUE(changed);
}

TEST(AttentionTest, Fp32MatchesFloat64ForEveryPresetAndHeadDim) {
  for (Preset p : kAllPresets) {
    for (int d : {64, 128, 256}) {
      const TileLayout l = MakeTileLayout(p, d);
      const int g = l.group_size, hk = 2, hq = 4, tail = 5;
      std::vector<uint8_t> tiles(2 * static_cast<size_t>(hk) * l.record_bytes);
      for (int b = 0; b < 2; ++b) {
        for (int h = 0; h < hk; ++h) {
          const auto k = Gaussian(g * d, 1000 + b * 10 + h), v = Gaussian(g * d, 2000 + b * 10 + h);
          ASSERT_TRUE(
              EncodeTile(l, k.data(), v.data(), tiles.data() + (b * hk + h) * l.record_bytes).ok());
        }
      }
      const auto kt = Gaussian(tail * hk * d, 7), vt = Gaussian(tail * hk * d, 8);
      std::vector<uint16_t> sec(static_cast<size_t>(hk) * 2 * tail * d);
      EncodeFp16Section(d, hk, tail, kt.data(), vt.data(), sec.data());
      const std::vector<BlockSection> blocks = {
          {BlockEncoding::kTiles, g, tiles.data()},
          {BlockEncoding::kTiles, g, tiles.data() + hk * l.record_bytes},
          {BlockEncoding::kFp16, tail, reinterpret_cast<const uint8_t*>(sec.data())}};
      const auto q = Gaussian(hq * d, 9, 1.5f);
      std::vector<float> o32(hq * d), o64(hq * d), l32(hq), l64(hq);
      const float scale = 1.0f / std::sqrt(static_cast<float>(d));
      ASSERT_TRUE(AttendReference(l, hk, blocks, q.data(), hq, scale, o32.data(), l32.data()).ok());
      ASSERT_TRUE(
          AttendReference(l, hk, blocks, q.data(), hq, scale, o64.data(), l64.data(), true).ok());
      double num = 0, den = 0;
      for (int i = 0; i < hq * d; ++i) {
        num += (double{o32[i]} - o64[i]) * (double{o32[i]} - o64[i]);
        den += double{o64[i]} * o64[i];
      }
      EXPECT_LT(std::sqrt(num / den), 1e-5) << PresetName(p) << " D=" << d;
      for (int h = 0; h < hq; ++h) EXPECT_NEAR(l32[h], l64[h], 1e-4);
    }
  }
}

TEST(AttentionTest, RejectsMalformedInput) {
  const TileLayout l = MakeTileLayout(Preset::kK4V2G64, 64);
  std::vector<uint8_t> rec(l.record_bytes);
  std::vector<float> q(64 * 3), out(64 * 3);
  BlockSection good{BlockEncoding::kTiles, 64, rec.data()};
  std::vector<BlockSection> one = {good};
  EXPECT_EQ(AttendReference(l, 2, one, q.data(), 3, 0.125f, out.data(), nullptr).code(),
            absl::StatusCode::kInvalidArgument);  // 3 q heads over 2 kv heads
  EXPECT_EQ(AttendReference(l, 1, {}, q.data(), 1, 0.125f, out.data(), nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<BlockSection> short_tile = {{BlockEncoding::kTiles, 63, rec.data()}};
  EXPECT_EQ(AttendReference(l, 1, short_tile, q.data(), 1, 0.125f, out.data(), nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<BlockSection> long_fp16 = {{BlockEncoding::kFp16, 65, rec.data()}};
  EXPECT_EQ(AttendReference(l, 1, long_fp16, q.data(), 1, 0.125f, out.data(), nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  std::vector<BlockSection> null_data = {{BlockEncoding::kTiles, 64, nullptr}};
  EXPECT_EQ(AttendReference(l, 1, null_data, q.data(), 1, 0.125f, out.data(), nullptr).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace kvtier::kernels::cpu
