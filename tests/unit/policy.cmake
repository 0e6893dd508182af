# tests/unit/policy.cmake — the policy loader suite (lib/policy.c): validation positions, snapshots,
# hashes, ConfigMap-style directories, and the sample files under tests/policy/. Included from
# tests/unit/CMakeLists.txt.
include(${CMAKE_SOURCE_DIR}/lib/policy.cmake)

add_executable(test_policy ${CMAKE_CURRENT_LIST_DIR}/test_policy.c)
target_link_libraries(test_policy PRIVATE ward_unit_main ward_policy)
target_compile_definitions(test_policy PRIVATE
  WARD_POLICY_SAMPLES="${CMAKE_SOURCE_DIR}/tests/policy")
add_test(NAME unit.policy COMMAND test_policy)
set_tests_properties(unit.policy PROPERTIES TIMEOUT 60)
