// Per-endpoint transports of the kvtier client: one object talks to one kvtier-server.
// kvtier::Client (client.h) holds one Transport per endpoint and does placement, fan-out,
// retries and payload validation on top; transports only move requests and bytes.
// Implementations: gRPC (MakeGrpcTransport) and UCX (MakeUcxTransport: control over gRPC,
// data over a UCX session).
//
//   TransportOptions o;
//   o.token = "secret";
//   KVTIER_ASSIGN_OR_RETURN(auto t, MakeGrpcTransport("10.0.0.7:50051", o));
//   KVTIER_ASSIGN_OR_RETURN(uint32_t n, t->Lookup(ns, 0, chain, 128, absl::Now() +
//   absl::Seconds(1)));
//
// Thread safety: implementations are safe for concurrent use without external locking.
#ifndef KVTIER_CLIENT_TRANSPORT_H_
#define KVTIER_CLIENT_TRANSPORT_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "kernels/payload.h"
#include "kvtier/v1/kvtier.pb.h"

namespace kvtier::client {

using kernels::ChainHash;

enum class PutOutcome : uint8_t { kStored = 0, kDeduplicated = 1 };
enum class Tier : uint8_t { kUnknown = 0, kMemory = 1, kDisk = 2 };

// One block to store. `payload` is borrowed: it must stay valid until the call returns
// (for async calls: until the completion callback has run).
struct PutItem {
  ChainHash hash{};
  absl::Span<const uint8_t> payload;
};

// One block of a Get. `hit` with `payload` holding the validated bytes; or a miss with
// `status` OK (not stored), kDataLoss (a stored or received copy failed validation), or
// the transport error (kUnavailable, kDeadlineExceeded, ...) that made the block
// unreachable. Never holds bytes that failed validation.
struct BlockResult {
  absl::Status status;
  bool hit = false;
  Tier tier = Tier::kUnknown;
  std::vector<uint8_t> payload;
};

struct TransportOptions {
  // TLS for gRPC: on when `tls` is true. PEM strings (not paths). Default: plaintext.
  bool tls = false;
  std::string tls_ca_pem;       // trusted roots; empty = system roots
  std::string tls_cert_pem;     // client certificate for mutual TLS; empty = none
  std::string tls_key_pem;      // its private key
  std::string tls_server_name;  // overrides the name checked against the server cert
  // Bearer token sent as `authorization: Bearer <token>`; empty = none. Default: empty.
  std::string token;
  // Largest gRPC message accepted. Default: 16 MiB (the server sends <= 4 MiB chunks).
  int max_receive_message_bytes = 16 << 20;
  // Blocks per Put stream (the server's --max_blocks_per_put). Default: 256.
  int max_blocks_per_put = 256;
  // UCX only: Get hits arrive in pieces of this many bytes, each checked while the next
  // moves (UcxConnectionOptions::get_piece_bytes). 0 or 64 KiB..1 GiB. Default: 1 MiB.
  uint64_t ucx_get_piece_bytes = uint64_t{1} << 20;
  // UCX only: connections (each its own session) per endpoint (ClientOptions). Default: 4.
  int ucx_connections = 4;
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual const std::string& endpoint() const = 0;
  // "grpc" or "ucx".
  virtual absl::string_view kind() const = 0;

  // Leading blocks of `chain` present on this server.
  virtual absl::StatusOr<uint32_t> Lookup(absl::string_view ns, uint32_t part,
                                          absl::Span<const ChainHash> chain, uint32_t block_tokens,
                                          absl::Time deadline) = 0;
  // Stores the blocks (split into streams of at most max_blocks_per_put, each all or
  // nothing). One outcome per block, in order.
  virtual absl::StatusOr<std::vector<PutOutcome>> Put(absl::string_view ns, uint32_t part,
                                                      absl::Span<const PutItem> blocks,
                                                      absl::Time deadline) = 0;
  // One result per hash, in order. Payloads are validated by Client, unless
  // validates_payloads() (then every hit was validated on receipt and every failure is a
  // non-hit). A non-OK return means the call failed as a whole.
  virtual absl::StatusOr<std::vector<BlockResult>> Get(absl::string_view ns, uint32_t part,
                                                       absl::Span<const ChainHash> chain,
                                                       absl::Time deadline) = 0;
  // True when Get itself validates every hit (kernels::ValidatePayload on receipt), so
  // Client need not hash it a second time. Default: false.
  virtual bool validates_payloads() const { return false; }
  virtual absl::StatusOr<uint32_t> Delete(absl::string_view ns, uint32_t part,
                                          absl::Span<const ChainHash> chain,
                                          absl::Time deadline) = 0;
  virtual absl::StatusOr<v1::StatsResponse> Stats(absl::Time deadline) = 0;
  // grpc.health.v1 Check of the whole server: OK when SERVING, kUnavailable otherwise.
  virtual absl::Status Health(absl::Time deadline) = 0;
};

// A gRPC transport to `endpoint` ("host:port"). The channel connects lazily.
absl::StatusOr<std::unique_ptr<Transport>> MakeGrpcTransport(const std::string& endpoint,
                                                             const TransportOptions& options);

// A UCX transport: Lookup/Put/Get/Delete move over a UCX session opened with the
// OpenUcxSession gRPC call (re-opened when it expires); Stats and Health use gRPC.
// kUnimplemented when this build has no UCX client.
absl::StatusOr<std::unique_ptr<Transport>> MakeUcxTransport(const std::string& endpoint,
                                                            const TransportOptions& options);

}  // namespace kvtier::client

#endif  // KVTIER_CLIENT_TRANSPORT_H_
