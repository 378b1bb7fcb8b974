// Observability: the /metrics exposition of a running kvtier-server passes
// `promtool check metrics`, and a real Prometheus (Debian's) scraping it answers the
// contract's token hit-ratio PromQL with the expected value.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <regex>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "tests/service/harness.h"

namespace kvtier::testing {
namespace {

using client::Client;
using client::ClientOptions;
using client::PutItem;

constexpr char kNs[] = "tenantA/obs/k4v2_g128/tp0";

std::unique_ptr<Client> Connect(const ServerProcess& s) {
  ClientOptions o;
  o.endpoints = {s.endpoint()};
  auto c = Client::Create(o);
  EXPECT_TRUE(c.ok());
  return *std::move(c);
}

std::string RunCapture(const std::string& cmd, int* rc) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  std::string out;
  char buf[512];
  while (p && fgets(buf, sizeof(buf), p)) out += buf;
  *rc = p ? pclose(p) : -1;
  return out;
}

TEST(ObservabilityTest, MetricsOfARunningServerPassPromtoolAndNameTheContractSeries) {
  ServerProcess s;
  ASSERT_TRUE(s.Start({}).ok());
  auto c = Connect(s);
  const auto chain = RandomChain(4, 1);
  std::vector<std::vector<uint8_t>> payloads = {MakePayload(20000, 1), MakePayload(20000, 2)};
  std::vector<PutItem> items = {{chain[0], payloads[0]}, {chain[1], payloads[1]}};
  ASSERT_TRUE(c->Put(kNs, 0, items).ok());
  ASSERT_TRUE(c->Put(kNs, 0, items).ok());  // deduplicated
  EXPECT_EQ(*c->Lookup(kNs, 0, chain, 128), 2u);
  (void)c->Get(kNs, 0, chain);
  EXPECT_EQ(c->Lookup("bad namespace", 0, chain).status().code(),
            absl::StatusCode::kInvalidArgument);

  auto healthz = s.HttpGet("/healthz");
  ASSERT_TRUE(healthz.ok());
  EXPECT_EQ(healthz->first, 200);
  EXPECT_EQ(healthz->second, "ok\n");
  auto readyz = s.HttpGet("/readyz");
  EXPECT_EQ(readyz->first, 200);

  auto m = s.HttpGet("/metrics");
  ASSERT_TRUE(m.ok());
  const std::string& text = m->second;
  for (
      const char* series : {
          "kvtier_lookup_requests_total{namespace=\"tenantA/obs/k4v2_g128/"
          "tp0\",transport=\"grpc\"} 1",
          "kvtier_lookup_blocks_total{namespace=\"tenantA/obs/k4v2_g128/tp0\",result=\"hit\"} 2",
          "kvtier_lookup_blocks_total{namespace=\"tenantA/obs/k4v2_g128/tp0\",result=\"miss\"} 2",
          "kvtier_lookup_tokens_total{namespace=\"tenantA/obs/k4v2_g128/tp0\",result=\"hit\"} 256",
          "kvtier_put_blocks_total{namespace=\"tenantA/obs/k4v2_g128/tp0\",result=\"stored\"} 2",
          "kvtier_put_blocks_total{namespace=\"tenantA/obs/k4v2_g128/"
          "tp0\",result=\"deduplicated\"} 2",
          "kvtier_get_blocks_total{tier=\"memory\",result=\"hit\"} 2",
          "kvtier_get_blocks_total{tier=\"none\",result=\"miss\"} 2",
          "kvtier_stored_blocks{tier=\"memory\"} 2",
          "kvtier_capacity_bytes{tier=\"memory\"} 1073741824",
          "kvtier_requests_total{method=\"Lookup\",transport=\"grpc\",code=\"INVALID_ARGUMENT\"} 1",
          "kvtier_requests_total{method=\"Put\",transport=\"grpc\",code=\"OK\"} 2",
          "kvtier_request_duration_seconds_count{method=\"Get\",transport=\"grpc\"} 1",
          "kvtier_request_duration_seconds_bucket{method=\"Get\",transport=\"grpc\",le=\"+Inf\"} 1",
          "kvtier_transfer_bytes_total{transport=\"grpc\",direction=\"out\"}",
          "kvtier_inflight_requests{transport=\"grpc\"} 0",
          "kvtier_build_info{version=\"0.1.0\"} 1",
          "# TYPE kvtier_evictions_total counter",
          "# TYPE kvtier_dedup_saved_bytes_total counter",
          "# TYPE kvtier_corrupt_blocks_dropped_total counter",
      }) {
    EXPECT_NE(text.find(series), std::string::npos) << "missing: " << series << "\n" << text;
  }
  TempDir d;
  WriteFile(d.File("metrics.txt"), text);
  int rc = 0;
  const std::string out =
      RunCapture("/usr/bin/promtool check metrics < " + d.File("metrics.txt"), &rc);
  EXPECT_EQ(rc, 0) << out;

  // SIGTERM: drain, flush, exit 0.
  // (with the client still connected).
  const absl::Time t0 = absl::Now();
  auto code = s.Terminate();
  EXPECT_LT(absl::Now() - t0, absl::Seconds(2)) << "an idle connection must not delay the drain";
  ASSERT_TRUE(code.ok());
  EXPECT_EQ(*code, 0);
}

// A query against Prometheus' HTTP API; returns the first sample value of the result.
absl::StatusOr<double> PromQuery(int port, const std::string& query) {
  std::string enc;
  for (unsigned char ch : query) {
    if (isalnum(ch) || ch == '_' || ch == '.' || ch == '-') {
      enc += static_cast<char>(ch);
    } else {
      char b[4];
      std::snprintf(b, sizeof(b), "%%%02X", ch);
      enc += b;
    }
  }
  int rc = 0;
  const std::string body = RunCapture(
      absl::StrCat("curl -s 'http://127.0.0.1:", port, "/api/v1/query?query=", enc, "'"), &rc);
  std::smatch m;
  static const std::regex kValue("\"value\":\\[[0-9.e+]+,\"([^\"]+)\"\\]");
  if (!std::regex_search(body, m, kValue)) return absl::NotFoundError(body);
  return std::stod(m[1].str());
}

TEST(ObservabilityTest, PrometheusScrapesTheServerAndComputesTheTokenHitRatio) {
  ServerProcess s;
  ASSERT_TRUE(s.Start({}).ok());
  auto c = Connect(s);
  // Every lookup: 7 of 10 blocks of 128 tokens present -> hit ratio 0.7.
  const auto chain = RandomChain(10, 77);
  std::vector<std::vector<uint8_t>> payloads;
  std::vector<PutItem> items;
  for (int i = 0; i < 7; ++i) payloads.push_back(MakePayload(15000, 100 + i));
  for (int i = 0; i < 7; ++i) items.push_back({chain[i], payloads[i]});
  ASSERT_TRUE(c->Put(kNs, 0, items).ok());

  TempDir d;
  const int prom_port = FreePort();
  WriteFile(d.File("prometheus.yml"),
            absl::StrCat("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
                         "scrape_configs:\n  - job_name: kvtier\n    static_configs:\n"
                         "      - targets: ['127.0.0.1:",
                         s.http_port(), "']\n"));
  const pid_t prom = fork();
  ASSERT_GE(prom, 0);
  if (prom == 0) {
    const std::string log = d.File("prometheus.log");
    freopen(log.c_str(), "w", stdout);
    freopen(log.c_str(), "a", stderr);
    const std::string cfg = "--config.file=" + d.File("prometheus.yml");
    const std::string tsdb = "--storage.tsdb.path=" + d.File("tsdb");
    const std::string listen = absl::StrCat("--web.listen-address=127.0.0.1:", prom_port);
    execl("/usr/bin/prometheus", "prometheus", cfg.c_str(), tsdb.c_str(), listen.c_str(),
          static_cast<char*>(nullptr));
    _exit(127);
  }
  // Steady lookups while Prometheus scrapes every second.
  const std::string ratio_query =
      "sum by (namespace) (rate(kvtier_lookup_tokens_total{result=\"hit\"}[5m]))"
      " / sum by (namespace) (rate(kvtier_lookup_tokens_total[5m]))";
  absl::StatusOr<double> ratio = absl::NotFoundError("not yet");
  const absl::Time deadline = absl::Now() + absl::Seconds(30);
  int lookups = 0;
  while (absl::Now() < deadline) {
    for (int i = 0; i < 5; ++i) {
      ASSERT_EQ(*c->Lookup(kNs, 0, chain, 128), 7u);
      ++lookups;
    }
    absl::SleepFor(absl::Milliseconds(100));
    if (lookups % 50 == 0) {
      ratio = PromQuery(prom_port, ratio_query);
      if (ratio.ok()) break;
    }
  }
  // The instantaneous totals give the exact ratio.
  auto exact = PromQuery(prom_port, "sum(kvtier_lookup_tokens_total{result=\"hit\",namespace=\"" +
                                        std::string(kNs) +
                                        "\"}) / sum(kvtier_lookup_tokens_total{namespace=\"" +
                                        std::string(kNs) + "\"})");
  kill(prom, SIGTERM);
  int st = 0;
  waitpid(prom, &st, 0);
  ASSERT_TRUE(ratio.ok()) << ratio.status();
  EXPECT_NEAR(*ratio, 0.7, 0.02);
  ASSERT_TRUE(exact.ok()) << exact.status();
  EXPECT_DOUBLE_EQ(*exact, 0.7);
}

}  // namespace
}  // namespace kvtier::testing
