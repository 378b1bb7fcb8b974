// Fused decode attention over a paged cache of KVarN tile records and FP16 pages
// (DESIGN §3.4, KERNELS.md). Notes and measurements: docs/kernels-notes.md.
//
// Grid: (split, kv head × column group, request); 4 warps per CTA, 3 CTAs per SM. Each
// warp streams whole tiles of its split (round robin), keeps its own online-softmax
// state and merges with the other warps at the end; splits merge in a second kernel
// with log-sum-exp weights (head_dim 64 and 256: GenericDecodeKernel, CUDA cores, same
// grid and merge). Columns are (query token, query head of the GQA group), 8
// per CTA. Per tile and warp:
//   scores^T [tokens × 8 cols] = codes_K^T [tokens × D] · q'^T [D × 8]   (mma m16n8k16)
//   out^T    [D × 8 cols]      = codes_V^T [D × tokens] · p'^T [tokens × 8]
// with q' = q_rot·s_col_K split into fp16 hi + lo parts, so scores are fp32-accurate:
// two MMAs per code fragment, or, when a CTA has at most 4 columns (the packed kernel,
// P = true), one MMA with head j's hi part in column 2j and its lo part in 2j+1, each lane
// then owning one head. p' = p·s_row_V in fp16 (the zero-point term uses the same rounded
// weights). Codes become fp16 operands by a shift and one LOP3 (AND-OR with the 0x6400
// exponent): every field sits at mantissa bits 4-7 (value 1024 + f·code, f = 16 or 64),
// so the 1024 offset is at most 43× the code term and survives the tensor core's fp32
// accumulation; offsets and zero points come back as per-column corrections, f as
// per-row factors. Each warp owns one record buffer: the K half of the next tile streams
// in (16-byte cp.async) while the V half of this one is consumed, and vice versa;
// ldmatrix reads are conflict-free through an XOR swizzle applied by the copies.
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
constexpr int kStages = 1;  // one record buffer per warp, K and V halves pipelined
constexpr int kCtasPerSm = 3;
// The per-tile k-step and V loops are fully unrolled (v6's fully unrolled loops were
// instruction-fetch bound; with v13's smaller bodies full unrolling measured 3% faster
// than unrolling by 2 or 4, docs/kernels-notes.md), so the p' fragments stay in registers.
constexpr uint32_t kMagic = 0x64006400u;
constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;

struct AttnArgs {
  int num_q_heads, num_kv_heads, group, num_query_tokens, num_cols, col_groups;
  int batch, num_splits, blocks_per_split;
  bool packed;     // <= 4 columns: column 2j holds head j's q' hi part, 2j+1 its lo part
  uint32_t magic;  // kMagic, passed at run time so that it stays in a register (one LOP3)
  bool q_vec;      // q is 16-byte aligned: 16-byte loads
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
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}
// (x & M) | magic in one LOP3 (the compiler splits the constant-only form into two).
template <uint32_t M>
__device__ __forceinline__ uint32_t AndOr(uint32_t x, uint32_t magic) {
  uint32_t d;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(d) : "r"(x), "n"(M), "r"(magic));
  return d;
}
// 2^x, one MUFU op (exp2f adds range fix-ups); 2^-inf = 0.
__device__ __forceinline__ float Ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
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
  static constexpr int kKs = D / 16;          // k-steps of the score mma
  static constexpr int kMt = G / 16;          // token m-tiles (= k-steps of the V mma)
  static constexpr int kMv = D / 16;          // channel m-tiles of the V mma
  static constexpr int kKRowChunks = G / 32;  // 16-byte chunks per K code row
  static constexpr int kVRowChunks = D * VB / 128;
  static constexpr int kChPerChunk = 128 / VB;   // channels per V chunk
  static constexpr int kNpc = kChPerChunk / 16;  // V m-tiles per chunk
  static constexpr int kVOffChunks = static_cast<int>(kL.v_codes_offset / 16);
  static constexpr int kKChunks = D * G / 32;
  static constexpr int kVChunks = G * D * VB / 128;
  static constexpr int kQPitch = D + 8;  // padded q_rot rows: conflict-free float2 reads
  static constexpr size_t kQBytes = 8 * kQPitch * sizeof(float);
  // Per-warp scratch for the packed kernel's q' B fragments of one tile's K half
  // ([kKs][32 lanes][2] u32).
  static constexpr size_t kScratchBytes = kWarps * kKs * 32 * 8;
  // Per-warp (zp_V / s_row_V, zp_V where s_row_V = 0) per token of the current tile.
  static constexpr size_t kRzBytes = kWarps * G * sizeof(float2);
  static constexpr size_t kSmemBytes =
      kWarps * kStages * kStageBytes + kQBytes + kScratchBytes + kRzBytes;
  static_assert(kRecord % 16 == 0, "records stream in 16-byte chunks");
  static_assert(kKChunks % 32 == 0 && kVChunks % 32 == 0, "code regions are whole warps of chunks");
  static_assert(kL.v_codes_offset % 16 == 0, "V codes start on a chunk");
  static_assert(kVRowChunks % 2 == 0 && kKRowChunks % 2 == 0, "x4 ldmatrix pairs");
  static_assert(kWarps * (8 * D + 16) * sizeof(float) <= kWarps * kStages * kStageBytes,
                "merge scratch fits in the stage buffers");
};

// cp.async of the chunks [B, E) of a record, unswizzled; src = record + 16·lane.
template <int B, int E>
__device__ __forceinline__ void CopyPlain(uint32_t buf_s, const uint8_t* src, int lane) {
  constexpr int kN = E - B;
#pragma unroll
  for (int i = 0; i < (kN + 31) / 32; ++i) {
    if (32 * (i + 1) <= kN || lane + 32 * i < kN) {
      CpAsync16(buf_s + (B + lane) * 16 + 512 * i, src + B * 16 + 512 * i);
    }
  }
}

// The CTA's request, kv head and 8 columns (grid: split, kv head × column group, request).
// Column n -> (query token i, head j of the group): its row of q/out and causal limit.
struct CtaColumns {
  int h, col0, b, seq_len, T, rows_per_req;
  __device__ explicit CtaColumns(const AttnArgs& a)
      : h(blockIdx.y / a.col_groups),
        col0((blockIdx.y % a.col_groups) * 8),
        b(blockIdx.z),
        seq_len(a.seq_lens[blockIdx.z]),
        T(a.num_query_tokens),
        rows_per_req(a.num_q_heads * a.num_query_tokens) {}
  // Row of column n (-1 if the CTA has no such column; limit 0), and its limit: the
  // number of visible tokens (causal within the query tokens).
  __device__ int Row(const AttnArgs& a, int n, int& limit) const {
    const int c = col0 + n;
    if (n >= 8 || c >= a.num_cols) {
      limit = 0;
      return -1;
    }
    const int i = c / a.group, j = c % a.group;
    limit = seq_len - T + 1 + i;
    return i * a.num_q_heads + h * a.group + j;
  }
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

// P (packed, <= 4 columns): column 2j of the score MMA is head j's q' hi part and column
// 2j+1 its lo part, so one MMA per code fragment gives fp32-accurate scores and each lane
// adds its own two columns: lane (g, tig) then owns head tig alone (NC = 1 column per
// lane, half the softmax and output work of the unpacked layout). The V MMA's B operand
// has p' of head j in column 2j and zeros in the odd columns.
template <int D, int G, int VB, bool P>
__global__ void __launch_bounds__(kWarps * 32, kCtasPerSm) DecodeKernel(const AttnArgs a) {
  using S = AttnShape<D, G, VB>;
  constexpr int KS = S::kKs, MT = S::kMt, MV = S::kMv;
  constexpr int NC = P ? 1 : 2;  // score columns per lane
  const uint32_t magic = a.magic;
  extern __shared__ __align__(128) uint8_t smem[];
  float* q_s = reinterpret_cast<float*>(smem + kWarps * kStages * S::kStageBytes);  // [8][D]
  uint32_t* const pscr =
      reinterpret_cast<uint32_t*>(smem + kWarps * kStages * S::kStageBytes + S::kQBytes +
                                  (threadIdx.x / 32) * (S::kScratchBytes / kWarps));
  float2* const rz = reinterpret_cast<float2*>(smem + kWarps * kStages * S::kStageBytes +
                                               S::kQBytes + S::kScratchBytes) +
                     (threadIdx.x / 32) * G;

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int g = lane / 4, tig = lane % 4;
  const int split = blockIdx.x;
  const CtaColumns cta(a);
  const int h = cta.h, b = cta.b, seq_len = cta.seq_len, T = cta.T;
  const int rows_per_req = cta.rows_per_req;

  // Column n of this CTA -> (query token i, head j of the group); row of q/out.
  auto col_row = [&](int n, int& limit) -> int { return cta.Row(a, n, limit); };

  // ---- q: each thread loads 8 channels of one of the CTA's 8 columns and rotates them
  // (FWHT: 3 butterfly stages in registers, 4 across the column's 16 threads) ----
  static_assert(D == 128 && kWarps * 32 == 8 * 16, "8 columns x 16 threads x 8 channels");
  {
    const int n = tid >> 4, d0 = (tid & 15) * 8;
    int lim;
    const int row = col_row(n, lim);
    float x[8];
    if (row < 0) {
#pragma unroll
      for (int k = 0; k < 8; ++k) x[k] = 0.f;
    } else {
      const int64_t base = (static_cast<int64_t>(b) * rows_per_req + row) * D + d0;
      if (a.q_vec) {
        internal::Unpack8(*reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(a.q) + base),
                          a.q_dtype, x);
      } else {
#pragma unroll
        for (int k = 0; k < 8; ++k) x[k] = internal::LoadAsFloat(a.q, base + k, a.q_dtype);
      }
    }
    internal::HadamardLocal<8>(x);
#pragma unroll
    for (int m = 1; m < 16; m <<= 1) {
      const bool upper = (tid & m) != 0;
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        const float other = __shfl_xor_sync(0xffffffffu, x[k], m);
        x[k] = upper ? other - x[k] : x[k] + other;
      }
    }
    // The softmax scale (log2 domain) rides on q_rot: scores come out scaled.
    const float sc = static_cast<float>(1.0 / sqrt(static_cast<double>(D))) * a.scale_log2;
    float4* dst = reinterpret_cast<float4*>(q_s + n * S::kQPitch + d0);
    dst[0] = make_float4(x[0] * sc, x[1] * sc, x[2] * sc, x[3] * sc);
    dst[1] = make_float4(x[4] * sc, x[5] * sc, x[6] * sc, x[7] * sc);
  }
  __syncthreads();
  // q_rot[col g][16ks + 8hh + 2tig + {0,1}], read from shared memory per tile (keeps 32
  // registers free).
  const float* q_me = q_s + (P ? (g >> 1) : g) * S::kQPitch + 2 * tig;
  auto QR = [&](int ks, int hh) -> float2 {
    return *reinterpret_cast<const float2*>(q_me + 16 * ks + 8 * hh);
  };
  // Causal limits of this thread's score columns (P: head tig; else 2tig, 2tig+1).
  int lim[NC];
#pragma unroll
  for (int e = 0; e < NC; ++e) col_row(P ? tig : 2 * tig + e, lim[e]);
  const int lim_min = seq_len - T + 1;  // below this every column sees every token

  // ---- this warp's tiles ----
  const int nblk = (seq_len + G - 1) / G;
  const int blk_begin = split * a.blocks_per_split;
  const int blk_end = min(nblk, blk_begin + a.blocks_per_split);
  uint8_t* stage_base = smem + warp * kStages * S::kStageBytes;
  const int32_t* bt = a.block_tables + static_cast<int64_t>(b) * a.block_table_stride;

  // The K half of a record ([0, v_codes_offset): K codes, s_col_K, zp_K, s_row_K) and
  // its V half are copied in separate commit groups, so the next tile's K half streams
  // in while this tile's V half is consumed, and vice versa.
  uint8_t* const buf = stage_base;
  const uint32_t buf_s = SmemAddr(buf);
  // Block-table entry of block j (-1 past this split: nothing to copy) and its record.
  auto entry_of = [&](int j) -> int32_t { return j < blk_end ? bt[j] : -1; };
  auto record_of = [&](int32_t e) -> const uint8_t* {
    if (e < 0) return nullptr;
    return a.tile_pages + static_cast<int64_t>(e) * a.tile_page_stride +
           static_cast<int64_t>(h) * S::kRecord;
  };
  // Chunk q = lane + 32i of a region: the source is this lane's base + 512i (immediate
  // offsets); the code regions' swizzle terms depend on the lane and on i mod a period.
  constexpr int kVShift = (S::kVRowChunks == 2 ? 1 : 2) + 2;
  constexpr int kVPeriod = 8 / (32 >> kVShift);
  const int k_dst = (lane ^ ((lane >> 3) & (S::kKRowChunks - 1))) * 16;
  int v_dst[kVPeriod];
#pragma unroll
  for (int r = 0; r < kVPeriod; ++r) {
    v_dst[r] = (S::kVOffChunks + (lane ^ (((lane >> kVShift) + r * (32 >> kVShift)) & 7))) * 16;
  }
  // ldmatrix addresses (bytes from the K codes / V codes) of this lane at ks = 0 / c = 0:
  // the swizzles commute with whole k-steps (16 K rows) and token groups (32 V rows).
  int k_ld[S::kKRowChunks / 2], v_ld[2][S::kVRowChunks / 2];
  {
    const int jj = lane >> 3, rho = lane & 7;
#pragma unroll
    for (int cp = 0; cp < S::kKRowChunks / 2; ++cp) {
      const int d = 8 * (jj & 1) + rho, c = 2 * cp + (jj >> 1);
      k_ld[cp] = SwizzleK<S::kKRowChunks>(d * S::kKRowChunks + c) * 16;
    }
#pragma unroll
    for (int ip = 0; ip < 2; ++ip) {
#pragma unroll
      for (int cp = 0; cp < S::kVRowChunks / 2; ++cp) {
        const int t = 8 * (rho >> 1) + 4 * (rho & 1) + 2 * ip + (jj & 1);
        v_ld[ip][cp] = SwizzleV<S::kVRowChunks>(t * S::kVRowChunks + 2 * cp + (jj >> 1)) * 16;
      }
    }
  }
  auto issue_k = [&](const uint8_t* rec) {
    if (rec != nullptr) {
      const uint8_t* src = rec + lane * 16;
#pragma unroll
      for (int i = 0; i < S::kKChunks / 32; ++i) CpAsync16(buf_s + k_dst + 512 * i, src + 512 * i);
      CopyPlain<S::kKChunks, S::kVOffChunks>(buf_s, src, lane);
    }
    CpAsyncCommit();
  };
  auto issue_v = [&](const uint8_t* rec) {
    if (rec != nullptr) {
      const uint8_t* src = rec + lane * 16;
#pragma unroll
      for (int i = 0; i < S::kVChunks / 32; ++i) {
        CpAsync16(buf_s + v_dst[i % kVPeriod] + 512 * i, src + (S::kVOffChunks + 32 * i) * 16);
      }
      CopyPlain<S::kVOffChunks + S::kVChunks, S::kRecord / 16>(buf_s, src, lane);
    }
    CpAsyncCommit();
  };

  // Scores, p and outputs are indexed [r * NC + e]: r = 0 for row g (channel ch) and 1 for
  // row g + 8 (channel ch + 1), e = this lane's column.
  float m_run[NC], l_run[NC];  // running max (log2 domain) and this thread's partial sums
#pragma unroll
  for (int e = 0; e < NC; ++e) {
    m_run[e] = -INFINITY;
    l_run[e] = 0.f;
  }
  float o[MV][2 * NC];
#pragma unroll
  for (int i = 0; i < MV; ++i) {
#pragma unroll
    for (int k = 0; k < 2 * NC; ++k) o[i][k] = 0.f;
  }

  // P: adds each lane's hi and lo columns, s[mt][r] = s[mt][2r] + s[mt][2r + 1].
  auto combine_packed = [&](float(&s)[MT][4]) {
    if constexpr (P) {
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        s[mt][0] += s[mt][1];
        s[mt][1] = s[mt][2] + s[mt][3];
      }
    }
  };
  // Online softmax over one tile's scores s[MT][r * NC + e]; replaces s by p.
  auto softmax_update = [&](float(&s)[MT][4]) {
    float tmax[NC];
#pragma unroll
    for (int e = 0; e < NC; ++e) {
      tmax[e] = -INFINITY;
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) tmax[e] = fmaxf(tmax[e], fmaxf(s[mt][e], s[mt][NC + e]));
      tmax[e] = fmaxf(tmax[e], __shfl_xor_sync(0xffffffffu, tmax[e], 4));
      tmax[e] = fmaxf(tmax[e], __shfl_xor_sync(0xffffffffu, tmax[e], 8));
      tmax[e] = fmaxf(tmax[e], __shfl_xor_sync(0xffffffffu, tmax[e], 16));
    }
    float alpha[NC], mnew[NC];
    bool grow = false;
#pragma unroll
    for (int e = 0; e < NC; ++e) {
      grow |= tmax[e] > m_run[e];
      mnew[e] = fmaxf(m_run[e], tmax[e]);
      // A column with no visible token yet keeps m = -inf; use 0 as base to avoid NaN.
      const float base = mnew[e] == -INFINITY ? 0.f : mnew[e];
      alpha[e] = Ex2(m_run[e] - base);
      m_run[e] = mnew[e];
      mnew[e] = base;
    }
    // Rescale only when some running max grew (alpha = 1 otherwise; a column still at
    // -inf has o = l = 0).
    if (__any_sync(0xffffffffu, grow)) {
#pragma unroll
      for (int e = 0; e < NC; ++e) l_run[e] *= alpha[e];
#pragma unroll
      for (int i = 0; i < MV; ++i) {
#pragma unroll
        for (int k = 0; k < 2 * NC; ++k) o[i][k] *= alpha[k % NC];
      }
    }
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int k = 0; k < 2 * NC; ++k) {
        const float p = Ex2(s[mt][k] - mnew[k % NC]);
        s[mt][k] = p;
        l_run[k % NC] += p;
      }
    }
  };

  // out += s_col_V[d]·(vacc/f + zc) for this thread's channels (compressed tiles), or
  // out += vacc (FP16 tiles: scv == nullptr).
  // Phase A (K half): scores and the online softmax; s becomes p.
  auto phase_a = [&](const uint8_t* rec, int ntok, int tok_base, float(&s)[MT][4]) {
    const uint32_t rec_s = SmemAddr(rec);
    constexpr TileLayout L = S::kL;
    // Scores. Per k-step: q' = q_rot·s_col_K as an fp16 hi/lo pair (two MMAs, so the
    // scores are fp32-accurate), bias += Σ q_rot·zp_K, qsum += Σ q'. Code fields are moved
    // to bits 4-7 of each half (f = 16 for every row): the 1024 offset is then only 8.5×
    // the code term, so the tensor core's accumulation keeps the code's bits.
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) s[mt][0] = s[mt][1] = s[mt][2] = s[mt][3] = 0.f;
    float bias = 0.f, qsum = 0.f;
    if constexpr (P) {
      // q' hi/lo B fragments of every k-step into the warp's q' scratch before the K
      // loop, each (head, channel pair) once: lane (hd = lane >> 3, hh, tg) computes head
      // hd's pair d = 16ks + 8hh + 2tg for the hi column's lane 8hd + tg and the lo
      // column's lane 8hd + 4 + tg. bias and qsum: partial sums of head hd.
      const int hd = lane >> 3, hh = (lane >> 2) & 1, tg = lane & 3;
      const float* qh = q_s + hd * S::kQPitch + 8 * hh + 2 * tg;
      const uint8_t* scp = rec + L.s_col_k_offset + 2 * (8 * hh + 2 * tg);
      const uint8_t* zpp = rec + L.zp_k_offset + 2 * (8 * hh + 2 * tg);
      uint32_t* wr = pscr + (8 * hd + tg) * 2 + hh;
#pragma unroll
      for (int ks = 0; ks < KS; ++ks) {
        const float2 sc = LoadHalf2(scp + 32 * ks);
        const float2 zp = LoadHalf2(zpp + 32 * ks);
        const float2 qv = *reinterpret_cast<const float2*>(qh + 16 * ks);
        const float q0 = qv.x * sc.x, q1 = qv.y * sc.y;
        const uint32_t hi = PackHalf2(q0, q1);
        const float2 hf = UnpackHalf2(hi);
        wr[ks * 64] = hi;
        wr[ks * 64 + 8] = PackHalf2(q0 - hf.x, q1 - hf.y);
        qsum += q0 + q1;  // hi + lo equals q' to 2^-22
        bias = fmaf(qv.x, zp.x, bias);
        bias = fmaf(qv.y, zp.y, bias);
      }
      __syncwarp();
    }
#pragma unroll
    for (int ks = 0; ks < KS; ++ks) {
      uint32_t bqh[2], bql[2];
      if constexpr (P) {
        const uint2 bq = *reinterpret_cast<const uint2*>(&pscr[(ks * 32 + lane) * 2]);
        bqh[0] = bq.x;
        bqh[1] = bq.y;
      }
#pragma unroll
      for (int hh = 0; hh < 2 && !P; ++hh) {
        const int d = 16 * ks + 8 * hh + 2 * tig;
        const float2 sc = LoadHalf2(rec + L.s_col_k_offset + 2 * d);
        const float2 zp = LoadHalf2(rec + L.zp_k_offset + 2 * d);
        const float2 qv = QR(ks, hh);
        const float q0 = qv.x * sc.x, q1 = qv.y * sc.y;
        const uint32_t hi = PackHalf2(q0, q1);
        const float2 hf = UnpackHalf2(hi);
        const uint32_t lo = PackHalf2(q0 - hf.x, q1 - hf.y);
        bqh[hh] = hi;
        bql[hh] = lo;
        qsum += q0 + q1;  // hi + lo equals q' to 2^-22
        bias = fmaf(qv.x, zp.x, bias);
        bias = fmaf(qv.y, zp.y, bias);
      }
#pragma unroll
      for (int cp = 0; cp < S::kKRowChunks / 2; ++cp) {
        uint32_t y[4];
        LdMatrixX4T(rec_s + ks * (16 * S::kKRowChunks * 16) + k_ld[cp], y);
#pragma unroll
        for (int cc = 0; cc < 2; ++cc) {
#pragma unroll
          for (int ip = 0; ip < 2; ++ip) {
            // Tokens 4g+2ip (row g) and 4g+2ip+1 (row g+8) of this chunk, at bits 4-7.
            const uint32_t ya = y[2 * cc], yb = y[2 * cc + 1];
            const uint32_t ya0 = ip ? (ya >> 4) : (ya << 4), ya1 = ip ? (ya >> 8) : ya;
            const uint32_t yb0 = ip ? (yb >> 4) : (yb << 4), yb1 = ip ? (yb >> 8) : yb;
            const int mt = 2 * (2 * cp + cc) + ip;
            const uint32_t a0 = AndOr<0x00F000F0u>(ya0, magic);
            const uint32_t a1 = AndOr<0x00F000F0u>(ya1, magic);
            const uint32_t a2 = AndOr<0x00F000F0u>(yb0, magic);
            const uint32_t a3 = AndOr<0x00F000F0u>(yb1, magic);
            Mma(s[mt], a0, a1, a2, a3, bqh[0], bqh[1]);
            if constexpr (!P) Mma(s[mt], a0, a1, a2, a3, bql[0], bql[1]);
          }
        }
      }
    }
    qsum += __shfl_xor_sync(0xffffffffu, qsum, 1);
    qsum += __shfl_xor_sync(0xffffffffu, qsum, 2);
    bias += __shfl_xor_sync(0xffffffffu, bias, 1);
    bias += __shfl_xor_sync(0xffffffffu, bias, 2);
    if constexpr (P) {  // head hd's 8 lanes: 8hd..8hd+7
      qsum += __shfl_xor_sync(0xffffffffu, qsum, 4);
      bias += __shfl_xor_sync(0xffffffffu, bias, 4);
    }
    combine_packed(s);
    // Column n's q' lives in lanes 4n+* (P: head tig in lanes 8tig+*). (1024 + 16c)/16 = 64 + c.
    float c16[NC];
#pragma unroll
    for (int e = 0; e < NC; ++e) {
      const int src = P ? 2 * tig : 2 * tig + e;
      const float qs = __shfl_sync(0xffffffffu, qsum, 4 * src);
      const float bs = __shfl_sync(0xffffffffu, bias, 4 * src);
      c16[e] = bs - 64.f * qs;
    }
    // Scale, bias, mask. Token of (mt = 2c+ip, row g) = 32c + 4g + 2ip, row g+8 = +1.
#pragma unroll
    for (int c = 0; c < G / 32; ++c) {
      const uint2 raw =
          *reinterpret_cast<const uint2*>(rec + L.s_row_k_offset + 2 * (32 * c + 4 * g));
      const float2 r01 = UnpackHalf2(raw.x), r23 = UnpackHalf2(raw.y);
#pragma unroll
      for (int ip = 0; ip < 2; ++ip) {
        const int mt = 2 * c + ip;
        const float sr[2] = {ip ? r23.x : r01.x, ip ? r23.y : r01.y};
#pragma unroll
        for (int k = 0; k < 2 * NC; ++k) {
          s[mt][k] = sr[k / NC] * fmaf(s[mt][k], 1.f / 16.f, c16[k % NC]);
        }
      }
    }
    if (tok_base + G > lim_min || ntok < G) {  // partial or causal tile (rare): mask
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        const int t = 32 * (mt / 2) + 4 * g + 2 * (mt % 2);
#pragma unroll
        for (int k = 0; k < 2 * NC; ++k) {
          const int tk = t + k / NC;
          if (tk >= ntok || tok_base + tk >= lim[k % NC]) s[mt][k] = -INFINITY;
        }
      }
    }
    softmax_update(s);
  };
  // Phase B (V half): p' = p·s_row_V, the V product and the output update.
  auto phase_b = [&](const uint8_t* rec, float(&s)[MT][4]) {
    const uint32_t rec_s = SmemAddr(rec);
    constexpr TileLayout L = S::kL;
    // p' = p·s_row_V (fp16), P' = Σ p' (rounded values), Z = Σ (p'/s_row_V)·zp_V: the
    // zero-point term uses the same rounded weights as the code term, so fp16 rounding
    // of p' perturbs the weights (like fp16 P in flash attention), not the V values.
    // Where s_row_V = 0 the code term vanishes and Z takes p·zp_V. Per token, 4 per lane
    // into the warp's scratch: (r, z0) = (zp_V / s_row_V, 0), or (0, zp_V) if s_row_V = 0.
    if (4 * lane < G) {
      const uint2 rs = *reinterpret_cast<const uint2*>(rec + L.s_row_v_offset + 8 * lane);
      const uint2 rzv = *reinterpret_cast<const uint2*>(rec + L.zp_v_offset + 8 * lane);
      const float2 s01 = UnpackHalf2(rs.x), s23 = UnpackHalf2(rs.y);
      const float2 z01 = UnpackHalf2(rzv.x), z23 = UnpackHalf2(rzv.y);
      const float sv[4] = {s01.x, s01.y, s23.x, s23.y}, zv[4] = {z01.x, z01.y, z23.x, z23.y};
      float w[8];
#pragma unroll
      for (int k = 0; k < 4; ++k) {
        w[2 * k] = sv[k] != 0.f ? __fdividef(zv[k], sv[k]) : 0.f;
        w[2 * k + 1] = sv[k] != 0.f ? 0.f : zv[k];
      }
      float4* dst = reinterpret_cast<float4*>(rz + 4 * lane);
      dst[0] = make_float4(w[0], w[1], w[2], w[3]);
      dst[1] = make_float4(w[4], w[5], w[6], w[7]);
    }
    __syncwarp();
    float psum[NC], zsum[NC];
#pragma unroll
    for (int e = 0; e < NC; ++e) psum[e] = zsum[e] = 0.f;
    uint32_t pf[MT][2];  // p' B fragments of the V loop (fully unrolled: registers)
#pragma unroll
    for (int c = 0; c < G / 32; ++c) {
      const uint2 rs =
          *reinterpret_cast<const uint2*>(rec + L.s_row_v_offset + 2 * (32 * c + 4 * g));
      const float2 s01 = UnpackHalf2(rs.x), s23 = UnpackHalf2(rs.y);
#pragma unroll
      for (int ip = 0; ip < 2; ++ip) {
        const int mt = 2 * c + ip;
        const float svl = ip ? s23.x : s01.x, svh = ip ? s23.y : s01.y;
        // (r, z0) of tokens 32c + 4g + 2ip (row g) and + 1 (row g + 8).
        const float4 w = *reinterpret_cast<const float4*>(rz + 32 * c + 4 * g + 2 * ip);
        // P: p' of head tig in the low half (column 2tig), zero in column 2tig + 1.
        const uint32_t lo = PackHalf2(s[mt][0] * svl, P ? 0.f : s[mt][1] * svl);
        const uint32_t hi = PackHalf2(s[mt][NC] * svh, P ? 0.f : s[mt][3] * svh);
        const float2 lf = UnpackHalf2(lo), hf = UnpackHalf2(hi);
#pragma unroll
        for (int e = 0; e < NC; ++e) {
          const float pl = e ? lf.y : lf.x, ph = e ? hf.y : hf.x;
          psum[e] += pl + ph;
          zsum[e] = fmaf(pl, w.x, zsum[e]);
          zsum[e] = fmaf(s[mt][e], w.y, zsum[e]);
          zsum[e] = fmaf(ph, w.z, zsum[e]);
          zsum[e] = fmaf(s[mt][NC + e], w.w, zsum[e]);
        }
        pf[mt][0] = MovTrans(lo);
        pf[mt][1] = MovTrans(hi);
      }
    }
#pragma unroll
    for (int e = 0; e < NC; ++e) {
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
    for (int c = 0; c < MT / 2; ++c) {
#pragma unroll
      for (int ip = 0; ip < 2; ++ip) {
        const int mt = 2 * c + ip;
        const uint2 bb = make_uint2(pf[mt][0], pf[mt][1]);
#pragma unroll
        for (int cp = 0; cp < S::kVRowChunks / 2; ++cp) {
          uint32_t y[4];
          LdMatrixX4T(v_s + c * (32 * S::kVRowChunks * 16) + v_ld[ip][cp], y);
#pragma unroll
          for (int cc = 0; cc < 2; ++cc) {
            const int chunk = 2 * cp + cc;
            if constexpr (VB == 2) {
              // Field pairs (2pi, 2pi+1) moved to bits 4-7 of each half: f = 16 and 64.
#pragma unroll
              for (int pi = 0; pi < 4; ++pi) {
                const uint32_t y0 = y[2 * cc], y1 = y[2 * cc + 1];
                const uint32_t z0 =
                    pi == 0 ? (y0 << 4) : (pi == 1 ? y0 : (pi == 2 ? (y0 >> 4) : (y0 >> 8)));
                const uint32_t z1 =
                    pi == 0 ? (y1 << 4) : (pi == 1 ? y1 : (pi == 2 ? (y1 >> 4) : (y1 >> 8)));
                const int mv = chunk * S::kNpc + pi;
                Mma(va[mv], AndOr<0x00300030u>(z0, magic), AndOr<0x00C000C0u>(z0, magic),
                    AndOr<0x00300030u>(z1, magic), AndOr<0x00C000C0u>(z1, magic), bb.x, bb.y);
              }
            } else {
              // Nibble pairs (2pi, 2pi+1): row g field at bits 4-7 (f = 16) via a shift, row
              // g+8 field at bits 4-7 (f = 16) of the next shift.
#pragma unroll
              for (int pi = 0; pi < 2; ++pi) {
                const uint32_t y0 = y[2 * cc], y1 = y[2 * cc + 1];
                const uint32_t l0 = pi ? (y0 >> 4) : (y0 << 4), h0 = pi ? (y0 >> 8) : y0;
                const uint32_t l1 = pi ? (y1 >> 4) : (y1 << 4), h1 = pi ? (y1 >> 8) : y1;
                const int mv = chunk * S::kNpc + pi;
                Mma(va[mv], AndOr<0x00F000F0u>(l0, magic), AndOr<0x00F000F0u>(h0, magic),
                    AndOr<0x00F000F0u>(l1, magic), AndOr<0x00F000F0u>(h1, magic), bb.x, bb.y);
              }
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
      float flo, fhi, olo, ohi;  // 1/f and the offset weight 1024/f
      if constexpr (VB == 2) {
        flo = 1.f / 16.f;
        fhi = 1.f / 64.f;
        olo = 64.f;
        ohi = 16.f;
      } else {
        flo = fhi = 1.f / 16.f;
        olo = ohi = 64.f;
      }
      const float2 scv = LoadHalf2(rec + L.s_col_v_offset + 2 * ch_lo);
#pragma unroll
      for (int k = 0; k < 2 * NC; ++k) {
        const int r = k / NC, e = k % NC;
        o[mv][k] = fmaf(r ? scv.y : scv.x,
                        fmaf(va[mv][2 * r + e], r ? fhi : flo, zsum[e] - (r ? ohi : olo) * psum[e]),
                        o[mv][k]);
      }
    }
  };

  // FP16 page block: K [n][D], V [n][D] fp16 in global memory, natural token order.
  // Rarely taken (sink and tail blocks): loops are kept rolled so that this path does not
  // raise the register pressure of the compressed path; `scratch` (the unused stage
  // buffer) holds the p fragments.
  auto process_fp16 = [&](const __half* kp, const __half* vp, int ntok, int tok_base,
                          uint32_t* scratch) {
    float s[MT][4];
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) s[mt][0] = s[mt][1] = s[mt][2] = s[mt][3] = 0.f;
    auto kload = [&](int t, int d) -> uint32_t {
      if (t >= ntok) return 0u;
      return *reinterpret_cast<const uint32_t*>(kp + static_cast<int64_t>(t) * D + d);
    };
#pragma unroll 1
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
        if constexpr (P) {
          Mma(s[mt], a0, a1, a2, a3, (g & 1) ? l0 : b0, (g & 1) ? l1 : b1);
        } else {
          Mma(s[mt], a0, a1, a2, a3, b0, b1);
          Mma(s[mt], a0, a1, a2, a3, l0, l1);
        }
      }
    }
    combine_packed(s);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
      for (int k = 0; k < 2 * NC; ++k) {
        const int t = 16 * mt + g + 8 * (k / NC);
        if (t >= ntok || tok_base + t >= lim[k % NC]) s[mt][k] = -INFINITY;
      }
    }
    softmax_update(s);
#pragma unroll
    for (int mt = 0; mt < MT; ++mt) {
      scratch[(mt * 32 + lane) * 2] = MovTrans(PackHalf2(s[mt][0], P ? 0.f : s[mt][1]));
      scratch[(mt * 32 + lane) * 2 + 1] = MovTrans(PackHalf2(s[mt][NC], P ? 0.f : s[mt][3]));
    }
    __syncwarp();
    auto vload = [&](int t, int d) -> uint32_t {
      if (t >= ntok) return 0u;
      return *reinterpret_cast<const uint32_t*>(vp + static_cast<int64_t>(t) * D + d);
    };
#pragma unroll 1
    for (int mt = 0; mt < MT; ++mt) {
      const uint32_t blo = scratch[(mt * 32 + lane) * 2], bhi = scratch[(mt * 32 + lane) * 2 + 1];
#pragma unroll
      for (int mv = 0; mv < MV; ++mv) {
        const int pi = mv % S::kNpc;
        const int ch_lo = S::kChPerChunk * (mv / S::kNpc) + (S::kChPerChunk / 8) * g + 2 * pi;
        const int t = 16 * mt + 2 * tig;
        const uint32_t x0 = vload(t, ch_lo), x1 = vload(t + 1, ch_lo);
        const uint32_t x8 = vload(t + 8, ch_lo), x9 = vload(t + 9, ch_lo);
        // a0: (ch_lo; t, t+1), a1: (ch_lo+1; t, t+1), a2/a3: tokens t+8, t+9.
        const uint32_t a0 = __byte_perm(x0, x1, 0x5410), a1 = __byte_perm(x0, x1, 0x7632);
        const uint32_t a2 = __byte_perm(x8, x9, 0x5410), a3 = __byte_perm(x8, x9, 0x7632);
        if constexpr (P) {
          float t4[4] = {o[mv][0], 0.f, o[mv][1], 0.f};  // odd columns of p are zero
          Mma(t4, a0, a1, a2, a3, blo, bhi);
          o[mv][0] = t4[0];
          o[mv][1] = t4[2];
        } else {
          Mma(o[mv], a0, a1, a2, a3, blo, bhi);
        }
      }
    }
  };

  // Pipeline: tile k of this warp is block blk_begin + warp + k*kWarps.
  // Block-table entries are read one tile ahead of their copies (e_next: tile j + kWarps,
  // loaded during tile j - kWarps), so no global load sits before a copy is issued.
  int j = blk_begin + warp;
  int32_t e = entry_of(j);
  int32_t e_next = entry_of(j + kWarps);
  {
    const uint8_t* rec = record_of(e);
    issue_k(rec);
    issue_v(rec);
  }
  for (; j < blk_end; j += kWarps) {
    const int32_t e_after = entry_of(j + 2 * kWarps);
    CpAsyncWait1();  // K half of tile j (its V half may still be in flight)
    __syncwarp();
    const int ntok = min(G, seq_len - j * G);
    float s[MT][4];
    if (e >= 0) {
      phase_a(buf, ntok, j * G, s);
    } else {
      const uint8_t* page = a.fp16_pages + static_cast<int64_t>(-e - 1) * a.fp16_page_stride;
      const __half* kp =
          reinterpret_cast<const __half*>(page) + static_cast<int64_t>(h) * 2 * ntok * D;
      process_fp16(kp, kp + static_cast<int64_t>(ntok) * D, ntok, j * G,
                   reinterpret_cast<uint32_t*>(buf));
    }
    __syncwarp();
    const uint8_t* rec_next = record_of(e_next);
    issue_k(rec_next);
    CpAsyncWait1();  // V half of tile j
    __syncwarp();
    if (e >= 0) phase_b(buf, s);
    __syncwarp();
    issue_v(rec_next);
    e = e_next;
    e_next = e_after;
  }
  CpAsyncWait0();

  // ---- merge the warps of this CTA ----
#pragma unroll
  for (int e = 0; e < NC; ++e) {
    l_run[e] += __shfl_xor_sync(0xffffffffu, l_run[e], 4);
    l_run[e] += __shfl_xor_sync(0xffffffffu, l_run[e], 8);
    l_run[e] += __shfl_xor_sync(0xffffffffu, l_run[e], 16);
  }
  __syncthreads();                             // stage buffers are free now
  float* ms = reinterpret_cast<float*>(smem);  // [kWarps][8]
  float* ls = ms + kWarps * 8;                 // [kWarps][8]
  float* os = ls + kWarps * 8;                 // [kWarps][8][D]
  if constexpr (P) {
    // Column tig = head tig; columns 4-7 are empty.
    if (g < 2) {
      ms[warp * 8 + 4 * g + tig] = g == 0 ? m_run[0] : -INFINITY;
      ls[warp * 8 + 4 * g + tig] = g == 0 ? l_run[0] : 0.f;
    }
  } else if (g == 0) {
#pragma unroll
    for (int e = 0; e < NC; ++e) {
      ms[warp * 8 + 2 * tig + e] = m_run[e];
      ls[warp * 8 + 2 * tig + e] = l_run[e];
    }
  }
#pragma unroll
  for (int mv = 0; mv < MV; ++mv) {
    const int pi = mv % S::kNpc;
    const int ch = S::kChPerChunk * (mv / S::kNpc) + (S::kChPerChunk / 8) * g + 2 * pi;
#pragma unroll
    for (int k = 0; k < 2 * NC; ++k) {
      const int r = k / NC, e = k % NC;
      os[(warp * 8 + (P ? tig : 2 * tig + e)) * D + ch + r] = o[mv][k];
    }
  }
  __syncthreads();
  // Combined, normalized (rotated) output per column into q_s; lse (log2) per column.
  float* res = q_s;                      // [8][D]
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
    internal::FwhtRowsShared(res, 8, D, D, tid, kWarps * 32);
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

// Decode attention for head dims other than 128 (64, 256): a plain CUDA-core kernel with
// the same grid, column mapping, split-K workspace and merge as DecodeKernel. One CTA of
// kWarps warps per (split, kv head, 8-column group, request) walks its blocks in order;
// scores and the online softmax per block go through shared memory, each thread keeps
// D/16 output accumulators in registers. Each tile is read once per CTA (once per kv head
// for GQA ratios up to 8 with one query token). Correct first; not tuned (the tensor-core
// DecodeKernel is D=128 only).
template <int D>
__global__ void __launch_bounds__(kWarps * 32)
    GenericDecodeKernel(const AttnArgs a, const TileLayout L) {
  constexpr int NT = kWarps * 32, kMaxG = 128, kPer = 8 * D / NT;
  __shared__ float q_s[8 * D];
  __shared__ float p_s[8 * kMaxG];
  __shared__ float f_k[2 * D + kMaxG];  // s_col_k, zp_k, s_row_k
  __shared__ float f_v[D + 2 * kMaxG];  // s_col_v, s_row_v, zp_v
  __shared__ float m_s[8], l_s[8], alpha_s[8];
  __shared__ int lim_s[8];

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  const int split = blockIdx.x;
  const CtaColumns cta(a);
  const int h = cta.h, b = cta.b, seq_len = cta.seq_len;
  const int rows_per_req = cta.rows_per_req;
  const int G = L.group_size, KB = L.key_bits, VB = L.value_bits;

  auto col_row = [&](int n, int& limit) -> int { return cta.Row(a, n, limit); };

  for (int idx = tid; idx < 8 * D; idx += NT) {
    const int n = idx / D, d = idx % D;
    int lim;
    const int row = col_row(n, lim);
    q_s[idx] = row >= 0
                   ? internal::LoadAsFloat(
                         a.q, (static_cast<int64_t>(b) * rows_per_req + row) * D + d, a.q_dtype)
                   : 0.f;
  }
  if (tid < 8) {
    int lim;
    col_row(tid, lim);
    lim_s[tid] = lim;
    m_s[tid] = -INFINITY;
    l_s[tid] = 0.f;
  }
  __syncthreads();
  const float fsc = static_cast<float>(1.0 / sqrt(static_cast<double>(D)));
  internal::FwhtRowsShared(q_s, 8, D, D, tid, NT);
  for (int i = tid; i < 8 * D; i += NT) q_s[i] *= fsc;
  __syncthreads();

  float acc[kPer];
#pragma unroll
  for (int k = 0; k < kPer; ++k) acc[k] = 0.f;

  const int nblk = (seq_len + G - 1) / G;
  const int blk_begin = split * a.blocks_per_split;
  const int blk_end = min(nblk, blk_begin + a.blocks_per_split);
  const int32_t* bt = a.block_tables + static_cast<int64_t>(b) * a.block_table_stride;
  for (int j = blk_begin; j < blk_end; ++j) {
    const int32_t e = bt[j];
    const int ntok = min(G, seq_len - j * G);
    const uint8_t* rec = nullptr;
    const __half* kp = nullptr;
    const __half* vp = nullptr;
    if (e >= 0) {
      rec = a.tile_pages + static_cast<int64_t>(e) * a.tile_page_stride +
            static_cast<int64_t>(h) * static_cast<int64_t>(L.record_bytes);
      auto half_at = [&](size_t off, int i) {
        return __half2float(reinterpret_cast<const __half*>(rec + off)[i]);
      };
      for (int i = tid; i < D; i += NT) {
        f_k[i] = half_at(L.s_col_k_offset, i);
        f_k[D + i] = half_at(L.zp_k_offset, i);
        f_v[i] = half_at(L.s_col_v_offset, i);
      }
      for (int i = tid; i < G; i += NT) {
        f_k[2 * D + i] = half_at(L.s_row_k_offset, i);
        f_v[D + i] = half_at(L.s_row_v_offset, i);
        f_v[D + kMaxG + i] = half_at(L.zp_v_offset, i);
      }
    } else {
      const uint8_t* page = a.fp16_pages + static_cast<int64_t>(-e - 1) * a.fp16_page_stride;
      kp = reinterpret_cast<const __half*>(page) + static_cast<int64_t>(h) * 2 * ntok * D;
      vp = kp + static_cast<int64_t>(ntok) * D;
    }
    __syncthreads();
    // Scores (log2 units) of the 8 columns × G tokens.
    for (int idx = tid; idx < 8 * G; idx += NT) {
      const int n = idx / G, t = idx % G;
      float sc = -INFINITY;
      if (t < ntok && j * G + t < lim_s[n]) {
        const float* q = q_s + n * D;
        float dot = 0.f;
        if (rec != nullptr) {
          const uint8_t* codes = rec + L.k_codes_offset + t * KB / 8;
          const int sh = (t % (8 / KB)) * KB, mask = (1 << KB) - 1;
          for (int c = 0; c < D; ++c) {
            const int code = (__ldg(codes + c * L.k_row_bytes) >> sh) & mask;
            dot += q[c] * (static_cast<float>(code) * f_k[c] + f_k[D + c]);
          }
          dot *= f_k[2 * D + t];
        } else {
          const __half* kt = kp + static_cast<int64_t>(t) * D;
          for (int c = 0; c < D; ++c) dot += q[c] * __half2float(kt[c]);
        }
        sc = dot * a.scale_log2;
      }
      p_s[n * kMaxG + t] = sc;
    }
    __syncthreads();
    // Online softmax: one warp per column.
    for (int n = warp; n < 8; n += kWarps) {
      float mx = -INFINITY;
      for (int t = lane; t < G; t += 32) mx = fmaxf(mx, p_s[n * kMaxG + t]);
      mx = internal::WarpMax(mx);
      const float m_old = m_s[n];
      const float m_new = fmaxf(m_old, mx);
      float sum = 0.f;
      for (int t = lane; t < G; t += 32) {
        const float sc = p_s[n * kMaxG + t];
        const float pv = sc == -INFINITY ? 0.f : exp2f(sc - m_new);
        p_s[n * kMaxG + t] = pv;
        sum += pv;
      }
      sum = internal::WarpSum(sum);
      __syncwarp();
      if (lane == 0) {
        const float alpha = m_old == -INFINITY ? 0.f : exp2f(m_old - m_new);
        alpha_s[n] = alpha;
        l_s[n] = l_s[n] * alpha + sum;
        m_s[n] = m_new;
      }
    }
    __syncthreads();
    // P·V into the register accumulators.
#pragma unroll
    for (int k = 0; k < kPer; ++k) {
      const int idx = tid + k * NT, n = idx / D, c = idx % D;
      float v_acc = 0.f;
      const float* pn = p_s + n * kMaxG;
      if (rec != nullptr) {
        const uint8_t* codes = rec + L.v_codes_offset + c * VB / 8;
        const int sh = (c % (8 / VB)) * VB, mask = (1 << VB) - 1;
        for (int t = 0; t < ntok; ++t) {
          const int code = (__ldg(codes + t * L.v_row_bytes) >> sh) & mask;
          v_acc += pn[t] * (static_cast<float>(code) * f_v[D + t] + f_v[D + kMaxG + t]);
        }
        v_acc *= f_v[c];
      } else {
        for (int t = 0; t < ntok; ++t) {
          v_acc += pn[t] * __half2float(vp[static_cast<int64_t>(t) * D + c]);
        }
      }
      acc[k] = acc[k] * alpha_s[n] + v_acc;
    }
    __syncthreads();  // p_s, f_k, f_v are rewritten by the next block
  }

  // Normalized (rotated) output per column into q_s; lse (log2) per column.
  float* res = q_s;
#pragma unroll
  for (int k = 0; k < kPer; ++k) {
    const int idx = tid + k * NT, n = idx / D;
    const float l = l_s[n];
    res[idx] = l > 0.f ? acc[k] / l : 0.f;
  }
  __syncthreads();
  if (a.num_splits > 1) {
    for (int idx = tid; idx < 8 * D; idx += NT) {
      const int n = idx / D, d = idx % D;
      int lim;
      const int row = col_row(n, lim);
      if (row < 0) continue;
      const int64_t grow = static_cast<int64_t>(b) * rows_per_req + row;
      a.ws_o[(grow * a.num_splits + split) * D + d] = res[idx];
      if (d == 0) {
        a.ws_lse[grow * a.num_splits + split] = l_s[n] > 0.f ? m_s[n] + log2f(l_s[n]) : -INFINITY;
      }
    }
    return;
  }
  internal::FwhtRowsShared(res, 8, D, D, tid, NT);
  for (int idx = tid; idx < 8 * D; idx += NT) {
    const int n = idx / D, d = idx % D;
    int lim;
    const int row = col_row(n, lim);
    if (row < 0) continue;
    const int64_t grow = static_cast<int64_t>(b) * rows_per_req + row;
    internal::StoreFromFloat(a.out, grow * D + d, res[idx] * fsc, a.q_dtype);
    if (d == 0 && a.lse != nullptr) {
      a.lse[grow] = l_s[n] > 0.f ? (m_s[n] + log2f(l_s[n])) * kLn2 : -INFINITY;
    }
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

// Largest split count a launch may use (bounds the workspace).
int64_t MaxSplits(int batch, int nblk) {
  const int64_t slots = static_cast<int64_t>(SmCount()) * kCtasPerSm;
  return std::max<int64_t>(1, std::min<int64_t>(nblk, std::max<int64_t>(8, 4 * slots / batch)));
}

SplitPlan PlanSplits(int batch, int num_kv_heads, int col_groups, int max_seq_len, int group_size,
                     int forced) {
  const int nblk = std::max(1, (max_seq_len + group_size - 1) / group_size);
  const int64_t base = static_cast<int64_t>(batch) * num_kv_heads * col_groups;
  const int64_t slots = static_cast<int64_t>(SmCount()) * kCtasPerSm;
  int s = 1;
  if (forced > 0) {
    s = forced;
  } else {
    // The fewest splits whose CTAs fill their waves to >= 85%, with at least one tile per
    // warp; else the best fill within that bound.
    const int64_t cap = std::min<int64_t>(MaxSplits(batch, nblk), (nblk + kWarps - 1) / kWarps);
    double best_fill = 0.0;
    for (int64_t c = 1; c <= std::max<int64_t>(1, cap); ++c) {
      const int64_t ctas = base * c;
      const double fill = static_cast<double>(ctas) / (((ctas + slots - 1) / slots) * slots);
      if (fill > best_fill + 1e-9) {
        best_fill = fill;
        s = static_cast<int>(c);
      }
      if (fill >= 0.85) break;
    }
  }
  s = std::max(1, std::min(s, nblk));
  const int bps = (nblk + s - 1) / s;
  return {(nblk + bps - 1) / bps, bps};
}

template <int D, int G, int VB>
cudaError_t LaunchDecode(const AttnArgs& a, cudaStream_t stream) {
  using S = AttnShape<D, G, VB>;
  auto* kernel = a.packed ? DecodeKernel<D, G, VB, true> : DecodeKernel<D, G, VB, false>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(S::kSmemBytes));
  if (e != cudaSuccess) return e;
  const dim3 grid(a.num_splits, a.num_kv_heads * a.col_groups, a.batch);
  kernel<<<grid, kWarps * 32, S::kSmemBytes, stream>>>(a);
  e = cudaGetLastError();
  if (e != cudaSuccess || a.num_splits == 1) return e;
  const int64_t rows = static_cast<int64_t>(a.batch) * a.num_q_heads * a.num_query_tokens;
  MergeKernel<D><<<static_cast<unsigned>(rows), D, 0, stream>>>(a);
  return cudaGetLastError();
}

template <int D>
cudaError_t LaunchGenericDecode(const AttnArgs& a, const TileLayout& layout, cudaStream_t stream) {
  const dim3 grid(a.num_splits, a.num_kv_heads * a.col_groups, a.batch);
  GenericDecodeKernel<D><<<grid, kWarps * 32, 0, stream>>>(a, layout);
  cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess || a.num_splits == 1) return e;
  const int64_t rows = static_cast<int64_t>(a.batch) * a.num_q_heads * a.num_query_tokens;
  MergeKernel<D><<<static_cast<unsigned>(rows), D, 0, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace

size_t DecodeAttentionWorkspaceBytes(int batch, int num_q_heads, int num_query_tokens, int head_dim,
                                     int max_seq_len, Preset preset) {
  if (batch <= 0 || num_q_heads <= 0 || num_query_tokens <= 0 || !IsSupportedHeadDim(head_dim)) {
    return 0;
  }
  const int g = GetPresetInfo(preset).group_size;
  const int nblk = std::max(1, (max_seq_len + g - 1) / g);
  // Upper bound of any plan (forced plans are capped at 8 <= MaxSplits).
  const int64_t s_cap = MaxSplits(batch, nblk);
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
  if (!IsSupportedHeadDim(p.head_dim)) return cudaErrorNotSupported;
  if (p.batch == 0) return cudaSuccess;
  AttnArgs a{};
  a.num_q_heads = p.num_q_heads;
  a.num_kv_heads = p.num_kv_heads;
  a.group = p.num_q_heads / p.num_kv_heads;
  a.num_query_tokens = p.num_query_tokens;
  a.num_cols = a.group * p.num_query_tokens;
  a.col_groups = (a.num_cols + 7) / 8;
  a.batch = p.batch;
  a.packed = a.num_cols <= 4;
  a.magic = kMagic;
  a.q_vec = (reinterpret_cast<uintptr_t>(p.q) & 15) == 0;
  const int g = GetPresetInfo(p.preset).group_size;
  const SplitPlan plan =
      PlanSplits(p.batch, p.num_kv_heads, a.col_groups, p.max_seq_len, g, p.force_num_splits);
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
  if (p.head_dim == 64) return LaunchGenericDecode<64>(a, MakeTileLayout(p.preset, 64), stream);
  if (p.head_dim == 256) {
    return LaunchGenericDecode<256>(a, MakeTileLayout(p.preset, 256), stream);
  }
  switch (p.preset) {
    case Preset::kK4V2G128:
      return LaunchDecode<128, 128, 2>(a, stream);
    case Preset::kK4V4G128:
      return LaunchDecode<128, 128, 4>(a, stream);
    case Preset::kK4V2G64:
      return LaunchDecode<128, 64, 2>(a, stream);
    case Preset::kK4V4G64:
      return LaunchDecode<128, 64, 4>(a, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace kvtier::kernels::cuda
