/* Objects with known bytes, and their RDMA descriptors: shared by the RDMA device tests. Include
 * after harness.h. */
#ifndef ZCOPY_RDMA_OBJECTS_H
#define ZCOPY_RDMA_OBJECTS_H

#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "harness.h"
#include "zcopy.h"

static bool desc_of(zc_buffer *buf, uint32_t index, zc_rdma_desc *d) {
    CHECK_OK(zc_buffer_rdma_desc(buf, index, d));
    CHECK(d->addr == (uint64_t)(uintptr_t)zc_buffer_const_data(buf));
    CHECK(d->length == zc_buffer_size(buf));
    return true;
}

/* Stores `size` pattern bytes under `key`, sealed; answers the handle. */
static bool store(zc_pool *pool, const char *key, size_t size, uint32_t seed, zc_buffer **out) {
    CHECK_OK(zc_create_buffer(pool, key, strlen(key), size, out));
    fill_pattern(zc_buffer_data(*out), size, seed);
    CHECK_OK(zc_seal(*out));
    return true;
}

/* zc_get of `key` sees exactly the pattern made from `seed`. */
static bool reads_pattern(zc_pool *pool, const char *key, size_t size, uint32_t seed) {
    zc_buffer *r;
    CHECK_OK(zc_get(pool, key, strlen(key), 0, &r));
    CHECK(zc_buffer_size(r) == size);
    CHECK(has_pattern(zc_buffer_const_data(r), size, seed));
    zc_release(r);
    return true;
}

#endif
