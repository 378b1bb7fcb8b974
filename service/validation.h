// Request validation and flag parsing for kvtier-server (docs/service-contract.md). Every
// request is checked here before it touches storage; a failure is kInvalidArgument with a
// message naming the field, and the server changes nothing.
//
//   KVTIER_RETURN_IF_ERROR(ValidateNamespace(req.namespace_()));
//   KVTIER_ASSIGN_OR_RETURN(std::vector<ChainHash> chain,
//                           ParseChain(req.chain_hashes(), limits.max_chain_length));
//   absl::StatusOr<uint64_t> bytes = ParseByteSize("4GiB");
//
// Thread safety: all functions are pure and safe to call concurrently.
#ifndef KVTIER_SERVICE_VALIDATION_H_
#define KVTIER_SERVICE_VALIDATION_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "google/protobuf/repeated_ptr_field.h"
#include "kernels/payload.h"
#include "proto/kvtier/v1/wire.h"

namespace kvtier::service {

inline constexpr size_t kMaxNamespaceBytes = 256;
inline constexpr size_t kChainHashBytes = 32;
// Largest payload chunk in one Put or Get message.
inline constexpr size_t kMaxChunkBytes = size_t{4} << 20;
// Chunk size the server sends Get payloads in (at most; see EvenChunkBytes). Smaller than
// kMaxChunkBytes so that the client copies one chunk out of gRPC's buffers while the next
// is still on the way (a 4 MiB Get at one client: 2.1 ms -> 1.5 ms on the 2-vCPU VM).
inline constexpr size_t kGetChunkBytes = size_t{1} << 20;
using ::kvtier::v1::wire::EvenChunkBytes;

// Request limits of one server. Values come from the flags of the same names.
struct Limits {
  // Hashes per Lookup/Get/Delete. Default: 4096.
  uint32_t max_chain_length = 4096;
  // Blocks per Put stream. Default: 256.
  uint32_t max_blocks_per_put = 256;
  // gRPC message limit in bytes (send and receive). Default: 8 MiB.
  uint64_t max_message_bytes = uint64_t{8} << 20;
  // Bytes one Put stream may buffer before commit (all its payloads). Default: 2 GiB.
  uint64_t max_put_stream_bytes = uint64_t{2} << 30;
};

// Namespace syntax: 1..256 bytes of [A-Za-z0-9._:/-], no "..".
absl::Status ValidateNamespace(absl::string_view ns);

// Converts wire hashes to ChainHash, checking 1 <= count <= max_len and 32 bytes each.
absl::StatusOr<std::vector<kernels::ChainHash>> ParseChain(
    const google::protobuf::RepeatedPtrField<std::string>& hashes, uint32_t max_len);

// One 32-byte hash; `what` names the field in the error message.
absl::StatusOr<kernels::ChainHash> ParseHash(absl::string_view bytes, absl::string_view what);

// "4GiB", "100MiB", "512", "1.5GiB" -> bytes. Suffixes B, KiB, MiB, GiB, TiB (also K, M, G, T
// and KB/MB/GB/TB as binary units). kInvalidArgument on anything else.
absl::StatusOr<uint64_t> ParseByteSize(absl::string_view text);

// "tenantA/=100GiB,tenantB/=1TiB" -> {prefix: bytes}. Empty text -> empty map.
absl::StatusOr<std::map<std::string, uint64_t>> ParseQuotas(absl::string_view text);

}  // namespace kvtier::service

#endif  // KVTIER_SERVICE_VALIDATION_H_
