# Admin commands of the kvtier CLI: lookup, put, get, stats, health (tools/admin.cc).
if(KVTIER_BUILD_SERVICE AND TARGET kvtier_client)
  target_sources(kvtier PRIVATE ${CMAKE_CURRENT_LIST_DIR}/admin.cc)
  target_link_libraries(kvtier PRIVATE kvtier_client)
endif()
