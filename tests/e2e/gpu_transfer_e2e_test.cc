// GPU export -> kvtier-server -> GPU import -> fused decode attention, against the CPU
// codec and reference attention. Skips without a CUDA device (CI compiles it).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <vector>

#include "client/client.h"
#include "client/gpu/gpu_transfer.h"
#include "gtest/gtest.h"
#include "kernels/cpu/codec.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/sequence.h"
#include "kernels/cpu/synth.h"
#include "kernels/cuda/kvarn_cuda.h"
#include "kernels/payload.h"
#include "tools/demo_workload.h"

namespace kvtier::client::gpu {
namespace {

constexpr int kLayers = 2, kHeads = 2, kQHeads = 8, kD = 128, kG = 128, kBlocks = 5;
constexpr int kTokens = kBlocks * kG, kPhysBlocks = 8;

#define CUDA_OK(x) ASSERT_EQ((x), cudaSuccess) << #x

bool HaveDevice() {
  int n = 0;
  const bool ok = cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
  cudaGetLastError();
  return ok;
}

double RelL2(const float* a, const float* b, size_t n) {
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    num += (double{a[i]} - b[i]) * (double{a[i]} - b[i]);
    den += double{b[i]} * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

class GpuTransferE2eTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveDevice()) GTEST_SKIP() << "no CUDA device";
    tools::LocalServer::Options so;
    so.binary = tools::DefaultServerBinary();  // next to this binary, or the build's
    ASSERT_TRUE(server_.Start(so).ok());
    ClientOptions co;
    co.endpoints = {server_.endpoint()};
    auto c = Client::Create(co);
    ASSERT_TRUE(c.ok());
    client_ = std::move(*c);
    opt_.ns = "gpu-e2e/test";
    opt_.num_layers = kLayers;
    opt_.num_kv_heads = kHeads;
    opt_.blocks_per_batch = 2;  // several batches through the pool
    opt_.pool_slots = 2;
    // Synthetic KV per layer, [tokens][heads][D], stored at permuted physical blocks.
    const size_t per_block = static_cast<size_t>(kG) * kHeads * kD;
    std::vector<uint16_t> host_k(kLayers * kPhysBlocks * per_block, 0);
    std::vector<uint16_t> host_v(host_k.size(), 0);
    for (int l = 0; l < kLayers; ++l) {
      auto kv = kernels::cpu::GenerateSynthKv({.tokens = kTokens,
                                               .num_kv_heads = kHeads,
                                               .num_q_heads = kQHeads,
                                               .head_dim = kD,
                                               .num_queries = 1,
                                               .seed = 40u + l});
      ASSERT_TRUE(kv.ok());
      for (int b = 0; b < kBlocks; ++b) {
        for (size_t x = 0; x < per_block; ++x) {
          const size_t dst = (l * kPhysBlocks + phys_[b]) * per_block + x;
          host_k[dst] = kernels::cpu::FloatToHalf(kv->k[b * per_block + x]);
          host_v[dst] = kernels::cpu::FloatToHalf(kv->v[b * per_block + x]);
        }
      }
      k_.push_back(std::move(kv->k));
      v_.push_back(std::move(kv->v));
      q_.push_back(std::move(kv->q));
    }
    CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&dk_), host_k.size() * 2));
    CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&dv_), host_v.size() * 2));
    CUDA_OK(cudaMemcpy(dk_, host_k.data(), host_k.size() * 2, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(dv_, host_v.data(), host_v.size() * 2, cudaMemcpyHostToDevice));
    for (int l = 0; l < kLayers; ++l) {
      PagedLayer p;
      p.k = static_cast<uint16_t*>(dk_) + l * kPhysBlocks * per_block;
      p.v = static_cast<uint16_t*>(dv_) + l * kPhysBlocks * per_block;
      p.block_stride = per_block;
      p.token_stride = kHeads * kD;
      p.head_stride = kD;
      layers_.push_back(p);
    }
    std::vector<int32_t> tokens(kTokens);
    std::iota(tokens.begin(), tokens.end(), 100);
    chain_ = Client::ChainHashes(opt_.ns, tokens, kG);
    block_ids_.assign(phys_, phys_ + kBlocks);
  }

  void TearDown() override {
    cudaFree(dk_);
    cudaFree(dv_);
  }

  tools::LocalServer server_;
  std::unique_ptr<Client> client_;
  TransferOptions opt_;
  const int32_t phys_[kBlocks] = {6, 2, 7, 0, 3};
  void* dk_ = nullptr;
  void* dv_ = nullptr;
  std::vector<PagedLayer> layers_;
  std::vector<std::vector<float>> k_, v_, q_;
  std::vector<ChainHash> chain_;
  std::vector<int32_t> block_ids_;
};

TEST_F(GpuTransferE2eTest, ExportImportAttendMatchesCpuReference) {
  auto exporter = Exporter::Create(client_.get(), opt_);
  ASSERT_TRUE(exporter.ok()) << exporter.status();
  auto s = (*exporter)->Export(layers_, CacheDType::kFloat16, block_ids_, chain_);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->already_present, 0u);
  EXPECT_EQ(s->stored, static_cast<size_t>(kBlocks));
  auto again = (*exporter)->Export(layers_, CacheDType::kFloat16, block_ids_, chain_);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->already_present, static_cast<size_t>(kBlocks));
  EXPECT_EQ(again->stored, 0u);

  // Compressed paged cache of the decode side, poisoned.
  const kernels::TileLayout tl = kernels::MakeTileLayout(opt_.preset, kD);
  const size_t tile_page = kHeads * tl.record_bytes, fp16_page = kHeads * 2 * kG * kD * 2;
  constexpr int kTilePages = 8, kFp16Pages = 4;
  uint8_t *tiles = nullptr, *fp16 = nullptr;
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&tiles), kLayers * kTilePages * tile_page));
  CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&fp16), kLayers * kFp16Pages * fp16_page));
  CUDA_OK(cudaMemset(tiles, 0xA5, kLayers * kTilePages * tile_page));
  CUDA_OK(cudaMemset(fp16, 0xA5, kLayers * kFp16Pages * fp16_page));
  std::vector<CompressedLayer> pages;
  for (int l = 0; l < kLayers; ++l) {
    pages.push_back({tiles + l * kTilePages * tile_page, static_cast<int64_t>(tile_page),
                     fp16 + l * kFp16Pages * fp16_page, static_cast<int64_t>(fp16_page)});
  }
  auto importer = Importer::Create(client_.get(), opt_);
  ASSERT_TRUE(importer.ok()) << importer.status();
  const std::vector<int32_t> page_ids = {3, 1, 4, 0, 2};
  auto r = (*importer)->Import(pages, chain_, page_ids);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->blocks, static_cast<size_t>(kBlocks));
  EXPECT_EQ(r->tokens, static_cast<size_t>(kTokens));
  EXPECT_EQ(r->block_table, (std::vector<int32_t>{-4, 1, 4, 0, 2}));  // block 0: FP16 sink

  std::vector<uint8_t> host_tiles(kLayers * kTilePages * tile_page),
      host_fp16(kLayers * kFp16Pages * fp16_page);
  CUDA_OK(cudaMemcpy(host_tiles.data(), tiles, host_tiles.size(), cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(host_fp16.data(), fp16, host_fp16.size(), cudaMemcpyDeviceToHost));
  const size_t row = kHeads * kD;
  for (int l = 0; l < kLayers; ++l) {
    // The sink page holds exactly the CPU's FP16 section of block 0.
    std::vector<uint16_t> want(kHeads * 2 * kG * kD);
    kernels::cpu::EncodeFp16Section(kD, kHeads, kG, k_[l].data(), v_[l].data(), want.data());
    EXPECT_EQ(
        std::memcmp(host_fp16.data() + (l * kFp16Pages + 3) * fp16_page, want.data(), fp16_page),
        0);
    // Tile pages decode to what the CPU codec's records decode to.
    for (int b = 1; b < kBlocks; ++b) {
      auto cpu = kernels::cpu::EncodeTiles(tl, kHeads, kG, k_[l].data() + b * kG * row,
                                           v_[l].data() + b * kG * row);
      ASSERT_TRUE(cpu.ok());
      const uint8_t* gpu = host_tiles.data() + (l * kTilePages + page_ids[b]) * tile_page;
      for (int h = 0; h < kHeads; ++h) {
        std::vector<float> kg(kG * kD), vg(kG * kD), kc(kG * kD), vc(kG * kD);
        kernels::cpu::DecodeTile(tl, gpu + h * tl.record_bytes, kg.data(), vg.data());
        kernels::cpu::DecodeTile(tl, cpu->data() + h * tl.record_bytes, kc.data(), vc.data());
        EXPECT_LT(RelL2(kg.data(), kc.data(), kg.size()), 0.02) << "layer " << l << " block " << b;
        EXPECT_LT(RelL2(vg.data(), vc.data(), vg.size()), 0.05) << "layer " << l << " block " << b;
      }
    }
  }
  // Pages not mapped keep their poison.
  EXPECT_EQ(host_tiles[(0 * kTilePages + 5) * tile_page], 0xA5);

  // Fused decode attention on the device over the imported pages vs the CPU reference
  // over the same bytes.
  for (int l = 0; l < kLayers; ++l) {
    std::vector<kernels::cpu::BlockSection> sections;
    for (int b = 0; b < kBlocks; ++b) {
      const int32_t e = r->block_table[b];
      sections.push_back(
          e >= 0 ? kernels::cpu::BlockSection{kernels::BlockEncoding::kTiles, kG,
                                              host_tiles.data() + (l * kTilePages + e) * tile_page}
                 : kernels::cpu::BlockSection{
                       kernels::BlockEncoding::kFp16, kG,
                       host_fp16.data() + (l * kFp16Pages + (-e - 1)) * fp16_page});
    }
    const float scale = 1.0f / std::sqrt(static_cast<float>(kD));
    std::vector<float> ref(kQHeads * kD);
    ASSERT_TRUE(kernels::cpu::AttendReference(tl, kHeads, sections, q_[l].data(), kQHeads, scale,
                                              ref.data(), nullptr)
                    .ok());
    std::vector<uint16_t> q16(kQHeads * kD);
    for (size_t i = 0; i < q16.size(); ++i) q16[i] = kernels::cpu::FloatToHalf(q_[l][i]);
    void *dq, *dout, *dws;
    int32_t *dtable, *dlen;
    CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&dq), q16.size() * 2));
    CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&dout), q16.size() * 2));
    CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&dtable), kBlocks * 4));
    CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&dlen), 4));
    CUDA_OK(cudaMemcpy(dq, q16.data(), q16.size() * 2, cudaMemcpyHostToDevice));
    CUDA_OK(cudaMemcpy(dtable, r->block_table.data(), kBlocks * 4, cudaMemcpyHostToDevice));
    const int32_t len = kTokens;
    CUDA_OK(cudaMemcpy(dlen, &len, 4, cudaMemcpyHostToDevice));
    kernels::cuda::DecodeAttentionParams a;
    a.num_q_heads = kQHeads;
    a.num_kv_heads = kHeads;
    a.batch = 1;
    a.max_seq_len = kTokens;
    a.softmax_scale = scale;
    a.q = dq;
    a.out = dout;
    a.tile_pages = pages[l].tile_pages;
    a.tile_page_stride = pages[l].tile_page_stride;
    a.fp16_pages = pages[l].fp16_pages;
    a.fp16_page_stride = pages[l].fp16_page_stride;
    a.block_tables = dtable;
    a.block_table_stride = kBlocks;
    a.seq_lens = dlen;
    a.workspace_bytes =
        kernels::cuda::DecodeAttentionWorkspaceBytes(1, kQHeads, 1, kD, kTokens, a.preset);
    CUDA_OK(cudaMalloc(reinterpret_cast<void**>(&dws), std::max<size_t>(a.workspace_bytes, 16)));
    a.workspace = dws;
    CUDA_OK(kernels::cuda::DecodeAttention(a, nullptr));
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<uint16_t> out16(q16.size());
    CUDA_OK(cudaMemcpy(out16.data(), dout, out16.size() * 2, cudaMemcpyDeviceToHost));
    std::vector<float> out(out16.size());
    for (size_t i = 0; i < out.size(); ++i) out[i] = kernels::cpu::HalfToFloat(out16[i]);
    EXPECT_LT(RelL2(out.data(), ref.data(), out.size()), 5e-3) << "layer " << l;
    cudaFree(dq);
    cudaFree(dout);
    cudaFree(dtable);
    cudaFree(dlen);
    cudaFree(dws);
  }

  // A block lost on the server: the import stops before it and leaves its pages alone.
  ASSERT_TRUE(client_->Delete(opt_.ns, 0, absl::MakeSpan(chain_).subspan(2, 1)).ok());
  CUDA_OK(cudaMemset(tiles, 0x5A, kLayers * kTilePages * tile_page));
  auto partial = (*importer)->Import(pages, chain_, page_ids);
  ASSERT_TRUE(partial.ok());
  EXPECT_EQ(partial->blocks, 2u);
  std::vector<uint8_t> after(tile_page);
  CUDA_OK(
      cudaMemcpy(after.data(), tiles + page_ids[2] * tile_page, tile_page, cudaMemcpyDeviceToHost));
  EXPECT_TRUE(std::all_of(after.begin(), after.end(), [](uint8_t x) { return x == 0x5A; }));
  cudaFree(tiles);
  cudaFree(fp16);
}

}  // namespace
}  // namespace kvtier::client::gpu
