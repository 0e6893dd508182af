/* fuzz_admission.c — ward-agent's admission webhook body (lib/inject.c ward_inject_review): any
 * bytes POSTed to /inject, by the API server or by anyone who reaches the port. Properties: the
 * answer is either 0 with an AdmissionReview response (JSON, the request's uid, allowed: true) or
 * WARD_EPARSE / WARD_EINVAL with a terminated message and nothing written; a patch in the answer
 * is base64 of a JSON array that applies (ward_json_patch_apply) to the request's pod, and the
 * patched pod is then already injected (the webhook never injects twice). Seeds:
 * corpus/admission/. */
#include <stdint.h>
#include <string.h>

#include "fuzz.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/inject.h"

static ward_injector_t *ward__inj;

static int ward__b64val(int c)
{
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    return c == '+' ? 62 : c == '/' ? 63 : -1;
}

/* Strict padded base64 into a new NUL-terminated buffer, or NULL. */
static char *ward__b64decode(const char *s, size_t *out_len)
{
    size_t n = strlen(s), o = 0;
    if (n % 4 != 0) return NULL;
    char *out = malloc(n / 4 * 3 + 1);
    for (size_t i = 0; out && i < n; i += 4) {
        int v[4];
        for (int k = 0; k < 4; k++)
            v[k] = s[i + k] == '=' && i + 4 == n && k >= 2 ? 0 : ward__b64val(s[i + k]);
        WARD_FUZZ_CHECK(v[0] >= 0 && v[1] >= 0 && v[2] >= 0 && v[3] >= 0);
        uint32_t x = (uint32_t)v[0] << 18 | (uint32_t)v[1] << 12 | (uint32_t)v[2] << 6 | v[3];
        out[o++] = (char)(x >> 16);
        if (s[i + 2] != '=') out[o++] = (char)(x >> 8);
        if (s[i + 3] != '=') out[o++] = (char)x;
    }
    if (out) out[o] = '\0';
    *out_len = o;
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[512];
    if (ward__inj == NULL) {
        ward_fuzz_quiet();
        if (ward_injector_new(NULL, "--", &ward__inj, err, sizeof(err)) < 0)
            ward_fuzz_die("injector", err);
    }
    ward_strbuf_t out = {0};
    ward_inject_review_info_t info;
    err[0] = '\0';
    int rc = ward_inject_review(ward__inj, (const char *)data, size, &out, &info, err, sizeof(err));
    if (rc == WARD_ENOMEM) return 0;
    if (rc < 0) {
        WARD_FUZZ_CHECK(rc == WARD_EPARSE || rc == WARD_EINVAL);
        WARD_FUZZ_CHECK(out.data == NULL);
        WARD_FUZZ_CHECK(memchr(err, '\0', sizeof(err)) != NULL && err[0] != '\0');
        return 0;
    }
    WARD_FUZZ_CHECK(rc == 0 && out.data != NULL && info.decision != NULL);
    json_t *resp = json_loads(out.data, 0, NULL);
    json_t *req = json_loadb((const char *)data, size, 0, NULL);
    WARD_FUZZ_CHECK(resp != NULL && req != NULL);
    json_t *r = json_object_get(resp, "response");
    WARD_FUZZ_CHECK(json_is_true(json_object_get(r, "allowed")));
    WARD_FUZZ_CHECK(json_equal(json_object_get(r, "uid"),
                               json_object_get(json_object_get(req, "request"), "uid")));
    const char *b64 = json_string_value(json_object_get(r, "patch"));
    WARD_FUZZ_CHECK((b64 != NULL) == (strcmp(info.decision, "injected") == 0));
    if (b64 != NULL) {
        size_t n = 0;
        char *text = ward__b64decode(b64, &n);
        WARD_FUZZ_CHECK(text != NULL);
        json_t *patch = json_loadb(text, n, 0, NULL);
        WARD_FUZZ_CHECK(json_is_array(patch));
        json_t *pod = json_deep_copy(json_object_get(json_object_get(req, "request"), "object"));
        WARD_FUZZ_CHECK(ward_json_patch_apply(&pod, patch, err, sizeof(err)) == 0);
        json_t *again = NULL;
        WARD_FUZZ_CHECK(ward_inject_patch(ward__inj, pod, "", &again, err, sizeof(err)) ==
                        WARD_INJECT_ALREADY);
        json_decref(pod);
        json_decref(patch);
        free(text);
    }
    json_decref(req);
    json_decref(resp);
    ward_strbuf_free(&out);
    return 0;
}
