// kvtier-server: flags as in docs/service-contract.md. Logs the configuration at start,
// serves until SIGTERM/SIGINT, then drains (stops accepting, finishes in-flight requests
// up to --drain_timeout, flushes RocksDB) and exits 0.
#include <malloc.h>
#include <signal.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "service/heap_reserve.h"
#include "service/server.h"
#include "service/validation.h"

ABSL_FLAG(std::string, listen, "0.0.0.0:50051", "gRPC address (host:port)");
ABSL_FLAG(int, ucx_port, 50052, "UCX data-plane listener port; 0 disables UCX");
ABSL_FLAG(int, ucx_workers, 0,
          "UCX data planes (loop threads), listening on ucx_port .. ucx_port+N-1; 0 = half "
          "the usable CPUs, 2..8");
ABSL_FLAG(int, http_port, 9100, "HTTP port for /metrics, /healthz, /readyz");
ABSL_FLAG(std::string, memory_capacity, "4GiB",
          "RAM tier capacity (suffixes B, KiB, MiB, GiB, TiB)");
ABSL_FLAG(std::string, disk_capacity, "64GiB", "disk (RocksDB) tier capacity");
ABSL_FLAG(std::string, data_dir, "", "RocksDB directory; empty = RAM only");
ABSL_FLAG(bool, sync_writes, false, "fsync the WAL on every Put");
ABSL_FLAG(std::string, namespace_quota, "", "comma list prefix=bytes, e.g. tenantA/=100GiB");
ABSL_FLAG(std::string, tls_cert, "", "server certificate (PEM); with --tls_key enables TLS");
ABSL_FLAG(std::string, tls_key, "", "server private key (PEM)");
ABSL_FLAG(std::string, tls_client_ca, "",
          "CA bundle for client certificates; set = mutual TLS required");
ABSL_FLAG(std::string, token_file, "", "bearer token file; empty = no authentication");
ABSL_FLAG(int, max_chain_length, 4096, "hashes per Lookup/Get/Delete");
ABSL_FLAG(int, max_blocks_per_put, 256, "blocks per Put stream");
ABSL_FLAG(std::string, max_message_bytes, "8MiB", "gRPC message limit");
ABSL_FLAG(int, max_concurrent_streams, 1024, "concurrent streaming RPCs");
ABSL_FLAG(absl::Duration, drain_timeout, absl::Seconds(20),
          "time in-flight requests get after SIGTERM");
ABSL_FLAG(absl::Duration, ucx_session_ttl, absl::Hours(1), "lifetime of a UCX session token");
ABSL_FLAG(std::string, ucx_max_inflight_put_bytes, "32MiB",
          "UCX Put payload bytes received at once; further puts wait, first come first "
          "served (a larger one is still received alone)");
ABSL_FLAG(bool, reserve_memory, false,
          "map --memory_capacity of heap at start, in transparent huge pages where the kernel "
          "gives them: Puts then never fault in fresh memory and UCX Gets read huge pages "
          "(the process holds that much resident memory from the start)");
ABSL_FLAG(int, ready_put_buffers, 4,
          "Put payload buffers prepared ahead per transport for the most common block size "
          "(at most 64MiB each); 0 disables");

namespace {

int Fail(const std::string& what) {
  std::fprintf(stderr, "kvtier-server: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  // Block payloads are 100 KiB .. 16 MiB. glibc would mmap/munmap each such buffer (page
  // faults on every request); keep them in the heap and keep freed memory for reuse.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  // One malloc arena. Payload buffers are allocated on one thread (UCX loop, put-buffer
  // thread, gRPC threads) and freed on another (store eviction); in glibc's per-thread
  // arenas (64 MiB heaps) a heap whose blocks were all evicted is unmapped at once,
  // whatever M_TRIM_THRESHOLD says, so the next puts fault in fresh memory again and the
  // munmaps stall every thread of the process. With the main arena only, evicted blocks'
  // memory is reused as is: 4 MiB UCX puts went from 1.25 / 2.82 GB/s (p99 26 / 113 ms)
  // to 3.29 / 3.95 GB/s (p99 1.7 / 14 ms) at 1 / 8 clients with a full store on the
  // 2-vCPU VM (docs/benchmarks/service.md). Small allocations keep their per-thread caches.
  mallopt(M_ARENA_MAX, 1);
  absl::SetProgramUsageMessage("kvtier-server: the kvtier KV-cache tier server");
  absl::ParseCommandLine(argc, argv);

  kvtier::service::ServerOptions o;
  o.listen = absl::GetFlag(FLAGS_listen);
  o.ucx_port = absl::GetFlag(FLAGS_ucx_port);
  o.ucx_workers = absl::GetFlag(FLAGS_ucx_workers);
  if (o.ucx_workers < 0) return Fail("--ucx_workers must not be negative");
  if (o.ucx_workers == 0) o.ucx_workers = kvtier::service::DefaultUcxWorkers();
  o.http_port = absl::GetFlag(FLAGS_http_port);
  auto mem = kvtier::service::ParseByteSize(absl::GetFlag(FLAGS_memory_capacity));
  if (!mem.ok()) return Fail(absl::StrCat("--memory_capacity: ", mem.status().message()));
  auto disk = kvtier::service::ParseByteSize(absl::GetFlag(FLAGS_disk_capacity));
  if (!disk.ok()) return Fail(absl::StrCat("--disk_capacity: ", disk.status().message()));
  auto msg = kvtier::service::ParseByteSize(absl::GetFlag(FLAGS_max_message_bytes));
  if (!msg.ok()) return Fail(absl::StrCat("--max_message_bytes: ", msg.status().message()));
  auto quotas = kvtier::service::ParseQuotas(absl::GetFlag(FLAGS_namespace_quota));
  if (!quotas.ok()) return Fail(absl::StrCat("--namespace_quota: ", quotas.status().message()));
  if (absl::GetFlag(FLAGS_max_chain_length) <= 0 || absl::GetFlag(FLAGS_max_blocks_per_put) <= 0 ||
      absl::GetFlag(FLAGS_max_concurrent_streams) <= 0) {
    return Fail("--max_chain_length, --max_blocks_per_put, --max_concurrent_streams must be > 0");
  }
  if (*msg < (uint64_t{64} << 10)) return Fail("--max_message_bytes must be at least 64KiB");
  auto inflight = kvtier::service::ParseByteSize(absl::GetFlag(FLAGS_ucx_max_inflight_put_bytes));
  if (!inflight.ok() || *inflight == 0) {
    return Fail(absl::StrCat("--ucx_max_inflight_put_bytes: ",
                             inflight.ok() ? "must be > 0" : inflight.status().message()));
  }
  o.store.memory_capacity_bytes = *mem;
  o.store.disk_capacity_bytes = *disk;
  o.store.disk_path = absl::GetFlag(FLAGS_data_dir);
  o.store.sync_writes = absl::GetFlag(FLAGS_sync_writes);
  o.store.namespace_quota_bytes = *quotas;
  o.tls_cert = absl::GetFlag(FLAGS_tls_cert);
  o.tls_key = absl::GetFlag(FLAGS_tls_key);
  o.tls_client_ca = absl::GetFlag(FLAGS_tls_client_ca);
  o.token_file = absl::GetFlag(FLAGS_token_file);
  o.limits.max_chain_length = static_cast<uint32_t>(absl::GetFlag(FLAGS_max_chain_length));
  o.limits.max_blocks_per_put = static_cast<uint32_t>(absl::GetFlag(FLAGS_max_blocks_per_put));
  o.limits.max_message_bytes = *msg;
  o.max_concurrent_streams = absl::GetFlag(FLAGS_max_concurrent_streams);
  o.ucx_session_ttl = absl::GetFlag(FLAGS_ucx_session_ttl);
  o.ready_put_buffers = absl::GetFlag(FLAGS_ready_put_buffers);
  o.ucx_max_inflight_put_bytes = *inflight;
  const absl::Duration drain_timeout = absl::GetFlag(FLAGS_drain_timeout);
  o.drain_timeout = drain_timeout;

  // Config dump: one line per flag (the token file's contents are never logged).
  std::fprintf(stderr, "kvtier-server %s starting with:\n", kvtier::service::ServerVersion());
  auto dump = [](const char* name, const std::string& value) {
    std::fprintf(stderr, "  --%s=%s\n", name, value.c_str());
  };
  dump("listen", o.listen);
  dump("ucx_port", absl::StrCat(o.ucx_port));
  dump("ucx_workers",
       absl::StrCat(o.ucx_workers, absl::GetFlag(FLAGS_ucx_workers) == 0 ? " (auto)" : ""));
  dump("http_port", absl::StrCat(o.http_port));
  dump("memory_capacity", absl::StrCat(absl::GetFlag(FLAGS_memory_capacity), " (", *mem, " B)"));
  dump("disk_capacity", absl::StrCat(absl::GetFlag(FLAGS_disk_capacity), " (", *disk, " B)"));
  dump("data_dir", o.store.disk_path);
  dump("sync_writes", o.store.sync_writes ? "true" : "false");
  dump("namespace_quota", absl::GetFlag(FLAGS_namespace_quota));
  dump("tls_cert", o.tls_cert);
  dump("tls_key", o.tls_key);
  dump("tls_client_ca", o.tls_client_ca);
  dump("token_file", o.token_file);
  dump("max_chain_length", absl::StrCat(o.limits.max_chain_length));
  dump("max_blocks_per_put", absl::StrCat(o.limits.max_blocks_per_put));
  dump("max_message_bytes", absl::StrCat(o.limits.max_message_bytes));
  dump("max_concurrent_streams", absl::StrCat(o.max_concurrent_streams));
  dump("drain_timeout", absl::FormatDuration(drain_timeout));
  dump("ucx_session_ttl", absl::FormatDuration(o.ucx_session_ttl));
  dump("ready_put_buffers", absl::StrCat(o.ready_put_buffers));
  dump("ucx_max_inflight_put_bytes", absl::StrCat(o.ucx_max_inflight_put_bytes));
  dump("reserve_memory", absl::GetFlag(FLAGS_reserve_memory) ? "true" : "false");

  if (absl::GetFlag(FLAGS_reserve_memory)) {
    auto reserved = kvtier::service::ReserveHeap(*mem, /*huge_pages=*/true);
    if (!reserved.ok())
      return Fail(absl::StrCat("--reserve_memory: ", reserved.status().message()));
    std::fprintf(stderr,
                 "kvtier-server: reserved %llu MiB of heap in %s (%llu MiB in huge pages)\n",
                 static_cast<unsigned long long>(reserved->bytes >> 20),
                 absl::FormatDuration(reserved->took).c_str(),
                 static_cast<unsigned long long>(reserved->huge_page_bytes >> 20));
  }

  // SO_REUSEADDR on the UCX listeners, unless the environment says otherwise: a server
  // killed while clients were connected leaves those connections on its ports (FIN_WAIT,
  // TIME_WAIT), and without it a restarted server (a container restarted in its pod)
  // could not listen there for about a minute ("Device is busy"). Set in the environment,
  // where UCX's connection managers read it, before any thread starts (ucp_config_modify
  // reached only the first worker's listener).
  setenv("UCX_TCP_CM_REUSEADDR", "y", /*overwrite=*/0);
  setenv("UCX_RDMA_CM_REUSEADDR", "y", /*overwrite=*/0);

  // Block the stop signals before any thread starts so that only sigwait sees them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  auto server = kvtier::service::Server::Start(o);
  if (!server.ok()) return Fail(std::string(server.status().ToString()));
  const std::vector<int> ucx_ports = (*server)->ucx_ports();
  std::string ucx = "no port";
  if (ucx_ports.size() == 1) ucx = absl::StrCat("port ", ucx_ports[0]);
  if (ucx_ports.size() > 1) {
    ucx = absl::StrCat("ports ", ucx_ports.front(), "-", ucx_ports.back(), " (", ucx_ports.size(),
                       " workers)");
  }
  std::fprintf(stderr, "kvtier-server: serving gRPC on port %d, HTTP on port %d, UCX on %s\n",
               (*server)->grpc_port(), (*server)->http_port(), ucx.c_str());

  int sig = 0;
  sigwait(&stop_signals, &sig);
  std::fprintf(stderr, "kvtier-server: signal %d, draining (up to %s)\n", sig,
               absl::FormatDuration(drain_timeout).c_str());
  absl::Status s = (*server)->Drain(drain_timeout);
  if (!s.ok()) return Fail(absl::StrCat("flush failed: ", s.ToString()));
  const absl::Time t0 = absl::Now();
  server->reset();  // closes storage
  std::fprintf(stderr, "kvtier-server: drained, storage closed in %s, exiting\n",
               absl::FormatDuration(absl::Now() - t0).c_str());
  // Everything is flushed and closed; skip the gRPC library's slow global teardown.
  std::fflush(stderr);
  std::_Exit(0);
}
