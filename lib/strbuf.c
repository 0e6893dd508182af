/* strbuf.c — a growing text buffer for rendered output (admin pages, metrics). */
#include "ward/strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "ward/alloc.h"
#include "ward/err.h"
#include "ward/log.h"

int ward_strbuf_printf(ward_strbuf_t *b, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        size_t room = b->cap - b->len;
        va_start(ap, fmt);
        int n = vsnprintf(b->data ? b->data + b->len : NULL, room, fmt, ap);
        va_end(ap);
        if (n < 0) return WARD_EINVAL;
        if ((size_t)n < room) {
            b->len += (size_t)n;
            return 0;
        }
        size_t ncap = b->cap ? b->cap * 2 : 4096;
        while (ncap - b->len <= (size_t)n)
            ncap *= 2;
        char *nd = ward_realloc(b->data, ncap);
        if (nd == NULL) return WARD_ENOMEM;
        b->data = nd;
        b->cap = ncap;
    }
}

void ward_strbuf_free(ward_strbuf_t *b)
{
    ward_free(b->data);
    memset(b, 0, sizeof(*b));
}

int ward_strbuf_json_str(ward_strbuf_t *b, const char *s)
{
    size_t n = strlen(s);
    /* Worst case every byte becomes \u00XX: reserve for that, plus the quotes. */
    if (ward_strbuf_printf(b, "%*s", (int)(n * 6 + 2), "") < 0) return WARD_ENOMEM;
    b->len -= n * 6 + 2;
    b->data[b->len++] = '"';
    ward_json_escape(b->data, b->cap, &b->len, s, n);
    b->data[b->len++] = '"';
    b->data[b->len] = '\0';
    return 0;
}

int ward_strbuf_label(ward_strbuf_t *b, const char *s)
{
    size_t n = strlen(s);
    /* Worst case every byte is escaped: reserve for that, plus the quotes. */
    if (ward_strbuf_printf(b, "%*s", (int)(n * 2 + 2), "") < 0) return WARD_ENOMEM;
    b->len -= n * 2 + 2;
    b->data[b->len++] = '"';
    for (; *s; s++) {
        char ch = *s;
        if (ch == '\\' || ch == '"' || ch == '\n') {
            b->data[b->len++] = '\\';
            if (ch == '\n') ch = 'n';
        }
        b->data[b->len++] = ch;
    }
    b->data[b->len++] = '"';
    b->data[b->len] = '\0';
    return 0;
}
