/* peers.h — the peer directory of transparent outbound capture: which original destinations have
 * a sidecar, and the SPIFFE id each must present. Loaded from --peers FILE (one entry per line:
 * `IP[:PORT] spiffe://TD/PATH`, `#` comments; an entry with a port wins over one without), which
 * in Kubernetes is rendered from workload annotations into a ConfigMap. Re-read every reload
 * interval and on SIGHUP; a file that does not parse is refused with a log line and the previous
 * directory stays. Lookups take a mutex once per new captured connection (never per byte). */
#ifndef WARD_PROXY_PEERS_H
#define WARD_PROXY_PEERS_H

#include <pthread.h>
#include <stddef.h>
#include <sys/stat.h>
#include <uv.h>

#include "ward/addr.h"
#include "ward/strbuf.h"

typedef struct ward_peer_entry ward_peer_entry_t;

typedef struct {
    pthread_mutex_t mu;
    ward_peer_entry_t *entries; /* guarded by mu; sorted; from --peers */
    size_t count;
    ward_peer_entry_t *agent_entries; /* guarded by mu; sorted; ward-agent's directory */
    size_t agent_count;
    unsigned long long agent_version;
    const char *file;
    struct stat seen;
    uv_timer_t timer;
    int watching;
    unsigned long long reloads_ok, reloads_failed;
} ward_peers_t;

/* Loads file (NULL: an empty directory: every captured destination is "no sidecar").
 * Returns 0 or a negative error with err set ("file:line: problem"). */
int ward_peers_init(ward_peers_t *p, const char *file, char *err, size_t errlen);
/* Re-reads the file if it changed (force: regardless). */
void ward_peers_check(ward_peers_t *p, int force);
int ward_peers_watch(ward_peers_t *p, uv_loop_t *loop, uint64_t interval_ms);
void ward_peers_stop(ward_peers_t *p);
void ward_peers_destroy(ward_peers_t *p);
/* The expected SPIFFE id for dst (IP and port) as a heap copy the caller frees with ward_free,
 * or NULL when dst has no sidecar (or memory ran out). */
char *ward_peers_lookup(ward_peers_t *p, const struct sockaddr *dst);
size_t ward_peers_count(ward_peers_t *p);
/* Replaces the agent's directory (addresses without ports). --peers entries win over it.
 * Returns 0, WARD_EPARSE (err set: an address or id that does not parse; nothing changes) or
 * WARD_ENOMEM. */
int ward_peers_set_agent(ward_peers_t *p, const char *const *addrs, const char *const *ids,
                         size_t n, unsigned long long version, char *err, size_t errlen);

/* GET /peers: both directories as JSON. Returns 0 or WARD_ENOMEM. */
int ward_peers_json(ward_peers_t *p, ward_strbuf_t *out);

/* Parses a directory text into a sorted entry array (exposed for the unit test). Returns 0 or
 * WARD_EPARSE with err = "line N: problem". */
int ward_peers_parse(const char *text, size_t len, ward_peer_entry_t **out, size_t *count,
                     char *err, size_t errlen);
void ward_peers_free_entries(ward_peer_entry_t *e, size_t count);
/* Looks dst up in a parsed array: the id (owned by the array) or NULL. */
const char *ward_peers_find(const ward_peer_entry_t *e, size_t count, const struct sockaddr *dst);

#endif
