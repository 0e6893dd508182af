/* http2.c — the inbound HTTP/2 (and gRPC) codec: ward_codec_http2 (see conn.h).
 *
 *   peer sidecar ==mTLS, h2==> [ down: nghttp2 server | per-stream state | up: nghttp2 client ]
 *                                                                --h2c (prior knowledge)--> app
 *
 * Each caller stream is decided on its own: when its request head is complete the :path is
 * normalised (ward/path.h), the policy is asked (ward_conn_authorize), and the stream is either
 * answered here (403 / gRPC status 7 / 400 / 431, body dropped) or re-submitted on the upstream
 * session with the normalised :path and the proxy's x-forwarded-client-cert. From then on bytes,
 * trailers, END_STREAM and RST_STREAM (with its code) are carried both ways.
 *
 * Flow control is end to end: automatic WINDOW_UPDATEs are off on both sessions. Connection-level
 * windows are consumed on receipt (the memory is bounded per stream, so one stalled stream never
 * blocks the others); a stream's window is consumed only when its bytes leave the per-stream buffer
 * for the other session, so the buffer never holds more than one stream window (64 KiB) and a slow
 * app slows its caller. Frames serialised by nghttp2 wait in one output queue per socket; nghttp2
 * is asked for more only while that queue is under WARD_H2_OUT_HIGH, and a side is read only while
 * the queue toward it is, so a peer that does not read cannot make us buffer without bound.
 *
 * Ownership: the codec state (ward_h2_t, c->cs) owns both nghttp2 sessions, both output queues and
 * every stream object. A stream object is created when the caller's HEADERS begin and freed when
 * neither session knows it any more (WARD_H2F_DOWN_OPEN and WARD_H2F_UP_OPEN both clear); header
 * fields are kept as nghttp2 reference-counted buffers (no copy). nghttp2 callbacks never end the
 * connection: they set WARD_H2_FATAL, and ward__pump(), the only caller of ward_conn_close(),
 * returns right after closing. All memory comes from ward's allocator (nghttp2 through
 * nghttp2_mem); running out of it closes the connection. */
#include <stdio.h>
#include <string.h>

#include <nghttp2/nghttp2.h>

#include "conn.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/log.h"
#include "ward/path.h"

#define WARD_H2_MAX_STREAMS   100   /* SETTINGS_MAX_CONCURRENT_STREAMS toward the caller */
#define WARD_H2_MAX_OBJECTS   200   /* stream objects alive (some wait for the app's side) */
#define WARD_H2_STREAM_WINDOW 65535 /* per-stream receive window = per-stream buffer bound */
#define WARD_H2_CONN_WINDOW   (16 << 20)
#define WARD_H2_OUT_HIGH      (2 * WARD_CHUNK_SIZE) /* output queue high-water mark */
#define WARD_H2_READ_ROUNDS   16                    /* socket reads per side per event */
#define WARD_H2_PUMP_ROUNDS   64
/* Rapid reset (CVE-2023-44487): client resets and streams refused for misbehaviour. */
#define WARD_H2_MAX_RESETS_1S   200
#define WARD_H2_RESET_WINDOW_MS 10000
#define WARD_H2_MAX_RESETS_WIN  400  /* ... and more of them than completed streams */
#define WARD_H2_MAX_CTRL_1S     1000 /* PING and SETTINGS frames from the caller */
#define WARD_H2_LINGER_MAX      (1 << 20)
#define WARD_H2_MAX_METHOD      32

/* --- types ------------------------------------------------------------------------------------ */

/* One header field as nghttp2 decoded it (refcounted, NUL-terminated). */
typedef struct {
    nghttp2_rcbuf *name, *value;
} ward_h2_field_t;

typedef struct {
    ward_h2_field_t *v;
    uint32_t n, cap;
    uint32_t bytes;   /* counted as SETTINGS_MAX_HEADER_LIST_SIZE does: name + value + 32 */
    uint8_t overflow; /* over WARD_HTTP_MAX_HEADERS / WARD_HTTP_MAX_HEADER_BYTES: rest dropped */
} ward_h2_fields_t;

typedef enum {
    WARD_H2S_HEADERS,  /* the caller's request head is arriving */
    WARD_H2S_LOCAL,    /* answered by the proxy (denied, bad path, ...); request body dropped */
    WARD_H2S_PROXYING, /* forwarded to the app; bytes flow both ways */
    WARD_H2S_CLOSING   /* the caller's stream is gone; waiting for the app's side to close */
} ward_h2_state_t;

static const char *const ward__state_names[] = {"headers", "local", "proxying", "closing"};

/* Stream flags. */
enum {
    WARD_H2F_GRPC = 1u << 0,         /* content-type application/grpc* */
    WARD_H2F_DOWN_OPEN = 1u << 1,    /* the stream exists in the downstream session */
    WARD_H2F_UP_OPEN = 1u << 2,      /* submitted upstream and not closed there */
    WARD_H2F_REQ_EOS = 1u << 3,      /* the caller ended its request */
    WARD_H2F_REQ_SENT = 1u << 4,     /* the request's end (and trailers) went upstream */
    WARD_H2F_RESP_FINAL = 1u << 5,   /* the app's final (non-1xx) response head arrived */
    WARD_H2F_RESP_HEAD = 1u << 6,    /* a final response head was submitted downstream */
    WARD_H2F_RESP_EOS = 1u << 7,     /* the response is complete on our side */
    WARD_H2F_RESP_DONE = 1u << 8,    /* END_STREAM went to the caller */
    WARD_H2F_UP_DEFER = 1u << 9,     /* the upstream data provider returned DEFERRED */
    WARD_H2F_DOWN_DEFER = 1u << 10,  /* the downstream data provider returned DEFERRED */
    WARD_H2F_UP_RST = 1u << 11,      /* we reset the upstream stream */
    WARD_H2F_DOWN_RST = 1u << 12,    /* we reset the downstream stream */
    WARD_H2F_UP_PEER_RST = 1u << 13, /* the app reset its stream (up_rst_code) */
    WARD_H2F_REQ_DROP = 1u << 14,    /* request body goes nowhere: consumed and dropped */
    WARD_H2F_COUNTED = 1u << 15,     /* ward_conn_request_done called */
    WARD_H2F_DENIED = 1u << 16       /* answered by the proxy because the policy said no */
};

typedef struct ward_h2_stream {
    struct ward_h2_stream *prev, *next;
    int32_t down_id;
    int32_t up_id; /* 0 until submitted upstream */
    uint8_t state; /* ward_h2_state_t */
    uint32_t flags;
    uint32_t up_rst_code;
    unsigned status;                 /* response status sent downstream */
    ward_h2_fields_t req, req_trl;   /* from the caller */
    ward_h2_fields_t resp, resp_trl; /* from the app */
    ward_outq_t req_body, resp_body; /* DATA not yet handed to the other session */
    /* for ward_conn_request_done */
    uint64_t start_ms, bytes_in, bytes_out;
    char *path; /* normalised :path (owned) */
    size_t path_len;
    char method[WARD_H2_MAX_METHOD + 1];
    char grpc_status[4]; /* the grpc-status sent to the caller, "" if none */
} ward_h2_stream_t;

/* Connection flags. */
enum {
    WARD_H2_FATAL = 1u << 0,       /* abort the connection at the end of this pump */
    WARD_H2_FREEING = 1u << 1,     /* free() runs: callbacks do nothing */
    WARD_H2_UP_GONE = 1u << 2,     /* the app's connection ended (or its session finished) */
    WARD_H2_GOAWAY_DOWN = 1u << 3, /* we submitted GOAWAY toward the caller */
    WARD_H2_CALM = 1u << 4,        /* flood detected: GOAWAY ENHANCE_YOUR_CALM queued */
    WARD_H2_LINGER = 1u << 5,      /* finished: FIN sent, reading the caller until EOF */
    WARD_H2_DOWN_DEAD = 1u << 6    /* the downstream session failed (bad preface, flood) */
};

typedef struct {
    ward_conn_t *c;
    nghttp2_session *down, *up;
    ward_outq_t q_down, q_up; /* serialised frames waiting for the socket */
    ward_h2_stream_t *streams;
    uint32_t nstreams;
    unsigned flags;
    /* flood accounting (ms from uv_now) */
    uint64_t rst_t0, win_t0, ctrl_t0;
    uint32_t rst_1s, rst_win, done_win, ctrl_1s;
    size_t linger_bytes;
} ward_h2_t;

/* --- small helpers ---------------------------------------------------------------------------- */

static uint64_t ward__now(ward_h2_t *h)
{
    return uv_now(&h->c->w->loop);
}

static void ward__fail(ward_h2_t *h)
{
    h->flags |= WARD_H2_FATAL;
}

/* nghttp2 result of a call made outside its own callbacks: a fatal one ends the connection. */
static int ward__ng_check(ward_h2_t *h, int rv)
{
    if (rv < 0 && nghttp2_is_fatal(rv)) ward__fail(h);
    return rv;
}

static void ward__nv(nghttp2_nv *nv, const char *name, size_t nlen, const char *value, size_t vlen)
{
    nv->name = (uint8_t *)name;
    nv->namelen = nlen;
    nv->value = (uint8_t *)value;
    nv->valuelen = vlen;
    nv->flags = NGHTTP2_NV_FLAG_NONE;
}

static void ward__nvs(nghttp2_nv *nv, const char *name, const char *value)
{
    ward__nv(nv, name, strlen(name), value, strlen(value));
}

static int ward__eq(nghttp2_vec v, const char *s, size_t n)
{
    return v.len == n && memcmp(v.base, s, n) == 0;
}

#define WARD__EQ(vec, lit) ward__eq((vec), (lit), sizeof(lit) - 1)

/* Fields HTTP/2 forbids (RFC 9113 section 8.2.2), and the one the proxy owns. "te" is allowed
 * with the value "trailers" only. */
static int ward__hop_field(nghttp2_vec name, nghttp2_vec value)
{
    if (WARD__EQ(name, "te")) return !WARD__EQ(value, "trailers");
    return WARD__EQ(name, "connection") || WARD__EQ(name, "keep-alive") ||
           WARD__EQ(name, "proxy-connection") || WARD__EQ(name, "transfer-encoding") ||
           WARD__EQ(name, "upgrade");
}

/* "application/grpc", alone or followed by "+subtype" or ";params". */
static int ward__is_grpc(nghttp2_vec v)
{
    static const char ct[] = "application/grpc";
    size_t k = sizeof(ct) - 1;
    if (v.len < k || memcmp(v.base, ct, k) != 0) return 0;
    return v.len == k || v.base[k] == '+' || v.base[k] == ';';
}

/* grpc-message encoding (gRPC PROTOCOL-HTTP2): %x20-%x7E except '%' as is, the rest %XX. dst has
 * room for 3 * n + 1. */
static void ward__pct_encode(char *dst, const char *s, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch <= 0x7e && ch != '%') {
            dst[o++] = (char)ch;
        } else {
            dst[o++] = '%';
            dst[o++] = hex[ch >> 4];
            dst[o++] = hex[ch & 15];
        }
    }
    dst[o] = '\0';
}

static void ward__log(ward_h2_t *h, ward_log_level_t level, const char *event,
                      const ward_h2_stream_t *s, const char *reason, const char *detail)
{
    ward_logline_t l;
    if (!ward_log_begin(&l, level, event)) return;
    ward_conn_log_ctx(&l, h->c);
    if (s != NULL) {
        if (s->flags & WARD_H2F_GRPC) ward_log_str(&l, "request_protocol", "grpc");
        ward_log_i64(&l, "stream", s->down_id);
        ward_log_str(&l, "stream_state", ward__state_names[s->state]);
    }
    if (reason != NULL) ward_log_str(&l, "reason", reason);
    if (detail != NULL) ward_log_str(&l, "detail", detail);
    ward_log_end(&l);
}

/* --- header fields ---------------------------------------------------------------------------- */

static void ward__fields_release(ward_h2_fields_t *f)
{
    for (uint32_t i = 0; i < f->n; i++) {
        nghttp2_rcbuf_decref(f->v[i].name);
        nghttp2_rcbuf_decref(f->v[i].value);
    }
    ward_free(f->v);
    memset(f, 0, sizeof(*f));
}

/* Keeps one field. Over the limits the list is marked and the field dropped (the caller answers
 * 431 or resets once the block is complete). Returns 0 or WARD_ENOMEM. */
static int ward__fields_add(ward_h2_fields_t *f, nghttp2_rcbuf *name, nghttp2_rcbuf *value)
{
    size_t cost = nghttp2_rcbuf_get_buf(name).len + nghttp2_rcbuf_get_buf(value).len + 32;
    if (f->overflow) return 0;
    if (f->n >= WARD_HTTP_MAX_HEADERS || f->bytes + cost > WARD_HTTP_MAX_HEADER_BYTES) {
        f->overflow = 1;
        return 0;
    }
    if (f->n == f->cap) {
        uint32_t cap = f->cap ? 2 * f->cap : 16;
        if (cap > WARD_HTTP_MAX_HEADERS) cap = WARD_HTTP_MAX_HEADERS;
        ward_h2_field_t *v = ward_realloc(f->v, cap * sizeof(*v));
        if (v == NULL) return WARD_ENOMEM;
        f->v = v;
        f->cap = cap;
    }
    nghttp2_rcbuf_incref(name);
    nghttp2_rcbuf_incref(value);
    f->v[f->n].name = name;
    f->v[f->n].value = value;
    f->n++;
    f->bytes += (uint32_t)cost;
    return 0;
}

/* The index-th value of field `name` (0-based), or a vector with base NULL. */
static nghttp2_vec ward__fields_get(const ward_h2_fields_t *f, const char *name, size_t nlen,
                                    size_t index)
{
    for (uint32_t i = 0; i < f->n; i++) {
        if (!ward__eq(nghttp2_rcbuf_get_buf(f->v[i].name), name, nlen)) continue;
        if (index-- == 0) return nghttp2_rcbuf_get_buf(f->v[i].value);
    }
    return (nghttp2_vec){NULL, 0};
}

/* Copies f into nv[] minus the hop-by-hop fields (and, when strip_xfcc, the proxy's header).
 * Returns the count; nv has room for WARD_HTTP_MAX_HEADERS entries. */
static size_t ward__fields_nv(const ward_h2_fields_t *f, nghttp2_nv *nv, int strip_xfcc)
{
    size_t n = 0;
    for (uint32_t i = 0; i < f->n; i++) {
        nghttp2_vec name = nghttp2_rcbuf_get_buf(f->v[i].name);
        nghttp2_vec value = nghttp2_rcbuf_get_buf(f->v[i].value);
        if (ward__hop_field(name, value)) continue;
        if (strip_xfcc && WARD__EQ(name, WARD_XFCC_HEADER)) continue;
        ward__nv(&nv[n++], (const char *)name.base, name.len, (const char *)value.base, value.len);
    }
    return n;
}

/* ward_authz_header_fn over the request head. h2 names are lowercase; "host" falls back to
 * :authority, which is where HTTP/2 callers put it. */
static const char *ward__authz_header(void *ctx, const char *name, size_t name_len, size_t index,
                                      size_t *value_len)
{
    const ward_h2_stream_t *s = ctx;
    nghttp2_vec v = ward__fields_get(&s->req, name, name_len, index);
    if (v.base == NULL && index == 0 && name_len == 4 && memcmp(name, "host", 4) == 0)
        v = ward__fields_get(&s->req, ":authority", 10, 0);
    if (v.base == NULL) return NULL;
    *value_len = v.len;
    return (const char *)v.base;
}

/* --- stream buffers --------------------------------------------------------------------------- */

/* Moves up to n bytes from the front of q into dst; emptied chunks go back to the pool. */
static size_t ward__q_take(ward_conn_t *c, ward_outq_t *q, uint8_t *dst, size_t n)
{
    size_t got = 0;
    while (got < n && q->head != NULL) {
        ward_chunk_t *k = q->head;
        size_t avail = k->len - k->off;
        if (avail > n - got) avail = n - got;
        memcpy(dst + got, k->data + k->off, avail);
        k->off += avail;
        got += avail;
        q->bytes -= avail;
        if (k->off == k->len) {
            q->head = k->next;
            if (q->head == NULL) q->tail = NULL;
            k->next = NULL;
            ward_pool_put(&c->w->pool, k);
        }
    }
    return got;
}

/* --- stream objects --------------------------------------------------------------------------- */

static ward_h2_stream_t *ward__stream_new(ward_h2_t *h, int32_t down_id)
{
    ward_h2_stream_t *s = ward_calloc(1, sizeof(*s));
    if (s == NULL) return NULL;
    s->down_id = down_id;
    s->state = WARD_H2S_HEADERS;
    s->flags = WARD_H2F_DOWN_OPEN;
    s->next = h->streams;
    if (h->streams != NULL) h->streams->prev = s;
    h->streams = s;
    h->nstreams++;
    return s;
}

static void ward__stream_free(ward_h2_t *h, ward_h2_stream_t *s)
{
    if (s->prev != NULL)
        s->prev->next = s->next;
    else
        h->streams = s->next;
    if (s->next != NULL) s->next->prev = s->prev;
    h->nstreams--;
    ward__fields_release(&s->req);
    ward__fields_release(&s->req_trl);
    ward__fields_release(&s->resp);
    ward__fields_release(&s->resp_trl);
    ward_outq_clear(h->c, &s->req_body);
    ward_outq_clear(h->c, &s->resp_body);
    ward_free(s->path);
    ward_free(s);
}

/* Remembers the grpc-status value among f (for the access log). */
static void ward__note_grpc_status(ward_h2_stream_t *s, const ward_h2_fields_t *f)
{
    nghttp2_vec v = ward__fields_get(f, "grpc-status", 11, 0);
    if (v.base == NULL || v.len >= sizeof(s->grpc_status)) return;
    memcpy(s->grpc_status, v.base, v.len);
    s->grpc_status[v.len] = '\0';
}

/* The caller's stream is over: metrics and the access-log line, once. */
static void ward__request_done(ward_h2_t *h, ward_h2_stream_t *s)
{
    ward_request_log_t r;
    if (s->flags & WARD_H2F_COUNTED) return;
    s->flags |= WARD_H2F_COUNTED;
    memset(&r, 0, sizeof(r));
    r.method = s->method[0] ? s->method : NULL;
    r.path = s->path;
    r.path_len = s->path_len;
    r.status = (s->flags & WARD_H2F_RESP_DONE) ? s->status : 0;
    r.bytes_in = s->bytes_in;
    r.bytes_out = s->bytes_out;
    r.start_ms = s->start_ms ? s->start_ms : ward__now(h);
    r.grpc_status = s->grpc_status[0] ? s->grpc_status : NULL;
    r.denied = (s->flags & WARD_H2F_DENIED) != 0;
    ward_conn_request_done(h->c, (s->flags & WARD_H2F_GRPC) ? WARD_REQ_GRPC : WARD_REQ_HTTP2, &r);
}

/* Frees s once neither session refers to it. Callers must not touch s afterwards. */
static void ward__stream_release(ward_h2_t *h, ward_h2_stream_t *s)
{
    if (!(s->flags & (WARD_H2F_DOWN_OPEN | WARD_H2F_UP_OPEN))) ward__stream_free(h, s);
}

static ward_h2_stream_t *ward__stream_by_up_id(ward_h2_t *h, int32_t up_id)
{
    for (ward_h2_stream_t *s = h->streams; s != NULL; s = s->next)
        if (s->up_id == up_id && (s->flags & WARD_H2F_UP_OPEN)) return s;
    return NULL;
}

static void ward__resume(ward_h2_t *h, nghttp2_session *sess, ward_h2_stream_t *s, uint32_t flag,
                         int32_t id)
{
    if (!(s->flags & flag)) return;
    s->flags &= ~flag;
    ward__ng_check(h, nghttp2_session_resume_data(sess, id));
}

/* Request body that will never reach the app: give the caller its window back and drop it. */
static void ward__req_drop(ward_h2_t *h, ward_h2_stream_t *s)
{
    s->flags |= WARD_H2F_REQ_DROP;
    if (s->req_body.bytes > 0 && (s->flags & WARD_H2F_DOWN_OPEN))
        ward__ng_check(h, nghttp2_session_consume_stream(h->down, s->down_id, s->req_body.bytes));
    ward_outq_clear(h->c, &s->req_body);
    ward__fields_release(&s->req_trl);
}

static void ward__rst_down(ward_h2_t *h, ward_h2_stream_t *s, uint32_t code)
{
    if (!(s->flags & WARD_H2F_DOWN_OPEN) || (s->flags & WARD_H2F_DOWN_RST)) return;
    s->flags |= WARD_H2F_DOWN_RST;
    ward_outq_clear(h->c, &s->resp_body);
    ward__ng_check(h, nghttp2_submit_rst_stream(h->down, NGHTTP2_FLAG_NONE, s->down_id, code));
}

static void ward__rst_up(ward_h2_t *h, ward_h2_stream_t *s, uint32_t code)
{
    if (!(s->flags & WARD_H2F_UP_OPEN) || (s->flags & WARD_H2F_UP_RST) ||
        (h->flags & WARD_H2_UP_GONE))
        return;
    s->flags |= WARD_H2F_UP_RST;
    ward__ng_check(h, nghttp2_submit_rst_stream(h->up, NGHTTP2_FLAG_NONE, s->up_id, code));
}

static void ward__goaway_down(ward_h2_t *h)
{
    if (h->flags & (WARD_H2_GOAWAY_DOWN | WARD_H2_DOWN_DEAD)) return;
    h->flags |= WARD_H2_GOAWAY_DOWN;
    ward__ng_check(h, nghttp2_submit_goaway(h->down, NGHTTP2_FLAG_NONE,
                                            nghttp2_session_get_last_proc_stream_id(h->down),
                                            NGHTTP2_NO_ERROR, NULL, 0));
}

/* --- flood accounting ------------------------------------------------------------------------- */

static void ward__calm(ward_h2_t *h, const char *why)
{
    if (h->flags & WARD_H2_CALM) return;
    h->flags |= WARD_H2_CALM | WARD_H2_GOAWAY_DOWN;
    ward__log(h, WARD_LOG_WARN, "http2_flood", NULL, why,
              "GOAWAY ENHANCE_YOUR_CALM sent, connection closed");
    ward__ng_check(h, nghttp2_session_terminate_session(h->down, NGHTTP2_ENHANCE_YOUR_CALM));
    /* Nothing more goes to the app for this caller. */
    for (ward_h2_stream_t *s = h->streams; s != NULL; s = s->next)
        ward__rst_up(h, s, NGHTTP2_CANCEL);
}

static void ward__windows_roll(ward_h2_t *h, uint64_t now)
{
    if (now - h->rst_t0 >= 1000) {
        h->rst_t0 = now;
        h->rst_1s = 0;
    }
    if (now - h->win_t0 >= WARD_H2_RESET_WINDOW_MS) {
        h->win_t0 = now;
        h->rst_win = h->done_win = 0;
    }
}

/* A stream the caller reset, or that we refused because of what the caller sent. */
static void ward__count_reset(ward_h2_t *h)
{
    ward__windows_roll(h, ward__now(h));
    h->rst_1s++;
    h->rst_win++;
    if (h->rst_1s > WARD_H2_MAX_RESETS_1S)
        ward__calm(h, "rapid_reset");
    else if (h->rst_win > WARD_H2_MAX_RESETS_WIN && h->rst_win > h->done_win)
        ward__calm(h, "reset_ratio");
}

static void ward__count_done(ward_h2_t *h)
{
    ward__windows_roll(h, ward__now(h));
    h->done_win++;
}

static void ward__count_ctrl(ward_h2_t *h)
{
    uint64_t now = ward__now(h);
    if (now - h->ctrl_t0 >= 1000) {
        h->ctrl_t0 = now;
        h->ctrl_1s = 0;
    }
    if (++h->ctrl_1s > WARD_H2_MAX_CTRL_1S) ward__calm(h, "control_frame_flood");
}

/* --- responses made by the proxy -------------------------------------------------------------- */

static ssize_t ward__resp_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                               size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                               void *user_data);

static void ward__submit_failed(ward_h2_t *h, ward_h2_stream_t *s, int rv)
{
    if (nghttp2_is_fatal(rv))
        ward__fail(h);
    else
        ward__rst_down(h, s, NGHTTP2_INTERNAL_ERROR);
}

/* Ends the stream toward the app (if it got there) and marks the request body as dropped. */
static void ward__go_local(ward_h2_t *h, ward_h2_stream_t *s)
{
    s->state = WARD_H2S_LOCAL;
    ward__rst_up(h, s, NGHTTP2_CANCEL);
    ward__req_drop(h, s);
}

/* An HTTP answer from the proxy: status, x-ward-deny-reason (when reason), a short text body. */
static void ward__respond_http(ward_h2_t *h, ward_h2_stream_t *s, unsigned status,
                               const char *reason, const char *text)
{
    char code[8], body[256];
    nghttp2_nv nv[4];
    size_t n = 0;
    ward__go_local(h, s);
    if (!(s->flags & WARD_H2F_DOWN_OPEN) || (s->flags & (WARD_H2F_RESP_HEAD | WARD_H2F_DOWN_RST)))
        return;
    snprintf(code, sizeof(code), "%u", status);
    int blen =
        snprintf(body, sizeof(body), "%s%s%s\n", text, reason ? ": " : "", reason ? reason : "");
    if (blen < 0) blen = 0;
    if ((size_t)blen >= sizeof(body)) blen = (int)sizeof(body) - 1;
    ward__nvs(&nv[n++], ":status", code);
    ward__nvs(&nv[n++], "content-type", "text/plain; charset=utf-8");
    if (reason != NULL) ward__nvs(&nv[n++], "x-ward-deny-reason", reason);
    ward_outq_clear(h->c, &s->resp_body);
    if (ward_outq_append(h->c, &s->resp_body, body, (size_t)blen) < 0) {
        ward__fail(h);
        return;
    }
    nghttp2_data_provider prd;
    prd.source.ptr = s;
    prd.read_callback = ward__resp_read;
    s->flags |= WARD_H2F_RESP_HEAD | WARD_H2F_RESP_EOS;
    s->status = status;
    int rv = nghttp2_submit_response(h->down, s->down_id, nv, n, &prd);
    if (rv != 0) ward__submit_failed(h, s, rv);
}

/* A gRPC answer from the proxy, trailers-only: one HEADERS frame with END_STREAM. */
static void ward__respond_grpc(ward_h2_t *h, ward_h2_stream_t *s, int grpc_status,
                               const char *message, const char *reason)
{
    char code[12], enc[3 * 512 + 1];
    nghttp2_nv nv[5];
    size_t n = 0;
    ward__go_local(h, s);
    if (!(s->flags & WARD_H2F_DOWN_OPEN) || (s->flags & (WARD_H2F_RESP_HEAD | WARD_H2F_DOWN_RST)))
        return;
    snprintf(code, sizeof(code), "%d", grpc_status);
    snprintf(s->grpc_status, sizeof(s->grpc_status), "%d", grpc_status);
    size_t mlen = strlen(message);
    if (mlen > 512) mlen = 512;
    ward__pct_encode(enc, message, mlen);
    ward__nvs(&nv[n++], ":status", "200");
    ward__nvs(&nv[n++], "content-type", "application/grpc");
    ward__nvs(&nv[n++], "grpc-status", code);
    ward__nvs(&nv[n++], "grpc-message", enc);
    if (reason != NULL) ward__nvs(&nv[n++], "x-ward-deny-reason", reason);
    s->flags |= WARD_H2F_RESP_HEAD | WARD_H2F_RESP_EOS;
    s->status = 200;
    int rv = nghttp2_submit_response(h->down, s->down_id, nv, n, NULL);
    if (rv != 0) ward__submit_failed(h, s, rv);
}

/* The app could not answer (connection lost, stream refused before a response head). */
static void ward__respond_bad_gateway(ward_h2_t *h, ward_h2_stream_t *s, const char *why)
{
    if (s->flags & WARD_H2F_GRPC)
        ward__respond_grpc(h, s, 14 /* UNAVAILABLE */, why, NULL);
    else
        ward__respond_http(h, s, 502, NULL, why);
}

/* --- request: decide and forward -------------------------------------------------------------- */

static ssize_t ward__req_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                              size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                              void *user_data);

static void ward__forward(ward_h2_t *h, ward_h2_stream_t *s, const char *path, size_t path_len)
{
    nghttp2_nv nv[WARD_HTTP_MAX_HEADERS + 1];
    size_t n = 0;
    for (uint32_t i = 0; i < s->req.n; i++) {
        nghttp2_vec name = nghttp2_rcbuf_get_buf(s->req.v[i].name);
        nghttp2_vec value = nghttp2_rcbuf_get_buf(s->req.v[i].value);
        if (ward__hop_field(name, value) || WARD__EQ(name, WARD_XFCC_HEADER)) continue;
        if (WARD__EQ(name, ":path"))
            ward__nv(&nv[n++], ":path", 5, path, path_len);
        else
            ward__nv(&nv[n++], (const char *)name.base, name.len, (const char *)value.base,
                     value.len);
    }
    const char *xfcc = ward_conn_xfcc(h->c);
    if (xfcc != NULL) ward__nvs(&nv[n++], WARD_XFCC_HEADER, xfcc);

    nghttp2_data_provider prd, *pp = NULL;
    if (!(s->flags & WARD_H2F_REQ_EOS)) {
        prd.source.ptr = s;
        prd.read_callback = ward__req_read;
        pp = &prd;
    }
    int32_t id = nghttp2_submit_request(h->up, NULL, nv, n, pp, s);
    if (id < 0) {
        if (nghttp2_is_fatal(id)) {
            ward__fail(h);
            return;
        }
        s->state = WARD_H2S_LOCAL;
        ward__req_drop(h, s);
        ward__rst_down(h, s, NGHTTP2_REFUSED_STREAM);
        /* Stream ids to the app exhausted (2^30 requests): the caller reconnects. */
        if (id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE) ward__goaway_down(h);
        return;
    }
    s->up_id = id;
    s->state = WARD_H2S_PROXYING;
    s->flags |= WARD_H2F_UP_OPEN;
    if (s->flags & WARD_H2F_REQ_EOS) s->flags |= WARD_H2F_REQ_SENT;
}

/* The caller's request head is complete: normalise, decide, answer or forward. */
static void ward__request(ward_h2_t *h, ward_h2_stream_t *s)
{
    char norm[WARD_PATH_MAX + 2], key[WARD_PATH_MAX + 1];
    ward_path_result_t pr = {0};

    s->start_ms = ward__now(h);
    nghttp2_vec ct = ward__fields_get(&s->req, "content-type", 12, 0);
    if (ct.base != NULL && ward__is_grpc(ct)) s->flags |= WARD_H2F_GRPC;
    if (s->req.overflow) {
        ward__log(h, WARD_LOG_INFO, "request_refused", s, "headers_too_large", NULL);
        ward__respond_http(h, s, 431, "headers_too_large", "request header fields too large");
        return;
    }
    nghttp2_vec m = ward__fields_get(&s->req, ":method", 7, 0);
    nghttp2_vec p = ward__fields_get(&s->req, ":path", 5, 0);
    if (m.base == NULL || m.len > WARD_H2_MAX_METHOD || WARD__EQ(m, "CONNECT")) {
        ward__respond_http(h, s, 405, "method_not_allowed", "method not allowed");
        return;
    }
    if (p.base == NULL) {
        ward__respond_http(h, s, 400, "bad_path", "bad request");
        return;
    }
    if (p.len > WARD_PATH_MAX) {
        ward__log(h, WARD_LOG_INFO, "request_refused", s, "bad_path", "path too long");
        ward__respond_http(h, s, 414, "bad_path", "request target too long");
        return;
    }
    int rc = ward_path_normalize((const char *)p.base, p.len, norm, sizeof(norm), &pr);
    if (rc != 0) {
        ward__log(h, WARD_LOG_INFO, "request_refused", s, "bad_path",
                  pr.why != NULL ? pr.why : ward_strerror(rc));
        ward__respond_http(h, s, 400, "bad_path", "bad request target");
        return;
    }
    size_t klen = ward_path_match_key(norm, pr.path_len, key, sizeof(key));
    memcpy(s->method, m.base, m.len);
    s->method[m.len] = '\0';
    s->path = ward_strndup(norm, pr.len);
    if (s->path == NULL) {
        ward__fail(h);
        return;
    }
    s->path_len = pr.len;

    ward_authz_request_t req;
    ward_authz_result_t res;
    memset(&req, 0, sizeof(req));
    memset(&res, 0, sizeof(res));
    req.method = s->method;
    req.path = key;
    req.path_len = klen;
    req.hour = -1;
    req.header = ward__authz_header;
    req.header_ctx = s;
    if (ward_conn_authorize(h->c, &req, &res) != WARD_AUTHZ_ALLOW) {
        const char *reason = res.reason != NULL ? res.reason : "policy_denied";
        s->flags |= WARD_H2F_DENIED;
        if (s->flags & WARD_H2F_GRPC) {
            char msg[512];
            snprintf(msg, sizeof(msg), "ward: permission denied: %s (policy %s)", reason,
                     res.policy != NULL ? res.policy : "none");
            ward__respond_grpc(h, s, 7 /* PERMISSION_DENIED */, msg, reason);
        } else {
            ward__respond_http(h, s, 403, reason, "forbidden");
        }
        return;
    }
    if ((h->flags & WARD_H2_UP_GONE) || !nghttp2_session_check_request_allowed(h->up)) {
        /* The app's connection is ending: the caller may retry this stream elsewhere. */
        s->state = WARD_H2S_LOCAL;
        ward__req_drop(h, s);
        ward__rst_down(h, s, NGHTTP2_REFUSED_STREAM);
        return;
    }
    ward__forward(h, s, norm, pr.len);
}

/* --- response: forward ------------------------------------------------------------------------ */

static unsigned ward__status_of(const ward_h2_fields_t *f)
{
    nghttp2_vec v = ward__fields_get(f, ":status", 7, 0);
    unsigned st = 0;
    for (size_t i = 0; v.base != NULL && i < v.len && i < 3; i++)
        st = st * 10 + (unsigned)(v.base[i] - '0'); /* nghttp2 checked: three digits */
    return st;
}

/* The app's response head (final or interim) is complete. */
static void ward__response_head(ward_h2_t *h, ward_h2_stream_t *s, int eos)
{
    nghttp2_nv nv[WARD_HTTP_MAX_HEADERS];
    if (!(s->flags & WARD_H2F_DOWN_OPEN) || (s->flags & WARD_H2F_DOWN_RST)) {
        ward__fields_release(&s->resp);
        return;
    }
    if (s->resp.overflow) {
        ward__log(h, WARD_LOG_WARN, "upstream_response_refused", s, "headers_too_large", NULL);
        ward__fields_release(&s->resp);
        ward__respond_bad_gateway(h, s, "upstream response header fields too large");
        return;
    }
    unsigned status = ward__status_of(&s->resp);
    size_t n = ward__fields_nv(&s->resp, nv, 0);
    int rv;
    if (status < 200) {
        /* Interim (100 Continue, 103 Early Hints) go on as non-final HEADERS; 101 has no
         * meaning in HTTP/2. */
        if (status != 101)
            rv = nghttp2_submit_headers(h->down, NGHTTP2_FLAG_NONE, s->down_id, NULL, nv, n, NULL);
        else
            rv = 0;
        ward__fields_release(&s->resp);
        if (rv < 0) ward__submit_failed(h, s, rv);
        return;
    }
    s->flags |= WARD_H2F_RESP_FINAL | WARD_H2F_RESP_HEAD;
    s->status = status;
    nghttp2_data_provider prd, *pp = NULL;
    if (eos) {
        s->flags |= WARD_H2F_RESP_EOS;
        ward__note_grpc_status(s, &s->resp);
    } else {
        prd.source.ptr = s;
        prd.read_callback = ward__resp_read;
        pp = &prd;
    }
    rv = nghttp2_submit_response(h->down, s->down_id, nv, n, pp);
    ward__fields_release(&s->resp);
    if (rv != 0) {
        ward__submit_failed(h, s, rv);
        ward__rst_up(h, s, NGHTTP2_INTERNAL_ERROR);
    }
}

/* The upstream stream is gone (closed by nghttp2, refused before it was sent, or the app's
 * connection ended). peer_rst: the app reset it explicitly (code is its error code). */
static void ward__up_closed(ward_h2_t *h, ward_h2_stream_t *s, uint32_t code, int peer_rst)
{
    if (!(s->flags & WARD_H2F_UP_OPEN)) return;
    s->flags &= ~WARD_H2F_UP_OPEN;
    if (!(h->flags & WARD_H2_UP_GONE)) nghttp2_session_set_stream_user_data(h->up, s->up_id, NULL);
    ward__req_drop(h, s);
    if ((s->flags & WARD_H2F_UP_RST) || !(s->flags & WARD_H2F_DOWN_OPEN) ||
        s->state != WARD_H2S_PROXYING)
        return;                               /* we ended it, or there is nobody to tell */
    if (s->flags & WARD_H2F_RESP_EOS) return; /* complete: it drains; the rest is dropped */
    if (s->flags & WARD_H2F_RESP_HEAD) {
        ward__rst_down(h, s, code != NGHTTP2_NO_ERROR ? code : NGHTTP2_INTERNAL_ERROR);
    } else if (code == NGHTTP2_REFUSED_STREAM) {
        ward__rst_down(h, s, NGHTTP2_REFUSED_STREAM);
    } else if (peer_rst) {
        ward__rst_down(h, s, code != NGHTTP2_NO_ERROR ? code : NGHTTP2_INTERNAL_ERROR);
    } else {
        ward__respond_bad_gateway(h, s, "upstream connection lost");
    }
}

/* --- data providers --------------------------------------------------------------------------- */

/* Builds the trailer fields of f and submits them on sess. Returns 0 or an nghttp2 error. */
/* strip_xfcc: request trailers toward the app never carry a caller's x-forwarded-client-cert
 * (the verified one is in the request head). */
static int ward__submit_trailers(nghttp2_session *sess, int32_t id, ward_h2_fields_t *f,
                                 int strip_xfcc)
{
    nghttp2_nv nv[WARD_HTTP_MAX_HEADERS];
    size_t n = ward__fields_nv(f, nv, strip_xfcc);
    int rv = nghttp2_submit_trailer(sess, id, nv, n);
    ward__fields_release(f);
    return rv;
}

/* Request body toward the app. */
static ssize_t ward__req_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                              size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                              void *user_data)
{
    ward_h2_t *h = user_data;
    ward_h2_stream_t *s = source->ptr;
    if (h->flags & WARD_H2_FREEING) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t n = ward__q_take(h->c, &s->req_body, buf, length);
    if (n > 0 && (s->flags & WARD_H2F_DOWN_OPEN)) {
        int rv = nghttp2_session_consume_stream(h->down, s->down_id, n);
        if (nghttp2_is_fatal(rv)) {
            ward__fail(h);
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
    }
    if (s->req_body.bytes > 0) return (ssize_t)n;
    if (!(s->flags & WARD_H2F_REQ_EOS)) {
        if (n > 0) return (ssize_t)n;
        s->flags |= WARD_H2F_UP_DEFER;
        return NGHTTP2_ERR_DEFERRED;
    }
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    s->flags |= WARD_H2F_REQ_SENT;
    if (s->req_trl.n > 0) {
        int rv = ward__submit_trailers(session, stream_id, &s->req_trl, 1);
        if (rv != 0) {
            if (nghttp2_is_fatal(rv)) {
                ward__fail(h);
                return NGHTTP2_ERR_CALLBACK_FAILURE;
            }
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    }
    return (ssize_t)n;
}

/* Response body toward the caller (the app's, or the proxy's own text). */
static ssize_t ward__resp_read(nghttp2_session *session, int32_t stream_id, uint8_t *buf,
                               size_t length, uint32_t *data_flags, nghttp2_data_source *source,
                               void *user_data)
{
    ward_h2_t *h = user_data;
    ward_h2_stream_t *s = source->ptr;
    if (h->flags & WARD_H2_FREEING) return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t n = ward__q_take(h->c, &s->resp_body, buf, length);
    s->bytes_out += n;
    if (n > 0 && (s->flags & WARD_H2F_UP_OPEN) && !(h->flags & WARD_H2_UP_GONE)) {
        int rv = nghttp2_session_consume_stream(h->up, s->up_id, n);
        if (nghttp2_is_fatal(rv)) {
            ward__fail(h);
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        }
    }
    if (s->resp_body.bytes > 0) return (ssize_t)n;
    if (!(s->flags & WARD_H2F_RESP_EOS)) {
        if (n > 0) return (ssize_t)n;
        s->flags |= WARD_H2F_DOWN_DEFER;
        return NGHTTP2_ERR_DEFERRED;
    }
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    if (s->resp_trl.n > 0) {
        ward__note_grpc_status(s, &s->resp_trl);
        int rv = ward__submit_trailers(session, stream_id, &s->resp_trl, 0);
        if (rv != 0) {
            if (nghttp2_is_fatal(rv)) {
                ward__fail(h);
                return NGHTTP2_ERR_CALLBACK_FAILURE;
            }
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    }
    return (ssize_t)n;
}

/* --- nghttp2 callbacks ------------------------------------------------------------------------ */

static ward_h2_stream_t *ward__stream_of(nghttp2_session *sess, int32_t id)
{
    return id != 0 ? nghttp2_session_get_stream_user_data(sess, id) : NULL;
}

/* Whether what the app sends on s still goes to the caller: not once the proxy answered the
 * stream itself, reset it toward the app, or the caller's side is gone. */
static int ward__relaying(const ward_h2_stream_t *s)
{
    return s->state == WARD_H2S_PROXYING && (s->flags & (WARD_H2F_UP_RST | WARD_H2F_DOWN_RST |
                                                         WARD_H2F_DOWN_OPEN)) == WARD_H2F_DOWN_OPEN;
}

static int ward__on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame,
                                  void *user_data)
{
    ward_h2_t *h = user_data;
    if ((h->flags & WARD_H2_FREEING) || session != h->down || frame->hd.type != NGHTTP2_HEADERS ||
        frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (h->nstreams >= WARD_H2_MAX_OBJECTS) /* nghttp2 resets it (counted when sent) */
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    ward_h2_stream_t *s = ward__stream_new(h, frame->hd.stream_id);
    if (s == NULL) {
        ward__fail(h);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    if (nghttp2_session_set_stream_user_data(session, frame->hd.stream_id, s) != 0) {
        ward__stream_free(h, s);
        ward__fail(h);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static int ward__on_header(nghttp2_session *session, const nghttp2_frame *frame,
                           nghttp2_rcbuf *name, nghttp2_rcbuf *value, uint8_t flags,
                           void *user_data)
{
    ward_h2_t *h = user_data;
    (void)flags;
    if ((h->flags & WARD_H2_FREEING) || frame->hd.type != NGHTTP2_HEADERS) return 0;
    ward_h2_stream_t *s = ward__stream_of(session, frame->hd.stream_id);
    if (s == NULL) return 0;
    ward_h2_fields_t *f;
    if (session == h->down) {
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST)
            f = &s->req;
        else if (s->state == WARD_H2S_PROXYING && !(s->flags & WARD_H2F_REQ_DROP))
            f = &s->req_trl;
        else
            return 0;
    } else {
        if (!ward__relaying(s)) return 0;
        f = (s->flags & WARD_H2F_RESP_FINAL) ? &s->resp_trl : &s->resp;
    }
    if (ward__fields_add(f, name, value) < 0) {
        ward__fail(h);
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    return 0;
}

static void ward__down_frame(ward_h2_t *h, const nghttp2_frame *frame)
{
    int eos = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    ward_h2_stream_t *s;
    switch (frame->hd.type) {
    case NGHTTP2_RST_STREAM:
        ward__count_reset(h);
        return;
    case NGHTTP2_PING:
    case NGHTTP2_SETTINGS:
        if (!(frame->hd.flags & NGHTTP2_FLAG_ACK)) ward__count_ctrl(h);
        return;
    case NGHTTP2_HEADERS:
    case NGHTTP2_DATA:
        break;
    default:
        return;
    }
    s = ward__stream_of(h->down, frame->hd.stream_id);
    if (s == NULL) return;
    if (eos) s->flags |= WARD_H2F_REQ_EOS;
    if (frame->hd.type == NGHTTP2_HEADERS && frame->headers.cat == NGHTTP2_HCAT_REQUEST) {
        ward__request(h, s);
        return;
    }
    if (frame->hd.type == NGHTTP2_HEADERS && s->req_trl.overflow) {
        ward__log(h, WARD_LOG_INFO, "request_refused", s, "trailers_too_large", NULL);
        ward__rst_up(h, s, NGHTTP2_CANCEL);
        ward__rst_down(h, s, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    if (eos && s->state == WARD_H2S_PROXYING && (s->flags & WARD_H2F_UP_OPEN))
        ward__resume(h, h->up, s, WARD_H2F_UP_DEFER, s->up_id);
}

static void ward__up_frame(ward_h2_t *h, const nghttp2_frame *frame)
{
    int eos = (frame->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0;
    if (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA &&
        frame->hd.type != NGHTTP2_RST_STREAM)
        return;
    ward_h2_stream_t *s = ward__stream_of(h->up, frame->hd.stream_id);
    if (s == NULL) return;
    if (frame->hd.type == NGHTTP2_RST_STREAM) {
        s->flags |= WARD_H2F_UP_PEER_RST;
        s->up_rst_code = frame->rst_stream.error_code;
        return;
    }
    if (!ward__relaying(s)) return;
    if (frame->hd.type == NGHTTP2_HEADERS && !(s->flags & WARD_H2F_RESP_FINAL)) {
        ward__response_head(h, s, eos);
        return;
    }
    if (frame->hd.type == NGHTTP2_HEADERS && s->resp_trl.overflow) {
        ward__log(h, WARD_LOG_WARN, "upstream_response_refused", s, "trailers_too_large", NULL);
        ward__rst_up(h, s, NGHTTP2_CANCEL);
        ward__rst_down(h, s, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    if (eos && (s->flags & WARD_H2F_RESP_HEAD)) {
        s->flags |= WARD_H2F_RESP_EOS;
        ward__resume(h, h->down, s, WARD_H2F_DOWN_DEFER, s->down_id);
    }
}

static int ward__on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame,
                               void *user_data)
{
    ward_h2_t *h = user_data;
    if (h->flags & WARD_H2_FREEING) return 0;
    if (session == h->down)
        ward__down_frame(h, frame);
    else
        ward__up_frame(h, frame);
    return (h->flags & WARD_H2_FATAL) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

static int ward__on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                               const uint8_t *data, size_t len, void *user_data)
{
    ward_h2_t *h = user_data;
    (void)flags;
    if (h->flags & WARD_H2_FREEING) return 0;
    /* The connection window is given back at once: what a stream may hold is bounded by its own
     * window. */
    int rv = nghttp2_session_consume_connection(session, len);
    if (nghttp2_is_fatal(rv)) goto fatal;
    ward_h2_stream_t *s = ward__stream_of(session, stream_id);
    ward_outq_t *q = NULL;
    int32_t out_id = 0;
    if (s != NULL && session == h->down) {
        s->bytes_in += len;
        if (s->state == WARD_H2S_PROXYING && (s->flags & WARD_H2F_UP_OPEN) &&
            !(s->flags & (WARD_H2F_REQ_DROP | WARD_H2F_UP_RST))) {
            q = &s->req_body;
            out_id = s->up_id;
        }
    } else if (s != NULL) {
        if (ward__relaying(s) && (s->flags & WARD_H2F_RESP_HEAD)) {
            q = &s->resp_body;
            out_id = s->down_id;
        }
    }
    if (q == NULL) { /* nobody will read it: dropped */
        rv = nghttp2_session_consume_stream(session, stream_id, len);
        if (nghttp2_is_fatal(rv)) goto fatal;
        return 0;
    }
    if (q->bytes + len > WARD_H2_STREAM_WINDOW) {
        /* Cannot happen while the peer honours our window (nghttp2 enforces it). */
        ward__rst_up(h, s, NGHTTP2_FLOW_CONTROL_ERROR);
        ward__rst_down(h, s, NGHTTP2_FLOW_CONTROL_ERROR);
        return 0;
    }
    if (ward_outq_append(h->c, q, data, len) < 0) goto fatal;
    if (session == h->down)
        ward__resume(h, h->up, s, WARD_H2F_UP_DEFER, out_id);
    else
        ward__resume(h, h->down, s, WARD_H2F_DOWN_DEFER, out_id);
    return (h->flags & WARD_H2_FATAL) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
fatal:
    ward__fail(h);
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int ward__on_frame_send(nghttp2_session *session, const nghttp2_frame *frame,
                               void *user_data)
{
    ward_h2_t *h = user_data;
    if ((h->flags & WARD_H2_FREEING) || session != h->down) return 0;
    ward_h2_stream_t *s = ward__stream_of(session, frame->hd.stream_id);
    if (frame->hd.type == NGHTTP2_RST_STREAM) {
        /* nghttp2 refusing what the caller sent (invalid headers, too many streams, ...). */
        if (s == NULL || !(s->flags & WARD_H2F_DOWN_RST)) ward__count_reset(h);
        return 0;
    }
    if (s == NULL || !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM) ||
        (frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA))
        return 0;
    /* A caller still sending after a complete response keeps its window moving: the rest of its
     * body is consumed and dropped. (RST_STREAM NO_ERROR, RFC 9113 section 8.1, would be allowed,
     * but clients such as curl 7.88 report it as an error.) */
    s->flags |= WARD_H2F_RESP_DONE;
    return 0;
}

static int ward__on_frame_not_send(nghttp2_session *session, const nghttp2_frame *frame,
                                   int lib_error_code, void *user_data)
{
    ward_h2_t *h = user_data;
    (void)lib_error_code;
    if ((h->flags & WARD_H2_FREEING) || session != h->up || frame->hd.type != NGHTTP2_HEADERS ||
        frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    /* A request nghttp2 never sent (cancelled while queued, or the app's GOAWAY came first). */
    ward_h2_stream_t *s = ward__stream_by_up_id(h, frame->hd.stream_id);
    if (s == NULL) return 0;
    ward__up_closed(h, s, NGHTTP2_REFUSED_STREAM, 0);
    ward__stream_release(h, s);
    return (h->flags & WARD_H2_FATAL) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

static int ward__on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                                 void *user_data)
{
    ward_h2_t *h = user_data;
    if (h->flags & WARD_H2_FREEING) return 0;
    ward_h2_stream_t *s = ward__stream_of(session, stream_id);
    if (s == NULL) return 0;
    nghttp2_session_set_stream_user_data(session, stream_id, NULL);
    if (session == h->up) {
        ward__up_closed(h, s, error_code, (s->flags & WARD_H2F_UP_PEER_RST) != 0);
        ward__stream_release(h, s);
        /* Never a callback failure here: nghttp2 1.52 calls this from its own error path while
         * serialising, and returning a failure then leaks the outbound item it was preparing.
         * WARD_H2_FATAL still ends the connection from the pump. */
        return 0;
    }
    s->flags &= ~WARD_H2F_DOWN_OPEN;
    ward__request_done(h, s);
    if (s->flags & WARD_H2F_RESP_DONE) ward__count_done(h);
    /* The caller is gone: whatever the app still does for this stream is of no use. A complete
     * exchange leaves nothing to cancel (the app's side closes by itself). */
    if (s->flags & WARD_H2F_UP_OPEN) {
        if (!(s->flags & WARD_H2F_RESP_DONE) || !(s->flags & WARD_H2F_REQ_SENT))
            ward__rst_up(h, s, error_code != NGHTTP2_NO_ERROR ? error_code : NGHTTP2_CANCEL);
    }
    ward_outq_clear(h->c, &s->resp_body);
    ward__fields_release(&s->resp_trl);
    if (s->state == WARD_H2S_HEADERS || s->state == WARD_H2S_PROXYING) s->state = WARD_H2S_CLOSING;
    ward__stream_release(h, s);
    return (h->flags & WARD_H2_FATAL) ? NGHTTP2_ERR_CALLBACK_FAILURE : 0;
}

/* --- connection-level events ------------------------------------------------------------------ */

/* The app's connection ended (EOF, error, protocol failure) or its session finished (GOAWAY and
 * no stream left). Streams it had are answered or reset; the caller is asked to go elsewhere. */
static void ward__up_lost(ward_h2_t *h, const char *why)
{
    if (h->flags & WARD_H2_UP_GONE) return;
    int busy = 0;
    for (ward_h2_stream_t *s = h->streams; s != NULL; s = s->next)
        busy |= (s->flags & WARD_H2F_UP_OPEN) != 0;
    ward__log(h, busy ? WARD_LOG_WARN : WARD_LOG_DEBUG, "upstream_closed", NULL, why, NULL);
    ward_h2_stream_t *next;
    for (ward_h2_stream_t *s = h->streams; s != NULL; s = next) {
        next = s->next;
        if (!(s->flags & WARD_H2F_UP_OPEN)) continue;
        /* A request nghttp2 never sent can be retried by the caller. */
        uint32_t code = nghttp2_session_find_stream(h->up, s->up_id) != NULL
                            ? NGHTTP2_INTERNAL_ERROR
                            : NGHTTP2_REFUSED_STREAM;
        ward__up_closed(h, s, code, 0);
        ward__stream_release(h, s);
    }
    h->flags |= WARD_H2_UP_GONE;
    ward_outq_clear(h->c, &h->q_up);
    ward_side_set_events(&h->c->up, 0);
    ward__goaway_down(h);
}

/* --- I/O pump --------------------------------------------------------------------------------- */

/* Hands bytes read from the caller to the server session. */
static void ward__recv_down(ward_h2_t *h, const uint8_t *p, size_t n)
{
    if (h->flags & (WARD_H2_LINGER | WARD_H2_DOWN_DEAD)) {
        h->linger_bytes += n;
        return;
    }
    ssize_t rv = nghttp2_session_mem_recv(h->down, p, n);
    if (rv >= 0) return;
    if (rv == NGHTTP2_ERR_BAD_CLIENT_MAGIC || rv == NGHTTP2_ERR_FLOODED) {
        /* Not HTTP/2, or a frame flood nghttp2 caught: tell the caller, then close. */
        ward__log(h, WARD_LOG_INFO, "http2_protocol_error", NULL,
                  rv == NGHTTP2_ERR_FLOODED ? "flood" : "bad_preface", nghttp2_strerror((int)rv));
        h->flags |= WARD_H2_DOWN_DEAD | WARD_H2_GOAWAY_DOWN;
        ward__ng_check(h, nghttp2_session_terminate_session(h->down, rv == NGHTTP2_ERR_FLOODED
                                                                         ? NGHTTP2_ENHANCE_YOUR_CALM
                                                                         : NGHTTP2_PROTOCOL_ERROR));
        return;
    }
    ward__fail(h);
}

/* Hands bytes read from the app to the client session. The app breaking the protocol (a flood,
 * say) costs it its connection, not ours to the caller. */
static void ward__recv_up(ward_h2_t *h, const uint8_t *p, size_t n)
{
    ssize_t rv = nghttp2_session_mem_recv(h->up, p, n);
    if (rv >= 0 || (h->flags & WARD_H2_FATAL)) return;
    if (rv == NGHTTP2_ERR_NOMEM)
        ward__fail(h);
    else
        ward__up_lost(h, nghttp2_strerror((int)rv));
}

/* Whether side s should be read at all: its session wants input and the queue toward s (where
 * the answers to that input go) is under the high-water mark. Lingering, the caller is read
 * (and ignored) until EOF. */
static int ward__want_read(ward_h2_t *h, ward_side_t *s)
{
    ward_conn_t *c = h->c;
    if (s->flags & WARD_SF_RD_EOF) return 0;
    if (s == &c->up)
        return !(h->flags & WARD_H2_UP_GONE) && h->q_up.bytes < WARD_H2_OUT_HIGH &&
               nghttp2_session_want_read(h->up);
    if (h->flags & (WARD_H2_LINGER | WARD_H2_DOWN_DEAD)) return 1;
    return h->q_down.bytes < WARD_H2_OUT_HIGH && nghttp2_session_want_read(h->down);
}

/* ... and whether to spend a read on it now: bytes wait inside TLS, or the socket may hold more
 * and this event's budget is not spent. */
static int ward__may_read(ward_h2_t *h, ward_side_t *s, int round)
{
    return ward__want_read(h, s) &&
           (ward_side_buffered(s) || (round < WARD_H2_READ_ROUNDS && !ward_side_drained(s)));
}

/* One read from side s into its session. Returns 1 when something happened (bytes or EOF). */
static int ward__read(ward_h2_t *h, ward_side_t *s)
{
    ward_conn_t *c = h->c;
    ward_chunk_t *k = ward_pool_get(&c->w->pool);
    if (k == NULL) {
        ward__fail(h);
        return 0;
    }
    ssize_t n = ward_side_read(s, k->data, WARD_CHUNK_SIZE);
    if (n > 0) {
        if (!(h->flags & WARD_H2_LINGER)) ward_conn_touch(c);
        if (s == &c->down)
            ward__recv_down(h, (const uint8_t *)k->data, (size_t)n);
        else
            ward__recv_up(h, (const uint8_t *)k->data, (size_t)n);
        ward_pool_put(&c->w->pool, k);
        return 1;
    }
    ward_pool_put(&c->w->pool, k);
    if (n == WARD_IO_WANT_READ || n == WARD_IO_WANT_WRITE) return 0;
    if (n == WARD_IO_EOF) {
        s->flags |= WARD_SF_RD_EOF;
        if (s == &c->up) ward__up_lost(h, "upstream closed the connection");
        return 1;
    }
    if (s == &c->up) {
        s->flags |= WARD_SF_RD_EOF;
        ward__up_lost(h, "upstream read error");
        return 1;
    }
    if (h->flags & WARD_H2_LINGER) {
        s->flags |= WARD_SF_RD_EOF;
        return 1;
    }
    ward__fail(h);
    return 0;
}

/* Serialises what sess has to send into q, while q is under the high-water mark. Returns the
 * bytes added. */
static size_t ward__serialise(ward_h2_t *h, nghttp2_session *sess, ward_outq_t *q)
{
    size_t total = 0;
    while (q->bytes < WARD_H2_OUT_HIGH && !(h->flags & WARD_H2_FATAL)) {
        const uint8_t *p;
        ssize_t n = nghttp2_session_mem_send(sess, &p);
        if (n < 0) {
            if (sess == h->up && !(h->flags & WARD_H2_FATAL) && n != NGHTTP2_ERR_NOMEM)
                ward__up_lost(h, nghttp2_strerror((int)n));
            else
                ward__fail(h);
            break;
        }
        if (n == 0) break;
        if (ward_outq_append(h->c, q, p, (size_t)n) < 0) {
            ward__fail(h);
            break;
        }
        total += (size_t)n;
        if (sess == h->up && (h->flags & WARD_H2_UP_GONE)) break;
    }
    return total;
}

static size_t ward__flush(ward_h2_t *h)
{
    ward_conn_t *c = h->c;
    size_t before = h->q_up.bytes + h->q_down.bytes;
    if (h->q_up.bytes > 0 && !(h->flags & WARD_H2_UP_GONE)) {
        if (ward_outq_flush(c, &h->q_up, &c->up, WARD_FLOW_TO_UPSTREAM) == WARD_IO_ERROR)
            ward__up_lost(h, "upstream write error");
    }
    if (h->q_down.bytes > 0) {
        if (ward_outq_flush(c, &h->q_down, &c->down, WARD_FLOW_TO_DOWNSTREAM) == WARD_IO_ERROR)
            ward__fail(h);
    }
    size_t after = h->q_up.bytes + h->q_down.bytes;
    return before > after ? before - after : 0;
}

/* The caller's session has nothing left to do: FIN (after close_notify) and read until the caller
 * closes, so that our last frames (GOAWAY) are not destroyed by a reset. */
static void ward__linger(ward_h2_t *h)
{
    ward_conn_t *c = h->c;
    h->flags |= WARD_H2_LINGER;
    if (!(c->down.flags & WARD_SF_WR_SHUT) || (c->down.flags & WARD_SF_SHUT_PEND)) {
        if (ward_side_shutdown(&c->down) == WARD_IO_ERROR) c->down.flags |= WARD_SF_RD_EOF;
    }
}

static int ward__down_finished(ward_h2_t *h)
{
    ward_conn_t *c = h->c;
    if (h->q_down.bytes > 0 || nghttp2_session_want_write(h->down)) return 0;
    if (c->down.flags & WARD_SF_RD_EOF) {
        /* The caller stopped sending: done once no stream of it is left to answer. A stream
         * whose request never ended cannot be answered any more (its END_STREAM can no longer
         * come): it does not hold the connection open. */
        for (ward_h2_stream_t *s = h->streams; s != NULL; s = s->next)
            if ((s->flags & WARD_H2F_DOWN_OPEN) && (s->flags & WARD_H2F_REQ_EOS)) return 0;
        return 1;
    }
    return !nghttp2_session_want_read(h->down);
}

/* Poll interest. `more`: the pump stopped on its round budget with work left; bytes already
 * inside the TLS layer are announced by no poll event either. Both ask for writability, which a
 * connected socket has at once, to come straight back. */
static void ward__set_events(ward_h2_t *h, int more)
{
    ward_conn_t *c = h->c;
    int rd = ward__want_read(h, &c->down);
    int wr = more || h->q_down.bytes > 0 || (c->down.flags & WARD_SF_SHUT_PEND) ||
             (rd && ward_side_buffered(&c->down));
    ward_side_set_events(&c->down, ward_side_wanted(&c->down, rd, wr));
    if (h->flags & WARD_H2_UP_GONE) {
        ward_side_set_events(&c->up, 0);
        return;
    }
    rd = ward__want_read(h, &c->up);
    wr = more || h->q_up.bytes > 0 || (rd && ward_side_buffered(&c->up));
    ward_side_set_events(&c->up, ward_side_wanted(&c->up, rd, wr));
}

/* Moves everything that can move: reads both sides (within budget), lets the sessions serialise,
 * writes both sides; repeats while that makes progress. Then decides whether the connection is
 * over, and what to poll for. The only place that ends the connection. */
static void ward__pump(ward_conn_t *c)
{
    ward_h2_t *h = c->cs;
    int more = 0;
    for (int round = 0;; round++) {
        size_t moved = 0;
        if (round == WARD_H2_PUMP_ROUNDS) {
            more = 1;
            break;
        }
        if (ward__may_read(h, &c->down, round)) moved += (size_t)ward__read(h, &c->down);
        if (!(h->flags & WARD_H2_FATAL) && ward__may_read(h, &c->up, round))
            moved += (size_t)ward__read(h, &c->up);
        for (int k = 0; k < 4 && !(h->flags & WARD_H2_FATAL); k++) {
            size_t n = 0;
            if (!(h->flags & WARD_H2_UP_GONE)) n += ward__serialise(h, h->up, &h->q_up);
            if (!(h->flags & WARD_H2_LINGER)) n += ward__serialise(h, h->down, &h->q_down);
            if (n == 0) break;
            moved += n;
        }
        if (!(h->flags & WARD_H2_FATAL)) moved += ward__flush(h);
        if (h->flags & WARD_H2_FATAL) break;
        /* The app's session is over (GOAWAY and no stream): treat it as gone. */
        if (!(h->flags & WARD_H2_UP_GONE) && !nghttp2_session_want_read(h->up) &&
            !nghttp2_session_want_write(h->up) && h->q_up.bytes == 0)
            ward__up_lost(h, "upstream session finished");
        if (moved == 0) break;
    }
    if (h->flags & WARD_H2_FATAL) {
        ward_conn_close(c, 1);
        return;
    }
    if (h->flags & WARD_H2_LINGER) {
        if (c->down.flags & WARD_SF_RD_EOF) {
            ward_conn_close(c, 0);
            return;
        }
        if (h->linger_bytes > WARD_H2_LINGER_MAX) {
            ward_conn_close(c, 1);
            return;
        }
        ward__linger(h);
    } else if (ward__down_finished(h)) {
        if (c->down.flags & WARD_SF_RD_EOF) {
            ward_conn_close(c, 0);
            return;
        }
        ward__linger(h);
        if (c->down.flags & WARD_SF_RD_EOF) {
            ward_conn_close(c, 0);
            return;
        }
    }
    ward__set_events(h, more);
}

/* --- codec entry points ----------------------------------------------------------------------- */

static void ward__h2_free(ward_conn_t *c)
{
    ward_h2_t *h = c->cs;
    if (h == NULL) return;
    h->flags |= WARD_H2_FREEING;
    while (h->streams != NULL)
        ward__stream_free(h, h->streams);
    ward_outq_clear(c, &h->q_down);
    ward_outq_clear(c, &h->q_up);
    nghttp2_session_del(h->down);
    nghttp2_session_del(h->up);
    ward_free(h);
    c->cs = NULL;
}

/* Our SETTINGS and the connection window. Server: MAX_CONCURRENT_STREAMS toward the caller;
 * client: no push from the app. */
static int ward__settings(nghttp2_session *sess, int server)
{
    nghttp2_settings_entry iv[3];
    size_t niv = 0;
    iv[niv++] =
        (nghttp2_settings_entry){NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, WARD_H2_STREAM_WINDOW};
    iv[niv++] =
        (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, WARD_HTTP_MAX_HEADER_BYTES};
    if (server)
        iv[niv++] =
            (nghttp2_settings_entry){NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, WARD_H2_MAX_STREAMS};
    else
        iv[niv++] = (nghttp2_settings_entry){NGHTTP2_SETTINGS_ENABLE_PUSH, 0};
    int rv = nghttp2_submit_settings(sess, NGHTTP2_FLAG_NONE, iv, niv);
    if (rv != 0) return rv;
    return nghttp2_session_set_local_window_size(sess, NGHTTP2_FLAG_NONE, 0, WARD_H2_CONN_WINDOW);
}

static int ward__session_new(ward_h2_t *h, int server, nghttp2_session **out)
{
    nghttp2_session_callbacks *cbs;
    nghttp2_option *opt;
    nghttp2_mem mem = {NULL, ward_ng_malloc, ward_ng_free, ward_ng_calloc, ward_ng_realloc};
    int rv = nghttp2_session_callbacks_new(&cbs);
    if (rv != 0) goto fail_callbacks;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, ward__on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback2(cbs, ward__on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, ward__on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, ward__on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, ward__on_frame_send);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, ward__on_frame_not_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, ward__on_stream_close);
    rv = nghttp2_option_new(&opt);
    if (rv != 0) goto fail_option;
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_no_closed_streams(opt, 1);
    rv = server ? nghttp2_session_server_new3(out, cbs, h, opt, &mem)
                : nghttp2_session_client_new3(out, cbs, h, opt, &mem);
    if (rv == 0 && (rv = ward__settings(*out, server)) != 0) {
        nghttp2_session_del(*out);
        *out = NULL;
    }
    nghttp2_option_del(opt);
fail_option:
    nghttp2_session_callbacks_del(cbs);
fail_callbacks:
    return rv == 0 ? 0 : (rv == NGHTTP2_ERR_NOMEM ? WARD_ENOMEM : WARD_EIO);
}

static int ward__h2_start(ward_conn_t *c)
{
    ward_h2_t *h = ward_calloc(1, sizeof(*h));
    int rc = WARD_ENOMEM;
    if (h == NULL) goto fail_state;
    h->c = c;
    rc = ward__session_new(h, 1, &h->down);
    if (rc < 0) goto fail_down;
    rc = ward__session_new(h, 0, &h->up);
    if (rc < 0) goto fail_up;
    h->rst_t0 = h->win_t0 = h->ctrl_t0 = ward__now(h);
    c->cs = h;
    if (c->pre != NULL) {
        ward_chunk_t *k = c->pre;
        c->pre = NULL;
        if (k->len > k->off) ward__recv_down(h, (const uint8_t *)k->data + k->off, k->len - k->off);
        ward_pool_put(&c->w->pool, k);
    }
    ward__pump(c);
    return 0;

fail_up:
    nghttp2_session_del(h->down);
fail_down:
    ward_free(h);
fail_state:
    return rc;
}

static void ward__h2_on_io(ward_conn_t *c, ward_side_t *fired, int events)
{
    (void)events;
    if (c->cs == NULL) return;
    ward_side_readable(fired);
    ward__pump(c);
}

/* Graceful shutdown: GOAWAY with the last stream seen; in-flight streams finish, then the
 * connection closes (ward__down_finished). */
static void ward__h2_drain(ward_conn_t *c)
{
    ward_h2_t *h = c->cs;
    if (h == NULL) return;
    ward__goaway_down(h);
    ward__pump(c);
}

const ward_codec_t ward_codec_http2 = {
    .name = "http2",
    .start = ward__h2_start,
    .on_io = ward__h2_on_io,
    .drain = ward__h2_drain,
    .free = ward__h2_free,
};
