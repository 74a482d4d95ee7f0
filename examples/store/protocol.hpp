// protocol.hpp: the wire format of the zcopy key-value store (see PROTOCOL.md), shared by the
// server and the header-only client, plus the blocking socket helpers both use.
//
// Every integer on the wire is little-endian and is (de)serialized byte by byte, so neither side
// depends on struct layout or host byte order.

#ifndef ZCOPY_STORE_PROTOCOL_HPP
#define ZCOPY_STORE_PROTOCOL_HPP

#include <sys/socket.h>
#include <sys/uio.h>

#include <cerrno>
#include <climits>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace zcs {

// ---------------------------------------------------------------------------------------------
// Constants

constexpr uint32_t kMagic = 0x564B435Au;  // the bytes "ZCKV" on the wire
constexpr uint8_t kVersion = 1;
constexpr size_t kHeaderSize = 32;

enum Op : uint8_t {
    OP_HELLO = 0x01,      // -> limits and capabilities
    OP_PUT = 0x02,        // key + value bytes -> created, filled in place, sealed
    OP_GET = 0x03,        // key -> value bytes, sent from the pool
    OP_DEL = 0x04,        // key -> removed
    OP_EXISTS = 0x05,     // key -> 1 byte: sealed or not
    OP_BATCH_PUT = 0x06,  // items -> one status per item; all sealed at the end of the frame
    OP_BATCH_GET = 0x07,  // keys -> one (status, value) per key
    OP_STATS = 0x08,      // -> "name value\n" lines
    // RDMA (servers with CAP_RDMA_DESC only; PROTOCOL.md, "RDMA")
    OP_COMMIT = 0x09,        // u64 lease of an RDMA PUT -> sealed
    OP_DONE = 0x0A,          // u64 lease of an RDMA GET -> reference released (of a PUT: aborted)
    OP_RDMA_CONNECT = 0x0B,  // the client's QpInfo -> the server's QpInfo; queue pairs connected
};
constexpr uint8_t kReplyBit = 0x80;  // reply opcode = request opcode | kReplyBit

// Request flags. FLAG_RDMA asks for an RDMA descriptor instead of inline bytes (PROTOCOL.md,
// "RDMA"); a server without CAP_RDMA_DESC answers it with ST_UNSUPPORTED.
constexpr uint16_t FLAG_RDMA = 0x0001;
constexpr uint16_t kKnownFlags = FLAG_RDMA;

// Capability bits in the HELLO reply and in STATS.
constexpr uint32_t CAP_TCP_VALUES = 0x1;    // values travel inline in the TCP stream
constexpr uint32_t CAP_RDMA_DESC = 0x2;     // RDMA_CONNECT, and PUT/GET with FLAG_RDMA (descriptors)
constexpr uint32_t CAP_COPY_ON_READ = 0x4;  // the server copies every GET (the baseline mode)

enum Status : uint16_t {
    ST_OK = 0,
    ST_NOT_FOUND = 1,        // no such key
    ST_ALREADY_EXISTS = 2,   // PUT of a key that is stored or being written
    ST_BUSY = 3,             // the key is being written (created, not sealed yet)
    ST_BAD_KEY = 4,          // empty key, or longer than the server's limit
    ST_VALUE_TOO_LARGE = 5,  // larger than the server's max value size (or the pool)
    ST_POOL_FULL = 6,        // no free block large enough now, or the object limit
    ST_BAD_OPCODE = 7,       // unknown opcode
    ST_BAD_REQUEST = 8,      // well-framed but malformed: bad field, flags, body layout
    ST_BATCH_TOO_LARGE = 9,  // more items than the server's max batch
    ST_UNSUPPORTED = 10,     // a capability the server does not have (FLAG_RDMA)
    ST_SERVER_BUSY = 11,     // too many connections; the server closes this one
    ST_BAD_FRAME = 12,       // bad magic or version; the server closes the connection
    ST_INTERNAL = 13,        // anything else (the message says what)
    ST_BAD_LEASE = 14,       // COMMIT/DONE of a lease not open on this connection (or the wrong kind)
};

inline const char *status_name(uint16_t s) {
    switch (s) {
        case ST_OK: return "OK";
        case ST_NOT_FOUND: return "NOT_FOUND";
        case ST_ALREADY_EXISTS: return "ALREADY_EXISTS";
        case ST_BUSY: return "BUSY";
        case ST_BAD_KEY: return "BAD_KEY";
        case ST_VALUE_TOO_LARGE: return "VALUE_TOO_LARGE";
        case ST_POOL_FULL: return "POOL_FULL";
        case ST_BAD_OPCODE: return "BAD_OPCODE";
        case ST_BAD_REQUEST: return "BAD_REQUEST";
        case ST_BATCH_TOO_LARGE: return "BATCH_TOO_LARGE";
        case ST_UNSUPPORTED: return "UNSUPPORTED";
        case ST_SERVER_BUSY: return "SERVER_BUSY";
        case ST_BAD_FRAME: return "BAD_FRAME";
        case ST_INTERNAL: return "INTERNAL";
        case ST_BAD_LEASE: return "BAD_LEASE";
        default: return "UNKNOWN_STATUS";
    }
}

// Sizes of the fixed records inside batch bodies and the HELLO reply.
constexpr size_t kBatchCountSize = 4;       // u32 count, first in every batch body
constexpr size_t kBatchPutItemSize = 16;    // u32 key_len, u32 reserved, u64 value_len
constexpr size_t kBatchGetKeySize = 4;      // u32 key_len
constexpr size_t kBatchGetItemSize = 16;    // u16 status, u16 reserved, u32 reserved, u64 size
constexpr size_t kHelloReplySize = 32;
constexpr size_t kLeaseIdSize = 8;          // COMMIT / DONE body: u64 lease
constexpr size_t kRdmaSizeSize = 8;         // RDMA PUT body: u64 value size
constexpr size_t kLeaseReplySize = 32;      // u64 addr, u64 length, u32 reserved, u32 rkey, u64 lease
constexpr size_t kQpInfoSize = 32;          // RDMA_CONNECT request and reply body

// ---------------------------------------------------------------------------------------------
// Little-endian encoding

inline void put_u16(uint8_t *p, uint16_t v) {
    p[0] = static_cast<uint8_t>(v);
    p[1] = static_cast<uint8_t>(v >> 8);
}
inline void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = static_cast<uint8_t>(v >> (8 * i));
}
inline uint16_t get_u16(const uint8_t *p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }
inline uint32_t get_u32(const uint8_t *p) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}
inline uint64_t get_u64(const uint8_t *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/// The 32-byte frame header. A frame is the header, then `key_len` key bytes, then `value_len`
/// body bytes (a PUT's value, a batch's items, a GET reply's value, an error's message).
struct Header {
    uint32_t magic = kMagic;
    uint8_t version = kVersion;
    uint8_t opcode = 0;
    uint16_t flags = 0;
    uint64_t request_id = 0;
    uint32_t key_len = 0;
    uint16_t status = ST_OK;  // replies only; 0 in requests
    uint16_t reserved = 0;
    uint64_t value_len = 0;

    void encode(uint8_t *out) const {
        put_u32(out + 0, magic);
        out[4] = version;
        out[5] = opcode;
        put_u16(out + 6, flags);
        put_u64(out + 8, request_id);
        put_u32(out + 16, key_len);
        put_u16(out + 20, status);
        put_u16(out + 22, reserved);
        put_u64(out + 24, value_len);
    }
    static Header decode(const uint8_t *in) {
        Header h;
        h.magic = get_u32(in + 0);
        h.version = in[4];
        h.opcode = in[5];
        h.flags = get_u16(in + 6);
        h.request_id = get_u64(in + 8);
        h.key_len = get_u32(in + 16);
        h.status = get_u16(in + 20);
        h.reserved = get_u16(in + 22);
        h.value_len = get_u64(in + 24);
        return h;
    }
};

/// One side's reliable-connected queue pair, as RDMA_CONNECT carries it (32 bytes): u32 qp_num,
/// u32 psn (24 bits), u16 lid, u8 mtu (an ibv_mtu: 1 = 256 .. 5 = 4096), u8 reserved, u32
/// reserved, 16 bytes GID.
struct QpInfo {
    uint32_t qp_num = 0;
    uint32_t psn = 0;
    uint16_t lid = 0;
    uint8_t mtu = 0;
    uint8_t gid[16] = {};

    void encode(uint8_t *out) const {
        std::memset(out, 0, kQpInfoSize);
        put_u32(out + 0, qp_num);
        put_u32(out + 4, psn);
        put_u16(out + 8, lid);
        out[10] = mtu;
        std::memcpy(out + 16, gid, sizeof(gid));
    }
    static QpInfo decode(const uint8_t *in) {
        QpInfo q;
        q.qp_num = get_u32(in + 0);
        q.psn = get_u32(in + 4);
        q.lid = get_u16(in + 8);
        q.mtu = in[10];
        std::memcpy(q.gid, in + 16, sizeof(q.gid));
        return q;
    }
    /// The reserved bytes are 0, the PSN fits in 24 bits and the MTU is an ibv_mtu.
    static bool well_formed(const uint8_t *in) {
        return in[11] == 0 && get_u32(in + 12) == 0 && get_u32(in + 4) <= 0xFFFFFFu && in[10] >= 1 && in[10] <= 5;
    }
};

/// The reply to an RDMA PUT or GET: where the object's bytes are in the server's pool and the
/// lease that COMMIT or DONE ends.
struct Lease {
    uint64_t addr = 0;
    uint64_t length = 0;
    uint32_t rkey = 0;
    uint64_t id = 0;

    void encode(uint8_t *out) const {
        put_u64(out + 0, addr);
        put_u64(out + 8, length);
        put_u32(out + 16, 0);  // the server's lkey is of no use to a peer
        put_u32(out + 20, rkey);
        put_u64(out + 24, id);
    }
    static Lease decode(const uint8_t *in) {
        Lease l;
        l.addr = get_u64(in + 0);
        l.length = get_u64(in + 8);
        l.rkey = get_u32(in + 20);
        l.id = get_u64(in + 24);
        return l;
    }
};

// ---------------------------------------------------------------------------------------------
// Blocking socket I/O

namespace io {

enum class Result {
    Ok,
    Eof,      // the peer closed (before all bytes arrived)
    Timeout,  // the deadline (the server's) or SO_RCVTIMEO / SO_SNDTIMEO passed, transfer unfinished
    Error,    // any other failure; errno says which
};

/// Receives exactly `n` bytes into `buf`, waiting as long as the socket's SO_RCVTIMEO allows for
/// each call (the client's helpers; the server's reads run against a deadline, server.cpp).
inline Result recv_all(int fd, void *buf, size_t n) {
    auto *p = static_cast<uint8_t *>(buf);
    size_t got = 0;
    while (got < n) {
        ssize_t r = ::recv(fd, p + got, n - got, MSG_WAITALL);
        if (r > 0) {
            got += static_cast<size_t>(r);
        } else if (r == 0) {
            return Result::Eof;
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
            return Result::Timeout;
        } else {
            return Result::Error;
        }
    }
    return Result::Ok;
}

/// Reads and throws away `n` bytes through a small scratch buffer (memory stays bounded).
inline Result discard(int fd, uint64_t n) {
    uint8_t scratch[64 * 1024];
    while (n > 0) {
        size_t chunk = n < sizeof(scratch) ? static_cast<size_t>(n) : sizeof(scratch);
        Result r = recv_all(fd, scratch, chunk);
        if (r != Result::Ok) return r;
        n -= chunk;
    }
    return Result::Ok;
}

/// Advances `iov` (from index `first`) past `sent` bytes that have been sent.
inline void consume(std::vector<iovec> &iov, size_t &first, size_t sent) {
    while (sent > 0 && first < iov.size()) {
        if (sent >= iov[first].iov_len) {
            sent -= iov[first].iov_len;
            iov[first].iov_len = 0;
            first++;
        } else {
            iov[first].iov_base = static_cast<uint8_t *>(iov[first].iov_base) + sent;
            iov[first].iov_len -= sent;
            sent = 0;
        }
    }
}

/// Sends every byte the iovecs describe (in place: the iovecs may point into the pool), in as
/// few sendmsg calls as the kernel allows. `iov` is consumed (advanced past what was sent).
inline Result send_iov(int fd, std::vector<iovec> &iov) {
    size_t first = 0;
    while (first < iov.size()) {
        if (iov[first].iov_len == 0) {
            first++;
            continue;
        }
        msghdr msg{};
        msg.msg_iov = &iov[first];
        size_t count = iov.size() - first;
        msg.msg_iovlen = count < static_cast<size_t>(IOV_MAX) ? count : static_cast<size_t>(IOV_MAX);
        ssize_t r = ::sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (r < 0) {
            if (errno == EINTR) continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK) return Result::Timeout;
            return Result::Error;
        }
        consume(iov, first, static_cast<size_t>(r));
    }
    return Result::Ok;
}

inline Result send_all(int fd, const void *buf, size_t n) {
    std::vector<iovec> iov{{const_cast<void *>(buf), n}};
    return send_iov(fd, iov);
}

inline const char *result_name(Result r) {
    switch (r) {
        case Result::Ok: return "ok";
        case Result::Eof: return "connection closed by peer";
        case Result::Timeout: return "timed out";
        case Result::Error: return std::strerror(errno);
    }
    return "?";
}

}  // namespace io
}  // namespace zcs

#endif  // ZCOPY_STORE_PROTOCOL_HPP
