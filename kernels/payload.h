// Block payloads (DESIGN.md §4): the bytes stored and shipped for one block of one
// model shard. A payload is a 64-byte versioned header followed by one section per
// layer; each section is exactly what the paged GPU cache holds for that block:
//   encoding kTiles: [num_kv_heads][tile record]           (kernels/format.h)
//   encoding kFp16:  [num_kv_heads][K fp16 tokens×D][V fp16 tokens×D]  (rotated frame;
//                    sink blocks and partial tail blocks, DESIGN §3.3)
//
//   PayloadHeader h = MakeTilesHeader(Preset::kK4V2G128, /*head_dim=*/128,
//                                     /*num_layers=*/64, /*num_kv_heads=*/8);
//   std::vector<uint8_t> bytes = BuildPayload(h, sections);   // sets sizes + checksum
//   absl::StatusOr<PayloadView> v = ValidatePayload(bytes);   // on every receipt/read
//
// Also the prefix chain hash: h_i = SHA-256(h_{i-1} ‖ token ids of block i ‖ extra).
//
// Thread safety: all functions are pure and safe to call concurrently.
#ifndef KVTIER_KERNELS_PAYLOAD_H_
#define KVTIER_KERNELS_PAYLOAD_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/format.h"

namespace kvtier::kernels {

inline constexpr uint32_t kPayloadMagic = 0x4254564B;  // "KVTB" little-endian
inline constexpr uint16_t kPayloadVersion = 1;
inline constexpr size_t kPayloadHeaderBytes = 64;
// Structural limits enforced by the validator (a payload outside them is malformed).
inline constexpr uint32_t kMaxLayers = 1024;
inline constexpr uint32_t kMaxKvHeads = 256;
// Largest payload the validator accepts: 1 GiB.
inline constexpr uint64_t kMaxPayloadBytes = uint64_t{1} << 30;

enum class BlockEncoding : uint8_t {
  kTiles = 0,  // compressed KVarN tile records; token_count == G
  kFp16 = 1,   // rotated FP16 K and V; 1 <= token_count <= G
};

// Flag bits of PayloadHeader::flags.
inline constexpr uint8_t kFlagSink = 1u << 0;  // first block of a prefix (attention sink)
inline constexpr uint8_t kFlagTail = 1u << 1;  // partial last block (token_count < G)
inline constexpr uint8_t kKnownFlags = kFlagSink | kFlagTail;

// The decoded header. Serialized little-endian in this field order:
//   u32 magic, u16 version, u16 header_bytes, u8 preset, u8 encoding, u8 flags, u8 reserved0,
//   u16 head_dim, u16 group_size, u16 num_layers, u16 num_kv_heads, u32 token_count,
//   u32 reserved1, u64 layer_section_bytes, u64 body_bytes, u64 body_xxh3,
//   u64 header_xxh3 (XXH3-64 of header bytes [0, 52)), then 4 zero bytes.
struct PayloadHeader {
  Preset preset = kDefaultPreset;
  BlockEncoding encoding = BlockEncoding::kTiles;
  uint8_t flags = 0;
  uint16_t head_dim = 0;
  uint16_t group_size = 0;  // G of the preset
  uint16_t num_layers = 0;
  uint16_t num_kv_heads = 0;
  uint32_t token_count = 0;
  uint64_t layer_section_bytes = 0;
  uint64_t body_bytes = 0;  // num_layers * layer_section_bytes
  uint64_t body_xxh3 = 0;   // XXH3-64 of the body (seed 0)

  size_t total_bytes() const { return kPayloadHeaderBytes + body_bytes; }
};

// A header for a compressed block; sizes filled in, checksum 0 until BuildPayload.
PayloadHeader MakeTilesHeader(Preset preset, int head_dim, int num_layers, int num_kv_heads,
                              uint8_t flags = 0);
// A header for an FP16 (sink or tail) block of token_count tokens.
PayloadHeader MakeFp16Header(Preset preset, int head_dim, int num_layers, int num_kv_heads,
                             int token_count, uint8_t flags);

// Bytes of one layer section for the given header fields (0 when they are invalid).
uint64_t LayerSectionBytes(const PayloadHeader& h);

// Serializes the header (64 bytes) into out[0..64).
void EncodeHeader(const PayloadHeader& h, uint8_t* out);

// Assembles header + sections; sets body_bytes, layer_section_bytes and the checksum.
// Precondition: sections.size() == h.num_layers and each has LayerSectionBytes(h) bytes
// (programmer error otherwise: returns kInvalidArgument rather than asserting).
absl::StatusOr<std::vector<uint8_t>> BuildPayload(
    PayloadHeader h, absl::Span<const absl::Span<const uint8_t>> sections);

// Computes the checksum of bytes[64..], writes body_xxh3 and then header_xxh3 in place.
// For writers that fill the sections directly in a buffer (GPU export).
// Precondition: bytes holds a header whose size fields are already right.
void SealPayload(absl::Span<uint8_t> bytes);

// A validated payload. Borrows the bytes it was made from.
struct PayloadView {
  PayloadHeader header;
  absl::Span<const uint8_t> bytes;  // the whole payload
  absl::Span<const uint8_t> layer(size_t i) const {
    return bytes.subspan(kPayloadHeaderBytes + i * header.layer_section_bytes,
                         header.layer_section_bytes);
  }
};

// Parses the header (not the body checksum): kInvalidArgument on any malformed field, on a
// buffer shorter than 64 bytes, or when the buffer size differs from the header's total;
// kDataLoss when the fields are well-formed but the header checksum does not match.
absl::StatusOr<PayloadHeader> ParseHeader(absl::Span<const uint8_t> bytes);

// Full validation: ParseHeader, then the body checksum (kDataLoss on mismatch).
// Never reads outside `bytes`.
absl::StatusOr<PayloadView> ValidatePayload(absl::Span<const uint8_t> bytes);

// ValidatePayload for a payload whose bytes arrive in order, so that the body checksum
// is computed on bytes just received (still in cache) instead of in one pass at the end:
//
//   IncrementalValidator v;
//   ... as bytes arrive:  v.Update(absl::MakeConstSpan(buf.data(), arrived));
//   absl::Status s = v.Finish(buf);   // == ValidatePayload(buf).status()
//
// Update takes the prefix of the payload received so far (it may be re-allocated
// between calls) and hashes its body bytes not hashed yet; Finish hashes the rest of the
// whole payload, then parses the header and compares the checksum, with ValidatePayload's
// codes and messages. Reset starts a new payload; a fresh validator needs none. The
// checksum state is allocated at the first body bytes (cheap to hold one per block of a
// long Get). Not thread-safe.
class IncrementalValidator {
 public:
  IncrementalValidator();
  ~IncrementalValidator();
  IncrementalValidator(const IncrementalValidator&) = delete;
  IncrementalValidator& operator=(const IncrementalValidator&) = delete;

  void Reset();
  void Update(absl::Span<const uint8_t> prefix);
  absl::Status Finish(absl::Span<const uint8_t> payload);

 private:
  struct State;
  // The checksum state, reset for this payload; false if it cannot be made.
  bool Start();
  State* state_;                           // the XXH3 state, made at first use
  uint64_t hashed_ = kPayloadHeaderBytes;  // payload bytes covered (the header counts)
};

// XXH3-64 (seed 0) of a byte range.
uint64_t Xxh3(absl::Span<const uint8_t> bytes);

// ---- Prefix chain hashing (DESIGN §4) ----
using ChainHash = std::array<uint8_t, 32>;

// h_0 = SHA-256("kvtier-chain-v1" ‖ namespace).
ChainHash ChainSeed(std::string_view ns);
// h_i = SHA-256(h_{i-1} ‖ token ids as int32 little-endian ‖ extra).
ChainHash ChainNext(const ChainHash& prev, absl::Span<const int32_t> token_ids,
                    absl::Span<const uint8_t> extra = {});
// Hashes of every full block of `tokens` (block_size tokens each; a partial tail block is
// hashed too when include_partial is true).
std::vector<ChainHash> ChainHashes(std::string_view ns, absl::Span<const int32_t> tokens,
                                   int block_size, bool include_partial = false);
std::string ChainHashHex(const ChainHash& h);

}  // namespace kvtier::kernels

#endif  // KVTIER_KERNELS_PAYLOAD_H_
