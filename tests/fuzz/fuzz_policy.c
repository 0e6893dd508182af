/* fuzz_policy.c — AuthorizationPolicy YAML (lib/policy.c ward_policy_parse): ward-agent reads
 * every file of --policy-dir, which a namespace owner may write. The input is one YAML stream.
 * Properties: all or nothing (a failure leaves the set empty; parsing the same text again into a
 * non-empty set fails on duplicates and leaves it unchanged); error messages are terminated and
 * free of control characters; every snapshot packs to a PolicySnapshot that unpacks again with the
 * policies it selected. Seeds: tests/policy/ and tests/policy/invalid/ (tools/fuzz adds them) plus
 * corpus/policy/. */
#include <stdint.h>
#include <string.h>

#include "fuzz.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/policy.h"

static void ward__check_err(const ward_policy_error_t *err)
{
    WARD_FUZZ_CHECK(memchr(err->message, '\0', sizeof(err->message)) != NULL);
    WARD_FUZZ_CHECK(memchr(err->file, '\0', sizeof(err->file)) != NULL);
    for (const char *m = err->message; *m; m++)
        WARD_FUZZ_CHECK((unsigned char)*m >= 0x20 && *m != 0x7f);
    WARD_FUZZ_CHECK(err->line >= 0 && err->column >= 0);
}

static void ward__snapshot(const ward_policy_set_t *set, const char *identity)
{
    uint8_t *packed = NULL;
    size_t len = 0;
    int rc = ward_policy_snapshot_for(set, identity, 7, &packed, &len);
    if (rc < 0) {
        WARD_FUZZ_CHECK(rc == WARD_ESPIFFE);
        return;
    }
    WARD_FUZZ_CHECK(packed != NULL);
    Ward__V1__PolicySnapshot *snap = ward__v1__policy_snapshot__unpack(NULL, len, packed);
    WARD_FUZZ_CHECK(snap != NULL);
    WARD_FUZZ_CHECK(snap->version == 7 && snap->n_policies <= ward_policy_set_count(set));
    for (size_t i = 0; i < snap->n_policies; i++)
        WARD_FUZZ_CHECK(snap->policies[i]->name != NULL && snap->policies[i]->namespace_ != NULL);
    ward__v1__policy_snapshot__free_unpacked(snap, NULL);
    ward_free(packed);
    (void)ward_policy_set_hash(set, identity);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        ward_fuzz_quiet();
        init = 1;
    }
    ward_policy_set_t set;
    ward_policy_error_t err;
    ward_policy_set_init(&set);

    int rc = ward_policy_parse((const char *)data, size, "fuzz.yaml", &set, &err);
    if (rc < 0) {
        WARD_FUZZ_CHECK(rc == WARD_EPARSE || rc == WARD_ETOOLONG || rc == WARD_ENOMEM);
        WARD_FUZZ_CHECK(ward_policy_set_count(&set) == 0);
        ward__check_err(&err);
        ward_policy_set_free(&set);
        return 0;
    }
    size_t count = ward_policy_set_count(&set);
    for (size_t i = 0; i < count; i++) {
        const Ward__V1__AuthorizationPolicy *p = ward_policy_set_get(&set, i);
        WARD_FUZZ_CHECK(p != NULL && p->name != NULL && p->namespace_ != NULL);
        if (p->selector_identity != NULL && p->selector_identity[0] != '\0')
            ward__snapshot(&set, p->selector_identity);
    }
    WARD_FUZZ_CHECK(ward_policy_set_get(&set, count) == NULL);
    ward__snapshot(&set, "spiffe://cluster.local/ns/shop/sa/orders");
    ward__snapshot(&set, "spiffe://cluster.local");
    ward__snapshot(&set, "not-an-id");

    /* Again into the same set: every policy is now a duplicate. */
    if (count > 0) {
        rc = ward_policy_parse((const char *)data, size, "again.yaml", &set, &err);
        WARD_FUZZ_CHECK(rc < 0);
        ward__check_err(&err);
        WARD_FUZZ_CHECK(ward_policy_set_count(&set) == count);
    }
    ward_policy_set_free(&set);
    return 0;
}
