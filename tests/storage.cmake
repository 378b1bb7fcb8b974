# Storage cross-component tests: the trace replay of `kvtier bench trace` (tools/) on the
# TieredStore (storage/). The storage unit, stress and crash tests live in storage/.
kvtier_add_test(storage_bench_trace_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/storage/bench_trace_test.cc
  LIBS kvtier_bench_trace
  LABELS storage)
