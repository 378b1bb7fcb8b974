#!/usr/bin/env bash
# Installs exactly the Debian 12 packages kvtier's build, tests and benchmarks need.
# Idempotent: packages already installed are skipped. Needs root (or sudo).
#   scripts/install-deps.sh            # everything
#   scripts/install-deps.sh --list     # print the package list (used by the Dockerfile)
set -euo pipefail

packages=(
  # toolchain
  build-essential cmake git pkg-config ninja-build clang-format
  # libraries
  libabsl-dev libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  librocksdb-dev libucx-dev ucx-utils libxxhash-dev libssl-dev openssl libcpp-httplib-dev
  pybind11-dev python3-dev
  # tests and benchmarks
  libgtest-dev libgmock-dev libbenchmark-dev python3-numpy python3-yaml python3-grpcio
  prometheus redis-server redis-tools libhiredis-dev
  golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v3-dev
)

if [ "${1:-}" = "--list" ]; then
  printf '%s\n' "${packages[@]}"
  exit 0
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
echo "install-deps: installing ${missing[*]}"
sudo=""
[ "$(id -u)" -eq 0 ] || sudo=sudo
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
