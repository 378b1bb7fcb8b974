// Compress kernel: paged FP16/BF16 K/V -> KVarN tile records (DESIGN §3.1-3.2).
//
// One CTA per (layer, block, kv head, role), role 0 = K tile, role 1 = V tile, with
// max(D, G) threads. The rotated fp32 tile X is rotated in shared memory, then kept in
// registers (G * D / max(D, G) values per thread); the shared tile, token-major with an
// odd pitch (D + 1 floats) so that one thread walking a row and one walking a column are
// both bank-conflict-free, holds the current Y = (X / e^lc) / e^lr, rewritten once per
// scale update, and the statistic sweeps read it without dividing. Thread i owns column i
// and row i of the quantized matrix and does their sums sequentially, so the statistics are
// the CPU reference's bit for bit (kernels/cpu/codec_internal.h "Arithmetic contract";
// this file is built with -fmad=false and uses __f*_rn intrinsics where it matters). The
// divisions by the scales e^lc, e^lr and by each row's RTN scale are Markstein quotients
// with the divisor's correctly rounded reciprocal (kernels/cpu/exact_div.h), equal to the
// IEEE divisions bit for bit. The records match the CPU's byte for byte, barring a
// difference between CUDA's and the host's double exp/log.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cfloat>
#include <cstdint>

#include "kernels/cpu/exact_div.h"
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

__device__ __forceinline__ float LogD(float x) {
  return static_cast<float>(log(static_cast<double>(x)));
}

__device__ __forceinline__ float Clamp(float v, float lo, float hi) {
  return fminf(fmaxf(v, lo), hi);
}

template <int D, int G>
struct Shape {
  static constexpr int kThreads = D > G ? D : G;  // one thread per row and per column
  static constexpr int kWarps = kThreads / 32;
  static constexpr int kPitch = D + 1;  // odd: row-wise and column-wise walks conflict-free
  static constexpr int kTileFloats = G * kPitch;
  // {e^lc, 1/e^lc}[C], {e^lr, 1/e^lr}[R], min/max partials [2][W][4].
  static constexpr int kVecFloats = 2 * (D + G) + 2 * kWarps * 4;
  static constexpr size_t kSmemBytes = sizeof(float) * (kTileFloats + kVecFloats);
};

// One role (0: K tile, rows = channels, cols = tokens; 1: V tile, rows = tokens, cols =
// channels) of one tile. The arithmetic is the CPU reference's, operation for operation
// (kernels/cpu/codec_internal.h "Arithmetic contract"): every sum runs sequentially in
// index order in one thread (thread i owns column i and row i), divisions are IEEE
// divisions, products are never fused into adds, exp and log run in double.
template <int D, int G, int ROLE>
__device__ __forceinline__ void CompressTile(const CompressArgs& a, float* smem) {
  using S = Shape<D, G>;
  constexpr int NT = S::kThreads, P = S::kPitch;
  constexpr int R = ROLE == 0 ? D : G;  // rows of the quantized matrix
  constexpr int C = ROLE == 0 ? G : D;  // columns
  float* tile = smem;                   // [G][P], token-major rotated fp32 tile
  // {exp(lc), RN(1/exp(lc))}[C] and {exp(lr), RN(1/exp(lr))}[R]: the divisors and their
  // correctly rounded reciprocals (G * P is even: 8-byte aligned).
  float2* ec = reinterpret_cast<float2*>(tile + S::kTileFloats);
  float2* er = ec + C;
  float* red = reinterpret_cast<float*>(er + R);  // [2][W][4] min/max partials (double-buffered)

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int64_t tile_index = blockIdx.x;
  const int h = static_cast<int>(tile_index % a.num_kv_heads);
  const int64_t li = tile_index / a.num_kv_heads;
  const int entry = static_cast<int>(li % a.num_blocks);
  const int layer = static_cast<int>(li / a.num_blocks);
  const int64_t block = a.block_ids[entry];
  const void* src = a.src[ROLE];
  const int64_t base = layer * a.s_layer + block * a.s_block + static_cast<int64_t>(h) * a.s_head;

  // ---- 1. Load, convert, FWHT butterflies h = 1, 2, 4 (channels 8k..8k+7) ----
  constexpr int kChunks = G * D / 8;
  for (int k = tid; k < kChunks; k += NT) {
    const int t = k / (D / 8), c0 = (k % (D / 8)) * 8;
    float v[8];
    if (a.vector_ok) {
      const uint4 raw = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(src) + base +
                                                        t * a.s_token + c0);
      Unpack8(raw, a.dtype, v);
    } else {
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        v[i] = internal::LoadAsFloat(src, base + t * a.s_token + (c0 + i) * a.s_channel, a.dtype);
      }
    }
    HadamardLocal<8>(v);
#pragma unroll
    for (int i = 0; i < 8; ++i) tile[t * P + c0 + i] = v[i];
  }
  __syncthreads();
  // ---- 2. Butterflies h = 8 .. D/2, then one multiply by (float)(1/sqrt(D)) ----
  {
    const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(D)));
    for (int k = tid; k < G * 8; k += NT) {
      const int clo = k % 8, t = k / 8;
      float v[D / 8];
#pragma unroll
      for (int i = 0; i < D / 8; ++i) v[i] = tile[t * P + clo + 8 * i];
      HadamardLocal<D / 8>(v);
#pragma unroll
      for (int i = 0; i < D / 8; ++i) tile[t * P + clo + 8 * i] = __fmul_rn(v[i], scale);
    }
  }
  if (tid < C) ec[tid] = make_float2(1.f, 1.f);
  if (tid < R) er[tid] = make_float2(1.f, 1.f);
  __syncthreads();

  // X stays in registers for the whole normalization; the shared tile holds the current
  // Y = (X / ec[c]) / er[r] (the CPU's Scale), written once per scale update, so the
  // sequential statistic sweeps read Y without dividing. Thread tid owns the flat
  // token-major elements f = i * NT + tid (t = f / D, channel = f % D); any mapping gives
  // the same Y bits, as each element is computed on its own.
  // NT is a multiple of D, so element i sits at token i * kTs + tq, channel ch: the
  // addresses are one per-thread base plus constants (nothing to keep live per element).
  constexpr int E = G * D / NT, kTs = NT / D;
  const int tq = tid / D, ch = tid % D, xbase = tq * P + ch;
  float x[E];
#pragma unroll
  for (int i = 0; i < E; ++i) x[i] = tile[xbase + i * kTs * P];
  // Y(r, c) of the quantized matrix, as stored in the tile.
  auto Y = [&](int r, int c) -> float { return ROLE == 0 ? tile[c * P + r] : tile[r * P + c]; };
  // Statistics, every sum sequential in index order in one thread. Thread tid owns column
  // tid (tid < C) and row tid (tid < R). Sum passes:
  auto col_sum = [&]() -> float {
    float sum = 0.f;
#pragma unroll 8
    for (int r = 0; r < R; ++r) sum = __fadd_rn(sum, Y(r, tid));
    return sum;
  };
  auto row_sum = [&]() -> float {
    float sum = 0.f;
#pragma unroll 8
    for (int c = 0; c < C; ++c) sum = __fadd_rn(sum, Y(tid, c));
    return sum;
  };
  // Second passes: std = sqrt(sum((v - mean)^2) / (n - 1)), mean = sum / n.
  auto col_std_from = [&](float sum) -> float {
    const float mean = __fdiv_rn(sum, static_cast<float>(R));
    float ss = 0.f;
#pragma unroll 8
    for (int r = 0; r < R; ++r) {
      const float d = __fsub_rn(Y(r, tid), mean);
      ss = __fadd_rn(ss, __fmul_rn(d, d));
    }
    return __fsqrt_rn(__fdiv_rn(ss, static_cast<float>(R - 1)));
  };
  auto row_std_from = [&](float sum) -> float {
    const float mean = __fdiv_rn(sum, static_cast<float>(C));
    float ss = 0.f;
#pragma unroll 8
    for (int c = 0; c < C; ++c) {
      const float d = __fsub_rn(Y(tid, c), mean);
      ss = __fadd_rn(ss, __fmul_rn(d, d));
    }
    return __fsqrt_rn(__fdiv_rn(ss, static_cast<float>(C - 1)));
  };
  // Own line: with NT == D (D >= G) thread tid holds channel tid of every token, in token
  // order (element i = token i), i.e. all of row tid (ROLE 0: rows = channels) or of
  // column tid (ROLE 1: columns = channels) in the line's index order. The rescale then
  // sums that line as it writes it (the same adds in the same order as row_sum/col_sum,
  // on the same values: the same bits) and the sum pass over shared memory is skipped.
  constexpr bool kOwnLine = NT == D;
  constexpr bool kOwnRow = kOwnLine && ROLE == 0, kOwnCol = kOwnLine && ROLE == 1;
  // The stds after a rescale whose own-line sum is `own`: rows only (after a column
  // update) or columns and rows. With R == C the two second passes run in one loop: two
  // independent add chains, each in its own order (one chain's latency hides behind the
  // other's).
  auto stats = [&](bool cols, float own, float& cs_out, float& rs_out) {
    const float rsum = kOwnRow ? own : (tid < R ? row_sum() : 0.f);
    if (!cols) {
      if (tid < R) rs_out = row_std_from(rsum);
      return;
    }
    const float csum = kOwnCol ? own : (tid < C ? col_sum() : 0.f);
    if constexpr (R == C) {
      const float cmean = __fdiv_rn(csum, static_cast<float>(R));
      const float rmean = __fdiv_rn(rsum, static_cast<float>(C));
      float css = 0.f, rss = 0.f;
#pragma unroll 8
      for (int k = 0; k < R; ++k) {
        const float dc = __fsub_rn(Y(k, tid), cmean);
        const float dr = __fsub_rn(Y(tid, k), rmean);
        css = __fadd_rn(css, __fmul_rn(dc, dc));
        rss = __fadd_rn(rss, __fmul_rn(dr, dr));
      }
      cs_out = __fsqrt_rn(__fdiv_rn(css, static_cast<float>(R - 1)));
      rs_out = __fsqrt_rn(__fdiv_rn(rss, static_cast<float>(C - 1)));
    } else {
      cs_out = tid < C ? col_std_from(csum) : 0.f;
      rs_out = tid < R ? row_std_from(rsum) : 0.f;
    }
  };
  // imb = cmax / max(cmin, floor) + rmax / max(rmin, floor); min/max are exact in any
  // order. Ends after a barrier; `buf` alternates so consecutive calls don't race.
  auto imbalance = [&](float cs, float rs, int buf) -> float {
    float cmx = tid < C ? cs : -FLT_MAX, cmn = tid < C ? cs : FLT_MAX;
    float rmx = tid < R ? rs : -FLT_MAX, rmn = tid < R ? rs : FLT_MAX;
    cmx = internal::WarpMax(cmx);
    cmn = internal::WarpMin(cmn);
    rmx = internal::WarpMax(rmx);
    rmn = internal::WarpMin(rmn);
    float* rb = red + buf * S::kWarps * 4;
    if (lane == 0) {
      rb[warp * 4 + 0] = cmx;
      rb[warp * 4 + 1] = cmn;
      rb[warp * 4 + 2] = rmx;
      rb[warp * 4 + 3] = rmn;
    }
    __syncthreads();
    cmx = -FLT_MAX;
    cmn = FLT_MAX;
    rmx = -FLT_MAX;
    rmn = FLT_MAX;
    for (int w = 0; w < S::kWarps; ++w) {
      cmx = fmaxf(cmx, rb[w * 4 + 0]);
      cmn = fminf(cmn, rb[w * 4 + 1]);
      rmx = fmaxf(rmx, rb[w * 4 + 2]);
      rmn = fminf(rmn, rb[w * 4 + 3]);
    }
    return __fadd_rn(__fdiv_rn(cmx, fmaxf(cmn, kImbFloor)), __fdiv_rn(rmx, fmaxf(rmn, kImbFloor)));
  };

  // ---- 3. Log-domain normalization (NormalizeLog) ----
  // Y = X / 1 / 1 == X: the tile already holds it.
  float own = 0.f;  // the own line's sum (kOwnLine), in element (= index) order
  if (kOwnLine) {
#pragma unroll
    for (int i = 0; i < E; ++i) own = __fadd_rn(own, x[i]);
  }
  float cs = 0.f, rs = 0.f;
  stats(true, own, cs, rs);
  float best = imbalance(cs, rs, 0);
  float lc = 0.f, lr = 0.f, best_lc = 0.f, best_lr = 0.f;
  // Step 2k-1: column update, Y, row stds. Step 2k: row update, Y, column and row stds,
  // imbalance. Step 2n+1: the best scales and their Y for the quantization. One rescale
  // site (two forms, below) keeps the unrolled register loop in the code once per form.
  // The scales e^l, l in [kLogLo, kLogHi] (a NaN std clamps to kStdLo: fminf/fmaxf drop
  // NaN), lie in [exact_div::kScaleLo, exact_div::kScaleHi], so Y = (X / e^lc) / e^lr is
  // exact_div::DivideByTwoScales: Markstein's quotient with the scale's correctly rounded
  // reciprocal, bit for bit the two IEEE divisions (kernels/cpu/exact_div_test.cc).
  static_assert(kLogLo >= -0.69f && kLogHi <= 10.39f, "e^l must stay in [2^-1, 2^15]");
  // x_fast: all of this thread's X (fixed for the whole normalization) are in the
  // range where the two Markstein quotients need no check; else the checked form, which
  // falls back to IEEE divisions element by element (zeros, subnormal or huge values).
  auto pair = [](float e) { return make_float2(e, exact_div::Reciprocal(e)); };
  bool x_fast = true;
#pragma unroll
  for (int i = 0; i < E; ++i) x_fast = x_fast && exact_div::TwoScaleDividendInRange(x[i]);
  const int last = 2 * a.iterations + 1;
  for (int step = 1; step <= last; ++step) {
    if (step == last) {
      if (tid < C) ec[tid] = pair(ExpD(best_lc));  // s_col
      if (tid < R) er[tid] = pair(ExpD(best_lr));  // s_row
    } else if (step & 1) {
      if (tid < C) {
        lc = Clamp(__fadd_rn(lc, LogD(Clamp(cs, kStdLo, kStdHi))), kLogLo, kLogHi);
        ec[tid] = pair(ExpD(lc));
      }
    } else if (tid < R) {
      lr = Clamp(__fadd_rn(lr, LogD(Clamp(rs, kStdLo, kStdHi))), kLogLo, kLogHi);
      er[tid] = pair(ExpD(lr));
    }
    __syncthreads();  // new scales visible; the previous step's sweeps are done
    // Y = (X / e_c) / e_r for the thread's E elements; `divide` is one of the two below.
    // Returns the sum of the elements in order (used when kOwnLine, else dead code).
    auto rescale = [&](auto divide) -> float {
      float sum = 0.f;
      // Per element, the scale of its token (ROLE 0: ec, ROLE 1: er); with kTs == 1
      // element i is token i and one 16-byte broadcast load fetches the {e, 1/e} pairs of
      // elements i and i + 1 (the pair arrays are 16-byte aligned: G * P * 4 and C * 8
      // are multiples of 16).
      const float2* per_token = ROLE == 0 ? ec : er;
      const float2 fixed = ROLE == 0 ? er[ch] : ec[ch];
      auto one = [&](int i, float2 e_t) {
        const float y = ROLE == 0 ? divide(x[i], e_t, fixed) : divide(x[i], fixed, e_t);
        tile[xbase + i * kTs * P] = y;
        sum = __fadd_rn(sum, y);
      };
      if constexpr (kTs == 1 && E % 2 == 0) {
        const float4* pairs = reinterpret_cast<const float4*>(per_token);
#pragma unroll
        for (int i = 0; i < E; i += 2) {
          const float4 p = pairs[i / 2];
          one(i, make_float2(p.x, p.y));
          one(i + 1, make_float2(p.z, p.w));
        }
      } else {
#pragma unroll
        for (int i = 0; i < E; ++i) one(i, per_token[tq + i * kTs]);
      }
      return sum;
    };
    if (x_fast) {
      own = rescale([](float v, float2 c, float2 r) {
        return exact_div::MarksteinTwoScales(v, c.x, c.y, r.x, r.y);
      });
    } else {
      own = rescale([](float v, float2 c, float2 r) {
        return exact_div::DivideByTwoScales(v, c.x, c.y, r.x, r.y);
      });
    }
    __syncthreads();
    if (step == last) break;
    if (step & 1) {
      stats(false, own, cs, rs);
    } else {
      stats(true, own, cs, rs);
      const float imb = imbalance(cs, rs, (step / 2) & 1);
      if (imb <= best) {  // later ties win, as the CPU
        best = imb;
        best_lc = lc;
        best_lr = lr;
      }
    }
  }
  // ---- 4. Final scales, balanced values (in the tile), per-row RTN, fields, codes ----
  const TileLayout& L = a.layout;
  uint8_t* out = a.dst + layer * a.d_layer + entry * a.d_block +
                 static_cast<int64_t>(h) * static_cast<int64_t>(L.record_bytes);
  const int bits = ROLE == 0 ? L.key_bits : L.value_bits;
  const float qmax = static_cast<float>((1 << bits) - 1);
  if (tid < C) {
    const size_t off = ROLE == 0 ? L.s_row_k_offset : L.s_col_v_offset;
    reinterpret_cast<__half*>(out + off)[tid] = __float2half_rn(ec[tid].x);
  }
  if (tid < R) {
    const int r = tid;
    const float srow = er[r].x;
    auto B = [&](int c) { return Y(r, c); };
    float mn = B(0), mx = mn;
    for (int c = 1; c < C; ++c) {
      const float b = B(c);
      mn = fminf(mn, b);
      mx = fmaxf(mx, b);
    }
    const float sc = fmaxf(__fdiv_rn(__fsub_rn(mx, mn), qmax), kMinScale);
    // Every code divides by sc: exact_div::Divide, bit for bit the IEEE division (sc >=
    // kMinScale = 1e-10 is in the fast range unless the row spans more than 2^40 * qmax).
    const exact_div::Divisor dsc = exact_div::MakeDivisor(sc);
    const size_t s_off = ROLE == 0 ? L.s_col_k_offset : L.s_row_v_offset;
    const size_t z_off = ROLE == 0 ? L.zp_k_offset : L.zp_v_offset;
    reinterpret_cast<__half*>(out + s_off)[r] = __float2half_rn(__fmul_rn(srow, sc));
    reinterpret_cast<__half*>(out + z_off)[r] = __float2half_rn(__fmul_rn(srow, mn));
    const size_t row_bytes = ROLE == 0 ? L.k_row_bytes : L.v_row_bytes;
    uint32_t* row = reinterpret_cast<uint32_t*>(
        out + (ROLE == 0 ? L.k_codes_offset : L.v_codes_offset) + r * row_bytes);
    const int per_word = 32 / bits;
    for (int w = 0; w < C / per_word; ++w) {
      uint32_t word = 0;
      for (int j = 0; j < per_word; ++j) {
        const float q =
            Clamp(rintf(exact_div::Divide(__fsub_rn(B(w * per_word + j), mn), dsc)), 0.f, qmax);
        word |= static_cast<uint32_t>(q) << (j * bits);
      }
      row[w] = word;
    }
  }
  if (ROLE == 1) {
    for (size_t i = L.data_end + tid; i < L.record_bytes; i += NT) out[i] = 0;
  }
}

template <int D, int G>
__global__ void __launch_bounds__(Shape<D, G>::kThreads) CompressKernel(const CompressArgs a) {
  extern __shared__ __align__(16) float smem[];
  if (blockIdx.y == 0) {
    CompressTile<D, G, 0>(a, smem);
  } else {
    CompressTile<D, G, 1>(a, smem);
  }
}

template <int D, int G>
cudaError_t LaunchCompress(const CompressArgs& a, int64_t tiles, cudaStream_t stream) {
  using S = Shape<D, G>;
  cudaError_t e =
      cudaFuncSetAttribute(CompressKernel<D, G>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           static_cast<int>(S::kSmemBytes));
  if (e != cudaSuccess) return e;
  CompressKernel<D, G>
      <<<dim3(static_cast<unsigned>(tiles), 2), S::kThreads, S::kSmemBytes, stream>>>(a);
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
    case 64:
      return g == 64 ? LaunchCompress<64, 64>(a, tiles, stream)
                     : LaunchCompress<64, 128>(a, tiles, stream);
    case 128:
      return g == 64 ? LaunchCompress<128, 64>(a, tiles, stream)
                     : LaunchCompress<128, 128>(a, tiles, stream);
    case 256:
      return g == 64 ? LaunchCompress<256, 64>(a, tiles, stream)
                     : LaunchCompress<256, 128>(a, tiles, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

}  // namespace kvtier::kernels::cuda
