#include "kernels/cpu/synth.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/half.h"
#include "kernels/format.h"

namespace kvtier::kernels::cpu {
namespace {

// Deterministic samplers on top of mt19937_64 (the standard distributions' algorithms are
// implementation-defined; these are not).
class Rng {
 public:
  explicit Rng(uint64_t seed) : gen_(seed) {}
  double Uniform() { return (static_cast<double>(gen_() >> 11) + 0.5) * 0x1p-53; }
  double Uniform(double a, double b) { return a + (b - a) * Uniform(); }
  double Normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double u1 = Uniform(), u2 = Uniform();
    const double r = std::sqrt(-2.0 * std::log(u1));
    spare_ = r * std::sin(2 * M_PI * u2);
    has_spare_ = true;
    return r * std::cos(2 * M_PI * u2);
  }
  // Student-t with integer nu > 2, scaled to unit variance.
  double StudentT(int nu) {
    double chi2 = 0;
    for (int i = 0; i < nu; ++i) {
      const double z = Normal();
      chi2 += z * z;
    }
    return Normal() / std::sqrt(chi2 / nu) / std::sqrt(nu / (nu - 2.0));
  }
  uint64_t Next() { return gen_(); }

 private:
  std::mt19937_64 gen_;
  bool has_spare_ = false;
  double spare_ = 0;
};

// Std of the non-sink logits q·k/√D (the softmax temperature). Chosen from the attention
// statistics in docs/codec.md: with 2 the heavy-tailed logits put a median of 2-4
// effective tokens on a 4K-token row; 1.25 gives tens to hundreds at 4K-16K, as real
// long-context heads have.
constexpr double kLogitStd = 1.25;

float Fp16(double x) { return HalfToFloat(FloatToHalf(static_cast<float>(x))); }

}  // namespace

absl::StatusOr<SynthKv> GenerateSynthKv(const SynthOptions& o) {
  if (!IsSupportedHeadDim(o.head_dim)) {
    return absl::InvalidArgumentError(
        absl::StrCat("head_dim ", o.head_dim, " is not 64, 128 or 256"));
  }
  if (o.tokens < 2 || o.tokens > (1 << 22)) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokens must be in [2, 4194304], got ", o.tokens));
  }
  if (o.num_kv_heads < 1 || o.num_kv_heads > 256 || o.num_q_heads < 1 ||
      o.num_q_heads % o.num_kv_heads != 0 || o.num_q_heads > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("q_heads ", o.num_q_heads,
                                                   " must be a positive multiple of kv_heads ",
                                                   o.num_kv_heads, " (<= 256)"));
  }
  if (o.num_queries < 1 || o.num_queries > 4096) {
    return absl::InvalidArgumentError(
        absl::StrCat("queries must be in [1, 4096], got ", o.num_queries));
  }
  const int d = o.head_dim, half = d / 2, hk = o.num_kv_heads, group = o.num_q_heads / hk;
  SynthKv kv;
  kv.tokens = o.tokens;
  kv.num_kv_heads = hk;
  kv.num_q_heads = o.num_q_heads;
  kv.head_dim = d;
  kv.num_queries = o.num_queries;
  kv.k.resize(static_cast<size_t>(o.tokens) * hk * d);
  kv.v.resize(kv.k.size());
  kv.q.resize(static_cast<size_t>(o.num_queries) * o.num_q_heads * d);
  std::vector<double> freq(half);
  for (int i = 0; i < half; ++i) freq[i] = std::pow(10000.0, -2.0 * i / d);

  for (int h = 0; h < hk; ++h) {
    Rng rng(o.seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(h) * 0xD1B54A32D192ED03ull + 1);
    // Channel stds and biases (pre-RoPE).
    std::vector<double> s(d), bias(d), sv(d);
    for (int c = 0; c < d; ++c) s[c] = rng.Uniform(0.5, 1.5);
    std::vector<double> sorted = s;
    std::nth_element(sorted.begin(), sorted.begin() + d / 2, sorted.end());
    const double median = sorted[d / 2];
    for (int c = 0; c < d; ++c) bias[c] = 0.5 * s[c] * rng.Normal();
    // Outlier pairs among the lowest-frequency quarter of the pairs.
    const int n_out = std::max(2, d / 32);
    std::vector<int> candidates(half - 3 * half / 4);
    std::iota(candidates.begin(), candidates.end(), 3 * half / 4);
    for (int j = 0; j < n_out && j < static_cast<int>(candidates.size()); ++j) {
      const int pick = j + static_cast<int>(rng.Next() % (candidates.size() - j));
      std::swap(candidates[j], candidates[pick]);
      const int i = candidates[j];
      const double factor = rng.Uniform(5.0, 20.0);
      for (int c : {i, i + half}) {
        s[c] = factor * median;
        bias[c] = (rng.Uniform() < 0.5 ? -1.0 : 1.0) * rng.Uniform(1.0, 3.0) * s[c];
      }
    }
    std::vector<double> bv(d);
    for (int c = 0; c < d; ++c) {
      sv[c] = rng.Uniform(0.8, 1.2);
      bv[c] = 0.5 * rng.Normal();
    }

    std::vector<double> mean(d, 0.0), pre(d);
    for (int t = 1; t < o.tokens; ++t) {
      for (int c = 0; c < d; ++c) pre[c] = bias[c] + s[c] * rng.StudentT(4);
      float* kt = kv.k.data() + (static_cast<size_t>(t) * hk + h) * d;
      for (int i = 0; i < half; ++i) {
        const double a = t * freq[i], cs = std::cos(a), sn = std::sin(a);
        const double x1 = pre[i], x2 = pre[i + half];
        kt[i] = Fp16(x1 * cs - x2 * sn);
        kt[i + half] = Fp16(x1 * sn + x2 * cs);
      }
      for (int c = 0; c < d; ++c) mean[c] += kt[c];
      float* vt = kv.v.data() + (static_cast<size_t>(t) * hk + h) * d;
      const double boost = rng.Uniform() < 0.01 ? rng.Uniform(4.0, 8.0) : 1.0;
      for (int c = 0; c < d; ++c) vt[c] = Fp16(boost * (bv[c] + sv[c] * rng.Normal()));
    }
    double norm = 0;
    for (int c = 0; c < d; ++c) {
      mean[c] /= (o.tokens - 1);
      norm += mean[c] * mean[c];
    }
    norm = std::sqrt(std::max(norm, 1e-30));
    // Queries: a · (mean key direction) + N(0, 1) per channel, then scaled so that the
    // logits q·k/√D over the (non-sink) tokens have std kLogitStd.
    const double a = 0.25 * std::sqrt(static_cast<double>(d));
    const double inv_sqrt_d = 1.0 / std::sqrt(static_cast<double>(d));
    const int sample = std::min(o.tokens - 1, 512);
    std::vector<double> qd(d), qbar(d, 0.0);
    double mean_logit_sum = 0;
    std::vector<float*> head_queries;
    for (int n = 0; n < o.num_queries; ++n) {
      for (int g = 0; g < group; ++g) {
        for (int c = 0; c < d; ++c) qd[c] = a * mean[c] / norm + rng.Normal();
        double m1 = 0, m2 = 0;
        for (int j = 0; j < sample; ++j) {
          const int t = 1 + static_cast<int>((static_cast<int64_t>(j) * (o.tokens - 1)) / sample);
          const float* kt = kv.k.data() + (static_cast<size_t>(t) * hk + h) * d;
          double l = 0;
          for (int c = 0; c < d; ++c) l += qd[c] * kt[c];
          l *= inv_sqrt_d;
          m1 += l;
          m2 += l * l;
        }
        m1 /= sample;
        const double sd = std::sqrt(std::max(m2 / sample - m1 * m1, 1e-12));
        float* q = kv.q.data() + (static_cast<size_t>(n) * o.num_q_heads + h * group + g) * d;
        for (int c = 0; c < d; ++c) {
          q[c] = Fp16(qd[c] * kLogitStd / sd);
          qbar[c] += q[c];
        }
        mean_logit_sum += m1 * kLogitStd / sd;
        head_queries.push_back(q);
      }
    }
    double qn = 0;
    for (double x : qbar) qn += x * x;
    qn = std::sqrt(std::max(qn, 1e-30));
    for (double& x : qbar) x /= qn;
    double proj = 0;  // mean of q · qbar over this head's queries
    for (const float* q : head_queries) {
      for (int c = 0; c < d; ++c) proj += q[c] * qbar[c];
    }
    proj /= head_queries.size();
    const double mean_logit = mean_logit_sum / head_queries.size();
    // Sink token 0: key along the mean query direction, with a logit ~9 above the mean
    // logit (it draws a large share of the attention, as sinks do); value small.
    const double lambda = (mean_logit + 9.0) / inv_sqrt_d / std::max(proj, 1e-6);
    float* k0 = kv.k.data() + static_cast<size_t>(h) * d;
    float* v0 = kv.v.data() + static_cast<size_t>(h) * d;
    for (int c = 0; c < d; ++c) {
      k0[c] = Fp16(lambda * qbar[c] + 0.1 * rng.Normal());
      v0[c] = Fp16(0.05 * rng.Normal());
    }
  }
  return kv;
}

SynthAttentionStats MeasureSynthAttention(const SynthKv& kv) {
  const int d = kv.head_dim, hk = kv.num_kv_heads, hq = kv.num_q_heads;
  const int group = hq / hk, n = kv.tokens;
  const double inv_sqrt_d = 1.0 / std::sqrt(static_cast<double>(d));
  SynthAttentionStats st;
  std::vector<double> eff, eff_ns, part;
  std::vector<double> l(n);
  for (int qi = 0; qi < kv.num_queries; ++qi) {
    for (int qh = 0; qh < hq; ++qh) {
      const float* q = kv.q.data() + (static_cast<size_t>(qi) * hq + qh) * d;
      for (int t = 0; t < n; ++t) {
        const float* k = kv.k.data() + (static_cast<size_t>(t) * hk + qh / group) * d;
        double a = 0;
        for (int c = 0; c < d; ++c) a += static_cast<double>(q[c]) * k[c];
        l[t] = a * inv_sqrt_d;
      }
      double m1 = 0, m2 = 0, mx = l[1];
      for (int t = 1; t < n; ++t) {
        m1 += l[t];
        m2 += l[t] * l[t];
        mx = std::max(mx, l[t]);
      }
      m1 /= (n - 1);
      const double sd = std::sqrt(std::max(m2 / (n - 1) - m1 * m1, 1e-30));
      st.logit_std += sd;
      st.logit_max_z += (mx - m1) / sd;
      const double top = std::max(mx, l[0]);
      double z = 0, zn = 0;
      for (int t = 0; t < n; ++t) z += std::exp(l[t] - top);
      zn = z - std::exp(l[0] - top);
      double h = 0, hn = 0, p2 = 0;
      for (int t = 0; t < n; ++t) {
        const double e = std::exp(l[t] - top);
        const double p = e / z;
        if (p > 0) h -= p * std::log(p);
        if (t > 0) {
          const double pn = e / zn;
          if (pn > 0) hn -= pn * std::log(pn);
          p2 += pn * pn;
        }
      }
      st.sink_share += std::exp(l[0] - top) / z;
      eff.push_back(std::exp(h));
      eff_ns.push_back(std::exp(hn));
      part.push_back(1.0 / p2);
    }
  }
  const double rows = static_cast<double>(eff.size());
  st.logit_std /= rows;
  st.logit_max_z /= rows;
  st.sink_share /= rows;
  auto quantile = [](std::vector<double> x, double f) {
    std::sort(x.begin(), x.end());
    return x[static_cast<size_t>(f * (x.size() - 1))];
  };
  st.eff_tokens = quantile(eff, 0.5);
  st.eff_tokens_p10 = quantile(eff, 0.1);
  st.eff_tokens_nosink = quantile(eff_ns, 0.5);
  st.participation = quantile(part, 0.5);
  return st;
}

}  // namespace kvtier::kernels::cpu
