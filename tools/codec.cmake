# `kvtier codec ...` (issue 2): the KVarN codec on the CPU from the command line.
# kvtier_codec_tools: .npy I/O and the codec container file, shared by the CLI and tests.
add_library(kvtier_codec_tools STATIC ${CMAKE_CURRENT_LIST_DIR}/codec_npy.cc)
target_include_directories(kvtier_codec_tools PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(kvtier_codec_tools
  PUBLIC kvtier_codec_cpu absl::status absl::statusor absl::span absl::strings
  PRIVATE kvtier_build_flags)
