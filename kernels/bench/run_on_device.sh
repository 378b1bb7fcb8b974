#!/usr/bin/env bash
# Builds the GPU test and benchmark here, bundles them into /work/main/.device (the
# checkout that the device tool sends), and prints the ONE device command that runs the
# GPU tests, compute-sanitizer on a small case, the benchmarks and the SDPA baseline,
# printing the table last. Usage (from the worktree root):
#   kernels/bench/run_on_device.sh [MAIN_CHECKOUT]      # default /work/main
# then call the device tool `run` with carry [".device"] and the printed command.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
main=${1:-/work/main}
cmake -S "$here" -B "$here/build" -DKVTIER_BUILD_SERVICE=OFF -DKVTIER_BUILD_PYTHON=OFF \
  -DKVTIER_BUILD_BENCHMARKS=OFF >/dev/null
cmake --build "$here/build" -j2 --target kvarn_cuda_test kvarn_cuda_bench
bundle=${KVTIER_DEVICE_BUNDLE:-/work/shared/tools/device-bundle.sh}
(cd "$main" && "$bundle" --out "$main/.device" \
  "$here/build/kernels/cuda/kvarn_cuda_test" "$here/build/kernels/cuda/kvarn_cuda_bench")
cp "$here/kernels/bench/sdpa_bench.py" "$here/kernels/bench/device_job.sh" "$main/.device/"
echo "device command (carry [\".device\"]):"
echo "bash .device/device_job.sh"
