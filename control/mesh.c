/* mesh.c — ward-agent's gRPC handlers: ward.v1.Mesh/Connect (the proxy stream) and the SPIFFE
 * Workload API (X.509 profile). One session per stream; all on the agent's loop thread.
 *
 * Mesh/Connect: the proxy sends Hello first; the agent attests it (token -> JWKS, else the Unix
 * peer credentials -> --workloads), then sends the trust bundle and the policy snapshot selecting
 * its identity, and answers every CSR with an SVID for the attested identity (never for another).
 * Every versioned resource is ACKed or NACKed by the proxy. Ordering on the one stream guarantees a
 * proxy has a bundle before any SVID that needs it. */
#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "agent.h"
#include "spiffe/workload.pb-c.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/v1/mesh.pb-c.h"

#define WARD_WL_HEADER "workload.spiffe.io"

static ProtobufCAllocator ward__pb = {ward_pb_alloc, ward_pb_free, NULL};

static void ward__session_log(ward_session_t *s, ward_log_level_t lvl, const char *event,
                              const char *msg)
{
    ward_logline_t l;
    if (!ward_log_begin(&l, lvl, event)) return;
    ward_log_u64(&l, "conn", s->conn->id);
    ward_log_str(&l, "transport", s->conn->is_unix ? "unix" : "tls");
    if (s->conn->is_unix) {
        ward_log_u64(&l, "uid", s->conn->cred.uid);
        ward_log_u64(&l, "pid", (uint64_t)s->conn->cred.pid);
    }
    if (s->identity) ward_log_str(&l, "identity", s->identity);
    if (msg) ward_log_str(&l, "msg", msg);
    ward_log_end(&l);
}

/* Packs and queues one message on the session's call. */
static int ward__send(ward_session_t *s, const ProtobufCMessage *m)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *buf = ward_malloc(n ? n : 1);
    if (buf == NULL) return WARD_ENOMEM;
    protobuf_c_message_pack(m, buf);
    int rc = ward_grpc_call_send(s->call, buf, n);
    ward_free(buf);
    return rc;
}

static void ward__finish(ward_session_t *s, int status, const char *msg)
{
    ward__session_log(s, status == WARD_GRPC_OK ? WARD_LOG_INFO : WARD_LOG_WARN, "stream_refused",
                      msg);
    ward_grpc_call_finish(s->call, status, msg);
    s->active = 0;
}

/* --- bundle / policy / svid pushes ---------------------------------------------------------- */

uint64_t ward_agent_bundle_version(ward_agent_t *a)
{
    uint64_t gen = ward_ca_bundle_generation(a->ca);
    if (a->bundle_version == 0 || gen != a->bundle_gen_seen) {
        a->bundle_gen_seen = gen;
        a->bundle_version++;
    }
    return a->bundle_version;
}

static int ward__send_bundle(ward_session_t *s)
{
    ward_agent_t *a = s->conn->agent;
    const uint8_t *const *der;
    const size_t *len;
    size_t n = ward_ca_bundle(a->ca, &der, &len);
    ProtobufCBinaryData roots[8];
    if (n > 8) n = 8;
    for (size_t i = 0; i < n; i++) {
        roots[i].data = (uint8_t *)der[i];
        roots[i].len = len[i];
    }
    Ward__V1__Bundle b = WARD__V1__BUNDLE__INIT;
    b.version = ward_agent_bundle_version(a);
    b.trust_domain = (char *)ward_ca_trust_domain(a->ca);
    b.n_roots_der = n;
    b.roots_der = roots;
    Ward__V1__AgentMessage m = WARD__V1__AGENT_MESSAGE__INIT;
    m.msg_case = WARD__V1__AGENT_MESSAGE__MSG_BUNDLE;
    m.bundle = &b;
    int rc = ward__send(s, &m.base);
    if (rc == 0) s->bundle_sent = b.version;
    return rc;
}

static int ward__send_policy(ward_session_t *s, int force)
{
    ward_agent_t *a = s->conn->agent;
    uint64_t h = ward_policy_set_hash(&a->policies, s->identity);
    if (!force && s->policy_sent != 0 && h == s->policy_hash) return 0;
    uint8_t *packed = NULL;
    size_t plen = 0;
    uint64_t version = ++a->policy_version;
    int rc = ward_policy_snapshot_for(&a->policies, s->identity, version, &packed, &plen);
    if (rc < 0) return rc;
    Ward__V1__PolicySnapshot *snap = ward__v1__policy_snapshot__unpack(&ward__pb, plen, packed);
    ward_free(packed);
    if (snap == NULL) return WARD_EPARSE;
    Ward__V1__AgentMessage m = WARD__V1__AGENT_MESSAGE__INIT;
    m.msg_case = WARD__V1__AGENT_MESSAGE__MSG_POLICY;
    m.policy = snap;
    rc = ward__send(s, &m.base);
    ward__v1__policy_snapshot__free_unpacked(snap, &ward__pb);
    if (rc == 0) {
        s->policy_hash = h;
        s->policy_sent = version;
        a->stats.policy_pushes++;
    }
    return rc;
}

static void ward__handle_csr(ward_session_t *s, const Ward__V1__CsrRequest *req)
{
    ward_agent_t *a = s->conn->agent;
    ward_der_chain_t chain = {0};
    char err[256];
    int rc = ward_ca_sign_csr(a->ca, req->csr_der.data, req->csr_der.len, s->identity,
                              (uint32_t)a->cfg.svid_ttl_s, &chain, err, sizeof(err));
    if (rc < 0) {
        a->stats.csr_refused++;
        ward__session_log(s, WARD_LOG_WARN, "csr_refused", err);
        Ward__V1__Status st = WARD__V1__STATUS__INIT;
        st.code = WARD_GRPC_INVALID_ARGUMENT;
        st.message = err;
        Ward__V1__AgentMessage m = WARD__V1__AGENT_MESSAGE__INIT;
        m.msg_case = WARD__V1__AGENT_MESSAGE__MSG_STATUS;
        m.status = &st;
        ward__send(s, &m.base);
        return;
    }
    /* A bundle the proxy lacks goes first (ordering on the stream). */
    if (s->bundle_sent != ward_agent_bundle_version(a)) ward__send_bundle(s);
    ProtobufCBinaryData certs[8];
    size_t n = chain.n > 8 ? 8 : chain.n;
    for (size_t i = 0; i < n; i++) {
        certs[i].data = chain.der[i];
        certs[i].len = chain.len[i];
    }
    Ward__V1__Svid sv = WARD__V1__SVID__INIT;
    sv.version = ++a->svid_version;
    sv.request_id = req->request_id;
    sv.spiffe_id = s->identity;
    sv.n_cert_chain_der = n;
    sv.cert_chain_der = certs;
    sv.not_after = (int64_t)time(NULL) + (int64_t)a->cfg.svid_ttl_s;
    Ward__V1__AgentMessage m = WARD__V1__AGENT_MESSAGE__INIT;
    m.msg_case = WARD__V1__AGENT_MESSAGE__MSG_SVID;
    m.svid = &sv;
    if (ward__send(s, &m.base) == 0) {
        s->svid_sent = sv.version;
        a->stats.svids_signed++;
        ward_logline_t l;
        if (ward_log_begin(&l, WARD_LOG_INFO, "svid_issued")) {
            ward_log_u64(&l, "conn", s->conn->id);
            ward_log_str(&l, "identity", s->identity);
            ward_log_u64(&l, "version", sv.version);
            ward_log_u64(&l, "ttl_s", a->cfg.svid_ttl_s);
            ward_log_end(&l);
        }
    }
    ward_der_chain_free(&chain);
}

/* The peer directory: every attested mesh stream with a known address. An address claimed by two
 * streams with different identities is left out (fail closed: a captured connection to it is
 * then not upgraded, and a STRICT inbound refuses it) and logged. */
static int ward__send_peers(ward_session_t *s)
{
    ward_agent_t *a = s->conn->agent;
    size_t n = 0, k = 0;
    for (ward_session_t *x = a->sessions; x; x = x->next)
        if (x->active && x->kind == WARD_SESSION_MESH && x->addr[0] != '\0') n++;
    Ward__V1__Peer *peers = ward_calloc(n ? n : 1, sizeof(*peers));
    Ward__V1__Peer **ptrs = ward_calloc(n ? n : 1, sizeof(*ptrs));
    int rc = WARD_ENOMEM;
    if (peers == NULL || ptrs == NULL) goto out;
    for (ward_session_t *x = a->sessions; x; x = x->next) {
        if (!x->active || x->kind != WARD_SESSION_MESH || x->addr[0] == '\0') continue;
        int dup = 0, conflict = 0;
        for (ward_session_t *y = a->sessions; y; y = y->next) {
            if (y == x || !y->active || y->kind != WARD_SESSION_MESH || strcmp(y->addr, x->addr))
                continue;
            if (strcmp(y->identity, x->identity) != 0)
                conflict = 1;
            else if (y->opened_ms > x->opened_ms || (y->opened_ms == x->opened_ms && y < x))
                dup = 1; /* keep one entry per (address, id) */
        }
        if (conflict || dup) continue;
        ward__v1__peer__init(&peers[k]);
        peers[k].address = x->addr;
        peers[k].spiffe_id = x->identity;
        ptrs[k] = &peers[k];
        k++;
    }
    if (a->peers_version == 0) a->peers_version = 1;
    Ward__V1__PeerDirectory d = WARD__V1__PEER_DIRECTORY__INIT;
    d.version = a->peers_version;
    d.n_peers = k;
    d.peers = ptrs;
    Ward__V1__AgentMessage m = WARD__V1__AGENT_MESSAGE__INIT;
    m.msg_case = WARD__V1__AGENT_MESSAGE__MSG_PEERS;
    m.peers = &d;
    rc = ward__send(s, &m.base);
    if (rc == 0) s->peers_sent = d.version;
out:
    ward_free(peers);
    ward_free(ptrs);
    return rc;
}

/* The proxy's pod address for the peer directory. Over TCP: the connection's source address
 * (what the network vouches for; a claim is ignored). Over the Unix socket: the Hello's pod_ip
 * claim, if it is an IP address. */
static void ward__session_address(ward_session_t *s, const Ward__V1__Hello *h)
{
    struct sockaddr_storage ss;
    socklen_t sl = sizeof(ss);
    unsigned char bin[16];
    s->addr[0] = '\0';
    if (!s->conn->is_unix) {
        if (getpeername(s->conn->sock.fd, (struct sockaddr *)&ss, &sl) != 0) return;
        if (ss.ss_family == AF_INET)
            inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, s->addr, sizeof(s->addr));
        else if (ss.ss_family == AF_INET6) {
            struct in6_addr *a6 = &((struct sockaddr_in6 *)&ss)->sin6_addr;
            if (IN6_IS_ADDR_V4MAPPED(a6))
                inet_ntop(AF_INET, &a6->s6_addr[12], s->addr, sizeof(s->addr));
            else
                inet_ntop(AF_INET6, a6, s->addr, sizeof(s->addr));
        }
    } else if (h->pod_ip != NULL && h->pod_ip[0] != '\0' && strlen(h->pod_ip) < sizeof(s->addr) &&
               (inet_pton(AF_INET, h->pod_ip, bin) == 1 ||
                inet_pton(AF_INET6, h->pod_ip, bin) == 1)) {
        memcpy(s->addr, h->pod_ip, strlen(h->pod_ip) + 1);
    }
    if (s->addr[0] != '\0') s->conn->agent->peers_dirty = 1;
}

static void ward__handle_hello(ward_session_t *s, const Ward__V1__Hello *h)
{
    ward_agent_t *a = s->conn->agent;
    char err[256];
    char *id = NULL;
    if (s->active) {
        ward__finish(s, WARD_GRPC_FAILED_PRECONDITION, "Hello sent twice");
        return;
    }
    if (h->token != NULL && h->token[0] != '\0') {
        if (a->jwks == NULL) {
            a->stats.attest_failed++;
            ward__finish(s, WARD_GRPC_UNAUTHENTICATED,
                         "token attestation is not configured on this agent (--jwks)");
            return;
        }
        ward_k8s_token_policy_t pol = {.issuer = a->cfg.token_issuer,
                                       .audience = a->cfg.token_audience,
                                       .trust_domain = a->cfg.trust_domain,
                                       .now = (int64_t)time(NULL),
                                       .leeway_s = 60};
        if (ward_k8s_token_verify(a->jwks, &pol, h->token, &id, err, sizeof(err)) < 0) {
            a->stats.attest_failed++;
            char msg[320];
            snprintf(msg, sizeof(msg), "token refused: %s", err);
            ward__finish(s, WARD_GRPC_UNAUTHENTICATED, msg);
            return;
        }
    } else if (s->conn->is_unix && s->conn->peer_identity != NULL) {
        id = ward_strdup(s->conn->peer_identity);
    } else {
        a->stats.attest_failed++;
        char msg[256];
        if (s->conn->is_unix)
            snprintf(msg, sizeof(msg),
                     "no identity for uid %u gid %u: add it to the --workloads file or send a "
                     "service-account token",
                     (unsigned)s->conn->cred.uid, (unsigned)s->conn->cred.gid);
        else
            snprintf(msg, sizeof(msg), "a service-account token is required over TCP");
        ward__finish(s, WARD_GRPC_PERMISSION_DENIED, msg);
        return;
    }
    if (id == NULL) {
        ward__finish(s, WARD_GRPC_INTERNAL, "out of memory");
        return;
    }
    s->identity = id;
    s->active = 1;
    a->stats.attest_ok++;
    ward__session_log(s, WARD_LOG_INFO, "proxy_attested",
                      h->token && h->token[0] ? "service-account token" : "unix peer credentials");
    ward__session_address(s, h);
    ward__send_bundle(s);
    ward__send_policy(s, 1);
    ward__send_peers(s);
}

static void ward__handle_ack(ward_session_t *s, const Ward__V1__Ack *ack)
{
    ward_agent_t *a = s->conn->agent;
    if (!ack->accepted) {
        a->stats.nacks++;
        char msg[384];
        snprintf(msg, sizeof(msg), "proxy NACKed %s version %" PRIu64 ": %s",
                 ack->kind == WARD__V1__RESOURCE_KIND__RESOURCE_KIND_POLICY   ? "policy"
                 : ack->kind == WARD__V1__RESOURCE_KIND__RESOURCE_KIND_BUNDLE ? "bundle"
                 : ack->kind == WARD__V1__RESOURCE_KIND__RESOURCE_KIND_PEERS  ? "peers"
                                                                              : "svid",
                 ack->version, ack->error ? ack->error : "");
        ward__session_log(s, WARD_LOG_WARN, "nack", msg);
        return;
    }
    if (ack->kind == WARD__V1__RESOURCE_KIND__RESOURCE_KIND_BUNDLE) s->bundle_acked = ack->version;
    if (ack->kind == WARD__V1__RESOURCE_KIND__RESOURCE_KIND_POLICY) s->policy_acked = ack->version;
}

static void ward__mesh_message(ward_session_t *s, const uint8_t *msg, size_t len)
{
    Ward__V1__ProxyMessage *m = ward__v1__proxy_message__unpack(&ward__pb, len, msg);
    if (m == NULL) {
        ward__finish(s, WARD_GRPC_INVALID_ARGUMENT, "malformed ProxyMessage");
        return;
    }
    switch (m->msg_case) {
    case WARD__V1__PROXY_MESSAGE__MSG_HELLO:
        ward__handle_hello(s, m->hello);
        break;
    case WARD__V1__PROXY_MESSAGE__MSG_CSR:
        if (!s->active)
            ward__finish(s, WARD_GRPC_FAILED_PRECONDITION, "CSR before Hello");
        else
            ward__handle_csr(s, m->csr);
        break;
    case WARD__V1__PROXY_MESSAGE__MSG_ACK:
        if (s->active) ward__handle_ack(s, m->ack);
        break;
    default:
        ward__finish(s, WARD_GRPC_INVALID_ARGUMENT, "empty or unknown ProxyMessage");
        break;
    }
    ward__v1__proxy_message__free_unpacked(m, &ward__pb);
}

/* --- Workload API --------------------------------------------------------------------------- */

/* DER certificates concatenated, as the Workload API carries them. */
static uint8_t *ward__concat(const uint8_t *const *der, const size_t *len, size_t n, size_t *out)
{
    size_t total = 0;
    for (size_t i = 0; i < n; i++)
        total += len[i];
    uint8_t *buf = ward_malloc(total ? total : 1);
    if (buf == NULL) return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        memcpy(buf + o, der[i], len[i]);
        o += len[i];
    }
    *out = total;
    return buf;
}

static void ward__wl_renew_cb(uv_timer_t *t);

static int ward__wl_send_svid(ward_session_t *s)
{
    ward_agent_t *a = s->conn->agent;
    ward_der_chain_t chain = {0};
    uint8_t *key = NULL, *svid = NULL, *bundle = NULL;
    size_t key_len = 0, svid_len = 0, bundle_len = 0;
    char err[256];
    int rc = ward_ca_mint(a->ca, s->identity, (uint32_t)a->cfg.workload_svid_ttl_s, &chain, &key,
                          &key_len, err, sizeof(err));
    if (rc < 0) {
        ward__session_log(s, WARD_LOG_ERROR, "mint_failed", err);
        return rc;
    }
    const uint8_t *const *rder;
    const size_t *rlen;
    size_t nroots = ward_ca_bundle(a->ca, &rder, &rlen);
    svid = ward__concat((const uint8_t *const *)chain.der, chain.len, chain.n, &svid_len);
    bundle = ward__concat(rder, rlen, nroots, &bundle_len);
    if (svid == NULL || bundle == NULL) {
        rc = WARD_ENOMEM;
        goto out;
    }
    X509SVID x = X509_SVID__INIT;
    x.spiffe_id = s->identity;
    x.x509_svid.data = svid;
    x.x509_svid.len = svid_len;
    x.x509_svid_key.data = key;
    x.x509_svid_key.len = key_len;
    x.bundle.data = bundle;
    x.bundle.len = bundle_len;
    X509SVID *xs[1] = {&x};
    X509SVIDResponse r = X509_SVIDRESPONSE__INIT;
    r.n_svids = 1;
    r.svids = xs;
    rc = ward__send(s, &r.base);
    if (rc == 0) {
        a->stats.workload_svids++;
        ward__session_log(s, WARD_LOG_INFO, "workload_svid_issued", "Workload API X509-SVID");
        /* Re-issue at half the lifetime, for as long as the workload keeps watching. */
        if (s->renew == NULL && (s->renew = ward_malloc(sizeof(*s->renew))) != NULL) {
            uv_timer_init(a->loop, s->renew);
            s->renew->data = s;
        }
        if (s->renew) {
            uint64_t half = a->cfg.workload_svid_ttl_s * 1000 / 2;
            uv_timer_start(s->renew, ward__wl_renew_cb, half ? half : 1000, 0);
        }
    }
out:
    if (key) {
        memset(key, 0, key_len); /* private key material: wipe before freeing */
        ward_free(key);
    }
    ward_free(svid);
    ward_free(bundle);
    ward_der_chain_free(&chain);
    return rc;
}

static void ward__wl_renew_cb(uv_timer_t *t)
{
    ward_session_t *s = t->data;
    if (s->active && ward__wl_send_svid(s) == 0) ward_grpc_sock_flush(&s->conn->sock);
}

static int ward__wl_send_bundles(ward_session_t *s)
{
    ward_agent_t *a = s->conn->agent;
    const uint8_t *const *rder;
    const size_t *rlen;
    size_t nroots = ward_ca_bundle(a->ca, &rder, &rlen), blen = 0;
    uint8_t *bundle = ward__concat(rder, rlen, nroots, &blen);
    if (bundle == NULL) return WARD_ENOMEM;
    char key[300];
    snprintf(key, sizeof(key), "spiffe://%s", ward_ca_trust_domain(a->ca));
    X509BundlesResponse__BundlesEntry e = X509_BUNDLES_RESPONSE__BUNDLES_ENTRY__INIT;
    e.key = key;
    e.value.data = bundle;
    e.value.len = blen;
    X509BundlesResponse__BundlesEntry *es[1] = {&e};
    X509BundlesResponse r = X509_BUNDLES_RESPONSE__INIT;
    r.n_bundles = 1;
    r.bundles = es;
    int rc = ward__send(s, &r.base);
    if (rc == 0) s->bundle_sent = ward_agent_bundle_version(a);
    ward_free(bundle);
    return rc;
}

/* --- sessions and gRPC callbacks ------------------------------------------------------------ */

static void ward__renew_closed(uv_handle_t *h)
{
    ward_free(h);
}

void ward_session_free(ward_session_t *s)
{
    ward_agent_t *a = s->conn->agent;
    if (s->prev)
        s->prev->next = s->next;
    else
        a->sessions = s->next;
    if (s->next) s->next->prev = s->prev;
    a->nsessions--;
    if (s->active && s->kind == WARD_SESSION_MESH && s->addr[0] != '\0') a->peers_dirty = 1;
    if (s->renew) uv_close((uv_handle_t *)s->renew, ward__renew_closed);
    ward_free(s->identity);
    ward_free(s);
}

static ward_session_t *ward__session_new(ward_agent_conn_t *c, ward_grpc_call_t *call,
                                         ward_session_kind_t kind)
{
    ward_agent_t *a = c->agent;
    ward_session_t *s = ward_calloc(1, sizeof(*s));
    if (s == NULL) return NULL;
    s->conn = c;
    s->call = call;
    s->kind = kind;
    s->opened_ms = uv_now(a->loop);
    s->next = a->sessions;
    if (a->sessions) a->sessions->prev = s;
    a->sessions = s;
    a->nsessions++;
    a->stats.streams_opened++;
    ward_grpc_call_set_data(call, s);
    return s;
}

/* Refuses a call with a status and a message the caller can act on. */
static int ward__refuse(ward_grpc_call_t *call, int status, const char *msg)
{
    ward_grpc_call_finish(call, status, msg);
    return status;
}

int ward_agent_on_call(ward_grpc_conn_t *conn, ward_grpc_call_t *call, const char *path,
                       void *conn_data)
{
    ward_agent_conn_t *c = conn_data;
    ward_session_kind_t kind;
    int workload_api = strncmp(path, "/SpiffeWorkloadAPI/", 19) == 0;
    if (workload_api) {
        const char *h = ward_grpc_call_header(call, WARD_WL_HEADER);
        if (h == NULL || strcmp(h, "true") != 0)
            return ward__refuse(call, WARD_GRPC_INVALID_ARGUMENT,
                                "security header missing: send 'workload.spiffe.io: true'");
    }
    if (strcmp(path, "/ward.v1.Mesh/Connect") == 0) {
        kind = WARD_SESSION_MESH;
    } else if (strcmp(path, "/SpiffeWorkloadAPI/FetchX509SVID") == 0 ||
               strcmp(path, "/SpiffeWorkloadAPI/FetchX509Bundles") == 0) {
        if (!c->is_unix)
            return ward__refuse(call, WARD_GRPC_PERMISSION_DENIED,
                                "the Workload API is served on the Unix socket only");
        if (c->peer_identity == NULL) {
            char msg[160];
            snprintf(msg, sizeof(msg), "no identity for this caller (uid %u, gid %u)",
                     (unsigned)c->cred.uid, (unsigned)c->cred.gid);
            return ward__refuse(call, WARD_GRPC_PERMISSION_DENIED, msg);
        }
        kind = strstr(path, "Bundles") ? WARD_SESSION_BUNDLES : WARD_SESSION_X509SVID;
    } else if (workload_api) {
        return ward__refuse(call, WARD_GRPC_UNIMPLEMENTED,
                            "JWT-SVIDs are disabled in ward: use X509-SVIDs");
    } else {
        return ward__refuse(call, WARD_GRPC_UNIMPLEMENTED, "unknown method");
    }
    ward_session_t *s = ward__session_new(c, call, kind);
    if (s == NULL) return WARD_GRPC_RESOURCE_EXHAUSTED;
    if (kind != WARD_SESSION_MESH) {
        s->identity = ward_strdup(c->peer_identity);
        s->active = s->identity != NULL;
    }
    return WARD_GRPC_OK;
}

static void ward__on_message(ward_grpc_call_t *call, const uint8_t *msg, size_t len, void *data)
{
    ward_session_t *s = data;
    if (s == NULL) return;
    if (s->kind == WARD_SESSION_MESH) {
        ward__mesh_message(s, msg, len);
        return;
    }
    /* Workload API: one (empty) request, then the stream of responses. */
    if (s->svid_sent || s->bundle_sent) return;
    int rc = s->kind == WARD_SESSION_X509SVID ? ward__wl_send_svid(s) : ward__wl_send_bundles(s);
    if (s->kind == WARD_SESSION_X509SVID && rc == 0) s->svid_sent = 1;
    if (rc < 0) ward__finish(s, WARD_GRPC_INTERNAL, "could not issue the SVID");
}

static void ward__on_close(ward_grpc_call_t *call, int status, const char *message, void *data)
{
    ward_session_t *s = data;
    if (s == NULL) return;
    if (s->kind == WARD_SESSION_MESH && s->identity)
        ward__session_log(s, WARD_LOG_INFO, "stream_closed", message);
    ward_session_free(s);
}

const ward_grpc_callbacks_t ward_agent_grpc_callbacks = {
    .on_call = ward_agent_on_call,
    .on_message = ward__on_message,
    .on_close = ward__on_close,
};

/* Flushes the sockets of every session that has something queued. Flushing is done after the
 * walk over a->sessions, from a list of sockets: a write error closes a connection, which frees
 * its sessions at once (their calls end), so the session list must not be walked across a flush.
 * The sockets themselves live until their close callbacks run on a later loop iteration. */
static void ward__flush_sessions(ward_grpc_sock_t **socks, size_t n)
{
    for (size_t i = 0; i < n; i++)
        ward_grpc_sock_flush(socks[i]);
}

static ward_grpc_sock_t **ward__socket_list(ward_agent_t *a)
{
    size_t n = 0;
    for (ward_session_t *s = a->sessions; s; s = s->next)
        n++;
    /* Out of memory: nothing is flushed now; each socket's periodic tick flushes it. */
    return ward_malloc((n ? n : 1) * sizeof(ward_grpc_sock_t *));
}

void ward_agent_push_bundles(ward_agent_t *a)
{
    uint64_t gen = ward_agent_bundle_version(a);
    ward_grpc_sock_t **socks = ward__socket_list(a);
    size_t n = 0;
    for (ward_session_t *s = a->sessions; s; s = s->next) {
        if (!s->active || s->bundle_sent == gen) continue;
        if (s->kind == WARD_SESSION_MESH)
            ward__send_bundle(s);
        else if (s->kind == WARD_SESSION_BUNDLES)
            ward__wl_send_bundles(s);
        else if (s->kind == WARD_SESSION_X509SVID) {
            s->bundle_sent = gen;
            ward__wl_send_svid(s);
        }
        if (socks) socks[n++] = &s->conn->sock;
    }
    if (socks) ward__flush_sessions(socks, n);
    ward_free(socks);
}

void ward_agent_push_policies(ward_agent_t *a)
{
    ward_grpc_sock_t **socks = ward__socket_list(a);
    size_t n = 0;
    for (ward_session_t *s = a->sessions; s; s = s->next) {
        if (!s->active || s->kind != WARD_SESSION_MESH) continue;
        if (ward__send_policy(s, 0) == 0 && socks) socks[n++] = &s->conn->sock;
    }
    if (socks) ward__flush_sessions(socks, n);
    ward_free(socks);
}

void ward_agent_push_peers(ward_agent_t *a)
{
    if (!a->peers_dirty) return;
    a->peers_dirty = 0;
    a->peers_version++;
    ward_grpc_sock_t **socks = ward__socket_list(a);
    size_t n = 0;
    for (ward_session_t *s = a->sessions; s; s = s->next) {
        if (!s->active || s->kind != WARD_SESSION_MESH) continue;
        if (ward__send_peers(s) == 0 && socks) socks[n++] = &s->conn->sock;
    }
    if (socks) ward__flush_sessions(socks, n);
    ward_free(socks);
}
