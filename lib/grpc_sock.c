/* grpc_sock.c — a gRPC engine on a (TLS) socket (see ward/grpc_sock.h). */
#include "ward/grpc_sock.h"

#include <errno.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ward/alloc.h"
#include "ward/err.h"

#define WARD_GRPC_SOCK_READ 16384

static void ward__gs_on_io(uv_poll_t *h, int status, int events);

static void ward__gs_closed(uv_handle_t *h)
{
    ward_grpc_sock_t *s = h->data;
    if (s->on_closed) s->on_closed(s, s->close_reason);
}

void ward_grpc_sock_close(ward_grpc_sock_t *s, const char *reason)
{
    if (s->closing) return;
    if (s->in_engine > 0) {
        /* Called from one of the engine's callbacks: freeing the engine now would pull it out
         * from under itself. Stop reading; the close completes when the engine returns. */
        if (!s->close_pending) s->close_reason = reason;
        s->close_pending = 1;
        return;
    }
    s->closing = 1;
    s->close_reason = reason;
    ward_grpc_conn_free(s->grpc);
    s->grpc = NULL;
    if (s->ssl) {
        ward_tls_free(s->ssl);
        ward_tls_io_release(&s->io);
        s->ssl = NULL;
    }
    ward_tls_peer_reset(&s->peer);
    ward_free(s->out);
    s->out = NULL;
    s->out_len = s->out_off = s->out_cap = 0;
    uv_poll_stop(&s->poll);
    uv_close((uv_handle_t *)&s->poll, ward__gs_closed);
    close(s->fd);
    s->fd = -1;
}

size_t ward_grpc_sock_pending(const ward_grpc_sock_t *s)
{
    return s->out_len - s->out_off;
}

static void ward__gs_set_events(ward_grpc_sock_t *s, int ev)
{
    if (s->closing || ev == s->events) return;
    s->events = ev;
    uv_poll_start(&s->poll, ev, ward__gs_on_io);
}

/* Writes; returns bytes written, 0 if the socket is full, -1 on error. */
static ssize_t ward__gs_write(ward_grpc_sock_t *s, const uint8_t *p, size_t n)
{
    if (s->ssl) {
        ssize_t r = ward_tls_write(s->ssl, p, n);
        if (r > 0) return r;
        return r == WARD_IO_WANT_WRITE || r == WARD_IO_WANT_READ ? 0 : -1;
    }
    for (;;) {
        ssize_t r = send(s->fd, p, n, MSG_NOSIGNAL);
        if (r >= 0) return r;
        if (errno == EINTR) continue;
        return errno == EAGAIN ? 0 : -1;
    }
}

static int ward__gs_buffer(ward_grpc_sock_t *s, const uint8_t *p, size_t n)
{
    if (s->out_off > 0 && s->out_off == s->out_len) s->out_off = s->out_len = 0;
    if (s->out_len + n > s->out_cap) {
        size_t ncap = s->out_cap ? s->out_cap : 16384;
        while (ncap < s->out_len + n)
            ncap *= 2;
        uint8_t *no = ward_realloc(s->out, ncap);
        if (no == NULL) return WARD_ENOMEM;
        s->out = no;
        s->out_cap = ncap;
    }
    memcpy(s->out + s->out_len, p, n);
    s->out_len += n;
    return 0;
}

void ward_grpc_sock_tick(ward_grpc_sock_t *s, uint64_t now_ms)
{
    if (s->closing || s->grpc == NULL) return;
    s->in_engine++;
    ward_grpc_conn_tick(s->grpc, now_ms);
    s->in_engine--;
    if (s->close_pending) {
        ward_grpc_sock_close(s, s->close_reason);
        return;
    }
    ward_grpc_sock_flush(s);
}

void ward_grpc_sock_flush(ward_grpc_sock_t *s)
{
    if (s->closing || s->handshaking || s->close_pending) return;
    for (;;) {
        /* Old bytes first. */
        while (s->out_off < s->out_len) {
            ssize_t w = ward__gs_write(s, s->out + s->out_off, s->out_len - s->out_off);
            if (w < 0) {
                ward_grpc_sock_close(s, "write failed");
                return;
            }
            if (w == 0) {
                ward__gs_set_events(s, UV_READABLE | UV_WRITABLE);
                return;
            }
            s->out_off += (size_t)w;
        }
        s->out_off = s->out_len = 0;
        const uint8_t *data;
        s->in_engine++;
        size_t n = ward_grpc_conn_send(s->grpc, &data);
        s->in_engine--;
        if (s->close_pending) {
            ward_grpc_sock_close(s, s->close_reason);
            return;
        }
        if (n == 0) break;
        /* The engine's bytes are only valid until its next call: copy what the socket refuses. */
        size_t done = 0;
        while (done < n) {
            ssize_t w = ward__gs_write(s, data + done, n - done);
            if (w < 0) {
                ward_grpc_sock_close(s, "write failed");
                return;
            }
            if (w == 0) break;
            done += (size_t)w;
        }
        if (done < n && ward__gs_buffer(s, data + done, n - done) < 0) {
            ward_grpc_sock_close(s, "out of memory");
            return;
        }
    }
    if (ward_grpc_conn_finished(s->grpc) && !ward_grpc_conn_want_write(s->grpc) &&
        s->out_len == 0) {
        ward_grpc_sock_close(s, "connection finished");
        return;
    }
    ward__gs_set_events(s, UV_READABLE);
}

static void ward__gs_handshake(ward_grpc_sock_t *s)
{
    ward_tls_reason_t reason;
    const char *detail = NULL;
    int r = ward_tls_handshake(s->ssl, &s->peer, &reason, &detail);
    if (r == WARD_IO_WANT_READ || r == WARD_IO_WANT_WRITE) {
        ward__gs_set_events(s, r == WARD_IO_WANT_READ ? UV_READABLE : UV_WRITABLE);
        return;
    }
    if (r != 1 || (!SSL_is_server(s->ssl) && ward_tls_finish(s->ssl, &s->peer) < 0)) {
        if (r == 1) detail = s->peer.detail;
        ward_grpc_sock_close(s, detail ? detail : "TLS handshake failed");
        return;
    }
    s->handshaking = 0;
    if (s->on_ready && s->on_ready(s) != 0) {
        ward_grpc_sock_close(s, "refused after handshake");
        return;
    }
    ward_grpc_sock_flush(s);
}

static void ward__gs_read(ward_grpc_sock_t *s)
{
    uint8_t buf[WARD_GRPC_SOCK_READ];
    for (int round = 0; round < 16 && !s->closing; round++) {
        ssize_t n;
        if (s->ssl) {
            n = ward_tls_read(s->ssl, buf, sizeof(buf));
            if (n == WARD_IO_WANT_READ || n == WARD_IO_WANT_WRITE) break;
        } else {
            n = read(s->fd, buf, sizeof(buf));
            if (n < 0 && (errno == EAGAIN || errno == EINTR)) break;
        }
        if (n <= 0) {
            ward_grpc_sock_close(s, n == 0 ? "peer closed the connection" : "read failed");
            return;
        }
        s->in_engine++;
        ward_grpc_conn_set_now(s->grpc, uv_now(s->poll.loop));
        int rc = ward_grpc_conn_recv(s->grpc, buf, (size_t)n);
        s->in_engine--;
        if (s->close_pending) {
            ward_grpc_sock_close(s, s->close_reason);
            return;
        }
        if (rc < 0) {
            /* Protocol error: send the GOAWAY, then close. */
            ward_grpc_sock_flush(s);
            ward_grpc_sock_close(s, "HTTP/2 protocol error from peer");
            return;
        }
        if (s->closing) return;
    }
    ward_grpc_sock_flush(s);
}

static void ward__gs_on_io(uv_poll_t *h, int status, int events)
{
    ward_grpc_sock_t *s = h->data;
    if (status < 0) {
        ward_grpc_sock_close(s, "socket error");
        return;
    }
    if (s->handshaking) {
        ward__gs_handshake(s);
        return;
    }
    if (events & UV_WRITABLE) ward_grpc_sock_flush(s);
    if (!s->closing && (events & (UV_READABLE | UV_DISCONNECT))) ward__gs_read(s);
}

int ward_grpc_sock_start(ward_grpc_sock_t *s, uv_loop_t *loop, int fd, SSL *ssl,
                         ward_grpc_conn_t *grpc)
{
    int rc = uv_poll_init(loop, &s->poll, fd);
    if (rc < 0) return rc;
    s->poll.data = s;
    s->fd = fd;
    s->ssl = ssl;
    s->grpc = grpc;
    s->handshaking = ssl != NULL;
    s->closing = 0;
    s->in_engine = 0;
    s->close_pending = 0;
    s->events = 0;
    if (s->handshaking) {
        ward__gs_handshake(s);
    } else {
        if (s->on_ready && s->on_ready(s) != 0) {
            ward_grpc_sock_close(s, "refused");
            return 0;
        }
        ward_grpc_sock_flush(s);
    }
    return 0;
}
