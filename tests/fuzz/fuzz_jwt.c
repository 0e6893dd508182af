/* fuzz_jwt.c — Kubernetes service-account tokens (control/attest.c ward_k8s_token_verify): the
 * token in a proxy's Hello is the first thing ward-agent reads from an unauthenticated peer. The
 * input is the token; it is verified against a fixed JWKS (data/jwks.json, RSA-2048 + EC P-256 +
 * ignored enc/oct keys, minted by tests/lib/tokens.py together with the seed tokens in
 * corpus/jwt/) as of the time in data/now, so the seed tokens are valid, expired, forged... exactly
 * as when they were minted. A success must name a SPIFFE id in the trust domain; a failure must
 * say why. */
#include <stdlib.h>
#include <string.h>

#include "attest.h"
#include "fuzz.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/spiffe.h"

#define TD "test.local"

static ward_jwks_t *ward__jwks;
static ward_k8s_token_policy_t ward__pol = {
    .issuer = "https://kubernetes.default.svc.cluster.local",
    .audience = "ward",
    .trust_domain = TD,
};

static void ward__init(void)
{
    char err[512];
    ward_fuzz_quiet();
    char *now = (char *)ward_fuzz_read_data("now", NULL);
    ward__pol.now = strtoll(now, NULL, 10);
    free(now);
    if (ward_jwks_load(WARD_FUZZ_DATA "/jwks.json", &ward__jwks, err, sizeof(err)) != 0)
        ward_fuzz_die("data/jwks.json", err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        ward__init();
        init = 1;
    }
    char *token = malloc(size + 1);
    if (token == NULL) return 0;
    memcpy(token, data, size);
    token[size] = '\0';

    char err[256] = "";
    char *id = NULL;
    int rc = ward_k8s_token_verify(ward__jwks, &ward__pol, token, &id, err, sizeof(err));
    if (rc == 0) {
        WARD_FUZZ_CHECK(id != NULL);
        WARD_FUZZ_CHECK(ward_spiffe_id_parse(id, strlen(id), NULL, NULL) == 0);
        WARD_FUZZ_CHECK(strncmp(id, "spiffe://" TD "/ns/", 9 + sizeof(TD) - 1 + 4) == 0);
        ward_free(id);
    } else {
        WARD_FUZZ_CHECK(rc < 0 && id == NULL);
        WARD_FUZZ_CHECK(err[0] != '\0' && memchr(err, '\0', sizeof(err)) != NULL);
    }
    free(token);
    return 0;
}
