// MakeUcxTransport for builds without the UCX client library.
#include "client/transport.h"

namespace kvtier::client {

absl::StatusOr<std::unique_ptr<Transport>> MakeUcxTransport(const std::string& endpoint,
                                                            const TransportOptions& options) {
  return absl::UnimplementedError("this build has no UCX client transport");
}

}  // namespace kvtier::client
