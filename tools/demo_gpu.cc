// DemoGpu on CUDA: client/gpu Exporter/Importer and kernels/cuda DecodeAttention.
#include "tools/demo_gpu.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/gpu/gpu_transfer.h"
#include "common/status_macros.h"
#include "kernels/cpu/half.h"
#include "kernels/cuda/kvarn_cuda.h"

namespace kvtier::tools {
namespace {

absl::Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}
#define DEMO_CUDA(expr) KVTIER_RETURN_IF_ERROR(Cuda((expr), #expr))

// A device buffer that grows on demand.
class DeviceBuffer {
 public:
  ~DeviceBuffer() { cudaFree(ptr_); }
  absl::Status Reserve(size_t bytes) {
    if (bytes <= size_) return absl::OkStatus();
    cudaFree(ptr_);
    ptr_ = nullptr;
    size_ = 0;
    DEMO_CUDA(cudaMalloc(&ptr_, bytes));
    size_ = bytes;
    return absl::OkStatus();
  }
  template <typename T>
  T* get() const {
    return static_cast<T*>(ptr_);
  }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

class DemoGpuImpl : public DemoGpu {
 public:
  DemoGpuImpl(const DemoModel& m, std::unique_ptr<client::gpu::Exporter> e,
              std::unique_ptr<client::gpu::Importer> i)
      : m_(m), exporter_(std::move(e)), importer_(std::move(i)) {}

  absl::StatusOr<ExportResult> Export(const RequestPlan& p, const KvSource& kv) override {
    ExportResult out;
    const int n = p.full_blocks, g = m_.group_size();
    if (n == 0) return out;
    const size_t row = static_cast<size_t>(m_.num_kv_heads) * m_.head_dim;
    const size_t block = static_cast<size_t>(g) * row;
    const size_t per_layer = block * n;
    host_.resize(per_layer * m_.num_layers);
    for (int l = 0; l < m_.num_layers; ++l) {
      for (int b = 0; b < n; ++b) {
        const int first = b * g;
        KVTIER_ASSIGN_OR_RETURN(const HashBlockKv* src, kv(first / m_.trace_block_tokens, l));
        const size_t off = static_cast<size_t>(first % m_.trace_block_tokens) * row;
        uint16_t* dk = host_.data() + l * per_layer + b * block;
        for (size_t x = 0; x < block; ++x) dk[x] = kernels::cpu::FloatToHalf(src->k[off + x]);
      }
    }
    KVTIER_RETURN_IF_ERROR(k_.Reserve(host_.size() * 2));
    KVTIER_RETURN_IF_ERROR(v_.Reserve(host_.size() * 2));
    DEMO_CUDA(cudaMemcpy(k_.get<void>(), host_.data(), host_.size() * 2, cudaMemcpyHostToDevice));
    for (int l = 0; l < m_.num_layers; ++l) {
      for (int b = 0; b < n; ++b) {
        const int first = b * g;
        KVTIER_ASSIGN_OR_RETURN(const HashBlockKv* src, kv(first / m_.trace_block_tokens, l));
        const size_t off = static_cast<size_t>(first % m_.trace_block_tokens) * row;
        uint16_t* dv = host_.data() + l * per_layer + b * block;
        for (size_t x = 0; x < block; ++x) dv[x] = kernels::cpu::FloatToHalf(src->v[off + x]);
      }
    }
    DEMO_CUDA(cudaMemcpy(v_.get<void>(), host_.data(), host_.size() * 2, cudaMemcpyHostToDevice));
    std::vector<client::gpu::PagedLayer> layers;
    for (int l = 0; l < m_.num_layers; ++l) {
      layers.push_back({k_.get<uint16_t>() + l * per_layer, v_.get<uint16_t>() + l * per_layer,
                        static_cast<int64_t>(block), static_cast<int64_t>(row), m_.head_dim});
    }
    std::vector<int32_t> ids(n);
    std::iota(ids.begin(), ids.end(), 0);
    KVTIER_ASSIGN_OR_RETURN(client::gpu::ExportStats s,
                            exporter_->Export(layers, client::gpu::CacheDType::kFloat16, ids,
                                              absl::MakeConstSpan(p.chain).first(n)));
    out.stored = s.stored;
    out.deduplicated = s.deduplicated;
    out.bytes_sent = s.bytes_sent;
    out.bytes_stored = s.bytes_stored;
    return out;
  }

  absl::StatusOr<ImportResult> Import(const RequestPlan& p) override {
    const int nb = p.num_blocks();
    const kernels::TileLayout tl = kernels::MakeTileLayout(m_.preset, m_.head_dim);
    tile_page_ = static_cast<size_t>(m_.num_kv_heads) * tl.record_bytes;
    fp16_page_ = static_cast<size_t>(m_.num_kv_heads) * 2 * m_.group_size() * m_.head_dim * 2;
    KVTIER_RETURN_IF_ERROR(tiles_.Reserve(tile_page_ * nb * m_.num_layers));
    KVTIER_RETURN_IF_ERROR(fp16_.Reserve(fp16_page_ * nb * m_.num_layers));
    pages_.clear();
    for (int l = 0; l < m_.num_layers; ++l) {
      pages_.push_back(
          {tiles_.get<uint8_t>() + l * tile_page_ * nb, static_cast<int64_t>(tile_page_),
           fp16_.get<uint8_t>() + l * fp16_page_ * nb, static_cast<int64_t>(fp16_page_)});
    }
    std::vector<int32_t> ids(nb);
    std::iota(ids.begin(), ids.end(), 0);
    KVTIER_ASSIGN_OR_RETURN(client::gpu::ImportResult r, importer_->Import(pages_, p.chain, ids));
    ImportResult out;
    out.blocks = r.blocks;
    out.bytes_received = r.bytes_received;
    for (int32_t e : r.block_table) out.compressed_blocks += e >= 0;
    KVTIER_RETURN_IF_ERROR(table_.Reserve(std::max<size_t>(r.block_table.size(), 1) * 4));
    DEMO_CUDA(cudaMemcpy(table_.get<void>(), r.block_table.data(), r.block_table.size() * 4,
                         cudaMemcpyHostToDevice));
    table_stride_ = std::max(1, static_cast<int>(r.block_table.size()));
    return out;
  }

  absl::Status Attend(int layer, const float* q, int tokens, float* out) override {
    const size_t n = static_cast<size_t>(m_.num_q_heads) * m_.head_dim;
    std::vector<uint16_t> q16(n);
    for (size_t i = 0; i < n; ++i) q16[i] = kernels::cpu::FloatToHalf(q[i]);
    KVTIER_RETURN_IF_ERROR(q_.Reserve(n * 2));
    KVTIER_RETURN_IF_ERROR(out_.Reserve(n * 2));
    KVTIER_RETURN_IF_ERROR(len_.Reserve(4));
    DEMO_CUDA(cudaMemcpy(q_.get<void>(), q16.data(), n * 2, cudaMemcpyHostToDevice));
    const int32_t len = tokens;
    DEMO_CUDA(cudaMemcpy(len_.get<void>(), &len, 4, cudaMemcpyHostToDevice));
    kernels::cuda::DecodeAttentionParams a;
    a.preset = m_.preset;
    a.head_dim = m_.head_dim;
    a.num_q_heads = m_.num_q_heads;
    a.num_kv_heads = m_.num_kv_heads;
    a.batch = 1;
    a.max_seq_len = tokens;
    a.softmax_scale = 1.0f / std::sqrt(static_cast<float>(m_.head_dim));
    a.q = q_.get<void>();
    a.out = out_.get<void>();
    a.tile_pages = pages_[layer].tile_pages;
    a.tile_page_stride = pages_[layer].tile_page_stride;
    a.fp16_pages = pages_[layer].fp16_pages;
    a.fp16_page_stride = pages_[layer].fp16_page_stride;
    a.block_tables = table_.get<int32_t>();
    a.block_table_stride = table_stride_;
    a.seq_lens = len_.get<int32_t>();
    a.workspace_bytes = kernels::cuda::DecodeAttentionWorkspaceBytes(
        1, m_.num_q_heads, 1, m_.head_dim, tokens, m_.preset);
    KVTIER_RETURN_IF_ERROR(ws_.Reserve(std::max<size_t>(a.workspace_bytes, 16)));
    a.workspace = ws_.get<void>();
    DEMO_CUDA(kernels::cuda::DecodeAttention(a, nullptr));
    std::vector<uint16_t> o16(n);
    DEMO_CUDA(cudaMemcpy(o16.data(), out_.get<void>(), n * 2, cudaMemcpyDeviceToHost));
    for (size_t i = 0; i < n; ++i) out[i] = kernels::cpu::HalfToFloat(o16[i]);
    return absl::OkStatus();
  }

 private:
  const DemoModel m_;
  std::unique_ptr<client::gpu::Exporter> exporter_;
  std::unique_ptr<client::gpu::Importer> importer_;
  std::vector<uint16_t> host_;
  DeviceBuffer k_, v_, tiles_, fp16_, table_, q_, out_, len_, ws_;
  std::vector<client::gpu::CompressedLayer> pages_;
  size_t tile_page_ = 0, fp16_page_ = 0;
  int table_stride_ = 1;
};

}  // namespace

absl::StatusOr<std::unique_ptr<DemoGpu>> DemoGpu::Create(client::Client* client, const DemoModel& m,
                                                         const std::string& ns) {
  if (m.head_dim != 128) {
    return absl::FailedPreconditionError("the GPU attention kernel supports head_dim 128");
  }
  client::gpu::TransferOptions o;
  o.ns = ns;
  o.preset = m.preset;
  o.head_dim = m.head_dim;
  o.num_kv_heads = m.num_kv_heads;
  o.num_layers = m.num_layers;
  o.sink_blocks = m.sink_blocks;
  KVTIER_ASSIGN_OR_RETURN(auto e, client::gpu::Exporter::Create(client, o));
  KVTIER_ASSIGN_OR_RETURN(auto i, client::gpu::Importer::Create(client, o));
  return std::unique_ptr<DemoGpu>(new DemoGpuImpl(m, std::move(e), std::move(i)));
}

}  // namespace kvtier::tools
