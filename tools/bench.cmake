# `kvtier bench`: macro benchmarks (trace replay against the TieredStore).
# kvtier_bench_trace is also linked by tests/storage (scale invariance of the replay).
add_library(kvtier_bench_trace STATIC ${CMAKE_CURRENT_LIST_DIR}/bench_trace.cc)
target_include_directories(kvtier_bench_trace PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(kvtier_bench_trace
  PUBLIC kvtier_storage absl::statusor absl::strings
  PRIVATE kvtier_payload kvtier_build_flags absl::str_format)
target_sources(kvtier PRIVATE ${CMAKE_CURRENT_LIST_DIR}/bench_cmd.cc)
target_link_libraries(kvtier PRIVATE kvtier_bench_trace absl::strings)
