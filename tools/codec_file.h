// The file `kvtier codec encode` writes (documented in docs/codec.md): a 32-byte header
// followed by one block payload (kernels/payload.h, num_layers = 1) per block, each
// preceded by its size:
//
//   offset  size  field
//   0       4     magic "KVTF" (0x4654564B little-endian)
//   4       2     version (1)
//   6       2     header bytes (32)
//   8       1     preset (kernels/format.h numbering)
//   9       1     sink_blocks the encoder used
//   10      2     head_dim
//   12      2     kv_heads
//   14      2     reserved (0)
//   16      4     tokens
//   20      4     blocks
//   24      8     XXH3-64 of bytes [0, 24)
//   32      ...   blocks × { u64 payload_bytes, payload }
//
// All integers little-endian. Every payload is validated (ValidatePayload) on read.
// Thread safety: pure functions.
#ifndef KVTIER_TOOLS_CODEC_FILE_H_
#define KVTIER_TOOLS_CODEC_FILE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/format.h"
#include "kernels/payload.h"

namespace kvtier::tools {

inline constexpr uint32_t kKvFileMagic = 0x4654564B;  // "KVTF"
inline constexpr uint16_t kKvFileVersion = 1;
inline constexpr size_t kKvFileHeaderBytes = 32;

struct KvFileInfo {
  kernels::Preset preset = kernels::kDefaultPreset;
  int sink_blocks = 0;
  int head_dim = 0;
  int kv_heads = 0;
  int64_t tokens = 0;
};

// Serializes header + size-prefixed payloads. Precondition: the payloads belong to info.
std::vector<uint8_t> SerializeKvFile(const KvFileInfo& info,
                                     absl::Span<const std::vector<uint8_t>> payloads);

struct KvFile {
  KvFileInfo info;
  std::vector<kernels::PayloadView> blocks;  // borrow the parsed bytes
};

// Parses and validates a whole file (borrowing `bytes`). kInvalidArgument for a malformed
// or truncated file, a payload that disagrees with the file header, token counts that do
// not add up, or a partial block that is not last; kDataLoss for a checksum mismatch
// (file header or any payload). Never reads outside `bytes`.
absl::StatusOr<KvFile> ParseKvFile(absl::Span<const uint8_t> bytes);

}  // namespace kvtier::tools

#endif  // KVTIER_TOOLS_CODEC_FILE_H_
