/* worker.c — worker threads and their listeners (see worker.h). */
#include "worker.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "ward/alloc.h"
#include "ward/log.h"

#define WARD_ACCEPT_BATCH  64
#define WARD_POOL_MAX_FREE 16 /* 1 MiB of free chunks kept per worker at most */

static int ward__listen_socket(const ward_addr_t *a, int *out)
{
    int one = 1;
    int fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
        goto fail;
    if (a->ss.ss_family == AF_INET6 &&
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) != 0)
        goto fail;
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) != 0) goto fail;
    if (listen(fd, 4096) != 0) goto fail;
    *out = fd;
    return 0;
fail:;
    int e = -errno;
    close(fd);
    return e;
}

int ward_worker_init(ward_worker_t *w, unsigned index, ward_shared_t *shared, char *err,
                     size_t errlen)
{
    const ward_config_t *cfg = shared->cfg;
    memset(w, 0, sizeof(*w));
    w->index = index;
    w->shared = shared;
    ward_stats_init(&w->stats);
    pthread_mutex_init(&w->snap.mu, NULL);
    pthread_cond_init(&w->snap.cv, NULL);
    ward_pool_init(&w->pool, WARD_POOL_MAX_FREE);
    int rc = uv_loop_init(&w->loop);
    if (rc < 0) {
        snprintf(err, errlen, "worker %u: uv_loop_init: %s", index, uv_strerror(rc));
        return rc;
    }
    w->loop.data = w;
    w->listeners = ward_calloc(cfg->nmaps, sizeof(*w->listeners));
    w->sessions = ward_calloc(cfg->nmaps, sizeof(*w->sessions));
    if (w->listeners == NULL || w->sessions == NULL) {
        snprintf(err, errlen, "out of memory");
        return UV_ENOMEM;
    }
    for (size_t i = 0; i < cfg->nmaps; i++) {
        ward_listener_t *l = &w->listeners[i];
        l->fd = -1;
        l->w = w;
        l->map = &cfg->maps[i];
        rc = ward__listen_socket(&cfg->maps[i].listen, &l->fd);
        if (rc < 0 && cfg->maps[i].transparent && cfg->maps[i].listen.ss.ss_family == AF_INET6 &&
            (rc == -EAFNOSUPPORT || rc == -EADDRNOTAVAIL)) {
            /* A dual-stack template on a pod without IPv6: there is no IPv6 traffic to capture. */
            if (index == 0)
                ward_log_msg(WARD_LOG_INFO, "capture_listener_skipped",
                             "%s: IPv6 is not available here: %s", cfg->maps[i].spec,
                             strerror(-rc));
            l->fd = -1;
            w->nlisteners++;
            continue;
        }
        if (rc < 0) {
            char a[64];
            snprintf(
                err, errlen, "cannot listen on %s for %s '%s': %s",
                ward_addr_format((const struct sockaddr *)&cfg->maps[i].listen.ss, a, sizeof(a)),
                ward_dir_name(cfg->maps[i].dir), cfg->maps[i].spec, strerror(-rc));
            return rc;
        }
        w->nlisteners++;
    }
    return 0;
}

static void ward__listener_closed(uv_handle_t *h)
{
    ward_listener_t *l = h->data;
    close(l->fd);
    l->fd = -1;
}

static void ward__pause_accept(ward_worker_t *w)
{
    if (w->accept_paused) return;
    for (size_t k = 0; k < w->nlisteners; k++)
        if (w->listeners[k].active) uv_poll_stop(&w->listeners[k].poll);
    w->accept_paused = 1;
    atomic_fetch_add(&w->shared->paused_workers, 1);
}

static int ward__at_cap(ward_worker_t *w)
{
    return atomic_load_explicit(&w->shared->open_conns, memory_order_relaxed) >=
           w->shared->cfg->max_connections;
}

static void ward__on_accept(uv_poll_t *h, int status, int events);

static void ward__resume_accept(ward_worker_t *w)
{
    if (!w->accept_paused || w->draining || ward__at_cap(w)) return;
    w->accept_paused = 0;
    atomic_fetch_sub(&w->shared->paused_workers, 1);
    if (w->fd_paused) return; /* the descriptor retry timer restarts polling */
    for (size_t k = 0; k < w->nlisteners; k++)
        if (w->listeners[k].active)
            uv_poll_start(&w->listeners[k].poll, UV_READABLE, ward__on_accept);
}

static void ward__fd_retry(uv_timer_t *t)
{
    ward_worker_t *w = t->data;
    w->fd_paused = 0;
    if (w->accept_paused || w->draining) return;
    for (size_t k = 0; k < w->nlisteners; k++)
        if (w->listeners[k].active)
            uv_poll_start(&w->listeners[k].poll, UV_READABLE, ward__on_accept);
}

static void ward__on_accept(uv_poll_t *h, int status, int events)
{
    ward_listener_t *l = h->data;
    ward_worker_t *w = l->w;
    if (status < 0) return;
    for (int i = 0; i < WARD_ACCEPT_BATCH; i++) {
        if (ward__at_cap(w)) {
            /* At the cap: leave the rest in the kernel backlog until a connection closes. */
            ward__pause_accept(w);
            return;
        }
        int fd = accept4(l->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR) continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* The listener stays readable: polling on would spin. Pause accepting on this
                 * worker for 100 ms; connections wait in the kernel backlog meanwhile. */
                ward_log_msg(WARD_LOG_WARN, "accept_paused", "accept on %s: %s; retrying in 100 ms",
                             l->map->spec, strerror(errno));
                ward_counter_add(&w->stats.accept_paused_fds, 1);
                for (size_t k = 0; k < w->nlisteners; k++)
                    if (w->listeners[k].active) uv_poll_stop(&w->listeners[k].poll);
                w->fd_paused = 1;
                uv_timer_start(&w->fd_retry, ward__fd_retry, 100, 0);
            } else if (errno != EAGAIN && errno != ECONNABORTED) {
                ward_log_msg(WARD_LOG_WARN, "accept_failed", "accept on %s: %s", l->map->spec,
                             strerror(errno));
            }
            return;
        }
        ward_conn_accept(w, l->map, (size_t)(l - w->listeners), fd);
    }
}

static void ward__close_listeners(ward_worker_t *w)
{
    for (size_t i = 0; i < w->nlisteners; i++) {
        ward_listener_t *l = &w->listeners[i];
        if (l->active) {
            l->active = 0;
            uv_close((uv_handle_t *)&l->poll, ward__listener_closed);
        }
    }
}

static void ward__maybe_finish(ward_worker_t *w)
{
    if (w->draining && w->nconns == 0 && !atomic_load(&w->drained)) {
        atomic_store(&w->drained, 1);
        uv_async_send(w->shared->worker_drained);
    }
}

void ward_worker_conn_added(ward_worker_t *w, ward_conn_t *c)
{
    w->nconns++;
    atomic_fetch_add_explicit(&w->shared->open_conns, 1, memory_order_relaxed);
}

void ward_worker_conn_removed(ward_worker_t *w, ward_conn_t *c)
{
    ward_shared_t *sh = w->shared;
    w->nconns--;
    atomic_fetch_sub_explicit(&sh->open_conns, 1, memory_order_relaxed);
    if (atomic_load(&sh->paused_workers) > 0) {
        ward__resume_accept(w);
        for (unsigned i = 0; i < sh->nworkers; i++)
            if (&sh->workers[i] != w) ward_worker_send(&sh->workers[i], WARD_CMD_RESUME);
    }
    ward__maybe_finish(w);
}

static void ward__on_cmd(uv_async_t *a)
{
    ward_worker_t *w = a->data;
    unsigned cmd = atomic_exchange(&w->cmd, 0);
    if (cmd & WARD_CMD_RESUME) ward__resume_accept(w);
    if (cmd & WARD_CMD_SNAPSHOT) {
        ward_snapshot_req_t *r = &w->snap;
        pthread_mutex_lock(&r->mu);
        if (r->pending) {
            for (ward_conn_t *c = w->conns; c != NULL && r->rc == 0; c = ward_conn_next(c)) {
                int n = ward_conn_render(c, r->out, r->peer);
                if (n < 0)
                    r->rc = n;
                else
                    r->rows += (size_t)n;
            }
            r->pending = 0;
            pthread_cond_signal(&r->cv);
        }
        pthread_mutex_unlock(&r->mu);
    }
    if (cmd & WARD_CMD_DRAIN && !w->draining) {
        w->draining = 1;
        ward__close_listeners(w);
        for (ward_conn_t *c = w->conns; c != NULL; c = ward_conn_next(c))
            ward_conn_drain(c);
    }
    if (cmd & WARD_CMD_FORCE_CLOSE) {
        w->draining = 1;
        ward__close_listeners(w);
        ward_conn_t *c = w->conns;
        while (c != NULL) {
            ward_conn_t *next = ward_conn_next(c);
            ward_conn_abort(c, "drain deadline reached");
            c = next;
        }
    }
    if (cmd & WARD_CMD_STOP) {
        ward__close_listeners(w);
        uv_close((uv_handle_t *)&w->fd_retry, NULL);
        uv_close((uv_handle_t *)&w->async, NULL);
        return;
    }
    ward__maybe_finish(w);
}

static void ward__worker_main(void *arg)
{
    ward_worker_t *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
}

int ward_worker_start(ward_worker_t *w)
{
    int rc = uv_async_init(&w->loop, &w->async, ward__on_cmd);
    if (rc < 0) return rc;
    w->async.data = w;
    uv_timer_init(&w->loop, &w->fd_retry);
    w->fd_retry.data = w;
    for (size_t i = 0; i < w->nlisteners; i++) {
        ward_listener_t *l = &w->listeners[i];
        if (l->fd < 0) continue; /* skipped (see ward_worker_init) */
        rc = uv_poll_init(&w->loop, &l->poll, l->fd);
        if (rc < 0) return rc;
        l->poll.data = l;
        l->active = 1;
        rc = uv_poll_start(&l->poll, UV_READABLE, ward__on_accept);
        if (rc < 0) return rc;
    }
    return uv_thread_create(&w->thread, ward__worker_main, w);
}

void ward_worker_send(ward_worker_t *w, unsigned cmd)
{
    atomic_fetch_or(&w->cmd, cmd);
    uv_async_send(&w->async);
}

void ward_worker_join(ward_worker_t *w)
{
    uv_thread_join(&w->thread);
}

void ward_worker_destroy(ward_worker_t *w)
{
    for (size_t i = 0; i < w->nlisteners; i++)
        if (w->listeners && w->listeners[i].fd >= 0) close(w->listeners[i].fd);
    if (w->sessions) {
        for (size_t i = 0; i < w->nlisteners; i++)
            SSL_SESSION_free(w->sessions[i].sess);
    }
    ward_free(w->listeners);
    ward_free(w->sessions);
    ward_pool_destroy(&w->pool);
    ward_authz_unref(w->authz);
    w->authz = NULL;
    ward_stats_destroy(&w->stats);
    pthread_mutex_destroy(&w->snap.mu);
    pthread_cond_destroy(&w->snap.cv);
    uv_loop_close(&w->loop);
}

int ward_worker_snapshot(ward_worker_t *w, ward_strbuf_t *out, const char *peer, size_t *rows,
                         uint64_t timeout_ms)
{
    ward_snapshot_req_t *r = &w->snap;
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += (time_t)(timeout_ms / 1000);
    deadline.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (deadline.tv_nsec >= 1000000000L) {
        deadline.tv_sec++;
        deadline.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&r->mu);
    r->out = out;
    r->peer = peer;
    r->rows = 0;
    r->rc = 0;
    r->pending = 1;
    pthread_mutex_unlock(&r->mu);
    ward_worker_send(w, WARD_CMD_SNAPSHOT);
    pthread_mutex_lock(&r->mu);
    int rc = 0;
    while (r->pending && rc == 0)
        rc = pthread_cond_timedwait(&r->cv, &r->mu, &deadline);
    if (r->pending) {
        /* The worker did not answer in time: withdraw the request (it checks `pending`). */
        r->pending = 0;
        rc = UV_ETIMEDOUT;
    } else {
        rc = r->rc;
        *rows = r->rows;
    }
    r->out = NULL;
    pthread_mutex_unlock(&r->mu);
    return rc;
}
