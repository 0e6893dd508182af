/* admin.c — the admin HTTP endpoint (see admin.h). Requests are parsed with llhttp in strict mode;
 * anything but a well-formed GET/HEAD of a known path gets a 4xx. */
#include "ward/admin.h"

#include <stdio.h>
#include <string.h>

#include <llhttp.h>

#include "ward/alloc.h"
#include "ward/log.h"

#define WARD_ADMIN_MAX_REQUEST 8192
#define WARD_ADMIN_MAX_PATH    256
#define WARD_ADMIN_REQUEST_MS  5000 /* a request must arrive complete within this */
#define WARD_ADMIN_LINGER_MS                                                                       \
    1000 /* after the response: drain the client's leftovers, then close                           \
          */
#define WARD_ADMIN_LINGER_MAX 65536

typedef struct {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wr;
    uv_shutdown_t shut;
    int handles; /* open libuv handles: freed when the last one closes */
    int closing;
    size_t drained;
    ward_admin_t *admin;
    llhttp_t parser;
    llhttp_settings_t settings;
    char path[WARD_ADMIN_MAX_PATH];
    size_t path_len;
    size_t total;
    int complete;
    int responded;
    char *resp;
    char inbuf[2048];
} ward_admin_conn_t;

static void ward__admin_closed(uv_handle_t *h)
{
    ward_admin_conn_t *ac = h->data;
    if (--ac->handles > 0) return;
    ward_free(ac->resp);
    ward_free(ac);
}

static void ward__admin_close(ward_admin_conn_t *ac)
{
    if (ac->closing) return;
    ac->closing = 1;
    uv_close((uv_handle_t *)&ac->tcp, ward__admin_closed);
    uv_close((uv_handle_t *)&ac->timer, ward__admin_closed);
}

static void ward__admin_timeout(uv_timer_t *t)
{
    ward__admin_close(t->data);
}

static void ward__admin_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void ward__admin_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

/* Response sent and our side shut: read what the client still sends (so closing does not turn
 * into a reset that could destroy the response before it is read), for a moment, then close. */
static void ward__admin_shut(uv_shutdown_t *req, int status)
{
    ward_admin_conn_t *ac = req->data;
    if (status < 0 || ac->closing) {
        ward__admin_close(ac);
        return;
    }
    uv_timer_start(&ac->timer, ward__admin_timeout, WARD_ADMIN_LINGER_MS, 0);
    uv_read_start((uv_stream_t *)&ac->tcp, ward__admin_alloc, ward__admin_read);
}

static void ward__admin_written(uv_write_t *req, int status)
{
    ward_admin_conn_t *ac = req->data;
    ac->shut.data = ac;
    if (status < 0 || ac->closing ||
        uv_shutdown(&ac->shut, (uv_stream_t *)&ac->tcp, ward__admin_shut) < 0)
        ward__admin_close(ac);
}

static void ward__admin_respond(ward_admin_conn_t *ac, int status, const char *ctype,
                                const char *body, size_t blen, int head)
{
    const char *reason = status == 200   ? "OK"
                         : status == 400 ? "Bad Request"
                         : status == 404 ? "Not Found"
                         : status == 405 ? "Method Not Allowed"
                         : status == 503 ? "Service Unavailable"
                                         : "Internal Server Error";
    char hdr[256];
    int hl = snprintf(hdr, sizeof(hdr),
                      "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
                      "Cache-Control: no-store\r\nConnection: close\r\n\r\n",
                      status, reason, ctype, blen);
    size_t total = (size_t)hl + (head ? 0 : blen);
    ac->responded = 1;
    uv_read_stop((uv_stream_t *)&ac->tcp);
    ac->resp = ward_malloc(total);
    if (ac->resp == NULL) {
        ward__admin_close(ac);
        return;
    }
    memcpy(ac->resp, hdr, (size_t)hl);
    if (!head && blen) memcpy(ac->resp + hl, body, blen);
    uv_buf_t b = uv_buf_init(ac->resp, (unsigned)total);
    ac->wr.data = ac;
    if (uv_write(&ac->wr, (uv_stream_t *)&ac->tcp, &b, 1, ward__admin_written) < 0)
        ward__admin_close(ac);
}

static void ward__admin_route(ward_admin_conn_t *ac)
{
    ward_admin_t *a = ac->admin;
    int method = llhttp_get_method(&ac->parser);
    int head = method == HTTP_HEAD;
    if (method != HTTP_GET && !head) {
        static const char msg[] = "only GET and HEAD\n";
        ward__admin_respond(ac, 405, "text/plain", msg, sizeof(msg) - 1, 0);
        return;
    }
    char *q = memchr(ac->path, '?', ac->path_len);
    size_t plen = q ? (size_t)(q - ac->path) : ac->path_len;
    ac->path[ac->path_len] = '\0';
    ac->path[plen] = '\0';
    const char *query = q ? q + 1 : "";
    if (strcmp(ac->path, "/live") == 0) {
        ward__admin_respond(ac, 200, "text/plain", "live\n", 5, head);
    } else if (strcmp(ac->path, "/ready") == 0) {
        if (a->is_ready(a->ctx))
            ward__admin_respond(ac, 200, "text/plain", "ready\n", 6, head);
        else
            ward__admin_respond(ac, 503, "text/plain", "not ready\n", 10, head);
    } else if (strcmp(ac->path, "/metrics") == 0) {
        ward_strbuf_t out = {0};
        if (a->render_metrics(a->ctx, &out) < 0) {
            ward__admin_respond(ac, 500, "text/plain", "render failed\n", 14, head);
        } else {
            ward__admin_respond(ac, 200, "text/plain; version=0.0.4; charset=utf-8", out.data,
                                out.len, head);
        }
        ward_strbuf_free(&out);
    } else {
        /* The owner's JSON pages (e.g. /identity), if any. */
        ward_strbuf_t out = {0};
        int rc = a->render_page ? a->render_page(a->ctx, ac->path, query, &out) : 1;
        if (rc == 0) {
            ward__admin_respond(ac, 200, "application/json", out.data, out.len, head);
        } else if (rc < 0) {
            ward__admin_respond(ac, 500, "text/plain", "render failed\n", 14, head);
        } else {
            static const char msg[] = "not found: try /metrics, /ready, /live, /identity, "
                                      "/policy, /connections\n";
            ward__admin_respond(ac, 404, "text/plain", msg, sizeof(msg) - 1, head);
        }
        ward_strbuf_free(&out);
    }
}

static int ward__admin_on_url(llhttp_t *p, const char *at, size_t len)
{
    ward_admin_conn_t *ac = p->data;
    if (ac->path_len + len >= sizeof(ac->path)) return HPE_USER;
    memcpy(ac->path + ac->path_len, at, len);
    ac->path_len += len;
    return 0;
}

static int ward__admin_on_complete(llhttp_t *p)
{
    ward_admin_conn_t *ac = p->data;
    ac->complete = 1;
    return HPE_PAUSED;
}

static void ward__admin_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    ward_admin_conn_t *ac = h->data;
    *buf = uv_buf_init(ac->inbuf, sizeof(ac->inbuf));
}

static void ward__admin_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    ward_admin_conn_t *ac = s->data;
    if (nread < 0) {
        ward__admin_close(ac);
        return;
    }
    if (ac->responded) {
        ac->drained += (size_t)nread;
        if (ac->drained > WARD_ADMIN_LINGER_MAX) ward__admin_close(ac);
        return;
    }
    if (nread == 0) return;
    ac->total += (size_t)nread;
    llhttp_errno_t e = llhttp_execute(&ac->parser, buf->base, (size_t)nread);
    if (ac->complete) {
        ward__admin_route(ac);
    } else if (e != HPE_OK || ac->total > WARD_ADMIN_MAX_REQUEST) {
        static const char msg[] = "bad request\n";
        ward__admin_respond(ac, 400, "text/plain", msg, sizeof(msg) - 1, 0);
    }
}

static void ward__admin_accept(uv_stream_t *server, int status)
{
    ward_admin_t *a = server->data;
    if (status < 0) return;
    ward_admin_conn_t *ac = ward_calloc(1, sizeof(*ac));
    if (ac == NULL) return;
    ac->admin = a;
    uv_tcp_init(server->loop, &ac->tcp);
    uv_timer_init(server->loop, &ac->timer);
    ac->tcp.data = ac->timer.data = ac;
    ac->handles = 2;
    if (uv_accept(server, (uv_stream_t *)&ac->tcp) < 0) {
        ward__admin_close(ac);
        return;
    }
    uv_timer_start(&ac->timer, ward__admin_timeout, WARD_ADMIN_REQUEST_MS, 0);
    llhttp_settings_init(&ac->settings);
    ac->settings.on_url = ward__admin_on_url;
    ac->settings.on_message_complete = ward__admin_on_complete;
    llhttp_init(&ac->parser, HTTP_REQUEST, &ac->settings);
    ac->parser.data = ac;
    uv_read_start((uv_stream_t *)&ac->tcp, ward__admin_alloc, ward__admin_read);
}

int ward_admin_start(ward_admin_t *a, uv_loop_t *loop, const ward_addr_t *addr, char *err,
                     size_t errlen)
{
    char as[64];
    int rc = uv_tcp_init(loop, &a->tcp);
    if (rc < 0) goto fail;
    a->tcp.data = a;
    a->open = 1;
    rc = uv_tcp_bind(&a->tcp, (const struct sockaddr *)&addr->ss, 0);
    if (rc < 0) goto fail;
    rc = uv_listen((uv_stream_t *)&a->tcp, 128, ward__admin_accept);
    if (rc < 0) goto fail;
    return 0;
fail:
    snprintf(err, errlen, "admin listener %s: %s",
             ward_addr_format((const struct sockaddr *)&addr->ss, as, sizeof(as)), uv_strerror(rc));
    return rc;
}

void ward_admin_stop(ward_admin_t *a)
{
    if (a->open && !uv_is_closing((uv_handle_t *)&a->tcp)) uv_close((uv_handle_t *)&a->tcp, NULL);
    a->open = 0;
}
