/* config.h — ward-proxy's configuration: command line and WARD_* environment, parsed once at
 * start-up into an immutable ward_config_t (see README.md in this folder for the flags). */
#ifndef WARD_PROXY_CONFIG_H
#define WARD_PROXY_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "ward/addr.h"
#include "ward/log.h"

typedef enum { WARD_DIR_INBOUND = 0, WARD_DIR_OUTBOUND = 1, WARD_DIR_COUNT } ward_dir_t;

const char *ward_dir_name(ward_dir_t d);

typedef struct {
    ward_dir_t dir;
    ward_addr_t listen;
    ward_addr_t target; /* the app (inbound) or the peer sidecar (outbound) */
    char *identity;     /* outbound: SPIFFE id the peer must present; NULL for inbound */
    char *spec;         /* the mapping as written, for logs */
    /* --capture-inbound / --capture-outbound: traffic redirected by iptables/nftables; the
     * target is each connection's original destination (SO_ORIGINAL_DST) and, outbound, the
     * expected identity comes from the peer directory (--peers). */
    int transparent;
} ward_mapping_t;

typedef struct {
    /* Identity source: PEM files (cert/key/ca) or ward-agent (agent_*), never both. */
    char *agent; /* "unix:/path" or "host:port" */
    int agent_is_unix;
    char *agent_path;       /* unix socket path */
    ward_addr_t agent_addr; /* TCP address (TLS), when given as IP:PORT */
    char *agent_host;       /* TCP: a DNS name, resolved at every connect (HOST:PORT) */
    char agent_port[6];
    char *agent_bundle;     /* PEM roots that verify the agent (TCP) */
    char *agent_id;         /* SPIFFE id the agent must present (TCP) */
    char *agent_token_file; /* projected service-account token, re-read at each connect */
    char *cert_file;
    char *key_file;
    char *ca_file;
    ward_mapping_t *maps;
    size_t nmaps;
    int admin_enabled;
    ward_addr_t admin;
    unsigned workers;
    uint64_t max_connections;
    uint64_t connect_timeout_ms;
    uint64_t handshake_timeout_ms;
    uint64_t idle_timeout_ms;
    uint64_t request_timeout_ms; /* a request head must arrive within this once begun */
    uint64_t drain_timeout_ms;
    uint64_t reload_interval_ms;
    ward_log_level_t log_level;
    char *policy_path; /* --policy FILE|DIR (agent-less) */
    int mesh_default;  /* Ward__V1__DefaultAction: 0 deny, 1 allow, 2 audit */
    uint64_t sniff_timeout_ms;
#define WARD_MAX_SERVER_FIRST_PORTS 32
    uint16_t server_first_ports[WARD_MAX_SERVER_FIRST_PORTS];
    size_t nserver_first_ports;
    int access_log;    /* WARD_ACCESS_LOG_* */
    char *peers_file;  /* --peers: original destination -> expected SPIFFE id */
    int permissive;    /* --inbound-mode permissive: also accept plaintext callers */
    int strict_egress; /* --strict-egress: refuse captured outbound traffic to unknown peers */
} ward_config_t;

enum { WARD_ACCESS_LOG_OFF = 0, WARD_ACCESS_LOG_DENIED = 1, WARD_ACCESS_LOG_ALL = 2 };

#define WARD_CONFIG_EXIT 1 /* --help or --version was printed: exit 0 */

/* Parses argv (and WARD_* environment variables, which flags override) into cfg.
 * Returns 0, WARD_CONFIG_EXIT, or a negative error with a message for the user in err. */
int ward_config_parse(ward_config_t *cfg, int argc, char **argv, char *err, size_t errlen);

/* Parses one mapping "LISTEN=TARGET[,identity=ID]". Returns 0 or WARD_EINVAL with err set. */
int ward_mapping_parse(ward_mapping_t *m, ward_dir_t dir, const char *spec, char *err,
                       size_t errlen);

void ward_config_free(ward_config_t *cfg);
void ward_config_usage(FILE *out);

#endif
