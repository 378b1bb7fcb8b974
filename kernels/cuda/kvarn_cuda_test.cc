// GPU tests of kernels/cuda/kvarn_cuda.h against the CPU reference codec
// (kernels/cpu/codec.h). Skipped (GTEST_SKIP) without a CUDA device. Every test draws
// fresh random inputs (the seed is printed), poisons outputs before each launch and
// checks every CUDA call.
#include "kernels/cuda/kvarn_cuda.h"

#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/codec.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/synth.h"
#include "kernels/format.h"

namespace kvtier::kernels::cuda {
namespace {

using cpu::FloatToHalf;
using cpu::HalfToFloat;

#define CUDA_OK(expr)                                                      \
  do {                                                                     \
    const cudaError_t _e = (expr);                                         \
    ASSERT_EQ(_e, cudaSuccess) << #expr << ": " << cudaGetErrorString(_e); \
  } while (0)

bool HaveDevice() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// Owns one device allocation.
struct DevBuf {
  void* p = nullptr;
  size_t bytes = 0;
  DevBuf() = default;
  explicit DevBuf(size_t n) : bytes(n) {
    if (cudaMalloc(&p, std::max<size_t>(n, 16)) != cudaSuccess) p = nullptr;
  }
  ~DevBuf() {
    if (p != nullptr) cudaFree(p);
  }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  template <typename T>
  T* as() const {
    return static_cast<T*>(p);
  }
};

uint32_t FreshSeed() {
  std::random_device rd;
  const uint32_t s = rd();
  std::printf("seed %u\n", s);
  return s;
}

uint16_t FloatToBf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7fff + ((u >> 16) & 1);
  return static_cast<uint16_t>(u >> 16);
}
float Bf16ToFloat(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Realistic-ish KV: per-channel offsets and scales (keys have outlier channels), token
// noise. pattern 0: random; 1: synthetic (smooth sinusoids + a large outlier channel).
// (pattern 2, kernels/cpu/synth.h, is filled in RunCompressCase.)
void FillKv(std::mt19937& rng, int pattern, int tokens, int d, bool keys, float* out) {
  std::normal_distribution<float> n01(0.f, 1.f);
  std::vector<float> mean(d), scale(d);
  for (int c = 0; c < d; ++c) {
    mean[c] = keys ? 2.f * n01(rng) : 0.2f * n01(rng);
    scale[c] = std::exp(0.5f * n01(rng));
  }
  if (keys) scale[rng() % d] *= 8.f;
  for (int t = 0; t < tokens; ++t) {
    for (int c = 0; c < d; ++c) {
      float x;
      if (pattern == 0) {
        x = mean[c] + scale[c] * n01(rng);
      } else {
        x = std::sin(0.05f * t * (1 + c % 7) + 0.3f * c) * (1.f + (c == 3 ? 20.f : 0.f)) +
            0.01f * (c % 5);
      }
      out[static_cast<size_t>(t) * d + c] = x;
    }
  }
}

struct RecordDiff {
  size_t codes = 0, codes_equal = 0, codes_off_by_more = 0;
  size_t scales = 0, scales_bad = 0;
  size_t group_bad[6] = {};
  size_t padding_bad = 0;
  int examples = 0;
  size_t decoded = 0, decoded_bad = 0;  // decoded elements; beyond 4e-3 of the tile's max
};

// Gauge-invariant check: both records decode (CPU DecodeTile) to the same tile within fp16
// rounding of the stored scales. Normalization has a gauge freedom (lc + a, lr - a give the
// same balanced tile); where the CPU's imbalance trace has fp32-level near-ties, the GPU
// (different summation order) may pick another iteration: other scale fields, same tile.
void CompareDecoded(const TileLayout& l, const uint8_t* gpu, const uint8_t* ref, RecordDiff& d) {
  const size_t n = static_cast<size_t>(l.group_size) * l.head_dim;
  std::vector<float> gk(n), gv(n), rk(n), rv(n);
  cpu::DecodeTile(l, gpu, gk.data(), gv.data());
  cpu::DecodeTile(l, ref, rk.data(), rv.data());
  auto cmp = [&](const std::vector<float>& a, const std::vector<float>& b) {
    float mx = 0.f;
    for (float x : b) mx = std::max(mx, std::fabs(x));
    for (size_t i = 0; i < n; ++i) {
      ++d.decoded;
      if (!(std::fabs(a[i] - b[i]) <= 4e-3f * mx)) ++d.decoded_bad;
    }
  };
  cmp(gk, rk);
  cmp(gv, rv);
}

void CompareRecords(const TileLayout& l, const uint8_t* gpu, const uint8_t* ref, RecordDiff& d) {
  auto codes = [&](size_t off, int rows, int cols, int bits) {
    const int per = 8 / bits;
    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < cols; ++c) {
        const size_t byte = off + static_cast<size_t>(r) * (cols / per) + c / per;
        const int sh = (c % per) * bits, m = (1 << bits) - 1;
        const int a = (gpu[byte] >> sh) & m, b = (ref[byte] >> sh) & m;
        ++d.codes;
        if (a == b) ++d.codes_equal;
        if (std::abs(a - b) > 1) ++d.codes_off_by_more;
      }
    }
  };
  codes(l.k_codes_offset, l.head_dim, l.group_size, l.key_bits);
  codes(l.v_codes_offset, l.group_size, l.head_dim, l.value_bits);
  auto halves = [&](size_t off, int n, int group) {
    for (int i = 0; i < n; ++i) {
      uint16_t a, b;
      std::memcpy(&a, gpu + off + 2 * i, 2);
      std::memcpy(&b, ref + off + 2 * i, 2);
      ++d.scales;
      // Same sign and within one ulp (adjacent bit patterns of one sign).
      if ((a >> 15) != (b >> 15) || std::abs(static_cast<int>(a & 0x7fff) - (b & 0x7fff)) > 1) {
        if (!((a & 0x7fff) <= 1 && (b & 0x7fff) <= 1)) {
          ++d.scales_bad;
          ++d.group_bad[group];
          if (d.examples++ < 4) {
            std::printf("  field group %d index %d: gpu %g (0x%04x) cpu %g (0x%04x)\n", group, i,
                        HalfToFloat(a), a, HalfToFloat(b), b);
          }
        }
      }
    }
  };
  halves(l.s_col_k_offset, l.head_dim, 0);
  halves(l.zp_k_offset, l.head_dim, 1);
  halves(l.s_row_k_offset, l.group_size, 2);
  halves(l.s_col_v_offset, l.head_dim, 3);
  halves(l.s_row_v_offset, l.group_size, 4);
  halves(l.zp_v_offset, l.group_size, 5);
  for (size_t i = l.data_end; i < l.record_bytes; ++i) d.padding_bad += gpu[i] != 0;
}

struct CompressCase {
  Preset preset;
  int head_dim;
  DType dtype;
  int pattern;
  bool mapped_host_dst = false;  // write records straight into mapped pinned host memory
};

// Compresses num_layers × entries × Hk tiles from a vLLM-layout cache
// [layer][pool block][G][Hk][D] with permuted block ids, on the GPU and on the CPU.
void RunCompressCase(const CompressCase& cc, uint32_t seed) {
  std::mt19937 rng(seed);
  const TileLayout l = MakeTileLayout(cc.preset, cc.head_dim);
  const int d = cc.head_dim, g = l.group_size, hk = 2, layers = 2, pool = 4, entries = 3;
  const size_t per_layer = static_cast<size_t>(pool) * g * hk * d;
  std::vector<float> kf(layers * per_layer), vf(layers * per_layer);
  std::vector<float> tmp(static_cast<size_t>(g) * d);
  if (cc.pattern == 2) {
    // kernels/cpu/synth.h: RoPE'd keys with outlier pairs, a sink token, outlier value
    // tokens; its tokens fill the pool blocks of every layer in order.
    cpu::SynthOptions so;
    so.tokens = layers * pool * g;
    so.num_kv_heads = hk;
    so.num_q_heads = hk;
    so.head_dim = d;
    so.num_queries = 1;
    so.seed = seed;
    absl::StatusOr<cpu::SynthKv> kv = cpu::GenerateSynthKv(so);
    ASSERT_TRUE(kv.ok()) << kv.status();
    ASSERT_EQ(kv->k.size(), kf.size());
    kf = kv->k;  // [tokens][hk][D] == [layer][pool block][G][hk][D]
    vf = kv->v;
  }
  for (int lay = 0; lay < layers && cc.pattern != 2; ++lay) {
    for (int b = 0; b < pool; ++b) {
      for (int h = 0; h < hk; ++h) {
        for (int kv = 0; kv < 2; ++kv) {
          FillKv(rng, cc.pattern, g, d, kv == 0, tmp.data());
          float* dst = (kv == 0 ? kf : vf).data() + lay * per_layer;
          for (int t = 0; t < g; ++t) {
            for (int c = 0; c < d; ++c) {
              dst[((static_cast<size_t>(b) * g + t) * hk + h) * d + c] = tmp[t * d + c];
            }
          }
        }
      }
    }
  }
  // Round to the input dtype; the CPU encodes exactly the values the GPU reads.
  std::vector<uint16_t> kh(kf.size()), vh(vf.size());
  for (size_t i = 0; i < kf.size(); ++i) {
    if (cc.dtype == DType::kFloat16) {
      kh[i] = FloatToHalf(kf[i]);
      vh[i] = FloatToHalf(vf[i]);
      kf[i] = HalfToFloat(kh[i]);
      vf[i] = HalfToFloat(vh[i]);
    } else {
      kh[i] = FloatToBf16(kf[i]);
      vh[i] = FloatToBf16(vf[i]);
      kf[i] = Bf16ToFloat(kh[i]);
      vf[i] = Bf16ToFloat(vh[i]);
    }
  }
  std::vector<int32_t> ids = {2, 0, 3};
  DevBuf dk(kh.size() * 2), dv(vh.size() * 2), dids(ids.size() * 4);
  const size_t out_bytes = static_cast<size_t>(layers) * entries * hk * l.record_bytes;
  DevBuf dout(cc.mapped_host_dst ? 0 : out_bytes);
  void* host_out = nullptr;
  uint8_t* dst = dout.as<uint8_t>();
  if (cc.mapped_host_dst) {
    CUDA_OK(cudaHostAlloc(&host_out, out_bytes, cudaHostAllocMapped));
    void* dev_view = nullptr;
    CUDA_OK(cudaHostGetDevicePointer(&dev_view, host_out, 0));
    dst = static_cast<uint8_t*>(dev_view);
  }
  ASSERT_NE(dk.p, nullptr);
  ASSERT_NE(dst, nullptr);
  CUDA_OK(cudaMemcpy(dk.p, kh.data(), kh.size() * 2, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dv.p, vh.data(), vh.size() * 2, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dids.p, ids.data(), ids.size() * 4, cudaMemcpyHostToDevice));
  if (cc.mapped_host_dst) {
    std::memset(host_out, 0xA5, out_bytes);
  } else {
    CUDA_OK(cudaMemset(dout.p, 0xA5, out_bytes));
  }
  CompressParams p;
  p.preset = cc.preset;
  p.head_dim = d;
  p.num_kv_heads = hk;
  p.num_layers = layers;
  p.num_blocks = entries;
  p.dtype = cc.dtype;
  p.k = dk.p;
  p.v = dv.p;
  p.src_layer_stride = static_cast<int64_t>(per_layer);
  p.src_block_stride = static_cast<int64_t>(g) * hk * d;
  p.src_token_stride = hk * d;
  p.src_head_stride = d;
  p.src_channel_stride = 1;
  p.block_ids = dids.as<int32_t>();
  p.dst = dst;
  p.dst_block_stride = static_cast<int64_t>(hk) * l.record_bytes;
  p.dst_layer_stride = p.dst_block_stride * entries;
  CUDA_OK(Compress(p, nullptr));
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<uint8_t> got(out_bytes);
  if (cc.mapped_host_dst) {
    std::memcpy(got.data(), host_out, out_bytes);
    CUDA_OK(cudaFreeHost(host_out));
  } else {
    CUDA_OK(cudaMemcpy(got.data(), dout.p, out_bytes, cudaMemcpyDeviceToHost));
  }

  RecordDiff diff;
  int records = 0, identical = 0;
  std::vector<float> kt(static_cast<size_t>(g) * d), vt(static_cast<size_t>(g) * d);
  std::vector<uint8_t> ref(l.record_bytes);
  for (int lay = 0; lay < layers; ++lay) {
    for (int e = 0; e < entries; ++e) {
      for (int h = 0; h < hk; ++h) {
        for (int t = 0; t < g; ++t) {
          for (int c = 0; c < d; ++c) {
            const size_t src =
                lay * per_layer + ((static_cast<size_t>(ids[e]) * g + t) * hk + h) * d + c;
            kt[t * d + c] = kf[src];
            vt[t * d + c] = vf[src];
          }
        }
        ASSERT_TRUE(cpu::EncodeTile(l, kt.data(), vt.data(), ref.data()).ok());
        const uint8_t* rec = got.data() +
                             (static_cast<size_t>(lay) * entries + e) * hk * l.record_bytes +
                             static_cast<size_t>(h) * l.record_bytes;
        CompareRecords(l, rec, ref.data(), diff);
        ++records;
        identical += std::memcmp(rec, ref.data(), l.record_bytes) == 0;
        CompareDecoded(l, rec, ref.data(), diff);
      }
    }
  }
  const double eq = static_cast<double>(diff.codes_equal) / diff.codes;
  std::printf(
      "%s D=%d %s pattern=%d: codes equal %.5f%%, off>1 %zu, scales >1ulp %zu/%zu "
      "(s_col_K %zu zp_K %zu s_row_K %zu s_col_V %zu s_row_V %zu zp_V %zu)\n",
      std::string(PresetName(cc.preset)).c_str(), d, cc.dtype == DType::kFloat16 ? "fp16" : "bf16",
      cc.pattern, 100.0 * eq, diff.codes_off_by_more, diff.scales_bad, diff.scales,
      diff.group_bad[0], diff.group_bad[1], diff.group_bad[2], diff.group_bad[3], diff.group_bad[4],
      diff.group_bad[5]);
  std::printf(
      "  records byte-identical %d/%d; decoded elements beyond 4e-3 of the tile max: "
      "%zu/%zu\n",
      identical, records, diff.decoded_bad, diff.decoded);
  // The tolerance: >= 99.9% of codes equal, none off by more than 1, every scale
  // field within 1 fp16 ulp (the kernel follows the CPU's arithmetic contract, so in
  // practice the records are identical).
  EXPECT_GE(eq, 0.999);
  EXPECT_EQ(diff.codes_off_by_more, 0u);
  EXPECT_EQ(diff.scales_bad, 0u);
  EXPECT_LE(diff.decoded_bad, diff.decoded / 1000);
  EXPECT_EQ(diff.padding_bad, 0u);
}

class KvarnCudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(KvarnCudaTest, CompressMatchesCpuReferenceAllPresetsAndHeadDims) {
  const uint32_t seed = FreshSeed();
  int i = 0;
  for (Preset preset : kAllPresets) {
    for (int d : kSupportedHeadDims) {
      for (int pattern = 0; pattern < 3; ++pattern) {
        SCOPED_TRACE(std::string(PresetName(preset)) + " D=" + std::to_string(d) + " pattern " +
                     std::to_string(pattern));
        RunCompressCase({preset, d, DType::kFloat16, pattern}, seed + (i++));
      }
    }
  }
}

TEST_F(KvarnCudaTest, CompressBf16Input) {
  const uint32_t seed = FreshSeed();
  RunCompressCase({Preset::kK4V2G128, 128, DType::kBFloat16, 0}, seed);
  RunCompressCase({Preset::kK4V4G64, 64, DType::kBFloat16, 0}, seed + 1);
}

TEST_F(KvarnCudaTest, CompressIntoMappedPinnedHostMemory) {
  RunCompressCase({Preset::kK4V2G128, 128, DType::kFloat16, 0, /*mapped_host_dst=*/true},
                  FreshSeed());
}

TEST_F(KvarnCudaTest, CompressRejectsBadArguments) {
  CompressParams p;
  EXPECT_EQ(Compress(p, nullptr), cudaErrorInvalidValue);
  p.head_dim = 96;
  EXPECT_EQ(Compress(p, nullptr), cudaErrorInvalidValue);
}

TEST_F(KvarnCudaTest, DecompressMatchesCpuReference) {
  std::mt19937 rng(FreshSeed());
  for (Preset preset : kAllPresets) {
    for (int d : kSupportedHeadDims) {
      const TileLayout l = MakeTileLayout(preset, d);
      const int g = l.group_size, hk = 3;
      std::vector<uint8_t> recs(static_cast<size_t>(hk) * l.record_bytes);
      std::vector<float> k(static_cast<size_t>(g) * d), v(k.size());
      for (int h = 0; h < hk; ++h) {
        FillKv(rng, 0, g, d, true, k.data());
        FillKv(rng, 0, g, d, false, v.data());
        ASSERT_TRUE(cpu::EncodeTile(l, k.data(), v.data(), recs.data() + h * l.record_bytes).ok());
      }
      DevBuf src(recs.size()), dk(static_cast<size_t>(hk) * g * d * 2), dv(dk.bytes);
      CUDA_OK(cudaMemcpy(src.p, recs.data(), recs.size(), cudaMemcpyHostToDevice));
      for (int rotated = 0; rotated < 2; ++rotated) {
        CUDA_OK(cudaMemset(dk.p, 0xFF, dk.bytes));
        CUDA_OK(cudaMemset(dv.p, 0xFF, dv.bytes));
        DecompressParams p;
        p.preset = preset;
        p.head_dim = d;
        p.num_kv_heads = hk;
        p.num_blocks = 1;
        p.src = src.as<uint8_t>();
        p.src_block_stride = static_cast<int64_t>(recs.size());
        p.k = dk.p;
        p.v = dv.p;
        // Layout [G][Hk][D].
        p.dst_block_stride = static_cast<int64_t>(g) * hk * d;
        p.dst_token_stride = hk * d;
        p.dst_head_stride = d;
        p.rotated = rotated != 0;
        CUDA_OK(Decompress(p, nullptr));
        CUDA_OK(cudaDeviceSynchronize());
        std::vector<uint16_t> gk(dk.bytes / 2), gv(dv.bytes / 2), rk(static_cast<size_t>(g) * d),
            rv(rk.size());
        CUDA_OK(cudaMemcpy(gk.data(), dk.p, dk.bytes, cudaMemcpyDeviceToHost));
        CUDA_OK(cudaMemcpy(gv.data(), dv.p, dv.bytes, cudaMemcpyDeviceToHost));
        size_t bad = 0;
        for (int h = 0; h < hk; ++h) {
          cpu::DecompressTile(l, recs.data() + h * l.record_bytes, rk.data(), rv.data(),
                              rotated != 0);
          for (int t = 0; t < g; ++t) {
            for (int c = 0; c < d; ++c) {
              const size_t gi = (static_cast<size_t>(t) * hk + h) * d + c;
              const float a = HalfToFloat(gk[gi]), b = HalfToFloat(rk[t * d + c]);
              const float av = HalfToFloat(gv[gi]), bv = HalfToFloat(rv[t * d + c]);
              if (std::fabs(a - b) > 1e-3f * std::max(1.f, std::fabs(b))) ++bad;
              if (std::fabs(av - bv) > 1e-3f * std::max(1.f, std::fabs(bv))) ++bad;
            }
          }
        }
        EXPECT_EQ(bad, 0u) << PresetName(preset) << " D=" << d << " rotated=" << rotated;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------
// Attention.

struct Request {
  int seq_len;
  bool sink_fp16;           // block 0 kept FP16
  std::vector<float> k, v;  // [seq][Hk][D] (un-rotated)
};

struct AttnCase {
  Preset preset = Preset::kK4V2G128;
  int head_dim = 128;
  int num_q_heads = 32, num_kv_heads = 8, query_tokens = 1;
  std::vector<int> seq_lens;
  bool sink = true;
  int force_splits = 0;
  DType q_dtype = DType::kFloat16;
  bool graph = false;
};

void RunAttnCase(const AttnCase& ac, uint32_t seed) {
  std::mt19937 rng(seed);
  const int d = ac.head_dim, hk = ac.num_kv_heads, hq = ac.num_q_heads, T = ac.query_tokens;
  const TileLayout l = MakeTileLayout(ac.preset, d);
  const int g = l.group_size;
  const int batch = static_cast<int>(ac.seq_lens.size());
  int max_seq = 0;
  for (int s : ac.seq_lens) max_seq = std::max(max_seq, s);
  const int max_blocks = std::max(1, (max_seq + g - 1) / g);

  // Build requests, their sections, and the two page pools.
  std::vector<Request> reqs(batch);
  std::vector<std::vector<uint8_t>> tile_pages, fp16_pages;
  std::vector<int32_t> table(static_cast<size_t>(batch) * max_blocks, 0x7fffffff);
  std::vector<float> tk(static_cast<size_t>(g) * d), tv(tk.size());
  const size_t tile_page_bytes = static_cast<size_t>(hk) * l.record_bytes;
  const size_t fp16_page_bytes = static_cast<size_t>(hk) * 2 * g * d * 2;
  for (int b = 0; b < batch; ++b) {
    Request& r = reqs[b];
    r.seq_len = ac.seq_lens[b];
    r.sink_fp16 = ac.sink;
    r.k.resize(static_cast<size_t>(r.seq_len) * hk * d);
    r.v.resize(r.k.size());
    for (int h = 0; h < hk; ++h) {
      std::vector<float> kk(static_cast<size_t>(std::max(r.seq_len, 1)) * d), vv(kk.size());
      FillKv(rng, 0, r.seq_len, d, true, kk.data());
      FillKv(rng, 0, r.seq_len, d, false, vv.data());
      for (int t = 0; t < r.seq_len; ++t) {
        for (int c = 0; c < d; ++c) {
          r.k[(static_cast<size_t>(t) * hk + h) * d + c] = kk[t * d + c];
          r.v[(static_cast<size_t>(t) * hk + h) * d + c] = vv[t * d + c];
        }
      }
    }
    const int nblk = (r.seq_len + g - 1) / g;
    for (int j = 0; j < nblk; ++j) {
      const int n = std::min(g, r.seq_len - j * g);
      const bool fp16 = n < g || (j == 0 && r.sink_fp16);
      if (fp16) {
        std::vector<uint8_t> page(fp16_page_bytes, 0xCD);
        cpu::EncodeFp16Section(d, hk, n, r.k.data() + static_cast<size_t>(j) * g * hk * d,
                               r.v.data() + static_cast<size_t>(j) * g * hk * d,
                               reinterpret_cast<uint16_t*>(page.data()));
        fp16_pages.push_back(std::move(page));
        table[static_cast<size_t>(b) * max_blocks + j] = -static_cast<int32_t>(fp16_pages.size());
      } else {
        std::vector<uint8_t> page(tile_page_bytes);
        for (int h = 0; h < hk; ++h) {
          for (int t = 0; t < g; ++t) {
            for (int c = 0; c < d; ++c) {
              const size_t src = ((static_cast<size_t>(j) * g + t) * hk + h) * d + c;
              tk[t * d + c] = r.k[src];
              tv[t * d + c] = r.v[src];
            }
          }
          ASSERT_TRUE(
              cpu::EncodeTile(l, tk.data(), tv.data(), page.data() + h * l.record_bytes).ok());
        }
        tile_pages.push_back(std::move(page));
        table[static_cast<size_t>(b) * max_blocks + j] =
            static_cast<int32_t>(tile_pages.size() - 1);
      }
    }
  }
  // Shuffle tile page ids (pages are found through the table only).
  std::vector<int> perm(tile_pages.size());
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<uint8_t> tile_pool(std::max<size_t>(1, tile_pages.size()) * tile_page_bytes, 0xEE);
  for (size_t i = 0; i < tile_pages.size(); ++i) {
    std::memcpy(tile_pool.data() + perm[i] * tile_page_bytes, tile_pages[i].data(),
                tile_page_bytes);
  }
  for (auto& e : table) {
    if (e >= 0 && e != 0x7fffffff) e = perm[e];
  }
  std::vector<uint8_t> fp16_pool(std::max<size_t>(1, fp16_pages.size()) * fp16_page_bytes);
  for (size_t i = 0; i < fp16_pages.size(); ++i) {
    std::memcpy(fp16_pool.data() + i * fp16_page_bytes, fp16_pages[i].data(), fp16_page_bytes);
  }
  // Queries.
  const int rows = hq * T;
  std::vector<uint16_t> qh(static_cast<size_t>(batch) * rows * d);
  std::vector<float> qf(qh.size());
  std::normal_distribution<float> n01(0.f, 1.f);
  for (size_t i = 0; i < qh.size(); ++i) {
    const float x = 1.5f * n01(rng);
    if (ac.q_dtype == DType::kFloat16) {
      qh[i] = FloatToHalf(x);
      qf[i] = HalfToFloat(qh[i]);
    } else {
      qh[i] = FloatToBf16(x);
      qf[i] = Bf16ToFloat(qh[i]);
    }
  }
  for (auto& e : table) {
    if (e == 0x7fffffff) e = 0;  // unmapped tail of the table: never read
  }
  DevBuf dq(qh.size() * 2), dout(qh.size() * 2), dlse(static_cast<size_t>(batch) * rows * 4),
      dtiles(tile_pool.size()), dfp16(fp16_pool.size()), dtable(table.size() * 4),
      dlens(static_cast<size_t>(batch) * 4);
  CUDA_OK(cudaMemcpy(dq.p, qh.data(), qh.size() * 2, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dtiles.p, tile_pool.data(), tile_pool.size(), cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dfp16.p, fp16_pool.data(), fp16_pool.size(), cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dtable.p, table.data(), table.size() * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemcpy(dlens.p, ac.seq_lens.data(), batch * 4, cudaMemcpyHostToDevice));
  CUDA_OK(cudaMemset(dout.p, 0xFF, dout.bytes));  // NaN poison
  CUDA_OK(cudaMemset(dlse.p, 0xFF, dlse.bytes));

  DecodeAttentionParams p;
  p.preset = ac.preset;
  p.head_dim = d;
  p.num_q_heads = hq;
  p.num_kv_heads = hk;
  p.num_query_tokens = T;
  p.batch = batch;
  p.max_seq_len = max_seq;
  p.softmax_scale = 1.f / std::sqrt(static_cast<float>(d));
  p.q_dtype = ac.q_dtype;
  p.q = dq.p;
  p.out = dout.p;
  p.lse = dlse.as<float>();
  p.tile_pages = dtiles.as<uint8_t>();
  p.tile_page_stride = static_cast<int64_t>(tile_page_bytes);
  p.fp16_pages = dfp16.as<uint8_t>();
  p.fp16_page_stride = static_cast<int64_t>(fp16_page_bytes);
  p.block_tables = dtable.as<int32_t>();
  p.block_table_stride = max_blocks;
  p.seq_lens = dlens.as<int32_t>();
  p.force_num_splits = ac.force_splits;
  p.workspace_bytes = DecodeAttentionWorkspaceBytes(batch, hq, T, d, max_seq, ac.preset);
  DevBuf ws(p.workspace_bytes);
  p.workspace = ws.p;
  if (ac.graph) {
    cudaStream_t s;
    CUDA_OK(cudaStreamCreate(&s));
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CUDA_OK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    CUDA_OK(DecodeAttention(p, s));
    CUDA_OK(cudaStreamEndCapture(s, &graph));
    CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
    CUDA_OK(cudaGraphLaunch(exec, s));
    CUDA_OK(cudaStreamSynchronize(s));
    CUDA_OK(cudaMemset(dout.p, 0xFF, dout.bytes));  // replay must rewrite everything
    CUDA_OK(cudaGraphLaunch(exec, s));
    CUDA_OK(cudaStreamSynchronize(s));
    CUDA_OK(cudaGraphExecDestroy(exec));
    CUDA_OK(cudaGraphDestroy(graph));
    CUDA_OK(cudaStreamDestroy(s));
  } else {
    CUDA_OK(DecodeAttention(p, nullptr));
  }
  CUDA_OK(cudaDeviceSynchronize());
  std::vector<uint16_t> out(qh.size());
  std::vector<float> lse(static_cast<size_t>(batch) * rows);
  CUDA_OK(cudaMemcpy(out.data(), dout.p, dout.bytes, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(lse.data(), dlse.p, dlse.bytes, cudaMemcpyDeviceToHost));

  // Reference per request and query token.
  double worst_margin = -1e30;
  for (int b = 0; b < batch; ++b) {
    const Request& r = reqs[b];
    for (int i = 0; i < T; ++i) {
      const int vis = r.seq_len - T + 1 + i;
      std::vector<float> o64(static_cast<size_t>(hq) * d), o32(o64.size()), l64(hq), l32(hq);
      std::vector<float> qrow(static_cast<size_t>(hq) * d);
      for (int h = 0; h < hq; ++h) {
        for (int c = 0; c < d; ++c) {
          qrow[h * d + c] = qf[((static_cast<size_t>(b) * rows) + i * hq + h) * d + c];
        }
      }
      if (vis <= 0) {
        for (int h = 0; h < hq; ++h) {
          const size_t row = static_cast<size_t>(b) * rows + i * hq + h;
          for (int c = 0; c < d; ++c) {
            const float x = ac.q_dtype == DType::kFloat16 ? HalfToFloat(out[row * d + c])
                                                          : Bf16ToFloat(out[row * d + c]);
            EXPECT_EQ(x, 0.f);
          }
          EXPECT_TRUE(std::isinf(lse[row]) && lse[row] < 0);
        }
        continue;
      }
      // Sections for the visible prefix: the block holding the cut is re-made in FP16 for
      // the visible token count (only FP16 blocks are ever cut: T <= tail length).
      std::vector<std::vector<uint8_t>> owned;
      std::vector<cpu::BlockSection> secs;
      const int nblk = (vis + g - 1) / g;
      for (int j = 0; j < nblk; ++j) {
        const int n = std::min(g, vis - j * g);
        const int32_t e = table[static_cast<size_t>(b) * max_blocks + j];
        if (e >= 0) {
          ASSERT_EQ(n, g) << "test setup: a compressed block cut by the causal mask";
          secs.push_back({BlockEncoding::kTiles, g, tile_pool.data() + e * tile_page_bytes});
        } else {
          owned.emplace_back(static_cast<size_t>(hk) * 2 * n * d * 2);
          cpu::EncodeFp16Section(d, hk, n, r.k.data() + static_cast<size_t>(j) * g * hk * d,
                                 r.v.data() + static_cast<size_t>(j) * g * hk * d,
                                 reinterpret_cast<uint16_t*>(owned.back().data()));
          secs.push_back({BlockEncoding::kFp16, n, owned.back().data()});
        }
      }
      ASSERT_TRUE(cpu::AttendReference(l, hk, secs, qrow.data(), hq, p.softmax_scale, o64.data(),
                                       l64.data(), true)
                      .ok());
      ASSERT_TRUE(cpu::AttendReference(l, hk, secs, qrow.data(), hq, p.softmax_scale, o32.data(),
                                       l32.data(), false)
                      .ok());
      double e_gpu = 0, e_cpu = 0, nref = 0;
      for (int h = 0; h < hq; ++h) {
        const size_t row = static_cast<size_t>(b) * rows + i * hq + h;
        for (int c = 0; c < d; ++c) {
          const float x = ac.q_dtype == DType::kFloat16 ? HalfToFloat(out[row * d + c])
                                                        : Bf16ToFloat(out[row * d + c]);
          ASSERT_TRUE(std::isfinite(x)) << "b=" << b << " row=" << row << " c=" << c;
          const double ref = o64[h * d + c];
          e_gpu += (x - ref) * (x - ref);
          e_cpu += (o32[h * d + c] - ref) * (o32[h * d + c] - ref);
          nref += ref * ref;
        }
        EXPECT_NEAR(lse[row], l64[h], 2e-3 * std::max(1.f, std::fabs(l64[h])))
            << "b=" << b << " i=" << i << " h=" << h;
      }
      const double rel_gpu = std::sqrt(e_gpu / nref), rel_cpu = std::sqrt(e_cpu / nref);
      // Output rounding to the q dtype is part of the GPU error: bf16 rounds at 2^-9.
      const double tol = rel_cpu + 1e-3 + (ac.q_dtype == DType::kBFloat16 ? 4e-3 : 0.0);
      worst_margin = std::max(worst_margin, rel_gpu - tol);
      EXPECT_LE(rel_gpu, tol) << "b=" << b << " i=" << i << " seq=" << r.seq_len;
    }
  }
  std::printf("attention %s D=%d B=%d Hq=%d Hk=%d T=%d splits=%d: worst (err - tol) %.3g\n",
              std::string(PresetName(ac.preset)).c_str(), d, batch, hq, hk, T, ac.force_splits,
              worst_margin);
}

TEST_F(KvarnCudaTest, AttentionRaggedBatchSinkAndTailAllPresets) {
  const uint32_t seed = FreshSeed();
  int i = 0;
  for (Preset preset : kAllPresets) {
    AttnCase c;
    c.preset = preset;
    c.seq_lens = {1, 127, 128, 300, 1000, 0, 2049};
    RunAttnCase(c, seed + i++);
  }
}

TEST_F(KvarnCudaTest, AttentionSingleRequestNoSinkExactBlocks) {
  AttnCase c;
  c.seq_lens = {4096};
  c.sink = false;
  RunAttnCase(c, FreshSeed());
}

TEST_F(KvarnCudaTest, AttentionForcedSplitsAgree) {
  const uint32_t seed = FreshSeed();
  for (int s : {1, 2, 3, 8}) {
    AttnCase c;
    c.seq_lens = {2000, 700};
    c.force_splits = s;
    RunAttnCase(c, seed);
  }
}

TEST_F(KvarnCudaTest, AttentionLargeBatch) {
  std::mt19937 rng(FreshSeed());
  AttnCase c;
  std::uniform_int_distribution<int> len(1, 700);
  for (int b = 0; b < 64; ++b) c.seq_lens.push_back(len(rng));
  RunAttnCase(c, rng());
}

TEST_F(KvarnCudaTest, AttentionGqaRatios) {
  const uint32_t seed = FreshSeed();
  for (int r : {1, 2, 3, 8}) {
    AttnCase c;
    c.num_kv_heads = 2;
    c.num_q_heads = 2 * r;
    c.seq_lens = {517, 129};
    RunAttnCase(c, seed + r);
  }
}

TEST_F(KvarnCudaTest, AttentionMultiQueryCausal) {
  const uint32_t seed = FreshSeed();
  for (int T : {2, 5, 8}) {
    AttnCase c;
    c.num_q_heads = 8;
    c.num_kv_heads = 2;
    c.query_tokens = T;
    c.seq_lens = {128 * 3 + 20, 128 + 9, 8};  // cuts fall in FP16 tails
    RunAttnCase(c, seed + T);
  }
}

TEST_F(KvarnCudaTest, AttentionBf16QueryAndGraphCapture) {
  AttnCase c;
  c.q_dtype = DType::kBFloat16;
  c.seq_lens = {640, 333};
  RunAttnCase(c, FreshSeed());
  AttnCase gcase;
  gcase.seq_lens = {1500, 40, 900};
  gcase.graph = true;
  RunAttnCase(gcase, FreshSeed());
}

TEST_F(KvarnCudaTest, AttentionHeadDims64And256AllPresets) {
  const uint32_t seed = FreshSeed();
  int i = 0;
  for (int d : {64, 256}) {
    for (Preset preset : kAllPresets) {
      AttnCase c;
      c.head_dim = d;
      c.preset = preset;
      c.num_q_heads = 8;
      c.num_kv_heads = 2;
      c.seq_lens = {1, 127, 128, 300, 1000, 0, 2049};
      RunAttnCase(c, seed + i++);
    }
    AttnCase split;  // forced split-K with the merge kernel
    split.head_dim = d;
    split.num_q_heads = 16;
    split.num_kv_heads = 2;
    split.seq_lens = {2000, 700};
    split.force_splits = 3;
    RunAttnCase(split, seed + i++);
    AttnCase mq;  // multi-query, causal within the new tokens, GQA 3
    mq.head_dim = d;
    mq.num_q_heads = 6;
    mq.num_kv_heads = 2;
    mq.query_tokens = 5;
    mq.seq_lens = {128 * 3 + 20, 128 + 9, 8};
    RunAttnCase(mq, seed + i++);
  }
}

TEST_F(KvarnCudaTest, AttentionRejectsBadArguments) {
  DecodeAttentionParams p;
  EXPECT_EQ(DecodeAttention(p, nullptr), cudaErrorInvalidValue);
}

}  // namespace
}  // namespace kvtier::kernels::cuda
