/* http1.c — the inbound HTTP/1.1 codec (ward_codec_http1). Between a peer (c->down: TLS from the
 * peer sidecar or an mTLS client) and the local app (c->up: plain, already connected) it parses
 * each request with llhttp, normalises its target (ward/path.h), asks the policy
 * (ward_conn_authorize) and then either forwards the request — request line re-serialised in
 * origin-form with the normalised target, head passed through except x-forwarded-client-cert,
 * which only the proxy sets, body streamed as received — or answers it itself (403 denied, 400
 * malformed or smuggling-shaped, 431 head too large, 405 CONNECT, 414 target too long, 502 app
 * gone). The app's responses go through a second llhttp parser for framing and status only and are
 * forwarded byte for byte. One exchange at a time: pipelined requests wait in the input until the
 * previous response is complete, so responses stay in order. A 101 answer to an Upgrade request
 * turns the connection into a raw tunnel.
 *
 * Phases (ward_h1_phase_t): HTTP (request state x response state, below) -> TUNNEL after a 101, or
 * -> FLUSH_CLOSE (last response going out) -> LINGER (our FIN sent; read and drop until the peer's
 * EOF so that closing cannot reset the response away) -> ward_conn_close.
 *
 * Ownership: conn.c owns the connection and both sockets; this file owns ward_h1_t (c->cs): two
 * input chunks, two output queues and the head being parsed. A chunk goes back to the worker's pool
 * as soon as it is empty and the head is freed once decided, so an idle keep-alive connection holds
 * no buffer.
 *
 * Strictness: llhttp is built in its loose mode (LLHTTP_STRICT_MODE unset), which accepts spaces
 * in header names and obs-fold continuation lines. Both are request-smuggling vectors, so they are
 * refused here (400 + close), as are duplicate Host headers, a Transfer-Encoding without a final
 * chunked, and any Transfer-Encoding in HTTP/1.0; everything else (CL+TE, duplicate Content-Length,
 * bad chunk framing, bare LF, control characters) llhttp refuses itself. No lenient flag is ever
 * set. */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <llhttp.h>

#include "conn.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/log.h"
#include "ward/path.h"

/* Stop reading a side while the queue toward the other side holds more than this. */
#define WARD_H1_HWM WARD_CHUNK_SIZE
/* Socket reads per side per wake-up; level-triggered polling brings a busy side back. Bytes TLS
 * has already buffered are always read (no poll event would announce them). */
#define WARD_H1_READ_BUDGET 16
/* A denied request's body up to this size is read and dropped to keep the connection. */
#define WARD_H1_DISCARD_MAX (1024 * 1024)
/* After our FIN: bytes read and dropped while waiting for the peer's EOF. */
#define WARD_H1_LINGER_MAX (256 * 1024)

typedef enum {
    WARD_H1_HTTP,        /* requests and responses */
    WARD_H1_TUNNEL,      /* after a 101: raw bytes both ways */
    WARD_H1_FLUSH_CLOSE, /* the last response is being flushed; then FIN */
    WARD_H1_LINGER       /* FIN sent: drop what the peer still sends until its EOF */
} ward_h1_phase_t;

typedef enum {
    WARD_H1_RQ_HEAD,    /* reading a request head (possibly none begun yet: idle) */
    WARD_H1_RQ_BODY,    /* forwarding the body to the app */
    WARD_H1_RQ_DISCARD, /* reading and dropping the body of a request we answered */
    WARD_H1_RQ_DONE     /* the request is complete; later bytes wait for the next exchange */
} ward_h1_req_t;

typedef enum {
    WARD_H1_RS_NONE,  /* no request outstanding */
    WARD_H1_RS_WAIT,  /* request forwarded; the app's response is awaited or being forwarded */
    WARD_H1_RS_LOCAL, /* we answered the request ourselves */
    WARD_H1_RS_DONE   /* the app's final response is complete */
} ward_h1_resp_t;

static const char *const ward__h1_phase_names[] = {"http", "tunnel", "flush_close", "linger"};
static const char *const ward__h1_req_names[] = {"head", "body", "discard", "done"};
static const char *const ward__h1_resp_names[] = {"none", "wait", "local", "done"};

/* Flag bits (ward_h1_t.flags); per-exchange ones are cleared between requests. */
enum {
    WARD_H1_F_DRAIN = 1u << 0,       /* drain(): no request after the current exchange */
    WARD_H1_F_CLOSE_AFTER = 1u << 1, /* close once the current response is out */
    WARD_H1_F_REQ_BEGUN = 1u << 2,   /* bytes of a request head have been parsed */
    WARD_H1_F_HEAD_DONE = 1u << 3,   /* request parser paused at the end of a head */
    WARD_H1_F_MSG_DONE = 1u << 4,    /* request parser paused at the end of a message */
    WARD_H1_F_REQ_CLOSE = 1u << 5,   /* the request does not allow another one after it */
    WARD_H1_F_UPGRADE = 1u << 6,     /* the request asks for a protocol upgrade */
    WARD_H1_F_UPGRADED = 1u << 7,    /* the app answered 101 */
    WARD_H1_F_RS_IN_MSG = 1u << 8,   /* response parser is inside a message */
    WARD_H1_F_RS_PARTIAL = 1u << 9,  /* bytes of an unfinished response message were queued */
    WARD_H1_F_RS_FINAL = 1u << 10,   /* response parser paused at the end of the final response */
    WARD_H1_F_EXCHANGE = 1u << 11,   /* a request head was complete: it must be counted */
    WARD_H1_F_COUNTED = 1u << 12,    /* ... and it has been */
    WARD_H1_F_UP_WDEAD = 1u << 13,   /* writing to the app failed: nothing more goes there */
    WARD_H1_F_SCAN_LF = 1u << 14,    /* the last head byte scanned was LF (obs-fold check) */
    WARD_H1_F_KICK = 1u << 15,       /* run the request parser even with no input (after resume) */
    WARD_H1_F_HEAD_REQ = 1u << 16,   /* the request's method is HEAD (no response body) */
};

#define WARD_H1_F_EXCHANGE_MASK                                                                    \
    (WARD_H1_F_REQ_BEGUN | WARD_H1_F_HEAD_DONE | WARD_H1_F_MSG_DONE | WARD_H1_F_REQ_CLOSE |        \
     WARD_H1_F_UPGRADE | WARD_H1_F_RS_IN_MSG | WARD_H1_F_RS_PARTIAL | WARD_H1_F_RS_FINAL |         \
     WARD_H1_F_EXCHANGE | WARD_H1_F_COUNTED | WARD_H1_F_SCAN_LF | WARD_H1_F_KICK |                 \
     WARD_H1_F_HEAD_REQ)

static const char *const ward__h1_flag_names[] = {
    "drain",   "close_after", "req_begun", "head_done",  "msg_done", "req_close",
    "upgrade", "upgraded",    "rs_in_msg", "rs_partial", "rs_final", "exchange",
    "counted", "up_wdead",    "scan_lf",   "kick",       "head_req"};

/* One header field of the request being parsed: offsets into ward_h1_head_t.buf. */
typedef struct {
    uint32_t name_off, name_len;
    uint32_t value_off, value_len;
} ward_h1_field_t;

/* The request head being parsed: the target, then names and values back to back in buf. */
typedef struct {
    char *buf;
    size_t len, cap;
    size_t url_len; /* the target is buf[0..url_len) */
    unsigned nfields;
    int in_field, in_value;
    ward_h1_field_t fields[WARD_HTTP_MAX_HEADERS];
} ward_h1_head_t;

typedef struct {
    llhttp_t rq; /* requests from c->down */
    llhttp_t rs; /* responses from c->up */
    ward_outq_t to_up, to_down;
    ward_chunk_t *in_down, *in_up; /* bytes read and not yet parsed */
    ward_h1_head_t *head;
    uint64_t up_queued; /* bytes ever queued toward the app */
    uint64_t req_mark;  /* up_queued before the current request's head */
    size_t head_bytes;  /* raw bytes of the current request head */
    size_t rs_head_bytes;
    size_t dropped; /* denied body bytes dropped, or bytes dropped while lingering */
    unsigned rs_fields;
    /* The exchange, for ward_conn_request_done: method, normalised target (owned), body bytes. */
    const char *method;
    char *target;
    size_t path_len;
    uint64_t bytes_in, bytes_out, start_ms;
    int denied;
    uint32_t flags;
    uint8_t phase, req, resp;
    /* A refusal decided inside a parser callback (the callback returns HPE_USER). status 0 means
     * out of memory. */
    unsigned fail_status;
    const char *fail_reason;
    const char *fail_detail;
    /* A callback refused (ward__h1_fail): llhttp reports that as HPE_USER from data callbacks
     * but as HPE_CB_* from the others, so the flag, not the errno, says whose error it is. */
    int failed;
    size_t trailer_name_len; /* bytes of the trailer field name parsed so far */
    int trailer_may_be_xfcc; /* ... and they are a prefix of x-forwarded-client-cert */
} ward_h1_t;

static int ward__h1_fail(ward_h1_t *h, unsigned status, const char *reason, const char *detail)
{
    h->failed = 1;
    h->fail_status = status;
    h->fail_reason = reason;
    h->fail_detail = detail;
    return HPE_USER;
}

/* Flag names for debug lines ("a|b|c"). */
static void ward__h1_flags_str(uint32_t flags, char *out, size_t cap)
{
    size_t len = 0;
    out[0] = '\0';
    for (size_t i = 0; i < sizeof(ward__h1_flag_names) / sizeof(ward__h1_flag_names[0]); i++) {
        if (!(flags & (1u << i))) continue;
        int n = snprintf(out + len, cap - len, "%s%s", len ? "|" : "", ward__h1_flag_names[i]);
        if (n < 0 || (size_t)n >= cap - len) break;
        len += (size_t)n;
    }
}

static void ward__h1_log_state(ward_logline_t *l, const ward_h1_t *h)
{
    char f[256];
    ward__h1_flags_str(h->flags, f, sizeof(f));
    ward_log_str(l, "h1_phase", ward__h1_phase_names[h->phase]);
    ward_log_str(l, "h1_request", ward__h1_req_names[h->req]);
    ward_log_str(l, "h1_response", ward__h1_resp_names[h->resp]);
    ward_log_str(l, "h1_flags", f);
}

/* --- parser callbacks: requests --------------------------------------------------------------- */

static int ward__h1_head_append(ward_h1_t *h, const char *at, size_t n)
{
    ward_h1_head_t *hd = h->head;
    if (n == 0) return 0; /* an empty target: nothing to copy (hd->buf may still be NULL) */
    if (hd->len + n > WARD_HTTP_MAX_HEADER_BYTES)
        return ward__h1_fail(h, 431, "header_too_large", "request head too large");
    if (hd->len + n > hd->cap) {
        size_t cap = hd->cap ? hd->cap : 1024;
        while (cap < hd->len + n)
            cap *= 2;
        char *nb = ward_realloc(hd->buf, cap);
        if (nb == NULL) return ward__h1_fail(h, 0, NULL, NULL);
        hd->buf = nb;
        hd->cap = cap;
    }
    memcpy(hd->buf + hd->len, at, n);
    hd->len += n;
    return 0;
}

static int ward__h1_rq_begin(llhttp_t *p)
{
    ward_h1_t *h = ((ward_conn_t *)p->data)->cs;
    h->flags |= WARD_H1_F_REQ_BEGUN;
    h->failed = 0;
    h->trailer_name_len = 0;
    h->trailer_may_be_xfcc = 0;
    ward_conn_head_timer(p->data, 1);
    if (h->head == NULL) {
        h->head = ward_malloc(sizeof(*h->head));
        if (h->head == NULL) return ward__h1_fail(h, 0, NULL, NULL);
        h->head->buf = NULL;
        h->head->cap = 0;
    }
    ward_h1_head_t *hd = h->head;
    hd->len = hd->url_len = 0;
    hd->nfields = 0;
    hd->in_field = hd->in_value = 0;
    return 0;
}

static int ward__h1_rq_url(llhttp_t *p, const char *at, size_t n)
{
    ward_h1_t *h = ((ward_conn_t *)p->data)->cs;
    if (h->head->url_len + n > WARD_PATH_MAX)
        return ward__h1_fail(h, 414, "bad_path", "request target too long");
    int r = ward__h1_head_append(h, at, n);
    if (r == 0) h->head->url_len += n;
    return r;
}

/* RFC 9110 tchar. */
static int ward__h1_tchar(unsigned char ch)
{
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9')) return 1;
    return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

static int ward__h1_rq_field(llhttp_t *p, const char *at, size_t n)
{
    ward_h1_t *h = ((ward_conn_t *)p->data)->cs;
    ward_h1_head_t *hd = h->head;
    if (h->req != WARD_H1_RQ_HEAD) {
        /* A trailer of a chunked body: forwarded raw, but its name must be a token too, and
         * never the verified-identity header (the app must not see a forged one there). The
         * name may arrive in pieces: compare the piece against the matching part of it. */
        static const char xfcc[] = WARD_XFCC_HEADER;
        for (size_t i = 0; i < n; i++)
            if (!ward__h1_tchar((unsigned char)at[i]))
                return ward__h1_fail(h, 400, "bad_request", "invalid character in trailer name");
        if (h->trailer_name_len < sizeof(xfcc) &&
            (h->trailer_name_len == 0 || h->trailer_may_be_xfcc)) {
            size_t off = h->trailer_name_len;
            h->trailer_may_be_xfcc =
                off + n <= sizeof(xfcc) - 1 && strncasecmp(at, xfcc + off, n) == 0;
        } else {
            h->trailer_may_be_xfcc = 0;
        }
        h->trailer_name_len += n;
        return 0;
    }
    if (!hd->in_field) {
        if (hd->nfields == WARD_HTTP_MAX_HEADERS)
            return ward__h1_fail(h, 431, "header_too_large", "too many header fields");
        ward_h1_field_t *f = &hd->fields[hd->nfields++];
        f->name_off = (uint32_t)hd->len;
        f->name_len = f->value_off = f->value_len = 0;
        hd->in_field = 1;
    }
    int r = ward__h1_head_append(h, at, n);
    if (r == 0) hd->fields[hd->nfields - 1].name_len += (uint32_t)n;
    return r;
}

static int ward__h1_rq_field_done(llhttp_t *p)
{
    ward_h1_t *h = ((ward_conn_t *)p->data)->cs;
    ward_h1_head_t *hd = h->head;
    if (h->req != WARD_H1_RQ_HEAD) {
        int xfcc = h->trailer_may_be_xfcc && h->trailer_name_len == sizeof(WARD_XFCC_HEADER) - 1;
        h->trailer_name_len = 0;
        h->trailer_may_be_xfcc = 0;
        if (xfcc)
            return ward__h1_fail(h, 400, "bad_request",
                                 "x-forwarded-client-cert is set by the proxy, not in trailers");
        return 0;
    }
    hd->in_field = 0;
    if (hd->nfields == 0) return 0;
    const ward_h1_field_t *f = &hd->fields[hd->nfields - 1];
    if (f->name_len == 0) return ward__h1_fail(h, 400, "bad_request", "empty header name");
    for (uint32_t i = 0; i < f->name_len; i++)
        if (!ward__h1_tchar((unsigned char)hd->buf[f->name_off + i]))
            return ward__h1_fail(h, 400, "bad_request", "invalid character in header name");
    return 0;
}

static int ward__h1_rq_value(llhttp_t *p, const char *at, size_t n)
{
    ward_h1_t *h = ((ward_conn_t *)p->data)->cs;
    ward_h1_head_t *hd = h->head;
    if (h->req != WARD_H1_RQ_HEAD || hd->nfields == 0) return 0;
    ward_h1_field_t *f = &hd->fields[hd->nfields - 1];
    if (!hd->in_value) {
        f->value_off = (uint32_t)hd->len;
        hd->in_value = 1;
    }
    int r = ward__h1_head_append(h, at, n);
    if (r == 0) f->value_len += (uint32_t)n;
    return r;
}

static int ward__h1_rq_value_done(llhttp_t *p)
{
    ward_h1_t *h = ((ward_conn_t *)p->data)->cs;
    ward_h1_head_t *hd = h->head;
    if (h->req != WARD_H1_RQ_HEAD) return 0;
    hd->in_value = 0;
    if (hd->nfields == 0) return 0;
    ward_h1_field_t *f = &hd->fields[hd->nfields - 1];
    /* llhttp drops leading whitespace, not trailing (RFC 9110 5.5: OWS is not part of the value).
     */
    while (f->value_len > 0 && (hd->buf[f->value_off + f->value_len - 1] == ' ' ||
                                hd->buf[f->value_off + f->value_len - 1] == '\t'))
        f->value_len--;
    return 0;
}

static int ward__h1_rq_headers_done(llhttp_t *p)
{
    ward_h1_t *h = ((ward_conn_t *)p->data)->cs;
    h->flags |= WARD_H1_F_HEAD_DONE;
    return HPE_PAUSED; /* decided in ward__h1_on_head, outside the parser */
}

static int ward__h1_rq_complete(llhttp_t *p)
{
    ward_h1_t *h = ((ward_conn_t *)p->data)->cs;
    h->flags |= WARD_H1_F_MSG_DONE;
    return HPE_PAUSED; /* the next request waits for this exchange to finish */
}

static const llhttp_settings_t ward__h1_rq_settings = {
    .on_message_begin = ward__h1_rq_begin,
    .on_url = ward__h1_rq_url,
    .on_header_field = ward__h1_rq_field,
    .on_header_value = ward__h1_rq_value,
    .on_headers_complete = ward__h1_rq_headers_done,
    .on_message_complete = ward__h1_rq_complete,
    .on_header_field_complete = ward__h1_rq_field_done,
    .on_header_value_complete = ward__h1_rq_value_done,
};

/* --- parser callbacks: responses -------------------------------------------------------------- */

static int ward__h1_rs_begin(llhttp_t *p)
{
    ward_h1_t *h = ((ward_conn_t *)p->data)->cs;
    h->flags |= WARD_H1_F_RS_IN_MSG;
    h->rs_head_bytes = 0;
    h->rs_fields = 0;
    return 0;
}

static int ward__h1_rs_span(llhttp_t *p, const char *at, size_t n)
{
    (void)at;
    ward_h1_t *h = ((ward_conn_t *)p->data)->cs;
    h->rs_head_bytes += n;
    if (h->rs_head_bytes > WARD_HTTP_MAX_HEADER_BYTES)
        return ward__h1_fail(h, 502, NULL, "response head too large");
    return 0;
}

static int ward__h1_rs_body(llhttp_t *p, const char *at, size_t n)
{
    (void)at;
    ward_h1_t *h = ((ward_conn_t *)p->data)->cs;
    h->bytes_out += n;
    return 0;
}

static int ward__h1_rs_field_done(llhttp_t *p)
{
    ward_h1_t *h = ((ward_conn_t *)p->data)->cs;
    if (++h->rs_fields > WARD_HTTP_MAX_HEADERS)
        return ward__h1_fail(h, 502, NULL, "too many response header fields");
    return 0;
}

static int ward__h1_rs_headers_done(llhttp_t *p)
{
    ward_h1_t *h = ((ward_conn_t *)p->data)->cs;
    unsigned status = p->status_code;
    if (status == 101 && !(h->flags & WARD_H1_F_UPGRADE))
        return ward__h1_fail(h, 502, NULL, "101 without an upgrade request");
    /* 1 = no body: the answer to HEAD (llhttp itself knows 1xx, 204 and 304). */
    return status >= 200 && (h->flags & WARD_H1_F_HEAD_REQ) ? 1 : 0;
}

static int ward__h1_rs_complete(llhttp_t *p)
{
    ward_h1_t *h = ((ward_conn_t *)p->data)->cs;
    unsigned status = p->status_code;
    h->flags &= ~(uint32_t)WARD_H1_F_RS_IN_MSG;
    if (status < 200 && status != 101) return 0; /* interim: forwarded, the final one follows */
    h->flags |= WARD_H1_F_RS_FINAL;
    if (status == 101)
        h->flags |= WARD_H1_F_UPGRADED;
    else if (!llhttp_should_keep_alive(p))
        h->flags |= WARD_H1_F_CLOSE_AFTER;
    return HPE_PAUSED;
}

static const llhttp_settings_t ward__h1_rs_settings = {
    .on_message_begin = ward__h1_rs_begin,
    .on_status = ward__h1_rs_span,
    .on_header_field = ward__h1_rs_span,
    .on_header_value = ward__h1_rs_span,
    .on_headers_complete = ward__h1_rs_headers_done,
    .on_body = ward__h1_rs_body,
    .on_message_complete = ward__h1_rs_complete,
    .on_header_field_complete = ward__h1_rs_field_done,
};

/* --- queues ----------------------------------------------------------------------------------- */

/* Queues n bytes from the front of *slot on q: the chunk itself when they are all it holds (no
 * copy; *slot becomes NULL), else a copy. Returns 0 or WARD_ENOMEM. */
static int ward__h1_queue(ward_conn_t *c, ward_outq_t *q, ward_chunk_t **slot, size_t n)
{
    ward_chunk_t *b = *slot;
    if (n == 0) return 0;
    if (n == b->len - b->off) {
        b->next = NULL;
        if (q->tail != NULL)
            q->tail->next = b;
        else
            q->head = b;
        q->tail = b;
        q->bytes += n;
        *slot = NULL;
        return 0;
    }
    int r = ward_outq_append(c, q, b->data + b->off, n);
    if (r == 0) b->off += n;
    return r;
}

/* Puts an input chunk back to the pool once it is empty. */
static void ward__h1_trim(ward_conn_t *c, ward_chunk_t **slot)
{
    if (*slot != NULL && (*slot)->off == (*slot)->len) {
        ward_pool_put(&c->w->pool, *slot);
        *slot = NULL;
    }
}

static void ward__h1_drop(ward_conn_t *c, ward_chunk_t **slot)
{
    ward_pool_put(&c->w->pool, *slot);
    *slot = NULL;
}

/* Counts and logs the exchange once (status 0: it ended without a response). */
static void ward__h1_count(ward_conn_t *c, ward_h1_t *h, unsigned status)
{
    if (h->flags & WARD_H1_F_COUNTED) return;
    h->flags |= WARD_H1_F_COUNTED;
    ward_request_log_t r = {0};
    r.method = h->method;
    r.path = h->target;
    r.path_len = h->path_len;
    r.status = status;
    r.bytes_in = h->bytes_in;
    r.bytes_out = h->bytes_out;
    r.start_ms = h->start_ms ? h->start_ms : uv_now(&c->w->loop);
    r.denied = h->denied;
    ward_conn_request_done(c, WARD_REQ_HTTP1, &r);
}

/* Forgets the exchange (after it was counted). */
static void ward__h1_exchange_reset(ward_h1_t *h)
{
    ward_free(h->target);
    h->target = NULL;
    h->method = NULL;
    h->path_len = 0;
    h->bytes_in = h->bytes_out = h->start_ms = 0;
    h->denied = 0;
}

static void ward__h1_log_refusal(ward_conn_t *c, ward_h1_t *h, unsigned status, const char *reason,
                                 const char *detail)
{
    ward_logline_t l;
    if (ward_log_begin(&l, WARD_LOG_WARN, "http1_request_refused")) {
        ward_conn_log_ctx(&l, c);
        ward_log_u64(&l, "status", status);
        ward_log_str(&l, "reason", reason);
        if (detail != NULL) ward_log_str(&l, "detail", detail);
        if (ward_log_enabled(WARD_LOG_DEBUG)) ward__h1_log_state(&l, h);
        ward_log_end(&l);
    }
}

static const char *ward__h1_status_text(unsigned status)
{
    switch (status) {
    case 400:
        return "Bad Request";
    case 403:
        return "Forbidden";
    case 405:
        return "Method Not Allowed";
    case 414:
        return "URI Too Long";
    case 431:
        return "Request Header Fields Too Large";
    case 502:
        return "Bad Gateway";
    default:
        return "Error";
    }
}

/* Answers the current request ourselves: status, `x-ward-deny-reason: reason` (when reason is not
 * NULL), a one-line text body (omitted for HEAD), `connection: close` and the end of the
 * connection once it is flushed when close. The caller has checked that no response bytes of this
 * exchange are on their way. Returns 0, or -1 when the connection was closed (out of memory). */
static int ward__h1_reply(ward_conn_t *c, ward_h1_t *h, unsigned status, const char *reason,
                          const char *body, int close)
{
    char head[512];
    int blen = (int)strlen(body);
    int n =
        snprintf(head, sizeof(head),
                 "HTTP/1.1 %u %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n%s%s%s"
                 "%s\r\n",
                 status, ward__h1_status_text(status), blen, reason ? "x-ward-deny-reason: " : "",
                 reason ? reason : "", reason ? "\r\n" : "", close ? "connection: close\r\n" : "");
    if (n < 0 || (size_t)n >= sizeof(head) ||
        ward_outq_append(c, &h->to_down, head, (size_t)n) < 0 ||
        (!(h->flags & WARD_H1_F_HEAD_REQ) &&
         ward_outq_append(c, &h->to_down, body, (size_t)blen) < 0)) {
        ward_conn_close(c, 1);
        return -1;
    }
    h->resp = WARD_H1_RS_LOCAL;
    if (close) h->flags |= WARD_H1_F_CLOSE_AFTER;
    if (!(h->flags & WARD_H1_F_HEAD_REQ)) h->bytes_out = (uint64_t)blen;
    ward__h1_count(c, h, status);
    return 0;
}

/* Refuses the request whose head is being read or was just read: 400/414/431 + close, logged. */
static int ward__h1_refuse(ward_conn_t *c, ward_h1_t *h, unsigned status, const char *reason,
                           const char *detail)
{
    char body[256];
    ward__h1_log_refusal(c, h, status, reason, detail);
    snprintf(body, sizeof(body), "%s: %s\n", reason, detail ? detail : "malformed request");
    h->req = WARD_H1_RQ_DONE;
    h->flags |= WARD_H1_F_EXCHANGE;
    if (h->start_ms == 0) h->start_ms = uv_now(&c->w->loop);
    return ward__h1_reply(c, h, status, reason, body, 1);
}

/* --- request heads ---------------------------------------------------------------------------- */

static int ward__h1_name_is(const ward_h1_head_t *hd, const ward_h1_field_t *f, const char *name)
{
    size_t n = strlen(name);
    return f->name_len == n && strncasecmp(hd->buf + f->name_off, name, n) == 0;
}

/* ward_authz_header_fn over the parsed head. */
static const char *ward__h1_header(void *ctx, const char *name, size_t name_len, size_t index,
                                   size_t *value_len)
{
    const ward_h1_head_t *hd = ((ward_h1_t *)ctx)->head;
    for (unsigned i = 0; i < hd->nfields; i++) {
        const ward_h1_field_t *f = &hd->fields[i];
        if (f->name_len != name_len || strncasecmp(hd->buf + f->name_off, name, name_len) != 0)
            continue;
        if (index-- > 0) continue;
        *value_len = f->value_len;
        return hd->buf + f->value_off;
    }
    return NULL;
}

/* Appends n bytes to the chunk being built (out, *len) — the caller sized it. */
static void ward__h1_put(char *out, size_t *len, const char *s, size_t n)
{
    memcpy(out + *len, s, n);
    *len += n;
}

/* Queues the request head toward the app: "METHOD target HTTP/x.y", the caller's fields except
 * x-forwarded-client-cert (and Host when the target was absolute-form: authority replaces it),
 * then our x-forwarded-client-cert. Returns 0 or WARD_ENOMEM. */
static int ward__h1_forward_head(ward_conn_t *c, ward_h1_t *h, const char *target, size_t tlen,
                                 const char *authority, size_t alen)
{
    static const char xfcc_name[] = WARD_XFCC_HEADER;
    const ward_h1_head_t *hd = h->head;
    const char *method = llhttp_method_name((llhttp_method_t)h->rq.method);
    const char *xfcc = ward_conn_xfcc(c);
    /* A verified peer whose header cannot be built (out of memory): fail closed rather than let
     * the app see an authenticated caller as anonymous. */
    if (xfcc == NULL && c->peer.peer_id != NULL) return WARD_ENOMEM;
    size_t mlen = strlen(method), xlen = xfcc ? strlen(xfcc) : 0;
    size_t size = mlen + 1 + tlen + 11 + 2;
    for (unsigned i = 0; i < hd->nfields; i++) {
        const ward_h1_field_t *f = &hd->fields[i];
        if (ward__h1_name_is(hd, f, xfcc_name) || (authority && ward__h1_name_is(hd, f, "host")))
            continue;
        size += f->name_len + 2 + f->value_len + 2;
    }
    if (authority) size += 6 + alen + 2;
    if (xfcc) size += sizeof(xfcc_name) - 1 + 2 + xlen + 2;

    ward_chunk_t *b = NULL;
    char *out;
    if (size <= WARD_CHUNK_SIZE) {
        b = ward_pool_get(&c->w->pool);
        if (b == NULL) return WARD_ENOMEM;
        out = b->data;
    } else {
        out = ward_malloc(size);
        if (out == NULL) return WARD_ENOMEM;
    }
    size_t len = 0;
    char version[16];
    snprintf(version, sizeof(version), " HTTP/%u.%u\r\n", h->rq.http_major % 10,
             h->rq.http_minor % 10);
    ward__h1_put(out, &len, method, mlen);
    ward__h1_put(out, &len, " ", 1);
    ward__h1_put(out, &len, target, tlen);
    ward__h1_put(out, &len, version, 11);
    if (authority) {
        ward__h1_put(out, &len, "host: ", 6);
        ward__h1_put(out, &len, authority, alen);
        ward__h1_put(out, &len, "\r\n", 2);
    }
    for (unsigned i = 0; i < hd->nfields; i++) {
        const ward_h1_field_t *f = &hd->fields[i];
        if (ward__h1_name_is(hd, f, xfcc_name) || (authority && ward__h1_name_is(hd, f, "host")))
            continue;
        ward__h1_put(out, &len, hd->buf + f->name_off, f->name_len);
        ward__h1_put(out, &len, ": ", 2);
        ward__h1_put(out, &len, hd->buf + f->value_off, f->value_len);
        ward__h1_put(out, &len, "\r\n", 2);
    }
    if (xfcc) {
        ward__h1_put(out, &len, xfcc_name, sizeof(xfcc_name) - 1);
        ward__h1_put(out, &len, ": ", 2);
        ward__h1_put(out, &len, xfcc, xlen);
        ward__h1_put(out, &len, "\r\n", 2);
    }
    ward__h1_put(out, &len, "\r\n", 2);

    int r = 0;
    if (b != NULL) {
        b->off = 0;
        b->len = len;
        r = ward__h1_queue(c, &h->to_up, &b, len);
    } else {
        r = ward_outq_append(c, &h->to_up, out, len);
        ward_free(out);
    }
    if (r == 0) h->up_queued += len;
    return r;
}

/* The authority of an absolute-form target ("http://host:port/..."), or NULL for origin-form.
 * *bad is set when it is empty or carries userinfo. */
static const char *ward__h1_authority(const char *url, size_t len, size_t *alen, int *bad)
{
    *bad = 0;
    if (len == 0 || url[0] == '/' || len == 1) return NULL;
    const char *s = memchr(url, ':', len);
    if (s == NULL || (size_t)(url + len - s) < 3 || s[1] != '/' || s[2] != '/') return NULL;
    const char *a = s + 3, *end = url + len, *e = a;
    while (e < end && *e != '/' && *e != '?' && *e != '#')
        e++;
    *alen = (size_t)(e - a);
    if (*alen == 0 || memchr(a, '@', *alen) != NULL) *bad = 1;
    return a;
}

/* The request parser paused at the end of a head: refuse, deny, or forward it. Returns 0 or -1
 * when the connection was closed. */
static int ward__h1_on_head(ward_conn_t *c, ward_h1_t *h)
{
    ward_h1_head_t *hd = h->head;
    llhttp_t *p = &h->rq;
    unsigned method = p->method;
    int chunked = (p->flags & F_CHUNKED) != 0;
    int has_body = chunked || p->content_length > 0;
    int expect_continue = 0, hosts = 0;
    char body[512];
    int r, rc;

    ward_conn_head_timer(c, 0); /* the head is in */
    h->flags |= WARD_H1_F_EXCHANGE;
    h->method = llhttp_method_name((llhttp_method_t)method);
    h->start_ms = uv_now(&c->w->loop);
    if (method == HTTP_HEAD) h->flags |= WARD_H1_F_HEAD_REQ;
    if (!llhttp_should_keep_alive(p)) h->flags |= WARD_H1_F_REQ_CLOSE;
    if (p->upgrade) h->flags |= WARD_H1_F_UPGRADE;

    if (method == HTTP_CONNECT) {
        h->req = WARD_H1_RQ_DONE;
        return ward__h1_reply(c, h, 405, "method_not_allowed", "CONNECT is not supported\n", 1);
    }
    /* An upgrade turns the rest of the connection into a tunnel that no request-level decision
     * sees. WebSocket carries messages, not requests, and is decided once here; any other
     * upgrade (h2c above all: HTTP/2 requests inside the tunnel would bypass every rule) is
     * refused. */
    if (h->flags & WARD_H1_F_UPGRADE) {
        size_t ul = 0;
        const char *up = ward__h1_header(h, "upgrade", 7, 0, &ul);
        if (up == NULL || ul != 9 || strncasecmp(up, "websocket", 9) != 0 ||
            ward__h1_header(h, "upgrade", 7, 1, &ul) != NULL) {
            h->req = WARD_H1_RQ_DONE;
            return ward__h1_reply(c, h, 400, "upgrade_refused",
                                  "only WebSocket upgrades pass the mesh (for HTTP/2, send it "
                                  "with prior knowledge)\n",
                                  1);
        }
    }
    for (unsigned i = 0; i < hd->nfields; i++) {
        const ward_h1_field_t *f = &hd->fields[i];
        if (ward__h1_name_is(hd, f, "host")) hosts++;
        if (ward__h1_name_is(hd, f, "expect") && f->value_len == 12 &&
            strncasecmp(hd->buf + f->value_off, "100-continue", 12) == 0)
            expect_continue = 1;
    }
    if (hosts > 1) return ward__h1_refuse(c, h, 400, "bad_request", "more than one Host header");
    if (hosts == 0 && p->http_major == 1 && p->http_minor >= 1)
        return ward__h1_refuse(c, h, 400, "bad_request", "missing Host header");
    if ((p->flags & F_TRANSFER_ENCODING) && !chunked)
        return ward__h1_refuse(c, h, 400, "bad_request", "Transfer-Encoding without chunked");
    /* RFC 9112 6.1: HTTP/1.0 with Transfer-Encoding is faulty framing (a 1.0 app may ignore it). */
    if ((p->flags & F_TRANSFER_ENCODING) && p->http_major == 1 && p->http_minor == 0)
        return ward__h1_refuse(c, h, 400, "bad_request", "Transfer-Encoding in HTTP/1.0");

    /* Could the body of a request we answer ourselves be read and dropped, keeping the
     * connection? Not after "Expect: 100-continue" (the client may or may not send it), not for
     * an upgrade (what follows may be another protocol), not for an oversized body. */
    int keep = !expect_continue && !(h->flags & (WARD_H1_F_REQ_CLOSE | WARD_H1_F_UPGRADE)) &&
               (!has_body || chunked || p->content_length <= WARD_H1_DISCARD_MAX);

    /* Target: normalised for matching and forwarding ("OPTIONS *" as it is). */
    size_t ulen = hd->url_len, cap = ulen + 2;
    char *norm = ward_malloc(2 * cap);
    if (norm == NULL) {
        ward_conn_close(c, 1);
        return -1;
    }
    char *key = norm + cap;
    ward_path_result_t pr = {0};
    size_t alen = 0;
    int bad_authority = 0;
    const char *authority = ward__h1_authority(hd->buf, ulen, &alen, &bad_authority);
    if (method == HTTP_OPTIONS && ulen == 1 && hd->buf[0] == '*') {
        norm[0] = '*';
        norm[1] = '\0';
        pr.len = pr.path_len = 1;
        rc = 0;
    } else if (bad_authority) {
        rc = WARD_EINVAL;
        pr.why = "bad authority in absolute-form target";
    } else {
        rc = ward_path_normalize(hd->buf, ulen, norm, cap, &pr);
    }
    unsigned status;
    const char *reason;
    if (rc < 0) {
        const char *why = pr.why ? pr.why : ward_strerror(rc);
        status = rc == WARD_ETOOLONG ? 414 : 400;
        reason = "bad_path";
        ward__h1_log_refusal(c, h, status, reason, why);
        snprintf(body, sizeof(body), "bad_path: %s\n", why);
        ward_free(norm);
        goto answer;
    }
    size_t klen = ward_path_match_key(norm, pr.path_len, key, cap);
    h->target = norm; /* kept for the access log until the exchange ends */
    h->path_len = pr.path_len;

    ward_authz_request_t areq = {0};
    ward_authz_result_t res = {0};
    areq.method = llhttp_method_name((llhttp_method_t)method);
    areq.path = key;
    areq.path_len = klen;
    areq.header = ward__h1_header;
    areq.header_ctx = h;
    if (ward_conn_authorize(c, &areq, &res) != WARD_AUTHZ_ALLOW) {
        status = 403;
        h->denied = 1;
        reason = res.reason ? res.reason : "denied";
        if (res.policy != NULL)
            snprintf(body, sizeof(body), "ward: denied by policy: %s (policy %s)\n", reason,
                     res.policy);
        else
            snprintf(body, sizeof(body), "ward: denied by policy: %s\n", reason);
        goto answer;
    }
    if ((h->flags & WARD_H1_F_UP_WDEAD) || (c->up.flags & WARD_SF_RD_EOF)) {
        /* The app has already closed this connection. */
        h->req = WARD_H1_RQ_DONE;
        return ward__h1_reply(c, h, 502, NULL, "upstream connection closed\n", 1);
    }

    h->req_mark = h->up_queued;
    r = ward__h1_forward_head(c, h, norm, pr.len, authority, alen);
    if (r < 0) {
        ward_conn_close(c, 1);
        return -1;
    }
    llhttp_reset(&h->rs);
    h->flags &= ~(uint32_t)(WARD_H1_F_RS_IN_MSG | WARD_H1_F_RS_PARTIAL | WARD_H1_F_RS_FINAL);
    h->req = WARD_H1_RQ_BODY;
    h->resp = WARD_H1_RS_WAIT;
    return 0;

answer:
    if (ward__h1_reply(c, h, status, reason, body, !keep) < 0) return -1;
    h->req = keep ? WARD_H1_RQ_DISCARD : WARD_H1_RQ_DONE;
    return 0;
}

/* --- request side ----------------------------------------------------------------------------- */

/* Scans raw head bytes for an obs-fold (a line starting with SP/HT). Returns 1 if found. */
static int ward__h1_scan_head(ward_h1_t *h, const char *p, size_t n)
{
    int lf = (h->flags & WARD_H1_F_SCAN_LF) != 0;
    for (size_t i = 0; i < n; i++) {
        if (lf && (p[i] == ' ' || p[i] == '\t')) return 1;
        lf = p[i] == '\n';
    }
    if (lf)
        h->flags |= WARD_H1_F_SCAN_LF;
    else
        h->flags &= ~(uint32_t)WARD_H1_F_SCAN_LF;
    return 0;
}

/* A parse error (or a refusal from a callback) in the request. Answers 400 (or the callback's
 * status) + close when nothing of a response is on its way; else ends the connection. */
static int ward__h1_bad_request(ward_conn_t *c, ward_h1_t *h, llhttp_errno_t e)
{
    if (h->failed && h->fail_status == 0) {
        ward_conn_close(c, 1); /* out of memory */
        return -1;
    }
    unsigned status = h->failed ? h->fail_status : 400;
    const char *reason = h->failed ? h->fail_reason : "bad_request";
    const char *detail = h->failed ? h->fail_detail : llhttp_get_error_reason(&h->rq);
    if (detail == NULL) detail = llhttp_errno_name(e);
    if (h->req == WARD_H1_RQ_DISCARD || (h->req == WARD_H1_RQ_BODY && h->resp == WARD_H1_RS_DONE)) {
        /* Already answered: end the connection once the answer is out. */
        ward__h1_log_refusal(c, h, status, reason, detail);
        ward_outq_clear(c, &h->to_up);
        h->flags |= WARD_H1_F_UP_WDEAD | WARD_H1_F_CLOSE_AFTER;
        h->req = WARD_H1_RQ_DONE;
        return 1;
    }
    if (h->req == WARD_H1_RQ_BODY) {
        /* The head went to the app. If it has seen nothing of this request yet (the error came in
         * the bytes read with the head), drop what is queued: it sees nothing at all. */
        uint64_t written = h->up_queued - h->to_up.bytes;
        if (written <= h->req_mark && h->to_up.bytes == h->up_queued - h->req_mark) {
            ward_outq_clear(c, &h->to_up);
            h->up_queued = h->req_mark;
        }
        if (h->flags & WARD_H1_F_RS_PARTIAL) {
            ward__h1_log_refusal(c, h, status, reason, detail);
            ward_conn_close(c, 1);
            return -1;
        }
        h->flags |= WARD_H1_F_UP_WDEAD;
        ward_outq_clear(c, &h->to_up);
    }
    return ward__h1_refuse(c, h, status, reason, detail);
}

/* Runs the request parser over in_down as far as the exchange allows. Returns 1 on progress, 0
 * without, -1 when the connection was closed. */
static int ward__h1_feed_request(ward_conn_t *c, ward_h1_t *h)
{
    static const char none[1] = "";
    int progress = 0;
    while (h->phase == WARD_H1_HTTP) {
        size_t n = ward_chunk_pending(h->in_down);
        if (n == 0 && !(h->flags & WARD_H1_F_KICK)) break;
        if (h->req == WARD_H1_RQ_DONE) break;
        if (h->req == WARD_H1_RQ_BODY && h->to_up.bytes >= WARD_H1_HWM) break;
        h->flags &= ~(uint32_t)WARD_H1_F_KICK;
        const char *p = n ? h->in_down->data + h->in_down->off : none;
        llhttp_errno_t e = llhttp_execute(&h->rq, p, n);
        size_t used = n;
        if (e != HPE_OK) {
            const char *ep = llhttp_get_error_pos(&h->rq);
            used = ep != NULL && ep >= p && ep <= p + n ? (size_t)(ep - p) : 0;
        }
        progress = 1;
        int r = 0;
        switch (h->req) {
        case WARD_H1_RQ_HEAD:
            h->head_bytes += used;
            if (ward__h1_scan_head(h, p, used))
                return ward__h1_refuse(c, h, 400, "bad_request", "obs-fold in header") < 0 ? -1 : 1;
            if (h->head_bytes > WARD_HTTP_MAX_HEADER_BYTES)
                return ward__h1_refuse(c, h, 431, "header_too_large", "request head too large") < 0
                           ? -1
                           : 1;
            if (n) h->in_down->off += used;
            break;
        case WARD_H1_RQ_BODY:
            if (used && !(h->flags & WARD_H1_F_UP_WDEAD)) {
                r = ward__h1_queue(c, &h->to_up, &h->in_down, used);
                if (r < 0) {
                    ward_conn_close(c, 1);
                    return -1;
                }
                h->up_queued += used;
            } else if (n) {
                h->in_down->off += used;
            }
            h->bytes_in += used;
            break;
        case WARD_H1_RQ_DISCARD:
            h->dropped += used;
            h->bytes_in += used;
            if (n) h->in_down->off += used;
            break;
        default:
            break;
        }
        if (h->in_down != NULL) ward__h1_trim(c, &h->in_down);
        if (e == HPE_OK) continue;
        if (e != HPE_PAUSED) return ward__h1_bad_request(c, h, e) < 0 ? -1 : 1;
        llhttp_resume(&h->rq);
        if (h->flags & WARD_H1_F_HEAD_DONE) {
            h->flags &= ~(uint32_t)WARD_H1_F_HEAD_DONE;
            h->flags |= WARD_H1_F_KICK; /* a body-less request completes with no more input */
            if (ward__h1_on_head(c, h) < 0) return -1;
            if (h->head != NULL) {
                ward_free(h->head->buf);
                ward_free(h->head);
                h->head = NULL;
            }
        } else if (h->flags & WARD_H1_F_MSG_DONE) {
            h->flags &= ~(uint32_t)WARD_H1_F_MSG_DONE;
            if (h->req != WARD_H1_RQ_DONE) h->req = WARD_H1_RQ_DONE;
        }
        if (h->req == WARD_H1_RQ_DISCARD && h->dropped > WARD_H1_DISCARD_MAX) {
            h->flags |= WARD_H1_F_CLOSE_AFTER;
            h->req = WARD_H1_RQ_DONE;
        }
    }
    if (h->req == WARD_H1_RQ_DISCARD && h->dropped > WARD_H1_DISCARD_MAX) {
        h->flags |= WARD_H1_F_CLOSE_AFTER;
        h->req = WARD_H1_RQ_DONE;
    }
    return progress;
}

/* The client ended its sending. */
static int ward__h1_down_eof(ward_conn_t *c, ward_h1_t *h)
{
    switch (h->req) {
    case WARD_H1_RQ_HEAD:
        if (h->flags & WARD_H1_F_REQ_BEGUN) {
            ward_conn_close(c, 0); /* a partial head: nothing to answer */
            return -1;
        }
        h->phase = WARD_H1_FLUSH_CLOSE; /* between requests: a clean end */
        return 1;
    case WARD_H1_RQ_BODY:
        ward_conn_close(c, 1); /* truncated body: the app must not take it as complete */
        return -1;
    default:
        h->req = WARD_H1_RQ_DONE;
        h->flags |= WARD_H1_F_CLOSE_AFTER;
        return 1;
    }
}

/* --- response side ---------------------------------------------------------------------------- */

/* The app's connection failed or ended before its final response was complete: 502 when nothing
 * of a response went out, else the connection ends. */
static int ward__h1_up_failed(ward_conn_t *c, ward_h1_t *h, const char *why)
{
    ward_logline_t l;
    if (ward_log_begin(&l, WARD_LOG_WARN, "http1_upstream_failed")) {
        ward_conn_log_ctx(&l, c);
        ward_log_str(&l, "detail", why);
        if (ward_log_enabled(WARD_LOG_DEBUG)) ward__h1_log_state(&l, h);
        ward_log_end(&l);
    }
    if (h->flags & WARD_H1_F_RS_PARTIAL) {
        ward__h1_count(c, h, 0);
        ward_conn_close(c, 1);
        return -1;
    }
    ward_outq_clear(c, &h->to_up);
    ward__h1_drop(c, &h->in_up);
    h->flags |= WARD_H1_F_UP_WDEAD;
    h->req = WARD_H1_RQ_DONE;
    return ward__h1_reply(c, h, 502, NULL, "upstream connection failed\n", 1) < 0 ? -1 : 1;
}

static int ward__h1_bad_response(ward_conn_t *c, ward_h1_t *h, llhttp_errno_t e)
{
    const char *detail = h->failed ? h->fail_detail : llhttp_get_error_reason(&h->rs);
    if (h->failed && h->fail_status == 0) {
        ward_conn_close(c, 1);
        return -1;
    }
    return ward__h1_up_failed(c, h, detail ? detail : llhttp_errno_name(e));
}

/* Bytes from the app that no request asked for: it is out of step; drop them and end the
 * connection after the current exchange (now, when there is none). */
static void ward__h1_unsolicited(ward_conn_t *c, ward_h1_t *h)
{
    ward__h1_drop(c, &h->in_up);
    h->flags |= WARD_H1_F_CLOSE_AFTER | WARD_H1_F_UP_WDEAD;
    if (h->req == WARD_H1_RQ_HEAD && h->resp == WARD_H1_RS_NONE &&
        !(h->flags & WARD_H1_F_REQ_BEGUN))
        h->phase = WARD_H1_FLUSH_CLOSE;
}

/* The final response is complete. */
static void ward__h1_response_done(ward_conn_t *c, ward_h1_t *h)
{
    h->resp = WARD_H1_RS_DONE;
    ward__h1_count(c, h, h->rs.status_code);
    if (!(h->flags & WARD_H1_F_UPGRADED) && ward_chunk_pending(h->in_up) > 0)
        ward__h1_unsolicited(c, h);
}

/* Runs the response parser over in_up; parsed bytes go to the client unchanged. */
static int ward__h1_feed_response(ward_conn_t *c, ward_h1_t *h)
{
    int progress = 0;
    while (h->phase == WARD_H1_HTTP && ward_chunk_pending(h->in_up) > 0) {
        if (h->resp != WARD_H1_RS_WAIT) {
            if (h->resp == WARD_H1_RS_DONE && (h->flags & WARD_H1_F_UPGRADED)) break;
            ward__h1_unsolicited(c, h);
            return 1;
        }
        if (h->to_down.bytes >= WARD_H1_HWM) break;
        ward_chunk_t *in = h->in_up;
        const char *p = in->data + in->off;
        size_t n = in->len - in->off;
        llhttp_errno_t e = llhttp_execute(&h->rs, p, n);
        size_t used = n;
        if (e != HPE_OK) {
            if (e != HPE_PAUSED) return ward__h1_bad_response(c, h, e);
            const char *ep = llhttp_get_error_pos(&h->rs);
            used = ep != NULL && ep >= p && ep <= p + n ? (size_t)(ep - p) : n;
        }
        progress = 1;
        if (ward__h1_queue(c, &h->to_down, &h->in_up, used) < 0) {
            ward_conn_close(c, 1);
            return -1;
        }
        if (used > 0) {
            if (h->flags & WARD_H1_F_RS_IN_MSG)
                h->flags |= WARD_H1_F_RS_PARTIAL;
            else
                h->flags &= ~(uint32_t)WARD_H1_F_RS_PARTIAL;
        }
        ward__h1_trim(c, &h->in_up);
        if (e == HPE_PAUSED) ward__h1_response_done(c, h);
    }
    return progress;
}

/* The app ended its sending (eof) or its connection failed. */
static int ward__h1_up_eof(ward_conn_t *c, ward_h1_t *h, int failed)
{
    if (h->resp == WARD_H1_RS_WAIT) {
        if (!failed && ward_chunk_pending(h->in_up) == 0) {
            /* A body delimited by the end of the connection completes now. */
            llhttp_errno_t e = llhttp_finish(&h->rs);
            if (e == HPE_PAUSED || (h->flags & WARD_H1_F_RS_FINAL)) {
                ward__h1_response_done(c, h);
                h->flags |= WARD_H1_F_CLOSE_AFTER;
                return 1;
            }
        }
        return ward__h1_up_failed(c, h,
                                  failed ? "upstream connection reset"
                                         : "upstream closed before the response ended");
    }
    ward_outq_clear(c, &h->to_up);
    h->flags |= WARD_H1_F_UP_WDEAD;
    if (h->req == WARD_H1_RQ_HEAD && !(h->flags & WARD_H1_F_REQ_BEGUN) &&
        h->resp == WARD_H1_RS_NONE) {
        h->phase = WARD_H1_FLUSH_CLOSE; /* the app closed an idle connection */
        return 1;
    }
    h->flags |= WARD_H1_F_CLOSE_AFTER;
    return 1;
}

/* --- driving ---------------------------------------------------------------------------------- */

static int ward__h1_can_read_down(const ward_conn_t *c, const ward_h1_t *h)
{
    if (c->down.flags & WARD_SF_RD_EOF) return 0;
    switch (h->phase) {
    case WARD_H1_HTTP:
        if (ward_chunk_pending(h->in_down) > 0) return 0;
        switch (h->req) {
        case WARD_H1_RQ_HEAD:
            return h->to_down.bytes < WARD_H1_HWM;
        case WARD_H1_RQ_BODY:
            return h->to_up.bytes < WARD_H1_HWM;
        case WARD_H1_RQ_DISCARD:
            return 1;
        default:
            return 0;
        }
    case WARD_H1_TUNNEL:
        return ward_chunk_pending(h->in_down) == 0 && h->to_up.bytes < WARD_H1_HWM;
    case WARD_H1_LINGER:
        return 1;
    default:
        return 0;
    }
}

static int ward__h1_can_read_up(const ward_conn_t *c, const ward_h1_t *h)
{
    if (c->up.flags & WARD_SF_RD_EOF) return 0;
    if (h->phase != WARD_H1_HTTP && h->phase != WARD_H1_TUNNEL) return 0;
    if (ward_chunk_pending(h->in_up) > 0) return 0;
    if (h->phase == WARD_H1_TUNNEL || h->resp == WARD_H1_RS_WAIT)
        return h->to_down.bytes < WARD_H1_HWM;
    if (h->resp == WARD_H1_RS_DONE && (h->flags & WARD_H1_F_UPGRADED)) return 0;
    return 1; /* idle: notice the app closing (or talking out of turn) */
}

static int ward__h1_may_read(const ward_side_t *s, int budget)
{
    return ward_side_buffered(s) || (budget > 0 && !ward_side_drained(s));
}

/* One read from s into *slot. Returns > 0 bytes, WARD_IO_EOF, WARD_IO_WANT_*, WARD_IO_ERROR or
 * WARD_ENOMEM. */
static ssize_t ward__h1_read(ward_conn_t *c, ward_side_t *s, ward_chunk_t **slot)
{
    ward_chunk_t *b = *slot;
    if (b == NULL) {
        b = ward_pool_get(&c->w->pool);
        if (b == NULL) return WARD_ENOMEM;
    }
    b->off = b->len = 0;
    ssize_t n = ward_side_read(s, b->data, WARD_CHUNK_SIZE);
    if (n > 0) {
        b->len = (size_t)n;
        *slot = b;
        s->flags |= WARD_SF_GOT_BYTES;
        ward_conn_touch(c);
        return n;
    }
    ward_pool_put(&c->w->pool, b);
    *slot = NULL;
    if (n == WARD_IO_EOF) s->flags |= WARD_SF_RD_EOF;
    return n;
}

static int ward__h1_flush(ward_conn_t *c, ward_h1_t *h)
{
    int progress = 0;
    if (h->to_up.bytes > 0) {
        size_t before = h->to_up.bytes;
        int r = ward_outq_flush(c, &h->to_up, &c->up, WARD_FLOW_TO_UPSTREAM);
        progress |= h->to_up.bytes != before;
        if (r == WARD_IO_ERROR) {
            if (h->phase != WARD_H1_HTTP) {
                ward_conn_close(c, 1);
                return -1;
            }
            /* The app stopped reading; its response may still be on its way. */
            ward_outq_clear(c, &h->to_up);
            h->flags |= WARD_H1_F_UP_WDEAD | WARD_H1_F_CLOSE_AFTER;
            if (h->req == WARD_H1_RQ_BODY) h->req = WARD_H1_RQ_DONE;
            progress = 1;
        }
    }
    if (h->to_down.bytes > 0) {
        size_t before = h->to_down.bytes;
        int r = ward_outq_flush(c, &h->to_down, &c->down, WARD_FLOW_TO_DOWNSTREAM);
        progress |= h->to_down.bytes != before;
        if (r == WARD_IO_ERROR) {
            ward_conn_close(c, 1);
            return -1;
        }
    }
    return progress;
}

/* Starts the next exchange, the tunnel, or the close once both halves of this one are done. */
static int ward__h1_exchange_step(ward_conn_t *c, ward_h1_t *h)
{
    if (h->resp != WARD_H1_RS_DONE && h->resp != WARD_H1_RS_LOCAL) return 0;
    if (h->resp == WARD_H1_RS_DONE && (h->flags & WARD_H1_F_UPGRADED)) {
        if (h->req != WARD_H1_RQ_DONE) return 0;
        h->phase = WARD_H1_TUNNEL;
        /* What the client sent after its upgrade request, what the app sent after its 101. */
        size_t n = ward_chunk_pending(h->in_down);
        if (n && ward__h1_queue(c, &h->to_up, &h->in_down, n) < 0) goto nomem;
        n = ward_chunk_pending(h->in_up);
        if (n && ward__h1_queue(c, &h->to_down, &h->in_up, n) < 0) goto nomem;
        return 1;
    }
    if (h->flags & WARD_H1_F_CLOSE_AFTER) {
        h->phase = WARD_H1_FLUSH_CLOSE;
        return 1;
    }
    if (h->req != WARD_H1_RQ_DONE) return 0;
    if (h->flags & (WARD_H1_F_DRAIN | WARD_H1_F_REQ_CLOSE)) {
        h->phase = WARD_H1_FLUSH_CLOSE;
        return 1;
    }
    h->req = WARD_H1_RQ_HEAD;
    h->resp = WARD_H1_RS_NONE;
    h->flags &= ~(uint32_t)WARD_H1_F_EXCHANGE_MASK;
    h->head_bytes = h->dropped = 0;
    ward__h1_exchange_reset(h);
    llhttp_reset(&h->rq);
    return 1;
nomem:
    ward_conn_close(c, 1);
    return -1;
}

static int ward__h1_step_http(ward_conn_t *c, ward_h1_t *h, int *budget_down, int *budget_up)
{
    int progress = 0, r;
    if ((r = ward__h1_feed_response(c, h)) < 0) return -1;
    progress |= r;
    if (h->phase == WARD_H1_HTTP && ward__h1_can_read_up(c, h) &&
        ward__h1_may_read(&c->up, *budget_up)) {
        --*budget_up;
        ssize_t n = ward__h1_read(c, &c->up, &h->in_up);
        if (n > 0) {
            progress = 1;
        } else if (n == WARD_IO_EOF || n == WARD_IO_ERROR) {
            if ((r = ward__h1_up_eof(c, h, n == WARD_IO_ERROR)) < 0) return -1;
            progress = 1;
        } else if (n == WARD_ENOMEM) {
            ward_conn_close(c, 1);
            return -1;
        }
    }
    if (h->phase != WARD_H1_HTTP) return progress;
    if ((r = ward__h1_exchange_step(c, h)) < 0) return -1;
    progress |= r;
    if ((r = ward__h1_feed_request(c, h)) < 0) return -1;
    progress |= r;
    if (h->phase == WARD_H1_HTTP && ward__h1_can_read_down(c, h) &&
        ward__h1_may_read(&c->down, *budget_down)) {
        --*budget_down;
        ssize_t n = ward__h1_read(c, &c->down, &h->in_down);
        if (n > 0) {
            progress = 1;
        } else if (n == WARD_IO_EOF) {
            if ((r = ward__h1_down_eof(c, h)) < 0) return -1;
            progress = 1;
        } else if (n == WARD_IO_ERROR || n == WARD_ENOMEM) {
            ward_conn_close(c, 1);
            return -1;
        }
    }
    return progress;
}

/* Ends our writing toward s once the other side's bytes are all out. Returns 1 when it changed
 * something, 0, or -1 when the connection was closed. */
static int ward__h1_shutdown(ward_conn_t *c, ward_side_t *s)
{
    if (s->flags & WARD_SF_WR_SHUT) return 0;
    int r = ward_side_shutdown(s);
    if (r == WARD_IO_ERROR) {
        ward_conn_close(c, 1);
        return -1;
    }
    return r == 0;
}

static int ward__h1_step_tunnel(ward_conn_t *c, ward_h1_t *h, int *budget_down, int *budget_up)
{
    int progress = 0, r;
    ward_side_t *sides[2] = {&c->down, &c->up};
    ward_chunk_t **in[2] = {&h->in_down, &h->in_up};
    ward_outq_t *out[2] = {&h->to_up, &h->to_down};
    int *budget[2] = {budget_down, budget_up};
    for (int i = 0; i < 2; i++) {
        size_t n = ward_chunk_pending(*in[i]);
        if (n > 0 && out[i]->bytes < WARD_H1_HWM) {
            if (ward__h1_queue(c, out[i], in[i], n) < 0) {
                ward_conn_close(c, 1);
                return -1;
            }
            progress = 1;
        }
        if (*in[i] == NULL && out[i]->bytes < WARD_H1_HWM && !(sides[i]->flags & WARD_SF_RD_EOF) &&
            ward__h1_may_read(sides[i], *budget[i])) {
            --*budget[i];
            ssize_t got = ward__h1_read(c, sides[i], in[i]);
            if (got > 0 || got == WARD_IO_EOF) {
                progress = 1;
            } else if (got == WARD_IO_ERROR || got == WARD_ENOMEM) {
                ward_conn_close(c, 1);
                return -1;
            }
        }
    }
    /* Half-close: an EOF from one side becomes our FIN toward the other once its bytes are out. */
    for (int i = 0; i < 2; i++) {
        ward_side_t *dst = sides[1 - i];
        if ((sides[i]->flags & WARD_SF_RD_EOF) && *in[i] == NULL && out[i]->bytes == 0) {
            if ((r = ward__h1_shutdown(c, dst)) < 0) return -1;
            progress |= r;
        }
    }
    if ((c->down.flags & c->up.flags & (WARD_SF_RD_EOF | WARD_SF_WR_SHUT)) ==
        (WARD_SF_RD_EOF | WARD_SF_WR_SHUT)) {
        ward_conn_close(c, 0);
        return -1;
    }
    return progress;
}

static int ward__h1_step_close(ward_conn_t *c, ward_h1_t *h, int *budget_down)
{
    int r;
    if (h->phase == WARD_H1_FLUSH_CLOSE) {
        ward_outq_clear(c, &h->to_up);
        ward__h1_drop(c, &h->in_up);
        ward__h1_drop(c, &h->in_down);
        if (h->to_down.bytes > 0) return 0;
        if ((r = ward__h1_shutdown(c, &c->down)) < 0) return -1;
        if (!(c->down.flags & WARD_SF_WR_SHUT)) return r;
        h->phase = WARD_H1_LINGER;
        h->dropped = 0;
    }
    /* LINGER: our FIN is out; read and drop until the client's EOF, so that closing with unread
     * bytes cannot turn into a reset that destroys the response before the client reads it. */
    if (c->down.flags & WARD_SF_RD_EOF) {
        ward_conn_close(c, 0);
        return -1;
    }
    if (!ward__h1_may_read(&c->down, *budget_down)) return 0;
    --*budget_down;
    ssize_t n = ward__h1_read(c, &c->down, &h->in_down);
    if (n > 0) {
        h->dropped += (size_t)n;
        ward__h1_drop(c, &h->in_down);
        if (h->dropped <= WARD_H1_LINGER_MAX) return 1;
    } else if (n == WARD_IO_WANT_READ || n == WARD_IO_WANT_WRITE) {
        return 0;
    }
    ward_conn_close(c, 0);
    return -1;
}

static void ward__h1_set_events(ward_conn_t *c, ward_h1_t *h)
{
    int rd_down = ward__h1_can_read_down(c, h);
    int wr_down = h->to_down.bytes > 0;
    int rd_up = ward__h1_can_read_up(c, h);
    int wr_up = h->to_up.bytes > 0;
    ward_side_set_events(&c->down, ward_side_wanted(&c->down, rd_down, wr_down));
    ward_side_set_events(&c->up, ward_side_wanted(&c->up, rd_up, wr_up));
}

/* Moves everything that can move, then waits for the poll events that let it move more. */
static void ward__h1_run(ward_conn_t *c)
{
    ward_h1_t *h = c->cs;
    int budget_down = WARD_H1_READ_BUDGET, budget_up = WARD_H1_READ_BUDGET;
    for (;;) {
        int progress = ward__h1_flush(c, h), r;
        if (progress < 0) return;
        switch (h->phase) {
        case WARD_H1_HTTP:
            r = ward__h1_step_http(c, h, &budget_down, &budget_up);
            break;
        case WARD_H1_TUNNEL:
            r = ward__h1_step_tunnel(c, h, &budget_down, &budget_up);
            break;
        default:
            r = ward__h1_step_close(c, h, &budget_down);
            break;
        }
        if (r < 0) return;
        if (!(progress | r)) break;
    }
    ward__h1_set_events(c, h);
}

/* --- codec ------------------------------------------------------------------------------------ */

static int ward__h1_start(ward_conn_t *c)
{
    ward_h1_t *h = ward_calloc(1, sizeof(*h));
    if (h == NULL) return WARD_ENOMEM;
    llhttp_init(&h->rq, HTTP_REQUEST, &ward__h1_rq_settings);
    llhttp_init(&h->rs, HTTP_RESPONSE, &ward__h1_rs_settings);
    h->rq.data = c;
    h->rs.data = c;
    c->cs = h;
    if (c->pre != NULL) {
        h->in_down = c->pre;
        c->pre = NULL;
        ward__h1_trim(c, &h->in_down);
    }
    ward__h1_run(c);
    return 0;
}

static void ward__h1_on_io(ward_conn_t *c, ward_side_t *fired, int events)
{
    if ((events & (UV_READABLE | UV_DISCONNECT)) ||
        ((events & UV_WRITABLE) && (fired->flags & WARD_SF_RD_WANT_W)))
        ward_side_readable(fired);
    ward__h1_run(c);
}

static void ward__h1_drain(ward_conn_t *c)
{
    ward_h1_t *h = c->cs;
    if (h == NULL) return;
    h->flags |= WARD_H1_F_DRAIN;
    if (h->phase == WARD_H1_HTTP && h->req == WARD_H1_RQ_HEAD && h->resp == WARD_H1_RS_NONE &&
        !(h->flags & WARD_H1_F_REQ_BEGUN) && ward_chunk_pending(h->in_down) == 0)
        h->phase = WARD_H1_FLUSH_CLOSE;
    ward__h1_run(c);
}

static void ward__h1_free(ward_conn_t *c)
{
    ward_h1_t *h = c->cs;
    if (h == NULL) return;
    /* A request that ended without a final response is counted as such. */
    if ((h->flags & WARD_H1_F_EXCHANGE) && !(h->flags & WARD_H1_F_COUNTED)) ward__h1_count(c, h, 0);
    ward__h1_exchange_reset(h);
    ward_pool_put(&c->w->pool, h->in_down);
    ward_pool_put(&c->w->pool, h->in_up);
    ward_outq_clear(c, &h->to_up);
    ward_outq_clear(c, &h->to_down);
    if (h->head != NULL) {
        ward_free(h->head->buf);
        ward_free(h->head);
    }
    ward_free(h);
    c->cs = NULL;
}

const ward_codec_t ward_codec_http1 = {
    .name = "http1",
    .start = ward__h1_start,
    .on_io = ward__h1_on_io,
    .drain = ward__h1_drain,
    .free = ward__h1_free,
};
