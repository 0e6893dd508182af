/* fuzz_csr.c — CSR signing (control/ca.c ward_ca_sign_csr): the DER a proxy sends in a CsrRequest
 * after attestation. The input is the CSR. The CA is a root ward_ca_open generates at start-up in
 * a temporary state directory (removed again at once; the CA lives in memory). Property: whatever
 * the CA signs is an X509-SVID for exactly the attested id that verifies against the CA's own
 * bundle with no reason to refuse it. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ca.h"
#include "fuzz.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/tls.h"

#define ID "spiffe://test.local/ns/shop/sa/orders"

static ward_ca_t *ward__ca;
static ward_identity_t *ward__trust;

static void ward__init(void)
{
    char dir[] = "/tmp/ward-fuzz-ca.XXXXXX";
    char err[512];
    ward_fuzz_quiet();
    if (mkdtemp(dir) == NULL) ward_fuzz_die("mkdtemp", dir);
    if (ward_ca_open(dir, NULL, NULL, "test.local", &ward__ca, err, sizeof(err)) != 0)
        ward_fuzz_die("ward_ca_open", err);
    DIR *d = opendir(dir);
    if (d != NULL) {
        struct dirent *e;
        while ((e = readdir(d)) != NULL)
            if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0)
                unlinkat(dirfd(d), e->d_name, 0);
        closedir(d);
    }
    rmdir(dir);
    const uint8_t *const *der;
    const size_t *len;
    size_t n = ward_ca_bundle(ward__ca, &der, &len);
    if (ward_identity_trust_only(der, len, n, "test.local", &ward__trust, err, sizeof(err)) != 0)
        ward_fuzz_die("trust-only identity of the CA bundle", err);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        ward__init();
        init = 1;
    }
    ward_der_chain_t chain;
    char err[512] = "";
    int rc = ward_ca_sign_csr(ward__ca, data, size, ID, 3600, &chain, err, sizeof(err));
    if (rc < 0) {
        WARD_FUZZ_CHECK(chain.n == 0 && err[0] != '\0');
        return 0;
    }
    WARD_FUZZ_CHECK(chain.n >= 1);
    const char *detail = NULL;
    char *peer_id = NULL;
    ward_tls_reason_t r = ward_tls_verify_chain(ward__trust, (const uint8_t *const *)chain.der,
                                                chain.len, chain.n, ID, 0, &detail, &peer_id);
    if (r != WARD_REASON_NONE)
        fprintf(stderr, "signed SVID refused: %s: %s\n", ward_tls_reason_name(r), detail);
    WARD_FUZZ_CHECK(r == WARD_REASON_NONE);
    WARD_FUZZ_CHECK(peer_id != NULL && strcmp(peer_id, ID) == 0);
    ward_free(peer_id);
    ward_der_chain_free(&chain);
    return 0;
}
