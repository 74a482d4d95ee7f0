// zcopy.hpp: a header-only C++17 wrapper over the C ABI of zcopy.h.
//
// zc::Pool and zc::Buffer own their handles (move-only; the destructor closes / releases), and
// every failing call throws zc::Error carrying the zc_status and the library's message.
// Thread-safety is the C API's: a Pool may be used from many threads at once (not while it is
// being destroyed); a Buffer may move between threads but not be used by two at once.

#ifndef ZCOPY_HPP
#define ZCOPY_HPP

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "zcopy.h"

namespace zc {

/// A failed zcopy call: `status()` is the zc_status, `what()` the library's message.
class Error : public std::runtime_error {
public:
    Error(zc_status status, const std::string &message) : std::runtime_error(message), status_(status) {}
    zc_status status() const noexcept { return status_; }

private:
    zc_status status_;
};

namespace detail {
inline void check(zc_status status) {
    if (status != ZC_OK) {
        // The message names its kind itself ("invalid argument: ..."); the status is for code.
        throw Error(status, zc_last_error_message());
    }
}
/// `name` as a C string, refusing an embedded NUL (which would cut it to another name).
inline const char *pool_name(const std::string &name) {
    if (name.find('\0') != std::string::npos) {
        throw Error(ZC_ERR_INVALID_ARGUMENT, "invalid argument: pool name contains a NUL byte");
    }
    return name.c_str();
}
}  // namespace detail

/// A read-only byte range.
struct Bytes {
    const uint8_t *data = nullptr;
    size_t size = 0;
    const uint8_t *begin() const noexcept { return data; }
    const uint8_t *end() const noexcept { return data + size; }
};

/// A writable byte range (valid until the buffer is sealed).
struct MutableBytes {
    uint8_t *data = nullptr;
    size_t size = 0;
    uint8_t *begin() const noexcept { return data; }
    uint8_t *end() const noexcept { return data + size; }
};

/// zc_pool_options, filled with the defaults by its constructor. A name set with with_name is
/// owned by the Options: a copy owns a copy of it, a move takes it along.
struct Options : zc_pool_options {
    Options() noexcept : zc_pool_options() { zc_pool_options_init(this); }
    Options(const Options &other) : zc_pool_options(other) { take_name(other, other.name_); }
    Options(Options &&other) noexcept : zc_pool_options(other) {
        if (take_name(other, std::move(other.name_))) {
            other.name = nullptr;  // its string moved here
        }
    }
    Options &operator=(const Options &other) {
        if (this != &other) {
            static_cast<zc_pool_options &>(*this) = other;
            take_name(other, other.name_);
        }
        return *this;
    }
    Options &operator=(Options &&other) noexcept {
        if (this != &other) {
            static_cast<zc_pool_options &>(*this) = other;
            if (take_name(other, std::move(other.name_))) {
                other.name = nullptr;
            }
        }
        return *this;
    }
    ~Options() = default;

    Options &with_size(uint64_t bytes) noexcept { size = bytes; return *this; }
    Options &with_pages(uint32_t mode) noexcept { page_mode = mode; return *this; }
    Options &with_prefault(bool on) noexcept { prefault = on; return *this; }
    Options &with_rdma(uint32_t mode) noexcept { rdma = mode; return *this; }
    Options &with_eviction(uint32_t mode) noexcept { eviction = mode; return *this; }
    Options &with_max_objects(uint64_t n) noexcept { max_objects = n; return *this; }
    /// A shared pool named `shared_name`, in the file /dev/shm/zcopy.<shared_name>, that other
    /// processes attach with Pool::attach. Opening a name that exists throws ZC_ERR_SYSTEM.
    Options &with_name(std::string shared_name) {
        detail::pool_name(shared_name);
        name_ = std::move(shared_name);
        name = name_.c_str();
        return *this;
    }
    /// File mode of a shared pool's file: 0 (the default) is 0600; 0660 lets its group attach.
    Options &with_shared_mode(uint32_t mode) noexcept { shared_mode = mode; return *this; }

private:
    /// After the C fields were copied from `from`: keeps `name` pointing at a string this object
    /// owns when `from.name` pointed at the one `from` owned (`owned` is that string, copied or
    /// moved); says whether it did. A name set directly in the C field stays the caller's pointer.
    template <class S>
    bool take_name(const Options &from, S &&owned) {
        bool from_owned = from.name != nullptr && from.name == from.name_.c_str();
        name_ = std::forward<S>(owned);
        if (from_owned) {
            name = name_.c_str();
        }
        return from_owned;
    }
    std::string name_;
};

/// One reference to one object: from Pool::create (writable until sealed) or Pool::get
/// (read-only). The destructor releases it; releasing an unsealed buffer aborts it.
class Buffer {
public:
    Buffer() noexcept = default;
    /// Takes ownership of `handle`.
    explicit Buffer(zc_buffer *handle) noexcept : h_(handle) {}
    Buffer(const Buffer &) = delete;
    Buffer &operator=(const Buffer &) = delete;
    Buffer(Buffer &&other) noexcept : h_(std::exchange(other.h_, nullptr)) {}
    Buffer &operator=(Buffer &&other) noexcept {
        if (this != &other) {
            zc_release(h_);
            h_ = std::exchange(other.h_, nullptr);
        }
        return *this;
    }
    ~Buffer() { zc_release(h_); }

    explicit operator bool() const noexcept { return h_ != nullptr; }
    zc_buffer *handle() const noexcept { return h_; }
    /// Gives the handle up: the caller must zc_release it.
    zc_buffer *release() noexcept { return std::exchange(h_, nullptr); }

    /// Writable pointer: null once sealed, and for buffers from Pool::get.
    uint8_t *data() noexcept { return zc_buffer_data(h_); }
    /// The bytes, in the pool (the same address for every reference to the object).
    const uint8_t *cdata() const noexcept { return zc_buffer_const_data(h_); }
    size_t size() const noexcept { return zc_buffer_size(h_); }
    Bytes bytes() const noexcept { return Bytes{cdata(), size()}; }
    /// The bytes as a writable range; empty once sealed.
    MutableBytes span() noexcept {
        uint8_t *p = data();
        return MutableBytes{p, p != nullptr ? size() : 0};
    }
    template <class T>
    T *as() noexcept { return reinterpret_cast<T *>(data()); }
    template <class T>
    const T *as_const() const noexcept { return reinterpret_cast<const T *>(cdata()); }

    /// Immutable and visible to Pool::get; this buffer stays a read reference.
    void seal() { detail::check(zc_seal(h_)); }
    /// Discards an unsealed object (throws for a sealed one, which then stays as it is).
    void abort() {
        detail::check(zc_abort(h_));
        h_ = nullptr;
    }

    size_t part_count() const noexcept { return zc_buffer_part_count(h_); }
    Bytes part(size_t index) const {
        Bytes b;
        detail::check(zc_buffer_part(h_, index, &b.data, &b.size));
        return b;
    }
    MutableBytes part_mut(size_t index) {
        MutableBytes b;
        detail::check(zc_buffer_part_mut(h_, index, &b.data, &b.size));
        return b;
    }

    /// {addr, length, lkey, rkey} under RDMA registration `index`.
    zc_rdma_desc rdma_desc(uint32_t index = 0) const {
        zc_rdma_desc d{};
        detail::check(zc_buffer_rdma_desc(h_, index, &d));
        return d;
    }

private:
    zc_buffer *h_ = nullptr;
};

/// An open pool. The destructor closes it (a shared pool: detaches this process; its objects
/// stay); buffers may outlive it.
class Pool {
public:
    /// A private pool, or with Options::with_name a new shared pool.
    explicit Pool(const Options &options = Options()) { detail::check(zc_pool_open(&options, &p_)); }
    /// Attaches the shared pool `name` (made by a Pool with that name, in this process or another):
    /// the same objects, at this process's own address. A second attach in one process is a
    /// second handle of its own. Throws ZC_ERR_SYSTEM when there is no such pool (or it is
    /// another user's), ZC_ERR_INVALID_ARGUMENT for a bad name or a file that is not a pool.
    static Pool attach(const std::string &name) { return attach_with(name, nullptr); }
    /// The same with options: only prefault, lock_memory, rdma, rdma_devices, shared_mode (and
    /// hugetlbfs_dir with ZC_PAGES_HUGETLB) apply; their name must be unset or equal `name`.
    static Pool attach(const std::string &name, const Options &options) { return attach_with(name, &options); }
    /// Removes the shared pool `name`'s file. Attached processes keep working on it until they
    /// close; the name can be created again at once. Throws ZC_ERR_SYSTEM when there is none.
    static void unlink(const std::string &name) { detail::check(zc_pool_unlink(detail::pool_name(name))); }
    Pool(const Pool &) = delete;
    Pool &operator=(const Pool &) = delete;
    Pool(Pool &&other) noexcept : p_(std::exchange(other.p_, nullptr)) {}
    Pool &operator=(Pool &&other) noexcept {
        if (this != &other) {
            zc_pool_close(p_);
            p_ = std::exchange(other.p_, nullptr);
        }
        return *this;
    }
    ~Pool() { zc_pool_close(p_); }

    zc_pool *handle() const noexcept { return p_; }

    Buffer create(std::string_view key, size_t size) {
        zc_buffer *b = nullptr;
        detail::check(zc_create_buffer(p_, key.data(), key.size(), size, &b));
        return Buffer(b);
    }
    Buffer create_parts(std::string_view key, const std::vector<size_t> &sizes) {
        zc_buffer *b = nullptr;
        detail::check(zc_create_parts(p_, key.data(), key.size(), sizes.data(), sizes.size(), &b));
        return Buffer(b);
    }
    /// The sealed object (read-only, no copy). timeout 0: at once; > 0: wait; forever(): -1.
    Buffer get(std::string_view key, std::chrono::milliseconds timeout = std::chrono::milliseconds(0)) {
        zc_buffer *b = nullptr;
        detail::check(zc_get(p_, key.data(), key.size(), static_cast<int64_t>(timeout.count()), &b));
        return Buffer(b);
    }
    /// Like get with no wait, but an absent or unsealed key is an empty optional, not an error.
    std::optional<Buffer> try_get(std::string_view key) {
        zc_buffer *b = nullptr;
        zc_status s = zc_get(p_, key.data(), key.size(), 0, &b);
        if (s == ZC_ERR_NOT_FOUND || s == ZC_ERR_NOT_SEALED) {
            return std::nullopt;
        }
        detail::check(s);
        return Buffer(b);
    }
    static constexpr std::chrono::milliseconds forever() noexcept { return std::chrono::milliseconds(-1); }

    void erase(std::string_view key) { detail::check(zc_delete(p_, key.data(), key.size())); }
    bool contains(std::string_view key) const noexcept { return zc_contains(p_, key.data(), key.size()); }
    /// The one-copy paths.
    void put(std::string_view key, const void *data, size_t size) {
        detail::check(zc_put(p_, key.data(), key.size(), static_cast<const uint8_t *>(data), size));
    }
    size_t get_into(std::string_view key, void *dst, size_t capacity) {
        size_t n = 0;
        detail::check(zc_get_into(p_, key.data(), key.size(), 0, static_cast<uint8_t *>(dst), capacity, &n));
        return n;
    }

    zc_pool_stats stats() const {
        zc_pool_stats s{};
        detail::check(zc_pool_get_stats(p_, &s));
        return s;
    }
    std::pair<void *, size_t> region() const {
        void *base = nullptr;
        size_t len = 0;
        detail::check(zc_pool_region(p_, &base, &len));
        return {base, len};
    }
    uint32_t rdma_count() const noexcept { return zc_pool_rdma_count(p_); }
    void *rdma_pd(uint32_t index) const noexcept { return zc_pool_rdma_pd(p_, index); }
    uint32_t register_pd(void *ibv_pd) {
        uint32_t index = 0;
        detail::check(zc_pool_register_pd(p_, ibv_pd, &index));
        return index;
    }

    /// Reclaims what dead processes attached to this shared pool held (their creates aborted,
    /// references dropped, slots freed); returns how many processes. 0 for a private pool.
    uint64_t reclaim() {
        uint64_t n = 0;
        detail::check(zc_pool_reclaim(p_, &n));
        return n;
    }
    /// Throws ZC_ERR_INTERNAL naming the first broken invariant of a shared pool's state.
    void check() const { detail::check(zc_pool_check(p_)); }

private:
    explicit Pool(zc_pool *handle) noexcept : p_(handle) {}
    static Pool attach_with(const std::string &name, const zc_pool_options *options) {
        zc_pool *p = nullptr;
        detail::check(zc_pool_attach(detail::pool_name(name), options, &p));
        return Pool(p);
    }

    zc_pool *p_ = nullptr;
};

}  // namespace zc

#endif  // ZCOPY_HPP
