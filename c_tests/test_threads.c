/* zcopy under concurrency: threads creating, writing, sealing, reading, verifying, releasing and
 * deleting on a shared key space, where every value is self-describing so that any reader can check
 * whatever it gets; races answer only the documented statuses; nothing leaks. Also: one seal wakes
 * every waiter, and racing creates/deletes of one key have exactly one winner. */

#include <pthread.h>
#include <stdatomic.h>
#include <string.h>

#include "harness.h"

enum {
    NTHREADS = 4,
    NKEYS = 64,
    OPS_PER_THREAD = 20000,
    TIME_LIMIT_MS = 10000,
    HELD_MAX = 8,
    HEADER = 16,
    MAX_VALUE = HEADER + 3000,
};

/* Passes when `call` answers one of the listed statuses; the answer is stored in `var`. */
#define CHECK_ALLOWED(var, call, ...)                                                            \
    do {                                                                                         \
        (var) = (call);                                                                          \
        static const zc_status allowed_[] = { __VA_ARGS__ };                                     \
        bool found_ = false;                                                                     \
        for (size_t i_ = 0; i_ < sizeof allowed_ / sizeof allowed_[0]; i_++) {                   \
            found_ = found_ || allowed_[i_] == (var);                                            \
        }                                                                                        \
        if (!found_) {                                                                           \
            printf("%s:%d: %s\n    answered %u (%s), allowed: %s\n    last error: %s\n",         \
                   __FILE__, __LINE__, #call, (unsigned)(var), harness_status_name(var),         \
                   #__VA_ARGS__, harness_last_error());                                          \
            fflush(stdout);                                                                      \
            return false;                                                                        \
        }                                                                                        \
    } while (0)

/* ---- self-describing values -------------------------------------------------------------------
 * bytes 0..8: the generation (unique per written value), bytes 8..16: the key index xor a magic,
 * the rest: a pattern of (generation, offset). The size is a function of (key, generation). */

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

static size_t value_size(unsigned key, uint64_t gen) {
    return HEADER + (size_t)(mix64(gen * 131 + key) % (MAX_VALUE - HEADER + 1));
}

static uint8_t value_byte(uint64_t gen, size_t i) {
    return (uint8_t)(mix64(gen) >> (8 * (i % 8))) ^ (uint8_t)(i * 29u);
}

static const uint64_t KEY_MAGIC = 0x5a5a000000000000ull;

static void write_value(uint8_t *p, unsigned key, uint64_t gen) {
    size_t n = value_size(key, gen);
    uint64_t tag = KEY_MAGIC ^ key;
    memcpy(p, &gen, 8);
    memcpy(p + 8, &tag, 8);
    for (size_t i = HEADER; i < n; i++) {
        p[i] = value_byte(gen, i);
    }
}

/* Checks that `p[0..n]` is a complete value of `key`; its generation goes to `*gen_out`. */
static bool verify_value(const uint8_t *p, size_t n, unsigned key, uint64_t *gen_out) {
    CHECK(p != NULL);
    CHECK(n >= HEADER);
    uint64_t gen, tag;
    memcpy(&gen, p, 8);
    memcpy(&tag, p + 8, 8);
    CHECK(tag == (KEY_MAGIC ^ key));
    CHECK(gen != 0);
    CHECK(n == value_size(key, gen));
    for (size_t i = HEADER; i < n; i++) {
        if (p[i] != value_byte(gen, i)) {
            printf("    key %u gen %llu: byte %zu is %u, expected %u\n", key,
                   (unsigned long long)gen, i, p[i], value_byte(gen, i));
            return false;
        }
    }
    if (gen_out != NULL) {
        *gen_out = gen;
    }
    return true;
}

/* `verify_value` for bytes inside the pool, whose address must also be aligned. */
static bool verify_pool_value(const uint8_t *p, size_t n, unsigned key, uint64_t *gen_out) {
    CHECK(((uintptr_t)p % ZC_ALIGNMENT) == 0);
    return verify_value(p, n, key, gen_out);
}

static int key_name(unsigned key, char *out, size_t cap) {
    return snprintf(out, cap, "key-%02u", key);
}

/* ---- the random workload --------------------------------------------------------------------- */

typedef struct held_ref {
    zc_buffer *buf;
    unsigned key;
    uint64_t gen;
} held_ref;

typedef struct worker {
    zc_pool *pool;
    unsigned id;
    uint64_t rng;
    held_ref held[HELD_MAX];
    size_t nheld;
    zc_buffer *pending; /* a created, written, not yet sealed buffer */
    unsigned pending_key;
    uint64_t pending_gen;
    uint64_t deadline_ns;
    uint64_t ops, gets_ok, creates_ok, deletes_ok;
    bool ok;
} worker;

static atomic_uint_fast64_t next_gen = 1;
static atomic_bool stop_all = false;

static uint64_t rnd(worker *w) {
    /* xorshift64* */
    w->rng ^= w->rng >> 12;
    w->rng ^= w->rng << 25;
    w->rng ^= w->rng >> 27;
    return w->rng * 2685821657736338717ull;
}

/* Keeps `buf` (a read reference to a verified value) for later, or releases it. */
static bool keep_or_release(worker *w, zc_buffer *buf, unsigned key, uint64_t gen) {
    if (w->nheld < HELD_MAX && rnd(w) % 3 == 0) {
        w->held[w->nheld++] = (held_ref){ buf, key, gen };
    } else {
        zc_release(buf);
    }
    return true;
}

/* Re-verifies a held reference (its bytes must not have changed) and releases it. */
static bool release_held(worker *w, size_t i) {
    held_ref h = w->held[i];
    uint64_t gen = 0;
    CHECK(zc_buffer_data(h.buf) == NULL);
    if (!verify_pool_value(zc_buffer_const_data(h.buf), zc_buffer_size(h.buf), h.key, &gen)) return false;
    CHECK(gen == h.gen);
    zc_release(h.buf);
    w->held[i] = w->held[--w->nheld];
    return true;
}

static bool seal_pending(worker *w) {
    uint64_t gen = 0;
    CHECK(zc_buffer_data(w->pending) != NULL);
    if (!verify_pool_value(zc_buffer_const_data(w->pending), zc_buffer_size(w->pending), w->pending_key, &gen))
        return false;
    CHECK(gen == w->pending_gen);
    CHECK_OK(zc_seal(w->pending));
    CHECK(zc_buffer_data(w->pending) == NULL);
    if (!keep_or_release(w, w->pending, w->pending_key, w->pending_gen)) return false;
    w->pending = NULL;
    return true;
}

static bool op_create(worker *w, unsigned key, const char *name, size_t len) {
    uint64_t gen = atomic_fetch_add(&next_gen, 1);
    size_t size = value_size(key, gen);
    zc_buffer *b = BAD_BUF;
    zc_status s;
    CHECK_ALLOWED(s, zc_create_buffer(w->pool, name, len, size, &b), ZC_OK, ZC_ERR_ALREADY_EXISTS);
    if (s != ZC_OK) {
        CHECK(b == BAD_BUF);
        return true;
    }
    w->creates_ok++;
    CHECK(b != NULL && b != BAD_BUF);
    CHECK(zc_buffer_size(b) == size);
    uint8_t *data = zc_buffer_data(b);
    CHECK(data != NULL);
    CHECK(((uintptr_t)data % ZC_ALIGNMENT) == 0);
    CHECK(zc_buffer_const_data(b) == data);
    write_value(data, key, gen);
    uint64_t r = rnd(w) % 10;
    if (r < 6) {
        CHECK_OK(zc_seal(b));
        return keep_or_release(w, b, key, gen);
    }
    if (r == 6) {
        CHECK_OK(zc_abort(b));
        return true;
    }
    if (r == 7 || w->pending != NULL) {
        zc_release(b); /* unsealed: aborted */
        return true;
    }
    w->pending = b;
    w->pending_key = key;
    w->pending_gen = gen;
    return true;
}

static bool op_get(worker *w, unsigned key, const char *name, size_t len, int64_t timeout) {
    zc_buffer *b = BAD_BUF;
    zc_status s;
    if (timeout == 0) {
        CHECK_ALLOWED(s, zc_get(w->pool, name, len, 0, &b), ZC_OK, ZC_ERR_NOT_FOUND, ZC_ERR_NOT_SEALED);
    } else {
        CHECK_ALLOWED(s, zc_get(w->pool, name, len, timeout, &b), ZC_OK, ZC_ERR_TIMEOUT);
    }
    if (s != ZC_OK) {
        CHECK(b == BAD_BUF);
        return true;
    }
    w->gets_ok++;
    CHECK(b != NULL && b != BAD_BUF);
    CHECK(zc_buffer_data(b) == NULL);
    uint64_t gen = 0;
    if (!verify_pool_value(zc_buffer_const_data(b), zc_buffer_size(b), key, &gen)) return false;
    return keep_or_release(w, b, key, gen);
}

static bool op_put(worker *w, unsigned key, const char *name, size_t len) {
    static _Thread_local uint8_t src[MAX_VALUE];
    uint64_t gen = atomic_fetch_add(&next_gen, 1);
    write_value(src, key, gen);
    zc_status s;
    CHECK_ALLOWED(s, zc_put(w->pool, name, len, src, value_size(key, gen)), ZC_OK, ZC_ERR_ALREADY_EXISTS);
    return true;
}

static bool op_get_into(worker *w, unsigned key, const char *name, size_t len) {
    static _Thread_local uint8_t dst[MAX_VALUE];
    size_t got = 424242;
    zc_status s;
    CHECK_ALLOWED(s, zc_get_into(w->pool, name, len, 0, dst, sizeof dst, &got), ZC_OK, ZC_ERR_NOT_FOUND,
                  ZC_ERR_NOT_SEALED);
    if (s != ZC_OK) {
        CHECK(got == 424242);
        return true;
    }
    return verify_value(dst, got, key, NULL);
}

static bool op_get_batch(worker *w) {
    enum { B = 4 };
    char names[B][16];
    const char *keys[B];
    size_t lens[B];
    unsigned ks[B];
    zc_buffer *bufs[B];
    zc_status sts[B];
    for (size_t i = 0; i < B; i++) {
        ks[i] = (unsigned)(rnd(w) % NKEYS);
        lens[i] = (size_t)key_name(ks[i], names[i], sizeof names[i]);
        keys[i] = names[i];
        bufs[i] = BAD_BUF;
        sts[i] = 999;
    }
    zc_status s = zc_get_batch(w->pool, keys, lens, B, 0, bufs, sts);
    zc_status first = ZC_OK;
    for (size_t i = 0; i < B; i++) {
        zc_status si;
        CHECK_ALLOWED(si, sts[i], ZC_OK, ZC_ERR_NOT_FOUND, ZC_ERR_NOT_SEALED);
        if (si != ZC_OK) {
            CHECK(bufs[i] == NULL);
            if (first == ZC_OK) first = si;
            continue;
        }
        CHECK(bufs[i] != NULL && bufs[i] != BAD_BUF);
        if (!verify_pool_value(zc_buffer_const_data(bufs[i]), zc_buffer_size(bufs[i]), ks[i], NULL)) return false;
        zc_release(bufs[i]);
    }
    CHECK_STATUS(s, first);
    return true;
}

static bool worker_run(worker *w) {
    char name[16];
    for (uint64_t op = 0; op < OPS_PER_THREAD; op++) {
        if (atomic_load(&stop_all) || ((op & 63) == 0 && harness_now_ns() > w->deadline_ns)) {
            break;
        }
        w->ops++;
        if (w->pending != NULL && rnd(w) % 4 == 0) {
            if (!seal_pending(w)) return false;
        }
        unsigned key = (unsigned)(rnd(w) % NKEYS);
        size_t len = (size_t)key_name(key, name, sizeof name);
        uint64_t r = rnd(w) % 100;
        zc_status s;
        if (r < 22) {
            if (!op_create(w, key, name, len)) return false;
        } else if (r < 50) {
            if (!op_get(w, key, name, len, 0)) return false;
        } else if (r < 53) {
            if (!op_get(w, key, name, len, 1 + (int64_t)(rnd(w) % 2))) return false;
        } else if (r < 68) {
            CHECK_ALLOWED(s, zc_delete(w->pool, name, len), ZC_OK, ZC_ERR_NOT_FOUND, ZC_ERR_NOT_SEALED);
            if (s == ZC_OK) w->deletes_ok++;
        } else if (r < 72) {
            (void)zc_contains(w->pool, name, len);
        } else if (r < 80) {
            if (!op_put(w, key, name, len)) return false;
        } else if (r < 88) {
            if (!op_get_into(w, key, name, len)) return false;
        } else if (r < 92) {
            if (!op_get_batch(w)) return false;
        } else if (r < 98) {
            if (w->nheld > 0 && !release_held(w, (size_t)(rnd(w) % w->nheld))) return false;
        } else {
            zc_pool_stats st;
            CHECK_OK(zc_pool_get_stats(w->pool, &st));
            CHECK(st.used_bytes % 64 == 0);
            CHECK(st.used_bytes <= st.capacity_bytes);
            CHECK(st.key_count <= NKEYS);
        }
    }
    /* Leave nothing behind but sealed keys. */
    if (w->pending != NULL && !seal_pending(w)) return false;
    while (w->nheld > 0) {
        if (!release_held(w, w->nheld - 1)) return false;
    }
    return true;
}

static void *worker_main(void *arg) {
    worker *w = arg;
    w->ok = worker_run(w);
    if (!w->ok) {
        printf("    (in worker thread %u after %llu ops)\n", w->id, (unsigned long long)w->ops);
        atomic_store(&stop_all, true);
    }
    return NULL;
}

static bool open_pool(size_t size, zc_pool **out) {
    zc_pool_options o;
    zc_pool_options_init(&o);
    o.size = size;
    o.page_mode = ZC_PAGES_SMALL;
    o.prefault = false;
    *out = NULL;
    CHECK_OK(zc_pool_open(&o, out));
    return true;
}

static bool test_random_ops_on_shared_keys_verify_content_and_leak_nothing(void) {
    zc_pool *pool;
    if (!open_pool(64 * MIB, &pool)) return false;
    static worker workers[NTHREADS];
    pthread_t threads[NTHREADS];
    uint64_t deadline = harness_now_ns() + (uint64_t)TIME_LIMIT_MS * 1000000u;
    for (unsigned i = 0; i < NTHREADS; i++) {
        memset(&workers[i], 0, sizeof workers[i]);
        workers[i].pool = pool;
        workers[i].id = i;
        workers[i].rng = mix64(0x1234567ull + i) | 1;
        workers[i].deadline_ns = deadline;
        CHECK(pthread_create(&threads[i], NULL, worker_main, &workers[i]) == 0);
    }
    bool all_ok = true;
    uint64_t ops = 0, gets = 0, creates = 0, deletes = 0;
    for (unsigned i = 0; i < NTHREADS; i++) {
        CHECK(pthread_join(threads[i], NULL) == 0);
        all_ok = all_ok && workers[i].ok;
        ops += workers[i].ops;
        gets += workers[i].gets_ok;
        creates += workers[i].creates_ok;
        deletes += workers[i].deletes_ok;
    }
    CHECK(all_ok);
    printf("    %llu ops: %llu creates, %llu gets, %llu deletes succeeded\n", (unsigned long long)ops,
           (unsigned long long)creates, (unsigned long long)gets, (unsigned long long)deletes);
    /* The workload did real work, with every kind of success. */
    CHECK(ops >= 4000);
    CHECK(creates > 0 && gets > 0 && deletes > 0);

    /* Every key left is sealed and holds a complete value. */
    zc_pool_stats st;
    CHECK_OK(zc_pool_get_stats(pool, &st));
    CHECK(st.object_count == st.key_count);
    char name[16];
    static uint8_t dst[MAX_VALUE];
    for (unsigned k = 0; k < NKEYS; k++) {
        size_t len = (size_t)key_name(k, name, sizeof name);
        size_t got = 0;
        zc_status s;
        CHECK_ALLOWED(s, zc_get_into(pool, name, len, 0, dst, sizeof dst, &got), ZC_OK, ZC_ERR_NOT_FOUND);
        if (s == ZC_OK) {
            if (!verify_value(dst, got, k, NULL)) return false;
        }
        CHECK_ALLOWED(s, zc_delete(pool, name, len), ZC_OK, ZC_ERR_NOT_FOUND);
    }
    CHECK_OK(zc_pool_get_stats(pool, &st));
    CHECK(st.used_bytes == 0);
    CHECK(st.object_count == 0);
    CHECK(st.key_count == 0);
    zc_pool_close(pool);
    return true;
}

/* ---- one seal wakes every waiter ------------------------------------------------------------- */

typedef struct seal_waiter {
    zc_pool *pool;
    pthread_barrier_t *start;
    zc_status status;
    zc_buffer *buf;
    atomic_uint_fast64_t returned_ns; /* 0 until zc_get returned */
} seal_waiter;

static void *seal_waiter_main(void *arg) {
    seal_waiter *w = arg;
    pthread_barrier_wait(w->start);
    w->status = zc_get(w->pool, "wake-all", 8, 20000, &w->buf);
    atomic_store(&w->returned_ns, harness_now_ns());
    return NULL;
}

static bool test_one_seal_wakes_every_waiter(void) {
    zc_pool *pool;
    if (!open_pool(4 * MIB, &pool)) return false;
    pthread_barrier_t start;
    CHECK(pthread_barrier_init(&start, NULL, NTHREADS + 1) == 0);
    seal_waiter waiters[NTHREADS];
    pthread_t threads[NTHREADS];
    for (unsigned i = 0; i < NTHREADS; i++) {
        waiters[i].pool = pool;
        waiters[i].start = &start;
        waiters[i].status = 999;
        waiters[i].buf = BAD_BUF;
        atomic_init(&waiters[i].returned_ns, 0);
        CHECK(pthread_create(&threads[i], NULL, seal_waiter_main, &waiters[i]) == 0);
    }
    pthread_barrier_wait(&start);
    harness_sleep_ms(100); /* let all of them block */

    zc_buffer *w;
    const unsigned key = 7;
    const uint64_t gen = 123456789;
    CHECK_OK(zc_create_buffer(pool, "wake-all", 8, value_size(key, gen), &w));
    uint8_t *data = zc_buffer_data(w);
    CHECK(data != NULL);
    write_value(data, key, gen);
    harness_sleep_ms(50); /* created but not sealed: they must keep waiting */
    for (unsigned i = 0; i < NTHREADS; i++) {
        CHECK(atomic_load(&waiters[i].returned_ns) == 0);
    }
    uint64_t sealed_at = harness_now_ns();
    CHECK_OK(zc_seal(w));
    for (unsigned i = 0; i < NTHREADS; i++) {
        CHECK(pthread_join(threads[i], NULL) == 0);
    }
    CHECK(pthread_barrier_destroy(&start) == 0);

    for (unsigned i = 0; i < NTHREADS; i++) {
        CHECK_STATUS(waiters[i].status, ZC_OK);
        CHECK(waiters[i].buf != NULL && waiters[i].buf != BAD_BUF);
        CHECK(zc_buffer_const_data(waiters[i].buf) == data);
        uint64_t got_gen = 0;
        if (!verify_pool_value(zc_buffer_const_data(waiters[i].buf), zc_buffer_size(waiters[i].buf), key, &got_gen))
            return false;
        CHECK(got_gen == gen);
        uint64_t returned = atomic_load(&waiters[i].returned_ns);
        CHECK(returned >= sealed_at);
        CHECK(returned - sealed_at < (uint64_t)5000 * 1000000u); /* woken, not timed out */
    }
    zc_pool_stats st;
    CHECK_OK(zc_pool_get_stats(pool, &st));
    CHECK(st.object_count == 1 && st.key_count == 1);
    for (unsigned i = 0; i < NTHREADS; i++) {
        zc_release(waiters[i].buf);
    }
    zc_release(w);
    CHECK_OK(zc_delete(pool, "wake-all", 8));
    CHECK_OK(zc_pool_get_stats(pool, &st));
    CHECK(st.object_count == 0 && st.used_bytes == 0 && st.key_count == 0);
    zc_pool_close(pool);
    return true;
}

/* ---- racing creates and deletes of one key ---------------------------------------------------- */

enum { RACE_ROUNDS = 300 };

typedef struct racer {
    zc_pool *pool;
    pthread_barrier_t *barrier;
    zc_status create_status[RACE_ROUNDS];
    zc_status delete_status[RACE_ROUNDS];
    bool ok;
} racer;

static bool racer_run(racer *r) {
    for (int round = 0; round < RACE_ROUNDS; round++) {
        pthread_barrier_wait(r->barrier);
        zc_buffer *b = BAD_BUF;
        zc_status s = zc_create_buffer(r->pool, "race", 4, 64, &b);
        r->create_status[round] = s;
        if (s == ZC_OK) {
            CHECK(b != NULL && b != BAD_BUF);
            memset(zc_buffer_data(b), round & 0xff, 64);
            CHECK_OK(zc_seal(b));
            zc_release(b);
        } else {
            CHECK(b == BAD_BUF);
        }
        pthread_barrier_wait(r->barrier);
        r->delete_status[round] = zc_delete(r->pool, "race", 4);
    }
    return true;
}

static void *racer_main(void *arg) {
    racer *r = arg;
    r->ok = racer_run(r);
    return NULL;
}

static bool test_racing_creates_and_deletes_of_one_key_have_exactly_one_winner(void) {
    zc_pool *pool;
    if (!open_pool(4 * MIB, &pool)) return false;
    pthread_barrier_t barrier;
    CHECK(pthread_barrier_init(&barrier, NULL, NTHREADS) == 0);
    static racer racers[NTHREADS];
    pthread_t threads[NTHREADS];
    for (unsigned i = 0; i < NTHREADS; i++) {
        racers[i].pool = pool;
        racers[i].barrier = &barrier;
        racers[i].ok = false;
        CHECK(pthread_create(&threads[i], NULL, racer_main, &racers[i]) == 0);
    }
    for (unsigned i = 0; i < NTHREADS; i++) {
        CHECK(pthread_join(threads[i], NULL) == 0);
    }
    CHECK(pthread_barrier_destroy(&barrier) == 0);
    for (unsigned i = 0; i < NTHREADS; i++) {
        CHECK(racers[i].ok);
    }
    for (int round = 0; round < RACE_ROUNDS; round++) {
        int created = 0, deleted = 0;
        for (unsigned i = 0; i < NTHREADS; i++) {
            zc_status c = racers[i].create_status[round], d = racers[i].delete_status[round];
            CHECK(c == ZC_OK || c == ZC_ERR_ALREADY_EXISTS);
            CHECK(d == ZC_OK || d == ZC_ERR_NOT_FOUND);
            created += c == ZC_OK;
            deleted += d == ZC_OK;
        }
        CHECK(created == 1);
        CHECK(deleted == 1);
    }
    zc_pool_stats st;
    CHECK_OK(zc_pool_get_stats(pool, &st));
    CHECK(st.object_count == 0 && st.used_bytes == 0 && st.key_count == 0);
    zc_pool_close(pool);
    return true;
}

int main(void) {
    static const harness_test tests[] = {
        TEST(test_one_seal_wakes_every_waiter),
        TEST(test_racing_creates_and_deletes_of_one_key_have_exactly_one_winner),
        TEST(test_random_ops_on_shared_keys_verify_content_and_leak_nothing),
    };
    RUN_TESTS(tests);
}
