// The pieces of the end-to-end demo (`kvtier demo`, README command 1) that the demo, its
// tests and the GPU end-to-end benchmark share: the Mooncake trace, the synthetic KV of a
// request, block payloads built with the CPU codec, exact FP16 attention, and a local
// kvtier-server child process.
//
//   KVTIER_ASSIGN_OR_RETURN(auto trace, ReadTrace(path, /*skip=*/0, /*limit=*/16));
//   DemoModel m;                                    // 4 layers, 8 KV heads, D = 128
//   RequestPlan p = PlanRequest(m, trace[0], ns);   // tokens, tiles, chain hashes
//   KVTIER_ASSIGN_OR_RETURN(auto kv, GenerateHashBlockKv(m, /*hash_id=*/0, /*layer=*/0));
//   KVTIER_ASSIGN_OR_RETURN(auto payload, BuildBlockPayload(m, p, /*block=*/3, kv_source));
//
// Synthetic KV is a pure function of (hash id, layer): two requests that share a trace
// hash block get byte-identical KV, so their compressed blocks deduplicate on the server.
// Thread safety: the free functions are pure; LocalServer is not thread-safe.
#ifndef KVTIER_TOOLS_DEMO_WORKLOAD_H_
#define KVTIER_TOOLS_DEMO_WORKLOAD_H_

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/format.h"
#include "kernels/payload.h"
#include "tools/bench_trace.h"

namespace kvtier::tools {

// The model shard whose KV the demo moves.
struct DemoModel {
  int num_layers = 4;                                // Default: 4.
  int num_kv_heads = 8;                              // Default: 8.
  int num_q_heads = 32;                              // Default: 32 (GQA groups of 4).
  int head_dim = 128;                                // Default: 128.
  kernels::Preset preset = kernels::kDefaultPreset;  // Default: k4v2_g128.
  int sink_blocks = 1;                               // Leading blocks kept FP16. Default: 1.
  int trace_block_tokens = 512;  // tokens per trace hash id. Default: 512 (Mooncake).
  int max_tokens = 0;            // Cap on a request's prompt tokens; 0 = none. Default: 0.

  int group_size() const { return kernels::GetPresetInfo(preset).group_size; }
  // FP16 bytes of `tokens` tokens of K and V over all layers and heads.
  uint64_t Fp16Bytes(uint64_t tokens) const {
    return tokens * num_layers * num_kv_heads * kernels::Fp16BytesPerToken(head_dim);
  }
  // The namespace: model shape + preset + sink policy, so different settings never meet.
  std::string Namespace() const;
};

// kInvalidArgument for an unsupported shape.
absl::Status ValidateModel(const DemoModel& m);

// What a request looks like as codec blocks.
struct RequestPlan {
  int tokens = 0;                         // prompt tokens after max_tokens
  int full_blocks = 0;                    // tokens / G
  int tail_tokens = 0;                    // tokens % G (one FP16 tail block when > 0)
  std::vector<int64_t> hash_ids;          // the trace hash ids covering the tokens
  std::vector<int32_t> token_ids;         // deterministic per (hash id, position)
  std::vector<kernels::ChainHash> chain;  // one per block, tail included
  int num_blocks() const { return static_cast<int>(chain.size()); }
  int BlockTokens(int block, int group_size) const {
    return block < full_blocks ? group_size : tail_tokens;
  }
};

RequestPlan PlanRequest(const DemoModel& m, const TraceRequest& r, const std::string& ns);

// Synthetic post-RoPE KV of one trace hash block and layer (kernels/cpu/synth.h), a pure
// function of (hash_id, layer, model shape)
// (a hash id always sits at the same prompt position, so first_in_prompt is one too): k, v
// [trace_block_tokens][Hk][D] fp32 holding fp16 values, and one decode query q [Hq][D].
struct HashBlockKv {
  std::vector<float> k, v, q;
};
// first_in_prompt: the block at position 0, which holds the attention sink token.
absl::StatusOr<HashBlockKv> GenerateHashBlockKv(const DemoModel& m, int64_t hash_id, int layer,
                                                bool first_in_prompt);

// Returns the KV of (hash block index within the request, layer); lets callers cache.
using KvSource = std::function<absl::StatusOr<const HashBlockKv*>(int hash_index, int layer)>;

// The payload of block `block` of a request, encoded on the CPU: FP16 (rotated) for sink
// blocks and the tail, KVarN tiles otherwise; num_layers sections.
absl::StatusOr<std::vector<uint8_t>> BuildBlockPayload(const DemoModel& m, const RequestPlan& p,
                                                       int block, const KvSource& kv);

// Exact attention (double) of q [Hq][D] over k, v [tokens][Hk][D] (NOT rotated), GQA.
// out: [Hq][D].
void ExactAttention(int num_q_heads, int num_kv_heads, int head_dim, int tokens, const float* q,
                    const float* k, const float* v, std::vector<double>* out);

// Relative L2 error ||a - ref|| / ||ref|| of each of `rows` rows of `dim` values.
std::vector<double> RowRelativeErrors(const float* a, const std::vector<double>& ref, int rows,
                                      int dim);

// One kvtier-server child process on 127.0.0.1 with free ports and embedded defaults.
class LocalServer {
 public:
  struct Options {
    std::string binary;    // path of kvtier-server
    std::string data_dir;  // RocksDB directory; empty = RAM only
    std::string memory_capacity = "2GiB";
    std::string log_path;  // server stdout+stderr; empty = /dev/null
    std::vector<std::string> extra_flags;
  };
  LocalServer() = default;
  ~LocalServer();  // Stop()
  LocalServer(const LocalServer&) = delete;
  LocalServer& operator=(const LocalServer&) = delete;

  // Starts the process and waits (up to 30 s) until its gRPC health check is SERVING.
  // kNotFound when the binary is missing; kUnavailable when it exits or never gets ready.
  absl::Status Start(const Options& options);
  // SIGTERM (the server drains and flushes), wait up to 30 s, then SIGKILL. Idempotent.
  void Stop();

  std::string endpoint() const { return "127.0.0.1:" + std::to_string(grpc_port_); }
  std::string metrics_url() const {
    return "http://127.0.0.1:" + std::to_string(http_port_) + "/metrics";
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int grpc_port_ = 0;
  int http_port_ = 0;
};

// A TCP port on 127.0.0.1 that was free a moment ago (0 on failure).
int FreeLoopbackPort();

// The kvtier-server next to the running kvtier binary (build/service/kvtier-server when
// this is build/tools/kvtier), else the path baked in at build time.
std::string DefaultServerBinary();

}  // namespace kvtier::tools

#endif  // KVTIER_TOOLS_DEMO_WORKLOAD_H_
