// kvtier::Client: the C++ client of a kvtier cluster (DESIGN.md §7). Places blocks on
// servers by rendezvous hashing of the block key, fans Lookup/Put/Get out to the shards in
// parallel, retries UNAVAILABLE with backoff within the call's deadline, and validates
// every received payload: a failure is a miss or a clear status, never wrong bytes.
//
//   ClientOptions o;
//   o.endpoints = {"10.0.0.7:50051", "10.0.0.8:50051", "10.0.0.9:50051"};
//   // or: o.dns_name = "kvtier-headless.kv.svc.cluster.local:50051";
//   o.token = "secret";
//   KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<Client> c, Client::Create(o));
//   std::vector<ChainHash> chain = Client::ChainHashes(ns, token_ids, /*block_size=*/128);
//   KVTIER_ASSIGN_OR_RETURN(size_t hit, c->Lookup(ns, /*part=*/0, chain, /*block_tokens=*/128));
//   std::vector<BlockResult> got = c->Get(ns, 0, absl::MakeSpan(chain).first(hit));
//   KVTIER_ASSIGN_OR_RETURN(auto outcomes, c->Put(ns, 0, items));   // items borrow payloads
//
// Thread safety: a Client is safe for concurrent use from any number of threads.
#ifndef KVTIER_CLIENT_CLIENT_H_
#define KVTIER_CLIENT_CLIENT_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "client/transport.h"

namespace kvtier::client {

class ThreadPool;

enum class TransportKind { kGrpc, kUcx };

struct ClientOptions {
  // Servers as "host:port". Either this or dns_name. Default: none.
  std::vector<std::string> endpoints;
  // "name:port": resolved at Create to every A/AAAA address (e.g. a Kubernetes headless
  // Service); each address becomes an endpoint. Default: empty.
  std::string dns_name;
  // Data transport per endpoint. Default: gRPC.
  TransportKind transport = TransportKind::kGrpc;
  // TLS: on when `tls` is true. Files in PEM; empty CA = system roots; cert+key = mutual
  // TLS. Default: plaintext.
  bool tls = false;
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;
  // Name checked against the server certificate instead of the endpoint host. Default: "".
  std::string tls_server_name;
  // Bearer token. Default: none.
  std::string token;
  // Deadline of one client call including its retries. Default: 10 s.
  absl::Duration timeout = absl::Seconds(10);
  // Attempts per shard request on UNAVAILABLE (1 = no retry). Default: 3.
  int max_attempts = 3;
  // First retry delay; doubles per attempt up to max_backoff, with ±50% jitter.
  // Default: 50 ms, 1 s.
  absl::Duration initial_backoff = absl::Milliseconds(50);
  absl::Duration max_backoff = absl::Seconds(1);
  // Threads that run per-shard requests of one call in parallel, and threads that run
  // async calls. Default: 8 and 4.
  int fanout_threads = 8;
  int async_threads = 4;
  // Blocks per Put stream (the servers' --max_blocks_per_put). Default: 256.
  int max_blocks_per_put = 256;
  // UCX transport: Get hits larger than this arrive in pieces of this many bytes, and the
  // calling thread checksums each piece while the next one moves. 0 (whole payloads) or
  // 64 KiB..1 GiB, else Create returns kInvalidArgument. Default: 1 MiB.
  uint64_t ucx_get_piece_bytes = uint64_t{1} << 20;
  // UCX transport: connections per endpoint, each with its own session, so each on its own
  // UCX worker of a server that runs several (kvtier-server --ucx_workers). A Put of
  // several blocks spreads them over up to this many connections, all in flight at once;
  // concurrent calls from several threads take an idle connection before sharing one.
  // Opened when first needed: a client that makes one single-block call at a time uses
  // one. 1..64, else Create returns kInvalidArgument. Default: 4.
  int ucx_connections = 4;
};

class Client {
 public:
  // Resolves endpoints and creates one transport per endpoint (connections are lazy).
  // kInvalidArgument for no endpoints or unreadable TLS files; kUnavailable when the DNS
  // name does not resolve.
  static absl::StatusOr<std::unique_ptr<Client>> Create(const ClientOptions& options);
  // With caller-made transports (one per endpoint, e.g. an in-process test transport).
  static absl::StatusOr<std::unique_ptr<Client>> CreateWithTransports(
      std::vector<std::unique_ptr<Transport>> transports, const ClientOptions& options);
  ~Client();

  // Chain hashes of every full block of `tokens` (kernels::ChainHashes).
  static std::vector<ChainHash> ChainHashes(absl::string_view ns, absl::Span<const int32_t> tokens,
                                            int block_size, bool include_partial = false);

  size_t num_endpoints() const { return transports_.size(); }
  const std::string& endpoint(size_t i) const { return transports_[i]->endpoint(); }
  // The endpoint index that owns a block: the highest rendezvous score of
  // XXH3(namespace, hash, part, endpoint) over the endpoints. Same on every client.
  size_t ShardOf(absl::string_view ns, const ChainHash& hash, uint32_t part) const;

  // Leading blocks of `chain` present in the cluster: each shard is asked about the blocks
  // it owns, and the answer is the first block missing anywhere. A shard that cannot be
  // reached (after retries) counts as a miss at its first block; the call still returns
  // OK. kInvalidArgument, kUnauthenticated, kPermissionDenied are returned as errors.
  absl::StatusOr<size_t> Lookup(absl::string_view ns, uint32_t part,
                                absl::Span<const ChainHash> chain, uint32_t block_tokens = 0);

  // Stores the blocks on their shards, in parallel. One outcome per block, in order. On
  // any shard's failure returns that error; blocks of other shards may have been stored
  // (Put is idempotent: retrying stores nothing twice). Payloads are borrowed for the call.
  absl::StatusOr<std::vector<PutOutcome>> Put(absl::string_view ns, uint32_t part,
                                              absl::Span<const PutItem> blocks);

  // Fetches the blocks from their shards, in parallel. One result per hash, in order; see
  // BlockResult: a hit holds validated bytes; a shard failure turns its blocks into misses
  // carrying the error.
  std::vector<BlockResult> Get(absl::string_view ns, uint32_t part,
                               absl::Span<const ChainHash> chain);

  // Removes the blocks from their shards; returns how many were present.
  absl::StatusOr<size_t> Delete(absl::string_view ns, uint32_t part,
                                absl::Span<const ChainHash> chain);

  struct EndpointStats {
    std::string endpoint;
    absl::StatusOr<v1::StatsResponse> stats;
  };
  std::vector<EndpointStats> Stats();
  // grpc.health.v1 of every endpoint: OK = SERVING.
  std::vector<std::pair<std::string, absl::Status>> Health();

  // Async variants: the call runs on the client's async threads and `done` runs there
  // exactly once, after the call completed (successfully or not, including its timeout).
  // Buffers: `chain` is copied; PutItem payloads are borrowed and must stay valid and
  // unmodified until `done` has been called. Destroying the Client waits for pending
  // async calls to finish (each is bounded by ClientOptions::timeout); there is no
  // cancellation.
  void LookupAsync(std::string ns, uint32_t part, std::vector<ChainHash> chain,
                   uint32_t block_tokens, std::function<void(absl::StatusOr<size_t>)> done);
  void PutAsync(std::string ns, uint32_t part, std::vector<PutItem> blocks,
                std::function<void(absl::StatusOr<std::vector<PutOutcome>>)> done);
  void GetAsync(std::string ns, uint32_t part, std::vector<ChainHash> chain,
                std::function<void(std::vector<BlockResult>)> done);

 private:
  Client(std::vector<std::unique_ptr<Transport>> transports, const ClientOptions& options);

  // Runs fn(shard) for each shard with work, in parallel; returns when all finished.
  void ForEachShard(const std::vector<std::vector<size_t>>& groups,
                    const std::function<void(size_t shard)>& fn);
  std::vector<std::vector<size_t>> Group(absl::string_view ns, uint32_t part,
                                         absl::Span<const ChainHash> chain) const;
  // Calls fn(deadline) until it succeeds, fails with a code other than kUnavailable, or
  // attempts/deadline run out.
  template <typename T>
  absl::StatusOr<T> Retry(absl::Time deadline, const std::function<absl::StatusOr<T>()>& fn);

  const ClientOptions options_;
  // Constant after construction.
  std::vector<std::unique_ptr<Transport>> transports_;
  std::unique_ptr<ThreadPool> fanout_;
  std::unique_ptr<ThreadPool> async_;
};

}  // namespace kvtier::client

#endif  // KVTIER_CLIENT_CLIENT_H_
