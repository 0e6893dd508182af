/* unit_main.c — CUnit runner shared by every unit test binary. */
#include "unit.h"

int main(void)
{
    if (CU_initialize_registry() != CUE_SUCCESS) return 2;
    ward_unit_register();
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    unsigned ran = CU_get_number_of_tests_run();
    CU_cleanup_registry();
    return failed == 0 && ran > 0 ? 0 : 1;
}
