/* ward/admin.h — the admin listener of ward-proxy and ward-agent (loopback by default): GET /live,
 * /ready, /metrics. Runs on the main thread's loop; each request is answered and the connection
 * closed (HTTP/1.0 style). */
#ifndef WARD_ADMIN_H
#define WARD_ADMIN_H

#include <uv.h>

#include "ward/strbuf.h"
#include "ward/addr.h"

typedef struct {
    uv_tcp_t tcp;
    int open;
    /* Renders /metrics into out; returns 0 or a negative error. */
    int (*render_metrics)(void *ctx, ward_strbuf_t *out);
    /* 1 when the proxy takes traffic (identity loaded, listeners open, not draining). */
    int (*is_ready)(void *ctx);
    /* Optional: renders another page (JSON) for path (query: the raw text after '?', or "")
     * into out. Returns 0 (200), 1 (no such page: 404) or a negative error (500). */
    int (*render_page)(void *ctx, const char *path, const char *query, ward_strbuf_t *out);
    void *ctx;
} ward_admin_t;

/* Binds and listens. Returns 0 or a negative error with err set. */
int ward_admin_start(ward_admin_t *a, uv_loop_t *loop, const ward_addr_t *addr, char *err,
                     size_t errlen);
void ward_admin_stop(ward_admin_t *a);

#endif
