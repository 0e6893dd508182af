/* inject.c — sidecar injection (see ward/inject.h): the template compiled into an injector, the
 * per-pod JSON Patch, an RFC 6902 applier, and the AdmissionReview answer of ward-agent's
 * webhook. The mutated object is always the patch applied, so wardctl's output and the webhook's
 * patch cannot drift apart. */
#include "ward/inject.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ward/addr.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/spiffe.h"
#include "ward/yaml_json.h"

/* From the file lib/inject.cmake generates out of deploy/sidecar/ward-sidecar.yaml. */
extern const unsigned char ward_inject_template_yaml[];
extern const size_t ward_inject_template_yaml_len;

#define WARD__STATUS_KEY      "ward.dev/status"
#define WARD__INJECT_KEY      "ward.dev/inject"
#define WARD__DEFAULT_CTR_KEY "kubectl.kubernetes.io/default-container"
#define WARD__PROM_PREFIX     "prometheus.io/"
#define WARD__EXCL_IN_FLAG    "--exclude-inbound-ports"
#define WARD__PROXY_NAME      "ward-proxy"
#define WARD__INIT_NAME       "ward-init"

static const struct {
    const char *name;
    const char *arg;
    const char *help;
} ward__opts[WARD_INJECT_OPT_COUNT] = {
    {"proxy-image", "IMAGE", "ward-proxy image (default: the template's)"},
    {"init-image", "IMAGE", "ward-init image, runs ward-iptables (default: the template's)"},
    {"image-pull-policy", "POLICY", "Always, IfNotPresent or Never (default: the template's)"},
    {"agent-address", "HOST:PORT", "ward-agent as the sidecars dial it (default: the template's)"},
    {"trust-domain", "TD", "trust domain of the agent's id spiffe://TD/ward/agent"},
    {"inbound-ports", "LIST", "inbound ports to capture: all (the template's) or a list"},
    {"exclude-inbound-ports", "LIST", "inbound ports never captured (plus kubelet probe ports)"},
    {"exclude-outbound-ports", "LIST", "outbound ports never captured"},
    {"exclude-outbound-cidrs", "LIST", "outbound destinations (CIDRs) never captured"},
    {"proxy-requests", "RES", "ward-proxy requests, e.g. cpu=20m,memory=32Mi"},
    {"proxy-limits", "RES", "ward-proxy limits, e.g. cpu=1,memory=256Mi"},
};

const char *ward_inject_option_name(int opt)
{
    return opt >= 0 && opt < WARD_INJECT_OPT_COUNT ? ward__opts[opt].name : NULL;
}

const char *ward_inject_option_arg(int opt)
{
    return opt >= 0 && opt < WARD_INJECT_OPT_COUNT ? ward__opts[opt].arg : NULL;
}

const char *ward_inject_option_help(int opt)
{
    return opt >= 0 && opt < WARD_INJECT_OPT_COUNT ? ward__opts[opt].help : NULL;
}

int ward_inject_option_find(const char *name)
{
    for (int i = 0; i < WARD_INJECT_OPT_COUNT; i++)
        if (strcmp(name, ward__opts[i].name) == 0) return i;
    return -1;
}

const char *ward_inject_template_text(size_t *len)
{
    if (len) *len = ward_inject_template_yaml_len;
    return (const char *)ward_inject_template_yaml;
}

const char *ward_inject_status_name(int status)
{
    switch (status) {
    case WARD_INJECT_INJECTED:
        return "injected";
    case WARD_INJECT_ALREADY:
        return "already_injected";
    case WARD_INJECT_DISABLED:
        return "disabled";
    case WARD_INJECT_HOST_NETWORK:
        return "host_network";
    default:
        return "unknown";
    }
}

struct ward_injector {
    json_t *annotations;     /* object: what the template puts in metadata.annotations */
    json_t *init_containers; /* array: the template's spec.initContainers, options applied */
    json_t *volumes;         /* array: the template's spec.volumes */
    char *status_value;      /* the template's ward.dev/status value */
};

/* ---- option values ------------------------------------------------------------------------- */

static int ward__bad(char *err, size_t errlen, const char *prefix, int opt, const char *v,
                     const char *why)
{
    snprintf(err, errlen, "%s%s '%s': %s", prefix, ward__opts[opt].name, v, why);
    return WARD_EINVAL;
}

/* A comma-separated list of ports 1-65535 (empty allowed). */
static int ward__valid_ports(const char *v)
{
    const char *p = v;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char buf[8];
        uint64_t port;
        if (n == 0 || n >= sizeof(buf)) return 0;
        memcpy(buf, p, n);
        buf[n] = '\0';
        if (ward_parse_u64(buf, 1, 65535, &port) < 0) return 0;
        p += n;
        if (*p == ',') {
            p++;
            if (*p == '\0') return 0;
        }
    }
    return 1;
}

/* A set of ports 1-65535 as a bitmap of WARD__PORT_BYTES bytes. */
#define WARD__PORT_BYTES (65536 / 8)

static void ward__port_put(unsigned char *set, unsigned port)
{
    set[port >> 3] |= (unsigned char)(1u << (port & 7));
}

/* Adds the ports of a comma-separated list (empty allowed) to set. 0, or WARD_EINVAL when v is
 * not such a list. */
static int ward__ports_add(unsigned char *set, const char *v)
{
    if (!ward__valid_ports(v)) return WARD_EINVAL;
    for (const char *p = v; *p;) {
        char *end;
        unsigned long port = strtoul(p, &end, 10);
        ward__port_put(set, (unsigned)port);
        p = *end == ',' ? end + 1 : end;
    }
    return 0;
}

/* The set as a comma-separated list, ascending, into out (a new string; "" for none). 0 or
 * WARD_ENOMEM. */
static int ward__ports_format(const unsigned char *set, char **out)
{
    ward_strbuf_t b = {0};
    int rc = ward_strbuf_printf(&b, "%s", "");
    for (unsigned port = 1; rc == 0 && port < 65536; port++)
        if (set[port >> 3] & (1u << (port & 7)))
            rc = ward_strbuf_printf(&b, "%s%u", b.len ? "," : "", port);
    if (rc < 0) {
        ward_strbuf_free(&b);
        return WARD_ENOMEM;
    }
    *out = b.data;
    return 0;
}

/* A comma-separated list of IPv4/IPv6 addresses with optional /prefix. */
static int ward__valid_cidrs(const char *v)
{
    const char *p = v;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char buf[64];
        unsigned char addr[16];
        if (n == 0 || n >= sizeof(buf)) return 0;
        memcpy(buf, p, n);
        buf[n] = '\0';
        char *slash = strchr(buf, '/');
        if (slash) *slash = '\0';
        int v6 = strchr(buf, ':') != NULL;
        if (inet_pton(v6 ? AF_INET6 : AF_INET, buf, addr) != 1) return 0;
        if (slash) {
            uint64_t bits;
            if (ward_parse_u64(slash + 1, 0, v6 ? 128 : 32, &bits) < 0) return 0;
        }
        p += n;
        if (*p == ',') {
            p++;
            if (*p == '\0') return 0;
        }
    }
    return 1;
}

/* A Kubernetes resource quantity: a decimal number, then a binary (Ki..Ei) or decimal (n, u, m,
 * k, M, G, T, P, E) suffix or an exponent. */
static int ward__valid_quantity(const char *q)
{
    static const char *const suffixes[] = {"",  "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u",
                                           "m", "k",  "M",  "G",  "T",  "P",  "E",  NULL};
    const char *p = q;
    int digits = 0;
    if (*p == '+' || *p == '-') p++;
    while (isdigit((unsigned char)*p))
        p++, digits++;
    if (*p == '.') {
        p++;
        while (isdigit((unsigned char)*p))
            p++, digits++;
    }
    if (digits == 0) return 0;
    for (int i = 0; suffixes[i]; i++)
        if (strcmp(p, suffixes[i]) == 0) return 1;
    if (*p == 'e' || *p == 'E') {
        p++;
        if (*p == '+' || *p == '-') p++;
        if (!isdigit((unsigned char)*p)) return 0;
        while (isdigit((unsigned char)*p))
            p++;
        return *p == '\0';
    }
    return 0;
}

/* "cpu=20m,memory=32Mi" into a new object {"cpu": "20m", "memory": "32Mi"}. */
static int ward__parse_resources(const char *v, json_t **out, const char **why)
{
    json_t *o = json_object();
    const char *p = v;
    if (o == NULL) return WARD_ENOMEM;
    *why = "expected NAME=QUANTITY[,NAME=QUANTITY] with NAME cpu, memory or ephemeral-storage";
    if (*p == '\0') goto bad;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t n = end ? (size_t)(end - p) : strlen(p);
        char buf[128];
        if (n == 0 || n >= sizeof(buf)) goto bad;
        memcpy(buf, p, n);
        buf[n] = '\0';
        char *eq = strchr(buf, '=');
        if (eq == NULL) goto bad;
        *eq = '\0';
        if (strcmp(buf, "cpu") != 0 && strcmp(buf, "memory") != 0 &&
            strcmp(buf, "ephemeral-storage") != 0)
            goto bad;
        if (!ward__valid_quantity(eq + 1)) {
            *why = "not a Kubernetes quantity (e.g. 100m, 1, 64Mi, 1Gi)";
            goto bad;
        }
        if (json_object_set_new(o, buf, json_string(eq + 1)) < 0) {
            json_decref(o);
            return WARD_ENOMEM;
        }
        p += n;
        if (*p == ',') {
            p++;
            if (*p == '\0') goto bad;
        }
    }
    *out = o;
    return 0;
bad:
    json_decref(o);
    return WARD_EINVAL;
}

/* ---- the template -------------------------------------------------------------------------- */

static json_t *ward__find_named(json_t *array, const char *name)
{
    size_t i;
    json_t *e;
    json_array_foreach(array, i, e)
    {
        const char *n = json_string_value(json_object_get(e, "name"));
        if (n != NULL && strcmp(n, name) == 0) return e;
    }
    return NULL;
}

/* Sets the value of flag in an args array: the element after "FLAG", or "FLAG=VALUE"; appends
 * "FLAG", "VALUE" when the flag is absent. */
static int ward__arg_set(json_t *args, const char *flag, const char *value)
{
    size_t i, fl = strlen(flag);
    json_t *e;
    json_array_foreach(args, i, e)
    {
        const char *s = json_string_value(e);
        if (s == NULL) continue;
        if (strcmp(s, flag) == 0 && i + 1 < json_array_size(args))
            return json_array_set_new(args, i + 1, json_string(value)) < 0 ? WARD_ENOMEM : 0;
        if (strncmp(s, flag, fl) == 0 && s[fl] == '=') {
            size_t n = fl + 1 + strlen(value) + 1;
            char *buf = ward_malloc(n);
            if (buf == NULL) return WARD_ENOMEM;
            snprintf(buf, n, "%s=%s", flag, value);
            int rc = json_array_set_new(args, i, json_string(buf)) < 0 ? WARD_ENOMEM : 0;
            ward_free(buf);
            return rc;
        }
    }
    if (json_array_append_new(args, json_string(flag)) < 0 ||
        json_array_append_new(args, json_string(value)) < 0)
        return WARD_ENOMEM;
    return 0;
}

/* The value of flag in args, or NULL. */
static const char *ward__arg_get(const json_t *args, const char *flag)
{
    size_t i, fl = strlen(flag);
    json_t *e;
    json_array_foreach(args, i, e)
    {
        const char *s = json_string_value(e);
        if (s == NULL) continue;
        if (strcmp(s, flag) == 0) return json_string_value(json_array_get(args, i + 1));
        if (strncmp(s, flag, fl) == 0 && s[fl] == '=') return s + fl + 1;
    }
    return NULL;
}

static json_t *ward__args_of(json_t *c)
{
    json_t *args = json_object_get(c, "args");
    if (json_is_array(args)) return args;
    args = json_array();
    if (args == NULL || json_object_set_new(c, "args", args) < 0) return NULL;
    return args;
}

static int ward__set_str(json_t *o, const char *key, const char *v)
{
    return json_object_set_new(o, key, json_string(v)) < 0 ? WARD_ENOMEM : 0;
}

/* "HOST:PORT" (HOST a name, an IPv4 address or a bracketed IPv6 address); *port gets PORT. */
static int ward__valid_hostport(const char *v, char *port, size_t portlen)
{
    const char *colon = strrchr(v, ':');
    uint64_t p;
    if (colon == NULL || colon == v || (size_t)strlen(colon + 1) >= portlen) return 0;
    if (ward_parse_u64(colon + 1, 1, 65535, &p) < 0) return 0;
    if (v[0] == '[') {
        if (colon[-1] != ']') return 0;
    } else {
        for (const char *c = v; c < colon; c++)
            if (!(isalnum((unsigned char)*c) || *c == '.' || *c == '-' || *c == '_')) return 0;
    }
    snprintf(port, portlen, "%s", colon + 1);
    return 1;
}

/* Applies the options to the template's containers. */
static int ward__apply_options(ward_injector_t *inj, const ward_inject_options_t *o,
                               const char *pfx, char *err, size_t errlen)
{
    json_t *proxy = ward__find_named(inj->init_containers, WARD__PROXY_NAME);
    json_t *init = ward__find_named(inj->init_containers, WARD__INIT_NAME);
    json_t *pargs = ward__args_of(proxy), *iargs = ward__args_of(init);
    const char *v;
    const char *why = NULL;
    int rc = 0;
    if (pargs == NULL || iargs == NULL) return WARD_ENOMEM;

    if ((v = o->v[WARD_INJECT_OPT_PROXY_IMAGE]) != NULL) {
        if (*v == '\0' || strpbrk(v, " \t\r\n") != NULL)
            return ward__bad(err, errlen, pfx, WARD_INJECT_OPT_PROXY_IMAGE, v, "not an image");
        if ((rc = ward__set_str(proxy, "image", v)) < 0) return rc;
    }
    if ((v = o->v[WARD_INJECT_OPT_INIT_IMAGE]) != NULL) {
        if (*v == '\0' || strpbrk(v, " \t\r\n") != NULL)
            return ward__bad(err, errlen, pfx, WARD_INJECT_OPT_INIT_IMAGE, v, "not an image");
        if ((rc = ward__set_str(init, "image", v)) < 0) return rc;
    }
    if ((v = o->v[WARD_INJECT_OPT_PULL_POLICY]) != NULL) {
        if (strcmp(v, "Always") != 0 && strcmp(v, "IfNotPresent") != 0 && strcmp(v, "Never") != 0)
            return ward__bad(err, errlen, pfx, WARD_INJECT_OPT_PULL_POLICY, v,
                             "expected Always, IfNotPresent or Never");
        size_t i;
        json_t *c;
        json_array_foreach(inj->init_containers, i, c)
        {
            if ((rc = ward__set_str(c, "imagePullPolicy", v)) < 0) return rc;
        }
    }
    if ((v = o->v[WARD_INJECT_OPT_AGENT_ADDRESS]) != NULL) {
        char port[8];
        if (!ward__valid_hostport(v, port, sizeof(port)))
            return ward__bad(err, errlen, pfx, WARD_INJECT_OPT_AGENT_ADDRESS, v,
                             "expected HOST:PORT");
        if (ward__arg_get(pargs, "--agent") == NULL) {
            snprintf(err, errlen, "the sidecar template's ward-proxy has no --agent");
            return WARD_EPARSE;
        }
        if ((rc = ward__arg_set(pargs, "--agent", v)) < 0 ||
            (rc = ward__arg_set(iargs, "--agent-port", port)) < 0)
            return rc;
    }
    if ((v = o->v[WARD_INJECT_OPT_TRUST_DOMAIN]) != NULL) {
        if (ward_spiffe_td_validate(v, strlen(v), &why) < 0)
            return ward__bad(err, errlen, pfx, WARD_INJECT_OPT_TRUST_DOMAIN, v, why);
        const char *id = ward__arg_get(pargs, "--agent-id");
        const char *path = id && strncmp(id, "spiffe://", 9) == 0 ? strchr(id + 9, '/') : NULL;
        if (path == NULL) {
            snprintf(err, errlen,
                     "the sidecar template's ward-proxy has no --agent-id "
                     "spiffe://TD/PATH");
            return WARD_EPARSE;
        }
        size_t n = 9 + strlen(v) + strlen(path) + 1;
        char *nid = ward_malloc(n);
        if (nid == NULL) return WARD_ENOMEM;
        snprintf(nid, n, "spiffe://%s%s", v, path);
        rc = ward__arg_set(pargs, "--agent-id", nid);
        ward_free(nid);
        if (rc < 0) return rc;
    }
    if ((v = o->v[WARD_INJECT_OPT_INBOUND_PORTS]) != NULL) {
        const char *val = v;
        if (strcmp(v, "all") == 0 || strcmp(v, "*") == 0)
            val = "*";
        else if (*v == '\0' || !ward__valid_ports(v))
            return ward__bad(err, errlen, pfx, WARD_INJECT_OPT_INBOUND_PORTS, v,
                             "expected 'all' or a comma-separated list of ports");
        if ((rc = ward__arg_set(iargs, "--include-inbound-ports", val)) < 0) return rc;
    }
    static const struct {
        int opt;
        const char *flag;
        int cidrs;
    } excl[] = {{WARD_INJECT_OPT_EXCLUDE_INBOUND_PORTS, "--exclude-inbound-ports", 0},
                {WARD_INJECT_OPT_EXCLUDE_OUTBOUND_PORTS, "--exclude-outbound-ports", 0},
                {WARD_INJECT_OPT_EXCLUDE_OUTBOUND_CIDRS, "--exclude-outbound-cidrs", 1}};
    for (size_t k = 0; k < sizeof(excl) / sizeof(excl[0]); k++) {
        if ((v = o->v[excl[k].opt]) == NULL) continue;
        if (!(excl[k].cidrs ? ward__valid_cidrs(v) : ward__valid_ports(v)))
            return ward__bad(err, errlen, pfx, excl[k].opt, v,
                             excl[k].cidrs ? "expected a comma-separated list of CIDRs"
                                           : "expected a comma-separated list of ports");
        if ((rc = ward__arg_set(iargs, excl[k].flag, v)) < 0) return rc;
    }
    static const struct {
        int opt;
        const char *key;
    } res[] = {{WARD_INJECT_OPT_PROXY_REQUESTS, "requests"},
               {WARD_INJECT_OPT_PROXY_LIMITS, "limits"}};
    for (size_t k = 0; k < sizeof(res) / sizeof(res[0]); k++) {
        json_t *parsed = NULL;
        if ((v = o->v[res[k].opt]) == NULL) continue;
        rc = ward__parse_resources(v, &parsed, &why);
        if (rc == WARD_EINVAL) return ward__bad(err, errlen, pfx, res[k].opt, v, why);
        if (rc < 0) return rc;
        json_t *r = json_object_get(proxy, "resources");
        if (!json_is_object(r)) {
            r = json_object();
            if (r == NULL || json_object_set_new(proxy, "resources", r) < 0) {
                json_decref(parsed);
                return WARD_ENOMEM;
            }
        }
        json_t *cur = json_object_get(r, res[k].key);
        if (json_is_object(cur))
            rc = json_object_update(cur, parsed) < 0 ? WARD_ENOMEM : 0;
        else
            rc = json_object_set(r, res[k].key, parsed) < 0 ? WARD_ENOMEM : 0;
        json_decref(parsed);
        if (rc < 0) return rc;
    }
    return 0;
}

static int ward__template_fail(char *err, size_t errlen, const char *why)
{
    snprintf(err, errlen, "sidecar template: %s", why);
    return WARD_EPARSE;
}

int ward_injector_new_from(const char *text, size_t len, const ward_inject_options_t *opts,
                           const char *flag_prefix, ward_injector_t **out, char *err, size_t errlen)
{
    ward_yaml_error_t yerr;
    json_t *docs = NULL, *pod = NULL;
    ward_injector_t *inj = NULL;
    ward_inject_options_t none;
    int rc = ward_yaml_load_all(text, len, &docs, &yerr);
    if (rc == WARD_EPARSE) {
        snprintf(err, errlen, "sidecar template: line %d: %s", yerr.line, yerr.message);
        return rc;
    }
    if (rc < 0) return rc;
    if (opts == NULL) {
        memset(&none, 0, sizeof(none));
        opts = &none;
    }
    if (flag_prefix == NULL) flag_prefix = "--";
    size_t i;
    json_t *d;
    json_array_foreach(docs, i, d)
    {
        if (json_is_null(d)) continue;
        if (pod != NULL) {
            rc = ward__template_fail(err, errlen, "more than one document");
            goto out;
        }
        pod = d;
    }
    const char *status = json_string_value(json_object_get(
        json_object_get(json_object_get(pod, "metadata"), "annotations"), WARD__STATUS_KEY));
    json_t *spec = json_object_get(pod, "spec");
    json_t *inits = json_object_get(spec, "initContainers");
    json_t *vols = json_object_get(spec, "volumes");
    if (!json_is_object(pod) || json_string_value(json_object_get(pod, "kind")) == NULL ||
        strcmp(json_string_value(json_object_get(pod, "kind")), "Pod") != 0) {
        rc = ward__template_fail(err, errlen, "not a Pod");
        goto out;
    }
    if (status == NULL) {
        rc = ward__template_fail(err, errlen, "no metadata.annotations." WARD__STATUS_KEY);
        goto out;
    }
    if (!json_is_array(inits) || ward__find_named(inits, WARD__PROXY_NAME) == NULL ||
        ward__find_named(inits, WARD__INIT_NAME) == NULL) {
        rc = ward__template_fail(
            err, errlen, "spec.initContainers lacks " WARD__INIT_NAME " or " WARD__PROXY_NAME);
        goto out;
    }
    if (vols != NULL && !json_is_array(vols)) {
        rc = ward__template_fail(err, errlen, "spec.volumes is not a list");
        goto out;
    }
    json_array_foreach(inits, i, d)
    {
        if (json_string_value(json_object_get(d, "name")) == NULL) {
            rc = ward__template_fail(err, errlen, "an init container without a name");
            goto out;
        }
    }
    inj = ward_calloc(1, sizeof(*inj));
    if (inj == NULL) {
        rc = WARD_ENOMEM;
        goto out;
    }
    inj->annotations =
        json_deep_copy(json_object_get(json_object_get(pod, "metadata"), "annotations"));
    inj->init_containers = json_deep_copy(inits);
    inj->volumes = vols ? json_deep_copy(vols) : json_array();
    inj->status_value = ward_strdup(status);
    if (inj->annotations == NULL || inj->init_containers == NULL || inj->volumes == NULL ||
        inj->status_value == NULL) {
        rc = WARD_ENOMEM;
        goto out;
    }
    if ((rc = ward__apply_options(inj, opts, flag_prefix, err, errlen)) < 0) goto out;
    /* ward-init's inbound exclusions, sorted and without repeats: each pod adds its probes' */
    json_t *iargs =
        json_object_get(ward__find_named(inj->init_containers, WARD__INIT_NAME), "args");
    const char *excl = ward__arg_get(iargs, WARD__EXCL_IN_FLAG);
    if (excl != NULL) {
        unsigned char *set = ward_calloc(1, WARD__PORT_BYTES);
        char *norm = NULL;
        if (set == NULL) {
            rc = WARD_ENOMEM;
            goto out;
        }
        if (ward__ports_add(set, excl) < 0) {
            ward_free(set);
            rc = ward__template_fail(err, errlen,
                                     WARD__INIT_NAME "'s " WARD__EXCL_IN_FLAG
                                                     " is not a comma-separated list of ports");
            goto out;
        }
        rc = ward__ports_format(set, &norm);
        ward_free(set);
        if (rc == 0) rc = ward__arg_set(iargs, WARD__EXCL_IN_FLAG, norm);
        ward_free(norm);
        if (rc < 0) goto out;
    }
    *out = inj;
    inj = NULL;
out:
    ward_injector_free(inj);
    json_decref(docs);
    return rc;
}

int ward_injector_new(const ward_inject_options_t *opts, const char *flag_prefix,
                      ward_injector_t **out, char *err, size_t errlen)
{
    return ward_injector_new_from((const char *)ward_inject_template_yaml,
                                  ward_inject_template_yaml_len, opts, flag_prefix, out, err,
                                  errlen);
}

void ward_injector_free(ward_injector_t *inj)
{
    if (inj == NULL) return;
    json_decref(inj->annotations);
    json_decref(inj->init_containers);
    json_decref(inj->volumes);
    ward_free(inj->status_value);
    ward_free(inj);
}

/* ---- one pod ------------------------------------------------------------------------------- */

/* "disabled" / "false" (any case) in labels or annotations. */
static int ward__opted_out(const json_t *meta)
{
    static const char *const where[] = {"labels", "annotations"};
    for (size_t i = 0; i < 2; i++) {
        const char *v =
            json_string_value(json_object_get(json_object_get(meta, where[i]), WARD__INJECT_KEY));
        if (v != NULL && (strcasecmp(v, "disabled") == 0 || strcasecmp(v, "false") == 0)) return 1;
    }
    return 0;
}

static int ward__fail(char *err, size_t errlen, const char *fmt, const char *a, const char *b)
{
    snprintf(err, errlen, fmt, a ? a : "", b ? b : "");
    return WARD_EINVAL;
}

/* Refuses a pod whose containers declare a TCP port the sidecar's containers declare: the app
 * and the proxy share the network namespace, so one of them could not listen on it. */
static int ward__ports_free(const ward_injector_t *inj, const json_t *spec, char *err,
                            size_t errlen)
{
    static const char *const lists[] = {"containers", "initContainers"};
    for (size_t l = 0; l < 2; l++) {
        size_t i, k, m, n;
        json_t *c, *e, *sc, *se;
        json_array_foreach(json_object_get(spec, lists[l]), i, c)
        {
            json_array_foreach(json_object_get(c, "ports"), k, e)
            {
                const char *proto = json_string_value(json_object_get(e, "protocol"));
                json_t *cp = json_object_get(e, "containerPort");
                if ((proto != NULL && strcmp(proto, "TCP") != 0) || !json_is_integer(cp)) continue;
                json_array_foreach(inj->init_containers, m, sc)
                {
                    json_array_foreach(json_object_get(sc, "ports"), n, se)
                    {
                        if (json_integer_value(json_object_get(se, "containerPort")) !=
                            json_integer_value(cp))
                            continue;
                        const char *name = json_string_value(json_object_get(c, "name"));
                        snprintf(err, errlen,
                                 "container '%s' declares port %" JSON_INTEGER_FORMAT
                                 ", a port of the sidecar (%s)",
                                 name ? name : "", json_integer_value(cp),
                                 json_string_value(json_object_get(sc, "name")));
                        return WARD_EINVAL;
                    }
                }
            }
        }
    }
    return 0;
}

/* Refuses a pod that already has a container or volume of the sidecar's names. */
static int ward__names_free(const ward_injector_t *inj, const json_t *spec, char *err,
                            size_t errlen)
{
    static const char *const lists[] = {"containers", "initContainers", "ephemeralContainers"};
    size_t i;
    json_t *c;
    json_array_foreach(inj->init_containers, i, c)
    {
        const char *n = json_string_value(json_object_get(c, "name"));
        for (size_t k = 0; k < 3; k++)
            if (ward__find_named(json_object_get(spec, lists[k]), n) != NULL)
                return ward__fail(err, errlen,
                                  "the pod already has a container named '%s' (the sidecar's "
                                  "name) but no " WARD__STATUS_KEY " annotation%s",
                                  n, NULL);
    }
    json_array_foreach(inj->volumes, i, c)
    {
        const char *n = json_string_value(json_object_get(c, "name"));
        if (n != NULL && ward__find_named(json_object_get(spec, "volumes"), n) != NULL)
            return ward__fail(err, errlen,
                              "the pod already has a volume named '%s' (a name the sidecar "
                              "uses)%s",
                              n, NULL);
    }
    return 0;
}

static int ward__op(json_t *patch, const char *prefix, const char *path, const char *last,
                    json_t *value)
{
    ward_strbuf_t p = {0};
    int rc = WARD_ENOMEM;
    if (value == NULL) return WARD_ENOMEM;
    if (ward_strbuf_printf(&p, "%s%s", prefix, path) < 0) goto out;
    if (last != NULL && ward_json_pointer_append(&p, last) < 0) goto out;
    json_t *op = json_pack("{s:s, s:s, s:O}", "op", "add", "path", p.data, "value", value);
    if (op == NULL || json_array_append_new(patch, op) < 0) goto out;
    rc = 0;
out:
    json_decref(value);
    ward_strbuf_free(&p);
    return rc;
}

/* The port a probe handler's port names, as the kubelet resolves it for container c: a number;
 * a string is the name of one of c's ports[] (its containerPort), else a number written as a
 * string. 0 when it names no port (the kubelet fails such a probe, with or without ward). */
static unsigned ward__probe_port(const json_t *c, const json_t *port)
{
    json_int_t v = 0;
    if (json_is_integer(port)) {
        v = json_integer_value(port);
    } else if (json_is_string(port)) {
        const char *name = json_string_value(port);
        uint64_t num;
        size_t i;
        json_t *e;
        json_array_foreach(json_object_get(c, "ports"), i, e)
        {
            const char *n = json_string_value(json_object_get(e, "name"));
            json_t *cp = json_object_get(e, "containerPort");
            if (n != NULL && strcmp(n, name) == 0 && json_is_integer(cp)) {
                v = json_integer_value(cp);
                break;
            }
        }
        if (v == 0 && ward_parse_u64(name, 1, 65535, &num) == 0) v = (json_int_t)num;
    }
    return v >= 1 && v <= 65535 ? (unsigned)v : 0;
}

/* Adds to set the ports of the pod's kubelet probes: the httpGet, tcpSocket and grpc handlers
 * of every container's liveness, readiness and startup probes (init containers too: a native
 * sidecar of the app may have them). Returns how many ports were added (with repeats). */
static size_t ward__probe_ports(const json_t *spec, unsigned char *set)
{
    static const char *const lists[] = {"containers", "initContainers"};
    static const char *const probes[] = {"livenessProbe", "readinessProbe", "startupProbe"};
    size_t found = 0;
    for (size_t l = 0; l < 2; l++) {
        size_t i;
        json_t *c;
        json_array_foreach(json_object_get(spec, lists[l]), i, c)
        {
            for (size_t k = 0; k < 3; k++) {
                json_t *pr = json_object_get(c, probes[k]);
                unsigned port[3];
                port[0] =
                    ward__probe_port(c, json_object_get(json_object_get(pr, "httpGet"), "port"));
                port[1] =
                    ward__probe_port(c, json_object_get(json_object_get(pr, "tcpSocket"), "port"));
                /* grpc.port is a number only (no named ports) */
                json_t *gp = json_object_get(json_object_get(pr, "grpc"), "port");
                port[2] = json_is_integer(gp) ? ward__probe_port(c, gp) : 0;
                for (size_t h = 0; h < 3; h++) {
                    if (port[h] == 0) continue;
                    ward__port_put(set, port[h]);
                    found++;
                }
            }
        }
    }
    return found;
}

/* The template's containers for this pod: the ports of its kubelet probes added to ward-init's
 * --exclude-inbound-ports (the kubelet probes in plaintext from the node; captured, they would
 * meet the proxy's mTLS-only inbound). */
static int ward__containers_for(const ward_injector_t *inj, const json_t *spec, json_t **out)
{
    unsigned char *set = ward_calloc(1, WARD__PORT_BYTES);
    json_t *ctrs = json_deep_copy(inj->init_containers);
    char *list = NULL;
    int rc = WARD_ENOMEM;
    if (set == NULL || ctrs == NULL) goto out;
    if (ward__probe_ports(spec, set) > 0) {
        json_t *iargs = ward__args_of(ward__find_named(ctrs, WARD__INIT_NAME));
        const char *cur = iargs ? ward__arg_get(iargs, WARD__EXCL_IN_FLAG) : NULL;
        if (iargs == NULL) goto out;
        /* merged with the template's (or the option's) list, which ward_injector_new_from
         * checked */
        if (cur != NULL) (void)ward__ports_add(set, cur);
        if (ward__ports_format(set, &list) < 0 ||
            ward__arg_set(iargs, WARD__EXCL_IN_FLAG, list) < 0)
            goto out;
    }
    *out = ctrs;
    ctrs = NULL;
    rc = 0;
out:
    ward_free(list);
    ward_free(set);
    json_decref(ctrs);
    return rc;
}

int ward_inject_patch(const ward_injector_t *inj, const json_t *pod, const char *prefix,
                      json_t **patch_out, char *err, size_t errlen)
{
    if (prefix == NULL) prefix = "";
    if (!json_is_object(pod)) return ward__fail(err, errlen, "the pod is not an object%s%s", 0, 0);
    json_t *meta = json_object_get(pod, "metadata");
    json_t *spec = json_object_get(pod, "spec");
    if (meta != NULL && !json_is_null(meta) && !json_is_object(meta))
        return ward__fail(err, errlen, "metadata is not an object%s%s", 0, 0);
    if (!json_is_object(meta)) meta = NULL;
    json_t *anns = json_object_get(meta, "annotations");
    if (anns != NULL && !json_is_null(anns) && !json_is_object(anns))
        return ward__fail(err, errlen, "metadata.annotations is not an object%s%s", 0, 0);
    if (json_object_get(anns, WARD__STATUS_KEY) != NULL) return WARD_INJECT_ALREADY;
    if (ward__opted_out(meta)) return WARD_INJECT_DISABLED;
    if (!json_is_object(spec)) return ward__fail(err, errlen, "the pod has no spec%s%s", 0, 0);
    if (json_is_true(json_object_get(spec, "hostNetwork"))) return WARD_INJECT_HOST_NETWORK;
    json_t *containers = json_object_get(spec, "containers");
    json_t *inits = json_object_get(spec, "initContainers");
    json_t *vols = json_object_get(spec, "volumes");
    if (!json_is_array(containers) || json_array_size(containers) == 0 ||
        !json_is_object(json_array_get(containers, 0)))
        return ward__fail(err, errlen, "the pod has no containers%s%s", 0, 0);
    if (inits != NULL && !json_is_null(inits) && !json_is_array(inits))
        return ward__fail(err, errlen, "spec.initContainers is not a list%s%s", 0, 0);
    if (vols != NULL && !json_is_null(vols) && !json_is_array(vols))
        return ward__fail(err, errlen, "spec.volumes is not a list%s%s", 0, 0);
    int rc = ward__names_free(inj, spec, err, errlen);
    if (rc < 0 || (rc = ward__ports_free(inj, spec, err, errlen)) < 0) return rc;

    /* The annotations to add, in the template's order. */
    json_t *add = json_object();
    json_t *patch = json_array();
    json_t *ctrs = NULL;
    if (add == NULL || patch == NULL || ward__containers_for(inj, spec, &ctrs) < 0) goto nomem;
    int app_prom = 0;
    const char *k;
    json_t *v;
    json_object_foreach(anns, k, v)
    {
        app_prom |= strncmp(k, WARD__PROM_PREFIX, sizeof(WARD__PROM_PREFIX) - 1) == 0;
    }
    json_object_foreach(inj->annotations, k, v)
    {
        if (app_prom && strncmp(k, WARD__PROM_PREFIX, sizeof(WARD__PROM_PREFIX) - 1) == 0) continue;
        if (json_object_set(add, k, v) < 0) goto nomem;
    }
    const char *first = json_string_value(json_object_get(json_array_get(containers, 0), "name"));
    if (first != NULL && json_object_get(anns, WARD__DEFAULT_CTR_KEY) == NULL &&
        json_object_set_new(add, WARD__DEFAULT_CTR_KEY, json_string(first)) < 0)
        goto nomem;

    if (meta == NULL) {
        rc = ward__op(patch, prefix, "/metadata", NULL, json_pack("{s:O}", "annotations", add));
    } else if (!json_is_object(anns)) {
        rc = ward__op(patch, prefix, "/metadata/annotations", NULL, json_incref(add));
    } else {
        rc = 0;
        json_object_foreach(add, k, v)
        {
            if ((rc = ward__op(patch, prefix, "/metadata/annotations", k, json_incref(v))) < 0)
                break;
        }
    }
    if (rc < 0) goto nomem;
    if (!json_is_array(inits)) {
        rc = ward__op(patch, prefix, "/spec/initContainers", NULL, json_incref(ctrs));
    } else {
        size_t i;
        json_t *c;
        char idx[24];
        json_array_foreach(ctrs, i, c)
        {
            snprintf(idx, sizeof(idx), "%zu", i);
            if ((rc = ward__op(patch, prefix, "/spec/initContainers", idx, json_incref(c))) < 0)
                break;
        }
    }
    if (rc < 0) goto nomem;
    if (json_array_size(inj->volumes) > 0) {
        if (!json_is_array(vols)) {
            rc = ward__op(patch, prefix, "/spec/volumes", NULL, json_deep_copy(inj->volumes));
        } else {
            size_t i;
            json_t *x;
            json_array_foreach(inj->volumes, i, x)
            {
                if ((rc = ward__op(patch, prefix, "/spec/volumes", "-", json_deep_copy(x))) < 0)
                    break;
            }
        }
        if (rc < 0) goto nomem;
    }
    json_decref(add);
    json_decref(ctrs);
    *patch_out = patch;
    return WARD_INJECT_INJECTED;
nomem:
    json_decref(add);
    json_decref(ctrs);
    json_decref(patch);
    return WARD_ENOMEM;
}

int ward_inject_pod(const ward_injector_t *inj, json_t *pod, char *err, size_t errlen)
{
    json_t *patch = NULL;
    int rc = ward_inject_patch(inj, pod, "", &patch, err, errlen);
    if (rc != WARD_INJECT_INJECTED) return rc;
    json_t *doc = json_incref(pod);
    int arc = ward_json_patch_apply(&doc, patch, err, errlen);
    json_decref(patch);
    if (arc < 0) {
        json_decref(doc);
        return arc;
    }
    /* Applied to a copy and swapped: move the result's members back into the caller's object. */
    if (doc != pod) {
        json_object_clear(pod);
        arc = json_object_update(pod, doc) < 0 ? WARD_ENOMEM : 0;
    }
    json_decref(doc);
    return arc < 0 ? arc : rc;
}

/* ---- JSON Pointer / JSON Patch ------------------------------------------------------------- */

int ward_json_pointer_append(ward_strbuf_t *out, const char *token)
{
    if (ward_strbuf_printf(out, "/") < 0) return WARD_ENOMEM;
    for (const char *p = token; *p;) {
        size_t n = strcspn(p, "~/");
        if (n > 0 && ward_strbuf_printf(out, "%.*s", (int)n, p) < 0) return WARD_ENOMEM;
        p += n;
        if (*p == '\0') break;
        if (ward_strbuf_printf(out, "%s", *p == '~' ? "~0" : "~1") < 0) return WARD_ENOMEM;
        p++;
    }
    return 0;
}

/* The next reference token of a pointer, unescaped, into tok (heap); *p moves past it. Returns 1
 * with a token, 0 at the end, or a negative error. */
static int ward__ptr_next(const char **p, char **tok)
{
    if (**p == '\0') return 0;
    if (**p != '/') return WARD_EINVAL;
    const char *s = ++*p;
    size_t n = strcspn(s, "/");
    char *t = ward_malloc(n + 1), *o = t;
    if (t == NULL) return WARD_ENOMEM;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '~') {
            *o++ = s[i];
        } else if (i + 1 < n && (s[i + 1] == '0' || s[i + 1] == '1')) {
            *o++ = s[i + 1] == '0' ? '~' : '/';
            i++;
        } else {
            ward_free(t);
            return WARD_EINVAL;
        }
    }
    *o = '\0';
    *p = s + n;
    *tok = t;
    return 1;
}

/* An array index token: "0" or digits without a leading zero. */
static int ward__index(const char *tok, size_t *out)
{
    size_t v = 0;
    if (*tok == '\0' || (tok[0] == '0' && tok[1] != '\0')) return 0;
    for (const char *p = tok; *p; p++) {
        if (!isdigit((unsigned char)*p) || v > ((size_t)-1 - 9) / 10) return 0;
        v = v * 10 + (size_t)(*p - '0');
    }
    *out = v;
    return 1;
}

/* Resolves every token of path but the last: *parent (borrowed) and *last (heap, NULL for the
 * root pointer ""). */
static int ward__ptr_parent(json_t *root, const char *path, json_t **parent, char **last)
{
    const char *p = path;
    json_t *cur = root;
    char *tok = NULL;
    int rc;
    *parent = NULL;
    *last = NULL;
    while ((rc = ward__ptr_next(&p, &tok)) == 1) {
        if (*p == '\0') {
            *parent = cur;
            *last = tok;
            return 0;
        }
        size_t idx;
        if (json_is_object(cur))
            cur = json_object_get(cur, tok);
        else if (json_is_array(cur) && ward__index(tok, &idx))
            cur = json_array_get(cur, idx);
        else
            cur = NULL;
        ward_free(tok);
        if (cur == NULL) return WARD_EINVAL;
    }
    return rc; /* 0: the root itself; or an error */
}

static json_t *ward__child(json_t *parent, const char *tok)
{
    size_t idx;
    if (json_is_object(parent)) return json_object_get(parent, tok);
    if (json_is_array(parent) && ward__index(tok, &idx)) return json_array_get(parent, idx);
    return NULL;
}

static json_t *ward__ptr_get(json_t *root, const char *path)
{
    json_t *parent;
    char *last;
    if (ward__ptr_parent(root, path, &parent, &last) < 0) return NULL;
    if (last == NULL) return root;
    json_t *v = ward__child(parent, last);
    ward_free(last);
    return v;
}

/* add (value: stolen reference). */
static int ward__patch_add(json_t **root, const char *path, json_t *value)
{
    json_t *parent;
    char *last;
    int rc = ward__ptr_parent(*root, path, &parent, &last);
    if (rc < 0) {
        json_decref(value);
        return rc;
    }
    if (last == NULL) {
        json_decref(*root);
        *root = value;
        return 0;
    }
    size_t idx;
    if (json_is_object(parent)) {
        rc = json_object_set_new(parent, last, value) < 0 ? WARD_ENOMEM : 0;
    } else if (json_is_array(parent) && strcmp(last, "-") == 0) {
        rc = json_array_append_new(parent, value) < 0 ? WARD_ENOMEM : 0;
    } else if (json_is_array(parent) && ward__index(last, &idx) && idx <= json_array_size(parent)) {
        rc = json_array_insert_new(parent, idx, value) < 0 ? WARD_ENOMEM : 0;
    } else {
        json_decref(value);
        rc = WARD_EINVAL;
    }
    ward_free(last);
    return rc;
}

/* remove; *removed (may be NULL) gets a reference to the value taken out. */
static int ward__patch_remove(json_t *root, const char *path, json_t **removed)
{
    json_t *parent;
    char *last;
    int rc = ward__ptr_parent(root, path, &parent, &last);
    if (rc < 0) return rc;
    if (last == NULL) return WARD_EINVAL; /* removing the root */
    json_t *v = ward__child(parent, last);
    size_t idx;
    if (v == NULL) {
        rc = WARD_EINVAL;
    } else {
        if (removed) *removed = json_incref(v);
        if (json_is_object(parent))
            json_object_del(parent, last);
        else if (ward__index(last, &idx))
            json_array_remove(parent, idx);
    }
    ward_free(last);
    return rc;
}

/* replace: the member or element keeps its place. value: stolen reference. */
static int ward__patch_replace(json_t **root, const char *path, json_t *value)
{
    json_t *parent;
    char *last;
    size_t idx = 0;
    int rc = ward__ptr_parent(*root, path, &parent, &last);
    if (rc < 0) {
        json_decref(value);
        return rc;
    }
    if (last == NULL) {
        json_decref(*root);
        *root = value;
        return 0;
    }
    if (ward__child(parent, last) == NULL) {
        json_decref(value);
        rc = WARD_EINVAL;
    } else if (json_is_object(parent)) {
        rc = json_object_set_new(parent, last, value) < 0 ? WARD_ENOMEM : 0;
    } else {
        ward__index(last, &idx);
        rc = json_array_set_new(parent, idx, value) < 0 ? WARD_ENOMEM : 0;
    }
    ward_free(last);
    return rc;
}

static int ward__patch_one(json_t **root, const json_t *op, const char **why)
{
    const char *name = json_string_value(json_object_get(op, "op"));
    const char *path = json_string_value(json_object_get(op, "path"));
    const char *from = json_string_value(json_object_get(op, "from"));
    json_t *value = json_object_get(op, "value");
    int needs_value, needs_from;
    if (!json_is_object(op) || name == NULL || path == NULL) {
        *why = "an operation needs \"op\" and \"path\" strings";
        return WARD_EINVAL;
    }
    needs_value =
        strcmp(name, "add") == 0 || strcmp(name, "replace") == 0 || strcmp(name, "test") == 0;
    needs_from = strcmp(name, "move") == 0 || strcmp(name, "copy") == 0;
    if (!needs_value && !needs_from && strcmp(name, "remove") != 0) {
        *why = "unknown op";
        return WARD_EINVAL;
    }
    if ((needs_value && value == NULL) || (needs_from && from == NULL)) {
        *why = needs_value ? "no value" : "no from";
        return WARD_EINVAL;
    }
    *why = "path does not resolve";
    if (strcmp(name, "add") == 0 || strcmp(name, "replace") == 0) {
        json_t *c = json_deep_copy(value);
        if (c == NULL) return WARD_ENOMEM;
        return name[0] == 'a' ? ward__patch_add(root, path, c) : ward__patch_replace(root, path, c);
    }
    if (strcmp(name, "remove") == 0) {
        if (*path == '\0') *why = "cannot remove the root";
        return ward__patch_remove(*root, path, NULL);
    }
    if (strcmp(name, "test") == 0) {
        json_t *cur = ward__ptr_get(*root, path);
        if (cur == NULL) return WARD_EINVAL;
        *why = "test failed";
        return json_equal(cur, value) ? 0 : WARD_EINVAL;
    }
    json_t *src = ward__ptr_get(*root, from);
    if (src == NULL) {
        *why = "from does not resolve";
        return WARD_EINVAL;
    }
    if (strcmp(name, "copy") == 0) {
        json_t *c = json_deep_copy(src);
        return c ? ward__patch_add(root, path, c) : WARD_ENOMEM;
    }
    size_t fl = strlen(from);
    if (*from == '\0' || (strncmp(path, from, fl) == 0 && path[fl] == '/')) {
        *why = "cannot move a value into itself";
        return WARD_EINVAL;
    }
    json_t *taken = NULL;
    int rc = ward__patch_remove(*root, from, &taken);
    if (rc < 0) return rc;
    return ward__patch_add(root, path, taken);
}

int ward_json_patch_apply(json_t **doc, const json_t *patch, char *err, size_t errlen)
{
    if (!json_is_array(patch)) {
        snprintf(err, errlen, "a JSON Patch is an array of operations");
        return WARD_EINVAL;
    }
    json_t *work = json_deep_copy(*doc);
    if (work == NULL) return WARD_ENOMEM;
    size_t i;
    json_t *op;
    json_array_foreach(patch, i, op)
    {
        const char *why = NULL;
        int rc = ward__patch_one(&work, op, &why);
        if (rc < 0) {
            if (rc != WARD_ENOMEM) {
                const char *path = json_string_value(json_object_get(op, "path"));
                snprintf(err, errlen, "operation %zu (%s %s): %s", i,
                         json_string_value(json_object_get(op, "op"))
                             ? json_string_value(json_object_get(op, "op"))
                             : "?",
                         path ? path : "?", why);
            }
            json_decref(work);
            return rc;
        }
    }
    json_decref(*doc);
    *doc = work;
    return 0;
}

/* ---- base64 -------------------------------------------------------------------------------- */

int ward_base64_append(ward_strbuf_t *out, const unsigned char *data, size_t len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    char chunk[1024 + 4];
    size_t n = 0;
    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t)data[i] << 16;
        if (i + 1 < len) v |= (uint32_t)data[i + 1] << 8;
        if (i + 2 < len) v |= data[i + 2];
        chunk[n++] = tab[(v >> 18) & 63];
        chunk[n++] = tab[(v >> 12) & 63];
        chunk[n++] = i + 1 < len ? tab[(v >> 6) & 63] : '=';
        chunk[n++] = i + 2 < len ? tab[v & 63] : '=';
        if (n >= 1024) {
            if (ward_strbuf_printf(out, "%.*s", (int)n, chunk) < 0) return WARD_ENOMEM;
            n = 0;
        }
    }
    if (n > 0 && ward_strbuf_printf(out, "%.*s", (int)n, chunk) < 0) return WARD_ENOMEM;
    if (out->data == NULL && ward_strbuf_printf(out, "%s", "") < 0) return WARD_ENOMEM;
    return 0;
}

/* ---- AdmissionReview ----------------------------------------------------------------------- */

static int ward__review_bad(char *err, size_t errlen, const char *why)
{
    snprintf(err, errlen, "%s", why);
    return WARD_EINVAL;
}

int ward_inject_review(const ward_injector_t *inj, const char *body, size_t len,
                       ward_strbuf_t *resp, ward_inject_review_info_t *info, char *err,
                       size_t errlen)
{
    ward_inject_review_info_t scratch;
    json_error_t jerr;
    json_t *root = NULL, *response = NULL, *patch = NULL, *out = NULL;
    char *text = NULL;
    int rc;
    if (info == NULL) info = &scratch;
    memset(info, 0, sizeof(*info));
    info->decision = "ignored";

    root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        snprintf(err, errlen, "the body is not JSON: %s (line %d, column %d)", jerr.text, jerr.line,
                 jerr.column);
        return WARD_EPARSE;
    }
    const char *api = json_string_value(json_object_get(root, "apiVersion"));
    const char *kind = json_string_value(json_object_get(root, "kind"));
    json_t *req = json_object_get(root, "request");
    if (!json_is_object(root) || kind == NULL || strcmp(kind, "AdmissionReview") != 0) {
        rc = ward__review_bad(err, errlen, "not an AdmissionReview (kind)");
        goto out;
    }
    if (api == NULL ||
        (strcmp(api, "admission.k8s.io/v1") != 0 && strcmp(api, "admission.k8s.io/v1beta1") != 0)) {
        rc = ward__review_bad(err, errlen, "apiVersion must be admission.k8s.io/v1");
        goto out;
    }
    if (!json_is_object(req)) {
        rc = ward__review_bad(err, errlen, "the review has no request");
        goto out;
    }
    const char *uid = json_string_value(json_object_get(req, "uid"));
    if (uid == NULL || *uid == '\0') {
        rc = ward__review_bad(err, errlen, "request.uid is missing");
        goto out;
    }
    snprintf(info->uid, sizeof(info->uid), "%s", uid);
    const char *ns = json_string_value(json_object_get(req, "namespace"));
    snprintf(info->namespace_, sizeof(info->namespace_), "%s", ns ? ns : "");
    const char *rkind = json_string_value(json_object_get(json_object_get(req, "kind"), "kind"));
    const char *rgroup = json_string_value(json_object_get(json_object_get(req, "kind"), "group"));
    const char *oper = json_string_value(json_object_get(req, "operation"));
    const char *sub = json_string_value(json_object_get(req, "subResource"));
    if (rkind == NULL || oper == NULL) {
        rc = ward__review_bad(err, errlen, "request.kind.kind and request.operation are required");
        goto out;
    }
    response = json_pack("{s:s, s:b}", "uid", uid, "allowed", 1);
    if (response == NULL) goto nomem;
    if (strcmp(rkind, "Pod") == 0 && (rgroup == NULL || *rgroup == '\0') &&
        strcmp(oper, "CREATE") == 0 && (sub == NULL || *sub == '\0')) {
        json_t *pod = json_object_get(req, "object");
        if (!json_is_object(pod)) {
            rc = ward__review_bad(err, errlen, "request.object is not a Pod");
            goto out;
        }
        json_t *meta = json_object_get(pod, "metadata");
        const char *name = json_string_value(json_object_get(meta, "name"));
        const char *gen = json_string_value(json_object_get(meta, "generateName"));
        if (name != NULL && *name)
            snprintf(info->name, sizeof(info->name), "%s", name);
        else if (gen != NULL)
            snprintf(info->name, sizeof(info->name), "%s*", gen);
        char why[256];
        why[0] = '\0';
        rc = ward_inject_patch(inj, pod, "", &patch, why, sizeof(why));
        if (rc == WARD_ENOMEM) goto nomem;
        if (rc == WARD_EINVAL) {
            char warning[320];
            info->decision = "not_injectable";
            snprintf(info->reason, sizeof(info->reason), "%s", why);
            snprintf(warning, sizeof(warning), "ward: sidecar not injected: %s", why);
            if (json_object_set_new(response, "warnings", json_pack("[s]", warning)) < 0)
                goto nomem;
        } else if (rc == WARD_INJECT_INJECTED) {
            ward_strbuf_t b64 = {0};
            info->decision = "injected";
            text = json_dumps(patch, JSON_COMPACT);
            if (text == NULL || ward_base64_append(&b64, (unsigned char *)text, strlen(text)) < 0 ||
                json_object_set_new(response, "patchType", json_string("JSONPatch")) < 0 ||
                json_object_set_new(response, "patch", json_string(b64.data)) < 0) {
                ward_strbuf_free(&b64);
                goto nomem;
            }
            ward_strbuf_free(&b64);
        } else {
            info->decision = ward_inject_status_name(rc);
        }
    }
    out = json_pack("{s:s, s:s, s:O}", "apiVersion", api, "kind", "AdmissionReview", "response",
                    response);
    if (out == NULL) goto nomem;
    free(text);
    text = json_dumps(out, JSON_COMPACT);
    if (text == NULL || ward_strbuf_printf(resp, "%s", text) < 0) goto nomem;
    rc = 0;
    goto out;
nomem:
    rc = WARD_ENOMEM;
out:
    free(text);
    json_decref(out);
    json_decref(patch);
    json_decref(response);
    json_decref(root);
    return rc;
}
