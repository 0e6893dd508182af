/* test_addr.c — address, duration and number parsing. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "unit.h"
#include "ward/addr.h"
#include "ward/err.h"

static int addr(const char *s, int any, ward_addr_t *a)
{
    return ward_addr_parse(s, strlen(s), any, a, NULL);
}

static void test_addr_ok(void)
{
    ward_addr_t a;
    char buf[64];
    CU_ASSERT_EQUAL_FATAL(addr("127.0.0.1:8080", 0, &a), 0);
    CU_ASSERT_STRING_EQUAL(ward_addr_format((struct sockaddr *)&a.ss, buf, sizeof(buf)),
                           "127.0.0.1:8080");
    CU_ASSERT_EQUAL_FATAL(addr("[::1]:443", 0, &a), 0);
    CU_ASSERT_EQUAL(a.ss.ss_family, AF_INET6);
    CU_ASSERT_STRING_EQUAL(ward_addr_format((struct sockaddr *)&a.ss, buf, sizeof(buf)),
                           "[::1]:443");
    CU_ASSERT_EQUAL_FATAL(addr(":15001", 1, &a), 0);
    CU_ASSERT_STRING_EQUAL(ward_addr_format((struct sockaddr *)&a.ss, buf, sizeof(buf)),
                           "0.0.0.0:15001");
    CU_ASSERT_EQUAL_FATAL(addr("localhost:1", 0, &a), 0);
    CU_ASSERT_STRING_EQUAL(ward_addr_format((struct sockaddr *)&a.ss, buf, sizeof(buf)),
                           "127.0.0.1:1");
}

static void test_addr_bad(void)
{
    ward_addr_t a;
    const char *bad[] = {"",       "127.0.0.1", "127.0.0.1:",     "127.0.0.1:65536", "127.0.0.1:8x",
                         "::1:80", "[::1:80",   "example.com:80", "1.2.3.4:123456",  "[::1]80"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CU_ASSERT_EQUAL(addr(bad[i], 0, &a), WARD_EINVAL);
    CU_ASSERT_EQUAL(addr(":80", 0, &a), WARD_EINVAL);         /* host required for targets */
    CU_ASSERT_EQUAL(addr("127.0.0.1:0", 0, &a), WARD_EINVAL); /* port 0 only for listeners */
    CU_ASSERT_EQUAL(addr("127.0.0.1:0", 1, &a), 0);
}

static void test_duration(void)
{
    uint64_t ms;
    CU_ASSERT_EQUAL(ward_duration_parse("250ms", &ms), 0);
    CU_ASSERT_EQUAL(ms, 250);
    CU_ASSERT_EQUAL(ward_duration_parse("5s", &ms), 0);
    CU_ASSERT_EQUAL(ms, 5000);
    CU_ASSERT_EQUAL(ward_duration_parse("7", &ms), 0);
    CU_ASSERT_EQUAL(ms, 7000);
    CU_ASSERT_EQUAL(ward_duration_parse("2m", &ms), 0);
    CU_ASSERT_EQUAL(ms, 120000);
    CU_ASSERT_EQUAL(ward_duration_parse("1h", &ms), 0);
    CU_ASSERT_EQUAL(ms, 3600000);
    const char *bad[] = {"", "s", "5x", "-5s", "5 s", "1.5s", "99999999999999999999999h"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CU_ASSERT_NOT_EQUAL(ward_duration_parse(bad[i], &ms), 0);
}

static void test_u64(void)
{
    uint64_t v;
    CU_ASSERT_EQUAL(ward_parse_u64("42", 1, 100, &v), 0);
    CU_ASSERT_EQUAL(v, 42);
    CU_ASSERT_EQUAL(ward_parse_u64("0", 1, 100, &v), WARD_ERANGE);
    CU_ASSERT_EQUAL(ward_parse_u64("101", 1, 100, &v), WARD_ERANGE);
    CU_ASSERT_EQUAL(ward_parse_u64("18446744073709551616", 0, UINT64_MAX, &v), WARD_ERANGE);
    CU_ASSERT_EQUAL(ward_parse_u64("12a", 0, 100, &v), WARD_EINVAL);
    CU_ASSERT_EQUAL(ward_parse_u64("", 0, 100, &v), WARD_EINVAL);
}

void ward_unit_register(void)
{
    WARD_SUITE("addr", WARD_TEST(test_addr_ok), WARD_TEST(test_addr_bad), WARD_TEST(test_duration),
               WARD_TEST(test_u64));
}
