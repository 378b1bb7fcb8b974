# `kvtier demo` (issue 6, README command 1): trace replay through a local kvtier-server.
# kvtier_demo_workload: trace reader, synthetic request KV, payload builder, exact
# attention and the local server process; shared by the demo, its tests and the GPU
# end-to-end benchmark.
if(TARGET kvtier_client AND TARGET kvtier-server)
  add_library(kvtier_demo_workload STATIC ${CMAKE_CURRENT_LIST_DIR}/demo_workload.cc)
  target_include_directories(kvtier_demo_workload PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(kvtier_demo_workload
    PUBLIC kvtier_client kvtier_codec_cpu kvtier_payload kvtier_bench_trace absl::status absl::statusor absl::span
    PRIVATE absl::strings absl::time kvtier_build_flags)
  target_compile_definitions(kvtier_demo_workload
    PRIVATE KVTIER_SERVER_BIN="$<TARGET_FILE:kvtier-server>")

  target_sources(kvtier PRIVATE ${CMAKE_CURRENT_LIST_DIR}/demo.cc)
  if(TARGET kvtier_client_gpu)
    target_sources(kvtier PRIVATE ${CMAKE_CURRENT_LIST_DIR}/demo_gpu.cc)
    target_link_libraries(kvtier PRIVATE kvtier_client_gpu kvtier_kernels_cuda)
  else()
    target_sources(kvtier PRIVATE ${CMAKE_CURRENT_LIST_DIR}/demo_gpu_stub.cc)
  endif()
  target_link_libraries(kvtier PRIVATE kvtier_demo_workload absl::str_format absl::time)
  target_compile_definitions(kvtier PRIVATE KVTIER_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  # `kvtier demo` starts the server from the same build directory.
  add_dependencies(kvtier kvtier-server)
endif()
