#include "service/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <httplib.h>
#include <openssl/rand.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/status_macros.h"
#include "kvtier/v1/kvtier.grpc.pb.h"
#include "proto/kvtier/v1/wire.h"
#include "service/auth.h"
#include "service/metrics.h"
#include "service/put_buffers.h"
#ifdef KVTIER_HAVE_UCX_DATA_PLANE
#include "service/ucx/ucx_server.h"
#endif

namespace kvtier::service {

const char* ServerVersion() { return "0.1.0"; }

namespace {

constexpr int kMaxUcxWorkers = 64;

namespace v1 = ::kvtier::v1;
using storage::BlockKey;
using storage::TieredStore;

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

// The metric families of docs/service-contract.md.
struct ServiceMetrics {
  Registry reg;
  NamespaceLabeler ns;
  CounterFamily& lookup_requests =
      reg.AddCounter("kvtier_lookup_requests_total", "Lookup requests", {"namespace", "transport"});
  CounterFamily& lookup_blocks = reg.AddCounter(
      "kvtier_lookup_blocks_total",
      "Blocks looked up: hit = leading blocks present, miss = the rest", {"namespace", "result"});
  CounterFamily& lookup_tokens = reg.AddCounter(
      "kvtier_lookup_tokens_total", "Tokens looked up (block_tokens x blocks), by result",
      {"namespace", "result"});
  CounterFamily& put_blocks =
      reg.AddCounter("kvtier_put_blocks_total", "Blocks received by Put", {"namespace", "result"});
  CounterFamily& get_blocks =
      reg.AddCounter("kvtier_get_blocks_total", "Blocks served by Get", {"tier", "result"});
  GaugeFamily& stored_blocks = reg.AddGauge("kvtier_stored_blocks", "Blocks held", {"tier"});
  GaugeFamily& stored_bytes = reg.AddGauge("kvtier_stored_bytes", "Payload bytes held", {"tier"});
  GaugeFamily& capacity_bytes =
      reg.AddGauge("kvtier_capacity_bytes", "Configured capacity in bytes", {"tier"});
  CounterFamily& evictions = reg.AddCounter("kvtier_evictions_total", "Evicted blocks", {"tier"});
  CounterFamily& dedup_saved = reg.AddCounter("kvtier_dedup_saved_bytes_total",
                                              "Bytes not stored again thanks to dedup", {});
  CounterFamily& corrupt_dropped = reg.AddCounter("kvtier_corrupt_blocks_dropped_total",
                                                  "Stored blocks that failed validation", {});
  CounterFamily& requests =
      reg.AddCounter("kvtier_requests_total", "Finished requests by gRPC status code name",
                     {"method", "transport", "code"});
  HistogramFamily& duration =
      reg.AddHistogram("kvtier_request_duration_seconds", "Request latency in seconds",
                       {"method", "transport"}, DefaultLatencyBuckets());
  CounterFamily& transfer_bytes = reg.AddCounter("kvtier_transfer_bytes_total",
                                                 "Payload bytes moved", {"transport", "direction"});
  GaugeFamily& inflight =
      reg.AddGauge("kvtier_inflight_requests", "Requests being served", {"transport"});
  CounterFamily& put_buffers = reg.AddCounter(
      "kvtier_put_buffers_total",
      "Put payload buffers by source: prepared ahead (no page faults on receipt) or allocated",
      {"transport", "source"});
  GaugeFamily& ucx_worker_connections =
      reg.AddGauge("kvtier_ucx_worker_connections",
                   "UCX client endpoints connected, per UCX worker", {"worker"});
  CounterFamily& ucx_worker_requests = reg.AddCounter(
      "kvtier_ucx_worker_requests_total", "UCX requests received, per UCX worker", {"worker"});
  GaugeFamily& build_info = reg.AddGauge("kvtier_build_info", "Build information", {"version"});

  void OnRequest(absl::string_view method, absl::string_view transport, absl::StatusCode code,
                 double seconds, uint64_t bytes_in, uint64_t bytes_out) {
    const std::string code_name = absl::StatusCodeToString(code);
    requests.Add({method, transport, code_name});
    duration.Observe({method, transport}, seconds);
    if (bytes_in) transfer_bytes.Add({transport, "in"}, static_cast<double>(bytes_in));
    if (bytes_out) transfer_bytes.Add({transport, "out"}, static_cast<double>(bytes_out));
  }

  void CountLookup(absl::string_view ns_name, absl::string_view transport, size_t chain_len,
                   size_t hit, uint32_t block_tokens) {
    const std::string label = ns.Label(ns_name);
    lookup_requests.Add({label, transport});
    lookup_blocks.Add({label, "hit"}, static_cast<double>(hit));
    lookup_blocks.Add({label, "miss"}, static_cast<double>(chain_len - hit));
    if (block_tokens > 0) {
      lookup_tokens.Add({label, "hit"}, static_cast<double>(hit) * block_tokens);
      lookup_tokens.Add({label, "miss"}, static_cast<double>(chain_len - hit) * block_tokens);
    }
  }
};

// UCX session tokens: 32 random bytes bound to the caller's grant, with an expiry.
class UcxSessions {
 public:
  absl::StatusOr<std::string> Mint(const Grant& grant, absl::Time expires) {
    std::string token(32, '\0');
    if (RAND_bytes(reinterpret_cast<unsigned char*>(token.data()), 32) != 1) {
      return absl::InternalError("RAND_bytes failed");
    }
    absl::MutexLock l(&mu_);
    // Drop expired sessions while we hold the lock; the table stays small.
    const absl::Time now = absl::Now();
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      if (it->second.expires <= now) {
        sessions_.erase(it++);
      } else {
        ++it;
      }
    }
    sessions_[token] = Session{grant, expires};
    return token;
  }
  absl::Status Authorize(absl::string_view token, absl::string_view ns, bool write) {
    absl::MutexLock l(&mu_);
    auto it = sessions_.find(token);
    if (it == sessions_.end()) return absl::UnauthenticatedError("unknown UCX session token");
    if (it->second.expires <= absl::Now()) {
      sessions_.erase(it);
      return absl::UnauthenticatedError("UCX session expired");
    }
    return it->second.grant.Check(ns, write);
  }

 private:
  struct Session {
    Grant grant;
    absl::Time expires;
  };
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, Session> sessions_ ABSL_GUARDED_BY(mu_);
};

// Everything the reactors share. Constant after construction except the atomics and the
// internally synchronized members.
struct State {
  std::unique_ptr<TieredStore> store;
  std::unique_ptr<Authorizer> auth;
  ServiceMetrics metrics;
  UcxSessions sessions;
  Limits limits;
  int max_streams = 1024;
  std::vector<int> ucx_ports;                // one per UCX worker; set before gRPC starts
  std::atomic<uint64_t> next_ucx_worker{0};  // OpenUcxSession hands out workers in turn
  absl::Duration session_ttl = absl::Hours(1);
  std::atomic<int> streams{0};
  std::atomic<int> inflight{0};  // requests between RequestScope start and Done
  std::atomic<bool> draining{false};
  absl::Time start_time = absl::Now();
  // Put payload buffers prepared ahead and recycled, shared by the gRPC and UCX Put paths
  // (set before either starts); gRPC's takes from it, by outcome.
  std::unique_ptr<PutBuffers> put_buffers;
  std::atomic<uint64_t> grpc_put_buffers_ready{0};
  std::atomic<uint64_t> grpc_put_buffers_not_ready{0};
};

absl::StatusOr<Grant> Authenticate(State* st, grpc::CallbackServerContext* ctx) {
  // Every request authenticates first, so this is also where a draining server turns new
  // requests away (clients retry UNAVAILABLE elsewhere or later).
  if (st->draining) return absl::UnavailableError("server is draining");
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  absl::string_view value;
  if (it != md.end()) value = absl::string_view(it->second.data(), it->second.size());
  return st->auth->Authenticate(value);
}

// Measures one gRPC request for kvtier_requests_total, the latency histogram, inflight and
// transfer bytes.
class RequestScope {
 public:
  RequestScope(State* st, const char* method) : st_(st), method_(method), start_(absl::Now()) {
    st_->inflight.fetch_add(1);
    st_->metrics.inflight.Add({"grpc"}, 1);
  }
  void Done(absl::StatusCode code) {
    if (done_) return;
    done_ = true;
    st_->inflight.fetch_sub(1);
    st_->metrics.inflight.Add({"grpc"}, -1);
    st_->metrics.OnRequest(method_, "grpc", code, absl::ToDoubleSeconds(absl::Now() - start_),
                           bytes_in, bytes_out);
  }
  ~RequestScope() { Done(absl::StatusCode::kCancelled); }
  uint64_t bytes_in = 0;
  uint64_t bytes_out = 0;

 private:
  State* st_;
  const char* method_;
  absl::Time start_;
  bool done_ = false;
};

BlockKey MakeKey(absl::string_view ns, const kernels::ChainHash& h, uint32_t part) {
  BlockKey k;
  k.ns = std::string(ns);
  k.chain = h;
  k.part = part;
  return k;
}

// ---------------------------------------------------------------------------------------
// Wire helpers. Put and Get are registered as raw methods (grpc::ByteBuffer) so that payload
// bytes are copied once between the socket buffers and the stored block: a Put chunk goes
// from the received slices straight into the block buffer, and a Get chunk is sent from the
// stored payload itself (a slice that holds a reference to it). Everything else is parsed
// and serialized as ordinary protobuf messages.

// Appends the bytes [offset, offset + n) of `slices` to `pieces` (no copy).
void SlicePieces(const std::vector<grpc::Slice>& slices, size_t offset, size_t n,
                 std::vector<absl::Span<const uint8_t>>* pieces) {
  for (const grpc::Slice& sl : slices) {
    if (n == 0) break;
    if (offset >= sl.size()) {
      offset -= sl.size();
      continue;
    }
    const size_t take = std::min(sl.size() - offset, n);
    pieces->emplace_back(sl.begin() + offset, take);
    n -= take;
    offset = 0;
  }
}

std::string Flatten(const std::vector<grpc::Slice>& slices) {
  std::string out;
  for (const grpc::Slice& sl : slices)
    out.append(reinterpret_cast<const char*>(sl.begin()), sl.size());
  return out;
}

using v1::wire::ReadVarint;

using v1::wire::AppendVarint;

grpc::ByteBuffer ToByteBuffer(const google::protobuf::MessageLite& m) {
  std::string bytes = m.SerializeAsString();
  grpc::Slice slice(std::move(bytes));
  return grpc::ByteBuffer(&slice, 1);
}

void ReleasePayload(void* holder) { delete static_cast<storage::Payload*>(holder); }

// ---------------------------------------------------------------------------------------
// Put: a client stream of header, chunk..., header, chunk...; headers checked as blocks complete,
// committed on half-close, all or nothing.
class PutReactor : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  PutReactor(State* st, grpc::CallbackServerContext* ctx, grpc::ByteBuffer* resp)
      : st_(st), resp_(resp), scope_(st, "Put") {
    if (st_->streams.fetch_add(1) >= st_->max_streams) {
      Fail(absl::ResourceExhaustedError(
          absl::StrCat("too many concurrent streams (limit ", st_->max_streams, ")")));
      return;
    }
    absl::StatusOr<Grant> g = Authenticate(st_, ctx);
    if (!g.ok()) {
      Fail(g.status());
      return;
    }
    grant_ = *std::move(g);
    StartRead(&req_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      Commit();
      return;
    }
    absl::Status s = Consume();
    if (!s.ok()) {
      Fail(s);
      return;
    }
    StartRead(&req_);
  }

  void OnDone() override {
    st_->streams.fetch_sub(1);
    delete this;
  }

 private:
  struct Block {
    BlockKey key;
    uint64_t payload_bytes = 0;
    uint64_t received = 0;
    // Exactly payload_bytes, when a prepared buffer of that size was ready (no page faults
    // of fresh memory while copying); otherwise `data` grows with the chunks.
    std::shared_ptr<std::vector<uint8_t>> prepared;
    std::vector<uint8_t> data;
    bool complete() const { return received == payload_bytes; }
    const uint8_t* bytes() const { return prepared ? prepared->data() : data.data(); }
    absl::Span<const uint8_t> view() const {
      return absl::Span<const uint8_t>(bytes(), static_cast<size_t>(received));
    }
  };

  absl::Status Consume() {
    std::vector<grpc::Slice> slices;
    if (!req_.Dump(&slices).ok()) return absl::InvalidArgumentError("unreadable PutRequest");
    const size_t total = req_.Length();
    // Fast path: a message that is exactly one `chunk` field (tag 0x12, length, bytes).
    uint8_t head[11] = {};
    const size_t got = v1::wire::CopyPrefix(slices, head, sizeof(head));
    if (got > 0 && head[0] == 0x12) {
      size_t pos = 1;
      uint64_t len = 0;
      if (ReadVarint(head, got, &pos, &len) && pos + len == total) {
        std::vector<absl::Span<const uint8_t>> pieces;
        SlicePieces(slices, pos, len, &pieces);
        return OnChunk(pieces, len);
      }
    }
    v1::PutRequest msg;
    if (!msg.ParseFromString(Flatten(slices))) {
      return absl::InvalidArgumentError("malformed PutRequest message");
    }
    switch (msg.part_case()) {
      case v1::PutRequest::kHeader:
        return OnHeader(msg.header());
      case v1::PutRequest::kChunk: {
        const std::string& c = msg.chunk();
        std::vector<absl::Span<const uint8_t>> pieces = {
            absl::Span<const uint8_t>(reinterpret_cast<const uint8_t*>(c.data()), c.size())};
        return OnChunk(pieces, c.size());
      }
      default:
        return absl::InvalidArgumentError("PutRequest has neither header nor chunk");
    }
  }

  absl::Status OnHeader(const v1::PutBlockHeader& h) {
    const size_t index = blocks_.size();
    if (!blocks_.empty() && !blocks_.back().complete()) {
      return absl::InvalidArgumentError(
          absl::StrCat("header of block ", index, " arrived before block ", index - 1,
                       "'s payload was complete (", blocks_.back().received, " of ",
                       blocks_.back().payload_bytes, " bytes)"));
    }
    if (index >= st_->limits.max_blocks_per_put) {
      return absl::InvalidArgumentError(
          absl::StrCat("Put stream has more than ", st_->limits.max_blocks_per_put, " blocks"));
    }
    KVTIER_RETURN_IF_ERROR(ValidateNamespace(h.key().namespace_()));
    KVTIER_ASSIGN_OR_RETURN(
        kernels::ChainHash hash,
        ParseHash(h.key().chain_hash(), absl::StrCat("block ", index, " key.chain_hash")));
    if (h.payload_bytes() < kernels::kPayloadHeaderBytes ||
        h.payload_bytes() > kernels::kMaxPayloadBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("block ", index, " payload_bytes ", h.payload_bytes(), " outside [",
                       kernels::kPayloadHeaderBytes, ", ", kernels::kMaxPayloadBytes, "]"));
    }
    if (buffered_ + h.payload_bytes() > st_->limits.max_put_stream_bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("Put stream exceeds ", st_->limits.max_put_stream_bytes,
                       " payload bytes; split it into several streams"));
    }
    KVTIER_RETURN_IF_ERROR(grant_.Check(h.key().namespace_(), /*write=*/true));
    Block b;
    b.key = MakeKey(h.key().namespace_(), hash, h.key().part());
    b.payload_bytes = h.payload_bytes();
    // A prepared buffer only if one is ready (TakeReady never allocates). Otherwise reserve
    // at most 16 MiB on the declared size; beyond that the buffer grows with the chunks
    // actually received (a hostile header cannot make the server commit memory).
    if (st_->put_buffers != nullptr) {
      b.prepared = st_->put_buffers->TakeReady(h.payload_bytes());
      (b.prepared != nullptr ? st_->grpc_put_buffers_ready : st_->grpc_put_buffers_not_ready)
          .fetch_add(1, std::memory_order_relaxed);
    }
    if (b.prepared == nullptr) {
      b.data.reserve(std::min<uint64_t>(h.payload_bytes(), uint64_t{16} << 20));
    }
    buffered_ += h.payload_bytes();
    blocks_.push_back(std::move(b));
    return absl::OkStatus();
  }

  absl::Status OnChunk(const std::vector<absl::Span<const uint8_t>>& pieces, size_t chunk_size) {
    if (blocks_.empty()) return absl::InvalidArgumentError("payload chunk before any header");
    Block& b = blocks_.back();
    const size_t index = blocks_.size() - 1;
    if (b.complete()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "payload chunk after block ", index, " was complete (", b.payload_bytes, " bytes)"));
    }
    if (chunk_size == 0 || chunk_size > kMaxChunkBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunk of ", chunk_size, " bytes; chunks are 1 byte .. 4 MiB"));
    }
    if (chunk_size > b.payload_bytes - b.received) {
      return absl::InvalidArgumentError(
          absl::StrCat("chunks of block ", index, " exceed its payload_bytes ", b.payload_bytes));
    }
    const size_t before = b.received;
    if (b.prepared != nullptr) {
      uint8_t* out = b.prepared->data() + before;
      for (const auto& piece : pieces) {
        std::memcpy(out, piece.data(), piece.size());
        out += piece.size();
      }
    } else {
      if (b.data.capacity() < before + chunk_size) {
        b.data.reserve(std::min<uint64_t>(
            b.payload_bytes, std::max<uint64_t>(2 * b.data.capacity(), before + chunk_size)));
      }
      for (const auto& piece : pieces) b.data.insert(b.data.end(), piece.begin(), piece.end());
    }
    b.received += chunk_size;
    scope_.bytes_in += chunk_size;
    if (before < kernels::kPayloadHeaderBytes && b.received >= kernels::kPayloadHeaderBytes) {
      // Early check of the payload header against the declared size: a mismatch is
      // rejected before the rest of the body is buffered.
      uint32_t magic;
      uint64_t body_bytes;
      std::memcpy(&magic, b.bytes(), 4);
      std::memcpy(&body_bytes, b.bytes() + 36, 8);
      if (magic != kernels::kPayloadMagic) {
        return absl::InvalidArgumentError(
            absl::StrCat("block ", index, ": invalid block payload: bad magic"));
      }
      if (body_bytes > kernels::kMaxPayloadBytes ||
          body_bytes + kernels::kPayloadHeaderBytes != b.payload_bytes) {
        return absl::InvalidArgumentError(absl::StrCat(
            "block ", index, ": payload header says ", body_bytes + kernels::kPayloadHeaderBytes,
            " bytes, PutBlockHeader says ", b.payload_bytes));
      }
    }
    if (b.complete()) {
      // The header (sizes, preset, header checksum) here, so a bad block fails the stream
      // at once; the body checksum is verified by TieredStore::Put at commit (its contract:
      // every payload validated, nothing changed on failure), so each payload is hashed
      // once, not twice. A failing block still stores nothing of the stream (all or
      // nothing, Commit).
      absl::StatusOr<kernels::PayloadHeader> v = kernels::ParseHeader(b.view());
      if (!v.ok()) {
        return absl::Status(v.status().code(),
                            absl::StrCat("block ", index, ": ", v.status().message()));
      }
    }
    return absl::OkStatus();
  }

  void Commit() {
    if (!blocks_.empty() && !blocks_.back().complete()) {
      const Block& b = blocks_.back();
      Fail(absl::InvalidArgumentError(absl::StrCat("stream ended inside block ", blocks_.size() - 1,
                                                   " (", b.received, " of ", b.payload_bytes,
                                                   " bytes)")));
      return;
    }
    std::vector<storage::PutOutcome> outcomes;
    for (size_t i = 0; i < blocks_.size(); ++i) {
      Block& b = blocks_[i];
      storage::Payload payload =
          b.prepared != nullptr ? storage::Payload(std::move(b.prepared))
                                : std::make_shared<const std::vector<uint8_t>>(std::move(b.data));
      absl::StatusOr<storage::PutOutcome> r = st_->store->Put(b.key, std::move(payload));
      if (!r.ok()) {
        // All or nothing: undo the blocks this stream stored.
        std::vector<BlockKey> undo;
        for (size_t j = 0; j < outcomes.size(); ++j) {
          if (outcomes[j] == storage::PutOutcome::kStored) undo.push_back(blocks_[j].key);
        }
        if (!undo.empty()) (void)st_->store->Delete(undo);
        Fail(
            absl::Status(r.status().code(), absl::StrCat("block ", i, ": ", r.status().message())));
        return;
      }
      outcomes.push_back(*r);
    }
    v1::PutResponse resp;
    for (size_t i = 0; i < blocks_.size(); ++i) {
      const bool stored = outcomes[i] == storage::PutOutcome::kStored;
      resp.add_outcomes(stored ? v1::PutResponse::STORED : v1::PutResponse::DEDUPLICATED);
      st_->metrics.put_blocks.Add(
          {st_->metrics.ns.Label(blocks_[i].key.ns), stored ? "stored" : "deduplicated"});
    }
    *resp_ = ToByteBuffer(resp);
    blocks_.clear();
    scope_.Done(absl::StatusCode::kOk);
    Finish(grpc::Status::OK);
  }

  void Fail(const absl::Status& s) {
    for (const Block& b : blocks_) {
      st_->metrics.put_blocks.Add({st_->metrics.ns.Label(b.key.ns), "rejected"});
    }
    blocks_.clear();
    scope_.Done(s.code());
    Finish(ToGrpc(s));
  }

  State* const st_;
  grpc::ByteBuffer* const resp_;
  RequestScope scope_;
  Grant grant_;
  grpc::ByteBuffer req_;
  std::vector<Block> blocks_;
  uint64_t buffered_ = 0;
};

// ---------------------------------------------------------------------------------------
// Get: validated request, then every block in request order: a miss message, or a header
// and chunks of at most 4 MiB.
class GetReactor : public grpc::ServerWriteReactor<grpc::ByteBuffer> {
 public:
  GetReactor(State* st, grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* req)
      : st_(st), scope_(st, "Get") {
    chunk_bytes_ = std::min<uint64_t>(kGetChunkBytes, st_->limits.max_message_bytes > 4096
                                                          ? st_->limits.max_message_bytes - 1024
                                                          : 3072);
    if (st_->streams.fetch_add(1) >= st_->max_streams) {
      Fail(absl::ResourceExhaustedError(
          absl::StrCat("too many concurrent streams (limit ", st_->max_streams, ")")));
      return;
    }
    absl::Status s = Prepare(ctx, req);
    if (!s.ok()) {
      Fail(s);
      return;
    }
    Next();
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      // The client went away; nothing more can be sent.
      scope_.Done(absl::StatusCode::kCancelled);
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client stream closed"));
      return;
    }
    Next();
  }

  void OnDone() override {
    st_->streams.fetch_sub(1);
    delete this;
  }

 private:
  absl::Status Prepare(grpc::CallbackServerContext* ctx, const grpc::ByteBuffer* raw) {
    KVTIER_ASSIGN_OR_RETURN(Grant g, Authenticate(st_, ctx));
    std::vector<grpc::Slice> slices;
    v1::GetRequest req;
    if (!raw->Dump(&slices).ok() || !req.ParseFromString(Flatten(slices))) {
      return absl::InvalidArgumentError("malformed GetRequest message");
    }
    KVTIER_RETURN_IF_ERROR(ValidateNamespace(req.namespace_()));
    KVTIER_ASSIGN_OR_RETURN(std::vector<kernels::ChainHash> chain,
                            ParseChain(req.chain_hashes(), st_->limits.max_chain_length));
    KVTIER_RETURN_IF_ERROR(g.Check(req.namespace_(), /*write=*/false));
    std::vector<BlockKey> keys;
    keys.reserve(chain.size());
    for (const auto& h : chain) keys.push_back(MakeKey(req.namespace_(), h, req.part()));
    results_ = st_->store->Get(keys);
    return absl::OkStatus();
  }

  void Next() {
    while (index_ < results_.size()) {
      absl::StatusOr<storage::Lease>& r = results_[index_];
      v1::GetResponse m;
      m.set_index(static_cast<uint32_t>(index_));
      if (!r.ok() || !*r) {
        auto* miss = m.mutable_miss();
        if (!r.ok()) {
          miss->set_code(static_cast<int32_t>(r.status().code()));
          miss->set_message(std::string(r.status().message()));
          st_->metrics.get_blocks.Add({"none", "error"});
        } else {
          st_->metrics.get_blocks.Add({"none", "miss"});
        }
        ++index_;
        msg_ = ToByteBuffer(m);
        Write();
        return;
      }
      const storage::Lease& lease = *r;
      const std::vector<uint8_t>& bytes = *lease.payload;
      if (!header_sent_) {
        header_sent_ = true;
        offset_ = 0;
        auto* h = m.mutable_header();
        h->set_payload_bytes(bytes.size());
        h->set_tier(lease.tier == storage::Tier::kMemory ? v1::TIER_MEMORY : v1::TIER_DISK);
        st_->metrics.get_blocks.Add(
            {lease.tier == storage::Tier::kMemory ? "memory" : "disk", "hit"});
        msg_ = ToByteBuffer(m);
        StartWrite(&msg_);
        return;
      }
      // GetResponse{index, chunk}: the field prefix, then the stored bytes themselves; the
      // slice keeps a reference to the payload until gRPC has sent it.
      const size_t n =
          std::min<size_t>(EvenChunkBytes(bytes.size(), chunk_bytes_), bytes.size() - offset_);
      std::string prefix;
      prefix.push_back(0x08);  // field 1 (index), varint
      AppendVarint(index_, &prefix);
      prefix.push_back(0x1A);  // field 3 (chunk), length-delimited
      AppendVarint(n, &prefix);
      grpc::Slice parts[2] = {grpc::Slice(std::move(prefix)),
                              grpc::Slice(const_cast<uint8_t*>(bytes.data() + offset_), n,
                                          &ReleasePayload, new storage::Payload(lease.payload))};
      msg_ = grpc::ByteBuffer(parts, 2);
      offset_ += n;
      scope_.bytes_out += n;
      if (offset_ == bytes.size()) {
        header_sent_ = false;
        r = storage::Lease{};  // the slice still holds the payload until it is sent
        ++index_;
      }
      Write();
      return;
    }
    scope_.Done(absl::StatusCode::kOk);
    Finish(grpc::Status::OK);
  }

  // Writes msg_; the stream's last message goes out together with the OK status (one
  // write: the trailers follow the data instead of waiting for the data's write to
  // complete, which for a multi-MiB chunk is when the client has read most of it).
  void Write() {
    if (index_ < results_.size()) {
      StartWrite(&msg_);
      return;
    }
    scope_.Done(absl::StatusCode::kOk);
    StartWriteAndFinish(&msg_, grpc::WriteOptions(), grpc::Status::OK);
  }

  void Fail(const absl::Status& s) {
    scope_.Done(s.code());
    Finish(ToGrpc(s));
  }

  State* const st_;
  RequestScope scope_;
  uint64_t chunk_bytes_;
  std::vector<absl::StatusOr<storage::Lease>> results_;
  size_t index_ = 0;
  bool header_sent_ = false;
  size_t offset_ = 0;
  grpc::ByteBuffer msg_;
};

// Lookup, Delete, Stats, OpenUcxSession as protobuf callback methods; Put and Get raw.
using KvTierCallbackBase = v1::KvTier::WithCallbackMethod_Lookup<
    v1::KvTier::WithRawCallbackMethod_Put<v1::KvTier::WithRawCallbackMethod_Get<
        v1::KvTier::WithCallbackMethod_Delete<v1::KvTier::WithCallbackMethod_Stats<
            v1::KvTier::WithCallbackMethod_OpenUcxSession<v1::KvTier::Service>>>>>>;

class KvTierService final : public KvTierCallbackBase {
 public:
  explicit KvTierService(State* st) : st_(st) {}

  grpc::ServerUnaryReactor* Lookup(grpc::CallbackServerContext* ctx, const v1::LookupRequest* req,
                                   v1::LookupResponse* resp) override {
    RequestScope scope(st_, "Lookup");
    absl::Status s = DoLookup(ctx, *req, resp);
    return Reply(ctx, &scope, s);
  }

  grpc::ServerReadReactor<grpc::ByteBuffer>* Put(grpc::CallbackServerContext* ctx,
                                                 grpc::ByteBuffer* resp) override {
    return new PutReactor(st_, ctx, resp);
  }

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Get(grpc::CallbackServerContext* ctx,
                                                  const grpc::ByteBuffer* req) override {
    return new GetReactor(st_, ctx, req);
  }

  grpc::ServerUnaryReactor* Delete(grpc::CallbackServerContext* ctx, const v1::DeleteRequest* req,
                                   v1::DeleteResponse* resp) override {
    RequestScope scope(st_, "Delete");
    absl::Status s = DoDelete(ctx, *req, resp);
    return Reply(ctx, &scope, s);
  }

  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* ctx, const v1::StatsRequest*,
                                  v1::StatsResponse* resp) override {
    RequestScope scope(st_, "Stats");
    absl::Status s = DoStats(ctx, resp);
    return Reply(ctx, &scope, s);
  }

  grpc::ServerUnaryReactor* OpenUcxSession(grpc::CallbackServerContext* ctx,
                                           const v1::OpenUcxSessionRequest*,
                                           v1::OpenUcxSessionResponse* resp) override {
    RequestScope scope(st_, "OpenUcxSession");
    absl::Status s = DoOpenUcxSession(ctx, resp);
    return Reply(ctx, &scope, s);
  }

 private:
  grpc::ServerUnaryReactor* Reply(grpc::CallbackServerContext* ctx, RequestScope* scope,
                                  const absl::Status& s) {
    scope->Done(s.code());
    grpc::ServerUnaryReactor* r = ctx->DefaultReactor();
    r->Finish(ToGrpc(s));
    return r;
  }

  absl::Status DoLookup(grpc::CallbackServerContext* ctx, const v1::LookupRequest& req,
                        v1::LookupResponse* resp) {
    KVTIER_ASSIGN_OR_RETURN(Grant g, Authenticate(st_, ctx));
    KVTIER_RETURN_IF_ERROR(ValidateNamespace(req.namespace_()));
    KVTIER_ASSIGN_OR_RETURN(std::vector<kernels::ChainHash> chain,
                            ParseChain(req.chain_hashes(), st_->limits.max_chain_length));
    KVTIER_RETURN_IF_ERROR(g.Check(req.namespace_(), /*write=*/false));
    const size_t n = st_->store->Lookup(req.namespace_(), chain, req.part());
    resp->set_num_present(static_cast<uint32_t>(n));
    st_->metrics.CountLookup(req.namespace_(), "grpc", chain.size(), n, req.block_tokens());
    return absl::OkStatus();
  }

  absl::Status DoDelete(grpc::CallbackServerContext* ctx, const v1::DeleteRequest& req,
                        v1::DeleteResponse* resp) {
    KVTIER_ASSIGN_OR_RETURN(Grant g, Authenticate(st_, ctx));
    KVTIER_RETURN_IF_ERROR(ValidateNamespace(req.namespace_()));
    KVTIER_ASSIGN_OR_RETURN(std::vector<kernels::ChainHash> chain,
                            ParseChain(req.chain_hashes(), st_->limits.max_chain_length));
    KVTIER_RETURN_IF_ERROR(g.Check(req.namespace_(), /*write=*/true));
    std::vector<BlockKey> keys;
    for (const auto& h : chain) keys.push_back(MakeKey(req.namespace_(), h, req.part()));
    KVTIER_ASSIGN_OR_RETURN(size_t n, st_->store->Delete(keys));
    resp->set_deleted(static_cast<uint32_t>(n));
    return absl::OkStatus();
  }

  absl::Status DoStats(grpc::CallbackServerContext* ctx, v1::StatsResponse* resp) {
    KVTIER_ASSIGN_OR_RETURN(Grant g, Authenticate(st_, ctx));
    (void)g;
    const storage::StoreStats s = st_->store->Stats();
    auto fill = [](const storage::TierStats& t, v1::TierStats* out) {
      out->set_blocks(t.blocks);
      out->set_bytes(t.bytes);
      out->set_capacity_bytes(t.capacity_bytes);
      out->set_hits(t.hits);
      out->set_misses(t.misses);
      out->set_evictions(t.evictions);
    };
    fill(s.memory, resp->mutable_memory());
    fill(s.disk, resp->mutable_disk());
    resp->set_puts_stored(s.puts_stored);
    resp->set_puts_deduplicated(s.puts_deduplicated);
    resp->set_puts_rejected(s.puts_rejected);
    resp->set_dedup_bytes_saved(s.dedup_bytes_saved);
    resp->set_corrupt_dropped(s.corrupt_dropped);
    resp->set_server_version(ServerVersion());
    resp->set_uptime_seconds(
        static_cast<uint64_t>(absl::ToInt64Seconds(absl::Now() - st_->start_time)));
    return absl::OkStatus();
  }

  absl::Status DoOpenUcxSession(grpc::CallbackServerContext* ctx,
                                v1::OpenUcxSessionResponse* resp) {
    KVTIER_ASSIGN_OR_RETURN(Grant g, Authenticate(st_, ctx));
    if (st_->ucx_ports.empty()) {
      return absl::FailedPreconditionError("the UCX data plane is disabled on this server");
    }
    const absl::Time expires = absl::Now() + st_->session_ttl;
    KVTIER_ASSIGN_OR_RETURN(std::string token, st_->sessions.Mint(g, expires));
    resp->set_session_token(token);
    // A session is valid on every worker; the port only spreads the connections.
    const uint64_t worker = st_->next_ucx_worker.fetch_add(1, std::memory_order_relaxed);
    resp->set_ucx_port(static_cast<uint32_t>(st_->ucx_ports[worker % st_->ucx_ports.size()]));
    resp->set_expires_unix_ms(static_cast<uint64_t>(absl::ToUnixMillis(expires)));
    return absl::OkStatus();
  }

  State* const st_;
};

absl::StatusOr<std::string> ReadFile(const std::string& path, absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::InvalidArgumentError(absl::StrCat("cannot read ", what, " ", path));
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class ServerImpl final : public Server {
 public:
  ~ServerImpl() override {
    if (!drained_) (void)Drain(absl::ZeroDuration());
  }

  absl::Status Init(const ServerOptions& o) {
    st_.limits = o.limits;
    st_.max_streams = o.max_concurrent_streams;
    st_.session_ttl = o.ucx_session_ttl;
    st_.metrics.build_info.Set({ServerVersion()}, 1);
    if (o.token_file.empty()) {
      st_.auth = Authorizer::AllowAll();
    } else {
      KVTIER_ASSIGN_OR_RETURN(st_.auth, Authorizer::FromFile(o.token_file));
    }
    std::shared_ptr<grpc::ServerCredentials> creds;
    if (!o.tls_cert.empty() || !o.tls_key.empty()) {
      if (o.tls_cert.empty() || o.tls_key.empty()) {
        return absl::InvalidArgumentError("--tls_cert and --tls_key must be set together");
      }
      grpc::SslServerCredentialsOptions ssl;
      KVTIER_ASSIGN_OR_RETURN(std::string cert, ReadFile(o.tls_cert, "TLS certificate"));
      KVTIER_ASSIGN_OR_RETURN(std::string key, ReadFile(o.tls_key, "TLS key"));
      ssl.pem_key_cert_pairs.push_back({key, cert});
      if (!o.tls_client_ca.empty()) {
        KVTIER_ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadFile(o.tls_client_ca, "client CA"));
        ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
      }
      creds = grpc::SslServerCredentials(ssl);
    } else {
      if (!o.tls_client_ca.empty()) {
        return absl::InvalidArgumentError("--tls_client_ca needs --tls_cert and --tls_key");
      }
      creds = grpc::InsecureServerCredentials();
    }
    if (o.ready_put_buffers < 0) {
      return absl::InvalidArgumentError("ready_put_buffers must not be negative");
    }
    PutBuffers::Options bo;
    bo.ready = o.ready_put_buffers;
    st_.put_buffers = std::make_unique<PutBuffers>(bo);
    KVTIER_ASSIGN_OR_RETURN(st_.store, storage::TieredStore::Open(o.store));
    memory_capacity_ = o.store.memory_capacity_bytes;
    disk_capacity_ = o.store.disk_path.empty() ? 0 : o.store.disk_capacity_bytes;

    if (o.ucx_port < 0 || o.ucx_port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("ucx_port ", o.ucx_port, " is not a port"));
    }
    if (o.ucx_workers < 1 || o.ucx_workers > kMaxUcxWorkers) {
      return absl::InvalidArgumentError(
          absl::StrCat("ucx_workers must be 1..", kMaxUcxWorkers, ", not ", o.ucx_workers));
    }
    if (o.ucx_port != 0 && o.ucx_port + o.ucx_workers - 1 > 65535) {
      return absl::InvalidArgumentError(absl::StrCat("ucx_port ", o.ucx_port, " + ", o.ucx_workers,
                                                     " workers passes port 65535"));
    }
#ifdef KVTIER_HAVE_UCX_DATA_PLANE
    if (o.ucx_port != 0) {
      KVTIER_RETURN_IF_ERROR(StartUcx(o));
    }
#else
    if (o.ucx_port != 0) {
      std::fprintf(stderr, "kvtier-server: this build has no UCX data plane; --ucx_port ignored\n");
    }
#endif

    service_ = std::make_unique<KvTierService>(&st_);
    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder b;
    b.AddListeningPort(o.listen, creds, &grpc_port_);
    b.RegisterService(service_.get());
    const int max_msg = static_cast<int>(std::min<uint64_t>(o.limits.max_message_bytes, INT32_MAX));
    b.SetMaxReceiveMessageSize(max_msg);
    b.SetMaxSendMessageSize(max_msg);
    b.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, o.max_concurrent_streams);
    // Large payloads: a big initial stream window and frames (see the client's channel).
    b.AddChannelArgument(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 64 << 20);
    b.AddChannelArgument(GRPC_ARG_HTTP2_MAX_FRAME_SIZE, (16 << 20) - 1);
    b.AddChannelArgument(GRPC_ARG_HTTP2_WRITE_BUFFER_SIZE, 8 << 20);
    grpc_ = b.BuildAndStart();
    if (grpc_ == nullptr || grpc_port_ == 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen on ", o.listen));
    }
    grpc_->GetHealthCheckService()->SetServingStatus(true);

    if (o.http_port >= 0) KVTIER_RETURN_IF_ERROR(StartHttp(o.http_host, o.http_port));
    ready_ = true;
    return absl::OkStatus();
  }

  int grpc_port() const override { return grpc_port_; }
  int http_port() const override { return http_port_; }
  int ucx_port() const override { return st_.ucx_ports.empty() ? 0 : st_.ucx_ports.front(); }
  std::vector<int> ucx_ports() const override { return st_.ucx_ports; }

  absl::Status Drain(absl::Duration timeout) override {
    absl::MutexLock l(&drain_mu_);
    if (drained_) return drain_status_;
    drained_ = true;
    st_.draining = true;
    ready_ = false;
    if (grpc_ != nullptr) {
      grpc_->GetHealthCheckService()->SetServingStatus(false);
      const absl::Time t0 = absl::Now();
      // Let in-flight requests finish (new ones are turned away with UNAVAILABLE), then
      // shut gRPC down; whatever is left at the deadline is cancelled. gRPC's own
      // Shutdown(deadline) would also wait for idle client connections, so the wait for
      // requests is done here.
      const absl::Time deadline = t0 + timeout;
      while (st_.inflight.load() > 0 && absl::Now() < deadline) {
        absl::SleepFor(absl::Milliseconds(5));
      }
      grpc_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(50));
      grpc_->Wait();
      std::fprintf(stderr, "kvtier-server: gRPC drained in %s\n",
                   absl::FormatDuration(absl::Now() - t0).c_str());
    }
#ifdef KVTIER_HAVE_UCX_DATA_PLANE
    if (!ucx_.empty()) {
      // The workers drain side by side, each up to the drain timeout.
      const absl::Time tu = absl::Now();
      std::vector<std::thread> stops;
      for (auto& plane : ucx_) stops.emplace_back([p = plane.get()] { p->Stop(); });
      for (std::thread& t : stops) t.join();
      std::fprintf(stderr, "kvtier-server: UCX stopped in %s\n",
                   absl::FormatDuration(absl::Now() - tu).c_str());
    }
#endif
    const absl::Time t1 = absl::Now();
    if (st_.store != nullptr) drain_status_ = st_.store->Flush();
    std::fprintf(stderr, "kvtier-server: storage flushed in %s\n",
                 absl::FormatDuration(absl::Now() - t1).c_str());
    if (http_ != nullptr) {
      const absl::Time t2 = absl::Now();
      http_->stop();
      if (http_thread_.joinable()) http_thread_.join();
      std::fprintf(stderr, "kvtier-server: HTTP stopped in %s\n",
                   absl::FormatDuration(absl::Now() - t2).c_str());
    }
    return drain_status_;
  }

  std::string MetricsText() override {
    if (st_.store != nullptr) {
      const storage::StoreStats s = st_.store->Stats();
      ServiceMetrics& m = st_.metrics;
      m.stored_blocks.Set({"memory"}, static_cast<double>(s.memory.blocks));
      m.stored_blocks.Set({"disk"}, static_cast<double>(s.disk.blocks));
      m.stored_bytes.Set({"memory"}, static_cast<double>(s.memory.bytes));
      m.stored_bytes.Set({"disk"}, static_cast<double>(s.disk.bytes));
      m.capacity_bytes.Set({"memory"}, static_cast<double>(memory_capacity_));
      m.capacity_bytes.Set({"disk"}, static_cast<double>(disk_capacity_));
      m.evictions.Set({"memory"}, static_cast<double>(s.memory.evictions));
      m.evictions.Set({"disk"}, static_cast<double>(s.disk.evictions));
      m.dedup_saved.Set({}, static_cast<double>(s.dedup_bytes_saved));
      m.corrupt_dropped.Set({}, static_cast<double>(s.corrupt_dropped));
    }
    if (st_.put_buffers != nullptr) {
      st_.metrics.put_buffers.Set({"grpc", "prepared"},
                                  static_cast<double>(st_.grpc_put_buffers_ready.load()));
      st_.metrics.put_buffers.Set({"grpc", "allocated"},
                                  static_cast<double>(st_.grpc_put_buffers_not_ready.load()));
    }
#ifdef KVTIER_HAVE_UCX_DATA_PLANE
    if (!ucx_.empty()) {
      size_t inflight = 0;
      uint64_t ready = 0, allocated = 0;
      for (size_t i = 0; i < ucx_.size(); ++i) {
        inflight += ucx_[i]->inflight_requests();
        const UcxDataPlaneStats u = ucx_[i]->stats();
        ready += u.put_buffers_ready;
        allocated += u.put_buffers_allocated;
        const std::string worker = std::to_string(i);
        st_.metrics.ucx_worker_connections.Set({worker}, static_cast<double>(u.connections_open));
        st_.metrics.ucx_worker_requests.Set({worker}, static_cast<double>(u.requests));
      }
      st_.metrics.inflight.Set({"ucx"}, static_cast<double>(inflight));
      st_.metrics.put_buffers.Set({"ucx", "prepared"}, static_cast<double>(ready));
      st_.metrics.put_buffers.Set({"ucx", "allocated"}, static_cast<double>(allocated));
    }
#endif
    return st_.metrics.reg.Render();
  }

 private:
  absl::Status StartHttp(const std::string& host, int port) {
    http_ = std::make_unique<httplib::Server>();
    http_->Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
      res.set_content(MetricsText(), "text/plain; version=0.0.4; charset=utf-8");
    });
    http_->Get("/healthz", [](const httplib::Request&, httplib::Response& res) {
      res.set_content("ok\n", "text/plain");
    });
    http_->Get("/readyz", [this](const httplib::Request&, httplib::Response& res) {
      if (ready_) {
        res.set_content("ready\n", "text/plain");
      } else {
        res.status = 503;
        res.set_content(st_.draining ? "draining\n" : "starting\n", "text/plain");
      }
    });
    if (port == 0) {
      http_port_ = http_->bind_to_any_port(host);
    } else {
      http_port_ = http_->bind_to_port(host, port) ? port : -1;
    }
    if (http_port_ <= 0) {
      return absl::UnavailableError(absl::StrCat("cannot listen on HTTP ", host, ":", port));
    }
    http_thread_ = std::thread([this] { http_->listen_after_bind(); });
    return absl::OkStatus();
  }

#ifdef KVTIER_HAVE_UCX_DATA_PLANE
  absl::Status StartUcx(const ServerOptions& o) {
    UcxDataPlaneOptions uo;
    // The UCX listener binds the same host as the gRPC address.
    std::string host = o.listen.substr(0, o.listen.rfind(':'));
    if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
      host = host.substr(1, host.size() - 2);
    }
    if (host == "localhost") host = "127.0.0.1";
    if (host.empty()) host = "0.0.0.0";
    uo.listen_address = host;
    uo.max_chain_length = o.limits.max_chain_length;
    uo.ready_put_buffers = o.ready_put_buffers;
    uo.put_buffers = st_.put_buffers.get();  // one pool for both Put paths
    uo.max_inflight_put_bytes = o.ucx_max_inflight_put_bytes;
    // RAM only: a Get is a memory lookup, cheaper than the hand-off to a store thread.
    uo.inline_gets = o.store.disk_path.empty();
    uo.drain_timeout = o.drain_timeout;
    UcxHooks hooks;
    hooks.authorize = [this](absl::string_view token, absl::string_view ns, bool write) {
      if (st_.draining) return absl::UnavailableError("server is draining");
      return st_.sessions.Authorize(token, ns, write);
    };
    hooks.on_request = [this](absl::string_view method, absl::StatusCode code, double seconds,
                              uint64_t bytes_in, uint64_t bytes_out) {
      st_.metrics.OnRequest(method, "ucx", code, seconds, bytes_in, bytes_out);
    };
    hooks.on_lookup = [this](absl::string_view ns, uint32_t requested, uint32_t present,
                             uint32_t block_tokens) {
      st_.metrics.CountLookup(ns, "ucx", requested, present, block_tokens);
    };
    hooks.on_put_block = [this](absl::string_view ns, absl::string_view result) {
      st_.metrics.put_blocks.Add({st_.metrics.ns.Label(ns), result});
    };
    hooks.on_get_block = [this](absl::string_view tier, absl::string_view result) {
      st_.metrics.get_blocks.Add({tier, result});
    };
    // Every worker runs these on its own loop thread: they only touch thread-safe state
    // (the session table, the metrics registry, the draining flag).
    std::vector<std::unique_ptr<UcxDataPlane>> planes;
    std::vector<int> ports;
    for (int i = 0; i < o.ucx_workers; ++i) {
      uo.port = static_cast<uint16_t>(o.ucx_port + i);
      uo.loop.name = o.ucx_workers == 1 ? "kvtier-ucx-srv" : absl::StrCat("kvtier-ucx-", i);
      absl::StatusOr<std::unique_ptr<UcxDataPlane>> ucx =
          UcxDataPlane::Start(uo, st_.store.get(), hooks);
      if (!ucx.ok()) {
        // The workers started so far stop as `planes` goes out of scope.
        return absl::Status(ucx.status().code(),
                            absl::StrCat("UCX data plane (worker ", i, " of ", o.ucx_workers,
                                         ", port ", o.ucx_port + i, "): ", ucx.status().message()));
      }
      ports.push_back((*ucx)->port());
      planes.push_back(*std::move(ucx));
    }
    ucx_ = std::move(planes);
    st_.ucx_ports = std::move(ports);
    return absl::OkStatus();
  }
  std::vector<std::unique_ptr<UcxDataPlane>> ucx_;
#endif

  State st_;
  std::unique_ptr<KvTierService> service_;
  std::unique_ptr<grpc::Server> grpc_;
  int grpc_port_ = 0;
  int http_port_ = -1;
  uint64_t memory_capacity_ = 0;
  uint64_t disk_capacity_ = 0;
  std::unique_ptr<httplib::Server> http_;
  std::thread http_thread_;
  std::atomic<bool> ready_{false};
  absl::Mutex drain_mu_;
  bool drained_ = false;
  absl::Status drain_status_;
};

}  // namespace

int DefaultUcxWorkers() {
  cpu_set_t set;
  CPU_ZERO(&set);
  int cpus = 0;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) cpus = CPU_COUNT(&set);
  if (cpus <= 0) cpus = static_cast<int>(std::thread::hardware_concurrency());
  return std::clamp(cpus / 2, 2, 8);
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  auto s = std::make_unique<ServerImpl>();
  absl::Status st = s->Init(options);
  if (!st.ok()) return st;
  return std::unique_ptr<Server>(std::move(s));
}

}  // namespace kvtier::service
