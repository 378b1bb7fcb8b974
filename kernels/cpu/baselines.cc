#include "kernels/cpu/baselines.h"

#include <algorithm>
#include <cmath>

#include "kernels/cpu/half.h"

namespace kvtier::kernels::cpu {
namespace {

float Fp16(float x) { return HalfToFloat(FloatToHalf(x)); }

size_t Index(const KvShape& s, int t, int h, int c) {
  return (static_cast<size_t>(t) * s.num_kv_heads + h) * s.head_dim + c;
}

// Asymmetric RTN of n values at x[i * stride] in place, with fp16 scale and zero point.
void RtnGroup(float* x, int n, size_t stride, int bits) {
  float lo = x[0], hi = x[0];
  for (int i = 1; i < n; ++i) {
    lo = std::min(lo, x[i * stride]);
    hi = std::max(hi, x[i * stride]);
  }
  const float qmax = static_cast<float>((1 << bits) - 1);
  float scale = Fp16(std::max((hi - lo) / qmax, 1e-10f));
  if (scale == 0.0f) scale = 0x1p-24f;  // the smallest fp16 subnormal
  const float zero = Fp16(lo);
  for (int i = 0; i < n; ++i) {
    const float q = std::clamp(std::nearbyint((x[i * stride] - zero) / scale), 0.0f, qmax);
    x[i * stride] = q * scale + zero;
  }
}

void RoundFp16Outside(const KvShape& s, int begin, int end, std::vector<float>& x) {
  for (int t = 0; t < s.tokens; ++t) {
    if (t >= begin && t < end) continue;
    for (int i = 0; i < s.num_kv_heads * s.head_dim; ++i) {
      float& e = x[static_cast<size_t>(t) * s.num_kv_heads * s.head_dim + i];
      e = Fp16(e);
    }
  }
}

}  // namespace

BaselineResult RtnBaseline(const KvShape& s, const float* k, const float* v, int key_bits,
                           int value_bits, int begin, int end, int group) {
  const size_t n = static_cast<size_t>(s.tokens) * s.num_kv_heads * s.head_dim;
  BaselineResult r;
  r.k.assign(k, k + n);
  r.v.assign(v, v + n);
  begin = std::clamp(begin, 0, s.tokens);
  end = std::clamp(end, begin, s.tokens);
  double bits = 0;
  const size_t token_stride = static_cast<size_t>(s.num_kv_heads) * s.head_dim;
  for (int h = 0; h < s.num_kv_heads; ++h) {
    for (int t0 = begin; t0 < end; t0 += group) {
      const int len = std::min(group, end - t0);
      for (int c = 0; c < s.head_dim; ++c) {
        RtnGroup(r.k.data() + Index(s, t0, h, c), len, token_stride, key_bits);
        bits += static_cast<double>(key_bits) * len + 32;
      }
    }
    const int vgroup = std::min(group, s.head_dim);
    for (int t = begin; t < end; ++t) {
      for (int c0 = 0; c0 < s.head_dim; c0 += vgroup) {
        const int len = std::min(vgroup, s.head_dim - c0);
        RtnGroup(r.v.data() + Index(s, t, h, c0), len, 1, value_bits);
        bits += static_cast<double>(value_bits) * len + 32;
      }
    }
  }
  RoundFp16Outside(s, begin, end, r.k);
  RoundFp16Outside(s, begin, end, r.v);
  bits += 2.0 * 16.0 * (s.tokens - (end - begin)) * token_stride;
  r.bits_per_element = bits / (2.0 * n);
  return r;
}

double RoundToE4m3(double x) {
  const double a = std::abs(x);
  if (a == 0 || std::isnan(a)) return x;
  int e;
  std::frexp(a, &e);                    // a = m · 2^e, m in [0.5, 1): floor(log2 a) = e - 1
  const int exp = std::max(e - 1, -6);  // below 2^-6: subnormal spacing 2^-9
  const double step = std::ldexp(1.0, exp - 3);
  const double r = std::min(std::nearbyint(a / step) * step, 448.0);
  return x < 0 ? -r : r;
}

BaselineResult Fp8Baseline(const KvShape& s, const float* k, const float* v, int begin, int end) {
  const size_t n = static_cast<size_t>(s.tokens) * s.num_kv_heads * s.head_dim;
  BaselineResult r;
  r.k.assign(k, k + n);
  r.v.assign(v, v + n);
  begin = std::clamp(begin, 0, s.tokens);
  end = std::clamp(end, begin, s.tokens);
  for (std::vector<float>* x : {&r.k, &r.v}) {
    for (int h = 0; h < s.num_kv_heads; ++h) {
      float amax = 0;
      for (int t = begin; t < end; ++t) {
        for (int c = 0; c < s.head_dim; ++c)
          amax = std::max(amax, std::abs((*x)[Index(s, t, h, c)]));
      }
      const float scale = amax > 0 ? amax / 448.0f : 1.0f;
      for (int t = begin; t < end; ++t) {
        for (int c = 0; c < s.head_dim; ++c) {
          float& e = (*x)[Index(s, t, h, c)];
          e = static_cast<float>(RoundToE4m3(e / scale) * scale);
        }
      }
    }
  }
  RoundFp16Outside(s, begin, end, r.k);
  RoundFp16Outside(s, begin, end, r.v);
  const double token_stride = static_cast<double>(s.num_kv_heads) * s.head_dim;
  const double bits =
      2.0 * (8.0 * (end - begin) * token_stride + 16.0 * (s.tokens - (end - begin)) * token_stride +
             32.0 * s.num_kv_heads);
  r.bits_per_element = bits / (2.0 * n);
  return r;
}

}  // namespace kvtier::kernels::cpu
