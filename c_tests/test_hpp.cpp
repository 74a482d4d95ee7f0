// zcopy.hpp: ownership (move-only handles released by destructors), exceptions carrying the
// status, and the wrapper's conveniences, checked against the pool's counters.

#include <cstdio>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include "zcopy.hpp"

static int failures = 0, passes = 0;

#define EXPECT(cond)                                                                  \
    do {                                                                              \
        if (!(cond)) {                                                                \
            std::printf("%s:%d: EXPECT failed: %s\n", __FILE__, __LINE__, #cond);     \
            failures++;                                                               \
            return;                                                                   \
        }                                                                             \
    } while (0)

template <class F>
static zc_status status_of(F &&f) {
    try {
        f();
    } catch (const zc::Error &e) {
        return e.status();
    }
    return ZC_OK;
}

static zc::Pool small_pool() { return zc::Pool(zc::Options().with_size(4 << 20).with_pages(ZC_PAGES_SMALL).with_prefault(false)); }

static void test_destructors_release_and_moves_transfer_ownership() {
    zc::Pool pool = small_pool();
    {
        zc::Buffer b = pool.create("k", 1000);
        std::memset(b.data(), 7, b.size());
        b.seal();
        zc::Buffer moved = std::move(b);
        EXPECT(!b && moved);
        zc::Buffer r = pool.get("k");
        EXPECT(r.cdata() == moved.cdata());
        EXPECT(r.data() == nullptr);
        pool.erase("k");
        EXPECT(pool.stats().object_count == 1);
    }
    EXPECT(pool.stats().object_count == 0 && pool.stats().used_bytes == 0);
    {
        zc::Buffer unsealed = pool.create("u", 64);
    }
    EXPECT(!pool.contains("u") && pool.stats().key_count == 0);  // released unsealed: aborted
    passes++;
}

static void test_errors_carry_status_and_message() {
    zc::Pool pool = small_pool();
    EXPECT(status_of([&] { pool.get("absent"); }) == ZC_ERR_NOT_FOUND);
    zc::Buffer b = pool.create("k", 8);
    EXPECT(status_of([&] { pool.create("k", 8); }) == ZC_ERR_ALREADY_EXISTS);
    EXPECT(status_of([&] { pool.get("k"); }) == ZC_ERR_NOT_SEALED);
    EXPECT(!pool.try_get("k").has_value());
    b.seal();
    EXPECT(status_of([&] { b.seal(); }) == ZC_ERR_ALREADY_SEALED);
    EXPECT(status_of([&] { b.abort(); }) == ZC_ERR_ALREADY_SEALED);
    EXPECT(b);  // a refused abort keeps the handle
    EXPECT(pool.try_get("k").has_value());
    EXPECT(status_of([&] { pool.create("big", 8 << 20); }) == ZC_ERR_INVALID_ARGUMENT);
    try {
        pool.get("absent", std::chrono::milliseconds(20));
        EXPECT(false);
    } catch (const zc::Error &e) {
        EXPECT(e.status() == ZC_ERR_TIMEOUT);
        EXPECT(std::string(e.what()).find("timed out") != std::string::npos);
    }
    EXPECT(status_of([] { zc::Options o; o.size = 0; zc::Pool p(o); }) == ZC_ERR_INVALID_ARGUMENT);
    passes++;
}

/* How many times `word` appears in `text`. */
static size_t occurrences(const std::string &text, const std::string &word) {
    size_t n = 0;
    for (size_t at = text.find(word); at != std::string::npos; at = text.find(word, at + word.size())) n++;
    return n;
}

static void test_error_messages_name_their_kind_once() {
    try {
        zc::Pool::attach("a/b");
        EXPECT(false);
    } catch (const zc::Error &e) {
        const std::string what = e.what();
        EXPECT(e.status() == ZC_ERR_INVALID_ARGUMENT);
        EXPECT(what.rfind("invalid argument: pool name \"a/b\": contains '/'", 0) == 0);
        EXPECT(occurrences(what, "invalid argument") == 1);
    }
    zc::Pool pool = small_pool();
    try {
        pool.get("absent", std::chrono::milliseconds(1));
        EXPECT(false);
    } catch (const zc::Error &e) {
        EXPECT(e.status() == ZC_ERR_TIMEOUT);
        EXPECT(occurrences(e.what(), "timed out") == 1);
    }
    passes++;
}

static void test_parts_put_get_into_and_abort() {
    zc::Pool pool = small_pool();
    zc::Buffer b = pool.create_parts("p", std::vector<size_t>{3, 100});
    EXPECT(b.part_count() == 2);
    zc::MutableBytes m = b.part_mut(1);
    EXPECT(m.size == 100 && reinterpret_cast<uintptr_t>(m.data) % 64 == 0);
    std::memset(m.data, 9, m.size);
    b.seal();
    zc::Bytes p = pool.get("p").part(1);
    EXPECT(p.size == 100 && p.data[99] == 9);

    const char msg[] = "hello";
    pool.put("h", msg, sizeof msg);
    char back[16] = {0};
    EXPECT(pool.get_into("h", back, sizeof back) == sizeof msg && std::strcmp(back, "hello") == 0);

    zc::Buffer a = pool.create("a", 10);
    a.abort();
    EXPECT(!a && !pool.contains("a"));
    EXPECT(status_of([&] { (void)pool.get("h").rdma_desc(0); }) == ZC_ERR_RDMA);  // local mode here
    passes++;
}

/// Unlinks a shared pool when the test ends, passed or failed (it may be gone already).
struct Unlinked {
    std::string name;
    ~Unlinked() { (void)zc_pool_unlink(name.c_str()); }
};

static void test_shared_pool_attached_twice_in_one_process() {
    Unlinked guard{"zc-hpptest-" + std::to_string(static_cast<long>(getpid()))};
    const std::string &name = guard.name;
    zc::Options options = zc::Options().with_size(4 << 20).with_prefault(false).with_rdma(ZC_RDMA_OFF);
    {
        // A copy and a move keep a name of their own after the original is gone.
        zc::Options named = zc::Options(options).with_name("zc-hpptest-other");
        zc::Options copied = named;
        named.with_name(name);
        zc::Options moved = std::move(named);
        EXPECT(std::string(copied.name) == "zc-hpptest-other" && std::string(moved.name) == name);
        options = moved;
    }
    EXPECT(std::string(options.name) == name);
    EXPECT(status_of([&] { zc::Pool::attach(name); }) == ZC_ERR_SYSTEM);  // not created yet
    zc::Pool creator(options);
    EXPECT(status_of([&] { zc::Pool again(options); }) == ZC_ERR_SYSTEM);  // the name exists
    zc::Pool attached = zc::Pool::attach(name, zc::Options().with_prefault(false).with_rdma(ZC_RDMA_OFF));
    EXPECT(creator.stats().processes_attached == 2 && attached.stats().processes_attached == 2);

    const char msg[] = "through the creator";
    creator.put("k", msg, sizeof msg);
    zc::Buffer seen = attached.get("k");
    EXPECT(seen.size() == sizeof msg && std::memcmp(seen.cdata(), msg, sizeof msg) == 0);
    // Two handles, two mappings of one file: the same bytes at different addresses.
    zc::Buffer own = creator.get("k");
    EXPECT(own.cdata() != seen.cdata());
    auto region = attached.region();
    auto at = reinterpret_cast<uintptr_t>(seen.cdata()), base = reinterpret_cast<uintptr_t>(region.first);
    EXPECT(at >= base && at + seen.size() <= base + region.second);

    zc::Buffer w = attached.create("back", 64);
    std::memset(w.data(), 5, w.size());
    w.seal();
    EXPECT(creator.get("back").bytes().data[63] == 5);
    EXPECT(creator.reclaim() == 0 && creator.stats().processes_reclaimed == 0);
    creator.check();
    attached.check();

    EXPECT(status_of([] { zc::Pool::attach("a/b"); }) == ZC_ERR_INVALID_ARGUMENT);
    EXPECT(status_of([] { zc::Pool::attach(std::string("ok\0name", 7)); }) == ZC_ERR_INVALID_ARGUMENT);
    {
        zc::Pool third = zc::Pool::attach(name);
        EXPECT(third.stats().processes_attached == 3 && third.contains("back"));
    }
    EXPECT(creator.stats().processes_attached == 2);
    zc::Pool::unlink(name);
    EXPECT(status_of([&] { zc::Pool::unlink(name); }) == ZC_ERR_SYSTEM);
    EXPECT(status_of([&] { zc::Pool::attach(name); }) == ZC_ERR_SYSTEM);
    // Unlinked, still attached: both handles keep working on the objects.
    EXPECT(attached.contains("k") && creator.stats().key_count == 2);
    passes++;
}

int main() {
    test_destructors_release_and_moves_transfer_ownership();
    test_errors_carry_status_and_message();
    test_error_messages_name_their_kind_once();
    test_parts_put_get_into_and_abort();
    test_shared_pool_attached_twice_in_one_process();
    std::printf("%d passed, %d failed\n", passes, failures);
    return failures == 0 ? 0 : 1;
}
