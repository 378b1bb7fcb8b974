// Fused decode attention over a paged cache of KVarN tile records and FP16 pages
// (DESIGN §3.4, KERNELS.md).
//
// Grid: (split, kv head × column group, request). A CTA has kWarps warps; each warp
// streams whole tiles of its split (round robin), keeps its own online-softmax state
// and merges with the other warps at the end; splits merge in a second kernel with
// log-sum-exp weights. Per tile and warp:
//   scores^T [tokens × 8 cols] = codes_K^T [tokens × D] · q'^T [D × 8]   (mma m16n8k16)
//   out^T    [D × 8 cols]      = codes_V^T [D × tokens] · p'^T [tokens × 8]
// with q' = q_rot·s_col_K and p' = p·s_row_V in fp16, and codes turned into fp16
// operands by one AND-OR with the 0x6400 exponent (value 1024 + f·code, f a power of
// two given by the code's bit position). The 1024 offsets and the zero points come back
// as per-column corrections, f as per-row factors. Records are streamed into shared
// memory with 16-byte cp.async, two stages per warp, swizzled so that ldmatrix is
// conflict-free.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cfloat>
#include <cstdint>
#include <mutex>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kvarn_cuda.h"
#include "kernels/format.h"

namespace kvtier::kernels::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kStages = 2;
constexpr int kCtasPerSm = 2;
constexpr uint32_t kMagic = 0x64006400u;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct AttnArgs {
  int num_q_heads, num_kv_heads, group, num_query_tokens, num_cols, col_groups;
  int batch, num_splits, blocks_per_split;
  float scale_log2;
  DType q_dtype;
  const void* q;
  void* out;
  float* lse;
  const uint8_t* tile_pages;
  int64_t tile_page_stride;
  const uint8_t* fp16_pages;
  int64_t fp16_page_stride;
  const int32_t* block_tables;
  int block_table_stride;
  const int32_t* seq_lens;
  float* ws_o;    // [rows][S][D]
  float* ws_lse;  // [rows][S]
};

__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void CpAsync16(uint32_t dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(src));
}
__device__ __forceinline__ void CpAsyncCommit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void CpAsyncWait1() { asm volatile("cp.async.wait_group 1;\n" ::); }
__device__ __forceinline__ void CpAsyncWait0() { asm volatile("cp.async.wait_group 0;\n" ::); }

__device__ __forceinline__ void LdMatrixX4T(uint32_t addr, uint32_t* r) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ uint32_t MovTrans(uint32_t x) {
  uint32_t y;
  asm("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}
// D = A·B + D, m16n8k16, fp16 operands, fp32 accumulators.
__device__ __forceinline__ void Mma(float* d, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                    uint32_t b0, uint32_t b1) {
  asm(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
// (1024 + k) - 1024 = k exactly, for both halves: removes the magic offset from code
// operands whose field sits low in the mantissa, where the tensor core's accumulation
// (aligned to the largest term) would otherwise lose the code's bits.
__device__ __forceinline__ uint32_t SubMagic(uint32_t x) {
  uint32_t r;
  asm("sub.f16x2 %0, %1, %2;\n" : "=r"(r) : "r"(x), "r"(kMagic));
  return r;
}
__device__ __forceinline__ uint32_t PackHalf2(float lo, float hi) {
  const __half2 h = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&h);
}
__device__ __forceinline__ float2 UnpackHalf2(uint32_t x) {
  return __half22float2(*reinterpret_cast<const __half2*>(&x));
}
__device__ __forceinline__ float2 LoadHalf2(const uint8_t* p) {
  return __half22float2(*reinterpret_cast<const __half2*>(p));
}

template <int D, int G, int VB>
struct AttnShape {
  static constexpr Preset kPreset = G == 128 ? (VB == 2 ? Preset::kK4V2G128 : Preset::kK4V4G128)
                                             : (VB == 2 ? Preset::kK4V2G64 : Preset::kK4V4G64);
  static constexpr TileLayout kL = MakeTileLayout(kPreset, D);
  static constexpr int kRecord = static_cast<int>(kL.record_bytes);
  static constexpr int kStageBytes = (kRecord + 127) / 128 * 128;
  static constexpr int kKs = D / 16;         // k-steps of the score mma
  static constexpr int kMt = G / 16;         // token m-tiles (= k-steps of the V mma)
  static constexpr int kMv = D / 16;         // channel m-tiles of the V mma
  static constexpr int kKRowChunks = G / 32;  // 16-byte chunks per K code row
  static constexpr int kVRowChunks = D * VB / 128;
  static constexpr int kChPerChunk = 128 / VB;  // channels per V chunk
  static constexpr int kNpc = kChPerChunk / 16;  // V m-tiles per chunk
  static constexpr int kVOffChunks = static_cast<int>(kL.v_codes_offset / 16);
  static constexpr int kKChunks = D * G / 32;
  static constexpr int kVChunks = G * D * VB / 128;
  static constexpr int kQPitch = D + 8;  // padded q_rot rows: conflict-free float2 reads
  static constexpr size_t kQBytes = 8 * kQPitch * sizeof(float);
  static constexpr size_t kSmemBytes = kWarps * kStages * kStageBytes + kQBytes;
  static_assert(kRecord % 16 == 0, "records stream in 16-byte chunks");
  static_assert(kKChunks % 32 == 0 && kVChunks % 32 == 0, "code regions are whole warps of chunks");
  static_assert(kL.v_codes_offset % 16 == 0, "V codes start on a chunk");
  static_assert(kVRowChunks % 2 == 0 && kKRowChunks % 2 == 0, "x4 ldmatrix pairs");
  static_assert(kWarps * (8 * D + 16) * sizeof(float) <= kWarps * kStages * kStageBytes,
                "merge scratch fits in the stage buffers");
};

template <int R>
__device__ __forceinline__ int SwizzleK(int q) {
  return q ^ ((q >> 3) & (R - 1));
}
template <int R>
__device__ __forceinline__ int SwizzleV(int q) {
  constexpr int kShift = (R == 2 ? 1 : (R == 4 ? 2 : 3)) + 2;
  return q ^ ((q >> kShift) & 7);
}

template <int D, int G, int VB>
__global__ void __launch_bounds__(kWarps * 32, kCtasPerSm) DecodeKernel(const AttnArgs a) {
  using S = AttnShape<D, G, VB>;
  constexpr int KS = S::kKs, MT = S::kMt, MV = S::kMv;
  extern __shared__ __align__(128) uint8_t smem[];
  float* q_s = reinterpret_cast<float*>(smem + kWarps * kStages * S::kStageBytes);  // [8][D]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, tig = lane % 4;
  const int split = blockIdx.x;
  const int h = blockIdx.y / a.col_groups;
  const int col0 = (blockIdx.y % a.col_groups) * 8;
  const int b = blockIdx.z;
  const int seq_len = a.seq_lens[b];
  const int T = a.num_query_tokens;
  const int rows_per_req = a.num_q_heads * T;

  // Column n of this CTA -> (query token i, head j of the group); row of q/out.
  auto col_row = [&](int n, int& limit) -> int {
    const int c = col0 + n;
    if (n >= 8 || c >= a.num_cols) {
      limit = 0;
      return -1;
    }
    const int i = c / a.group, j = c % a.group;
    limit = seq_len - T + 1 + i;
    return i * a.num_q_heads + h * a.group + j;
  };

  // ---- q: load the CTA's columns, rotate (FWHT), keep q_rot[head g] in registers ----
  for (int idx = tid; idx < 8 * D; idx += kWarps * 32) {
    const int n = idx / D, d = idx % D;
    int lim;
    const int row = col_row(n, lim);
    q_s[n * S::kQPitch + d] = row >= 0 ? internal::LoadAsFloat(a.q, (static_cast<int64_t>(b) * rows_per_req + row) * D + d,
                                                a.q_dtype)
                        : 0.f;
  }
  __syncthreads();
  {
    const float sc = static_cast<float>(1.0 / sqrt(static_cast<double>(D)));
    for (int hh = 1; hh < D; hh <<= 1) {
      for (int i = tid; i < 8 * D / 2; i += kWarps * 32) {
        const int n = i / (D / 2), k = i % (D / 2);
        const int lo = n * S::kQPitch + (k / hh) * 2 * hh + (k % hh);
        const float x0 = q_s[lo], x1 = q_s[lo + hh];
        q_s[lo] = x0 + x1;
        q_s[lo + hh] = x0 - x1;
      }
      __syncthreads();
    }
    for (int i = tid; i < 8 * D; i += kWarps * 32) q_s[(i / D) * S::kQPitch + i % D] *= sc;
    __syncthreads();
  }
  // q_rot[col g][16ks + 8hh + 2tig + {0,1}], read from shared memory per tile (keeps 32
  // registers free).
  const float* q_me = q_s + g * S::kQPitch + 2 * tig;
  auto QR = [&](int ks, int hh) -> float2 {
    return *reinterpret_cast<const float2*>(q_me + 16 * ks + 8 * hh);
  };
  // Causal limits of this thread's score columns (2tig, 2tig+1).
  int lim0, lim1;
  col_row(2 * tig, lim0);
  col_row(2 * tig + 1, lim1);
  const int lim_min = seq_len - T + 1;  // below this every column sees every token

  // ---- this warp's tiles ----
  const int nblk = (seq_len + G - 1) / G;
  const int blk_begin = split * a.blocks_per_split;
  const int blk_end = min(nblk, blk_begin + a.blocks_per_split);
  uint8_t* stage_base = smem + warp * kStages * S::kStageBytes;
  const int32_t* bt = a.block_tables + static_cast<int64_t>(b) * a.block_table_stride;

  auto issue = [&](int j, int st) {
    if (j < blk_end) {
      const int32_t e = bt[j];
      if (e >= 0) {
        const uint8_t* rec = a.tile_pages + static_cast<int64_t>(e) * a.tile_page_stride +
                             static_cast<int64_t>(h) * S::kRecord;
        const uint32_t dst = SmemAddr(stage_base + st * S::kStageBytes);
        // K codes: chunk q = lane + 32i; the swizzle term (q >> 3) & (R-1) only depends on
        // the lane (32i adds multiples of 4 to q >> 3).
        {
          const int pl = lane ^ ((lane >> 3) & (S::kKRowChunks - 1));
#pragma unroll
          for (int i = 0; i < S::kKChunks / 32; ++i) CpAsync16(dst + (pl + 32 * i) * 16, rec + (lane + 32 * i) * 16);
        }
        // Vectors between K and V codes, V codes (swizzled), trailing vectors: plain.
        for (int q = S::kKChunks + lane; q < S::kVOffChunks; q += 32) CpAsync16(dst + q * 16, rec + q * 16);
        {
          constexpr int kShift = (S::kVRowChunks == 2 ? 1 : 2) + 2;
#pragma unroll
          for (int i = 0; i < S::kVChunks / 32; ++i) {
            const int q = lane + 32 * i;
            const int p = q ^ ((q >> kShift) & 7);
            CpAsync16(dst + (S::kVOffChunks + p) * 16, rec + (S::kVOffChunks + q) * 16);
          }
        }
        for (int q = S::kVOffChunks + S::kVChunks + lane; q < S::kRecord / 16; q += 32) {
          CpAsync16(dst + q * 16, rec + q * 16);
        }
      }
    }
    CpAsyncCommit();
  };

  float m_run[2] = {-INFINITY, -INFINITY};  // running max (log2 domain) of cols 2tig, 2tig+1
  float l_run[2] = {0.f, 0.f};              // this thread's partial sums
  float o[MV][4];
#pragma unroll
  for (int i = 0; i < MV; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;

  // Online softmax over one tile's scores s[MT][4] (rows g/g+8, cols 2tig/2tig+1);
  // replaces s by p and returns false when the tile contributes nothing.
  auto softmax_update = [&](float (&s)[MT][4]) -> bool {
    float tmax[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      tmax[0] = fmaxf(tmax[0], fmaxf(s[mt][0], s[mt][2]));
      tmax[1] = fmaxf(tmax[1], fmaxf(s[mt][1], s[mt][3]));
    }
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      tmax[e] = fmaxf(tmax[e], __shfl_xor_sync(0xffffffffu, tmax[e], 4));
      tmax[e] = fmaxf(tmax[e], __shfl_xor_sync(0xffffffffu, tmax[e], 8));
      tmax[e] = fmaxf(tmax[e], __shfl_xor_sync(0xffffffffu, tmax[e], 16));
    }
    float alpha[2], mnew[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      mnew[e] = fmaxf(m_run[e], tmax[e]);
      // A column with no visible token yet keeps m = -inf; use 0 as base to avoid NaN.
      const float base = mnew[e] == -INFINITY ? 0.f : mnew[e];
      alpha[e] = exp2f(m_run[e] - base);
      m_run[e] = mnew[e];
      mnew[e] = base;
      l_run[e] *= alpha[e];
    }
#pragma unroll
    for (int i = 0; i < MV; ++i) {
      o[i][0] *= alpha[0];
      o[i][1] *= alpha[1];
      o[i][2] *= alpha[0];
      o[i][3] *= alpha[1];
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float p = exp2f(s[mt][e] - mnew[e & 1]);
        s[mt][e] = p;
        l_run[e & 1] += p;
      }
    }
    return true;
  };

  // out += s_col_V[d]·(vacc/f + zc) for this thread's channels (compressed tiles), or
  // out += vacc (FP16 tiles: scv == nullptr).
  auto process_compressed = [&](const uint8_t* rec, int ntok, int tok_base) {
    const uint32_t rec_s = SmemAddr(rec);
    constexpr TileLayout L = S::kL;
    // q' = q_rot·s_col_K as an fp16 hi/lo pair (two MMAs: fp32-accurate scores),
    // bias = Σ q_rot·zp_K, qsum = Σ q' (of the fp16 parts, for the 1024 offsets).
    uint32_t bqh[KS][2], bql[KS][2];
    float bias = 0.f, qsum = 0.f;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int d = 16 * ks + 8 * hh + 2 * tig;
        const float2 sc = LoadHalf2(rec + L.s_col_k_offset + 2 * d);
        const float2 zp = LoadHalf2(rec + L.zp_k_offset + 2 * d);
        const float2 qv = QR(ks, hh);
        const float q0 = qv.x * sc.x, q1 = qv.y * sc.y;
        const uint32_t hi = PackHalf2(q0, q1);
        const float2 hf = UnpackHalf2(hi);
        const uint32_t lo = PackHalf2(q0 - hf.x, q1 - hf.y);
        const float2 lf = UnpackHalf2(lo);
        bqh[ks][hh] = hi;
        bql[ks][hh] = lo;
        qsum += (hf.x + hf.y) + (lf.x + lf.y);
        bias = fmaf(qv.x, zp.x, bias);
        bias = fmaf(qv.y, zp.y, bias);
      }
    }
    qsum += __shfl_xor_sync(0xffffffffu, qsum, 1);
    qsum += __shfl_xor_sync(0xffffffffu, qsum, 2);
    bias += __shfl_xor_sync(0xffffffffu, bias, 1);
    bias += __shfl_xor_sync(0xffffffffu, bias, 2);
    // Column 2tig+e lives in lanes 4*(2tig+e)+*.
    float c1[2], c16[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const float qs = __shfl_sync(0xffffffffu, qsum, 4 * (2 * tig + e));
      const float bs = __shfl_sync(0xffffffffu, bias, 4 * (2 * tig + e));
      c1[e] = bs;               // f = 1 rows carry no offset
      c16[e] = bs - 64.f * qs;  // f = 16 rows: (1024 + 16c)/16 = 64 + c
    }
    // Scores.
    float s[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) s[mt][0] = s[mt][1] = s[mt][2] = s[mt][3] = 0.f;
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
#pragma unroll
      for (int cp = 0; cp < S::kKRowChunks / 2; ++cp) {
        const int j = lane >> 3, rho = lane & 7;
        const int d = 16 * ks + 8 * (j & 1) + rho;
        const int c = 2 * cp + (j >> 1);
        uint32_t y[4];
        LdMatrixX4T(rec_s + SwizzleK<S::kKRowChunks>(d * S::kKRowChunks + c) * 16, y);
#pragma unroll
        for (int cc = 0; cc < 2; ++cc) {
#pragma unroll
          for (int ip = 0; ip < 2; ++ip) {
            const uint32_t ya = ip ? (y[2 * cc] >> 8) : y[2 * cc];
            const uint32_t yb = ip ? (y[2 * cc + 1] >> 8) : y[2 * cc + 1];
            const int mt = 2 * (2 * cp + cc) + ip;
            // Rows m = g: f = 1 fields, offset removed; rows m = g+8: f = 16, offset kept.
            const uint32_t a0 = SubMagic((ya & 0x000F000Fu) | kMagic), a1 = (ya & 0x00F000F0u) | kMagic;
            const uint32_t a2 = SubMagic((yb & 0x000F000Fu) | kMagic), a3 = (yb & 0x00F000F0u) | kMagic;
            Mma(s[mt], a0, a1, a2, a3, bqh[ks][0], bqh[ks][1]);
            Mma(s[mt], a0, a1, a2, a3, bql[ks][0], bql[ks][1]);
          }
        }
      }
    }
    // Scale, bias, mask. Token of (mt = 2c+ip, row g) = 32c + 4g + 2ip, row g+8 = +1.
#pragma unroll
    for (int c = 0; c < G / 32; ++c) {
      const uint2 raw = *reinterpret_cast<const uint2*>(rec + L.s_row_k_offset + 2 * (32 * c + 4 * g));
      const float2 r01 = UnpackHalf2(raw.x), r23 = UnpackHalf2(raw.y);
#pragma unroll
      for (int ip = 0; ip < 2; ++ip) {
        const int mt = 2 * c + ip;
        const float slo = (ip ? r23.x : r01.x) * a.scale_log2;
        const float shi = (ip ? r23.y : r01.y) * a.scale_log2;
        s[mt][0] = slo * (s[mt][0] + c1[0]);
        s[mt][1] = slo * (s[mt][1] + c1[1]);
        s[mt][2] = shi * fmaf(s[mt][2], 1.f / 16.f, c16[0]);
        s[mt][3] = shi * fmaf(s[mt][3], 1.f / 16.f, c16[1]);
        if (tok_base + G > lim_min || ntok < G) {
          const int t = 32 * c + 4 * g + 2 * ip;
          const int pos = tok_base + t;
          if (t >= ntok || pos >= lim0) s[mt][0] = -INFINITY;
          if (t >= ntok || pos >= lim1) s[mt][1] = -INFINITY;
          if (t + 1 >= ntok || pos + 1 >= lim0) s[mt][2] = -INFINITY;
          if (t + 1 >= ntok || pos + 1 >= lim1) s[mt][3] = -INFINITY;
        }
      }
    }
    softmax_update(s);
    // p' = p·s_row_V (fp16), P' = Σ p' (rounded values), Z = Σ (p'/s_row_V)·zp_V: the
    // zero-point term uses the same rounded weights as the code term, so fp16 rounding
    // of p' perturbs the weights (like fp16 P in flash attention), not the V values.
    uint32_t blo[MT], bhi[MT];
    float psum[2] = {0.f, 0.f}, zsum[2] = {0.f, 0.f};
#pragma unroll
    for (int c = 0; c < G / 32; ++c) {
      const uint2 rs = *reinterpret_cast<const uint2*>(rec + L.s_row_v_offset + 2 * (32 * c + 4 * g));
      const uint2 rz = *reinterpret_cast<const uint2*>(rec + L.zp_v_offset + 2 * (32 * c + 4 * g));
      const float2 s01 = UnpackHalf2(rs.x), s23 = UnpackHalf2(rs.y);
      const float2 z01 = UnpackHalf2(rz.x), z23 = UnpackHalf2(rz.y);
#pragma unroll
      for (int ip = 0; ip < 2; ++ip) {
        const int mt = 2 * c + ip;
        const float svl = ip ? s23.x : s01.x, svh = ip ? s23.y : s01.y;
        const float zl = ip ? z23.x : z01.x, zh = ip ? z23.y : z01.y;
        const uint32_t lo = PackHalf2(s[mt][0] * svl, s[mt][1] * svl);
        const uint32_t hi = PackHalf2(s[mt][2] * svh, s[mt][3] * svh);
        const float2 lf = UnpackHalf2(lo), hf = UnpackHalf2(hi);
        psum[0] += lf.x + hf.x;
        psum[1] += lf.y + hf.y;
        const float rl = svl != 0.f ? __fdividef(zl, svl) : 0.f;
        const float rh = svh != 0.f ? __fdividef(zh, svh) : 0.f;
        zsum[0] += svl != 0.f ? lf.x * rl : s[mt][0] * zl;
        zsum[1] += svl != 0.f ? lf.y * rl : s[mt][1] * zl;
        zsum[0] += svh != 0.f ? hf.x * rh : s[mt][2] * zh;
        zsum[1] += svh != 0.f ? hf.y * rh : s[mt][3] * zh;
        blo[mt] = MovTrans(lo);
        bhi[mt] = MovTrans(hi);
      }
    }
#pragma unroll
    for (int e = 0; e < 2; ++e) {
#pragma unroll
      for (int m = 4; m <= 16; m <<= 1) {
        psum[e] += __shfl_xor_sync(0xffffffffu, psum[e], m);
        zsum[e] += __shfl_xor_sync(0xffffffffu, zsum[e], m);
      }
    }
    // V product into fresh accumulators.
    float va[MV][4];
#pragma unroll
    for (int i = 0; i < MV; ++i) va[i][0] = va[i][1] = va[i][2] = va[i][3] = 0.f;
    const uint32_t v_s = rec_s + static_cast<uint32_t>(L.v_codes_offset);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int c = mt / 2, ip = mt % 2;
#pragma unroll
      for (int cp = 0; cp < S::kVRowChunks / 2; ++cp) {
        const int j = lane >> 3, rho = lane & 7;
        const int t = 32 * c + 8 * (rho >> 1) + 4 * (rho & 1) + 2 * ip + (j & 1);
        const int ch = 2 * cp + (j >> 1);
        uint32_t y[4];
        LdMatrixX4T(v_s + SwizzleV<S::kVRowChunks>(t * S::kVRowChunks + ch) * 16, y);
#pragma unroll
        for (int cc = 0; cc < 2; ++cc) {
          const int chunk = 2 * cp + cc;
#pragma unroll
          for (int hx = 0; hx < 2; ++hx) {
            const uint32_t y0 = hx ? (y[2 * cc] >> 8) : y[2 * cc];
            const uint32_t y1 = hx ? (y[2 * cc + 1] >> 8) : y[2 * cc + 1];
            if constexpr (VB == 2) {
#pragma unroll
              for (int pp = 0; pp < 2; ++pp) {
                const uint32_t mlo = 0x00030003u << (4 * pp), mhi = 0x000C000Cu << (4 * pp);
                const int mv = chunk * S::kNpc + 2 * hx + pp;
                uint32_t a0 = (y0 & mlo) | kMagic, a1 = (y0 & mhi) | kMagic;
                uint32_t a2 = (y1 & mlo) | kMagic, a3 = (y1 & mhi) | kMagic;
                if (pp == 0) {  // fields at bits 0-1 and 2-3 (f = 1, 4): no offset
                  a0 = SubMagic(a0);
                  a1 = SubMagic(a1);
                  a2 = SubMagic(a2);
                  a3 = SubMagic(a3);
                }
                Mma(va[mv], a0, a1, a2, a3, blo[mt], bhi[mt]);
              }
            } else {
              const int mv = chunk * S::kNpc + hx;
              // Rows m = g hold f = 1 fields (no offset), rows m = g+8 f = 16 fields.
              Mma(va[mv], SubMagic((y0 & 0x000F000Fu) | kMagic), (y0 & 0x00F000F0u) | kMagic,
                  SubMagic((y1 & 0x000F000Fu) | kMagic), (y1 & 0x00F000F0u) | kMagic, blo[mt],
                  bhi[mt]);
            }
          }
        }
      }
    }
    // out += s_col_V·(va/f + Z - [offset]·1024·P'/f).
#pragma unroll
    for (int mv = 0; mv < MV; ++mv) {
      const int pi = mv % S::kNpc;
      const int ch_lo = S::kChPerChunk * (mv / S::kNpc) + (S::kChPerChunk / 8) * g + 2 * pi;
      float flo, fhi, olo, ohi;  // 1/f and the offset weight 1024/f (0: offset removed)
      if constexpr (VB == 2) {
        flo = (pi % 2) ? 1.f / 16.f : 1.f;
        fhi = (pi % 2) ? 1.f / 64.f : 1.f / 4.f;
        olo = (pi % 2) ? 1024.f / 16.f : 0.f;
        ohi = (pi % 2) ? 1024.f / 64.f : 0.f;
      } else {
        flo = 1.f;
        fhi = 1.f / 16.f;
        olo = 0.f;
        ohi = 1024.f / 16.f;
      }
      const float2 scv = LoadHalf2(rec + L.s_col_v_offset + 2 * ch_lo);
      o[mv][0] = fmaf(scv.x, fmaf(va[mv][0], flo, zsum[0] - olo * psum[0]), o[mv][0]);
      o[mv][1] = fmaf(scv.x, fmaf(va[mv][1], flo, zsum[1] - olo * psum[1]), o[mv][1]);
      o[mv][2] = fmaf(scv.y, fmaf(va[mv][2], fhi, zsum[0] - ohi * psum[0]), o[mv][2]);
      o[mv][3] = fmaf(scv.y, fmaf(va[mv][3], fhi, zsum[1] - ohi * psum[1]), o[mv][3]);
    }
  };

  // FP16 page block: K [n][D], V [n][D] fp16 in global memory, natural token order.
  auto process_fp16 = [&](const __half* kp, const __half* vp, int ntok, int tok_base) {
    float s[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) s[mt][0] = s[mt][1] = s[mt][2] = s[mt][3] = 0.f;
    auto kload = [&](int t, int d) -> uint32_t {
      if (t >= ntok) return 0u;
      return *reinterpret_cast<const uint32_t*>(kp + static_cast<int64_t>(t) * D + d);
    };
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      const float2 q0 = QR(ks, 0), q1 = QR(ks, 1);
      const uint32_t b0 = PackHalf2(q0.x, q0.y);
      const uint32_t b1 = PackHalf2(q1.x, q1.y);
      const float2 f0 = UnpackHalf2(b0), f1 = UnpackHalf2(b1);
      const uint32_t l0 = PackHalf2(q0.x - f0.x, q0.y - f0.y);
      const uint32_t l1 = PackHalf2(q1.x - f1.x, q1.y - f1.y);
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int t = 16 * mt + g, d = 16 * ks + 2 * tig;
        const uint32_t a0 = kload(t, d), a1 = kload(t + 8, d), a2 = kload(t, d + 8),
                       a3 = kload(t + 8, d + 8);
        Mma(s[mt], a0, a1, a2, a3, b0, b1);
        Mma(s[mt], a0, a1, a2, a3, l0, l1);
      }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      const int t = 16 * mt + g, pos = tok_base + t;
      s[mt][0] = (t >= ntok || pos >= lim0) ? -INFINITY : s[mt][0] * a.scale_log2;
      s[mt][1] = (t >= ntok || pos >= lim1) ? -INFINITY : s[mt][1] * a.scale_log2;
      s[mt][2] = (t + 8 >= ntok || pos + 8 >= lim0) ? -INFINITY : s[mt][2] * a.scale_log2;
      s[mt][3] = (t + 8 >= ntok || pos + 8 >= lim1) ? -INFINITY : s[mt][3] * a.scale_log2;
    }
    softmax_update(s);
    uint32_t blo[MT], bhi[MT];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      blo[mt] = MovTrans(PackHalf2(s[mt][0], s[mt][1]));
      bhi[mt] = MovTrans(PackHalf2(s[mt][2], s[mt][3]));
    }
    auto vload = [&](int t, int d) -> uint32_t {
      if (t >= ntok) return 0u;
      return *reinterpret_cast<const uint32_t*>(vp + static_cast<int64_t>(t) * D + d);
    };
#pragma unroll
    for (int mv = 0; mv < MV; ++mv) {
      const int pi = mv % S::kNpc;
      const int ch_lo = S::kChPerChunk * (mv / S::kNpc) + (S::kChPerChunk / 8) * g + 2 * pi;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int t = 16 * mt + 2 * tig;
        const uint32_t x0 = vload(t, ch_lo), x1 = vload(t + 1, ch_lo);
        const uint32_t x8 = vload(t + 8, ch_lo), x9 = vload(t + 9, ch_lo);
        // a0: (ch_lo; t, t+1), a1: (ch_lo+1; t, t+1), a2/a3: tokens t+8, t+9.
        const uint32_t a0 = __byte_perm(x0, x1, 0x5410), a1 = __byte_perm(x0, x1, 0x7632);
        const uint32_t a2 = __byte_perm(x8, x9, 0x5410), a3 = __byte_perm(x8, x9, 0x7632);
        Mma(o[mv], a0, a1, a2, a3, blo[mt], bhi[mt]);
      }
    }
  };

  // Pipeline: tile k of this warp is block blk_begin + warp + k*kWarps.
  int j = blk_begin + warp;
  issue(j, 0);
  for (int k = 0; j < blk_end; ++k, j += kWarps) {
    issue(j + kWarps, (k + 1) & 1);
    CpAsyncWait1();
    __syncwarp();
    const int32_t e = bt[j];
    const int ntok = min(G, seq_len - j * G);
    if (e >= 0) {
      process_compressed(stage_base + (k & 1) * S::kStageBytes, ntok, j * G);
    } else {
      const uint8_t* page = a.fp16_pages + static_cast<int64_t>(-e - 1) * a.fp16_page_stride;
      const __half* kp = reinterpret_cast<const __half*>(page) +
                         static_cast<int64_t>(h) * 2 * ntok * D;
      process_fp16(kp, kp + static_cast<int64_t>(ntok) * D, ntok, j * G);
    }
    __syncwarp();
  }
  CpAsyncWait0();

  // ---- merge the warps of this CTA ----
#pragma unroll
  for (int e = 0; e < 2; ++e) {
    l_run[e] += __shfl_xor_sync(0xffffffffu, l_run[e], 4);
    l_run[e] += __shfl_xor_sync(0xffffffffu, l_run[e], 8);
    l_run[e] += __shfl_xor_sync(0xffffffffu, l_run[e], 16);
  }
  __syncthreads();  // stage buffers are free now
  float* ms = reinterpret_cast<float*>(smem);    // [kWarps][8]
  float* ls = ms + kWarps * 8;                   // [kWarps][8]
  float* os = ls + kWarps * 8;                   // [kWarps][8][D]
  if (g == 0) {
    ms[warp * 8 + 2 * tig] = m_run[0];
    ms[warp * 8 + 2 * tig + 1] = m_run[1];
    ls[warp * 8 + 2 * tig] = l_run[0];
    ls[warp * 8 + 2 * tig + 1] = l_run[1];
  }
#pragma unroll
  for (int mv = 0; mv < MV; ++mv) {
    const int pi = mv % S::kNpc;
    const int ch = S::kChPerChunk * (mv / S::kNpc) + (S::kChPerChunk / 8) * g + 2 * pi;
    float* o0 = os + (warp * 8 + 2 * tig) * D;
    float* o1 = os + (warp * 8 + 2 * tig + 1) * D;
    o0[ch] = o[mv][0];
    o1[ch] = o[mv][1];
    o0[ch + 1] = o[mv][2];
    o1[ch + 1] = o[mv][3];
  }
  __syncthreads();
  // Combined, normalized (rotated) output per column into q_s; lse (log2) per column.
  float* res = q_s;  // [8][D]
  float* col_lse = os + kWarps * 8 * D;  // [8] (past the per-warp outputs)
  for (int idx = tid; idx < 8 * D; idx += kWarps * 32) {
    const int n = idx / D, d = idx % D;
    float mx = -INFINITY;
    for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, ms[w * 8 + n]);
    float L = 0.f, acc = 0.f;
    if (mx != -INFINITY) {
      for (int w = 0; w < kWarps; ++w) {
        const float wt = exp2f(ms[w * 8 + n] - mx);
        L += wt * ls[w * 8 + n];
        acc += wt * os[(w * 8 + n) * D + d];
      }
    }
    res[idx] = L > 0.f ? acc / L : 0.f;
    if (d == 0) col_lse[n] = L > 0.f ? mx + log2f(L) : -INFINITY;
  }
  __syncthreads();
  if (a.num_splits > 1) {
    for (int idx = tid; idx < 8 * D; idx += kWarps * 32) {
      const int n = idx / D, d = idx % D;
      int lim;
      const int row = col_row(n, lim);
      if (row < 0) continue;
      const int64_t grow = static_cast<int64_t>(b) * rows_per_req + row;
      a.ws_o[(grow * a.num_splits + split) * D + d] = res[idx];
      if (d == 0) a.ws_lse[grow * a.num_splits + split] = col_lse[n];
    }
    return;
  }
  // Single split: un-rotate and write.
  {
    const float sc = static_cast<float>(1.0 / sqrt(static_cast<double>(D)));
    for (int hh = 1; hh < D; hh <<= 1) {
      for (int i = tid; i < 8 * D / 2; i += kWarps * 32) {
        const int n = i / (D / 2), k = i % (D / 2);
        const int lo = n * D + (k / hh) * 2 * hh + (k % hh);
        const float x0 = res[lo], x1 = res[lo + hh];
        res[lo] = x0 + x1;
        res[lo + hh] = x0 - x1;
      }
      __syncthreads();
    }
    for (int idx = tid; idx < 8 * D; idx += kWarps * 32) {
      const int n = idx / D, d = idx % D;
      int lim;
      const int row = col_row(n, lim);
      if (row < 0) continue;
      const int64_t grow = static_cast<int64_t>(b) * rows_per_req + row;
      internal::StoreFromFloat(a.out, grow * D + d, res[idx] * sc, a.q_dtype);
      if (d == 0 && a.lse != nullptr) a.lse[grow] = col_lse[n] * kLn2;
    }
  }
}

// Split merge: one CTA of D threads per output row.
template <int D>
__global__ void __launch_bounds__(D) MergeKernel(const AttnArgs a) {
  __shared__ float x[D];
  const int64_t row = blockIdx.x;
  const int d = threadIdx.x, S = a.num_splits;
  const float* lse = a.ws_lse + row * S;
  float mx = -INFINITY;
  for (int s = 0; s < S; ++s) mx = fmaxf(mx, lse[s]);
  float total = 0.f, acc = 0.f;
  if (mx != -INFINITY) {
    for (int s = 0; s < S; ++s) {
      const float wt = exp2f(lse[s] - mx);
      total += wt;
      acc += wt * a.ws_o[(row * S + s) * D + d];
    }
  }
  x[d] = total > 0.f ? acc / total : 0.f;
  __syncthreads();
  for (int hh = 1; hh < D; hh <<= 1) {
    if (d < D / 2) {
      const int lo = (d / hh) * 2 * hh + (d % hh);
      const float x0 = x[lo], x1 = x[lo + hh];
      x[lo] = x0 + x1;
      x[lo + hh] = x0 - x1;
    }
    __syncthreads();
  }
  const float sc = static_cast<float>(1.0 / sqrt(static_cast<double>(D)));
  internal::StoreFromFloat(a.out, row * D + d, x[d] * sc, a.q_dtype);
  if (d == 0 && a.lse != nullptr) {
    a.lse[row] = total > 0.f ? (mx + log2f(total)) * kLn2 : -INFINITY;
  }
}

int SmCount() {
  static int counts[64] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 132;
  if (counts[dev] == 0) {
    int n = 0;
    if (cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || n <= 0) {
      n = 132;
    }
    counts[dev] = n;  // benign race: every writer stores the same value
  }
  return counts[dev];
}

struct SplitPlan {
  int num_splits;
  int blocks_per_split;
};

SplitPlan PlanSplits(int batch, int num_kv_heads, int col_groups, int max_seq_len, int group_size,
                     int forced) {
  const int nblk = std::max(1, (max_seq_len + group_size - 1) / group_size);
  const int64_t base = static_cast<int64_t>(batch) * num_kv_heads * col_groups;
  const int64_t slots = static_cast<int64_t>(SmCount()) * kCtasPerSm;
  int s = 1;
  if (forced > 0) {
    s = forced;
  } else if (base < slots) {
    s = static_cast<int>(std::min<int64_t>(slots / base, (nblk + kWarps - 1) / kWarps));
  }
  s = std::max(1, std::min(s, nblk));
  const int bps = (nblk + s - 1) / s;
  return {(nblk + bps - 1) / bps, bps};
}

template <int D, int G, int VB>
cudaError_t LaunchDecode(const AttnArgs& a, cudaStream_t stream) {
  using S = AttnShape<D, G, VB>;
  cudaError_t e = cudaFuncSetAttribute(DecodeKernel<D, G, VB>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(S::kSmemBytes));
  if (e != cudaSuccess) return e;
  const dim3 grid(a.num_splits, a.num_kv_heads * a.col_groups, a.batch);
  DecodeKernel<D, G, VB><<<grid, kWarps * 32, S::kSmemBytes, stream>>>(a);
  e = cudaGetLastError();
  if (e != cudaSuccess || a.num_splits == 1) return e;
  const int64_t rows = static_cast<int64_t>(a.batch) * a.num_q_heads * a.num_query_tokens;
  MergeKernel<D><<<static_cast<unsigned>(rows), D, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

size_t DecodeAttentionWorkspaceBytes(int batch, int num_q_heads, int num_query_tokens,
                                     int head_dim, int max_seq_len, Preset preset) {
  if (batch <= 0 || num_q_heads <= 0 || num_query_tokens <= 0 || !IsSupportedHeadDim(head_dim)) {
    return 0;
  }
  const int g = GetPresetInfo(preset).group_size;
  const int nblk = std::max(1, (max_seq_len + g - 1) / g);
  // Upper bound of any plan: the automatic plan is at most slots / (batch·Hk) splits with
  // Hk >= 1, and forced plans are capped at 8 by the launcher's contract below.
  const int64_t slots = static_cast<int64_t>(SmCount()) * kCtasPerSm;
  const int64_t s_cap = std::min<int64_t>(nblk, std::max<int64_t>(8, slots / batch));
  const int64_t rows = static_cast<int64_t>(batch) * num_q_heads * num_query_tokens;
  return static_cast<size_t>(rows * s_cap * (head_dim + 1) * sizeof(float)) + 256;
}

cudaError_t DecodeAttention(const DecodeAttentionParams& p, cudaStream_t stream) {
  if (!IsValidPreset(static_cast<uint8_t>(p.preset)) || p.batch < 0 || p.num_kv_heads <= 0 ||
      p.num_q_heads <= 0 || p.num_q_heads % p.num_kv_heads != 0 ||
      p.num_q_heads / p.num_kv_heads > 8 || p.num_query_tokens < 1 || p.num_query_tokens > 8 ||
      p.max_seq_len < 0 || p.q == nullptr || p.out == nullptr || p.seq_lens == nullptr ||
      p.block_tables == nullptr || p.force_num_splits < 0 || p.force_num_splits > 8 ||
      (p.tile_page_stride % 16) != 0 || (reinterpret_cast<uintptr_t>(p.tile_pages) & 15) != 0 ||
      (reinterpret_cast<uintptr_t>(p.fp16_pages) & 3) != 0) {
    return cudaErrorInvalidValue;
  }
  if (p.head_dim != 128) return cudaErrorNotSupported;
  if (p.batch == 0) return cudaSuccess;
  AttnArgs a{};
  a.num_q_heads = p.num_q_heads;
  a.num_kv_heads = p.num_kv_heads;
  a.group = p.num_q_heads / p.num_kv_heads;
  a.num_query_tokens = p.num_query_tokens;
  a.num_cols = a.group * p.num_query_tokens;
  a.col_groups = (a.num_cols + 7) / 8;
  a.batch = p.batch;
  const int g = GetPresetInfo(p.preset).group_size;
  const SplitPlan plan = PlanSplits(p.batch, p.num_kv_heads, a.col_groups, p.max_seq_len, g,
                                    p.force_num_splits);
  a.num_splits = plan.num_splits;
  a.blocks_per_split = plan.blocks_per_split;
  a.scale_log2 = p.softmax_scale * kLog2e;
  a.q_dtype = p.q_dtype;
  a.q = p.q;
  a.out = p.out;
  a.lse = p.lse;
  a.tile_pages = p.tile_pages;
  a.tile_page_stride = p.tile_page_stride;
  a.fp16_pages = p.fp16_pages;
  a.fp16_page_stride = p.fp16_page_stride;
  a.block_tables = p.block_tables;
  a.block_table_stride = p.block_table_stride;
  a.seq_lens = p.seq_lens;
  if (a.num_splits > 1) {
    const int64_t rows = static_cast<int64_t>(p.batch) * p.num_q_heads * p.num_query_tokens;
    const size_t need = static_cast<size_t>(rows * a.num_splits * (p.head_dim + 1) * sizeof(float));
    if (p.workspace == nullptr || p.workspace_bytes < need ||
        (reinterpret_cast<uintptr_t>(p.workspace) & 15) != 0) {
      return cudaErrorInvalidValue;
    }
    a.ws_o = static_cast<float*>(p.workspace);
    a.ws_lse = a.ws_o + rows * a.num_splits * p.head_dim;
  }
  switch (p.preset) {
    case Preset::kK4V2G128: return LaunchDecode<128, 128, 2>(a, stream);
    case Preset::kK4V4G128: return LaunchDecode<128, 128, 4>(a, stream);
    case Preset::kK4V2G64: return LaunchDecode<128, 64, 2>(a, stream);
    case Preset::kK4V4G64: return LaunchDecode<128, 64, 4>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace kvtier::kernels::cuda
