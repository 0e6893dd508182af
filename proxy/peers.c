/* peers.c — the peer directory of transparent outbound capture (see peers.h). */
#include "peers.h"

#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/log.h"
#include "ward/spiffe.h"
#include "ward/strbuf.h"

#include <arpa/inet.h>

#define WARD_PEERS_MAX_FILE (4 * 1024 * 1024)

struct ward_peer_entry {
    uint8_t ip[16]; /* IPv4 as IPv4-mapped IPv6 */
    uint16_t port;  /* 0 = any port */
    char *id;
};

/* Canonical 16-byte form of an address (IPv4 mapped), and its port. Returns 0 or -1. */
static int ward__key(const struct sockaddr *sa, uint8_t ip[16], uint16_t *port)
{
    if (sa->sa_family == AF_INET) {
        const struct sockaddr_in *s4 = (const struct sockaddr_in *)sa;
        memset(ip, 0, 10);
        ip[10] = ip[11] = 0xff;
        memcpy(ip + 12, &s4->sin_addr, 4);
        *port = ntohs(s4->sin_port);
        return 0;
    }
    if (sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)sa;
        memcpy(ip, &s6->sin6_addr, 16);
        *port = ntohs(s6->sin6_port);
        return 0;
    }
    return -1;
}

static int ward__cmp(const void *a, const void *b)
{
    const ward_peer_entry_t *x = a, *y = b;
    int c = memcmp(x->ip, y->ip, 16);
    if (c) return c;
    return (int)x->port - (int)y->port;
}

void ward_peers_free_entries(ward_peer_entry_t *e, size_t count)
{
    for (size_t i = 0; i < count; i++)
        ward_free(e[i].id);
    ward_free(e);
}

int ward_peers_parse(const char *text, size_t len, ward_peer_entry_t **out, size_t *count,
                     char *err, size_t errlen)
{
    ward_peer_entry_t *e = NULL;
    size_t n = 0, cap = 0;
    int lineno = 0, rc = 0;
    const char *p = text, *end = text + len;
    while (p < end && rc == 0) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        lineno++;
        char line[2048];
        size_t ll = (size_t)(le - p);
        p = nl ? nl + 1 : end;
        if (ll >= sizeof(line)) {
            snprintf(err, errlen, "line %d: too long", lineno);
            rc = WARD_EPARSE;
            break;
        }
        memcpy(line, le - ll, ll);
        line[ll] = '\0';
        char *hash = strchr(line, '#');
        if (hash) *hash = '\0';
        char *save = NULL, *addr = strtok_r(line, " \t\r", &save);
        if (addr == NULL) continue;
        char *id = strtok_r(NULL, " \t\r", &save);
        if (id == NULL || strtok_r(NULL, " \t\r", &save) != NULL) {
            snprintf(err, errlen, "line %d: expected 'IP[:PORT] spiffe://TD/PATH'", lineno);
            rc = WARD_EPARSE;
            break;
        }
        ward_addr_t a;
        const char *why = NULL;
        char buf[80];
        /* A bare IP gets port 0 (any port) for the parser. */
        if (ward_addr_parse(addr, strlen(addr), 0, &a, &why) < 0) {
            int v6 = strchr(addr, ':') != NULL;
            snprintf(buf, sizeof(buf), v6 ? "[%s]:1" : "%s:1", addr);
            if (strlen(addr) > 64 || ward_addr_parse(buf, strlen(buf), 0, &a, &why) < 0) {
                snprintf(err, errlen, "line %d: '%s' is not IP or IP:PORT", lineno, addr);
                rc = WARD_EPARSE;
                break;
            }
            if (a.ss.ss_family == AF_INET)
                ((struct sockaddr_in *)&a.ss)->sin_port = 0;
            else
                ((struct sockaddr_in6 *)&a.ss)->sin6_port = 0;
        }
        if (ward_spiffe_id_parse(id, strlen(id), NULL, &why) < 0) {
            snprintf(err, errlen, "line %d: '%s' is not a SPIFFE id: %s", lineno, id, why);
            rc = WARD_EPARSE;
            break;
        }
        if (n == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            ward_peer_entry_t *ne = ward_realloc(e, ncap * sizeof(*e));
            if (ne == NULL) {
                rc = WARD_ENOMEM;
                break;
            }
            e = ne;
            cap = ncap;
        }
        ward__key((const struct sockaddr *)&a.ss, e[n].ip, &e[n].port);
        e[n].id = ward_strdup(id);
        if (e[n].id == NULL) {
            rc = WARD_ENOMEM;
            break;
        }
        n++;
    }
    if (rc == 0 && n > 0) {
        qsort(e, n, sizeof(*e), ward__cmp);
        for (size_t i = 1; i < n; i++)
            if (ward__cmp(&e[i - 1], &e[i]) == 0 && strcmp(e[i - 1].id, e[i].id) != 0) {
                snprintf(err, errlen, "two different identities for the same destination (%s, %s)",
                         e[i - 1].id, e[i].id);
                rc = WARD_EPARSE;
                break;
            }
    }
    if (rc < 0) {
        if (rc == WARD_ENOMEM) snprintf(err, errlen, "out of memory");
        ward_peers_free_entries(e, n);
        return rc;
    }
    *out = e;
    *count = n;
    return 0;
}

const char *ward_peers_find(const ward_peer_entry_t *e, size_t count, const struct sockaddr *dst)
{
    ward_peer_entry_t k;
    if (count == 0 || ward__key(dst, k.ip, &k.port) < 0) return NULL;
    uint16_t port = k.port;
    /* An entry with the port first, then the address alone. */
    for (int pass = 0; pass < 2; pass++) {
        k.port = pass == 0 ? port : 0;
        const ward_peer_entry_t *f = bsearch(&k, e, count, sizeof(*e), ward__cmp);
        if (f != NULL) return f->id;
    }
    return NULL;
}

/* Loads the file; 1 when unchanged (no force), 0 when swapped in, < 0 with err set. */
static int ward__load(ward_peers_t *p, int force, char *err, size_t errlen)
{
    struct stat st;
    if (stat(p->file, &st) != 0) {
        snprintf(err, errlen, "%s: %s", p->file, strerror(errno));
        return -errno;
    }
    if (!force && st.st_mtim.tv_sec == p->seen.st_mtim.tv_sec &&
        st.st_mtim.tv_nsec == p->seen.st_mtim.tv_nsec && st.st_size == p->seen.st_size &&
        st.st_ino == p->seen.st_ino)
        return 1;
    p->seen = st;
    if (st.st_size > WARD_PEERS_MAX_FILE) {
        snprintf(err, errlen, "%s: larger than %d bytes", p->file, WARD_PEERS_MAX_FILE);
        return WARD_ETOOLONG;
    }
    FILE *f = fopen(p->file, "rb");
    if (f == NULL) {
        snprintf(err, errlen, "%s: %s", p->file, strerror(errno));
        return -errno;
    }
    char *text = ward_malloc((size_t)st.st_size + 1);
    size_t n = text ? fread(text, 1, (size_t)st.st_size, f) : 0;
    fclose(f);
    if (text == NULL) {
        snprintf(err, errlen, "out of memory");
        return WARD_ENOMEM;
    }
    ward_peer_entry_t *e = NULL;
    size_t count = 0;
    char why[256];
    int rc = ward_peers_parse(text, n, &e, &count, why, sizeof(why));
    ward_free(text);
    if (rc < 0) {
        snprintf(err, errlen, "%s: %s", p->file, why);
        return rc;
    }
    pthread_mutex_lock(&p->mu);
    ward_peer_entry_t *old = p->entries;
    size_t oldn = p->count;
    p->entries = e;
    p->count = count;
    pthread_mutex_unlock(&p->mu);
    ward_peers_free_entries(old, oldn);
    return 0;
}

int ward_peers_init(ward_peers_t *p, const char *file, char *err, size_t errlen)
{
    memset(p, 0, sizeof(*p));
    pthread_mutex_init(&p->mu, NULL);
    p->file = file;
    if (file == NULL) return 0;
    int rc = ward__load(p, 1, err, errlen);
    return rc < 0 ? rc : 0;
}

void ward_peers_check(ward_peers_t *p, int force)
{
    char err[512];
    if (p->file == NULL) return;
    int rc = ward__load(p, force, err, sizeof(err));
    if (rc == 1) return;
    if (rc == 0) {
        p->reloads_ok++;
        ward_log_msg(WARD_LOG_INFO, "peers_loaded", "%zu peer entries from %s", ward_peers_count(p),
                     p->file);
        return;
    }
    p->reloads_failed++;
    ward_log_msg(WARD_LOG_ERROR, "peers_reload_failed", "%s; keeping the previous directory", err);
}

static void ward__on_timer(uv_timer_t *t)
{
    ward_peers_check(t->data, 0);
}

int ward_peers_watch(ward_peers_t *p, uv_loop_t *loop, uint64_t interval_ms)
{
    if (p->file == NULL || interval_ms == 0) return 0;
    int rc = uv_timer_init(loop, &p->timer);
    if (rc < 0) return rc;
    p->timer.data = p;
    p->watching = 1;
    return uv_timer_start(&p->timer, ward__on_timer, interval_ms, interval_ms);
}

void ward_peers_stop(ward_peers_t *p)
{
    if (p->watching) uv_close((uv_handle_t *)&p->timer, NULL);
    p->watching = 0;
}

void ward_peers_destroy(ward_peers_t *p)
{
    ward_peers_free_entries(p->agent_entries, p->agent_count);
    p->agent_entries = NULL;
    p->agent_count = 0;
    ward_peers_free_entries(p->entries, p->count);
    p->entries = NULL;
    p->count = 0;
    pthread_mutex_destroy(&p->mu);
}

char *ward_peers_lookup(ward_peers_t *p, const struct sockaddr *dst)
{
    pthread_mutex_lock(&p->mu);
    const char *id = ward_peers_find(p->entries, p->count, dst);
    if (id == NULL) id = ward_peers_find(p->agent_entries, p->agent_count, dst);
    char *copy = id ? ward_strdup(id) : NULL;
    pthread_mutex_unlock(&p->mu);
    return copy;
}

size_t ward_peers_count(ward_peers_t *p)
{
    pthread_mutex_lock(&p->mu);
    size_t n = p->count + p->agent_count;
    pthread_mutex_unlock(&p->mu);
    return n;
}

int ward_peers_set_agent(ward_peers_t *p, const char *const *addrs, const char *const *ids,
                         size_t n, unsigned long long version, char *err, size_t errlen)
{
    size_t len = 1;
    for (size_t i = 0; i < n; i++)
        len += strlen(addrs[i] ? addrs[i] : "") + strlen(ids[i] ? ids[i] : "") + 2;
    char *text = ward_malloc(len);
    if (text == NULL) return WARD_ENOMEM;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        /* One entry per line: an embedded newline or space would split it and fail to parse. */
        off += (size_t)snprintf(text + off, len - off, "%s %s\n", addrs[i] ? addrs[i] : "",
                                ids[i] ? ids[i] : "");
    }
    ward_peer_entry_t *e = NULL;
    size_t count = 0;
    int rc = ward_peers_parse(text, off, &e, &count, err, errlen);
    ward_free(text);
    if (rc < 0) return rc;
    pthread_mutex_lock(&p->mu);
    ward_peer_entry_t *old = p->agent_entries;
    size_t oldn = p->agent_count;
    p->agent_entries = e;
    p->agent_count = count;
    p->agent_version = version;
    pthread_mutex_unlock(&p->mu);
    ward_peers_free_entries(old, oldn);
    return 0;
}

static int ward__entries_json(ward_strbuf_t *o, const ward_peer_entry_t *e, size_t n)
{
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        char ip[INET6_ADDRSTRLEN];
        static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(e[i].ip, mapped, 12) == 0)
            inet_ntop(AF_INET, e[i].ip + 12, ip, sizeof(ip));
        else
            inet_ntop(AF_INET6, e[i].ip, ip, sizeof(ip));
        rc |=
            ward_strbuf_printf(o, "%s{\"address\":\"%s\",\"port\":%u,\"spiffe_id\":", i ? "," : "",
                               ip, (unsigned)e[i].port);
        rc |= ward_strbuf_json_str(o, e[i].id);
        rc |= ward_strbuf_printf(o, "}");
    }
    return rc;
}

int ward_peers_json(ward_peers_t *p, ward_strbuf_t *o)
{
    pthread_mutex_lock(&p->mu);
    int rc = ward_strbuf_printf(o, "{\"file\":");
    rc |= p->file ? ward_strbuf_json_str(o, p->file) : ward_strbuf_printf(o, "null");
    rc |= ward_strbuf_printf(o, ",\"file_peers\":[");
    rc |= ward__entries_json(o, p->entries, p->count);
    rc |= ward_strbuf_printf(o, "],\"agent_version\":%llu,\"agent_peers\":[", p->agent_version);
    rc |= ward__entries_json(o, p->agent_entries, p->agent_count);
    rc |= ward_strbuf_printf(o, "]}\n");
    pthread_mutex_unlock(&p->mu);
    return rc ? WARD_ENOMEM : 0;
}
