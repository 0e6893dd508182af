/* test_log.c — JSON escaping and error strings. */
#include <string.h>

#include "unit.h"
#include "ward/err.h"
#include "ward/log.h"

static void test_escape(void)
{
    char out[64];
    size_t len = 0;
    const char in[] = "a\"b\\c\nd\x01";
    CU_ASSERT_EQUAL(ward_json_escape(out, sizeof(out), &len, in, sizeof(in) - 1), 0);
    out[len] = '\0';
    CU_ASSERT_STRING_EQUAL(out, "a\\\"b\\\\c\\nd\\u0001");
}

static void test_escape_overflow(void)
{
    char out[8];
    size_t len = 0;
    CU_ASSERT_EQUAL(ward_json_escape(out, sizeof(out), &len, "0123456789", 10), -1);
    CU_ASSERT(len < sizeof(out)); /* what fitted is kept, never past the end */
}

static void test_levels(void)
{
    ward_log_level_t l;
    CU_ASSERT_EQUAL(ward_log_parse_level("warn", &l), 0);
    CU_ASSERT_EQUAL(l, WARD_LOG_WARN);
    CU_ASSERT_EQUAL(ward_log_parse_level("loud", &l), WARD_EINVAL);
    ward_log_set_level(WARD_LOG_ERROR);
    CU_ASSERT_FALSE(ward_log_enabled(WARD_LOG_INFO));
    CU_ASSERT_TRUE(ward_log_enabled(WARD_LOG_ERROR));
    ward_log_set_level(WARD_LOG_INFO);
}

static void test_strerror(void)
{
    CU_ASSERT_STRING_EQUAL(ward_strerror(WARD_ESPIFFE), "invalid SPIFFE id");
    CU_ASSERT_STRING_EQUAL(ward_strerror(-ENOENT), strerror(ENOENT));
    CU_ASSERT_STRING_EQUAL(ward_strerror(0), "success");
    CU_ASSERT_STRING_EQUAL(ward_strerror(-99999), "unknown error");
}

void ward_unit_register(void)
{
    WARD_SUITE("log", WARD_TEST(test_escape), WARD_TEST(test_escape_overflow),
               WARD_TEST(test_levels), WARD_TEST(test_strerror));
}
