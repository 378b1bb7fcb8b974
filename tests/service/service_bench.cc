// kvtier-service-bench: loopback throughput and latency of kvtier-server over gRPC and UCX,
// side by side with Redis (Debian's redis-server, hiredis client) storing the same
// payloads from the same number of clients. Not a test: results go to stdout as a
// markdown table (docs/benchmarks/service.md).
//
//   build/tests/kvtier-service-bench --sizes=256KiB,1MiB,4MiB,16MiB --clients=1,8,64
//       --transports=grpc,ucx,redis --seconds=2      (one line)
//
// Each phase runs `clients` threads, each with its own connection (kvtier::Client with one
// endpoint, or one hiredis connection), for `seconds`:
//   put:    every op stores a new block (fresh key) of the given size.
//   get:    every op fetches one block from a preloaded set (always a hit) and, for kvtier,
//           validates it (XXH3) as the client always does.
//   lookup: every op is a Lookup of a 128-block chain, all present (Redis: EXISTS of the
//           128 keys in one command).
#include <hiredis/hiredis.h>
#include <malloc.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "service/validation.h"
#include "tests/service/harness.h"

namespace {

using kvtier::client::Client;
using kvtier::client::ClientOptions;
using kvtier::client::PutItem;
using kvtier::client::TransportKind;
using kvtier::kernels::ChainHash;
namespace kt = kvtier::testing;

constexpr char kNs[] = "bench/model/k4v2_g128/tp0";

// One client's op loop body: returns payload bytes moved, or -1 on error.
class Worker {
 public:
  virtual ~Worker() = default;
  virtual int64_t Op(uint64_t i) = 0;
};

struct PhaseResult {
  double seconds = 0;
  uint64_t ops = 0;
  uint64_t bytes = 0;
  uint64_t errors = 0;
  std::vector<double> latencies_ms;
};

PhaseResult RunPhase(int clients, absl::Duration duration,
                     const std::function<std::unique_ptr<Worker>(int)>& make) {
  std::vector<std::unique_ptr<Worker>> workers;
  for (int i = 0; i < clients; ++i) workers.push_back(make(i));
  std::atomic<bool> go{false}, stop{false};
  std::vector<PhaseResult> per(clients);
  std::vector<std::thread> threads;
  for (int t = 0; t < clients; ++t) {
    threads.emplace_back([&, t] {
      while (!go) std::this_thread::yield();
      uint64_t i = 0;
      while (!stop) {
        const absl::Time t0 = absl::Now();
        const int64_t n = workers[t] ? workers[t]->Op(i++) : -1;
        per[t].latencies_ms.push_back(absl::ToDoubleMilliseconds(absl::Now() - t0));
        if (n < 0) {
          per[t].errors++;
        } else {
          per[t].ops++;
          per[t].bytes += static_cast<uint64_t>(n);
        }
      }
    });
  }
  const absl::Time start = absl::Now();
  go = true;
  absl::SleepFor(duration);
  stop = true;
  for (auto& th : threads) th.join();
  PhaseResult r;
  r.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  for (auto& p : per) {
    r.ops += p.ops;
    r.bytes += p.bytes;
    r.errors += p.errors;
    r.latencies_ms.insert(r.latencies_ms.end(), p.latencies_ms.begin(), p.latencies_ms.end());
  }
  std::sort(r.latencies_ms.begin(), r.latencies_ms.end());
  return r;
}

double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const size_t i = std::min(sorted.size() - 1, static_cast<size_t>(p * (sorted.size() - 1) + 0.5));
  return sorted[i];
}

ChainHash KeyHash(uint64_t a, uint64_t b) {
  ChainHash h{};
  std::memcpy(h.data(), &a, 8);
  std::memcpy(h.data() + 8, &b, 8);
  h[31] = 0x5A;
  return h;
}

// ---- kvtier workers ----
uint64_t g_ucx_get_piece_bytes = ClientOptions().ucx_get_piece_bytes;

std::unique_ptr<Client> Connect(const std::string& endpoint, TransportKind kind) {
  ClientOptions o;
  o.ucx_get_piece_bytes = g_ucx_get_piece_bytes;
  o.endpoints = {endpoint};
  o.transport = kind;
  o.timeout = absl::Seconds(60);
  o.fanout_threads = 1;
  o.async_threads = 1;
  auto c = Client::Create(o);
  if (!c.ok()) {
    std::fprintf(stderr, "connect: %s\n", c.status().ToString().c_str());
    return nullptr;
  }
  // Establish the connection (and UCX session) outside the timed loop.
  (void)(*c)->Lookup(kNs, 0, std::vector<ChainHash>{KeyHash(0, 0)});
  return *std::move(c);
}

class KvPut : public Worker {
 public:
  KvPut(std::unique_ptr<Client> c, const std::vector<uint8_t>* payload, uint64_t id, uint64_t epoch)
      : c_(std::move(c)), payload_(payload), id_(id), epoch_(epoch) {}
  int64_t Op(uint64_t i) override {
    PutItem item{KeyHash(epoch_ << 32 | id_, i + 1), *payload_};
    auto r = c_->Put(kNs, 0, absl::MakeConstSpan(&item, 1));
    if (!r.ok()) {
      if (errors_++ < 3) std::fprintf(stderr, "put: %s\n", r.status().ToString().c_str());
      return -1;
    }
    return static_cast<int64_t>(payload_->size());
  }

 private:
  std::unique_ptr<Client> c_;
  const std::vector<uint8_t>* payload_;
  uint64_t id_, epoch_;
  int errors_ = 0;
};

class KvGet : public Worker {
 public:
  KvGet(std::unique_ptr<Client> c, const std::vector<ChainHash>* set, uint64_t seed)
      : c_(std::move(c)), set_(set), seed_(seed) {}
  int64_t Op(uint64_t i) override {
    const ChainHash& h = (*set_)[(seed_ * 7919 + i) % set_->size()];
    auto got = c_->Get(kNs, 0, absl::MakeConstSpan(&h, 1));
    if (!got[0].hit) {
      if (errors_++ < 3) std::fprintf(stderr, "get: miss %s\n", got[0].status.ToString().c_str());
      return -1;
    }
    return static_cast<int64_t>(got[0].payload.size());
  }

 private:
  std::unique_ptr<Client> c_;
  const std::vector<ChainHash>* set_;
  uint64_t seed_;
  int errors_ = 0;
};

class KvLookup : public Worker {
 public:
  KvLookup(std::unique_ptr<Client> c, const std::vector<ChainHash>* chain)
      : c_(std::move(c)), chain_(chain) {}
  int64_t Op(uint64_t) override {
    auto n = c_->Lookup(kNs, 0, *chain_, 128);
    return n.ok() && *n == chain_->size() ? 0 : -1;
  }

 private:
  std::unique_ptr<Client> c_;
  const std::vector<ChainHash>* chain_;
};

// ---- Redis workers ----
redisContext* RedisConnect(int port) {
  redisContext* c = redisConnect("127.0.0.1", port);
  if (c == nullptr || c->err) {
    std::fprintf(stderr, "redis connect failed\n");
    return nullptr;
  }
  return c;
}

class RedisPut : public Worker {
 public:
  RedisPut(int port, const std::vector<uint8_t>* payload, uint64_t id, uint64_t epoch)
      : c_(RedisConnect(port)), payload_(payload), id_(id), epoch_(epoch) {}
  ~RedisPut() override {
    if (c_) redisFree(c_);
  }
  int64_t Op(uint64_t i) override {
    if (!c_) return -1;
    const ChainHash k = KeyHash(epoch_ << 32 | id_, i + 1);
    auto* r = static_cast<redisReply*>(
        redisCommand(c_, "SET %b %b", k.data(), k.size(), payload_->data(), payload_->size()));
    const bool ok = r != nullptr && r->type == REDIS_REPLY_STATUS;
    if (r) freeReplyObject(r);
    return ok ? static_cast<int64_t>(payload_->size()) : -1;
  }

 private:
  redisContext* c_;
  const std::vector<uint8_t>* payload_;
  uint64_t id_, epoch_;
};

class RedisGet : public Worker {
 public:
  RedisGet(int port, const std::vector<ChainHash>* set, uint64_t seed)
      : c_(RedisConnect(port)), set_(set), seed_(seed) {}
  ~RedisGet() override {
    if (c_) redisFree(c_);
  }
  int64_t Op(uint64_t i) override {
    if (!c_) return -1;
    const ChainHash& k = (*set_)[(seed_ * 7919 + i) % set_->size()];
    auto* r = static_cast<redisReply*>(redisCommand(c_, "GET %b", k.data(), k.size()));
    int64_t n = -1;
    if (r != nullptr && r->type == REDIS_REPLY_STRING) {
      // Copy out of the reply, as kvtier's client hands the caller its own buffer.
      buf_.assign(r->str, r->str + r->len);
      n = static_cast<int64_t>(r->len);
    }
    if (r) freeReplyObject(r);
    return n;
  }

 private:
  redisContext* c_;
  const std::vector<ChainHash>* set_;
  uint64_t seed_;
  std::vector<char> buf_;
};

class RedisExists : public Worker {
 public:
  RedisExists(int port, const std::vector<ChainHash>* chain)
      : c_(RedisConnect(port)), chain_(chain) {
    argv_.push_back("EXISTS");
    lens_.push_back(6);
    for (const auto& h : *chain_) {
      argv_.push_back(reinterpret_cast<const char*>(h.data()));
      lens_.push_back(h.size());
    }
  }
  ~RedisExists() override {
    if (c_) redisFree(c_);
  }
  int64_t Op(uint64_t) override {
    if (!c_) return -1;
    auto* r = static_cast<redisReply*>(
        redisCommandArgv(c_, static_cast<int>(argv_.size()), argv_.data(), lens_.data()));
    const bool ok = r != nullptr && r->type == REDIS_REPLY_INTEGER &&
                    r->integer == static_cast<long long>(chain_->size());
    if (r) freeReplyObject(r);
    return ok ? 0 : -1;
  }

 private:
  redisContext* c_;
  const std::vector<ChainHash>* chain_;
  std::vector<const char*> argv_;
  std::vector<size_t> lens_;
};

pid_t StartRedis(int port, const std::string& maxmemory) {
  const pid_t pid = fork();
  if (pid == 0) {
    freopen("/dev/null", "w", stdout);
    const std::string p = std::to_string(port);
    const char* env = std::getenv("KVTIER_REDIS_SERVER");  // override for relocated bundles
    const char* bin = env != nullptr && *env != '\0' ? env : "/usr/bin/redis-server";
    execl(bin, "redis-server", "--port", p.c_str(), "--bind", "127.0.0.1", "--save", "",
          "--appendonly", "no", "--protected-mode", "no", "--maxmemory", maxmemory.c_str(),
          "--maxmemory-policy", "allkeys-lru", "--proto-max-bulk-len", "64mb",
          "--client-output-buffer-limit", "normal 0 0 0", static_cast<char*>(nullptr));
    _exit(127);
  }
  for (int i = 0; i < 200; ++i) {
    redisContext* c = redisConnect("127.0.0.1", port);
    if (c != nullptr && !c->err) {
      redisFree(c);
      return pid;
    }
    if (c) redisFree(c);
    usleep(20000);
  }
  return pid;
}

void RedisFlush(int port) {
  redisContext* c = RedisConnect(port);
  if (!c) return;
  auto* r = static_cast<redisReply*>(redisCommand(c, "FLUSHALL"));
  if (r) freeReplyObject(r);
  redisFree(c);
}

std::string SizeName(size_t bytes) {
  char buf[32];
  if (bytes >= (size_t{1} << 20)) {
    std::snprintf(buf, sizeof(buf), "%.2f MiB", bytes / 1048576.0);
  } else {
    std::snprintf(buf, sizeof(buf), "%.0f KiB", bytes / 1024.0);
  }
  return buf;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<size_t> sizes = {256 << 10, 1 << 20, 4 << 20, 16 << 20};
  std::vector<int> client_counts = {1, 8, 64};
  std::vector<std::string> transports = {"grpc", "ucx", "redis"};
  double seconds = 2;
  bool lookup = true;
  std::vector<std::string> server_flags;  // extra kvtier-server flags (A/B experiments)
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* name) -> std::string {
      const std::string prefix = std::string("--") + name + "=";
      return a.rfind(prefix, 0) == 0 ? a.substr(prefix.size()) : "";
    };
    if (!value("sizes").empty()) {
      sizes.clear();
      for (auto s : absl::StrSplit(value("sizes"), ',')) {
        auto b = kvtier::service::ParseByteSize(s);
        if (!b.ok()) return 2;
        sizes.push_back(*b);
      }
    } else if (!value("clients").empty()) {
      client_counts.clear();
      for (auto s : absl::StrSplit(value("clients"), ',')) {
        int n = 0;
        if (!absl::SimpleAtoi(s, &n)) return 2;
        client_counts.push_back(n);
      }
    } else if (!value("transports").empty()) {
      transports = absl::StrSplit(value("transports"), ',');
    } else if (!value("seconds").empty()) {
      if (!absl::SimpleAtod(value("seconds"), &seconds)) return 2;
    } else if (!value("server_flag").empty()) {
      server_flags.push_back(value("server_flag"));  // e.g. --server_flag=--ready_put_buffers=0
    } else if (!value("ucx_get_piece").empty()) {
      auto b = kvtier::service::ParseByteSize(value("ucx_get_piece"));  // 0: whole payloads
      if (!b.ok()) return 2;
      g_ucx_get_piece_bytes = *b;
    } else if (a == "--no_lookup") {
      lookup = false;
    } else {
      std::fprintf(stderr,
                   "usage: kvtier-service-bench [--sizes=256KiB,1MiB,4MiB,16MiB] "
                   "[--clients=1,8,64] [--transports=grpc,ucx,redis] [--seconds=2] "
                   "[--no_lookup] [--ucx_get_piece=1MiB] [--server_flag=--flag=value ...]\n");
      return 2;
    }
  }
  signal(SIGPIPE, SIG_IGN);
  // The same malloc setting as kvtier-server: multi-MiB buffers from the heap, not mmap.
  mallopt(M_MMAP_THRESHOLD, 32 << 20);
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
  mallopt(M_ARENA_MAX, 1);
  const absl::Duration dur = absl::Seconds(seconds);
  const std::string capacity = "3GiB";

  kt::ServerProcess server;
  kt::ServerProcess::Options so;
  so.enable_ucx = true;
  so.memory_capacity = capacity;
  // The server as the Helm chart deploys it: RAM tier reserved at start (--reserve_memory),
  // unless a --server_flag says otherwise (e.g. --server_flag=--reserve_memory=false).
  so.extra_flags = {"--reserve_memory"};
  so.extra_flags.insert(so.extra_flags.end(), server_flags.begin(), server_flags.end());
  if (absl::Status s = server.Start(so); !s.ok()) {
    std::fprintf(stderr, "kvtier-server: %s\n", s.ToString().c_str());
    return 1;
  }
  const int redis_port = kt::FreePort();
  const pid_t redis = StartRedis(redis_port, "3gb");

  std::printf("| transport | block | clients | op | GB/s | ops/s | p50 ms | p99 ms | errors |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  auto row = [](const std::string& t, const std::string& size, int clients, const char* op,
                const PhaseResult& r) {
    std::printf("| %s | %s | %d | %s | %.2f | %.0f | %.2f | %.2f | %llu |\n", t.c_str(),
                size.c_str(), clients, op, r.bytes / r.seconds / 1e9, r.ops / r.seconds,
                Percentile(r.latencies_ms, 0.5), Percentile(r.latencies_ms, 0.99),
                static_cast<unsigned long long>(r.errors));
    std::fflush(stdout);
  };

  uint64_t epoch = 1;
  for (size_t size : sizes) {
    const std::vector<uint8_t> payload = kt::MakePayload(size, size);
    // Preloaded get set: about 256 MiB, between 8 and 256 blocks.
    const size_t set_n = std::clamp<size_t>((size_t{256} << 20) / payload.size(), 8, 256);
    std::vector<ChainHash> set;
    for (size_t i = 0; i < set_n; ++i) set.push_back(KeyHash(0xFFFFull << 32 | size, i));
    for (const std::string& t : transports) {
      const bool is_redis = t == "redis";
      const TransportKind kind = t == "ucx" ? TransportKind::kUcx : TransportKind::kGrpc;
      // (Re)loads the get set: the put phase before may have evicted it (both kvtier and
      // Redis run with a 3 GiB memory limit and LRU-style eviction).
      auto preload = [&] {
        if (is_redis) {
          redisContext* c = RedisConnect(redis_port);
          for (const auto& k : set) {
            auto* r = static_cast<redisReply*>(
                redisCommand(c, "SET %b %b", k.data(), k.size(), payload.data(), payload.size()));
            if (r) freeReplyObject(r);
          }
          redisFree(c);
        } else {
          // Delete first: a re-Put of a present block is a deduplicated no-op that does not
          // refresh its place in the eviction order, so it could be evicted during the phase.
          auto c = Connect(server.endpoint(), kind);
          (void)c->Delete(kNs, 0, set);
          for (const auto& k : set) {
            PutItem item{k, payload};
            (void)c->Put(kNs, 0, absl::MakeConstSpan(&item, 1));
          }
        }
      };
      if (is_redis) RedisFlush(redis_port);
      for (int clients : client_counts) {
        ++epoch;
        PhaseResult put = RunPhase(clients, dur, [&](int id) -> std::unique_ptr<Worker> {
          if (is_redis) return std::make_unique<RedisPut>(redis_port, &payload, id, epoch);
          return std::make_unique<KvPut>(Connect(server.endpoint(), kind), &payload, id, epoch);
        });
        row(t, SizeName(payload.size()), clients, "put", put);
        preload();
        PhaseResult get = RunPhase(clients, dur, [&](int id) -> std::unique_ptr<Worker> {
          if (is_redis) return std::make_unique<RedisGet>(redis_port, &set, id);
          return std::make_unique<KvGet>(Connect(server.endpoint(), kind), &set, id);
        });
        row(t, SizeName(payload.size()), clients, "get", get);
      }
    }
  }

  if (lookup) {
    std::printf("\n| transport | chain | clients | op | lookups/s | p50 ms | p99 ms | errors |\n");
    std::printf("|---|---|---|---|---|---|---|---|\n");
    std::vector<ChainHash> chain;
    for (int i = 0; i < 128; ++i) chain.push_back(KeyHash(0xC4A1ull << 32, i));
    const std::vector<uint8_t> small = kt::MakePayload(16 << 10, 7);
    {
      auto c = Connect(server.endpoint(), TransportKind::kGrpc);
      std::vector<PutItem> items;
      for (const auto& h : chain) items.push_back({h, small});
      (void)c->Put(kNs, 0, items);
      redisContext* rc = RedisConnect(redis_port);
      for (const auto& h : chain) {
        auto* r = static_cast<redisReply*>(
            redisCommand(rc, "SET %b %b", h.data(), h.size(), small.data(), small.size()));
        if (r) freeReplyObject(r);
      }
      redisFree(rc);
    }
    for (const std::string& t : transports) {
      const bool is_redis = t == "redis";
      const TransportKind kind = t == "ucx" ? TransportKind::kUcx : TransportKind::kGrpc;
      for (int clients : client_counts) {
        PhaseResult r = RunPhase(clients, dur, [&](int) -> std::unique_ptr<Worker> {
          if (is_redis) return std::make_unique<RedisExists>(redis_port, &chain);
          return std::make_unique<KvLookup>(Connect(server.endpoint(), kind), &chain);
        });
        std::printf("| %s | 128 blocks | %d | %s | %.0f | %.3f | %.3f | %llu |\n", t.c_str(),
                    clients, is_redis ? "EXISTS x128" : "Lookup", r.ops / r.seconds,
                    Percentile(r.latencies_ms, 0.5), Percentile(r.latencies_ms, 0.99),
                    static_cast<unsigned long long>(r.errors));
        std::fflush(stdout);
      }
    }
  }
  kill(redis, SIGTERM);
  waitpid(redis, nullptr, 0);
  (void)server.Terminate();
  return 0;
}
