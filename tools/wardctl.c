/* wardctl.c — the operator's command line.
 *
 *   wardctl policy check FILE|DIR...   validate AuthorizationPolicy YAML (file:line:column errors)
 *   wardctl policy test --policy FILE|DIR --from ID --to ID [request...]
 *                                      decide one request as the proxy of --to would, and say
 *                                      which policy and rule decided (wardctl_policy_test.c)
 *   wardctl cert inspect FILE [--ca BUNDLE] [--expect ID]
 *                                      show an SVID: SPIFFE id, validity, issuer, and whether it
 *                                      passes ward's X509-SVID checks (against BUNDLE if given)
 *   wardctl status [ADMIN_ADDR]        summarise a running proxy from its admin endpoint
 *                                      (default 127.0.0.1:15000): identity, expiry countdown,
 *                                      agent stream, open connections, refusals by reason
 *
 * Exit status: 0 valid, 1 invalid (the reason is printed), 2 usage error. Later issues add
 * `diagnose`, `status` and `inject`. */
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "ward/addr.h"
#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/policy.h"
#include "ward/strbuf.h"
#include "ward/tls.h"
#include "wardctl_diagnose.h"
#include "wardctl_policy_test.h"
#include "wardctl_inject.h"

#define WARDCTL_MAX_FILE (1u << 20)

static void usage(FILE *out)
{
    fputs("usage: wardctl <command> ...\n"
          "\n"
          "  policy check FILE|DIR...    validate AuthorizationPolicy YAML files (a directory:\n"
          "                              every *.yaml / *.yml in it, ConfigMap layouts too)\n"
          "  policy test --policy FILE|DIR --from ID --to ID [--port N] [--method M --path P]\n"
          "              [--header N=V]... [--source IP] [--hour H] [--mesh-default D]\n"
          "                              decide one request as the proxy of --to would: ALLOW or\n"
          "                              DENY, the reason, the deciding policy and rule (exit 0\n"
          "                              ALLOW, 1 DENY, 2 error; policy test --help)\n"
          "  cert inspect FILE [--ca BUNDLE] [--expect SPIFFE-ID]\n"
          "                              show an X509-SVID and check it as a ward peer would\n"
          "  status [ADMIN_ADDR]         summarise a running proxy (default 127.0.0.1:15000)\n"
          "  diagnose TARGET [--cert F --key F] [--ca F] [--expect ID] [--admin ADDR] ...\n"
          "                              connect to an mTLS server as a sidecar would and say\n"
          "                              why it works or fails (diagnose --help)\n"
          "  inject -f FILE|- [-o yaml|json] [options]\n"
          "                              add the ward sidecar to the pod templates of manifests\n"
          "                              (inject --help)\n"
          "  --help, --version\n"
          "\n"
          "Exit status: 0 valid / healthy, 1 invalid / not ready / unreachable (reason printed),\n"
          "2 usage error.\n",
          out);
}

static char *read_file(const char *path, size_t *len, char *why, size_t whylen)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        snprintf(why, whylen, "%s", strerror(errno));
        return NULL;
    }
    char *buf = ward_malloc(WARDCTL_MAX_FILE + 1);
    size_t n = buf ? fread(buf, 1, WARDCTL_MAX_FILE + 1, f) : 0;
    fclose(f);
    if (buf == NULL) {
        snprintf(why, whylen, "out of memory");
        return NULL;
    }
    if (n > WARDCTL_MAX_FILE) {
        snprintf(why, whylen, "larger than 1 MiB");
        ward_free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

static void print_policy_error(const ward_policy_error_t *e)
{
    if (e->line > 0)
        fprintf(stderr, "%s:%d:%d: %s\n", e->file, e->line, e->column, e->message);
    else
        fprintf(stderr, "%s: %s\n", e->file, e->message);
}

static int policy_check(int argc, char **argv)
{
    if (argc < 1) {
        fprintf(stderr, "wardctl policy check: give one or more files or directories\n");
        return 2;
    }
    int bad = 0;
    size_t total = 0;
    for (int i = 0; i < argc; i++) {
        ward_policy_set_t set;
        ward_policy_error_t e;
        struct stat st;
        int rc;
        memset(&e, 0, sizeof(e));
        ward_policy_set_init(&set);
        if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode)) {
            rc = ward_policy_load_dir(argv[i], &set, &e);
        } else {
            char why[128];
            size_t len = 0;
            char *text = read_file(argv[i], &len, why, sizeof(why));
            if (text == NULL) {
                fprintf(stderr, "%s: %s\n", argv[i], why);
                bad = 1;
                ward_policy_set_free(&set);
                continue;
            }
            rc = ward_policy_parse(text, len, argv[i], &set, &e);
            ward_free(text);
        }
        if (rc < 0) {
            if (e.file[0] == '\0') snprintf(e.file, sizeof(e.file), "%s", argv[i]);
            if (e.message[0] == '\0')
                snprintf(e.message, sizeof(e.message), "%s", ward_strerror(rc));
            print_policy_error(&e);
            bad = 1;
        } else {
            size_t n = ward_policy_set_count(&set);
            total += n;
            printf("%s: ok (%zu %s)\n", argv[i], n, n == 1 ? "policy" : "policies");
        }
        ward_policy_set_free(&set);
    }
    if (!bad) printf("%zu policies valid\n", total);
    return bad ? 1 : 0;
}

static void print_time(const char *label, int64_t t)
{
    char buf[64];
    time_t tt = (time_t)t;
    struct tm tm;
    gmtime_r(&tt, &tm);
    strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%SZ", &tm);
    printf("%-16s%s\n", label, buf);
}

static int cert_inspect(int argc, char **argv)
{
    const char *file = NULL, *ca = NULL, *expect = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--ca") == 0 && i + 1 < argc)
            ca = argv[++i];
        else if (strcmp(argv[i], "--expect") == 0 && i + 1 < argc)
            expect = argv[++i];
        else if (argv[i][0] != '-' && file == NULL)
            file = argv[i];
        else {
            fprintf(stderr, "wardctl cert inspect: unexpected '%s'\n", argv[i]);
            return 2;
        }
    }
    if (file == NULL) {
        fprintf(stderr, "wardctl cert inspect: give a PEM certificate file\n");
        return 2;
    }
    ward_cert_info_t info;
    char err[512];
    if (ward_cert_inspect(file, &info, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s: %s\n", file, err);
        return 1;
    }
    int64_t now = (int64_t)time(NULL);
    printf("%-16s%s\n", "spiffe id", info.spiffe_id[0] ? info.spiffe_id : "(none)");
    printf("%-16s%s\n", "subject", info.subject);
    printf("%-16s%s\n", "issuer", info.issuer);
    print_time("not before", info.not_before);
    print_time("not after", info.not_after);
    if (now > info.not_after)
        printf("%-16sEXPIRED %lld s ago\n", "status", (long long)(now - info.not_after));
    else if (now < info.not_before)
        printf("%-16sNOT YET VALID (starts in %lld s)\n", "status",
               (long long)(info.not_before - now));
    else
        printf("%-16svalid for %lld s more\n", "status", (long long)(info.not_after - now));
    printf("%-16s%d\n", "chain length", info.chain_len);
    if (ca == NULL) return 0;
    ward_tls_reason_t r;
    const char *detail = NULL;
    char *peer = NULL;
    if (ward_cert_check(file, ca, expect, &r, &detail, &peer, err, sizeof(err)) < 0) {
        fprintf(stderr, "%s\n", err);
        return 1;
    }
    if (r == WARD_REASON_NONE) {
        printf("%-16saccepted by a ward peer trusting %s%s%s\n", "verdict", ca,
               expect ? " and expecting " : "", expect ? expect : "");
    } else {
        printf("%-16sREFUSED: %s (%s)\n", "verdict", ward_tls_reason_name(r), detail ? detail : "");
    }
    ward_free(peer);
    return r == WARD_REASON_NONE ? 0 : 1;
}

/* --- status ---------------------------------------------------------------------------------- */

#define WARDCTL_MAX_BODY (4u << 20)

/* GET path from the admin endpoint at addr (loopback admin only: plain HTTP/1.0). Returns the HTTP
 * status and fills body, or -1 with why set. */
static int admin_get(const ward_addr_t *addr, const char *path, ward_strbuf_t *body, char *why,
                     size_t whylen)
{
    int fd = socket(addr->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct timeval tv = {5, 0};
    if (fd < 0) {
        snprintf(why, whylen, "socket: %s", strerror(errno));
        return -1;
    }
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (const struct sockaddr *)&addr->ss, addr->len) != 0) {
        snprintf(why, whylen, "connect: %s", strerror(errno));
        close(fd);
        return -1;
    }
    char req[512];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: ward-admin\r\n\r\n", path);
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        snprintf(why, whylen, "send: %s", strerror(errno));
        close(fd);
        return -1;
    }
    ward_strbuf_t raw = {0};
    char buf[16384];
    ssize_t r;
    while ((r = recv(fd, buf, sizeof(buf), 0)) > 0 && raw.len < WARDCTL_MAX_BODY)
        if (ward_strbuf_printf(&raw, "%.*s", (int)r, buf) < 0) break;
    close(fd);
    int status = -1;
    char *sep = raw.data ? strstr(raw.data, "\r\n\r\n") : NULL;
    if (raw.data == NULL || sscanf(raw.data, "HTTP/1.%*d %d", &status) != 1 || sep == NULL) {
        snprintf(why, whylen, "not an HTTP response from the admin endpoint");
        ward_strbuf_free(&raw);
        return -1;
    }
    ward_strbuf_printf(body, "%s", sep + 4);
    ward_strbuf_free(&raw);
    return status;
}

/* Value of a numeric JSON member "key": in text (flat lookup: enough for /identity). */
static int json_num(const char *text, const char *key, long long *out)
{
    char pat[96];
    snprintf(pat, sizeof(pat), "\"%s\":", key);
    const char *p = strstr(text, pat);
    return p != NULL && sscanf(p + strlen(pat), "%lld", out) == 1;
}

static int json_str(const char *text, const char *key, char *out, size_t size)
{
    char pat[96];
    snprintf(pat, sizeof(pat), "\"%s\":\"", key);
    const char *p = strstr(text, pat);
    if (p == NULL) return 0;
    p += strlen(pat);
    size_t i = 0;
    while (*p && *p != '"' && i + 1 < size)
        out[i++] = *p++;
    out[i] = '\0';
    return 1;
}

/* Sums the samples of a metric whose label set contains `match` (e.g. reason="expired"). */
static double metric_sum(const char *text, const char *name, const char *match)
{
    double sum = 0;
    size_t nl = strlen(name);
    for (const char *line = text; line && *line;
         line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        if (strncmp(line, name, nl) != 0 || (line[nl] != '{' && line[nl] != ' ')) continue;
        const char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line) : strlen(line);
        char tmp[512];
        if (len >= sizeof(tmp)) continue;
        memcpy(tmp, line, len);
        tmp[len] = '\0';
        if (match && strstr(tmp, match) == NULL) continue;
        const char *v = strrchr(tmp, ' ');
        if (v) sum += strtod(v + 1, NULL);
    }
    return sum;
}

static int status_cmd(int argc, char **argv)
{
    const char *target = argc > 0 ? argv[0] : "127.0.0.1:15000";
    ward_addr_t addr;
    const char *why = NULL;
    char err[256];
    if (argc > 1 || ward_addr_parse(target, strlen(target), 0, &addr, &why) < 0) {
        fprintf(stderr, "wardctl status: '%s': %s\n", target, why ? why : "one address only");
        return 2;
    }
    ward_strbuf_t ident = {0}, metrics = {0}, ready = {0};
    int st = admin_get(&addr, "/identity", &ident, err, sizeof(err));
    if (st < 0) {
        fprintf(stderr,
                "wardctl status: %s: %s (is the proxy running, and is its admin "
                "endpoint there? see --admin)\n",
                target, err);
        return 1;
    }
    int rst = admin_get(&addr, "/ready", &ready, err, sizeof(err));
    admin_get(&addr, "/metrics", &metrics, err, sizeof(err));
    const char *it = ident.data ? ident.data : "";
    const char *mt = metrics.data ? metrics.data : "";
    char id[2100] = "", source[32] = "";
    long long not_after = 0, expires = 0, connected = 0, last = 0;
    json_str(it, "spiffe_id", id, sizeof(id));
    json_str(it, "source", source, sizeof(source));
    json_num(it, "not_after", &not_after);
    json_num(it, "expires_in_seconds", &expires);
    printf("%-22s%s\n", "admin", target);
    printf("%-22s%s\n", "ready", rst == 200 ? "yes" : "NO (/ready answers 503)");
    printf("%-22s%s (from %s)\n", "identity", id[0] ? id : "none yet", source);
    if (not_after) {
        if (expires > 0)
            printf("%-22s%lldh%02lldm%02llds\n", "expires in", expires / 3600, expires / 60 % 60,
                   expires % 60);
        else
            printf("%-22sEXPIRED %lld s ago\n", "expires in", -expires);
    }
    if (strcmp(source, "agent") == 0) {
        const char *ag = strstr(it, "\"agent\":");
        connected = ag && strstr(ag, "\"connected\":true") != NULL;
        if (ag) json_num(ag, "last_update", &last);
        printf("%-22s%s, last update %lld s ago\n", "agent stream", connected ? "up" : "DOWN",
               last ? (long long)time(NULL) - last : -1);
    }
    printf("%-22sinbound %.0f, outbound %.0f\n", "open connections",
           metric_sum(mt, "ward_connections_open", "direction=\"inbound\""),
           metric_sum(mt, "ward_connections_open", "direction=\"outbound\""));
    printf("%-22s%.0f ok, %.0f resumed\n", "handshakes",
           metric_sum(mt, "ward_tls_handshakes_total", "result=\"success\""),
           metric_sum(mt, "ward_tls_resumed_total", NULL));
    static const char *const reasons[] = {"expired",      "not_yet_valid",  "unknown_ca",
                                          "san_mismatch", "no_client_cert", "bad_certificate",
                                          "protocol",     "timeout"};
    int any = 0;
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++) {
        char m[64];
        snprintf(m, sizeof(m), "reason=\"%s\"", reasons[i]);
        double v = metric_sum(mt, "ward_tls_handshakes_total", m);
        if (v > 0) {
            printf("%-22s%-16s %.0f\n", any ? "" : "refused handshakes", reasons[i], v);
            any = 1;
        }
    }
    if (!any) printf("%-22snone\n", "refused handshakes");
    ward_strbuf_free(&ident);
    ward_strbuf_free(&metrics);
    ward_strbuf_free(&ready);
    return rst == 200 ? 0 : 1;
}

int main(int argc, char **argv)
{
    ward_alloc_install(NULL);
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("wardctl %s\n", WARD_VERSION);
        return 0;
    }
    if (argc >= 3 && strcmp(argv[1], "policy") == 0 && strcmp(argv[2], "check") == 0)
        return policy_check(argc - 3, argv + 3);
    if (argc >= 3 && strcmp(argv[1], "policy") == 0 && strcmp(argv[2], "test") == 0)
        return wardctl_policy_test(argc - 2, argv + 2);
    if (argc >= 3 && strcmp(argv[1], "cert") == 0 && strcmp(argv[2], "inspect") == 0)
        return cert_inspect(argc - 3, argv + 3);
    if (strcmp(argv[1], "status") == 0) return status_cmd(argc - 2, argv + 2);
    if (strcmp(argv[1], "diagnose") == 0) return wardctl_diagnose(argc - 2, argv + 2);
    if (strcmp(argv[1], "inject") == 0) return wardctl_inject(argc - 2, argv + 2);
    fprintf(stderr, "wardctl: unknown command (see wardctl --help)\n");
    return 2;
}
