#!/usr/bin/env bash
# README.md's first command: installs dependencies, builds, and runs the kvtier demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j "${JOBS:-$(nproc)}" --target kvtier
exec build/tools/kvtier codec demo "$@"
