/* Shared pools and RDMA against a real verbs device (Soft-RoCE rxe0 in the test VM, or a NIC):
 * every process that opens or attaches a shared pool registers the pool's data area itself, and
 * the descriptors it hands out carry its own address and keys, valid for a remote peer exactly as
 * for a private pool. Process A (this one) creates the pool and owns a private pool P whose queue
 * pairs do the transfers; process B (a forked child that attaches by name) serves commands over
 * pipes: attach, get or create an object and answer its descriptor, seal, connect a queue pair on
 * its own registration. Bytes are compared after every transfer; the registration of each process
 * covers exactly zc_pool_region, so the pool's metadata, mapped just before the data area, cannot
 * be reached with the pool's keys. Run by scripts/rdma-tests.sh. */

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "objects.h"
#include "rdma_util.h"

enum {
    SHARED_SIZE = 16 * 1024 * 1024,
    /* A reply that takes longer than this is a failure (the child's own alarm is the backstop). */
    REPLY_TIMEOUT_MS = 20000,
    CHILD_ALARM_S = 50,
    MAX_HELD = 8,
    MAX_PEERS = 2,
};

static const size_t SIZES[] = { 1, 4 * KIB + 3, MIB };
#define NSIZES (sizeof SIZES / sizeof SIZES[0])

/* ---- the messages between A and its children -------------------------------------------- */

enum command {
    CMD_ATTACH = 1, /* zc_pool_attach(name) with rdma mode `mode` */
    CMD_REGION,     /* answer zc_pool_region, zc_pool_get_stats and zc_pool_rdma_count */
    CMD_CONNECT,    /* a new queue pair on the child's registration 0, connected to `end` */
    CMD_GET,        /* zc_get(key), held; answer its descriptor */
    CMD_CREATE,     /* zc_create_buffer(key, size) zero-filled, held; answer its descriptor */
    CMD_SEAL,       /* the held created `key` holds pattern `seed`: seal it */
    CMD_DONE,       /* release everything, close, exit 0 */
};

typedef struct msg {
    uint32_t kind;
    uint32_t mode;
    uint32_t seed;
    uint32_t rdma_count;
    uint64_t size;
    char key[32];
    zc_rdma_desc desc;
    rdma_end_addr end;
    uint64_t base;
    uint64_t len;
    zc_pool_stats stats;
} msg;

_Static_assert(sizeof(msg) <= 4096, "a message is written to a pipe at once");

static bool write_msg(int fd, const msg *m) {
    ssize_t n;
    do {
        n = write(fd, m, sizeof *m);
    } while (n < 0 && errno == EINTR);
    if (n != (ssize_t)sizeof *m) {
        printf("    pipe write failed (%zd): %s\n", n, strerror(errno));
        return false;
    }
    return true;
}

/* Reads one message within `timeout_ms`; false (saying why) on timeout or when the writer ended. */
static bool read_msg(int fd, msg *m, int timeout_ms, const char *from) {
    size_t got = 0;
    uint64_t deadline = harness_now_ns() + (uint64_t)timeout_ms * 1000000u;
    while (got < sizeof *m) {
        uint64_t now = harness_now_ns();
        if (now >= deadline) {
            printf("    no message from %s within %d ms\n", from, timeout_ms);
            return false;
        }
        struct pollfd p = { .fd = fd, .events = POLLIN };
        int r = poll(&p, 1, (int)((deadline - now) / 1000000u) + 1);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) continue;
        ssize_t n = read(fd, (char *)m + got, sizeof *m - got);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            printf("    %s ended before answering\n", from);
            return false;
        }
        got += (size_t)n;
    }
    return true;
}

/* ---- helpers used by both processes ------------------------------------------------------ */

static bool set_key(char *key, size_t cap, const char *prefix, size_t n) {
    int w = snprintf(key, cap, "%s-%zu", prefix, n);
    CHECK(w > 0 && (size_t)w < cap);
    return true;
}

/* ---- process B: attaches the pool by name and answers A's commands ----------------------- */

typedef struct held {
    char key[32];
    zc_buffer *buf;
} held;

static zc_buffer *held_find(held *h, size_t n, const char *key) {
    for (size_t i = 0; i < n; i++) {
        if (h[i].buf != NULL && strcmp(h[i].key, key) == 0) return h[i].buf;
    }
    return NULL;
}

static bool serve_one(const char *name, zc_pool **pool, rdma_end *end, held *h, size_t *nheld, const msg *m,
                      msg *r) {
    memset(r, 0, sizeof *r);
    r->kind = m->kind;
    switch (m->kind) {
    case CMD_ATTACH: {
        zc_pool_options o;
        zc_pool_options_init(&o);
        o.rdma = m->mode;
        o.rdma_devices = m->mode == ZC_RDMA_REQUIRED ? rdma_device_name() : NULL;
        CHECK(*pool == NULL);
        CHECK_OK(zc_pool_attach(name, &o, pool));
        return true;
    }
    case CMD_REGION: {
        void *base;
        size_t len;
        CHECK_OK(zc_pool_region(*pool, &base, &len));
        r->base = (uint64_t)(uintptr_t)base;
        r->len = len;
        CHECK_OK(zc_pool_get_stats(*pool, &r->stats));
        r->rdma_count = zc_pool_rdma_count(*pool);
        return true;
    }
    case CMD_CONNECT:
        rdma_end_destroy(end);
        CHECK(rdma_end_init(end, zc_pool_rdma_pd(*pool, 0)));
        CHECK(rdma_end_connect_to(end, &m->end));
        r->end = rdma_end_address(end);
        return true;
    case CMD_GET:
    case CMD_CREATE: {
        CHECK(*nheld < MAX_HELD);
        held *slot = &h[(*nheld)++];
        memcpy(slot->key, m->key, sizeof slot->key);
        slot->key[sizeof slot->key - 1] = 0;
        if (m->kind == CMD_GET) {
            CHECK_OK(zc_get(*pool, slot->key, strlen(slot->key), 0, &slot->buf));
            CHECK(zc_buffer_size(slot->buf) == m->size);
        } else {
            CHECK_OK(zc_create_buffer(*pool, slot->key, strlen(slot->key), m->size, &slot->buf));
            memset(zc_buffer_data(slot->buf), 0, m->size);
        }
        return desc_of(slot->buf, 0, &r->desc);
    }
    case CMD_SEAL: {
        zc_buffer *b = held_find(h, *nheld, m->key);
        CHECK(b != NULL);
        /* The peer's WRITE is visible in this process's own mapping before the seal. */
        CHECK(has_pattern(zc_buffer_const_data(b), zc_buffer_size(b), m->seed));
        CHECK_OK(zc_seal(b));
        return true;
    }
    default:
        printf("    unknown command %u\n", (unsigned)m->kind);
        return false;
    }
}

static bool serve(const char *name, int in, int out) {
    zc_pool *pool = NULL;
    rdma_end end;
    memset(&end, 0, sizeof end);
    held h[MAX_HELD];
    memset(h, 0, sizeof h);
    size_t nheld = 0;
    for (int step = 0; step < 1000; step++) {
        msg m, r;
        if (!read_msg(in, &m, REPLY_TIMEOUT_MS * 2, "process A")) return false;
        if (m.kind == CMD_DONE) {
            for (size_t i = 0; i < nheld; i++) zc_release(h[i].buf);
            rdma_end_destroy(&end);
            zc_pool_close(pool);
            return true;
        }
        if (!serve_one(name, &pool, &end, h, &nheld, &m, &r)) {
            printf("    (in process B, pid %d, command %u)\n", (int)getpid(), (unsigned)m.kind);
            return false;
        }
        if (!write_msg(out, &r)) return false;
    }
    printf("    process B: too many commands\n");
    return false;
}

/* ---- process A: the fixture, its children and its queue pairs ----------------------------- */

typedef struct peer {
    pid_t pid;
    int to;   /* A writes commands */
    int from; /* A reads replies */
} peer;

typedef struct fixture {
    char name[64];
    peer peers[MAX_PEERS];
    size_t npeers;
    zc_pool *shared; /* A's handle on the shared pool */
    zc_pool *mine;   /* A's private pool: the requester side of every transfer */
} fixture;

/* Forks a child that serves commands on the pool `f->name`. Called before A opens any device. */
static bool peer_start(fixture *f) {
    CHECK(f->npeers < MAX_PEERS);
    int down[2], up[2];
    CHECK(pipe(down) == 0);
    if (pipe(up) != 0) {
        close(down[0]);
        close(down[1]);
        CHECK(false);
    }
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid == 0) {
        alarm(CHILD_ALARM_S);
        close(down[1]);
        close(up[0]);
        for (size_t i = 0; i < f->npeers; i++) {
            close(f->peers[i].to);
            close(f->peers[i].from);
        }
        bool ok = serve(f->name, down[0], up[1]);
        fflush(stdout);
        _exit(ok ? 0 : 1);
    }
    close(down[0]);
    close(up[1]);
    if (pid < 0) {
        close(down[1]);
        close(up[0]);
        CHECK(pid > 0);
    }
    f->peers[f->npeers++] = (peer){ .pid = pid, .to = down[1], .from = up[0] };
    return true;
}

/* Sends `req` to `p` and reads its reply. */
static bool ask(peer *p, msg *req, msg *reply) {
    CHECK(write_msg(p->to, req));
    CHECK(read_msg(p->from, reply, REPLY_TIMEOUT_MS, "process B"));
    CHECK(reply->kind == req->kind);
    return true;
}

static msg command(uint32_t kind, const char *key, uint64_t size) {
    msg m;
    memset(&m, 0, sizeof m);
    m.kind = kind;
    if (key != NULL) snprintf(m.key, sizeof m.key, "%s", key);
    m.size = size;
    return m;
}

/* Ends the child: DONE if the test passed, then its pipe closes; waits at most 20 s for it to exit
 * (killing it after that) and answers whether it exited with 0. */
static bool peer_finish(peer *p, bool send_done) {
    msg done = command(CMD_DONE, NULL, 0);
    bool ok = !send_done || write_msg(p->to, &done);
    close(p->to);
    close(p->from);
    int status = 0;
    pid_t got = 0;
    for (int i = 0; i < 2000 && got == 0; i++) {
        got = waitpid(p->pid, &status, WNOHANG);
        if (got == 0) harness_sleep_ms(10);
    }
    if (got == 0) {
        printf("    process B (pid %d) did not exit within 20 s: killed\n", (int)p->pid);
        kill(p->pid, SIGKILL);
        waitpid(p->pid, &status, 0);
        return false;
    }
    if (got != p->pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        printf("    process B (pid %d) failed (wait status %d)\n", (int)p->pid, status);
        return false;
    }
    return ok;
}

static bool open_pool(const char *name, zc_pool **out) {
    zc_pool_options o;
    zc_pool_options_init(&o);
    o.size = SHARED_SIZE;
    o.rdma = ZC_RDMA_REQUIRED;
    o.rdma_devices = rdma_device_name();
    o.name = name;
    CHECK_OK(zc_pool_open(&o, out));
    return true;
}

/* Forks `npeers` children (before any device is opened here), then creates the shared pool and
 * A's private pool, both registered with the device. */
static bool fixture_start(fixture *f, const char *tag, size_t npeers) {
    memset(f, 0, sizeof *f);
    snprintf(f->name, sizeof f->name, "rdma-shared-%s-%d", tag, (int)getpid());
    for (size_t i = 0; i < npeers; i++) {
        if (!peer_start(f)) return false;
    }
    if (!open_pool(f->name, &f->shared) || !open_pool(NULL, &f->mine)) return false;
    CHECK(zc_pool_rdma_count(f->shared) >= 1 && zc_pool_rdma_count(f->mine) >= 1);
    return true;
}

/* Ends the children, closes the pools and unlinks the shared pool whatever happened before;
 * answers `ok` and whether all of that went well. */
static bool fixture_finish(fixture *f, bool ok) {
    for (size_t i = 0; i < f->npeers; i++) ok = peer_finish(&f->peers[i], ok) && ok;
    bool created = f->shared != NULL;
    zc_pool_close(f->shared);
    zc_pool_close(f->mine);
    zc_status s = zc_pool_unlink(f->name);
    if (created && s != ZC_OK) {
        printf("    zc_pool_unlink(%s): %s\n", f->name, harness_last_error());
        ok = false;
    }
    char path[128];
    snprintf(path, sizeof path, "/dev/shm/zcopy.%s", f->name);
    if (access(path, F_OK) == 0) {
        printf("    %s is left behind\n", path);
        ok = false;
    }
    return ok;
}

/* A queue pair from A's private pool (requester) to a registration of the shared pool
 * (responder): in A itself when `p` is NULL (on `pd`), else in child `p`. */
typedef struct qp_link {
    rdma_end req;
    rdma_end resp;
} qp_link;

static bool link_open(qp_link *l, fixture *f, peer *p, struct ibv_pd *pd) {
    memset(l, 0, sizeof *l);
    CHECK(rdma_end_init(&l->req, zc_pool_rdma_pd(f->mine, 0)));
    if (p == NULL) {
        CHECK(rdma_end_init(&l->resp, pd));
        CHECK(rdma_end_connect(&l->resp, &l->req));
        CHECK(rdma_end_connect(&l->req, &l->resp));
        return true;
    }
    msg req = command(CMD_CONNECT, NULL, 0), reply;
    req.end = rdma_end_address(&l->req);
    CHECK(ask(p, &req, &reply));
    CHECK(rdma_end_connect_to(&l->req, &reply.end));
    return true;
}

static void link_close(qp_link *l) {
    rdma_end_destroy(&l->req);
    rdma_end_destroy(&l->resp);
}

/* ---- 1. READ from the attaching process's descriptors ----------------------------------- */

static bool read_with_attached_descriptors(fixture *f) {
    for (size_t i = 0; i < NSIZES; i++) {
        char key[32];
        if (!set_key(key, sizeof key, "read", SIZES[i])) return false;
        zc_buffer *b;
        if (!store(f->shared, key, SIZES[i], (uint32_t)(10 + i), &b)) return false;
        zc_release(b); /* sealed: the object stays */
    }
    peer *p = &f->peers[0];
    msg req = command(CMD_ATTACH, NULL, 0), reply;
    req.mode = ZC_RDMA_REQUIRED;
    CHECK(ask(p, &req, &reply));
    qp_link l;
    if (!link_open(&l, f, p, NULL)) return false;
    for (size_t i = 0; i < NSIZES; i++) {
        size_t size = SIZES[i];
        char key[32];
        if (!set_key(key, sizeof key, "read", size)) return false;
        req = command(CMD_GET, key, size);
        CHECK(ask(p, &req, &reply));
        zc_rdma_desc remote = reply.desc; /* B's address and B's rkey */
        CHECK(remote.length == size);
        zc_buffer *dst;
        CHECK_OK(zc_create_buffer(f->mine, key, strlen(key), size, &dst));
        memset(zc_buffer_data(dst), 0, size);
        zc_rdma_desc local;
        if (!desc_of(dst, 0, &local)) return false;
        CHECK(rdma_transfer(&l.req, IBV_WR_RDMA_READ, &local, &remote));
        CHECK_OK(zc_seal(dst));
        zc_release(dst);
        if (!reads_pattern(f->mine, key, size, (uint32_t)(10 + i))) return false;
        printf("    %zu bytes sealed by A, read over RDMA with B's descriptor, intact\n", size);
    }
    link_close(&l);
    return true;
}

static bool test_object_sealed_by_one_process_is_read_with_the_attaching_process_descriptor(void) {
    fixture f;
    bool ok = fixture_start(&f, "read", 1) && read_with_attached_descriptors(&f);
    return fixture_finish(&f, ok);
}

/* ---- 2. WRITE into a buffer the attaching process created -------------------------------- */

static bool write_into_attached_creates(fixture *f) {
    peer *p = &f->peers[0];
    msg req = command(CMD_ATTACH, NULL, 0), reply;
    req.mode = ZC_RDMA_REQUIRED;
    CHECK(ask(p, &req, &reply));
    qp_link l;
    if (!link_open(&l, f, p, NULL)) return false;
    for (size_t i = 0; i < NSIZES; i++) {
        size_t size = SIZES[i];
        uint32_t seed = (uint32_t)(20 + i);
        char key[32];
        if (!set_key(key, sizeof key, "write", size)) return false;
        req = command(CMD_CREATE, key, size);
        CHECK(ask(p, &req, &reply));
        zc_rdma_desc remote = reply.desc;
        CHECK(remote.length == size);
        zc_buffer *src;
        if (!store(f->mine, key, size, seed, &src)) return false;
        zc_rdma_desc local;
        if (!desc_of(src, 0, &local)) return false;
        CHECK(rdma_transfer(&l.req, IBV_WR_RDMA_WRITE, &local, &remote));
        zc_release(src);
        zc_buffer *r = BAD_BUF;
        CHECK_STATUS(zc_get(f->shared, key, strlen(key), 0, &r), ZC_ERR_NOT_SEALED); /* B still writes */
        req = command(CMD_SEAL, key, size);
        req.seed = seed;
        CHECK(ask(p, &req, &reply));
        if (!reads_pattern(f->shared, key, size, seed)) return false;
        printf("    %zu bytes written over RDMA into B's create, sealed by B, read by A intact\n", size);
    }
    link_close(&l);
    return true;
}

static bool test_write_into_the_attaching_process_create_is_seen_by_the_creator_after_seal(void) {
    fixture f;
    bool ok = fixture_start(&f, "write", 1) && write_into_attached_creates(&f);
    return fixture_finish(&f, ok);
}

/* ---- 3. each registration covers exactly the data area ----------------------------------- */

/* With one process's registration of the shared pool (region [base, base+len), `whole` the
 * descriptor of an object filling it, holding pattern `seed`): the first and the last byte are
 * read over RDMA; a WRITE just past the end, a WRITE and a READ of the page before the start (the
 * pool's metadata) each complete with a remote access error. A failed request breaks its queue
 * pair, so each gets a new one. */
static bool registration_is_exactly_the_region(fixture *f, peer *p, struct ibv_pd *pd, const zc_rdma_desc *whole,
                                               uint64_t base, uint64_t len, uint32_t seed, const char *who) {
    zc_buffer *scratch;
    CHECK_OK(zc_create_buffer(f->mine, K("scratch"), 4096, &scratch));
    uint8_t *bytes = zc_buffer_data(scratch);
    zc_rdma_desc local;
    if (!desc_of(scratch, 0, &local)) return false;
    local.length = 1;

    qp_link l;
    if (!link_open(&l, f, p, pd)) return false;
    zc_rdma_desc at = *whole;
    const uint64_t edges[2] = { base, base + len - 1 };
    for (int i = 0; i < 2; i++) {
        at.addr = edges[i];
        bytes[0] = (uint8_t)~pattern_byte(seed, edges[i] - base);
        CHECK(rdma_transfer(&l.req, IBV_WR_RDMA_READ, &local, &at));
        CHECK(bytes[0] == pattern_byte(seed, edges[i] - base));
    }
    link_close(&l);

    struct {
        enum ibv_wr_opcode op;
        uint64_t addr;
        const char *what;
    } const outside[] = {
        { IBV_WR_RDMA_WRITE, base + len, "WRITE just past the end" },
        { IBV_WR_RDMA_WRITE, base - 4096, "WRITE to the metadata before the start" },
        { IBV_WR_RDMA_READ, base - 4096, "READ of the metadata before the start" },
    };
    local.length = 64;
    for (size_t i = 0; i < sizeof outside / sizeof outside[0]; i++) {
        fill_pattern(bytes, 64, seed + 1);
        if (!link_open(&l, f, p, pd)) return false;
        at.addr = outside[i].addr;
        enum ibv_wc_status status;
        CHECK(rdma_post_and_wait(&l.req, outside[i].op, &local, &at, &status));
        link_close(&l);
        printf("    %s's registration, %s: %s\n", who, outside[i].what, ibv_wc_status_str(status));
        CHECK(status == IBV_WC_REM_ACCESS_ERR);
    }
    CHECK_OK(zc_abort(scratch));
    return true;
}

static bool registrations_cover_exactly_the_regions(fixture *f) {
    void *base_ptr;
    size_t len;
    CHECK_OK(zc_pool_region(f->shared, &base_ptr, &len));
    uint64_t base = (uint64_t)(uintptr_t)base_ptr;
    zc_pool_stats st;
    CHECK_OK(zc_pool_get_stats(f->shared, &st));
    CHECK(len == st.capacity_bytes);
    CHECK(st.largest_free_block == len);
    const uint32_t seed = 30;
    zc_buffer *whole;
    if (!store(f->shared, "whole", len, seed, &whole)) return false;
    zc_rdma_desc mine;
    if (!desc_of(whole, 0, &mine)) return false;
    CHECK(mine.addr == base && mine.length == len); /* the object fills the data area */
    zc_release(whole);

    peer *p = &f->peers[0];
    msg req = command(CMD_ATTACH, NULL, 0), reply;
    req.mode = ZC_RDMA_REQUIRED;
    CHECK(ask(p, &req, &reply));
    req = command(CMD_REGION, NULL, 0);
    CHECK(ask(p, &req, &reply));
    uint64_t base_b = reply.base;
    CHECK(reply.len == len);
    req = command(CMD_GET, "whole", len);
    CHECK(ask(p, &req, &reply));
    zc_rdma_desc theirs = reply.desc;
    CHECK(theirs.addr == base_b && theirs.length == len);

    /* The page before the data area is the pool file's metadata (or padding), the same bytes in
     * every process: no probe may change them. */
    static uint8_t before[4096];
    const uint8_t *metadata = (const uint8_t *)base_ptr - sizeof before;
    memcpy(before, metadata, sizeof before);
    if (!registration_is_exactly_the_region(f, NULL, zc_pool_rdma_pd(f->shared, 0), &mine, base, len, seed, "A"))
        return false;
    if (!registration_is_exactly_the_region(f, p, NULL, &theirs, base_b, len, seed, "B")) return false;
    CHECK(memcmp(before, metadata, sizeof before) == 0);
    CHECK_OK(zc_pool_check(f->shared));
    if (!reads_pattern(f->shared, "whole", len, seed)) return false;
    return true;
}

static bool test_each_process_registers_exactly_the_data_area_and_no_metadata(void) {
    fixture f;
    bool ok = fixture_start(&f, "region", 1) && registrations_cover_exactly_the_regions(&f);
    return fixture_finish(&f, ok);
}

/* ---- 4. every process with a device counts its own registration ------------------------- */

static bool every_process_counts_a_registration(fixture *f) {
    const uint32_t modes[MAX_PEERS] = { ZC_RDMA_REQUIRED, ZC_RDMA_AUTO };
    for (size_t i = 0; i < f->npeers; i++) {
        msg req = command(CMD_ATTACH, NULL, 0), reply;
        req.mode = modes[i];
        CHECK(ask(&f->peers[i], &req, &reply));
    }
    zc_pool_stats st;
    CHECK_OK(zc_pool_get_stats(f->shared, &st));
    CHECK(st.rdma_registrations >= 1);
    CHECK(st.rdma_registrations == zc_pool_rdma_count(f->shared));
    CHECK(st.processes_attached == 1 + f->npeers);
    for (size_t i = 0; i < f->npeers; i++) {
        msg req = command(CMD_REGION, NULL, 0), reply;
        CHECK(ask(&f->peers[i], &req, &reply));
        printf("    process %zu (rdma mode %u): %llu registrations, %llu processes attached\n", i + 1,
               (unsigned)modes[i], (unsigned long long)reply.stats.rdma_registrations,
               (unsigned long long)reply.stats.processes_attached);
        CHECK(reply.stats.rdma_registrations >= 1);
        CHECK(reply.stats.rdma_registrations == reply.rdma_count);
        CHECK(reply.stats.processes_attached == 1 + f->npeers);
    }
    return true;
}

static bool test_every_attached_process_with_a_device_counts_its_own_registration(void) {
    fixture f;
    bool ok = fixture_start(&f, "stats", 2) && every_process_counts_a_registration(&f);
    return fixture_finish(&f, ok);
}

int main(void) {
    printf("device %s, GID index %d\n", rdma_device_name(), rdma_gid_index());
    static const harness_test tests[] = {
        TEST(test_object_sealed_by_one_process_is_read_with_the_attaching_process_descriptor),
        TEST(test_write_into_the_attaching_process_create_is_seen_by_the_creator_after_seal),
        TEST(test_each_process_registers_exactly_the_data_area_and_no_metadata),
        TEST(test_every_attached_process_with_a_device_counts_its_own_registration),
    };
    RUN_TESTS(tests);
}
