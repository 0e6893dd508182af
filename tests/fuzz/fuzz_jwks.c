/* fuzz_jwks.c — JWKS files (control/attest.c ward_jwks_load): the cluster's service-account
 * issuer keys, fetched by an operator or a sidecar script, so not fully trusted. The input is the
 * file (written to an in-memory file). A JWKS that loads is then used to verify a fixed token
 * (data/token.jwt, RS256 kid rsa-1 from tests/lib/tokens.py): key selection by kid/type and the
 * signature check run against whatever keys the fuzzer made. */
#include <stdlib.h>
#include <string.h>

#include "attest.h"
#include "fuzz.h"
#include "ward/alloc.h"
#include "ward/err.h"

static char *ward__token;
static ward_k8s_token_policy_t ward__pol = {
    .issuer = "https://kubernetes.default.svc.cluster.local",
    .audience = "ward",
    .trust_domain = "test.local",
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        ward_fuzz_quiet();
        char *now = (char *)ward_fuzz_read_data("now", NULL);
        ward__pol.now = strtoll(now, NULL, 10);
        free(now);
        size_t len = 0;
        ward__token = (char *)ward_fuzz_read_data("token.jwt", &len);
        while (len > 0 && (ward__token[len - 1] == '\n' || ward__token[len - 1] == '\r'))
            ward__token[--len] = '\0';
        init = 1;
    }
    const char *path = ward_fuzz_file(data, size);
    ward_jwks_t *j = NULL;
    char err[512] = "";
    int rc = ward_jwks_load(path, &j, err, sizeof(err));
    if (rc < 0) {
        WARD_FUZZ_CHECK(j == NULL && err[0] != '\0');
        return 0;
    }
    WARD_FUZZ_CHECK(j != NULL);
    char *id = NULL;
    rc = ward_k8s_token_verify(j, &ward__pol, ward__token, &id, err, sizeof(err));
    WARD_FUZZ_CHECK((rc == 0) == (id != NULL));
    ward_free(id);
    ward_jwks_free(j);
    return 0;
}
