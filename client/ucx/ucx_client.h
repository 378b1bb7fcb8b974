// UcxConnection: one UCX endpoint to a kvtier server's UCX data plane (docs/ucx.md).
//
// The session token comes from the authenticated gRPC call OpenUcxSession; the port from
// its response. Payloads received are validated (kernels::ValidatePayload) before they are
// returned: a block is a hit with correct bytes, a miss, or an error; never wrong bytes.
//
//   KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<UcxConnection> c,
//       UcxConnection::Connect("10.0.0.7", session.ucx_port(), session.session_token(),
//                              absl::Seconds(5)));
//   KVTIER_ASSIGN_OR_RETURN(uint32_t hit, c->Lookup(ns, /*part=*/0, chain));
//   KVTIER_ASSIGN_OR_RETURN(auto outcome, c->Put(ns, chain[0], 0, bytes.data(), bytes.size()));
//   KVTIER_ASSIGN_OR_RETURN(std::vector<UcxGetBlock> blocks, c->Get(ns, 0, chain));
//
// Threading: every method is safe to call concurrently from any number of threads without
// external locking; requests are pipelined on the one endpoint, which a dedicated loop
// thread drives (one per connection). Calls block until their answer, their deadline or a
// connection failure.
//
// Failures: a request without an answer by its deadline returns kDeadlineExceeded; a lost
// or closed connection returns kUnavailable for every request in flight and every later
// one (connect again). The server's own statuses (kInvalidArgument, kDataLoss,
// kUnauthenticated, kPermissionDenied, ...) are returned as they are.
#ifndef KVTIER_CLIENT_UCX_UCX_CLIENT_H_
#define KVTIER_CLIENT_UCX_UCX_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/ucx/ucx_loop.h"
#include "kernels/payload.h"
#include "kvtier/v1/kvtier.pb.h"

namespace kvtier::client {

struct UcxConnectionOptions {
  // Deadline of a request whose call passes no timeout. Default: 10 s.
  absl::Duration request_timeout = absl::Seconds(10);
  // Largest Get payload accepted; a larger announced block is a kDataLoss block.
  // Default: 1 GiB (kernels::kMaxPayloadBytes).
  uint64_t max_payload_bytes = kernels::kMaxPayloadBytes;
  // Get hits larger than this arrive in pieces of this many bytes (UcxRequest
  // .get_piece_bytes), so the calling thread checksums one piece while the loop thread
  // receives the next: a 4 MiB hit is checked in about the time of its copy instead of
  // after it. 0 asks for whole payloads; otherwise 64 KiB..1 GiB (kInvalidArgument from
  // Connect). Default: 1 MiB.
  uint64_t get_piece_bytes = uint64_t{1} << 20;
  // The loop thread and UCX configuration (the UCX_* environment applies too).
  // Default: UcxLoopOptions defaults, thread name "kvtier-ucx-cli".
  ucx::UcxLoopOptions loop = DefaultLoopOptions();

  static ucx::UcxLoopOptions DefaultLoopOptions() {
    ucx::UcxLoopOptions o;
    o.name = "kvtier-ucx-cli";
    return o;
  }
};

// One block of a Get, in request order.
struct UcxGetBlock {
  // OK: a hit (payload set and validated) or a miss (payload empty). Otherwise this block
  // failed: kDataLoss when the server dropped a corrupt stored copy or the bytes received
  // failed validation, kUnavailable when its transfer broke off.
  absl::Status status;
  std::optional<std::vector<uint8_t>> payload;
  v1::Tier tier = v1::TIER_UNSPECIFIED;  // where the server found a hit
};

// A Put sent with UcxConnection::StartPut whose answer is taken later. Movable, not
// copyable. Thread-compatible: one thread at a time.
class UcxPendingPut {
 public:
  UcxPendingPut(UcxPendingPut&&) noexcept;
  UcxPendingPut& operator=(UcxPendingPut&&) noexcept;
  // Waits for the answer first when Wait was not called: the payload is never referenced
  // after this object is gone.
  ~UcxPendingPut();

  // Blocks until the answer, the request's deadline or a connection failure, like Put;
  // from then on the payload is no longer referenced. Later calls return the same result
  // (kFailedPrecondition on a moved-from object).
  absl::StatusOr<v1::PutResponse::Outcome> Wait();

 private:
  friend class UcxConnection;
  struct State;
  explicit UcxPendingPut(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

class UcxConnection {
 public:
  // Connects to host:port (a name or an IP literal; the first address that resolves) and
  // waits until the endpoint is established. kUnavailable when the server cannot be
  // reached, kDeadlineExceeded after `timeout`, kInvalidArgument for an empty token or an
  // unresolvable host.
  static absl::StatusOr<std::unique_ptr<UcxConnection>> Connect(
      const std::string& host, uint16_t port, std::string session_token, absl::Duration timeout,
      const UcxConnectionOptions& options = UcxConnectionOptions());

  UcxConnection(const UcxConnection&) = delete;
  UcxConnection& operator=(const UcxConnection&) = delete;
  ~UcxConnection();  // Close()

  // In every call, timeout == 0 (the default) means options.request_timeout; a negative
  // timeout returns kDeadlineExceeded without sending anything.

  // Leading blocks of `chain` present on the server (stops at the first miss).
  absl::StatusOr<uint32_t> Lookup(absl::string_view ns, uint32_t part,
                                  absl::Span<const kernels::ChainHash> chain,
                                  uint32_t block_tokens = 0,
                                  absl::Duration timeout = absl::ZeroDuration());

  // Stores one block. `payload` (n bytes) is sent without a copy: it must stay unchanged
  // until Put returns, which it does only once UCX no longer reads it. If the deadline
  // passes while UCX still reads it, the connection is closed to release the buffer (this
  // and later calls then see kDeadlineExceeded / kUnavailable).
  // STORED or DEDUPLICATED on success.
  absl::StatusOr<v1::PutResponse::Outcome> Put(absl::string_view ns,
                                               const kernels::ChainHash& chain_hash, uint32_t part,
                                               const uint8_t* payload, size_t n,
                                               absl::Duration timeout = absl::ZeroDuration());

  // Put without waiting for the answer: sends the request (the loop thread starts it at
  // once) and returns; UcxPendingPut::Wait takes the outcome. `payload` must stay
  // unchanged until then. Puts started back to back, on this connection or on others,
  // are in flight together: a batch of blocks waits about one round trip, not one per
  // block. Put(...) is StartPut(...).Wait().
  UcxPendingPut StartPut(absl::string_view ns, const kernels::ChainHash& chain_hash, uint32_t part,
                         const uint8_t* payload, size_t n,
                         absl::Duration timeout = absl::ZeroDuration());

  // One UcxGetBlock per hash, in order. A request-level error (bad request, auth,
  // connection) is the returned status instead.
  absl::StatusOr<std::vector<UcxGetBlock>> Get(absl::string_view ns, uint32_t part,
                                               absl::Span<const kernels::ChainHash> chain,
                                               absl::Duration timeout = absl::ZeroDuration());

  // Removes the blocks; returns how many were present.
  absl::StatusOr<uint32_t> Delete(absl::string_view ns, uint32_t part,
                                  absl::Span<const kernels::ChainHash> chain,
                                  absl::Duration timeout = absl::ZeroDuration());

  // False once the endpoint failed or Close was called.
  bool connected() const;

  // UCX's description of the endpoint (ucp_ep_print_info): its lanes and the transport
  // of each, e.g. "cma/memory ... rma_bw#0" when rendezvous payloads move by CMA. For
  // logs, tests and benchmarks. kUnavailable once closed. Any thread.
  absl::StatusOr<std::string> EndpointInfo() const;

  // Closes the endpoint (requests in flight get kUnavailable) and ends the loop thread.
  // Idempotent.
  void Close();

  // Tests only: Get blocks received into a buffer the calling thread zeroed ahead (a Get
  // prepares up to 4 of the last received block size, at most 64 MiB in all).
  uint64_t PreparedReceivesForTesting() const;

  // Tests only: sends `header` verbatim as a request AM (with `data` as its AM data, which
  // must stay valid until the call returns) and collects every response whose request_id
  // is `request_id` until one has `last` set.
  absl::StatusOr<std::vector<v1::UcxResponse>> RawRequestForTesting(std::string header,
                                                                    uint64_t request_id,
                                                                    const uint8_t* data, size_t n,
                                                                    absl::Duration timeout);

 private:
  class Impl;
  explicit UcxConnection(std::shared_ptr<Impl> impl);

  std::shared_ptr<Impl> impl_;
};

}  // namespace kvtier::client

#endif  // KVTIER_CLIENT_UCX_UCX_CLIENT_H_
