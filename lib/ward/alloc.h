/* ward/alloc.h — the replaceable allocator. Every allocation in ward's own code goes through these
 * functions; ward_alloc_install() also hands them to libuv, so one hook (a test's fail-the-Nth
 * allocator, say) sees both. BoringSSL keeps its own allocator. */
#ifndef WARD_ALLOC_H
#define WARD_ALLOC_H

#include <stddef.h>

typedef struct {
    void *(*malloc)(size_t size);
    void *(*realloc)(void *ptr, size_t size);
    void *(*calloc)(size_t count, size_t size);
    void (*free)(void *ptr);
} ward_allocator_t;

/* Installs `a` (NULL = the C library) for ward and libuv. Call before any loop exists.
 * Returns 0 or a negative error. */
int ward_alloc_install(const ward_allocator_t *a);

void *ward_malloc(size_t size);
void *ward_calloc(size_t count, size_t size);
void *ward_realloc(void *ptr, size_t size);
void ward_free(void *ptr);
/* Copies a NUL-terminated string (or its first n bytes); NULL on allocation failure. */
char *ward_strdup(const char *s);
char *ward_strndup(const char *s, size_t n);

/* ward's allocator in the shapes of the libraries' allocator hooks (their headers are not needed
 * here): nghttp2_mem {NULL, ward_ng_malloc, ward_ng_free, ward_ng_calloc, ward_ng_realloc} and
 * ProtobufCAllocator {ward_pb_alloc, ward_pb_free, NULL}. The user-data argument is ignored;
 * ward_pb_alloc never asks for 0 bytes (1 instead). */
void *ward_ng_malloc(size_t size, void *ud);
void ward_ng_free(void *ptr, void *ud);
void *ward_ng_calloc(size_t count, size_t size, void *ud);
void *ward_ng_realloc(void *ptr, size_t size, void *ud);
void *ward_pb_alloc(void *ud, size_t size);
void ward_pb_free(void *ud, void *ptr);

#endif
