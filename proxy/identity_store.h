/* identity_store.h — the current identity snapshot, shared by all workers. The main thread swaps a
 * new snapshot in; workers take a reference per new connection. Two sources: PEM files (reload
 * watches them: stat every reload interval, and on demand for SIGHUP, keeping the old snapshot when
 * the new files are not a valid set), or ward-agent (agent_client.c calls
 * ward_identity_store_set). With the agent, the store starts empty: no identity, no traffic. */
#ifndef WARD_PROXY_IDENTITY_STORE_H
#define WARD_PROXY_IDENTITY_STORE_H

#include <pthread.h>
#include <sys/stat.h>
#include <uv.h>

#include "stats.h"
#include "ward/tls.h"

typedef struct {
    pthread_mutex_t mu;
    ward_identity_t *cur; /* guarded by mu */
    const char *files[3]; /* cert, key, bundle (owned by the config) */
    struct stat seen[3];  /* what the last attempt saw: no retry until a file changes */
    uv_timer_t timer;
    ward_main_stats_t *stats;
} ward_identity_store_t;

/* Loads the first snapshot. Returns 0 or a negative error with err set. */
int ward_identity_store_init(ward_identity_store_t *s, const char *cert, const char *key,
                             const char *ca, ward_main_stats_t *stats, char *err, size_t errlen);
/* Starts the periodic file check on loop. */
int ward_identity_store_watch(ward_identity_store_t *s, uv_loop_t *loop, uint64_t interval_ms);
/* Checks the files now; force reloads even if they look unchanged. */
void ward_identity_store_check(ward_identity_store_t *s, int force);
/* Starts an empty store fed by ward_identity_store_set (agent mode). */
void ward_identity_store_init_empty(ward_identity_store_t *s, ward_main_stats_t *stats);
/* Swaps in id (the store takes the caller's reference). */
void ward_identity_store_set(ward_identity_store_t *s, ward_identity_t *id);
/* Returns a new reference to the current snapshot, or NULL while there is none (agent mode before
 * the first SVID). */
ward_identity_t *ward_identity_store_get(ward_identity_store_t *s);
void ward_identity_store_stop(ward_identity_store_t *s);
void ward_identity_store_destroy(ward_identity_store_t *s);

#endif
