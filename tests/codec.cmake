# Codec tests that need files or tools outside kernels/cpu (issue 2): golden vectors from
# tests/golden/make_golden.py, the .npy reader, the container file and the CLI.
kvtier_add_test(codec_golden_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/codec_golden_test.cc
  LIBS kvtier_codec_tools LABELS codec)
target_compile_definitions(codec_golden_test PRIVATE
  KVTIER_GOLDEN_DIR="${CMAKE_CURRENT_LIST_DIR}/golden")
