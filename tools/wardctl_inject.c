/* wardctl_inject.c — `wardctl inject -f FILE|- [-o yaml|json] [options]`, like `istioctl
 * kube-inject` and `linkerd inject`: reads a stream of manifests (YAML or JSON, any number of
 * documents), adds the ward sidecar to every pod template it finds (lib/inject.c: the same
 * injector as ward-agent's admission webhook) and writes the stream back. Objects without a pod
 * template pass through unchanged; so do templates that are already injected, opted out
 * (ward.dev/inject: disabled) or on the host's network, with a note on stderr. Comments and the
 * original layout are not kept (the output is re-emitted from the parsed objects). */
#include "wardctl_inject.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/inject.h"
#include "ward/strbuf.h"
#include "ward/yaml_json.h"

#define WARDCTL_INJECT_MAX_INPUT (64u << 20)

void wardctl_inject_usage(FILE *out)
{
    fputs("usage: wardctl inject -f FILE|- [-o yaml|json] [options]\n"
          "\n"
          "Adds the ward sidecar (deploy/sidecar/ward-sidecar.yaml: the ward-init iptables init\n"
          "container, then ward-proxy as a native sidecar) to every pod template of the\n"
          "manifests: Pod, Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController,\n"
          "Job, CronJob, and the items of a List. Other objects pass through unchanged. Templates\n"
          "already injected (annotation ward.dev/status), opted out (label or annotation\n"
          "ward.dev/inject: disabled) or using hostNetwork are left alone (noted on stderr).\n"
          "Injecting an injected stream changes nothing. A pod needs no declared port (the\n"
          "proxy captures its TCP traffic); the ports of its kubelet probes (httpGet, tcpSocket,\n"
          "grpc; named ports resolved) are added to ward-init's --exclude-inbound-ports, since\n"
          "the kubelet probes in plaintext from the node.\n"
          "\n"
          "  -f, --filename FILE         manifests (YAML or JSON, any number of documents);\n"
          "                              '-' reads stdin\n"
          "  -o, --output FORMAT         yaml (default) or json (one object, or a List)\n",
          out);
    for (int i = 0; i < WARD_INJECT_OPT_COUNT; i++) {
        char left[64];
        snprintf(left, sizeof(left), "--%s %s", ward_inject_option_name(i),
                 ward_inject_option_arg(i));
        fprintf(out, "  %-26s  %s\n", left, ward_inject_option_help(i));
    }
    fputs("  -h, --help\n"
          "\n"
          "Comments and the original layout are not kept. Exit status: 0 written, 1 bad input\n"
          "(every bad document is named; nothing is written), 2 usage error.\n"
          "Example: wardctl inject -f deployment.yaml | kubectl apply -f -\n",
          out);
}

static char *read_all(const char *path, size_t *len, char *why, size_t whylen)
{
    FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "rb");
    size_t cap = 65536, n = 0;
    char *buf = NULL;
    if (f == NULL) {
        snprintf(why, whylen, "%s", strerror(errno));
        return NULL;
    }
    for (;;) {
        if (n == cap || buf == NULL) {
            if (buf != NULL) cap *= 2;
            char *nb = ward_realloc(buf, cap + 1);
            if (nb == NULL) {
                snprintf(why, whylen, "out of memory");
                goto fail;
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (n > WARDCTL_INJECT_MAX_INPUT) {
            snprintf(why, whylen, "larger than %u MiB", WARDCTL_INJECT_MAX_INPUT >> 20);
            goto fail;
        }
        if (r == 0) {
            if (ferror(f)) {
                snprintf(why, whylen, "%s", strerror(errno));
                goto fail;
            }
            break;
        }
    }
    if (f != stdin) fclose(f);
    buf[n] = '\0';
    *len = n;
    return buf;
fail:
    if (f != stdin) fclose(f);
    ward_free(buf);
    return NULL;
}

typedef struct {
    const ward_injector_t *inj;
    const char *file;
    int injected, skipped, bad;
} wardctl_inject_run_t;

/* The pod template of a workload kind: NULL for kinds without one (*known = 0). */
static json_t *pod_template(json_t *obj, const char *kind, int *known)
{
    static const char *const workloads[] = {"Deployment", "StatefulSet",           "DaemonSet",
                                            "ReplicaSet", "ReplicationController", "Job",
                                            NULL};
    *known = 1;
    if (strcmp(kind, "Pod") == 0) return obj;
    for (int i = 0; workloads[i]; i++)
        if (strcmp(kind, workloads[i]) == 0)
            return json_object_get(json_object_get(obj, "spec"), "template");
    if (strcmp(kind, "CronJob") == 0)
        return json_object_get(
            json_object_get(json_object_get(json_object_get(obj, "spec"), "jobTemplate"), "spec"),
            "template");
    *known = 0;
    return NULL;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

/* Injects obj (a document, or an item of a List: where names it for messages). */
static int inject_object(wardctl_inject_run_t *run, json_t *obj, const char *where)
{
    char label[512], err[512];
    if (!json_is_object(obj)) {
        fprintf(stderr, "wardctl inject: %s: %s, %s: not an object\n", run->file, where,
                json_is_array(obj) ? "a list" : "a scalar");
        run->bad++;
        return 0;
    }
    const char *kind = json_string_value(json_object_get(obj, "kind"));
    const char *name = json_string_value(json_object_get(json_object_get(obj, "metadata"), "name"));
    if (name == NULL)
        name = json_string_value(json_object_get(json_object_get(obj, "metadata"), "generateName"));
    snprintf(label, sizeof(label), "%s (%s %s)", where, kind ? kind : "no kind",
             name ? name : "unnamed");
    if (kind == NULL) {
        fprintf(stderr, "wardctl inject: %s: %s: no kind\n", run->file, label);
        run->bad++;
        return 0;
    }
    json_t *items = json_object_get(obj, "items");
    if (ends_with(kind, "List") && json_is_array(items)) {
        size_t i;
        json_t *it;
        json_array_foreach(items, i, it)
        {
            char sub[600];
            snprintf(sub, sizeof(sub), "%s, item %zu", where, i + 1);
            int rc = inject_object(run, it, sub);
            if (rc < 0) return rc;
        }
        return 0;
    }
    int known;
    json_t *tmpl = pod_template(obj, kind, &known);
    if (!known) return 0;
    if (!json_is_object(tmpl)) {
        fprintf(stderr, "wardctl inject: %s: %s: no pod template (%s)\n", run->file, label,
                strcmp(kind, "CronJob") == 0 ? "spec.jobTemplate.spec.template" : "spec.template");
        run->bad++;
        return 0;
    }
    int rc = ward_inject_pod(run->inj, tmpl, err, sizeof(err));
    if (rc == WARD_ENOMEM) return rc;
    if (rc < 0) {
        fprintf(stderr, "wardctl inject: %s: %s: %s\n", run->file, label, err);
        run->bad++;
    } else if (rc == WARD_INJECT_INJECTED) {
        run->injected++;
    } else {
        fprintf(stderr, "wardctl inject: %s: %s: not injected (%s)\n", run->file, label,
                rc == WARD_INJECT_ALREADY    ? "already injected"
                : rc == WARD_INJECT_DISABLED ? "ward.dev/inject: disabled"
                                             : "hostNetwork");
        run->skipped++;
    }
    return 0;
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, "wardctl inject: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, " (see wardctl inject --help)\n");
    return 2;
}

int wardctl_inject(int argc, char **argv)
{
    ward_inject_options_t opts;
    const char *file = NULL, *output = "yaml";
    memset(&opts, 0, sizeof(opts));
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i], *val = NULL;
        char name[64];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            wardctl_inject_usage(stdout);
            return 0;
        }
        if (strncmp(a, "--", 2) != 0 && !(a[0] == '-' && (a[1] == 'f' || a[1] == 'o') && !a[2]))
            return usage_error("unexpected argument '%s'", a);
        const char *eq = strchr(a, '=');
        size_t nl = eq ? (size_t)(eq - a) : strlen(a);
        if (nl >= sizeof(name)) return usage_error("unknown option '%s'", a);
        memcpy(name, a, nl);
        name[nl] = '\0';
        if (eq != NULL) {
            val = eq + 1;
        } else {
            if (i + 1 >= argc) return usage_error("%s needs a value", a);
            val = argv[++i];
        }
        if (strcmp(name, "-f") == 0 || strcmp(name, "--filename") == 0) {
            if (file != NULL) return usage_error("%s: give one file (or '-')", name);
            file = val;
        } else if (strcmp(name, "-o") == 0 || strcmp(name, "--output") == 0) {
            if (strcmp(val, "yaml") != 0 && strcmp(val, "json") != 0)
                return usage_error("-o '%s': expected yaml or json", val);
            output = val;
        } else {
            int k = ward_inject_option_find(name + 2);
            if (k < 0) return usage_error("unknown option '%s'", name);
            opts.v[k] = val;
        }
    }
    if (file == NULL) return usage_error("%s", "-f FILE (or -f - for stdin) is required");

    char err[512];
    ward_injector_t *inj = NULL;
    int rc = ward_injector_new(&opts, "--", &inj, err, sizeof(err));
    if (rc == WARD_EINVAL) return usage_error("%s", err);
    if (rc < 0) {
        fprintf(stderr, "wardctl inject: %s\n", rc == WARD_ENOMEM ? "out of memory" : err);
        return 1;
    }

    size_t len = 0;
    char *text = read_all(file, &len, err, sizeof(err));
    const char *shown = strcmp(file, "-") == 0 ? "<stdin>" : file;
    json_t *docs = NULL;
    ward_strbuf_t out = {0};
    int status = 1;
    if (text == NULL) {
        fprintf(stderr, "wardctl inject: %s: %s\n", shown, err);
        goto done;
    }
    ward_yaml_error_t yerr;
    rc = ward_yaml_load_all(text, len, &docs, &yerr);
    if (rc == WARD_EPARSE) {
        fprintf(stderr, "wardctl inject: %s: document %d, line %d, column %d: %s\n", shown,
                yerr.document, yerr.line, yerr.column, yerr.message);
        goto done;
    }
    if (rc < 0) {
        fprintf(stderr, "wardctl inject: %s: %s\n", shown, ward_strerror(rc));
        goto done;
    }
    wardctl_inject_run_t run = {.inj = inj, .file = shown};
    json_t *kept = json_array();
    if (kept == NULL) goto nomem;
    size_t i;
    json_t *doc;
    json_array_foreach(docs, i, doc)
    {
        char where[32];
        if (json_is_null(doc)) continue; /* an empty document: kubectl skips them too */
        snprintf(where, sizeof(where), "document %zu", i + 1);
        if (inject_object(&run, doc, where) < 0 || json_array_append(kept, doc) < 0) {
            json_decref(kept);
            goto nomem;
        }
    }
    json_decref(docs);
    docs = kept;
    if (run.bad > 0) {
        fprintf(stderr, "wardctl inject: %d bad %s: nothing written\n", run.bad,
                run.bad == 1 ? "document" : "documents");
        goto done;
    }
    if (strcmp(output, "json") == 0) {
        json_t *top = json_array_size(docs) == 1 ? json_incref(json_array_get(docs, 0))
                                                 : json_pack("{s:s, s:s, s:O}", "apiVersion", "v1",
                                                             "kind", "List", "items", docs);
        char *s = top ? json_dumps(top, JSON_INDENT(4)) : NULL;
        json_decref(top);
        if (s == NULL) goto nomem;
        rc = ward_strbuf_printf(&out, "%s\n", s);
        free(s);
    } else {
        rc = ward_yaml_dump_all(docs, &out);
    }
    if (rc < 0) goto nomem;
    if (out.len > 0 && fwrite(out.data, 1, out.len, stdout) != out.len) {
        fprintf(stderr, "wardctl inject: writing the output: %s\n", strerror(errno));
        goto done;
    }
    if (fflush(stdout) != 0) {
        fprintf(stderr, "wardctl inject: writing the output: %s\n", strerror(errno));
        goto done;
    }
    status = 0;
    goto done;
nomem:
    fprintf(stderr, "wardctl inject: out of memory\n");
done:
    ward_strbuf_free(&out);
    json_decref(docs);
    ward_free(text);
    ward_injector_free(inj);
    return status;
}
