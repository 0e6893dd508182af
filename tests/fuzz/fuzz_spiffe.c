/* fuzz_spiffe.c — SPIFFE ids (lib/spiffe.c): every peer certificate's URI SAN, every --outbound
 * identity= and every policy selector goes through ward_spiffe_id_parse. The input is the id. On
 * success the parts must tile the input exactly and the trust domain must validate on its own;
 * on failure there must be a reason. */
#include <stdint.h>
#include <string.h>

#include "fuzz.h"
#include "ward/err.h"
#include "ward/spiffe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    ward_spiffe_id_t id;
    const char *why = NULL;

    int rc = ward_spiffe_id_parse(s, size, &id, &why);
    if (rc == 0) {
        WARD_FUZZ_CHECK(size > 9 && size <= WARD_SPIFFE_MAX);
        WARD_FUZZ_CHECK(id.td == s + 9);
        WARD_FUZZ_CHECK(id.path == id.td + id.td_len);
        WARD_FUZZ_CHECK(9 + id.td_len + id.path_len == size);
        WARD_FUZZ_CHECK(id.path_len == 0 || id.path[0] == '/');
        WARD_FUZZ_CHECK(id.path_len == 0 || id.path[id.path_len - 1] != '/');
        WARD_FUZZ_CHECK(memchr(s, '\0', size) == NULL);
        WARD_FUZZ_CHECK(ward_spiffe_td_validate(id.td, id.td_len, NULL) == 0);
        /* Without the out-parameters it must agree. */
        WARD_FUZZ_CHECK(ward_spiffe_id_parse(s, size, NULL, NULL) == 0);
    } else {
        WARD_FUZZ_CHECK(rc == WARD_ESPIFFE && why != NULL);
        WARD_FUZZ_CHECK(ward_spiffe_id_parse(s, size, NULL, NULL) == WARD_ESPIFFE);
    }

    why = NULL;
    rc = ward_spiffe_td_validate(s, size, &why);
    WARD_FUZZ_CHECK(rc == 0 || (rc == WARD_ESPIFFE && why != NULL));
    if (rc == 0) WARD_FUZZ_CHECK(size >= 1 && size <= WARD_SPIFFE_TD_MAX);
    return 0;
}
