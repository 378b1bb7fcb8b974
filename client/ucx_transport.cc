// UCX implementation of client::Transport: a session opened with the authenticated
// OpenUcxSession gRPC call, then Lookup/Put/Get/Delete over a UcxConnection. Stats and
// Health stay on gRPC.
#include <grpcpp/grpcpp.h>

#include "absl/base/thread_annotations.h"
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
        stub_(v1::KvTier::NewStub(internal::MakeChannel(endpoint_, o_))) {}

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
    return WithConnection<std::vector<PutOutcome>>(
        deadline,
        [&](UcxConnection* c, absl::Duration left) -> absl::StatusOr<std::vector<PutOutcome>> {
          // One request per block (the UCX protocol stores single blocks). Requests are
          // sent back to back; a failure stops the batch. Unlike a gRPC Put stream the
          // batch is not all or nothing: blocks before the failure may be stored (Put is
          // idempotent, so a retry stores nothing twice).
          std::vector<PutOutcome> out;
          out.reserve(blocks.size());
          const absl::Time until = absl::Now() + left;
          for (const PutItem& b : blocks) {
            absl::StatusOr<v1::PutResponse::Outcome> r =
                c->Put(ns, b.hash, part, b.payload.data(), b.payload.size(),
                       std::max(until - absl::Now(), absl::Nanoseconds(1)));
            if (!r.ok()) return r.status();
            out.push_back(*r == v1::PutResponse::DEDUPLICATED ? PutOutcome::kDeduplicated
                                                              : PutOutcome::kStored);
          }
          return out;
        });
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
  // The current connection, opening a session and connecting when there is none, it
  // failed, or its session is about to expire.
  absl::StatusOr<std::shared_ptr<UcxConnection>> Connection(absl::Time deadline) {
    absl::MutexLock l(&mu_);
    if (conn_ != nullptr && conn_->connected() && absl::Now() + absl::Seconds(30) < expires_) {
      return conn_;
    }
    conn_.reset();
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
    conn_ = std::shared_ptr<UcxConnection>(std::move(*c));
    expires_ = absl::FromUnixMillis(static_cast<int64_t>(session.expires_unix_ms()));
    return conn_;
  }

  void Forget(const std::shared_ptr<UcxConnection>& c) {
    absl::MutexLock l(&mu_);
    if (conn_ == c) conn_.reset();
  }

  template <typename T, typename Fn>
  absl::StatusOr<T> WithConnection(absl::Time deadline, Fn fn) {
    absl::StatusOr<T> r = absl::UnavailableError("not attempted");
    for (int attempt = 0; attempt < 2; ++attempt) {
      absl::StatusOr<std::shared_ptr<UcxConnection>> c = Connection(deadline);
      if (!c.ok()) return c.status();
      const absl::Duration left = deadline - absl::Now();
      if (left <= absl::ZeroDuration()) return absl::DeadlineExceededError("deadline passed");
      r = fn(c->get(), left);
      if (r.ok() || !Retriable(r.status().code())) return r;
      Forget(*c);
    }
    return r;
  }

  const std::string endpoint_;
  const TransportOptions o_;
  std::unique_ptr<Transport> grpc_;
  std::unique_ptr<v1::KvTier::Stub> stub_;
  absl::Mutex mu_;
  std::shared_ptr<UcxConnection> conn_ ABSL_GUARDED_BY(mu_);
  absl::Time expires_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

absl::StatusOr<std::unique_ptr<Transport>> MakeUcxTransport(const std::string& endpoint,
                                                            const TransportOptions& options) {
  absl::StatusOr<std::unique_ptr<Transport>> grpc = MakeGrpcTransport(endpoint, options);
  if (!grpc.ok()) return grpc.status();
  return std::unique_ptr<Transport>(new UcxTransport(endpoint, options, *std::move(grpc)));
}

}  // namespace kvtier::client
