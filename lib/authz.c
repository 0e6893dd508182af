/* authz.c — the compiled, immutable policy matcher (see ward/authz.h).
 *
 * Compilation numbers every rule by (policy in (namespace, name) order, rule in file order): that
 * is the first-match order. Each `from` entry becomes a posting (key kind, key, action, rule):
 * exact identities, identity prefixes (the '*' dropped; "*" alone is the empty prefix) and
 * namespaces, plus one posting under the "any" key for each rule without `from`. Sorted, the
 * postings group into keys, each with one duplicate-free candidate list in first-match order.
 * Exact and namespace keys go into open-addressing hash tables, prefixes into a radix tree whose
 * keyed nodes also point at their nearest keyed ancestor, so one walk along the peer id yields
 * every matching prefix as a chain.
 *
 * Since a `from` clause is an OR of all its identities and namespaces, a rule is reachable from a
 * peer exactly when one of its keys matches, and evaluation only looks at the lists of those keys
 * (most specific first): one pass over each list keeps, per action, the first rule whose `to` and
 * `when` parts match, and skips candidates that come after the best one found so far. That gives
 * the first match per action without merging the lists and without allocating.
 *
 * A candidate carries, next to its rule, Bloom masks of what the rule's operations accept: its
 * ports, and its exact and prefix path literals (a literal's bits come from its length and its
 * last 8 bytes; a prefix literal ends in '/', so the request offers one literal per '/' in its
 * path, plus the whole path). A candidate whose masks miss the request's is skipped without
 * reading the rule, which is most of them in a set where one caller's rules differ by path; the
 * guards are combined without branches, so a list costs about one mispredicted branch.
 *
 * Layout, for the cache: everything evaluation reads lives in one heap of records addressed by
 * 32-bit byte offsets. A rule record starts a cache line and is followed by its operations, ports,
 * path patterns, conditions and their strings; a key record by its candidates, then its bytes; a
 * tree node record holds its label, edges and children, and a keyed node is followed by its key
 * record. Rule records are laid out in first-match order, so a rule's offset also orders it (its
 * low bits carry the action in a candidate). The heap is sized by a counting pass over the
 * snapshot (upper bounds) and allocated once; a failure anywhere in compilation unwinds through
 * one free function. */
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

#define WARD__NONE       UINT32_MAX
#define WARD__HEAP_MAX   ((size_t)1 << 31) /* offsets are 32-bit */
#define WARD__AT(a, off) ((void *)((a)->heap + (off)))

typedef struct {
    uint32_t off, len; /* heap offset of the bytes (NUL-terminated) */
} ward__str_t;

typedef struct {
    uint32_t kind;
    ward__str_t s; /* EXACT: the path; PREFIX: up to and with the last '/'; SUFFIX: after '*' */
} ward__pathpat_t;

typedef struct {
    uint32_t ports;       /* uint16_t[n_ports] */
    uint32_t methods;     /* ward__str_t[n_methods]: listed methods without a bit */
    uint32_t paths;       /* ward__pathpat_t[n_paths] */
    uint32_t method_bits; /* listed methods with a bit */
    uint16_t n_ports, n_methods, n_paths;
    uint16_t has_methods;
} ward__op_t;

typedef struct {
    uint32_t kind;
    ward__str_t name;          /* HEADER: the lowercase header name */
    uint32_t values, n_values; /* HEADER: ward__str_t[]; IP: ward__cidr_t[] */
    uint32_t hours;            /* HOUR: bit h set = hour h matches */
} ward__cond_t;

typedef struct {
    uint8_t addr[16];
    uint8_t bits;
    uint8_t v4; /* addr[0..4) is an IPv4 address */
} ward__cidr_t;

/* A rule record; its ops and conds follow it in the heap. */
typedef struct {
    uint32_t policy; /* index in a->policies */
    uint32_t index;  /* in that policy */
    uint32_t action;
    uint32_t http;           /* needs methods, paths or headers */
    uint32_t ops, n_ops;     /* ward__op_t[] */
    uint32_t conds, n_conds; /* ward__cond_t[] */
} ward__rule_t;

/* One candidate in a key's list: the rule record and the necessary conditions of its operations. */
typedef struct {
    uint32_t rule;         /* heap offset of the rule record (8-aligned: also the first-match
                              order), ORed with the rule's action in the low bits */
    uint32_t port_bits;    /* ward__port_bit of every listed port; all ones if some op lists none */
    uint64_t path_bits[2]; /* ward__path_mark of every exact/prefix literal; all ones if any path
                              goes */
} ward__entry_t;

/* A key record: its candidates follow (every action, in first-match order), then its bytes (only
 * a hash hit reads those). */
typedef struct {
    uint32_t len;
    uint32_t s; /* heap offset of the key's bytes */
    uint32_t n;
    ward__entry_t entries[];
} ward__key_t;

/* A tree node record: its label, the first byte of each child's label, then (4-aligned) the
 * children's record offsets. */
typedef struct {
    uint32_t key; /* key record of the prefix ending here, or WARD__NONE */
    uint32_t up;  /* nearest ancestor record with a key, or WARD__NONE */
    uint32_t n_edges;
    uint32_t label_len; /* the bytes the edge into this node consumes (0 for the root) */
    char label[];
} ward__node_t;

typedef struct {
    uint32_t key; /* key record + 1, 0 = empty */
    uint32_t hash;
} ward__slot_t;

typedef struct {
    const char *name; /* "namespace/name", in the heap */
    uint32_t action;
} ward__policy_t;

struct ward_authz {
    _Atomic size_t refs;
    uint64_t version;
    Ward__V1__DefaultAction mesh_default;
    size_t n_policies, n_rules;
    size_t n_action[WARD__ACTIONS]; /* policies per action */
    ward__policy_t *policies;
    ward__slot_t *exact, *ns; /* hash tables of key records */
    size_t exact_mask, ns_mask;
    uint32_t root; /* the tree's root record, or WARD__NONE without prefixes */
    uint32_t any;  /* the key record of the rules without `from`, or WARD__NONE */
    uint8_t *heap;
};

/* The edge bytes are followed by at least 8 bytes of the record, so the walk may read them eight
 * at a time. */
static size_t ward__node_size(uint32_t label_len, uint32_t n_edges)
{
    return ((sizeof(ward__node_t) + label_len + n_edges + 8 + 3) & ~(size_t)3) +
           n_edges * sizeof(uint32_t);
}

static const uint32_t *ward__node_children(const ward__node_t *n)
{
    size_t off = (sizeof(ward__node_t) + n->label_len + n->n_edges + 8 + 3) & ~(size_t)3;
    return (const uint32_t *)(const void *)((const char *)n + off);
}

/* ---- compilation ---------------------------------------------------------------------------- */

typedef struct {
    const char *s;
    uint32_t len;
    uint32_t kind;
    uint32_t action;
    uint32_t rule; /* heap offset of the rule record */
} ward__posting_t;

typedef struct {
    const Ward__V1__AuthorizationPolicy *pb;
    size_t index;
} ward__order_t;

/* A radix tree node while the tree is built (then serialised into node records). */
typedef struct {
    const char *label;
    uint32_t label_len;
    uint32_t key, key_end; /* the postings of the prefix ending here; key WARD__NONE if none */
    uint32_t up;           /* build index of the nearest keyed ancestor, or WARD__NONE */
    uint32_t child, sibling;
    uint32_t n_children;
    uint32_t rec, key_rec; /* its records, once placed */
} ward__tnode_t;

/* Upper bounds from the counting pass. */
typedef struct {
    size_t policies, rules, postings, prefixes, heap;
} ward__sizes_t;

typedef struct {
    ward_authz_t *a;
    size_t heap_used, heap_cap;
    ward__posting_t *post;
    size_t n_post;
    ward__tnode_t *nodes; /* n_nodes used of 1 + 2 * prefixes, then a stack of as many */
    size_t n_nodes;
    const char *why;
} ward__build_t;

static const char *ward__s(const char *s)
{
    return s ? s : "";
}

/* The last min(8, n) bytes of s[0..n) as one word. Short tails are assembled in a register: a
 * partial memcpy to the stack followed by a full load stalls store forwarding. */
static uint64_t ward__tail(const char *s, size_t n)
{
    uint64_t w = 0;
    if (n >= 8) {
        memcpy(&w, s + n - 8, 8);
        return w;
    }
    for (size_t i = 0; i < n; i++)
        w |= (uint64_t)(unsigned char)s[i] << (8 * i);
    return w;
}

/* Two words at a time in two independent lanes (half the latency of one chain), the last word
 * loaded overlapping, then murmur3's 64-bit finaliser: every input bit reaches the low bits that
 * index the tables (ids differ mostly in their last bytes). */
static uint64_t ward__hash(const char *s, size_t n)
{
    uint64_t h1 = 0x9e3779b97f4a7c15ULL ^ (uint64_t)n, h2 = 0xc2b2ae3d27d4eb4fULL, w1, w2;
    const char *end = s + n;
    if (n < 8) {
        h1 ^= ward__tail(s, n);
    } else {
        for (; end - s > 16; s += 16) {
            memcpy(&w1, s, 8);
            memcpy(&w2, s + 8, 8);
            h1 = (h1 ^ w1) * 0xff51afd7ed558ccdULL;
            h2 = (h2 ^ w2) * 0xc4ceb9fe1a85ec53ULL;
            h1 ^= h1 >> 32;
            h2 ^= h2 >> 29;
        }
        if (end - s > 8) {
            memcpy(&w1, s, 8);
            h1 = (h1 ^ w1) * 0xff51afd7ed558ccdULL;
            h1 ^= h1 >> 32;
        }
        memcpy(&w2, end - 8, 8);
        h1 ^= (h2 ^ w2) * 0x9e3779b97f4a7c15ULL;
    }
    h1 ^= h1 >> 33;
    h1 *= 0xff51afd7ed558ccdULL;
    h1 ^= h1 >> 33;
    h1 *= 0xc4ceb9fe1a85ec53ULL;
    return h1 ^ (h1 >> 33);
}

/* Slots for n keys: a power of two, at most two thirds full. */
static size_t ward__table_size(size_t n)
{
    size_t size = 2;
    while (size < n + n / 2 + 1)
        size *= 2;
    return size;
}

/* The guard bit of a port (of 32). */
static uint32_t ward__port_bit(uint32_t port)
{
    return 1u << ((port * 2654435761u) >> 27);
}

/* Sets the guard bits of the path literal s[0..len) in m: one in each of two 64-bit masks, from
 * the literal's length and last 8 bytes. A literal can match only if both its bits are in the
 * request's masks; testing each mask against the rule's union of bits keeps that necessary. */
static void ward__path_mark(uint64_t m[2], const char *s, size_t len)
{
    uint64_t h =
        (ward__tail(s, len) + (uint64_t)len * 0x9e3779b97f4a7c15ULL) * 0xff51afd7ed558ccdULL;
    m[0] |= 1ULL << (h >> 58);
    m[1] |= 1ULL << ((h >> 52) & 63);
}

static int ward__method_bit(const char *m, size_t len)
{
    switch (len) {
    case 3:
        if (memcmp(m, "GET", 3) == 0) return 0;
        if (memcmp(m, "PUT", 3) == 0) return 3;
        return -1;
    case 4:
        if (memcmp(m, "HEAD", 4) == 0) return 1;
        if (memcmp(m, "POST", 4) == 0) return 2;
        return -1;
    default:
        for (size_t i = 4; i < WARD__N_METHODS; i++)
            if (strlen(ward__methods[i]) == len && memcmp(ward__methods[i], m, len) == 0)
                return (int)i;
        return -1;
    }
}

static int ward__invalid(ward__build_t *b, const char *why)
{
    b->why = why;
    return WARD_EINVAL;
}

/* Room for n bytes at 8-byte alignment: the bound the counting pass adds per carve. */
#define WARD__SLOT(n) ((size_t)(n) + 8)
#define WARD__LINE    64

/* Sums what the snapshot can need; strings are measured, nothing is checked yet. */
static int ward__count(const Ward__V1__PolicySnapshot *snap, ward__sizes_t *n)
{
    memset(n, 0, sizeof(*n));
    for (size_t p = 0; snap && p < snap->n_policies; p++) {
        const Ward__V1__AuthorizationPolicy *pb = snap->policies[p];
        if (pb == NULL) return WARD_EINVAL;
        n->policies++;
        n->heap += WARD__SLOT(strlen(ward__s(pb->namespace_)) + strlen(ward__s(pb->name)) + 2);
        for (size_t r = 0; r < pb->n_rules; r++) {
            const Ward__V1__Rule *rule = pb->rules[r];
            if (rule == NULL) return WARD_EINVAL;
            n->rules++;
            n->heap += WARD__LINE + WARD__SLOT(sizeof(ward__rule_t)) +
                       WARD__SLOT(rule->n_to * sizeof(ward__op_t)) +
                       WARD__SLOT(rule->n_when * sizeof(ward__cond_t));
            size_t keys = rule->n_from == 0;
            for (size_t s = 0; s < rule->n_from; s++) {
                const Ward__V1__Source *src = rule->from[s];
                if (src == NULL) return WARD_EINVAL;
                keys += src->n_identities + src->n_namespaces;
                for (size_t i = 0; i < src->n_identities; i++) {
                    const char *id = ward__s(src->identities[i]);
                    size_t len = strlen(id);
                    n->heap += WARD__SLOT(sizeof(ward__key_t) + len + 1);
                    if (strchr(id, '*') != NULL) {
                        /* at most two nodes per prefix, labels within its length, two edges */
                        n->prefixes++;
                        n->heap += 2 * WARD__SLOT(sizeof(ward__node_t) + 2) + len +
                                   2 * WARD__SLOT(2 * sizeof(uint32_t));
                    }
                }
                for (size_t i = 0; i < src->n_namespaces; i++)
                    n->heap +=
                        WARD__SLOT(sizeof(ward__key_t) + strlen(ward__s(src->namespaces[i])) + 1);
            }
            n->postings += keys;
            n->heap += keys * (WARD__SLOT(sizeof(ward__key_t)) + WARD__SLOT(sizeof(ward__entry_t)));
            for (size_t o = 0; o < rule->n_to; o++) {
                const Ward__V1__Operation *op = rule->to[o];
                if (op == NULL) return WARD_EINVAL;
                n->heap += WARD__SLOT(op->n_ports * sizeof(uint16_t)) +
                           WARD__SLOT(op->n_methods * sizeof(ward__str_t)) +
                           WARD__SLOT(op->n_paths * sizeof(ward__pathpat_t));
                for (size_t i = 0; i < op->n_methods; i++)
                    n->heap += WARD__SLOT(strlen(ward__s(op->methods[i])) + 1);
                for (size_t i = 0; i < op->n_paths; i++)
                    n->heap += WARD__SLOT(strlen(ward__s(op->paths[i])) + 1);
            }
            for (size_t c = 0; c < rule->n_when; c++) {
                const Ward__V1__Condition *cond = rule->when[c];
                if (cond == NULL) return WARD_EINVAL;
                n->heap += WARD__SLOT(strlen(ward__s(cond->key)) + 1) +
                           WARD__SLOT(cond->n_values * sizeof(ward__str_t)) +
                           WARD__SLOT(cond->n_values * sizeof(ward__cidr_t));
                for (size_t i = 0; i < cond->n_values; i++)
                    n->heap += WARD__SLOT(strlen(ward__s(cond->values[i])) + 1);
            }
            if (n->heap >= WARD__HEAP_MAX) return WARD_EINVAL;
        }
    }
    n->heap += WARD__SLOT(sizeof(ward__node_t) + 1) + 16; /* the root */
    return n->heap < WARD__HEAP_MAX ? 0 : WARD_EINVAL;
}

/* n bytes of the heap, 8-byte aligned; the counting pass guarantees the room. */
static uint32_t ward__carve(ward__build_t *b, size_t n)
{
    size_t off = (b->heap_used + 7) & ~(size_t)7;
    b->heap_used = off + n;
    return (uint32_t)off;
}

/* The same at the start of a cache line pair: a candidate check then reads as few lines as it
 * can (a rule record and what follows it are usually under 128 bytes). */
static uint32_t ward__carve_line(ward__build_t *b, size_t n)
{
    b->heap_used = (b->heap_used + WARD__LINE - 1) & ~(size_t)(WARD__LINE - 1);
    return ward__carve(b, n);
}

/* Copies s[0..len) into the heap (NUL-terminated). */
static ward__str_t ward__intern(ward__build_t *b, const char *s, size_t len)
{
    ward__str_t out = {ward__carve(b, len + 1), (uint32_t)len};
    char *dst = WARD__AT(b->a, out.off);
    memcpy(dst, s, len);
    dst[len] = '\0';
    return out;
}

static void ward__post(ward__build_t *b, uint32_t kind, const char *s, size_t len, uint32_t action,
                       uint32_t rule)
{
    ward__posting_t *p = &b->post[b->n_post++];
    p->s = s;
    p->len = (uint32_t)len;
    p->kind = kind;
    p->action = action;
    p->rule = rule;
}

static int ward__source(ward__build_t *b, const Ward__V1__Source *src, uint32_t action,
                        uint32_t rule)
{
    if (src->n_identities == 0 && src->n_namespaces == 0)
        return ward__invalid(b, "a source lists no identities or namespaces");
    for (size_t i = 0; i < src->n_identities; i++) {
        const char *id = ward__s(src->identities[i]);
        size_t len = strlen(id);
        const char *star = strchr(id, '*');
        if (len == 0) return ward__invalid(b, "empty identity");
        if (star == NULL)
            ward__post(b, WARD__K_EXACT, id, len, action, rule);
        else if (star == id + len - 1)
            ward__post(b, WARD__K_PREFIX, id, len - 1, action, rule);
        else
            return ward__invalid(b, "'*' in an identity is only allowed as the last character");
    }
    for (size_t i = 0; i < src->n_namespaces; i++) {
        const char *ns = ward__s(src->namespaces[i]);
        if (ns[0] == '\0') return ward__invalid(b, "empty namespace");
        ward__post(b, WARD__K_NS, ns, strlen(ns), action, rule);
    }
    return 0;
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

static int ward__operation(ward__build_t *b, const Ward__V1__Operation *pb, uint32_t at)
{
    ward_authz_t *a = b->a;
    ward__op_t *op = WARD__AT(a, at);
    memset(op, 0, sizeof(*op));
    if (pb->n_ports == 0 && pb->n_methods == 0 && pb->n_paths == 0)
        return ward__invalid(b, "an operation lists no ports, methods or paths");
    if (pb->n_ports > UINT16_MAX || pb->n_methods > UINT16_MAX || pb->n_paths > UINT16_MAX)
        return ward__invalid(b, "an operation lists more than 65535 ports, methods or paths");
    op->ports = ward__carve(b, pb->n_ports * sizeof(uint16_t));
    for (size_t i = 0; i < pb->n_ports; i++) {
        if (pb->ports[i] < 1 || pb->ports[i] > 65535)
            return ward__invalid(b, "ports are integers in 1..65535");
        ((uint16_t *)WARD__AT(a, op->ports))[i] = (uint16_t)pb->ports[i];
    }
    op->n_ports = (uint16_t)pb->n_ports;
    op->has_methods = pb->n_methods > 0;
    size_t unknown = 0;
    for (size_t i = 0; i < pb->n_methods; i++) {
        const char *m = ward__s(pb->methods[i]);
        unknown += ward__method_bit(m, strlen(m)) < 0;
    }
    op->methods = ward__carve(b, unknown * sizeof(ward__str_t));
    for (size_t i = 0; i < pb->n_methods; i++) {
        const char *m = ward__s(pb->methods[i]);
        size_t len = strlen(m);
        if (len == 0) return ward__invalid(b, "empty method");
        int bit = ward__method_bit(m, len);
        if (bit >= 0) {
            op->method_bits |= 1u << bit;
        } else {
            ward__str_t s = ward__intern(b, m, len);
            ((ward__str_t *)WARD__AT(a, op->methods))[op->n_methods++] = s;
        }
    }
    op->paths = ward__carve(b, pb->n_paths * sizeof(ward__pathpat_t));
    for (size_t i = 0; i < pb->n_paths; i++) {
        ward__pathpat_t pp;
        int rc = ward__path_pattern(b, ward__s(pb->paths[i]), &pp);
        if (rc < 0) return rc;
        ((ward__pathpat_t *)WARD__AT(a, op->paths))[i] = pp;
    }
    op->n_paths = (uint16_t)pb->n_paths;
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

static int ward__condition(ward__build_t *b, const Ward__V1__Condition *pb, uint32_t at,
                           uint32_t *http)
{
    static const char hdr[] = "request.headers[";
    const size_t hlen = sizeof(hdr) - 1;
    ward_authz_t *a = b->a;
    ward__cond_t *c = WARD__AT(a, at);
    const char *key = ward__s(pb->key);
    size_t klen = strlen(key);
    memset(c, 0, sizeof(*c));
    if (pb->n_values == 0) return ward__invalid(b, "a condition lists no values");
    if (strcmp(key, "source.ip") == 0) {
        c->kind = WARD__C_IP;
        c->values = ward__carve(b, pb->n_values * sizeof(ward__cidr_t));
        ward__cidr_t *v = WARD__AT(a, c->values);
        for (size_t i = 0; i < pb->n_values; i++)
            if (ward__cidr(ward__s(pb->values[i]), &v[i]) < 0)
                return ward__invalid(b, "source.ip values are IPv4/IPv6 addresses or CIDRs");
        c->n_values = (uint32_t)pb->n_values;
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
        char *name = WARD__AT(a, c->name.off);
        for (size_t i = 0; i < c->name.len; i++)
            if (name[i] >= 'A' && name[i] <= 'Z') name[i] = (char)(name[i] - 'A' + 'a');
        c->values = ward__carve(b, pb->n_values * sizeof(ward__str_t));
        for (size_t i = 0; i < pb->n_values; i++) {
            const char *v = ward__s(pb->values[i]);
            ward__str_t s = ward__intern(b, v, strlen(v));
            ((ward__str_t *)WARD__AT(a, c->values))[i] = s;
        }
        c->n_values = (uint32_t)pb->n_values;
        *http = 1;
    } else {
        return ward__invalid(b, "unknown condition key (request.headers[name], source.ip or "
                                "time.hour)");
    }
    return 0;
}

/* The entry of rule record at: the union over its operations of what each accepts, a necessary
 * condition for a match. */
static void ward__entry(const ward_authz_t *a, uint32_t at, ward__entry_t *e)
{
    const ward__rule_t *r = WARD__AT(a, at);
    const ward__op_t *ops = WARD__AT(a, r->ops);
    e->rule = at;
    e->port_bits = r->n_ops ? 0 : UINT32_MAX;
    e->path_bits[0] = e->path_bits[1] = r->n_ops ? 0 : UINT64_MAX;
    for (uint32_t i = 0; i < r->n_ops; i++) {
        const ward__op_t *op = &ops[i];
        const uint16_t *ports = WARD__AT(a, op->ports);
        const ward__pathpat_t *paths = WARD__AT(a, op->paths);
        if (op->n_ports == 0) e->port_bits = UINT32_MAX;
        for (uint32_t k = 0; k < op->n_ports; k++)
            e->port_bits |= ward__port_bit(ports[k]);
        for (uint32_t k = 0; k < op->n_paths; k++)
            if (paths[k].kind == WARD__P_EXACT || paths[k].kind == WARD__P_PREFIX)
                ward__path_mark(e->path_bits, WARD__AT(a, paths[k].s.off), paths[k].s.len);
        for (uint32_t k = 0; k < op->n_paths; k++)
            if (paths[k].kind != WARD__P_EXACT && paths[k].kind != WARD__P_PREFIX)
                e->path_bits[0] = e->path_bits[1] = UINT64_MAX;
        if (op->n_paths == 0) e->path_bits[0] = e->path_bits[1] = UINT64_MAX;
    }
}

static int ward__rule(ward__build_t *b, const Ward__V1__Rule *pb, uint32_t policy, uint32_t index,
                      uint32_t action)
{
    ward_authz_t *a = b->a;
    uint32_t at = ward__carve_line(b, sizeof(ward__rule_t));
    ward__rule_t *r = WARD__AT(a, at);
    int rc;
    memset(r, 0, sizeof(*r));
    r->policy = policy;
    r->index = index;
    r->action = action;
    if (pb->n_from == 0 && pb->n_to == 0 && pb->n_when == 0)
        return ward__invalid(b, "a rule has no from, to or when");
    if (pb->n_from == 0) ward__post(b, WARD__K_ANY, "", 0, action, at);
    for (size_t i = 0; i < pb->n_from; i++)
        if ((rc = ward__source(b, pb->from[i], action, at)) < 0) return rc;
    r->ops = ward__carve(b, pb->n_to * sizeof(ward__op_t));
    r->n_ops = (uint32_t)pb->n_to;
    for (size_t i = 0; i < pb->n_to; i++) {
        uint32_t op = r->ops + (uint32_t)(i * sizeof(ward__op_t));
        if ((rc = ward__operation(b, pb->to[i], op)) < 0) return rc;
        const ward__op_t *o = WARD__AT(a, op);
        if (o->has_methods || o->n_paths > 0) r->http = 1;
    }
    r->conds = ward__carve(b, pb->n_when * sizeof(ward__cond_t));
    r->n_conds = (uint32_t)pb->n_when;
    for (size_t i = 0; i < pb->n_when; i++) {
        uint32_t cond = r->conds + (uint32_t)(i * sizeof(ward__cond_t));
        if ((rc = ward__condition(b, pb->when[i], cond, &r->http)) < 0) return rc;
    }
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
    return (p->rule > q->rule) - (p->rule < q->rule);
}

static int ward__same_key(const ward__posting_t *p, const ward__posting_t *q)
{
    return p->kind == q->kind && p->len == q->len && memcmp(p->s, q->s, p->len) == 0;
}

static void ward__table_put(ward__slot_t *table, size_t mask, uint64_t hash, uint32_t key)
{
    size_t i = (size_t)hash & mask;
    while (table[i].key != 0)
        i = (i + 1) & mask;
    table[i].key = key + 1;
    table[i].hash = (uint32_t)(hash >> 32);
}

static uint32_t ward__tnode_new(ward__build_t *b, const char *label, uint32_t len)
{
    uint32_t i = (uint32_t)b->n_nodes++;
    ward__tnode_t *n = &b->nodes[i];
    memset(n, 0, sizeof(*n));
    n->label = label;
    n->label_len = len;
    n->key = n->up = WARD__NONE;
    return i;
}

/* Inserts the prefix of postings [first, end); keys arrive shortest first, so every keyed ancestor
 * exists already and the `up` found on the way down stays right (later, longer keys never end
 * above this one, and splitting an edge adds a node without a key). */
static void ward__tree_insert(ward__build_t *b, size_t first, size_t end)
{
    const char *key = b->post[first].s;
    uint32_t len = b->post[first].len, node = 0, pos = 0, up = WARD__NONE;
    while (pos < len) {
        if (b->nodes[node].key != WARD__NONE) up = node;
        uint32_t *link = &b->nodes[node].child, c = *link;
        while (c != 0 && b->nodes[c].label[0] != key[pos]) {
            link = &b->nodes[c].sibling;
            c = *link;
        }
        if (c == 0) {
            uint32_t leaf = ward__tnode_new(b, key + pos, len - pos);
            *link = leaf;
            b->nodes[node].n_children++;
            node = leaf;
            break;
        }
        ward__tnode_t *cn = &b->nodes[c];
        uint32_t common = 0;
        while (common < cn->label_len && pos + common < len &&
               cn->label[common] == key[pos + common])
            common++;
        if (common < cn->label_len) {
            /* Split the edge: mid takes the common part and c hangs below it. */
            uint32_t mid = ward__tnode_new(b, cn->label, common);
            cn = &b->nodes[c];
            cn->label += common;
            cn->label_len -= common;
            b->nodes[mid].child = c;
            b->nodes[mid].n_children = 1;
            b->nodes[mid].sibling = cn->sibling;
            cn->sibling = 0;
            *link = mid;
            c = mid;
        }
        node = c;
        pos += common;
    }
    b->nodes[node].key = (uint32_t)first;
    b->nodes[node].key_end = (uint32_t)end;
    b->nodes[node].up = up;
}

/* Writes the key record of postings [first, end) (sorted by rule); with_bytes copies the key
 * itself, for the hash tables to compare. Returns its offset. */
static uint32_t ward__key_record(ward__build_t *b, size_t first, size_t end, int with_bytes)
{
    ward_authz_t *a = b->a;
    const ward__posting_t *p = b->post;
    size_t n = 0;
    /* the same rule listing the same key twice is one candidate */
    for (size_t j = first; j < end; j++)
        n += j == first || p[j].rule != p[j - 1].rule;
    uint32_t k = ward__carve(b, sizeof(ward__key_t) + n * sizeof(ward__entry_t));
    ward__key_t *key = WARD__AT(a, k);
    memset(key, 0, sizeof(*key));
    key->len = p[first].len;
    if (with_bytes) key->s = ward__intern(b, p[first].s, p[first].len).off;
    for (size_t j = first; j < end; j++) {
        if (j > first && p[j].rule == p[j - 1].rule) continue;
        ward__entry(a, p[j].rule, &key->entries[key->n]);
        key->entries[key->n++].rule |= p[j].action;
    }
    return k;
}

/* Writes the tree into node records, in depth-first order (children close to their parent), each
 * keyed one followed by its key record, which the walk has just brought into cache. */
static void ward__tree_place(ward__build_t *b)
{
    ward_authz_t *a = b->a;
    uint32_t *stack = (uint32_t *)(b->nodes + b->n_nodes), top = 0;
    /* First the offsets (ancestors before descendants), then the contents. */
    stack[top++] = 0;
    while (top > 0) {
        ward__tnode_t *n = &b->nodes[stack[--top]];
        n->rec = ward__carve(b, ward__node_size(n->label_len, n->n_children));
        if (n->key != WARD__NONE) n->key_rec = ward__key_record(b, n->key, n->key_end, 0);
        for (uint32_t c = n->child; c != 0; c = b->nodes[c].sibling)
            stack[top++] = c;
    }
    for (size_t i = 0; i < b->n_nodes; i++) {
        const ward__tnode_t *n = &b->nodes[i];
        ward__node_t *rec = WARD__AT(a, n->rec);
        rec->key = n->key == WARD__NONE ? WARD__NONE : n->key_rec;
        rec->up = n->up == WARD__NONE ? WARD__NONE : b->nodes[n->up].rec;
        rec->label_len = n->label_len;
        rec->n_edges = n->n_children;
        memcpy(rec->label, n->label, n->label_len);
        uint32_t *children = (uint32_t *)ward__node_children(rec), e = 0;
        for (uint32_t c = n->child; c != 0; c = b->nodes[c].sibling, e++) {
            rec->label[n->label_len + e] = b->nodes[c].label[0];
            children[e] = b->nodes[c].rec;
        }
    }
    a->root = b->nodes[0].rec;
}

/* Groups the sorted postings into key records and fills the hash tables (sized here, for the
 * distinct keys) and the tree. Returns 0 or WARD_ENOMEM. */
static int ward__index(ward__build_t *b)
{
    ward_authz_t *a = b->a;
    size_t np = b->n_post, prefixes = 0, n_exact = 0, n_ns = 0;
    qsort(b->post, np, sizeof(*b->post), ward__posting_cmp);
    for (size_t i = 0; i < np; i++) {
        if (i > 0 && ward__same_key(&b->post[i - 1], &b->post[i])) continue;
        n_exact += b->post[i].kind == WARD__K_EXACT;
        n_ns += b->post[i].kind == WARD__K_NS;
    }
    size_t exact = ward__table_size(n_exact), ns = ward__table_size(n_ns);
    a->exact = ward_calloc(exact + ns, sizeof(ward__slot_t));
    if (a->exact == NULL) return WARD_ENOMEM;
    a->ns = a->exact + exact;
    a->exact_mask = exact - 1;
    a->ns_mask = ns - 1;
    for (size_t i = 0; i < np;) {
        const ward__posting_t *p = &b->post[i];
        size_t end = i + 1;
        while (end < np && ward__same_key(p, &b->post[end]))
            end++;
        if (p->kind == WARD__K_PREFIX) {
            /* its key record goes next to its tree node, once the tree is complete */
            ward__tree_insert(b, i, end);
            prefixes++;
        } else {
            uint32_t k = ward__key_record(b, i, end, p->kind != WARD__K_ANY);
            uint64_t hash = ward__hash(p->s, p->len);
            if (p->kind == WARD__K_EXACT) ward__table_put(a->exact, a->exact_mask, hash, k);
            if (p->kind == WARD__K_NS) ward__table_put(a->ns, a->ns_mask, hash, k);
            if (p->kind == WARD__K_ANY) a->any = k;
        }
        i = end;
    }
    if (prefixes > 0) ward__tree_place(b);
    return 0;
}

static void ward__destroy(ward_authz_t *a)
{
    if (a == NULL) return;
    ward_free(a->heap);
    ward_free(a->exact);
    ward_free(a->policies);
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
        char *dst = WARD__AT(a, ward__carve(b, nl + ml + 2));
        memcpy(dst, ns, nl);
        dst[nl] = '/';
        memcpy(dst + nl + 1, name, ml);
        dst[nl + 1 + ml] = '\0';
        a->policies[i].name = dst;
        a->policies[i].action = action;
        a->n_action[action]++;
        for (size_t r = 0; r < pb->n_rules; r++) {
            int rc = ward__rule(b, pb->rules[r], (uint32_t)i, (uint32_t)r, action);
            if (rc < 0) return rc;
            a->n_rules++;
        }
    }
    a->n_policies = np;
    return 0;
}

int ward_authz_compile(const Ward__V1__PolicySnapshot *snap, ward_authz_t **out, const char **why)
{
    ward__build_t b;
    ward__sizes_t n;
    ward__order_t *order = NULL;
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
    a->any = a->root = WARD__NONE;
    b.a = a;

    a->policies = ward_calloc(n.policies ? n.policies : 1, sizeof(*a->policies));
    a->heap = ward_malloc(n.heap);
    b.post = ward_malloc((n.postings ? n.postings : 1) * sizeof(*b.post));
    if (a->policies == NULL || a->heap == NULL || b.post == NULL) {
        rc = WARD_ENOMEM;
        goto free_post;
    }
    b.heap_cap = n.heap;
    ward__carve(&b, 8); /* offset 0 is never a record */
    order = ward_malloc((n.policies ? n.policies : 1) * sizeof(*order));
    if (order == NULL) {
        rc = WARD_ENOMEM;
        goto free_post;
    }
    if ((rc = ward__fill(&b, snap, order)) < 0) goto free_order;
    /* Tree nodes while building, and the stack that places them. */
    size_t nodes = 1 + 2 * n.prefixes;
    b.nodes = ward_malloc(nodes * (sizeof(ward__tnode_t) + sizeof(uint32_t)));
    if (b.nodes == NULL) {
        rc = WARD_ENOMEM;
        goto free_order;
    }
    ward__tnode_new(&b, "", 0);
    rc = ward__index(&b);
    ward_free(b.nodes);
    if (rc < 0) goto free_order;

    ward_free(order);
    ward_free(b.post);
    *out = a;
    return 0;

free_order:
    ward_free(order);
free_post:
    ward_free(b.post);
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
    const char *path;
    size_t path_len;
    int has_source;
    int source_v4;
    uint8_t source[16];
    uint32_t port_bit;     /* the request's guard bits */
    uint64_t path_bits[2]; /* a literal per '/' of the path and the whole path; all ones for TCP */
} ward__ctx_t;

static int ward__str_eq(const ward_authz_t *a, ward__str_t s, const char *p, size_t len)
{
    return s.len == len && memcmp(a->heap + s.off, p, len) == 0;
}

static int ward__path_match(const ward_authz_t *a, const ward__pathpat_t *pp, const char *path,
                            size_t len)
{
    const uint8_t *s = a->heap + pp->s.off;
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
    if (op->n_ports > 0) {
        const uint16_t *p = WARD__AT(a, op->ports);
        uint32_t i = 0;
        while (i < op->n_ports && p[i] != req->port)
            i++;
        if (i == op->n_ports) return 0;
    }
    if (c->tcp) return 1; /* only DENY rules get here with methods or paths: they are ignored */
    if (op->has_methods && c->method_bit != 0) {
        if ((op->method_bits & c->method_bit) == 0) return 0;
    } else if (op->has_methods) {
        const ward__str_t *m = WARD__AT(a, op->methods);
        uint32_t i = 0;
        while (i < op->n_methods && !ward__str_eq(a, m[i], req->method, c->method_len))
            i++;
        if (i == op->n_methods) return 0;
    }
    if (op->n_paths > 0) {
        const ward__pathpat_t *pp = WARD__AT(a, op->paths);
        uint32_t i = 0;
        while (i < op->n_paths && !ward__path_match(a, &pp[i], c->path, c->path_len))
            i++;
        if (i == op->n_paths) return 0;
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
    const char *name = WARD__AT(a, cond->name.off);
    const ward__str_t *values = WARD__AT(a, cond->values);
    size_t vlen;
    const char *v;
    if (req->header == NULL) return 0;
    for (size_t idx = 0;
         (v = req->header(req->header_ctx, name, cond->name.len, idx, &vlen)) != NULL; idx++)
        for (uint32_t i = 0; i < cond->n_values; i++)
            if (ward__str_eq(a, values[i], v, vlen)) return 1;
    return 0;
}

static int ward__cond_match(const ward_authz_t *a, const ward__cond_t *cond, const ward__ctx_t *c)
{
    switch (cond->kind) {
    case WARD__C_HEADER:
        /* Opaque TCP: only a DENY rule gets here, and it ignores request.headers. */
        return c->tcp ? 1 : ward__header_match(a, cond, c->req);
    case WARD__C_IP: {
        const ward__cidr_t *v = WARD__AT(a, cond->values);
        if (!c->has_source) return 0;
        for (uint32_t i = 0; i < cond->n_values; i++)
            if (ward__cidr_match(&v[i], c)) return 1;
        return 0;
    }
    default:
        return c->req->hour >= 0 && c->req->hour <= 23 && (cond->hours >> c->req->hour) & 1;
    }
}

static int ward__rule_match(const ward_authz_t *a, const ward__rule_t *r, const ward__ctx_t *c)
{
    if (c->tcp && r->http && r->action != WARD__DENY) return 0;
    if (r->n_ops > 0) {
        const ward__op_t *ops = WARD__AT(a, r->ops);
        uint32_t i = 0;
        while (i < r->n_ops && !ward__op_match(a, &ops[i], c))
            i++;
        if (i == r->n_ops) return 0;
    }
    const ward__cond_t *conds = WARD__AT(a, r->conds);
    for (uint32_t i = 0; i < r->n_conds; i++)
        if (!ward__cond_match(a, &conds[i], c)) return 0;
    return 1;
}

/* Lowers best[action] to the first matching rule of each action among key record k's candidates.
 * One pass over all actions, and one branch per candidate that is mostly not taken: the guards are
 * combined without short-circuit. */
static void ward__scan(const ward_authz_t *a, uint32_t k, const ward__ctx_t *c, uint32_t *best)
{
    const ward__key_t *key = WARD__AT(a, k);
    const ward__entry_t *e = key->entries, *end = e + key->n;
    for (; e < end; e++) {
        uint32_t act = e->rule & 7, at = e->rule & ~7u;
        int maybe = (at < best[act]) & ((e->port_bits & c->port_bit) != 0) &
                    ((e->path_bits[0] & c->path_bits[0]) != 0) &
                    ((e->path_bits[1] & c->path_bits[1]) != 0);
        if (maybe && ward__rule_match(a, WARD__AT(a, at), c)) best[act] = at;
    }
}

static uint32_t ward__lookup(const ward_authz_t *a, const ward__slot_t *table, size_t mask,
                             const char *s, size_t len, uint64_t h)
{
    for (size_t i = (size_t)h & mask; table[i].key != 0; i = (i + 1) & mask) {
        if (table[i].hash != (uint32_t)(h >> 32)) continue;
        const ward__key_t *k = WARD__AT(a, table[i].key - 1);
        if (k->len == len && memcmp(a->heap + k->s, s, len) == 0) return table[i].key - 1;
    }
    return WARD__NONE;
}

/* The index of n's edge for byte ch, or WARD__NONE: eight edge bytes at a time (see
 * ward__node_size), a branch per eight edges rather than per edge. */
static uint32_t ward__edge(const ward__node_t *n, unsigned ch)
{
    const uint64_t ones = 0x0101010101010101ULL, low7 = 0x7f7f7f7f7f7f7f7fULL;
    const char *edges = n->label + n->label_len;
    for (uint32_t i = 0; i < n->n_edges; i += 8) {
        uint64_t w, x, z;
        memcpy(&w, edges + i, 8);
        x = w ^ (ones * ch);
        z = ~(((x & low7) + low7) | x | low7); /* 0x80 in each byte equal to ch */
        if (n->n_edges - i < 8) z &= (1ULL << (8 * (n->n_edges - i))) - 1;
        if (z != 0) return i + (uint32_t)__builtin_ctzll(z) / 8;
    }
    return WARD__NONE;
}

/* s[0..n) == t[0..n), a word at a time (both have n readable bytes). */
static int ward__same_bytes(const char *s, const char *t, size_t n)
{
    uint64_t x, y;
    for (; n >= 8; s += 8, t += 8, n -= 8) {
        memcpy(&x, s, 8);
        memcpy(&y, t, 8);
        if (x != y) return 0;
    }
    return ward__tail(s, n) == ward__tail(t, n);
}

/* The deepest node record whose prefix starts id (its `up` chain holds the others), or NONE. */
static uint32_t ward__tree_walk(const ward_authz_t *a, const char *id, size_t len)
{
    if (a->root == WARD__NONE) return WARD__NONE;
    const ward__node_t *n = WARD__AT(a, a->root);
    uint32_t pos = 0, deepest = n->key != WARD__NONE ? a->root : WARD__NONE;
    while (pos < len) {
        uint32_t e = ward__edge(n, (unsigned char)id[pos]);
        if (e == WARD__NONE) break;
        uint32_t at = ward__node_children(n)[e];
        const ward__node_t *child = WARD__AT(a, at);
        if (len - pos < child->label_len ||
            !ward__same_bytes(child->label, id + pos, child->label_len))
            break;
        pos += child->label_len;
        n = child;
        if (n->key != WARD__NONE) {
            deepest = at;
            __builtin_prefetch(a->heap + n->key);
        }
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

/* Marks the whole path and each of its prefixes that ends in '/'. Eight bytes at a time: a branch
 * per slash rather than per byte. */
static void ward__path_slashes(ward__ctx_t *c)
{
    const uint64_t ones = 0x0101010101010101ULL, low7 = 0x7f7f7f7f7f7f7f7fULL;
    const char *p = c->path;
    size_t len = c->path_len, i = 0;
    ward__path_mark(c->path_bits, p, len);
    for (; i + 8 <= len; i += 8) {
        uint64_t w, x, z;
        memcpy(&w, p + i, 8);
        x = w ^ (ones * '/');
        z = ~(((x & low7) + low7) | x | low7); /* 0x80 in each byte of w that is '/' */
        for (; z != 0; z &= z - 1)
            ward__path_mark(c->path_bits, p, i + (size_t)__builtin_ctzll(z) / 8 + 1);
    }
    for (; i < len; i++)
        if (p[i] == '/') ward__path_mark(c->path_bits, p, i + 1);
}

static void ward__prepare(const ward_authz_request_t *req, ward__ctx_t *c)
{
    memset(c, 0, sizeof(*c));
    c->req = req;
    c->tcp = req->method == NULL;
    c->port_bit = ward__port_bit(req->port);
    c->path_bits[0] = c->path_bits[1] = UINT64_MAX;
    if (!c->tcp) {
        c->method_len = strlen(req->method);
        int bit = ward__method_bit(req->method, c->method_len);
        c->method_bit = bit >= 0 ? 1u << bit : 0;
        c->path = req->path ? req->path : "";
        c->path_len = req->path ? req->path_len : 0;
        c->path_bits[0] = c->path_bits[1] = 0;
        ward__path_slashes(c);
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
        /* The two hash probes are independent of the tree walk: start their loads first. */
        size_t len = strlen(req->peer_id), ns_len = 0;
        const char *nsp = ward__peer_ns(req->peer_id, len, &ns_len);
        uint64_t he = ward__hash(req->peer_id, len), hn = nsp ? ward__hash(nsp, ns_len) : 0;
        __builtin_prefetch(&a->exact[he & a->exact_mask]);
        if (nsp != NULL) __builtin_prefetch(&a->ns[hn & a->ns_mask]);
        deepest = ward__tree_walk(a, req->peer_id, len);
        exact = ward__lookup(a, a->exact, a->exact_mask, req->peer_id, len, he);
        if (nsp != NULL) ns = ward__lookup(a, a->ns, a->ns_mask, nsp, ns_len, hn);
    }
    /* Most specific first: an early match bounds the checks in the longer lists. */
    best[0] = best[1] = best[2] = WARD__NONE;
    if (exact != WARD__NONE) ward__scan(a, exact, &c, best);
    for (uint32_t n = deepest; n != WARD__NONE;) {
        const ward__node_t *node = WARD__AT(a, n);
        ward__scan(a, node->key, &c, best);
        n = node->up;
    }
    if (ns != WARD__NONE) ward__scan(a, ns, &c, best);
    if (a->any != WARD__NONE) ward__scan(a, a->any, &c, best);

    res->audit_policy = NULL;
    if (best[WARD__AUDIT] != WARD__NONE) {
        const ward__rule_t *r = WARD__AT(a, best[WARD__AUDIT]);
        res->audit_policy = a->policies[r->policy].name;
    }
    uint32_t decider;
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
    const ward__rule_t *r = WARD__AT(a, decider);
    res->policy = a->policies[r->policy].name;
    res->rule = (int)r->index;
}
