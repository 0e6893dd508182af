/* fuzz_path.c — request-target normalisation (lib/path.c ward_path_normalize and
 * ward_path_match_key): every HTTP/1.1 request line and HTTP/2 :path comes through it before
 * policy sees it. The input is one target. Properties of a normalised target: never longer than
 * the input + 1; a path that starts with '/' and holds no "//", no "." or ".." segment, none of the
 * refused bytes (controls, space, DEL, >= 0x80, '\', '#', '?') and none of the refused escapes
 * (%2F, %5C, %00, %25 + two hex digits); a query of printable ASCII without '#'; idempotent
 * (normalising the output gives the output); a match key no longer than the path, starting with
 * '/', without ';' or "//". A refusal names its reason; an output buffer of len + 1 bytes is
 * always refused. Seeds: corpus/path/. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "ward/err.h"
#include "ward/path.h"

static int ward__hex(char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static void ward__check_path(const char *p, size_t n)
{
    WARD_FUZZ_CHECK(n > 0 && p[0] == '/');
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        WARD_FUZZ_CHECK(ch > 0x20 && ch < 0x7f && ch != '\\' && ch != '#' && ch != '?');
        if (ch == '/') {
            /* the segment that starts here: not empty (unless last), not "." or ".." */
            size_t j = i + 1;
            while (j < n && p[j] != '/')
                j++;
            size_t seg = j - i - 1;
            WARD_FUZZ_CHECK(seg > 0 || j == n);
            WARD_FUZZ_CHECK(!(seg == 1 && p[i + 1] == '.'));
            WARD_FUZZ_CHECK(!(seg == 2 && p[i + 1] == '.' && p[i + 2] == '.'));
        }
        if (ch == '%') {
            WARD_FUZZ_CHECK(i + 2 < n && ward__hex(p[i + 1]) && ward__hex(p[i + 2]));
            /* kept escapes are upper-case and never of an unreserved character */
            WARD_FUZZ_CHECK(!(p[i + 1] >= 'a' && p[i + 1] <= 'f') &&
                            !(p[i + 2] >= 'a' && p[i + 2] <= 'f'));
            WARD_FUZZ_CHECK(strncmp(p + i, "%2F", 3) != 0 && strncmp(p + i, "%5C", 3) != 0 &&
                            strncmp(p + i, "%00", 3) != 0);
            WARD_FUZZ_CHECK(!(strncmp(p + i, "%25", 3) == 0 && i + 4 < n && ward__hex(p[i + 3]) &&
                              ward__hex(p[i + 4])));
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *t = (const char *)data;
    ward_path_result_t res, again;
    size_t cap = size + 2;
    char *out = malloc(cap), *out2 = malloc(cap), *key = malloc(cap);
    if (out == NULL || out2 == NULL || key == NULL) goto done;

    int rc = ward_path_normalize(t, size, out, cap, &res);
    if (rc < 0) {
        WARD_FUZZ_CHECK(rc == WARD_EINVAL || rc == WARD_ETOOLONG);
        WARD_FUZZ_CHECK(res.why != NULL && res.why[0] != '\0');
        WARD_FUZZ_CHECK(rc == WARD_ETOOLONG || size <= WARD_PATH_MAX);
        goto done;
    }
    WARD_FUZZ_CHECK(size <= WARD_PATH_MAX && res.why == NULL);
    WARD_FUZZ_CHECK(res.len <= size + 1 && res.path_len <= res.len && out[res.len] == '\0');
    WARD_FUZZ_CHECK(memchr(out, '\0', res.len) == NULL);
    ward__check_path(out, res.path_len);
    if (res.path_len < res.len) {
        WARD_FUZZ_CHECK(out[res.path_len] == '?');
        for (size_t i = res.path_len + 1; i < res.len; i++)
            WARD_FUZZ_CHECK((unsigned char)out[i] > 0x20 && (unsigned char)out[i] < 0x7f &&
                            out[i] != '#');
    }

    /* Idempotent. */
    rc = ward_path_normalize(out, res.len, out2, cap, &again);
    if (rc != 0) fprintf(stderr, "'%s' does not normalise again: %s\n", out, again.why);
    WARD_FUZZ_CHECK(rc == 0);
    WARD_FUZZ_CHECK(again.len == res.len && again.path_len == res.path_len &&
                    memcmp(out, out2, res.len) == 0);

    /* The match key. */
    size_t klen = ward_path_match_key(out, res.path_len, key, cap);
    WARD_FUZZ_CHECK(klen <= res.path_len && key[klen] == '\0' && klen > 0 && key[0] == '/');
    WARD_FUZZ_CHECK(memchr(key, ';', klen) == NULL);
    for (size_t i = 0; i + 1 < klen; i++)
        WARD_FUZZ_CHECK(!(key[i] == '/' && key[i + 1] == '/'));

    /* One byte short of len + 2 is refused, whatever the target. */
    WARD_FUZZ_CHECK(ward_path_normalize(t, size, out2, size + 1, &again) == WARD_ETOOLONG);

done:
    free(out);
    free(out2);
    free(key);
    return 0;
}
