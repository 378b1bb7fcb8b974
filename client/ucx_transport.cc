// UCX implementation of client::Transport: a session opened with the authenticated
// OpenUcxSession gRPC call, then Lookup/Put/Get/Delete over a UcxConnection. Stats and
// Health stay on gRPC.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/transport.h"
#include "client/transport_internal.h"
#include "client/ucx/ucx_client.h"
#include "kvtier/v1/kvtier.grpc.pb.h"

namespace kvtier::client {
namespace {

namespace v1 = ::kvtier::v1;

std::string HostOf(const std::string& endpoint) {
  std::string host = endpoint.substr(0, endpoint.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  return host;
}

bool Retriable(absl::StatusCode c) {
  // A lost connection or an expired/unknown session: reconnect once with a fresh session.
  return c == absl::StatusCode::kUnavailable || c == absl::StatusCode::kUnauthenticated;
}

class UcxTransport final : public Transport {
 public:
  UcxTransport(std::string endpoint, TransportOptions o, std::unique_ptr<Transport> grpc)
      : endpoint_(std::move(endpoint)),
        o_(std::move(o)),
        grpc_(std::move(grpc)),
        stub_(v1::KvTier::NewStub(internal::MakeChannel(endpoint_, o_))) {
    for (int i = 0; i < std::max(1, o_.ucx_connections); ++i) {
      slots_.push_back(std::make_unique<Slot>());
    }
  }

  const std::string& endpoint() const override { return endpoint_; }
  absl::string_view kind() const override { return "ucx"; }
  // UcxConnection::Get validates every block on receipt (a failing one is kDataLoss).
  bool validates_payloads() const override { return true; }

  absl::StatusOr<uint32_t> Lookup(absl::string_view ns, uint32_t part,
                                  absl::Span<const ChainHash> chain, uint32_t block_tokens,
                                  absl::Time deadline) override {
    return WithConnection<uint32_t>(deadline, [&](UcxConnection* c, absl::Duration left) {
      return c->Lookup(ns, part, chain, block_tokens, left);
    });
  }

  absl::StatusOr<std::vector<PutOutcome>> Put(absl::string_view ns, uint32_t part,
                                              absl::Span<const PutItem> blocks,
                                              absl::Time deadline) override {
    // One request per block (the UCX protocol stores single blocks). A batch is spread over
    // up to ucx_connections connections (so over the server's UCX workers) and every block
    // is in flight at once; then the answers are collected. Not all or nothing: blocks
    // other than a failed one may be stored (Put is idempotent, so a retry stores nothing
    // twice). A block that failed for a lost connection or an expired session is retried
    // once on a fresh connection.
    std::vector<absl::StatusOr<PutOutcome>> results(blocks.size(),
                                                    absl::UnavailableError("not attempted"));
    std::vector<size_t> todo(blocks.size());
    for (size_t i = 0; i < todo.size(); ++i) todo[i] = i;
    for (int attempt = 0; attempt < 2 && !todo.empty(); ++attempt) {
      const int lanes = static_cast<int>(std::min<size_t>(todo.size(), slots_.size()));
      std::vector<int> slot_of_lane(lanes);
      std::vector<std::shared_ptr<UcxConnection>> conn(lanes);
      for (int l = 0; l < lanes; ++l) slot_of_lane[l] = lanes == 1 ? PickSlot() : l;
      for (int l = 0; l < lanes; ++l) slots_[slot_of_lane[l]]->busy.fetch_add(1);
      absl::Cleanup done = [&] {
        for (int l = 0; l < lanes; ++l) slots_[slot_of_lane[l]]->busy.fetch_sub(1);
      };
      for (int l = 0; l < lanes; ++l) {
        absl::StatusOr<std::shared_ptr<UcxConnection>> c = Connection(slot_of_lane[l], deadline);
        if (!c.ok()) return c.status();
        conn[l] = *std::move(c);
      }
      std::vector<UcxPendingPut> pending;
      pending.reserve(todo.size());
      for (size_t k = 0; k < todo.size(); ++k) {
        const PutItem& b = blocks[todo[k]];
        const absl::Duration left = deadline - absl::Now();
        if (left <= absl::ZeroDuration()) break;  // the rest stay "deadline passed" below
        pending.push_back(
            conn[k % lanes]->StartPut(ns, b.hash, part, b.payload.data(), b.payload.size(), left));
      }
      std::vector<size_t> retry;
      for (size_t k = 0; k < todo.size(); ++k) {
        if (k >= pending.size()) {
          results[todo[k]] = absl::DeadlineExceededError("deadline passed");
          continue;
        }
        absl::StatusOr<v1::PutResponse::Outcome> r = pending[k].Wait();
        if (r.ok()) {
          results[todo[k]] =
              *r == v1::PutResponse::DEDUPLICATED ? PutOutcome::kDeduplicated : PutOutcome::kStored;
          continue;
        }
        results[todo[k]] = r.status();
        if (Retriable(r.status().code())) {
          retry.push_back(todo[k]);
          Forget(slot_of_lane[k % lanes], conn[k % lanes]);
        }
      }
      todo = std::move(retry);
    }
    std::vector<PutOutcome> out;
    out.reserve(blocks.size());
    for (absl::StatusOr<PutOutcome>& r : results) {
      if (!r.ok()) return r.status();  // the first failed block's status
      out.push_back(*r);
    }
    return out;
  }

  absl::StatusOr<std::vector<BlockResult>> Get(absl::string_view ns, uint32_t part,
                                               absl::Span<const ChainHash> chain,
                                               absl::Time deadline) override {
    return WithConnection<std::vector<BlockResult>>(
        deadline,
        [&](UcxConnection* c, absl::Duration left) -> absl::StatusOr<std::vector<BlockResult>> {
          absl::StatusOr<std::vector<UcxGetBlock>> r = c->Get(ns, part, chain, left);
          if (!r.ok()) return r.status();
          std::vector<BlockResult> out(r->size());
          for (size_t i = 0; i < r->size(); ++i) {
            UcxGetBlock& g = (*r)[i];
            out[i].status = g.status;
            out[i].hit = g.status.ok() && g.payload.has_value();
            out[i].tier = g.tier == v1::TIER_MEMORY ? Tier::kMemory
                          : g.tier == v1::TIER_DISK ? Tier::kDisk
                                                    : Tier::kUnknown;
            if (out[i].hit) out[i].payload = std::move(*g.payload);
          }
          return out;
        });
  }

  absl::StatusOr<uint32_t> Delete(absl::string_view ns, uint32_t part,
                                  absl::Span<const ChainHash> chain, absl::Time deadline) override {
    return WithConnection<uint32_t>(deadline, [&](UcxConnection* c, absl::Duration left) {
      return c->Delete(ns, part, chain, left);
    });
  }

  absl::StatusOr<v1::StatsResponse> Stats(absl::Time deadline) override {
    return grpc_->Stats(deadline);
  }
  absl::Status Health(absl::Time deadline) override { return grpc_->Health(deadline); }

 private:
  // One connection of the pool and its session.
  struct Slot {
    std::shared_ptr<UcxConnection> conn;
    absl::Time expires;
    std::atomic<int> busy{0};  // calls using it now (WithConnection)
  };

  bool Open(const Slot& s) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return s.conn != nullptr && s.conn->connected() && absl::Now() + absl::Seconds(30) < s.expires;
  }

  // The slot for one call: an idle open connection, else a slot not opened yet (so that
  // concurrent callers spread over connections, and over the server's UCX workers), else
  // the least busy one. A client making one call at a time keeps using one connection.
  int PickSlot() {
    absl::MutexLock l(&mu_);
    int best = -1, unopened = -1;
    for (int i = 0; i < static_cast<int>(slots_.size()); ++i) {
      Slot& s = *slots_[i];
      if (!Open(s)) {
        if (unopened < 0) unopened = i;
        continue;
      }
      if (s.busy.load() == 0) return i;
      if (best < 0 || s.busy.load() < slots_[best]->busy.load()) best = i;
    }
    return unopened >= 0 ? unopened : (best >= 0 ? best : 0);
  }

  // Slot i's connection, opening a session and connecting when there is none, it failed,
  // or its session is about to expire.
  absl::StatusOr<std::shared_ptr<UcxConnection>> Connection(int i, absl::Time deadline) {
    absl::MutexLock l(&mu_);
    Slot& slot = *slots_[i];
    if (Open(slot)) return slot.conn;
    slot.conn.reset();
    grpc::ClientContext ctx;
    internal::PrepareContext(&ctx, o_, deadline);
    v1::OpenUcxSessionResponse session;
    grpc::Status s = stub_->OpenUcxSession(&ctx, v1::OpenUcxSessionRequest(), &session);
    if (!s.ok()) return internal::FromGrpc(s);
    UcxConnectionOptions uo;
    uo.get_piece_bytes = o_.ucx_get_piece_bytes;
    absl::StatusOr<std::unique_ptr<UcxConnection>> c = UcxConnection::Connect(
        HostOf(endpoint_), static_cast<uint16_t>(session.ucx_port()), session.session_token(),
        std::max(deadline - absl::Now(), absl::Milliseconds(1)), uo);
    if (!c.ok()) return c.status();
    slot.conn = std::shared_ptr<UcxConnection>(std::move(*c));
    slot.expires = absl::FromUnixMillis(static_cast<int64_t>(session.expires_unix_ms()));
    return slot.conn;
  }

  void Forget(int i, const std::shared_ptr<UcxConnection>& c) {
    absl::MutexLock l(&mu_);
    if (slots_[i]->conn == c) slots_[i]->conn.reset();
  }

  template <typename T, typename Fn>
  absl::StatusOr<T> WithConnection(absl::Time deadline, Fn fn) {
    absl::StatusOr<T> r = absl::UnavailableError("not attempted");
    for (int attempt = 0; attempt < 2; ++attempt) {
      const int i = PickSlot();
      slots_[i]->busy.fetch_add(1);
      absl::Cleanup done = [&] { slots_[i]->busy.fetch_sub(1); };
      absl::StatusOr<std::shared_ptr<UcxConnection>> c = Connection(i, deadline);
      if (!c.ok()) return c.status();
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return absl::DeadlineExceededError("deadline passed");
      r = fn(c->get(), left);
      if (r.ok() || !Retriable(r.status().code())) return r;
      Forget(i, *c);
    }
    return r;
  }

  const std::string endpoint_;
  const TransportOptions o_;
  std::unique_ptr<Transport> grpc_;
  std::unique_ptr<v1::KvTier::Stub> stub_;
  absl::Mutex mu_;  // guards every slot's conn and expires (busy is atomic)
  std::vector<std::unique_ptr<Slot>> slots_;  // o_.ucx_connections, fixed at construction
};

}  // namespace

absl::StatusOr<std::unique_ptr<Transport>> MakeUcxTransport(const std::string& endpoint,
                                                            const TransportOptions& options) {
  absl::StatusOr<std::unique_ptr<Transport>> grpc = MakeGrpcTransport(endpoint, options);
  if (!grpc.ok()) return grpc.status();
  return std::unique_ptr<Transport>(new UcxTransport(endpoint, options, *std::move(grpc)));
}

}  // namespace kvtier::client
