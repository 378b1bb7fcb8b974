// UcxLoop: one UCP context and worker driven by one dedicated thread (the "loop thread").
// Every UCX call of a worker in UCS_THREAD_MODE_SINGLE must happen on that thread, so the
// owner of a loop (the UCX data-plane server, a client connection) runs its UCX code in
// tasks posted to the loop, in the iteration hook, or in UCX callbacks (which UCX invokes
// from ucp_worker_progress on the loop thread).
//
//   UcxLoopOptions o;
//   o.ucx_config = {{"TLS", "tcp,self"}};
//   KVTIER_ASSIGN_OR_RETURN(std::unique_ptr<UcxLoop> loop,
//                           UcxLoop::Start(o, [this] { OnIteration(); }));
//   KVTIER_RETURN_IF_ERROR(loop->Call([&]() -> absl::Status {
//     return FromUcs(ucp_worker_set_am_recv_handler(loop->worker(), &param), "am handler");
//   }));
//   loop->Post([this] { SendSomething(); });  // from any thread
//   ...
//   loop->Stop();  // after the owner has closed its endpoints (in a Call)
//
// The loop progresses the worker, runs posted tasks and the iteration hook, then (after
// `busy_poll` without activity) sleeps on the worker's event fd (ucp_worker_arm + poll) for
// at most `max_sleep`. Post wakes it with ucp_worker_signal, which is safe from any thread.
//
// Thread safety: Post, Call, Wake, InLoopThread and Stop are safe from any thread;
// context(), worker() and ProgressUntil are for the loop thread only.
#ifndef KVTIER_COMMON_UCX_UCX_LOOP_H_
#define KVTIER_COMMON_UCX_UCX_LOOP_H_

#include <ucp/api/ucp.h>

#include <atomic>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace kvtier::ucx {

struct UcxLoopOptions {
  // Name of the loop thread (Linux keeps the first 15 bytes). Default: "kvtier-ucx".
  std::string name = "kvtier-ucx";
  // UCX configuration overrides applied on top of the UCX_* environment variables, as
  // (name without the UCX_ prefix, value), e.g. {{"TLS", "tcp,self"}}. Fixed at Start.
  // Default: none (the environment and UCX's defaults decide).
  std::vector<std::pair<std::string, std::string>> ucx_config;
  // UCX settings kvtier prefers over UCX's own defaults. Each applies only when the
  // environment does not set its variable and `ucx_config` does not name it; one this UCX
  // version does not know is skipped (UCX logs a warning). Fixed at Start.
  // Default: DefaultUcxSettings().
  struct Setting {
    std::string name;  // as ucp_config_modify takes it, e.g. "MEMORY_INVALIDATE"
    std::string env;   // the variable that overrides it, e.g. "UCX_CMA_MEMORY_INVALIDATE"
    std::string value;
  };
  std::vector<Setting> ucx_defaults = DefaultUcxSettings();
  // How long the loop keeps polling the worker after its last activity before it sleeps
  // on the event fd. Longer buys latency with CPU. Default: 50 us.
  absl::Duration busy_poll = absl::Microseconds(50);
  // When set, the loop busy-polls (as above) only while this returns true; otherwise it
  // sleeps as soon as it is idle. Called on the loop thread when idle; must be cheap.
  // Default: unset (always busy-poll).
  std::function<bool()> busy_poll_if;
  // Longest sleep between two runs of the iteration hook (bounds timer latency of the
  // owner, e.g. deadline checks). Default: 5 ms.
  absl::Duration max_sleep = absl::Milliseconds(5);

  // {"MEMORY_INVALIDATE", "UCX_CMA_MEMORY_INVALIDATE", "y"} where
  // CrossMemoryAttachPermitted(), else nothing. Every kvtier endpoint asks for
  // peer-failure error handling, and with it UCX 1.13 takes rendezvous (RMA) lanes only
  // from memory domains that report memory invalidation; CMA does not by default, so two
  // processes on one host moved every rendezvous payload over TCP loopback (copied through
  // the kernel's socket buffers) instead of one process_vm_readv. This setting makes CMA
  // report it (UCX documents it as exactly that switch). Safe for kvtier: rendezvous of
  // host memory uses the get scheme (the receiver reads the sender's buffer), every buffer
  // stays allocated until its UCX operation completes, and both sides validate every
  // payload (XXH3), so a read racing a closed endpoint can only yield a rejected block.
  // See docs/ucx.md, "Environment".
  static std::vector<Setting> DefaultUcxSettings();
};

// Whether this process may read another process's memory with process_vm_readv (UCX's CMA
// transport): false where Yama restricts ptrace (/proc/sys/kernel/yama/ptrace_scope > 0)
// or a seccomp profile forbids the call (probed once on the process itself). Where it is
// false, UCX must not pick CMA for payloads: a transfer would fail at the first read.
bool CrossMemoryAttachPermitted();

class UcxLoop {
 public:
  // Runs on the loop thread after every progress round (keep it cheap when idle).
  using IterationHook = std::function<void()>;

  // Starts the thread, which creates the context (features AM + WAKEUP) and the worker.
  // Errors: the UCX status of ucp_config_read/modify, ucp_init or ucp_worker_create
  // (kInvalidArgument for a ucx_config value UCX rejects).
  static absl::StatusOr<std::unique_ptr<UcxLoop>> Start(const UcxLoopOptions& options,
                                                        IterationHook on_iteration);

  UcxLoop(const UcxLoop&) = delete;
  UcxLoop& operator=(const UcxLoop&) = delete;
  ~UcxLoop();  // Stop()

  // Loop thread only. Valid from Start until Stop.
  ucp_context_h context() const { return context_; }
  ucp_worker_h worker() const { return worker_; }
  // The largest AM header this worker can send (UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER).
  // Any thread.
  size_t max_am_header() const { return max_am_header_; }

  bool InLoopThread() const;

  // Queues `task` to run on the loop thread and returns true; once the loop has stopped
  // taking tasks, destroys it without running it and returns false. Any thread.
  bool Post(absl::AnyInvocable<void()> task);

  // Runs `fn` on the loop thread and returns its status; runs it inline when called on the
  // loop thread. kFailedPrecondition when the loop has stopped. Any thread.
  absl::Status Call(absl::AnyInvocable<absl::Status()> fn);

  // Makes the loop run an iteration soon (e.g. after state read by the hook changed).
  void Wake();

  // Idle rounds spent busy-polling so far (for tests and benchmarks). Any thread.
  uint64_t busy_polls() const { return busy_polls_.load(std::memory_order_relaxed); }

  // Loop thread only, and never from inside a UCX callback: progresses the worker (and runs
  // the iteration hook, not posted tasks) until `done()` or `timeout`. Returns whether
  // done() became true.
  bool ProgressUntil(const std::function<bool()>& done, absl::Duration timeout);

  // Runs the tasks already posted, destroys the worker and the context on the loop thread
  // and joins it. The owner must have closed its endpoints and listeners first. Idempotent;
  // must not be called on the loop thread.
  void Stop();

 private:
  UcxLoop(const UcxLoopOptions& options, IterationHook on_iteration);
  void Main(absl::Status* init_status, absl::Notification* init_done);
  absl::Status Init();
  bool RunTasks();  // true when it ran at least one task

  // Constant after construction.
  const UcxLoopOptions options_;
  const IterationHook on_iteration_;

  // Set by the loop thread before Start returns; read-only afterwards.
  ucp_context_h context_ = nullptr;
  ucp_worker_h worker_ = nullptr;
  int event_fd_ = -1;
  size_t max_am_header_ = 0;
  std::thread::id loop_thread_id_;
  std::thread thread_;

  std::atomic<bool> stop_requested_{false};
  std::atomic<uint64_t> busy_polls_{0};
  absl::Mutex stop_mu_;  // serializes Stop callers

  absl::Mutex mu_;
  std::deque<absl::AnyInvocable<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  // !tasks_.empty(), readable without mu_ (written under it).
  std::atomic<bool> has_tasks_{false};
  bool accepting_ ABSL_GUARDED_BY(mu_) = true;
};

}  // namespace kvtier::ucx

#endif  // KVTIER_COMMON_UCX_UCX_LOOP_H_
