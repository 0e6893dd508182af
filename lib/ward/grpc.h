/* ward/grpc.h — gRPC over HTTP/2 on nghttp2, transport-agnostic (gRPC's PROTOCOL-HTTP2).
 *
 * A ward_grpc_conn_t is one HTTP/2 connection, client or server side. The owner moves the bytes:
 * whatever arrives on the socket goes into ward_grpc_conn_recv(); whatever the engine wants to
 * send comes out of ward_grpc_conn_send() (call it after every recv and every call operation, and
 * whenever the socket is writable while ward_grpc_conn_want_write() says so). The engine never
 * touches a socket, so it runs over a Unix socket, plain TCP or TLS alike, and unit tests can wire
 * a client engine to a server engine in memory.
 *
 * Messages are length-prefixed (1 byte compressed flag, 4 bytes big-endian length); compressed
 * messages are refused (UNIMPLEMENTED: no grpc-encoding is negotiated); a message over
 * max_message_size ends the call with RESOURCE_EXHAUSTED. Calls carry deadlines (grpc-timeout);
 * ward_grpc_conn_tick() ends expired calls with DEADLINE_EXCEEDED. Flow control is nghttp2's
 * (connection and stream windows); keepalive is ward_grpc_conn_ping() + the peer's PING ACK.
 *
 * Ownership: calls belong to their connection; a call pointer is valid until its on_close callback
 * returns. ward_grpc_conn_free() ends every call (on_close with UNAVAILABLE) first.
 * Errors: 0 or a negative WARD_E* (WARD_EPARSE for a protocol violation by the peer: the owner
 * should send what is pending and close the connection). */
#ifndef WARD_GRPC_H
#define WARD_GRPC_H

#include <stddef.h>
#include <stdint.h>

/* gRPC status codes (subset used by ward). */
enum {
    WARD_GRPC_OK = 0,
    WARD_GRPC_CANCELLED = 1,
    WARD_GRPC_UNKNOWN = 2,
    WARD_GRPC_INVALID_ARGUMENT = 3,
    WARD_GRPC_DEADLINE_EXCEEDED = 4,
    WARD_GRPC_NOT_FOUND = 5,
    WARD_GRPC_PERMISSION_DENIED = 7,
    WARD_GRPC_RESOURCE_EXHAUSTED = 8,
    WARD_GRPC_FAILED_PRECONDITION = 9,
    WARD_GRPC_UNIMPLEMENTED = 12,
    WARD_GRPC_INTERNAL = 13,
    WARD_GRPC_UNAVAILABLE = 14,
    WARD_GRPC_UNAUTHENTICATED = 16
};

typedef struct ward_grpc_conn ward_grpc_conn_t;
typedef struct ward_grpc_call ward_grpc_call_t;

typedef struct {
    /* Server: a new call arrived (request headers complete and valid: POST, content-type
     * application/grpc[+proto]). Return WARD_GRPC_OK to accept it, or a status code to refuse it
     * (the engine answers trailers-only with that status). Set the call's user data with
     * ward_grpc_call_set_data(). A refused call is gone when on_call returns: no on_close follows.
     * To refuse with a grpc-message, call ward_grpc_call_finish() first, then return its status. */
    int (*on_call)(ward_grpc_conn_t *conn, ward_grpc_call_t *call, const char *path,
                   void *conn_data);
    /* Client: the response headers arrived (optional). */
    void (*on_headers)(ward_grpc_call_t *call, void *call_data);
    /* One complete message. The bytes are valid only during the callback. */
    void (*on_message)(ward_grpc_call_t *call, const uint8_t *msg, size_t len, void *call_data);
    /* The peer will send no more messages (server: client half-closed; client: never — on_close
     * comes instead). Optional. */
    void (*on_half_close)(ward_grpc_call_t *call, void *call_data);
    /* The call is over: client: status from the trailers (or a local error); server: after
     * ward_grpc_call_finish() was sent, or the stream was reset / the connection ended.
     * message is never NULL ("" when there is none). */
    void (*on_close)(ward_grpc_call_t *call, int status, const char *message, void *call_data);
    /* A PING ACK arrived (keepalive), optional. */
    void (*on_ping_ack)(ward_grpc_conn_t *conn, void *conn_data);
} ward_grpc_callbacks_t;

typedef struct {
    size_t max_message_size;       /* default 4 MiB */
    uint32_t max_concurrent_calls; /* server SETTINGS_MAX_CONCURRENT_STREAMS, default 100 */
    uint32_t initial_window;       /* stream window, default 1 MiB */
} ward_grpc_options_t;

/* Creates a connection engine. opts may be NULL (defaults). Returns NULL on allocation failure.
 * A client engine queues its connection preface and SETTINGS at once. */
ward_grpc_conn_t *ward_grpc_conn_new(int is_server, const ward_grpc_callbacks_t *cb,
                                     const ward_grpc_options_t *opts, void *conn_data);
void ward_grpc_conn_free(ward_grpc_conn_t *conn);
void *ward_grpc_conn_data(const ward_grpc_conn_t *conn);

/* Feeds received bytes. Returns 0, or WARD_EPARSE when the peer broke the protocol (a GOAWAY is
 * queued: send it, then close). Callbacks run from inside this call. */
int ward_grpc_conn_recv(ward_grpc_conn_t *conn, const uint8_t *data, size_t len);
/* Returns the next bytes to write (*out, length returned; 0 = nothing now). The bytes stay valid
 * until the next call into the engine; the caller must write all of them (buffer what the socket
 * does not take) before calling ward_grpc_conn_send() again. */
size_t ward_grpc_conn_send(ward_grpc_conn_t *conn, const uint8_t **out);
int ward_grpc_conn_want_write(const ward_grpc_conn_t *conn);
/* 1 while the connection is usable (no GOAWAY sent or received and no fatal error). */
int ward_grpc_conn_alive(const ward_grpc_conn_t *conn);
/* 1 when the connection has nothing left to do and the owner should close it: a GOAWAY was sent
 * or received and every call has ended, or a fatal/protocol error occurred — in both cases once
 * everything pending was returned by ward_grpc_conn_send(). (ward_grpc_conn_alive() turns 0 at the
 * GOAWAY already, while calls in flight may still finish.) */
int ward_grpc_conn_finished(const ward_grpc_conn_t *conn);
/* Queues a PING (keepalive). Returns 0 or a negative error. */
int ward_grpc_conn_ping(ward_grpc_conn_t *conn);
/* Queues GOAWAY (graceful: calls in flight finish). */
void ward_grpc_conn_goaway(ward_grpc_conn_t *conn, int graceful);
/* Tells the engine the current time (same clock as tick): request deadlines (grpc-timeout) are
 * measured from it. The socket owner calls it before feeding received bytes. */
void ward_grpc_conn_set_now(ward_grpc_conn_t *conn, uint64_t now_ms);
/* Ends calls whose deadline has passed (now_ms is any monotonic clock in ms, the same one as
 * ward_grpc_call_start's timeout is measured against). */
void ward_grpc_conn_tick(ward_grpc_conn_t *conn, uint64_t now_ms);

typedef struct {
    const char *name;
    const char *value;
} ward_grpc_header_t;

/* Client: starts a call to path ("/pkg.Service/Method") with extra request headers and a timeout
 * (0 = none; sent as grpc-timeout, enforced by tick). authority NULL sends "localhost". Header
 * names must be lower-case custom metadata (not te, content-type, grpc-timeout or pseudo-headers),
 * values printable ASCII. Returns 0, WARD_EINVAL (bad argument, or GOAWAY sent/received) or
 * WARD_ENOMEM. */
int ward_grpc_call_start(ward_grpc_conn_t *conn, const char *path, const char *authority,
                         const ward_grpc_header_t *headers, size_t nheaders, uint64_t timeout_ms,
                         uint64_t now_ms, void *call_data, ward_grpc_call_t **out);
/* Queues one message (copied). Returns 0, WARD_EINVAL after close_send/finish, or WARD_ENOMEM. */
int ward_grpc_call_send(ward_grpc_call_t *call, const uint8_t *msg, size_t len);
/* Client: half-closes (END_STREAM after the queued messages). */
int ward_grpc_call_close_send(ward_grpc_call_t *call);
/* Server: ends the call with status + message (trailers, after the queued messages). */
int ward_grpc_call_finish(ward_grpc_call_t *call, int status, const char *message);
/* Either side: resets the stream (RST_STREAM CANCEL); on_close follows with CANCELLED. */
void ward_grpc_call_cancel(ward_grpc_call_t *call);
/* Request header value on the server (lower-case name), or NULL. Valid for the call's life.
 * On the client: response header or trailer fields received so far. */
const char *ward_grpc_call_header(const ward_grpc_call_t *call, const char *name);
void ward_grpc_call_set_data(ward_grpc_call_t *call, void *call_data);
void *ward_grpc_call_data(const ward_grpc_call_t *call);
ward_grpc_conn_t *ward_grpc_call_conn(const ward_grpc_call_t *call);
/* Bytes queued for sending on this call and not yet handed to nghttp2 (for backpressure). */
size_t ward_grpc_call_queued(const ward_grpc_call_t *call);

/* "1H", "200m", "5S", "100u", "3n" (grpc-timeout) -> ms, rounding up; -1 if malformed. */
int64_t ward_grpc_timeout_parse(const char *s);
/* ms -> grpc-timeout value into buf (>= 16 bytes). */
void ward_grpc_timeout_format(uint64_t ms, char *buf, size_t size);

#endif
