# End-to-end tests (issue 6): `kvtier demo` against a real kvtier-server child process.
if(TARGET kvtier AND TARGET kvtier_demo_workload)
  kvtier_add_test(e2e_demo_test SOURCES e2e/demo_test.cc
    LIBS kvtier_demo_workload absl::strings LABELS e2e service TIMEOUT 300)
  target_compile_definitions(e2e_demo_test PRIVATE
    KVTIER_CLI_BIN="$<TARGET_FILE:kvtier>"
    KVTIER_TRACE="${PROJECT_SOURCE_DIR}/tests/e2e/trace_slice.jsonl")
  add_dependencies(e2e_demo_test kvtier kvtier-server)
endif()
