// --ready_put_buffers: Put payloads of the common size land in buffers prepared ahead on
// both transports (kvtier_put_buffers_total{source="prepared"} grows), every block still
// round-trips exactly; 0 disables it; a negative value does not start.
// --reserve_memory: the server holds its RAM tier's memory from the start and filling the
// tier does not grow it.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "tests/service/harness.h"

namespace kvtier::testing {
namespace {

using client::Client;
using client::ClientOptions;
using client::PutItem;
using client::TransportKind;

constexpr char kNs[] = "tenant/model/k4v2_g128/tp0";

// The value of one kvtier_put_buffers_total sample, -1 when absent.
double PutBuffersMetric(const ServerProcess& s, const std::string& transport,
                        const std::string& source) {
  auto m = s.HttpGet("/metrics");
  if (!m.ok()) return -1;
  const std::string prefix = absl::StrCat("kvtier_put_buffers_total{source=\"", source,
                                          "\",transport=\"", transport, "\"} ");
  const std::string prefix2 = absl::StrCat("kvtier_put_buffers_total{transport=\"", transport,
                                           "\",source=\"", source, "\"} ");
  for (absl::string_view line : absl::StrSplit(m->second, '\n')) {
    for (const std::string& p : {prefix, prefix2}) {
      if (absl::StartsWith(line, p)) {
        double v = 0;
        if (absl::SimpleAtod(line.substr(p.size()), &v)) return v;
      }
    }
  }
  return -1;
}

// Puts same-size blocks one at a time (at least 8; more, bounded, until one used a prepared
// buffer when `expect_prepared`), then checks every block comes back exactly.
void PutAndCheck(const ServerProcess& s, TransportKind kind, bool expect_prepared, uint64_t seed) {
  const std::string transport = kind == TransportKind::kUcx ? "ucx" : "grpc";
  SCOPED_TRACE(transport);
  ClientOptions o;
  o.endpoints = {s.endpoint()};
  o.transport = kind;
  o.timeout = absl::Seconds(20);
  auto c = Client::Create(o);
  ASSERT_TRUE(c.ok()) << c.status();
  std::vector<std::vector<uint8_t>> payloads;
  std::vector<kernels::ChainHash> chain = RandomChain(120, seed);
  size_t n = 0;
  for (; n < chain.size(); ++n) {
    if (n >= 8 && (!expect_prepared || PutBuffersMetric(s, transport, "prepared") >= 1)) break;
    payloads.push_back(MakePayload(1 << 20, seed * 1000 + n));
    PutItem item{chain[n], payloads.back()};
    auto r = (*c)->Put(kNs, 0, absl::MakeConstSpan(&item, 1));
    ASSERT_TRUE(r.ok()) << r.status();
    absl::SleepFor(absl::Milliseconds(5));  // time for the background thread to prepare
  }
  chain.resize(n);
  auto got = (*c)->Get(kNs, 0, chain);
  ASSERT_EQ(got.size(), n);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_TRUE(got[i].hit) << i << " " << got[i].status;
    EXPECT_EQ(got[i].payload, payloads[i]) << i;
  }
  const double prepared = PutBuffersMetric(s, transport, "prepared");
  if (expect_prepared) {
    EXPECT_GE(prepared, 1) << transport;
  } else {
    EXPECT_EQ(prepared, 0) << transport;
  }
  // Every put took one buffer, prepared (or recycled) or allocated; the first transport
  // to use a size allocates its first two (the pool is shared, so the second may not).
  EXPECT_EQ(
      PutBuffersMetric(s, transport, "prepared") + PutBuffersMetric(s, transport, "allocated"),
      static_cast<double>(n))
      << transport;
}

TEST(PutBuffersServiceTest, CommonSizeUsesPreparedBuffersOnBothTransports) {
  ServerProcess s;
  ServerProcess::Options so;
  so.enable_ucx = true;
  ASSERT_TRUE(s.Start(so).ok());
  PutAndCheck(s, TransportKind::kGrpc, /*expect_prepared=*/true, 1);
  ClientOptions probe;
  probe.endpoints = {s.endpoint()};
  probe.transport = TransportKind::kUcx;
  if (Client::Create(probe).status().code() == absl::StatusCode::kUnimplemented) {
    GTEST_SKIP() << "no UCX transport in this build";
  }
  PutAndCheck(s, TransportKind::kUcx, /*expect_prepared=*/true, 2);
}

TEST(PutBuffersServiceTest, ZeroDisablesAndNegativeDoesNotStart) {
  ServerProcess s;
  ServerProcess::Options so;
  so.extra_flags = {"--ready_put_buffers=0"};
  ASSERT_TRUE(s.Start(so).ok());
  PutAndCheck(s, TransportKind::kGrpc, /*expect_prepared=*/false, 3);

  ServerProcess bad;
  ServerProcess::Options bo;
  bo.extra_flags = {"--ready_put_buffers=-1"};
  EXPECT_FALSE(bad.Start(bo).ok());
}

TEST(PutBuffersServiceTest, ReservedMemoryIsHeldFromTheStartAndFillingDoesNotGrowTheServer) {
  ServerProcess s;
  ServerProcess::Options so;
  so.enable_ucx = true;
  so.memory_capacity = "192MiB";
  so.extra_flags = {"--reserve_memory"};
  ASSERT_TRUE(s.Start(so).ok());
  const long start_kib = s.RssKiB();
  EXPECT_GE(start_kib, 192 * 1024) << "the RAM tier was not reserved at start";
  for (TransportKind transport : {TransportKind::kGrpc, TransportKind::kUcx}) {
    ClientOptions o;
    o.endpoints = {s.endpoint()};
    o.transport = transport;
    auto c = Client::Create(o);
    if (c.status().code() == absl::StatusCode::kUnimplemented) continue;  // no UCX here
    ASSERT_TRUE(c.ok()) << c.status();
    // 20 blocks of 4 MiB per transport: 160 MiB in all, inside the tier.
    const std::vector<kernels::ChainHash> chain =
        RandomChain(20, transport == TransportKind::kGrpc ? 71 : 72);
    std::vector<std::vector<uint8_t>> payloads;
    for (size_t i = 0; i < chain.size(); ++i) {
      payloads.push_back(MakePayload(4 << 20, 7000 + i + (transport == TransportKind::kUcx)));
      PutItem item{chain[i], payloads.back()};
      auto r = (*c)->Put(kNs, 0, absl::MakeConstSpan(&item, 1));
      ASSERT_TRUE(r.ok()) << r.status();
    }
    auto got = (*c)->Get(kNs, 0, chain);
    ASSERT_EQ(got.size(), chain.size());
    for (size_t i = 0; i < chain.size(); ++i) {
      ASSERT_TRUE(got[i].hit) << i << " " << got[i].status;
      EXPECT_EQ(got[i].payload, payloads[i]) << i;
    }
  }
  // Without the reserve the server would have grown by the 160 MiB it now holds.
  EXPECT_LT(s.RssKiB() - start_kib, 64 * 1024) << "payloads did not land in the reserve";

  ServerProcess bad;
  ServerProcess::Options bo;
  bo.memory_capacity = "1TiB";
  bo.extra_flags = {"--reserve_memory"};
  EXPECT_FALSE(bad.Start(bo).ok()) << "a reserve larger than the machine must not start";
}

}  // namespace
}  // namespace kvtier::testing
