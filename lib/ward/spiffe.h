/* ward/spiffe.h — SPIFFE ID parsing and validation, following the SPIFFE-ID specification:
 *   spiffe://<trust-domain>[/<segment>...]
 * trust domain: 1-255 chars of [a-z0-9._-]; path segments: non-empty, [A-Za-z0-9._-], not "." or
 * ".."; no port, userinfo, query, fragment, percent-encoding or trailing slash; at most 2048 bytes.
 */
#ifndef WARD_SPIFFE_H
#define WARD_SPIFFE_H

#include <stddef.h>

#define WARD_SPIFFE_MAX    2048
#define WARD_SPIFFE_TD_MAX 255

typedef struct {
    const char *td; /* points into the parsed string */
    size_t td_len;
    const char *path; /* "" or "/a/b", points into the parsed string */
    size_t path_len;
} ward_spiffe_id_t;

/* Parses s[0..n). Returns 0, or WARD_ESPIFFE with *why (if non-NULL) set to a static explanation.
 */
int ward_spiffe_id_parse(const char *s, size_t n, ward_spiffe_id_t *out, const char **why);

/* Validates a trust domain name alone (e.g. "cluster.local"). Returns 0 or WARD_ESPIFFE. */
int ward_spiffe_td_validate(const char *s, size_t n, const char **why);

#endif
