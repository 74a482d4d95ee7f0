// rdma_test.cpp: the store's RDMA path end to end, on a real verbs device (Soft-RoCE in the test
// VM; scripts/rdma-tests.sh runs it there). Starts zcopy-store-server (next to this program) on an
// ephemeral loopback port with --rdma required, and checks:
//   * the command-line client with --rdma puts and gets 4 KiB and 16 MiB values, bytes compared,
//     and the server's counters show that they went over RDMA (and that TCP reads them back too);
//   * a client killed after its RDMA PUT's descriptor and WRITE but before COMMIT leaves nothing:
//     STATS shows the abort, the key is absent and can be put again; a client killed holding an
//     RDMA GET lease releases its reference;
//   * COMMIT / DONE of unknown, finished, other connections' or wrong-kind leases get BAD_LEASE
//     and the server keeps serving;
//   * RDMA against TCP for 16 MiB values through the library (the numbers are printed).
// Every process it starts is ended by its PID. Prints "store-rdma: N passed, M failed".
//
//   store-rdma-test                                  (the test)
//   store-rdma-test --hold put|get PORT KEY SIZE     (a client that holds a lease until killed)

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "client.hpp"

extern char **environ;

namespace {

#ifndef ZCS_HAVE_RDMA
#error "store-rdma-test needs <infiniband/verbs.h>"
#endif

using Stats = std::map<std::string, uint64_t>;

std::string g_bin;  // directory of this program (and of the server and client)
std::string g_tmp;  // scratch files
uint16_t g_port = 0;
int g_passed = 0, g_failed = 0;

#define CHECK(cond)                                                                                      \
    do {                                                                                                 \
        if (!(cond)) throw std::runtime_error(std::string("line ") + std::to_string(__LINE__) + ": " + #cond); \
    } while (0)

void run_test(const char *name, const std::function<void()> &fn) {
    try {
        fn();
        std::printf("ok   %s\n", name);
        g_passed++;
    } catch (const std::exception &e) {
        std::printf("FAIL %s: %s\n", name, e.what());
        g_failed++;
    }
    std::fflush(stdout);
}

std::vector<uint8_t> pattern(size_t n, uint64_t seed) {
    std::vector<uint8_t> v(n);
    std::mt19937_64 rng(seed);
    for (size_t i = 0; i < n; i += 8) {
        const uint64_t x = rng();
        std::memcpy(v.data() + i, &x, std::min<size_t>(8, n - i));
    }
    return v;
}

void write_file(const std::string &path, const std::vector<uint8_t> &data) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char *>(data.data()), static_cast<std::streamsize>(data.size()));
    if (!f) throw std::runtime_error("write " + path);
}

std::vector<uint8_t> read_file(const std::string &path) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("read " + path);
    return std::vector<uint8_t>(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

std::string slurp(const std::string &path) {
    std::ifstream f(path);
    return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

/// posix_spawn (no fork of this process's registered memory) with stdout to `out_fd` (or
/// /dev/null) and stderr to the file `err_path`.
pid_t spawn(const std::vector<std::string> &args, int out_fd, const std::string &err_path) {
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (out_fd >= 0) {
        posix_spawn_file_actions_adddup2(&fa, out_fd, STDOUT_FILENO);
    } else {
        posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
    }
    posix_spawn_file_actions_addopen(&fa, STDERR_FILENO, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    std::vector<char *> argv;
    for (const auto &a : args) argv.push_back(const_cast<char *>(a.c_str()));
    argv.push_back(nullptr);
    pid_t pid = -1;
    const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) throw std::runtime_error("spawn " + args[0] + ": " + std::strerror(rc));
    return pid;
}

int wait_exit(pid_t pid) {
    int st = 0;
    while (waitpid(pid, &st, 0) < 0) {
        if (errno != EINTR) return -1;
    }
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/// Reads one line from `fd` within `seconds`.
std::string read_line(int fd, double seconds) {
    std::string line;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (line.empty() || line.back() != '\n') {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
        if (left <= 0) throw std::runtime_error("no line within " + std::to_string(seconds) + " s");
        pollfd p{fd, POLLIN, 0};
        if (poll(&p, 1, static_cast<int>(left)) <= 0) continue;
        char c;
        const ssize_t n = read(fd, &c, 1);
        if (n <= 0) throw std::runtime_error("stream ended before a full line (got \"" + line + "\")");
        line += c;
    }
    line.pop_back();
    return line;
}

/// Runs the command-line client; its exit status (stderr in *err).
int client(const std::vector<std::string> &args, std::string *err = nullptr) {
    std::vector<std::string> argv{g_bin + "/zcopy-store-client", "--port", std::to_string(g_port)};
    argv.insert(argv.end(), args.begin(), args.end());
    const std::string err_path = g_tmp + "/client.err";
    const int rc = wait_exit(spawn(argv, -1, err_path));
    if (err != nullptr) *err = slurp(err_path);
    return rc;
}

/// Runs the command-line client and requires exit status 0 (its stderr in the failure).
void client_ok(const std::vector<std::string> &args) {
    std::string err;
    const int rc = client(args, &err);
    if (rc != 0) {
        std::string cmd;
        for (const auto &a : args) cmd += " " + a;
        throw std::runtime_error("client" + cmd + ": exit " + std::to_string(rc) + ": " + err);
    }
}

Stats stats() { return zcs::Client::connect("127.0.0.1", g_port).stats(); }

/// Polls STATS until `pred` holds (at most 20 s); the last STATS either way.
Stats wait_stats(const std::function<bool(Stats &)> &pred) {
    Stats s;
    for (int i = 0; i < 200; i++) {
        s = stats();
        if (pred(s)) return s;
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return s;
}

double now_s() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

/// put and get through the command-line client with --rdma, bytes compared; the counters must
/// show RDMA, and a --tcp get must read the same bytes.
void cli_round_trip(size_t size, uint64_t seed) {
    const std::string key = "cli-" + std::to_string(size);
    const std::string in = g_tmp + "/in-" + std::to_string(size), out = g_tmp + "/out-" + std::to_string(size);
    const std::vector<uint8_t> value = pattern(size, seed);
    write_file(in, value);
    const Stats before = stats();
    std::string err;
    double t = now_s();
    if (client({"--rdma", "put", key, in}, &err) != 0) throw std::runtime_error("rdma put: " + err);
    const double put_s = now_s() - t;
    t = now_s();
    if (client({"--rdma", "get", key, out}, &err) != 0) throw std::runtime_error("rdma get: " + err);
    const double get_s = now_s() - t;
    CHECK(read_file(out) == value);
    const Stats after = stats();
    CHECK(after.at("rdma_puts") == before.at("rdma_puts") + 1);
    CHECK(after.at("rdma_gets") == before.at("rdma_gets") + 1);
    CHECK(after.at("rdma_bytes_in") == before.at("rdma_bytes_in") + size);
    CHECK(after.at("rdma_bytes_out") == before.at("rdma_bytes_out") + size);
    CHECK(after.at("rdma_leases_open") == 0);
    CHECK(after.at("refs_held") == 0);
    if (client({"--tcp", "get", key, out + ".tcp"}, &err) != 0) throw std::runtime_error("tcp get: " + err);
    CHECK(read_file(out + ".tcp") == value);
    CHECK(stats().at("rdma_gets") == after.at("rdma_gets"));  // --tcp stayed on TCP
    std::printf("     %zu bytes: client process put %.3f s, get %.3f s (start, pool registration, queue pair, transfer)\n",
                size, put_s, get_s);
}

/// A client process holding a lease (`--hold`) is killed; `check_held` runs while it holds.
void kill_holder(const std::string &kind, const std::string &key, size_t size, const std::function<void()> &check_held) {
    int p[2];
    CHECK(pipe2(p, O_CLOEXEC) == 0);
    const std::string err_path = g_tmp + "/hold.err";
    pid_t pid = spawn({g_bin + "/store-rdma-test", "--hold", kind, std::to_string(g_port), key, std::to_string(size)}, p[1],
                      err_path);
    close(p[1]);
    std::string line;
    try {
        line = read_line(p[0], 120);
    } catch (const std::exception &e) {
        close(p[0]);
        kill(pid, SIGKILL);
        wait_exit(pid);
        throw std::runtime_error(std::string("holder: ") + e.what() + "; stderr: " + slurp(err_path));
    }
    close(p[0]);
    try {
        CHECK(line.rfind("held ", 0) == 0);
        check_held();
    } catch (...) {
        kill(pid, SIGKILL);
        wait_exit(pid);
        throw;
    }
    CHECK(kill(pid, SIGKILL) == 0);
    CHECK(wait_exit(pid) == 128 + SIGKILL);
}

void expect_status(uint16_t want, const std::function<void()> &fn) {
    try {
        fn();
    } catch (const zcs::StoreError &e) {
        if (e.status() != want) throw std::runtime_error(std::string("expected ") + zcs::status_name(want) + ", got " + e.what());
        return;
    }
    throw std::runtime_error(std::string("expected ") + zcs::status_name(want) + ", got success");
}

zc::Pool rdma_pool(uint64_t size) { return zc::Pool(zc::Options().with_size(size).with_rdma(ZC_RDMA_REQUIRED)); }

void lease_errors() {
    zc::Pool pool = rdma_pool(8 << 20);
    zcs::Client a = zcs::Client::connect("127.0.0.1", g_port);
    zcs::Client b = zcs::Client::connect("127.0.0.1", g_port);
    CHECK(a.use_pool(pool, zcs::Transport::Rdma) && b.use_pool(pool, zcs::Transport::Rdma));
    const std::vector<uint8_t> value = pattern(64 << 10, 77);
    zc::Buffer src = pool.create("src", value.size());
    std::memcpy(src.data(), value.data(), value.size());
    src.seal();

    // Unknown leases.
    expect_status(zcs::ST_BAD_LEASE, [&] { a.commit(987654321); });
    expect_status(zcs::ST_BAD_LEASE, [&] { a.done(987654321); });
    // Someone else's lease: b cannot COMMIT or DONE a's; a still can.
    zcs::Lease l = a.rdma_put_begin("lease/other", value.size());
    a.rdma_transfer(IBV_WR_RDMA_WRITE, a.local_desc(src), l);
    expect_status(zcs::ST_BAD_LEASE, [&] { b.commit(l.id); });
    expect_status(zcs::ST_BAD_LEASE, [&] { b.done(l.id); });
    expect_status(zcs::ST_BUSY, [&] { b.get("lease/other"); });  // written, not committed yet
    a.commit(l.id);
    CHECK(b.get("lease/other") == value);
    // Double COMMIT.
    expect_status(zcs::ST_BAD_LEASE, [&] { a.commit(l.id); });
    // A GET lease cannot be committed; DONE ends it, once.
    zcs::Lease g = a.rdma_get_begin("lease/other");
    CHECK(g.length == value.size());
    CHECK(stats().at("refs_held") == 1);
    expect_status(zcs::ST_BAD_LEASE, [&] { a.commit(g.id); });
    a.done(g.id);
    expect_status(zcs::ST_BAD_LEASE, [&] { a.done(g.id); });
    CHECK(stats().at("refs_held") == 0);
    // DONE of a PUT lease abandons it: the key is gone and free again.
    zcs::Lease abandoned = a.rdma_put_begin("lease/abandoned", 4096);
    a.done(abandoned.id);
    CHECK(!b.exists("lease/abandoned"));
    // Refusals that come before a lease.
    expect_status(zcs::ST_ALREADY_EXISTS, [&] { a.rdma_put_begin("lease/other", 10); });
    expect_status(zcs::ST_NOT_FOUND, [&] { a.rdma_get_begin("lease/missing"); });
    expect_status(zcs::ST_VALUE_TOO_LARGE, [&] { a.rdma_put_begin("lease/huge", a.info().max_value + 1); });
    // Both connections still serve, over RDMA and over TCP.
    a.put_buffer("lease/after", src);
    zc::Buffer back = b.get_buffer("lease/after", "back");
    CHECK(back.size() == value.size() && std::memcmp(back.cdata(), value.data(), value.size()) == 0);
    CHECK(a.get("lease/after") == value);
    CHECK(stats().at("rdma_leases_open") == 0);
    a.release_pool();
    b.release_pool();
}

/// 16 MiB values, RDMA against TCP through the library (same process, same pools).
void rdma_against_tcp() {
    constexpr size_t kSize = 16 << 20;
    constexpr int kRounds = 4;
    zc::Pool pool = rdma_pool(3 * kSize + (1 << 20));
    zcs::Client r = zcs::Client::connect("127.0.0.1", g_port);
    zcs::Client t = zcs::Client::connect("127.0.0.1", g_port);
    CHECK(r.use_pool(pool, zcs::Transport::Auto));  // both sides have a device: Auto picks RDMA
    CHECK(!t.use_pool(pool, zcs::Transport::Tcp));
    const std::vector<uint8_t> value = pattern(kSize, 99);
    zc::Buffer src = pool.create("bench-src", kSize);
    std::memcpy(src.data(), value.data(), kSize);
    src.seal();
    double secs[2][2] = {};  // [rdma, tcp][put, get]
    for (int round = 0; round < kRounds; round++) {
        for (int tcp = 0; tcp < 2; tcp++) {
            zcs::Client &c = tcp ? t : r;
            const std::string key = "bench/" + std::to_string(tcp) + "/" + std::to_string(round);
            double t0 = now_s();
            c.put_buffer(key, src);
            secs[tcp][0] += now_s() - t0;
            t0 = now_s();
            zc::Buffer got = c.get_buffer(key, "bench-dst");
            secs[tcp][1] += now_s() - t0;
            CHECK(got.size() == kSize && std::memcmp(got.cdata(), value.data(), kSize) == 0);
            got = zc::Buffer();
            pool.erase("bench-dst");
            c.del(key);
        }
    }
    for (int tcp = 0; tcp < 2; tcp++) {
        std::printf("     %s 16 MiB: put %.1f MB/s, get %.1f MB/s (%d rounds)\n", tcp ? "TCP " : "RDMA", kRounds * kSize / secs[tcp][0] / 1e6,
                    kRounds * kSize / secs[tcp][1] / 1e6, kRounds);
    }
    r.release_pool();
    t.release_pool();
}

/// --hold: take a lease (PUT: and write the bytes), say "held", wait to be killed.
int hold(const std::string &kind, uint16_t port, const std::string &key, size_t size) {
    zc::Pool pool = rdma_pool(size + (1 << 20));
    zcs::Client c = zcs::Client::connect("127.0.0.1", port);
    if (!c.use_pool(pool, zcs::Transport::Rdma)) return 1;
    zc::Buffer local = pool.create("local", size);
    zcs::Lease l;
    if (kind == "put") {
        const std::vector<uint8_t> v = pattern(size, 5);
        std::memcpy(local.data(), v.data(), size);
        l = c.rdma_put_begin(key, size);
        c.rdma_transfer(IBV_WR_RDMA_WRITE, c.local_desc(local), l);
    } else {
        l = c.rdma_get_begin(key);
        c.rdma_transfer(IBV_WR_RDMA_READ, c.local_desc(local), l);
    }
    std::printf("held %llu\n", static_cast<unsigned long long>(l.id));
    std::fflush(stdout);
    for (;;) pause();
}

}  // namespace

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc == 6 && std::strcmp(argv[1], "--hold") == 0) {
        try {
            return hold(argv[2], static_cast<uint16_t>(std::atoi(argv[3])), argv[4], std::strtoull(argv[5], nullptr, 10));
        } catch (const std::exception &e) {
            std::fprintf(stderr, "hold: %s\n", e.what());
            return 1;
        }
    }
    char exe[4096];
    const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n <= 0) return 1;
    exe[n] = '\0';
    g_bin = exe;
    g_bin.erase(g_bin.rfind('/'));
    char tmpl[] = "/tmp/store-rdma-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) return 1;
    g_tmp = tmpl;
    std::printf("store-rdma: device %s, GID index %d, scratch %s\n", std::getenv("RXE_DEV") ? std::getenv("RXE_DEV") : "(default)",
                zcs::rdma::default_gid_index(), g_tmp.c_str());

    // The server: ephemeral loopback port, RDMA required; ended by its PID.
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) return 1;
    const std::string server_log = g_tmp + "/server.log";
    pid_t server = spawn({g_bin + "/zcopy-store-server", "--listen", "127.0.0.1", "--port", "0", "--pool-size", "128M", "--rdma",
                          "required", "--io-timeout-ms", "30000"},
                         p[1], server_log);
    close(p[1]);
    try {
        const std::string line = read_line(p[0], 120);
        const std::string prefix = "listening 127.0.0.1:";
        if (line.rfind(prefix, 0) != 0) throw std::runtime_error("server printed \"" + line + "\"");
        g_port = static_cast<uint16_t>(std::atoi(line.c_str() + prefix.size()));
    } catch (const std::exception &e) {
        std::printf("FAIL server start: %s\n%s", e.what(), slurp(server_log).c_str());
        kill(server, SIGKILL);
        wait_exit(server);
        std::printf("store-rdma: 0 passed, 1 failed\n");
        return 1;
    }

    run_test("server advertises CAP_RDMA_DESC", [] {
        zcs::Client c = zcs::Client::connect("127.0.0.1", g_port);
        CHECK((c.info().capabilities & (zcs::CAP_TCP_VALUES | zcs::CAP_RDMA_DESC)) == (zcs::CAP_TCP_VALUES | zcs::CAP_RDMA_DESC));
        CHECK(c.stats().at("rdma") == 1);
    });
    run_test("client --rdma put/get 4 KiB, bytes compared", [] { cli_round_trip(4096, 1); });
    run_test("client --rdma put/get 16 MiB, bytes compared", [] { cli_round_trip(16 << 20, 2); });
    run_test("client without flags picks RDMA when both sides have a device", [] {
        const std::vector<uint8_t> v = pattern(100000, 3);
        write_file(g_tmp + "/auto", v);
        const uint64_t puts = stats().at("rdma_puts");
        client_ok({"put", "auto", g_tmp + "/auto"});
        CHECK(stats().at("rdma_puts") == puts + 1);
        client_ok({"--tcp", "put", "auto-tcp", g_tmp + "/auto"});
        CHECK(stats().at("rdma_puts") == puts + 1);
        client_ok({"get", "auto-tcp", g_tmp + "/auto.out"});
        CHECK(read_file(g_tmp + "/auto.out") == v);
    });
    run_test("client killed mid-RDMA-PUT (after WRITE, before COMMIT) leaves nothing", [] {
        const Stats before = stats();
        kill_holder("put", "killed-put", 1 << 20, [] {
            const Stats s = stats();
            CHECK(s.at("rdma_leases_open") == 1);
            zcs::Client c = zcs::Client::connect("127.0.0.1", g_port);
            CHECK(!c.exists("killed-put"));
            expect_status(zcs::ST_BUSY, [&] { c.get("killed-put"); });
            expect_status(zcs::ST_BUSY, [&] { c.del("killed-put"); });
        });
        const Stats after = wait_stats([&](Stats &s) { return s.at("puts_aborted") > before.at("puts_aborted"); });
        CHECK(after.at("puts_aborted") == before.at("puts_aborted") + 1);
        CHECK(after.at("rdma_leases_dropped") == before.at("rdma_leases_dropped") + 1);
        CHECK(after.at("rdma_leases_open") == 0);
        CHECK(after.at("object_count") == before.at("object_count"));
        CHECK(after.at("used_bytes") == before.at("used_bytes"));
        std::printf("     STATS after the kill: puts_aborted %llu, rdma_leases_dropped %llu, rdma_leases_open %llu\n",
                    static_cast<unsigned long long>(after.at("puts_aborted")),
                    static_cast<unsigned long long>(after.at("rdma_leases_dropped")),
                    static_cast<unsigned long long>(after.at("rdma_leases_open")));
        // The key is free again: a new RDMA put of it succeeds and reads back.
        const std::vector<uint8_t> v = pattern(1 << 20, 6);
        write_file(g_tmp + "/again", v);
        client_ok({"--rdma", "put", "killed-put", g_tmp + "/again"});
        client_ok({"--rdma", "get", "killed-put", g_tmp + "/again.out"});
        CHECK(read_file(g_tmp + "/again.out") == v);
    });
    run_test("client killed holding an RDMA GET lease releases its reference", [] {
        const std::vector<uint8_t> v = pattern(16 << 20, 8);
        write_file(g_tmp + "/held", v);
        client_ok({"--tcp", "put", "held-get", g_tmp + "/held"});
        const Stats before = stats();
        kill_holder("get", "held-get", v.size(), [] {
            CHECK(stats().at("refs_held") == 1);
            zcs::Client c = zcs::Client::connect("127.0.0.1", g_port);
            CHECK(c.del("held-get"));  // the key goes at once, the memory when the lease ends
        });
        const Stats after = wait_stats([&](Stats &s) { return s.at("refs_held") == 0 && s.at("rdma_leases_open") == 0; });
        CHECK(after.at("refs_held") == 0);
        CHECK(after.at("rdma_leases_dropped") == before.at("rdma_leases_dropped") + 1);
        CHECK(after.at("object_count") == before.at("object_count") - 1);
    });
    run_test("bad, finished, foreign and wrong-kind leases get BAD_LEASE; the server keeps serving", lease_errors);
    run_test("16 MiB through the library: RDMA and TCP, bytes compared", rdma_against_tcp);
    run_test("no lease or reference left; SIGTERM stops the server cleanly", [&] {
        const Stats s = wait_stats([](Stats &st) { return st.at("connections_current") == 1; });
        CHECK(s.at("rdma_leases_open") == 0 && s.at("refs_held") == 0);
        CHECK(s.at("connections_current") == 1);
        CHECK(kill(server, SIGTERM) == 0);
        const int rc = wait_exit(server);
        server = -1;
        if (rc != 0) throw std::runtime_error("server exit " + std::to_string(rc) + "\n" + slurp(server_log));
    });
    if (server > 0) {
        kill(server, SIGKILL);
        wait_exit(server);
    }
    close(p[0]);
    if (g_failed > 0) std::printf("--- server log\n%s", slurp(server_log).c_str());
    std::printf("store-rdma: %d passed, %d failed\n", g_passed, g_failed);
    return g_failed == 0 ? 0 : 1;
}
