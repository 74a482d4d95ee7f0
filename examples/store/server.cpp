// server.cpp: a Mooncake-like key-value store over TCP whose values live in one zcopy pool.
//
// PUT receives the value straight into the pool buffer created for the key (recv into
// zc_buffer_data, then seal); GET takes a reference to the sealed object and sends straight from
// the pool pointer, releasing it when the send is done. `--copy-on-read` is the baseline: GET
// copies the value into a per-request heap buffer and sends from that. Wire format: PROTOCOL.md.
//
// RDMA (when the pool is registered with a device, `--rdma auto|required`): RDMA_CONNECT brings
// up one RC queue pair per connection on the pool's protection domain; an RDMA PUT creates the
// object and answers its descriptor and a lease (the client RDMA-WRITEs, then COMMITs: sealed);
// an RDMA GET takes a reference and answers the sealed object's descriptor (the client RDMA-READs,
// then sends DONE: released). Leases live on the connection's thread too, and are aborted or
// released when it ends, after its queue pair is destroyed.
//
// One thread per connection. Each connection's state (the header being read, the unsealed
// zc::Buffer a PUT is receiving into, the references a GET is sending from) lives on its thread's
// stack, so every exit path, including a peer that vanishes mid-frame, releases it by RAII: an
// unsealed buffer is aborted, a reference dropped. A poll loop would need the same state as an
// explicit per-connection state machine with resumable partial reads; with connections bounded
// by --max-conns, a blocked thread per connection is the simpler correct design.
//
// Time limits: a frame (header, key and body) must arrive by a deadline set when its first byte
// does, --io-timeout-ms plus its size at --min-rate, and a reply must be taken by the same kind
// of deadline; a connection idle between frames is closed after --idle-timeout-ms; and when every
// slot is taken, the connection idle longest is closed to admit a new one. --max-conns is fitted
// to RLIMIT_NOFILE at start, and a spare descriptor lets the accept loop refuse a connection
// when descriptors run out anyway, instead of spinning on EMFILE.

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <map>
#include <string>
#include <optional>
#include <string_view>
#include <system_error>
#include <thread>
#include <vector>

#include "protocol.hpp"
#include "rdma.hpp"
#include "zcopy.hpp"

namespace {

using namespace zcs;

struct Config {
    std::string listen = "127.0.0.1";
    uint16_t port = 0;
    uint64_t pool_size = 256ull << 20;
    uint64_t max_value = 64ull << 20;
    uint32_t max_key = 1024;
    uint32_t max_batch = 128;
    uint32_t max_conns = 64;
    uint32_t io_timeout_ms = 10000;
    uint64_t min_rate = 1ull << 20;     // bytes/s a frame's deadline allows beyond io_timeout_ms
    uint32_t idle_timeout_ms = 300000;  // between frames; 0: never
    uint32_t keepalive_s = 60;          // TCP keep-alive: silence before the first probe; 0: off
    bool copy_on_read = false;
    bool evict_lru = false;
#ifdef ZCS_HAVE_RDMA
    uint32_t rdma = ZC_RDMA_AUTO;  // register the pool with every device there is
#else
    uint32_t rdma = ZC_RDMA_OFF;  // built without <infiniband/verbs.h>: no queue pairs
#endif
    int gid_index = rdma::default_gid_index();
    uint32_t max_leases = 256;  // open RDMA leases per connection
};

/// Server-wide counters, reported by STATS.
struct Counters {
    std::atomic<uint64_t> connections_current{0}, connections_total{0}, connections_refused{0};
    std::atomic<uint64_t> connections_evicted{0}, connections_idle_closed{0}, connections_timed_out{0};
    std::atomic<uint64_t> puts{0}, gets{0}, dels{0}, exists{0}, batch_puts{0}, batch_gets{0};
    std::atomic<uint64_t> error_replies{0}, item_errors{0}, frames_broken{0};
    std::atomic<uint64_t> puts_aborted{0}, gets_interrupted{0};
    std::atomic<uint64_t> refs_held{0};
    std::atomic<uint64_t> bytes_in{0}, bytes_out{0}, bytes_copied{0};
    std::atomic<uint64_t> rdma_connects{0}, rdma_puts{0}, rdma_gets{0}, rdma_leases_open{0}, rdma_leases_dropped{0};
    std::atomic<uint64_t> rdma_bytes_in{0}, rdma_bytes_out{0};
};

/// Counts a reference the server holds on a client's behalf (STATS refs_held) for its lifetime.
class RefCount {
public:
    explicit RefCount(std::atomic<uint64_t> &c, uint64_t n = 1) : c_(c), n_(n) { c_ += n_; }
    ~RefCount() { c_ -= n_; }
    RefCount(const RefCount &) = delete;
    RefCount &operator=(const RefCount &) = delete;

private:
    std::atomic<uint64_t> &c_;
    uint64_t n_;
};

/// A zcopy failure as a wire status.
Status map_status(zc_status s) {
    switch (s) {
        case ZC_ERR_NOT_FOUND: return ST_NOT_FOUND;
        case ZC_ERR_ALREADY_EXISTS: return ST_ALREADY_EXISTS;
        case ZC_ERR_NOT_SEALED: return ST_BUSY;
        case ZC_ERR_OUT_OF_MEMORY: return ST_POOL_FULL;
        case ZC_ERR_INVALID_ARGUMENT: return ST_BAD_REQUEST;
        default: return ST_INTERNAL;
    }
}

using Clock = std::chrono::steady_clock;

/// A connection as the accept loop sees it, shared with the connection's thread. Only an idle
/// connection (between frames, no RDMA lease open) may be evicted to admit another: the thread
/// moves itself to kBusy before it acts on a request and the accept loop moves it from kIdle to
/// kEvicted, both by compare-and-swap, so a request in flight is never cut off by an eviction.
struct Slot {
    enum State : int { kIdle, kHolding, kBusy, kEvicted };
    std::atomic<int> state{kIdle};
    std::atomic<int64_t> idle_since{Clock::now().time_since_epoch().count()};

    /// False when the connection was evicted: it must close without acting on the request.
    bool begin_frame() {
        int s = state.load();
        while (s != kEvicted) {
            if (state.compare_exchange_weak(s, kBusy)) return true;
        }
        return false;
    }
    /// Between frames: evictable unless the connection holds leases.
    void end_frame(bool holding) {
        idle_since.store(Clock::now().time_since_epoch().count());
        state.store(holding ? kHolding : kIdle);
    }
};

class Server;

/// One client connection, served on its own thread until the peer closes, the stream breaks, or
/// the server shuts down.
class Connection {
public:
    Connection(Server &server, int fd, Slot &slot) : s_(server), fd_(fd), slot_(slot) {}
    void serve();

private:
    // Each handler returns false when the connection must close (the stream is unusable).
    bool handle_frame();
    bool do_hello(const Header &h);
    bool do_put(const Header &h);
    bool do_get(const Header &h);
    bool do_key_op(const Header &h);
    bool do_batch_put(const Header &h);
    bool do_batch_get(const Header &h);
    bool do_stats(const Header &h);
    // RDMA (CAP_RDMA_DESC only)
    bool do_rdma_connect(const Header &h);
    bool do_rdma_put(const Header &h);
    bool do_rdma_get(const Header &h);
    bool do_lease_end(const Header &h);
    /// Answers the descriptor of `buf` and keeps it as a new lease of this connection.
    bool grant_lease(const Header &h, zc::Buffer buf, bool put);
    /// Destroys the queue pair, then aborts the unsealed objects of open PUT leases and releases
    /// the references of open GET leases (a connection's end).
    void drop_rdma();

    /// Skips what is left of the frame (`remaining` bytes), then sends an error reply.
    bool refuse(const Header &h, uint64_t remaining, Status st, const std::string &msg);
    bool reply(const Header &h, Status st, const void *body, size_t len);
    bool reply_error(const Header &h, Status st, const std::string &msg);
    /// Reads the key of a single-key request after checking its length and that the frame has
    /// no body; on a refusal `*keep` says whether the stream can go on.
    bool read_key(const Header &h, std::string &key, bool *keep);
    bool io_failed(io::Result r, const char *what);

    /// Waits, up to the idle timeout, for the first bytes of the next request; `*got` of them
    /// are in `raw`. Timeout means the connection was idle for the whole idle timeout.
    io::Result wait_for_request(uint8_t *raw, size_t *got);
    /// Receives exactly `n` bytes of the current frame by its deadline (`deadline_`).
    io::Result recv(void *buf, size_t n);
    /// Reads and drops `n` bytes of the current frame by its deadline, through a small buffer.
    io::Result discard(uint64_t n);
    /// Sends a reply by its own deadline (--io-timeout-ms plus its size at --min-rate).
    io::Result send(std::vector<iovec> &iov);
    /// Sets SO_RCVTIMEO or SO_SNDTIMEO to the time left until `deadline`; false if none is left.
    bool set_timeout(int opt, Clock::time_point deadline);

    Server &s_;
    int fd_;
    Slot &slot_;
    Clock::time_point deadline_;  // the current frame's
    int64_t rcv_timeout_us_ = -1;  // what SO_RCVTIMEO is set to (-1: a frame's deadline)

    struct OpenLease {
        bool put;        // an RDMA PUT's unsealed object, or an RDMA GET's reference
        zc::Buffer buf;
    };
    std::map<uint64_t, OpenLease> leases_;
#ifdef ZCS_HAVE_RDMA
    // Declared after leases_, so that it is destroyed first.
    std::unique_ptr<rdma::Endpoint> ep_;
#endif
};

class Server {
public:
    explicit Server(const Config &cfg)
        : cfg_(cfg),
          pool_(zc::Options()
                    .with_size(cfg.pool_size)
                    .with_rdma(cfg.rdma)
                    .with_eviction(cfg.evict_lru ? ZC_EVICT_LRU : ZC_EVICT_NONE)) {
        // A value can never be larger than the pool.
        cfg_.max_value = std::min<uint64_t>(cfg_.max_value, pool_.stats().capacity_bytes);
#ifdef ZCS_HAVE_RDMA
        // Queue pairs are made on registration 0's protection domain, so its keys are valid.
        rdma_ = pool_.rdma_count() > 0;
#endif
    }

    const Config &cfg() const { return cfg_; }
    zc::Pool &pool() { return pool_; }
    Counters &counters() { return c_; }

    uint32_t capabilities() const {
        return CAP_TCP_VALUES | (cfg_.copy_on_read ? CAP_COPY_ON_READ : 0) | (rdma_ ? CAP_RDMA_DESC : 0);
    }
    bool rdma() const { return rdma_; }

    /// Binds, prints "listening HOST:PORT" and serves until SIGINT or SIGTERM.
    int run();

    /// When a transfer of `bytes` started at `start` must be done: --io-timeout-ms plus the
    /// time `bytes` take at --min-rate. A per-call timeout would be renewed by every byte of a
    /// trickle; a fixed deadline would cut off a large value on a slow link.
    Clock::time_point deadline(Clock::time_point start, uint64_t bytes) const;

private:
    /// Fits --max-conns to RLIMIT_NOFILE (raising the soft limit towards the hard one first);
    /// false when the limit leaves no descriptor for connections.
    bool fit_fd_limit();
    int bind_listener();
    void accept_one();
    /// Closes the connection idle longest and waits for its slot; false when none is idle.
    bool evict_idle(std::unique_lock<std::mutex> &lock);
    /// Answers SERVER_BUSY (best effort, without blocking) and closes.
    void refuse_connection(int fd, const std::string &why);
    /// accept failed with EMFILE or ENFILE: takes the waiting connection off the queue with the
    /// spare descriptor and refuses it, or stops polling the listener for a moment.
    void out_of_fds(int err);
    void pause_accepting() { accept_paused_until_ = Clock::now() + std::chrono::milliseconds(100); }
    void shutdown_connections();
    void finish_connection(int fd);

    Config cfg_;
    zc::Pool pool_;
    bool rdma_ = false;
    std::atomic<uint64_t> next_lease_{1};  // server-wide, so another connection's id is never valid here
    Counters c_;
    int listen_fd_ = -1;
    int spare_fd_ = -1;  // kept open to be closed when descriptors run out (out_of_fds)
    bool fds_exhausted_ = false;
    Clock::time_point accept_paused_until_{};
    std::mutex mu_;
    std::condition_variable cv_;
    // Live connection sockets, so shutdown can unblock their threads and the accept loop can
    // find an idle one to evict. A slot is removed under mu_ before its socket is closed.
    std::map<int, std::unique_ptr<Slot>> conns_;

    friend class Connection;
};

// ---------------------------------------------------------------------------------------------
// Replies and refusals

bool Connection::io_failed(io::Result r, const char *what) {
    if (r == io::Result::Timeout) s_.c_.connections_timed_out++;
    if (r != io::Result::Eof) {
        std::fprintf(stderr, "connection %d: %s: %s\n", fd_, what, io::result_name(r));
    }
    return false;
}

// ---------------------------------------------------------------------------------------------
// Socket I/O against deadlines

Clock::time_point Server::deadline(Clock::time_point start, uint64_t bytes) const {
    // Capped so that the sum stays far inside the clock's range (1e8 s is three years).
    const double extra = std::min(static_cast<double>(bytes) / static_cast<double>(cfg_.min_rate), 1e8);
    return start + std::chrono::milliseconds(cfg_.io_timeout_ms) +
           std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(extra));
}

bool Connection::set_timeout(int opt, Clock::time_point deadline) {
    const int64_t left = std::chrono::ceil<std::chrono::microseconds>(deadline - Clock::now()).count();
    if (left <= 0) return false;
    // Never {0, 0}, which would mean no timeout at all.
    timeval tv{static_cast<time_t>(left / 1000000), static_cast<suseconds_t>(left % 1000000)};
    setsockopt(fd_, SOL_SOCKET, opt, &tv, sizeof(tv));
    if (opt == SO_RCVTIMEO) rcv_timeout_us_ = -1;
    return true;
}

io::Result Connection::wait_for_request(uint8_t *raw, size_t *got) {
    // One blocking recv, as before: the common case costs no extra system call. SO_RCVTIMEO is
    // set to the idle timeout only when a frame's deadline changed it.
    const int64_t idle_us = int64_t(s_.cfg_.idle_timeout_ms) * 1000;
    if (rcv_timeout_us_ != idle_us) {
        timeval tv{static_cast<time_t>(idle_us / 1000000), static_cast<suseconds_t>(idle_us % 1000000)};
        setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));  // {0, 0}: wait for ever
        rcv_timeout_us_ = idle_us;
    }
    for (;;) {
        ssize_t r = ::recv(fd_, raw, kHeaderSize, 0);
        if (r > 0) {
            *got = static_cast<size_t>(r);
            return io::Result::Ok;
        }
        if (r == 0) return io::Result::Eof;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return io::Result::Timeout;
        return io::Result::Error;
    }
}

io::Result Connection::recv(void *buf, size_t n) {
    auto *p = static_cast<uint8_t *>(buf);
    size_t got = 0;
    while (got < n) {
        // First what has arrived, without waiting; then one wait in the kernel for the rest,
        // bounded by the time left until the frame's deadline.
        ssize_t r = ::recv(fd_, p + got, n - got, MSG_DONTWAIT);
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            if (!set_timeout(SO_RCVTIMEO, deadline_)) return io::Result::Timeout;
            r = ::recv(fd_, p + got, n - got, MSG_WAITALL);
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) continue;  // set_timeout decides
        }
        if (r > 0) {
            got += static_cast<size_t>(r);
        } else if (r == 0) {
            return io::Result::Eof;
        } else if (errno != EINTR) {
            return io::Result::Error;
        }
    }
    return io::Result::Ok;
}

io::Result Connection::discard(uint64_t n) {
    uint8_t scratch[64 * 1024];
    while (n > 0) {
        const size_t chunk = n < sizeof(scratch) ? static_cast<size_t>(n) : sizeof(scratch);
        io::Result r = recv(scratch, chunk);
        if (r != io::Result::Ok) return r;
        n -= chunk;
    }
    return io::Result::Ok;
}

io::Result Connection::send(std::vector<iovec> &iov) {
    uint64_t total = 0;
    for (const iovec &v : iov) total += v.iov_len;
    const Clock::time_point deadline = s_.deadline(Clock::now(), total);
    size_t first = 0;
    bool wait = false;  // the last attempt found the socket buffer full
    while (first < iov.size()) {
        if (iov[first].iov_len == 0) {
            first++;
            continue;
        }
        if (wait && !set_timeout(SO_SNDTIMEO, deadline)) return io::Result::Timeout;
        msghdr msg{};
        msg.msg_iov = &iov[first];
        const size_t count = iov.size() - first;
        msg.msg_iovlen = count < static_cast<size_t>(IOV_MAX) ? count : static_cast<size_t>(IOV_MAX);
        ssize_t r = ::sendmsg(fd_, &msg, MSG_NOSIGNAL | (wait ? 0 : MSG_DONTWAIT));
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) return io::Result::Error;
            wait = true;
            continue;
        }
        wait = false;
        io::consume(iov, first, static_cast<size_t>(r));
    }
    return io::Result::Ok;
}

bool Connection::reply(const Header &req, Status st, const void *body, size_t len) {
    Header h;
    h.opcode = static_cast<uint8_t>(req.opcode | kReplyBit);
    h.request_id = req.request_id;
    h.status = st;
    h.value_len = len;
    uint8_t raw[kHeaderSize];
    h.encode(raw);
    std::vector<iovec> iov{{raw, kHeaderSize}, {const_cast<void *>(body), len}};
    io::Result r = send(iov);
    if (r != io::Result::Ok) return io_failed(r, "send reply");
    return true;
}

bool Connection::reply_error(const Header &h, Status st, const std::string &msg) {
    s_.c_.error_replies++;
    return reply(h, st, msg.data(), msg.size());
}

bool Connection::refuse(const Header &h, uint64_t remaining, Status st, const std::string &msg) {
    // The header's lengths are trusted (magic and version matched), so skipping the rest of the
    // frame keeps the stream in step and the connection usable.
    io::Result r = discard(remaining);
    if (r != io::Result::Ok) return io_failed(r, "skip refused frame");
    return reply_error(h, st, msg);
}

bool Connection::read_key(const Header &h, std::string &key, bool *keep) {
    const uint64_t frame = h.key_len + h.value_len;
    if (h.key_len == 0 || h.key_len > s_.cfg_.max_key) {
        *keep = refuse(h, frame, ST_BAD_KEY,
                       "key length " + std::to_string(h.key_len) + " not in 1.." + std::to_string(s_.cfg_.max_key));
        return false;
    }
    if (h.opcode != OP_PUT && h.value_len != 0) {
        *keep = refuse(h, frame, ST_BAD_REQUEST, "this request carries no body; value_len must be 0");
        return false;
    }
    key.resize(h.key_len);
    io::Result r = recv(key.data(), key.size());
    if (r != io::Result::Ok) {
        *keep = io_failed(r, "read key");
        return false;
    }
    return true;
}

// ---------------------------------------------------------------------------------------------
// Requests

bool Connection::do_hello(const Header &h) {
    if (h.key_len != 0 || h.value_len != 0) {
        return refuse(h, h.key_len + h.value_len, ST_BAD_REQUEST, "HELLO carries no key or body");
    }
    const Config &cfg = s_.cfg_;
    uint8_t body[kHelloReplySize] = {};
    put_u32(body + 0, kVersion);
    put_u32(body + 4, s_.capabilities());
    put_u32(body + 8, cfg.max_key);
    put_u32(body + 12, cfg.max_batch);
    put_u64(body + 16, cfg.max_value);
    put_u64(body + 24, s_.pool_.stats().capacity_bytes);
    return reply(h, ST_OK, body, sizeof(body));
}

bool Connection::do_put(const Header &h) {
    bool keep = true;
    std::string key;
    if (!read_key(h, key, &keep)) return keep;
    if (h.value_len > s_.cfg_.max_value) {
        return refuse(h, h.value_len, ST_VALUE_TOO_LARGE,
                      "value of " + std::to_string(h.value_len) + " bytes exceeds the maximum of " +
                          std::to_string(s_.cfg_.max_value));
    }
    zc::Buffer buf;
    try {
        buf = s_.pool_.create(key, h.value_len);
    } catch (const zc::Error &e) {
        return refuse(h, h.value_len, map_status(e.status()), e.what());
    }
    // The value goes from the socket straight into the pool: no staging buffer.
    if (h.value_len > 0) {
        io::Result r = recv(buf.data(), h.value_len);
        if (r != io::Result::Ok) {
            // Returning drops `buf` unsealed, which aborts the object and frees its memory.
            s_.c_.puts_aborted++;
            return io_failed(r, "receive PUT value");
        }
        s_.c_.bytes_in += h.value_len;
    }
    try {
        buf.seal();
    } catch (const zc::Error &e) {
        return reply_error(h, map_status(e.status()), e.what());
    }
    buf = zc::Buffer();  // the store keeps the object; the server needs no reference to it
    s_.c_.puts++;
    return reply(h, ST_OK, nullptr, 0);
}

bool Connection::do_get(const Header &h) {
    bool keep = true;
    std::string key;
    if (!read_key(h, key, &keep)) return keep;
    std::optional<RefCount> held;  // declared first, so it is dropped after `buf` is released
    zc::Buffer buf;
    try {
        buf = s_.pool_.get(key);
    } catch (const zc::Error &e) {
        return reply_error(h, map_status(e.status()), e.what());
    }
    if (!s_.cfg_.copy_on_read) held.emplace(s_.c_.refs_held);
    const size_t size = buf.size();

    Header out;
    out.opcode = static_cast<uint8_t>(h.opcode | kReplyBit);
    out.request_id = h.request_id;
    out.value_len = size;
    uint8_t raw[kHeaderSize];
    out.encode(raw);

    std::unique_ptr<uint8_t[]> bounce;
    const void *src = buf.cdata();
    if (s_.cfg_.copy_on_read) {
        // The baseline: what a store without shared buffers does, a private copy per request.
        bounce.reset(new uint8_t[size > 0 ? size : 1]);
        std::memcpy(bounce.get(), buf.cdata(), size);
        s_.c_.bytes_copied += size;
        src = bounce.get();
        buf = zc::Buffer();
    }
    // One sendmsg: the header and the value, straight from the pool (or from the bounce copy).
    std::vector<iovec> iov{{raw, kHeaderSize}, {const_cast<void *>(src), size}};
    io::Result r = send(iov);
    if (r != io::Result::Ok) {
        s_.c_.gets_interrupted++;  // `buf` is released on return
        return io_failed(r, "send GET value");
    }
    s_.c_.bytes_out += size;
    s_.c_.gets++;
    return true;
}

bool Connection::do_key_op(const Header &h) {
    bool keep = true;
    std::string key;
    if (!read_key(h, key, &keep)) return keep;
    if (h.opcode == OP_EXISTS) {
        s_.c_.exists++;
        const uint8_t present = s_.pool_.contains(key) ? 1 : 0;
        return reply(h, ST_OK, &present, 1);
    }
    try {
        s_.pool_.erase(key);
    } catch (const zc::Error &e) {
        return reply_error(h, map_status(e.status()), e.what());
    }
    s_.c_.dels++;
    return reply(h, ST_OK, nullptr, 0);
}

bool Connection::do_batch_put(const Header &h) {
    const Config &cfg = s_.cfg_;
    if (h.key_len != 0) return refuse(h, h.key_len + h.value_len, ST_BAD_REQUEST, "BATCH_PUT carries no key");
    uint64_t left = h.value_len;  // body bytes not read yet
    auto recv_body = [&](void *p, size_t n) {
        io::Result r = recv(p, n);
        if (r == io::Result::Ok) left -= n;
        return r;
    };
    if (left < kBatchCountSize) return refuse(h, left, ST_BAD_REQUEST, "BATCH_PUT body shorter than its count");
    uint8_t raw[kBatchPutItemSize];
    io::Result r = recv_body(raw, kBatchCountSize);
    if (r != io::Result::Ok) return io_failed(r, "read batch count");
    const uint32_t count = get_u32(raw);
    if (count > cfg.max_batch) {
        return refuse(h, left, ST_BATCH_TOO_LARGE,
                      "batch of " + std::to_string(count) + " items exceeds the maximum of " + std::to_string(cfg.max_batch));
    }

    // Items are created and filled in order but sealed only once the whole frame is in and well
    // formed: a malformed or interrupted batch commits nothing (dropping the unsealed buffers
    // aborts them). Failed items (exists, too large, pool full) do not stop the others.
    std::vector<zc::Buffer> bufs(count);
    std::vector<uint16_t> statuses(count, ST_OK);
    std::string key;
    const char *malformed = nullptr;
    for (uint32_t i = 0; i < count && malformed == nullptr; i++) {
        if (left < kBatchPutItemSize) {
            malformed = "BATCH_PUT item header runs past the body";
            break;
        }
        if ((r = recv_body(raw, kBatchPutItemSize)) != io::Result::Ok) return io_failed(r, "read batch item");
        const uint32_t key_len = get_u32(raw);
        const uint64_t value_len = get_u64(raw + 8);
        if (get_u32(raw + 4) != 0) {
            malformed = "BATCH_PUT item reserved field is not 0";
        } else if (key_len > left || value_len > left - key_len) {
            malformed = "BATCH_PUT item runs past the body";
        }
        if (malformed != nullptr) break;
        Status st = ST_OK;
        bool key_read = false;
        if (key_len == 0 || key_len > cfg.max_key) {
            st = ST_BAD_KEY;
        } else if (value_len > cfg.max_value) {
            st = ST_VALUE_TOO_LARGE;
        } else {
            key_read = true;
            key.resize(key_len);
            if ((r = recv_body(key.data(), key_len)) != io::Result::Ok) return io_failed(r, "read batch key");
            try {
                bufs[i] = s_.pool_.create(key, value_len);
            } catch (const zc::Error &e) {
                st = map_status(e.status());
            }
        }
        if (st != ST_OK) {
            statuses[i] = st;
            // Skip this item's remaining bytes (the key too if it was not read).
            const uint64_t skip = value_len + (key_read ? 0 : key_len);
            if ((r = discard(skip)) != io::Result::Ok) return io_failed(r, "skip batch item");
            left -= skip;
            continue;
        }
        if (value_len > 0) {
            if ((r = recv_body(bufs[i].data(), value_len)) != io::Result::Ok) {
                s_.c_.puts_aborted++;
                return io_failed(r, "receive batch value");
            }
            s_.c_.bytes_in += value_len;
        }
    }
    if (malformed == nullptr && left != 0) malformed = "BATCH_PUT body is longer than its items";
    if (malformed != nullptr) {
        bufs.clear();  // abort every created item
        return refuse(h, left, ST_BAD_REQUEST, malformed);
    }

    std::vector<uint8_t> body(kBatchCountSize + 4ull * count);
    put_u32(body.data(), count);
    for (uint32_t i = 0; i < count; i++) {
        if (statuses[i] == ST_OK) {
            try {
                bufs[i].seal();
                s_.c_.puts++;
            } catch (const zc::Error &e) {
                statuses[i] = map_status(e.status());
            }
        }
        if (statuses[i] != ST_OK) s_.c_.item_errors++;
        put_u16(body.data() + kBatchCountSize + 4ull * i, statuses[i]);
    }
    bufs.clear();
    s_.c_.batch_puts++;
    return reply(h, ST_OK, body.data(), body.size());
}

bool Connection::do_batch_get(const Header &h) {
    const Config &cfg = s_.cfg_;
    if (h.key_len != 0) return refuse(h, h.key_len + h.value_len, ST_BAD_REQUEST, "BATCH_GET carries no key");
    // The body is only keys, so it is bounded by the limits and read whole.
    const uint64_t limit = kBatchCountSize + uint64_t(cfg.max_batch) * (kBatchGetKeySize + cfg.max_key);
    if (h.value_len > limit) {
        return refuse(h, h.value_len, ST_BATCH_TOO_LARGE,
                      "BATCH_GET body of " + std::to_string(h.value_len) + " bytes exceeds " + std::to_string(limit));
    }
    if (h.value_len < kBatchCountSize) return refuse(h, h.value_len, ST_BAD_REQUEST, "BATCH_GET body shorter than its count");
    std::vector<uint8_t> in(h.value_len);
    io::Result r = recv(in.data(), in.size());
    if (r != io::Result::Ok) return io_failed(r, "read BATCH_GET body");

    const uint32_t count = get_u32(in.data());
    if (count > cfg.max_batch) {
        return reply_error(h, ST_BATCH_TOO_LARGE,
                           "batch of " + std::to_string(count) + " keys exceeds the maximum of " + std::to_string(cfg.max_batch));
    }
    std::vector<std::string_view> keys;
    size_t pos = kBatchCountSize;
    for (uint32_t i = 0; i < count; i++) {
        if (in.size() - pos < kBatchGetKeySize) return reply_error(h, ST_BAD_REQUEST, "BATCH_GET key length runs past the body");
        const uint32_t len = get_u32(in.data() + pos);
        pos += kBatchGetKeySize;
        if (len > in.size() - pos) return reply_error(h, ST_BAD_REQUEST, "BATCH_GET key runs past the body");
        keys.emplace_back(reinterpret_cast<const char *>(in.data() + pos), len);
        pos += len;
    }
    if (pos != in.size()) return reply_error(h, ST_BAD_REQUEST, "BATCH_GET body is longer than its keys");

    // Take every reference first, then send every value from the pool in one gathered send.
    std::optional<RefCount> held;  // declared first, so it is dropped after `bufs` are released
    std::vector<zc::Buffer> bufs(count);
    std::vector<uint16_t> statuses(count, ST_OK);
    std::vector<std::unique_ptr<uint8_t[]>> bounces(cfg.copy_on_read ? count : 0);
    uint64_t body_len = kBatchCountSize;
    for (uint32_t i = 0; i < count; i++) {
        if (keys[i].empty() || keys[i].size() > cfg.max_key) {
            statuses[i] = ST_BAD_KEY;
        } else {
            try {
                bufs[i] = s_.pool_.get(keys[i]);
            } catch (const zc::Error &e) {
                statuses[i] = map_status(e.status());
            }
        }
        if (statuses[i] != ST_OK) s_.c_.item_errors++;
        body_len += kBatchGetItemSize + bufs[i].size();
    }
    // In copy-on-read mode the references go before the send (below), so they are not counted.
    const auto taken = std::count_if(bufs.begin(), bufs.end(), [](const zc::Buffer &b) { return bool(b); });
    held.emplace(s_.c_.refs_held, cfg.copy_on_read ? 0 : static_cast<uint64_t>(taken));

    Header out;
    out.opcode = static_cast<uint8_t>(h.opcode | kReplyBit);
    out.request_id = h.request_id;
    out.value_len = body_len;
    std::vector<uint8_t> meta(kHeaderSize + kBatchCountSize + kBatchGetItemSize * count);
    out.encode(meta.data());
    put_u32(meta.data() + kHeaderSize, count);
    std::vector<iovec> iov;
    iov.reserve(2 + 2ull * count);
    iov.push_back({meta.data(), kHeaderSize + kBatchCountSize});
    for (uint32_t i = 0; i < count; i++) {
        uint8_t *item = meta.data() + kHeaderSize + kBatchCountSize + kBatchGetItemSize * i;
        const size_t size = bufs[i].size();
        put_u16(item, statuses[i]);
        put_u64(item + 8, size);
        iov.push_back({item, kBatchGetItemSize});
        const void *src = bufs[i].cdata();
        if (cfg.copy_on_read && size > 0) {
            bounces[i].reset(new uint8_t[size]);
            std::memcpy(bounces[i].get(), src, size);
            s_.c_.bytes_copied += size;
            src = bounces[i].get();
        }
        if (size > 0) iov.push_back({const_cast<void *>(src), size});
    }
    if (cfg.copy_on_read) bufs.clear();  // the baseline sends from its copies only
    r = send(iov);
    if (r != io::Result::Ok) {
        s_.c_.gets_interrupted++;
        return io_failed(r, "send BATCH_GET values");
    }
    s_.c_.bytes_out += body_len - kBatchCountSize - kBatchGetItemSize * count;
    s_.c_.batch_gets++;
    s_.c_.gets += count - static_cast<uint64_t>(std::count_if(statuses.begin(), statuses.end(), [](uint16_t st) { return st != ST_OK; }));
    return true;
}

bool Connection::do_stats(const Header &h) {
    if (h.key_len != 0 || h.value_len != 0) {
        return refuse(h, h.key_len + h.value_len, ST_BAD_REQUEST, "STATS carries no key or body");
    }
    const zc_pool_stats p = s_.pool_.stats();
    const Counters &c = s_.c_;
    uint64_t idle = 0;  // connections the accept loop could evict now
    {
        std::lock_guard<std::mutex> lock(s_.mu_);
        for (const auto &entry : s_.conns_) idle += entry.second->state.load() == Slot::kIdle ? 1 : 0;
    }
    const std::pair<const char *, uint64_t> rows[] = {
        {"capacity_bytes", p.capacity_bytes},
        {"used_bytes", p.used_bytes},
        {"largest_free_block", p.largest_free_block},
        {"object_count", p.object_count},
        {"key_count", p.key_count},
        {"max_objects", p.max_objects},
        {"evictions", p.evictions},
        {"creates_refused", p.creates_refused},
        {"capabilities", s_.capabilities()},
        {"copy_on_read", s_.cfg_.copy_on_read ? 1u : 0u},
        {"max_value", s_.cfg_.max_value},
        {"max_key", s_.cfg_.max_key},
        {"max_batch", s_.cfg_.max_batch},
        {"max_conns", s_.cfg_.max_conns},
        {"connections_current", c.connections_current},
        {"connections_total", c.connections_total},
        {"connections_refused", c.connections_refused},
        {"connections_idle", idle},
        {"connections_evicted", c.connections_evicted},
        {"connections_idle_closed", c.connections_idle_closed},
        {"connections_timed_out", c.connections_timed_out},
        {"puts", c.puts},
        {"gets", c.gets},
        {"dels", c.dels},
        {"exists", c.exists},
        {"batch_puts", c.batch_puts},
        {"batch_gets", c.batch_gets},
        {"error_replies", c.error_replies},
        {"item_errors", c.item_errors},
        {"frames_broken", c.frames_broken},
        {"puts_aborted", c.puts_aborted},
        {"gets_interrupted", c.gets_interrupted},
        {"refs_held", c.refs_held},
        {"bytes_in", c.bytes_in},
        {"bytes_out", c.bytes_out},
        {"bytes_copied", c.bytes_copied},
        {"rdma", s_.rdma_ ? 1u : 0u},
        {"rdma_connects", c.rdma_connects},
        {"rdma_puts", c.rdma_puts},
        {"rdma_gets", c.rdma_gets},
        {"rdma_leases_open", c.rdma_leases_open},
        {"rdma_leases_dropped", c.rdma_leases_dropped},
        {"rdma_bytes_in", c.rdma_bytes_in},
        {"rdma_bytes_out", c.rdma_bytes_out},
    };
    std::string text;
    for (const auto &row : rows) {
        text += row.first;
        text += ' ';
        text += std::to_string(row.second);
        text += '\n';
    }
    return reply(h, ST_OK, text.data(), text.size());
}

// ---------------------------------------------------------------------------------------------
// RDMA: queue pairs, leases

bool Connection::do_rdma_connect(const Header &h) {
    if (h.key_len != 0 || h.value_len != kQpInfoSize) {
        return refuse(h, h.key_len + h.value_len, ST_BAD_REQUEST, "RDMA_CONNECT carries no key and a 32-byte body");
    }
    uint8_t raw[kQpInfoSize];
    io::Result r = recv(raw, sizeof(raw));
    if (r != io::Result::Ok) return io_failed(r, "read RDMA_CONNECT");
    if (!QpInfo::well_formed(raw)) return reply_error(h, ST_BAD_REQUEST, "RDMA_CONNECT: reserved bytes not 0, PSN or MTU out of range");
#ifdef ZCS_HAVE_RDMA
    if (ep_) return reply_error(h, ST_BAD_REQUEST, "this connection's queue pair is already connected");
    try {
        auto ep = std::make_unique<rdma::Endpoint>(static_cast<ibv_pd *>(s_.pool_.rdma_pd(0)), s_.cfg_.gid_index);
        ep->connect(QpInfo::decode(raw));
        ep_ = std::move(ep);
    } catch (const std::exception &e) {
        return reply_error(h, ST_INTERNAL, std::string("RDMA_CONNECT: ") + e.what());
    }
    s_.c_.rdma_connects++;
    uint8_t out[kQpInfoSize];
    ep_->local().encode(out);
    return reply(h, ST_OK, out, sizeof(out));
#else
    return reply_error(h, ST_UNSUPPORTED, "built without RDMA");
#endif
}

bool Connection::grant_lease(const Header &h, zc::Buffer buf, bool put) {
    zc_rdma_desc d{};
    try {
        d = buf.rdma_desc(0);
    } catch (const zc::Error &e) {
        return reply_error(h, ST_INTERNAL, e.what());  // dropping `buf` aborts / releases it
    }
    Lease l;
    l.addr = d.addr;
    l.length = d.length;
    l.rkey = d.rkey;
    l.id = s_.next_lease_++;
    leases_.emplace(l.id, OpenLease{put, std::move(buf)});
    s_.c_.rdma_leases_open++;
    if (!put) s_.c_.refs_held++;
    uint8_t out[kLeaseReplySize];
    l.encode(out);
    return reply(h, ST_OK, out, sizeof(out));
}

bool Connection::do_rdma_put(const Header &h) {
    // The body is the value's size, not the value: the client RDMA-WRITEs it.
    if (h.value_len != kRdmaSizeSize) {
        return refuse(h, h.key_len + h.value_len, ST_BAD_REQUEST, "an RDMA PUT's body is the u64 value size (8 bytes)");
    }
    bool keep = true;
    std::string key;
    if (!read_key(h, key, &keep)) return keep;
    uint8_t raw[kRdmaSizeSize];
    io::Result r = recv(raw, sizeof(raw));
    if (r != io::Result::Ok) return io_failed(r, "read RDMA PUT size");
    const uint64_t size = get_u64(raw);
#ifdef ZCS_HAVE_RDMA
    if (!ep_) return reply_error(h, ST_BAD_REQUEST, "send RDMA_CONNECT before RDMA PUT or GET");
#endif
    if (size > s_.cfg_.max_value) {
        return reply_error(h, ST_VALUE_TOO_LARGE, "value of " + std::to_string(size) + " bytes exceeds the maximum of " +
                                                      std::to_string(s_.cfg_.max_value));
    }
    if (leases_.size() >= s_.cfg_.max_leases) {
        return reply_error(h, ST_BAD_REQUEST, "too many open leases on this connection (max " + std::to_string(s_.cfg_.max_leases) + ")");
    }
    zc::Buffer buf;
    try {
        buf = s_.pool_.create(key, size);
    } catch (const zc::Error &e) {
        return reply_error(h, map_status(e.status()), e.what());
    }
    return grant_lease(h, std::move(buf), true);
}

bool Connection::do_rdma_get(const Header &h) {
    bool keep = true;
    std::string key;
    if (!read_key(h, key, &keep)) return keep;  // refuses a body
#ifdef ZCS_HAVE_RDMA
    if (!ep_) return reply_error(h, ST_BAD_REQUEST, "send RDMA_CONNECT before RDMA PUT or GET");
#endif
    if (leases_.size() >= s_.cfg_.max_leases) {
        return reply_error(h, ST_BAD_REQUEST, "too many open leases on this connection (max " + std::to_string(s_.cfg_.max_leases) + ")");
    }
    zc::Buffer buf;
    try {
        buf = s_.pool_.get(key);
    } catch (const zc::Error &e) {
        return reply_error(h, map_status(e.status()), e.what());
    }
    return grant_lease(h, std::move(buf), false);
}

bool Connection::do_lease_end(const Header &h) {
    const char *name = h.opcode == OP_COMMIT ? "COMMIT" : "DONE";
    if (h.key_len != 0 || h.value_len != kLeaseIdSize) {
        return refuse(h, h.key_len + h.value_len, ST_BAD_REQUEST, std::string(name) + " carries no key and an 8-byte lease id");
    }
    uint8_t raw[kLeaseIdSize];
    io::Result r = recv(raw, sizeof(raw));
    if (r != io::Result::Ok) return io_failed(r, "read lease id");
    const uint64_t id = get_u64(raw);
    auto it = leases_.find(id);
    if (it == leases_.end()) {
        return reply_error(h, ST_BAD_LEASE, std::string(name) + ": lease " + std::to_string(id) +
                                                " is not open on this connection (unknown, already ended, or another connection's)");
    }
    const size_t size = it->second.buf.size();
    if (h.opcode == OP_COMMIT) {
        if (!it->second.put) {
            return reply_error(h, ST_BAD_LEASE, "COMMIT: lease " + std::to_string(id) + " is an RDMA GET's; end it with DONE");
        }
        zc::Buffer buf = std::move(it->second.buf);
        leases_.erase(it);
        s_.c_.rdma_leases_open--;
        try {
            buf.seal();
        } catch (const zc::Error &e) {
            return reply_error(h, map_status(e.status()), e.what());  // dropping `buf` aborts it
        }
        s_.c_.puts++;
        s_.c_.rdma_puts++;
        s_.c_.rdma_bytes_in += size;
        return reply(h, ST_OK, nullptr, 0);
    }
    // DONE: a GET's reference is released; a PUT's unsealed object is abandoned (aborted).
    const bool put = it->second.put;
    leases_.erase(it);
    s_.c_.rdma_leases_open--;
    if (put) {
        s_.c_.puts_aborted++;
    } else {
        s_.c_.refs_held--;
        s_.c_.gets++;
        s_.c_.rdma_gets++;
        s_.c_.rdma_bytes_out += size;
    }
    return reply(h, ST_OK, nullptr, 0);
}

void Connection::drop_rdma() {
#ifdef ZCS_HAVE_RDMA
    // The queue pair goes first: once it is destroyed the peer cannot write into (or read from)
    // memory that is about to be freed and reused.
    ep_.reset();
#endif
    for (auto &entry : leases_) {
        s_.c_.rdma_leases_open--;
        s_.c_.rdma_leases_dropped++;
        if (entry.second.put) {
            s_.c_.puts_aborted++;
        } else {
            s_.c_.refs_held--;
        }
    }
    leases_.clear();  // aborts the unsealed objects, releases the references
}

bool Connection::handle_frame() {
    uint8_t raw[kHeaderSize];
    size_t got = 0;
    io::Result r = wait_for_request(raw, &got);
    if (r == io::Result::Timeout) {
        s_.c_.connections_idle_closed++;
        std::fprintf(stderr, "connection %d: idle for %u ms; closing it\n", fd_, s_.cfg_.idle_timeout_ms);
        return false;
    }
    if (r != io::Result::Ok) return io_failed(r, "wait for a request");
    // From here on the accept loop cannot evict this connection; if it did so first, the
    // connection closes without acting on the request.
    if (!slot_.begin_frame()) return false;
    // The frame's deadline runs from its first byte: the header gets --io-timeout-ms, and once
    // its lengths are known, the whole frame gets that plus its size at --min-rate.
    const Clock::time_point start = Clock::now();
    deadline_ = s_.deadline(start, 0);
    r = recv(raw + got, kHeaderSize - got);
    if (r != io::Result::Ok) return io_failed(r, "read header");
    const Header h = Header::decode(raw);

    if (h.magic != kMagic || h.version != kVersion) {
        // Nothing in this header can be trusted, lengths included: answer and close.
        s_.c_.frames_broken++;
        reply_error(h, ST_BAD_FRAME, h.magic != kMagic ? "bad magic; closing the connection"
                                                      : "unsupported protocol version; closing the connection");
        return false;
    }
    if (h.value_len > UINT64_MAX - h.key_len) {
        s_.c_.frames_broken++;
        reply_error(h, ST_BAD_FRAME, "frame length overflows; closing the connection");
        return false;
    }
    const uint64_t frame = h.key_len + h.value_len;
    deadline_ = s_.deadline(start, frame);
    if (h.status != 0 || h.reserved != 0) return refuse(h, frame, ST_BAD_REQUEST, "status and reserved must be 0 in a request");
    if ((h.flags & ~kKnownFlags) != 0) return refuse(h, frame, ST_BAD_REQUEST, "unknown request flags");
    const bool rdma_op = h.opcode == OP_COMMIT || h.opcode == OP_DONE || h.opcode == OP_RDMA_CONNECT;
    if (((h.flags & FLAG_RDMA) != 0 || rdma_op) && !s_.rdma_) {
        return refuse(h, frame, ST_UNSUPPORTED, "RDMA descriptors are not available from this server (no CAP_RDMA_DESC)");
    }
    if ((h.flags & FLAG_RDMA) != 0) {
        if (h.opcode == OP_PUT) return do_rdma_put(h);
        if (h.opcode == OP_GET) return do_rdma_get(h);
        return refuse(h, frame, ST_BAD_REQUEST, "FLAG_RDMA applies to PUT and GET only");
    }
    switch (h.opcode) {
        case OP_HELLO: return do_hello(h);
        case OP_PUT: return do_put(h);
        case OP_GET: return do_get(h);
        case OP_DEL:
        case OP_EXISTS: return do_key_op(h);
        case OP_BATCH_PUT: return do_batch_put(h);
        case OP_BATCH_GET: return do_batch_get(h);
        case OP_STATS: return do_stats(h);
        case OP_COMMIT:
        case OP_DONE: return do_lease_end(h);
        case OP_RDMA_CONNECT: return do_rdma_connect(h);
        default: return refuse(h, frame, ST_BAD_OPCODE, "unknown opcode " + std::to_string(h.opcode));
    }
}

void Connection::serve() {
    try {
        while (handle_frame()) slot_.end_frame(!leases_.empty());
    } catch (const std::exception &e) {
        // std::bad_alloc and the like: this connection ends, the server goes on.
        std::fprintf(stderr, "connection %d: %s\n", fd_, e.what());
    }
    // Before the connection counts as finished: shutdown closes the pool once every one has.
    drop_rdma();
    s_.finish_connection(fd_);
}

// ---------------------------------------------------------------------------------------------
// Listening, accepting, shutting down

int Server::bind_listener() {
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICHOST | AI_NUMERICSERV;
    addrinfo *res = nullptr;
    const std::string port = std::to_string(cfg_.port);
    int rc = getaddrinfo(cfg_.listen.c_str(), port.c_str(), &hints, &res);
    if (rc != 0) {
        std::fprintf(stderr, "bad listen address %s: %s\n", cfg_.listen.c_str(), gai_strerror(rc));
        return -1;
    }
    // Non-blocking, so that an accept after poll never blocks the loop (the connection may
    // have gone away in between).
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, res->ai_addr, res->ai_addrlen) != 0 || listen(fd, 128) != 0) {
        std::fprintf(stderr, "listen on %s:%s: %s\n", cfg_.listen.c_str(), port.c_str(), std::strerror(errno));
        if (fd >= 0) close(fd);
        freeaddrinfo(res);
        return -1;
    }
    freeaddrinfo(res);
    sockaddr_storage addr{};
    socklen_t len = sizeof(addr);
    getsockname(fd, reinterpret_cast<sockaddr *>(&addr), &len);
    char host[NI_MAXHOST], serv[NI_MAXSERV];
    getnameinfo(reinterpret_cast<sockaddr *>(&addr), len, host, sizeof(host), serv, sizeof(serv), NI_NUMERICHOST | NI_NUMERICSERV);
    const bool v6 = addr.ss_family == AF_INET6;
    std::printf("listening %s%s%s:%s\n", v6 ? "[" : "", host, v6 ? "]" : "", serv);
    std::fflush(stdout);
    return fd;
}

bool Server::fit_fd_limit() {
    // Descriptors the server holds itself: what is open now (stdio, the pool, RDMA devices),
    // plus the listener and the signalfd to come, the spare, one connection being accepted and
    // refused, and a few for the libraries.
    uint64_t open_now = 16;
    if (DIR *d = opendir("/proc/self/fd")) {
        open_now = 0;
        while (readdir(d) != nullptr) open_now++;
        closedir(d);
        open_now -= 3;  // ".", ".." and the directory's own descriptor
    }
    const uint64_t reserved = open_now + 8;
    const uint64_t want = uint64_t(cfg_.max_conns) + reserved;
    rlimit rl{};
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY || rl.rlim_cur >= want) return true;
    const rlim_t was = rl.rlim_cur;
    if (rl.rlim_max == RLIM_INFINITY || rl.rlim_max > rl.rlim_cur) {
        rlimit raised{rl.rlim_max == RLIM_INFINITY ? want : std::min<rlim_t>(rl.rlim_max, want), rl.rlim_max};
        if (setrlimit(RLIMIT_NOFILE, &raised) == 0) {
            rl.rlim_cur = raised.rlim_cur;
            std::fprintf(stderr, "raised the RLIMIT_NOFILE soft limit from %llu to %llu\n",
                         static_cast<unsigned long long>(was), static_cast<unsigned long long>(rl.rlim_cur));
        }
    }
    if (rl.rlim_cur >= want) return true;
    if (rl.rlim_cur <= reserved) {
        std::fprintf(stderr, "RLIMIT_NOFILE is %llu: the server needs %llu descriptors itself, and one per connection\n",
                     static_cast<unsigned long long>(rl.rlim_cur), static_cast<unsigned long long>(reserved));
        return false;
    }
    const auto fit = static_cast<uint32_t>(rl.rlim_cur - reserved);
    std::fprintf(stderr, "max conns %u clamped to %u: RLIMIT_NOFILE is %llu (hard limit %llu) and the server keeps %llu descriptors for itself\n",
                 cfg_.max_conns, fit, static_cast<unsigned long long>(rl.rlim_cur),
                 static_cast<unsigned long long>(rl.rlim_max), static_cast<unsigned long long>(reserved));
    cfg_.max_conns = fit;
    return true;
}

void Server::refuse_connection(int fd, const std::string &why) {
    c_.connections_refused++;
    // Whatever the client sent already (its HELLO) is read first: closing a socket with unread
    // bytes sends a reset, which can destroy the reply before the client reads it.
    uint8_t scratch[4096];
    (void)::recv(fd, scratch, sizeof(scratch), MSG_DONTWAIT);
    Header h;
    h.opcode = kReplyBit;
    h.status = ST_SERVER_BUSY;
    h.value_len = why.size();
    uint8_t raw[kHeaderSize];
    h.encode(raw);
    std::string out(reinterpret_cast<char *>(raw), kHeaderSize);
    out += why;
    // Best effort, without blocking the accept loop: the reply is about 100 bytes.
    (void)::send(fd, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    close(fd);
}

void Server::out_of_fds(int err) {
    if (!fds_exhausted_) {
        std::fprintf(stderr, "accept: %s; refusing connections until descriptors are free\n", std::strerror(err));
        fds_exhausted_ = true;
    }
    // Without this the listener stays readable, poll returns at once, accept fails again: a
    // spinning loop, and clients left waiting in the queue with no answer.
    if (spare_fd_ >= 0) {
        close(spare_fd_);
        spare_fd_ = -1;
        int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
        if (fd >= 0) refuse_connection(fd, "server out of file descriptors");
        spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    if (spare_fd_ < 0) pause_accepting();
}

bool Server::evict_idle(std::unique_lock<std::mutex> &lock) {
    for (;;) {
        int victim = -1;
        Slot *slot = nullptr;
        for (auto &entry : conns_) {
            Slot &candidate = *entry.second;
            if (candidate.state.load() == Slot::kIdle && (slot == nullptr || candidate.idle_since.load() < slot->idle_since.load())) {
                victim = entry.first;
                slot = &candidate;
            }
        }
        if (slot == nullptr) return false;
        int expected = Slot::kIdle;
        if (!slot->state.compare_exchange_strong(expected, Slot::kEvicted)) continue;  // it took a request just now
        const auto idle = Clock::now() - Clock::time_point(Clock::duration(slot->idle_since.load()));
        shutdown(victim, SHUT_RDWR);  // wakes its thread, which closes it and frees the slot
        c_.connections_evicted++;
        std::fprintf(stderr, "connection %d: idle for %lld ms, the longest; closed to admit a new connection\n", victim,
                     static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(idle).count()));
        break;
    }
    return cv_.wait_for(lock, std::chrono::seconds(2), [this] { return conns_.size() < cfg_.max_conns; });
}

void Server::accept_one() {
    int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
    if (fd < 0) {
        const int err = errno;
        if (err == EMFILE || err == ENFILE) {
            out_of_fds(err);
        } else if (err != EINTR && err != EAGAIN && err != EWOULDBLOCK && err != ECONNABORTED) {
            // ENOBUFS, ENOMEM and the like: retrying at once would spin as well.
            std::fprintf(stderr, "accept: %s; pausing 100 ms\n", std::strerror(err));
            pause_accepting();
        }
        return;
    }
    fds_exhausted_ = false;
    Slot *slot = nullptr;
    {
        std::unique_lock<std::mutex> lock(mu_);
        if (conns_.size() >= cfg_.max_conns && !evict_idle(lock)) {
            lock.unlock();
            refuse_connection(fd, "too many connections (max " + std::to_string(cfg_.max_conns) + "), none of them idle");
            return;
        }
        auto owned = std::make_unique<Slot>();
        slot = owned.get();
        conns_.emplace(fd, std::move(owned));
        c_.connections_current++;
        c_.connections_total++;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (cfg_.keepalive_s > 0) {
        // A peer that vanished without a FIN or RST (host down, cable pulled) is found by the
        // kernel about 2 x keepalive_s after it last sent anything, even with no frame pending.
        const int idle = static_cast<int>(cfg_.keepalive_s), interval = std::max(1, idle / 6), probes = 6;
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &interval, sizeof(interval));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &probes, sizeof(probes));
    }
    try {
        std::thread([this, fd, slot] { Connection(*this, fd, *slot).serve(); }).detach();
    } catch (const std::system_error &e) {
        std::fprintf(stderr, "cannot start a connection thread: %s\n", e.what());
        finish_connection(fd);
    }
}

void Server::finish_connection(int fd) {
    std::lock_guard<std::mutex> lock(mu_);
    // Removed under the lock before close, so shutdown_connections never touches a reused fd.
    conns_.erase(fd);
    close(fd);
    c_.connections_current--;
    cv_.notify_all();
}

void Server::shutdown_connections() {
    std::unique_lock<std::mutex> lock(mu_);
    for (const auto &entry : conns_) shutdown(entry.first, SHUT_RDWR);  // wakes their blocked recv/send
    if (!cv_.wait_for(lock, std::chrono::seconds(5), [this] { return conns_.empty(); })) {
        // A thread that does not finish would use the pool after it is closed: leave at once.
        std::fprintf(stderr, "%zu connections did not finish; exiting\n", conns_.size());
        std::fflush(stderr);
        std::_Exit(1);
    }
}

int Server::run() {
    // SIGINT and SIGTERM arrive through a signalfd the accept loop polls; blocked before any
    // thread starts so that every thread inherits the mask.
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
    signal(SIGPIPE, SIG_IGN);
    if (!fit_fd_limit()) return 1;
    int sfd = signalfd(-1, &sigs, SFD_CLOEXEC);
    spare_fd_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
    listen_fd_ = bind_listener();
    if (sfd < 0 || spare_fd_ < 0 || listen_fd_ < 0) return 1;
    std::fprintf(stderr, "pool %llu bytes, max value %llu, max key %u, max batch %u, max conns %u, %s\n",
                 static_cast<unsigned long long>(pool_.stats().capacity_bytes), static_cast<unsigned long long>(cfg_.max_value),
                 cfg_.max_key, cfg_.max_batch, cfg_.max_conns, cfg_.copy_on_read ? "copy-on-read GET" : "zero-copy GET");
    std::fprintf(stderr, "io timeout %u ms + size at %llu B/s per frame, idle timeout %u ms, keep-alive %u s\n", cfg_.io_timeout_ms,
                 static_cast<unsigned long long>(cfg_.min_rate), cfg_.idle_timeout_ms, cfg_.keepalive_s);
#ifdef ZCS_HAVE_RDMA
    if (rdma_) {
        const auto *pd = static_cast<ibv_pd *>(pool_.rdma_pd(0));
        std::fprintf(stderr, "RDMA: pool registered with %u device(s); queue pairs on %s port 1, GID index %d\n",
                     pool_.rdma_count(), ibv_get_device_name(pd->context->device), cfg_.gid_index);
    } else {
        std::fprintf(stderr, "RDMA: off (no registered device); TCP only\n");
    }
#else
    std::fprintf(stderr, "RDMA: not built (no <infiniband/verbs.h>); TCP only\n");
#endif
    pollfd fds[2] = {{sfd, POLLIN, 0}, {listen_fd_, POLLIN, 0}};
    for (;;) {
        // While accepting is paused only the signalfd is polled, until the pause ends.
        nfds_t n = 2;
        int timeout = -1;
        const Clock::time_point now = Clock::now();
        if (now < accept_paused_until_) {
            n = 1;
            timeout = static_cast<int>(std::chrono::ceil<std::chrono::milliseconds>(accept_paused_until_ - now).count());
        }
        if (poll(fds, n, timeout) < 0) {
            if (errno == EINTR) continue;
            std::perror("poll");
            break;
        }
        if (fds[0].revents != 0) break;
        if (n == 2 && fds[1].revents != 0) accept_one();
    }
    close(listen_fd_);
    close(spare_fd_);
    shutdown_connections();
    close(sfd);
    std::fprintf(stderr, "stopped\n");
    return 0;
}

// ---------------------------------------------------------------------------------------------
// Command line

/// "64M", "1G", "4096", "4KiB" -> bytes.
bool parse_size(const char *s, uint64_t *out) {
    char *end = nullptr;
    errno = 0;
    unsigned long long v = std::strtoull(s, &end, 10);
    if (errno != 0 || end == s) return false;
    std::string unit(end);
    uint64_t mult = 1;
    if (unit.empty() || unit == "B") mult = 1;
    else if (unit == "K" || unit == "KiB") mult = 1ull << 10;
    else if (unit == "M" || unit == "MiB") mult = 1ull << 20;
    else if (unit == "G" || unit == "GiB") mult = 1ull << 30;
    else return false;
    if (v > UINT64_MAX / mult) return false;
    *out = v * mult;
    return true;
}

void usage() {
    std::fprintf(stderr,
                 "usage: zcopy-store-server [options]\n"
                 "  --listen ADDR        numeric IPv4/IPv6 address (default 127.0.0.1)\n"
                 "  --port N             TCP port, 0 = ephemeral (default 0)\n"
                 "  --pool-size SIZE     pool bytes, e.g. 256M, 1G (default 256M)\n"
                 "  --max-value SIZE     largest value (default 64M, at most the pool)\n"
                 "  --max-key N          longest key, 1..%d (default 1024)\n"
                 "  --max-batch N        most items per batch, 1..1024 (default 128)\n"
                 "  --max-conns N        most connections at once (default 64; fitted to RLIMIT_NOFILE); when\n"
                 "                       all are taken, the one idle longest is closed to admit a new one\n"
                 "  --io-timeout-ms N    a frame (header and body) must arrive, and a reply be taken, within N ms\n"
                 "                       plus its size at --min-rate, or the connection is dropped (default 10000)\n"
                 "  --min-rate SIZE      bytes per second a frame's deadline allows for its size (default 1M)\n"
                 "  --idle-timeout-ms N  a connection idle this long between frames is closed; 0 = never\n"
                 "                       (default 300000)\n"
                 "  --keepalive-s N      TCP keep-alive: first probe after N s of silence, 6 probes N/6 s apart;\n"
                 "                       0 = off (default 60)\n"
                 "  --copy-on-read       baseline: GET copies each value to a heap buffer and sends that\n"
                 "  --evict-lru          a full pool evicts unreferenced sealed objects, LRU first\n"
                 "  --rdma MODE          auto (default): register the pool with every RDMA device and offer\n"
                 "                       RDMA when there is one; required: fail without one; off: TCP only\n"
                 "  --gid-index N        GID index for the queue pairs (default $ZCOPY_RDMA_GID_INDEX,\n"
                 "                       $RXE_GID_INDEX, else 1)\n"
                 "  --max-leases N       open RDMA leases per connection (default 256)\n"
                 "prints \"listening ADDR:PORT\" as its first stdout line; SIGINT/SIGTERM stop it.\n",
                 ZC_MAX_KEY_LEN);
}

bool parse_args(int argc, char **argv, Config &cfg) {
    for (int i = 1; i < argc; i++) {
        std::string a = argv[i];
        auto value = [&](uint64_t lo, uint64_t hi, uint64_t *out, bool size) {
            if (i + 1 >= argc) return false;
            const char *v = argv[++i];
            if (size) return parse_size(v, out) && *out >= lo && *out <= hi;
            char *end = nullptr;
            errno = 0;
            *out = std::strtoull(v, &end, 10);
            return errno == 0 && end != v && *end == '\0' && *out >= lo && *out <= hi;
        };
        uint64_t n = 0;
        if (a == "--listen" && i + 1 < argc) cfg.listen = argv[++i];
        else if (a == "--port" && value(0, 65535, &n, false)) cfg.port = static_cast<uint16_t>(n);
        else if (a == "--pool-size" && value(64, UINT64_MAX, &n, true)) cfg.pool_size = n;
        else if (a == "--max-value" && value(0, UINT64_MAX, &n, true)) cfg.max_value = n;
        else if (a == "--max-key" && value(1, ZC_MAX_KEY_LEN, &n, false)) cfg.max_key = static_cast<uint32_t>(n);
        else if (a == "--max-batch" && value(1, 1024, &n, false)) cfg.max_batch = static_cast<uint32_t>(n);
        else if (a == "--max-conns" && value(1, 100000, &n, false)) cfg.max_conns = static_cast<uint32_t>(n);
        else if (a == "--io-timeout-ms" && value(1, 3600000, &n, false)) cfg.io_timeout_ms = static_cast<uint32_t>(n);
        else if (a == "--min-rate" && value(1, UINT64_MAX, &n, true)) cfg.min_rate = n;
        else if (a == "--idle-timeout-ms" && value(0, 86400000, &n, false)) cfg.idle_timeout_ms = static_cast<uint32_t>(n);
        else if (a == "--keepalive-s" && value(0, 32767, &n, false)) cfg.keepalive_s = static_cast<uint32_t>(n);
        else if (a == "--copy-on-read") cfg.copy_on_read = true;
        else if (a == "--evict-lru") cfg.evict_lru = true;
        else if (a == "--gid-index" && value(0, 255, &n, false)) cfg.gid_index = static_cast<int>(n);
        else if (a == "--max-leases" && value(1, 65536, &n, false)) cfg.max_leases = static_cast<uint32_t>(n);
        else if (a == "--rdma" && i + 1 < argc) {
            const std::string m = argv[++i];
            if (m == "auto") cfg.rdma = ZC_RDMA_AUTO;
            else if (m == "required") cfg.rdma = ZC_RDMA_REQUIRED;
            else if (m == "off") cfg.rdma = ZC_RDMA_OFF;
            else {
                std::fprintf(stderr, "bad --rdma mode: %s (auto, required, off)\n", m.c_str());
                return false;
            }
#ifndef ZCS_HAVE_RDMA
            if (cfg.rdma != ZC_RDMA_OFF) {
                std::fprintf(stderr, "--rdma %s: this server was built without RDMA (no <infiniband/verbs.h>)\n", m.c_str());
                return false;
            }
#endif
        }
        else {
            std::fprintf(stderr, "bad argument: %s\n", a.c_str());
            return false;
        }
    }
    return true;
}

}  // namespace

int main(int argc, char **argv) {
    Config cfg;
    if (!parse_args(argc, argv, cfg)) {
        usage();
        return 2;
    }
    try {
        Server server(cfg);
        return server.run();
    } catch (const zc::Error &e) {
        std::fprintf(stderr, "zcopy: %s\n", e.what());
        return 1;
    }
}
