/* What registering memory per operation costs, against reusing zcopy's once-registered pool.
 * Needs a verbs device (run by scripts/rdma-tests.sh, in the Soft-RoCE VM or on a NIC).
 *
 *   per operation: ibv_reg_mr + ibv_dereg_mr of a buffer (already written, so page faults are
 *                  not counted), against zc_create_buffer + zc_buffer_rdma_desc + zc_release;
 *   per pool:      the time zc_pool_open spent registering 1 GiB, with transparent huge pages
 *                  and with 4 KiB pages.
 * Each figure is the median of 5 runs; ratios are against the baseline measured in this run. */

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "rdma_util.h"

#define RUNS 5

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_double);
    return v[n / 2];
}

static void die(const char *what) {
    fprintf(stderr, "bench: %s failed: %s\n", what, zc_last_error_message());
    exit(1);
}

static zc_pool *open_pool(size_t size, uint32_t page_mode) {
    zc_pool_options o;
    zc_pool_options_init(&o);
    o.size = size;
    o.page_mode = page_mode;
    o.rdma = ZC_RDMA_REQUIRED;
    o.rdma_devices = rdma_device_name();
    zc_pool *pool;
    if (zc_pool_open(&o, &pool) != ZC_OK) die("zc_pool_open");
    return pool;
}

/* Nanoseconds per ibv_reg_mr + ibv_dereg_mr of `size` bytes at `buf`. */
static double reg_ns(struct ibv_pd *pd, void *buf, size_t size, int iters) {
    double t = rdma_now_s();
    for (int i = 0; i < iters; i++) {
        struct ibv_mr *mr = ibv_reg_mr(pd, buf, size, IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_WRITE);
        if (mr == NULL) {
            perror("ibv_reg_mr");
            exit(1);
        }
        ibv_dereg_mr(mr);
    }
    return (rdma_now_s() - t) * 1e9 / iters;
}

/* Nanoseconds per create + descriptor + release of `size` bytes in the registered pool. */
static double pool_ns(zc_pool *pool, size_t size, int iters) {
    double t = rdma_now_s();
    uint64_t sink = 0;
    for (int i = 0; i < iters; i++) {
        zc_buffer *b;
        zc_rdma_desc d;
        if (zc_create_buffer(pool, K("bench"), size, &b) != ZC_OK) die("zc_create_buffer");
        if (zc_buffer_rdma_desc(b, 0, &d) != ZC_OK) die("zc_buffer_rdma_desc");
        sink += d.rkey;
        zc_release(b);
    }
    double ns = (rdma_now_s() - t) * 1e9 / iters;
    return sink == 1 ? ns + 0 : ns; /* keeps the descriptor reads */
}

static const char *size_name(size_t size) {
    static char s[32];
    if (size >= MIB) snprintf(s, sizeof s, "%zu MiB", size / MIB);
    else snprintf(s, sizeof s, "%zu KiB", size / KIB);
    return s;
}

static void fmt_ns(double ns, char *out, size_t n) {
    if (ns >= 1e6) snprintf(out, n, "%.2f ms", ns / 1e6);
    else if (ns >= 1e3) snprintf(out, n, "%.1f µs", ns / 1e3);
    else snprintf(out, n, "%.0f ns", ns);
}

int main(void) {
    printf("RDMA registration benchmark on %s (median of %d runs)\n\n", rdma_device_name(), RUNS);
    printf("| operation | zcopy (pool registered once) | baseline (same run) | ratio |\n|---|---|---|---|\n");
    zc_pool *pool = open_pool(256 * MIB, ZC_PAGES_TRANSPARENT_HUGE);
    struct ibv_pd *pd = zc_pool_rdma_pd(pool, 0);
    const size_t sizes[] = { 4 * KIB, MIB, 64 * MIB };
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        size_t size = sizes[s];
        void *buf = aligned_alloc(4096, size);
        if (buf == NULL) die("aligned_alloc");
        memset(buf, 1, size);
        int reg_iters = size >= 64 * MIB ? 5 : size >= MIB ? 50 : 500;
        double reg[RUNS], zc[RUNS];
        for (int r = 0; r < RUNS; r++) {
            reg[r] = reg_ns(pd, buf, size, reg_iters);
            zc[r] = pool_ns(pool, size, 20000);
        }
        double reg_m = median(reg, RUNS), zc_m = median(zc, RUNS);
        char a[32], b[32];
        fmt_ns(zc_m, a, sizeof a);
        fmt_ns(reg_m, b, sizeof b);
        printf("| buffer for one transfer, %s | %s (create + descriptor + release) | %s (ibv_reg_mr + ibv_dereg_mr) | %.0f× faster |\n",
               size_name(size), a, b, reg_m / zc_m);
        free(buf);
    }
    zc_pool_close(pool);

    double thp[3], small[3];
    for (int r = 0; r < 3; r++) {
        zc_pool_stats st;
        zc_pool *p = open_pool(1024 * MIB, ZC_PAGES_TRANSPARENT_HUGE);
        if (zc_pool_get_stats(p, &st) != ZC_OK) die("zc_pool_get_stats");
        thp[r] = (double)st.rdma_register_nanos / 1e6;
        zc_pool_close(p);
        p = open_pool(1024 * MIB, ZC_PAGES_SMALL);
        if (zc_pool_get_stats(p, &st) != ZC_OK) die("zc_pool_get_stats");
        small[r] = (double)st.rdma_register_nanos / 1e6;
        zc_pool_close(p);
    }
    double thp_m = median(thp, 3), small_m = median(small, 3);
    printf("| registering the pool at open, per GiB | %.1f ms (huge pages) | %.1f ms (4 KiB pages) | %.2f× faster |\n",
           thp_m, small_m, small_m / thp_m);
    return 0;
}
