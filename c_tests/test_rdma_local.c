/* RDMA options and descriptors where no verbs device exists (local mode): ZC_RDMA_AUTO opens with
 * no registration, ZC_RDMA_REQUIRED fails with ZC_ERR_RDMA and says why, descriptors answer
 * ZC_ERR_RDMA, and zc_pool_region hands out the range every buffer lies in.
 *
 * tests/c_api.rs runs it on the host (which has no RDMA device): as it is, with ZCOPY_IBVERBS
 * naming a library that does not exist, and with libibverbs.so.1 hidden by a mount namespace
 * (both: a host without rdma-core; ZCOPY_TEST_NO_LIBIBVERBS=1 tells this program to expect it). */

#include <stdlib.h>
#include <string.h>

#include "harness.h"

static bool open_with(uint32_t rdma, const char *devices, zc_pool **out) {
    zc_pool_options o;
    zc_pool_options_init(&o);
    o.size = 4 * MIB;
    o.page_mode = ZC_PAGES_SMALL;
    o.prefault = false;
    o.rdma = rdma;
    o.rdma_devices = devices;
    CHECK_OK(zc_pool_open(&o, out));
    return true;
}

static bool message_contains(const char *needle) {
    return strstr(zc_last_error_message(), needle) != NULL;
}

static bool test_options_init_defaults_to_rdma_auto_on_all_devices(void) {
    zc_pool_options o;
    memset(&o, 0xff, sizeof o);
    zc_pool_options_init(&o);
    CHECK(o.rdma == ZC_RDMA_AUTO);
    CHECK(o.rdma_devices == NULL);
    for (size_t i = 0; i < sizeof o.reserved / sizeof o.reserved[0]; i++) {
        CHECK(o.reserved[i] == 0);
    }
    return true;
}

static bool test_auto_without_devices_opens_in_local_mode(void) {
    zc_pool *pool;
    if (!open_with(ZC_RDMA_AUTO, NULL, &pool)) return false;
    CHECK(zc_pool_rdma_count(pool) == 0);
    CHECK(zc_pool_rdma_pd(pool, 0) == NULL);
    zc_pool_stats st;
    CHECK_OK(zc_pool_get_stats(pool, &st));
    CHECK(st.rdma_registrations == 0);
    CHECK(st.rdma_register_nanos == 0);

    zc_buffer *w;
    CHECK_OK(zc_create_buffer(pool, K("k"), 100, &w));
    zc_rdma_desc d;
    memset(&d, 0xab, sizeof d);
    CHECK_STATUS(zc_buffer_rdma_desc(w, 0, &d), ZC_ERR_RDMA);
    CHECK(message_contains("local mode"));
    CHECK(d.addr == 0xababababababababull && d.rkey == 0xababababu); /* not written */
    zc_release(w);
    zc_pool_close(pool);
    return true;
}

static bool test_named_device_on_a_host_without_devices_is_local_mode_under_auto(void) {
    zc_pool *pool;
    if (!open_with(ZC_RDMA_AUTO, "rxe0", &pool)) return false;
    CHECK(zc_pool_rdma_count(pool) == 0);
    zc_pool_close(pool);
    return true;
}

static bool test_required_without_devices_fails_with_rdma_error_and_a_reason(void) {
    zc_pool_options o;
    zc_pool_options_init(&o);
    o.size = 4 * MIB;
    o.page_mode = ZC_PAGES_SMALL;
    o.rdma = ZC_RDMA_REQUIRED;
    zc_pool *pool = BAD_POOL;
    CHECK_STATUS(zc_pool_open(&o, &pool), ZC_ERR_RDMA);
    CHECK(pool == BAD_POOL);
    CHECK(message_contains("RDMA required but unavailable: "));
    const char *expect = getenv("ZCOPY_TEST_NO_LIBIBVERBS") != NULL ? "could not be loaded" : "RDMA";
    CHECK(message_contains(expect));
    o.rdma_devices = "rxe0";
    CHECK_STATUS(zc_pool_open(&o, &pool), ZC_ERR_RDMA);
    CHECK(pool == BAD_POOL);
    return true;
}

static bool test_off_never_registers(void) {
    zc_pool *pool;
    if (!open_with(ZC_RDMA_OFF, NULL, &pool)) return false;
    CHECK(zc_pool_rdma_count(pool) == 0);
    zc_pool_close(pool);
    return true;
}

static bool test_bad_rdma_options_are_invalid_arguments(void) {
    zc_pool_options o;
    zc_pool_options_init(&o);
    o.size = 4 * MIB;
    o.rdma = 3;
    zc_pool *pool = BAD_POOL;
    CHECK_STATUS(zc_pool_open(&o, &pool), ZC_ERR_INVALID_ARGUMENT);
    CHECK(message_contains("ZC_RDMA_"));
    o.rdma = ZC_RDMA_AUTO;
    o.rdma_devices = " , ,";
    CHECK_STATUS(zc_pool_open(&o, &pool), ZC_ERR_INVALID_ARGUMENT);
    CHECK(message_contains("rdma_devices"));
    CHECK(pool == BAD_POOL);
    return true;
}

static bool test_register_pd_rejects_null_and_closed_pools(void) {
    zc_pool *pool;
    if (!open_with(ZC_RDMA_AUTO, NULL, &pool)) return false;
    uint32_t index = 77;
    CHECK_STATUS(zc_pool_register_pd(pool, NULL, &index), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_pool_register_pd(NULL, (void *)&index, &index), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_pool_register_pd(pool, (void *)&index, NULL), ZC_ERR_INVALID_ARGUMENT);
    CHECK(index == 77);
    CHECK(zc_pool_rdma_count(NULL) == 0);
    CHECK(zc_pool_rdma_pd(NULL, 0) == NULL);
    zc_pool_close(pool);
    return true;
}

static bool test_descriptor_arguments_are_checked(void) {
    zc_pool *pool;
    if (!open_with(ZC_RDMA_AUTO, NULL, &pool)) return false;
    zc_buffer *w;
    CHECK_OK(zc_create_buffer(pool, K("k"), 10, &w));
    zc_rdma_desc d;
    CHECK_STATUS(zc_buffer_rdma_desc(NULL, 0, &d), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_buffer_rdma_desc(w, 0, NULL), ZC_ERR_INVALID_ARGUMENT);
    zc_release(w);
    zc_pool_close(pool);
    return true;
}

static bool test_region_contains_every_buffer(void) {
    zc_pool *pool;
    if (!open_with(ZC_RDMA_AUTO, NULL, &pool)) return false;
    void *base = NULL;
    size_t len = 0;
    CHECK_OK(zc_pool_region(pool, &base, &len));
    CHECK(base != NULL);
    CHECK((uintptr_t)base % 4096 == 0);
    CHECK(len >= 4 * MIB && len % 4096 == 0);
    zc_buffer *bufs[8];
    for (size_t i = 0; i < 8; i++) {
        char key[8] = { 'b', (char)('0' + i), 0 };
        CHECK_OK(zc_create_buffer(pool, key, 2, 100000 * (i + 1) % (512 * KIB), &bufs[i]));
        const uint8_t *p = zc_buffer_const_data(bufs[i]);
        CHECK(p >= (const uint8_t *)base && p + zc_buffer_size(bufs[i]) <= (const uint8_t *)base + len);
    }
    for (size_t i = 0; i < 8; i++) {
        zc_release(bufs[i]);
    }
    void *b2 = BAD_BUF;
    size_t l2 = 5;
    CHECK_STATUS(zc_pool_region(NULL, &b2, &l2), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_pool_region(pool, NULL, &l2), ZC_ERR_INVALID_ARGUMENT);
    CHECK_STATUS(zc_pool_region(pool, &b2, NULL), ZC_ERR_INVALID_ARGUMENT);
    CHECK(b2 == BAD_BUF && l2 == 5);
    zc_pool_close(pool);
    return true;
}

int main(void) {
    static const harness_test tests[] = {
        TEST(test_options_init_defaults_to_rdma_auto_on_all_devices),
        TEST(test_auto_without_devices_opens_in_local_mode),
        TEST(test_named_device_on_a_host_without_devices_is_local_mode_under_auto),
        TEST(test_required_without_devices_fails_with_rdma_error_and_a_reason),
        TEST(test_off_never_registers),
        TEST(test_bad_rdma_options_are_invalid_arguments),
        TEST(test_register_pd_rejects_null_and_closed_pools),
        TEST(test_descriptor_arguments_are_checked),
        TEST(test_region_contains_every_buffer),
    };
    RUN_TESTS(tests);
}
