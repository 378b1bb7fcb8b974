// The GPU side of `kvtier demo`: prefill compresses on the GPU and exports with
// client/gpu's Exporter; decode imports with the Importer into a compressed paged cache
// and runs the fused decode attention kernel. Built only with CUDA (demo_gpu.cc); other
// builds link demo_gpu_stub.cc, whose Create says kFailedPrecondition.
//
//   auto gpu = DemoGpu::Create(&client, model, ns);   // one per worker thread
//   if (gpu.ok()) { auto e = (*gpu)->Export(plan, kv_source); ... }
//
// Thread safety: a DemoGpu is used by one thread at a time.
#ifndef KVTIER_TOOLS_DEMO_GPU_H_
#define KVTIER_TOOLS_DEMO_GPU_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "client/client.h"
#include "tools/demo_workload.h"

namespace kvtier::tools {

class DemoGpu {
 public:
  struct ExportResult {
    uint64_t stored = 0, deduplicated = 0;  // full blocks Put
    uint64_t bytes_sent = 0, bytes_stored = 0;
  };
  struct ImportResult {
    size_t blocks = 0;  // leading blocks imported (tail included)
    size_t compressed_blocks = 0;
    uint64_t bytes_received = 0;
  };

  // kFailedPrecondition when this build has no CUDA or there is no device. `client` is
  // borrowed and must outlive the object.
  static absl::StatusOr<std::unique_ptr<DemoGpu>> Create(client::Client* client, const DemoModel& m,
                                                         const std::string& ns);
  virtual ~DemoGpu() = default;

  // Uploads the request's full blocks as an FP16 paged cache and exports them (blocks the
  // cluster has are skipped). The partial tail block is the caller's.
  virtual absl::StatusOr<ExportResult> Export(const RequestPlan& p, const KvSource& kv) = 0;
  // Imports the request's blocks (tail included) into the compressed paged cache.
  virtual absl::StatusOr<ImportResult> Import(const RequestPlan& p) = 0;
  // Fused decode attention of q [Hq][D] (NOT rotated) over `tokens` tokens of layer
  // `layer` of the last import. out: [Hq][D].
  virtual absl::Status Attend(int layer, const float* q, int tokens, float* out) = 0;
};

}  // namespace kvtier::tools

#endif  // KVTIER_TOOLS_DEMO_GPU_H_
