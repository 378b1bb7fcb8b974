// Load: 64 concurrent clients (each its own kvtier::Client and connections) against three
// servers for a bounded time. No errors, no wrong bytes, and server memory stays bounded
// while the RAM tier evicts.
#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "tests/service/harness.h"

namespace kvtier::testing {
namespace {

using client::Client;
using client::ClientOptions;
using client::PutItem;

TEST(LoadTest, SixtyFourClientsForThreeSecondsWithoutErrorsAndBoundedMemory) {
  constexpr int kClients = 64;
  constexpr int kBlocksPerChain = 8;
  constexpr size_t kBlockBytes = 32 << 10;
  std::vector<std::unique_ptr<ServerProcess>> servers;
  std::vector<std::string> endpoints;
  for (int i = 0; i < 3; ++i) {
    servers.push_back(std::make_unique<ServerProcess>());
    ServerProcess::Options o;
    o.memory_capacity = "32MiB";
    ASSERT_TRUE(servers.back()->Start(o).ok());
    endpoints.push_back(servers.back()->endpoint());
  }
  // 16 shared prefixes (deduplicated across clients) plus a fresh chain per iteration
  // (fills the RAM tier and forces eviction).
  std::vector<std::vector<kernels::ChainHash>> shared;
  std::vector<std::vector<std::vector<uint8_t>>> shared_payloads;
  for (int p = 0; p < 16; ++p) {
    shared.push_back(RandomChain(kBlocksPerChain, 1000 + p));
    shared_payloads.emplace_back();
    for (int b = 0; b < kBlocksPerChain; ++b) {
      shared_payloads.back().push_back(MakePayload(kBlockBytes, 1000 * p + b));
    }
  }
  std::atomic<uint64_t> ops{0}, errors{0}, wrong{0}, bytes{0};
  std::atomic<bool> stop{false};
  absl::Mutex err_mu;
  std::vector<std::string> error_samples;
  auto note = [&](const absl::Status& st) {
    ++errors;
    absl::MutexLock l(&err_mu);
    if (error_samples.size() < 5) error_samples.push_back(st.ToString());
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < kClients; ++t) {
    threads.emplace_back([&, t] {
      ClientOptions o;
      o.endpoints = endpoints;
      o.timeout = absl::Seconds(20);
      o.fanout_threads = 3;
      o.async_threads = 1;
      auto c = Client::Create(o);
      if (!c.ok()) {
        ++errors;
        return;
      }
      const std::string ns = "tenantL/load/k4v2_g128/tp" + std::to_string(t % 2);
      uint64_t iter = 0;
      auto fresh_payload = MakePayload(kBlockBytes, 77 + t);
      while (!stop) {
        const int p = static_cast<int>((t + iter) % 16);
        // Shared prefix: Lookup, Put what is missing, Get it all back.
        auto hit = (*c)->Lookup(ns, 0, shared[p], 128);
        if (!hit.ok()) {
          note(hit.status());
          continue;
        }
        std::vector<PutItem> items;
        for (size_t b = *hit; b < shared[p].size(); ++b)
          items.push_back({shared[p][b], shared_payloads[p][b]});
        if (!items.empty()) {
          auto r = (*c)->Put(ns, 0, items);
          if (!r.ok()) note(r.status());
        }
        auto got = (*c)->Get(ns, 0, shared[p]);
        for (size_t b = 0; b < got.size(); ++b) {
          if (!got[b].status.ok()) note(got[b].status);
          if (got[b].hit) {
            if (got[b].payload != shared_payloads[p][b]) ++wrong;
            bytes += got[b].payload.size();
          }
        }
        // A fresh block: new data for the RAM tier to evict.
        auto fresh = RandomChain(1, (uint64_t{1} << 40) + t * 1000000 + iter);
        PutItem item{fresh[0], fresh_payload};
        auto r = (*c)->Put(ns, 0, absl::MakeConstSpan(&item, 1));
        if (!r.ok()) note(r.status());
        ops += 4;
        ++iter;
      }
    });
  }
  const absl::Time start = absl::Now();
  long peak_rss = 0;
  while (absl::Now() - start < absl::Seconds(3)) {
    absl::SleepFor(absl::Milliseconds(200));
    for (auto& s : servers) peak_rss = std::max(peak_rss, s->RssKiB());
  }
  stop = true;
  for (auto& th : threads) th.join();
  const double secs = absl::ToDoubleSeconds(absl::Now() - start);
  for (auto& s : servers) peak_rss = std::max(peak_rss, s->RssKiB());
  std::printf(
      "load: %d clients, %.1f s, %llu ops (%.0f ops/s), %.1f MB read, peak server RSS %ld MiB\n",
      kClients, secs, static_cast<unsigned long long>(ops.load()), ops / secs, bytes / 1e6,
      peak_rss / 1024);
  EXPECT_EQ(errors.load(), 0u);
  for (const auto& e : error_samples) ADD_FAILURE() << "error: " << e;
  EXPECT_EQ(wrong.load(), 0u);
  EXPECT_GT(ops.load(), 1000u);
  // 48 MiB RAM tier + buffers: well under 400 MiB per server.
  EXPECT_LT(peak_rss, 400 * 1024) << "server RSS not bounded";
  for (auto& s : servers) {
    auto m = s->HttpGet("/metrics");
    ASSERT_TRUE(m.ok());
    EXPECT_NE(m->second.find("kvtier_evictions_total{tier=\"memory\"}"), std::string::npos);
    EXPECT_EQ(m->second.find("code=\"INTERNAL\""), std::string::npos);
    EXPECT_EQ(m->second.find("code=\"RESOURCE_EXHAUSTED\""), std::string::npos);
  }
}

}  // namespace
}  // namespace kvtier::testing
