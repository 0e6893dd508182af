/* ward/grpc_sock.h — a gRPC engine (ward/grpc.h) on a socket: a uv_poll_t on a non-blocking fd,
 * optionally TLS (lib/tls), the bytes the engine wants to send buffered until the socket takes
 * them. Used by ward-agent (server side, Unix socket or TLS) and ward-proxy's agent client.
 *
 * Lifetime: the struct is embedded in its owner. ward_grpc_sock_start() takes ownership of fd, ssl
 * and grpc; ward_grpc_sock_close() (or a socket error / peer close) frees them, stops polling and
 * calls on_closed once the poll handle is closed — the owner may free its memory from there. */
#ifndef WARD_GRPC_SOCK_H
#define WARD_GRPC_SOCK_H

#include <uv.h>

#include "ward/grpc.h"
#include "ward/tls.h"

typedef struct ward_grpc_sock ward_grpc_sock_t;

struct ward_grpc_sock {
    uv_poll_t poll;
    int fd;
    SSL *ssl;               /* NULL: plain (Unix socket) */
    ward_tls_io_t io;       /* TLS receive buffer */
    ward_tls_peer_t peer;   /* TLS verification state */
    ward_pool_t *pool;      /* chunks for the TLS receive buffer */
    ward_grpc_conn_t *grpc; /* owned */
    uint8_t *out;           /* bytes taken from the engine, not yet written */
    size_t out_off, out_len, out_cap;
    int handshaking;
    int closing;
    int in_engine;     /* > 0 while the engine is running our callbacks */
    int close_pending; /* close requested from inside a callback: done when the engine returns */
    int events;
    const char *close_reason;
    /* Called once the TLS handshake is done (immediately for plain sockets); may be NULL. Return
     * non-zero to refuse the connection (e.g. wrong peer identity). */
    int (*on_ready)(ward_grpc_sock_t *s);
    /* Called when the socket is closed and the struct may be freed. */
    void (*on_closed)(ward_grpc_sock_t *s, const char *reason);
    void *data;
};

/* Starts serving fd (non-blocking, connected or connecting). ssl may be NULL. Returns 0 or a
 * negative error (then nothing was taken: the caller still owns fd, ssl and grpc). */
int ward_grpc_sock_start(ward_grpc_sock_t *s, uv_loop_t *loop, int fd, SSL *ssl,
                         ward_grpc_conn_t *grpc);
/* Moves whatever the engine has queued to the socket (call after sending on a call). */
void ward_grpc_sock_flush(ward_grpc_sock_t *s);
/* Closes (pending output is dropped). reason: a static string for the log. Safe to call from
 * inside the engine's callbacks: the engine is then freed once it has returned. */
void ward_grpc_sock_close(ward_grpc_sock_t *s, const char *reason);
/* Ends expired calls (ward_grpc_conn_tick) and flushes; use instead of calling the engine
 * directly, so a close from a callback is deferred safely. */
void ward_grpc_sock_tick(ward_grpc_sock_t *s, uint64_t now_ms);
/* Bytes waiting to be written (backpressure for producers). */
size_t ward_grpc_sock_pending(const ward_grpc_sock_t *s);

#endif
