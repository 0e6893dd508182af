/* fuzz_manifest.c — what `wardctl inject` reads and writes (lib/yaml_json.c) and the injector on
 * it: a manifest stream from anyone. Properties: a stream loads, or fails with WARD_EPARSE and a
 * terminated message; a loaded stream dumps, the dump loads back equal and dumps to the same
 * bytes; every object injects as a pod template or is refused with WARD_EINVAL, and an injected
 * one is then already injected and still dumps and loads back equal. Seeds: corpus/manifest/
 * (sidecar.yaml there is a copy of deploy/sidecar/ward-sidecar.yaml). */
#include <stdint.h>
#include <string.h>

#include "fuzz.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/inject.h"
#include "ward/yaml_json.h"

static ward_injector_t *ward__inj;

/* dump(docs) loads back equal to docs and dumps to the same text. */
static void ward__round_trip(const json_t *docs)
{
    ward_strbuf_t a = {0}, b = {0};
    ward_yaml_error_t e;
    json_t *back = NULL;
    int rc = ward_yaml_dump_all(docs, &a);
    if (rc == WARD_ENOMEM) return;
    WARD_FUZZ_CHECK(rc == 0);
    rc = ward_yaml_load_all(a.data ? a.data : "", a.len, &back, &e);
    if (rc == WARD_ENOMEM) goto out;
    if (rc != 0) fprintf(stderr, "reload failed: line %d: %s\n%s\n", e.line, e.message, a.data);
    WARD_FUZZ_CHECK(rc == 0);
    WARD_FUZZ_CHECK(json_equal(back, docs));
    if (ward_yaml_dump_all(back, &b) == 0)
        WARD_FUZZ_CHECK(a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0));
out:
    json_decref(back);
    ward_strbuf_free(&a);
    ward_strbuf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    if (ward__inj == NULL) {
        ward_fuzz_quiet();
        if (ward_injector_new(NULL, "--", &ward__inj, err, sizeof(err)) < 0)
            ward_fuzz_die("injector", err);
    }
    json_t *docs = NULL;
    ward_yaml_error_t e;
    int rc = ward_yaml_load_all((const char *)data, size, &docs, &e);
    if (rc == WARD_ENOMEM) return 0;
    if (rc < 0) {
        WARD_FUZZ_CHECK(rc == WARD_EPARSE && docs == NULL);
        WARD_FUZZ_CHECK(memchr(e.message, '\0', sizeof(e.message)) != NULL && e.message[0]);
        WARD_FUZZ_CHECK(e.document >= 0 && e.line >= 0 && e.column >= 0);
        return 0;
    }
    ward__round_trip(docs);
    size_t i;
    json_t *d;
    json_array_foreach(docs, i, d)
    {
        if (!json_is_object(d)) continue;
        rc = ward_inject_pod(ward__inj, d, err, sizeof(err));
        if (rc == WARD_ENOMEM) continue;
        WARD_FUZZ_CHECK(rc >= 0 || rc == WARD_EINVAL);
        if (rc == WARD_INJECT_INJECTED)
            WARD_FUZZ_CHECK(ward_inject_pod(ward__inj, d, err, sizeof(err)) == WARD_INJECT_ALREADY);
    }
    ward__round_trip(docs);
    json_decref(docs);
    return 0;
}
