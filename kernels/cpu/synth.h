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
//   queries (GQA: q_heads / kv_heads per KV head) = a · mean-key direction + N(0, 1).
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

}  // namespace kvtier::kernels::cpu

#endif  // KVTIER_KERNELS_CPU_SYNTH_H_
