// client.hpp: a header-only, blocking client for the zcopy key-value store (PROTOCOL.md).
//
//   zcs::Client c = zcs::Client::connect("127.0.0.1", 7000);
//   c.put("k", data, size);                 // one frame: header, key, value
//   std::vector<uint8_t> v = c.get("k");    // received straight into the vector
//   size_t n = c.get_into("k", dst, cap);   // received straight into caller memory
//
// Between zcopy pools (RDMA when both sides have a device, TCP otherwise):
//
//   zc::Pool mine(zc::Options().with_size(64 << 20));   // registered with every RDMA device there is
//   bool rdma = c.use_pool(mine);                       // Transport::Auto; Rdma insists, Tcp never
//   c.put_buffer("k", buf);                             // buf: an object of `mine`, RDMA-WRITTEN
//   zc::Buffer v = c.get_buffer("k", "local-name");     // RDMA-READ into a new object of `mine`
//
// One Client is one connection and is not thread-safe; use one per thread. Every failure throws
// zcs::StoreError: `status()` is the server's status (or the one the client checked locally,
// without sending anything), `what()` the message. An I/O failure or a reply that does not match
// the request leaves the connection `broken()`; every later call throws.

#ifndef ZCOPY_STORE_CLIENT_HPP
#define ZCOPY_STORE_CLIENT_HPP

#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "protocol.hpp"
#include "rdma.hpp"
#include "zcopy.hpp"

namespace zcs {

class StoreError : public std::runtime_error {
public:
    StoreError(uint16_t status, const std::string &message)
        : std::runtime_error(std::string(status_name(status)) + ": " + message), status_(status) {}
    uint16_t status() const noexcept { return status_; }

private:
    uint16_t status_;
};

/// What HELLO reports: the server's limits and capabilities.
struct ServerInfo {
    uint32_t version = 0;
    uint32_t capabilities = 0;
    uint32_t max_key = 0;
    uint32_t max_batch = 0;
    uint64_t max_value = 0;
    uint64_t capacity = 0;
};

struct PutItem {
    std::string_view key;
    const void *data;
    size_t size;
};

struct GetResult {
    uint16_t status = ST_OK;
    std::vector<uint8_t> value;
};

/// How put_buffer / get_buffer move values (Client::use_pool).
enum class Transport {
    Auto,  // RDMA when the server offers it (CAP_RDMA_DESC) and the pool is registered, else TCP
    Tcp,   // always TCP
    Rdma,  // RDMA or an error saying why not
};

class Client {
public:
    /// Connects (numeric or resolvable host), sends HELLO and keeps the server's limits.
    static Client connect(const std::string &host, uint16_t port) {
        addrinfo hints{};
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        addrinfo *res = nullptr;
        const std::string serv = std::to_string(port);
        int rc = getaddrinfo(host.c_str(), serv.c_str(), &hints, &res);
        if (rc != 0) throw StoreError(ST_INTERNAL, "resolve " + host + ": " + gai_strerror(rc));
        int fd = -1;
        std::string err = "no address";
        for (addrinfo *a = res; a != nullptr; a = a->ai_next) {
            fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (fd >= 0 && ::connect(fd, a->ai_addr, a->ai_addrlen) == 0) break;
            err = std::strerror(errno);
            if (fd >= 0) close(fd);
            fd = -1;
        }
        freeaddrinfo(res);
        if (fd < 0) throw StoreError(ST_INTERNAL, "connect to " + host + ":" + serv + ": " + err);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        Client c(fd);
        c.hello();
        return c;
    }

    Client(Client &&o) noexcept
        : fd_(std::exchange(o.fd_, -1)),
          next_id_(o.next_id_),
          broken_(o.broken_),
          info_(o.info_),
          pool_(std::exchange(o.pool_, nullptr)),
          registration_(o.registration_)
#ifdef ZCS_HAVE_RDMA
          ,
          ep_(std::move(o.ep_))
#endif
    {
    }
    Client &operator=(Client &&o) noexcept {
        if (this != &o) {
            close_fd();
            fd_ = std::exchange(o.fd_, -1);
            next_id_ = o.next_id_;
            broken_ = o.broken_;
            info_ = o.info_;
            pool_ = std::exchange(o.pool_, nullptr);
            registration_ = o.registration_;
#ifdef ZCS_HAVE_RDMA
            ep_ = std::move(o.ep_);
#endif
        }
        return *this;
    }
    Client(const Client &) = delete;
    Client &operator=(const Client &) = delete;
    ~Client() {
        release_pool();
        close_fd();
    }

    const ServerInfo &info() const noexcept { return info_; }
    bool broken() const noexcept { return broken_; }
    int fd() const noexcept { return fd_; }

    /// Stores `size` bytes under `key`. Throws ALREADY_EXISTS, POOL_FULL, VALUE_TOO_LARGE, ...
    void put(std::string_view key, const void *data, size_t size) {
        check_key(key);
        if (size > info_.max_value) {
            throw StoreError(ST_VALUE_TOO_LARGE, "value of " + std::to_string(size) + " bytes exceeds the server's maximum of " +
                                                     std::to_string(info_.max_value));
        }
        Header h = request(OP_PUT, key.size(), size);
        send_frame(h, key, {{const_cast<void *>(data), size}});
        expect_empty_reply(h);
    }

    /// The value under `key`, received straight into the returned vector.
    std::vector<uint8_t> get(std::string_view key) {
        Header h = get_request(key);
        const Header r = read_reply(h);
        std::vector<uint8_t> out(r.value_len);
        recv_or_break(out.data(), out.size());
        return out;
    }

    /// Receives the value under `key` straight into `dst` and returns its size. A value larger
    /// than `capacity` is read off the connection and refused with VALUE_TOO_LARGE.
    size_t get_into(std::string_view key, void *dst, size_t capacity) {
        Header h = get_request(key);
        const Header r = read_reply(h);
        if (r.value_len > capacity) {
            if (io::discard(fd_, r.value_len) != io::Result::Ok) fail("skip oversize value");
            throw StoreError(ST_VALUE_TOO_LARGE, "value of " + std::to_string(r.value_len) + " bytes does not fit in " +
                                                     std::to_string(capacity));
        }
        recv_or_break(dst, r.value_len);
        return r.value_len;
    }

    /// Removes `key`; false if it was not there.
    bool del(std::string_view key) {
        check_key(key);
        Header h = request(OP_DEL, key.size(), 0);
        send_frame(h, key, {});
        try {
            expect_empty_reply(h);
        } catch (const StoreError &e) {
            if (e.status() == ST_NOT_FOUND) return false;
            throw;
        }
        return true;
    }

    bool exists(std::string_view key) {
        check_key(key);
        Header h = request(OP_EXISTS, key.size(), 0);
        send_frame(h, key, {});
        const Header r = read_reply(h);
        if (r.value_len != 1) fail("EXISTS reply is not 1 byte");
        uint8_t present = 0;
        recv_or_break(&present, 1);
        return present != 0;
    }

    /// Stores every item in one frame; the server seals them all once the frame is in. Returns
    /// one status per item (ALREADY_EXISTS, POOL_FULL, ... for the items that failed).
    std::vector<uint16_t> batch_put(const std::vector<PutItem> &items) {
        check_batch(items.size());
        std::vector<uint8_t> meta(kBatchCountSize + kBatchPutItemSize * items.size());
        put_u32(meta.data(), static_cast<uint32_t>(items.size()));
        uint64_t body = kBatchCountSize;
        std::vector<iovec> parts{{meta.data(), kBatchCountSize}};
        for (size_t i = 0; i < items.size(); i++) {
            uint8_t *m = meta.data() + kBatchCountSize + kBatchPutItemSize * i;
            put_u32(m, static_cast<uint32_t>(items[i].key.size()));
            put_u64(m + 8, items[i].size);
            parts.push_back({m, kBatchPutItemSize});
            parts.push_back({const_cast<char *>(items[i].key.data()), items[i].key.size()});
            parts.push_back({const_cast<void *>(items[i].data), items[i].size});
            body += kBatchPutItemSize + items[i].key.size() + items[i].size;
        }
        Header h = request(OP_BATCH_PUT, 0, body);
        send_frame(h, {}, std::move(parts));
        const Header r = read_reply(h);
        if (r.value_len != kBatchCountSize + 4 * items.size()) fail("BATCH_PUT reply has the wrong length");
        std::vector<uint8_t> in(r.value_len);
        recv_or_break(in.data(), in.size());
        if (get_u32(in.data()) != items.size()) fail("BATCH_PUT reply has the wrong count");
        std::vector<uint16_t> statuses(items.size());
        for (size_t i = 0; i < items.size(); i++) statuses[i] = get_u16(in.data() + kBatchCountSize + 4 * i);
        return statuses;
    }

    /// Gets every key in one frame: one status and value per key, in order.
    std::vector<GetResult> batch_get(const std::vector<std::string_view> &keys) {
        check_batch(keys.size());
        std::vector<uint8_t> meta(kBatchCountSize + kBatchGetKeySize * keys.size());
        put_u32(meta.data(), static_cast<uint32_t>(keys.size()));
        uint64_t body = kBatchCountSize;
        std::vector<iovec> parts{{meta.data(), kBatchCountSize}};
        for (size_t i = 0; i < keys.size(); i++) {
            uint8_t *m = meta.data() + kBatchCountSize + kBatchGetKeySize * i;
            put_u32(m, static_cast<uint32_t>(keys[i].size()));
            parts.push_back({m, kBatchGetKeySize});
            parts.push_back({const_cast<char *>(keys[i].data()), keys[i].size()});
            body += kBatchGetKeySize + keys[i].size();
        }
        Header h = request(OP_BATCH_GET, 0, body);
        send_frame(h, {}, std::move(parts));
        const Header r = read_reply(h);
        uint64_t left = r.value_len;
        uint8_t raw[kBatchGetItemSize];
        if (left < kBatchCountSize) fail("BATCH_GET reply too short");
        recv_or_break(raw, kBatchCountSize);
        left -= kBatchCountSize;
        if (get_u32(raw) != keys.size()) fail("BATCH_GET reply has the wrong count");
        std::vector<GetResult> out(keys.size());
        for (auto &item : out) {
            if (left < kBatchGetItemSize) fail("BATCH_GET reply item runs past the body");
            recv_or_break(raw, kBatchGetItemSize);
            left -= kBatchGetItemSize;
            item.status = get_u16(raw);
            const uint64_t size = get_u64(raw + 8);
            if (size > left) fail("BATCH_GET reply value runs past the body");
            item.value.resize(size);
            recv_or_break(item.value.data(), size);
            left -= size;
        }
        if (left != 0) fail("BATCH_GET reply is longer than its items");
        return out;
    }

    // -----------------------------------------------------------------------------------------
    // Between zcopy pools

    /// Makes `pool` (which must outlive the client, or the next use_pool) the memory that
    /// put_buffer and get_buffer move values out of and into, and picks their transport. With
    /// RDMA (Auto when the server advertises CAP_RDMA_DESC and `pool` has an RDMA registration;
    /// Rdma always) it exchanges queue pairs with the server (RDMA_CONNECT) on the protection
    /// domain of registration `registration`. Returns whether RDMA is in use. Rdma throws
    /// UNSUPPORTED saying which side lacks it; a queue pair that cannot be brought up throws.
    bool use_pool(zc::Pool &pool, Transport transport = Transport::Auto, uint32_t registration = 0,
                  int gid_index = rdma::default_gid_index()) {
        pool_ = &pool;
        registration_ = registration;
#ifdef ZCS_HAVE_RDMA
        ep_.reset();
#endif
        if (transport == Transport::Tcp) return false;
        std::string why;
        if ((info_.capabilities & CAP_RDMA_DESC) == 0) {
            why = "the server does not offer RDMA (no CAP_RDMA_DESC in its HELLO: it has no RDMA device, or runs with --rdma off)";
        } else if (pool.rdma_count() <= registration) {
            why = "this client's pool has no RDMA registration " + std::to_string(registration) + " (no RDMA device here)";
        }
#ifndef ZCS_HAVE_RDMA
        if (why.empty()) why = "this client was built without RDMA (no <infiniband/verbs.h>)";
#endif
        if (!why.empty()) {
            if (transport == Transport::Auto) return false;
            throw StoreError(ST_UNSUPPORTED, "RDMA requested, but " + why);
        }
#ifdef ZCS_HAVE_RDMA
        std::unique_ptr<rdma::Endpoint> ep;
        try {
            ep = std::make_unique<rdma::Endpoint>(static_cast<ibv_pd *>(pool.rdma_pd(registration)), gid_index);
        } catch (const std::exception &e) {
            throw StoreError(ST_INTERNAL, std::string("RDMA queue pair: ") + e.what());
        }
        uint8_t raw[kQpInfoSize];
        ep->local().encode(raw);
        Header h = request(OP_RDMA_CONNECT, 0, kQpInfoSize);
        send_frame(h, {}, {{raw, kQpInfoSize}});
        const Header r = read_reply(h);
        if (r.value_len != kQpInfoSize) fail("RDMA_CONNECT reply has the wrong length");
        recv_or_break(raw, kQpInfoSize);
        try {
            ep->connect(QpInfo::decode(raw));
        } catch (const std::exception &e) {
            throw StoreError(ST_INTERNAL, std::string("RDMA queue pair: ") + e.what());
        }
        ep_ = std::move(ep);
        return true;
#else
        (void)gid_index;
        return false;
#endif
    }

    /// Forgets the pool use_pool was given, destroying the queue pair made on its protection
    /// domain: call it before that pool is closed.
    void release_pool() noexcept {
#ifdef ZCS_HAVE_RDMA
        ep_.reset();
#endif
        pool_ = nullptr;
    }

    /// Whether put_buffer / get_buffer use RDMA.
    bool rdma() const noexcept {
#ifdef ZCS_HAVE_RDMA
        return ep_ != nullptr;
#else
        return false;
#endif
    }

    /// Stores the bytes of `src` (an object of the pool given to use_pool, sealed or not) under
    /// `key`: RDMA WRITE into the object the server created, then COMMIT; or one TCP PUT.
    void put_buffer(std::string_view key, const zc::Buffer &src) {
        if (!rdma()) {
            put(key, src.cdata(), src.size());
            return;
        }
#ifdef ZCS_HAVE_RDMA
        const zc_rdma_desc local = local_desc(src);
        const Lease l = rdma_put_begin(key, src.size());
        rdma_transfer(IBV_WR_RDMA_WRITE, local, l);
        commit(l.id);
#endif
    }

    /// The value under `key` as a new sealed object of the pool given to use_pool, created under
    /// `local_key`: RDMA READ from the server's object, then DONE; or one TCP GET received
    /// straight into it.
    zc::Buffer get_buffer(std::string_view key, std::string_view local_key) {
        if (pool_ == nullptr) throw StoreError(ST_BAD_REQUEST, "get_buffer needs use_pool first");
        if (!rdma()) {
            Header h = get_request(key);
            const Header r = read_reply(h);
            zc::Buffer dst;
            try {
                dst = pool_->create(local_key, r.value_len);
            } catch (const zc::Error &e) {
                if (io::discard(fd_, r.value_len) != io::Result::Ok) fail("skip value");
                throw StoreError(ST_POOL_FULL, std::string("local pool: ") + e.what());
            }
            recv_or_break(dst.data(), r.value_len);
            dst.seal();
            return dst;
        }
#ifdef ZCS_HAVE_RDMA
        const Lease l = rdma_get_begin(key);
        zc::Buffer dst;
        try {
            dst = pool_->create(local_key, l.length);
        } catch (const zc::Error &e) {
            done(l.id);
            throw StoreError(ST_POOL_FULL, std::string("local pool: ") + e.what());
        }
        rdma_transfer(IBV_WR_RDMA_READ, local_desc(dst), l);
        done(l.id);
        dst.seal();
        return dst;
#else
        return zc::Buffer();
#endif
    }

    // The RDMA steps one by one (put_buffer and get_buffer are made of them).

    /// RDMA PUT: the server creates `key` with `size` bytes and leases it to this connection.
    Lease rdma_put_begin(std::string_view key, uint64_t size) {
        check_key(key);
        if (size > info_.max_value) {
            throw StoreError(ST_VALUE_TOO_LARGE, "value of " + std::to_string(size) + " bytes exceeds the server's maximum of " +
                                                     std::to_string(info_.max_value));
        }
        uint8_t raw[kRdmaSizeSize];
        put_u64(raw, size);
        Header h = request(OP_PUT, key.size(), kRdmaSizeSize);
        h.flags = FLAG_RDMA;
        send_frame(h, key, {{raw, kRdmaSizeSize}});
        Lease l = read_lease(h);
        if (l.length != size) fail("RDMA PUT reply describes the wrong size");
        return l;
    }

    /// RDMA GET: the server holds the sealed object under `key` for this connection.
    Lease rdma_get_begin(std::string_view key) {
        Header h = get_request(key, FLAG_RDMA);
        return read_lease(h);
    }

    /// Seals the object of an RDMA PUT lease (after its bytes were written).
    void commit(uint64_t lease) { end_lease(OP_COMMIT, lease); }
    /// Ends an RDMA GET lease (the server drops its reference) or abandons an RDMA PUT lease.
    void done(uint64_t lease) { end_lease(OP_DONE, lease); }

#ifdef ZCS_HAVE_RDMA
    /// One RDMA READ (server -> `local`) or WRITE (`local` -> server) of the whole leased
    /// object. On failure the lease is ended with DONE (abandoned) and RDMA is off for good on
    /// this client (the queue pair is in the error state).
    void rdma_transfer(ibv_wr_opcode op, const zc_rdma_desc &local, const Lease &l) {
        if (!ep_) throw StoreError(ST_BAD_REQUEST, "RDMA is not in use on this connection (use_pool)");
        if (local.length != l.length) throw StoreError(ST_BAD_REQUEST, "local and remote sizes differ");
        try {
            ep_->transfer(op, local.addr, local.lkey, l.addr, l.rkey, l.length);
        } catch (const std::exception &e) {
            ep_.reset();
            done(l.id);
            throw StoreError(ST_INTERNAL, e.what());
        }
    }

    /// `b`'s bytes under the registration use_pool picked.
    zc_rdma_desc local_desc(const zc::Buffer &b) const {
        try {
            return b.rdma_desc(registration_);
        } catch (const zc::Error &e) {
            throw StoreError(ST_BAD_REQUEST, std::string("local buffer: ") + e.what());
        }
    }
#endif

    /// STATS as name -> value.
    std::map<std::string, uint64_t> stats() {
        Header h = request(OP_STATS, 0, 0);
        send_frame(h, {}, {});
        const Header r = read_reply(h);
        std::string text(r.value_len, '\0');
        recv_or_break(text.data(), text.size());
        std::map<std::string, uint64_t> out;
        size_t pos = 0;
        while (pos < text.size()) {
            size_t nl = text.find('\n', pos);
            if (nl == std::string::npos) nl = text.size();
            const std::string line = text.substr(pos, nl - pos);
            const size_t sp = line.find(' ');
            if (sp != std::string::npos) out[line.substr(0, sp)] = std::stoull(line.substr(sp + 1));
            pos = nl + 1;
        }
        return out;
    }

private:
    explicit Client(int fd) : fd_(fd) {}

    void close_fd() {
        if (fd_ >= 0) close(fd_);
        fd_ = -1;
    }

    [[noreturn]] void fail(const std::string &what) {
        broken_ = true;
        throw StoreError(ST_INTERNAL, what);
    }

    void recv_or_break(void *p, size_t n) {
        io::Result r = io::recv_all(fd_, p, n);
        if (r != io::Result::Ok) fail(std::string("receive: ") + io::result_name(r));
    }

    void check_key(std::string_view key) const {
        if (key.empty() || key.size() > info_.max_key) {
            throw StoreError(ST_BAD_KEY, "key length " + std::to_string(key.size()) + " not in 1.." + std::to_string(info_.max_key));
        }
    }

    void check_batch(size_t n) const {
        if (n > info_.max_batch) {
            throw StoreError(ST_BATCH_TOO_LARGE, "batch of " + std::to_string(n) + " items exceeds the server's maximum of " +
                                                     std::to_string(info_.max_batch));
        }
    }

    Header request(Op op, size_t key_len, uint64_t value_len) {
        if (broken_ || fd_ < 0) throw StoreError(ST_INTERNAL, "connection is broken");
        Header h;
        h.opcode = op;
        h.request_id = next_id_++;
        h.key_len = static_cast<uint32_t>(key_len);
        h.value_len = value_len;
        return h;
    }

    Header get_request(std::string_view key, uint16_t flags = 0) {
        check_key(key);
        Header h = request(OP_GET, key.size(), 0);
        h.flags = flags;
        send_frame(h, key, {});
        return h;
    }

    Lease read_lease(const Header &req) {
        const Header r = read_reply(req);
        if (r.value_len != kLeaseReplySize) fail("RDMA reply has the wrong length");
        uint8_t raw[kLeaseReplySize];
        recv_or_break(raw, sizeof(raw));
        return Lease::decode(raw);
    }

    void end_lease(Op op, uint64_t lease) {
        uint8_t raw[kLeaseIdSize];
        put_u64(raw, lease);
        Header h = request(op, 0, kLeaseIdSize);
        send_frame(h, {}, {{raw, kLeaseIdSize}});
        expect_empty_reply(h);
    }

    /// Header, key and body parts in one gathered send (the value is sent from caller memory).
    void send_frame(const Header &h, std::string_view key, std::vector<iovec> body) {
        uint8_t raw[kHeaderSize];
        h.encode(raw);
        std::vector<iovec> iov{{raw, kHeaderSize}, {const_cast<char *>(key.data()), key.size()}};
        iov.insert(iov.end(), body.begin(), body.end());
        io::Result r = io::send_iov(fd_, iov);
        if (r != io::Result::Ok) fail(std::string("send: ") + io::result_name(r));
    }

    /// Reads the reply header for `req`; an error reply is read whole and thrown.
    Header read_reply(const Header &req) {
        uint8_t raw[kHeaderSize];
        recv_or_break(raw, kHeaderSize);
        const Header r = Header::decode(raw);
        if (r.magic != kMagic || r.version != kVersion) fail("reply has a bad magic or version");
        if (r.status == ST_OK && (r.opcode != (req.opcode | kReplyBit) || r.request_id != req.request_id)) {
            fail("reply does not match the request");
        }
        if (r.status != ST_OK) {
            // Error messages are short; anything longer is not a reply from this protocol.
            if (r.value_len > (1u << 16)) fail("error reply too long");
            std::string msg(r.value_len, '\0');
            recv_or_break(msg.data(), msg.size());
            // Server-wide refusals (too many connections, a broken frame) end the connection.
            if (r.status == ST_SERVER_BUSY || r.status == ST_BAD_FRAME) broken_ = true;
            throw StoreError(r.status, msg);
        }
        return r;
    }

    void expect_empty_reply(const Header &req) {
        const Header r = read_reply(req);
        if (r.value_len != 0) fail("reply carries an unexpected body");
    }

    void hello() {
        Header h = request(OP_HELLO, 0, 0);
        send_frame(h, {}, {});
        const Header r = read_reply(h);
        if (r.value_len != kHelloReplySize) fail("HELLO reply has the wrong length");
        uint8_t b[kHelloReplySize];
        recv_or_break(b, sizeof(b));
        info_.version = get_u32(b);
        info_.capabilities = get_u32(b + 4);
        info_.max_key = get_u32(b + 8);
        info_.max_batch = get_u32(b + 12);
        info_.max_value = get_u64(b + 16);
        info_.capacity = get_u64(b + 24);
    }

    int fd_ = -1;
    uint64_t next_id_ = 1;
    bool broken_ = false;
    ServerInfo info_;
    zc::Pool *pool_ = nullptr;
    uint32_t registration_ = 0;
#ifdef ZCS_HAVE_RDMA
    std::unique_ptr<rdma::Endpoint> ep_;  // RDMA in use: this connection's queue pair
#endif
};

}  // namespace zcs

#endif  // ZCOPY_STORE_CLIENT_HPP
