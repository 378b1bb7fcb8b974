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
# The committed golden files are exactly what the numpy script produces (Debian's numpy).
find_program(KVTIER_SYSTEM_PYTHON3 python3 PATHS /usr/bin NO_DEFAULT_PATH)
if(KVTIER_SYSTEM_PYTHON3)
  add_test(NAME codec_golden_script_test
    COMMAND bash -c "set -e; d=$(mktemp -d); trap 'rm -rf $d' EXIT; \
      ${KVTIER_SYSTEM_PYTHON3} ${CMAKE_CURRENT_LIST_DIR}/golden/make_golden.py $d >/dev/null; \
      for f in $d/*; do cmp $f ${CMAKE_CURRENT_LIST_DIR}/golden/$(basename $f); done; \
      test $(ls $d | wc -l) -eq 27")
  set_tests_properties(codec_golden_script_test PROPERTIES LABELS codec TIMEOUT 120)
endif()
