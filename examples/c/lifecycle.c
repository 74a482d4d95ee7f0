/* The zcopy object lifecycle, step by step.
 *
 *   open a pool -> create a buffer -> write in place -> seal -> get (no copy) -> delete while a
 *   reader holds it -> release -> stats -> close
 *
 * Build (from the repository root, after `cargo build`):
 *   cc -std=c11 -Wall -Iinclude examples/c/lifecycle.c -Ltarget/debug -lzcopy \
 *      -Wl,-rpath,$PWD/target/debug -o lifecycle
 *
 * Every fallible zcopy call returns a zc_status, for code to act on; on failure
 * zc_last_error_message() says what went wrong, its kind included, so it is printed alone. */

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "zcopy.h"

/* Prints the failing call with the library's message, and reports whether it succeeded. */
static int ok(zc_status status, const char *what) {
    if (status == ZC_OK) {
        return 1;
    }
    fprintf(stderr, "%s failed: %s\n", what, zc_last_error_message());
    return 0;
}

static void print_stats(const zc_pool *pool, const char *when) {
    zc_pool_stats st;
    if (!ok(zc_pool_get_stats(pool, &st), "zc_pool_get_stats")) {
        return;
    }
    printf("stats %-22s used %" PRIu64 " of %" PRIu64 " bytes, %" PRIu64 " objects, %" PRIu64
           " keys\n",
           when, st.used_bytes, st.capacity_bytes, st.object_count, st.key_count);
}

int main(void) {
    int exit_code = EXIT_FAILURE;
    zc_pool *pool = NULL;
    zc_buffer *writer = NULL, *reader = NULL;

    /* 1. Open a pool: one memory region that every object lives in. Start from the defaults and
     *    change what you need; here a small pool so the example starts instantly. */
    zc_pool_options opts;
    zc_pool_options_init(&opts);
    opts.size = 16u << 20; /* 16 MiB */
    if (!ok(zc_pool_open(&opts, &pool), "zc_pool_open")) {
        return EXIT_FAILURE;
    }
    print_stats(pool, "after open:");

    /* 2. Create a buffer for a key. Keys are bytes with a length (they may contain NUL). The
     *    object is invisible to readers until it is sealed. */
    static const char key[] = "greeting";
    const size_t key_len = sizeof key - 1;
    const char message[] = "hello from the writer, read in place";
    if (!ok(zc_create_buffer(pool, key, key_len, sizeof message, &writer), "zc_create_buffer")) {
        goto out;
    }

    /* 3. Write in place: zc_buffer_data() is the object's memory inside the pool, not a copy. */
    uint8_t *write_ptr = zc_buffer_data(writer);
    if (write_ptr == NULL) {
        fprintf(stderr, "zc_buffer_data returned NULL for a fresh buffer\n");
        goto out;
    }
    memcpy(write_ptr, message, sizeof message);

    /* 4. Seal: the bytes become immutable and visible. The writer handle stays a read reference
     *    and must still be released. */
    if (!ok(zc_seal(writer), "zc_seal")) {
        goto out;
    }

    /* 5. Get: a read-only reference to the same bytes. timeout 0 answers at once; a positive
     *    timeout (or -1) would wait for another thread to create and seal the key. */
    if (!ok(zc_get(pool, key, key_len, 0, &reader), "zc_get")) {
        goto out;
    }
    const uint8_t *read_ptr = zc_buffer_const_data(reader);
    printf("writer pointer %p\nreader pointer %p\n", (void *)write_ptr, (const void *)read_ptr);
    if (read_ptr != write_ptr) {
        fprintf(stderr, "zero-copy broken: the reader got a different address\n");
        goto out;
    }
    printf("zero-copy: reader pointer == writer pointer\n");
    printf("reader sees %zu bytes: \"%s\"\n", zc_buffer_size(reader), (const char *)read_ptr);
    print_stats(pool, "after seal and get:");

    /* 6. Delete while referenced: the key disappears at once (and could be created again), but
     *    the reader's bytes stay valid and unchanged until it releases them. */
    if (!ok(zc_delete(pool, key, key_len), "zc_delete")) {
        goto out;
    }
    printf("after delete: contains = %s, reader still sees \"%s\"\n",
           zc_contains(pool, key, key_len) ? "true" : "false", (const char *)read_ptr);
    print_stats(pool, "after delete:");

    /* 7. Release every handle: the memory is freed at the last release. */
    zc_release(reader);
    reader = NULL;
    zc_release(writer);
    writer = NULL;
    print_stats(pool, "after release:");

    exit_code = EXIT_SUCCESS;

out:
    /* zc_release(NULL) and zc_pool_close(NULL) are no-ops, so one cleanup path fits all. Buffers
     * may even outlive the pool: its memory stays mapped until the last one is released. */
    zc_release(reader);
    zc_release(writer);
    zc_pool_close(pool);
    return exit_code;
}
