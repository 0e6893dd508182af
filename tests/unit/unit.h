/* unit.h — tiny glue over CUnit: each test file defines ward_unit_register() adding its suites;
 * unit_main.c runs them and exits non-zero on any failure. */
#ifndef WARD_UNIT_H
#define WARD_UNIT_H

#include <CUnit/Basic.h>

void ward_unit_register(void);

#define WARD_SUITE(name, ...)                                                                      \
    do {                                                                                           \
        CU_pSuite s_ = CU_add_suite(name, NULL, NULL);                                             \
        struct {                                                                                   \
            const char *n;                                                                         \
            CU_TestFunc f;                                                                         \
        } t_[] = {__VA_ARGS__};                                                                    \
        for (size_t i_ = 0; i_ < sizeof(t_) / sizeof(t_[0]); i_++)                                 \
            CU_add_test(s_, t_[i_].n, t_[i_].f);                                                   \
    } while (0)

#define WARD_TEST(fn)                                                                              \
    {                                                                                              \
#fn, fn                                                                                    \
    }

#endif
