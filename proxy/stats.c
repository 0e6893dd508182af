/* stats.c — Prometheus text rendering of the per-worker counters (see stats.h). */
#include "stats.h"

#include <stddef.h>

#include <stdarg.h>
#include <stdlib.h>
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
static int ward__per_direction(ward_strbuf_t *o, ward_stats_t *const *workers, size_t nworkers,
                               const char *name, const char *type, const char *help, size_t off)
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

/* --- histograms ---------------------------------------------------------------------------- */

const double ward_conn_bucket_bounds[WARD_CONN_BUCKETS] = {0.001, 0.005, 0.01, 0.05, 0.1, 0.5,
                                                           1,     5,     10,   60,   300, 3600};
const double ward_req_bucket_bounds[WARD_REQ_BUCKETS] = {
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10};

static size_t ward__bucket(const double *bounds, size_t n, double v)
{
    size_t i = 0;
    while (i < n && v > bounds[i])
        i++;
    return i;
}

void ward_stats_observe_request(ward_stats_t *s, ward_dir_t dir, unsigned proto, unsigned cls,
                                uint64_t us)
{
    if (proto >= WARD_REQ_PROTOS || cls >= 6) return;
    ward_req_hist_t *h = &s->req_duration[dir][proto][cls];
    ward_counter_add(
        &h->bucket[ward__bucket(ward_req_bucket_bounds, WARD_REQ_BUCKETS, (double)us / 1e6)], 1);
    ward_counter_add(&h->sum_us, us);
}

void ward_stats_observe_conn(ward_stats_t *s, ward_dir_t dir, uint64_t ms)
{
    ward_conn_hist_t *h = &s->conn_duration[dir];
    ward_counter_add(
        &h->bucket[ward__bucket(ward_conn_bucket_bounds, WARD_CONN_BUCKETS, (double)ms / 1e3)], 1);
    ward_counter_add(&h->sum_ms, ms);
}

/* Renders one histogram series: per-bucket counts summed over workers (at byte offset off of
 * ward_stats_t), accumulated into the cumulative _bucket lines, then _sum and _count. */
static int ward__render_hist(ward_strbuf_t *o, ward_stats_t *const *workers, size_t nworkers,
                             const char *name, const char *labels, const double *bounds, size_t nb,
                             size_t off, size_t sum_off, double sum_scale)
{
    uint64_t cum = 0, sum = 0;
    int rc = 0;
    for (size_t w = 0; w < nworkers; w++)
        sum += ward_counter_get((const ward_counter_t *)((const char *)workers[w] + sum_off));
    for (size_t b = 0; b <= nb; b++) {
        for (size_t w = 0; w < nworkers; w++)
            cum += ward_counter_get((const ward_counter_t *)((const char *)workers[w] + off) + b);
        if (b < nb)
            rc |= ward_strbuf_printf(o, "%s_bucket{%s,le=\"%g\"} %llu\n", name, labels, bounds[b],
                                     (unsigned long long)cum);
        else
            rc |= ward_strbuf_printf(o, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels,
                                     (unsigned long long)cum);
    }
    rc |= ward_strbuf_printf(o, "%s_sum{%s} %.6f\n%s_count{%s} %llu\n", name, labels,
                             (double)sum * sum_scale, name, labels, (unsigned long long)cum);
    return rc;
}

/* --- run-time labelled counters ---------------------------------------------------------- */

static void ward__labels_init(ward_label_table_t *t)
{
    memset(t, 0, sizeof(*t));
    pthread_mutex_init(&t->mu, NULL);
}

static void ward__labels_destroy(ward_label_table_t *t)
{
    if (t->slots != NULL) {
        for (size_t i = 0; i < WARD_LABEL_SLOTS; i++) {
            ward_free(t->slots[i].a);
            ward_free(t->slots[i].b);
        }
        ward_free(t->slots);
        t->slots = NULL;
    }
    pthread_mutex_destroy(&t->mu);
}

void ward_stats_init(ward_stats_t *s)
{
    memset(s, 0, sizeof(*s));
    ward__labels_init(&s->decisions);
    ward__labels_init(&s->peer_handshakes);
}

void ward_stats_destroy(ward_stats_t *s)
{
    ward__labels_destroy(&s->decisions);
    ward__labels_destroy(&s->peer_handshakes);
}

static uint64_t ward__fnv(uint64_t h, const char *s)
{
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 0x100000001b3ull;
    return (h ^ 0xff) * 0x100000001b3ull;
}

static char *ward__dup(const char *s)
{
    size_t n = strlen(s) + 1;
    char *d = ward_malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

/* Adds 1 to the (dir, code, a, b) counter; b is the label folded into "_other" when full. */
static void ward__labels_count(ward_label_table_t *t, unsigned dir, unsigned code, const char *a,
                               const char *b)
{
    if (a == NULL) a = "";
    if (b == NULL) b = "";
    for (int attempt = 0; attempt < 2; attempt++) {
        uint64_t h =
            ward__fnv(ward__fnv(0xcbf29ce484222325ull ^ (uint64_t)(dir * 256 + code), a), b);
        if (t->slots == NULL) {
            ward_label_entry_t *slots = ward_calloc(WARD_LABEL_SLOTS, sizeof(*slots));
            if (slots == NULL) return;
            pthread_mutex_lock(&t->mu);
            t->slots = slots;
            pthread_mutex_unlock(&t->mu);
        }
        for (size_t i = 0; i < WARD_LABEL_SLOTS; i++) {
            ward_label_entry_t *e = &t->slots[(h + i) & (WARD_LABEL_SLOTS - 1)];
            if (!e->used) {
                if (t->count >= WARD_LABEL_SLOTS / 2 && strcmp(b, "_other") != 0) break;
                char *da = ward__dup(a), *db = ward__dup(b);
                if (da == NULL || db == NULL) {
                    ward_free(da);
                    ward_free(db);
                    return;
                }
                pthread_mutex_lock(&t->mu);
                e->a = da;
                e->b = db;
                e->hash = h;
                e->dir = (uint8_t)dir;
                e->code = (uint8_t)code;
                e->used = 1;
                t->count++;
                pthread_mutex_unlock(&t->mu);
                ward_counter_add(&e->n, 1);
                return;
            }
            if (e->hash == h && e->dir == dir && e->code == code && strcmp(e->a, a) == 0 &&
                strcmp(e->b, b) == 0) {
                ward_counter_add(&e->n, 1);
                return;
            }
        }
        b = "_other"; /* table full: fold into one series */
    }
}

void ward_stats_count_decision(ward_stats_t *s, ward_dir_t dir, int allow, const char *policy,
                               const char *peer)
{
    ward__labels_count(&s->decisions, dir, allow ? 1 : 0, policy, peer);
}

void ward_stats_count_peer_handshake(ward_stats_t *s, ward_dir_t dir, ward_tls_reason_t reason,
                                     const char *peer)
{
    ward__labels_count(&s->peer_handshakes, dir, reason, "", peer);
}

typedef struct {
    const char *a, *b;
    uint8_t dir, code;
    uint64_t n;
} ward__row_t;

static int ward__row_cmp(const void *x_, const void *y_)
{
    const ward__row_t *x = x_, *y = y_;
    if (x->dir != y->dir) return x->dir < y->dir ? -1 : 1;
    if (x->code != y->code) return x->code < y->code ? -1 : 1;
    int c = strcmp(x->a, y->a);
    return c ? c : strcmp(x->b, y->b);
}

/* Renders one table summed over the workers (same label set -> one series); `line` prints the
 * label part of one series. */
static int ward__render_labels(ward_strbuf_t *o, ward_stats_t *const *workers, size_t nworkers,
                               size_t table_off, const char *name,
                               int (*line)(ward_strbuf_t *o, const ward__row_t *r))
{
    size_t n = 0;
    int rc = 0;
    ward__row_t *rows = ward_malloc(nworkers * WARD_LABEL_SLOTS * sizeof(*rows) + 1);
    if (rows == NULL) return WARD_ENOMEM;
#define WARD__TABLE(w) ((ward_label_table_t *)((char *)workers[w] + table_off))
    for (size_t w = 0; w < nworkers; w++)
        pthread_mutex_lock(&WARD__TABLE(w)->mu);
    for (size_t w = 0; w < nworkers; w++) {
        const ward_label_table_t *t = WARD__TABLE(w);
        if (t->slots == NULL) continue;
        for (size_t i = 0; i < WARD_LABEL_SLOTS; i++) {
            const ward_label_entry_t *e = &t->slots[i];
            if (e->used)
                rows[n++] = (ward__row_t){e->a, e->b, e->dir, e->code, ward_counter_get(&e->n)};
        }
    }
    qsort(rows, n, sizeof(*rows), ward__row_cmp);
    for (size_t i = 0; i < n;) {
        uint64_t sum = 0;
        size_t j = i;
        for (; j < n && ward__row_cmp(&rows[i], &rows[j]) == 0; j++)
            sum += rows[j].n;
        rc |= ward_strbuf_printf(o, "%s{", name);
        rc |= line(o, &rows[i]);
        rc |= ward_strbuf_printf(o, "} %llu\n", (unsigned long long)sum);
        i = j;
    }
    for (size_t w = 0; w < nworkers; w++)
        pthread_mutex_unlock(&WARD__TABLE(w)->mu);
#undef WARD__TABLE
    ward_free(rows);
    return rc;
}

static int ward__decision_line(ward_strbuf_t *o, const ward__row_t *r)
{
    int rc =
        ward_strbuf_printf(o, "direction=\"%s\",decision=\"%s\",policy=", ward_dir_name(r->dir),
                           r->code ? "allow" : "deny");
    rc |= ward_strbuf_label(o, r->a);
    rc |= ward_strbuf_printf(o, ",peer_identity=");
    rc |= ward_strbuf_label(o, r->b);
    return rc;
}

static int ward__handshake_line(ward_strbuf_t *o, const ward__row_t *r)
{
    int rc = ward_strbuf_printf(
        o, "direction=\"%s\",result=\"%s\",reason=\"%s\",peer_identity=", ward_dir_name(r->dir),
        r->code ? "failure" : "success", ward_tls_reason_name((ward_tls_reason_t)r->code));
    rc |= ward_strbuf_label(o, r->b);
    return rc;
}

static int ward__render_decisions(ward_strbuf_t *o, ward_stats_t *const *workers, size_t nworkers)
{
    int rc = ward_strbuf_printf(o, "# HELP ward_authz_decisions_total Authorization decisions by "
                                   "direction, decision, deciding policy and peer identity.\n"
                                   "# TYPE ward_authz_decisions_total counter\n");
    rc |= ward__render_labels(o, workers, nworkers, offsetof(ward_stats_t, decisions),
                              "ward_authz_decisions_total", ward__decision_line);
    rc |= ward_strbuf_printf(o, "# HELP ward_tls_peer_handshakes_total Handshakes by direction, "
                                "result, reason and the peer's verified SPIFFE id (empty when "
                                "none was verified).\n"
                                "# TYPE ward_tls_peer_handshakes_total counter\n");
    rc |= ward__render_labels(o, workers, nworkers, offsetof(ward_stats_t, peer_handshakes),
                              "ward_tls_peer_handshakes_total", ward__handshake_line);
    return rc;
}

int ward_stats_render(ward_strbuf_t *o, ward_stats_t *const *workers, size_t nworkers,
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
            if (v == 0 && r == WARD_REASON_PLAINTEXT_REJECTED && d == WARD_DIR_OUTBOUND) continue;
            rc |=
                ward_strbuf_printf(o,
                                   "ward_tls_handshakes_total{direction=\"%s\",result=\"%s\","
                                   "reason=\"%s\"} %llu\n",
                                   ward_dir_name(d), r == WARD_REASON_NONE ? "success" : "failure",
                                   ward_tls_reason_name(r), (unsigned long long)v);
        }
    }
    rc |= ward_strbuf_printf(o, "# HELP ward_tls_refused_by_peer_total Handshakes the peer "
                                "refused with an alert, by the reason its alert names (the peer "
                                "counts the refusal itself in ward_tls_handshakes_total).\n"
                                "# TYPE ward_tls_refused_by_peer_total counter\n");
    for (int d = 0; d < WARD_DIR_COUNT; d++)
        for (int r = 1; r < WARD_REASON_COUNT; r++) {
            uint64_t v = SUM(refused_by_peer[d][r]);
            if (v == 0 && (r == WARD_REASON_TIMEOUT || r == WARD_REASON_PLAINTEXT_REJECTED))
                continue;
            rc |= ward_strbuf_printf(o,
                                     "ward_tls_refused_by_peer_total{direction=\"%s\","
                                     "reason=\"%s\"} %llu\n",
                                     ward_dir_name(d), ward_tls_reason_name(r),
                                     (unsigned long long)v);
        }
    rc |= ward_strbuf_printf(o,
                             "# HELP ward_build_info ward-proxy's version.\n"
                             "# TYPE ward_build_info gauge\n"
                             "ward_build_info{version=\"%s\"} 1\n",
                             WARD_VERSION);
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
    static const char *const protos[] = {"tcp", "http1", "http2"};
    static const char *const req_protos[] = {"http1", "http2", "grpc"};
    static const char *const classes[] = {"none", "1xx", "2xx", "3xx", "4xx", "5xx"};
    rc |= ward_strbuf_printf(o, "# HELP ward_connections_by_protocol_total Connections by the "
                                "protocol they carried (ALPN or sniffed).\n"
                                "# TYPE ward_connections_by_protocol_total counter\n");
    for (int d = 0; d < WARD_DIR_COUNT; d++)
        for (int p = 0; p < 3; p++)
            rc |= ward_strbuf_printf(
                o, "ward_connections_by_protocol_total{direction=\"%s\",protocol=\"%s\"} %llu\n",
                ward_dir_name(d), protos[p], (unsigned long long)SUM(protocols[d][p]));
    rc |= ward_strbuf_printf(o, "# HELP ward_requests_total HTTP requests finished, by protocol "
                                "and response status class (none: no response).\n"
                                "# TYPE ward_requests_total counter\n");
    for (int d = 0; d < WARD_DIR_COUNT; d++)
        for (int p = 0; p < WARD_REQ_PROTOS; p++)
            for (int k = 0; k < 6; k++) {
                uint64_t v = SUM(requests[d][p][k]);
                if (v == 0 && (k == 0 || k == 1 || k == 3)) continue;
                rc |= ward_strbuf_printf(o,
                                         "ward_requests_total{direction=\"%s\",protocol=\"%s\","
                                         "status_class=\"%s\"} %llu\n",
                                         ward_dir_name(d), req_protos[p], classes[k],
                                         (unsigned long long)v);
            }
    rc |= ward__per_direction(o, workers, nworkers, "ward_connections_plaintext_total", "counter",
                              "Connections carried without mTLS: captured outbound traffic to a "
                              "destination without a sidecar, or plaintext callers of a "
                              "PERMISSIVE inbound.",
                              offsetof(ward_stats_t, plaintext));
    rc |= ward__per_direction(o, workers, nworkers, "ward_capture_loops_refused_total", "counter",
                              "Captured connections refused because their original destination "
                              "was this proxy itself.",
                              offsetof(ward_stats_t, loops_refused));
    rc |= ward_strbuf_printf(o,
                             "# HELP ward_egress_refused_total Captured outbound connections "
                             "refused by --strict-egress (no sidecar at the destination).\n"
                             "# TYPE ward_egress_refused_total counter\n"
                             "ward_egress_refused_total %llu\n",
                             (unsigned long long)SUM(egress_refused));
    rc |= ward__render_decisions(o, workers, nworkers);
    rc |= ward_strbuf_printf(o, "# HELP ward_request_duration_seconds Time from a request's head "
                                "to the end of its response, by protocol and status class.\n"
                                "# TYPE ward_request_duration_seconds histogram\n");
    for (int d = 0; d < WARD_DIR_COUNT; d++)
        for (int p = 0; p < WARD_REQ_PROTOS; p++)
            for (int k = 0; k < 6; k++) {
                if (SUM(requests[d][p][k]) == 0) continue;
                char labels[128];
                snprintf(labels, sizeof(labels),
                         "direction=\"%s\",protocol=\"%s\",status_class=\"%s\"", ward_dir_name(d),
                         req_protos[p], classes[k]);
                size_t off =
                    offsetof(ward_stats_t, req_duration) +
                    ((size_t)(d * WARD_REQ_PROTOS + p) * 6 + (size_t)k) * sizeof(ward_req_hist_t);
                rc |= ward__render_hist(o, workers, nworkers, "ward_request_duration_seconds",
                                        labels, ward_req_bucket_bounds, WARD_REQ_BUCKETS,
                                        off + offsetof(ward_req_hist_t, bucket),
                                        off + offsetof(ward_req_hist_t, sum_us), 1e-6);
            }
    rc |= ward_strbuf_printf(o, "# HELP ward_connection_duration_seconds Lifetime of closed "
                                "proxied connections.\n"
                                "# TYPE ward_connection_duration_seconds histogram\n");
    for (int d = 0; d < WARD_DIR_COUNT; d++) {
        char labels[64];
        snprintf(labels, sizeof(labels), "direction=\"%s\"", ward_dir_name(d));
        size_t off = offsetof(ward_stats_t, conn_duration) + (size_t)d * sizeof(ward_conn_hist_t);
        rc |= ward__render_hist(o, workers, nworkers, "ward_connection_duration_seconds", labels,
                                ward_conn_bucket_bounds, WARD_CONN_BUCKETS,
                                off + offsetof(ward_conn_hist_t, bucket),
                                off + offsetof(ward_conn_hist_t, sum_ms), 1e-3);
    }
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
