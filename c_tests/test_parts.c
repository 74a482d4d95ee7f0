/* Multi-part objects (docs/FORMAT.md): one allocation, every part 64-byte aligned behind a
 * self-describing header; parts written in place, read back through the handle and from the raw
 * bytes alone. */

#include <string.h>

#include "harness.h"

static bool open_small(zc_pool **out) {
    zc_pool_options o;
    zc_pool_options_init(&o);
    o.size = 16 * MIB;
    o.page_mode = ZC_PAGES_SMALL;
    o.prefault = false;
    CHECK_OK(zc_pool_open(&o, out));
    return true;
}

static bool test_parts_are_aligned_written_in_place_and_read_back_zero_copy(void) {
    zc_pool *pool;
    if (!open_small(&pool)) return false;
    const size_t sizes[] = { 10, 0, 64, 65, 100000 };
    enum { N = 5 };
    zc_buffer *w;
    CHECK_OK(zc_create_parts(pool, K("multi"), sizes, N, &w));
    CHECK(zc_buffer_part_count(w) == N);
    CHECK(zc_buffer_size(w) == 128 + 64 + 64 + 128 + 100032); /* header 128, parts padded to 64 */
    uint8_t *written[N];
    for (size_t i = 0; i < N; i++) {
        size_t len = 0;
        CHECK_OK(zc_buffer_part_mut(w, i, &written[i], &len));
        CHECK(len == sizes[i]);
        CHECK((uintptr_t)written[i] % 64 == 0);
        CHECK(written[i] >= zc_buffer_data(w) + 128);
        fill_pattern(written[i], len, (uint32_t)i);
    }
    CHECK_OK(zc_seal(w));
    uint8_t *gone = NULL;
    size_t len = 0;
    CHECK_STATUS(zc_buffer_part_mut(w, 0, &gone, &len), ZC_ERR_ALREADY_SEALED);

    zc_buffer *r;
    CHECK_OK(zc_get(pool, K("multi"), 0, &r));
    CHECK(zc_buffer_part_count(r) == N);
    for (size_t i = 0; i < N; i++) {
        const uint8_t *p = NULL;
        CHECK_OK(zc_buffer_part(r, i, &p, &len));
        CHECK(p == written[i] && len == sizes[i]); /* the writer's bytes, not a copy */
        CHECK(has_pattern(p, len, (uint32_t)i));
    }
    const uint8_t *p = NULL;
    CHECK_STATUS(zc_buffer_part(r, N, &p, &len), ZC_ERR_INVALID_ARGUMENT);
    CHECK(p == NULL);

    /* The raw bytes alone describe the same parts. */
    const uint8_t *bytes = zc_buffer_const_data(r);
    size_t n = 0;
    CHECK_OK(zc_parts_count(bytes, zc_buffer_size(r), &n));
    CHECK(n == N);
    CHECK(memcmp(bytes, "ZCPARTS\0", 8) == 0);
    for (size_t i = 0; i < N; i++) {
        size_t off = 0;
        CHECK_OK(zc_parts_locate(bytes, zc_buffer_size(r), i, &off, &len));
        CHECK(bytes + off == written[i] && len == sizes[i]);
    }
    zc_release(r);
    zc_release(w);
    zc_pool_close(pool);
    return true;
}

static bool test_plain_objects_have_no_parts(void) {
    zc_pool *pool;
    if (!open_small(&pool)) return false;
    zc_buffer *w;
    CHECK_OK(zc_create_buffer(pool, K("plain"), 100, &w));
    CHECK(zc_buffer_part_count(w) == 0);
    const uint8_t *p;
    size_t len;
    CHECK_STATUS(zc_buffer_part(w, 0, &p, &len), ZC_ERR_INVALID_ARGUMENT);
    CHECK(strstr(zc_last_error_message(), "plain object") != NULL);
    memset(zc_buffer_data(w), 0, 100);
    size_t n = 99;
    CHECK_STATUS(zc_parts_count(zc_buffer_const_data(w), 100, &n), ZC_ERR_INVALID_ARGUMENT);
    CHECK(strstr(zc_last_error_message(), "magic") != NULL);
    CHECK(n == 99);
    zc_release(w);
    zc_pool_close(pool);
    return true;
}

static bool test_zero_parts_and_bad_arguments(void) {
    zc_pool *pool;
    if (!open_small(&pool)) return false;
    zc_buffer *w = BAD_BUF;
    CHECK_OK(zc_create_parts(pool, K("none"), NULL, 0, &w));
    CHECK(zc_buffer_part_count(w) == 0 && zc_buffer_size(w) == 64);
    size_t n = 9;
    CHECK_OK(zc_parts_count(zc_buffer_const_data(w), 64, &n));
    CHECK(n == 0);
    zc_release(w);

    const size_t one = 1, huge[2] = { SIZE_MAX / 2, SIZE_MAX / 2 };
    w = BAD_BUF;
    CHECK_STATUS(zc_create_parts(pool, K("k"), NULL, 1, &w), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_create_parts(pool, K("k"), huge, 2, &w), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_create_parts(pool, K("k"), &one, 1, NULL), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_create_parts(NULL, K("k"), &one, 1, &w), ZC_ERR_INVALID_ARGUMENT);
    CHECK(w == BAD_BUF);
    const size_t too_big = 32 * MIB;
    CHECK_STATUS(zc_create_parts(pool, K("k"), &too_big, 1, &w), ZC_ERR_INVALID_ARGUMENT);
    CHECK(w == BAD_BUF);
    CHECK_STATUS(zc_parts_count(NULL, 10, &n), ZC_ERR_INVALID_ARGUMENT);
    uint8_t junk[64] = { 0 };
    CHECK_STATUS(zc_parts_locate(junk, sizeof junk, 0, &n, &n), ZC_ERR_INVALID_ARGUMENT);
    CHECK(zc_buffer_part_count(NULL) == 0);
    zc_pool_close(pool);
    return true;
}

static bool test_truncated_bytes_are_refused(void) {
    zc_pool *pool;
    if (!open_small(&pool)) return false;
    const size_t sizes[] = { 1000, 2000 };
    zc_buffer *w;
    CHECK_OK(zc_create_parts(pool, K("t"), sizes, 2, &w));
    size_t n, off, len;
    const uint8_t *bytes = zc_buffer_const_data(w);
    CHECK_OK(zc_parts_count(bytes, zc_buffer_size(w), &n));
    CHECK_STATUS(zc_parts_count(bytes, zc_buffer_size(w) - 1, &n), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_parts_locate(bytes, 100, 0, &off, &len), ZC_ERR_INVALID_ARGUMENT);
    zc_release(w);
    zc_pool_close(pool);
    return true;
}

int main(void) {
    static const harness_test tests[] = {
        TEST(test_parts_are_aligned_written_in_place_and_read_back_zero_copy),
        TEST(test_plain_objects_have_no_parts),
        TEST(test_zero_parts_and_bad_arguments),
        TEST(test_truncated_bytes_are_refused),
    };
    RUN_TESTS(tests);
}
