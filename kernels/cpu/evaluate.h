// KVarN against the baselines on one KV cache (what `kvtier codec eval` and `demo` print):
// encodes through the real block payloads, decodes, and computes CodecMetrics for each
// method; measures the CPU codec's encode/decode throughput on the way.
//
//   auto rows = EvaluateCodecs(inputs, SequenceOptions{});   // KVarN, RTN, FP8
//
// Thread safety: pure function (single-threaded).
#ifndef KVTIER_KERNELS_CPU_EVALUATE_H_
#define KVTIER_KERNELS_CPU_EVALUATE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/metrics.h"
#include "kernels/cpu/sequence.h"

namespace kvtier::kernels::cpu {

struct MethodResult {
  std::string name;  // "kvarn k4v2_g128", "rtn k4v2 (kivi)", "fp8 e4m3"
  CodecMetrics metrics;
  // FP16 K+V MB (1e6 B) per second of this thread's CPU time (one core); KVarN only.
  double encode_mb_per_s = 0;  // EncodeSequence: rotate, normalize, quantize, pack, payloads
  double decode_mb_per_s = 0;  // DecodeSequence: dequantize + unrotate to fp32
  size_t stored_bytes = 0;     // KVarN: all payload bytes incl. headers
};

// kInvalidArgument for a bad shape or non-finite input. Sink/tail policy from `options`
// applies to every method.
absl::StatusOr<std::vector<MethodResult>> EvaluateCodecs(const AttentionInputs& in,
                                                         const SequenceOptions& options,
                                                         bool include_baselines = true);

}  // namespace kvtier::kernels::cpu

#endif  // KVTIER_KERNELS_CPU_EVALUATE_H_
