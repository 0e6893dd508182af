/* authz_bench.c — ward-authz-bench: decisions per second of the compiled policy matcher
 * (lib/authz.c) on synthetic PolicySnapshots of 10, 1000 and 10000 rules, against the target of a
 * median under 200 ns per decision at 10000 rules.
 *
 * The snapshot is what one workload could be sent: policies of up to 10 rules, one in five DENY
 * (admin paths), one in twenty AUDIT, the rest ALLOW, callers spread over rules/50 namespaces of 50
 * service accounts. ALLOW rules name their callers by exact ids (58 %), id prefixes such as
 * "spiffe://cluster.local/ns/ns7/" or ".../sa/svc3-" then '*' (16 %), namespaces (18 %) or, for
 * databases, exact ids on a TCP port (8 %); one in a thousand names no caller or "*". They list a
 * port, methods and path prefixes; 18 % add a header, source.ip or time.hour condition. The
 * snapshot is built as protobuf structs, packed and compiled with ward_authz_compile_packed as the
 * proxy does (the compile time is printed too).
 *
 * The 4096 requests, cycled, are drawn from the rules, so that each is known to be allowed or
 * denied: exact-id hits on rules from the middle half of the set, wildcard and namespace hits,
 * TCP connections, DENY hits, and 20 % misses (unknown callers, known callers on unknown paths).
 * Every decision is checked once against that expectation before timing; a mismatch is an error
 * (exit 1). Callers are equally likely, so most decisions find the matcher's data out of cache:
 * a pessimistic mix for a sidecar, whose traffic usually comes from a few callers.
 *
 * Timing: batches of WARD_BENCH_BATCH decisions, each timed with clock_gettime(CLOCK_MONOTONIC);
 * the line per size gives decisions/s over all batches, the median batch's ns/decision and the
 * 99th percentile batch's ns/decision. Exit status: 0 (PASS or MISS), 1 error or a MISS with
 * --strict, 2 usage. */
#include <getopt.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "ward/authz.h"
#include "ward/err.h"

#define WARD_BENCH_BATCH    128  /* decisions per timed batch */
#define WARD_BENCH_REQUESTS 4096 /* distinct requests, cycled (a power of two) */
#define WARD_BENCH_TARGET   200  /* ns, median, at the largest size */
#define WARD_BENCH_TD       "spiffe://cluster.local"
#define WARD_BENCH_SA       50 /* service accounts per namespace */

/* ---- a bump arena for the protobuf structs and strings of one snapshot ---------------------- */

typedef struct ward_bench_chunk {
    struct ward_bench_chunk *next;
    size_t used, cap;
    max_align_t data[];
} ward_bench_chunk_t;

static ward_bench_chunk_t *ward_bench_arena;

static void *ward_bench_alloc(size_t n)
{
    n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
    ward_bench_chunk_t *c = ward_bench_arena;
    if (c == NULL || c->cap - c->used < n) {
        size_t cap = n > (1u << 20) ? n : (1u << 20);
        c = malloc(sizeof(*c) + cap);
        if (c == NULL) {
            fprintf(stderr, "ward-authz-bench: out of memory\n");
            exit(1);
        }
        c->next = ward_bench_arena;
        c->used = 0;
        c->cap = cap;
        ward_bench_arena = c;
    }
    void *p = (char *)c->data + c->used;
    c->used += n;
    memset(p, 0, n);
    return p;
}

static void ward_bench_arena_free(void)
{
    while (ward_bench_arena != NULL) {
        ward_bench_chunk_t *next = ward_bench_arena->next;
        free(ward_bench_arena);
        ward_bench_arena = next;
    }
}

__attribute__((format(printf, 1, 2))) static char *ward_bench_str(const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    char *s = ward_bench_alloc(strlen(buf) + 1);
    strcpy(s, buf);
    return s;
}

static char **ward_bench_strv(size_t n)
{
    return ward_bench_alloc(n * sizeof(char *));
}

/* ---- deterministic randomness --------------------------------------------------------------- */

static uint64_t ward_bench_seed = 0x2545f4914f6cdd1dULL;

static uint32_t ward_bench_rnd(uint32_t n)
{
    ward_bench_seed ^= ward_bench_seed << 13;
    ward_bench_seed ^= ward_bench_seed >> 7;
    ward_bench_seed ^= ward_bench_seed << 17;
    return (uint32_t)((ward_bench_seed >> 11) % n);
}

/* ---- the synthetic snapshot ------------------------------------------------------------------ */

typedef enum {
    WARD_BENCH_EXACT,
    WARD_BENCH_PREFIX,
    WARD_BENCH_NS,
    WARD_BENCH_TCP,
    WARD_BENCH_ANY,
    WARD_BENCH_DENY,
    WARD_BENCH_AUDIT,
    WARD_BENCH_KINDS
} ward_bench_kind_t;

/* A request that rule matches (and that nothing denies, for ALLOW rules). */
typedef struct {
    ward_bench_kind_t kind;
    uint32_t ordinal;
    char peer[128];
    const char *method; /* NULL: TCP */
    char path[64];
    uint16_t port;
    const char *tenant; /* x-tenant value to send, or NULL */
    int source_octet;   /* source 10.<octet>.1.2, or -1 for 192.0.2.1 */
} ward_bench_tmpl_t;

typedef struct {
    size_t rules;
    size_t policies;
    size_t namespaces;
    Ward__V1__PolicySnapshot snap;
    ward_bench_tmpl_t *tmpl; /* one per rule */
} ward_bench_set_t;

static char *ward_bench_id(size_t ns, size_t sa)
{
    return ward_bench_str(WARD_BENCH_TD "/ns/ns%zu/sa/svc%zu", ns, sa);
}

static Ward__V1__Source **ward_bench_from_ids(char **ids, size_t n)
{
    Ward__V1__Source **v = ward_bench_alloc(sizeof(*v));
    v[0] = ward_bench_alloc(sizeof(**v));
    ward__v1__source__init(v[0]);
    v[0]->identities = ids;
    v[0]->n_identities = n;
    return v;
}

static Ward__V1__Operation **ward_bench_to(uint32_t port, const char *m1, const char *m2, char *p1,
                                           char *p2)
{
    Ward__V1__Operation **v = ward_bench_alloc(sizeof(*v)), *o;
    v[0] = o = ward_bench_alloc(sizeof(*o));
    ward__v1__operation__init(o);
    if (port) {
        o->ports = ward_bench_alloc(sizeof(uint32_t));
        o->ports[0] = port;
        o->n_ports = 1;
    }
    if (m1) {
        o->methods = ward_bench_strv(2);
        o->methods[o->n_methods++] = (char *)m1;
        if (m2) o->methods[o->n_methods++] = (char *)m2;
    }
    if (p1) {
        o->paths = ward_bench_strv(2);
        o->paths[o->n_paths++] = p1;
        if (p2) o->paths[o->n_paths++] = p2;
    }
    return v;
}

static Ward__V1__Condition *ward_bench_cond(const char *key, char *value)
{
    Ward__V1__Condition *c = ward_bench_alloc(sizeof(*c));
    ward__v1__condition__init(c);
    c->key = (char *)key;
    c->values = ward_bench_strv(1);
    c->values[0] = value;
    c->n_values = 1;
    return c;
}

/* Rule i (ordinal) of a policy with the given action; fills its template. */
static Ward__V1__Rule *ward_bench_rule(ward_bench_set_t *s, size_t i, Ward__V1__Action action,
                                       ward_bench_tmpl_t *t)
{
    Ward__V1__Rule *r = ward_bench_alloc(sizeof(*r));
    ward__v1__rule__init(r);
    size_t ns = ward_bench_rnd((uint32_t)s->namespaces), sa = ward_bench_rnd(WARD_BENCH_SA);
    uint32_t roll = ward_bench_rnd(100);
    t->ordinal = (uint32_t)i;
    t->source_octet = -1;
    t->port = 8080;

    if (action == WARD__V1__ACTION__ACTION_DENY || action == WARD__V1__ACTION__ACTION_AUDIT) {
        int deny = action == WARD__V1__ACTION__ACTION_DENY;
        t->kind = deny ? WARD_BENCH_DENY : WARD_BENCH_AUDIT;
        char **ids = ward_bench_strv(1);
        if (roll < 60) {
            ids[0] = ward_bench_id(ns, sa);
            r->from = ward_bench_from_ids(ids, 1);
            snprintf(t->peer, sizeof(t->peer), "%s", ids[0]);
        } else if (roll < 80) {
            ids[0] = ward_bench_str(WARD_BENCH_TD "/ns/ns%zu/sa/svc%zu-*", ns, sa);
            r->from = ward_bench_from_ids(ids, 1);
            snprintf(t->peer, sizeof(t->peer), WARD_BENCH_TD "/ns/ns%zu/sa/svc%zu-canary", ns, sa);
        } else {
            r->from = ward_bench_from_ids(NULL, 0);
            r->from[0]->namespaces = ward_bench_strv(1);
            r->from[0]->namespaces[0] = ward_bench_str("ns%zu", ns);
            r->from[0]->n_namespaces = 1;
            snprintf(t->peer, sizeof(t->peer), WARD_BENCH_TD "/ns/ns%zu/sa/any", ns);
        }
        r->n_from = 1;
        if (deny) {
            r->to = ward_bench_to(0, NULL, NULL, "/admin/*", NULL);
            t->method = "GET";
            snprintf(t->path, sizeof(t->path), "/admin/users");
        } else {
            r->to = ward_bench_to(0, "POST", NULL, "/api/v1/audit/*", NULL);
            t->method = "POST";
            snprintf(t->path, sizeof(t->path), "/api/v1/audit/x");
        }
        r->n_to = 1;
        return r;
    }

    /* ALLOW: the first rules cycle through every kind, so that small sets have each. */
    ward_bench_kind_t kind;
    if (i < 5)
        kind = (ward_bench_kind_t)i;
    else if (i % 1000 == 507)
        kind = WARD_BENCH_ANY;
    else
        kind = roll < 58   ? WARD_BENCH_EXACT
               : roll < 74 ? WARD_BENCH_PREFIX
               : roll < 92 ? WARD_BENCH_NS
                           : WARD_BENCH_TCP;
    t->kind = kind;
    t->method = ward_bench_rnd(3) == 0 ? "POST" : "GET";
    snprintf(t->path, sizeof(t->path), "/api/v1/r%zu/items/7", i);
    char *prefix = ward_bench_str("/api/v1/r%zu/*", i);
    char *health = ward_bench_str("/healthz/r%zu", i);
    switch (kind) {
    case WARD_BENCH_EXACT: {
        size_t n = 1 + ward_bench_rnd(2);
        char **ids = ward_bench_strv(n);
        ids[0] = ward_bench_id(ns, sa);
        if (n == 2) ids[1] = ward_bench_id(ns, ward_bench_rnd(WARD_BENCH_SA));
        r->from = ward_bench_from_ids(ids, n);
        snprintf(t->peer, sizeof(t->peer), "%s", ids[0]);
        break;
    }
    case WARD_BENCH_PREFIX: {
        char **ids = ward_bench_strv(1);
        if (ward_bench_rnd(2)) {
            ids[0] = ward_bench_str(WARD_BENCH_TD "/ns/ns%zu/*", ns);
            snprintf(t->peer, sizeof(t->peer), WARD_BENCH_TD "/ns/ns%zu/sa/job%zu", ns, i);
        } else {
            ids[0] = ward_bench_str(WARD_BENCH_TD "/ns/ns%zu/sa/svc%zu-*", ns, sa);
            snprintf(t->peer, sizeof(t->peer), WARD_BENCH_TD "/ns/ns%zu/sa/svc%zu-%zu", ns, sa, i);
        }
        r->from = ward_bench_from_ids(ids, 1);
        break;
    }
    case WARD_BENCH_NS:
        r->from = ward_bench_from_ids(NULL, 0);
        r->from[0]->namespaces = ward_bench_strv(1);
        r->from[0]->namespaces[0] = ward_bench_str("ns%zu", ns);
        r->from[0]->n_namespaces = 1;
        snprintf(t->peer, sizeof(t->peer), WARD_BENCH_TD "/ns/ns%zu/sa/svc%zu", ns, sa);
        break;
    case WARD_BENCH_TCP: {
        char **ids = ward_bench_strv(1);
        ids[0] = ward_bench_str(WARD_BENCH_TD "/ns/db%zu/sa/client%zu", ns, sa);
        r->from = ward_bench_from_ids(ids, 1);
        r->n_from = 1;
        r->to = ward_bench_to(5432, NULL, NULL, NULL, NULL);
        r->n_to = 1;
        snprintf(t->peer, sizeof(t->peer), "%s", ids[0]);
        t->method = NULL;
        t->port = 5432;
        return r;
    }
    default: /* ANY: no `from`, or "*" */
        if (ward_bench_rnd(2)) {
            char **ids = ward_bench_strv(1);
            ids[0] = "*";
            r->from = ward_bench_from_ids(ids, 1);
        }
        snprintf(t->peer, sizeof(t->peer), WARD_BENCH_TD "/ns/edge/sa/gateway");
        snprintf(t->path, sizeof(t->path), "/public/r%zu/index.html", i);
        prefix = ward_bench_str("/public/r%zu/*", i);
        break;
    }
    r->n_from = r->from ? 1 : 0;
    r->to = t->method[0] == 'P' ? ward_bench_to(8080, "POST", NULL, prefix, NULL)
                                : ward_bench_to(8080, "GET", "HEAD", prefix, health);
    r->n_to = 1;
    uint32_t w = ward_bench_rnd(100);
    if (w < 18) {
        r->when = ward_bench_alloc(2 * sizeof(*r->when));
        if (w < 10) {
            t->tenant = ward_bench_str("tenant-%zu", i % 17);
            r->when[r->n_when++] = ward_bench_cond("request.headers[x-tenant]", (char *)t->tenant);
        } else if (w < 15) {
            t->source_octet = (int)(i % 250);
            r->when[r->n_when++] =
                ward_bench_cond("source.ip", ward_bench_str("10.%d.0.0/16", t->source_octet));
        } else {
            r->when[r->n_when++] = ward_bench_cond("time.hour", "8-18");
        }
    }
    return r;
}

static void ward_bench_build(ward_bench_set_t *s, size_t rules)
{
    size_t per = rules / 5 > 10 ? 10 : (rules / 5 ? rules / 5 : 1);
    s->rules = rules;
    s->policies = (rules + per - 1) / per;
    s->namespaces = rules / 50 ? rules / 50 : 1;
    s->tmpl = calloc(rules, sizeof(*s->tmpl));
    if (s->tmpl == NULL) exit(1);
    ward__v1__policy_snapshot__init(&s->snap);
    s->snap.version = rules;
    s->snap.policies = ward_bench_alloc(s->policies * sizeof(*s->snap.policies));
    size_t ord = 0;
    for (size_t p = 0; p < s->policies; p++) {
        Ward__V1__AuthorizationPolicy *pb = ward_bench_alloc(sizeof(*pb));
        ward__v1__authorization_policy__init(pb);
        /* Zero-padded names: (namespace, name) order is creation order, so ordinals match. */
        pb->name = ward_bench_str("policy-%06zu", p);
        pb->namespace_ = "bench";
        pb->action = p % 5 == 1    ? WARD__V1__ACTION__ACTION_DENY
                     : p % 20 == 3 ? WARD__V1__ACTION__ACTION_AUDIT
                                   : WARD__V1__ACTION__ACTION_ALLOW;
        size_t n = rules - ord < per ? rules - ord : per;
        pb->rules = ward_bench_alloc(n * sizeof(*pb->rules));
        for (size_t r = 0; r < n; r++, ord++)
            pb->rules[pb->n_rules++] = ward_bench_rule(s, ord, pb->action, &s->tmpl[ord]);
        s->snap.policies[s->snap.n_policies++] = pb;
    }
}

/* ---- requests ------------------------------------------------------------------------------- */

/* Kept compact, as a request the proxy has just parsed is in cache: its strings sit in one pool,
 * next to each other; the source addresses and x-tenant values are shared. */
typedef struct {
    ward_authz_request_t req; /* header_ctx: the x-tenant value, or NULL */
    ward_authz_decision_t want;
} ward_bench_req_t;

/* 10.<i>.1.2 for the source.ip conditions (10.<i>.0.0/16), and 192.0.2.1 at [250]. */
static struct sockaddr_in ward_bench_sources[251];

static void ward_bench_sources_init(void)
{
    for (int i = 0; i < 251; i++) {
        char a[32];
        snprintf(a, sizeof(a), i < 250 ? "10.%d.1.2" : "192.0.2.1", i);
        ward_bench_sources[i].sin_family = AF_INET;
        inet_pton(AF_INET, a, &ward_bench_sources[i].sin_addr);
    }
}

static char ward_bench_pool[WARD_BENCH_REQUESTS * 128];
static size_t ward_bench_pool_used;

static const char *ward_bench_keep(const char *s)
{
    size_t n = strlen(s) + 1;
    if (ward_bench_pool_used + n > sizeof(ward_bench_pool)) ward_bench_pool_used = 0;
    char *p = ward_bench_pool + ward_bench_pool_used;
    memcpy(p, s, n);
    ward_bench_pool_used += n;
    return p;
}

static const char *ward_bench_header(void *ctx, const char *name, size_t name_len, size_t index,
                                     size_t *value_len)
{
    const char *tenant = ctx;
    if (index == 0 && tenant && name_len == 8 && memcmp(name, "x-tenant", 8) == 0) {
        *value_len = strlen(tenant);
        return tenant;
    }
    if (index == 0 && name_len == 10 && memcmp(name, "user-agent", 10) == 0) {
        *value_len = 4;
        return "curl";
    }
    return NULL;
}

/* A template of the given kind, from the middle half of the set when there is one. */
static const ward_bench_tmpl_t *ward_bench_pick(const ward_bench_set_t *s, ward_bench_kind_t kind)
{
    for (int tries = 0; tries < 4096; tries++) {
        size_t i = s->rules >= 8 ? s->rules / 4 + ward_bench_rnd((uint32_t)(s->rules / 2))
                                 : ward_bench_rnd((uint32_t)s->rules);
        if (s->tmpl[i].kind == kind) return &s->tmpl[i];
    }
    for (size_t i = 0; i < s->rules; i++)
        if (s->tmpl[i].kind == kind) return &s->tmpl[i];
    return NULL;
}

static void ward_bench_request(const ward_bench_set_t *s, ward_bench_req_t *q)
{
    static const ward_bench_kind_t hits[] = {
        WARD_BENCH_EXACT, WARD_BENCH_EXACT,  WARD_BENCH_EXACT,  WARD_BENCH_EXACT,
        WARD_BENCH_EXACT, WARD_BENCH_EXACT,  WARD_BENCH_EXACT,  WARD_BENCH_EXACT,
        WARD_BENCH_EXACT, WARD_BENCH_PREFIX, WARD_BENCH_PREFIX, WARD_BENCH_PREFIX,
        WARD_BENCH_NS,    WARD_BENCH_NS,     WARD_BENCH_TCP,    WARD_BENCH_DENY};
    uint32_t roll = ward_bench_rnd(100);
    memset(q, 0, sizeof(*q));
    q->req.hour = 12;
    q->req.header = ward_bench_header;
    q->req.source = (const struct sockaddr *)&ward_bench_sources[250];

    const ward_bench_tmpl_t *t = NULL;
    char peer[128], path[64];
    if (roll >= 20) {
        t = ward_bench_pick(s, hits[ward_bench_rnd(sizeof(hits) / sizeof(hits[0]))]);
        if (t == NULL) t = ward_bench_pick(s, WARD_BENCH_EXACT);
    }
    if (t != NULL) {
        snprintf(peer, sizeof(peer), "%s", t->peer);
        snprintf(path, sizeof(path), "%s", t->path);
        q->req.method = t->method;
        q->req.port = t->port;
        q->req.header_ctx = (void *)t->tenant;
        if (t->source_octet >= 0)
            q->req.source = (const struct sockaddr *)&ward_bench_sources[t->source_octet];
        q->want = t->kind == WARD_BENCH_DENY ? WARD_AUTHZ_DENY : WARD_AUTHZ_ALLOW;
    } else {
        /* Misses: an unknown caller, or a known one on a path no rule lists. */
        t = ward_bench_pick(s, WARD_BENCH_EXACT);
        if (roll < 10 || t == NULL)
            snprintf(peer, sizeof(peer), WARD_BENCH_TD "/ns/ghost%u/sa/x", roll);
        else
            snprintf(peer, sizeof(peer), "%s", t->peer);
        snprintf(path, sizeof(path), "/api/v2/unknown/%u", roll);
        q->req.method = "GET";
        q->req.port = 8080;
        q->want = WARD_AUTHZ_DENY;
    }
    q->req.peer_id = ward_bench_keep(peer);
    if (q->req.method != NULL) {
        q->req.path = ward_bench_keep(path);
        q->req.path_len = strlen(path);
    }
}

/* ---- measurement ---------------------------------------------------------------------------- */

static uint64_t ward_bench_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static int ward_bench_cmp(const void *x, const void *y)
{
    double a = *(const double *)x, b = *(const double *)y;
    return (a > b) - (a < b);
}

typedef struct {
    double median, p99, per_sec, compile_ms;
} ward_bench_result_t;

static int ward_bench_size(size_t rules, size_t batches, ward_bench_result_t *out)
{
    ward_bench_set_t s;
    memset(&s, 0, sizeof(s));
    ward_bench_build(&s, rules);
    size_t len = ward__v1__policy_snapshot__get_packed_size(&s.snap);
    uint8_t *packed = malloc(len ? len : 1);
    if (packed == NULL) return WARD_ENOMEM;
    ward__v1__policy_snapshot__pack(&s.snap, packed);

    ward_authz_t *a = NULL;
    const char *why = NULL;
    uint64_t t0 = ward_bench_now();
    int rc = ward_authz_compile_packed(packed, len, &a, &why);
    out->compile_ms = (double)(ward_bench_now() - t0) / 1e6;
    free(packed);
    if (rc < 0) {
        fprintf(stderr, "ward-authz-bench: compile (%zu rules): %s%s%s\n", rules, ward_strerror(rc),
                why ? ": " : "", why ? why : "");
        free(s.tmpl);
        ward_bench_arena_free();
        return rc;
    }
    if (ward_authz_rule_count(a) != rules) {
        fprintf(stderr, "ward-authz-bench: compiled %zu rules, built %zu\n",
                ward_authz_rule_count(a), rules);
        rc = WARD_EINVAL;
        goto done;
    }

    static ward_bench_req_t reqs[WARD_BENCH_REQUESTS];
    size_t allowed = 0;
    ward_bench_pool_used = 0;
    for (size_t i = 0; i < WARD_BENCH_REQUESTS; i++) {
        ward_bench_request(&s, &reqs[i]);
        ward_authz_result_t res;
        ward_authz_eval(a, &reqs[i].req, &res);
        if (res.decision != reqs[i].want) {
            fprintf(stderr,
                    "ward-authz-bench: %zu rules: request %zu (%s %s %s) decided %s, want %s\n",
                    rules, i, reqs[i].req.peer_id, reqs[i].req.method ? reqs[i].req.method : "TCP",
                    reqs[i].req.method ? reqs[i].req.path : "", res.reason,
                    reqs[i].want == WARD_AUTHZ_ALLOW ? "ALLOW" : "DENY");
            rc = WARD_EINVAL;
            goto done;
        }
        allowed += res.decision == WARD_AUTHZ_ALLOW;
    }

    double *ns = malloc(batches * sizeof(*ns));
    if (ns == NULL) {
        rc = WARD_ENOMEM;
        goto done;
    }
    volatile unsigned sink = 0;
    uint64_t total = 0;
    size_t next = 0;
    for (size_t b = 0; b < batches + batches / 10; b++) {
        ward_authz_result_t res;
        unsigned acc = 0;
        uint64_t start = ward_bench_now();
        for (size_t k = 0; k < WARD_BENCH_BATCH; k++) {
            ward_authz_eval(a, &reqs[next].req, &res);
            acc += res.decision;
            next = (next + 1) & (WARD_BENCH_REQUESTS - 1);
        }
        uint64_t took = ward_bench_now() - start;
        sink += acc;
        if (b < batches / 10) continue; /* warm-up */
        ns[b - batches / 10] = (double)took / WARD_BENCH_BATCH;
        total += took;
    }
    (void)sink;
    qsort(ns, batches, sizeof(*ns), ward_bench_cmp);
    out->median = ns[batches / 2];
    out->p99 = ns[(size_t)((double)batches * 0.99)];
    out->per_sec = (double)(batches * WARD_BENCH_BATCH) / ((double)total / 1e9);
    free(ns);
    printf("rules=%-6zu policies=%-5zu decisions/s=%-10.0f median_ns=%-7.1f p99_ns=%-7.1f "
           "compile_ms=%-8.2f allowed=%.0f%%\n",
           rules, s.policies, out->per_sec, out->median, out->p99, out->compile_ms,
           100.0 * (double)allowed / WARD_BENCH_REQUESTS);
    fflush(stdout);

done:
    ward_authz_unref(a);
    free(s.tmpl);
    ward_bench_arena_free();
    return rc;
}

static void ward_bench_usage(FILE *out)
{
    fputs(
        "usage: ward-authz-bench [--quick] [--strict] [--sizes N,N,...] [--help]\n"
        "\n"
        "Compiles synthetic policy snapshots (default 10, 1000 and 10000 rules) and times\n"
        "ward_authz_eval on a mix of hits, wildcard and namespace hits, TCP, denials and misses.\n"
        "One line per size: rules, decisions/s, median and p99 ns/decision (over batches of\n"
        "128 decisions), compile time. Then PASS or MISS against the target: a median under\n"
        "200 ns at the largest size.\n"
        "\n"
        "  --quick    a short run (fewer batches), for CI\n"
        "  --strict   exit 1 on a MISS (default: only errors fail)\n"
        "  --sizes    comma-separated rule counts (1..10000000)\n"
        "\n"
        "Exit status: 0 PASS or MISS, 1 error (or MISS with --strict), 2 usage.\n",
        out);
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {{"quick", no_argument, NULL, 'q'},
                                         {"strict", no_argument, NULL, 's'},
                                         {"sizes", required_argument, NULL, 'z'},
                                         {"help", no_argument, NULL, 'h'},
                                         {NULL, 0, NULL, 0}};
    size_t sizes[16] = {10, 1000, 10000}, nsizes = 3, batches = 20000;
    int strict = 0, c;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case 'q':
            batches = 1000;
            break;
        case 's':
            strict = 1;
            break;
        case 'z': {
            nsizes = 0;
            for (char *p = optarg; *p && nsizes < 16;) {
                char *end;
                unsigned long v = strtoul(p, &end, 10);
                if (end == p || v < 1 || v > 10000000 || (*end && *end != ',')) {
                    fprintf(stderr, "ward-authz-bench: --sizes: bad list '%s'\n", optarg);
                    return 2;
                }
                sizes[nsizes++] = v;
                p = *end ? end + 1 : end;
            }
            if (nsizes == 0) {
                fprintf(stderr, "ward-authz-bench: --sizes: empty list\n");
                return 2;
            }
            break;
        }
        case 'h':
            ward_bench_usage(stdout);
            return 0;
        default:
            ward_bench_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ward-authz-bench: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }

    ward_bench_sources_init();
    ward_bench_result_t res, largest = {0};
    size_t largest_rules = 0;
    for (size_t i = 0; i < nsizes; i++) {
        if (ward_bench_size(sizes[i], batches, &res) < 0) return 1;
        if (sizes[i] >= largest_rules) {
            largest_rules = sizes[i];
            largest = res;
        }
    }
    int pass = largest.median < WARD_BENCH_TARGET;
    printf("target: median < %d ns/decision at %zu rules: %s (%.1f ns)\n", WARD_BENCH_TARGET,
           largest_rules, pass ? "PASS" : "MISS", largest.median);
    return pass || !strict ? 0 : 1;
}
