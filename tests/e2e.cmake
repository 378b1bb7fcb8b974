# End-to-end tests (issue 6): `kvtier demo` against a real kvtier-server child process.
if(TARGET kvtier AND TARGET kvtier_demo_workload)
  kvtier_add_test(e2e_demo_test SOURCES e2e/demo_test.cc
    LIBS kvtier_demo_workload absl::strings LABELS e2e service TIMEOUT 300)
  target_compile_definitions(e2e_demo_test PRIVATE
    KVTIER_CLI_BIN="$<TARGET_FILE:kvtier>"
    KVTIER_TRACE="${PROJECT_SOURCE_DIR}/tests/e2e/trace_slice.jsonl")
  add_dependencies(e2e_demo_test kvtier kvtier-server)
endif()

# GPU export -> server -> import -> attention (skips without a device) and the GPU
# end-to-end benchmark (run on the GPU machine; docs/benchmarks/e2e.md).
if(TARGET kvtier_client_gpu AND TARGET kvtier_demo_workload)
  kvtier_add_test(e2e_gpu_transfer_test SOURCES e2e/gpu_transfer_e2e_test.cc
    LIBS kvtier_client_gpu kvtier_demo_workload kvtier_kernels_cuda kvtier_codec_cpu
    LABELS gpu e2e TIMEOUT 300)
  target_compile_definitions(e2e_gpu_transfer_test PRIVATE
    KVTIER_SERVER_BIN="$<TARGET_FILE:kvtier-server>")
  add_dependencies(e2e_gpu_transfer_test kvtier-server)

  add_executable(gpu_e2e_bench e2e/gpu_e2e_bench.cc)
  target_link_libraries(gpu_e2e_bench PRIVATE kvtier_client_gpu kvtier_demo_workload
    kvtier_kernels_cuda kvtier_codec_cpu absl::synchronization absl::time kvtier_build_flags)
endif()
