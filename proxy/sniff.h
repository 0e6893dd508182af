/* sniff.h — protocol detection from a client's first bytes (DESIGN.md, "Data path"): the HTTP/2
 * connection preface, an HTTP/1 request line's method, or anything else (opaque TCP — including a
 * TLS ClientHello from an app that does its own TLS). Pure function, no state. */
#ifndef WARD_PROXY_SNIFF_H
#define WARD_PROXY_SNIFF_H

#include <stddef.h>

typedef enum {
    WARD_SNIFF_MORE = 0, /* the bytes so far are a prefix of something recognised: read more */
    WARD_SNIFF_TCP,
    WARD_SNIFF_HTTP1,
    WARD_SNIFF_HTTP2
} ward_sniff_t;

/* Classifies p[0..n). Decides within at most 24 bytes (the HTTP/2 preface); n == 0 is MORE.
 * HTTP/1 is recognised by a registered method followed by a space (GET, HEAD, POST, PUT, DELETE,
 * OPTIONS, PATCH, CONNECT, TRACE); other methods are carried opaque. */
ward_sniff_t ward_sniff(const char *p, size_t n);

#endif
