/* fuzz.h — helpers shared by the libFuzzer targets in this folder (header-only: every target is
 * its own binary). A target initialises once behind a static flag, owns nothing across runs but
 * that initial state, and checks the properties its parser promises with WARD_FUZZ_CHECK, which
 * aborts (a crash for libFuzzer) and names the broken property. */
#ifndef WARD_FUZZ_H
#define WARD_FUZZ_H

#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ward/log.h"

#ifndef WARD_FUZZ_DATA
#error "WARD_FUZZ_DATA (the tests/fuzz/data directory) must be defined by the build"
#endif

#define WARD_FUZZ_CHECK(cond)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: property violated: %s\n", __FILE__, __LINE__, #cond);          \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Fixed setup failed: not a finding, the harness cannot run. */
static inline void ward_fuzz_die(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz setup: %s: %s\n", what, detail ? detail : "");
    exit(2);
}

/* Only errors from ward's logger: info lines on every input would drown libFuzzer's output. */
static inline void ward_fuzz_quiet(void)
{
    ward_log_set_level(WARD_LOG_ERROR);
}

/* Reads WARD_FUZZ_DATA/name whole (malloc, NUL-terminated) or exits. */
static inline uint8_t *ward_fuzz_read_data(const char *name, size_t *len)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", WARD_FUZZ_DATA, name);
    FILE *f = fopen(path, "rb");
    if (f == NULL) ward_fuzz_die("cannot open", path);
    uint8_t *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n + 4096 + 1 > cap) {
            cap = cap ? cap * 2 : 8192;
            buf = realloc(buf, cap);
            if (buf == NULL) ward_fuzz_die("out of memory reading", path);
        }
        size_t r = fread(buf + n, 1, 4096, f);
        n += r;
        if (r == 0) break;
    }
    fclose(f);
    buf[n] = '\0';
    if (len != NULL) *len = n;
    return buf;
}

/* Puts data into an in-memory file (created once, rewritten per input) and returns a path that
 * opens it ("/proc/self/fd/N"), for parsers that take a file name. */
static inline const char *ward_fuzz_file(const uint8_t *data, size_t size)
{
    static int fd = -1;
    static char path[64];
    if (fd < 0) {
        fd = memfd_create("ward-fuzz", MFD_CLOEXEC);
        if (fd < 0) ward_fuzz_die("memfd_create", NULL);
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    }
    if (ftruncate(fd, 0) != 0) ward_fuzz_die("ftruncate", NULL);
    size_t off = 0;
    while (off < size) {
        ssize_t w = pwrite(fd, data + off, size - off, (off_t)off);
        if (w <= 0) ward_fuzz_die("pwrite", NULL);
        off += (size_t)w;
    }
    return path;
}

/* Splits data into records of a 2-byte big-endian length then that many bytes (a short last
 * record takes what is left). Returns the number of records, at most max. */
static inline size_t ward_fuzz_split(const uint8_t *data, size_t size, const uint8_t **rec,
                                     size_t *rec_len, size_t max)
{
    size_t n = 0;
    while (size >= 2 && n < max) {
        size_t len = ((size_t)data[0] << 8) | data[1];
        data += 2;
        size -= 2;
        if (len > size) len = size;
        rec[n] = data;
        rec_len[n] = len;
        n++;
        data += len;
        size -= len;
    }
    return n;
}

#endif
