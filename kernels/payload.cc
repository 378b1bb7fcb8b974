#include "kernels/payload.h"

#include <openssl/evp.h>

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "kernels/xxh3.h"

namespace kvtier::kernels {
namespace {

template <typename T>
void Put(uint8_t* out, size_t off, T v) {
  for (size_t i = 0; i < sizeof(T); ++i) out[off + i] = static_cast<uint8_t>(v >> (8 * i));
}
template <typename T>
T Get(const uint8_t* in, size_t off) {
  T v = 0;
  for (size_t i = 0; i < sizeof(T); ++i)
    v |= static_cast<T>(static_cast<T>(in[off + i]) << (8 * i));
  return v;
}

// Field offsets of the serialized header.
constexpr size_t kOffMagic = 0, kOffVersion = 4, kOffHeaderBytes = 6, kOffPreset = 8,
                 kOffEncoding = 9, kOffFlags = 10, kOffReserved0 = 11, kOffHeadDim = 12,
                 kOffGroup = 14, kOffLayers = 16, kOffHeads = 18, kOffTokens = 20,
                 kOffReserved1 = 24, kOffSection = 28, kOffBody = 36, kOffXxh = 44,
                 kOffHeaderXxh = 52, kOffPadding = 60;

absl::Status Invalid(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("invalid block payload: ", what));
}

}  // namespace

uint64_t LayerSectionBytes(const PayloadHeader& h) {
  if (!IsSupportedHeadDim(h.head_dim)) return 0;
  const uint64_t heads = h.num_kv_heads;
  if (h.encoding == BlockEncoding::kTiles) {
    return heads * MakeTileLayout(h.preset, h.head_dim).record_bytes;
  }
  return heads * 2u * uint64_t{h.token_count} * h.head_dim * 2u;
}

PayloadHeader MakeTilesHeader(Preset preset, int head_dim, int num_layers, int num_kv_heads,
                              uint8_t flags) {
  PayloadHeader h;
  h.preset = preset;
  h.encoding = BlockEncoding::kTiles;
  h.flags = flags;
  h.head_dim = static_cast<uint16_t>(head_dim);
  h.group_size = static_cast<uint16_t>(GetPresetInfo(preset).group_size);
  h.num_layers = static_cast<uint16_t>(num_layers);
  h.num_kv_heads = static_cast<uint16_t>(num_kv_heads);
  h.token_count = h.group_size;
  h.layer_section_bytes = LayerSectionBytes(h);
  h.body_bytes = h.layer_section_bytes * h.num_layers;
  return h;
}

PayloadHeader MakeFp16Header(Preset preset, int head_dim, int num_layers, int num_kv_heads,
                             int token_count, uint8_t flags) {
  PayloadHeader h = MakeTilesHeader(preset, head_dim, num_layers, num_kv_heads, flags);
  h.encoding = BlockEncoding::kFp16;
  h.token_count = static_cast<uint32_t>(token_count);
  h.layer_section_bytes = LayerSectionBytes(h);
  h.body_bytes = h.layer_section_bytes * h.num_layers;
  return h;
}

void EncodeHeader(const PayloadHeader& h, uint8_t* out) {
  std::memset(out, 0, kPayloadHeaderBytes);
  Put<uint32_t>(out, kOffMagic, kPayloadMagic);
  Put<uint16_t>(out, kOffVersion, kPayloadVersion);
  Put<uint16_t>(out, kOffHeaderBytes, kPayloadHeaderBytes);
  out[kOffPreset] = static_cast<uint8_t>(h.preset);
  out[kOffEncoding] = static_cast<uint8_t>(h.encoding);
  out[kOffFlags] = h.flags;
  Put<uint16_t>(out, kOffHeadDim, h.head_dim);
  Put<uint16_t>(out, kOffGroup, h.group_size);
  Put<uint16_t>(out, kOffLayers, h.num_layers);
  Put<uint16_t>(out, kOffHeads, h.num_kv_heads);
  Put<uint32_t>(out, kOffTokens, h.token_count);
  Put<uint64_t>(out, kOffSection, h.layer_section_bytes);
  Put<uint64_t>(out, kOffBody, h.body_bytes);
  Put<uint64_t>(out, kOffXxh, h.body_xxh3);
  Put<uint64_t>(out, kOffHeaderXxh, XXH3_64bits(out, kOffHeaderXxh));
}

uint64_t Xxh3(absl::Span<const uint8_t> bytes) { return XXH3_64bits(bytes.data(), bytes.size()); }

absl::StatusOr<std::vector<uint8_t>> BuildPayload(
    PayloadHeader h, absl::Span<const absl::Span<const uint8_t>> sections) {
  h.layer_section_bytes = LayerSectionBytes(h);
  h.body_bytes = h.layer_section_bytes * h.num_layers;
  if (h.layer_section_bytes == 0) return Invalid("head_dim or shape not supported");
  if (sections.size() != h.num_layers) {
    return Invalid(
        absl::StrCat("expected ", h.num_layers, " layer sections, got ", sections.size()));
  }
  std::vector<uint8_t> out(kPayloadHeaderBytes + h.body_bytes);
  size_t off = kPayloadHeaderBytes;
  for (size_t i = 0; i < sections.size(); ++i) {
    if (sections[i].size() != h.layer_section_bytes) {
      return Invalid(absl::StrCat("layer ", i, " section has ", sections[i].size(),
                                  " bytes, expected ", h.layer_section_bytes));
    }
    std::memcpy(out.data() + off, sections[i].data(), sections[i].size());
    off += sections[i].size();
  }
  h.body_xxh3 = Xxh3(absl::MakeConstSpan(out).subspan(kPayloadHeaderBytes));
  EncodeHeader(h, out.data());
  absl::StatusOr<PayloadHeader> check = ParseHeader(out);
  if (!check.ok()) return check.status();
  return out;
}

void SealPayload(absl::Span<uint8_t> bytes) {
  if (bytes.size() < kPayloadHeaderBytes) return;
  const uint64_t sum = Xxh3(absl::MakeConstSpan(bytes).subspan(kPayloadHeaderBytes));
  Put<uint64_t>(bytes.data(), kOffXxh, sum);
  Put<uint64_t>(bytes.data(), kOffHeaderXxh, XXH3_64bits(bytes.data(), kOffHeaderXxh));
}

absl::StatusOr<PayloadHeader> ParseHeader(absl::Span<const uint8_t> bytes) {
  if (bytes.size() < kPayloadHeaderBytes) {
    return Invalid(
        absl::StrCat("truncated: ", bytes.size(), " bytes, header needs ", kPayloadHeaderBytes));
  }
  const uint8_t* p = bytes.data();
  if (Get<uint32_t>(p, kOffMagic) != kPayloadMagic) return Invalid("bad magic");
  const uint16_t version = Get<uint16_t>(p, kOffVersion);
  if (version != kPayloadVersion) {
    return Invalid(absl::StrCat("unsupported version ", version));
  }
  if (Get<uint16_t>(p, kOffHeaderBytes) != kPayloadHeaderBytes) {
    return Invalid("bad header size");
  }
  if (p[kOffReserved0] != 0 || Get<uint32_t>(p, kOffReserved1) != 0) {
    return Invalid("reserved header fields are not zero");
  }
  for (size_t i = kOffPadding; i < kPayloadHeaderBytes; ++i) {
    if (p[i] != 0) return Invalid("header padding is not zero");
  }
  if (!IsValidPreset(p[kOffPreset])) {
    return Invalid(absl::StrCat("unknown preset ", int{p[kOffPreset]}));
  }
  PayloadHeader h;
  h.preset = static_cast<Preset>(p[kOffPreset]);
  if (p[kOffEncoding] > 1) return Invalid(absl::StrCat("unknown encoding ", int{p[kOffEncoding]}));
  h.encoding = static_cast<BlockEncoding>(p[kOffEncoding]);
  h.flags = p[kOffFlags];
  if (h.flags & ~kKnownFlags) return Invalid("unknown flags");
  h.head_dim = Get<uint16_t>(p, kOffHeadDim);
  h.group_size = Get<uint16_t>(p, kOffGroup);
  h.num_layers = Get<uint16_t>(p, kOffLayers);
  h.num_kv_heads = Get<uint16_t>(p, kOffHeads);
  h.token_count = Get<uint32_t>(p, kOffTokens);
  h.layer_section_bytes = Get<uint64_t>(p, kOffSection);
  h.body_bytes = Get<uint64_t>(p, kOffBody);
  h.body_xxh3 = Get<uint64_t>(p, kOffXxh);

  if (!IsSupportedHeadDim(h.head_dim)) {
    return Invalid(absl::StrCat("unsupported head_dim ", h.head_dim));
  }
  const int g = GetPresetInfo(h.preset).group_size;
  if (h.group_size != g) {
    return Invalid(absl::StrCat("group size ", h.group_size, " does not match preset ",
                                std::string(PresetName(h.preset))));
  }
  if (h.num_layers == 0 || h.num_layers > kMaxLayers) {
    return Invalid(absl::StrCat("layer count ", h.num_layers, " out of range"));
  }
  if (h.num_kv_heads == 0 || h.num_kv_heads > kMaxKvHeads) {
    return Invalid(absl::StrCat("kv head count ", h.num_kv_heads, " out of range"));
  }
  if (h.encoding == BlockEncoding::kTiles) {
    if (h.token_count != static_cast<uint32_t>(g)) {
      return Invalid("compressed block must hold exactly G tokens");
    }
    if (h.flags & kFlagTail) return Invalid("compressed block flagged as tail");
  } else {
    if (h.token_count == 0 || h.token_count > static_cast<uint32_t>(g)) {
      return Invalid(absl::StrCat("token count ", h.token_count, " out of range"));
    }
    if ((h.flags & kFlagTail) == 0 && h.token_count != static_cast<uint32_t>(g)) {
      return Invalid("partial block not flagged as tail");
    }
  }
  const uint64_t section = LayerSectionBytes(h);
  if (h.layer_section_bytes != section) {
    return Invalid(
        absl::StrCat("layer section size ", h.layer_section_bytes, ", expected ", section));
  }
  if (h.body_bytes != section * h.num_layers) {
    return Invalid(absl::StrCat("body size ", h.body_bytes, ", expected ", section * h.num_layers));
  }
  if (h.body_bytes > kMaxPayloadBytes - kPayloadHeaderBytes) return Invalid("payload too large");
  if (bytes.size() != h.total_bytes()) {
    return Invalid(
        absl::StrCat("payload has ", bytes.size(), " bytes, header says ", h.total_bytes()));
  }
  if (Get<uint64_t>(p, kOffHeaderXxh) != XXH3_64bits(p, kOffHeaderXxh)) {
    return absl::DataLossError("block payload header checksum mismatch");
  }
  return h;
}

absl::StatusOr<PayloadView> ValidatePayload(absl::Span<const uint8_t> bytes) {
  absl::StatusOr<PayloadHeader> h = ParseHeader(bytes);
  if (!h.ok()) return h.status();
  const uint64_t sum = Xxh3(bytes.subspan(kPayloadHeaderBytes));
  if (sum != h->body_xxh3) {
    return absl::DataLossError("block payload checksum mismatch");
  }
  return PayloadView{*h, bytes};
}

struct IncrementalValidator::State {
  XXH3_state_t* xxh = nullptr;
  bool started = false;  // xxh reset for the current payload
};

IncrementalValidator::IncrementalValidator() : state_(new State) {}

IncrementalValidator::~IncrementalValidator() {
  if (state_->xxh != nullptr) XXH3_freeState(state_->xxh);
  delete state_;
}

void IncrementalValidator::Reset() {
  hashed_ = kPayloadHeaderBytes;  // the body starts after the header
  state_->started = false;
}

bool IncrementalValidator::Start() {
  if (state_->started) return true;
  if (state_->xxh == nullptr) state_->xxh = XXH3_createState();
  state_->started = state_->xxh != nullptr && XXH3_64bits_reset(state_->xxh) == XXH_OK;
  return state_->started;
}

void IncrementalValidator::Update(absl::Span<const uint8_t> prefix) {
  // The checksum state is made at the first body bytes, not up front.
  if (prefix.size() <= hashed_ || !Start()) return;
  XXH3_64bits_update(state_->xxh, prefix.data() + hashed_, prefix.size() - hashed_);
  hashed_ = prefix.size();
}

absl::Status IncrementalValidator::Finish(absl::Span<const uint8_t> payload) {
  absl::StatusOr<PayloadHeader> h = ParseHeader(payload);
  if (!h.ok()) return h.status();
  Update(payload);
  if (!Start()) return absl::ResourceExhaustedError("cannot allocate a checksum state");
  if (XXH3_64bits_digest(state_->xxh) != h->body_xxh3) {
    return absl::DataLossError("block payload checksum mismatch");
  }
  return absl::OkStatus();
}

namespace {
ChainHash Sha256(std::initializer_list<absl::Span<const uint8_t>> parts) {
  ChainHash out{};
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  for (auto part : parts) EVP_DigestUpdate(ctx, part.data(), part.size());
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, out.data(), &len);
  EVP_MD_CTX_free(ctx);
  return out;
}
}  // namespace

ChainHash ChainSeed(std::string_view ns) {
  static constexpr std::string_view kDomain = "kvtier-chain-v1";
  return Sha256(
      {absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(kDomain.data()), kDomain.size()),
       absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(ns.data()), ns.size())});
}

ChainHash ChainNext(const ChainHash& prev, absl::Span<const int32_t> token_ids,
                    absl::Span<const uint8_t> extra) {
  std::vector<uint8_t> le(token_ids.size() * 4);
  for (size_t i = 0; i < token_ids.size(); ++i) {
    Put<uint32_t>(le.data(), 4 * i, static_cast<uint32_t>(token_ids[i]));
  }
  return Sha256({absl::MakeConstSpan(prev), absl::MakeConstSpan(le), extra});
}

std::vector<ChainHash> ChainHashes(std::string_view ns, absl::Span<const int32_t> tokens,
                                   int block_size, bool include_partial) {
  std::vector<ChainHash> out;
  if (block_size <= 0) return out;
  ChainHash h = ChainSeed(ns);
  for (size_t start = 0; start < tokens.size(); start += block_size) {
    const size_t n = std::min<size_t>(block_size, tokens.size() - start);
    if (n < static_cast<size_t>(block_size) && !include_partial) break;
    h = ChainNext(h, tokens.subspan(start, n));
    out.push_back(h);
  }
  return out;
}

std::string ChainHashHex(const ChainHash& h) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s(64, '0');
  for (size_t i = 0; i < h.size(); ++i) {
    s[2 * i] = kHex[h[i] >> 4];
    s[2 * i + 1] = kHex[h[i] & 15];
  }
  return s;
}

}  // namespace kvtier::kernels
