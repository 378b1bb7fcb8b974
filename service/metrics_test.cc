#include "service/metrics.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

namespace kvtier::service {
namespace {

TEST(MetricsTest, EscapesLabelValues) {
  EXPECT_EQ(EscapeLabelValue("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
  EXPECT_EQ(EscapeLabelValue("plain/ns:1"), "plain/ns:1");
}

TEST(MetricsTest, FormatsValues) {
  EXPECT_EQ(FormatValue(3), "3");
  EXPECT_EQ(FormatValue(0.25), "0.25");
  EXPECT_EQ(FormatValue(1.0 / 0.0), "+Inf");
  EXPECT_EQ(FormatValue(-1.0 / 0.0), "-Inf");
}

TEST(MetricsTest, RendersCountersGaugesAndCumulativeHistogramBuckets) {
  Registry reg;
  CounterFamily& c = reg.AddCounter("kvtier_test_total", "A test counter", {"method", "code"});
  GaugeFamily& g = reg.AddGauge("kvtier_test_gauge", "A gauge", {});
  HistogramFamily& h = reg.AddHistogram("kvtier_test_seconds", "Latency", {"method"}, {0.1, 1});
  c.Add({"Get", "OK"});
  c.Add({"Get", "OK"}, 2);
  c.Add({"Put", "INVALID_ARGUMENT"});
  g.Set({}, 42);
  h.Observe({"Get"}, 0.05);
  h.Observe({"Get"}, 0.5);
  h.Observe({"Get"}, 5);
  EXPECT_EQ(c.Value({"Get", "OK"}), 3);
  EXPECT_EQ(h.Count({"Get"}), 3u);
  const std::string text = reg.Render();
  EXPECT_NE(text.find("# TYPE kvtier_test_total counter\n"), std::string::npos) << text;
  EXPECT_NE(text.find("kvtier_test_total{method=\"Get\",code=\"OK\"} 3\n"), std::string::npos);
  EXPECT_NE(text.find("kvtier_test_total{method=\"Put\",code=\"INVALID_ARGUMENT\"} 1\n"),
            std::string::npos);
  EXPECT_NE(text.find("kvtier_test_gauge 42\n"), std::string::npos);
  EXPECT_NE(text.find("kvtier_test_seconds_bucket{method=\"Get\",le=\"0.10000000000000001\"} 1\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("kvtier_test_seconds_bucket{method=\"Get\",le=\"1\"} 2\n"),
            std::string::npos);
  EXPECT_NE(text.find("kvtier_test_seconds_bucket{method=\"Get\",le=\"+Inf\"} 3\n"),
            std::string::npos);
  EXPECT_NE(text.find("kvtier_test_seconds_sum{method=\"Get\"} 5.5499999999999998\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("kvtier_test_seconds_count{method=\"Get\"} 3\n"), std::string::npos);
}

TEST(MetricsTest, NamespaceLabelsAreCapped) {
  NamespaceLabeler l(2);
  EXPECT_EQ(l.Label("a"), "a");
  EXPECT_EQ(l.Label("b"), "b");
  EXPECT_EQ(l.Label("c"), "_other");
  EXPECT_EQ(l.Label("a"), "a");
}

TEST(MetricsTest, PromtoolAcceptsTheExposition) {
  Registry reg;
  CounterFamily& c =
      reg.AddCounter("kvtier_lookup_tokens_total", "Tokens looked up", {"namespace", "result"});
  c.Add({"tenant \"A\"\\x\nnewline", "hit"}, 128);
  c.Add({"tenantB/m/k4v2_g128/tp0", "miss"}, 256);
  reg.AddGauge("kvtier_stored_bytes", "Payload bytes held", {"tier"}).Set({"memory"}, 1e12);
  HistogramFamily& h = reg.AddHistogram("kvtier_request_duration_seconds", "Request latency",
                                        {"method", "transport"}, DefaultLatencyBuckets());
  h.Observe({"Get", "grpc"}, 0.003);
  reg.AddGauge("kvtier_build_info", "Build information", {"version"}).Set({"0.1.0"}, 1);
  char path[] = "/tmp/kvtier_metrics_test_XXXXXX";
  const int fd = mkstemp(path);
  ASSERT_GE(fd, 0);
  const std::string text = reg.Render();
  ASSERT_EQ(write(fd, text.data(), text.size()), static_cast<ssize_t>(text.size()));
  close(fd);
  const std::string cmd = std::string(KVTIER_PROMTOOL) + " check metrics < " + path + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof(buf), p)) out += buf;
  const int rc = pclose(p);
  unlink(path);
  EXPECT_EQ(rc, 0) << "promtool said:\n" << out << "\non:\n" << text;
}

}  // namespace
}  // namespace kvtier::service
