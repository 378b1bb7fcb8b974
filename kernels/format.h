// KVarN tile record layout (DESIGN.md §3.2): the one place where every offset and
// size of a compressed tile is computed. Plain C++ (no CUDA, no absl), usable from
// host code, .cu files and constexpr contexts.
//
//   constexpr auto layout = kvtier::kernels::MakeTileLayout(Preset::kK4V2G128, 128);
//   static_assert(layout.record_bytes == 13824);
//   uint8_t* s_col_k = record + layout.s_col_k_offset;   // fp16[head_dim]
//
// A tile is one block of G tokens of one KV head, all D channels. Fields, in order,
// little-endian, no padding between them:
//   K codes  [D][G*kb/8] channel-major   | s_col_K fp16[D] | zp_K fp16[D] | s_row_K fp16[G]
//   V codes  [G][D*vb/8] token-major     | s_col_V fp16[D] | s_row_V fp16[G] | zp_V fp16[G]
// then padding to record_bytes: a multiple of 8 for D <= 128; for D >= 256 the per-token
// slot ceil(bytes/G) is rounded up to a power of two (the KVarN reference's page rule).
// Packing: 8/bits codes per byte, element c of a row in byte c/(8/bits) at bit shift
// (c % (8/bits))*bits, LSB first.
#ifndef KVTIER_KERNELS_FORMAT_H_
#define KVTIER_KERNELS_FORMAT_H_

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

namespace kvtier::kernels {

// Codec presets. The numeric values are stored in block headers: never renumber.
enum class Preset : uint8_t {
  kK4V2G128 = 1,  // default: 4-bit keys, 2-bit values, 128-token tiles
  kK4V4G128 = 2,
  kK4V2G64 = 3,
  kK4V4G64 = 4,
};

inline constexpr Preset kDefaultPreset = Preset::kK4V2G128;
inline constexpr Preset kAllPresets[] = {Preset::kK4V2G128, Preset::kK4V4G128, Preset::kK4V2G64,
                                         Preset::kK4V4G64};
inline constexpr int kSupportedHeadDims[] = {64, 128, 256};

struct PresetInfo {
  int key_bits;    // bits per key code (4)
  int value_bits;  // bits per value code (2 or 4)
  int group_size;  // G: tokens per tile (64 or 128)
};

constexpr bool IsValidPreset(uint8_t raw) { return raw >= 1 && raw <= 4; }

constexpr PresetInfo GetPresetInfo(Preset p) {
  switch (p) {
    case Preset::kK4V2G128:
      return {4, 2, 128};
    case Preset::kK4V4G128:
      return {4, 4, 128};
    case Preset::kK4V2G64:
      return {4, 2, 64};
    case Preset::kK4V4G64:
      return {4, 4, 64};
  }
  return {0, 0, 0};
}

constexpr std::string_view PresetName(Preset p) {
  switch (p) {
    case Preset::kK4V2G128:
      return "k4v2_g128";
    case Preset::kK4V4G128:
      return "k4v4_g128";
    case Preset::kK4V2G64:
      return "k4v2_g64";
    case Preset::kK4V4G64:
      return "k4v4_g64";
  }
  return "unknown";
}

// Parses "k4v2_g128" etc.; nullopt for anything else.
constexpr std::optional<Preset> PresetFromName(std::string_view name) {
  for (Preset p : kAllPresets) {
    if (PresetName(p) == name) return p;
  }
  return std::nullopt;
}

constexpr bool IsSupportedHeadDim(int head_dim) {
  return head_dim == 64 || head_dim == 128 || head_dim == 256;
}

// Byte offsets of every field of one tile record. All sizes in bytes.
struct TileLayout {
  int head_dim = 0;
  int group_size = 0;
  int key_bits = 0;
  int value_bits = 0;

  size_t k_codes_offset = 0;
  size_t k_row_bytes = 0;  // bytes of one channel's G key codes: G*kb/8
  size_t s_col_k_offset = 0;
  size_t zp_k_offset = 0;
  size_t s_row_k_offset = 0;
  size_t v_codes_offset = 0;
  size_t v_row_bytes = 0;  // bytes of one token's D value codes: D*vb/8
  size_t s_col_v_offset = 0;
  size_t s_row_v_offset = 0;
  size_t zp_v_offset = 0;
  size_t data_end = 0;      // end of the last field, before padding
  size_t record_bytes = 0;  // padded size of one record (stride between records)
};

namespace format_internal {
constexpr size_t RoundUp(size_t x, size_t m) { return (x + m - 1) / m * m; }
constexpr size_t NextPow2(size_t x) {
  size_t p = 1;
  while (p < x) p <<= 1;
  return p;
}
}  // namespace format_internal

// The layout for a preset and head_dim. Precondition: IsSupportedHeadDim(head_dim)
// (callers validate input first; an unsupported head_dim yields record_bytes == 0).
constexpr TileLayout MakeTileLayout(Preset preset, int head_dim) {
  TileLayout l;
  if (!IsSupportedHeadDim(head_dim)) return l;
  const PresetInfo info = GetPresetInfo(preset);
  const size_t d = static_cast<size_t>(head_dim);
  const size_t g = static_cast<size_t>(info.group_size);
  l.head_dim = head_dim;
  l.group_size = info.group_size;
  l.key_bits = info.key_bits;
  l.value_bits = info.value_bits;
  l.k_row_bytes = g * info.key_bits / 8;
  l.v_row_bytes = d * info.value_bits / 8;
  size_t off = 0;
  l.k_codes_offset = off;
  off += d * l.k_row_bytes;
  l.s_col_k_offset = off;
  off += 2 * d;
  l.zp_k_offset = off;
  off += 2 * d;
  l.s_row_k_offset = off;
  off += 2 * g;
  l.v_codes_offset = off;
  off += g * l.v_row_bytes;
  l.s_col_v_offset = off;
  off += 2 * d;
  l.s_row_v_offset = off;
  off += 2 * g;
  l.zp_v_offset = off;
  off += 2 * g;
  l.data_end = off;
  if (d <= 128) {
    l.record_bytes = format_internal::RoundUp(off, 8);
  } else {
    const size_t slot = format_internal::NextPow2((off + g - 1) / g);
    l.record_bytes = slot * g;
  }
  return l;
}

// Bytes of one token of one KV head in FP16 (K and V): the baseline of every ratio.
constexpr size_t Fp16BytesPerToken(int head_dim) { return 2u * 2u * static_cast<size_t>(head_dim); }

// Bits per stored K/V element including all metadata and padding.
constexpr double BitsPerElement(const TileLayout& l) {
  return l.record_bytes * 8.0 / (2.0 * l.group_size * l.head_dim);
}

static_assert(MakeTileLayout(Preset::kK4V2G128, 128).record_bytes == 13824);
static_assert(MakeTileLayout(Preset::kK4V2G128, 128).v_codes_offset == 8960);
static_assert(MakeTileLayout(Preset::kK4V2G128, 128).zp_v_offset == 13568);

}  // namespace kvtier::kernels

#endif  // KVTIER_KERNELS_FORMAT_H_
