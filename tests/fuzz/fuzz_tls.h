/* fuzz_tls.h — the fixed identity the certificate targets verify against: a trust-only snapshot
 * (ward_identity_trust_only) of data/root.der, the root that signed the seed certificates in
 * corpus/tls_verify/ and corpus/pem/ (tests/lib/certs.py, via make_seeds.py), trust domain
 * test.local. Certificate verification uses the snapshot's store and trust domain only, so no
 * private key is needed here. */
#ifndef WARD_FUZZ_TLS_H
#define WARD_FUZZ_TLS_H

#include <stdlib.h>

#include "fuzz.h"
#include "ward/tls.h"

#define WARD_FUZZ_TD     "test.local"
#define WARD_FUZZ_SERVER "spiffe://test.local/ns/default/sa/backend"

static inline ward_identity_t *ward_fuzz_identity(void)
{
    static ward_identity_t *id;
    if (id == NULL) {
        char err[512];
        size_t len = 0;
        uint8_t *root = ward_fuzz_read_data("root.der", &len);
        const uint8_t *roots[1] = {root};
        if (ward_identity_trust_only(roots, &len, 1, WARD_FUZZ_TD, &id, err, sizeof(err)) != 0)
            ward_fuzz_die("data/root.der", err);
        free(root);
    }
    return id;
}

#endif
