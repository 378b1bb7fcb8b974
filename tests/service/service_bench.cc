// kvtier-service-bench: loopback throughput and latency of kvtier-server over gRPC and UCX,
// side by side with Redis (Debian's redis-server, hiredis client) storing the same
// payloads from the same number of clients. Not a test: results go to stdout as a
// markdown table (docs/benchmarks/service.md); a progress line per phase goes to stderr.
//
//   build/tests/kvtier-service-bench --sizes=256KiB,1MiB,4MiB,16MiB --clients=1,8,64
//       --transports=grpc,ucx,redis --seconds=2      (one line)
//   build/tests/kvtier-service-bench --sizes=4MiB --clients=1,8,64
//       --transports=grpc,ucx,redis --seconds=2 --rounds=3 --ops=put,get      (one line)
//
// Each phase runs `clients` threads, each with its own connection (kvtier::Client with one
// endpoint, or one hiredis connection), for `seconds`:
//   put:    every op stores a new block (fresh key) of the given size.
//   get:    every op fetches one block from a preloaded set (always a hit) and, for kvtier,
//           validates it (XXH3) as the client always does.
//   lookup: every op is a Lookup of a 128-block chain, all present (Redis: EXISTS of the
//           128 keys in one command). Independent of --sizes: its own table, at the end.
// --ops=put,get,lookup picks the ops (--no_lookup drops lookup).
//
// --rounds=1 (default): for each size, one transport after the other, and for each client
// count a put phase, then (get set reloaded) a get phase; then the lookup phases. One row
// per phase.
//
// --rounds=N > 1: the transports' phases are interleaved, so that load drifting on a shared
// machine hits them alike. For each size and client count: N rounds of (one put phase per
// transport, in --transports order); then the get set is loaded once into kvtier (one server:
// gRPC and UCX share it) and once into Redis, after the last put, so no put can evict it;
// then N rounds of get phases (gets store nothing). Lookup: for each client count, N rounds
// of one lookup phase per transport. One row per (transport, size, clients, op): GB/s and
// ops/s are the MEDIAN over rounds (the mean of the middle two for even N), "min GB/s" /
// "max GB/s" the extremes, p50 / p99 over the latencies of all rounds pooled, errors summed.
// Then a "ratio to Redis" table: per (size, clients, op, kvtier transport), median / min /
// max over rounds of (kvtier's GB/s in round r / Redis' GB/s in round r) (lookup:
// lookups/s), and for 4 MiB put and get the target (UCX 2, gRPC 1), whether the
// median and whether the minimum reach it.
//
// --redis_warmup: before the first Redis put phase of each size, Redis' capacity's worth of
// values is written once, untimed (time on stderr), so its memory is faulted in and the
// measured puts reuse memory freed by eviction, as kvtier's store (reserved at start) does.
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

// Blocks per put op (--put_batch): one Client::Put of that many blocks (kvtier), or that
// many SETs pipelined on one connection (Redis).
int g_put_batch = 1;

class KvPut : public Worker {
 public:
  KvPut(std::unique_ptr<Client> c, const std::vector<uint8_t>* payload, uint64_t id, uint64_t epoch)
      : c_(std::move(c)), payload_(payload), id_(id), epoch_(epoch) {}
  int64_t Op(uint64_t i) override {
    std::vector<PutItem> items;
    for (int b = 0; b < g_put_batch; ++b) {
      items.push_back({KeyHash(epoch_ << 32 | id_, i * g_put_batch + b + 1), *payload_});
    }
    auto r = c_->Put(kNs, 0, items);
    if (!r.ok()) {
      if (errors_++ < 3) std::fprintf(stderr, "put: %s\n", r.status().ToString().c_str());
      return -1;
    }
    return static_cast<int64_t>(payload_->size()) * g_put_batch;
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
    for (int b = 0; b < g_put_batch; ++b) {
      const ChainHash k = KeyHash(epoch_ << 32 | id_, i * g_put_batch + b + 1);
      if (redisAppendCommand(c_, "SET %b %b", k.data(), k.size(), payload_->data(),
                             payload_->size()) != REDIS_OK) {
        return -1;
      }
    }
    bool ok = true;
    for (int b = 0; b < g_put_batch; ++b) {
      void* reply = nullptr;
      if (redisGetReply(c_, &reply) != REDIS_OK) return -1;  // the connection is unusable
      auto* r = static_cast<redisReply*>(reply);
      ok = ok && r != nullptr && r->type == REDIS_REPLY_STATUS;
      if (r) freeReplyObject(r);
    }
    return ok ? static_cast<int64_t>(payload_->size()) * g_put_batch : -1;
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

// One SET of `value` under `key` on `c` (untimed loads); true when Redis answered OK.
bool RedisSet(redisContext* c, const ChainHash& key, const std::vector<uint8_t>& value) {
  if (c == nullptr) return false;
  auto* r = static_cast<redisReply*>(
      redisCommand(c, "SET %b %b", key.data(), key.size(), value.data(), value.size()));
  const bool ok = r != nullptr && r->type == REDIS_REPLY_STATUS;
  if (r) freeReplyObject(r);
  return ok;
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

enum class Op { kPut, kGet, kLookup };

const char* OpName(Op op) {
  switch (op) {
    case Op::kPut:
      return "put";
    case Op::kGet:
      return "get";
    case Op::kLookup:
      return "lookup";
  }
  return "?";
}

double Gbps(const PhaseResult& r) { return r.seconds > 0 ? r.bytes / r.seconds / 1e9 : 0; }
double OpsPerSecond(const PhaseResult& r) { return r.seconds > 0 ? r.ops / r.seconds : 0; }

// The median of `v` (the mean of the two middle values for an even count); 0 when empty.
double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// The rounds of one output row: (transport, block, clients, op).
struct Series {
  std::string transport;
  std::string block;  // SizeName of the payload; "128 blocks" for lookup
  size_t size = 0;    // the requested block size (--sizes); 0 for lookup
  int clients = 0;
  Op op = Op::kPut;
  std::vector<double> gbps;          // per round
  std::vector<double> ops_s;         // per round
  uint64_t errors = 0;               // summed over rounds
  std::vector<double> latencies_ms;  // pooled over rounds; sorted by Finish()

  void Add(const PhaseResult& r) {
    gbps.push_back(Gbps(r));
    ops_s.push_back(OpsPerSecond(r));
    errors += r.errors;
    latencies_ms.insert(latencies_ms.end(), r.latencies_ms.begin(), r.latencies_ms.end());
  }
  void Finish() { std::sort(latencies_ms.begin(), latencies_ms.end()); }
  // What the ratio to Redis compares: GB/s, or lookups/s for lookup.
  const std::vector<double>& rate() const { return op == Op::kLookup ? ops_s : gbps; }
};

// The Redis server's --maxmemory (as "3gb": Redis' gb is 1024^3 bytes).
constexpr uint64_t kRedisCapacityBytes = uint64_t{3} << 30;

// Runs the phases against one kvtier-server and one redis-server, and the untimed loads
// between them. Not thread-safe.
class Bench {
 public:
  Bench(std::string endpoint, int redis_port, absl::Duration duration, int rounds, int total)
      : endpoint_(std::move(endpoint)),
        redis_port_(redis_port),
        duration_(duration),
        rounds_(rounds),
        total_(total) {}

  // One measured phase of `clients` clients of `transport`, with a progress line on
  // stderr. put: fresh keys of `payload`; get: `keys` (preloaded); lookup: the chain `keys`.
  PhaseResult Run(Op op, const std::string& transport, const std::string& block, int clients,
                  int round, const std::vector<uint8_t>* payload,
                  const std::vector<ChainHash>* keys) {
    const bool is_redis = transport == "redis";
    const TransportKind kind = transport == "ucx" ? TransportKind::kUcx : TransportKind::kGrpc;
    std::fprintf(stderr, "[%d/%d] %s %s x%d %s round %d/%d ... ", ++done_, total_,
                 transport.c_str(), block.c_str(), clients, OpName(op), round, rounds_);
    std::fflush(stderr);
    const uint64_t epoch = op == Op::kPut ? ++epoch_ : 0;  // fresh keys for every put phase
    PhaseResult r = RunPhase(clients, duration_, [&](int id) -> std::unique_ptr<Worker> {
      if (is_redis) {
        switch (op) {
          case Op::kPut:
            return std::make_unique<RedisPut>(redis_port_, payload, id, epoch);
          case Op::kGet:
            return std::make_unique<RedisGet>(redis_port_, keys, id);
          case Op::kLookup:
            return std::make_unique<RedisExists>(redis_port_, keys);
        }
        return nullptr;
      }
      auto c = Connect(endpoint_, kind);
      if (c == nullptr) return nullptr;  // RunPhase counts every op of a missing worker as an error
      switch (op) {
        case Op::kPut:
          return std::make_unique<KvPut>(std::move(c), payload, id, epoch);
        case Op::kGet:
          return std::make_unique<KvGet>(std::move(c), keys, id);
        case Op::kLookup:
          return std::make_unique<KvLookup>(std::move(c), keys);
      }
      return nullptr;
    });
    if (op == Op::kLookup) {
      std::fprintf(stderr, "%.0f lookups/s", OpsPerSecond(r));
    } else {
      std::fprintf(stderr, "%.2f GB/s", Gbps(r));
    }
    if (r.errors > 0) {
      std::fprintf(stderr, ", %llu errors", static_cast<unsigned long long>(r.errors));
    }
    std::fprintf(stderr, "\n");
    return r;
  }

  // (Re)loads `keys` into kvtier. Deletes them first: a re-Put of a present block is a
  // deduplicated no-op that does not refresh its place in the eviction order, so an old
  // copy could be evicted while it is read. Then checks (Lookup) that all are present,
  // up to three attempts.
  void PreloadKv(TransportKind kind, const std::vector<ChainHash>& keys,
                 const std::vector<uint8_t>& payload) {
    auto c = Connect(endpoint_, kind);
    if (c == nullptr) return;
    std::vector<PutItem> items;  // at most 256 blocks: one Put (--max_blocks_per_put)
    for (const auto& k : keys) items.push_back({k, payload});
    for (int attempt = 1; attempt <= 3; ++attempt) {
      (void)c->Delete(kNs, 0, keys);
      (void)c->Put(kNs, 0, items);
      auto n = c->Lookup(kNs, 0, keys);
      if (n.ok() && *n == keys.size()) return;
      std::fprintf(stderr, "kvtier preload attempt %d: %s of %zu blocks present\n", attempt,
                   n.ok() ? std::to_string(*n).c_str() : n.status().ToString().c_str(),
                   keys.size());
    }
  }

  // (Re)loads `keys` into Redis, then SETs again any that Redis' approximate LRU evicted
  // while the others were written (checked with EXISTS, up to three more passes).
  void PreloadRedis(const std::vector<ChainHash>& keys, const std::vector<uint8_t>& payload) {
    redisContext* c = RedisConnect(redis_port_);
    if (c == nullptr) return;
    std::vector<const ChainHash*> todo;
    for (const auto& k : keys) todo.push_back(&k);
    for (int pass = 0; pass <= 3 && !todo.empty(); ++pass) {
      if (pass > 0) {
        std::fprintf(stderr, "redis preload: %zu of %zu keys evicted, set again\n", todo.size(),
                     keys.size());
      }
      for (const ChainHash* k : todo) (void)RedisSet(c, *k, payload);
      todo.clear();
      for (const auto& k : keys) {
        auto* r = static_cast<redisReply*>(redisCommand(c, "EXISTS %b", k.data(), k.size()));
        if (r == nullptr || r->type != REDIS_REPLY_INTEGER || r->integer != 1) todo.push_back(&k);
        if (r) freeReplyObject(r);
      }
    }
    if (!todo.empty()) {
      std::fprintf(stderr, "redis preload: %zu of %zu keys still missing\n", todo.size(),
                   keys.size());
    }
    redisFree(c);
  }

  // Writes Redis' capacity's worth of `payload` values (untimed, one connection), so that
  // its memory is faulted in and the next puts reuse memory freed by eviction.
  void RedisWarmup(size_t size, const std::vector<uint8_t>& payload) {
    const size_t n = (kRedisCapacityBytes + payload.size() - 1) / payload.size();
    std::fprintf(stderr, "redis warmup: %zu values of %s ... ", n,
                 SizeName(payload.size()).c_str());
    std::fflush(stderr);
    const absl::Time t0 = absl::Now();
    size_t failed = 0;
    redisContext* c = RedisConnect(redis_port_);
    for (size_t i = 0; i < n; ++i) {
      if (!RedisSet(c, KeyHash(0xAAAAull << 32 | size, i), payload)) failed++;
    }
    if (c) redisFree(c);
    const double s = absl::ToDoubleSeconds(absl::Now() - t0);
    std::fprintf(stderr, "%.2f GB in %.1f s (%.2f GB/s), %zu failed\n", n * payload.size() / 1e9, s,
                 n * payload.size() / 1e9 / s, failed);
  }

  void Flush() { RedisFlush(redis_port_); }

 private:
  const std::string endpoint_;
  const int redis_port_;
  const absl::Duration duration_;
  const int rounds_;
  const int total_;
  int done_ = 0;
  uint64_t epoch_ = 1;
};

int Usage() {
  std::fprintf(stderr,
               "usage: kvtier-service-bench [--sizes=256KiB,1MiB,4MiB,16MiB] "
               "[--clients=1,8,64] [--transports=grpc,ucx,redis] [--seconds=2] [--rounds=1] "
               "[--ops=put,get,lookup] [--no_lookup] [--redis_warmup] [--ucx_get_piece=1MiB] "
               "[--ucx_workers=0] [--put_batch=1] "
               "[--server_flag=--flag=value ...]\n"
               "  --rounds=N (1..20): N > 1 interleaves the transports' phases in N rounds and "
               "prints medians, min/max and ratios to Redis\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<size_t> sizes = {256 << 10, 1 << 20, 4 << 20, 16 << 20};
  std::vector<int> client_counts = {1, 8, 64};
  std::vector<std::string> transports = {"grpc", "ucx", "redis"};
  double seconds = 2;
  int rounds = 1;
  bool do_put = true, do_get = true, lookup = true, no_lookup = false;
  bool redis_warmup = false;
  int ucx_workers = 0;
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
        if (!b.ok() || *b == 0) return Usage();
        sizes.push_back(*b);
      }
    } else if (!value("clients").empty()) {
      client_counts.clear();
      for (auto s : absl::StrSplit(value("clients"), ',')) {
        int n = 0;
        if (!absl::SimpleAtoi(s, &n) || n < 1) return Usage();
        client_counts.push_back(n);
      }
    } else if (!value("transports").empty()) {
      transports = absl::StrSplit(value("transports"), ',');
      for (const auto& t : transports) {
        if (t != "grpc" && t != "ucx" && t != "redis") return Usage();
      }
    } else if (!value("seconds").empty()) {
      if (!absl::SimpleAtod(value("seconds"), &seconds) || !(seconds > 0)) return Usage();
    } else if (!value("rounds").empty()) {
      if (!absl::SimpleAtoi(value("rounds"), &rounds) || rounds < 1 || rounds > 20) {
        return Usage();
      }
    } else if (!value("ops").empty()) {
      do_put = do_get = lookup = false;
      for (auto s : absl::StrSplit(value("ops"), ',')) {
        if (s == "put") {
          do_put = true;
        } else if (s == "get") {
          do_get = true;
        } else if (s == "lookup") {
          lookup = true;
        } else {
          return Usage();
        }
      }
    } else if (!value("server_flag").empty()) {
      server_flags.push_back(value("server_flag"));  // e.g. --server_flag=--ready_put_buffers=0
    } else if (!value("put_batch").empty()) {
      if (!absl::SimpleAtoi(value("put_batch"), &g_put_batch) || g_put_batch < 1 ||
          g_put_batch > 64) {
        return Usage();
      }
    } else if (!value("ucx_workers").empty()) {
      // kvtier-server's --ucx_workers; 0 (the default): the server's own choice.
      if (!absl::SimpleAtoi(value("ucx_workers"), &ucx_workers) || ucx_workers < 0 ||
          ucx_workers > 64) {
        return Usage();
      }
    } else if (!value("ucx_get_piece").empty()) {
      auto b = kvtier::service::ParseByteSize(value("ucx_get_piece"));  // 0: whole payloads
      if (!b.ok()) return Usage();
      g_ucx_get_piece_bytes = *b;
    } else if (a == "--no_lookup") {
      no_lookup = true;
    } else if (a == "--redis_warmup") {
      redis_warmup = true;
    } else {
      return Usage();
    }
  }
  if (no_lookup) lookup = false;
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
  so.ucx_workers = ucx_workers;
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

  const bool has_redis =
      std::find(transports.begin(), transports.end(), "redis") != transports.end();
  // The kvtier transport that loads the get set in interleaved rounds (one server: gRPC and
  // UCX read the same blocks).
  const auto first_kv = std::find_if(transports.begin(), transports.end(),
                                     [](const std::string& t) { return t != "redis"; });
  const bool has_kv = first_kv != transports.end();
  const TransportKind preload_kind =
      has_kv && *first_kv == "ucx" ? TransportKind::kUcx : TransportKind::kGrpc;
  const int n_t = static_cast<int>(transports.size());
  const int n_c = static_cast<int>(client_counts.size());
  const int total =
      static_cast<int>(sizes.size()) * n_c * n_t * rounds * ((do_put ? 1 : 0) + (do_get ? 1 : 0)) +
      (lookup ? n_c * n_t * rounds : 0);
  Bench bench(server.endpoint(), redis_port, dur, rounds, total);
  const bool interleaved = rounds > 1;

  if (do_put || do_get) {
    if (interleaved) {
      std::printf(
          "| transport | block | clients | op | GB/s | min GB/s | max GB/s | ops/s | p50 ms | "
          "p99 ms | errors |\n");
      std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
    } else {
      std::printf(
          "| transport | block | clients | op | GB/s | ops/s | p50 ms | p99 ms | errors |\n");
      std::printf("|---|---|---|---|---|---|---|---|---|\n");
    }
  }
  auto row = [](const std::string& t, const std::string& size, int clients, const char* op,
                const PhaseResult& r) {
    std::printf("| %s | %s | %d | %s | %.2f | %.0f | %.2f | %.2f | %llu |\n", t.c_str(),
                size.c_str(), clients, op, Gbps(r), OpsPerSecond(r),
                Percentile(r.latencies_ms, 0.5), Percentile(r.latencies_ms, 0.99),
                static_cast<unsigned long long>(r.errors));
    std::fflush(stdout);
  };
  // Interleaved rounds: one row per series, medians over rounds.
  auto series_row = [](const Series& s) {
    std::printf("| %s | %s | %d | %s | %.2f | %.2f | %.2f | %.0f | %.2f | %.2f | %llu |\n",
                s.transport.c_str(), s.block.c_str(), s.clients, OpName(s.op), Median(s.gbps),
                *std::min_element(s.gbps.begin(), s.gbps.end()),
                *std::max_element(s.gbps.begin(), s.gbps.end()), Median(s.ops_s),
                Percentile(s.latencies_ms, 0.5), Percentile(s.latencies_ms, 0.99),
                static_cast<unsigned long long>(s.errors));
    std::fflush(stdout);
  };
  std::vector<Series> all;  // interleaved: every row, in output order, for the ratio table

  for (size_t size : sizes) {
    const std::vector<uint8_t> payload = kt::MakePayload(size, size);
    const std::string block = SizeName(payload.size());
    // Preloaded get set: about 256 MiB, between 8 and 256 blocks.
    const size_t set_n = std::clamp<size_t>((size_t{256} << 20) / payload.size(), 8, 256);
    std::vector<ChainHash> set;
    for (size_t i = 0; i < set_n; ++i) set.push_back(KeyHash(0xFFFFull << 32 | size, i));
    if (!interleaved) {
      // One transport after the other; the get set is reloaded after every put phase (both
      // kvtier and Redis run with a 3 GiB memory limit and LRU-style eviction).
      for (const std::string& t : transports) {
        const bool is_redis = t == "redis";
        const TransportKind kind = t == "ucx" ? TransportKind::kUcx : TransportKind::kGrpc;
        if (is_redis) {
          bench.Flush();
          if (redis_warmup && do_put) bench.RedisWarmup(size, payload);
        }
        for (int clients : client_counts) {
          if (do_put) {
            row(t, block, clients, "put",
                bench.Run(Op::kPut, t, block, clients, 1, &payload, nullptr));
          }
          if (do_get) {
            if (is_redis) {
              bench.PreloadRedis(set, payload);
            } else {
              bench.PreloadKv(kind, set, payload);
            }
            row(t, block, clients, "get", bench.Run(Op::kGet, t, block, clients, 1, nullptr, &set));
          }
        }
      }
      continue;
    }
    // Interleaved rounds. Per client count: all put rounds first (each phase stores fresh
    // keys, evicting older ones); then the get set is loaded once into kvtier (shared by
    // gRPC and UCX: one server) and once into Redis, after the last put, so no put can
    // evict it; the get rounds store nothing.
    if (has_redis) {
      bench.Flush();
      if (redis_warmup && do_put) bench.RedisWarmup(size, payload);
    }
    for (int clients : client_counts) {
      for (Op op : {Op::kPut, Op::kGet}) {
        if (op == Op::kPut ? !do_put : !do_get) continue;
        if (op == Op::kGet) {
          if (has_kv) bench.PreloadKv(preload_kind, set, payload);
          if (has_redis) bench.PreloadRedis(set, payload);
        }
        std::vector<Series> group(transports.size());
        for (int r = 1; r <= rounds; ++r) {
          for (int ti = 0; ti < n_t; ++ti) {
            group[ti].Add(bench.Run(op, transports[ti], block, clients, r,
                                    op == Op::kPut ? &payload : nullptr,
                                    op == Op::kGet ? &set : nullptr));
          }
        }
        for (int ti = 0; ti < n_t; ++ti) {
          Series& s = group[ti];
          s.transport = transports[ti];
          s.block = block;
          s.size = size;
          s.clients = clients;
          s.op = op;
          s.Finish();
          series_row(s);
          s.latencies_ms = {};
          all.push_back(std::move(s));
        }
      }
    }
  }

  if (lookup) {
    if (interleaved) {
      std::printf(
          "\n| transport | chain | clients | op | lookups/s | min lookups/s | max lookups/s | "
          "p50 ms | p99 ms | errors |\n");
      std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
    } else {
      std::printf(
          "\n| transport | chain | clients | op | lookups/s | p50 ms | p99 ms | errors |\n");
      std::printf("|---|---|---|---|---|---|---|---|\n");
    }
    // The chain: 128 small blocks, loaded after the last put phase; lookups store nothing.
    std::vector<ChainHash> chain;
    for (int i = 0; i < 128; ++i) chain.push_back(KeyHash(0xC4A1ull << 32, i));
    const std::vector<uint8_t> small = kt::MakePayload(16 << 10, 7);
    {
      auto c = Connect(server.endpoint(), TransportKind::kGrpc);
      std::vector<PutItem> items;
      for (const auto& h : chain) items.push_back({h, small});
      if (c != nullptr) (void)c->Put(kNs, 0, items);
      redisContext* rc = RedisConnect(redis_port);
      for (const auto& h : chain) (void)RedisSet(rc, h, small);
      if (rc) redisFree(rc);
    }
    const std::string block = "128 blocks";
    auto op_label = [](const std::string& t) { return t == "redis" ? "EXISTS x128" : "Lookup"; };
    if (!interleaved) {
      for (const std::string& t : transports) {
        for (int clients : client_counts) {
          PhaseResult r = bench.Run(Op::kLookup, t, block, clients, 1, nullptr, &chain);
          std::printf("| %s | 128 blocks | %d | %s | %.0f | %.3f | %.3f | %llu |\n", t.c_str(),
                      clients, op_label(t), OpsPerSecond(r), Percentile(r.latencies_ms, 0.5),
                      Percentile(r.latencies_ms, 0.99), static_cast<unsigned long long>(r.errors));
          std::fflush(stdout);
        }
      }
    } else {
      for (int clients : client_counts) {
        std::vector<Series> group(transports.size());
        for (int r = 1; r <= rounds; ++r) {
          for (int ti = 0; ti < n_t; ++ti) {
            group[ti].Add(
                bench.Run(Op::kLookup, transports[ti], block, clients, r, nullptr, &chain));
          }
        }
        for (int ti = 0; ti < n_t; ++ti) {
          Series& s = group[ti];
          s.transport = transports[ti];
          s.block = block;
          s.clients = clients;
          s.op = Op::kLookup;
          s.Finish();
          std::printf("| %s | 128 blocks | %d | %s | %.0f | %.0f | %.0f | %.3f | %.3f | %llu |\n",
                      s.transport.c_str(), clients, op_label(s.transport), Median(s.ops_s),
                      *std::min_element(s.ops_s.begin(), s.ops_s.end()),
                      *std::max_element(s.ops_s.begin(), s.ops_s.end()),
                      Percentile(s.latencies_ms, 0.5), Percentile(s.latencies_ms, 0.99),
                      static_cast<unsigned long long>(s.errors));
          std::fflush(stdout);
          s.latencies_ms = {};
          all.push_back(std::move(s));
        }
      }
    }
  }

  // Ratio to Redis, round by round: kvtier's rate in round r over Redis' rate in round r
  // (same block size, clients and op; rounds where Redis moved nothing are left out).
  if (interleaved && has_redis && has_kv && !all.empty()) {
    std::printf(
        "\nratio to Redis (kvtier / Redis in the same round; put, get: GB/s, lookup: "
        "lookups/s; targets for 4 MiB blocks):\n\n");
    std::printf(
        "| block | clients | op | transport | median | min | max | target | median ≥ target | "
        "min ≥ target |\n");
    std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
    for (const Series& kv : all) {
      if (kv.transport == "redis") continue;
      const auto rs = std::find_if(all.begin(), all.end(), [&](const Series& s) {
        return s.transport == "redis" && s.size == kv.size && s.clients == kv.clients &&
               s.op == kv.op;
      });
      if (rs == all.end()) continue;
      std::vector<double> ratios;
      for (size_t r = 0; r < kv.rate().size() && r < rs->rate().size(); ++r) {
        if (rs->rate()[r] > 0) ratios.push_back(kv.rate()[r] / rs->rate()[r]);
      }
      if (ratios.empty()) {
        std::printf("| %s | %d | %s | %s | - | - | - | - | - | - |\n", kv.block.c_str(), kv.clients,
                    OpName(kv.op), kv.transport.c_str());
        continue;
      }
      const double median = Median(ratios);
      const double lo = *std::min_element(ratios.begin(), ratios.end());
      const double hi = *std::max_element(ratios.begin(), ratios.end());
      // The targets, for 4 MiB Put and Get: UCX >= 2x Redis, gRPC >= 1x.
      double target = 0;
      if (kv.size == (size_t{4} << 20) && kv.op != Op::kLookup) {
        target = kv.transport == "ucx" ? 2 : 1;
      }
      if (target > 0) {
        std::printf("| %s | %d | %s | %s | %.2f | %.2f | %.2f | %.0f | %s | %s |\n",
                    kv.block.c_str(), kv.clients, OpName(kv.op), kv.transport.c_str(), median, lo,
                    hi, target, median >= target ? "yes" : "no", lo >= target ? "yes" : "no");
      } else {
        std::printf("| %s | %d | %s | %s | %.2f | %.2f | %.2f | - | - | - |\n", kv.block.c_str(),
                    kv.clients, OpName(kv.op), kv.transport.c_str(), median, lo, hi);
      }
    }
    std::fflush(stdout);
  }
  kill(redis, SIGTERM);
  waitpid(redis, nullptr, 0);
  (void)server.Terminate();
  return 0;
}
