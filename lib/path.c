/* path.c — request-target normalisation (see ward/path.h).
 *
 * One forward pass over the target: the path is cut at raw slashes into segments; each segment is
 * checked and decoded straight into the output (decoding never grows it), and then either kept,
 * dropped (an empty segment: merged slashes), or treated as a dot segment, which rewinds the output
 * to the previous slash as RFC 3986 section 5.2.4 does. Because a segment is classified only after
 * it is decoded, "%2e%2e" is as much a dot segment as "..". The output is therefore already
 * normalised: normalising it again gives it back unchanged. */
#include "ward/path.h"
#include "ward/err.h"

#include <string.h>

static int ward__hexval(unsigned char ch)
{
    if (ch >= '0' && ch <= '9') return ch - '0';
    if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
    return -1;
}

static int ward__unreserved(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '.' || ch == '_' || ch == '~';
}

/* Why a raw byte cannot appear in a target, or NULL. */
static const char *ward__bad_byte(unsigned char ch)
{
    if (ch == ' ') return "space";
    if (ch < 0x20 || ch == 0x7f) return "control character";
    if (ch >= 0x80) return "non-ASCII byte";
    if (ch == '#') return "fragment";
    return NULL;
}

static int ward__fail(ward_path_result_t *res, int rc, const char *why)
{
    res->len = res->path_len = 0;
    res->why = why;
    return rc;
}

/* The part of a segment before its first ';' is "." or ".."? (Servers that honour matrix
 * parameters, such as Tomcat, resolve "..;x" as ".."; we resolve it too, so that the path the app
 * is sent and the match key agree.) Returns 1 for ".", 2 for "..", 0 otherwise. */
static int ward__dot_segment(const char *seg, size_t len)
{
    const char *semi = memchr(seg, ';', len);
    size_t name = semi ? (size_t)(semi - seg) : len;
    if (name == 1 && seg[0] == '.') return 1;
    if (name == 2 && seg[0] == '.' && seg[1] == '.') return 2;
    return 0;
}

/* "%25" followed by two hex digits in a decoded segment: the app would decode it into an escape. */
static int ward__double_encoded(const char *seg, size_t len)
{
    for (size_t i = 0; i + 4 < len; i++)
        if (seg[i] == '%' && seg[i + 1] == '2' && seg[i + 2] == '5' &&
            ward__hexval((unsigned char)seg[i + 3]) >= 0 &&
            ward__hexval((unsigned char)seg[i + 4]) >= 0)
            return 1;
    return 0;
}

/* Decodes raw[0..len) (one segment, no slashes) into out; returns the decoded length or a negative
 * error with *why set. */
static long ward__segment(const char *raw, size_t len, char *out, const char **why)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)raw[i];
        if ((*why = ward__bad_byte(ch)) != NULL) return WARD_EINVAL;
        if (ch == '\\') {
            *why = "backslash";
            return WARD_EINVAL;
        }
        if (ch != '%') {
            out[o++] = (char)ch;
            continue;
        }
        int hi = i + 1 < len ? ward__hexval((unsigned char)raw[i + 1]) : -1;
        int lo = i + 2 < len ? ward__hexval((unsigned char)raw[i + 2]) : -1;
        if (hi < 0 || lo < 0) {
            *why = "invalid percent-encoding";
            return WARD_EINVAL;
        }
        unsigned char d = (unsigned char)(hi * 16 + lo);
        i += 2;
        if (d == '/') {
            *why = "encoded slash";
            return WARD_EINVAL;
        }
        if (d == '\\') {
            *why = "encoded backslash";
            return WARD_EINVAL;
        }
        if (d == 0) {
            *why = "encoded NUL";
            return WARD_EINVAL;
        }
        if (d == ';') {
            /* An app that decodes %3B and then strips ";params" (Tomcat) would read
             * "/public/..%3B/admin" as "/admin": refused like an encoded slash. */
            *why = "encoded semicolon";
            return WARD_EINVAL;
        }
        if (ward__unreserved(d)) {
            out[o++] = (char)d;
        } else {
            out[o++] = '%';
            out[o++] = hex[hi];
            out[o++] = hex[lo];
        }
    }
    if (ward__double_encoded(out, o)) {
        *why = "double percent-encoding";
        return WARD_EINVAL;
    }
    return (long)o;
}

/* Rewinds out[0..*o) to before its last segment ("/a/b" -> "/a", "/a" -> ""). */
static void ward__pop(const char *out, size_t *o)
{
    while (*o > 0 && out[*o - 1] != '/')
        (*o)--;
    if (*o > 0) (*o)--;
}

/* Normalises the path p[0..len) (starting with '/') into out; returns its length or an error. */
static long ward__path(const char *p, size_t len, char *out, const char **why)
{
    size_t o = 0, i = 0;
    while (i < len) {
        /* p[i] is a slash; the segment runs to the next one or the end. */
        size_t start = i + 1, end = start;
        while (end < len && p[end] != '/')
            end++;
        int last = end == len;
        if (end == start) {
            /* An empty segment: merged, unless it is the trailing slash. */
            if (last && (o == 0 || out[o - 1] != '/')) out[o++] = '/';
            i = end;
            continue;
        }
        out[o] = '/';
        long n = ward__segment(p + start, end - start, out + o + 1, why);
        if (n < 0) return n;
        int dot = ward__dot_segment(out + o + 1, (size_t)n);
        if (dot == 0) {
            o += 1 + (size_t)n;
        } else {
            if (dot == 2) ward__pop(out, &o);
            /* "/a/." and "/a/b/.." end in a slash: the last segment became empty. */
            if (last) out[o++] = '/';
        }
        i = end;
    }
    if (o == 0) out[o++] = '/';
    return (long)o;
}

/* Skips "http://" or "https://" (any case) and the authority of an absolute-form target; returns
 * the offset of its path (or '?', or len), or an error with *why set. */
static long ward__absolute(const char *t, size_t len, const char **why)
{
    static const char *const schemes[] = {"http://", "https://"};
    size_t skip = 0;
    for (size_t s = 0; s < 2 && skip == 0; s++) {
        size_t n = strlen(schemes[s]);
        if (len < n) continue;
        size_t k = 0;
        while (k < n && (t[k] | (schemes[s][k] >= 'a' ? 0x20 : 0)) == schemes[s][k])
            k++;
        if (k == n) skip = n;
    }
    if (skip == 0) {
        *why = "not an origin-form or absolute-form target";
        return WARD_EINVAL;
    }
    size_t i = skip;
    for (; i < len && t[i] != '/' && t[i] != '?'; i++) {
        if ((*why = ward__bad_byte((unsigned char)t[i])) != NULL) return WARD_EINVAL;
        if (t[i] == '\\') {
            *why = "backslash";
            return WARD_EINVAL;
        }
    }
    if (i == skip) {
        *why = "absolute-form target without a host";
        return WARD_EINVAL;
    }
    return (long)i;
}

int ward_path_normalize(const char *target, size_t len, char *out, size_t cap,
                        ward_path_result_t *res)
{
    const char *why = NULL;
    size_t start = 0;
    if (len > WARD_PATH_MAX) return ward__fail(res, WARD_ETOOLONG, "request target too long");
    if (cap < len + 2) return ward__fail(res, WARD_ETOOLONG, "output buffer too small");
    if (len == 0) return ward__fail(res, WARD_EINVAL, "empty request target");
    if (target[0] != '/') {
        long at = ward__absolute(target, len, &why);
        if (at < 0) return ward__fail(res, (int)at, why);
        start = (size_t)at;
    }

    const char *q = memchr(target + start, '?', len - start);
    size_t path_end = q ? (size_t)(q - target) : len;
    long n;
    if (path_end == start) {
        out[0] = '/'; /* "http://host" and "http://host?q": the path is "/" */
        n = 1;
    } else {
        n = ward__path(target + start, path_end - start, out, &why);
        if (n < 0) return ward__fail(res, (int)n, why);
    }

    size_t o = (size_t)n;
    res->path_len = o;
    if (q != NULL) {
        /* The query goes on verbatim: printable ASCII, no fragment. */
        for (size_t i = path_end + 1; i < len; i++) {
            unsigned char ch = (unsigned char)target[i];
            if ((why = ward__bad_byte(ch)) != NULL) return ward__fail(res, WARD_EINVAL, why);
        }
        memcpy(out + o, target + path_end, len - path_end);
        o += len - path_end;
    }
    out[o] = '\0';
    res->len = o;
    res->why = NULL;
    return 0;
}

size_t ward_path_match_key(const char *path, size_t len, char *out, size_t cap)
{
    size_t o = 0, i = 0;
    if (cap == 0) return 0;
    while (i < len) {
        /* One segment: an optional leading slash, its name, then ";params" up to the next slash. */
        size_t start = i;
        if (path[i] == '/') i++;
        size_t name = i;
        while (i < len && path[i] != '/' && path[i] != ';')
            i++;
        size_t name_end = i;
        while (i < len && path[i] != '/')
            i++;
        /* A segment that was only parameters ("/;x/a") is dropped like an empty one, unless it is
         * the last: "/a/;x" keeps its trailing slash. */
        if (name_end == name && i < len && path[start] == '/') continue;
        for (size_t k = start; k < name_end && o + 1 < cap; k++)
            out[o++] = path[k];
    }
    out[o] = '\0';
    return o;
}
