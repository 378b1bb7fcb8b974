// Proof of kernels/cpu/exact_div.h: Markstein's quotient with a precomputed correctly
// rounded reciprocal equals the IEEE division x / a bit for bit on the fast range.
//
// With no underflow or overflow (the ranges of exact_div.h rule both out) every step
// scales exactly with the exponents and signs of x and a, so it suffices to take the
// significands x = n * 2^-23 and a = m * 2^-23, n, m in [2^23, 2^24), a > 1 (a = 1 is
// exact). Let Q = x / a, y = RN(1/a) = 1/a + eta with |eta| <= 2^-25 (1/a in (1/2, 1)),
// u = ulp(Q), q0 = RN(x * y), r = x - q0 * a, r~ = the fma's RN(r), and
// q = RN(q0 + r~ * y) = RN(Q + E) with E = a * (Q - q0) * eta + (r~ - r) * y.
//   Q >= 1 (n >= m), u = 2^-23: |x * y - Q| = x * |eta| < u / 2, so |q0 - Q| < u, r is
//     exact (r~ = r: a multiple of 2^-46 below 2^-22 in magnitude) and |E| < 2 * u * 2^-25 =
//     2^-47.
//   Q < 1 (n < m), u = 2^-24: |q0 - Q| <= u / 2 + x * |eta| < 1.5 u (q0 need NOT be
//     within one ulp: Markstein's theorem does not apply as such), |r| < 3 * 2^-24, r is
//     a multiple of 2^-47, so r~ = r unless |r| >= 2^-23, which needs a > 1.56 and then
//     |r~ - r| <= 2^-47 with y < 0.641: |E| < 3 * 2^-49 + 0.641 * 2^-47 < 5.6 * 2^-49.
// So q == RN(Q) unless a rounding midpoint lies within |E| of Q. The midpoints are
// Mid = M * 2^-k, M odd in [2^24, 2^25), k = 24 for Q >= 1 and 25 for Q < 1, and
// x - Mid * a = (n * 2^k - M * m) * 2^-(k+23); so |Q - Mid| <= |E| needs the integer
// t = n * 2^k - M * m to satisfy |t| <= a * |E| * 2^(k+23) < 2 (k = 24) or < 5.6 (k = 25).
// For each m and each such t = n * 2^k - M * m, M is fixed modulo 2^(k - v2(m)) (m's odd
// part is invertible modulo powers of two), so these pairs can be listed: the test checks
// every one of them (|t| <= 8, 46.5 M pairs) against the IEEE division. That completes the
// proof; the other cases below (every dividend for adversarial divisors, random pairs in
// the kernel's ranges, exponent corners, the guarded forms on special values) check the
// scaling argument, the ranges and the wiring. The reference is the host's float division
// (IEEE binary32, correctly rounded); the host side of the helpers is plain float
// operations and std::fma, built with -ffp-contract=off.
#include "kernels/cpu/exact_div.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace kvtier::kernels::exact_div {
namespace {

uint32_t Bits(float f) { return std::bit_cast<uint32_t>(f); }

float FromBits(uint32_t b) { return std::bit_cast<float>(b); }

// A float with the given significand bits (23) and unbiased exponent.
float Make(uint32_t significand, int exponent) {
  return FromBits((static_cast<uint32_t>(exponent + 127) << 23) | (significand & 0x7fffffu));
}

// Bit equality; any NaN equals any NaN.
bool Same(float a, float b) { return Bits(a) == Bits(b) || (std::isnan(a) && std::isnan(b)); }

// Tallies MarksteinQuotient (no range checks) against IEEE division.
struct Tally {
  int64_t checked = 0;
  int64_t mismatches = 0;
  float first_x = 0, first_a = 0;

  void Fast(float x, float a, float inv) {
    ++checked;
    if (Bits(MarksteinQuotient(x, a, inv)) != Bits(x / a) && mismatches++ == 0) {
      first_x = x;
      first_a = a;
    }
  }
  void Fast(float x, float a) { Fast(x, a, Reciprocal(a)); }
};

std::string Describe(const Tally& t) {
  char buf[160];
  std::snprintf(buf, sizeof(buf), "%lld of %lld differ; first: %a / %a", (long long)t.mismatches,
                (long long)t.checked, t.first_x, t.first_a);
  return buf;
}

TEST(ExactDivTest, ReciprocalIsCorrectlyRoundedAndRangesAreAsDocumented) {
  EXPECT_TRUE(TwoScaleDividendInRange(-0x1p-50f));
  EXPECT_TRUE(TwoScaleDividendInRange(0x1p50f));
  EXPECT_FALSE(TwoScaleDividendInRange(std::nextafter(0x1p-50f, 0.0f)));
  EXPECT_FALSE(TwoScaleDividendInRange(std::nextafter(0x1p50f, INFINITY)));
  EXPECT_FALSE(TwoScaleDividendInRange(0.0f));
  EXPECT_FALSE(TwoScaleDividendInRange(NAN));
  EXPECT_EQ(Reciprocal(4.0f), 0.25f);
  EXPECT_EQ(Bits(Reciprocal(3.0f)), 0x3eaaaaabu);  // RN(1/3)
  EXPECT_TRUE(DivisorInRange(0x1p-40f));
  EXPECT_TRUE(DivisorInRange(-0x1p40f));
  EXPECT_FALSE(DivisorInRange(std::nextafter(0x1p-40f, 0.0f)));
  EXPECT_FALSE(DivisorInRange(std::nextafter(0x1p40f, INFINITY)));
  EXPECT_FALSE(DivisorInRange(NAN));
  EXPECT_TRUE(DividendInRange(-0x1p-70f));
  EXPECT_TRUE(DividendInRange(0x1p70f));
  EXPECT_FALSE(DividendInRange(0.0f));
  EXPECT_FALSE(DividendInRange(std::nextafter(0x1p-70f, 0.0f)));
  EXPECT_FALSE(DividendInRange(std::nextafter(0x1p70f, INFINITY)));
  EXPECT_FALSE(DividendInRange(-INFINITY));
  EXPECT_FALSE(DividendInRange(NAN));
  // The kernel's divisors: e^lc, e^lr with l in [-0.3, 10], the RTN scale >= 1e-10.
  EXPECT_TRUE(DivisorInRange(static_cast<float>(std::exp(-0.3))));
  EXPECT_TRUE(DivisorInRange(static_cast<float>(std::exp(10.0))));
  EXPECT_TRUE(DivisorInRange(1e-10f));
  // A quotient the one-multiply shortcut x * RN(1/a) gets wrong.
  int shortcut_wrong = 0;
  for (uint32_t s = 0; s < 4096; ++s) {
    const float x = Make(s * 2047u, 0), a = 3.0f;
    if (Bits(x * Reciprocal(a)) != Bits(x / a)) ++shortcut_wrong;
    EXPECT_EQ(Bits(MarksteinQuotient(x, a, Reciprocal(a))), Bits(x / a)) << x;
  }
  EXPECT_GT(shortcut_wrong, 0);
}

// Every dividend significand against divisors whose reciprocal is hardest to round or
// whose significand is special: all ones, neighbours of powers of two, the kernel's
// extreme scales.
TEST(ExactDivTest, EveryDividendSignificandForAdversarialDivisors) {
  const std::vector<float> divisors = {
      Make(1, 0),                          // 1 + 2^-23
      Make(0x7fffffu, 0),                  // 2 - 2^-23: all ones
      Make(0x7ffffeu, 0),                  // 2 - 2^-22
      Make(0x3fffffu, 0),                  // 1.5 - 2^-23
      static_cast<float>(std::exp(10.0)),  // e^kLogHi
      1e-10f,                              // the RTN scale floor
  };
  Tally t;
  for (const float a : divisors) {
    const float inv = Reciprocal(a);
    for (uint32_t s = 0; s < (1u << 23); ++s) {
      t.Fast(Make(s, 0), a, inv);
      // The same significands at the opposite sign and another exponent pair.
      if ((s & 63) == 0) t.Fast(-Make(s, 37), std::ldexp(a, -20));
    }
  }
  EXPECT_EQ(t.checked, static_cast<int64_t>(divisors.size()) * ((1 << 23) + (1 << 17)));
  EXPECT_EQ(t.mismatches, 0) << Describe(t);
}

// The finite part of the proof above: every significand pair (n, m), m in (2^23, 2^24),
// with |n * 2^k - M * m| = |t| <= 8 for an odd M in [2^24, 2^25), i.e. every quotient
// within 8 units of 2^-(k+23) of a rounding midpoint; k = 24 for Q in [1, 2) (n >= m),
// k = 25 for Q in [1/2, 1) (n < m). Returns the pairs checked.
int64_t CheckNearMidpointQuotients(int k, Tally& t) {
  constexpr int kMaxT = 8;
  int64_t pairs = 0;
  for (uint64_t m = (1ull << 23) + 1; m < (1ull << 24); ++m) {
    const int s = std::countr_zero(m);
    if (s > 3) continue;  // 2^s divides t: no |t| <= 8 for s > 3
    const uint64_t odd = m >> s;
    uint64_t inv = odd;  // odd^-1 modulo 2^64 (Newton: each step doubles the correct bits)
    for (int i = 0; i < 6; ++i) inv *= 2 - odd * inv;
    const float a = std::ldexp(static_cast<float>(m), -23);
    const float y = Reciprocal(a);
    const int bits = k - s;  // M * odd == -t / 2^s modulo 2^bits
    for (int64_t tt = -kMaxT; tt <= kMaxT; ++tt) {
      if (tt == 0 || tt % (int64_t{1} << s) != 0) continue;
      const uint64_t first =
          (static_cast<uint64_t>(-tt / (int64_t{1} << s)) * inv) & ((uint64_t{1} << bits) - 1);
      for (uint64_t mm = first; mm < (1ull << 25); mm += uint64_t{1} << bits) {
        if (mm < (1ull << 24) || (mm & 1) == 0) continue;
        const int64_t n = (static_cast<int64_t>(mm * m) + tt) >> k;  // exact: 2^k divides it
        if (n < (1ll << 23) || n >= (1ll << 24)) continue;
        if ((k == 24) != (n >= static_cast<int64_t>(m))) continue;  // Q's binade
        t.Fast(std::ldexp(static_cast<float>(n), -23), a, y);
        ++pairs;
      }
    }
  }
  return pairs;
}

TEST(ExactDivTest, EveryNearMidpointQuotientAtOrAboveOne) {
  Tally t;
  EXPECT_EQ(CheckNearMidpointQuotients(24, t), 25'925'999);
  EXPECT_EQ(t.mismatches, 0) << Describe(t);
}

TEST(ExactDivTest, EveryNearMidpointQuotientBelowOne) {
  Tally t;
  EXPECT_EQ(CheckNearMidpointQuotients(25, t), 20'591'419);
  EXPECT_EQ(t.mismatches, 0) << Describe(t);
}

// Random pairs from the ranges the compress kernel divides in, then from the whole fast
// range with its exponent corners.
TEST(ExactDivTest, RandomPairsOverKernelAndFastRanges) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  auto sig = [&] { return static_cast<uint32_t>(rng()) & 0x7fffffu; };
  auto sign = [&](float v) { return (rng() & 1) ? -v : v; };
  Tally sinkhorn, rtn, full, corners;
  // X / e^lc and (X / e^lc) / e^lr: |x| in [1e-8, 1e5], lc in [-0.3, 10].
  for (int i = 0; i < 2'000'000; ++i) {
    const float l = static_cast<float>(-0.3 + 10.3 * unit(rng));
    const float a = static_cast<float>(std::exp(static_cast<double>(l)));
    const float x = sign(static_cast<float>(std::pow(10.0, -8.0 + 13.0 * unit(rng))));
    sinkhorn.Fast(x, a);
  }
  // RTN: (b - mn) / sc, sc = max((mx - mn) / qmax, 1e-10), b - mn in (0, qmax * sc].
  for (int i = 0; i < 1'500'000; ++i) {
    const float sc = std::max(static_cast<float>(std::pow(10.0, -12.0 + 18.0 * unit(rng))), 1e-10f);
    const float qmax = (rng() & 1) ? 15.0f : 3.0f;
    const float x = static_cast<float>(unit(rng) * qmax) * sc;
    if (DividendInRange(x)) rtn.Fast(x, sc);
  }
  // Anywhere in the fast range.
  for (int i = 0; i < 2'000'000; ++i) {
    const float a = sign(Make(sig(), static_cast<int>(rng() % 80) - 40));
    const float x = sign(Make(sig(), static_cast<int>(rng() % 140) - 70));
    full.Fast(x, a);
  }
  // Smallest dividends over largest divisors and the reverse.
  for (int i = 0; i < 250'000; ++i) {
    full.Fast(sign(Make(sig(), -70)), sign(Make(sig(), 39)));
    corners.Fast(sign(Make(sig(), -70)), sign(Make(sig(), 39)));
    corners.Fast(sign(Make(sig(), 69)), sign(Make(sig(), -40)));
    corners.Fast(sign(Make(sig(), -70)), 0x1p40f);
    corners.Fast(sign(Make(sig(), 69)), -0x1p-40f);
  }
  EXPECT_EQ(sinkhorn.mismatches, 0) << Describe(sinkhorn);
  EXPECT_GT(rtn.checked, 1'450'000);
  EXPECT_EQ(rtn.mismatches, 0) << Describe(rtn);
  EXPECT_EQ(full.mismatches, 0) << Describe(full);
  EXPECT_EQ(corners.mismatches, 0) << Describe(corners);
}

// The guarded helpers equal IEEE division for every input: signed zeros, subnormals,
// values just outside the ranges, infinities, NaN, out-of-range divisors.
TEST(ExactDivTest, GuardedHelpersMatchIeeeDivisionEverywhere) {
  const float denorm = std::numeric_limits<float>::denorm_min();
  std::vector<float> values = {0.0f,
                               denorm,
                               FLT_MIN,
                               0x1p-100f,
                               std::nextafter(0x1p-70f, 0.0f),
                               0x1p-70f,
                               std::nextafter(0x1p-70f, 1.0f),
                               1e-10f,
                               1.0f,
                               3.0f,
                               std::nextafter(0x1p40f, INFINITY),
                               std::nextafter(0x1p70f, 0.0f),
                               0x1p70f,
                               std::nextafter(0x1p70f, INFINITY),
                               FLT_MAX,
                               INFINITY,
                               NAN};
  const size_t n = values.size();
  for (size_t i = 0; i < n; ++i) values.push_back(-values[i]);
  int64_t checked = 0;
  for (const float a : values) {
    const Divisor d = MakeDivisor(a);
    for (const float x : values) {
      ASSERT_TRUE(Same(Divide(x, d), x / a)) << x << " / " << a;
      if (DivisorInRange(a)) {
        ASSERT_TRUE(Same(DivideInRange(x, a, Reciprocal(a)), x / a)) << x << " / " << a;
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, static_cast<int64_t>(values.size() * values.size()));
  // Signed zeros keep their signs on the fast path's shortcut.
  EXPECT_EQ(Bits(DivideInRange(-0.0f, 2.0f, 0.5f)), 0x80000000u);
  EXPECT_EQ(Bits(DivideInRange(0.0f, -2.0f, -0.5f)), 0x80000000u);
  EXPECT_EQ(Bits(DivideInRange(-0.0f, -2.0f, -0.5f)), 0u);
  // Any bit patterns.
  std::mt19937 rng(3);
  int64_t random_checked = 0;
  for (int i = 0; i < 2'000'000; ++i) {
    const float x = FromBits(rng()), a = FromBits(rng());
    ASSERT_TRUE(Same(Divide(x, MakeDivisor(a)), x / a)) << std::hexfloat << x << " / " << a;
    ++random_checked;
  }
  EXPECT_EQ(random_checked, 2'000'000);
}

// The two-scale form: every dividend (random bit patterns, the range edges, zeros, NaN)
// against the two IEEE divisions, for scales across [kScaleLo, kScaleHi].
TEST(ExactDivTest, DivideByTwoScalesMatchesTwoIeeeDivisions) {
  std::mt19937_64 rng(11);
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  auto scale = [&]() -> float {
    switch (rng() % 4) {
      case 0:  // the kernel's e^l, l in [-0.3, 10]
        return static_cast<float>(std::exp(-0.3 + 10.3 * unit(rng)));
      case 1:  // the range ends
        return (rng() & 1) ? kScaleLo : kScaleHi;
      default: {  // anywhere in the range, either sign
        const float v = Make(static_cast<uint32_t>(rng()), static_cast<int>(rng() % 16) - 1);
        return (rng() & 1) ? -v : v;
      }
    }
  };
  const std::vector<float> edges = {0.0f,
                                    -0.0f,
                                    std::numeric_limits<float>::denorm_min(),
                                    std::nextafter(kTwoScaleDividendLo, 0.0f),
                                    kTwoScaleDividendLo,
                                    -kTwoScaleDividendHi,
                                    std::nextafter(kTwoScaleDividendHi, INFINITY),
                                    FLT_MAX,
                                    -INFINITY,
                                    NAN};
  int64_t checked = 0, fast = 0, mismatches = 0;
  for (int i = 0; i < 3'000'000; ++i) {
    const float a = scale(), b = scale();
    float x;
    if (i % 8 == 0) {
      x = edges[rng() % edges.size()];
    } else if (i % 2 == 0) {
      x = FromBits(static_cast<uint32_t>(rng()));  // any float
    } else {
      const float v = Make(static_cast<uint32_t>(rng()), static_cast<int>(rng() % 100) - 50);
      x = (rng() & 1) ? -v : v;  // the checked range
    }
    const float want = (x / a) / b;
    bool same = Same(DivideByTwoScales(x, a, Reciprocal(a), b, Reciprocal(b)), want);
    if (TwoScaleDividendInRange(x)) {
      same = same && Bits(MarksteinTwoScales(x, a, Reciprocal(a), b, Reciprocal(b))) == Bits(want);
      ++fast;
    }
    if (!same && mismatches++ == 0) {
      ADD_FAILURE() << std::hexfloat << "(" << x << " / " << a << ") / " << b;
    }
    ++checked;
  }
  EXPECT_EQ(checked, 3'000'000);
  EXPECT_GT(fast, 1'500'000);
  EXPECT_EQ(mismatches, 0);
}

}  // namespace
}  // namespace kvtier::kernels::exact_div
