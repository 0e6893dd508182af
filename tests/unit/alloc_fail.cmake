# tests/unit/alloc_fail.cmake — unit.alloc_fail: every allocation of an HTTP/1.1, an HTTP/2 and an
# opaque TCP exchange through the in-process proxy (tests/fuzz/proxy_harness.c) failed in turn.
# Included from tests/unit/CMakeLists.txt; certificates from the ward_certs fixture.
add_executable(test_alloc_fail ${CMAKE_CURRENT_LIST_DIR}/test_alloc_fail.c
  ${CMAKE_SOURCE_DIR}/tests/fuzz/proxy_harness.c)
target_include_directories(test_alloc_fail PRIVATE ${CMAKE_SOURCE_DIR}/tests/fuzz)
target_link_libraries(test_alloc_fail PRIVATE ward_unit_main ward_proxy_core)
add_test(NAME unit.alloc_fail COMMAND test_alloc_fail)
set_tests_properties(unit.alloc_fail PROPERTIES TIMEOUT 300 FIXTURES_REQUIRED ward_certs
  ENVIRONMENT "WARD_CERT_DIR=${WARD_CERT_DIR}")
