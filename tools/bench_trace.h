// Trace replay against a TieredStore (`kvtier bench trace`): the prefix-cache hit ratio a
// given capacity buys, for FP16 vs compressed (k4v2_g128) blocks.
//
// Input: a Mooncake-format trace (JSONL, one request per line with "input_length" and
// "hash_ids": one id per 512-token block, equal ids = equal prefix blocks). Each request's
// chain is h_0 = ChainSeed(ns), h_i = ChainNext(h_{i-1}, {hash_id_i}). The request looks
// up its chain, reads (Get) the blocks that hit, then puts the blocks that missed.
//
// Sizes: a block's real size comes from the model shape and codec (BlockBytes). To fit in
// memory, every payload is shrunk by `scale`, and the store's capacity is set to exactly
// floor(capacity / block) scaled blocks, so hit ratios and evictions do not depend on the
// scale. Payloads are drawn from a small pool of random payloads (the store never looks
// inside them beyond validation), so RAM use is the pool, not the capacity.
//
//   ReplayOptions o;
//   o.trace_path = "shared/data/mooncake_conversation_trace.jsonl";
//   o.capacity_bytes = uint64_t{1} << 40;
//   absl::StatusOr<ReplayResult> r = ReplayTrace(o);
//
// Thread safety: functions are reentrant; one replay runs on the calling thread.
#ifndef KVTIER_TOOLS_BENCH_TRACE_H_
#define KVTIER_TOOLS_BENCH_TRACE_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace kvtier::tools {

inline constexpr int kTraceBlockTokens = 512;

struct ModelShape {
  std::string name;
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
};

// qwen3-32b (64 layers, 8 KV heads, head_dim 128) and llama3-8b (32, 8, 128).
absl::StatusOr<ModelShape> FindModel(std::string_view name);

enum class TraceCodec { kK4V2G128, kFp16 };
absl::StatusOr<TraceCodec> ParseTraceCodec(std::string_view name);
std::string_view TraceCodecName(TraceCodec c);

// Bytes of one 512-token block of all layers and KV heads (payload header excluded):
// k4v2_g128: 4 tile records of 13824 B (head_dim 128) per head per layer;
// fp16: 512 * 2 (K and V) * 2 B * head_dim per head per layer.
uint64_t BlockBytes(const ModelShape& m, TraceCodec c);

// Parses "123", "64KiB", "1.5GiB", "100GB", "2TiB" (B, KB/MB/GB/TB = 10^3.., KiB.. = 2^10..).
absl::StatusOr<uint64_t> ParseBytes(std::string_view s);
std::string FormatBytes(double bytes);

struct TraceRequest {
  uint64_t input_length = 0;
  std::vector<int32_t> hash_ids;
};
// One JSONL line; kInvalidArgument when "hash_ids" or "input_length" is missing/malformed.
absl::StatusOr<TraceRequest> ParseTraceLine(std::string_view line);
// The first `limit` requests of a file (0: all).
absl::StatusOr<std::vector<TraceRequest>> LoadTrace(const std::string& path, size_t limit = 0);

struct ReplayOptions {
  std::string trace_path;
  // RAM capacity in real (unscaled) bytes. Required.
  uint64_t capacity_bytes = 0;
  // Disk capacity in real bytes; 0 = RAM only. Default: 0.
  uint64_t disk_capacity_bytes = 0;
  // RocksDB directory for the disk tier; empty = a temporary directory. Default: empty.
  std::string disk_path;
  std::string model = "qwen3-32b";
  TraceCodec codec = TraceCodec::kK4V2G128;
  // Every payload (and capacity) is multiplied by this. Default: 1/1024.
  double scale = 1.0 / 1024;
  // Requests replayed (0: all). Default: 0.
  size_t limit = 0;
  // Draw a progress bar on stderr. Default: false.
  bool progress = false;
  // TieredStoreOptions::chain_aware_eviction (false: plain LRU). Default: true.
  bool chain_aware_eviction = true;
};

struct ReplayResult {
  std::string model;
  std::string codec;
  uint64_t capacity_bytes = 0;       // real bytes asked for (RAM)
  uint64_t disk_capacity_bytes = 0;  // real bytes asked for (disk)
  uint64_t block_bytes = 0;          // real bytes of one block
  uint64_t payload_bytes = 0;        // scaled payload actually stored per block
  uint64_t capacity_blocks = 0;      // blocks that fit in RAM
  uint64_t requests = 0;
  uint64_t input_tokens = 0;
  uint64_t hit_tokens = 0;  // prefix tokens found (capped at each request's input length)
  uint64_t blocks = 0;      // blocks looked up
  uint64_t hit_blocks = 0;
  uint64_t puts_stored = 0;
  uint64_t puts_deduplicated = 0;
  uint64_t memory_evictions = 0;
  uint64_t disk_evictions = 0;
  uint64_t memory_blocks = 0;  // resident at the end
  uint64_t disk_blocks = 0;
  uint64_t promotions = 0;
  double seconds = 0;

  double token_hit_ratio() const { return input_tokens ? double(hit_tokens) / input_tokens : 0; }
  double block_hit_ratio() const { return blocks ? double(hit_blocks) / blocks : 0; }
  // Real bytes the resident blocks stand for, per tier.
  uint64_t memory_stored_bytes() const { return memory_blocks * block_bytes; }
  uint64_t disk_stored_bytes() const { return disk_blocks * block_bytes; }
};

absl::StatusOr<ReplayResult> ReplayTrace(const ReplayOptions& options);
// Same, on requests already loaded (options.trace_path and limit are ignored).
absl::StatusOr<ReplayResult> ReplayRequests(const std::vector<TraceRequest>& requests,
                                            const ReplayOptions& options);

}  // namespace kvtier::tools

#endif  // KVTIER_TOOLS_BENCH_TRACE_H_
