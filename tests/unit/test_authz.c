/* test_authz.c — the compiled policy matcher (lib/authz.c). Snapshots are written as YAML and go
 * through the real loader (ward_policy_parse, ward_policy_snapshot_for) and
 * ward_authz_compile_packed, as the proxy receives them. Covered: every rule part allowed and
 * denied, the evaluation order (DENY beats ALLOW, AUDIT recorded, no ALLOW match, the three mesh
 * defaults), first-match order across policies and index lists, exact / prefix-tree / namespace
 * lookups and their overlaps, opaque TCP both ways, source.ip (IPv4, IPv6, mapped), time.hour
 * wrap, repeated headers, unauthenticated callers, refusals of values the loader would not have
 * let through, a randomised cross-check against a naive evaluator written from the header's
 * text, and allocation failure at every allocation of a compile (nothing leaks; eval never
 * allocates). */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "unit.h"
#include "ward/alloc.h"
#include "ward/authz.h"
#include "ward/err.h"
#include "ward/policy.h"

#define TARGET "spiffe://td/ns/shop/sa/orders"
#define WEB    "spiffe://td/ns/shop/sa/web"
#define API    "spiffe://td/ns/shop/sa/api"
#define OPS    "spiffe://td/ns/ops/sa/deployer"
#define DEV    "spiffe://td/ns/dev/sa/web"

#define DOC(name, spec)                                                                            \
    "---\napiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"                                    \
    "metadata: {name: " name ", namespace: shop}\nspec: " spec "\n"

#define DENY_  WARD_AUTHZ_DENY
#define ALLOW_ WARD_AUTHZ_ALLOW

/* ---- helpers -------------------------------------------------------------------------------- */

static ward_authz_t *compile_for(const char *yaml, const char *target, Ward__V1__DefaultAction def)
{
    ward_policy_set_t set;
    ward_policy_error_t err;
    uint8_t *bytes = NULL;
    size_t len = 0;
    ward_authz_t *a = NULL;
    const char *why = NULL;
    ward_policy_set_init(&set);
    set.mesh_default = def;
    int rc = ward_policy_parse(yaml, strlen(yaml), "authz.yaml", &set, &err);
    if (rc != 0) fprintf(stderr, "\n  %d:%d: %s\n", err.line, err.column, err.message);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL_FATAL(ward_policy_snapshot_for(&set, target, 7, &bytes, &len), 0);
    rc = ward_authz_compile_packed(bytes, len, &a, &why);
    if (rc != 0) fprintf(stderr, "\n  compile: %d %s\n", rc, why ? why : "");
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_EQUAL(ward_authz_version(a), 7);
    ward_free(bytes);
    ward_policy_set_free(&set);
    return a;
}

static ward_authz_t *compile(const char *yaml)
{
    return compile_for(yaml, TARGET, WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_DENY);
}

/* A request as the tests write it: headers are "name: value" strings. */
typedef struct {
    const char *peer;
    uint16_t port;
    const char *method; /* NULL = opaque TCP */
    const char *path;
    const char *source; /* an address, or NULL */
    int hour;
    const char *headers[6];
} rq_t;

static rq_t http(const char *peer, const char *method, const char *path)
{
    rq_t r = {.peer = peer, .port = 8080, .method = method, .path = path, .hour = -1};
    return r;
}

static rq_t tcp(const char *peer, uint16_t port)
{
    rq_t r = {.peer = peer, .port = port, .hour = -1};
    return r;
}

static int header_name_not_lowercase;

static const char *header_cb(void *ctx, const char *name, size_t name_len, size_t index,
                             size_t *value_len)
{
    const rq_t *r = ctx;
    for (size_t i = 0; i < name_len; i++)
        if (name[i] >= 'A' && name[i] <= 'Z') header_name_not_lowercase = 1;
    for (size_t i = 0; i < 6 && r->headers[i]; i++) {
        const char *h = r->headers[i], *colon = strchr(h, ':');
        if ((size_t)(colon - h) != name_len || strncasecmp(h, name, name_len) != 0) continue;
        if (index-- > 0) continue;
        const char *v = colon + 1;
        while (*v == ' ')
            v++;
        *value_len = strlen(v);
        return v;
    }
    return NULL;
}

static socklen_t make_source(const char *s, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (strchr(s, ':') != NULL) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
        in6->sin6_family = AF_INET6;
        CU_ASSERT_EQUAL_FATAL(inet_pton(AF_INET6, s, &in6->sin6_addr), 1);
        return sizeof(*in6);
    }
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    in->sin_family = AF_INET;
    CU_ASSERT_EQUAL_FATAL(inet_pton(AF_INET, s, &in->sin_addr), 1);
    return sizeof(*in);
}

static ward_authz_result_t eval(const ward_authz_t *a, const rq_t *r)
{
    struct sockaddr_storage ss;
    ward_authz_request_t req = {.peer_id = r->peer,
                                .port = r->port,
                                .method = r->method,
                                .path = r->path,
                                .path_len = r->path ? strlen(r->path) : 0,
                                .hour = r->hour,
                                .header = header_cb,
                                .header_ctx = (void *)r};
    if (r->source != NULL) {
        make_source(r->source, &ss);
        req.source = (const struct sockaddr *)&ss;
    }
    ward_authz_result_t res;
    memset(&res, 0x5a, sizeof(res));
    ward_authz_eval(a, &req, &res);
    return res;
}

static int same(const char *x, const char *y)
{
    return (x == NULL && y == NULL) || (x != NULL && y != NULL && strcmp(x, y) == 0);
}

#define EXPECT(a, r, dec, reason, policy, rule, audit)                                             \
    expect_at(__LINE__, a, r, dec, reason, policy, rule, audit)

static void expect_at(int line, const ward_authz_t *a, const rq_t *r, ward_authz_decision_t dec,
                      const char *reason, const char *policy, int rule, const char *audit)
{
    ward_authz_result_t res = eval(a, r);
    int ok = res.decision == dec && same(res.reason, reason) && same(res.policy, policy) &&
             res.rule == rule && same(res.audit_policy, audit);
    if (!ok)
        fprintf(stderr,
                "\n  line %d: want %s %s %s rule %d audit %s\n"
                "           got  %s %s %s rule %d audit %s\n",
                line, dec == ALLOW_ ? "ALLOW" : "DENY", reason, policy ? policy : "-", rule,
                audit ? audit : "-", res.decision == ALLOW_ ? "ALLOW" : "DENY", res.reason,
                res.policy ? res.policy : "-", res.rule, res.audit_policy ? res.audit_policy : "-");
    CU_ASSERT(ok);
}

/* ---- evaluation order ----------------------------------------------------------------------- */

static void test_mesh_defaults(void)
{
    ward_authz_t *a = NULL;
    const char *why = "x";
    CU_ASSERT_EQUAL_FATAL(ward_authz_compile(NULL, &a, &why), 0);
    CU_ASSERT_PTR_NULL(why);
    CU_ASSERT_EQUAL(ward_authz_version(a), 0);
    CU_ASSERT_EQUAL(ward_authz_policy_count(a), 0);
    CU_ASSERT_EQUAL(ward_authz_rule_count(a), 0);
    CU_ASSERT_STRING_EQUAL(ward_authz_default_name(a), "deny");
    rq_t r = http(WEB, "GET", "/");
    EXPECT(a, &r, DENY_, "mesh_default_deny", "mesh-default", -1, NULL);
    r = tcp(NULL, 5432);
    EXPECT(a, &r, DENY_, "mesh_default_deny", "mesh-default", -1, NULL);
    ward_authz_unref(a);

    /* No policy selects the workload: the default decides, whatever the request. */
    static const char other[] = "---\napiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
                                "metadata: {name: elsewhere, namespace: dev}\n"
                                "spec: {rules: [{to: [{ports: [1]}]}]}\n";
    a = compile_for(other, TARGET, WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_ALLOW);
    CU_ASSERT_EQUAL(ward_authz_policy_count(a), 0);
    CU_ASSERT_STRING_EQUAL(ward_authz_default_name(a), "allow");
    r = http(WEB, "DELETE", "/x");
    EXPECT(a, &r, ALLOW_, "mesh_default_allow", "mesh-default", -1, NULL);
    r = tcp(NULL, 1);
    EXPECT(a, &r, ALLOW_, "mesh_default_allow", "mesh-default", -1, NULL);
    ward_authz_unref(a);

    a = compile_for(other, TARGET, WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_AUDIT);
    CU_ASSERT_STRING_EQUAL(ward_authz_default_name(a), "audit");
    r = http(NULL, "GET", "/");
    EXPECT(a, &r, ALLOW_, "mesh_default_audit", "mesh-default", -1, NULL);
    ward_authz_unref(a);

    /* DENY and AUDIT policies alone do not take the default's place. */
    static const char deny_audit[] =
        DOC("no-admin", "{action: DENY, rules: [{to: [{paths: ['/admin/*']}]}]}")
            DOC("watch", "{action: AUDIT, rules: [{to: [{methods: [POST]}]}]}");
    a = compile_for(deny_audit, TARGET, WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_ALLOW);
    CU_ASSERT_EQUAL(ward_authz_policy_count(a), 2);
    CU_ASSERT_EQUAL(ward_authz_rule_count(a), 2);
    r = http(WEB, "GET", "/");
    EXPECT(a, &r, ALLOW_, "mesh_default_allow", "mesh-default", -1, NULL);
    r = http(WEB, "POST", "/");
    EXPECT(a, &r, ALLOW_, "mesh_default_allow", "mesh-default", -1, "shop/watch");
    r = http(WEB, "POST", "/admin/x");
    EXPECT(a, &r, DENY_, "denied_by_policy", "shop/no-admin", 0, "shop/watch");
    ward_authz_unref(a);
    a = compile_for(deny_audit, TARGET, WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_DENY);
    r = http(WEB, "POST", "/");
    EXPECT(a, &r, DENY_, "mesh_default_deny", "mesh-default", -1, "shop/watch");
    ward_authz_unref(a);
}

static void test_deny_beats_allow(void)
{
    ward_authz_t *a = compile(DOC("allow-shop", "{rules: [{from: [{namespaces: [shop]}]}]}") DOC(
        "no-admin", "{action: DENY, rules: [{to: [{ports: [1]}]}, {to: [{paths: ['/admin/*']}]}]}")
                                  DOC("audit-posts",
                                      "{action: AUDIT, rules: [{to: [{methods: [POST]}]}]}"));
    rq_t r = http(WEB, "GET", "/orders");
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/allow-shop", 0, NULL);
    r = http(WEB, "GET", "/admin/users");
    EXPECT(a, &r, DENY_, "denied_by_policy", "shop/no-admin", 1, NULL);
    r = http(WEB, "POST", "/admin/users");
    EXPECT(a, &r, DENY_, "denied_by_policy", "shop/no-admin", 1, "shop/audit-posts");
    r = http(WEB, "POST", "/orders");
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/allow-shop", 0, "shop/audit-posts");
    /* An ALLOW policy selects us, none of its rules matches: deny, no policy named. */
    r = http(OPS, "GET", "/orders");
    EXPECT(a, &r, DENY_, "no_allow_match", NULL, -1, NULL);
    r = http(OPS, "POST", "/orders");
    EXPECT(a, &r, DENY_, "no_allow_match", NULL, -1, "shop/audit-posts");
    ward_authz_unref(a);

    /* An ALLOW policy without rules allows nothing. */
    a = compile(DOC("empty", "{action: ALLOW}"));
    r = http(WEB, "GET", "/");
    EXPECT(a, &r, DENY_, "no_allow_match", NULL, -1, NULL);
    ward_authz_unref(a);
}

/* The first match in (namespace, name) order, rules in file order, whatever list it comes from. */
static void test_first_match_order(void)
{
    static const char yaml[] =
        "---\napiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: zzz, namespace: aaa}\n"
        "spec: {selector: {identity: '" TARGET "'}, rules: [{from: [{identities: ['*']}], "
        "to: [{paths: ['/first']}]}]}\n" DOC(
            "b-exact", "{rules: [{to: [{ports: [9]}]}, {from: [{identities: ['" WEB "']}]}]}")
            DOC("a-prefix", "{rules: [{from: [{identities: ['spiffe://td/ns/shop/*']}], to: "
                            "[{methods: [GET]}]}]}")
                DOC("c-any", "{rules: [{from: [{identities: ['*']}]}, {to: [{ports: [8080]}]}]}")
                    DOC("d-ns", "{rules: [{from: [{namespaces: [shop]}]}]}");
    ward_authz_t *a = compile(yaml);
    CU_ASSERT_EQUAL(ward_authz_policy_count(a), 5);
    CU_ASSERT_EQUAL(ward_authz_rule_count(a), 7);
    rq_t r = http(WEB, "GET", "/first");
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "aaa/zzz", 0, NULL);
    r = http(WEB, "GET", "/x");
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/a-prefix", 0, NULL);
    r = http(WEB, "POST", "/x");
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/b-exact", 1, NULL);
    r = http(API, "POST", "/x");
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/c-any", 0, NULL);
    r = http(NULL, "POST", "/x");
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/c-any", 1, NULL);
    r.port = 9;
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/b-exact", 0, NULL);
    r.port = 10;
    EXPECT(a, &r, DENY_, "no_allow_match", NULL, -1, NULL);
    ward_authz_unref(a);
}

/* DESIGN.md's example: each part of the rule, matched and missed. */
static void test_design_example(void)
{
    ward_authz_t *a = compile(
        DOC("orders-read",
            "\n  selector: {identity: '" TARGET "'}\n  action: ALLOW\n  rules:\n"
            "  - from: [{identities: ['" WEB "', 'spiffe://td/ns/ops/*']}]\n"
            "    to:   [{ports: [8080], methods: [GET, HEAD], paths: ['/orders/*', '/healthz']}]\n"
            "    when: [{key: 'request.headers[x-tenant]', values: ['acme']},\n"
            "           {key: source.ip, values: ['198.18.0.0/15']}, {key: time.hour, values: "
            "['8-18']}]"));
    rq_t ok = http(WEB, "GET", "/orders/17");
    ok.headers[0] = "x-tenant: acme";
    ok.source = "198.19.200.1";
    ok.hour = 9;
    EXPECT(a, &ok, ALLOW_, "allowed_by_policy", "shop/orders-read", 0, NULL);
    rq_t r = ok;
    r.peer = OPS;
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/orders-read", 0, NULL);
    r.method = "HEAD";
    r.path = "/healthz";
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/orders-read", 0, NULL);

    const rq_t misses[] = {
        {API, 8080, "GET", "/orders/17", "198.19.200.1", 9, {"x-tenant: acme"}},
        {"spiffe://td/ns/opsx/sa/a",
         8080,
         "GET",
         "/orders/17",
         "198.19.200.1",
         9,
         {"x-tenant: acme"}},
        {NULL, 8080, "GET", "/orders/17", "198.19.200.1", 9, {"x-tenant: acme"}},
        {WEB, 8081, "GET", "/orders/17", "198.19.200.1", 9, {"x-tenant: acme"}},
        {WEB, 8080, "POST", "/orders/17", "198.19.200.1", 9, {"x-tenant: acme"}},
        {WEB, 8080, "get", "/orders/17", "198.19.200.1", 9, {"x-tenant: acme"}},
        {WEB, 8080, "GET", "/orders", "198.19.200.1", 9, {"x-tenant: acme"}},
        {WEB, 8080, "GET", "/healthz/", "198.19.200.1", 9, {"x-tenant: acme"}},
        {WEB, 8080, "GET", "/orders/17", "198.20.0.1", 9, {"x-tenant: acme"}},
        {WEB, 8080, "GET", "/orders/17", NULL, 9, {"x-tenant: acme"}},
        {WEB, 8080, "GET", "/orders/17", "198.19.200.1", 19, {"x-tenant: acme"}},
        {WEB, 8080, "GET", "/orders/17", "198.19.200.1", -1, {"x-tenant: acme"}},
        {WEB, 8080, "GET", "/orders/17", "198.19.200.1", 9, {"x-tenant: ACME"}},
        {WEB, 8080, "GET", "/orders/17", "198.19.200.1", 9, {"x-other: acme"}},
        {WEB, 8080, "GET", "/orders/17", "198.19.200.1", 9, {NULL}},
        {WEB, 8080, NULL, NULL, "198.19.200.1", 9, {"x-tenant: acme"}},
    };
    for (size_t i = 0; i < sizeof(misses) / sizeof(misses[0]); i++) {
        ward_authz_result_t res = eval(a, &misses[i]);
        if (res.decision != DENY_ || strcmp(res.reason, "no_allow_match") != 0)
            fprintf(stderr, "\n  miss %zu: %s\n", i, res.reason);
        CU_ASSERT_EQUAL(res.decision, DENY_);
        CU_ASSERT_STRING_EQUAL(res.reason, "no_allow_match");
        CU_ASSERT_PTR_NULL(res.policy);
        CU_ASSERT_EQUAL(res.rule, -1);
    }
    CU_ASSERT_EQUAL(header_name_not_lowercase, 0);
    ward_authz_unref(a);
}

/* ---- rule parts ----------------------------------------------------------------------------- */

static void test_ports_methods_paths(void)
{
    ward_authz_t *a = compile(
        DOC("ops", "{rules: [{to: [{ports: [80, 443], methods: [GET, PURGE]}]},"
                   " {to: [{paths: ['/exact']}, {paths: ['/pre/*']}]}, {to: [{paths: ['*.json']}]},"
                   " {to: [{methods: [DELETE], paths: ['*']}]}]}"));
    struct {
        uint16_t port;
        const char *method, *path;
        int rule; /* -1 = no match */
    } cases[] = {
        {80, "GET", "/x", 0},       {443, "PURGE", "/x", 0},     {8080, "GET", "/x", -1},
        {80, "POST", "/x", -1},     {80, "purge", "/x", -1},     {80, "PURG", "/x", -1},
        {1, "PUT", "/exact", 1},    {1, "PUT", "/exact/", -1},   {1, "PUT", "/exac", -1},
        {1, "PUT", "/pre/", 1},     {1, "PUT", "/pre/a/b", 1},   {1, "PUT", "/pre", -1},
        {1, "PUT", "/prefix", -1},  {1, "PUT", "/a/b.json", 2},  {1, "PUT", ".json", 2},
        {1, "PUT", "/b.jsonx", -1}, {1, "PUT", "/json", -1},     {1, "DELETE", "/anything", 3},
        {1, "DELETE", "", 3},       {80, "DELETE", "/exact", 1}, {443, "GET", "/a.json", 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rq_t r = http(WEB, cases[i].method, cases[i].path);
        r.port = cases[i].port;
        ward_authz_result_t res = eval(a, &r);
        if (res.rule != cases[i].rule)
            fprintf(stderr, "\n  case %zu (%u %s %s): rule %d, want %d\n", i, cases[i].port,
                    cases[i].method, cases[i].path, res.rule, cases[i].rule);
        CU_ASSERT_EQUAL(res.rule, cases[i].rule);
        CU_ASSERT_EQUAL(res.decision, cases[i].rule >= 0 ? ALLOW_ : DENY_);
    }
    ward_authz_unref(a);
}

static void test_wildcards(void)
{
    /* Overlapping prefixes along one id, prefixes that share and split edges, and "*". */
    ward_authz_t *a = compile(
        DOC("p1", "{rules: [{from: [{identities: ['spiffe://td/*']}], to: [{paths: ['/td']}]}]}")
            DOC("p2", "{rules: [{from: [{identities: ['spiffe://td/ns/shop/*']}], to: [{paths: "
                      "['/shop']}]}]}")
                DOC("p3", "{rules: [{from: [{identities: ['spiffe://td/ns/shop/sa/web-*']}], to: "
                          "[{paths: ['/web']}]}]}")
                    DOC("p4", "{rules: [{from: [{identities: ['spiffe://td/ns/sho*']}], to: "
                              "[{paths: ['/sho']}]}]}")
                        DOC("p5",
                            "{rules: [{from: [{identities: ['*']}], to: [{paths: ['/any']}]}]}")
                            DOC("p6", "{rules: [{from: [{identities: ['spiffe://td/ns/shop/sa/"
                                      "web-1']}], to: [{paths: ['/exact']}]}]}")
                                DOC("p7", "{rules: [{from: [{identities: ['spiffe://other/*', "
                                          "'spiffe://td/ns/shoe/*']}], to: [{paths: ['/x']}]}]}"));
    const char *web1 = "spiffe://td/ns/shop/sa/web-1";
    struct {
        const char *peer, *path, *policy;
    } cases[] = {
        {web1, "/td", "shop/p1"},
        {web1, "/shop", "shop/p2"},
        {web1, "/web", "shop/p3"},
        {web1, "/sho", "shop/p4"},
        {web1, "/any", "shop/p5"},
        {web1, "/exact", "shop/p6"},
        {web1, "/x", NULL},
        {"spiffe://td/ns/shop/sa/web", "/web", NULL},
        {"spiffe://td/ns/shop/sa/web", "/shop", "shop/p2"},
        {"spiffe://td/ns/shop/sa/wex-1", "/web", NULL},
        {"spiffe://td/ns/shoe/sa/a", "/sho", "shop/p4"},
        {"spiffe://td/ns/shoe/sa/a", "/x", "shop/p7"},
        {"spiffe://td/ns/shoe/sa/a", "/shop", NULL},
        {"spiffe://td/ns/sh", "/sho", NULL},
        {"spiffe://td/ns/sho", "/sho", "shop/p4"},
        {"spiffe://td", "/td", NULL},
        {"spiffe://td/", "/td", "shop/p1"},
        {"spiffe://other/x", "/x", "shop/p7"},
        {"spiffe://other/x", "/td", NULL},
        {"spiffe://other/x", "/any", "shop/p5"},
        {"", "/any", "shop/p5"},
        {NULL, "/any", NULL},
        {NULL, "/td", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rq_t r = http(cases[i].peer, "GET", cases[i].path);
        ward_authz_result_t res = eval(a, &r);
        if (!same(res.policy, cases[i].policy))
            fprintf(stderr, "\n  case %zu (%s %s): %s, want %s\n", i, cases[i].peer, cases[i].path,
                    res.policy ? res.policy : "-", cases[i].policy ? cases[i].policy : "-");
        CU_ASSERT(same(res.policy, cases[i].policy));
        CU_ASSERT_EQUAL(res.decision, cases[i].policy ? ALLOW_ : DENY_);
    }
    ward_authz_unref(a);
}

static void test_namespaces(void)
{
    ward_authz_t *a = compile(
        DOC("ns", "{rules: [{from: [{namespaces: [ops, dev]}, {identities: ['" WEB "']}]}]}"));
    const char *yes[] = {OPS,
                         DEV,
                         WEB,
                         "spiffe://other/ns/ops/sa/x",
                         "spiffe://td/ns/dev",
                         "spiffe://td/ns/ops/x/y/z"};
    const char *no[] = {API,
                        "spiffe://td/ns/opsx/sa/a",
                        "spiffe://td/ns/op/sa/a",
                        "spiffe://td/x/ns/ops/sa/a",
                        "spiffe://td/ns//ops",
                        "spiffe://td/ns/",
                        "spiffe://td/NS/ops/sa/a",
                        "spiffe:/td/ns/ops/sa/a",
                        "spiffe://ns/ops",
                        NULL};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        rq_t r = http(yes[i], "GET", "/");
        EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/ns", 0, NULL);
    }
    for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
        rq_t r = http(no[i], "GET", "/");
        ward_authz_result_t res = eval(a, &r);
        if (res.decision != DENY_) fprintf(stderr, "\n  %s allowed\n", no[i]);
        CU_ASSERT_EQUAL(res.decision, DENY_);
    }
    ward_authz_unref(a);
}

static void test_unauthenticated(void)
{
    ward_authz_t *a = compile(DOC("from", "{rules: [{from: [{identities: ['*']}]}]}")
                                  DOC("plain", "{rules: [{to: [{ports: [80]}]}]}"));
    rq_t r = http(NULL, "GET", "/");
    r.port = 8080;
    EXPECT(a, &r, DENY_, "no_allow_match", NULL, -1, NULL);
    r.port = 80;
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/plain", 0, NULL);
    r.peer = WEB;
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/from", 0, NULL);
    ward_authz_unref(a);
}

/* ---- opaque TCP ----------------------------------------------------------------------------- */

static void test_tcp(void)
{
    ward_authz_t *a = compile(
        DOC("allow-db",
            "{rules: [{to: [{ports: [5432]}]}, {to: [{ports: [6379], methods: [GET]}]},"
            " {to: [{ports: [6380]}], when: [{key: 'request.headers[x]', values: [y]}]},"
            " {to: [{ports: [6381]}, {paths: ['/x']}]}]}")
            DOC("deny-admin", "{action: DENY, rules: [{to: [{ports: [9000], paths: ['/admin/*']}]},"
                              " {from: [{identities: ['" OPS "']}], to: [{methods: [DELETE]}]},"
                              " {from: [{identities: ['" DEV "']}], when: [{key: "
                              "'request.headers[x-debug]', values: ['1']}]}]}")
                DOC("watch", "{action: AUDIT, rules: [{to: [{methods: [GET]}]},"
                             " {to: [{ports: [5433]}]}]}"));
    rq_t r = tcp(WEB, 5432);
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/allow-db", 0, NULL);
    /* ALLOW and AUDIT rules that need HTTP attributes cannot match a TCP connection... */
    r = tcp(WEB, 6379);
    EXPECT(a, &r, DENY_, "no_allow_match", NULL, -1, NULL);
    r = tcp(WEB, 6380);
    EXPECT(a, &r, DENY_, "no_allow_match", NULL, -1, NULL);
    r = tcp(WEB, 6381);
    EXPECT(a, &r, DENY_, "no_allow_match", NULL, -1, NULL);
    r = tcp(WEB, 5433);
    EXPECT(a, &r, DENY_, "no_allow_match", NULL, -1, "shop/watch");
    /* ...while over HTTP they do. */
    r = http(WEB, "GET", "/");
    r.port = 6379;
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/allow-db", 1, "shop/watch");
    r.port = 6380;
    r.headers[0] = "x: y";
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/allow-db", 2, "shop/watch");
    r = http(WEB, "POST", "/x");
    r.port = 1;
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/allow-db", 3, NULL);

    /* DENY rules drop their HTTP parts and cover the whole connection. */
    r = tcp(WEB, 9000);
    EXPECT(a, &r, DENY_, "denied_by_policy", "shop/deny-admin", 0, NULL);
    r = http(WEB, "GET", "/public");
    r.port = 9000;
    EXPECT(a, &r, DENY_, "no_allow_match", NULL, -1, "shop/watch");
    r = tcp(OPS, 5432);
    EXPECT(a, &r, DENY_, "denied_by_policy", "shop/deny-admin", 1, NULL);
    r = http(OPS, "PUT", "/");
    r.port = 5432;
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/allow-db", 0, NULL);
    r = tcp(DEV, 5432);
    EXPECT(a, &r, DENY_, "denied_by_policy", "shop/deny-admin", 2, NULL);
    r = http(DEV, "PUT", "/");
    r.port = 5432;
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/allow-db", 0, NULL);
    r.headers[0] = "x-debug: 1";
    EXPECT(a, &r, DENY_, "denied_by_policy", "shop/deny-admin", 2, NULL);
    ward_authz_unref(a);
}

/* ---- conditions ----------------------------------------------------------------------------- */

static void test_source_ip(void)
{
    ward_authz_t *a = compile(DOC(
        "ips",
        "{rules: [{when: [{key: source.ip, values: ['10.0.0.0/8', '192.0.2.7', '198.18.0.0/15']}]},"
        " {when: [{key: source.ip, values: ['2001:db8::/32', '2001:db8:1::1']}]},"
        " {when: [{key: source.ip, values: ['::ffff:172.16.0.0/108']}]},"
        " {when: [{key: source.ip, values: ['0.0.0.0/0']}], to: [{ports: [1]}]},"
        " {when: [{key: source.ip, values: ['::/0']}], to: [{ports: [2]}]}]}"));
    struct {
        const char *src;
        uint16_t port;
        int rule;
    } cases[] = {
        {"10.1.2.3", 80, 0},
        {"10.255.255.255", 80, 0},
        {"11.0.0.1", 80, -1},
        {"9.255.255.255", 80, -1},
        {"::ffff:10.1.2.3", 80, 0},
        {"192.0.2.7", 80, 0},
        {"192.0.2.8", 80, -1},
        {"::ffff:192.0.2.7", 80, 0},
        {"198.19.255.255", 80, 0},
        {"198.18.0.0", 80, 0},
        {"198.20.0.0", 80, -1},
        {"198.17.255.255", 80, -1},
        {"2001:db8::1", 80, 1},
        {"2001:db8:ffff::", 80, 1},
        {"2001:db9::1", 80, -1},
        {"::a00:1", 80, -1}, /* IPv4-compatible, not mapped: an IPv6 address */
        {"172.16.5.5", 80, 2},
        {"::ffff:172.16.5.5", 80, 2},
        {"172.31.255.255", 80, 2},
        {"172.32.0.1", 80, -1},
        {"203.0.113.1", 1, 3},
        {"::ffff:203.0.113.1", 1, 3},
        {"2001:db9::1", 1, -1},
        {"2001:db9::1", 2, 4},
        {"203.0.113.1", 2, -1},
        {"::ffff:203.0.113.1", 2, -1},
        {NULL, 1, -1},
        {NULL, 2, -1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        rq_t r = http(WEB, "GET", "/");
        r.source = cases[i].src;
        r.port = cases[i].port;
        ward_authz_result_t res = eval(a, &r);
        if (res.rule != cases[i].rule)
            fprintf(stderr, "\n  %s port %u: rule %d, want %d\n", cases[i].src, cases[i].port,
                    res.rule, cases[i].rule);
        CU_ASSERT_EQUAL(res.rule, cases[i].rule);
    }
    /* A source of another family never matches. */
    struct sockaddr_un_like {
        sa_family_t family;
        char path[32];
    } un = {AF_UNIX, "/tmp/x"};
    ward_authz_request_t req = {.peer_id = WEB,
                                .port = 1,
                                .method = "GET",
                                .path = "/",
                                .path_len = 1,
                                .source = (const struct sockaddr *)&un,
                                .hour = -1};
    ward_authz_result_t res;
    ward_authz_eval(a, &req, &res);
    CU_ASSERT_EQUAL(res.decision, DENY_);
    ward_authz_unref(a);
}

static void test_hours(void)
{
    ward_authz_t *a = compile(
        DOC("hours", "{rules: [{when: [{key: time.hour, values: ['8-18']}], to: [{ports: [1]}]},"
                     " {when: [{key: time.hour, values: ['22-6']}], to: [{ports: [2]}]},"
                     " {when: [{key: time.hour, values: ['5', '13-14']}], to: [{ports: [3]}]},"
                     " {when: [{key: time.hour, values: ['0-23']}], to: [{ports: [4]}]},"
                     " {when: [{key: time.hour, values: ['7-7']}], to: [{ports: [5]}]}]}"));
    static const char *const want[6] = {
        NULL,
        /* port 1: 8-18 */ "000000001111111111100000",
        /* port 2: 22-6 */ "111111100000000000000011",
        /* port 3: 5, 13-14 */ "000001000000011000000000",
        /* port 4 */ "111111111111111111111111",
        /* port 5 */ "000000010000000000000000",
    };
    for (uint16_t port = 1; port <= 5; port++) {
        for (int h = -1; h <= 24; h++) {
            rq_t r = http(WEB, "GET", "/");
            r.port = port;
            r.hour = h;
            int match = h >= 0 && h <= 23 && want[port][h] == '1';
            ward_authz_result_t res = eval(a, &r);
            if ((res.decision == ALLOW_) != match)
                fprintf(stderr, "\n  port %u hour %d: %s\n", port, h, res.reason);
            CU_ASSERT_EQUAL(res.decision == ALLOW_, match);
        }
    }
    ward_authz_unref(a);
}

static void test_headers(void)
{
    ward_authz_t *a = compile(
        DOC("hdr", "{rules: [{when: [{key: 'request.headers[x-tenant]', values: [acme, globex]},"
                   " {key: 'request.headers[x-env]', values: [prod]}]},"
                   " {when: [{key: 'request.headers[x-empty]', values: ['']}]}]}"));
    rq_t r = http(WEB, "GET", "/");
    EXPECT(a, &r, DENY_, "no_allow_match", NULL, -1, NULL);
    r.headers[0] = "x-tenant: globex";
    EXPECT(a, &r, DENY_, "no_allow_match", NULL, -1, NULL);
    r.headers[1] = "x-env: prod";
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/hdr", 0, NULL);
    /* Header names arrive lowercase; the callback matches them case-insensitively. */
    r.headers[1] = "X-Env: prod";
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/hdr", 0, NULL);
    /* A repeated header: any of its values. */
    rq_t m = http(WEB, "GET", "/");
    m.headers[0] = "x-tenant: other";
    m.headers[1] = "x-env: dev";
    m.headers[2] = "x-tenant: acme";
    EXPECT(a, &m, DENY_, "no_allow_match", NULL, -1, NULL);
    m.headers[3] = "x-env: prod";
    EXPECT(a, &m, ALLOW_, "allowed_by_policy", "shop/hdr", 0, NULL);
    /* Exact values: no prefix, no case folding. */
    rq_t v = http(WEB, "GET", "/");
    v.headers[0] = "x-tenant: acmex";
    v.headers[1] = "x-env: prod";
    EXPECT(a, &v, DENY_, "no_allow_match", NULL, -1, NULL);
    v.headers[0] = "x-tenant: Acme";
    EXPECT(a, &v, DENY_, "no_allow_match", NULL, -1, NULL);
    /* An empty value is a value; an absent header is not. */
    rq_t e = http(WEB, "GET", "/");
    e.headers[0] = "x-empty:";
    EXPECT(a, &e, ALLOW_, "allowed_by_policy", "shop/hdr", 1, NULL);

    /* No header callback: request.headers never matches. */
    ward_authz_request_t req = {
        .peer_id = WEB, .port = 1, .method = "GET", .path = "/", .path_len = 1, .hour = -1};
    ward_authz_result_t res;
    ward_authz_eval(a, &req, &res);
    CU_ASSERT_EQUAL(res.decision, DENY_);
    CU_ASSERT_EQUAL(header_name_not_lowercase, 0);
    ward_authz_unref(a);
}

/* ---- refusals ------------------------------------------------------------------------------- */

static int compile_rule(Ward__V1__Rule *rule, int action, int mesh_default, const char **why)
{
    Ward__V1__AuthorizationPolicy p = WARD__V1__AUTHORIZATION_POLICY__INIT;
    Ward__V1__AuthorizationPolicy *ps[1] = {&p};
    Ward__V1__Rule *rules[1] = {rule};
    Ward__V1__PolicySnapshot s = WARD__V1__POLICY_SNAPSHOT__INIT;
    p.name = "x";
    p.namespace_ = "shop";
    p.action = (Ward__V1__Action)action;
    p.n_rules = rule ? 1 : 0;
    p.rules = rules;
    s.n_policies = 1;
    s.policies = ps;
    s.mesh_default = (Ward__V1__DefaultAction)mesh_default;
    ward_authz_t *a = NULL;
    *why = NULL;
    int rc = ward_authz_compile(&s, &a, why);
    CU_ASSERT((rc == 0) == (a != NULL));
    ward_authz_unref(a);
    return rc;
}

static int compile_when(const char *key, const char *value, const char **why)
{
    Ward__V1__Rule r = WARD__V1__RULE__INIT;
    Ward__V1__Condition c = WARD__V1__CONDITION__INIT, *cs[1] = {&c};
    char *values[1] = {(char *)value};
    c.key = (char *)key;
    c.n_values = value ? 1 : 0;
    c.values = values;
    r.n_when = 1;
    r.when = cs;
    return compile_rule(&r, WARD__V1__ACTION__ACTION_ALLOW, 0, why);
}

static int compile_to(const char *method, const char *path, uint32_t port, const char **why)
{
    Ward__V1__Rule r = WARD__V1__RULE__INIT;
    Ward__V1__Operation o = WARD__V1__OPERATION__INIT, *os[1] = {&o};
    char *methods[1] = {(char *)method}, *paths[1] = {(char *)path};
    uint32_t ports[1] = {port};
    o.n_methods = method ? 1 : 0;
    o.methods = methods;
    o.n_paths = path ? 1 : 0;
    o.paths = paths;
    o.n_ports = port ? 1 : 0;
    o.ports = ports;
    r.n_to = 1;
    r.to = os;
    return compile_rule(&r, WARD__V1__ACTION__ACTION_DENY, 0, why);
}

static int compile_from(const char *identity, const char *ns, const char **why)
{
    Ward__V1__Rule r = WARD__V1__RULE__INIT;
    Ward__V1__Source s = WARD__V1__SOURCE__INIT, *ss[1] = {&s};
    char *ids[1] = {(char *)identity}, *nss[1] = {(char *)ns};
    s.n_identities = identity ? 1 : 0;
    s.identities = ids;
    s.n_namespaces = ns ? 1 : 0;
    s.namespaces = nss;
    r.n_from = 1;
    r.from = ss;
    return compile_rule(&r, WARD__V1__ACTION__ACTION_AUDIT, 0, why);
}

#define REFUSED(call)                                                                              \
    do {                                                                                           \
        const char *why_ = NULL;                                                                   \
        int rc_ = call;                                                                            \
        if (rc_ != WARD_EINVAL) fprintf(stderr, "\n  line %d: rc %d\n", __LINE__, rc_);            \
        CU_ASSERT_EQUAL(rc_, WARD_EINVAL);                                                         \
        CU_ASSERT_PTR_NOT_NULL(why_);                                                              \
    } while (0)

#define ACCEPTED(call)                                                                             \
    do {                                                                                           \
        const char *why_ = NULL;                                                                   \
        int rc_ = call;                                                                            \
        if (rc_ != 0) fprintf(stderr, "\n  line %d: rc %d (%s)\n", __LINE__, rc_, why_);           \
        CU_ASSERT_EQUAL(rc_, 0);                                                                   \
    } while (0)

static void test_refusals(void)
{
    ACCEPTED(compile_when("source.ip", "10.0.0.0/8", &why_));
    ACCEPTED(compile_when("source.ip", "::1", &why_));
    REFUSED(compile_when("source.ip", "10.0.0.1/8", &why_));
    REFUSED(compile_when("source.ip", "10.0.0.0/33", &why_));
    REFUSED(compile_when("source.ip", "10.0.0.0/08", &why_));
    REFUSED(compile_when("source.ip", "10.0.0.0/", &why_));
    REFUSED(compile_when("source.ip", "300.0.0.0", &why_));
    REFUSED(compile_when("source.ip", "2001:db8::/129", &why_));
    REFUSED(compile_when("source.ip", "", &why_));
    REFUSED(compile_when("source.ip", "/8", &why_));
    REFUSED(compile_when("source.ip", NULL, &why_));
    ACCEPTED(compile_when("time.hour", "22-6", &why_));
    ACCEPTED(compile_when("time.hour", "08", &why_));
    REFUSED(compile_when("time.hour", "24", &why_));
    REFUSED(compile_when("time.hour", "8-", &why_));
    REFUSED(compile_when("time.hour", "-8", &why_));
    REFUSED(compile_when("time.hour", "8-24", &why_));
    REFUSED(compile_when("time.hour", "123", &why_));
    REFUSED(compile_when("time.hour", "x", &why_));
    REFUSED(compile_when("time.hour", "", &why_));
    ACCEPTED(compile_when("request.headers[X-Tenant]", "acme", &why_));
    REFUSED(compile_when("request.headers[]", "acme", &why_));
    REFUSED(compile_when("request.header[x]", "acme", &why_));
    REFUSED(compile_when("request.headers[x", "acme", &why_));
    REFUSED(compile_when("connection.sni", "x", &why_));
    REFUSED(compile_when("", "x", &why_));

    ACCEPTED(compile_to("GET", "/a/*", 80, &why_));
    ACCEPTED(compile_to(NULL, "*", 0, &why_));
    ACCEPTED(compile_to(NULL, "*.json", 0, &why_));
    REFUSED(compile_to(NULL, "admin", 0, &why_));
    REFUSED(compile_to(NULL, "", 0, &why_));
    REFUSED(compile_to(NULL, "/a*", 0, &why_));
    REFUSED(compile_to(NULL, "/a/*/b", 0, &why_));
    REFUSED(compile_to(NULL, "*a*", 0, &why_));
    REFUSED(compile_to(NULL, "**", 0, &why_));
    REFUSED(compile_to(NULL, NULL, 70000, &why_));
    REFUSED(compile_to("", NULL, 0, &why_));
    REFUSED(compile_to(NULL, NULL, 0, &why_)); /* an empty operation */

    ACCEPTED(compile_from("*", NULL, &why_));
    ACCEPTED(compile_from("spiffe://td/ns/a/*", "ops", &why_));
    REFUSED(compile_from("spiffe://td/*/sa/x", NULL, &why_));
    REFUSED(compile_from("", NULL, &why_));
    REFUSED(compile_from(NULL, "", &why_));
    REFUSED(compile_from(NULL, NULL, &why_)); /* an empty source */

    Ward__V1__Rule empty = WARD__V1__RULE__INIT;
    REFUSED(compile_rule(&empty, WARD__V1__ACTION__ACTION_ALLOW, 0, &why_));
    ACCEPTED(compile_rule(NULL, WARD__V1__ACTION__ACTION_ALLOW, 0, &why_));
    REFUSED(compile_rule(NULL, WARD__V1__ACTION__ACTION_UNSPECIFIED, 0, &why_));
    REFUSED(compile_rule(NULL, 9, 0, &why_));
    REFUSED(compile_rule(NULL, WARD__V1__ACTION__ACTION_ALLOW, 3, &why_));

    /* Bytes that are not a PolicySnapshot; and no bytes at all, which is the empty one. */
    ward_authz_t *a = NULL;
    const char *why = NULL;
    static const uint8_t junk[] = {0x12, 0x05, 0x0a, 0xff, 0xff};
    CU_ASSERT_EQUAL(ward_authz_compile_packed(junk, sizeof(junk), &a, &why), WARD_EPARSE);
    CU_ASSERT_PTR_NULL(a);
    CU_ASSERT_PTR_NOT_NULL(why);
    CU_ASSERT_EQUAL(ward_authz_compile_packed(NULL, 0, &a, &why), 0);
    CU_ASSERT_EQUAL(ward_authz_policy_count(a), 0);
    ward_authz_unref(a);
}

static void test_refcount(void)
{
    ward_authz_t *a = compile(DOC("p", "{rules: [{to: [{ports: [1]}]}]}"));
    CU_ASSERT_PTR_EQUAL(ward_authz_ref(a), a);
    ward_authz_unref(a);
    rq_t r = tcp(WEB, 1);
    EXPECT(a, &r, ALLOW_, "allowed_by_policy", "shop/p", 0, NULL);
    ward_authz_unref(a);
    ward_authz_unref(NULL);
    CU_ASSERT_PTR_NULL(ward_authz_ref(NULL));
}

/* The header key uppercase in a hand-built snapshot is compiled lowercase. */
static void test_header_name_lowercased(void)
{
    Ward__V1__Rule r = WARD__V1__RULE__INIT, *rules[1] = {&r};
    Ward__V1__Condition c = WARD__V1__CONDITION__INIT, *cs[1] = {&c};
    Ward__V1__AuthorizationPolicy p = WARD__V1__AUTHORIZATION_POLICY__INIT, *ps[1] = {&p};
    Ward__V1__PolicySnapshot s = WARD__V1__POLICY_SNAPSHOT__INIT;
    char *values[1] = {"acme"};
    c.key = "request.headers[X-Tenant]";
    c.n_values = 1;
    c.values = values;
    r.n_when = 1;
    r.when = cs;
    p.name = "n";
    p.namespace_ = "s";
    p.action = WARD__V1__ACTION__ACTION_ALLOW;
    p.n_rules = 1;
    p.rules = rules;
    s.n_policies = 1;
    s.policies = ps;
    s.version = 99;
    ward_authz_t *a = NULL;
    CU_ASSERT_EQUAL_FATAL(ward_authz_compile(&s, &a, NULL), 0);
    CU_ASSERT_EQUAL(ward_authz_version(a), 99);
    rq_t q = http(WEB, "GET", "/");
    q.headers[0] = "x-tenant: acme";
    header_name_not_lowercase = 0;
    EXPECT(a, &q, ALLOW_, "allowed_by_policy", "s/n", 0, NULL);
    CU_ASSERT_EQUAL(header_name_not_lowercase, 0);
    ward_authz_unref(a);
}

/* ---- a naive evaluator, written from ward/authz.h's text, against random policy sets --------- */

static int ref_hour(const char *v, int h)
{
    int a = atoi(v), b = strchr(v, '-') ? atoi(strchr(v, '-') + 1) : a;
    return a <= b ? (h >= a && h <= b) : (h >= a || h <= b);
}

static int ref_ip(const char *v, const char *src)
{
    unsigned char x[16], y[16];
    char addr[64];
    int bits;
    snprintf(addr, sizeof(addr), "%s", v);
    char *slash = strchr(addr, '/');
    if (slash) *slash = '\0';
    int v6 = strchr(addr, ':') != NULL;
    bits = slash ? atoi(slash + 1) : (v6 ? 128 : 32);
    inet_pton(v6 ? AF_INET6 : AF_INET, addr, x);
    int s6 = strchr(src, ':') != NULL;
    inet_pton(s6 ? AF_INET6 : AF_INET, src, y);
    static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    if (s6 && memcmp(y, mapped, 12) == 0) {
        memmove(y, y + 12, 4);
        s6 = 0;
    }
    if (v6 && bits >= 96 && memcmp(x, mapped, 12) == 0) {
        memmove(x, x + 12, 4);
        bits -= 96;
        v6 = 0;
    }
    if (v6 != s6) return 0;
    for (int i = 0; i < bits; i++)
        if (((x[i / 8] ^ y[i / 8]) >> (7 - i % 8)) & 1) return 0;
    return 1;
}

static int ref_path(const char *pat, const char *path)
{
    size_t n = strlen(pat), l = strlen(path);
    if (strcmp(pat, "*") == 0) return 1;
    if (pat[0] == '*') return l >= n - 1 && strcmp(path + l - (n - 1), pat + 1) == 0;
    if (pat[n - 1] == '*') return strncmp(path, pat, n - 1) == 0;
    return strcmp(pat, path) == 0;
}

static int ref_from(const Ward__V1__Rule *r, const char *peer)
{
    if (r->n_from == 0) return 1;
    if (peer == NULL) return 0;
    char ns[64] = "";
    if (strncmp(peer, "spiffe://", 9) == 0) {
        const char *p = strchr(peer + 9, '/');
        if (p && strncmp(p, "/ns/", 4) == 0) {
            size_t k = strcspn(p + 4, "/");
            if (k < sizeof(ns)) snprintf(ns, sizeof(ns), "%.*s", (int)k, p + 4);
        }
    }
    for (size_t s = 0; s < r->n_from; s++) {
        const Ward__V1__Source *src = r->from[s];
        for (size_t i = 0; i < src->n_identities; i++) {
            const char *id = src->identities[i];
            size_t n = strlen(id);
            if (id[n - 1] == '*' ? strncmp(peer, id, n - 1) == 0 : strcmp(peer, id) == 0) return 1;
        }
        for (size_t i = 0; i < src->n_namespaces; i++)
            if (ns[0] && strcmp(src->namespaces[i], ns) == 0) return 1;
    }
    return 0;
}

static int ref_rule(const Ward__V1__Rule *r, int deny, const rq_t *q)
{
    int tcp_ = q->method == NULL, needs_http = 0;
    for (size_t i = 0; i < r->n_to; i++)
        needs_http |= r->to[i]->n_methods > 0 || r->to[i]->n_paths > 0;
    for (size_t i = 0; i < r->n_when; i++)
        needs_http |= strncmp(r->when[i]->key, "request.headers[", 16) == 0;
    if (tcp_ && needs_http && !deny) return 0;
    if (!ref_from(r, q->peer)) return 0;
    int to = r->n_to == 0;
    for (size_t i = 0; i < r->n_to && !to; i++) {
        const Ward__V1__Operation *o = r->to[i];
        int ok = o->n_ports == 0;
        for (size_t k = 0; k < o->n_ports; k++)
            ok |= o->ports[k] == q->port;
        if (!tcp_ && o->n_methods) {
            int m = 0;
            for (size_t k = 0; k < o->n_methods; k++)
                m |= strcmp(o->methods[k], q->method) == 0;
            ok &= m;
        }
        if (!tcp_ && o->n_paths) {
            int m = 0;
            for (size_t k = 0; k < o->n_paths; k++)
                m |= ref_path(o->paths[k], q->path);
            ok &= m;
        }
        to = ok;
    }
    if (!to) return 0;
    for (size_t i = 0; i < r->n_when; i++) {
        const Ward__V1__Condition *c = r->when[i];
        int m = 0;
        for (size_t k = 0; k < c->n_values; k++) {
            const char *v = c->values[k];
            if (strcmp(c->key, "time.hour") == 0)
                m |= q->hour >= 0 && ref_hour(v, q->hour);
            else if (strcmp(c->key, "source.ip") == 0)
                m |= q->source != NULL && ref_ip(v, q->source);
            else if (tcp_)
                m = 1;
            else {
                const char *name = c->key + 16;
                size_t nl = strlen(name) - 1, vl;
                const char *hv;
                for (size_t h = 0; (hv = header_cb((void *)q, name, nl, h, &vl)) != NULL; h++)
                    m |= vl == strlen(v) && memcmp(hv, v, vl) == 0;
            }
        }
        if (!m) return 0;
    }
    return 1;
}

/* Fills res as the header says, from the unpacked snapshot (already in (namespace, name) order). */
static void ref_eval(const Ward__V1__PolicySnapshot *s, const rq_t *q, ward_authz_result_t *res,
                     char names[3][64])
{
    int found[4] = {0};
    size_t pol[4], rule[4];
    int any_allow = 0;
    for (size_t p = 0; p < s->n_policies; p++) {
        const Ward__V1__AuthorizationPolicy *pb = s->policies[p];
        int act = pb->action;
        any_allow |= act == WARD__V1__ACTION__ACTION_ALLOW;
        for (size_t r = 0; r < pb->n_rules && !found[act]; r++) {
            if (ref_rule(pb->rules[r], act == WARD__V1__ACTION__ACTION_DENY, q)) {
                found[act] = 1;
                pol[act] = p;
                rule[act] = r;
            }
        }
    }
    memset(res, 0, sizeof(*res));
    res->rule = -1;
    int audit = WARD__V1__ACTION__ACTION_AUDIT, deny = WARD__V1__ACTION__ACTION_DENY,
        allow = WARD__V1__ACTION__ACTION_ALLOW;
    if (found[audit]) {
        snprintf(names[0], 64, "%s/%s", s->policies[pol[audit]]->namespace_,
                 s->policies[pol[audit]]->name);
        res->audit_policy = names[0];
    }
    int act = found[deny] ? deny : found[allow] ? allow : 0;
    if (act) {
        res->decision = act == deny ? DENY_ : ALLOW_;
        res->reason = act == deny ? "denied_by_policy" : "allowed_by_policy";
        snprintf(names[1], 64, "%s/%s", s->policies[pol[act]]->namespace_,
                 s->policies[pol[act]]->name);
        res->policy = names[1];
        res->rule = (int)rule[act];
    } else if (any_allow) {
        res->decision = DENY_;
        res->reason = "no_allow_match";
    } else {
        res->decision = DENY_;
        res->reason = "mesh_default_deny";
        res->policy = "mesh-default";
    }
}

static unsigned rnd_state = 1;

static unsigned rnd(unsigned n)
{
    rnd_state = rnd_state * 1103515245u + 12345u;
    return (rnd_state >> 16) % n;
}

static const char *pick(const char *const *v, size_t n)
{
    return v[rnd((unsigned)n)];
}

#define PICK(v) pick(v, sizeof(v) / sizeof(v[0]))

static const char *const r_ids[] = {WEB,
                                    API,
                                    OPS,
                                    DEV,
                                    "spiffe://td/ns/shop/sa/web-2",
                                    "*",
                                    "spiffe://td/*",
                                    "spiffe://td/ns/shop/*",
                                    "spiffe://td/ns/shop/sa/w*",
                                    "spiffe://td/ns/shop/sa/web-*",
                                    "spiffe://td/ns/ops/sa/*",
                                    "spiffe://other/*"};
static const char *const r_peers[] = {WEB,
                                      API,
                                      OPS,
                                      DEV,
                                      "spiffe://td/ns/shop/sa/web-2",
                                      "spiffe://td/ns/shop/sa/web-3",
                                      "spiffe://other/ns/shop/sa/web",
                                      "spiffe://td/ns/shopx/sa/a",
                                      NULL};
static const char *const r_ns[] = {"shop", "ops", "dev", "shopx"};
static const char *const r_ports[] = {"80", "8080", "9000"};
static const char *const r_methods[] = {"GET", "POST", "PURGE"};
static const char *const r_paths[] = {"/a", "/a/*", "*.json", "*", "/b/c"};
static const char *const r_conds[] = {
    "{key: 'request.headers[x-t]', values: ['1']}",
    "{key: 'request.headers[x-t]', values: ['2', '3']}",
    "{key: source.ip, values: ['10.0.0.0/8']}",
    "{key: source.ip, values: ['2001:db8::/32', '192.0.2.1']}",
    "{key: time.hour, values: ['8-18']}",
    "{key: time.hour, values: ['22-6', '12']}",
};
static const char *const r_actions[] = {"ALLOW", "ALLOW", "DENY", "AUDIT"};

/* Appends a YAML flow list of 1 or 2 items of v; quoted unless they are numbers. */
static void rnd_list(char *buf, size_t cap, const char *const *v, size_t n, int quote)
{
    size_t k = 1 + rnd(2), len = strlen(buf);
    snprintf(buf + len, cap - len, "[");
    for (size_t i = 0; i < k; i++) {
        len = strlen(buf);
        snprintf(buf + len, cap - len, "%s%s%s%s", i ? ", " : "", quote ? "'" : "", pick(v, n),
                 quote ? "'" : "");
    }
    len = strlen(buf);
    snprintf(buf + len, cap - len, "]");
}

#define RND_LIST(buf, v, quote) rnd_list(buf, sizeof(buf), v, sizeof(v) / sizeof(v[0]), quote)

/* A YAML stream of 1..6 policies in namespace shop, named out of file order (p(7i+k mod 11)),
 * each with 0..3 rules made of random from / to / when parts from the vocabularies above. */
static void rnd_policies(char *yaml, size_t cap)
{
    yaml[0] = '\0';
    int np = 1 + (int)rnd(6), shift = (int)rnd(11);
    for (int p = 0; p < np; p++) {
        char spec[8192] = "";
        snprintf(spec, sizeof(spec), "{action: %s, rules: [", PICK(r_actions));
        int nr = (int)rnd(4);
        for (int r = 0; r < nr; r++) {
            char rule[2048] = "{";
            const char *part = "";
            int parts = 1 + (int)rnd(7); /* bits: from, to, when */
            if (parts & 1) {
                unsigned which = 1 + rnd(3);
                strcat(rule, "from: [{");
                if (which & 1) {
                    strcat(rule, "identities: ");
                    RND_LIST(rule, r_ids, 1);
                }
                if (which & 2) {
                    strcat(rule, which & 1 ? ", namespaces: " : "namespaces: ");
                    RND_LIST(rule, r_ns, 1);
                }
                strcat(rule, "}]");
                part = ", ";
            }
            if (parts & 2) {
                unsigned which = 1 + rnd(7);
                const char *sep = "";
                strcat(rule, part);
                strcat(rule, "to: [{");
                if (which & 1) {
                    strcat(rule, "ports: ");
                    RND_LIST(rule, r_ports, 0);
                    sep = ", ";
                }
                if (which & 2) {
                    strcat(rule, sep);
                    strcat(rule, "methods: ");
                    RND_LIST(rule, r_methods, 1);
                    sep = ", ";
                }
                if (which & 4) {
                    strcat(rule, sep);
                    strcat(rule, "paths: ");
                    RND_LIST(rule, r_paths, 1);
                }
                strcat(rule, "}]");
                part = ", ";
            }
            if (parts & 4) {
                strcat(rule, part);
                strcat(rule, "when: [");
                strcat(rule, PICK(r_conds));
                if (rnd(3) == 0) {
                    strcat(rule, ", ");
                    strcat(rule, PICK(r_conds));
                }
                strcat(rule, "]");
            }
            strcat(rule, "}");
            size_t len = strlen(spec);
            snprintf(spec + len, sizeof(spec) - len, "%s%s", r ? ", " : "", rule);
        }
        strcat(spec, "]}");
        if (nr == 0) snprintf(spec, sizeof(spec), "{action: %s}", PICK(r_actions));
        size_t len = strlen(yaml);
        snprintf(yaml + len, cap - len,
                 "---\napiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
                 "metadata: {name: p%d, namespace: shop}\nspec: %s\n",
                 (p * 7 + shift) % 11, spec);
    }
}

static void test_against_reference(void)
{
    static char yaml[64 * 1024];
    static const char *const sources[] = {"10.1.1.1",  "::ffff:10.2.2.2", "2001:db8::5",
                                          "192.0.2.1", "192.0.2.2",       NULL};
    static const char *const paths[] = {"/a", "/a/x.json", "/b/c", "/z", "/a/"};
    static const char *const headers[] = {"x-t: 1", "x-t: 3", "x-u: 1", NULL};
    static const int hours[] = {-1, 3, 12, 23, 8};
    static const uint16_t ports[] = {80, 8080, 9000, 443};
    int compared = 0, allowed = 0, denied = 0, audited = 0;
    for (int set = 0; set < 400; set++) {
        rnd_policies(yaml, sizeof(yaml));
        ward_policy_set_t ps;
        ward_policy_error_t err;
        ward_policy_set_init(&ps);
        int rc = ward_policy_parse(yaml, strlen(yaml), "rnd.yaml", &ps, &err);
        if (rc != 0)
            fprintf(stderr, "\n%s\n  %d:%d: %s\n", yaml, err.line, err.column, err.message);
        CU_ASSERT_EQUAL_FATAL(rc, 0);
        uint8_t *bytes = NULL;
        size_t len = 0;
        CU_ASSERT_EQUAL_FATAL(ward_policy_snapshot_for(&ps, TARGET, 1, &bytes, &len), 0);
        Ward__V1__PolicySnapshot *snap = ward__v1__policy_snapshot__unpack(NULL, len, bytes);
        CU_ASSERT_PTR_NOT_NULL_FATAL(snap);
        ward_authz_t *a = NULL;
        CU_ASSERT_EQUAL_FATAL(ward_authz_compile_packed(bytes, len, &a, NULL), 0);
        for (int q = 0; q < 200; q++) {
            rq_t r = http(PICK(r_peers), PICK(r_methods), PICK(paths));
            if (rnd(4) == 0) r.method = r.path = NULL;
            r.port = ports[rnd(4)];
            r.source = PICK(sources);
            r.hour = hours[rnd(5)];
            r.headers[0] = PICK(headers);
            if (r.headers[0]) r.headers[1] = PICK(headers);
            ward_authz_result_t want, got = eval(a, &r);
            char names[3][64];
            ref_eval(snap, &r, &want, names);
            int ok = got.decision == want.decision && same(got.reason, want.reason) &&
                     same(got.policy, want.policy) && got.rule == want.rule &&
                     same(got.audit_policy, want.audit_policy);
            if (!ok) {
                fprintf(stderr,
                        "\n%s\n  peer %s port %u %s %s src %s hour %d hdr %s\n  want %s %s r%d "
                        "a=%s\n  got  %s %s r%d a=%s\n",
                        yaml, r.peer ? r.peer : "-", r.port, r.method ? r.method : "TCP",
                        r.path ? r.path : "", r.source ? r.source : "-", r.hour,
                        r.headers[0] ? r.headers[0] : "-", want.reason,
                        want.policy ? want.policy : "-", want.rule,
                        want.audit_policy ? want.audit_policy : "-", got.reason,
                        got.policy ? got.policy : "-", got.rule,
                        got.audit_policy ? got.audit_policy : "-");
                CU_FAIL_FATAL("authz disagrees with the reference evaluator");
            }
            compared++;
            allowed += got.decision == ALLOW_;
            denied += got.decision == DENY_ && got.policy != NULL;
            audited += got.audit_policy != NULL;
        }
        ward_authz_unref(a);
        ward__v1__policy_snapshot__free_unpacked(snap, NULL);
        ward_free(bytes);
        ward_policy_set_free(&ps);
    }
    /* The random sets must exercise every outcome for the comparison to mean something. */
    CU_ASSERT(compared > 40000);
    CU_ASSERT(allowed > compared / 20);
    CU_ASSERT(denied > compared / 50);
    CU_ASSERT(audited > compared / 50);
}

/* ---- allocations ---------------------------------------------------------------------------- */

static long live;
static int fail_at, allocs;

static void *t_malloc(size_t n)
{
    if (++allocs == fail_at) return NULL;
    void *p = malloc(n);
    live += p != NULL;
    return p;
}

static void *t_calloc(size_t c, size_t n)
{
    if (++allocs == fail_at) return NULL;
    void *p = calloc(c, n);
    live += p != NULL;
    return p;
}

static void *t_realloc(void *p, size_t n)
{
    if (++allocs == fail_at) return NULL;
    void *q = realloc(p, n);
    live += p == NULL && q != NULL;
    return q;
}

static void t_free(void *p)
{
    live -= p != NULL;
    free(p);
}

static const char rich[] =
    DOC("orders-read",
        "\n  action: ALLOW\n  rules:\n"
        "  - from: [{identities: ['" WEB "', 'spiffe://td/ns/ops/*', '*']}, {namespaces: [dev]}]\n"
        "    to:   [{ports: [8080], methods: [GET, HEAD, PURGE], paths: ['/orders/*', '/healthz', "
        "'*.json', '*']}]\n"
        "    when: [{key: 'request.headers[x-tenant]', values: ['acme']},\n"
        "           {key: source.ip, values: ['198.18.0.0/15', '::ffff:10.0.0.0/104', "
        "'2001:db8::/32']}, {key: time.hour, values: ['8-18', '22-6']}]\n"
        "  - from: [{identities: ['spiffe://td/ns/shop/sa/web-*', 'spiffe://td/ns/sh*']}]")
        DOC("no-admin", "{action: DENY, rules: [{to: [{paths: ['/admin/*']}]}]}")
            DOC("watch", "{action: AUDIT, rules: [{from: [{namespaces: [ops, shop]}]}]}");

/* Fails allocation N of a compile for every N until one succeeds: WARD_ENOMEM, nothing allocated
 * left behind, never a crash; then evaluation makes no allocation at all. */
static void test_allocation_failures(void)
{
    static const ward_allocator_t counting = {t_malloc, t_realloc, t_calloc, t_free};
    ward_policy_set_t set;
    uint8_t *bytes = NULL;
    size_t len = 0;
    ward_policy_set_init(&set);
    CU_ASSERT_EQUAL_FATAL(ward_policy_parse(rich, strlen(rich), "rich.yaml", &set, NULL), 0);
    CU_ASSERT_EQUAL_FATAL(ward_policy_snapshot_for(&set, TARGET, 3, &bytes, &len), 0);
    ward_policy_set_free(&set);

    int injected = 0;
    ward_authz_t *a = NULL;
    for (fail_at = 1; fail_at < 10000; fail_at++) {
        const char *why = NULL;
        allocs = 0;
        live = 0;
        a = NULL;
        CU_ASSERT_EQUAL_FATAL(ward_alloc_install(&counting), 0);
        int rc = ward_authz_compile_packed(bytes, len, &a, &why);
        ward_alloc_install(NULL);
        if (allocs < fail_at) {
            CU_ASSERT_EQUAL(rc, 0);
            break;
        }
        injected++;
        if (rc != WARD_ENOMEM) fprintf(stderr, "\n  allocation %d: rc %d\n", fail_at, rc);
        CU_ASSERT_EQUAL(rc, WARD_ENOMEM);
        CU_ASSERT_PTR_NULL(a);
        CU_ASSERT_EQUAL(live, 0);
    }
    CU_ASSERT(injected >= 4);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT(live > 0);

    /* Evaluation allocates nothing, whatever the path it takes. */
    fail_at = 0;
    allocs = 0;
    ward_alloc_install(&counting);
    rq_t r = http(WEB, "GET", "/orders/1");
    r.headers[0] = "x-tenant: acme";
    r.source = "::ffff:10.0.0.9";
    r.hour = 23;
    ward_authz_result_t res1 = eval(a, &r);
    rq_t d = http(OPS, "GET", "/admin/x");
    ward_authz_result_t res2 = eval(a, &d);
    rq_t t = tcp(NULL, 1);
    ward_authz_result_t res3 = eval(a, &t);
    ward_alloc_install(NULL);
    CU_ASSERT_EQUAL(allocs, 0);
    CU_ASSERT_EQUAL(res1.decision, ALLOW_);
    CU_ASSERT_STRING_EQUAL(res1.audit_policy, "shop/watch");
    CU_ASSERT_STRING_EQUAL(res2.reason, "denied_by_policy");
    CU_ASSERT_STRING_EQUAL(res3.reason, "denied_by_policy"); /* the deny has paths only */

    /* The last reference frees everything the compile allocated. */
    ward_alloc_install(&counting);
    ward_authz_unref(a);
    ward_alloc_install(NULL);
    CU_ASSERT_EQUAL(live, 0);
    ward_free(bytes);
}

void ward_unit_register(void)
{
    WARD_SUITE("authz", WARD_TEST(test_mesh_defaults), WARD_TEST(test_deny_beats_allow),
               WARD_TEST(test_first_match_order), WARD_TEST(test_design_example),
               WARD_TEST(test_ports_methods_paths), WARD_TEST(test_wildcards),
               WARD_TEST(test_namespaces), WARD_TEST(test_unauthenticated), WARD_TEST(test_tcp),
               WARD_TEST(test_source_ip), WARD_TEST(test_hours), WARD_TEST(test_headers),
               WARD_TEST(test_refusals), WARD_TEST(test_refcount),
               WARD_TEST(test_header_name_lowercased), WARD_TEST(test_against_reference),
               WARD_TEST(test_allocation_failures));
}
