// GPU export and import of KV blocks (DESIGN.md §7): the prefill side compresses paged
// FP16/BF16 blocks on the GPU and Puts the blocks the cluster lacks; the decode side Gets
// a prefix and copies the compressed bytes, as they are, into its compressed paged cache.
//
//   // prefill worker
//   ExportOptions eo;  eo.ns = ns;  eo.num_kv_heads = 8;  eo.head_dim = 128;
//   KVTIER_ASSIGN_OR_RETURN(auto exporter, Exporter::Create(client, eo));
//   std::vector<PagedLayer> layers = ...;                   // one per model layer
//   KVTIER_ASSIGN_OR_RETURN(ExportStats s, exporter->Export(layers, block_ids, chain));
//
//   // decode worker
//   ImportOptions io;  io.ns = ns;  ...
//   KVTIER_ASSIGN_OR_RETURN(auto importer, Importer::Create(client, io));
//   std::vector<CompressedLayer> pages = ...;               // one per model layer
//   KVTIER_ASSIGN_OR_RETURN(ImportResult r, importer->Import(pages, chain, page_ids));
//   // r.block_table[i]: tile page (>= 0) or -(fp16 page)-1, the DecodeAttention format
//
// Payload layout on both sides: kernels/payload.h (one section per layer, [Hk][record] for
// tiles, [Hk][K n×D][V n×D] rotated fp16 for sink and tail blocks). Block j of the chain
// is exported as an FP16 sink block when j < sink_blocks, else as KVarN tiles.
//
// Memory: a fixed pool of `pool_slots` slots, each a device staging buffer and a pinned
// host buffer for `blocks_per_batch` payloads; compression of the next batch (GPU), its
// device-to-host copy and the Put of the previous batch (network) overlap. Nothing else
// is allocated per call.
//
// Thread safety: an Exporter or Importer serializes its calls internally (one call at a
// time per object); use one per thread for parallel transfers. The Client is shared.
#ifndef KVTIER_CLIENT_GPU_GPU_TRANSFER_H_
#define KVTIER_CLIENT_GPU_GPU_TRANSFER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/types/span.h"
#include "client/client.h"
#include "kernels/format.h"

namespace kvtier::client::gpu {

// Element type of an uncompressed paged cache.
enum class CacheDType { kFloat16, kBFloat16 };

// One layer of a paged FP16/BF16 cache on the device. Element (block b, token t, head h,
// channel c) of K is at k[b*block_stride + t*token_stride + h*head_stride + c] (strides in
// elements; vLLM's [num_blocks][block_size][Hk][D]: block_stride = G*Hk*D, token_stride =
// Hk*D, head_stride = D). block_size must equal the preset's G. Borrowed for the call.
struct PagedLayer {
  const void* k = nullptr;
  const void* v = nullptr;
  int64_t block_stride = 0;
  int64_t token_stride = 0;
  int64_t head_stride = 0;
};

// One layer of the decode side's compressed paged cache on the device (the pages
// kernels/cuda DecodeAttention reads): tile page p at tile_pages + p*tile_page_stride
// holds [Hk][record]; FP16 page p at fp16_pages + p*fp16_page_stride holds one FP16
// payload section. Borrowed for the call.
struct CompressedLayer {
  uint8_t* tile_pages = nullptr;
  int64_t tile_page_stride = 0;  // bytes, >= Hk * record_bytes
  uint8_t* fp16_pages = nullptr;
  int64_t fp16_page_stride = 0;  // bytes, >= Hk * 2 * G * D * 2
};

struct TransferOptions {
  std::string ns;                                    // block namespace. Required.
  uint32_t part = 0;                                 // model shard (TP rank). Default: 0.
  kernels::Preset preset = kernels::kDefaultPreset;  // Default: k4v2_g128.
  int head_dim = 128;                                // Default: 128.
  int num_kv_heads = 0;                              // Required (>= 1).
  int num_layers = 0;                                // Required (>= 1).
  int sink_blocks = 1;       // leading chain blocks exported in FP16. Default: 1.
  int device = 0;            // CUDA device. Default: 0.
  int blocks_per_batch = 8;  // blocks per compression / Put batch. Default: 8.
  int pool_slots = 3;        // staging slots (batches in flight). Default: 3.
};

using ExportOptions = TransferOptions;
using ImportOptions = TransferOptions;

struct ExportStats {
  size_t already_present = 0;  // leading blocks the cluster had (not exported)
  size_t stored = 0;           // blocks Put and stored
  size_t deduplicated = 0;     // blocks Put that another writer stored first
  uint64_t bytes_sent = 0;     // payload bytes Put
  uint64_t bytes_stored = 0;   // payload bytes of the blocks stored (not deduplicated)
};

class Exporter {
 public:
  // kFailedPrecondition without a usable CUDA device; kInvalidArgument for bad options.
  // `client` is borrowed and must outlive the Exporter.
  static absl::StatusOr<std::unique_ptr<Exporter>> Create(Client* client,
                                                          const ExportOptions& options);
  ~Exporter();

  // Exports blocks [hit, n) of `chain`, where hit is the cluster's current prefix hit:
  // block i of the chain is source block block_ids[i] of every layer (layers.size() ==
  // num_layers). The cache is only read. Returns after every Put completed; on a CUDA
  // error returns it (kInternal) and on a Put error that error; blocks of earlier
  // batches may have been stored (Put is idempotent).
  absl::StatusOr<ExportStats> Export(absl::Span<const PagedLayer> layers, CacheDType dtype,
                                     absl::Span<const int32_t> block_ids,
                                     absl::Span<const ChainHash> chain);

 private:
  struct Slot;
  Exporter(Client* client, const ExportOptions& options);
  absl::Status Init();

  Client* const client_;
  const ExportOptions options_;
  absl::Mutex mu_;  // one Export at a time
  std::vector<std::unique_ptr<Slot>> slots_ ABSL_GUARDED_BY(mu_);
  void* stream_ = nullptr;  // cudaStream_t; constant after Init
};

struct ImportResult {
  size_t blocks = 0;  // leading blocks of the chain now in the cache
  size_t tokens = 0;  // their tokens
  uint64_t bytes_received = 0;
  // One entry per imported block: tile page id (>= 0) or -(fp16 page id) - 1.
  std::vector<int32_t> block_table;
};

class Importer {
 public:
  static absl::StatusOr<std::unique_ptr<Importer>> Create(Client* client,
                                                          const ImportOptions& options);
  ~Importer();

  // Lookup, Get the hit prefix into pinned buffers, validate, and copy each layer section
  // into page page_ids[i] (a tile page for KVarN blocks, an FP16 page for sink and tail
  // blocks). Blocks past the first miss, invalid payload or shape mismatch are not
  // imported and their pages are not written: a failure is a shorter prefix (a miss),
  // never partial or wrong data. Errors: kInvalidArgument for bad arguments; kInternal
  // for a CUDA error (pages of that batch may be partly written; their block_table
  // entries are not returned).
  absl::StatusOr<ImportResult> Import(absl::Span<const CompressedLayer> layers,
                                      absl::Span<const ChainHash> chain,
                                      absl::Span<const int32_t> page_ids);

 private:
  Importer(Client* client, const ImportOptions& options);
  absl::Status Init();

  Client* const client_;
  const ImportOptions options_;
  absl::Mutex mu_;                               // one Import at a time
  void* pinned_ ABSL_GUARDED_BY(mu_) = nullptr;  // pinned host staging
  size_t pinned_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  void* stream_ = nullptr;  // cudaStream_t; constant after Init
};

// Validates options shared by both sides (no CUDA needed): kInvalidArgument on error.
absl::Status ValidateTransferOptions(const TransferOptions& o);

// Bytes of one block payload for these options: tiles, and FP16 of `tokens` tokens.
size_t TilesPayloadBytes(const TransferOptions& o);
size_t Fp16PayloadBytes(const TransferOptions& o, int tokens);

}  // namespace kvtier::client::gpu

#endif  // KVTIER_CLIENT_GPU_GPU_TRANSFER_H_
