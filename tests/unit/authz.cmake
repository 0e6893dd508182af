# tests/unit/authz.cmake — request-target normalisation (unit.path, lib/path.c) and the compiled
# policy matcher (unit.authz, lib/authz.c; its snapshots come from YAML through the real loader).
# Included from tests/unit/CMakeLists.txt.
include(${CMAKE_SOURCE_DIR}/lib/policy.cmake)
include(${CMAKE_SOURCE_DIR}/lib/authz.cmake)

add_executable(test_path ${CMAKE_CURRENT_LIST_DIR}/test_path.c)
target_link_libraries(test_path PRIVATE ward_unit_main ward_lib)
add_test(NAME unit.path COMMAND test_path)
set_tests_properties(unit.path PROPERTIES TIMEOUT 60)

add_executable(test_authz ${CMAKE_CURRENT_LIST_DIR}/test_authz.c)
target_link_libraries(test_authz PRIVATE ward_unit_main ward_authz ward_policy)
add_test(NAME unit.authz COMMAND test_authz)
set_tests_properties(unit.authz PROPERTIES TIMEOUT 120)
