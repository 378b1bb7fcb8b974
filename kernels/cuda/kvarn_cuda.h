// KVarN codec on the GPU (DESIGN.md §3): compress paged FP16/BF16 KV blocks into tile
// records, fused decode attention over a paged cache of tile records and FP16 pages, and
// decompress. Plain C++ host API (CUDA runtime types only); every launcher is
// asynchronous on `stream`, returns the launch's cudaError_t, and never synchronizes the
// host, so the attention launch can be captured in a CUDA graph.
//
//   CompressParams c;                        // fill pointers, strides, block ids
//   KVTIER_CUDA_CHECK(Compress(c, stream));  // records byte-identical in layout to the CPU codec
//
//   DecodeAttentionParams a;                 // q, page tables, seq lens, out
//   a.workspace_bytes = DecodeAttentionWorkspaceBytes(a.batch, a.num_q_heads, a.head_dim,
//                                                     a.max_seq_len, a.preset);
//   cudaMalloc(&a.workspace, a.workspace_bytes);
//   DecodeAttention(a, stream);
//
// Supported: head_dim 64, 128 and 256 with every preset (kernels/format.h) in every
// launcher; attention at 64 and 256 runs a CUDA-core kernel (correct, not tuned), at 128
// the tensor-core one. Compress writes records byte-identical to cpu::EncodeTile.
// Thread safety: the launchers are stateless apart from a per-device
// cache of the SM count (set once, read concurrently) and may be called from any thread.
#ifndef KVTIER_KERNELS_CUDA_KVARN_CUDA_H_
#define KVTIER_KERNELS_CUDA_KVARN_CUDA_H_

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/format.h"

namespace kvtier::kernels::cuda {

// Element type of an uncompressed KV cache or of q/out.
enum class DType : int32_t { kFloat16 = 0, kBFloat16 = 1 };

// ---------------------------------------------------------------------------------------
// Compress: paged FP16/BF16 K and V -> tile records.
//
// Source element (layer l, source block b, token t, kv head h, channel c) of K is at
//   k[l*src_layer_stride + b*src_block_stride + t*src_token_stride + h*src_head_stride
//     + c*src_channel_stride]          (strides in elements, dtype `dtype`)
// and likewise for V. vLLM's [num_blocks][block_size][num_kv_heads][head_dim] layout is
// block_stride = G*Hk*D, token_stride = Hk*D, head_stride = D, channel_stride = 1. The
// fast path (16-byte loads) needs channel_stride == 1, every other stride a multiple of
// 8 and 16-byte aligned bases; anything else takes a slower element-wise path.
// The record of (layer l, list entry i, kv head h) is written to
//   dst + l*dst_layer_stride + i*dst_block_stride + h*record_bytes     (bytes)
// so with dst_block_stride = Hk*record_bytes one list entry's records form exactly one
// payload layer section ([Hk][record], kernels/payload.h). dst may be device memory or
// mapped pinned host memory. Records are in the rotated frame, padding zeroed.
// Inputs must be finite (non-finite inputs give unspecified records; the CPU codec
// rejects them).
struct CompressParams {
  Preset preset = kDefaultPreset;
  int head_dim = 128;    // D: 64, 128 or 256
  int num_kv_heads = 0;  // Hk >= 1
  int num_layers = 1;    // >= 1
  int num_blocks = 0;    // entries in block_ids (0: nothing to do)
  DType dtype = DType::kFloat16;
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t src_layer_stride = 0;
  int64_t src_block_stride = 0;
  int64_t src_token_stride = 0;
  int64_t src_head_stride = 0;
  int64_t src_channel_stride = 1;
  const int32_t* block_ids = nullptr;  // device [num_blocks]: source block of each entry
  uint8_t* dst = nullptr;
  int64_t dst_layer_stride = 0;  // bytes
  int64_t dst_block_stride = 0;  // bytes
  int iterations = 8;            // Sinkhorn iterations (DESIGN §3.1). Default: 8. 0..64.
};

// cudaErrorInvalidValue for bad arguments (nothing launched), else the launch's error.
cudaError_t Compress(const CompressParams& p, cudaStream_t stream);

// ---------------------------------------------------------------------------------------
// Decompress: tile records -> FP16/BF16 K and V (DESIGN §3.1 reconstruction, fp32
// arithmetic, rounded once to dtype). Record of (layer l, entry i, head h) is read at
//   src + l*src_layer_stride + i*src_block_stride + h*record_bytes;
// K/V element (l, i, t, h, c) is written at the strided address of CompressParams (with
// block index block_ids[i], or i when block_ids is null). rotated: write the rotated
// frame (what the CPU DecodeTile returns) or, when false, un-rotate (x·H) first.
struct DecompressParams {
  Preset preset = kDefaultPreset;
  int head_dim = 128;
  int num_kv_heads = 0;
  int num_layers = 1;
  int num_blocks = 0;
  const uint8_t* src = nullptr;
  int64_t src_layer_stride = 0;  // bytes
  int64_t src_block_stride = 0;  // bytes
  DType dtype = DType::kFloat16;
  void* k = nullptr;
  void* v = nullptr;
  int64_t dst_layer_stride = 0;  // elements
  int64_t dst_block_stride = 0;
  int64_t dst_token_stride = 0;
  int64_t dst_head_stride = 0;
  const int32_t* block_ids = nullptr;  // device [num_blocks] or null (identity)
  bool rotated = true;
};

cudaError_t Decompress(const DecompressParams& p, cudaStream_t stream);

// ---------------------------------------------------------------------------------------
// Fused decode attention over one layer of a paged cache.
//
// Logical block j (tokens [j*G, j*G+G)) of request b is block_tables[b*block_table_stride+j]:
//   entry >= 0: a compressed page, at tile_pages + entry*tile_page_stride (bytes), holding
//               [num_kv_heads][record] (one payload layer section); always G tokens.
//   entry <  0: an FP16 page (sink, tail, not-yet-committed block), page id -entry-1, at
//               fp16_pages + id*fp16_page_stride (bytes), holding the payload's FP16
//               section for n = min(G, seq_len - j*G) tokens:
//               [num_kv_heads][K n×D][V n×D] fp16, rotated frame, packed for that n (so a
//               payload layer section is copied in with one memcpy).
// q:   [batch][num_q_heads * num_query_tokens][D] of q_dtype, NOT rotated; row
//      (b, i*num_q_heads + hq) is query token i of request b (multi-query variant).
// out: same shape and dtype as q, NOT rotated. lse (optional): [batch][num_q_heads *
//      num_query_tokens] fp32, natural log of the sum of exp(scaled scores).
// GQA: query head hq reads kv head hq / (num_q_heads / num_kv_heads).
// Multi-query (num_query_tokens = T in 1..8): the T query tokens are the last T tokens of
// the sequence (already in the cache): query i attends to positions < seq_len - T + 1 + i.
// seq_lens[b] in [0, max_seq_len]; a request with no visible token gets out = 0 and
// lse = -inf. Every block touched must be mapped.
struct DecodeAttentionParams {
  Preset preset = kDefaultPreset;
  int head_dim = 128;
  int num_q_heads = 0;
  int num_kv_heads = 0;
  int num_query_tokens = 1;
  int batch = 0;
  int max_seq_len = 0;  // host-side bound on seq_lens (chooses the split; no device read)
  float softmax_scale = 0.f;
  DType q_dtype = DType::kFloat16;
  const void* q = nullptr;
  void* out = nullptr;
  float* lse = nullptr;
  const uint8_t* tile_pages = nullptr;
  int64_t tile_page_stride = 0;
  const uint8_t* fp16_pages = nullptr;
  int64_t fp16_page_stride = 0;
  const int32_t* block_tables = nullptr;
  int block_table_stride = 0;
  const int32_t* seq_lens = nullptr;
  void* workspace = nullptr;  // device, >= DecodeAttentionWorkspaceBytes(...), 16-B aligned
  size_t workspace_bytes = 0;
  int force_num_splits = 0;  // 0: automatic (wave fill); 1..8: that many splits (tests)
};

// Workspace for the split-K partials of a launch with these parameters (fixed for given
// arguments, so a captured graph can reuse one buffer).
size_t DecodeAttentionWorkspaceBytes(int batch, int num_q_heads, int num_query_tokens, int head_dim,
                                     int max_seq_len, Preset preset);

cudaError_t DecodeAttention(const DecodeAttentionParams& p, cudaStream_t stream);

}  // namespace kvtier::kernels::cuda

#endif  // KVTIER_KERNELS_CUDA_KVARN_CUDA_H_
