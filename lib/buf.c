/* buf.c — the per-worker chunk pool (see ward/buf.h). */
#include "ward/buf.h"
#include "ward/alloc.h"

void ward_pool_init(ward_pool_t *p, size_t max_free)
{
    p->free = NULL;
    p->nfree = 0;
    p->max_free = max_free;
    p->in_use = 0;
}

ward_chunk_t *ward_pool_get(ward_pool_t *p)
{
    ward_chunk_t *c = p->free;
    if (c != NULL) {
        p->free = c->next;
        p->nfree--;
    } else {
        c = ward_malloc(sizeof(*c));
        if (c == NULL) return NULL;
    }
    c->next = NULL;
    c->off = c->len = 0;
    p->in_use++;
    return c;
}

void ward_pool_put(ward_pool_t *p, ward_chunk_t *c)
{
    if (c == NULL) return;
    p->in_use--;
    if (p->nfree >= p->max_free) {
        ward_free(c);
        return;
    }
    c->next = p->free;
    p->free = c;
    p->nfree++;
}

void ward_pool_destroy(ward_pool_t *p)
{
    while (p->free != NULL) {
        ward_chunk_t *c = p->free;
        p->free = c->next;
        ward_free(c);
    }
    p->nfree = 0;
}
