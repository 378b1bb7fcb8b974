// A small reader/writer for NumPy .npy files (format versions 1.0, 2.0 and 3.0), limited to
// what the codec tools exchange: little-endian float16 or float32, C order, any rank.
//
//   absl::StatusOr<NpyArray> k = ReadNpy("K.npy");        // values converted to fp32
//   KVTIER_RETURN_IF_ERROR(WriteNpy("O.npy", {8, 128}, out, NpyDtype::kFloat32));
//
// Errors: kNotFound when the file cannot be opened, kInvalidArgument (with the path and
// the reason) for a malformed or truncated file, an unsupported dtype, Fortran order, or a
// size that does not match the shape; kInternal for a failed write.
// Thread safety: pure functions.
#ifndef KVTIER_TOOLS_CODEC_NPY_H_
#define KVTIER_TOOLS_CODEC_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace kvtier::tools {

enum class NpyDtype { kFloat16, kFloat32 };

struct NpyArray {
  NpyDtype dtype = NpyDtype::kFloat32;
  std::vector<int64_t> shape;
  std::vector<float> data;  // C order, converted to fp32 (exact for fp16)

  int64_t size() const;
  std::string ShapeString() const;  // "(4096, 8, 128)"
};

// Parses the bytes of a .npy file. `name` only labels error messages.
absl::StatusOr<NpyArray> ParseNpy(absl::Span<const uint8_t> bytes, const std::string& name);
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);

// Serializes (format 1.0, header padded to 64 bytes). fp16 output rounds to nearest even.
std::vector<uint8_t> SerializeNpy(absl::Span<const int64_t> shape, const float* data,
                                  NpyDtype dtype);
absl::Status WriteNpy(const std::string& path, absl::Span<const int64_t> shape, const float* data,
                      NpyDtype dtype);

// Whole-file helpers shared by the codec tools.
absl::StatusOr<std::vector<uint8_t>> ReadFileBytes(const std::string& path);
absl::Status WriteFileBytes(const std::string& path, absl::Span<const uint8_t> bytes);

}  // namespace kvtier::tools

#endif  // KVTIER_TOOLS_CODEC_NPY_H_
