// Three kvtier-server processes and several clients on loopback, one suite parameterized
// over the client transport (gRPC; UCX when this build has it).
#include <gtest/gtest.h>

#include <atomic>
#include <set>
#include <thread>

#include "absl/synchronization/notification.h"
#include "client/client.h"
#include "tests/service/harness.h"

namespace kvtier::testing {
namespace {

using client::BlockResult;
using client::Client;
using client::ClientOptions;
using client::PutItem;
using client::PutOutcome;
using client::TransportKind;

constexpr char kNs[] = "tenantA/llama-8b/k4v2_g128/tp0";

class ServiceClusterTest : public ::testing::TestWithParam<TransportKind> {
 protected:
  static void SetUpTestSuite() {
    servers_ = new std::vector<std::unique_ptr<ServerProcess>>();
    for (int i = 0; i < 3; ++i) {
      auto s = std::make_unique<ServerProcess>();
      ServerProcess::Options o;
      o.enable_ucx = true;
      absl::Status st = s->Start(o);
      ASSERT_TRUE(st.ok()) << st;
      servers_->push_back(std::move(s));
    }
  }
  static void TearDownTestSuite() {
    delete servers_;
    servers_ = nullptr;
  }

  void SetUp() override {
    if (GetParam() == TransportKind::kUcx) {
      ClientOptions o;
      o.endpoints = {(*servers_)[0]->endpoint()};
      o.transport = TransportKind::kUcx;
      auto c = Client::Create(o);
      if (!c.ok() && c.status().code() == absl::StatusCode::kUnimplemented) {
        GTEST_SKIP() << "no UCX transport in this build";
      }
    }
  }

  std::unique_ptr<Client> NewClient(std::vector<std::string> endpoints = {}) {
    ClientOptions o;
    if (endpoints.empty()) {
      for (auto& s : *servers_) o.endpoints.push_back(s->endpoint());
    } else {
      o.endpoints = std::move(endpoints);
    }
    o.transport = GetParam();
    o.timeout = absl::Seconds(10);
    auto c = Client::Create(o);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *std::move(c) : nullptr;
  }

  // Payloads and PutItems for a chain (the items borrow `payloads`).
  static std::vector<PutItem> Items(const std::vector<kernels::ChainHash>& chain,
                                    const std::vector<std::vector<uint8_t>>& payloads) {
    std::vector<PutItem> items;
    for (size_t i = 0; i < chain.size(); ++i) items.push_back({chain[i], payloads[i]});
    return items;
  }

  static std::vector<std::unique_ptr<ServerProcess>>* servers_;
};

std::vector<std::unique_ptr<ServerProcess>>* ServiceClusterTest::servers_ = nullptr;

TEST_P(ServiceClusterTest, PutThenGetReturnsExactBytesInRequestOrder) {
  auto c = NewClient();
  ASSERT_NE(c, nullptr);
  const auto chain = RandomChain(24, 101 + static_cast<int>(GetParam()));
  std::vector<std::vector<uint8_t>> payloads;
  for (size_t i = 0; i < chain.size(); ++i)
    payloads.push_back(MakePayload(40000 + 20000 * (i % 5), i + 7));
  auto put = c->Put(kNs, 0, Items(chain, payloads));
  ASSERT_TRUE(put.ok()) << put.status();
  ASSERT_EQ(put->size(), chain.size());
  for (PutOutcome o : *put) EXPECT_EQ(o, PutOutcome::kStored);

  // Ask in a different order with two unknown hashes mixed in.
  std::vector<kernels::ChainHash> ask = {chain[5],  RandomChain(1, 999)[0], chain[0],
                                         chain[23], RandomChain(1, 998)[0], chain[11]};
  std::vector<BlockResult> got = c->Get(kNs, 0, ask);
  ASSERT_EQ(got.size(), ask.size());
  const int expect_idx[] = {5, -1, 0, 23, -1, 11};
  for (size_t i = 0; i < ask.size(); ++i) {
    if (expect_idx[i] < 0) {
      EXPECT_FALSE(got[i].hit) << i;
      EXPECT_TRUE(got[i].status.ok()) << got[i].status;
      continue;
    }
    ASSERT_TRUE(got[i].hit) << i << " " << got[i].status;
    EXPECT_EQ(got[i].payload, payloads[expect_idx[i]]) << i;
    EXPECT_EQ(got[i].tier, client::Tier::kMemory);
  }
  // Another part of the same hashes is a different key.
  std::vector<BlockResult> other = c->Get(kNs, 1, absl::MakeConstSpan(chain).first(3));
  for (const auto& r : other) EXPECT_FALSE(r.hit);
}

TEST_P(ServiceClusterTest, PlacementSpreadsBlocksAndEachBlockLivesOnItsShardOnly) {
  auto c = NewClient();
  ASSERT_NE(c, nullptr);
  const std::string ns =
      std::string(kNs) + "/placement" + std::to_string(static_cast<int>(GetParam()));
  const auto chain = RandomChain(60, 202);
  std::vector<std::vector<uint8_t>> payloads;
  for (size_t i = 0; i < chain.size(); ++i) payloads.push_back(MakePayload(20000, 300 + i));
  ASSERT_TRUE(c->Put(ns, 0, Items(chain, payloads)).ok());

  std::vector<int> per_shard(3, 0);
  for (const auto& h : chain) per_shard[c->ShardOf(ns, h, 0)]++;
  for (int n : per_shard) EXPECT_GT(n, 5) << "rendezvous placement should spread 60 blocks";

  // Ask each server directly: it holds exactly the blocks placed on it.
  for (size_t s = 0; s < 3; ++s) {
    auto single = NewClient({(*servers_)[s]->endpoint()});
    ASSERT_NE(single, nullptr);
    std::vector<BlockResult> got = single->Get(ns, 0, chain);
    for (size_t i = 0; i < chain.size(); ++i) {
      const bool owner = c->ShardOf(ns, chain[i], 0) == s;
      EXPECT_EQ(got[i].hit, owner) << "server " << s << " block " << i;
    }
  }
  // A second client with the endpoints in another order places identically.
  auto reversed = NewClient(
      {(*servers_)[2]->endpoint(), (*servers_)[0]->endpoint(), (*servers_)[1]->endpoint()});
  for (const auto& h : chain) {
    EXPECT_EQ(reversed->endpoint(reversed->ShardOf(ns, h, 0)), c->endpoint(c->ShardOf(ns, h, 0)));
  }
}

TEST_P(ServiceClusterTest, DedupAcrossClients) {
  const std::string ns = std::string(kNs) + "/dedup" + std::to_string(static_cast<int>(GetParam()));
  const auto chain = RandomChain(12, 303);
  std::vector<std::vector<uint8_t>> payloads;
  for (size_t i = 0; i < chain.size(); ++i) payloads.push_back(MakePayload(30000, 400 + i));
  auto a = NewClient();
  auto b = NewClient();
  auto first = a->Put(ns, 0, Items(chain, payloads));
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = b->Put(ns, 0, Items(chain, payloads));
  ASSERT_TRUE(second.ok()) << second.status();
  for (size_t i = 0; i < chain.size(); ++i) {
    EXPECT_EQ((*first)[i], PutOutcome::kStored);
    EXPECT_EQ((*second)[i], PutOutcome::kDeduplicated);
  }
  // Concurrent puts of the same new blocks from four clients: each block stored once.
  const auto chain2 = RandomChain(16, 304);
  std::vector<std::vector<uint8_t>> payloads2;
  for (size_t i = 0; i < chain2.size(); ++i) payloads2.push_back(MakePayload(25000, 500 + i));
  std::vector<std::unique_ptr<Client>> clients;
  for (int i = 0; i < 4; ++i) clients.push_back(NewClient());
  std::vector<std::vector<PutOutcome>> outcomes(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      auto r = clients[i]->Put(ns, 0, Items(chain2, payloads2));
      if (r.ok()) outcomes[i] = *r;
    });
  }
  for (auto& t : threads) t.join();
  for (size_t blk = 0; blk < chain2.size(); ++blk) {
    int stored = 0;
    for (int i = 0; i < 4; ++i) {
      ASSERT_EQ(outcomes[i].size(), chain2.size());
      stored += outcomes[i][blk] == PutOutcome::kStored;
    }
    EXPECT_EQ(stored, 1) << "block " << blk;
  }
}

TEST_P(ServiceClusterTest, LookupAcrossShardsCountsTheLeadingPrefix) {
  auto c = NewClient();
  const std::string ns =
      std::string(kNs) + "/lookup" + std::to_string(static_cast<int>(GetParam()));
  const auto chain = RandomChain(40, 505);
  std::vector<std::vector<uint8_t>> payloads;
  for (size_t i = 0; i < chain.size(); ++i) payloads.push_back(MakePayload(15000, 600 + i));
  EXPECT_EQ(*c->Lookup(ns, 0, chain, 128), 0u);
  // Store the first 30 only.
  ASSERT_TRUE(c->Put(ns, 0, absl::MakeConstSpan(Items(chain, payloads)).first(30)).ok());
  auto other = NewClient();
  EXPECT_EQ(*other->Lookup(ns, 0, chain, 128), 30u);
  EXPECT_EQ(*other->Lookup(ns, 0, absl::MakeConstSpan(chain).first(17), 128), 17u);
  // Remove block 12 (on whichever shard): the prefix stops there, never counting past it.
  ASSERT_EQ(*c->Delete(ns, 0, absl::MakeConstSpan(chain).subspan(12, 1)), 1u);
  EXPECT_EQ(*other->Lookup(ns, 0, chain, 128), 12u);
  // Blocks after the gap are still there (only the prefix count stops).
  auto got = other->Get(ns, 0, absl::MakeConstSpan(chain).subspan(13, 2));
  EXPECT_TRUE(got[0].hit);
  EXPECT_TRUE(got[1].hit);
  // Lookup of the 4096-hash maximum is accepted.
  auto long_chain = RandomChain(4096, 506);
  long_chain[0] = chain[0];
  EXPECT_EQ(*other->Lookup(ns, 0, long_chain, 128), 1u);
}

TEST_P(ServiceClusterTest, AsyncCallsCompleteWithResults) {
  auto c = NewClient();
  const std::string ns = std::string(kNs) + "/async" + std::to_string(static_cast<int>(GetParam()));
  const auto chain = RandomChain(9, 707);
  std::vector<std::vector<uint8_t>> payloads;
  for (size_t i = 0; i < chain.size(); ++i) payloads.push_back(MakePayload(20000, 800 + i));
  absl::Notification put_done;
  absl::StatusOr<std::vector<PutOutcome>> put_result;
  c->PutAsync(ns, 0, Items(chain, payloads), [&](auto r) {
    put_result = std::move(r);
    put_done.Notify();
  });
  ASSERT_TRUE(put_done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  ASSERT_TRUE(put_result.ok()) << put_result.status();
  absl::Notification lookup_done, get_done;
  absl::StatusOr<size_t> hit;
  std::vector<BlockResult> got;
  c->LookupAsync(ns, 0, chain, 128, [&](absl::StatusOr<size_t> r) {
    hit = r;
    lookup_done.Notify();
  });
  c->GetAsync(ns, 0, chain, [&](std::vector<BlockResult> r) {
    got = std::move(r);
    get_done.Notify();
  });
  ASSERT_TRUE(lookup_done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  ASSERT_TRUE(get_done.WaitForNotificationWithTimeout(absl::Seconds(20)));
  EXPECT_EQ(*hit, chain.size());
  ASSERT_EQ(got.size(), chain.size());
  for (size_t i = 0; i < chain.size(); ++i) EXPECT_EQ(got[i].payload, payloads[i]);
}

TEST_P(ServiceClusterTest, LargeBlocksAreChunkedAndReassembled) {
  auto c = NewClient();
  const std::string ns = std::string(kNs) + "/large" + std::to_string(static_cast<int>(GetParam()));
  const auto chain = RandomChain(2, 909);
  std::vector<std::vector<uint8_t>> payloads = {MakePayload(size_t{9} << 20, 1),
                                                MakePayload(size_t{5} << 20, 2)};
  ASSERT_GT(payloads[0].size(), size_t{8} << 20);  // larger than one gRPC message
  ASSERT_TRUE(c->Put(ns, 0, Items(chain, payloads)).ok());
  auto got = c->Get(ns, 0, chain);
  ASSERT_TRUE(got[0].hit && got[1].hit);
  EXPECT_EQ(got[0].payload, payloads[0]);
  EXPECT_EQ(got[1].payload, payloads[1]);
}

TEST_P(ServiceClusterTest, StatsAndHealthOfEveryEndpoint) {
  auto c = NewClient();
  for (const auto& [endpoint, status] : c->Health()) EXPECT_TRUE(status.ok()) << endpoint << status;
  auto stats = c->Stats();
  ASSERT_EQ(stats.size(), 3u);
  for (const auto& s : stats) {
    ASSERT_TRUE(s.stats.ok()) << s.endpoint << s.stats.status();
    EXPECT_EQ(s.stats->server_version(), "0.1.0");
    EXPECT_EQ(s.stats->memory().capacity_bytes(), uint64_t{1} << 30);
  }
}

std::string TransportName(const ::testing::TestParamInfo<TransportKind>& info) {
  return info.param == TransportKind::kGrpc ? "grpc" : "ucx";
}

INSTANTIATE_TEST_SUITE_P(Transports, ServiceClusterTest,
                         ::testing::Values(TransportKind::kGrpc, TransportKind::kUcx),
                         TransportName);

}  // namespace
}  // namespace kvtier::testing
