/* webhook.c — ward-agent's admission webhook listener (see webhook.h).
 *
 * Each connection is a uv_poll_t on a non-blocking socket with a BoringSSL session on it (lib/tls
 * reads and writes the fd itself, as the agent's gRPC listener does) and goes through
 *   HANDSHAKE -> READ (llhttp, body collected) -> WRITE (the whole response) -> READ ... -> closed
 * One timer per connection: the handshake and each request must complete within
 * WARD_WEBHOOK_REQUEST_MS of their first byte; between requests a connection may idle for
 * WARD_WEBHOOK_IDLE_MS. Memory is freed in the close callback of the last handle. */
#include "webhook.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <llhttp.h>

#include "ward/alloc.h"
#include "ward/buf.h"
#include "ward/err.h"
#include "ward/log.h"
#include "ward/tls.h"

#define WARD_WH_READ        16384
#define WARD_WH_MAX_HEADERS 16384 /* bytes of header names and values per request */
#define WARD_WH_MAX_URL     1024
#define WARD_WH_RELOAD_MS   10000 /* how often the certificate files are checked */
#define WARD_WH_ROUNDS      16    /* reads per poll event before yielding to the loop */
/* Request bodies held by all connections together; beyond it a request is shed (503). */
#define WARD_WH_MAX_BUFFERED (32u << 20)
/* A body buffer up to this size is kept for the connection's next request; larger is freed. */
#define WARD_WH_KEEP_BODY 65536

typedef enum { WH_HANDSHAKE, WH_READ, WH_WRITE } ward_wh_state_t;

/* Why a request was refused (metric label). */
enum {
    WH_ERR_BAD_REVIEW,
    WH_ERR_BAD_REQUEST,
    WH_ERR_NOT_FOUND,
    WH_ERR_METHOD,
    WH_ERR_MEDIA_TYPE,
    WH_ERR_TOO_LARGE,
    WH_ERR_TIMEOUT,
    WH_ERR_TLS,
    WH_ERR_INTERNAL,
    WH_ERR_BUSY,
    WH_ERR_COUNT
};
static const char *const ward__wh_err_names[WH_ERR_COUNT] = {
    "bad_review", "bad_request", "not_found", "method",   "media_type",
    "too_large",  "timeout",     "tls",       "internal", "busy"};

/* Decisions (metric label), as ward_inject_review_info_t names them. */
static const char *const ward__wh_decisions[] = {"injected",     "already_injected", "disabled",
                                                 "host_network", "not_injectable",   "ignored"};
#define WH_NDECISIONS (sizeof(ward__wh_decisions) / sizeof(ward__wh_decisions[0]))

typedef struct ward_wh_conn ward_wh_conn_t;

struct ward_webhook {
    uv_loop_t *loop;
    uv_poll_t listen_poll;
    uv_timer_t retry;  /* resumes accepting after running out of descriptors */
    uv_timer_t reload; /* checks the certificate files */
    int fd;
    int handles; /* of the three above still open */
    int stopping;
    ward_identity_t *id; /* the serving certificate new connections get */
    char *cert_file, *key_file;
    struct stat cert_st, key_st; /* as last loaded */
    const ward_injector_t *inj;
    ward_pool_t pool; /* TLS receive chunks */
    ward_wh_conn_t *conns;
    uint64_t nconns, next_id;
    size_t buffered; /* sum of the connections' body buffers */
    uint64_t accepted, refused_busy, reloads_ok, reloads_failed;
    uint64_t decisions[WH_NDECISIONS];
    uint64_t errors[WH_ERR_COUNT];
};

struct ward_wh_conn {
    uv_poll_t poll;
    uv_timer_t timer;
    int handles;
    int closing;
    ward_webhook_t *w;
    ward_wh_conn_t *prev, *next;
    uint64_t id;
    int fd;
    SSL *ssl;
    ward_identity_t *ident; /* the certificate this connection's SSL uses (a reference) */
    ward_tls_io_t io;
    ward_tls_peer_t peer;
    ward_wh_state_t state;
    int events;
    llhttp_t parser;
    llhttp_settings_t settings;
    int in_message; /* bytes of a request have arrived */
    int complete;   /* a whole request is parsed */
    int error;      /* a WH_ERR_* to answer with instead of routing, or -1 */
    char url[WARD_WH_MAX_URL];
    size_t url_len;
    char field[32]; /* the header name being read (truncated; only Content-Type matters) */
    size_t field_len;
    int field_ctype;
    char ctype[128];
    size_t ctype_len;
    size_t header_bytes;
    char *body;
    size_t body_len, body_cap;
    char in[WARD_WH_READ]; /* received, not yet parsed (after a pause at a message's end) */
    size_t in_off, in_len;
    char *out; /* the response */
    size_t out_off, out_len;
    int close_after; /* close once the response is out */
};

static void ward__wh_on_io(uv_poll_t *h, int status, int events);
static void ward__wh_read(ward_wh_conn_t *c);

/* ---- lifetime ------------------------------------------------------------------------------ */

static void ward__wh_maybe_free(ward_webhook_t *w)
{
    if (!w->stopping || w->handles > 0 || w->conns != NULL) return;
    ward_identity_unref(w->id);
    ward_free(w->cert_file);
    ward_free(w->key_file);
    ward_pool_destroy(&w->pool);
    ward_free(w);
}

static void ward__wh_conn_closed(uv_handle_t *h)
{
    ward_wh_conn_t *c = h->data;
    if (--c->handles > 0) return;
    ward_webhook_t *w = c->w;
    w->buffered -= c->body_cap;
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    w->nconns--;
    ward_free(c->body);
    ward_free(c->out);
    ward_free(c);
    ward__wh_maybe_free(w);
}

static void ward__wh_close(ward_wh_conn_t *c, const char *why)
{
    if (c->closing) return;
    c->closing = 1;
    ward_logline_t l;
    if (ward_log_begin(&l, WARD_LOG_DEBUG, "webhook_conn_closed")) {
        ward_log_u64(&l, "conn", c->id);
        ward_log_str(&l, "reason", why);
        ward_log_end(&l);
    }
    if (c->ssl) {
        ward_tls_free(c->ssl);
        ward_tls_io_release(&c->io);
        c->ssl = NULL;
    }
    ward_tls_peer_reset(&c->peer);
    ward_identity_unref(c->ident);
    c->ident = NULL;
    uv_poll_stop(&c->poll);
    uv_close((uv_handle_t *)&c->poll, ward__wh_conn_closed);
    uv_close((uv_handle_t *)&c->timer, ward__wh_conn_closed);
    close(c->fd);
    c->fd = -1;
}

static void ward__wh_events(ward_wh_conn_t *c, int ev)
{
    if (c->closing || ev == c->events) return;
    c->events = ev;
    uv_poll_start(&c->poll, ev, ward__wh_on_io);
}

static void ward__wh_timeout(uv_timer_t *t)
{
    ward_wh_conn_t *c = t->data;
    if (c->state == WH_HANDSHAKE || c->in_message || c->state == WH_WRITE)
        c->w->errors[WH_ERR_TIMEOUT]++;
    ward__wh_close(c, c->in_message || c->state != WH_READ ? "request timeout" : "idle");
}

/* ---- HTTP ---------------------------------------------------------------------------------- */

static void ward__wh_reset_request(ward_wh_conn_t *c)
{
    c->in_message = 0;
    c->complete = 0;
    c->error = -1;
    c->url_len = 0;
    c->field_len = 0;
    c->field_ctype = 0;
    c->ctype_len = 0;
    c->header_bytes = 0;
    c->body_len = 0;
    if (c->body_cap > WARD_WH_KEEP_BODY) {
        c->w->buffered -= c->body_cap;
        ward_free(c->body);
        c->body = NULL;
        c->body_cap = 0;
    }
    ward_free(c->out);
    c->out = NULL;
    c->out_off = c->out_len = 0;
}

static int ward__wh_on_begin(llhttp_t *p)
{
    ward_wh_conn_t *c = p->data;
    c->in_message = 1;
    uv_timer_start(&c->timer, ward__wh_timeout, WARD_WEBHOOK_REQUEST_MS, 0);
    return 0;
}

static int ward__wh_on_url(llhttp_t *p, const char *at, size_t len)
{
    ward_wh_conn_t *c = p->data;
    if (c->url_len + len >= sizeof(c->url)) {
        c->error = WH_ERR_BAD_REQUEST;
        return HPE_USER;
    }
    memcpy(c->url + c->url_len, at, len);
    c->url_len += len;
    return 0;
}

static int ward__wh_count_header(ward_wh_conn_t *c, size_t len)
{
    c->header_bytes += len;
    if (c->header_bytes <= WARD_WH_MAX_HEADERS) return 0;
    c->error = WH_ERR_BAD_REQUEST;
    return HPE_USER;
}

static int ward__wh_on_field(llhttp_t *p, const char *at, size_t len)
{
    ward_wh_conn_t *c = p->data;
    size_t room = sizeof(c->field) - 1 - c->field_len;
    size_t n = len < room ? len : room;
    memcpy(c->field + c->field_len, at, n);
    c->field_len += n;
    return ward__wh_count_header(c, len);
}

static int ward__wh_on_field_done(llhttp_t *p)
{
    ward_wh_conn_t *c = p->data;
    c->field[c->field_len] = '\0';
    c->field_ctype = strcasecmp(c->field, "content-type") == 0;
    if (c->field_ctype) c->ctype_len = 0;
    c->field_len = 0;
    return 0;
}

static int ward__wh_on_value(llhttp_t *p, const char *at, size_t len)
{
    ward_wh_conn_t *c = p->data;
    if (c->field_ctype) {
        size_t room = sizeof(c->ctype) - 1 - c->ctype_len;
        size_t n = len < room ? len : room;
        memcpy(c->ctype + c->ctype_len, at, n);
        c->ctype_len += n;
        c->ctype[c->ctype_len] = '\0';
    }
    return ward__wh_count_header(c, len);
}

static int ward__wh_on_body(llhttp_t *p, const char *at, size_t len)
{
    ward_wh_conn_t *c = p->data;
    if (c->body_len + len > WARD_WEBHOOK_MAX_BODY) {
        c->error = WH_ERR_TOO_LARGE;
        return HPE_USER;
    }
    if (c->body_len + len > c->body_cap) {
        size_t cap = c->body_cap ? c->body_cap : 16384;
        while (cap < c->body_len + len)
            cap *= 2;
        if (cap > WARD_WEBHOOK_MAX_BODY) cap = WARD_WEBHOOK_MAX_BODY;
        if (c->w->buffered - c->body_cap + cap > WARD_WH_MAX_BUFFERED) {
            c->error = WH_ERR_BUSY; /* many large requests at once: shed this one */
            return HPE_USER;
        }
        char *nb = ward_realloc(c->body, cap);
        if (nb == NULL) {
            c->error = WH_ERR_INTERNAL;
            return HPE_USER;
        }
        c->w->buffered += cap - c->body_cap;
        c->body = nb;
        c->body_cap = cap;
    }
    memcpy(c->body + c->body_len, at, len);
    c->body_len += len;
    return 0;
}

static int ward__wh_on_complete(llhttp_t *p)
{
    ward_wh_conn_t *c = p->data;
    c->complete = 1;
    return HPE_PAUSED;
}

/* Queues a response; the connection switches to WRITE. */
static void ward__wh_respond(ward_wh_conn_t *c, int status, const char *ctype, const char *body,
                             size_t blen)
{
    const char *reason = status == 200   ? "OK"
                         : status == 400 ? "Bad Request"
                         : status == 404 ? "Not Found"
                         : status == 405 ? "Method Not Allowed"
                         : status == 408 ? "Request Timeout"
                         : status == 413 ? "Content Too Large"
                         : status == 415 ? "Unsupported Media Type"
                         : status == 503 ? "Service Unavailable"
                                         : "Internal Server Error";
    ward_strbuf_t b = {0};
    if (ward_strbuf_printf(&b,
                           "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                           "Cache-Control: no-store\r\n%s%s\r\n",
                           status, reason, ctype, blen, status == 405 ? "Allow: POST\r\n" : "",
                           c->close_after ? "Connection: close\r\n" : "") < 0 ||
        (blen > 0 && ward_strbuf_printf(&b, "%.*s", (int)blen, body) < 0)) {
        ward_strbuf_free(&b);
        ward__wh_close(c, "out of memory");
        return;
    }
    ward_free(c->out);
    c->out = b.data;
    c->out_len = b.len;
    c->out_off = 0;
    c->state = WH_WRITE;
}

static void ward__wh_respond_error(ward_wh_conn_t *c, int err, const char *detail)
{
    static const int status[WH_ERR_COUNT] = {400, 400, 404, 405, 415, 413, 408, 400, 500, 503};
    char msg[700];
    int n = snprintf(msg, sizeof(msg), "%s%s%s\n",
                     err == WH_ERR_BAD_REVIEW   ? "bad AdmissionReview"
                     : err == WH_ERR_NOT_FOUND  ? "not found: POST an AdmissionReview to /inject"
                     : err == WH_ERR_METHOD     ? "only POST"
                     : err == WH_ERR_MEDIA_TYPE ? "the body must be application/json"
                     : err == WH_ERR_TOO_LARGE  ? "request body larger than 2 MiB"
                     : err == WH_ERR_INTERNAL   ? "internal error"
                     : err == WH_ERR_BUSY       ? "busy: too many large requests at once"
                                                : "bad request",
                     detail ? ": " : "", detail ? detail : "");
    if (n < 0 || (size_t)n >= sizeof(msg)) n = (int)strlen(msg);
    c->w->errors[err]++;
    /* After a framing error the stream cannot be trusted to continue. */
    if (err != WH_ERR_BAD_REVIEW && err != WH_ERR_NOT_FOUND && err != WH_ERR_METHOD &&
        err != WH_ERR_MEDIA_TYPE)
        c->close_after = 1;
    ward__wh_respond(c, status[err], "text/plain; charset=utf-8", msg, (size_t)n);
}

static void ward__wh_log_review(ward_wh_conn_t *c, const ward_inject_review_info_t *info,
                                int status, const char *err)
{
    ward_logline_t l;
    ward_log_level_t lvl = status != 200 ? WARD_LOG_WARN : WARD_LOG_INFO;
    if (!ward_log_begin(&l, lvl, "admission_review")) return;
    ward_log_u64(&l, "conn", c->id);
    ward_log_u64(&l, "status", (uint64_t)status);
    if (info->uid[0]) ward_log_str(&l, "uid", info->uid);
    if (info->namespace_[0]) ward_log_str(&l, "namespace", info->namespace_);
    if (info->name[0]) ward_log_str(&l, "pod", info->name);
    if (status == 200) ward_log_str(&l, "decision", info->decision);
    if (info->reason[0]) ward_log_str(&l, "reason", info->reason);
    if (err != NULL) ward_log_str(&l, "error", err);
    ward_log_end(&l);
}

/* A whole request is in: answer it. */
static void ward__wh_route(ward_wh_conn_t *c)
{
    ward_webhook_t *w = c->w;
    c->close_after = !llhttp_should_keep_alive(&c->parser);
    if (c->error >= 0) {
        ward__wh_respond_error(c, c->error, NULL);
        return;
    }
    c->url[c->url_len] = '\0';
    char *q = strchr(c->url, '?'); /* the API server adds ?timeout=10s */
    if (q) *q = '\0';
    if (strcmp(c->url, "/inject") != 0) {
        ward__wh_respond_error(c, WH_ERR_NOT_FOUND, NULL);
        return;
    }
    if (llhttp_get_method(&c->parser) != HTTP_POST) {
        ward__wh_respond_error(c, WH_ERR_METHOD, NULL);
        return;
    }
    if (c->ctype_len > 0 && strncasecmp(c->ctype, "application/json", 16) != 0) {
        ward__wh_respond_error(c, WH_ERR_MEDIA_TYPE, NULL);
        return;
    }
    ward_strbuf_t resp = {0};
    ward_inject_review_info_t info;
    char err[512];
    int rc = ward_inject_review(w->inj, c->body ? c->body : "", c->body_len, &resp, &info, err,
                                sizeof(err));
    if (rc == 0) {
        for (size_t i = 0; i < WH_NDECISIONS; i++)
            if (strcmp(info.decision, ward__wh_decisions[i]) == 0) w->decisions[i]++;
        ward__wh_log_review(c, &info, 200, NULL);
        ward__wh_respond(c, 200, "application/json", resp.data, resp.len);
    } else if (rc == WARD_ENOMEM) {
        ward__wh_log_review(c, &info, 500, "out of memory");
        ward__wh_respond_error(c, WH_ERR_INTERNAL, NULL);
    } else {
        ward__wh_log_review(c, &info, 400, err);
        ward__wh_respond_error(c, WH_ERR_BAD_REVIEW, err);
    }
    ward_strbuf_free(&resp);
}

/* ---- I/O ----------------------------------------------------------------------------------- */

static void ward__wh_write(ward_wh_conn_t *c)
{
    if (c->closing) return;
    while (c->out_off < c->out_len) {
        ssize_t n = ward_tls_write(c->ssl, c->out + c->out_off, c->out_len - c->out_off);
        if (n == WARD_IO_WANT_WRITE || n == WARD_IO_WANT_READ) {
            ward__wh_events(c, n == WARD_IO_WANT_WRITE ? UV_WRITABLE : UV_READABLE);
            return;
        }
        if (n <= 0) {
            ward__wh_close(c, "write failed");
            return;
        }
        c->out_off += (size_t)n;
    }
    if (c->close_after) {
        ward_tls_shutdown(c->ssl); /* best effort: close_notify if the socket takes it */
        ward__wh_close(c, "response sent");
        return;
    }
    /* Keep-alive: ready for the next request, which may already be waiting. */
    ward__wh_reset_request(c);
    llhttp_resume(&c->parser);
    c->state = WH_READ;
    uv_timer_start(&c->timer, ward__wh_timeout, WARD_WEBHOOK_IDLE_MS, 0);
    if (c->in_off < c->in_len || ward_tls_buffered(c->ssl, &c->io))
        ward__wh_read(c);
    else
        ward__wh_events(c, UV_READABLE);
}

/* Feeds received bytes to the parser; answers when a request is complete or broken. Returns 1
 * when the connection switched to WRITE. */
static int ward__wh_parse(ward_wh_conn_t *c)
{
    const char *start = c->in + c->in_off;
    size_t n = c->in_len - c->in_off;
    llhttp_errno_t e = llhttp_execute(&c->parser, start, n);
    if (e == HPE_OK) {
        c->in_off = c->in_len = 0;
        return 0;
    }
    if (e == HPE_PAUSED && c->complete) {
        const char *pos = llhttp_get_error_pos(&c->parser);
        c->in_off = pos ? (size_t)(pos - c->in) : c->in_len;
        if (c->in_off > c->in_len) c->in_off = c->in_len;
        ward__wh_route(c);
        return 1;
    }
    c->in_off = c->in_len = 0;
    c->close_after = 1;
    ward__wh_respond_error(c, c->error >= 0 ? c->error : WH_ERR_BAD_REQUEST,
                           c->error >= 0 ? NULL : llhttp_get_error_reason(&c->parser));
    return 1;
}

static void ward__wh_read(ward_wh_conn_t *c)
{
    for (int round = 0; round < WARD_WH_ROUNDS && !c->closing; round++) {
        if (c->in_off < c->in_len) {
            if (ward__wh_parse(c)) {
                ward__wh_write(c);
                return;
            }
            continue;
        }
        ssize_t n = ward_tls_read(c->ssl, c->in, sizeof(c->in));
        if (n == WARD_IO_WANT_READ || n == WARD_IO_WANT_WRITE) {
            ward__wh_events(c, n == WARD_IO_WANT_READ ? UV_READABLE : UV_WRITABLE);
            return;
        }
        if (n <= 0) {
            ward__wh_close(c, n == 0 ? "peer closed the connection" : "read failed");
            return;
        }
        c->in_off = 0;
        c->in_len = (size_t)n;
    }
    /* More may be waiting inside the SSL where no poll event announces it: come back soon. */
    if (!c->closing) ward__wh_events(c, UV_READABLE | UV_WRITABLE);
}

static void ward__wh_handshake(ward_wh_conn_t *c)
{
    ward_tls_reason_t reason;
    const char *detail = NULL;
    int r = ward_tls_handshake(c->ssl, &c->peer, &reason, &detail);
    if (r == WARD_IO_WANT_READ || r == WARD_IO_WANT_WRITE) {
        ward__wh_events(c, r == WARD_IO_WANT_READ ? UV_READABLE : UV_WRITABLE);
        return;
    }
    if (r != 1) {
        c->w->errors[WH_ERR_TLS]++;
        ward__wh_close(c, detail ? detail : "TLS handshake failed");
        return;
    }
    c->state = WH_READ;
    ward__wh_read(c);
}

static void ward__wh_on_io(uv_poll_t *h, int status, int events)
{
    ward_wh_conn_t *c = h->data;
    if (status < 0) {
        ward__wh_close(c, "socket error");
        return;
    }
    switch (c->state) {
    case WH_HANDSHAKE:
        ward__wh_handshake(c);
        break;
    case WH_READ:
        ward__wh_read(c);
        break;
    case WH_WRITE:
        ward__wh_write(c);
        break;
    }
}

/* ---- accepting ----------------------------------------------------------------------------- */

static void ward__wh_accept_one(ward_webhook_t *w, int fd)
{
    if (w->nconns >= WARD_WEBHOOK_MAX_CONNS) {
        w->refused_busy++;
        close(fd);
        return;
    }
    ward_wh_conn_t *c = ward_calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return;
    }
    c->w = w;
    c->fd = fd;
    c->id = ++w->next_id;
    c->error = -1;
    c->io.fd = fd;
    c->io.pool = &w->pool;
    c->peer.alpn = "http/1.1";
    c->peer.no_client_auth = 1;
    c->ident = ward_identity_ref(w->id);
    c->ssl = ward_tls_new(c->ident, 1, &c->io, &c->peer);
    if (c->ssl == NULL || uv_poll_init(w->loop, &c->poll, fd) < 0) {
        if (c->ssl) ward_tls_free(c->ssl);
        ward_identity_unref(c->ident);
        ward_free(c);
        close(fd);
        return;
    }
    uv_timer_init(w->loop, &c->timer);
    c->poll.data = c->timer.data = c;
    c->handles = 2;
    c->next = w->conns;
    if (w->conns) w->conns->prev = c;
    w->conns = c;
    w->nconns++;
    w->accepted++;
    llhttp_settings_init(&c->settings);
    c->settings.on_message_begin = ward__wh_on_begin;
    c->settings.on_url = ward__wh_on_url;
    c->settings.on_header_field = ward__wh_on_field;
    c->settings.on_header_field_complete = ward__wh_on_field_done;
    c->settings.on_header_value = ward__wh_on_value;
    c->settings.on_body = ward__wh_on_body;
    c->settings.on_message_complete = ward__wh_on_complete;
    llhttp_init(&c->parser, HTTP_REQUEST, &c->settings);
    c->parser.data = c;
    c->state = WH_HANDSHAKE;
    uv_timer_start(&c->timer, ward__wh_timeout, WARD_WEBHOOK_REQUEST_MS, 0);
    ward__wh_handshake(c);
}

static void ward__wh_on_accept(uv_poll_t *h, int status, int events);

static void ward__wh_resume_accept(uv_timer_t *t)
{
    ward_webhook_t *w = t->data;
    if (!w->stopping) uv_poll_start(&w->listen_poll, UV_READABLE, ward__wh_on_accept);
}

static void ward__wh_on_accept(uv_poll_t *h, int status, int events)
{
    ward_webhook_t *w = h->data;
    for (int i = 0; i < 64 && status == 0 && !w->stopping; i++) {
        int fd = accept4(w->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            ward__wh_accept_one(w, fd);
            continue;
        }
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            ward_log_msg(WARD_LOG_WARN, "accept_paused", "webhook accept: %s; retrying in 100 ms",
                         strerror(errno));
            uv_poll_stop(&w->listen_poll);
            uv_timer_start(&w->retry, ward__wh_resume_accept, 100, 0);
        }
        return;
    }
}

/* ---- certificate --------------------------------------------------------------------------- */

static int ward__wh_same_file(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

int ward_webhook_reload(ward_webhook_t *w, char *err, size_t errlen)
{
    struct stat cs, ks;
    ward_identity_t *next = NULL;
    /* stat first: a file replaced between the stat and the read is seen again next time */
    if (stat(w->cert_file, &cs) != 0 || stat(w->key_file, &ks) != 0) {
        int e = errno;
        snprintf(err, errlen, "%s: %s", w->cert_file, strerror(e));
        w->reloads_failed++;
        return -e;
    }
    int rc = ward_identity_load_server(w->cert_file, w->key_file, &next, err, errlen);
    if (rc < 0) {
        w->reloads_failed++;
        w->cert_st = cs; /* do not retry the same broken files every tick */
        w->key_st = ks;
        return rc;
    }
    ward_identity_unref(w->id);
    w->id = next;
    w->cert_st = cs;
    w->key_st = ks;
    w->reloads_ok++;
    return 0;
}

static void ward__wh_on_reload_timer(uv_timer_t *t)
{
    ward_webhook_t *w = t->data;
    struct stat cs, ks;
    char err[512];
    if (stat(w->cert_file, &cs) != 0 || stat(w->key_file, &ks) != 0) return;
    if (ward__wh_same_file(&cs, &w->cert_st) && ward__wh_same_file(&ks, &w->key_st)) return;
    if (ward_webhook_reload(w, err, sizeof(err)) < 0)
        ward_log_msg(WARD_LOG_ERROR, "webhook_cert_rejected", "%s; keeping the previous one", err);
    else
        ward_log_msg(WARD_LOG_INFO, "webhook_cert_loaded", "%s reloaded", w->cert_file);
}

/* ---- start / stop / metrics ---------------------------------------------------------------- */

static void ward__wh_handle_closed(uv_handle_t *h)
{
    ward_webhook_t *w = h->data;
    w->handles--;
    ward__wh_maybe_free(w);
}

int ward_webhook_start(ward_webhook_t **out, uv_loop_t *loop, const ward_webhook_config_t *cfg,
                       char *err, size_t errlen)
{
    char as[64];
    int one = 1, rc;
    ward_webhook_t *w = ward_calloc(1, sizeof(*w));
    if (w == NULL) return WARD_ENOMEM;
    w->loop = loop;
    w->fd = -1;
    w->inj = cfg->injector;
    ward_pool_init(&w->pool, 4);
    w->cert_file = ward_strdup(cfg->cert_file);
    w->key_file = ward_strdup(cfg->key_file);
    if (w->cert_file == NULL || w->key_file == NULL) {
        rc = WARD_ENOMEM;
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    char why[512];
    if ((rc = ward_webhook_reload(w, why, sizeof(why))) < 0) {
        snprintf(err, errlen, "--webhook-cert/--webhook-key: %s", why);
        goto fail;
    }
    w->reloads_ok = 0;
    const ward_addr_t *a = &cfg->listen;
    w->fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (w->fd < 0 || setsockopt(w->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(w->fd, (const struct sockaddr *)&a->ss, a->len) != 0 || listen(w->fd, 128) != 0) {
        rc = -errno;
        snprintf(err, errlen, "cannot listen on %s: %s",
                 ward_addr_format((const struct sockaddr *)&a->ss, as, sizeof(as)),
                 strerror(errno));
        goto fail;
    }
    if ((rc = uv_poll_init(loop, &w->listen_poll, w->fd)) < 0) {
        snprintf(err, errlen, "webhook listener: %s", uv_strerror(rc));
        goto fail;
    }
    w->listen_poll.data = w;
    uv_timer_init(loop, &w->retry);
    w->retry.data = w;
    uv_timer_init(loop, &w->reload);
    w->reload.data = w;
    w->handles = 3;
    uv_poll_start(&w->listen_poll, UV_READABLE, ward__wh_on_accept);
    uv_timer_start(&w->reload, ward__wh_on_reload_timer, WARD_WH_RELOAD_MS, WARD_WH_RELOAD_MS);
    *out = w;
    return 0;
fail:
    if (w->fd >= 0) close(w->fd);
    ward_identity_unref(w->id);
    ward_free(w->cert_file);
    ward_free(w->key_file);
    ward_pool_destroy(&w->pool);
    ward_free(w);
    return rc;
}

void ward_webhook_stop(ward_webhook_t *w)
{
    if (w == NULL || w->stopping) return;
    w->stopping = 1;
    uv_close((uv_handle_t *)&w->listen_poll, ward__wh_handle_closed);
    uv_close((uv_handle_t *)&w->retry, ward__wh_handle_closed);
    uv_close((uv_handle_t *)&w->reload, ward__wh_handle_closed);
    close(w->fd);
    w->fd = -1;
    for (ward_wh_conn_t *c = w->conns; c; c = c->next)
        ward__wh_close(c, "agent stopping");
}

int ward_webhook_render_metrics(const ward_webhook_t *w, ward_strbuf_t *o)
{
    if (ward_strbuf_printf(o, "# HELP ward_agent_webhook_reviews_total Admission reviews "
                              "answered, by decision.\n"
                              "# TYPE ward_agent_webhook_reviews_total counter\n") < 0)
        return WARD_ENOMEM;
    for (size_t i = 0; i < WH_NDECISIONS; i++)
        if (ward_strbuf_printf(o, "ward_agent_webhook_reviews_total{decision=\"%s\"} %" PRIu64 "\n",
                               ward__wh_decisions[i], w->decisions[i]) < 0)
            return WARD_ENOMEM;
    if (ward_strbuf_printf(o, "# HELP ward_agent_webhook_errors_total Webhook requests refused or "
                              "abandoned, by reason.\n"
                              "# TYPE ward_agent_webhook_errors_total counter\n") < 0)
        return WARD_ENOMEM;
    for (int i = 0; i < WH_ERR_COUNT; i++)
        if (ward_strbuf_printf(o, "ward_agent_webhook_errors_total{reason=\"%s\"} %" PRIu64 "\n",
                               ward__wh_err_names[i], w->errors[i]) < 0)
            return WARD_ENOMEM;
    return ward_strbuf_printf(
        o,
        "# HELP ward_agent_webhook_connections Open webhook connections.\n"
        "# TYPE ward_agent_webhook_connections gauge\n"
        "ward_agent_webhook_connections %" PRIu64 "\n"
        "# HELP ward_agent_webhook_connections_refused_total Connections refused at the limit.\n"
        "# TYPE ward_agent_webhook_connections_refused_total counter\n"
        "ward_agent_webhook_connections_refused_total %" PRIu64 "\n"
        "# HELP ward_agent_webhook_cert_reloads_total Serving certificate reloads by result.\n"
        "# TYPE ward_agent_webhook_cert_reloads_total counter\n"
        "ward_agent_webhook_cert_reloads_total{result=\"success\"} %" PRIu64 "\n"
        "ward_agent_webhook_cert_reloads_total{result=\"failure\"} %" PRIu64 "\n"
        "# HELP ward_agent_webhook_cert_not_after_seconds Expiry of the serving certificate "
        "(Unix time).\n"
        "# TYPE ward_agent_webhook_cert_not_after_seconds gauge\n"
        "ward_agent_webhook_cert_not_after_seconds %" PRId64 "\n",
        w->nconns, w->refused_busy, w->reloads_ok, w->reloads_failed,
        ward_identity_not_after(w->id));
}
