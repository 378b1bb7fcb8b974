// `kvtier bench trace` replay (tools/bench_trace.h): parsing, block sizes, and the rule
// that hit ratios and evictions do not depend on the payload scale.
#include "tools/bench_trace.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace kvtier::tools {
namespace {

constexpr char kRealTrace[] = "/work/shared/data/mooncake_conversation_trace.jsonl";

// Conversations: each shares one of a few system prompts, then grows turn by turn, so
// prefixes repeat at varying depths.
std::vector<TraceRequest> SyntheticTrace(int requests, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<int32_t>> sessions;
  int32_t next_id = 1000;
  std::vector<TraceRequest> out;
  for (int r = 0; r < requests; ++r) {
    if (sessions.empty() || rng() % 4 == 0) {
      std::vector<int32_t> s;
      const int sys = static_cast<int>(rng() % 5);
      for (int i = 0; i < 3; ++i) s.push_back(sys * 10 + i);  // shared system prompt
      sessions.push_back(s);
    }
    std::vector<int32_t>& s = sessions[rng() % sessions.size()];
    const int grow = 1 + static_cast<int>(rng() % 4);
    for (int i = 0; i < grow; ++i) s.push_back(next_id++);
    TraceRequest t;
    t.hash_ids = s;
    t.input_length = s.size() * 512 - rng() % 300;
    out.push_back(t);
  }
  return out;
}

TEST(BenchTraceTest, ParsesMooncakeLines) {
  absl::StatusOr<TraceRequest> r = ParseTraceLine(
      R"({"timestamp": 0, "input_length": 6758, "output_length": 500, "hash_ids": [0, 1, 2, 13]})");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->input_length, 6758u);
  EXPECT_EQ(r->hash_ids, (std::vector<int32_t>{0, 1, 2, 13}));
  EXPECT_EQ(r->output_length, 500u);
  EXPECT_EQ(r->timestamp_ms, 0);
  EXPECT_EQ(
      ParseTraceLine(R"({"timestamp": 1250, "input_length": 9, "hash_ids": [4]})")->timestamp_ms,
      1250);
  EXPECT_TRUE(ParseTraceLine(R"({"input_length": 5, "hash_ids": []})")->hash_ids.empty());
  EXPECT_EQ(ParseTraceLine(R"({"hash_ids": [1]})").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseTraceLine(R"({"input_length": 5, "hash_ids": [1, x]})").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseTraceLine(R"({"input_length": 5, "hash_ids": [1, 2)").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(BenchTraceTest, ParsesByteCounts) {
  EXPECT_EQ(*ParseBytes("123"), 123u);
  EXPECT_EQ(*ParseBytes("64KiB"), 65536u);
  EXPECT_EQ(*ParseBytes("1.5GiB"), 1610612736u);
  EXPECT_EQ(*ParseBytes("100GB"), 100000000000u);
  EXPECT_EQ(*ParseBytes("2TiB"), uint64_t{2} << 40);
  EXPECT_EQ(ParseBytes("12 parsecs").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseBytes("GiB").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(BenchTraceTest, BlockBytesFollowModelAndCodec) {
  const ModelShape qwen = *FindModel("qwen3-32b");
  EXPECT_EQ(BlockBytes(qwen, TraceCodec::kK4V2G128), uint64_t{64} * 8 * 4 * 13824);
  EXPECT_EQ(BlockBytes(qwen, TraceCodec::kFp16), uint64_t{64} * 8 * 512 * 2 * 2 * 128);
  const ModelShape llama = *FindModel("llama3-8b");
  EXPECT_EQ(BlockBytes(llama, TraceCodec::kFp16), uint64_t{32} * 8 * 512 * 2 * 2 * 128);
  EXPECT_EQ(FindModel("gpt-5").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(BenchTraceTest, HitRatiosDoNotDependOnScale) {
  const std::vector<TraceRequest> trace = SyntheticTrace(400, 7);
  for (TraceCodec codec : {TraceCodec::kK4V2G128, TraceCodec::kFp16}) {
    ReplayOptions o;
    o.codec = codec;
    o.capacity_bytes = uint64_t{6} << 30;  // a few dozen blocks: constant eviction
    std::vector<ReplayResult> results;
    for (double scale : {1.0 / 256, 1.0 / 1024, 1.0 / 8192}) {
      o.scale = scale;
      absl::StatusOr<ReplayResult> r = ReplayRequests(trace, o);
      ASSERT_TRUE(r.ok()) << r.status();
      results.push_back(*r);
    }
    EXPECT_GT(results[0].memory_evictions, 0u);
    EXPECT_GT(results[0].hit_tokens, 0u);
    EXPECT_GT(results[0].payload_bytes, results[2].payload_bytes);
    for (const ReplayResult& r : results) {
      EXPECT_EQ(r.hit_tokens, results[0].hit_tokens);
      EXPECT_EQ(r.hit_blocks, results[0].hit_blocks);
      EXPECT_EQ(r.memory_evictions, results[0].memory_evictions);
      EXPECT_EQ(r.puts_stored, results[0].puts_stored);
      EXPECT_EQ(r.capacity_blocks, results[0].capacity_blocks);
    }
  }
}

TEST(BenchTraceTest, CompressedBlocksBuyMoreHitsAtEqualCapacity) {
  const std::vector<TraceRequest> trace = SyntheticTrace(400, 11);
  ReplayOptions o;
  o.capacity_bytes = uint64_t{6} << 30;
  o.codec = TraceCodec::kK4V2G128;
  absl::StatusOr<ReplayResult> k4 = ReplayRequests(trace, o);
  o.codec = TraceCodec::kFp16;
  absl::StatusOr<ReplayResult> fp16 = ReplayRequests(trace, o);
  ASSERT_TRUE(k4.ok() && fp16.ok());
  EXPECT_GT(k4->capacity_blocks, 4 * fp16->capacity_blocks);
  EXPECT_GT(k4->token_hit_ratio(), fp16->token_hit_ratio() + 0.05);
}

TEST(BenchTraceTest, DiskTierReplayIsScaleInvariantToo) {
  const std::vector<TraceRequest> trace = SyntheticTrace(150, 3);
  ReplayOptions o;
  o.capacity_bytes = uint64_t{2} << 30;
  o.disk_capacity_bytes = uint64_t{4} << 30;
  std::vector<ReplayResult> results;
  for (double scale : {1.0 / 2048, 1.0 / 8192}) {
    o.scale = scale;
    absl::StatusOr<ReplayResult> r = ReplayRequests(trace, o);
    ASSERT_TRUE(r.ok()) << r.status();
    results.push_back(*r);
  }
  EXPECT_GT(results[0].disk_evictions, 0u);
  EXPECT_GT(results[0].promotions, 0u);
  EXPECT_EQ(results[0].hit_tokens, results[1].hit_tokens);
  EXPECT_EQ(results[0].disk_evictions, results[1].disk_evictions);
  EXPECT_EQ(results[0].promotions, results[1].promotions);
}

TEST(BenchTraceTest, LoadsTheRealTraceWhenPresent) {
  if (!std::filesystem::exists(kRealTrace)) GTEST_SKIP() << kRealTrace << " not present";
  absl::StatusOr<std::vector<TraceRequest>> t = LoadTrace(kRealTrace, 300);
  ASSERT_TRUE(t.ok()) << t.status();
  ASSERT_EQ(t->size(), 300u);
  ReplayOptions o;
  o.capacity_bytes = uint64_t{64} << 30;
  o.scale = 1.0 / 4096;
  absl::StatusOr<ReplayResult> a = ReplayRequests(*t, o);
  o.scale = 1.0 / 1024;
  absl::StatusOr<ReplayResult> b = ReplayRequests(*t, o);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_GT(a->hit_tokens, 0u);
  EXPECT_EQ(a->hit_tokens, b->hit_tokens);
  EXPECT_EQ(a->memory_evictions, b->memory_evictions);
}

TEST(BenchTraceTest, MissingTraceIsNotFound) {
  ReplayOptions o;
  o.trace_path = "/nonexistent/trace.jsonl";
  o.capacity_bytes = uint64_t{1} << 40;
  EXPECT_EQ(ReplayTrace(o).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace kvtier::tools
