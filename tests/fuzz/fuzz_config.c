/* fuzz_config.c — ward-proxy's command line and WARD_* environment (proxy/config.c
 * ward_config_parse). In a pod both come from a manifest or an injector, so they are fuzzed too.
 *
 * Input: NUL-separated words. A word "WARD_<NAME>=value" for one of the variables ward reads sets
 * that variable for this run (buffers put into the environment once with putenv and rewritten in
 * place, so the environment never grows); every other word is the next argv element after
 * "ward-proxy". Properties: 0 leaves a usable configuration (a mapping, one identity source,
 * limits in range); an error says why; ward_config_free releases everything either way. */
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "fuzz.h"
#include "ward/err.h"

#define MAXARGS 64
#define ENVMAX  1024

static const char *const ward__vars[] = {"WARD_AGENT",
                                         "WARD_AGENT_BUNDLE",
                                         "WARD_AGENT_ID",
                                         "WARD_AGENT_TOKEN_FILE",
                                         "WARD_CERT",
                                         "WARD_KEY",
                                         "WARD_CA",
                                         "WARD_INBOUND",
                                         "WARD_OUTBOUND",
                                         "WARD_ADMIN",
                                         "WARD_WORKERS",
                                         "WARD_MAX_CONNECTIONS",
                                         "WARD_CONNECT_TIMEOUT",
                                         "WARD_HANDSHAKE_TIMEOUT",
                                         "WARD_IDLE_TIMEOUT",
                                         "WARD_DRAIN_TIMEOUT",
                                         "WARD_RELOAD_INTERVAL",
                                         "WARD_LOG_LEVEL"};
#define NVARS (sizeof(ward__vars) / sizeof(ward__vars[0]))

static char ward__env[NVARS][ENVMAX + 64];
static size_t ward__prefix[NVARS];

static void ward__init(void)
{
    ward_fuzz_quiet();
    /* --help and --version print to stdout: keep libFuzzer's output readable. */
    if (freopen("/dev/null", "w", stdout) == NULL) ward_fuzz_die("freopen", "/dev/null");
    for (size_t i = 0; i < NVARS; i++) {
        ward__prefix[i] =
            (size_t)snprintf(ward__env[i], sizeof(ward__env[i]), "%s=", ward__vars[i]);
        if (putenv(ward__env[i]) != 0) ward_fuzz_die("putenv", ward__vars[i]);
    }
}

/* glibc's getopt_long keeps a pointer into the previous argv (the rest of a short-option cluster
 * such as "-ab") unless optind is set to 0; ward_config_parse sets optind = 1, which is enough for
 * ward-proxy (one parse per process) but not for a harness that frees argv between runs. */
static void ward__getopt_reset(void)
{
    static char *argv0[] = {"reset", NULL};
    static const struct option none[] = {{NULL, 0, NULL, 0}};
    optind = 0;
    opterr = 0;
    (void)getopt_long(1, argv0, ":", none, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int init;
    if (!init) {
        ward__init();
        init = 1;
    }
    for (size_t i = 0; i < NVARS; i++)
        ward__env[i][ward__prefix[i]] = '\0';

    char *argv[MAXARGS + 2];
    int argc = 0;
    argv[argc++] = "ward-proxy";
    size_t off = 0;
    while (off < size) {
        const uint8_t *end = memchr(data + off, '\0', size - off);
        size_t len = end ? (size_t)(end - (data + off)) : size - off;
        const char *w = (const char *)data + off;
        off += len + 1;
        int is_env = 0;
        for (size_t i = 0; i < NVARS && !is_env; i++) {
            size_t p = ward__prefix[i];
            if (len >= p && memcmp(w, ward__env[i], p) == 0) {
                size_t vlen = len - p < ENVMAX ? len - p : ENVMAX;
                memcpy(ward__env[i] + p, w + p, vlen);
                ward__env[i][p + vlen] = '\0';
                is_env = 1;
            }
        }
        if (is_env || argc > MAXARGS) continue;
        /* Each argument in its own exact-size buffer. */
        char *a = malloc(len + 1);
        if (a == NULL) abort();
        memcpy(a, w, len);
        a[len] = '\0';
        argv[argc++] = a;
    }
    argv[argc] = NULL;
    char *mine[MAXARGS + 2];
    memcpy(mine, argv, sizeof(char *) * (size_t)(argc + 1)); /* getopt permutes argv */

    ward__getopt_reset();
    ward_config_t cfg;
    char err[512] = "";
    int rc = ward_config_parse(&cfg, argc, argv, err, sizeof(err));
    if (rc == 0) {
        WARD_FUZZ_CHECK(cfg.nmaps > 0 && cfg.maps != NULL);
        WARD_FUZZ_CHECK((cfg.agent != NULL) !=
                        (cfg.cert_file != NULL && cfg.key_file != NULL && cfg.ca_file != NULL));
        WARD_FUZZ_CHECK(cfg.workers >= 1 && cfg.workers <= 256);
        WARD_FUZZ_CHECK(cfg.max_connections >= 1 && cfg.connect_timeout_ms > 0 &&
                        cfg.handshake_timeout_ms > 0 && cfg.idle_timeout_ms > 0 &&
                        cfg.drain_timeout_ms > 0 && cfg.reload_interval_ms > 0);
        for (size_t i = 0; i < cfg.nmaps; i++) {
            WARD_FUZZ_CHECK(cfg.maps[i].spec != NULL);
            WARD_FUZZ_CHECK((cfg.maps[i].dir == WARD_DIR_OUTBOUND) ==
                            (cfg.maps[i].identity != NULL));
        }
    } else if (rc != WARD_CONFIG_EXIT) {
        WARD_FUZZ_CHECK(rc < 0 && err[0] != '\0');
    }
    ward_config_free(&cfg);
    for (int i = 1; i < argc; i++)
        free(mine[i]);
    return 0;
}
