// Correctly rounded fp32 division x / a by a divisor that is reused many times, without a
// division per element: the KVarN compress kernel divides every tile element by the
// column and row scales e^lc, e^lr and by the row's RTN scale, and must reproduce the
// CPU reference's IEEE divisions bit for bit (kernels/cpu/codec_internal.h).
//
// Per divisor, once: inv = RN(1/a) (IEEE reciprocal, correctly rounded). Per element
// (Markstein's correction; RN = round to nearest even, every step one IEEE operation):
//   q0 = RN(x * inv)          // within 1.5 ulp of x/a
//   r  = fma(-q0, a, x)       // RN(x - q0*a): the remainder, exact unless q0 is > 1 ulp off
//   q  = fma(r, inv, q0)      // == RN(x / a)
// This is Markstein's correction (IBM J. Res. Dev. 34(1), 1990). His theorem (inv within
// half an ulp of 1/a and q0 within one ulp of x/a give RN(q0 + r*inv) == RN(x/a)) covers
// quotients in [1, 2) times a power of two; below that q0 = RN(x * RN(1/a)) can be 1.008
// ulp off (x = 0x1.fbfffep+0, a = 0x1.fffffep+0) and r then need not be exact. The
// proof in kernels/cpu/exact_div_test.cc covers both: an error bound leaves only
// quotients within ~2^-22 ulp of a rounding midpoint, and the test checks every one of
// those significand pairs (46.5 M) against IEEE division: zero mismatches. The
// fast-path ranges below keep every intermediate a normal number: |a| in [2^-40, 2^40]
// and |x| in [2^-70, 2^70] give |q0|, |q| in about [2^-110, 2^110] and r's quantum
// >= 2^(e(x)-47) >= 2^-117. Outside them (zero, tiny or huge dividends, NaN,
// infinities, out-of-range divisors) the helpers fall back to a plain IEEE division.
//
//   const float inv = exact_div::Reciprocal(a);   // once per divisor
//   float q = exact_div::DivideInRange(x, a, inv);  // == x / a, for |a| in the range
//
// Host and device: on the device the operations are the __f*_rn intrinsics (no
// contraction whatever -fmad says); on the host plain float operations and std::fma
// (the x86-64 and AArch64 float operations are IEEE binary32, rounded to nearest).
//
// Thread safety: pure functions.
#ifndef KVTIER_KERNELS_CPU_EXACT_DIV_H_
#define KVTIER_KERNELS_CPU_EXACT_DIV_H_

#include <cmath>

#if defined(__CUDACC__)
#define KVTIER_EXACT_DIV_FN __host__ __device__ __forceinline__
#else
#define KVTIER_EXACT_DIV_FN inline
#endif

namespace kvtier::kernels::exact_div {

// The divisor range of the fast path: |a| in [kDivisorLo, kDivisorHi].
inline constexpr float kDivisorLo = 0x1p-40f;
inline constexpr float kDivisorHi = 0x1p40f;
// The dividend range of the fast path: |x| in [kDividendLo, kDividendHi].
inline constexpr float kDividendLo = 0x1p-70f;
inline constexpr float kDividendHi = 0x1p70f;

// One IEEE operation each, rounded to nearest even.
KVTIER_EXACT_DIV_FN float Mul(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

KVTIER_EXACT_DIV_FN float Fma(float a, float b, float c) {
#if defined(__CUDA_ARCH__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

KVTIER_EXACT_DIV_FN float IeeeDiv(float x, float a) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(x, a);
#else
  return x / a;
#endif
}

KVTIER_EXACT_DIV_FN float Abs(float a) {
#if defined(__CUDA_ARCH__)
  return fabsf(a);
#else
  return std::fabs(a);
#endif
}

// RN(1/a): the correctly rounded reciprocal.
KVTIER_EXACT_DIV_FN float Reciprocal(float a) {
#if defined(__CUDA_ARCH__)
  return __frcp_rn(a);
#else
  return 1.0f / a;
#endif
}

KVTIER_EXACT_DIV_FN bool DivisorInRange(float a) {
  const float m = Abs(a);
  return m >= kDivisorLo && m <= kDivisorHi;  // false for NaN
}

KVTIER_EXACT_DIV_FN bool DividendInRange(float x) {
  const float m = Abs(x);
  return m >= kDividendLo && m <= kDividendHi;  // false for 0 and NaN
}

// Markstein's quotient, no range checks: RN(x / a) when DivisorInRange(a),
// DividendInRange(x) and inv == Reciprocal(a).
KVTIER_EXACT_DIV_FN float MarksteinQuotient(float x, float a, float inv) {
  const float q0 = Mul(x, inv);
  const float r = Fma(-q0, a, x);
  return Fma(r, inv, q0);
}

// RN(x / a), bit for bit IeeeDiv(x, a) for every x (signed zeros, NaN and infinities
// included). Precondition: DivisorInRange(a) and inv == Reciprocal(a).
KVTIER_EXACT_DIV_FN float DivideInRange(float x, float a, float inv) {
  const float q0 = Mul(x, inv);
  float q = Fma(Fma(-q0, a, x), inv, q0);
  if (!DividendInRange(x)) {
    // x * inv is the exactly signed zero for x = +-0 (inv is finite and nonzero).
    q = x == 0.0f ? q0 : IeeeDiv(x, a);
  }
  return q;
}

// Two chained divisions RN(RN(x / a) / b) by scales a, b with |a|, |b| in [kScaleLo,
// kScaleHi] (the compress kernel's Y = (X / e^lc) / e^lr, e^l in [e^-0.3, e^10]) with one
// range check: for |x| in [kTwoScaleDividendLo, kTwoScaleDividendHi], |RN(x / a)| lies in
// [2^-65, 2^51], inside the dividend range, so both quotients take the fast path.
inline constexpr float kScaleLo = 0x1p-1f;
inline constexpr float kScaleHi = 0x1p15f;
inline constexpr float kTwoScaleDividendLo = 0x1p-50f;
inline constexpr float kTwoScaleDividendHi = 0x1p50f;

KVTIER_EXACT_DIV_FN bool TwoScaleDividendInRange(float x) {
  const float m = Abs(x);
  return m >= kTwoScaleDividendLo && m <= kTwoScaleDividendHi;  // false for 0 and NaN
}

// No range check: RN(RN(x / a) / b) when TwoScaleDividendInRange(x), |a|, |b| in
// [kScaleLo, kScaleHi], inva == Reciprocal(a) and invb == Reciprocal(b).
KVTIER_EXACT_DIV_FN float MarksteinTwoScales(float x, float a, float inva, float b, float invb) {
  return MarksteinQuotient(MarksteinQuotient(x, a, inva), b, invb);
}

// RN(RN(x / a) / b), bit for bit IeeeDiv(IeeeDiv(x, a), b) for every x. Precondition:
// |a|, |b| in [kScaleLo, kScaleHi], inva == Reciprocal(a), invb == Reciprocal(b).
KVTIER_EXACT_DIV_FN float DivideByTwoScales(float x, float a, float inva, float b, float invb) {
  float q = MarksteinTwoScales(x, a, inva, b, invb);
  if (!TwoScaleDividendInRange(x)) {
    q = x == 0.0f ? Mul(Mul(x, inva), invb) : IeeeDiv(IeeeDiv(x, a), b);
  }
  return q;
}

// A divisor prepared once for many divisions.
struct Divisor {
  float a;
  float inv;
  bool in_range;
};

KVTIER_EXACT_DIV_FN Divisor MakeDivisor(float a) {
  return Divisor{a, Reciprocal(a), DivisorInRange(a)};
}

// RN(x / d.a), bit for bit IeeeDiv(x, d.a), for every x and every divisor.
KVTIER_EXACT_DIV_FN float Divide(float x, const Divisor& d) {
  return d.in_range ? DivideInRange(x, d.a, d.inv) : IeeeDiv(x, d.a);
}

}  // namespace kvtier::kernels::exact_div

#undef KVTIER_EXACT_DIV_FN

#endif  // KVTIER_KERNELS_CPU_EXACT_DIV_H_
