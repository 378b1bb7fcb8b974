// kvtier-server as a library: the gRPC KvTier service (callback API), health checking and
// reflection, the HTTP endpoints (/metrics, /healthz, /readyz), UCX session tokens and the
// SIGTERM drain. service/server_main.cc turns flags into ServerOptions and runs it.
//
//   ServerOptions o;
//   o.listen = "127.0.0.1:50051";
//   o.http_port = 9100;
//   o.store.disk_path = "/var/lib/kvtier";
//   KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<Server> s, Server::Start(o));
//   ...                       // serve until SIGTERM
//   s->Drain(absl::Seconds(20));   // stop accepting, finish in-flight, flush RocksDB
//
// Thread safety: Server's methods are safe to call from any thread; Drain once.
#ifndef KVTIER_SERVICE_SERVER_H_
#define KVTIER_SERVICE_SERVER_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "service/validation.h"
#include "storage/tiered_store.h"

namespace kvtier::service {

struct ServerOptions {
  // gRPC address host:port. Port 0 picks a free port (see Server::grpc_port()).
  // Default: 0.0.0.0:50051.
  std::string listen = "0.0.0.0:50051";
  // HTTP port for /metrics, /healthz, /readyz; 0 picks a free port; -1 disables HTTP.
  // Default: 9100.
  int http_port = 9100;
  // HTTP bind address. Default: 0.0.0.0.
  std::string http_host = "0.0.0.0";
  // UCX data-plane port; 0 disables UCX. Default: 50052.
  int ucx_port = 50052;
  // UCX data planes, each a loop thread (one UCX worker) with its own listener: worker i
  // listens on ucx_port + i. OpenUcxSession hands sessions to them in turn, so the
  // connections (and the payload copies of puts over CMA, which the receiving loop thread
  // makes) spread over the workers. Each has its own ucx_max_inflight_put_bytes budget
  // and store threads. 1..64, and ucx_port + ucx_workers - 1 <= 65535; else
  // kInvalidArgument. Default: 1 (kvtier-server's --ucx_workers=0 picks
  // DefaultUcxWorkers()).
  int ucx_workers = 1;
  storage::TieredStoreOptions store;
  Limits limits;
  // PEM files; cert+key set = TLS; client_ca set = mutual TLS required. Default: none.
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
  // Bearer token file; empty = no authentication. Default: empty.
  std::string token_file;
  // Concurrent streaming RPCs (Put, Get) per server. Default: 1024.
  int max_concurrent_streams = 1024;
  // Lifetime of a UCX session token. Default: 1 h.
  absl::Duration ucx_session_ttl = absl::Hours(1);
  // Put payload buffers a background thread keeps ready (allocated and pre-faulted) for
  // the size most puts have, per transport (service/put_buffers.h): fresh memory's page
  // faults then stay off the receiving threads. Holds up to this many buffers (at most
  // 64 MiB) per transport outside the store's capacity; 0 disables it. Default: 4.
  int ready_put_buffers = 4;
  // UCX Put payload bytes received at once; more puts wait in arrival order
  // (UcxDataPlaneOptions::max_inflight_put_bytes). Default: 32 MiB.
  uint64_t ucx_max_inflight_put_bytes = uint64_t{32} << 20;
  // Time the UCX data plane gives requests already received when it stops (the gRPC side
  // takes its timeout from Drain). Default: 20 s.
  absl::Duration drain_timeout = absl::Seconds(20);
};

class Server {
 public:
  // Opens storage, starts gRPC (and HTTP, UCX) listeners. kInvalidArgument for bad
  // options or unreadable TLS/token files; kUnavailable when a port cannot be bound.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  virtual ~Server() = default;

  virtual int grpc_port() const = 0;
  virtual int http_port() const = 0;
  // The first UCX worker's port (0: UCX disabled).
  virtual int ucx_port() const = 0;
  // Every UCX worker's port, in worker order (empty: UCX disabled).
  virtual std::vector<int> ucx_ports() const = 0;

  // Stops accepting, turns /readyz to 503, lets in-flight requests finish (up to
  // `timeout`, then cancels them), stops UCX, flushes storage. Returns the flush status.
  virtual absl::Status Drain(absl::Duration timeout) = 0;
  // The metrics text exposition (what /metrics serves).
  virtual std::string MetricsText() = 0;
};

// Version string reported by Stats and kvtier_build_info.
const char* ServerVersion();

// The UCX workers kvtier-server starts for --ucx_workers=0: half the CPUs this process
// may run on (sched_getaffinity, so a cpuset or a pinned container counts, not the whole
// host), at least 2 and at most 8. Over CMA (one host) a worker's loop thread copies every
// put payload it receives, about 6 GB/s of 4 MiB puts; on the 2-vCPU VM two workers took
// 8 clients' puts from 6.6 to 9.5 GB/s and four did no better (alternated runs; the
// numbers and the H200 host's scaling are in docs/ucx.md).
int DefaultUcxWorkers();

}  // namespace kvtier::service

#endif  // KVTIER_SERVICE_SERVER_H_
