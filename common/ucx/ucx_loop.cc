#include "common/ucx/ucx_loop.h"

#include <poll.h>
#include <pthread.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/ucx/ucx_status.h"

namespace kvtier::ucx {

namespace {

bool ProbeCrossMemoryAttach() {
  if (FILE* f = std::fopen("/proc/sys/kernel/yama/ptrace_scope", "r")) {
    int scope = 0;
    const bool read = std::fscanf(f, "%d", &scope) == 1;
    std::fclose(f);
    if (!read || scope > 0) return false;
  }
  uint64_t source = 0x6b76746965720001ull;  // "kvtier" + 1
  uint64_t target = 0;
  iovec local{&target, sizeof(target)};
  iovec remote{&source, sizeof(source)};
  const ssize_t n = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
  return n == static_cast<ssize_t>(sizeof(target)) && target == source;
}

}  // namespace

bool CrossMemoryAttachPermitted() {
  static const bool permitted = ProbeCrossMemoryAttach();
  return permitted;
}

std::vector<UcxLoopOptions::Setting> UcxLoopOptions::DefaultUcxSettings() {
  if (!CrossMemoryAttachPermitted()) return {};
  return {{"MEMORY_INVALIDATE", "UCX_CMA_MEMORY_INVALIDATE", "y"}};
}

UcxLoop::UcxLoop(const UcxLoopOptions& options, IterationHook on_iteration)
    : options_(options), on_iteration_(std::move(on_iteration)) {}

absl::StatusOr<std::unique_ptr<UcxLoop>> UcxLoop::Start(const UcxLoopOptions& options,
                                                        IterationHook on_iteration) {
  std::unique_ptr<UcxLoop> loop(new UcxLoop(options, std::move(on_iteration)));
  absl::Status init_status;
  absl::Notification init_done;
  loop->thread_ = std::thread(
      [l = loop.get(), &init_status, &init_done] { l->Main(&init_status, &init_done); });
  init_done.WaitForNotification();
  if (!init_status.ok()) {
    loop->thread_.join();  // Main returned right after a failed Init
    return init_status;
  }
  return loop;
}

UcxLoop::~UcxLoop() { Stop(); }

absl::Status UcxLoop::Init() {
  ucp_config_t* config = nullptr;
  KVTIER_UCX_RETURN_IF_ERROR(ucp_config_read(nullptr, nullptr, &config), "ucp_config_read");
  for (const UcxLoopOptions::Setting& d : options_.ucx_defaults) {
    const bool overridden =
        std::getenv(d.env.c_str()) != nullptr ||
        std::any_of(options_.ucx_config.begin(), options_.ucx_config.end(), [&d](const auto& kv) {
          return kv.first == d.name || "UCX_" + kv.first == d.env;
        });
    // Best effort: a setting this UCX version does not know is skipped.
    if (!overridden) (void)ucp_config_modify(config, d.name.c_str(), d.value.c_str());
  }
  for (const auto& [name, value] : options_.ucx_config) {
    ucs_status_t s = ucp_config_modify(config, name.c_str(), value.c_str());
    if (s != UCS_OK) {
      ucp_config_release(config);
      return absl::InvalidArgumentError(
          absl::StrCat("UCX config ", name, "=", value, ": ", ucs_status_string(s)));
    }
  }
  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_MT_WORKERS_SHARED;
  params.features = UCP_FEATURE_AM | UCP_FEATURE_WAKEUP;
  params.mt_workers_shared = 0;
  ucs_status_t s = ucp_init(&params, config, &context_);
  ucp_config_release(config);
  if (s != UCS_OK) {
    context_ = nullptr;
    return FromUcs(s, "ucp_init");
  }
  ucp_worker_params_t wparams{};
  wparams.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  wparams.thread_mode = UCS_THREAD_MODE_SINGLE;
  s = ucp_worker_create(context_, &wparams, &worker_);
  if (s != UCS_OK) {
    worker_ = nullptr;
    return FromUcs(s, "ucp_worker_create");
  }
  KVTIER_UCX_RETURN_IF_ERROR(ucp_worker_get_efd(worker_, &event_fd_), "ucp_worker_get_efd");
  ucp_worker_attr_t attr{};
  attr.field_mask = UCP_WORKER_ATTR_FIELD_MAX_AM_HEADER;
  KVTIER_UCX_RETURN_IF_ERROR(ucp_worker_query(worker_, &attr), "ucp_worker_query");
  max_am_header_ = attr.max_am_header;
  return absl::OkStatus();
}

void UcxLoop::Main(absl::Status* init_status, absl::Notification* init_done) {
  loop_thread_id_ = std::this_thread::get_id();
  pthread_setname_np(pthread_self(), options_.name.substr(0, 15).c_str());
  absl::Status status = Init();
  if (!status.ok()) {
    if (worker_ != nullptr) ucp_worker_destroy(worker_);
    if (context_ != nullptr) ucp_cleanup(context_);
    worker_ = nullptr;
    context_ = nullptr;
    *init_status = status;
    init_done->Notify();
    return;
  }
  init_done->Notify();  // init_status stays OK; the pointers die with Start's frame

  absl::Time last_active = absl::Now();
  const int max_sleep_ms =
      std::max<int>(1, static_cast<int>(absl::ToInt64Milliseconds(options_.max_sleep)));
  while (true) {
    bool active = RunTasks();
    while (ucp_worker_progress(worker_) != 0) active = true;
    if (on_iteration_) on_iteration_();
    if (stop_requested_.load(std::memory_order_acquire)) {
      absl::MutexLock lock(&mu_);
      if (tasks_.empty()) {
        accepting_ = false;  // Post drops, Wake and Call stop touching the worker
        break;
      }
      continue;
    }
    absl::Time now = absl::Now();
    if (active) {
      last_active = now;
      continue;
    }
    if (now - last_active < options_.busy_poll &&
        (!options_.busy_poll_if || options_.busy_poll_if())) {
      busy_polls_.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    ucs_status_t s = ucp_worker_arm(worker_);
    if (s == UCS_ERR_BUSY) continue;  // events arrived meanwhile: progress again
    {
      absl::MutexLock lock(&mu_);
      if (!tasks_.empty()) continue;
    }
    if (s == UCS_OK) {
      pollfd pfd{event_fd_, POLLIN, 0};
      poll(&pfd, 1, max_sleep_ms);
    }
    // On an unexpected arm error, fall back to spinning; progress still works.
  }
  ucp_worker_destroy(worker_);
  ucp_cleanup(context_);
  worker_ = nullptr;
  context_ = nullptr;
}

bool UcxLoop::RunTasks() {
  // The loop calls this on every spin while busy-polling: skip the mutex when nothing was
  // posted, so that a poster holding it (Wake's ucp_worker_signal is a syscall) does not
  // make the loop thread spin on the lock.
  if (!has_tasks_.load(std::memory_order_acquire)) return false;
  std::deque<absl::AnyInvocable<void()>> tasks;
  {
    absl::MutexLock lock(&mu_);
    tasks.swap(tasks_);
    has_tasks_.store(false, std::memory_order_relaxed);
  }
  for (auto& task : tasks) task();
  return !tasks.empty();
}

bool UcxLoop::InLoopThread() const { return std::this_thread::get_id() == loop_thread_id_; }

bool UcxLoop::Post(absl::AnyInvocable<void()> task) {
  absl::MutexLock lock(&mu_);
  if (!accepting_) return false;
  tasks_.push_back(std::move(task));
  has_tasks_.store(true, std::memory_order_release);
  ucp_worker_signal(worker_);
  return true;
}

void UcxLoop::Wake() {
  // worker_ is set before Start returns and cleared only after the thread stopped taking
  // tasks; ucp_worker_signal is documented as safe from any thread.
  absl::MutexLock lock(&mu_);
  if (accepting_ && worker_ != nullptr) ucp_worker_signal(worker_);
}

absl::Status UcxLoop::Call(absl::AnyInvocable<absl::Status()> fn) {
  if (InLoopThread()) return fn();
  absl::Status result = absl::FailedPreconditionError("UCX loop has stopped");
  auto done = std::make_shared<absl::Notification>();
  bool posted = false;
  {
    absl::MutexLock lock(&mu_);
    if (accepting_) {
      tasks_.push_back([&fn, &result, done] {
        result = fn();
        done->Notify();
      });
      has_tasks_.store(true, std::memory_order_release);
      posted = true;
      ucp_worker_signal(worker_);
    }
  }
  if (posted) done->WaitForNotification();
  return result;
}

bool UcxLoop::ProgressUntil(const std::function<bool()>& done, absl::Duration timeout) {
  absl::Time deadline = absl::Now() + timeout;
  while (!done()) {
    if (absl::Now() >= deadline) return false;
    while (ucp_worker_progress(worker_) != 0) {
    }
    if (on_iteration_) on_iteration_();
  }
  return true;
}

void UcxLoop::Stop() {
  absl::MutexLock stop_lock(&stop_mu_);
  if (!thread_.joinable()) return;
  // The loop runs every task posted until it sees the request with an empty queue; from
  // then on Post drops tasks.
  stop_requested_.store(true, std::memory_order_release);
  Wake();
  thread_.join();
}

}  // namespace kvtier::ucx
