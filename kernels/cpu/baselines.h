// Comparison baselines for the accuracy tables (not part of the block format):
//   - plain asymmetric RTN, KIVI-style: keys per channel over groups of 128 tokens, values
//     per token over groups of 128 channels (min(128, D)), fp16 scale and zero point per
//     group, no rotation, no normalization;
//   - FP8 e4m3 (round to nearest even, saturating at 448) with one fp32 scale per KV head
//     for K and one for V (amax / 448).
// Both keep the same tokens in FP16 as the KVarN sink policy (tokens outside
// [begin, end)), so the comparison isolates the quantizer.
// Layout: k, v [tokens][num_kv_heads][head_dim] fp32. Thread safety: pure functions.
#ifndef KVTIER_KERNELS_CPU_BASELINES_H_
#define KVTIER_KERNELS_CPU_BASELINES_H_

#include <vector>

namespace kvtier::kernels::cpu {

struct KvShape {
  int tokens = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
};

struct BaselineResult {
  std::vector<float> k, v;      // dequantized, [tokens][num_kv_heads][head_dim]
  double bits_per_element = 0;  // including scales, zero points and FP16 tokens
};

// Tokens [begin, end) are quantized, the others rounded to fp16.
BaselineResult RtnBaseline(const KvShape& shape, const float* k, const float* v, int key_bits,
                           int value_bits, int begin, int end, int group = 128);
BaselineResult Fp8Baseline(const KvShape& shape, const float* k, const float* v, int begin,
                           int end);

// The e4m3 value nearest to x (ties to even), saturating at ±448.
double RoundToE4m3(double x);

}  // namespace kvtier::kernels::cpu

#endif  // KVTIER_KERNELS_CPU_BASELINES_H_
