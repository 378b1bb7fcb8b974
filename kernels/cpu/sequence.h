// A whole KV sequence of one layer through the CPU codec: split into blocks of G tokens,
// compressed or kept FP16 by the sink policy (DESIGN §3.3), one block payload each
// (DESIGN §4, num_layers = 1); and back: decode to FP16-frame values, or attend.
//
//   SequenceOptions opt;                                   // k4v2_g128, first block FP16
//   auto blocks = EncodeSequence(opt, /*head_dim=*/128, /*kv_heads=*/8, tokens, k, v);
//   std::vector<PayloadView> views = ...ValidatePayload(each)...;
//   KVTIER_RETURN_IF_ERROR(DecodeSequence(views, &k_hat, &v_hat));
//
// Layouts: k, v [tokens][num_kv_heads][head_dim] fp32, NOT rotated (the .npy layout of the
// tools and the per-block layout of a paged cache).
// Thread safety: pure functions.
#ifndef KVTIER_KERNELS_CPU_SEQUENCE_H_
#define KVTIER_KERNELS_CPU_SEQUENCE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/cpu/codec.h"
#include "kernels/format.h"
#include "kernels/payload.h"

namespace kvtier::kernels::cpu {

struct SequenceOptions {
  // Codec preset. Default: k4v2_g128.
  Preset preset = kDefaultPreset;
  // Leading full blocks kept FP16 (attention sinks). Default: 1 (DESIGN §3.3). 0
  // compresses every full block. A partial last block is always FP16.
  int sink_blocks = 1;
  CodecOptions codec;
};

// Validates shapes: a supported head_dim, 1..kMaxKvHeads heads, tokens >= 1.
absl::Status CheckSequenceShape(int head_dim, int num_kv_heads, int tokens);

// Encodes tokens [0, tokens) into ceil(tokens / G) block payloads (one layer each).
// Blocks [0, sink_blocks) and a partial last block are FP16 (flags kFlagSink on block 0
// when it is FP16, kFlagTail on a partial last block); the others are KVarN tiles.
// kInvalidArgument for a bad shape, option or non-finite input.
absl::StatusOr<std::vector<std::vector<uint8_t>>> EncodeSequence(const SequenceOptions& options,
                                                                 int head_dim, int num_kv_heads,
                                                                 int tokens, const float* k,
                                                                 const float* v);

// Raw tile records of every full block, no header, no sink: [blocks][kv_heads][record]
// (the bytes a KVarN paged cache holds). A partial tail is dropped.
absl::StatusOr<std::vector<uint8_t>> EncodeTiles(const TileLayout& layout, int num_kv_heads,
                                                 int tokens, const float* k, const float* v,
                                                 const CodecOptions& options = {});

// The attention view of validated one-layer payloads (borrowing their bytes).
// kInvalidArgument when the blocks disagree on preset, head_dim or heads, have
// num_layers != 1, or a partial block is not last.
absl::StatusOr<std::vector<BlockSection>> SectionsOf(absl::Span<const PayloadView> blocks);

// Dequantizes validated one-layer payloads back to [tokens][kv_heads][D] fp32, NOT
// rotated (fp32 decode, then the inverse rotation). Same errors as SectionsOf.
absl::Status DecodeSequence(absl::Span<const PayloadView> blocks, std::vector<float>* k,
                            std::vector<float>* v);

}  // namespace kvtier::kernels::cpu

#endif  // KVTIER_KERNELS_CPU_SEQUENCE_H_
