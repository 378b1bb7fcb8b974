// The KVarN codec on the CPU (DESIGN.md §3): the reference the GPU kernels are tested
// against, and the fallback path when no GPU is present. Exact fp32 arithmetic in the
// order DESIGN §3.1 gives; all stored data in the rotated frame.
//
//   const TileLayout l = MakeTileLayout(Preset::kK4V2G128, 128);
//   std::vector<uint8_t> rec(l.record_bytes);
//   KVTIER_RETURN_IF_ERROR(EncodeTile(l, k, v, rec.data()));   // k, v: [G][D] fp32
//   DecodeTile(l, rec.data(), k_rot, v_rot);                    // rotated frame
//
// Thread safety: every function is pure (no shared state) and safe to call concurrently.
#ifndef KVTIER_KERNELS_CPU_CODEC_H_
#define KVTIER_KERNELS_CPU_CODEC_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "kernels/format.h"
#include "kernels/payload.h"

namespace kvtier::kernels::cpu {

struct CodecOptions {
  // Sinkhorn-like normalization iterations (DESIGN §3.1). Default: 8. Range 0..64.
  int iterations = 8;
};

// In-place orthonormal fast Walsh-Hadamard transform of n floats (n a power of two):
// x <- x · H / sqrt(n), Sylvester natural order. Its own inverse.
void Fwht(float* x, int n);

// Encodes one tile. k, v: [G][D] row-major fp32 (token-major, as a paged cache holds
// them), NOT rotated. out: layout.record_bytes bytes; padding is zeroed.
// kInvalidArgument for a non-finite input, bad options, an unsupported layout, or values
// so large that a stored fp16 scale or zero point would overflow; nothing is written then.
// The exact fp32 arithmetic is specified in kernels/cpu/codec_internal.h.
absl::Status EncodeTile(const TileLayout& layout, const float* k, const float* v, uint8_t* out,
                        const CodecOptions& options = {});

// Same, for inputs already in the rotated frame (k_rot = k · H).
absl::Status EncodeRotatedTile(const TileLayout& layout, const float* k_rot, const float* v_rot,
                               uint8_t* out, const CodecOptions& options = {});

// Dequantizes one record to the rotated frame: k_rot, v_rot [G][D] fp32 (fp32 arithmetic
// of DESIGN §3.1's reconstruction formula on the stored fp16 scales).
void DecodeTile(const TileLayout& layout, const uint8_t* record, float* k_rot, float* v_rot);

// One logical block of one layer, as the paged cache (and a payload layer section) holds
// it: encoding kTiles -> [num_kv_heads][record]; kFp16 -> [num_kv_heads][K tokens×D][V
// tokens×D] fp16 (rotated). Borrowed: `data` must outlive the call that uses it.
struct BlockSection {
  BlockEncoding encoding = BlockEncoding::kTiles;
  int tokens = 0;  // G for kTiles; 1..G for kFp16
  const uint8_t* data = nullptr;
};

// Reference decode attention of one query token over a sequence of blocks.
// q: [num_q_heads][D] fp32, NOT rotated; out: [num_q_heads][D] fp32, NOT rotated;
// lse (optional, may be null): [num_q_heads] natural-log sum of exp(scaled scores).
// GQA: query head h reads KV head h / (num_q_heads / num_kv_heads).
// softmax_scale: usually 1/sqrt(D). With use_float64, all arithmetic after decoding runs
// in double. kInvalidArgument when num_q_heads is not a multiple of num_kv_heads or a
// block is malformed.
absl::Status AttendReference(const TileLayout& layout, int num_kv_heads,
                             absl::Span<const BlockSection> blocks, const float* q, int num_q_heads,
                             float softmax_scale, float* out, float* lse, bool use_float64 = false);

// Rotates `tokens` rows of D floats (NOT rotated) into the FP16 section form of DESIGN
// §3.3: out[t][d] = fp16(x[t] · H)[d], round to nearest even. head_dim a power of two.
void RotateToHalf(int head_dim, int tokens, const float* x, uint16_t* out);

// Writes one FP16 block section (BlockEncoding::kFp16) for one layer:
// [num_kv_heads][K tokens×D][V tokens×D] fp16 rotated, from k, v [tokens][num_kv_heads][D]
// fp32 NOT rotated (the [tokens, kv_heads, head_dim] layout of a paged cache block).
// out: num_kv_heads·2·tokens·D fp16 values.
void EncodeFp16Section(int head_dim, int num_kv_heads, int tokens, const float* k, const float* v,
                       uint16_t* out);

// Decompresses one record to FP16: k, v [G][D]. With rotated == false (the default) the
// values are rotated back (x = x_rot · H, what a prefill node's FP16 paged cache holds);
// with rotated == true they stay in the rotated frame. fp32 arithmetic, then one rounding
// to fp16 (nearest even).
void DecompressTile(const TileLayout& layout, const uint8_t* record, uint16_t* k, uint16_t* v,
                    bool rotated = false);

}  // namespace kvtier::kernels::cpu

#endif  // KVTIER_KERNELS_CPU_CODEC_H_
