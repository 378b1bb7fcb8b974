// Device helpers shared by the KVarN CUDA kernels (compress, attention, decompress).
// Includes CUDA and kernels/ headers only.
#ifndef KVTIER_KERNELS_CUDA_COMMON_CUH_
#define KVTIER_KERNELS_CUDA_COMMON_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/kvarn_cuda.h"

namespace kvtier::kernels::cuda::internal {

// Loads one element of a KV cache of the given dtype as fp32.
__device__ __forceinline__ float LoadAsFloat(const void* base, int64_t index, DType dtype) {
  if (dtype == DType::kFloat16) {
    return __half2float(static_cast<const __half*>(base)[index]);
  }
  return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[index]);
}

// Converts 8 packed 16-bit values (one 16-byte vector) to fp32.
__device__ __forceinline__ void Unpack8(const uint4& raw, DType dtype, float* out) {
  const uint32_t w[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if (dtype == DType::kFloat16) {
      const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    } else {
      const float2 f = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&w[i]));
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
}

__device__ __forceinline__ void StoreFromFloat(void* base, int64_t index, float x, DType dtype) {
  if (dtype == DType::kFloat16) {
    static_cast<__half*>(base)[index] = __float2half_rn(x);
  } else {
    static_cast<__nv_bfloat16*>(base)[index] = __float2bfloat16_rn(x);
  }
}

// In-register Walsh-Hadamard butterflies over N values (no normalization).
template <int N>
__device__ __forceinline__ void HadamardLocal(float* x) {
#pragma unroll
  for (int h = 1; h < N; h <<= 1) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      if ((i & h) == 0) {
        const float a = x[i];
        const float b = x[i + h];
        x[i] = a + b;
        x[i + h] = a - b;
      }
    }
  }
}

// Unnormalized FWHT of `rows` vectors of n floats (vector r at x + r·pitch) in shared
// memory, by the `nthreads` threads of the CTA (index tid). Every thread of the CTA calls
// it; it synchronizes after each stage (the caller synchronizes before).
__device__ __forceinline__ void FwhtRowsShared(float* x, int rows, int n, int pitch, int tid,
                                               int nthreads) {
  for (int hh = 1; hh < n; hh <<= 1) {
    for (int i = tid; i < rows * n / 2; i += nthreads) {
      const int r = i / (n / 2), k = i % (n / 2);
      const int lo = r * pitch + (k / hh) * 2 * hh + (k % hh);
      const float x0 = x[lo], x1 = x[lo + hh];
      x[lo] = x0 + x1;
      x[lo + hh] = x0 - x1;
    }
    __syncthreads();
  }
}

__device__ __forceinline__ float WarpSum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__device__ __forceinline__ float WarpMin(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fminf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

}  // namespace kvtier::kernels::cuda::internal

#endif  // KVTIER_KERNELS_CUDA_COMMON_CUH_
