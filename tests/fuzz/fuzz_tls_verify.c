/* fuzz_tls_verify.c — X509-SVID verification (lib/tls.c ward_tls_verify_chain): the classifier
 * every peer certificate chain of a handshake goes through. The chain is verified against the
 * fixed identity of fuzz_tls.h.
 *
 * Input: one control byte, then certificates as records of a 2-byte big-endian length + DER.
 *   bits 0-1  expected id: 0 none, 1 WARD_FUZZ_SERVER, 2 another id in the trust domain;
 *   bit 2     the peer is the server (outbound) rather than the client.
 * Properties: a reason in range; a detail for every refusal; an accepted chain hands out a valid
 * SPIFFE id in the trust domain (and the expected one when one was asked for). */
#include <string.h>

#include "fuzz_tls.h"
#include "ward/alloc.h"
#include "ward/spiffe.h"

#define MAXCERTS 12

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const expected[] = {NULL, WARD_FUZZ_SERVER,
                                           "spiffe://test.local/ns/default/sa/frontend", NULL};
    const ward_identity_t *id = ward_fuzz_identity();
    if (size < 1) return 0;
    uint8_t ctl = data[0];
    const uint8_t *rec[MAXCERTS];
    size_t rec_len[MAXCERTS];
    size_t n = ward_fuzz_split(data + 1, size - 1, rec, rec_len, MAXCERTS);

    /* Each certificate in its own exact-size buffer. */
    uint8_t *der[MAXCERTS];
    for (size_t i = 0; i < n; i++) {
        der[i] = malloc(rec_len[i] ? rec_len[i] : 1);
        if (der[i] == NULL) abort();
        memcpy(der[i], rec[i], rec_len[i]);
    }
    const char *want = expected[ctl & 3];
    const char *detail = NULL;
    char *peer_id = NULL;
    ward_tls_reason_t r = ward_tls_verify_chain(id, (const uint8_t *const *)der, rec_len, n, want,
                                                (ctl & 4) != 0, &detail, &peer_id);
    WARD_FUZZ_CHECK(r >= WARD_REASON_NONE && r < WARD_REASON_COUNT);
    WARD_FUZZ_CHECK(ward_tls_reason_name(r) != NULL);
    if (r != WARD_REASON_NONE) {
        WARD_FUZZ_CHECK(detail != NULL);
    } else {
        WARD_FUZZ_CHECK(peer_id != NULL);
        WARD_FUZZ_CHECK(ward_spiffe_id_parse(peer_id, strlen(peer_id), NULL, NULL) == 0);
        WARD_FUZZ_CHECK(strncmp(peer_id, "spiffe://" WARD_FUZZ_TD, 19) == 0 &&
                        (peer_id[19] == '/' || peer_id[19] == '\0'));
        if (want != NULL) WARD_FUZZ_CHECK(strcmp(peer_id, want) == 0);
    }
    if (peer_id != NULL)
        WARD_FUZZ_CHECK(ward_spiffe_id_parse(peer_id, strlen(peer_id), NULL, NULL) == 0);
    ward_free(peer_id);
    for (size_t i = 0; i < n; i++)
        free(der[i]);
    return 0;
}
