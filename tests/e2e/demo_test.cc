// Runs `kvtier demo` (README command 1) as a user does, on a small slice of the Mooncake
// trace (tests/e2e/trace_slice.jsonl: its first 8 lines), and checks the numbers in its
// table: prefix hits from the trace's shared prefixes, full decode imports, the byte
// ratio of the k4v2 codec, and the attention error against exact FP16 attention.
#include <sys/wait.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tools/demo_workload.h"

namespace kvtier::tools {
namespace {

struct RunResult {
  int exit_code = -1;
  std::string out;
};

RunResult RunDemo(const std::string& args) {
  const std::string cmd = absl::StrCat(KVTIER_CLI_BIN, " demo --trace=", KVTIER_TRACE,
                                       " --no_progress ", args, " 2>&1");
  RunResult r;
  FILE* p = ::popen(cmd.c_str(), "r");
  if (p == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), p)) > 0) r.out.append(buf, n);
  const int status = ::pclose(p);
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// The number after `label` and `key` on the table line that starts with `label`.
double Number(const std::string& out, const std::string& label, const std::string& key = "") {
  const size_t line = out.find("  " + label);
  if (line == std::string::npos) return -1;
  size_t pos = line + 2 + label.size();
  if (!key.empty()) {
    pos = out.find(key, pos);
    if (pos == std::string::npos) return -1;
    pos += key.size();
  }
  while (pos < out.size() && out[pos] == ' ') ++pos;
  size_t end = pos;
  while (end < out.size() &&
         (std::isdigit(static_cast<unsigned char>(out[end])) || out[end] == '.'))
    ++end;
  double v = -1;
  if (!absl::SimpleAtod(out.substr(pos, end - pos), &v)) return -1;
  return v;
}

TEST(DemoTest, ReplaysTraceSliceWithHitsAndBoundedError) {
  const RunResult r =
      RunDemo("--requests=6 --layers=2 --kv_heads=4 --q_heads=16 --max_tokens=1024");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  // Requests 2..6 of the slice share trace hash id 0 (the first 512 tokens) with request 1.
  const double hit = Number(r.out, "token prefix hit rate");
  EXPECT_GT(hit, 0.0) << r.out;
  EXPECT_LT(hit, 100.0) << r.out;
  EXPECT_EQ(Number(r.out, "decode import hit rate"), 100.0) << r.out;
  // Duplicated prefixes are stored once: 5 later requests find hash 0's 4 blocks.
  EXPECT_GT(Number(r.out, "blocks exported (Put)"), 0.0) << r.out;
  // k4v2_g128 moves >3.5x fewer bytes than FP16 even with FP16 sink and tail blocks.
  const size_t ratio_pos = r.out.find("x less)", r.out.find("bytes stored"));
  ASSERT_NE(ratio_pos, std::string::npos) << r.out;
  size_t start = r.out.rfind('(', ratio_pos);
  double ratio = 0;
  ASSERT_TRUE(absl::SimpleAtod(r.out.substr(start + 1, ratio_pos - start - 1), &ratio)) << r.out;
  EXPECT_GT(ratio, 3.5) << r.out;
  EXPECT_LT(ratio, 4.75) << r.out;
  // 2-bit values: the relative L2 error of decode attention on this synthetic KV is
  // about 0.27 on the full demo (docs/benchmarks/e2e.md); a broken codec or layout gives >= 1.
  const double mean_err = Number(r.out, "attention error vs FP16", "mean");
  EXPECT_GT(mean_err, 0.01) << r.out;  // really compressed
  EXPECT_LT(mean_err, 0.6) << r.out;
  EXPECT_NE(r.out.find("http://127.0.0.1:"), std::string::npos) << r.out;
}

TEST(DemoTest, Fp16BlocksAreExact) {
  // Every block FP16 (sink policy covers all): attention matches exact FP16 attention up to
  // the rotation's fp16 rounding.
  const RunResult r = RunDemo(
      "--requests=2 --layers=1 --kv_heads=2 --q_heads=4 --max_tokens=640 "
      "--sink_blocks=100 --prefill_workers=1 --decode_workers=1");
  ASSERT_EQ(r.exit_code, 0) << r.out;
  const double mean_err = Number(r.out, "attention error vs FP16", "mean");
  EXPECT_GE(mean_err, 0.0) << r.out;
  EXPECT_LT(mean_err, 2e-3) << r.out;
}

TEST(DemoTest, MissingTraceIsAnError) {
  const RunResult r = RunDemo("--trace=/nonexistent/trace.jsonl");
  EXPECT_EQ(r.exit_code, 1) << r.out;
  EXPECT_NE(r.out.find("NOT_FOUND"), std::string::npos) << r.out;
}

TEST(DemoTest, BadFlagIsAUsageError) {
  const RunResult r = RunDemo("--layers=0");
  EXPECT_EQ(r.exit_code, 2) << r.out;
}

TEST(DemoWorkloadTest, SharedHashIdsGiveIdenticalPayloads) {
  DemoModel m;
  m.num_layers = 1;
  m.num_kv_heads = 2;
  m.num_q_heads = 2;
  TraceRequest a{.input_length = 700, .hash_ids = {0, 1}};
  TraceRequest b{.input_length = 900, .hash_ids = {0, 2}};
  const std::string ns = m.Namespace();
  RequestPlan pa = PlanRequest(m, a, ns), pb = PlanRequest(m, b, ns);
  ASSERT_EQ(pa.num_blocks(), 6);  // 5 full blocks + a 60-token tail
  EXPECT_EQ(pa.tail_tokens, 60);
  // Hash id 0 covers blocks 0..3 in both: same chain hashes and same bytes.
  for (int blk = 0; blk < 4; ++blk) EXPECT_EQ(pa.chain[blk], pb.chain[blk]) << blk;
  EXPECT_NE(pa.chain[4], pb.chain[4]);
  auto src_for = [&](const RequestPlan& p) {
    return KvSource([&m, &p, held = std::make_shared<std::vector<HashBlockKv>>()](
                        int hi, int l) -> absl::StatusOr<const HashBlockKv*> {
      auto kv = GenerateHashBlockKv(m, p.hash_ids[hi], l, hi == 0);
      if (!kv.ok()) return kv.status();
      held->reserve(16);
      held->push_back(std::move(*kv));
      return &held->back();
    });
  };
  auto sa = src_for(pa), sb = src_for(pb);
  for (int blk : {0, 2}) {
    auto x = BuildBlockPayload(m, pa, blk, sa);
    auto y = BuildBlockPayload(m, pb, blk, sb);
    ASSERT_TRUE(x.ok() && y.ok());
    EXPECT_EQ(*x, *y) << blk;
    auto v = kernels::ValidatePayload(*x);
    ASSERT_TRUE(v.ok()) << v.status();
    EXPECT_EQ(v->header.encoding,
              blk == 0 ? kernels::BlockEncoding::kFp16 : kernels::BlockEncoding::kTiles);
  }
  auto tail = BuildBlockPayload(m, pa, 5, sa);
  ASSERT_TRUE(tail.ok());
  auto tv = kernels::ValidatePayload(*tail);
  ASSERT_TRUE(tv.ok());
  EXPECT_EQ(tv->header.token_count, 60u);
  EXPECT_EQ(tv->header.flags, kernels::kFlagTail);
  EXPECT_EQ(BuildBlockPayload(m, pa, 6, sa).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(DemoWorkloadTest, ReadTraceRejectsMalformedLines) {
  EXPECT_EQ(LoadTrace("/nonexistent", 1).status().code(), absl::StatusCode::kNotFound);
  auto ok = LoadTrace(KVTIER_TRACE, 3, 2);
  ASSERT_TRUE(ok.ok()) << ok.status();
  ASSERT_EQ(ok->size(), 3u);
  EXPECT_EQ((*ok)[0].hash_ids.front(), 0);
  EXPECT_GT((*ok)[0].input_length, 0u);
  char path[] = "/tmp/kvtier-trace-XXXXXX";
  const int fd = ::mkstemp(path);
  ASSERT_GE(fd, 0);
  const char bad[] = "{\"timestamp\": 0, \"input_length\": 5}\n";
  ASSERT_EQ(::write(fd, bad, sizeof(bad) - 1), static_cast<ssize_t>(sizeof(bad) - 1));
  ::close(fd);
  EXPECT_EQ(LoadTrace(path).status().code(), absl::StatusCode::kInvalidArgument);
  ::unlink(path);
}

}  // namespace
}  // namespace kvtier::tools
