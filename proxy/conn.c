/* conn.c — one proxied connection: a downstream half (the side that connected to us) and an
 * upstream half (the side we connect to), one of which speaks TLS:
 *
 *   inbound:  peer sidecar ==mTLS==> [down | ward | up] --plain--> app
 *   outbound: app --plain--> [down | ward | up] ==mTLS==> peer sidecar
 *
 * Phases: accept -> (outbound: connect -> TLS handshake) | (inbound: TLS handshake -> connect)
 * -> proxying -> closing. Each half is a uv_poll_t on a non-blocking socket that we read and write
 * ourselves (plain read/write, or SSL_read/SSL_write on the fd through lib/tls): no memory BIO, no
 * copy between the socket and the one 64 KiB chunk in flight per direction. A direction reads only
 * when its chunk is empty, so a slow reader stops its writer (backpressure both ways), and an idle
 * connection holds no chunk. EOF on one side becomes a FIN / close_notify on the other
 * (half-close). Memory is freed only when the last libuv handle has closed.
 *
 * This file also chooses the protocol (ALPN between sidecars, sniffing on plain sides), decides
 * opaque TCP connections, and hands HTTP connections to their codec (http1.c, http2.c); see
 * conn.h for the phases and the services the codecs use. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "conn.h"
#include "sniff.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/log.h"

#define WARD_PUMP_ROUNDS 16

/* <linux/netfilter_ipv4.h> and <linux/netfilter_ipv6/ip6_tables.h> clash with the libc headers;
 * the two option numbers are stable kernel ABI. */
#define WARD_SO_ORIGINAL_DST      80
#define WARD_IP6T_SO_ORIGINAL_DST 80

static const char *const ward__state_names[] = {"connecting", "handshake", "sniffing",
                                                "proxying",   "lingering", "closing"};

static void ward__on_io(uv_poll_t *h, int status, int events);
static void ward__proxy(ward_conn_t *c, ward_side_t *fired, int events);

ward_conn_t *ward_conn_next(ward_conn_t *c)
{
    return c->next;
}

static ward_side_t *ward__tls_side(ward_conn_t *c)
{
    return c->dir == WARD_DIR_INBOUND ? &c->down : &c->up;
}

void ward_conn_log_ctx(ward_logline_t *l, ward_conn_t *c)
{
    char a[64];
    ward_log_u64(l, "conn", c->id);
    ward_log_str(l, "direction", ward_dir_name(c->dir));
    ward_log_str(l, "phase", ward__state_names[c->state]);
    if (c->state == WARD_CS_PROXYING) ward_log_str(l, "protocol", ward_proto_name(c->proto));
    if (c->peer_addr.ss_family != AF_UNSPEC)
        ward_log_str(l, "downstream",
                     ward_addr_format((const struct sockaddr *)&c->peer_addr, a, sizeof(a)));
    ward_log_str(l, "upstream",
                 ward_addr_format((const struct sockaddr *)&c->target.ss, a, sizeof(a)));
    if (c->peer.peer_id) ward_log_str(l, "peer_identity", c->peer.peer_id);
    if (c->expected_id) ward_log_str(l, "expected_identity", c->expected_id);
}

/* --- teardown ------------------------------------------------------------------------------- */

static void ward__conn_free(ward_conn_t *c)
{
    ward_worker_t *w = c->w;
    ward_logline_t l;
    uint64_t ms = uv_now(&w->loop) - c->started;
    ward_stats_observe_conn(&w->stats, (ward_dir_t)c->dir, ms);
    /* Access log: every connection with --access-log all (debug level otherwise). */
    int all = w->shared->cfg->access_log == WARD_ACCESS_LOG_ALL;
    if (ward_log_begin(&l, all ? WARD_LOG_INFO : WARD_LOG_DEBUG, "conn_closed")) {
        ward_conn_log_ctx(&l, c);
        ward_log_u64(&l, "bytes_to_upstream", c->bytes[WARD_FLOW_TO_UPSTREAM]);
        ward_log_u64(&l, "bytes_to_downstream", c->bytes[WARD_FLOW_TO_DOWNSTREAM]);
        ward_log_u64(&l, "duration_ms", ms);
        ward_log_u64(&l, "requests_allowed", c->allowed);
        ward_log_u64(&l, "requests_denied", c->denied);
        ward_log_end(&l);
    }
    if (c->codec != NULL) c->codec->free(c);
    ward_pool_put(&w->pool, c->pre);
    ward_free(c->xfcc);
    ward_free(c->expected_own);
    ward_tls_free(c->down.ssl);
    ward_tls_free(c->up.ssl);
    if (c->down.ssl) ward_tls_io_release(&c->down.io);
    if (c->up.ssl) ward_tls_io_release(&c->up.io);
    if (c->down.fd >= 0) close(c->down.fd);
    if (c->up.fd >= 0) close(c->up.fd);
    ward_pool_put(&w->pool, c->buf[0]);
    ward_pool_put(&w->pool, c->buf[1]);
    ward_tls_peer_reset(&c->peer);
    ward_identity_unref(c->ident);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    ward_counter_sub(&w->stats.conns_open[c->dir], 1);
    ward_free(c);
    ward_worker_conn_removed(w, NULL);
}

static void ward__on_closed(uv_handle_t *h)
{
    ward_conn_t *c = h->data;
    if (--c->handles == 0) ward__conn_free(c);
}

void ward_conn_close(ward_conn_t *c, int abortive)
{
    if (c->state == WARD_CS_CLOSING) return;
    c->state = WARD_CS_CLOSING;
    if (abortive) {
        /* A reset on one side is passed on as a reset, not as a clean end of stream. */
        struct linger lg = {1, 0};
        if (c->down.fd >= 0) setsockopt(c->down.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        if (c->up.fd >= 0) setsockopt(c->up.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    if (c->down.flags & WARD_SF_POLL) uv_close((uv_handle_t *)&c->down.poll, ward__on_closed);
    if (c->up.flags & WARD_SF_POLL) uv_close((uv_handle_t *)&c->up.poll, ward__on_closed);
    uv_close((uv_handle_t *)&c->timer, ward__on_closed);
}

void ward_conn_abort(ward_conn_t *c, const char *why)
{
    ward_logline_t l;
    if (c->state != WARD_CS_CLOSING && ward_log_begin(&l, WARD_LOG_INFO, "conn_aborted")) {
        ward_conn_log_ctx(&l, c);
        ward_log_str(&l, "reason", why);
        ward_log_end(&l);
    }
    ward_conn_close(c, 1);
}

/* --- poll bookkeeping ----------------------------------------------------------------------- */

static int ward__side_init(ward_conn_t *c, ward_side_t *s, int fd)
{
    s->fd = fd;
    int rc = uv_poll_init(&c->w->loop, &s->poll, fd);
    if (rc < 0) return rc;
    s->poll.data = c;
    s->flags |= WARD_SF_POLL;
    c->handles++;
    return 0;
}

void ward_side_set_events(ward_side_t *s, unsigned ev)
{
    if (s->events == ev || !(s->flags & WARD_SF_POLL)) return;
    s->events = (uint8_t)ev;
    if (ev == 0)
        uv_poll_stop(&s->poll);
    else
        uv_poll_start(&s->poll, (int)ev, ward__on_io);
}

static void ward__timer_start(ward_conn_t *c, uv_timer_cb cb, uint64_t ms)
{
    uv_timer_start(&c->timer, cb, ms, 0);
}

/* What s needs from its poll handle to read (want_read) and to write (want_write); TLS may need
 * the opposite direction to make progress. */
unsigned ward_side_wanted(const ward_side_t *s, int want_read, int want_write)
{
    unsigned ev = 0;
    if (want_read && !(s->flags & WARD_SF_RD_EOF))
        ev |= (s->flags & WARD_SF_RD_WANT_W) ? UV_WRITABLE : UV_READABLE;
    if (want_write || (s->flags & WARD_SF_SHUT_PEND))
        ev |= (s->flags & WARD_SF_WR_WANT_R) ? UV_READABLE : UV_WRITABLE;
    return ev;
}

/* --- byte movement -------------------------------------------------------------------------- */

ssize_t ward_side_read(ward_side_t *s, char *buf, size_t n)
{
    if (s->ssl != NULL) {
        ssize_t r = ward_tls_read(s->ssl, buf, n);
        if (r == WARD_IO_WANT_WRITE)
            s->flags |= WARD_SF_RD_WANT_W;
        else
            s->flags &= (uint8_t)~WARD_SF_RD_WANT_W;
        return r;
    }
    for (;;) {
        ssize_t r = read(s->fd, buf, n);
        if (r >= 0) {
            if ((size_t)r < n) s->flags |= WARD_SF_DRAINED;
            return r; /* 0 == WARD_IO_EOF */
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN) {
            s->flags |= WARD_SF_DRAINED;
            return WARD_IO_WANT_READ;
        }
        return WARD_IO_ERROR;
    }
}

/* Bytes already received from s that no poll event will announce. */
int ward_side_buffered(const ward_side_t *s)
{
    return s->ssl != NULL && ward_tls_buffered(s->ssl, &s->io);
}

/* The last read from s found the kernel buffer empty: wait for the poll event rather than spend a
 * system call on EAGAIN. */
int ward_side_drained(const ward_side_t *s)
{
    return s->ssl != NULL ? s->io.drained : (s->flags & WARD_SF_DRAINED) != 0;
}

void ward_side_readable(ward_side_t *s)
{
    s->flags &= (uint8_t)~WARD_SF_DRAINED;
    s->io.drained = 0;
}

ssize_t ward_side_write(ward_side_t *s, const char *buf, size_t n)
{
    if (s->ssl != NULL) {
        ssize_t r = ward_tls_write(s->ssl, buf, n);
        if (r == WARD_IO_WANT_READ)
            s->flags |= WARD_SF_WR_WANT_R;
        else
            s->flags &= (uint8_t)~WARD_SF_WR_WANT_R;
        return r == WARD_IO_EOF ? WARD_IO_ERROR : r;
    }
    for (;;) {
        ssize_t r = send(s->fd, buf, n, MSG_NOSIGNAL);
        if (r >= 0) return r;
        if (errno == EINTR) continue;
        return errno == EAGAIN ? WARD_IO_WANT_WRITE : WARD_IO_ERROR;
    }
}

/* Ends our writing toward s: close_notify (TLS) then FIN. Returns 0, WANT, or ERROR. */
int ward_side_shutdown(ward_side_t *s)
{
    if (s->ssl != NULL) {
        int r = ward_tls_shutdown(s->ssl);
        if (r == WARD_IO_WANT_WRITE || r == WARD_IO_WANT_READ) {
            s->flags |= WARD_SF_SHUT_PEND;
            if (r == WARD_IO_WANT_READ) s->flags |= WARD_SF_WR_WANT_R;
            return r;
        }
        s->flags &= (uint8_t)~WARD_SF_SHUT_PEND;
    }
    shutdown(s->fd, SHUT_WR);
    s->flags |= WARD_SF_WR_SHUT;
    return 0;
}

/* Moves bytes src -> dst through c->buf[flow]. Returns 0, or WARD_IO_ERROR when the connection
 * must be aborted. Stops when either side would block, or after WARD_PUMP_ROUNDS chunks so one
 * busy connection cannot starve the loop (level-triggered polling brings it back). */
static int ward__pump(ward_conn_t *c, ward_side_t *src, ward_side_t *dst, ward_flow_t flow,
                      ward_side_t **failed)
{
    ward_worker_t *w = c->w;
    ward_chunk_t **bp = &c->buf[flow];
    for (int round = 0;; round++) {
        ward_chunk_t *b = *bp;
        if (b != NULL && b->off < b->len) {
            ssize_t n = ward_side_write(dst, b->data + b->off, b->len - b->off);
            if (n == WARD_IO_WANT_READ || n == WARD_IO_WANT_WRITE) return 0;
            if (n < 0) {
                *failed = dst;
                return WARD_IO_ERROR;
            }
            b->off += (size_t)n;
            if (b->off < b->len) continue;
        }
        if (b != NULL) {
            ward_pool_put(&w->pool, b);
            *bp = NULL;
        }
        if (src->flags & WARD_SF_RD_EOF) {
            if (!(dst->flags & WARD_SF_WR_SHUT)) {
                if (ward_side_shutdown(dst) == WARD_IO_ERROR) {
                    *failed = dst;
                    return WARD_IO_ERROR;
                }
            }
            return 0;
        }
        /* Buffered bytes are always drained (at most one chunk); a new system call only while
         * the round budget lasts and the socket may hold more. */
        if (!ward_side_buffered(src) && (round >= WARD_PUMP_ROUNDS || ward_side_drained(src)))
            return 0;
        b = ward_pool_get(&w->pool);
        if (b == NULL) {
            *failed = src;
            return WARD_IO_ERROR;
        }
        ssize_t n = ward_side_read(src, b->data, WARD_CHUNK_SIZE);
        if (n > 0) {
            b->len = (size_t)n;
            *bp = b;
            ward_conn_count_bytes(c, flow, (size_t)n);
            src->flags |= WARD_SF_GOT_BYTES;
            continue;
        }
        ward_pool_put(&w->pool, b);
        if (n == WARD_IO_EOF) {
            src->flags |= WARD_SF_RD_EOF;
            continue;
        }
        if (n == WARD_IO_WANT_READ || n == WARD_IO_WANT_WRITE) return 0;
        *failed = src;
        return WARD_IO_ERROR;
    }
}

/* What side s needs from its poll handle: readable while its inbound chunk is empty, writable while
 * its outbound chunk (or a close_notify) is pending; TLS may swap either. */
static unsigned ward__wanted(ward_side_t *s, const ward_chunk_t *from_s, const ward_chunk_t *to_s)
{
    return ward_side_wanted(s, ward_chunk_pending(from_s) == 0, ward_chunk_pending(to_s) > 0);
}

static int ward__flow_done(const ward_side_t *src, const ward_side_t *dst, const ward_chunk_t *b)
{
    return (src->flags & WARD_SF_RD_EOF) && ward_chunk_pending(b) == 0 &&
           (dst->flags & WARD_SF_WR_SHUT);
}

/* A TLS error after our handshake completed and before the peer sent anything: in TLS 1.3 this is
 * where a server's refusal of our client certificate arrives. */
static void ward__log_io_error(ward_conn_t *c, ward_side_t *failed)
{
    ward_logline_t l;
    if (failed->ssl != NULL && !(failed->flags & WARD_SF_GOT_BYTES)) {
        const char *detail = NULL;
        ward_tls_reason_t r = ward_tls_classify(failed->ssl, &c->peer, 0, &detail);
        if (c->peer.by_peer) ward_counter_add(&c->w->stats.refused_by_peer[c->dir][r], 1);
        if (ward_log_begin(&l, WARD_LOG_WARN, "handshake_rejected_by_peer")) {
            ward_conn_log_ctx(&l, c);
            ward_log_str(&l, "reason", ward_tls_reason_name(r));
            ward_log_str(&l, "detail", detail);
            ward_log_end(&l);
        }
        return;
    }
    if (ward_log_begin(&l, WARD_LOG_DEBUG, "conn_reset")) {
        ward_conn_log_ctx(&l, c);
        ward_log_str(&l, "side", failed == &c->down ? "downstream" : "upstream");
        ward_log_end(&l);
    }
}

static void ward__proxy(ward_conn_t *c, ward_side_t *fired, int events)
{
    ward_side_t *d = &c->down, *u = &c->up;
    ward_chunk_t **b = c->buf;
    /* Pump only the directions this event can move: reading from the side that fired, writing to
     * it. `fired` NULL means both (first entry into the phase). */
    int do_up = 1, do_down = 1;
    if (fired != NULL && (events & (UV_READABLE | UV_DISCONNECT))) ward_side_readable(fired);
    if (fired != NULL) {
        int rd = (events & (UV_READABLE | UV_DISCONNECT)) != 0, wr = (events & UV_WRITABLE) != 0;
        int src_up = fired == d, wr_want_r = (fired->flags & WARD_SF_WR_WANT_R) != 0;
        int rd_want_w = (fired->flags & WARD_SF_RD_WANT_W) != 0;
        int read_from_fired = rd || (wr && rd_want_w);
        int write_to_fired = wr || (rd && wr_want_r);
        do_up = src_up ? read_from_fired : write_to_fired;
        do_down = src_up ? write_to_fired : read_from_fired;
    }
    ward_side_t *failed = NULL;
    if ((do_up && ward__pump(c, d, u, WARD_FLOW_TO_UPSTREAM, &failed) < 0) ||
        (do_down && ward__pump(c, u, d, WARD_FLOW_TO_DOWNSTREAM, &failed) < 0)) {
        ward__log_io_error(c, failed);
        ward_conn_close(c, 1);
        return;
    }
    if (ward__flow_done(d, u, b[WARD_FLOW_TO_UPSTREAM]) &&
        ward__flow_done(u, d, b[WARD_FLOW_TO_DOWNSTREAM])) {
        ward_conn_close(c, 0);
        return;
    }
    ward_side_set_events(d, ward__wanted(d, b[WARD_FLOW_TO_UPSTREAM], b[WARD_FLOW_TO_DOWNSTREAM]));
    ward_side_set_events(u, ward__wanted(u, b[WARD_FLOW_TO_DOWNSTREAM], b[WARD_FLOW_TO_UPSTREAM]));
}

/* --- services for the codecs ------------------------------------------------------------ */

const char *ward_proto_name(ward_proto_t p)
{
    static const char *const names[] = {"tcp", "http1", "http2"};
    return (unsigned)p < WARD_PROTO_COUNT ? names[p] : "tcp";
}

const char *ward_proto_alpn(ward_proto_t p)
{
    static const char *const names[] = {"ward-tcp", "http/1.1", "h2"};
    return (unsigned)p < WARD_PROTO_COUNT ? names[p] : "ward-tcp";
}

void ward_conn_touch(ward_conn_t *c)
{
    c->last_active = uv_now(&c->w->loop);
}

void ward_conn_count_bytes(ward_conn_t *c, ward_flow_t flow, size_t n)
{
    c->bytes[flow] += (uint64_t)n;
    ward_counter_add(&c->w->stats.bytes[c->dir][flow], (uint64_t)n);
    c->last_active = uv_now(&c->w->loop);
}

int ward_outq_append(ward_conn_t *c, ward_outq_t *q, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ward_chunk_t *t = q->tail;
        if (t == NULL || t->len == WARD_CHUNK_SIZE) {
            t = ward_pool_get(&c->w->pool);
            if (t == NULL) return WARD_ENOMEM;
            t->next = NULL;
            if (q->tail != NULL)
                q->tail->next = t;
            else
                q->head = t;
            q->tail = t;
        }
        size_t n = WARD_CHUNK_SIZE - t->len;
        if (n > len) n = len;
        memcpy(t->data + t->len, p, n);
        t->len += n;
        p += n;
        len -= n;
        q->bytes += n;
    }
    return 0;
}

int ward_outq_flush(ward_conn_t *c, ward_outq_t *q, ward_side_t *s, ward_flow_t flow)
{
    while (q->head != NULL) {
        ward_chunk_t *h = q->head;
        if (h->off < h->len) {
            ssize_t n = ward_side_write(s, h->data + h->off, h->len - h->off);
            if (n == WARD_IO_WANT_READ || n == WARD_IO_WANT_WRITE) return (int)n;
            if (n <= 0) return WARD_IO_ERROR;
            h->off += (size_t)n;
            q->bytes -= (size_t)n;
            ward_conn_count_bytes(c, flow, (size_t)n);
            if (h->off < h->len) continue;
        }
        q->head = h->next;
        if (q->head == NULL) q->tail = NULL;
        ward_pool_put(&c->w->pool, h);
    }
    return 0;
}

void ward_outq_clear(ward_conn_t *c, ward_outq_t *q)
{
    while (q->head != NULL) {
        ward_chunk_t *h = q->head;
        q->head = h->next;
        ward_pool_put(&c->w->pool, h);
    }
    q->tail = NULL;
    q->bytes = 0;
}

/* The worker's view of the current policy: refreshed when the store's generation moved. */
static const ward_authz_t *ward__authz(ward_worker_t *w)
{
    ward_policy_store_t *ps = w->shared->policy;
    uint64_t gen = ward_policy_store_gen(ps);
    if (w->authz == NULL || gen != w->authz_gen) {
        ward_authz_unref(w->authz);
        w->authz = ward_policy_store_get(ps);
        w->authz_gen = gen;
    }
    return w->authz;
}

ward_authz_decision_t ward_conn_authorize(ward_conn_t *c, ward_authz_request_t *req,
                                          ward_authz_result_t *res)
{
    ward_worker_t *w = c->w;
    ward_logline_t l;
    time_t now = time(NULL);
    req->peer_id = c->peer.peer_id;
    req->port = c->port;
    req->source =
        c->peer_addr.ss_family != AF_UNSPEC ? (const struct sockaddr *)&c->peer_addr : NULL;
    req->hour = (int)((now % 86400) / 3600);
    ward_authz_eval(ward__authz(w), req, res);
    ward_stats_count_decision(&w->stats, (ward_dir_t)c->dir, res->decision == WARD_AUTHZ_ALLOW,
                              res->policy, c->peer.peer_id);
    int denied = res->decision != WARD_AUTHZ_ALLOW;
    if (denied)
        c->denied++;
    else
        c->allowed++;
    if ((denied || res->audit_policy != NULL) &&
        w->shared->cfg->access_log != WARD_ACCESS_LOG_OFF &&
        ward_log_begin(&l, denied ? WARD_LOG_WARN : WARD_LOG_INFO,
                       denied ? (req->method ? "request_denied" : "connection_denied")
                              : "request_audited")) {
        ward_conn_log_ctx(&l, c);
        ward_log_str(&l, "reason", denied ? "policy_denied" : "audit");
        ward_log_str(&l, "decision_reason", res->reason);
        if (res->policy) ward_log_str(&l, "policy", res->policy);
        if (res->rule >= 0) ward_log_u64(&l, "rule", (uint64_t)res->rule);
        if (res->audit_policy) ward_log_str(&l, "audit_policy", res->audit_policy);
        ward_log_u64(&l, "port", c->port);
        if (req->method) {
            ward_log_str(&l, "method", req->method);
            char path[512];
            size_t n = req->path_len < sizeof(path) - 1 ? req->path_len : sizeof(path) - 1;
            memcpy(path, req->path, n);
            path[n] = '\0';
            ward_log_str(&l, "path", path);
        }
        ward_log_end(&l);
    }
    return res->decision;
}

void ward_conn_count_request(ward_conn_t *c, ward_req_proto_t proto, unsigned status)
{
    unsigned cls = status >= 100 && status < 600 ? status / 100 : 0;
    if ((unsigned)proto >= WARD_REQ_COUNT) proto = WARD_REQ_HTTP1;
    ward_counter_add(&c->w->stats.requests[c->dir][proto][cls], 1);
}

void ward_conn_request_done(ward_conn_t *c, ward_req_proto_t proto, const ward_request_log_t *r)
{
    static const char *const protos[] = {"http1", "http2", "grpc"};
    ward_worker_t *w = c->w;
    ward_logline_t l;
    unsigned cls = r->status >= 100 && r->status < 600 ? r->status / 100 : 0;
    if ((unsigned)proto >= WARD_REQ_COUNT) proto = WARD_REQ_HTTP1;
    uint64_t now = uv_now(&w->loop);
    uint64_t ms = now >= r->start_ms ? now - r->start_ms : 0;
    ward_conn_count_request(c, proto, r->status);
    /* uv_now has millisecond resolution: a sub-millisecond request is observed as 0.5 ms. */
    ward_stats_observe_request(&w->stats, (ward_dir_t)c->dir, (unsigned)proto, cls,
                               ms ? ms * 1000 : 500);
    if (w->shared->cfg->access_log != WARD_ACCESS_LOG_ALL) return;
    if (!ward_log_begin(&l, WARD_LOG_INFO, "request")) return;
    ward_conn_log_ctx(&l, c);
    ward_log_str(&l, "protocol", protos[proto]);
    if (r->method) ward_log_str(&l, "method", r->method);
    if (r->path) {
        char path[512];
        size_t n = r->path_len < sizeof(path) - 1 ? r->path_len : sizeof(path) - 1;
        memcpy(path, r->path, n);
        path[n] = '\0';
        ward_log_str(&l, "path", path);
    }
    ward_log_u64(&l, "status", r->status);
    if (r->grpc_status) ward_log_str(&l, "grpc_status", r->grpc_status);
    ward_log_str(&l, "decision", r->denied ? "deny" : "allow");
    ward_log_u64(&l, "bytes_in", r->bytes_in);
    ward_log_u64(&l, "bytes_out", r->bytes_out);
    ward_log_u64(&l, "duration_ms", ms);
    ward_log_end(&l);
}

int ward_conn_render(ward_conn_t *c, ward_strbuf_t *o, const char *peer)
{
    char a[64];
    int rc = 0;
    if (c->state == WARD_CS_CLOSING) return 0;
    if (peer != NULL && (c->peer.peer_id == NULL || strcmp(peer, c->peer.peer_id) != 0)) return 0;
    const ward_side_t *t = ward__tls_side(c);
    uint64_t now = uv_now(&c->w->loop);
    rc |= ward_strbuf_printf(o, "{\"id\":%llu,\"direction\":\"%s\",\"state\":\"%s\",",
                             (unsigned long long)c->id, ward_dir_name(c->dir),
                             ward__state_names[c->state]);
    rc |= ward_strbuf_printf(o, "\"peer_address\":");
    rc |= ward_strbuf_json_str(
        o, c->peer_addr.ss_family != AF_UNSPEC
               ? ward_addr_format((const struct sockaddr *)&c->peer_addr, a, sizeof(a))
               : "");
    rc |= ward_strbuf_printf(o, ",\"listen\":");
    rc |= ward_strbuf_json_str(
        o, ward_addr_format((const struct sockaddr *)&c->map->listen.ss, a, sizeof(a)));
    rc |= ward_strbuf_printf(o, ",\"upstream\":");
    rc |= ward_strbuf_json_str(
        o, ward_addr_format((const struct sockaddr *)&c->target.ss, a, sizeof(a)));
    rc |= ward_strbuf_printf(o, ",\"peer_identity\":");
    rc |=
        c->peer.peer_id ? ward_strbuf_json_str(o, c->peer.peer_id) : ward_strbuf_printf(o, "null");
    const char *alpn = t->ssl ? ward_tls_alpn(t->ssl) : NULL;
    int done = t->ssl != NULL && c->state >= WARD_CS_SNIFFING;
    rc |= ward_strbuf_printf(
        o,
        ",\"tls_version\":\"%s\",\"cipher\":\"%s\",\"alpn\":\"%s\",\"protocol\":\"%s\","
        "\"decision\":\"%s\",\"requests_allowed\":%u,\"requests_denied\":%u,"
        "\"bytes_to_upstream\":%llu,\"bytes_to_downstream\":%llu,\"age_seconds\":%.3f},",
        done ? ward_tls_version(t->ssl) : "", done ? ward_tls_cipher(t->ssl) : "", alpn ? alpn : "",
        c->state == WARD_CS_PROXYING ? ward_proto_name(c->proto) : "",
        c->dir == WARD_DIR_OUTBOUND ? "n/a"
        : c->denied                 ? "deny"
        : c->allowed                ? "allow"
                                    : "pending",
        c->allowed, c->denied, (unsigned long long)c->bytes[WARD_FLOW_TO_UPSTREAM],
        (unsigned long long)c->bytes[WARD_FLOW_TO_DOWNSTREAM], (double)(now - c->started) / 1e3);
    return rc ? WARD_ENOMEM : 1;
}

const char *ward_conn_xfcc(ward_conn_t *c)
{
    static const char hex[] = "0123456789abcdef";
    if (c->xfcc != NULL) return c->xfcc;
    ward_side_t *t = ward__tls_side(c);
    uint8_t h[32];
    if (c->peer.peer_id == NULL || t->ssl == NULL || ward_tls_peer_cert_sha256(t->ssl, h) < 0)
        return NULL;
    const char *self = ward_identity_spiffe_id(c->ident);
    size_t n = 3 + strlen(self) + 6 + 64 + 5 + strlen(c->peer.peer_id) + 1;
    char *v = ward_malloc(n);
    if (v == NULL) return NULL;
    char digest[65];
    for (int i = 0; i < 32; i++) {
        digest[2 * i] = hex[h[i] >> 4];
        digest[2 * i + 1] = hex[h[i] & 15];
    }
    digest[64] = '\0';
    snprintf(v, n, "By=%s;Hash=%s;URI=%s", self, digest, c->peer.peer_id);
    c->xfcc = v;
    return v;
}

/* --- phases --------------------------------------------------------------------------------- */

static void ward__on_idle_timer(uv_timer_t *t)
{
    ward_conn_t *c = t->data;
    uint64_t now = uv_now(&c->w->loop), idle = c->w->shared->cfg->idle_timeout_ms;
    uint64_t quiet = now - c->last_active;
    if (c->head_deadline != 0 && now >= c->head_deadline) {
        ward_counter_add(&c->w->stats.timeouts[c->dir], 1);
        ward_conn_abort(c, "request_head_timeout: the request head did not arrive in time");
        return;
    }
    if (quiet < idle) {
        uint64_t next = idle - quiet;
        if (c->head_deadline != 0 && c->head_deadline - now < next) next = c->head_deadline - now;
        ward__timer_start(c, ward__on_idle_timer, next);
        return;
    }
    ward_counter_add(&c->w->stats.timeouts[c->dir], 1);
    ward_conn_abort(c, "idle timeout");
}

void ward_conn_head_timer(ward_conn_t *c, int on)
{
    if (!on) {
        c->head_deadline = 0;
        return;
    }
    if (c->head_deadline != 0 || c->state != WARD_CS_PROXYING) return;
    uint64_t t = c->w->shared->cfg->request_timeout_ms;
    c->head_deadline = uv_now(&c->w->loop) + t;
    if (uv_timer_get_due_in(&c->timer) > t) ward__timer_start(c, ward__on_idle_timer, t);
}

static void ward__start_proxying(ward_conn_t *c)
{
    c->state = WARD_CS_PROXYING;
    c->last_active = uv_now(&c->w->loop);
    ward__timer_start(c, ward__on_idle_timer, c->w->shared->cfg->idle_timeout_ms);
    ward_counter_add(&c->w->stats.protocols[c->dir][c->proto], 1);
    if (c->codec != NULL) {
        int rc = c->codec->start(c);
        if (rc < 0) ward_conn_abort(c, ward_strerror(rc));
        return;
    }
    /* Opaque: what was read while choosing the protocol is the first chunk toward upstream. */
    if (c->pre != NULL && c->pre->len > 0) {
        c->buf[WARD_FLOW_TO_UPSTREAM] = c->pre;
        c->pre = NULL;
    }
    ward__proxy(c, NULL, 0);
}

static void ward__on_phase_timeout(uv_timer_t *t)
{
    ward_conn_t *c = t->data;
    ward_logline_t l;
    if (c->state == WARD_CS_HANDSHAKE) {
        ward_counter_add(&c->w->stats.handshakes[c->dir][WARD_REASON_TIMEOUT], 1);
        ward_stats_count_peer_handshake(&c->w->stats, (ward_dir_t)c->dir, WARD_REASON_TIMEOUT,
                                        NULL);
        if (ward_log_begin(&l, WARD_LOG_WARN, "handshake_failed")) {
            ward_conn_log_ctx(&l, c);
            ward_log_str(&l, "reason", "timeout");
            ward_log_str(&l, "detail", "TLS handshake did not complete in time");
            ward_log_end(&l);
        }
    } else {
        ward_counter_add(&c->w->stats.upstream_connect_failures[c->dir], 1);
        if (ward_log_begin(&l, WARD_LOG_WARN, "upstream_connect_failed")) {
            ward_conn_log_ctx(&l, c);
            ward_log_str(&l, "error", "connect timeout");
            ward_log_end(&l);
        }
    }
    ward_conn_close(c, 1);
}

static void ward__connect_upstream(ward_conn_t *c);
static void ward__start_handshake(ward_conn_t *c);

/* The protocol is known: outbound connects to the peer sidecar offering it as ALPN; inbound
 * decides an opaque connection now (HTTP is decided per request by the codec), then connects to
 * the app. */
static void ward__protocol_chosen(ward_conn_t *c, ward_proto_t proto)
{
    uv_timer_stop(&c->timer);
    ward_side_set_events(&c->down, 0);
    if (c->pre != NULL && c->pre->len == 0) {
        ward_pool_put(&c->w->pool, c->pre);
        c->pre = NULL;
    }
    c->proto = (uint8_t)proto;
    if (c->dir == WARD_DIR_OUTBOUND) {
        c->peer.alpn = ward_proto_alpn(proto);
        ward__connect_upstream(c);
        return;
    }

    if (proto == WARD_PROTO_HTTP1) {
        c->codec = &ward_codec_http1;
    } else if (proto == WARD_PROTO_HTTP2) {
        c->codec = &ward_codec_http2;
    } else {
        ward_authz_request_t req = {0};
        ward_authz_result_t res;
        if (ward_conn_authorize(c, &req, &res) != WARD_AUTHZ_ALLOW) {
            ward_conn_close(c, 0);
            return;
        }
    }
    ward__connect_upstream(c);
}

static int ward__server_first(const ward_conn_t *c)
{
    const ward_config_t *cfg = c->w->shared->cfg;
    for (size_t i = 0; i < cfg->nserver_first_ports; i++)
        if (cfg->server_first_ports[i] == c->port) return 1;
    return 0;
}

/* Reads the client's first bytes (plain app on outbound, decrypted on inbound) into c->pre until
 * ward__sniff decides. */
static void ward__sniff_step(ward_conn_t *c)
{
    ward_side_t *d = &c->down;
    for (;;) {
        ward_sniff_t r = c->pre != NULL ? ward_sniff(c->pre->data, c->pre->len) : WARD_SNIFF_MORE;
        if (r != WARD_SNIFF_MORE) {
            ward__protocol_chosen(c, r == WARD_SNIFF_HTTP2   ? WARD_PROTO_HTTP2
                                     : r == WARD_SNIFF_HTTP1 ? WARD_PROTO_HTTP1
                                                             : WARD_PROTO_TCP);
            return;
        }
        if ((d->flags & WARD_SF_RD_EOF) && (c->pre == NULL || c->pre->len == 0)) {
            /* The client left without a byte (a probe, a warm-up connection): nothing to carry,
             * nothing to decide. */
            ward_conn_close(c, 0);
            return;
        }
        if ((d->flags & WARD_SF_RD_EOF) || (c->pre != NULL && c->pre->len == WARD_CHUNK_SIZE)) {
            ward__protocol_chosen(c, WARD_PROTO_TCP);
            return;
        }
        if (c->pre == NULL && (c->pre = ward_pool_get(&c->w->pool)) == NULL) {
            ward_conn_abort(c, "out of memory while sniffing");
            return;
        }
        ssize_t n = ward_side_read(d, c->pre->data + c->pre->len, WARD_CHUNK_SIZE - c->pre->len);
        if (n > 0) {
            c->pre->len += (size_t)n;
            ward_conn_count_bytes(c, WARD_FLOW_TO_UPSTREAM, (size_t)n);
            d->flags |= WARD_SF_GOT_BYTES;
            continue;
        }
        if (n == WARD_IO_EOF) {
            d->flags |= WARD_SF_RD_EOF;
            continue;
        }
        if (n == WARD_IO_WANT_READ || n == WARD_IO_WANT_WRITE) {
            ward_side_set_events(d, ward_side_wanted(d, 1, 0));
            return;
        }
        ward__log_io_error(c, d);
        ward_conn_close(c, 1);
        return;
    }
}

static void ward__on_sniff_timeout(uv_timer_t *t)
{
    /* The client has not spoken: a server-speaks-first protocol, carried opaque. */
    ward__protocol_chosen(t->data, WARD_PROTO_TCP);
}

static void ward__start_sniffing(ward_conn_t *c)
{
    if (ward__server_first(c)) {
        ward__protocol_chosen(c, WARD_PROTO_TCP);
        return;
    }
    c->state = WARD_CS_SNIFFING;
    ward__timer_start(c, ward__on_sniff_timeout, c->w->shared->cfg->sniff_timeout_ms);
    ward__sniff_step(c);
}

static int ward__new_session(ward_tls_peer_t *peer, SSL_SESSION *sess)
{
    ward_conn_t *c = ward_container_of(peer, ward_conn_t, peer);
    ward_session_slot_t *slot = &c->w->sessions[c->map_index];
    ward_tls_session_free(slot->sess);
    slot->sess = sess;
    slot->generation = ward_identity_generation(c->ident);
    return 1;
}

static void ward__handshake(ward_conn_t *c)
{
    ward_side_t *t = ward__tls_side(c);
    ward_tls_reason_t reason = WARD_REASON_PROTOCOL;
    const char *detail = NULL;
    ward_logline_t l;

    int r = ward_tls_handshake(t->ssl, &c->peer, &reason, &detail);
    if (r == WARD_IO_WANT_READ || r == WARD_IO_WANT_WRITE) {
        ward_side_set_events(t, r == WARD_IO_WANT_READ ? UV_READABLE : UV_WRITABLE);
        return;
    }
    if (r == 1 && ward_tls_finish(t->ssl, &c->peer) < 0) {
        r = WARD_IO_ERROR;
        reason = c->peer.reason;
        detail = c->peer.detail;
    }
    if (r != 1) {
        /* Counted once in the mesh: by the side that refused. When the peer's alert refused us,
         * that is the other sidecar's refusal; we count it apart. */
        int by_peer = c->peer.by_peer && reason != WARD_REASON_PROTOCOL;
        if (by_peer) {
            ward_counter_add(&c->w->stats.refused_by_peer[c->dir][reason], 1);
        } else {
            ward_counter_add(&c->w->stats.handshakes[c->dir][reason], 1);
            ward_stats_count_peer_handshake(&c->w->stats, (ward_dir_t)c->dir, reason,
                                            c->peer.peer_id);
        }
        if (ward_log_begin(&l, WARD_LOG_WARN,
                           by_peer ? "handshake_rejected_by_peer" : "handshake_failed")) {
            ward_conn_log_ctx(&l, c);
            ward_log_str(&l, "reason", ward_tls_reason_name(reason));
            ward_log_str(&l, "detail", detail);
            ward_log_end(&l);
        }
        ward_conn_close(c, 0);
        return;
    }
    ward_counter_add(&c->w->stats.handshakes[c->dir][WARD_REASON_NONE], 1);
    ward_stats_count_peer_handshake(&c->w->stats, (ward_dir_t)c->dir, WARD_REASON_NONE,
                                    c->peer.peer_id);
    int resumed = ward_tls_session_reused(t->ssl);
    if (resumed) ward_counter_add(&c->w->stats.resumed[c->dir], 1);
    const char *alpn = ward_tls_alpn(t->ssl);
    if (ward_log_begin(&l, WARD_LOG_DEBUG, "handshake_ok")) {
        ward_conn_log_ctx(&l, c);
        ward_log_str(&l, "tls_version", ward_tls_version(t->ssl));
        ward_log_str(&l, "alpn", alpn ? alpn : "");
        ward_log_u64(&l, "resumed", (uint64_t)resumed);
        ward_log_end(&l);
    }
    ward_side_set_events(t, 0);
    if (c->dir == WARD_DIR_OUTBOUND) {
        ward__start_proxying(c);
        return;
    }
    /* Inbound: the caller's sidecar said what it carries; a client without ALPN is sniffed. */
    if (alpn == NULL)
        ward__start_sniffing(c);
    else if (strcmp(alpn, "h2") == 0)
        ward__protocol_chosen(c, WARD_PROTO_HTTP2);
    else if (strcmp(alpn, "http/1.1") == 0)
        ward__protocol_chosen(c, WARD_PROTO_HTTP1);
    else
        ward__protocol_chosen(c, WARD_PROTO_TCP);
}

/* Inbound, before TLS: a caller's first byte must open a TLS handshake record (0x16). Anything
 * else is a plaintext caller: refused (`plaintext_rejected`) in STRICT mode, or carried without
 * mTLS as an unauthenticated caller in PERMISSIVE mode. Returns 1 when TLS may start, 0 when the
 * connection went elsewhere (or waits for bytes). */
static int ward__inbound_peek(ward_conn_t *c)
{
    ward_logline_t l;
    unsigned char b;
    ssize_t n = recv(c->down.fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        ward_side_set_events(&c->down, UV_READABLE);
        return 0;
    }
    if (n <= 0) {
        ward_conn_close(c, n < 0);
        return 0;
    }
    c->peeked = 1;
    if (b == 0x16) return 1;
    if (!c->w->shared->cfg->permissive) {
        ward_counter_add(&c->w->stats.handshakes[c->dir][WARD_REASON_PLAINTEXT_REJECTED], 1);
        ward_stats_count_peer_handshake(&c->w->stats, (ward_dir_t)c->dir,
                                        WARD_REASON_PLAINTEXT_REJECTED, NULL);
        if (ward_log_begin(&l, WARD_LOG_WARN, "handshake_failed")) {
            ward_conn_log_ctx(&l, c);
            ward_log_str(&l, "reason", "plaintext_rejected");
            ward_log_str(&l, "detail",
                         "the caller sent plaintext to a STRICT mTLS inbound (no "
                         "sidecar on its side?)");
            ward_log_end(&l);
        }
        ward_conn_close(c, 0);
        return 0;
    }
    c->plaintext = 1;
    ward_counter_add(&c->w->stats.plaintext[c->dir], 1);
    ward__start_sniffing(c);
    return 0;
}

static void ward__start_handshake(ward_conn_t *c)
{
    ward_side_t *t = ward__tls_side(c);
    int is_server = c->dir == WARD_DIR_INBOUND;
    c->peer.expected_id = c->expected_id;
    if (!is_server) c->peer.on_new_session = ward__new_session;
    if (is_server && !c->peeked) {
        if (c->state != WARD_CS_HANDSHAKE) {
            /* The handshake deadline runs from accept: waiting for the first byte counts. */
            c->state = WARD_CS_HANDSHAKE;
            ward__timer_start(c, ward__on_phase_timeout, c->w->shared->cfg->handshake_timeout_ms);
        }
        if (!ward__inbound_peek(c)) return;
    }
    t->io.fd = t->fd;
    t->io.pool = &c->w->pool;
    t->ssl = ward_tls_new(c->ident, is_server, &t->io, &c->peer);
    if (t->ssl == NULL) {
        ward_conn_abort(c, "out of memory creating TLS state");
        return;
    }
    if (!is_server) {
        ward_session_slot_t *slot = &c->w->sessions[c->map_index];
        if (slot->sess != NULL && slot->generation == ward_identity_generation(c->ident))
            ward_tls_use_session(t->ssl, slot->sess);
    }
    if (c->state != WARD_CS_HANDSHAKE) {
        c->state = WARD_CS_HANDSHAKE;
        ward__timer_start(c, ward__on_phase_timeout, c->w->shared->cfg->handshake_timeout_ms);
    }
    ward__handshake(c);
}

static void ward__on_linger_timeout(uv_timer_t *t)
{
    ward_conn_close(t->data, 0);
}

/* Lingering: discard what the caller still sends until its EOF, so that closing does not turn
 * the answer we sent into a reset before the caller read it. */
static void ward__linger(ward_conn_t *c)
{
    char buf[4096];
    for (int i = 0; i < 16; i++) {
        ward_side_readable(&c->down);
        ssize_t n = ward_side_read(&c->down, buf, sizeof(buf));
        if (n > 0) continue;
        if (n == WARD_IO_WANT_READ || n == WARD_IO_WANT_WRITE) {
            ward_side_set_events(&c->down, ward_side_wanted(&c->down, 1, 0));
            return;
        }
        ward_conn_close(c, 0); /* EOF or error: done */
        return;
    }
}

static void ward__connect_failed(ward_conn_t *c, int err)
{
    static const char bad_gateway[] = "HTTP/1.1 502 Bad Gateway\r\n"
                                      "content-type: text/plain\r\n"
                                      "content-length: 26\r\n"
                                      "connection: close\r\n"
                                      "\r\n"
                                      "upstream connection failed\n";
    ward_logline_t l;
    ward_counter_add(&c->w->stats.upstream_connect_failures[c->dir], 1);
    if (ward_log_begin(&l, WARD_LOG_WARN, "upstream_connect_failed")) {
        ward_conn_log_ctx(&l, c);
        ward_log_str(&l, "error", strerror(err));
        ward_log_end(&l);
    }
    /* An HTTP/1 caller of an app that is down gets a 502, not a reset (which would look like a
     * network or TLS failure): written before its request is read, as a server may. */
    if (c->dir == WARD_DIR_INBOUND && c->proto == WARD_PROTO_HTTP1 &&
        ward_side_write(&c->down, bad_gateway, sizeof(bad_gateway) - 1) ==
            (ssize_t)(sizeof(bad_gateway) - 1)) {
        ward_conn_count_request(c, WARD_REQ_HTTP1, 502);
        if (c->up.flags & WARD_SF_POLL) ward_side_set_events(&c->up, 0);
        if (ward_side_shutdown(&c->down) != WARD_IO_ERROR) {
            c->state = WARD_CS_LINGERING;
            ward__timer_start(c, ward__on_linger_timeout, 2000);
            ward__linger(c);
            return;
        }
    }
    ward_conn_close(c, 1);
}

static void ward__connect_done(ward_conn_t *c)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c->up.fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0) err = errno;
    if (err != 0) {
        ward__connect_failed(c, err);
        return;
    }
    ward_side_set_events(&c->up, 0);
    if (c->dir == WARD_DIR_OUTBOUND && !c->plaintext)
        ward__start_handshake(c);
    else
        ward__start_proxying(c);
}

static void ward__connect_upstream(ward_conn_t *c)
{
    const ward_addr_t *a = &c->target;
    int one = 1;
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        ward__connect_failed(c, errno);
        return;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (ward__side_init(c, &c->up, fd) < 0) {
        close(fd);
        c->up.fd = -1;
        ward_conn_abort(c, "cannot watch upstream socket");
        return;
    }
    c->state = WARD_CS_CONNECTING;
    ward__timer_start(c, ward__on_phase_timeout, c->w->shared->cfg->connect_timeout_ms);
    if (connect(fd, (const struct sockaddr *)&a->ss, a->len) != 0 && errno != EINPROGRESS) {
        ward__connect_failed(c, errno);
        return;
    }
    ward_side_set_events(&c->up, UV_WRITABLE);
}

static void ward__on_io(uv_poll_t *h, int status, int events)
{
    ward_conn_t *c = h->data;
    ward_side_t *s = h == &c->down.poll ? &c->down : &c->up;
    if (status < 0) {
        /* libuv reports a socket error (POLLERR) as UV_EBADF: name the socket's own error. */
        int e = 0;
        socklen_t el = sizeof(e);
        if (c->state == WARD_CS_CONNECTING && s == &c->up) {
            ward__connect_done(c); /* a refused/unreachable connect: counted as such */
            return;
        }
        if (c->state == WARD_CS_PROXYING) {
            /* libuv stopped the handle. Let the data path read the error itself (a reset
             * mid-exchange is the codec's to answer, e.g. with a 502), re-arming as it needs. */
            s->events = 0;
            if (c->codec != NULL)
                c->codec->on_io(c, s, UV_READABLE | UV_WRITABLE);
            else
                ward__proxy(c, s, UV_READABLE | UV_WRITABLE);
            return;
        }
        if (status == UV_EBADF && getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &e, &el) == 0 && e != 0)
            ward_conn_abort(c, strerror(e));
        else
            ward_conn_abort(c, status == UV_EBADF ? "socket error" : uv_strerror(status));
        return;
    }
    switch (c->state) {
    case WARD_CS_CONNECTING:
        if (s == &c->up) ward__connect_done(c);
        break;
    case WARD_CS_HANDSHAKE:
        if (s != ward__tls_side(c)) break;
        if (s->ssl == NULL) /* inbound, waiting for the first byte */
            ward__start_handshake(c);
        else
            ward__handshake(c);
        break;
    case WARD_CS_SNIFFING:
        if (s == &c->down) {
            if (events & (UV_READABLE | UV_DISCONNECT)) ward_side_readable(s);
            ward__sniff_step(c);
        }
        break;
    case WARD_CS_PROXYING:
        if (c->codec != NULL)
            c->codec->on_io(c, s, events);
        else
            ward__proxy(c, s, events);
        break;
    case WARD_CS_LINGERING:
        if (s == &c->down) {
            if (c->down.flags & WARD_SF_SHUT_PEND) ward_side_shutdown(&c->down);
            ward__linger(c);
        }
        break;
    default:
        break;
    }
}

/* Transparent capture: the original destination (SO_ORIGINAL_DST; iptables REDIRECT / nftables
 * redirect keep it in conntrack) becomes the target. Outbound also looks the destination up in
 * the peer directory: a sidecar there -> mTLS with the id it lists; none -> plaintext passthrough
 * (metered), or refused with --strict-egress. Refuses connections aimed at this proxy itself (not
 * redirected, or redirected back to a capture port): they would loop. Returns 0, or -1 when the
 * connection was closed. */
static int ward__capture_target(ward_conn_t *c, int fd)
{
    ward_logline_t l;
    struct sockaddr_storage dst, self;
    socklen_t dl = sizeof(dst), sl = sizeof(self);
    int rc = -1;
    if (c->peer_addr.ss_family == AF_INET6 &&
        !IN6_IS_ADDR_V4MAPPED(&((struct sockaddr_in6 *)&c->peer_addr)->sin6_addr))
        rc = getsockopt(fd, SOL_IPV6, WARD_IP6T_SO_ORIGINAL_DST, &dst, &dl);
    else
        rc = getsockopt(fd, SOL_IP, WARD_SO_ORIGINAL_DST, &dst, &dl);
    const char *why = NULL;
    if (rc != 0) {
        why = "no original destination (is the iptables/nftables redirect installed?)";
    } else if (getsockname(fd, (struct sockaddr *)&self, &sl) == 0 && sl == dl &&
               memcmp(&dst, &self, dl) == 0) {
        why = "connected to the capture port directly: no original destination";
    } else {
        ward_addr_t a = {.len = dl};
        memcpy(&a.ss, &dst, dl);
        uint16_t port = ward_addr_port(&a);
        const ward_config_t *cfg = c->w->shared->cfg;
        for (size_t i = 0; i < cfg->nmaps && why == NULL; i++)
            if (cfg->maps[i].transparent && ward_addr_port(&cfg->maps[i].listen) == port)
                why = "original destination is a capture port: the connection would loop";
        c->target = a;
        c->port = port;
    }
    if (why != NULL) {
        ward_counter_add(&c->w->stats.loops_refused[c->dir], 1);
        if (ward_log_begin(&l, WARD_LOG_WARN, "capture_refused")) {
            ward_conn_log_ctx(&l, c);
            ward_log_str(&l, "reason", why);
            ward_log_end(&l);
        }
        ward_conn_close(c, 0);
        return -1;
    }
    if (c->dir == WARD_DIR_INBOUND) return 0;
    c->expected_own = ward_peers_lookup(c->w->shared->peers, (const struct sockaddr *)&dst);
    c->expected_id = c->expected_own;
    if (c->expected_id != NULL) return 0;
    if (c->w->shared->cfg->strict_egress) {
        ward_counter_add(&c->w->stats.egress_refused, 1);
        if (ward_log_begin(&l, WARD_LOG_WARN, "egress_refused")) {
            ward_conn_log_ctx(&l, c);
            ward_log_str(&l, "reason", "no sidecar known at the destination (--strict-egress)");
            ward_log_end(&l);
        }
        ward_conn_close(c, 0);
        return -1;
    }
    c->plaintext = 1;
    ward_counter_add(&c->w->stats.plaintext[c->dir], 1);
    return 0;
}

void ward_conn_drain(ward_conn_t *c)
{
    if (c->state == WARD_CS_PROXYING && c->codec != NULL && c->codec->drain != NULL)
        c->codec->drain(c);
}

void ward_conn_accept(ward_worker_t *w, const ward_mapping_t *map, size_t map_index, int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    ward_conn_t *c = ward_calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return;
    }
    c->w = w;
    c->map = map;
    c->map_index = (uint32_t)map_index;
    c->dir = (uint8_t)map->dir;
    c->target = map->target;
    c->expected_id = map->identity;
    c->port = ward_addr_port(&map->target);
    c->id = atomic_fetch_add_explicit(&w->shared->next_conn_id, 1, memory_order_relaxed) + 1;
    c->started = c->last_active = uv_now(&w->loop);
    c->up.fd = -1;
    c->down.fd = -1;
    socklen_t sl = sizeof(c->peer_addr);
    if (getpeername(fd, (struct sockaddr *)&c->peer_addr, &sl) != 0)
        c->peer_addr.ss_family = AF_UNSPEC;
    uv_timer_init(&w->loop, &c->timer);
    c->timer.data = c;
    c->handles = 1;
    c->next = w->conns;
    if (w->conns) w->conns->prev = c;
    w->conns = c;
    ward_worker_conn_added(w, c);
    ward_counter_add(&w->stats.conns_total[c->dir], 1);
    ward_counter_add(&w->stats.conns_open[c->dir], 1);
    c->ident = ward_identity_store_get(w->shared->store);
    if (c->ident == NULL) {
        /* Agent mode, never bootstrapped: no identity, no traffic. */
        ward_counter_add(&w->stats.refused_no_identity[c->dir], 1);
        close(fd);
        ward_conn_close(c, 0);
        return;
    }

    if (ward__side_init(c, &c->down, fd) < 0) {
        close(fd);
        c->down.fd = -1;
        ward_conn_abort(c, "cannot watch downstream socket");
        return;
    }
    if (map->transparent && ward__capture_target(c, fd) < 0) return;
    if (c->dir == WARD_DIR_INBOUND)
        ward__start_handshake(c);
    else if (c->plaintext)
        ward__protocol_chosen(c, WARD_PROTO_TCP);
    else
        ward__start_sniffing(c);
}
