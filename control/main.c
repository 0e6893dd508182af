/* main.c — ward-agent: the control-plane agent. Parses flags, opens the CA, loads attestation and
 * policy sources, listens on a Unix socket (and optionally TCP + TLS), and runs the loop. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <dirent.h>

#include "agent.h"
#include "webhook.h"
#include "ward/admin.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/inject.h"
#include "ward/spiffe.h"
#include "ward/sys.h"

#define WARD_AGENT_TICK_MS    1000
#define WARD_AGENT_PING_EVERY 30 /* ticks */

typedef struct {
    uv_poll_t poll;
    uv_timer_t retry; /* resumes accepting after running out of descriptors */
    int fd;
    int is_unix;
    ward_agent_t *agent;
} ward_agent_listener_t;

static ward_agent_t ward__agent;
static ward_agent_listener_t ward__listeners[2];
static int ward__nlisteners;
static ward_admin_t ward__admin;
static uint64_t ward__ticks;
static ward_injector_t *ward__injector;
static ward_webhook_t *ward__webhook;

static void ward__usage(FILE *out)
{
    fputs(
        "usage: ward-agent --trust-domain TD --state-dir DIR [options]\n"
        "\n"
        "ward's control-plane agent: a CA that issues X509-SVIDs to attested proxies, the policy\n"
        "store that pushes AuthorizationPolicies to them, and the SPIFFE Workload API.\n"
        "\n"
        "  --trust-domain TD        trust domain of every id issued (e.g. cluster.local)\n"
        "  --state-dir DIR          where a generated root CA is kept (created 0700)\n"
        "  --ca-cert F --ca-key F   use this CA (an intermediate + chain) instead\n"
        "  --listen PATH            Unix socket (default /run/ward/agent.sock)\n"
        "  --listen-tls ADDR        also serve proxies over TCP + TLS (token attestation)\n"
        "  --workloads F            uid[:gid] -> SPIFFE id map for Unix peer attestation\n"
        "  --jwks F                 JWKS of the cluster's service-account token issuer\n"
        "  --token-issuer ISS       required 'iss' of tokens\n"
        "  --token-audience AUD     required 'aud' of tokens (default ward)\n"
        "  --policy-dir DIR         AuthorizationPolicy YAML, watched (ConfigMap layouts too)\n"
        "  --mesh-default A         deny | allow | audit where no policy selects (deny)\n"
        "  --svid-ttl D             lifetime of proxy SVIDs (1h)\n"
        "  --workload-svid-ttl D    lifetime of Workload API SVIDs (1h)\n"
        "  --admin ADDR             /metrics, /ready, /live, or 'off' (127.0.0.1:15010)\n"
        "  --log-level L            debug | info | warn | error (info)\n"
        "  --webhook-listen ADDR    serve the sidecar-injecting admission webhook (HTTPS,\n"
        "                           POST /inject) with --webhook-cert F --webhook-key F (PEM;\n"
        "                           re-read when they change); sidecar options:\n",
        out);
    for (int i = 0; i < WARD_INJECT_OPT_COUNT; i++) {
        char left[64];
        snprintf(left, sizeof(left), "--inject-%s %s", ward_inject_option_name(i),
                 ward_inject_option_arg(i));
        fprintf(out, "    %-30s %s\n", left, ward_inject_option_help(i));
    }
    fputs("  --help, --version\n"
          "\n"
          "Signals: SIGHUP re-reads policies, workloads and the webhook certificate now; SIGUSR1\n"
          "starts a CA rotation (new root into every bundle first, signing switches once proxies\n"
          "have ACKed it).\n",
          out);
}

static int ward__dup(char **dst, const char *v)
{
    ward_free(*dst);
    *dst = ward_strdup(v);
    return *dst ? 0 : WARD_ENOMEM;
}

/* Options that just store their value as a string: one table instead of a case each. */
enum {
    O_TD = 256,
    O_STATE,
    O_CACERT,
    O_CAKEY,
    O_LISTEN,
    O_LISTEN_TLS,
    O_WORKLOADS,
    O_JWKS,
    O_ISS,
    O_AUD,
    O_POLICY,
    O_DEFAULT,
    O_TTL,
    O_WTTL,
    O_ADMIN,
    O_LOG,
    O_HELP,
    O_VERSION,
    O_WH_LISTEN,
    O_WH_CERT,
    O_WH_KEY,
    O_INJECT /* O_INJECT + i: --inject-<ward_inject_option_name(i)> */
};

static char **ward__string_option(ward_agent_config_t *c, int opt)
{
    switch (opt) {
    case O_TD:
        return &c->trust_domain;
    case O_STATE:
        return &c->state_dir;
    case O_CACERT:
        return &c->ca_cert;
    case O_CAKEY:
        return &c->ca_key;
    case O_LISTEN:
        return &c->listen_unix;
    case O_WORKLOADS:
        return &c->workloads_file;
    case O_JWKS:
        return &c->jwks_file;
    case O_ISS:
        return &c->token_issuer;
    case O_AUD:
        return &c->token_audience;
    case O_POLICY:
        return &c->policy_dir;
    case O_WH_CERT:
        return &c->webhook_cert;
    case O_WH_KEY:
        return &c->webhook_key;
    default:
        if (opt >= O_INJECT && opt < O_INJECT + WARD_INJECT_OPT_COUNT)
            return &c->inject[opt - O_INJECT];
        return NULL;
    }
}

/* The fixed options, then --inject-NAME for every option of the injector (ward/inject.h). */
static void ward__options(const struct option *fixed, size_t nfixed, struct option *all,
                          char names[][64])
{
    memcpy(all, fixed, nfixed * sizeof(*fixed));
    for (int i = 0; i < WARD_INJECT_OPT_COUNT; i++) {
        snprintf(names[i], 64, "inject-%s", ward_inject_option_name(i));
        all[nfixed + (size_t)i] = (struct option){names[i], required_argument, NULL, O_INJECT + i};
    }
    memset(&all[nfixed + WARD_INJECT_OPT_COUNT], 0, sizeof(*all));
}

static int ward__parse(ward_agent_config_t *c, int argc, char **argv, char *err, size_t errlen)
{
    static const struct option opts[] = {{"trust-domain", required_argument, NULL, O_TD},
                                         {"state-dir", required_argument, NULL, O_STATE},
                                         {"ca-cert", required_argument, NULL, O_CACERT},
                                         {"ca-key", required_argument, NULL, O_CAKEY},
                                         {"listen", required_argument, NULL, O_LISTEN},
                                         {"listen-tls", required_argument, NULL, O_LISTEN_TLS},
                                         {"workloads", required_argument, NULL, O_WORKLOADS},
                                         {"jwks", required_argument, NULL, O_JWKS},
                                         {"token-issuer", required_argument, NULL, O_ISS},
                                         {"token-audience", required_argument, NULL, O_AUD},
                                         {"policy-dir", required_argument, NULL, O_POLICY},
                                         {"mesh-default", required_argument, NULL, O_DEFAULT},
                                         {"svid-ttl", required_argument, NULL, O_TTL},
                                         {"workload-svid-ttl", required_argument, NULL, O_WTTL},
                                         {"admin", required_argument, NULL, O_ADMIN},
                                         {"log-level", required_argument, NULL, O_LOG},
                                         {"help", no_argument, NULL, O_HELP},
                                         {"version", no_argument, NULL, O_VERSION},
                                         {"webhook-listen", required_argument, NULL, O_WH_LISTEN},
                                         {"webhook-cert", required_argument, NULL, O_WH_CERT},
                                         {"webhook-key", required_argument, NULL, O_WH_KEY}};
    enum { NFIXED = sizeof(opts) / sizeof(opts[0]) };
    struct option all[NFIXED + WARD_INJECT_OPT_COUNT + 1];
    char names[WARD_INJECT_OPT_COUNT][64];
    ward__options(opts, NFIXED, all, names);
    const char *why = NULL;
    uint64_t ms;
    int ch, rc = 0;
    memset(c, 0, sizeof(*c));
    c->svid_ttl_s = 3600;
    c->workload_svid_ttl_s = 3600;
    c->policy_poll_ms = 1000;
    c->rotation_ack_timeout_ms = 10000;
    c->admin_enabled = 1;
    c->log_level = WARD_LOG_INFO;
    ward_addr_parse("127.0.0.1:15010", 15, 1, &c->admin, NULL);
    if (ward__dup(&c->listen_unix, "/run/ward/agent.sock") < 0 ||
        ward__dup(&c->token_audience, "ward") < 0)
        return WARD_ENOMEM;
    optind = 0; /* 0, not 1: also resets glibc's position inside a group of short options */
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":", all, NULL)) != -1) {
        char **str = ward__string_option(c, ch);
        if (str != NULL) {
            if (ward__dup(str, optarg) < 0) return WARD_ENOMEM;
            continue;
        }
        switch (ch) {
        case O_LISTEN_TLS:
            if (ward_addr_parse(optarg, strlen(optarg), 1, &c->listen_tls, &why) < 0) {
                snprintf(err, errlen, "--listen-tls '%s': %s", optarg, why);
                return WARD_EINVAL;
            }
            c->tls_enabled = 1;
            break;
        case O_WH_LISTEN:
            if (ward_addr_parse(optarg, strlen(optarg), 1, &c->webhook_listen, &why) < 0) {
                snprintf(err, errlen, "--webhook-listen '%s': %s", optarg, why);
                return WARD_EINVAL;
            }
            c->webhook_enabled = 1;
            break;
        case O_ADMIN:
            if (strcmp(optarg, "off") == 0) {
                c->admin_enabled = 0;
            } else if (ward_addr_parse(optarg, strlen(optarg), 1, &c->admin, &why) < 0) {
                snprintf(err, errlen, "--admin '%s': %s", optarg, why);
                return WARD_EINVAL;
            }
            break;
        case O_DEFAULT:
            if (strcmp(optarg, "deny") == 0)
                c->mesh_default = 0;
            else if (strcmp(optarg, "allow") == 0)
                c->mesh_default = 1;
            else if (strcmp(optarg, "audit") == 0)
                c->mesh_default = 2;
            else {
                snprintf(err, errlen, "--mesh-default '%s': expected deny, allow or audit", optarg);
                return WARD_EINVAL;
            }
            break;
        case O_TTL:
        case O_WTTL:
            if (ward_duration_parse(optarg, &ms) < 0 || ms < 2000 || ms > 30ull * 86400000) {
                snprintf(err, errlen, "%s '%s': expected a duration from 2s to 30 days",
                         ch == O_TTL ? "--svid-ttl" : "--workload-svid-ttl", optarg);
                return WARD_EINVAL;
            }
            if (ch == O_TTL)
                c->svid_ttl_s = ms / 1000;
            else
                c->workload_svid_ttl_s = ms / 1000;
            break;
        case O_LOG:
            if (ward_log_parse_level(optarg, &c->log_level) < 0) {
                snprintf(err, errlen, "--log-level '%s': expected debug, info, warn or error",
                         optarg);
                return WARD_EINVAL;
            }
            break;
        case O_HELP:
            ward__usage(stdout);
            return 1;
        case O_VERSION:
            printf("ward-agent %s\n", WARD_VERSION);
            return 1;
        case ':':
            snprintf(err, errlen, "%s needs a value (see --help)", argv[optind - 1]);
            return WARD_EINVAL;
        default:
            snprintf(err, errlen, "unknown option '%s' (see --help)", argv[optind - 1]);
            return WARD_EINVAL;
        }
        if (rc < 0) return rc;
    }
    if (optind < argc) {
        snprintf(err, errlen, "unexpected argument '%s' (see --help)", argv[optind]);
        return WARD_EINVAL;
    }
    if (c->trust_domain == NULL) {
        snprintf(err, errlen, "--trust-domain is required (see --help)");
        return WARD_EINVAL;
    }
    if (ward_spiffe_td_validate(c->trust_domain, strlen(c->trust_domain), &why) < 0) {
        snprintf(err, errlen, "--trust-domain '%s': %s", c->trust_domain, why);
        return WARD_EINVAL;
    }
    if ((c->ca_cert == NULL) != (c->ca_key == NULL)) {
        snprintf(err, errlen, "--ca-cert and --ca-key go together");
        return WARD_EINVAL;
    }
    if (c->ca_cert == NULL && c->state_dir == NULL) {
        snprintf(err, errlen, "--state-dir is required (or --ca-cert/--ca-key)");
        return WARD_EINVAL;
    }
    if (c->jwks_file != NULL && c->token_issuer == NULL) {
        snprintf(err, errlen, "--jwks needs --token-issuer");
        return WARD_EINVAL;
    }
    if (c->webhook_enabled && (c->webhook_cert == NULL || c->webhook_key == NULL)) {
        snprintf(err, errlen, "--webhook-listen needs --webhook-cert and --webhook-key");
        return WARD_EINVAL;
    }
    if (!c->webhook_enabled && (c->webhook_cert != NULL || c->webhook_key != NULL)) {
        snprintf(err, errlen, "--webhook-cert/--webhook-key need --webhook-listen");
        return WARD_EINVAL;
    }
    for (int i = 0; i < WARD_INJECT_OPT_COUNT && !c->webhook_enabled; i++) {
        if (c->inject[i] != NULL) {
            snprintf(err, errlen, "--inject-%s needs --webhook-listen", ward_inject_option_name(i));
            return WARD_EINVAL;
        }
    }
    return 0;
}

/* The webhook's injector: the sidecar template with the --inject-* options; the agent's own trust
 * domain unless --inject-trust-domain says otherwise. */
static int ward__make_injector(const ward_agent_config_t *c, char *err, size_t errlen)
{
    ward_inject_options_t o;
    for (int i = 0; i < WARD_INJECT_OPT_COUNT; i++)
        o.v[i] = c->inject[i];
    if (o.v[WARD_INJECT_OPT_TRUST_DOMAIN] == NULL)
        o.v[WARD_INJECT_OPT_TRUST_DOMAIN] = c->trust_domain;
    return ward_injector_new(&o, "--inject-", &ward__injector, err, errlen);
}

/* --- policies ------------------------------------------------------------------------------- */

/* Loads --policy-dir into a new set; on success swaps it in and pushes what changed. A bad set is
 * reported and the last good one stays. */
static void ward__reload_policies(ward_agent_t *a, int initial)
{
    if (a->cfg.policy_dir == NULL) return;
    ward_policy_set_t next;
    ward_policy_error_t perr;
    memset(&perr, 0, sizeof(perr));
    ward_policy_set_init(&next);
    next.mesh_default = a->cfg.mesh_default;
    int rc = ward_policy_load_dir(a->cfg.policy_dir, &next, &perr);
    if (rc < 0) {
        char msg[sizeof(a->policy_error)];
        snprintf(msg, sizeof(msg), "%s:%d:%d: %s", perr.file, perr.line, perr.column, perr.message);
        ward_policy_set_free(&next);
        if (strcmp(msg, a->policy_error) != 0) {
            /* Log once per distinct error, not every poll. */
            snprintf(a->policy_error, sizeof(a->policy_error), "%s", msg);
            a->stats.policy_reload_failed++;
            ward_logline_t l;
            if (ward_log_begin(&l, WARD_LOG_ERROR, "policy_rejected")) {
                ward_log_str(&l, "error", msg);
                ward_log_str(&l, "msg",
                             a->policies_loaded ? "keeping the last good policy set"
                                                : "no policy set loaded: the mesh default applies");
                ward_log_end(&l);
            }
        }
        return;
    }
    a->policy_error[0] = '\0';
    ward_policy_set_free(&a->policies);
    a->policies = next;
    a->policies_loaded = 1;
    a->stats.policy_reload_ok++;
    ward_log_msg(WARD_LOG_INFO, "policy_loaded", "%zu policies from %s",
                 ward_policy_set_count(&a->policies), a->cfg.policy_dir);
    if (!initial) ward_agent_push_policies(a);
}

/* A cheap fingerprint of the policy directory: names, sizes, mtimes, inodes, and where a
 * ConfigMap's ..data symlink points. */
static uint64_t ward__dir_fingerprint(const char *dir)
{
    char cmd_path[4096];
    uint64_t h = 1469598103934665603ull;
    DIR *d = opendir(dir);
    if (d == NULL) return 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        struct stat st;
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(cmd_path, sizeof(cmd_path), "%s/%s", dir, e->d_name);
        if (stat(cmd_path, &st) != 0) continue;
        uint64_t v[4] = {(uint64_t)st.st_ino, (uint64_t)st.st_size, (uint64_t)st.st_mtim.tv_sec,
                         (uint64_t)st.st_mtim.tv_nsec};
        /* Order-independent: combine per-entry hashes with addition. */
        uint64_t eh = 1469598103934665603ull;
        for (const char *p = e->d_name; *p; p++)
            eh = (eh ^ (uint8_t)*p) * 1099511628211ull;
        for (int i = 0; i < 4; i++)
            eh = (eh ^ v[i]) * 1099511628211ull;
        h += eh;
    }
    closedir(d);
    return h;
}

static uint64_t ward__policy_fp;

static void ward__on_policy_timer(uv_timer_t *t)
{
    ward_agent_t *a = t->data;
    uint64_t fp = ward__dir_fingerprint(a->cfg.policy_dir);
    if (fp == ward__policy_fp) return;
    ward__policy_fp = fp;
    ward__reload_policies(a, 0);
}

/* --- connections ---------------------------------------------------------------------------- */

static void ward__conn_closed(ward_grpc_sock_t *s, const char *reason)
{
    ward_agent_conn_t *c = s->data;
    ward_agent_t *a = c->agent;
    ward_logline_t l;
    if (ward_log_begin(&l, WARD_LOG_DEBUG, "conn_closed")) {
        ward_log_u64(&l, "conn", c->id);
        ward_log_str(&l, "reason", reason);
        ward_log_end(&l);
    }
    if (c->prev)
        c->prev->next = c->next;
    else
        a->conns = c->next;
    if (c->next) c->next->prev = c->prev;
    a->nconns--;
    ward_free(c);
}

static void ward__accept_one(ward_agent_listener_t *l, int fd)
{
    ward_agent_t *a = l->agent;
    ward_agent_conn_t *c = ward_calloc(1, sizeof(*c));
    if (c == NULL) {
        close(fd);
        return;
    }
    c->agent = a;
    c->is_unix = l->is_unix;
    c->id = ++a->next_conn_id;
    if (c->is_unix && ward_peercred_get(fd, &c->cred) == 0 && a->workloads)
        c->peer_identity = ward_workloads_lookup(a->workloads, c->cred.uid, c->cred.gid);
    ward_grpc_options_t opts = {.max_message_size = 4u << 20, .max_concurrent_calls = 16};
    ward_grpc_conn_t *g = ward_grpc_conn_new(1, &ward_agent_grpc_callbacks, &opts, c);
    SSL *ssl = NULL;
    if (g == NULL) goto fail;
    if (!c->is_unix) {
        c->sock.io.fd = fd;
        c->sock.io.pool = &a->pool;
        c->sock.peer.alpn = "h2";
        c->sock.peer.no_client_auth = 1;
        ssl = ward_tls_new(a->tls_identity, 1, &c->sock.io, &c->sock.peer);
        if (ssl == NULL) goto fail;
    }
    c->sock.pool = &a->pool;
    c->sock.data = c;
    c->sock.on_closed = ward__conn_closed;
    c->next = a->conns;
    if (a->conns) a->conns->prev = c;
    a->conns = c;
    a->nconns++;
    if (ward_grpc_sock_start(&c->sock, a->loop, fd, ssl, g) < 0) {
        /* Unlink again: the socket never started. */
        a->conns = c->next;
        if (c->next) c->next->prev = NULL;
        a->nconns--;
        goto fail;
    }
    return;
fail:
    if (ssl) ward_tls_free(ssl);
    ward_grpc_conn_free(g);
    close(fd);
    ward_free(c);
}

static void ward__on_accept(uv_poll_t *h, int status, int events);

static void ward__resume_accept(uv_timer_t *t)
{
    ward_agent_listener_t *l = t->data;
    if (!l->agent->stopping) uv_poll_start(&l->poll, UV_READABLE, ward__on_accept);
}

static void ward__on_accept(uv_poll_t *h, int status, int events)
{
    ward_agent_listener_t *l = h->data;
    for (int i = 0; i < 64 && status == 0; i++) {
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0) {
            ward__accept_one(l, fd);
            continue;
        }
        if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
            /* Out of descriptors: the listener stays readable, so polling on would spin. Pause
             * accepting for a moment; the connections wait in the backlog. */
            l->agent->stats.accept_paused++;
            ward_log_msg(WARD_LOG_WARN, "accept_paused", "accept: %s; retrying in 100 ms",
                         strerror(errno));
            uv_poll_stop(&l->poll);
            uv_timer_start(&l->retry, ward__resume_accept, 100, 0);
        }
        return;
    }
}

/* Starts accepting on a listening socket (the agent has at most a Unix and a TLS listener). */
static int ward__add_listener(ward_agent_t *a, int fd, int is_unix)
{
    ward_agent_listener_t *l = &ward__listeners[ward__nlisteners++];
    l->fd = fd;
    l->is_unix = is_unix;
    l->agent = a;
    uv_poll_init(a->loop, &l->poll, fd);
    l->poll.data = l;
    uv_timer_init(a->loop, &l->retry);
    l->retry.data = l;
    return uv_poll_start(&l->poll, UV_READABLE, ward__on_accept);
}

static int ward__listen_unix(ward_agent_t *a, const char *path, char *err, size_t errlen)
{
    struct sockaddr_un sun;
    struct stat st;
    if (strlen(path) >= sizeof(sun.sun_path)) {
        snprintf(err, errlen, "--listen '%s': path too long", path);
        return WARD_EINVAL;
    }
    /* A stale socket from a previous run is replaced; any other file is not touched. */
    if (lstat(path, &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            snprintf(err, errlen, "--listen '%s' exists and is not a socket", path);
            return WARD_EINVAL;
        }
        unlink(path);
    }
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path, path, strlen(path));
    if (fd < 0 || bind(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0 || listen(fd, 1024) != 0) {
        int e = errno;
        snprintf(err, errlen, "cannot listen on unix:%s: %s", path, strerror(e));
        if (fd >= 0) close(fd);
        return -e;
    }
    /* Anyone may connect: attestation, not the file mode, decides what a caller gets. */
    chmod(path, 0666);
    return ward__add_listener(a, fd, 1);
}

static int ward__listen_tls(ward_agent_t *a, char *err, size_t errlen)
{
    char as[64];
    int one = 1;
    const ward_addr_t *addr = &a->cfg.listen_tls;
    int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, (const struct sockaddr *)&addr->ss, addr->len) != 0 || listen(fd, 1024) != 0) {
        int e = errno;
        snprintf(err, errlen, "cannot listen on %s: %s",
                 ward_addr_format((const struct sockaddr *)&addr->ss, as, sizeof(as)), strerror(e));
        if (fd >= 0) close(fd);
        return -e;
    }
    return ward__add_listener(a, fd, 0);
}

/* The agent's own SVID for its TLS listener: spiffe://TD/ward/agent, minted by its CA. */
static int ward__mint_own_identity(ward_agent_t *a, char *err, size_t errlen)
{
    char id[300];
    ward_der_chain_t chain = {0};
    uint8_t *key = NULL;
    size_t key_len = 0;
    snprintf(id, sizeof(id), "spiffe://%s/ward/agent", a->cfg.trust_domain);
    int rc = ward_ca_mint(a->ca, id, (uint32_t)(24 * 3600), &chain, &key, &key_len, err, errlen);
    if (rc < 0) return rc;
    const uint8_t *const *rder;
    const size_t *rlen;
    size_t n = ward_ca_bundle(a->ca, &rder, &rlen);
    ward_identity_t *next = NULL;
    rc = ward_identity_from_pkcs8((const uint8_t *const *)chain.der, chain.len, chain.n, key,
                                  key_len, rder, rlen, n, &next, err, errlen);
    memset(key, 0, key_len);
    ward_free(key);
    ward_der_chain_free(&chain);
    if (rc < 0) return rc;
    ward_identity_unref(a->tls_identity);
    a->tls_identity = next;
    return 0;
}

/* --- rotation, ticks, signals --------------------------------------------------------------- */

static void ward__on_rotation_timer(uv_timer_t *t)
{
    ward_agent_t *a = t->data;
    char err[256];
    if (a->rotation_pending == 1) {
        uint64_t waiting = 0;
        for (ward_session_t *s = a->sessions; s; s = s->next)
            if (s->active && s->kind == WARD_SESSION_MESH &&
                s->bundle_acked < a->rotation_bundle_version)
                waiting++;
        uint64_t age = uv_now(a->loop) - a->ready_ms;
        if (waiting > 0 && age < a->cfg.rotation_ack_timeout_ms) return;
        if (ward_ca_rotate_activate(a->ca, err, sizeof(err)) < 0) {
            ward_log_msg(WARD_LOG_ERROR, "ca_rotation_failed", "activate: %s", err);
            a->rotation_pending = 0;
            uv_timer_stop(t);
            return;
        }
        ward_log_msg(WARD_LOG_INFO, "ca_rotation_activated",
                     "new root signs from now on (%" PRIu64 " proxies had not ACKed the bundle)",
                     waiting);
        ward__mint_own_identity(a, err, sizeof(err));
        a->rotation_pending = 2;
        /* The old root leaves the bundle once no SVID it signed can still be valid. */
        uv_timer_start(t, ward__on_rotation_timer, (a->cfg.svid_ttl_s + 300) * 1000, 0);
        return;
    }
    if (a->rotation_pending == 2) {
        if (ward_ca_rotate_finish(a->ca, err, sizeof(err)) < 0)
            ward_log_msg(WARD_LOG_ERROR, "ca_rotation_failed", "finish: %s", err);
        else
            ward_log_msg(WARD_LOG_INFO, "ca_rotation_finished", "old root removed from bundle");
        a->rotation_pending = 0;
        ward_agent_push_bundles(a);
    }
}

static void ward__start_rotation(ward_agent_t *a)
{
    char err[256];
    if (a->rotation_pending) {
        ward_log_msg(WARD_LOG_WARN, "ca_rotation", "a rotation is already in progress");
        return;
    }
    if (ward_ca_rotate_prepare(a->ca, err, sizeof(err)) < 0) {
        ward_log_msg(WARD_LOG_ERROR, "ca_rotation_failed", "prepare: %s", err);
        return;
    }
    a->rotation_pending = 1;
    a->rotation_bundle_version = ward_agent_bundle_version(a);
    a->ready_ms = uv_now(a->loop);
    ward_log_msg(WARD_LOG_INFO, "ca_rotation_prepared",
                 "new root added to the bundle; pushing it before any SVID it signs");
    ward_agent_push_bundles(a);
    uv_timer_start(&a->rotation_timer, ward__on_rotation_timer, 200, 200);
}

static void ward__on_tick(uv_timer_t *t)
{
    ward_agent_t *a = t->data;
    uint64_t now = uv_now(a->loop);
    int ping = (++ward__ticks % WARD_AGENT_PING_EVERY) == 0;
    ward_agent_push_peers(a);
    for (ward_agent_conn_t *c = a->conns, *next; c; c = next) {
        next = c->next;
        if (c->sock.grpc == NULL || c->sock.closing) continue;
        if (ping) ward_grpc_conn_ping(c->sock.grpc);
        ward_grpc_sock_tick(&c->sock, now);
    }
}

static void ward__stop(ward_agent_t *a)
{
    if (a->stopping) return;
    a->stopping = 1;
    ward_log_msg(WARD_LOG_INFO, "stopping", "closing %" PRIu64 " connections", a->nconns);
    for (int i = 0; i < ward__nlisteners; i++) {
        uv_close((uv_handle_t *)&ward__listeners[i].poll, NULL);
        uv_close((uv_handle_t *)&ward__listeners[i].retry, NULL);
        close(ward__listeners[i].fd);
    }
    if (a->cfg.listen_unix) unlink(a->cfg.listen_unix);
    for (ward_agent_conn_t *c = a->conns, *next; c; c = next) {
        next = c->next;
        ward_grpc_sock_close(&c->sock, "agent stopping");
    }
    uv_close((uv_handle_t *)&a->tick, NULL);
    uv_close((uv_handle_t *)&a->policy_timer, NULL);
    uv_close((uv_handle_t *)&a->rotation_timer, NULL);
    uv_close((uv_handle_t *)&a->sig_term, NULL);
    uv_close((uv_handle_t *)&a->sig_int, NULL);
    uv_close((uv_handle_t *)&a->sig_usr1, NULL);
    uv_close((uv_handle_t *)&a->sig_hup, NULL);
    ward_admin_stop(&ward__admin);
    ward_webhook_stop(ward__webhook);
    ward__webhook = NULL;
}

/* Re-reads --workloads. Streams already attested keep their identity (sessions hold their own
 * copy); new streams use the new map. A bad file is reported and the old map stays. */
static void ward__reload_workloads(ward_agent_t *a)
{
    char err[512];
    ward_workloads_t *next = NULL;
    if (a->cfg.workloads_file == NULL) return;
    if (ward_workloads_load(a->cfg.workloads_file, a->cfg.trust_domain, &next, err, sizeof(err)) <
        0) {
        ward_log_msg(WARD_LOG_ERROR, "workloads_rejected", "%s: %s; keeping the previous map",
                     a->cfg.workloads_file, err);
        return;
    }
    /* Connections point into the old map (peer_identity): re-resolve them before freeing it. */
    for (ward_agent_conn_t *c = a->conns; c; c = c->next)
        if (c->is_unix) c->peer_identity = ward_workloads_lookup(next, c->cred.uid, c->cred.gid);
    ward_workloads_free(a->workloads);
    a->workloads = next;
    ward_log_msg(WARD_LOG_INFO, "workloads_loaded", "%s reloaded", a->cfg.workloads_file);
}

static void ward__on_signal(uv_signal_t *sig, int signum)
{
    ward_agent_t *a = sig->data;
    if (signum == SIGUSR1) {
        ward__start_rotation(a);
    } else if (signum == SIGHUP) {
        char err[512];
        if (ward__webhook != NULL && ward_webhook_reload(ward__webhook, err, sizeof(err)) < 0)
            ward_log_msg(WARD_LOG_ERROR, "webhook_cert_rejected", "%s; keeping the previous one",
                         err);
        ward__reload_workloads(a);
        ward__policy_fp = 0;
        a->policy_error[0] = '\0';
        ward__reload_policies(a, 0);
    } else {
        ward__stop(a);
    }
}

static int ward__render_metrics(void *ctx, ward_strbuf_t *o)
{
    ward_agent_t *a = ctx;
    const ward_agent_stats_t *s = &a->stats;
    uint64_t mesh = 0, workload = 0;
    for (ward_session_t *x = a->sessions; x; x = x->next) {
        if (x->kind == WARD_SESSION_MESH)
            mesh += x->active;
        else
            workload += x->active;
    }
    if (ward_sys_process_metrics(o) < 0) return WARD_ENOMEM;
    if (ward__webhook != NULL && ward_webhook_render_metrics(ward__webhook, o) < 0)
        return WARD_ENOMEM;
    return ward_strbuf_printf(
        o,
        "# HELP ward_agent_streams Open attested streams by kind.\n"
        "# TYPE ward_agent_streams gauge\n"
        "ward_agent_streams{kind=\"mesh\"} %" PRIu64 "\n"
        "ward_agent_streams{kind=\"workload_api\"} %" PRIu64 "\n"
        "# HELP ward_agent_connections Open client connections.\n"
        "# TYPE ward_agent_connections gauge\n"
        "ward_agent_connections %" PRIu64 "\n"
        "# HELP ward_agent_attestations_total Attestation results.\n"
        "# TYPE ward_agent_attestations_total counter\n"
        "ward_agent_attestations_total{result=\"success\"} %" PRIu64 "\n"
        "ward_agent_attestations_total{result=\"failure\"} %" PRIu64 "\n"
        "# HELP ward_agent_svids_issued_total SVIDs signed.\n"
        "# TYPE ward_agent_svids_issued_total counter\n"
        "ward_agent_svids_issued_total{api=\"mesh\"} %" PRIu64 "\n"
        "ward_agent_svids_issued_total{api=\"workload\"} %" PRIu64 "\n"
        "# HELP ward_agent_csr_refused_total CSRs refused.\n"
        "# TYPE ward_agent_csr_refused_total counter\n"
        "ward_agent_csr_refused_total %" PRIu64 "\n"
        "# HELP ward_agent_policy_pushes_total Policy snapshots sent to proxies.\n"
        "# TYPE ward_agent_policy_pushes_total counter\n"
        "ward_agent_policy_pushes_total %" PRIu64 "\n"
        "# HELP ward_agent_policy_reloads_total Policy directory loads by result.\n"
        "# TYPE ward_agent_policy_reloads_total counter\n"
        "ward_agent_policy_reloads_total{result=\"success\"} %" PRIu64 "\n"
        "ward_agent_policy_reloads_total{result=\"failure\"} %" PRIu64 "\n"
        "# HELP ward_agent_policy_valid 1 if the policy directory's current content is valid.\n"
        "# TYPE ward_agent_policy_valid gauge\n"
        "ward_agent_policy_valid %d\n"
        "# HELP ward_agent_nacks_total Resources a proxy refused.\n"
        "# TYPE ward_agent_nacks_total counter\n"
        "ward_agent_nacks_total %" PRIu64 "\n"
        "# HELP ward_agent_accept_paused_total Times accepting paused for lack of descriptors.\n"
        "# TYPE ward_agent_accept_paused_total counter\n"
        "ward_agent_accept_paused_total %" PRIu64 "\n"
        "# HELP ward_agent_bundle_version Current trust bundle version.\n"
        "# TYPE ward_agent_bundle_version gauge\n"
        "ward_agent_bundle_version %" PRIu64 "\n",
        mesh, workload, a->nconns, s->attest_ok, s->attest_failed, s->svids_signed,
        s->workload_svids, s->csr_refused, s->policy_pushes, s->policy_reload_ok,
        s->policy_reload_failed, a->policy_error[0] == '\0', s->nacks, s->accept_paused,
        ward_agent_bundle_version(a));
}

static int ward__is_ready(void *ctx)
{
    ward_agent_t *a = ctx;
    return !a->stopping && a->ca != NULL;
}

int main(int argc, char **argv)
{
    ward_agent_t *a = &ward__agent;
    char err[1024];
    int rc;

    signal(SIGPIPE, SIG_IGN);
    ward_alloc_install(NULL);
    rc = ward__parse(&a->cfg, argc, argv, err, sizeof(err));
    if (rc == 1) return 0;
    if (rc < 0) {
        fprintf(stderr, "ward-agent: %s\n", err);
        return 2;
    }
    ward_log_set_level(a->cfg.log_level);
    if (a->cfg.webhook_enabled && (rc = ward__make_injector(&a->cfg, err, sizeof(err))) < 0) {
        fprintf(stderr, "ward-agent: %s\n", err);
        return rc == WARD_EINVAL ? 2 : 1;
    }
    uint64_t nofile = ward_sys_raise_nofile();
    a->loop = uv_default_loop();
    ward_pool_init(&a->pool, 16);
    ward_policy_set_init(&a->policies);
    a->policies.mesh_default = a->cfg.mesh_default;

    if (ward_ca_open(a->cfg.state_dir, a->cfg.ca_cert, a->cfg.ca_key, a->cfg.trust_domain, &a->ca,
                     err, sizeof(err)) < 0) {
        fprintf(stderr, "ward-agent: CA: %s\n", err);
        return 2;
    }
    if (a->cfg.workloads_file && ward_workloads_load(a->cfg.workloads_file, a->cfg.trust_domain,
                                                     &a->workloads, err, sizeof(err)) < 0) {
        fprintf(stderr, "ward-agent: --workloads: %s\n", err);
        return 2;
    }
    if (a->cfg.jwks_file && ward_jwks_load(a->cfg.jwks_file, &a->jwks, err, sizeof(err)) < 0) {
        fprintf(stderr, "ward-agent: --jwks: %s\n", err);
        return 2;
    }
    if (a->cfg.policy_dir) {
        ward__policy_fp = ward__dir_fingerprint(a->cfg.policy_dir);
        ward__reload_policies(a, 1);
        if (!a->policies_loaded) {
            fprintf(stderr, "ward-agent: --policy-dir: %s\n", a->policy_error);
            return 2;
        }
    }
    if (a->cfg.tls_enabled && ward__mint_own_identity(a, err, sizeof(err)) < 0) {
        fprintf(stderr, "ward-agent: own TLS identity: %s\n", err);
        return 1;
    }
    if (ward__listen_unix(a, a->cfg.listen_unix, err, sizeof(err)) < 0 ||
        (a->cfg.tls_enabled && ward__listen_tls(a, err, sizeof(err)) < 0)) {
        fprintf(stderr, "ward-agent: %s\n", err);
        return 1;
    }
    if (a->cfg.admin_enabled) {
        ward__admin.render_metrics = ward__render_metrics;
        ward__admin.is_ready = ward__is_ready;
        ward__admin.ctx = a;
        if (ward_admin_start(&ward__admin, a->loop, &a->cfg.admin, err, sizeof(err)) < 0) {
            fprintf(stderr, "ward-agent: %s\n", err);
            return 1;
        }
    }
    if (a->cfg.webhook_enabled) {
        ward_webhook_config_t wc = {.listen = a->cfg.webhook_listen,
                                    .cert_file = a->cfg.webhook_cert,
                                    .key_file = a->cfg.webhook_key,
                                    .injector = ward__injector};
        if (ward_webhook_start(&ward__webhook, a->loop, &wc, err, sizeof(err)) < 0) {
            fprintf(stderr, "ward-agent: %s\n", err);
            return 1;
        }
    }
    uv_timer_init(a->loop, &a->tick);
    a->tick.data = a;
    uv_timer_start(&a->tick, ward__on_tick, WARD_AGENT_TICK_MS, WARD_AGENT_TICK_MS);
    uv_timer_init(a->loop, &a->policy_timer);
    a->policy_timer.data = a;
    if (a->cfg.policy_dir)
        uv_timer_start(&a->policy_timer, ward__on_policy_timer, a->cfg.policy_poll_ms,
                       a->cfg.policy_poll_ms);
    uv_timer_init(a->loop, &a->rotation_timer);
    a->rotation_timer.data = a;
    uv_signal_t *sigs[] = {&a->sig_term, &a->sig_int, &a->sig_usr1, &a->sig_hup};
    int nums[] = {SIGTERM, SIGINT, SIGUSR1, SIGHUP};
    for (int i = 0; i < 4; i++) {
        uv_signal_init(a->loop, sigs[i]);
        sigs[i]->data = a;
        uv_signal_start(sigs[i], ward__on_signal, nums[i]);
    }
    ward_logline_t l;
    if (ward_log_begin(&l, WARD_LOG_INFO, "started")) {
        ward_log_str(&l, "version", WARD_VERSION);
        ward_log_str(&l, "trust_domain", a->cfg.trust_domain);
        ward_log_str(&l, "listen", a->cfg.listen_unix);
        ward_log_u64(&l, "svid_ttl_s", a->cfg.svid_ttl_s);
        ward_log_u64(&l, "max_open_files", nofile);
        ward_log_str(&l, "attestation",
                     a->jwks ? (a->workloads ? "peercred+token" : "token")
                             : (a->workloads ? "peercred" : "none"));
        if (a->cfg.webhook_enabled) {
            char as[64];
            ward_log_str(&l, "webhook",
                         ward_addr_format((const struct sockaddr *)&a->cfg.webhook_listen.ss, as,
                                          sizeof(as)));
        }
        ward_log_end(&l);
    }
    uv_run(a->loop, UV_RUN_DEFAULT);
    ward_injector_free(ward__injector);
    ward_policy_set_free(&a->policies);
    ward_identity_unref(a->tls_identity);
    ward_workloads_free(a->workloads);
    ward_jwks_free(a->jwks);
    ward_ca_free(a->ca);
    ward_pool_destroy(&a->pool);
    uv_loop_close(a->loop);
    ward_log_msg(WARD_LOG_INFO, "exited", "shutdown complete");
    return 0;
}
