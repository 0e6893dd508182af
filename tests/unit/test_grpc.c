/* test_grpc.c — the gRPC engine (lib/grpc.c): a client engine wired to a server engine in memory,
 * bytes pumped both ways until quiet, sometimes one byte per recv. A few tests put a bare nghttp2
 * server on the other end to send what ward's server never would (no grpc-status, HTTP errors).
 * Every engine allocation goes through a counting allocator installed with ward_alloc_install():
 * after both engines are freed the count must be back where it started. */
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unit.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/grpc.h"

/* --- counting allocator -------------------------------------------------------------------- */

static long t_live; /* allocations made through ward's allocator and not yet freed */

static void *t_malloc(size_t n)
{
    void *p = malloc(n);
    if (p != NULL) t_live++;
    return p;
}

static void *t_calloc(size_t c, size_t n)
{
    void *p = calloc(c, n);
    if (p != NULL) t_live++;
    return p;
}

static void *t_realloc(void *p, size_t n)
{
    if (p != NULL && n == 0) {
        free(p);
        t_live--;
        return NULL;
    }
    void *q = realloc(p, n);
    if (q != NULL && p == NULL) t_live++;
    return q;
}

static void t_free(void *p)
{
    if (p != NULL) t_live--;
    free(p);
}

static const ward_allocator_t t_alloc = {t_malloc, t_realloc, t_calloc, t_free};

/* Set while an engine is being freed: then only on_close may run. */
static int t_freeing;

/* --- per-call records ---------------------------------------------------------------------- */

#define MAXMSG 16

typedef struct {
    ward_grpc_call_t *call;
    int headers;
    int half_closed;
    int closed;
    int status;
    char message[256];
    int nmsgs;
    size_t total;
    char text[MAXMSG][64]; /* first bytes of each message, NUL-terminated */
    uint8_t *last;         /* copy of the last message (libc malloc: not counted) */
    size_t last_len;
} rec_t;

static void rec_free(rec_t *r)
{
    free(r->last);
    r->last = NULL;
}

static void rec_message(rec_t *r, const uint8_t *msg, size_t len)
{
    if (r->nmsgs < MAXMSG) {
        size_t k = len < 63 ? len : 63;
        memcpy(r->text[r->nmsgs], msg, k);
        r->text[r->nmsgs][k] = '\0';
    }
    r->nmsgs++;
    r->total += len;
    free(r->last);
    r->last = malloc(len ? len : 1);
    memcpy(r->last, msg, len);
    r->last_len = len;
}

static void rec_close(rec_t *r, int status, const char *message)
{
    CU_ASSERT_EQUAL(r->closed, 0); /* exactly once */
    CU_ASSERT_PTR_NOT_NULL(message);
    r->closed++;
    r->status = status;
    snprintf(r->message, sizeof(r->message), "%s", message ? message : "(null)");
    r->call = NULL;
}

/* --- the server under test ----------------------------------------------------------------- */

typedef struct {
    int on_calls;
    rec_t recs[48];
    int nrecs;
    int echo; /* echo each message back */
    int fin_status;
    const char *fin_message;
    int pings;
    /* header lookups done in on_call */
    char path[128];
    char h_tenant[64], h_authority[64], h_te[32], h_ctype[64], h_timeout[32], h_ua[64];
    int h_missing_is_null;
} srv_t;

static void copy_hdr(char *dst, size_t n, const char *v)
{
    snprintf(dst, n, "%s", v ? v : "(none)");
}

static int srv_on_call(ward_grpc_conn_t *conn, ward_grpc_call_t *call, const char *path, void *d)
{
    srv_t *s = d;
    CU_ASSERT_FALSE(t_freeing);
    CU_ASSERT_PTR_EQUAL(ward_grpc_call_conn(call), conn);
    CU_ASSERT_PTR_EQUAL(ward_grpc_conn_data(conn), d);
    s->on_calls++;
    snprintf(s->path, sizeof(s->path), "%s", path);
    copy_hdr(s->h_tenant, sizeof(s->h_tenant), ward_grpc_call_header(call, "x-tenant"));
    copy_hdr(s->h_authority, sizeof(s->h_authority), ward_grpc_call_header(call, ":authority"));
    copy_hdr(s->h_te, sizeof(s->h_te), ward_grpc_call_header(call, "te"));
    copy_hdr(s->h_ctype, sizeof(s->h_ctype), ward_grpc_call_header(call, "content-type"));
    copy_hdr(s->h_timeout, sizeof(s->h_timeout), ward_grpc_call_header(call, "grpc-timeout"));
    copy_hdr(s->h_ua, sizeof(s->h_ua), ward_grpc_call_header(call, "user-agent"));
    s->h_missing_is_null = ward_grpc_call_header(call, "x-missing") == NULL;
    if (strncmp(path, "/test.Echo/", 11) != 0) return WARD_GRPC_UNIMPLEMENTED;
    if (strcmp(path, "/test.Echo/Denied") == 0) return WARD_GRPC_PERMISSION_DENIED;
    if (s->nrecs >= 48) return WARD_GRPC_RESOURCE_EXHAUSTED;
    rec_t *r = &s->recs[s->nrecs++];
    r->call = call;
    ward_grpc_call_set_data(call, r);
    return WARD_GRPC_OK;
}

static void srv_on_message(ward_grpc_call_t *call, const uint8_t *msg, size_t len, void *d)
{
    rec_t *r = d;
    CU_ASSERT_FALSE(t_freeing);
    CU_ASSERT_PTR_EQUAL(ward_grpc_call_data(call), d);
    rec_message(r, msg, len);
    srv_t *s = ward_grpc_conn_data(ward_grpc_call_conn(call));
    if (s->echo) CU_ASSERT_EQUAL(ward_grpc_call_send(call, msg, len), 0);
}

static void srv_on_half_close(ward_grpc_call_t *call, void *d)
{
    rec_t *r = d;
    CU_ASSERT_FALSE(t_freeing);
    r->half_closed++;
    srv_t *s = ward_grpc_conn_data(ward_grpc_call_conn(call));
    if (s->echo) CU_ASSERT_EQUAL(ward_grpc_call_finish(call, s->fin_status, s->fin_message), 0);
}

static void srv_on_close(ward_grpc_call_t *call, int status, const char *message, void *d)
{
    rec_close(d, status, message);
}

static void on_ping_ack(ward_grpc_conn_t *conn, void *d)
{
    CU_ASSERT_FALSE(t_freeing);
    (*(int *)d)++;
}

static void srv_on_ping_ack(ward_grpc_conn_t *conn, void *d)
{
    CU_ASSERT_FALSE(t_freeing);
    ((srv_t *)d)->pings++;
}

static const ward_grpc_callbacks_t srv_cb = {
    .on_call = srv_on_call,
    .on_message = srv_on_message,
    .on_half_close = srv_on_half_close,
    .on_close = srv_on_close,
    .on_ping_ack = srv_on_ping_ack,
};

/* --- the client ---------------------------------------------------------------------------- */

static void cli_on_headers(ward_grpc_call_t *call, void *d)
{
    CU_ASSERT_FALSE(t_freeing);
    ((rec_t *)d)->headers++;
}

static void cli_on_message(ward_grpc_call_t *call, const uint8_t *msg, size_t len, void *d)
{
    CU_ASSERT_FALSE(t_freeing);
    rec_message(d, msg, len);
}

static void cli_on_close(ward_grpc_call_t *call, int status, const char *message, void *d)
{
    rec_close(d, status, message);
}

static const ward_grpc_callbacks_t cli_cb = {
    .on_headers = cli_on_headers,
    .on_message = cli_on_message,
    .on_close = cli_on_close,
    .on_ping_ack = on_ping_ack,
};

/* --- wiring -------------------------------------------------------------------------------- */

/* One end: a ward engine or a bare nghttp2 session. */
typedef struct {
    ward_grpc_conn_t *g;
    nghttp2_session *raw;
    int rc; /* first non-zero recv result */
} ep_t;

typedef struct {
    ep_t cli, srv;
    srv_t s;
    int cli_pings;
    size_t chunk; /* bytes per recv call; 0 = everything at once */
    int compress; /* set the compressed flag of the next client DATA frame */
    long live0;
} pair_t;

static size_t ep_send(ep_t *e, const uint8_t **out)
{
    if (e->g != NULL) return ward_grpc_conn_send(e->g, out);
    ssize_t n = nghttp2_session_mem_send(e->raw, out);
    return n > 0 ? (size_t)n : 0;
}

static int ep_recv(ep_t *e, const uint8_t *d, size_t n)
{
    if (e->g != NULL) return ward_grpc_conn_recv(e->g, d, n);
    ssize_t r = nghttp2_session_mem_recv(e->raw, d, n);
    return r < 0 ? (int)r : 0;
}

/* Walks the HTTP/2 frames of a batch and flags the first DATA frame's message as compressed. */
static void tap_compress(pair_t *p, uint8_t *b, size_t len)
{
    static const char magic[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    size_t off = 0;
    if (len >= 24 && memcmp(b, magic, 24) == 0) off = 24;
    while (p->compress && off + 9 <= len) {
        size_t flen = (size_t)b[off] << 16 | (size_t)b[off + 1] << 8 | b[off + 2];
        size_t pay = off + 9 + ((b[off + 4] & 0x8) ? 1 : 0);
        if (b[off + 3] == 0 && flen > 0 && pay < len) {
            b[pay] = 1;
            p->compress = 0;
        }
        off += 9 + flen;
    }
}

static size_t move(pair_t *p, ep_t *from, ep_t *to, int c2s)
{
    uint8_t *buf = NULL;
    size_t len = 0, cap = 0, n;
    const uint8_t *out;
    while ((n = ep_send(from, &out)) > 0) {
        if (len + n > cap) {
            cap = (len + n) * 2;
            buf = realloc(buf, cap);
        }
        memcpy(buf + len, out, n);
        len += n;
    }
    if (c2s && p->compress) tap_compress(p, buf, len);
    for (size_t i = 0; i < len;) {
        size_t k = p->chunk ? p->chunk : len - i;
        if (k > len - i) k = len - i;
        int rc = ep_recv(to, buf + i, k);
        if (rc != 0) {
            if (to->rc == 0) to->rc = rc;
            break;
        }
        i += k;
    }
    free(buf);
    return len;
}

static void pump(pair_t *p)
{
    for (int i = 0; i < 100000; i++) {
        size_t a = move(p, &p->cli, &p->srv, 1);
        size_t b = move(p, &p->srv, &p->cli, 0);
        if (a == 0 && b == 0) return;
    }
    CU_FAIL("pump did not settle");
}

static void pair_init(pair_t *p, const ward_grpc_options_t *copts, const ward_grpc_options_t *sopts)
{
    memset(p, 0, sizeof(*p));
    p->live0 = t_live;
    p->s.echo = 1;
    p->s.fin_status = WARD_GRPC_OK;
    p->cli.g = ward_grpc_conn_new(0, &cli_cb, copts, &p->cli_pings);
    p->srv.g = ward_grpc_conn_new(1, &srv_cb, sopts, &p->s);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p->cli.g);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p->srv.g);
    CU_ASSERT_TRUE(ward_grpc_conn_want_write(p->cli.g));
    CU_ASSERT_TRUE(ward_grpc_conn_alive(p->cli.g));
    CU_ASSERT_TRUE(ward_grpc_conn_alive(p->srv.g));
}

/* Frees both engines and checks that every engine allocation was returned. */
static void pair_free(pair_t *p)
{
    t_freeing = 1;
    ward_grpc_conn_free(p->cli.g);
    ward_grpc_conn_free(p->srv.g);
    if (p->srv.raw != NULL) nghttp2_session_del(p->srv.raw);
    if (p->cli.raw != NULL) nghttp2_session_del(p->cli.raw);
    t_freeing = 0;
    for (int i = 0; i < 48; i++)
        rec_free(&p->s.recs[i]);
    CU_ASSERT_EQUAL(t_live, p->live0);
}

static ward_grpc_call_t *start(pair_t *p, const char *path, rec_t *r)
{
    ward_grpc_call_t *call = NULL;
    memset(r, 0, sizeof(*r));
    CU_ASSERT_EQUAL(ward_grpc_call_start(p->cli.g, path, "svc.local", NULL, 0, 0, 0, r, &call), 0);
    CU_ASSERT_PTR_NOT_NULL(call);
    r->call = call;
    return call;
}

static int send_str(ward_grpc_call_t *call, const char *s)
{
    return ward_grpc_call_send(call, (const uint8_t *)s, strlen(s));
}

/* --- tests --------------------------------------------------------------------------------- */

static void test_unary(void)
{
    pair_t p;
    rec_t r;
    pair_init(&p, NULL, NULL);
    ward_grpc_call_t *call = start(&p, "/test.Echo/Unary", &r);
    CU_ASSERT_EQUAL(send_str(call, "ping"), 0);
    CU_ASSERT_EQUAL(ward_grpc_call_queued(call), 9);
    CU_ASSERT_EQUAL(ward_grpc_call_close_send(call), 0);
    CU_ASSERT_EQUAL(send_str(call, "late"), WARD_EINVAL);
    CU_ASSERT_EQUAL(ward_grpc_call_close_send(call), WARD_EINVAL);
    pump(&p);
    CU_ASSERT_EQUAL(p.s.on_calls, 1);
    CU_ASSERT_STRING_EQUAL(p.s.path, "/test.Echo/Unary");
    CU_ASSERT_EQUAL(p.s.recs[0].nmsgs, 1);
    CU_ASSERT_STRING_EQUAL(p.s.recs[0].text[0], "ping");
    CU_ASSERT_EQUAL(p.s.recs[0].half_closed, 1);
    CU_ASSERT_EQUAL(p.s.recs[0].closed, 1);
    CU_ASSERT_EQUAL(p.s.recs[0].status, WARD_GRPC_OK);
    CU_ASSERT_EQUAL(r.headers, 1);
    CU_ASSERT_EQUAL(r.nmsgs, 1);
    CU_ASSERT_STRING_EQUAL(r.text[0], "ping");
    CU_ASSERT_EQUAL(r.closed, 1);
    CU_ASSERT_EQUAL(r.status, WARD_GRPC_OK);
    CU_ASSERT_STRING_EQUAL(r.message, "");
    CU_ASSERT_EQUAL(p.cli.rc, 0);
    CU_ASSERT_EQUAL(p.srv.rc, 0);
    CU_ASSERT_TRUE(ward_grpc_conn_alive(p.cli.g));
    CU_ASSERT_FALSE(ward_grpc_conn_finished(p.cli.g));
    CU_ASSERT_FALSE(ward_grpc_conn_finished(p.srv.g));
    rec_free(&r);
    pair_free(&p);
}

/* Bidirectional streaming: messages interleave, the status message survives percent-encoding. */
static void run_streaming(size_t chunk)
{
    static const char *fin = "done: 100% sure\n\xc3\xbcn\xc3\xaf";
    pair_t p;
    rec_t r;
    pair_init(&p, NULL, NULL);
    p.chunk = chunk;
    p.s.fin_message = fin;
    ward_grpc_call_t *call = start(&p, "/test.Echo/Stream", &r);
    CU_ASSERT_EQUAL(send_str(call, "one"), 0);
    pump(&p);
    CU_ASSERT_EQUAL(r.headers, 1);
    CU_ASSERT_EQUAL(r.nmsgs, 1);
    CU_ASSERT_EQUAL(ward_grpc_call_queued(call), 0);
    CU_ASSERT_EQUAL(send_str(call, "two"), 0);
    CU_ASSERT_EQUAL(ward_grpc_call_send(call, NULL, 0), 0); /* empty message */
    uint8_t big[3000];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (uint8_t)(i * 7);
    CU_ASSERT_EQUAL(ward_grpc_call_send(call, big, sizeof(big)), 0);
    CU_ASSERT_EQUAL(send_str(call, "four"), 0);
    pump(&p);
    CU_ASSERT_EQUAL(r.closed, 0);
    CU_ASSERT_EQUAL(ward_grpc_call_close_send(call), 0);
    pump(&p);
    rec_t *s = &p.s.recs[0];
    CU_ASSERT_EQUAL(s->nmsgs, 5);
    CU_ASSERT_EQUAL(r.nmsgs, 5);
    CU_ASSERT_STRING_EQUAL(r.text[0], "one");
    CU_ASSERT_STRING_EQUAL(r.text[1], "two");
    CU_ASSERT_STRING_EQUAL(r.text[2], "");
    CU_ASSERT_STRING_EQUAL(r.text[4], "four");
    CU_ASSERT_EQUAL(r.total, 3 + 3 + 0 + 3000 + 4);
    CU_ASSERT_EQUAL(s->half_closed, 1);
    CU_ASSERT_EQUAL(r.closed, 1);
    CU_ASSERT_EQUAL(r.status, WARD_GRPC_OK);
    CU_ASSERT_STRING_EQUAL(r.message, fin);
    CU_ASSERT_EQUAL(s->closed, 1);
    CU_ASSERT_EQUAL(s->status, WARD_GRPC_OK);
    CU_ASSERT_STRING_EQUAL(s->message, fin);
    CU_ASSERT_EQUAL(p.cli.rc, 0);
    CU_ASSERT_EQUAL(p.srv.rc, 0);
    rec_free(&r);
    pair_free(&p);
}

static void test_streaming(void)
{
    run_streaming(0);
}

static void test_one_byte_recv(void)
{
    run_streaming(1);
}

static void run_large(const ward_grpc_options_t *opts, size_t chunk)
{
    size_t n = 1 << 20;
    uint8_t *msg = malloc(n);
    for (size_t i = 0; i < n; i++)
        msg[i] = (uint8_t)(i * 2654435761u >> 13);
    pair_t p;
    rec_t r;
    pair_init(&p, opts, opts);
    p.chunk = chunk;
    ward_grpc_call_t *call = start(&p, "/test.Echo/Big", &r);
    CU_ASSERT_EQUAL(ward_grpc_call_send(call, msg, n), 0);
    CU_ASSERT_EQUAL(ward_grpc_call_queued(call), n + 5);
    CU_ASSERT_EQUAL(ward_grpc_call_close_send(call), 0);
    pump(&p);
    CU_ASSERT_EQUAL(p.s.recs[0].nmsgs, 1);
    CU_ASSERT_EQUAL(p.s.recs[0].last_len, n);
    CU_ASSERT(p.s.recs[0].last != NULL && memcmp(p.s.recs[0].last, msg, n) == 0);
    CU_ASSERT_EQUAL(r.nmsgs, 1);
    CU_ASSERT_EQUAL(r.last_len, n);
    CU_ASSERT(r.last != NULL && memcmp(r.last, msg, n) == 0);
    CU_ASSERT_EQUAL(r.status, WARD_GRPC_OK);
    CU_ASSERT_EQUAL(r.closed, 1);
    rec_free(&r);
    pair_free(&p);
    free(msg);
}

static void test_large(void)
{
    run_large(NULL, 0);
    /* Windows of 64 KiB: the message crosses many WINDOW_UPDATE round trips. */
    ward_grpc_options_t small = {.initial_window = 65535};
    run_large(&small, 0);
    run_large(&small, 4093);
}

static void test_oversized(void)
{
    ward_grpc_options_t sopts = {.max_message_size = 1024};
    uint8_t big[2000];
    memset(big, 'x', sizeof(big));
    pair_t p;
    rec_t r, r2;
    pair_init(&p, NULL, &sopts);
    ward_grpc_call_t *call = start(&p, "/test.Echo/Stream", &r);
    CU_ASSERT_EQUAL(ward_grpc_call_send(call, big, sizeof(big)), 0);
    pump(&p);
    CU_ASSERT_EQUAL(r.closed, 1);
    CU_ASSERT_EQUAL(r.status, WARD_GRPC_RESOURCE_EXHAUSTED);
    CU_ASSERT_EQUAL(p.s.recs[0].nmsgs, 0);
    CU_ASSERT_EQUAL(p.s.recs[0].closed, 1);
    CU_ASSERT_EQUAL(p.s.recs[0].status, WARD_GRPC_RESOURCE_EXHAUSTED);
    /* The connection goes on. */
    call = start(&p, "/test.Echo/Unary", &r2);
    CU_ASSERT_EQUAL(ward_grpc_call_send(call, big, 1000), 0);
    CU_ASSERT_EQUAL(ward_grpc_call_close_send(call), 0);
    pump(&p);
    CU_ASSERT_EQUAL(r2.nmsgs, 1);
    CU_ASSERT_EQUAL(r2.status, WARD_GRPC_OK);
    CU_ASSERT_EQUAL(p.srv.rc, 0);
    CU_ASSERT_EQUAL(p.cli.rc, 0);
    rec_free(&r);
    rec_free(&r2);
    pair_free(&p);

    /* The client refuses an oversized response the same way (and resets the stream). */
    ward_grpc_options_t copts = {.max_message_size = 1024};
    pair_init(&p, &copts, NULL);
    call = start(&p, "/test.Echo/Stream", &r);
    CU_ASSERT_EQUAL(ward_grpc_call_send(call, big, sizeof(big)), 0);
    pump(&p);
    CU_ASSERT_EQUAL(r.closed, 1);
    CU_ASSERT_EQUAL(r.nmsgs, 0);
    CU_ASSERT_EQUAL(r.status, WARD_GRPC_RESOURCE_EXHAUSTED);
    CU_ASSERT_EQUAL(p.s.recs[0].closed, 1);
    CU_ASSERT_EQUAL(p.s.recs[0].status, WARD_GRPC_CANCELLED);
    call = start(&p, "/test.Echo/Unary", &r2);
    CU_ASSERT_EQUAL(send_str(call, "small"), 0);
    CU_ASSERT_EQUAL(ward_grpc_call_close_send(call), 0);
    pump(&p);
    CU_ASSERT_EQUAL(r2.status, WARD_GRPC_OK);
    CU_ASSERT_STRING_EQUAL(r2.text[0], "small");
    rec_free(&r);
    rec_free(&r2);
    pair_free(&p);
}

static void test_compressed(void)
{
    pair_t p;
    rec_t r;
    pair_init(&p, NULL, NULL);
    ward_grpc_call_t *call = start(&p, "/test.Echo/Stream", &r);
    pump(&p);
    p.compress = 1;
    CU_ASSERT_EQUAL(send_str(call, "abc"), 0);
    pump(&p);
    CU_ASSERT_EQUAL(p.compress, 0); /* the tap found the frame */
    CU_ASSERT_EQUAL(r.closed, 1);
    CU_ASSERT_EQUAL(r.status, WARD_GRPC_UNIMPLEMENTED);
    CU_ASSERT_EQUAL(p.s.recs[0].nmsgs, 0);
    CU_ASSERT_EQUAL(p.s.recs[0].status, WARD_GRPC_UNIMPLEMENTED);
    rec_free(&r);
    pair_free(&p);
}

static void test_refused(void)
{
    pair_t p;
    rec_t r, r2;
    pair_init(&p, NULL, NULL);
    ward_grpc_call_t *call = start(&p, "/other.Service/Nope", &r);
    CU_ASSERT_EQUAL(send_str(call, "x"), 0);
    pump(&p);
    CU_ASSERT_EQUAL(p.s.on_calls, 1);
    CU_ASSERT_EQUAL(p.s.nrecs, 0);
    CU_ASSERT_EQUAL(r.closed, 1);
    CU_ASSERT_EQUAL(r.status, WARD_GRPC_UNIMPLEMENTED);
    CU_ASSERT_EQUAL(r.headers, 0); /* trailers-only */
    CU_ASSERT_EQUAL(r.nmsgs, 0);
    call = start(&p, "/test.Echo/Denied", &r2);
    CU_ASSERT_EQUAL(ward_grpc_call_close_send(call), 0);
    pump(&p);
    CU_ASSERT_EQUAL(r2.status, WARD_GRPC_PERMISSION_DENIED);
    CU_ASSERT_EQUAL(r2.headers, 0);
    CU_ASSERT_EQUAL(p.srv.rc, 0);
    rec_free(&r);
    rec_free(&r2);
    pair_free(&p);
}

/* --- a bare nghttp2 server, to send broken responses --------------------------------------- */

enum { RAW_NO_STATUS, RAW_HTTP_404, RAW_HTTP_503, RAW_DATA_EOS };

typedef struct {
    int mode;
    int sent;
} raw_t;

static ssize_t raw_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t len, uint32_t *flags,
                        nghttp2_data_source *src, void *ud)
{
    raw_t *raw = ud;
    static const uint8_t msg[] = {0, 0, 0, 0, 2, 'h', 'i'};
    memcpy(buf, msg, sizeof(msg));
    *flags |= NGHTTP2_DATA_FLAG_EOF;
    if (raw->mode == RAW_NO_STATUS) {
        nghttp2_nv nv[] = {{(uint8_t *)"x-trailer", (uint8_t *)"1", 9, 1, 0}};
        nghttp2_submit_trailer(s, id, nv, 1);
        *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
    }
    return sizeof(msg);
}

static int raw_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    raw_t *raw = ud;
    if ((f->hd.type != NGHTTP2_HEADERS && f->hd.type != NGHTTP2_DATA) ||
        !(f->hd.flags & NGHTTP2_FLAG_END_STREAM) || raw->sent)
        return 0;
    raw->sent = 1;
    const char *status = raw->mode == RAW_HTTP_404   ? "404"
                         : raw->mode == RAW_HTTP_503 ? "503"
                                                     : "200";
    nghttp2_nv nv[] = {{(uint8_t *)":status", (uint8_t *)status, 7, 3, 0},
                       {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, 0}};
    nghttp2_data_provider prd = {.read_callback = raw_read};
    if (raw->mode == RAW_HTTP_404 || raw->mode == RAW_HTTP_503)
        nghttp2_submit_response(s, f->hd.stream_id, nv, 1, NULL);
    else
        nghttp2_submit_response(s, f->hd.stream_id, nv, 2, &prd);
    return 0;
}

static void run_raw(int mode, int want_status, int want_msgs)
{
    pair_t p;
    rec_t r;
    raw_t raw = {.mode = mode};
    nghttp2_session_callbacks *cbs;
    memset(&p, 0, sizeof(p));
    p.live0 = t_live;
    p.cli.g = ward_grpc_conn_new(0, &cli_cb, NULL, &p.cli_pings);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p.cli.g);
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, raw_frame_recv);
    CU_ASSERT_EQUAL_FATAL(nghttp2_session_server_new(&p.srv.raw, cbs, &raw), 0);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_submit_settings(p.srv.raw, NGHTTP2_FLAG_NONE, NULL, 0);
    ward_grpc_call_t *call = start(&p, "/test.Echo/Unary", &r);
    CU_ASSERT_EQUAL(send_str(call, "q"), 0);
    CU_ASSERT_EQUAL(ward_grpc_call_close_send(call), 0);
    pump(&p);
    CU_ASSERT_EQUAL(r.closed, 1);
    CU_ASSERT_EQUAL(r.status, want_status);
    CU_ASSERT_EQUAL(r.nmsgs, want_msgs);
    CU_ASSERT_EQUAL(p.cli.rc, 0);
    if (mode == RAW_NO_STATUS) CU_ASSERT_STRING_EQUAL(r.message, "missing grpc-status");
    rec_free(&r);
    pair_free(&p);
}

static void test_missing_status(void)
{
    run_raw(RAW_NO_STATUS, WARD_GRPC_INTERNAL, 1);
    run_raw(RAW_DATA_EOS, WARD_GRPC_INTERNAL, 1);
    run_raw(RAW_HTTP_404, WARD_GRPC_UNIMPLEMENTED, 0);
    run_raw(RAW_HTTP_503, WARD_GRPC_UNAVAILABLE, 0);
}

/* --- a bare nghttp2 client, to send requests ward's client never would ---------------------- */

typedef struct {
    char status[8], grpc_status[8], grpc_message[64];
    int closed;
} rawc_t;

static int rawc_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                       const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    rawc_t *rc = ud;
    char *dst = NULL;
    size_t cap = 8;
    if (nlen == 7 && memcmp(name, ":status", 7) == 0) dst = rc->status;
    if (nlen == 11 && memcmp(name, "grpc-status", 11) == 0) dst = rc->grpc_status;
    if (nlen == 12 && memcmp(name, "grpc-message", 12) == 0) {
        dst = rc->grpc_message;
        cap = sizeof(rc->grpc_message);
    }
    if (dst != NULL) snprintf(dst, cap, "%.*s", (int)vlen, (const char *)value);
    return 0;
}

static int rawc_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    ((rawc_t *)ud)->closed++;
    return 0;
}

/* Sends one request (HEADERS with END_STREAM) built from name/value pairs. */
static void run_raw_request(const char *const *kv, size_t n, rawc_t *rc, int *on_calls)
{
    pair_t p;
    nghttp2_session_callbacks *cbs;
    nghttp2_nv nv[16];
    memset(&p, 0, sizeof(p));
    memset(rc, 0, sizeof(*rc));
    p.live0 = t_live;
    p.s.echo = 1;
    p.srv.g = ward_grpc_conn_new(1, &srv_cb, NULL, &p.s);
    CU_ASSERT_PTR_NOT_NULL_FATAL(p.srv.g);
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_on_header_callback(cbs, rawc_header);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, rawc_close);
    CU_ASSERT_EQUAL_FATAL(nghttp2_session_client_new(&p.cli.raw, cbs, rc), 0);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_submit_settings(p.cli.raw, NGHTTP2_FLAG_NONE, NULL, 0);
    for (size_t i = 0; i < n; i++) {
        nv[i].name = (uint8_t *)kv[2 * i];
        nv[i].namelen = strlen(kv[2 * i]);
        nv[i].value = (uint8_t *)kv[2 * i + 1];
        nv[i].valuelen = strlen(kv[2 * i + 1]);
        nv[i].flags = NGHTTP2_NV_FLAG_NONE;
    }
    CU_ASSERT(nghttp2_submit_request(p.cli.raw, NULL, nv, n, NULL, NULL) > 0);
    pump(&p);
    CU_ASSERT_EQUAL(rc->closed, 1);
    CU_ASSERT_EQUAL(p.srv.rc, 0);
    *on_calls = p.s.on_calls;
    nghttp2_session_del(p.cli.raw);
    p.cli.raw = NULL;
    pair_free(&p);
}

static void test_request_validation(void)
{
    rawc_t rc;
    int calls;
    const char *ok[] = {
        ":method",          "POST",       ":scheme", "http",         ":path",
        "/test.Echo/Unary", ":authority", "x",       "content-type", "application/grpc+proto"};
    run_raw_request(ok, 5, &rc, &calls); /* no te: tolerated */
    CU_ASSERT_EQUAL(calls, 1);
    CU_ASSERT_STRING_EQUAL(rc.status, "200");
    CU_ASSERT_STRING_EQUAL(rc.grpc_status, "0");

    const char *ctype[] = {
        ":method",          "POST",       ":scheme", "http",         ":path",
        "/test.Echo/Unary", ":authority", "x",       "content-type", "application/json"};
    run_raw_request(ctype, 5, &rc, &calls);
    CU_ASSERT_EQUAL(calls, 0);
    CU_ASSERT_STRING_EQUAL(rc.status, "415");
    CU_ASSERT_STRING_EQUAL(rc.grpc_status, "13");

    const char *get[] = {
        ":method",          "GET",        ":scheme", "http",         ":path",
        "/test.Echo/Unary", ":authority", "x",       "content-type", "application/grpc"};
    run_raw_request(get, 5, &rc, &calls);
    CU_ASSERT_EQUAL(calls, 0);
    CU_ASSERT_STRING_EQUAL(rc.status, "200");
    CU_ASSERT_STRING_EQUAL(rc.grpc_status, "12");

    const char *tmo[] = {
        ":method",          "POST",       ":scheme", "http",         ":path",
        "/test.Echo/Unary", ":authority", "x",       "content-type", "application/grpc",
        "grpc-timeout",     "1x"};
    run_raw_request(tmo, 6, &rc, &calls);
    CU_ASSERT_EQUAL(calls, 0);
    CU_ASSERT_STRING_EQUAL(rc.grpc_status, "13");
    CU_ASSERT_STRING_EQUAL(rc.grpc_message, "malformed grpc-timeout");
}

static void test_deadline_client(void)
{
    pair_t p;
    rec_t r;
    ward_grpc_call_t *call = NULL;
    pair_init(&p, NULL, NULL);
    p.s.echo = 0;
    memset(&r, 0, sizeof(r));
    CU_ASSERT_EQUAL(ward_grpc_call_start(p.cli.g, "/test.Echo/Silent", "svc.local", NULL, 0, 100,
                                         1000, &r, &call),
                    0);
    CU_ASSERT_EQUAL(send_str(call, "hello"), 0);
    pump(&p);
    CU_ASSERT_STRING_EQUAL(p.s.h_timeout, "100m");
    ward_grpc_conn_tick(p.cli.g, 1099);
    pump(&p);
    CU_ASSERT_EQUAL(r.closed, 0);
    ward_grpc_conn_tick(p.cli.g, 1100);
    pump(&p);
    CU_ASSERT_EQUAL(r.closed, 1);
    CU_ASSERT_EQUAL(r.status, WARD_GRPC_DEADLINE_EXCEEDED);
    CU_ASSERT_EQUAL(p.s.recs[0].closed, 1);
    CU_ASSERT_EQUAL(p.s.recs[0].status, WARD_GRPC_CANCELLED);
    rec_free(&r);
    pair_free(&p);
}

static void run_deadline_server(uint64_t base)
{
    pair_t p;
    rec_t r;
    ward_grpc_call_t *call = NULL;
    pair_init(&p, NULL, NULL);
    p.s.echo = 0;
    if (base) ward_grpc_conn_tick(p.srv.g, base);
    memset(&r, 0, sizeof(r));
    /* The client's own clock is never ticked: the server's deadline is what ends the call. */
    CU_ASSERT_EQUAL(
        ward_grpc_call_start(p.cli.g, "/test.Echo/Silent", NULL, NULL, 0, 50, 0, &r, &call), 0);
    CU_ASSERT_EQUAL(send_str(call, "hello"), 0);
    pump(&p);
    CU_ASSERT_EQUAL(p.s.recs[0].nmsgs, 1);
    CU_ASSERT_STRING_EQUAL(p.s.h_authority, "localhost");
    /* Queued but unsent when the deadline passes: dropped. */
    CU_ASSERT_EQUAL(ward_grpc_call_send(p.s.recs[0].call, (const uint8_t *)"zz", 2), 0);
    ward_grpc_conn_tick(p.srv.g, base + 49);
    CU_ASSERT_EQUAL(p.s.recs[0].closed, 0);
    ward_grpc_conn_tick(p.srv.g, base + 50);
    pump(&p);
    CU_ASSERT_EQUAL(r.closed, 1);
    CU_ASSERT_EQUAL(r.status, WARD_GRPC_DEADLINE_EXCEEDED);
    CU_ASSERT_EQUAL(r.nmsgs, 0);
    CU_ASSERT_EQUAL(p.s.recs[0].closed, 1);
    CU_ASSERT_EQUAL(p.s.recs[0].status, WARD_GRPC_DEADLINE_EXCEEDED);
    rec_free(&r);
    pair_free(&p);
}

static void test_deadline_server(void)
{
    run_deadline_server(0); /* never ticked before: relative to 0 */
    run_deadline_server(5000);
}

static void test_ping(void)
{
    pair_t p;
    pair_init(&p, NULL, NULL);
    pump(&p);
    CU_ASSERT_EQUAL(ward_grpc_conn_ping(p.cli.g), 0);
    CU_ASSERT_TRUE(ward_grpc_conn_want_write(p.cli.g));
    pump(&p);
    CU_ASSERT_EQUAL(p.cli_pings, 1);
    CU_ASSERT_EQUAL(p.s.pings, 0);
    CU_ASSERT_EQUAL(ward_grpc_conn_ping(p.srv.g), 0);
    CU_ASSERT_EQUAL(ward_grpc_conn_ping(p.srv.g), 0);
    pump(&p);
    CU_ASSERT_EQUAL(p.s.pings, 2);
    CU_ASSERT_EQUAL(p.cli_pings, 1);
    pair_free(&p);
}

static void test_goaway(void)
{
    pair_t p;
    rec_t r, r2;
    ward_grpc_call_t *late = NULL;
    pair_init(&p, NULL, NULL);
    p.s.echo = 0;
    ward_grpc_call_t *call = start(&p, "/test.Echo/Silent", &r);
    CU_ASSERT_EQUAL(send_str(call, "in flight"), 0);
    pump(&p);
    CU_ASSERT_EQUAL(p.s.nrecs, 1);
    ward_grpc_conn_goaway(p.srv.g, 1);
    CU_ASSERT_FALSE(ward_grpc_conn_alive(p.srv.g));
    pump(&p);
    CU_ASSERT_FALSE(ward_grpc_conn_alive(p.cli.g));
    memset(&r2, 0, sizeof(r2));
    CU_ASSERT_EQUAL(
        ward_grpc_call_start(p.cli.g, "/test.Echo/Unary", NULL, NULL, 0, 0, 0, &r2, &late),
        WARD_EINVAL);
    CU_ASSERT_PTR_NULL(late);
    /* The call in flight finishes normally. */
    CU_ASSERT_EQUAL(send_str(call, "more"), 0);
    CU_ASSERT_EQUAL(ward_grpc_call_close_send(call), 0);
    pump(&p);
    CU_ASSERT_EQUAL(p.s.recs[0].nmsgs, 2);
    CU_ASSERT_FALSE(ward_grpc_conn_finished(p.cli.g)); /* a call is still in flight */
    CU_ASSERT_FALSE(ward_grpc_conn_finished(p.srv.g));
    CU_ASSERT_EQUAL(ward_grpc_call_send(p.s.recs[0].call, (const uint8_t *)"bye", 3), 0);
    CU_ASSERT_EQUAL(ward_grpc_call_finish(p.s.recs[0].call, WARD_GRPC_OK, NULL), 0);
    pump(&p);
    CU_ASSERT_EQUAL(r.closed, 1);
    CU_ASSERT_EQUAL(r.status, WARD_GRPC_OK);
    CU_ASSERT_STRING_EQUAL(r.text[0], "bye");
    CU_ASSERT_EQUAL(p.s.recs[0].status, WARD_GRPC_OK);
    CU_ASSERT_EQUAL(p.cli.rc, 0);
    CU_ASSERT_EQUAL(p.srv.rc, 0);
    CU_ASSERT_TRUE(ward_grpc_conn_finished(p.cli.g)); /* now both ends may close */
    CU_ASSERT_TRUE(ward_grpc_conn_finished(p.srv.g));
    rec_free(&r);
    pair_free(&p);
}

static void test_headers(void)
{
    pair_t p;
    rec_t r;
    ward_grpc_call_t *call = NULL;
    ward_grpc_header_t h[] = {
        {"x-tenant", "acme"}, {"user-agent", "ward-test/1"}, {"trace-bin", "AAEC"}};
    pair_init(&p, NULL, NULL);
    memset(&r, 0, sizeof(r));
    CU_ASSERT_EQUAL(
        ward_grpc_call_start(p.cli.g, "/test.Echo/Unary", "svc.local", h, 3, 0, 0, &r, &call), 0);
    CU_ASSERT_EQUAL(ward_grpc_call_close_send(call), 0);
    pump(&p);
    CU_ASSERT_STRING_EQUAL(p.s.h_tenant, "acme");
    CU_ASSERT_STRING_EQUAL(p.s.h_authority, "svc.local");
    CU_ASSERT_STRING_EQUAL(p.s.h_te, "trailers");
    CU_ASSERT_STRING_EQUAL(p.s.h_ctype, "application/grpc");
    CU_ASSERT_STRING_EQUAL(p.s.h_timeout, "(none)");
    CU_ASSERT_STRING_EQUAL(p.s.h_ua, "ward-test/1");
    CU_ASSERT_TRUE(p.s.h_missing_is_null);
    CU_ASSERT_EQUAL(r.status, WARD_GRPC_OK);
    rec_free(&r);

    /* Names the engine owns, upper case, control characters: refused before anything is sent. */
    ward_grpc_header_t bad[][1] = {
        {{"X-Tenant", "a"}}, {{"te", "trailers"}},      {{"content-type", "text/plain"}},
        {{":path", "/x"}},   {{"x-ok", "line\nbreak"}}, {{"", "v"}}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        call = NULL;
        CU_ASSERT_EQUAL(
            ward_grpc_call_start(p.cli.g, "/test.Echo/Unary", NULL, bad[i], 1, 0, 0, &r, &call),
            WARD_EINVAL);
        CU_ASSERT_PTR_NULL(call);
    }
    CU_ASSERT_EQUAL(ward_grpc_call_start(p.cli.g, "no-slash", NULL, NULL, 0, 0, 0, &r, &call),
                    WARD_EINVAL);

    /* Request headers over 16 KiB: refused before on_call sees them. */
    char *huge = malloc(20000);
    memset(huge, 'a', 19999);
    huge[19999] = '\0';
    ward_grpc_header_t hh[] = {{"x-huge", huge}};
    int calls_before = p.s.on_calls;
    memset(&r, 0, sizeof(r));
    CU_ASSERT_EQUAL(ward_grpc_call_start(p.cli.g, "/test.Echo/Unary", NULL, hh, 1, 0, 0, &r, &call),
                    0);
    CU_ASSERT_EQUAL(ward_grpc_call_close_send(call), 0);
    pump(&p);
    CU_ASSERT_EQUAL(p.s.on_calls, calls_before);
    CU_ASSERT_EQUAL(r.closed, 1);
    CU_ASSERT_EQUAL(r.status, WARD_GRPC_RESOURCE_EXHAUSTED);
    CU_ASSERT_EQUAL(p.srv.rc, 0);
    free(huge);
    rec_free(&r);
    pair_free(&p);
}

static void test_timeout(void)
{
    CU_ASSERT_EQUAL(ward_grpc_timeout_parse("1H"), 3600000);
    CU_ASSERT_EQUAL(ward_grpc_timeout_parse("2M"), 120000);
    CU_ASSERT_EQUAL(ward_grpc_timeout_parse("5S"), 5000);
    CU_ASSERT_EQUAL(ward_grpc_timeout_parse("200m"), 200);
    CU_ASSERT_EQUAL(ward_grpc_timeout_parse("100u"), 1); /* rounded up */
    CU_ASSERT_EQUAL(ward_grpc_timeout_parse("1000u"), 1);
    CU_ASSERT_EQUAL(ward_grpc_timeout_parse("1001u"), 2);
    CU_ASSERT_EQUAL(ward_grpc_timeout_parse("3n"), 1);
    CU_ASSERT_EQUAL(ward_grpc_timeout_parse("0m"), 0);
    CU_ASSERT_EQUAL(ward_grpc_timeout_parse("99999999H"), 99999999LL * 3600000);
    const char *bad[] = {"",    "m",   "10",   "10x", "123456789m", "-1m",  " 1m",
                         "1 m", "1mm", "1.5S", "1h",  "1s",         "0x1S", "+5S"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CU_ASSERT_EQUAL(ward_grpc_timeout_parse(bad[i]), -1);
    CU_ASSERT_EQUAL(ward_grpc_timeout_parse(NULL), -1);

    char buf[16];
    ward_grpc_timeout_format(100, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "100m");
    ward_grpc_timeout_format(99999999, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "99999999m");
    ward_grpc_timeout_format(100000000, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "100000S");
    ward_grpc_timeout_format(100000001, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "100001S"); /* rounded up */
    ward_grpc_timeout_format(UINT64_MAX, buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "99999999H");
    uint64_t samples[] = {1, 999, 123456789, 7200000000ULL, 359999996400000ULL};
    for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
        ward_grpc_timeout_format(samples[i], buf, sizeof(buf));
        int64_t back = ward_grpc_timeout_parse(buf);
        CU_ASSERT(back >= (int64_t)samples[i]);
        CU_ASSERT(strlen(buf) <= 9);
    }
}

static void test_garbage(void)
{
    static const char http1[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    long live0 = t_live;
    const uint8_t *out;
    srv_t s;
    memset(&s, 0, sizeof(s));

    ward_grpc_conn_t *srv = ward_grpc_conn_new(1, &srv_cb, NULL, &s);
    CU_ASSERT_PTR_NOT_NULL_FATAL(srv);
    CU_ASSERT_EQUAL(ward_grpc_conn_recv(srv, (const uint8_t *)http1, sizeof(http1) - 1),
                    WARD_EPARSE);
    CU_ASSERT_FALSE(ward_grpc_conn_alive(srv));
    CU_ASSERT_FALSE(ward_grpc_conn_finished(srv)); /* the GOAWAY is still to be sent */
    while (ward_grpc_conn_send(srv, &out) > 0)
        ;
    CU_ASSERT_TRUE(ward_grpc_conn_finished(srv));
    CU_ASSERT_EQUAL(ward_grpc_conn_recv(srv, (const uint8_t *)"more", 4), WARD_EPARSE);
    ward_grpc_conn_free(srv);

    /* One byte at a time: the first byte that breaks the preface is reported. */
    srv = ward_grpc_conn_new(1, &srv_cb, NULL, &s);
    CU_ASSERT_EQUAL(ward_grpc_conn_recv(srv, (const uint8_t *)"PRI * HTTP/2.0\r\n", 16), 0);
    CU_ASSERT_EQUAL(ward_grpc_conn_recv(srv, (const uint8_t *)"\r", 1), 0);
    CU_ASSERT_EQUAL(ward_grpc_conn_recv(srv, (const uint8_t *)"X", 1), WARD_EPARSE);
    ward_grpc_conn_free(srv);

    /* A valid preface, then a DATA frame on stream 0: GOAWAY(PROTOCOL_ERROR) and WARD_EPARSE. */
    ward_grpc_conn_t *cli = ward_grpc_conn_new(0, &cli_cb, NULL, NULL);
    srv = ward_grpc_conn_new(1, &srv_cb, NULL, &s);
    size_t n;
    while ((n = ward_grpc_conn_send(cli, &out)) > 0)
        CU_ASSERT_EQUAL(ward_grpc_conn_recv(srv, out, n), 0);
    static const uint8_t bad_frame[] = {0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff};
    CU_ASSERT_EQUAL(ward_grpc_conn_recv(srv, bad_frame, sizeof(bad_frame)), WARD_EPARSE);
    CU_ASSERT_FALSE(ward_grpc_conn_alive(srv));
    int goaway = 0;
    while ((n = ward_grpc_conn_send(srv, &out)) > 0) {
        for (size_t off = 0; off + 9 <= n;
             off += 9 + ((size_t)out[off] << 16 | (size_t)out[off + 1] << 8 | out[off + 2]))
            if (out[off + 3] == 7) goaway = 1;
        ward_grpc_conn_recv(cli, out, n);
    }
    CU_ASSERT_TRUE(goaway);
    CU_ASSERT_FALSE(ward_grpc_conn_alive(cli)); /* the client saw the GOAWAY */
    ward_grpc_conn_free(cli);
    ward_grpc_conn_free(srv);

    /* Random bytes after a valid preface: never a crash. */
    for (unsigned seed = 1; seed <= 50; seed++) {
        cli = ward_grpc_conn_new(0, &cli_cb, NULL, NULL);
        srv = ward_grpc_conn_new(1, &srv_cb, NULL, &s);
        while ((n = ward_grpc_conn_send(cli, &out)) > 0)
            ward_grpc_conn_recv(srv, out, n);
        uint8_t junk[512];
        srand(seed);
        for (size_t i = 0; i < sizeof(junk); i++)
            junk[i] = (uint8_t)rand();
        int rc = ward_grpc_conn_recv(srv, junk, sizeof(junk));
        CU_ASSERT(rc == 0 || rc == WARD_EPARSE);
        while (ward_grpc_conn_send(srv, &out) > 0)
            ;
        ward_grpc_conn_free(cli);
        ward_grpc_conn_free(srv);
    }
    CU_ASSERT_EQUAL(s.on_calls, 0);
    CU_ASSERT_EQUAL(t_live, live0);
}

static void test_cancel(void)
{
    pair_t p;
    rec_t r;
    pair_init(&p, NULL, NULL);
    ward_grpc_call_t *call = start(&p, "/test.Echo/Stream", &r);
    CU_ASSERT_EQUAL(send_str(call, "one"), 0);
    pump(&p);
    CU_ASSERT_EQUAL(r.nmsgs, 1);
    ward_grpc_call_cancel(call);
    CU_ASSERT_EQUAL(send_str(call, "two"), WARD_EINVAL);
    ward_grpc_call_cancel(call); /* twice is harmless */
    pump(&p);
    CU_ASSERT_EQUAL(r.closed, 1);
    CU_ASSERT_EQUAL(r.status, WARD_GRPC_CANCELLED);
    CU_ASSERT_EQUAL(p.s.recs[0].closed, 1);
    CU_ASSERT_EQUAL(p.s.recs[0].status, WARD_GRPC_CANCELLED);
    rec_free(&r);

    /* The server cancels: the client sees CANCELLED (RST_STREAM CANCEL from a server). */
    call = start(&p, "/test.Echo/Stream", &r);
    CU_ASSERT_EQUAL(send_str(call, "one"), 0);
    pump(&p);
    ward_grpc_call_cancel(p.s.recs[1].call);
    pump(&p);
    CU_ASSERT_EQUAL(r.closed, 1);
    CU_ASSERT_EQUAL(r.status, WARD_GRPC_CANCELLED);
    CU_ASSERT_EQUAL(p.s.recs[1].closed, 1);
    CU_ASSERT_EQUAL(p.s.recs[1].status, WARD_GRPC_CANCELLED);
    rec_free(&r);
    pair_free(&p);
}

/* Engines freed with calls open, messages queued and a half-reassembled message: every open call
 * gets on_close(UNAVAILABLE) once, no other callback runs, and nothing leaks. */
static void test_free_open_calls(void)
{
    pair_t p;
    rec_t r1, r2, r3;
    long live0 = t_live;
    pair_init(&p, NULL, NULL);
    p.s.echo = 0;
    ward_grpc_call_t *c1 = start(&p, "/test.Echo/Silent", &r1);
    ward_grpc_call_t *c2 = start(&p, "/test.Echo/Silent", &r2);
    CU_ASSERT_EQUAL(send_str(c1, "a"), 0);
    CU_ASSERT_EQUAL(send_str(c2, "b"), 0);
    pump(&p);
    CU_ASSERT_EQUAL(p.s.nrecs, 2);
    /* Half a message on the wire to the server, and unsent messages on both sides. */
    uint8_t big[40000];
    memset(big, 'q', sizeof(big));
    CU_ASSERT_EQUAL(ward_grpc_call_send(c1, big, sizeof(big)), 0);
    const uint8_t *out;
    size_t n = ward_grpc_conn_send(p.cli.g, &out);
    CU_ASSERT(n > 0);
    ward_grpc_conn_recv(p.srv.g, out, n);
    CU_ASSERT_EQUAL(ward_grpc_call_send(p.s.recs[0].call, big, sizeof(big)), 0);
    start(&p, "/test.Echo/Silent", &r3); /* never sent */
    CU_ASSERT_TRUE(ward_grpc_call_queued(c1) > 0);
    pair_free(&p);
    CU_ASSERT_EQUAL(r1.closed, 1);
    CU_ASSERT_EQUAL(r1.status, WARD_GRPC_UNAVAILABLE);
    CU_ASSERT_EQUAL(r2.closed, 1);
    CU_ASSERT_EQUAL(r3.closed, 1);
    CU_ASSERT_EQUAL(r3.status, WARD_GRPC_UNAVAILABLE);
    CU_ASSERT_EQUAL(p.s.recs[0].closed, 1);
    CU_ASSERT_EQUAL(p.s.recs[0].status, WARD_GRPC_UNAVAILABLE);
    CU_ASSERT_EQUAL(p.s.recs[1].closed, 1);
    CU_ASSERT_EQUAL(t_live, live0);
    rec_free(&r1);
    rec_free(&r2);
    rec_free(&r3);
}

/* Many calls at once over one connection, more than the server's concurrency limit. */
static void test_many_calls(void)
{
    enum { N = 30 };
    ward_grpc_options_t sopts = {.max_concurrent_calls = 8};
    pair_t p;
    static rec_t r[N];
    char msg[32];
    pair_init(&p, NULL, &sopts);
    pump(&p); /* SETTINGS exchanged: the client knows the limit */
    for (int i = 0; i < N; i++) {
        ward_grpc_call_t *call = NULL;
        memset(&r[i], 0, sizeof(r[i]));
        CU_ASSERT_EQUAL(
            ward_grpc_call_start(p.cli.g, "/test.Echo/Many", NULL, NULL, 0, 0, 0, &r[i], &call), 0);
        snprintf(msg, sizeof(msg), "m%d", i);
        CU_ASSERT_EQUAL(send_str(call, msg), 0);
        CU_ASSERT_EQUAL(ward_grpc_call_close_send(call), 0);
    }
    pump(&p);
    for (int i = 0; i < N; i++) {
        snprintf(msg, sizeof(msg), "m%d", i);
        CU_ASSERT_EQUAL(r[i].status, WARD_GRPC_OK);
        CU_ASSERT_STRING_EQUAL(r[i].text[0], msg);
        rec_free(&r[i]);
    }
    CU_ASSERT_EQUAL(p.s.on_calls, N);

    /* A request still waiting for a free stream slot is cancelled before it is ever sent. */
    rec_t q[10];
    ward_grpc_call_t *qc[10];
    for (int i = 0; i < 10; i++) {
        memset(&q[i], 0, sizeof(q[i]));
        CU_ASSERT_EQUAL(
            ward_grpc_call_start(p.cli.g, "/test.Echo/Many", NULL, NULL, 0, 0, 0, &q[i], &qc[i]),
            0);
        CU_ASSERT_EQUAL(ward_grpc_call_close_send(qc[i]), 0);
    }
    ward_grpc_call_cancel(qc[9]);
    pump(&p);
    for (int i = 0; i < 9; i++)
        CU_ASSERT_EQUAL(q[i].status, WARD_GRPC_OK);
    CU_ASSERT_EQUAL(q[9].closed, 1);
    CU_ASSERT_EQUAL(q[9].status, WARD_GRPC_CANCELLED);
    CU_ASSERT_EQUAL(p.s.on_calls, N + 9);
    pair_free(&p);
}

void ward_unit_register(void)
{
    ward_alloc_install(&t_alloc);
    WARD_SUITE("grpc", WARD_TEST(test_unary), WARD_TEST(test_streaming),
               WARD_TEST(test_one_byte_recv), WARD_TEST(test_large), WARD_TEST(test_oversized),
               WARD_TEST(test_compressed), WARD_TEST(test_refused), WARD_TEST(test_missing_status),
               WARD_TEST(test_request_validation), WARD_TEST(test_deadline_client),
               WARD_TEST(test_deadline_server), WARD_TEST(test_ping), WARD_TEST(test_goaway),
               WARD_TEST(test_headers), WARD_TEST(test_timeout), WARD_TEST(test_garbage),
               WARD_TEST(test_cancel), WARD_TEST(test_free_open_calls), WARD_TEST(test_many_calls));
}
