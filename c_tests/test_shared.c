/* Shared pools across processes, through the C API: a pool opened with a name lives in the file
 * /dev/shm/zcopy.<name>, and a second process (made here with fork()) attaches it by name and
 * sees the same objects at its own address. Covered: what an attacher sees, creates racing
 * between processes, a get in one process woken by a seal in another, delete and close while
 * another process holds objects, the file outliving its last process until unlinked, refused
 * names and files, reclaiming a killed process, the process counters, and a forked child's use
 * of its parent's handle.
 *
 * A child never uses its parent's pool handle (except to show that it is refused): it attaches
 * by name and reports through its exit status; the two talk through pipes. The parent waits for a
 * child's message or exit at most CHILD_TIMEOUT_MS, then kills it by pid and fails. Every test
 * names its pools after this process's pid and unlinks them at its end, passed or failed.
 *
 * Children leave with _exit(), as in test_fork.c (LeakSanitizer in a forked child would report
 * the parent's memory); valgrind checks the children for leaks all the same, so they close what
 * they open. */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>

#include "harness.h"

enum {
    POOL_SIZE = 1 << 20,
    VALUE = 8 * 1024,
    RACE_KEYS = 200,
    NAME_CAP = 96,
    PATH_CAP = 128,
    MAX_NAMES = 4,
    /* Generous, because the same program runs under valgrind, many times slower; it only bounds
     * how long a hung child can hold up a failing run. */
    CHILD_TIMEOUT_MS = 20000,
};

/* ---- pool names, cleaned up after every test -------------------------------------------------- */

static char names[MAX_NAMES][NAME_CAP];
static size_t name_count;

/* A pool name unique to this process and test; unlinked by `finish`. */
static const char *new_name(const char *tag) {
    if (name_count == MAX_NAMES) {
        printf("new_name: more than %d pool names in one test\n", MAX_NAMES);
        abort();
    }
    char *name = names[name_count++];
    snprintf(name, NAME_CAP, "zc-ctest-%ld-%s", (long)getpid(), tag);
    return name;
}

static void pool_path(char *out, size_t cap, const char *name) {
    snprintf(out, cap, "/dev/shm/zcopy.%s", name);
}

/* ---- the child and the pipes to it ------------------------------------------------------------ */

/* One side's ends of the two pipes between parent and child. */
typedef struct chan {
    int rd;
    int wr;
} chan;

/* The running test's child, if any: killed by `finish` when a failing test leaves it behind. */
static pid_t child_pid = -1;
static chan to_child = { -1, -1 };

typedef bool (*child_fn)(const char *name, chan c, void *arg);

static bool send_byte(int fd, char c) {
    CHECK(write(fd, &c, 1) == 1);
    return true;
}

/* Reads `n` bytes, waiting at most CHILD_TIMEOUT_MS for each chunk. */
static bool recv_all(int fd, void *buf, size_t n) {
    uint8_t *p = buf;
    size_t got = 0;
    while (got < n) {
        struct pollfd pfd = { .fd = fd, .events = POLLIN };
        int ready = poll(&pfd, 1, CHILD_TIMEOUT_MS);
        if (ready < 0 && errno == EINTR) {
            continue;
        }
        CHECK(ready == 1);
        ssize_t r = read(fd, p + got, n - got);
        CHECK(r > 0); /* 0: the other side closed the pipe (it exited) */
        got += (size_t)r;
    }
    return true;
}

/* Waits for the byte `want` from the other side. */
static bool expect_byte(int fd, char want) {
    char c = 0;
    CHECK(recv_all(fd, &c, 1));
    CHECK(c == want);
    return true;
}

static bool write_all(int fd, const void *buf, size_t n) {
    const uint8_t *p = buf;
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        CHECK(w > 0);
        p += w;
        n -= (size_t)w;
    }
    return true;
}

/* Forks a child that runs `fn(name, its ends of the pipes, arg)` and exits 0 if it returned true.
 * The parent's ends go to `*c`. */
static bool spawn(child_fn fn, const char *name, void *arg, chan *c) {
    int p2c[2], c2p[2];
    CHECK(pipe(p2c) == 0);
    if (pipe(c2p) != 0) {
        close(p2c[0]);
        close(p2c[1]);
        CHECK(false);
    }
    fflush(stdout);
    pid_t pid = fork();
    CHECK(pid >= 0);
    if (pid == 0) {
        close(p2c[1]);
        close(c2p[0]);
        alarm(2 * CHILD_TIMEOUT_MS / 1000); /* a child that lost its parent does not linger */
        bool ok = fn(name, (chan){ .rd = p2c[0], .wr = c2p[1] }, arg);
        fflush(stdout);
        _exit(ok ? 0 : 1);
    }
    close(p2c[0]);
    close(c2p[1]);
    child_pid = pid;
    to_child = (chan){ .rd = c2p[0], .wr = p2c[1] };
    *c = to_child;
    return true;
}

static void close_pipes(void) {
    if (to_child.rd >= 0) {
        close(to_child.rd);
    }
    if (to_child.wr >= 0) {
        close(to_child.wr);
    }
    to_child = (chan){ -1, -1 };
}

/* Waits for the child to end, polling at most CHILD_TIMEOUT_MS; then kills it and fails. */
static bool wait_child(int *status) {
    CHECK(child_pid > 0);
    uint64_t deadline = harness_now_ns() + (uint64_t)CHILD_TIMEOUT_MS * 1000000u;
    for (;;) {
        pid_t r = waitpid(child_pid, status, WNOHANG);
        if (r == child_pid) {
            break;
        }
        CHECK(r == 0);
        if (harness_now_ns() > deadline) {
            printf("child %ld still running after %d ms: killed\n", (long)child_pid, CHILD_TIMEOUT_MS);
            kill(child_pid, SIGKILL);
            waitpid(child_pid, status, 0);
            child_pid = -1;
            close_pipes();
            return false;
        }
        harness_sleep_ms(2);
    }
    child_pid = -1;
    close_pipes();
    return true;
}

/* The child exited with status 0: every check it made passed. */
static bool child_passed(void) {
    int status = 0;
    CHECK(wait_child(&status));
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        printf("child failed: %s %d\n", WIFEXITED(status) ? "exit status" : "signal",
               WIFEXITED(status) ? WEXITSTATUS(status) : WTERMSIG(status));
        return false;
    }
    return true;
}

/* Ends a test: kills a child it left behind and unlinks its pools (whether they exist or not). */
static bool finish(bool ok) {
    if (child_pid > 0) {
        kill(child_pid, SIGKILL);
        waitpid(child_pid, NULL, 0);
        child_pid = -1;
    }
    close_pipes();
    for (size_t i = 0; i < name_count; i++) {
        (void)zc_pool_unlink(names[i]);
    }
    name_count = 0;
    return ok;
}

/* ---- pools and objects ------------------------------------------------------------------------ */

static bool create_pool(const char *name, zc_pool **out) {
    zc_pool_options o;
    zc_pool_options_init(&o);
    o.size = POOL_SIZE;
    o.page_mode = ZC_PAGES_SMALL;
    o.prefault = false;
    o.rdma = ZC_RDMA_OFF;
    o.name = name;
    *out = NULL;
    CHECK_OK(zc_pool_open(&o, out));
    CHECK(*out != NULL);
    return true;
}

static bool attach_pool(const char *name, zc_pool **out) {
    zc_pool_options o;
    zc_pool_options_init(&o);
    o.prefault = false;
    o.rdma = ZC_RDMA_OFF;
    *out = NULL;
    CHECK_OK(zc_pool_attach(name, &o, out));
    CHECK(*out != NULL);
    return true;
}

/* zc_pool_attach with RDMA off, expected to fail with `want` and leave `*out` alone. */
static bool attach_fails(const char *name, zc_status want) {
    zc_pool_options o;
    zc_pool_options_init(&o);
    o.prefault = false;
    o.rdma = ZC_RDMA_OFF;
    zc_pool *p = BAD_POOL;
    CHECK_STATUS(zc_pool_attach(name, &o, &p), want);
    CHECK(p == BAD_POOL);
    return true;
}

static bool stats_of(const zc_pool *pool, zc_pool_stats *st) {
    memset(st, 0xA5, sizeof *st);
    CHECK_OK(zc_pool_get_stats(pool, st));
    return true;
}

/* Stores `key` with VALUE bytes of pattern `seed`. */
static bool put_pattern(zc_pool *pool, const char *key, uint32_t seed) {
    zc_buffer *w = NULL;
    CHECK_OK(zc_create_buffer(pool, key, strlen(key), VALUE, &w));
    fill_pattern(zc_buffer_data(w), VALUE, seed);
    CHECK_OK(zc_seal(w));
    zc_release(w);
    return true;
}

/* `key` is sealed and holds VALUE bytes of pattern `seed`. */
static bool has_value(zc_pool *pool, const char *key, uint32_t seed) {
    zc_buffer *r = NULL;
    CHECK_OK(zc_get(pool, key, strlen(key), 0, &r));
    bool ok = zc_buffer_size(r) == VALUE && has_pattern(zc_buffer_const_data(r), VALUE, seed);
    zc_release(r);
    CHECK(ok);
    return true;
}

static bool inside_region(const zc_pool *pool, const void *p, size_t n) {
    void *base = NULL;
    size_t len = 0;
    CHECK_OK(zc_pool_region(pool, &base, &len));
    uintptr_t a = (uintptr_t)p, b = (uintptr_t)base;
    return a >= b && a + n <= b + len;
}

/* ---- what an attacher sees -------------------------------------------------------------------- */

static bool child_reads_sealed_bytes_inside_its_own_region(const char *name, chan c, void *arg) {
    (void)c;
    (void)arg;
    zc_pool *pool;
    if (!attach_pool(name, &pool)) {
        return false;
    }
    zc_buffer *r = NULL;
    CHECK_OK(zc_get(pool, K("sealed"), 0, &r));
    const uint8_t *p = zc_buffer_const_data(r);
    CHECK(p != NULL && zc_buffer_size(r) == VALUE && has_pattern(p, VALUE, 7));
    CHECK(inside_region(pool, p, VALUE));
    /* zc_get_view answers the same address, in this process's mapping, and the leading bytes. */
    zc_view v;
    CHECK_OK(zc_get_view(pool, K("sealed"), 0, &v));
    CHECK(v.data == p && v.size == VALUE && memcmp(v.head, p, ZC_VIEW_HEAD_BYTES) == 0);
    zc_release(v.buffer);
    zc_release(r);
    zc_pool_close(pool);
    return true;
}

static bool attach_sees_sealed_bytes(const char *name) {
    zc_pool *pool, *again;
    if (!create_pool(name, &pool)) {
        return false;
    }
    zc_buffer *w = NULL;
    CHECK_OK(zc_create_buffer(pool, K("sealed"), VALUE, &w));
    fill_pattern(zc_buffer_data(w), VALUE, 7);
    CHECK_OK(zc_seal(w));

    /* A second attach in this process maps the same file a second time, at another address. */
    if (!attach_pool(name, &again)) {
        return false;
    }
    zc_buffer *r = NULL;
    CHECK_OK(zc_get(again, K("sealed"), 0, &r));
    const uint8_t *mine = zc_buffer_const_data(w), *theirs = zc_buffer_const_data(r);
    CHECK(theirs != mine);
    CHECK(zc_buffer_size(r) == VALUE && has_pattern(theirs, VALUE, 7));
    CHECK(inside_region(again, theirs, VALUE) && !inside_region(again, mine, VALUE));
    CHECK(inside_region(pool, mine, VALUE) && !inside_region(pool, theirs, VALUE));

    chan c;
    CHECK(spawn(child_reads_sealed_bytes_inside_its_own_region, name, NULL, &c));
    CHECK(child_passed());
    zc_release(r);
    zc_release(w);
    zc_pool_close(again);
    zc_pool_close(pool);
    return true;
}

static bool test_an_attached_process_sees_the_creators_sealed_bytes_in_its_own_mapping(void) {
    return finish(attach_sees_sealed_bytes(new_name("sees")));
}

/* ---- creates racing between processes --------------------------------------------------------- */

static bool race_key(char *key, size_t cap, unsigned i) {
    int n = snprintf(key, cap, "race-%u", i);
    CHECK(n > 0 && (size_t)n < cap);
    return true;
}

/* Both sides run this: per key, a pipe barrier (send, then wait for the other's byte), then
 * zc_create_buffer at once. Buffers won stay unsealed until both sides tried every key (so the
 * loser always meets a created key), then are filled with `mark` and sealed. */
static bool race_creates(zc_pool *pool, chan c, char mark, zc_status *statuses) {
    static zc_buffer *won[RACE_KEYS];
    char key[32];
    for (unsigned i = 0; i < RACE_KEYS; i++) {
        CHECK(race_key(key, sizeof key, i));
        CHECK(send_byte(c.wr, 'g'));
        CHECK(expect_byte(c.rd, 'g'));
        won[i] = NULL;
        statuses[i] = zc_create_buffer(pool, key, strlen(key), 64, &won[i]);
    }
    CHECK(send_byte(c.wr, 'd'));
    CHECK(expect_byte(c.rd, 'd'));
    for (unsigned i = 0; i < RACE_KEYS; i++) {
        if (won[i] != NULL) {
            memset(zc_buffer_data(won[i]), mark, 64);
            CHECK_OK(zc_seal(won[i]));
            zc_release(won[i]);
            won[i] = NULL;
        }
    }
    return true;
}

static bool child_races_creates(const char *name, chan c, void *arg) {
    (void)arg;
    static zc_status statuses[RACE_KEYS];
    zc_pool *pool;
    if (!attach_pool(name, &pool)) {
        return false;
    }
    CHECK(race_creates(pool, c, 'c', statuses));
    CHECK(write_all(c.wr, statuses, sizeof statuses));
    zc_pool_close(pool);
    return true;
}

static bool same_key_created_at_once(const char *name) {
    static zc_status mine[RACE_KEYS], theirs[RACE_KEYS];
    zc_pool *pool;
    if (!create_pool(name, &pool)) {
        return false;
    }
    chan c;
    CHECK(spawn(child_races_creates, name, NULL, &c));
    CHECK(race_creates(pool, c, 'p', mine));
    CHECK(recv_all(c.rd, theirs, sizeof theirs));
    CHECK(child_passed());

    unsigned parent_won = 0, child_won = 0;
    char key[32];
    for (unsigned i = 0; i < RACE_KEYS; i++) {
        bool parent_wins = mine[i] == ZC_OK && theirs[i] == ZC_ERR_ALREADY_EXISTS;
        bool child_wins = mine[i] == ZC_ERR_ALREADY_EXISTS && theirs[i] == ZC_OK;
        if (!parent_wins && !child_wins) {
            printf("key %u: parent answered %s, child %s\n", i, harness_status_name(mine[i]),
                   harness_status_name(theirs[i]));
        }
        CHECK(parent_wins || child_wins);
        parent_won += parent_wins;
        child_won += child_wins;
        /* The winner's bytes are what the key holds. */
        CHECK(race_key(key, sizeof key, i));
        zc_buffer *r = NULL;
        CHECK_OK(zc_get(pool, key, strlen(key), 0, &r));
        bool marked = zc_buffer_size(r) == 64 && zc_buffer_const_data(r)[63] == (parent_wins ? 'p' : 'c');
        zc_release(r);
        CHECK(marked);
    }
    printf("    %u keys: the parent created %u, the child %u\n", RACE_KEYS, parent_won, child_won);
    zc_pool_stats st;
    CHECK(stats_of(pool, &st));
    CHECK(st.key_count == RACE_KEYS && st.object_count == RACE_KEYS);
    CHECK_OK(zc_pool_check(pool));
    zc_pool_close(pool);
    return true;
}

static bool test_two_processes_creating_the_same_key_at_once_exactly_one_wins(void) {
    return finish(same_key_created_at_once(new_name("race")));
}

/* ---- a get woken by a seal in another process ------------------------------------------------- */

static bool child_waits_for_a_seal(const char *name, chan c, void *arg) {
    (void)arg;
    zc_pool *pool;
    if (!attach_pool(name, &pool)) {
        return false;
    }
    zc_buffer *r = BAD_BUF;
    CHECK_STATUS(zc_get(pool, K("late"), 0, &r), ZC_ERR_NOT_SEALED);
    CHECK(send_byte(c.wr, 'w'));
    r = NULL;
    CHECK_OK(zc_get(pool, K("late"), 5000, &r));
    CHECK(zc_buffer_size(r) == VALUE && has_pattern(zc_buffer_const_data(r), VALUE, 3));
    zc_release(r);
    zc_pool_close(pool);
    return true;
}

static bool get_woken_by_seal(const char *name) {
    zc_pool *pool;
    if (!create_pool(name, &pool)) {
        return false;
    }
    zc_buffer *w = NULL;
    CHECK_OK(zc_create_buffer(pool, K("late"), VALUE, &w));
    fill_pattern(zc_buffer_data(w), VALUE, 3);
    chan c;
    CHECK(spawn(child_waits_for_a_seal, name, NULL, &c));
    CHECK(expect_byte(c.rd, 'w'));
    /* Gives the child time to block in zc_get; it answers the same whether it did or not. */
    harness_sleep_ms(50);
    CHECK_OK(zc_seal(w));
    zc_release(w);
    CHECK(child_passed());
    zc_pool_close(pool);
    return true;
}

static bool test_a_get_waiting_in_one_process_is_woken_by_a_seal_in_another(void) {
    return finish(get_woken_by_seal(new_name("wake")));
}

/* ---- batches and parts on an attached pool ----------------------------------------------------- */

static bool child_creates_a_batch_and_parts(const char *name, chan c, void *arg) {
    (void)arg;
    zc_pool *pool;
    if (!attach_pool(name, &pool)) {
        return false;
    }
    CHECK(expect_byte(c.rd, 'g'));
    const char *keys[3] = { "b0", "b1", "b2" };
    size_t lens[3] = { 2, 2, 2 }, sizes[3] = { 10, VALUE, 0 };
    zc_buffer *bufs[3] = { NULL, NULL, NULL };
    zc_status st[3] = { 99, 99, 99 };
    CHECK_OK(zc_create_batch(pool, keys, lens, sizes, 3, bufs, st));
    for (size_t i = 0; i < 3; i++) {
        CHECK(st[i] == ZC_OK && bufs[i] != NULL);
        fill_pattern(zc_buffer_data(bufs[i]), sizes[i], (uint32_t)(20 + i));
        CHECK_OK(zc_seal(bufs[i]));
        zc_release(bufs[i]);
    }
    size_t part_sizes[2] = { 5, 300 };
    zc_buffer *p = NULL;
    CHECK_OK(zc_create_parts(pool, K("parts"), part_sizes, 2, &p));
    for (size_t i = 0; i < 2; i++) {
        uint8_t *data;
        size_t len;
        CHECK_OK(zc_buffer_part_mut(p, i, &data, &len));
        CHECK(len == part_sizes[i]);
        fill_pattern(data, len, (uint32_t)(30 + i));
    }
    CHECK_OK(zc_seal(p));
    zc_release(p);
    zc_pool_close(pool);
    return true;
}

static bool batch_and_parts_across_processes(const char *name) {
    zc_pool *pool;
    if (!create_pool(name, &pool)) {
        return false;
    }
    chan c;
    CHECK(spawn(child_creates_a_batch_and_parts, name, NULL, &c));
    CHECK(send_byte(c.wr, 'g'));
    /* Waits in this process for all three keys the child creates and seals. */
    const char *keys[3] = { "b0", "b1", "b2" };
    size_t lens[3] = { 2, 2, 2 }, sizes[3] = { 10, VALUE, 0 };
    zc_buffer *bufs[3] = { NULL, NULL, NULL };
    zc_status st[3] = { 99, 99, 99 };
    CHECK_OK(zc_get_batch(pool, keys, lens, 3, 10000, bufs, st));
    for (size_t i = 0; i < 3; i++) {
        CHECK(st[i] == ZC_OK && zc_buffer_size(bufs[i]) == sizes[i]);
        CHECK(has_pattern(zc_buffer_const_data(bufs[i]), sizes[i], (uint32_t)(20 + i)));
        zc_release(bufs[i]);
    }
    zc_buffer *p = NULL;
    CHECK_OK(zc_get(pool, K("parts"), 10000, &p));
    CHECK(zc_buffer_part_count(p) == 2);
    for (size_t i = 0; i < 2; i++) {
        const uint8_t *data;
        size_t len;
        CHECK_OK(zc_buffer_part(p, i, &data, &len));
        CHECK(has_pattern(data, len, (uint32_t)(30 + i)));
    }
    zc_release(p);
    CHECK(child_passed());
    CHECK_OK(zc_pool_check(pool));
    zc_pool_close(pool);
    return true;
}

static bool test_batches_and_parts_made_in_one_process_are_got_in_another(void) {
    return finish(batch_and_parts_across_processes(new_name("batch")));
}

/* ---- delete while another process holds the object -------------------------------------------- */

static bool child_holds_through_a_delete(const char *name, chan c, void *arg) {
    (void)arg;
    zc_pool *pool;
    if (!attach_pool(name, &pool)) {
        return false;
    }
    zc_buffer *r = NULL;
    CHECK_OK(zc_get(pool, K("k"), 0, &r));
    CHECK(send_byte(c.wr, 'h'));
    CHECK(expect_byte(c.rd, 'd'));
    /* Deleted and created again with other bytes in the parent: this reference is unchanged. */
    CHECK(zc_buffer_size(r) == VALUE && has_pattern(zc_buffer_const_data(r), VALUE, 4));
    CHECK(has_value(pool, "k", 5));
    zc_release(r);
    zc_pool_stats st;
    CHECK(stats_of(pool, &st));
    CHECK(st.object_count == 1 && st.key_count == 1);
    CHECK(send_byte(c.wr, 'r'));
    zc_pool_close(pool);
    return true;
}

static bool delete_while_held(const char *name) {
    zc_pool *pool;
    if (!create_pool(name, &pool)) {
        return false;
    }
    CHECK(put_pattern(pool, "k", 4));
    zc_pool_stats one;
    CHECK(stats_of(pool, &one));
    chan c;
    CHECK(spawn(child_holds_through_a_delete, name, NULL, &c));
    CHECK(expect_byte(c.rd, 'h'));
    CHECK_OK(zc_delete(pool, K("k")));
    zc_buffer *r = BAD_BUF;
    CHECK_STATUS(zc_get(pool, K("k"), 0, &r), ZC_ERR_NOT_FOUND);
    zc_pool_stats st;
    CHECK(stats_of(pool, &st));
    CHECK(st.object_count == 1 && st.key_count == 0); /* the child still holds it */
    CHECK(put_pattern(pool, "k", 5));
    CHECK(stats_of(pool, &st));
    CHECK(st.object_count == 2 && st.key_count == 1);
    CHECK(send_byte(c.wr, 'd'));
    CHECK(expect_byte(c.rd, 'r'));
    CHECK(stats_of(pool, &st));
    CHECK(st.object_count == 1 && st.key_count == 1 && st.used_bytes == one.used_bytes);
    CHECK(child_passed());
    CHECK_OK(zc_pool_check(pool));
    zc_pool_close(pool);
    return true;
}

static bool test_a_delete_in_one_process_leaves_the_bytes_another_holds_unchanged(void) {
    return finish(delete_while_held(new_name("delete")));
}

/* ---- close while another process holds objects ------------------------------------------------ */

static const char *const KEYS[4] = { "k0", "k1", "k2", "k3" };

static bool child_reads_after_the_creator_closed(const char *name, chan c, void *arg) {
    (void)arg;
    zc_pool *pool;
    if (!attach_pool(name, &pool)) {
        return false;
    }
    zc_buffer *held[2] = { NULL, NULL };
    CHECK_OK(zc_get(pool, K("k0"), 0, &held[0]));
    CHECK_OK(zc_get(pool, K("k1"), 0, &held[1]));
    CHECK(send_byte(c.wr, 'h'));
    CHECK(expect_byte(c.rd, 'c'));
    for (unsigned i = 0; i < 2; i++) {
        CHECK(zc_buffer_size(held[i]) == VALUE && has_pattern(zc_buffer_const_data(held[i]), VALUE, 10 + i));
    }
    CHECK(has_value(pool, "k2", 12) && has_value(pool, "k3", 13));
    zc_pool_stats st;
    CHECK(stats_of(pool, &st));
    CHECK(st.processes_attached == 1 && st.object_count == 4);
    zc_release(held[0]);
    zc_release(held[1]);
    zc_pool_close(pool);
    return true;
}

static bool close_while_held(const char *name) {
    zc_pool *pool;
    if (!create_pool(name, &pool)) {
        return false;
    }
    for (unsigned i = 0; i < 4; i++) {
        CHECK(put_pattern(pool, KEYS[i], 10 + i));
    }
    chan c;
    CHECK(spawn(child_reads_after_the_creator_closed, name, NULL, &c));
    CHECK(expect_byte(c.rd, 'h'));
    zc_pool_close(pool);
    CHECK(send_byte(c.wr, 'c'));
    CHECK(child_passed());
    /* Nobody is attached now; a new attach finds every object. */
    if (!attach_pool(name, &pool)) {
        return false;
    }
    for (unsigned i = 0; i < 4; i++) {
        CHECK(has_value(pool, KEYS[i], 10 + i));
    }
    zc_pool_stats st;
    CHECK(stats_of(pool, &st));
    CHECK(st.object_count == 4 && st.key_count == 4 && st.processes_attached == 1);
    CHECK_OK(zc_pool_check(pool));
    zc_pool_close(pool);
    return true;
}

static bool test_objects_stay_readable_after_their_creator_closed(void) {
    return finish(close_while_held(new_name("close")));
}

/* ---- the file outlives its last process until unlinked ---------------------------------------- */

static bool child_closes_last(const char *name, chan c, void *arg) {
    (void)arg;
    zc_pool *pool;
    if (!attach_pool(name, &pool)) {
        return false;
    }
    CHECK(put_pattern(pool, "from-child", 21));
    CHECK(send_byte(c.wr, 'a'));
    CHECK(expect_byte(c.rd, 'c'));
    zc_pool_stats st;
    CHECK(stats_of(pool, &st));
    CHECK(st.processes_attached == 1);
    zc_pool_close(pool);
    return true;
}

static bool file_outlives_last_close(const char *name) {
    char path[PATH_CAP];
    pool_path(path, sizeof path, name);
    zc_pool *pool;
    if (!create_pool(name, &pool)) {
        return false;
    }
    CHECK(put_pattern(pool, "from-creator", 20));
    chan c;
    CHECK(spawn(child_closes_last, name, NULL, &c));
    CHECK(expect_byte(c.rd, 'a'));
    zc_pool_close(pool);
    CHECK(send_byte(c.wr, 'c'));
    CHECK(child_passed()); /* it closed last */

    struct stat sb;
    CHECK(stat(path, &sb) == 0 && S_ISREG(sb.st_mode) && (sb.st_mode & 07777) == 0600);
    if (!attach_pool(name, &pool)) {
        return false;
    }
    CHECK(has_value(pool, "from-creator", 20) && has_value(pool, "from-child", 21));
    zc_pool_stats st;
    CHECK(stats_of(pool, &st));
    CHECK(st.key_count == 2 && st.processes_attached == 1);
    zc_pool_close(pool);

    CHECK_OK(zc_pool_unlink(name));
    CHECK(stat(path, &sb) != 0 && errno == ENOENT);
    CHECK(attach_fails(name, ZC_ERR_SYSTEM));
    CHECK_STATUS(zc_pool_unlink(name), ZC_ERR_SYSTEM);
    return true;
}

static bool test_the_pool_file_outlives_its_last_process_until_unlinked(void) {
    return finish(file_outlives_last_close(new_name("last")));
}

/* ---- refused names and files ------------------------------------------------------------------ */

static bool refused_names_and_files(void) {
    /* No such pool. */
    CHECK(attach_fails(new_name("missing"), ZC_ERR_SYSTEM));

    /* Names that are no pool name. */
    char long_name[201];
    memset(long_name, 'x', 200);
    long_name[200] = '\0';
    const char *bad[] = { "a/b", "..", "", long_name };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        CHECK(attach_fails(bad[i], ZC_ERR_INVALID_ARGUMENT));
    }
    CHECK(attach_fails(NULL, ZC_ERR_INVALID_ARGUMENT));

    /* A file of the right name and mode that is no pool: garbage, then empty. */
    char path[PATH_CAP];
    const char *garbage = new_name("garbage");
    pool_path(path, sizeof path, garbage);
    int fd = open(path, O_CREAT | O_EXCL | O_WRONLY | O_CLOEXEC, 0600);
    CHECK(fd >= 0);
    static uint8_t junk[64 * 1024];
    fill_pattern(junk, sizeof junk, 99);
    bool written = fchmod(fd, 0600) == 0 && write_all(fd, junk, sizeof junk);
    close(fd);
    CHECK(written);
    CHECK(attach_fails(garbage, ZC_ERR_INVALID_ARGUMENT));
    CHECK(truncate(path, 0) == 0);
    CHECK(attach_fails(garbage, ZC_ERR_INVALID_ARGUMENT));

    /* A real pool file, truncated: the data cut off, then the header too, then the header lost
     * to zeros. */
    const char *cut = new_name("truncated");
    pool_path(path, sizeof path, cut);
    zc_pool *pool;
    if (!create_pool(cut, &pool)) {
        return false;
    }
    CHECK(put_pattern(pool, "k", 1));
    zc_pool_close(pool);
    struct stat sb;
    CHECK(stat(path, &sb) == 0 && sb.st_size > 200);
    off_t half = sb.st_size / 2;
    CHECK(truncate(path, half) == 0);
    CHECK(attach_fails(cut, ZC_ERR_INVALID_ARGUMENT));
    CHECK(truncate(path, 100) == 0);
    CHECK(attach_fails(cut, ZC_ERR_INVALID_ARGUMENT));
    CHECK(truncate(path, half) == 0);
    CHECK(attach_fails(cut, ZC_ERR_INVALID_ARGUMENT));

    /* A pool file of another user. */
    if (geteuid() != 0) {
        printf("    skipped: a pool file of another user needs root (chown)\n");
        return true;
    }
    const char *other = new_name("owner");
    pool_path(path, sizeof path, other);
    if (!create_pool(other, &pool)) {
        return false;
    }
    zc_pool_close(pool);
    CHECK(chown(path, 65534, 65534) == 0);
    CHECK(attach_fails(other, ZC_ERR_SYSTEM));
    CHECK(strstr(harness_last_error(), "65534") != NULL);
    return true;
}

static bool test_attach_refuses_missing_pools_bad_names_and_files_that_are_no_pool(void) {
    return finish(refused_names_and_files());
}

static bool create_existing(const char *name) {
    zc_pool *pool;
    if (!create_pool(name, &pool)) {
        return false;
    }
    zc_pool_options o;
    zc_pool_options_init(&o);
    o.size = POOL_SIZE;
    o.prefault = false;
    o.rdma = ZC_RDMA_OFF;
    o.name = name;
    zc_pool *again = BAD_POOL;
    CHECK_STATUS(zc_pool_open(&o, &again), ZC_ERR_SYSTEM);
    CHECK(again == BAD_POOL);
    CHECK(strstr(harness_last_error(), name) != NULL);
    /* The pool that was there is untouched. */
    CHECK(put_pattern(pool, "k", 6) && has_value(pool, "k", 6));
    zc_pool_close(pool);
    return true;
}

static bool test_creating_a_name_that_exists_fails_and_names_it(void) {
    return finish(create_existing(new_name("exists")));
}

/* ---- a killed process is reclaimed ------------------------------------------------------------ */

/* Attaches, takes a reference on "mine" and creates "unsealed" without sealing it: what a child
 * holds when the parent kills it. */
static bool attach_holding(const char *name, zc_pool **pool, zc_buffer **r, zc_buffer **w) {
    if (!attach_pool(name, pool)) {
        return false;
    }
    CHECK_OK(zc_get(*pool, K("mine"), 0, r));
    CHECK_OK(zc_create_buffer(*pool, K("unsealed"), 16 * KIB, w));
    fill_pattern(zc_buffer_data(*w), 16 * KIB, 8);
    return true;
}

static bool child_holds_and_is_killed(const char *name, chan c, void *arg) {
    (void)arg;
    zc_pool *pool;
    zc_buffer *r = NULL, *w = NULL;
    if (!attach_holding(name, &pool, &r, &w)) {
        return false;
    }
    CHECK(send_byte(c.wr, 'h'));
    /* The parent kills this process here; the byte never comes. */
    (void)expect_byte(c.rd, 'x');
    zc_release(w);
    zc_release(r);
    zc_pool_close(pool);
    return false;
}

static bool killed_process_reclaimed(const char *name) {
    zc_pool *pool;
    if (!create_pool(name, &pool)) {
        return false;
    }
    CHECK(put_pattern(pool, "mine", 9));
    zc_pool_stats own, st;
    CHECK(stats_of(pool, &own));
    CHECK(own.processes_attached == 1 && own.processes_reclaimed == 0);

    chan c;
    CHECK(spawn(child_holds_and_is_killed, name, NULL, &c));
    CHECK(expect_byte(c.rd, 'h'));
    CHECK(stats_of(pool, &st));
    CHECK(st.processes_attached == 2 && st.object_count == own.object_count + 1);
    zc_buffer *w = BAD_BUF;
    CHECK_STATUS(zc_create_buffer(pool, K("unsealed"), 64, &w), ZC_ERR_ALREADY_EXISTS);
    CHECK(w == BAD_BUF);

    CHECK(kill(child_pid, SIGKILL) == 0);
    int status = 0;
    CHECK(wait_child(&status));
    CHECK(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);

    uint64_t reclaimed = 99;
    CHECK_OK(zc_pool_reclaim(pool, &reclaimed));
    CHECK(reclaimed == 1);
    CHECK(stats_of(pool, &st));
    CHECK(st.processes_reclaimed == 1 && st.processes_attached == 1);
    CHECK(st.object_count == own.object_count && st.used_bytes == own.used_bytes);
    CHECK(st.key_count == own.key_count);
    CHECK_OK(zc_pool_check(pool));

    /* The unsealed key is free again, and the dead child's reference is gone: deleting "mine"
     * frees it at once. */
    w = NULL;
    CHECK_OK(zc_create_buffer(pool, K("unsealed"), 64, &w));
    CHECK_OK(zc_seal(w));
    zc_release(w);
    CHECK_OK(zc_delete(pool, K("mine")));
    CHECK(stats_of(pool, &st));
    CHECK(st.object_count == 1 && st.key_count == 1);
    CHECK_OK(zc_pool_reclaim(pool, &reclaimed));
    CHECK(reclaimed == 0);
    CHECK_OK(zc_pool_check(pool));
    zc_pool_close(pool);
    return true;
}

static bool test_a_killed_process_is_reclaimed_its_creates_aborted_and_references_dropped(void) {
    return finish(killed_process_reclaimed(new_name("killed")));
}

/* A create of a key whose creator died unsealed reclaims the dead creator and succeeds, with no
 * explicit reclaim first. */
static bool create_over_a_dead_creators_key(const char *name) {
    zc_pool *pool;
    if (!create_pool(name, &pool)) {
        return false;
    }
    CHECK(put_pattern(pool, "mine", 9));
    chan c;
    CHECK(spawn(child_holds_and_is_killed, name, NULL, &c));
    CHECK(expect_byte(c.rd, 'h'));
    CHECK(kill(child_pid, SIGKILL) == 0);
    int status = 0;
    CHECK(wait_child(&status));
    zc_buffer *w = NULL;
    CHECK_OK(zc_create_buffer(pool, K("unsealed"), 64, &w));
    CHECK_OK(zc_seal(w));
    zc_release(w);
    zc_pool_stats st;
    CHECK(stats_of(pool, &st));
    CHECK(st.processes_reclaimed == 1 && st.processes_attached == 1);
    /* A key that exists for good is still refused. */
    w = BAD_BUF;
    CHECK_STATUS(zc_create_buffer(pool, K("mine"), 64, &w), ZC_ERR_ALREADY_EXISTS);
    CHECK(w == BAD_BUF);
    CHECK_OK(zc_pool_check(pool));
    zc_pool_close(pool);
    return true;
}

static bool test_creating_the_key_of_a_creator_that_died_unsealed_reclaims_it_and_succeeds(void) {
    return finish(create_over_a_dead_creators_key(new_name("deadkey")));
}

/* ---- a killed process is reclaimed while a child it forked lives on ---------------------------- */

/* Attaches, holds a reference and an unsealed create, forks a grandchild that only sleeps (it
 * shares nothing of the pool: the library's fork handler dropped its copy of the pool file's
 * descriptor), sends the grandchild's pid, then waits to be killed. */
static bool child_forks_then_is_killed(const char *name, chan c, void *arg) {
    (void)arg;
    zc_pool *pool;
    zc_buffer *r = NULL, *w = NULL;
    if (!attach_holding(name, &pool, &r, &w)) {
        return false;
    }
    /* The grandchild says it runs (so the fork handlers ran in it) before this process reports. */
    int ready[2];
    CHECK(pipe(ready) == 0);
    pid_t grandchild = fork();
    CHECK(grandchild >= 0);
    if (grandchild == 0) {
        alarm(2 * CHILD_TIMEOUT_MS / 1000);
        (void)send_byte(ready[1], 'g');
        for (;;) {
            pause();
        }
    }
    close(ready[1]);
    bool started = expect_byte(ready[0], 'g');
    close(ready[0]);
    CHECK(started);
    CHECK(write_all(c.wr, &grandchild, sizeof grandchild));
    CHECK(send_byte(c.wr, 'h'));
    (void)expect_byte(c.rd, 'x'); /* killed here */
    zc_release(w);
    zc_release(r);
    zc_pool_close(pool);
    return false;
}

static bool killed_parent_of_a_live_child_reclaimed(const char *name) {
    zc_pool *pool;
    if (!create_pool(name, &pool)) {
        return false;
    }
    CHECK(put_pattern(pool, "mine", 9));
    zc_pool_stats own, st;
    CHECK(stats_of(pool, &own));

    chan c;
    CHECK(spawn(child_forks_then_is_killed, name, NULL, &c));
    pid_t grandchild = -1;
    CHECK(recv_all(c.rd, &grandchild, sizeof grandchild));
    CHECK(grandchild > 0);
    bool ok = expect_byte(c.rd, 'h');
    if (ok) {
        ok = kill(child_pid, SIGKILL) == 0;
    }
    int status = 0;
    ok = ok && wait_child(&status) && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    uint64_t reclaimed = 99;
    zc_buffer *w = NULL;
    bool reclaimed_ok = false;
    if (ok && kill(grandchild, 0) == 0) { /* the grandchild is still alive */
        reclaimed_ok = zc_pool_reclaim(pool, &reclaimed) == ZC_OK && reclaimed == 1 && stats_of(pool, &st) &&
                       st.processes_attached == 1 && st.processes_reclaimed == 1 &&
                       st.object_count == own.object_count && st.used_bytes == own.used_bytes &&
                       zc_create_buffer(pool, K("unsealed"), 64, &w) == ZC_OK;
        if (!reclaimed_ok) {
            printf("reclaimed %llu, attached %llu, objects %llu (want 1, 1, %llu): %s\n",
                   (unsigned long long)reclaimed, (unsigned long long)st.processes_attached,
                   (unsigned long long)st.object_count, (unsigned long long)own.object_count,
                   harness_last_error());
        }
    }
    kill(grandchild, SIGKILL); /* not our child: the init process reaps it */
    CHECK(ok && reclaimed_ok);
    CHECK_OK(zc_seal(w));
    zc_release(w);
    CHECK_OK(zc_pool_check(pool));
    zc_pool_close(pool);
    return true;
}

static bool test_a_killed_process_is_reclaimed_while_a_child_it_forked_lives_on(void) {
    return finish(killed_parent_of_a_live_child_reclaimed(new_name("forker")));
}

/* ---- processes_attached ----------------------------------------------------------------------- */

static bool child_attaches_then_closes(const char *name, chan c, void *arg) {
    (void)arg;
    zc_pool *pool;
    if (!attach_pool(name, &pool)) {
        return false;
    }
    CHECK(send_byte(c.wr, 'a'));
    CHECK(expect_byte(c.rd, 'n'));
    zc_pool_close(pool);
    CHECK(send_byte(c.wr, 'c'));
    CHECK(expect_byte(c.rd, 'q'));
    return true;
}

static bool processes_attached_counts(const char *name) {
    zc_pool *pool;
    if (!create_pool(name, &pool)) {
        return false;
    }
    zc_pool_stats st;
    CHECK(stats_of(pool, &st));
    CHECK(st.processes_attached == 1);
    chan c;
    CHECK(spawn(child_attaches_then_closes, name, NULL, &c));
    CHECK(expect_byte(c.rd, 'a'));
    CHECK(stats_of(pool, &st));
    CHECK(st.processes_attached == 2);
    CHECK(send_byte(c.wr, 'n'));
    CHECK(expect_byte(c.rd, 'c'));
    /* Closed, still alive: its slot is free, not waiting to be reclaimed. */
    CHECK(stats_of(pool, &st));
    CHECK(st.processes_attached == 1 && st.processes_reclaimed == 0);
    CHECK(send_byte(c.wr, 'q'));
    CHECK(child_passed());
    uint64_t reclaimed = 99;
    CHECK_OK(zc_pool_reclaim(pool, &reclaimed));
    CHECK(reclaimed == 0);
    zc_pool_close(pool);
    return true;
}

static bool test_processes_attached_counts_the_child_while_it_is_attached(void) {
    return finish(processes_attached_counts(new_name("count")));
}

/* ---- a forked child and its parent's handle --------------------------------------------------- */

static bool child_refused_parents_handle_then_attaches(const char *name, chan c, void *arg) {
    (void)c;
    zc_pool *parents = arg;
    zc_buffer *b = BAD_BUF;
    CHECK_STATUS(zc_get(parents, K("k"), 0, &b), ZC_ERR_POOL_CLOSED);
    CHECK(strstr(harness_last_error(), "before fork()") != NULL);
    CHECK(b == BAD_BUF);
    CHECK_STATUS(zc_create_buffer(parents, K("child"), 64, &b), ZC_ERR_POOL_CLOSED);
    CHECK(b == BAD_BUF);
    zc_pool_stats st;
    CHECK_STATUS(zc_pool_get_stats(parents, &st), ZC_ERR_POOL_CLOSED);
    CHECK(!zc_contains(parents, K("k")));
    zc_pool_close(parents); /* frees the handle only */

    zc_pool *own;
    if (!attach_pool(name, &own)) {
        return false;
    }
    CHECK(has_value(own, "k", 30));
    CHECK(put_pattern(own, "from-child", 31));
    CHECK(stats_of(own, &st));
    CHECK(st.processes_attached == 2);
    zc_pool_close(own);
    return true;
}

static bool forked_child_and_parents_handle(const char *name) {
    zc_pool *pool;
    if (!create_pool(name, &pool)) {
        return false;
    }
    CHECK(put_pattern(pool, "k", 30));
    chan c;
    CHECK(spawn(child_refused_parents_handle_then_attaches, name, pool, &c));
    CHECK(child_passed());
    /* The child's close of the inherited handle left this process attached. */
    CHECK(has_value(pool, "k", 30) && has_value(pool, "from-child", 31));
    zc_pool_stats st;
    CHECK(stats_of(pool, &st));
    CHECK(st.processes_attached == 1 && st.processes_reclaimed == 0 && st.key_count == 2);
    CHECK_OK(zc_pool_check(pool));
    zc_pool_close(pool);
    return true;
}

static bool test_a_forked_child_gets_pool_closed_from_its_parents_handle_but_can_attach(void) {
    return finish(forked_child_and_parents_handle(new_name("fork")));
}

int main(void) {
    /* A child that dies early closes its pipe ends; a write to them must fail, not kill. */
    signal(SIGPIPE, SIG_IGN);
    static const harness_test tests[] = {
        TEST(test_an_attached_process_sees_the_creators_sealed_bytes_in_its_own_mapping),
        TEST(test_two_processes_creating_the_same_key_at_once_exactly_one_wins),
        TEST(test_a_get_waiting_in_one_process_is_woken_by_a_seal_in_another),
        TEST(test_batches_and_parts_made_in_one_process_are_got_in_another),
        TEST(test_a_delete_in_one_process_leaves_the_bytes_another_holds_unchanged),
        TEST(test_objects_stay_readable_after_their_creator_closed),
        TEST(test_the_pool_file_outlives_its_last_process_until_unlinked),
        TEST(test_attach_refuses_missing_pools_bad_names_and_files_that_are_no_pool),
        TEST(test_creating_a_name_that_exists_fails_and_names_it),
        TEST(test_a_killed_process_is_reclaimed_its_creates_aborted_and_references_dropped),
        TEST(test_a_killed_process_is_reclaimed_while_a_child_it_forked_lives_on),
        TEST(test_creating_the_key_of_a_creator_that_died_unsealed_reclaims_it_and_succeeds),
        TEST(test_processes_attached_counts_the_child_while_it_is_attached),
        TEST(test_a_forked_child_gets_pool_closed_from_its_parents_handle_but_can_attach),
    };
    RUN_TESTS(tests);
}
