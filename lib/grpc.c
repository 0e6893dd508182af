/* grpc.c — gRPC over HTTP/2 on nghttp2, transport-agnostic (see ward/grpc.h and gRPC's
 * PROTOCOL-HTTP2.md).
 *
 * One nghttp2 session per connection; one ward_grpc_call_t per stream, hung on the stream as its
 * user data and freed by the engine right after its on_close (which the nghttp2 stream-close
 * callback drives). nghttp2 does the HTTP/2 framing, HPACK, stream states and flow control; this
 * file does gRPC: request validation, the 5-byte message framing, status trailers, deadlines.
 *
 * Who owns what:
 *  - outgoing messages are copied into a per-call queue and pulled out by the stream's data
 * provider as flow control allows (ward_grpc_call_queued() tells the owner how much waits there);
 *  - incoming DATA is parsed as it arrives: whole messages are delivered straight from nghttp2's
 *    buffer, a message split across frames is reassembled in a per-call buffer bounded by
 *    max_message_size. Automatic WINDOW_UPDATEs are off: bytes are consumed
 * (nghttp2_session_consume) once delivered, buffered in that bounded buffer, or dropped, so the
 * peer can never make the engine hold more than one message per call;
 *  - request/response header fields are copied into a small per-call arena (16 KiB cap).
 *
 * Protocol errors: nghttp2 reacts to a connection error by queueing GOAWAY and saying nothing else.
 * To report it from ward_grpc_conn_recv(), the control frames nghttp2 queued while receiving
 * (ACKs, WINDOW_UPDATE, RST_STREAM, GOAWAY, HEADERS) are serialized at the end of every recv into
 * conn->out — the data provider answers NGHTTP2_ERR_PAUSE meanwhile, so DATA stays with nghttp2
 * until the owner calls ward_grpc_conn_send() — and a GOAWAY with an error code means the peer
 * broke the protocol (ward only ever sends GOAWAY with NO_ERROR itself). */
#include "ward/grpc.h"
#include "ward/alloc.h"
#include "ward/err.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

#define WARD_GRPC_DEFAULT_MAX_MESSAGE ((size_t)4 << 20)
#define WARD_GRPC_DEFAULT_MAX_CALLS   100
#define WARD_GRPC_DEFAULT_WINDOW      (1u << 20)
#define WARD_GRPC_MAX_WINDOW          0x7fffffffu
#define WARD_GRPC_PREFIX              5
/* Header fields kept per call, counted like SETTINGS_MAX_HEADER_LIST_SIZE (name + value + 32). */
#define WARD_GRPC_MAX_HEADER_BYTES 16384
#define WARD_GRPC_ARENA_BLOCK      1024
/* Longest status message sent (bytes before percent-encoding). */
#define WARD_GRPC_MAX_STATUS_MSG 1024
/* A reassembly buffer bigger than this is released after its message rather than kept. */
#define WARD_GRPC_RBUF_KEEP 65536

/* --- types --------------------------------------------------------------------------------- */

/* Call flags. A call is "visible" once the user holds it (client: always; server: accepted by
 * on_call); only visible calls get callbacks. */
enum {
    WARD_GRPC_CALL_VISIBLE = 1u << 0,
    WARD_GRPC_CALL_HEADERS_SENT = 1u << 1,  /* server: response HEADERS submitted */
    WARD_GRPC_CALL_HEADERS_RECV = 1u << 2,  /* client: response HEADERS received */
    WARD_GRPC_CALL_DEFERRED = 1u << 3,      /* data provider returned NGHTTP2_ERR_DEFERRED */
    WARD_GRPC_CALL_SEND_CLOSED = 1u << 4,   /* client: close_send; server: finish (or refusal) */
    WARD_GRPC_CALL_STATUS = 1u << 5,        /* final status decided (call->status) */
    WARD_GRPC_CALL_DISCARD = 1u << 6,       /* drop incoming messages */
    WARD_GRPC_CALL_DEADLINE = 1u << 7,      /* call->deadline_ms is set */
    WARD_GRPC_CALL_EXPIRED = 1u << 8,       /* deadline handled */
    WARD_GRPC_CALL_CLOSED = 1u << 9,        /* on_close delivered (or being delivered) */
    WARD_GRPC_CALL_HDR_OVERFLOW = 1u << 10, /* header fields over WARD_GRPC_MAX_HEADER_BYTES */
    WARD_GRPC_CALL_RESET = 1u << 11,        /* RST_STREAM submitted by us */
    WARD_GRPC_CALL_REMOTE_EOS = 1u << 12    /* peer sent END_STREAM */
};

/* Connection flags. */
enum {
    WARD_GRPC_CONN_GOAWAY_SENT = 1u << 0, /* we queued GOAWAY */
    WARD_GRPC_CONN_GOAWAY_RECV = 1u << 1,
    WARD_GRPC_CONN_DEAD = 1u << 2,        /* fatal nghttp2 error */
    WARD_GRPC_CONN_PROTO_ERROR = 1u << 3, /* nghttp2 queued GOAWAY with an error code */
    WARD_GRPC_CONN_FREEING = 1u << 4,   /* ward_grpc_conn_free() runs: no callbacks but on_close */
    WARD_GRPC_CONN_DRAINING = 1u << 5,  /* control frames only: the data provider pauses */
    WARD_GRPC_CONN_OUT_HANDED = 1u << 6 /* conn->out was returned by ward_grpc_conn_send() */
};

typedef struct ward_grpc_msg {
    struct ward_grpc_msg *next;
    size_t len; /* prefix + payload */
    size_t off; /* bytes already handed to nghttp2 */
    uint8_t data[];
} ward_grpc_msg_t;

typedef struct ward_grpc_hdr {
    struct ward_grpc_hdr *next;
    const char *value;
    char name[];
} ward_grpc_hdr_t;

typedef struct ward_grpc_block {
    struct ward_grpc_block *next;
    size_t used;
    size_t cap;
    _Alignas(max_align_t) char data[];
} ward_grpc_block_t;

struct ward_grpc_call {
    ward_grpc_conn_t *conn;
    ward_grpc_call_t *prev, *next; /* conn->calls */
    int32_t stream_id;
    unsigned flags;
    void *data;
    uint64_t deadline_ms;

    /* Header fields received (server: request; client: response headers and trailers). */
    ward_grpc_block_t *arena;
    ward_grpc_hdr_t *hdrs, *hdr_last;
    size_t hdr_bytes;

    /* Client: what the response said so far. */
    int http_status;
    int grpc_status; /* -1 = none */
    int ctype_ok;
    char *grpc_message; /* decoded */

    /* The outcome handed to on_close. */
    int status;
    char *message;

    /* Server: the status ward_grpc_call_finish() asked for, sent in the trailers. */
    int fin_status;
    char *fin_message;

    /* Outgoing messages. */
    ward_grpc_msg_t *out_head, *out_tail;
    size_t queued;

    /* Incoming message reassembly. */
    uint8_t prefix[WARD_GRPC_PREFIX];
    size_t prefix_len;
    size_t msg_len; /* length announced by the prefix */
    size_t msg_got;
    uint8_t *rbuf;
    size_t rcap;
};

struct ward_grpc_conn {
    nghttp2_session *session;
    ward_grpc_callbacks_t cb;
    void *data;
    int is_server;
    unsigned flags;
    int fatal; /* WARD_E* behind WARD_GRPC_CONN_DEAD */
    size_t max_message;
    uint64_t now_ms;
    uint32_t pings; /* PINGs sent and not yet acknowledged */
    ward_grpc_call_t *calls;
    /* Control frames serialized during recv, returned first by ward_grpc_conn_send(). */
    uint8_t *out;
    size_t out_len;
    size_t out_cap;
};

/* --- small helpers ------------------------------------------------------------------------- */

static int ward__ng_err(int rv)
{
    if (rv >= 0) return 0;
    if (rv == NGHTTP2_ERR_NOMEM) return WARD_ENOMEM;
    if (rv == NGHTTP2_ERR_INVALID_ARGUMENT || rv == NGHTTP2_ERR_INVALID_STATE ||
        rv == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE || rv == NGHTTP2_ERR_PROTO)
        return WARD_EINVAL;
    return WARD_EIO;
}

static void ward__nv(nghttp2_nv *nv, const char *name, const char *value)
{
    nv->name = (uint8_t *)name;
    nv->namelen = strlen(name);
    nv->value = (uint8_t *)value;
    nv->valuelen = strlen(value);
    nv->flags = NGHTTP2_NV_FLAG_NONE;
}

/* "application/grpc", optionally followed by "+subtype" or ";params". */
static int ward__is_grpc_ctype(const char *v, size_t n)
{
    static const char ct[] = "application/grpc";
    size_t k = sizeof(ct) - 1;
    if (n < k || strncmp(v, ct, k) != 0) return 0;
    return n == k || v[k] == '+' || v[k] == ';';
}

/* Percent-encodes per PROTOCOL-HTTP2 (%x20-%x7E except '%' stay). dst holds 3 * n + 1. */
static void ward__pct_encode(char *dst, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c <= 0x7e && c != '%') {
            dst[o++] = (char)c;
        } else {
            dst[o++] = '%';
            dst[o++] = hex[c >> 4];
            dst[o++] = hex[c & 15];
        }
    }
    dst[o] = '\0';
}

static int ward__hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes %XX; a broken escape is kept as is (the spec forbids failing on it). */
static char *ward__pct_decode(const char *s, size_t n)
{
    char *d = ward_malloc(n + 1);
    if (d == NULL) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        if (s[i] == '%' && i + 2 < n && (hi = ward__hexval(s[i + 1])) >= 0 &&
            (lo = ward__hexval(s[i + 2])) >= 0) {
            d[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            d[o++] = s[i];
        }
    }
    d[o] = '\0';
    return d;
}

/* grpc-status: 1*DIGIT without leading zeros. Unknown or malformed codes become UNKNOWN. */
static int ward__parse_grpc_status(const char *v, size_t n)
{
    if (n == 0 || n > 3 || (n > 1 && v[0] == '0')) return WARD_GRPC_UNKNOWN;
    int s = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9') return WARD_GRPC_UNKNOWN;
        s = s * 10 + (v[i] - '0');
    }
    return s <= 16 ? s : WARD_GRPC_UNKNOWN;
}

/* gRPC's http-grpc-status-mapping.md, for responses without grpc-status. */
static int ward__status_from_http(int http)
{
    switch (http) {
    case 400:
    case 431:
        return WARD_GRPC_INTERNAL;
    case 401:
        return WARD_GRPC_UNAUTHENTICATED;
    case 403:
        return WARD_GRPC_PERMISSION_DENIED;
    case 404:
        return WARD_GRPC_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
        return WARD_GRPC_UNAVAILABLE;
    default:
        return WARD_GRPC_UNKNOWN;
    }
}

/* PROTOCOL-HTTP2's RST_STREAM table. */
static int ward__status_from_h2(uint32_t code)
{
    switch (code) {
    case NGHTTP2_REFUSED_STREAM:
        return WARD_GRPC_UNAVAILABLE;
    case NGHTTP2_CANCEL:
        return WARD_GRPC_CANCELLED;
    case NGHTTP2_ENHANCE_YOUR_CALM:
        return WARD_GRPC_RESOURCE_EXHAUSTED;
    case NGHTTP2_INADEQUATE_SECURITY:
        return WARD_GRPC_PERMISSION_DENIED;
    default:
        return WARD_GRPC_INTERNAL;
    }
}

/* --- calls: allocation, headers, queue ----------------------------------------------------- */

static ward_grpc_call_t *ward__call_new(ward_grpc_conn_t *conn)
{
    ward_grpc_call_t *call = ward_calloc(1, sizeof(*call));
    if (call == NULL) return NULL;
    call->conn = conn;
    call->grpc_status = -1;
    call->next = conn->calls;
    if (conn->calls != NULL) conn->calls->prev = call;
    conn->calls = call;
    return call;
}

static void ward__call_unlink(ward_grpc_call_t *call)
{
    ward_grpc_conn_t *conn = call->conn;
    if (call->prev != NULL)
        call->prev->next = call->next;
    else if (conn->calls == call)
        conn->calls = call->next;
    if (call->next != NULL) call->next->prev = call->prev;
    call->prev = call->next = NULL;
}

static void ward__call_free(ward_grpc_call_t *call)
{
    ward_grpc_msg_t *m = call->out_head;
    while (m != NULL) {
        ward_grpc_msg_t *next = m->next;
        ward_free(m);
        m = next;
    }
    ward_grpc_block_t *b = call->arena;
    while (b != NULL) {
        ward_grpc_block_t *next = b->next;
        ward_free(b);
        b = next;
    }
    ward_free(call->rbuf);
    ward_free(call->grpc_message);
    ward_free(call->message);
    ward_free(call->fin_message);
    ward_free(call);
}

static void *ward__arena_alloc(ward_grpc_call_t *call, size_t n)
{
    n = (n + sizeof(max_align_t) - 1) & ~(sizeof(max_align_t) - 1);
    ward_grpc_block_t *b = call->arena;
    if (b == NULL || b->cap - b->used < n) {
        size_t cap = n > WARD_GRPC_ARENA_BLOCK ? n : WARD_GRPC_ARENA_BLOCK;
        b = ward_malloc(sizeof(*b) + cap);
        if (b == NULL) return NULL;
        b->used = 0;
        b->cap = cap;
        b->next = call->arena;
        call->arena = b;
    }
    void *p = b->data + b->used;
    b->used += n;
    return p;
}

/* Copies one header field (lower-cased name). Over the cap the call is marked and nothing more is
 * kept; the caller refuses it once the block is complete. */
static int ward__call_add_header(ward_grpc_call_t *call, const uint8_t *name, size_t nlen,
                                 const uint8_t *value, size_t vlen)
{
    size_t cost = nlen + vlen + 32;
    if ((call->flags & WARD_GRPC_CALL_HDR_OVERFLOW) ||
        call->hdr_bytes + cost > WARD_GRPC_MAX_HEADER_BYTES) {
        call->flags |= WARD_GRPC_CALL_HDR_OVERFLOW;
        return 0;
    }
    ward_grpc_hdr_t *h = ward__arena_alloc(call, sizeof(*h) + nlen + vlen + 2);
    if (h == NULL) return WARD_ENOMEM;
    call->hdr_bytes += cost;
    for (size_t i = 0; i < nlen; i++) {
        char c = (char)name[i];
        h->name[i] = c >= 'A' && c <= 'Z' ? (char)(c - 'A' + 'a') : c;
    }
    h->name[nlen] = '\0';
    char *v = h->name + nlen + 1;
    memcpy(v, value, vlen);
    v[vlen] = '\0';
    h->value = v;
    h->next = NULL;
    if (call->hdr_last != NULL)
        call->hdr_last->next = h;
    else
        call->hdrs = h;
    call->hdr_last = h;
    return 0;
}

/* First decision wins: a status from the trailers is not overwritten by a later reset, nor a
 * local cancel by trailers that were already on their way. */
static void ward__call_set_status(ward_grpc_call_t *call, int status, const char *msg)
{
    if (call->flags & WARD_GRPC_CALL_STATUS) return;
    call->flags |= WARD_GRPC_CALL_STATUS;
    call->status = status;
    call->message = msg != NULL && msg[0] != '\0' ? ward_strdup(msg) : NULL;
}

/* Drops queued messages, except the bytes of one nghttp2 has started sending (the peer would see
 * a torn message otherwise). */
static void ward__queue_trim(ward_grpc_call_t *call)
{
    ward_grpc_msg_t *keep = call->out_head;
    if (keep == NULL) return;
    if (keep->off == 0) keep = NULL;
    ward_grpc_msg_t *m = keep != NULL ? keep->next : call->out_head;
    while (m != NULL) {
        ward_grpc_msg_t *next = m->next;
        call->queued -= m->len - m->off;
        ward_free(m);
        m = next;
    }
    if (keep != NULL) keep->next = NULL;
    call->out_head = call->out_tail = keep;
}

static void ward__resume(ward_grpc_call_t *call)
{
    if (call->flags & WARD_GRPC_CALL_DEFERRED) {
        call->flags &= ~WARD_GRPC_CALL_DEFERRED;
        nghttp2_session_resume_data(call->conn->session, call->stream_id);
    }
}

/* Builds grpc-status / grpc-message fields into nv (2 entries at most); returns the count. */
static size_t ward__status_nv(nghttp2_nv *nv, char *code, char *enc, int status, const char *msg)
{
    snprintf(code, 12, "%d", status);
    ward__nv(&nv[0], "grpc-status", code);
    if (msg == NULL || msg[0] == '\0') return 1;
    size_t n = strlen(msg);
    if (n > WARD_GRPC_MAX_STATUS_MSG) n = WARD_GRPC_MAX_STATUS_MSG;
    ward__pct_encode(enc, msg, n);
    ward__nv(&nv[1], "grpc-message", enc);
    return 2;
}

/* Server: answers a call that never reached (or was refused by) on_call, trailers-only. */
static void ward__server_refuse(ward_grpc_call_t *call, const char *http, int status,
                                const char *msg)
{
    char code[12], enc[3 * WARD_GRPC_MAX_STATUS_MSG + 1];
    nghttp2_nv nv[4];
    call->flags |= WARD_GRPC_CALL_DISCARD | WARD_GRPC_CALL_SEND_CLOSED;
    if (call->flags & WARD_GRPC_CALL_HEADERS_SENT) return;
    call->flags |= WARD_GRPC_CALL_HEADERS_SENT;
    ward__nv(&nv[0], ":status", http);
    ward__nv(&nv[1], "content-type", "application/grpc");
    size_t n = 2 + ward__status_nv(nv + 2, code, enc, status, msg);
    if (nghttp2_submit_response(call->conn->session, call->stream_id, nv, n, NULL) != 0)
        nghttp2_submit_rst_stream(call->conn->session, NGHTTP2_FLAG_NONE, call->stream_id,
                                  NGHTTP2_INTERNAL_ERROR);
}

/* Server: ends the call with status + msg. Trailers-only when nothing was sent yet, otherwise the
 * data provider sends the trailers after the queued messages. The status becomes the on_close
 * status when the trailers are actually sent. */
static int ward__server_finish(ward_grpc_call_t *call, int status, const char *msg)
{
    ward_grpc_conn_t *conn = call->conn;
    size_t n = msg != NULL ? strlen(msg) : 0;
    if (n > WARD_GRPC_MAX_STATUS_MSG) n = WARD_GRPC_MAX_STATUS_MSG;
    char *copy = ward_strndup(msg != NULL ? msg : "", n);
    if (copy == NULL) return WARD_ENOMEM;
    ward_free(call->fin_message);
    call->fin_message = copy;
    call->fin_status = status;
    call->flags |= WARD_GRPC_CALL_SEND_CLOSED | WARD_GRPC_CALL_DISCARD;
    if (call->flags & WARD_GRPC_CALL_HEADERS_SENT) {
        ward__resume(call);
        return 0;
    }
    char code[12], enc[3 * WARD_GRPC_MAX_STATUS_MSG + 1];
    nghttp2_nv nv[4];
    ward__nv(&nv[0], ":status", "200");
    ward__nv(&nv[1], "content-type", "application/grpc");
    size_t k = 2 + ward__status_nv(nv + 2, code, enc, status, copy);
    int rv = nghttp2_submit_response(conn->session, call->stream_id, nv, k, NULL);
    if (rv != 0) {
        call->flags |= WARD_GRPC_CALL_RESET;
        nghttp2_submit_rst_stream(conn->session, NGHTTP2_FLAG_NONE, call->stream_id,
                                  NGHTTP2_INTERNAL_ERROR);
        return ward__ng_err(rv);
    }
    call->flags |= WARD_GRPC_CALL_HEADERS_SENT;
    return 0;
}

/* Client: ends the call locally with status and resets the stream. */
static void ward__client_fail(ward_grpc_call_t *call, int status, const char *msg, uint32_t code)
{
    ward__call_set_status(call, status, msg);
    call->flags |= WARD_GRPC_CALL_DISCARD | WARD_GRPC_CALL_SEND_CLOSED;
    if (call->flags & WARD_GRPC_CALL_RESET) return;
    call->flags |= WARD_GRPC_CALL_RESET;
    nghttp2_submit_rst_stream(call->conn->session, NGHTTP2_FLAG_NONE, call->stream_id, code);
}

/* A message-level error on either side: the server answers with the status (and resets the stream
 * once the trailers are out), the client resets the stream. */
static void ward__call_fail(ward_grpc_call_t *call, int status, const char *msg)
{
    if (!call->conn->is_server) {
        ward__client_fail(call, status, msg, NGHTTP2_CANCEL);
        return;
    }
    call->flags |= WARD_GRPC_CALL_DISCARD;
    if ((call->flags & WARD_GRPC_CALL_VISIBLE) && !(call->flags & WARD_GRPC_CALL_SEND_CLOSED)) {
        ward__queue_trim(call);
        if (ward__server_finish(call, status, msg) == 0) return;
    }
    if (!(call->flags & (WARD_GRPC_CALL_SEND_CLOSED | WARD_GRPC_CALL_RESET))) {
        call->flags |= WARD_GRPC_CALL_RESET;
        ward__call_set_status(call, status, msg);
        nghttp2_submit_rst_stream(call->conn->session, NGHTTP2_FLAG_NONE, call->stream_id,
                                  NGHTTP2_INTERNAL_ERROR);
    }
}

/* --- incoming messages --------------------------------------------------------------------- */

static void ward__deliver(ward_grpc_call_t *call, const uint8_t *msg, size_t len)
{
    ward_grpc_conn_t *conn = call->conn;
    if ((call->flags & (WARD_GRPC_CALL_DISCARD | WARD_GRPC_CALL_CLOSED)) ||
        !(call->flags & WARD_GRPC_CALL_VISIBLE) || conn->cb.on_message == NULL)
        return;
    static const uint8_t empty[1];
    conn->cb.on_message(call, len ? msg : empty, len, call->data);
}

static int ward__rbuf_reserve(ward_grpc_call_t *call, size_t need)
{
    if (need <= call->rcap) return 0;
    size_t cap = call->rcap ? call->rcap : 16384;
    while (cap < need)
        cap *= 2;
    if (cap > call->msg_len) cap = call->msg_len;
    uint8_t *p = ward_realloc(call->rbuf, cap);
    if (p == NULL) return WARD_ENOMEM;
    call->rbuf = p;
    call->rcap = cap;
    return 0;
}

/* Splits DATA bytes into messages. Bytes after a framing error are dropped (the call is ending). */
static void ward__recv_data(ward_grpc_call_t *call, const uint8_t *p, size_t len)
{
    size_t max = call->conn->max_message;
    while (len > 0 && !(call->flags & WARD_GRPC_CALL_DISCARD)) {
        if (call->prefix_len < WARD_GRPC_PREFIX) {
            size_t n = WARD_GRPC_PREFIX - call->prefix_len;
            if (n > len) n = len;
            memcpy(call->prefix + call->prefix_len, p, n);
            call->prefix_len += n;
            p += n;
            len -= n;
            if (call->prefix_len < WARD_GRPC_PREFIX) break;
            if (call->prefix[0] != 0) {
                if (call->prefix[0] == 1)
                    ward__call_fail(call, WARD_GRPC_UNIMPLEMENTED,
                                    "compressed messages are not supported");
                else
                    ward__call_fail(call, WARD_GRPC_INTERNAL, "invalid compressed flag");
                break;
            }
            size_t mlen = (size_t)call->prefix[1] << 24 | (size_t)call->prefix[2] << 16 |
                          (size_t)call->prefix[3] << 8 | (size_t)call->prefix[4];
            if (mlen > max) {
                char why[96];
                snprintf(why, sizeof(why), "message of %zu bytes exceeds the limit of %zu", mlen,
                         max);
                ward__call_fail(call, WARD_GRPC_RESOURCE_EXHAUSTED, why);
                break;
            }
            call->msg_len = mlen;
            call->msg_got = 0;
            if (len >= mlen) { /* whole message in this chunk: deliver in place */
                call->prefix_len = 0;
                ward__deliver(call, p, mlen);
                p += mlen;
                len -= mlen;
                continue;
            }
            if (len == 0) break; /* the prefix ended this chunk */
        }
        size_t n = call->msg_len - call->msg_got;
        if (n > len) n = len;
        if (ward__rbuf_reserve(call, call->msg_got + n) < 0) {
            ward__call_fail(call, WARD_GRPC_RESOURCE_EXHAUSTED, "out of memory");
            break;
        }
        memcpy(call->rbuf + call->msg_got, p, n);
        call->msg_got += n;
        p += n;
        len -= n;
        if (call->msg_got == call->msg_len) {
            call->prefix_len = 0;
            ward__deliver(call, call->rbuf, call->msg_len);
            if (call->rcap > WARD_GRPC_RBUF_KEEP) {
                ward_free(call->rbuf);
                call->rbuf = NULL;
                call->rcap = 0;
            }
        }
    }
}

/* --- server side --------------------------------------------------------------------------- */

static const char *ward__hdr(const ward_grpc_call_t *call, const char *name)
{
    for (const ward_grpc_hdr_t *h = call->hdrs; h != NULL; h = h->next)
        if (strcmp(h->name, name) == 0) return h->value;
    return NULL;
}

/* Request headers complete: validate, parse the deadline, ask on_call. */
static void ward__server_request(ward_grpc_call_t *call)
{
    ward_grpc_conn_t *conn = call->conn;
    if (call->flags & WARD_GRPC_CALL_HDR_OVERFLOW) {
        ward__server_refuse(call, "200", WARD_GRPC_RESOURCE_EXHAUSTED, "request headers too large");
        return;
    }
    const char *method = ward__hdr(call, ":method");
    const char *scheme = ward__hdr(call, ":scheme");
    const char *path = ward__hdr(call, ":path");
    const char *ctype = ward__hdr(call, "content-type");
    const char *te = ward__hdr(call, "te");
    const char *timeout = ward__hdr(call, "grpc-timeout");
    if (ctype == NULL || !ward__is_grpc_ctype(ctype, strlen(ctype))) {
        /* PROTOCOL-HTTP2: 415, so that non-gRPC clients do not take the answer for success. */
        ward__server_refuse(call, "415", WARD_GRPC_INTERNAL, "invalid content-type");
        return;
    }
    if (method == NULL || strcmp(method, "POST") != 0) {
        ward__server_refuse(call, "200", WARD_GRPC_UNIMPLEMENTED, "method must be POST");
        return;
    }
    if (scheme == NULL || path == NULL || path[0] != '/') {
        ward__server_refuse(call, "200", WARD_GRPC_UNIMPLEMENTED, "malformed :scheme or :path");
        return;
    }
    if (te != NULL && strcmp(te, "trailers") != 0) {
        ward__server_refuse(call, "200", WARD_GRPC_INTERNAL, "te must be trailers");
        return;
    }
    if (timeout != NULL) {
        int64_t ms = ward_grpc_timeout_parse(timeout);
        if (ms < 0) {
            ward__server_refuse(call, "200", WARD_GRPC_INTERNAL, "malformed grpc-timeout");
            return;
        }
        call->deadline_ms = conn->now_ms + (uint64_t)ms;
        call->flags |= WARD_GRPC_CALL_DEADLINE;
    }
    int st = conn->cb.on_call != NULL ? conn->cb.on_call(conn, call, path, conn->data)
                                      : WARD_GRPC_UNIMPLEMENTED;
    if (st != WARD_GRPC_OK) {
        /* A refused call is gone for the user: no on_close. If on_call already finished it (to
         * attach a message), that answer stands. */
        call->data = NULL;
        ward__server_refuse(call, "200", st, NULL);
        return;
    }
    call->flags |= WARD_GRPC_CALL_VISIBLE;
}

/* The client half-closed. A message cut short is a framing error. */
static void ward__server_eos(ward_grpc_call_t *call)
{
    ward_grpc_conn_t *conn = call->conn;
    call->flags |= WARD_GRPC_CALL_REMOTE_EOS;
    if (!(call->flags & WARD_GRPC_CALL_VISIBLE) || (call->flags & WARD_GRPC_CALL_DISCARD)) return;
    if (call->prefix_len > 0) {
        ward__call_fail(call, WARD_GRPC_INTERNAL, "stream ended inside a message");
        return;
    }
    if (conn->cb.on_half_close != NULL) conn->cb.on_half_close(call, call->data);
}

/* --- client side --------------------------------------------------------------------------- */

static void ward__client_trailers(ward_grpc_call_t *call)
{
    char why[48];
    if (call->flags & WARD_GRPC_CALL_HDR_OVERFLOW)
        ward__call_set_status(call, WARD_GRPC_INTERNAL, "response headers too large");
    if (call->prefix_len > 0)
        ward__call_set_status(call, WARD_GRPC_INTERNAL, "stream ended inside a message");
    if (call->grpc_status >= 0) {
        ward__call_set_status(call, call->grpc_status, call->grpc_message);
    } else if (call->http_status != 0 && call->http_status != 200) {
        snprintf(why, sizeof(why), "HTTP status %d", call->http_status);
        ward__call_set_status(call, ward__status_from_http(call->http_status), why);
    } else {
        ward__call_set_status(call, WARD_GRPC_INTERNAL, "missing grpc-status");
    }
    call->flags |= WARD_GRPC_CALL_DISCARD;
}

static void ward__client_headers(ward_grpc_call_t *call, int end_stream)
{
    ward_grpc_conn_t *conn = call->conn;
    char why[48];
    if (end_stream) {
        ward__client_trailers(call);
        return;
    }
    if (call->flags & WARD_GRPC_CALL_HEADERS_RECV) return; /* nghttp2 allows nothing else here */
    if (call->http_status >= 100 && call->http_status < 200) return; /* interim response */
    if (call->flags & WARD_GRPC_CALL_HDR_OVERFLOW) {
        ward__client_fail(call, WARD_GRPC_INTERNAL, "response headers too large", NGHTTP2_CANCEL);
        return;
    }
    if (call->http_status != 200) {
        snprintf(why, sizeof(why), "HTTP status %d", call->http_status);
        ward__client_fail(call, ward__status_from_http(call->http_status), why, NGHTTP2_CANCEL);
        return;
    }
    if (!call->ctype_ok) {
        ward__client_fail(call, WARD_GRPC_UNKNOWN, "invalid content-type", NGHTTP2_CANCEL);
        return;
    }
    call->flags |= WARD_GRPC_CALL_HEADERS_RECV;
    if (!(call->flags & WARD_GRPC_CALL_DISCARD) && conn->cb.on_headers != NULL)
        conn->cb.on_headers(call, call->data);
}

/* Response fields the client acts on, remembered as they arrive. */
static int ward__client_field(ward_grpc_call_t *call, const uint8_t *name, size_t nlen,
                              const uint8_t *value, size_t vlen)
{
    const char *n = (const char *)name, *v = (const char *)value;
    if (nlen == 7 && memcmp(n, ":status", 7) == 0) {
        int s = 0;
        for (size_t i = 0; i < vlen && i < 3; i++)
            s = s * 10 + (v[i] - '0'); /* nghttp2 checked: 3 digits */
        call->http_status = s;
    } else if (nlen == 12 && memcmp(n, "content-type", 12) == 0) {
        call->ctype_ok = ward__is_grpc_ctype(v, vlen);
    } else if (nlen == 11 && memcmp(n, "grpc-status", 11) == 0) {
        call->grpc_status = ward__parse_grpc_status(v, vlen);
    } else if (nlen == 12 && memcmp(n, "grpc-message", 12) == 0) {
        char *d = ward__pct_decode(v, vlen);
        if (d == NULL) return WARD_ENOMEM;
        ward_free(call->grpc_message);
        call->grpc_message = d;
    }
    return 0;
}

/* --- nghttp2 callbacks --------------------------------------------------------------------- */

static ward_grpc_call_t *ward__stream_call(ward_grpc_conn_t *conn, int32_t stream_id)
{
    if (stream_id == 0) return NULL;
    return nghttp2_session_get_stream_user_data(conn->session, stream_id);
}

static int ward__on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame,
                                  void *user_data)
{
    ward_grpc_conn_t *conn = user_data;
    if ((conn->flags & WARD_GRPC_CONN_FREEING) || !conn->is_server ||
        frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    ward_grpc_call_t *call = ward__call_new(conn);
    if (call == NULL) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    call->stream_id = frame->hd.stream_id;
    if (nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, call) != 0) {
        ward__call_unlink(call);
        ward__call_free(call);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return 0;
}

static int ward__on_header(nghttp2_session *session, const nghttp2_frame *frame,
                           const uint8_t *name, size_t namelen, const uint8_t *value,
                           size_t valuelen, uint8_t flags, void *user_data)
{
    ward_grpc_conn_t *conn = user_data;
    (void)session;
    (void)flags;
    if (conn->flags & WARD_GRPC_CONN_FREEING) return 0;
    ward_grpc_call_t *call = ward__stream_call(conn, frame->hd.stream_id);
    if (call == NULL || (call->flags & WARD_GRPC_CALL_CLOSED)) return 0;
    if (ward__call_add_header(call, name, namelen, value, valuelen) < 0 ||
        (!conn->is_server && ward__client_field(call, name, namelen, value, valuelen) < 0))
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    return 0;
}

static int ward__on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame,
                               void *user_data)
{
    ward_grpc_conn_t *conn = user_data;
    if (conn->flags & WARD_GRPC_CONN_FREEING) return 0;
    int eos = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    ward_grpc_call_t *call;
    switch (frame->hd.type) {
    case NGHTTP2_PING:
        if ((frame->hd.flags & NGHTTP2_FLAG_ACK) && conn->pings > 0) {
            conn->pings--;
            if (conn->cb.on_ping_ack != NULL) conn->cb.on_ping_ack(conn, conn->data);
        }
        return 0;
    case NGHTTP2_GOAWAY:
        conn->flags |= WARD_GRPC_CONN_GOAWAY_RECV;
        return 0;
    case NGHTTP2_HEADERS:
    case NGHTTP2_DATA:
        break;
    default:
        return 0;
    }
    call = ward__stream_call(conn, frame->hd.stream_id);
    if (call == NULL || (call->flags & WARD_GRPC_CALL_CLOSED)) return 0;
    if (conn->is_server) {
        if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST)
            ward__server_request(call);
        if (eos) ward__server_eos(call);
        return 0;
    }
    if (frame->hd.type == NGHTTP2_HEADERS) ward__client_headers(call, eos);
    if (eos) {
        call->flags |= WARD_GRPC_CALL_REMOTE_EOS;
        if (!(call->flags & WARD_GRPC_CALL_STATUS)) ward__client_trailers(call);
        /* PROTOCOL-HTTP2 "Early Server Closure": free the stream if we are still sending. */
        if (!(call->flags & WARD_GRPC_CALL_RESET) &&
            nghttp2_session_get_stream_local_close(session, call->stream_id) == 0) {
            call->flags |= WARD_GRPC_CALL_RESET;
            nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, call->stream_id,
                                      NGHTTP2_NO_ERROR);
        }
    }
    return 0;
}

static int ward__on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                               const uint8_t *data, size_t len, void *user_data)
{
    ward_grpc_conn_t *conn = user_data;
    (void)flags;
    if (!(conn->flags & WARD_GRPC_CONN_FREEING)) {
        ward_grpc_call_t *call = ward__stream_call(conn, stream_id);
        if (call != NULL && !(call->flags & WARD_GRPC_CALL_CLOSED))
            ward__recv_data(call, data, len);
    }
    /* Everything is now delivered, in the bounded reassembly buffer, or dropped. */
    int rv = nghttp2_session_consume(session, stream_id, len);
    if (nghttp2_is_fatal(rv)) {
        conn->fatal = WARD_ENOMEM;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int ward__on_frame_send(nghttp2_session *session, const nghttp2_frame *frame,
                               void *user_data)
{
    ward_grpc_conn_t *conn = user_data;
    if (conn->flags & WARD_GRPC_CONN_FREEING) return 0;
    if (frame->hd.type == NGHTTP2_GOAWAY) {
        conn->flags |= WARD_GRPC_CONN_GOAWAY_SENT;
        if (frame->goaway.error_code != NGHTTP2_NO_ERROR) conn->flags |= WARD_GRPC_CONN_PROTO_ERROR;
        return 0;
    }
    if (!conn->is_server || !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM) ||
        (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA))
        return 0;
    ward_grpc_call_t *call = ward__stream_call(conn, frame->hd.stream_id);
    if (call == NULL) return 0;
    /* The trailers are out: that is the call's status. */
    if (call->fin_message != NULL) ward__call_set_status(call, call->fin_status, call->fin_message);
    /* Early server closure: reset a stream the client is still sending on. */
    if (!(call->flags & (WARD_GRPC_CALL_REMOTE_EOS | WARD_GRPC_CALL_RESET)) &&
        nghttp2_session_get_stream_remote_close(session, call->stream_id) == 0) {
        call->flags |= WARD_GRPC_CALL_RESET;
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, call->stream_id, NGHTTP2_NO_ERROR);
    }
    return 0;
}

static int ward__on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                                 void *user_data)
{
    ward_grpc_conn_t *conn = user_data;
    if (conn->flags & WARD_GRPC_CONN_FREEING) return 0;
    ward_grpc_call_t *call = ward__stream_call(conn, stream_id);
    if (call == NULL) return 0;
    nghttp2_session_set_stream_user_data(session, stream_id, NULL);
    if (!(call->flags & WARD_GRPC_CALL_STATUS)) {
        if (error_code == NGHTTP2_NO_ERROR && !conn->is_server)
            ward__call_set_status(call, WARD_GRPC_INTERNAL, "stream closed without grpc-status");
        else if (error_code == NGHTTP2_NO_ERROR)
            ward__call_set_status(call, WARD_GRPC_CANCELLED, "stream closed by the client");
        else
            ward__call_set_status(call, ward__status_from_h2(error_code), "stream reset");
    }
    call->flags |= WARD_GRPC_CALL_CLOSED;
    ward__call_unlink(call);
    if ((call->flags & WARD_GRPC_CALL_VISIBLE) && conn->cb.on_close != NULL)
        conn->cb.on_close(call, call->status, call->message != NULL ? call->message : "",
                          call->data);
    ward__call_free(call);
    return 0;
}

/* Pulls queued messages into a DATA frame; sends the trailers (server) or END_STREAM (client) once
 * the queue is empty and the sending side is closed. */
static ssize_t ward__data_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                               size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                               void *user_data)
{
    ward_grpc_conn_t *conn = user_data;
    ward_grpc_call_t *call = source->ptr;
    if (conn->flags & WARD_GRPC_CONN_DRAINING) return NGHTTP2_ERR_PAUSE;
    if (call == NULL || (call->flags & WARD_GRPC_CALL_CLOSED))
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t n = 0;
    while (n < length && call->out_head != NULL) {
        ward_grpc_msg_t *m = call->out_head;
        size_t k = m->len - m->off;
        if (k > length - n) k = length - n;
        memcpy(buf + n, m->data + m->off, k);
        m->off += k;
        n += k;
        call->queued -= k;
        if (m->off == m->len) {
            call->out_head = m->next;
            if (call->out_head == NULL) call->out_tail = NULL;
            ward_free(m);
        }
    }
    if (call->out_head != NULL) return (ssize_t)n;
    if (!(call->flags & WARD_GRPC_CALL_SEND_CLOSED)) {
        if (n > 0) return (ssize_t)n;
        call->flags |= WARD_GRPC_CALL_DEFERRED;
        return NGHTTP2_ERR_DEFERRED;
    }
    if (conn->is_server && call->fin_message == NULL) /* closed without a status: never "OK" */
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    if (conn->is_server) {
        char code[12], enc[3 * WARD_GRPC_MAX_STATUS_MSG + 1];
        nghttp2_nv nv[2];
        size_t k = ward__status_nv(nv, code, enc, call->fin_status, call->fin_message);
        if (nghttp2_submit_trailer(session, stream_id, nv, k) != 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    }
    return (ssize_t)n;
}

/* --- connection ---------------------------------------------------------------------------- */

ward_grpc_conn_t *ward_grpc_conn_new(int is_server, const ward_grpc_callbacks_t *cb,
                                     const ward_grpc_options_t *opts, void *conn_data)
{
    nghttp2_session_callbacks *cbs;
    nghttp2_option *opt;
    nghttp2_mem mem = {NULL, ward_ng_malloc, ward_ng_free, ward_ng_calloc, ward_ng_realloc};
    ward_grpc_conn_t *conn = ward_calloc(1, sizeof(*conn));
    if (conn == NULL) return NULL;
    if (cb != NULL) conn->cb = *cb;
    conn->data = conn_data;
    conn->is_server = is_server != 0;

    size_t max_message = opts != NULL ? opts->max_message_size : 0;
    uint32_t max_calls = opts != NULL ? opts->max_concurrent_calls : 0;
    uint32_t window = opts != NULL ? opts->initial_window : 0;
    if (max_message == 0) max_message = WARD_GRPC_DEFAULT_MAX_MESSAGE;
    if (max_message > UINT32_MAX) max_message = UINT32_MAX; /* the prefix's 4 bytes */
    if (max_calls == 0) max_calls = WARD_GRPC_DEFAULT_MAX_CALLS;
    if (window == 0) window = WARD_GRPC_DEFAULT_WINDOW;
    if (window > WARD_GRPC_MAX_WINDOW) window = WARD_GRPC_MAX_WINDOW;
    conn->max_message = max_message;

    if (nghttp2_session_callbacks_new(&cbs) != 0) goto fail_callbacks;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, ward__on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, ward__on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, ward__on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, ward__on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, ward__on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, ward__on_stream_close);
    if (nghttp2_option_new(&opt) != 0) goto fail_option;
    nghttp2_option_set_no_auto_window_update(opt, 1);
    int rv = conn->is_server ? nghttp2_session_server_new3(&conn->session, cbs, conn, opt, &mem)
                             : nghttp2_session_client_new3(&conn->session, cbs, conn, opt, &mem);
    if (rv != 0) goto fail_session;

    nghttp2_settings_entry iv[4];
    size_t niv = 0;
    iv[niv++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, window};
    iv[niv++] =
        (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, WARD_GRPC_MAX_HEADER_BYTES};
    if (conn->is_server)
        iv[niv++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, max_calls};
    else
        iv[niv++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_PUSH, 0};
    if (nghttp2_submit_settings(conn->session, NGHTTP2_FLAG_NONE, iv, niv) != 0) goto fail_settings;
    /* The connection window: room for two streams' worth; data is consumed as it is parsed. */
    uint32_t conn_window = window > WARD_GRPC_MAX_WINDOW / 2 ? WARD_GRPC_MAX_WINDOW : 2 * window;
    if (conn_window > NGHTTP2_INITIAL_CONNECTION_WINDOW_SIZE &&
        nghttp2_session_set_local_window_size(conn->session, NGHTTP2_FLAG_NONE, 0,
                                              (int32_t)conn_window) != 0)
        goto fail_settings;
    nghttp2_option_del(opt);
    nghttp2_session_callbacks_del(cbs);
    return conn;

fail_settings:
    nghttp2_session_del(conn->session);
fail_session:
    nghttp2_option_del(opt);
fail_option:
    nghttp2_session_callbacks_del(cbs);
fail_callbacks:
    ward_free(conn);
    return NULL;
}

void ward_grpc_conn_free(ward_grpc_conn_t *conn)
{
    if (conn == NULL) return;
    conn->flags |= WARD_GRPC_CONN_FREEING;
    while (conn->calls != NULL) {
        ward_grpc_call_t *call = conn->calls;
        ward__call_unlink(call);
        if ((call->flags & WARD_GRPC_CALL_VISIBLE) && !(call->flags & WARD_GRPC_CALL_CLOSED)) {
            call->flags |= WARD_GRPC_CALL_CLOSED;
            if (conn->cb.on_close != NULL)
                conn->cb.on_close(call, WARD_GRPC_UNAVAILABLE, "connection closed", call->data);
        }
        ward__call_free(call);
    }
    nghttp2_session_del(conn->session);
    ward_free(conn->out);
    ward_free(conn);
}

void *ward_grpc_conn_data(const ward_grpc_conn_t *conn)
{
    return conn->data;
}

/* Forgets conn->out once the owner had it (its bytes lived until this next call). */
static void ward__out_release(ward_grpc_conn_t *conn)
{
    if (conn->flags & WARD_GRPC_CONN_OUT_HANDED) {
        conn->flags &= ~WARD_GRPC_CONN_OUT_HANDED;
        conn->out_len = 0;
    }
}

static int ward__out_append(ward_grpc_conn_t *conn, const uint8_t *p, size_t n)
{
    if (conn->out_cap - conn->out_len < n) {
        size_t cap = conn->out_cap ? conn->out_cap : 1024;
        while (cap - conn->out_len < n)
            cap *= 2;
        uint8_t *q = ward_realloc(conn->out, cap);
        if (q == NULL) return WARD_ENOMEM;
        conn->out = q;
        conn->out_cap = cap;
    }
    memcpy(conn->out + conn->out_len, p, n);
    conn->out_len += n;
    return 0;
}

/* Serializes the control frames nghttp2 queued (see the file comment). */
static int ward__drain(ward_grpc_conn_t *conn)
{
    int rc = 0;
    conn->flags |= WARD_GRPC_CONN_DRAINING;
    for (;;) {
        const uint8_t *p;
        ssize_t n = nghttp2_session_mem_send(conn->session, &p);
        if (n < 0) {
            conn->flags |= WARD_GRPC_CONN_DEAD;
            conn->fatal = n == NGHTTP2_ERR_NOMEM ? WARD_ENOMEM : WARD_EIO;
            rc = conn->fatal;
            break;
        }
        if (n == 0) break;
        rc = ward__out_append(conn, p, (size_t)n);
        if (rc < 0) {
            conn->flags |= WARD_GRPC_CONN_DEAD;
            conn->fatal = rc;
            break;
        }
    }
    conn->flags &= ~WARD_GRPC_CONN_DRAINING;
    return rc;
}

int ward_grpc_conn_recv(ward_grpc_conn_t *conn, const uint8_t *data, size_t len)
{
    if (conn == NULL || (conn->flags & WARD_GRPC_CONN_FREEING)) return WARD_EINVAL;
    ward__out_release(conn);
    if (conn->flags & (WARD_GRPC_CONN_DEAD | WARD_GRPC_CONN_PROTO_ERROR))
        return conn->fatal ? conn->fatal : WARD_EPARSE;
    ssize_t rv = nghttp2_session_mem_recv(conn->session, data, len);
    if (rv < 0) {
        conn->flags |= WARD_GRPC_CONN_DEAD;
        if (conn->fatal == 0)
            conn->fatal = rv == NGHTTP2_ERR_NOMEM || rv == NGHTTP2_ERR_CALLBACK_FAILURE
                              ? WARD_ENOMEM
                              : WARD_EPARSE;
        if (conn->fatal == WARD_EPARSE) {
            /* Bad preface, flood: tell the peer before the owner closes. */
            nghttp2_session_terminate_session(conn->session, NGHTTP2_PROTOCOL_ERROR);
            ward__drain(conn);
        }
        return conn->fatal;
    }
    int rc = ward__drain(conn);
    if (rc < 0) return rc;
    if (conn->flags & WARD_GRPC_CONN_PROTO_ERROR) return WARD_EPARSE;
    return 0;
}

size_t ward_grpc_conn_send(ward_grpc_conn_t *conn, const uint8_t **out)
{
    *out = NULL;
    if (conn == NULL || (conn->flags & WARD_GRPC_CONN_FREEING)) return 0;
    ward__out_release(conn);
    if (conn->out_len > 0) {
        conn->flags |= WARD_GRPC_CONN_OUT_HANDED;
        *out = conn->out;
        return conn->out_len;
    }
    ssize_t n = nghttp2_session_mem_send(conn->session, out);
    if (n < 0) {
        conn->flags |= WARD_GRPC_CONN_DEAD;
        if (conn->fatal == 0) conn->fatal = n == NGHTTP2_ERR_NOMEM ? WARD_ENOMEM : WARD_EIO;
        *out = NULL;
        return 0;
    }
    return (size_t)n;
}

int ward_grpc_conn_want_write(const ward_grpc_conn_t *conn)
{
    if (conn->out_len > 0 && !(conn->flags & WARD_GRPC_CONN_OUT_HANDED)) return 1;
    return nghttp2_session_want_write(conn->session);
}

int ward_grpc_conn_alive(const ward_grpc_conn_t *conn)
{
    if (conn->flags & (WARD_GRPC_CONN_GOAWAY_SENT | WARD_GRPC_CONN_GOAWAY_RECV |
                       WARD_GRPC_CONN_DEAD | WARD_GRPC_CONN_PROTO_ERROR | WARD_GRPC_CONN_FREEING))
        return 0;
    return nghttp2_session_want_read(conn->session) || nghttp2_session_want_write(conn->session);
}

int ward_grpc_conn_finished(const ward_grpc_conn_t *conn)
{
    if (ward_grpc_conn_want_write(conn)) return 0;
    if (conn->flags & (WARD_GRPC_CONN_DEAD | WARD_GRPC_CONN_PROTO_ERROR)) return 1;
    /* nghttp2 stops wanting to read once GOAWAY went either way and no stream is left. */
    return !nghttp2_session_want_read(conn->session);
}

int ward_grpc_conn_ping(ward_grpc_conn_t *conn)
{
    if (conn == NULL || (conn->flags & (WARD_GRPC_CONN_FREEING | WARD_GRPC_CONN_DEAD)))
        return WARD_EINVAL;
    int rv = nghttp2_submit_ping(conn->session, NGHTTP2_FLAG_NONE, NULL);
    if (rv != 0) return ward__ng_err(rv);
    conn->pings++;
    return 0;
}

void ward_grpc_conn_goaway(ward_grpc_conn_t *conn, int graceful)
{
    if (conn == NULL || (conn->flags & (WARD_GRPC_CONN_FREEING | WARD_GRPC_CONN_DEAD))) return;
    if (graceful) {
        if (conn->flags & WARD_GRPC_CONN_GOAWAY_SENT) return;
        /* Streams up to the last one seen go on; a client accepts no streams at all. */
        int32_t last = conn->is_server ? nghttp2_session_get_last_proc_stream_id(conn->session) : 0;
        nghttp2_submit_goaway(conn->session, NGHTTP2_FLAG_NONE, last, NGHTTP2_NO_ERROR, NULL, 0);
    } else {
        nghttp2_session_terminate_session(conn->session, NGHTTP2_NO_ERROR);
    }
    conn->flags |= WARD_GRPC_CONN_GOAWAY_SENT;
}

void ward_grpc_conn_set_now(ward_grpc_conn_t *conn, uint64_t now_ms)
{
    conn->now_ms = now_ms;
}

void ward_grpc_conn_tick(ward_grpc_conn_t *conn, uint64_t now_ms)
{
    if (conn == NULL || (conn->flags & WARD_GRPC_CONN_FREEING)) return;
    conn->now_ms = now_ms;
    for (ward_grpc_call_t *call = conn->calls; call != NULL; call = call->next) {
        if ((call->flags & (WARD_GRPC_CALL_DEADLINE | WARD_GRPC_CALL_EXPIRED |
                            WARD_GRPC_CALL_CLOSED)) != WARD_GRPC_CALL_DEADLINE ||
            now_ms < call->deadline_ms)
            continue;
        call->flags |= WARD_GRPC_CALL_EXPIRED;
        if (!conn->is_server) {
            ward__client_fail(call, WARD_GRPC_DEADLINE_EXCEEDED, "deadline exceeded",
                              NGHTTP2_CANCEL);
        } else if ((call->flags & WARD_GRPC_CALL_VISIBLE) &&
                   !(call->flags & WARD_GRPC_CALL_SEND_CLOSED)) {
            ward__queue_trim(call);
            ward__server_finish(call, WARD_GRPC_DEADLINE_EXCEEDED, "deadline exceeded");
        }
    }
}

/* --- calls: public ------------------------------------------------------------------------- */

/* Custom metadata names: 1*( 0-9 a-z _ - . ); values: printable ASCII. The fields the engine sets
 * itself are refused. */
static int ward__header_ok(const ward_grpc_header_t *h)
{
    static const char *const reserved[] = {"te",         "content-type",     "grpc-timeout",
                                           "connection", "keep-alive",       "transfer-encoding",
                                           "upgrade",    "proxy-connection", "host"};
    if (h->name == NULL || h->value == NULL || h->name[0] == '\0') return 0;
    for (const char *c = h->name; *c; c++)
        if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'z') || *c == '_' || *c == '-' ||
              *c == '.'))
            return 0;
    for (const char *c = h->value; *c; c++)
        if ((unsigned char)*c < 0x20 || (unsigned char)*c > 0x7e) return 0;
    for (size_t i = 0; i < sizeof(reserved) / sizeof(reserved[0]); i++)
        if (strcmp(h->name, reserved[i]) == 0) return 0;
    return 1;
}

int ward_grpc_call_start(ward_grpc_conn_t *conn, const char *path, const char *authority,
                         const ward_grpc_header_t *headers, size_t nheaders, uint64_t timeout_ms,
                         uint64_t now_ms, void *call_data, ward_grpc_call_t **out)
{
    char timeout[16];
    int rc;
    if (out != NULL) *out = NULL;
    if (conn == NULL || conn->is_server || out == NULL || path == NULL || path[0] != '/' ||
        (headers == NULL && nheaders > 0))
        return WARD_EINVAL;
    if ((conn->flags & (WARD_GRPC_CONN_FREEING | WARD_GRPC_CONN_DEAD | WARD_GRPC_CONN_PROTO_ERROR |
                        WARD_GRPC_CONN_GOAWAY_SENT | WARD_GRPC_CONN_GOAWAY_RECV)) ||
        !nghttp2_session_check_request_allowed(conn->session))
        return WARD_EINVAL;
    for (size_t i = 0; i < nheaders; i++)
        if (!ward__header_ok(&headers[i])) return WARD_EINVAL;

    nghttp2_nv *nv = ward_malloc((7 + nheaders) * sizeof(*nv));
    if (nv == NULL) return WARD_ENOMEM;
    size_t n = 0;
    ward__nv(&nv[n++], ":method", "POST");
    ward__nv(&nv[n++], ":scheme", "http");
    ward__nv(&nv[n++], ":path", path);
    /* :authority is optional for gRPC, but HTTP/2 servers (nghttp2 among them) reset requests
     * carrying neither it nor host. */
    ward__nv(&nv[n++], ":authority", authority != NULL ? authority : "localhost");
    if (timeout_ms > 0) {
        ward_grpc_timeout_format(timeout_ms, timeout, sizeof(timeout));
        ward__nv(&nv[n++], "grpc-timeout", timeout);
    }
    ward__nv(&nv[n++], "te", "trailers");
    ward__nv(&nv[n++], "content-type", "application/grpc");
    for (size_t i = 0; i < nheaders; i++)
        ward__nv(&nv[n++], headers[i].name, headers[i].value);

    ward_grpc_call_t *call = ward__call_new(conn);
    if (call == NULL) {
        rc = WARD_ENOMEM;
        goto fail_call;
    }
    nghttp2_data_provider prd;
    prd.source.ptr = call;
    prd.read_callback = ward__data_read;
    int32_t id = nghttp2_submit_request(conn->session, NULL, nv, n, &prd, call);
    if (id < 0) {
        rc = ward__ng_err(id);
        goto fail_submit;
    }
    ward_free(nv);
    call->stream_id = id;
    call->data = call_data;
    call->flags |= WARD_GRPC_CALL_VISIBLE;
    if (timeout_ms > 0) {
        call->deadline_ms = now_ms + timeout_ms;
        call->flags |= WARD_GRPC_CALL_DEADLINE;
    }
    *out = call;
    return 0;

fail_submit:
    ward__call_unlink(call);
    ward__call_free(call);
fail_call:
    ward_free(nv);
    return rc;
}

int ward_grpc_call_send(ward_grpc_call_t *call, const uint8_t *msg, size_t len)
{
    if (call == NULL || (msg == NULL && len > 0) || len > UINT32_MAX) return WARD_EINVAL;
    ward_grpc_conn_t *conn = call->conn;
    if ((conn->flags & WARD_GRPC_CONN_FREEING) ||
        (call->flags &
         (WARD_GRPC_CALL_SEND_CLOSED | WARD_GRPC_CALL_CLOSED | WARD_GRPC_CALL_STATUS)))
        return WARD_EINVAL;
    ward_grpc_msg_t *m = ward_malloc(sizeof(*m) + WARD_GRPC_PREFIX + len);
    if (m == NULL) return WARD_ENOMEM;
    m->next = NULL;
    m->off = 0;
    m->len = WARD_GRPC_PREFIX + len;
    m->data[0] = 0;
    m->data[1] = (uint8_t)(len >> 24);
    m->data[2] = (uint8_t)(len >> 16);
    m->data[3] = (uint8_t)(len >> 8);
    m->data[4] = (uint8_t)len;
    if (len > 0) memcpy(m->data + WARD_GRPC_PREFIX, msg, len);

    if (conn->is_server && !(call->flags & WARD_GRPC_CALL_HEADERS_SENT)) {
        nghttp2_nv nv[2];
        nghttp2_data_provider prd;
        ward__nv(&nv[0], ":status", "200");
        ward__nv(&nv[1], "content-type", "application/grpc");
        prd.source.ptr = call;
        prd.read_callback = ward__data_read;
        int rv = nghttp2_submit_response(conn->session, call->stream_id, nv, 2, &prd);
        if (rv != 0) {
            ward_free(m);
            return ward__ng_err(rv);
        }
        call->flags |= WARD_GRPC_CALL_HEADERS_SENT;
    }
    if (call->out_tail != NULL)
        call->out_tail->next = m;
    else
        call->out_head = m;
    call->out_tail = m;
    call->queued += m->len;
    ward__resume(call);
    return 0;
}

int ward_grpc_call_close_send(ward_grpc_call_t *call)
{
    if (call == NULL || call->conn->is_server || (call->conn->flags & WARD_GRPC_CONN_FREEING) ||
        (call->flags & (WARD_GRPC_CALL_SEND_CLOSED | WARD_GRPC_CALL_CLOSED)))
        return WARD_EINVAL;
    call->flags |= WARD_GRPC_CALL_SEND_CLOSED;
    ward__resume(call);
    return 0;
}

int ward_grpc_call_finish(ward_grpc_call_t *call, int status, const char *message)
{
    if (call == NULL || !call->conn->is_server || status < 0 ||
        (call->conn->flags & WARD_GRPC_CONN_FREEING) ||
        (call->flags & (WARD_GRPC_CALL_SEND_CLOSED | WARD_GRPC_CALL_CLOSED)))
        return WARD_EINVAL;
    return ward__server_finish(call, status, message);
}

void ward_grpc_call_cancel(ward_grpc_call_t *call)
{
    if (call == NULL || (call->conn->flags & WARD_GRPC_CONN_FREEING) ||
        (call->flags & (WARD_GRPC_CALL_CLOSED | WARD_GRPC_CALL_RESET)))
        return;
    ward__call_set_status(call, WARD_GRPC_CANCELLED, "cancelled");
    call->flags |= WARD_GRPC_CALL_DISCARD | WARD_GRPC_CALL_SEND_CLOSED | WARD_GRPC_CALL_RESET;
    nghttp2_submit_rst_stream(call->conn->session, NGHTTP2_FLAG_NONE, call->stream_id,
                              NGHTTP2_CANCEL);
}

const char *ward_grpc_call_header(const ward_grpc_call_t *call, const char *name)
{
    if (call == NULL || name == NULL) return NULL;
    return ward__hdr(call, name);
}

void ward_grpc_call_set_data(ward_grpc_call_t *call, void *call_data)
{
    call->data = call_data;
}

void *ward_grpc_call_data(const ward_grpc_call_t *call)
{
    return call->data;
}

ward_grpc_conn_t *ward_grpc_call_conn(const ward_grpc_call_t *call)
{
    return call->conn;
}

size_t ward_grpc_call_queued(const ward_grpc_call_t *call)
{
    return call->queued;
}

/* --- grpc-timeout -------------------------------------------------------------------------- */

int64_t ward_grpc_timeout_parse(const char *s)
{
    if (s == NULL) return -1;
    uint64_t v = 0;
    size_t n = 0;
    for (; s[n] >= '0' && s[n] <= '9'; n++) {
        if (n == 8) return -1; /* TimeoutValue: at most 8 digits */
        v = v * 10 + (uint64_t)(s[n] - '0');
    }
    if (n == 0 || s[n] == '\0' || s[n + 1] != '\0') return -1;
    switch (s[n]) {
    case 'H':
        return (int64_t)(v * 3600000);
    case 'M':
        return (int64_t)(v * 60000);
    case 'S':
        return (int64_t)(v * 1000);
    case 'm':
        return (int64_t)v;
    case 'u':
        return (int64_t)((v + 999) / 1000);
    case 'n':
        return (int64_t)((v + 999999) / 1000000);
    default:
        return -1;
    }
}

void ward_grpc_timeout_format(uint64_t ms, char *buf, size_t size)
{
    static const struct {
        char unit;
        uint64_t ms;
    } units[] = {{'m', 1}, {'S', 1000}, {'M', 60000}, {'H', 3600000}};
    if (buf == NULL || size == 0) return;
    /* The smallest unit whose value fits in 8 digits; rounded up, so the peer never sees a
     * shorter deadline than ours. */
    for (size_t i = 0; i < sizeof(units) / sizeof(units[0]); i++) {
        uint64_t v = ms / units[i].ms + (ms % units[i].ms != 0);
        if (v <= 99999999) {
            snprintf(buf, size, "%" PRIu64 "%c", v, units[i].unit);
            return;
        }
    }
    snprintf(buf, size, "99999999H");
}
