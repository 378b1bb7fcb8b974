# Codec tests that need files or tools outside kernels/cpu (issue 2): golden vectors from
# tests/golden/make_golden.py, the .npy reader, the container file and the CLI.
kvtier_add_test(codec_golden_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/codec_golden_test.cc
  LIBS kvtier_codec_tools LABELS codec)
target_compile_definitions(codec_golden_test PRIVATE
  KVTIER_GOLDEN_DIR="${CMAKE_CURRENT_LIST_DIR}/golden")
kvtier_add_test(codec_file_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/codec_file_test.cc
  LIBS kvtier_codec_tools LABELS codec)
# The CLI end to end through the real binary (exit codes and error messages).
add_test(NAME codec_cli_test
  COMMAND bash ${CMAKE_CURRENT_LIST_DIR}/codec_cli_test.sh $<TARGET_FILE:kvtier>)
set_tests_properties(codec_cli_test PROPERTIES LABELS codec TIMEOUT 300)
