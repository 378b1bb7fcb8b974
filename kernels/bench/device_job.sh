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
if [ "${ONLY_PROFILE:-0}" = 1 ]; then SKIP_SANITIZER=1; PROFILE=1; fi
[ "${ONLY_PROFILE:-0}" = 1 ] || timeout ${TEST_TIMEOUT:-90} .device/bin/kvarn_cuda_test > "$OUT/tests.log" 2>&1; trc=$?
grep -E "^\[  (PASSED|FAILED)|^\[       OK|FAILED|tests ran|worst|codes equal|byte-identical|scales >1ulp [1-9]" "$OUT/tests.log" | grep -v "codes equal 100.00000%, off>1 0, scales >1ulp 0/" | tail -60
echo "tests rc=$trc ($(( $(date +%s) - T0 ))s)"
if [ "${SKIP_SANITIZER:-0}" != 1 ]; then
  for tool in memcheck racecheck; do
    if [ $tool = memcheck ]; then f='*CompressBf16Input*:*AttentionGqaRatios*:*AttentionHeadDims*:*DecompressMatches*'; lim=${MEMCHECK_TIMEOUT:-45}
    else f='*CompressBf16Input*:*AttentionGqaRatios*'; lim=${RACECHECK_TIMEOUT:-20}; fi
    timeout $lim compute-sanitizer --tool $tool --error-exitcode 9 .device/bin/kvarn_cuda_test \
      --gtest_filter="$f" > "$OUT/sanitizer_$tool.log" 2>&1
    echo "compute-sanitizer $tool rc=$? $(grep -E "(ERROR|RACECHECK) SUMMARY" "$OUT/sanitizer_$tool.log" | tail -1)"
  done
fi
[ "${ONLY_PROFILE:-0}" = 1 ] || { timeout ${BENCH_TIMEOUT:-45} .device/bin/kvarn_cuda_bench "$OUT/ours.csv" > "$OUT/bench.log" 2>&1; echo "bench rc=$?"; cat "$OUT/bench.log"; }
if [ "${PROFILE:-0}" = 1 ]; then
  # SASS opcode histogram of the k4v2_g128 decode kernel, then hardware counters of one
  # B=32, 16K launch (clocks left alone).
  cuobjdump -sass .device/bin/kvarn_cuda_bench 2>/dev/null | sed -n '/Function : .*DecodeKernelILi128ELi128ELi2/,/Function : /p' \
    | grep -E '^ +/\*[0-9a-f]+\*/' | awk '{op=$2; if (op ~ /^@/) op=$3; sub(/\..*/,"",op); sub(/;/,"",op); print op}' \
    | sort | uniq -c | sort -nr | head -24 > "$OUT/sass.txt"; echo "sass ops: $(awk '{s+=$1} END{print s}' "$OUT/sass.txt")"; tr '\n' ' ' < "$OUT/sass.txt"; echo
  m=smsp__inst_executed.sum,smsp__issue_active.avg.pct_of_peak_sustained_active,sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum,smsp__warps_active.avg.per_cycle_active,sm__pipe_alu_cycles_active.avg.pct_of_peak_sustained_active,sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active,sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active,sm__pipe_shared_cycles_active.avg.pct_of_peak_sustained_active
  for r in long_scoreboard short_scoreboard mio_throttle math_pipe_throttle wait not_selected lg_throttle barrier dispatch_stall no_instruction branch_resolving selected tex_throttle membar drain sleeping imc_miss misc; do m=$m,smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio; done
  timeout 200 ncu --clock-control none -k regex:DecodeKernel --launch-skip 2 --launch-count 1 --metrics $m \
    .device/bin/kvarn_cuda_bench /tmp/p.csv 2 > "$OUT/ncu.txt" 2>&1
  echo "ncu rc=$?"; grep -E "^ +(smsp|sm__|dram|l1tex)" "$OUT/ncu.txt" | awk '{print $1, $NF}'
fi
[ "${ONLY_PROFILE:-0}" = 1 ] && exit 0
PYTHONUNBUFFERED=1 timeout ${SDPA_TIMEOUT:-35} python3 .device/sdpa_bench.py "$OUT/ours.csv" "$OUT/table.md" > "$OUT/sdpa.log" 2>&1; echo "sdpa rc=$?"
echo "total $(( $(date +%s) - T0 ))s"
cat "$OUT/table.md" 2>/dev/null || tail -20 "$OUT/sdpa.log"
