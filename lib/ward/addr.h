/* ward/addr.h — socket addresses, durations and small helpers shared by the binaries. */
#ifndef WARD_ADDR_H
#define WARD_ADDR_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#define ward_container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

typedef struct {
    struct sockaddr_storage ss;
    socklen_t len;
} ward_addr_t;

/* Parses "IP:PORT" or "[IPv6]:PORT"; with allow_any_host, ":PORT" means 0.0.0.0. "localhost" is
 * 127.0.0.1. Port 0 is accepted only with allow_any_host (ephemeral listener).
 * Returns 0 or WARD_EINVAL with *why set. */
int ward_addr_parse(const char *s, size_t n, int allow_any_host, ward_addr_t *out,
                    const char **why);

/* Formats as "IP:PORT" / "[IPv6]:PORT" into buf (at least 64 bytes). Returns buf. */
char *ward_addr_format(const struct sockaddr *sa, char *buf, size_t size);

/* The port of an IPv4/IPv6 address (host order), 0 for other families. */
uint16_t ward_addr_port(const ward_addr_t *a);

/* Parses "250ms", "5s", "2m", "1h" or a bare number of seconds into milliseconds.
 * Returns 0 or WARD_EINVAL. */
int ward_duration_parse(const char *s, uint64_t *out_ms);

/* Parses a decimal integer in [min, max]. Returns 0, WARD_EINVAL or WARD_ERANGE. */
int ward_parse_u64(const char *s, uint64_t min, uint64_t max, uint64_t *out);

#endif
