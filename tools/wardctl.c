/* wardctl.c — the operator's command line.
 *
 *   wardctl policy check FILE|DIR...   validate AuthorizationPolicy YAML (file:line:column errors)
 *   wardctl cert inspect FILE [--ca BUNDLE] [--expect ID]
 *                                      show an SVID: SPIFFE id, validity, issuer, and whether it
 *                                      passes ward's X509-SVID checks (against BUNDLE if given)
 *
 * Exit status: 0 valid, 1 invalid (the reason is printed), 2 usage error. Later issues add
 * `policy test`, `diagnose`, `status` and `inject`. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/policy.h"
#include "ward/tls.h"

#define WARDCTL_MAX_FILE (1u << 20)

static void usage(FILE *out)
{
    fputs("usage: wardctl <command> ...\n"
          "\n"
          "  policy check FILE|DIR...    validate AuthorizationPolicy YAML files (a directory:\n"
          "                              every *.yaml / *.yml in it, ConfigMap layouts too)\n"
          "  cert inspect FILE [--ca BUNDLE] [--expect SPIFFE-ID]\n"
          "                              show an X509-SVID and check it as a ward peer would\n"
          "  --help, --version\n"
          "\n"
          "Exit status: 0 valid, 1 invalid (reason printed), 2 usage error.\n",
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
    if (argc >= 3 && strcmp(argv[1], "cert") == 0 && strcmp(argv[2], "inspect") == 0)
        return cert_inspect(argc - 3, argv + 3);
    fprintf(stderr, "wardctl: unknown command (see wardctl --help)\n");
    return 2;
}
