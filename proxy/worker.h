/* worker.h — a worker thread: one libuv loop, its own SO_REUSEPORT listener per mapping, its own
 * chunk pool, session cache and counters. Connections never leave the worker that accepted them.
 * The main thread talks to a worker only through `cmd` bits + uv_async_send (drain, force close).
 */
#ifndef WARD_PROXY_WORKER_H
#define WARD_PROXY_WORKER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "identity_store.h"
#include "peers.h"
#include "policy_store.h"
#include "stats.h"
#include "ward/buf.h"

typedef struct ward_worker ward_worker_t;
typedef struct ward_conn ward_conn_t;

typedef struct {
    uv_poll_t poll;
    int fd;
    const ward_mapping_t *map;
    ward_worker_t *w;
    int active;
} ward_listener_t;

/* Outbound session cache: one resumable session per mapping, tied to the identity generation. */
typedef struct {
    SSL_SESSION *sess;
    uint64_t generation;
} ward_session_slot_t;

/* Shared, read-only after start-up (except the identity store, which has its own lock). */
typedef struct {
    const ward_config_t *cfg;
    ward_identity_store_t *store;
    ward_policy_store_t *policy;
    ward_peers_t *peers; /* transparent outbound: who has a sidecar */
    atomic_uint_fast64_t next_conn_id;
    /* --max-connections is process-wide: one atomic add/sub per connection (never per byte). A
     * worker at the cap stops polling its listeners; the next close anywhere wakes the paused
     * workers (WARD_CMD_RESUME). */
    atomic_uint_fast64_t open_conns;
    atomic_uint paused_workers;
    ward_worker_t *workers;
    unsigned nworkers;
    uv_async_t *worker_drained; /* main loop's async, signalled when a worker has drained */
} ward_shared_t;

/* DRAIN: stop accepting, let connections finish; the worker then sets `drained` and wakes main.
 * FORCE_CLOSE: abort every open connection. STOP: close the loop's handles and end the thread
 * (sent once, last: nothing is sent to a worker after STOP). */
enum {
    WARD_CMD_DRAIN = 1u << 0,
    WARD_CMD_FORCE_CLOSE = 1u << 1,
    WARD_CMD_STOP = 1u << 2,
    WARD_CMD_RESUME = 1u << 3,
    WARD_CMD_SNAPSHOT = 1u << 4 /* render the open connections for /connections */
};

/* A /connections request handed to a worker: the main thread fills `out`/`peer`, sends
 * WARD_CMD_SNAPSHOT and waits on `cv` (bounded) until the worker has appended its rows. */
typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    ward_strbuf_t *out; /* rows appended as JSON objects, each followed by ',' */
    const char *peer;   /* only connections whose peer identity equals this (NULL: all) */
    size_t rows;
    int pending;
    int rc;
} ward_snapshot_req_t;

struct ward_worker {
    uv_loop_t loop;
    uv_thread_t thread;
    uv_async_t async;
    atomic_uint cmd;
    unsigned index;
    ward_shared_t *shared;
    ward_listener_t *listeners; /* one per mapping */
    size_t nlisteners;
    ward_session_slot_t *sessions; /* one per mapping */
    ward_pool_t pool;
    ward_stats_t stats;
    ward_conn_t *conns;  /* doubly-linked list of open connections */
    ward_authz_t *authz; /* this worker's reference to the current policy (see conn.c) */
    uint64_t authz_gen;
    uint64_t nconns;
    int accept_paused;
    int fd_paused;       /* accepting paused after running out of descriptors */
    uv_timer_t fd_retry; /* resumes it */
    int draining;
    atomic_int drained;
    ward_snapshot_req_t snap;
};

/* Creates the worker's listening sockets (bound now, so errors surface at start-up).
 * Returns 0 or a negative errno with err set. */
int ward_worker_init(ward_worker_t *w, unsigned index, ward_shared_t *shared, char *err,
                     size_t errlen);
int ward_worker_start(ward_worker_t *w);
/* Thread-safe: sets cmd bits and wakes the worker. */
void ward_worker_send(ward_worker_t *w, unsigned cmd);
void ward_worker_join(ward_worker_t *w);
void ward_worker_destroy(ward_worker_t *w);

/* --- used by conn.c --- */
void ward_worker_conn_added(ward_worker_t *w, ward_conn_t *c);
void ward_worker_conn_removed(ward_worker_t *w, ward_conn_t *c);

/* conn.c: starts a connection for an accepted fd. Takes ownership of fd. */
void ward_conn_accept(ward_worker_t *w, const ward_mapping_t *map, size_t map_index, int fd);
/* conn.c: closes a connection now (drain deadline, shutdown). */
void ward_conn_abort(ward_conn_t *c, const char *why);
ward_conn_t *ward_conn_next(ward_conn_t *c);
/* Renders worker w's open connections (see ward_snapshot_req_t); called on the main thread.
 * Waits at most timeout_ms. Returns 0, WARD_ENOMEM, or UV_ETIMEDOUT (the worker did not answer). */
int ward_worker_snapshot(ward_worker_t *w, ward_strbuf_t *out, const char *peer, size_t *rows,
                         uint64_t timeout_ms);
/* conn.c: appends c as a JSON object followed by ','. Returns 1 if rendered, 0 if filtered out,
 * WARD_ENOMEM. */
int ward_conn_render(ward_conn_t *c, ward_strbuf_t *out, const char *peer);
/* conn.c: asks an HTTP connection to finish its in-flight requests and take no new ones. */
void ward_conn_drain(ward_conn_t *c);

#endif
