# cmake/fuzz.cmake — the libFuzzer build (issue 7). Included from the top-level CMakeLists.txt before
# its add_subdirectory() calls (or with -DCMAKE_PROJECT_INCLUDE=cmake/fuzz.cmake), because the flags
# it adds must reach every ward library. With WARD_FUZZ=ON (clang only; use its own build tree,
# e.g. build-fuzz) every target is compiled with coverage instrumentation + ASan + UBSan, and
# tests/fuzz builds one libFuzzer binary per parser of untrusted input; tools/fuzz drives them.
# With WARD_FUZZ=OFF (the default) this file changes nothing.
include_guard(GLOBAL)

option(WARD_FUZZ "Build the libFuzzer targets in tests/fuzz (clang; instruments every target)" OFF)

if(WARD_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID MATCHES "Clang")
    message(FATAL_ERROR "WARD_FUZZ needs clang (libFuzzer): -DCMAKE_C_COMPILER=clang")
  endif()
  add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=undefined
                      -fno-omit-frame-pointer -g -O1)
  add_link_options(-fsanitize=address,undefined)
  # Added here, possibly before the top level's own definitions and warning flags: tests/fuzz sets
  # what it needs itself. Its targets name ward's libraries, which CMake resolves at the end.
  add_subdirectory(${CMAKE_CURRENT_LIST_DIR}/../tests/fuzz ${CMAKE_BINARY_DIR}/tests/fuzz)
endif()
