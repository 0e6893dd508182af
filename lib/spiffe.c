/* spiffe.c — SPIFFE ID validation (see ward/spiffe.h). */
#include "ward/spiffe.h"
#include "ward/err.h"

#include <string.h>

#define WARD_SPIFFE_SCHEME "spiffe://"

static int ward__td_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
}

static int ward__path_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '-' || c == '_';
}

static int ward__fail(const char **why, const char *msg)
{
    if (why) *why = msg;
    return WARD_ESPIFFE;
}

int ward_spiffe_td_validate(const char *s, size_t n, const char **why)
{
    if (n == 0) return ward__fail(why, "trust domain is empty");
    if (n > WARD_SPIFFE_TD_MAX) return ward__fail(why, "trust domain longer than 255 bytes");
    for (size_t i = 0; i < n; i++) {
        if (s[i] == ':') return ward__fail(why, "trust domain must not contain a port");
        if (s[i] == '@') return ward__fail(why, "trust domain must not contain userinfo");
        if (s[i] >= 'A' && s[i] <= 'Z') return ward__fail(why, "trust domain must be lowercase");
        if (!ward__td_char(s[i]))
            return ward__fail(why, "trust domain has a character outside [a-z0-9._-]");
    }
    return 0;
}

int ward_spiffe_id_parse(const char *s, size_t n, ward_spiffe_id_t *out, const char **why)
{
    const size_t slen = sizeof(WARD_SPIFFE_SCHEME) - 1;
    if (n == 0) return ward__fail(why, "empty");
    if (n > WARD_SPIFFE_MAX) return ward__fail(why, "longer than 2048 bytes");
    if (n < slen || memcmp(s, WARD_SPIFFE_SCHEME, slen) != 0)
        return ward__fail(why, "scheme must be spiffe://");
    const char *td = s + slen;
    const char *end = s + n;
    const char *p = td;
    while (p < end && *p != '/') {
        if (*p == '?' || *p == '#') return ward__fail(why, "query or fragment not allowed");
        p++;
    }
    int rc = ward_spiffe_td_validate(td, (size_t)(p - td), why);
    if (rc < 0) return rc;
    const char *path = p;
    while (p < end) {
        /* p points at a '/': the segment runs to the next '/' or the end. */
        const char *seg = ++p;
        while (p < end && *p != '/') {
            if (*p == '?' || *p == '#') return ward__fail(why, "query or fragment not allowed");
            if (*p == '%') return ward__fail(why, "percent-encoding not allowed");
            if (!ward__path_char(*p))
                return ward__fail(why, "path has a character outside [A-Za-z0-9._-]");
            p++;
        }
        size_t seglen = (size_t)(p - seg);
        if (seglen == 0)
            return ward__fail(why, p == end ? "trailing slash not allowed" : "empty path segment");
        if ((seglen == 1 && seg[0] == '.') || (seglen == 2 && seg[0] == '.' && seg[1] == '.'))
            return ward__fail(why, "dot segments not allowed");
    }
    if (out) {
        out->td = td;
        out->td_len = (size_t)(path - td);
        out->path = path;
        out->path_len = (size_t)(end - path);
    }
    return 0;
}
