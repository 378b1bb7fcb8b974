// gRPC implementation of client::Transport.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "client/transport.h"
#include "client/transport_internal.h"
#include "kvtier/v1/kvtier.grpc.pb.h"

namespace kvtier::client {
namespace internal {

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& endpoint,
                                           const TransportOptions& o) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(o.max_receive_message_bytes);
  args.SetMaxSendMessageSize(o.max_receive_message_bytes);
  // One connection per Client, not shared process-wide: independent clients (and the
  // benchmark's concurrent clients) get their own TCP connections.
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  // Large payloads: a big initial stream window and frames so a multi-MiB block does not
  // wait on flow-control round trips (each Get/Put is a new stream).
  args.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 20);
  args.SetInt(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, (16 << 20) - 1);
  args.SetInt(GRPC_ARG_HTTP2_WRITE_BUFFER_SIZE, 8 << 20);
  // Reconnect quickly after a server restart. (GRPC_ARG_MIN_RECONNECT_BACKOFF_MS is left at
  // its default: it is also the connect timeout, which must survive a busy server.)
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (o.tls) {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = o.tls_ca_pem;
    ssl.pem_cert_chain = o.tls_cert_pem;
    ssl.pem_private_key = o.tls_key_pem;
    creds = grpc::SslCredentials(ssl);
    if (!o.tls_server_name.empty()) {
      args.SetSslTargetNameOverride(o.tls_server_name);
    }
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  return grpc::CreateCustomChannel(endpoint, creds, args);
}

void PrepareContext(grpc::ClientContext* ctx, const TransportOptions& o, absl::Time deadline) {
  ctx->set_deadline(absl::ToChronoTime(deadline));
  if (!o.token.empty()) ctx->AddMetadata("authorization", absl::StrCat("Bearer ", o.token));
}

absl::Status HealthCheck(const std::shared_ptr<grpc::Channel>& channel, const TransportOptions& o, absl::Time deadline) {
  grpc::GenericStub stub(channel);
  grpc::ClientContext ctx;
  PrepareContext(&ctx, o, deadline);
  // HealthCheckRequest{service: ""} serializes to zero bytes.
  grpc::ByteBuffer request;
  grpc::Slice empty("");
  request = grpc::ByteBuffer(&empty, 1);
  grpc::ByteBuffer response;
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  grpc::Status status;
  stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &response,
                 [&](grpc::Status s) {
                   std::lock_guard<std::mutex> l(mu);
                   status = std::move(s);
                   done = true;
                   cv.notify_one();
                 });
  {
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return done; });
  }
  if (!status.ok()) return FromGrpc(status);
  std::vector<grpc::Slice> slices;
  (void)response.Dump(&slices);
  std::string bytes;
  for (const auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  // HealthCheckResponse{status = 1 (SERVING)} is the two bytes 0x08 0x01.
  if (bytes.size() == 2 && bytes[0] == 0x08 && bytes[1] == 0x01) return absl::OkStatus();
  return absl::UnavailableError("health check: server is not SERVING");
}

}  // namespace internal

namespace {

namespace v1 = ::kvtier::v1;
using internal::FromGrpc;
using internal::PrepareContext;

constexpr size_t kChunkBytes = size_t{4} << 20;

class GrpcTransport final : public Transport {
 public:
  GrpcTransport(std::string endpoint, TransportOptions o)
      : endpoint_(std::move(endpoint)),
        o_(std::move(o)),
        channel_(internal::MakeChannel(endpoint_, o_)),
        stub_(v1::KvTier::NewStub(channel_)) {}

  const std::string& endpoint() const override { return endpoint_; }
  absl::string_view kind() const override { return "grpc"; }

  absl::StatusOr<uint32_t> Lookup(absl::string_view ns, uint32_t part,
                                  absl::Span<const ChainHash> chain, uint32_t block_tokens,
                                  absl::Time deadline) override {
    v1::LookupRequest req;
    req.set_namespace_(std::string(ns));
    req.set_part(part);
    req.set_block_tokens(block_tokens);
    for (const auto& h : chain) req.add_chain_hashes(h.data(), h.size());
    v1::LookupResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(&ctx, o_, deadline);
    grpc::Status s = stub_->Lookup(&ctx, req, &resp);
    if (!s.ok()) return FromGrpc(s);
    if (resp.num_present() > chain.size()) {
      return absl::InternalError(absl::StrCat("server ", endpoint_, " reported ",
                                              resp.num_present(), " present of ", chain.size()));
    }
    return resp.num_present();
  }

  absl::StatusOr<std::vector<PutOutcome>> Put(absl::string_view ns, uint32_t part,
                                              absl::Span<const PutItem> blocks,
                                              absl::Time deadline) override {
    std::vector<PutOutcome> out;
    out.reserve(blocks.size());
    const size_t per_stream = static_cast<size_t>(std::max(1, o_.max_blocks_per_put));
    for (size_t start = 0; start < blocks.size(); start += per_stream) {
      absl::Span<const PutItem> batch = blocks.subspan(start, per_stream);
      absl::Status s = PutStream(ns, part, batch, deadline, &out);
      if (!s.ok()) return s;
    }
    return out;
  }

  absl::StatusOr<std::vector<BlockResult>> Get(absl::string_view ns, uint32_t part,
                                               absl::Span<const ChainHash> chain,
                                               absl::Time deadline) override {
    v1::GetRequest req;
    req.set_namespace_(std::string(ns));
    req.set_part(part);
    for (const auto& h : chain) req.add_chain_hashes(h.data(), h.size());
    grpc::ClientContext ctx;
    PrepareContext(&ctx, o_, deadline);
    std::unique_ptr<grpc::ClientReader<v1::GetResponse>> reader = stub_->Get(&ctx, req);
    std::vector<BlockResult> out(chain.size());
    size_t next = 0;          // index of the block expected next
    bool in_block = false;    // a header arrived, chunks pending
    uint64_t expected = 0;
    v1::GetResponse msg;
    absl::Status protocol;
    while (reader->Read(&msg)) {
      if (msg.index() != next || next >= chain.size()) {
        protocol = absl::DataLossError(absl::StrCat("server ", endpoint_, " sent block ",
                                                    msg.index(), ", expected ", next));
        break;
      }
      BlockResult& r = out[next];
      switch (msg.part_case()) {
        case v1::GetResponse::kMiss:
          if (in_block) {
            protocol = absl::DataLossError("miss marker inside a block");
            break;
          }
          r.hit = false;
          r.status = msg.miss().code() == 0
                         ? absl::OkStatus()
                         : absl::Status(static_cast<absl::StatusCode>(msg.miss().code()),
                                        msg.miss().message());
          ++next;
          break;
        case v1::GetResponse::kHeader:
          if (in_block) {
            protocol = absl::DataLossError("header inside a block");
            break;
          }
          expected = msg.header().payload_bytes();
          if (expected < kernels::kPayloadHeaderBytes || expected > kernels::kMaxPayloadBytes) {
            protocol = absl::DataLossError(absl::StrCat("bad payload_bytes ", expected));
            break;
          }
          r.tier = msg.header().tier() == v1::TIER_MEMORY ? Tier::kMemory
                   : msg.header().tier() == v1::TIER_DISK ? Tier::kDisk
                                                          : Tier::kUnknown;
          r.payload.clear();
          r.payload.reserve(expected);
          in_block = true;
          break;
        case v1::GetResponse::kChunk: {
          const std::string& c = msg.chunk();
          if (!in_block || r.payload.size() + c.size() > expected) {
            protocol = absl::DataLossError("unexpected payload chunk");
            break;
          }
          r.payload.insert(r.payload.end(), c.begin(), c.end());
          if (r.payload.size() == expected) {
            r.hit = true;
            in_block = false;
            ++next;
          }
          break;
        }
        default:
          protocol = absl::DataLossError("empty GetResponse");
      }
      if (!protocol.ok()) break;
    }
    if (!protocol.ok()) {
      ctx.TryCancel();
      (void)reader->Finish();
      return protocol;
    }
    grpc::Status s = reader->Finish();
    if (!s.ok()) return FromGrpc(s);
    if (next != chain.size()) {
      return absl::DataLossError(absl::StrCat("server ", endpoint_, " ended Get after ", next,
                                              " of ", chain.size(), " blocks"));
    }
    return out;
  }

  absl::StatusOr<uint32_t> Delete(absl::string_view ns, uint32_t part,
                                  absl::Span<const ChainHash> chain,
                                  absl::Time deadline) override {
    v1::DeleteRequest req;
    req.set_namespace_(std::string(ns));
    req.set_part(part);
    for (const auto& h : chain) req.add_chain_hashes(h.data(), h.size());
    v1::DeleteResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(&ctx, o_, deadline);
    grpc::Status s = stub_->Delete(&ctx, req, &resp);
    if (!s.ok()) return FromGrpc(s);
    return resp.deleted();
  }

  absl::StatusOr<v1::StatsResponse> Stats(absl::Time deadline) override {
    v1::StatsResponse resp;
    grpc::ClientContext ctx;
    PrepareContext(&ctx, o_, deadline);
    grpc::Status s = stub_->Stats(&ctx, v1::StatsRequest(), &resp);
    if (!s.ok()) return FromGrpc(s);
    return resp;
  }

  absl::Status Health(absl::Time deadline) override {
    return internal::HealthCheck(channel_, o_, deadline);
  }

 private:
  absl::Status PutStream(absl::string_view ns, uint32_t part, absl::Span<const PutItem> blocks,
                         absl::Time deadline, std::vector<PutOutcome>* out) {
    grpc::ClientContext ctx;
    PrepareContext(&ctx, o_, deadline);
    v1::PutResponse resp;
    std::unique_ptr<grpc::ClientWriter<v1::PutRequest>> writer = stub_->Put(&ctx, &resp);
    v1::PutRequest msg;
    bool broken = false;
    for (const PutItem& b : blocks) {
      msg.Clear();
      auto* h = msg.mutable_header();
      h->mutable_key()->set_namespace_(std::string(ns));
      h->mutable_key()->set_chain_hash(b.hash.data(), b.hash.size());
      h->mutable_key()->set_part(part);
      h->set_payload_bytes(b.payload.size());
      if (!writer->Write(msg)) {
        broken = true;
        break;
      }
      for (size_t off = 0; off < b.payload.size(); off += kChunkBytes) {
        const size_t n = std::min(kChunkBytes, b.payload.size() - off);
        msg.Clear();
        msg.set_chunk(b.payload.data() + off, n);
        if (!writer->Write(msg)) {
          broken = true;
          break;
        }
      }
      if (broken) break;
    }
    if (!broken) writer->WritesDone();
    grpc::Status s = writer->Finish();
    if (!s.ok()) return FromGrpc(s);
    if (broken) return absl::UnavailableError("Put stream broke without a status");
    if (static_cast<size_t>(resp.outcomes_size()) != blocks.size()) {
      return absl::InternalError(absl::StrCat("server ", endpoint_, " returned ",
                                              resp.outcomes_size(), " outcomes for ",
                                              blocks.size(), " blocks"));
    }
    for (int o : resp.outcomes()) {
      out->push_back(o == v1::PutResponse::DEDUPLICATED ? PutOutcome::kDeduplicated
                                                        : PutOutcome::kStored);
    }
    return absl::OkStatus();
  }

  const std::string endpoint_;
  const TransportOptions o_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::KvTier::Stub> stub_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Transport>> MakeGrpcTransport(const std::string& endpoint,
                                                             const TransportOptions& options) {
  if (endpoint.empty()) return absl::InvalidArgumentError("empty endpoint");
  return std::unique_ptr<Transport>(new GrpcTransport(endpoint, options));
}

}  // namespace kvtier::client
