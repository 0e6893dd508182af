/* test_path.c — request-target normalisation (lib/path.c): every rule of ward/path.h with the
 * known policy-bypass spellings ("/admin/../public", "/%61dmin", "//admin", "/admin%2f..",
 * "%2e%2e", "%252e", matrix parameters, absolute-form targets), every refusal with its reason,
 * the length limits, the match key, and the output properties (idempotent, never longer than the
 * input, no dot segments or double slashes) over a deterministic stream of generated targets. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unit.h"
#include "ward/err.h"
#include "ward/path.h"

static char out[2 * WARD_PATH_MAX];

static int norm(const char *t, size_t len, ward_path_result_t *res)
{
    memset(out, 0x5a, sizeof(out));
    return ward_path_normalize(t, len, out, sizeof(out), res);
}

/* target -> out (with the query), and path_len. */
static void expect_ok(const char *target, const char *want)
{
    ward_path_result_t res;
    int rc = norm(target, strlen(target), &res);
    if (rc != 0 || strcmp(out, want) != 0)
        fprintf(stderr, "\n  '%s': want '%s', got rc %d '%s' (%s)\n", target, want, rc,
                rc == 0 ? out : "", res.why ? res.why : "");
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_STRING_EQUAL(out, want);
    CU_ASSERT_EQUAL(res.len, strlen(want));
    const char *q = strchr(want, '?');
    CU_ASSERT_EQUAL(res.path_len, q ? (size_t)(q - want) : strlen(want));
    CU_ASSERT_PTR_NULL(res.why);
}

static void expect_refused(const char *target, size_t len, const char *why)
{
    ward_path_result_t res;
    int rc = norm(target, len, &res);
    if (rc != WARD_EINVAL || res.why == NULL || strcmp(res.why, why) != 0)
        fprintf(stderr, "\n  '%.*s': want refusal '%s', got rc %d '%s'\n", (int)len, target, why,
                rc, res.why ? res.why : "(null)");
    CU_ASSERT_EQUAL(rc, WARD_EINVAL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(res.why);
    CU_ASSERT_STRING_EQUAL(res.why, why);
}

static void expect_key(const char *path, const char *want)
{
    char key[256];
    size_t n = ward_path_match_key(path, strlen(path), key, sizeof(key));
    if (strcmp(key, want) != 0)
        fprintf(stderr, "\n  key '%s': want '%s', got '%s'\n", path, want, key);
    CU_ASSERT_STRING_EQUAL(key, want);
    CU_ASSERT_EQUAL(n, strlen(want));
}

static void test_plain(void)
{
    expect_ok("/", "/");
    expect_ok("/a/b", "/a/b");
    expect_ok("/a/b/", "/a/b/");
    expect_ok("/orders/42?expand=items&x=%2F", "/orders/42?expand=items&x=%2F");
    expect_ok("/a?", "/a?");
    expect_ok("/a?b?c", "/a?b?c");
    /* The query goes on verbatim, escapes and all. */
    expect_ok("/a?%zz%2f%00..//", "/a?%zz%2f%00..//");
    expect_ok("/a?x=\\", "/a?x=\\");
    /* sub-delims, ':' and '@' are path characters; so are a few that RFC 3986 would encode. */
    expect_ok("/a:b@c!$&'()*+,=", "/a:b@c!$&'()*+,=");
    expect_ok("/{x}|^`\"<>[]", "/{x}|^`\"<>[]");
    /* Case is kept. */
    expect_ok("/ADMIN", "/ADMIN");
    expect_ok("/Admin/X", "/Admin/X");
}

static void test_decoding(void)
{
    expect_ok("/%61dmin", "/admin");
    expect_ok("/%41%7e%2D%2e%5f%30", "/A~-._0");
    expect_ok("/%7E%7e", "/~~");
    /* Escapes of other characters are kept, with upper-case hex. */
    expect_ok("/caf%c3%a9", "/caf%C3%A9");
    /* An encoded semicolon is refused (an app decoding it then dropping ";params" would see
     * another path). */
    expect_refused("/a%3bb", 6, "encoded semicolon");
    expect_refused("/public/..%3B/admin", 19, "encoded semicolon");
    expect_ok("/a%20b", "/a%20b");
    expect_ok("/a%2ab%3f", "/a%2Ab%3F");
    expect_ok("/%01%7f%ff", "/%01%7F%FF");
    /* "%25" is kept when no hex pair follows it. */
    expect_ok("/100%25", "/100%25");
    expect_ok("/a%25zz", "/a%25zz");
    expect_ok("/a%25/41", "/a%25/41");
}

static void test_slashes_and_dots(void)
{
    expect_ok("//admin", "/admin");
    expect_ok("///a//b///", "/a/b/");
    expect_ok("/admin/../public", "/public");
    expect_ok("/a/b/../c", "/a/c");
    expect_ok("/a/./b", "/a/b");
    expect_ok("/a/.", "/a/");
    expect_ok("/a/b/..", "/a/");
    expect_ok("/a/b/../", "/a/");
    expect_ok("/..", "/");
    expect_ok("/.", "/");
    expect_ok("/../../x", "/x");
    expect_ok("/a/../../../b/./c/.", "/b/c/");
    expect_ok("/a/.//", "/a/");
    expect_ok("/a/..//", "/");
    expect_ok("/a//..", "/");
    /* After decoding: encoded dots are dots. */
    expect_ok("/%2e%2e/admin", "/admin");
    expect_ok("/public/%2E%2E/admin", "/admin");
    expect_ok("/public/.%2e/admin", "/admin");
    expect_ok("/a/%2e/b", "/a/b");
    /* Not dot segments. */
    expect_ok("/a/...", "/a/...");
    expect_ok("/a/..b/.c", "/a/..b/.c");
    expect_ok("/a/%2e%2e%2e", "/a/...");
    /* A dot segment with matrix parameters is a dot segment (Tomcat resolves "..;x" too). */
    expect_ok("/public/..;/admin", "/admin");
    expect_ok("/public/..;x=1/admin", "/admin");
    expect_ok("/a/.;x/b", "/a/b");
    expect_ok("/a/b/..;x", "/a/");
    expect_ok("/a/..x;/b", "/a/..x;/b");
    /* Matrix parameters stay in the forwarded path. */
    expect_ok("/admin;x=1", "/admin;x=1");
    expect_ok("/a;x/b;y=1?q", "/a;x/b;y=1?q");
}

static void test_absolute_form(void)
{
    expect_ok("http://evil/admin", "/admin");
    expect_ok("HTTP://evil/admin", "/admin");
    expect_ok("https://good:8443/a/../b?x=1", "/b?x=1");
    expect_ok("HtTpS://good/%61", "/a");
    expect_ok("http://host", "/");
    expect_ok("http://host?q=1", "/?q=1");
    expect_ok("http://host//admin", "/admin");
    expect_ok("http://user@host/a", "/a");
    expect_ok("http://[::1]:80/a", "/a");
    expect_refused("http:///admin", 13, "absolute-form target without a host");
    expect_refused("http://", 7, "absolute-form target without a host");
    expect_refused("http://?q", 9, "absolute-form target without a host");
    expect_refused("http://ev il/a", 14, "space");
    expect_refused("http://evil\\@good/a", 19, "backslash");
    expect_refused("http://evil#/admin", 18, "fragment");
    expect_refused("ftp://host/a", 12, "not an origin-form or absolute-form target");
    expect_refused("http:/a", 7, "not an origin-form or absolute-form target");
    expect_refused("httpx://h/a", 11, "not an origin-form or absolute-form target");
    expect_refused("*", 1, "not an origin-form or absolute-form target");
    expect_refused("example.com:443", 15, "not an origin-form or absolute-form target");
    expect_refused("admin", 5, "not an origin-form or absolute-form target");
}

static void test_refusals(void)
{
    expect_refused("", 0, "empty request target");
    expect_refused("/a#frag", 7, "fragment");
    expect_refused("/a?x#frag", 9, "fragment");
    expect_refused("/#", 2, "fragment");
    expect_refused("/a b", 4, "space");
    expect_refused("/a?b c", 6, "space");
    expect_refused("/a\tb", 4, "control character");
    expect_refused("/a\r\nb", 5, "control character");
    expect_refused("/a\x7f", 3, "control character");
    expect_refused("/a\0b", 4, "control character");
    expect_refused("/a?\x01", 4, "control character");
    expect_refused("/caf\xc3\xa9", 6, "non-ASCII byte");
    expect_refused("/a?\x80", 4, "non-ASCII byte");
    expect_refused("/a\\b", 4, "backslash");
    expect_refused("/..\\admin", 9, "backslash");
    expect_refused("/a%5cb", 6, "encoded backslash");
    expect_refused("/a%5Cb", 6, "encoded backslash");
    expect_refused("/admin%2f..", 11, "encoded slash");
    expect_refused("/a%2F", 5, "encoded slash");
    expect_refused("/a%00", 5, "encoded NUL");
    expect_refused("/%252e", 6, "double percent-encoding");
    expect_refused("/%252E%252E/admin", 17, "double percent-encoding");
    expect_refused("/a%2541", 7, "double percent-encoding");
    /* Double encoding that appears only once the unreserved escapes are decoded. */
    expect_refused("/%25%32%65", 10, "double percent-encoding");
    expect_refused("/a%zz", 5, "invalid percent-encoding");
    expect_refused("/a%4", 4, "invalid percent-encoding");
    expect_refused("/a%", 3, "invalid percent-encoding");
    expect_refused("/a%4/b", 6, "invalid percent-encoding");
    expect_refused("/a%g0", 5, "invalid percent-encoding");
}

static void test_lengths(void)
{
    static char big[WARD_PATH_MAX + 2];
    ward_path_result_t res;
    memset(big, 'a', sizeof(big));
    big[0] = '/';
    CU_ASSERT_EQUAL(norm(big, WARD_PATH_MAX, &res), 0);
    CU_ASSERT_EQUAL(res.len, WARD_PATH_MAX);
    CU_ASSERT_EQUAL(norm(big, WARD_PATH_MAX + 1, &res), WARD_ETOOLONG);
    CU_ASSERT_PTR_NOT_NULL(res.why);

    /* The output buffer must hold len + 2 bytes, whatever the target normalises to. */
    char small[8];
    CU_ASSERT_EQUAL(ward_path_normalize("/a/b/c", 6, small, 8, &res), 0);
    CU_ASSERT_STRING_EQUAL(small, "/a/b/c");
    CU_ASSERT_EQUAL(ward_path_normalize("/a/b/cd", 7, small, 8, &res), WARD_ETOOLONG);
    CU_ASSERT_EQUAL(ward_path_normalize("//////", 6, small, 7, &res), WARD_ETOOLONG);
    /* The one target that gains a byte ("/" for an empty absolute-form path) fits in len + 2. */
    char tiny[10];
    CU_ASSERT_EQUAL(ward_path_normalize("http://h", 8, tiny, sizeof(tiny), &res), 0);
    CU_ASSERT_STRING_EQUAL(tiny, "/");
}

static void test_match_key(void)
{
    expect_key("/admin;x=1", "/admin");
    expect_key("/a;x/b;y=1", "/a/b");
    expect_key("/a;b;c/d", "/a/d");
    expect_key("/a/b", "/a/b");
    expect_key("/", "/");
    expect_key("", "");
    expect_key("/a/", "/a/");
    /* A segment that is only parameters goes, like the empty segment it becomes... */
    expect_key("/;x/admin", "/admin");
    expect_key("/a/;x/;y/b", "/a/b");
    /* ...but a trailing one keeps the trailing slash. */
    expect_key("/a/;x", "/a/");
    expect_key("/;x", "/");
    expect_key("/;x/", "/");

    /* Through normalisation: what a policy sees. */
    ward_path_result_t res;
    char key[64];
    CU_ASSERT_EQUAL_FATAL(norm("/public/..;/admin;jsessionid=1?x", 32, &res), 0);
    CU_ASSERT_EQUAL(ward_path_match_key(out, res.path_len, key, sizeof(key)), 6);
    CU_ASSERT_STRING_EQUAL(key, "/admin");

    /* A short buffer truncates, NUL-terminated. */
    CU_ASSERT_EQUAL(ward_path_match_key("/abc;x", 6, key, 3), 2);
    CU_ASSERT_STRING_EQUAL(key, "/a");
    CU_ASSERT_EQUAL(ward_path_match_key("/abc", 4, key, 0), 0);
}

/* ---- properties over generated targets ------------------------------------------------------ */

static int is_hex(char ch)
{
    return ch != '\0' && strchr("0123456789ABCDEFabcdef", ch) != NULL;
}

static int refused_escape(const char *s, size_t len)
{
    for (size_t i = 0; i + 2 < len; i++) {
        if (s[i] != '%') continue;
        if (strncmp(s + i, "%2F", 3) == 0 || strncmp(s + i, "%5C", 3) == 0 ||
            strncmp(s + i, "%00", 3) == 0)
            return 1;
        if (strncmp(s + i, "%25", 3) == 0 && i + 4 < len && is_hex(s[i + 3]) && is_hex(s[i + 4]))
            return 1;
    }
    return 0;
}

/* What the fuzz target checks too (tests/fuzz/fuzz_path.c). Returns 1 when t normalised. */
static int check_properties(const char *t, size_t len)
{
    ward_path_result_t res, again;
    static char out2[2 * WARD_PATH_MAX];
    if (ward_path_normalize(t, len, out, sizeof(out), &res) != 0) {
        CU_ASSERT_PTR_NOT_NULL(res.why);
        return 0;
    }
    CU_ASSERT(res.len <= len + 1);
    CU_ASSERT(res.path_len <= res.len);
    CU_ASSERT_EQUAL(out[res.len], '\0');
    CU_ASSERT_EQUAL(out[0], '/');
    size_t p = res.path_len;
    int bad = 0;
    for (size_t i = 0; i < p; i++) {
        unsigned char ch = (unsigned char)out[i];
        if (ch <= 0x20 || ch >= 0x7f || ch == '\\' || ch == '#' || ch == '?') bad = 1;
        if (ch == '/' && i + 1 < p && out[i + 1] == '/') bad = 1;
        if (ch == '/' && ((i + 1 < p && out[i + 1] == '.' && (i + 2 == p || out[i + 2] == '/')) ||
                          (i + 2 < p && out[i + 1] == '.' && out[i + 2] == '.' &&
                           (i + 3 == p || out[i + 3] == '/'))))
            bad = 1;
    }
    if (refused_escape(out, p)) bad = 1;
    if (bad) fprintf(stderr, "\n  '%.*s' -> '%s'\n", (int)len, t, out);
    CU_ASSERT(!bad);
    CU_ASSERT_EQUAL_FATAL(ward_path_normalize(out, res.len, out2, sizeof(out2), &again), 0);
    CU_ASSERT_EQUAL(again.len, res.len);
    CU_ASSERT_EQUAL(memcmp(out, out2, res.len), 0);
    return 1;
}

static void test_properties(void)
{
    static const char *const parts[] = {
        "/",    "/",   "/",   ".", "..", "%2e", "%2E", "a", "B",  "%61",  "%25", "25",  "2e", ";",
        ";x=1", "%3b", "%c3", "?", "%",  "4",   "%7e", "~", "//", "/../", "/./", "%2f", "\\", "#"};
    unsigned seed = 12345;
    int normalised = 0;
    char t[128];
    for (int n = 0; n < 200000; n++) {
        size_t len = 0;
        if (n % 3 == 0) {
            memcpy(t, "http://h", 8);
            len = 8;
        }
        int k = 1 + (int)((seed >> 16) % 12);
        for (int i = 0; i < k; i++) {
            seed = seed * 1103515245u + 12345u;
            const char *p = parts[(seed >> 16) % (sizeof(parts) / sizeof(parts[0]))];
            size_t pl = strlen(p);
            if (len + pl >= sizeof(t)) break;
            memcpy(t + len, p, pl);
            len += pl;
        }
        if (len > 0 && n % 3 != 0) t[0] = '/';
        normalised += check_properties(t, len);
    }
    /* Refusals must not be all the generator produces. */
    CU_ASSERT(normalised > 20000);
}

void ward_unit_register(void)
{
    WARD_SUITE("path", WARD_TEST(test_plain), WARD_TEST(test_decoding),
               WARD_TEST(test_slashes_and_dots), WARD_TEST(test_absolute_form),
               WARD_TEST(test_refusals), WARD_TEST(test_lengths), WARD_TEST(test_match_key),
               WARD_TEST(test_properties));
}
