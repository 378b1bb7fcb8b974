# UCX data plane: client <-> server on loopback over a real TieredStore (label ucx), the
# kill-the-server fault test with a child process, and the UCX micro benchmark.
if(KVTIER_BUILD_SERVICE AND TARGET kvtier_ucx_server AND TARGET kvtier_ucx_client)
  kvtier_add_test(ucx_transport_test
    SOURCES ucx/ucx_transport_test.cc
    LIBS kvtier_ucx_server kvtier_ucx_client kvtier_storage kvtier_storage_testing
    LABELS ucx TIMEOUT 120)
endif()

if(KVTIER_BUILD_SERVICE AND TARGET kvtier_ucx_server AND TARGET kvtier_ucx_client)
  add_executable(ucx_server_child ucx/ucx_server_child.cc)
  target_link_libraries(ucx_server_child PRIVATE kvtier_ucx_server kvtier_storage
                        kvtier_storage_testing kvtier_build_flags)
  kvtier_add_test(ucx_fault_test
    SOURCES ucx/ucx_fault_test.cc
    LIBS kvtier_ucx_client kvtier_storage_testing
    LABELS ucx TIMEOUT 120)
  target_compile_definitions(ucx_fault_test PRIVATE
    KVTIER_UCX_SERVER_CHILD="$<TARGET_FILE:ucx_server_child>")
  add_dependencies(ucx_fault_test ucx_server_child)
endif()

# Benchmark (not a test): see docs/ucx.md.
if(KVTIER_BUILD_SERVICE AND TARGET kvtier_ucx_server AND TARGET kvtier_ucx_client)
  add_executable(ucx_bench ucx/ucx_bench.cc)
  target_link_libraries(ucx_bench PRIVATE kvtier_ucx_server kvtier_ucx_client kvtier_storage
                        kvtier_storage_testing absl::strings kvtier_build_flags)
endif()
