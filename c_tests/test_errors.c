/* Bad input to zcopy's C API: every NULL, empty or oversized key, out-of-range size, timeout and
 * option is a status (never a crash), out-parameters are not written on failure, status names and
 * the thread's last error message behave as documented, and failures leave stored data intact. */

#include <pthread.h>
#include <string.h>

#include "harness.h"

static bool all_bytes(const void *p, size_t n, uint8_t v) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        if (b[i] != v) {
            return false;
        }
    }
    return true;
}

static bool open_small(zc_pool **out) {
    zc_pool_options o;
    zc_pool_options_init(&o);
    o.size = 4 * MIB;
    o.page_mode = ZC_PAGES_SMALL;
    o.prefault = false;
    *out = NULL;
    CHECK_OK(zc_pool_open(&o, out));
    CHECK(*out != NULL);
    return true;
}

static bool message_contains(const char *needle) {
    const char *msg = zc_last_error_message();
    return msg != NULL && strstr(msg, needle) != NULL;
}

/* ---- status codes and names ------------------------------------------------------------------ */

static bool test_status_codes_have_their_published_numbers(void) {
    CHECK(ZC_OK == 0);
    CHECK(ZC_ERR_INVALID_ARGUMENT == 1);
    CHECK(ZC_ERR_NOT_FOUND == 2);
    CHECK(ZC_ERR_ALREADY_EXISTS == 3);
    CHECK(ZC_ERR_NOT_SEALED == 4);
    CHECK(ZC_ERR_ALREADY_SEALED == 5);
    CHECK(ZC_ERR_OUT_OF_MEMORY == 6);
    CHECK(ZC_ERR_TIMEOUT == 7);
    CHECK(ZC_ERR_POOL_CLOSED == 8);
    CHECK(ZC_ERR_RDMA == 9);
    CHECK(ZC_ERR_SYSTEM == 10);
    CHECK(ZC_ERR_INTERNAL == 11);
    CHECK(ZC_ALIGNMENT == 64);
    CHECK(ZC_MAX_KEY_LEN == 4096);
    return true;
}

static bool test_status_str_names_each_code_distinctly_and_unknown_codes(void) {
    const char *names[12];
    for (zc_status s = 0; s < 12; s++) {
        names[s] = zc_status_str(s);
        CHECK(names[s] != NULL);
        CHECK(strlen(names[s]) > 0);
        CHECK(strcmp(names[s], "unknown status") != 0);
        for (zc_status t = 0; t < s; t++) {
            CHECK(strcmp(names[s], names[t]) != 0);
        }
        /* Static: the same pointer every time. */
        CHECK(zc_status_str(s) == names[s]);
    }
    const zc_status unknown[] = { 12, 13, 999, 0x7fffffffu, UINT32_MAX };
    for (size_t i = 0; i < sizeof unknown / sizeof unknown[0]; i++) {
        const char *name = zc_status_str(unknown[i]);
        CHECK(name != NULL);
        CHECK(strcmp(name, "unknown status") == 0);
    }
    return true;
}

/* ---- last error message ---------------------------------------------------------------------- */

typedef struct fresh_thread_result {
    bool before_is_no_error;
    bool after_has_detail;
    bool never_null;
} fresh_thread_result;

static void *fresh_thread_main(void *arg) {
    fresh_thread_result *r = arg;
    const char *before = zc_last_error_message();
    r->never_null = before != NULL;
    r->before_is_no_error = before != NULL && strcmp(before, "no error") == 0;
    zc_status s = zc_get(NULL, K("thread-key"), 0, NULL);
    const char *after = zc_last_error_message();
    r->never_null = r->never_null && after != NULL;
    r->after_has_detail = s == ZC_ERR_INVALID_ARGUMENT && after != NULL &&
                          strcmp(after, "no error") != 0 && strlen(after) > 0;
    return NULL;
}

static bool test_last_error_message_is_per_thread_never_null_and_holds_the_detail(void) {
    /* A fresh thread starts with "no error" and gets its own message. */
    fresh_thread_result r = { false, false, false };
    pthread_t th;
    CHECK(pthread_create(&th, NULL, fresh_thread_main, &r) == 0);
    CHECK(pthread_join(th, NULL) == 0);
    CHECK(r.never_null);
    CHECK(r.before_is_no_error);
    CHECK(r.after_has_detail);

    zc_pool *pool;
    if (!open_small(&pool)) return false;
    CHECK(zc_last_error_message() != NULL);

    CHECK_STATUS(zc_get(pool, K("missing-key-xyz"), 0, &(zc_buffer *){ NULL }), ZC_ERR_NOT_FOUND);
    CHECK(message_contains("missing-key-xyz"));

    /* Successful calls leave it unchanged. */
    CHECK_OK(zc_put(pool, K("ok-key"), (const uint8_t *)"v", 1));
    zc_pool_stats st;
    CHECK_OK(zc_pool_get_stats(pool, &st));
    CHECK(zc_contains(pool, K("ok-key")));
    CHECK(message_contains("missing-key-xyz"));

    /* Each failure replaces it with its own detail. */
    CHECK_STATUS(zc_get(pool, K("ok-key"), -2, &(zc_buffer *){ NULL }), ZC_ERR_INVALID_ARGUMENT);
    CHECK(message_contains("-2"));
    CHECK(!message_contains("missing-key-xyz"));
    CHECK_STATUS(zc_put(pool, K("ok-key"), (const uint8_t *)"v", 1), ZC_ERR_ALREADY_EXISTS);
    CHECK(message_contains("ok-key"));

    /* A failure on another thread does not touch this thread's message. */
    CHECK(pthread_create(&th, NULL, fresh_thread_main, &r) == 0);
    CHECK(pthread_join(th, NULL) == 0);
    CHECK(message_contains("ok-key"));
    zc_pool_close(pool);
    return true;
}

/* ---- NULL arguments -------------------------------------------------------------------------- */

static bool test_null_buffer_is_invalid_argument_or_a_documented_no_op(void) {
    CHECK_STATUS(zc_seal(NULL), ZC_ERR_INVALID_ARGUMENT);
    CHECK(message_contains("NULL") || message_contains("null"));
    CHECK_STATUS(zc_abort(NULL), ZC_ERR_INVALID_ARGUMENT);
    zc_release(NULL);
    CHECK(zc_buffer_data(NULL) == NULL);
    CHECK(zc_buffer_const_data(NULL) == NULL);
    CHECK(zc_buffer_size(NULL) == 0);
    zc_pool_options_init(NULL);
    zc_pool_close(NULL);
    return true;
}

static bool test_null_out_in_pool_open_is_invalid_argument(void) {
    zc_pool_options o;
    zc_pool_options_init(&o);
    o.size = 4 * MIB;
    o.page_mode = ZC_PAGES_SMALL;
    CHECK_STATUS(zc_pool_open(&o, NULL), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_pool_open(NULL, NULL), ZC_ERR_INVALID_ARGUMENT);
    return true;
}

static bool test_null_pool_is_invalid_argument_everywhere(void) {
    zc_buffer *b = BAD_BUF;
    zc_pool_stats st;
    memset(&st, 0x5A, sizeof st);
    CHECK_STATUS(zc_pool_get_stats(NULL, &st), ZC_ERR_INVALID_ARGUMENT);
    CHECK(all_bytes(&st, sizeof st, 0x5A));
    CHECK_STATUS(zc_create_buffer(NULL, K("k"), 10, &b), ZC_ERR_INVALID_ARGUMENT);
    CHECK(b == BAD_BUF);
    CHECK_STATUS(zc_get(NULL, K("k"), 0, &b), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_get(NULL, K("k"), 100, &b), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_get(NULL, K("k"), -1, &b), ZC_ERR_INVALID_ARGUMENT);
    CHECK(b == BAD_BUF);
    CHECK_STATUS(zc_delete(NULL, K("k")), ZC_ERR_INVALID_ARGUMENT);
    CHECK(!zc_contains(NULL, K("k")));
    CHECK_STATUS(zc_put(NULL, K("k"), (const uint8_t *)"v", 1), ZC_ERR_INVALID_ARGUMENT);
    uint8_t dst[8];
    memset(dst, 0xEE, sizeof dst);
    size_t got = 4242;
    CHECK_STATUS(zc_get_into(NULL, K("k"), 0, dst, sizeof dst, &got), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_get_into(NULL, K("k"), -1, dst, sizeof dst, &got), ZC_ERR_INVALID_ARGUMENT);
    CHECK(got == 4242 && all_bytes(dst, sizeof dst, 0xEE));

    const char *keys[2] = { "a", "b" };
    size_t lens[2] = { 1, 1 };
    size_t sizes[2] = { 1, 1 };
    zc_buffer *bufs[2] = { BAD_BUF, BAD_BUF };
    zc_status sts[2] = { 999, 999 };
    CHECK_STATUS(zc_create_batch(NULL, keys, lens, sizes, 2, bufs, sts), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_get_batch(NULL, keys, lens, 2, 0, bufs, sts), ZC_ERR_INVALID_ARGUMENT);
    CHECK(bufs[0] == BAD_BUF && bufs[1] == BAD_BUF && sts[0] == 999 && sts[1] == 999);
    return true;
}

static bool test_null_key_out_and_data_pointers_are_invalid_argument(void) {
    zc_pool *pool;
    if (!open_small(&pool)) return false;
    zc_buffer *b = BAD_BUF;

    /* NULL key (with a nonzero length). */
    CHECK_STATUS(zc_create_buffer(pool, NULL, 3, 10, &b), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_get(pool, NULL, 3, 0, &b), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_get(pool, NULL, 3, 50, &b), ZC_ERR_INVALID_ARGUMENT);
    CHECK(b == BAD_BUF);
    CHECK_STATUS(zc_delete(pool, NULL, 3), ZC_ERR_INVALID_ARGUMENT);
    CHECK(!zc_contains(pool, NULL, 3));
    CHECK_STATUS(zc_put(pool, NULL, 3, (const uint8_t *)"v", 1), ZC_ERR_INVALID_ARGUMENT);
    uint8_t dst[8];
    memset(dst, 0xEE, sizeof dst);
    size_t got = 4242;
    CHECK_STATUS(zc_get_into(pool, NULL, 3, 0, dst, sizeof dst, &got), ZC_ERR_INVALID_ARGUMENT);
    CHECK(got == 4242 && all_bytes(dst, sizeof dst, 0xEE));

    /* NULL out-parameters: nothing is created, nothing leaks. */
    CHECK_STATUS(zc_create_buffer(pool, K("k"), 10, NULL), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_get(pool, K("k"), 0, NULL), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_pool_get_stats(pool, NULL), ZC_ERR_INVALID_ARGUMENT);
    zc_pool_stats st;
    CHECK_OK(zc_pool_get_stats(pool, &st));
    CHECK(st.key_count == 0 && st.object_count == 0 && st.used_bytes == 0);

    /* NULL data / destination with a nonzero size. */
    CHECK_STATUS(zc_put(pool, K("k"), NULL, 5), ZC_ERR_INVALID_ARGUMENT);
    CHECK(!zc_contains(pool, K("k")));
    CHECK_OK(zc_put(pool, K("k"), (const uint8_t *)"hello", 5));
    CHECK_STATUS(zc_get_into(pool, K("k"), 0, NULL, 10, &got), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_get_into(pool, K("k"), 0, dst, sizeof dst, NULL), ZC_ERR_INVALID_ARGUMENT);
    CHECK(got == 4242 && all_bytes(dst, sizeof dst, 0xEE));
    CHECK_STATUS(zc_get(pool, K("k"), 0, NULL), ZC_ERR_INVALID_ARGUMENT);

    /* The sealed value is still there and unchanged. */
    CHECK_OK(zc_get_into(pool, K("k"), 0, dst, sizeof dst, &got));
    CHECK(got == 5 && memcmp(dst, "hello", 5) == 0);
    CHECK_OK(zc_pool_get_stats(pool, &st));
    CHECK(st.key_count == 1 && st.object_count == 1 && st.used_bytes == 64);
    zc_pool_close(pool);
    return true;
}

static bool test_batch_with_a_null_array_is_invalid_argument_and_writes_nothing(void) {
    zc_pool *pool;
    if (!open_small(&pool)) return false;
    CHECK_OK(zc_put(pool, K("a"), (const uint8_t *)"x", 1));
    const char *keys[2] = { "a", "b" };
    size_t lens[2] = { 1, 1 };
    size_t sizes[2] = { 1, 1 };
    zc_buffer *bufs[2];
    zc_status sts[2];

#define RESET_OUTS() (bufs[0] = bufs[1] = BAD_BUF, sts[0] = sts[1] = 999)
#define OUTS_UNTOUCHED() (bufs[0] == BAD_BUF && bufs[1] == BAD_BUF && sts[0] == 999 && sts[1] == 999)
    RESET_OUTS();
    CHECK_STATUS(zc_create_batch(pool, NULL, lens, sizes, 2, bufs, sts), ZC_ERR_INVALID_ARGUMENT);
    CHECK(OUTS_UNTOUCHED());
    CHECK_STATUS(zc_create_batch(pool, keys, NULL, sizes, 2, bufs, sts), ZC_ERR_INVALID_ARGUMENT);
    CHECK(OUTS_UNTOUCHED());
    CHECK_STATUS(zc_create_batch(pool, keys, lens, NULL, 2, bufs, sts), ZC_ERR_INVALID_ARGUMENT);
    CHECK(OUTS_UNTOUCHED());
    CHECK_STATUS(zc_create_batch(pool, keys, lens, sizes, 2, NULL, sts), ZC_ERR_INVALID_ARGUMENT);
    CHECK(OUTS_UNTOUCHED());
    CHECK_STATUS(zc_create_batch(pool, keys, lens, sizes, 2, bufs, NULL), ZC_ERR_INVALID_ARGUMENT);
    CHECK(OUTS_UNTOUCHED());

    CHECK_STATUS(zc_get_batch(pool, NULL, lens, 2, 0, bufs, sts), ZC_ERR_INVALID_ARGUMENT);
    CHECK(OUTS_UNTOUCHED());
    CHECK_STATUS(zc_get_batch(pool, keys, NULL, 2, 0, bufs, sts), ZC_ERR_INVALID_ARGUMENT);
    CHECK(OUTS_UNTOUCHED());
    CHECK_STATUS(zc_get_batch(pool, keys, lens, 2, 0, NULL, sts), ZC_ERR_INVALID_ARGUMENT);
    CHECK(OUTS_UNTOUCHED());
    CHECK_STATUS(zc_get_batch(pool, keys, lens, 2, 0, bufs, NULL), ZC_ERR_INVALID_ARGUMENT);
    CHECK(OUTS_UNTOUCHED());
    /* A bad timeout fails the whole batch before any item. */
    CHECK_STATUS(zc_get_batch(pool, keys, lens, 2, -2, bufs, sts), ZC_ERR_INVALID_ARGUMENT);
    CHECK(OUTS_UNTOUCHED());

    /* Nothing was created by the refused batches. */
    zc_pool_stats st;
    CHECK_OK(zc_pool_get_stats(pool, &st));
    CHECK(st.key_count == 1 && st.object_count == 1);
    CHECK(!zc_contains(pool, K("b")));

    /* A NULL key or bad size inside the arrays fails only that item. */
    const char *keys2[3] = { "c", NULL, "d" };
    size_t lens2[3] = { 1, 1, 1 };
    size_t sizes2[3] = { 8, 8, SIZE_MAX };
    zc_buffer *bufs2[3] = { BAD_BUF, BAD_BUF, BAD_BUF };
    zc_status sts2[3] = { 999, 999, 999 };
    CHECK_STATUS(zc_create_batch(pool, keys2, lens2, sizes2, 3, bufs2, sts2), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sts2[0], ZC_OK);
    CHECK_STATUS(sts2[1], ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sts2[2], ZC_ERR_INVALID_ARGUMENT);
    CHECK(bufs2[0] != NULL && bufs2[0] != BAD_BUF && bufs2[1] == NULL && bufs2[2] == NULL);
    CHECK(!zc_contains(pool, K("d")));
    zc_release(bufs2[0]);

    bufs2[0] = bufs2[1] = bufs2[2] = BAD_BUF;
    sts2[0] = sts2[1] = sts2[2] = 999;
    const char *keys3[3] = { "a", NULL, "a" };
    size_t lens3[3] = { 1, 1, 0 };
    CHECK_STATUS(zc_get_batch(pool, keys3, lens3, 3, 0, bufs2, sts2), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sts2[0], ZC_OK);
    CHECK_STATUS(sts2[1], ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(sts2[2], ZC_ERR_INVALID_ARGUMENT);
    CHECK(bufs2[0] != NULL && bufs2[0] != BAD_BUF && bufs2[1] == NULL && bufs2[2] == NULL);
    CHECK(zc_buffer_size(bufs2[0]) == 1 && zc_buffer_const_data(bufs2[0])[0] == 'x');
    zc_release(bufs2[0]);
#undef RESET_OUTS
#undef OUTS_UNTOUCHED
    zc_pool_close(pool);
    return true;
}

/* ---- keys ------------------------------------------------------------------------------------ */

static bool test_empty_and_too_long_keys_are_invalid_argument(void) {
    zc_pool *pool;
    if (!open_small(&pool)) return false;
    static char long_key[10000];
    memset(long_key, 'L', sizeof long_key);
    const size_t bad_lens[] = { 0, ZC_MAX_KEY_LEN + 1, sizeof long_key };
    for (size_t i = 0; i < sizeof bad_lens / sizeof bad_lens[0]; i++) {
        size_t len = bad_lens[i];
        zc_buffer *b = BAD_BUF;
        CHECK_STATUS(zc_create_buffer(pool, long_key, len, 10, &b), ZC_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(zc_get(pool, long_key, len, 0, &b), ZC_ERR_INVALID_ARGUMENT);
        CHECK_STATUS(zc_get(pool, long_key, len, 20, &b), ZC_ERR_INVALID_ARGUMENT);
        CHECK(b == BAD_BUF);
        CHECK_STATUS(zc_delete(pool, long_key, len), ZC_ERR_INVALID_ARGUMENT);
        CHECK(!zc_contains(pool, long_key, len));
        CHECK_STATUS(zc_put(pool, long_key, len, (const uint8_t *)"v", 1), ZC_ERR_INVALID_ARGUMENT);
        uint8_t dst[4] = { 0xEE, 0xEE, 0xEE, 0xEE };
        size_t got = 4242;
        CHECK_STATUS(zc_get_into(pool, long_key, len, 0, dst, sizeof dst, &got), ZC_ERR_INVALID_ARGUMENT);
        CHECK(got == 4242 && all_bytes(dst, sizeof dst, 0xEE));
    }
    /* NULL with length 0 too. */
    zc_buffer *b = BAD_BUF;
    CHECK_STATUS(zc_create_buffer(pool, NULL, 0, 10, &b), ZC_ERR_INVALID_ARGUMENT);
    CHECK(b == BAD_BUF);

    zc_pool_stats st;
    CHECK_OK(zc_pool_get_stats(pool, &st));
    CHECK(st.key_count == 0 && st.object_count == 0);
    zc_pool_close(pool);
    return true;
}

static bool test_key_of_exactly_max_len_works(void) {
    zc_pool *pool;
    if (!open_small(&pool)) return false;
    static char key[ZC_MAX_KEY_LEN];
    for (size_t i = 0; i < sizeof key; i++) {
        key[i] = (char)(i * 7 + 1);
    }
    zc_buffer *w;
    CHECK_OK(zc_create_buffer(pool, key, sizeof key, 100, &w));
    fill_pattern(zc_buffer_data(w), 100, 1);
    CHECK_OK(zc_seal(w));
    CHECK(zc_contains(pool, key, sizeof key));
    zc_buffer *r;
    CHECK_OK(zc_get(pool, key, sizeof key, 0, &r));
    CHECK(zc_buffer_const_data(r) == zc_buffer_const_data(w));
    CHECK(has_pattern(zc_buffer_const_data(r), 100, 1));
    /* One byte shorter is another key. */
    CHECK(!zc_contains(pool, key, sizeof key - 1));
    zc_release(r);
    zc_release(w);
    CHECK_OK(zc_delete(pool, key, sizeof key));
    CHECK(!zc_contains(pool, key, sizeof key));
    CHECK_OK(zc_put(pool, key, sizeof key, (const uint8_t *)"v", 1));
    CHECK(zc_contains(pool, key, sizeof key));
    zc_pool_close(pool);
    return true;
}

/* ---- sizes and timeouts ---------------------------------------------------------------------- */

static bool test_size_out_of_range_is_invalid_argument(void) {
    zc_pool *pool;
    if (!open_small(&pool)) return false;
    const size_t bad[] = { SIZE_MAX, SIZE_MAX - 63, SIZE_MAX / 2, (size_t)1 << 40, 4 * MIB + 1 };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        zc_buffer *b = BAD_BUF;
        CHECK_STATUS(zc_create_buffer(pool, K("big"), bad[i], &b), ZC_ERR_INVALID_ARGUMENT);
        CHECK(b == BAD_BUF);
    }
    CHECK(!zc_contains(pool, K("big")));
    zc_pool_stats st;
    CHECK_OK(zc_pool_get_stats(pool, &st));
    CHECK(st.key_count == 0 && st.object_count == 0 && st.used_bytes == 0);
    /* The key is still free. */
    CHECK_OK(zc_put(pool, K("big"), (const uint8_t *)"ok", 2));
    zc_pool_close(pool);
    return true;
}

static bool test_bad_timeouts_are_invalid_argument(void) {
    zc_pool *pool;
    if (!open_small(&pool)) return false;
    CHECK_OK(zc_put(pool, K("t"), (const uint8_t *)"abc", 3));
    const int64_t bad[] = { -2, -3, -1000, INT64_MIN };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        zc_buffer *b = BAD_BUF;
        CHECK_STATUS(zc_get(pool, K("t"), bad[i], &b), ZC_ERR_INVALID_ARGUMENT);
        CHECK(b == BAD_BUF);
        CHECK_STATUS(zc_get(pool, K("absent"), bad[i], &b), ZC_ERR_INVALID_ARGUMENT);
        CHECK(b == BAD_BUF);
        uint8_t dst[8];
        memset(dst, 0xEE, sizeof dst);
        size_t got = 4242;
        CHECK_STATUS(zc_get_into(pool, K("t"), bad[i], dst, sizeof dst, &got), ZC_ERR_INVALID_ARGUMENT);
        CHECK(got == 4242 && all_bytes(dst, sizeof dst, 0xEE));
    }
    CHECK_STATUS(zc_get(pool, K("t"), -2, &(zc_buffer *){ NULL }), ZC_ERR_INVALID_ARGUMENT);
    CHECK(message_contains("-2"));
    zc_pool_close(pool);
    return true;
}

/* ---- options --------------------------------------------------------------------------------- */

static bool open_refused(const zc_pool_options *o, zc_status expected) {
    zc_pool *pool = BAD_POOL;
    CHECK_STATUS(zc_pool_open(o, &pool), expected);
    CHECK(pool == BAD_POOL);
    return true;
}

static bool test_bad_options_are_invalid_argument(void) {
    zc_pool_options o;
    for (size_t i = 0; i < sizeof o.reserved / sizeof o.reserved[0]; i++) {
        zc_pool_options_init(&o);
        o.size = 4 * MIB;
        o.page_mode = ZC_PAGES_SMALL;
        o.reserved[i] = 1;
        if (!open_refused(&o, ZC_ERR_INVALID_ARGUMENT)) return false;
        CHECK(message_contains("reserved"));
        o.reserved[i] = UINT64_MAX;
        if (!open_refused(&o, ZC_ERR_INVALID_ARGUMENT)) return false;
    }
    const uint32_t bad_modes[] = { 3, 4, 999, UINT32_MAX };
    for (size_t i = 0; i < sizeof bad_modes / sizeof bad_modes[0]; i++) {
        zc_pool_options_init(&o);
        o.size = 4 * MIB;
        o.page_mode = bad_modes[i];
        if (!open_refused(&o, ZC_ERR_INVALID_ARGUMENT)) return false;
        CHECK(message_contains("page_mode"));
    }
    zc_pool_options_init(&o);
    o.size = 0;
    if (!open_refused(&o, ZC_ERR_INVALID_ARGUMENT)) return false;
    o.page_mode = ZC_PAGES_SMALL;
    if (!open_refused(&o, ZC_ERR_INVALID_ARGUMENT)) return false;
    /* A size that overflows when rounded to the page size. */
    zc_pool_options_init(&o);
    o.size = UINT64_MAX;
    if (!open_refused(&o, ZC_ERR_INVALID_ARGUMENT)) return false;
    o.page_mode = ZC_PAGES_SMALL;
    if (!open_refused(&o, ZC_ERR_INVALID_ARGUMENT)) return false;
    return true;
}

static bool test_odd_options_never_crash(void) {
    zc_pool_options o;
    /* Explicit huge pages on a directory that is not a hugetlbfs mount: refused with a status. */
    zc_pool_options_init(&o);
    o.size = 4 * MIB;
    o.page_mode = ZC_PAGES_HUGETLB;
    o.hugetlbfs_dir = "/";
    zc_pool *pool = BAD_POOL;
    zc_status s = zc_pool_open(&o, &pool);
    CHECK(s == ZC_ERR_INVALID_ARGUMENT);
    CHECK(message_contains("not on a hugetlbfs mount"));
    CHECK(pool == BAD_POOL);
    /* A missing directory: the operating system's refusal, named. */
    o.hugetlbfs_dir = "/nonexistent/zcopy-test-dir";
    s = zc_pool_open(&o, &pool);
    CHECK(s == ZC_ERR_SYSTEM);
    CHECK(message_contains("/nonexistent/zcopy-test-dir"));
    CHECK(pool == BAD_POOL);
    /* MAP_HUGETLB may or may not have pages reserved on this host: OK or a system error. */
    o.hugetlbfs_dir = NULL;
    s = zc_pool_open(&o, &pool);
    CHECK(s == ZC_OK || s == ZC_ERR_SYSTEM);
    if (s == ZC_OK) {
        CHECK(pool != BAD_POOL && pool != NULL);
        zc_pool_close(pool);
    } else {
        CHECK(pool == BAD_POOL);
    }
    /* mlock may be refused by RLIMIT_MEMLOCK: OK or a system error. */
    zc_pool_options_init(&o);
    o.size = 4 * MIB;
    o.page_mode = ZC_PAGES_SMALL;
    o.lock_memory = true;
    pool = BAD_POOL;
    s = zc_pool_open(&o, &pool);
    CHECK(s == ZC_OK || s == ZC_ERR_SYSTEM);
    if (s == ZC_OK) {
        CHECK(pool != BAD_POOL && pool != NULL);
        zc_pool_close(pool);
    } else {
        CHECK(pool == BAD_POOL);
        CHECK(message_contains("mlock"));
    }
    /* An enormous max_objects: refused before anything is mapped. */
    zc_pool_options_init(&o);
    o.size = 4 * MIB;
    o.page_mode = ZC_PAGES_SMALL;
    o.max_objects = UINT64_MAX;
    pool = BAD_POOL;
    s = zc_pool_open(&o, &pool);
    CHECK(s == ZC_ERR_INVALID_ARGUMENT);
    CHECK(message_contains("max_objects"));
    CHECK(pool == BAD_POOL);
    return true;
}

/* ---- failures keep stored data intact -------------------------------------------------------- */

static bool test_failing_calls_leave_stored_values_intact(void) {
    zc_pool *pool;
    if (!open_small(&pool)) return false;
    zc_buffer *w, *pending;
    CHECK_OK(zc_create_buffer(pool, K("stored"), 5000, &w));
    uint8_t *addr = zc_buffer_data(w);
    fill_pattern(addr, 5000, 7);
    CHECK_OK(zc_seal(w));
    CHECK_OK(zc_create_buffer(pool, K("pending"), 300, &pending));
    fill_pattern(zc_buffer_data(pending), 300, 8);
    zc_pool_stats before;
    CHECK_OK(zc_pool_get_stats(pool, &before));

    static char long_key[10000];
    memset(long_key, 's', sizeof long_key);
    zc_buffer *b = BAD_BUF;
    uint8_t dst[100];
    size_t got = 4242;
    for (int round = 0; round < 200; round++) {
        CHECK(zc_create_buffer(pool, K("stored"), 10, &b) == ZC_ERR_ALREADY_EXISTS);
        CHECK(zc_create_buffer(pool, K("pending"), 10, &b) == ZC_ERR_ALREADY_EXISTS);
        CHECK(zc_create_buffer(pool, K("x"), SIZE_MAX, &b) == ZC_ERR_INVALID_ARGUMENT);
        CHECK(zc_create_buffer(pool, long_key, sizeof long_key, 10, &b) == ZC_ERR_INVALID_ARGUMENT);
        CHECK(zc_put(pool, K("stored"), (const uint8_t *)"zzzz", 4) == ZC_ERR_ALREADY_EXISTS);
        CHECK(zc_put(pool, K("pending"), (const uint8_t *)"zzzz", 4) == ZC_ERR_ALREADY_EXISTS);
        CHECK(zc_delete(pool, K("pending")) == ZC_ERR_NOT_SEALED);
        CHECK(zc_delete(pool, K("x")) == ZC_ERR_NOT_FOUND);
        CHECK(zc_get(pool, K("stored"), -5, &b) == ZC_ERR_INVALID_ARGUMENT);
        CHECK(zc_get(pool, K("pending"), 0, &b) == ZC_ERR_NOT_SEALED);
        CHECK(zc_get_into(pool, K("stored"), 0, dst, sizeof dst, &got) == ZC_ERR_INVALID_ARGUMENT);
        CHECK(zc_get_into(pool, K("stored"), 0, NULL, 5000, &got) == ZC_ERR_INVALID_ARGUMENT);
        CHECK(zc_seal(w) == ZC_ERR_ALREADY_SEALED);
        CHECK(zc_abort(w) == ZC_ERR_ALREADY_SEALED);
        CHECK(zc_create_buffer(NULL, K("stored"), 10, &b) == ZC_ERR_INVALID_ARGUMENT);
        CHECK(zc_delete(pool, long_key, sizeof long_key) == ZC_ERR_INVALID_ARGUMENT);
    }
    CHECK(b == BAD_BUF && got == 4242);

    zc_pool_stats after;
    CHECK_OK(zc_pool_get_stats(pool, &after));
    CHECK(after.used_bytes == before.used_bytes);
    CHECK(after.object_count == before.object_count && after.key_count == before.key_count);

    zc_buffer *r;
    CHECK_OK(zc_get(pool, K("stored"), 0, &r));
    CHECK(zc_buffer_const_data(r) == addr);
    CHECK(zc_buffer_size(r) == 5000);
    CHECK(has_pattern(zc_buffer_const_data(r), 5000, 7));
    zc_release(r);
    CHECK(has_pattern(zc_buffer_const_data(pending), 300, 8));
    CHECK(zc_buffer_data(pending) != NULL);
    CHECK_OK(zc_seal(pending));
    CHECK_OK(zc_get(pool, K("pending"), 0, &r));
    CHECK(has_pattern(zc_buffer_const_data(r), 300, 8));
    zc_release(r);
    zc_release(pending);
    zc_release(w);
    zc_pool_close(pool);
    return true;
}

/* ---- misuse sequences ------------------------------------------------------------------------ */

static bool test_misuse_sequences_answer_statuses_and_never_crash(void) {
    zc_pool *pool;
    if (!open_small(&pool)) return false;
    zc_buffer *w, *r;

    /* Seal, then abort/seal again, repeatedly. */
    CHECK_OK(zc_create_buffer(pool, K("m"), 10, &w));
    CHECK_OK(zc_seal(w));
    for (int i = 0; i < 3; i++) {
        CHECK_STATUS(zc_abort(w), ZC_ERR_ALREADY_SEALED);
        CHECK_STATUS(zc_seal(w), ZC_ERR_ALREADY_SEALED);
    }
    /* Delete, delete again, get, seal the old writer. */
    CHECK_OK(zc_delete(pool, K("m")));
    CHECK_STATUS(zc_delete(pool, K("m")), ZC_ERR_NOT_FOUND);
    CHECK_STATUS(zc_get(pool, K("m"), 0, &r), ZC_ERR_NOT_FOUND);
    CHECK_STATUS(zc_seal(w), ZC_ERR_ALREADY_SEALED);
    CHECK_STATUS(zc_abort(w), ZC_ERR_ALREADY_SEALED);
    zc_release(w);

    /* Re-create the key, abort it, the key is free again; get handle misuse. */
    CHECK_OK(zc_create_buffer(pool, K("m"), 10, &w));
    CHECK_OK(zc_abort(w));
    CHECK_STATUS(zc_get(pool, K("m"), 0, &r), ZC_ERR_NOT_FOUND);
    CHECK_OK(zc_put(pool, K("m"), (const uint8_t *)"0123456789", 10));
    CHECK_OK(zc_get(pool, K("m"), 0, &r));
    CHECK_STATUS(zc_seal(r), ZC_ERR_ALREADY_SEALED);
    CHECK_STATUS(zc_abort(r), ZC_ERR_ALREADY_SEALED);
    CHECK(zc_buffer_data(r) == NULL);
    CHECK_OK(zc_delete(pool, K("m")));
    CHECK_STATUS(zc_seal(r), ZC_ERR_ALREADY_SEALED);
    CHECK(memcmp(zc_buffer_const_data(r), "0123456789", 10) == 0);
    zc_release(r);

    /* The same key twice in one batch: the second is ALREADY_EXISTS. */
    const char *keys[2] = { "dup", "dup" };
    size_t lens[2] = { 3, 3 };
    size_t sizes[2] = { 16, 16 };
    zc_buffer *bufs[2];
    zc_status sts[2];
    CHECK_STATUS(zc_create_batch(pool, keys, lens, sizes, 2, bufs, sts), ZC_ERR_ALREADY_EXISTS);
    CHECK_STATUS(sts[0], ZC_OK);
    CHECK_STATUS(sts[1], ZC_ERR_ALREADY_EXISTS);
    CHECK(bufs[0] != NULL && bufs[1] == NULL);
    CHECK_OK(zc_seal(bufs[0]));
    zc_buffer *gets[2];
    CHECK_OK(zc_get_batch(pool, keys, lens, 2, 0, gets, sts));
    CHECK(gets[0] != NULL && gets[1] != NULL && gets[0] != gets[1]);
    CHECK(zc_buffer_const_data(gets[0]) == zc_buffer_const_data(gets[1]));
    zc_release(gets[0]);
    zc_release(gets[1]);
    zc_release(bufs[0]);

    /* After close: an unsealed writer cannot be sealed, but abort (or release) discards it. */
    zc_buffer *pending, *held;
    CHECK_OK(zc_create_buffer(pool, K("p"), 10, &pending));
    CHECK_OK(zc_get(pool, K("dup"), 0, &held));
    zc_pool_close(pool);
    CHECK_STATUS(zc_seal(pending), ZC_ERR_POOL_CLOSED);
    CHECK_STATUS(zc_seal(pending), ZC_ERR_POOL_CLOSED);
    CHECK_OK(zc_abort(pending));
    CHECK_STATUS(zc_seal(held), ZC_ERR_ALREADY_SEALED);
    CHECK_STATUS(zc_abort(held), ZC_ERR_ALREADY_SEALED);
    CHECK(zc_buffer_size(held) == 16);
    zc_release(held);

    /* Many pools opened and closed, with buffers outliving them. */
    for (int i = 0; i < 20; i++) {
        zc_pool *p;
        if (!open_small(&p)) return false;
        zc_buffer *a;
        CHECK_OK(zc_put(p, K("x"), (const uint8_t *)"y", 1));
        CHECK_OK(zc_get(p, K("x"), 0, &a));
        zc_pool_close(p);
        CHECK(zc_buffer_const_data(a)[0] == 'y');
        zc_release(a);
    }
    return true;
}

int main(void) {
    static const harness_test tests[] = {
        TEST(test_status_codes_have_their_published_numbers),
        TEST(test_status_str_names_each_code_distinctly_and_unknown_codes),
        TEST(test_last_error_message_is_per_thread_never_null_and_holds_the_detail),
        TEST(test_null_buffer_is_invalid_argument_or_a_documented_no_op),
        TEST(test_null_out_in_pool_open_is_invalid_argument),
        TEST(test_null_pool_is_invalid_argument_everywhere),
        TEST(test_null_key_out_and_data_pointers_are_invalid_argument),
        TEST(test_batch_with_a_null_array_is_invalid_argument_and_writes_nothing),
        TEST(test_empty_and_too_long_keys_are_invalid_argument),
        TEST(test_key_of_exactly_max_len_works),
        TEST(test_size_out_of_range_is_invalid_argument),
        TEST(test_bad_timeouts_are_invalid_argument),
        TEST(test_bad_options_are_invalid_argument),
        TEST(test_odd_options_never_crash),
        TEST(test_failing_calls_leave_stored_values_intact),
        TEST(test_misuse_sequences_answer_statuses_and_never_crash),
    };
    RUN_TESTS(tests);
}
