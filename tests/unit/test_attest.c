/* test_attest.c — attestation: the workloads file (a good file, each kind of bad line, uid/gid
 * precedence), SO_PEERCRED on a socketpair, JWKS loading, and every projected-token case minted by
 * tests/lib/tokens.py (directory in WARD_TOKEN_DIR), each refused with the right error. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "attest.h"
#include "unit.h"
#include "ward/alloc.h"
#include "ward/err.h"

#define TD       "test.local"
#define ISSUER   "https://kubernetes.default.svc.cluster.local"
#define AUDIENCE "ward"
#define ORDERS   "spiffe://test.local/ns/shop/sa/orders"

static char tokdir[512];
static char tmpdir[64];
static int64_t minted_at;
static ward_jwks_t *jwks;

static const char *tok_path(const char *name)
{
    static char buf[4][640];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof(buf[i]), "%s/%s", tokdir, name);
    return buf[i];
}

/* Reads a whole file into a NUL-terminated heap string (free()). */
static char *slurp(const char *file)
{
    FILE *f = fopen(file, "rb");
    char *buf = NULL;
    long n;
    if (f == NULL) return NULL;
    if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 && fseek(f, 0, SEEK_SET) == 0) {
        buf = malloc((size_t)n + 1);
        if (buf != NULL && fread(buf, 1, (size_t)n, f) != (size_t)n) {
            free(buf);
            buf = NULL;
        } else if (buf != NULL) {
            buf[n] = '\0';
        }
    }
    fclose(f);
    return buf;
}

static const char *write_tmp(const char *name, const char *data, size_t len)
{
    static char path[128];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "wb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    CU_ASSERT_EQUAL(fwrite(data, 1, len, f), len);
    fclose(f);
    return path;
}

/* --- workloads ------------------------------------------------------------------------------ */

static void test_workloads_good(void)
{
    static const char file[] = "# uid[:gid]   spiffe id\n"
                               "1337          spiffe://test.local/ns/shop/sa/orders\n"
                               "1000:1000     spiffe://test.local/ns/dev/sa/alice  # a comment\n"
                               "1000          spiffe://test.local/ns/dev/sa/default\n"
                               "\n"
                               "   \t\n"
                               "\t 2000:5\tspiffe://test.local/ns/x/sa/y\r\n"
                               "3000          spiffe://test.local/ns/z/sa/any\n"
                               "3000:7        spiffe://test.local/ns/z/sa/seven\n"
                               "0             spiffe://test.local/ns/root/sa/root";
    ward_workloads_t *w = NULL;
    char err[512] = "";
    const char *path = write_tmp("workloads-good", file, sizeof(file) - 1);
    CU_ASSERT_EQUAL_FATAL(ward_workloads_load(path, TD, &w, err, sizeof(err)), 0);

    CU_ASSERT_STRING_EQUAL(ward_workloads_lookup(w, 1337, 0), ORDERS);
    CU_ASSERT_STRING_EQUAL(ward_workloads_lookup(w, 1337, 1337), ORDERS);
    /* uid:gid wins over uid, whichever comes first in the file. */
    CU_ASSERT_STRING_EQUAL(ward_workloads_lookup(w, 1000, 1000),
                           "spiffe://test.local/ns/dev/sa/alice");
    CU_ASSERT_STRING_EQUAL(ward_workloads_lookup(w, 1000, 1001),
                           "spiffe://test.local/ns/dev/sa/default");
    CU_ASSERT_STRING_EQUAL(ward_workloads_lookup(w, 3000, 7), "spiffe://test.local/ns/z/sa/seven");
    CU_ASSERT_STRING_EQUAL(ward_workloads_lookup(w, 3000, 8), "spiffe://test.local/ns/z/sa/any");
    /* A uid:gid line alone does not match other gids. */
    CU_ASSERT_STRING_EQUAL(ward_workloads_lookup(w, 2000, 5), "spiffe://test.local/ns/x/sa/y");
    CU_ASSERT_PTR_NULL(ward_workloads_lookup(w, 2000, 6));
    CU_ASSERT_STRING_EQUAL(ward_workloads_lookup(w, 0, 0), "spiffe://test.local/ns/root/sa/root");
    CU_ASSERT_PTR_NULL(ward_workloads_lookup(w, 42, 42));
    ward_workloads_free(w);

    /* An empty file is a valid (empty) mapping. */
    path = write_tmp("workloads-empty", "", 0);
    CU_ASSERT_EQUAL_FATAL(ward_workloads_load(path, TD, &w, err, sizeof(err)), 0);
    CU_ASSERT_PTR_NULL(ward_workloads_lookup(w, 0, 0));
    ward_workloads_free(w);
}

static void test_workloads_bad(void)
{
    static const struct {
        const char *text;
        size_t len; /* 0: strlen */
        int rc;
        const char *where; /* must appear in err */
    } cases[] = {
        {"1337\n", 0, WARD_EPARSE, ":1: expected"},
        {"# users\nalice spiffe://test.local/ns/a/sa/b\n", 0, WARD_EPARSE, ":2: \"alice\""},
        {"1337 spiffe://test.local/ns/a/sa/b extra\n", 0, WARD_EPARSE, ":1: unexpected text"},
        {"1337 spiffe://other.local/ns/a/sa/b\n", 0, WARD_ESPIFFE, "outside the trust domain"},
        {"1337 https://test.local/ns/a/sa/b\n", 0, WARD_ESPIFFE, ":1:"},
        {"1337 spiffe://test.local\n", 0, WARD_ESPIFFE, "needs a path"},
        {"1337 spiffe://test.local/ns/../sa/b\n", 0, WARD_ESPIFFE, ":1:"},
        {"1337 spiffe://TEST.local/ns/a\n", 0, WARD_ESPIFFE, ":1:"},
        {"\n\n1337 spiffe://test.local/a\n1337 spiffe://test.local/b\n", 0, WARD_EPARSE,
         ":4: 1337 is already mapped on line 3"},
        {"1:2 spiffe://test.local/a\n1:2 spiffe://test.local/b\n", 0, WARD_EPARSE,
         ":2: 1:2 is already mapped"},
        {"1000: spiffe://test.local/a\n", 0, WARD_EPARSE, ":1:"},
        {":5 spiffe://test.local/a\n", 0, WARD_EPARSE, ":1:"},
        {"1:2:3 spiffe://test.local/a\n", 0, WARD_EPARSE, ":1:"},
        {"-1 spiffe://test.local/a\n", 0, WARD_EPARSE, ":1:"},
        {"4294967295 spiffe://test.local/a\n", 0, WARD_EPARSE, ":1:"},
        {"99999999999 spiffe://test.local/a\n", 0, WARD_EPARSE, ":1:"},
        {"1337 spiffe://test.local/a\n12\0 spiffe://test.local/b\n", 30, WARD_EPARSE,
         ":2: NUL byte"},
    };
    char err[512];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ward_workloads_t *w = NULL;
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].text);
        const char *path = write_tmp("workloads-bad", cases[i].text, len);
        err[0] = '\0';
        int rc = ward_workloads_load(path, TD, &w, err, sizeof(err));
        if (rc != cases[i].rc || strstr(err, cases[i].where) == NULL)
            fprintf(stderr, "case %zu: rc %d, err \"%s\"\n", i, rc, err);
        CU_ASSERT_EQUAL(rc, cases[i].rc);
        CU_ASSERT_PTR_NULL(w);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, cases[i].where));
        CU_ASSERT_PTR_NOT_NULL(strstr(err, path)); /* the operator learns which file */
    }

    /* An over-long line. */
    char *big = malloc(10000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, 'a', 10000);
    ward_workloads_t *w = NULL;
    const char *path = write_tmp("workloads-long", big, 10000);
    free(big);
    CU_ASSERT_EQUAL(ward_workloads_load(path, TD, &w, err, sizeof(err)), WARD_ETOOLONG);
    CU_ASSERT_EQUAL(ward_workloads_load("/nonexistent/workloads", TD, &w, err, sizeof(err)),
                    -ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "/nonexistent/workloads"));
    CU_ASSERT_EQUAL(ward_workloads_load(path, "Bad:TD", &w, err, sizeof(err)), WARD_ESPIFFE);
}

/* --- peer credentials ----------------------------------------------------------------------- */

static void test_peercred(void)
{
    int sv[2];
    ward_peercred_t pc;
    CU_ASSERT_EQUAL_FATAL(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
    memset(&pc, 0xff, sizeof(pc));
    CU_ASSERT_EQUAL(ward_peercred_get(sv[0], &pc), 0);
    CU_ASSERT_EQUAL(pc.uid, getuid());
    CU_ASSERT_EQUAL(pc.gid, getgid());
    CU_ASSERT_EQUAL(pc.pid, getpid());
    close(sv[0]);
    close(sv[1]);

    int p[2];
    CU_ASSERT_EQUAL_FATAL(pipe(p), 0);
    CU_ASSERT_EQUAL(ward_peercred_get(p[0], &pc), -ENOTSOCK);
    close(p[0]);
    close(p[1]);
    CU_ASSERT_EQUAL(ward_peercred_get(p[0], &pc), -EBADF);
}

/* --- JWKS ----------------------------------------------------------------------------------- */

static int jwks_rc(const char *file)
{
    ward_jwks_t *j = NULL;
    char err[512] = "";
    int rc = ward_jwks_load(file, &j, err, sizeof(err));
    if (rc == 0) {
        CU_ASSERT_PTR_NOT_NULL(j);
        ward_jwks_free(j);
    } else {
        CU_ASSERT_PTR_NULL(j);
        CU_ASSERT(strlen(err) > 0);
    }
    return rc;
}

static int jwks_text_rc(const char *text)
{
    return jwks_rc(write_tmp("jwks.json", text, strlen(text)));
}

static void test_jwks_load(void)
{
    CU_ASSERT_EQUAL(jwks_rc(tok_path("jwks.json")), 0);
    CU_ASSERT_EQUAL(jwks_rc(tok_path("jwks-weak.json")), WARD_EKEY);
    CU_ASSERT_EQUAL(jwks_rc(tok_path("jwks-badpoint.json")), WARD_EKEY);
    CU_ASSERT_EQUAL(jwks_rc(tok_path("missing.json")), -ENOENT);
    CU_ASSERT_EQUAL(jwks_text_rc("{\"keys\": [ "), WARD_EPARSE);
    CU_ASSERT_EQUAL(jwks_text_rc("{\"keys\": {}}"), WARD_EPARSE);
    CU_ASSERT_EQUAL(jwks_text_rc("{\"keys\": [], \"keys\": []}"), WARD_EPARSE);
    CU_ASSERT_EQUAL(jwks_text_rc("{\"keys\": []}"), WARD_EKEY);
    CU_ASSERT_EQUAL(jwks_text_rc("{\"keys\": [{\"kty\":\"oct\",\"k\":\"c2VjcmV0\"}]}"), WARD_EKEY);
    CU_ASSERT_EQUAL(jwks_text_rc("{\"keys\": [7]}"), WARD_EPARSE);
    /* x one byte short, and padded base64url. */
    CU_ASSERT_EQUAL(jwks_text_rc("{\"keys\": [{\"kty\":\"EC\",\"crv\":\"P-256\","
                                 "\"x\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\","
                                 "\"y\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}]}"),
                    WARD_EPARSE);
    CU_ASSERT_EQUAL(jwks_text_rc("{\"keys\": [{\"kty\":\"RSA\",\"n\":\"AQAB==\",\"e\":\"AQAB\"}]}"),
                    WARD_EPARSE);
}

/* --- tokens --------------------------------------------------------------------------------- */

static int verify_at(const char *token, int64_t now, int64_t leeway, char **id, char *err,
                     size_t errlen)
{
    ward_k8s_token_policy_t pol = {
        .issuer = ISSUER, .audience = AUDIENCE, .trust_domain = TD, .now = now, .leeway_s = leeway};
    return ward_k8s_token_verify(jwks, &pol, token, id, err, errlen);
}

static void test_tokens(void)
{
    static const struct {
        const char *name;
        int rc;
        const char *want; /* the SPIFFE id, or a fragment of err */
    } cases[] = {
        {"rs256", 0, ORDERS},
        {"es256", 0, ORDERS},
        {"nokid", 0, ORDERS},
        {"aud-string", 0, ORDERS},
        {"no-pod", 0, ORDERS},
        {"expired-in-leeway", 0, ORDERS},
        {"sa-subdomain", 0, "spiffe://test.local/ns/shop/sa/build.bot-1"},
        {"expired", WARD_ERANGE, "expired"},
        {"not-yet-valid", WARD_ERANGE, "not valid until"},
        {"iat-future", WARD_ERANGE, "issued"},
        {"no-exp", WARD_EPARSE, "exp"},
        {"wrong-aud", WARD_EINVAL, "audience"},
        {"wrong-iss", WARD_EINVAL, "issuer \"https://evil.example\""},
        {"bad-sig", WARD_EKEY, "signature does not verify"},
        {"alg-none", WARD_EKEY, "none (an unsigned token) is refused"},
        {"alg-none-sig", WARD_EKEY, "none"},
        {"hs256", WARD_EKEY, "HS256 (HMAC) is refused"},
        {"hs256-oct", WARD_EKEY, "HMAC"},
        {"rs512", WARD_EKEY, "RS512"},
        {"unknown-kid", WARD_EKEY, "\"nope\" is not in the JWKS"},
        {"enc-kid", WARD_EKEY, "\"enc-1\" is not in the JWKS"},
        {"alg-mismatch", WARD_EKEY, "\"rsa-1\" is not a key for its \"alg\""},
        {"es256-der", WARD_EKEY, "signature does not verify"},
        {"crit", WARD_EPARSE, "crit"},
        {"bad-ns", WARD_ESPIFFE, "namespace \"Shop_1\""},
        {"bad-sa", WARD_ESPIFFE, "service account"},
        {"sub-mismatch", WARD_ESPIFFE, "sub"},
        {"no-k8s", WARD_EPARSE, "kubernetes.io"},
        {"padded", WARD_EPARSE, "signature"},
        {"bad-b64", WARD_EPARSE, "header"},
        {"two-parts", WARD_EPARSE, "compact JWS"},
        {"four-parts", WARD_EPARSE, "compact JWS"},
        {"garbage", WARD_EPARSE, "compact JWS"},
        {"json-header-array", WARD_EPARSE, "header"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char file[64], err[512] = "";
        char *id = NULL;
        snprintf(file, sizeof(file), "%s.jwt", cases[i].name);
        char *tok = slurp(tok_path(file));
        CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
        int rc = verify_at(tok, minted_at, 0, &id, err, sizeof(err));
        const char *got = rc == 0 ? (id ? id : "(null)") : err;
        if (rc != cases[i].rc || strstr(got, cases[i].want) == NULL)
            fprintf(stderr, "token %s: rc %d (%s), want %d (%s)\n", cases[i].name, rc, got,
                    cases[i].rc, cases[i].want);
        CU_ASSERT_EQUAL(rc, cases[i].rc);
        if (rc == 0) {
            CU_ASSERT_STRING_EQUAL(id, cases[i].want);
        } else {
            CU_ASSERT_PTR_NOT_NULL(strstr(err, cases[i].want));
            CU_ASSERT_PTR_NULL(id);
        }
        ward_free(id);
        free(tok);
    }
}

static void test_token_clock(void)
{
    char err[512], *id = NULL;
    char *tok = slurp(tok_path("rs256.jwt"));
    CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
    /* exp = minted + 3600; 60 s leeway by default. */
    CU_ASSERT_EQUAL(verify_at(tok, minted_at + 3600 + 59, 0, &id, err, sizeof(err)), 0);
    ward_free(id);
    id = NULL;
    CU_ASSERT_EQUAL(verify_at(tok, minted_at + 3600 + 60, 0, &id, err, sizeof(err)), WARD_ERANGE);
    CU_ASSERT_EQUAL(verify_at(tok, minted_at + 3600 + 5, 1, &id, err, sizeof(err)), WARD_ERANGE);
    /* nbf = iat = minted. */
    CU_ASSERT_EQUAL(verify_at(tok, minted_at - 60, 0, &id, err, sizeof(err)), 0);
    ward_free(id);
    id = NULL;
    CU_ASSERT_EQUAL(verify_at(tok, minted_at - 61, 0, &id, err, sizeof(err)), WARD_ERANGE);
    CU_ASSERT_EQUAL(verify_at(tok, minted_at, -1, &id, err, sizeof(err)), WARD_EINVAL);
    free(tok);
}

static void test_token_limits(void)
{
    char err[512], *id = NULL;
    size_t n = 20000;
    char *big = malloc(n + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, 'a', n);
    big[n] = '\0';
    big[100] = '.';
    big[200] = '.';
    CU_ASSERT_EQUAL(verify_at(big, minted_at, 0, &id, err, sizeof(err)), WARD_ETOOLONG);
    free(big);
    CU_ASSERT_EQUAL(verify_at("", minted_at, 0, &id, err, sizeof(err)), WARD_EPARSE);
    CU_ASSERT_EQUAL(verify_at("..", minted_at, 0, &id, err, sizeof(err)), WARD_EPARSE);
    /* A valid token followed by a newline is not a valid token. */
    char *tok = slurp(tok_path("rs256.jwt"));
    CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
    char *nl = malloc(strlen(tok) + 2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(nl);
    sprintf(nl, "%s\n", tok);
    CU_ASSERT_EQUAL(verify_at(nl, minted_at, 0, &id, err, sizeof(err)), WARD_EPARSE);
    CU_ASSERT_PTR_NULL(id);
    free(nl);
    free(tok);
}

static int suite_init(void)
{
    const char *d = getenv("WARD_TOKEN_DIR");
    char err[512] = "";
    if (d == NULL) {
        fprintf(stderr, "WARD_TOKEN_DIR is not set (run through ctest)\n");
        return 1;
    }
    snprintf(tokdir, sizeof(tokdir), "%s", d);
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/ward-attest-XXXXXX");
    if (mkdtemp(tmpdir) == NULL) return 1;
    char *now = slurp(tok_path("now"));
    if (now == NULL) return 1;
    minted_at = strtoll(now, NULL, 10);
    free(now);
    if (ward_jwks_load(tok_path("jwks.json"), &jwks, err, sizeof(err)) != 0) {
        fprintf(stderr, "jwks.json: %s\n", err);
        return 1;
    }
    return 0;
}

static int suite_clean(void)
{
    static const char *files[] = {"workloads-good", "workloads-empty", "workloads-bad",
                                  "workloads-long", "jwks.json"};
    char path[128];
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        snprintf(path, sizeof(path), "%s/%s", tmpdir, files[i]);
        unlink(path);
    }
    rmdir(tmpdir);
    ward_jwks_free(jwks);
    return 0;
}

void ward_unit_register(void)
{
    CU_pSuite s = CU_add_suite("attest", suite_init, suite_clean);
    CU_add_test(s, "workloads_good", test_workloads_good);
    CU_add_test(s, "workloads_bad", test_workloads_bad);
    CU_add_test(s, "peercred", test_peercred);
    CU_add_test(s, "jwks_load", test_jwks_load);
    CU_add_test(s, "tokens", test_tokens);
    CU_add_test(s, "token_clock", test_token_clock);
    CU_add_test(s, "token_limits", test_token_limits);
}
