/* ward/inject.h — sidecar injection, shared by `wardctl inject` and ward-agent's admission
 * webhook.
 *
 * What gets injected is deploy/sidecar/ward-sidecar.yaml itself: the file is compiled into the
 * library (lib/inject.cmake) and parsed by ward_injector_new(), which then applies the options
 * (images, agent address, trust domain, capture ports and exclusions, proxy resources). So the
 * template and every injected pod agree by construction; tests/unit/test_inject.c checks it.
 *
 * Per pod template (a Pod, or a workload's spec.template: an object with "metadata" and "spec"),
 * the mutation is, as an RFC 6902 JSON Patch:
 *   - the template's init containers (ward-init, then the ward-proxy native sidecar) inserted
 *     FIRST in spec.initContainers, with the ports of the pod's kubelet probes added to
 *     ward-init's --exclude-inbound-ports: the httpGet / tcpSocket / grpc handlers of every
 *     container's (and init container's) liveness, readiness and startup probes, a named port
 *     resolved against that container's ports[] as the kubelet does, merged with the template's
 *     (or the option's) list, ascending and without repeats. The kubelet probes in plaintext
 *     from the node; captured, a probe would meet the proxy's mTLS-only inbound and fail. A pod
 *     without such probes gets the containers exactly as the template (and options) say;
 *   - the template's volumes appended to spec.volumes;
 *   - the template's annotations (the status annotation ward.dev/status: injected and the
 *     prometheus.io/ scrape annotations, unless the pod already has prometheus.io/ ones of its
 *     own) and kubectl.kubernetes.io/default-container (the first app container, if unset).
 * The pod needs no declared port: ward-proxy's transparent listeners take each connection's
 * original destination.
 * Nothing is injected (and no patch produced) when the pod is already injected (its status
 * annotation), when its labels or annotations say ward.dev/inject: disabled (or "false"), or when
 * it uses the host's network (iptables rules there would capture the node's traffic).
 *
 * Threads: an injector is immutable after ward_injector_new() and may be shared. */
#ifndef WARD_INJECT_H
#define WARD_INJECT_H

#include <stddef.h>

#include <jansson.h>

#include "ward/strbuf.h"

/* The options, by index. Each is a string (NULL: the template's value). Names are what
 * `wardctl inject --NAME` and `ward-agent --inject-NAME` take. */
typedef enum {
    WARD_INJECT_OPT_PROXY_IMAGE,            /* "proxy-image": the ward-proxy image */
    WARD_INJECT_OPT_INIT_IMAGE,             /* "init-image": the ward-init (iptables) image */
    WARD_INJECT_OPT_PULL_POLICY,            /* "image-pull-policy": Always|IfNotPresent|Never */
    WARD_INJECT_OPT_AGENT_ADDRESS,          /* "agent-address": HOST:PORT the sidecars dial */
    WARD_INJECT_OPT_TRUST_DOMAIN,           /* "trust-domain": of the agent's id */
    WARD_INJECT_OPT_INBOUND_PORTS,          /* "inbound-ports": LIST or "all" */
    WARD_INJECT_OPT_EXCLUDE_INBOUND_PORTS,  /* "exclude-inbound-ports": LIST (+ probe ports) */
    WARD_INJECT_OPT_EXCLUDE_OUTBOUND_PORTS, /* "exclude-outbound-ports": LIST */
    WARD_INJECT_OPT_EXCLUDE_OUTBOUND_CIDRS, /* "exclude-outbound-cidrs": LIST of CIDRs */
    WARD_INJECT_OPT_PROXY_REQUESTS,         /* "proxy-requests": cpu=Q,memory=Q */
    WARD_INJECT_OPT_PROXY_LIMITS,           /* "proxy-limits": cpu=Q,memory=Q */
    WARD_INJECT_OPT_COUNT
} ward_inject_opt_t;

typedef struct {
    const char *v[WARD_INJECT_OPT_COUNT]; /* borrowed; only read by ward_injector_new() */
} ward_inject_options_t;

/* The option's name ("proxy-image"), its value placeholder ("IMAGE") and one line of help. */
const char *ward_inject_option_name(int opt);
const char *ward_inject_option_arg(int opt);
const char *ward_inject_option_help(int opt);
/* The index of the option called name, or -1. */
int ward_inject_option_find(const char *name);

typedef struct ward_injector ward_injector_t;

/* Parses the built-in template and applies the options. flag_prefix ("--", "--inject-") names
 * options in error messages. Returns 0 with *out set, WARD_EINVAL (a bad option value; err says
 * which and why), WARD_EPARSE (the template is not what the injector expects, e.g. a ward-init
 * --exclude-inbound-ports that is not a list of ports) or WARD_ENOMEM. */
int ward_injector_new(const ward_inject_options_t *opts, const char *flag_prefix,
                      ward_injector_t **out, char *err, size_t errlen);
/* The same with another template (YAML text of one Pod document). */
int ward_injector_new_from(const char *template_yaml, size_t len, const ward_inject_options_t *opts,
                           const char *flag_prefix, ward_injector_t **out, char *err,
                           size_t errlen);
void ward_injector_free(ward_injector_t *inj);

/* The built-in template's text (deploy/sidecar/ward-sidecar.yaml at build time). */
const char *ward_inject_template_text(size_t *len);

typedef enum {
    WARD_INJECT_INJECTED = 0,
    WARD_INJECT_ALREADY,      /* carries the status annotation: nothing to do */
    WARD_INJECT_DISABLED,     /* ward.dev/inject: disabled (label or annotation) */
    WARD_INJECT_HOST_NETWORK, /* spec.hostNetwork: never captured */
} ward_inject_status_t;

/* "injected", "already_injected", "disabled", "host_network". */
const char *ward_inject_status_name(int status);

/* Computes the mutation of one pod template without changing it. Returns a status >= 0; only
 * with WARD_INJECT_INJECTED does *patch get a new JSON array (RFC 6902 operations whose paths
 * start with prefix, e.g. "" for a Pod, "/spec/template" for a Deployment). Returns WARD_EINVAL
 * when this pod cannot be injected (no spec or containers, a container or volume name the
 * sidecar uses, a TCP containerPort the sidecar's containers declare) with err saying why, or
 * WARD_ENOMEM. */
int ward_inject_patch(const ward_injector_t *inj, const json_t *pod, const char *prefix,
                      json_t **patch, char *err, size_t errlen);
/* Computes the patch and applies it to pod in place. Same results. */
int ward_inject_pod(const ward_injector_t *inj, json_t *pod, char *err, size_t errlen);

/* --- JSON Pointer (RFC 6901) and JSON Patch (RFC 6902) --- */

/* Appends "/" and token escaped ('~' -> "~0", '/' -> "~1") to out. Returns 0 or WARD_ENOMEM. */
int ward_json_pointer_append(ward_strbuf_t *out, const char *token);
/* Applies patch (an array of add / remove / replace / move / copy / test operations) to *doc,
 * in order, atomically: on any failure *doc is left unchanged. The root may be replaced (*doc
 * then points to the new value; the old one is released). Returns 0, WARD_EINVAL (a malformed
 * operation, a path that does not resolve, a failed test; err says which operation) or
 * WARD_ENOMEM. */
int ward_json_patch_apply(json_t **doc, const json_t *patch, char *err, size_t errlen);

/* --- the admission webhook (admission.k8s.io/v1 AdmissionReview) --- */

typedef struct {
    char uid[128];
    char namespace_[128];
    char name[256];       /* the pod's name, or generateName + "*" */
    const char *decision; /* "injected", a ward_inject_status_name, "ignored" (not a pod
                           * CREATE) or "not_injectable" */
    char reason[256];     /* not_injectable: why */
} ward_inject_review_info_t;

/* Answers one AdmissionReview request body (JSON). Returns 0 with *resp the response review
 * (JSON; allowed: true, the request's uid; a base64 JSONPatch when the pod was injected; a
 * warning when it could not be) to send with status 200; WARD_EPARSE / WARD_EINVAL when the
 * body is not a well-formed AdmissionReview (err says why: answer 400), or WARD_ENOMEM. info
 * (may be NULL) describes the decision for the log. */
int ward_inject_review(const ward_injector_t *inj, const char *body, size_t len,
                       ward_strbuf_t *resp, ward_inject_review_info_t *info, char *err,
                       size_t errlen);

/* Standard base64 (RFC 4648, padded). Returns 0 or WARD_ENOMEM. */
int ward_base64_append(ward_strbuf_t *out, const unsigned char *data, size_t len);

#endif
