// Protobuf varint encoding, for the raw (zero-copy) Put and Get paths of the gRPC service
// and client, which frame chunk fields by hand around payload slices they do not copy.
//
//   std::string tag;
//   kvtier::v1::wire::AppendVarint((2 << 3) | 2, &tag);   // field 2, length-delimited
//   kvtier::v1::wire::AppendVarint(chunk_size, &tag);
//
// Thread safety: pure functions.
#ifndef KVTIER_PROTO_KVTIER_V1_WIRE_H_
#define KVTIER_PROTO_KVTIER_V1_WIRE_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace kvtier::v1::wire {

// Smallest UcxRequest.get_piece_bytes other than 0 (kvtier.proto): a piece costs one
// response AM, so tiny pieces would make a Get a flood of messages.
inline constexpr uint64_t kMinGetPieceBytes = uint64_t{64} << 10;

// Appends v as a base-128 varint.
inline void AppendVarint(uint64_t v, std::string* out) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}

// Reads a varint from bytes[*pos, end) and advances *pos; false when malformed or
// truncated (never reads at or past end).
inline bool ReadVarint(const uint8_t* bytes, size_t end, size_t* pos, uint64_t* value) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64 && *pos < end; shift += 7) {
    const uint8_t b = bytes[(*pos)++];
    v |= static_cast<uint64_t>(b & 0x7F) << shift;
    if (!(b & 0x80)) {
      *value = v;
      return true;
    }
  }
  return false;
}

// Chunk size for sending a payload of `n` bytes in chunks of at most `max_chunk` bytes
// (Put and Get streams, client and server): the fewest chunks, of equal size (the last up
// to `pieces - 1` bytes shorter), so a block a little over 4 MiB goes as two halves instead
// of 4 MiB plus a tiny tail that costs a whole extra write round on a gRPC stream (a message
// is written only once the previous one was). Returns at least 1.
inline size_t EvenChunkBytes(size_t n, size_t max_chunk) {
  if (n == 0 || max_chunk == 0) return 1;
  const size_t pieces = (n + max_chunk - 1) / max_chunk;
  return (n + pieces - 1) / pieces;
}

// Copies the first bytes of a message held as a list of slices (anything with begin() and
// size(), e.g. the grpc::Slice list of a ByteBuffer) into out[0, n); returns how many were
// copied (fewer than n when the message is shorter).
template <typename Slices>
size_t CopyPrefix(const Slices& slices, uint8_t* out, size_t n) {
  size_t got = 0;
  for (const auto& sl : slices) {
    const size_t take = std::min<size_t>(sl.size(), n - got);
    std::memcpy(out + got, sl.begin(), take);
    got += take;
    if (got == n) break;
  }
  return got;
}

}  // namespace kvtier::v1::wire

#endif  // KVTIER_PROTO_KVTIER_V1_WIRE_H_
