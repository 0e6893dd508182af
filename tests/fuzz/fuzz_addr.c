/* fuzz_addr.c — addresses and durations (lib/addr.c): mappings, --admin, --agent and every
 * duration flag of ward-proxy come through these. The input is one string, parsed as an address
 * (with and without allow_any_host), a duration and a bounded integer. A parsed address must
 * format and parse back to the same socket address. */
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "ward/addr.h"
#include "ward/err.h"

static void ward__roundtrip(const ward_addr_t *a, int allow_any)
{
    char buf[64];
    ward_addr_t b;
    const char *why = NULL;
    ward_addr_format((const struct sockaddr *)&a->ss, buf, sizeof(buf));
    int rc = ward_addr_parse(buf, strlen(buf), allow_any, &b, &why);
    if (rc != 0) fprintf(stderr, "formatted '%s' does not parse: %s\n", buf, why ? why : "");
    WARD_FUZZ_CHECK(rc == 0);
    WARD_FUZZ_CHECK(a->len == b.len && a->ss.ss_family == b.ss.ss_family);
    if (a->ss.ss_family == AF_INET) {
        const struct sockaddr_in *x = (const void *)&a->ss, *y = (const void *)&b.ss;
        WARD_FUZZ_CHECK(x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr);
    } else {
        WARD_FUZZ_CHECK(a->ss.ss_family == AF_INET6);
        const struct sockaddr_in6 *x = (const void *)&a->ss, *y = (const void *)&b.ss;
        WARD_FUZZ_CHECK(x->sin6_port == y->sin6_port &&
                        memcmp(&x->sin6_addr, &y->sin6_addr, sizeof(x->sin6_addr)) == 0);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    for (int any = 0; any < 2; any++) {
        ward_addr_t a;
        const char *why = NULL;
        int rc = ward_addr_parse((const char *)data, size, any, &a, &why);
        if (rc == 0)
            ward__roundtrip(&a, any);
        else
            WARD_FUZZ_CHECK(rc == WARD_EINVAL && why != NULL);
    }

    /* The string forms take NUL-terminated text. */
    char *s = malloc(size + 1);
    if (s == NULL) return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    uint64_t ms = 0, n = 0;
    int rc = ward_duration_parse(s, &ms);
    WARD_FUZZ_CHECK(rc == 0 || rc == WARD_EINVAL || rc == WARD_ERANGE);
    rc = ward_parse_u64(s, 1, 10000000, &n);
    WARD_FUZZ_CHECK(rc == 0 || rc == WARD_EINVAL || rc == WARD_ERANGE);
    if (rc == 0) WARD_FUZZ_CHECK(n >= 1 && n <= 10000000);
    rc = ward_parse_u64(s, 0, UINT64_MAX, &n);
    WARD_FUZZ_CHECK(rc == 0 || rc == WARD_EINVAL || rc == WARD_ERANGE);
    free(s);
    return 0;
}
