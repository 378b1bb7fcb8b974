#include "client/ucx/ucx_client.h"

#include <netdb.h>
#include <sched.h>
#include <sys/socket.h>
#include <ucp/api/ucp.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <optional>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/status_macros.h"
#include "common/ucx/ucx_status.h"
#include "proto/kvtier/v1/wire.h"

namespace kvtier::client {
namespace {

constexpr unsigned kRequestAmId = 1;
constexpr unsigned kResponseAmId = 2;

enum class Kind { kLookup, kPut, kGet, kDelete, kRaw };

}  // namespace

class UcxConnection::Impl {
 public:
  explicit Impl(const UcxConnectionOptions& options, std::string token)
      : options_(options), token_(std::move(token)) {}
  ~Impl() { Close(); }

  // One Get hit being received, possibly in pieces (UcxRequest.get_piece_bytes). Shared
  // by the loop thread (which receives the pieces), their receive contexts (which keep
  // `bytes` alive while UCX writes into it) and the calling thread, which checks the bytes
  // of every piece as soon as it and all before it have arrived.
  struct BlockRecv {
    uint32_t index = 0;
    uint64_t total = 0;  // announced payload_bytes
    v1::Tier tier = v1::TIER_UNSPECIFIED;
    std::vector<uint8_t> bytes;  // `total` bytes, allocated at the first piece

    // Loop thread only.
    struct Piece {
      uint64_t offset = 0;
      uint64_t length = 0;
      bool done = false;
    };
    std::vector<Piece> pieces;  // in offset order
    size_t contiguous = 0;      // pieces[0, contiguous) are done
    uint64_t announced = 0;     // sum of the pieces' lengths: the next piece's offset
    int outstanding = 0;        // pieces announced and not done
    bool failed = false;        // the block's status is set; later pieces are dropped
    bool counted = false;       // counted in Pending::received

    // Written by the loop thread under Pending::mu: bytes [0, ready) have arrived.
    uint64_t ready = 0;
  };

  // A request in flight. Fields below `done` are touched on the loop thread only until
  // `done` is notified; the caller reads them afterwards (Get: except what `mu` guards).
  struct Pending {
    uint64_t id = 0;
    Kind kind = Kind::kLookup;
    absl::Time deadline;
    absl::Time started;         // when the caller shipped it
    std::string request_bytes;  // the serialized UcxRequest, alive until the send completes
    const uint8_t* data = nullptr;
    size_t data_bytes = 0;
    absl::Notification done;

    // Get: hand-off of arrived bytes from the loop thread to the calling thread.
    absl::Mutex mu;
    bool finished ABSL_GUARDED_BY(mu) = false;                            // set with `done`
    std::vector<std::shared_ptr<BlockRecv>> arrived ABSL_GUARDED_BY(mu);  // `ready` grew

    absl::Status status;                           // request-level result
    v1::UcxResponse response;                      // the final response (Lookup, Put, Delete)
    std::vector<UcxGetBlock> blocks;               // Get
    std::vector<std::shared_ptr<BlockRecv>> recv;  // Get: per block, set at its first piece
    std::shared_ptr<BlockRecv> open;               // Get: the block whose pieces are arriving
    // Get: receive buffers the caller allocated (zeroed) while the request was in flight,
    // of the size of the connection's last received block; used by the loop thread for a
    // rendezvous block of exactly that size, so it need not zero one itself.
    // 1 while the caller zeroes them (the loop thread then waits a little for them rather
    // than zeroing a buffer of its own at the same time), 2 once they are in `prepared`.
    std::atomic<int> prepared_state{0};
    absl::Mutex prepared_mu;
    std::vector<std::vector<uint8_t>> prepared ABSL_GUARDED_BY(prepared_mu);
    std::vector<bool> have;
    size_t received = 0;
    int receiving = 0;  // rendezvous receives in progress
    bool last_seen = false;
    std::vector<v1::UcxResponse> raw;
    bool send_done = false;
    bool registered = false;
    bool completed = false;
  };

  absl::Status Connect(const std::string& host, uint16_t port, absl::Duration timeout) {
    if (token_.empty()) return absl::InvalidArgumentError("empty UCX session token");
    if (options_.get_piece_bytes != 0 && (options_.get_piece_bytes < v1::wire::kMinGetPieceBytes ||
                                          options_.get_piece_bytes > kernels::kMaxPayloadBytes)) {
      return absl::InvalidArgumentError(
          absl::StrCat("get_piece_bytes is ", options_.get_piece_bytes, "; expected 0 or ",
                       v1::wire::kMinGetPieceBytes, "..", kernels::kMaxPayloadBytes));
    }
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    addrinfo* res = nullptr;
    int rc = getaddrinfo(host.c_str(), std::to_string(port).c_str(), &hints, &res);
    if (rc != 0 || res == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot resolve \"", host, "\": ", gai_strerror(rc)));
    }
    sockaddr_storage addr{};
    socklen_t addr_len = res->ai_addrlen;
    std::memcpy(&addr, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);

    ucx::UcxLoopOptions lo = options_.loop;
    if (!lo.busy_poll_if) lo.busy_poll_if = [this] { return SpinWorthIt(); };
    KVTIER_ASSIGN_OR_RETURN(loop_, ucx::UcxLoop::Start(lo, [this] { OnIteration(); }));
    return loop_->Call([&]() -> absl::Status {
      ucp_am_handler_param_t am{};
      am.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_CB |
                      UCP_AM_HANDLER_PARAM_FIELD_ARG | UCP_AM_HANDLER_PARAM_FIELD_FLAGS;
      am.id = kResponseAmId;
      am.cb = &Impl::OnResponseAm;
      am.arg = this;
      am.flags = UCP_AM_FLAG_WHOLE_MSG;
      KVTIER_UCX_RETURN_IF_ERROR(ucp_worker_set_am_recv_handler(loop_->worker(), &am),
                                 "ucp_worker_set_am_recv_handler");
      ucp_ep_params_t p{};
      p.field_mask = UCP_EP_PARAM_FIELD_FLAGS | UCP_EP_PARAM_FIELD_SOCK_ADDR |
                     UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE | UCP_EP_PARAM_FIELD_ERR_HANDLER;
      p.flags = UCP_EP_PARAMS_FLAGS_CLIENT_SERVER;
      p.sockaddr.addr = reinterpret_cast<const sockaddr*>(&addr);
      p.sockaddr.addrlen = addr_len;
      p.err_mode = UCP_ERR_HANDLING_MODE_PEER;
      p.err_handler.cb = &Impl::OnEpError;
      p.err_handler.arg = this;
      ucs_status_t s = ucp_ep_create(loop_->worker(), &p, &ep_);
      if (s != UCS_OK) {
        ep_ = nullptr;
        broken_ = true;
        return absl::UnavailableError(
            absl::StrCat("connecting to ", host, ":", port, ": ", ucs_status_string(s)));
      }
      // A flush completes once the endpoint is wired up (or fails if it cannot be).
      connect_flush_ = UCS_INPROGRESS;
      ucp_request_param_t fp{};
      fp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
      fp.cb.send = [](void* request, ucs_status_t status, void* user_data) {
        *static_cast<ucs_status_t*>(user_data) = status;
      };
      fp.user_data = &connect_flush_;
      ucs_status_ptr_t sp = ucp_ep_flush_nbx(ep_, &fp);
      bool timed_out = false;
      if (sp == nullptr) {
        connect_flush_ = UCS_OK;
      } else if (UCS_PTR_IS_ERR(sp)) {
        connect_flush_ = UCS_PTR_STATUS(sp);
      } else {
        timed_out = !loop_->ProgressUntil(
            [&] { return connect_flush_ != UCS_INPROGRESS || broken_; }, timeout);
        if (connect_flush_ == UCS_INPROGRESS) CloseEndpoint(/*force=*/true);  // completes it
        ucp_request_free(sp);
      }
      if (timed_out) {
        CloseEndpoint(/*force=*/true);
        broken_ = true;
        return absl::DeadlineExceededError(absl::StrCat(
            "connecting to ", host, ":", port, ": no answer in ", absl::FormatDuration(timeout)));
      }
      if (connect_flush_ != UCS_OK || broken_) {
        ucs_status_t why = ep_error_ != UCS_OK ? ep_error_ : connect_flush_;
        CloseEndpoint(/*force=*/true);
        broken_ = true;
        return absl::UnavailableError(
            absl::StrCat("connecting to ", host, ":", port, ": ", ucs_status_string(why)));
      }
      return absl::OkStatus();
    });
  }

  void Close() {
    absl::MutexLock lock(&close_mu_);
    if (loop_ == nullptr) return;
    (void)loop_->Call([this]() -> absl::Status {
      broken_ = true;
      FailAll(absl::UnavailableError("UCX connection closed"));
      // A graceful close would wait for sends still in flight (a Put whose payload the
      // server has not pulled yet); force it then, which completes them as cancelled.
      bool sending = false;
      for (const auto& [id, p] : pending_) sending |= p->registered && !p->send_done;
      CloseEndpoint(/*force=*/sending);
      loop_->ProgressUntil([this] { return pending_.empty(); }, absl::Seconds(2));
      return absl::OkStatus();
    });
    loop_->Stop();
    loop_.reset();
    // The worker is gone, so UCX reads no caller buffer any more: release any caller still
    // waiting (not expected after the forced close, but never leave one blocked).
    for (auto& [id, p] : pending_) {
      if (p->completed) continue;
      if (p->status.ok()) p->status = absl::UnavailableError("UCX connection closed");
      p->completed = true;
      Finish(*p);
    }
    pending_.clear();
  }

  bool connected() const { return !broken_.load(); }

  absl::StatusOr<std::string> EndpointInfo() {
    absl::ReaderMutexLock lock(&close_mu_);
    if (loop_ == nullptr || broken_.load()) {
      return absl::UnavailableError("UCX connection is closed");
    }
    std::string out;
    absl::Status s = loop_->Call([&]() -> absl::Status {
      if (ep_ == nullptr) return absl::UnavailableError("UCX connection is closed");
      char* text = nullptr;
      size_t len = 0;
      FILE* f = open_memstream(&text, &len);
      if (f == nullptr) return absl::ResourceExhaustedError("open_memstream failed");
      ucp_ep_print_info(ep_, f);
      std::fclose(f);
      out.assign(text, len);
      std::free(text);
      return absl::OkStatus();
    });
    if (!s.ok()) return s;
    return out;
  }

  // Runs a request: builds nothing, just ships p (request_bytes set) and waits.
  void Run(const std::shared_ptr<Pending>& p, absl::Duration timeout) {
    if (Ship(p, timeout)) Wait(*p);
  }

  // Hands p to the loop thread. False (p->status set) when it was not sent.
  bool Ship(const std::shared_ptr<Pending>& p, absl::Duration timeout) {
    if (timeout < absl::ZeroDuration()) {
      p->status = absl::DeadlineExceededError("UCX request deadline already passed");
      return false;
    }
    if (timeout == absl::ZeroDuration()) timeout = options_.request_timeout;
    p->started = absl::Now();
    p->deadline = p->started + timeout;
    absl::ReaderMutexLock lock(&close_mu_);
    if (broken_.load() || loop_ == nullptr || !loop_->Post([this, p] { Start(p); })) {
      p->status = absl::UnavailableError("UCX connection is closed");
      return false;
    }
    return true;
  }

  // Waits for p's answer.
  void Wait(Pending& p) { p.done.WaitForNotification(); }

  // Get: waits for p's answer while checking each hit's bytes as they arrive (the body
  // checksum, XXH3-64, piece by piece, on this thread while the loop thread receives the
  // next piece); at the end every hit is exactly kernels::ValidatePayload-checked (header
  // parsed, body checksum compared) or becomes a kDataLoss block without bytes.
  void WaitAndCheck(Pending& p) {
    std::vector<kernels::IncrementalValidator> checks(p.blocks.size());
    std::vector<std::pair<std::shared_ptr<BlockRecv>, uint64_t>> todo;
    bool finished = false;
    while (!finished) {
      todo.clear();
      {
        absl::MutexLock lock(&p.mu);
        p.mu.Await(absl::Condition(
            +[](Pending* q) ABSL_EXCLUSIVE_LOCKS_REQUIRED(q->mu) {
              return q->finished || !q->arrived.empty();
            },
            &p));
        for (std::shared_ptr<BlockRecv>& r : p.arrived) {
          const uint64_t ready = r->ready;
          todo.emplace_back(std::move(r), ready);
        }
        p.arrived.clear();
        finished = p.finished;
      }
      for (const auto& [r, ready] : todo) {
        checks[r->index].Update(absl::MakeConstSpan(r->bytes.data(), ready));
      }
    }
    p.done.WaitForNotification();
    if (!p.status.ok()) return;
    // Every receive has ended: the loop thread no longer touches the blocks.
    for (size_t i = 0; i < p.blocks.size(); ++i) {
      BlockRecv* r = p.recv[i].get();
      UcxGetBlock& b = p.blocks[i];
      if (r == nullptr || !b.status.ok()) continue;
      absl::Status valid = r->ready != r->total
                               ? absl::DataLossError(absl::StrCat("block has ", r->ready, " of ",
                                                                  r->total, " bytes"))
                               : checks[i].Finish(r->bytes);
      if (!valid.ok()) {
        b.status = absl::DataLossError(
            absl::StrCat("received block failed validation: ", valid.message()));
        continue;
      }
      b.payload = std::move(r->bytes);
      b.tier = r->tier;
    }
  }

  uint64_t NextId() { return next_id_.fetch_add(1); }
  size_t last_get_bytes() const { return last_get_bytes_.load(std::memory_order_relaxed); }
  uint64_t prepared_receives() const { return prepared_receives_.load(); }
  const std::string& token() const { return token_; }
  const UcxConnectionOptions& options() const { return options_; }

 private:
  struct SendCtx {
    Impl* self;
    std::shared_ptr<Pending> p;
  };
  struct RecvCtx {
    Impl* self;
    std::shared_ptr<Pending> p;
    std::shared_ptr<BlockRecv> r;
    size_t piece;
  };
  friend class UcxConnection;

  // ---- loop thread ----

  // Whether the loop should busy-poll after activity: only while answers come back fast.
  // A connection whose requests wait in a busy server's queue for milliseconds (many
  // clients) would burn a CPU polling for nothing, and with many connections in one
  // process those CPUs are the server's or the other connections'. 4 MiB UCX puts at 64
  // clients on the 2-vCPU VM: 4.4-4.9 GB/s always polling, 5.3-5.8 never; at 1 client
  // polling saves a wake-up per request (Lookup p50 0.20 vs 0.24 ms).
  bool SpinWorthIt() const { return answer_us_ < kSpinAnswerUs; }
  static constexpr double kSpinAnswerUs = 1000;

  void Start(const std::shared_ptr<Pending>& p) {
    if (broken_ || ep_ == nullptr) {
      return Fail(p, absl::UnavailableError("UCX connection is closed"));
    }
    pending_[p->id] = p;
    p->registered = true;
    const void* header = p->request_bytes.data();
    size_t header_len = p->request_bytes.size();
    const void* data = p->data;
    size_t data_len = p->data_bytes;
    if (p->kind != Kind::kPut && p->kind != Kind::kRaw && header_len > loop_->max_am_header()) {
      // Too big for an AM header (long chains): the request travels as the data.
      data = header;
      data_len = header_len;
      header = nullptr;
      header_len = 0;
    }
    auto* ctx = new SendCtx{this, p};
    ucp_request_param_t rp{};
    rp.op_attr_mask =
        UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_FLAGS;
    rp.cb.send = &Impl::OnSendDone;
    rp.user_data = ctx;
    rp.flags = UCP_AM_SEND_FLAG_REPLY;
    ucs_status_ptr_t sp =
        ucp_am_send_nbx(ep_, kRequestAmId, header, header_len, data, data_len, &rp);
    if (sp == nullptr) {
      delete ctx;
      p->send_done = true;
    } else if (UCS_PTR_IS_ERR(sp)) {
      delete ctx;
      p->send_done = true;
      Fail(p, absl::UnavailableError(
                  ucx::FromUcs(UCS_PTR_STATUS(sp), "sending UCX request").message()));
    }  // else: OnSendDone runs when UCX no longer reads the data
  }

  static void OnSendDone(void* request, ucs_status_t status, void* user_data) {
    auto* ctx = static_cast<SendCtx*>(user_data);
    Impl* self = ctx->self;
    std::shared_ptr<Pending> p = std::move(ctx->p);
    delete ctx;
    ucp_request_free(request);
    p->send_done = true;
    if (status != UCS_OK && p->status.ok()) {
      p->status =
          status == UCS_ERR_CANCELED && absl::Now() >= p->deadline
              ? absl::DeadlineExceededError("UCX request deadline exceeded")
              : absl::UnavailableError(ucx::FromUcs(status, "sending UCX request").message());
    }
    self->MaybeComplete(p);
  }

  static void OnEpError(void* arg, ucp_ep_h ep, ucs_status_t status) {
    auto* self = static_cast<Impl*>(arg);
    if (ep != self->ep_) return;
    self->ep_error_ = status;
    self->broken_ = true;
    self->deferred_close_ = true;  // ucp_ep_close_nbx outside the callback
  }

  static ucs_status_t OnResponseAm(void* arg, const void* header, size_t header_length, void* data,
                                   size_t length, const ucp_am_recv_param_t* param) {
    auto* self = static_cast<Impl*>(arg);
    bool rndv = (param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0;
    v1::UcxResponse resp;
    if (!resp.ParseFromArray(header, static_cast<int>(header_length))) return UCS_OK;
    auto it = self->pending_.find(resp.request_id());
    if (it == self->pending_.end()) return UCS_OK;  // late answer after a deadline: drop
    std::shared_ptr<Pending> p = it->second;
    if (p->completed || !p->status.ok()) return UCS_OK;
    ucs_status_t ret = UCS_OK;
    switch (p->kind) {
      case Kind::kGet:
        ret = self->OnGetResponse(p, resp, data, length, rndv);
        break;
      case Kind::kRaw:
        p->raw.push_back(resp);
        if (resp.last()) p->last_seen = true;
        break;
      default:
        if (length > 0) {
          p->status = absl::InternalError("UCX response carries unexpected data");
        } else {
          p->response = std::move(resp);
          p->last_seen = true;
        }
        break;
    }
    self->MaybeComplete(p);
    return ret;
  }

  ucs_status_t OnGetResponse(const std::shared_ptr<Pending>& p, v1::UcxResponse& resp, void* data,
                             size_t length, bool rndv) {
    ucs_status_t ret = OnGetPiece(p, resp, data, length, rndv);
    if (resp.last()) {
      p->last_seen = true;
      EndOpenBlock(*p);
    }
    return ret;
  }

  // One Get response: a miss, a whole hit, or one piece of a hit (UcxResponse.offset).
  ucs_status_t OnGetPiece(const std::shared_ptr<Pending>& p, const v1::UcxResponse& resp,
                          void* data, size_t length, bool rndv) {
    if (!resp.has_get()) {
      // A request-level answer: an error (or a protocol violation).
      p->status = resp.code() != 0
                      ? absl::Status(static_cast<absl::StatusCode>(resp.code()), resp.message())
                      : absl::InternalError("UCX Get response without a block");
      return UCS_OK;
    }
    const v1::GetResponse& g = resp.get();
    const uint32_t i = g.index();
    const bool continues =
        p->open != nullptr && p->open->index == i && g.has_header() && resp.offset() > 0;
    if (!continues) {
      EndOpenBlock(*p);
      if (i >= p->blocks.size() || p->have[i]) {
        p->status =
            absl::InternalError(absl::StrCat("UCX Get response for block ", i, " of ",
                                             p->blocks.size(), " is out of order or repeated"));
        return UCS_OK;
      }
      p->have[i] = true;
      UcxGetBlock& b = p->blocks[i];
      if (!g.has_header()) {
        if (length > 0) {
          b.status = absl::DataLossError("UCX Get miss carries data");
        } else if (g.has_miss() && g.miss().code() != 0) {
          b.status =
              absl::Status(static_cast<absl::StatusCode>(g.miss().code()), g.miss().message());
        }  // else: a plain miss
        p->received++;
        return UCS_OK;
      }
      auto r = std::make_shared<BlockRecv>();
      r->index = i;
      r->total = g.header().payload_bytes();
      r->tier = g.header().tier();
      p->recv[i] = r;
      p->open = r;
      if (r->total < kernels::kPayloadHeaderBytes || r->total > options_.max_payload_bytes) {
        FailBlock(*p, *r,
                  absl::DataLossError(absl::StrCat(
                      "UCX Get block ", i, " announced ", r->total, " bytes; expected ",
                      kernels::kPayloadHeaderBytes, "..", options_.max_payload_bytes)));
        return UCS_OK;  // rendezvous data is dropped
      }
      r->bytes = ReceiveBuffer(*p, i, r->total);
    }
    const std::shared_ptr<BlockRecv> r = p->open;
    if (r->failed) return UCS_OK;  // the rest of a failed block is dropped
    if (g.header().payload_bytes() != r->total || resp.offset() != r->announced || length == 0 ||
        length > r->total - r->announced) {
      FailBlock(*p, *r,
                absl::DataLossError(absl::StrCat(
                    "UCX Get block ", i, " of ", r->total, " bytes: a piece of ", length,
                    " bytes at offset ", resp.offset(), " (announcing ", g.header().payload_bytes(),
                    " bytes) where offset ", r->announced, " was due")));
      return UCS_OK;
    }
    const size_t k = r->pieces.size();
    r->pieces.push_back(BlockRecv::Piece{resp.offset(), length, false});
    r->announced += length;
    r->outstanding++;
    uint8_t* dst = r->bytes.data() + resp.offset();
    if (!rndv) {
      std::memcpy(dst, data, length);
      PieceDone(*p, r, k, UCS_OK);
      return UCS_OK;
    }
    auto* ctx = new RecvCtx{this, p, r, k};
    ucp_request_param_t rp{};
    rp.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    rp.cb.recv_am = &Impl::OnRecvDone;
    rp.user_data = ctx;
    p->receiving++;
    ucs_status_ptr_t sp = ucp_am_recv_data_nbx(loop_->worker(), data, dst, length, &rp);
    if (sp == nullptr) {
      FinishRecv(ctx, UCS_OK);
    } else if (UCS_PTR_IS_ERR(sp)) {
      FinishRecv(ctx, UCS_PTR_STATUS(sp));
    }
    // UCP owns the descriptor after ucp_am_recv_data_nbx, whatever it returned.
    return UCS_INPROGRESS;
  }

  // A buffer of n bytes for block i: one the caller zeroed ahead when it has that size,
  // else a fresh one.
  std::vector<uint8_t> ReceiveBuffer(Pending& p, uint32_t i, uint64_t n) {
    last_get_bytes_.store(n, std::memory_order_relaxed);
    std::vector<uint8_t> buf;
    if (p.prepared_state.load(std::memory_order_acquire) == 1) {
      // The caller is zeroing a buffer for this (about 0.1 ms for 4 MiB): wait for it
      // (yielding the CPU, which the caller may need) rather than zero one here too. The
      // bound is only for a caller starved of CPU for that long.
      const absl::Time until = absl::Now() + absl::Milliseconds(50);
      while (p.prepared_state.load(std::memory_order_acquire) == 1 && absl::Now() < until) {
        sched_yield();
      }
    }
    {
      absl::MutexLock lock(&p.prepared_mu);
      if (i < p.prepared.size() && p.prepared[i].size() == n) {
        buf = std::move(p.prepared[i]);
        prepared_receives_.fetch_add(1, std::memory_order_relaxed);
      }
    }
    if (buf.size() != n) buf.resize(n);  // none prepared (yet): zero one here
    return buf;
  }

  static void OnRecvDone(void* request, ucs_status_t status, size_t length, void* user_data) {
    auto* ctx = static_cast<RecvCtx*>(user_data);
    Impl* self = ctx->self;
    std::shared_ptr<Pending> p = ctx->p;
    ucp_request_free(request);
    self->FinishRecv(ctx, status);
    self->MaybeComplete(p);
  }

  void FinishRecv(RecvCtx* ctx, ucs_status_t status) {
    ctx->p->receiving--;
    PieceDone(*ctx->p, ctx->r, ctx->piece, status);
    delete ctx;
  }

  // Piece k of r has arrived (or failed): publishes the bytes that now arrived without a
  // gap from offset 0 to the calling thread, which checks them.
  void PieceDone(Pending& p, const std::shared_ptr<BlockRecv>& r, size_t k, ucs_status_t status) {
    r->outstanding--;
    if (status != UCS_OK) {
      FailBlock(p, *r,
                absl::UnavailableError(ucx::FromUcs(status, "receiving UCX Get block").message()));
      return;
    }
    if (r->failed) return;
    r->pieces[k].done = true;
    uint64_t ready = 0;
    bool grew = false;
    while (r->contiguous < r->pieces.size() && r->pieces[r->contiguous].done) {
      ready = r->pieces[r->contiguous].offset + r->pieces[r->contiguous].length;
      r->contiguous++;
      grew = true;
    }
    if (grew) {
      absl::MutexLock lock(&p.mu);
      r->ready = ready;
      p.arrived.push_back(r);
    }
    if (!r->counted && r->announced == r->total && r->outstanding == 0) {
      r->counted = true;
      p.received++;
    }
  }

  // Sets the block's error (the first one stays) and counts it as received; its pieces
  // still in flight only end their receives.
  static void FailBlock(Pending& p, BlockRecv& r, absl::Status s) {
    if (!r.failed) {
      r.failed = true;
      p.blocks[r.index].status = std::move(s);
    }
    if (!r.counted) {
      r.counted = true;
      p.received++;
    }
  }

  // The open block's pieces are over (another block's response or `last` came): it must
  // have announced all of its bytes.
  static void EndOpenBlock(Pending& p) {
    std::shared_ptr<BlockRecv> r = std::move(p.open);
    if (r == nullptr || r->failed || r->announced == r->total) return;
    FailBlock(p, *r,
              absl::DataLossError(absl::StrCat("UCX Get block ", r->index, " ended after ",
                                               r->announced, " of ", r->total, " bytes")));
  }

  void Fail(const std::shared_ptr<Pending>& p, absl::Status s) {
    if (p->status.ok()) p->status = std::move(s);
    MaybeComplete(p);
  }

  // Marks p answered: wakes its caller (Wait or WaitAndCheck).
  static void Finish(Pending& p) {
    {
      absl::MutexLock lock(&p.mu);
      p.finished = true;
    }
    p.done.Notify();
  }

  void MaybeComplete(const std::shared_ptr<Pending>& p) {
    if (p->completed) return;
    // The caller's Put buffer must not be referenced once the call returns.
    if (p->registered && !p->send_done) return;
    if (p->status.ok()) {
      if (!p->last_seen) return;
      if (p->kind == Kind::kGet && (p->receiving > 0 || p->received < p->blocks.size())) {
        if (p->receiving == 0) {
          p->status = absl::InternalError("UCX Get answer ended before every block");
        } else {
          return;
        }
      }
    }
    p->completed = true;
    if (p->registered) {
      pending_.erase(p->id);
      // Moving average of the answer time (1/8 weight per request), for SpinWorthIt.
      const double us = absl::ToDoubleMicroseconds(absl::Now() - p->started);
      answer_us_ += (us - answer_us_) / 8;
    }
    Finish(*p);
  }

  void FailAll(const absl::Status& s) {
    std::vector<std::shared_ptr<Pending>> all;
    for (auto& [id, p] : pending_) all.push_back(p);
    for (auto& p : all) Fail(p, s);
  }

  void CloseEndpoint(bool force) {
    if (ep_ == nullptr) return;
    ucp_request_param_t p{};
    p.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    p.flags = force ? UCP_EP_CLOSE_FLAG_FORCE : 0;
    ucs_status_ptr_t sp = ucp_ep_close_nbx(ep_, &p);
    ep_ = nullptr;
    if (sp != nullptr && !UCS_PTR_IS_ERR(sp)) {
      loop_->ProgressUntil([&] { return ucp_request_check_status(sp) != UCS_INPROGRESS; },
                           absl::Seconds(1));
      ucp_request_free(sp);
    }
    // Sends still pending were completed (with an error) by the close.
    FailAll(absl::UnavailableError("UCX connection closed"));
  }

  void OnIteration() {
    if (deferred_close_) {
      deferred_close_ = false;
      FailAll(absl::UnavailableError(
          absl::StrCat("UCX connection lost: ", ucs_status_string(ep_error_))));
      CloseEndpoint(/*force=*/true);
      return;
    }
    if (pending_.empty()) return;
    absl::Time now = absl::Now();
    if (now < next_deadline_check_) return;
    next_deadline_check_ = now + absl::Milliseconds(1);
    std::vector<std::shared_ptr<Pending>> expired;
    for (auto& [id, p] : pending_) {
      if (now >= p->deadline) expired.push_back(p);
    }
    bool must_close = false;
    for (auto& p : expired) {
      Fail(p, absl::DeadlineExceededError("UCX request deadline exceeded"));
      if (!p->completed) must_close = true;  // UCX still reads the caller's buffer
    }
    if (must_close && ep_ != nullptr) {
      broken_ = true;
      CloseEndpoint(/*force=*/true);
    }
  }

  // Constant after construction.
  const UcxConnectionOptions options_;
  const std::string token_;
  std::unique_ptr<ucx::UcxLoop> loop_;  // set by Connect, reset by Close
  absl::Mutex close_mu_;
  std::atomic<size_t> last_get_bytes_{0};  // size of the last rendezvous Get block received
  std::atomic<uint64_t> prepared_receives_{0};

  std::atomic<uint64_t> next_id_{1};
  std::atomic<bool> broken_{false};

  // Loop thread only.
  ucp_ep_h ep_ = nullptr;
  ucs_status_t ep_error_ = UCS_OK;
  bool deferred_close_ = false;
  std::unordered_map<uint64_t, std::shared_ptr<Pending>> pending_;
  ucs_status_t connect_flush_ = UCS_OK;  // written by the flush callback of Connect
  double answer_us_ = 0;                 // moving average of request answer times
  absl::Time next_deadline_check_ = absl::InfinitePast();
};

UcxConnection::UcxConnection(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

UcxConnection::~UcxConnection() { Close(); }

void UcxConnection::Close() { impl_->Close(); }

bool UcxConnection::connected() const { return impl_->connected(); }

absl::StatusOr<std::string> UcxConnection::EndpointInfo() const { return impl_->EndpointInfo(); }

uint64_t UcxConnection::PreparedReceivesForTesting() const { return impl_->prepared_receives(); }

absl::StatusOr<std::unique_ptr<UcxConnection>> UcxConnection::Connect(
    const std::string& host, uint16_t port, std::string session_token, absl::Duration timeout,
    const UcxConnectionOptions& options) {
  auto impl = std::make_shared<Impl>(options, std::move(session_token));
  absl::Status s = impl->Connect(host, port, timeout);
  if (!s.ok()) {
    impl->Close();
    return s;
  }
  return std::unique_ptr<UcxConnection>(new UcxConnection(std::move(impl)));
}

namespace {

void FillChain(google::protobuf::RepeatedPtrField<std::string>* out,
               absl::Span<const kernels::ChainHash> chain) {
  out->Reserve(static_cast<int>(chain.size()));
  for (const kernels::ChainHash& h : chain) {
    out->Add(std::string(reinterpret_cast<const char*>(h.data()), h.size()));
  }
}

absl::Status ResponseStatus(const v1::UcxResponse& r) {
  if (r.code() == 0) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(r.code()), r.message());
}

}  // namespace

absl::StatusOr<uint32_t> UcxConnection::Lookup(absl::string_view ns, uint32_t part,
                                               absl::Span<const kernels::ChainHash> chain,
                                               uint32_t block_tokens, absl::Duration timeout) {
  auto p = std::make_shared<Impl::Pending>();
  p->id = impl_->NextId();
  p->kind = Kind::kLookup;
  v1::UcxRequest r;
  r.set_session_token(impl_->token());
  r.set_request_id(p->id);
  v1::LookupRequest* l = r.mutable_lookup();
  l->set_namespace_(std::string(ns));
  l->set_part(part);
  l->set_block_tokens(block_tokens);
  FillChain(l->mutable_chain_hashes(), chain);
  p->request_bytes = r.SerializeAsString();
  impl_->Run(p, timeout);
  KVTIER_RETURN_IF_ERROR(p->status);
  KVTIER_RETURN_IF_ERROR(ResponseStatus(p->response));
  if (!p->response.has_lookup()) return absl::InternalError("UCX Lookup answer without result");
  return p->response.lookup().num_present();
}

struct UcxPendingPut::State {
  std::function<absl::StatusOr<v1::PutResponse::Outcome>()> wait;  // runs once
  std::optional<absl::StatusOr<v1::PutResponse::Outcome>> result;
};

UcxPendingPut::UcxPendingPut(std::unique_ptr<State> state) : state_(std::move(state)) {}
UcxPendingPut::UcxPendingPut(UcxPendingPut&&) noexcept = default;
UcxPendingPut& UcxPendingPut::operator=(UcxPendingPut&& other) noexcept {
  if (this != &other) {
    if (state_ != nullptr && !state_->result.has_value()) (void)Wait();
    state_ = std::move(other.state_);
  }
  return *this;
}
UcxPendingPut::~UcxPendingPut() {
  if (state_ != nullptr && !state_->result.has_value()) (void)Wait();
}

absl::StatusOr<v1::PutResponse::Outcome> UcxPendingPut::Wait() {
  if (state_ == nullptr) return absl::FailedPreconditionError("moved-from UcxPendingPut");
  if (!state_->result.has_value()) {
    state_->result = state_->wait();
    state_->wait = nullptr;  // drops the request and the connection it kept alive
  }
  return *state_->result;
}

UcxPendingPut UcxConnection::StartPut(absl::string_view ns, const kernels::ChainHash& chain_hash,
                                      uint32_t part, const uint8_t* payload, size_t n,
                                      absl::Duration timeout) {
  auto p = std::make_shared<Impl::Pending>();
  p->id = impl_->NextId();
  p->kind = Kind::kPut;
  v1::UcxRequest r;
  r.set_session_token(impl_->token());
  r.set_request_id(p->id);
  v1::PutBlockHeader* h = r.mutable_put();
  h->mutable_key()->set_namespace_(std::string(ns));
  h->mutable_key()->set_chain_hash(
      std::string(reinterpret_cast<const char*>(chain_hash.data()), chain_hash.size()));
  h->mutable_key()->set_part(part);
  h->set_payload_bytes(n);
  p->request_bytes = r.SerializeAsString();
  p->data = payload;
  p->data_bytes = n;
  const bool shipped = impl_->Ship(p, timeout);
  auto state = std::make_unique<UcxPendingPut::State>();
  // Holds the connection's implementation (its loop thread) until the answer is taken.
  state->wait = [impl = impl_, p, shipped]() -> absl::StatusOr<v1::PutResponse::Outcome> {
    if (shipped) impl->Wait(*p);
    KVTIER_RETURN_IF_ERROR(p->status);
    KVTIER_RETURN_IF_ERROR(ResponseStatus(p->response));
    if (!p->response.has_put() || p->response.put().outcomes_size() != 1) {
      return absl::InternalError("UCX Put answer without one outcome");
    }
    return p->response.put().outcomes(0);
  };
  return UcxPendingPut(std::move(state));
}

absl::StatusOr<v1::PutResponse::Outcome> UcxConnection::Put(absl::string_view ns,
                                                            const kernels::ChainHash& chain_hash,
                                                            uint32_t part, const uint8_t* payload,
                                                            size_t n, absl::Duration timeout) {
  return StartPut(ns, chain_hash, part, payload, n, timeout).Wait();
}

absl::StatusOr<std::vector<UcxGetBlock>> UcxConnection::Get(
    absl::string_view ns, uint32_t part, absl::Span<const kernels::ChainHash> chain,
    absl::Duration timeout) {
  auto p = std::make_shared<Impl::Pending>();
  p->id = impl_->NextId();
  p->kind = Kind::kGet;
  p->blocks.resize(chain.size());
  p->recv.resize(chain.size());
  p->have.assign(chain.size(), false);
  v1::UcxRequest r;
  r.set_session_token(impl_->token());
  r.set_request_id(p->id);
  r.set_get_piece_bytes(impl_->options().get_piece_bytes);
  v1::GetRequest* g = r.mutable_get();
  g->set_namespace_(std::string(ns));
  g->set_part(part);
  FillChain(g->mutable_chain_hashes(), chain);
  p->request_bytes = r.SerializeAsString();
  const size_t hint = impl_->last_get_bytes();
  if (hint > 0) p->prepared_state.store(1, std::memory_order_release);
  if (impl_->Ship(p, timeout)) {
    // While the request travels, zero receive buffers (at most 4 blocks, 64 MiB, of the
    // last size received) and hand them to the loop thread, so that it need not zero one
    // when the data arrives; a block that arrives first gets a buffer zeroed there.
    constexpr size_t kMaxPrepared = 4;
    constexpr size_t kMaxPreparedBytes = size_t{64} << 20;
    if (hint > 0) {
      std::vector<std::vector<uint8_t>> prepared(
          std::min({chain.size(), kMaxPrepared, kMaxPreparedBytes / hint}));
      for (std::vector<uint8_t>& b : prepared) b.resize(hint);
      {
        absl::MutexLock lock(&p->prepared_mu);
        p->prepared = std::move(prepared);
      }
      p->prepared_state.store(2, std::memory_order_release);
    }
    impl_->WaitAndCheck(*p);
  }
  KVTIER_RETURN_IF_ERROR(p->status);
  return std::move(p->blocks);
}

absl::StatusOr<uint32_t> UcxConnection::Delete(absl::string_view ns, uint32_t part,
                                               absl::Span<const kernels::ChainHash> chain,
                                               absl::Duration timeout) {
  auto p = std::make_shared<Impl::Pending>();
  p->id = impl_->NextId();
  p->kind = Kind::kDelete;
  v1::UcxRequest r;
  r.set_session_token(impl_->token());
  r.set_request_id(p->id);
  v1::DeleteRequest* d = r.mutable_delete_();
  d->set_namespace_(std::string(ns));
  d->set_part(part);
  FillChain(d->mutable_chain_hashes(), chain);
  p->request_bytes = r.SerializeAsString();
  impl_->Run(p, timeout);
  KVTIER_RETURN_IF_ERROR(p->status);
  KVTIER_RETURN_IF_ERROR(ResponseStatus(p->response));
  if (!p->response.has_delete_()) return absl::InternalError("UCX Delete answer without result");
  return p->response.delete_().deleted();
}

absl::StatusOr<std::vector<v1::UcxResponse>> UcxConnection::RawRequestForTesting(
    std::string header, uint64_t request_id, const uint8_t* data, size_t n,
    absl::Duration timeout) {
  auto p = std::make_shared<Impl::Pending>();
  p->id = request_id;
  p->kind = Kind::kRaw;
  p->request_bytes = std::move(header);
  p->data = data;
  p->data_bytes = n;
  impl_->Run(p, timeout);
  KVTIER_RETURN_IF_ERROR(p->status);
  return std::move(p->raw);
}

}  // namespace kvtier::client
