// Device benchmark of the KVarN CUDA kernels (issue 3): measured read/copy bandwidth,
// decode attention for the issue's shapes, compress throughput. Prints a table and
// writes CSV rows (for sdpa_bench.py, which adds the PyTorch SDPA column) to argv[1].
//
//   kvarn_cuda_bench [out.csv] [shape_index]
// With shape_index (0..5), only that attention shape runs (no bandwidth or compress
// runs): for profiling one launch with ncu.
//
// Inputs are random (never zeros); caches are larger than L2 or rotated among several
// copies so that repeated launches do not run from L2.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cuda/kvarn_cuda.h"
#include "kernels/format.h"

namespace {

using kvtier::kernels::MakeTileLayout;
using kvtier::kernels::Preset;
using kvtier::kernels::TileLayout;
namespace kc = kvtier::kernels::cuda;

#define CK(expr)                                                                                 \
  do {                                                                                           \
    const cudaError_t _e = (expr);                                                               \
    if (_e != cudaSuccess) {                                                                     \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(_e)); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

__device__ __forceinline__ uint32_t Hash(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ull;
  x ^= x >> 33;
  return static_cast<uint32_t>(x);
}

// Roughly normal fp16 values (sum of uniforms), per-channel offset for keys.
__global__ void FillRandomHalf(__half* p, size_t n, uint64_t seed, int d, float offset) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint32_t a = Hash(seed * 0x9E3779B97F4A7C15ull + 2 * i);
    const uint32_t b = Hash(seed * 0x9E3779B97F4A7C15ull + 2 * i + 1);
    const float u = (a & 0xffff) / 65536.f + (a >> 16) / 65536.f + (b & 0xffff) / 65536.f +
                    (b >> 16) / 65536.f - 2.f;
    const int c = static_cast<int>(i % d);
    p[i] = __float2half(1.7f * u + offset * ((c * 37) % 11 - 5) / 5.f);
  }
}

__global__ void ReadKernel(const uint4* p, size_t n, uint32_t* sink) {
  uint32_t acc = 0;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint4 v = __ldcs(p + i);
    acc ^= v.x ^ v.y ^ v.z ^ v.w;
  }
  if (acc == 0x12345678u) sink[0] = acc;
}

float Median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <typename F>
float TimeMedianMs(F&& launch, int iters) {
  std::vector<cudaEvent_t> ev(iters + 1);
  for (auto& e : ev) CK(cudaEventCreate(&e));
  for (int i = 0; i < 3; ++i) launch(i);
  CK(cudaDeviceSynchronize());
  CK(cudaEventRecord(ev[0]));
  for (int i = 0; i < iters; ++i) {
    launch(i);
    CK(cudaEventRecord(ev[i + 1]));
  }
  CK(cudaEventSynchronize(ev[iters]));
  std::vector<float> t(iters);
  for (int i = 0; i < iters; ++i) CK(cudaEventElapsedTime(&t[i], ev[i], ev[i + 1]));
  for (auto& e : ev) CK(cudaEventDestroy(e));
  return Median(t);
}

}  // namespace

int main(int argc, char** argv) {
  const char* csv_path = argc > 1 ? argv[1] : nullptr;
  const int only_shape = argc > 2 ? std::atoi(argv[2]) : -1;
  FILE* csv = csv_path ? std::fopen(csv_path, "w") : nullptr;
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs, L2 %d MB\n", prop.name, prop.multiProcessorCount,
              prop.l2CacheSize >> 20);

  // ---- bandwidth ceilings ----
  const size_t bw_bytes = only_shape >= 0 ? (size_t{64} << 20) : (size_t{4} << 30);
  void *bw_a, *bw_b;
  uint32_t* sink;
  CK(cudaMalloc(&bw_a, bw_bytes));
  CK(cudaMalloc(&bw_b, bw_bytes));
  CK(cudaMalloc(&sink, 4));
  FillRandomHalf<<<4096, 256>>>(static_cast<__half*>(bw_a), bw_bytes / 2, 1, 128, 0.f);
  CK(cudaGetLastError());
  const float read_ms = TimeMedianMs(
      [&](int) {
        ReadKernel<<<prop.multiProcessorCount * 8, 512>>>(static_cast<const uint4*>(bw_a),
                                                          bw_bytes / 16, sink);
      },
      10);
  const float copy_ms = TimeMedianMs(
      [&](int) { CK(cudaMemcpyAsync(bw_b, bw_a, bw_bytes, cudaMemcpyDeviceToDevice)); }, 10);
  const double read_gbs = bw_bytes / (read_ms * 1e6);
  const double copy_gbs = 2.0 * bw_bytes / (copy_ms * 1e6);
  std::printf("read bandwidth %.0f GB/s (4 GiB read kernel), copy %.0f GB/s (read+write)\n",
              read_gbs, copy_gbs);
  if (csv) std::fprintf(csv, "bandwidth,%.1f,%.1f\n", read_gbs, copy_gbs);
  CK(cudaFree(bw_b));

  // ---- compress: 32768 (block, head) tiles of fp16 K and V, D=128, k4v2_g128 ----
  const Preset preset = Preset::kK4V2G128;
  const TileLayout layout = MakeTileLayout(preset, 128);
  const int D = 128, G = 128, HK = 8, HQ = 32;
  if (only_shape < 0) {
    const int max_blocks = 4096;  // × 8 heads = 32768 tiles
    const size_t elems = static_cast<size_t>(max_blocks) * G * HK * D;
    __half *k, *v;
    CK(cudaMalloc(&k, elems * 2));
    CK(cudaMalloc(&v, elems * 2));
    FillRandomHalf<<<4096, 256>>>(k, elems, 2, D, 2.f);
    FillRandomHalf<<<4096, 256>>>(v, elems, 3, D, 0.f);
    CK(cudaGetLastError());
    std::vector<int32_t> ids(max_blocks);
    std::iota(ids.begin(), ids.end(), 0);
    int32_t* dids;
    CK(cudaMalloc(&dids, ids.size() * 4));
    CK(cudaMemcpy(dids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    uint8_t* dst;
    CK(cudaMalloc(&dst, static_cast<size_t>(max_blocks) * HK * layout.record_bytes));
    for (int blocks : {512, 4096}) {
      kc::CompressParams p;
      p.preset = preset;
      p.head_dim = D;
      p.num_kv_heads = HK;
      p.num_blocks = blocks;
      p.k = k;
      p.v = v;
      p.src_block_stride = static_cast<int64_t>(G) * HK * D;
      p.src_token_stride = HK * D;
      p.src_head_stride = D;
      p.block_ids = dids;
      p.dst = dst;
      p.dst_block_stride = static_cast<int64_t>(HK) * layout.record_bytes;
      p.dst_layer_stride = p.dst_block_stride * blocks;
      const float ms = TimeMedianMs([&](int) { CK(kc::Compress(p, nullptr)); }, 10);
      const double in_bytes = static_cast<double>(blocks) * HK * G * D * 2 * 2;
      std::printf("compress %6d tiles: %.3f ms, %.0f GB/s of fp16 input\n", blocks * HK, ms,
                  in_bytes / (ms * 1e6));
      if (csv) std::fprintf(csv, "compress,%d,%.4f,%.1f\n", blocks * HK, ms, in_bytes / (ms * 1e6));
    }
    CK(cudaFree(k));
    CK(cudaFree(v));
    CK(cudaFree(dids));
    CK(cudaFree(dst));
  }

  // ---- a pool of real compressed pages (512 pages × 8 heads), copied into the caches ----
  const size_t page_bytes = static_cast<size_t>(HK) * layout.record_bytes;
  const int pool_pages = 512;
  uint8_t* pool;
  CK(cudaMalloc(&pool, pool_pages * page_bytes));
  {
    const size_t elems = static_cast<size_t>(pool_pages) * G * HK * D;
    __half *k, *v;
    CK(cudaMalloc(&k, elems * 2));
    CK(cudaMalloc(&v, elems * 2));
    FillRandomHalf<<<4096, 256>>>(k, elems, 4, D, 2.f);
    FillRandomHalf<<<4096, 256>>>(v, elems, 5, D, 0.f);
    std::vector<int32_t> ids(pool_pages);
    std::iota(ids.begin(), ids.end(), 0);
    int32_t* dids;
    CK(cudaMalloc(&dids, ids.size() * 4));
    CK(cudaMemcpy(dids, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
    kc::CompressParams p;
    p.preset = preset;
    p.head_dim = D;
    p.num_kv_heads = HK;
    p.num_blocks = pool_pages;
    p.k = k;
    p.v = v;
    p.src_block_stride = static_cast<int64_t>(G) * HK * D;
    p.src_token_stride = HK * D;
    p.src_head_stride = D;
    p.block_ids = dids;
    p.dst = pool;
    p.dst_block_stride = static_cast<int64_t>(page_bytes);
    CK(kc::Compress(p, nullptr));
    CK(cudaDeviceSynchronize());
    CK(cudaFree(k));
    CK(cudaFree(v));
    CK(cudaFree(dids));
  }

  // ---- decode attention ----
  struct Shape {
    int batch, ctx;
  };
  const Shape shapes[] = {{1, 16384},  {8, 16384}, {32, 16384},
                          {8, 131072}, {64, 8192}, {128, 4096}};
  std::mt19937 rng(7);
  std::printf("\n%-12s %10s %12s %10s %8s\n", "B x ctx", "ours_us", "comp_MB", "GB/s", "%read");
  for (int si = 0; si < 6; ++si) {
    const Shape& s = shapes[si];
    if (only_shape >= 0 && si != only_shape) continue;
    const int nblk = s.ctx / G;
    const size_t need = static_cast<size_t>(s.batch) * nblk;
    // Enough pages for >= 512 MB so that rotating sets defeats L2.
    const size_t min_pages = (size_t{512} << 20) / page_bytes;
    const int sets = static_cast<int>(std::max<size_t>(1, (min_pages + need - 1) / need));
    const size_t pages = need * sets;
    uint8_t* cache;
    CK(cudaMalloc(&cache, pages * page_bytes));
    for (size_t i = 0; i < pages; i += pool_pages) {
      const size_t n = std::min<size_t>(pool_pages, pages - i);
      CK(cudaMemcpy(cache + i * page_bytes, pool, n * page_bytes, cudaMemcpyDeviceToDevice));
    }
    std::vector<int32_t> perm(pages);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), rng);
    int32_t* tables;
    CK(cudaMalloc(&tables, pages * 4));
    CK(cudaMemcpy(tables, perm.data(), pages * 4, cudaMemcpyHostToDevice));
    std::vector<int32_t> lens(s.batch, s.ctx);
    int32_t* dlens;
    CK(cudaMalloc(&dlens, s.batch * 4));
    CK(cudaMemcpy(dlens, lens.data(), s.batch * 4, cudaMemcpyHostToDevice));
    __half *q, *out;
    CK(cudaMalloc(&q, static_cast<size_t>(s.batch) * HQ * D * 2));
    CK(cudaMalloc(&out, static_cast<size_t>(s.batch) * HQ * D * 2));
    FillRandomHalf<<<64, 256>>>(q, static_cast<size_t>(s.batch) * HQ * D, 9, D, 0.f);
    kc::DecodeAttentionParams p;
    p.preset = preset;
    p.head_dim = D;
    p.num_q_heads = HQ;
    p.num_kv_heads = HK;
    p.batch = s.batch;
    p.max_seq_len = s.ctx;
    p.softmax_scale = 1.f / std::sqrt(128.f);
    p.q = q;
    p.out = out;
    p.tile_pages = cache;
    p.tile_page_stride = static_cast<int64_t>(page_bytes);
    p.fp16_pages = cache;  // unused: every block is compressed
    p.fp16_page_stride = 0;
    p.block_table_stride = nblk;
    p.seq_lens = dlens;
    p.workspace_bytes = kc::DecodeAttentionWorkspaceBytes(s.batch, HQ, 1, D, s.ctx, preset);
    CK(cudaMalloc(&p.workspace, p.workspace_bytes));
    const float ms = TimeMedianMs(
        [&](int it) {
          p.block_tables = tables + static_cast<size_t>(it % sets) * need;
          CK(kc::DecodeAttention(p, nullptr));
        },
        only_shape >= 0 ? 5 : 50);
    const double bytes = static_cast<double>(need) * page_bytes + 2.0 * s.batch * HQ * D * 2;
    const double gbs = bytes / (ms * 1e6);
    std::printf("%3d x %-6d %10.1f %12.1f %10.0f %7.1f%%\n", s.batch, s.ctx, ms * 1e3, bytes / 1e6,
                gbs, 100.0 * gbs / read_gbs);
    if (csv) {
      std::fprintf(csv, "attn,%d,%d,%.3f,%.1f,%.1f\n", s.batch, s.ctx, ms * 1e3, bytes / 1e6, gbs);
    }
    CK(cudaFree(cache));
    CK(cudaFree(tables));
    CK(cudaFree(dlens));
    CK(cudaFree(q));
    CK(cudaFree(out));
    CK(cudaFree(p.workspace));
  }
  CK(cudaFree(pool));
  CK(cudaFree(bw_a));
  CK(cudaFree(sink));
  if (csv) std::fclose(csv);
  return 0;
}
