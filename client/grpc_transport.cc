// gRPC implementation of client::Transport.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "client/transport.h"
#include "client/transport_internal.h"
#include "kernels/payload.h"
#include "kvtier/v1/kvtier.grpc.pb.h"
#include "proto/kvtier/v1/wire.h"

namespace kvtier::client {
namespace internal {

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

std::shared_ptr<grpc::Channel> MakeChannel(const std::string& endpoint, const TransportOptions& o) {
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

absl::Status HealthCheck(const std::shared_ptr<grpc::Channel>& channel, const TransportOptions& o,
                         absl::Time deadline) {
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
using internal::EvenChunkBytes;
using internal::FromGrpc;
using internal::PrepareContext;

constexpr size_t kChunkBytes = size_t{4} << 20;

// Counts gRPC slices that still reference caller memory (Put payloads sent without a copy).
struct Borrowed {
  absl::Mutex mu;
  int slices ABSL_GUARDED_BY(mu) = 0;
};

void ReleaseBorrowed(void* p) {
  auto* b = static_cast<Borrowed*>(p);
  absl::MutexLock l(&b->mu);
  --b->slices;
}

using v1::wire::AppendVarint;

// One Put stream as a generic call: writes prepared messages in order, half-closes, reads
// the single response. The call's owner blocks in Wait() until OnDone.
class PutCall final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  explicit PutCall(std::vector<grpc::ByteBuffer> msgs) : msgs_(std::move(msgs)) {}
  void Begin() {
    StartRead(&response_);
    if (msgs_.empty()) {
      StartWritesDone();
    } else {
      Write();
    }
    StartCall();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) return;  // the call is failing; OnDone brings its status
    if (++next_ < msgs_.size()) Write();
  }
  void OnReadDone(bool ok) override { got_response_ = ok; }
  void OnDone(const grpc::Status& s) override {
    absl::MutexLock l(&mu_);
    status_ = s;
    done_ = true;
  }
  grpc::Status Wait() {
    absl::MutexLock l(&mu_);
    mu_.Await(absl::Condition(&done_));
    return status_;
  }
  bool got_response() const { return got_response_; }
  grpc::ByteBuffer& response() { return response_; }
  void DropMessages() { msgs_.clear(); }

 private:
  // The last message carries the half-close (one write: the server sees the end of the
  // stream with the last chunk instead of one write round later).
  void Write() {
    if (next_ + 1 < msgs_.size()) {
      StartWrite(&msgs_[next_]);
    } else {
      StartWriteLast(&msgs_[next_], grpc::WriteOptions());
    }
  }

  std::vector<grpc::ByteBuffer> msgs_;
  size_t next_ = 0;
  grpc::ByteBuffer response_;
  bool got_response_ = false;
  absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

using v1::wire::ReadVarint;

// One Get stream as a generic call: sends the request, then assembles the blocks from the
// response messages as they arrive (on gRPC's callback threads), and validates each block
// as it arrives: the body checksum (XXH3-64) is computed chunk by chunk, on bytes just
// copied, while the next chunk is on the way; at the block's last byte the header is
// parsed (kernels::ParseHeader) and the checksum compared, which is exactly
// kernels::ValidatePayload. A block that fails is a DATA_LOSS non-hit without bytes.
class GetCall final : public grpc::ClientBidiReactor<grpc::ByteBuffer, grpc::ByteBuffer> {
 public:
  GetCall(grpc::ClientContext* ctx, const grpc::ByteBuffer* request, size_t n,
          const std::string& endpoint)
      : ctx_(ctx), request_(request), results_(n), endpoint_(endpoint) {}
  GetCall(const GetCall&) = delete;
  GetCall& operator=(const GetCall&) = delete;
  void Begin() {
    StartWrite(request_);
    StartWritesDone();
    StartRead(&msg_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    absl::Status s = Consume();
    if (!s.ok()) {
      protocol_ = s;
      ctx_->TryCancel();
      return;
    }
    StartRead(&msg_);
  }
  void OnDone(const grpc::Status& s) override {
    absl::MutexLock l(&mu_);
    status_ = s;
    done_ = true;
  }
  grpc::Status Wait() {
    absl::MutexLock l(&mu_);
    mu_.Await(absl::Condition(&done_));
    return status_;
  }
  const absl::Status& protocol_error() const { return protocol_; }
  size_t next() const { return next_; }
  std::vector<BlockResult> TakeResults() { return std::move(results_); }

 private:
  absl::Status Consume() {
    std::vector<grpc::Slice> slices;
    if (!msg_.Dump(&slices).ok()) return absl::DataLossError("unreadable GetResponse");
    const size_t total = msg_.Length();
    uint8_t head[24] = {};
    const size_t got = v1::wire::CopyPrefix(slices, head, sizeof(head));
    // Fast path: exactly {index (optional), chunk}.
    size_t pos = 0;
    uint64_t index = 0, len = 0;
    bool fast = true;
    if (pos < got && head[pos] == 0x08) {
      ++pos;
      fast = ReadVarint(head, got, &pos, &index);
    }
    if (fast && pos < got && head[pos] == 0x1A) {
      ++pos;
      if (ReadVarint(head, got, &pos, &len) && pos + len == total) {
        return Chunk(index, slices, pos, len);
      }
    }
    std::string flat;
    for (const auto& sl : slices) flat.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
    v1::GetResponse m;
    if (!m.ParseFromString(flat)) return absl::DataLossError("malformed GetResponse");
    if (m.index() != next_ || next_ >= results_.size()) {
      return absl::DataLossError(
          absl::StrCat("server ", endpoint_, " sent block ", m.index(), ", expected ", next_));
    }
    BlockResult& r = results_[next_];
    switch (m.part_case()) {
      case v1::GetResponse::kMiss:
        if (in_block_) return absl::DataLossError("miss marker inside a block");
        r.hit = false;
        r.status =
            m.miss().code() == 0
                ? absl::OkStatus()
                : absl::Status(static_cast<absl::StatusCode>(m.miss().code()), m.miss().message());
        ++next_;
        return absl::OkStatus();
      case v1::GetResponse::kHeader:
        if (in_block_) return absl::DataLossError("header inside a block");
        expected_ = m.header().payload_bytes();
        if (expected_ < kernels::kPayloadHeaderBytes || expected_ > kernels::kMaxPayloadBytes) {
          return absl::DataLossError(absl::StrCat("bad payload_bytes ", expected_));
        }
        r.tier = m.header().tier() == v1::TIER_MEMORY ? Tier::kMemory
                 : m.header().tier() == v1::TIER_DISK ? Tier::kDisk
                                                      : Tier::kUnknown;
        r.payload.clear();
        r.payload.reserve(expected_);
        in_block_ = true;
        validator_.Reset();
        return absl::OkStatus();
      case v1::GetResponse::kChunk: {
        grpc::Slice one(m.chunk());
        std::vector<grpc::Slice> v = {one};
        return Chunk(m.index(), v, 0, one.size());
      }
      default:
        return absl::DataLossError("empty GetResponse");
    }
  }

  absl::Status Chunk(uint64_t index, const std::vector<grpc::Slice>& slices, size_t offset,
                     size_t n) {
    if (index != next_ || next_ >= results_.size()) {
      return absl::DataLossError(
          absl::StrCat("server ", endpoint_, " sent block ", index, ", expected ", next_));
    }
    BlockResult& r = results_[next_];
    if (!in_block_ || r.payload.size() + n > expected_) {
      return absl::DataLossError("unexpected payload chunk");
    }
    for (const grpc::Slice& sl : slices) {
      if (n == 0) break;
      if (offset >= sl.size()) {
        offset -= sl.size();
        continue;
      }
      const size_t take = std::min(sl.size() - offset, n);
      r.payload.insert(r.payload.end(), sl.begin() + offset, sl.begin() + offset + take);
      n -= take;
      offset = 0;
    }
    validator_.Update(r.payload);  // the body bytes of this chunk, while in cache
    if (r.payload.size() == expected_) {
      const absl::Status valid = validator_.Finish(r.payload);
      if (valid.ok()) {
        r.hit = true;
      } else {
        r.hit = false;
        r.payload.clear();
        r.payload.shrink_to_fit();
        r.status = absl::DataLossError(
            absl::StrCat("received block failed validation: ", valid.message()));
      }
      in_block_ = false;
      ++next_;
    }
    return absl::OkStatus();
  }

  grpc::ClientContext* const ctx_;
  const grpc::ByteBuffer* const request_;
  std::vector<BlockResult> results_;
  const std::string& endpoint_;
  grpc::ByteBuffer msg_;
  size_t next_ = 0;
  bool in_block_ = false;
  uint64_t expected_ = 0;
  kernels::IncrementalValidator validator_;  // the current block's checks, so far
  absl::Status protocol_;
  absl::Mutex mu_;
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
};

class GrpcTransport final : public Transport {
 public:
  GrpcTransport(std::string endpoint, TransportOptions o)
      : endpoint_(std::move(endpoint)),
        o_(std::move(o)),
        channel_(internal::MakeChannel(endpoint_, o_)),
        stub_(v1::KvTier::NewStub(channel_)),
        generic_(channel_) {}

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

  // Get as a generic call: chunk messages are copied once, from the received slices into
  // the block's buffer.
  absl::StatusOr<std::vector<BlockResult>> Get(absl::string_view ns, uint32_t part,
                                               absl::Span<const ChainHash> chain,
                                               absl::Time deadline) override {
    v1::GetRequest req;
    req.set_namespace_(std::string(ns));
    req.set_part(part);
    for (const auto& h : chain) req.add_chain_hashes(h.data(), h.size());
    grpc::Slice rs(req.SerializeAsString());
    grpc::ByteBuffer request(&rs, 1);
    grpc::ClientContext ctx;
    PrepareContext(&ctx, o_, deadline);
    GetCall call(&ctx, &request, chain.size(), endpoint_);
    generic_.PrepareBidiStreamingCall(&ctx, "/kvtier.v1.KvTier/Get", grpc::StubOptions(), &call);
    call.Begin();
    grpc::Status s = call.Wait();
    if (!call.protocol_error().ok()) return call.protocol_error();
    if (!s.ok()) return FromGrpc(s);
    if (call.next() != chain.size()) {
      return absl::DataLossError(absl::StrCat("server ", endpoint_, " ended Get after ",
                                              call.next(), " of ", chain.size(), " blocks"));
    }
    return call.TakeResults();
  }

  absl::StatusOr<uint32_t> Delete(absl::string_view ns, uint32_t part,
                                  absl::Span<const ChainHash> chain, absl::Time deadline) override {
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

  // Get validates every block as it arrives (GetCall).
  bool validates_payloads() const override { return true; }

 private:
  // One Put stream. Payload chunks are sent from the caller's buffers without a copy: each
  // chunk message is a 2-5 byte field prefix plus a slice borrowing the payload, and the
  // call returns only after gRPC has released every borrowed slice.
  absl::Status PutStream(absl::string_view ns, uint32_t part, absl::Span<const PutItem> blocks,
                         absl::Time deadline, std::vector<PutOutcome>* out) {
    Borrowed borrowed;
    std::vector<grpc::ByteBuffer> msgs;
    v1::PutRequest header;
    for (const PutItem& b : blocks) {
      header.Clear();
      auto* h = header.mutable_header();
      h->mutable_key()->set_namespace_(std::string(ns));
      h->mutable_key()->set_chain_hash(b.hash.data(), b.hash.size());
      h->mutable_key()->set_part(part);
      h->set_payload_bytes(b.payload.size());
      grpc::Slice hs(header.SerializeAsString());
      msgs.emplace_back(&hs, 1);
      const size_t chunk = EvenChunkBytes(b.payload.size(), kChunkBytes);
      for (size_t off = 0; off < b.payload.size(); off += chunk) {
        const size_t n = std::min(chunk, b.payload.size() - off);
        std::string prefix;
        prefix.push_back(0x12);  // PutRequest.chunk: field 2, length-delimited
        AppendVarint(n, &prefix);
        {
          absl::MutexLock l(&borrowed.mu);
          ++borrowed.slices;
        }
        grpc::Slice parts[2] = {grpc::Slice(std::move(prefix)),
                                grpc::Slice(const_cast<uint8_t*>(b.payload.data() + off), n,
                                            &ReleaseBorrowed, &borrowed)};
        msgs.emplace_back(parts, 2);
      }
    }
    grpc::Status s;
    bool got_response = false;
    std::string bytes;
    {
      grpc::ClientContext ctx;
      PrepareContext(&ctx, o_, deadline);
      PutCall call(std::move(msgs));
      generic_.PrepareBidiStreamingCall(&ctx, "/kvtier.v1.KvTier/Put", grpc::StubOptions(), &call);
      call.Begin();
      s = call.Wait();
      got_response = call.got_response();
      std::vector<grpc::Slice> slices;
      if (got_response && call.response().Dump(&slices).ok()) {
        for (const auto& sl : slices) {
          bytes.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
        }
      }
      call.DropMessages();
    }  // The call is destroyed with its context: gRPC drops the stream's buffered messages.
    {
      // The payloads are the caller's: wait until no slice references them any more.
      absl::MutexLock l(&borrowed.mu);
      borrowed.mu.Await(absl::Condition(
          +[](Borrowed* b) ABSL_EXCLUSIVE_LOCKS_REQUIRED(b->mu) { return b->slices == 0; },
          &borrowed));
    }
    if (!s.ok()) return FromGrpc(s);
    v1::PutResponse resp;
    if (!got_response || !resp.ParseFromString(bytes)) {
      return absl::InternalError(absl::StrCat("server ", endpoint_, " sent no valid PutResponse"));
    }
    if (static_cast<size_t>(resp.outcomes_size()) != blocks.size()) {
      return absl::InternalError(absl::StrCat("server ", endpoint_, " returned ",
                                              resp.outcomes_size(), " outcomes for ", blocks.size(),
                                              " blocks"));
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
  grpc::GenericStub generic_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Transport>> MakeGrpcTransport(const std::string& endpoint,
                                                             const TransportOptions& options) {
  if (endpoint.empty()) return absl::InvalidArgumentError("empty endpoint");
  return std::unique_ptr<Transport>(new GrpcTransport(endpoint, options));
}

}  // namespace kvtier::client
