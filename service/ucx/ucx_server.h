// UcxDataPlane: the UCX data plane of kvtier-server (DESIGN.md §6, docs/ucx.md).
//
// A UCP listener on its own port accepts client endpoints; requests and responses are
// active messages whose headers are serialized kvtier.v1.UcxRequest / UcxResponse
// (proto/kvtier/v1/kvtier.proto). Put payloads and Get hits travel as the AM data, eager
// or rendezvous as UCX chooses. Every request is validated like a gRPC request before it
// touches the store.
//
//   UcxDataPlaneOptions o;
//   o.port = 50052;
//   UcxHooks hooks;
//   hooks.authorize = [&](absl::string_view token, absl::string_view ns, bool write) {
//     return sessions.Authorize(token, ns, write);
//   };
//   KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<UcxDataPlane> ucx,
//                           UcxDataPlane::Start(o, store.get(), std::move(hooks)));
//   ...
//   ucx->Stop();  // on SIGTERM, before the store is flushed and destroyed
//
// Threading: one loop thread owns the UCX worker; it receives and validates requests and
// sends the responses. Store calls run on a small pool (options.store_threads) so that a
// slow disk never stalls the network; their results go back to the loop thread. The hooks
// run on the loop thread and must not block for long. Start, port, Stop, stats and
// inflight_requests are safe from any thread.
#ifndef KVTIER_SERVICE_UCX_UCX_SERVER_H_
#define KVTIER_SERVICE_UCX_UCX_SERVER_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/ucx/ucx_loop.h"
#include "kernels/payload.h"
#include "storage/tiered_store.h"

namespace kvtier::service {

class PutBuffers;

// Callbacks into the rest of the server. Each may be empty. All run on the loop thread.
struct UcxHooks {
  // Checks a session token's right to read (write=false) or write namespace `ns`; returns
  // OK, kUnauthenticated (unknown or expired token) or kPermissionDenied. Empty: every
  // non-empty token may read and write everything (a request without a token is always
  // kUnauthenticated).
  std::function<absl::Status(absl::string_view session_token, absl::string_view ns, bool write)>
      authorize;
  // Called once per finished request, when its last response has been sent (or failed):
  // method is "Lookup", "Put", "Get", "Delete" or "Unknown" (unparsable request); bytes
  // are payload bytes received (Put) and sent (Get).
  std::function<void(absl::string_view method, absl::StatusCode code, double seconds,
                     uint64_t bytes_in, uint64_t bytes_out)>
      on_request;
  // Called for every validated Lookup: requested blocks, leading blocks present and the
  // request's block_tokens (0 when the client did not say), for hit-rate metrics.
  std::function<void(absl::string_view ns, uint32_t requested, uint32_t present,
                     uint32_t block_tokens)>
      on_lookup;
  // Called for every Put block that reached validation: result is "stored",
  // "deduplicated" or "rejected" (the kvtier_put_blocks_total labels).
  std::function<void(absl::string_view ns, absl::string_view result)> on_put_block;
  // Called for every Get block: tier is "memory", "disk" or "none", result is "hit",
  // "miss" or "error" (the kvtier_get_blocks_total labels).
  std::function<void(absl::string_view tier, absl::string_view result)> on_get_block;
};

struct UcxDataPlaneOptions {
  // IP address the listener binds (IPv4 or IPv6 literal). Default: "0.0.0.0".
  std::string listen_address = "0.0.0.0";
  // Listener port; 0 picks a free one (read it back with port()). Default: 0.
  uint16_t port = 0;
  // Most chain hashes per Lookup, Get or Delete; more is kInvalidArgument. Default: 4096.
  size_t max_chain_length = 4096;
  // Largest Put payload in bytes; larger is kInvalidArgument. Default: 1 GiB
  // (kernels::kMaxPayloadBytes, the validator's own limit).
  uint64_t max_payload_bytes = kernels::kMaxPayloadBytes;
  // Largest request carried in the AM data instead of the header (long chains exceed the
  // transport's AM header limit, about 8 KiB on TCP). Default: 1 MiB.
  size_t max_request_bytes = size_t{1} << 20;
  // Put payload bytes received concurrently over rendezvous; further puts wait, first
  // come first served (their senders see backpressure, not errors), until earlier ones
  // are stored. A single put larger than this is still received alone. On one host the
  // payloads are copied by the loop thread (CMA) one after the other anyway, so more in
  // flight only means more buffers: with 1 GiB, 64 clients' 4 MiB puts each took a fresh
  // buffer (zeroed on the loop thread) and ran at 4.3-4.4 GB/s on the 2-vCPU VM; with
  // 16-32 MiB they reuse prepared and recycled ones, 4.6-5.1 GB/s (p99 67-113 ms). Over
  // RDMA, where the NIC moves the data, a larger budget keeps more transfers in flight.
  // Default: 32 MiB.
  uint64_t max_inflight_put_bytes = uint64_t{32} << 20;
  // Threads that run store calls (Lookup, Get, Put, Delete) off the loop thread, so a
  // slow disk tier never stalls network progress; 0 runs them inline on the loop thread.
  // Default: 4.
  int store_threads = 4;
  // Run Get's store call on the loop thread even with store threads, saving two thread
  // hand-offs per Get (pool and back; about 30 us of a 1.1 ms 4 MiB Get at one client on
  // the 2-vCPU VM). Only for a store without a disk tier, where a Get is a RAM lookup
  // (microseconds); a disk hit reads and validates from RocksDB and must stay off the loop
  // thread. kvtier-server sets it when it runs RAM-only. Default: false.
  bool inline_gets = false;
  // Buffers for rendezvous Put payloads that a background thread keeps ready (allocated
  // and pre-faulted) for the size most puts have, so the loop thread does not take the page
  // faults of fresh memory (service/put_buffers.h); 0 disables the thread. Default: 4.
  int ready_put_buffers = 4;
  // A put buffer pool to share (borrowed; must outlive the data plane), e.g. the one of
  // kvtier-server's gRPC Put path, so that a buffer freed by either path comes back to
  // both; ready_put_buffers is then not used. Null: the data plane has its own. Default:
  // null.
  PutBuffers* put_buffers = nullptr;
  // Tests only: makes Get answers sent in pieces misbehave, to check that the client
  // never returns wrong bytes. kFlipBit sends piece 1 of every hit from a copy with one
  // bit flipped; kSkipPiece leaves piece 1 out (later pieces' offsets then jump);
  // kShortPiece sends piece 1 one byte short. Default: kNone.
  enum class GetFaultForTesting { kNone, kFlipBit, kSkipPiece, kShortPiece };
  GetFaultForTesting get_fault_for_testing = GetFaultForTesting::kNone;
  // Time Stop gives requests already received to finish before endpoints are closed.
  // Default: 20 s.
  absl::Duration drain_timeout = absl::Seconds(20);
  // The loop thread and UCX configuration (e.g. loop.ucx_config = {{"TLS", "tcp"}}; the
  // UCX_* environment applies too). Default: UcxLoopOptions defaults, thread name
  // "kvtier-ucx-srv".
  ucx::UcxLoopOptions loop = DefaultLoopOptions();

  static ucx::UcxLoopOptions DefaultLoopOptions() {
    ucx::UcxLoopOptions o;
    o.name = "kvtier-ucx-srv";
    return o;
  }
};

// Counters since Start (for tests and debugging; metrics go through UcxHooks).
struct UcxDataPlaneStats {
  uint64_t connections_accepted = 0;
  uint64_t connections_open = 0;         // client endpoints connected now
  uint64_t requests = 0;                 // request AMs received
  uint64_t rendezvous_receives = 0;      // request data pulled with ucp_am_recv_data_nbx
  uint64_t rejected_before_receive = 0;  // rendezvous data dropped because the header failed
  uint64_t put_buffers_ready = 0;        // rendezvous puts received into a prepared buffer
  uint64_t put_buffers_allocated = 0;    // rendezvous puts whose buffer was allocated then
  uint64_t inline_gets = 0;              // Get store calls run on the loop thread (inline_gets)
  uint64_t get_pieces = 0;               // Get hit responses sent as pieces (get_piece_bytes)
  uint64_t puts_queued = 0;              // rendezvous puts that waited for the put budget
};

// Thread-safe: see the file comment.
class UcxDataPlane {
 public:
  // Starts the loop thread and the listener. `store` is borrowed and must outlive the
  // data plane (Stop or destruction). Errors: kInvalidArgument for a bad listen address or
  // option, kUnavailable when the port cannot be bound, other UCX errors as mapped by
  // common/ucx/ucx_status.h.
  static absl::StatusOr<std::unique_ptr<UcxDataPlane>> Start(const UcxDataPlaneOptions& options,
                                                             storage::TieredStore* store,
                                                             UcxHooks hooks);

  UcxDataPlane(const UcxDataPlane&) = delete;
  UcxDataPlane& operator=(const UcxDataPlane&) = delete;
  ~UcxDataPlane();  // Stop()

  // The bound listener port.
  uint16_t port() const { return port_; }

  // Stops accepting connections; requests that arrive from now on get kUnavailable;
  // requests already received finish (up to options.drain_timeout); then every endpoint is
  // closed and the loop thread ends. Idempotent; blocks until done.
  void Stop();

  // Requests received but not finished (for tests and the /readyz drain). Any thread.
  size_t inflight_requests() const;

  UcxDataPlaneStats stats() const;

 private:
  class Impl;
  explicit UcxDataPlane(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
  uint16_t port_ = 0;
};

}  // namespace kvtier::service

#endif  // KVTIER_SERVICE_UCX_UCX_SERVER_H_
