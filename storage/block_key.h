// Byte encoding of a BlockKey (DESIGN.md §4), used as the map key of the RAM tier and
// the RocksDB key of the disk tier:
//
//   u32 big-endian ns length | ns bytes | 32-byte chain hash | u32 big-endian part
//
// The length prefix makes the encoding prefix-free: no namespace can alias another
// namespace's keys, and every key of one namespace shares the prefix EncodeNamespace(ns).
//
//   std::string k = EncodeBlockKey(key);
//   absl::StatusOr<BlockKey> back = DecodeBlockKey(k);  // kDataLoss when malformed
//
// Thread safety: pure functions, safe to call concurrently.
#ifndef KVTIER_STORAGE_BLOCK_KEY_H_
#define KVTIER_STORAGE_BLOCK_KEY_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "storage/tiered_store.h"

namespace kvtier::storage {

// Encoded size of a key with a namespace of ns_size bytes.
inline constexpr size_t EncodedKeySize(size_t ns_size) { return 4 + ns_size + 32 + 4; }

// The common prefix of every encoded key of `ns`: its length and bytes.
std::string EncodeNamespace(std::string_view ns);

std::string EncodeBlockKey(std::string_view ns, const ChainHash& chain, uint32_t part);
inline std::string EncodeBlockKey(const BlockKey& key) {
  return EncodeBlockKey(key.ns, key.chain, key.part);
}

// Overwrites the chain hash of an encoded key in place (walking a chain without
// re-encoding). Precondition: `encoded` is a well-formed encoding.
void SetEncodedChain(std::string* encoded, const ChainHash& chain);

// Parses an encoded key; kDataLoss when the bytes are not a well-formed encoding.
absl::StatusOr<BlockKey> DecodeBlockKey(std::string_view encoded);

// The namespace of an encoded key without copying (empty view when malformed).
std::string_view EncodedKeyNamespace(std::string_view encoded);

}  // namespace kvtier::storage

#endif  // KVTIER_STORAGE_BLOCK_KEY_H_
