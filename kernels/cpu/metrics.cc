#include "kernels/cpu/metrics.h"

#include <algorithm>
#include <cmath>
#include <vector>

namespace kvtier::kernels::cpu {
namespace {

double RelError(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    const double d = static_cast<double>(a[i]) - b[i];
    num += d * d;
    den += static_cast<double>(a[i]) * a[i];
  }
  return den > 0 ? std::sqrt(num / den) : std::sqrt(num);
}

}  // namespace

CodecMetrics ComputeMetrics(const AttentionInputs& in, const float* k_hat, const float* v_hat,
                            double bits_per_element) {
  CodecMetrics m;
  m.bits_per_element = bits_per_element;
  const int d = in.head_dim, hk = in.num_kv_heads, t_count = in.tokens;
  const size_t n = static_cast<size_t>(t_count) * hk * d;
  m.k_rel_error = RelError(in.k, k_hat, n);
  m.v_rel_error = RelError(in.v, v_hat, n);
  const int group = in.num_q_heads / hk;
  const double inv_sqrt_d = 1.0 / std::sqrt(static_cast<double>(d));
  std::vector<double> s(t_count), s_hat(t_count), o(d), o_hat(d);
  double e_sum = 0, e_abs_sum = 0, e_sq_sum = 0, e_max = 0;
  double o_err = 0, o_norm = 0, cos_sum = 0, kl_sum = 0, kl_max = 0;
  size_t e_count = 0, rows = 0;
  for (int qi = 0; qi < in.num_queries; ++qi) {
    for (int qh = 0; qh < in.num_q_heads; ++qh) {
      const float* q = in.q + (static_cast<size_t>(qi) * in.num_q_heads + qh) * d;
      const int h = qh / group;
      for (int t = 0; t < t_count; ++t) {
        const size_t base = (static_cast<size_t>(t) * hk + h) * d;
        double a = 0, b = 0;
        for (int c = 0; c < d; ++c) {
          a += static_cast<double>(q[c]) * in.k[base + c];
          b += static_cast<double>(q[c]) * k_hat[base + c];
        }
        s[t] = a * inv_sqrt_d;
        s_hat[t] = b * inv_sqrt_d;
        const double e = s[t] - s_hat[t];
        e_sum += e;
        e_abs_sum += std::abs(e);
        e_sq_sum += e * e;
        e_max = std::max(e_max, std::abs(e));
        ++e_count;
      }
      const double mx = *std::max_element(s.begin(), s.end());
      const double mx_hat = *std::max_element(s_hat.begin(), s_hat.end());
      double z = 0, z_hat = 0;
      for (int t = 0; t < t_count; ++t) {
        s[t] = std::exp(s[t] - mx);
        s_hat[t] = std::exp(s_hat[t] - mx_hat);
        z += s[t];
        z_hat += s_hat[t];
      }
      std::fill(o.begin(), o.end(), 0.0);
      std::fill(o_hat.begin(), o_hat.end(), 0.0);
      double kl = 0;
      for (int t = 0; t < t_count; ++t) {
        const double p = s[t] / z, p_hat = s_hat[t] / z_hat;
        if (p > 0) kl += p * (std::log(p) - std::log(std::max(p_hat, 1e-300)));
        const size_t base = (static_cast<size_t>(t) * hk + h) * d;
        for (int c = 0; c < d; ++c) {
          o[c] += p * in.v[base + c];
          o_hat[c] += p_hat * v_hat[base + c];
        }
      }
      double dot = 0, na = 0, nb = 0;
      for (int c = 0; c < d; ++c) {
        o_err += (o[c] - o_hat[c]) * (o[c] - o_hat[c]);
        dot += o[c] * o_hat[c];
        na += o[c] * o[c];
        nb += o_hat[c] * o_hat[c];
      }
      o_norm += na;
      cos_sum += (na > 0 && nb > 0) ? dot / std::sqrt(na * nb) : (na == nb ? 1.0 : 0.0);
      kl = std::max(kl, 0.0);
      kl_sum += kl;
      kl_max = std::max(kl_max, kl);
      ++rows;
    }
  }
  if (e_count > 0) {
    const double mean = e_sum / e_count;
    m.logit_error_mean = e_abs_sum / e_count;
    m.logit_error_std = std::sqrt(std::max(e_sq_sum / e_count - mean * mean, 0.0));
    m.logit_error_max = e_max;
  }
  if (rows > 0) {
    m.attn_rel_l2 = o_norm > 0 ? std::sqrt(o_err / o_norm) : std::sqrt(o_err);
    m.attn_cosine = cos_sum / rows;
    m.attn_kl_mean = kl_sum / rows;
    m.attn_kl_max = kl_max;
  }
  return m;
}

}  // namespace kvtier::kernels::cpu
