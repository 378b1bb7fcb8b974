// Compress kernel: paged FP16/BF16 K/V -> KVarN tile records (DESIGN §3.1-3.2).
//
// One CTA per (layer, block, kv head, role), role 0 = K tile, role 1 = V tile; D*G/64
// threads, each holding 64 values of the rotated fp32 tile in registers. The tile is
// kept token-major: warp w owns tokens [w*TPW, w*TPW+TPW), lane l owns channels
// [l*CPL, l*CPL+CPL). Per-token statistics reduce across the lanes of a warp
// (reduce-scatter shuffles), per-channel statistics across warps (shared memory).
//
// The normalization follows kernels/cpu/codec.cc (NormalizeLog) pass for pass, but uses
// one-pass variances of X·exp(-l) (KERNELS.md): the statistics differ from the CPU's
// two-pass ones by rounding only. The final scales use exp in double and the balanced
// tile uses the same divisions as the CPU, so codes match except at rounding ties.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kvarn_cuda.h"
#include "kernels/format.h"

namespace kvtier::kernels::cuda {
namespace {

using internal::HadamardLocal;
using internal::Unpack8;

constexpr float kStdLo = 1e-3f;
constexpr float kStdHi = 1e3f;
constexpr float kLogLo = -0.3f;
constexpr float kLogHi = 10.0f;
constexpr float kImbFloor = 1e-8f;
constexpr float kMinScale = 1e-10f;

struct CompressArgs {
  TileLayout layout;
  int num_kv_heads;
  int num_blocks;
  int iterations;
  DType dtype;
  const void* src[2];  // K, V
  int64_t s_layer, s_block, s_token, s_head, s_channel;
  bool vector_ok;
  const int32_t* block_ids;
  uint8_t* dst;
  int64_t d_layer, d_block;
};

__device__ __forceinline__ float ExpD(float x) {
  return static_cast<float>(exp(static_cast<double>(x)));
}

// Reduce-scatter of N values over the 32 lanes of a warp: afterwards, for N >= 32, lane l
// holds the sums of indices l*(N/32) + i in v[i] (i < N/32); for N < 32 lane l holds the
// sum of index l >> (5 - log2 N) in v[0].
template <int N>
__device__ __forceinline__ void ReduceScatter(float* v, int lane) {
  int n = N;
#pragma unroll
  for (int m = 16; m >= 1; m >>= 1) {
    if (n > 1) {
      const bool upper = (lane & m) != 0;
#pragma unroll
      for (int i = 0; i < N / 2; ++i) {
        if (i < n / 2) {
          const float keep = upper ? v[i + n / 2] : v[i];
          const float send = upper ? v[i] : v[i + n / 2];
          v[i] = keep + __shfl_xor_sync(0xffffffffu, send, m);
        }
      }
      n >>= 1;
    } else {
      v[0] += __shfl_xor_sync(0xffffffffu, v[0], m);
    }
  }
}

template <int D, int G>
struct Shape {
  static constexpr int kThreads = D * G / 64;
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kTpw = G / kWarps;  // tokens per warp
  static constexpr int kCpl = D / 32;      // channels per lane
  static constexpr int kPitch = D + 8;     // floats per staged token row
  static_assert(kTpw * kCpl == 64, "64 values per thread");
  // Shared memory (floats): staged tile, then vectors.
  static constexpr int kTileFloats = G * kPitch;
  static constexpr int kVecFloats = 3 * (G + D) + kWarps * D * 2 + 8 * kWarps;
  static constexpr size_t kSmemBytes = sizeof(float) * (kTileFloats + kVecFloats);
};

template <int D, int G>
__global__ void __launch_bounds__(Shape<D, G>::kThreads)
    CompressKernel(const CompressArgs a) {
  using S = Shape<D, G>;
  constexpr int NT = S::kThreads, W = S::kWarps, TPW = S::kTpw, CPL = S::kCpl, P = S::kPitch;
  extern __shared__ __align__(16) float smem[];
  float* tile = smem;                          // [G][P]
  float* l_t = tile + S::kTileFloats;          // [G] log scale per token
  float* l_d = l_t + G;                        // [D] log scale per channel
  float* best_t = l_d + D;                     // [G]
  float* best_d = best_t + G;                  // [D]
  float* m_t = best_d + D;                     // [G] exp(-l_t)
  float* m_d = m_t + G;                        // [D] exp(-l_d)
  float* part = m_d + D;                       // [W][D][2]
  float* red = part + W * D * 2;               // [W][8]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int role = blockIdx.y;  // 0: K (rows = channels), 1: V (rows = tokens)
  const int64_t tile_index = blockIdx.x;
  const int h = static_cast<int>(tile_index % a.num_kv_heads);
  const int64_t li = tile_index / a.num_kv_heads;
  const int entry = static_cast<int>(li % a.num_blocks);
  const int layer = static_cast<int>(li / a.num_blocks);
  const int64_t block = a.block_ids[entry];
  const void* src = a.src[role];
  const int64_t base =
      layer * a.s_layer + block * a.s_block + static_cast<int64_t>(h) * a.s_head;

  // ---- 1. Load, convert, first three FWHT stages (channel bits 0..2) ----
  constexpr int kChunks = G * D / 8;
  for (int k = tid; k < kChunks; k += NT) {
    const int t = k / (D / 8), c0 = (k % (D / 8)) * 8;
    float v[8];
    if (a.vector_ok) {
      const uint4 raw = *reinterpret_cast<const uint4*>(
          static_cast<const uint16_t*>(src) + base + t * a.s_token + c0);
      Unpack8(raw, a.dtype, v);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        v[i] = internal::LoadAsFloat(src, base + t * a.s_token + (c0 + i) * a.s_channel, a.dtype);
      }
    }
    HadamardLocal<8>(v);
    float4* dst = reinterpret_cast<float4*>(tile + t * P + c0);
    dst[0] = make_float4(v[0], v[1], v[2], v[3]);
    dst[1] = make_float4(v[4], v[5], v[6], v[7]);
  }
  __syncthreads();
  // ---- 2. Remaining stages (channel bits 3..log2 D - 1), then 1/sqrt(D) ----
  {
    const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(D)));
    for (int k = tid; k < G * 8; k += NT) {
      const int clo = k % 8, t = k / 8;
      float v[D / 8];
#pragma unroll
      for (int i = 0; i < D / 8; ++i) v[i] = tile[t * P + clo + 8 * i];
      HadamardLocal<D / 8>(v);
#pragma unroll
      for (int i = 0; i < D / 8; ++i) tile[t * P + clo + 8 * i] = v[i] * scale;
    }
  }
  for (int i = tid; i < G; i += NT) {
    l_t[i] = 0.f;
    m_t[i] = 1.f;
    best_t[i] = 0.f;
  }
  for (int i = tid; i < D; i += NT) {
    l_d[i] = 0.f;
    m_d[i] = 1.f;
    best_d[i] = 0.f;
  }
  __syncthreads();
  // ---- 3. Registers: x[i][j] = X[token warp*TPW+i][channel lane*CPL+j] ----
  float x[TPW][CPL];
#pragma unroll
  for (int i = 0; i < TPW; ++i) {
#pragma unroll
    for (int j = 0; j < CPL; ++j) x[i][j] = tile[(warp * TPW + i) * P + lane * CPL + j];
  }
  const int tok0 = warp * TPW, ch0 = lane * CPL;

  // Per-token statistics (reduce over channels), multipliers m_d. Returns, in the lane that
  // owns token `my_tok` (or -1), the std of X·m_d over the token's D values.
  auto pass_over_d = [&](int& my_tok, float& my_std) {
    float md[CPL];
#pragma unroll
    for (int j = 0; j < CPL; ++j) md[j] = m_d[ch0 + j];
    constexpr int N = 2 * TPW;
    float v[N];
#pragma unroll
    for (int i = 0; i < TPW; ++i) {
      float s = 0.f, s2 = 0.f;
#pragma unroll
      for (int j = 0; j < CPL; ++j) {
        const float u = x[i][j] * md[j];
        s += u;
        s2 = fmaf(u, u, s2);
      }
      v[2 * i] = s;
      v[2 * i + 1] = s2;
    }
    ReduceScatter<N>(v, lane);
    float s, s2;
    if constexpr (N >= 64) {
      // lane holds indices 2*lane*(N/64) ...: with N == 64, v[0], v[1] = token lane.
      static_assert(N == 64, "TPW <= 32");
      s = v[0];
      s2 = v[1];
      my_tok = tok0 + lane;
    } else {
      constexpr int kShift = (N == 32) ? 0 : (N == 16 ? 1 : 2);
      const int idx = lane >> kShift;
      const float other = __shfl_xor_sync(0xffffffffu, v[0], 1 << kShift);
      s = (idx & 1) ? other : v[0];
      s2 = (idx & 1) ? v[0] : other;
      my_tok = ((idx & 1) == 0 && (lane & ((1 << kShift) - 1)) == 0) ? tok0 + idx / 2 : -1;
    }
    const float n = static_cast<float>(D);
    const float var = fmaxf((s2 - s * s / n) / (n - 1.f), 0.f);
    my_std = sqrtf(var);
  };
  // Per-channel statistics (reduce over tokens), multipliers m_t. Thread tid < D owns
  // channel tid afterwards. Ends with a __syncthreads (part[] consumed).
  auto pass_over_t = [&](float& my_std) {
    float mt[TPW];
#pragma unroll
    for (int i = 0; i < TPW; ++i) mt[i] = m_t[tok0 + i];
#pragma unroll
    for (int j = 0; j < CPL; ++j) {
      float s = 0.f, s2 = 0.f;
#pragma unroll
      for (int i = 0; i < TPW; ++i) {
        const float u = x[i][j] * mt[i];
        s += u;
        s2 = fmaf(u, u, s2);
      }
      part[(warp * D + ch0 + j) * 2] = s;
      part[(warp * D + ch0 + j) * 2 + 1] = s2;
    }
    __syncthreads();
    my_std = 0.f;
    if (tid < D) {
      float s = 0.f, s2 = 0.f;
      for (int w = 0; w < W; ++w) {
        s += part[(w * D + tid) * 2];
        s2 += part[(w * D + tid) * 2 + 1];
      }
      const float n = static_cast<float>(G);
      my_std = sqrtf(fmaxf((s2 - s * s / n) / (n - 1.f), 0.f));
    }
  };
  // Block-wide max and min of `value` over threads with `valid`; slot selects red[] column.
  auto block_minmax = [&](bool valid, float value, int slot, float& mx, float& mn) {
    float a_mx = valid ? value : -FLT_MAX, a_mn = valid ? value : FLT_MAX;
    a_mx = internal::WarpMax(a_mx);
    a_mn = internal::WarpMin(a_mn);
    if (lane == 0) {
      red[warp * 8 + slot] = a_mx;
      red[warp * 8 + slot + 1] = a_mn;
    }
    __syncthreads();
    mx = -FLT_MAX;
    mn = FLT_MAX;
    for (int w = 0; w < W; ++w) {
      mx = fmaxf(mx, red[w * 8 + slot]);
      mn = fminf(mn, red[w * 8 + slot + 1]);
    }
  };

  // Column pass: col stds of Y (current l). K: cols = tokens; V: cols = channels.
  // Returns the owner flag/index and std (std of Y, i.e. times the column's multiplier).
  auto col_pass = [&](int& owner, float& std_y) {
    if (role == 0) {
      int tok;
      float sd;
      pass_over_d(tok, sd);
      owner = tok;
      std_y = tok >= 0 ? sd * m_t[tok] : 0.f;
    } else {
      float sd;
      pass_over_t(sd);
      owner = tid < D ? tid : -1;
      std_y = tid < D ? sd * m_d[tid] : 0.f;
    }
  };
  auto row_pass = [&](int& owner, float& std_y) {
    if (role == 0) {
      float sd;
      pass_over_t(sd);
      owner = tid < D ? tid : -1;
      std_y = tid < D ? sd * m_d[tid] : 0.f;
    } else {
      int tok;
      float sd;
      pass_over_d(tok, sd);
      owner = tok;
      std_y = tok >= 0 ? sd * m_t[tok] : 0.f;
    }
  };
  float* l_col = role == 0 ? l_t : l_d;
  float* m_col = role == 0 ? m_t : m_d;
  float* best_col = role == 0 ? best_t : best_d;
  float* l_row = role == 0 ? l_d : l_t;
  float* m_row = role == 0 ? m_d : m_t;
  float* best_row = role == 0 ? best_d : best_t;
  constexpr int kCols0 = G, kRows0 = D;  // K tile: rows = channels, cols = tokens
  const int n_cols = role == 0 ? kCols0 : kRows0;
  const int n_rows = role == 0 ? kRows0 : kCols0;

  // imb(X): row stds of X (col stds come from the first column pass below).
  float row_mx, row_mn;
  {
    int owner;
    float sd;
    row_pass(owner, sd);
    block_minmax(owner >= 0, sd, 0, row_mx, row_mn);
  }
  float best_imb = 0.f;
  for (int it = 0; it <= a.iterations; ++it) {
    int owner;
    float sd;
    col_pass(owner, sd);
    float col_mx, col_mn;
    block_minmax(owner >= 0, sd, 2, col_mx, col_mn);
    const float imb = col_mx / fmaxf(col_mn, kImbFloor) + row_mx / fmaxf(row_mn, kImbFloor);
    const bool better = it == 0 || imb <= best_imb;
    if (better) best_imb = imb;
    if (better && it > 0) {
      for (int i = tid; i < n_rows; i += NT) best_row[i] = l_row[i];
      if (owner >= 0) best_col[owner] = l_col[owner];
    }
    if (it == a.iterations) break;
    if (owner >= 0) {
      const float s = fminf(fmaxf(sd, kStdLo), kStdHi);
      const float l = fminf(fmaxf(l_col[owner] + logf(s), kLogLo), kLogHi);
      l_col[owner] = l;
      m_col[owner] = 1.f / expf(l);
    }
    __syncthreads();
    row_pass(owner, sd);
    float fin = 0.f;
    if (owner >= 0) {
      const float s = fminf(fmaxf(sd, kStdLo), kStdHi);
      const float old = l_row[owner];
      const float l = fminf(fmaxf(old + logf(s), kLogLo), kLogHi);
      l_row[owner] = l;
      m_row[owner] = 1.f / expf(l);
      fin = sd * expf(old - l);
    }
    block_minmax(owner >= 0, fin, 4, row_mx, row_mn);  // syncs: l_row visible after
    (void)n_cols;
  }
  __syncthreads();

  // ---- 4. Final scales (exp in double, as the CPU) and balanced values ----
  for (int i = tid; i < G; i += NT) m_t[i] = ExpD(best_t[i]);  // now s_t = exp(best)
  for (int i = tid; i < D; i += NT) m_d[i] = ExpD(best_d[i]);
  __syncthreads();
  float sd_[CPL];
#pragma unroll
  for (int j = 0; j < CPL; ++j) sd_[j] = m_d[ch0 + j];
#pragma unroll
  for (int i = 0; i < TPW; ++i) {
    const float st = m_t[tok0 + i];
#pragma unroll
    for (int j = 0; j < CPL; ++j) {
      // X / s_col / s_row: K: cols = tokens, rows = channels; V: the other way round.
      x[i][j] = role == 0 ? x[i][j] / st / sd_[j] : x[i][j] / sd_[j] / st;
    }
  }
  const TileLayout& L = a.layout;
  const int bits = role == 0 ? L.key_bits : L.value_bits;
  const float qmax = static_cast<float>((1 << bits) - 1);
  // Per-row min/max. Reuse the staging tile region for the record bytes afterwards.
  uint8_t* stage = reinterpret_cast<uint8_t*>(tile);
  const size_t part_begin = role == 0 ? 0 : L.v_codes_offset;
  const size_t part_end = role == 0 ? L.v_codes_offset : L.record_bytes;
  __syncthreads();  // everyone is done reading the staged tile (step 3 is long past)
  if (role == 1) {
    for (size_t i = L.data_end + tid; i < L.record_bytes; i += NT) stage[i] = 0;
  }
  if (role == 0) {
    // Rows = channels: min/max over tokens, across warps.
#pragma unroll
    for (int j = 0; j < CPL; ++j) {
      float mn = x[0][j], mx = x[0][j];
#pragma unroll
      for (int i = 1; i < TPW; ++i) {
        mn = fminf(mn, x[i][j]);
        mx = fmaxf(mx, x[i][j]);
      }
      part[(warp * D + ch0 + j) * 2] = mn;
      part[(warp * D + ch0 + j) * 2 + 1] = mx;
    }
    __syncthreads();
    if (tid < D) {
      float mn = FLT_MAX, mx = -FLT_MAX;
      for (int w = 0; w < W; ++w) {
        mn = fminf(mn, part[(w * D + tid) * 2]);
        mx = fmaxf(mx, part[(w * D + tid) * 2 + 1]);
      }
      const float sc = fmaxf((mx - mn) / qmax, kMinScale);
      l_d[tid] = mn;      // lo
      best_d[tid] = sc;   // scale
      const float srow = m_d[tid];
      reinterpret_cast<__half*>(stage + L.s_col_k_offset)[tid] = __float2half_rn(srow * sc);
      reinterpret_cast<__half*>(stage + L.zp_k_offset)[tid] = __float2half_rn(srow * mn);
    }
    for (int t = tid; t < G; t += NT) {
      reinterpret_cast<__half*>(stage + L.s_row_k_offset)[t] = __float2half_rn(m_t[t]);
    }
    __syncthreads();
    // Codes: channel row c, token t -> byte c*G/2 + t/2, nibble t&1.
#pragma unroll
    for (int j = 0; j < CPL; ++j) {
      const float lo = l_d[ch0 + j], sc = best_d[ch0 + j];
      uint32_t words[TPW / 8];
#pragma unroll
      for (int w8 = 0; w8 < TPW / 8; ++w8) words[w8] = 0;
#pragma unroll
      for (int i = 0; i < TPW; ++i) {
        const float q = fminf(fmaxf(rintf((x[i][j] - lo) / sc), 0.f), qmax);
        words[i / 8] |= static_cast<uint32_t>(q) << (4 * (i % 8));
      }
      uint32_t* row = reinterpret_cast<uint32_t*>(stage + L.k_codes_offset +
                                                  static_cast<size_t>(ch0 + j) * (G / 2) + tok0 / 2);
#pragma unroll
      for (int w8 = 0; w8 < TPW / 8; ++w8) row[w8] = words[w8];
    }
  } else {
    // Rows = tokens: min/max over channels, within the warp.
    float lo[TPW], sc[TPW];
#pragma unroll
    for (int i = 0; i < TPW; ++i) {
      float mn = x[i][0], mx = x[i][0];
#pragma unroll
      for (int j = 1; j < CPL; ++j) {
        mn = fminf(mn, x[i][j]);
        mx = fmaxf(mx, x[i][j]);
      }
      mn = internal::WarpMin(mn);
      mx = internal::WarpMax(mx);
      lo[i] = mn;
      sc[i] = fmaxf((mx - mn) / qmax, kMinScale);
      if (lane == i % 32) {
        const int t = tok0 + i;
        const float srow = m_t[t];
        reinterpret_cast<__half*>(stage + L.s_row_v_offset)[t] = __float2half_rn(srow * sc[i]);
        reinterpret_cast<__half*>(stage + L.zp_v_offset)[t] = __float2half_rn(srow * mn);
      }
    }
    for (int c = tid; c < D; c += NT) {
      reinterpret_cast<__half*>(stage + L.s_col_v_offset)[c] = __float2half_rn(m_d[c]);
    }
    const int vb = L.value_bits;
    const int row_bytes = static_cast<int>(L.v_row_bytes);
#pragma unroll
    for (int i = 0; i < TPW; ++i) {
      uint32_t bitsv = 0;
#pragma unroll
      for (int j = 0; j < CPL; ++j) {
        const float q = fminf(fmaxf(rintf((x[i][j] - lo[i]) / sc[i]), 0.f), qmax);
        bitsv |= static_cast<uint32_t>(q) << (vb * j);
      }
      uint8_t* row = stage + L.v_codes_offset + static_cast<size_t>(tok0 + i) * row_bytes;
      const int width = CPL * vb;  // bits per lane: 4, 8, 16 or 32
      if (width == 4) {
        const uint32_t hi = __shfl_down_sync(0xffffffffu, bitsv, 1);
        if ((lane & 1) == 0) row[lane / 2] = static_cast<uint8_t>(bitsv | (hi << 4));
      } else if (width == 8) {
        row[lane] = static_cast<uint8_t>(bitsv);
      } else if (width == 16) {
        reinterpret_cast<uint16_t*>(row)[lane] = static_cast<uint16_t>(bitsv);
      } else {
        reinterpret_cast<uint32_t*>(row)[lane] = bitsv;
      }
    }
  }
  __syncthreads();
  // ---- 5. Copy this CTA's part of the record out (4-byte words) ----
  uint8_t* out = a.dst + layer * a.d_layer + entry * a.d_block +
                 static_cast<int64_t>(h) * static_cast<int64_t>(L.record_bytes);
  const uint32_t* s32 = reinterpret_cast<const uint32_t*>(stage + part_begin);
  uint32_t* o32 = reinterpret_cast<uint32_t*>(out + part_begin);
  const int words = static_cast<int>((part_end - part_begin) / 4);
  for (int i = tid; i < words; i += NT) o32[i] = s32[i];
}

template <int D, int G>
cudaError_t LaunchCompress(const CompressArgs& a, int64_t tiles, cudaStream_t stream) {
  using S = Shape<D, G>;
  cudaError_t e = cudaFuncSetAttribute(CompressKernel<D, G>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(S::kSmemBytes));
  if (e != cudaSuccess) return e;
  CompressKernel<D, G><<<dim3(static_cast<unsigned>(tiles), 2), S::kThreads, S::kSmemBytes,
                         stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t Compress(const CompressParams& p, cudaStream_t stream) {
  if (!IsSupportedHeadDim(p.head_dim) || !IsValidPreset(static_cast<uint8_t>(p.preset)) ||
      p.num_kv_heads < 1 || p.num_layers < 1 || p.num_blocks < 0 || p.k == nullptr ||
      p.v == nullptr || p.dst == nullptr || p.iterations < 0 || p.iterations > 64 ||
      (p.num_blocks > 0 && p.block_ids == nullptr)) {
    return cudaErrorInvalidValue;
  }
  if (p.num_blocks == 0) return cudaSuccess;
  CompressArgs a{};
  a.layout = MakeTileLayout(p.preset, p.head_dim);
  a.num_kv_heads = p.num_kv_heads;
  a.num_blocks = p.num_blocks;
  a.iterations = p.iterations;
  a.dtype = p.dtype;
  a.src[0] = p.k;
  a.src[1] = p.v;
  a.s_layer = p.src_layer_stride;
  a.s_block = p.src_block_stride;
  a.s_token = p.src_token_stride;
  a.s_head = p.src_head_stride;
  a.s_channel = p.src_channel_stride;
  auto aligned16 = [](const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15) == 0; };
  a.vector_ok = p.src_channel_stride == 1 && p.src_layer_stride % 8 == 0 &&
                p.src_block_stride % 8 == 0 && p.src_token_stride % 8 == 0 &&
                p.src_head_stride % 8 == 0 && aligned16(p.k) && aligned16(p.v);
  a.block_ids = p.block_ids;
  a.dst = p.dst;
  a.d_layer = p.dst_layer_stride;
  a.d_block = p.dst_block_stride;
  if ((reinterpret_cast<uintptr_t>(p.dst) & 3) != 0 || p.dst_layer_stride % 4 != 0 ||
      p.dst_block_stride % 4 != 0) {
    return cudaErrorInvalidValue;
  }
  const int64_t tiles = static_cast<int64_t>(p.num_layers) * p.num_blocks * p.num_kv_heads;
  if (tiles > 0x7fffffff) return cudaErrorInvalidValue;
  const int g = a.layout.group_size;
  switch (p.head_dim) {
    case 64: return g == 64 ? LaunchCompress<64, 64>(a, tiles, stream)
                            : LaunchCompress<64, 128>(a, tiles, stream);
    case 128: return g == 64 ? LaunchCompress<128, 64>(a, tiles, stream)
                             : LaunchCompress<128, 128>(a, tiles, stream);
    case 256: return g == 64 ? LaunchCompress<256, 64>(a, tiles, stream)
                             : LaunchCompress<256, 128>(a, tiles, stream);
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace kvtier::kernels::cuda
