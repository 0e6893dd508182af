# tests/unit/inject.cmake — sidecar injection (unit.inject: lib/inject.c and lib/yaml_json.c),
# checked against deploy/sidecar/ward-sidecar.yaml read from the source tree. Included from
# tests/unit/CMakeLists.txt.
include(${CMAKE_SOURCE_DIR}/lib/inject.cmake)

add_executable(test_inject ${CMAKE_CURRENT_LIST_DIR}/test_inject.c)
target_link_libraries(test_inject PRIVATE ward_unit_main ward_inject)
target_compile_definitions(test_inject PRIVATE
  WARD_SIDECAR_YAML="${CMAKE_SOURCE_DIR}/deploy/sidecar/ward-sidecar.yaml")
add_test(NAME unit.inject COMMAND test_inject)
set_tests_properties(unit.inject PROPERTIES TIMEOUT 60)
