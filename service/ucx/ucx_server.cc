#include "service/ucx/ucx_server.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <ucp/api/ucp.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <deque>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/functional/any_invocable.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "common/ucx/ucx_status.h"
#include "kvtier/v1/kvtier.pb.h"
#include "proto/kvtier/v1/wire.h"
#include "service/put_buffers.h"

namespace kvtier::service {
namespace {

namespace v1 = ::kvtier::v1;
using storage::BlockKey;
using storage::Payload;

constexpr unsigned kRequestAmId = 1;
constexpr unsigned kResponseAmId = 2;
using v1::wire::kMinGetPieceBytes;

// [A-Za-z0-9._:/-]{1,256}, no "..": the namespace rule of the proto file.
absl::Status ValidateNamespace(absl::string_view ns) {
  if (ns.empty()) return absl::InvalidArgumentError("namespace is empty");
  if (ns.size() > 256) {
    return absl::InvalidArgumentError(
        absl::StrCat("namespace is ", ns.size(), " bytes; the limit is 256"));
  }
  for (char c : ns) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == ':' || c == '/' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError("namespace may only contain [A-Za-z0-9._:/-]");
    }
  }
  if (absl::StrContains(ns, "..")) {
    return absl::InvalidArgumentError("namespace must not contain \"..\"");
  }
  return absl::OkStatus();
}

absl::StatusOr<kernels::ChainHash> ParseHash(const std::string& bytes, size_t index) {
  kernels::ChainHash h;
  if (bytes.size() != h.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("chain hash ", index, " is ", bytes.size(), " bytes; it must be 32"));
  }
  std::memcpy(h.data(), bytes.data(), h.size());
  return h;
}

absl::StatusOr<std::vector<kernels::ChainHash>> ParseChain(
    const google::protobuf::RepeatedPtrField<std::string>& hashes, size_t max_len) {
  if (hashes.empty()) return absl::InvalidArgumentError("chain_hashes is empty");
  if (static_cast<size_t>(hashes.size()) > max_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("chain has ", hashes.size(), " hashes; the limit is ", max_len));
  }
  std::vector<kernels::ChainHash> chain;
  chain.reserve(hashes.size());
  for (int i = 0; i < hashes.size(); ++i) {
    KVTIER_ASSIGN_OR_RETURN(kernels::ChainHash h, ParseHash(hashes.Get(i), i));
    chain.push_back(h);
  }
  return chain;
}

absl::StatusOr<sockaddr_storage> ParseAddress(const std::string& ip, uint16_t port,
                                              socklen_t* len) {
  sockaddr_storage ss{};
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, ip.c_str(), &v4->sin_addr) == 1) {
    v4->sin_family = AF_INET;
    v4->sin_port = htons(port);
    *len = sizeof(sockaddr_in);
    return ss;
  }
  if (inet_pton(AF_INET6, ip.c_str(), &v6->sin6_addr) == 1) {
    v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(port);
    *len = sizeof(sockaddr_in6);
    return ss;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("listen_address \"", ip, "\" is not an IPv4 or IPv6 address"));
}

const char* TierName(storage::Tier t) { return t == storage::Tier::kDisk ? "disk" : "memory"; }
v1::Tier ToProto(storage::Tier t) {
  return t == storage::Tier::kDisk ? v1::TIER_DISK : v1::TIER_MEMORY;
}

// Threads that run store calls off the loop thread. Stop runs what is queued, then joins.
class StorePool {
 public:
  explicit StorePool(int threads) {
    for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
  }
  ~StorePool() { Stop(); }

  void Submit(absl::AnyInvocable<void()> fn) {
    absl::MutexLock lock(&mu_);
    queue_.push_back(std::move(fn));
  }

  void Stop() {
    {
      absl::MutexLock lock(&mu_);
      stopping_ = true;
    }
    for (std::thread& t : threads_) t.join();
    threads_.clear();
  }

 private:
  void Run() {
    while (true) {
      absl::AnyInvocable<void()> fn;
      {
        absl::MutexLock lock(&mu_);
        mu_.Await(absl::Condition(
            +[](StorePool* p) ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) {
              return p->stopping_ || !p->queue_.empty();
            },
            this));
        if (queue_.empty()) return;  // stopping and drained
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
    }
  }

  std::vector<std::thread> threads_;
  absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

class UcxDataPlane::Impl {
 public:
  Impl(const UcxDataPlaneOptions& options, storage::TieredStore* store, UcxHooks hooks)
      : options_(options), store_(store), hooks_(std::move(hooks)) {}

  ~Impl() { Stop(); }

  absl::Status Start(uint16_t* port) {
    if (options_.max_chain_length == 0) {
      return absl::InvalidArgumentError("max_chain_length must be positive");
    }
    if (options_.max_payload_bytes < kernels::kPayloadHeaderBytes) {
      return absl::InvalidArgumentError("max_payload_bytes is smaller than a payload header");
    }
    if (options_.store_threads < 0) {
      return absl::InvalidArgumentError("store_threads must not be negative");
    }
    if (options_.ready_put_buffers < 0) {
      return absl::InvalidArgumentError("ready_put_buffers must not be negative");
    }
    if (options_.store_threads > 0) pool_ = std::make_unique<StorePool>(options_.store_threads);
    if (options_.put_buffers != nullptr) {
      put_buffers_ = options_.put_buffers;
    } else {
      PutBuffers::Options bo;
      bo.ready = options_.ready_put_buffers;
      own_put_buffers_ = std::make_unique<PutBuffers>(bo);
      put_buffers_ = own_put_buffers_.get();
    }
    socklen_t addr_len = 0;
    KVTIER_ASSIGN_OR_RETURN(sockaddr_storage addr,
                            ParseAddress(options_.listen_address, options_.port, &addr_len));
    KVTIER_ASSIGN_OR_RETURN(loop_, ucx::UcxLoop::Start(options_.loop, [this] { OnIteration(); }));
    absl::Status s = loop_->Call([&]() -> absl::Status {
      ucp_am_handler_param_t am{};
      am.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                      UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
      am.id = kRequestAmId;
      am.cb = &Impl::OnRequestAm;
      am.arg = this;
      am.flags = UCP_AM_FLAG_WHOLE_MSG;
      KVTIER_UCX_RETURN_IF_ERROR(ucp_worker_set_am_recv_handler(loop_->worker(), &am),
                                 "ucp_worker_set_am_recv_handler");
      ucp_listener_params_t lp{};
      lp.field_mask = UCP_LISTENER_PARAM_FIELD_SOCK_ADDR | UCP_LISTENER_PARAM_FIELD_CONN_HANDLER;
      lp.sockaddr.addr = reinterpret_cast<const sockaddr*>(&addr);
      lp.sockaddr.addrlen = addr_len;
      lp.conn_handler.cb = &Impl::OnConnRequest;
      lp.conn_handler.arg = this;
      ucs_status_t us = ucp_listener_create(loop_->worker(), &lp, &listener_);
      if (us != UCS_OK) {
        listener_ = nullptr;
        if (us == UCS_ERR_BUSY || us == UCS_ERR_IO_ERROR || us == UCS_ERR_UNREACHABLE) {
          return absl::UnavailableError(absl::StrCat("cannot listen on ", options_.listen_address,
                                                     ":", options_.port, ": ",
                                                     ucs_status_string(us)));
        }
        return ucx::FromUcs(us, "ucp_listener_create");
      }
      ucp_listener_attr_t attr{};
      attr.field_mask = UCP_LISTENER_ATTR_FIELD_SOCKADDR;
      KVTIER_UCX_RETURN_IF_ERROR(ucp_listener_query(listener_, &attr), "ucp_listener_query");
      if (attr.sockaddr.ss_family == AF_INET) {
        *port = ntohs(reinterpret_cast<const sockaddr_in*>(&attr.sockaddr)->sin_port);
      } else {
        *port = ntohs(reinterpret_cast<const sockaddr_in6*>(&attr.sockaddr)->sin6_port);
      }
      return absl::OkStatus();
    });
    if (!s.ok()) Stop();
    return s;
  }

  void Stop() {
    absl::MutexLock lock(&stop_mu_);
    if (loop_ == nullptr) return;
    (void)loop_->Call([this]() -> absl::Status {
      draining_ = true;
      if (listener_ != nullptr) {
        ucp_listener_destroy(listener_);
        listener_ = nullptr;
      }
      loop_->ProgressUntil([this] { return inflight_.load() == 0; }, options_.drain_timeout);
      // Close every endpoint gracefully (the client sees the disconnect at once).
      std::vector<void*> closing;
      auto close = [&](ucp_ep_h ep, uint32_t flags) {
        ucp_request_param_t p{};
        p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
        p.flags = flags;
        ucs_status_ptr_t sp = ucp_ep_close_nbx(ep, &p);
        if (sp != nullptr && !UCS_PTR_IS_ERR(sp)) closing.push_back(sp);
      };
      // After a drain timeout, descriptors still held are released first.
      for (auto& [ep, conn] : conns_) conn->failed = true;
      StartWaitingPuts(/*all=*/true);
      OnIteration();
      for (auto& [ep, conn] : conns_) close(ep, 0);
      conns_.clear();
      connections_open_.store(0);
      for (std::shared_ptr<Conn>& conn : to_close_) close(conn->ep, UCP_EP_CLOSE_FLAG_FORCE);
      to_close_.clear();
      loop_->ProgressUntil(
          [&] {
            for (void* r : closing) {
              if (ucp_request_check_status(r) == UCS_INPROGRESS) return false;
            }
            return true;
          },
          absl::Seconds(2));
      for (void* r : closing) ucp_request_free(r);
      return absl::OkStatus();
    });
    // Store calls still queued after a drain timeout run now (the store outlives us);
    // their responses go nowhere since every endpoint is closed.
    if (pool_ != nullptr) pool_->Stop();
    loop_->Stop();
    loop_.reset();
  }

  size_t inflight() const { return inflight_.load(); }

  UcxDataPlaneStats stats() const {
    UcxDataPlaneStats st;
    st.connections_accepted = connections_accepted_.load();
    st.connections_open = connections_open_.load();
    st.requests = requests_.load();
    st.rendezvous_receives = rendezvous_receives_.load();
    st.rejected_before_receive = rejected_before_receive_.load();
    st.inline_gets = inline_gets_.load();
    st.get_pieces = get_pieces_.load();
    st.puts_queued = puts_queued_.load();
    st.put_buffers_ready = put_buffers_ready_.load();
    st.put_buffers_allocated = put_buffers_allocated_.load();
    return st;
  }

 private:
  struct Conn {
    ucp_ep_h ep = nullptr;
    bool failed = false;  // the endpoint reported an error or is closing: send nothing
    // Rendezvous descriptors of this endpoint we hold (returned UCS_INPROGRESS for) and
    // have neither received nor released. A failed endpoint is closed only once this is 0:
    // UCX answers a descriptor through its endpoint.
    int held_descs = 0;
  };

  // One request from receipt to its last response's completion. Loop thread only.
  struct Request {
    std::shared_ptr<Conn> conn;
    uint64_t request_id = 0;
    const char* method = "Unknown";
    absl::Time start;
    uint64_t bytes_in = 0;
    uint64_t bytes_out = 0;
    absl::StatusCode code = absl::StatusCode::kOk;
    int pending_sends = 0;
    bool processed = false;  // the handler has sent (or tried) its last response
    bool finished = false;
  };

  // A received request AM. data holds eager data; rndv_desc a rendezvous descriptor.
  struct Job {
    std::shared_ptr<Conn> conn;
    std::string header;
    std::vector<uint8_t> data;
    void* rndv_desc = nullptr;
    size_t length = 0;  // data bytes (eager or rendezvous)
    absl::Time received;
    bool accepted = true;  // arrived before Stop began
  };

  struct SendCtx {
    Impl* self;
    std::shared_ptr<Request> req;
    std::string header;
    Payload payload;     // keeps a Get hit alive until UCX is done with it
    uint64_t bytes = 0;  // of payload, sent as the AM data
  };

  struct RecvCtx {
    Impl* self;
    absl::AnyInvocable<void(absl::Status)> done;
  };

  // ---- UCX callbacks (progress context): record and defer, never block ----

  static void OnConnRequest(ucp_conn_request_h conn_request, void* arg) {
    auto* self = static_cast<Impl*>(arg);
    self->deferred_.push_back([self, conn_request] { self->Accept(conn_request); });
  }

  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status) {
    auto* self = static_cast<Impl*>(arg);
    auto it = self->conns_.find(ep);
    if (it == self->conns_.end()) return;
    it->second->failed = true;
    self->to_close_.push_back(it->second);
    self->conns_.erase(it);
    self->connections_open_.store(self->conns_.size());
  }

  static ucs_status_t OnRequestAm(void* arg, const void* header, size_t header_length, void* data,
                                  size_t length, const ucp_am_recv_param_t* param) {
    auto* self = static_cast<Impl*>(arg);
    ucp_ep_h ep = (param->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ? param->reply_ep : nullptr;
    auto it = self->conns_.find(ep);
    // Without a live endpoint there is nobody to answer: drop (rendezvous data too).
    if (it == self->conns_.end() || it->second->failed) return UCS_OK;
    Job job;
    job.conn = it->second;
    job.header.assign(static_cast<const char*>(header), header_length);
    job.length = length;
    job.received = absl::Now();
    job.accepted = !self->draining_;
    ucs_status_t ret = UCS_OK;
    if (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
      job.rndv_desc = data;
      job.conn->held_descs++;
      ret = UCS_INPROGRESS;  // keep the descriptor until we receive or release it
    } else if (length > 0) {
      const auto* p = static_cast<const uint8_t*>(data);
      job.data.assign(p, p + length);
    }
    self->inflight_.fetch_add(1);
    self->requests_.fetch_add(1);
    self->deferred_.push_back(
        [self, job = std::move(job)]() mutable { self->Process(std::move(job)); });
    return ret;
  }

  static void OnSendDone(void* request, ucs_status_t status, void* user_data) {
    auto* ctx = static_cast<SendCtx*>(user_data);
    if (status == UCS_OK) ctx->req->bytes_out += ctx->bytes;
    ctx->req->pending_sends--;
    ctx->self->MaybeFinish(ctx->req);
    delete ctx;
    ucp_request_free(request);
  }

  static void OnRecvDone(void* request, ucs_status_t status, size_t length, void* user_data) {
    auto* ctx = static_cast<RecvCtx*>(user_data);
    ctx->self->deferred_.push_back([done = std::move(ctx->done), status]() mutable {
      done(ucx::FromUcs(status, "receiving rendezvous data"));
    });
    delete ctx;
    ucp_request_free(request);
  }

  // ---- loop thread ----

  void OnIteration() {
    std::deque<absl::AnyInvocable<void()>> completions;
    if (has_completions_.load(std::memory_order_acquire)) {  // no lock on an idle spin
      absl::MutexLock lock(&completions_mu_);
      completions.swap(completions_);
      has_completions_.store(false, std::memory_order_relaxed);
    }
    for (auto& c : completions) c();
    while (!deferred_.empty()) {
      auto task = std::move(deferred_.front());
      deferred_.pop_front();
      task();
    }
    StartWaitingPuts(/*all=*/false);
    // Close failed endpoints once no descriptor of theirs is held.
    std::vector<std::shared_ptr<Conn>> keep;
    for (std::shared_ptr<Conn>& conn : to_close_) {
      if (conn->held_descs > 0) {
        keep.push_back(std::move(conn));
        continue;
      }
      ucp_request_param_t p{};
      p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
      p.flags = UCP_EP_CLOSE_FLAG_FORCE;
      ucs_status_ptr_t sp = ucp_ep_close_nbx(conn->ep, &p);
      if (sp != nullptr && !UCS_PTR_IS_ERR(sp)) ucp_request_free(sp);
    }
    to_close_.swap(keep);
  }

  // Starts queued rendezvous puts in arrival order while the budget allows (`all`: every
  // one); puts of failed endpoints start at once wherever they are (they only release
  // their descriptor).
  void StartWaitingPuts(bool all) {
    bool blocked = false;  // an earlier put did not fit: later ones wait behind it
    for (auto it = waiting_puts_.begin(); it != waiting_puts_.end();) {
      blocked = blocked || !PutFits(it->bytes);
      if (all || !blocked || it->conn->failed) {
        auto start = std::move(it->start);
        it = waiting_puts_.erase(it);
        start();
      } else {
        ++it;
      }
    }
  }

  bool PutFits(uint64_t n) const {
    return inflight_put_bytes_ == 0 || inflight_put_bytes_ + n <= options_.max_inflight_put_bytes;
  }

  void Accept(ucp_conn_request_h conn_request) {
    if (draining_ || listener_ == nullptr) {
      if (listener_ != nullptr) ucp_listener_reject(listener_, conn_request);
      return;
    }
    ucp_ep_params_t p{};
    p.field_mask = UCP_EP_PARAM_FIELD_CONN_REQUEST | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                   UCP_EP_PARAM_FIELD_ERR_HANDLER;
    p.conn_request = conn_request;
    p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
    p.err_handler.cb = &Impl::OnEpError;
    p.err_handler.arg = this;
    ucp_ep_h ep = nullptr;
    if (ucp_ep_create(loop_->worker(), &p, &ep) != UCS_OK) return;  // the client times out
    auto conn = std::make_shared<Conn>();
    conn->ep = ep;
    conns_[ep] = std::move(conn);
    connections_accepted_.fetch_add(1);
    connections_open_.store(conns_.size());
  }

  // Runs `work` (a store call) on the pool, or inline without one, then `then` with its
  // result on the loop thread.
  template <typename R>
  void Offload(absl::AnyInvocable<R()> work, absl::AnyInvocable<void(R)> then) {
    if (pool_ == nullptr) {
      then(work());
      return;
    }
    pool_->Submit([this, work = std::move(work), then = std::move(then)]() mutable {
      R result = work();
      {
        absl::MutexLock lock(&completions_mu_);
        completions_.push_back([then = std::move(then), result = std::move(result)]() mutable {
          then(std::move(result));
        });
        has_completions_.store(true, std::memory_order_release);
      }
      loop_->Wake();
    });
  }

  void ReleaseData(Job& job) {
    if (job.rndv_desc != nullptr) {
      rejected_before_receive_.fetch_add(1);
      ucp_am_data_release(loop_->worker(), job.rndv_desc);
      job.rndv_desc = nullptr;
      job.conn->held_descs--;
    }
    job.data.clear();
  }

  // Receives the rendezvous data of `desc` (held for `conn`) into `buf` (n bytes, owned by
  // the caller until done runs). On a failed endpoint the descriptor is released instead
  // and done gets kUnavailable.
  void ReceiveRndv(Conn& conn, void* desc, void* buf, size_t n,
                   absl::AnyInvocable<void(absl::Status)> done) {
    conn.held_descs--;
    if (conn.failed) {
      ucp_am_data_release(loop_->worker(), desc);
      deferred_.push_back([done = std::move(done)]() mutable {
        done(absl::UnavailableError("UCX connection lost before the data was received"));
      });
      return;
    }
    rendezvous_receives_.fetch_add(1);
    auto* ctx = new RecvCtx{this, std::move(done)};
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.recv_am = &Impl::OnRecvDone;
    p.user_data = ctx;
    ucs_status_ptr_t sp = ucp_am_recv_data_nbx(loop_->worker(), desc, buf, n, &p);
    if (sp == nullptr || UCS_PTR_IS_ERR(sp)) {
      absl::Status s = sp == nullptr ? absl::OkStatus()
                                     : ucx::FromUcs(UCS_PTR_STATUS(sp), "ucp_am_recv_data_nbx");
      deferred_.push_back([done = std::move(ctx->done), s]() mutable { done(s); });
      delete ctx;
    }
  }

  void Process(Job job) {
    auto req = std::make_shared<Request>();
    req->conn = job.conn;
    req->start = job.received;
    if (!job.accepted) {
      ReleaseData(job);
      Fail(req, absl::UnavailableError("kvtier UCX server is shutting down"));
      return;
    }
    if (!job.header.empty()) {
      v1::UcxRequest request;
      if (!request.ParseFromString(job.header)) {
        ReleaseData(job);
        Fail(req, absl::InvalidArgumentError("malformed UcxRequest header"));
        return;
      }
      Dispatch(req, std::move(request), job);
      return;
    }
    // An empty header: the whole UcxRequest is the data (requests above the AM header
    // limit). Never a Put.
    if (job.length == 0 || job.length > options_.max_request_bytes) {
      ReleaseData(job);
      Fail(req, absl::InvalidArgumentError(absl::StrCat("request without header carries ",
                                                        job.length, " bytes; expected 1..",
                                                        options_.max_request_bytes)));
      return;
    }
    if (job.rndv_desc == nullptr) {
      ParseDataRequest(req, job.data);
      return;
    }
    auto buf = std::make_shared<std::vector<uint8_t>>(job.length);
    void* desc = job.rndv_desc;
    ReceiveRndv(*job.conn, desc, buf->data(), buf->size(), [this, req, buf](absl::Status s) {
      if (!s.ok()) {
        Fail(req, absl::UnavailableError(s.message()));
        return;
      }
      ParseDataRequest(req, *buf);
    });
  }

  void ParseDataRequest(const std::shared_ptr<Request>& req, const std::vector<uint8_t>& bytes) {
    v1::UcxRequest request;
    if (!request.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
      Fail(req, absl::InvalidArgumentError("malformed UcxRequest in AM data"));
      return;
    }
    if (request.has_put()) {
      req->request_id = request.request_id();
      req->method = "Put";
      Fail(req, absl::InvalidArgumentError("a Put request must be the AM header"));
      return;
    }
    Job none;
    Dispatch(req, std::move(request), none);
  }

  absl::Status CheckAccess(const std::string& token, absl::string_view ns, bool write) {
    if (token.empty()) return absl::UnauthenticatedError("UCX request without a session token");
    KVTIER_RETURN_IF_ERROR(ValidateNamespace(ns));
    if (hooks_.authorize) return hooks_.authorize(token, ns, write);
    return absl::OkStatus();
  }

  void Dispatch(const std::shared_ptr<Request>& req, v1::UcxRequest request, Job& job) {
    req->request_id = request.request_id();
    switch (request.op_case()) {
      case v1::UcxRequest::kLookup:
        req->method = "Lookup";
        break;
      case v1::UcxRequest::kGet:
        req->method = "Get";
        break;
      case v1::UcxRequest::kDelete:
        req->method = "Delete";
        break;
      case v1::UcxRequest::kPut:
        req->method = "Put";
        HandlePut(req, request, job);
        return;
      default:
        ReleaseData(job);
        Fail(req, absl::InvalidArgumentError("UcxRequest has no operation"));
        return;
    }
    if (job.length > 0) {
      ReleaseData(job);
      Fail(req, absl::InvalidArgumentError(
                    absl::StrCat(req->method, " request carries unexpected data")));
      return;
    }
    switch (request.op_case()) {
      case v1::UcxRequest::kLookup:
        HandleLookup(req, request);
        break;
      case v1::UcxRequest::kGet:
        HandleGet(req, request);
        break;
      default:
        HandleDelete(req, request);
        break;
    }
  }

  void HandleLookup(const std::shared_ptr<Request>& req, const v1::UcxRequest& request) {
    const v1::LookupRequest& r = request.lookup();
    absl::Status s = CheckAccess(request.session_token(), r.namespace_(), /*write=*/false);
    if (!s.ok()) return Fail(req, s);
    auto chain = ParseChain(r.chain_hashes(), options_.max_chain_length);
    if (!chain.ok()) return Fail(req, chain.status());
    const auto requested = static_cast<uint32_t>(chain->size());
    Offload<size_t>([this, ns = r.namespace_(), chain = std::move(*chain),
                     part = r.part()] { return store_->Lookup(ns, chain, part); },
                    [this, req, ns = r.namespace_(), requested,
                     block_tokens = r.block_tokens()](size_t present) {
                      if (hooks_.on_lookup) {
                        hooks_.on_lookup(ns, requested, static_cast<uint32_t>(present),
                                         block_tokens);
                      }
                      v1::UcxResponse resp;
                      resp.mutable_lookup()->set_num_present(static_cast<uint32_t>(present));
                      resp.set_last(true);
                      Send(req, resp, nullptr, 0, 0);
                      Done(req);
                    });
  }

  absl::StatusOr<std::vector<BlockKey>> Keys(
      const std::string& ns, uint32_t part,
      const google::protobuf::RepeatedPtrField<std::string>& hashes) {
    KVTIER_ASSIGN_OR_RETURN(std::vector<kernels::ChainHash> chain,
                            ParseChain(hashes, options_.max_chain_length));
    std::vector<BlockKey> keys(chain.size());
    for (size_t i = 0; i < chain.size(); ++i) {
      keys[i].ns = ns;
      keys[i].chain = chain[i];
      keys[i].part = part;
    }
    return keys;
  }

  void HandleDelete(const std::shared_ptr<Request>& req, const v1::UcxRequest& request) {
    const v1::DeleteRequest& r = request.delete_();
    absl::Status s = CheckAccess(request.session_token(), r.namespace_(), /*write=*/true);
    if (!s.ok()) return Fail(req, s);
    auto keys = Keys(r.namespace_(), r.part(), r.chain_hashes());
    if (!keys.ok()) return Fail(req, keys.status());
    Offload<absl::StatusOr<size_t>>(
        [this, keys = std::move(*keys)] { return store_->Delete(keys); },
        [this, req](absl::StatusOr<size_t> deleted) {
          if (!deleted.ok()) return Fail(req, deleted.status());
          v1::UcxResponse resp;
          resp.mutable_delete_()->set_deleted(static_cast<uint32_t>(*deleted));
          resp.set_last(true);
          Send(req, resp, nullptr, 0, 0);
          Done(req);
        });
  }

  void HandleGet(const std::shared_ptr<Request>& req, const v1::UcxRequest& request) {
    const v1::GetRequest& r = request.get();
    absl::Status s = CheckAccess(request.session_token(), r.namespace_(), /*write=*/false);
    if (!s.ok()) return Fail(req, s);
    auto keys = Keys(r.namespace_(), r.part(), r.chain_hashes());
    if (!keys.ok()) return Fail(req, keys.status());
    const uint64_t piece = request.get_piece_bytes();
    if (piece != 0 && (piece < kMinGetPieceBytes || piece > kernels::kMaxPayloadBytes)) {
      return Fail(req, absl::InvalidArgumentError(
                           absl::StrCat("get_piece_bytes is ", piece, "; expected 0 or ",
                                        kMinGetPieceBytes, "..", kernels::kMaxPayloadBytes)));
    }
    using Leases = std::vector<absl::StatusOr<storage::Lease>>;
    if (options_.inline_gets && pool_ != nullptr) {
      inline_gets_.fetch_add(1, std::memory_order_relaxed);
      SendBlocks(req, store_->Get(*keys), piece);
      return;
    }
    Offload<Leases>([this, keys = std::move(*keys)] { return store_->Get(keys); },
                    [this, req, piece](Leases got) { SendBlocks(req, got, piece); });
  }

  void SendBlocks(const std::shared_ptr<Request>& req,
                  const std::vector<absl::StatusOr<storage::Lease>>& got, uint64_t piece_bytes) {
    for (size_t i = 0; i < got.size(); ++i) {
      v1::UcxResponse resp;
      v1::GetResponse* g = resp.mutable_get();
      g->set_index(static_cast<uint32_t>(i));
      resp.set_last(i + 1 == got.size());
      if (!got[i].ok()) {
        resp.set_code(static_cast<int32_t>(got[i].status().code()));
        resp.set_message(std::string(got[i].status().message()));
        g->mutable_miss()->set_code(static_cast<int32_t>(got[i].status().code()));
        g->mutable_miss()->set_message(std::string(got[i].status().message()));
        if (hooks_.on_get_block) hooks_.on_get_block("none", "error");
      } else if (!*got[i]) {
        g->mutable_miss();
        if (hooks_.on_get_block) hooks_.on_get_block("none", "miss");
      } else {
        const Payload& payload = got[i]->payload;
        g->mutable_header()->set_payload_bytes(payload->size());
        g->mutable_header()->set_tier(ToProto(got[i]->tier));
        if (hooks_.on_get_block) hooks_.on_get_block(TierName(got[i]->tier), "hit");
        if (piece_bytes > 0 && payload->size() > piece_bytes) {
          SendPieces(req, resp, payload, piece_bytes);
          continue;
        }
        Send(req, resp, payload, 0, payload->size());
        continue;
      }
      Send(req, resp, nullptr, 0, 0);
    }
    Done(req);
  }

  // One hit as consecutive responses of piece_bytes (the last one shorter), each with its
  // offset; `resp` has the block's index, header and `last`, which only the final piece
  // keeps.
  void SendPieces(const std::shared_ptr<Request>& req, v1::UcxResponse& resp,
                  const Payload& payload, uint64_t piece_bytes) {
    const bool last = resp.last();
    const uint64_t n = payload->size();
    const auto fault = options_.get_fault_for_testing;
    Payload corrupted;  // kFlipBit: the bytes piece 1 is sent from
    if (fault == UcxDataPlaneOptions::GetFaultForTesting::kFlipBit) {
      auto copy = std::make_shared<std::vector<uint8_t>>(*payload);
      (*copy)[std::min<uint64_t>(piece_bytes + piece_bytes / 2, n - 1)] ^= 0x10;
      corrupted = std::move(copy);
    }
    uint64_t piece = 0;
    for (uint64_t off = 0; off < n; off += piece_bytes, ++piece) {
      uint64_t len = std::min(piece_bytes, n - off);
      resp.set_offset(off);
      resp.set_last(last && off + len == n);
      get_pieces_.fetch_add(1, std::memory_order_relaxed);
      if (piece == 1) {
        using F = UcxDataPlaneOptions::GetFaultForTesting;
        if (fault == F::kSkipPiece) continue;
        if (fault == F::kShortPiece) --len;
        if (fault == F::kFlipBit) {
          Send(req, resp, corrupted, off, len);
          continue;
        }
      }
      Send(req, resp, payload, off, len);
    }
  }

  void HandlePut(const std::shared_ptr<Request>& req, const v1::UcxRequest& request, Job& job) {
    const v1::PutBlockHeader& h = request.put();
    const std::string& ns = h.key().namespace_();
    auto reject = [&](absl::Status s) {
      ReleaseData(job);
      if (hooks_.on_put_block && ValidateNamespace(ns).ok()) hooks_.on_put_block(ns, "rejected");
      Fail(req, s);
    };
    absl::Status s = CheckAccess(request.session_token(), ns, /*write=*/true);
    if (!s.ok()) return reject(s);
    auto hash = ParseHash(h.key().chain_hash(), 0);
    if (!hash.ok()) return reject(hash.status());
    if (h.payload_bytes() != job.length) {
      return reject(absl::InvalidArgumentError(absl::StrCat(
          "put header says ", h.payload_bytes(), " payload bytes but ", job.length, " arrived")));
    }
    if (h.payload_bytes() < kernels::kPayloadHeaderBytes ||
        h.payload_bytes() > options_.max_payload_bytes) {
      return reject(absl::InvalidArgumentError(
          absl::StrCat("put payload is ", h.payload_bytes(), " bytes; expected ",
                       kernels::kPayloadHeaderBytes, "..", options_.max_payload_bytes)));
    }
    BlockKey key;
    key.ns = ns;
    key.chain = *hash;
    key.part = h.key().part();
    req->bytes_in = job.length;
    if (job.rndv_desc == nullptr) {
      FinishPut(req, key, std::make_shared<std::vector<uint8_t>>(std::move(job.data)), 0);
      return;
    }
    size_t n = job.length;
    void* desc = job.rndv_desc;
    job.rndv_desc = nullptr;
    auto start = [this, req, key = std::move(key), desc, n]() mutable {
      inflight_put_bytes_ += n;
      bool ready = false;
      std::shared_ptr<std::vector<uint8_t>> buf = put_buffers_->Take(n, &ready);
      (ready ? put_buffers_ready_ : put_buffers_allocated_).fetch_add(1, std::memory_order_relaxed);
      ReceiveRndv(*req->conn, desc, buf->data(), n,
                  [this, req, key = std::move(key), buf, n](absl::Status s) mutable {
                    if (s.ok()) {
                      FinishPut(req, key, std::move(buf), n);
                    } else {
                      if (hooks_.on_put_block) hooks_.on_put_block(key.ns, "rejected");
                      Fail(req, absl::UnavailableError(s.message()));
                      inflight_put_bytes_ -= n;
                    }
                  });
    };
    // First come, first served: a put that fits the budget still waits behind queued ones.
    if (waiting_puts_.empty() && PutFits(n)) {
      start();
    } else {
      puts_queued_.fetch_add(1, std::memory_order_relaxed);
      waiting_puts_.push_back(WaitingPut{n, req->conn, std::move(start)});
    }
  }

  // Validates the header and stores the block; `budget` bytes of max_inflight_put_bytes are
  // returned once the store is done with it.
  void FinishPut(const std::shared_ptr<Request>& req, const BlockKey& key,
                 std::shared_ptr<std::vector<uint8_t>> bytes, uint64_t budget) {
    // The header check is cheap and gives the early, precise error; the body checksum is
    // verified by TieredStore::Put itself (kernels::ValidatePayload, kDataLoss on mismatch),
    // so the payload is hashed once, not twice.
    absl::StatusOr<kernels::PayloadHeader> header = kernels::ParseHeader(*bytes);
    if (!header.ok()) {
      inflight_put_bytes_ -= budget;
      if (hooks_.on_put_block) hooks_.on_put_block(key.ns, "rejected");
      return Fail(req, header.status());
    }
    Offload<absl::StatusOr<storage::PutOutcome>>(
        [this, key, bytes = std::move(bytes)]() mutable {
          return store_->Put(key, std::move(bytes));
        },
        [this, req, ns = key.ns, budget](absl::StatusOr<storage::PutOutcome> outcome) {
          inflight_put_bytes_ -= budget;
          if (!outcome.ok()) {
            if (hooks_.on_put_block) hooks_.on_put_block(ns, "rejected");
            return Fail(req, outcome.status());
          }
          bool dedup = *outcome == storage::PutOutcome::kDeduplicated;
          if (hooks_.on_put_block) hooks_.on_put_block(ns, dedup ? "deduplicated" : "stored");
          v1::UcxResponse resp;
          resp.mutable_put()->add_outcomes(dedup ? v1::PutResponse::DEDUPLICATED
                                                 : v1::PutResponse::STORED);
          resp.set_last(true);
          Send(req, resp, nullptr, 0, 0);
          Done(req);
        });
  }

  // Sends the final (error) response of a request.
  void Fail(const std::shared_ptr<Request>& req, const absl::Status& status) {
    req->code = status.code();
    v1::UcxResponse resp;
    resp.set_code(static_cast<int32_t>(status.code()));
    resp.set_message(std::string(status.message()));
    resp.set_last(true);
    Send(req, resp, nullptr, 0, 0);
    Done(req);
  }

  // Sends one response with bytes [offset, offset + n) of `payload` (none when null) as
  // its AM data; `payload` stays referenced until UCX is done with it.
  void Send(const std::shared_ptr<Request>& req, v1::UcxResponse& resp, Payload payload,
            uint64_t offset, uint64_t n) {
    if (req->conn->failed) return;
    resp.set_request_id(req->request_id);
    auto* ctx = new SendCtx{this, req, resp.SerializeAsString(), std::move(payload), n};
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    p.cb.send = &Impl::OnSendDone;
    p.user_data = ctx;
    const void* data = ctx->payload ? ctx->payload->data() + offset : nullptr;
    if (!ctx->payload) n = 0;
    ucs_status_ptr_t sp = ucp_am_send_nbx(req->conn->ep, kResponseAmId, ctx->header.data(),
                                          ctx->header.size(), data, n, &p);
    if (sp == nullptr) {
      req->bytes_out += n;
      delete ctx;
    } else if (UCS_PTR_IS_ERR(sp)) {
      delete ctx;  // the endpoint is failing; its error callback closes it
    } else {
      req->pending_sends++;
    }
  }

  void Done(const std::shared_ptr<Request>& req) {
    req->processed = true;
    MaybeFinish(req);
  }

  void MaybeFinish(const std::shared_ptr<Request>& req) {
    if (!req->processed || req->pending_sends > 0 || req->finished) return;
    req->finished = true;
    if (hooks_.on_request) {
      hooks_.on_request(req->method, req->code, absl::ToDoubleSeconds(absl::Now() - req->start),
                        req->bytes_in, req->bytes_out);
    }
    inflight_.fetch_sub(1);
  }

  // Constant after construction.
  const UcxDataPlaneOptions options_;
  storage::TieredStore* const store_;
  const UcxHooks hooks_;
  absl::Mutex stop_mu_;                 // serializes Stop callers
  std::unique_ptr<ucx::UcxLoop> loop_;  // set in Start, reset in Stop (under stop_mu_)

  // Loop thread only.
  ucp_listener_h listener_ = nullptr;
  bool draining_ = false;
  std::unordered_map<ucp_ep_h, std::shared_ptr<Conn>> conns_;
  std::vector<std::shared_ptr<Conn>> to_close_;  // failed, to close once no desc is held
  std::deque<absl::AnyInvocable<void()>> deferred_;
  uint64_t inflight_put_bytes_ = 0;
  struct WaitingPut {
    uint64_t bytes;
    std::shared_ptr<Conn> conn;
    absl::AnyInvocable<void()> start;
  };
  std::deque<WaitingPut> waiting_puts_;  // rendezvous puts waiting for budget

  std::unique_ptr<StorePool> pool_;              // null: store calls run inline on the loop thread
  std::unique_ptr<PutBuffers> own_put_buffers_;  // when options_.put_buffers is null
  PutBuffers* put_buffers_ = nullptr;            // set in Start, before the loop runs
  std::atomic<uint64_t> put_buffers_ready_{0};
  std::atomic<uint64_t> put_buffers_allocated_{0};
  absl::Mutex completions_mu_;
  // Continuations of store calls finished on the pool, run by OnIteration.
  std::deque<absl::AnyInvocable<void()>> completions_ ABSL_GUARDED_BY(completions_mu_);
  std::atomic<bool> has_completions_{false};  // !completions_.empty(); written under the mutex

  // Written on the loop thread, read anywhere.
  std::atomic<size_t> inflight_{0};
  std::atomic<uint64_t> connections_accepted_{0};
  std::atomic<uint64_t> connections_open_{0};  // conns_.size(), for other threads
  std::atomic<uint64_t> requests_{0};
  std::atomic<uint64_t> rendezvous_receives_{0};
  std::atomic<uint64_t> rejected_before_receive_{0};
  std::atomic<uint64_t> inline_gets_{0};
  std::atomic<uint64_t> get_pieces_{0};
  std::atomic<uint64_t> puts_queued_{0};
};

UcxDataPlane::UcxDataPlane(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

UcxDataPlane::~UcxDataPlane() { Stop(); }

absl::StatusOr<std::unique_ptr<UcxDataPlane>> UcxDataPlane::Start(
    const UcxDataPlaneOptions& options, storage::TieredStore* store, UcxHooks hooks) {
  if (store == nullptr) return absl::InvalidArgumentError("store is null");
  auto impl = std::make_unique<Impl>(options, store, std::move(hooks));
  uint16_t port = 0;
  KVTIER_RETURN_IF_ERROR(impl->Start(&port));
  std::unique_ptr<UcxDataPlane> plane(new UcxDataPlane(std::move(impl)));
  plane->port_ = port;
  return plane;
}

void UcxDataPlane::Stop() {
  if (impl_ != nullptr) impl_->Stop();
}

size_t UcxDataPlane::inflight_requests() const { return impl_->inflight(); }

UcxDataPlaneStats UcxDataPlane::stats() const { return impl_->stats(); }

}  // namespace kvtier::service
