# UCX data plane: client <-> server on loopback over a real TieredStore (label ucx), the
# kill-the-server fault test with a child process, and the UCX micro benchmark.
if(KVTIER_BUILD_SERVICE AND TARGET kvtier_ucx_server AND TARGET kvtier_ucx_client)
  kvtier_add_test(ucx_transport_test
    SOURCES ucx/ucx_transport_test.cc
    LIBS kvtier_ucx_server kvtier_ucx_client kvtier_storage kvtier_storage_testing
    LABELS ucx TIMEOUT 120)
endif()
