#!/usr/bin/env bash
# Builds kvtier and runs its tests (README.md's second command; .ci/run runs it too).
#   scripts/test.sh                                   # full build, every ctest test
#   scripts/test.sh --sanitize address,undefined --label codec   # sanitizer build, one label
#   scripts/test.sh --sanitize thread --label tsan
# Environment: BUILD_DIR (default build, or build-<sanitizer>), JOBS (default nproc).
set -euo pipefail
cd "$(dirname "$0")/.."
sanitize="" label=""
while [ $# -gt 0 ]; do
  case "$1" in
    --sanitize) sanitize=$2; shift 2 ;;
    --label) label=$2; shift 2 ;;
    *) echo "usage: scripts/test.sh [--sanitize LIST] [--label LABEL]" >&2; exit 2 ;;
  esac
done
jobs=${JOBS:-$(nproc)}
if [ -z "$sanitize" ]; then
  build=${BUILD_DIR:-build}
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  cmake --build "$build" -j "$jobs"
else
  build=${BUILD_DIR:-build-${sanitize//,/-}}
  # Sanitizer builds skip the CUDA code, the network service and the benchmarks.
  cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Debug -DKVTIER_SANITIZER="$sanitize" \
    -DKVTIER_ENABLE_CUDA=OFF -DKVTIER_BUILD_SERVICE=OFF -DKVTIER_BUILD_BENCHMARKS=OFF \
    -DKVTIER_BUILD_PYTHON=OFF >/dev/null
  cmake --build "$build" -j "$jobs"
fi
ctest_args=(--test-dir "$build" --output-on-failure -j "$jobs")
[ -n "$label" ] && ctest_args+=(-L "$label")
ctest "${ctest_args[@]}"
