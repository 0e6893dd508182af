/* fuzz_grpc_client.c — the gRPC engine as a client (lib/grpc.c), as ward-proxy's agent client
 * runs it: two calls are started (the second half-closed at once), then whatever the "server"
 * sends goes into ward_grpc_conn_recv(). Callbacks react to the bytes of each message (cancel,
 * send more, half-close) the way the agent client may.
 *
 * Input: one control byte, then the server's bytes (its SETTINGS onwards).
 *   bits 0-4  recv chunk size (0: everything in one call);
 *   bit 5     send a PING first;  bit 6  GOAWAY half way;
 *   bit 7     small limits: 64-byte messages, 256-byte windows.
 * Each recv advances the clock 100 ms; the first call has a 1 s deadline. */
#include <stdint.h>
#include <string.h>

#include "fuzz_grpc.h"
#include "ward/err.h"
#include "ward/grpc.h"

static ward_grpc_call_t *ward__calls[2];

static void ward__on_headers(ward_grpc_call_t *call, void *d)
{
    const char *v = ward_grpc_call_header(call, "content-type");
    if (v != NULL) (void)strlen(v);
    v = ward_grpc_call_header(call, ":status");
    if (v != NULL) (void)strlen(v);
}

static void ward__on_message(ward_grpc_call_t *call, const uint8_t *msg, size_t len, void *d)
{
    static const uint8_t ack[] = "\x1a\x04\x08\x02\x10\x01";
    switch (len > 0 ? msg[0] : 0) {
    case 'C':
        ward_grpc_call_cancel(call);
        break;
    case 'H':
        ward_grpc_call_close_send(call);
        break;
    case 'G':
        ward_grpc_conn_goaway(ward_grpc_call_conn(call), 1);
        break;
    default:
        ward_grpc_call_send(call, ack, sizeof(ack) - 1);
        break;
    }
}

static void ward__on_close(ward_grpc_call_t *call, int status, const char *message, void *d)
{
    WARD_FUZZ_CHECK(message != NULL);
    WARD_FUZZ_CHECK(status >= 0);
    intptr_t i = (intptr_t)d;
    WARD_FUZZ_CHECK(i == 0 || i == 1);
    WARD_FUZZ_CHECK(ward__calls[i] == call); /* exactly once */
    ward__calls[i] = NULL;
}

static void ward__on_ping_ack(ward_grpc_conn_t *conn, void *d) {}

static const ward_grpc_callbacks_t ward__cb = {
    .on_headers = ward__on_headers,
    .on_message = ward__on_message,
    .on_close = ward__on_close,
    .on_ping_ack = ward__on_ping_ack,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        ward_fuzz_quiet();
        init = 1;
    }
    if (size < 1) return 0;
    uint8_t ctl = data[0];
    data++;
    size--;
    ward_grpc_options_t small = {64, 2, 256};
    ward_grpc_conn_t *conn = ward_grpc_conn_new(0, &ward__cb, (ctl & 0x80) ? &small : NULL, NULL);
    if (conn == NULL) return 0;
    uint64_t now = 1000;
    ward_grpc_conn_tick(conn, now);
    static const ward_grpc_header_t hdrs[] = {{"x-ward-proxy", "fuzz"}};
    static const uint8_t hello[] = "\x0a\x0a\x12\x04node\x1a\x02p1";
    int rc = ward_grpc_call_start(conn, "/ward.v1.Mesh/Connect", "ward-agent", hdrs, 1, 1000, now,
                                  (void *)(intptr_t)0, &ward__calls[0]);
    WARD_FUZZ_CHECK(rc == 0 && ward__calls[0] != NULL);
    WARD_FUZZ_CHECK(ward_grpc_call_send(ward__calls[0], hello, sizeof(hello) - 1) == 0);
    rc = ward_grpc_call_start(conn, "/fuzz.Echo/Unary", NULL, NULL, 0, 0, now, (void *)(intptr_t)1,
                              &ward__calls[1]);
    WARD_FUZZ_CHECK(rc == 0 && ward__calls[1] != NULL);
    WARD_FUZZ_CHECK(ward_grpc_call_send(ward__calls[1], hello, sizeof(hello) - 1) == 0);
    WARD_FUZZ_CHECK(ward_grpc_call_close_send(ward__calls[1]) == 0);
    if (ctl & 0x20) ward_grpc_conn_ping(conn);
    ward_fuzz_grpc_drain(conn);

    now = ward_fuzz_grpc_feed(conn, data, size, ctl, now);
    (void)ward_grpc_conn_alive(conn);
    ward_grpc_conn_free(conn);
    /* Freeing the engine ends every call that was still open. */
    WARD_FUZZ_CHECK(ward__calls[0] == NULL && ward__calls[1] == NULL);
    return 0;
}
