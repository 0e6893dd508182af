/* agent_client.c — the proxy's stream to ward-agent (see agent_client.h). */
#include "agent_client.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <netdb.h>
#include <time.h>
#include <unistd.h>

#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/log.h"
#include "ward/v1/mesh.pb-c.h"

#define WARD_AC_BACKOFF_MIN_MS 200
#define WARD_AC_BACKOFF_MAX_MS 30000
#define WARD_AC_TICK_MS        1000
#define WARD_AC_TOKEN_MAX      16384

static ProtobufCAllocator ward__pb = {ward_pb_alloc, ward_pb_free, NULL};

static void ward__ac_connect(ward_agent_client_t *ac);

static void ward__free_ders(uint8_t **der, size_t *len, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ward_free(der[i]);
    ward_free(der);
    ward_free(len);
}

/* Copies protobuf bytes fields into our own arrays. */
static int ward__copy_ders(const ProtobufCBinaryData *in, size_t n, uint8_t ***der, size_t **len)
{
    uint8_t **d = ward_calloc(n ? n : 1, sizeof(*d));
    size_t *l = ward_calloc(n ? n : 1, sizeof(*l));
    if (d == NULL || l == NULL) goto fail;
    for (size_t i = 0; i < n; i++) {
        d[i] = ward_malloc(in[i].len ? in[i].len : 1);
        if (d[i] == NULL) goto fail;
        memcpy(d[i], in[i].data, in[i].len);
        l[i] = in[i].len;
    }
    *der = d;
    *len = l;
    return 0;
fail:
    if (d)
        for (size_t i = 0; i < n; i++)
            ward_free(d[i]);
    ward_free(d);
    ward_free(l);
    return WARD_ENOMEM;
}

static int ward__ac_send(ward_agent_client_t *ac, const Ward__V1__ProxyMessage *m)
{
    if (ac->call == NULL) return WARD_EINVAL;
    size_t n = protobuf_c_message_get_packed_size(&m->base);
    uint8_t *buf = ward_malloc(n ? n : 1);
    if (buf == NULL) return WARD_ENOMEM;
    protobuf_c_message_pack(&m->base, buf);
    int rc = ward_grpc_call_send(ac->call, buf, n);
    ward_free(buf);
    return rc;
}

static void ward__ac_ack(ward_agent_client_t *ac, Ward__V1__ResourceKind kind, uint64_t version,
                         const char *error)
{
    Ward__V1__Ack ack = WARD__V1__ACK__INIT;
    ack.kind = kind;
    ack.version = version;
    ack.accepted = error == NULL;
    ack.error = (char *)(error ? error : "");
    Ward__V1__ProxyMessage m = WARD__V1__PROXY_MESSAGE__INIT;
    m.msg_case = WARD__V1__PROXY_MESSAGE__MSG_ACK;
    m.ack = &ack;
    if (error) ac->nacks++;
    ward__ac_send(ac, &m);
}

static void ward__ac_send_csr(ward_agent_client_t *ac)
{
    uint8_t *csr = NULL;
    size_t csr_len = 0;
    EVP_PKEY *key = NULL;
    if (ward_csr_new(NULL, &key, &csr, &csr_len) < 0) {
        ward_log_msg(WARD_LOG_ERROR, "csr_failed", "could not generate a key and CSR");
        return;
    }
    ward_key_free(ac->pending_key);
    ac->pending_key = key;
    Ward__V1__CsrRequest req = WARD__V1__CSR_REQUEST__INIT;
    req.request_id = ++ac->request_id;
    req.csr_der.data = csr;
    req.csr_der.len = csr_len;
    Ward__V1__ProxyMessage m = WARD__V1__PROXY_MESSAGE__INIT;
    m.msg_case = WARD__V1__PROXY_MESSAGE__MSG_CSR;
    m.csr = &req;
    ward__ac_send(ac, &m);
    ward_free(csr);
}

static void ward__ac_on_renew(uv_timer_t *t)
{
    ward_agent_client_t *ac = t->data;
    if (!ac->connected) return; /* a CSR goes out on reconnect */
    ac->renewals++;
    ward__ac_send_csr(ac);
    ward_grpc_sock_flush(&ac->sock);
}

/* Renew at half the remaining lifetime, +-10% jitter, so a fleet does not renew in lockstep. */
static void ward__ac_schedule_renew(ward_agent_client_t *ac)
{
    int64_t now = (int64_t)time(NULL);
    int64_t left = ac->svid_not_after - now;
    if (left < 2) left = 2;
    uint64_t ms = (uint64_t)left * 500;
    uint64_t jitter = ms / 10;
    if (jitter > 0) ms = ms - jitter + (uint64_t)(rand() % (int)(2 * jitter + 1));
    uv_timer_start(&ac->renew, ward__ac_on_renew, ms, 0);
}

/* Builds a snapshot from the current chain + key + roots and swaps it in. */
static int ward__ac_install(ward_agent_client_t *ac, uint8_t **chain, size_t *chain_len,
                            size_t nchain, EVP_PKEY *key, char *err, size_t errlen)
{
    ward_identity_t *id = NULL;
    int rc = ward_identity_new((const uint8_t *const *)chain, chain_len, nchain, key,
                               (const uint8_t *const *)ac->roots, ac->roots_len, ac->nroots, &id,
                               err, errlen);
    if (rc < 0) return rc;
    ward_identity_store_set(ac->store, id);
    return 0;
}

static void ward__ac_on_bundle(ward_agent_client_t *ac, const Ward__V1__Bundle *b)
{
    uint8_t **der = NULL;
    size_t *len = NULL;
    if (b->n_roots_der == 0 || ward__copy_ders(b->roots_der, b->n_roots_der, &der, &len) < 0) {
        ward__ac_ack(ac, WARD__V1__RESOURCE_KIND__RESOURCE_KIND_BUNDLE, b->version,
                     b->n_roots_der == 0 ? "empty bundle" : "out of memory");
        return;
    }
    uint8_t **old = ac->roots;
    size_t *old_len = ac->roots_len, old_n = ac->nroots;
    ac->roots = der;
    ac->roots_len = len;
    ac->nroots = b->n_roots_der;
    /* With an SVID installed, the new bundle takes effect at once (a rotation adds a root). */
    if (ac->nchain > 0) {
        char err[384];
        if (ward__ac_install(ac, ac->chain, ac->chain_len, ac->nchain, ac->key, err, sizeof(err)) <
            0) {
            ward_log_msg(WARD_LOG_ERROR, "bundle_rejected", "bundle version %" PRIu64 ": %s",
                         b->version, err);
            ac->roots = old;
            ac->roots_len = old_len;
            ac->nroots = old_n;
            ward__free_ders(der, len, b->n_roots_der);
            ward__ac_ack(ac, WARD__V1__RESOURCE_KIND__RESOURCE_KIND_BUNDLE, b->version, err);
            return;
        }
    }
    ward__free_ders(old, old_len, old_n);
    ac->bundle_version = b->version;
    ac->last_update = (int64_t)time(NULL);
    ward_log_msg(WARD_LOG_INFO, "bundle_installed", "trust bundle version %" PRIu64 " (%zu roots)",
                 b->version, b->n_roots_der);
    ward__ac_ack(ac, WARD__V1__RESOURCE_KIND__RESOURCE_KIND_BUNDLE, b->version, NULL);
}

static void ward__ac_on_svid(ward_agent_client_t *ac, const Ward__V1__Svid *sv)
{
    char err[384];
    uint8_t **der = NULL;
    size_t *len = NULL;
    if (sv->request_id != ac->request_id || ac->pending_key == NULL) {
        ward__ac_ack(ac, WARD__V1__RESOURCE_KIND__RESOURCE_KIND_SVID, sv->version,
                     "SVID answers no outstanding CSR");
        return;
    }
    if (sv->n_cert_chain_der == 0 ||
        ward__copy_ders(sv->cert_chain_der, sv->n_cert_chain_der, &der, &len) < 0) {
        ward__ac_ack(ac, WARD__V1__RESOURCE_KIND__RESOURCE_KIND_SVID, sv->version,
                     "empty certificate chain");
        return;
    }
    if (ac->nroots == 0 || ward__ac_install(ac, der, len, sv->n_cert_chain_der, ac->pending_key,
                                            err, sizeof(err)) < 0) {
        if (ac->nroots == 0) snprintf(err, sizeof(err), "no trust bundle received yet");
        ward_log_msg(WARD_LOG_ERROR, "svid_rejected", "SVID version %" PRIu64 ": %s", sv->version,
                     err);
        ward__free_ders(der, len, sv->n_cert_chain_der);
        ward__ac_ack(ac, WARD__V1__RESOURCE_KIND__RESOURCE_KIND_SVID, sv->version, err);
        return;
    }
    ward__free_ders(ac->chain, ac->chain_len, ac->nchain);
    ac->chain = der;
    ac->chain_len = len;
    ac->nchain = sv->n_cert_chain_der;
    ward_key_free(ac->key);
    ac->key = ac->pending_key;
    ac->pending_key = NULL;
    ac->svid_version = sv->version;
    ac->svid_not_after = sv->not_after;
    ac->last_update = (int64_t)time(NULL);
    ac->svids_installed++;
    ac->backoff_ms = 0; /* a healthy agent: start over if it goes away */
    ward_logline_t l;
    if (ward_log_begin(&l, WARD_LOG_INFO, "svid_installed")) {
        ward_log_str(&l, "spiffe_id", sv->spiffe_id);
        ward_log_u64(&l, "version", sv->version);
        ward_log_i64(&l, "not_after", sv->not_after);
        ward_log_str(&l, "msg", "new connections use the new identity; open ones keep theirs");
        ward_log_end(&l);
    }
    ward__ac_ack(ac, WARD__V1__RESOURCE_KIND__RESOURCE_KIND_SVID, sv->version, NULL);
    ward__ac_schedule_renew(ac);
}

/* Compiles the snapshot; installs it (ACK) or keeps the current one (NACK with the reason). */
static void ward__ac_on_policy(ward_agent_client_t *ac, const uint8_t *msg, size_t len,
                               const Ward__V1__PolicySnapshot *p)
{
    const char *why = NULL;
    if (ward_policy_store_install(ac->policies, msg, len, &why) < 0) {
        ward_log_msg(WARD_LOG_ERROR, "policy_refused",
                     "policy snapshot version %" PRIu64 " refused: %s; keeping version %" PRIu64,
                     p->version, why, ac->policy_version);
        ward__ac_ack(ac, WARD__V1__RESOURCE_KIND__RESOURCE_KIND_POLICY, p->version, why);
        return;
    }
    ac->policy_version = p->version;
    ac->last_update = (int64_t)time(NULL);
    ward_log_msg(WARD_LOG_INFO, "policy_received",
                 "policy snapshot version %" PRIu64 " (%zu policies) in force", p->version,
                 p->n_policies);
    ward__ac_ack(ac, WARD__V1__RESOURCE_KIND__RESOURCE_KIND_POLICY, p->version, NULL);
}

/* Installs the agent's peer directory (which pod addresses have a sidecar, with which id), or
 * NACKs it. */
static void ward__ac_on_peers(ward_agent_client_t *ac, const Ward__V1__PeerDirectory *d)
{
    char err[256];
    const char **addrs = ward_calloc(d->n_peers ? d->n_peers : 1, sizeof(*addrs));
    const char **ids = ward_calloc(d->n_peers ? d->n_peers : 1, sizeof(*ids));
    int rc = WARD_ENOMEM;
    snprintf(err, sizeof(err), "out of memory");
    if (addrs != NULL && ids != NULL) {
        for (size_t i = 0; i < d->n_peers; i++) {
            addrs[i] = d->peers[i]->address;
            ids[i] = d->peers[i]->spiffe_id;
        }
        rc = ward_peers_set_agent(ac->peers, addrs, ids, d->n_peers, d->version, err, sizeof(err));
    }
    ward_free(addrs);
    ward_free(ids);
    if (rc < 0) {
        ward_log_msg(WARD_LOG_ERROR, "peers_refused", "peer directory version %" PRIu64 ": %s",
                     d->version, err);
        ward__ac_ack(ac, WARD__V1__RESOURCE_KIND__RESOURCE_KIND_PEERS, d->version, err);
        return;
    }
    ac->peers_version = d->version;
    ac->last_update = (int64_t)time(NULL);
    ward_log_msg(WARD_LOG_DEBUG, "peers_received", "peer directory version %" PRIu64 ": %zu peers",
                 d->version, d->n_peers);
    ward__ac_ack(ac, WARD__V1__RESOURCE_KIND__RESOURCE_KIND_PEERS, d->version, NULL);
}

/* --- gRPC callbacks ------------------------------------------------------------------------- */

static void ward__ac_on_message(ward_grpc_call_t *call, const uint8_t *msg, size_t len, void *d)
{
    ward_agent_client_t *ac = d;
    Ward__V1__AgentMessage *m = ward__v1__agent_message__unpack(&ward__pb, len, msg);
    if (m == NULL) {
        ward_log_msg(WARD_LOG_WARN, "agent_message_invalid", "malformed AgentMessage ignored");
        return;
    }
    switch (m->msg_case) {
    case WARD__V1__AGENT_MESSAGE__MSG_BUNDLE:
        ward__ac_on_bundle(ac, m->bundle);
        break;
    case WARD__V1__AGENT_MESSAGE__MSG_SVID:
        ward__ac_on_svid(ac, m->svid);
        break;
    case WARD__V1__AGENT_MESSAGE__MSG_POLICY: {
        /* Re-pack the snapshot alone for the engine. */
        size_t n = protobuf_c_message_get_packed_size(&m->policy->base);
        uint8_t *buf = ward_malloc(n ? n : 1);
        if (buf) {
            protobuf_c_message_pack(&m->policy->base, buf);
            /* Keep only what decodes again (libprotobuf-c accepts some malformed fields that it
             * then re-encodes into something it refuses). */
            Ward__V1__PolicySnapshot *check = ward__v1__policy_snapshot__unpack(&ward__pb, n, buf);
            if (check == NULL)
                ward__ac_ack(ac, WARD__V1__RESOURCE_KIND__RESOURCE_KIND_POLICY, m->policy->version,
                             "policy snapshot does not decode after re-encoding");
            else
                ward__ac_on_policy(ac, buf, n, m->policy);
            if (check) ward__v1__policy_snapshot__free_unpacked(check, &ward__pb);
            ward_free(buf);
        }
        break;
    }
    case WARD__V1__AGENT_MESSAGE__MSG_PEERS:
        ward__ac_on_peers(ac, m->peers);
        break;
    case WARD__V1__AGENT_MESSAGE__MSG_STATUS:
        ward_log_msg(WARD_LOG_WARN, "agent_status", "agent says %d: %s", m->status->code,
                     m->status->message ? m->status->message : "");
        break;
    default:
        break;
    }
    ward__v1__agent_message__free_unpacked(m, &ward__pb);
}

static void ward__ac_on_reconnect(uv_timer_t *t)
{
    ward__ac_connect(t->data);
}

static void ward__ac_schedule_reconnect(ward_agent_client_t *ac)
{
    if (ac->stopping) return;
    ac->backoff_ms = ac->backoff_ms ? ac->backoff_ms * 2 : WARD_AC_BACKOFF_MIN_MS;
    if (ac->backoff_ms > WARD_AC_BACKOFF_MAX_MS) ac->backoff_ms = WARD_AC_BACKOFF_MAX_MS;
    /* Full jitter in [backoff/2, backoff]. */
    uint64_t ms = ac->backoff_ms / 2 + (uint64_t)rand() % (ac->backoff_ms / 2 + 1);
    uv_timer_start(&ac->reconnect, ward__ac_on_reconnect, ms, 0);
}

static void ward__ac_on_close(ward_grpc_call_t *call, int status, const char *message, void *d)
{
    ward_agent_client_t *ac = d;
    ac->call = NULL;
    ward_logline_t l;
    if (ward_log_begin(&l, status == WARD_GRPC_OK ? WARD_LOG_INFO : WARD_LOG_WARN,
                       "agent_stream_closed")) {
        ward_log_u64(&l, "grpc_status", (uint64_t)status);
        ward_log_str(&l, "error", message);
        ward_log_str(&l, "msg",
                     ac->nchain ? "keeping the last good identity until it expires"
                                : "no identity yet: not ready, no traffic accepted");
        ward_log_end(&l);
    }
    if (ac->sock_open) ward_grpc_sock_close(&ac->sock, "stream closed");
}

static const ward_grpc_callbacks_t ward__ac_callbacks = {
    .on_message = ward__ac_on_message,
    .on_close = ward__ac_on_close,
};

/* --- connection ----------------------------------------------------------------------------- */

static char *ward__read_token(const char *file)
{
    FILE *f = fopen(file, "r");
    if (f == NULL) return NULL;
    char *buf = ward_malloc(WARD_AC_TOKEN_MAX + 1);
    size_t n = buf ? fread(buf, 1, WARD_AC_TOKEN_MAX, f) : 0;
    fclose(f);
    if (buf == NULL) return NULL;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        n--;
    buf[n] = '\0';
    return buf;
}

static int ward__ac_on_ready(ward_grpc_sock_t *s)
{
    ward_agent_client_t *ac = s->data;
    const char *authority = ac->cfg->agent_is_unix ? "localhost" : "ward-agent";
    int rc = ward_grpc_call_start(s->grpc, "/ward.v1.Mesh/Connect", authority, NULL, 0, 0,
                                  uv_now(ac->loop), ac, &ac->call);
    if (rc < 0) return rc;
    ac->connected = 1;
    ac->connects++;
    Ward__V1__Hello h = WARD__V1__HELLO__INIT;
    char *token = ac->cfg->agent_token_file ? ward__read_token(ac->cfg->agent_token_file) : NULL;
    if (ac->cfg->agent_token_file && token == NULL)
        ward_log_msg(WARD_LOG_WARN, "token_unreadable", "cannot read %s: %s",
                     ac->cfg->agent_token_file, strerror(errno));
    h.token = token ? token : (char *)"";
    h.node = getenv("WARD_NODE_NAME") ? getenv("WARD_NODE_NAME") : (char *)"";
    h.pod = getenv("WARD_POD_NAME") ? getenv("WARD_POD_NAME") : (char *)"";
    h.namespace_ = getenv("WARD_POD_NAMESPACE") ? getenv("WARD_POD_NAMESPACE") : (char *)"";
    h.proxy_version = (char *)WARD_VERSION;
    h.pod_ip = getenv("WARD_POD_IP") ? getenv("WARD_POD_IP") : (char *)"";
    h.peers_version = ac->peers_version;
    h.svid_version = ac->svid_version;
    h.bundle_version = ac->bundle_version;
    h.policy_version = ac->policy_version;
    Ward__V1__ProxyMessage m = WARD__V1__PROXY_MESSAGE__INIT;
    m.msg_case = WARD__V1__PROXY_MESSAGE__MSG_HELLO;
    m.hello = &h;
    rc = ward__ac_send(ac, &m);
    if (token) {
        memset(token, 0, strlen(token));
        ward_free(token);
    }
    if (rc < 0) return rc;
    ward_log_msg(WARD_LOG_INFO, "agent_connected", "stream to %s open", ac->cfg->agent);
    /* Always ask for a fresh SVID on a new stream: cheap, and the agent may have rotated. */
    ward__ac_send_csr(ac);
    return 0;
}

static void ward__ac_on_closed(ward_grpc_sock_t *s, const char *reason)
{
    ward_agent_client_t *ac = s->data;
    ac->sock_open = 0;
    ac->call = NULL;
    if (ac->connected) ac->disconnects++;
    ac->connected = 0;
    if (!ac->stopping)
        ward_log_msg(WARD_LOG_WARN, "agent_disconnected", "%s: %s; reconnecting with backoff",
                     ac->cfg->agent, reason ? reason : "closed");
    ward__ac_schedule_reconnect(ac);
}

/* Opens the TCP connection to addr; the TLS handshake follows in grpc_sock. */
static int ward__ac_dial(ward_agent_client_t *ac, const struct sockaddr *addr, socklen_t len)
{
    int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0 || (connect(fd, addr, len) != 0 && errno != EINPROGRESS)) {
        ward_log_msg(WARD_LOG_WARN, "agent_unreachable", "%s: %s", ac->cfg->agent, strerror(errno));
        if (fd >= 0) close(fd);
        return -1;
    }
    return fd;
}

static void ward__ac_start(ward_agent_client_t *ac, int fd);

static void ward__ac_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    ward_agent_client_t *ac = req->data;
    ac->resolving = 0;
    int fd = -1;
    if (status < 0 || res == NULL) {
        ward_log_msg(WARD_LOG_WARN, "agent_unresolved", "%s: %s", ac->cfg->agent,
                     uv_strerror(status));
    } else if (!ac->stopping) {
        fd = ward__ac_dial(ac, res->ai_addr, res->ai_addrlen);
    }
    uv_freeaddrinfo(res);
    if (ac->stopping) return;
    if (fd < 0)
        ward__ac_schedule_reconnect(ac);
    else
        ward__ac_start(ac, fd);
}

static void ward__ac_connect(ward_agent_client_t *ac)
{
    const ward_config_t *cfg = ac->cfg;
    int fd;
    if (ac->stopping || ac->sock_open || ac->resolving) return;
    if (cfg->agent_is_unix) {
        struct sockaddr_un sun;
        memset(&sun, 0, sizeof(sun));
        sun.sun_family = AF_UNIX;
        snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", cfg->agent_path);
        fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
            ward_log_msg(WARD_LOG_WARN, "agent_unreachable", "%s: %s", cfg->agent, strerror(errno));
            if (fd >= 0) close(fd);
            ward__ac_schedule_reconnect(ac);
            return;
        }
    } else if (cfg->agent_host != NULL) {
        /* A name (a Kubernetes Service): resolved again at every connect, asynchronously. */
        struct addrinfo hints;
        memset(&hints, 0, sizeof(hints));
        hints.ai_socktype = SOCK_STREAM;
        ac->resolve.data = ac;
        if (uv_getaddrinfo(ac->loop, &ac->resolve, ward__ac_resolved, cfg->agent_host,
                           cfg->agent_port, &hints) < 0) {
            ward__ac_schedule_reconnect(ac);
            return;
        }
        ac->resolving = 1;
        return;
    } else {
        fd = ward__ac_dial(ac, (const struct sockaddr *)&cfg->agent_addr.ss, cfg->agent_addr.len);
        if (fd < 0) {
            ward__ac_schedule_reconnect(ac);
            return;
        }
    }
    ward__ac_start(ac, fd);
}

/* Runs the gRPC stream on a connected (or connecting) fd. */
static void ward__ac_start(ward_agent_client_t *ac, int fd)
{
    const ward_config_t *cfg = ac->cfg;
    SSL *ssl = NULL;
    memset(&ac->sock, 0, sizeof(ac->sock));
    ac->sock.data = ac;
    ac->sock.pool = &ac->pool;
    ac->sock.on_ready = ward__ac_on_ready;
    ac->sock.on_closed = ward__ac_on_closed;
    ward_grpc_conn_t *g = ward_grpc_conn_new(0, &ward__ac_callbacks, NULL, ac);
    if (g == NULL) goto fail;
    if (!cfg->agent_is_unix) {
        ac->sock.io.fd = fd;
        ac->sock.io.pool = &ac->pool;
        ac->sock.peer.alpn = "h2";
        ac->sock.peer.expected_id = cfg->agent_id;
        ssl = ward_tls_new(ac->bootstrap, 0, &ac->sock.io, &ac->sock.peer);
        if (ssl == NULL) goto fail;
    }
    ac->sock_open = 1;
    if (ward_grpc_sock_start(&ac->sock, ac->loop, fd, ssl, g) < 0) {
        ac->sock_open = 0;
        goto fail;
    }
    return;
fail:
    if (ssl) ward_tls_free(ssl);
    ward_grpc_conn_free(g);
    close(fd);
    ward__ac_schedule_reconnect(ac);
}

static void ward__ac_on_tick(uv_timer_t *t)
{
    ward_agent_client_t *ac = t->data;
    if (ac->sock_open && ac->sock.grpc) ward_grpc_sock_tick(&ac->sock, uv_now(ac->loop));
}

int ward_agent_client_start(ward_agent_client_t *ac, uv_loop_t *loop, const ward_config_t *cfg,
                            ward_identity_store_t *store, ward_policy_store_t *policies,
                            ward_peers_t *peers, char *err, size_t errlen)
{
    memset(ac, 0, sizeof(*ac));
    ac->loop = loop;
    ac->cfg = cfg;
    ac->store = store;
    ac->policies = policies;
    ac->peers = peers;
    ward_pool_init(&ac->pool, 2);
    srand((unsigned)(time(NULL) ^ getpid()));
    if (!cfg->agent_is_unix) {
        uint8_t **der = NULL;
        size_t *len = NULL;
        int n = ward_pem_read_certs(cfg->agent_bundle, &der, &len);
        if (n < 0) {
            snprintf(err, errlen, "--agent-bundle %s: no readable PEM certificate",
                     cfg->agent_bundle);
            return WARD_EBUNDLE;
        }
        /* The agent's trust domain is the one its expected id names. */
        char td[256];
        const char *p = cfg->agent_id + 9, *slash = strchr(p, '/');
        size_t tl = slash ? (size_t)(slash - p) : strlen(p);
        snprintf(td, sizeof(td), "%.*s", (int)tl, p);
        int rc = ward_identity_trust_only((const uint8_t *const *)der, len, (size_t)n, td,
                                          &ac->bootstrap, err, errlen);
        for (int i = 0; i < n; i++)
            ward_pem_free(der[i]);
        ward_free(der);
        ward_free(len);
        if (rc < 0) return rc;
    }
    uv_timer_init(loop, &ac->reconnect);
    uv_timer_init(loop, &ac->renew);
    uv_timer_init(loop, &ac->tick);
    ac->reconnect.data = ac->renew.data = ac->tick.data = ac;
    uv_timer_start(&ac->tick, ward__ac_on_tick, WARD_AC_TICK_MS, WARD_AC_TICK_MS);
    ward__ac_connect(ac);
    return 0;
}

void ward_agent_client_stop(ward_agent_client_t *ac)
{
    ac->stopping = 1;
    if (ac->resolving) uv_cancel((uv_req_t *)&ac->resolve);
    uv_close((uv_handle_t *)&ac->reconnect, NULL);
    uv_close((uv_handle_t *)&ac->renew, NULL);
    uv_close((uv_handle_t *)&ac->tick, NULL);
    if (ac->sock_open) ward_grpc_sock_close(&ac->sock, "proxy stopping");
    ward_key_free(ac->pending_key);
    ward_key_free(ac->key);
    ac->pending_key = ac->key = NULL;
    ward__free_ders(ac->chain, ac->chain_len, ac->nchain);
    ward__free_ders(ac->roots, ac->roots_len, ac->nroots);
    ac->chain = ac->roots = NULL;
    ac->nchain = ac->nroots = 0;
    ward_identity_unref(ac->bootstrap);
    ac->bootstrap = NULL;
}

int ward_agent_client_metrics(const ward_agent_client_t *ac, ward_strbuf_t *o)
{
    int64_t now = (int64_t)time(NULL);
    return ward_strbuf_printf(
        o,
        "# HELP ward_agent_connected 1 while the stream to ward-agent is up.\n"
        "# TYPE ward_agent_connected gauge\n"
        "ward_agent_connected %d\n"
        "# HELP ward_agent_connects_total Streams opened to ward-agent.\n"
        "# TYPE ward_agent_connects_total counter\n"
        "ward_agent_connects_total %" PRIu64 "\n"
        "# HELP ward_agent_disconnects_total Streams to ward-agent lost.\n"
        "# TYPE ward_agent_disconnects_total counter\n"
        "ward_agent_disconnects_total %" PRIu64 "\n"
        "# HELP ward_agent_last_update_timestamp_seconds When the agent last sent a resource "
        "this proxy accepted.\n"
        "# TYPE ward_agent_last_update_timestamp_seconds gauge\n"
        "ward_agent_last_update_timestamp_seconds %" PRId64 "\n"
        "# HELP ward_agent_staleness_seconds Seconds since the last accepted resource.\n"
        "# TYPE ward_agent_staleness_seconds gauge\n"
        "ward_agent_staleness_seconds %" PRId64 "\n"
        "# HELP ward_svid_renewals_total SVID renewals requested.\n"
        "# TYPE ward_svid_renewals_total counter\n"
        "ward_svid_renewals_total %" PRIu64 "\n"
        "# HELP ward_svid_installed_total SVIDs installed from the agent.\n"
        "# TYPE ward_svid_installed_total counter\n"
        "ward_svid_installed_total %" PRIu64 "\n"
        "# HELP ward_nacks_sent_total Resources from the agent this proxy refused (NACKed).\n"
        "# TYPE ward_nacks_sent_total counter\n"
        "ward_nacks_sent_total %" PRIu64 "\n"
        "# HELP ward_snapshot_version Version of each resource in use.\n"
        "# TYPE ward_snapshot_version gauge\n"
        "ward_snapshot_version{kind=\"svid\"} %" PRIu64 "\n"
        "ward_snapshot_version{kind=\"bundle\"} %" PRIu64 "\n"
        "ward_snapshot_version{kind=\"policy\"} %" PRIu64 "\n"
        "ward_snapshot_version{kind=\"peers\"} %" PRIu64 "\n",
        ac->connected, ac->connects, ac->disconnects, ac->last_update,
        ac->last_update ? now - ac->last_update : (int64_t)-1, ac->renewals, ac->svids_installed,
        ac->nacks, ac->svid_version, ac->bundle_version, ac->policy_version, ac->peers_version);
}
