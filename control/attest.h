/* attest.h — who is this proxy? Two attestors, both ending in a SPIFFE id.
 *
 * 1. Unix peer credentials. The kernel records the peer's uid/gid/pid when it connect()s to the
 *    agent's Unix socket (SO_PEERCRED); ward uses those recorded values and never looks the pid up
 *    again in /proc, so a pid reused after the caller exits cannot impersonate it. The uid (and
 *    optionally gid) map to SPIFFE ids through the --workloads file:
 *
 *        # uid[:gid]   spiffe id
 *        1337          spiffe://cluster.local/ns/shop/sa/orders
 *        1000:1000     spiffe://cluster.local/ns/dev/sa/alice
 *
 *    A uid:gid line wins over a uid-only line. Ids must be in the agent's trust domain.
 *
 * 2. Kubernetes projected service-account tokens: a JWT (RS256 or ES256) verified offline against a
 *    JWKS file — signature by the key named in "kid" (or the only key of that type when there is no
 *    kid), "iss" equal to the configured issuer, "aud" containing the configured audience, "exp"
 *    in the future and "nbf"/"iat" not in the future (60 s leeway), and the kubernetes.io claims:
 *    {"kubernetes.io": {"namespace": NS, "serviceaccount": {"name": SA, "uid": ...},
 *    "pod": {...}}} -> spiffe://<trust-domain>/ns/<NS>/sa/<SA>. "alg":"none", HS*, and any
 *    algorithm not matching the key's type are refused.
 *
 * Errors: 0 or a negative WARD_E*; err gets a sentence naming the check that failed (an operator
 * reads it in the agent log, the caller in the gRPC status message). */
#ifndef WARD_CONTROL_ATTEST_H
#define WARD_CONTROL_ATTEST_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

typedef struct {
    uid_t uid;
    gid_t gid;
    pid_t pid;
} ward_peercred_t;

/* SO_PEERCRED of a connected Unix socket. */
int ward_peercred_get(int fd, ward_peercred_t *out);

typedef struct ward_workloads ward_workloads_t;
int ward_workloads_load(const char *file, const char *trust_domain, ward_workloads_t **out,
                        char *err, size_t errlen);
/* The SPIFFE id for uid/gid, or NULL. Valid until ward_workloads_free(). */
const char *ward_workloads_lookup(const ward_workloads_t *w, uid_t uid, gid_t gid);
void ward_workloads_free(ward_workloads_t *w);

typedef struct ward_jwks ward_jwks_t;
/* Loads a JWKS JSON file ({"keys":[{"kty":"RSA","kid":..,"n":..,"e":..} | {"kty":"EC","crv":
 * "P-256","x":..,"y":..}]}); keys with "use" other than "sig" are skipped. */
int ward_jwks_load(const char *file, ward_jwks_t **out, char *err, size_t errlen);
void ward_jwks_free(ward_jwks_t *j);

typedef struct {
    const char *issuer;       /* required "iss" */
    const char *audience;     /* required member of "aud" */
    const char *trust_domain; /* for the resulting SPIFFE id */
    int64_t now;              /* Unix seconds (tests pass their own clock) */
    int64_t leeway_s;         /* clock skew allowed on exp/nbf/iat; default 60 when 0 */
} ward_k8s_token_policy_t;

/* Verifies a projected service-account token; *spiffe_id gets a heap string (ward_free).
 * Errors: WARD_EPARSE malformed token or claims, WARD_ETOOLONG over 16 KiB, WARD_EKEY refused
 * "alg" / unknown key / bad signature, WARD_ERANGE expired or not yet valid, WARD_EINVAL wrong
 * issuer or audience (or a bad policy), WARD_ESPIFFE names that make no valid SPIFFE id. */
int ward_k8s_token_verify(const ward_jwks_t *jwks, const ward_k8s_token_policy_t *pol,
                          const char *token, char **spiffe_id, char *err, size_t errlen);

#endif
