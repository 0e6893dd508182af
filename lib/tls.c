/* tls.c — identity snapshots, X509-SVID verification and failure classification. The only file of
 * the data plane that calls BoringSSL (see ward/tls.h). Connections use TLS_with_buffers_method():
 * certificates stay as pooled CRYPTO_BUFFERs (one copy per distinct certificate, shared by every
 * connection that saw it), and X509 objects exist only for the moment of verification. */
#include "ward/tls.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/spiffe.h"

#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/bytestring.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/pool.h>
#include <openssl/sha.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#define WARD_TLS_MAX_CHAIN      8
#define WARD_ALPN_TCP           "ward-tcp"
#define WARD_SESSION_LIFETIME_S 3600
#define WARD_TLS12_CIPHERS                                                                         \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

struct ward_identity {
    atomic_long refs;
    uint64_t generation;
    SSL_CTX *server;
    SSL_CTX *client;
    X509_STORE *store;
    char *spiffe_id;
    size_t td_len; /* spiffe_id + 9 .. + td_len is the trust domain */
    int64_t not_before;
    int64_t not_after;
    size_t nroots; /* certificates in the trust bundle */
};

static pthread_once_t ward__tls_once = PTHREAD_ONCE_INIT;
static int ward__ex_peer = -1;
static int ward__ex_identity = -1;
/* Shared by every snapshot for the life of the process: identical certificates from many
 * connections collapse to one buffer. Internally locked. */
static CRYPTO_BUFFER_POOL *ward__pool;
static BIO_METHOD *ward__rbio_method;
static atomic_uint_fast64_t ward__generation;

static const char *const ward__reason_names[WARD_REASON_COUNT] = {
    "none",           "expired",         "not_yet_valid", "unknown_ca", "san_mismatch",
    "no_client_cert", "bad_certificate", "protocol",      "timeout",    "plaintext_rejected"};

const char *ward_tls_reason_name(ward_tls_reason_t r)
{
    return (unsigned)r < WARD_REASON_COUNT ? ward__reason_names[r] : "unknown";
}

/* --- the chunked read BIO (see ward_tls_io_t) -------------------------------------------- */

static int ward__rbio_read(BIO *b, char *out, int len)
{
    ward_tls_io_t *io = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (len <= 0) return 0;
    if (io->rx == NULL) {
        io->rx = ward_pool_get(io->pool);
        if (io->rx == NULL) {
            errno = ENOMEM;
            return -1;
        }
        ssize_t n;
        do {
            n = read(io->fd, io->rx->data, WARD_CHUNK_SIZE);
        } while (n < 0 && errno == EINTR);
        if (n <= 0) {
            int e = errno;
            ward_pool_put(io->pool, io->rx);
            io->rx = NULL;
            errno = e;
            if (n == 0) return 0;
            if (e == EAGAIN) {
                io->drained = 1;
                BIO_set_retry_read(b);
            }
            return -1;
        }
        io->rx->len = (size_t)n;
        io->drained = n < WARD_CHUNK_SIZE;
    }
    size_t avail = io->rx->len - io->rx->off;
    size_t k = avail < (size_t)len ? avail : (size_t)len;
    memcpy(out, io->rx->data + io->rx->off, k);
    io->rx->off += k;
    if (io->rx->off == io->rx->len) {
        ward_pool_put(io->pool, io->rx);
        io->rx = NULL;
    }
    return (int)k;
}

static long ward__rbio_ctrl(BIO *b, int cmd, long larg, void *parg)
{
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int ward__rbio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static BIO_METHOD *ward__rbio_method_new(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_TYPE_SOURCE_SINK, "ward chunked socket reader");
    if (m == NULL || !BIO_meth_set_read(m, ward__rbio_read) ||
        !BIO_meth_set_ctrl(m, ward__rbio_ctrl) || !BIO_meth_set_create(m, ward__rbio_create)) {
        BIO_meth_free(m);
        return NULL;
    }
    return m;
}

int ward_tls_buffered(const SSL *ssl, const ward_tls_io_t *io)
{
    return io->rx != NULL || SSL_has_pending(ssl);
}

void ward_tls_io_release(ward_tls_io_t *io)
{
    ward_pool_put(io->pool, io->rx);
    io->rx = NULL;
}

static void ward__tls_init_once(void)
{
    ward__ex_peer = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    ward__ex_identity = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
    ward__pool = CRYPTO_BUFFER_POOL_new();
    ward__rbio_method = ward__rbio_method_new();
}

int64_t ward_asn1_time_to_unix(const ASN1_TIME *t)
{
    int days = 0, secs = 0;
    ASN1_TIME *epoch = ASN1_TIME_set(NULL, 0);
    int64_t out = 0;
    if (epoch != NULL && ASN1_TIME_diff(&days, &secs, epoch, t)) out = (int64_t)days * 86400 + secs;
    ASN1_TIME_free(epoch);
    return out;
}

/* --- X509-SVID shape ------------------------------------------------------------------------ */

/* Checks the SVID rules that do not depend on the chain: exactly one URI SAN, a valid SPIFFE id,
 * not a CA, no certificate/CRL signing key usage. On success *id_out gets a heap copy of the id. */
static ward_tls_reason_t ward__svid_shape(X509 *leaf, char **id_out, const char **why)
{
    int crit = -1;
    GENERAL_NAMES *names = X509_get_ext_d2i(leaf, NID_subject_alt_name, &crit, NULL);
    const char *uri = NULL;
    size_t uri_len = 0;
    int uris = 0;
    ward_tls_reason_t r = WARD_REASON_NONE;

    if (names == NULL) {
        *why = crit == -2 ? "duplicate subjectAltName extensions" : "no URI SAN (not an SVID)";
        return WARD_REASON_BAD_CERTIFICATE;
    }
    for (size_t i = 0; i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        if (gn->type != GEN_URI) continue;
        uris++;
        uri = (const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier);
        uri_len = (size_t)ASN1_STRING_length(gn->d.uniformResourceIdentifier);
    }
    if (uris != 1) {
        *why = uris == 0 ? "no URI SAN (not an SVID)" : "more than one URI SAN";
        r = WARD_REASON_BAD_CERTIFICATE;
        goto out_names;
    }
    const char *spiffe_why = NULL;
    if (memchr(uri, '\0', uri_len) != NULL ||
        ward_spiffe_id_parse(uri, uri_len, NULL, &spiffe_why) < 0) {
        *why = "URI SAN is not a valid SPIFFE id";
        r = WARD_REASON_BAD_CERTIFICATE;
        goto out_names;
    }
    uint32_t flags = X509_get_extension_flags(leaf);
    if (flags & EXFLAG_INVALID) {
        *why = "certificate extensions do not parse";
        r = WARD_REASON_BAD_CERTIFICATE;
        goto out_names;
    }
    if (flags & EXFLAG_CA) {
        *why = "leaf certificate is a CA (basicConstraints cA=true)";
        r = WARD_REASON_BAD_CERTIFICATE;
        goto out_names;
    }
    if (flags & EXFLAG_KUSAGE) {
        uint32_t ku = X509_get_key_usage(leaf);
        if (ku & (KU_KEY_CERT_SIGN | KU_CRL_SIGN)) {
            *why = "leaf key usage allows certificate or CRL signing";
            r = WARD_REASON_BAD_CERTIFICATE;
            goto out_names;
        }
        if (!(ku & KU_DIGITAL_SIGNATURE)) {
            *why = "leaf key usage lacks digitalSignature";
            r = WARD_REASON_BAD_CERTIFICATE;
            goto out_names;
        }
    }
    if (id_out != NULL) {
        *id_out = ward_strndup(uri, uri_len);
        if (*id_out == NULL) {
            *why = "out of memory";
            r = WARD_REASON_PROTOCOL;
        }
    }
out_names:
    GENERAL_NAMES_free(names);
    return r;
}

static ward_tls_reason_t ward__map_x509_error(int err, const char **why)
{
    *why = X509_verify_cert_error_string(err);
    switch (err) {
    case X509_V_ERR_CERT_HAS_EXPIRED:
        return WARD_REASON_EXPIRED;
    case X509_V_ERR_CERT_NOT_YET_VALID:
        return WARD_REASON_NOT_YET_VALID;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
        return WARD_REASON_UNKNOWN_CA;
    default:
        return WARD_REASON_BAD_CERTIFICATE;
    }
}

/* Is the SPIFFE id `id` in the same trust domain as the snapshot's own id? */
static int ward__same_td(const ward_identity_t *self, const char *id)
{
    size_t n = 9 + self->td_len; /* "spiffe://" + td */
    return strncmp(id, self->spiffe_id, n) == 0 && (id[n] == '/' || id[n] == '\0');
}

ward_tls_reason_t ward_tls_verify_chain(const ward_identity_t *id, const uint8_t *const *der,
                                        const size_t *der_len, size_t n, const char *expected_id,
                                        int peer_is_server, const char **detail, char **peer_id)
{
    ward_tls_reason_t r = WARD_REASON_NONE;
    X509 *leaf = NULL;
    STACK_OF(X509) *inter = NULL;
    X509_STORE_CTX *vctx = NULL;
    char *spiffe = NULL;

    *detail = NULL;
    if (n == 0) {
        *detail = "no certificate presented";
        return peer_is_server ? WARD_REASON_BAD_CERTIFICATE : WARD_REASON_NO_CLIENT_CERT;
    }
    if (n > WARD_TLS_MAX_CHAIN) {
        *detail = "certificate chain too long";
        return WARD_REASON_BAD_CERTIFICATE;
    }
    const uint8_t *p = der[0];
    leaf = d2i_X509(NULL, &p, (long)der_len[0]);
    if (leaf == NULL || p != der[0] + der_len[0]) {
        *detail = "leaf certificate does not parse";
        r = WARD_REASON_BAD_CERTIFICATE;
        goto out;
    }
    inter = sk_X509_new_null();
    if (inter == NULL) goto out_nomem;
    for (size_t i = 1; i < n; i++) {
        p = der[i];
        X509 *c = d2i_X509(NULL, &p, (long)der_len[i]);
        if (c == NULL) {
            *detail = "intermediate certificate does not parse";
            r = WARD_REASON_BAD_CERTIFICATE;
            goto out;
        }
        if (!sk_X509_push(inter, c)) {
            X509_free(c);
            goto out_nomem;
        }
    }
    vctx = X509_STORE_CTX_new();
    if (vctx == NULL || !X509_STORE_CTX_init(vctx, id->store, leaf, inter)) goto out_nomem;
    X509_STORE_CTX_set_purpose(vctx,
                               peer_is_server ? X509_PURPOSE_SSL_SERVER : X509_PURPOSE_SSL_CLIENT);
    if (X509_verify_cert(vctx) != 1) {
        r = ward__map_x509_error(X509_STORE_CTX_get_error(vctx), detail);
        goto out;
    }
    r = ward__svid_shape(leaf, &spiffe, detail);
    if (r != WARD_REASON_NONE) goto out;
    if (!ward__same_td(id, spiffe)) {
        *detail = "peer SPIFFE id is outside this trust domain";
        r = WARD_REASON_SAN_MISMATCH;
    } else if (expected_id != NULL && strcmp(expected_id, spiffe) != 0) {
        *detail = "peer SPIFFE id is not the expected identity";
        r = WARD_REASON_SAN_MISMATCH;
    }
    /* Handed out on a mismatch too, so the refusal can say who the peer really was. */
    if (peer_id != NULL) {
        *peer_id = spiffe;
        spiffe = NULL;
    }
    goto out;

out_nomem:
    *detail = "out of memory during verification";
    r = WARD_REASON_PROTOCOL;
out:
    ward_free(spiffe);
    X509_STORE_CTX_free(vctx);
    sk_X509_pop_free(inter, X509_free);
    X509_free(leaf);
    ERR_clear_error();
    return r;
}

static uint8_t ward__alert_for(ward_tls_reason_t r)
{
    switch (r) {
    case WARD_REASON_EXPIRED:
        return SSL_AD_CERTIFICATE_EXPIRED;
    case WARD_REASON_NOT_YET_VALID:
        /* No alert says "not yet valid"; ward sidecars read certificate_unknown as this. */
        return SSL_AD_CERTIFICATE_UNKNOWN;
    case WARD_REASON_UNKNOWN_CA:
        return SSL_AD_UNKNOWN_CA;
    case WARD_REASON_SAN_MISMATCH:
        return SSL_AD_ACCESS_DENIED;
    default:
        return SSL_AD_BAD_CERTIFICATE;
    }
}

static int ward__chain_of(const STACK_OF(CRYPTO_BUFFER) * chain, const uint8_t **der, size_t *len)
{
    size_t n = chain ? sk_CRYPTO_BUFFER_num(chain) : 0;
    if (n > WARD_TLS_MAX_CHAIN) n = WARD_TLS_MAX_CHAIN + 1; /* rejected as too long */
    for (size_t i = 0; i < n && i < WARD_TLS_MAX_CHAIN; i++) {
        const CRYPTO_BUFFER *b = sk_CRYPTO_BUFFER_value(chain, i);
        der[i] = CRYPTO_BUFFER_data(b);
        len[i] = CRYPTO_BUFFER_len(b);
    }
    return (int)n;
}

static enum ssl_verify_result_t ward__verify_cb(SSL *ssl, uint8_t *out_alert)
{
    ward_tls_peer_t *peer = SSL_get_ex_data(ssl, ward__ex_peer);
    const ward_identity_t *id = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ward__ex_identity);
    const uint8_t *der[WARD_TLS_MAX_CHAIN];
    size_t len[WARD_TLS_MAX_CHAIN];
    int n = ward__chain_of(SSL_get0_peer_certificates(ssl), der, len);
    const char *detail = NULL;
    char *peer_id = NULL;

    if (peer == NULL || id == NULL) {
        *out_alert = SSL_AD_INTERNAL_ERROR;
        return ssl_verify_invalid;
    }
    ward_tls_reason_t r = ward_tls_verify_chain(id, der, len, (size_t)n, peer->expected_id,
                                                !SSL_is_server(ssl), &detail, &peer_id);
    ward_free(peer->peer_id);
    peer->peer_id = peer_id;
    if (r != WARD_REASON_NONE) {
        peer->reason = r;
        peer->detail = detail;
        *out_alert = ward__alert_for(r);
        return ssl_verify_invalid;
    }
    return ssl_verify_ok;
}

/* The server picks, in the client's order of preference, the first protocol ward speaks between
 * sidecars; peer->alpn, when set, is the only one it accepts. No match: no ALPN (the proxy then
 * sniffs the decrypted bytes). */
static int ward__alpn_select(SSL *ssl, const uint8_t **out, uint8_t *out_len, const uint8_t *in,
                             unsigned in_len, void *arg)
{
    static const char *const supported[] = {"h2", "http/1.1", WARD_ALPN_TCP};
    const ward_tls_peer_t *peer = SSL_get_ex_data(ssl, ward__ex_peer);
    (void)arg;
    for (unsigned i = 0; i < in_len;) {
        unsigned l = in[i];
        if (i + 1 + l > in_len) break;
        for (size_t k = 0; k < sizeof(supported) / sizeof(supported[0]); k++) {
            const char *proto = supported[k];
            if (peer != NULL && peer->alpn != NULL && strcmp(peer->alpn, proto) != 0) continue;
            if (l == strlen(proto) && memcmp(in + i + 1, proto, l) == 0) {
                *out = in + i + 1;
                *out_len = (uint8_t)l;
                return SSL_TLSEXT_ERR_OK;
            }
        }
        i += 1 + l;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

const char *ward_tls_alpn(const SSL *ssl)
{
    static const char *const known[] = {"h2", "http/1.1", WARD_ALPN_TCP};
    const uint8_t *p = NULL;
    unsigned len = 0;
    SSL_get0_alpn_selected(ssl, &p, &len);
    for (size_t k = 0; k < sizeof(known) / sizeof(known[0]); k++)
        if (len == strlen(known[k]) && memcmp(p, known[k], len) == 0) return known[k];
    return NULL;
}

int ward_tls_peer_cert_sha256(const SSL *ssl, uint8_t out[32])
{
    const STACK_OF(CRYPTO_BUFFER) *chain = SSL_get0_peer_certificates(ssl);
    if (chain == NULL || sk_CRYPTO_BUFFER_num(chain) == 0) return WARD_ECERT;
    const CRYPTO_BUFFER *b = sk_CRYPTO_BUFFER_value(chain, 0);
    SHA256(CRYPTO_BUFFER_data(b), CRYPTO_BUFFER_len(b), out);
    return 0;
}

static int ward__new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    ward_tls_peer_t *peer = SSL_get_ex_data(ssl, ward__ex_peer);
    if (peer == NULL || peer->on_new_session == NULL) return 0;
    return peer->on_new_session(peer, sess);
}

/* --- loading -------------------------------------------------------------------------------- */

int ward_pem_read_certs(const char *file, uint8_t ***der_out, size_t **len_out)
{
    BIO *bio = BIO_new_file(file, "r");
    uint8_t **der = NULL;
    size_t *lens = NULL;
    int n = 0, cap = 0, rc;

    if (bio == NULL) {
        ERR_clear_error();
        return errno ? -errno : WARD_EIO;
    }
    for (;;) {
        char *name = NULL, *header = NULL;
        uint8_t *data = NULL;
        long len = 0;
        if (!PEM_read_bio(bio, &name, &header, &data, &len)) {
            uint32_t e = ERR_peek_last_error();
            ERR_clear_error();
            if (ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE) break;
            rc = WARD_EPARSE;
            goto fail;
        }
        int is_cert = strcmp(name, "CERTIFICATE") == 0;
        OPENSSL_free(name);
        OPENSSL_free(header);
        if (!is_cert) {
            OPENSSL_free(data);
            continue;
        }
        if (n == cap) {
            int ncap = cap ? cap * 2 : 4;
            uint8_t **nd = ward_realloc(der, sizeof(*nd) * (size_t)ncap);
            if (nd == NULL) {
                OPENSSL_free(data);
                rc = WARD_ENOMEM;
                goto fail;
            }
            der = nd;
            size_t *nl = ward_realloc(lens, sizeof(*nl) * (size_t)ncap);
            if (nl == NULL) {
                OPENSSL_free(data);
                rc = WARD_ENOMEM;
                goto fail;
            }
            lens = nl;
            cap = ncap;
        }
        der[n] = data;
        lens[n] = (size_t)len;
        n++;
    }
    BIO_free(bio);
    if (n == 0) {
        ward_free(der);
        ward_free(lens);
        return WARD_EPARSE;
    }
    *der_out = der;
    *len_out = lens;
    return n;
fail:
    for (int i = 0; i < n; i++)
        OPENSSL_free(der[i]);
    ward_free(der);
    ward_free(lens);
    BIO_free(bio);
    return rc;
}

static void ward__free_der(uint8_t **der, size_t *lens, int n)
{
    for (int i = 0; i < n; i++)
        OPENSSL_free(der[i]);
    ward_free(der);
    ward_free(lens);
}

static SSL_CTX *ward__ctx_new(ward_identity_t *id, int is_server, CRYPTO_BUFFER *const *chain,
                              size_t chain_len, EVP_PKEY *key)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_with_buffers_method());
    if (ctx == NULL) return NULL;
    SSL_CTX_set0_buffer_pool(ctx, ward__pool);
    if (!SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
        !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) ||
        !SSL_CTX_set_strict_cipher_list(ctx, WARD_TLS12_CIPHERS) ||
        !SSL_CTX_set1_curves_list(ctx, "X25519:P-256") ||
        (chain_len > 0 && !SSL_CTX_set_chain_and_key(ctx, chain, chain_len, key, NULL)) ||
        !SSL_CTX_set_ex_data(ctx, ward__ex_identity, id))
        goto fail;
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (is_server) {
        static const uint8_t sid_ctx[] = "ward";
        SSL_CTX_set_custom_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT,
                                  ward__verify_cb);
        SSL_CTX_set_alpn_select_cb(ctx, ward__alpn_select, NULL);
        if (!SSL_CTX_set_session_id_context(ctx, sid_ctx, sizeof(sid_ctx) - 1)) goto fail;
        /* Stateless tickets only (no server-side cache to grow); the ticket key is per snapshot,
         * so a reload ends old sessions. */
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_SERVER | SSL_SESS_CACHE_NO_INTERNAL);
    } else {
        SSL_CTX_set_custom_verify(ctx, SSL_VERIFY_PEER, ward__verify_cb);
        SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
        SSL_CTX_sess_set_new_cb(ctx, ward__new_session_cb);
    }
    SSL_CTX_set_timeout(ctx, WARD_SESSION_LIFETIME_S);
    SSL_CTX_set_session_psk_dhe_timeout(ctx, WARD_SESSION_LIFETIME_S);
    return ctx;
fail:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    return NULL;
}

static void ward__identity_free(ward_identity_t *id)
{
    SSL_CTX_free(id->server);
    SSL_CTX_free(id->client);
    X509_STORE_free(id->store);
    ward_free(id->spiffe_id);
    ward_free(id);
}

/* The certificate chain as CRYPTO_BUFFERs of the process-wide pool (one shared copy of every
 * certificate). On failure err is set; the buffers made so far stay in chain for the caller's
 * cleanup. Returns 0 or WARD_ENOMEM. */
static int ward__chain_buffers(CRYPTO_BUFFER **chain, const uint8_t *const *der, const size_t *len,
                               size_t n, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        chain[i] = CRYPTO_BUFFER_new(der[i], len[i], ward__pool);
        if (chain[i] == NULL) {
            snprintf(err, errlen, "out of memory");
            return WARD_ENOMEM;
        }
    }
    return 0;
}

int ward_identity_new(const uint8_t *const *chain_der, const size_t *chain_len, size_t nchain,
                      EVP_PKEY *key, const uint8_t *const *roots_der, const size_t *roots_len,
                      size_t nroots, ward_identity_t **out, char *err, size_t errlen)
{
    int rc = 0;
    X509 *leaf = NULL;
    CRYPTO_BUFFER *chain[WARD_TLS_MAX_CHAIN] = {0};
    const char *why = NULL;
    ward_identity_t *id = NULL;

    pthread_once(&ward__tls_once, ward__tls_init_once);
    if (ward__pool == NULL) {
        snprintf(err, errlen, "out of memory");
        return WARD_ENOMEM;
    }
    if (nchain == 0 || nchain > WARD_TLS_MAX_CHAIN) {
        snprintf(err, errlen, "certificate chain must hold 1 to %d certificates",
                 WARD_TLS_MAX_CHAIN);
        return WARD_ECERT;
    }
    if (nroots == 0) {
        snprintf(err, errlen, "trust bundle is empty");
        return WARD_EBUNDLE;
    }
    const uint8_t *p = chain_der[0];
    leaf = d2i_X509(NULL, &p, (long)chain_len[0]);
    if (leaf == NULL) {
        snprintf(err, errlen, "leaf certificate does not parse");
        rc = WARD_ECERT;
        goto out;
    }
    if (key == NULL || !X509_check_private_key(leaf, key)) {
        snprintf(err, errlen, "private key does not match the leaf certificate");
        rc = WARD_EKEYMISMATCH;
        goto out;
    }

    id = ward_calloc(1, sizeof(*id));
    if (id == NULL || (id->store = X509_STORE_new()) == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = WARD_ENOMEM;
        goto out;
    }
    atomic_init(&id->refs, 1);
    for (size_t i = 0; i < nroots; i++) {
        p = roots_der[i];
        X509 *root = d2i_X509(NULL, &p, (long)roots_len[i]);
        if (root == NULL || !(X509_get_extension_flags(root) & EXFLAG_CA)) {
            snprintf(err, errlen, "trust bundle certificate #%zu is %s", i + 1,
                     root ? "not a CA certificate" : "malformed");
            X509_free(root);
            rc = WARD_EBUNDLE;
            goto out;
        }
        int ok = X509_STORE_add_cert(id->store, root);
        X509_free(root);
        if (!ok) {
            snprintf(err, errlen, "trust bundle certificate #%zu could not be added", i + 1);
            rc = WARD_EBUNDLE;
            goto out;
        }
    }

    id->nroots = nroots;
    ward_tls_reason_t shape = ward__svid_shape(leaf, &id->spiffe_id, &why);
    if (shape != WARD_REASON_NONE) {
        snprintf(err, errlen, "not a valid X509-SVID: %s", why);
        rc = WARD_ESPIFFE;
        goto out;
    }
    ward_spiffe_id_t parsed;
    ward_spiffe_id_parse(id->spiffe_id, strlen(id->spiffe_id), &parsed, NULL);
    id->td_len = parsed.td_len;
    id->not_before = ward_asn1_time_to_unix(X509_get0_notBefore(leaf));
    id->not_after = ward_asn1_time_to_unix(X509_get0_notAfter(leaf));

    /* Our own chain must verify against our bundle: catches a half-rotated set of files. */
    char *self_id = NULL;
    ward_tls_reason_t self =
        ward_tls_verify_chain(id, chain_der, chain_len, nchain, NULL, 1, &why, &self_id);
    ward_free(self_id);
    if (self != WARD_REASON_NONE) {
        snprintf(err, errlen, "certificate does not verify against the trust bundle: %s (%s)",
                 ward_tls_reason_name(self), why);
        rc = WARD_ECERT;
        goto out;
    }

    if ((rc = ward__chain_buffers(chain, chain_der, chain_len, nchain, err, errlen)) < 0) goto out;
    id->server = ward__ctx_new(id, 1, chain, nchain, key);
    id->client = ward__ctx_new(id, 0, chain, nchain, key);
    if (id->server == NULL || id->client == NULL) {
        snprintf(err, errlen, "could not build TLS contexts");
        rc = WARD_ETLS;
        goto out;
    }
    id->generation = atomic_fetch_add(&ward__generation, 1) + 1;
    *out = id;
    id = NULL;

out:
    for (int i = 0; i < WARD_TLS_MAX_CHAIN; i++)
        CRYPTO_BUFFER_free(chain[i]);
    if (id != NULL) ward__identity_free(id);
    X509_free(leaf);
    ERR_clear_error();
    return rc;
}

void ward_pem_free(uint8_t *der)
{
    OPENSSL_free(der);
}

void ward_key_free(EVP_PKEY *key)
{
    EVP_PKEY_free(key);
}

int ward_identity_from_pkcs8(const uint8_t *const *chain_der, const size_t *chain_len,
                             size_t nchain, const uint8_t *key_der, size_t key_len,
                             const uint8_t *const *roots_der, const size_t *roots_len,
                             size_t nroots, ward_identity_t **out, char *err, size_t errlen)
{
    CBS cbs;
    CBS_init(&cbs, key_der, key_len);
    EVP_PKEY *key = EVP_parse_private_key(&cbs);
    if (key == NULL || CBS_len(&cbs) != 0) {
        EVP_PKEY_free(key);
        ERR_clear_error();
        snprintf(err, errlen, "private key is not valid PKCS#8 DER");
        return WARD_EKEY;
    }
    int rc = ward_identity_new(chain_der, chain_len, nchain, key, roots_der, roots_len, nroots, out,
                               err, errlen);
    EVP_PKEY_free(key);
    return rc;
}

int ward_identity_trust_only(const uint8_t *const *roots_der, const size_t *roots_len,
                             size_t nroots, const char *trust_domain, ward_identity_t **out,
                             char *err, size_t errlen)
{
    int rc = 0;
    const char *why = NULL;
    ward_identity_t *id = NULL;

    pthread_once(&ward__tls_once, ward__tls_init_once);
    if (ward_spiffe_td_validate(trust_domain, strlen(trust_domain), &why) < 0) {
        snprintf(err, errlen, "trust domain '%s': %s", trust_domain, why);
        return WARD_ESPIFFE;
    }
    if (nroots == 0) {
        snprintf(err, errlen, "trust bundle is empty");
        return WARD_EBUNDLE;
    }
    id = ward_calloc(1, sizeof(*id));
    if (id == NULL || (id->store = X509_STORE_new()) == NULL) {
        rc = WARD_ENOMEM;
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    atomic_init(&id->refs, 1);
    for (size_t i = 0; i < nroots; i++) {
        const uint8_t *p = roots_der[i];
        X509 *root = d2i_X509(NULL, &p, (long)roots_len[i]);
        int ok = root != NULL && (X509_get_extension_flags(root) & EXFLAG_CA) &&
                 X509_STORE_add_cert(id->store, root);
        X509_free(root);
        if (!ok) {
            snprintf(err, errlen, "trust bundle certificate #%zu is not a usable CA certificate",
                     i + 1);
            rc = WARD_EBUNDLE;
            goto out;
        }
    }
    size_t tdl = strlen(trust_domain);
    id->spiffe_id = ward_malloc(9 + tdl + 1);
    if (id->spiffe_id == NULL) {
        rc = WARD_ENOMEM;
        snprintf(err, errlen, "out of memory");
        goto out;
    }
    memcpy(id->spiffe_id, "spiffe://", 9);
    memcpy(id->spiffe_id + 9, trust_domain, tdl + 1);
    id->td_len = tdl;
    id->client = ward__ctx_new(id, 0, NULL, 0, NULL);
    if (id->client == NULL) {
        snprintf(err, errlen, "could not build the TLS context");
        rc = WARD_ETLS;
        goto out;
    }
    id->generation = atomic_fetch_add(&ward__generation, 1) + 1;
    *out = id;
    id = NULL;
out:
    if (id != NULL) ward__identity_free(id);
    ERR_clear_error();
    return rc;
}

int ward_identity_load(const char *cert_file, const char *key_file, const char *ca_file,
                       ward_identity_t **out, char *err, size_t errlen)
{
    uint8_t **cder = NULL, **bder = NULL;
    size_t *clen = NULL, *blen = NULL;
    int ncert = 0, nbundle = 0, rc = 0;
    EVP_PKEY *key = NULL;
    BIO *kbio = NULL;
    char why[384];

    ncert = ward_pem_read_certs(cert_file, &cder, &clen);
    if (ncert < 0) {
        snprintf(err, errlen, "%s: no readable PEM certificate (%s)", cert_file,
                 ward_strerror(ncert));
        rc = WARD_ECERT;
        goto out;
    }
    kbio = BIO_new_file(key_file, "r");
    if (kbio == NULL || (key = PEM_read_bio_PrivateKey(kbio, NULL, NULL, NULL)) == NULL) {
        snprintf(err, errlen, "%s: no readable PEM private key", key_file);
        rc = WARD_EKEY;
        goto out;
    }
    nbundle = ward_pem_read_certs(ca_file, &bder, &blen);
    if (nbundle < 0) {
        snprintf(err, errlen, "%s: no readable PEM certificate in the trust bundle (%s)", ca_file,
                 ward_strerror(nbundle));
        rc = WARD_EBUNDLE;
        goto out;
    }
    rc = ward_identity_new((const uint8_t *const *)cder, clen, (size_t)ncert, key,
                           (const uint8_t *const *)bder, blen, (size_t)nbundle, out, why,
                           sizeof(why));
    if (rc < 0) {
        const char *subject = rc == WARD_EKEYMISMATCH ? key_file
                              : rc == WARD_EBUNDLE    ? ca_file
                                                      : cert_file;
        snprintf(err, errlen, "%s: %s", subject, why);
    }
out:
    EVP_PKEY_free(key);
    BIO_free(kbio);
    if (ncert > 0) ward__free_der(cder, clen, ncert);
    if (nbundle > 0) ward__free_der(bder, blen, nbundle);
    ERR_clear_error();
    return rc;
}

int ward_identity_load_server(const char *cert_file, const char *key_file, ward_identity_t **out,
                              char *err, size_t errlen)
{
    uint8_t **cder = NULL;
    size_t *clen = NULL;
    int ncert = 0, rc = 0;
    EVP_PKEY *key = NULL;
    BIO *kbio = NULL;
    X509 *leaf = NULL;
    CRYPTO_BUFFER *chain[WARD_TLS_MAX_CHAIN] = {0};
    ward_identity_t *id = NULL;

    pthread_once(&ward__tls_once, ward__tls_init_once);
    ncert = ward_pem_read_certs(cert_file, &cder, &clen);
    if (ncert < 0) {
        snprintf(err, errlen, "%s: no readable PEM certificate (%s)", cert_file,
                 ward_strerror(ncert));
        rc = WARD_ECERT;
        goto out;
    }
    if (ncert > WARD_TLS_MAX_CHAIN) {
        snprintf(err, errlen, "%s: more than %d certificates", cert_file, WARD_TLS_MAX_CHAIN);
        rc = WARD_ECERT;
        goto out;
    }
    kbio = BIO_new_file(key_file, "r");
    if (kbio == NULL || (key = PEM_read_bio_PrivateKey(kbio, NULL, NULL, NULL)) == NULL) {
        snprintf(err, errlen, "%s: no readable PEM private key", key_file);
        rc = WARD_EKEY;
        goto out;
    }
    const uint8_t *p = cder[0];
    leaf = d2i_X509(NULL, &p, (long)clen[0]);
    if (leaf == NULL) {
        snprintf(err, errlen, "%s: the first certificate does not parse", cert_file);
        rc = WARD_ECERT;
        goto out;
    }
    if (!X509_check_private_key(leaf, key)) {
        snprintf(err, errlen, "%s: does not match the certificate in %s", key_file, cert_file);
        rc = WARD_EKEYMISMATCH;
        goto out;
    }
    id = ward_calloc(1, sizeof(*id));
    if (id == NULL || (id->spiffe_id = ward_strdup("")) == NULL || ward__pool == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = WARD_ENOMEM;
        goto out;
    }
    atomic_init(&id->refs, 1);
    id->not_before = ward_asn1_time_to_unix(X509_get0_notBefore(leaf));
    id->not_after = ward_asn1_time_to_unix(X509_get0_notAfter(leaf));
    rc = ward__chain_buffers(chain, (const uint8_t *const *)cder, clen, (size_t)ncert, err, errlen);
    if (rc < 0) goto out;
    id->server = ward__ctx_new(id, 1, chain, (size_t)ncert, key);
    if (id->server == NULL) {
        snprintf(err, errlen, "%s: could not build the TLS context", cert_file);
        rc = WARD_ETLS;
        goto out;
    }
    id->generation = atomic_fetch_add(&ward__generation, 1) + 1;
    *out = id;
    id = NULL;
out:
    for (int i = 0; i < WARD_TLS_MAX_CHAIN; i++)
        CRYPTO_BUFFER_free(chain[i]);
    if (id != NULL) ward__identity_free(id);
    X509_free(leaf);
    EVP_PKEY_free(key);
    BIO_free(kbio);
    if (ncert > 0) ward__free_der(cder, clen, ncert);
    ERR_clear_error();
    return rc;
}

ward_identity_t *ward_identity_ref(ward_identity_t *id)
{
    atomic_fetch_add_explicit(&id->refs, 1, memory_order_relaxed);
    return id;
}

void ward_identity_unref(ward_identity_t *id)
{
    if (id != NULL && atomic_fetch_sub_explicit(&id->refs, 1, memory_order_acq_rel) == 1)
        ward__identity_free(id);
}

SSL_CTX *ward_identity_server_ctx(const ward_identity_t *id)
{
    return id->server;
}

SSL_CTX *ward_identity_client_ctx(const ward_identity_t *id)
{
    return id->client;
}

const char *ward_identity_spiffe_id(const ward_identity_t *id)
{
    return id->spiffe_id;
}

int64_t ward_identity_not_after(const ward_identity_t *id)
{
    return id->not_after;
}

int64_t ward_identity_not_before(const ward_identity_t *id)
{
    return id->not_before;
}

size_t ward_identity_bundle_size(const ward_identity_t *id)
{
    return id->nroots;
}

uint64_t ward_identity_generation(const ward_identity_t *id)
{
    return id->generation;
}

/* --- per connection ------------------------------------------------------------------------- */

SSL *ward_tls_new(const ward_identity_t *id, int is_server, ward_tls_io_t *io,
                  ward_tls_peer_t *peer)
{
    BIO *rbio = NULL, *wbio = NULL;
    SSL_CTX *ctx = is_server ? id->server : id->client;
    if (ctx == NULL) return NULL;
    SSL *ssl = SSL_new(ctx);
    if (ssl == NULL || ward__rbio_method == NULL) goto fail;
    rbio = BIO_new(ward__rbio_method);
    wbio = BIO_new_socket(io->fd, BIO_NOCLOSE);
    if (rbio == NULL || wbio == NULL) goto fail;
    BIO_set_data(rbio, io);
    SSL_set_bio(ssl, rbio, wbio); /* the SSL owns both now */
    rbio = wbio = NULL;
    if (!SSL_set_ex_data(ssl, ward__ex_peer, peer)) goto fail;
    if (is_server) {
        SSL_set_accept_state(ssl);
        if (peer->no_client_auth) SSL_set_custom_verify(ssl, SSL_VERIFY_NONE, NULL);
    } else {
        SSL_set_connect_state(ssl);
        uint8_t list[64];
        const char *proto = peer->alpn ? peer->alpn : WARD_ALPN_TCP;
        size_t plen = strlen(proto);
        if (plen == 0 || plen >= sizeof(list)) goto fail;
        list[0] = (uint8_t)plen;
        memcpy(list + 1, proto, plen);
        if (SSL_set_alpn_protos(ssl, list, plen + 1) != 0) goto fail;
    }
    /* No renegotiation: the handshake configuration can go once the handshake is done. */
    SSL_set_shed_handshake_config(ssl, 1);
    return ssl;
fail:
    ERR_clear_error();
    BIO_free(rbio);
    BIO_free(wbio);
    SSL_free(ssl);
    return NULL;
}

int ward_tls_finish(SSL *ssl, ward_tls_peer_t *peer)
{
    if (!SSL_session_reused(ssl)) {
        if (peer->peer_id != NULL) return 0;
        peer->reason = WARD_REASON_BAD_CERTIFICATE;
        peer->detail = "no verified peer identity";
        return WARD_ETLS;
    }
    /* Resumed: the chain was verified when the session was made under this same snapshot (ticket
     * keys are per snapshot); re-check the time window and the identity now. */
    const STACK_OF(CRYPTO_BUFFER) *chain = SSL_get0_peer_certificates(ssl);
    if (chain == NULL || sk_CRYPTO_BUFFER_num(chain) == 0) {
        peer->reason =
            SSL_is_server(ssl) ? WARD_REASON_NO_CLIENT_CERT : WARD_REASON_BAD_CERTIFICATE;
        peer->detail = "resumed session carries no peer certificate";
        return WARD_ETLS;
    }
    const CRYPTO_BUFFER *b = sk_CRYPTO_BUFFER_value(chain, 0);
    const uint8_t *p = CRYPTO_BUFFER_data(b);
    X509 *leaf = d2i_X509(NULL, &p, (long)CRYPTO_BUFFER_len(b));
    char *spiffe = NULL;
    const char *why = NULL;
    int rc = WARD_ETLS;
    if (leaf == NULL) {
        peer->reason = WARD_REASON_BAD_CERTIFICATE;
        peer->detail = "resumed peer certificate does not parse";
        goto out;
    }
    if (X509_cmp_current_time(X509_get0_notAfter(leaf)) <= 0) {
        peer->reason = WARD_REASON_EXPIRED;
        peer->detail = "resumed session's peer certificate has expired";
        goto out;
    }
    if (X509_cmp_current_time(X509_get0_notBefore(leaf)) >= 0) {
        peer->reason = WARD_REASON_NOT_YET_VALID;
        peer->detail = "resumed session's peer certificate is not yet valid";
        goto out;
    }
    ward_tls_reason_t r = ward__svid_shape(leaf, &spiffe, &why);
    if (r != WARD_REASON_NONE) {
        peer->reason = r;
        peer->detail = why;
        goto out;
    }
    if (peer->expected_id != NULL && strcmp(peer->expected_id, spiffe) != 0) {
        peer->reason = WARD_REASON_SAN_MISMATCH;
        peer->detail = "resumed peer SPIFFE id is not the expected identity";
        goto out;
    }
    ward_free(peer->peer_id);
    peer->peer_id = spiffe;
    spiffe = NULL;
    rc = 0;
out:
    ward_free(spiffe);
    X509_free(leaf);
    ERR_clear_error();
    return rc;
}

ward_tls_reason_t ward_tls_classify(SSL *ssl, ward_tls_peer_t *peer, int ssl_err,
                                    const char **detail)
{
    ward_tls_reason_t r = WARD_REASON_PROTOCOL;
    uint32_t e = ERR_peek_error();
    *detail = "TLS protocol error";

    if (peer->reason != WARD_REASON_NONE) {
        r = peer->reason;
        *detail = peer->detail ? peer->detail : ward_tls_reason_name(r);
    } else if (ERR_GET_LIB(e) == ERR_LIB_SSL) {
        int reason = ERR_GET_REASON(e);
        if (reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
            r = WARD_REASON_NO_CLIENT_CERT;
            *detail = "peer did not present a client certificate";
        } else if (reason >= SSL_AD_REASON_OFFSET && reason < SSL_AD_REASON_OFFSET + 256) {
            int alert = reason - SSL_AD_REASON_OFFSET;
            peer->by_peer = 1;
            *detail = SSL_alert_desc_string_long(alert);
            switch (alert) {
            case SSL_AD_CERTIFICATE_EXPIRED:
                r = WARD_REASON_EXPIRED;
                break;
            case SSL_AD_CERTIFICATE_UNKNOWN:
                r = WARD_REASON_NOT_YET_VALID;
                break;
            case SSL_AD_UNKNOWN_CA:
                r = WARD_REASON_UNKNOWN_CA;
                break;
            case SSL_AD_ACCESS_DENIED:
                r = WARD_REASON_SAN_MISMATCH;
                break;
            case SSL_AD_BAD_CERTIFICATE:
            case SSL_AD_UNSUPPORTED_CERTIFICATE:
            case SSL_AD_CERTIFICATE_REVOKED:
                r = WARD_REASON_BAD_CERTIFICATE;
                break;
            case SSL_AD_CERTIFICATE_REQUIRED:
                r = WARD_REASON_NO_CLIENT_CERT;
                break;
            default:
                r = WARD_REASON_PROTOCOL;
                break;
            }
        } else {
            *detail = ERR_reason_error_string(e);
            if (*detail == NULL) *detail = "TLS protocol error";
        }
    } else if (ssl_err == SSL_ERROR_SYSCALL || ssl_err == SSL_ERROR_ZERO_RETURN) {
        *detail = "connection closed during the TLS handshake";
    }
    ERR_clear_error();
    return r;
}

void ward_tls_peer_reset(ward_tls_peer_t *peer)
{
    ward_free(peer->peer_id);
    peer->peer_id = NULL;
}

/* --- non-blocking I/O ----------------------------------------------------------------------- */

static ssize_t ward__io_result(SSL *ssl, int ret)
{
    switch (SSL_get_error(ssl, ret)) {
    case SSL_ERROR_WANT_READ:
        return WARD_IO_WANT_READ;
    case SSL_ERROR_WANT_WRITE:
        return WARD_IO_WANT_WRITE;
    case SSL_ERROR_ZERO_RETURN:
        return WARD_IO_EOF;
    case SSL_ERROR_SYSCALL:
        /* ret == 0: the transport ended without close_notify (a truncation); treated as EOF, the
         * way a TCP proxy must, with errno telling a reset apart. */
        if (ret == 0 || errno == 0) return WARD_IO_EOF;
        return WARD_IO_ERROR;
    default:
        return WARD_IO_ERROR;
    }
}

ssize_t ward_tls_read(SSL *ssl, void *buf, size_t n)
{
    errno = 0;
    int r = SSL_read(ssl, buf, n > INT32_MAX ? INT32_MAX : (int)n);
    return r > 0 ? r : ward__io_result(ssl, r);
}

ssize_t ward_tls_write(SSL *ssl, const void *buf, size_t n)
{
    errno = 0;
    int r = SSL_write(ssl, buf, n > INT32_MAX ? INT32_MAX : (int)n);
    return r > 0 ? r : ward__io_result(ssl, r);
}

int ward_tls_handshake(SSL *ssl, ward_tls_peer_t *peer, ward_tls_reason_t *reason,
                       const char **detail)
{
    errno = 0;
    int r = SSL_do_handshake(ssl);
    if (r == 1) return 1;
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_READ) return WARD_IO_WANT_READ;
    if (e == SSL_ERROR_WANT_WRITE) return WARD_IO_WANT_WRITE;
    *reason = ward_tls_classify(ssl, peer, e, detail);
    return WARD_IO_ERROR;
}

int ward_tls_shutdown(SSL *ssl)
{
    errno = 0;
    int r = SSL_shutdown(ssl);
    if (r >= 0) return 0;
    ssize_t e = ward__io_result(ssl, r);
    ERR_clear_error();
    return e == WARD_IO_EOF ? 0 : (int)e;
}

int ward_tls_session_reused(const SSL *ssl)
{
    return SSL_session_reused(ssl);
}

const char *ward_tls_version(const SSL *ssl)
{
    return SSL_get_version(ssl);
}

const char *ward_tls_cipher(const SSL *ssl)
{
    const SSL_CIPHER *c = SSL_get_current_cipher(ssl);
    return c ? SSL_CIPHER_standard_name(c) : "";
}

void ward_tls_free(SSL *ssl)
{
    SSL_free(ssl);
}

void ward_tls_use_session(SSL *ssl, SSL_SESSION *sess)
{
    if (sess != NULL && SSL_SESSION_is_resumable(sess)) SSL_set_session(ssl, sess);
}

void ward_tls_session_free(SSL_SESSION *sess)
{
    SSL_SESSION_free(sess);
}

/* --- CSRs ------------------------------------------------------------------------------------ */

int ward_csr_new(const char *spiffe_id, EVP_PKEY **key_out, uint8_t **csr_der, size_t *csr_len)
{
    EVP_PKEY_CTX *kctx = EVP_PKEY_CTX_new_id(EVP_PKEY_EC, NULL);
    EVP_PKEY *key = NULL;
    X509_REQ *req = X509_REQ_new();
    GENERAL_NAMES *names = NULL;
    GENERAL_NAME *gn = NULL;
    ASN1_IA5STRING *uri = NULL;
    STACK_OF(X509_EXTENSION) *exts = NULL;
    X509_EXTENSION *ext = NULL;
    uint8_t *der = NULL;
    int n, rc = WARD_ENOMEM;

    *key_out = NULL;
    *csr_der = NULL;
    *csr_len = 0;
    if (spiffe_id != NULL && ward_spiffe_id_parse(spiffe_id, strlen(spiffe_id), NULL, NULL) < 0) {
        rc = WARD_ESPIFFE;
        goto out;
    }
    if (kctx == NULL || req == NULL || EVP_PKEY_keygen_init(kctx) != 1 ||
        EVP_PKEY_CTX_set_ec_paramgen_curve_nid(kctx, NID_X9_62_prime256v1) != 1 ||
        EVP_PKEY_keygen(kctx, &key) != 1)
        goto out;
    /* Without a requested id the CSR carries no SAN: the agent puts the attested id in. */
    if (spiffe_id == NULL) {
        if (!X509_REQ_set_version(req, X509_REQ_VERSION_1) || !X509_REQ_set_pubkey(req, key) ||
            !X509_REQ_sign(req, key, EVP_sha256()))
            goto out;
        goto encode;
    }
    names = GENERAL_NAMES_new();
    gn = GENERAL_NAME_new();
    uri = ASN1_IA5STRING_new();
    if (names == NULL || gn == NULL || uri == NULL ||
        !ASN1_STRING_set(uri, spiffe_id, (int)strlen(spiffe_id)))
        goto out;
    GENERAL_NAME_set0_value(gn, GEN_URI, uri);
    uri = NULL;
    if (!sk_GENERAL_NAME_push(names, gn)) goto out;
    gn = NULL;
    exts = sk_X509_EXTENSION_new_null();
    ext = X509V3_EXT_i2d(NID_subject_alt_name, 0, names);
    if (exts == NULL || ext == NULL || !sk_X509_EXTENSION_push(exts, ext)) goto out;
    ext = NULL;
    /* The subject stays empty: the identity is the URI SAN, which the agent checks. */
    if (!X509_REQ_set_version(req, X509_REQ_VERSION_1) || !X509_REQ_set_pubkey(req, key) ||
        !X509_REQ_add_extensions(req, exts) || !X509_REQ_sign(req, key, EVP_sha256()))
        goto out;
encode:
    n = i2d_X509_REQ(req, NULL);
    if (n <= 0) goto out;
    der = ward_malloc((size_t)n);
    uint8_t *p;
    p = der;
    if (der == NULL || i2d_X509_REQ(req, &p) != n) goto out;
    *csr_der = der;
    *csr_len = (size_t)n;
    *key_out = key;
    der = NULL;
    key = NULL;
    rc = 0;
out:
    ward_free(der);
    X509_EXTENSION_free(ext);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    ASN1_IA5STRING_free(uri);
    GENERAL_NAME_free(gn);
    GENERAL_NAMES_free(names);
    X509_REQ_free(req);
    EVP_PKEY_free(key);
    EVP_PKEY_CTX_free(kctx);
    ERR_clear_error();
    return rc;
}

/* --- inspection (wardctl) ------------------------------------------------------------------- */

int ward_cert_inspect(const char *file, ward_cert_info_t *info, char *err, size_t errlen)
{
    uint8_t **der = NULL;
    size_t *len = NULL;
    memset(info, 0, sizeof(*info));
    int n = ward_pem_read_certs(file, &der, &len);
    if (n < 0) {
        snprintf(err, errlen, "no readable PEM certificate (%s)", ward_strerror(n));
        return WARD_ECERT;
    }
    const uint8_t *p = der[0];
    X509 *leaf = d2i_X509(NULL, &p, (long)len[0]);
    int rc = 0;
    if (leaf == NULL) {
        snprintf(err, errlen, "the first certificate does not parse");
        rc = WARD_ECERT;
        goto out;
    }
    info->chain_len = n;
    info->not_before = ward_asn1_time_to_unix(X509_get0_notBefore(leaf));
    info->not_after = ward_asn1_time_to_unix(X509_get0_notAfter(leaf));
    X509_NAME_oneline(X509_get_subject_name(leaf), info->subject, sizeof(info->subject));
    X509_NAME_oneline(X509_get_issuer_name(leaf), info->issuer, sizeof(info->issuer));
    GENERAL_NAMES *names = X509_get_ext_d2i(leaf, NID_subject_alt_name, NULL, NULL);
    for (size_t i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        if (gn->type != GEN_URI) continue;
        int ul = ASN1_STRING_length(gn->d.uniformResourceIdentifier);
        snprintf(info->spiffe_id, sizeof(info->spiffe_id), "%.*s", ul,
                 (const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier));
        break;
    }
    GENERAL_NAMES_free(names);
out:
    X509_free(leaf);
    ward__free_der(der, len, n);
    ERR_clear_error();
    return rc;
}

int ward_cert_check(const char *file, const char *bundle_file, const char *expected_id,
                    ward_tls_reason_t *reason, const char **detail, char **peer_id, char *err,
                    size_t errlen)
{
    uint8_t **cder = NULL, **bder = NULL;
    size_t *clen = NULL, *blen = NULL;
    ward_identity_t *trust = NULL;
    ward_spiffe_id_t parsed;
    char td[WARD_SPIFFE_TD_MAX + 1];
    int rc = 0;
    int nc = ward_pem_read_certs(file, &cder, &clen);
    int nb = nc > 0 ? ward_pem_read_certs(bundle_file, &bder, &blen) : 0;
    if (nc < 0 || nb < 0) {
        snprintf(err, errlen, "%s: no readable PEM certificate", nc < 0 ? file : bundle_file);
        rc = WARD_ECERT;
        goto out;
    }
    /* The trust domain to check against: the expected id's, else the certificate's own. */
    ward_cert_info_t info;
    const char *id = expected_id;
    if (id == NULL) {
        if (ward_cert_inspect(file, &info, err, errlen) < 0) {
            rc = WARD_ECERT;
            goto out;
        }
        id = info.spiffe_id;
    }
    if (ward_spiffe_id_parse(id, strlen(id), &parsed, NULL) < 0) {
        *reason = WARD_REASON_BAD_CERTIFICATE;
        *detail = "no valid SPIFFE id to check against";
        goto out;
    }
    snprintf(td, sizeof(td), "%.*s", (int)parsed.td_len, parsed.td);
    rc = ward_identity_trust_only((const uint8_t *const *)bder, blen, (size_t)nb, td, &trust, err,
                                  errlen);
    if (rc < 0) goto out;
    *reason = ward_tls_verify_chain(trust, (const uint8_t *const *)cder, clen, (size_t)nc,
                                    expected_id, 1, detail, peer_id);
out:
    ward_identity_unref(trust);
    if (nc > 0) ward__free_der(cder, clen, nc);
    if (nb > 0) ward__free_der(bder, blen, nb);
    ERR_clear_error();
    return rc;
}

/* --- diagnosis (wardctl diagnose) ----------------------------------------------------------- */

#define WARD_PROBE_AFTER_ACCEPT_MS 200 /* once the server has shown it accepted us */

static pthread_once_t ward__probe_once = PTHREAD_ONCE_INIT;
static int ward__ex_probe = -1;

static void ward__probe_init_once(void)
{
    ward__ex_probe = SSL_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

const char *ward_tls_alert_name(int alert)
{
    static const struct {
        int alert;
        const char *name;
    } names[] = {{0, "close_notify"},
                 {10, "unexpected_message"},
                 {20, "bad_record_mac"},
                 {22, "record_overflow"},
                 {40, "handshake_failure"},
                 {42, "bad_certificate"},
                 {43, "unsupported_certificate"},
                 {44, "certificate_revoked"},
                 {45, "certificate_expired"},
                 {46, "certificate_unknown"},
                 {47, "illegal_parameter"},
                 {48, "unknown_ca"},
                 {49, "access_denied"},
                 {50, "decode_error"},
                 {51, "decrypt_error"},
                 {70, "protocol_version"},
                 {71, "insufficient_security"},
                 {80, "internal_error"},
                 {86, "inappropriate_fallback"},
                 {90, "user_canceled"},
                 {109, "missing_extension"},
                 {110, "unsupported_extension"},
                 {112, "unrecognized_name"},
                 {113, "bad_certificate_status_response"},
                 {115, "unknown_psk_identity"},
                 {116, "certificate_required"},
                 {120, "no_application_protocol"}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (names[i].alert == alert) return names[i].name;
    return "unknown";
}

static void ward__probe_chain_free(ward_tls_probe_t *probe)
{
    for (size_t i = 0; i < probe->nchain; i++) {
        ward_free(probe->chain_der[i]);
        probe->chain_der[i] = NULL;
    }
    probe->nchain = 0;
}

void ward_tls_probe_free(ward_tls_probe_t *probe)
{
    ward__probe_chain_free(probe);
}

/* Keeps the server's chain and accepts it: the caller judges it with ward's rules afterwards, so
 * that the server also gets to say what it thinks of our certificate. */
static enum ssl_verify_result_t ward__probe_verify_cb(SSL *ssl, uint8_t *out_alert)
{
    ward_tls_probe_t *probe = SSL_get_ex_data(ssl, ward__ex_probe);
    const STACK_OF(CRYPTO_BUFFER) *chain = SSL_get0_peer_certificates(ssl);
    size_t n = chain ? sk_CRYPTO_BUFFER_num(chain) : 0;

    if (probe == NULL) {
        *out_alert = SSL_AD_INTERNAL_ERROR;
        return ssl_verify_invalid;
    }
    ward__probe_chain_free(probe);
    for (size_t i = 0; i < n && i < WARD_PROBE_MAX_CHAIN; i++) {
        const CRYPTO_BUFFER *b = sk_CRYPTO_BUFFER_value(chain, i);
        size_t len = CRYPTO_BUFFER_len(b);
        uint8_t *copy = ward_malloc(len ? len : 1);
        if (copy == NULL) {
            *out_alert = SSL_AD_INTERNAL_ERROR;
            return ssl_verify_invalid;
        }
        memcpy(copy, CRYPTO_BUFFER_data(b), len);
        probe->chain_der[i] = copy;
        probe->chain_len[i] = len;
        probe->nchain = i + 1;
    }
    return ssl_verify_ok;
}

static void ward__probe_info_cb(const SSL *ssl, int type, int value)
{
    ward_tls_probe_t *probe = SSL_get_ex_data(ssl, ward__ex_probe);
    if (probe == NULL || type != SSL_CB_READ_ALERT) return;
    int desc = value & 0xff;
    if (desc == SSL_AD_CLOSE_NOTIFY) return;
    if (probe->alert < 0) {
        probe->alert = desc;
        probe->alert_after_handshake = probe->handshake_done;
    }
}

static int ward__probe_session_cb(SSL *ssl, SSL_SESSION *sess)
{
    ward_tls_probe_t *probe = SSL_get_ex_data(ssl, ward__ex_probe);
    (void)sess;
    if (probe != NULL) probe->ticket = 1;
    return 0; /* not kept */
}

static int64_t ward__probe_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Waits until fd is readable (or writable) or deadline (monotonic ms) passes: 1 ready, 0 time is
 * up, -1 poll failed. */
static int ward__probe_wait(int fd, int want_write, int64_t deadline)
{
    for (;;) {
        int64_t left = deadline - ward__probe_now_ms();
        if (left <= 0) return 0;
        struct pollfd pfd = {.fd = fd, .events = want_write ? POLLOUT : POLLIN};
        int r = poll(&pfd, 1, left > INT32_MAX ? INT32_MAX : (int)left);
        if (r > 0) return 1;
        if (r == 0) return 0;
        if (errno != EINTR) return -1;
    }
}

/* Records why SSL_do_handshake / SSL_read failed with ssl_err (saved_errno from right after). */
static void ward__probe_failed(SSL *ssl, ward_tls_probe_t *probe, int ssl_err, int saved_errno)
{
    if (ssl_err == SSL_ERROR_ZERO_RETURN ||
        (ssl_err == SSL_ERROR_SYSCALL && saved_errno == 0 && ERR_peek_error() == 0)) {
        probe->closed = 1;
        probe->reason = WARD_REASON_PROTOCOL;
        probe->detail = "the server closed the connection";
        ERR_clear_error();
        return;
    }
    if (ssl_err == SSL_ERROR_SYSCALL && ERR_peek_error() == 0) {
        probe->sys_errno = saved_errno;
        probe->reason = WARD_REASON_PROTOCOL;
        probe->detail = "transport error";
        return;
    }
    /* An alert or a protocol error: read exactly as an outbound sidecar reads it. */
    ward_tls_peer_t none;
    memset(&none, 0, sizeof(none));
    probe->reason = ward_tls_classify(ssl, &none, ssl_err, &probe->detail);
}

/* The handshake, then listening for a refusal until probe->listen_ms passes. */
static void ward__probe_run(SSL *ssl, int fd, ward_tls_probe_t *probe)
{
    int64_t deadline = ward__probe_now_ms() + probe->timeout_ms;
    for (;;) {
        errno = 0;
        int r = SSL_do_handshake(ssl);
        int saved = errno;
        if (r == 1) break;
        int e = SSL_get_error(ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
            if (ward__probe_wait(fd, e == SSL_ERROR_WANT_WRITE, deadline) > 0) continue;
            probe->timed_out = 1;
            probe->reason = WARD_REASON_TIMEOUT;
            probe->detail = "the TLS handshake did not complete in time";
            return;
        }
        ward__probe_failed(ssl, probe, e, saved);
        return;
    }
    probe->handshake_done = 1;
    probe->version = SSL_get_version(ssl);
    const SSL_CIPHER *cipher = SSL_get_current_cipher(ssl);
    probe->cipher = cipher ? SSL_CIPHER_standard_name(cipher) : NULL;
    const uint8_t *alpn = NULL;
    unsigned alpn_len = 0;
    SSL_get0_alpn_selected(ssl, &alpn, &alpn_len);
    if (alpn_len < sizeof(probe->alpn_selected)) {
        memcpy(probe->alpn_selected, alpn, alpn_len);
        probe->alpn_selected[alpn_len] = '\0';
    }

    /* Send nothing; read until the server refuses us, closes, or time is up. */
    deadline = ward__probe_now_ms() + probe->listen_ms;
    int shortened = 0;
    for (;;) {
        uint8_t buf[4096];
        errno = 0;
        int r = SSL_read(ssl, buf, sizeof(buf));
        int saved = errno;
        if (r > 0) {
            probe->app_bytes += r;
            continue;
        }
        int e = SSL_get_error(ssl, r);
        if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
            ward__probe_failed(ssl, probe, e, saved);
            return;
        }
        if ((probe->ticket || probe->app_bytes > 0) && !shortened) {
            int64_t soon = ward__probe_now_ms() + WARD_PROBE_AFTER_ACCEPT_MS;
            if (soon < deadline) deadline = soon;
            shortened = 1;
        }
        if (ward__probe_wait(fd, e == SSL_ERROR_WANT_WRITE, deadline) <= 0) break;
    }
    SSL_shutdown(ssl); /* best effort close_notify; the caller closes the socket */
}

int ward_tls_probe(int fd, ward_tls_probe_t *probe, char *err, size_t errlen)
{
    uint8_t **der = NULL;
    size_t *lens = NULL;
    int ncert = 0, rc = 0;
    CRYPTO_BUFFER *chain[WARD_PROBE_MAX_CHAIN] = {0};
    EVP_PKEY *key = NULL;
    BIO *kbio = NULL;
    X509 *leaf = NULL;
    SSL_CTX *ctx = NULL;
    SSL *ssl = NULL;
    uint8_t list[64];

    probe->nchain = 0;
    probe->handshake_done = probe->timed_out = probe->alert_after_handshake = 0;
    probe->ticket = probe->app_bytes = probe->closed = probe->sys_errno = 0;
    probe->alert = -1;
    probe->reason = WARD_REASON_NONE;
    probe->detail = NULL;
    probe->version = probe->cipher = NULL;
    probe->alpn_selected[0] = '\0';

    pthread_once(&ward__probe_once, ward__probe_init_once);
    const char *proto = probe->alpn ? probe->alpn : WARD_ALPN_TCP;
    size_t plen = strlen(proto);
    if ((probe->cert_file == NULL) != (probe->key_file == NULL) || plen == 0 ||
        plen >= sizeof(list)) {
        snprintf(err, errlen, "give both a certificate and its key (or neither), one ALPN name");
        return WARD_EINVAL;
    }
    if (ward__ex_probe < 0) {
        snprintf(err, errlen, "out of memory");
        return WARD_ENOMEM;
    }
    if (probe->cert_file != NULL) {
        ncert = ward_pem_read_certs(probe->cert_file, &der, &lens);
        if (ncert < 0 || ncert > WARD_PROBE_MAX_CHAIN) {
            snprintf(err, errlen, "%s: %s", probe->cert_file,
                     ncert < 0 ? "no readable PEM certificate" : "certificate chain too long");
            rc = WARD_ECERT;
            goto out;
        }
        kbio = BIO_new_file(probe->key_file, "r");
        if (kbio == NULL || (key = PEM_read_bio_PrivateKey(kbio, NULL, NULL, NULL)) == NULL) {
            snprintf(err, errlen, "%s: no readable PEM private key", probe->key_file);
            rc = WARD_EKEY;
            goto out;
        }
        const uint8_t *p = der[0];
        leaf = d2i_X509(NULL, &p, (long)lens[0]);
        if (leaf == NULL) {
            snprintf(err, errlen, "%s: the first certificate does not parse", probe->cert_file);
            rc = WARD_ECERT;
            goto out;
        }
        if (!X509_check_private_key(leaf, key)) {
            snprintf(err, errlen, "%s: private key does not match %s", probe->key_file,
                     probe->cert_file);
            rc = WARD_EKEYMISMATCH;
            goto out;
        }
        for (int i = 0; i < ncert; i++) {
            chain[i] = CRYPTO_BUFFER_new(der[i], lens[i], NULL);
            if (chain[i] == NULL) {
                snprintf(err, errlen, "out of memory");
                rc = WARD_ENOMEM;
                goto out;
            }
        }
    }
    /* The same protocol settings as the sidecars' contexts (ward__ctx_new). */
    ctx = SSL_CTX_new(TLS_with_buffers_method());
    if (ctx == NULL || !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) ||
        !SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) ||
        !SSL_CTX_set_strict_cipher_list(ctx, WARD_TLS12_CIPHERS) ||
        !SSL_CTX_set1_curves_list(ctx, "X25519:P-256") ||
        (ncert > 0 && !SSL_CTX_set_chain_and_key(ctx, chain, (size_t)ncert, key, NULL)))
        goto out_tls;
    SSL_CTX_set_custom_verify(ctx, SSL_VERIFY_PEER, ward__probe_verify_cb);
    SSL_CTX_set_info_callback(ctx, ward__probe_info_cb);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL);
    SSL_CTX_sess_set_new_cb(ctx, ward__probe_session_cb);
    list[0] = (uint8_t)plen;
    memcpy(list + 1, proto, plen);
    ssl = SSL_new(ctx);
    if (ssl == NULL || !SSL_set_fd(ssl, fd) || !SSL_set_ex_data(ssl, ward__ex_probe, probe) ||
        SSL_set_alpn_protos(ssl, list, plen + 1) != 0)
        goto out_tls;
    SSL_set_connect_state(ssl);
    int flags = fcntl(fd, F_GETFL);
    if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
        snprintf(err, errlen, "fcntl: %s", strerror(errno));
        rc = -errno;
        goto out;
    }
    ERR_clear_error();
    ward__probe_run(ssl, fd, probe);
    goto out;

out_tls:
    snprintf(err, errlen, "could not build the TLS client context");
    rc = WARD_ETLS;
out:
    SSL_free(ssl);
    SSL_CTX_free(ctx);
    X509_free(leaf);
    BIO_free(kbio);
    EVP_PKEY_free(key);
    for (int i = 0; i < WARD_PROBE_MAX_CHAIN; i++)
        CRYPTO_BUFFER_free(chain[i]);
    if (ncert > 0) ward__free_der(der, lens, ncert);
    ERR_clear_error();
    return rc;
}

int ward_cert_summarize(const uint8_t *der, size_t len, ward_cert_summary_t *out)
{
    memset(out, 0, sizeof(*out));
    const uint8_t *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    if (x == NULL || p != der + len) {
        X509_free(x);
        ERR_clear_error();
        return WARD_ECERT;
    }
    X509_NAME_oneline(X509_get_subject_name(x), out->subject, sizeof(out->subject));
    X509_NAME_oneline(X509_get_issuer_name(x), out->issuer, sizeof(out->issuer));
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    snprintf(out->serial, sizeof(out->serial), "%s", hex ? hex : "?");
    OPENSSL_free(hex);
    BN_free(bn);
    out->not_before = ward_asn1_time_to_unix(X509_get0_notBefore(x));
    out->not_after = ward_asn1_time_to_unix(X509_get0_notAfter(x));
    out->is_ca = (X509_get_extension_flags(x) & EXFLAG_CA) != 0;
    SHA256(der, len, out->sha256);
    GENERAL_NAMES *names = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
    for (size_t i = 0; names && i < sk_GENERAL_NAME_num(names); i++) {
        const GENERAL_NAME *gn = sk_GENERAL_NAME_value(names, i);
        if (gn->type != GEN_URI) continue;
        int ul = ASN1_STRING_length(gn->d.uniformResourceIdentifier);
        snprintf(out->spiffe_id, sizeof(out->spiffe_id), "%.*s", ul,
                 (const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier));
        break;
    }
    GENERAL_NAMES_free(names);
    X509_free(x);
    ERR_clear_error();
    return 0;
}

int ward_cert_find_issuer(const uint8_t *der, size_t len, const uint8_t *const *roots_der,
                          const size_t *roots_len, size_t nroots)
{
    const uint8_t *p = der;
    X509 *x = d2i_X509(NULL, &p, (long)len);
    int found = -1;
    for (size_t i = 0; x != NULL && i < nroots && found < 0; i++) {
        if (roots_len[i] == len && memcmp(roots_der[i], der, len) == 0) {
            found = (int)i;
            break;
        }
        p = roots_der[i];
        X509 *root = d2i_X509(NULL, &p, (long)roots_len[i]);
        EVP_PKEY *k = root ? X509_get_pubkey(root) : NULL;
        if (k != NULL && X509_check_issued(root, x) == X509_V_OK && X509_verify(x, k) == 1)
            found = (int)i;
        EVP_PKEY_free(k);
        X509_free(root);
    }
    X509_free(x);
    ERR_clear_error();
    return found;
}
