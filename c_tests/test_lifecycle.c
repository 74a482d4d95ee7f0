/* The object lifecycle of zcopy's C API, as include/zcopy.h and DESIGN.md ("The lifecycle (the
 * contract)") describe it: create -> write in place -> seal -> get (zero copy) -> release, abort,
 * delete while referenced, pool full, limits, blocking gets, close with live buffers, stats, the
 * one-copy put/get_into and the batch calls. */

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "harness.h"

static bool aligned64(const void *p) {
    return ((uintptr_t)p % ZC_ALIGNMENT) == 0;
}

/* Opens a pool of `size` bytes on small pages, without prefaulting (quick). */
static bool open_small(size_t size, uint64_t max_objects, zc_pool **out) {
    zc_pool_options o;
    zc_pool_options_init(&o);
    o.size = size;
    o.max_objects = max_objects;
    o.page_mode = ZC_PAGES_SMALL;
    o.prefault = false;
    *out = NULL;
    CHECK_OK(zc_pool_open(&o, out));
    CHECK(*out != NULL);
    return true;
}

static bool stats_of(const zc_pool *pool, zc_pool_stats *st) {
    memset(st, 0xA5, sizeof *st);
    CHECK_OK(zc_pool_get_stats(pool, st));
    CHECK(st->used_bytes % 64 == 0);
    CHECK(st->used_bytes <= st->capacity_bytes);
    for (size_t i = 0; i < sizeof st->reserved / sizeof st->reserved[0]; i++) {
        CHECK(st->reserved[i] == 0);
    }
    return true;
}

/* Creates `key` with `size` bytes of pattern `seed` and seals it. The sealed writer handle goes to
 * `*writer` if it is not NULL, else it is released. */
static bool make_sealed(zc_pool *pool, const char *key, size_t key_len, size_t size, uint32_t seed,
                        zc_buffer **writer) {
    zc_buffer *w = NULL;
    CHECK_OK(zc_create_buffer(pool, key, key_len, size, &w));
    CHECK(w != NULL);
    CHECK(zc_buffer_size(w) == size);
    uint8_t *data = zc_buffer_data(w);
    CHECK(data != NULL);
    fill_pattern(data, size, seed);
    CHECK_OK(zc_seal(w));
    if (writer != NULL) {
        *writer = w;
    } else {
        zc_release(w);
    }
    return true;
}

/* ---- options and open ------------------------------------------------------------------------ */

static bool test_options_init_sets_documented_defaults(void) {
    zc_pool_options o;
    memset(&o, 0xAB, sizeof o);
    zc_pool_options_init(&o);
    CHECK(o.size == ZC_DEFAULT_POOL_SIZE);
    CHECK(o.size == (uint64_t)256 << 20);
    CHECK(o.max_objects == 0);
    CHECK(o.hugetlbfs_dir == NULL);
    CHECK(o.page_mode == ZC_PAGES_TRANSPARENT_HUGE);
    CHECK(o.prefault == true);
    CHECK(o.lock_memory == false);
    for (size_t i = 0; i < sizeof o.reserved / sizeof o.reserved[0]; i++) {
        CHECK(o.reserved[i] == 0);
    }
    return true;
}

static bool test_open_with_null_options_uses_defaults(void) {
    zc_pool *pool = NULL;
    CHECK_OK(zc_pool_open(NULL, &pool));
    CHECK(pool != NULL);
    zc_pool_stats st;
    if (!stats_of(pool, &st)) return false;
    /* 256 MiB, rounded up to the (huge) page size. */
    CHECK(st.page_size >= 4096);
    CHECK(st.capacity_bytes >= ZC_DEFAULT_POOL_SIZE);
    CHECK(st.capacity_bytes % st.page_size == 0);
    CHECK(st.capacity_bytes < (uint64_t)ZC_DEFAULT_POOL_SIZE + st.page_size);
    /* max_objects 0 derives one per 4 KiB, at least 1024. */
    CHECK(st.max_objects == st.capacity_bytes / 4096);
    CHECK(st.used_bytes == 0 && st.object_count == 0 && st.key_count == 0);
    CHECK(st.largest_free_block > 0 && st.largest_free_block <= st.capacity_bytes);

    /* A default pool works end to end. */
    zc_buffer *w = NULL, *r = NULL;
    if (!make_sealed(pool, K("default"), 5000, 7, &w)) return false;
    CHECK_OK(zc_get(pool, K("default"), 0, &r));
    CHECK(zc_buffer_const_data(r) == zc_buffer_const_data(w));
    CHECK(has_pattern(zc_buffer_const_data(r), 5000, 7));
    zc_release(r);
    zc_release(w);
    zc_pool_close(pool);
    return true;
}

static bool test_open_with_initialized_default_options(void) {
    zc_pool_options o;
    zc_pool_options_init(&o);
    zc_pool *pool = NULL;
    CHECK_OK(zc_pool_open(&o, &pool));
    CHECK(pool != NULL);
    zc_pool_stats st;
    if (!stats_of(pool, &st)) return false;
    CHECK(st.capacity_bytes >= ZC_DEFAULT_POOL_SIZE);
    CHECK(st.capacity_bytes < (uint64_t)ZC_DEFAULT_POOL_SIZE + st.page_size);
    CHECK(st.object_count == 0);
    CHECK_OK(zc_put(pool, K("v"), (const uint8_t *)"value", 5));
    uint8_t dst[8];
    size_t got = 0;
    CHECK_OK(zc_get_into(pool, K("v"), 0, dst, sizeof dst, &got));
    CHECK(got == 5 && memcmp(dst, "value", 5) == 0);
    zc_pool_close(pool);
    return true;
}

static bool test_open_small_pool_reports_capacity_and_limits(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_pool_stats st;
    if (!stats_of(pool, &st)) return false;
    CHECK(st.capacity_bytes == 4 * MIB);
    CHECK(st.page_size == 4096);
    CHECK(st.max_objects == 1024); /* 4 MiB / 4 KiB = 1024, and at least 1024 */
    CHECK(st.used_bytes == 0 && st.object_count == 0 && st.key_count == 0);
    zc_pool_close(pool);

    /* The capacity is the size asked for, rounded up to 64 bytes (not to the page size). */
    if (!open_small(5000, 0, &pool)) return false;
    if (!stats_of(pool, &st)) return false;
    CHECK(st.capacity_bytes == 5056);
    CHECK(st.max_objects == 1024);
    zc_pool_close(pool);
    return true;
}

/* ---- create / write / seal / get ------------------------------------------------------------- */

static bool test_round_trip_get_returns_writer_pointer_zero_copy(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_buffer *w = BAD_BUF;
    CHECK_OK(zc_create_buffer(pool, K("alpha"), 1000, &w));
    CHECK(w != NULL && w != BAD_BUF);
    CHECK(zc_buffer_size(w) == 1000);
    uint8_t *wdata = zc_buffer_data(w);
    CHECK(wdata != NULL);
    CHECK(aligned64(wdata));
    CHECK(zc_buffer_const_data(w) == wdata);
    fill_pattern(wdata, 1000, 42);
    CHECK_OK(zc_seal(w));
    CHECK(zc_buffer_const_data(w) == wdata);

    zc_buffer *r = BAD_BUF;
    CHECK_OK(zc_get(pool, K("alpha"), 0, &r));
    CHECK(r != NULL && r != BAD_BUF && r != w);
    CHECK(zc_buffer_size(r) == 1000);
    /* The zero-copy proof: the reader sees the very bytes the writer wrote, at the same address. */
    CHECK(zc_buffer_const_data(r) == wdata);
    CHECK(has_pattern(zc_buffer_const_data(r), 1000, 42));

    /* A second reader sees the same address too. */
    zc_buffer *r2 = NULL;
    CHECK_OK(zc_get(pool, K("alpha"), 0, &r2));
    CHECK(zc_buffer_const_data(r2) == wdata);
    zc_release(r2);
    zc_release(r);
    zc_release(w);
    zc_pool_close(pool);
    return true;
}

static bool test_get_view_answers_handle_address_size_and_leading_bytes_in_one_call(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_buffer *w;
    CHECK_OK(zc_create_buffer(pool, K("long"), 1000, &w));
    uint8_t *wdata = zc_buffer_data(w);
    fill_pattern(wdata, 1000, 9);
    CHECK_OK(zc_seal(w));
    zc_buffer *s;
    CHECK_OK(zc_create_buffer(pool, K("short"), 10, &s));
    fill_pattern(zc_buffer_data(s), 10, 3);
    CHECK_OK(zc_seal(s));

    zc_view v;
    memset(&v, 0xAB, sizeof v);
    CHECK_OK(zc_get_view(pool, K("long"), 0, &v));
    CHECK(v.buffer != NULL && v.buffer != w);
    /* The very bytes the writer wrote (no copy), as zc_get's accessors answer them. */
    CHECK(v.data == wdata && v.data == zc_buffer_const_data(v.buffer));
    CHECK(v.size == 1000 && zc_buffer_size(v.buffer) == 1000);
    CHECK(memcmp(v.head, wdata, ZC_VIEW_HEAD_BYTES) == 0);
    zc_pool_stats st;
    CHECK_OK(zc_pool_get_stats(pool, &st));
    CHECK(st.object_count == 2);

    /* A value shorter than the head: its bytes, then zeros (not whatever was there). */
    zc_view sv;
    memset(&sv, 0xAB, sizeof sv);
    CHECK_OK(zc_get_view(pool, K("short"), 0, &sv));
    CHECK(sv.size == 10 && has_pattern(sv.head, 10, 3));
    for (size_t i = 10; i < ZC_VIEW_HEAD_BYTES; i++) {
        CHECK(sv.head[i] == 0);
    }

    /* The view holds the object like any get: a delete leaves its bytes to it. */
    CHECK_OK(zc_delete(pool, K("long")));
    CHECK(has_pattern(v.data, 1000, 9));
    zc_release(v.buffer);
    zc_release(sv.buffer);
    zc_release(w);
    zc_release(s);
    zc_pool_close(pool);
    return true;
}

static bool test_get_view_failures_answer_status_and_leave_the_view_untouched(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_buffer *w;
    CHECK_OK(zc_create_buffer(pool, K("pending"), 10, &w));
    zc_view v, before;
    memset(&v, 0x5A, sizeof v);
    memcpy(&before, &v, sizeof v);
    CHECK_STATUS(zc_get_view(pool, K("absent"), 0, &v), ZC_ERR_NOT_FOUND);
    CHECK(strstr(zc_last_error_message(), "absent") != NULL);
    CHECK_STATUS(zc_get_view(pool, K("pending"), 0, &v), ZC_ERR_NOT_SEALED);
    CHECK_STATUS(zc_get_view(pool, K("absent"), 30, &v), ZC_ERR_TIMEOUT);
    CHECK(memcmp(&v, &before, sizeof v) == 0);
    CHECK_STATUS(zc_get_view(pool, K("pending"), 0, NULL), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_get_view(NULL, K("pending"), 0, &v), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_get_view(pool, NULL, 3, 0, &v), ZC_ERR_INVALID_ARGUMENT);
    CHECK(memcmp(&v, &before, sizeof v) == 0);
    zc_release(w);
    zc_pool_stats st;
    CHECK_OK(zc_pool_get_stats(pool, &st));
    CHECK(st.object_count == 0 && st.used_bytes == 0);
    zc_pool_close(pool);
    return true;
}

static bool test_data_pointers_are_64_byte_aligned_and_disjoint(void) {
    static const size_t sizes[] = { 1, 3, 63, 64, 65, 100, 127, 129, 1000, 4095, 4096, 4097, 65537 };
    enum { N = sizeof sizes / sizeof sizes[0] };
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_buffer *bufs[N];
    for (size_t i = 0; i < N; i++) {
        char key[16];
        int len = snprintf(key, sizeof key, "align-%zu", i);
        CHECK_OK(zc_create_buffer(pool, key, (size_t)len, sizes[i], &bufs[i]));
        uint8_t *d = zc_buffer_data(bufs[i]);
        CHECK(d != NULL);
        CHECK(aligned64(d));
        CHECK(aligned64(zc_buffer_const_data(bufs[i])));
        fill_pattern(d, sizes[i], (uint32_t)i);
    }
    /* No two objects overlap: every pattern survived every other write. */
    for (size_t i = 0; i < N; i++) {
        CHECK(has_pattern(zc_buffer_const_data(bufs[i]), sizes[i], (uint32_t)i));
        CHECK_OK(zc_seal(bufs[i]));
        CHECK(aligned64(zc_buffer_const_data(bufs[i])));
    }
    for (size_t i = 0; i < N; i++) {
        zc_release(bufs[i]);
    }
    zc_pool_close(pool);
    return true;
}

static bool test_writable_pointer_is_null_after_seal_and_for_get_handles(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_buffer *w;
    CHECK_OK(zc_create_buffer(pool, K("ro"), 256, &w));
    uint8_t *wdata = zc_buffer_data(w);
    CHECK(wdata != NULL);
    fill_pattern(wdata, 256, 3);
    CHECK_OK(zc_seal(w));
    CHECK(zc_buffer_data(w) == NULL);
    CHECK(zc_buffer_const_data(w) == wdata);
    CHECK(zc_buffer_size(w) == 256);

    zc_buffer *r;
    CHECK_OK(zc_get(pool, K("ro"), 0, &r));
    CHECK(zc_buffer_data(r) == NULL);
    CHECK(zc_buffer_const_data(r) == wdata);
    CHECK(zc_buffer_size(r) == 256);
    CHECK(has_pattern(zc_buffer_const_data(r), 256, 3));
    zc_release(r);
    zc_release(w);
    zc_pool_close(pool);
    return true;
}

static bool test_zero_size_value_round_trips(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_buffer *w = NULL;
    CHECK_OK(zc_create_buffer(pool, K("empty"), 0, &w));
    CHECK(w != NULL);
    CHECK(zc_buffer_size(w) == 0);
    CHECK(zc_buffer_const_data(w) != NULL); /* NULL only for a NULL buf */
    CHECK(aligned64(zc_buffer_const_data(w)));
    CHECK(!zc_contains(pool, K("empty")));
    CHECK_OK(zc_seal(w));
    CHECK(zc_contains(pool, K("empty")));

    zc_buffer *r = NULL;
    CHECK_OK(zc_get(pool, K("empty"), 0, &r));
    CHECK(r != NULL);
    CHECK(zc_buffer_size(r) == 0);
    CHECK(zc_buffer_const_data(r) != NULL);

    size_t got = 777;
    CHECK_OK(zc_get_into(pool, K("empty"), 0, NULL, 0, &got));
    CHECK(got == 0);

    zc_pool_stats st;
    if (!stats_of(pool, &st)) return false;
    CHECK(st.object_count == 1 && st.key_count == 1 && st.used_bytes == 0);

    CHECK_OK(zc_put(pool, K("empty-put"), NULL, 0));
    CHECK(zc_contains(pool, K("empty-put")));
    CHECK_OK(zc_delete(pool, K("empty-put")));

    zc_release(r);
    zc_release(w);
    CHECK_OK(zc_delete(pool, K("empty")));
    if (!stats_of(pool, &st)) return false;
    CHECK(st.object_count == 0 && st.key_count == 0 && st.used_bytes == 0);
    zc_pool_close(pool);
    return true;
}

static bool test_create_of_created_or_sealed_key_is_already_exists(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_buffer *w;
    CHECK_OK(zc_create_buffer(pool, K("dup"), 64, &w));
    fill_pattern(zc_buffer_data(w), 64, 9);

    zc_buffer *other = BAD_BUF;
    CHECK_STATUS(zc_create_buffer(pool, K("dup"), 64, &other), ZC_ERR_ALREADY_EXISTS);
    CHECK(other == BAD_BUF);
    CHECK(strstr(zc_last_error_message(), "dup") != NULL);
    CHECK_STATUS(zc_put(pool, K("dup"), (const uint8_t *)"x", 1), ZC_ERR_ALREADY_EXISTS);

    CHECK_OK(zc_seal(w));
    CHECK_STATUS(zc_create_buffer(pool, K("dup"), 128, &other), ZC_ERR_ALREADY_EXISTS);
    CHECK(other == BAD_BUF);

    /* The original value is untouched. */
    zc_buffer *r;
    CHECK_OK(zc_get(pool, K("dup"), 0, &r));
    CHECK(zc_buffer_size(r) == 64);
    CHECK(has_pattern(zc_buffer_const_data(r), 64, 9));
    zc_pool_stats st;
    if (!stats_of(pool, &st)) return false;
    CHECK(st.object_count == 1 && st.key_count == 1 && st.used_bytes == 64);
    zc_release(r);
    zc_release(w);
    zc_pool_close(pool);
    return true;
}

/* ---- abort and release ----------------------------------------------------------------------- */

static bool test_abort_unsealed_frees_memory_and_key(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_pool_stats st;
    zc_buffer *w;
    CHECK_OK(zc_create_buffer(pool, K("tmp"), 10000, &w));
    if (!stats_of(pool, &st)) return false;
    CHECK(st.used_bytes == 10048); /* rounded up to 64 */
    CHECK(st.object_count == 1 && st.key_count == 1);

    CHECK_OK(zc_abort(w));
    if (!stats_of(pool, &st)) return false;
    CHECK(st.used_bytes == 0 && st.object_count == 0 && st.key_count == 0);
    CHECK(!zc_contains(pool, K("tmp")));
    zc_buffer *r = BAD_BUF;
    CHECK_STATUS(zc_get(pool, K("tmp"), 0, &r), ZC_ERR_NOT_FOUND);
    CHECK(r == BAD_BUF);
    CHECK_STATUS(zc_delete(pool, K("tmp")), ZC_ERR_NOT_FOUND);

    /* The key can be created again. */
    if (!make_sealed(pool, K("tmp"), 100, 5, NULL)) return false;
    CHECK_OK(zc_get(pool, K("tmp"), 0, &r));
    CHECK(has_pattern(zc_buffer_const_data(r), 100, 5));
    zc_release(r);
    zc_pool_close(pool);
    return true;
}

static bool test_abort_of_sealed_is_already_sealed_and_object_stays(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_buffer *w;
    if (!make_sealed(pool, K("keep"), 500, 11, &w)) return false;
    const uint8_t *addr = zc_buffer_const_data(w);

    CHECK_STATUS(zc_abort(w), ZC_ERR_ALREADY_SEALED);
    /* The handle is still valid and the object still readable. */
    CHECK(zc_buffer_const_data(w) == addr);
    CHECK(zc_buffer_size(w) == 500);
    CHECK(has_pattern(addr, 500, 11));
    CHECK(zc_contains(pool, K("keep")));

    zc_buffer *r;
    CHECK_OK(zc_get(pool, K("keep"), 0, &r));
    CHECK_STATUS(zc_abort(r), ZC_ERR_ALREADY_SEALED);
    CHECK(zc_buffer_const_data(r) == addr);
    CHECK(has_pattern(zc_buffer_const_data(r), 500, 11));

    zc_pool_stats st;
    if (!stats_of(pool, &st)) return false;
    CHECK(st.object_count == 1 && st.key_count == 1 && st.used_bytes == 512);
    zc_release(r);
    zc_release(w);
    CHECK(zc_contains(pool, K("keep")));
    CHECK_OK(zc_delete(pool, K("keep")));
    if (!stats_of(pool, &st)) return false;
    CHECK(st.object_count == 0 && st.used_bytes == 0);
    zc_pool_close(pool);
    return true;
}

static bool test_release_of_unsealed_buffer_aborts_it(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_buffer *w;
    CHECK_OK(zc_create_buffer(pool, K("dropped"), 3000, &w));
    fill_pattern(zc_buffer_data(w), 3000, 1);
    zc_release(w);

    zc_pool_stats st;
    if (!stats_of(pool, &st)) return false;
    CHECK(st.used_bytes == 0 && st.object_count == 0 && st.key_count == 0);
    CHECK(!zc_contains(pool, K("dropped")));
    zc_buffer *r = BAD_BUF;
    CHECK_STATUS(zc_get(pool, K("dropped"), 0, &r), ZC_ERR_NOT_FOUND);
    CHECK(r == BAD_BUF);
    /* The key is free again. */
    CHECK_OK(zc_create_buffer(pool, K("dropped"), 10, &w));
    zc_release(w);
    zc_pool_close(pool);
    return true;
}

/* ---- seal misuse ----------------------------------------------------------------------------- */

static bool test_double_seal_and_seal_of_get_handle_are_already_sealed(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_buffer *w;
    if (!make_sealed(pool, K("twice"), 128, 2, &w)) return false;
    CHECK_STATUS(zc_seal(w), ZC_ERR_ALREADY_SEALED);
    CHECK(strstr(zc_last_error_message(), "twice") != NULL);

    zc_buffer *r;
    CHECK_OK(zc_get(pool, K("twice"), 0, &r));
    CHECK_STATUS(zc_seal(r), ZC_ERR_ALREADY_SEALED);
    CHECK(zc_buffer_data(r) == NULL);

    /* Nothing changed. */
    CHECK(has_pattern(zc_buffer_const_data(r), 128, 2));
    CHECK(zc_contains(pool, K("twice")));
    zc_release(r);
    zc_release(w);
    zc_pool_close(pool);
    return true;
}

/* ---- get, contains, delete ------------------------------------------------------------------- */

static bool test_get_without_wait_is_not_sealed_or_not_found(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_buffer *w;
    CHECK_OK(zc_create_buffer(pool, K("pending"), 10, &w));
    zc_buffer *r = BAD_BUF;
    CHECK_STATUS(zc_get(pool, K("pending"), 0, &r), ZC_ERR_NOT_SEALED);
    CHECK(r == BAD_BUF);
    CHECK_STATUS(zc_get(pool, K("absent"), 0, &r), ZC_ERR_NOT_FOUND);
    CHECK(r == BAD_BUF);
    CHECK(strstr(zc_last_error_message(), "absent") != NULL);

    uint8_t dst[16];
    size_t got = 99;
    CHECK_STATUS(zc_get_into(pool, K("pending"), 0, dst, sizeof dst, &got), ZC_ERR_NOT_SEALED);
    CHECK_STATUS(zc_get_into(pool, K("absent"), 0, dst, sizeof dst, &got), ZC_ERR_NOT_FOUND);
    CHECK(got == 99);

    CHECK_OK(zc_seal(w));
    CHECK_OK(zc_get(pool, K("pending"), 0, &r));
    CHECK(r != BAD_BUF && r != NULL);
    zc_release(r);
    zc_release(w);
    zc_pool_close(pool);
    return true;
}

static bool test_contains_is_true_only_for_sealed_keys(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    CHECK(!zc_contains(pool, K("c")));
    zc_buffer *w;
    CHECK_OK(zc_create_buffer(pool, K("c"), 10, &w));
    CHECK(!zc_contains(pool, K("c")));
    CHECK_OK(zc_abort(w));
    CHECK(!zc_contains(pool, K("c")));
    CHECK_OK(zc_create_buffer(pool, K("c"), 10, &w));
    CHECK_OK(zc_seal(w));
    CHECK(zc_contains(pool, K("c")));
    CHECK(!zc_contains(pool, K("c2")));
    CHECK(!zc_contains(pool, "c", 0));
    zc_release(w);
    CHECK(zc_contains(pool, K("c")));
    CHECK_OK(zc_delete(pool, K("c")));
    CHECK(!zc_contains(pool, K("c")));
    zc_pool_close(pool);
    return true;
}

static bool test_delete_while_referenced_keeps_reader_bytes(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_buffer *w1, *r1;
    if (!make_sealed(pool, K("shared"), 2000, 21, &w1)) return false;
    CHECK_OK(zc_get(pool, K("shared"), 0, &r1));
    const uint8_t *old_addr = zc_buffer_const_data(r1);

    CHECK_OK(zc_delete(pool, K("shared")));
    /* The key is gone at once. */
    CHECK(!zc_contains(pool, K("shared")));
    zc_buffer *r = BAD_BUF;
    CHECK_STATUS(zc_get(pool, K("shared"), 0, &r), ZC_ERR_NOT_FOUND);
    CHECK(r == BAD_BUF);
    CHECK_STATUS(zc_delete(pool, K("shared")), ZC_ERR_NOT_FOUND);

    /* ... and can be created again, with new content. */
    zc_buffer *w2;
    CHECK_OK(zc_create_buffer(pool, K("shared"), 3000, &w2));
    uint8_t *new_addr = zc_buffer_data(w2);
    CHECK(new_addr != NULL);
    CHECK(new_addr != old_addr); /* the old block is still held, so it cannot be reused */
    fill_pattern(new_addr, 3000, 22);
    CHECK_OK(zc_seal(w2));

    zc_buffer *r2;
    CHECK_OK(zc_get(pool, K("shared"), 0, &r2));
    CHECK(zc_buffer_const_data(r2) == new_addr);
    CHECK(zc_buffer_size(r2) == 3000);
    CHECK(has_pattern(zc_buffer_const_data(r2), 3000, 22));

    /* The old reader still sees the old, unchanged bytes at the old address. */
    CHECK(zc_buffer_const_data(r1) == old_addr);
    CHECK(zc_buffer_size(r1) == 2000);
    CHECK(has_pattern(old_addr, 2000, 21));
    CHECK(zc_buffer_const_data(w1) == old_addr);

    zc_pool_stats st;
    if (!stats_of(pool, &st)) return false;
    CHECK(st.object_count == 2 && st.key_count == 1);
    CHECK(st.used_bytes == 2048 + 3008);

    zc_release(w1);
    if (!stats_of(pool, &st)) return false;
    CHECK(st.object_count == 2 && st.used_bytes == 2048 + 3008);
    CHECK(has_pattern(old_addr, 2000, 21));
    zc_release(r1);
    if (!stats_of(pool, &st)) return false;
    CHECK(st.object_count == 1 && st.key_count == 1 && st.used_bytes == 3008);

    zc_release(r2);
    zc_release(w2);
    CHECK(zc_contains(pool, K("shared")));
    zc_pool_close(pool);
    return true;
}

static bool test_counts_drop_only_at_the_last_release(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    if (!make_sealed(pool, K("refs"), 1000, 4, NULL)) return false;
    zc_buffer *r[3];
    for (size_t i = 0; i < 3; i++) {
        CHECK_OK(zc_get(pool, K("refs"), 0, &r[i]));
    }
    CHECK_OK(zc_delete(pool, K("refs")));
    zc_pool_stats st;
    for (size_t i = 0; i < 3; i++) {
        if (!stats_of(pool, &st)) return false;
        CHECK(st.key_count == 0);
        CHECK(st.object_count == 1);
        CHECK(st.used_bytes == 1024);
        CHECK(has_pattern(zc_buffer_const_data(r[i]), 1000, 4));
        zc_release(r[i]);
    }
    if (!stats_of(pool, &st)) return false;
    CHECK(st.object_count == 0 && st.used_bytes == 0 && st.key_count == 0);
    zc_pool_close(pool);
    return true;
}

static bool test_delete_of_unsealed_is_not_sealed_and_of_absent_is_not_found(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_buffer *w;
    CHECK_OK(zc_create_buffer(pool, K("busy"), 64, &w));
    fill_pattern(zc_buffer_data(w), 64, 8);
    CHECK_STATUS(zc_delete(pool, K("busy")), ZC_ERR_NOT_SEALED);
    CHECK_STATUS(zc_delete(pool, K("nobody")), ZC_ERR_NOT_FOUND);
    CHECK(strstr(zc_last_error_message(), "nobody") != NULL);
    /* The refused delete left the creator's buffer alone: it can still write and seal. */
    CHECK(zc_buffer_data(w) != NULL);
    CHECK_OK(zc_seal(w));
    zc_buffer *r;
    CHECK_OK(zc_get(pool, K("busy"), 0, &r));
    CHECK(has_pattern(zc_buffer_const_data(r), 64, 8));
    zc_release(r);
    zc_release(w);
    CHECK_OK(zc_delete(pool, K("busy")));
    zc_pool_close(pool);
    return true;
}

/* ---- capacity and limits --------------------------------------------------------------------- */

static bool test_pool_full_then_space_is_reused_after_delete_and_release(void) {
    enum { MAX = 64 };
    const size_t big = 512 * KIB;
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    char keys[MAX][16];
    size_t klen[MAX];
    size_t n = 0;
    zc_status s = ZC_OK;
    while (n < MAX) {
        klen[n] = (size_t)snprintf(keys[n], sizeof keys[n], "big-%zu", n);
        zc_buffer *w = BAD_BUF;
        s = zc_create_buffer(pool, keys[n], klen[n], big, &w);
        if (s != ZC_OK) {
            CHECK(w == BAD_BUF);
            break;
        }
        fill_pattern(zc_buffer_data(w), big, (uint32_t)n);
        CHECK_OK(zc_seal(w));
        zc_release(w);
        n++;
    }
    CHECK_STATUS(s, ZC_ERR_OUT_OF_MEMORY);
    CHECK(strstr(zc_last_error_message(), "pool full") != NULL);
    CHECK(n >= 4 && n <= 8);
    CHECK(!zc_contains(pool, keys[n], klen[n])); /* the failed create stored nothing */

    zc_pool_stats st;
    if (!stats_of(pool, &st)) return false;
    CHECK(st.used_bytes == n * big);
    CHECK(st.object_count == n && st.key_count == n);
    CHECK(st.largest_free_block < big);

    /* Deleted but still referenced: the memory is still held, the pool still full. */
    zc_buffer *r0;
    CHECK_OK(zc_get(pool, keys[0], klen[0], 0, &r0));
    CHECK_OK(zc_delete(pool, keys[0], klen[0]));
    zc_buffer *w = BAD_BUF;
    CHECK_STATUS(zc_create_buffer(pool, K("again"), big, &w), ZC_ERR_OUT_OF_MEMORY);
    CHECK(w == BAD_BUF);
    CHECK(has_pattern(zc_buffer_const_data(r0), big, 0));

    /* The last release frees it: creation succeeds again. */
    zc_release(r0);
    CHECK_OK(zc_create_buffer(pool, K("again"), big, &w));
    fill_pattern(zc_buffer_data(w), big, 1000);
    CHECK_OK(zc_seal(w));
    zc_release(w);

    /* Deleting unreferenced objects frees their memory at once. */
    CHECK_OK(zc_delete(pool, keys[1], klen[1]));
    CHECK_OK(zc_delete(pool, keys[2], klen[2]));
    if (!stats_of(pool, &st)) return false;
    CHECK(st.used_bytes == (n - 2) * big);
    CHECK_OK(zc_create_buffer(pool, K("again2"), big, &w));
    zc_buffer *w2;
    CHECK_OK(zc_create_buffer(pool, K("again3"), big, &w2));
    zc_release(w2);
    zc_release(w);

    /* Survivors are unchanged. */
    for (size_t i = 3; i < n; i++) {
        zc_buffer *r;
        CHECK_OK(zc_get(pool, keys[i], klen[i], 0, &r));
        CHECK(has_pattern(zc_buffer_const_data(r), big, (uint32_t)i));
        zc_release(r);
    }
    zc_pool_close(pool);
    return true;
}

static bool test_size_larger_than_capacity_is_invalid_argument(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_buffer *w = BAD_BUF;
    CHECK_STATUS(zc_create_buffer(pool, K("huge"), 4 * MIB + 1, &w), ZC_ERR_INVALID_ARGUMENT);
    CHECK(w == BAD_BUF);
    CHECK_STATUS(zc_create_buffer(pool, K("huge"), 64 * MIB, &w), ZC_ERR_INVALID_ARGUMENT);
    CHECK(w == BAD_BUF);
    CHECK(!zc_contains(pool, K("huge")));

    /* Exactly the capacity fits an empty pool. */
    CHECK_OK(zc_create_buffer(pool, K("huge"), 4 * MIB, &w));
    CHECK(w != BAD_BUF && zc_buffer_data(w) != NULL);
    uint8_t *d = zc_buffer_data(w);
    d[0] = 1;
    d[4 * MIB - 1] = 2;
    zc_pool_stats st;
    if (!stats_of(pool, &st)) return false;
    CHECK(st.used_bytes == 4 * MIB);
    zc_release(w);
    if (!stats_of(pool, &st)) return false;
    CHECK(st.used_bytes == 0 && st.object_count == 0);
    zc_pool_close(pool);
    return true;
}

static bool test_max_objects_limit_is_out_of_memory(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 4, &pool)) return false;
    zc_pool_stats st;
    if (!stats_of(pool, &st)) return false;
    CHECK(st.max_objects == 4);

    zc_buffer *w[4];
    CHECK_OK(zc_create_buffer(pool, K("o0"), 64, &w[0]));
    CHECK_OK(zc_create_buffer(pool, K("o1"), 0, &w[1])); /* size 0 still counts */
    CHECK_OK(zc_create_buffer(pool, K("o2"), 100, &w[2]));
    CHECK_OK(zc_seal(w[2]));
    CHECK_OK(zc_create_buffer(pool, K("o3"), 1, &w[3]));
    CHECK_OK(zc_seal(w[3]));

    zc_buffer *extra = BAD_BUF;
    CHECK_STATUS(zc_create_buffer(pool, K("o4"), 64, &extra), ZC_ERR_OUT_OF_MEMORY);
    CHECK(extra == BAD_BUF);
    CHECK(strstr(zc_last_error_message(), "object limit") != NULL);
    CHECK_STATUS(zc_create_buffer(pool, K("o4"), 0, &extra), ZC_ERR_OUT_OF_MEMORY);
    CHECK_STATUS(zc_put(pool, K("o4"), (const uint8_t *)"abc", 3), ZC_ERR_OUT_OF_MEMORY);
    CHECK(!zc_contains(pool, K("o4")));
    if (!stats_of(pool, &st)) return false;
    CHECK(st.object_count == 4 && st.key_count == 4);

    /* Freeing one object makes room for one more. */
    zc_release(w[0]); /* unsealed: aborted */
    CHECK_OK(zc_create_buffer(pool, K("o4"), 64, &extra));
    CHECK_STATUS(zc_create_buffer(pool, K("o5"), 64, &w[0]), ZC_ERR_OUT_OF_MEMORY);
    zc_release(extra);
    zc_release(w[1]);
    zc_release(w[2]);
    zc_release(w[3]);
    zc_pool_close(pool);
    return true;
}

static bool test_largest_free_block_can_always_be_created(void) {
    enum { SLOTS = 128 };
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_buffer *live[SLOTS] = { NULL };
    uint64_t rng = 0x9e3779b97f4a7c15ull;
    for (int it = 0; it < 2000; it++) {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        size_t slot = (size_t)(rng % SLOTS);
        if (live[slot] != NULL) {
            zc_release(live[slot]);
            live[slot] = NULL;
        } else {
            char key[16];
            int len = snprintf(key, sizeof key, "frag-%zu", slot);
            zc_status s = zc_create_buffer(pool, key, (size_t)len, (size_t)((rng >> 20) % 150000), &live[slot]);
            CHECK(s == ZC_OK || s == ZC_ERR_OUT_OF_MEMORY);
            if (s != ZC_OK) {
                live[slot] = NULL;
            }
        }
        /* The documented promise: a create of largest_free_block bytes succeeds right now. */
        zc_pool_stats st;
        if (!stats_of(pool, &st)) return false;
        CHECK(st.largest_free_block <= st.capacity_bytes - st.used_bytes);
        if (st.largest_free_block > 0) {
            zc_buffer *probe = NULL;
            CHECK_OK(zc_create_buffer(pool, K("probe"), st.largest_free_block, &probe));
            zc_release(probe);
        }
    }
    for (size_t i = 0; i < SLOTS; i++) {
        zc_release(live[i]);
    }
    zc_pool_stats st;
    if (!stats_of(pool, &st)) return false;
    CHECK(st.used_bytes == 0 && st.object_count == 0 && st.key_count == 0);
    CHECK(st.largest_free_block == st.capacity_bytes); /* frees coalesce back to one range */
    zc_pool_close(pool);
    return true;
}

static bool test_default_object_limit_is_one_per_4_kib(void) {
    enum { LIMIT = 2048 }; /* 8 MiB / 4 KiB */
    zc_pool *pool;
    if (!open_small(8 * MIB, 0, &pool)) return false;
    zc_pool_stats st;
    if (!stats_of(pool, &st)) return false;
    CHECK(st.max_objects == LIMIT);
    static zc_buffer *bufs[LIMIT];
    for (size_t i = 0; i < LIMIT; i++) {
        char key[16];
        int len = snprintf(key, sizeof key, "obj-%zu", i);
        CHECK_OK(zc_create_buffer(pool, key, (size_t)len, 64 + (i % 3) * 64, &bufs[i]));
    }
    zc_buffer *extra = BAD_BUF;
    CHECK_STATUS(zc_create_buffer(pool, K("one-too-many"), 64, &extra), ZC_ERR_OUT_OF_MEMORY);
    CHECK(extra == BAD_BUF);
    CHECK(strstr(zc_last_error_message(), "object limit") != NULL);
    if (!stats_of(pool, &st)) return false;
    CHECK(st.object_count == LIMIT && st.key_count == LIMIT);
    /* Free every other one: as many fit again, with the holes in between. */
    for (size_t i = 0; i < LIMIT; i += 2) {
        zc_release(bufs[i]);
    }
    for (size_t i = 0; i < LIMIT; i += 2) {
        char key[16];
        int len = snprintf(key, sizeof key, "again-%zu", i);
        CHECK_OK(zc_create_buffer(pool, key, (size_t)len, 100, &bufs[i]));
    }
    CHECK_STATUS(zc_create_buffer(pool, K("one-too-many"), 64, &extra), ZC_ERR_OUT_OF_MEMORY);
    for (size_t i = 0; i < LIMIT; i++) {
        zc_release(bufs[i]);
    }
    if (!stats_of(pool, &st)) return false;
    CHECK(st.object_count == 0 && st.used_bytes == 0 && st.key_count == 0);
    zc_pool_close(pool);
    return true;
}

/* ---- blocking get ---------------------------------------------------------------------------- */

typedef struct waiter {
    zc_pool *pool;
    const char *key;
    size_t key_len;
    int64_t timeout_ms;
    atomic_bool *sealing; /* set by the main thread just before it seals */
    bool saw_sealing;
    zc_status status;
    zc_buffer *buf;
    uint64_t elapsed_ns;
} waiter;

static void *waiter_main(void *arg) {
    waiter *w = arg;
    uint64_t t0 = harness_now_ns();
    w->status = zc_get(w->pool, w->key, w->key_len, w->timeout_ms, &w->buf);
    w->elapsed_ns = harness_now_ns() - t0;
    w->saw_sealing = w->sealing != NULL && atomic_load(w->sealing);
    return NULL;
}

/* One blocked zc_get (with `timeout_ms`) on `key`, woken when the main thread seals it. When
 * `create_first` the key is created (unsealed) before the waiter starts. */
static bool blocking_get_woken_by_seal(const char *key, size_t key_len, int64_t timeout_ms,
                                       bool create_first) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    atomic_bool sealing;
    atomic_init(&sealing, false);
    zc_buffer *wbuf = NULL;
    if (create_first) {
        CHECK_OK(zc_create_buffer(pool, key, key_len, 4096, &wbuf));
    }
    waiter w = { pool, key, key_len, timeout_ms, &sealing, false, 12345, BAD_BUF, 0 };
    pthread_t th;
    CHECK(pthread_create(&th, NULL, waiter_main, &w) == 0);
    harness_sleep_ms(50);
    if (!create_first) {
        CHECK_OK(zc_create_buffer(pool, key, key_len, 4096, &wbuf));
    }
    uint8_t *data = zc_buffer_data(wbuf);
    CHECK(data != NULL);
    fill_pattern(data, 4096, 77);
    harness_sleep_ms(50);
    atomic_store(&sealing, true);
    CHECK_OK(zc_seal(wbuf));
    CHECK(pthread_join(th, NULL) == 0);

    CHECK_STATUS(w.status, ZC_OK);
    CHECK(w.saw_sealing); /* it did not return before the seal */
    CHECK(w.buf != NULL && w.buf != BAD_BUF);
    CHECK(zc_buffer_const_data(w.buf) == data);
    CHECK(zc_buffer_size(w.buf) == 4096);
    CHECK(has_pattern(zc_buffer_const_data(w.buf), 4096, 77));
    zc_release(w.buf);
    zc_release(wbuf);
    zc_pool_close(pool);
    return true;
}

static bool test_blocking_get_forever_is_woken_by_seal(void) {
    return blocking_get_woken_by_seal(K("later"), -1, false);
}

static bool test_blocking_get_with_long_timeout_on_created_key_is_woken_by_seal(void) {
    return blocking_get_woken_by_seal(K("pending"), 20000, true);
}

static bool test_get_timeout_expires_for_absent_and_unsealed_keys(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    const int64_t timeout = 120;

    zc_buffer *r = BAD_BUF;
    uint64_t t0 = harness_now_ns();
    CHECK_STATUS(zc_get(pool, K("absent"), timeout, &r), ZC_ERR_TIMEOUT);
    uint64_t el = harness_now_ns() - t0;
    CHECK(r == BAD_BUF);
    CHECK(el >= (uint64_t)timeout * 1000000u);
    CHECK(el < (uint64_t)5000 * 1000000u);
    CHECK(strstr(zc_last_error_message(), "absent") != NULL);

    zc_buffer *w;
    CHECK_OK(zc_create_buffer(pool, K("unsealed"), 64, &w));
    t0 = harness_now_ns();
    CHECK_STATUS(zc_get(pool, K("unsealed"), timeout, &r), ZC_ERR_TIMEOUT);
    el = harness_now_ns() - t0;
    CHECK(r == BAD_BUF);
    CHECK(el >= (uint64_t)timeout * 1000000u);
    CHECK(el < (uint64_t)5000 * 1000000u);

    uint8_t dst[64];
    size_t got = 5;
    t0 = harness_now_ns();
    CHECK_STATUS(zc_get_into(pool, K("unsealed"), 50, dst, sizeof dst, &got), ZC_ERR_TIMEOUT);
    CHECK(harness_now_ns() - t0 >= (uint64_t)50 * 1000000u);
    CHECK(got == 5);

    /* A sealed key answers at once, even with a timeout. */
    CHECK_OK(zc_seal(w));
    t0 = harness_now_ns();
    CHECK_OK(zc_get(pool, K("unsealed"), timeout, &r));
    CHECK(harness_now_ns() - t0 < (uint64_t)timeout * 1000000u);
    zc_release(r);
    zc_release(w);
    zc_pool_close(pool);
    return true;
}

/* ---- close ----------------------------------------------------------------------------------- */

static bool test_close_keeps_live_buffers_readable_and_seal_answers_pool_closed(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_buffer *sealed_writer, *reader, *unsealed;
    if (!make_sealed(pool, K("sealed"), 8192, 31, &sealed_writer)) return false;
    CHECK_OK(zc_get(pool, K("sealed"), 0, &reader));
    const uint8_t *sealed_addr = zc_buffer_const_data(reader);
    if (!make_sealed(pool, K("unheld"), 1024, 33, NULL)) return false;

    CHECK_OK(zc_create_buffer(pool, K("unsealed"), 5000, &unsealed));
    uint8_t *unsealed_addr = zc_buffer_data(unsealed);
    CHECK(unsealed_addr != NULL);
    fill_pattern(unsealed_addr, 5000, 32);

    zc_pool_close(pool);

    /* Handles from before the close still read their bytes. */
    CHECK(zc_buffer_const_data(reader) == sealed_addr);
    CHECK(zc_buffer_size(reader) == 8192);
    CHECK(has_pattern(sealed_addr, 8192, 31));
    CHECK(zc_buffer_const_data(sealed_writer) == sealed_addr);
    CHECK(zc_buffer_const_data(unsealed) == unsealed_addr);
    CHECK(zc_buffer_size(unsealed) == 5000);
    CHECK(has_pattern(unsealed_addr, 5000, 32));

    /* The unsealed buffer can no longer be sealed; it can only be released. */
    CHECK_STATUS(zc_seal(unsealed), ZC_ERR_POOL_CLOSED);
    CHECK(zc_buffer_const_data(unsealed) == unsealed_addr);
    CHECK(has_pattern(unsealed_addr, 5000, 32));
    CHECK_STATUS(zc_seal(reader), ZC_ERR_ALREADY_SEALED);

    zc_release(unsealed);
    CHECK(has_pattern(sealed_addr, 8192, 31));
    zc_release(reader);
    CHECK(has_pattern(zc_buffer_const_data(sealed_writer), 8192, 31));
    zc_release(sealed_writer);
    return true;
}

static bool test_close_wakes_blocked_get_with_pool_closed(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_buffer *w;
    CHECK_OK(zc_create_buffer(pool, K("never-sealed"), 64, &w));
    waiter forever = { pool, K("never"), -1, NULL, false, 12345, BAD_BUF, 0 };
    waiter timed = { pool, K("never-sealed"), 20000, NULL, false, 12345, BAD_BUF, 0 };
    pthread_t t1, t2;
    CHECK(pthread_create(&t1, NULL, waiter_main, &forever) == 0);
    CHECK(pthread_create(&t2, NULL, waiter_main, &timed) == 0);
    /* Let both threads block inside zc_get before closing. */
    harness_sleep_ms(300);
    zc_pool_close(pool);
    CHECK(pthread_join(t1, NULL) == 0);
    CHECK(pthread_join(t2, NULL) == 0);

    CHECK_STATUS(forever.status, ZC_ERR_POOL_CLOSED);
    CHECK(forever.buf == BAD_BUF);
    CHECK_STATUS(timed.status, ZC_ERR_POOL_CLOSED);
    CHECK(timed.buf == BAD_BUF);
    CHECK(timed.elapsed_ns < (uint64_t)10000 * 1000000u); /* woken, not timed out */
    CHECK_STATUS(zc_seal(w), ZC_ERR_POOL_CLOSED);
    zc_release(w);
    return true;
}

/* ---- stats ----------------------------------------------------------------------------------- */

static bool expect_stats(const zc_pool *pool, uint64_t used, uint64_t objects, uint64_t keys) {
    zc_pool_stats st;
    if (!stats_of(pool, &st)) return false;
    if (st.used_bytes != used || st.object_count != objects || st.key_count != keys) {
        printf("    stats: used %llu objects %llu keys %llu; expected %llu %llu %llu\n",
               (unsigned long long)st.used_bytes, (unsigned long long)st.object_count,
               (unsigned long long)st.key_count, (unsigned long long)used,
               (unsigned long long)objects, (unsigned long long)keys);
        return false;
    }
    CHECK(st.capacity_bytes == 8 * MIB);
    CHECK(st.largest_free_block <= st.capacity_bytes - st.used_bytes);
    return true;
}

static bool test_stats_track_a_create_seal_get_delete_sequence(void) {
    zc_pool *pool;
    if (!open_small(8 * MIB, 0, &pool)) return false;
    CHECK(expect_stats(pool, 0, 0, 0));
    zc_buffer *a, *b, *c, *ra;
    CHECK_OK(zc_create_buffer(pool, K("a"), 100, &a));
    CHECK(expect_stats(pool, 128, 1, 1));
    CHECK_OK(zc_create_buffer(pool, K("b"), 64, &b));
    CHECK(expect_stats(pool, 192, 2, 2));
    CHECK_OK(zc_create_buffer(pool, K("c"), 0, &c));
    CHECK(expect_stats(pool, 192, 3, 3));
    CHECK_OK(zc_seal(a));
    CHECK_OK(zc_seal(b));
    CHECK(expect_stats(pool, 192, 3, 3));
    CHECK_OK(zc_get(pool, K("a"), 0, &ra));
    CHECK(expect_stats(pool, 192, 3, 3));
    CHECK_OK(zc_delete(pool, K("a")));
    CHECK(expect_stats(pool, 192, 3, 2));
    zc_release(a);
    CHECK(expect_stats(pool, 192, 3, 2));
    zc_release(ra);
    CHECK(expect_stats(pool, 64, 2, 2));
    CHECK_OK(zc_abort(c));
    CHECK(expect_stats(pool, 64, 1, 1));
    zc_release(b); /* sealed: the pool keeps it */
    CHECK(expect_stats(pool, 64, 1, 1));
    CHECK_OK(zc_put(pool, K("d"), (const uint8_t *)"0123456789", 10));
    CHECK(expect_stats(pool, 128, 2, 2));
    CHECK_OK(zc_delete(pool, K("b")));
    CHECK_OK(zc_delete(pool, K("d")));
    CHECK(expect_stats(pool, 0, 0, 0));
    zc_pool_stats st;
    if (!stats_of(pool, &st)) return false;
    CHECK(st.largest_free_block > 0);
    zc_pool_close(pool);
    return true;
}

/* ---- one-copy put / get_into ----------------------------------------------------------------- */

static bool test_put_and_get_into_round_trip(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    uint8_t src[3000];
    fill_pattern(src, sizeof src, 50);
    CHECK_OK(zc_put(pool, K("p"), src, sizeof src));
    fill_pattern(src, sizeof src, 51); /* the pool holds its own copy */
    CHECK(zc_contains(pool, K("p")));

    uint8_t dst[4096];
    memset(dst, 0xEE, sizeof dst);
    size_t got = 0;
    CHECK_OK(zc_get_into(pool, K("p"), 0, dst, sizeof dst, &got));
    CHECK(got == 3000);
    CHECK(has_pattern(dst, 3000, 50));
    for (size_t i = 3000; i < sizeof dst; i++) {
        CHECK(dst[i] == 0xEE);
    }
    /* Exactly the size fits too, and the waiting path copies the same bytes. */
    memset(dst, 0, sizeof dst);
    got = 0;
    CHECK_OK(zc_get_into(pool, K("p"), 100, dst, 3000, &got));
    CHECK(got == 3000);
    CHECK(has_pattern(dst, 3000, 50));

    zc_buffer *r;
    CHECK_OK(zc_get(pool, K("p"), 0, &r));
    CHECK(zc_buffer_size(r) == 3000);
    CHECK(aligned64(zc_buffer_const_data(r)));
    CHECK(has_pattern(zc_buffer_const_data(r), 3000, 50));
    zc_release(r);
    zc_pool_close(pool);
    return true;
}

static bool test_get_into_small_destination_is_invalid_and_writes_nothing(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    uint8_t src[3000];
    fill_pattern(src, sizeof src, 60);
    CHECK_OK(zc_put(pool, K("p"), src, sizeof src));

    uint8_t dst[2999];
    memset(dst, 0xEE, sizeof dst);
    size_t got = 12345;
    CHECK_STATUS(zc_get_into(pool, K("p"), 0, dst, sizeof dst, &got), ZC_ERR_INVALID_ARGUMENT);
    CHECK(got == 12345);
    for (size_t i = 0; i < sizeof dst; i++) {
        CHECK(dst[i] == 0xEE);
    }
    /* Same through the waiting path. */
    CHECK_STATUS(zc_get_into(pool, K("p"), 100, dst, sizeof dst, &got), ZC_ERR_INVALID_ARGUMENT);
    CHECK(got == 12345);
    for (size_t i = 0; i < sizeof dst; i++) {
        CHECK(dst[i] == 0xEE);
    }
    CHECK_STATUS(zc_get_into(pool, K("p"), 0, NULL, 0, &got), ZC_ERR_INVALID_ARGUMENT);
    CHECK(got == 12345);
    /* The stored value is intact. */
    uint8_t full[3000];
    CHECK_OK(zc_get_into(pool, K("p"), 0, full, sizeof full, &got));
    CHECK(got == 3000 && has_pattern(full, 3000, 60));
    zc_pool_close(pool);
    return true;
}

static bool test_put_of_existing_key_is_already_exists_and_keeps_value(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    uint8_t v1[500], v2[700];
    fill_pattern(v1, sizeof v1, 70);
    fill_pattern(v2, sizeof v2, 71);
    CHECK_OK(zc_put(pool, K("once"), v1, sizeof v1));
    zc_pool_stats before, after;
    if (!stats_of(pool, &before)) return false;
    CHECK_STATUS(zc_put(pool, K("once"), v2, sizeof v2), ZC_ERR_ALREADY_EXISTS);
    if (!stats_of(pool, &after)) return false;
    CHECK(after.used_bytes == before.used_bytes && after.object_count == before.object_count);

    uint8_t dst[1000];
    size_t got = 0;
    CHECK_OK(zc_get_into(pool, K("once"), 0, dst, sizeof dst, &got));
    CHECK(got == 500);
    CHECK(has_pattern(dst, 500, 70));

    /* Also for a created, unsealed key: put fails and the creator's buffer is untouched. */
    zc_buffer *w;
    CHECK_OK(zc_create_buffer(pool, K("mine"), 64, &w));
    fill_pattern(zc_buffer_data(w), 64, 72);
    CHECK_STATUS(zc_put(pool, K("mine"), v2, 64), ZC_ERR_ALREADY_EXISTS);
    CHECK(has_pattern(zc_buffer_const_data(w), 64, 72));
    CHECK_OK(zc_seal(w));
    CHECK_OK(zc_get_into(pool, K("mine"), 0, dst, sizeof dst, &got));
    CHECK(got == 64 && has_pattern(dst, 64, 72));
    zc_release(w);
    zc_pool_close(pool);
    return true;
}

/* ---- batches --------------------------------------------------------------------------------- */

static bool test_create_batch_reports_each_item_and_the_first_failure(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    CHECK_OK(zc_put(pool, K("exists"), (const uint8_t *)"e", 1));

    enum { N = 6 };
    const char *keys[N] = { "b0", "exists", "b2", "", "b4", "b5" };
    size_t lens[N] = { 2, 6, 2, 0, 2, 2 };
    size_t sizes[N] = { 100, 10, 0, 10, 4 * MIB + 1, 64 };
    zc_buffer *bufs[N];
    zc_status st[N];
    for (size_t i = 0; i < N; i++) {
        bufs[i] = BAD_BUF;
        st[i] = 999;
    }
    CHECK_STATUS(zc_create_batch(pool, keys, lens, sizes, N, bufs, st), ZC_ERR_ALREADY_EXISTS);
    CHECK_STATUS(st[0], ZC_OK);
    CHECK_STATUS(st[1], ZC_ERR_ALREADY_EXISTS);
    CHECK_STATUS(st[2], ZC_OK);
    CHECK_STATUS(st[3], ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(st[4], ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(st[5], ZC_OK);
    CHECK(bufs[1] == NULL && bufs[3] == NULL && bufs[4] == NULL);
    const size_t good[] = { 0, 2, 5 };
    for (size_t j = 0; j < 3; j++) {
        size_t i = good[j];
        CHECK(bufs[i] != NULL && bufs[i] != BAD_BUF);
        CHECK(zc_buffer_size(bufs[i]) == sizes[i]);
        CHECK(zc_buffer_data(bufs[i]) != NULL);
        CHECK(aligned64(zc_buffer_data(bufs[i])));
        fill_pattern(zc_buffer_data(bufs[i]), sizes[i], (uint32_t)(80 + i));
        CHECK(!zc_contains(pool, keys[i], lens[i])); /* created, not yet visible */
        CHECK_OK(zc_seal(bufs[i]));
    }
    for (size_t j = 0; j < 3; j++) {
        size_t i = good[j];
        zc_buffer *r;
        CHECK_OK(zc_get(pool, keys[i], lens[i], 0, &r));
        CHECK(zc_buffer_const_data(r) == zc_buffer_const_data(bufs[i]));
        CHECK(has_pattern(zc_buffer_const_data(r), sizes[i], (uint32_t)(80 + i)));
        zc_release(r);
        zc_release(bufs[i]);
    }
    /* The failed items stored nothing; "exists" keeps its value. */
    CHECK(!zc_contains(pool, K("b4")));
    uint8_t one[4];
    size_t got = 0;
    CHECK_OK(zc_get_into(pool, K("exists"), 0, one, sizeof one, &got));
    CHECK(got == 1 && one[0] == 'e');

    /* All good: ZC_OK and every item OK. */
    const char *keys2[3] = { "c0", "c1", "c2" };
    size_t lens2[3] = { 2, 2, 2 };
    size_t sizes2[3] = { 1, 64, 65 };
    zc_buffer *bufs2[3];
    zc_status st2[3] = { 999, 999, 999 };
    CHECK_OK(zc_create_batch(pool, keys2, lens2, sizes2, 3, bufs2, st2));
    for (size_t i = 0; i < 3; i++) {
        CHECK_STATUS(st2[i], ZC_OK);
        CHECK(bufs2[i] != NULL && zc_buffer_size(bufs2[i]) == sizes2[i]);
        zc_release(bufs2[i]); /* unsealed: aborted */
    }
    zc_pool_stats s;
    if (!stats_of(pool, &s)) return false;
    CHECK(s.key_count == 4 && s.object_count == 4); /* exists, b0, b2, b5 */

    /* n == 0 does nothing and succeeds. */
    CHECK_OK(zc_create_batch(pool, NULL, NULL, NULL, 0, NULL, NULL));
    zc_pool_close(pool);
    return true;
}

static bool test_get_batch_reports_each_item_and_the_first_failure(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    zc_buffer *w0, *w2, *w1;
    if (!make_sealed(pool, K("g0"), 300, 90, &w0)) return false;
    if (!make_sealed(pool, K("g2"), 400, 92, &w2)) return false;
    CHECK_OK(zc_create_buffer(pool, K("g1"), 10, &w1));

    enum { N = 5 };
    const char *keys[N] = { "g0", "g1", "g2", "g3", "g4" };
    size_t lens[N] = { 2, 2, 2, 2, 2 };
    zc_buffer *bufs[N];
    zc_status st[N];
    for (size_t i = 0; i < N; i++) {
        bufs[i] = BAD_BUF;
        st[i] = 999;
    }
    CHECK_STATUS(zc_get_batch(pool, keys, lens, N, 0, bufs, st), ZC_ERR_NOT_SEALED);
    CHECK_STATUS(st[0], ZC_OK);
    CHECK_STATUS(st[1], ZC_ERR_NOT_SEALED);
    CHECK_STATUS(st[2], ZC_OK);
    CHECK_STATUS(st[3], ZC_ERR_NOT_FOUND);
    CHECK_STATUS(st[4], ZC_ERR_NOT_FOUND);
    CHECK(bufs[1] == NULL && bufs[3] == NULL && bufs[4] == NULL);
    CHECK(bufs[0] != NULL && bufs[0] != BAD_BUF && bufs[2] != NULL && bufs[2] != BAD_BUF);
    CHECK(zc_buffer_const_data(bufs[0]) == zc_buffer_const_data(w0));
    CHECK(zc_buffer_const_data(bufs[2]) == zc_buffer_const_data(w2));
    CHECK(has_pattern(zc_buffer_const_data(bufs[0]), 300, 90));
    CHECK(has_pattern(zc_buffer_const_data(bufs[2]), 400, 92));
    zc_release(bufs[0]);
    zc_release(bufs[2]);

    /* With a timeout: one deadline for the whole batch, not one per item. */
    for (size_t i = 0; i < N; i++) {
        bufs[i] = BAD_BUF;
        st[i] = 999;
    }
    const int64_t timeout = 200;
    uint64_t t0 = harness_now_ns();
    CHECK_STATUS(zc_get_batch(pool, keys, lens, N, timeout, bufs, st), ZC_ERR_TIMEOUT);
    uint64_t el = harness_now_ns() - t0;
    CHECK_STATUS(st[0], ZC_OK);
    CHECK_STATUS(st[1], ZC_ERR_TIMEOUT);
    CHECK_STATUS(st[2], ZC_OK);
    CHECK_STATUS(st[3], ZC_ERR_TIMEOUT);
    CHECK_STATUS(st[4], ZC_ERR_TIMEOUT);
    CHECK(bufs[1] == NULL && bufs[3] == NULL && bufs[4] == NULL);
    CHECK(el >= (uint64_t)timeout * 1000000u);
    CHECK(el < (uint64_t)(2 * timeout) * 1000000u); /* three waiting items, one deadline */
    zc_release(bufs[0]);
    zc_release(bufs[2]);

    /* All sealed: ZC_OK. */
    CHECK_OK(zc_seal(w1));
    const char *keys2[3] = { "g0", "g1", "g2" };
    zc_buffer *bufs2[3];
    zc_status st2[3] = { 999, 999, 999 };
    CHECK_OK(zc_get_batch(pool, keys2, lens, 3, 0, bufs2, st2));
    for (size_t i = 0; i < 3; i++) {
        CHECK_STATUS(st2[i], ZC_OK);
        CHECK(bufs2[i] != NULL);
        zc_release(bufs2[i]);
    }
    CHECK_OK(zc_get_batch(pool, NULL, NULL, 0, 0, NULL, NULL));
    zc_release(w0);
    zc_release(w1);
    zc_release(w2);
    zc_pool_close(pool);
    return true;
}

/* ---- keys ------------------------------------------------------------------------------------ */

static bool test_binary_keys_with_nul_bytes_and_different_lengths_are_distinct(void) {
    static const char k0[] = { 'a', '\0', 'b' };
    static const char k1[] = { 'a', '\0', 'c' };
    static const char k2[] = { 'a' };
    static const char k3[] = { 'a', '\0' };
    static const char k4[] = { 'a', '\0', 'b', '\0' };
    static const char k5[] = { '\0' };
    static const char k6[] = { '\0', '\0' };
    const char *keys[] = { k0, k1, k2, k3, k4, k5, k6 };
    const size_t lens[] = { sizeof k0, sizeof k1, sizeof k2, sizeof k3, sizeof k4, sizeof k5, sizeof k6 };
    enum { N = sizeof keys / sizeof keys[0] };

    zc_pool *pool;
    if (!open_small(4 * MIB, 0, &pool)) return false;
    for (size_t i = 0; i < N; i++) {
        CHECK(!zc_contains(pool, keys[i], lens[i]));
        if (!make_sealed(pool, keys[i], lens[i], 100 + i, (uint32_t)(200 + i), NULL)) return false;
    }
    zc_pool_stats st;
    if (!stats_of(pool, &st)) return false;
    CHECK(st.key_count == N && st.object_count == N);
    for (size_t i = 0; i < N; i++) {
        zc_buffer *r;
        CHECK_OK(zc_get(pool, keys[i], lens[i], 0, &r));
        CHECK(zc_buffer_size(r) == 100 + i);
        CHECK(has_pattern(zc_buffer_const_data(r), 100 + i, (uint32_t)(200 + i)));
        zc_release(r);
    }
    /* Deleting "a\0" leaves "a" and "a\0b" alone. */
    CHECK_OK(zc_delete(pool, keys[3], lens[3]));
    CHECK(!zc_contains(pool, keys[3], lens[3]));
    CHECK(zc_contains(pool, keys[2], lens[2]));
    CHECK(zc_contains(pool, keys[0], lens[0]));
    CHECK(zc_contains(pool, keys[4], lens[4]));
    zc_buffer *w = BAD_BUF;
    CHECK_STATUS(zc_create_buffer(pool, keys[0], lens[0], 1, &w), ZC_ERR_ALREADY_EXISTS);
    CHECK(w == BAD_BUF);
    zc_pool_close(pool);
    return true;
}

int main(void) {
    static const harness_test tests[] = {
        TEST(test_options_init_sets_documented_defaults),
        TEST(test_open_with_null_options_uses_defaults),
        TEST(test_open_with_initialized_default_options),
        TEST(test_open_small_pool_reports_capacity_and_limits),
        TEST(test_round_trip_get_returns_writer_pointer_zero_copy),
        TEST(test_get_view_answers_handle_address_size_and_leading_bytes_in_one_call),
        TEST(test_get_view_failures_answer_status_and_leave_the_view_untouched),
        TEST(test_data_pointers_are_64_byte_aligned_and_disjoint),
        TEST(test_writable_pointer_is_null_after_seal_and_for_get_handles),
        TEST(test_zero_size_value_round_trips),
        TEST(test_create_of_created_or_sealed_key_is_already_exists),
        TEST(test_abort_unsealed_frees_memory_and_key),
        TEST(test_abort_of_sealed_is_already_sealed_and_object_stays),
        TEST(test_release_of_unsealed_buffer_aborts_it),
        TEST(test_double_seal_and_seal_of_get_handle_are_already_sealed),
        TEST(test_get_without_wait_is_not_sealed_or_not_found),
        TEST(test_contains_is_true_only_for_sealed_keys),
        TEST(test_delete_while_referenced_keeps_reader_bytes),
        TEST(test_counts_drop_only_at_the_last_release),
        TEST(test_delete_of_unsealed_is_not_sealed_and_of_absent_is_not_found),
        TEST(test_pool_full_then_space_is_reused_after_delete_and_release),
        TEST(test_size_larger_than_capacity_is_invalid_argument),
        TEST(test_max_objects_limit_is_out_of_memory),
        TEST(test_largest_free_block_can_always_be_created),
        TEST(test_default_object_limit_is_one_per_4_kib),
        TEST(test_blocking_get_forever_is_woken_by_seal),
        TEST(test_blocking_get_with_long_timeout_on_created_key_is_woken_by_seal),
        TEST(test_get_timeout_expires_for_absent_and_unsealed_keys),
        TEST(test_close_keeps_live_buffers_readable_and_seal_answers_pool_closed),
        TEST(test_close_wakes_blocked_get_with_pool_closed),
        TEST(test_stats_track_a_create_seal_get_delete_sequence),
        TEST(test_put_and_get_into_round_trip),
        TEST(test_get_into_small_destination_is_invalid_and_writes_nothing),
        TEST(test_put_of_existing_key_is_already_exists_and_keeps_value),
        TEST(test_create_batch_reports_each_item_and_the_first_failure),
        TEST(test_get_batch_reports_each_item_and_the_first_failure),
        TEST(test_binary_keys_with_nul_bytes_and_different_lengths_are_distinct),
    };
    RUN_TESTS(tests);
}
