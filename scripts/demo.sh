#!/usr/bin/env bash
# README.md's first command: installs dependencies, builds kvtier and kvtier-server, and
# runs `kvtier demo` (a slice of the Mooncake trace through a local server; flags pass on).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "${JOBS:-$(nproc)}" --target kvtier
exec build/tools/kvtier demo "$@"
