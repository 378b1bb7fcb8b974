// Sequence-level codec, synthetic generator, baselines, metrics, and the headline accuracy
// claim: KVarN k4v2 beats plain RTN at (about) the same bits on the synthetic generator.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/baselines.h"
#include "kernels/cpu/codec.h"
#include "kernels/cpu/evaluate.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/metrics.h"
#include "kernels/cpu/sequence.h"
#include "kernels/cpu/synth.h"

namespace kvtier::kernels::cpu {
namespace {

AttentionInputs InputsOf(const SynthKv& kv) {
  return {kv.tokens,      kv.num_kv_heads, kv.num_q_heads, kv.head_dim,
          kv.num_queries, kv.k.data(),     kv.v.data(),    kv.q.data()};
}

std::vector<PayloadView> Views(const std::vector<std::vector<uint8_t>>& payloads) {
  std::vector<PayloadView> views;
  for (const auto& p : payloads) {
    auto v = ValidatePayload(p);
    EXPECT_TRUE(v.ok()) << v.status();
    if (v.ok()) views.push_back(*v);
  }
  return views;
}

// ---------------------------------------------------------------- synthetic generator

TEST(SynthTest, DeterministicShapedAndFp16) {
  SynthOptions o{.tokens = 300,
                 .num_kv_heads = 2,
                 .num_q_heads = 6,
                 .head_dim = 64,
                 .num_queries = 3,
                 .seed = 7};
  auto a = GenerateSynthKv(o);
  auto b = GenerateSynthKv(o);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->k.size(), 300u * 2 * 64);
  EXPECT_EQ(a->q.size(), 3u * 6 * 64);
  EXPECT_EQ(a->k, b->k);
  EXPECT_EQ(a->v, b->v);
  EXPECT_EQ(a->q, b->q);
  o.seed = 8;
  auto c = GenerateSynthKv(o);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(a->k, c->k);
  for (float x : a->k) ASSERT_EQ(x, HalfToFloat(FloatToHalf(x)));
  for (float x : a->v) ASSERT_EQ(x, HalfToFloat(FloatToHalf(x)));
}

TEST(SynthTest, HasOutlierChannelsAndAnAttentionSink) {
  auto kv = GenerateSynthKv({.tokens = 1024,
                             .num_kv_heads = 2,
                             .num_q_heads = 8,
                             .head_dim = 128,
                             .num_queries = 4,
                             .seed = 3});
  ASSERT_TRUE(kv.ok());
  const int d = 128, hk = 2;
  for (int h = 0; h < hk; ++h) {
    std::vector<double> stds(d);
    for (int c = 0; c < d; ++c) {
      double s1 = 0, s2 = 0;
      for (int t = 1; t < kv->tokens; ++t) {
        const double x = kv->k[(static_cast<size_t>(t) * hk + h) * d + c];
        s1 += x;
        s2 += x * x;
      }
      const double n = kv->tokens - 1;
      stds[c] = std::sqrt(s2 / n - (s1 / n) * (s1 / n));
    }
    std::vector<double> sorted = stds;
    std::sort(sorted.begin(), sorted.end());
    const double median = sorted[d / 2];
    // Outlier pairs: 4 pairs = 8 channels at 5..20x the median (RoPE spreads each pair's
    // energy over both channels, so each stays above ~3x).
    EXPECT_GT(sorted[d - 1] / median, 5.0) << "head " << h;
    EXPECT_GT(sorted[d - 8] / median, 3.0) << "head " << h;
    EXPECT_LT(sorted[d - 9] / median, 2.0) << "head " << h;
    // The outliers sit in the lowest-frequency quarter of the RoPE pairs (i >= 3/4 · D/2).
    for (int c = 0; c < d; ++c) {
      if (stds[c] > 3.0 * median) {
        EXPECT_GE(c % (d / 2), 3 * d / 8) << "channel " << c;
      }
    }
  }
  // The sink token draws a large share of the attention of every query.
  double sink_mass = 0;
  int rows = 0;
  const int group = 4;
  for (int qi = 0; qi < kv->num_queries; ++qi) {
    for (int qh = 0; qh < 8; ++qh) {
      const float* q = kv->q.data() + (static_cast<size_t>(qi) * 8 + qh) * d;
      std::vector<double> s(kv->tokens);
      for (int t = 0; t < kv->tokens; ++t) {
        const float* k = kv->k.data() + (static_cast<size_t>(t) * hk + qh / group) * d;
        double a = 0;
        for (int c = 0; c < d; ++c) a += double{q[c]} * k[c];
        s[t] = a / std::sqrt(128.0);
      }
      const double m = *std::max_element(s.begin(), s.end());
      double z = 0;
      for (double x : s) z += std::exp(x - m);
      sink_mass += std::exp(s[0] - m) / z;
      ++rows;
    }
  }
  sink_mass /= rows;
  EXPECT_GT(sink_mass, 0.1);
  EXPECT_LT(sink_mass, 0.9);
}

// The attention statistics the generator is calibrated to (docs/codec.md, "Attention
// statistics"): logit std 1.25 (realistic range ~1-3), a sink drawing a large share, and
// the non-sink attention spread over hundreds of tokens at 4K tokens (before the
// calibration, logit std 2: a median of 4-18 effective non-sink tokens and a
// participation ratio of 2-4, i.e. a few tokens took all the non-sink attention).
TEST(SynthTest, AttentionStatisticsAreRealistic) {
  for (uint64_t seed : {1, 2, 3}) {
    auto kv = GenerateSynthKv({.tokens = 4096,
                               .num_kv_heads = 8,
                               .num_q_heads = 32,
                               .head_dim = 128,
                               .num_queries = 2,
                               .seed = seed});
    ASSERT_TRUE(kv.ok());
    const SynthAttentionStats st = MeasureSynthAttention(*kv);
    SCOPED_TRACE("seed " + std::to_string(seed));
    EXPECT_NEAR(st.logit_std, 1.25, 0.05);
    EXPECT_GT(st.sink_share, 0.2);
    EXPECT_LT(st.sink_share, 0.6);
    EXPECT_GT(st.eff_tokens, 5.0);  // full row, sink included; many rows are sink-dominated
    EXPECT_GT(st.eff_tokens_nosink, 200.0);
    EXPECT_GT(st.participation, 10.0);
  }
}

TEST(SynthTest, RejectsBadOptions) {
  EXPECT_EQ(GenerateSynthKv({.head_dim = 96}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GenerateSynthKv({.num_kv_heads = 3, .num_q_heads = 8}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GenerateSynthKv({.tokens = 1}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(GenerateSynthKv({.num_queries = 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------- sequence

TEST(SequenceTest, SinkTilesAndTailBlocks) {
  auto kv = GenerateSynthKv({.tokens = 300,
                             .num_kv_heads = 2,
                             .num_q_heads = 4,
                             .head_dim = 64,
                             .num_queries = 2,
                             .seed = 5});
  ASSERT_TRUE(kv.ok());
  SequenceOptions opt;  // k4v2_g128, one sink block
  auto payloads = EncodeSequence(opt, 64, 2, 300, kv->k.data(), kv->v.data());
  ASSERT_TRUE(payloads.ok()) << payloads.status();
  ASSERT_EQ(payloads->size(), 3u);
  auto views = Views(*payloads);
  ASSERT_EQ(views.size(), 3u);
  EXPECT_EQ(views[0].header.encoding, BlockEncoding::kFp16);
  EXPECT_EQ(views[0].header.flags, kFlagSink);
  EXPECT_EQ(views[0].header.token_count, 128u);
  EXPECT_EQ(views[1].header.encoding, BlockEncoding::kTiles);
  EXPECT_EQ(views[1].header.flags, 0);
  EXPECT_EQ(views[2].header.encoding, BlockEncoding::kFp16);
  EXPECT_EQ(views[2].header.flags, kFlagTail);
  EXPECT_EQ(views[2].header.token_count, 44u);

  std::vector<float> k_hat, v_hat;
  ASSERT_TRUE(DecodeSequence(views, &k_hat, &v_hat).ok());
  ASSERT_EQ(k_hat.size(), kv->k.size());
  // FP16 blocks: rotation to fp16 and back costs < 1e-3 relative per element.
  auto max_rel = [&](int t0, int t1, const std::vector<float>& a, const std::vector<float>& b) {
    double num = 0, den = 0;
    for (size_t i = static_cast<size_t>(t0) * 128; i < static_cast<size_t>(t1) * 128; ++i) {
      num += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
      den += double{a[i]} * a[i];
    }
    return std::sqrt(num / den);
  };
  EXPECT_LT(max_rel(0, 128, kv->k, k_hat), 1e-3);
  EXPECT_LT(max_rel(256, 300, kv->v, v_hat), 1e-3);
  EXPECT_LT(max_rel(128, 256, kv->k, k_hat), 0.15);
  EXPECT_GT(max_rel(128, 256, kv->k, k_hat), 1e-3);  // really quantized

  // Attention over the payloads (compressed + FP16 blocks) equals a float64 attention on the
  // decoded cache.
  auto sections = SectionsOf(views);
  ASSERT_TRUE(sections.ok());
  const TileLayout layout = MakeTileLayout(opt.preset, 64);
  std::vector<float> out(4 * 64);
  ASSERT_TRUE(AttendReference(layout, 2, *sections, kv->q.data(), 4, 0.125f, out.data(), nullptr,
                              /*use_float64=*/true)
                  .ok());
  for (int qh = 0; qh < 4; ++qh) {
    const int h = qh / 2;
    std::vector<double> s(300), o(64, 0.0);
    for (int t = 0; t < 300; ++t) {
      double a = 0;
      for (int c = 0; c < 64; ++c) a += double{kv->q[qh * 64 + c]} * k_hat[(t * 2 + h) * 64 + c];
      s[t] = a * 0.125;
    }
    const double m = *std::max_element(s.begin(), s.end());
    double z = 0;
    for (double& x : s) z += (x = std::exp(x - m));
    for (int t = 0; t < 300; ++t) {
      for (int c = 0; c < 64; ++c) o[c] += s[t] / z * v_hat[(t * 2 + h) * 64 + c];
    }
    for (int c = 0; c < 64; ++c) EXPECT_NEAR(out[qh * 64 + c], o[c], 1e-5);
  }
}

TEST(SequenceTest, TilesMatchPayloadRecords) {
  auto kv = GenerateSynthKv({.tokens = 200,
                             .num_kv_heads = 3,
                             .num_q_heads = 3,
                             .head_dim = 64,
                             .num_queries = 1,
                             .seed = 9});
  ASSERT_TRUE(kv.ok());
  SequenceOptions opt;
  opt.preset = Preset::kK4V4G64;
  opt.sink_blocks = 0;
  auto payloads = EncodeSequence(opt, 64, 3, 200, kv->k.data(), kv->v.data());
  ASSERT_TRUE(payloads.ok());
  ASSERT_EQ(payloads->size(), 4u);  // 3 full blocks + a tail of 8
  const TileLayout l = MakeTileLayout(opt.preset, 64);
  auto tiles = EncodeTiles(l, 3, 200, kv->k.data(), kv->v.data());
  ASSERT_TRUE(tiles.ok());
  ASSERT_EQ(tiles->size(), 3u * 3u * l.record_bytes);
  for (int b = 0; b < 3; ++b) {
    const auto& p = (*payloads)[b];
    ASSERT_EQ(p.size(), kPayloadHeaderBytes + 3 * l.record_bytes);
    EXPECT_TRUE(std::equal(p.begin() + kPayloadHeaderBytes, p.end(),
                           tiles->begin() + b * 3 * l.record_bytes))
        << "block " << b;
  }
  EXPECT_EQ(EncodeTiles(l, 3, 63, kv->k.data(), kv->v.data()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SequenceTest, RejectsBadShapesAndValues) {
  std::vector<float> k(128 * 64, 0.5f), v(128 * 64, 0.25f);
  EXPECT_EQ(EncodeSequence({}, 96, 1, 64, k.data(), v.data()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeSequence({}, 64, 0, 64, k.data(), v.data()).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(EncodeSequence({}, 64, 1, 0, k.data(), v.data()).status().code(),
            absl::StatusCode::kInvalidArgument);
  SequenceOptions negative;
  negative.sink_blocks = -1;
  EXPECT_EQ(EncodeSequence(negative, 64, 1, 64, k.data(), v.data()).status().code(),
            absl::StatusCode::kInvalidArgument);
  k[77] = NAN;
  EXPECT_EQ(EncodeSequence({}, 64, 1, 128, k.data(), v.data()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// ---------------------------------------------------------------- baselines and metrics

TEST(BaselineTest, E4m3RoundsToNearestEvenAndSaturates) {
  EXPECT_EQ(RoundToE4m3(1.0), 1.0);
  EXPECT_EQ(RoundToE4m3(1.0625), 1.0);   // tie between 1 and 1.125 -> even mantissa
  EXPECT_EQ(RoundToE4m3(1.1875), 1.25);  // tie between 1.125 and 1.25 -> even
  EXPECT_EQ(RoundToE4m3(0.3), 0.3125);
  EXPECT_EQ(RoundToE4m3(-0.3), -0.3125);
  EXPECT_EQ(RoundToE4m3(448.0), 448.0);
  EXPECT_EQ(RoundToE4m3(500.0), 448.0);
  EXPECT_EQ(RoundToE4m3(0x1p-9), 0x1p-9);  // smallest subnormal
  EXPECT_EQ(RoundToE4m3(0x1p-10), 0.0);    // tie to even: 0
  EXPECT_EQ(RoundToE4m3(0.0), 0.0);
}

TEST(BaselineTest, RtnBitsAndGroups) {
  const KvShape s{256, 2, 128};
  std::vector<float> k(256 * 2 * 128), v(k.size());
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = std::sin(0.37f * i) * (1 + i % 7);
    v[i] = std::cos(0.11f * i);
  }
  // All tokens quantized: K 4 + 32/128, V 2 + 32/128 bits.
  BaselineResult all = RtnBaseline(s, k.data(), v.data(), 4, 2, 0, 256);
  EXPECT_DOUBLE_EQ(all.bits_per_element, (4.25 + 2.25) / 2);
  // Each K value is within half a step of its group's range / 15.
  BaselineResult fp16 = RtnBaseline(s, k.data(), v.data(), 4, 2, 0, 0);
  EXPECT_DOUBLE_EQ(fp16.bits_per_element, 16.0);
  for (size_t i = 0; i < k.size(); ++i) EXPECT_EQ(fp16.k[i], HalfToFloat(FloatToHalf(k[i])));
  BaselineResult fp8 = Fp8Baseline(s, k.data(), v.data(), 0, 256);
  EXPECT_NEAR(fp8.bits_per_element, 8.0, 0.01);
}

TEST(MetricsTest, ZeroForAnExactCacheAndExactLogitError) {
  auto kv = GenerateSynthKv({.tokens = 64,
                             .num_kv_heads = 1,
                             .num_q_heads = 2,
                             .head_dim = 64,
                             .num_queries = 2,
                             .seed = 4});
  ASSERT_TRUE(kv.ok());
  const AttentionInputs in = InputsOf(*kv);
  CodecMetrics same = ComputeMetrics(in, kv->k.data(), kv->v.data(), 16.0);
  EXPECT_EQ(same.k_rel_error, 0.0);
  EXPECT_EQ(same.logit_error_max, 0.0);
  EXPECT_EQ(same.attn_rel_l2, 0.0);
  EXPECT_NEAR(same.attn_cosine, 1.0, 1e-12);
  EXPECT_EQ(same.attn_kl_mean, 0.0);
  EXPECT_EQ(same.bits_per_element, 16.0);
  // Perturb one key channel of token 5 by +1: the logit error of each query row on that token
  // is q[c]/√D; the maximum over rows is max |q[c]|/8.
  std::vector<float> k_hat = kv->k;
  k_hat[5 * 64 + 9] -= 1.0f;
  CodecMetrics one = ComputeMetrics(in, k_hat.data(), kv->v.data(), 16.0);
  double want = 0;
  for (int r = 0; r < 4; ++r) want = std::max(want, std::abs(double{kv->q[r * 64 + 9]}) / 8.0);
  EXPECT_NEAR(one.logit_error_max, want, 1e-6);
  EXPECT_GT(one.attn_kl_mean, 0.0);
  EXPECT_EQ(one.v_rel_error, 0.0);
}

// ---------------------------------------------------------------- the headline claim

// What holds on the synthetic generator (docs/codec.md, "Accuracy"): KVarN's key error,
// and so its logit error, is far lower than plain RTN's at about the same bits, and (since
// the generator's temperature calibration) so is the KL of the attention rows, summed over
// the seeds (per seed it is lower on 5 of seeds 1-6 here and on seeds 1-3 of the 4K-token
// table). The attention-output error at k4v2 is dominated by the 2-bit values, which both
// methods quantize per token, and is a tie: KVarN is 1-15% lower on 5 of seeds 1-6 at
// this size but 3% higher on seed 4, and 1-3% higher on two of three seeds of the 4K-token
// table; so the test pins it at no more than 5% above RTN's, not below it.
TEST(AccuracyTest, KvarnK4v2BeatsPlainRtnOnLogitsAndTiesOnAttention) {
  CodecMetrics kvarn, rtn;
  for (uint64_t seed : {1, 2, 3}) {
    auto kv = GenerateSynthKv({.tokens = 1024,
                               .num_kv_heads = 2,
                               .num_q_heads = 8,
                               .head_dim = 128,
                               .num_queries = 8,
                               .seed = seed});
    ASSERT_TRUE(kv.ok());
    auto rows = EvaluateCodecs(InputsOf(*kv), SequenceOptions{});
    ASSERT_TRUE(rows.ok()) << rows.status();
    ASSERT_EQ(rows->size(), 3u);
    const CodecMetrics& a = (*rows)[0].metrics;
    const CodecMetrics& b = (*rows)[1].metrics;
    SCOPED_TRACE("seed " + std::to_string(seed));
    // About the same bits (KVarN 3.375 + headers, RTN 3.25, plus the same FP16 sink/tail).
    EXPECT_NEAR(a.bits_per_element, b.bits_per_element, 0.2);
    EXPECT_LT(a.logit_error_mean, 0.7 * b.logit_error_mean);
    EXPECT_LT(a.logit_error_std, 0.7 * b.logit_error_std);
    EXPECT_LT(a.k_rel_error, 0.8 * b.k_rel_error);
    EXPECT_LT(a.v_rel_error, b.v_rel_error);
    for (auto [sum, m] : {std::pair{&kvarn, &a}, std::pair{&rtn, &b}}) {
      sum->attn_rel_l2 += m->attn_rel_l2;
      sum->attn_cosine += m->attn_cosine;
      sum->attn_kl_mean += m->attn_kl_mean;
    }
  }
  EXPECT_LT(kvarn.attn_rel_l2, 1.05 * rtn.attn_rel_l2);
  EXPECT_GT(kvarn.attn_cosine, rtn.attn_cosine - 0.01);
  EXPECT_LT(kvarn.attn_kl_mean, 0.8 * rtn.attn_kl_mean);  // 0.59 measured
}

}  // namespace
}  // namespace kvtier::kernels::cpu
