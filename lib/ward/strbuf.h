/* ward/strbuf.h — a growing text buffer (admin pages, metrics). Zero-initialise, append, free. */
#ifndef WARD_STRBUF_H
#define WARD_STRBUF_H

#include <stddef.h>

typedef struct {
    char *data;
    size_t len;
    size_t cap;
} ward_strbuf_t;

/* Appends formatted text. Returns 0, WARD_EINVAL (bad format) or WARD_ENOMEM. */
int ward_strbuf_printf(ward_strbuf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void ward_strbuf_free(ward_strbuf_t *b);
/* Appends s as a JSON string literal (quoted, escaped). Returns 0 or WARD_ENOMEM. */
int ward_strbuf_json_str(ward_strbuf_t *b, const char *s);
/* Appends s as a quoted Prometheus label value (backslash, double quote and newline escaped).
 * Returns 0 or WARD_ENOMEM. */
int ward_strbuf_label(ward_strbuf_t *b, const char *s);

#endif
