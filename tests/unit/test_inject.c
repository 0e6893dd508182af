/* test_inject.c — sidecar injection (lib/inject.c) and the YAML <-> JSON layer under it
 * (lib/yaml_json.c), on real manifests:
 *   - the injected init containers, volumes and annotations ARE deploy/sidecar/ward-sidecar.yaml's
 *     (parsed here from the file in the source tree, not from the copy compiled into the
 *     library), with only the options and the per-pod probe ports changed;
 *   - the JSON Patch: ops into existing lists at /0 and /1 (ward-init first, then ward-proxy,
 *     then the app's init containers), "/-" appends, whole members where a list or the
 *     annotations are missing, RFC 6901 escaping of keys like prometheus.io/scrape, and the patch
 *     applied by the RFC 6902 applier equals the mutated object;
 *   - the ports of the pod's kubelet probes (httpGet, tcpSocket, grpc; numeric, named, as
 *     strings; containers and native-sidecar init containers) merged into ward-init's
 *     --exclude-inbound-ports with the option's list, ascending, without repeats; no probes, no
 *     change; pods without any declared port injected;
 *   - idempotency (injecting an injected pod changes nothing), opt-outs (label or annotation,
 *     disabled or false), hostNetwork, and every refusal (the sidecar's ports, name clashes);
 *   - the options and their validation; the AdmissionReview answers (patch, no patch, warning,
 *     malformed reviews); base64; YAML scalar resolution, quoting, aliases and limits. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "unit.h"
#include "ward/err.h"
#include "ward/inject.h"
#include "ward/strbuf.h"
#include "ward/yaml_json.h"

/* A Deployment as `kubectl get deploy web -o json` prints it (trimmed status). */
static const char deployment_json[] =
    "{\"apiVersion\":\"apps/v1\",\"kind\":\"Deployment\","
    "\"metadata\":{\"name\":\"web\",\"namespace\":\"shop\",\"labels\":{\"app\":\"web\"},"
    "\"annotations\":{\"deployment.kubernetes.io/revision\":\"3\"},\"generation\":3,"
    "\"uid\":\"3f0a1b2c-1111-2222-3333-444455556666\",\"resourceVersion\":\"81723\"},"
    "\"spec\":{\"replicas\":2,\"revisionHistoryLimit\":10,"
    "\"selector\":{\"matchLabels\":{\"app\":\"web\"}},"
    "\"strategy\":{\"type\":\"RollingUpdate\",\"rollingUpdate\":{\"maxSurge\":\"25%\","
    "\"maxUnavailable\":\"25%\"}},"
    "\"template\":{\"metadata\":{\"labels\":{\"app\":\"web\"},"
    "\"annotations\":{\"prometheus.io/scrape\":\"true\",\"prometheus.io/port\":\"9102\"}},"
    "\"spec\":{\"serviceAccountName\":\"web\",\"terminationGracePeriodSeconds\":30,"
    "\"initContainers\":[{\"name\":\"migrate\",\"image\":\"shop/migrate:1.4\","
    "\"args\":[\"--up\"]}],"
    "\"containers\":[{\"name\":\"web\",\"image\":\"shop/web:1.4\","
    "\"ports\":[{\"name\":\"metrics\",\"containerPort\":9102,\"protocol\":\"UDP\"},"
    "{\"name\":\"http\",\"containerPort\":8080,\"protocol\":\"TCP\"}],"
    "\"readinessProbe\":{\"httpGet\":{\"path\":\"/healthz\",\"port\":\"http\"}},"
    "\"resources\":{\"requests\":{\"cpu\":\"100m\",\"memory\":\"128Mi\"}}},"
    "{\"name\":\"log-shipper\",\"image\":\"fluent/fluent-bit:2.2\"}],"
    "\"volumes\":[{\"name\":\"cache\",\"emptyDir\":{}}]}}},"
    "\"status\":{\"replicas\":2,\"readyReplicas\":2}}";

/* A bare Pod: no annotations, no init containers, no volumes. */
static const char pod_json[] =
    "{\"apiVersion\":\"v1\",\"kind\":\"Pod\",\"metadata\":{\"name\":\"api-0\",\"namespace\":"
    "\"shop\"},\"spec\":{\"containers\":[{\"name\":\"api\",\"image\":\"shop/api:2\","
    "\"ports\":[{\"containerPort\":9000}]}]}}";

static json_t *load_json(const char *text)
{
    json_error_t e;
    json_t *v = json_loads(text, 0, &e);
    if (v == NULL) fprintf(stderr, "\n  bad test JSON: %s (column %d)\n", e.text, e.column);
    CU_ASSERT_PTR_NOT_NULL_FATAL(v);
    return v;
}

static json_t *sidecar_template(void)
{
    FILE *f = fopen(WARD_SIDECAR_YAML, "rb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    json_t *docs = NULL;
    ward_yaml_error_t e;
    CU_ASSERT_EQUAL_FATAL(ward_yaml_load_all(buf, n, &docs, &e), 0);
    json_t *pod = json_incref(json_array_get(docs, 0));
    json_decref(docs);
    CU_ASSERT_PTR_NOT_NULL_FATAL(pod);
    return pod;
}

static ward_injector_t *injector(const ward_inject_options_t *o)
{
    ward_injector_t *inj = NULL;
    char err[256] = "";
    int rc = ward_injector_new(o, "--", &inj, err, sizeof(err));
    if (rc != 0) fprintf(stderr, "\n  injector: %s\n", err);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    return inj;
}

static json_t *path(json_t *root, const char *dotted)
{
    char buf[256], *save = NULL;
    snprintf(buf, sizeof(buf), "%s", dotted);
    for (char *t = strtok_r(buf, ".", &save); t && root; t = strtok_r(NULL, ".", &save)) {
        if (json_is_array(root))
            root = json_array_get(root, (size_t)atoi(t));
        else
            root = json_object_get(root, t);
    }
    return root;
}

static const char *str(json_t *root, const char *dotted)
{
    return json_string_value(path(root, dotted));
}

/* The value of flag in a container's args. */
static const char *arg(json_t *c, const char *flag)
{
    json_t *args = json_object_get(c, "args");
    for (size_t i = 0; i + 1 < json_array_size(args); i++)
        if (strcmp(json_string_value(json_array_get(args, i)), flag) == 0)
            return json_string_value(json_array_get(args, i + 1));
    return NULL;
}

/* The template's init container i as the injector adds it to a pod whose probe ports (merged
 * with the template's own exclusions) are excl: NULL for a pod without probes. */
static json_t *expected_container(json_t *tmpl, size_t i, const char *excl)
{
    json_t *c = json_deep_copy(json_array_get(path(tmpl, "spec.initContainers"), i));
    if (excl == NULL || strcmp(str(c, "name"), "ward-init") != 0) return c;
    json_t *args = json_object_get(c, "args");
    CU_ASSERT_PTR_NULL(arg(c, "--exclude-inbound-ports")); /* the template has none */
    json_array_append_new(args, json_string("--exclude-inbound-ports"));
    json_array_append_new(args, json_string(excl));
    return c;
}

/* ---- the template and the mutation --------------------------------------------------------- */

static void test_injects_the_template(void)
{
    ward_injector_t *inj = injector(NULL);
    json_t *tmpl = sidecar_template();
    json_t *dep = load_json(deployment_json);
    json_t *before = json_deep_copy(dep);
    json_t *pod = path(dep, "spec.template");
    char err[256];
    CU_ASSERT_EQUAL_FATAL(ward_inject_pod(inj, pod, err, sizeof(err)), WARD_INJECT_INJECTED);

    json_t *inits = path(pod, "spec.initContainers");
    CU_ASSERT_EQUAL_FATAL(json_array_size(inits), 3);
    /* ward-init, then the native sidecar, then the app's own init container */
    CU_ASSERT_STRING_EQUAL(str(inits, "0.name"), "ward-init");
    CU_ASSERT_STRING_EQUAL(str(inits, "1.name"), "ward-proxy");
    CU_ASSERT_STRING_EQUAL(str(inits, "1.restartPolicy"), "Always");
    CU_ASSERT_STRING_EQUAL(str(inits, "2.name"), "migrate");
    /* exactly the template's containers, but for the readiness probe's port (named "http":
     * 8080) kept out of the inbound capture */
    for (size_t i = 0; i < 2; i++) {
        json_t *want = expected_container(tmpl, i, "8080");
        CU_ASSERT_TRUE(json_equal(json_array_get(inits, i), want));
        json_decref(want);
    }
    CU_ASSERT_STRING_EQUAL(arg(json_array_get(inits, 0), "--include-inbound-ports"), "*");
    CU_ASSERT_STRING_EQUAL(arg(json_array_get(inits, 0), "--exclude-inbound-ports"), "8080");
    CU_ASSERT_PTR_NULL(arg(json_array_get(inits, 0), "--include-outbound-cidrs"));
    /* the proxy: transparent listeners, the pod's address from the downward API */
    CU_ASSERT_STRING_EQUAL(arg(json_array_get(inits, 1), "--capture-inbound"), "0.0.0.0:15006");
    CU_ASSERT_STRING_EQUAL(arg(json_array_get(inits, 1), "--capture-outbound"), "127.0.0.1:15001");
    CU_ASSERT_PTR_NULL(arg(json_array_get(inits, 1), "--inbound"));
    CU_ASSERT_STRING_EQUAL(str(inits, "1.env.0.name"), "WARD_POD_IP");
    CU_ASSERT_STRING_EQUAL(str(inits, "1.env.0.valueFrom.fieldRef.fieldPath"), "status.podIP");
    CU_ASSERT_PTR_NULL(path(inits, "0.env"));
    /* the proxy: UID 1337, read-only root, no capabilities, /ready probes on its admin port */
    CU_ASSERT_EQUAL(json_integer_value(path(inits, "1.securityContext.runAsUser")), 1337);
    CU_ASSERT_TRUE(json_is_true(path(inits, "1.securityContext.readOnlyRootFilesystem")));
    CU_ASSERT_STRING_EQUAL(str(inits, "1.securityContext.capabilities.drop.0"), "ALL");
    CU_ASSERT_STRING_EQUAL(str(inits, "1.readinessProbe.httpGet.path"), "/ready");
    CU_ASSERT_STRING_EQUAL(str(inits, "1.startupProbe.httpGet.path"), "/ready");
    CU_ASSERT_EQUAL(json_integer_value(path(inits, "0.securityContext.runAsUser")), 0);
    CU_ASSERT_TRUE(json_is_false(path(inits, "0.securityContext.runAsNonRoot")));
    CU_ASSERT_EQUAL(json_array_size(path(inits, "0.securityContext.capabilities.add")), 2);

    /* volumes appended after the app's, as the template declares them (0444 is octal) */
    json_t *vols = path(pod, "spec.volumes");
    json_t *tvols = path(tmpl, "spec.volumes");
    CU_ASSERT_EQUAL_FATAL(json_array_size(vols), 1 + json_array_size(tvols));
    CU_ASSERT_STRING_EQUAL(str(vols, "0.name"), "cache");
    for (size_t i = 0; i < json_array_size(tvols); i++)
        CU_ASSERT_TRUE(json_equal(json_array_get(vols, i + 1), json_array_get(tvols, i)));
    json_t *tok = NULL;
    for (size_t i = 0; i < json_array_size(vols); i++)
        if (strcmp(str(json_array_get(vols, i), "name"), "ward-token") == 0)
            tok = json_array_get(vols, i);
    CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
    CU_ASSERT_EQUAL(json_integer_value(path(tok, "projected.defaultMode")), 0444);
    CU_ASSERT_STRING_EQUAL(str(tok, "projected.sources.0.serviceAccountToken.audience"), "ward");
    CU_ASSERT_EQUAL(
        json_integer_value(path(tok, "projected.sources.0.serviceAccountToken.expirationSeconds")),
        3600);

    /* annotations: status + default container; the app's own prometheus.io ones are kept */
    json_t *ann = path(pod, "metadata.annotations");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(ann, "ward.dev/status")), "injected");
    CU_ASSERT_STRING_EQUAL(
        json_string_value(json_object_get(ann, "kubectl.kubernetes.io/default-container")), "web");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(ann, "prometheus.io/port")), "9102");
    CU_ASSERT_PTR_NULL(json_object_get(ann, "prometheus.io/path"));

    /* nothing outside the pod template moved */
    json_object_del(path(before, "spec"), "template");
    json_object_del(path(dep, "spec"), "template");
    CU_ASSERT_TRUE(json_equal(before, dep));
    json_decref(before);
    json_decref(dep);
    json_decref(tmpl);
    ward_injector_free(inj);
}

static void test_bare_pod_gets_prometheus_annotations(void)
{
    ward_injector_t *inj = injector(NULL);
    json_t *tmpl = sidecar_template();
    json_t *pod = load_json(pod_json);
    char err[256];
    CU_ASSERT_EQUAL_FATAL(ward_inject_pod(inj, pod, err, sizeof(err)), WARD_INJECT_INJECTED);
    json_t *ann = path(pod, "metadata.annotations");
    const char *k;
    json_t *v;
    json_t *want = path(tmpl, "metadata.annotations");
    CU_ASSERT_TRUE(json_object_size(want) >= 4);
    json_object_foreach(want, k, v)
    {
        CU_ASSERT_TRUE(json_equal(json_object_get(ann, k), v));
    }
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(ann, "prometheus.io/port")), "15000");
    /* no probes: the template's containers exactly */
    CU_ASSERT_EQUAL(json_array_size(path(pod, "spec.initContainers")), 2);
    CU_ASSERT_TRUE(json_equal(path(pod, "spec.initContainers"), path(tmpl, "spec.initContainers")));
    json_decref(pod);
    json_decref(tmpl);
    ward_injector_free(inj);
}

static int find_op(json_t *patch, const char *p)
{
    for (size_t i = 0; i < json_array_size(patch); i++)
        if (strcmp(str(json_array_get(patch, i), "path"), p) == 0) return (int)i;
    return -1;
}

static void test_patch_shape_and_escaping(void)
{
    ward_injector_t *inj = injector(NULL);
    json_t *dep = load_json(deployment_json);
    json_t *patch = NULL;
    char err[256];
    int rc = ward_inject_patch(inj, path(dep, "spec.template"), "/spec/template", &patch, err,
                               sizeof(err));
    CU_ASSERT_EQUAL_FATAL(rc, WARD_INJECT_INJECTED);
    /* every op is an add; keys with '/' are escaped as ~1 */
    for (size_t i = 0; i < json_array_size(patch); i++)
        CU_ASSERT_STRING_EQUAL(str(json_array_get(patch, i), "op"), "add");
    CU_ASSERT_TRUE(find_op(patch, "/spec/template/metadata/annotations/ward.dev~1status") >= 0);
    CU_ASSERT_TRUE(find_op(patch, "/spec/template/metadata/annotations/"
                                  "kubectl.kubernetes.io~1default-container") >= 0);
    int i0 = find_op(patch, "/spec/template/spec/initContainers/0");
    int i1 = find_op(patch, "/spec/template/spec/initContainers/1");
    CU_ASSERT_TRUE(i0 >= 0 && i1 > i0);
    CU_ASSERT_STRING_EQUAL(str(json_array_get(patch, (size_t)i0), "value.name"), "ward-init");
    CU_ASSERT_STRING_EQUAL(str(json_array_get(patch, (size_t)i1), "value.name"), "ward-proxy");
    CU_ASSERT_TRUE(find_op(patch, "/spec/template/spec/volumes/-") >= 0);
    /* the patch applied to the whole Deployment == the mutated template */
    json_t *applied = json_deep_copy(dep);
    CU_ASSERT_EQUAL_FATAL(ward_json_patch_apply(&applied, patch, err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(ward_inject_pod(inj, path(dep, "spec.template"), err, sizeof(err)),
                    WARD_INJECT_INJECTED);
    CU_ASSERT_TRUE(json_equal(applied, dep));
    json_decref(applied);
    json_decref(patch);

    /* A bare pod: whole members added where nothing was there. */
    json_t *pod = load_json(pod_json);
    CU_ASSERT_EQUAL_FATAL(ward_inject_patch(inj, pod, "", &patch, err, sizeof(err)),
                          WARD_INJECT_INJECTED);
    CU_ASSERT_TRUE(find_op(patch, "/metadata/annotations") >= 0);
    CU_ASSERT_TRUE(find_op(patch, "/spec/initContainers") >= 0);
    CU_ASSERT_TRUE(find_op(patch, "/spec/volumes") >= 0);
    CU_ASSERT_EQUAL(json_array_size(patch), 3);
    json_decref(patch);
    /* no metadata at all */
    json_object_del(pod, "metadata");
    CU_ASSERT_EQUAL_FATAL(ward_inject_patch(inj, pod, "", &patch, err, sizeof(err)),
                          WARD_INJECT_INJECTED);
    CU_ASSERT_TRUE(find_op(patch, "/metadata") >= 0);
    json_decref(patch);
    json_decref(pod);
    json_decref(dep);
    ward_injector_free(inj);
}

static void test_idempotent(void)
{
    ward_injector_t *inj = injector(NULL);
    json_t *pod = load_json(pod_json);
    char err[256];
    json_t *patch = (json_t *)1;
    CU_ASSERT_EQUAL_FATAL(ward_inject_pod(inj, pod, err, sizeof(err)), WARD_INJECT_INJECTED);
    json_t *once = json_deep_copy(pod);
    CU_ASSERT_EQUAL(ward_inject_pod(inj, pod, err, sizeof(err)), WARD_INJECT_ALREADY);
    CU_ASSERT_TRUE(json_equal(once, pod));
    CU_ASSERT_EQUAL(ward_inject_patch(inj, pod, "", &patch, err, sizeof(err)), WARD_INJECT_ALREADY);
    CU_ASSERT_PTR_EQUAL(patch, (json_t *)1); /* untouched: no patch */
    /* and through YAML: dump(inject(parse(dump(x)))) == dump(x) */
    json_t *docs = json_pack("[O]", pod);
    ward_strbuf_t a = {0}, b = {0};
    CU_ASSERT_EQUAL_FATAL(ward_yaml_dump_all(docs, &a), 0);
    json_t *again = NULL;
    ward_yaml_error_t ye;
    CU_ASSERT_EQUAL_FATAL(ward_yaml_load_all(a.data, a.len, &again, &ye), 0);
    CU_ASSERT_TRUE(json_equal(again, docs));
    CU_ASSERT_EQUAL(ward_inject_pod(inj, json_array_get(again, 0), err, sizeof(err)),
                    WARD_INJECT_ALREADY);
    CU_ASSERT_EQUAL_FATAL(ward_yaml_dump_all(again, &b), 0);
    CU_ASSERT_STRING_EQUAL(a.data, b.data);
    ward_strbuf_free(&a);
    ward_strbuf_free(&b);
    json_decref(again);
    json_decref(docs);
    json_decref(once);
    json_decref(pod);
    ward_injector_free(inj);
}

static void test_opt_outs(void)
{
    ward_injector_t *inj = injector(NULL);
    char err[256];
    static const char *const cases[] = {
        "{\"metadata\":{\"labels\":{\"ward.dev/inject\":\"disabled\"}},\"spec\":{}}",
        "{\"metadata\":{\"annotations\":{\"ward.dev/inject\":\"disabled\"}},\"spec\":{}}",
        "{\"metadata\":{\"annotations\":{\"ward.dev/inject\":\"false\"}},\"spec\":{}}",
        "{\"metadata\":{\"labels\":{\"ward.dev/inject\":\"False\"}},\"spec\":{}}"};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_t *pod = load_json(cases[i]);
        json_t *copy = json_deep_copy(pod);
        CU_ASSERT_EQUAL(ward_inject_pod(inj, pod, err, sizeof(err)), WARD_INJECT_DISABLED);
        CU_ASSERT_TRUE(json_equal(pod, copy));
        json_decref(copy);
        json_decref(pod);
    }
    /* "enabled" is no opt-out */
    json_t *pod = load_json(pod_json);
    json_object_set_new(path(pod, "metadata"), "labels",
                        json_pack("{s:s}", "ward.dev/inject", "enabled"));
    CU_ASSERT_EQUAL(ward_inject_pod(inj, pod, err, sizeof(err)), WARD_INJECT_INJECTED);
    json_decref(pod);
    /* host network: never */
    pod = load_json(pod_json);
    json_object_set_new(path(pod, "spec"), "hostNetwork", json_true());
    CU_ASSERT_EQUAL(ward_inject_pod(inj, pod, err, sizeof(err)), WARD_INJECT_HOST_NETWORK);
    CU_ASSERT_PTR_NULL(path(pod, "spec.initContainers"));
    json_decref(pod);
    CU_ASSERT_STRING_EQUAL(ward_inject_status_name(WARD_INJECT_DISABLED), "disabled");
    ward_injector_free(inj);
}

static void expect_refused(const ward_injector_t *inj, const char *json, const char *why)
{
    json_t *pod = load_json(json);
    json_t *copy = json_deep_copy(pod);
    char err[256] = "";
    int rc = ward_inject_pod(inj, pod, err, sizeof(err));
    if (rc != WARD_EINVAL || strstr(err, why) == NULL)
        fprintf(stderr, "\n  %s: want '%s', got %d '%s'\n", json, why, rc, err);
    CU_ASSERT_EQUAL(rc, WARD_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, why));
    CU_ASSERT_TRUE(json_equal(pod, copy));
    json_decref(copy);
    json_decref(pod);
}

static void test_refusals(void)
{
    ward_injector_t *inj = injector(NULL);
    expect_refused(inj, "{\"metadata\":{}}", "no spec");
    expect_refused(inj, "{\"spec\":{\"containers\":[]}}", "no containers");
    /* the app and the proxy share the network namespace: not the same TCP port */
    expect_refused(inj,
                   "{\"spec\":{\"containers\":[{\"name\":\"a\",\"ports\":[{\"containerPort\":"
                   "15000}]}]}}",
                   "container 'a' declares port 15000, a port of the sidecar (ward-proxy)");
    expect_refused(inj,
                   "{\"spec\":{\"containers\":[{\"name\":\"a\"},{\"name\":\"b\",\"ports\":[{"
                   "\"containerPort\":80},{\"containerPort\":15006,\"protocol\":\"TCP\"}]}]}}",
                   "container 'b' declares port 15006");
    expect_refused(inj,
                   "{\"spec\":{\"containers\":[{\"name\":\"ward-proxy\",\"ports\":[{"
                   "\"containerPort\":80}]}]}}",
                   "already has a container named 'ward-proxy'");
    expect_refused(inj,
                   "{\"spec\":{\"initContainers\":[{\"name\":\"ward-init\"}],\"containers\":[{"
                   "\"name\":\"a\",\"ports\":[{\"containerPort\":80}]}]}}",
                   "already has a container named 'ward-init'");
    expect_refused(inj,
                   "{\"spec\":{\"volumes\":[{\"name\":\"ward-token\"}],\"containers\":[{\"name\":"
                   "\"a\",\"ports\":[{\"containerPort\":80}]}]}}",
                   "volume named 'ward-token'");
    expect_refused(inj, "{\"spec\":{\"initContainers\":{},\"containers\":[{\"name\":\"a\"}]}}",
                   "spec.initContainers is not a list");
    /* no longer refused: no declared port at all, only UDP ones, the sidecar's port over UDP,
     * an old ward.dev/app-port annotation (ignored) */
    static const char *const fine[] = {
        "{\"spec\":{\"containers\":[{\"name\":\"a\"}]}}",
        "{\"spec\":{\"containers\":[{\"name\":\"a\",\"ports\":[{\"containerPort\":53,"
        "\"protocol\":\"UDP\"},{\"containerPort\":15006,\"protocol\":\"UDP\"}]}]}}",
        "{\"metadata\":{\"annotations\":{\"ward.dev/app-port\":\"http\"}},"
        "\"spec\":{\"containers\":[{\"name\":\"a\"}]}}"};
    json_t *tmpl = sidecar_template();
    for (size_t i = 0; i < sizeof(fine) / sizeof(fine[0]); i++) {
        json_t *pod = load_json(fine[i]);
        char err[256] = "";
        int rc = ward_inject_pod(inj, pod, err, sizeof(err));
        if (rc != WARD_INJECT_INJECTED) fprintf(stderr, "\n  %s: %d '%s'\n", fine[i], rc, err);
        CU_ASSERT_EQUAL(rc, WARD_INJECT_INJECTED);
        CU_ASSERT_TRUE(
            json_equal(path(pod, "spec.initContainers"), path(tmpl, "spec.initContainers")));
        json_decref(pod);
    }
    json_decref(tmpl);
    ward_injector_free(inj);
}

/* ---- kubelet probes ------------------------------------------------------------------------ */

/* The injected ward-init's --exclude-inbound-ports for a pod spec (JSON), or NULL without one. */
static char *probe_excl(const ward_injector_t *inj, const char *spec)
{
    static char got[256];
    size_t n = strlen(spec) + 32;
    char *text = malloc(n);
    snprintf(text, n, "{\"spec\":%s}", spec);
    json_t *pod = load_json(text);
    free(text);
    char err[256] = "";
    int rc = ward_inject_pod(inj, pod, err, sizeof(err));
    if (rc != WARD_INJECT_INJECTED) fprintf(stderr, "\n  %s: %d '%s'\n", spec, rc, err);
    CU_ASSERT_EQUAL_FATAL(rc, WARD_INJECT_INJECTED);
    json_t *init = path(pod, "spec.initContainers.0");
    CU_ASSERT_STRING_EQUAL(str(init, "name"), "ward-init");
    const char *v = arg(init, "--exclude-inbound-ports");
    int have = v != NULL;
    snprintf(got, sizeof(got), "%s", have ? v : "");
    json_decref(pod);
    return have ? got : NULL;
}

static void expect_excl(const ward_injector_t *inj, const char *spec, const char *want)
{
    const char *got = probe_excl(inj, spec);
    if (want == NULL ? got != NULL : got == NULL || strcmp(got, want) != 0)
        fprintf(stderr, "\n  %s: --exclude-inbound-ports %s, want %s\n", spec, got ? got : "(none)",
                want ? want : "(none)");
    if (want == NULL) {
        CU_ASSERT_PTR_NULL(got);
    } else {
        CU_ASSERT_TRUE(got != NULL && strcmp(got, want) == 0);
    }
}

static void test_probe_ports(void)
{
    ward_injector_t *inj = injector(NULL);
    /* numeric httpGet and tcpSocket */
    expect_excl(inj,
                "{\"containers\":[{\"name\":\"a\",\"livenessProbe\":{\"httpGet\":{\"path\":"
                "\"/live\",\"port\":8080}},\"readinessProbe\":{\"tcpSocket\":{\"port\":9000}}}]}",
                "8080,9000");
    /* named: resolved against the container's own ports (not another container's) */
    expect_excl(inj,
                "{\"containers\":[{\"name\":\"a\",\"ports\":[{\"name\":\"metrics\","
                "\"containerPort\":9102},{\"name\":\"http\",\"containerPort\":8080}],"
                "\"readinessProbe\":{\"httpGet\":{\"port\":\"http\",\"scheme\":\"HTTPS\"}}},"
                "{\"name\":\"b\",\"ports\":[{\"name\":\"http\",\"containerPort\":7000}],"
                "\"livenessProbe\":{\"tcpSocket\":{\"port\":\"http\"}}}]}",
                "7000,8080");
    /* grpc (a number only), startup probes, and repeats listed once, ascending */
    expect_excl(inj,
                "{\"containers\":[{\"name\":\"a\",\"startupProbe\":{\"grpc\":{\"port\":50051,"
                "\"service\":\"health\"}},\"livenessProbe\":{\"grpc\":{\"port\":50051}},"
                "\"readinessProbe\":{\"httpGet\":{\"port\":443}}}]}",
                "443,50051");
    /* a number written as a string (the kubelet's fallback) */
    expect_excl(inj,
                "{\"containers\":[{\"name\":\"a\",\"livenessProbe\":{\"httpGet\":{\"port\":"
                "\"8081\"}}}]}",
                "8081");
    /* a native sidecar of the app (init container with restartPolicy Always) is probed too */
    expect_excl(inj,
                "{\"initContainers\":[{\"name\":\"log\",\"restartPolicy\":\"Always\","
                "\"ports\":[{\"name\":\"h\",\"containerPort\":2020}],\"startupProbe\":{"
                "\"httpGet\":{\"port\":\"h\"}}}],\"containers\":[{\"name\":\"a\"}]}",
                "2020");
    /* no probe reaching a port: no flag at all (exec probes, an unknown name, an out-of-range
     * number, a grpc port as a name, a probe without a handler) */
    expect_excl(inj, "{\"containers\":[{\"name\":\"a\",\"ports\":[{\"containerPort\":80}]}]}",
                NULL);
    expect_excl(inj,
                "{\"containers\":[{\"name\":\"a\",\"livenessProbe\":{\"exec\":{\"command\":["
                "\"true\"]}},\"readinessProbe\":{\"httpGet\":{\"port\":\"nope\"}},"
                "\"startupProbe\":{\"tcpSocket\":{\"port\":70000}}},{\"name\":\"b\","
                "\"ports\":[{\"name\":\"g\",\"containerPort\":50051}],\"livenessProbe\":{\"grpc\""
                ":{\"port\":\"g\"}},\"readinessProbe\":{\"periodSeconds\":5}}]}",
                NULL);
    ward_injector_free(inj);

    /* merged with the option's list, ascending, without repeats; the option's list alone is
     * sorted too when the pod has no probes */
    ward_inject_options_t o;
    memset(&o, 0, sizeof(o));
    o.v[WARD_INJECT_OPT_EXCLUDE_INBOUND_PORTS] = "9091,22,9090,22";
    inj = injector(&o);
    expect_excl(inj,
                "{\"containers\":[{\"name\":\"a\",\"livenessProbe\":{\"httpGet\":{\"port\":"
                "9090}},\"readinessProbe\":{\"tcpSocket\":{\"port\":8080}}}]}",
                "22,8080,9090,9091");
    expect_excl(inj, "{\"containers\":[{\"name\":\"a\"}]}", "22,9090,9091");
    ward_injector_free(inj);
    o.v[WARD_INJECT_OPT_EXCLUDE_INBOUND_PORTS] = "";
    inj = injector(&o);
    expect_excl(inj,
                "{\"containers\":[{\"name\":\"a\",\"livenessProbe\":{\"httpGet\":{\"port\":"
                "9090}}}]}",
                "9090");
    expect_excl(inj, "{\"containers\":[{\"name\":\"a\"}]}", "");
    ward_injector_free(inj);

    /* a template with FLAG=VALUE keeps that form */
    const char *t = "kind: Pod\nmetadata: {annotations: {ward.dev/status: injected}}\n"
                    "spec:\n  initContainers:\n  - {name: ward-init, args: [--x, '1', "
                    "'--exclude-inbound-ports=53,15']}\n  - {name: ward-proxy}\n";
    char err[256] = "";
    CU_ASSERT_EQUAL_FATAL(ward_injector_new_from(t, strlen(t), NULL, NULL, &inj, err, sizeof(err)),
                          0);
    json_t *pod = load_json("{\"spec\":{\"containers\":[{\"name\":\"a\",\"livenessProbe\":{"
                            "\"tcpSocket\":{\"port\":25}}}]}}");
    CU_ASSERT_EQUAL_FATAL(ward_inject_pod(inj, pod, err, sizeof(err)), WARD_INJECT_INJECTED);
    json_t *args = path(pod, "spec.initContainers.0.args");
    CU_ASSERT_EQUAL(json_array_size(args), 3);
    CU_ASSERT_STRING_EQUAL(str(args, "2"), "--exclude-inbound-ports=15,25,53");
    json_decref(pod);
    ward_injector_free(inj);

    /* the webhook's patch carries the same ward-init; injecting again changes nothing */
    inj = injector(NULL);
    pod = load_json("{\"spec\":{\"containers\":[{\"name\":\"a\",\"ports\":[{\"name\":"
                    "\"http\",\"containerPort\":8080}],\"readinessProbe\":{\"httpGet\":{"
                    "\"port\":\"http\"}}}]}}");
    json_t *patch = NULL;
    CU_ASSERT_EQUAL_FATAL(ward_inject_patch(inj, pod, "", &patch, err, sizeof(err)),
                          WARD_INJECT_INJECTED);
    json_t *applied = json_deep_copy(pod);
    CU_ASSERT_EQUAL_FATAL(ward_json_patch_apply(&applied, patch, err, sizeof(err)), 0);
    CU_ASSERT_STRING_EQUAL(arg(path(applied, "spec.initContainers.0"), "--exclude-inbound-ports"),
                           "8080");
    CU_ASSERT_EQUAL(ward_inject_pod(inj, pod, err, sizeof(err)), WARD_INJECT_INJECTED);
    CU_ASSERT_TRUE(json_equal(applied, pod));
    json_t *once = json_deep_copy(pod);
    CU_ASSERT_EQUAL(ward_inject_pod(inj, pod, err, sizeof(err)), WARD_INJECT_ALREADY);
    CU_ASSERT_TRUE(json_equal(once, pod));
    json_decref(once);
    json_decref(applied);
    json_decref(patch);
    json_decref(pod);
    ward_injector_free(inj);
}

/* ---- options ------------------------------------------------------------------------------- */

static void test_options(void)
{
    ward_inject_options_t o;
    memset(&o, 0, sizeof(o));
    o.v[WARD_INJECT_OPT_PROXY_IMAGE] = "registry.example.com/ward/ward-proxy:0.2.0";
    o.v[WARD_INJECT_OPT_INIT_IMAGE] = "registry.example.com/ward/ward-init:0.2.0";
    o.v[WARD_INJECT_OPT_PULL_POLICY] = "Always";
    o.v[WARD_INJECT_OPT_AGENT_ADDRESS] = "agent.mesh.svc.cluster.local:16012";
    o.v[WARD_INJECT_OPT_TRUST_DOMAIN] = "prod.example.com";
    o.v[WARD_INJECT_OPT_INBOUND_PORTS] = "all";
    o.v[WARD_INJECT_OPT_EXCLUDE_INBOUND_PORTS] = "9090,9091";
    o.v[WARD_INJECT_OPT_EXCLUDE_OUTBOUND_PORTS] = "5432";
    o.v[WARD_INJECT_OPT_EXCLUDE_OUTBOUND_CIDRS] = "10.96.0.0/12,fd00::/8,169.254.169.254";
    o.v[WARD_INJECT_OPT_PROXY_REQUESTS] = "cpu=50m,memory=48Mi";
    o.v[WARD_INJECT_OPT_PROXY_LIMITS] = "memory=512Mi";
    ward_injector_t *inj = injector(&o);
    json_t *pod = load_json(pod_json);
    char err[256];
    CU_ASSERT_EQUAL_FATAL(ward_inject_pod(inj, pod, err, sizeof(err)), WARD_INJECT_INJECTED);
    json_t *init = path(pod, "spec.initContainers.0"), *proxy = path(pod, "spec.initContainers.1");
    CU_ASSERT_STRING_EQUAL(str(proxy, "image"), o.v[WARD_INJECT_OPT_PROXY_IMAGE]);
    CU_ASSERT_STRING_EQUAL(str(init, "image"), o.v[WARD_INJECT_OPT_INIT_IMAGE]);
    CU_ASSERT_STRING_EQUAL(str(init, "imagePullPolicy"), "Always");
    CU_ASSERT_STRING_EQUAL(str(proxy, "imagePullPolicy"), "Always");
    CU_ASSERT_STRING_EQUAL(arg(proxy, "--agent"), "agent.mesh.svc.cluster.local:16012");
    CU_ASSERT_STRING_EQUAL(arg(init, "--agent-port"), "16012");
    CU_ASSERT_STRING_EQUAL(arg(proxy, "--agent-id"), "spiffe://prod.example.com/ward/agent");
    CU_ASSERT_STRING_EQUAL(arg(init, "--include-inbound-ports"), "*");
    CU_ASSERT_STRING_EQUAL(arg(init, "--exclude-inbound-ports"), "9090,9091");
    CU_ASSERT_STRING_EQUAL(arg(init, "--exclude-outbound-ports"), "5432");
    CU_ASSERT_STRING_EQUAL(arg(init, "--exclude-outbound-cidrs"),
                           "10.96.0.0/12,fd00::/8,169.254.169.254");
    CU_ASSERT_STRING_EQUAL(str(proxy, "resources.requests.cpu"), "50m");
    CU_ASSERT_STRING_EQUAL(str(proxy, "resources.requests.memory"), "48Mi");
    CU_ASSERT_STRING_EQUAL(str(proxy, "resources.limits.memory"), "512Mi");
    CU_ASSERT_STRING_EQUAL(str(proxy, "resources.limits.cpu"), "1"); /* the template's */
    json_decref(pod);
    ward_injector_free(inj);

    /* bad values: EINVAL naming the flag with the caller's prefix */
    static const struct {
        int opt;
        const char *v;
    } bad[] = {{WARD_INJECT_OPT_PROXY_IMAGE, ""},
               {WARD_INJECT_OPT_PROXY_IMAGE, "a b"},
               {WARD_INJECT_OPT_PULL_POLICY, "Sometimes"},
               {WARD_INJECT_OPT_AGENT_ADDRESS, "no-port"},
               {WARD_INJECT_OPT_AGENT_ADDRESS, "host:99999"},
               {WARD_INJECT_OPT_AGENT_ADDRESS, "bad host:80"},
               {WARD_INJECT_OPT_TRUST_DOMAIN, "Not_A_TD!"},
               {WARD_INJECT_OPT_INBOUND_PORTS, "80,"},
               {WARD_INJECT_OPT_INBOUND_PORTS, "0"},
               {WARD_INJECT_OPT_EXCLUDE_INBOUND_PORTS, "http"},
               {WARD_INJECT_OPT_EXCLUDE_OUTBOUND_CIDRS, "10.0.0.0/33"},
               {WARD_INJECT_OPT_EXCLUDE_OUTBOUND_CIDRS, "example.com"},
               {WARD_INJECT_OPT_PROXY_REQUESTS, "cpu=lots"},
               {WARD_INJECT_OPT_PROXY_REQUESTS, "gpu=1"},
               {WARD_INJECT_OPT_PROXY_LIMITS, "memory"}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(&o, 0, sizeof(o));
        o.v[bad[i].opt] = bad[i].v;
        ward_injector_t *x = NULL;
        char want[64];
        int rc = ward_injector_new(&o, "--inject-", &x, err, sizeof(err));
        snprintf(want, sizeof(want), "--inject-%s '", ward_inject_option_name(bad[i].opt));
        if (rc != WARD_EINVAL || strncmp(err, want, strlen(want)) != 0)
            fprintf(stderr, "\n  %s=%s: rc %d '%s'\n", ward_inject_option_name(bad[i].opt),
                    bad[i].v, rc, err);
        CU_ASSERT_EQUAL(rc, WARD_EINVAL);
        CU_ASSERT_EQUAL(strncmp(err, want, strlen(want)), 0);
        CU_ASSERT_PTR_NULL(x);
    }
    CU_ASSERT_EQUAL(ward_inject_option_find("exclude-outbound-cidrs"),
                    WARD_INJECT_OPT_EXCLUDE_OUTBOUND_CIDRS);
    CU_ASSERT_EQUAL(ward_inject_option_find("nope"), -1);
}

static void test_template_errors(void)
{
    static const char *const bad[] = {
        "kind: Deployment\n",
        "kind: Pod\nmetadata: {annotations: {}}\nspec: {initContainers: []}\n",
        "kind: Pod\nmetadata: {annotations: {ward.dev/status: injected}}\n"
        "spec: {initContainers: [{name: ward-init}]}\n",
        "kind: Pod\n---\nkind: Pod\n",
        "kind: [\n",
        "kind: Pod\nmetadata: {annotations: {ward.dev/status: injected}}\n"
        "spec: {initContainers: [{name: ward-init, args: [--exclude-inbound-ports, http]},"
        " {name: ward-proxy}]}\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ward_injector_t *x = NULL;
        char err[256] = "";
        CU_ASSERT_EQUAL(
            ward_injector_new_from(bad[i], strlen(bad[i]), NULL, NULL, &x, err, sizeof(err)),
            WARD_EPARSE);
        CU_ASSERT_PTR_NOT_NULL(strstr(err, "sidecar template"));
        CU_ASSERT_PTR_NULL(x);
    }
    /* the compiled-in copy is the file */
    size_t len = 0;
    const char *text = ward_inject_template_text(&len);
    FILE *f = fopen(WARD_SIDECAR_YAML, "rb");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    static char buf[1 << 16];
    size_t n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    CU_ASSERT_EQUAL(n, len);
    CU_ASSERT_EQUAL(memcmp(buf, text, n), 0);
}

/* ---- JSON Pointer / Patch ------------------------------------------------------------------ */

static void test_pointer_escaping(void)
{
    ward_strbuf_t b = {0};
    CU_ASSERT_EQUAL(ward_json_pointer_append(&b, "metadata"), 0);
    CU_ASSERT_EQUAL(ward_json_pointer_append(&b, "prometheus.io/scrape"), 0);
    CU_ASSERT_EQUAL(ward_json_pointer_append(&b, "a~b/c~/"), 0);
    CU_ASSERT_EQUAL(ward_json_pointer_append(&b, ""), 0);
    CU_ASSERT_STRING_EQUAL(b.data, "/metadata/prometheus.io~1scrape/a~0b~1c~0~1/");
    ward_strbuf_free(&b);
    /* and back: RFC 6901's own examples */
    json_t *doc = load_json("{\"a/b\":1,\"m~n\":2,\"\":3,\"k\\\"l\":4}");
    static const struct {
        const char *path;
        int want;
    } cases[] = {{"/a~1b", 1}, {"/m~0n", 2}, {"/", 3}, {"/k\"l", 4}};
    for (size_t i = 0; i < 4; i++) {
        char p[128], err[128];
        snprintf(p, sizeof(p), "[{\"op\":\"test\",\"path\":\"%s\",\"value\":%d}]", cases[i].path,
                 cases[i].want);
        json_t *patch =
            load_json(i == 3 ? "[{\"op\":\"test\",\"path\":\"/k\\\"l\",\"value\":4}]" : p);
        CU_ASSERT_EQUAL(ward_json_patch_apply(&doc, patch, err, sizeof(err)), 0);
        json_decref(patch);
    }
    json_decref(doc);
}

static void patch_case(const char *doc, const char *patch, const char *want)
{
    json_t *d = load_json(doc), *p = load_json(patch);
    json_t *orig = json_deep_copy(d);
    char err[256] = "";
    int rc = ward_json_patch_apply(&d, p, err, sizeof(err));
    if (want == NULL) {
        CU_ASSERT_EQUAL(rc, WARD_EINVAL);
        CU_ASSERT_TRUE(json_equal(d, orig)); /* atomic: unchanged on failure */
        CU_ASSERT_PTR_NOT_NULL(strstr(err, "operation"));
    } else {
        json_t *w = load_json(want);
        if (rc != 0 || !json_equal(d, w)) {
            char *got = json_dumps(d, JSON_COMPACT);
            fprintf(stderr, "\n  %s + %s: rc %d %s, got %s\n", doc, patch, rc, err, got);
            free(got);
        }
        CU_ASSERT_EQUAL(rc, 0);
        CU_ASSERT_TRUE(json_equal(d, w));
        json_decref(w);
    }
    json_decref(orig);
    json_decref(d);
    json_decref(p);
}

static void test_patch_apply(void)
{
    patch_case("{\"a\":[1,2]}", "[{\"op\":\"add\",\"path\":\"/a/0\",\"value\":0}]",
               "{\"a\":[0,1,2]}");
    patch_case("{\"a\":[1,2]}", "[{\"op\":\"add\",\"path\":\"/a/2\",\"value\":3}]",
               "{\"a\":[1,2,3]}");
    patch_case("{\"a\":[1,2]}", "[{\"op\":\"add\",\"path\":\"/a/-\",\"value\":3}]",
               "{\"a\":[1,2,3]}");
    patch_case("{\"a\":1}", "[{\"op\":\"add\",\"path\":\"/a\",\"value\":2}]", "{\"a\":2}");
    patch_case("{\"a\":1}", "[{\"op\":\"replace\",\"path\":\"/a\",\"value\":[]}]", "{\"a\":[]}");
    patch_case("{\"a\":1,\"b\":2}", "[{\"op\":\"remove\",\"path\":\"/a\"}]", "{\"b\":2}");
    patch_case("{\"a\":{\"x\":1},\"b\":{}}",
               "[{\"op\":\"move\",\"from\":\"/a/x\",\"path\":\"/b/y\"}]",
               "{\"a\":{},\"b\":{\"y\":1}}");
    patch_case("{\"a\":[1]}", "[{\"op\":\"copy\",\"from\":\"/a\",\"path\":\"/b\"}]",
               "{\"a\":[1],\"b\":[1]}");
    patch_case("{\"a\":1}", "[{\"op\":\"replace\",\"path\":\"\",\"value\":[true]}]", "[true]");
    /* failures: nothing applied, even the ops before the bad one */
    patch_case("{\"a\":[1]}",
               "[{\"op\":\"add\",\"path\":\"/b\",\"value\":1},"
               "{\"op\":\"add\",\"path\":\"/a/5\",\"value\":1}]",
               NULL);
    patch_case("{\"a\":[1]}", "[{\"op\":\"add\",\"path\":\"/a/01\",\"value\":1}]", NULL);
    patch_case("{\"a\":1}", "[{\"op\":\"add\",\"path\":\"/x/y\",\"value\":1}]", NULL);
    patch_case("{\"a\":1}", "[{\"op\":\"add\",\"path\":\"a\",\"value\":1}]", NULL);
    patch_case("{\"a\":1}", "[{\"op\":\"add\",\"path\":\"/~2\",\"value\":1}]", NULL);
    patch_case("{\"a\":1}", "[{\"op\":\"remove\",\"path\":\"/b\"}]", NULL);
    patch_case("{\"a\":1}", "[{\"op\":\"replace\",\"path\":\"/b\",\"value\":1}]", NULL);
    patch_case("{\"a\":1}", "[{\"op\":\"test\",\"path\":\"/a\",\"value\":2}]", NULL);
    patch_case("{\"a\":1}", "[{\"op\":\"add\",\"path\":\"/b\"}]", NULL);
    patch_case("{\"a\":1}", "[{\"op\":\"frobnicate\",\"path\":\"/a\"}]", NULL);
    patch_case("{\"a\":{\"b\":{}}}", "[{\"op\":\"move\",\"from\":\"/a\",\"path\":\"/a/b/c\"}]",
               NULL);
    patch_case("{\"a\":1}", "[1]", NULL);
}

/* ---- AdmissionReview ----------------------------------------------------------------------- */

static char *review_of(const char *pod, const char *op, const char *kind)
{
    size_t n = strlen(pod) + 512;
    char *s = malloc(n);
    snprintf(s, n,
             "{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{"
             "\"uid\":\"705ab4f5-6393-11e8-b7cc-42010a800002\",\"kind\":{\"group\":\"\","
             "\"version\":\"v1\",\"kind\":\"%s\"},\"resource\":{\"group\":\"\",\"version\":"
             "\"v1\",\"resource\":\"pods\"},\"namespace\":\"shop\",\"operation\":\"%s\","
             "\"userInfo\":{\"username\":\"system:serviceaccount:kube-system:replicaset-"
             "controller\"},\"object\":%s,\"oldObject\":null,\"dryRun\":false}}",
             kind, op, pod);
    return s;
}

static json_t *review(const ward_injector_t *inj, const char *body, int want_rc,
                      ward_inject_review_info_t *info)
{
    ward_strbuf_t out = {0};
    char err[512] = "";
    int rc = ward_inject_review(inj, body, strlen(body), &out, info, err, sizeof(err));
    if (rc != want_rc) fprintf(stderr, "\n  review: rc %d (%s)\n", rc, err);
    CU_ASSERT_EQUAL_FATAL(rc, want_rc);
    if (rc != 0) {
        CU_ASSERT_TRUE(err[0] != '\0');
        return NULL;
    }
    json_t *r = load_json(out.data);
    ward_strbuf_free(&out);
    CU_ASSERT_STRING_EQUAL(str(r, "apiVersion"), "admission.k8s.io/v1");
    CU_ASSERT_STRING_EQUAL(str(r, "kind"), "AdmissionReview");
    CU_ASSERT_STRING_EQUAL(str(r, "response.uid"), "705ab4f5-6393-11e8-b7cc-42010a800002");
    CU_ASSERT_TRUE(json_is_true(path(r, "response.allowed")));
    return r;
}

static void test_review(void)
{
    ward_injector_t *inj = injector(NULL);
    ward_inject_review_info_t info;
    /* a pod made by a ReplicaSet: generateName, no name */
    const char *pod = "{\"metadata\":{\"generateName\":\"web-7d4b9c-\",\"namespace\":\"shop\","
                      "\"labels\":{\"app\":\"web\"}},\"spec\":{\"containers\":[{\"name\":\"web\","
                      "\"image\":\"shop/web:1\",\"ports\":[{\"containerPort\":8080}]}]}}";
    char *body = review_of(pod, "CREATE", "Pod");
    json_t *r = review(inj, body, 0, &info);
    CU_ASSERT_STRING_EQUAL(str(r, "response.patchType"), "JSONPatch");
    CU_ASSERT_STRING_EQUAL(info.decision, "injected");
    CU_ASSERT_STRING_EQUAL(info.name, "web-7d4b9c-*");
    CU_ASSERT_STRING_EQUAL(info.namespace_, "shop");
    /* the patch is base64 of exactly what ward_inject_patch computes */
    json_t *p = load_json(pod), *patch = NULL;
    char err[256];
    CU_ASSERT_EQUAL_FATAL(ward_inject_patch(inj, p, "", &patch, err, sizeof(err)),
                          WARD_INJECT_INJECTED);
    char *text = json_dumps(patch, JSON_COMPACT);
    ward_strbuf_t b64 = {0};
    CU_ASSERT_EQUAL(ward_base64_append(&b64, (unsigned char *)text, strlen(text)), 0);
    CU_ASSERT_STRING_EQUAL(str(r, "response.patch"), b64.data);
    ward_strbuf_free(&b64);
    free(text);
    json_decref(patch);
    json_decref(p);
    json_decref(r);
    free(body);

    /* no patch: UPDATE, another kind, an opted-out pod, an injected pod */
    static const struct {
        const char *op, *kind, *pod, *decision;
    } none[] = {
        {"UPDATE", "Pod", "{\"spec\":{}}", "ignored"},
        {"CREATE", "Service", "{\"spec\":{}}", "ignored"},
        {"CREATE", "Pod",
         "{\"metadata\":{\"annotations\":{\"ward.dev/inject\":\"disabled\"}},\"spec\":{}}",
         "disabled"},
        {"CREATE", "Pod", "{\"metadata\":{\"annotations\":{\"ward.dev/status\":\"injected\"}}}",
         "already_injected"},
        {"CREATE", "Pod", "{\"spec\":{\"hostNetwork\":true,\"containers\":[{\"name\":\"a\"}]}}",
         "host_network"}};
    for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); i++) {
        body = review_of(none[i].pod, none[i].op, none[i].kind);
        r = review(inj, body, 0, &info);
        CU_ASSERT_PTR_NULL(path(r, "response.patch"));
        CU_ASSERT_PTR_NULL(path(r, "response.patchType"));
        CU_ASSERT_STRING_EQUAL(info.decision, none[i].decision);
        json_decref(r);
        free(body);
    }
    /* a pod without ports: injected */
    body = review_of("{\"spec\":{\"containers\":[{\"name\":\"worker\"}]}}", "CREATE", "Pod");
    r = review(inj, body, 0, &info);
    CU_ASSERT_STRING_EQUAL(str(r, "response.patchType"), "JSONPatch");
    CU_ASSERT_STRING_EQUAL(info.decision, "injected");
    json_decref(r);
    free(body);
    /* not injectable: admitted unchanged, with a warning saying why */
    body = review_of("{\"spec\":{\"containers\":[{\"name\":\"worker\",\"ports\":[{"
                     "\"containerPort\":15006}]}]}}",
                     "CREATE", "Pod");
    r = review(inj, body, 0, &info);
    CU_ASSERT_PTR_NULL(path(r, "response.patch"));
    CU_ASSERT_PTR_NOT_NULL(strstr(str(r, "response.warnings.0"), "a port of the sidecar"));
    CU_ASSERT_STRING_EQUAL(info.decision, "not_injectable");
    json_decref(r);
    free(body);

    /* malformed reviews: an error, never a crash */
    static const char *const bad[] = {
        "",
        "garbage{",
        "[]",
        "{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\"}",
        "{\"apiVersion\":\"admission.k8s.io/v2\",\"kind\":\"AdmissionReview\",\"request\":{}}",
        "{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"Pod\",\"request\":{}}",
        "{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{"
        "\"kind\":{\"kind\":\"Pod\"},\"operation\":\"CREATE\",\"object\":{}}}",
        "{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{"
        "\"uid\":\"x\",\"kind\":{\"kind\":\"Pod\"},\"operation\":\"CREATE\",\"object\":7}}",
        "{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{"
        "\"uid\":\"x\",\"uid\":\"y\"}}",
        "{\"apiVersion\":\"admission.k8s.io/v1\",\"kind\":\"AdmissionReview\",\"request\":{"
        "\"uid\":\"x\"}}"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ward_strbuf_t out = {0};
        int rc = ward_inject_review(inj, bad[i], strlen(bad[i]), &out, &info, err, sizeof(err));
        CU_ASSERT_TRUE(rc == WARD_EINVAL || rc == WARD_EPARSE);
        CU_ASSERT_PTR_NULL(out.data);
    }
    /* v1beta1 is answered in v1beta1 */
    body = review_of(pod, "CREATE", "Pod");
    char *beta = malloc(strlen(body) + 8);
    const char *at = strstr(body, "admission.k8s.io/v1") + strlen("admission.k8s.io/v1");
    sprintf(beta, "%.*sbeta1%s", (int)(at - body), body, at);
    ward_strbuf_t out = {0};
    CU_ASSERT_EQUAL(ward_inject_review(inj, beta, strlen(beta), &out, &info, err, sizeof(err)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out.data, "\"apiVersion\":\"admission.k8s.io/v1beta1\""));
    ward_strbuf_free(&out);
    free(beta);
    free(body);
    ward_injector_free(inj);
}

static void test_base64(void)
{
    static const char *const v[][2] = {{"", ""},
                                       {"f", "Zg=="},
                                       {"fo", "Zm8="},
                                       {"foo", "Zm9v"},
                                       {"foob", "Zm9vYg=="},
                                       {"fooba", "Zm9vYmE="},
                                       {"foobar", "Zm9vYmFy"}};
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        ward_strbuf_t b = {0};
        CU_ASSERT_EQUAL(ward_base64_append(&b, (const unsigned char *)v[i][0], strlen(v[i][0])), 0);
        CU_ASSERT_STRING_EQUAL(b.data, v[i][1]);
        ward_strbuf_free(&b);
    }
    /* across the encoder's internal chunk boundary */
    unsigned char big[3000];
    for (size_t i = 0; i < sizeof(big); i++)
        big[i] = (unsigned char)(i * 7);
    ward_strbuf_t b = {0}, halves = {0};
    CU_ASSERT_EQUAL(ward_base64_append(&b, big, sizeof(big)), 0);
    CU_ASSERT_EQUAL(b.len, 4000);
    /* 1500 is a multiple of 3: the encoding of the whole is the two encodings joined */
    CU_ASSERT_EQUAL(ward_base64_append(&halves, big, 1500), 0);
    CU_ASSERT_EQUAL(ward_base64_append(&halves, big + 1500, 1500), 0);
    CU_ASSERT_STRING_EQUAL(b.data, halves.data);
    CU_ASSERT_PTR_NULL(strchr(b.data, '='));
    ward_strbuf_free(&b);
    ward_strbuf_free(&halves);
}

/* ---- YAML ---------------------------------------------------------------------------------- */

static json_t *yaml1(const char *text)
{
    json_t *docs = NULL;
    ward_yaml_error_t e;
    int rc = ward_yaml_load_all(text, strlen(text), &docs, &e);
    if (rc != 0) fprintf(stderr, "\n  yaml: line %d: %s\n", e.line, e.message);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    json_t *d = json_incref(json_array_get(docs, 0));
    json_decref(docs);
    return d;
}

static void test_yaml_scalars(void)
{
    json_t *d = yaml1("a: 8080\nb: \"8080\"\nc: 0444\nd: 0x1F\ne: 0o17\nf: 0b101\ng: 1_000\n"
                      "h: -12\ni: 1.5\nj: 1e3\nk: .5\nl: true\nm: yes\nn: Off\no: y\np: ~\n"
                      "q: null\nr: ''\ns: 10:30\nt: 2024-01-02\nu: 08\nv: .inf\nw: 1.2.3\n"
                      "x: !!str 12\ny: 'true'\nz:\n");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(d, "a")), 8080);
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(d, "b")), "8080");
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(d, "c")), 292);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(d, "d")), 31);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(d, "e")), 15);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(d, "f")), 5);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(d, "g")), 1000);
    CU_ASSERT_EQUAL(json_integer_value(json_object_get(d, "h")), -12);
    CU_ASSERT_DOUBLE_EQUAL(json_real_value(json_object_get(d, "i")), 1.5, 1e-12);
    CU_ASSERT_DOUBLE_EQUAL(json_real_value(json_object_get(d, "j")), 1000, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(json_real_value(json_object_get(d, "k")), 0.5, 1e-12);
    CU_ASSERT_TRUE(json_is_true(json_object_get(d, "l")));
    CU_ASSERT_TRUE(json_is_true(json_object_get(d, "m")));
    CU_ASSERT_TRUE(json_is_false(json_object_get(d, "n")));
    CU_ASSERT_TRUE(json_is_true(json_object_get(d, "o")));
    CU_ASSERT_TRUE(json_is_null(json_object_get(d, "p")));
    CU_ASSERT_TRUE(json_is_null(json_object_get(d, "q")));
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(d, "r")), "");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(d, "s")), "10:30");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(d, "t")), "2024-01-02");
    CU_ASSERT_TRUE(json_is_real(json_object_get(d, "u"))); /* not octal: a float, as go-yaml */
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(d, "v")), ".inf");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(d, "w")), "1.2.3");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(d, "x")), "12");
    CU_ASSERT_STRING_EQUAL(json_string_value(json_object_get(d, "y")), "true");
    CU_ASSERT_TRUE(json_is_null(json_object_get(d, "z")));

    /* everything written comes back as it was, and writing again is a fixpoint */
    json_t *docs =
        json_pack("[O, {s:s, s:s, s:[]}, n]", d, "multi", "one\ntwo\n", "trail", "sp ", "empty");
    ward_strbuf_t a = {0}, b = {0};
    CU_ASSERT_EQUAL_FATAL(ward_yaml_dump_all(docs, &a), 0);
    json_t *back = NULL;
    ward_yaml_error_t e;
    CU_ASSERT_EQUAL_FATAL(ward_yaml_load_all(a.data, a.len, &back, &e), 0);
    if (!json_equal(back, docs)) fprintf(stderr, "\n  round trip:\n%s\n", a.data);
    CU_ASSERT_TRUE(json_equal(back, docs));
    CU_ASSERT_EQUAL_FATAL(ward_yaml_dump_all(back, &b), 0);
    CU_ASSERT_STRING_EQUAL(a.data, b.data);
    /* strings that would read as something else are quoted; a multi-line one is a block */
    CU_ASSERT_PTR_NOT_NULL(strstr(a.data, "b: \"8080\"\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(a.data, "s: \"10:30\"\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(a.data, "t: \"2024-01-02\"\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(a.data, "\"y\": \"true\"\n")); /* the key too: y is a bool */
    CU_ASSERT_PTR_NOT_NULL(strstr(a.data, "\"n\": false\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(a.data, "r: \"\"\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(a.data, "multi: |\n  one\n  two\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(a.data, "c: 292\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(a.data, "empty: []\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(a.data, "\n---\n"));
    ward_strbuf_free(&a);
    ward_strbuf_free(&b);
    json_decref(back);
    json_decref(docs);
    json_decref(d);
}

static void test_yaml_structure(void)
{
    /* documents: empty ones are null; anchors, aliases and merge keys */
    json_t *docs = NULL;
    ward_yaml_error_t e;
    const char *text = "---\n---\nbase: &b {x: 1, y: 2}\nuse: *b\nm:\n  <<: *b\n  y: 3\n"
                       "list: &l [1, 2]\nagain: *l\n";
    CU_ASSERT_EQUAL_FATAL(ward_yaml_load_all(text, strlen(text), &docs, &e), 0);
    CU_ASSERT_EQUAL(json_array_size(docs), 2);
    CU_ASSERT_TRUE(json_is_null(json_array_get(docs, 0)));
    json_t *d = json_array_get(docs, 1);
    CU_ASSERT_TRUE(json_equal(json_object_get(d, "use"), json_object_get(d, "base")));
    CU_ASSERT_EQUAL(json_integer_value(path(d, "m.x")), 1);
    CU_ASSERT_EQUAL(json_integer_value(path(d, "m.y")), 3); /* explicit keys win */
    CU_ASSERT_EQUAL(json_array_size(json_object_get(d, "again")), 2);
    /* copies, not shared: changing one leaves the other */
    json_object_set_new(json_object_get(d, "use"), "x", json_integer(9));
    CU_ASSERT_EQUAL(json_integer_value(path(d, "base.x")), 1);
    json_decref(docs);

    static const struct {
        const char *text, *why;
        int doc, line;
    } bad[] = {{"a: 1\na: 2\n", "duplicate key", 1, 2},
               {"---\nok: 1\n---\n[1, 2]: x\n", "complex keys", 2, 4},
               {"a: *nope\n", "undefined alias", 1, 1},
               {"a: [1\n", "flow sequence", 1, 2},
               {"a: !!int abc\n", "does not match its tag", 1, 1}};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        json_t *out = NULL;
        int rc = ward_yaml_load_all(bad[i].text, strlen(bad[i].text), &out, &e);
        if (rc != WARD_EPARSE || strstr(e.message, bad[i].why) == NULL || e.line != bad[i].line)
            fprintf(stderr, "\n  '%s': rc %d doc %d line %d '%s'\n", bad[i].text, rc, e.document,
                    e.line, e.message);
        CU_ASSERT_EQUAL(rc, WARD_EPARSE);
        CU_ASSERT_PTR_NOT_NULL(strstr(e.message, bad[i].why));
        CU_ASSERT_EQUAL(e.document, bad[i].doc);
        CU_ASSERT_EQUAL(e.line, bad[i].line);
        CU_ASSERT_PTR_NULL(out);
    }
    /* an alias bomb stops at its budget; deep nesting at 256 levels */
    ward_strbuf_t bomb = {0};
    ward_strbuf_printf(&bomb, "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for (int i = 1; i < 12; i++)
        ward_strbuf_printf(&bomb, "a%d: &a%d [*a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d, *a%d]\n", i,
                           i, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1, i - 1);
    json_t *out = NULL;
    CU_ASSERT_EQUAL(ward_yaml_load_all(bomb.data, bomb.len, &out, &e), WARD_EPARSE);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.message, "aliases expand to too many nodes"));
    ward_strbuf_free(&bomb);
    ward_strbuf_t deep = {0};
    for (int i = 0; i < 300; i++)
        ward_strbuf_printf(&deep, "[");
    CU_ASSERT_EQUAL(ward_yaml_load_all(deep.data, deep.len, &out, &e), WARD_EPARSE);
    CU_ASSERT_PTR_NOT_NULL(strstr(e.message, "256 levels"));
    ward_strbuf_free(&deep);
}

void ward_unit_register(void)
{
    WARD_SUITE("inject", WARD_TEST(test_injects_the_template),
               WARD_TEST(test_bare_pod_gets_prometheus_annotations),
               WARD_TEST(test_patch_shape_and_escaping), WARD_TEST(test_idempotent),
               WARD_TEST(test_opt_outs), WARD_TEST(test_refusals), WARD_TEST(test_probe_ports),
               WARD_TEST(test_options), WARD_TEST(test_template_errors));
    WARD_SUITE("json_patch", WARD_TEST(test_pointer_escaping), WARD_TEST(test_patch_apply));
    WARD_SUITE("admission", WARD_TEST(test_review), WARD_TEST(test_base64));
    WARD_SUITE("yaml_json", WARD_TEST(test_yaml_scalars), WARD_TEST(test_yaml_structure));
}
