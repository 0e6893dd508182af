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
 * (half-close). Memory is freed only when the last libuv handle has closed. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "worker.h"
#include "ward/alloc.h"
#include "ward/log.h"

#define WARD_PUMP_ROUNDS 16

typedef enum {
    WARD_CS_CONNECTING,
    WARD_CS_HANDSHAKE,
    WARD_CS_PROXYING,
    WARD_CS_CLOSING
} ward_conn_state_t;

static const char *const ward__state_names[] = {"connecting", "handshake", "proxying", "closing"};

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

typedef struct {
    uv_poll_t poll;
    int fd;
    SSL *ssl;         /* NULL on the plain side */
    ward_tls_io_t io; /* the TLS side's receive buffer (see ward/tls.h) */
    uint8_t flags;
    uint8_t events; /* what the poll handle is started with */
} ward_side_t;

struct ward_conn {
    ward_side_t down;
    ward_side_t up;
    uv_timer_t timer;
    ward_worker_t *w;
    ward_conn_t *prev, *next;
    const ward_mapping_t *map;
    ward_identity_t *ident;
    ward_tls_peer_t peer;
    ward_chunk_t *buf[2]; /* indexed by ward_flow_t */
    uint64_t id;
    uint64_t bytes[2];
    uint64_t started;
    uint64_t last_active;
    uint32_t map_index;
    uint8_t dir;
    uint8_t state;
    uint8_t handles;
};

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

static void ward__log_conn(ward_logline_t *l, ward_conn_t *c)
{
    char a[64];
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    ward_log_u64(l, "conn", c->id);
    ward_log_str(l, "direction", ward_dir_name(c->dir));
    ward_log_str(l, "phase", ward__state_names[c->state]);
    if (c->down.fd >= 0 && getpeername(c->down.fd, (struct sockaddr *)&ss, &sl) == 0)
        ward_log_str(l, "downstream", ward_addr_format((struct sockaddr *)&ss, a, sizeof(a)));
    ward_log_str(l, "upstream",
                 ward_addr_format((const struct sockaddr *)&c->map->target.ss, a, sizeof(a)));
    if (c->peer.peer_id) ward_log_str(l, "peer_identity", c->peer.peer_id);
    if (c->map->identity) ward_log_str(l, "expected_identity", c->map->identity);
}

/* --- teardown ------------------------------------------------------------------------------- */

static void ward__conn_free(ward_conn_t *c)
{
    ward_worker_t *w = c->w;
    ward_logline_t l;
    if (ward_log_begin(&l, WARD_LOG_DEBUG, "conn_closed")) {
        ward__log_conn(&l, c);
        ward_log_u64(&l, "bytes_to_upstream", c->bytes[WARD_FLOW_TO_UPSTREAM]);
        ward_log_u64(&l, "bytes_to_downstream", c->bytes[WARD_FLOW_TO_DOWNSTREAM]);
        ward_log_u64(&l, "duration_ms", uv_now(&w->loop) - c->started);
        ward_log_end(&l);
    }
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

static void ward__close(ward_conn_t *c, int abortive)
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
        ward__log_conn(&l, c);
        ward_log_str(&l, "reason", why);
        ward_log_end(&l);
    }
    ward__close(c, 1);
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

static void ward__set_events(ward_side_t *s, unsigned ev)
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

/* --- byte movement -------------------------------------------------------------------------- */

static ssize_t ward__side_read(ward_side_t *s, char *buf, size_t n)
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
static int ward__side_buffered(const ward_side_t *s)
{
    return s->ssl != NULL && ward_tls_buffered(s->ssl, &s->io);
}

/* The last read from s found the kernel buffer empty: wait for the poll event rather than spend a
 * system call on EAGAIN. */
static int ward__side_drained(const ward_side_t *s)
{
    return s->ssl != NULL ? s->io.drained : (s->flags & WARD_SF_DRAINED) != 0;
}

static void ward__side_readable(ward_side_t *s)
{
    s->flags &= (uint8_t)~WARD_SF_DRAINED;
    s->io.drained = 0;
}

static ssize_t ward__side_write(ward_side_t *s, const char *buf, size_t n)
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
static int ward__side_shutdown(ward_side_t *s)
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
            ssize_t n = ward__side_write(dst, b->data + b->off, b->len - b->off);
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
                if (ward__side_shutdown(dst) == WARD_IO_ERROR) {
                    *failed = dst;
                    return WARD_IO_ERROR;
                }
            }
            return 0;
        }
        /* Buffered bytes are always drained (at most one chunk); a new system call only while
         * the round budget lasts and the socket may hold more. */
        if (!ward__side_buffered(src) && (round >= WARD_PUMP_ROUNDS || ward__side_drained(src)))
            return 0;
        b = ward_pool_get(&w->pool);
        if (b == NULL) {
            *failed = src;
            return WARD_IO_ERROR;
        }
        ssize_t n = ward__side_read(src, b->data, WARD_CHUNK_SIZE);
        if (n > 0) {
            b->len = (size_t)n;
            *bp = b;
            c->bytes[flow] += (uint64_t)n;
            ward_counter_add(&w->stats.bytes[c->dir][flow], (uint64_t)n);
            c->last_active = uv_now(&w->loop);
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
    unsigned ev = 0;
    if (!(s->flags & WARD_SF_RD_EOF) && ward_chunk_pending(from_s) == 0)
        ev |= (s->flags & WARD_SF_RD_WANT_W) ? UV_WRITABLE : UV_READABLE;
    if (ward_chunk_pending(to_s) > 0 || (s->flags & WARD_SF_SHUT_PEND))
        ev |= (s->flags & WARD_SF_WR_WANT_R) ? UV_READABLE : UV_WRITABLE;
    return ev;
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
        if (ward_log_begin(&l, WARD_LOG_WARN, "handshake_rejected_by_peer")) {
            ward__log_conn(&l, c);
            ward_log_str(&l, "reason", ward_tls_reason_name(r));
            ward_log_str(&l, "detail", detail);
            ward_log_end(&l);
        }
        return;
    }
    if (ward_log_begin(&l, WARD_LOG_DEBUG, "conn_reset")) {
        ward__log_conn(&l, c);
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
    if (fired != NULL && (events & (UV_READABLE | UV_DISCONNECT))) ward__side_readable(fired);
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
        ward__close(c, 1);
        return;
    }
    if (ward__flow_done(d, u, b[WARD_FLOW_TO_UPSTREAM]) &&
        ward__flow_done(u, d, b[WARD_FLOW_TO_DOWNSTREAM])) {
        ward__close(c, 0);
        return;
    }
    ward__set_events(d, ward__wanted(d, b[WARD_FLOW_TO_UPSTREAM], b[WARD_FLOW_TO_DOWNSTREAM]));
    ward__set_events(u, ward__wanted(u, b[WARD_FLOW_TO_DOWNSTREAM], b[WARD_FLOW_TO_UPSTREAM]));
}

/* --- phases --------------------------------------------------------------------------------- */

static void ward__on_idle_timer(uv_timer_t *t)
{
    ward_conn_t *c = t->data;
    uint64_t now = uv_now(&c->w->loop), idle = c->w->shared->cfg->idle_timeout_ms;
    uint64_t quiet = now - c->last_active;
    if (quiet < idle) {
        ward__timer_start(c, ward__on_idle_timer, idle - quiet);
        return;
    }
    ward_counter_add(&c->w->stats.timeouts[c->dir], 1);
    ward_conn_abort(c, "idle timeout");
}

static void ward__start_proxying(ward_conn_t *c)
{
    c->state = WARD_CS_PROXYING;
    c->last_active = uv_now(&c->w->loop);
    ward__timer_start(c, ward__on_idle_timer, c->w->shared->cfg->idle_timeout_ms);
    ward__proxy(c, NULL, 0);
}

static void ward__on_phase_timeout(uv_timer_t *t)
{
    ward_conn_t *c = t->data;
    ward_logline_t l;
    if (c->state == WARD_CS_HANDSHAKE) {
        ward_counter_add(&c->w->stats.handshakes[c->dir][WARD_REASON_TIMEOUT], 1);
        if (ward_log_begin(&l, WARD_LOG_WARN, "handshake_failed")) {
            ward__log_conn(&l, c);
            ward_log_str(&l, "reason", "timeout");
            ward_log_str(&l, "detail", "TLS handshake did not complete in time");
            ward_log_end(&l);
        }
    } else {
        ward_counter_add(&c->w->stats.upstream_connect_failures[c->dir], 1);
        if (ward_log_begin(&l, WARD_LOG_WARN, "upstream_connect_failed")) {
            ward__log_conn(&l, c);
            ward_log_str(&l, "error", "connect timeout");
            ward_log_end(&l);
        }
    }
    ward__close(c, 1);
}

static void ward__connect_upstream(ward_conn_t *c);

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
        ward__set_events(t, r == WARD_IO_WANT_READ ? UV_READABLE : UV_WRITABLE);
        return;
    }
    if (r == 1 && ward_tls_finish(t->ssl, &c->peer) < 0) {
        r = WARD_IO_ERROR;
        reason = c->peer.reason;
        detail = c->peer.detail;
    }
    if (r != 1) {
        ward_counter_add(&c->w->stats.handshakes[c->dir][reason], 1);
        if (ward_log_begin(&l, WARD_LOG_WARN, "handshake_failed")) {
            ward__log_conn(&l, c);
            ward_log_str(&l, "reason", ward_tls_reason_name(reason));
            ward_log_str(&l, "detail", detail);
            ward_log_end(&l);
        }
        ward__close(c, 0);
        return;
    }
    ward_counter_add(&c->w->stats.handshakes[c->dir][WARD_REASON_NONE], 1);
    int resumed = ward_tls_session_reused(t->ssl);
    if (resumed) ward_counter_add(&c->w->stats.resumed[c->dir], 1);
    if (ward_log_begin(&l, WARD_LOG_DEBUG, "handshake_ok")) {
        ward__log_conn(&l, c);
        ward_log_str(&l, "tls_version", ward_tls_version(t->ssl));
        ward_log_u64(&l, "resumed", (uint64_t)resumed);
        ward_log_end(&l);
    }
    ward__set_events(t, 0);
    if (c->dir == WARD_DIR_INBOUND)
        ward__connect_upstream(c);
    else
        ward__start_proxying(c);
}

static void ward__start_handshake(ward_conn_t *c)
{
    ward_side_t *t = ward__tls_side(c);
    int is_server = c->dir == WARD_DIR_INBOUND;
    c->peer.expected_id = c->map->identity;
    if (!is_server) c->peer.on_new_session = ward__new_session;
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
    c->state = WARD_CS_HANDSHAKE;
    ward__timer_start(c, ward__on_phase_timeout, c->w->shared->cfg->handshake_timeout_ms);
    ward__handshake(c);
}

static void ward__connect_failed(ward_conn_t *c, int err)
{
    ward_logline_t l;
    ward_counter_add(&c->w->stats.upstream_connect_failures[c->dir], 1);
    if (ward_log_begin(&l, WARD_LOG_WARN, "upstream_connect_failed")) {
        ward__log_conn(&l, c);
        ward_log_str(&l, "error", strerror(err));
        ward_log_end(&l);
    }
    ward__close(c, 1);
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
    ward__set_events(&c->up, 0);
    if (c->dir == WARD_DIR_OUTBOUND)
        ward__start_handshake(c);
    else
        ward__start_proxying(c);
}

static void ward__connect_upstream(ward_conn_t *c)
{
    const ward_addr_t *a = &c->map->target;
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
    ward__set_events(&c->up, UV_WRITABLE);
}

static void ward__on_io(uv_poll_t *h, int status, int events)
{
    ward_conn_t *c = h->data;
    ward_side_t *s = h == &c->down.poll ? &c->down : &c->up;
    if (status < 0) {
        ward_conn_abort(c, uv_strerror(status));
        return;
    }
    switch (c->state) {
    case WARD_CS_CONNECTING:
        if (s == &c->up) ward__connect_done(c);
        break;
    case WARD_CS_HANDSHAKE:
        if (s == ward__tls_side(c)) ward__handshake(c);
        break;
    case WARD_CS_PROXYING:
        ward__proxy(c, s, events);
        break;
    default:
        break;
    }
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
    c->id = atomic_fetch_add_explicit(&w->shared->next_conn_id, 1, memory_order_relaxed) + 1;
    c->started = c->last_active = uv_now(&w->loop);
    c->up.fd = -1;
    c->down.fd = -1;
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
        ward__close(c, 0);
        return;
    }

    if (ward__side_init(c, &c->down, fd) < 0) {
        close(fd);
        c->down.fd = -1;
        ward_conn_abort(c, "cannot watch downstream socket");
        return;
    }
    if (c->dir == WARD_DIR_INBOUND)
        ward__start_handshake(c);
    else
        ward__connect_upstream(c);
}
