// Fault injection with real processes: kill -9 mid-stream and restart on the same data
// directory, clean SIGTERM restarts, a stalling/dropping TCP proxy, a paused server and
// tiny deadlines. Clients see misses or UNAVAILABLE/DEADLINE_EXCEEDED, never a corrupt
// block; nothing acknowledged is lost.
#include <gtest/gtest.h>

#include <atomic>
#include <map>
#include <thread>

#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "tests/service/harness.h"
#include "tests/service/tcp_proxy.h"

namespace kvtier::testing {
namespace {

using client::BlockResult;
using client::Client;
using client::ClientOptions;
using client::PutItem;

constexpr char kNs[] = "tenantA/fault/k4v2_g128/tp0";

std::unique_ptr<Client> Connect(const std::string& endpoint, absl::Duration timeout,
                                int attempts = 2) {
  ClientOptions o;
  o.endpoints = {endpoint};
  o.timeout = timeout;
  o.max_attempts = attempts;
  o.initial_backoff = absl::Milliseconds(20);
  auto c = Client::Create(o);
  EXPECT_TRUE(c.ok());
  return *std::move(c);
}

struct Blocks {
  std::vector<kernels::ChainHash> chain;
  std::vector<std::vector<uint8_t>> payloads;
  std::vector<PutItem> Items(size_t begin, size_t end) const {
    std::vector<PutItem> items;
    for (size_t i = begin; i < end; ++i) items.push_back({chain[i], payloads[i]});
    return items;
  }
};

Blocks MakeBlocks(size_t n, size_t bytes, uint64_t seed) {
  Blocks b;
  b.chain = RandomChain(n, seed);
  for (size_t i = 0; i < n; ++i) b.payloads.push_back(MakePayload(bytes, seed * 1000 + i));
  return b;
}

// Every result is either a miss or exactly the expected bytes. Returns the hit count.
size_t ExpectMissesOrExactBytes(const std::vector<BlockResult>& got, const Blocks& b,
                                size_t begin) {
  size_t hits = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i].hit) {
      EXPECT_EQ(got[i].payload, b.payloads[begin + i]) << "wrong bytes for block " << begin + i;
      ++hits;
    } else {
      EXPECT_TRUE(got[i].payload.empty());
    }
  }
  return hits;
}

TEST(FaultTest, KillNineMidPutStreamThenRestartServesEveryAcknowledgedBlock) {
  TempDir data;
  ServerProcess s;
  ServerProcess::Options o;
  o.data_dir = data.path();
  ASSERT_TRUE(s.Start(o).ok());
  auto c = Connect(s.endpoint(), absl::Seconds(5));
  const Blocks acked = MakeBlocks(20, 100000, 1);
  ASSERT_TRUE(c->Put(kNs, 0, acked.Items(0, 20)).ok());

  // A writer streams 24 x 1 MiB per Put until the server dies under it.
  const Blocks stream = MakeBlocks(24 * 20, size_t{1} << 20, 2);
  std::atomic<size_t> acked_batches{0};
  absl::Status writer_error;
  std::atomic<bool> started{false};
  std::thread writer([&] {
    auto w = Connect(s.endpoint(), absl::Seconds(5), /*attempts=*/1);
    for (size_t batch = 0; batch < 20; ++batch) {
      started = true;
      auto r = w->Put(kNs, 0, stream.Items(batch * 24, batch * 24 + 24));
      if (!r.ok()) {
        writer_error = r.status();
        return;
      }
      acked_batches = batch + 1;
    }
  });
  while (!started) absl::SleepFor(absl::Milliseconds(1));
  absl::SleepFor(absl::Milliseconds(120));
  s.Kill9();
  writer.join();
  ASSERT_FALSE(writer_error.ok()) << "the server died before the writer finished";
  EXPECT_EQ(writer_error.code(), absl::StatusCode::kUnavailable) << writer_error;

  // While it is down: misses carrying UNAVAILABLE, and Lookup reports no prefix.
  auto down = c->Get(kNs, 0, acked.chain);
  for (const auto& r : down) {
    EXPECT_FALSE(r.hit);
    EXPECT_EQ(r.status.code(), absl::StatusCode::kUnavailable) << r.status;
  }
  EXPECT_EQ(*c->Lookup(kNs, 0, acked.chain), 0u);

  ASSERT_TRUE(s.Restart().ok());
  auto c2 = Connect(s.endpoint(), absl::Seconds(10));
  auto got = c2->Get(kNs, 0, acked.chain);
  EXPECT_EQ(ExpectMissesOrExactBytes(got, acked, 0), acked.chain.size());
  for (const auto& r : got) EXPECT_EQ(r.tier, client::Tier::kDisk);
  const size_t done = acked_batches * 24;
  auto got_stream = c2->Get(kNs, 0, stream.chain);
  const size_t hits = ExpectMissesOrExactBytes(got_stream, stream, 0);
  EXPECT_GE(hits, done);
  for (size_t i = 0; i < done; ++i) EXPECT_TRUE(got_stream[i].hit) << "acknowledged block " << i;
  // The stream that was cut was never acknowledged. A crash while it was being committed
  // can leave a prefix of its blocks stored (each complete and valid, checked above);
  // nothing after a missing block, and nothing of later streams.
  bool gap = false;
  for (size_t i = done; i < stream.chain.size(); ++i) {
    if (!got_stream[i].hit) gap = true;
    if (gap) {
      EXPECT_FALSE(got_stream[i].hit) << "block " << i << " stored after a gap";
    }
  }
}

TEST(FaultTest, KillNineDuringGetGivesMissesOrExactBytes) {
  TempDir data;
  ServerProcess s;
  ServerProcess::Options o;
  o.data_dir = data.path();
  ASSERT_TRUE(s.Start(o).ok());
  const Blocks b = MakeBlocks(24, size_t{1} << 20, 3);
  auto c = Connect(s.endpoint(), absl::Seconds(5), 1);
  ASSERT_TRUE(c->Put(kNs, 0, b.Items(0, 24)).ok());
  std::atomic<bool> stop{false};
  std::atomic<int> rounds{0}, failed_blocks{0};
  std::thread reader([&] {
    while (!stop) {
      auto got = c->Get(kNs, 0, b.chain);
      const size_t hits = ExpectMissesOrExactBytes(got, b, 0);
      failed_blocks += static_cast<int>(got.size() - hits);
      ++rounds;
    }
  });
  absl::SleepFor(absl::Milliseconds(300));
  s.Kill9();
  absl::SleepFor(absl::Milliseconds(200));
  stop = true;
  reader.join();
  EXPECT_GT(rounds.load(), 1);
  EXPECT_GT(failed_blocks.load(), 0);
  ASSERT_TRUE(s.Restart().ok());
  auto c2 = Connect(s.endpoint(), absl::Seconds(10));
  EXPECT_EQ(ExpectMissesOrExactBytes(c2->Get(kNs, 0, b.chain), b, 0), b.chain.size());
}

TEST(FaultTest, CleanRestartLosesNothingAcknowledged) {
  TempDir data;
  ServerProcess s;
  ServerProcess::Options o;
  o.data_dir = data.path();
  ASSERT_TRUE(s.Start(o).ok());
  const Blocks b = MakeBlocks(400, 64000, 4);
  std::atomic<size_t> acked{0};
  std::atomic<bool> started{false};
  std::thread writer([&] {
    auto w = Connect(s.endpoint(), absl::Seconds(5), 1);
    for (size_t i = 0; i < 400; i += 8) {
      started = true;
      if (!w->Put(kNs, 0, b.Items(i, i + 8)).ok()) return;
      acked = i + 8;
    }
  });
  while (acked < 40) absl::SleepFor(absl::Milliseconds(1));
  auto code = s.Terminate();  // SIGTERM while the writer is busy
  writer.join();
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
  ASSERT_TRUE(s.Restart().ok());
  auto c = Connect(s.endpoint(), absl::Seconds(10));
  const size_t n = acked;
  auto got = c->Get(kNs, 0, absl::MakeConstSpan(b.chain).first(n));
  EXPECT_EQ(ExpectMissesOrExactBytes(got, b, 0), n) << "acknowledged blocks lost";
  EXPECT_EQ(*c->Lookup(kNs, 0, absl::MakeConstSpan(b.chain).first(n)), n);
}

TEST(FaultTest, StalledAndDroppedConnectionsSurfaceAsMissesOrUnavailable) {
  ServerProcess s;
  ASSERT_TRUE(s.Start({}).ok());
  TcpProxy proxy;
  ASSERT_TRUE(proxy.Start(s.grpc_port()).ok());
  auto c = Connect(proxy.endpoint(), absl::Milliseconds(700));
  const Blocks b = MakeBlocks(6, 200000, 5);
  ASSERT_TRUE(c->Put(kNs, 0, b.Items(0, 3)).ok());

  proxy.set_mode(TcpProxy::Mode::kStall);
  absl::Time t0 = absl::Now();
  auto got = c->Get(kNs, 0, b.chain);
  for (const auto& r : got) {
    EXPECT_FALSE(r.hit);
    EXPECT_EQ(r.status.code(), absl::StatusCode::kDeadlineExceeded) << r.status;
  }
  EXPECT_EQ(*c->Lookup(kNs, 0, b.chain), 0u);
  EXPECT_EQ(c->Put(kNs, 0, b.Items(3, 6)).status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_LT(absl::Now() - t0, absl::Seconds(4)) << "deadlines must bound a stalled peer";

  proxy.set_mode(TcpProxy::Mode::kDrop);
  absl::SleepFor(absl::Milliseconds(50));
  got = c->Get(kNs, 0, b.chain);
  for (const auto& r : got) {
    EXPECT_FALSE(r.hit);
    EXPECT_EQ(r.status.code(), absl::StatusCode::kUnavailable) << r.status;
  }
  EXPECT_EQ(c->Put(kNs, 0, b.Items(3, 6)).status().code(), absl::StatusCode::kUnavailable);

  proxy.set_mode(TcpProxy::Mode::kForward);
  auto c2 = Connect(proxy.endpoint(), absl::Seconds(5), 5);
  got = c2->Get(kNs, 0, b.chain);
  EXPECT_EQ(ExpectMissesOrExactBytes(got, b, 0), 3u);
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(got[i].hit);
}

// A bit flipped inside a Get payload on the wire (TCP's checksum is per hop, the proxy
// rewrites the stream): the gRPC client's validation on receipt turns the block into a
// DATA_LOSS non-hit without bytes; the same block read without corruption is exact.
TEST(FaultTest, PayloadCorruptedInTransitIsDataLossNeverWrongBytes) {
  ServerProcess s;
  ASSERT_TRUE(s.Start({}).ok());
  TcpProxy proxy;
  ASSERT_TRUE(proxy.Start(s.grpc_port()).ok());
  const Blocks b = MakeBlocks(1, 4 << 20, 6);
  {
    auto c = Connect(proxy.endpoint(), absl::Seconds(10));
    ASSERT_TRUE(c->Put(kNs, 0, b.Items(0, 1)).ok());
  }
  // A new connection whose server-to-client stream has one bit flipped 3 MB in: inside
  // the payload's data (its gRPC/HTTP/2 framing is a few dozen bytes per MiB).
  proxy.set_corrupt_offset(3000000);
  {
    auto c = Connect(proxy.endpoint(), absl::Seconds(10), /*attempts=*/1);
    auto got = c->Get(kNs, 0, b.chain);
    ASSERT_EQ(got.size(), 1u);
    EXPECT_FALSE(got[0].hit);
    EXPECT_TRUE(got[0].payload.empty());
    EXPECT_EQ(got[0].status.code(), absl::StatusCode::kDataLoss) << got[0].status;
    EXPECT_TRUE(absl::StrContains(got[0].status.message(), "checksum mismatch")) << got[0].status;
  }
  proxy.set_corrupt_offset(0);
  auto c = Connect(proxy.endpoint(), absl::Seconds(10));
  auto got = c->Get(kNs, 0, b.chain);
  EXPECT_EQ(ExpectMissesOrExactBytes(got, b, 0), 1u);
}

TEST(FaultTest, PausedServerAndTinyDeadlinesAreMisses) {
  ServerProcess s;
  ASSERT_TRUE(s.Start({}).ok());
  const Blocks b = MakeBlocks(4, 50000, 6);
  auto c = Connect(s.endpoint(), absl::Milliseconds(300));
  ASSERT_TRUE(c->Put(kNs, 0, b.Items(0, 4)).ok());
  s.Pause();
  auto got = c->Get(kNs, 0, b.chain);
  for (const auto& r : got) {
    EXPECT_FALSE(r.hit);
    EXPECT_EQ(r.status.code(), absl::StatusCode::kDeadlineExceeded);
  }
  EXPECT_EQ(*c->Lookup(kNs, 0, b.chain), 0u);
  s.Resume();
  // Served again once the resumed server has worked off the expired calls it queued while
  // stopped (a 300 ms deadline can lapse during that on a loaded CI machine): every
  // attempt is misses or exact bytes, and within 10 s all 4 are hits.
  size_t hits = 0;
  for (const absl::Time until = absl::Now() + absl::Seconds(10); hits < 4 && absl::Now() < until;) {
    hits = ExpectMissesOrExactBytes(c->Get(kNs, 0, b.chain), b, 0);
    if (hits < 4) absl::SleepFor(absl::Milliseconds(50));
  }
  EXPECT_EQ(hits, 4u);

  // A 1 us deadline: misses with DEADLINE_EXCEEDED (gRPC may still complete a call that
  // races the timer; then the bytes are exact).
  auto tiny = Connect(s.endpoint(), absl::Microseconds(1));
  int expired = 0;
  for (int round = 0; round < 5; ++round) {
    auto got_tiny = tiny->Get(kNs, 0, b.chain);
    ExpectMissesOrExactBytes(got_tiny, b, 0);
    for (const auto& r : got_tiny) {
      if (!r.hit) {
        EXPECT_EQ(r.status.code(), absl::StatusCode::kDeadlineExceeded);
        ++expired;
      }
    }
  }
  EXPECT_GT(expired, 0);
}

}  // namespace
}  // namespace kvtier::testing
