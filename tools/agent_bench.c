/* agent_bench.c — ward-agent-bench: simulated proxies against a running ward-agent (issue 3,
 * "Scale"). One libuv thread opens N gRPC/HTTP2 connections to the agent's Unix socket, each with
 * one ward.v1.Mesh/Connect stream that says Hello (no token: the agent attests the bench's uid by
 * its peer credentials, so the agent needs a --workloads line for it) and ACKs every Bundle and
 * PolicySnapshot, like proxy/agent_client.c does. Then, per round, it swaps a changed policy into
 * the agent's --policy-dir (temp file + rename) and measures how long it takes until EVERY stream
 * has received a PolicySnapshot carrying that change.
 *
 * Phases: connect (at most WARD_BENCH_INFLIGHT connections between connect() and their first
 * snapshot) -> settle -> round 1 -> settle -> ... -> done. A stream that closes before the end, a
 * phase that outlives --timeout, or a connect error fails the run (exit 1).
 *
 * Ownership: the stream array is owned by the bench and freed after the loop has closed every
 * handle; each stream's ward_grpc_sock_t owns its fd and gRPC engine until its on_closed. */
#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <uv.h>

#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/grpc.h"
#include "ward/grpc_sock.h"
#include "ward/v1/mesh.pb-c.h"

#define WARD_BENCH_INFLIGHT  200 /* connections between connect() and their first snapshot */
#define WARD_BENCH_RETRY_MS  5   /* listen backlog full (EAGAIN): try again this much later */
#define WARD_BENCH_SETTLE_MS 300 /* pause before each round: ACKs drain, the agent goes idle */
#define WARD_BENCH_POLICY    "ward-bench.yaml"
#define WARD_BENCH_IDENTITY  "spiffe://bench.local/ns/bench/sa/proxy"

typedef enum {
    WARD_BENCH_S_IDLE,       /* not connected yet */
    WARD_BENCH_S_CONNECTING, /* connected, Hello sent, no snapshot yet */
    WARD_BENCH_S_READY,      /* holds a policy snapshot */
    WARD_BENCH_S_CLOSED
} ward_bench_state_t;

typedef enum {
    WARD_BENCH_P_CONNECT,
    WARD_BENCH_P_SETTLE,
    WARD_BENCH_P_ROUND,
    WARD_BENCH_P_DONE
} ward_bench_phase_t;

typedef struct ward_bench ward_bench_t;

/* One simulated proxy: one connection, one Mesh/Connect call. */
typedef struct {
    ward_grpc_sock_t sock; /* first: the sock's data points back here */
    ward_bench_t *b;
    ward_grpc_call_t *call;
    ward_bench_state_t state;
    int sock_open;
    uint64_t policy_version; /* of the last snapshot received */
    uint64_t round_base;     /* policy_version when the current round started */
    uint64_t updated_ns;     /* this round: when the new snapshot arrived; 0 = not yet */
} ward_bench_stream_t;

typedef struct {
    uint64_t min_ns, median_ns, p99_ns, max_ns;
    uint64_t agent_cpu_ms;
} ward_bench_round_t;

struct ward_bench {
    uv_loop_t *loop;
    /* options */
    const char *agent_path;
    const char *policy_dir;
    const char *identity;
    uint32_t nstreams;
    uint32_t nrounds;
    uint64_t timeout_ms;
    pid_t agent_pid; /* 0: unknown (no SIGHUP, no RSS) */
    int sighup;
    /* state */
    ward_bench_stream_t *streams;
    ward_bench_phase_t phase;
    uint32_t next_connect;
    uint32_t inflight;
    uint32_t ready;
    uint32_t pending; /* this round: streams without the new snapshot */
    uint32_t round;
    uint32_t stale; /* snapshots newer than the round's base but without its change */
    uint32_t nopen; /* sockets not yet closed */
    uint64_t phase_ns;
    uint64_t t0_ns;
    uint64_t cpu0_ms;
    uint64_t establish_ns;
    uint64_t marker_seq;
    char marker[96];         /* the path this round's policy carries */
    uint64_t agent_base_kib; /* agent RSS before the first connect */
    uint64_t agent_rss_kib;  /* ... and with every stream established */
    int agent_fds;
    uint64_t *lat_ns; /* nrounds * nstreams samples */
    ward_bench_round_t *rounds;
    uv_timer_t retry;
    uv_timer_t phase_timer; /* --timeout of the current phase */
    uv_timer_t settle;
    uv_timer_t done; /* ends the run outside of any engine callback */
    int failed;
    char error[512];
};

static ProtobufCAllocator ward__pb = {ward_pb_alloc, ward_pb_free, NULL};

static void ward__bench_pump(ward_bench_t *b);
static void ward__bench_finish(ward_bench_t *b);
static void ward__on_done(uv_timer_t *t);

static double ward__ms(uint64_t ns)
{
    return (double)ns / 1e6;
}

/* Records the first failure and ends the run (soon: see ward__bench_finish). */
static void ward__bench_fail(ward_bench_t *b, const char *fmt, ...)
{
    if (b->phase == WARD_BENCH_P_DONE) return;
    if (!b->failed) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(b->error, sizeof(b->error), fmt, ap);
        va_end(ap);
        b->failed = 1;
    }
    ward__bench_finish(b);
}

/* --- the agent process, from /proc ---------------------------------------------------------- */

/* VmRSS in KiB, or 0 when unreadable. */
static uint64_t ward__proc_rss_kib(pid_t pid)
{
    char path[64], line[256];
    uint64_t kib = 0;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) return 0;
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "VmRSS: %" SCNu64, &kib) == 1) break;
    fclose(f);
    return kib;
}

/* Open descriptors, or -1 when unreadable. */
static int ward__proc_fds(pid_t pid)
{
    char path[64];
    int n = 0;
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    if (d == NULL) return -1;
    for (struct dirent *e; (e = readdir(d)) != NULL;)
        if (e->d_name[0] != '.') n++;
    closedir(d);
    return n;
}

/* utime + stime in ms (clock-tick resolution), or 0 when unreadable. */
static uint64_t ward__proc_cpu_ms(pid_t pid)
{
    char path[64], buf[1024];
    unsigned long long ut = 0, st = 0;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    if (f == NULL) return 0;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* The command name may hold spaces and parentheses: fields resume after the last ')'. */
    const char *p = strrchr(buf, ')');
    if (p == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return 0;
    long hz = sysconf(_SC_CLK_TCK);
    return hz > 0 ? (uint64_t)(ut + st) * 1000 / (uint64_t)hz : 0;
}

/* Prints the agent's RSS and descriptors; returns the RSS in KiB. */
static uint64_t ward__print_agent(const ward_bench_t *b, const char *when, int *fds_out)
{
    uint64_t kib = ward__proc_rss_kib(b->agent_pid);
    int fds = ward__proc_fds(b->agent_pid);
    printf("agent %s: rss %.1f MiB, fds %d", when, (double)kib / 1024, fds);
    if (b->agent_base_kib && kib > b->agent_base_kib && b->ready)
        printf(" (+%.1f KiB per stream)", (double)(kib - b->agent_base_kib) / b->ready);
    printf("\n");
    if (fds_out) *fds_out = fds;
    return kib;
}

/* --- messages ------------------------------------------------------------------------------- */

static void ward__bench_send(ward_bench_stream_t *st, const Ward__V1__ProxyMessage *m)
{
    uint8_t small[256];
    size_t n = protobuf_c_message_get_packed_size(&m->base);
    uint8_t *buf = n <= sizeof(small) ? small : ward_malloc(n);
    if (buf == NULL) return;
    protobuf_c_message_pack(&m->base, buf);
    if (ward_grpc_call_send(st->call, buf, n) < 0)
        ward__bench_fail(st->b, "stream %td: cannot queue a message", st - st->b->streams);
    if (buf != small) ward_free(buf);
}

static void ward__bench_ack(ward_bench_stream_t *st, Ward__V1__ResourceKind kind, uint64_t version)
{
    Ward__V1__Ack ack = WARD__V1__ACK__INIT;
    ack.kind = kind;
    ack.version = version;
    ack.accepted = 1;
    Ward__V1__ProxyMessage m = WARD__V1__PROXY_MESSAGE__INIT;
    m.msg_case = WARD__V1__PROXY_MESSAGE__MSG_ACK;
    m.ack = &ack;
    ward__bench_send(st, &m);
}

/* 1 if the snapshot holds the bench's policy with this round's path. */
static int ward__has_marker(const Ward__V1__PolicySnapshot *p, const char *marker)
{
    for (size_t i = 0; i < p->n_policies; i++) {
        const Ward__V1__AuthorizationPolicy *ap = p->policies[i];
        if (ap->name == NULL || strcmp(ap->name, "ward-bench") != 0) continue;
        for (size_t r = 0; r < ap->n_rules; r++)
            for (size_t o = 0; o < ap->rules[r]->n_to; o++)
                for (size_t k = 0; k < ap->rules[r]->to[o]->n_paths; k++)
                    if (strcmp(ap->rules[r]->to[o]->paths[k], marker) == 0) return 1;
    }
    return 0;
}

static void ward__bench_round_done(ward_bench_t *b);
static void ward__bench_established(ward_bench_t *b);

static void ward__on_policy(ward_bench_stream_t *st, const Ward__V1__PolicySnapshot *p)
{
    ward_bench_t *b = st->b;
    uint64_t now = uv_hrtime();
    st->policy_version = p->version;
    ward__bench_ack(st, WARD__V1__RESOURCE_KIND__RESOURCE_KIND_POLICY, p->version);
    if (st->state == WARD_BENCH_S_CONNECTING) {
        st->state = WARD_BENCH_S_READY;
        b->inflight--;
        b->ready++;
        if (b->phase == WARD_BENCH_P_CONNECT) {
            if (b->ready == b->nstreams)
                ward__bench_established(b);
            else
                ward__bench_pump(b);
        }
        return;
    }
    if (b->phase != WARD_BENCH_P_ROUND || st->updated_ns != 0 || p->version <= st->round_base)
        return;
    if (!ward__has_marker(p, b->marker)) {
        b->stale++;
        return;
    }
    st->updated_ns = now;
    if (--b->pending == 0) ward__bench_round_done(b);
}

static void ward__on_message(ward_grpc_call_t *call, const uint8_t *msg, size_t len, void *data)
{
    ward_bench_stream_t *st = data;
    Ward__V1__AgentMessage *m = ward__v1__agent_message__unpack(&ward__pb, len, msg);
    if (m == NULL) {
        ward__bench_fail(st->b, "stream %td: malformed AgentMessage", st - st->b->streams);
        return;
    }
    switch (m->msg_case) {
    case WARD__V1__AGENT_MESSAGE__MSG_BUNDLE:
        ward__bench_ack(st, WARD__V1__RESOURCE_KIND__RESOURCE_KIND_BUNDLE, m->bundle->version);
        break;
    case WARD__V1__AGENT_MESSAGE__MSG_POLICY:
        ward__on_policy(st, m->policy);
        break;
    case WARD__V1__AGENT_MESSAGE__MSG_STATUS:
        ward__bench_fail(st->b, "stream %td: agent sent status %d: %s", st - st->b->streams,
                         m->status->code, m->status->message ? m->status->message : "");
        break;
    default:
        break;
    }
    ward__v1__agent_message__free_unpacked(m, &ward__pb);
}

static void ward__on_close(ward_grpc_call_t *call, int status, const char *message, void *data)
{
    ward_bench_stream_t *st = data;
    st->call = NULL;
    /* Any stream ending before the run does is a failure; the run's end closes the socket. */
    ward__bench_fail(st->b, "stream %td closed: grpc-status %d: %s", st - st->b->streams, status,
                     message);
}

static const ward_grpc_callbacks_t ward__bench_callbacks = {
    .on_message = ward__on_message,
    .on_close = ward__on_close,
};

/* --- connections ---------------------------------------------------------------------------- */

static int ward__on_ready(ward_grpc_sock_t *s)
{
    ward_bench_stream_t *st = s->data;
    int rc = ward_grpc_call_start(s->grpc, "/ward.v1.Mesh/Connect", "localhost", NULL, 0, 0,
                                  uv_now(st->b->loop), st, &st->call);
    if (rc < 0) return rc;
    Ward__V1__Hello h = WARD__V1__HELLO__INIT;
    h.token = (char *)"";
    h.node = (char *)"bench";
    h.pod = (char *)"";
    h.namespace_ = (char *)"";
    h.proxy_version = (char *)"ward-agent-bench " WARD_VERSION;
    Ward__V1__ProxyMessage m = WARD__V1__PROXY_MESSAGE__INIT;
    m.msg_case = WARD__V1__PROXY_MESSAGE__MSG_HELLO;
    m.hello = &h;
    ward__bench_send(st, &m);
    return 0;
}

static void ward__on_closed(ward_grpc_sock_t *s, const char *reason)
{
    ward_bench_stream_t *st = s->data;
    ward_bench_t *b = st->b;
    st->sock_open = 0;
    st->call = NULL;
    if (st->state == WARD_BENCH_S_CONNECTING) b->inflight--;
    st->state = WARD_BENCH_S_CLOSED;
    b->nopen--;
    ward__bench_fail(b, "stream %td: connection closed: %s", st - b->streams,
                     reason ? reason : "closed");
}

/* Connects stream st; returns 0, -EAGAIN (backlog full: try later) or another negative error. */
static int ward__bench_connect(ward_bench_t *b, ward_bench_stream_t *st)
{
    struct sockaddr_un sun;
    memset(&sun, 0, sizeof(sun));
    sun.sun_family = AF_UNIX;
    memcpy(sun.sun_path, b->agent_path, strlen(b->agent_path));
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -errno;
    if (connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
        int e = errno;
        close(fd);
        return -e;
    }
    memset(&st->sock, 0, sizeof(st->sock));
    st->sock.data = st;
    st->sock.on_ready = ward__on_ready;
    st->sock.on_closed = ward__on_closed;
    ward_grpc_conn_t *g = ward_grpc_conn_new(0, &ward__bench_callbacks, NULL, st);
    if (g == NULL) {
        close(fd);
        return WARD_ENOMEM;
    }
    st->sock_open = 1;
    st->state = WARD_BENCH_S_CONNECTING;
    b->inflight++;
    b->nopen++;
    int rc = ward_grpc_sock_start(&st->sock, b->loop, fd, NULL, g);
    if (rc < 0) {
        st->sock_open = 0;
        st->state = WARD_BENCH_S_IDLE;
        b->inflight--;
        b->nopen--;
        ward_grpc_conn_free(g);
        close(fd);
        return rc;
    }
    return 0;
}

static void ward__on_retry(uv_timer_t *t)
{
    ward__bench_pump(t->data);
}

/* Opens connections while fewer than WARD_BENCH_INFLIGHT wait for their first snapshot. */
static void ward__bench_pump(ward_bench_t *b)
{
    while (b->phase == WARD_BENCH_P_CONNECT && b->next_connect < b->nstreams &&
           b->inflight < WARD_BENCH_INFLIGHT) {
        int rc = ward__bench_connect(b, &b->streams[b->next_connect]);
        if (rc == -EAGAIN) {
            if (!uv_is_active((uv_handle_t *)&b->retry))
                uv_timer_start(&b->retry, ward__on_retry, WARD_BENCH_RETRY_MS, 0);
            return;
        }
        if (rc < 0) {
            ward__bench_fail(b, "connect %" PRIu32 " to unix:%s: %s%s", b->next_connect + 1,
                             b->agent_path, ward_strerror(rc),
                             rc == -EMFILE ? " (raise ulimit -n)" : "");
            return;
        }
        b->next_connect++;
    }
}

/* --- phases --------------------------------------------------------------------------------- */

static void ward__on_phase_timeout(uv_timer_t *t)
{
    ward_bench_t *b = t->data;
    if (b->phase == WARD_BENCH_P_CONNECT)
        ward__bench_fail(b,
                         "timeout: only %" PRIu32 " of %" PRIu32 " streams got their first "
                         "policy snapshot within %" PRIu64 " s",
                         b->ready, b->nstreams, b->timeout_ms / 1000);
    else
        ward__bench_fail(b,
                         "timeout: round %" PRIu32 ": %" PRIu32 " of %" PRIu32 " streams still "
                         "lack the new policy after %" PRIu64 " s (%" PRIu32 " stale snapshots)",
                         b->round, b->pending, b->nstreams, b->timeout_ms / 1000, b->stale);
}

/* Writes the round's policy to a dot-file (the agent skips those) and renames it into place;
 * t0 is taken just before the rename. */
static int ward__bench_write_policy(ward_bench_t *b)
{
    char tmp[4096], dst[4096];
    snprintf(b->marker, sizeof(b->marker), "/bench/%d-%" PRIu64 "/round-%" PRIu32, (int)getpid(),
             b->marker_seq, b->round);
    int n1 = snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", b->policy_dir, WARD_BENCH_POLICY);
    int n2 = snprintf(dst, sizeof(dst), "%s/%s", b->policy_dir, WARD_BENCH_POLICY);
    if (n1 < 0 || n2 < 0 || (size_t)n1 >= sizeof(tmp) || (size_t)n2 >= sizeof(dst))
        return WARD_ETOOLONG;
    FILE *f = fopen(tmp, "w");
    if (f == NULL) return -errno;
    fprintf(f,
            "# Written by ward-agent-bench: round %" PRIu32 " of a policy push measurement.\n"
            "apiVersion: ward.dev/v1\n"
            "kind: AuthorizationPolicy\n"
            "metadata: {name: ward-bench, namespace: bench}\n"
            "spec:\n"
            "  selector: {identity: \"%s\"}\n"
            "  action: ALLOW\n"
            "  rules:\n"
            "  - from: [{identities: [\"%s\"]}]\n"
            "    to:   [{ports: [8080], methods: [GET], paths: [\"%s\"]}]\n",
            b->round, b->identity, b->identity, b->marker);
    if (fclose(f) != 0) {
        int e = errno;
        unlink(tmp);
        return -e;
    }
    b->cpu0_ms = b->agent_pid > 0 ? ward__proc_cpu_ms(b->agent_pid) : 0;
    b->t0_ns = uv_hrtime();
    if (rename(tmp, dst) != 0) {
        int e = errno;
        unlink(tmp);
        return -e;
    }
    if (b->sighup && kill(b->agent_pid, SIGHUP) != 0) return -errno;
    return 0;
}

static void ward__on_settled(uv_timer_t *t)
{
    ward_bench_t *b = t->data;
    if (b->phase != WARD_BENCH_P_SETTLE) return;
    b->round++;
    b->marker_seq = uv_hrtime();
    b->stale = 0;
    for (uint32_t i = 0; i < b->nstreams; i++) {
        b->streams[i].round_base = b->streams[i].policy_version;
        b->streams[i].updated_ns = 0;
    }
    b->pending = b->nstreams;
    b->phase = WARD_BENCH_P_ROUND;
    int rc = ward__bench_write_policy(b);
    if (rc < 0) {
        ward__bench_fail(b, "round %" PRIu32 ": cannot update %s/%s: %s", b->round, b->policy_dir,
                         WARD_BENCH_POLICY, ward_strerror(rc));
        return;
    }
    uv_timer_start(&b->phase_timer, ward__on_phase_timeout, b->timeout_ms, 0);
}

static void ward__bench_settle(ward_bench_t *b)
{
    b->phase = WARD_BENCH_P_SETTLE;
    uv_timer_stop(&b->phase_timer);
    uv_timer_start(&b->settle, ward__on_settled, WARD_BENCH_SETTLE_MS, 0);
}

static void ward__bench_established(ward_bench_t *b)
{
    b->establish_ns = uv_hrtime() - b->phase_ns;
    printf("established %" PRIu32 "/%" PRIu32 " streams in %.1f ms (each has its first policy "
           "snapshot; up to %d connects in flight)\n",
           b->ready, b->nstreams, ward__ms(b->establish_ns), WARD_BENCH_INFLIGHT);
    if (b->agent_pid > 0) {
        char when[64];
        snprintf(when, sizeof(when), "holding %" PRIu32 " streams", b->ready);
        b->agent_rss_kib = ward__print_agent(b, when, &b->agent_fds);
    }
    fflush(stdout);
    ward__bench_settle(b);
}

static int ward__cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, c = *(const uint64_t *)y;
    return a < c ? -1 : a > c;
}

/* Nearest-rank percentile of sorted v[0..n). */
static uint64_t ward__pct(const uint64_t *v, size_t n, unsigned pct)
{
    size_t rank = (n * pct + 99) / 100;
    return v[rank ? rank - 1 : 0];
}

static const char *ward__latency_label(const ward_bench_t *b)
{
    return b->sighup ? "push latency (rename + SIGHUP -> snapshot)"
                     : "end-to-end latency (rename -> agent's policy poll -> snapshot)";
}

static void ward__bench_round_done(ward_bench_t *b)
{
    uint64_t *lat = b->lat_ns + (size_t)(b->round - 1) * b->nstreams;
    ward_bench_round_t *r = &b->rounds[b->round - 1];
    for (uint32_t i = 0; i < b->nstreams; i++)
        lat[i] = b->streams[i].updated_ns - b->t0_ns;
    qsort(lat, b->nstreams, sizeof(*lat), ward__cmp_u64);
    r->min_ns = lat[0];
    r->median_ns = ward__pct(lat, b->nstreams, 50);
    r->p99_ns = ward__pct(lat, b->nstreams, 99);
    r->max_ns = lat[b->nstreams - 1];
    r->agent_cpu_ms = b->agent_pid > 0 ? ward__proc_cpu_ms(b->agent_pid) - b->cpu0_ms : 0;
    printf("round %" PRIu32 ": %" PRIu32 "/%" PRIu32 " streams updated; %s: first %.1f ms, "
           "median %.1f ms, p99 %.1f ms, max %.1f ms",
           b->round, b->nstreams, b->nstreams, ward__latency_label(b), ward__ms(r->min_ns),
           ward__ms(r->median_ns), ward__ms(r->p99_ns), ward__ms(r->max_ns));
    if (b->agent_pid > 0) printf("; agent cpu %" PRIu64 " ms", r->agent_cpu_ms);
    printf("\n");
    fflush(stdout);
    if (b->round < b->nrounds) {
        ward__bench_settle(b);
        return;
    }
    ward__bench_finish(b);
}

/* Ends the run. Callers are often inside a gRPC engine callback, where freeing that engine is not
 * allowed: the sockets are closed from a 0 ms timer instead. */
static void ward__bench_finish(ward_bench_t *b)
{
    if (b->phase == WARD_BENCH_P_DONE) return;
    b->phase = WARD_BENCH_P_DONE;
    uv_timer_stop(&b->retry);
    uv_timer_stop(&b->phase_timer);
    uv_timer_stop(&b->settle);
    uv_timer_start(&b->done, ward__on_done, 0, 0);
}

static void ward__on_done(uv_timer_t *t)
{
    ward_bench_t *b = t->data;
    if (!b->failed && b->agent_pid > 0) ward__print_agent(b, "after the rounds", NULL);
    for (uint32_t i = 0; i < b->nstreams; i++)
        if (b->streams[i].sock_open) ward_grpc_sock_close(&b->streams[i].sock, "bench done");
    uv_close((uv_handle_t *)&b->retry, NULL);
    uv_close((uv_handle_t *)&b->phase_timer, NULL);
    uv_close((uv_handle_t *)&b->settle, NULL);
    uv_close((uv_handle_t *)&b->done, NULL);
}

/* --- report --------------------------------------------------------------------------------- */

static void ward__bench_report(ward_bench_t *b)
{
    size_t n = (size_t)b->nrounds * b->nstreams;
    qsort(b->lat_ns, n, sizeof(*b->lat_ns), ward__cmp_u64);
    uint64_t med = ward__pct(b->lat_ns, n, 50), p99 = ward__pct(b->lat_ns, n, 99);
    uint64_t max = b->lat_ns[n - 1];
    printf("overall (%" PRIu32 " rounds x %" PRIu32 " streams): %s: median %.1f ms, p99 %.1f ms, "
           "max %.1f ms\n",
           b->nrounds, b->nstreams, ward__latency_label(b), ward__ms(med), ward__ms(p99),
           ward__ms(max));
    /* One machine-readable line for scripts (tools/bench/agent-scale). */
    printf("result streams=%" PRIu32 " held=%" PRIu32 " establish_ms=%.1f rounds=%" PRIu32
           " trigger=%s median_ms=%.1f p99_ms=%.1f max_ms=%.1f",
           b->nstreams, b->ready, ward__ms(b->establish_ns), b->nrounds,
           b->sighup ? "sighup" : "poll", ward__ms(med), ward__ms(p99), ward__ms(max));
    if (b->agent_pid > 0)
        printf(" agent_rss_kib=%" PRIu64 " agent_fds=%d", b->agent_rss_kib, b->agent_fds);
    printf("\n");
}

/* --- options -------------------------------------------------------------------------------- */

static void ward__usage(FILE *out)
{
    fputs("usage: ward-agent-bench --agent unix:PATH --policy-dir DIR [options]\n"
          "\n"
          "Simulates N proxies against a running ward-agent: N connections, each with one\n"
          "ward.v1.Mesh/Connect stream that sends Hello (no token: the agent attests this\n"
          "process's uid, so give the agent a --workloads line for it) and ACKs every Bundle\n"
          "and PolicySnapshot. Once every stream holds a snapshot, each round renames a changed\n"
          "policy (" WARD_BENCH_POLICY ", selecting --identity) into the agent's policy\n"
          "directory and measures the time until EVERY stream has received it.\n"
          "\n"
          "  --agent unix:PATH   the agent's Unix socket\n"
          "  --policy-dir DIR    the agent's --policy-dir (the bench writes " WARD_BENCH_POLICY
          " there\n"
          "                      and leaves the last round's version in place)\n"
          "  --streams N         simulated proxies (2000)\n"
          "  --rounds K          policy changes to measure (3)\n"
          "  --timeout S         limit for establishing all streams, and for each round (30)\n"
          "  --agent-pid PID     send the agent SIGHUP right after each rename (immediate reload:\n"
          "                      measures the push itself), and report its RSS, fds and CPU\n"
          "  --no-sighup         with --agent-pid: let the agent's 1 s directory poll find the\n"
          "                      change (end-to-end latency)\n"
          "  --identity ID       the SPIFFE id the agent attests this uid as, selected by the\n"
          "                      bench's policy (" WARD_BENCH_IDENTITY ")\n"
          "  --help\n"
          "\n"
          "Prints one line per phase and a final 'result key=value ...' line. Exit status: 0 when\n"
          "every stream got every change, 1 on a failure or timeout, 2 on a usage error.\n",
          out);
}

static int ward__parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < min || v > max)
        return WARD_ERANGE;
    *out = v;
    return 0;
}

/* Returns 0, 1 (--help printed) or 2 (usage error, printed). */
static int ward__parse(ward_bench_t *b, int argc, char **argv)
{
    enum { O_AGENT = 256, O_POLICY, O_STREAMS, O_ROUNDS, O_TIMEOUT, O_PID, O_NOHUP, O_ID, O_HELP };
    static const struct option opts[] = {{"agent", required_argument, NULL, O_AGENT},
                                         {"policy-dir", required_argument, NULL, O_POLICY},
                                         {"streams", required_argument, NULL, O_STREAMS},
                                         {"rounds", required_argument, NULL, O_ROUNDS},
                                         {"timeout", required_argument, NULL, O_TIMEOUT},
                                         {"agent-pid", required_argument, NULL, O_PID},
                                         {"no-sighup", no_argument, NULL, O_NOHUP},
                                         {"identity", required_argument, NULL, O_ID},
                                         {"help", no_argument, NULL, O_HELP},
                                         {NULL, 0, NULL, 0}};
    uint64_t v;
    int ch, nohup = 0;
    b->nstreams = 2000;
    b->nrounds = 3;
    b->timeout_ms = 30000;
    b->identity = WARD_BENCH_IDENTITY;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        switch (ch) {
        case O_AGENT:
            if (strncmp(optarg, "unix:", 5) != 0 || optarg[5] == '\0' ||
                strlen(optarg + 5) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
                fprintf(stderr, "ward-agent-bench: --agent '%s': expected unix:PATH\n", optarg);
                return 2;
            }
            b->agent_path = optarg + 5;
            break;
        case O_POLICY:
            b->policy_dir = optarg;
            break;
        case O_STREAMS:
        case O_ROUNDS:
        case O_TIMEOUT:
        case O_PID:
            if (ward__parse_u64(optarg, 1,
                                ch == O_STREAMS   ? 1000000
                                : ch == O_ROUNDS  ? 1000
                                : ch == O_TIMEOUT ? 3600
                                                  : 0x7fffffff,
                                &v) < 0) {
                const struct option *o = opts;
                while (o->val != ch)
                    o++;
                fprintf(stderr, "ward-agent-bench: --%s '%s': out of range\n", o->name, optarg);
                return 2;
            }
            if (ch == O_STREAMS) b->nstreams = (uint32_t)v;
            if (ch == O_ROUNDS) b->nrounds = (uint32_t)v;
            if (ch == O_TIMEOUT) b->timeout_ms = v * 1000;
            if (ch == O_PID) b->agent_pid = (pid_t)v;
            break;
        case O_NOHUP:
            nohup = 1;
            break;
        case O_ID:
            b->identity = optarg;
            break;
        case O_HELP:
            ward__usage(stdout);
            return 1;
        case ':':
            fprintf(stderr, "ward-agent-bench: %s needs a value (see --help)\n", argv[optind - 1]);
            return 2;
        default:
            fprintf(stderr, "ward-agent-bench: unknown option '%s' (see --help)\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "ward-agent-bench: unexpected argument '%s' (see --help)\n", argv[optind]);
        return 2;
    }
    if (b->agent_path == NULL || b->policy_dir == NULL) {
        fprintf(stderr, "ward-agent-bench: --agent and --policy-dir are required (see --help)\n");
        return 2;
    }
    if (strpbrk(b->identity, "\"\\\n") != NULL) {
        fprintf(stderr, "ward-agent-bench: --identity '%s': not a SPIFFE id\n", b->identity);
        return 2;
    }
    if (b->agent_pid > 0 && kill(b->agent_pid, 0) != 0) {
        fprintf(stderr, "ward-agent-bench: --agent-pid %d: %s\n", (int)b->agent_pid,
                strerror(errno));
        return 2;
    }
    b->sighup = b->agent_pid > 0 && !nohup;
    return 0;
}

/* N streams need N descriptors here: raise the soft limit as far as the hard one allows. */
static int ward__raise_nofile(uint32_t need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return -errno;
    rlim_t want = (rlim_t)need + 64;
    if (rl.rlim_cur >= want) return 0;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < want) return WARD_ERANGE;
    rl.rlim_cur = want;
    return setrlimit(RLIMIT_NOFILE, &rl) == 0 ? 0 : -errno;
}

int main(int argc, char **argv)
{
    ward_bench_t bench, *b = &bench;
    int rc;

    memset(b, 0, sizeof(*b));
    signal(SIGPIPE, SIG_IGN);
    ward_alloc_install(NULL);
    rc = ward__parse(b, argc, argv);
    if (rc != 0) return rc == 1 ? 0 : 2;
    if (ward__raise_nofile(b->nstreams) < 0) {
        fprintf(stderr,
                "ward-agent-bench: %" PRIu32 " streams need %" PRIu32 " descriptors: "
                "raise ulimit -n\n",
                b->nstreams, b->nstreams + 64);
        return 1;
    }
    b->streams = ward_calloc(b->nstreams, sizeof(*b->streams));
    b->lat_ns = ward_calloc((size_t)b->nrounds * b->nstreams, sizeof(*b->lat_ns));
    b->rounds = ward_calloc(b->nrounds, sizeof(*b->rounds));
    if (b->streams == NULL || b->lat_ns == NULL || b->rounds == NULL) {
        fprintf(stderr, "ward-agent-bench: out of memory\n");
        rc = 1;
        goto out_free;
    }
    for (uint32_t i = 0; i < b->nstreams; i++)
        b->streams[i].b = b;
    b->loop = uv_default_loop();
    uv_timer_init(b->loop, &b->retry);
    uv_timer_init(b->loop, &b->phase_timer);
    uv_timer_init(b->loop, &b->settle);
    uv_timer_init(b->loop, &b->done);
    b->retry.data = b->phase_timer.data = b->settle.data = b->done.data = b;

    printf("ward-agent-bench: %" PRIu32 " streams to unix:%s, %" PRIu32 " rounds, policy dir %s, "
           "trigger %s\n",
           b->nstreams, b->agent_path, b->nrounds, b->policy_dir,
           b->sighup ? "SIGHUP after rename" : "the agent's directory poll");
    if (b->agent_pid > 0) b->agent_base_kib = ward__print_agent(b, "before", NULL);
    fflush(stdout);
    b->phase = WARD_BENCH_P_CONNECT;
    b->phase_ns = uv_hrtime();
    uv_timer_start(&b->phase_timer, ward__on_phase_timeout, b->timeout_ms, 0);
    ward__bench_pump(b);
    uv_run(b->loop, UV_RUN_DEFAULT);
    /* Every handle is closed here; the agent was measured while the streams were held. */
    rc = b->failed ? 1 : 0;
    if (b->failed) {
        fprintf(stderr, "ward-agent-bench: FAILED: %s\n", b->error);
        printf("result streams=%" PRIu32 " held=%" PRIu32 " failed=1\n", b->nstreams, b->ready);
    } else {
        ward__bench_report(b);
    }
    uv_loop_close(b->loop);
out_free:
    ward_free(b->streams);
    ward_free(b->lat_ns);
    ward_free(b->rounds);
    return rc;
}
