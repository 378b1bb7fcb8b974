#include "kernels/cpu/sequence.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "kernels/cpu/half.h"

namespace kvtier::kernels::cpu {
namespace {

// Gathers head h of tokens [t0, t0 + n) from [tokens][heads][D] into [n][D].
void GatherHead(const float* x, int heads, int d, int t0, int n, int h, float* out) {
  for (int t = 0; t < n; ++t) {
    std::memcpy(out + static_cast<size_t>(t) * d, x + (static_cast<size_t>(t0 + t) * heads + h) * d,
                sizeof(float) * d);
  }
}

absl::Status CheckFinite(const float* x, size_t n, const char* what) {
  for (size_t i = 0; i < n; ++i) {
    if (!std::isfinite(x[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " has a non-finite value at flat index ", i));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckSequenceShape(int head_dim, int num_kv_heads, int tokens) {
  if (!IsSupportedHeadDim(head_dim)) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim ", head_dim, " is not supported (64, 128 or 256)"));
  }
  if (num_kv_heads < 1 || num_kv_heads > static_cast<int>(kMaxKvHeads)) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_heads ", num_kv_heads, " is out of range [1, ", kMaxKvHeads, "]"));
  }
  if (tokens < 1) return absl::InvalidArgumentError("the sequence has no tokens");
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::vector<uint8_t>>> EncodeSequence(const SequenceOptions& options,
                                                                 int head_dim, int num_kv_heads,
                                                                 int tokens, const float* k,
                                                                 const float* v) {
  KVTIER_RETURN_IF_ERROR(CheckSequenceShape(head_dim, num_kv_heads, tokens));
  if (options.sink_blocks < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sink_blocks must be >= 0, got ", options.sink_blocks));
  }
  const size_t n = static_cast<size_t>(tokens) * num_kv_heads * head_dim;
  KVTIER_RETURN_IF_ERROR(CheckFinite(k, n, "K"));
  KVTIER_RETURN_IF_ERROR(CheckFinite(v, n, "V"));
  const TileLayout layout = MakeTileLayout(options.preset, head_dim);
  const int g = layout.group_size;
  const int num_blocks = (tokens + g - 1) / g;
  std::vector<std::vector<uint8_t>> out;
  out.reserve(num_blocks);
  std::vector<float> kt(static_cast<size_t>(g) * head_dim), vt(kt.size());
  for (int b = 0; b < num_blocks; ++b) {
    const int t0 = b * g;
    const int count = std::min(g, tokens - t0);
    const bool partial = count < g;
    PayloadHeader h;
    std::vector<uint8_t> section;
    if (partial || b < options.sink_blocks) {
      const uint8_t flags =
          static_cast<uint8_t>((b == 0 ? kFlagSink : 0) | (partial ? kFlagTail : 0));
      h = MakeFp16Header(options.preset, head_dim, 1, num_kv_heads, count, flags);
      std::vector<uint16_t> halves(static_cast<size_t>(num_kv_heads) * 2 * count * head_dim);
      const size_t off = static_cast<size_t>(t0) * num_kv_heads * head_dim;
      EncodeFp16Section(head_dim, num_kv_heads, count, k + off, v + off, halves.data());
      section.resize(halves.size() * 2);
      for (size_t i = 0; i < halves.size(); ++i) {
        section[2 * i] = static_cast<uint8_t>(halves[i]);
        section[2 * i + 1] = static_cast<uint8_t>(halves[i] >> 8);
      }
    } else {
      h = MakeTilesHeader(options.preset, head_dim, 1, num_kv_heads);
      section.resize(static_cast<size_t>(num_kv_heads) * layout.record_bytes);
      for (int head = 0; head < num_kv_heads; ++head) {
        GatherHead(k, num_kv_heads, head_dim, t0, g, head, kt.data());
        GatherHead(v, num_kv_heads, head_dim, t0, g, head, vt.data());
        absl::Status s = EncodeTile(
            layout, kt.data(), vt.data(),
            section.data() + static_cast<size_t>(head) * layout.record_bytes, options.codec);
        if (!s.ok()) {
          return absl::Status(s.code(),
                              absl::StrCat("block ", b, ", kv head ", head, ": ", s.message()));
        }
      }
    }
    const absl::Span<const uint8_t> sections[] = {section};
    KVTIER_ASSIGN_OR_RETURN(std::vector<uint8_t> payload, BuildPayload(h, sections));
    out.push_back(std::move(payload));
  }
  return out;
}

absl::StatusOr<std::vector<uint8_t>> EncodeTiles(const TileLayout& layout, int num_kv_heads,
                                                 int tokens, const float* k, const float* v,
                                                 const CodecOptions& options) {
  KVTIER_RETURN_IF_ERROR(CheckSequenceShape(layout.head_dim, num_kv_heads, tokens));
  const int g = layout.group_size, d = layout.head_dim;
  const int blocks = tokens / g;
  if (blocks == 0) {
    return absl::InvalidArgumentError(absl::StrCat(tokens, " tokens make no full block of ", g));
  }
  std::vector<uint8_t> out(static_cast<size_t>(blocks) * num_kv_heads * layout.record_bytes);
  std::vector<float> kt(static_cast<size_t>(g) * d), vt(kt.size());
  for (int b = 0; b < blocks; ++b) {
    for (int head = 0; head < num_kv_heads; ++head) {
      GatherHead(k, num_kv_heads, d, b * g, g, head, kt.data());
      GatherHead(v, num_kv_heads, d, b * g, g, head, vt.data());
      uint8_t* rec =
          out.data() + (static_cast<size_t>(b) * num_kv_heads + head) * layout.record_bytes;
      absl::Status s = EncodeTile(layout, kt.data(), vt.data(), rec, options);
      if (!s.ok()) {
        return absl::Status(s.code(),
                            absl::StrCat("block ", b, ", kv head ", head, ": ", s.message()));
      }
    }
  }
  return out;
}

absl::StatusOr<std::vector<BlockSection>> SectionsOf(absl::Span<const PayloadView> blocks) {
  if (blocks.empty()) return absl::InvalidArgumentError("no blocks");
  const PayloadHeader& first = blocks[0].header;
  std::vector<BlockSection> out;
  for (size_t i = 0; i < blocks.size(); ++i) {
    const PayloadHeader& h = blocks[i].header;
    if (h.preset != first.preset || h.head_dim != first.head_dim ||
        h.num_kv_heads != first.num_kv_heads) {
      return absl::InvalidArgumentError(
          absl::StrCat("block ", i, " has a different preset, head_dim or kv_heads than block 0"));
    }
    if (h.num_layers != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("block ", i, " has ", h.num_layers, " layers; expected 1"));
    }
    if (h.token_count != h.group_size && i + 1 != blocks.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("block ", i, " is partial (", h.token_count, " tokens) but not last"));
    }
    out.push_back({h.encoding, static_cast<int>(h.token_count), blocks[i].layer(0).data()});
  }
  return out;
}

absl::Status DecodeSequence(absl::Span<const PayloadView> blocks, std::vector<float>* k,
                            std::vector<float>* v) {
  KVTIER_ASSIGN_OR_RETURN(std::vector<BlockSection> sections, SectionsOf(blocks));
  const PayloadHeader& first = blocks[0].header;
  const int d = first.head_dim, heads = first.num_kv_heads;
  const TileLayout layout = MakeTileLayout(first.preset, d);
  size_t tokens = 0;
  for (const auto& s : sections) tokens += s.tokens;
  k->assign(tokens * heads * d, 0.0f);
  v->assign(tokens * heads * d, 0.0f);
  std::vector<float> kr(static_cast<size_t>(layout.group_size) * d), vr(kr.size());
  size_t t0 = 0;
  for (const auto& s : sections) {
    for (int h = 0; h < heads; ++h) {
      if (s.encoding == BlockEncoding::kTiles) {
        DecodeTile(layout, s.data + static_cast<size_t>(h) * layout.record_bytes, kr.data(),
                   vr.data());
      } else {
        const size_t n = static_cast<size_t>(s.tokens) * d;
        const uint8_t* base = s.data + static_cast<size_t>(h) * 4 * n;
        for (size_t i = 0; i < n; ++i) {
          kr[i] = HalfToFloat(static_cast<uint16_t>(base[2 * i] | (base[2 * i + 1] << 8)));
          vr[i] =
              HalfToFloat(static_cast<uint16_t>(base[2 * (n + i)] | (base[2 * (n + i) + 1] << 8)));
        }
      }
      for (int t = 0; t < s.tokens; ++t) {
        float* kd = k->data() + ((t0 + t) * heads + h) * d;
        float* vd = v->data() + ((t0 + t) * heads + h) * d;
        std::memcpy(kd, kr.data() + static_cast<size_t>(t) * d, sizeof(float) * d);
        std::memcpy(vd, vr.data() + static_cast<size_t>(t) * d, sizeof(float) * d);
        Fwht(kd, d);
        Fwht(vd, d);
      }
    }
    t0 += s.tokens;
  }
  return absl::OkStatus();
}

}  // namespace kvtier::kernels::cpu
