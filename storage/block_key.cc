#include "storage/block_key.h"

#include <cstring>

#include "absl/status/status.h"

namespace kvtier::storage {
namespace {

void AppendU32(std::string& out, uint32_t v) {
  const char b[4] = {static_cast<char>(v >> 24), static_cast<char>(v >> 16),
                     static_cast<char>(v >> 8), static_cast<char>(v)};
  out.append(b, 4);
}

uint32_t ReadU32(const char* p) {
  const auto* u = reinterpret_cast<const unsigned char*>(p);
  return (uint32_t{u[0]} << 24) | (uint32_t{u[1]} << 16) | (uint32_t{u[2]} << 8) | u[3];
}

}  // namespace

std::string EncodeNamespace(std::string_view ns) {
  std::string out;
  out.reserve(4 + ns.size());
  AppendU32(out, static_cast<uint32_t>(ns.size()));
  out.append(ns.data(), ns.size());
  return out;
}

std::string EncodeBlockKey(std::string_view ns, const ChainHash& chain, uint32_t part) {
  std::string out;
  out.reserve(EncodedKeySize(ns.size()));
  AppendU32(out, static_cast<uint32_t>(ns.size()));
  out.append(ns.data(), ns.size());
  out.append(reinterpret_cast<const char*>(chain.data()), chain.size());
  AppendU32(out, part);
  return out;
}

void SetEncodedChain(std::string* encoded, const ChainHash& chain) {
  const uint32_t n = ReadU32(encoded->data());
  std::memcpy(encoded->data() + 4 + n, chain.data(), chain.size());
}

std::string_view EncodedKeyNamespace(std::string_view encoded) {
  if (encoded.size() < 4) return {};
  const uint32_t n = ReadU32(encoded.data());
  if (encoded.size() != EncodedKeySize(n)) return {};
  return encoded.substr(4, n);
}

absl::StatusOr<BlockKey> DecodeBlockKey(std::string_view encoded) {
  if (encoded.size() < 4) return absl::DataLossError("block key shorter than its length prefix");
  const uint32_t n = ReadU32(encoded.data());
  if (encoded.size() != EncodedKeySize(n)) {
    return absl::DataLossError("block key size does not match its namespace length");
  }
  BlockKey key;
  key.ns.assign(encoded.data() + 4, n);
  std::memcpy(key.chain.data(), encoded.data() + 4 + n, key.chain.size());
  key.part = ReadU32(encoded.data() + 4 + n + 32);
  return key;
}

}  // namespace kvtier::storage
