// UCX data-plane micro benchmark on loopback: Put and Get throughput and latency of one
// block per request, N client connections (each with its own thread) against a kvtier UCX
// server in a child process (RAM-only TieredStore). Not a test.
//
//   build/tests/ucx_bench [--size BYTES] [--clients 1,8] [--seconds 3] [--tls tcp]
//
// Prints one markdown table row per (op, clients). GB/s = payload bytes / wall time
// (1 GB = 1e9 bytes); latencies are per request.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "client/ucx/ucx_client.h"
#include "service/ucx/ucx_server.h"
#include "storage/testing.h"
#include "tests/ucx/ucx_test_util.h"

extern char** environ;

namespace kvtier {
namespace {

int Serve() {
  storage::TieredStoreOptions so;
  so.memory_capacity_bytes = uint64_t{3} << 30;
  auto store = storage::TieredStore::Open(so);
  if (!store.ok()) return 1;
  service::UcxDataPlaneOptions o;
  o.listen_address = "127.0.0.1";
  o.loop = ucx_test::LoopOptions("ucx-bench-srv");
  // Server-side time per request (receipt of the request AM to completion of its last
  // response), printed at exit: separates server work from transport and client time.
  std::map<std::string, std::pair<double, uint64_t>> server_time;  // loop thread only
  service::UcxHooks hooks;
  hooks.on_request = [&](absl::string_view method, absl::StatusCode, double seconds, uint64_t,
                         uint64_t) {
    auto& [sum, n] = server_time[std::string(method)];
    sum += seconds;
    ++n;
  };
  auto server = service::UcxDataPlane::Start(o, store->get(), std::move(hooks));
  if (!server.ok()) {
    std::fprintf(stderr, "server: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::printf("PORT %u\n", static_cast<unsigned>((*server)->port()));
  std::fflush(stdout);
  char buf[64];
  while (read(STDIN_FILENO, buf, sizeof(buf)) > 0) {
  }
  (*server)->Stop();
  for (const auto& [method, t] : server_time) {
    std::fprintf(stderr, "server-side %s: %llu requests, mean %.3f ms\n", method.c_str(),
                 static_cast<unsigned long long>(t.second), t.first / t.second * 1e3);
  }
  return 0;
}

struct Result {
  uint64_t bytes = 0;
  uint64_t errors = 0;
  std::vector<double> latencies_us;
};

double Percentile(std::vector<double>& v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(q * (v.size() - 1) + 0.5))];
}

int Run(int argc, char** argv) {
  size_t size = size_t{4} << 20;
  std::vector<int> client_counts = {1, 8};
  double seconds = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--size") {
      size = std::strtoull(value.c_str(), nullptr, 10);
    } else if (flag == "--clients") {
      client_counts.clear();
      for (absl::string_view s : absl::StrSplit(value, ',')) {
        int n = 0;
        if (absl::SimpleAtoi(s, &n) && n > 0) client_counts.push_back(n);
      }
    } else if (flag == "--seconds") {
      seconds = std::atof(value.c_str());
    } else if (flag == "--tls") {
      setenv("KVTIER_UCX_TEST_TLS", value.c_str(), 1);
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }

  int out[2], in[2];
  if (pipe(out) != 0 || pipe(in) != 0) return 1;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&fa, in[0], STDIN_FILENO);
  posix_spawn_file_actions_addclose(&fa, out[0]);
  posix_spawn_file_actions_addclose(&fa, in[1]);
  char self[] = "/proc/self/exe";
  char serve[] = "serve";
  char* child_argv[] = {self, serve, nullptr};
  pid_t pid = -1;
  if (posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, child_argv, environ) != 0) return 1;
  close(out[1]);
  close(in[0]);
  FILE* f = fdopen(out[0], "r");
  unsigned port = 0;
  if (std::fscanf(f, "PORT %u", &port) != 1) {
    std::fprintf(stderr, "server child did not start\n");
    return 1;
  }

  std::vector<storage::Payload> payloads;
  for (int i = 0; i < 8; ++i) payloads.push_back(ucx_test::PayloadOfAtLeast(1000 + i, size));
  const size_t n_bytes = payloads[0]->size();
  std::printf("UCX_TLS=%s, payload %zu bytes, %.1f s per row, server in a child process\n\n",
              ucx_test::TestTls().c_str(), n_bytes, seconds);
  std::printf("| op | clients | GB/s | req/s | p50 ms | p99 ms | errors |\n");
  std::printf("|---|---|---|---|---|---|---|\n");

  uint64_t key_base = 0;
  for (int clients : client_counts) {
    std::vector<std::unique_ptr<client::UcxConnection>> conns;
    for (int i = 0; i < clients; ++i) {
      client::UcxConnectionOptions o;
      o.loop = ucx_test::LoopOptions("ucx-bench-cli");
      auto c = client::UcxConnection::Connect("127.0.0.1", static_cast<uint16_t>(port), "bench",
                                              absl::Seconds(10), o);
      if (!c.ok()) {
        std::fprintf(stderr, "connect: %s\n", c.status().ToString().c_str());
        return 1;
      }
      conns.push_back(std::move(*c));
    }
    for (const char* op : {"put", "get"}) {
      bool put = std::strcmp(op, "put") == 0;
      std::vector<Result> results(clients);
      std::vector<uint64_t> puts_done(clients, 0);
      std::atomic<bool> stop{false};
      std::vector<std::thread> threads;
      absl::Time start = absl::Now();
      for (int ci = 0; ci < clients; ++ci) {
        threads.emplace_back([&, ci] {
          client::UcxConnection& c = *conns[ci];
          Result& r = results[ci];
          uint64_t i = 0;
          while (!stop.load(std::memory_order_relaxed)) {
            // Keys: distinct per client; Get cycles over what this client put.
            uint64_t k = key_base + static_cast<uint64_t>(ci) * 1000000 + i;
            absl::Time t0 = absl::Now();
            bool ok;
            if (put) {
              const storage::Payload& p = payloads[i % payloads.size()];
              ok = c.Put("bench/ns", storage::testing::Hash(k), 0, p->data(), p->size()).ok();
            } else {
              uint64_t have = std::max<uint64_t>(1, std::min<uint64_t>(puts_done[ci], 64));
              uint64_t gk = key_base + static_cast<uint64_t>(ci) * 1000000 + (i % have);
              auto g = c.Get("bench/ns", 0, {storage::testing::Hash(gk)});
              ok = g.ok() && (*g)[0].payload.has_value();
            }
            r.latencies_us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t0));
            if (ok) {
              r.bytes += n_bytes;
            } else {
              r.errors++;
            }
            ++i;
          }
          if (put) puts_done[ci] = i;
        });
      }
      absl::SleepFor(absl::Seconds(seconds));
      stop = true;
      for (auto& t : threads) t.join();
      double wall = absl::ToDoubleSeconds(absl::Now() - start);
      Result all;
      for (Result& r : results) {
        all.bytes += r.bytes;
        all.errors += r.errors;
        all.latencies_us.insert(all.latencies_us.end(), r.latencies_us.begin(),
                                r.latencies_us.end());
      }
      size_t reqs = all.latencies_us.size();
      std::printf("| %s | %d | %.2f | %.0f | %.2f | %.2f | %llu |\n", op, clients,
                  all.bytes / wall / 1e9, reqs / wall, Percentile(all.latencies_us, 0.5) / 1e3,
                  Percentile(all.latencies_us, 0.99) / 1e3,
                  static_cast<unsigned long long>(all.errors));
      std::fflush(stdout);
    }
    key_base += 100000000;
  }
  close(in[1]);  // the child stops on stdin EOF
  int status = 0;
  waitpid(pid, &status, 0);
  return 0;
}

}  // namespace
}  // namespace kvtier

int main(int argc, char** argv) {
  if (argc >= 2 && std::strcmp(argv[1], "serve") == 0) return kvtier::Serve();
  return kvtier::Run(argc, argv);
}
