/* stats.h — per-worker counters. Each worker owns its ward_stats_t and is its only writer: an
 * increment is a relaxed load + store (plain moves on x86-64, no lock prefix), and the admin thread
 * sums the workers' values on scrape. Nothing here is on a lock. */
#ifndef WARD_PROXY_STATS_H
#define WARD_PROXY_STATS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "config.h"
#include "ward/strbuf.h"
#include "ward/tls.h"

typedef struct {
    atomic_uint_fast64_t v;
} ward_counter_t;

static inline void ward_counter_add(ward_counter_t *c, uint64_t n)
{
    atomic_store_explicit(&c->v, atomic_load_explicit(&c->v, memory_order_relaxed) + n,
                          memory_order_relaxed);
}

static inline void ward_counter_sub(ward_counter_t *c, uint64_t n)
{
    atomic_store_explicit(&c->v, atomic_load_explicit(&c->v, memory_order_relaxed) - n,
                          memory_order_relaxed);
}

static inline uint64_t ward_counter_get(const ward_counter_t *c)
{
    return atomic_load_explicit(&c->v, memory_order_relaxed);
}

typedef enum { WARD_FLOW_TO_UPSTREAM = 0, WARD_FLOW_TO_DOWNSTREAM = 1 } ward_flow_t;

/* Counters whose labels are known only at run time (policy names, peer identities): a small
 * open-addressing table per worker, keyed by (direction, code, a, b). Used for
 * ward_authz_decisions_total{direction,decision,policy,peer_identity} (code = allow, a = policy,
 * b = peer) and ward_tls_peer_handshakes_total{direction,result,reason,peer_identity} (code =
 * reason, a = peer). The owning worker looks entries up without a lock (it is the only writer)
 * and inserts under `mu`; the scraper reads under `mu`. Bounded: past WARD_LABEL_SLOTS/2 distinct
 * label sets, new ones are counted with peer_identity "_other". */
#define WARD_LABEL_SLOTS 1024
typedef struct {
    char *a, *b; /* owned; "" when absent */
    uint64_t hash;
    uint8_t dir, code, used;
    ward_counter_t n;
} ward_label_entry_t;

typedef struct {
    pthread_mutex_t mu;
    ward_label_entry_t *slots; /* WARD_LABEL_SLOTS, allocated on first use */
    size_t count;
} ward_label_table_t;

/* Histogram bucket bounds (seconds), shared by every worker; counts are per bucket (not
 * cumulative) and summed + accumulated on scrape. */
#define WARD_CONN_BUCKETS 12
#define WARD_REQ_BUCKETS  14
extern const double ward_conn_bucket_bounds[WARD_CONN_BUCKETS];
extern const double ward_req_bucket_bounds[WARD_REQ_BUCKETS];

typedef struct {
    ward_counter_t bucket[WARD_REQ_BUCKETS + 1]; /* the last one is +Inf */
    ward_counter_t sum_us;
} ward_req_hist_t;

typedef struct {
    ward_counter_t bucket[WARD_CONN_BUCKETS + 1];
    ward_counter_t sum_ms;
} ward_conn_hist_t;

/* Requests by ward_req_proto_t (http1, http2, grpc) and status class (0 = no response, 1..5). */
#define WARD_REQ_PROTOS 3

typedef struct {
    /* reason NONE = success */
    ward_counter_t handshakes[WARD_DIR_COUNT][WARD_REASON_COUNT];
    ward_counter_t refused_by_peer[WARD_DIR_COUNT][WARD_REASON_COUNT]; /* the peer's alert */
    ward_counter_t resumed[WARD_DIR_COUNT];
    ward_counter_t conns_total[WARD_DIR_COUNT];
    ward_counter_t conns_open[WARD_DIR_COUNT];
    ward_counter_t bytes[WARD_DIR_COUNT][2];
    ward_counter_t upstream_connect_failures[WARD_DIR_COUNT];
    ward_counter_t timeouts[WARD_DIR_COUNT];
    ward_counter_t refused_no_identity[WARD_DIR_COUNT];
    ward_counter_t accept_paused_fds;
    ward_counter_t protocols[WARD_DIR_COUNT][3]; /* connections by ward_proto_t */
    ward_counter_t plaintext[WARD_DIR_COUNT];    /* carried without mTLS (passthrough/permissive) */
    ward_counter_t egress_refused; /* --strict-egress: no sidecar at the destination */
    ward_counter_t loops_refused[WARD_DIR_COUNT]; /* captured connections aimed at ourselves */
    ward_counter_t requests[WARD_DIR_COUNT][WARD_REQ_PROTOS][6];
    ward_label_table_t decisions;       /* code: 1 allow, 0 deny; a: policy; b: peer */
    ward_label_table_t peer_handshakes; /* code: ward_tls_reason_t; a: peer id */
    ward_req_hist_t req_duration[WARD_DIR_COUNT][WARD_REQ_PROTOS][6];
    ward_conn_hist_t conn_duration[WARD_DIR_COUNT];
} ward_stats_t;

/* Observes one request's / connection's duration (worker thread only). */
void ward_stats_observe_request(ward_stats_t *s, ward_dir_t dir, unsigned proto, unsigned cls,
                                uint64_t us);
void ward_stats_observe_conn(ward_stats_t *s, ward_dir_t dir, uint64_t ms);

void ward_stats_init(ward_stats_t *s);
void ward_stats_destroy(ward_stats_t *s);
/* Counts one authorization decision (worker thread only). policy and peer may be NULL. */
void ward_stats_count_decision(ward_stats_t *s, ward_dir_t dir, int allow, const char *policy,
                               const char *peer);
/* Counts one handshake outcome with the peer's verified identity (worker thread only; peer NULL
 * when none was verified). */
void ward_stats_count_peer_handshake(ward_stats_t *s, ward_dir_t dir, ward_tls_reason_t reason,
                                     const char *peer);

/* Process-wide values owned by the main thread. */
typedef struct {
    ward_counter_t reloads_ok;
    ward_counter_t reloads_failed;
} ward_main_stats_t;

/* Appends the Prometheus text exposition of the summed worker stats to out.
 * Returns 0 or WARD_ENOMEM. */
int ward_stats_render(ward_strbuf_t *out, ward_stats_t *const *workers, size_t nworkers,
                      const ward_main_stats_t *main_stats, int64_t cert_not_after);

#endif
