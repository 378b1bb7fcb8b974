// Helpers shared by the gRPC and UCX transports (not a public API).
#ifndef KVTIER_CLIENT_TRANSPORT_INTERNAL_H_
#define KVTIER_CLIENT_TRANSPORT_INTERNAL_H_

#include <grpcpp/grpcpp.h>

#include <cstddef>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "client/transport.h"

namespace kvtier::client::internal {

absl::Status FromGrpc(const grpc::Status& s);
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& endpoint, const TransportOptions& o);
// Deadline and bearer token on a call.
void PrepareContext(grpc::ClientContext* ctx, const TransportOptions& o, absl::Time deadline);
absl::Status HealthCheck(const std::shared_ptr<grpc::Channel>& channel, const TransportOptions& o,
                         absl::Time deadline);

// Chunk size for a payload of `n` bytes sent in messages of at most `max_chunk` bytes: the
// payload split into the fewest chunks, of equal size (the last one up to `pieces - 1`
// bytes shorter). A 4 MiB + 960 byte block is two chunks of about 2 MiB instead of 4 MiB
// and 960 bytes: on a gRPC stream a message is written only once the previous one was, so
// a tiny last chunk costs a whole extra hop after the big one, while two halves overlap
// (the second is written as the first is read). Returns at least 1.
inline size_t EvenChunkBytes(size_t n, size_t max_chunk) {
  if (n == 0 || max_chunk == 0) return 1;
  const size_t pieces = (n + max_chunk - 1) / max_chunk;
  return (n + pieces - 1) / pieces;
}

}  // namespace kvtier::client::internal

#endif  // KVTIER_CLIENT_TRANSPORT_INTERNAL_H_
