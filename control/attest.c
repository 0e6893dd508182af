/* attest.c — the two attestors of attest.h: Unix peer credentials mapped through the workloads
 * file, and Kubernetes projected service-account tokens (compact JWS, RS256/ES256) verified offline
 * against a JWKS file. Calls BoringSSL for the signatures only and clears its error queue.
 *
 * Token errors (err names the failed check):
 *   WARD_EINVAL    bad policy or arguments; "iss" is not the issuer or "aud" lacks the audience
 *   WARD_ETOOLONG  the token is over 16 KiB
 *   WARD_EPARSE    not three strict base64url parts, JSON that does not parse (or has duplicate
 *                  members), a required claim missing or of the wrong type
 *   WARD_EKEY      "alg" refused (none, HS*, anything but RS256/ES256) or not matching the key,
 *                  no key for the "kid", or a signature that does not verify
 *   WARD_ERANGE    expired, or "nbf"/"iat" in the future (beyond the leeway)
 *   WARD_ESPIFFE   namespace / service account not DNS-1123 names, or "sub" not matching them */
#include "fail.h"
#include "attest.h"

#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/spiffe.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/bn.h>
#include <openssl/digest.h>
#include <openssl/ec.h>
#include <openssl/ec_key.h>
#include <openssl/ecdsa.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/mem.h>
#include <openssl/rsa.h>

#define WARD_WORKLOADS_MAX_FILE (4 * 1024 * 1024)
#define WARD_WORKLOADS_MAX_LINE 4096
#define WARD_JWKS_MAX_FILE      (1024 * 1024)
#define WARD_JWKS_MAX_KEYS      64
#define WARD_JWKS_MAX_KID       256
#define WARD_JWT_MAX            (16 * 1024)
#define WARD_JWT_MAX_AUD        64
#define WARD_JWT_LEEWAY_S       60
#define WARD_JWT_MAX_LEEWAY_S   86400
#define WARD_RSA_MIN_BITS       2048
#define WARD_RSA_MAX_BITS       8192

/* Copies at most cap-1 bytes of untrusted text for a message, non-printables as '?'. */
static const char *ward__shown(char *dst, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n && o + 1 < cap; i++) {
        unsigned char c = (unsigned char)s[i];
        dst[o++] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
    }
    if (n >= cap && cap > 4) memcpy(dst + cap - 4, "...", 3);
    dst[o] = '\0';
    return dst;
}

/* Reads a whole file of at most max bytes into heap memory (ward_free), NUL-terminated. */
static int ward__slurp(const char *file, size_t max, char **data, size_t *len)
{
    struct stat st;
    size_t n = 0;
    int rc = 0;
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -errno;
    if (fstat(fd, &st) != 0) {
        rc = -errno;
        goto close_fd;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = WARD_EINVAL;
        goto close_fd;
    }
    if ((uint64_t)st.st_size > max) {
        rc = WARD_ETOOLONG;
        goto close_fd;
    }
    char *buf = ward_malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        rc = WARD_ENOMEM;
        goto close_fd;
    }
    while (n < (size_t)st.st_size) {
        ssize_t r = read(fd, buf + n, (size_t)st.st_size - n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            rc = -errno;
            ward_free(buf);
            goto close_fd;
        }
        if (r == 0) break;
        n += (size_t)r;
    }
    buf[n] = '\0';
    *data = buf;
    *len = n;
close_fd:
    close(fd);
    return rc;
}

/* --- peer credentials ----------------------------------------------------------------------- */

int ward_peercred_get(int fd, ward_peercred_t *out)
{
    struct ucred uc;
    socklen_t len = sizeof(uc);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &uc, &len) != 0) return -errno;
    if (len != sizeof(uc)) return WARD_EIO;
    out->uid = uc.uid;
    out->gid = uc.gid;
    out->pid = uc.pid;
    return 0;
}

/* --- workloads file ------------------------------------------------------------------------- */

typedef struct {
    uid_t uid;
    gid_t gid;
    int has_gid;
    unsigned line;
    char *id;
} ward__workload_t;

struct ward_workloads {
    ward__workload_t *v;
    size_t n;
};

/* Decimal uid/gid: digits only, below (uid_t)-1 (which means "no id" to the kernel). */
static int ward__parse_xid(const char *s, size_t n, uint32_t *out)
{
    uint64_t v = 0;
    if (n == 0 || n > 10) return -1;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v >= UINT32_MAX) return -1;
    *out = (uint32_t)v;
    return 0;
}

static int ward__is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

/* Parses one line (comment already cut). Returns 0 with *w filled (w->id NULL for a blank line). */
static int ward__workload_line(const char *file, unsigned lineno, const char *s, size_t n,
                               const char *td, ward__workload_t *w, char *err, size_t errlen)
{
    const char *tok[3];
    size_t tlen[3];
    int ntok = 0;
    size_t i = 0;
    char shown[80];

    while (i < n) {
        while (i < n && ward__is_space(s[i]))
            i++;
        if (i == n) break;
        size_t start = i;
        while (i < n && !ward__is_space(s[i]))
            i++;
        if (ntok == 3) break;
        tok[ntok] = s + start;
        tlen[ntok] = i - start;
        ntok++;
    }
    memset(w, 0, sizeof(*w));
    w->line = lineno;
    if (ntok == 0) return 0;
    if (ntok == 1)
        return ward_ctl_fail(err, errlen, WARD_EPARSE,
                             "%s:%u: expected \"uid[:gid] spiffe-id\", found one field", file,
                             lineno);
    if (ntok == 3)
        return ward_ctl_fail(err, errlen, WARD_EPARSE,
                             "%s:%u: unexpected text after the SPIFFE id: \"%s\"", file, lineno,
                             ward__shown(shown, sizeof(shown), tok[2], tlen[2]));

    const char *colon = memchr(tok[0], ':', tlen[0]);
    size_t ulen = colon ? (size_t)(colon - tok[0]) : tlen[0];
    uint32_t uid, gid = 0;
    if (ward__parse_xid(tok[0], ulen, &uid) < 0 ||
        (colon && ward__parse_xid(colon + 1, tlen[0] - ulen - 1, &gid) < 0))
        return ward_ctl_fail(err, errlen, WARD_EPARSE,
                             "%s:%u: \"%s\" is not uid or uid:gid (decimal numbers below "
                             "4294967295)",
                             file, lineno, ward__shown(shown, sizeof(shown), tok[0], tlen[0]));

    ward_spiffe_id_t p;
    const char *why = NULL;
    if (ward_spiffe_id_parse(tok[1], tlen[1], &p, &why) < 0)
        return ward_ctl_fail(err, errlen, WARD_ESPIFFE, "%s:%u: \"%s\" is not a SPIFFE id: %s",
                             file, lineno, ward__shown(shown, sizeof(shown), tok[1], tlen[1]), why);
    if (p.td_len != strlen(td) || memcmp(p.td, td, p.td_len) != 0)
        return ward_ctl_fail(err, errlen, WARD_ESPIFFE, "%s:%u: %s is outside the trust domain %s",
                             file, lineno, ward__shown(shown, sizeof(shown), tok[1], tlen[1]), td);
    if (p.path_len == 0)
        return ward_ctl_fail(err, errlen, WARD_ESPIFFE,
                             "%s:%u: %s names the trust domain itself; a workload id needs a path",
                             file, lineno, ward__shown(shown, sizeof(shown), tok[1], tlen[1]));
    w->uid = uid;
    w->gid = gid;
    w->has_gid = colon != NULL;
    w->id = ward_strndup(tok[1], tlen[1]);
    if (w->id == NULL) return ward_ctl_fail(err, errlen, WARD_ENOMEM, "out of memory");
    return 0;
}

int ward_workloads_load(const char *file, const char *trust_domain, ward_workloads_t **out,
                        char *err, size_t errlen)
{
    ward_workloads_t *w = NULL;
    char *data = NULL;
    size_t len = 0, cap = 0;
    const char *why = NULL;
    unsigned lineno = 0;
    int rc;

    *out = NULL;
    if (trust_domain == NULL ||
        ward_spiffe_td_validate(trust_domain, strlen(trust_domain), &why) < 0)
        return ward_ctl_fail(err, errlen, WARD_ESPIFFE, "invalid trust domain: %s",
                             why ? why : "missing");
    rc = ward__slurp(file, WARD_WORKLOADS_MAX_FILE, &data, &len);
    if (rc < 0)
        return ward_ctl_fail(err, errlen, rc, "%s: cannot read the workloads file: %s", file,
                             rc == WARD_ETOOLONG ? "larger than 4 MiB" : ward_strerror(rc));
    w = ward_calloc(1, sizeof(*w));
    if (w == NULL) {
        rc = ward_ctl_fail(err, errlen, WARD_ENOMEM, "out of memory");
        goto fail;
    }
    for (size_t off = 0; off < len;) {
        const char *line = data + off;
        const char *nl = memchr(line, '\n', len - off);
        size_t n = nl ? (size_t)(nl - line) : len - off;
        off += n + (nl != NULL);
        lineno++;
        if (n > WARD_WORKLOADS_MAX_LINE) {
            rc = ward_ctl_fail(err, errlen, WARD_ETOOLONG, "%s:%u: line longer than %d bytes", file,
                               lineno, WARD_WORKLOADS_MAX_LINE);
            goto fail;
        }
        if (memchr(line, '\0', n) != NULL) {
            rc = ward_ctl_fail(err, errlen, WARD_EPARSE, "%s:%u: NUL byte in the line", file,
                               lineno);
            goto fail;
        }
        const char *hash = memchr(line, '#', n);
        if (hash != NULL) n = (size_t)(hash - line);

        ward__workload_t e;
        rc = ward__workload_line(file, lineno, line, n, trust_domain, &e, err, errlen);
        if (rc < 0) goto fail;
        if (e.id == NULL) continue;
        for (size_t i = 0; i < w->n; i++) {
            const ward__workload_t *o = &w->v[i];
            if (o->uid == e.uid && o->has_gid == e.has_gid && (!e.has_gid || o->gid == e.gid)) {
                char key[32];
                if (e.has_gid)
                    snprintf(key, sizeof(key), "%u:%u", (unsigned)e.uid, (unsigned)e.gid);
                else
                    snprintf(key, sizeof(key), "%u", (unsigned)e.uid);
                rc = ward_ctl_fail(err, errlen, WARD_EPARSE,
                                   "%s:%u: %s is already mapped on line %u", file, lineno, key,
                                   o->line);
                ward_free(e.id);
                goto fail;
            }
        }
        if (w->n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            ward__workload_t *nv = ward_realloc(w->v, ncap * sizeof(*nv));
            if (nv == NULL) {
                ward_free(e.id);
                rc = ward_ctl_fail(err, errlen, WARD_ENOMEM, "out of memory");
                goto fail;
            }
            w->v = nv;
            cap = ncap;
        }
        w->v[w->n++] = e;
    }
    ward_free(data);
    *out = w;
    return 0;
fail:
    ward_free(data);
    ward_workloads_free(w);
    return rc;
}

const char *ward_workloads_lookup(const ward_workloads_t *w, uid_t uid, gid_t gid)
{
    const char *uid_only = NULL;
    for (size_t i = 0; i < w->n; i++) {
        const ward__workload_t *e = &w->v[i];
        if (e->uid != uid) continue;
        if (e->has_gid && e->gid == gid) return e->id;
        if (!e->has_gid) uid_only = e->id;
    }
    return uid_only;
}

void ward_workloads_free(ward_workloads_t *w)
{
    if (w == NULL) return;
    for (size_t i = 0; i < w->n; i++)
        ward_free(w->v[i].id);
    ward_free(w->v);
    ward_free(w);
}

/* --- base64url ------------------------------------------------------------------------------ */

static int ward__b64url_val(unsigned char c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '-') return 62;
    if (c == '_') return 63;
    return -1;
}

/* Strict base64url without padding (RFC 7515 2): refuses '=', any character outside the URL-safe
 * alphabet, a length of 1 mod 4 and non-zero leftover bits (so each value has one encoding).
 * *out is heap memory (ward_free) of *out_len bytes; NULL/0 for an empty input. */
static int ward__b64url_decode(const char *s, size_t n, uint8_t **out, size_t *out_len)
{
    uint8_t *buf;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;

    *out = NULL;
    *out_len = 0;
    if (n % 4 == 1) return WARD_EPARSE;
    if (n == 0) return 0;
    buf = ward_malloc(n / 4 * 3 + 3);
    if (buf == NULL) return WARD_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        int v = ward__b64url_val((unsigned char)s[i]);
        if (v < 0) {
            ward_free(buf);
            return WARD_EPARSE;
        }
        acc = acc << 6 | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            buf[o++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (acc != 0) {
        ward_free(buf);
        return WARD_EPARSE;
    }
    *out = buf;
    *out_len = o;
    return 0;
}

/* --- JWKS ----------------------------------------------------------------------------------- */

typedef struct {
    char *kid;   /* NULL when the key has none */
    int type;    /* EVP_PKEY_RSA or EVP_PKEY_EC */
    char alg[8]; /* the key's declared "alg", or "" */
    EVP_PKEY *key;
} ward__jwk_t;

struct ward_jwks {
    ward__jwk_t keys[WARD_JWKS_MAX_KEYS];
    size_t n;
};

/* A base64url member of a JWK as a BIGNUM; want_len > 0 requires exactly that many bytes. */
static int ward__jwk_bn(json_t *jwk, const char *name, size_t want_len, BIGNUM **out)
{
    json_t *v = json_object_get(jwk, name);
    uint8_t *raw = NULL;
    size_t len = 0;
    *out = NULL;
    if (!json_is_string(v)) return WARD_EPARSE;
    int rc = ward__b64url_decode(json_string_value(v), json_string_length(v), &raw, &len);
    if (rc < 0) return rc;
    if (len == 0 || (want_len > 0 && len != want_len)) {
        ward_free(raw);
        return WARD_EPARSE;
    }
    *out = BN_bin2bn(raw, len, NULL);
    ward_free(raw);
    return *out != NULL ? 0 : WARD_ENOMEM;
}

static int ward__jwk_rsa(json_t *jwk, EVP_PKEY **out, const char **why)
{
    BIGNUM *n = NULL, *e = NULL;
    RSA *rsa = NULL;
    int rc = WARD_EPARSE;

    if (ward__jwk_bn(jwk, "n", 0, &n) < 0 || ward__jwk_bn(jwk, "e", 0, &e) < 0) {
        *why = "\"n\" and \"e\" must be base64url integers";
        goto out;
    }
    if (BN_num_bits(n) < WARD_RSA_MIN_BITS || BN_num_bits(n) > WARD_RSA_MAX_BITS) {
        *why = "the RSA modulus must have 2048 to 8192 bits";
        rc = WARD_EKEY;
        goto out;
    }
    if (!BN_is_odd(e) || BN_num_bits(e) < 2 || BN_num_bits(e) > 33) {
        *why = "the RSA public exponent is not a valid odd number up to 2^33";
        rc = WARD_EKEY;
        goto out;
    }
    rsa = RSA_new();
    if (rsa == NULL || !RSA_set0_key(rsa, n, e, NULL)) {
        *why = "out of memory";
        rc = WARD_ENOMEM;
        goto out;
    }
    n = e = NULL;
    *out = EVP_PKEY_new();
    if (*out == NULL || !EVP_PKEY_assign_RSA(*out, rsa)) {
        EVP_PKEY_free(*out);
        *out = NULL;
        *why = "out of memory";
        rc = WARD_ENOMEM;
        goto out;
    }
    rsa = NULL;
    rc = 0;
out:
    RSA_free(rsa);
    BN_free(n);
    BN_free(e);
    return rc;
}

static int ward__jwk_ec(json_t *jwk, EVP_PKEY **out, const char **why)
{
    BIGNUM *x = NULL, *y = NULL;
    EC_KEY *ec = NULL;
    int rc = WARD_EPARSE;

    if (ward__jwk_bn(jwk, "x", 32, &x) < 0 || ward__jwk_bn(jwk, "y", 32, &y) < 0) {
        *why = "\"x\" and \"y\" must be 32-byte base64url coordinates";
        goto out;
    }
    ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    if (ec == NULL) {
        *why = "out of memory";
        rc = WARD_ENOMEM;
        goto out;
    }
    if (!EC_KEY_set_public_key_affine_coordinates(ec, x, y)) {
        *why = "the point is not on P-256";
        rc = WARD_EKEY;
        goto out;
    }
    *out = EVP_PKEY_new();
    if (*out == NULL || !EVP_PKEY_assign_EC_KEY(*out, ec)) {
        EVP_PKEY_free(*out);
        *out = NULL;
        *why = "out of memory";
        rc = WARD_ENOMEM;
        goto out;
    }
    ec = NULL;
    rc = 0;
out:
    EC_KEY_free(ec);
    BN_free(x);
    BN_free(y);
    return rc;
}

void ward_jwks_free(ward_jwks_t *j)
{
    if (j == NULL) return;
    for (size_t i = 0; i < j->n; i++) {
        ward_free(j->keys[i].kid);
        EVP_PKEY_free(j->keys[i].key);
    }
    ward_free(j);
}

int ward_jwks_load(const char *file, ward_jwks_t **out, char *err, size_t errlen)
{
    ward_jwks_t *j = NULL;
    json_t *root = NULL;
    json_error_t jerr;
    char *data = NULL;
    size_t len = 0;
    char shown[80];
    int rc;

    *out = NULL;
    rc = ward__slurp(file, WARD_JWKS_MAX_FILE, &data, &len);
    if (rc < 0)
        return ward_ctl_fail(err, errlen, rc, "%s: cannot read the JWKS: %s", file,
                             rc == WARD_ETOOLONG ? "larger than 1 MiB" : ward_strerror(rc));
    root = json_loadb(data, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        rc = ward_ctl_fail(err, errlen, WARD_EPARSE, "%s:%d: JWKS is not valid JSON: %s", file,
                           jerr.line, jerr.text);
        goto out;
    }
    json_t *keys = json_object_get(root, "keys");
    if (!json_is_array(keys)) {
        rc = ward_ctl_fail(err, errlen, WARD_EPARSE, "%s: JWKS has no \"keys\" array", file);
        goto out;
    }
    j = ward_calloc(1, sizeof(*j));
    if (j == NULL) {
        rc = ward_ctl_fail(err, errlen, WARD_ENOMEM, "out of memory");
        goto out;
    }
    for (size_t i = 0; i < json_array_size(keys); i++) {
        json_t *jwk = json_array_get(keys, i);
        json_t *kty = json_object_get(jwk, "kty"), *use = json_object_get(jwk, "use");
        json_t *kid = json_object_get(jwk, "kid"), *alg = json_object_get(jwk, "alg");
        json_t *crv = json_object_get(jwk, "crv");
        const char *why = NULL;

        if (!json_is_object(jwk) || !json_is_string(kty)) {
            rc = ward_ctl_fail(err, errlen, WARD_EPARSE,
                               "%s: key #%zu is not an object with \"kty\"", file, i + 1);
            goto out;
        }
        if (use != NULL && !(json_is_string(use) && strcmp(json_string_value(use), "sig") == 0))
            continue; /* an encryption key: never used for signatures */
        int type;
        if (strcmp(json_string_value(kty), "RSA") == 0) {
            type = EVP_PKEY_RSA;
        } else if (strcmp(json_string_value(kty), "EC") == 0 && json_is_string(crv) &&
                   strcmp(json_string_value(crv), "P-256") == 0) {
            type = EVP_PKEY_EC;
        } else {
            continue; /* oct, OKP, other curves: no token of ours can use them */
        }
        if (kid != NULL && (!json_is_string(kid) || json_string_length(kid) == 0 ||
                            json_string_length(kid) > WARD_JWKS_MAX_KID)) {
            rc = ward_ctl_fail(err, errlen, WARD_EPARSE,
                               "%s: key #%zu: \"kid\" must be a string of 1 to %d bytes", file,
                               i + 1, WARD_JWKS_MAX_KID);
            goto out;
        }
        if (alg != NULL &&
            !(json_is_string(alg) &&
              strcmp(json_string_value(alg), type == EVP_PKEY_RSA ? "RS256" : "ES256") == 0))
            continue; /* declared for an algorithm ward does not accept */
        if (j->n == WARD_JWKS_MAX_KEYS) {
            rc = ward_ctl_fail(err, errlen, WARD_ETOOLONG, "%s: more than %d signing keys", file,
                               WARD_JWKS_MAX_KEYS);
            goto out;
        }
        ward__jwk_t *k = &j->keys[j->n];
        rc = type == EVP_PKEY_RSA ? ward__jwk_rsa(jwk, &k->key, &why)
                                  : ward__jwk_ec(jwk, &k->key, &why);
        if (rc < 0) {
            rc = ward_ctl_fail(err, errlen, rc, "%s: key #%zu%s%s: %s", file, i + 1,
                               kid ? " kid " : "",
                               kid ? ward__shown(shown, sizeof(shown), json_string_value(kid),
                                                 json_string_length(kid))
                                   : "",
                               why);
            goto out;
        }
        k->type = type;
        if (alg != NULL) snprintf(k->alg, sizeof(k->alg), "%s", json_string_value(alg));
        if (kid != NULL) {
            k->kid = ward_strndup(json_string_value(kid), json_string_length(kid));
            if (k->kid == NULL) {
                EVP_PKEY_free(k->key);
                rc = ward_ctl_fail(err, errlen, WARD_ENOMEM, "out of memory");
                goto out;
            }
        }
        j->n++;
    }
    if (j->n == 0) {
        rc = ward_ctl_fail(err, errlen, WARD_EKEY,
                           "%s: no usable signing key (RSA, or EC P-256, with \"use\":\"sig\")",
                           file);
        goto out;
    }
    *out = j;
    j = NULL;
    rc = 0;
out:
    ward_jwks_free(j);
    json_decref(root);
    ward_free(data);
    ERR_clear_error();
    return rc;
}

/* --- token verification --------------------------------------------------------------------- */

/* The key for a token: the one named by kid (which must fit the algorithm), else the only key of
 * the algorithm's type. */
static int ward__pick_key(const ward_jwks_t *jwks, const char *kid, size_t kid_len, int type,
                          const ward__jwk_t **out, char *err, size_t errlen)
{
    const ward__jwk_t *found = NULL;
    size_t of_type = 0;
    char shown[80];
    int kid_seen = 0;

    for (size_t i = 0; i < jwks->n; i++) {
        const ward__jwk_t *k = &jwks->keys[i];
        if (kid != NULL) {
            if (k->kid == NULL || strlen(k->kid) != kid_len || memcmp(k->kid, kid, kid_len) != 0)
                continue;
            kid_seen = 1;
            if (k->type == type) {
                found = k;
                break;
            }
        } else if (k->type == type) {
            of_type++;
            found = k;
        }
    }
    if (kid != NULL && found == NULL)
        return ward_ctl_fail(err, errlen, WARD_EKEY,
                             kid_seen ? "token key \"%s\" is not a key for its \"alg\""
                                      : "token key \"%s\" is not in the JWKS",
                             ward__shown(shown, sizeof(shown), kid, kid_len));
    if (kid == NULL && of_type != 1)
        return ward_ctl_fail(err, errlen, WARD_EKEY,
                             of_type == 0
                                 ? "token has no \"kid\" and the JWKS has no key for its "
                                   "\"alg\""
                                 : "token has no \"kid\" and the JWKS has several keys for "
                                   "its \"alg\"");
    *out = found;
    return 0;
}

static int ward__verify_sig(const ward__jwk_t *k, const uint8_t *msg, size_t msg_len,
                            const uint8_t *sig, size_t sig_len)
{
    uint8_t *der = NULL;
    size_t der_len = 0;
    ECDSA_SIG *es = NULL;
    EVP_MD_CTX *ctx = NULL;
    int ok = 0;

    if (k->type == EVP_PKEY_EC) {
        /* JWS ES256 signatures are r || s, 32 bytes each (RFC 7518 3.4); BoringSSL wants DER. */
        if (sig_len != 64) goto out;
        es = ECDSA_SIG_new();
        BIGNUM *r = BN_bin2bn(sig, 32, NULL), *s = BN_bin2bn(sig + 32, 32, NULL);
        if (es == NULL || r == NULL || s == NULL || !ECDSA_SIG_set0(es, r, s)) {
            BN_free(r);
            BN_free(s);
            goto out;
        }
        if (!ECDSA_SIG_to_bytes(&der, &der_len, es)) goto out;
        sig = der;
        sig_len = der_len;
    } else if (sig_len != (size_t)EVP_PKEY_size(k->key)) {
        goto out;
    }
    ctx = EVP_MD_CTX_new();
    ok = ctx != NULL && EVP_DigestVerifyInit(ctx, NULL, EVP_sha256(), NULL, k->key) == 1 &&
         EVP_DigestVerify(ctx, sig, sig_len, msg, msg_len) == 1;
out:
    EVP_MD_CTX_free(ctx);
    ECDSA_SIG_free(es);
    OPENSSL_free(der);
    ERR_clear_error();
    return ok;
}

/* NumericDate claim: 1 and *out when present, 0 when absent, WARD_EPARSE when not a number. */
static int ward__claim_time(json_t *claims, const char *name, int64_t *out)
{
    json_t *v = json_object_get(claims, name);
    if (v == NULL) return 0;
    if (json_is_integer(v)) {
        *out = (int64_t)json_integer_value(v);
        return 1;
    }
    if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d > -4e15 && d < 4e15)) return WARD_EPARSE;
        *out = (int64_t)d;
        return 1;
    }
    return WARD_EPARSE;
}

static int ward__dns_label(const char *s, size_t n)
{
    if (n == 0 || n > 63) return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!alnum && !(c == '-' && i > 0 && i + 1 < n)) return 0;
    }
    return 1;
}

static int ward__dns_subdomain(const char *s, size_t n)
{
    if (n == 0 || n > 253) return 0;
    for (size_t start = 0; start <= n;) {
        const char *dot = memchr(s + start, '.', n - start);
        size_t end = dot ? (size_t)(dot - s) : n;
        if (!ward__dns_label(s + start, end - start)) return 0;
        start = end + 1;
    }
    return 1;
}

static const char *ward__str(json_t *obj, const char *name, size_t *len)
{
    json_t *v = json_object_get(obj, name);
    if (!json_is_string(v)) return NULL;
    *len = json_string_length(v);
    return json_string_value(v);
}

/* Checks the claims (iss, aud, exp/nbf/iat, kubernetes.io, sub) and builds the SPIFFE id. */
static int ward__check_claims(json_t *claims, const ward_k8s_token_policy_t *pol, int64_t leeway,
                              char **spiffe_id, char *err, size_t errlen)
{
    char shown[80];
    size_t len = 0, ns_len = 0, sa_len = 0;
    const char *s;
    int64_t t = 0;
    int rc;

    s = ward__str(claims, "iss", &len);
    if (s == NULL) return ward_ctl_fail(err, errlen, WARD_EPARSE, "token has no \"iss\" string");
    if (len != strlen(pol->issuer) || memcmp(s, pol->issuer, len) != 0)
        return ward_ctl_fail(err, errlen, WARD_EINVAL, "token issuer \"%s\" is not %s",
                             ward__shown(shown, sizeof(shown), s, len), pol->issuer);

    json_t *aud = json_object_get(claims, "aud");
    int aud_ok = 0;
    if (json_is_string(aud)) {
        aud_ok = json_string_length(aud) == strlen(pol->audience) &&
                 memcmp(json_string_value(aud), pol->audience, strlen(pol->audience)) == 0;
    } else if (json_is_array(aud) && json_array_size(aud) <= WARD_JWT_MAX_AUD) {
        for (size_t i = 0; i < json_array_size(aud); i++) {
            json_t *a = json_array_get(aud, i);
            if (!json_is_string(a))
                return ward_ctl_fail(err, errlen, WARD_EPARSE, "token \"aud\" has a non-string");
            if (json_string_length(a) == strlen(pol->audience) &&
                memcmp(json_string_value(a), pol->audience, strlen(pol->audience)) == 0)
                aud_ok = 1;
        }
    } else {
        return ward_ctl_fail(err, errlen, WARD_EPARSE,
                             "token \"aud\" is missing or not a string or array of strings");
    }
    if (!aud_ok)
        return ward_ctl_fail(err, errlen, WARD_EINVAL, "token audience does not include \"%s\"",
                             pol->audience);

    rc = ward__claim_time(claims, "exp", &t);
    if (rc <= 0) return ward_ctl_fail(err, errlen, WARD_EPARSE, "token has no numeric \"exp\"");
    if (t <= pol->now - leeway)
        return ward_ctl_fail(err, errlen, WARD_ERANGE, "token expired %lld s ago",
                             (long long)(pol->now - t));
    rc = ward__claim_time(claims, "nbf", &t);
    if (rc < 0) return ward_ctl_fail(err, errlen, WARD_EPARSE, "token \"nbf\" is not a number");
    if (rc > 0 && t > pol->now + leeway)
        return ward_ctl_fail(err, errlen, WARD_ERANGE, "token is not valid until %lld s from now",
                             (long long)(t - pol->now));
    rc = ward__claim_time(claims, "iat", &t);
    if (rc < 0) return ward_ctl_fail(err, errlen, WARD_EPARSE, "token \"iat\" is not a number");
    if (rc > 0 && t > pol->now + leeway)
        return ward_ctl_fail(err, errlen, WARD_ERANGE, "token is issued %lld s in the future",
                             (long long)(t - pol->now));

    json_t *k8s = json_object_get(claims, "kubernetes.io");
    json_t *sa = json_object_get(k8s, "serviceaccount");
    const char *ns = ward__str(k8s, "namespace", &ns_len);
    const char *san = ward__str(sa, "name", &sa_len);
    if (!json_is_object(k8s) || ns == NULL || !json_is_object(sa) || san == NULL)
        return ward_ctl_fail(err, errlen, WARD_EPARSE,
                             "token lacks the kubernetes.io namespace and serviceaccount.name "
                             "claims (not a service-account token)");
    json_t *pod = json_object_get(k8s, "pod");
    if (pod != NULL && !json_is_object(pod))
        return ward_ctl_fail(err, errlen, WARD_EPARSE, "token kubernetes.io.pod is not an object");
    if (!ward__dns_label(ns, ns_len))
        return ward_ctl_fail(err, errlen, WARD_ESPIFFE,
                             "token namespace \"%s\" is not a DNS-1123 label",
                             ward__shown(shown, sizeof(shown), ns, ns_len));
    if (!ward__dns_subdomain(san, sa_len))
        return ward_ctl_fail(err, errlen, WARD_ESPIFFE,
                             "token service account \"%s\" is not a DNS-1123 subdomain",
                             ward__shown(shown, sizeof(shown), san, sa_len));

    /* "sub" is system:serviceaccount:NS:SA in every kubelet token; a different one is forged. */
    char want[sizeof("system:serviceaccount::") + 63 + 253];
    int wn = snprintf(want, sizeof(want), "system:serviceaccount:%.*s:%.*s", (int)ns_len, ns,
                      (int)sa_len, san);
    s = ward__str(claims, "sub", &len);
    if (s != NULL && (len != (size_t)wn || memcmp(s, want, len) != 0))
        return ward_ctl_fail(err, errlen, WARD_ESPIFFE,
                             "token \"sub\" does not name the kubernetes.io service account %s",
                             want);
    if (s == NULL && json_object_get(claims, "sub") != NULL)
        return ward_ctl_fail(err, errlen, WARD_EPARSE, "token \"sub\" is not a string");

    size_t idlen = strlen("spiffe://") + strlen(pol->trust_domain) + strlen("/ns/") + ns_len +
                   strlen("/sa/") + sa_len;
    char *id = ward_malloc(idlen + 1);
    if (id == NULL) return ward_ctl_fail(err, errlen, WARD_ENOMEM, "out of memory");
    snprintf(id, idlen + 1, "spiffe://%s/ns/%.*s/sa/%.*s", pol->trust_domain, (int)ns_len, ns,
             (int)sa_len, san);
    const char *why = NULL;
    if (ward_spiffe_id_parse(id, idlen, NULL, &why) < 0) {
        ward_free(id);
        return ward_ctl_fail(err, errlen, WARD_ESPIFFE, "token maps to an invalid SPIFFE id: %s",
                             why);
    }
    *spiffe_id = id;
    return 0;
}

static json_t *ward__json_part(const char *b64, size_t n, int *rc)
{
    uint8_t *raw = NULL;
    size_t len = 0;
    json_error_t jerr;
    *rc = ward__b64url_decode(b64, n, &raw, &len);
    if (*rc < 0) return NULL;
    json_t *v = len > 0 ? json_loadb((const char *)raw, len, JSON_REJECT_DUPLICATES, &jerr) : NULL;
    ward_free(raw);
    if (!json_is_object(v)) {
        json_decref(v);
        *rc = WARD_EPARSE;
        return NULL;
    }
    return v;
}

int ward_k8s_token_verify(const ward_jwks_t *jwks, const ward_k8s_token_policy_t *pol,
                          const char *token, char **spiffe_id, char *err, size_t errlen)
{
    json_t *header = NULL, *claims = NULL;
    uint8_t *sig = NULL;
    size_t sig_len = 0, kid_len = 0;
    const ward__jwk_t *key = NULL;
    const char *why = NULL;
    char shown[80];
    int rc;

    *spiffe_id = NULL;
    if (jwks == NULL || pol == NULL || token == NULL || pol->issuer == NULL ||
        pol->audience == NULL || pol->trust_domain == NULL || pol->leeway_s < 0 ||
        pol->leeway_s > WARD_JWT_MAX_LEEWAY_S)
        return ward_ctl_fail(err, errlen, WARD_EINVAL, "token verification is misconfigured");
    if (ward_spiffe_td_validate(pol->trust_domain, strlen(pol->trust_domain), &why) < 0)
        return ward_ctl_fail(err, errlen, WARD_EINVAL, "invalid trust domain: %s", why);
    int64_t leeway = pol->leeway_s ? pol->leeway_s : WARD_JWT_LEEWAY_S;

    size_t n = strnlen(token, WARD_JWT_MAX + 1);
    if (n > WARD_JWT_MAX)
        return ward_ctl_fail(err, errlen, WARD_ETOOLONG, "token is longer than %d bytes",
                             WARD_JWT_MAX);
    const char *dot1 = memchr(token, '.', n);
    const char *dot2 = dot1 ? memchr(dot1 + 1, '.', n - (size_t)(dot1 + 1 - token)) : NULL;
    if (dot2 == NULL || memchr(dot2 + 1, '.', n - (size_t)(dot2 + 1 - token)) != NULL)
        return ward_ctl_fail(err, errlen, WARD_EPARSE,
                             "token is not a compact JWS (header.payload.signature)");

    header = ward__json_part(token, (size_t)(dot1 - token), &rc);
    if (header == NULL) {
        rc = ward_ctl_fail(err, errlen, rc == WARD_ENOMEM ? rc : WARD_EPARSE,
                           "token header is not base64url-encoded JSON object");
        goto out;
    }
    size_t alg_len = 0;
    const char *alg = ward__str(header, "alg", &alg_len);
    if (alg == NULL) {
        rc = ward_ctl_fail(err, errlen, WARD_EPARSE, "token header has no \"alg\"");
        goto out;
    }
    int type;
    if (strcmp(alg, "RS256") == 0 && alg_len == 5) {
        type = EVP_PKEY_RSA;
    } else if (strcmp(alg, "ES256") == 0 && alg_len == 5) {
        type = EVP_PKEY_EC;
    } else {
        const char *kind = strcmp(alg, "none") == 0     ? " (an unsigned token)"
                           : strncmp(alg, "HS", 2) == 0 ? " (HMAC)"
                                                        : "";
        rc = ward_ctl_fail(err, errlen, WARD_EKEY,
                           "token \"alg\" %s%s is refused: only RS256 and ES256 are accepted",
                           ward__shown(shown, sizeof(shown), alg, alg_len), kind);
        goto out;
    }
    if (json_object_get(header, "crit") != NULL) {
        rc = ward_ctl_fail(err, errlen, WARD_EPARSE,
                           "token header has \"crit\" extensions ward does not understand");
        goto out;
    }
    json_t *kidv = json_object_get(header, "kid");
    const char *kid = ward__str(header, "kid", &kid_len);
    if (kidv != NULL && kid == NULL) {
        rc = ward_ctl_fail(err, errlen, WARD_EPARSE, "token \"kid\" is not a string");
        goto out;
    }
    rc = ward__pick_key(jwks, kid, kid_len, type, &key, err, errlen);
    if (rc < 0) goto out;

    const char *sig_b64 = dot2 + 1;
    size_t sig_b64_len = n - (size_t)(sig_b64 - token);
    rc = ward__b64url_decode(sig_b64, sig_b64_len, &sig, &sig_len);
    if (rc < 0 || sig_len == 0) {
        rc = ward_ctl_fail(err, errlen, rc == WARD_ENOMEM ? rc : WARD_EPARSE,
                           "token signature is missing or not base64url");
        goto out;
    }
    if (!ward__verify_sig(key, (const uint8_t *)token, (size_t)(dot2 - token), sig, sig_len)) {
        rc = ward_ctl_fail(err, errlen, WARD_EKEY, "token signature does not verify (%s)", alg);
        goto out;
    }

    claims = ward__json_part(dot1 + 1, (size_t)(dot2 - dot1 - 1), &rc);
    if (claims == NULL) {
        rc = ward_ctl_fail(err, errlen, rc == WARD_ENOMEM ? rc : WARD_EPARSE,
                           "token payload is not a base64url-encoded JSON object");
        goto out;
    }
    rc = ward__check_claims(claims, pol, leeway, spiffe_id, err, errlen);
out:
    json_decref(header);
    json_decref(claims);
    ward_free(sig);
    ERR_clear_error();
    return rc;
}
