/* test_sniff.c — protocol detection from a client's first bytes, fed byte by byte as a slow client
 * would send them. */
#include <string.h>

#include "sniff.h"
#include "unit.h"

/* Feeds s one byte more at a time: MORE until the deciding byte, then the verdict, which must not
 * change as more bytes arrive. Returns the byte count at which it decided. */
static size_t decide(const char *s, ward_sniff_t want)
{
    size_t n = strlen(s), at = 0;
    for (size_t i = 1; i <= n; i++) {
        ward_sniff_t r = ward_sniff(s, i);
        if (r == WARD_SNIFF_MORE) {
            CU_ASSERT_EQUAL(at, 0); /* once decided, never undecided */
            continue;
        }
        CU_ASSERT_EQUAL(r, want);
        if (at == 0) at = i;
    }
    CU_ASSERT_NOT_EQUAL(at, 0);
    return at;
}

static void test_http2_preface(void)
{
    CU_ASSERT_EQUAL(decide("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x12\x04", WARD_SNIFF_HTTP2),
                    24);
    /* A near miss at the last byte is not HTTP/2. */
    CU_ASSERT_EQUAL(ward_sniff("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\t", 24), WARD_SNIFF_TCP);
    CU_ASSERT_EQUAL(ward_sniff("PRI", 3), WARD_SNIFF_MORE);
}

static void test_http1_methods(void)
{
    static const char *const reqs[] = {
        "GET / HTTP/1.1\r\n",    "HEAD /x HTTP/1.1\r\n",     "POST /p HTTP/1.1\r\n",
        "PUT /p HTTP/1.1\r\n",   "DELETE /p HTTP/1.1\r\n",   "OPTIONS * HTTP/1.1\r\n",
        "PATCH /p HTTP/1.1\r\n", "CONNECT h:1 HTTP/1.1\r\n", "TRACE / HTTP/1.1\r\n"};
    for (size_t i = 0; i < sizeof(reqs) / sizeof(reqs[0]); i++) {
        size_t at = decide(reqs[i], WARD_SNIFF_HTTP1);
        CU_ASSERT_EQUAL(at, strcspn(reqs[i], " ") + 1); /* decided at the space */
    }
    /* "P" could be PRI, POST, PUT or PATCH. */
    CU_ASSERT_EQUAL(ward_sniff("P", 1), WARD_SNIFF_MORE);
    CU_ASSERT_EQUAL(ward_sniff("PU", 2), WARD_SNIFF_MORE);
}

static void test_opaque(void)
{
    /* TLS ClientHello, Redis, lowercase method, an unregistered method, binary. */
    CU_ASSERT_EQUAL(ward_sniff("\x16\x03\x01\x02\x00", 5), WARD_SNIFF_TCP);
    CU_ASSERT_EQUAL(decide("*1\r\n$4\r\nPING\r\n", WARD_SNIFF_TCP), 1);
    CU_ASSERT_EQUAL(decide("get / HTTP/1.1\r\n", WARD_SNIFF_TCP), 1);
    CU_ASSERT_EQUAL(decide("PROPFIND / HTTP/1.1\r\n", WARD_SNIFF_TCP), 3);
    CU_ASSERT_EQUAL(decide("GETX / HTTP/1.1\r\n", WARD_SNIFF_TCP), 4);
    CU_ASSERT_EQUAL(ward_sniff("\0", 1), WARD_SNIFF_TCP);
    CU_ASSERT_EQUAL(ward_sniff("", 0), WARD_SNIFF_MORE);
}

void ward_unit_register(void)
{
    WARD_SUITE("sniff", WARD_TEST(test_http2_preface), WARD_TEST(test_http1_methods),
               WARD_TEST(test_opaque));
}
