# tests/unit/control.cmake — ward-agent's CA and attestation suites (included by CMakeLists.txt).
# unit.ca uses the certificates of the ward_certs fixture as an operator-provided CA; unit.attest
# verifies tokens and JWKS files minted by tests/lib/tokens.py in the ward_tokens fixture.
set(WARD_TOKEN_DIR ${CMAKE_BINARY_DIR}/test-tokens)
add_test(NAME unit.mint_tokens
  COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/lib/tokens.py ${WARD_TOKEN_DIR})
set_tests_properties(unit.mint_tokens PROPERTIES FIXTURES_SETUP ward_tokens)

foreach(suite ca attest)
  add_executable(test_${suite} test_${suite}.c)
  target_link_libraries(test_${suite} PRIVATE ward_unit_main ward_control_core)
  add_test(NAME unit.${suite} COMMAND test_${suite})
  set_tests_properties(unit.${suite} PROPERTIES TIMEOUT 60
    ENVIRONMENT "WARD_CERT_DIR=${WARD_CERT_DIR};WARD_TOKEN_DIR=${WARD_TOKEN_DIR}")
endforeach()
set_tests_properties(unit.ca PROPERTIES FIXTURES_REQUIRED ward_certs)
set_tests_properties(unit.attest PROPERTIES FIXTURES_REQUIRED ward_tokens)
