#!/usr/bin/env bash
# The one device call (see run_on_device.sh): GPU tests, compute-sanitizer memcheck and
# racecheck on a small case, the benchmark, the SDPA baseline; table printed last.
# Logs go to $OUT (tests.log, sanitizer.log, bench.log, table.md).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH="$PWD/.device/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader | tee "$OUT/gpu.txt"
date -u | tee -a "$OUT/gpu.txt"
T0=$(date +%s)
.device/bin/kvarn_cuda_test --gtest_brief=1 > "$OUT/tests.log" 2>&1; trc=$?
grep -E "^\[  (PASSED|FAILED)|FAILED|tests ran|worst|codes equal" "$OUT/tests.log" | tail -40
echo "tests rc=$trc ($(( $(date +%s) - T0 ))s)"
if [ "${SKIP_SANITIZER:-0}" != 1 ]; then
  for tool in memcheck racecheck; do
    timeout 240 compute-sanitizer --tool $tool --error-exitcode 9 .device/bin/kvarn_cuda_test \
      --gtest_filter='*AttentionGqaRatios*:*DecompressMatches*' > "$OUT/sanitizer_$tool.log" 2>&1
    echo "compute-sanitizer $tool rc=$? ($(grep -c 'ERROR SUMMARY: 0' "$OUT/sanitizer_$tool.log") clean summaries) $(grep 'ERROR SUMMARY' "$OUT/sanitizer_$tool.log" | tail -1)"
  done
fi
.device/bin/kvarn_cuda_bench "$OUT/ours.csv" > "$OUT/bench.log" 2>&1; echo "bench rc=$?"
cat "$OUT/bench.log"
if [ "${PROFILE:-0}" = 1 ]; then
  cuobjdump -sass .device/bin/kvarn_cuda_bench 2>/dev/null | awk '/Function : .*DecodeKernelILi128ELi128ELi2/{f=1;next} /Function :/{f=0} f && /\/\*[0-9a-f]{4}\*\//{split($0,a,"*/"); split(a[2],b," "); op=b[1]; if(op ~ /^@/) op=b[2]; sub(/\..*/,"",op); n[op]++; tot++} END{printf "SASS ops in DecodeKernel<128,128,2>: %d\n", tot; for(o in n) if(n[o]>=20) printf "  %s %d\n", o, n[o]}' | sort -k2 -nr | head -30 | tee "$OUT/sass.txt"
  timeout 200 ncu --clock-control none -k regex:DecodeKernel --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section WarpStateStats --section SchedulerStats --section Occupancy \
    --section MemoryWorkloadAnalysis .device/bin/kvarn_cuda_bench /tmp/p.csv 2 > "$OUT/ncu.txt" 2>&1
  echo "ncu rc=$?"; grep -E "Duration|Throughput|Stall|Issued|Eligible|Active Warps|Achieved Occ|Registers|No Eligible|One or More|Warp Cycles" "$OUT/ncu.txt" | head -40
fi
PYTHONUNBUFFERED=1 python3 .device/sdpa_bench.py "$OUT/ours.csv" "$OUT/table.md" > "$OUT/sdpa.log" 2>&1; echo "sdpa rc=$?"
echo "total $(( $(date +%s) - T0 ))s"
cat "$OUT/table.md" 2>/dev/null || tail -20 "$OUT/sdpa.log"
