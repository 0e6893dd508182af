/* test_ca.c — ward-agent's CA: the generated root (persisted, re-opened, key permissions), the SVID
 * profile of signed CSRs checked with BoringSSL's own X.509 code, every CSR refusal, minting,
 * rotation (and recovery from a crash inside it), and operator-provided roots and intermediates
 * (the root of tests/lib/certs.py's set in WARD_CERT_DIR, intermediates built here). */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include "ca.h"
#include "unit.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/tls.h"

#define TD     "test.local"
#define ORDERS "spiffe://test.local/ns/shop/sa/orders"

static char base[64];
static char certdir[512];

static const char *at(const char *dir, const char *name)
{
    static char buf[8][700];
    static int i;
    i = (i + 1) % 8;
    if (name == NULL)
        snprintf(buf[i], sizeof(buf[i]), "%s/%s", base, dir);
    else
        snprintf(buf[i], sizeof(buf[i]), "%s/%s/%s", base, dir, name);
    return buf[i];
}

static const char *cert_path(const char *name)
{
    static char buf[4][700];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof(buf[i]), "%s/%s", certdir, name);
    return buf[i];
}

static int open_state(const char *dir, ward_ca_t **ca, char *err, size_t errlen)
{
    err[0] = '\0';
    int rc = ward_ca_open(at(dir, NULL), NULL, NULL, TD, ca, err, errlen);
    if (rc != 0) CU_ASSERT(strlen(err) > 0);
    return rc;
}

static X509 *parse(const uint8_t *der, size_t len)
{
    const uint8_t *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    CU_ASSERT_PTR_NOT_NULL(x);
    return x;
}

static X509 *bundle_cert(const ward_ca_t *ca, size_t i)
{
    const uint8_t *const *der;
    const size_t *len;
    size_t n = ward_ca_bundle(ca, &der, &len);
    CU_ASSERT_FATAL(i < n);
    return parse(der[i], len[i]);
}

static size_t bundle_n(const ward_ca_t *ca)
{
    const uint8_t *const *der;
    const size_t *len;
    return ward_ca_bundle(ca, &der, &len);
}

static X509 *read_pem_cert(const char *file)
{
    BIO *b = BIO_new_file(file, "r");
    X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    return x;
}

static EVP_PKEY *read_pem_key(const char *file)
{
    BIO *b = BIO_new_file(file, "r");
    EVP_PKEY *k = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
    BIO_free(b);
    return k;
}

static int64_t unix_time(const ASN1_TIME *t)
{
    int days = 0, secs = 0;
    ASN1_TIME *epoch = ASN1_TIME_set(NULL, 0);
    CU_ASSERT_FATAL(ASN1_TIME_diff(&days, &secs, epoch, t));
    ASN1_TIME_free(epoch);
    return (int64_t)days * 86400 + secs;
}

/* X509_verify_cert of chain (leaf first) against roots. Returns the X509_V_* result. */
static int verify(const ward_der_chain_t *c, X509 *const *roots, size_t nroots)
{
    X509_STORE *store = X509_STORE_new();
    STACK_OF(X509) *inter = sk_X509_new_null();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    X509 *leaf = parse(c->der[0], c->len[0]);
    int rc;
    for (size_t i = 0; i < nroots; i++)
        CU_ASSERT(X509_STORE_add_cert(store, roots[i]));
    for (size_t i = 1; i < c->n; i++)
        sk_X509_push(inter, parse(c->der[i], c->len[i]));
    CU_ASSERT_FATAL(X509_STORE_CTX_init(ctx, store, leaf, inter));
    X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_CLIENT);
    rc = X509_verify_cert(ctx) == 1 ? X509_V_OK : X509_STORE_CTX_get_error(ctx);
    if (rc == X509_V_OK) {
        /* And as a server certificate. */
        X509_STORE_CTX_cleanup(ctx);
        CU_ASSERT_FATAL(X509_STORE_CTX_init(ctx, store, leaf, inter));
        X509_STORE_CTX_set_purpose(ctx, X509_PURPOSE_SSL_SERVER);
        CU_ASSERT_EQUAL(X509_verify_cert(ctx), 1);
    }
    X509_STORE_CTX_free(ctx);
    sk_X509_pop_free(inter, X509_free);
    X509_STORE_free(store);
    X509_free(leaf);
    ERR_clear_error();
    return rc;
}

static int verify1(const ward_der_chain_t *c, X509 *root)
{
    return verify(c, &root, 1);
}

/* A CSR for key asking for the given URI SANs (and a DNS SAN when dns != NULL). DER in *der
 * (OPENSSL_free). */
static size_t make_csr(EVP_PKEY *key, const char *const *uris, size_t nuris, const char *dns,
                       uint8_t **der)
{
    X509_REQ *req = X509_REQ_new();
    CU_ASSERT_FATAL(req != NULL);
    CU_ASSERT(X509_REQ_set_version(req, X509_REQ_VERSION_1));
    CU_ASSERT(X509_REQ_set_pubkey(req, key));
    if (nuris > 0 || dns != NULL) {
        GENERAL_NAMES *names = GENERAL_NAMES_new();
        for (size_t i = 0; i < nuris + (dns != NULL); i++) {
            GENERAL_NAME *gn = GENERAL_NAME_new();
            ASN1_IA5STRING *s = ASN1_IA5STRING_new();
            const char *v = i < nuris ? uris[i] : dns;
            ASN1_STRING_set(s, v, (int)strlen(v));
            GENERAL_NAME_set0_value(gn, i < nuris ? GEN_URI : GEN_DNS, s);
            sk_GENERAL_NAME_push(names, gn);
        }
        STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
        sk_X509_EXTENSION_push(exts, X509V3_EXT_i2d(NID_subject_alt_name, 0, names));
        CU_ASSERT(X509_REQ_add_extensions(req, exts));
        sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
        GENERAL_NAMES_free(names);
    }
    CU_ASSERT(X509_REQ_sign(req, key, EVP_sha256()));
    *der = NULL;
    int n = i2d_X509_REQ(req, der);
    CU_ASSERT_FATAL(n > 0);
    X509_REQ_free(req);
    return (size_t)n;
}

static EVP_PKEY *ec_key(int nid)
{
    EVP_PKEY *key = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_EC, NULL);
    CU_ASSERT_FATAL(ctx != NULL && EVP_PKEY_keygen_init(ctx) == 1 &&
                    EVP_PKEY_CTX_set_ec_paramgen_curve_nid(ctx, nid) == 1 &&
                    EVP_PKEY_keygen(ctx, &key) == 1);
    EVP_PKEY_CTX_free(ctx);
    return key;
}

static EVP_PKEY *rsa_key(int bits)
{
    RSA *rsa = RSA_new();
    BIGNUM *e = BN_new();
    EVP_PKEY *key = EVP_PKEY_new();
    CU_ASSERT_FATAL(rsa && e && key && BN_set_word(e, RSA_F4) &&
                    RSA_generate_key_ex(rsa, bits, e, NULL) && EVP_PKEY_assign_RSA(key, rsa));
    BN_free(e);
    return key;
}

static int sign(ward_ca_t *ca, const uint8_t *csr, size_t len, const char *id, uint32_t ttl,
                ward_der_chain_t *out)
{
    char err[512] = "";
    int rc = ward_ca_sign_csr(ca, csr, len, id, ttl, out, err, sizeof(err));
    if (rc != 0) {
        CU_ASSERT(strlen(err) > 0);
        CU_ASSERT_EQUAL(out->n, 0);
    }
    return rc;
}

/* Signs a fresh ward_csr_new() CSR for ORDERS. */
static int sign_fresh(ward_ca_t *ca, ward_der_chain_t *out)
{
    EVP_PKEY *key = NULL;
    uint8_t *csr = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(ward_csr_new(ORDERS, &key, &csr, &len), 0);
    int rc = sign(ca, csr, len, ORDERS, 3600, out);
    ward_free(csr);
    EVP_PKEY_free(key);
    return rc;
}

static mode_t mode_of(const char *path)
{
    struct stat st;
    CU_ASSERT_EQUAL_FATAL(stat(path, &st), 0);
    return st.st_mode & 07777;
}

static int exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

static void copy_file(const char *from, const char *to, mode_t mode)
{
    FILE *in = fopen(from, "rb");
    int fd = open(to, O_WRONLY | O_CREAT | O_TRUNC, mode);
    char buf[4096];
    size_t n;
    CU_ASSERT_FATAL(in != NULL && fd >= 0);
    while ((n = fread(buf, 1, sizeof(buf), in)) > 0)
        CU_ASSERT_EQUAL(write(fd, buf, n), (ssize_t)n);
    fchmod(fd, mode);
    close(fd);
    fclose(in);
}

/* --- the generated root --------------------------------------------------------------------- */

static void test_generate_reopen(void)
{
    ward_ca_t *ca = NULL;
    char err[512];
    CU_ASSERT_EQUAL_FATAL(open_state("gen", &ca, err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(ward_ca_trust_domain(ca), TD);
    CU_ASSERT_EQUAL(mode_of(at("gen", NULL)), 0700);
    CU_ASSERT_EQUAL(mode_of(at("gen", "ca-key.pem")), 0600);
    CU_ASSERT_EQUAL(mode_of(at("gen", "ca.pem")), 0644);
    CU_ASSERT_EQUAL(bundle_n(ca), 1);
    uint64_t gen = ward_ca_bundle_generation(ca);
    X509 *root = bundle_cert(ca, 0);
    X509 *on_disk = read_pem_cert(at("gen", "ca.pem"));
    CU_ASSERT_EQUAL(X509_cmp(root, on_disk), 0);
    CU_ASSERT(X509_get_extension_flags(root) & EXFLAG_CA);
    CU_ASSERT(X509_get_extension_flags(root) & EXFLAG_SS);
    CU_ASSERT(X509_get_key_usage(root) & KU_KEY_CERT_SIGN);
    EVP_PKEY *pub = X509_get_pubkey(root);
    CU_ASSERT_EQUAL(EVP_PKEY_id(pub), EVP_PKEY_EC);
    EVP_PKEY_free(pub);
    ward_ca_free(ca);

    CU_ASSERT_EQUAL_FATAL(open_state("gen", &ca, err, sizeof(err)), 0);
    X509 *again = bundle_cert(ca, 0);
    CU_ASSERT_EQUAL(X509_cmp(root, again), 0);
    CU_ASSERT_EQUAL(ward_ca_bundle_generation(ca), gen);
    ward_ca_free(ca);

    /* The same state directory for another trust domain: refused. */
    CU_ASSERT_EQUAL(ward_ca_open(at("gen", NULL), NULL, NULL, "other.local", &ca, err, sizeof(err)),
                    WARD_ECERT);
    CU_ASSERT_PTR_NULL(ca);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "trust domain"));
    X509_free(root);
    X509_free(again);
    X509_free(on_disk);
}

static void test_key_permissions(void)
{
    ward_ca_t *ca = NULL;
    char err[512];
    CU_ASSERT_EQUAL_FATAL(open_state("perm", &ca, err, sizeof(err)), 0);
    ward_ca_free(ca);
    ca = NULL;

    CU_ASSERT_EQUAL(chmod(at("perm", "ca-key.pem"), 0644), 0);
    CU_ASSERT_EQUAL(open_state("perm", &ca, err, sizeof(err)), WARD_EKEY);
    CU_ASSERT_PTR_NULL(ca);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "0644"));
    CU_ASSERT_EQUAL(chmod(at("perm", "ca-key.pem"), 0640), 0);
    CU_ASSERT_EQUAL(open_state("perm", &ca, err, sizeof(err)), WARD_EKEY);
    CU_ASSERT_EQUAL(chmod(at("perm", "ca-key.pem"), 0400), 0);
    CU_ASSERT_EQUAL(open_state("perm", &ca, err, sizeof(err)), 0);
    ward_ca_free(ca);
    ca = NULL;

    /* A state directory others may write to. */
    CU_ASSERT_EQUAL(chmod(at("perm", NULL), 0777), 0);
    CU_ASSERT_EQUAL(open_state("perm", &ca, err, sizeof(err)), WARD_EINVAL);
    CU_ASSERT_EQUAL(chmod(at("perm", NULL), 0700), 0);

    /* A certificate whose key is gone. */
    CU_ASSERT_EQUAL(unlink(at("perm", "ca-key.pem")), 0);
    CU_ASSERT_EQUAL(open_state("perm", &ca, err, sizeof(err)), WARD_EKEY);
    CU_ASSERT_PTR_NULL(ca);
}

static void test_open_args(void)
{
    ward_ca_t *ca = NULL;
    char err[512];
    CU_ASSERT_EQUAL(ward_ca_open(at("args", NULL), NULL, NULL, "Bad_TD:1", &ca, err, sizeof(err)),
                    WARD_ESPIFFE);
    CU_ASSERT_EQUAL(ward_ca_open(at("args", NULL), NULL, NULL, NULL, &ca, err, sizeof(err)),
                    WARD_ESPIFFE);
    CU_ASSERT_EQUAL(ward_ca_open(NULL, NULL, NULL, TD, &ca, err, sizeof(err)), WARD_EINVAL);
    CU_ASSERT_EQUAL(
        ward_ca_open(at("args", NULL), cert_path("ca.pem"), NULL, TD, &ca, err, sizeof(err)),
        WARD_EINVAL);
    CU_ASSERT_EQUAL(ward_ca_open("/nonexistent/dir/state", NULL, NULL, TD, &ca, err, sizeof(err)),
                    -ENOENT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "/nonexistent/dir/state"));
    CU_ASSERT_PTR_NULL(ca);
}

/* --- signing -------------------------------------------------------------------------------- */

static int ext_critical(X509 *x, int nid)
{
    int i = X509_get_ext_by_NID(x, nid, -1);
    if (i < 0) return -1;
    CU_ASSERT_EQUAL(X509_get_ext_by_NID(x, nid, i), -1); /* only one */
    return X509_EXTENSION_get_critical(X509_get_ext(x, i));
}

static void test_sign_profile(void)
{
    ward_ca_t *ca = NULL;
    ward_der_chain_t chain = {0};
    EVP_PKEY *key = NULL;
    uint8_t *csr = NULL;
    size_t csr_len = 0;
    char err[512];

    CU_ASSERT_EQUAL_FATAL(open_state("sign", &ca, err, sizeof(err)), 0);
    X509 *root = bundle_cert(ca, 0);
    CU_ASSERT_EQUAL_FATAL(ward_csr_new(ORDERS, &key, &csr, &csr_len), 0);
    int64_t now = (int64_t)time(NULL);
    CU_ASSERT_EQUAL_FATAL(sign(ca, csr, csr_len, ORDERS, 3600, &chain), 0);
    CU_ASSERT_EQUAL_FATAL(chain.n, 1); /* a root signs: nothing to present after the leaf */
    X509 *leaf = parse(chain.der[0], chain.len[0]);
    CU_ASSERT_PTR_NOT_NULL_FATAL(leaf);

    CU_ASSERT_EQUAL(X509_get_version(leaf), X509_VERSION_3);
    EVP_PKEY *pub = X509_get_pubkey(leaf);
    CU_ASSERT_EQUAL(EVP_PKEY_cmp(pub, key), 1);
    EVP_PKEY_free(pub);
    CU_ASSERT_EQUAL(X509_NAME_cmp(X509_get_issuer_name(leaf), X509_get_subject_name(root)), 0);
    CU_ASSERT_EQUAL(verify1(&chain, root), X509_V_OK);

    /* Exactly one SAN, a URI, the requested id. */
    GENERAL_NAMES *names = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(names);
    CU_ASSERT_EQUAL_FATAL(sk_GENERAL_NAME_num(names), 1);
    const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, 0);
    CU_ASSERT_EQUAL_FATAL(gn->type, GEN_URI);
    CU_ASSERT_EQUAL(ASN1_STRING_length(gn->d.uniformResourceIdentifier), (int)strlen(ORDERS));
    CU_ASSERT_EQUAL(
        memcmp(ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier), ORDERS, strlen(ORDERS)), 0);
    GENERAL_NAMES_free(names);
    /* The subject is not empty, so the SAN need not be critical (RFC 5280 4.2.1.6). */
    CU_ASSERT(X509_NAME_entry_count(X509_get_subject_name(leaf)) > 0);
    CU_ASSERT_EQUAL(ext_critical(leaf, NID_subject_alt_name), 0);

    /* cA=false (critical), digitalSignature only (critical), EKU server+client. */
    uint32_t flags = X509_get_extension_flags(leaf);
    CU_ASSERT(flags & EXFLAG_BCONS);
    CU_ASSERT_FALSE(flags & EXFLAG_CA);
    CU_ASSERT_FALSE(flags & EXFLAG_INVALID);
    CU_ASSERT_EQUAL(ext_critical(leaf, NID_basic_constraints), 1);
    CU_ASSERT_EQUAL(X509_get_key_usage(leaf), KU_DIGITAL_SIGNATURE);
    CU_ASSERT_EQUAL(ext_critical(leaf, NID_key_usage), 1);
    CU_ASSERT_EQUAL(X509_get_extended_key_usage(leaf), XKU_SSL_SERVER | XKU_SSL_CLIENT);
    CU_ASSERT_EQUAL(ext_critical(leaf, NID_ext_key_usage), 0);
    /* SKI, and AKI naming the root's key. */
    CU_ASSERT_PTR_NOT_NULL(X509_get0_subject_key_id(leaf));
    CU_ASSERT_PTR_NOT_NULL_FATAL(X509_get0_authority_key_id(leaf));
    CU_ASSERT_EQUAL(
        ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(leaf), X509_get0_subject_key_id(root)), 0);
    CU_ASSERT_EQUAL(X509_get_signature_nid(leaf), NID_ecdsa_with_SHA256);

    /* Validity: backdated 5 minutes, ttl long. */
    int64_t nb = unix_time(X509_get0_notBefore(leaf)), na = unix_time(X509_get0_notAfter(leaf));
    CU_ASSERT(nb >= now - 300 - 5 && nb <= now - 300 + 5);
    CU_ASSERT(na >= now + 3600 - 5 && na <= now + 3600 + 5);

    /* A positive serial of at most 127 random bits, different each time. */
    BIGNUM *serial = ASN1_INTEGER_to_BN(X509_get0_serialNumber(leaf), NULL);
    CU_ASSERT_FALSE(BN_is_negative(serial));
    CU_ASSERT(BN_num_bits(serial) <= 127 && BN_num_bits(serial) > 64);
    ward_der_chain_t chain2 = {0};
    CU_ASSERT_EQUAL_FATAL(sign(ca, csr, csr_len, ORDERS, 3600, &chain2), 0);
    X509 *leaf2 = parse(chain2.der[0], chain2.len[0]);
    CU_ASSERT_NOT_EQUAL(
        ASN1_INTEGER_cmp(X509_get0_serialNumber(leaf), X509_get0_serialNumber(leaf2)), 0);
    BN_free(serial);
    X509_free(leaf2);
    ward_der_chain_free(&chain2);

    /* A ttl past the root's own notAfter is cut to it. */
    CU_ASSERT_EQUAL_FATAL(sign(ca, csr, csr_len, ORDERS, UINT32_MAX, &chain2), 0);
    leaf2 = parse(chain2.der[0], chain2.len[0]);
    CU_ASSERT_EQUAL(unix_time(X509_get0_notAfter(leaf2)), unix_time(X509_get0_notAfter(root)));
    X509_free(leaf2);
    ward_der_chain_free(&chain2);
    CU_ASSERT_EQUAL(chain2.n, 0);

    /* RSA-2048 and P-384 CSR keys are accepted too; a CSR without SANs gets the attested id. */
    EVP_PKEY *keys[] = {rsa_key(2048), ec_key(NID_secp384r1)};
    for (size_t i = 0; i < 2; i++) {
        uint8_t *der = NULL;
        size_t n = make_csr(keys[i], NULL, 0, NULL, &der);
        CU_ASSERT_EQUAL(sign(ca, der, n, ORDERS, 600, &chain2), 0);
        CU_ASSERT_EQUAL(verify1(&chain2, root), X509_V_OK);
        ward_der_chain_free(&chain2);
        OPENSSL_free(der);
        EVP_PKEY_free(keys[i]);
    }

    X509_free(leaf);
    X509_free(root);
    ward_der_chain_free(&chain);
    ward_free(csr);
    EVP_PKEY_free(key);
    ward_ca_free(ca);
}

static void test_sign_refusals(void)
{
    ward_ca_t *ca = NULL;
    ward_der_chain_t chain = {0};
    uint8_t *der = NULL;
    size_t n;
    char err[512];
    const char *other = "spiffe://test.local/ns/shop/sa/admin";

    CU_ASSERT_EQUAL_FATAL(open_state("sign", &ca, err, sizeof(err)), 0);
    EVP_PKEY *key = ec_key(NID_X9_62_prime256v1);

    /* A CSR asking for another identity than the attested one. */
    n = make_csr(key, &other, 1, NULL, &der);
    CU_ASSERT_EQUAL(sign(ca, der, n, ORDERS, 3600, &chain), WARD_ESPIFFE);
    /* ... which is fine when that is the attested identity. */
    CU_ASSERT_EQUAL(sign(ca, der, n, other, 3600, &chain), 0);
    ward_der_chain_free(&chain);
    OPENSSL_free(der);

    /* Two URI SANs (even if one is right), or any other SAN type. */
    const char *two[] = {ORDERS, other};
    n = make_csr(key, two, 2, NULL, &der);
    CU_ASSERT_EQUAL(sign(ca, der, n, ORDERS, 3600, &chain), WARD_ECERT);
    OPENSSL_free(der);
    n = make_csr(key, two, 1, "orders.shop.svc", &der);
    CU_ASSERT_EQUAL(sign(ca, der, n, ORDERS, 3600, &chain), WARD_ECERT);
    OPENSSL_free(der);

    /* Weak keys. */
    EVP_PKEY *weak = rsa_key(1024);
    n = make_csr(weak, two, 1, NULL, &der);
    CU_ASSERT_EQUAL(sign(ca, der, n, ORDERS, 3600, &chain), WARD_EKEY);
    OPENSSL_free(der);
    EVP_PKEY_free(weak);
    weak = ec_key(NID_secp224r1);
    n = make_csr(weak, two, 1, NULL, &der);
    CU_ASSERT_EQUAL(sign(ca, der, n, ORDERS, 3600, &chain), WARD_EKEY);
    OPENSSL_free(der);
    EVP_PKEY_free(weak);

    /* Tampered: one bit of the signature, or of the requested SAN after signing. */
    n = make_csr(key, two, 1, NULL, &der);
    CU_ASSERT_EQUAL(sign(ca, der, n, ORDERS, 3600, &chain), 0);
    ward_der_chain_free(&chain);
    der[n - 5] ^= 0x01;
    CU_ASSERT_EQUAL(sign(ca, der, n, ORDERS, 3600, &chain), WARD_ECERT);
    der[n - 5] ^= 0x01;
    uint8_t *hit = memmem(der, n, "orders", 6);
    CU_ASSERT_PTR_NOT_NULL_FATAL(hit);
    memcpy(hit, "ordert", 6);
    CU_ASSERT_EQUAL(sign(ca, der, n, "spiffe://test.local/ns/shop/sa/ordert", 3600, &chain),
                    WARD_ECERT);
    memcpy(hit, "orders", 6);

    /* Trailing bytes, truncation, garbage, empty. */
    uint8_t *longer = OPENSSL_malloc(n + 1);
    memcpy(longer, der, n);
    longer[n] = 0;
    CU_ASSERT_EQUAL(sign(ca, longer, n + 1, ORDERS, 3600, &chain), WARD_ECERT);
    OPENSSL_free(longer);
    CU_ASSERT_EQUAL(sign(ca, der, n - 1, ORDERS, 3600, &chain), WARD_ECERT);
    CU_ASSERT_EQUAL(sign(ca, (const uint8_t *)"garbage", 7, ORDERS, 3600, &chain), WARD_ECERT);
    CU_ASSERT_EQUAL(sign(ca, der, 0, ORDERS, 3600, &chain), WARD_ECERT);

    /* The id: outside the trust domain, not a SPIFFE id, no path; and a zero ttl. */
    CU_ASSERT_EQUAL(sign(ca, der, n, "spiffe://other.local/ns/shop/sa/orders", 3600, &chain),
                    WARD_ESPIFFE);
    CU_ASSERT_EQUAL(sign(ca, der, n, "https://test.local/orders", 3600, &chain), WARD_ESPIFFE);
    CU_ASSERT_EQUAL(sign(ca, der, n, "spiffe://test.local", 3600, &chain), WARD_ESPIFFE);
    CU_ASSERT_EQUAL(sign(ca, der, n, ORDERS, 0, &chain), WARD_EINVAL);
    OPENSSL_free(der);
    EVP_PKEY_free(key);
    ward_ca_free(ca);
}

static void test_mint(void)
{
    ward_ca_t *ca = NULL;
    ward_der_chain_t chain = {0};
    uint8_t *pk = NULL;
    size_t pk_len = 0;
    char err[512];
    CU_ASSERT_EQUAL_FATAL(open_state("sign", &ca, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(ward_ca_mint(ca, ORDERS, 600, &chain, &pk, &pk_len, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(chain.n, 1);
    X509 *leaf = parse(chain.der[0], chain.len[0]);
    X509 *root = bundle_cert(ca, 0);
    CBS cbs;
    CBS_init(&cbs, pk, pk_len);
    EVP_PKEY *key = EVP_parse_private_key(&cbs);
    CU_ASSERT_PTR_NOT_NULL_FATAL(key);
    CU_ASSERT_EQUAL(CBS_len(&cbs), 0);
    CU_ASSERT_EQUAL(X509_check_private_key(leaf, key), 1);
    CU_ASSERT_EQUAL(EVP_PKEY_id(key), EVP_PKEY_EC);
    CU_ASSERT_EQUAL(verify1(&chain, root), X509_V_OK);
    CU_ASSERT_EQUAL(X509_get_key_usage(leaf), KU_DIGITAL_SIGNATURE);
    EVP_PKEY_free(key);
    X509_free(leaf);
    X509_free(root);
    ward_der_chain_free(&chain);
    ward_free(pk);

    CU_ASSERT_EQUAL(
        ward_ca_mint(ca, "spiffe://other.local/x", 600, &chain, &pk, &pk_len, err, sizeof(err)),
        WARD_ESPIFFE);
    CU_ASSERT_PTR_NULL(pk);
    CU_ASSERT_EQUAL(chain.n, 0);
    ward_ca_free(ca);
}

/* --- rotation ------------------------------------------------------------------------------- */

static void test_rotation(void)
{
    ward_ca_t *ca = NULL;
    ward_der_chain_t chain = {0};
    char err[512];

    CU_ASSERT_EQUAL_FATAL(open_state("rot", &ca, err, sizeof(err)), 0);
    X509 *a = bundle_cert(ca, 0);
    uint64_t g1 = ward_ca_bundle_generation(ca);
    CU_ASSERT_EQUAL(ward_ca_rotate_activate(ca, err, sizeof(err)), WARD_EINVAL);
    CU_ASSERT_EQUAL(ward_ca_rotate_finish(ca, err, sizeof(err)), WARD_EINVAL);

    /* prepare: old + new in the bundle, the old one still signs. */
    CU_ASSERT_EQUAL_FATAL(ward_ca_rotate_prepare(ca, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(bundle_n(ca), 2);
    uint64_t g2 = ward_ca_bundle_generation(ca);
    CU_ASSERT_NOT_EQUAL(g2, g1);
    X509 *a2 = bundle_cert(ca, 0), *b = bundle_cert(ca, 1);
    CU_ASSERT_EQUAL(X509_cmp(a, a2), 0);
    CU_ASSERT_NOT_EQUAL(X509_cmp(a, b), 0);
    CU_ASSERT_NOT_EQUAL(X509_NAME_cmp(X509_get_subject_name(a), X509_get_subject_name(b)), 0);
    CU_ASSERT_EQUAL(ward_ca_rotate_prepare(ca, err, sizeof(err)), WARD_EINVAL);
    CU_ASSERT_EQUAL_FATAL(sign_fresh(ca, &chain), 0);
    CU_ASSERT_EQUAL(verify1(&chain, a), X509_V_OK);
    CU_ASSERT_NOT_EQUAL(verify1(&chain, b), X509_V_OK);
    ward_der_chain_free(&chain);

    /* A restarted agent keeps the prepared rotation. */
    ward_ca_free(ca);
    CU_ASSERT_EQUAL_FATAL(open_state("rot", &ca, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(bundle_n(ca), 2);
    CU_ASSERT_EQUAL(ward_ca_bundle_generation(ca), g2);
    CU_ASSERT_EQUAL_FATAL(sign_fresh(ca, &chain), 0);
    CU_ASSERT_EQUAL(verify1(&chain, a), X509_V_OK);
    ward_der_chain_free(&chain);

    /* activate: the new root signs; both stay trusted. */
    CU_ASSERT_EQUAL_FATAL(ward_ca_rotate_activate(ca, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(bundle_n(ca), 2);
    CU_ASSERT_EQUAL_FATAL(sign_fresh(ca, &chain), 0);
    CU_ASSERT_EQUAL(verify1(&chain, b), X509_V_OK);
    CU_ASSERT_NOT_EQUAL(verify1(&chain, a), X509_V_OK);
    ward_der_chain_free(&chain);
    CU_ASSERT_EQUAL(ward_ca_rotate_prepare(ca, err, sizeof(err)), WARD_EINVAL);
    CU_ASSERT_EQUAL(ward_ca_rotate_activate(ca, err, sizeof(err)), WARD_EINVAL);
    CU_ASSERT(exists(at("rot", "ca-prev.pem")));
    CU_ASSERT_FALSE(exists(at("rot", "ca-next.pem")));
    CU_ASSERT_FALSE(exists(at("rot", "ca-next-key.pem")));
    CU_ASSERT_EQUAL(mode_of(at("rot", "ca-key.pem")), 0600);

    ward_ca_free(ca);
    CU_ASSERT_EQUAL_FATAL(open_state("rot", &ca, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(bundle_n(ca), 2);
    CU_ASSERT_EQUAL_FATAL(sign_fresh(ca, &chain), 0);
    CU_ASSERT_EQUAL(verify1(&chain, b), X509_V_OK);
    ward_der_chain_free(&chain);

    /* finish: only the new root is left, also after a restart. */
    CU_ASSERT_EQUAL_FATAL(ward_ca_rotate_finish(ca, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(bundle_n(ca), 1);
    uint64_t g3 = ward_ca_bundle_generation(ca);
    CU_ASSERT(g3 != g2 && g3 != g1);
    X509 *only = bundle_cert(ca, 0);
    CU_ASSERT_EQUAL(X509_cmp(only, b), 0);
    X509_free(only);
    CU_ASSERT_FALSE(exists(at("rot", "ca-prev.pem")));
    ward_ca_free(ca);
    CU_ASSERT_EQUAL_FATAL(open_state("rot", &ca, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(bundle_n(ca), 1);
    CU_ASSERT_EQUAL(ward_ca_bundle_generation(ca), g3);
    only = bundle_cert(ca, 0);
    CU_ASSERT_EQUAL(X509_cmp(only, b), 0);
    X509_free(only);
    ward_ca_free(ca);
    X509_free(a);
    X509_free(a2);
    X509_free(b);
}

/* A crash between the steps of activate or prepare leaves files a restart must make sense of. */
static void test_rotation_recovery(void)
{
    ward_ca_t *ca = NULL;
    ward_der_chain_t chain = {0};
    char err[512];

    CU_ASSERT_EQUAL_FATAL(open_state("crash", &ca, err, sizeof(err)), 0);
    X509 *a = bundle_cert(ca, 0);
    CU_ASSERT_EQUAL_FATAL(ward_ca_rotate_prepare(ca, err, sizeof(err)), 0);
    X509 *b = bundle_cert(ca, 1);
    ward_ca_free(ca);

    /* activate stopped after writing ca-prev.pem: still prepared. */
    copy_file(at("crash", "ca.pem"), at("crash", "ca-prev.pem"), 0644);
    CU_ASSERT_EQUAL_FATAL(open_state("crash", &ca, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(bundle_n(ca), 2);
    CU_ASSERT_FALSE(exists(at("crash", "ca-prev.pem")));
    CU_ASSERT_EQUAL_FATAL(sign_fresh(ca, &chain), 0);
    CU_ASSERT_EQUAL(verify1(&chain, a), X509_V_OK);
    ward_der_chain_free(&chain);
    ward_ca_free(ca);

    /* activate stopped after moving the key: the restart completes it. */
    copy_file(at("crash", "ca.pem"), at("crash", "ca-prev.pem"), 0644);
    CU_ASSERT_EQUAL(rename(at("crash", "ca-next-key.pem"), at("crash", "ca-key.pem")), 0);
    CU_ASSERT_EQUAL_FATAL(open_state("crash", &ca, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(bundle_n(ca), 2);
    CU_ASSERT_FALSE(exists(at("crash", "ca-next.pem")));
    X509 *disk = read_pem_cert(at("crash", "ca.pem"));
    CU_ASSERT_EQUAL(X509_cmp(disk, b), 0);
    X509_free(disk);
    CU_ASSERT_EQUAL_FATAL(sign_fresh(ca, &chain), 0);
    CU_ASSERT_EQUAL(verify1(&chain, b), X509_V_OK);
    ward_der_chain_free(&chain);
    CU_ASSERT_EQUAL(ward_ca_rotate_finish(ca, err, sizeof(err)), 0);
    ward_ca_free(ca);

    /* prepare stopped after writing the new key: the orphan key goes. */
    copy_file(at("crash", "ca-key.pem"), at("crash", "ca-next-key.pem"), 0600);
    CU_ASSERT_EQUAL_FATAL(open_state("crash", &ca, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(bundle_n(ca), 1);
    CU_ASSERT_FALSE(exists(at("crash", "ca-next-key.pem")));
    ward_ca_free(ca);
    X509_free(a);
    X509_free(b);
}

/* --- operator-provided CAs ------------------------------------------------------------------ */

static void write_pem(const char *path, X509 *const *certs, size_t n, EVP_PKEY *key, mode_t mode)
{
    unlink(path);
    BIO *b = BIO_new_file(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    for (size_t i = 0; i < n; i++)
        CU_ASSERT(PEM_write_bio_X509(b, certs[i]));
    if (key != NULL) CU_ASSERT(PEM_write_bio_PrivateKey(b, key, NULL, NULL, 0, NULL, NULL));
    BIO_free(b);
    CU_ASSERT_EQUAL(chmod(path, mode), 0);
}

static void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_nconf_nid(NULL, &ctx, nid, value);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ext);
    CU_ASSERT(X509_add_ext(x, ext, -1));
    X509_EXTENSION_free(ext);
}

/* An intermediate (or, with bc "critical,CA:FALSE", a non-CA) for key, issued by issuer/ikey. */
static X509 *make_cert(X509 *issuer, EVP_PKEY *ikey, EVP_PKEY *key, const char *cn,
                       int64_t not_after_from_now, const char *bc, const char *ku)
{
    X509 *x = X509_new();
    X509_NAME *name = X509_NAME_new();
    ASN1_TIME *nb = ASN1_TIME_set(NULL, time(NULL) - 3600);
    ASN1_TIME *na = ASN1_TIME_set(NULL, time(NULL) + not_after_from_now);
    BIGNUM *bn = BN_new();
    CU_ASSERT_FATAL(x && name && nb && na && bn);
    CU_ASSERT(
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const uint8_t *)cn, -1, -1, 0));
    BN_rand(bn, 64, BN_RAND_TOP_ONE, BN_RAND_BOTTOM_ANY);
    ASN1_INTEGER *serial = BN_to_ASN1_INTEGER(bn, NULL);
    CU_ASSERT(X509_set_version(x, X509_VERSION_3) && X509_set_serialNumber(x, serial) &&
              X509_set_subject_name(x, name) &&
              X509_set_issuer_name(x, X509_get_subject_name(issuer)) &&
              X509_set1_notBefore(x, nb) && X509_set1_notAfter(x, na) && X509_set_pubkey(x, key));
    add_ext(x, issuer, NID_basic_constraints, bc);
    add_ext(x, issuer, NID_key_usage, ku);
    add_ext(x, issuer, NID_subject_key_identifier, "hash");
    add_ext(x, issuer, NID_authority_key_identifier, "keyid:always");
    CU_ASSERT(X509_sign(x, ikey, EVP_sha256()) > 0);
    ASN1_INTEGER_free(serial);
    BN_free(bn);
    ASN1_TIME_free(nb);
    ASN1_TIME_free(na);
    X509_NAME_free(name);
    return x;
}

static int open_op(const char *cert, const char *key, ward_ca_t **ca, char *err, size_t errlen)
{
    err[0] = '\0';
    int rc = ward_ca_open(NULL, cert, key, TD, ca, err, errlen);
    if (rc != 0) {
        CU_ASSERT(strlen(err) > 0);
        CU_ASSERT_PTR_NULL(*ca);
    }
    return rc;
}

static void test_operator_root(void)
{
    ward_ca_t *ca = NULL;
    ward_der_chain_t chain = {0};
    char err[512];
    X509 *root = read_pem_cert(cert_path("ca.pem"));
    CU_ASSERT_PTR_NOT_NULL_FATAL(root);

    CU_ASSERT_EQUAL_FATAL(
        open_op(cert_path("ca.pem"), cert_path("ca-key.pem"), &ca, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(bundle_n(ca), 1);
    X509 *b = bundle_cert(ca, 0);
    CU_ASSERT_EQUAL(X509_cmp(b, root), 0);
    X509_free(b);
    CU_ASSERT_EQUAL_FATAL(sign_fresh(ca, &chain), 0);
    CU_ASSERT_EQUAL(chain.n, 1);
    CU_ASSERT_EQUAL(verify1(&chain, root), X509_V_OK);
    ward_der_chain_free(&chain);
    uint64_t gen = ward_ca_bundle_generation(ca);
    CU_ASSERT_EQUAL(ward_ca_rotate_prepare(ca, err, sizeof(err)), WARD_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "operator-provided"));
    CU_ASSERT_EQUAL(ward_ca_rotate_activate(ca, err, sizeof(err)), WARD_EINVAL);
    CU_ASSERT_EQUAL(ward_ca_rotate_finish(ca, err, sizeof(err)), WARD_EINVAL);
    CU_ASSERT_EQUAL(ward_ca_bundle_generation(ca), gen);
    ward_ca_free(ca);
    ca = NULL;

    /* Refusals: a leaf as CA, a key of another CA, a key others can read. */
    CU_ASSERT_EQUAL(
        open_op(cert_path("client.pem"), cert_path("client-key.pem"), &ca, err, sizeof(err)),
        WARD_ECERT);
    CU_ASSERT_EQUAL(
        open_op(cert_path("ca.pem"), cert_path("other-ca-key.pem"), &ca, err, sizeof(err)),
        WARD_EKEYMISMATCH);
    copy_file(cert_path("ca-key.pem"), at("ca-key-0604.pem", NULL), 0604);
    CU_ASSERT_EQUAL(
        open_op(cert_path("ca.pem"), at("ca-key-0604.pem", NULL), &ca, err, sizeof(err)),
        WARD_EKEY);
    CU_ASSERT_EQUAL(
        open_op(cert_path("missing.pem"), cert_path("ca-key.pem"), &ca, err, sizeof(err)),
        WARD_ECERT);
    X509_free(root);
}

static void test_operator_intermediate(void)
{
    ward_ca_t *ca = NULL;
    ward_der_chain_t chain = {0};
    char err[512];
    X509 *root = read_pem_cert(cert_path("ca.pem"));
    EVP_PKEY *root_key = read_pem_key(cert_path("ca-key.pem"));
    EVP_PKEY *other_key = read_pem_key(cert_path("other-ca-key.pem"));
    EVP_PKEY *ikey = ec_key(NID_X9_62_prime256v1);
    CU_ASSERT_FATAL(root && root_key && other_key && ikey);
    const char *icert = at("int.pem", NULL), *ikey_file = at("int-key.pem", NULL);
    write_pem(ikey_file, NULL, 0, ikey, 0600);

    X509 *inter = make_cert(root, root_key, ikey, "ward test intermediate", 86400 * 30,
                            "critical,CA:TRUE,pathlen:0", "critical,keyCertSign,cRLSign");
    X509 *both[] = {inter, root};
    write_pem(icert, both, 2, NULL, 0644);
    CU_ASSERT_EQUAL_FATAL(open_op(icert, ikey_file, &ca, err, sizeof(err)), 0);
    /* Workloads trust the root; SVIDs come with the intermediate. */
    CU_ASSERT_EQUAL(bundle_n(ca), 1);
    X509 *b = bundle_cert(ca, 0);
    CU_ASSERT_EQUAL(X509_cmp(b, root), 0);
    X509_free(b);
    CU_ASSERT_EQUAL_FATAL(sign_fresh(ca, &chain), 0);
    CU_ASSERT_EQUAL_FATAL(chain.n, 2);
    X509 *presented = parse(chain.der[1], chain.len[1]);
    CU_ASSERT_EQUAL(X509_cmp(presented, inter), 0);
    X509_free(presented);
    CU_ASSERT_EQUAL(verify1(&chain, root), X509_V_OK);
    X509 *leaf = parse(chain.der[0], chain.len[0]);
    CU_ASSERT_EQUAL(
        ASN1_OCTET_STRING_cmp(X509_get0_authority_key_id(leaf), X509_get0_subject_key_id(inter)),
        0);
    X509_free(leaf);
    ward_der_chain_t bare = {chain.der, chain.len, 1}; /* the leaf alone does not verify */
    CU_ASSERT_NOT_EQUAL(verify1(&bare, root), X509_V_OK);
    ward_der_chain_free(&chain);
    /* mint presents the intermediate too. */
    uint8_t *pk = NULL;
    size_t pk_len = 0;
    CU_ASSERT_EQUAL(ward_ca_mint(ca, ORDERS, 600, &chain, &pk, &pk_len, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(chain.n, 2);
    CU_ASSERT_EQUAL(verify1(&chain, root), X509_V_OK);
    ward_der_chain_free(&chain);
    ward_free(pk);
    ward_ca_free(ca);
    ca = NULL;

    /* The intermediate's own notAfter caps every SVID. */
    X509 *short_int = make_cert(root, root_key, ikey, "ward short intermediate", 1800,
                                "critical,CA:TRUE", "critical,keyCertSign");
    X509 *short_both[] = {short_int, root};
    write_pem(icert, short_both, 2, NULL, 0644);
    CU_ASSERT_EQUAL_FATAL(open_op(icert, ikey_file, &ca, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL_FATAL(sign_fresh(ca, &chain), 0);
    leaf = parse(chain.der[0], chain.len[0]);
    CU_ASSERT_EQUAL(unix_time(X509_get0_notAfter(leaf)), unix_time(X509_get0_notAfter(short_int)));
    X509_free(leaf);
    ward_der_chain_free(&chain);
    ward_ca_free(ca);
    ca = NULL;
    X509_free(short_int);

    /* Without the root at the end. */
    write_pem(icert, &inter, 1, NULL, 0644);
    CU_ASSERT_EQUAL(open_op(icert, ikey_file, &ca, err, sizeof(err)), WARD_ECERT);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "self-signed root"));
    /* Root first, then the intermediate (with the root's key). */
    X509 *reversed[] = {root, inter};
    write_pem(icert, reversed, 2, NULL, 0644);
    CU_ASSERT_EQUAL(open_op(icert, cert_path("ca-key.pem"), &ca, err, sizeof(err)), WARD_ECERT);
    /* The intermediate with the wrong key. */
    write_pem(icert, both, 2, NULL, 0644);
    CU_ASSERT_EQUAL(open_op(icert, cert_path("ca-key.pem"), &ca, err, sizeof(err)),
                    WARD_EKEYMISMATCH);
    /* Expired; without keyCertSign; not a CA; signed by another key than the root's. */
    struct {
        int64_t life;
        const char *bc, *ku;
        EVP_PKEY *signer;
        const char *why;
    } bad[] = {
        {-60, "critical,CA:TRUE", "critical,keyCertSign", root_key, "expired"},
        {86400, "critical,CA:TRUE", "critical,digitalSignature", root_key, "keyCertSign"},
        {86400, "critical,CA:FALSE", "critical,keyCertSign", root_key, "not a CA"},
        {86400, "critical,CA:TRUE", "critical,keyCertSign", other_key, "does not verify"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        X509 *x = make_cert(root, bad[i].signer, ikey, "ward bad intermediate", bad[i].life,
                            bad[i].bc, bad[i].ku);
        X509 *pair[] = {x, root};
        write_pem(icert, pair, 2, NULL, 0644);
        CU_ASSERT_EQUAL(open_op(icert, ikey_file, &ca, err, sizeof(err)), WARD_ECERT);
        if (strstr(err, bad[i].why) == NULL) fprintf(stderr, "case %zu: %s\n", i, err);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, bad[i].why));
        X509_free(x);
    }

    X509_free(inter);
    X509_free(root);
    EVP_PKEY_free(root_key);
    EVP_PKEY_free(other_key);
    EVP_PKEY_free(ikey);
}

/* --- suite ---------------------------------------------------------------------------------- */

static int rm_tree(const char *dir)
{
    static const char *names[] = {"ca.pem",      "ca-key.pem", "ca-next.pem",    "ca-next-key.pem",
                                  "ca-prev.pem", "ca.pem.tmp", "ca-key.pem.tmp", NULL};
    char path[700];
    for (int i = 0; names[i] != NULL; i++) {
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        unlink(path);
    }
    return rmdir(dir);
}

static int suite_init(void)
{
    const char *d = getenv("WARD_CERT_DIR");
    if (d == NULL) {
        fprintf(stderr, "WARD_CERT_DIR is not set (run through ctest)\n");
        return 1;
    }
    snprintf(certdir, sizeof(certdir), "%s", d);
    snprintf(base, sizeof(base), "/tmp/ward-ca-XXXXXX");
    return mkdtemp(base) == NULL;
}

static int suite_clean(void)
{
    static const char *dirs[] = {"gen", "perm", "sign", "rot", "crash", "args"};
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++)
        rm_tree(at(dirs[i], NULL));
    unlink(at("ca-key-0604.pem", NULL));
    unlink(at("int.pem", NULL));
    unlink(at("int-key.pem", NULL));
    rmdir(base);
    return 0;
}

void ward_unit_register(void)
{
    CU_pSuite s = CU_add_suite("ca", suite_init, suite_clean);
    CU_add_test(s, "generate_reopen", test_generate_reopen);
    CU_add_test(s, "key_permissions", test_key_permissions);
    CU_add_test(s, "open_args", test_open_args);
    CU_add_test(s, "sign_profile", test_sign_profile);
    CU_add_test(s, "sign_refusals", test_sign_refusals);
    CU_add_test(s, "mint", test_mint);
    CU_add_test(s, "rotation", test_rotation);
    CU_add_test(s, "rotation_recovery", test_rotation_recovery);
    CU_add_test(s, "operator_root", test_operator_root);
    CU_add_test(s, "operator_intermediate", test_operator_intermediate);
}
