/* agent.h — ward-agent's state: one libuv loop serving the proxy stream (ward.v1.Mesh/Connect) and
 * the SPIFFE Workload API over a Unix socket (peer-credential attestation) and, optionally, over
 * TCP + TLS (token attestation only). Everything runs on the one loop thread. */
#ifndef WARD_CONTROL_AGENT_H
#define WARD_CONTROL_AGENT_H

#include <stdint.h>
#include <uv.h>

#include "attest.h"
#include "ca.h"
#include "ward/addr.h"
#include "ward/buf.h"
#include "ward/grpc_sock.h"
#include "ward/inject.h"
#include "ward/log.h"
#include "ward/policy.h"
#include "ward/tls.h"

typedef struct {
    char *trust_domain;
    char *state_dir;
    char *ca_cert;
    char *ca_key;
    char *listen_unix; /* path of the Unix socket */
    int tls_enabled;
    ward_addr_t listen_tls;
    char *workloads_file;
    char *jwks_file;
    char *token_issuer;
    char *token_audience;
    char *policy_dir;
    int mesh_default; /* Ward__V1__DefaultAction */
    uint64_t svid_ttl_s;
    uint64_t workload_svid_ttl_s;
    uint64_t policy_poll_ms;
    uint64_t rotation_ack_timeout_ms;
    int admin_enabled;
    ward_addr_t admin;
    ward_log_level_t log_level;
    int webhook_enabled; /* --webhook-listen: the admission webhook (webhook.h) */
    ward_addr_t webhook_listen;
    char *webhook_cert;
    char *webhook_key;
    char *inject[WARD_INJECT_OPT_COUNT]; /* --inject-NAME values; NULL: the template's */
} ward_agent_config_t;

typedef struct ward_agent ward_agent_t;
typedef struct ward_agent_conn ward_agent_conn_t;
typedef struct ward_session ward_session_t;

typedef enum { WARD_SESSION_MESH, WARD_SESSION_X509SVID, WARD_SESSION_BUNDLES } ward_session_kind_t;

/* One long-lived stream: a proxy's Mesh/Connect, or a workload's Workload API watch. */
struct ward_session {
    ward_session_t *prev, *next;
    ward_agent_conn_t *conn;
    ward_grpc_call_t *call;
    ward_session_kind_t kind;
    int active;           /* attested and serving */
    char *identity;       /* attested SPIFFE id */
    uint64_t bundle_sent; /* bundle generation last sent */
    uint64_t bundle_acked;
    uint64_t policy_hash; /* of the snapshot last sent */
    uint64_t policy_sent; /* version */
    uint64_t policy_acked;
    uint64_t svid_sent;
    uint64_t peers_sent; /* peer directory version last sent */
    char addr[48];       /* the proxy's pod address for the peer directory; "" = unknown */
    uint64_t opened_ms;
    uv_timer_t *renew; /* Workload API: re-mint at half-life */
};

struct ward_agent_conn {
    ward_grpc_sock_t sock;
    ward_agent_t *agent;
    ward_agent_conn_t *prev, *next;
    int is_unix;
    ward_peercred_t cred;
    const char *peer_identity; /* from --workloads, unix only; NULL if the uid is unknown */
    uint64_t id;
};

typedef struct {
    uint64_t streams_opened;
    uint64_t attest_ok;
    uint64_t attest_failed;
    uint64_t svids_signed;
    uint64_t csr_refused;
    uint64_t policy_pushes;
    uint64_t policy_reload_ok;
    uint64_t policy_reload_failed;
    uint64_t nacks;
    uint64_t workload_svids;
    uint64_t accept_paused;
} ward_agent_stats_t;

struct ward_agent {
    uv_loop_t *loop;
    ward_agent_config_t cfg;
    ward_ca_t *ca;
    ward_workloads_t *workloads;
    ward_jwks_t *jwks;
    ward_policy_set_t policies;
    int policies_loaded;
    uint64_t policy_version;
    uint64_t peers_version; /* the peer directory's version (bumped when it changes) */
    int peers_dirty;        /* a mesh stream with an address opened or closed: push on the tick */
    uint64_t svid_version;
    ward_identity_t *tls_identity; /* the agent's own SVID for the TLS listener */
    uint8_t *tls_key_pkcs8;
    ward_pool_t pool;
    uv_pipe_t unix_listener;
    uv_tcp_t tls_listener;
    uv_timer_t tick; /* deadlines + keepalive */
    uv_timer_t policy_timer;
    uv_timer_t rotation_timer;
    uv_signal_t sig_term, sig_int, sig_usr1, sig_hup;
    uv_tcp_t admin;
    int rotation_pending;
    uint64_t rotation_bundle_version;
    uint64_t bundle_gen_seen; /* the CA's content hash when bundle_version was last bumped */
    uint64_t bundle_version;  /* increases whenever the bundle's content changes */
    ward_agent_conn_t *conns;
    ward_session_t *sessions;
    uint64_t nconns, nsessions;
    uint64_t next_conn_id;
    char policy_error[1024];
    uint64_t ready_ms;
    ward_agent_stats_t stats;
    int stopping;
};

/* control/mesh.c + workload_api.c: the gRPC handlers. */
int ward_agent_on_call(ward_grpc_conn_t *conn, ward_grpc_call_t *call, const char *path,
                       void *conn_data);
extern const ward_grpc_callbacks_t ward_agent_grpc_callbacks;
/* Pushes a fresh bundle / policy snapshot to every session whose view changed. */
void ward_agent_push_bundles(ward_agent_t *a);
void ward_agent_push_policies(ward_agent_t *a);
/* Sends the peer directory to every mesh stream if it changed since the last push (called from
 * the agent's 1 s tick, so a burst of proxies starting costs one push per second). */
void ward_agent_push_peers(ward_agent_t *a);
void ward_session_free(ward_session_t *s);
/* The bundle's version for the proto: bumped whenever the CA's bundle content changes. */
uint64_t ward_agent_bundle_version(ward_agent_t *a);

#endif
