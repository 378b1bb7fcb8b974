#!/usr/bin/env bash
# One device call that checks a build on the H200: the GPU tests, the GPU export/import
# tests, and `kvtier demo` with the GPU path vs the CPU path. Logs under $OUT; summary last.
# Prepare here (the device has no gRPC/RocksDB/UCX; binaries go stripped and packed):
#   cmake --build build -j2 --target kvarn_cuda_test gpu_transfer_test e2e_gpu_transfer_test kvtier kvtier-server
#   ../shared/tools/device-bundle.sh --out /tmp/dv build/kernels/cuda/kvarn_cuda_test \
#     build/client/gpu/gpu_transfer_test build/tests/e2e_gpu_transfer_test build/tools/kvtier \
#     build/service/kvtier-server
#   strip --strip-debug /tmp/dv/bin/*; strip --strip-unneeded /tmp/dv/lib/*.so*
#   mkdir -p .device && tar -C /tmp/dv -czf .device/bundle.tar.gz bin lib ucx run.sh
#   cp tests/e2e/device_final_check.sh .device/final.sh
#   head -200 ../shared/data/mooncake_conversation_trace.jsonl > .device/trace.jsonl
# Then the device call: `bash .device/final.sh` with carry [".device"].
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
D=/tmp/kvdev; mkdir -p $D && tar -C $D -xzf .device/bundle.tar.gz
{ nvidia-smi --query-gpu=name,driver_version --format=csv,noheader; date -u; } | tee $OUT/summary.txt
s() { echo "$*" | tee -a $OUT/summary.txt; }
for t in ${TESTS:-kvarn_cuda_test gpu_transfer_test e2e_gpu_transfer_test}; do
  t0=$(date +%s); timeout 150 $D/run.sh $t > $OUT/$t.log 2>&1; rc=$?
  s "$t rc=$rc $(( $(date +%s) - t0 ))s: $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' $OUT/$t.log | tr -s ' ' | tr '\n' ' ')"
done
for g in on off; do
  t0=$(date +%s); timeout 150 $D/run.sh kvtier demo --gpu=$g --no_progress --trace .device/trace.jsonl > $OUT/demo_$g.log 2>&1; rc=$?
  s "demo --gpu=$g rc=$rc $(( $(date +%s) - t0 ))s"
done
echo; echo "== demo --gpu=on"; tail -15 $OUT/demo_on.log; echo "== demo --gpu=off"; tail -15 $OUT/demo_off.log
echo; cat $OUT/summary.txt
