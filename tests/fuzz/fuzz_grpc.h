/* fuzz_grpc.h — what the two gRPC engine targets share: draining the engine's output and feeding
 * it the fuzzed bytes in chunks, with a GOAWAY halfway and a clock tick after every chunk, as a
 * socket owner would. ctl bits: 0x1f chunk size (0 = all at once), 0x40 send GOAWAY halfway. */
#ifndef WARD_FUZZ_GRPC_H
#define WARD_FUZZ_GRPC_H

#include "fuzz.h"
#include "ward/err.h"
#include "ward/grpc.h"

static inline void ward_fuzz_grpc_drain(ward_grpc_conn_t *conn)
{
    const uint8_t *out;
    size_t n;
    int guard = 0;
    while ((n = ward_grpc_conn_send(conn, &out)) > 0 && guard++ < 10000)
        WARD_FUZZ_CHECK(out != NULL);
}

/* Returns the clock after the last tick. */
static inline uint64_t ward_fuzz_grpc_feed(ward_grpc_conn_t *conn, const uint8_t *data, size_t size,
                                           uint8_t ctl, uint64_t now)
{
    size_t chunk = ctl & 0x1f;
    if (chunk == 0) chunk = size;
    size_t off = 0;
    while (off < size) {
        size_t n = size - off < chunk ? size - off : chunk;
        int rc = ward_grpc_conn_recv(conn, data + off, n);
        off += n;
        ward_fuzz_grpc_drain(conn);
        if (rc < 0) {
            WARD_FUZZ_CHECK(rc == WARD_EPARSE || rc == WARD_ENOMEM || rc == WARD_EINVAL);
            break;
        }
        if ((ctl & 0x40) && off >= size / 2) {
            ward_grpc_conn_goaway(conn, 1);
            ctl &= (uint8_t)~0x40;
            ward_fuzz_grpc_drain(conn);
        }
        now += 100;
        ward_grpc_conn_tick(conn, now);
        ward_fuzz_grpc_drain(conn);
        if (ward_grpc_conn_finished(conn)) break;
    }
    return now;
}

#endif
