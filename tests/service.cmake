# Multi-process service tests: real kvtier-server processes on loopback (tests/service/).
if(KVTIER_BUILD_SERVICE AND TARGET kvtier-server AND TARGET kvtier_client)
  add_library(kvtier_service_testing STATIC service/harness.cc service/tcp_proxy.cc)
  target_include_directories(kvtier_service_testing PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(kvtier_service_testing
    PUBLIC kvtier_client kvtier_payload absl::time absl::statusor absl::synchronization
           PkgConfig::HTTPLIB
    PRIVATE kvtier_build_flags)
  target_compile_definitions(kvtier_service_testing
    PRIVATE KVTIER_SERVER_BIN="$<TARGET_FILE:kvtier-server>")
  add_dependencies(kvtier_service_testing kvtier-server)

  # kvtier_service_test(<file stem>): builds tests/service/<stem>.cc as service_<stem>.
  function(kvtier_service_test stem)
    kvtier_add_test(service_${stem} SOURCES service/${stem}.cc LIBS kvtier_service_testing ${ARGN}
                    LABELS service TIMEOUT 240)
  endfunction()
  kvtier_service_test(integration_test)
endif()
if(KVTIER_BUILD_SERVICE AND TARGET service_integration_test)
  kvtier_service_test(security_test)
  target_compile_definitions(service_security_test PRIVATE KVTIER_CLI_BIN="$<TARGET_FILE:kvtier>")
  add_dependencies(service_security_test kvtier)
  kvtier_service_test(admin_cli_test)
  target_compile_definitions(service_admin_cli_test PRIVATE KVTIER_CLI_BIN="$<TARGET_FILE:kvtier>")
  add_dependencies(service_admin_cli_test kvtier)
endif()
if(KVTIER_BUILD_SERVICE AND TARGET service_integration_test)
  kvtier_service_test(observability_test)
endif()
if(KVTIER_BUILD_SERVICE AND TARGET service_integration_test)
  kvtier_service_test(bad_input_test)
endif()
if(KVTIER_BUILD_SERVICE AND TARGET service_integration_test)
  kvtier_service_test(fault_test)
endif()
if(KVTIER_BUILD_SERVICE AND TARGET service_integration_test)
  kvtier_service_test(load_test)
endif()
if(KVTIER_BUILD_SERVICE AND TARGET service_integration_test)
  kvtier_service_test(put_buffers_test)
endif()
if(KVTIER_BUILD_SERVICE AND TARGET service_integration_test AND TARGET kvtier_ucx_client
   AND TARGET kvtier_ucx_server)
  kvtier_service_test(ucx_session_test kvtier_ucx_client)
  kvtier_service_test(ucx_workers_test kvtier_ucx_client)
endif()

# kvtier-service-bench: loopback gRPC/UCX vs Redis benchmark (not a test; see
# docs/benchmarks/service.md).
if(KVTIER_BUILD_SERVICE AND TARGET kvtier_service_testing)
  pkg_check_modules(HIREDIS IMPORTED_TARGET hiredis)
  if(HIREDIS_FOUND)
    add_executable(kvtier-service-bench service/service_bench.cc)
    target_link_libraries(kvtier-service-bench PRIVATE kvtier_service_testing kvtier_service
                          PkgConfig::HIREDIS kvtier_build_flags)
  endif()
endif()
