#include "kernels/cpu/evaluate.h"

#include <time.h>

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu/baselines.h"

namespace kvtier::kernels::cpu {

absl::StatusOr<std::vector<MethodResult>> EvaluateCodecs(const AttentionInputs& in,
                                                         const SequenceOptions& options,
                                                         bool include_baselines) {
  KVTIER_RETURN_IF_ERROR(CheckSequenceShape(in.head_dim, in.num_kv_heads, in.tokens));
  if (in.num_q_heads < 1 || in.num_q_heads % in.num_kv_heads != 0 || in.num_queries < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "q_heads ", in.num_q_heads, " is not a positive multiple of kv_heads ", in.num_kv_heads));
  }
  // CPU time of this thread: on a shared machine wall time would measure the neighbours.
  auto now = [] {
    timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
  };
  const double fp16_mb = 2.0 * 2.0 * in.tokens * in.num_kv_heads * in.head_dim / 1e6;
  const PresetInfo info = GetPresetInfo(options.preset);
  std::vector<MethodResult> out;

  MethodResult kvarn;
  kvarn.name = absl::StrCat("kvarn ", std::string(PresetName(options.preset)));
  const double t0 = now();
  KVTIER_ASSIGN_OR_RETURN(
      auto payloads, EncodeSequence(options, in.head_dim, in.num_kv_heads, in.tokens, in.k, in.v));
  const double t1 = now();
  std::vector<PayloadView> views;
  for (const auto& p : payloads) {
    KVTIER_ASSIGN_OR_RETURN(PayloadView view, ValidatePayload(p));
    views.push_back(view);
    kvarn.stored_bytes += p.size();
  }
  std::vector<float> k_hat, v_hat;
  const double t2 = now();
  KVTIER_RETURN_IF_ERROR(DecodeSequence(views, &k_hat, &v_hat));
  const double t3 = now();
  kvarn.encode_mb_per_s = fp16_mb / std::max(t1 - t0, 1e-9);
  kvarn.decode_mb_per_s = fp16_mb / std::max(t3 - t2, 1e-9);
  const double elements = 2.0 * in.tokens * in.num_kv_heads * in.head_dim;
  kvarn.metrics =
      ComputeMetrics(in, k_hat.data(), v_hat.data(), kvarn.stored_bytes * 8.0 / elements);
  out.push_back(kvarn);
  if (!include_baselines) return out;

  // The tokens the sink policy compresses: full blocks from sink_blocks on.
  const int g = info.group_size;
  const int full = in.tokens / g;
  const int begin = std::min(options.sink_blocks, full) * g, end = full * g;
  const KvShape shape{in.tokens, in.num_kv_heads, in.head_dim};
  {
    BaselineResult r = RtnBaseline(shape, in.k, in.v, info.key_bits, info.value_bits, begin, end);
    MethodResult m;
    m.name = absl::StrCat("rtn k", info.key_bits, "v", info.value_bits, " (kivi)");
    m.metrics = ComputeMetrics(in, r.k.data(), r.v.data(), r.bits_per_element);
    out.push_back(m);
  }
  {
    BaselineResult r = Fp8Baseline(shape, in.k, in.v, begin, end);
    MethodResult m;
    m.name = "fp8 e4m3";
    m.metrics = ComputeMetrics(in, r.k.data(), r.v.data(), r.bits_per_element);
    out.push_back(m);
  }
  return out;
}

}  // namespace kvtier::kernels::cpu
