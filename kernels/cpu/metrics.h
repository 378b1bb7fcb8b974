// Accuracy metrics of a lossy KV cache against the original, each computed in float64
// (the reference attention runs in double on the original fp32 values):
//   k_rel_error, v_rel_error: ||X - X̂||_F / ||X||_F over the whole cache;
//   logit error e = q·(k - k̂)/√D for every (query, q head, token): mean |e|, std of e,
//     max |e|;
//   attention output o = softmax(q·K/√D)·V per (query, q head): relative L2
//     sqrt(Σ||o - ô||² / Σ||o||²), mean cosine similarity, and KL(p || p̂) of the
//     attention rows (mean and max);
//   bits_per_element: whatever the caller passes (storage incl. metadata).
// GQA: query head h attends KV head h / (q_heads / kv_heads). Queries attend every token.
// Thread safety: pure functions.
#ifndef KVTIER_KERNELS_CPU_METRICS_H_
#define KVTIER_KERNELS_CPU_METRICS_H_

namespace kvtier::kernels::cpu {

struct AttentionInputs {
  int tokens = 0, num_kv_heads = 0, num_q_heads = 0, head_dim = 0, num_queries = 0;
  const float* k = nullptr;  // [tokens][num_kv_heads][head_dim], borrowed
  const float* v = nullptr;  // [tokens][num_kv_heads][head_dim], borrowed
  const float* q = nullptr;  // [num_queries][num_q_heads][head_dim], borrowed
};

struct CodecMetrics {
  double k_rel_error = 0, v_rel_error = 0;
  double logit_error_mean = 0, logit_error_std = 0, logit_error_max = 0;
  double attn_rel_l2 = 0, attn_cosine = 0;
  double attn_kl_mean = 0, attn_kl_max = 0;
  double bits_per_element = 0;
};

// k_hat, v_hat: the lossy cache, same layout as in.k / in.v.
// Precondition: num_q_heads is a positive multiple of num_kv_heads.
CodecMetrics ComputeMetrics(const AttentionInputs& in, const float* k_hat, const float* v_hat,
                            double bits_per_element);

}  // namespace kvtier::kernels::cpu

#endif  // KVTIER_KERNELS_CPU_METRICS_H_
