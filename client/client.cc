#include "client/client.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <deque>
#include <fstream>
#include <random>
#include <set>
#include <sstream>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/blocking_counter.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "kernels/payload.h"
#include "proto/kvtier/v1/wire.h"

namespace kvtier::client {

// A fixed set of threads running queued tasks in FIFO order. Destruction runs every queued
// task, then joins. Thread-safe.
class ThreadPool {
 public:
  explicit ThreadPool(int n) {
    for (int i = 0; i < std::max(1, n); ++i) threads_.emplace_back([this] { Loop(); });
  }
  ~ThreadPool() {
    {
      absl::MutexLock l(&mu_);
      stop_ = true;
    }
    for (auto& t : threads_) t.join();
  }
  void Submit(std::function<void()> fn) {
    absl::MutexLock l(&mu_);
    queue_.push_back(std::move(fn));
  }

 private:
  void Loop() {
    while (true) {
      std::function<void()> fn;
      {
        absl::MutexLock l(&mu_);
        mu_.Await(absl::Condition(
            +[](ThreadPool* p)
                 ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) { return p->stop_ || !p->queue_.empty(); },
            this));
        if (queue_.empty()) return;  // stop_ and drained
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
    }
  }
  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

namespace {

absl::StatusOr<std::string> ReadPem(const std::string& path, absl::string_view what) {
  if (path.empty()) return std::string();
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", what, " ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

absl::StatusOr<std::vector<std::string>> ResolveAll(const std::string& name_port) {
  const size_t colon = name_port.rfind(':');
  if (colon == std::string::npos || colon == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("dns_name must be name:port, got \"", name_port, "\""));
  }
  const std::string host = name_port.substr(0, colon);
  const std::string port = name_port.substr(colon + 1);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const int rc = getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0) {
    return absl::UnavailableError(absl::StrCat("cannot resolve ", host, ": ", gai_strerror(rc)));
  }
  std::set<std::string> out;
  for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
    char buf[INET6_ADDRSTRLEN] = {};
    if (a->ai_family == AF_INET) {
      inet_ntop(AF_INET, &reinterpret_cast<sockaddr_in*>(a->ai_addr)->sin_addr, buf, sizeof(buf));
      out.insert(absl::StrCat(buf, ":", port));
    } else if (a->ai_family == AF_INET6) {
      inet_ntop(AF_INET6, &reinterpret_cast<sockaddr_in6*>(a->ai_addr)->sin6_addr, buf,
                sizeof(buf));
      out.insert(absl::StrCat("[", buf, "]:", port));
    }
  }
  freeaddrinfo(res);
  if (out.empty()) return absl::UnavailableError(absl::StrCat(host, " has no addresses"));
  return std::vector<std::string>(out.begin(), out.end());
}

bool IsAvailabilityError(absl::StatusCode c) {
  return c == absl::StatusCode::kUnavailable || c == absl::StatusCode::kDeadlineExceeded ||
         c == absl::StatusCode::kCancelled || c == absl::StatusCode::kAborted ||
         c == absl::StatusCode::kResourceExhausted || c == absl::StatusCode::kInternal ||
         c == absl::StatusCode::kDataLoss || c == absl::StatusCode::kUnknown;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Client>> Client::Create(const ClientOptions& options) {
  std::vector<std::string> endpoints = options.endpoints;
  if (!options.dns_name.empty()) {
    absl::StatusOr<std::vector<std::string>> r = ResolveAll(options.dns_name);
    if (!r.ok()) return r.status();
    endpoints.insert(endpoints.end(), r->begin(), r->end());
  }
  if (endpoints.empty()) return absl::InvalidArgumentError("no endpoints");
  if (options.ucx_get_piece_bytes != 0 &&
      (options.ucx_get_piece_bytes < v1::wire::kMinGetPieceBytes ||
       options.ucx_get_piece_bytes > kernels::kMaxPayloadBytes)) {
    return absl::InvalidArgumentError(
        absl::StrCat("ucx_get_piece_bytes is ", options.ucx_get_piece_bytes, "; expected 0 or ",
                     v1::wire::kMinGetPieceBytes, "..", kernels::kMaxPayloadBytes));
  }
  if (options.ucx_connections < 1 || options.ucx_connections > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("ucx_connections is ", options.ucx_connections, "; expected 1..64"));
  }
  TransportOptions t;
  t.tls = options.tls;
  t.token = options.token;
  t.tls_server_name = options.tls_server_name;
  t.max_blocks_per_put = options.max_blocks_per_put;
  t.ucx_get_piece_bytes = options.ucx_get_piece_bytes;
  t.ucx_connections = options.ucx_connections;
  if (options.tls) {
    absl::StatusOr<std::string> ca = ReadPem(options.tls_ca_file, "TLS CA");
    if (!ca.ok()) return ca.status();
    absl::StatusOr<std::string> cert = ReadPem(options.tls_cert_file, "TLS certificate");
    if (!cert.ok()) return cert.status();
    absl::StatusOr<std::string> key = ReadPem(options.tls_key_file, "TLS key");
    if (!key.ok()) return key.status();
    t.tls_ca_pem = *ca;
    t.tls_cert_pem = *cert;
    t.tls_key_pem = *key;
  }
  std::vector<std::unique_ptr<Transport>> transports;
  for (const std::string& e : endpoints) {
    absl::StatusOr<std::unique_ptr<Transport>> tr =
        options.transport == TransportKind::kUcx ? MakeUcxTransport(e, t) : MakeGrpcTransport(e, t);
    if (!tr.ok()) return tr.status();
    transports.push_back(*std::move(tr));
  }
  return CreateWithTransports(std::move(transports), options);
}

absl::StatusOr<std::unique_ptr<Client>> Client::CreateWithTransports(
    std::vector<std::unique_ptr<Transport>> transports, const ClientOptions& options) {
  if (transports.empty()) return absl::InvalidArgumentError("no transports");
  if (options.max_attempts < 1) return absl::InvalidArgumentError("max_attempts must be >= 1");
  return std::unique_ptr<Client>(new Client(std::move(transports), options));
}

Client::Client(std::vector<std::unique_ptr<Transport>> transports, const ClientOptions& options)
    : options_(options),
      transports_(std::move(transports)),
      fanout_(std::make_unique<ThreadPool>(
          std::min<int>(options.fanout_threads, static_cast<int>(transports_.size())))),
      async_(std::make_unique<ThreadPool>(options.async_threads)) {}

Client::~Client() {
  // Async calls first: they may use the fan-out pool.
  async_.reset();
  fanout_.reset();
}

std::vector<ChainHash> Client::ChainHashes(absl::string_view ns, absl::Span<const int32_t> tokens,
                                           int block_size, bool include_partial) {
  return kernels::ChainHashes(std::string_view(ns.data(), ns.size()), tokens, block_size,
                              include_partial);
}

size_t Client::ShardOf(absl::string_view ns, const ChainHash& hash, uint32_t part) const {
  if (transports_.size() == 1) return 0;
  std::vector<uint8_t> buf;
  buf.reserve(ns.size() + 1 + hash.size() + 4 + 64);
  buf.insert(buf.end(), ns.begin(), ns.end());
  buf.push_back(0);
  buf.insert(buf.end(), hash.begin(), hash.end());
  for (int i = 0; i < 4; ++i) buf.push_back(static_cast<uint8_t>(part >> (8 * i)));
  const size_t base = buf.size();
  size_t best = 0;
  uint64_t best_score = 0;
  for (size_t i = 0; i < transports_.size(); ++i) {
    const std::string& e = transports_[i]->endpoint();
    buf.resize(base);
    buf.insert(buf.end(), e.begin(), e.end());
    const uint64_t score = kernels::Xxh3(buf);
    if (i == 0 || score > best_score) {
      best = i;
      best_score = score;
    }
  }
  return best;
}

std::vector<std::vector<size_t>> Client::Group(absl::string_view ns, uint32_t part,
                                               absl::Span<const ChainHash> chain) const {
  std::vector<std::vector<size_t>> groups(transports_.size());
  for (size_t i = 0; i < chain.size(); ++i) groups[ShardOf(ns, chain[i], part)].push_back(i);
  return groups;
}

void Client::ForEachShard(const std::vector<std::vector<size_t>>& groups,
                          const std::function<void(size_t)>& fn) {
  std::vector<size_t> shards;
  for (size_t s = 0; s < groups.size(); ++s) {
    if (!groups[s].empty()) shards.push_back(s);
  }
  if (shards.empty()) return;
  absl::BlockingCounter pending(static_cast<int>(shards.size() - 1));
  for (size_t k = 1; k < shards.size(); ++k) {
    const size_t s = shards[k];
    fanout_->Submit([&fn, &pending, s] {
      fn(s);
      pending.DecrementCount();
    });
  }
  fn(shards[0]);  // the first shard on the calling thread
  pending.Wait();
}

template <typename T>
absl::StatusOr<T> Client::Retry(absl::Time deadline, const std::function<absl::StatusOr<T>()>& fn) {
  thread_local std::mt19937_64 rng(std::random_device{}());
  absl::Duration backoff = options_.initial_backoff;
  for (int attempt = 1;; ++attempt) {
    absl::StatusOr<T> r = fn();
    if (r.ok() || r.status().code() != absl::StatusCode::kUnavailable ||
        attempt >= options_.max_attempts) {
      return r;
    }
    std::uniform_real_distribution<double> jitter(0.5, 1.5);
    const absl::Duration sleep = backoff * jitter(rng);
    if (absl::Now() + sleep >= deadline) return r;
    absl::SleepFor(sleep);
    backoff = std::min(backoff * 2, options_.max_backoff);
  }
}

absl::StatusOr<size_t> Client::Lookup(absl::string_view ns, uint32_t part,
                                      absl::Span<const ChainHash> chain, uint32_t block_tokens) {
  if (chain.empty()) return 0;
  const absl::Time deadline = absl::Now() + options_.timeout;
  const auto groups = Group(ns, part, chain);
  std::vector<size_t> first_miss(groups.size(), chain.size());
  std::vector<absl::Status> errors(groups.size());
  ForEachShard(groups, [&](size_t s) {
    std::vector<ChainHash> sub;
    sub.reserve(groups[s].size());
    for (size_t i : groups[s]) sub.push_back(chain[i]);
    absl::StatusOr<uint32_t> n = Retry<uint32_t>(
        deadline, [&]() { return transports_[s]->Lookup(ns, part, sub, block_tokens, deadline); });
    if (!n.ok()) {
      if (IsAvailabilityError(n.status().code())) {
        first_miss[s] = groups[s][0];  // unreachable shard: a miss at its first block
      } else {
        errors[s] = n.status();
      }
      return;
    }
    if (*n < groups[s].size()) first_miss[s] = groups[s][*n];
  });
  for (const absl::Status& e : errors) {
    if (!e.ok()) return e;
  }
  return *std::min_element(first_miss.begin(), first_miss.end());
}

absl::StatusOr<std::vector<PutOutcome>> Client::Put(absl::string_view ns, uint32_t part,
                                                    absl::Span<const PutItem> blocks) {
  std::vector<PutOutcome> out(blocks.size(), PutOutcome::kStored);
  if (blocks.empty()) return out;
  const absl::Time deadline = absl::Now() + options_.timeout;
  std::vector<ChainHash> chain;
  chain.reserve(blocks.size());
  for (const PutItem& b : blocks) chain.push_back(b.hash);
  const auto groups = Group(ns, part, chain);
  std::vector<absl::Status> errors(groups.size());
  ForEachShard(groups, [&](size_t s) {
    std::vector<PutItem> sub;
    sub.reserve(groups[s].size());
    for (size_t i : groups[s]) sub.push_back(blocks[i]);
    absl::StatusOr<std::vector<PutOutcome>> r = Retry<std::vector<PutOutcome>>(
        deadline, [&]() { return transports_[s]->Put(ns, part, sub, deadline); });
    if (!r.ok()) {
      errors[s] = absl::Status(
          r.status().code(), absl::StrCat(transports_[s]->endpoint(), ": ", r.status().message()));
      return;
    }
    for (size_t k = 0; k < groups[s].size(); ++k) out[groups[s][k]] = (*r)[k];
  });
  for (const absl::Status& e : errors) {
    if (!e.ok()) return e;
  }
  return out;
}

std::vector<BlockResult> Client::Get(absl::string_view ns, uint32_t part,
                                     absl::Span<const ChainHash> chain) {
  std::vector<BlockResult> out(chain.size());
  if (chain.empty()) return out;
  const absl::Time deadline = absl::Now() + options_.timeout;
  const auto groups = Group(ns, part, chain);
  ForEachShard(groups, [&](size_t s) {
    std::vector<ChainHash> sub;
    sub.reserve(groups[s].size());
    for (size_t i : groups[s]) sub.push_back(chain[i]);
    absl::StatusOr<std::vector<BlockResult>> r = Retry<std::vector<BlockResult>>(
        deadline, [&]() { return transports_[s]->Get(ns, part, sub, deadline); });
    for (size_t k = 0; k < groups[s].size(); ++k) {
      BlockResult& dst = out[groups[s][k]];
      if (!r.ok()) {
        dst.hit = false;
        dst.status = absl::Status(r.status().code(), absl::StrCat(transports_[s]->endpoint(), ": ",
                                                                  r.status().message()));
        continue;
      }
      dst = std::move((*r)[k]);
      if (dst.hit && !transports_[s]->validates_payloads()) {
        // Never hand out bytes that fail validation (hashed once: here, or by a transport
        // that validates on receipt).
        absl::StatusOr<kernels::PayloadView> v = kernels::ValidatePayload(dst.payload);
        if (!v.ok()) {
          dst.hit = false;
          dst.payload.clear();
          dst.payload.shrink_to_fit();
          dst.status = absl::DataLossError(
              absl::StrCat("received block failed validation: ", v.status().message()));
        }
      } else if (!dst.hit) {
        dst.payload.clear();
      }
    }
  });
  return out;
}

absl::StatusOr<size_t> Client::Delete(absl::string_view ns, uint32_t part,
                                      absl::Span<const ChainHash> chain) {
  if (chain.empty()) return 0;
  const absl::Time deadline = absl::Now() + options_.timeout;
  const auto groups = Group(ns, part, chain);
  std::vector<absl::StatusOr<uint32_t>> results(groups.size(), 0u);
  ForEachShard(groups, [&](size_t s) {
    std::vector<ChainHash> sub;
    for (size_t i : groups[s]) sub.push_back(chain[i]);
    results[s] = Retry<uint32_t>(deadline,
                                 [&]() { return transports_[s]->Delete(ns, part, sub, deadline); });
  });
  size_t total = 0;
  for (const auto& r : results) {
    if (!r.ok()) return r.status();
    total += *r;
  }
  return total;
}

std::vector<Client::EndpointStats> Client::Stats() {
  const absl::Time deadline = absl::Now() + options_.timeout;
  std::vector<EndpointStats> out(transports_.size());
  std::vector<std::vector<size_t>> all(transports_.size(), std::vector<size_t>{0});
  ForEachShard(all, [&](size_t s) {
    out[s].endpoint = transports_[s]->endpoint();
    out[s].stats = transports_[s]->Stats(deadline);
  });
  return out;
}

std::vector<std::pair<std::string, absl::Status>> Client::Health() {
  const absl::Time deadline = absl::Now() + options_.timeout;
  std::vector<std::pair<std::string, absl::Status>> out(transports_.size());
  std::vector<std::vector<size_t>> all(transports_.size(), std::vector<size_t>{0});
  ForEachShard(all, [&](size_t s) {
    out[s] = {transports_[s]->endpoint(), transports_[s]->Health(deadline)};
  });
  return out;
}

void Client::LookupAsync(std::string ns, uint32_t part, std::vector<ChainHash> chain,
                         uint32_t block_tokens, std::function<void(absl::StatusOr<size_t>)> done) {
  async_->Submit([this, ns = std::move(ns), part, chain = std::move(chain), block_tokens,
                  done = std::move(done)] { done(Lookup(ns, part, chain, block_tokens)); });
}

void Client::PutAsync(std::string ns, uint32_t part, std::vector<PutItem> blocks,
                      std::function<void(absl::StatusOr<std::vector<PutOutcome>>)> done) {
  async_->Submit([this, ns = std::move(ns), part, blocks = std::move(blocks),
                  done = std::move(done)] { done(Put(ns, part, blocks)); });
}

void Client::GetAsync(std::string ns, uint32_t part, std::vector<ChainHash> chain,
                      std::function<void(std::vector<BlockResult>)> done) {
  async_->Submit([this, ns = std::move(ns), part, chain = std::move(chain),
                  done = std::move(done)] { done(Get(ns, part, chain)); });
}

}  // namespace kvtier::client
