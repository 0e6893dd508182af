/* policy_store.h — the current compiled policy (ward_authz_t), shared by all workers. Two sources:
 * ward-agent's PolicySnapshot stream (agent_client.c installs each version) or, for agent-less use,
 * --policy FILE|DIR (YAML, re-read every reload interval and on SIGHUP; the snapshot is cut for
 * this proxy's own SPIFFE id). A set that does not load or compile never replaces the good one: it
 * is logged and counted, and the old matcher stays. Workers read the current matcher through a
 * generation number (one relaxed atomic load per decision) and take the lock only when it moved. */
#ifndef WARD_PROXY_POLICY_STORE_H
#define WARD_PROXY_POLICY_STORE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <uv.h>

#include "identity_store.h"
#include "ward/authz.h"
#include "ward/strbuf.h"

typedef struct {
    pthread_mutex_t mu;
    ward_authz_t *cur; /* guarded by mu */
    uint8_t *packed;   /* guarded by mu: the installed PolicySnapshot, for /policy */
    size_t packed_len;
    const char *source; /* "agent" | "file" | "flags" */
    atomic_uint_fast64_t gen;
    /* --policy */
    const char *path;
    int mesh_default; /* Ward__V1__DefaultAction */
    ward_identity_store_t *ids;
    uint64_t hash; /* of the installed file set + our id; 0 = none yet */
    uint64_t file_version;
    uv_timer_t timer;
    int watching;
    /* counters (main thread writes, admin thread reads) */
    atomic_uint_fast64_t reloads_ok, reloads_failed;
    atomic_int valid; /* 0 after a failed load, until the next good one */
} ward_policy_store_t;

/* Starts with no policy: the mesh default applies (agent mode: deny until the first snapshot,
 * whatever the agent's default will be). With path, loads it now. Returns 0 or a negative error
 * with err set (the policy files do not load). */
int ward_policy_store_init(ward_policy_store_t *s, const char *source, const char *path,
                           int mesh_default, ward_identity_store_t *ids, char *err, size_t errlen);
/* Compiles and installs a packed PolicySnapshot. Returns 0, or an error with *why (static text)
 * when it does not compile; the current matcher then stays. */
int ward_policy_store_install(ward_policy_store_t *s, const uint8_t *packed, size_t len,
                              const char **why);
/* --policy: re-reads the files now (force: even when unchanged). */
void ward_policy_store_check(ward_policy_store_t *s, int force);
int ward_policy_store_watch(ward_policy_store_t *s, uv_loop_t *loop, uint64_t interval_ms);
void ward_policy_store_stop(ward_policy_store_t *s);
void ward_policy_store_destroy(ward_policy_store_t *s);

static inline uint64_t ward_policy_store_gen(ward_policy_store_t *s)
{
    return atomic_load_explicit(&s->gen, memory_order_acquire);
}
/* A new reference to the current matcher (never NULL after init). */
ward_authz_t *ward_policy_store_get(ward_policy_store_t *s);

/* /policy JSON page and the policy metrics (Prometheus text). Return 0 or WARD_ENOMEM. */
int ward_policy_store_json(ward_policy_store_t *s, ward_strbuf_t *out);
int ward_policy_store_metrics(ward_policy_store_t *s, ward_strbuf_t *out);

#endif
