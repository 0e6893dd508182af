/* config.c — command line and environment parsing for ward-proxy (see config.h). */
#include "config.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/spiffe.h"

const char *ward_dir_name(ward_dir_t d)
{
    return d == WARD_DIR_INBOUND ? "inbound" : "outbound";
}

void ward_config_usage(FILE *out)
{
    fputs("usage: ward-proxy --cert FILE --key FILE --ca FILE [mappings] [options]\n"
          "\n"
          "ward's sidecar: upgrades traffic between workloads to mutual TLS and verifies SPIFFE "
          "ids.\n"
          "\n"
          "Identity from ward-agent (the key never leaves this process):\n"
          "  --agent unix:PATH|HOST:PORT  agent to attest to and get SVIDs from   [WARD_AGENT]\n"
          "  --agent-bundle FILE      roots that verify the agent over TCP   [WARD_AGENT_BUNDLE]\n"
          "  --agent-id ID            SPIFFE id the agent must present (TCP)      [WARD_AGENT_ID]\n"
          "  --agent-token-file FILE  service-account token to attest with\n"
          "                           (re-read at every connect)         [WARD_AGENT_TOKEN_FILE]\n"
          "Or identity from PEM files (reloaded when they change and on SIGHUP):\n"
          "  --cert FILE              X509-SVID leaf (+ intermediates)            [WARD_CERT]\n"
          "  --key FILE               its private key                             [WARD_KEY]\n"
          "  --ca FILE                trust bundle (one or more roots)            [WARD_CA]\n"
          "Mappings (repeatable; in the environment separate several with ';'):\n"
          "  --inbound LISTEN=APP     accept mTLS on LISTEN, require + verify the client\n"
          "                           certificate, forward plain TCP to APP       [WARD_INBOUND]\n"
          "  --outbound LISTEN=PEER,identity=spiffe://TD/PATH\n"
          "                           accept plain TCP on LISTEN, originate mTLS to the peer\n"
          "                           sidecar at PEER, require exactly that id   [WARD_OUTBOUND]\n"
          "Options:\n"
          "  --admin ADDR             admin listener, or 'off' (127.0.0.1:15000)  [WARD_ADMIN]\n"
          "  --workers N              worker threads (number of cores)            [WARD_WORKERS]\n"
          "  --max-connections N      open connection cap (65536)       [WARD_MAX_CONNECTIONS]\n"
          "  --connect-timeout D      upstream connect (5s)             [WARD_CONNECT_TIMEOUT]\n"
          "  --handshake-timeout D    TLS handshake (10s)             [WARD_HANDSHAKE_TIMEOUT]\n"
          "  --idle-timeout D         no bytes either way (1h)             [WARD_IDLE_TIMEOUT]\n"
          "  --request-timeout D      an HTTP/1 request head, once begun, must be complete\n"
          "                           within this (30s)              [WARD_REQUEST_TIMEOUT]\n"
          "  --drain-timeout D        graceful drain on SIGTERM (30s)     [WARD_DRAIN_TIMEOUT]\n"
          "  --reload-interval D      identity file check period (1s)   [WARD_RELOAD_INTERVAL]\n"
          "  --log-level L            debug|info|warn|error (info)           [WARD_LOG_LEVEL]\n"
          "Policy (inbound requests and connections are authorized by the caller's identity):\n"
          "  --policy FILE|DIR        AuthorizationPolicy YAML, without an agent; reloaded\n"
          "                           every reload interval and on SIGHUP      [WARD_POLICY]\n"
          "  --mesh-default A         deny|allow|audit where no policy selects this\n"
          "                           workload (deny)                    [WARD_MESH_DEFAULT]\n"
          "  --access-log M           off|denied|all: JSON lines per request and connection\n"
          "                           (denied: refusals only)              [WARD_ACCESS_LOG]\n"
          "Transparent capture (with deploy/init/ward-iptables):\n"
          "  --capture-inbound LISTEN  redirected inbound traffic (:15006); the app is the\n"
          "                           original destination          [WARD_CAPTURE_INBOUND]\n"
          "  --capture-outbound LISTEN redirected outbound traffic (:15001); mTLS to the\n"
          "                           original destination           [WARD_CAPTURE_OUTBOUND]\n"
          "  --peers FILE             lines 'IP[:PORT] spiffe://...': destinations with a\n"
          "                           sidecar and the id they must present     [WARD_PEERS]\n"
          "  --strict-egress          refuse captured traffic to destinations not in --peers\n"
          "                           (default: pass it through, metered plaintext)\n"
          "  --inbound-mode M         strict|permissive: permissive also accepts plaintext\n"
          "                           callers (unauthenticated, metered) (strict)\n"
          "Protocol detection (outbound sniffs the app; inbound uses ALPN, else sniffs):\n"
          "  --sniff-timeout D        wait for the client's first bytes (200ms)\n"
          "                                                             [WARD_SNIFF_TIMEOUT]\n"
          "  --server-first-ports L   ports carried opaque without sniffing, or 'none'\n"
          "                           (21,22,25,110,143,587,3306)  [WARD_SERVER_FIRST_PORTS]\n"
          "  --help, --version\n"
          "\n"
          "Addresses: IP:PORT or [IPv6]:PORT (LISTEN may be :PORT). Durations: 250ms, 5s, 2m, 1h.\n"
          "Admin endpoint: GET /ready, /live, /metrics (Prometheus text format).\n",
          out);
}

static int ward__cfg_err(char *err, size_t errlen, const char *fmt, const char *a, const char *b)
{
    snprintf(err, errlen, fmt, a, b);
    return WARD_EINVAL;
}

int ward_mapping_parse(ward_mapping_t *m, ward_dir_t dir, const char *spec, char *err,
                       size_t errlen)
{
    const char *flag = dir == WARD_DIR_INBOUND ? "--inbound" : "--outbound";
    const char *why = NULL;
    memset(m, 0, sizeof(*m));
    m->dir = dir;
    const char *eq = strchr(spec, '=');
    if (eq == NULL)
        return ward__cfg_err(err, errlen, "%s '%s': expected LISTEN=TARGET", flag, spec);
    if (ward_addr_parse(spec, (size_t)(eq - spec), 1, &m->listen, &why) < 0) {
        snprintf(err, errlen, "%s '%s': listen address: %s", flag, spec, why);
        return WARD_EINVAL;
    }
    const char *target = eq + 1;
    const char *comma = strchr(target, ',');
    size_t tlen = comma ? (size_t)(comma - target) : strlen(target);
    if (ward_addr_parse(target, tlen, 0, &m->target, &why) < 0) {
        snprintf(err, errlen, "%s '%s': target address: %s", flag, spec, why);
        return WARD_EINVAL;
    }
    if (comma != NULL) {
        const char *opt = comma + 1;
        static const char key[] = "identity=";
        if (strncmp(opt, key, sizeof(key) - 1) != 0)
            return ward__cfg_err(err, errlen, "%s '%s': unknown option (expected identity=)", flag,
                                 spec);
        const char *id = opt + sizeof(key) - 1;
        if (dir == WARD_DIR_INBOUND)
            return ward__cfg_err(err, errlen, "%s '%s': identity= applies to --outbound only", flag,
                                 spec);
        if (ward_spiffe_id_parse(id, strlen(id), NULL, &why) < 0) {
            snprintf(err, errlen, "%s '%s': identity is not a valid SPIFFE id: %s", flag, spec,
                     why);
            return WARD_EINVAL;
        }
        m->identity = ward_strdup(id);
        if (m->identity == NULL) return WARD_ENOMEM;
    } else if (dir == WARD_DIR_OUTBOUND) {
        return ward__cfg_err(err, errlen,
                             "%s '%s': the peer's identity is required "
                             "(LISTEN=PEER,identity=spiffe://...)",
                             flag, spec);
    }
    m->spec = ward_strdup(spec);
    if (m->spec == NULL) return WARD_ENOMEM;
    return 0;
}

static int ward__add_mapping(ward_config_t *cfg, ward_dir_t dir, const char *spec, char *err,
                             size_t errlen)
{
    ward_mapping_t *maps = ward_realloc(cfg->maps, sizeof(*maps) * (cfg->nmaps + 1));
    if (maps == NULL) return WARD_ENOMEM;
    cfg->maps = maps;
    int rc = ward_mapping_parse(&maps[cfg->nmaps], dir, spec, err, errlen);
    if (rc < 0) {
        ward_free(maps[cfg->nmaps].identity);
        return rc;
    }
    cfg->nmaps++;
    return 0;
}

/* --capture-inbound / --capture-outbound LISTEN: a transparent listener. */
static int ward__add_capture(ward_config_t *cfg, ward_dir_t dir, const char *flag,
                             const char *listen, char *err, size_t errlen)
{
    const char *why = NULL;
    ward_mapping_t m;
    memset(&m, 0, sizeof(m));
    m.dir = dir;
    m.transparent = 1;
    if (ward_addr_parse(listen, strlen(listen), 1, &m.listen, &why) < 0) {
        snprintf(err, errlen, "%s '%s': %s", flag, listen, why);
        return WARD_EINVAL;
    }
    size_t n = strlen(flag) + strlen(listen) + 2;
    m.spec = ward_malloc(n);
    if (m.spec == NULL) return WARD_ENOMEM;
    snprintf(m.spec, n, "%s %s", flag, listen);
    ward_mapping_t *maps = ward_realloc(cfg->maps, sizeof(*maps) * (cfg->nmaps + 1));
    if (maps == NULL) {
        ward_free(m.spec);
        return WARD_ENOMEM;
    }
    cfg->maps = maps;
    maps[cfg->nmaps++] = m;
    return 0;
}

/* Mappings from the environment: several separated by ';' (or newlines). */
static int ward__add_mapping_list(ward_config_t *cfg, ward_dir_t dir, const char *list, char *err,
                                  size_t errlen)
{
    char *copy = ward_strdup(list), *save = NULL;
    if (copy == NULL) return WARD_ENOMEM;
    int rc = 0;
    for (char *tok = strtok_r(copy, ";\n", &save); tok && rc == 0;
         tok = strtok_r(NULL, ";\n", &save)) {
        while (*tok == ' ' || *tok == '\t')
            tok++;
        if (*tok) rc = ward__add_mapping(cfg, dir, tok, err, errlen);
    }
    ward_free(copy);
    return rc;
}

enum {
    OPT_AGENT = 200,
    OPT_AGENT_BUNDLE,
    OPT_AGENT_ID,
    OPT_AGENT_TOKEN,
    OPT_CERT = 256,
    OPT_KEY,
    OPT_CA,
    OPT_INBOUND,
    OPT_OUTBOUND,
    OPT_ADMIN,
    OPT_WORKERS,
    OPT_MAXCONN,
    OPT_CONNECT_TO,
    OPT_HANDSHAKE_TO,
    OPT_IDLE_TO,
    OPT_DRAIN_TO,
    OPT_RELOAD,
    OPT_LOGLEVEL,
    OPT_POLICY,
    OPT_MESH_DEFAULT,
    OPT_SNIFF_TO,
    OPT_SERVER_FIRST,
    OPT_ACCESS_LOG,
    OPT_REQUEST_TO,
    OPT_CAPTURE_IN,
    OPT_CAPTURE_OUT,
    OPT_PEERS,
    OPT_INBOUND_MODE,
    OPT_STRICT_EGRESS,
    OPT_HELP,
    OPT_VERSION
};

/* Scalar settings share one table: flag, env var, and where the raw string goes. */
typedef struct {
    int opt;
    const char *flag;
    const char *env;
} ward_opt_desc_t;

static const ward_opt_desc_t ward__scalars[] = {
    {OPT_AGENT, "--agent", "WARD_AGENT"},
    {OPT_AGENT_BUNDLE, "--agent-bundle", "WARD_AGENT_BUNDLE"},
    {OPT_AGENT_ID, "--agent-id", "WARD_AGENT_ID"},
    {OPT_AGENT_TOKEN, "--agent-token-file", "WARD_AGENT_TOKEN_FILE"},
    {OPT_CERT, "--cert", "WARD_CERT"},
    {OPT_KEY, "--key", "WARD_KEY"},
    {OPT_CA, "--ca", "WARD_CA"},
    {OPT_ADMIN, "--admin", "WARD_ADMIN"},
    {OPT_WORKERS, "--workers", "WARD_WORKERS"},
    {OPT_MAXCONN, "--max-connections", "WARD_MAX_CONNECTIONS"},
    {OPT_CONNECT_TO, "--connect-timeout", "WARD_CONNECT_TIMEOUT"},
    {OPT_HANDSHAKE_TO, "--handshake-timeout", "WARD_HANDSHAKE_TIMEOUT"},
    {OPT_IDLE_TO, "--idle-timeout", "WARD_IDLE_TIMEOUT"},
    {OPT_DRAIN_TO, "--drain-timeout", "WARD_DRAIN_TIMEOUT"},
    {OPT_RELOAD, "--reload-interval", "WARD_RELOAD_INTERVAL"},
    {OPT_LOGLEVEL, "--log-level", "WARD_LOG_LEVEL"},
    {OPT_POLICY, "--policy", "WARD_POLICY"},
    {OPT_MESH_DEFAULT, "--mesh-default", "WARD_MESH_DEFAULT"},
    {OPT_SNIFF_TO, "--sniff-timeout", "WARD_SNIFF_TIMEOUT"},
    {OPT_SERVER_FIRST, "--server-first-ports", "WARD_SERVER_FIRST_PORTS"},
    {OPT_ACCESS_LOG, "--access-log", "WARD_ACCESS_LOG"},
    {OPT_REQUEST_TO, "--request-timeout", "WARD_REQUEST_TIMEOUT"},
    {OPT_CAPTURE_IN, "--capture-inbound", "WARD_CAPTURE_INBOUND"},
    {OPT_CAPTURE_OUT, "--capture-outbound", "WARD_CAPTURE_OUTBOUND"},
    {OPT_PEERS, "--peers", "WARD_PEERS"},
    {OPT_INBOUND_MODE, "--inbound-mode", "WARD_INBOUND_MODE"},
    {OPT_STRICT_EGRESS, "--strict-egress", "WARD_STRICT_EGRESS"},
};
#define WARD_NSCALARS (sizeof(ward__scalars) / sizeof(ward__scalars[0]))

static int ward__set_duration(const char *flag, const char *v, uint64_t *out, char *err,
                              size_t errlen)
{
    if (ward_duration_parse(v, out) < 0 || *out == 0)
        return ward__cfg_err(err, errlen, "%s '%s': expected a positive duration like 5s or 250ms",
                             flag, v);
    return 0;
}

static int ward__apply_scalar(ward_config_t *cfg, int opt, const char *flag, const char *v,
                              char *err, size_t errlen)
{
    uint64_t n = 0;
    const char *why = NULL;
    switch (opt) {
    case OPT_AGENT:
        if (strncmp(v, "unix:", 5) == 0) {
            if (v[5] == '\0')
                return ward__cfg_err(err, errlen, "%s '%s': empty socket path", flag, v);
            cfg->agent_is_unix = 1;
            ward_free(cfg->agent_path);
            cfg->agent_path = ward_strdup(v + 5);
            if (cfg->agent_path == NULL) return WARD_ENOMEM;
        } else {
            cfg->agent_is_unix = 0;
            ward_free(cfg->agent_host);
            cfg->agent_host = NULL;
            if (ward_addr_parse(v, strlen(v), 0, &cfg->agent_addr, &why) < 0) {
                /* Not IP:PORT: a DNS name (e.g. a Kubernetes Service), resolved at connect. */
                const char *colon = strrchr(v, ':');
                uint64_t port = 0;
                size_t hl = colon ? (size_t)(colon - v) : 0;
                int ok = hl > 0 && hl < 254 && ward_parse_u64(colon + 1, 1, 65535, &port) == 0;
                for (size_t i = 0; ok && i < hl; i++)
                    ok = (v[i] >= 'a' && v[i] <= 'z') || (v[i] >= 'A' && v[i] <= 'Z') ||
                         (v[i] >= '0' && v[i] <= '9') || v[i] == '-' || v[i] == '.';
                if (!ok) {
                    snprintf(err, errlen, "%s '%s': expected unix:PATH, IP:PORT or HOST:PORT", flag,
                             v);
                    return WARD_EINVAL;
                }
                cfg->agent_host = ward_strndup(v, hl);
                if (cfg->agent_host == NULL) return WARD_ENOMEM;
                snprintf(cfg->agent_port, sizeof(cfg->agent_port), "%u", (unsigned)port);
            }
        }
        ward_free(cfg->agent);
        cfg->agent = ward_strdup(v);
        return cfg->agent ? 0 : WARD_ENOMEM;
    case OPT_AGENT_ID:
        if (ward_spiffe_id_parse(v, strlen(v), NULL, &why) < 0) {
            snprintf(err, errlen, "%s '%s': not a valid SPIFFE id: %s", flag, v, why);
            return WARD_EINVAL;
        }
        ward_free(cfg->agent_id);
        cfg->agent_id = ward_strdup(v);
        return cfg->agent_id ? 0 : WARD_ENOMEM;
    case OPT_AGENT_BUNDLE:
    case OPT_AGENT_TOKEN: {
        char **dst = opt == OPT_AGENT_BUNDLE ? &cfg->agent_bundle : &cfg->agent_token_file;
        ward_free(*dst);
        *dst = ward_strdup(v);
        return *dst ? 0 : WARD_ENOMEM;
    }
    case OPT_CERT:
    case OPT_KEY:
    case OPT_CA: {
        char **dst = opt == OPT_CERT  ? &cfg->cert_file
                     : opt == OPT_KEY ? &cfg->key_file
                                      : &cfg->ca_file;
        ward_free(*dst);
        *dst = ward_strdup(v);
        return *dst ? 0 : WARD_ENOMEM;
    }
    case OPT_ADMIN:
        if (strcmp(v, "off") == 0) {
            cfg->admin_enabled = 0;
            return 0;
        }
        if (ward_addr_parse(v, strlen(v), 1, &cfg->admin, &why) < 0) {
            snprintf(err, errlen, "%s '%s': %s", flag, v, why);
            return WARD_EINVAL;
        }
        cfg->admin_enabled = 1;
        return 0;
    case OPT_WORKERS:
        if (ward_parse_u64(v, 1, 256, &n) < 0)
            return ward__cfg_err(err, errlen, "%s '%s': expected a number from 1 to 256", flag, v);
        cfg->workers = (unsigned)n;
        return 0;
    case OPT_MAXCONN:
        if (ward_parse_u64(v, 1, 10000000, &cfg->max_connections) < 0)
            return ward__cfg_err(err, errlen, "%s '%s': expected a number from 1 to 10000000", flag,
                                 v);
        return 0;
    case OPT_CONNECT_TO:
        return ward__set_duration(flag, v, &cfg->connect_timeout_ms, err, errlen);
    case OPT_HANDSHAKE_TO:
        return ward__set_duration(flag, v, &cfg->handshake_timeout_ms, err, errlen);
    case OPT_IDLE_TO:
        return ward__set_duration(flag, v, &cfg->idle_timeout_ms, err, errlen);
    case OPT_DRAIN_TO:
        return ward__set_duration(flag, v, &cfg->drain_timeout_ms, err, errlen);
    case OPT_RELOAD:
        return ward__set_duration(flag, v, &cfg->reload_interval_ms, err, errlen);
    case OPT_POLICY:
        ward_free(cfg->policy_path);
        cfg->policy_path = ward_strdup(v);
        return cfg->policy_path ? 0 : WARD_ENOMEM;
    case OPT_MESH_DEFAULT:
        if (strcmp(v, "deny") == 0)
            cfg->mesh_default = 0;
        else if (strcmp(v, "allow") == 0)
            cfg->mesh_default = 1;
        else if (strcmp(v, "audit") == 0)
            cfg->mesh_default = 2;
        else
            return ward__cfg_err(err, errlen, "%s '%s': expected deny, allow or audit", flag, v);
        return 0;
    case OPT_CAPTURE_IN:
    case OPT_CAPTURE_OUT:
        return ward__add_capture(cfg, opt == OPT_CAPTURE_IN ? WARD_DIR_INBOUND : WARD_DIR_OUTBOUND,
                                 flag, v, err, errlen);
    case OPT_PEERS:
        ward_free(cfg->peers_file);
        cfg->peers_file = ward_strdup(v);
        return cfg->peers_file ? 0 : WARD_ENOMEM;
    case OPT_INBOUND_MODE:
        if (strcmp(v, "strict") == 0)
            cfg->permissive = 0;
        else if (strcmp(v, "permissive") == 0)
            cfg->permissive = 1;
        else
            return ward__cfg_err(err, errlen, "%s '%s': expected strict or permissive", flag, v);
        return 0;
    case OPT_STRICT_EGRESS:
        if (v == NULL || strcmp(v, "true") == 0 || strcmp(v, "1") == 0)
            cfg->strict_egress = 1;
        else if (strcmp(v, "false") == 0 || strcmp(v, "0") == 0)
            cfg->strict_egress = 0;
        else
            return ward__cfg_err(err, errlen, "%s '%s': expected true or false", flag, v);
        return 0;
    case OPT_REQUEST_TO:
        return ward__set_duration(flag, v, &cfg->request_timeout_ms, err, errlen);
    case OPT_ACCESS_LOG:
        if (strcmp(v, "off") == 0)
            cfg->access_log = WARD_ACCESS_LOG_OFF;
        else if (strcmp(v, "denied") == 0)
            cfg->access_log = WARD_ACCESS_LOG_DENIED;
        else if (strcmp(v, "all") == 0)
            cfg->access_log = WARD_ACCESS_LOG_ALL;
        else
            return ward__cfg_err(err, errlen, "%s '%s': expected off, denied or all", flag, v);
        return 0;
    case OPT_SNIFF_TO:
        return ward__set_duration(flag, v, &cfg->sniff_timeout_ms, err, errlen);
    case OPT_SERVER_FIRST: {
        /* "none", or comma-separated ports. */
        cfg->nserver_first_ports = 0;
        if (strcmp(v, "none") == 0) return 0;
        const char *p = v;
        while (*p) {
            char num[8];
            size_t l = strcspn(p, ",");
            if (l == 0 || l >= sizeof(num) ||
                cfg->nserver_first_ports == WARD_MAX_SERVER_FIRST_PORTS)
                return ward__cfg_err(err, errlen, "%s '%s': expected ports like 25,3306 or none",
                                     flag, v);
            memcpy(num, p, l);
            num[l] = '\0';
            if (ward_parse_u64(num, 1, 65535, &n) < 0)
                return ward__cfg_err(err, errlen, "%s '%s': expected ports like 25,3306 or none",
                                     flag, v);
            cfg->server_first_ports[cfg->nserver_first_ports++] = (uint16_t)n;
            p += l;
            if (*p == ',') p++;
        }
        return 0;
    }
    case OPT_LOGLEVEL:
        if (ward_log_parse_level(v, &cfg->log_level) < 0)
            return ward__cfg_err(err, errlen, "%s '%s': expected debug, info, warn or error", flag,
                                 v);
        return 0;
    default:
        return WARD_EINVAL;
    }
}

int ward_config_parse(ward_config_t *cfg, int argc, char **argv, char *err, size_t errlen)
{
    static const struct option longopts[] = {
        {"agent", required_argument, NULL, OPT_AGENT},
        {"agent-bundle", required_argument, NULL, OPT_AGENT_BUNDLE},
        {"agent-id", required_argument, NULL, OPT_AGENT_ID},
        {"agent-token-file", required_argument, NULL, OPT_AGENT_TOKEN},
        {"cert", required_argument, NULL, OPT_CERT},
        {"key", required_argument, NULL, OPT_KEY},
        {"ca", required_argument, NULL, OPT_CA},
        {"inbound", required_argument, NULL, OPT_INBOUND},
        {"outbound", required_argument, NULL, OPT_OUTBOUND},
        {"admin", required_argument, NULL, OPT_ADMIN},
        {"workers", required_argument, NULL, OPT_WORKERS},
        {"max-connections", required_argument, NULL, OPT_MAXCONN},
        {"connect-timeout", required_argument, NULL, OPT_CONNECT_TO},
        {"handshake-timeout", required_argument, NULL, OPT_HANDSHAKE_TO},
        {"idle-timeout", required_argument, NULL, OPT_IDLE_TO},
        {"drain-timeout", required_argument, NULL, OPT_DRAIN_TO},
        {"reload-interval", required_argument, NULL, OPT_RELOAD},
        {"log-level", required_argument, NULL, OPT_LOGLEVEL},
        {"policy", required_argument, NULL, OPT_POLICY},
        {"mesh-default", required_argument, NULL, OPT_MESH_DEFAULT},
        {"sniff-timeout", required_argument, NULL, OPT_SNIFF_TO},
        {"server-first-ports", required_argument, NULL, OPT_SERVER_FIRST},
        {"access-log", required_argument, NULL, OPT_ACCESS_LOG},
        {"request-timeout", required_argument, NULL, OPT_REQUEST_TO},
        {"capture-inbound", required_argument, NULL, OPT_CAPTURE_IN},
        {"capture-outbound", required_argument, NULL, OPT_CAPTURE_OUT},
        {"peers", required_argument, NULL, OPT_PEERS},
        {"inbound-mode", required_argument, NULL, OPT_INBOUND_MODE},
        {"strict-egress", optional_argument, NULL, OPT_STRICT_EGRESS},
        {"help", no_argument, NULL, OPT_HELP},
        {"version", no_argument, NULL, OPT_VERSION},
        {NULL, 0, NULL, 0}};
    int rc = 0;
    int cli_inbound = 0, cli_outbound = 0;
    long cores = sysconf(_SC_NPROCESSORS_ONLN);

    memset(cfg, 0, sizeof(*cfg));
    cfg->admin_enabled = 1;
    ward_addr_parse("127.0.0.1:15000", 15, 1, &cfg->admin, NULL);
    cfg->workers = cores > 0 ? (unsigned)(cores > 256 ? 256 : cores) : 1;
    cfg->max_connections = 65536;
    cfg->connect_timeout_ms = 5000;
    cfg->handshake_timeout_ms = 10000;
    cfg->idle_timeout_ms = 3600000;
    cfg->request_timeout_ms = 30000;
    cfg->drain_timeout_ms = 30000;
    cfg->reload_interval_ms = 1000;
    cfg->log_level = WARD_LOG_INFO;
    cfg->sniff_timeout_ms = 200;
    cfg->access_log = WARD_ACCESS_LOG_DENIED;
    /* Protocols where the server speaks first: SMTP, MySQL, FTP, POP3, IMAP, SSH, submission. */
    static const uint16_t server_first[] = {21, 22, 25, 110, 143, 587, 3306};
    for (size_t i = 0; i < sizeof(server_first) / sizeof(server_first[0]); i++)
        cfg->server_first_ports[cfg->nserver_first_ports++] = server_first[i];

    /* Environment first; flags below override. */
    for (size_t i = 0; i < WARD_NSCALARS; i++) {
        const char *v = getenv(ward__scalars[i].env);
        if (v != NULL && *v != '\0') {
            rc =
                ward__apply_scalar(cfg, ward__scalars[i].opt, ward__scalars[i].env, v, err, errlen);
            if (rc < 0) return rc;
        }
    }

    optind = 0; /* 0, not 1: also resets glibc's position inside a group of short options */
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        switch (c) {
        case OPT_HELP:
            ward_config_usage(stdout);
            return WARD_CONFIG_EXIT;
        case OPT_VERSION:
            printf("ward-proxy %s\n", WARD_VERSION);
            return WARD_CONFIG_EXIT;
        case OPT_INBOUND:
        case OPT_OUTBOUND:
            rc = ward__add_mapping(cfg, c == OPT_INBOUND ? WARD_DIR_INBOUND : WARD_DIR_OUTBOUND,
                                   optarg, err, errlen);
            if (c == OPT_INBOUND)
                cli_inbound = 1;
            else
                cli_outbound = 1;
            break;
        case ':':
            snprintf(err, errlen, "%s needs a value (see --help)", argv[optind - 1]);
            return WARD_EINVAL;
        case '?':
            if (optopt != 0)
                snprintf(err, errlen, "unknown option '-%c' (see --help)", optopt);
            else
                snprintf(err, errlen, "unknown option '%s' (see --help)", argv[optind - 1]);
            return WARD_EINVAL;
        default: {
            const char *flag = "option";
            for (size_t i = 0; i < WARD_NSCALARS; i++)
                if (ward__scalars[i].opt == c) flag = ward__scalars[i].flag;
            rc = ward__apply_scalar(cfg, c, flag, optarg, err, errlen);
            break;
        }
        }
        if (rc < 0) return rc;
    }
    if (optind < argc) {
        snprintf(err, errlen, "unexpected argument '%s' (see --help)", argv[optind]);
        return WARD_EINVAL;
    }
    const char *env_in = getenv("WARD_INBOUND"), *env_out = getenv("WARD_OUTBOUND");
    if (!cli_inbound && env_in && *env_in &&
        (rc = ward__add_mapping_list(cfg, WARD_DIR_INBOUND, env_in, err, errlen)) < 0)
        return rc;
    if (!cli_outbound && env_out && *env_out &&
        (rc = ward__add_mapping_list(cfg, WARD_DIR_OUTBOUND, env_out, err, errlen)) < 0)
        return rc;

    if (cfg->agent != NULL) {
        if (cfg->cert_file || cfg->key_file || cfg->ca_file) {
            snprintf(err, errlen,
                     "--agent and --cert/--key/--ca are two identity sources: "
                     "give one");
            return WARD_EINVAL;
        }
        if (cfg->policy_path != NULL) {
            snprintf(err, errlen,
                     "--policy is for proxies without an agent: with --agent, policies come "
                     "from the agent");
            return WARD_EINVAL;
        }
        if (!cfg->agent_is_unix && (cfg->agent_bundle == NULL || cfg->agent_id == NULL)) {
            snprintf(err, errlen,
                     "--agent over TCP needs --agent-bundle (roots to verify it) and "
                     "--agent-id (its SPIFFE id)");
            return WARD_EINVAL;
        }
    } else if (cfg->cert_file == NULL || cfg->key_file == NULL || cfg->ca_file == NULL) {
        snprintf(err, errlen,
                 "--cert, --key and --ca are required (or WARD_CERT, WARD_KEY, "
                 "WARD_CA), unless the identity comes from --agent; see --help");
        return WARD_EINVAL;
    }
    if (cfg->nmaps == 0) {
        snprintf(err, errlen, "no --inbound or --outbound mapping given: nothing to proxy");
        return WARD_EINVAL;
    }
    return 0;
}

void ward_config_free(ward_config_t *cfg)
{
    for (size_t i = 0; i < cfg->nmaps; i++) {
        ward_free(cfg->maps[i].identity);
        ward_free(cfg->maps[i].spec);
    }
    ward_free(cfg->maps);
    ward_free(cfg->agent);
    ward_free(cfg->agent_path);
    ward_free(cfg->agent_host);
    ward_free(cfg->agent_bundle);
    ward_free(cfg->agent_id);
    ward_free(cfg->agent_token_file);
    ward_free(cfg->cert_file);
    ward_free(cfg->key_file);
    ward_free(cfg->ca_file);
    ward_free(cfg->policy_path);
    ward_free(cfg->peers_file);
    memset(cfg, 0, sizeof(*cfg));
}
