/* test_peers.c — the peer directory of transparent outbound capture: parsing, errors with line
 * numbers, and lookups (port-specific entries win over address-only ones; IPv4 and IPv6). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "peers.h"
#include "unit.h"
#include "ward/err.h"

static struct sockaddr_storage sa(const char *ip, unsigned port)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (strchr(ip, ':')) {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        inet_pton(AF_INET6, ip, &s6->sin6_addr);
    } else {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_port = htons((uint16_t)port);
        inet_pton(AF_INET, ip, &s4->sin_addr);
    }
    return ss;
}

static const char *find(ward_peer_entry_t *e, size_t n, const char *ip, unsigned port)
{
    struct sockaddr_storage ss = sa(ip, port);
    return ward_peers_find(e, n, (struct sockaddr *)&ss);
}

static void test_parse_and_lookup(void)
{
    static const char text[] = "# pods with a sidecar\n"
                               "198.18.0.2 spiffe://td/ns/shop/sa/orders\n"
                               "198.18.0.3:8080 spiffe://td/ns/shop/sa/web   # only this port\n"
                               "198.18.0.3 spiffe://td/ns/shop/sa/web-admin\n"
                               "\n"
                               "[fd00::5]:443 spiffe://td/ns/x/sa/y\n"
                               "fd00::6 spiffe://td/ns/x/sa/z\r\n";
    ward_peer_entry_t *e = NULL;
    size_t n = 0;
    char err[256] = "";
    CU_ASSERT_EQUAL_FATAL(ward_peers_parse(text, sizeof(text) - 1, &e, &n, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(n, 5);
    CU_ASSERT_STRING_EQUAL(find(e, n, "198.18.0.2", 1234), "spiffe://td/ns/shop/sa/orders");
    CU_ASSERT_STRING_EQUAL(find(e, n, "198.18.0.3", 8080), "spiffe://td/ns/shop/sa/web");
    CU_ASSERT_STRING_EQUAL(find(e, n, "198.18.0.3", 9090), "spiffe://td/ns/shop/sa/web-admin");
    CU_ASSERT_PTR_NULL(find(e, n, "198.18.0.4", 8080));
    CU_ASSERT_STRING_EQUAL(find(e, n, "fd00::5", 443), "spiffe://td/ns/x/sa/y");
    CU_ASSERT_PTR_NULL(find(e, n, "fd00::5", 80));
    CU_ASSERT_STRING_EQUAL(find(e, n, "fd00::6", 80), "spiffe://td/ns/x/sa/z");
    /* An IPv4-mapped IPv6 destination is the IPv4 address. */
    CU_ASSERT_STRING_EQUAL(find(e, n, "::ffff:198.18.0.2", 80), "spiffe://td/ns/shop/sa/orders");
    ward_peers_free_entries(e, n);
}

static void test_errors(void)
{
    static const char *const bad[] = {
        "198.18.0.2\n",                                       /* no id */
        "ok.example spiffe://td/a\n",                         /* not an IP */
        "198.18.0.2 https://td/a\n",                          /* not a SPIFFE id */
        "198.18.0.2 spiffe://td/a extra\n",                   /* trailing field */
        "198.18.0.2 spiffe://td/a\n198.18.0.2 spiffe://td/b", /* conflicting entries */
    };
    static const int lines[] = {1, 1, 1, 1, 0};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ward_peer_entry_t *e = NULL;
        size_t n = 0;
        char err[256] = "";
        CU_ASSERT_EQUAL(ward_peers_parse(bad[i], strlen(bad[i]), &e, &n, err, sizeof(err)),
                        WARD_EPARSE);
        CU_ASSERT_PTR_NULL(e);
        if (lines[i]) CU_ASSERT_PTR_NOT_NULL(strstr(err, "line 1"));
        CU_ASSERT_NOT_EQUAL(err[0], '\0');
    }
    /* The same entry twice is harmless. */
    static const char dup[] = "198.18.0.2 spiffe://td/a\n198.18.0.2 spiffe://td/a\n";
    ward_peer_entry_t *e = NULL;
    size_t n = 0;
    char err[256];
    CU_ASSERT_EQUAL(ward_peers_parse(dup, sizeof(dup) - 1, &e, &n, err, sizeof(err)), 0);
    ward_peers_free_entries(e, n);
}

void ward_unit_register(void)
{
    WARD_SUITE("peers", WARD_TEST(test_parse_and_lookup), WARD_TEST(test_errors));
}
