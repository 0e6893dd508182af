/* ward/authz.h — the compiled, immutable policy matcher (DESIGN.md, "Policy"). One ward_authz_t is
 * built from one ward.v1.PolicySnapshot (the policies that select this workload, plus the mesh
 * default) and then only read, by any number of threads; it is refcounted so a new snapshot can
 * replace it while requests that started on the old one finish.
 *
 * Evaluation order for one request or connection:
 *   1. any DENY policy rule matches        -> DENY  (reason "denied_by_policy", that policy/rule)
 *   2. any AUDIT policy rule matches       -> remembered in res->audit_policy (decision unchanged)
 *   3. some ALLOW policy selects us:
 *        an ALLOW rule matches             -> ALLOW (reason "allowed_by_policy", first match in
 *                                             (namespace, name) order, rules in file order)
 *        none matches                      -> DENY  (reason "no_allow_match", policy NULL)
 *   4. no ALLOW policy                     -> the mesh default: deny -> DENY ("mesh_default_deny"),
 *                                             allow or audit -> ALLOW ("mesh_default_allow" /
 *                                             "mesh_default_audit"); policy "mesh-default".
 * A rule matches when each of its parts that is present matches: from (any Source: any listed
 * identity — exact, prefix ending in '*', or '*' alone = any authenticated peer — or any listed
 * namespace, taken from spiffe://TD/ns/NS/...), to (any Operation: port listed, method listed,
 * path listed — exact, "/prefix/" + '*', "*suffix", or "*"), when (every Condition: one of its
 * values).
 * An unauthenticated caller (peer_id NULL) matches no `from` clause (but does match a rule without
 * `from`).
 *
 * Opaque TCP (method == NULL): an ALLOW or AUDIT rule that needs HTTP attributes (methods, paths,
 * request.headers conditions) cannot match; in a DENY rule those parts are ignored, so the deny
 * covers the whole connection (fail closed, as Istio does).
 *
 * Conditions: request.headers[name] compares the header's value exactly (any of its values when it
 * repeats); source.ip matches addresses and CIDRs (IPv4, IPv6; IPv4-mapped IPv6 sources compare
 * as IPv4); time.hour "H" or "H-H" inclusive, "22-6" wraps past midnight, hours in UTC.
 *
 * Performance: exact identities are looked up in a hash table, wildcard identities by walking a
 * prefix tree along the peer id, namespaces in a hash table; only the rules reachable from the
 * caller's identity are checked further. */
#ifndef WARD_AUTHZ_H
#define WARD_AUTHZ_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "ward/v1/mesh.pb-c.h"

typedef struct ward_authz ward_authz_t;

typedef enum { WARD_AUTHZ_DENY = 0, WARD_AUTHZ_ALLOW = 1 } ward_authz_decision_t;

/* Looks up request header `name` (lowercase, name_len bytes): returns the index-th value (0-based)
 * and its length in *value_len, or NULL when there is no such value. */
typedef const char *(*ward_authz_header_fn)(void *ctx, const char *name, size_t name_len,
                                            size_t index, size_t *value_len);

typedef struct {
    const char *peer_id; /* verified SPIFFE id, NULL when unauthenticated */
    uint16_t port;       /* the workload port the traffic is for */
    const char *method;  /* HTTP method (NUL-terminated); NULL = opaque TCP */
    const char *path;    /* ward_path_match_key() output; NULL for opaque TCP */
    size_t path_len;
    const struct sockaddr *source; /* the caller's address, or NULL (source.ip never matches) */
    int hour;                      /* 0..23, UTC; -1 = unknown (time.hour never matches) */
    ward_authz_header_fn header;   /* NULL = no headers (request.headers never matches) */
    void *header_ctx;
} ward_authz_request_t;

typedef struct {
    ward_authz_decision_t decision;
    const char *reason;       /* static: see the evaluation order above */
    const char *policy;       /* "namespace/name" of the deciding policy, "mesh-default", or NULL */
    int rule;                 /* 0-based index of the deciding rule in that policy, or -1 */
    const char *audit_policy; /* "namespace/name" of the first AUDIT policy that matched, or NULL */
} ward_authz_result_t;

/* Compiles snap (NULL = no policies, mesh default deny) into *out with refcount 1. The result
 * does not point into snap. Returns 0, WARD_ENOMEM, or WARD_EINVAL (a value the YAML loader
 * would have refused, e.g. a malformed CIDR or hour: a snapshot from a newer agent) with a static
 * explanation in *why (may be NULL). */
int ward_authz_compile(const Ward__V1__PolicySnapshot *snap, ward_authz_t **out, const char **why);
/* The same from a packed PolicySnapshot. Also WARD_EPARSE when the bytes do not decode. */
int ward_authz_compile_packed(const uint8_t *data, size_t len, ward_authz_t **out,
                              const char **why);

ward_authz_t *ward_authz_ref(ward_authz_t *a);
void ward_authz_unref(ward_authz_t *a); /* NULL is ignored */

/* Decides req. Never allocates, never fails; a and req are only read. */
void ward_authz_eval(const ward_authz_t *a, const ward_authz_request_t *req,
                     ward_authz_result_t *res);

uint64_t ward_authz_version(const ward_authz_t *a); /* the snapshot's version */
size_t ward_authz_policy_count(const ward_authz_t *a);
size_t ward_authz_rule_count(const ward_authz_t *a);        /* rules over all policies */
const char *ward_authz_default_name(const ward_authz_t *a); /* "deny" | "allow" | "audit" */

#endif
