/* ca.c — ward-agent's certificate authority (see ca.h): a root generated and persisted in the state
 * directory or an operator-provided CA, X509-SVID issuance from PKCS#10 CSRs, and root rotation.
 * With lib/tls.c the only code that calls BoringSSL; every public function clears its error queue.
 *
 * State directory (generated roots only; each file written atomically: temp file, fsync, rename,
 * fsync of the directory):
 *   ca.pem, ca-key.pem            the root that signs SVIDs now (0644 / 0600)
 *   ca-next.pem, ca-next-key.pem  after rotate_prepare: the new root, in the bundle, not signing
 *   ca-prev.pem                   after rotate_activate: the old root, kept in the bundle until
 *                                 rotate_finish (its key is gone: it signs nothing any more)
 * rotate_activate writes ca-prev.pem, then renames ca-next-key.pem over ca-key.pem, then
 * ca-next.pem over ca.pem; ward_ca_open() repairs a crash between any two of those steps (see
 * ward__recover).
 *
 * Not thread-safe: one thread (the agent's loop) drives a ward_ca_t at a time. */
#include "fail.h"
#include "ca.h"

#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/spiffe.h"
#include "ward/tls.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define WARD_CA_BACKDATE_S 300           /* notBefore = now - 5 min, for clock skew */
#define WARD_CA_ROOT_DAYS  3650          /* lifetime of a generated root */
#define WARD_CA_MAX_CSR    (64 * 1024)   /* larger CSRs are refused unparsed */
#define WARD_CA_MAX_FILE   (1024 * 1024) /* largest PEM file read */
#define WARD_CA_MAX_CHAIN  8             /* certificates in an operator's --ca-cert file */
#define WARD_CA_RSA_MIN    2048
#define WARD_CA_RSA_MAX    8192 /* bounds the cost of verifying a hostile CSR */

#define WARD_CA_CERT      "ca.pem"
#define WARD_CA_KEY       "ca-key.pem"
#define WARD_CA_NEXT_CERT "ca-next.pem"
#define WARD_CA_NEXT_KEY  "ca-next-key.pem"
#define WARD_CA_PREV_CERT "ca-prev.pem"

struct ward_ca {
    char *td;
    char *state_dir; /* generated roots: the directory (for messages); NULL for an operator CA */
    int dir_fd;      /* generated roots: the open state directory; else -1 */
    X509 *cert;      /* signs SVIDs */
    EVP_PKEY *key;
    int64_t not_after; /* earliest notAfter from cert up to its root: no SVID outlives it */
    /* Presented after the leaf: the operator's CA certificate unless it is the root itself, then
     * its intermediates; never the root. Empty for generated roots. */
    uint8_t *inter_der[WARD_CA_MAX_CHAIN];
    size_t inter_len[WARD_CA_MAX_CHAIN];
    size_t ninter;
    X509 *op_root; /* operator CA: the root ending its chain (the bundle) */
    /* Rotation of generated roots: at most one of next/prev is set. */
    X509 *next;
    EVP_PKEY *next_key;
    X509 *prev;
    uint8_t *bundle_der[2];
    size_t bundle_len[2];
    size_t nbundle;
    uint64_t generation;
};

/* --- keys ----------------------------------------------------------------------------------- */

static EVP_PKEY *ward__p256_new(void)
{
    EVP_PKEY *key = NULL;
    EVP_PKEY_CTX *ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_EC, NULL);
    if (ctx == NULL || EVP_PKEY_keygen_init(ctx) != 1 ||
        EVP_PKEY_CTX_set_ec_paramgen_curve_nid(ctx, NID_X9_62_prime256v1) != 1 ||
        EVP_PKEY_keygen(ctx, &key) != 1) {
        EVP_PKEY_free(key);
        key = NULL;
    }
    EVP_PKEY_CTX_free(ctx);
    return key;
}

/* The keys ward accepts, in CSRs and as an operator CA: EC P-256/P-384, RSA 2048..8192 bits. */
static int ward__key_policy(const EVP_PKEY *key, const char **why)
{
    switch (EVP_PKEY_id(key)) {
    case EVP_PKEY_EC: {
        const EC_KEY *ec = EVP_PKEY_get0_EC_KEY(key);
        int nid = ec != NULL ? EC_GROUP_get_curve_name(EC_KEY_get0_group(ec)) : NID_undef;
        if (nid == NID_X9_62_prime256v1 || nid == NID_secp384r1) return 0;
        *why = "an EC key on a curve other than P-256 or P-384";
        return WARD_EKEY;
    }
    case EVP_PKEY_RSA: {
        int bits = EVP_PKEY_bits(key);
        if (bits >= WARD_CA_RSA_MIN && bits <= WARD_CA_RSA_MAX) return 0;
        *why = bits < WARD_CA_RSA_MIN ? "an RSA key shorter than 2048 bits"
                                      : "an RSA key longer than 8192 bits";
        return WARD_EKEY;
    }
    default:
        *why = "a key that is neither EC (P-256/P-384) nor RSA";
        return WARD_EKEY;
    }
}

/* --- files ---------------------------------------------------------------------------------- */

/* Reads a whole regular file (at most WARD_CA_MAX_FILE bytes) into heap memory (ward_free; the
 * caller cleanses key material). dir_fd/name as for openat(); perm_mask: mode bits that must be
 * clear (a key readable by others is refused). shown: the path for messages. */
static int ward__read_file(int dir_fd, const char *name, int nofollow, mode_t perm_mask,
                           const char *shown, uint8_t **data, size_t *len, char *err, size_t errlen)
{
    struct stat st;
    uint8_t *buf = NULL;
    size_t n = 0;
    int rc = 0;
    int fd = openat(dir_fd, name, O_RDONLY | O_CLOEXEC | (nofollow ? O_NOFOLLOW : 0));

    if (fd < 0) {
        rc = -errno;
        return ward_ctl_fail(err, errlen, rc, "%s: cannot open: %s", shown, strerror(-rc));
    }
    if (fstat(fd, &st) != 0) {
        rc = ward_ctl_fail(err, errlen, -errno, "%s: cannot stat: %s", shown, strerror(errno));
        goto close_fd;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = ward_ctl_fail(err, errlen, WARD_EINVAL, "%s: not a regular file", shown);
        goto close_fd;
    }
    if (st.st_mode & perm_mask) {
        rc = ward_ctl_fail(err, errlen, WARD_EKEY,
                           "%s: private key file has mode %04o; refusing a key that %s can read "
                           "(chmod %04o)",
                           shown, (unsigned)(st.st_mode & 07777),
                           (perm_mask & 070) ? "group or others" : "others",
                           (unsigned)(st.st_mode & 07777 & ~perm_mask));
        goto close_fd;
    }
    if (st.st_size > WARD_CA_MAX_FILE) {
        rc = ward_ctl_fail(err, errlen, WARD_ETOOLONG, "%s: larger than %d bytes", shown,
                           WARD_CA_MAX_FILE);
        goto close_fd;
    }
    buf = ward_malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        rc = ward_ctl_fail(err, errlen, WARD_ENOMEM, "out of memory reading %s", shown);
        goto close_fd;
    }
    while (n < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + n, (size_t)st.st_size - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = ward_ctl_fail(err, errlen, -errno, "%s: read failed: %s", shown, strerror(errno));
            goto free_buf;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    *data = buf;
    *len = n;
    buf = NULL;
free_buf:
    if (buf != NULL) {
        OPENSSL_cleanse(buf, (size_t)st.st_size);
        ward_free(buf);
    }
close_fd:
    close(fd);
    return rc;
}

static int ward__parse_key(const uint8_t *pem, size_t len, EVP_PKEY **out)
{
    BIO *bio = BIO_new_mem_buf(pem, (long)len);
    *out = bio != NULL ? PEM_read_bio_PrivateKey(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    ERR_clear_error();
    return *out != NULL ? 0 : WARD_EKEY;
}

static int ward__read_key(int dir_fd, const char *name, int nofollow, mode_t perm_mask,
                          const char *shown, EVP_PKEY **out, char *err, size_t errlen)
{
    uint8_t *pem = NULL;
    size_t len = 0;
    int rc = ward__read_file(dir_fd, name, nofollow, perm_mask, shown, &pem, &len, err, errlen);
    if (rc < 0) return WARD_EKEY; /* err says why */
    rc = ward__parse_key(pem, len, out);
    OPENSSL_cleanse(pem, len);
    ward_free(pem);
    if (rc < 0) return ward_ctl_fail(err, errlen, rc, "%s: no readable PEM private key", shown);
    return 0;
}

static int ward__read_cert(int dir_fd, const char *name, const char *shown, X509 **out, char *err,
                           size_t errlen)
{
    uint8_t *pem = NULL;
    size_t len = 0;
    int rc = ward__read_file(dir_fd, name, 1, 0, shown, &pem, &len, err, errlen);
    if (rc < 0) return WARD_ECERT; /* err says why */
    BIO *bio = BIO_new_mem_buf(pem, (long)len);
    *out = bio != NULL ? PEM_read_bio_X509(bio, NULL, NULL, NULL) : NULL;
    BIO_free(bio);
    ward_free(pem);
    if (*out == NULL)
        return ward_ctl_fail(err, errlen, WARD_ECERT, "%s: no readable certificate", shown);
    return 0;
}

/* Writes name in the state directory atomically with the given mode. */
static int ward__write_file(ward_ca_t *ca, const char *name, const uint8_t *data, size_t len,
                            mode_t mode, char *err, size_t errlen)
{
    char tmp[64];
    size_t off = 0;
    int rc = 0;

    snprintf(tmp, sizeof(tmp), "%s.tmp", name);
    if (unlinkat(ca->dir_fd, tmp, 0) != 0 && errno != ENOENT) {
        return ward_ctl_fail(err, errlen, -errno, "%s/%s: cannot remove: %s", ca->state_dir, tmp,
                             strerror(errno));
    }
    int fd = openat(ca->dir_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) {
        return ward_ctl_fail(err, errlen, -errno, "%s/%s: cannot create: %s", ca->state_dir, tmp,
                             strerror(errno));
    }
    if (fchmod(fd, mode) != 0) goto write_failed;
    while (off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) goto write_failed;
        off += (size_t)w;
    }
    if (fsync(fd) != 0) goto write_failed;
    if (close(fd) != 0) {
        fd = -1;
        goto write_failed;
    }
    fd = -1;
    if (renameat(ca->dir_fd, tmp, ca->dir_fd, name) != 0) goto write_failed;
    if (fsync(ca->dir_fd) != 0) goto write_failed;
    return 0;

write_failed:
    rc = -errno;
    if (fd >= 0) close(fd);
    unlinkat(ca->dir_fd, tmp, 0);
    return ward_ctl_fail(err, errlen, rc, "%s/%s: cannot write: %s", ca->state_dir, name,
                         strerror(-rc));
}

static int ward__write_pem(ward_ca_t *ca, const char *name, X509 *cert, EVP_PKEY *key, char *err,
                           size_t errlen)
{
    const uint8_t *data = NULL;
    size_t len = 0;
    int rc;
    BIO *bio = BIO_new(BIO_s_mem());

    if (bio == NULL ||
        !(key != NULL ? PEM_write_bio_PrivateKey(bio, key, NULL, NULL, 0, NULL, NULL)
                      : PEM_write_bio_X509(bio, cert)) ||
        !BIO_mem_contents(bio, &data, &len)) {
        BIO_free(bio);
        return ward_ctl_fail(err, errlen, WARD_ENOMEM, "out of memory encoding %s", name);
    }
    rc = ward__write_file(ca, name, data, len, key != NULL ? 0600 : 0644, err, errlen);
    if (key != NULL) OPENSSL_cleanse((void *)data, len);
    BIO_free(bio);
    return rc;
}

static int ward__exists(int dir_fd, const char *name)
{
    struct stat st;
    return fstatat(dir_fd, name, &st, AT_SYMLINK_NOFOLLOW) == 0;
}

static int ward__unlink(ward_ca_t *ca, const char *name, char *err, size_t errlen)
{
    if (unlinkat(ca->dir_fd, name, 0) != 0 && errno != ENOENT) {
        return ward_ctl_fail(err, errlen, -errno, "%s/%s: cannot remove: %s", ca->state_dir, name,
                             strerror(errno));
    }
    if (fsync(ca->dir_fd) != 0) {
        return ward_ctl_fail(err, errlen, -errno, "%s: fsync failed: %s", ca->state_dir,
                             strerror(errno));
    }
    return 0;
}

/* --- certificate building ------------------------------------------------------------------- */

static int ward__set_serial(X509 *x)
{
    uint8_t b[16];
    BIGNUM *bn = NULL;
    ASN1_INTEGER *ai = NULL;
    int ok = 0;
    do {
        RAND_bytes(b, sizeof(b));
        b[0] &= 0x7f; /* positive, and DER keeps it within 16 bytes */
        BN_free(bn);
        bn = BN_bin2bn(b, sizeof(b), NULL);
    } while (bn != NULL && BN_is_zero(bn));
    if (bn != NULL && (ai = BN_to_ASN1_INTEGER(bn, NULL)) != NULL)
        ok = X509_set_serialNumber(x, ai);
    ASN1_INTEGER_free(ai);
    BN_free(bn);
    return ok;
}

static int ward__set_validity(X509 *x, int64_t not_before, int64_t not_after)
{
    ASN1_TIME *nb = ASN1_TIME_set(NULL, (time_t)not_before);
    ASN1_TIME *na = ASN1_TIME_set(NULL, (time_t)not_after);
    int ok = nb != NULL && na != NULL && X509_set1_notBefore(x, nb) && X509_set1_notAfter(x, na);
    ASN1_TIME_free(nb);
    ASN1_TIME_free(na);
    return ok;
}

static int ward__add_bc(X509 *x, int is_ca)
{
    BASIC_CONSTRAINTS *bc = BASIC_CONSTRAINTS_new();
    if (bc == NULL) return 0;
    bc->ca = is_ca ? 0xff : 0;
    int ok = X509_add1_ext_i2d(x, NID_basic_constraints, bc, 1, X509V3_ADD_DEFAULT) == 1;
    BASIC_CONSTRAINTS_free(bc);
    return ok;
}

/* bits: RFC 5280 KeyUsage bit numbers (0 digitalSignature, 5 keyCertSign, 6 cRLSign). */
static int ward__add_ku(X509 *x, const int *bits, size_t n)
{
    ASN1_BIT_STRING *ku = ASN1_BIT_STRING_new();
    int ok = ku != NULL;
    for (size_t i = 0; ok && i < n; i++)
        ok = ASN1_BIT_STRING_set_bit(ku, bits[i], 1);
    ok = ok && X509_add1_ext_i2d(x, NID_key_usage, ku, 1, X509V3_ADD_DEFAULT) == 1;
    ASN1_BIT_STRING_free(ku);
    return ok;
}

static int ward__add_eku(X509 *x)
{
    EXTENDED_KEY_USAGE *eku = sk_ASN1_OBJECT_new_null();
    int ok = eku != NULL && sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_server_auth)) &&
             sk_ASN1_OBJECT_push(eku, OBJ_nid2obj(NID_client_auth)) &&
             X509_add1_ext_i2d(x, NID_ext_key_usage, eku, 0, X509V3_ADD_DEFAULT) == 1;
    sk_ASN1_OBJECT_free(eku); /* the objects are static */
    return ok;
}

/* RFC 5280 4.2.1.2 method 1: SHA-1 of the subjectPublicKey BIT STRING. */
static ASN1_OCTET_STRING *ward__key_id(X509 *x)
{
    const ASN1_BIT_STRING *pk = X509_get0_pubkey_bitstr(x);
    uint8_t md[SHA_DIGEST_LENGTH];
    ASN1_OCTET_STRING *id = NULL;
    if (pk == NULL) return NULL;
    SHA1(ASN1_STRING_get0_data(pk), (size_t)ASN1_STRING_length(pk), md);
    id = ASN1_OCTET_STRING_new();
    if (id != NULL && !ASN1_OCTET_STRING_set(id, md, sizeof(md))) {
        ASN1_OCTET_STRING_free(id);
        id = NULL;
    }
    return id;
}

static int ward__add_ski(X509 *x)
{
    ASN1_OCTET_STRING *id = ward__key_id(x);
    int ok = id != NULL &&
             X509_add1_ext_i2d(x, NID_subject_key_identifier, id, 0, X509V3_ADD_DEFAULT) == 1;
    ASN1_OCTET_STRING_free(id);
    return ok;
}

static int ward__add_aki(X509 *x, X509 *issuer)
{
    AUTHORITY_KEYID *akid = AUTHORITY_KEYID_new();
    const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(issuer);
    int ok = 0;
    if (akid == NULL) return 0;
    akid->keyid = ski != NULL ? ASN1_OCTET_STRING_dup(ski) : ward__key_id(issuer);
    ok = akid->keyid != NULL &&
         X509_add1_ext_i2d(x, NID_authority_key_identifier, akid, 0, X509V3_ADD_DEFAULT) == 1;
    AUTHORITY_KEYID_free(akid);
    return ok;
}

static int ward__add_uri_san(X509 *x, const char *uri, int critical)
{
    GENERAL_NAMES *names = GENERAL_NAMES_new();
    GENERAL_NAME *gn = GENERAL_NAME_new();
    ASN1_IA5STRING *ia5 = ASN1_IA5STRING_new();
    int ok = 0;
    if (names == NULL || gn == NULL || ia5 == NULL || !ASN1_STRING_set(ia5, uri, (int)strlen(uri)))
        goto out;
    GENERAL_NAME_set0_value(gn, GEN_URI, ia5);
    ia5 = NULL;
    if (!sk_GENERAL_NAME_push(names, gn)) goto out;
    gn = NULL;
    ok = X509_add1_ext_i2d(x, NID_subject_alt_name, names, critical, X509V3_ADD_DEFAULT) == 1;
out:
    ASN1_IA5STRING_free(ia5);
    GENERAL_NAME_free(gn);
    GENERAL_NAMES_free(names);
    return ok;
}

static int ward__name_add(X509_NAME *name, const char *field, const char *value)
{
    return X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8, (const uint8_t *)value, -1, -1,
                                      0);
}

/* A self-signed P-256 root for trust_domain: CA, keyCertSign+cRLSign, the trust domain as a URI
 * SAN (SPIFFE allows it on signing certificates; ward_ca_open checks it), a unique subject so old
 * and new roots never share a name during a rotation. */
static int ward__root_new(const char *td, X509 **cert_out, EVP_PKEY **key_out)
{
    static const int ku_bits[] = {5, 6};
    int64_t now = (int64_t)time(NULL);
    char cn[64], uri[sizeof("spiffe://") + WARD_SPIFFE_TD_MAX];
    uint8_t rnd[8];
    X509_NAME *name = NULL;
    EVP_PKEY *key = ward__p256_new();
    X509 *x = X509_new();
    int ok = 0;

    if (key == NULL || x == NULL) goto out;
    RAND_bytes(rnd, sizeof(rnd));
    snprintf(cn, sizeof(cn), "ward root %02x%02x%02x%02x%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2],
             rnd[3], rnd[4], rnd[5], rnd[6], rnd[7]);
    snprintf(uri, sizeof(uri), "spiffe://%s", td);
    name = X509_NAME_new();
    if (name == NULL || !ward__name_add(name, "O", "ward") || !ward__name_add(name, "CN", cn))
        goto out;
    ok =
        X509_set_version(x, X509_VERSION_3) && ward__set_serial(x) &&
        X509_set_subject_name(x, name) && X509_set_issuer_name(x, name) &&
        ward__set_validity(x, now - WARD_CA_BACKDATE_S, now + (int64_t)WARD_CA_ROOT_DAYS * 86400) &&
        X509_set_pubkey(x, key) && ward__add_bc(x, 1) &&
        ward__add_ku(x, ku_bits, sizeof(ku_bits) / sizeof(ku_bits[0])) && ward__add_ski(x) &&
        ward__add_uri_san(x, uri, 0) && X509_sign(x, key, EVP_sha256()) > 0;
out:
    X509_NAME_free(name);
    if (!ok) {
        X509_free(x);
        EVP_PKEY_free(key);
        ERR_clear_error();
        return WARD_ENOMEM;
    }
    *cert_out = x;
    *key_out = key;
    return 0;
}

static int ward__der(X509 *x, uint8_t **der, size_t *len)
{
    int n = i2d_X509(x, NULL);
    if (n <= 0) return WARD_ECERT;
    uint8_t *buf = ward_malloc((size_t)n), *p = buf;
    if (buf == NULL) return WARD_ENOMEM;
    if (i2d_X509(x, &p) != n) {
        ward_free(buf);
        return WARD_ECERT;
    }
    *der = buf;
    *len = (size_t)n;
    return 0;
}

/* --- bundle --------------------------------------------------------------------------------- */

/* Rebuilds the bundle (old root first during a rotation) and its generation: the first 8 bytes of
 * a SHA-256 over the roots, so it changes exactly when the content does and a restarted agent
 * reports the same number for the same bundle. The old bundle survives a failure. */
static int ward__bundle_rebuild(ward_ca_t *ca)
{
    X509 *roots[2];
    size_t n = 0;
    uint8_t *der[2] = {NULL, NULL};
    size_t len[2] = {0, 0};
    int rc = 0;

    if (ca->op_root != NULL) {
        roots[n++] = ca->op_root;
    } else {
        if (ca->prev != NULL) roots[n++] = ca->prev;
        roots[n++] = ca->cert;
        if (ca->next != NULL) roots[n++] = ca->next;
    }
    for (size_t i = 0; i < n && rc == 0; i++)
        rc = ward__der(roots[i], &der[i], &len[i]);
    if (rc < 0) {
        ward_free(der[0]);
        ward_free(der[1]);
        return rc;
    }
    SHA256_CTX sha;
    uint8_t md[SHA256_DIGEST_LENGTH];
    SHA256_Init(&sha);
    for (size_t i = 0; i < n; i++) {
        uint8_t l[8];
        for (int b = 0; b < 8; b++)
            l[b] = (uint8_t)((uint64_t)len[i] >> (56 - 8 * b));
        SHA256_Update(&sha, l, sizeof(l));
        SHA256_Update(&sha, der[i], len[i]);
    }
    SHA256_Final(md, &sha);
    uint64_t gen = 0;
    for (int b = 0; b < 8; b++)
        gen = gen << 8 | md[b];
    for (size_t i = 0; i < ca->nbundle; i++)
        ward_free(ca->bundle_der[i]);
    for (size_t i = 0; i < 2; i++) {
        ca->bundle_der[i] = der[i];
        ca->bundle_len[i] = len[i];
    }
    ca->nbundle = n;
    ca->generation = gen != 0 ? gen : 1;
    return 0;
}

size_t ward_ca_bundle(const ward_ca_t *ca, const uint8_t *const **der, const size_t **len)
{
    *der = (const uint8_t *const *)ca->bundle_der;
    *len = ca->bundle_len;
    return ca->nbundle;
}

uint64_t ward_ca_bundle_generation(const ward_ca_t *ca)
{
    return ca->generation;
}

const char *ward_ca_trust_domain(const ward_ca_t *ca)
{
    return ca->td;
}

/* --- opening -------------------------------------------------------------------------------- */

/* Checks that a certificate can act as this CA (or part of its chain): a CA with keyCertSign,
 * extensions that parse, not yet expired. what/file name it in the message. */
static int ward__check_ca_cert(X509 *x, int64_t now, const char *what, const char *file, char *err,
                               size_t errlen)
{
    uint32_t flags = X509_get_extension_flags(x);
    if (flags & EXFLAG_INVALID)
        return ward_ctl_fail(err, errlen, WARD_ECERT, "%s: %s has extensions that do not parse",
                             file, what);
    if (!(flags & EXFLAG_CA))
        return ward_ctl_fail(err, errlen, WARD_ECERT,
                             "%s: %s is not a CA certificate (basicConstraints cA is not true)",
                             file, what);
    if (!(flags & EXFLAG_KUSAGE) || !(X509_get_key_usage(x) & KU_KEY_CERT_SIGN))
        return ward_ctl_fail(err, errlen, WARD_ECERT, "%s: %s has no keyUsage allowing keyCertSign",
                             file, what);
    if (ward_asn1_time_to_unix(X509_get0_notAfter(x)) <= now)
        return ward_ctl_fail(err, errlen, WARD_ECERT, "%s: %s has expired", file, what);
    return 0;
}

static int ward__td_of_root(X509 *root, const char *td)
{
    GENERAL_NAMES *names = X509_get_ext_d2i(root, NID_subject_alt_name, NULL, NULL);
    int ok = 1; /* a root without the SAN says nothing about its trust domain */
    char want[sizeof("spiffe://") + WARD_SPIFFE_TD_MAX];
    snprintf(want, sizeof(want), "spiffe://%s", td);
    for (size_t i = 0; names != NULL && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        if (gn->type != GEN_URI) continue;
        const ASN1_STRING *s = gn->d.uniformResourceIdentifier;
        ok = (size_t)ASN1_STRING_length(s) == strlen(want) &&
             memcmp(ASN1_STRING_get0_data(s), want, strlen(want)) == 0;
    }
    GENERAL_NAMES_free(names);
    return ok;
}

/* Loads a root (cert + key) from the state directory and checks it. */
static int ward__load_root(ward_ca_t *ca, const char *cert_name, const char *key_name, X509 **cert,
                           EVP_PKEY **key, char *err, size_t errlen)
{
    char shown[1024];
    const char *why = NULL;
    int rc;

    snprintf(shown, sizeof(shown), "%s/%s", ca->state_dir, cert_name);
    rc = ward__read_cert(ca->dir_fd, cert_name, shown, cert, err, errlen);
    if (rc < 0) return rc;
    rc = ward__check_ca_cert(*cert, (int64_t)time(NULL), "the root", shown, err, errlen);
    if (rc < 0) return rc;
    if (!ward__td_of_root(*cert, ca->td))
        return ward_ctl_fail(err, errlen, WARD_ECERT,
                             "%s: this root belongs to another trust domain than %s; use another "
                             "--state-dir",
                             shown, ca->td);
    if (key_name == NULL) return 0;
    snprintf(shown, sizeof(shown), "%s/%s", ca->state_dir, key_name);
    rc = ward__read_key(ca->dir_fd, key_name, 1, 077, shown, key, err, errlen);
    if (rc < 0) return rc;
    if (ward__key_policy(*key, &why) < 0)
        return ward_ctl_fail(err, errlen, WARD_EKEY, "%s: %s", shown, why);
    if (!X509_check_private_key(*cert, *key))
        return ward_ctl_fail(err, errlen, WARD_EKEYMISMATCH, "%s does not match %s/%s", shown,
                             ca->state_dir, cert_name);
    return 0;
}

/* Generates and persists the first root (key first: a crash leaves no certificate without key). */
static int ward__generate(ward_ca_t *ca, char *err, size_t errlen)
{
    int rc = ward__root_new(ca->td, &ca->cert, &ca->key);
    if (rc < 0) return ward_ctl_fail(err, errlen, rc, "could not generate the root CA");
    rc = ward__write_pem(ca, WARD_CA_KEY, NULL, ca->key, err, errlen);
    if (rc == 0) rc = ward__write_pem(ca, WARD_CA_CERT, ca->cert, NULL, err, errlen);
    if (rc == 0) rc = ward__unlink(ca, WARD_CA_NEXT_CERT, err, errlen);
    if (rc == 0) rc = ward__unlink(ca, WARD_CA_NEXT_KEY, err, errlen);
    if (rc == 0) rc = ward__unlink(ca, WARD_CA_PREV_CERT, err, errlen);
    return rc;
}

/* Repairs an interrupted rotation step, then loads the rotation state:
 *   ca-key.pem matches ca-next.pem  activate stopped after moving the key: finish the move
 *   ca-next.pem + ca-next-key.pem   prepared (a ca-prev.pem beside them is from an activate that
 *                                   stopped before moving the key: dropped, still prepared)
 *   ca-next-key.pem alone           prepare stopped before the certificate: dropped
 *   ca-prev.pem                     activated */
static int ward__recover(ward_ca_t *ca, char *err, size_t errlen)
{
    char shown[1024];
    int rc;

    if (ward__exists(ca->dir_fd, WARD_CA_NEXT_CERT)) {
        if (ward__exists(ca->dir_fd, WARD_CA_NEXT_KEY)) {
            rc = ward__load_root(ca, WARD_CA_NEXT_CERT, WARD_CA_NEXT_KEY, &ca->next, &ca->next_key,
                                 err, errlen);
            if (rc < 0) return rc;
            return ward__unlink(ca, WARD_CA_PREV_CERT, err, errlen);
        }
        snprintf(shown, sizeof(shown), "%s/%s", ca->state_dir, WARD_CA_NEXT_CERT);
        return ward_ctl_fail(err, errlen, WARD_EKEY, "%s has no key (%s/%s is missing)", shown,
                             ca->state_dir, WARD_CA_NEXT_KEY);
    }
    rc = ward__unlink(ca, WARD_CA_NEXT_KEY, err, errlen);
    if (rc < 0) return rc;
    if (ward__exists(ca->dir_fd, WARD_CA_PREV_CERT))
        return ward__load_root(ca, WARD_CA_PREV_CERT, NULL, &ca->prev, NULL, err, errlen);
    return 0;
}

static int ward__open_state(ward_ca_t *ca, const char *dir, char *err, size_t errlen)
{
    struct stat st;
    int rc;

    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        return ward_ctl_fail(err, errlen, -errno, "%s: cannot create the state directory: %s", dir,
                             strerror(errno));
    ca->dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (ca->dir_fd < 0)
        return ward_ctl_fail(err, errlen, -errno, "%s: cannot open the state directory: %s", dir,
                             strerror(errno));
    if (fstat(ca->dir_fd, &st) != 0)
        return ward_ctl_fail(err, errlen, -errno, "%s: cannot stat: %s", dir, strerror(errno));
    if (st.st_mode & 022)
        return ward_ctl_fail(err, errlen, WARD_EINVAL,
                             "%s: state directory is writable by group or others (mode %04o); "
                             "chmod 0700",
                             dir, (unsigned)(st.st_mode & 07777));

    if (!ward__exists(ca->dir_fd, WARD_CA_CERT)) {
        if (ward__exists(ca->dir_fd, WARD_CA_NEXT_CERT) ||
            ward__exists(ca->dir_fd, WARD_CA_PREV_CERT))
            return ward_ctl_fail(err, errlen, WARD_ECERT,
                                 "%s: %s is missing but rotation files are present; restore it or "
                                 "empty the directory",
                                 dir, WARD_CA_CERT);
        return ward__generate(ca, err, errlen);
    }
    if (!ward__exists(ca->dir_fd, WARD_CA_KEY))
        return ward_ctl_fail(err, errlen, WARD_EKEY, "%s/%s exists but %s is missing", dir,
                             WARD_CA_CERT, WARD_CA_KEY);
    rc = ward__load_root(ca, WARD_CA_CERT, WARD_CA_KEY, &ca->cert, &ca->key, err, errlen);
    if (rc == WARD_EKEYMISMATCH && ward__exists(ca->dir_fd, WARD_CA_NEXT_CERT) &&
        !ward__exists(ca->dir_fd, WARD_CA_NEXT_KEY)) {
        /* activate moved ca-next-key.pem over ca-key.pem, then stopped: move the cert too. */
        X509_free(ca->cert);
        EVP_PKEY_free(ca->key);
        ca->cert = NULL;
        ca->key = NULL;
        if (renameat(ca->dir_fd, WARD_CA_NEXT_CERT, ca->dir_fd, WARD_CA_CERT) != 0 ||
            fsync(ca->dir_fd) != 0)
            return ward_ctl_fail(err, errlen, -errno, "%s: cannot complete the rotation: %s", dir,
                                 strerror(errno));
        rc = ward__load_root(ca, WARD_CA_CERT, WARD_CA_KEY, &ca->cert, &ca->key, err, errlen);
    }
    if (rc < 0) return rc;
    return ward__recover(ca, err, errlen);
}

static int ward__open_operator(ward_ca_t *ca, const char *cert_file, const char *key_file,
                               char *err, size_t errlen)
{
    X509 *certs[WARD_CA_MAX_CHAIN] = {0};
    uint8_t **der = NULL;
    size_t *len = NULL;
    X509_STORE *store = NULL;
    X509_STORE_CTX *vctx = NULL;
    STACK_OF(X509) *untrusted = NULL;
    const char *why = NULL;
    int64_t now = (int64_t)time(NULL);
    int n, rc = 0;
    char what[32];

    n = ward_pem_read_certs(cert_file, &der, &len);
    if (n < 0)
        return ward_ctl_fail(err, errlen, WARD_ECERT, "%s: no readable PEM certificate (%s)",
                             cert_file, ward_strerror(n));
    if (n > WARD_CA_MAX_CHAIN) {
        rc = ward_ctl_fail(err, errlen, WARD_ECERT, "%s: more than %d certificates", cert_file,
                           WARD_CA_MAX_CHAIN);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        const uint8_t *p = der[i];
        certs[i] = d2i_X509(NULL, &p, (long)len[i]);
        if (certs[i] == NULL || p != der[i] + len[i]) {
            rc = ward_ctl_fail(err, errlen, WARD_ECERT, "%s: certificate #%d does not parse",
                               cert_file, i + 1);
            goto out;
        }
    }

    rc = ward__read_key(AT_FDCWD, key_file, 0, 007, key_file, &ca->key, err, errlen);
    if (rc < 0) goto out;
    if (ward__key_policy(ca->key, &why) < 0) {
        rc = ward_ctl_fail(err, errlen, WARD_EKEY, "%s: the CA key is %s", key_file, why);
        goto out;
    }
    if (!X509_check_private_key(certs[0], ca->key)) {
        rc = ward_ctl_fail(err, errlen, WARD_EKEYMISMATCH,
                           "%s does not match the first certificate in %s", key_file, cert_file);
        goto out;
    }
    ca->not_after = INT64_MAX;
    for (int i = 0; i < n; i++) {
        snprintf(what, sizeof(what), "certificate #%d", i + 1);
        rc = ward__check_ca_cert(certs[i], now, what, cert_file, err, errlen);
        if (rc < 0) goto out;
        int64_t na = ward_asn1_time_to_unix(X509_get0_notAfter(certs[i]));
        if (na < ca->not_after) ca->not_after = na;
        if (i + 1 < n && X509_check_issued(certs[i + 1], certs[i]) != X509_V_OK) {
            rc = ward_ctl_fail(err, errlen, WARD_ECERT,
                               "%s: certificate #%d is not issued by certificate #%d; list the CA "
                               "certificate first, then each issuer up to the root",
                               cert_file, i + 1, i + 2);
            goto out;
        }
    }
    if (X509_check_issued(certs[n - 1], certs[n - 1]) != X509_V_OK) {
        rc = ward_ctl_fail(err, errlen, WARD_ECERT,
                           "%s: the chain does not end with a self-signed root; append the issuers "
                           "up to the root (workloads trust the root)",
                           cert_file);
        goto out;
    }

    /* Signatures and validity of the whole chain, as a workload will check it. */
    store = X509_STORE_new();
    untrusted = sk_X509_new_null();
    vctx = X509_STORE_CTX_new();
    if (store == NULL || untrusted == NULL || vctx == NULL ||
        !X509_STORE_add_cert(store, certs[n - 1])) {
        rc = ward_ctl_fail(err, errlen, WARD_ENOMEM, "out of memory");
        goto out;
    }
    for (int i = 1; i < n - 1; i++) {
        if (!sk_X509_push(untrusted, certs[i])) {
            rc = ward_ctl_fail(err, errlen, WARD_ENOMEM, "out of memory");
            goto out;
        }
        X509_up_ref(certs[i]);
    }
    if (!X509_STORE_CTX_init(vctx, store, certs[0], untrusted)) {
        rc = ward_ctl_fail(err, errlen, WARD_ENOMEM, "out of memory");
        goto out;
    }
    if (X509_verify_cert(vctx) != 1) {
        rc =
            ward_ctl_fail(err, errlen, WARD_ECERT, "%s: the CA chain does not verify: %s",
                          cert_file, X509_verify_cert_error_string(X509_STORE_CTX_get_error(vctx)));
        goto out;
    }

    for (int i = 0; i < n - 1; i++) {
        rc = ward__der(certs[i], &ca->inter_der[i], &ca->inter_len[i]);
        if (rc < 0) {
            rc = ward_ctl_fail(err, errlen, rc, "out of memory");
            goto out;
        }
        ca->ninter++;
    }
    ca->cert = certs[0];
    certs[0] = NULL;
    if (n > 1) {
        ca->op_root = certs[n - 1];
        certs[n - 1] = NULL;
    } else {
        ca->op_root = X509_up_ref(ca->cert) ? ca->cert : NULL;
    }

out:
    X509_STORE_CTX_free(vctx);
    sk_X509_pop_free(untrusted, X509_free);
    X509_STORE_free(store);
    for (int i = 0; i < WARD_CA_MAX_CHAIN; i++)
        X509_free(certs[i]);
    for (int i = 0; i < n; i++)
        OPENSSL_free(der[i]);
    ward_free(der);
    ward_free(len);
    return rc;
}

int ward_ca_open(const char *state_dir, const char *ca_cert, const char *ca_key,
                 const char *trust_domain, ward_ca_t **out, char *err, size_t errlen)
{
    const char *why = NULL;
    ward_ca_t *ca = NULL;
    int rc;

    *out = NULL;
    if (trust_domain == NULL ||
        ward_spiffe_td_validate(trust_domain, strlen(trust_domain), &why) < 0)
        return ward_ctl_fail(err, errlen, WARD_ESPIFFE, "invalid trust domain \"%s\": %s",
                             trust_domain ? trust_domain : "", why ? why : "missing");
    if ((ca_cert == NULL) != (ca_key == NULL))
        return ward_ctl_fail(err, errlen, WARD_EINVAL,
                             "--ca-cert and --ca-key must be given together");
    if (ca_cert == NULL && (state_dir == NULL || state_dir[0] == '\0'))
        return ward_ctl_fail(err, errlen, WARD_EINVAL,
                             "a state directory is needed to keep the generated root CA");

    ca = ward_calloc(1, sizeof(*ca));
    if (ca == NULL) return ward_ctl_fail(err, errlen, WARD_ENOMEM, "out of memory");
    ca->dir_fd = -1;
    ca->td = ward_strdup(trust_domain);
    if (ca->td == NULL) {
        rc = ward_ctl_fail(err, errlen, WARD_ENOMEM, "out of memory");
        goto fail;
    }
    if (ca_cert != NULL) {
        rc = ward__open_operator(ca, ca_cert, ca_key, err, errlen);
    } else {
        ca->state_dir = ward_strdup(state_dir);
        rc = ca->state_dir != NULL ? ward__open_state(ca, state_dir, err, errlen)
                                   : ward_ctl_fail(err, errlen, WARD_ENOMEM, "out of memory");
        if (rc == 0) ca->not_after = ward_asn1_time_to_unix(X509_get0_notAfter(ca->cert));
    }
    if (rc < 0) goto fail;
    rc = ward__bundle_rebuild(ca);
    if (rc < 0) {
        rc = ward_ctl_fail(err, errlen, rc, "could not encode the trust bundle");
        goto fail;
    }
    *out = ca;
    ERR_clear_error();
    return 0;
fail:
    ward_ca_free(ca);
    ERR_clear_error();
    return rc;
}

void ward_ca_free(ward_ca_t *ca)
{
    if (ca == NULL) return;
    X509_free(ca->cert);
    EVP_PKEY_free(ca->key);
    X509_free(ca->op_root);
    X509_free(ca->next);
    EVP_PKEY_free(ca->next_key);
    X509_free(ca->prev);
    for (size_t i = 0; i < ca->ninter; i++)
        ward_free(ca->inter_der[i]);
    for (size_t i = 0; i < ca->nbundle; i++)
        ward_free(ca->bundle_der[i]);
    if (ca->dir_fd >= 0) close(ca->dir_fd);
    ward_free(ca->state_dir);
    ward_free(ca->td);
    ward_free(ca);
}

/* --- issuing -------------------------------------------------------------------------------- */

void ward_der_chain_free(ward_der_chain_t *c)
{
    if (c == NULL) return;
    for (size_t i = 0; i < c->n; i++)
        ward_free(c->der[i]);
    ward_free(c->der);
    ward_free(c->len);
    c->der = NULL;
    c->len = NULL;
    c->n = 0;
}

/* A workload id this CA may sign: a valid SPIFFE id with a path, in the CA's trust domain. */
static int ward__check_id(const ward_ca_t *ca, const char *id, char *err, size_t errlen)
{
    ward_spiffe_id_t p;
    const char *why = NULL;
    if (id == NULL) return ward_ctl_fail(err, errlen, WARD_EINVAL, "no SPIFFE id to sign");
    if (ward_spiffe_id_parse(id, strlen(id), &p, &why) < 0)
        return ward_ctl_fail(err, errlen, WARD_ESPIFFE, "\"%.256s\" is not a valid SPIFFE id: %s",
                             id, why);
    if (p.td_len != strlen(ca->td) || memcmp(p.td, ca->td, p.td_len) != 0)
        return ward_ctl_fail(err, errlen, WARD_ESPIFFE,
                             "%.256s is outside this CA's trust domain %s", id, ca->td);
    if (p.path_len == 0)
        return ward_ctl_fail(err, errlen, WARD_ESPIFFE,
                             "%s names the trust domain itself; an SVID needs a workload path", id);
    return 0;
}

/* Builds, signs and encodes the SVID for pub (see ca.h for the profile); out gets leaf +
 * intermediates. */
static int ward__issue(ward_ca_t *ca, EVP_PKEY *pub, const char *id, uint32_t ttl_s,
                       ward_der_chain_t *out, char *err, size_t errlen)
{
    static const int ku_bits[] = {0};
    int64_t now = (int64_t)time(NULL);
    int64_t not_after = now + (int64_t)ttl_s;
    X509_NAME *subject = NULL;
    X509 *x = NULL;
    ward_der_chain_t chain = {NULL, NULL, 0};
    int rc = 0;

    if (ca->not_after <= now)
        return ward_ctl_fail(err, errlen, WARD_ECERT,
                             "the CA certificate has expired; nothing can be signed");
    if (not_after > ca->not_after) not_after = ca->not_after;

    x = X509_new();
    subject = X509_NAME_new();
    if (x == NULL || subject == NULL || !ward__name_add(subject, "O", "ward") ||
        !X509_set_version(x, X509_VERSION_3) || !ward__set_serial(x) ||
        !X509_set_subject_name(x, subject) ||
        !X509_set_issuer_name(x, X509_get_subject_name(ca->cert)) ||
        !ward__set_validity(x, now - WARD_CA_BACKDATE_S, not_after) || !X509_set_pubkey(x, pub) ||
        !ward__add_bc(x, 0) || !ward__add_ku(x, ku_bits, sizeof(ku_bits) / sizeof(ku_bits[0])) ||
        !ward__add_eku(x) || !ward__add_ski(x) || !ward__add_aki(x, ca->cert) ||
        !ward__add_uri_san(x, id, 0)) {
        rc = ward_ctl_fail(err, errlen, WARD_ENOMEM, "could not build the certificate for %s", id);
        goto out;
    }
    if (X509_sign(x, ca->key, EVP_sha256()) <= 0) {
        rc = ward_ctl_fail(err, errlen, WARD_ECERT, "could not sign the certificate for %s", id);
        goto out;
    }

    chain.der = ward_calloc(1 + ca->ninter, sizeof(*chain.der));
    chain.len = ward_calloc(1 + ca->ninter, sizeof(*chain.len));
    if (chain.der == NULL || chain.len == NULL) {
        rc = ward_ctl_fail(err, errlen, WARD_ENOMEM, "out of memory");
        goto out;
    }
    rc = ward__der(x, &chain.der[0], &chain.len[0]);
    if (rc < 0) {
        rc = ward_ctl_fail(err, errlen, rc, "could not encode the certificate for %s", id);
        goto out;
    }
    chain.n = 1;
    for (size_t i = 0; i < ca->ninter; i++) {
        chain.der[i + 1] = ward_malloc(ca->inter_len[i]);
        if (chain.der[i + 1] == NULL) {
            rc = ward_ctl_fail(err, errlen, WARD_ENOMEM, "out of memory");
            goto out;
        }
        memcpy(chain.der[i + 1], ca->inter_der[i], ca->inter_len[i]);
        chain.len[i + 1] = ca->inter_len[i];
        chain.n++;
    }
    *out = chain;
    chain.der = NULL;
    chain.len = NULL;
    chain.n = 0;
out:
    ward_der_chain_free(&chain);
    X509_NAME_free(subject);
    X509_free(x);
    ERR_clear_error();
    return rc;
}

/* The SANs a CSR asks for: nothing, or exactly one URI equal to id. */
static int ward__csr_sans(X509_REQ *req, const char *id, char *err, size_t errlen)
{
    STACK_OF(X509_EXTENSION) *exts = X509_REQ_get_extensions(req);
    int sans = 0, rc = 0;

    if (exts == NULL) {
        if (X509_REQ_get_attr_by_NID(req, NID_ext_req, -1) >= 0 ||
            X509_REQ_get_attr_by_NID(req, NID_ms_ext_req, -1) >= 0)
            return ward_ctl_fail(err, errlen, WARD_ECERT,
                                 "the CSR's extension request does not parse");
        return 0;
    }
    for (size_t i = 0; i < sk_X509_EXTENSION_num(exts) && rc == 0; i++) {
        X509_EXTENSION *ext = sk_X509_EXTENSION_value(exts, i);
        if (OBJ_obj2nid(X509_EXTENSION_get_object(ext)) != NID_subject_alt_name) continue;
        if (sans++ > 0) {
            rc = ward_ctl_fail(err, errlen, WARD_ECERT, "the CSR has more than one SAN extension");
            break;
        }
        GENERAL_NAMES *names = X509V3_EXT_d2i(ext);
        if (names == NULL) {
            rc = ward_ctl_fail(err, errlen, WARD_ECERT, "the CSR's subjectAltName does not parse");
            break;
        }
        size_t uris = 0;
        for (size_t j = 0; j < sk_GENERAL_NAME_num(names) && rc == 0; j++) {
            const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, j);
            if (gn->type != GEN_URI) {
                rc = ward_ctl_fail(err, errlen, WARD_ECERT,
                                   "the CSR asks for a SAN that is not a URI; an SVID carries "
                                   "exactly one URI SAN");
            } else if (++uris > 1) {
                rc = ward_ctl_fail(err, errlen, WARD_ECERT,
                                   "the CSR asks for more than one URI SAN");
            } else {
                const ASN1_STRING *s = gn->d.uniformResourceIdentifier;
                if ((size_t)ASN1_STRING_length(s) != strlen(id) ||
                    memcmp(ASN1_STRING_get0_data(s), id, strlen(id)) != 0)
                    rc =
                        ward_ctl_fail(err, errlen, WARD_ESPIFFE,
                                      "the CSR asks for a URI SAN other than the attested identity "
                                      "%s",
                                      id);
            }
        }
        GENERAL_NAMES_free(names);
    }
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    return rc;
}

int ward_ca_sign_csr(ward_ca_t *ca, const uint8_t *csr, size_t csr_len, const char *spiffe_id,
                     uint32_t ttl_s, ward_der_chain_t *out, char *err, size_t errlen)
{
    X509_REQ *req = NULL;
    EVP_PKEY *pub = NULL;
    const char *why = NULL;
    int rc;

    out->der = NULL;
    out->len = NULL;
    out->n = 0;
    if (ttl_s == 0) return ward_ctl_fail(err, errlen, WARD_EINVAL, "the SVID lifetime must be > 0");
    rc = ward__check_id(ca, spiffe_id, err, errlen);
    if (rc < 0) return rc;
    if (csr == NULL || csr_len == 0 || csr_len > WARD_CA_MAX_CSR)
        return ward_ctl_fail(err, errlen, WARD_ECERT, "the CSR is empty or larger than %d bytes",
                             WARD_CA_MAX_CSR);

    const uint8_t *p = csr;
    req = d2i_X509_REQ(NULL, &p, (long)csr_len);
    if (req == NULL || p != csr + csr_len) {
        rc = ward_ctl_fail(err, errlen, WARD_ECERT, "the CSR is not a DER PKCS#10 request");
        goto out;
    }
    if (X509_REQ_get_version(req) != X509_REQ_VERSION_1) {
        rc = ward_ctl_fail(err, errlen, WARD_ECERT, "the CSR has an unknown version");
        goto out;
    }
    pub = X509_REQ_get_pubkey(req);
    if (pub == NULL) {
        rc =
            ward_ctl_fail(err, errlen, WARD_EKEY, "the CSR's public key is of an unsupported type");
        goto out;
    }
    if (ward__key_policy(pub, &why) < 0) {
        rc = ward_ctl_fail(err, errlen, WARD_EKEY, "the CSR carries %s", why);
        goto out;
    }
    if (X509_REQ_verify(req, pub) != 1) {
        rc = ward_ctl_fail(err, errlen, WARD_ECERT,
                           "the CSR's signature does not verify with its own key (altered, or not "
                           "signed by the key it names)");
        goto out;
    }
    rc = ward__csr_sans(req, spiffe_id, err, errlen);
    if (rc < 0) goto out;
    rc = ward__issue(ca, pub, spiffe_id, ttl_s, out, err, errlen);
out:
    EVP_PKEY_free(pub);
    X509_REQ_free(req);
    ERR_clear_error();
    return rc;
}

int ward_ca_mint(ward_ca_t *ca, const char *spiffe_id, uint32_t ttl_s, ward_der_chain_t *chain,
                 uint8_t **key_pkcs8, size_t *key_len, char *err, size_t errlen)
{
    EVP_PKEY *key = NULL;
    uint8_t *der = NULL;
    size_t len = 0;
    CBB cbb;
    int rc;

    chain->der = NULL;
    chain->len = NULL;
    chain->n = 0;
    *key_pkcs8 = NULL;
    *key_len = 0;
    if (ttl_s == 0) return ward_ctl_fail(err, errlen, WARD_EINVAL, "the SVID lifetime must be > 0");
    rc = ward__check_id(ca, spiffe_id, err, errlen);
    if (rc < 0) return rc;
    key = ward__p256_new();
    if (key == NULL) return ward_ctl_fail(err, errlen, WARD_ENOMEM, "could not generate a key");
    if (!CBB_init(&cbb, 0)) {
        rc = ward_ctl_fail(err, errlen, WARD_ENOMEM, "out of memory");
        goto free_key;
    }
    if (!EVP_marshal_private_key(&cbb, key) || !CBB_finish(&cbb, &der, &len)) {
        CBB_cleanup(&cbb);
        rc = ward_ctl_fail(err, errlen, WARD_ENOMEM, "could not encode the private key");
        goto free_key;
    }
    *key_pkcs8 = ward_malloc(len);
    if (*key_pkcs8 == NULL) {
        rc = ward_ctl_fail(err, errlen, WARD_ENOMEM, "out of memory");
        goto free_der;
    }
    memcpy(*key_pkcs8, der, len);
    *key_len = len;
    rc = ward__issue(ca, key, spiffe_id, ttl_s, chain, err, errlen);
    if (rc < 0) {
        OPENSSL_cleanse(*key_pkcs8, len);
        ward_free(*key_pkcs8);
        *key_pkcs8 = NULL;
        *key_len = 0;
    }
free_der:
    OPENSSL_cleanse(der, len);
    OPENSSL_free(der);
free_key:
    EVP_PKEY_free(key);
    ERR_clear_error();
    return rc;
}

/* --- rotation ------------------------------------------------------------------------------- */

static int ward__rotatable(const ward_ca_t *ca, char *err, size_t errlen)
{
    if (ca->dir_fd >= 0) return 0;
    return ward_ctl_fail(
        err, errlen, WARD_EINVAL,
        "the CA is operator-provided (--ca-cert/--ca-key); ward rotates only roots "
        "it generates: rotate it by replacing those files and restarting the agent");
}

int ward_ca_rotate_prepare(ward_ca_t *ca, char *err, size_t errlen)
{
    X509 *cert = NULL;
    EVP_PKEY *key = NULL;
    int rc = ward__rotatable(ca, err, errlen);
    if (rc < 0) return rc;
    if (ca->next != NULL)
        return ward_ctl_fail(err, errlen, WARD_EINVAL,
                             "a rotation is already prepared; activate it first");
    if (ca->prev != NULL)
        return ward_ctl_fail(err, errlen, WARD_EINVAL,
                             "the previous rotation is not finished; finish it first");
    rc = ward__root_new(ca->td, &cert, &key);
    if (rc < 0) return ward_ctl_fail(err, errlen, rc, "could not generate the new root CA");
    rc = ward__write_pem(ca, WARD_CA_NEXT_KEY, NULL, key, err, errlen);
    if (rc == 0) rc = ward__write_pem(ca, WARD_CA_NEXT_CERT, cert, NULL, err, errlen);
    if (rc < 0) goto fail;
    ca->next = cert;
    ca->next_key = key;
    rc = ward__bundle_rebuild(ca);
    if (rc < 0) {
        /* Persisted already: a restart picks the prepared root up. */
        return ward_ctl_fail(err, errlen, rc, "could not encode the trust bundle");
    }
    return 0;
fail:
    unlinkat(ca->dir_fd, WARD_CA_NEXT_CERT, 0);
    unlinkat(ca->dir_fd, WARD_CA_NEXT_KEY, 0);
    X509_free(cert);
    EVP_PKEY_free(key);
    return rc;
}

int ward_ca_rotate_activate(ward_ca_t *ca, char *err, size_t errlen)
{
    int rc = ward__rotatable(ca, err, errlen);
    if (rc < 0) return rc;
    if (ca->next == NULL)
        return ward_ctl_fail(err, errlen, WARD_EINVAL,
                             "no rotation is prepared; prepare one first");
    rc = ward__write_pem(ca, WARD_CA_PREV_CERT, ca->cert, NULL, err, errlen);
    if (rc < 0) return rc;
    if (renameat(ca->dir_fd, WARD_CA_NEXT_KEY, ca->dir_fd, WARD_CA_KEY) != 0) {
        rc = ward_ctl_fail(err, errlen, -errno, "%s: cannot move %s into place: %s", ca->state_dir,
                           WARD_CA_NEXT_KEY, strerror(errno));
        unlinkat(ca->dir_fd, WARD_CA_PREV_CERT, 0);
        return rc;
    }
    /* From here on a restart completes the activation (see ward__open_state). */
    if (renameat(ca->dir_fd, WARD_CA_NEXT_CERT, ca->dir_fd, WARD_CA_CERT) != 0 ||
        fsync(ca->dir_fd) != 0)
        return ward_ctl_fail(err, errlen, -errno,
                             "%s: cannot move %s into place (%s); restarting the agent completes "
                             "the activation",
                             ca->state_dir, WARD_CA_NEXT_CERT, strerror(errno));
    ca->prev = ca->cert;
    EVP_PKEY_free(ca->key);
    ca->cert = ca->next;
    ca->key = ca->next_key;
    ca->next = NULL;
    ca->next_key = NULL;
    ca->not_after = ward_asn1_time_to_unix(X509_get0_notAfter(ca->cert));
    rc = ward__bundle_rebuild(ca);
    if (rc < 0) return ward_ctl_fail(err, errlen, rc, "could not encode the trust bundle");
    return 0;
}

int ward_ca_rotate_finish(ward_ca_t *ca, char *err, size_t errlen)
{
    int rc = ward__rotatable(ca, err, errlen);
    if (rc < 0) return rc;
    if (ca->prev == NULL)
        return ward_ctl_fail(err, errlen, WARD_EINVAL,
                             "no activated rotation to finish (prepare and activate come first)");
    rc = ward__unlink(ca, WARD_CA_PREV_CERT, err, errlen);
    if (rc < 0) return rc;
    X509_free(ca->prev);
    ca->prev = NULL;
    rc = ward__bundle_rebuild(ca);
    if (rc < 0) return ward_ctl_fail(err, errlen, rc, "could not encode the trust bundle");
    return 0;
}
