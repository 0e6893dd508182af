/* addr.c — address, duration and number parsing (see ward/addr.h). */
#include "ward/addr.h"
#include "ward/err.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>

static int ward__addr_fail(const char **why, const char *msg)
{
    if (why) *why = msg;
    return WARD_EINVAL;
}

int ward_addr_parse(const char *s, size_t n, int allow_any_host, ward_addr_t *out, const char **why)
{
    char host[64];
    const char *colon;
    size_t hlen;
    if (n == 0) return ward__addr_fail(why, "empty address");
    if (s[0] == '[') {
        const char *rb = memchr(s, ']', n);
        if (rb == NULL) return ward__addr_fail(why, "missing ']' in IPv6 address");
        hlen = (size_t)(rb - s - 1);
        if (hlen >= sizeof(host)) return ward__addr_fail(why, "host too long");
        memcpy(host, s + 1, hlen);
        host[hlen] = '\0';
        colon = rb + 1;
        if (colon >= s + n || *colon != ':') return ward__addr_fail(why, "missing :PORT");
    } else {
        colon = NULL;
        for (size_t i = n; i > 0; i--) {
            if (s[i - 1] == ':') {
                colon = s + i - 1;
                break;
            }
        }
        if (colon == NULL) return ward__addr_fail(why, "missing :PORT");
        hlen = (size_t)(colon - s);
        if (hlen >= sizeof(host)) return ward__addr_fail(why, "host too long");
        memcpy(host, s, hlen);
        host[hlen] = '\0';
        if (memchr(host, ':', hlen)) return ward__addr_fail(why, "IPv6 address needs [brackets]");
    }
    const char *pstart = colon + 1;
    size_t plen = (size_t)(s + n - pstart);
    if (plen == 0 || plen > 5) return ward__addr_fail(why, "bad port");
    unsigned port = 0;
    for (size_t i = 0; i < plen; i++) {
        if (!isdigit((unsigned char)pstart[i])) return ward__addr_fail(why, "bad port");
        port = port * 10 + (unsigned)(pstart[i] - '0');
    }
    if (port > 65535) return ward__addr_fail(why, "port out of range");
    if (port == 0 && !allow_any_host) return ward__addr_fail(why, "port 0 not allowed here");

    memset(out, 0, sizeof(*out));
    if (hlen == 0) {
        if (!allow_any_host) return ward__addr_fail(why, "missing host");
        strcpy(host, "0.0.0.0");
    } else if (strcmp(host, "localhost") == 0) {
        strcpy(host, "127.0.0.1");
    }
    struct sockaddr_in *v4 = (struct sockaddr_in *)&out->ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&out->ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        out->len = sizeof(*v4);
        return 0;
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        out->len = sizeof(*v6);
        return 0;
    }
    return ward__addr_fail(why, "host is not a numeric IP address");
}

char *ward_addr_format(const struct sockaddr *sa, char *buf, size_t size)
{
    char ip[INET6_ADDRSTRLEN];
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &v4->sin_addr, ip, sizeof(ip));
        snprintf(buf, size, "%s:%u", ip, ntohs(v4->sin_port));
    } else if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &v6->sin6_addr, ip, sizeof(ip));
        snprintf(buf, size, "[%s]:%u", ip, ntohs(v6->sin6_port));
    } else {
        snprintf(buf, size, "unknown");
    }
    return buf;
}

int ward_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    uint64_t v = 0;
    if (s == NULL || *s == '\0') return WARD_EINVAL;
    for (const char *p = s; *p; p++) {
        if (!isdigit((unsigned char)*p)) return WARD_EINVAL;
        uint64_t d = (uint64_t)(*p - '0');
        if (v > (UINT64_MAX - d) / 10) return WARD_ERANGE;
        v = v * 10 + d;
    }
    if (v < min || v > max) return WARD_ERANGE;
    *out = v;
    return 0;
}

int ward_duration_parse(const char *s, uint64_t *out_ms)
{
    char num[24];
    size_t i = 0;
    if (s == NULL) return WARD_EINVAL;
    while (isdigit((unsigned char)s[i]) && i < sizeof(num) - 1) {
        num[i] = s[i];
        i++;
    }
    if (i == 0 || i >= sizeof(num) - 1) return WARD_EINVAL;
    num[i] = '\0';
    uint64_t v, mult;
    if (ward_parse_u64(num, 0, UINT64_MAX / 3600000, &v) < 0) return WARD_ERANGE;
    const char *unit = s + i;
    if (strcmp(unit, "ms") == 0) {
        mult = 1;
    } else if (strcmp(unit, "s") == 0 || *unit == '\0') {
        mult = 1000;
    } else if (strcmp(unit, "m") == 0) {
        mult = 60000;
    } else if (strcmp(unit, "h") == 0) {
        mult = 3600000;
    } else {
        return WARD_EINVAL;
    }
    *out_ms = v * mult;
    return 0;
}

uint16_t ward_addr_port(const ward_addr_t *a)
{
    if (a->ss.ss_family == AF_INET) return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
    if (a->ss.ss_family == AF_INET6) return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
    return 0;
}
