/* zcopy's RDMA registration against a real verbs device (Soft-RoCE rxe0 in the test VM, or a NIC):
 * the pool registers itself once at open, and a peer moves objects with RDMA READ and WRITE over
 * an RC queue pair using nothing but zc_buffer_rdma_desc values; bytes are compared after every
 * transfer, through zc_get. Run by scripts/rdma-tests.sh. */

#include <dirent.h>
#include <string.h>

#include "harness.h"
#include "objects.h"
#include "rdma_util.h"

static const size_t SIZES[] = { 1, 4 * KIB, MIB, 16 * MIB };
#define NSIZES (sizeof SIZES / sizeof SIZES[0])

static bool open_rdma(uint32_t mode, const char *devices, zc_pool **out) {
    zc_pool_options o;
    zc_pool_options_init(&o);
    o.size = 64 * MIB;
    o.rdma = mode;
    o.rdma_devices = devices;
    CHECK_OK(zc_pool_open(&o, out));
    return true;
}

static bool message_contains(const char *needle) {
    return strstr(zc_last_error_message(), needle) != NULL;
}

/* READ: `reader` (an end on `to`'s registration `to_index`) pulls each sealed object of `from`
 * into a created buffer of `to`; then WRITE: it pushes sealed objects of `to` into created
 * buffers of `from`. Every size, bytes compared through zc_get. */
static bool move_every_size(zc_pool *from, uint32_t from_index, zc_pool *to, uint32_t to_index, rdma_end *reader) {
    for (size_t i = 0; i < NSIZES; i++) {
        size_t size = SIZES[i];
        char key[32];
        snprintf(key, sizeof key, "read-%zu", size);
        zc_buffer *src, *dst;
        if (!store(from, key, size, (uint32_t)(100 + i), &src)) return false;
        CHECK_OK(zc_create_buffer(to, key, strlen(key), size, &dst));
        memset(zc_buffer_data(dst), 0, size);
        zc_rdma_desc remote, local;
        if (!desc_of(src, from_index, &remote) || !desc_of(dst, to_index, &local)) return false;
        CHECK(rdma_transfer(reader, IBV_WR_RDMA_READ, &local, &remote));
        CHECK_OK(zc_seal(dst));
        if (!reads_pattern(to, key, size, (uint32_t)(100 + i))) return false;
        zc_release(src);
        zc_release(dst);

        snprintf(key, sizeof key, "write-%zu", size);
        if (!store(to, key, size, (uint32_t)(200 + i), &src)) return false;
        CHECK_OK(zc_create_buffer(from, key, strlen(key), size, &dst));
        memset(zc_buffer_data(dst), 0, size);
        if (!desc_of(src, to_index, &local) || !desc_of(dst, from_index, &remote)) return false;
        CHECK(rdma_transfer(reader, IBV_WR_RDMA_WRITE, &local, &remote));
        CHECK_OK(zc_seal(dst));
        if (!reads_pattern(from, key, size, (uint32_t)(200 + i))) return false;
        zc_release(src);
        zc_release(dst);
        printf("    %zu bytes: RDMA READ and RDMA WRITE moved the bytes intact\n", size);
    }
    return true;
}

static bool test_required_pool_registers_the_device_once(void) {
    zc_pool *pool;
    if (!open_rdma(ZC_RDMA_REQUIRED, rdma_device_name(), &pool)) return false;
    CHECK(zc_pool_rdma_count(pool) == 1);
    struct ibv_pd *pd = zc_pool_rdma_pd(pool, 0);
    CHECK(pd != NULL && pd->context != NULL);
    CHECK(strcmp(ibv_get_device_name(pd->context->device), rdma_device_name()) == 0);
    CHECK(zc_pool_rdma_pd(pool, 1) == NULL);
    zc_pool_stats st;
    CHECK_OK(zc_pool_get_stats(pool, &st));
    CHECK(st.rdma_registrations == 1);
    CHECK(st.rdma_register_nanos > 0);

    zc_buffer *w;
    CHECK_OK(zc_create_buffer(pool, K("k"), 4096, &w));
    zc_rdma_desc d;
    if (!desc_of(w, 0, &d)) return false;
    CHECK(d.lkey != 0 || d.rkey != 0);
    zc_rdma_desc untouched = d;
    CHECK_STATUS(zc_buffer_rdma_desc(w, 1, &d), ZC_ERR_INVALID_ARGUMENT);
    CHECK(memcmp(&d, &untouched, sizeof d) == 0);
    zc_release(w);
    zc_pool_close(pool);
    return true;
}

static bool test_unknown_device_name_is_an_rdma_error_naming_the_present_ones(void) {
    zc_pool_options o;
    zc_pool_options_init(&o);
    o.size = 4 * MIB;
    o.rdma_devices = "no-such-device";
    zc_pool *pool = BAD_POOL;
    CHECK_STATUS(zc_pool_open(&o, &pool), ZC_ERR_RDMA);
    CHECK(message_contains("no-such-device") && message_contains(rdma_device_name()));
    CHECK(pool == BAD_POOL);
    return true;
}

static bool test_read_and_write_between_two_pools_with_descriptors_only(void) {
    zc_pool *a, *b;
    if (!open_rdma(ZC_RDMA_REQUIRED, rdma_device_name(), &a)) return false;
    if (!open_rdma(ZC_RDMA_AUTO, NULL, &b)) return false;
    CHECK(zc_pool_rdma_count(b) >= 1);
    rdma_end ea, eb;
    CHECK(rdma_end_init(&ea, zc_pool_rdma_pd(a, 0)));
    CHECK(rdma_end_init(&eb, zc_pool_rdma_pd(b, 0)));
    CHECK(rdma_end_connect(&ea, &eb) && rdma_end_connect(&eb, &ea));
    if (!move_every_size(a, 0, b, 0, &eb)) return false;
    rdma_end_destroy(&ea);
    rdma_end_destroy(&eb);
    zc_pool_close(a);
    zc_pool_close(b);
    return true;
}

static bool test_registration_on_a_caller_pd_moves_bytes_and_ends_at_close(void) {
    int n = 0;
    struct ibv_device **list = ibv_get_device_list(&n);
    CHECK(list != NULL);
    struct ibv_context *ctx = NULL;
    for (int i = 0; i < n; i++) {
        if (strcmp(ibv_get_device_name(list[i]), rdma_device_name()) == 0) ctx = ibv_open_device(list[i]);
    }
    ibv_free_device_list(list);
    CHECK(ctx != NULL);
    struct ibv_pd *mine = ibv_alloc_pd(ctx);
    CHECK(mine != NULL);

    zc_pool *engine, *peer;
    if (!open_rdma(ZC_RDMA_OFF, NULL, &engine)) return false;
    CHECK(zc_pool_rdma_count(engine) == 0);
    uint32_t index = 99;
    CHECK_OK(zc_pool_register_pd(engine, mine, &index));
    CHECK(index == 0);
    CHECK(zc_pool_rdma_count(engine) == 1);
    CHECK(zc_pool_rdma_pd(engine, 0) == (void *)mine);
    if (!open_rdma(ZC_RDMA_REQUIRED, rdma_device_name(), &peer)) return false;

    rdma_end e_engine, e_peer;
    CHECK(rdma_end_init(&e_engine, mine));
    CHECK(rdma_end_init(&e_peer, zc_pool_rdma_pd(peer, 0)));
    CHECK(rdma_end_connect(&e_engine, &e_peer) && rdma_end_connect(&e_peer, &e_engine));
    if (!move_every_size(peer, 0, engine, index, &e_engine)) return false;
    rdma_end_destroy(&e_engine);
    rdma_end_destroy(&e_peer);

    zc_buffer *held;
    CHECK_OK(zc_create_buffer(engine, K("held"), 64, &held));
    zc_pool_close(engine);
    zc_rdma_desc d;
    CHECK_STATUS(zc_buffer_rdma_desc(held, index, &d), ZC_ERR_POOL_CLOSED);
    /* The pool deregistered the caller's PD at close, so the PD can be freed now. */
    CHECK(ibv_dealloc_pd(mine) == 0);
    zc_release(held);
    CHECK(ibv_close_device(ctx) == 0);
    zc_pool_close(peer);
    return true;
}

static bool test_closed_pool_keeps_its_registration_until_the_last_release(void) {
    zc_pool *a, *b;
    if (!open_rdma(ZC_RDMA_REQUIRED, rdma_device_name(), &a)) return false;
    if (!open_rdma(ZC_RDMA_REQUIRED, rdma_device_name(), &b)) return false;
    zc_buffer *src;
    if (!store(a, "survivor", 4096, 7, &src)) return false;
    zc_rdma_desc remote;
    if (!desc_of(src, 0, &remote)) return false;
    rdma_end ea, eb;
    CHECK(rdma_end_init(&ea, zc_pool_rdma_pd(a, 0)));
    CHECK(rdma_end_init(&eb, zc_pool_rdma_pd(b, 0)));
    CHECK(rdma_end_connect(&ea, &eb) && rdma_end_connect(&eb, &ea));
    zc_pool_close(a); /* `src` is still held: memory and registration stay */

    zc_buffer *dst;
    CHECK_OK(zc_create_buffer(b, K("copy"), 4096, &dst));
    zc_rdma_desc local;
    if (!desc_of(dst, 0, &local)) return false;
    CHECK(rdma_transfer(&eb, IBV_WR_RDMA_READ, &local, &remote));
    CHECK(has_pattern(zc_buffer_const_data(dst), 4096, 7));
    zc_release(dst);
    rdma_end_destroy(&ea);
    rdma_end_destroy(&eb);
    zc_release(src);
    zc_pool_close(b);
    return true;
}

static bool test_split_registration_keeps_every_object_inside_one_region(void) {
    /* Registrations capped at 16 MiB: a 64 MiB pool is registered as 4 memory regions. */
    setenv("ZCOPY_RDMA_MAX_MR_SIZE", "16777216", 1);
    zc_pool *a, *b;
    bool opened = open_rdma(ZC_RDMA_REQUIRED, rdma_device_name(), &a) && open_rdma(ZC_RDMA_REQUIRED, rdma_device_name(), &b);
    unsetenv("ZCOPY_RDMA_MAX_MR_SIZE");
    if (!opened) return false;
    void *base;
    size_t len;
    CHECK_OK(zc_pool_region(a, &base, &len));
    rdma_end ea, eb;
    CHECK(rdma_end_init(&ea, zc_pool_rdma_pd(a, 0)));
    CHECK(rdma_end_init(&eb, zc_pool_rdma_pd(b, 0)));
    CHECK(rdma_end_connect(&ea, &eb) && rdma_end_connect(&eb, &ea));

    enum { N = 4, SIZE = 10 * 1024 * 1024 };
    zc_buffer *src[N];
    uint32_t rkeys[N];
    size_t regions_seen = 0;
    for (int i = 0; i < N; i++) {
        char key[16];
        snprintf(key, sizeof key, "split-%d", i);
        if (!store(a, key, SIZE, (uint32_t)(300 + i), &src[i])) return false;
        zc_rdma_desc remote;
        if (!desc_of(src[i], 0, &remote)) return false;
        uint64_t first = (remote.addr - (uint64_t)(uintptr_t)base) / (16 * MIB);
        uint64_t last = (remote.addr + SIZE - 1 - (uint64_t)(uintptr_t)base) / (16 * MIB);
        CHECK(first == last); /* never straddles two registrations */
        rkeys[i] = remote.rkey;
        bool new_region = true;
        for (int j = 0; j < i; j++) new_region = new_region && rkeys[j] != rkeys[i];
        regions_seen += new_region;

        zc_buffer *dst;
        CHECK_OK(zc_create_buffer(b, key, strlen(key), SIZE, &dst));
        zc_rdma_desc local;
        if (!desc_of(dst, 0, &local)) return false;
        CHECK(rdma_transfer(&eb, IBV_WR_RDMA_READ, &local, &remote));
        CHECK_OK(zc_seal(dst));
        if (!reads_pattern(b, key, SIZE, (uint32_t)(300 + i))) return false;
        zc_release(dst);
    }
    /* Four 10 MiB objects in 16 MiB regions: one per region, each with its own keys; a fifth
     * cannot fit anywhere without straddling two. */
    CHECK(regions_seen == 4);
    zc_buffer *fifth = BAD_BUF;
    CHECK_STATUS(zc_create_buffer(a, K("split-4"), SIZE, &fifth), ZC_ERR_OUT_OF_MEMORY);
    printf("    4 objects of 10 MiB, one in each of the pool's 4 registrations, each read intact\n");
    for (int i = 0; i < N; i++) zc_release(src[i]);
    rdma_end_destroy(&ea);
    rdma_end_destroy(&eb);
    zc_pool_close(a);
    zc_pool_close(b);
    return true;
}

static int open_fd_count(void) {
    int n = 0;
    DIR *d = opendir("/proc/self/fd");
    if (d == NULL) return -1;
    while (readdir(d) != NULL) n++;
    closedir(d);
    return n;
}

static bool test_failed_open_rolls_back_every_device_it_opened(void) {
    /* A registration cap below the page size fails after the device was opened. */
    int before = open_fd_count();
    CHECK(before > 0);
    setenv("ZCOPY_RDMA_MAX_MR_SIZE", "100", 1);
    for (int i = 0; i < 50; i++) {
        zc_pool_options o;
        zc_pool_options_init(&o);
        o.size = 4 * MIB;
        zc_pool *pool = BAD_POOL;
        zc_status s = zc_pool_open(&o, &pool);
        if (s != ZC_ERR_RDMA || pool != BAD_POOL || !message_contains("smaller than a page")) {
            unsetenv("ZCOPY_RDMA_MAX_MR_SIZE");
            CHECK_STATUS(s, ZC_ERR_RDMA);
            CHECK(pool == BAD_POOL);
            CHECK(message_contains("smaller than a page"));
        }
    }
    unsetenv("ZCOPY_RDMA_MAX_MR_SIZE");
    CHECK(open_fd_count() == before); /* no device file left open */
    zc_pool *pool;
    if (!open_rdma(ZC_RDMA_REQUIRED, rdma_device_name(), &pool)) return false;
    zc_pool_close(pool);
    CHECK(open_fd_count() == before); /* and a closed pool closes its device */
    return true;
}

int main(void) {
    printf("device %s, GID index %d\n", rdma_device_name(), rdma_gid_index());
    static const harness_test tests[] = {
        TEST(test_required_pool_registers_the_device_once),
        TEST(test_unknown_device_name_is_an_rdma_error_naming_the_present_ones),
        TEST(test_read_and_write_between_two_pools_with_descriptors_only),
        TEST(test_registration_on_a_caller_pd_moves_bytes_and_ends_at_close),
        TEST(test_closed_pool_keeps_its_registration_until_the_last_release),
        TEST(test_split_registration_keeps_every_object_inside_one_region),
        TEST(test_failed_open_rolls_back_every_device_it_opened),
    };
    RUN_TESTS(tests);
}
