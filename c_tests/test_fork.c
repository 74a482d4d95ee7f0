/* A child forked from a process that uses a pool. The pool's memory is advised MADV_DONTFORK, so
 * the child has no mapping of it: every call on the parent's pool and buffers must answer
 * ZC_ERR_POOL_CLOSED (NULL, 0 or false for the accessors) in the child, without touching the
 * missing memory and without waiting on a lock another parent thread held at the fork;
 * releasing and closing the inherited handles must be harmless; the child can open a pool of its
 * own (which its own forked child cannot use either). The parent's pool and objects are unchanged
 * by all this.
 *
 * Children leave with _exit(): LeakSanitizer, run by exit() in a forked child of a multi-threaded
 * process, still sees the parent's other threads and reports false leaks. Valgrind checks the
 * children for leaks all the same. */

#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/wait.h>

#include "harness.h"

enum { VALUE = 8 * 1024, KEPT = 8, CHILD_TIMEOUT_S = 20 };

/* The call answered ZC_ERR_POOL_CLOSED with the message that names the fork. */
#define CHECK_FORKED(call)                                                                       \
    do {                                                                                         \
        CHECK_STATUS(call, ZC_ERR_POOL_CLOSED);                                                  \
        CHECK(strstr(harness_last_error(), "before fork()") != NULL);                            \
    } while (0)

static bool open_small(size_t size, zc_pool **out) {
    zc_pool_options o;
    zc_pool_options_init(&o);
    o.size = size;
    o.page_mode = ZC_PAGES_SMALL;
    o.prefault = false;
    o.rdma = ZC_RDMA_OFF;
    *out = NULL;
    CHECK_OK(zc_pool_open(&o, out));
    CHECK(*out != NULL);
    return true;
}

static bool key_of(char *key, size_t cap, const char *prefix, unsigned i) {
    int n = snprintf(key, cap, "%s-%u", prefix, i);
    CHECK(n > 0 && (size_t)n < cap);
    return true;
}

/* Every call a child might make on its parent's pool and buffers. */
static bool child_calls_on_parents_pool_answer_pool_closed(zc_pool *pool, zc_buffer *held, zc_buffer *pending,
                                                           zc_buffer *parts) {
    static uint8_t data[VALUE];
    zc_buffer *b = BAD_BUF;
    CHECK_FORKED(zc_create_buffer(pool, K("new"), 64, &b));
    CHECK(b == BAD_BUF);
    const size_t sizes[2] = { 64, 128 };
    CHECK_FORKED(zc_create_parts(pool, K("new-parts"), sizes, 2, &b));
    CHECK(b == BAD_BUF);
    CHECK_FORKED(zc_put(pool, K("new"), data, sizeof data));
    CHECK_FORKED(zc_get(pool, K("kept-0"), 0, &b));
    /* Would block forever if it waited: the key is never sealed in this process. */
    CHECK_FORKED(zc_get(pool, K("never"), -1, &b));
    CHECK(b == BAD_BUF);
    zc_view v;
    v.buffer = BAD_BUF;
    CHECK_FORKED(zc_get_view(pool, K("kept-0"), 0, &v));
    CHECK_FORKED(zc_get_view(pool, K("never"), -1, &v));
    CHECK(v.buffer == BAD_BUF);
    size_t n = 12345;
    CHECK_FORKED(zc_get_into(pool, K("kept-0"), 0, data, sizeof data, &n));
    CHECK(n == 12345);
    CHECK_FORKED(zc_delete(pool, K("kept-1")));
    CHECK(!zc_contains(pool, K("kept-1")));

    zc_pool_stats st;
    memset(&st, 0xA5, sizeof st);
    CHECK_FORKED(zc_pool_get_stats(pool, &st));
    CHECK(st.capacity_bytes == 0xA5A5A5A5A5A5A5A5ull);
    void *base = BAD_BUF;
    size_t len = 777;
    CHECK_FORKED(zc_pool_region(pool, &base, &len));
    CHECK(base == BAD_BUF && len == 777);
    CHECK(zc_pool_rdma_count(pool) == 0);
    CHECK(zc_pool_rdma_pd(pool, 0) == NULL);
    int not_a_pd = 0;
    uint32_t index = 99;
    CHECK_FORKED(zc_pool_register_pd(pool, &not_a_pd, &index));
    CHECK(index == 99);

    const char *keys[2] = { "kept-2", "batch" };
    const size_t key_lens[2] = { 6, 5 };
    zc_buffer *bufs[2] = { BAD_BUF, BAD_BUF };
    zc_status statuses[2] = { ZC_OK, ZC_OK };
    CHECK_FORKED(zc_create_batch(pool, keys, key_lens, sizes, 2, bufs, statuses));
    CHECK(bufs[0] == NULL && bufs[1] == NULL);
    CHECK(statuses[0] == ZC_ERR_POOL_CLOSED && statuses[1] == ZC_ERR_POOL_CLOSED);
    CHECK_FORKED(zc_get_batch(pool, keys, key_lens, 2, -1, bufs, statuses));
    CHECK(bufs[0] == NULL && bufs[1] == NULL);
    CHECK(statuses[0] == ZC_ERR_POOL_CLOSED && statuses[1] == ZC_ERR_POOL_CLOSED);

    /* The buffers: no address into the missing memory, no size to read through it. */
    CHECK(zc_buffer_data(pending) == NULL);
    CHECK(zc_buffer_const_data(pending) == NULL);
    CHECK(zc_buffer_const_data(held) == NULL);
    CHECK(zc_buffer_size(held) == 0 && zc_buffer_size(pending) == 0);
    CHECK(zc_buffer_part_count(parts) == 0);
    const uint8_t *part = NULL;
    uint8_t *part_mut = NULL;
    size_t part_len = 555;
    CHECK_FORKED(zc_buffer_part(parts, 0, &part, &part_len));
    CHECK_FORKED(zc_buffer_part_mut(parts, 1, &part_mut, &part_len));
    CHECK(part == NULL && part_mut == NULL && part_len == 555);
    zc_rdma_desc desc;
    memset(&desc, 0x5A, sizeof desc);
    CHECK_FORKED(zc_buffer_rdma_desc(held, 0, &desc));
    CHECK(desc.addr == 0x5A5A5A5A5A5A5A5Aull);
    CHECK_FORKED(zc_seal(pending));
    CHECK_FORKED(zc_seal(parts));
    CHECK_FORKED(zc_abort(pending)); /* not consumed: released below */

    /* What finalizers do at exit: harmless, and the handles are gone. */
    zc_release(held);
    zc_release(pending);
    zc_release(parts);
    zc_pool_close(pool);
    return true;
}

/* The child's own pool works in the child, and not in the child's own child. */
static bool child_pool_works_and_its_forked_child_gets_pool_closed(void) {
    zc_pool *own;
    if (!open_small(1 * MIB, &own)) {
        return false;
    }
    static uint8_t data[VALUE], back[VALUE];
    fill_pattern(data, sizeof data, 42);
    CHECK_OK(zc_put(own, K("child"), data, sizeof data));
    zc_buffer *r = NULL;
    CHECK_OK(zc_get(own, K("child"), 0, &r));
    CHECK(zc_buffer_size(r) == VALUE && has_pattern(zc_buffer_const_data(r), VALUE, 42));
    fflush(stdout);
    pid_t grandchild = fork();
    CHECK(grandchild >= 0);
    if (grandchild == 0) {
        alarm(CHILD_TIMEOUT_S);
        zc_buffer *b = BAD_BUF;
        bool ok = zc_get(own, K("child"), 0, &b) == ZC_ERR_POOL_CLOSED && b == BAD_BUF &&
                  zc_buffer_const_data(r) == NULL;
        zc_release(r);
        zc_pool_close(own);
        _exit(ok ? 0 : 4);
    }
    int status = 0;
    CHECK(waitpid(grandchild, &status, 0) == grandchild);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    size_t n = 0;
    CHECK_OK(zc_get_into(own, K("child"), 0, back, sizeof back, &n));
    CHECK(n == VALUE && memcmp(back, data, VALUE) == 0);
    CHECK(has_pattern(zc_buffer_const_data(r), VALUE, 42));
    zc_release(r);
    zc_pool_close(own);
    return true;
}

/* A thread that keeps the pool's locks busy while the parent forks. Its calls never fail: a
 * failure would give it a last-error message, thread-local memory that the child (where the thread
 * does not exist) could only leak, which valgrind would count against the child. */
typedef struct busy {
    zc_pool *pool;
    atomic_bool stop;
    atomic_ulong ops;
    atomic_ulong failures;
} busy;

static void *busy_main(void *arg) {
    busy *b = arg;
    static uint8_t data[512];
    unsigned i = 0;
    while (!atomic_load(&b->stop)) {
        char key[32];
        snprintf(key, sizeof key, "busy-%u", i++ % 64);
        size_t len = strlen(key);
        zc_buffer *r = NULL;
        zc_pool_stats st;
        bool ok = zc_put(b->pool, key, len, data, sizeof data) == ZC_OK &&
                  zc_get(b->pool, key, len, 0, &r) == ZC_OK;
        zc_release(r);
        ok = ok && zc_delete(b->pool, key, len) == ZC_OK && zc_pool_get_stats(b->pool, &st) == ZC_OK;
        atomic_fetch_add(ok ? &b->ops : &b->failures, 1);
    }
    return NULL;
}

static bool test_a_forked_child_gets_pool_closed_from_its_parents_pool_and_the_parent_is_unaffected(void) {
    zc_pool *pool;
    if (!open_small(4 * MIB, &pool)) {
        return false;
    }
    static uint8_t data[VALUE], back[VALUE];
    char key[32];
    for (unsigned i = 0; i < KEPT; i++) {
        fill_pattern(data, VALUE, i);
        CHECK(key_of(key, sizeof key, "kept", i));
        CHECK_OK(zc_put(pool, key, strlen(key), data, VALUE));
    }
    zc_buffer *held = NULL, *pending = NULL, *parts = NULL;
    CHECK_OK(zc_get(pool, K("kept-0"), 0, &held));
    CHECK_OK(zc_create_buffer(pool, K("pending"), 4 * KIB, &pending));
    fill_pattern(zc_buffer_data(pending), 4 * KIB, 100);
    const size_t sizes[2] = { 100, 200 };
    CHECK_OK(zc_create_parts(pool, K("parts"), sizes, 2, &parts));

    busy b = { .pool = pool };
    atomic_init(&b.stop, false);
    atomic_init(&b.ops, 0);
    atomic_init(&b.failures, 0);
    pthread_t thread;
    CHECK(pthread_create(&thread, NULL, busy_main, &b) == 0);
    while (atomic_load(&b.ops) < 1000) {
        harness_sleep_ms(1);
    }
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        /* A call stuck on a lock the busy thread held at the fork would hang: SIGALRM ends it. */
        alarm(CHILD_TIMEOUT_S);
        bool ok = child_calls_on_parents_pool_answer_pool_closed(pool, held, pending, parts) &&
                  child_pool_works_and_its_forked_child_gets_pool_closed();
        fflush(stdout);
        _exit(ok ? 0 : 3);
    }
    int status = 0;
    pid_t waited = child > 0 ? waitpid(child, &status, 0) : -1;
    atomic_store(&b.stop, true);
    CHECK(pthread_join(thread, NULL) == 0);
    CHECK(child > 0 && waited == child);
    CHECK(atomic_load(&b.failures) == 0);
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        printf("child: %s %d\n", WIFSIGNALED(status) ? "killed by signal" : "exit status",
               WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    }
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);

    /* The parent's handles, objects and counters are as they were. */
    CHECK(zc_buffer_size(held) == VALUE && has_pattern(zc_buffer_const_data(held), VALUE, 0));
    uint8_t *w = zc_buffer_data(pending);
    CHECK(w != NULL && has_pattern(w, 4 * KIB, 100));
    CHECK_OK(zc_seal(pending));
    CHECK(zc_buffer_part_count(parts) == 2);
    CHECK_OK(zc_seal(parts));
    for (unsigned i = 0; i < KEPT; i++) {
        size_t n = 0;
        CHECK(key_of(key, sizeof key, "kept", i));
        CHECK_OK(zc_get_into(pool, key, strlen(key), 0, back, sizeof back, &n));
        CHECK(n == VALUE && has_pattern(back, VALUE, i));
    }
    zc_buffer *r = NULL;
    CHECK_OK(zc_get(pool, K("pending"), 0, &r));
    CHECK(zc_buffer_const_data(r) == w && has_pattern(zc_buffer_const_data(r), 4 * KIB, 100));
    zc_release(r);
    CHECK_OK(zc_put(pool, K("after"), data, VALUE));
    CHECK_OK(zc_delete(pool, K("after")));
    zc_pool_stats st;
    CHECK_OK(zc_pool_get_stats(pool, &st));
    /* kept-*, pending and parts: the busy thread deleted what it put. */
    CHECK(st.key_count == KEPT + 2 && st.object_count == KEPT + 2);
    zc_release(held);
    zc_release(pending);
    zc_release(parts);
    zc_pool_close(pool);
    return true;
}

int main(void) {
    static const harness_test tests[] = {
        TEST(test_a_forked_child_gets_pool_closed_from_its_parents_pool_and_the_parent_is_unaffected),
    };
    RUN_TESTS(tests);
}
