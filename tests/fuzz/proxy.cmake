# tests/fuzz/proxy.cmake — the proxy's data path under libFuzzer: fuzz_http1, fuzz_http2 and
# fuzz_sniff play a plaintext caller through proxy_harness.c (an in-process worker, a fake app, a
# fixed policy; see proxy_harness.h). Included from tests/fuzz/CMakeLists.txt, after its
# ward_fuzz_target() definition and before the ctest registration that walks WARD_FUZZ_TARGETS.
#
# The harness's identity is minted at build time by tests/lib/certs.py into this build tree
# (harness-certs/; nothing generated is committed); WARD_FUZZ_CERT_DIR or WARD_CERT_DIR in the
# environment points a run elsewhere. Seeds: corpus/http1, corpus/http2, corpus/sniff (written by
# make_proxy_seeds.py).
set(WARD_FUZZ_CERT_DIR ${CMAKE_CURRENT_BINARY_DIR}/harness-certs)
set(ward_fuzz_cert_files ${WARD_FUZZ_CERT_DIR}/server.pem ${WARD_FUZZ_CERT_DIR}/server-key.pem
  ${WARD_FUZZ_CERT_DIR}/ca.pem)
add_custom_command(OUTPUT ${ward_fuzz_cert_files}
  COMMAND /usr/bin/python3 ${CMAKE_SOURCE_DIR}/tests/lib/certs.py ${WARD_FUZZ_CERT_DIR}
          --only ca --only server
  DEPENDS ${CMAKE_SOURCE_DIR}/tests/lib/certs.py
  COMMENT "Minting the proxy harness's test certificates (tests/lib/certs.py)")
add_custom_target(ward_fuzz_certs DEPENDS ${ward_fuzz_cert_files})

add_library(ward_fuzz_proxy_harness STATIC ${CMAKE_CURRENT_LIST_DIR}/proxy_harness.c)
target_include_directories(ward_fuzz_proxy_harness PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(ward_fuzz_proxy_harness PUBLIC ward_proxy_core)
add_dependencies(ward_fuzz_proxy_harness ward_fuzz_certs)

foreach(name http1 http2 sniff)
  ward_fuzz_target(${name} ward_fuzz_proxy_harness)
  target_compile_definitions(fuzz_${name} PRIVATE WARD_FUZZ_CERT_DIR="${WARD_FUZZ_CERT_DIR}")
endforeach()

# Reproducers of proxy bugs that are still open: repro/<target>/<name>, found by these targets and
# kept out of the seed corpora (a seed that crashes would fail fuzz.<target>). Each ctest
# fuzz.known_bug.<target>.<name> runs its target on the file (strictly: WARD_PH_STRICT=1, see
# proxy_harness.h) and passes while the output still shows the bug; once the proxy is fixed it
# turns red: then move the file into corpus/<target>/, delete its line here and its entry in
# proxy_harness.c (ph_known_bug), if it has one.
function(ward_fuzz_known_bug target name expected)
  add_test(NAME fuzz.known_bug.${target}.${name}
    COMMAND fuzz_${target} ${CMAKE_CURRENT_LIST_DIR}/repro/${target}/${name})
  set_tests_properties(fuzz.known_bug.${target}.${name} PROPERTIES LABELS "fuzz;known_bug"
    TIMEOUT 60 PASS_REGULAR_EXPRESSION "${expected}"
    ENVIRONMENT "UBSAN_OPTIONS=print_stacktrace=1;WARD_PH_STRICT=1;WARD_PH_VERBOSE=1")
endfunction()
if(NOT DEFINED BUILD_TESTING OR BUILD_TESTING)
  enable_testing()
  # (no open bug: the reproducers found so far are seeds in corpus/ now)
endif()
