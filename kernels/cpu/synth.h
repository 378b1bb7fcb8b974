// Synthetic post-RoPE KV caches with the statistics that make KV quantization hard
// (docs/codec.md describes the model). For the codec tools, tests and benchmarks: never
// time or test a codec on all-zero data.
//
//   SynthKv kv = GenerateSynthKv({.tokens = 2048, .num_kv_heads = 4, .num_q_heads = 16});
//   // kv.k, kv.v: [tokens][kv_heads][D]; kv.q: [queries][q_heads][D]
//
// Per KV head, with pairs (i, i + D/2) rotated by RoPE at frequency 10000^(-2i/D):
//   keys   = RoPE_t(bias + s ⊙ ε_t), ε Student-t (ν = 4, unit variance), s the channel
//            stds (0.5..1.5), with 2..D/32 outlier pairs in the lowest-frequency quarter
//            at 5..20× the median std (and a larger bias there);
//   token 0 (attention sink) has a key aligned with the head's queries and a small value;
//   values = N(b_v, s_v²) per channel (s_v in 0.8..1.2, b_v ~ N(0, 0.25)), with 1% outlier
//            tokens scaled 4..8×;
//   queries (GQA: q_heads / kv_heads per KV head) = a · mean-key direction + N(0, 1),
//            scaled so that the non-sink logits q·k/√D have std 1.25 (the temperature,
//            calibrated on the attention statistics MeasureSynthAttention reports).
// All values are rounded to fp16, as a paged cache holds them. Deterministic per seed.
// Thread safety: pure function.
#ifndef KVTIER_KERNELS_CPU_SYNTH_H_
#define KVTIER_KERNELS_CPU_SYNTH_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace kvtier::kernels::cpu {

struct SynthOptions {
  int tokens = 2048;     // Default: 2048.
  int num_kv_heads = 4;  // Default: 4.
  int num_q_heads = 16;  // Default: 16 (GQA groups of 4). A multiple of num_kv_heads.
  int head_dim = 128;    // Default: 128. 64, 128 or 256.
  int num_queries = 8;   // decode steps (independent query draws). Default: 8.
  uint64_t seed = 1;     // Default: 1.
};

struct SynthKv {
  int tokens = 0, num_kv_heads = 0, num_q_heads = 0, head_dim = 0, num_queries = 0;
  std::vector<float> k, v;  // [tokens][num_kv_heads][head_dim]
  std::vector<float> q;     // [num_queries][num_q_heads][head_dim]
};

// kInvalidArgument for out-of-range options.
absl::StatusOr<SynthKv> GenerateSynthKv(const SynthOptions& options);

// Attention statistics of a cache, over every (query, query head) row of softmax(q·k/√D)
// (float64), to check the generator against published statistics of real models.
struct SynthAttentionStats {
  double logit_std = 0;          // mean over rows of the std of the non-sink logits
  double logit_max_z = 0;        // mean over rows of (max non-sink logit − mean) / std
  double sink_share = 0;         // mean attention weight of token 0
  double eff_tokens = 0;         // median over rows of exp(entropy) of the full row
  double eff_tokens_p10 = 0;     // 10th percentile of exp(entropy)
  double eff_tokens_nosink = 0;  // median exp(entropy) of the row renormalized without token 0
  double participation = 0;      // median 1 / Σ p_t² over the non-sink renormalized row
};
SynthAttentionStats MeasureSynthAttention(const SynthKv& kv);

}  // namespace kvtier::kernels::cpu

#endif  // KVTIER_KERNELS_CPU_SYNTH_H_
