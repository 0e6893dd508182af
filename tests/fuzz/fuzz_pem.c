/* fuzz_pem.c — PEM certificate files (lib/tls.c ward_pem_read_certs): --cert, --ca and
 * --agent-bundle files, and wardctl's inputs. The input is the file (in memory). Every block it
 * returns must be non-empty DER of the stated length; the chain read is then classified against
 * the fixed identity of fuzz_tls.h, as ward_identity_load does with a certificate file. */
#include <string.h>

#include "fuzz_tls.h"
#include "ward/alloc.h"
#include "ward/err.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const ward_identity_t *id = ward_fuzz_identity();
    const char *path = ward_fuzz_file(data, size);
    uint8_t **der = NULL;
    size_t *len = NULL;
    int n = ward_pem_read_certs(path, &der, &len);
    if (n < 0) {
        WARD_FUZZ_CHECK(n == WARD_EPARSE || n == WARD_ENOMEM || n == WARD_EIO);
        return 0;
    }
    WARD_FUZZ_CHECK(n > 0 && der != NULL && len != NULL);
    uint64_t sum = 0;
    for (int i = 0; i < n; i++) {
        WARD_FUZZ_CHECK(der[i] != NULL || len[i] == 0);
        for (size_t j = 0; j < len[i]; j++)
            sum += der[i][j];
    }
    (void)sum;
    const char *detail = NULL;
    char *peer_id = NULL;
    ward_tls_reason_t r = ward_tls_verify_chain(id, (const uint8_t *const *)der, len, (size_t)n,
                                                NULL, 0, &detail, &peer_id);
    WARD_FUZZ_CHECK(r == WARD_REASON_NONE || detail != NULL);
    ward_free(peer_id);
    for (int i = 0; i < n; i++)
        ward_pem_free(der[i]);
    ward_free(der);
    ward_free(len);
    return 0;
}
