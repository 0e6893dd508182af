/* conn.h — internal to proxy/: the connection object shared by conn.c (accept, connect, TLS
 * handshake, protocol choice, the opaque TCP pump) and the HTTP codecs (http1.c, http2.c).
 *
 * Phases (nghttpx ClientHandler style):
 *   inbound:  accept -> TLS handshake -> protocol (ALPN, else sniff the decrypted bytes)
 *             -> [opaque TCP: authorize the connection] -> connect to the app -> proxying
 *   outbound: accept -> sniff the app's first bytes (unless the port is server-speaks-first)
 *             -> connect to the peer sidecar -> TLS handshake offering the sniffed ALPN
 *             -> proxying (always opaque: the inbound side parses and decides)
 * In the proxying phase an HTTP connection belongs to its codec (c->codec != NULL): conn.c then
 * only forwards poll events to codec->on_io and owns nothing but the teardown.
 *
 * Ownership: conn.c allocates and frees the connection and both sockets; a codec allocates its
 * state in start() (c->cs) and frees it in free(), which conn.c calls once, before the sockets
 * close. A codec ends the connection with ward_conn_close() and must not touch c afterwards in the
 * same call chain except to return. */
#ifndef WARD_PROXY_CONN_H
#define WARD_PROXY_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#include "worker.h"
#include "ward/authz.h"
#include "ward/log.h"
#include "ward/tls.h"

typedef enum {
    WARD_CS_CONNECTING,
    WARD_CS_HANDSHAKE,
    WARD_CS_SNIFFING,
    WARD_CS_PROXYING,
    WARD_CS_LINGERING, /* a canned answer (502) sent: reading the caller out before closing */
    WARD_CS_CLOSING
} ward_conn_state_t;

/* What a connection carries, from ALPN or sniffing. */
typedef enum {
    WARD_PROTO_TCP = 0,
    WARD_PROTO_HTTP1 = 1,
    WARD_PROTO_HTTP2 = 2,
    WARD_PROTO_COUNT
} ward_proto_t;

const char *ward_proto_name(ward_proto_t p); /* "tcp" | "http1" | "http2" */
const char *ward_proto_alpn(ward_proto_t p); /* "ward-tcp" | "http/1.1" | "h2" */

/* Side flags. */
enum {
    WARD_SF_POLL = 1u << 0,      /* poll handle initialised */
    WARD_SF_RD_EOF = 1u << 1,    /* no more bytes will come from this side */
    WARD_SF_WR_SHUT = 1u << 2,   /* we have ended our writing toward this side */
    WARD_SF_RD_WANT_W = 1u << 3, /* TLS: the last read needs the socket writable */
    WARD_SF_WR_WANT_R = 1u << 4, /* TLS: the last write needs the socket readable */
    WARD_SF_SHUT_PEND = 1u << 5, /* close_notify still to be flushed */
    WARD_SF_GOT_BYTES = 1u << 6, /* at least one byte was read from this side */
    WARD_SF_DRAINED = 1u << 7,   /* plain: the last read was short (kernel buffer empty then) */
};

/* One socket of a connection: plain, or TLS through lib/tls (ssl != NULL). */
typedef struct {
    uv_poll_t poll;
    int fd;
    SSL *ssl;         /* NULL on the plain side */
    ward_tls_io_t io; /* the TLS side's receive buffer (see ward/tls.h) */
    uint8_t flags;
    uint8_t events; /* what the poll handle is started with */
} ward_side_t;

/* Bytes waiting to be written to one side: a list of pool chunks (linked through chunk->next).
 * Used by the codecs, whose output does not map 1:1 onto what they read. */
typedef struct {
    ward_chunk_t *head, *tail;
    size_t bytes;
} ward_outq_t;

typedef struct ward_codec {
    const char *name;
    /* Called once, in the proxying phase, with both sockets connected; c->pre may hold bytes
     * already read from downstream (sniffing) that the codec must consume first (it takes the
     * chunk: set c->pre to NULL and put it back to the pool when done). Returns 0, or a negative
     * error (conn.c then aborts the connection). */
    int (*start)(ward_conn_t *c);
    /* A poll event on c->down or c->up (events: UV_READABLE | UV_WRITABLE | UV_DISCONNECT). The
     * codec sets the events it wants on both sides with ward_side_set_events. */
    void (*on_io)(ward_conn_t *c, ward_side_t *fired, int events);
    /* Graceful shutdown requested (drain): finish in-flight requests, accept no new ones
     * (HTTP/1: "Connection: close" on the next response; HTTP/2: GOAWAY). May be NULL. */
    void (*drain)(ward_conn_t *c);
    /* Frees the codec state (c->cs). Called once from teardown. */
    void (*free)(ward_conn_t *c);
} ward_codec_t;

extern const ward_codec_t ward_codec_http1; /* http1.c */
extern const ward_codec_t ward_codec_http2; /* http2.c */

struct ward_conn {
    ward_side_t down; /* the side that connected to us */
    ward_side_t up;   /* the side we connected to */
    uv_timer_t timer;
    ward_worker_t *w;
    ward_conn_t *prev, *next;
    const ward_mapping_t *map;
    ward_identity_t *ident;
    ward_tls_peer_t peer;
    ward_chunk_t *buf[2]; /* opaque pump: one chunk in flight per ward_flow_t */
    ward_chunk_t *pre;    /* bytes read from downstream while choosing the protocol */
    const ward_codec_t *codec;
    void *cs;   /* codec state */
    char *xfcc; /* inbound: the verified-identity header value, built on first use */
    struct sockaddr_storage peer_addr; /* downstream's address */
    ward_addr_t target;      /* where up connects: the mapping's, or the original destination */
    const char *expected_id; /* outbound: the id the server must present (map or --peers) */
    char *expected_own;      /* expected_id when it came from --peers (owned) */
    uint64_t id;
    uint64_t bytes[2];
    uint32_t allowed, denied; /* authorization decisions made on this connection */
    uint64_t started;
    uint64_t last_active;
    uint64_t head_deadline; /* uv_now() by which the current request head must be in; 0 = none */
    uint32_t map_index;
    uint16_t port; /* the workload port (inbound: the app's; outbound: the peer's) */
    uint8_t dir;
    uint8_t state;
    uint8_t handles;
    uint8_t proto;     /* ward_proto_t */
    uint8_t plaintext; /* no mTLS: passthrough (outbound) or a PERMISSIVE plaintext caller */
    uint8_t peeked;    /* inbound: the first byte was checked for a TLS record */
};

/* One finished HTTP request, for metrics (ward_requests_total, ward_request_duration_seconds) and
 * the access log (one JSON line per request with --access-log all; denials are logged by
 * ward_conn_authorize unless --access-log off). */
typedef struct {
    const char *method; /* NUL-terminated */
    const char *path;   /* the normalised path sent to the app (may be NULL) */
    size_t path_len;
    unsigned status;         /* HTTP status sent to the caller; 0 = none (reset) */
    uint64_t bytes_in;       /* request body bytes from the caller */
    uint64_t bytes_out;      /* response body bytes to the caller */
    uint64_t start_ms;       /* uv_now() when the request head was complete */
    const char *grpc_status; /* gRPC: the grpc-status sent (NULL otherwise) */
    int denied;              /* the proxy answered: policy denial */
} ward_request_log_t;

/* --- socket I/O (plain or TLS), for the codecs -------------------------------------------------
 * Reads and writes return a byte count, WARD_IO_EOF (0, reads only), WARD_IO_WANT_READ /
 * WARD_IO_WANT_WRITE (would block; TLS may need the other direction), or WARD_IO_ERROR. */
ssize_t ward_side_read(ward_side_t *s, char *buf, size_t n);
ssize_t ward_side_write(ward_side_t *s, const char *buf, size_t n);
/* Ends our writing toward s: close_notify (TLS) then FIN. Returns 0, WANT, or ERROR. */
int ward_side_shutdown(ward_side_t *s);
/* 1 when bytes already received from s wait in user space (no poll event will announce them). */
int ward_side_buffered(const ward_side_t *s);
/* 1 when the last read found the kernel buffer empty (wait for the poll event). */
int ward_side_drained(const ward_side_t *s);
/* Call on a readable event before reading. */
void ward_side_readable(ward_side_t *s);
/* Sets what the side's poll handle waits for (0 stops it). */
void ward_side_set_events(ward_side_t *s, unsigned events);
/* The poll events s needs to make progress reading (when want_read) and writing (when
 * want_write), accounting for TLS needing the opposite direction. */
unsigned ward_side_wanted(const ward_side_t *s, int want_read, int want_write);

/* --- output queues ---------------------------------------------------------------------------- */
/* Appends a copy of data[0..len). Returns 0 or WARD_ENOMEM. */
int ward_outq_append(ward_conn_t *c, ward_outq_t *q, const void *data, size_t len);
/* Writes as much of q to s as s takes. Returns 0 when q is empty, WARD_IO_WANT_READ/WRITE when s
 * would block, WARD_IO_ERROR. Counts the bytes written in flow. */
int ward_outq_flush(ward_conn_t *c, ward_outq_t *q, ward_side_t *s, ward_flow_t flow);
/* Drops every queued byte. */
void ward_outq_clear(ward_conn_t *c, ward_outq_t *q);

/* --- connection services ---------------------------------------------------------------------- */
/* Ends the connection (abortive: RST on both sockets). Idempotent. */
void ward_conn_close(ward_conn_t *c, int abortive);
/* Marks activity (the idle timer measures from the last call). */
void ward_conn_touch(ward_conn_t *c);
/* The request-head deadline (--request-timeout), against slow-header clients whose trickle would
 * keep the idle timer alive: on = started when a request's first byte arrives (a running deadline
 * is kept), off = the head is complete. Past the deadline the connection is closed and counted in
 * ward_idle_timeouts_total with a request_head_timeout log line. */
void ward_conn_head_timer(ward_conn_t *c, int on);
/* Counts n bytes moved in flow (connection + worker totals). */
void ward_conn_count_bytes(ward_conn_t *c, ward_flow_t flow, size_t n);

/* Decides one request (req->method/path/header set by the codec) or, with req->method NULL, the
 * whole opaque TCP connection. Fills in the caller's identity, the workload port, the source
 * address and the hour, evaluates against the current policy snapshot, counts the decision
 * (ward_authz_decisions_total) and logs a denial (and an AUDIT match) as one JSON line. Returns
 * res->decision. */
ward_authz_decision_t ward_conn_authorize(ward_conn_t *c, ward_authz_request_t *req,
                                          ward_authz_result_t *res);
/* Counts one finished request by protocol ("http1" | "http2" | "grpc" as ward_req_proto_t) and
 * status (HTTP status; grpc: the HTTP status too; 0 = reset/no response). */
typedef enum {
    WARD_REQ_HTTP1 = 0,
    WARD_REQ_HTTP2 = 1,
    WARD_REQ_GRPC = 2,
    WARD_REQ_COUNT
} ward_req_proto_t;
void ward_conn_count_request(ward_conn_t *c, ward_req_proto_t proto, unsigned status);
/* The full form: counts like ward_conn_count_request, observes the request's duration, and writes
 * the access-log line. */
void ward_conn_request_done(ward_conn_t *c, ward_req_proto_t proto, const ward_request_log_t *r);
/* The x-forwarded-client-cert value for this connection's verified peer:
 *   By=<our SPIFFE id>;Hash=<hex SHA-256 of the peer's leaf certificate>;URI=<peer SPIFFE id>
 * Built once and cached; NULL when there is no verified peer or memory ran out. */
const char *ward_conn_xfcc(ward_conn_t *c);
/* The header name the proxy sets and strips: "x-forwarded-client-cert". */
#define WARD_XFCC_HEADER "x-forwarded-client-cert"

/* Fills a log line's connection context (id, direction, phase, addresses, peer identity). */
void ward_conn_log_ctx(ward_logline_t *l, ward_conn_t *c);

/* Limits shared by the codecs. */
#define WARD_HTTP_MAX_HEADER_BYTES (64 * 1024) /* request/response head; more -> 431 */
#define WARD_HTTP_MAX_HEADERS      128         /* header fields per message; more -> 431 */

#endif
