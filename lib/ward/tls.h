/* ward/tls.h — the one door to BoringSSL for the data plane: identity snapshots (SVID + key + trust
 * bundle compiled into server and client SSL_CTXs), X509-SVID peer verification, and the
 * classification of every refused handshake into a reason an operator can act on.
 *
 * Ownership: a ward_identity_t is immutable once loaded and refcounted; each connection holds a
 * reference for as long as its SSL exists, so swapping in a new identity never disturbs open
 * connections. ward_tls_peer_t lives inside the connection and is attached to its SSL. */
#ifndef WARD_TLS_H
#define WARD_TLS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <openssl/ssl.h>

#include "ward/buf.h"

typedef enum {
    WARD_REASON_NONE = 0,
    WARD_REASON_EXPIRED,
    WARD_REASON_NOT_YET_VALID,
    WARD_REASON_UNKNOWN_CA,
    WARD_REASON_SAN_MISMATCH,
    WARD_REASON_NO_CLIENT_CERT,
    WARD_REASON_BAD_CERTIFICATE,
    WARD_REASON_PROTOCOL,
    WARD_REASON_TIMEOUT,
    WARD_REASON_PLAINTEXT_REJECTED, /* a plaintext caller at a STRICT inbound (ward-proxy) */
    WARD_REASON_COUNT
} ward_tls_reason_t;

/* "none", "expired", "not_yet_valid", "unknown_ca", "san_mismatch", "no_client_cert",
 * "bad_certificate", "protocol", "timeout". */
const char *ward_tls_reason_name(ward_tls_reason_t r);

typedef struct ward_identity ward_identity_t;

/* Loads cert chain, key and trust bundle PEM files and builds the snapshot. On failure returns
 * WARD_ECERT / WARD_EKEY / WARD_EKEYMISMATCH / WARD_EBUNDLE / WARD_ESPIFFE / -errno and writes a
 * human explanation into err[errlen]. *out gets one reference. */
int ward_identity_load(const char *cert_file, const char *key_file, const char *ca_file,
                       ward_identity_t **out, char *err, size_t errlen);
/* Builds a snapshot from memory: DER chain (leaf first), the leaf's private key (the snapshot takes
 * its own reference; the caller keeps theirs) and DER trust bundle roots. Same checks and errors
 * as ward_identity_load (which reads the files and calls this). */
int ward_identity_new(const uint8_t *const *chain_der, const size_t *chain_len, size_t nchain,
                      EVP_PKEY *key, const uint8_t *const *roots_der, const size_t *roots_len,
                      size_t nroots, ward_identity_t **out, char *err, size_t errlen);
/* An X.509 time as Unix seconds (0 if it cannot be converted). */
int64_t ward_asn1_time_to_unix(const ASN1_TIME *t);
/* Frees one DER buffer returned by ward_pem_read_certs. */
void ward_pem_free(uint8_t *der);
void ward_key_free(EVP_PKEY *key);
/* Same, with the private key as PKCS#8 DER (what the agent's CA mints). */
int ward_identity_from_pkcs8(const uint8_t *const *chain_der, const size_t *chain_len,
                             size_t nchain, const uint8_t *key_der, size_t key_len,
                             const uint8_t *const *roots_der, const size_t *roots_len,
                             size_t nroots, ward_identity_t **out, char *err, size_t errlen);
/* A snapshot that only trusts: the roots of a bootstrap bundle, no certificate of its own. Its
 * client context verifies a server (e.g. ward-agent) before the proxy has an SVID; peers must be in
 * trust_domain. */
int ward_identity_trust_only(const uint8_t *const *roots_der, const size_t *roots_len,
                             size_t nroots, const char *trust_domain, ward_identity_t **out,
                             char *err, size_t errlen);
/* A server-only snapshot with an ordinary (web PKI) certificate, for ward-agent's admission
 * webhook, whose client (the Kubernetes API server) checks a DNS name against the webhook
 * configuration's caBundle: no trust bundle, no SPIFFE checks, no client certificate asked for
 * (serve it with peer->no_client_auth = 1). TLS 1.2+ with ward's ciphers and curves. The key must
 * match the leaf (EC or RSA); not_before/not_after are the leaf's. Returns 0, or WARD_ECERT /
 * WARD_EKEY / WARD_EKEYMISMATCH / WARD_ETLS / WARD_ENOMEM with err naming the file. */
int ward_identity_load_server(const char *cert_file, const char *key_file, ward_identity_t **out,
                              char *err, size_t errlen);
ward_identity_t *ward_identity_ref(ward_identity_t *id);
void ward_identity_unref(ward_identity_t *id);

SSL_CTX *ward_identity_server_ctx(const ward_identity_t *id);
SSL_CTX *ward_identity_client_ctx(const ward_identity_t *id);
const char *ward_identity_spiffe_id(const ward_identity_t *id);
int64_t ward_identity_not_after(const ward_identity_t *id);
int64_t ward_identity_not_before(const ward_identity_t *id);
/* Increments for every snapshot loaded in this process: cheap identity comparison. */
uint64_t ward_identity_generation(const ward_identity_t *id);
/* Number of root certificates in the snapshot's trust bundle. */
size_t ward_identity_bundle_size(const ward_identity_t *id);

/* Per-connection verification state, attached to an SSL with ward_tls_peer_attach(). */
typedef struct ward_tls_peer {
    const char *expected_id;  /* outbound: the exact SPIFFE id the server must present */
    ward_tls_reason_t reason; /* set when verification or the handshake fails */
    const char *detail;       /* static explanation of the failure */
    char *peer_id;            /* verified peer SPIFFE id (heap, owned), after the handshake */
    int64_t peer_not_after;
    /* Set by ward_tls_classify when the failure is the peer's alert (the peer refused us), as
     * opposed to our own verification or a protocol error. */
    int by_peer;
    /* ALPN. Client: offers exactly this protocol (NULL = "ward-tcp"). Server: accepts only this
     * one when set, else the client's first choice among h2, http/1.1 and ward-tcp. */
    const char *alpn;
    /* Server: do not ask for a client certificate (ward-agent's bootstrap listener, where proxies
     * attest with a token instead). */
    int no_client_auth;
    /* Client side: called when the server sends a session ticket; returns 1 if it kept `sess`
     * (taking the reference), 0 otherwise. */
    int (*on_new_session)(struct ward_tls_peer *peer, SSL_SESSION *sess);
} ward_tls_peer_t;

/* The receive side of a connection's TLS socket. BoringSSL has no read-ahead: through a plain
 * socket BIO it makes two read(2) calls per record (header, then body) and a third that fails with
 * EAGAIN. ward's read BIO instead reads up to a whole 16 KiB chunk of ciphertext per system call
 * (several records at once) into a chunk from the worker's pool and serves BoringSSL from it; the
 * chunk goes back to the pool as soon as it is empty. Embedded in the connection, owned by it. */
typedef struct {
    int fd;
    int drained;      /* the last read(2) was short: the kernel buffer was empty then */
    ward_chunk_t *rx; /* ciphertext read but not yet consumed, or NULL */
    ward_pool_t *pool;
} ward_tls_io_t;

/* Creates an SSL for one connection from the snapshot's server (is_server) or client ctx, reading
 * through io and writing straight to io->fd. Returns NULL on allocation failure. */
SSL *ward_tls_new(const ward_identity_t *id, int is_server, ward_tls_io_t *io,
                  ward_tls_peer_t *peer);
/* 1 if bytes received on the socket wait in io or in the SSL (so no poll event will announce
 * them), else 0. */
int ward_tls_buffered(const SSL *ssl, const ward_tls_io_t *io);
/* Returns io's chunk to its pool (call when the connection ends). */
void ward_tls_io_release(ward_tls_io_t *io);

/* Completes verification after a successful handshake: on a resumed session (where no chain was
 * verified now) re-checks the stored peer certificate's validity window and identity; fills
 * peer->peer_id. Returns 0 or WARD_ETLS with peer->reason set. */
int ward_tls_finish(SSL *ssl, ward_tls_peer_t *peer);

/* Classifies a failed SSL_do_handshake (ssl_err = SSL_get_error result): the reason our verifier
 * recorded, else the alert the peer sent, else protocol. Clears the error queue. */
ward_tls_reason_t ward_tls_classify(SSL *ssl, ward_tls_peer_t *peer, int ssl_err,
                                    const char **detail);

/* Frees peer-owned memory (not the struct). */
void ward_tls_peer_reset(ward_tls_peer_t *peer);

/* Classifies a certificate chain (DER buffers, leaf first) against the snapshot's bundle exactly
 * as the handshake verifier does; expected_id may be NULL. Used by tests and tools. */
ward_tls_reason_t ward_tls_verify_chain(const ward_identity_t *id, const uint8_t *const *der,
                                        const size_t *der_len, size_t n, const char *expected_id,
                                        int peer_is_server, const char **detail, char **peer_id);

/* Reads every CERTIFICATE block of a PEM file into DER (caller frees each with OPENSSL_free and the
 * arrays with ward_free). Returns the count (> 0) or a negative error. */
int ward_pem_read_certs(const char *file, uint8_t ***der, size_t **der_len);

/* --- non-blocking I/O on a connection's SSL ---
 * Results: > 0 bytes moved; WARD_IO_EOF (close_notify or end of transport); WARD_IO_WANT_READ /
 * WARD_IO_WANT_WRITE (retry when the socket is readable / writable); WARD_IO_ERROR (fatal; a
 * following ward_tls_classify() says why). */
#define WARD_IO_EOF        0
#define WARD_IO_WANT_READ  (-1)
#define WARD_IO_WANT_WRITE (-2)
#define WARD_IO_ERROR      (-3)

ssize_t ward_tls_read(SSL *ssl, void *buf, size_t n);
/* The same (buf, n) must be passed again after a WANT result (the buffer may move). */
ssize_t ward_tls_write(SSL *ssl, const void *buf, size_t n);
/* Returns 1 when done, WARD_IO_WANT_*, or WARD_IO_ERROR with *reason / *detail classified. */
int ward_tls_handshake(SSL *ssl, ward_tls_peer_t *peer, ward_tls_reason_t *reason,
                       const char **detail);
/* Sends close_notify. Returns 0 when sent, WARD_IO_WANT_* to retry, or WARD_IO_ERROR. */
int ward_tls_shutdown(SSL *ssl);
int ward_tls_session_reused(const SSL *ssl);
const char *ward_tls_version(const SSL *ssl);
/* The negotiated cipher suite's standard (IANA) name, "" before the handshake. */
const char *ward_tls_cipher(const SSL *ssl);
/* The negotiated ALPN protocol as one of the static strings "h2", "http/1.1", "ward-tcp", or NULL
 * when none (or another) was negotiated. */
const char *ward_tls_alpn(const SSL *ssl);
/* SHA-256 of the peer's leaf certificate (DER). Returns 0 or WARD_ECERT when there is none. */
int ward_tls_peer_cert_sha256(const SSL *ssl, uint8_t out[32]);
void ward_tls_free(SSL *ssl);
/* Offers a cached session on a client SSL (ignored if not resumable). */
void ward_tls_use_session(SSL *ssl, SSL_SESSION *sess);
void ward_tls_session_free(SSL_SESSION *sess);

/* Generates a P-256 key in memory and a PKCS#10 CSR for it (DER, SHA-256, empty subject) asking
 * for spiffe_id as its one URI SAN. *key gets the key (EVP_PKEY_free), *csr_der heap memory
 * (ward_free). Returns 0, WARD_ESPIFFE for an invalid id, or WARD_ENOMEM. */
int ward_csr_new(const char *spiffe_id, EVP_PKEY **key, uint8_t **csr_der, size_t *csr_len);

/* --- inspection (wardctl) --- */
typedef struct {
    char spiffe_id[2049]; /* first URI SAN, or "" */
    char subject[256];
    char issuer[256];
    int64_t not_before;
    int64_t not_after;
    int chain_len;
} ward_cert_info_t;

/* Reads the leaf of a PEM file. Returns 0 or WARD_ECERT with err set. */
int ward_cert_inspect(const char *file, ward_cert_info_t *info, char *err, size_t errlen);
/* Classifies the chain in file exactly as a ward peer trusting bundle_file (and expecting
 * expected_id, if non-NULL) would. Returns 0 with *reason set, or a negative error with err set
 * when the files cannot be read. *peer_id (heap) gets the certificate's id when there is one. */
int ward_cert_check(const char *file, const char *bundle_file, const char *expected_id,
                    ward_tls_reason_t *reason, const char **detail, char **peer_id, char *err,
                    size_t errlen);

/* --- diagnosis (wardctl diagnose) ---
 * A client handshake made the way an outbound sidecar makes it (TLS 1.2/1.3, ward's ciphers and
 * curves, one ALPN protocol offered) but that judges nothing itself: it presents whatever
 * certificate it is given (expired, from another CA, or none at all), accepts any server chain
 * and hands it back for the caller to classify with ward_tls_verify_chain(), and after a
 * completed handshake listens for a while, sending nothing, because in TLS 1.3 the server's
 * refusal of the client certificate arrives only after the client's handshake is complete. */

#define WARD_PROBE_MAX_CHAIN 8

typedef struct {
    /* in */
    const char *cert_file; /* PEM chain, leaf first; NULL: no client certificate */
    const char *key_file;  /* PEM private key of the leaf; NULL with cert_file NULL */
    const char *alpn;      /* the one protocol offered; NULL = "ward-tcp" */
    int timeout_ms;        /* for the handshake */
    int listen_ms;         /* after our handshake completes: how long to wait for a refusal */
    /* out: the server's chain as sent, leaf first (DER, owned by the probe) */
    uint8_t *chain_der[WARD_PROBE_MAX_CHAIN];
    size_t chain_len[WARD_PROBE_MAX_CHAIN];
    size_t nchain;
    int handshake_done;        /* our side of the handshake completed */
    int timed_out;             /* the handshake did not complete within timeout_ms */
    int alert;                 /* the fatal alert the server sent (TLS AlertDescription), or -1 */
    int alert_after_handshake; /* ... and it came after our handshake had completed */
    int ticket;                /* a session ticket arrived: a server that asked for our certificate
                                * sends tickets only after judging it (not every server sends one) */
    int app_bytes;             /* application data the server sent while we listened */
    int closed;                /* the server closed the connection without an alert */
    int sys_errno;             /* transport error (ECONNRESET, EPIPE, ...), or 0 */
    ward_tls_reason_t reason;  /* on failure: what an outbound sidecar would log (alert mapped
                                * exactly as ward_tls_classify maps it), else WARD_REASON_NONE */
    const char *detail;        /* static explanation of reason */
    const char *version;       /* "TLSv1.3", ... once the handshake completed, else NULL */
    const char *cipher;        /* IETF cipher suite name, or NULL */
    char alpn_selected[64];    /* the protocol the server chose, or "" */
} ward_tls_probe_t;

/* Runs the probe on fd, a connected TCP socket (made non-blocking here; the caller closes it).
 * Returns 0 when the probe ran, whatever the server did (see the out fields), or WARD_ECERT /
 * WARD_EKEY / WARD_EKEYMISMATCH / WARD_EINVAL / WARD_ENOMEM / WARD_ETLS with err set when our
 * own inputs are unusable. Release the chain with ward_tls_probe_free() in either case. */
int ward_tls_probe(int fd, ward_tls_probe_t *probe, char *err, size_t errlen);
void ward_tls_probe_free(ward_tls_probe_t *probe);

/* The RFC 8446 name of a TLS alert ("certificate_expired", "unknown_ca", ...), or "unknown" for
 * one it does not know. Static storage. */
const char *ward_tls_alert_name(int alert);

typedef struct {
    char subject[256];
    char issuer[256];
    char serial[80];      /* hex */
    char spiffe_id[2049]; /* first URI SAN, or "" */
    uint8_t sha256[32];   /* of the DER encoding */
    int64_t not_before;
    int64_t not_after;
    int is_ca;
} ward_cert_summary_t;

/* Describes one DER certificate. Returns 0 or WARD_ECERT when it does not parse. */
int ward_cert_summarize(const uint8_t *der, size_t len, ward_cert_summary_t *out);
/* Which of the roots issued der (its subject is der's issuer and its key verifies der's
 * signature) or is der itself: the root's index, or -1 when none does. */
int ward_cert_find_issuer(const uint8_t *der, size_t len, const uint8_t *const *roots_der,
                          const size_t *roots_len, size_t nroots);

#endif
