/* webhook.h — ward-agent's mutating admission webhook: the Kubernetes API server POSTs an
 * admission.k8s.io/v1 AdmissionReview to https://ADDR/inject for every Pod CREATE that the
 * MutatingWebhookConfiguration (deploy/base/webhook.yaml) selects, and gets back the sidecar as a
 * JSON Patch (lib/inject.c decides and builds it).
 *
 * Transport: TLS 1.2+ (lib/tls.c, a web PKI serving certificate from --webhook-cert/-key,
 * re-read when the files change or on ward_webhook_reload()), HTTP/1.1 parsed by llhttp in
 * strict mode, keep-alive, request bodies up to 2 MiB (32 MiB held by all connections together;
 * beyond, a request is shed with 503), 10 s to deliver a request once it has begun, 90 s idle
 * between requests, at most 256 connections. One libuv loop (the agent's). */
#ifndef WARD_CONTROL_WEBHOOK_H
#define WARD_CONTROL_WEBHOOK_H

#include <uv.h>

#include "ward/addr.h"
#include "ward/inject.h"
#include "ward/strbuf.h"

#define WARD_WEBHOOK_MAX_BODY   (2u << 20)
#define WARD_WEBHOOK_REQUEST_MS 10000
#define WARD_WEBHOOK_IDLE_MS    90000
#define WARD_WEBHOOK_MAX_CONNS  256

typedef struct ward_webhook ward_webhook_t;

typedef struct {
    ward_addr_t listen;
    const char *cert_file;           /* PEM: the serving certificate (then its chain) */
    const char *key_file;            /* PEM: its private key */
    const ward_injector_t *injector; /* borrowed: must outlive the webhook */
} ward_webhook_config_t;

/* Loads the certificate, binds and listens. Returns 0 with *out set, or a negative error with err
 * set (nothing left open). */
int ward_webhook_start(ward_webhook_t **out, uv_loop_t *loop, const ward_webhook_config_t *cfg,
                       char *err, size_t errlen);
/* Re-reads the certificate and key now; new connections use them, open ones keep theirs. A bad
 * pair is refused (the old one stays). Returns 0 or a negative error with err set. */
int ward_webhook_reload(ward_webhook_t *w, char *err, size_t errlen);
/* Appends the ward_agent_webhook_* metric families. Returns 0 or WARD_ENOMEM. */
int ward_webhook_render_metrics(const ward_webhook_t *w, ward_strbuf_t *out);
/* Stops listening and closes every connection; the webhook frees itself once its last handle
 * has closed (run the loop). */
void ward_webhook_stop(ward_webhook_t *w);

#endif
