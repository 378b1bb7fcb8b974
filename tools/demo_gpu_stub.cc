// DemoGpu for builds without CUDA: the demo runs the CPU codec.
#include "tools/demo_gpu.h"

namespace kvtier::tools {

absl::StatusOr<std::unique_ptr<DemoGpu>> DemoGpu::Create(client::Client*, const DemoModel&,
                                                         const std::string&) {
  return absl::FailedPreconditionError("this build has no CUDA");
}

}  // namespace kvtier::tools
