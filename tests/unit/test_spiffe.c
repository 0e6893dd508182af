/* test_spiffe.c — SPIFFE ID parsing against the SPIFFE-ID specification's rules. */
#include <string.h>

#include "unit.h"
#include "ward/err.h"
#include "ward/spiffe.h"

static int parse(const char *s)
{
    return ward_spiffe_id_parse(s, strlen(s), NULL, NULL);
}

static void test_valid(void)
{
    const char *ok[] = {"spiffe://cluster.local/ns/shop/sa/web", "spiffe://td",
                        "spiffe://a.b-c_d/x", "spiffe://td/A.b-C_9", "spiffe://1.2.3.4/x"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        CU_ASSERT_EQUAL(parse(ok[i]), 0);
}

static void test_parts(void)
{
    ward_spiffe_id_t id;
    const char *s = "spiffe://cluster.local/ns/a/sa/b";
    CU_ASSERT_EQUAL_FATAL(ward_spiffe_id_parse(s, strlen(s), &id, NULL), 0);
    CU_ASSERT_EQUAL(id.td_len, strlen("cluster.local"));
    CU_ASSERT_EQUAL(memcmp(id.td, "cluster.local", id.td_len), 0);
    CU_ASSERT_EQUAL(id.path_len, strlen("/ns/a/sa/b"));
    CU_ASSERT_EQUAL(memcmp(id.path, "/ns/a/sa/b", id.path_len), 0);
}

static void test_invalid(void)
{
    const char *bad[] = {"",
                         "spiffe://",
                         "http://td/x",
                         "SPIFFE://td/x",
                         "spiffe:/td/x",
                         "spiffe://TD/x",
                         "spiffe://td:8080/x",
                         "spiffe://user@td/x",
                         "spiffe://td/",
                         "spiffe://td//x",
                         "spiffe://td/x/",
                         "spiffe://td/./x",
                         "spiffe://td/x/..",
                         "spiffe://td/x?y=1",
                         "spiffe://td/x#frag",
                         "spiffe://td/%41",
                         "spiffe://td/a b",
                         "spiffe://td/ü",
                         "spiffe://t*d/x"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        const char *why = NULL;
        int rc = ward_spiffe_id_parse(bad[i], strlen(bad[i]), NULL, &why);
        CU_ASSERT_EQUAL(rc, WARD_ESPIFFE);
        CU_ASSERT_PTR_NOT_NULL(why);
    }
}

static void test_lengths(void)
{
    char big[2100];
    strcpy(big, "spiffe://td/");
    memset(big + 12, 'a', sizeof(big) - 13);
    big[sizeof(big) - 1] = '\0';
    CU_ASSERT_EQUAL(parse(big), WARD_ESPIFFE); /* > 2048 bytes */
    big[2048] = '\0';
    CU_ASSERT_EQUAL(parse(big), 0); /* exactly 2048 */
    char td[300] = "spiffe://";
    memset(td + 9, 'a', 256);
    td[265] = '\0';
    CU_ASSERT_EQUAL(parse(td), WARD_ESPIFFE); /* trust domain > 255 */
    td[9 + 255] = '\0';
    CU_ASSERT_EQUAL(parse(td), 0);
    /* An embedded NUL is never part of a valid id. */
    CU_ASSERT_EQUAL(ward_spiffe_id_parse("spiffe://td/a\0b", 15, NULL, NULL), WARD_ESPIFFE);
}

static void test_td_validate(void)
{
    CU_ASSERT_EQUAL(ward_spiffe_td_validate("cluster.local", 13, NULL), 0);
    CU_ASSERT_EQUAL(ward_spiffe_td_validate("", 0, NULL), WARD_ESPIFFE);
    CU_ASSERT_EQUAL(ward_spiffe_td_validate("Upper", 5, NULL), WARD_ESPIFFE);
}

void ward_unit_register(void)
{
    WARD_SUITE("spiffe", WARD_TEST(test_valid), WARD_TEST(test_parts), WARD_TEST(test_invalid),
               WARD_TEST(test_lengths), WARD_TEST(test_td_validate));
}
