# lib/authz.cmake — ward_authz: the compiled policy matcher (lib/authz.c, ward/authz.h) that the
# proxy builds from each PolicySnapshot, and that wardctl, the bench and the tests drive. Included
# from lib/CMakeLists.txt and from the unit tests, so it guards against a second inclusion.
include_guard(GLOBAL)

add_library(ward_authz STATIC ${CMAKE_CURRENT_LIST_DIR}/authz.c)
target_include_directories(ward_authz PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(ward_authz PUBLIC ward_lib ward_proto)
