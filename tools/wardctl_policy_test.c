/* wardctl_policy_test.c — `wardctl policy test --policy FILE|DIR --from ID --to ID [--port N]
 * [--method M --path P] [--header name=value]... [--source IP] [--hour H]
 * [--mesh-default deny|allow|audit]`.
 *
 * Does what a ward-proxy does with one request, with the proxy's own code: loads the policies
 * (lib/policy.c: a directory as ward-agent's --policy-dir, a file as ward-proxy's --policy),
 * cuts the snapshot the agent would push to the workload --to, compiles it (lib/authz.c),
 * normalises the request target (lib/path.c: a target the proxy refuses with a 400 is reported as
 * such) and decides. Without --method it is an opaque TCP connection. Prints one line:
 *
 *   DENY  denied_by_policy  policy=shop/no-admin rule=0
 *   ALLOW allowed_by_policy  policy=shop/orders-read rule=1 audit=shop/watch
 *
 * Exit status: 0 ALLOW, 1 DENY, 2 usage error, policies that do not load, or a refused path. */
#include "wardctl_policy_test.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "ward/alloc.h"
#include "ward/authz.h"
#include "ward/err.h"
#include "ward/path.h"
#include "ward/policy.h"
#include "ward/spiffe.h"

#define PT_MAX_HEADERS 64

typedef struct {
    char name[128]; /* lowercase */
    const char *value;
} pt_header_t;

typedef struct {
    pt_header_t h[PT_MAX_HEADERS];
    size_t n;
} pt_headers_t;

void wardctl_policy_test_usage(FILE *out)
{
    fputs("usage: wardctl policy test --policy FILE|DIR --from ID --to ID [--port N]\n"
          "                           [--method M --path P] [--header name=value]...\n"
          "                           [--source IP] [--hour H] [--mesh-default deny|allow|audit]\n"
          "\n"
          "Decides one request as the ward-proxy of workload --to would, from the policies in\n"
          "FILE or DIR (every *.yaml / *.yml), and prints the decision, its reason, and the\n"
          "policy and rule that decided (and the AUDIT policy that matched, if any).\n"
          "\n"
          "  --from ID          the caller's SPIFFE id; '-' for an unauthenticated caller\n"
          "  --to ID            the workload's SPIFFE id: selects the policies\n"
          "  --port N           the workload port (default 0: rules listing ports do not match)\n"
          "  --method, --path   an HTTP request (both, or neither for an opaque TCP connection);\n"
          "                     the path is normalised as the proxy does, and a target the proxy\n"
          "                     refuses with a 400 is reported (exit 2)\n"
          "  --header N=V       a request header; repeat for more, or for a repeated header\n"
          "  --source IP        the caller's address, for source.ip (default: none)\n"
          "  --hour H           the hour in UTC, 0..23, for time.hour (default: now)\n"
          "  --mesh-default D   where no ALLOW policy selects --to: deny (default), allow, audit\n"
          "\n"
          "Exit status: 0 ALLOW, 1 DENY, 2 usage error, policies that do not load, or a refused\n"
          "path.\n",
          out);
}

static const char *pt_header(void *ctx, const char *name, size_t name_len, size_t index,
                             size_t *value_len)
{
    const pt_headers_t *hs = ctx;
    for (size_t i = 0; i < hs->n; i++) {
        if (strlen(hs->h[i].name) != name_len || memcmp(hs->h[i].name, name, name_len) != 0)
            continue;
        if (index-- > 0) continue;
        *value_len = strlen(hs->h[i].value);
        return hs->h[i].value;
    }
    return NULL;
}

static int pt_fail(const char *fmt, const char *arg)
{
    fputs("wardctl policy test: ", stderr);
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    return 2;
}

/* Reads a whole policy file (at most WARD_POLICY_MAX_FILE bytes) into *out (ward_free). */
static int pt_read(const char *path, char **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL) return -errno;
    char *buf = ward_malloc(WARD_POLICY_MAX_FILE + 1);
    if (buf == NULL) {
        fclose(f);
        return WARD_ENOMEM;
    }
    size_t n = fread(buf, 1, WARD_POLICY_MAX_FILE + 1, f);
    int err = ferror(f);
    fclose(f);
    if (err || n > WARD_POLICY_MAX_FILE) {
        ward_free(buf);
        return err ? WARD_EIO : WARD_ETOOLONG;
    }
    *out = buf;
    *len = n;
    return 0;
}

static int pt_load(const char *path, ward_policy_set_t *set)
{
    ward_policy_error_t e;
    struct stat st;
    int rc;
    memset(&e, 0, sizeof(e));
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        rc = ward_policy_load_dir(path, set, &e);
    } else {
        char *text = NULL;
        size_t len = 0;
        if ((rc = pt_read(path, &text, &len)) < 0) {
            fprintf(stderr, "%s: %s\n", path, ward_strerror(rc));
            return rc;
        }
        rc = ward_policy_parse(text, len, path, set, &e);
        ward_free(text);
    }
    if (rc < 0) {
        if (e.file[0] == '\0') snprintf(e.file, sizeof(e.file), "%s", path);
        if (e.message[0] == '\0') snprintf(e.message, sizeof(e.message), "%s", ward_strerror(rc));
        if (e.line > 0)
            fprintf(stderr, "%s:%d:%d: %s\n", e.file, e.line, e.column, e.message);
        else
            fprintf(stderr, "%s: %s\n", e.file, e.message);
    }
    return rc;
}

static int pt_source(const char *s, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *in = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, s, &in->sin_addr) == 1) {
        in->sin_family = AF_INET;
        return 0;
    }
    if (inet_pton(AF_INET6, s, &in6->sin6_addr) == 1) {
        in6->sin6_family = AF_INET6;
        return 0;
    }
    return -1;
}

/* A non-negative decimal integer of at most max, or -1. */
static long pt_number(const char *s, long max)
{
    char *end;
    if (s[0] < '0' || s[0] > '9') return -1;
    errno = 0;
    long v = strtol(s, &end, 10);
    return *end == '\0' && errno == 0 && v <= max ? v : -1;
}

static int pt_is_token(const char *s)
{
    if (*s == '\0') return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') ||
              strchr("!#$%&'*+-.^_`|~", *s) != NULL))
            return 0;
    return 1;
}

/* Decides and prints; returns the exit status. */
static int pt_decide(const ward_policy_set_t *set, const char *to, ward_authz_request_t *req)
{
    uint8_t *packed = NULL;
    size_t len = 0;
    ward_authz_t *a = NULL;
    const char *why = NULL;
    int rc = ward_policy_snapshot_for(set, to, 1, &packed, &len);
    if (rc < 0) return pt_fail("--to: %s", ward_strerror(rc));
    rc = ward_authz_compile_packed(packed, len, &a, &why);
    ward_free(packed);
    if (rc < 0) {
        fprintf(stderr, "wardctl policy test: compile: %s%s%s\n", ward_strerror(rc),
                why ? ": " : "", why ? why : "");
        return 2;
    }
    ward_authz_result_t res;
    ward_authz_eval(a, req, &res);
    int allowed = res.decision == WARD_AUTHZ_ALLOW;
    printf("%-5s %s  policy=%s rule=", allowed ? "ALLOW" : "DENY", res.reason,
           res.policy ? res.policy : "-");
    if (res.rule >= 0)
        printf("%d", res.rule);
    else
        printf("-");
    if (res.audit_policy) printf(" audit=%s", res.audit_policy);
    printf("\n");
    fprintf(stderr, "(%zu of %zu policies select %s; mesh default %s)\n",
            ward_authz_policy_count(a), ward_policy_set_count(set), to, ward_authz_default_name(a));
    ward_authz_unref(a);
    return allowed ? 0 : 1;
}

int wardctl_policy_test(int argc, char **argv)
{
    enum {
        O_POLICY = 256,
        O_FROM,
        O_TO,
        O_PORT,
        O_METHOD,
        O_PATH,
        O_HEADER,
        O_SOURCE,
        O_HOUR,
        O_DEFAULT,
        O_HELP
    };
    static const struct option opts[] = {{"policy", required_argument, NULL, O_POLICY},
                                         {"from", required_argument, NULL, O_FROM},
                                         {"to", required_argument, NULL, O_TO},
                                         {"port", required_argument, NULL, O_PORT},
                                         {"method", required_argument, NULL, O_METHOD},
                                         {"path", required_argument, NULL, O_PATH},
                                         {"header", required_argument, NULL, O_HEADER},
                                         {"source", required_argument, NULL, O_SOURCE},
                                         {"hour", required_argument, NULL, O_HOUR},
                                         {"mesh-default", required_argument, NULL, O_DEFAULT},
                                         {"help", no_argument, NULL, O_HELP},
                                         {NULL, 0, NULL, 0}};
    const char *policy = NULL, *from = NULL, *to = NULL, *method = NULL, *path = NULL;
    pt_headers_t headers = {.n = 0};
    struct sockaddr_storage source;
    int has_source = 0, c;
    long port = 0, hour = -2;
    Ward__V1__DefaultAction mesh_default = WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_DENY;

    optind = 0; /* a fresh scan (GNU getopt), argv[0] being "test" */
    opterr = 0;
    while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
        switch (c) {
        case O_POLICY:
            policy = optarg;
            break;
        case O_FROM:
            from = optarg;
            break;
        case O_TO:
            to = optarg;
            break;
        case O_PORT:
            if ((port = pt_number(optarg, 65535)) < 0)
                return pt_fail("--port: '%s' is not a port (0..65535)", optarg);
            break;
        case O_METHOD:
            if (!pt_is_token(optarg))
                return pt_fail("--method: '%s' is not an HTTP method", optarg);
            method = optarg;
            break;
        case O_PATH:
            path = optarg;
            break;
        case O_HEADER: {
            const char *eq = strchr(optarg, '=');
            size_t nl = eq ? (size_t)(eq - optarg) : 0;
            if (eq == NULL || nl == 0 || nl >= sizeof(headers.h[0].name))
                return pt_fail("--header: '%s' is not name=value", optarg);
            if (headers.n == PT_MAX_HEADERS) return pt_fail("--header: more than %s", "64");
            pt_header_t *h = &headers.h[headers.n++];
            for (size_t i = 0; i < nl; i++)
                h->name[i] =
                    (char)(optarg[i] >= 'A' && optarg[i] <= 'Z' ? optarg[i] + 32 : optarg[i]);
            h->name[nl] = '\0';
            h->value = eq + 1;
            break;
        }
        case O_SOURCE:
            if (pt_source(optarg, &source) < 0)
                return pt_fail("--source: '%s' is not an IPv4 or IPv6 address", optarg);
            has_source = 1;
            break;
        case O_HOUR:
            if ((hour = pt_number(optarg, 23)) < 0)
                return pt_fail("--hour: '%s' is not an hour (0..23)", optarg);
            break;
        case O_DEFAULT:
            if (strcmp(optarg, "deny") == 0)
                mesh_default = WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_DENY;
            else if (strcmp(optarg, "allow") == 0)
                mesh_default = WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_ALLOW;
            else if (strcmp(optarg, "audit") == 0)
                mesh_default = WARD__V1__DEFAULT_ACTION__DEFAULT_ACTION_AUDIT;
            else
                return pt_fail("--mesh-default: '%s' is not deny, allow or audit", optarg);
            break;
        case O_HELP:
            wardctl_policy_test_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "wardctl policy test: unknown option or missing value: '%s'\n",
                    argv[optind - 1]);
            wardctl_policy_test_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) return pt_fail("unexpected argument '%s'", argv[optind]);
    if (policy == NULL || from == NULL || to == NULL)
        return pt_fail("%s", "give --policy, --from and --to (see --help)");
    if ((method == NULL) != (path == NULL))
        return pt_fail("%s", "give --method and --path together, or neither for TCP");
    const char *why = NULL;
    if (strcmp(from, "-") != 0 && ward_spiffe_id_parse(from, strlen(from), NULL, &why) < 0)
        return pt_fail("--from: %s", why ? why : "not a SPIFFE id");
    if (ward_spiffe_id_parse(to, strlen(to), NULL, &why) < 0)
        return pt_fail("--to: %s", why ? why : "not a SPIFFE id");
    if (hour == -2) {
        time_t now = time(NULL);
        struct tm tm;
        gmtime_r(&now, &tm);
        hour = tm.tm_hour;
    }

    /* The path as the proxy forwards it, then its match key. */
    char *norm = NULL, *key = NULL;
    ward_authz_request_t req = {.peer_id = strcmp(from, "-") == 0 ? NULL : from,
                                .port = (uint16_t)port,
                                .hour = (int)hour,
                                .header = pt_header,
                                .header_ctx = &headers,
                                .source = has_source ? (const struct sockaddr *)&source : NULL};
    int rc = 2;
    if (method != NULL) {
        size_t plen = strlen(path);
        ward_path_result_t pr;
        norm = ward_malloc(plen + 2);
        key = ward_malloc(plen + 2);
        if (norm == NULL || key == NULL) {
            fprintf(stderr, "wardctl policy test: out of memory\n");
            goto free_path;
        }
        int prc = ward_path_normalize(path, plen, norm, plen + 2, &pr);
        if (prc < 0) {
            printf("REFUSED %s  (the proxy answers %s)\n", pr.why ? pr.why : "bad target",
                   prc == WARD_ETOOLONG ? "414" : "400");
            goto free_path;
        }
        size_t klen = ward_path_match_key(norm, pr.path_len, key, plen + 2);
        if (strcmp(norm, path) != 0) fprintf(stderr, "(target normalised to %s)\n", norm);
        req.method = method;
        req.path = key;
        req.path_len = klen;
    }

    ward_policy_set_t set;
    ward_policy_set_init(&set);
    set.mesh_default = mesh_default;
    if (pt_load(policy, &set) == 0) rc = pt_decide(&set, to, &req);
    ward_policy_set_free(&set);

free_path:
    ward_free(norm);
    ward_free(key);
    return rc;
}
