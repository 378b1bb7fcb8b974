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
#include "proto/kvtier/v1/wire.h"

namespace kvtier::client::internal {

absl::Status FromGrpc(const grpc::Status& s);
std::shared_ptr<grpc::Channel> MakeChannel(const std::string& endpoint, const TransportOptions& o);
// Deadline and bearer token on a call.
void PrepareContext(grpc::ClientContext* ctx, const TransportOptions& o, absl::Time deadline);
absl::Status HealthCheck(const std::shared_ptr<grpc::Channel>& channel, const TransportOptions& o,
                         absl::Time deadline);

using ::kvtier::v1::wire::EvenChunkBytes;

}  // namespace kvtier::client::internal

#endif  // KVTIER_CLIENT_TRANSPORT_INTERNAL_H_
