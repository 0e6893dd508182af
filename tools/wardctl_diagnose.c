/* wardctl_diagnose.c — `wardctl diagnose TARGET [--cert F --key F --ca F] [--expect ID]
 * [--alpn P] [--admin ADDR] [--timeout D]`.
 *
 * Connects to TARGET (an inbound ward-proxy or any mTLS server) the way an outbound sidecar does:
 * TLS 1.2/1.3 with ward's settings, presenting the given client certificate (or none). The
 * handshake itself judges nothing (lib/tls.c's ward_tls_probe): it keeps the server's chain, lets
 * the server judge ours, and then listens without sending, because in TLS 1.3 a refusal of the
 * client certificate arrives after the client's handshake has completed. Then:
 *   - the server's chain is classified against --ca with the verifier the sidecars use
 *     (ward_tls_verify_chain), and the root of --ca that signed it is named;
 *   - the server's alert, if any, is read as an outbound sidecar reads it (ward_tls_classify: a
 *     ward inbound sends one alert per refusal reason);
 *   - with --admin, the server's /identity and /policy pages are summarised.
 * Findings are printed in the order a sidecar would meet them, the first as "verdict:", each with
 * a "fix:". Exit status: 0 OK, 1 a diagnosed failure, 2 usage error. */
#include "wardctl_diagnose.h"

#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "ward/addr.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/spiffe.h"
#include "ward/strbuf.h"
#include "ward/tls.h"

#define DIAG_DEFAULT_TIMEOUT_MS 5000
#define DIAG_LISTEN_MS          1000 /* after our handshake: time the server gets to refuse us */
#define DIAG_MAX_FINDINGS       6
#define DIAG_MAX_BODY           (4u << 20)

typedef struct {
    char what[2400]; /* the verdict line */
    char why[2400];  /* supporting facts (dates, names), or "" */
    char fix[1024];
} diag_finding_t;

typedef struct {
    /* options */
    const char *target;
    const char *cert;
    const char *key;
    const char *ca;
    const char *expect;
    const char *alpn;
    const char *admin;
    uint64_t timeout_ms;
    /* what was learned */
    int64_t now;
    ward_cert_summary_t own; /* our leaf, when --cert */
    int have_own;
    uint8_t **roots; /* --ca, DER */
    size_t *roots_len;
    int nroots;
    char peer_addr[64];
    ward_tls_probe_t probe;
    ward_cert_summary_t leaf; /* the server's, when it sent one */
    int have_leaf;
    ward_tls_reason_t server_reason; /* the server chain against --ca */
    const char *server_detail;
    int verified;           /* the chain was classified against --ca */
    int signer;             /* index in roots of the root that signed the chain, or -1 */
    int admin_policy_known; /* /policy was read: */
    char admin_mesh_default[16];
    size_t admin_policies;
    diag_finding_t findings[DIAG_MAX_FINDINGS];
    int nfindings;
} diag_t;

void wardctl_diagnose_usage(FILE *out)
{
    fputs(
        "usage: wardctl diagnose TARGET [--cert FILE --key FILE] [--ca BUNDLE]\n"
        "                        [--expect SPIFFE-ID] [--alpn h2|http/1.1|ward-tcp]\n"
        "                        [--admin ADDR] [--timeout DURATION]\n"
        "\n"
        "Connects to TARGET (IP:PORT, [IPv6]:PORT or HOST:PORT of an inbound ward-proxy or any\n"
        "mTLS server) as an outbound sidecar would, and explains what happens:\n"
        "  --cert, --key   the client SVID to present (the caller's); without them no client\n"
        "                  certificate is sent, which a ward inbound refuses\n"
        "  --ca            trust bundle to verify the server's chain with ward's X509-SVID rules\n"
        "  --expect        the SPIFFE id the server must have (an outbound mapping's identity=)\n"
        "  --alpn          the protocol to offer (default ward-tcp)\n"
        "  --admin         the server's admin endpoint (e.g. 127.0.0.1:15000): also show its\n"
        "                  identity and policy summary\n"
        "  --timeout       for the TCP connect and the TLS handshake (default 5s)\n"
        "\n"
        "Prints the server's chain, SPIFFE id, the root of --ca that signed it, TLS version,\n"
        "cipher and ALPN, then a verdict with a fix. Exit status: 0 OK, 1 a diagnosed failure,\n"
        "2 usage error.\n",
        out);
}

/* --- formatting ------------------------------------------------------------------------------ */

static const char *diag_time(int64_t t, char *buf, size_t size)
{
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, size, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

/* A duration in its two largest units: "2d", "2d3h", "3h12m", "4m10s", "12s". */
static const char *diag_span(int64_t s, char *buf, size_t size)
{
    if (s < 0) s = -s;
    long long d = s / 86400, h = s / 3600 % 24, m = s / 60 % 60, sec = s % 60;
    if (d > 0 && h > 0)
        snprintf(buf, size, "%lldd%lldh", d, h);
    else if (d > 0)
        snprintf(buf, size, "%lldd", d);
    else if (h > 0)
        snprintf(buf, size, "%lldh%02lldm", h, m);
    else if (m > 0)
        snprintf(buf, size, "%lldm%02llds", m, sec);
    else
        snprintf(buf, size, "%llds", sec);
    return buf;
}

/* "expires in 3h12m", "expired 2d ago", "not valid for another 3h". */
static const char *diag_validity(const ward_cert_summary_t *c, int64_t now, char *buf, size_t size)
{
    char span[32];
    if (now < c->not_before)
        snprintf(buf, size, "not valid for another %s",
                 diag_span(c->not_before - now, span, sizeof(span)));
    else if (now >= c->not_after)
        snprintf(buf, size, "expired %s ago", diag_span(now - c->not_after, span, sizeof(span)));
    else
        snprintf(buf, size, "expires in %s", diag_span(c->not_after - now, span, sizeof(span)));
    return buf;
}

/* A timeout as given: "700ms", "5s", "1m00s". */
static const char *diag_ms(uint64_t ms, char *buf, size_t size)
{
    if (ms % 1000 != 0) {
        snprintf(buf, size, "%llums", (unsigned long long)ms);
        return buf;
    }
    return diag_span((int64_t)(ms / 1000), buf, size);
}

static const char *diag_fingerprint(const uint8_t sha[32], char *buf, size_t size)
{
    size_t off = 0;
    for (int i = 0; i < 32 && off + 3 < size; i++)
        off += (size_t)snprintf(buf + off, size - off, "%s%02X", i ? ":" : "", sha[i]);
    return buf;
}

static void diag_add(diag_t *d, const char *fix, const char *why, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Records one finding: the verdict text (fmt), supporting facts (why, may be NULL) and the fix. */
static void diag_add(diag_t *d, const char *fix, const char *why, const char *fmt, ...)
{
    if (d->nfindings == DIAG_MAX_FINDINGS) return;
    diag_finding_t *f = &d->findings[d->nfindings++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(f->what, sizeof(f->what), fmt, ap);
    va_end(ap);
    snprintf(f->why, sizeof(f->why), "%s", why ? why : "");
    snprintf(f->fix, sizeof(f->fix), "%s", fix);
}

/* --- arguments ---------------------------------------------------------------------------------
 */

static int diag_parse(diag_t *d, int argc, char **argv)
{
    static const char *const alpns[] = {"h2", "http/1.1", "ward-tcp"};
    const char *timeout = NULL;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        const char **slot = strcmp(a, "--cert") == 0      ? &d->cert
                            : strcmp(a, "--key") == 0     ? &d->key
                            : strcmp(a, "--ca") == 0      ? &d->ca
                            : strcmp(a, "--expect") == 0  ? &d->expect
                            : strcmp(a, "--alpn") == 0    ? &d->alpn
                            : strcmp(a, "--admin") == 0   ? &d->admin
                            : strcmp(a, "--timeout") == 0 ? &timeout
                                                          : NULL;
        if (slot != NULL && i + 1 < argc) {
            *slot = argv[++i];
        } else if (slot == NULL && a[0] != '-' && d->target == NULL) {
            d->target = a;
        } else {
            fprintf(stderr, "wardctl diagnose: %s '%s' (see wardctl diagnose --help)\n",
                    slot ? "missing value after" : "unexpected", a);
            return -1;
        }
    }
    if (d->target == NULL) {
        fprintf(stderr, "wardctl diagnose: give a TARGET address (see wardctl diagnose --help)\n");
        return -1;
    }
    if ((d->cert == NULL) != (d->key == NULL)) {
        fprintf(stderr, "wardctl diagnose: --cert and --key go together\n");
        return -1;
    }
    const char *why = NULL;
    if (d->expect != NULL && ward_spiffe_id_parse(d->expect, strlen(d->expect), NULL, &why) < 0) {
        fprintf(stderr, "wardctl diagnose: --expect '%s': %s\n", d->expect, why);
        return -1;
    }
    if (d->alpn != NULL) {
        size_t k = 0;
        while (k < sizeof(alpns) / sizeof(alpns[0]) && strcmp(d->alpn, alpns[k]) != 0)
            k++;
        if (k == sizeof(alpns) / sizeof(alpns[0])) {
            fprintf(stderr, "wardctl diagnose: --alpn must be h2, http/1.1 or ward-tcp\n");
            return -1;
        }
    }
    d->timeout_ms = DIAG_DEFAULT_TIMEOUT_MS;
    if (timeout != NULL && (ward_duration_parse(timeout, &d->timeout_ms) < 0 ||
                            d->timeout_ms == 0 || d->timeout_ms > 3600 * 1000)) {
        fprintf(stderr, "wardctl diagnose: --timeout '%s': give e.g. 500ms, 5s, 1m\n", timeout);
        return -1;
    }
    return 0;
}

/* Splits "host:port" / "[v6]:port" into host and port. Returns 0 or -1. */
static int diag_split(const char *target, char *host, size_t hsize, char *port, size_t psize)
{
    const char *start = target, *colon;
    if (target[0] == '[') {
        const char *end = strchr(target, ']');
        if (end == NULL || end[1] != ':') return -1;
        start = target + 1;
        colon = end + 1;
    } else {
        colon = strrchr(target, ':');
        if (colon == NULL || strchr(target, ':') != colon) return -1;
    }
    size_t hlen = (size_t)(colon - start) - (target[0] == '[');
    uint64_t p;
    if (hlen == 0 || hlen >= hsize || ward_parse_u64(colon + 1, 1, 65535, &p) < 0) return -1;
    memcpy(host, start, hlen);
    host[hlen] = '\0';
    snprintf(port, psize, "%llu", (unsigned long long)p);
    return 0;
}

/* --- TCP ---------------------------------------------------------------------------------------
 */

/* Connects to one address within timeout_ms. Returns the socket, or -errno. */
static int diag_connect_one(const struct addrinfo *ai, uint64_t timeout_ms)
{
    int fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return -errno;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) return fd;
    if (errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        return -e;
    }
    struct pollfd pfd = {.fd = fd, .events = POLLOUT};
    int r;
    do {
        r = poll(&pfd, 1, (int)timeout_ms);
    } while (r < 0 && errno == EINTR);
    int soerr = 0;
    socklen_t len = sizeof(soerr);
    if (r == 0)
        soerr = ETIMEDOUT;
    else if (r < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &len) < 0)
        soerr = errno;
    if (soerr != 0) {
        close(fd);
        return -soerr;
    }
    return fd;
}

/* Resolves and connects to d->target (each address in turn). Returns the socket or -1 after
 * recording the finding. */
static int diag_connect(diag_t *d)
{
    char host[256], port[8], why[512];
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
    struct addrinfo *res = NULL;
    if (diag_split(d->target, host, sizeof(host), port, sizeof(port)) < 0) return -2;
    int gai = getaddrinfo(host, port, &hints, &res);
    if (gai != 0) {
        diag_add(d,
                 "check the name (a Kubernetes Service is NAME.NAMESPACE.svc.cluster.local) and "
                 "this host's resolver; or give the address as IP:PORT",
                 NULL, "cannot resolve %s: %s", host, gai_strerror(gai));
        return -1;
    }
    int fd = -ETIMEDOUT;
    for (const struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        ward_addr_format(ai->ai_addr, d->peer_addr, sizeof(d->peer_addr));
        fd = diag_connect_one(ai, d->timeout_ms);
        if (fd >= 0) break;
    }
    freeaddrinfo(res);
    if (fd >= 0) return fd;
    int e = -fd;
    char span[32];
    snprintf(why, sizeof(why), "TCP connect to %s: %s", d->peer_addr, strerror(e));
    if (e == ECONNREFUSED)
        diag_add(d,
                 "start the sidecar, or point diagnose at its inbound listener: 15006 in "
                 "transparent mode, the address before '=' of --inbound in explicit mode; "
                 "`wardctl status` on its admin port tells whether it runs and is ready",
                 why, "connection refused: nothing listening at %s, is the sidecar running?",
                 d->peer_addr);
    else if (e == ETIMEDOUT)
        diag_add(d,
                 "a firewall, security group or NetworkPolicy drops the packets, or the host is "
                 "down: check the route to it and the rules in between",
                 why, "timeout: no answer from %s within %s (TCP connect)", d->peer_addr,
                 diag_ms(d->timeout_ms, span, sizeof(span)));
    else if (e == EHOSTUNREACH || e == ENETUNREACH)
        diag_add(d, "check this host's routes and that the target host is up", why,
                 "no route to %s: %s", d->peer_addr, strerror(e));
    else if (e == ECONNRESET)
        diag_add(d, "check the target's firewall and logs", why,
                 "connection reset by %s during the TCP connect", d->peer_addr);
    else
        diag_add(d, "check the address and this host's network", why, "cannot connect to %s: %s",
                 d->peer_addr, strerror(e));
    return -1;
}

/* --- local inputs ------------------------------------------------------------------------------
 */

static void diag_free_der(uint8_t **der, size_t *len, int n)
{
    for (int i = 0; i < n; i++)
        ward_pem_free(der[i]);
    ward_free(der);
    ward_free(len);
}

/* Reads --ca and our own leaf. Returns 0 or -1 (message printed: a usage error). */
static int diag_load(diag_t *d)
{
    if (d->ca != NULL) {
        d->nroots = ward_pem_read_certs(d->ca, &d->roots, &d->roots_len);
        if (d->nroots < 0) {
            fprintf(stderr, "wardctl diagnose: --ca %s: no readable PEM certificate (%s)\n", d->ca,
                    ward_strerror(d->nroots));
            d->nroots = 0;
            return -1;
        }
    }
    if (d->cert != NULL) {
        uint8_t **der = NULL;
        size_t *len = NULL;
        int n = ward_pem_read_certs(d->cert, &der, &len);
        if (n < 0 || ward_cert_summarize(der[0], len[0], &d->own) < 0) {
            fprintf(stderr, "wardctl diagnose: --cert %s: no readable PEM certificate\n", d->cert);
            if (n > 0) diag_free_der(der, len, n);
            return -1;
        }
        d->have_own = 1;
        diag_free_der(der, len, n);
    }
    return 0;
}

/* --- the server's chain ------------------------------------------------------------------------
 */

/* The trust domain the server must be in: the expected id's, else ours, else its own. */
static int diag_trust_domain(const diag_t *d, char *td, size_t size)
{
    const char *ids[] = {d->expect, d->have_own ? d->own.spiffe_id : NULL,
                         d->have_leaf ? d->leaf.spiffe_id : NULL};
    for (size_t i = 0; i < sizeof(ids) / sizeof(ids[0]); i++) {
        ward_spiffe_id_t p;
        if (ids[i] == NULL || ward_spiffe_id_parse(ids[i], strlen(ids[i]), &p, NULL) < 0) continue;
        snprintf(td, size, "%.*s", (int)p.td_len, p.td);
        return 0;
    }
    return -1;
}

static void diag_print_cert(int index, const ward_cert_summary_t *c, int64_t now)
{
    char t1[32], t2[32], rel[64], fp[100];
    printf("  [%d] subject    %s\n", index, c->subject);
    printf("      issuer     %s\n", c->issuer);
    printf("      serial     %s\n", c->serial);
    printf("      not before %s\n", diag_time(c->not_before, t1, sizeof(t1)));
    printf("      not after  %s (%s)\n", diag_time(c->not_after, t2, sizeof(t2)),
           diag_validity(c, now, rel, sizeof(rel)));
    if (c->spiffe_id[0]) printf("      spiffe id  %s\n", c->spiffe_id);
    printf("      sha256     %s\n", diag_fingerprint(c->sha256, fp, sizeof(fp)));
}

/* Prints the chain and classifies it against --ca as a sidecar's verifier would. */
static void diag_server_chain(diag_t *d)
{
    const ward_tls_probe_t *p = &d->probe;
    d->signer = -1;
    if (p->nchain == 0) {
        printf("%-16s%s\n", "server chain",
               p->handshake_done ? "none (the server sent no certificate)"
                                 : "not received (the handshake ended before it)");
        return;
    }
    printf("%-16s%zu certificate%s, leaf first\n", "server chain", p->nchain,
           p->nchain == 1 ? "" : "s");
    for (size_t i = 0; i < p->nchain; i++) {
        ward_cert_summary_t c;
        if (ward_cert_summarize(p->chain_der[i], p->chain_len[i], &c) < 0) {
            printf("  [%zu] (does not parse)\n", i);
            continue;
        }
        if (i == 0) {
            d->leaf = c;
            d->have_leaf = 1;
        }
        diag_print_cert((int)i, &c, d->now);
    }
    printf("%-16s%s\n", "server id",
           d->have_leaf && d->leaf.spiffe_id[0] ? d->leaf.spiffe_id : "(no URI SAN)");
    if (d->ca == NULL) {
        printf("%-16snot verified (give --ca BUNDLE to check it as a sidecar would)\n",
               "signed by");
        return;
    }
    char fp[100];
    const uint8_t *const *roots = (const uint8_t *const *)d->roots;
    d->signer = ward_cert_find_issuer(p->chain_der[p->nchain - 1], p->chain_len[p->nchain - 1],
                                      roots, d->roots_len, (size_t)d->nroots);
    ward_cert_summary_t r;
    if (d->signer >= 0 &&
        ward_cert_summarize(d->roots[d->signer], d->roots_len[d->signer], &r) == 0) {
        printf("%-16s%s (root #%d of %s, sha256 %s)\n", "signed by", r.subject, d->signer + 1,
               d->ca, diag_fingerprint(r.sha256, fp, sizeof(fp)));
    } else {
        printf("%-16sno root of %s (the chain ends at issuer %s)\n", "signed by", d->ca,
               p->nchain ? d->leaf.issuer : "?");
    }

    char td[WARD_SPIFFE_TD_MAX + 1], err[512];
    ward_identity_t *trust = NULL;
    if (diag_trust_domain(d, td, sizeof(td)) < 0) {
        diag_add(d,
                 "an X509-SVID carries its SPIFFE id as its one URI SAN: reissue the server's "
                 "certificate as an SVID, or say which identity to expect with --expect",
                 NULL,
                 "cannot verify the server's chain: no SPIFFE id to take a trust domain from");
        return;
    }
    if (ward_identity_trust_only(roots, d->roots_len, (size_t)d->nroots, td, &trust, err,
                                 sizeof(err)) < 0) {
        diag_add(d, "give --ca the trust bundle (root CA certificates) the sidecars use", NULL,
                 "cannot verify the server's chain against %s: %s", d->ca, err);
        return;
    }
    char *peer_id = NULL;
    d->server_reason =
        ward_tls_verify_chain(trust, (const uint8_t *const *)p->chain_der, p->chain_len, p->nchain,
                              d->expect, 1, &d->server_detail, &peer_id);
    d->verified = 1;
    ward_free(peer_id);
    ward_identity_unref(trust);
}

/* Findings about the server's certificate, in the words an operator acts on. */
static void diag_judge_server(diag_t *d)
{
    char t1[32], t2[32], span[32], why[2400], fp[100];
    const ward_cert_summary_t *l = &d->leaf;
    if (!d->verified) {
        /* Without --ca the identity can still be compared. */
        if (d->expect != NULL && d->have_leaf && strcmp(d->expect, l->spiffe_id) != 0)
            diag_add(d,
                     "the address is not the workload you meant (check the address, or the Service "
                     "endpoints it resolves to), or the expected identity is stale: an outbound "
                     "mapping's identity= must name the server's SPIFFE id",
                     NULL, "identity mismatch: got %s, expected %s",
                     l->spiffe_id[0] ? l->spiffe_id : "no SPIFFE id", d->expect);
        return;
    }
    switch (d->server_reason) {
    case WARD_REASON_NONE:
        return;
    case WARD_REASON_EXPIRED:
        snprintf(why, sizeof(why),
                 "notAfter %s, now %s: the certificate ended %s ago by this host's clock (if the "
                 "server renewed it just now, this clock is ahead by at least that much)",
                 diag_time(l->not_after, t1, sizeof(t1)), diag_time(d->now, t2, sizeof(t2)),
                 diag_span(d->now - l->not_after, span, sizeof(span)));
        diag_add(d,
                 "the server's sidecar has not renewed its SVID (it asks the agent at half-life): "
                 "check `wardctl status` on the server's admin port (agent stream, expiry); with "
                 "--cert files, put a new certificate in place (ward-proxy reloads it)",
                 why, "server certificate expired %s ago (notAfter %s)",
                 diag_span(d->now - l->not_after, span, sizeof(span)),
                 diag_time(l->not_after, t1, sizeof(t1)));
        return;
    case WARD_REASON_NOT_YET_VALID:
        snprintf(why, sizeof(why),
                 "notBefore %s, now %s: this host's clock is %s behind the clock that issued it",
                 diag_time(l->not_before, t1, sizeof(t1)), diag_time(d->now, t2, sizeof(t2)),
                 diag_span(l->not_before - d->now, span, sizeof(span)));
        diag_add(d,
                 "a clock is off: check NTP (timedatectl, chronyc tracking) on this host, the "
                 "server's host and the agent's host; SVIDs are valid from the moment of issue",
                 why, "server certificate not yet valid: it starts in %s (notBefore %s)",
                 diag_span(l->not_before - d->now, span, sizeof(span)),
                 diag_time(l->not_before, t1, sizeof(t1)));
        return;
    case WARD_REASON_UNKNOWN_CA: {
        ward_strbuf_t roots = {0};
        for (int i = 0; i < d->nroots; i++) {
            ward_cert_summary_t r;
            if (ward_cert_summarize(d->roots[i], d->roots_len[i], &r) == 0)
                ward_strbuf_printf(&roots, "%s%s (sha256 %.23s...)", i ? ", " : "", r.subject,
                                   diag_fingerprint(r.sha256, fp, sizeof(fp)));
        }
        snprintf(why, sizeof(why), "%s holds: %s", d->ca, roots.data ? roots.data : "nothing");
        ward_strbuf_free(&roots);
        diag_add(d,
                 "the bundle given with --ca does not contain the root that signed the server's "
                 "certificate: check both sides use the same trust domain bundle (during a CA "
                 "rotation every bundle must hold the old and the new root)",
                 why, "unknown CA: the server's chain was issued by %s, which is not a root in %s",
                 d->probe.nchain > 1 ? "an intermediate chaining to no root of --ca" : l->issuer,
                 d->ca);
        return;
    }
    case WARD_REASON_SAN_MISMATCH:
        if (d->expect != NULL && strcmp(d->server_detail ? d->server_detail : "",
                                        "peer SPIFFE id is outside this trust domain") != 0) {
            diag_add(d,
                     "the address is not the workload you meant (check the address, or the Service "
                     "endpoints it resolves to), or the expected identity is stale: an outbound "
                     "mapping's identity= must name the server's SPIFFE id",
                     NULL, "identity mismatch: got %s, expected %s", l->spiffe_id, d->expect);
        } else {
            char td[WARD_SPIFFE_TD_MAX + 1] = "";
            diag_trust_domain(d, td, sizeof(td));
            diag_add(d,
                     "a sidecar only accepts peers of its own trust domain: issue the server's "
                     "SVID in that trust domain, or check that --expect names the right one",
                     NULL, "identity mismatch: got %s, outside the trust domain %s", l->spiffe_id,
                     td);
        }
        return;
    default:
        diag_add(d,
                 "reissue the server's certificate as an X509-SVID (exactly one URI SAN, not a "
                 "CA, keyUsage digitalSignature); `wardctl cert inspect FILE --ca BUNDLE` on the "
                 "server's file names the problem",
                 NULL, "the server's certificate is not a valid X509-SVID: %s (%s)",
                 d->server_detail ? d->server_detail : "?", ward_tls_reason_name(d->server_reason));
        return;
    }
}

/* --- the server's answer to us ------------------------------------------------------------------
 */

static const char *diag_own_id(const diag_t *d)
{
    return d->have_own && d->own.spiffe_id[0] ? d->own.spiffe_id : "(no SPIFFE id)";
}

/* The server sent an alert: what it means for a ward inbound (one alert per refusal reason). */
static void diag_judge_alert(diag_t *d)
{
    const ward_tls_probe_t *p = &d->probe;
    const char *name = ward_tls_alert_name(p->alert);
    const char *reason = ward_tls_reason_name(p->reason);
    char t1[32], t2[32], span[32], why[2400] = "";
    const ward_cert_summary_t *o = &d->own;

    switch (p->alert) {
    case 45: /* certificate_expired */
        if (d->have_own && d->now >= o->not_after)
            snprintf(why, sizeof(why), "our certificate %s expired %s ago: notAfter %s, now %s",
                     diag_own_id(d), diag_span(d->now - o->not_after, span, sizeof(span)),
                     diag_time(o->not_after, t1, sizeof(t1)), diag_time(d->now, t2, sizeof(t2)));
        else if (d->have_own)
            snprintf(why, sizeof(why),
                     "by this host's clock our certificate is valid until %s (%s more): the "
                     "server's clock is ahead by at least that much",
                     diag_time(o->not_after, t1, sizeof(t1)),
                     diag_span(o->not_after - d->now, span, sizeof(span)));
        diag_add(d,
                 "renew the workload certificate: the agent issues SVIDs at half-life; check "
                 "`wardctl status` on the client's admin port for agent connectivity (agent "
                 "stream DOWN means the proxy cannot renew)",
                 why, "the server refused our certificate: expired (alert %s, reason %s)", name,
                 reason);
        return;
    case 46: /* certificate_unknown: what ward sends for not_yet_valid */
        if (d->have_own)
            snprintf(why, sizeof(why),
                     "our certificate %s is valid from %s; now %s by this host's clock (%s); a "
                     "ward inbound sends certificate_unknown for a certificate not yet valid",
                     diag_own_id(d), diag_time(o->not_before, t1, sizeof(t1)),
                     diag_time(d->now, t2, sizeof(t2)),
                     d->now < o->not_before ? "not yet valid here either"
                                            : "the server's clock is behind");
        diag_add(d,
                 d->have_own && d->now < o->not_before
                     ? "our certificate starts in the future by this host's clock too: the "
                       "clock of whatever issued it (the agent) is ahead; fix NTP there and "
                       "reissue it"
                     : "a clock is off: check NTP (timedatectl, chronyc tracking) on the "
                       "server's host and the agent's host; SVIDs are valid from the moment of "
                       "issue",
                 why, "the server refused our certificate: not yet valid (alert %s, reason %s)",
                 name, reason);
        return;
    case 48: /* unknown_ca */
        if (d->have_own)
            snprintf(why, sizeof(why),
                     "our certificate %s was issued by %s; the server's trust bundle holds no "
                     "root for it",
                     diag_own_id(d), o->issuer);
        diag_add(d,
                 "the server's bundle does not contain the root that signed your certificate: "
                 "check both sides use the same trust domain bundle (during a CA rotation every "
                 "bundle must hold the old and the new root)",
                 why, "the server refused our certificate: unknown CA (alert %s, reason %s)", name,
                 reason);
        return;
    case 49: /* access_denied: san_mismatch */
        snprintf(why, sizeof(why),
                 "we presented %s; a ward inbound refuses a peer outside its trust domain this way",
                 diag_own_id(d));
        diag_add(d,
                 "issue the caller's SVID in the server's trust domain (spiffe://TD/...), or "
                 "give the server a bundle for the caller's trust domain",
                 why, "the server refused our identity: %s is not accepted (alert %s, reason %s)",
                 diag_own_id(d), name, reason);
        return;
    case 42: /* bad_certificate */
    case 43: /* unsupported_certificate */
    case 44: /* certificate_revoked */
        diag_add(d,
                 "check it with `wardctl cert inspect CERT --ca BUNDLE`: an X509-SVID has exactly "
                 "one URI SAN (its SPIFFE id), is not a CA, and has keyUsage digitalSignature",
                 NULL,
                 "the server refused our certificate: not a valid X509-SVID (alert %s, "
                 "reason %s)",
                 name, reason);
        return;
    case 116: /* certificate_required */
    case 40:  /* handshake_failure: what TLS 1.2 servers send for a missing certificate */
        if (p->alert == 116 || d->cert == NULL) {
            diag_add(d,
                     d->cert == NULL
                         ? "the server requires mutual TLS: run diagnose with --cert/--key (the "
                           "caller's SVID); an app without a sidecar must call through its own "
                           "outbound sidecar"
                         : "the server did not get our certificate: check that --cert holds the "
                           "leaf first and that --key is its key",
                     NULL,
                     "the server refused the connection: no client certificate (alert %s, "
                     "reason no_client_cert)",
                     name);
            return;
        }
        diag_add(d,
                 "no common TLS parameters: ward speaks TLS 1.2 (ECDHE with AES-GCM or "
                 "ChaCha20) and TLS 1.3 with X25519 or P-256; check the server's TLS settings "
                 "and its log",
                 NULL, "the server aborted the handshake (alert %s)", name);
        return;
    case 70: /* protocol_version */
        diag_add(d, "ward speaks TLS 1.2 and 1.3 only: upgrade or reconfigure the server", NULL,
                 "no common TLS version (alert %s)", name);
        return;
    case 120: /* no_application_protocol */
        diag_add(d,
                 "offer the protocol the server's listener expects: --alpn h2, http/1.1 or "
                 "ward-tcp",
                 NULL, "the server does not accept the protocol %s (alert %s)",
                 d->alpn ? d->alpn : "ward-tcp", name);
        return;
    default:
        diag_add(d, "check the server's log for the handshake failure", NULL,
                 "the server aborted the connection with alert %s (%d; ward reason %s)", name,
                 p->alert, reason);
        return;
    }
}

static void diag_judge_answer(diag_t *d)
{
    const ward_tls_probe_t *p = &d->probe;
    char span[32];
    const char *phase = p->handshake_done ? "after the handshake" : "during the handshake";
    if (p->alert >= 0) {
        diag_judge_alert(d);
    } else if (p->timed_out) {
        diag_add(d,
                 "is this a TLS port? a plain-text server waits for a request that never comes; a "
                 "ward inbound answers within milliseconds unless it is overloaded",
                 NULL,
                 "the TLS handshake timed out: %s accepted the TCP connection but did not "
                 "complete a handshake within %s",
                 d->peer_addr, diag_ms(d->timeout_ms, span, sizeof(span)));
    } else if ((p->closed || p->sys_errno) && p->handshake_done) {
        char why[256] = "";
        const char *fix =
            "a ward inbound closes a connection its policy denies to this identity (for "
            "ward-tcp, with no answer), or when the app behind it is not listening: check the "
            "server's log (\"connection_denied\" lines) and its policy (--admin ADDR)";
        if (d->admin_policy_known && d->admin_policies == 0 &&
            strcmp(d->admin_mesh_default, "deny") == 0) {
            snprintf(why, sizeof(why),
                     "its admin endpoint reports no AuthorizationPolicy and mesh default deny: "
                     "every caller is denied");
            fix = "add an ALLOW AuthorizationPolicy for the caller's identity (check it with "
                  "`wardctl policy check`), or start the server with --mesh-default allow while "
                  "migrating";
        }
        diag_add(d, fix, why, "the server accepted the TLS handshake, then %s the connection",
                 p->closed ? "closed" : "reset");
    } else if (p->closed || p->sys_errno) {
        char why[256];
        snprintf(why, sizeof(why), "%s",
                 p->sys_errno ? strerror(p->sys_errno) : "end of stream, no alert");
        diag_add(d,
                 "the server may not speak TLS on this port, or dropped us without saying why "
                 "(connection limit, draining): check its log, and `wardctl status` on its admin "
                 "port",
                 why, "the server %s the connection %s without an alert",
                 p->closed ? "closed" : "reset", phase);
    } else if (p->reason != WARD_REASON_NONE) {
        diag_add(d,
                 "this address does not speak TLS: is it the app's plain port? point diagnose at "
                 "the sidecar's inbound listener (15006 in transparent mode, the --inbound "
                 "address in explicit mode)",
                 NULL, "TLS protocol error %s: %s", phase, p->detail ? p->detail : "unknown");
    }
}

/* --- admin endpoint ----------------------------------------------------------------------------
 */

/* GET path from a loopback admin endpoint (plain HTTP/1.0). Returns the status code with the body
 * in *body, or -1 with why set. */
static int diag_admin_get(const ward_addr_t *addr, const char *path, uint64_t timeout_ms,
                          ward_strbuf_t *body, char *why, size_t whylen)
{
    int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {(time_t)(timeout_ms / 1000), (suseconds_t)(timeout_ms % 1000 * 1000)};
    if (fd < 0) {
        snprintf(why, whylen, "socket: %s", strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    char req[256];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: ward-admin\r\n\r\n", path);
    if (connect(fd, (const struct sockaddr *)&addr->ss, addr->len) != 0 ||
        send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        snprintf(why, whylen, "%s", strerror(errno));
        close(fd);
        return -1;
    }
    ward_strbuf_t raw = {0};
    char buf[16384];
    ssize_t r;
    while ((r = recv(fd, buf, sizeof(buf), 0)) > 0 && raw.len < DIAG_MAX_BODY)
        if (ward_strbuf_printf(&raw, "%.*s", (int)r, buf) < 0) break;
    close(fd);
    int status = -1;
    const char *sep = raw.data ? strstr(raw.data, "\r\n\r\n") : NULL;
    if (sep == NULL || sscanf(raw.data, "HTTP/1.%*d %d", &status) != 1) {
        snprintf(why, whylen, "not an HTTP response from an admin endpoint");
        ward_strbuf_free(&raw);
        return -1;
    }
    ward_strbuf_printf(body, "%s", sep + 4);
    ward_strbuf_free(&raw);
    return status;
}

static json_t *diag_admin_json(const ward_addr_t *addr, const char *path, uint64_t timeout_ms,
                               char *why, size_t whylen)
{
    ward_strbuf_t body = {0};
    int st = diag_admin_get(addr, path, timeout_ms, &body, why, whylen);
    json_t *j = NULL;
    if (st == 200) {
        json_error_t e;
        j = json_loads(body.data ? body.data : "", 0, &e);
        if (j == NULL) snprintf(why, whylen, "%s is not JSON: %s", path, e.text);
    } else if (st >= 0) {
        snprintf(why, whylen, "%s answered %d", path, st);
    }
    ward_strbuf_free(&body);
    return j;
}

static const char *diag_jstr(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

/* Prints the server's identity and policy summary from its admin endpoint. */
static void diag_admin(diag_t *d)
{
    ward_addr_t addr;
    const char *bad = NULL;
    char why[512], span[32];
    printf("%-16s%s\n", "admin", d->admin);
    if (ward_addr_parse(d->admin, strlen(d->admin), 0, &addr, &bad) < 0) {
        printf("  (not an IP:PORT address: %s)\n", bad);
        return;
    }
    json_t *id = diag_admin_json(&addr, "/identity", d->timeout_ms, why, sizeof(why));
    if (id == NULL) {
        printf("  identity     cannot fetch: %s (is --admin the server's admin port?)\n", why);
    } else {
        const char *sid = diag_jstr(id, "spiffe_id");
        json_int_t exp = json_integer_value(json_object_get(id, "expires_in_seconds"));
        char state[64];
        if (exp >= 0)
            snprintf(state, sizeof(state), "expires in %s", diag_span(exp, span, sizeof(span)));
        else
            snprintf(state, sizeof(state), "EXPIRED %s ago", diag_span(exp, span, sizeof(span)));
        json_int_t roots = json_integer_value(json_object_get(id, "bundle_roots"));
        printf("  identity     %s (from %s), %s, %lld bundle root%s\n", sid[0] ? sid : "none yet",
               diag_jstr(id, "source"), state, (long long)roots, roots == 1 ? "" : "s");
        if (d->have_leaf && sid[0] && strcmp(sid, d->leaf.spiffe_id) != 0)
            printf("  note         this admin endpoint's proxy is not the server of %s (%s)\n",
                   d->target, d->leaf.spiffe_id);
        json_decref(id);
    }
    json_t *pol = diag_admin_json(&addr, "/policy", d->timeout_ms, why, sizeof(why));
    if (pol == NULL) {
        printf("  policy       cannot fetch: %s\n", why);
        return;
    }
    const json_t *list = json_object_get(pol, "policies");
    d->admin_policy_known = 1;
    d->admin_policies = json_array_size(list);
    snprintf(d->admin_mesh_default, sizeof(d->admin_mesh_default), "%s",
             diag_jstr(pol, "mesh_default"));
    printf("  policy       version %lld from %s, mesh default %s, %zu polic%s, %lld rule%s%s\n",
           (long long)json_integer_value(json_object_get(pol, "version")), diag_jstr(pol, "source"),
           diag_jstr(pol, "mesh_default"), json_array_size(list),
           json_array_size(list) == 1 ? "y" : "ies",
           (long long)json_integer_value(json_object_get(pol, "rules")),
           json_integer_value(json_object_get(pol, "rules")) == 1 ? "" : "s",
           json_is_false(json_object_get(pol, "valid")) ? " (last load FAILED)" : "");
    for (size_t i = 0; i < json_array_size(list); i++) {
        const json_t *p = json_array_get(list, i);
        const char *sel = diag_jstr(p, "selector_identity");
        printf("               %-6s %s/%s (%lld rules)%s%s\n", diag_jstr(p, "action"),
               diag_jstr(p, "namespace"), diag_jstr(p, "name"),
               (long long)json_integer_value(json_object_get(p, "rules")), sel[0] ? " for " : "",
               sel);
    }
    json_decref(pol);
}

/* --- the command -------------------------------------------------------------------------------
 */

static void diag_print_tls(const diag_t *d)
{
    const ward_tls_probe_t *p = &d->probe;
    if (p->handshake_done)
        printf("%-16s%s, %s, ALPN %s\n", "tls", p->version ? p->version : "?",
               p->cipher ? p->cipher : "?", p->alpn_selected[0] ? p->alpn_selected : "none");
    else
        printf("%-16shandshake did not complete\n", "tls");
    const char *answer;
    if (p->alert >= 0)
        answer = p->alert_after_handshake ? "refused us after the handshake (alert below)"
                                          : "aborted the handshake (alert below)";
    else if (!p->handshake_done)
        answer = "no handshake";
    else if (p->closed || p->sys_errno)
        answer = "accepted the handshake, then ended the connection";
    else if (p->ticket)
        answer = "accepted (it sent a session ticket after judging our certificate)";
    else if (p->app_bytes > 0)
        answer = "accepted (it sent application data)";
    else
        answer = "accepted (no refusal within 1s of the handshake)";
    printf("%-16s%s\n", "server answer", answer);
}

int wardctl_diagnose(int argc, char **argv)
{
    diag_t d;
    memset(&d, 0, sizeof(d));
    d.signer = -1;
    d.probe.alert = -1;
    for (int i = 0; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            wardctl_diagnose_usage(stdout);
            return 0;
        }
    if (diag_parse(&d, argc, argv) < 0) return 2;
    int rc = 2, fd = -1;
    char err[512], rel[64];
    if (diag_load(&d) < 0) goto out;
    d.now = (int64_t)time(NULL);

    printf("%-16s%s\n", "target", d.target);
    if (d.have_own)
        printf("%-16s%s (%s, %s)\n", "our certificate", diag_own_id(&d), d.cert,
               diag_validity(&d.own, d.now, rel, sizeof(rel)));
    else
        printf("%-16snone (no --cert)\n", "our certificate");
    fd = diag_connect(&d);
    if (fd == -2) {
        fprintf(stderr, "wardctl diagnose: TARGET '%s': give IP:PORT, [IPv6]:PORT or HOST:PORT\n",
                d.target);
        goto out;
    }
    if (fd >= 0) {
        printf("%-16s%s\n", "connected to", d.peer_addr);
        d.probe.cert_file = d.cert;
        d.probe.key_file = d.key;
        d.probe.alpn = d.alpn;
        d.probe.timeout_ms = (int)d.timeout_ms;
        d.probe.listen_ms = d.timeout_ms < DIAG_LISTEN_MS ? (int)d.timeout_ms : DIAG_LISTEN_MS;
        if (ward_tls_probe(fd, &d.probe, err, sizeof(err)) < 0) {
            fprintf(stderr, "wardctl diagnose: %s\n", err);
            goto out;
        }
        d.now = (int64_t)time(NULL);
        diag_print_tls(&d);
        diag_server_chain(&d);
    }
    if (d.admin != NULL) diag_admin(&d);
    if (fd >= 0) {
        diag_judge_server(&d);
        diag_judge_answer(&d);
    }

    for (int i = 0; i < d.nfindings; i++) {
        const diag_finding_t *f = &d.findings[i];
        printf("\n%-9s%s\n", i == 0 ? "verdict:" : "also:", f->what);
        if (f->why[0]) printf("%-9s%s\n", "", f->why);
        printf("%-9s%s\n", "fix:", f->fix);
    }
    if (d.nfindings == 0) {
        if (d.verified && d.have_own)
            printf("\nverdict: OK: %s (verified against %s, %s) accepted our certificate %s "
                   "over %s\n",
                   d.leaf.spiffe_id, d.ca, diag_validity(&d.leaf, d.now, rel, sizeof(rel)),
                   diag_own_id(&d), d.probe.version);
        else
            printf("\nverdict: OK: handshake completed over %s and not refused%s%s\n",
                   d.probe.version ? d.probe.version : "TLS",
                   d.verified ? "" : "; the server's chain was not verified (no --ca)",
                   d.have_own ? ""
                              : "; we sent no client certificate, the server does not "
                                "require one");
    }
    rc = d.nfindings ? 1 : 0;
out:
    if (fd >= 0) close(fd);
    ward_tls_probe_free(&d.probe);
    if (d.nroots > 0) diag_free_der(d.roots, d.roots_len, d.nroots);
    return rc;
}
