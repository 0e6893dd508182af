/* main.c — ward-proxy: parse the configuration, load the identity, bind every listener, start the
 * workers, then run the main loop (admin endpoint, identity reload, signals, drain). */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "ward/admin.h"
#include "agent_client.h"
#include "config.h"
#include "identity_store.h"
#include "policy_store.h"
#include "worker.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/log.h"
#include "ward/sys.h"

typedef struct {
    uv_loop_t *loop;
    ward_config_t cfg;
    ward_identity_store_t store;
    ward_policy_store_t policy;
    ward_peers_t peers;
    ward_main_stats_t stats;
    ward_shared_t shared;
    ward_worker_t *workers;
    unsigned nworkers;
    unsigned started;
    ward_admin_t admin;
    ward_agent_client_t agent;
    int agent_mode;
    uv_async_t drained_async;
    uv_signal_t sig_term, sig_int, sig_hup;
    uv_timer_t drain_timer;
    int draining;
    int stopped;
    uint64_t nofile; /* open-file limit after raising it */
} ward_proxy_t;

static int ward__is_ready(void *ctx);

static int ward__render_metrics(void *ctx, ward_strbuf_t *out)
{
    ward_proxy_t *p = ctx;
    ward_stats_t *stats[256];
    for (unsigned i = 0; i < p->nworkers; i++)
        stats[i] = &p->workers[i].stats;
    ward_identity_t *id = ward_identity_store_get(&p->store);
    int rc =
        ward_stats_render(out, stats, p->nworkers, &p->stats, id ? ward_identity_not_after(id) : 0);
    ward_identity_unref(id);
    if (rc == 0) rc = ward_policy_store_metrics(&p->policy, out);
    if (rc == 0) rc = ward_sys_process_metrics(out);
    if (rc == 0 && p->agent_mode) rc = ward_agent_client_metrics(&p->agent, out);
    return rc;
}

/* GET /identity: what this proxy presents and trusts now. Never any key material. */
static int ward__render_identity(ward_proxy_t *p, ward_strbuf_t *o)
{
    int rc = 0;
    ward_identity_t *id = ward_identity_store_get(&p->store);
    int64_t now = (int64_t)time(NULL);
    rc |=
        ward_strbuf_printf(o, "{\"source\":\"%s\",\"ready\":%s", p->agent_mode ? "agent" : "files",
                           ward__is_ready(p) ? "true" : "false");
    if (id != NULL) {
        rc |= ward_strbuf_printf(o, ",\"spiffe_id\":");
        rc |= ward_strbuf_json_str(o, ward_identity_spiffe_id(id));
        rc |= ward_strbuf_printf(
            o,
            ",\"not_before\":%lld,\"not_after\":%lld,"
            "\"expires_in_seconds\":%lld,\"bundle_roots\":%zu,"
            "\"snapshot_generation\":%llu",
            (long long)ward_identity_not_before(id), (long long)ward_identity_not_after(id),
            (long long)(ward_identity_not_after(id) - now), ward_identity_bundle_size(id),
            (unsigned long long)ward_identity_generation(id));
    } else {
        rc |= ward_strbuf_printf(o, ",\"spiffe_id\":null");
    }
    if (p->agent_mode) {
        const ward_agent_client_t *ac = &p->agent;
        rc |= ward_strbuf_printf(o, ",\"agent\":{\"address\":");
        rc |= ward_strbuf_json_str(o, p->cfg.agent);
        rc |= ward_strbuf_printf(
            o,
            ",\"connected\":%s,\"svid_version\":%llu,\"bundle_version\":%llu,"
            "\"policy_version\":%llu,\"last_update\":%lld}",
            ac->connected ? "true" : "false", (unsigned long long)ac->svid_version,
            (unsigned long long)ac->bundle_version, (unsigned long long)ac->policy_version,
            (long long)ac->last_update);
    } else {
        rc |= ward_strbuf_printf(o, ",\"files\":{\"cert\":");
        rc |= ward_strbuf_json_str(o, p->cfg.cert_file);
        rc |= ward_strbuf_printf(o, ",\"key\":");
        rc |= ward_strbuf_json_str(o, p->cfg.key_file);
        rc |= ward_strbuf_printf(o, ",\"ca\":");
        rc |= ward_strbuf_json_str(o, p->cfg.ca_file);
        rc |= ward_strbuf_printf(o, "}");
    }
    rc |= ward_strbuf_printf(o, "}\n");
    ward_identity_unref(id);
    return rc ? WARD_ENOMEM : 0;
}

/* Decodes the value of `name` in a query string (percent-escapes and '+') into out. Returns 1
 * when present. */
static int ward__query_param(const char *q, const char *name, char *out, size_t cap)
{
    size_t nl = strlen(name);
    while (*q) {
        const char *end = q + strcspn(q, "&");
        if ((size_t)(end - q) > nl && strncmp(q, name, nl) == 0 && q[nl] == '=') {
            size_t n = 0;
            for (const char *s = q + nl + 1; s < end && n + 1 < cap; s++) {
                unsigned v;
                if (*s == '%' && end - s >= 3 && sscanf(s + 1, "%2x", &v) == 1) {
                    out[n++] = (char)v;
                    s += 2;
                } else {
                    out[n++] = *s == '+' ? ' ' : *s;
                }
            }
            out[n] = '\0';
            return 1;
        }
        q = *end ? end + 1 : end;
    }
    return 0;
}

/* GET /connections[?peer=ID]: the open connections of every worker, as one JSON document. */
static int ward__render_connections(ward_proxy_t *p, const char *query, ward_strbuf_t *o)
{
    char peer[1024];
    int has_peer = ward__query_param(query, "peer", peer, sizeof(peer));
    size_t total = 0;
    int partial = 0;
    int rc = ward_strbuf_printf(o, "{\"connections\":[");
    for (unsigned i = 0; i < p->started && !p->stopped && rc == 0; i++) {
        size_t rows = 0;
        int r = ward_worker_snapshot(&p->workers[i], o, has_peer ? peer : NULL, &rows, 1000);
        if (r == WARD_ENOMEM) return r;
        if (r < 0) partial = 1;
        total += rows;
    }
    if (rc == 0 && total > 0 && o->data[o->len - 1] == ',') o->data[--o->len] = '\0';
    rc |= ward_strbuf_printf(o, "],\"count\":%zu,\"partial\":%s}\n", total,
                             partial ? "true" : "false");
    return rc ? WARD_ENOMEM : 0;
}

static int ward__render_page(void *ctx, const char *path, const char *query, ward_strbuf_t *out)
{
    ward_proxy_t *p = ctx;
    if (strcmp(path, "/connections") == 0) return ward__render_connections(p, query, out);
    if (strcmp(path, "/peers") == 0) return ward_peers_json(&p->peers, out);
    if (strcmp(path, "/identity") == 0) return ward__render_identity(p, out);
    if (strcmp(path, "/policy") == 0) return ward_policy_store_json(&p->policy, out);
    return 1;
}

static int ward__is_ready(void *ctx)
{
    ward_proxy_t *p = ctx;
    if (p->draining || p->started != p->nworkers) return 0;
    /* Ready only with an identity that is still valid: never bootstrapped or expired = not. */
    ward_identity_t *id = ward_identity_store_get(&p->store);
    int ok = id != NULL && ward_identity_not_after(id) > (int64_t)time(NULL);
    ward_identity_unref(id);
    return ok;
}

static void ward__stop_everything(ward_proxy_t *p)
{
    if (p->stopped) return;
    p->stopped = 1;
    for (unsigned i = 0; i < p->started; i++)
        ward_worker_send(&p->workers[i], WARD_CMD_STOP);
    for (unsigned i = 0; i < p->started; i++)
        ward_worker_join(&p->workers[i]);
    ward_admin_stop(&p->admin);
    if (p->agent_mode) ward_agent_client_stop(&p->agent);
    ward_identity_store_stop(&p->store);
    ward_policy_store_stop(&p->policy);
    ward_peers_stop(&p->peers);
    uv_close((uv_handle_t *)&p->drained_async, NULL);
    uv_close((uv_handle_t *)&p->sig_term, NULL);
    uv_close((uv_handle_t *)&p->sig_int, NULL);
    uv_close((uv_handle_t *)&p->sig_hup, NULL);
    uv_close((uv_handle_t *)&p->drain_timer, NULL);
}

static void ward__on_drained(uv_async_t *a)
{
    ward_proxy_t *p = a->data;
    if (!p->draining) return;
    for (unsigned i = 0; i < p->started; i++)
        if (!atomic_load(&p->workers[i].drained)) return;
    ward_log_msg(WARD_LOG_INFO, "drained", "all connections closed; exiting");
    ward__stop_everything(p);
}

static void ward__on_drain_deadline(uv_timer_t *t)
{
    ward_proxy_t *p = t->data;
    ward_log_msg(WARD_LOG_WARN, "drain_deadline",
                 "drain timeout reached; closing the remaining connections");
    for (unsigned i = 0; i < p->started; i++)
        ward_worker_send(&p->workers[i], WARD_CMD_FORCE_CLOSE);
}

static void ward__on_signal(uv_signal_t *s, int signum)
{
    ward_proxy_t *p = s->data;
    if (signum == SIGHUP) {
        ward_log_msg(WARD_LOG_INFO, "sighup", "reloading identity and policy files");
        ward_identity_store_check(&p->store, 1);
        ward_policy_store_check(&p->policy, 1);
        ward_peers_check(&p->peers, 1);
        return;
    }
    if (p->draining) {
        ward_log_msg(WARD_LOG_WARN, "signal", "second signal: closing all connections now");
        ward__on_drain_deadline(&p->drain_timer);
        return;
    }
    p->draining = 1;
    ward_log_msg(WARD_LOG_INFO, "draining",
                 "signal %d: no longer accepting; waiting up to %llums for open connections",
                 signum, (unsigned long long)p->cfg.drain_timeout_ms);
    uv_timer_start(&p->drain_timer, ward__on_drain_deadline, p->cfg.drain_timeout_ms, 0);
    for (unsigned i = 0; i < p->started; i++)
        ward_worker_send(&p->workers[i], WARD_CMD_DRAIN);
}

static void ward__log_startup(ward_proxy_t *p)
{
    ward_logline_t l;
    ward_identity_t *id = ward_identity_store_get(&p->store);
    if (ward_log_begin(&l, WARD_LOG_INFO, "started")) {
        char a[64];
        ward_log_str(&l, "version", WARD_VERSION);
        if (id) {
            ward_log_str(&l, "spiffe_id", ward_identity_spiffe_id(id));
            ward_log_i64(&l, "cert_not_after", ward_identity_not_after(id));
        } else {
            ward_log_str(&l, "agent", p->cfg.agent);
            ward_log_str(&l, "msg", "waiting for an identity from the agent; not ready until then");
        }
        ward_log_u64(&l, "workers", p->nworkers);
        ward_log_u64(&l, "max_open_files", p->nofile);
        if (p->cfg.admin_enabled)
            ward_log_str(&l, "admin",
                         ward_addr_format((struct sockaddr *)&p->cfg.admin.ss, a, sizeof(a)));
        ward_log_end(&l);
    }
    for (size_t i = 0; i < p->cfg.nmaps; i++)
        ward_log_msg(WARD_LOG_INFO, "listening", "%s %s", ward_dir_name(p->cfg.maps[i].dir),
                     p->cfg.maps[i].spec);
    ward_identity_unref(id);
}

int main(int argc, char **argv)
{
    static ward_proxy_t p;
    char err[1024];
    int rc, exit_code = 1;

    signal(SIGPIPE, SIG_IGN);
    ward_alloc_install(NULL);
    rc = ward_config_parse(&p.cfg, argc, argv, err, sizeof(err));
    if (rc == WARD_CONFIG_EXIT) return 0;
    if (rc < 0) {
        fprintf(stderr, "ward-proxy: %s\n", err);
        return 2;
    }
    ward_log_set_level(p.cfg.log_level);
    p.nofile = ward_sys_raise_nofile();

    p.agent_mode = p.cfg.agent != NULL;
    if (p.agent_mode) {
        ward_identity_store_init_empty(&p.store, &p.stats);
        rc = 0;
    } else {
        rc = ward_identity_store_init(&p.store, p.cfg.cert_file, p.cfg.key_file, p.cfg.ca_file,
                                      &p.stats, err, sizeof(err));
    }
    if (rc < 0) {
        fprintf(stderr, "ward-proxy: identity: %s\n", err);
        ward_config_free(&p.cfg);
        return 2;
    }

    rc = ward_policy_store_init(&p.policy,
                                p.agent_mode        ? "agent"
                                : p.cfg.policy_path ? "file"
                                                    : "flags",
                                p.cfg.policy_path, p.cfg.mesh_default, &p.store, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "ward-proxy: policy: %s\n", err);
        ward_identity_store_destroy(&p.store);
        ward_config_free(&p.cfg);
        return 2;
    }

    rc = ward_peers_init(&p.peers, p.cfg.peers_file, err, sizeof(err));
    if (rc < 0) {
        fprintf(stderr, "ward-proxy: --peers: %s\n", err);
        ward_policy_store_destroy(&p.policy);
        ward_identity_store_destroy(&p.store);
        ward_config_free(&p.cfg);
        return 2;
    }

    p.loop = uv_default_loop();
    p.shared.cfg = &p.cfg;
    p.shared.peers = &p.peers;
    p.shared.store = &p.store;
    p.shared.policy = &p.policy;
    p.shared.worker_drained = &p.drained_async;
    uv_async_init(p.loop, &p.drained_async, ward__on_drained);
    p.drained_async.data = &p;
    uv_timer_init(p.loop, &p.drain_timer);
    p.drain_timer.data = &p;
    uv_signal_init(p.loop, &p.sig_term);
    uv_signal_init(p.loop, &p.sig_int);
    uv_signal_init(p.loop, &p.sig_hup);
    p.sig_term.data = p.sig_int.data = p.sig_hup.data = &p;
    uv_signal_start(&p.sig_term, ward__on_signal, SIGTERM);
    uv_signal_start(&p.sig_int, ward__on_signal, SIGINT);
    uv_signal_start(&p.sig_hup, ward__on_signal, SIGHUP);

    p.nworkers = p.cfg.workers;
    p.workers = ward_calloc(p.nworkers, sizeof(*p.workers));
    if (p.workers == NULL) {
        fprintf(stderr, "ward-proxy: out of memory\n");
        goto out;
    }
    p.shared.workers = p.workers;
    p.shared.nworkers = p.nworkers;
    for (unsigned i = 0; i < p.nworkers; i++) {
        rc = ward_worker_init(&p.workers[i], i, &p.shared, err, sizeof(err));
        if (rc < 0) {
            fprintf(stderr, "ward-proxy: %s\n", err);
            for (unsigned k = 0; k <= i; k++)
                ward_worker_destroy(&p.workers[k]);
            ward_free(p.workers);
            p.workers = NULL;
            goto out;
        }
    }
    if (p.cfg.admin_enabled) {
        p.admin.render_metrics = ward__render_metrics;
        p.admin.is_ready = ward__is_ready;
        p.admin.render_page = ward__render_page;
        p.admin.ctx = &p;
        if (ward_admin_start(&p.admin, p.loop, &p.cfg.admin, err, sizeof(err)) < 0) {
            fprintf(stderr, "ward-proxy: %s\n", err);
            for (unsigned k = 0; k < p.nworkers; k++)
                ward_worker_destroy(&p.workers[k]);
            goto out;
        }
    }
    if (p.agent_mode) {
        if (ward_agent_client_start(&p.agent, p.loop, &p.cfg, &p.store, &p.policy, &p.peers, err,
                                    sizeof(err)) < 0) {
            fprintf(stderr, "ward-proxy: --agent: %s\n", err);
            for (unsigned k = 0; k < p.nworkers; k++)
                ward_worker_destroy(&p.workers[k]);
            ward_admin_stop(&p.admin);
            goto out;
        }
    } else {
        ward_identity_store_watch(&p.store, p.loop, p.cfg.reload_interval_ms);
        ward_policy_store_watch(&p.policy, p.loop, p.cfg.reload_interval_ms);
    }
    ward_peers_watch(&p.peers, p.loop, p.cfg.reload_interval_ms);
    for (unsigned i = 0; i < p.nworkers; i++) {
        rc = ward_worker_start(&p.workers[i]);
        if (rc < 0) {
            ward_log_msg(WARD_LOG_ERROR, "worker_start_failed", "worker %u: %s", i,
                         uv_strerror(rc));
            p.draining = 1;
            ward__stop_everything(&p);
            break;
        }
        p.started++;
    }
    if (!p.stopped) ward__log_startup(&p);

    uv_run(p.loop, UV_RUN_DEFAULT);
    exit_code = p.started == p.nworkers ? 0 : 1;
    for (unsigned i = 0; i < p.nworkers; i++)
        ward_worker_destroy(&p.workers[i]);
    ward_log_msg(WARD_LOG_INFO, "exited", "shutdown complete");
out:
    ward_free(p.workers);
    ward_policy_store_destroy(&p.policy);
    ward_peers_destroy(&p.peers);
    ward_identity_store_destroy(&p.store);
    ward_config_free(&p.cfg);
    uv_loop_close(uv_default_loop());
    return exit_code;
}
