/* test_buf.c — the per-worker chunk pool: reuse, cap on kept chunks, accounting. */
#include "unit.h"
#include "ward/buf.h"

static void test_get_put_reuse(void)
{
    ward_pool_t p;
    ward_pool_init(&p, 4);
    ward_chunk_t *a = ward_pool_get(&p);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_EQUAL(a->off, 0);
    CU_ASSERT_EQUAL(a->len, 0);
    CU_ASSERT_EQUAL(p.in_use, 1);
    a->len = 100;
    a->off = 40;
    CU_ASSERT_EQUAL(ward_chunk_pending(a), 60);
    ward_pool_put(&p, a);
    CU_ASSERT_EQUAL(p.in_use, 0);
    CU_ASSERT_EQUAL(p.nfree, 1);
    ward_chunk_t *b = ward_pool_get(&p);
    CU_ASSERT_PTR_EQUAL(a, b); /* reused, and reset */
    CU_ASSERT_EQUAL(b->len, 0);
    CU_ASSERT_EQUAL(b->off, 0);
    ward_pool_put(&p, b);
    ward_pool_destroy(&p);
    CU_ASSERT_EQUAL(p.nfree, 0);
}

static void test_cap(void)
{
    ward_pool_t p;
    ward_chunk_t *c[10];
    ward_pool_init(&p, 3);
    for (int i = 0; i < 10; i++)
        c[i] = ward_pool_get(&p);
    CU_ASSERT_EQUAL(p.in_use, 10);
    for (int i = 0; i < 10; i++)
        ward_pool_put(&p, c[i]);
    CU_ASSERT_EQUAL(p.nfree, 3); /* the rest went back to the allocator */
    CU_ASSERT_EQUAL(p.in_use, 0);
    ward_pool_put(&p, NULL);
    CU_ASSERT_EQUAL(p.nfree, 3);
    ward_pool_destroy(&p);
}

static void test_pending_null(void)
{
    CU_ASSERT_EQUAL(ward_chunk_pending(NULL), 0);
}

void ward_unit_register(void)
{
    WARD_SUITE("buf", WARD_TEST(test_get_put_reuse), WARD_TEST(test_cap),
               WARD_TEST(test_pending_null));
}
