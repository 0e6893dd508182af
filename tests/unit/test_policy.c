/* test_policy.c — the policy loader (lib/policy.c): the DESIGN.md example round-tripped through a
 * packed snapshot, every validation error at its exact line:column, YAML features refused, limits,
 * selection and hashing per identity, ConfigMap-style directories (..data symlink swaps), and the
 * sample files of tests/policy/ (valid ones load; each invalid one fails where its comment says).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "unit.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/policy.h"

#ifndef WARD_POLICY_SAMPLES
#define WARD_POLICY_SAMPLES "tests/policy"
#endif

#define HEAD                                                                                       \
    "apiVersion: ward.dev/v1\n"                                                                    \
    "kind: AuthorizationPolicy\n"                                                                  \
    "metadata: {name: p, namespace: shop}\n"

/* DESIGN.md's example with the header key quoted (see test_design_example_unquoted). */
static const char design[] =
    "apiVersion: ward.dev/v1\n"
    "kind: AuthorizationPolicy\n"
    "metadata: {name: orders-read, namespace: shop}\n"
    "spec:\n"
    "  selector: {identity: \"spiffe://cluster.local/ns/shop/sa/orders\"}   # whose inbound "
    "traffic\n"
    "  action: ALLOW            # ALLOW | DENY | AUDIT; DENY wins over ALLOW; no ALLOW match → "
    "deny\n"
    "  rules:\n"
    "  - from: [{identities: [\"spiffe://cluster.local/ns/shop/sa/web\", "
    "\"spiffe://cluster.local/ns/ops/*\"]}]\n"
    "    to:   [{ports: [8080], methods: [GET, HEAD], paths: [\"/orders/*\", \"/healthz\"]}]\n"
    "    when: [{key: \"request.headers[x-tenant]\", values: [\"acme\"]},\n"
    "           {key: source.ip, values: [\"198.18.0.0/15\"]}, {key: time.hour, values: "
    "[\"8-18\"]}]\n";

static const char *samples(void)
{
    const char *d = getenv("WARD_POLICY_DIR");
    return d ? d : WARD_POLICY_SAMPLES;
}

static int parse(ward_policy_set_t *set, const char *text, ward_policy_error_t *err)
{
    return ward_policy_parse(text, strlen(text), "test.yaml", set, err);
}

static Ward__V1__PolicySnapshot *snapshot(const ward_policy_set_t *set, const char *id,
                                          uint64_t version)
{
    uint8_t *bytes = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(ward_policy_snapshot_for(set, id, version, &bytes, &len), 0);
    CU_ASSERT_PTR_NOT_NULL_FATAL(bytes);
    Ward__V1__PolicySnapshot *s = ward__v1__policy_snapshot__unpack(NULL, len, bytes);
    ward_free(bytes);
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    return s;
}

static void test_design_example(void)
{
    ward_policy_set_t set;
    ward_policy_error_t err;
    ward_policy_set_init(&set);
    CU_ASSERT_EQUAL_FATAL(parse(&set, design, &err), 0);
    CU_ASSERT_EQUAL(ward_policy_set_count(&set), 1);
    CU_ASSERT_EQUAL(set.mesh_default, WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_DENY);

    Ward__V1__PolicySnapshot *s = snapshot(&set, "spiffe://cluster.local/ns/shop/sa/orders", 42);
    CU_ASSERT_EQUAL(s->version, 42);
    CU_ASSERT_EQUAL(s->mesh_default, WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_DENY);
    CU_ASSERT_EQUAL_FATAL(s->n_policies, 1);
    Ward__V1__AuthorizationPolicy *p = s->policies[0];
    CU_ASSERT_STRING_EQUAL(p->name, "orders-read");
    CU_ASSERT_STRING_EQUAL(p->namespace_, "shop");
    CU_ASSERT_STRING_EQUAL(p->selector_identity, "spiffe://cluster.local/ns/shop/sa/orders");
    CU_ASSERT_EQUAL(p->action, WARD__V1__ACTION__ACTION_ALLOW);
    CU_ASSERT_EQUAL_FATAL(p->n_rules, 1);
    Ward__V1__Rule *r = p->rules[0];

    CU_ASSERT_EQUAL_FATAL(r->n_from, 1);
    CU_ASSERT_EQUAL_FATAL(r->from[0]->n_identities, 2);
    CU_ASSERT_STRING_EQUAL(r->from[0]->identities[0], "spiffe://cluster.local/ns/shop/sa/web");
    CU_ASSERT_STRING_EQUAL(r->from[0]->identities[1], "spiffe://cluster.local/ns/ops/*");
    CU_ASSERT_EQUAL(r->from[0]->n_namespaces, 0);

    CU_ASSERT_EQUAL_FATAL(r->n_to, 1);
    Ward__V1__Operation *o = r->to[0];
    CU_ASSERT_EQUAL_FATAL(o->n_ports, 1);
    CU_ASSERT_EQUAL(o->ports[0], 8080);
    CU_ASSERT_EQUAL_FATAL(o->n_methods, 2);
    CU_ASSERT_STRING_EQUAL(o->methods[0], "GET");
    CU_ASSERT_STRING_EQUAL(o->methods[1], "HEAD");
    CU_ASSERT_EQUAL_FATAL(o->n_paths, 2);
    CU_ASSERT_STRING_EQUAL(o->paths[0], "/orders/*");
    CU_ASSERT_STRING_EQUAL(o->paths[1], "/healthz");

    CU_ASSERT_EQUAL_FATAL(r->n_when, 3);
    CU_ASSERT_STRING_EQUAL(r->when[0]->key, "request.headers[x-tenant]");
    CU_ASSERT_EQUAL_FATAL(r->when[0]->n_values, 1);
    CU_ASSERT_STRING_EQUAL(r->when[0]->values[0], "acme");
    CU_ASSERT_STRING_EQUAL(r->when[1]->key, "source.ip");
    CU_ASSERT_EQUAL_FATAL(r->when[1]->n_values, 1);
    CU_ASSERT_STRING_EQUAL(r->when[1]->values[0], "198.18.0.0/15");
    CU_ASSERT_STRING_EQUAL(r->when[2]->key, "time.hour");
    CU_ASSERT_EQUAL_FATAL(r->when[2]->n_values, 1);
    CU_ASSERT_STRING_EQUAL(r->when[2]->values[0], "8-18");
    ward__v1__policy_snapshot__free_unpacked(s, NULL);

    /* The mesh default travels with every snapshot, even one selecting nothing. */
    set.mesh_default = WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_AUDIT;
    s = snapshot(&set, "spiffe://cluster.local/ns/other/sa/x", 0);
    CU_ASSERT_EQUAL(s->n_policies, 0);
    CU_ASSERT_EQUAL(s->version, 0);
    CU_ASSERT_EQUAL(s->mesh_default, WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_AUDIT);
    ward__v1__policy_snapshot__free_unpacked(s, NULL);
    ward_policy_set_free(&set);
}

/* As printed in DESIGN.md, `key: request.headers[x-tenant]` sits in a flow mapping, where a plain
 * scalar cannot contain '[': that is a YAML syntax error (PyYAML agrees), reported at the '['. */
static void test_design_example_unquoted(void)
{
    static const char quoted[] = "\"request.headers[x-tenant]\"";
    char text[sizeof(design)];
    const char *k = strstr(design, quoted);
    CU_ASSERT_PTR_NOT_NULL_FATAL(k);
    size_t head = (size_t)(k - design);
    memcpy(text, design, head);
    memcpy(text + head, quoted + 1, sizeof(quoted) - 3);
    strcpy(text + head + sizeof(quoted) - 3, k + sizeof(quoted) - 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "{key: request.headers[x-tenant], values"));
    ward_policy_set_t set;
    ward_policy_error_t err;
    ward_policy_set_init(&set);
    CU_ASSERT_EQUAL(parse(&set, text, &err), WARD_EPARSE);
    CU_ASSERT_EQUAL(err.line, 10);
    CU_ASSERT_EQUAL(err.column, 33);
    CU_ASSERT_STRING_EQUAL(err.file, "test.yaml");
    CU_ASSERT_EQUAL(ward_policy_set_count(&set), 0);
    ward_policy_set_free(&set);
}

static void test_multi_document(void)
{
    static const char text[] = "# leading comment\n"
                               "---\n"
                               "apiVersion: ward.dev/v1\n"
                               "kind: AuthorizationPolicy\n"
                               "metadata: {name: zeta, namespace: shop}\n"
                               "spec: {action: DENY, rules: [{to: [{paths: ['/admin/*']}]}]}\n"
                               "---\n"
                               "---\n"
                               "# an empty document above, a comment-only one here\n"
                               "---\n"
                               "apiVersion: ward.dev/v1\n"
                               "kind: AuthorizationPolicy\n"
                               "metadata: {name: alpha, namespace: shop}\n"
                               "spec: {action: AUDIT}\n"
                               "...\n"
                               "---\n"
                               "apiVersion: ward.dev/v1\n"
                               "kind: AuthorizationPolicy\n"
                               "metadata: {name: alpha, namespace: ops}\n"
                               "spec: {}\n";
    ward_policy_set_t set;
    ward_policy_error_t err;
    ward_policy_set_init(&set);
    CU_ASSERT_EQUAL_FATAL(parse(&set, text, &err), 0);
    CU_ASSERT_EQUAL_FATAL(ward_policy_set_count(&set), 3);
    /* (namespace, name) order, whatever the order in the file. */
    CU_ASSERT_STRING_EQUAL(ward_policy_set_get(&set, 0)->namespace_, "ops");
    CU_ASSERT_STRING_EQUAL(ward_policy_set_get(&set, 1)->name, "alpha");
    CU_ASSERT_STRING_EQUAL(ward_policy_set_get(&set, 2)->name, "zeta");
    CU_ASSERT_EQUAL(ward_policy_set_get(&set, 1)->action, WARD__V1__ACTION__ACTION_AUDIT);
    CU_ASSERT_EQUAL(ward_policy_set_get(&set, 2)->action, WARD__V1__ACTION__ACTION_DENY);
    /* Default action, and an absent selector is recorded as empty. */
    CU_ASSERT_EQUAL(ward_policy_set_get(&set, 0)->action, WARD__V1__ACTION__ACTION_ALLOW);
    CU_ASSERT_STRING_EQUAL(ward_policy_set_get(&set, 0)->selector_identity, "");
    CU_ASSERT_EQUAL(ward_policy_set_get(&set, 0)->n_rules, 0);
    CU_ASSERT_PTR_NULL(ward_policy_set_get(&set, 3));

    /* Empty input and comment-only input: nothing, no error. */
    CU_ASSERT_EQUAL(ward_policy_parse("", 0, NULL, &set, &err), 0);
    CU_ASSERT_EQUAL(parse(&set, "# nothing here\n", &err), 0);
    CU_ASSERT_EQUAL(ward_policy_set_count(&set), 3);
    ward_policy_set_free(&set);
}

typedef struct {
    const char *yaml;
    int line, column;
    const char *message; /* a substring of the expected message */
    int rc;
} error_case_t;

static void check_error(const error_case_t *t)
{
    ward_policy_set_t set;
    ward_policy_error_t err;
    ward_policy_set_init(&set);
    int rc = parse(&set, t->yaml, &err);
    int ok = rc == t->rc && err.line == t->line && err.column == t->column &&
             strstr(err.message, t->message) != NULL;
    if (!ok)
        fprintf(stderr, "\n  want %d:%d '%s' (%d)\n  got  %d:%d '%s' (%d)\n  for: %s\n", t->line,
                t->column, t->message, t->rc, err.line, err.column, err.message, rc, t->yaml);
    CU_ASSERT(ok);
    CU_ASSERT_STRING_EQUAL(err.file, "test.yaml");
    CU_ASSERT_EQUAL(ward_policy_set_count(&set), 0);
    ward_policy_set_free(&set);
}

/* One case per rule of the schema; columns count from 1 at the start of the offending node. */
static void test_validation_errors(void)
{
    static const error_case_t cases[] = {
        {"apiVersion: ward.dev/v2\nkind: AuthorizationPolicy\n", 1, 13,
         "apiVersion: must be 'ward.dev/v1', got 'ward.dev/v2'", WARD_EPARSE},
        {"kind: AuthorizationPolicy\nmetadata: {}\n", 1, 1, "missing required field 'apiVersion'",
         WARD_EPARSE},
        {"apiVersion: ward.dev/v1\nkind: AuthorizationPolicyList\n", 2, 7,
         "kind: must be 'AuthorizationPolicy'", WARD_EPARSE},
        {"- apiVersion: ward.dev/v1\n", 1, 1, "expected a mapping, got a list", WARD_EPARSE},
        {HEAD, 1, 1, "missing required field 'spec'", WARD_EPARSE},
        {"apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\nspec: {}\n", 1, 1,
         "missing required field 'metadata'", WARD_EPARSE},
        /* metadata */
        {"apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {namespace: shop}\nspec: "
         "{}\n",
         3, 11, "metadata: missing required field 'name'", WARD_EPARSE},
        {"apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: -orders, "
         "namespace: shop}\nspec: {}\n",
         3, 18, "invalid name '-orders'", WARD_EPARSE},
        {"apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: a..b, namespace: "
         "shop}\nspec: {}\n",
         3, 18, "not a DNS-1123 subdomain", WARD_EPARSE},
        {"apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\nspec: {}\n", 4,
         3, "missing required field 'namespace'", WARD_EPARSE},
        {"apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: "
         "Shop}\nspec: {}\n",
         3, 32, "invalid namespace 'Shop'", WARD_EPARSE},
        {"apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: "
         "a234567890123456789012345678901234567890123456789012345678901234}\nspec: {}\n",
         3, 32, "longer than 63", WARD_EPARSE},
        {"apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: "
         "shop, uid: x}\nspec: {}\n",
         3, 38, "unknown field 'uid' in metadata", WARD_EPARSE},
        {"apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: "
         "shop, labels: {a: b, a: c}}\nspec: {}\n",
         3, 53, "duplicate field 'a' in metadata.labels", WARD_EPARSE},
        /* spec */
        {HEAD "spec: []\n", 4, 7, "spec: expected a mapping, got a list", WARD_EPARSE},
        {HEAD "spec:\n  selector: {identity: \"spiffe://cluster.local/ns/shop/sa/\"}\n", 5, 24,
         "invalid SPIFFE id", WARD_EPARSE},
        {HEAD "spec:\n  selector: {identity: \"spiffe://cluster.local/ns/shop/*\"}\n", 5, 24,
         "invalid SPIFFE id", WARD_EPARSE},
        {HEAD "spec:\n  selector: {}\n", 5, 13, "missing required field 'identity'", WARD_EPARSE},
        {HEAD "spec:\n  selector: {identity: a, labels: {}}\n", 5, 27,
         "unknown field 'labels' in spec.selector", WARD_EPARSE},
        {HEAD "spec:\n  action: Allow\n", 5, 11, "must be ALLOW, DENY or AUDIT, got 'Allow'",
         WARD_EPARSE},
        {HEAD "spec:\n  action: ALLOW\n  action: DENY\n", 6, 3, "duplicate field 'action' in spec",
         WARD_EPARSE},
        {HEAD "spec:\n  rules: []\n", 5, 10, "spec.rules: must not be empty", WARD_EPARSE},
        {HEAD "spec:\n  rules: {from: []}\n", 5, 10, "spec.rules: expected a list", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - {}\n", 6, 5, "spec.rules[0]: empty rule", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  -\n", 6, 4, "spec.rules[0]: expected a mapping, got null",
         WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - from: [{namespaces: [a]}]\n    verbs: [GET]\n", 7, 5,
         "unknown field 'verbs' in spec.rules[0]", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{port: [80]}]\n", 6, 11,
         "unknown field 'port' in spec.rules[0].to[0]", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{ports: [80], ports: [81]}]\n", 6, 24,
         "duplicate field 'ports' in spec.rules[0].to[0]", WARD_EPARSE},
        /* from */
        {HEAD "spec:\n  rules:\n  - from: []\n", 6, 11, "spec.rules[0].from: must not be empty",
         WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - from: [{}]\n", 6, 12, "empty source", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - from: [{identities: []}]\n", 6, 25,
         "identities: must not be empty", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - from: [{identities: [\"spiffe://td/*/sa/web\"]}]\n", 6, 26,
         "'*' is only allowed as the last character", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - from: [{identities: [\"spiffe://td*\"]}]\n", 6, 26,
         "must not cut the trust domain", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - from: [{identities: [\"spiffe://*\"]}]\n", 6, 26,
         "invalid identity", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - from: [{identities: [\"spiffe://td//*\"]}]\n", 6, 26,
         "invalid identity", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - from: [{identities: [\"**\"]}]\n", 6, 26,
         "'*' is only allowed as the last character", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - from: [{identities: [web]}]\n", 6, 26,
         "scheme must be spiffe://", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - from: [{identities: [[a]]}]\n", 6, 26,
         "identities[0]: expected a string, got a list", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - from: [{namespaces: [ok, not_ok]}]\n", 6, 30,
         "namespaces[1]: invalid namespace 'not_ok'", WARD_EPARSE},
        /* to */
        {HEAD "spec:\n  rules:\n  - to: [{}]\n", 6, 10, "empty operation", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{ports: [80, 0]}]\n", 6, 23,
         "ports[1]: ports are integers in 1..65535, got '0'", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{ports: [65536]}]\n", 6, 19, "got '65536'", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{ports: [\"80\"]}]\n", 6, 19, "got '80'", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{ports: [080]}]\n", 6, 19, "got '080'", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{ports: [-1]}]\n", 6, 19, "got '-1'", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{ports: []}]\n", 6, 18, "ports: must not be empty",
         WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{methods: [GET, get]}]\n", 6, 26, "invalid method 'get'",
         WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{methods: [\"*\"]}]\n", 6, 21, "invalid method",
         WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{methods: [\"GE T\"]}]\n", 6, 21, "invalid method",
         WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{paths: [orders]}]\n", 6, 19, "invalid path 'orders'",
         WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{paths: [\"/a/*/b\"]}]\n", 6, 19,
         "must be the last segment", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{paths: [\"/a*\"]}]\n", 6, 19, "must be the last segment",
         WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{paths: [\"*a*\"]}]\n", 6, 19, "only one '*'",
         WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{paths: [\"/a/../b\"]}]\n", 6, 19, "dot segment",
         WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{paths: [\"/a/.\"]}]\n", 6, 19, "dot segment",
         WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{paths: [\"/a//b\"]}]\n", 6, 19, "empty path segment",
         WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{paths: [\"/a?x=1\"]}]\n", 6, 19, "query or fragment",
         WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{paths: [\"/%61dmin\"]}]\n", 6, 19,
         "percent-encoded unreserved", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{paths: [\"/a%2\"]}]\n", 6, 19,
         "malformed percent-encoding", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - to: [{paths: [\"/a b\"]}]\n", 6, 19, "printable ASCII",
         WARD_EPARSE},
        /* when */
        {HEAD "spec:\n  rules:\n  - when: [{key: source.ip}]\n", 6, 12,
         "missing required field 'values'", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{values: [a]}]\n", 6, 12, "missing required field 'key'",
         WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: source.ip, values: []}]\n", 6, 37,
         "values: must not be empty", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: request.method, values: [GET]}]\n", 6, 18,
         "unknown key 'request.method'", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: \"request.headers[X-Tenant]\", values: [a]}]\n", 6,
         18, "header names are lowercase HTTP tokens", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: \"request.headers[]\", values: [a]}]\n", 6, 18,
         "unknown key", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: \"request.headers[a:b]\", values: [a]}]\n", 6, 18,
         "header names are lowercase HTTP tokens", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: \"request.headers[x-a]\", values: [\"a\\nb\"]}]\n",
         6, 51, "control character", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: source.ip, values: [\"10.0.0.0/33\"]}]\n", 6, 38,
         "prefix length must be 0..32", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: source.ip, values: [\"10.0.0.0/\"]}]\n", 6, 38,
         "prefix length must be 0..32", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: source.ip, values: [\"10.1.0.0/8\"]}]\n", 6, 38,
         "bits set beyond the prefix length", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: source.ip, values: [\"10.0.0.0/08\"]}]\n", 6, 38,
         "prefix length", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: source.ip, values: [\"010.0.0.1\"]}]\n", 6, 38,
         "not an IPv4 or IPv6 address", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: source.ip, values: [\"fe80::1%eth0\"]}]\n", 6, 38,
         "not an IPv4 or IPv6 address", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: source.ip, values: [\"2001:db8::/129\"]}]\n", 6,
         38, "prefix length must be 0..128", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: source.ip, values: [\"2001:db8::1/32\"]}]\n", 6,
         38, "bits set beyond", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: time.hour, values: [\"24\"]}]\n", 6, 38,
         "hours are", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: time.hour, values: [\"8-\"]}]\n", 6, 38,
         "hours are", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: time.hour, values: [\"-8\"]}]\n", 6, 38,
         "hours are", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: time.hour, values: [\"1-2-3\"]}]\n", 6, 38,
         "hours are", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: time.hour, values: [\"123\"]}]\n", 6, 38,
         "hours are", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - when: [{key: time.hour, values: [8, ~]}]\n", 6, 41,
         "values[1]: expected a string, got null", WARD_EPARSE},
        /* YAML itself */
        {HEAD "spec:\n  action: ALLOW\n rules: []\n", 6, 2, "did not find expected key",
         WARD_EPARSE},
        {"apiVersion: \"ward.dev/v1\n", 2, 1, "YAML:", WARD_EPARSE},
        {"kind: \x01\n", 1, 7, "control characters are not allowed", WARD_EPARSE},
        /* libyaml places a bad UTF-8 sequence at the octet that breaks it: here the second. */
        {"kind: \"\xc3\x28\"\n", 1, 9, "invalid trailing UTF-8 octet", WARD_EPARSE},
        {"kind: \"\\0\"\n", 1, 7, "NUL byte", WARD_EPARSE},
        {HEAD "spec: {}\n? [a, b]\n: c\n", 5, 3, "keys must be strings", WARD_EPARSE},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        check_error(&cases[i]);
}

static void test_yaml_features_refused(void)
{
    static const error_case_t cases[] = {
        {HEAD "spec:\n  rules:\n  - from: [{namespaces: [a]}]\n  - from: *f\n", 7, 11,
         "YAML aliases are not allowed ('*f')", WARD_EPARSE},
        {HEAD "spec:\n  rules:\n  - from: &f [{namespaces: [a]}]\n  - from: *f\n", 6, 11,
         "YAML anchors are not allowed ('&f')", WARD_EPARSE},
        {"apiVersion: &v ward.dev/v1\n", 1, 13, "YAML anchors are not allowed", WARD_EPARSE},
        {HEAD "spec: &s {}\n", 4, 7, "YAML anchors are not allowed", WARD_EPARSE},
        {HEAD "spec: {<<: *base}\n", 4, 12, "YAML aliases are not allowed", WARD_EPARSE},
        /* billion laughs: refused at the first anchor, before anything is expanded. */
        {"a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
         "b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
         "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n",
         1, 4, "YAML anchors are not allowed", WARD_EPARSE},
        {HEAD "spec:\n  action: !!str ALLOW\n", 5, 11, "YAML tags are not allowed", WARD_EPARSE},
        {HEAD "spec: !policy {}\n", 4, 7, "YAML tags are not allowed", WARD_EPARSE},
        {"--- !!map\napiVersion: ward.dev/v1\n", 1, 5, "YAML tags are not allowed", WARD_EPARSE},
        {"%TAG !w! tag:ward.dev,2026:\n---\napiVersion: ward.dev/v1\n", 1, 1,
         "%TAG directives are not allowed", WARD_EPARSE},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        check_error(&cases[i]);
}

/* Appends to a growing heap buffer (tests only). */
typedef struct {
    char *p;
    size_t len, cap;
} sbuf_t;

static void sb_add(sbuf_t *b, const char *s)
{
    size_t n = strlen(s);
    if (b->len + n + 1 > b->cap) {
        b->cap = (b->len + n + 1) * 2;
        b->p = realloc(b->p, b->cap);
        CU_ASSERT_PTR_NOT_NULL_FATAL(b->p);
    }
    memcpy(b->p + b->len, s, n + 1);
    b->len += n;
}

static void test_limits(void)
{
    ward_policy_set_t set;
    ward_policy_error_t err;
    ward_policy_set_init(&set);

    /* File size: exactly 1 MiB of comment parses; one byte more does not. */
    char *big = malloc(WARD_POLICY_MAX_FILE + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, ' ', WARD_POLICY_MAX_FILE + 1);
    big[0] = '#';
    big[WARD_POLICY_MAX_FILE - 1] = '\n';
    CU_ASSERT_EQUAL(ward_policy_parse(big, WARD_POLICY_MAX_FILE, "big", &set, &err), 0);
    CU_ASSERT_EQUAL(ward_policy_parse(big, WARD_POLICY_MAX_FILE + 1, "big", &set, &err),
                    WARD_ETOOLONG);
    CU_ASSERT_EQUAL(err.line, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "larger than"));
    free(big);

    /* Rules: 10 000 in one file (over two documents) load, the 10 001st is refused where it is. */
    sbuf_t b = {0};
    sb_add(&b, HEAD "spec:\n  rules:\n");
    for (int i = 0; i < 5000; i++)
        sb_add(&b, "  - from: [{namespaces: [a]}]\n");
    sb_add(&b, "---\napiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
               "metadata: {name: q, namespace: shop}\nspec:\n  rules:\n");
    for (int i = 0; i < 5000; i++)
        sb_add(&b, "  - to: [{ports: [80]}]\n");
    CU_ASSERT_EQUAL(parse(&set, b.p, &err), 0);
    CU_ASSERT_EQUAL(ward_policy_set_count(&set), 2);
    ward_policy_set_free(&set);
    sb_add(&b, "  - to: [{ports: [81]}]\n");
    CU_ASSERT_EQUAL(parse(&set, b.p, &err), WARD_ETOOLONG);
    CU_ASSERT_EQUAL(err.line, 5 + 5000 + 6 + 5000 + 1);
    CU_ASSERT_EQUAL(err.column, 5);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "more than 10000 rules"));
    CU_ASSERT_EQUAL(ward_policy_set_count(&set), 0);
    free(b.p);

    /* The limit is per file: each parse call counts afresh. */
    b = (sbuf_t){0};
    sb_add(&b, HEAD "spec:\n  rules:\n");
    for (int i = 0; i < 6000; i++)
        sb_add(&b, "  - from: [{namespaces: [a]}]\n");
    CU_ASSERT_EQUAL(parse(&set, b.p, &err), 0);
    b.p[strstr(b.p, "name: p") - b.p + 6] = 'r';
    CU_ASSERT_EQUAL(parse(&set, b.p, &err), 0);
    CU_ASSERT_EQUAL(ward_policy_set_count(&set), 2);
    ward_policy_set_free(&set);
    free(b.p);

    /* Strings: 1024 bytes pass (as a label value), 1025 do not, keys included. */
    char s1024[1025], s1025[1026];
    memset(s1024, 'x', 1024);
    s1024[1024] = '\0';
    memset(s1025, 'x', 1025);
    s1025[1025] = '\0';
    char text[4096];
    snprintf(text, sizeof(text),
             "apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n"
             "  namespace: shop\n  labels: {a: %s}\nspec: {}\n",
             s1024);
    CU_ASSERT_EQUAL(parse(&set, text, &err), 0);
    ward_policy_set_free(&set);
    snprintf(text, sizeof(text),
             "apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n"
             "  namespace: shop\n  labels: {a: %s}\nspec: {}\n",
             s1025);
    CU_ASSERT_EQUAL(parse(&set, text, &err), WARD_ETOOLONG);
    CU_ASSERT_EQUAL(err.line, 6);
    CU_ASSERT_EQUAL(err.column, 15);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "longer than 1024 bytes"));
    /* (An implicit key is limited to 1024 characters by YAML itself: use an explicit one.) */
    snprintf(text, sizeof(text), HEAD "spec: {}\n? %s\n: 1\n", s1025);
    CU_ASSERT_EQUAL(parse(&set, text, &err), WARD_ETOOLONG);
    CU_ASSERT_EQUAL(err.line, 5);
    CU_ASSERT_EQUAL(err.column, 3);

    /* Nesting: the root mapping is level 1, so the 32nd '[' is the 33rd level. */
    char deep[256] = HEAD "spec: ";
    size_t at = strlen(deep);
    memset(deep + at, '[', 40);
    memset(deep + at + 40, ']', 40);
    strcpy(deep + at + 80, "\n");
    CU_ASSERT_EQUAL(parse(&set, deep, &err), WARD_ETOOLONG);
    CU_ASSERT_EQUAL(err.line, 4);
    CU_ASSERT_EQUAL(err.column, 7 + 31);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "nesting deeper than 32"));

    /* Labels: at most 256 entries. */
    b = (sbuf_t){0};
    sb_add(&b, "apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: p\n"
               "  namespace: shop\n  labels:\n");
    for (int i = 0; i < 257; i++) {
        char line[32];
        snprintf(line, sizeof(line), "    k%d: v\n", i);
        sb_add(&b, line);
    }
    sb_add(&b, "spec: {}\n");
    CU_ASSERT_EQUAL(parse(&set, b.p, &err), WARD_ETOOLONG);
    CU_ASSERT_EQUAL(err.line, 7);
    CU_ASSERT_EQUAL(err.column, 5);
    free(b.p);
    CU_ASSERT_EQUAL(ward_policy_set_count(&set), 0);
    ward_policy_set_free(&set);
}

static void test_valid_values(void)
{
    static const char text[] =
        HEAD "spec:\n"
             "  rules:\n"
             "  - from:\n"
             "    - identities: ['*', 'spiffe://td/*', 'spiffe://td/ns/shop/sa/web-*', "
             "'spiffe://td/ns/a/sa/b']\n"
             "      namespaces: [a, a-b, 0x]\n"
             "    to:\n"
             "    - ports: [1, 65535]\n"
             "      methods: [GET, M-SEARCH, PROPFIND]\n"
             "      paths: ['*', '*.json', '/', '/*', '/a/b/*', /pkg.Svc/Method, '/a/', "
             "'/%2F', '/~user']\n"
             "    when:\n"
             "    - {key: 'request.headers[x-b3-traceid]', values: ['', 'a b\tc']}\n"
             "    - {key: source.ip, values: [0.0.0.0/0, 10.0.0.1, '::/0', '::1', "
             "'2001:db8::/32', 10.0.0.0/8]}\n"
             "    - {key: time.hour, values: [0, 23, 22-6, '08-18']}\n";
    ward_policy_set_t set;
    ward_policy_error_t err;
    ward_policy_set_init(&set);
    int rc = parse(&set, text, &err);
    if (rc != 0) fprintf(stderr, "\n  %d:%d %s\n", err.line, err.column, err.message);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    const Ward__V1__Rule *r = ward_policy_set_get(&set, 0)->rules[0];
    CU_ASSERT_EQUAL(r->from[0]->n_identities, 4);
    CU_ASSERT_EQUAL(r->from[0]->n_namespaces, 3);
    CU_ASSERT_EQUAL(r->to[0]->ports[1], 65535);
    CU_ASSERT_EQUAL(r->to[0]->n_paths, 9);
    CU_ASSERT_STRING_EQUAL(r->when[0]->values[1], "a b\tc");
    CU_ASSERT_STRING_EQUAL(r->when[0]->values[0], "");
    CU_ASSERT_EQUAL(r->when[1]->n_values, 6);
    CU_ASSERT_STRING_EQUAL(r->when[2]->values[2], "22-6");
    ward_policy_set_free(&set);
}

static void test_duplicates_and_rollback(void)
{
    static const char one[] = HEAD "spec: {}\n";
    static const char two[] = "apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
                              "metadata: {name: q, namespace: shop}\nspec: {}\n"
                              "---\n" HEAD "spec: {action: DENY}\n";
    ward_policy_set_t set;
    ward_policy_error_t err;
    ward_policy_set_init(&set);
    CU_ASSERT_EQUAL_FATAL(ward_policy_parse(one, strlen(one), "one.yaml", &set, &err), 0);
    /* Same namespace/name again in another stream: refused at its name; q is rolled back. */
    CU_ASSERT_EQUAL(ward_policy_parse(two, strlen(two), "two.yaml", &set, &err), WARD_EPARSE);
    CU_ASSERT_STRING_EQUAL(err.file, "two.yaml");
    CU_ASSERT_EQUAL(err.line, 8);
    CU_ASSERT_EQUAL(err.column, 18);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "shop/p is already defined at one.yaml:3:18"));
    CU_ASSERT_EQUAL(ward_policy_set_count(&set), 1);
    CU_ASSERT_STRING_EQUAL(ward_policy_set_get(&set, 0)->name, "p");
    /* A later error in a stream rolls back the policies before it in the same stream. */
    static const char three[] = "apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
                                "metadata: {name: r, namespace: shop}\nspec: {}\n"
                                "---\nkind: nope\n";
    CU_ASSERT_EQUAL(parse(&set, three, &err), WARD_EPARSE);
    CU_ASSERT_EQUAL(ward_policy_set_count(&set), 1);
    /* Same name in another namespace is another policy. */
    CU_ASSERT_EQUAL(parse(&set,
                          "apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
                          "metadata: {name: p, namespace: ops}\nspec: {}\n",
                          &err),
                    0);
    CU_ASSERT_EQUAL(ward_policy_set_count(&set), 2);
    CU_ASSERT_EQUAL(ward_policy_parse(NULL, 0, NULL, &set, &err), WARD_EINVAL);
    CU_ASSERT_EQUAL(ward_policy_parse(one, strlen(one), NULL, NULL, NULL), WARD_EINVAL);
    ward_policy_set_free(&set);
    /* A freed set is empty and reusable; a NULL err is allowed. */
    CU_ASSERT_EQUAL(ward_policy_set_count(&set), 0);
    CU_ASSERT_EQUAL(ward_policy_parse(one, strlen(one), NULL, &set, NULL), 0);
    CU_ASSERT_EQUAL(ward_policy_parse(one, strlen(one), NULL, &set, NULL), WARD_EPARSE);
    ward_policy_set_free(&set);
}

/* shop: orders-only (selects orders), shop-wide (namespace-wide), web-only (selects web);
 * ops: ops-wide (namespace-wide); vm: db-exact (selects a non-Kubernetes id). */
static void build_selection(ward_policy_set_t *set, const char *shop_wide_path,
                            const char *ops_wide_ns, int reverse)
{
    char docs[5][512];
    snprintf(docs[0], sizeof(docs[0]),
             "apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
             "metadata: {name: orders-only, namespace: shop}\n"
             "spec:\n  selector: {identity: 'spiffe://cluster.local/ns/shop/sa/orders'}\n"
             "  rules: [{from: [{namespaces: [shop]}]}]\n");
    snprintf(docs[1], sizeof(docs[1]),
             "apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
             "metadata: {name: shop-wide, namespace: shop}\n"
             "spec: {action: DENY, rules: [{to: [{paths: ['%s']}]}]}\n",
             shop_wide_path);
    snprintf(docs[2], sizeof(docs[2]),
             "apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
             "metadata: {name: web-only, namespace: shop}\n"
             "spec: {selector: {identity: 'spiffe://cluster.local/ns/shop/sa/web'}}\n");
    snprintf(docs[3], sizeof(docs[3]),
             "apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
             "metadata: {name: ops-wide, namespace: ops}\n"
             "spec: {rules: [{from: [{namespaces: [%s]}]}]}\n",
             ops_wide_ns);
    snprintf(docs[4], sizeof(docs[4]),
             "apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
             "metadata: {name: db-exact, namespace: vm}\n"
             "spec: {selector: {identity: 'spiffe://cluster.local/vm/db'}}\n");
    ward_policy_error_t err;
    ward_policy_set_init(set);
    for (int i = 0; i < 5; i++) {
        const char *d = docs[reverse ? 4 - i : i];
        CU_ASSERT_EQUAL_FATAL(ward_policy_parse(d, strlen(d), "sel.yaml", set, &err), 0);
    }
}

static void expect_selection(const ward_policy_set_t *set, const char *id, const char *a,
                             const char *b)
{
    Ward__V1__PolicySnapshot *s = snapshot(set, id, 7);
    size_t want = (a != NULL) + (b != NULL);
    CU_ASSERT_EQUAL(s->n_policies, want);
    if (s->n_policies == want) {
        if (a) CU_ASSERT_STRING_EQUAL(s->policies[0]->name, a);
        if (b) CU_ASSERT_STRING_EQUAL(s->policies[1]->name, b);
    }
    ward__v1__policy_snapshot__free_unpacked(s, NULL);
}

static void test_selection(void)
{
    ward_policy_set_t set;
    build_selection(&set, "/admin/*", "ops", 0);
    CU_ASSERT_EQUAL(ward_policy_set_count(&set), 5);
    expect_selection(&set, "spiffe://cluster.local/ns/shop/sa/orders", "orders-only", "shop-wide");
    expect_selection(&set, "spiffe://cluster.local/ns/shop/sa/web", "shop-wide", "web-only");
    expect_selection(&set, "spiffe://cluster.local/ns/shop/sa/cart", "shop-wide", NULL);
    expect_selection(&set, "spiffe://cluster.local/ns/ops/sa/anything", "ops-wide", NULL);
    expect_selection(&set, "spiffe://cluster.local/ns/other/sa/x", NULL, NULL);
    /* A non-Kubernetes id: only an exact selector applies; no namespace can be derived. */
    expect_selection(&set, "spiffe://cluster.local/vm/db", "db-exact", NULL);
    expect_selection(&set, "spiffe://cluster.local/ns/shop", NULL, NULL);
    expect_selection(&set, "spiffe://cluster.local/ns/shop/sa/x/extra", NULL, NULL);
    expect_selection(&set, "spiffe://cluster.local/ns/shopx/sa/x", NULL, NULL);

    uint8_t *bytes = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL(ward_policy_snapshot_for(&set, "not-an-id", 1, &bytes, &len), WARD_ESPIFFE);
    CU_ASSERT_EQUAL(ward_policy_snapshot_for(&set, "spiffe://Bad/ns/a/sa/b", 1, &bytes, &len),
                    WARD_ESPIFFE);
    CU_ASSERT_EQUAL(ward_policy_snapshot_for(&set, NULL, 1, &bytes, &len), WARD_EINVAL);
    CU_ASSERT_PTR_NULL(bytes);
    ward_policy_set_free(&set);

    /* An empty set still packs a snapshot (version and default only). */
    ward_policy_set_init(&set);
    set.mesh_default = WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_ALLOW;
    Ward__V1__PolicySnapshot *s = snapshot(&set, "spiffe://td/ns/a/sa/b", 9);
    CU_ASSERT_EQUAL(s->n_policies, 0);
    CU_ASSERT_EQUAL(s->version, 9);
    CU_ASSERT_EQUAL(s->mesh_default, WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_ALLOW);
    ward__v1__policy_snapshot__free_unpacked(s, NULL);
    ward_policy_set_init(&set);
    CU_ASSERT_EQUAL(ward_policy_snapshot_for(&set, "spiffe://td/ns/a/sa/b", 0, &bytes, &len), 0);
    CU_ASSERT_PTR_NOT_NULL(bytes);
    CU_ASSERT_EQUAL(len, 0);
    ward_free(bytes);
}

static void test_hash(void)
{
    const char *orders = "spiffe://cluster.local/ns/shop/sa/orders";
    const char *web = "spiffe://cluster.local/ns/shop/sa/web";
    const char *ops = "spiffe://cluster.local/ns/ops/sa/x";
    const char *other = "spiffe://cluster.local/ns/other/sa/x";
    ward_policy_set_t base, same, reordered, ops_changed, shop_changed;
    build_selection(&base, "/admin/*", "ops", 0);
    build_selection(&same, "/admin/*", "ops", 0);
    build_selection(&reordered, "/admin/*", "ops", 1);
    build_selection(&ops_changed, "/admin/*", "monitoring", 0);
    build_selection(&shop_changed, "/debug/*", "ops", 0);

    /* Stable: equal content gives equal hashes, whatever the load order. */
    CU_ASSERT_EQUAL(ward_policy_set_hash(&base, orders), ward_policy_set_hash(&same, orders));
    CU_ASSERT_EQUAL(ward_policy_set_hash(&base, orders), ward_policy_set_hash(&reordered, orders));
    CU_ASSERT_EQUAL(ward_policy_set_hash(&base, ops), ward_policy_set_hash(&reordered, ops));
    /* Different identities see different content. */
    CU_ASSERT_NOT_EQUAL(ward_policy_set_hash(&base, orders), ward_policy_set_hash(&base, web));
    CU_ASSERT_NOT_EQUAL(ward_policy_set_hash(&base, orders), ward_policy_set_hash(&base, ops));
    /* A change in ops touches ops only. */
    CU_ASSERT_EQUAL(ward_policy_set_hash(&base, orders),
                    ward_policy_set_hash(&ops_changed, orders));
    CU_ASSERT_EQUAL(ward_policy_set_hash(&base, web), ward_policy_set_hash(&ops_changed, web));
    CU_ASSERT_NOT_EQUAL(ward_policy_set_hash(&base, ops), ward_policy_set_hash(&ops_changed, ops));
    /* A change in a shop-wide policy touches every shop workload, not ops. */
    CU_ASSERT_NOT_EQUAL(ward_policy_set_hash(&base, orders),
                        ward_policy_set_hash(&shop_changed, orders));
    CU_ASSERT_NOT_EQUAL(ward_policy_set_hash(&base, web), ward_policy_set_hash(&shop_changed, web));
    CU_ASSERT_EQUAL(ward_policy_set_hash(&base, ops), ward_policy_set_hash(&shop_changed, ops));
    /* Nothing selected: the same as an empty set; the default is part of the content. */
    ward_policy_set_t empty;
    ward_policy_set_init(&empty);
    CU_ASSERT_EQUAL(ward_policy_set_hash(&base, other), ward_policy_set_hash(&empty, other));
    uint64_t h = ward_policy_set_hash(&base, orders);
    base.mesh_default = WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_ALLOW;
    CU_ASSERT_NOT_EQUAL(ward_policy_set_hash(&base, orders), h);
    base.mesh_default = WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_DENY;
    CU_ASSERT_EQUAL(ward_policy_set_hash(&base, orders), h);
    /* Invalid identities hash like an empty selection. */
    CU_ASSERT_EQUAL(ward_policy_set_hash(&base, "nope"), ward_policy_set_hash(&empty, other));

    /* The hash follows the snapshot: equal hashes <=> equal packed snapshots (same version). */
    uint8_t *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0;
    CU_ASSERT_EQUAL(ward_policy_snapshot_for(&base, orders, 3, &a, &alen), 0);
    CU_ASSERT_EQUAL(ward_policy_snapshot_for(&reordered, orders, 3, &b, &blen), 0);
    CU_ASSERT(alen == blen && memcmp(a, b, alen) == 0);
    ward_free(b);
    CU_ASSERT_EQUAL(ward_policy_snapshot_for(&shop_changed, orders, 3, &b, &blen), 0);
    CU_ASSERT(alen != blen || memcmp(a, b, alen) != 0);
    ward_free(a);
    ward_free(b);

    ward_policy_set_free(&base);
    ward_policy_set_free(&same);
    ward_policy_set_free(&reordered);
    ward_policy_set_free(&ops_changed);
    ward_policy_set_free(&shop_changed);
}

/* Fails the Nth allocation made through ward's allocator (libyaml keeps its own). */
static int fail_at, allocs;

static void *fail_malloc(size_t n)
{
    return ++allocs == fail_at ? NULL : malloc(n);
}

static void *fail_realloc(void *p, size_t n)
{
    return ++allocs == fail_at ? NULL : realloc(p, n);
}

static void *fail_calloc(size_t c, size_t n)
{
    return ++allocs == fail_at ? NULL : calloc(c, n);
}

/* Every allocation failure surfaces as WARD_ENOMEM, leaves the set as it was, and leaks nothing
 * (the ASan build checks the last part). */
static void test_allocation_failures(void)
{
    const ward_allocator_t failing = {fail_malloc, fail_realloc, fail_calloc, free};
    int injected = 0;
    for (fail_at = 1; fail_at < 100000; fail_at++) {
        ward_policy_set_t one, dir;
        ward_policy_error_t err;
        uint8_t *bytes = NULL;
        size_t len = 0;
        allocs = 0;
        ward_policy_set_init(&one);
        ward_policy_set_init(&dir);
        CU_ASSERT_EQUAL_FATAL(ward_alloc_install(&failing), 0);
        int rc = parse(&one, design, &err);
        if (rc == 0) rc = ward_policy_load_dir(samples(), &dir, &err);
        if (rc == 0)
            rc = ward_policy_snapshot_for(&dir, "spiffe://cluster.local/ns/shop/sa/orders", 1,
                                          &bytes, &len);
        int reached = allocs >= fail_at;
        ward_alloc_install(NULL);
        if (!reached) {
            CU_ASSERT_EQUAL(rc, 0);
            CU_ASSERT(ward_policy_set_count(&dir) >= 5);
            ward_free(bytes);
        } else {
            injected++;
            if (rc != WARD_ENOMEM) fprintf(stderr, "\n  allocation %d: rc %d\n", fail_at, rc);
            CU_ASSERT_EQUAL(rc, WARD_ENOMEM);
            /* All or nothing: the directory load either completed or left nothing. */
            CU_ASSERT(ward_policy_set_count(&one) <= 1);
            CU_ASSERT(ward_policy_set_count(&dir) == 0 || ward_policy_set_count(&dir) >= 5);
        }
        ward_policy_set_free(&one);
        ward_policy_set_free(&dir);
        if (!reached) break;
    }
    CU_ASSERT(injected > 50);
}

/* ---- directories ---------------------------------------------------------------------------- */

static char tmp[256];

static void write_file(const char *dir, const char *name, const char *text)
{
    char p[512];
    snprintf(p, sizeof(p), "%s/%s", dir, name);
    FILE *f = fopen(p, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs(text, f);
    fclose(f);
}

static void write_policy(const char *dir, const char *file, const char *name, const char *action)
{
    char text[512];
    snprintf(text, sizeof(text),
             "apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
             "metadata: {name: %s, namespace: shop}\nspec: {action: %s}\n",
             name, action);
    write_file(dir, file, text);
}

static const char *at(const char *name)
{
    static char buf[4][512];
    static int i;
    i = (i + 1) % 4;
    snprintf(buf[i], sizeof(buf[i]), "%s/%s", tmp, name);
    return buf[i];
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    return remove(p);
}

static void rm_tree(const char *p)
{
    nftw(p, rm_one, 16, FTW_DEPTH | FTW_PHYS);
}

static void make_tmp(void)
{
    snprintf(tmp, sizeof(tmp), "%s/ward-policy-XXXXXX",
             getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
    CU_ASSERT_PTR_NOT_NULL_FATAL(mkdtemp(tmp));
}

static void expect_names(const ward_policy_set_t *set, const char *const *names, size_t n,
                         Ward__V1__Action first_action)
{
    CU_ASSERT_EQUAL_FATAL(ward_policy_set_count(set), n);
    for (size_t i = 0; i < n; i++)
        CU_ASSERT_STRING_EQUAL(ward_policy_set_get(set, i)->name, names[i]);
    if (n > 0) CU_ASSERT_EQUAL(ward_policy_set_get(set, 0)->action, first_action);
}

/* kubelet's AtomicWriter layout: dir/..<timestamp>/ holds the files, dir/..data points at it, and
 * dir/<key> -> ..data/<key>. An update writes a new timestamp dir and renames a fresh symlink over
 * ..data, then fixes the top-level links. */
static void test_load_dir_configmap(void)
{
    ward_policy_set_t set;
    ward_policy_error_t err;
    make_tmp();
    CU_ASSERT_EQUAL_FATAL(mkdir(at("..2026_11_29_10_00_00.1"), 0755), 0);
    write_policy(at("..2026_11_29_10_00_00.1"), "a1.yaml", "a1", "ALLOW");
    write_policy(at("..2026_11_29_10_00_00.1"), "a2.yml", "a2", "ALLOW");
    CU_ASSERT_EQUAL(symlink("..2026_11_29_10_00_00.1", at("..data")), 0);
    CU_ASSERT_EQUAL(symlink("..data/a1.yaml", at("a1.yaml")), 0);
    CU_ASSERT_EQUAL(symlink("..data/a2.yml", at("a2.yml")), 0);

    static const char *const first[] = {"a1", "a2"};
    ward_policy_set_init(&set);
    CU_ASSERT_EQUAL(ward_policy_load_dir(tmp, &set, &err), 0);
    expect_names(&set, first, 2, WARD__V1__ACTION__ACTION_ALLOW);
    ward_policy_set_free(&set);

    /* Update: a1 changes, a2 goes, b1 arrives. */
    CU_ASSERT_EQUAL_FATAL(mkdir(at("..2026_11_29_10_05_00.2"), 0755), 0);
    write_policy(at("..2026_11_29_10_05_00.2"), "a1.yaml", "a1", "DENY");
    write_policy(at("..2026_11_29_10_05_00.2"), "b1.yaml", "b1", "ALLOW");
    CU_ASSERT_EQUAL(symlink("..2026_11_29_10_05_00.2", at("..data_tmp")), 0);
    CU_ASSERT_EQUAL(rename(at("..data_tmp"), at("..data")), 0);

    /* Right after the swap, before kubelet fixes the top-level links, the new version is whole. */
    static const char *const second[] = {"a1", "b1"};
    CU_ASSERT_EQUAL(ward_policy_load_dir(tmp, &set, &err), 0);
    expect_names(&set, second, 2, WARD__V1__ACTION__ACTION_DENY);
    ward_policy_set_free(&set);

    CU_ASSERT_EQUAL(unlink(at("a2.yml")), 0);
    CU_ASSERT_EQUAL(symlink("..data/b1.yaml", at("b1.yaml")), 0);
    rm_tree(at("..2026_11_29_10_00_00.1"));
    CU_ASSERT_EQUAL(ward_policy_load_dir(tmp, &set, &err), 0);
    expect_names(&set, second, 2, WARD__V1__ACTION__ACTION_DENY);

    /* Loading adds to a set: loading the same volume again is a duplicate, and rolls back. */
    CU_ASSERT_EQUAL(ward_policy_load_dir(tmp, &set, &err), WARD_EPARSE);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "already defined"));
    CU_ASSERT_EQUAL(ward_policy_set_count(&set), 2);
    ward_policy_set_free(&set);

    /* An invalid file in the new version: reported under the directory the caller named. */
    CU_ASSERT_EQUAL_FATAL(mkdir(at("..2026_11_29_10_10_00.3"), 0755), 0);
    write_policy(at("..2026_11_29_10_10_00.3"), "a1.yaml", "a1", "MAYBE");
    CU_ASSERT_EQUAL(symlink("..2026_11_29_10_10_00.3", at("..data_tmp")), 0);
    CU_ASSERT_EQUAL(rename(at("..data_tmp"), at("..data")), 0);
    CU_ASSERT_EQUAL(ward_policy_load_dir(tmp, &set, &err), WARD_EPARSE);
    CU_ASSERT_STRING_EQUAL(err.file, at("a1.yaml"));
    CU_ASSERT_EQUAL(err.line, 4);
    CU_ASSERT_EQUAL(err.column, 16);
    CU_ASSERT_EQUAL(ward_policy_set_count(&set), 0);
    ward_policy_set_free(&set);
    rm_tree(tmp);
}

static void test_load_dir_plain(void)
{
    ward_policy_set_t set;
    ward_policy_error_t err;
    make_tmp();
    char outside[300];
    snprintf(outside, sizeof(outside), "%s.outside.yaml", tmp);
    write_policy(tmp, "20-b.yaml", "b", "DENY");
    write_policy(tmp, "10-a.yml", "a", "ALLOW");
    write_file(tmp, ".hidden.yaml", "not: [valid");
    write_file(tmp, "README.md", "not: [valid");
    write_file(tmp, "c.yaml.bak", "not: [valid");
    write_file(tmp, "empty.yaml", "# nothing yet\n");
    CU_ASSERT_EQUAL(mkdir(at("sub.yaml"), 0755), 0);
    write_file(at("sub.yaml"), "x.yaml", "not: [valid");
    CU_ASSERT_EQUAL(symlink("/nonexistent/ward/gone.yaml", at("gone.yaml")), 0);
    FILE *f = fopen(outside, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fputs("apiVersion: ward.dev/v1\nkind: AuthorizationPolicy\n"
          "metadata: {name: linked, namespace: shop}\nspec: {}\n",
          f);
    fclose(f);
    CU_ASSERT_EQUAL(symlink(outside, at("30-linked.yaml")), 0);

    static const char *const names[] = {"a", "b", "linked"};
    ward_policy_set_init(&set);
    CU_ASSERT_EQUAL(ward_policy_load_dir(tmp, &set, &err), 0);
    expect_names(&set, names, 3, WARD__V1__ACTION__ACTION_ALLOW);
    ward_policy_set_free(&set);

    /* First error wins, in name order; nothing from the load stays. */
    write_file(tmp, "25-bad.yaml", HEAD "spec: {action: NOPE}\n");
    write_file(tmp, "26-bad.yaml", "kind: [");
    CU_ASSERT_EQUAL(ward_policy_load_dir(tmp, &set, &err), WARD_EPARSE);
    CU_ASSERT_STRING_EQUAL(err.file, at("25-bad.yaml"));
    CU_ASSERT_EQUAL(err.line, 4);
    CU_ASSERT_EQUAL(err.column, 16);
    CU_ASSERT_EQUAL(ward_policy_set_count(&set), 0);
    unlink(at("25-bad.yaml"));
    unlink(at("26-bad.yaml"));

    /* Two files defining one policy: the second is refused and names the first. */
    write_policy(tmp, "40-again.yaml", "a", "DENY");
    CU_ASSERT_EQUAL(ward_policy_load_dir(tmp, &set, &err), WARD_EPARSE);
    CU_ASSERT_STRING_EQUAL(err.file, at("40-again.yaml"));
    CU_ASSERT_EQUAL(err.line, 3);
    CU_ASSERT_EQUAL(err.column, 18);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "10-a.yml:3:18"));
    CU_ASSERT_EQUAL(ward_policy_set_count(&set), 0);
    unlink(at("40-again.yaml"));

    /* Too big a file is refused before parsing. */
    char *big = malloc(WARD_POLICY_MAX_FILE + 2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, '#', WARD_POLICY_MAX_FILE + 1);
    big[WARD_POLICY_MAX_FILE + 1] = '\0';
    write_file(tmp, "99-big.yaml", big);
    free(big);
    CU_ASSERT_EQUAL(ward_policy_load_dir(tmp, &set, &err), WARD_ETOOLONG);
    CU_ASSERT_STRING_EQUAL(err.file, at("99-big.yaml"));
    CU_ASSERT_EQUAL(err.line, 0);
    unlink(at("99-big.yaml"));

    /* An unreadable file is an I/O error (skipped when running as root: it can read anything). */
    if (geteuid() != 0) {
        CU_ASSERT_EQUAL(chmod(at("20-b.yaml"), 0), 0);
        CU_ASSERT_EQUAL(ward_policy_load_dir(tmp, &set, &err), -EACCES);
        CU_ASSERT_STRING_EQUAL(err.file, at("20-b.yaml"));
        chmod(at("20-b.yaml"), 0644);
    }
    ward_policy_set_free(&set);
    unlink(outside);
    rm_tree(tmp);
}

static void test_load_dir_empty_and_missing(void)
{
    ward_policy_set_t set;
    ward_policy_error_t err;
    make_tmp();
    ward_policy_set_init(&set);
    CU_ASSERT_EQUAL(ward_policy_load_dir(tmp, &set, &err), 0);
    CU_ASSERT_EQUAL(ward_policy_set_count(&set), 0);
    CU_ASSERT_EQUAL(ward_policy_load_dir(at("missing"), &set, &err), -ENOENT);
    CU_ASSERT_STRING_EQUAL(err.file, at("missing"));
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "cannot open directory"));
    CU_ASSERT_EQUAL(ward_policy_load_dir(NULL, &set, &err), WARD_EINVAL);
    ward_policy_set_free(&set);
    rm_tree(tmp);
}

/* ---- tests/policy/ -------------------------------------------------------------------------- */

static void test_samples_valid(void)
{
    ward_policy_set_t set;
    ward_policy_error_t err;
    ward_policy_set_init(&set);
    int rc = ward_policy_load_dir(samples(), &set, &err);
    if (rc != 0) fprintf(stderr, "\n  %s:%d:%d: %s\n", err.file, err.line, err.column, err.message);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT(ward_policy_set_count(&set) >= 5);
    /* The DESIGN.md example is among them, and selects the orders workload. */
    Ward__V1__PolicySnapshot *s = snapshot(&set, "spiffe://cluster.local/ns/shop/sa/orders", 1);
    int found = 0;
    for (size_t i = 0; i < s->n_policies; i++)
        found += strcmp(s->policies[i]->name, "orders-read") == 0;
    CU_ASSERT_EQUAL(found, 1);
    ward__v1__policy_snapshot__free_unpacked(s, NULL);
    ward_policy_set_free(&set);
}

/* Each file in tests/policy/invalid/ starts with "# expect: LINE:COLUMN message-substring". */
static void test_samples_invalid(void)
{
    char dir[512];
    snprintf(dir, sizeof(dir), "%s/invalid", samples());
    DIR *d = opendir(dir);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    struct dirent *de;
    int checked = 0;
    while ((de = readdir(d)) != NULL) {
        size_t n = strlen(de->d_name);
        if (n < 6 || strcmp(de->d_name + n - 5, ".yaml") != 0) continue;
        char path[1024];
        snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
        FILE *f = fopen(path, "rb");
        CU_ASSERT_PTR_NOT_NULL_FATAL(f);
        static char text[64 * 1024];
        size_t len = fread(text, 1, sizeof(text), f);
        fclose(f);
        int line = 0, column = 0;
        char want[256] = "";
        CU_ASSERT_EQUAL_FATAL(sscanf(text, "# expect: %d:%d %255[^\n]", &line, &column, want), 3);

        ward_policy_set_t set;
        ward_policy_error_t err;
        ward_policy_set_init(&set);
        int rc = ward_policy_parse(text, len, path, &set, &err);
        int ok = rc < 0 && err.line == line && err.column == column &&
                 strstr(err.message, want) != NULL && strcmp(err.file, path) == 0;
        if (!ok)
            fprintf(stderr, "\n  %s: want %d:%d '%s', got %d:%d '%s' (%d)\n", de->d_name, line,
                    column, want, err.line, err.column, err.message, rc);
        CU_ASSERT(ok);
        CU_ASSERT_EQUAL(ward_policy_set_count(&set), 0);
        ward_policy_set_free(&set);
        checked++;
    }
    closedir(d);
    CU_ASSERT(checked >= 40);
}

void ward_unit_register(void)
{
    WARD_SUITE("policy", WARD_TEST(test_design_example), WARD_TEST(test_design_example_unquoted),
               WARD_TEST(test_multi_document), WARD_TEST(test_validation_errors),
               WARD_TEST(test_yaml_features_refused), WARD_TEST(test_limits),
               WARD_TEST(test_valid_values), WARD_TEST(test_duplicates_and_rollback),
               WARD_TEST(test_selection), WARD_TEST(test_hash), WARD_TEST(test_allocation_failures),
               WARD_TEST(test_load_dir_configmap), WARD_TEST(test_load_dir_plain),
               WARD_TEST(test_load_dir_empty_and_missing), WARD_TEST(test_samples_valid),
               WARD_TEST(test_samples_invalid));
}
