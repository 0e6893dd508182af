/* policy_store.c — the current compiled policy and its sources (see policy_store.h). */
#include "policy_store.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/log.h"
#include "ward/policy.h"

static ProtobufCAllocator ward__pb = {ward_pb_alloc, ward_pb_free, NULL};

static const char *const ward__defaults[] = {"deny", "allow", "audit"};

/* Swaps in a (taking the caller's reference) with its packed form (copied). */
static int ward__swap(ward_policy_store_t *s, ward_authz_t *a, const uint8_t *packed, size_t len)
{
    uint8_t *copy = ward_malloc(len ? len : 1);
    if (copy == NULL) {
        ward_authz_unref(a);
        return WARD_ENOMEM;
    }
    if (len) memcpy(copy, packed, len);
    pthread_mutex_lock(&s->mu);
    ward_authz_t *old = s->cur;
    uint8_t *old_packed = s->packed;
    s->cur = a;
    s->packed = copy;
    s->packed_len = len;
    atomic_fetch_add_explicit(&s->gen, 1, memory_order_release);
    pthread_mutex_unlock(&s->mu);
    ward_authz_unref(old);
    ward_free(old_packed);
    return 0;
}

int ward_policy_store_install(ward_policy_store_t *s, const uint8_t *packed, size_t len,
                              const char **why)
{
    ward_authz_t *a = NULL;
    const char *w = NULL;
    int rc = ward_authz_compile_packed(packed, len, &a, &w);
    if (rc < 0) {
        if (why) *why = w ? w : ward_strerror(rc);
        return rc;
    }
    rc = ward__swap(s, a, packed, len);
    if (rc < 0 && why) *why = "out of memory";
    return rc;
}

/* Builds and installs the snapshot --policy gives this proxy. Returns 0, 1 when nothing changed,
 * or a negative error with err set. */
static int ward__load_files(ward_policy_store_t *s, int force, char *err, size_t errlen)
{
    ward_policy_set_t set;
    ward_policy_error_t perr;
    struct stat st;
    uint8_t *packed = NULL;
    size_t len = 0;
    int rc;
    ward_identity_t *id = ward_identity_store_get(s->ids);
    if (id == NULL) {
        snprintf(err, errlen, "--policy: no identity yet to select policies for");
        return WARD_EINVAL;
    }
    const char *self = ward_identity_spiffe_id(id);
    ward_policy_set_init(&set);
    set.mesh_default = (Ward__V1__DefaultAction)s->mesh_default;
    memset(&perr, 0, sizeof(perr));
    if (stat(s->path, &st) != 0) {
        rc = -errno;
        snprintf(err, errlen, "--policy %s: %s", s->path, strerror(errno));
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        rc = ward_policy_load_dir(s->path, &set, &perr);
    } else {
        FILE *f = fopen(s->path, "rb");
        char *text = NULL;
        size_t n = 0;
        rc = f == NULL ? -errno : 0;
        if (rc == 0 && st.st_size > WARD_POLICY_MAX_FILE) rc = WARD_ETOOLONG;
        if (rc == 0 && (text = ward_malloc((size_t)st.st_size + 1)) == NULL) rc = WARD_ENOMEM;
        if (rc == 0) {
            n = fread(text, 1, (size_t)st.st_size, f);
            if (ferror(f)) rc = WARD_EIO;
        }
        if (f) fclose(f);
        if (rc == 0)
            rc = ward_policy_parse(text, n, s->path, &set, &perr);
        else
            snprintf(perr.file, sizeof(perr.file), "%s", s->path);
        ward_free(text);
        if (rc < 0 && perr.message[0] == '\0')
            snprintf(perr.message, sizeof(perr.message), "%s", ward_strerror(rc));
    }
    if (rc < 0) {
        if (perr.line > 0)
            snprintf(err, errlen, "%s:%d:%d: %s", perr.file, perr.line, perr.column, perr.message);
        else
            snprintf(err, errlen, "%s: %s", perr.file[0] ? perr.file : s->path,
                     perr.message[0] ? perr.message : ward_strerror(rc));
        goto out;
    }
    uint64_t h = ward_policy_set_hash(&set, self) ^ 0x9e3779b97f4a7c15ull;
    if (!force && s->hash == h) {
        rc = 1;
        goto out;
    }
    rc = ward_policy_snapshot_for(&set, self, s->file_version + 1, &packed, &len);
    if (rc < 0) {
        snprintf(err, errlen, "--policy %s: %s", s->path, ward_strerror(rc));
        goto out;
    }
    const char *why = NULL;
    rc = ward_policy_store_install(s, packed, len, &why);
    if (rc < 0) {
        snprintf(err, errlen, "--policy %s: %s", s->path, why);
        goto out;
    }
    s->hash = h;
    s->file_version++;
    ward_log_msg(WARD_LOG_INFO, "policy_loaded",
                 "policy version %" PRIu64 " from %s: %zu policies, %zu rules for %s",
                 s->file_version, s->path, ward_authz_policy_count(s->cur),
                 ward_authz_rule_count(s->cur), self);
out:
    ward_free(packed);
    ward_policy_set_free(&set);
    ward_identity_unref(id);
    return rc;
}

int ward_policy_store_init(ward_policy_store_t *s, const char *source, const char *path,
                           int mesh_default, ward_identity_store_t *ids, char *err, size_t errlen)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
    s->source = source;
    s->path = path;
    s->mesh_default = mesh_default;
    s->ids = ids;
    atomic_init(&s->valid, 1);
    /* No policy yet: the mesh default (agent mode: deny until the agent's first snapshot). */
    Ward__V1__PolicySnapshot snap = WARD__V1__POLICY_SNAPSHOT__INIT;
    snap.mesh_default = (Ward__V1__DefaultAction)mesh_default;
    uint8_t packed[16];
    size_t len = ward__v1__policy_snapshot__pack(&snap, packed);
    const char *why = NULL;
    int rc = ward_policy_store_install(s, packed, len, &why);
    if (rc < 0) {
        snprintf(err, errlen, "policy: %s", why);
        return rc;
    }
    if (path == NULL) return 0;
    rc = ward__load_files(s, 1, err, errlen);
    return rc < 0 ? rc : 0;
}

void ward_policy_store_check(ward_policy_store_t *s, int force)
{
    char err[512];
    if (s->path == NULL) return;
    int rc = ward__load_files(s, force, err, sizeof(err));
    if (rc == 1) {
        /* Unchanged from the installed set: valid again (e.g. a broken file was removed). */
        atomic_store(&s->valid, 1);
        return;
    }
    if (rc == 0) {
        atomic_fetch_add(&s->reloads_ok, 1);
        atomic_store(&s->valid, 1);
        return;
    }
    atomic_fetch_add(&s->reloads_failed, 1);
    /* Log a broken set once, not every interval. */
    if (atomic_exchange(&s->valid, 0) == 1 || force)
        ward_log_msg(WARD_LOG_ERROR, "policy_reload_failed", "%s; keeping policy version %" PRIu64,
                     err, s->file_version);
}

static void ward__on_timer(uv_timer_t *t)
{
    ward_policy_store_check(t->data, 0);
}

int ward_policy_store_watch(ward_policy_store_t *s, uv_loop_t *loop, uint64_t interval_ms)
{
    if (s->path == NULL || interval_ms == 0) return 0;
    int rc = uv_timer_init(loop, &s->timer);
    if (rc < 0) return rc;
    s->timer.data = s;
    s->watching = 1;
    return uv_timer_start(&s->timer, ward__on_timer, interval_ms, interval_ms);
}

void ward_policy_store_stop(ward_policy_store_t *s)
{
    if (s->watching) uv_close((uv_handle_t *)&s->timer, NULL);
    s->watching = 0;
}

void ward_policy_store_destroy(ward_policy_store_t *s)
{
    ward_authz_unref(s->cur);
    ward_free(s->packed);
    s->cur = NULL;
    s->packed = NULL;
    pthread_mutex_destroy(&s->mu);
}

ward_authz_t *ward_policy_store_get(ward_policy_store_t *s)
{
    pthread_mutex_lock(&s->mu);
    ward_authz_t *a = ward_authz_ref(s->cur);
    pthread_mutex_unlock(&s->mu);
    return a;
}

int ward_policy_store_json(ward_policy_store_t *s, ward_strbuf_t *o)
{
    static const char *const actions[] = {"UNSPECIFIED", "ALLOW", "DENY", "AUDIT"};
    int rc = 0;
    pthread_mutex_lock(&s->mu);
    Ward__V1__PolicySnapshot *snap =
        ward__v1__policy_snapshot__unpack(&ward__pb, s->packed_len, s->packed);
    size_t nrules = ward_authz_rule_count(s->cur);
    pthread_mutex_unlock(&s->mu);
    if (snap == NULL) return WARD_ENOMEM;
    unsigned d = (unsigned)snap->mesh_default;
    rc |= ward_strbuf_printf(o,
                             "{\"source\":\"%s\",\"version\":%llu,\"mesh_default\":\"%s\","
                             "\"valid\":%s,\"rules\":%zu,\"policies\":[",
                             s->source, (unsigned long long)snap->version,
                             d < 3 ? ward__defaults[d] : "deny",
                             atomic_load(&s->valid) ? "true" : "false", nrules);
    for (size_t i = 0; i < snap->n_policies; i++) {
        const Ward__V1__AuthorizationPolicy *p = snap->policies[i];
        unsigned a = (unsigned)p->action;
        rc |= ward_strbuf_printf(o, "%s{\"name\":", i ? "," : "");
        rc |= ward_strbuf_json_str(o, p->name ? p->name : "");
        rc |= ward_strbuf_printf(o, ",\"namespace\":");
        rc |= ward_strbuf_json_str(o, p->namespace_ ? p->namespace_ : "");
        rc |= ward_strbuf_printf(o, ",\"selector_identity\":");
        rc |= ward_strbuf_json_str(o, p->selector_identity ? p->selector_identity : "");
        rc |= ward_strbuf_printf(o, ",\"action\":\"%s\",\"rules\":%zu}",
                                 a < 4 ? actions[a] : "UNSPECIFIED", p->n_rules);
    }
    rc |= ward_strbuf_printf(o, "]}\n");
    ward__v1__policy_snapshot__free_unpacked(snap, &ward__pb);
    return rc ? WARD_ENOMEM : 0;
}

int ward_policy_store_metrics(ward_policy_store_t *s, ward_strbuf_t *o)
{
    pthread_mutex_lock(&s->mu);
    uint64_t version = ward_authz_version(s->cur);
    size_t rules = ward_authz_rule_count(s->cur);
    pthread_mutex_unlock(&s->mu);
    int rc = ward_strbuf_printf(
        o,
        "# HELP ward_policy_version Version of the policy snapshot in force.\n"
        "# TYPE ward_policy_version gauge\n"
        "ward_policy_version %" PRIu64 "\n"
        "# HELP ward_policy_rules Rules in the policy snapshot in force.\n"
        "# TYPE ward_policy_rules gauge\n"
        "ward_policy_rules %zu\n"
        "# HELP ward_policy_valid 1 when the last policy load succeeded.\n"
        "# TYPE ward_policy_valid gauge\n"
        "ward_policy_valid %d\n"
        "# HELP ward_policy_reloads_total Policy file reloads by result.\n"
        "# TYPE ward_policy_reloads_total counter\n"
        "ward_policy_reloads_total{result=\"success\"} %" PRIu64 "\n"
        "ward_policy_reloads_total{result=\"failure\"} %" PRIu64 "\n",
        version, rules, atomic_load(&s->valid), (uint64_t)atomic_load(&s->reloads_ok),
        (uint64_t)atomic_load(&s->reloads_failed));
    return rc ? WARD_ENOMEM : 0;
}
