// GPU end-to-end benchmark (docs/benchmarks/e2e.md): a prompt's KV goes prefill GPU ->
// kvtier-server -> decode GPU, compressed (Exporter/Importer, KVarN k4v2_g128) and, as
// the baseline, as plain FP16 blocks through the same server and client; then fused
// decode attention over the imported compressed pages vs exact attention over the FP16
// KV. Defaults: Qwen3-32B shapes (64 layers, 8 KV heads, 64 query heads, head_dim 128),
// a 16384-token prompt.
//
//   gpu_e2e_bench [--server PATH] [--layers 64] [--kv_heads 8] [--q_heads 64]
//                 [--tokens 16384] [--reps 3] [--batch 8]
//
// Synthetic KV: kernels/cpu/synth.h for one layer of the whole prompt; layer l reuses it
// with its KV heads rotated by l (head h of layer l = head (h + l) % Hk of the generated
// layer), so every layer has the generator's statistics at a fraction of its CPU time.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <string>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "client/client.h"
#include "client/gpu/gpu_transfer.h"
#include "kernels/cpu/half.h"
#include "kernels/cpu/synth.h"
#include "kernels/cuda/kvarn_cuda.h"
#include "kernels/payload.h"
#include "tools/demo_workload.h"

namespace kvtier {
namespace {

using client::gpu::CacheDType;

absl::Status AsStatus(const absl::Status& s) { return s; }
template <typename T>
absl::Status AsStatus(const absl::StatusOr<T>& s) {
  return s.status();
}

#define CK(x)                                                                                 \
  do {                                                                                        \
    cudaError_t e_ = (x);                                                                     \
    if (e_ != cudaSuccess) {                                                                  \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

#define OK(x)                                                                                    \
  do {                                                                                           \
    absl::Status s_ = ::kvtier::AsStatus(x);                                                     \
    if (!s_.ok()) {                                                                              \
      std::fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, std::string(s_.message()).c_str()); \
      std::exit(1);                                                                              \
    }                                                                                            \
  } while (0)

struct Args {
  std::string server;
  int layers = 64, kv_heads = 8, q_heads = 64, tokens = 16384, reps = 3, batch = 8;
};

double Secs(absl::Time t0) { return absl::ToDoubleSeconds(absl::Now() - t0); }

// FP16 baseline export: each block's K and V of every layer copied (D2H) as they are into
// a kFp16 payload in pinned memory, sealed and Put; two pinned batches alternate so the
// copy of one overlaps the Put of the other.
struct Fp16Stats {
  double seconds = 0;
  uint64_t bytes = 0;
};
Fp16Stats ExportFp16(client::Client& c, const std::string& ns, const Args& a,
                     const std::vector<client::gpu::PagedLayer>& layers, int blocks) {
  const int g = 128;
  const kernels::PayloadHeader h =
      kernels::MakeFp16Header(kernels::kDefaultPreset, 128, a.layers, a.kv_heads, g, 0);
  const size_t payload = h.total_bytes();
  const size_t block_bytes = static_cast<size_t>(g) * a.kv_heads * 128 * 2;  // K or V
  std::vector<int32_t> tokens(blocks * g);
  std::iota(tokens.begin(), tokens.end(), 1);
  auto chain = client::Client::ChainHashes(ns, tokens, g);
  uint8_t* pinned[2];
  for (auto& p : pinned) CK(cudaMallocHost(reinterpret_cast<void**>(&p), payload * a.batch));
  cudaStream_t stream;
  CK(cudaStreamCreate(&stream));
  Fp16Stats st;
  const absl::Time t0 = absl::Now();
  OK(c.Lookup(ns, 0, chain, g));
  absl::Notification* done[2] = {nullptr, nullptr};
  absl::Status put_status[2];
  for (int start = 0, k = 0; start < blocks; start += a.batch, k ^= 1) {
    if (done[k]) {
      done[k]->WaitForNotification();
      delete done[k];
      done[k] = nullptr;
      OK(put_status[k]);
    }
    const int n = std::min(a.batch, blocks - start);
    for (int j = 0; j < n; ++j) {
      uint8_t* p = pinned[k] + j * payload;
      for (int l = 0; l < a.layers; ++l) {
        uint8_t* sec = p + kernels::kPayloadHeaderBytes + l * h.layer_section_bytes;
        const auto* kb =
            static_cast<const uint16_t*>(layers[l].k) + (start + j) * layers[l].block_stride;
        const auto* vb =
            static_cast<const uint16_t*>(layers[l].v) + (start + j) * layers[l].block_stride;
        CK(cudaMemcpyAsync(sec, kb, block_bytes, cudaMemcpyDeviceToHost, stream));
        CK(cudaMemcpyAsync(sec + block_bytes, vb, block_bytes, cudaMemcpyDeviceToHost, stream));
      }
    }
    CK(cudaStreamSynchronize(stream));
    std::vector<client::PutItem> items;
    for (int j = 0; j < n; ++j) {
      uint8_t* p = pinned[k] + j * payload;
      kernels::EncodeHeader(h, p);
      kernels::SealPayload(absl::MakeSpan(p, payload));
      items.push_back({chain[start + j], absl::Span<const uint8_t>(p, payload)});
      st.bytes += payload;
    }
    done[k] = new absl::Notification;
    absl::Notification* d = done[k];
    absl::Status* ps = &put_status[k];
    c.PutAsync(ns, 0, std::move(items), [d, ps](absl::StatusOr<std::vector<client::PutOutcome>> r) {
      *ps = r.status();
      d->Notify();
    });
  }
  for (int k = 0; k < 2; ++k) {
    if (done[k]) {
      done[k]->WaitForNotification();
      delete done[k];
      OK(put_status[k]);
    }
  }
  st.seconds = Secs(t0);
  for (auto& p : pinned) cudaFreeHost(p);
  cudaStreamDestroy(stream);
  return st;
}

int Main(int argc, char** argv) {
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  Args a;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string f = argv[i], v = argv[i + 1];
    if (f == "--server")
      a.server = v;
    else if (f == "--layers")
      a.layers = std::atoi(v.c_str());
    else if (f == "--kv_heads")
      a.kv_heads = std::atoi(v.c_str());
    else if (f == "--q_heads")
      a.q_heads = std::atoi(v.c_str());
    else if (f == "--tokens")
      a.tokens = std::atoi(v.c_str());
    else if (f == "--reps")
      a.reps = std::atoi(v.c_str());
    else if (f == "--batch")
      a.batch = std::atoi(v.c_str());
    else {
      std::fprintf(stderr, "unknown flag %s\n", f.c_str());
      return 2;
    }
  }
  if (a.server.empty()) a.server = tools::DefaultServerBinary();
  const int g = 128, d = 128, blocks = a.tokens / g;
  a.tokens = blocks * g;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf(
      "device: %s; prompt %d tokens (%d blocks), %d layers x %d KV heads x D%d, %d q heads\n",
      prop.name, a.tokens, blocks, a.layers, a.kv_heads, d, a.q_heads);

  tools::LocalServer server;
  tools::LocalServer::Options so;
  so.binary = a.server;
  so.memory_capacity = "48GiB";  // RAM tier only: measures the transfer path, not the SSD
  so.log_path = "/tmp/kvtier-gpu-e2e-server.log";
  OK(server.Start(so));
  client::ClientOptions co;
  co.endpoints = {server.endpoint()};
  co.timeout = absl::Seconds(120);
  co.max_blocks_per_put = 64;
  auto cl = client::Client::Create(co);
  OK(cl.status());
  client::Client& c = **cl;

  // Synthetic KV (one generated layer, heads rotated per layer) -> device paged caches.
  absl::Time t0 = absl::Now();
  auto kv = kernels::cpu::GenerateSynthKv({.tokens = a.tokens,
                                           .num_kv_heads = a.kv_heads,
                                           .num_q_heads = a.q_heads,
                                           .head_dim = d,
                                           .num_queries = 1,
                                           .seed = 7});
  OK(kv.status());
  const size_t row = static_cast<size_t>(a.kv_heads) * d;
  const size_t layer_elems = static_cast<size_t>(a.tokens) * row;
  std::vector<uint16_t> k16(layer_elems), v16(layer_elems);
  uint16_t *dk, *dv;
  CK(cudaMalloc(reinterpret_cast<void**>(&dk), layer_elems * a.layers * 2));
  CK(cudaMalloc(reinterpret_cast<void**>(&dv), layer_elems * a.layers * 2));
  auto layer_kv = [&](int l, std::vector<float>* k, std::vector<float>* v) {
    k->resize(layer_elems);
    v->resize(layer_elems);
    for (int t = 0; t < a.tokens; ++t) {
      for (int h = 0; h < a.kv_heads; ++h) {
        const size_t src = (static_cast<size_t>(t) * a.kv_heads + (h + l) % a.kv_heads) * d;
        const size_t dst = (static_cast<size_t>(t) * a.kv_heads + h) * d;
        std::copy_n(kv->k.begin() + src, d, k->begin() + dst);
        std::copy_n(kv->v.begin() + src, d, v->begin() + dst);
      }
    }
  };
  std::vector<float> kf, vf;
  std::vector<uint16_t> k16_base(layer_elems), v16_base(layer_elems);
  for (size_t i = 0; i < layer_elems; ++i) {
    k16_base[i] = kernels::cpu::FloatToHalf(kv->k[i]);
    v16_base[i] = kernels::cpu::FloatToHalf(kv->v[i]);
  }
  for (int l = 0; l < a.layers; ++l) {
    for (int t = 0; t < a.tokens; ++t) {
      for (int h = 0; h < a.kv_heads; ++h) {
        const size_t src = (static_cast<size_t>(t) * a.kv_heads + (h + l) % a.kv_heads) * d;
        const size_t dst = (static_cast<size_t>(t) * a.kv_heads + h) * d;
        std::memcpy(&k16[dst], &k16_base[src], d * 2);
        std::memcpy(&v16[dst], &v16_base[src], d * 2);
      }
    }
    CK(cudaMemcpy(dk + l * layer_elems, k16.data(), layer_elems * 2, cudaMemcpyHostToDevice));
    CK(cudaMemcpy(dv + l * layer_elems, v16.data(), layer_elems * 2, cudaMemcpyHostToDevice));
  }
  std::vector<client::gpu::PagedLayer> layers;
  for (int l = 0; l < a.layers; ++l) {
    layers.push_back({dk + l * layer_elems, dv + l * layer_elems, static_cast<int64_t>(g * row),
                      static_cast<int64_t>(row), d});
  }
  std::printf("setup (synthetic KV, upload): %.1f s\n", Secs(t0));

  client::gpu::TransferOptions o;
  o.num_layers = a.layers;
  o.num_kv_heads = a.kv_heads;
  o.blocks_per_batch = a.batch;
  o.pool_slots = 3;
  std::vector<int32_t> block_ids(blocks);
  std::iota(block_ids.begin(), block_ids.end(), 0);
  std::vector<int32_t> tokens(a.tokens);
  std::iota(tokens.begin(), tokens.end(), 1);

  // Decode side: compressed pages (tile + FP16 sink pages) and FP16 pages for the baseline.
  const kernels::TileLayout tl = kernels::MakeTileLayout(o.preset, d);
  const size_t tile_page = a.kv_heads * tl.record_bytes, fp16_page = row * 2 * g * 2;
  uint8_t *tiles, *fp16;
  CK(cudaMalloc(reinterpret_cast<void**>(&tiles),
                static_cast<size_t>(a.layers) * blocks * tile_page));
  CK(cudaMalloc(reinterpret_cast<void**>(&fp16),
                static_cast<size_t>(a.layers) * blocks * fp16_page));
  std::vector<client::gpu::CompressedLayer> pages;
  for (int l = 0; l < a.layers; ++l) {
    pages.push_back(
        {tiles + static_cast<size_t>(l) * blocks * tile_page, static_cast<int64_t>(tile_page),
         fp16 + static_cast<size_t>(l) * blocks * fp16_page, static_cast<int64_t>(fp16_page)});
  }

  std::vector<double> ex_c, im_c, ex_f, im_f;
  uint64_t bytes_c = 0, bytes_f = 0;
  client::gpu::ImportResult last;
  for (int rep = 0; rep < a.reps; ++rep) {
    // Fresh namespaces per repetition: every block is exported and imported in full.
    o.ns = "bench/qwen3-32b/k4v2_g128/rep" + std::to_string(rep);
    auto ex = client::gpu::Exporter::Create(&c, o);
    OK(ex.status());
    auto im = client::gpu::Importer::Create(&c, o);
    OK(im.status());
    auto chain = client::Client::ChainHashes(o.ns, tokens, g);
    CK(cudaDeviceSynchronize());
    t0 = absl::Now();
    auto es = (*ex)->Export(layers, CacheDType::kFloat16, block_ids, chain);
    OK(es.status());
    ex_c.push_back(Secs(t0));
    bytes_c = es->bytes_sent;
    t0 = absl::Now();
    auto ir = (*im)->Import(pages, chain, block_ids);
    OK(ir.status());
    im_c.push_back(Secs(t0));
    if (ir->blocks != static_cast<size_t>(blocks)) {
      std::fprintf(stderr, "import got %zu of %d blocks\n", ir->blocks, blocks);
      return 1;
    }
    last = *ir;

    const std::string fns = "bench/qwen3-32b/fp16/rep" + std::to_string(rep);
    Fp16Stats fs = ExportFp16(c, fns, a, layers, blocks);
    ex_f.push_back(fs.seconds);
    bytes_f = fs.bytes;
    auto fchain = client::Client::ChainHashes(fns, tokens, g);
    client::gpu::TransferOptions fo = o;
    fo.ns = fns;
    auto fim = client::gpu::Importer::Create(&c, fo);
    OK(fim.status());
    t0 = absl::Now();
    auto fr = (*fim)->Import(pages, fchain, block_ids);  // FP16 payloads -> FP16 pages
    OK(fr.status());
    im_f.push_back(Secs(t0));
    if (fr->blocks != static_cast<size_t>(blocks)) {
      std::fprintf(stderr, "fp16 import got %zu of %d blocks\n", fr->blocks, blocks);
      return 1;
    }
    // Free the server's RAM before the next repetition.
    OK(c.Delete(fns, 0, fchain).status());
    OK(c.Delete(o.ns, 0, chain).status());
    std::printf(
        "rep %d: compressed export %.3f s import %.3f s | fp16 export %.3f s import %.3f s\n", rep,
        ex_c.back(), im_c.back(), ex_f.back(), im_f.back());
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  const double ec = median(ex_c), ic = median(im_c), ef = median(ex_f), iff = median(im_f);

  // Attention: re-import the compressed blocks (last rep's pages are intact: the FP16
  // import wrote only FP16 pages, which hold the sink of the compressed import too, so
  // re-import the compressed prefix), then fused attention per layer vs exact FP16.
  {
    o.ns = "bench/qwen3-32b/k4v2_g128/attn";
    auto ex = client::gpu::Exporter::Create(&c, o);
    auto im = client::gpu::Importer::Create(&c, o);
    OK(ex.status());
    OK(im.status());
    auto chain = client::Client::ChainHashes(o.ns, tokens, g);
    OK((*ex)->Export(layers, CacheDType::kFloat16, block_ids, chain).status());
    auto ir = (*im)->Import(pages, chain, block_ids);
    OK(ir.status());
    last = *ir;
  }
  int32_t *dtable, *dlen;
  CK(cudaMalloc(reinterpret_cast<void**>(&dtable), blocks * 4));
  CK(cudaMalloc(reinterpret_cast<void**>(&dlen), 4));
  CK(cudaMemcpy(dtable, last.block_table.data(), blocks * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(dlen, &a.tokens, 4, cudaMemcpyHostToDevice));
  std::vector<uint16_t> q16(static_cast<size_t>(a.q_heads) * d), out16(q16.size());
  for (size_t i = 0; i < q16.size(); ++i) q16[i] = kernels::cpu::FloatToHalf(kv->q[i]);
  void *dq, *dout, *dws;
  CK(cudaMalloc(reinterpret_cast<void**>(&dq), q16.size() * 2));
  CK(cudaMalloc(reinterpret_cast<void**>(&dout), q16.size() * 2));
  CK(cudaMemcpy(dq, q16.data(), q16.size() * 2, cudaMemcpyHostToDevice));
  kernels::cuda::DecodeAttentionParams p;
  p.num_q_heads = a.q_heads;
  p.num_kv_heads = a.kv_heads;
  p.batch = 1;
  p.max_seq_len = a.tokens;
  p.softmax_scale = 1.0f / std::sqrt(static_cast<float>(d));
  p.q = dq;
  p.out = dout;
  p.block_tables = dtable;
  p.block_table_stride = blocks;
  p.seq_lens = dlen;
  p.workspace_bytes =
      kernels::cuda::DecodeAttentionWorkspaceBytes(1, a.q_heads, 1, d, a.tokens, p.preset);
  CK(cudaMalloc(reinterpret_cast<void**>(&dws), std::max<size_t>(p.workspace_bytes, 16)));
  p.workspace = dws;
  std::vector<double> errs;
  std::vector<double> ref;
  const int sample_layers[] = {0, a.layers / 2, a.layers - 1};
  for (int l : sample_layers) {
    p.tile_pages = pages[l].tile_pages;
    p.tile_page_stride = pages[l].tile_page_stride;
    p.fp16_pages = pages[l].fp16_pages;
    p.fp16_page_stride = pages[l].fp16_page_stride;
    CK(kernels::cuda::DecodeAttention(p, nullptr));
    CK(cudaDeviceSynchronize());
    CK(cudaMemcpy(out16.data(), dout, out16.size() * 2, cudaMemcpyDeviceToHost));
    std::vector<float> out(out16.size());
    for (size_t i = 0; i < out.size(); ++i) out[i] = kernels::cpu::HalfToFloat(out16[i]);
    layer_kv(l, &kf, &vf);
    for (size_t i = 0; i < layer_elems; ++i) {  // the FP16 values the prefill cache holds
      kf[i] = kernels::cpu::HalfToFloat(kernels::cpu::FloatToHalf(kf[i]));
      vf[i] = kernels::cpu::HalfToFloat(kernels::cpu::FloatToHalf(vf[i]));
    }
    tools::ExactAttention(a.q_heads, a.kv_heads, d, a.tokens, kv->q.data(), kf.data(), vf.data(),
                          &ref);
    auto e = tools::RowRelativeErrors(out.data(), ref, a.q_heads, d);
    errs.insert(errs.end(), e.begin(), e.end());
  }
  double mean = 0;
  for (double e : errs) mean += e;
  mean /= errs.size();
  const double mx = *std::max_element(errs.begin(), errs.end());

  const double gib = 1024.0 * 1024 * 1024;
  std::printf("\n| path | bytes | export (GPU -> server) | import (server -> GPU) | total |\n");
  std::printf("|---|---|---|---|---|\n");
  std::printf(
      "| KVarN k4v2_g128 (sink block FP16) | %.2f GiB | %.3f s (%.2f GiB/s) | %.3f s | %.3f s |\n",
      bytes_c / gib, ec, bytes_c / gib / ec, ic, ec + ic);
  std::printf("| FP16 | %.2f GiB | %.3f s (%.2f GiB/s) | %.3f s | %.3f s |\n", bytes_f / gib, ef,
              bytes_f / gib / ef, iff, ef + iff);
  std::printf(
      "speedup (FP16 time / compressed time): export %.2fx, import %.2fx, total %.2fx; bytes "
      "%.2fx\n",
      ef / ec, iff / ic, (ef + iff) / (ec + ic), static_cast<double>(bytes_f) / bytes_c);
  std::printf(
      "attention (fused GPU kernel over imported pages) vs exact FP16: relative L2 mean %.4f, max "
      "%.4f "
      "(layers 0, %d, %d; %d q heads)\n",
      mean, mx, a.layers / 2, a.layers - 1, a.q_heads);
  server.Stop();
  return 0;
}

}  // namespace
}  // namespace kvtier

int main(int argc, char** argv) { return kvtier::Main(argc, argv); }
