/* authz.c — the compiled, immutable policy matcher (see ward/authz.h).
 *
 * Compilation numbers every rule by (policy in (namespace, name) order, rule in file order): that
 * ordinal is the first-match order. Each `from` entry becomes a posting (key kind, key, action,
 * ordinal): exact identities, identity prefixes (the '*' dropped; "*" alone is the empty prefix)
 * and namespaces, plus one posting under the "any" key for each rule without `from`. Sorted, the
 * postings group into keys, each with one ascending, duplicate-free list of ordinals per action.
 * Exact and namespace keys go into open-addressing hash tables, prefixes into a radix tree whose
 * keyed nodes also point at their nearest keyed ancestor, so one walk along the peer id yields
 * every matching prefix as a chain.
 *
 * Since a `from` clause is an OR of all its identities and namespaces, a rule is reachable from a
 * peer exactly when one of its keys matches, and evaluation only looks at the lists of those keys:
 * for each action it scans every list in ascending order, stopping at the first rule whose `to`
 * and `when` parts match or at the best ordinal found so far. That gives the first match without
 * merging the lists and without allocating.
 *
 * Everything the matcher reads lives in one block, carved into arrays after a counting pass over
 * the snapshot (upper bounds), so that compilation makes four allocations and a failure anywhere
 * unwinds through one free function. */
#include "ward/authz.h"
#include "ward/alloc.h"
#include "ward/err.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

/* Actions in evaluation order; also the index of the per-action lists. */
enum { WARD__DENY, WARD__AUDIT, WARD__ALLOW, WARD__ACTIONS };

/* Posting and key kinds; the order also sorts prefixes by length, which the tree relies on. */
enum { WARD__K_EXACT, WARD__K_PREFIX, WARD__K_NS, WARD__K_ANY };

enum { WARD__P_EXACT, WARD__P_PREFIX, WARD__P_SUFFIX, WARD__P_ANY };

enum { WARD__C_HEADER, WARD__C_IP, WARD__C_HOUR };

/* HTTP methods with a bit of their own; any other listed method is compared as a string. */
static const char *const ward__methods[] = {"GET",     "HEAD",    "POST",  "PUT",  "DELETE",
                                            "CONNECT", "OPTIONS", "TRACE", "PATCH"};
#define WARD__N_METHODS (sizeof(ward__methods) / sizeof(ward__methods[0]))

#define WARD__NONE UINT32_MAX

typedef struct {
    uint32_t off, len; /* in a->arena */
} ward__str_t;

typedef struct {
    uint32_t off, cnt; /* a slice of one of a's arrays */
} ward__range_t;

typedef struct {
    uint32_t kind;
    ward__str_t s; /* EXACT: the path; PREFIX: up to and with the last '/'; SUFFIX: after '*' */
} ward__pathpat_t;

typedef struct {
    ward__range_t ports;   /* a->ports */
    ward__range_t methods; /* a->strs: listed methods without a bit */
    ward__range_t paths;   /* a->paths */
    uint32_t method_bits;  /* listed methods with a bit */
    uint32_t has_methods;
} ward__op_t;

typedef struct {
    uint32_t kind;
    ward__str_t name;     /* HEADER: the lowercase header name */
    ward__range_t values; /* HEADER: a->strs; IP: a->cidrs */
    uint32_t hours;       /* HOUR: bit h set = hour h matches */
} ward__cond_t;

typedef struct {
    uint8_t addr[16];
    uint8_t bits;
    uint8_t v4; /* addr[0..4) is an IPv4 address */
} ward__cidr_t;

typedef struct {
    uint32_t policy; /* index in a->policies */
    uint32_t index;  /* in that policy */
    uint32_t action;
    uint32_t http; /* needs methods, paths or headers */
    ward__range_t ops;
    ward__range_t conds;
} ward__rule_t;

typedef struct {
    const char *name; /* "namespace/name", in a->arena */
    uint32_t action;
} ward__policy_t;

typedef struct {
    ward__str_t s;
    uint64_t hash;
    ward__range_t list[WARD__ACTIONS]; /* ascending rule ordinals in a->ids */
} ward__key_t;

typedef struct {
    ward__str_t label;   /* the bytes this edge consumes (empty for the root) */
    uint32_t key;        /* a->keys index of the prefix ending here, or WARD__NONE */
    uint32_t up;         /* nearest ancestor with a key, or WARD__NONE */
    ward__range_t edges; /* a->edges, sorted by byte */
    uint32_t child;      /* build time: first child, sibling list (0 = none) */
    uint32_t sibling;
} ward__node_t;

typedef struct {
    uint32_t byte;
    uint32_t node;
} ward__edge_t;

struct ward_authz {
    _Atomic size_t refs;
    uint64_t version;
    Ward__V1__DefaultAction mesh_default;
    size_t n_policies, n_rules;
    size_t n_action[WARD__ACTIONS]; /* policies per action */
    ward__policy_t *policies;
    ward__rule_t *rules;
    ward__op_t *ops;
    ward__cond_t *conds;
    uint16_t *ports;
    ward__str_t *strs;
    ward__pathpat_t *paths;
    ward__cidr_t *cidrs;
    ward__key_t *keys;
    uint32_t *ids;
    uint32_t *exact; /* hash tables: a->keys index + 1, 0 = empty */
    uint32_t *ns;
    size_t exact_mask, ns_mask;
    ward__node_t *nodes;
    ward__edge_t *edges;
    uint32_t any; /* the key of the rules without `from`, or WARD__NONE */
    char *arena;
    void *block;
};

/* ---- compilation ---------------------------------------------------------------------------- */

typedef struct {
    const char *s;
    uint32_t len;
    uint32_t kind;
    uint32_t action;
    uint32_t ord;
} ward__posting_t;

typedef struct {
    const Ward__V1__AuthorizationPolicy *pb;
    size_t index;
} ward__order_t;

/* Upper bounds from the counting pass, then the fill cursors. */
typedef struct {
    size_t policies, rules, ops, conds, ports, strs, paths, cidrs, postings, prefixes, exact, ns,
        arena;
} ward__sizes_t;

typedef struct {
    ward_authz_t *a;
    ward__sizes_t n; /* fill cursors */
    ward__posting_t *post;
    size_t n_keys, n_ids, n_nodes, n_edges;
    const char *why;
} ward__build_t;

static const char *ward__s(const char *s)
{
    return s ? s : "";
}

static uint64_t ward__hash(const char *s, size_t n)
{
    uint64_t h = 0x9e3779b97f4a7c15ULL ^ (uint64_t)n, w;
    for (; n >= 8; s += 8, n -= 8) {
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 32;
    }
    w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL;
    return h ^ (h >> 29);
}

static size_t ward__table_size(size_t n)
{
    size_t size = 2;
    while (size < 2 * n)
        size *= 2;
    return size;
}

static int ward__invalid(ward__build_t *b, const char *why)
{
    b->why = why;
    return WARD_EINVAL;
}

/* Sums what the snapshot can need; strings are measured, nothing is checked yet. */
static int ward__count(const Ward__V1__PolicySnapshot *snap, ward__sizes_t *n)
{
    memset(n, 0, sizeof(*n));
    for (size_t p = 0; snap && p < snap->n_policies; p++) {
        const Ward__V1__AuthorizationPolicy *pb = snap->policies[p];
        if (pb == NULL) return WARD_EINVAL;
        n->policies++;
        n->arena += strlen(ward__s(pb->namespace_)) + strlen(ward__s(pb->name)) + 2;
        for (size_t r = 0; r < pb->n_rules; r++) {
            const Ward__V1__Rule *rule = pb->rules[r];
            if (rule == NULL) return WARD_EINVAL;
            n->rules++;
            if (rule->n_from == 0) n->postings++;
            for (size_t s = 0; s < rule->n_from; s++) {
                const Ward__V1__Source *src = rule->from[s];
                if (src == NULL) return WARD_EINVAL;
                n->postings += src->n_identities + src->n_namespaces;
                n->exact += src->n_identities;
                n->ns += src->n_namespaces;
                for (size_t i = 0; i < src->n_identities; i++) {
                    const char *id = ward__s(src->identities[i]);
                    n->arena += strlen(id) + 1;
                    n->prefixes += strchr(id, '*') != NULL;
                }
                for (size_t i = 0; i < src->n_namespaces; i++)
                    n->arena += strlen(ward__s(src->namespaces[i])) + 1;
            }
            n->ops += rule->n_to;
            for (size_t o = 0; o < rule->n_to; o++) {
                const Ward__V1__Operation *op = rule->to[o];
                if (op == NULL) return WARD_EINVAL;
                n->ports += op->n_ports;
                n->strs += op->n_methods;
                n->paths += op->n_paths;
                for (size_t i = 0; i < op->n_methods; i++)
                    n->arena += strlen(ward__s(op->methods[i])) + 1;
                for (size_t i = 0; i < op->n_paths; i++)
                    n->arena += strlen(ward__s(op->paths[i])) + 1;
            }
            n->conds += rule->n_when;
            for (size_t c = 0; c < rule->n_when; c++) {
                const Ward__V1__Condition *cond = rule->when[c];
                if (cond == NULL) return WARD_EINVAL;
                n->arena += strlen(ward__s(cond->key)) + 1;
                n->strs += cond->n_values;
                n->cidrs += cond->n_values;
                for (size_t i = 0; i < cond->n_values; i++)
                    n->arena += strlen(ward__s(cond->values[i])) + 1;
            }
        }
    }
    /* Offsets and ordinals are 32-bit. */
    const size_t limit = (size_t)1 << 30;
    if (n->arena >= limit || n->postings >= limit / 4 || n->strs >= limit || n->cidrs >= limit ||
        n->ports >= limit || n->conds >= limit || n->ops >= limit || n->paths >= limit)
        return WARD_EINVAL;
    return 0;
}

static size_t ward__carve(size_t *total, size_t count, size_t size)
{
    size_t off = (*total + 15) & ~(size_t)15;
    *total = off + count * size;
    return off;
}

/* One allocation for every array, sized from the counts. */
static int ward__alloc_block(ward_authz_t *a, const ward__sizes_t *n, size_t *exact_size,
                             size_t *ns_size)
{
    size_t total = 0, nodes = 1 + 2 * n->prefixes;
    *exact_size = ward__table_size(n->exact);
    *ns_size = ward__table_size(n->ns);
    size_t o_pol = ward__carve(&total, n->policies, sizeof(ward__policy_t));
    size_t o_rules = ward__carve(&total, n->rules, sizeof(ward__rule_t));
    size_t o_ops = ward__carve(&total, n->ops, sizeof(ward__op_t));
    size_t o_conds = ward__carve(&total, n->conds, sizeof(ward__cond_t));
    size_t o_ports = ward__carve(&total, n->ports, sizeof(uint16_t));
    size_t o_strs = ward__carve(&total, n->strs, sizeof(ward__str_t));
    size_t o_paths = ward__carve(&total, n->paths, sizeof(ward__pathpat_t));
    size_t o_cidrs = ward__carve(&total, n->cidrs, sizeof(ward__cidr_t));
    size_t o_keys = ward__carve(&total, n->postings, sizeof(ward__key_t));
    size_t o_ids = ward__carve(&total, n->postings, sizeof(uint32_t));
    size_t o_exact = ward__carve(&total, *exact_size, sizeof(uint32_t));
    size_t o_ns = ward__carve(&total, *ns_size, sizeof(uint32_t));
    size_t o_nodes = ward__carve(&total, nodes, sizeof(ward__node_t));
    size_t o_edges = ward__carve(&total, nodes, sizeof(ward__edge_t));
    size_t o_arena = ward__carve(&total, n->arena + 1, 1);
    char *block = ward_malloc(total);
    if (block == NULL) return WARD_ENOMEM;
    a->block = block;
    a->policies = (ward__policy_t *)(block + o_pol);
    a->rules = (ward__rule_t *)(block + o_rules);
    a->ops = (ward__op_t *)(block + o_ops);
    a->conds = (ward__cond_t *)(block + o_conds);
    a->ports = (uint16_t *)(block + o_ports);
    a->strs = (ward__str_t *)(block + o_strs);
    a->paths = (ward__pathpat_t *)(block + o_paths);
    a->cidrs = (ward__cidr_t *)(block + o_cidrs);
    a->keys = (ward__key_t *)(block + o_keys);
    a->ids = (uint32_t *)(block + o_ids);
    a->exact = (uint32_t *)(block + o_exact);
    a->ns = (uint32_t *)(block + o_ns);
    a->nodes = (ward__node_t *)(block + o_nodes);
    a->edges = (ward__edge_t *)(block + o_edges);
    a->arena = block + o_arena;
    memset(a->exact, 0, *exact_size * sizeof(uint32_t));
    memset(a->ns, 0, *ns_size * sizeof(uint32_t));
    a->exact_mask = *exact_size - 1;
    a->ns_mask = *ns_size - 1;
    return 0;
}

/* Copies s[0..len) into the arena (NUL-terminated). */
static ward__str_t ward__intern(ward__build_t *b, const char *s, size_t len)
{
    ward__str_t out = {(uint32_t)b->n.arena, (uint32_t)len};
    memcpy(b->a->arena + b->n.arena, s, len);
    b->a->arena[b->n.arena + len] = '\0';
    b->n.arena += len + 1;
    return out;
}

static void ward__post(ward__build_t *b, uint32_t kind, const char *s, size_t len, uint32_t action,
                       uint32_t ord)
{
    ward__posting_t *p = &b->post[b->n.postings++];
    p->s = s;
    p->len = (uint32_t)len;
    p->kind = kind;
    p->action = action;
    p->ord = ord;
}

static int ward__source(ward__build_t *b, const Ward__V1__Source *src, uint32_t action,
                        uint32_t ord)
{
    if (src->n_identities == 0 && src->n_namespaces == 0)
        return ward__invalid(b, "a source lists no identities or namespaces");
    for (size_t i = 0; i < src->n_identities; i++) {
        const char *id = ward__s(src->identities[i]);
        size_t len = strlen(id);
        const char *star = strchr(id, '*');
        if (len == 0) return ward__invalid(b, "empty identity");
        if (star == NULL)
            ward__post(b, WARD__K_EXACT, id, len, action, ord);
        else if (star == id + len - 1)
            ward__post(b, WARD__K_PREFIX, id, len - 1, action, ord);
        else
            return ward__invalid(b, "'*' in an identity is only allowed as the last character");
    }
    for (size_t i = 0; i < src->n_namespaces; i++) {
        const char *ns = ward__s(src->namespaces[i]);
        if (ns[0] == '\0') return ward__invalid(b, "empty namespace");
        ward__post(b, WARD__K_NS, ns, strlen(ns), action, ord);
    }
    return 0;
}

static int ward__method_bit(const char *m, size_t len)
{
    for (size_t i = 0; i < WARD__N_METHODS; i++)
        if (strlen(ward__methods[i]) == len && memcmp(ward__methods[i], m, len) == 0) return (int)i;
    return -1;
}

static int ward__path_pattern(ward__build_t *b, const char *p, ward__pathpat_t *out)
{
    size_t len = strlen(p);
    const char *star = strchr(p, '*');
    if (len == 1 && p[0] == '*') {
        out->kind = WARD__P_ANY;
        out->s = ward__intern(b, "", 0);
    } else if (star == p && len > 1 && strchr(p + 1, '*') == NULL) {
        out->kind = WARD__P_SUFFIX;
        out->s = ward__intern(b, p + 1, len - 1);
    } else if (len == 0 || p[0] != '/') {
        return ward__invalid(b,
                             "a path is \"/exact\", \"/prefix/\" + '*', '*' + \"suffix\" or '*'");
    } else if (star == NULL) {
        out->kind = WARD__P_EXACT;
        out->s = ward__intern(b, p, len);
    } else if (star == p + len - 1 && p[len - 2] == '/') {
        out->kind = WARD__P_PREFIX;
        out->s = ward__intern(b, p, len - 1);
    } else {
        return ward__invalid(b, "a '*' in a path must be the last segment: \"/prefix/\" + '*'");
    }
    return 0;
}

static int ward__operation(ward__build_t *b, const Ward__V1__Operation *pb, ward__op_t *op)
{
    ward_authz_t *a = b->a;
    memset(op, 0, sizeof(*op));
    if (pb->n_ports == 0 && pb->n_methods == 0 && pb->n_paths == 0)
        return ward__invalid(b, "an operation lists no ports, methods or paths");
    op->ports.off = (uint32_t)b->n.ports;
    for (size_t i = 0; i < pb->n_ports; i++) {
        if (pb->ports[i] < 1 || pb->ports[i] > 65535)
            return ward__invalid(b, "ports are integers in 1..65535");
        a->ports[b->n.ports++] = (uint16_t)pb->ports[i];
    }
    op->ports.cnt = (uint32_t)pb->n_ports;
    op->has_methods = pb->n_methods > 0;
    op->methods.off = (uint32_t)b->n.strs;
    for (size_t i = 0; i < pb->n_methods; i++) {
        const char *m = ward__s(pb->methods[i]);
        size_t len = strlen(m);
        if (len == 0) return ward__invalid(b, "empty method");
        int bit = ward__method_bit(m, len);
        if (bit >= 0) {
            op->method_bits |= 1u << bit;
        } else {
            a->strs[b->n.strs++] = ward__intern(b, m, len);
            op->methods.cnt++;
        }
    }
    op->paths.off = (uint32_t)b->n.paths;
    for (size_t i = 0; i < pb->n_paths; i++) {
        int rc = ward__path_pattern(b, ward__s(pb->paths[i]), &a->paths[b->n.paths]);
        if (rc < 0) return rc;
        b->n.paths++;
    }
    op->paths.cnt = (uint32_t)pb->n_paths;
    return 0;
}

/* Digits without a leading zero, at most max; -1 otherwise. */
static long ward__number(const char *s, size_t len, long max)
{
    if (len == 0 || len > 10 || (len > 1 && s[0] == '0')) return -1;
    long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v <= max ? v : -1;
}

/* ::ffff:a.b.c.d */
static int ward__v4mapped(const uint8_t *a16)
{
    static const uint8_t prefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(a16, prefix, sizeof(prefix)) == 0;
}

/* An address or a CIDR without host bits, as the loader accepts it. An IPv4-mapped IPv6 range of
 * at least /96 is kept as the IPv4 range it maps, since mapped sources compare as IPv4. */
static int ward__cidr(const char *s, ward__cidr_t *out)
{
    char addr[INET6_ADDRSTRLEN];
    size_t len = strlen(s);
    const char *slash = memchr(s, '/', len);
    size_t alen = slash ? (size_t)(slash - s) : len;
    int v6 = memchr(s, ':', alen) != NULL;
    memset(out, 0, sizeof(*out));
    if (alen == 0 || alen >= sizeof(addr)) return -1;
    memcpy(addr, s, alen);
    addr[alen] = '\0';
    if (inet_pton(v6 ? AF_INET6 : AF_INET, addr, out->addr) != 1) return -1;
    int bits = v6 ? 128 : 32;
    long prefix = slash ? ward__number(slash + 1, len - alen - 1, bits) : bits;
    if (prefix < 0) return -1;
    for (int i = (int)prefix; i < bits; i++)
        if (out->addr[i / 8] & (0x80 >> (i % 8))) return -1;
    out->bits = (uint8_t)prefix;
    out->v4 = !v6;
    if (v6 && prefix >= 96 && ward__v4mapped(out->addr)) {
        memmove(out->addr, out->addr + 12, 4);
        memset(out->addr + 4, 0, 12);
        out->bits = (uint8_t)(prefix - 96);
        out->v4 = 1;
    }
    return 0;
}

/* "H" or "H-H" (0..23; "22-6" wraps) into a 24-bit mask; 0 when malformed. */
static uint32_t ward__hours(const char *s)
{
    const char *dash = strchr(s, '-');
    size_t len = strlen(s), first = dash ? (size_t)(dash - s) : len;
    size_t second = dash ? len - first - 1 : 0;
    if (first == 0 || first > 2 || (dash && (second == 0 || second > 2))) return 0;
    for (size_t i = 0; i < len; i++)
        if (s + i != dash && (s[i] < '0' || s[i] > '9')) return 0;
    int from = atoi(s), to = dash ? atoi(dash + 1) : from;
    if (from > 23 || to > 23) return 0;
    uint32_t mask = 0;
    for (int h = from;; h = (h + 1) % 24) {
        mask |= 1u << h;
        if (h == to) break;
    }
    return mask;
}

static int ward__condition(ward__build_t *b, const Ward__V1__Condition *pb, ward__cond_t *c,
                           uint32_t *http)
{
    static const char hdr[] = "request.headers[";
    const size_t hlen = sizeof(hdr) - 1;
    ward_authz_t *a = b->a;
    const char *key = ward__s(pb->key);
    size_t klen = strlen(key);
    memset(c, 0, sizeof(*c));
    if (pb->n_values == 0) return ward__invalid(b, "a condition lists no values");
    if (strcmp(key, "source.ip") == 0) {
        c->kind = WARD__C_IP;
        c->values.off = (uint32_t)b->n.cidrs;
        for (size_t i = 0; i < pb->n_values; i++)
            if (ward__cidr(ward__s(pb->values[i]), &a->cidrs[b->n.cidrs++]) < 0)
                return ward__invalid(b, "source.ip values are IPv4/IPv6 addresses or CIDRs");
    } else if (strcmp(key, "time.hour") == 0) {
        c->kind = WARD__C_HOUR;
        for (size_t i = 0; i < pb->n_values; i++) {
            uint32_t m = ward__hours(ward__s(pb->values[i]));
            if (m == 0) return ward__invalid(b, "time.hour values are \"H\" or \"H-H\", 0..23");
            c->hours |= m;
        }
    } else if (klen > hlen + 1 && memcmp(key, hdr, hlen) == 0 && key[klen - 1] == ']') {
        c->kind = WARD__C_HEADER;
        c->name = ward__intern(b, key + hlen, klen - hlen - 1);
        char *name = a->arena + c->name.off;
        for (size_t i = 0; i < c->name.len; i++)
            if (name[i] >= 'A' && name[i] <= 'Z') name[i] = (char)(name[i] - 'A' + 'a');
        c->values.off = (uint32_t)b->n.strs;
        for (size_t i = 0; i < pb->n_values; i++) {
            const char *v = ward__s(pb->values[i]);
            a->strs[b->n.strs++] = ward__intern(b, v, strlen(v));
        }
        *http = 1;
    } else {
        return ward__invalid(b, "unknown condition key (request.headers[name], source.ip or "
                                "time.hour)");
    }
    c->values.cnt = (uint32_t)pb->n_values;
    if (c->kind == WARD__C_HOUR) c->values.cnt = 0;
    return 0;
}

static int ward__rule(ward__build_t *b, const Ward__V1__Rule *pb, uint32_t policy, uint32_t index,
                      uint32_t action)
{
    ward_authz_t *a = b->a;
    uint32_t ord = (uint32_t)b->n.rules;
    ward__rule_t *r = &a->rules[b->n.rules++];
    int rc;
    memset(r, 0, sizeof(*r));
    r->policy = policy;
    r->index = index;
    r->action = action;
    if (pb->n_from == 0 && pb->n_to == 0 && pb->n_when == 0)
        return ward__invalid(b, "a rule has no from, to or when");
    if (pb->n_from == 0) ward__post(b, WARD__K_ANY, "", 0, action, ord);
    for (size_t i = 0; i < pb->n_from; i++)
        if ((rc = ward__source(b, pb->from[i], action, ord)) < 0) return rc;
    r->ops.off = (uint32_t)b->n.ops;
    for (size_t i = 0; i < pb->n_to; i++) {
        ward__op_t *op = &a->ops[b->n.ops++];
        if ((rc = ward__operation(b, pb->to[i], op)) < 0) return rc;
        if (op->has_methods || op->paths.cnt > 0) r->http = 1;
    }
    r->ops.cnt = (uint32_t)pb->n_to;
    r->conds.off = (uint32_t)b->n.conds;
    for (size_t i = 0; i < pb->n_when; i++)
        if ((rc = ward__condition(b, pb->when[i], &a->conds[b->n.conds++], &r->http)) < 0)
            return rc;
    r->conds.cnt = (uint32_t)pb->n_when;
    return 0;
}

static int ward__order_cmp(const void *x, const void *y)
{
    const ward__order_t *p = x, *q = y;
    int c = strcmp(ward__s(p->pb->namespace_), ward__s(q->pb->namespace_));
    if (c == 0) c = strcmp(ward__s(p->pb->name), ward__s(q->pb->name));
    if (c == 0) c = (p->index > q->index) - (p->index < q->index);
    return c;
}

static int ward__posting_cmp(const void *x, const void *y)
{
    const ward__posting_t *p = x, *q = y;
    if (p->kind != q->kind) return p->kind < q->kind ? -1 : 1;
    if (p->len != q->len) return p->len < q->len ? -1 : 1;
    int c = memcmp(p->s, q->s, p->len);
    if (c != 0) return c;
    if (p->action != q->action) return p->action < q->action ? -1 : 1;
    return (p->ord > q->ord) - (p->ord < q->ord);
}

static void ward__table_put(uint32_t *table, size_t mask, uint64_t hash, uint32_t key)
{
    size_t i = (size_t)hash & mask;
    while (table[i] != 0)
        i = (i + 1) & mask;
    table[i] = key + 1;
}

static uint32_t ward__node_new(ward__build_t *b, uint32_t off, uint32_t len)
{
    uint32_t i = (uint32_t)b->n_nodes++;
    ward__node_t *n = &b->a->nodes[i];
    memset(n, 0, sizeof(*n));
    n->label.off = off;
    n->label.len = len;
    n->key = n->up = WARD__NONE;
    return i;
}

/* Inserts prefix key k; keys arrive shortest first, so every keyed ancestor exists already and
 * the `up` found on the way down stays right (later, longer keys never end above this one). */
static void ward__tree_insert(ward__build_t *b, uint32_t k)
{
    ward_authz_t *a = b->a;
    const ward__str_t s = a->keys[k].s;
    const char *key = a->arena + s.off;
    uint32_t node = 0, pos = 0, up = WARD__NONE;
    while (pos < s.len) {
        if (a->nodes[node].key != WARD__NONE) up = node;
        uint32_t *link = &a->nodes[node].child, c = *link;
        while (c != 0 && a->arena[a->nodes[c].label.off] != key[pos]) {
            link = &a->nodes[c].sibling;
            c = *link;
        }
        if (c == 0) {
            uint32_t leaf = ward__node_new(b, s.off + pos, s.len - pos);
            *link = leaf;
            node = leaf;
            break;
        }
        ward__node_t *cn = &a->nodes[c];
        const char *label = a->arena + cn->label.off;
        uint32_t common = 0;
        while (common < cn->label.len && pos + common < s.len && label[common] == key[pos + common])
            common++;
        if (common < cn->label.len) {
            /* Split the edge: mid takes the common part and c hangs below it. */
            uint32_t mid = ward__node_new(b, cn->label.off, common);
            cn = &a->nodes[c];
            cn->label.off += common;
            cn->label.len -= common;
            a->nodes[mid].child = c;
            a->nodes[mid].sibling = cn->sibling;
            cn->sibling = 0;
            *link = mid;
            c = mid;
        }
        node = c;
        pos += common;
    }
    a->nodes[node].key = k;
    a->nodes[node].up = up;
}

/* Children lists become sorted edge arrays for binary search. */
static void ward__tree_edges(ward__build_t *b)
{
    ward_authz_t *a = b->a;
    for (size_t i = 0; i < b->n_nodes; i++) {
        ward__node_t *n = &a->nodes[i];
        n->edges.off = (uint32_t)b->n_edges;
        for (uint32_t c = n->child; c != 0; c = a->nodes[c].sibling) {
            uint32_t byte = (unsigned char)a->arena[a->nodes[c].label.off];
            size_t j = b->n_edges++;
            while (j > n->edges.off && a->edges[j - 1].byte > byte) {
                a->edges[j] = a->edges[j - 1];
                j--;
            }
            a->edges[j].byte = byte;
            a->edges[j].node = c;
        }
        n->edges.cnt = (uint32_t)(b->n_edges - n->edges.off);
    }
}

/* Groups the sorted postings into keys and fills the hash tables and the tree. */
static void ward__index(ward__build_t *b)
{
    ward_authz_t *a = b->a;
    size_t np = b->n.postings;
    const ward__posting_t *prev = NULL;
    ward__key_t *key = NULL;
    qsort(b->post, np, sizeof(*b->post), ward__posting_cmp);
    for (size_t i = 0; i < np; i++) {
        const ward__posting_t *p = &b->post[i];
        int same_key = prev && prev->kind == p->kind && prev->len == p->len &&
                       memcmp(prev->s, p->s, p->len) == 0;
        if (same_key && prev->action == p->action && prev->ord == p->ord) continue;
        if (!same_key) {
            key = &a->keys[b->n_keys++];
            memset(key, 0, sizeof(*key));
            key->s = ward__intern(b, p->s, p->len);
            key->hash = ward__hash(p->s, p->len);
            uint32_t k = (uint32_t)(b->n_keys - 1);
            if (p->kind == WARD__K_EXACT) ward__table_put(a->exact, a->exact_mask, key->hash, k);
            if (p->kind == WARD__K_NS) ward__table_put(a->ns, a->ns_mask, key->hash, k);
            if (p->kind == WARD__K_ANY) a->any = k;
        }
        ward__range_t *list = &key->list[p->action];
        if (list->cnt == 0) list->off = (uint32_t)b->n_ids;
        a->ids[b->n_ids++] = p->ord;
        list->cnt++;
        prev = p;
        /* The tree is fed once per key, after its first posting. */
        if (!same_key && p->kind == WARD__K_PREFIX) ward__tree_insert(b, (uint32_t)(b->n_keys - 1));
    }
    ward__tree_edges(b);
}

static void ward__destroy(ward_authz_t *a)
{
    if (a == NULL) return;
    ward_free(a->block);
    ward_free(a);
}

static uint32_t ward__action(Ward__V1__Action action)
{
    switch (action) {
    case WARD__V1__ACTION__ACTION_DENY:
        return WARD__DENY;
    case WARD__V1__ACTION__ACTION_AUDIT:
        return WARD__AUDIT;
    case WARD__V1__ACTION__ACTION_ALLOW:
        return WARD__ALLOW;
    default:
        return WARD__NONE;
    }
}

/* Checks and copies every policy, in (namespace, name) order. */
static int ward__fill(ward__build_t *b, const Ward__V1__PolicySnapshot *snap, ward__order_t *order)
{
    ward_authz_t *a = b->a;
    size_t np = snap ? snap->n_policies : 0;
    for (size_t i = 0; i < np; i++) {
        order[i].pb = snap->policies[i];
        order[i].index = i;
    }
    if (np > 1) qsort(order, np, sizeof(*order), ward__order_cmp);
    for (size_t i = 0; i < np; i++) {
        const Ward__V1__AuthorizationPolicy *pb = order[i].pb;
        uint32_t action = ward__action(pb->action);
        if (action == WARD__NONE)
            return ward__invalid(b, "a policy action is not ALLOW, DENY or AUDIT");
        const char *ns = ward__s(pb->namespace_), *name = ward__s(pb->name);
        size_t nl = strlen(ns), ml = strlen(name);
        char *dst = a->arena + b->n.arena;
        memcpy(dst, ns, nl);
        dst[nl] = '/';
        memcpy(dst + nl + 1, name, ml);
        dst[nl + 1 + ml] = '\0';
        b->n.arena += nl + ml + 2;
        a->policies[i].name = dst;
        a->policies[i].action = action;
        a->n_action[action]++;
        for (size_t r = 0; r < pb->n_rules; r++) {
            int rc = ward__rule(b, pb->rules[r], (uint32_t)i, (uint32_t)r, action);
            if (rc < 0) return rc;
        }
    }
    a->n_policies = np;
    a->n_rules = b->n.rules;
    return 0;
}

int ward_authz_compile(const Ward__V1__PolicySnapshot *snap, ward_authz_t **out, const char **why)
{
    ward__build_t b;
    ward__sizes_t n;
    ward__order_t *order = NULL;
    size_t exact_size, ns_size;
    int rc;
    if (why) *why = NULL;
    if (out == NULL) return WARD_EINVAL;
    *out = NULL;
    memset(&b, 0, sizeof(b));
    if (ward__count(snap, &n) < 0) {
        if (why) *why = "malformed or oversized snapshot";
        return WARD_EINVAL;
    }
    if (snap && snap->mesh_default != WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_DENY &&
        snap->mesh_default != WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_ALLOW &&
        snap->mesh_default != WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_AUDIT) {
        if (why) *why = "unknown mesh default action";
        return WARD_EINVAL;
    }

    ward_authz_t *a = ward_calloc(1, sizeof(*a));
    if (a == NULL) return WARD_ENOMEM;
    atomic_init(&a->refs, 1);
    a->version = snap ? snap->version : 0;
    a->mesh_default = snap ? snap->mesh_default : WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_DENY;
    a->any = WARD__NONE;
    b.a = a;
    if ((rc = ward__alloc_block(a, &n, &exact_size, &ns_size)) < 0) goto fail_authz;
    b.post = ward_malloc((n.postings ? n.postings : 1) * sizeof(*b.post));
    if (b.post == NULL) {
        rc = WARD_ENOMEM;
        goto fail_authz;
    }
    order = ward_malloc((n.policies ? n.policies : 1) * sizeof(*order));
    if (order == NULL) {
        rc = WARD_ENOMEM;
        goto free_post;
    }
    ward__node_new(&b, 0, 0); /* the root */
    if ((rc = ward__fill(&b, snap, order)) < 0) goto free_order;
    ward__index(&b);

    ward_free(order);
    ward_free(b.post);
    *out = a;
    return 0;

free_order:
    ward_free(order);
free_post:
    ward_free(b.post);
fail_authz:
    if (why) *why = b.why;
    ward__destroy(a);
    return rc;
}

/* protobuf-c's allocator on ward's, remembering a failure: unpack returns NULL for both bad bytes
 * and no memory. */
typedef struct {
    int failed;
} ward__pb_state_t;

static void *ward__pb_alloc(void *ud, size_t n)
{
    void *p = ward_malloc(n);
    if (p == NULL) ((ward__pb_state_t *)ud)->failed = 1;
    return p;
}

static void ward__pb_free(void *ud, void *p)
{
    ward_free(p);
}

int ward_authz_compile_packed(const uint8_t *data, size_t len, ward_authz_t **out, const char **why)
{
    static const uint8_t empty[1];
    ward__pb_state_t st = {0};
    ProtobufCAllocator pa = {ward__pb_alloc, ward__pb_free, &st};
    if (why) *why = NULL;
    if (out == NULL) return WARD_EINVAL;
    *out = NULL;
    Ward__V1__PolicySnapshot *snap =
        ward__v1__policy_snapshot__unpack(&pa, len, data ? data : empty);
    if (snap == NULL) {
        if (st.failed) return WARD_ENOMEM;
        if (why) *why = "the policy snapshot does not decode";
        return WARD_EPARSE;
    }
    int rc = ward_authz_compile(snap, out, why);
    ward__v1__policy_snapshot__free_unpacked(snap, &pa);
    return rc;
}

ward_authz_t *ward_authz_ref(ward_authz_t *a)
{
    if (a != NULL) atomic_fetch_add_explicit(&a->refs, 1, memory_order_relaxed);
    return a;
}

void ward_authz_unref(ward_authz_t *a)
{
    if (a == NULL) return;
    if (atomic_fetch_sub_explicit(&a->refs, 1, memory_order_acq_rel) == 1) ward__destroy(a);
}

uint64_t ward_authz_version(const ward_authz_t *a)
{
    return a->version;
}

size_t ward_authz_policy_count(const ward_authz_t *a)
{
    return a->n_policies;
}

size_t ward_authz_rule_count(const ward_authz_t *a)
{
    return a->n_rules;
}

const char *ward_authz_default_name(const ward_authz_t *a)
{
    switch (a->mesh_default) {
    case WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_ALLOW:
        return "allow";
    case WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_AUDIT:
        return "audit";
    default:
        return "deny";
    }
}

/* ---- evaluation ----------------------------------------------------------------------------- */

/* What one request looks like to the rules, worked out once. */
typedef struct {
    const ward_authz_request_t *req;
    int tcp;
    uint32_t method_bit; /* 0 = a method without a bit */
    size_t method_len;
    int has_source;
    int source_v4;
    uint8_t source[16];
} ward__ctx_t;

static int ward__str_eq(const ward_authz_t *a, ward__str_t s, const char *p, size_t len)
{
    return s.len == len && memcmp(a->arena + s.off, p, len) == 0;
}

static int ward__path_match(const ward_authz_t *a, const ward__pathpat_t *pp, const char *path,
                            size_t len)
{
    const char *s = a->arena + pp->s.off;
    switch (pp->kind) {
    case WARD__P_EXACT:
        return pp->s.len == len && memcmp(s, path, len) == 0;
    case WARD__P_PREFIX:
        return len >= pp->s.len && memcmp(s, path, pp->s.len) == 0;
    case WARD__P_SUFFIX:
        return len >= pp->s.len && memcmp(s, path + len - pp->s.len, pp->s.len) == 0;
    default:
        return 1;
    }
}

static int ward__op_match(const ward_authz_t *a, const ward__op_t *op, const ward__ctx_t *c)
{
    const ward_authz_request_t *req = c->req;
    if (op->ports.cnt > 0) {
        const uint16_t *p = a->ports + op->ports.off;
        uint32_t i = 0;
        while (i < op->ports.cnt && p[i] != req->port)
            i++;
        if (i == op->ports.cnt) return 0;
    }
    if (c->tcp) return 1; /* only DENY rules get here with methods or paths: they are ignored */
    if (op->has_methods && c->method_bit != 0) {
        if ((op->method_bits & c->method_bit) == 0) return 0;
    } else if (op->has_methods) {
        uint32_t i = 0;
        while (i < op->methods.cnt &&
               !ward__str_eq(a, a->strs[op->methods.off + i], req->method, c->method_len))
            i++;
        if (i == op->methods.cnt) return 0;
    }
    if (op->paths.cnt > 0) {
        const char *path = req->path ? req->path : "";
        size_t len = req->path ? req->path_len : 0;
        uint32_t i = 0;
        while (i < op->paths.cnt && !ward__path_match(a, &a->paths[op->paths.off + i], path, len))
            i++;
        if (i == op->paths.cnt) return 0;
    }
    return 1;
}

static int ward__cidr_match(const ward__cidr_t *n, const ward__ctx_t *c)
{
    if (n->v4 != c->source_v4) return 0;
    size_t full = n->bits / 8, rest = n->bits % 8;
    if (memcmp(n->addr, c->source, full) != 0) return 0;
    if (rest == 0) return 1;
    uint8_t mask = (uint8_t)(0xff << (8 - rest));
    return (n->addr[full] & mask) == (c->source[full] & mask);
}

static int ward__header_match(const ward_authz_t *a, const ward__cond_t *cond,
                              const ward_authz_request_t *req)
{
    const char *name = a->arena + cond->name.off;
    size_t vlen;
    const char *v;
    if (req->header == NULL) return 0;
    for (size_t idx = 0;
         (v = req->header(req->header_ctx, name, cond->name.len, idx, &vlen)) != NULL; idx++)
        for (uint32_t i = 0; i < cond->values.cnt; i++)
            if (ward__str_eq(a, a->strs[cond->values.off + i], v, vlen)) return 1;
    return 0;
}

static int ward__cond_match(const ward_authz_t *a, const ward__cond_t *cond, const ward__ctx_t *c)
{
    switch (cond->kind) {
    case WARD__C_HEADER:
        /* Opaque TCP: only a DENY rule gets here, and it ignores request.headers. */
        return c->tcp ? 1 : ward__header_match(a, cond, c->req);
    case WARD__C_IP:
        if (!c->has_source) return 0;
        for (uint32_t i = 0; i < cond->values.cnt; i++)
            if (ward__cidr_match(&a->cidrs[cond->values.off + i], c)) return 1;
        return 0;
    default:
        return c->req->hour >= 0 && c->req->hour <= 23 && (cond->hours >> c->req->hour) & 1;
    }
}

static int ward__rule_match(const ward_authz_t *a, const ward__rule_t *r, const ward__ctx_t *c)
{
    if (c->tcp && r->http && r->action != WARD__DENY) return 0;
    if (r->ops.cnt > 0) {
        uint32_t i = 0;
        while (i < r->ops.cnt && !ward__op_match(a, &a->ops[r->ops.off + i], c))
            i++;
        if (i == r->ops.cnt) return 0;
    }
    for (uint32_t i = 0; i < r->conds.cnt; i++)
        if (!ward__cond_match(a, &a->conds[r->conds.off + i], c)) return 0;
    return 1;
}

/* Lowers *best to the first matching rule of one ordinal list. */
static void ward__scan(const ward_authz_t *a, const ward__range_t *list, const ward__ctx_t *c,
                       uint32_t *best)
{
    const uint32_t *ids = a->ids + list->off;
    for (uint32_t i = 0; i < list->cnt && ids[i] < *best; i++) {
        if (ward__rule_match(a, &a->rules[ids[i]], c)) {
            *best = ids[i];
            return;
        }
    }
}

static uint32_t ward__lookup(const ward_authz_t *a, const uint32_t *table, size_t mask,
                             const char *s, size_t len)
{
    uint64_t h = ward__hash(s, len);
    for (size_t i = (size_t)h & mask; table[i] != 0; i = (i + 1) & mask) {
        const ward__key_t *k = &a->keys[table[i] - 1];
        if (k->hash == h && ward__str_eq(a, k->s, s, len)) return table[i] - 1;
    }
    return WARD__NONE;
}

/* The deepest tree node whose prefix starts id (its `up` chain holds the others), or NONE. */
static uint32_t ward__tree_walk(const ward_authz_t *a, const char *id, size_t len)
{
    uint32_t node = 0, pos = 0, deepest = a->nodes[0].key != WARD__NONE ? 0 : WARD__NONE;
    while (pos < len) {
        const ward__node_t *n = &a->nodes[node];
        const ward__edge_t *e = a->edges + n->edges.off;
        uint32_t lo = 0, hi = n->edges.cnt, byte = (unsigned char)id[pos];
        while (lo < hi) {
            uint32_t mid = lo + (hi - lo) / 2;
            if (e[mid].byte < byte)
                lo = mid + 1;
            else
                hi = mid;
        }
        if (lo == n->edges.cnt || e[lo].byte != byte) break;
        const ward__node_t *child = &a->nodes[e[lo].node];
        if (len - pos < child->label.len ||
            memcmp(a->arena + child->label.off, id + pos, child->label.len) != 0)
            break;
        pos += child->label.len;
        node = e[lo].node;
        if (child->key != WARD__NONE) deepest = node;
    }
    return deepest;
}

/* The NS of spiffe://TD/ns/NS[/...], or NULL. */
static const char *ward__peer_ns(const char *id, size_t len, size_t *ns_len)
{
    static const char scheme[] = "spiffe://";
    if (len < sizeof(scheme) - 1 || memcmp(id, scheme, sizeof(scheme) - 1) != 0) return NULL;
    const char *end = id + len, *p = memchr(id + 9, '/', len - 9);
    if (p == NULL || end - p < 5 || memcmp(p, "/ns/", 4) != 0) return NULL;
    const char *ns = p + 4, *slash = memchr(ns, '/', (size_t)(end - ns));
    *ns_len = (size_t)((slash ? slash : end) - ns);
    return *ns_len > 0 ? ns : NULL;
}

static void ward__prepare(const ward_authz_request_t *req, ward__ctx_t *c)
{
    memset(c, 0, sizeof(*c));
    c->req = req;
    c->tcp = req->method == NULL;
    if (!c->tcp) {
        c->method_len = strlen(req->method);
        int bit = ward__method_bit(req->method, c->method_len);
        c->method_bit = bit >= 0 ? 1u << bit : 0;
    }
    const struct sockaddr *sa = req->source;
    if (sa != NULL && sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        memcpy(c->source, &in->sin_addr, 4);
        c->has_source = c->source_v4 = 1;
    } else if (sa != NULL && sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        c->has_source = 1;
        if (ward__v4mapped(in6->sin6_addr.s6_addr)) {
            memcpy(c->source, in6->sin6_addr.s6_addr + 12, 4);
            c->source_v4 = 1;
        } else {
            memcpy(c->source, in6->sin6_addr.s6_addr, 16);
        }
    }
}

void ward_authz_eval(const ward_authz_t *a, const ward_authz_request_t *req,
                     ward_authz_result_t *res)
{
    ward__ctx_t c;
    uint32_t exact = WARD__NONE, ns = WARD__NONE, deepest = WARD__NONE;
    uint32_t best[WARD__ACTIONS];
    ward__prepare(req, &c);

    if (req->peer_id != NULL) {
        size_t len = strlen(req->peer_id), ns_len = 0;
        exact = ward__lookup(a, a->exact, a->exact_mask, req->peer_id, len);
        const char *nsp = ward__peer_ns(req->peer_id, len, &ns_len);
        if (nsp != NULL) ns = ward__lookup(a, a->ns, a->ns_mask, nsp, ns_len);
        deepest = ward__tree_walk(a, req->peer_id, len);
    }
    for (int act = 0; act < WARD__ACTIONS; act++) {
        best[act] = WARD__NONE;
        if (a->n_action[act] == 0) continue;
        if (a->any != WARD__NONE) ward__scan(a, &a->keys[a->any].list[act], &c, &best[act]);
        if (exact != WARD__NONE) ward__scan(a, &a->keys[exact].list[act], &c, &best[act]);
        if (ns != WARD__NONE) ward__scan(a, &a->keys[ns].list[act], &c, &best[act]);
        for (uint32_t n = deepest; n != WARD__NONE; n = a->nodes[n].up)
            ward__scan(a, &a->keys[a->nodes[n].key].list[act], &c, &best[act]);
    }

    res->audit_policy = best[WARD__AUDIT] != WARD__NONE
                            ? a->policies[a->rules[best[WARD__AUDIT]].policy].name
                            : NULL;
    uint32_t decider = WARD__NONE;
    if (best[WARD__DENY] != WARD__NONE) {
        decider = best[WARD__DENY];
        res->decision = WARD_AUTHZ_DENY;
        res->reason = "denied_by_policy";
    } else if (best[WARD__ALLOW] != WARD__NONE) {
        decider = best[WARD__ALLOW];
        res->decision = WARD_AUTHZ_ALLOW;
        res->reason = "allowed_by_policy";
    } else if (a->n_action[WARD__ALLOW] > 0) {
        res->decision = WARD_AUTHZ_DENY;
        res->reason = "no_allow_match";
        res->policy = NULL;
        res->rule = -1;
        return;
    } else {
        res->policy = "mesh-default";
        res->rule = -1;
        switch (a->mesh_default) {
        case WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_ALLOW:
            res->decision = WARD_AUTHZ_ALLOW;
            res->reason = "mesh_default_allow";
            break;
        case WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_AUDIT:
            res->decision = WARD_AUTHZ_ALLOW;
            res->reason = "mesh_default_audit";
            break;
        default:
            res->decision = WARD_AUTHZ_DENY;
            res->reason = "mesh_default_deny";
            break;
        }
        return;
    }
    const ward__rule_t *r = &a->rules[decider];
    res->policy = a->policies[r->policy].name;
    res->rule = (int)r->index;
}
