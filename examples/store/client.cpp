// client.cpp: command-line client and load generator for the zcopy key-value store.
//
//   zcopy-store-client [--host H] --port P put KEY FILE|-
//   zcopy-store-client --port P get KEY [FILE]
//   zcopy-store-client --port P bench [--conns N] [--seconds S] ...
//   zcopy-store-client --rdma --port P put KEY FILE    (--tcp forces TCP; default: RDMA if both
//                                                      sides have a device, for put and get)
//
// Exit status: 0 success, 2 key not found, 1 any other failure, 64 bad usage.

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "client.hpp"

namespace {

constexpr int kExitNotFound = 2;
constexpr int kExitUsage = 64;

struct Target {
    std::string host = "127.0.0.1";
    uint16_t port = 0;
    zcs::Transport transport = zcs::Transport::Auto;
};

void usage() {
    std::fprintf(stderr,
                 "usage: zcopy-store-client [--host H] --port P [--tcp|--rdma] COMMAND ...\n"
                 "  --tcp / --rdma          how put and get move the value: by default RDMA when the\n"
                 "                          server offers it and this host has an RDMA device, else TCP;\n"
                 "                          --rdma fails when either side lacks it (other commands: TCP)\n"
                 "  put KEY FILE|-          store a file (or stdin)\n"
                 "  get KEY [FILE]          write the value to FILE (or stdout)\n"
                 "  del KEY                 remove a key\n"
                 "  exists KEY              print 1 or 0\n"
                 "  stats                   print the server's counters\n"
                 "  mput KEY=FILE ...       store several files in one batch\n"
                 "  mget KEY=FILE ...       fetch several keys in one batch\n"
                 "  bench [--conns N] [--seconds S] [--small-count N] [--large-count N]\n"
                 "        [--small-size BYTES] [--large-size BYTES] [--verify-every N]\n"
                 "                          puts, gets and deletes of small and large values over N\n"
                 "                          connections; prints ops/s and GB/s per phase\n");
}

bool read_file(const std::string &path, std::vector<uint8_t> &out) {
    int fd = path == "-" ? STDIN_FILENO : open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        std::fprintf(stderr, "open %s: %s\n", path.c_str(), std::strerror(errno));
        return false;
    }
    out.clear();
    uint8_t chunk[1 << 16];
    for (;;) {
        ssize_t n = read(fd, chunk, sizeof(chunk));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            std::fprintf(stderr, "read %s: %s\n", path.c_str(), std::strerror(errno));
            if (fd != STDIN_FILENO) close(fd);
            return false;
        }
        if (n == 0) break;
        out.insert(out.end(), chunk, chunk + n);
    }
    if (fd != STDIN_FILENO) close(fd);
    return true;
}

bool write_file(const std::string &path, const std::vector<uint8_t> &data) {
    int fd = path == "-" ? STDOUT_FILENO : open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        std::fprintf(stderr, "open %s: %s\n", path.c_str(), std::strerror(errno));
        return false;
    }
    size_t done = 0;
    while (done < data.size()) {
        ssize_t n = write(fd, data.data() + done, data.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            std::fprintf(stderr, "write %s: %s\n", path.c_str(), std::strerror(errno));
            if (fd != STDOUT_FILENO) close(fd);
            return false;
        }
        done += static_cast<size_t>(n);
    }
    return fd == STDOUT_FILENO || close(fd) == 0;
}

/// Splits "KEY=FILE" at its last '=' (keys may contain '=', file names rarely do).
bool split_pair(const std::string &arg, std::string &key, std::string &file) {
    const size_t eq = arg.rfind('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == arg.size()) {
        std::fprintf(stderr, "expected KEY=FILE, got %s\n", arg.c_str());
        return false;
    }
    key = arg.substr(0, eq);
    file = arg.substr(eq + 1);
    return true;
}

// ---------------------------------------------------------------------------------------------
// bench

struct BenchOptions {
    unsigned conns = 4;
    double seconds = 2.0;        // length of each GET phase
    unsigned small_count = 2000;  // keys per connection
    unsigned large_count = 8;
    size_t small_size = 4096;
    size_t large_size = 4u << 20;
    unsigned verify_every = 16;  // every Nth GET compares all bytes
};

/// Bench values: one random block per size, with the key's id written over its first and last
/// 8 bytes, so that every key's value is distinct and checkable with one memcmp.
struct ValueModel {
    std::vector<uint8_t> block;
    explicit ValueModel(size_t size, uint64_t seed) : block(size) {
        std::mt19937_64 rng(seed);
        for (size_t i = 0; i < size; i += 8) {
            const uint64_t v = rng();
            std::memcpy(block.data() + i, &v, std::min<size_t>(8, size - i));
        }
    }
    void stamp(uint8_t *buf, uint64_t id) const {
        if (block.size() < 16) return;
        std::memcpy(buf, &id, 8);
        std::memcpy(buf + block.size() - 8, &id, 8);
    }
    bool check(const uint8_t *buf, size_t n, uint64_t id) const {
        if (n != block.size()) return false;
        if (block.size() < 16) return std::memcmp(buf, block.data(), n) == 0;
        uint64_t a = 0, b = 0;
        std::memcpy(&a, buf, 8);
        std::memcpy(&b, buf + n - 8, 8);
        return a == id && b == id && std::memcmp(buf + 8, block.data() + 8, n - 16) == 0;
    }
};

struct PhaseResult {
    const char *op;
    size_t size;
    uint64_t ops;
    double seconds;
};

void print_result(const PhaseResult &r, unsigned conns) {
    const double ops_s = r.seconds > 0 ? r.ops / r.seconds : 0;
    // A DEL moves no value bytes, so it has no GB/s.
    const double gb_s = std::strcmp(r.op, "del") == 0 ? 0 : ops_s * static_cast<double>(r.size) / 1e9;
    std::printf("RESULT op=%s size=%zu conns=%u ops=%llu seconds=%.3f ops_per_s=%.0f gb_per_s=%.3f\n", r.op, r.size, conns,
                static_cast<unsigned long long>(r.ops), r.seconds, ops_s, gb_s);
    std::fflush(stdout);
}

/// Runs `body(thread_index)` on `n` threads at once; the elapsed wall time of the slowest.
template <class F>
double run_threads(unsigned n, F body) {
    std::atomic<unsigned> ready{0};
    std::atomic<bool> go{false};
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < n; t++) {
        threads.emplace_back([&, t] {
            ready++;
            while (!go.load()) std::this_thread::yield();
            body(t);
        });
    }
    while (ready.load() < n) std::this_thread::yield();
    const auto start = std::chrono::steady_clock::now();
    go = true;
    for (auto &th : threads) th.join();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

/// PUT `count` keys per connection, GET them (all connections read all keys) for a fixed time,
/// DEL them. Returns false on the first failure (after reporting it).
bool bench_size(const BenchOptions &o, size_t size, unsigned count, const std::string &run,
                std::vector<zcs::Client> &clients) {
    const ValueModel model(size, size * 7919 + 17);
    const uint64_t total = uint64_t(count) * o.conns;
    auto key_of = [&](uint64_t id) { return run + "/" + std::to_string(size) + "/" + std::to_string(id); };
    std::atomic<bool> failed{false};
    auto guard = [&](unsigned t, auto &&fn) {
        try {
            fn();
        } catch (const std::exception &e) {
            if (!failed.exchange(true)) std::fprintf(stderr, "bench connection %u: %s\n", t, e.what());
        }
    };

    std::vector<uint64_t> ops(o.conns, 0);
    double secs = run_threads(o.conns, [&](unsigned t) {
        guard(t, [&] {
            std::vector<uint8_t> value(model.block);
            for (unsigned i = 0; i < count && !failed; i++) {
                const uint64_t id = uint64_t(t) * count + i;
                model.stamp(value.data(), id);
                clients[t].put(key_of(id), value.data(), value.size());
                ops[t]++;
            }
        });
    });
    if (failed) return false;
    print_result({"put", size, total, secs}, o.conns);

    std::fill(ops.begin(), ops.end(), 0);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(o.seconds);
    secs = run_threads(o.conns, [&](unsigned t) {
        guard(t, [&] {
            std::vector<uint8_t> buf(size);
            // Each connection walks all keys from its own offset, so reads spread over the store.
            uint64_t id = (total / o.conns) * t;
            for (uint64_t n = 0; !failed && std::chrono::steady_clock::now() < deadline; n++) {
                id = (id + 1) % total;
                const size_t got = clients[t].get_into(key_of(id), buf.data(), buf.size());
                if (o.verify_every > 0 && n % o.verify_every == 0 && !model.check(buf.data(), got, id)) {
                    throw std::runtime_error("value of " + key_of(id) + " does not match what was put");
                }
                ops[t]++;
            }
        });
    });
    if (failed) return false;
    uint64_t gets = 0;
    for (uint64_t n : ops) gets += n;
    print_result({"get", size, gets, secs}, o.conns);

    secs = run_threads(o.conns, [&](unsigned t) {
        guard(t, [&] {
            for (unsigned i = 0; i < count; i++) {
                if (!clients[t].del(key_of(uint64_t(t) * count + i))) throw std::runtime_error("bench key vanished");
            }
        });
    });
    if (failed) return false;
    print_result({"del", size, total, secs}, o.conns);
    return true;
}

int bench(const Target &target, int argc, char **argv) {
    BenchOptions o;
    for (int i = 0; i < argc; i++) {
        const std::string a = argv[i];
        if (i + 1 >= argc) {
            usage();
            return kExitUsage;
        }
        const char *v = argv[++i];
        if (a == "--conns") o.conns = static_cast<unsigned>(std::strtoul(v, nullptr, 10));
        else if (a == "--seconds") o.seconds = std::strtod(v, nullptr);
        else if (a == "--small-count") o.small_count = static_cast<unsigned>(std::strtoul(v, nullptr, 10));
        else if (a == "--large-count") o.large_count = static_cast<unsigned>(std::strtoul(v, nullptr, 10));
        else if (a == "--small-size") o.small_size = std::strtoull(v, nullptr, 10);
        else if (a == "--large-size") o.large_size = std::strtoull(v, nullptr, 10);
        else if (a == "--verify-every") o.verify_every = static_cast<unsigned>(std::strtoul(v, nullptr, 10));
        else {
            usage();
            return kExitUsage;
        }
    }
    if (o.conns < 1 || o.conns > 256 || o.seconds <= 0 || o.seconds > 600 || o.small_count < 1 || o.large_count < 1) {
        std::fprintf(stderr, "bench: --conns 1..256, --seconds (0, 600], counts >= 1\n");
        return kExitUsage;
    }
    std::vector<zcs::Client> clients;
    for (unsigned t = 0; t < o.conns; t++) clients.push_back(zcs::Client::connect(target.host, target.port));
    const zcs::ServerInfo &info = clients[0].info();
    for (auto [size, count] : {std::pair<size_t, unsigned>{o.small_size, o.small_count}, {o.large_size, o.large_count}}) {
        // 64: the pool's alignment, the most a value can take beyond its size.
        const uint64_t need = (size + 64) * uint64_t(count) * o.conns;
        if (size > info.max_value || need > info.capacity) {
            std::fprintf(stderr, "bench: %u x %u values of %zu bytes need %llu bytes; the server allows values up to %llu in %llu\n",
                         o.conns, count, size, static_cast<unsigned long long>(need),
                         static_cast<unsigned long long>(info.max_value), static_cast<unsigned long long>(info.capacity));
            return 1;
        }
    }
    std::printf("server %s:%u, %s GET, %u connections, %.1f s per GET phase\n", target.host.c_str(), target.port,
                (info.capabilities & zcs::CAP_COPY_ON_READ) ? "copy-on-read" : "zero-copy", o.conns, o.seconds);
    // A run id keeps concurrent benches (and leftovers of a killed one) apart.
    const std::string run = "bench/" + std::to_string(getpid()) + "-" +
                            std::to_string(std::chrono::steady_clock::now().time_since_epoch().count());
    if (!bench_size(o, o.small_size, o.small_count, run, clients)) return 1;
    if (!bench_size(o, o.large_size, o.large_count, run, clients)) return 1;
    return 0;
}

// ---------------------------------------------------------------------------------------------
// put and get between this process's own zcopy pool and the server's (RDMA or TCP)

/// A pool for one value of up to `bytes`, registered with every RDMA device there is (or, for
/// --rdma, failing without one). Empty when Auto finds no device: the caller then uses TCP.
std::optional<zc::Pool> open_local_pool(zcs::Transport t, uint64_t bytes) {
    // A power of two: the pool's allocator then has one free block of the whole pool (a pool
    // of exactly the value's size rounded to pages may have no single block large enough).
    uint64_t size = 4096;
    while (size < bytes) size *= 2;
    try {
        return zc::Pool(zc::Options().with_size(size).with_rdma(t == zcs::Transport::Rdma ? ZC_RDMA_REQUIRED : ZC_RDMA_AUTO));
    } catch (const zc::Error &e) {
        if (t == zcs::Transport::Rdma) {
            throw zcs::StoreError(zcs::ST_UNSUPPORTED, std::string("--rdma: this client has no usable RDMA device (") + e.what() + ")");
        }
        return std::nullopt;
    }
}

/// Whether put/get go over RDMA: the server must offer it before the client pool is worth
/// registering; --rdma without it is an error naming the side that lacks it.
bool want_rdma(const Target &target, const zcs::Client &c) {
    if (target.transport == zcs::Transport::Tcp) return false;
    if ((c.info().capabilities & zcs::CAP_RDMA_DESC) == 0) {
        if (target.transport == zcs::Transport::Rdma) {
            throw zcs::StoreError(zcs::ST_UNSUPPORTED,
                                  "--rdma: the server does not offer RDMA (no CAP_RDMA_DESC: it has no RDMA device, or runs with --rdma off)");
        }
        return false;
    }
#ifndef ZCS_HAVE_RDMA
    if (target.transport == zcs::Transport::Rdma) {
        throw zcs::StoreError(zcs::ST_UNSUPPORTED, "--rdma: this client was built without RDMA (no <infiniband/verbs.h>)");
    }
    return false;
#else
    return true;
#endif
}

/// Keeps `c` on `pool` for a scope; the queue pair goes before the pool does.
struct PoolUse {
    zcs::Client &c;
    ~PoolUse() { c.release_pool(); }
};

int put_value(const Target &target, zcs::Client &c, const std::string &key, const std::vector<uint8_t> &data) {
    if (want_rdma(target, c)) {
        std::optional<zc::Pool> pool = open_local_pool(target.transport, data.size());
        PoolUse use{c};
        if (pool && c.use_pool(*pool, target.transport)) {
            zc::Buffer b = pool->create("put", data.size());
            if (!data.empty()) std::memcpy(b.data(), data.data(), data.size());
            c.put_buffer(key, b);
            return 0;
        }
    }
    c.put(key, data.data(), data.size());
    return 0;
}

int get_value(const Target &target, zcs::Client &c, const std::string &key, const std::string &file) {
    try {
        if (want_rdma(target, c)) {
            // The value is at most the server's max_value; the local pool must hold it.
            std::optional<zc::Pool> pool = open_local_pool(target.transport, c.info().max_value);
            PoolUse use{c};
            if (pool && c.use_pool(*pool, target.transport)) {
                zc::Buffer b = c.get_buffer(key, "get");
                const zc::Bytes v = b.bytes();
                return write_file(file, std::vector<uint8_t>(v.begin(), v.end())) ? 0 : 1;
            }
        }
        return write_file(file, c.get(key)) ? 0 : 1;
    } catch (const zcs::StoreError &e) {
        std::fprintf(stderr, "%s\n", e.what());
        return e.status() == zcs::ST_NOT_FOUND ? kExitNotFound : 1;
    }
}

// ---------------------------------------------------------------------------------------------

int run_command(const Target &target, const std::string &cmd, int argc, char **argv) {
    if (cmd == "bench") return bench(target, argc, argv);
    zcs::Client c = zcs::Client::connect(target.host, target.port);
    if (cmd == "put" && argc == 2) {
        std::vector<uint8_t> data;
        if (!read_file(argv[1], data)) return 1;
        return put_value(target, c, argv[0], data);
    }
    if (cmd == "get" && (argc == 1 || argc == 2)) return get_value(target, c, argv[0], argc == 2 ? argv[1] : "-");
    if (cmd == "del" && argc == 1) {
        if (c.del(argv[0])) return 0;
        std::fprintf(stderr, "NOT_FOUND: %s\n", argv[0]);
        return kExitNotFound;
    }
    if (cmd == "exists" && argc == 1) {
        std::printf("%d\n", c.exists(argv[0]) ? 1 : 0);
        return 0;
    }
    if (cmd == "stats" && argc == 0) {
        for (const auto &[name, value] : c.stats()) std::printf("%s %llu\n", name.c_str(), static_cast<unsigned long long>(value));
        return 0;
    }
    if (cmd == "mput" && argc >= 1) {
        std::vector<std::string> keys(argc);
        std::vector<std::vector<uint8_t>> values(argc);
        std::vector<zcs::PutItem> items;
        for (int i = 0; i < argc; i++) {
            std::string file;
            if (!split_pair(argv[i], keys[i], file) || !read_file(file, values[i])) return 1;
        }
        for (int i = 0; i < argc; i++) items.push_back({keys[i], values[i].data(), values[i].size()});
        const std::vector<uint16_t> st = c.batch_put(items);
        int rc = 0;
        for (int i = 0; i < argc; i++) {
            std::printf("%s %s\n", keys[i].c_str(), zcs::status_name(st[i]));
            if (st[i] != zcs::ST_OK) rc = 1;
        }
        return rc;
    }
    if (cmd == "mget" && argc >= 1) {
        std::vector<std::string> keys(argc), files(argc);
        for (int i = 0; i < argc; i++) {
            if (!split_pair(argv[i], keys[i], files[i])) return 1;
        }
        const std::vector<zcs::GetResult> got = c.batch_get(std::vector<std::string_view>(keys.begin(), keys.end()));
        int rc = 0;
        for (int i = 0; i < argc; i++) {
            std::printf("%s %s\n", keys[i].c_str(), zcs::status_name(got[i].status));
            if (got[i].status == zcs::ST_OK) {
                if (!write_file(files[i], got[i].value)) rc = 1;
            } else if (rc == 0) {
                rc = got[i].status == zcs::ST_NOT_FOUND ? kExitNotFound : 1;
            }
        }
        return rc;
    }
    usage();
    return kExitUsage;
}

}  // namespace

int main(int argc, char **argv) {
    Target target;
    int i = 1;
    for (; i + 1 < argc && argv[i][0] == '-' && argv[i][1] == '-'; i++) {
        const std::string a = argv[i];
        if (a == "--host") {
            target.host = argv[++i];
        } else if (a == "--port") {
            target.port = static_cast<uint16_t>(std::strtoul(argv[++i], nullptr, 10));
        } else if (a == "--tcp") {
            target.transport = zcs::Transport::Tcp;
        } else if (a == "--rdma") {
            target.transport = zcs::Transport::Rdma;
        } else {
            usage();
            return kExitUsage;
        }
    }
    if (i >= argc || target.port == 0) {
        usage();
        return kExitUsage;
    }
    try {
        return run_command(target, argv[i], argc - i - 1, argv + i + 1);
    } catch (const std::exception &e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
}
