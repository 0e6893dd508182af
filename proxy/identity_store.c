/* identity_store.c — current identity snapshot and file reload (see identity_store.h). */
#include "identity_store.h"

#include <string.h>

#include "ward/log.h"

static void ward__stat_files(ward_identity_store_t *s, struct stat out[3])
{
    for (int i = 0; i < 3; i++) {
        if (stat(s->files[i], &out[i]) != 0) memset(&out[i], 0, sizeof(out[i]));
    }
}

static int ward__stat_same(const struct stat *a, const struct stat *b)
{
    return a->st_ino == b->st_ino && a->st_dev == b->st_dev && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

int ward_identity_store_init(ward_identity_store_t *s, const char *cert, const char *key,
                             const char *ca, ward_main_stats_t *stats, char *err, size_t errlen)
{
    memset(s, 0, sizeof(*s));
    s->files[0] = cert;
    s->files[1] = key;
    s->files[2] = ca;
    s->stats = stats;
    ward__stat_files(s, s->seen);
    int rc = ward_identity_load(cert, key, ca, &s->cur, err, errlen);
    if (rc < 0) return rc;
    pthread_mutex_init(&s->mu, NULL);
    return 0;
}

void ward_identity_store_init_empty(ward_identity_store_t *s, ward_main_stats_t *stats)
{
    memset(s, 0, sizeof(*s));
    s->stats = stats;
    pthread_mutex_init(&s->mu, NULL);
}

void ward_identity_store_set(ward_identity_store_t *s, ward_identity_t *id)
{
    pthread_mutex_lock(&s->mu);
    ward_identity_t *old = s->cur;
    s->cur = id;
    pthread_mutex_unlock(&s->mu);
    ward_identity_unref(old);
}

ward_identity_t *ward_identity_store_get(ward_identity_store_t *s)
{
    pthread_mutex_lock(&s->mu);
    ward_identity_t *id = s->cur ? ward_identity_ref(s->cur) : NULL;
    pthread_mutex_unlock(&s->mu);
    return id;
}

void ward_identity_store_check(ward_identity_store_t *s, int force)
{
    if (s->files[0] == NULL) return; /* agent mode: nothing to reload from disk */
    struct stat now[3];
    ward__stat_files(s, now);
    int changed = force;
    for (int i = 0; i < 3; i++)
        changed |= !ward__stat_same(&now[i], &s->seen[i]);
    if (!changed) return;
    memcpy(s->seen, now, sizeof(now));

    char err[512];
    ward_identity_t *next = NULL;
    int rc = ward_identity_load(s->files[0], s->files[1], s->files[2], &next, err, sizeof(err));
    ward_logline_t l;
    if (rc < 0) {
        ward_counter_add(&s->stats->reloads_failed, 1);
        if (ward_log_begin(&l, WARD_LOG_ERROR, "identity_reload_failed")) {
            ward_log_str(&l, "msg", "new identity files rejected; keeping the current identity");
            ward_log_str(&l, "error", err);
            ward_log_end(&l);
        }
        return;
    }
    pthread_mutex_lock(&s->mu);
    ward_identity_t *old = s->cur;
    s->cur = next;
    pthread_mutex_unlock(&s->mu);
    ward_counter_add(&s->stats->reloads_ok, 1);
    if (ward_log_begin(&l, WARD_LOG_INFO, "identity_reloaded")) {
        ward_log_str(&l, "spiffe_id", ward_identity_spiffe_id(next));
        ward_log_i64(&l, "not_after", ward_identity_not_after(next));
        ward_log_str(&l, "msg", "new connections use the new identity; open ones keep theirs");
        ward_log_end(&l);
    }
    ward_identity_unref(old);
}

static void ward__store_tick(uv_timer_t *t)
{
    ward_identity_store_check(t->data, 0);
}

int ward_identity_store_watch(ward_identity_store_t *s, uv_loop_t *loop, uint64_t interval_ms)
{
    int rc = uv_timer_init(loop, &s->timer);
    if (rc < 0) return rc;
    s->timer.data = s;
    return uv_timer_start(&s->timer, ward__store_tick, interval_ms, interval_ms);
}

void ward_identity_store_stop(ward_identity_store_t *s)
{
    if (s->timer.loop == NULL) return; /* never watched */
    uv_timer_stop(&s->timer);
    if (!uv_is_closing((uv_handle_t *)&s->timer)) uv_close((uv_handle_t *)&s->timer, NULL);
}

void ward_identity_store_destroy(ward_identity_store_t *s)
{
    ward_identity_unref(s->cur);
    s->cur = NULL;
    pthread_mutex_destroy(&s->mu);
}
