#include <atomic>
#include <memory>
#include <thread>

#include "absl/synchronization/notification.h"
#include "common/ucx/ucx_loop.h"
#include "common/ucx/ucx_status.h"
#include "gtest/gtest.h"

namespace kvtier::ucx {
namespace {

TEST(UcxStatusTest, OkAndInProgressAreNotErrors) {
  EXPECT_TRUE(FromUcs(UCS_OK, "x").ok());
  EXPECT_TRUE(FromUcs(UCS_INPROGRESS, "x").ok());
}

TEST(UcxStatusTest, PeerFailuresAreUnavailable) {
  EXPECT_EQ(FromUcs(UCS_ERR_CONNECTION_RESET, "send").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(FromUcs(UCS_ERR_UNREACHABLE, "send").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(FromUcs(UCS_ERR_ENDPOINT_TIMEOUT, "send").code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(FromUcs(UCS_ERR_REJECTED, "connect").code(), absl::StatusCode::kUnavailable);
}

TEST(UcxStatusTest, OtherCodesAndMessage) {
  absl::Status s = FromUcs(UCS_ERR_TIMED_OUT, "flush");
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_EQ(s.message(), "flush: Operation timed out");
  EXPECT_EQ(FromUcs(UCS_ERR_NO_MEMORY, "x").code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(FromUcs(UCS_ERR_INVALID_PARAM, "x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FromUcs(UCS_ERR_CANCELED, "x").code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(FromUcs(UCS_ERR_UNSUPPORTED, "x").code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(FromUcs(UCS_ERR_NO_MESSAGE, "x").code(), absl::StatusCode::kInternal);
}

UcxLoopOptions TcpOptions() {
  UcxLoopOptions o;
  o.ucx_config = {{"TLS", "tcp,self"}};
  o.busy_poll = absl::ZeroDuration();
  return o;
}

TEST(UcxLoopTest, BadConfigValueIsInvalidArgument) {
  UcxLoopOptions o = TcpOptions();
  o.ucx_config.push_back({"RNDV_THRESH", "not-a-size"});
  auto loop = UcxLoop::Start(o, nullptr);
  EXPECT_EQ(loop.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(UcxLoopTest, TasksRunOnTheLoopThreadInOrder) {
  std::atomic<int> iterations{0};
  auto loop_or = UcxLoop::Start(TcpOptions(), [&] { iterations++; });
  ASSERT_TRUE(loop_or.ok()) << loop_or.status();
  std::unique_ptr<UcxLoop> loop = std::move(*loop_or);
  EXPECT_FALSE(loop->InLoopThread());
  EXPECT_GT(loop->max_am_header(), 64u);

  std::vector<int> order;  // touched on the loop thread only, read after a Call
  for (int i = 0; i < 100; ++i) {
    loop->Post([&order, &loop, i] {
      EXPECT_TRUE(loop->InLoopThread());
      order.push_back(i);
    });
  }
  absl::Status s = loop->Call([&]() -> absl::Status {
    EXPECT_NE(loop->worker(), nullptr);
    return absl::NotFoundError("from the loop");
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  ASSERT_EQ(order.size(), 100u);
  for (int i = 0; i < 100; ++i) EXPECT_EQ(order[i], i);
  // The hook runs after the tasks of an iteration: a task posted after an earlier one ran
  // runs in a later iteration, after at least one hook call.
  ASSERT_TRUE(loop->Call([] { return absl::OkStatus(); }).ok());
  EXPECT_GT(iterations.load(), 0);

  // Call from the loop thread runs inline (no deadlock).
  s = loop->Call([&]() -> absl::Status { return loop->Call([] { return absl::OkStatus(); }); });
  EXPECT_TRUE(s.ok());

  loop->Stop();
  loop->Stop();  // idempotent
  EXPECT_EQ(loop->Call([] { return absl::OkStatus(); }).code(),
            absl::StatusCode::kFailedPrecondition);
  bool ran = false;
  EXPECT_FALSE(loop->Post([&] { ran = true; }));  // dropped after Stop
  EXPECT_FALSE(ran);
}

TEST(UcxLoopTest, PostFromManyThreadsWhileSleeping) {
  UcxLoopOptions o = TcpOptions();
  o.max_sleep = absl::Seconds(5);  // a lost wake-up would show as a 5 s stall per task
  auto loop_or = UcxLoop::Start(o, nullptr);
  ASSERT_TRUE(loop_or.ok()) << loop_or.status();
  std::unique_ptr<UcxLoop> loop = std::move(*loop_or);
  std::atomic<int> ran{0};
  absl::Time start = absl::Now();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 50; ++i) {
        ASSERT_TRUE(loop->Call([&] {
                          ran++;
                          return absl::OkStatus();
                        })
                        .ok());
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(ran.load(), 200);
  EXPECT_LT(absl::Now() - start, absl::Seconds(4));
}

// busy_poll_if: while it says no, the loop sleeps as soon as it is idle (tasks still run,
// promptly); while it says yes, it polls for busy_poll after each activity.
TEST(UcxLoopTest, BusyPollOnlyWhileThePredicateSaysSo) {
  std::atomic<bool> spin{false};
  UcxLoopOptions o = TcpOptions();
  o.busy_poll = absl::Milliseconds(20);
  o.busy_poll_if = [&] { return spin.load(); };
  auto loop_or = UcxLoop::Start(o, nullptr);
  ASSERT_TRUE(loop_or.ok()) << loop_or.status();
  std::unique_ptr<UcxLoop> loop = std::move(*loop_or);
  const absl::Time start = absl::Now();
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(loop->Call([] { return absl::OkStatus(); }).ok());
  EXPECT_LT(absl::Now() - start, absl::Seconds(2));
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_EQ(loop->busy_polls(), 0u) << "polled although the predicate said no";
  spin = true;
  ASSERT_TRUE(loop->Call([] { return absl::OkStatus(); }).ok());
  absl::SleepFor(absl::Milliseconds(50));
  EXPECT_GT(loop->busy_polls(), 10u) << "did not poll after activity";
}

}  // namespace
}  // namespace kvtier::ucx
