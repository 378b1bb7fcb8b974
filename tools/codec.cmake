# `kvtier codec ...` (issue 2): the KVarN codec on the CPU from the command line.
# kvtier_codec_tools: .npy I/O and the codec container file, shared by the CLI and tests.
add_library(kvtier_codec_tools STATIC
  ${CMAKE_CURRENT_LIST_DIR}/codec_npy.cc ${CMAKE_CURRENT_LIST_DIR}/codec_file.cc)
target_include_directories(kvtier_codec_tools PUBLIC ${PROJECT_SOURCE_DIR})
target_link_libraries(kvtier_codec_tools
  PUBLIC kvtier_codec_cpu kvtier_payload absl::status absl::statusor absl::span absl::strings
  PRIVATE kvtier_build_flags)

# The subcommand itself is compiled into the executable (a static-library object holding
# only a registrar would be dropped by the linker).
target_sources(kvtier PRIVATE ${CMAKE_CURRENT_LIST_DIR}/codec_command.cc)
target_link_libraries(kvtier PRIVATE kvtier_codec_tools)
