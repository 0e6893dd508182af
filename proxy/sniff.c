/* sniff.c — protocol detection from a client's first bytes (see sniff.h). */
#include "sniff.h"

#include <string.h>

ward_sniff_t ward_sniff(const char *p, size_t n)
{
    static const char preface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    static const char *const methods[] = {"GET ",     "HEAD ",  "POST ",    "PUT ",  "DELETE ",
                                          "OPTIONS ", "PATCH ", "CONNECT ", "TRACE "};
    const size_t plen = sizeof(preface) - 1;
    int maybe = 0;
    if (n == 0) return WARD_SNIFF_MORE;
    if (memcmp(p, preface, n < plen ? n : plen) == 0)
        return n < plen ? WARD_SNIFF_MORE : WARD_SNIFF_HTTP2;
    for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++) {
        size_t ml = strlen(methods[i]);
        if (memcmp(p, methods[i], n < ml ? n : ml) != 0) continue;
        if (n >= ml) return WARD_SNIFF_HTTP1;
        maybe = 1;
    }
    return maybe ? WARD_SNIFF_MORE : WARD_SNIFF_TCP;
}
