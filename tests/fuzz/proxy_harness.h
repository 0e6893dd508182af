/* proxy_harness.h — ward-proxy's data path in-process, for the proxy fuzz targets (fuzz_http1,
 * fuzz_http2, fuzz_sniff) and tests/unit/test_alloc_fail.c.
 *
 * One harness owns, all on the calling thread: a ward_config_t with two inbound mappings in
 * PERMISSIVE mode (a plaintext caller is sniffed and handed to the HTTP/1, HTTP/2 or opaque TCP
 * path, no TLS needed), an identity loaded from test certificates (server.pem, server-key.pem,
 * ca.pem in a directory minted by tests/lib/certs.py), a policy store holding a small fixed policy,
 * one worker whose loop the harness runs itself (no worker thread), and a fake app: two loopback
 * listeners the mappings point at, whose connections answer HTTP/1.1 (canned responses, 101 to a
 * WebSocket upgrade), h2c (nghttp2 server) or echo opaque bytes.
 *
 *   WARD_PH_PORT_HTTP: ALLOW paths under /public/ (policy "default/harness-allow", rule 0),
 *                      DENY /admin and below (policy "default/harness-deny"); no opaque TCP
 *                      (a DENY rule with paths denies a whole opaque connection).
 *   WARD_PH_PORT_TCP:  ALLOW everything, opaque or HTTP (rule 1).
 *
 * A run (ward_ph_run) plays one client on one end of a socketpair whose other end goes to
 * ward_conn_accept(): it writes the run's segments one at a time (letting the proxy read each on
 * its own), half-closes, reads what comes back, and lets the loop run until the proxy has closed
 * the connection and every app connection is done, or until nothing happened for quiet_ms. Then it
 * closes whatever is left, runs the loop until the worker has no connection, and checks the
 * properties below. Every property broken is reported in run->violation (the first one) and
 * run->detail; nothing aborts, the caller decides.
 *
 *   - the app never sees a request whose target, by the harness's own reading (ward_ph_resolve), is
 *     /admin or under /admin/, nor (on the HTTP port) any target outside /public/;
 *   - the app never sees an x-forwarded-client-cert request header (callers here are plaintext:
 *     the proxy must strip a forged one and add none), nor an upgrade other than WebSocket, nor
 *     opaque bytes on the HTTP port, nor bytes its own strict HTTP/1 parser refuses;
 *   - the app never sees more requests (plus opaque connections) than the proxy allowed;
 *   - after teardown: no connection in the worker, no chunk of the pool in use, no handle left on
 *     the loop, no descriptor left open.
 *
 * Ownership: the harness owns everything it creates; a run's buffers belong to the run until
 * ward_ph_run_free. Memory of the harness itself and of the fake app/client comes from the C
 * library, never from ward's allocator, so a test allocator installed with ward_alloc_install sees
 * only the proxy (and libuv, and nghttp2 inside the proxy). */
#ifndef WARD_PROXY_HARNESS_H
#define WARD_PROXY_HARNESS_H

#include <stddef.h>
#include <stdint.h>

typedef struct ward_ph ward_ph_t;

typedef enum { WARD_PH_PORT_HTTP = 0, WARD_PH_PORT_TCP = 1, WARD_PH_NPORTS } ward_ph_port_t;

/* How the fake app answers a request. */
typedef enum {
    WARD_PH_APP_PLAIN = 0, /* 200, content-length, when the request is complete */
    WARD_PH_APP_CHUNKED,   /* HTTP/1: chunked 200; h2: DATA then trailers */
    WARD_PH_APP_EARLY,     /* answers as soon as the request head is complete */
    WARD_PH_APP_CLOSE,     /* HTTP/1: "connection: close", then closes; h2: GOAWAY, then closes */
    WARD_PH_APP_NMODES
} ward_ph_app_mode_t;

/* The exact HTTP/1.1 response the app sends in WARD_PH_APP_PLAIN mode (not to HEAD). */
#define WARD_PH_H1_RESPONSE "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"

typedef struct {
    uint8_t *data;
    size_t len, cap;
} ward_ph_buf_t;

#define WARD_PH_MAX_SEGS 8

typedef struct {
    const char *cert_dir;      /* server.pem, server-key.pem, ca.pem (certs.py) */
    uint64_t sniff_timeout_ms; /* 0: 20 */
    uint64_t idle_timeout_ms;  /* 0: 30000 */
    uint64_t quiet_ms;         /* a run gives up after this long without any event; 0: 100 */
    uint64_t deadline_ms;      /* ... and after this long in all; 0: 5000 */
} ward_ph_opts_t;

typedef struct ward_ph_run ward_ph_run_t;

struct ward_ph_run {
    /* --- set by the caller (zero the struct first) --- */
    ward_ph_port_t port;
    ward_ph_app_mode_t app_mode;
    const uint8_t *seg[WARD_PH_MAX_SEGS]; /* the client's writes, in order */
    size_t seg_len[WARD_PH_MAX_SEGS];
    size_t nseg;
    /* Asked after every turn of the loop once all segments are written: 1 when the client is
     * satisfied and half-closes. NULL: half-close right after the last segment. */
    int (*client_done)(ward_ph_run_t *r, void *arg);
    /* Called once the worker's per-run state is reset, just before the connection exists, and
     * once it is torn down and reset again (for allocation accounting). May be NULL. */
    void (*begin)(void *arg);
    void (*end)(void *arg);
    void *arg;

    /* --- results --- */
    ward_ph_buf_t client_rx;  /* every byte that came back to the client */
    int client_eof;           /* the client read EOF */
    int client_reset;         /* the client's read failed (reset) */
    int client_shut;          /* the client half-closed */
    int forced;               /* the run did not end by itself: client and app were cut off */
    size_t app_conns;         /* connections the app accepted */
    size_t app_requests;      /* request heads the app parsed (HTTP/1 and HTTP/2) */
    size_t app_opaque;        /* app connections that carried opaque bytes */
    size_t app_xfcc_trailers; /* request trailers named x-forwarded-client-cert the app got */
    uint64_t app_bytes;       /* bytes the app received */
    uint64_t allowed, denied; /* the proxy's decisions during the run */
    const char *violation;    /* NULL, or the first property broken (static text) */
    char detail[320];         /* what broke it (a target, a header, a count) */
};

/* Builds the harness. Returns 0, or a negative error with err set. */
int ward_ph_new(ward_ph_t **out, const ward_ph_opts_t *opts, char *err, size_t errlen);
/* Runs one client connection (see above). Returns 0 when the run could be played (check
 * r->violation), or a negative errno when the harness itself failed (socketpair, ...). */
int ward_ph_run(ward_ph_t *ph, ward_ph_run_t *r);
/* Frees the run's buffers. */
void ward_ph_run_free(ward_ph_run_t *r);
void ward_ph_free(ward_ph_t *ph);

/* The harness's own reading of a request target, as an app server would read it: the part before
 * '?' (or '#'); ";params" cut from every raw segment; each segment percent-decoded once (a decoded
 * '/' or '\' splits it); empty and "." segments dropped, ".." removing the one before; a trailing
 * slash kept. Writes the path into out (cap >= len + 2; NUL-terminated, may hold decoded NULs) and
 * returns its length, or -1 for a target that is not origin-form. */
long ward_ph_resolve(const char *target, size_t len, char *out, size_t cap);

/* Fuzz input -> run: byte 0 is the control byte — bits 0-1: segments - 1; bits 2-3: app mode;
 * bits 4-6: where the cuts fall; bit 7: the TCP port (when allow_tcp) — then the client's bytes,
 * after `prefix` (prefix_len bytes, may be 0). Returns the buffer holding prefix + bytes (the
 * segments point into it; the caller frees it), or NULL when data is empty. */
uint8_t *ward_ph_fuzz_input(ward_ph_run_t *r, const uint8_t *data, size_t size, const char *prefix,
                            size_t prefix_len, int allow_tcp);

/* For the fuzz targets: builds the harness on first use (certificates from ward_ph_cert_dir(
 * cert_dir); short quiet time), plays data as ward_ph_fuzz_input reads it, and aborts naming the
 * property when the run broke one. Returns 0. Environment, for triage: WARD_PH_VERBOSE=1 prints
 * each run; WARD_PH_LOG=debug|info|warn turns the proxy's log on; WARD_PH_IGNORE=TEXT does not
 * abort on a violation whose text contains TEXT (a known bug, while it is open). */
int ward_ph_fuzz_one(const char *cert_dir, const uint8_t *data, size_t size, const char *prefix,
                     size_t prefix_len, int allow_tcp);

/* The directory of test certificates: $WARD_FUZZ_CERT_DIR, $WARD_CERT_DIR, or fallback. */
const char *ward_ph_cert_dir(const char *fallback);

#endif
