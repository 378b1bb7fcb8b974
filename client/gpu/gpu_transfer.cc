#include "client/gpu/gpu_transfer.h"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/status_macros.h"
#include "kernels/cpu/codec.h"
#include "kernels/cpu/half.h"
#include "kernels/cuda/kvarn_cuda.h"
#include "kernels/payload.h"

namespace kvtier::client::gpu {
namespace {

using kernels::BlockEncoding;
using kernels::PayloadHeader;

// The one cudaError_t -> absl boundary of this file.
absl::Status Cuda(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

#define KVTIER_CUDA_RETURN(expr) KVTIER_RETURN_IF_ERROR(Cuda((expr), #expr))

absl::Status CheckDevice(int device) {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the sticky "no device" error
    return absl::FailedPreconditionError("no CUDA device");
  }
  if (device < 0 || device >= count) {
    return absl::InvalidArgumentError(absl::StrCat("CUDA device ", device, " of ", count));
  }
  return Cuda(cudaSetDevice(device), "cudaSetDevice");
}

float Bf16ToFloat(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

}  // namespace

absl::Status ValidateTransferOptions(const TransferOptions& o) {
  if (o.ns.empty()) return absl::InvalidArgumentError("namespace is required");
  if (!kernels::IsSupportedHeadDim(o.head_dim)) {
    return absl::InvalidArgumentError("head_dim must be 64, 128 or 256");
  }
  if (o.num_kv_heads < 1 || o.num_kv_heads > static_cast<int>(kernels::kMaxKvHeads)) {
    return absl::InvalidArgumentError("num_kv_heads must be in 1..256");
  }
  if (o.num_layers < 1 || o.num_layers > static_cast<int>(kernels::kMaxLayers)) {
    return absl::InvalidArgumentError("num_layers must be in 1..1024");
  }
  if (o.sink_blocks < 0) return absl::InvalidArgumentError("sink_blocks must be >= 0");
  if (o.blocks_per_batch < 1 || o.pool_slots < 1) {
    return absl::InvalidArgumentError("blocks_per_batch and pool_slots must be >= 1");
  }
  if (TilesPayloadBytes(o) > kernels::kMaxPayloadBytes) {
    return absl::InvalidArgumentError("a block payload would exceed 1 GiB");
  }
  return absl::OkStatus();
}

size_t TilesPayloadBytes(const TransferOptions& o) {
  return kernels::MakeTilesHeader(o.preset, o.head_dim, o.num_layers, o.num_kv_heads).total_bytes();
}

size_t Fp16PayloadBytes(const TransferOptions& o, int tokens) {
  return kernels::MakeFp16Header(o.preset, o.head_dim, o.num_layers, o.num_kv_heads, tokens, 0)
      .total_bytes();
}

// ------------------------------------------------------------------------------ Exporter

// One staging slot: a batch of up to blocks_per_batch tile payloads on its way from the
// compress kernel to a Put.
struct Exporter::Slot {
  uint8_t* device = nullptr;  // [batch][payload]
  uint8_t* host = nullptr;    // pinned, same layout
  int32_t* device_ids = nullptr;
  int32_t* host_ids = nullptr;  // pinned
  cudaEvent_t copied = nullptr;
  size_t count = 0;
  std::vector<ChainHash> hashes;
  // The Put of this slot's batch, when one is in flight.
  std::unique_ptr<absl::Notification> put_done;
  absl::StatusOr<std::vector<PutOutcome>> put_result;
};

Exporter::Exporter(Client* client, const ExportOptions& options)
    : client_(client), options_(options) {}

Exporter::~Exporter() {
  absl::MutexLock lock(&mu_);
  for (auto& s : slots_) {
    if (s->put_done) s->put_done->WaitForNotification();
    if (s->copied) cudaEventDestroy(s->copied);
    cudaFree(s->device);
    cudaFree(s->device_ids);
    cudaFreeHost(s->host);
    cudaFreeHost(s->host_ids);
  }
  if (stream_) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

absl::StatusOr<std::unique_ptr<Exporter>> Exporter::Create(Client* client,
                                                           const ExportOptions& options) {
  if (client == nullptr) return absl::InvalidArgumentError("client is null");
  KVTIER_RETURN_IF_ERROR(ValidateTransferOptions(options));
  KVTIER_RETURN_IF_ERROR(CheckDevice(options.device));
  std::unique_ptr<Exporter> e(new Exporter(client, options));
  KVTIER_RETURN_IF_ERROR(e->Init());
  return e;
}

absl::Status Exporter::Init() {
  absl::MutexLock lock(&mu_);
  cudaStream_t s;
  KVTIER_CUDA_RETURN(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream_ = s;
  const size_t bytes = TilesPayloadBytes(options_) * options_.blocks_per_batch;
  for (int i = 0; i < options_.pool_slots; ++i) {
    auto slot = std::make_unique<Slot>();
    Slot& x = *slot;
    slots_.push_back(std::move(slot));
    KVTIER_CUDA_RETURN(cudaMalloc(reinterpret_cast<void**>(&x.device), bytes));
    KVTIER_CUDA_RETURN(cudaMallocHost(reinterpret_cast<void**>(&x.host), bytes));
    KVTIER_CUDA_RETURN(cudaMalloc(reinterpret_cast<void**>(&x.device_ids),
                                  sizeof(int32_t) * options_.blocks_per_batch));
    KVTIER_CUDA_RETURN(cudaMallocHost(reinterpret_cast<void**>(&x.host_ids),
                                      sizeof(int32_t) * options_.blocks_per_batch));
    KVTIER_CUDA_RETURN(cudaEventCreateWithFlags(&x.copied, cudaEventDisableTiming));
  }
  return absl::OkStatus();
}

absl::StatusOr<ExportStats> Exporter::Export(absl::Span<const PagedLayer> layers, CacheDType dtype,
                                             absl::Span<const int32_t> block_ids,
                                             absl::Span<const ChainHash> chain) {
  const ExportOptions& o = options_;
  if (layers.size() != static_cast<size_t>(o.num_layers)) {
    return absl::InvalidArgumentError("one PagedLayer per model layer is required");
  }
  if (block_ids.size() != chain.size()) {
    return absl::InvalidArgumentError("block_ids and chain differ in length");
  }
  for (const auto& l : layers) {
    if (l.k == nullptr || l.v == nullptr) return absl::InvalidArgumentError("null layer cache");
  }
  absl::MutexLock lock(&mu_);
  KVTIER_CUDA_RETURN(cudaSetDevice(o.device));
  auto stream = static_cast<cudaStream_t>(stream_);
  const int g = kernels::GetPresetInfo(o.preset).group_size;
  ExportStats stats;
  KVTIER_ASSIGN_OR_RETURN(size_t hit, client_->Lookup(o.ns, o.part, chain, g));
  stats.already_present = hit;
  if (hit >= chain.size()) return stats;

  // Sink blocks: FP16 (rotated) sections built on the host from a copy of the block.
  const size_t row = static_cast<size_t>(o.num_kv_heads) * o.head_dim;
  std::vector<std::vector<uint8_t>> sink_payloads;
  std::vector<PutItem> sink_items;
  size_t first_tile = hit;
  for (size_t i = hit; i < chain.size() && i < static_cast<size_t>(o.sink_blocks); ++i) {
    first_tile = i + 1;
    PayloadHeader h = kernels::MakeFp16Header(o.preset, o.head_dim, o.num_layers, o.num_kv_heads, g,
                                              i == 0 ? kernels::kFlagSink : 0);
    std::vector<uint8_t> bytes(h.total_bytes());
    kernels::EncodeHeader(h, bytes.data());
    std::vector<uint16_t> raw_k(g * row), raw_v(g * row);
    std::vector<float> k(g * row), v(g * row);
    for (int l = 0; l < o.num_layers; ++l) {
      const PagedLayer& src = layers[l];
      const size_t esz = 2;
      // Rows of Hk*D contiguous elements per token (vLLM layout); strided tokens allowed.
      const char* kb = static_cast<const char*>(src.k) + block_ids[i] * src.block_stride * esz;
      const char* vb = static_cast<const char*>(src.v) + block_ids[i] * src.block_stride * esz;
      if (src.head_stride != o.head_dim) {
        return absl::UnimplementedError("sink export needs head_stride == head_dim");
      }
      KVTIER_CUDA_RETURN(cudaMemcpy2DAsync(raw_k.data(), row * esz, kb, src.token_stride * esz,
                                           row * esz, g, cudaMemcpyDeviceToHost, stream));
      KVTIER_CUDA_RETURN(cudaMemcpy2DAsync(raw_v.data(), row * esz, vb, src.token_stride * esz,
                                           row * esz, g, cudaMemcpyDeviceToHost, stream));
      KVTIER_CUDA_RETURN(cudaStreamSynchronize(stream));
      for (size_t x = 0; x < k.size(); ++x) {
        k[x] = dtype == CacheDType::kFloat16 ? kernels::cpu::HalfToFloat(raw_k[x])
                                             : Bf16ToFloat(raw_k[x]);
        v[x] = dtype == CacheDType::kFloat16 ? kernels::cpu::HalfToFloat(raw_v[x])
                                             : Bf16ToFloat(raw_v[x]);
      }
      kernels::cpu::EncodeFp16Section(
          o.head_dim, o.num_kv_heads, g, k.data(), v.data(),
          reinterpret_cast<uint16_t*>(bytes.data() + kernels::kPayloadHeaderBytes +
                                      l * h.layer_section_bytes));
    }
    kernels::SealPayload(absl::MakeSpan(bytes));
    sink_payloads.push_back(std::move(bytes));
  }
  for (size_t j = 0; j < sink_payloads.size(); ++j) {
    sink_items.push_back({chain[hit + j], sink_payloads[j]});
  }

  // Tiles: batches through the slot pool. Batch b is compressed (GPU) and copied while the
  // host seals batch b-1 and the client Puts it.
  const PayloadHeader th =
      kernels::MakeTilesHeader(o.preset, o.head_dim, o.num_layers, o.num_kv_heads);
  const size_t payload = th.total_bytes();
  absl::Status first_error;
  auto collect = [&](Slot& s) {
    if (!s.put_done) return;
    s.put_done->WaitForNotification();
    s.put_done.reset();
    if (!s.put_result.ok()) {
      if (first_error.ok()) first_error = s.put_result.status();
      return;
    }
    for (PutOutcome r : *s.put_result) {
      (r == PutOutcome::kStored ? stats.stored : stats.deduplicated)++;
      if (r == PutOutcome::kStored) stats.bytes_stored += payload;
    }
    stats.bytes_sent += s.count * payload;
  };
  auto seal_and_put = [&](Slot& s) -> absl::Status {
    KVTIER_CUDA_RETURN(cudaEventSynchronize(s.copied));
    std::vector<PutItem> items;
    for (size_t j = 0; j < s.count; ++j) {
      uint8_t* p = s.host + j * payload;
      kernels::EncodeHeader(th, p);
      kernels::SealPayload(absl::MakeSpan(p, payload));
      items.push_back({s.hashes[j], absl::Span<const uint8_t>(p, payload)});
    }
    s.put_done = std::make_unique<absl::Notification>();
    Slot* sp = &s;
    client_->PutAsync(o.ns, o.part, std::move(items),
                      [sp](absl::StatusOr<std::vector<PutOutcome>> r) {
                        sp->put_result = std::move(r);
                        sp->put_done->Notify();
                      });
    return absl::OkStatus();
  };

  Slot* previous = nullptr;
  size_t next_slot = 0;
  for (size_t start = first_tile; start < chain.size() && first_error.ok();
       start += o.blocks_per_batch) {
    Slot& s = *slots_[next_slot];
    next_slot = (next_slot + 1) % slots_.size();
    collect(s);  // the slot's previous Put must be done before its buffers are reused
    if (!first_error.ok()) break;
    s.count = std::min<size_t>(o.blocks_per_batch, chain.size() - start);
    s.hashes.assign(chain.begin() + start, chain.begin() + start + s.count);
    std::copy_n(block_ids.begin() + start, s.count, s.host_ids);
    KVTIER_CUDA_RETURN(cudaMemcpyAsync(s.device_ids, s.host_ids, s.count * sizeof(int32_t),
                                       cudaMemcpyHostToDevice, stream));
    for (int l = 0; l < o.num_layers; ++l) {
      kernels::cuda::CompressParams c;
      c.preset = o.preset;
      c.head_dim = o.head_dim;
      c.num_kv_heads = o.num_kv_heads;
      c.num_layers = 1;
      c.num_blocks = static_cast<int>(s.count);
      c.dtype = dtype == CacheDType::kFloat16 ? kernels::cuda::DType::kFloat16
                                              : kernels::cuda::DType::kBFloat16;
      c.k = layers[l].k;
      c.v = layers[l].v;
      c.src_block_stride = layers[l].block_stride;
      c.src_token_stride = layers[l].token_stride;
      c.src_head_stride = layers[l].head_stride;
      c.block_ids = s.device_ids;
      c.dst = s.device + kernels::kPayloadHeaderBytes + l * th.layer_section_bytes;
      c.dst_block_stride = static_cast<int64_t>(payload);
      KVTIER_CUDA_RETURN(kernels::cuda::Compress(c, stream));
    }
    KVTIER_CUDA_RETURN(
        cudaMemcpyAsync(s.host, s.device, s.count * payload, cudaMemcpyDeviceToHost, stream));
    KVTIER_CUDA_RETURN(cudaEventRecord(s.copied, stream));
    if (previous != nullptr) KVTIER_RETURN_IF_ERROR(seal_and_put(*previous));
    previous = &s;
  }
  if (previous != nullptr && first_error.ok()) KVTIER_RETURN_IF_ERROR(seal_and_put(*previous));
  if (!sink_items.empty()) {
    auto r = client_->Put(o.ns, o.part, sink_items);
    if (!r.ok() && first_error.ok()) first_error = r.status();
    if (r.ok()) {
      for (size_t j = 0; j < r->size(); ++j) {
        ((*r)[j] == PutOutcome::kStored ? stats.stored : stats.deduplicated)++;
        stats.bytes_sent += sink_payloads[j].size();
        if ((*r)[j] == PutOutcome::kStored) stats.bytes_stored += sink_payloads[j].size();
      }
    }
  }
  for (auto& s : slots_) collect(*s);
  if (!first_error.ok()) return first_error;
  return stats;
}

// ------------------------------------------------------------------------------ Importer

Importer::Importer(Client* client, const ImportOptions& options)
    : client_(client), options_(options) {}

Importer::~Importer() {
  absl::MutexLock lock(&mu_);
  cudaFreeHost(pinned_);
  if (stream_) cudaStreamDestroy(static_cast<cudaStream_t>(stream_));
}

absl::StatusOr<std::unique_ptr<Importer>> Importer::Create(Client* client,
                                                           const ImportOptions& options) {
  if (client == nullptr) return absl::InvalidArgumentError("client is null");
  KVTIER_RETURN_IF_ERROR(ValidateTransferOptions(options));
  KVTIER_RETURN_IF_ERROR(CheckDevice(options.device));
  std::unique_ptr<Importer> i(new Importer(client, options));
  KVTIER_RETURN_IF_ERROR(i->Init());
  return i;
}

absl::Status Importer::Init() {
  absl::MutexLock lock(&mu_);
  cudaStream_t s;
  KVTIER_CUDA_RETURN(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  stream_ = s;
  const int g = kernels::GetPresetInfo(options_.preset).group_size;
  pinned_bytes_ = std::max(TilesPayloadBytes(options_), Fp16PayloadBytes(options_, g)) *
                  options_.blocks_per_batch;
  KVTIER_CUDA_RETURN(cudaMallocHost(&pinned_, pinned_bytes_));
  return absl::OkStatus();
}

absl::StatusOr<ImportResult> Importer::Import(absl::Span<const CompressedLayer> layers,
                                              absl::Span<const ChainHash> chain,
                                              absl::Span<const int32_t> page_ids) {
  const ImportOptions& o = options_;
  if (layers.size() != static_cast<size_t>(o.num_layers)) {
    return absl::InvalidArgumentError("one CompressedLayer per model layer is required");
  }
  if (page_ids.size() < chain.size()) {
    return absl::InvalidArgumentError("one page id per chain block is required");
  }
  const int g = kernels::GetPresetInfo(o.preset).group_size;
  const PayloadHeader tiles =
      kernels::MakeTilesHeader(o.preset, o.head_dim, o.num_layers, o.num_kv_heads);
  for (const auto& l : layers) {
    if (l.tile_pages == nullptr ||
        l.tile_page_stride < static_cast<int64_t>(tiles.layer_section_bytes)) {
      return absl::InvalidArgumentError("tile pages missing or page stride too small");
    }
  }
  absl::MutexLock lock(&mu_);
  KVTIER_CUDA_RETURN(cudaSetDevice(o.device));
  auto stream = static_cast<cudaStream_t>(stream_);
  ImportResult result;
  KVTIER_ASSIGN_OR_RETURN(size_t hit, client_->Lookup(o.ns, o.part, chain, g));
  if (hit == 0) return result;

  // Batches of blocks_per_batch: the Get of batch b+1 runs while batch b is copied.
  const size_t batch = static_cast<size_t>(o.blocks_per_batch);
  auto fetch = [&](size_t start) {
    auto done = std::make_shared<absl::Notification>();
    auto out = std::make_shared<std::vector<BlockResult>>();
    const size_t n = std::min(batch, hit - start);
    client_->GetAsync(o.ns, o.part,
                      std::vector<ChainHash>(chain.begin() + start, chain.begin() + start + n),
                      [done, out](std::vector<BlockResult> r) {
                        *out = std::move(r);
                        done->Notify();
                      });
    return std::make_pair(done, out);
  };
  auto pending = fetch(0);
  bool stop = false;
  for (size_t start = 0; start < hit && !stop; start += batch) {
    pending.first->WaitForNotification();
    std::vector<BlockResult> got = std::move(*pending.second);
    if (start + batch < hit)
      pending = fetch(start + batch);
    else
      pending = {nullptr, nullptr};
    uint8_t* dst = static_cast<uint8_t*>(pinned_);
    std::vector<int32_t> table;
    for (size_t j = 0; j < got.size(); ++j) {
      const BlockResult& r = got[j];
      if (!r.hit) {
        stop = true;
        break;
      }
      auto view = kernels::ValidatePayload(r.payload);
      if (!view.ok()) {
        stop = true;
        break;
      }
      const PayloadHeader& h = view->header;
      const bool is_tiles = h.encoding == BlockEncoding::kTiles;
      if (h.preset != o.preset || h.head_dim != o.head_dim || h.num_layers != o.num_layers ||
          h.num_kv_heads != o.num_kv_heads ||
          (!is_tiles &&
           (layers[0].fp16_pages == nullptr ||
            layers[0].fp16_page_stride < static_cast<int64_t>(h.layer_section_bytes)))) {
        stop = true;  // not ours to attend over: a miss
        break;
      }
      std::memcpy(dst, r.payload.data(), r.payload.size());
      const int32_t page = page_ids[start + j];
      for (int l = 0; l < o.num_layers; ++l) {
        uint8_t* to = is_tiles ? layers[l].tile_pages + page * layers[l].tile_page_stride
                               : layers[l].fp16_pages + page * layers[l].fp16_page_stride;
        KVTIER_CUDA_RETURN(
            cudaMemcpyAsync(to, dst + kernels::kPayloadHeaderBytes + l * h.layer_section_bytes,
                            h.layer_section_bytes, cudaMemcpyHostToDevice, stream));
      }
      dst += r.payload.size();
      table.push_back(is_tiles ? page : -page - 1);
      result.tokens += h.token_count;
      result.bytes_received += r.payload.size();
    }
    KVTIER_CUDA_RETURN(cudaStreamSynchronize(stream));  // pinned_ is reused next batch
    result.block_table.insert(result.block_table.end(), table.begin(), table.end());
    result.blocks += table.size();
  }
  if (pending.first) pending.first->WaitForNotification();  // don't leave a Get behind
  return result;
}

}  // namespace kvtier::client::gpu
