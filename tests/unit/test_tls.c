/* test_tls.c — identity loading and X509-SVID classification with real certificates minted by
 * tests/lib/certs.py (directory in WARD_CERT_DIR): each refusal reason from its real cause. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/mem.h>

#include "unit.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/tls.h"

static char dir[512];
static ward_identity_t *server;

static const char *path(const char *name)
{
    static char buf[4][640];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof(buf[i]), "%s/%s", dir, name);
    return buf[i];
}

static ward_tls_reason_t classify(const char *file, const char *expected, char **peer_id)
{
    uint8_t **der = NULL;
    size_t *len = NULL;
    const char *detail = NULL;
    int n = ward_pem_read_certs(path(file), &der, &len);
    CU_ASSERT_FATAL(n > 0);
    ward_tls_reason_t r = ward_tls_verify_chain(server, (const uint8_t *const *)der, len, (size_t)n,
                                                expected, 0, &detail, peer_id);
    if (r != WARD_REASON_NONE) CU_ASSERT_PTR_NOT_NULL(detail);
    for (int i = 0; i < n; i++)
        OPENSSL_free(der[i]);
    ward_free(der);
    ward_free(len);
    return r;
}

static void test_load_ok(void)
{
    CU_ASSERT_STRING_EQUAL(ward_identity_spiffe_id(server),
                           "spiffe://test.local/ns/default/sa/backend");
    CU_ASSERT(ward_identity_not_after(server) > ward_identity_not_before(server));
    CU_ASSERT_PTR_NOT_NULL(ward_identity_server_ctx(server));
    CU_ASSERT_PTR_NOT_NULL(ward_identity_client_ctx(server));
}

static void test_valid_client(void)
{
    char *id = NULL;
    CU_ASSERT_EQUAL(classify("client.pem", NULL, &id), WARD_REASON_NONE);
    CU_ASSERT_STRING_EQUAL(id, "spiffe://test.local/ns/default/sa/frontend");
    ward_free(id);
    id = NULL;
    CU_ASSERT_EQUAL(classify("client.pem", "spiffe://test.local/ns/default/sa/frontend", &id),
                    WARD_REASON_NONE);
    ward_free(id);
}

static void test_reasons(void)
{
    char *id = NULL;
    CU_ASSERT_EQUAL(classify("expired.pem", NULL, NULL), WARD_REASON_EXPIRED);
    CU_ASSERT_EQUAL(classify("future.pem", NULL, NULL), WARD_REASON_NOT_YET_VALID);
    CU_ASSERT_EQUAL(classify("otherca.pem", NULL, NULL), WARD_REASON_UNKNOWN_CA);
    CU_ASSERT_EQUAL(classify("other-ca.pem", NULL, NULL), WARD_REASON_UNKNOWN_CA);
    CU_ASSERT_EQUAL(classify("twosan.pem", NULL, NULL), WARD_REASON_BAD_CERTIFICATE);
    CU_ASSERT_EQUAL(classify("caleaf.pem", NULL, NULL), WARD_REASON_BAD_CERTIFICATE);
    CU_ASSERT_EQUAL(classify("wrongid.pem", "spiffe://test.local/ns/default/sa/frontend", &id),
                    WARD_REASON_SAN_MISMATCH);
    /* The refusal still names who the peer really was. */
    CU_ASSERT_STRING_EQUAL(id, "spiffe://test.local/ns/default/sa/intruder");
    ward_free(id);
}

static void test_no_cert(void)
{
    const char *detail = NULL;
    CU_ASSERT_EQUAL(ward_tls_verify_chain(server, NULL, NULL, 0, NULL, 0, &detail, NULL),
                    WARD_REASON_NO_CLIENT_CERT);
    CU_ASSERT_EQUAL(ward_tls_verify_chain(server, NULL, NULL, 0, NULL, 1, &detail, NULL),
                    WARD_REASON_BAD_CERTIFICATE);
}

static void test_garbage_der(void)
{
    const uint8_t junk[] = {0x30, 0x03, 0x01, 0x01, 0xff};
    const uint8_t *der[] = {junk};
    size_t len[] = {sizeof(junk)};
    const char *detail = NULL;
    CU_ASSERT_EQUAL(ward_tls_verify_chain(server, der, len, 1, NULL, 0, &detail, NULL),
                    WARD_REASON_BAD_CERTIFICATE);
}

static int load(const char *cert, const char *key, const char *ca)
{
    ward_identity_t *id = NULL;
    char err[512] = "";
    int rc = ward_identity_load(path(cert), path(key), path(ca), &id, err, sizeof(err));
    if (rc == 0)
        ward_identity_unref(id);
    else
        CU_ASSERT(strlen(err) > 0);
    return rc;
}

static void test_load_errors(void)
{
    CU_ASSERT_EQUAL(load("server.pem", "client-key.pem", "ca.pem"), WARD_EKEYMISMATCH);
    CU_ASSERT_EQUAL(load("server.pem", "server-key.pem", "server.pem"), WARD_EBUNDLE);
    CU_ASSERT_EQUAL(load("missing.pem", "server-key.pem", "ca.pem"), WARD_ECERT);
    CU_ASSERT_EQUAL(load("server.pem", "missing.pem", "ca.pem"), WARD_EKEY);
    CU_ASSERT_EQUAL(load("expired.pem", "expired-key.pem", "ca.pem"), WARD_ECERT);
    CU_ASSERT_EQUAL(load("otherca.pem", "otherca-key.pem", "ca.pem"), WARD_ECERT);
    CU_ASSERT_EQUAL(load("twosan.pem", "twosan-key.pem", "ca.pem"), WARD_ESPIFFE);
    CU_ASSERT_EQUAL(load("server.pem", "server-key.pem", "bundle.pem"), 0);
    CU_ASSERT_EQUAL(load("otherca.pem", "otherca-key.pem", "bundle.pem"), 0);
}

static void test_bundle_with_two_roots(void)
{
    ward_identity_t *id = NULL;
    char err[512];
    CU_ASSERT_EQUAL_FATAL(ward_identity_load(path("server.pem"), path("server-key.pem"),
                                             path("bundle.pem"), &id, err, sizeof(err)),
                          0);
    uint8_t **der = NULL;
    size_t *len = NULL;
    const char *detail;
    int n = ward_pem_read_certs(path("otherca.pem"), &der, &len);
    CU_ASSERT_FATAL(n > 0);
    CU_ASSERT_EQUAL(ward_tls_verify_chain(id, (const uint8_t *const *)der, len, (size_t)n, NULL, 0,
                                          &detail, NULL),
                    WARD_REASON_NONE);
    for (int i = 0; i < n; i++)
        OPENSSL_free(der[i]);
    ward_free(der);
    ward_free(len);
    ward_identity_unref(id);
}

static void test_reason_names(void)
{
    CU_ASSERT_STRING_EQUAL(ward_tls_reason_name(WARD_REASON_EXPIRED), "expired");
    CU_ASSERT_STRING_EQUAL(ward_tls_reason_name(WARD_REASON_SAN_MISMATCH), "san_mismatch");
    CU_ASSERT_STRING_EQUAL(ward_tls_reason_name(WARD_REASON_NO_CLIENT_CERT), "no_client_cert");
    CU_ASSERT_STRING_EQUAL(ward_tls_reason_name(WARD_REASON_COUNT), "unknown");
}

static int suite_init(void)
{
    const char *d = getenv("WARD_CERT_DIR");
    char err[512];
    if (d == NULL) return 1;
    snprintf(dir, sizeof(dir), "%s", d);
    if (ward_identity_load(path("server.pem"), path("server-key.pem"), path("ca.pem"), &server, err,
                           sizeof(err)) != 0) {
        fprintf(stderr, "cannot load test identity: %s\n", err);
        return 1;
    }
    return 0;
}

static int suite_clean(void)
{
    ward_identity_unref(server);
    return 0;
}

void ward_unit_register(void)
{
    CU_pSuite s = CU_add_suite("tls", suite_init, suite_clean);
    CU_add_test(s, "load_ok", test_load_ok);
    CU_add_test(s, "valid_client", test_valid_client);
    CU_add_test(s, "reasons", test_reasons);
    CU_add_test(s, "no_cert", test_no_cert);
    CU_add_test(s, "garbage_der", test_garbage_der);
    CU_add_test(s, "load_errors", test_load_errors);
    CU_add_test(s, "bundle_with_two_roots", test_bundle_with_two_roots);
    CU_add_test(s, "reason_names", test_reason_names);
}
