/* test_config.c — ward-proxy command line and environment parsing. */
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "unit.h"
#include "ward/err.h"

#define ARGV(...) ((char *[]){"ward-proxy", __VA_ARGS__, NULL})

static int parse(ward_config_t *cfg, char **argv, char *err)
{
    int argc = 0;
    while (argv[argc] != NULL)
        argc++;
    return ward_config_parse(cfg, argc, argv, err, 512);
}

static void clear_env(void)
{
    const char *vars[] = {"WARD_CERT",     "WARD_KEY",     "WARD_CA",    "WARD_INBOUND",
                          "WARD_OUTBOUND", "WARD_WORKERS", "WARD_ADMIN", "WARD_IDLE_TIMEOUT"};
    for (size_t i = 0; i < sizeof(vars) / sizeof(vars[0]); i++)
        unsetenv(vars[i]);
}

static void test_full(void)
{
    ward_config_t cfg;
    char err[512];
    clear_env();
    char **v = ARGV("--cert", "c.pem", "--key", "k.pem", "--ca", "ca.pem", "--inbound",
                    "127.0.0.1:15006=127.0.0.1:8080", "--outbound",
                    ":15001=127.0.0.1:15006,identity=spiffe://td/ns/a/sa/b", "--workers", "3",
                    "--idle-timeout", "90s", "--admin", "off");
    CU_ASSERT_EQUAL_FATAL(parse(&cfg, v, err), 0);
    CU_ASSERT_STRING_EQUAL(cfg.cert_file, "c.pem");
    CU_ASSERT_EQUAL(cfg.nmaps, 2);
    CU_ASSERT_EQUAL(cfg.maps[0].dir, WARD_DIR_INBOUND);
    CU_ASSERT_PTR_NULL(cfg.maps[0].identity);
    CU_ASSERT_EQUAL(cfg.maps[1].dir, WARD_DIR_OUTBOUND);
    CU_ASSERT_STRING_EQUAL(cfg.maps[1].identity, "spiffe://td/ns/a/sa/b");
    CU_ASSERT_EQUAL(cfg.workers, 3);
    CU_ASSERT_EQUAL(cfg.idle_timeout_ms, 90000);
    CU_ASSERT_EQUAL(cfg.admin_enabled, 0);
    CU_ASSERT_EQUAL(cfg.connect_timeout_ms, 5000); /* default */
    ward_config_free(&cfg);
}

static void test_env(void)
{
    ward_config_t cfg;
    char err[512];
    clear_env();
    setenv("WARD_CERT", "env-c.pem", 1);
    setenv("WARD_KEY", "env-k.pem", 1);
    setenv("WARD_CA", "env-ca.pem", 1);
    setenv("WARD_OUTBOUND",
           "127.0.0.1:1=127.0.0.1:2,identity=spiffe://td/"
           "a;127.0.0.1:3=127.0.0.1:4,identity=spiffe://td/b",
           1);
    setenv("WARD_WORKERS", "2", 1);
    char **v = ARGV("--workers", "5");
    CU_ASSERT_EQUAL_FATAL(parse(&cfg, v, err), 0);
    CU_ASSERT_STRING_EQUAL(cfg.key_file, "env-k.pem");
    CU_ASSERT_EQUAL(cfg.nmaps, 2);
    CU_ASSERT_STRING_EQUAL(cfg.maps[1].identity, "spiffe://td/b");
    CU_ASSERT_EQUAL(cfg.workers, 5); /* the flag beats the environment */
    ward_config_free(&cfg);
    clear_env();
}

static void expect_error(char **argv, const char *needle)
{
    ward_config_t cfg;
    char err[512] = "";
    int rc = parse(&cfg, argv, err);
    CU_ASSERT(rc < 0);
    if (strstr(err, needle) == NULL) {
        fprintf(stderr, "\n  error '%s' lacks '%s'\n", err, needle);
        CU_FAIL("error message does not name the problem");
    }
    ward_config_free(&cfg);
}

static void test_errors(void)
{
    clear_env();
    expect_error(ARGV("--inbound", "127.0.0.1:1=127.0.0.1:2"), "--cert");
    expect_error(ARGV("--cert", "c", "--key", "k", "--ca", "a"), "no --inbound");
    expect_error(
        ARGV("--cert", "c", "--key", "k", "--ca", "a", "--outbound", "127.0.0.1:1=127.0.0.1:2"),
        "identity is required");
    expect_error(ARGV("--cert", "c", "--key", "k", "--ca", "a", "--outbound",
                      "127.0.0.1:1=127.0.0.1:2,identity=http://x"),
                 "not a valid SPIFFE id");
    expect_error(ARGV("--cert", "c", "--key", "k", "--ca", "a", "--inbound", "nonsense"),
                 "LISTEN=TARGET");
    expect_error(ARGV("--cert", "c", "--key", "k", "--ca", "a", "--inbound",
                      "127.0.0.1:1=127.0.0.1:2,identity=spiffe://td/x"),
                 "--outbound only");
    expect_error(ARGV("--idle-timeout", "soon"), "--idle-timeout");
    expect_error(ARGV("--workers", "0"), "--workers");
    expect_error(ARGV("--log-level", "loud"), "--log-level");
    expect_error(ARGV("--nope"), "unknown option");
    expect_error(ARGV("--cert"), "needs a value");
    /* A parse that stopped inside a group of short options must not leak into the next one. */
    expect_error(ARGV("-ab"), "unknown option '-a'");
    ward_config_t cfg;
    char err[512];
    CU_ASSERT_EQUAL(parse(&cfg,
                          ARGV("--cert", "c", "--key", "k", "--ca", "a", "--inbound",
                               "127.0.0.1:1=127.0.0.1:2"),
                          err),
                    0);
    ward_config_free(&cfg);
}

static void test_agent_addresses(void)
{
    ward_config_t cfg;
    char err[512];
    clear_env();
    CU_ASSERT_EQUAL_FATAL(
        parse(&cfg,
              ARGV("--agent", "ward-agent.ward-system.svc:15012", "--agent-bundle", "b.pem",
                   "--agent-id", "spiffe://td/ward/agent", "--inbound", "127.0.0.1:1=127.0.0.1:2"),
              err),
        0);
    CU_ASSERT_FALSE(cfg.agent_is_unix);
    CU_ASSERT_STRING_EQUAL(cfg.agent_host, "ward-agent.ward-system.svc");
    CU_ASSERT_STRING_EQUAL(cfg.agent_port, "15012");
    ward_config_free(&cfg);
    CU_ASSERT_EQUAL_FATAL(
        parse(&cfg,
              ARGV("--agent", "unix:/run/ward/agent.sock", "--inbound", "127.0.0.1:1=127.0.0.1:2"),
              err),
        0);
    CU_ASSERT_TRUE(cfg.agent_is_unix);
    CU_ASSERT_STRING_EQUAL(cfg.agent_path, "/run/ward/agent.sock");
    ward_config_free(&cfg);
    expect_error(ARGV("--agent", "bad host:1", "--inbound", "127.0.0.1:1=127.0.0.1:2"),
                 "HOST:PORT");
    expect_error(ARGV("--agent", "10.0.0.1:15012", "--inbound", "127.0.0.1:1=127.0.0.1:2"),
                 "--agent-bundle");
    expect_error(ARGV("--agent", "unix:/x", "--cert", "c", "--inbound", "127.0.0.1:1=127.0.0.1:2"),
                 "two identity sources");
}

static void test_mapping_v6(void)
{
    ward_mapping_t m;
    char err[256];
    CU_ASSERT_EQUAL_FATAL(
        ward_mapping_parse(&m, WARD_DIR_INBOUND, "[::1]:15006=[::1]:8080", err, sizeof(err)), 0);
    CU_ASSERT_EQUAL(m.listen.ss.ss_family, AF_INET6);
    CU_ASSERT_EQUAL(m.target.ss.ss_family, AF_INET6);
    free(m.spec);
}

void ward_unit_register(void)
{
    WARD_SUITE("config", WARD_TEST(test_full), WARD_TEST(test_env), WARD_TEST(test_errors),
               WARD_TEST(test_agent_addresses), WARD_TEST(test_mapping_v6));
}
