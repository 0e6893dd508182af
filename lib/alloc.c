/* alloc.c — the replaceable allocator (see ward/alloc.h). */
#include "ward/alloc.h"

#include <stdlib.h>
#include <string.h>
#include <uv.h>

static ward_allocator_t ward__alloc = {malloc, realloc, calloc, free};

int ward_alloc_install(const ward_allocator_t *a)
{
    ward_allocator_t libc = {malloc, realloc, calloc, free};
    ward__alloc = a ? *a : libc;
    return uv_replace_allocator(ward__alloc.malloc, ward__alloc.realloc, ward__alloc.calloc,
                                ward__alloc.free);
}

void *ward_malloc(size_t size)
{
    return ward__alloc.malloc(size);
}

void *ward_calloc(size_t count, size_t size)
{
    return ward__alloc.calloc(count, size);
}

void *ward_realloc(void *ptr, size_t size)
{
    return ward__alloc.realloc(ptr, size);
}

void ward_free(void *ptr)
{
    ward__alloc.free(ptr);
}

char *ward_strndup(const char *s, size_t n)
{
    char *p = ward_malloc(n + 1);
    if (p == NULL) return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *ward_strdup(const char *s)
{
    return ward_strndup(s, strlen(s));
}

void *ward_ng_malloc(size_t size, void *ud)
{
    (void)ud;
    return ward_malloc(size);
}

void ward_ng_free(void *ptr, void *ud)
{
    (void)ud;
    ward_free(ptr);
}

void *ward_ng_calloc(size_t count, size_t size, void *ud)
{
    (void)ud;
    return ward_calloc(count, size);
}

void *ward_ng_realloc(void *ptr, size_t size, void *ud)
{
    (void)ud;
    return ward_realloc(ptr, size);
}

void *ward_pb_alloc(void *ud, size_t size)
{
    (void)ud;
    return ward_malloc(size ? size : 1);
}

void ward_pb_free(void *ud, void *ptr)
{
    (void)ud;
    ward_free(ptr);
}
