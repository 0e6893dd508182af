/* stats.c — Prometheus text rendering of the per-worker counters (see stats.h). */
#include "stats.h"

#include <stddef.h>

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ward/alloc.h"
#include "ward/err.h"

#define SUM(field)                                                                                 \
    ({                                                                                             \
        uint64_t s_ = 0;                                                                           \
        for (size_t w_ = 0; w_ < nworkers; w_++)                                                   \
            s_ += ward_counter_get(&workers[w_]->field);                                           \
        s_;                                                                                        \
    })

/* One metric family labelled by direction: the per-direction counter array at byte offset off of
 * ward_stats_t, summed over the workers. */
static int ward__per_direction(ward_strbuf_t *o, const ward_stats_t *const *workers,
                               size_t nworkers, const char *name, const char *type,
                               const char *help, size_t off)
{
    int rc = ward_strbuf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
    for (int d = 0; d < WARD_DIR_COUNT; d++) {
        uint64_t v = 0;
        for (size_t w = 0; w < nworkers; w++)
            v += ward_counter_get((const ward_counter_t *)((const char *)workers[w] + off) + d);
        rc |= ward_strbuf_printf(o, "%s{direction=\"%s\"} %llu\n", name, ward_dir_name(d),
                                 (unsigned long long)v);
    }
    return rc;
}

int ward_stats_render(ward_strbuf_t *o, const ward_stats_t *const *workers, size_t nworkers,
                      const ward_main_stats_t *ms, int64_t cert_not_after)
{
    int rc = 0;
    static const char *const flows[2] = {"to_upstream", "to_downstream"};

    rc |= ward_strbuf_printf(o, "# HELP ward_tls_handshakes_total TLS handshakes by direction, "
                                "result and refusal reason.\n"
                                "# TYPE ward_tls_handshakes_total counter\n");
    for (int d = 0; d < WARD_DIR_COUNT; d++) {
        for (int r = 0; r < WARD_REASON_COUNT; r++) {
            uint64_t v = SUM(handshakes[d][r]);
            /* Success and the classic refusal reasons are always present, so rates start at 0. */
            if (v == 0 && r == WARD_REASON_TIMEOUT) continue;
            rc |=
                ward_strbuf_printf(o,
                                   "ward_tls_handshakes_total{direction=\"%s\",result=\"%s\","
                                   "reason=\"%s\"} %llu\n",
                                   ward_dir_name(d), r == WARD_REASON_NONE ? "success" : "failure",
                                   ward_tls_reason_name(r), (unsigned long long)v);
        }
    }
    rc |=
        ward__per_direction(o, workers, nworkers, "ward_tls_resumed_total", "counter",
                            "Handshakes that resumed a session.", offsetof(ward_stats_t, resumed));
    rc |= ward__per_direction(o, workers, nworkers, "ward_connections_open", "gauge",
                              "Proxied connections open now.", offsetof(ward_stats_t, conns_open));
    rc |= ward__per_direction(o, workers, nworkers, "ward_connections_total", "counter",
                              "Proxied connections accepted.", offsetof(ward_stats_t, conns_total));
    rc |= ward_strbuf_printf(o, "# HELP ward_bytes_total Payload bytes proxied.\n"
                                "# TYPE ward_bytes_total counter\n");
    for (int d = 0; d < WARD_DIR_COUNT; d++)
        for (int f = 0; f < 2; f++)
            rc |= ward_strbuf_printf(o, "ward_bytes_total{direction=\"%s\",flow=\"%s\"} %llu\n",
                                     ward_dir_name(d), flows[f],
                                     (unsigned long long)SUM(bytes[d][f]));
    rc |= ward__per_direction(o, workers, nworkers, "ward_upstream_connect_failures_total",
                              "counter", "Upstream TCP connects that failed or timed out.",
                              offsetof(ward_stats_t, upstream_connect_failures));
    rc |= ward__per_direction(o, workers, nworkers, "ward_idle_timeouts_total", "counter",
                              "Connections closed idle.", offsetof(ward_stats_t, timeouts));
    rc |= ward__per_direction(o, workers, nworkers, "ward_connections_refused_no_identity_total",
                              "counter",
                              "Connections closed at once because no identity was issued yet.",
                              offsetof(ward_stats_t, refused_no_identity));
    rc |= ward_strbuf_printf(o,
                             "# HELP ward_accept_paused_total Times accepting paused for lack of "
                             "file descriptors.\n"
                             "# TYPE ward_accept_paused_total counter\n"
                             "ward_accept_paused_total %llu\n",
                             (unsigned long long)SUM(accept_paused_fds));
    rc |= ward_strbuf_printf(
        o,
        "# HELP ward_cert_expiry_timestamp_seconds notAfter of the current leaf certificate.\n"
        "# TYPE ward_cert_expiry_timestamp_seconds gauge\n"
        "ward_cert_expiry_timestamp_seconds %lld\n"
        "# HELP ward_identity_reloads_total Identity reload attempts by result.\n"
        "# TYPE ward_identity_reloads_total counter\n"
        "ward_identity_reloads_total{result=\"success\"} %llu\n"
        "ward_identity_reloads_total{result=\"failure\"} %llu\n",
        (long long)cert_not_after, (unsigned long long)ward_counter_get(&ms->reloads_ok),
        (unsigned long long)ward_counter_get(&ms->reloads_failed));
    return rc ? WARD_ENOMEM : 0;
}
