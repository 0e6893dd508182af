/* agent_client.h — ward-proxy's side of ward.v1.Mesh/Connect. Runs on the main loop: connects to
 * ward-agent (Unix socket, or TCP + TLS verified against a bootstrap bundle and the agent's SPIFFE
 * id), attests (peer credentials or a service-account token), sends a CSR for a P-256 key generated
 * in memory, and installs each SVID + bundle as a new immutable identity snapshot (open connections
 * keep theirs). Renews at half the SVID lifetime (jittered). When the agent is unreachable it keeps
 * the last good identity and reconnects with jittered exponential backoff. */
#ifndef WARD_PROXY_AGENT_CLIENT_H
#define WARD_PROXY_AGENT_CLIENT_H

#include <stdint.h>
#include <uv.h>

#include "config.h"
#include "identity_store.h"
#include "peers.h"
#include "policy_store.h"
#include "stats.h"
#include "ward/grpc_sock.h"

typedef struct {
    uv_loop_t *loop;
    const ward_config_t *cfg;
    ward_identity_store_t *store;
    ward_policy_store_t *policies;
    ward_peers_t *peers;
    ward_grpc_sock_t sock;
    int sock_open;
    ward_grpc_call_t *call;
    ward_identity_t *bootstrap; /* trust-only snapshot verifying the agent (TCP) */
    ward_pool_t pool;
    EVP_PKEY *pending_key; /* key of the CSR in flight */
    EVP_PKEY *key;         /* key of the installed SVID */
    uint64_t request_id;
    /* Last good resources from the agent. */
    uint8_t **chain;
    size_t *chain_len;
    size_t nchain;
    uint8_t **roots;
    size_t *roots_len;
    size_t nroots;
    uint64_t svid_version, bundle_version, policy_version, peers_version;
    int64_t svid_not_after;
    int64_t last_update; /* Unix seconds of the last resource accepted from the agent */
    uint64_t backoff_ms;
    uv_timer_t reconnect;
    uv_timer_t renew;
    uv_timer_t tick;
    uv_getaddrinfo_t resolve; /* --agent HOST:PORT: looked up before every connect */
    int resolving;
    int connected;
    int stopping;
    /* counters (main thread only) */
    uint64_t connects, disconnects, renewals, nacks, svids_installed;
} ward_agent_client_t;

/* Starts connecting. Returns 0 or a negative error with err set (bad bootstrap bundle). */
int ward_agent_client_start(ward_agent_client_t *ac, uv_loop_t *loop, const ward_config_t *cfg,
                            ward_identity_store_t *store, ward_policy_store_t *policies,
                            ward_peers_t *peers, char *err, size_t errlen);
void ward_agent_client_stop(ward_agent_client_t *ac);
/* Appends the agent metrics (Prometheus text). */
int ward_agent_client_metrics(const ward_agent_client_t *ac, ward_strbuf_t *out);

#endif
