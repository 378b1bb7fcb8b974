// Decompress kernel: tile records -> FP16/BF16 K and V (DESIGN §3.1 reconstruction).
// One CTA of 256 threads per (layer, entry, kv head); the tile is rebuilt in shared
// memory in fp32 (same arithmetic as the CPU DecodeTile), optionally un-rotated with an
// exact FWHT per token, and written once rounded to the destination dtype.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kvarn_cuda.h"
#include "kernels/format.h"

namespace kvtier::kernels::cuda {
namespace {

constexpr int kThreads = 256;

struct DecompressArgs {
  TileLayout layout;
  int num_kv_heads, num_blocks;
  const uint8_t* src;
  int64_t s_layer, s_block;
  DType dtype;
  void* dst[2];
  int64_t d_layer, d_block, d_token, d_head;
  const int32_t* block_ids;
  bool rotated;
};

__device__ __forceinline__ float Half(const uint8_t* p) {
  return __half2float(*reinterpret_cast<const __half*>(p));
}

__global__ void __launch_bounds__(kThreads) DecompressKernel(const DecompressArgs a) {
  extern __shared__ __align__(16) float buf[];  // [G][D]
  const TileLayout& L = a.layout;
  const int D = L.head_dim, G = L.group_size;
  const int64_t tile = blockIdx.x;
  const int h = static_cast<int>(tile % a.num_kv_heads);
  const int64_t li = tile / a.num_kv_heads;
  const int entry = static_cast<int>(li % a.num_blocks);
  const int layer = static_cast<int>(li / a.num_blocks);
  const int role = blockIdx.y;
  const uint8_t* rec = a.src + layer * a.s_layer + entry * a.s_block +
                       static_cast<int64_t>(h) * static_cast<int64_t>(L.record_bytes);
  for (int i = threadIdx.x; i < G * D; i += kThreads) {
    const int t = i / D, d = i % D;
    float x;
    if (role == 0) {
      const int per = 8 / L.key_bits;
      const uint8_t byte = rec[L.k_codes_offset + d * L.k_row_bytes + t / per];
      const int c = (byte >> ((t % per) * L.key_bits)) & ((1 << L.key_bits) - 1);
      x = (static_cast<float>(c) * Half(rec + L.s_col_k_offset + 2 * d) +
           Half(rec + L.zp_k_offset + 2 * d)) *
          Half(rec + L.s_row_k_offset + 2 * t);
    } else {
      const int per = 8 / L.value_bits;
      const uint8_t byte = rec[L.v_codes_offset + t * L.v_row_bytes + d / per];
      const int c = (byte >> ((d % per) * L.value_bits)) & ((1 << L.value_bits) - 1);
      x = (static_cast<float>(c) * Half(rec + L.s_row_v_offset + 2 * t) +
           Half(rec + L.zp_v_offset + 2 * t)) *
          Half(rec + L.s_col_v_offset + 2 * d);
    }
    buf[i] = x;
  }
  __syncthreads();
  if (!a.rotated) {
    internal::FwhtRowsShared(buf, G, D, D, threadIdx.x, kThreads);
    const float sc = static_cast<float>(1.0 / sqrt(static_cast<double>(D)));
    for (int i = threadIdx.x; i < G * D; i += kThreads) buf[i] *= sc;
    __syncthreads();
  }
  const int64_t block = a.block_ids != nullptr ? a.block_ids[entry] : entry;
  const int64_t base = layer * a.d_layer + block * a.d_block + static_cast<int64_t>(h) * a.d_head;
  for (int i = threadIdx.x; i < G * D; i += kThreads) {
    const int t = i / D, d = i % D;
    internal::StoreFromFloat(a.dst[role], base + t * a.d_token + d, buf[i], a.dtype);
  }
}

}  // namespace

cudaError_t Decompress(const DecompressParams& p, cudaStream_t stream) {
  if (!IsSupportedHeadDim(p.head_dim) || !IsValidPreset(static_cast<uint8_t>(p.preset)) ||
      p.num_kv_heads < 1 || p.num_layers < 1 || p.num_blocks < 0 || p.src == nullptr ||
      p.k == nullptr || p.v == nullptr) {
    return cudaErrorInvalidValue;
  }
  if (p.num_blocks == 0) return cudaSuccess;
  DecompressArgs a{};
  a.layout = MakeTileLayout(p.preset, p.head_dim);
  a.num_kv_heads = p.num_kv_heads;
  a.num_blocks = p.num_blocks;
  a.src = p.src;
  a.s_layer = p.src_layer_stride;
  a.s_block = p.src_block_stride;
  a.dtype = p.dtype;
  a.dst[0] = p.k;
  a.dst[1] = p.v;
  a.d_layer = p.dst_layer_stride;
  a.d_block = p.dst_block_stride;
  a.d_token = p.dst_token_stride;
  a.d_head = p.dst_head_stride;
  a.block_ids = p.block_ids;
  a.rotated = p.rotated;
  const int64_t tiles = static_cast<int64_t>(p.num_layers) * p.num_blocks * p.num_kv_heads;
  if (tiles > 0x7fffffff) return cudaErrorInvalidValue;
  const size_t smem = sizeof(float) * a.layout.group_size * a.layout.head_dim;
  cudaError_t e = cudaFuncSetAttribute(
      DecompressKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  DecompressKernel<<<dim3(static_cast<unsigned>(tiles), 2), kThreads, smem, stream>>>(a);
  return cudaGetLastError();
}

}  // namespace kvtier::kernels::cuda
