// Portable IEEE binary16 <-> binary32 conversion (no compiler _Float16 needed), used for
// every fp16 field the codec stores. FloatToHalf rounds to nearest, ties to even, turns
// overflow into infinity and keeps subnormals: the same result as a hardware cvt.rn.f16
// and as numpy's astype(float16).
//
//   uint16_t h = FloatToHalf(0.1f);   // 0x2e66
//   float f = HalfToFloat(h);         // 0.0999755859375f
//
// Thread safety: pure functions.
#ifndef KVTIER_KERNELS_CPU_HALF_H_
#define KVTIER_KERNELS_CPU_HALF_H_

#include <bit>
#include <cmath>
#include <cstdint>

namespace kvtier::kernels::cpu {

inline uint16_t FloatToHalf(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7fffffffu;
  if (ax >= 0x7f800000u) {  // inf or NaN (NaN stays a quiet NaN)
    return static_cast<uint16_t>(sign | 0x7c00u | (ax > 0x7f800000u ? 0x0200u : 0u));
  }
  if (ax >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // >= 65520: inf
  if (ax < 0x38800000u) {
    // Below 2^-14: a subnormal half (or zero) in units of 2^-24. The scaling by 2^24 is
    // exact, and nearbyint rounds half to even in the default rounding mode; a result of
    // 1024 is exactly the encoding of the smallest normal half.
    const float scaled = std::bit_cast<float>(ax) * 16777216.0f;
    return static_cast<uint16_t>(sign | static_cast<uint16_t>(std::nearbyint(scaled)));
  }
  // Normal: rebias the exponent (127 -> 15) and round the 13 dropped mantissa bits.
  uint32_t h = (ax >> 13) - (112u << 10);
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;  // a carry may reach inf: right
  return static_cast<uint16_t>(sign | h);
}

inline float HalfToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t mant = h & 0x3ffu;
  if (exp == 0) {
    // Zero or subnormal: mant * 2^-24, exact in fp32.
    const float v = static_cast<float>(mant) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000u | (mant << 13));
  return std::bit_cast<float>(sign | ((exp + 112u) << 23) | (mant << 13));
}

}  // namespace kvtier::kernels::cpu

#endif  // KVTIER_KERNELS_CPU_HALF_H_
