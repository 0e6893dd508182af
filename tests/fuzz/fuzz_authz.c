/* fuzz_authz.c — the policy matcher (lib/authz.c ward_authz_compile_packed, ward_authz_eval): the
 * proxy compiles every PolicySnapshot the agent pushes, and then decides every request with it.
 * The input is one packed ward.v1.PolicySnapshot. A refusal is EPARSE, or EINVAL with a reason.
 * A compiled matcher counts the policies and rules the snapshot holds, and decides a few fixed
 * requests plus requests built from the snapshot's own identities, namespaces, ports, methods,
 * paths and header values (so that rules do match): each decision is repeatable, its reason is one
 * of the header's, consistent with the decision, and names a policy (and a rule of it) exactly when
 * the header says it does. Seeds: corpus/authz/, binary snapshots packed by
 * ward_policy_snapshot_for: tests/policy/ cut for the workloads its policies select (orders,
 * inventory, payments) and for one no policy selects (deny and audit defaults), and one YAML set
 * with every kind of rule the unit tests cover (every-kind). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fuzz.h"
#include "ward/authz.h"
#include "ward/err.h"

#define WARD__REQS 48

typedef struct {
    char peer[256];
    int has_peer;
    uint16_t port;
    const char *method;
    char path[256];
    char hname[64];
    const char *hvalue;
    struct sockaddr_storage source;
    int has_source;
    int hour;
} ward__req_t;

static const char *ward__hdr(void *ctx, const char *name, size_t name_len, size_t index,
                             size_t *value_len)
{
    const ward__req_t *r = ctx;
    if (index > 0 || r->hvalue == NULL || strlen(r->hname) != name_len ||
        memcmp(r->hname, name, name_len) != 0)
        return NULL;
    *value_len = strlen(r->hvalue);
    return r->hvalue;
}

static void ward__source(ward__req_t *r, const char *addr)
{
    memset(&r->source, 0, sizeof(r->source));
    r->has_source = 1;
    if (strchr(addr, ':') != NULL) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&r->source;
        in6->sin6_family = AF_INET6;
        inet_pton(AF_INET6, addr, &in6->sin6_addr);
    } else {
        struct sockaddr_in *in = (struct sockaddr_in *)&r->source;
        in->sin_family = AF_INET;
        inet_pton(AF_INET, addr, &in->sin_addr);
    }
}

/* A path that pattern p matches (or p itself when it is exact). */
static void ward__path_for(const char *p, char *out, size_t cap)
{
    size_t n = strlen(p);
    if (n > 0 && p[0] == '*')
        snprintf(out, cap, "/x%s", p + 1);
    else if (n > 0 && p[n - 1] == '*')
        snprintf(out, cap, "%.*sx", (int)(n - 1), p);
    else
        snprintf(out, cap, "%s", p);
}

/* Requests shaped after rule r; returns how many were added at reqs[*n...]. */
static void ward__from_rule(const Ward__V1__Rule *r, ward__req_t *reqs, size_t *n)
{
    static const char *const sources[] = {"10.1.2.3", "::ffff:198.18.0.9", "2001:db8::1"};
    for (int variant = 0; variant < 2 && *n < WARD__REQS; variant++) {
        ward__req_t *q = &reqs[(*n)++];
        memset(q, 0, sizeof(*q));
        q->hour = variant ? 23 : 9;
        q->port = 8080;
        if (r->n_from > 0 && r->from[0] != NULL) {
            const Ward__V1__Source *s = r->from[0];
            if (s->n_identities > 0 && s->identities[0] != NULL) {
                const char *id = s->identities[0];
                size_t len = strlen(id);
                if (len > 0 && id[len - 1] == '*')
                    snprintf(q->peer, sizeof(q->peer), "%.*sx/y", (int)(len - 1), id);
                else
                    snprintf(q->peer, sizeof(q->peer), "%s", id);
                q->has_peer = 1;
            } else if (s->n_namespaces > 0 && s->namespaces[0] != NULL) {
                snprintf(q->peer, sizeof(q->peer), "spiffe://td/ns/%.64s/sa/a", s->namespaces[0]);
                q->has_peer = 1;
            }
        } else {
            snprintf(q->peer, sizeof(q->peer), "spiffe://td/ns/any/sa/any");
            q->has_peer = variant == 0;
        }
        if (r->n_to > 0 && r->to[0] != NULL) {
            const Ward__V1__Operation *o = r->to[0];
            if (o->n_ports > 0) q->port = (uint16_t)o->ports[0];
            if (o->n_methods > 0 && o->methods[0] != NULL) q->method = o->methods[0];
            if (o->n_paths > 0 && o->paths[0] != NULL)
                ward__path_for(o->paths[0], q->path, sizeof(q->path));
        }
        if (q->method == NULL && (variant == 0 || q->path[0] != '\0')) q->method = "GET";
        if (q->path[0] == '\0') snprintf(q->path, sizeof(q->path), "/");
        for (size_t i = 0; i < r->n_when; i++) {
            const Ward__V1__Condition *c = r->when[i];
            if (c == NULL || c->key == NULL || c->n_values == 0 || c->values[0] == NULL) continue;
            if (strncmp(c->key, "request.headers[", 16) == 0 && strlen(c->key) > 17) {
                snprintf(q->hname, sizeof(q->hname), "%.*s", (int)(strlen(c->key) - 17),
                         c->key + 16);
                q->hvalue = c->values[0];
            }
        }
        ward__source(q, sources[(*n) % 3]);
    }
}

static int ward__known_reason(const char *r)
{
    static const char *const reasons[] = {"denied_by_policy",   "allowed_by_policy",
                                          "no_allow_match",     "mesh_default_deny",
                                          "mesh_default_allow", "mesh_default_audit"};
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++)
        if (r != NULL && strcmp(r, reasons[i]) == 0) return (int)i;
    return -1;
}

/* The most rules of a policy named "ns/name" in the snapshot (names may repeat), or -1. */
static long ward__rules_of(const Ward__V1__PolicySnapshot *s, const char *name)
{
    long most = -1;
    for (size_t i = 0; i < s->n_policies; i++) {
        const Ward__V1__AuthorizationPolicy *p = s->policies[i];
        size_t nl = strlen(p->namespace_);
        if (strncmp(name, p->namespace_, nl) == 0 && name[nl] == '/' &&
            strcmp(name + nl + 1, p->name) == 0 && (long)p->n_rules > most)
            most = (long)p->n_rules;
    }
    return most;
}

static void ward__check(const ward_authz_t *a, const Ward__V1__PolicySnapshot *s, ward__req_t *q)
{
    ward_authz_request_t req = {.peer_id = q->has_peer ? q->peer : NULL,
                                .port = q->port,
                                .method = q->method,
                                .path = q->method ? q->path : NULL,
                                .path_len = q->method ? strlen(q->path) : 0,
                                .source =
                                    q->has_source ? (const struct sockaddr *)&q->source : NULL,
                                .hour = q->hour,
                                .header = ward__hdr,
                                .header_ctx = q};
    ward_authz_result_t r1, r2;
    ward_authz_eval(a, &req, &r1);
    ward_authz_eval(a, &req, &r2);
    WARD_FUZZ_CHECK(r1.decision == r2.decision && r1.reason == r2.reason &&
                    r1.policy == r2.policy && r1.rule == r2.rule &&
                    r1.audit_policy == r2.audit_policy);
    int reason = ward__known_reason(r1.reason);
    WARD_FUZZ_CHECK(reason >= 0);
    WARD_FUZZ_CHECK(r1.decision == WARD_AUTHZ_ALLOW || r1.decision == WARD_AUTHZ_DENY);
    int allow = reason == 1 || reason == 4 || reason == 5;
    WARD_FUZZ_CHECK((r1.decision == WARD_AUTHZ_ALLOW) == allow);
    if (reason == 2) WARD_FUZZ_CHECK(r1.policy == NULL && r1.rule == -1);
    if (reason >= 3) WARD_FUZZ_CHECK(strcmp(r1.policy, "mesh-default") == 0 && r1.rule == -1);
    if (reason <= 1) {
        long rules = ward__rules_of(s, r1.policy);
        WARD_FUZZ_CHECK(r1.rule >= 0 && r1.rule < rules);
    }
    if (r1.audit_policy != NULL) WARD_FUZZ_CHECK(ward__rules_of(s, r1.audit_policy) > 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static ward__req_t reqs[WARD__REQS];
    ward_authz_t *a = NULL;
    const char *why = NULL;
    int rc = ward_authz_compile_packed(data, size, &a, &why);
    if (rc < 0) {
        WARD_FUZZ_CHECK(a == NULL);
        WARD_FUZZ_CHECK(rc == WARD_EPARSE || rc == WARD_ENOMEM || (rc == WARD_EINVAL && why));
        return 0;
    }
    Ward__V1__PolicySnapshot *s = ward__v1__policy_snapshot__unpack(NULL, size, data);
    WARD_FUZZ_CHECK(s != NULL && a != NULL);
    size_t rules = 0;
    for (size_t i = 0; i < s->n_policies; i++)
        rules += s->policies[i]->n_rules;
    WARD_FUZZ_CHECK(ward_authz_version(a) == s->version);
    WARD_FUZZ_CHECK(ward_authz_policy_count(a) == s->n_policies);
    WARD_FUZZ_CHECK(ward_authz_rule_count(a) == rules);
    WARD_FUZZ_CHECK(ward_authz_ref(a) == a);
    ward_authz_unref(a);

    size_t n = 0;
    /* fixed requests: unauthenticated, unknown caller, TCP, no source */
    memset(reqs, 0, 4 * sizeof(reqs[0]));
    snprintf(reqs[1].peer, sizeof(reqs[1].peer), "spiffe://cluster.local/ns/shop/sa/web");
    reqs[1].has_peer = reqs[2].has_peer = 1;
    snprintf(reqs[2].peer, sizeof(reqs[2].peer), "spiffe://cluster.local/ns/ops/sa/x");
    reqs[0].method = reqs[1].method = "GET";
    snprintf(reqs[0].path, sizeof(reqs[0].path), "/");
    snprintf(reqs[1].path, sizeof(reqs[1].path), "/orders/1");
    reqs[0].hour = reqs[3].hour = -1;
    reqs[2].port = 5432;
    ward__source(&reqs[2], "10.0.0.1");
    n = 4;
    for (size_t p = 0; p < s->n_policies && n < WARD__REQS; p++)
        for (size_t r = 0; r < s->policies[p]->n_rules && r < 3 && n < WARD__REQS; r++)
            ward__from_rule(s->policies[p]->rules[r], reqs, &n);
    for (size_t i = 0; i < n; i++)
        ward__check(a, s, &reqs[i]);

    ward__v1__policy_snapshot__free_unpacked(s, NULL);
    ward_authz_unref(a);
    return 0;
}
