#include "tools/codec_file.h"

#include "absl/strings/str_cat.h"

namespace kvtier::tools {
namespace {

template <typename T>
void Put(std::vector<uint8_t>& out, size_t off, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) out[off + i] = static_cast<uint8_t>(v >> (8 * i));
}
template <typename T>
T Get(const uint8_t* in) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i) v |= static_cast<T>(static_cast<T>(in[i]) << (8 * i));
  return v;
}

absl::Status Bad(const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("not a valid kvtier codec file: ", why));
}

}  // namespace

std::vector<uint8_t> SerializeKvFile(const KvFileInfo& info,
                                     absl::Span<const std::vector<uint8_t>> payloads) {
  size_t total = kKvFileHeaderBytes;
  for (const auto& p : payloads) total += 8 + p.size();
  std::vector<uint8_t> out(total, 0);
  Put<uint32_t>(out, 0, kKvFileMagic);
  Put<uint16_t>(out, 4, kKvFileVersion);
  Put<uint16_t>(out, 6, kKvFileHeaderBytes);
  out[8] = static_cast<uint8_t>(info.preset);
  out[9] = static_cast<uint8_t>(std::min(info.sink_blocks, 255));
  Put<uint16_t>(out, 10, static_cast<uint16_t>(info.head_dim));
  Put<uint16_t>(out, 12, static_cast<uint16_t>(info.kv_heads));
  Put<uint32_t>(out, 16, static_cast<uint32_t>(info.tokens));
  Put<uint32_t>(out, 20, static_cast<uint32_t>(payloads.size()));
  Put<uint64_t>(out, 24, kernels::Xxh3(absl::MakeConstSpan(out).first(24)));
  size_t off = kKvFileHeaderBytes;
  for (const auto& p : payloads) {
    Put<uint64_t>(out, off, p.size());
    std::copy(p.begin(), p.end(), out.begin() + off + 8);
    off += 8 + p.size();
  }
  return out;
}

absl::StatusOr<KvFile> ParseKvFile(absl::Span<const uint8_t> bytes) {
  if (bytes.size() < kKvFileHeaderBytes) {
    return Bad(
        absl::StrCat("truncated: ", bytes.size(), " bytes, the header needs ", kKvFileHeaderBytes));
  }
  const uint8_t* p = bytes.data();
  if (Get<uint32_t>(p) != kKvFileMagic) return Bad("bad magic (expected \"KVTF\")");
  if (Get<uint16_t>(p + 4) != kKvFileVersion) {
    return Bad(absl::StrCat("unsupported version ", Get<uint16_t>(p + 4)));
  }
  if (Get<uint16_t>(p + 6) != kKvFileHeaderBytes) return Bad("bad header size");
  if (Get<uint64_t>(p + 24) != kernels::Xxh3(bytes.first(24))) {
    return absl::DataLossError("kvtier codec file: header checksum mismatch");
  }
  if (!kernels::IsValidPreset(p[8])) return Bad(absl::StrCat("unknown preset ", int{p[8]}));
  KvFile f;
  f.info.preset = static_cast<kernels::Preset>(p[8]);
  f.info.sink_blocks = p[9];
  f.info.head_dim = Get<uint16_t>(p + 10);
  f.info.kv_heads = Get<uint16_t>(p + 12);
  f.info.tokens = Get<uint32_t>(p + 16);
  const uint32_t num_blocks = Get<uint32_t>(p + 20);
  if (Get<uint16_t>(p + 14) != 0) return Bad("reserved field is not zero");
  if (!kernels::IsSupportedHeadDim(f.info.head_dim)) {
    return Bad(absl::StrCat("unsupported head_dim ", f.info.head_dim));
  }
  const int g = kernels::GetPresetInfo(f.info.preset).group_size;
  if (f.info.tokens < 1 || num_blocks != (f.info.tokens + g - 1) / g) {
    return Bad(absl::StrCat(f.info.tokens, " tokens do not make ", num_blocks, " blocks of ", g));
  }
  size_t off = kKvFileHeaderBytes;
  int64_t tokens = 0;
  for (uint32_t b = 0; b < num_blocks; ++b) {
    if (bytes.size() - off < 8) return Bad(absl::StrCat("truncated before block ", b));
    const uint64_t size = Get<uint64_t>(p + off);
    off += 8;
    if (size > bytes.size() - off) {
      return Bad(absl::StrCat("block ", b, " claims ", size, " bytes, only ", bytes.size() - off,
                              " remain"));
    }
    absl::StatusOr<kernels::PayloadView> view = kernels::ValidatePayload(bytes.subspan(off, size));
    if (!view.ok()) {
      return absl::Status(view.status().code(),
                          absl::StrCat("block ", b, ": ", view.status().message()));
    }
    const kernels::PayloadHeader& h = view->header;
    if (h.preset != f.info.preset || h.head_dim != f.info.head_dim ||
        h.num_kv_heads != f.info.kv_heads || h.num_layers != 1) {
      return Bad(absl::StrCat("block ", b, " disagrees with the file header (preset, head_dim, ",
                              "kv_heads or layers)"));
    }
    if (h.token_count != static_cast<uint32_t>(g) && b + 1 != num_blocks) {
      return Bad(absl::StrCat("block ", b, " is partial but not last"));
    }
    tokens += h.token_count;
    f.blocks.push_back(*view);
    off += size;
  }
  if (off != bytes.size()) {
    return Bad(absl::StrCat(bytes.size() - off, " trailing bytes after the last block"));
  }
  if (tokens != f.info.tokens) {
    return Bad(absl::StrCat("blocks hold ", tokens, " tokens, header says ", f.info.tokens));
  }
  return f;
}

}  // namespace kvtier::tools
