# lib/policy.cmake — ward_policy: the AuthorizationPolicy YAML loader (lib/policy.c) shared by
# ward-agent, wardctl and ward-proxy. Included from lib/CMakeLists.txt and from the unit tests, so
# it guards against a second inclusion.
include_guard(GLOBAL)

add_library(ward_policy STATIC ${CMAKE_CURRENT_LIST_DIR}/policy.c)
target_include_directories(ward_policy PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(ward_policy PUBLIC ward_lib ward_proto PRIVATE PkgConfig::YAML)
