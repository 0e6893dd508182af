# tests/unit/grpc.cmake: the gRPC engine suite (lib/grpc.c), included from CMakeLists.txt here.
add_executable(test_grpc test_grpc.c)
target_link_libraries(test_grpc PRIVATE ward_unit_main ward_lib)
add_test(NAME unit.grpc COMMAND test_grpc)
set_tests_properties(unit.grpc PROPERTIES TIMEOUT 60)
