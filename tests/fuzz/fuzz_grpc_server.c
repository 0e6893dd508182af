/* fuzz_grpc_server.c — the gRPC engine as a server (lib/grpc.c), as ward-agent runs it for every
 * proxy that connects: whatever a client sends goes into ward_grpc_conn_recv(). The callbacks do
 * what the agent's handlers do — accept or refuse calls, answer messages, finish, cancel — chosen
 * by the bytes of each message, so the fuzzer can reach every path of the engine.
 *
 * Input: one control byte, then the client's bytes (connection preface onwards).
 *   bits 0-4  recv chunk size (0: everything in one call), to split frames across reads;
 *   bit 5     send a PING first;  bit 6  GOAWAY (graceful) half way;
 *   bit 7     small limits: 64-byte messages, 2 concurrent calls, 256-byte windows.
 * Each recv advances the clock 100 ms (deadlines expire mid-stream); the engine's output is
 * drained after every call, and the engine is freed at the end with calls still open. */
#include <stdint.h>
#include <string.h>

#include "fuzz_grpc.h"
#include "ward/err.h"
#include "ward/grpc.h"

static int ward__on_call(ward_grpc_conn_t *conn, ward_grpc_call_t *call, const char *path,
                         void *conn_data)
{
    static const char *const names[] = {":authority",   "te",           "content-type",
                                        "grpc-timeout", "user-agent",   "x-ward-proxy",
                                        ":path",        "grpc-encoding"};
    size_t total = 0;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        const char *v = ward_grpc_call_header(call, names[i]);
        if (v != NULL) total += strlen(v);
    }
    (void)total;
    WARD_FUZZ_CHECK(path != NULL && path[0] == '/');
    WARD_FUZZ_CHECK(ward_grpc_call_conn(call) == conn);
    if (strcmp(path, "/fuzz.Refuse/Msg") == 0) {
        ward_grpc_call_finish(call, WARD_GRPC_PERMISSION_DENIED, "refused: \xff\x01 100%");
        return WARD_GRPC_PERMISSION_DENIED;
    }
    if (strcmp(path, "/ward.v1.Mesh/Connect") != 0 && strncmp(path, "/fuzz.", 6) != 0)
        return WARD_GRPC_UNIMPLEMENTED;
    ward_grpc_call_set_data(call, NULL);
    return WARD_GRPC_OK;
}

static void ward__on_message(ward_grpc_call_t *call, const uint8_t *msg, size_t len, void *d)
{
    static const uint8_t reply[] = "\x0a\x05hello";
    switch (len > 0 ? msg[0] : 0) {
    case 'F': /* finish now, then try to send (refused) */
        if (ward_grpc_call_finish(call, WARD_GRPC_OK, NULL) == 0)
            WARD_FUZZ_CHECK(ward_grpc_call_send(call, reply, sizeof(reply) - 1) == WARD_EINVAL);
        break;
    case 'X':
        ward_grpc_call_finish(call, WARD_GRPC_INVALID_ARGUMENT,
                              len > 1 ? "bad \"message\" \r\n\x7f" : "");
        break;
    case 'C':
        ward_grpc_call_cancel(call);
        break;
    case 'E': /* echo */
        ward_grpc_call_send(call, msg, len);
        break;
    case 'G':
        ward_grpc_conn_goaway(ward_grpc_call_conn(call), 1);
        break;
    case 'B': { /* a big reply: flow control holds it back */
        static uint8_t big[70000];
        ward_grpc_call_send(call, big, sizeof(big));
        break;
    }
    default:
        ward_grpc_call_send(call, reply, sizeof(reply) - 1);
        break;
    }
    (void)ward_grpc_call_queued(call);
}

static void ward__on_half_close(ward_grpc_call_t *call, void *d)
{
    ward_grpc_call_finish(call, WARD_GRPC_OK, "done");
}

static void ward__on_close(ward_grpc_call_t *call, int status, const char *message, void *d)
{
    WARD_FUZZ_CHECK(message != NULL);
    WARD_FUZZ_CHECK(status >= 0 && status <= 16);
}

static void ward__on_ping_ack(ward_grpc_conn_t *conn, void *d) {}

static const ward_grpc_callbacks_t ward__cb = {
    .on_call = ward__on_call,
    .on_message = ward__on_message,
    .on_half_close = ward__on_half_close,
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
    ward_grpc_conn_t *conn = ward_grpc_conn_new(1, &ward__cb, (ctl & 0x80) ? &small : NULL, NULL);
    if (conn == NULL) return 0;
    uint64_t now = 1000;
    ward_grpc_conn_tick(conn, now);
    if (ctl & 0x20) ward_grpc_conn_ping(conn);
    ward_fuzz_grpc_drain(conn);

    now = ward_fuzz_grpc_feed(conn, data, size, ctl, now);
    (void)ward_grpc_conn_alive(conn);
    (void)ward_grpc_conn_want_write(conn);
    ward_grpc_conn_tick(conn, now + 3600 * 1000);
    ward_fuzz_grpc_drain(conn);
    ward_grpc_conn_free(conn);
    return 0;
}
