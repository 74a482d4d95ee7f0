"""Pool and Buffer: the C ABI's lifecycle in Python, with views that keep their buffer alive.

Lifetime: a `_Handle` owns one `zc_buffer *` and calls `zc_release` exactly once, through
`weakref.finalize`, when it is garbage collected. Every view (numpy array, memoryview, tensor)
reaches its handle through its base chain (array.base -> _Span -> _Handle), and a `Buffer` holds
it too, so the release happens when the last of them is gone, whichever order they die in.
`Buffer.release()` only drops the Buffer's own reference: it is safe with live views.

Fork: the pool region is mapped MADV_DONTFORK, so a forked child has none of its parent's pool
memory, and the C handles it inherits point into the parent's process state. A hook run in the
child (os.register_at_fork) bumps `_generation` and marks every open Pool as forked; Buffers and
handles carry the generation they were made in. In the child, every method of a Pool or Buffer
from before the fork raises PoolForkedError, and the hook detaches their finalizers (the parent
still owns what they point to), so neither a collection nor the child's exit calls the library
for them; close() and release() are harmless no-ops there. Arrays and memoryviews taken before
the fork cannot be guarded: their memory is absent in the child, and touching them there is a
segmentation fault.
"""

import builtins
import ctypes
import math
import numbers
import operator
import os
import weakref

import numpy as np

from . import _lib
from ._lib import lib

DEFAULT_POOL_SIZE = 256 << 20


class Error(Exception):
    """A zcopy call failed. `status` is the C status code, the message its detail."""

    status = None

    def __init__(self, message, status=None):
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self):
        return self.message


class InvalidArgumentError(Error, ValueError):
    status = _lib.ERR_INVALID_ARGUMENT


class FormatError(InvalidArgumentError):
    """The bytes under a key are not the kind of zcopy value the call reads, or their metadata (part
    table, dtype, shape) claims other or more bytes than the object holds. Stored metadata is a
    claim made by whoever wrote the bytes: it is checked before any view is built, so a lying
    header gives this error, never a view past the object's bytes."""


class NotFoundError(Error, KeyError):
    status = _lib.ERR_NOT_FOUND


class AlreadyExistsError(Error):
    status = _lib.ERR_ALREADY_EXISTS


class NotSealedError(Error):
    status = _lib.ERR_NOT_SEALED


class AlreadySealedError(Error):
    status = _lib.ERR_ALREADY_SEALED


class OutOfMemoryError(Error, MemoryError):
    status = _lib.ERR_OUT_OF_MEMORY


class TooLargeError(OutOfMemoryError, InvalidArgumentError):
    """The value is larger than the whole pool: it can never fit, however much is freed. Like
    every "does not fit" it is a MemoryError (an OutOfMemoryError); the C API reports it as
    ZC_ERR_INVALID_ARGUMENT, so it is also an InvalidArgumentError (a ValueError) and its
    `status` is that one."""

    status = _lib.ERR_INVALID_ARGUMENT


class TimeoutError(Error, builtins.TimeoutError):
    status = _lib.ERR_TIMEOUT


class PoolClosedError(Error):
    status = _lib.ERR_POOL_CLOSED


class PoolForkedError(PoolClosedError):
    """A Pool, Buffer or handle opened before this process was forked, used in the child: the
    pool's memory is not mapped in the child. Open a new zcopy.Pool in the child."""


class RdmaError(Error):
    status = _lib.ERR_RDMA


class SystemCallError(Error, OSError):
    status = _lib.ERR_SYSTEM


class InternalError(Error):
    status = _lib.ERR_INTERNAL


_BY_STATUS = {
    cls.status: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        AlreadyExistsError,
        NotSealedError,
        AlreadySealedError,
        OutOfMemoryError,
        TimeoutError,
        PoolClosedError,
        RdmaError,
        SystemCallError,
        InternalError,
    )
}


def _raise(status):
    message = lib.zc_last_error_message().decode("utf-8", "replace")
    raise _BY_STATUS.get(status, Error)(message, status)


def _key(key):
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    if isinstance(key, (bytearray, memoryview)):
        return bytes(key)
    raise builtins.TypeError("a key is str or bytes, not %s" % type(key).__name__)


_SIZE_MAX = (1 << (8 * ctypes.sizeof(ctypes.c_size_t))) - 1
_U32_MAX = (1 << 32) - 1
_U64_MAX = (1 << 64) - 1


def _c_size(value, what="size"):
    """`value` as a byte count for a size_t parameter. Negative is an InvalidArgumentError; above
    SIZE_MAX (which ctypes would silently wrap: 2**64 + 8 bytes became 8) the caller answers
    TooLargeError, since no pool is that large."""
    value = operator.index(value)
    if value < 0:
        raise InvalidArgumentError("%s must be >= 0, got %d" % (what, value))
    return value


def _parts_total(sizes):
    """The bytes an object of parts of these sizes takes (docs/FORMAT.md): header and parts, each
    padded to 64."""
    total = (32 + 16 * len(sizes) + 63) // 64 * 64
    for n in sizes:
        total = (total + n + 63) // 64 * 64
    return total


def _c_index(value, limit, what):
    """`value` as an int for a C parameter whose largest value is `limit`: ctypes would silently
    keep only its low bits (part 2**64 would read part 0)."""
    value = operator.index(value)
    if not 0 <= value <= limit:
        raise InvalidArgumentError("%s %d is out of range (0 to %d)" % (what, value, limit))
    return value


_TIMEOUT_MAX_MS = (1 << 63) - 1  # the C parameter is int64 milliseconds, -1 waiting forever


def _timeout_ms(timeout):
    """Seconds as the C API's milliseconds: None -> 0 (answer at once), rounded up, and any wait
    too long for int64 milliseconds (math.inf included) -> -1, forever. ctypes would keep only
    the low 64 bits of a larger count: a timeout of 18446744073709552 s became 384 ms."""
    if timeout is None:
        return 0
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real):
        raise builtins.TypeError("timeout must be None or a number of seconds, not %s" % type(timeout).__name__)
    if timeout != timeout or timeout < 0:
        raise InvalidArgumentError("timeout must be None, a number of seconds >= 0, or math.inf; got %r" % (timeout,))
    ms = timeout * 1000
    if ms >= _TIMEOUT_MAX_MS:
        return -1
    return int(math.ceil(ms))


def _not_copyable(what):
    """Methods that refuse pickling and copying of a handle to this process's pool memory: a copy
    would carry the raw pointer without owning it (used after the original is released, or
    unpickled in another process, it would crash)."""

    def refuse(self, *args):
        raise TypeError(
            "%s cannot be pickled or copied: it refers to pool memory mapped by this process. "
            "Send the key instead and read it through a Pool opened in the other process, or copy "
            "the values (an array from get_array pickles and deep-copies as a plain array)" % what
        )

    return refuse


# Bumped in every forked child; handles, buffers and pools made before it are the parent's.
_generation = 0
_open_pools = weakref.WeakSet()
_zc_release = lib.zc_release
_zc_pool_close = lib.zc_pool_close


def _release_unless_forked(ptr, generation):
    """A handle's finalizer where the fork hook cannot detach them (see below)."""
    if generation == _generation:
        _zc_release(ptr)


# weakref.finalize keeps every live finalizer in a class-level dict (CPython and PyPy, since
# Python 3.4). The fork hook walks it once to detach the handles' finalizers, so a handle's
# release stays a direct ctypes call: a Python function in between would cost every get about as
# much again as the whole fork check is allowed. Without that dict, each release checks instead.
_live_finalizers = getattr(weakref.finalize, "_registry", None)
if not isinstance(_live_finalizers, dict):
    _live_finalizers = None


def _after_fork_in_child():
    global _generation
    _generation += 1
    for pool in list(_open_pools):
        pool._forked()
    if _live_finalizers is not None:
        for finalizer, info in list(_live_finalizers.items()):
            if info.func is _zc_release:
                finalizer.detach()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _close_pool(ptr, generation):
    if generation == _generation:
        _zc_pool_close(ptr)


def _forked_buffer_error(key):
    return PoolForkedError(
        "this zcopy.Buffer (key %r) comes from a pool opened before this process (pid %d) was forked: "
        "the pool's memory is not mapped in a forked child. Open a new zcopy.Pool in the child "
        "(with the same keys if it is to share them) and get the key there" % (key, os.getpid())
    )


class _Handle:
    """Owns one `zc_buffer *`; releases it once, when collected. It may also be an array's base
    directly (`__array_interface__`), when nothing else needs to sit between them."""

    __slots__ = ("ptr", "generation", "finalizer", "views", "__array_interface__", "__weakref__")

    def __init__(self, ptr):
        self.ptr = ptr
        self.generation = _generation
        self.views = None
        if _live_finalizers is not None:
            self.finalizer = weakref.finalize(self, _zc_release, ptr)
        else:
            self.finalizer = weakref.finalize(self, _release_unless_forked, ptr, _generation)
        # At interpreter exit the process frees everything; releasing then could pull memory
        # from under views that other exit handlers still read.
        self.finalizer.atexit = False

    def forget(self):
        """The C side consumed the handle (zc_abort): never release it again."""
        self.finalizer.detach()
        self.ptr = None

    __reduce__ = __reduce_ex__ = __getstate__ = __copy__ = __deepcopy__ = _not_copyable("a zcopy buffer handle")


class _Span:
    """Exposes pool bytes to numpy through `__array_interface__`, holding their handle: numpy
    keeps it as the array's base, so the bytes live as long as any view of them."""

    __slots__ = ("__array_interface__", "handle", "__weakref__")

    def __init__(self, handle, address, nbytes, readonly):
        self.handle = handle
        self.__array_interface__ = {
            "data": (address, readonly),
            "shape": (nbytes,),
            "typestr": "|u1",
            "version": 3,
        }

    __reduce__ = __reduce_ex__ = __getstate__ = __copy__ = __deepcopy__ = _not_copyable("a zcopy buffer view's owner")


def _view(handle, address, nbytes, readonly):
    """A uint8 ndarray over `nbytes` of pool memory at `address`, owned through `handle`."""
    arr = np.asarray(_Span(handle, address, nbytes, readonly))
    if not readonly:
        # Writable views are made read-only when the buffer is sealed.
        if handle.views is None:
            handle.views = []
        handle.views.append(weakref.ref(arr))
    return arr


def _typed(handle, arr, dtype, shape):
    """`arr` (a uint8 view) as `dtype` and `shape`. A writable result is recorded with its
    handle too, so that sealing makes it read-only like the view it came from."""
    dtype = np.dtype(dtype)
    if dtype == np.uint8 and shape is None:
        return arr
    out = arr.view(dtype) if dtype != np.uint8 else arr
    if shape is not None:
        out = out.reshape(shape)
    if out.flags.writeable:
        handle.views.append(weakref.ref(out))
    return out


class Buffer:
    """One reference to one object of a pool: writable from `Pool.create` until sealed, read-only
    from `Pool.get`. Release it with `release()` or a `with` block, or let it be collected; views
    of its bytes keep the object alive after that."""

    __slots__ = ("_handle", "key", "_writer", "_sealed", "__weakref__")

    __reduce__ = __reduce_ex__ = __getstate__ = __copy__ = __deepcopy__ = _not_copyable("a zcopy.Buffer")

    def __init__(self, ptr, key, writer):
        self._handle = _Handle(ptr)
        self.key = key
        self._writer = writer
        self._sealed = not writer

    def _h(self):
        h = self._handle
        if h is None:
            raise InvalidArgumentError("the buffer for key %r was released" % (self.key,))
        if h.generation != _generation:
            raise _forked_buffer_error(self.key)
        return h

    @property
    def size(self):
        return lib.zc_buffer_size(self._h().ptr)

    def __len__(self):
        return self.size

    @property
    def address(self):
        """Address of the first byte, inside the pool (the same for every reference)."""
        return lib.zc_buffer_const_data(self._h().ptr)

    @property
    def sealed(self):
        return self._sealed

    @property
    def writable(self):
        h = self._handle
        return h is not None and h.generation == _generation and self._writer and not self._sealed

    @property
    def released(self):
        return self._handle is None

    def seal(self):
        """Makes the object immutable and visible to `get`. Views handed out before become
        read-only, and writable memoryviews are released (views derived from them by slicing are
        the caller's to stop writing)."""
        h = self._h()
        status = lib.zc_seal(h.ptr)
        if status:
            _raise(status)
        self._sealed = True
        if h.views:
            for ref in h.views:
                view = ref()
                if isinstance(view, memoryview):
                    try:
                        view.release()
                    except BufferError:  # something holds a buffer exported from it
                        pass
                elif view is not None:
                    view.flags.writeable = False
            h.views = None
        return self

    def abort(self):
        """Discards an unsealed object. With live views of it, the object goes when the last view
        does (its key stays taken until then)."""
        h = self._h()
        if self._sealed:
            raise AlreadySealedError("buffer for key %r is already sealed" % (self.key,))
        self._handle = None
        if h.views and any(ref() is not None for ref in h.views):
            return
        status = lib.zc_abort(h.ptr)
        if status:
            _raise(status)
        h.forget()

    def release(self):
        """Drops this reference. Idempotent; safe while views of the bytes are alive (the object
        is released when the last of them is gone). Releasing an unsealed buffer aborts it."""
        self._handle = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def __repr__(self):
        h = self._handle
        state = "released" if h is None else ("sealed" if self._sealed else "writable")
        if h is not None and h.generation != _generation:
            state += ", from before a fork: unusable in this process"
        return "<zcopy.Buffer key=%r %s>" % (self.key, state)

    def array(self, dtype=np.uint8, shape=None):
        """The buffer's bytes as an ndarray (no copy): writable while unsealed, read-only after."""
        h = self._h()
        address = lib.zc_buffer_const_data(h.ptr)  # the same bytes a writer writes
        return _typed(h, _view(h, address or 0, lib.zc_buffer_size(h.ptr), not self.writable), dtype, shape)

    def memoryview(self):
        """The buffer's bytes as a memoryview (no copy). A memoryview cannot turn read-only, so a
        writable one (taken before the seal) is released by `seal()`: using it afterwards raises
        ValueError; take a new, read-only one then."""
        arr = self.array()
        view = memoryview(arr)
        if not view.readonly:
            self._h().views.append(weakref.ref(view))
        return view

    def tobytes(self):
        """A copy of the bytes."""
        h = self._h()
        return ctypes.string_at(lib.zc_buffer_const_data(h.ptr), lib.zc_buffer_size(h.ptr))

    @property
    def part_count(self):
        """Parts of an object made by `Pool.create_parts`; 0 for a plain object."""
        return lib.zc_buffer_part_count(self._h().ptr)

    def part_range(self, index):
        """(address, length) of part `index`, checked to lie inside the buffer's bytes."""
        h = self._h()
        index = _c_index(index, _SIZE_MAX, "part index")
        address, length = ctypes.c_void_p(), ctypes.c_size_t()
        status = lib.zc_buffer_part(h.ptr, index, ctypes.byref(address), ctypes.byref(length))
        if status:
            _raise(status)
        address, length = address.value or 0, length.value
        base, size = lib.zc_buffer_const_data(h.ptr) or 0, lib.zc_buffer_size(h.ptr)
        if address < base or address + length > base + size:
            raise FormatError(
                "part %d of key %r is at %d+%d, outside the object's %d bytes" % (index, self.key, address - base, length, size)
            )
        return address, length

    def part(self, index, dtype=np.uint8, shape=None):
        """Part `index` as an ndarray (no copy): writable while unsealed, read-only after."""
        h = self._h()
        address, length = self.part_range(index)
        return _typed(h, _view(h, address, length, not self.writable), dtype, shape)

    def rdma_desc(self, index=0):
        """(addr, length, lkey, rkey) under RDMA registration `index`."""
        d = _lib.RdmaDesc()
        index = _c_index(index, _U32_MAX, "RDMA registration index")
        status = lib.zc_buffer_rdma_desc(self._h().ptr, index, ctypes.byref(d))
        if status:
            _raise(status)
        return d.addr, d.length, d.lkey, d.rkey


class Pool:
    """A zcopy pool: one mapped (and, where devices exist, RDMA-registered) memory region.
    `eviction="lru"` lets a create that does not fit evict sealed objects nobody holds, least
    recently used first (off by default: nothing is ever dropped silently).

    Every method may be called from several threads at once; `close()` must not race with them.
    Buffers and views may outlive the pool: their memory stays mapped until they are gone.
    Pools and buffers cannot be pickled or copied (TypeError): each process opens its own.
    In a child forked after the pool was opened, every method of the pool and of its buffers
    raises PoolForkedError: open a new Pool in the child.
    """

    __reduce__ = __reduce_ex__ = __getstate__ = __copy__ = __deepcopy__ = _not_copyable("a zcopy.Pool")

    def __init__(
        self,
        size=DEFAULT_POOL_SIZE,
        *,
        pages="thp",
        prefault=True,
        lock_memory=False,
        max_objects=0,
        hugetlbfs_dir=None,
        rdma="auto",
        rdma_devices=None,
        eviction="none",
    ):
        opts = _lib.PoolOptions()
        lib.zc_pool_options_init(ctypes.byref(opts))
        if pages not in _lib.PAGES:
            raise InvalidArgumentError("pages must be one of %s" % sorted(_lib.PAGES))
        if rdma not in _lib.RDMA:
            raise InvalidArgumentError("rdma must be one of %s" % sorted(_lib.RDMA))
        if eviction not in _lib.EVICTION:
            raise InvalidArgumentError("eviction must be one of %s" % sorted(_lib.EVICTION))
        opts.eviction = _lib.EVICTION[eviction]
        opts.size = _c_index(size, _U64_MAX, "pool size")
        opts.page_mode = _lib.PAGES[pages]
        opts.prefault = bool(prefault)
        opts.lock_memory = bool(lock_memory)
        opts.max_objects = _c_index(max_objects, _U64_MAX, "max_objects")
        opts.hugetlbfs_dir = None if hugetlbfs_dir is None else str(hugetlbfs_dir).encode()
        opts.rdma = _lib.RDMA[rdma]
        if rdma_devices is not None and not isinstance(rdma_devices, str):
            rdma_devices = ",".join(rdma_devices)
        opts.rdma_devices = None if rdma_devices is None else rdma_devices.encode()
        ptr = ctypes.c_void_p()
        status = lib.zc_pool_open(ctypes.byref(opts), ctypes.byref(ptr))
        if status:
            _raise(status)
        self._ptr = ptr.value
        self._pid = os.getpid()
        self._fork_child = False
        self._finalizer = weakref.finalize(self, _close_pool, self._ptr, _generation)
        _open_pools.add(self)
        self._capacity = self.stats()["capacity_bytes"]

    def _forked(self):
        """Called in a forked child: the pool's memory is the parent's, absent here."""
        if self._ptr is not None:
            self._ptr = None
            self._fork_child = True
            self._finalizer.detach()

    def _p(self):
        if self._ptr is None:
            if self._fork_child:
                raise PoolForkedError(
                    "this zcopy.Pool was opened in process %d, which then forked: the pool's memory is "
                    "not mapped in a forked child (pid %d), so the pool cannot be used here. Open a new "
                    "zcopy.Pool in the child; arrays and buffers taken from the parent's pool before the "
                    "fork must not be touched in the child either" % (self._pid, os.getpid())
                )
            raise PoolClosedError("the pool is closed")
        return self._ptr

    def _too_large(self, asked):
        return TooLargeError(
            "larger than the whole pool: asked %d bytes, pool is %d bytes (it can never fit: store it "
            "elsewhere or open a larger pool)" % (asked, self._capacity)
        )

    def _create_failed(self, status, asked):
        """Raises for a create or put of `asked` bytes (the whole object) that failed with `status`:
        TooLargeError when the C API's invalid argument is the size being larger than the pool."""
        if status == _lib.ERR_INVALID_ARGUMENT and asked > self._capacity:
            raise self._too_large(asked)
        _raise(status)

    def close(self):
        """Closes the pool (idempotent). Buffers and views keep their memory until they go. In a
        forked child, closing a pool of the parent does nothing (it is the parent's to close)."""
        self._ptr = None
        self._finalizer()

    @property
    def closed(self):
        return self._ptr is None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def create(self, key, size):
        """A writable buffer of `size` bytes for `key`, in place in the pool. Does not fit:
        TooLargeError (larger than the whole pool) or OutOfMemoryError (pool full now, or the
        object limit reached), both MemoryErrors."""
        k = _key(key)
        size = _c_size(size)
        if size > _SIZE_MAX:
            raise self._too_large(size)
        out = ctypes.c_void_p()
        status = lib.zc_create_buffer(self._p(), k, len(k), size, ctypes.byref(out))
        if status:
            self._create_failed(status, size)
        return Buffer(out.value, key, True)

    def create_parts(self, key, sizes):
        """One writable object made of parts of these sizes (each 64-byte aligned)."""
        k = _key(key)
        sizes = [_c_size(n, "part size") for n in sizes]
        if any(n > _SIZE_MAX for n in sizes):
            raise self._too_large(_parts_total(sizes))
        arr = (ctypes.c_size_t * len(sizes))(*sizes)
        out = ctypes.c_void_p()
        status = lib.zc_create_parts(self._p(), k, len(k), arr, len(sizes), ctypes.byref(out))
        if status:
            self._create_failed(status, _parts_total(sizes))
        return Buffer(out.value, key, True)

    def seal(self, buf):
        """Seals `buf` (same as `buf.seal()`)."""
        return buf.seal()

    def get(self, key, timeout=None):
        """A read-only reference to the sealed object under `key`: the same bytes its writer
        wrote. `timeout`: None or 0 answers at once (NotFoundError, or NotSealedError for a
        created key); seconds > 0 waits for the key to be sealed (then TimeoutError), rounded up to
        whole milliseconds; math.inf, or any wait too long for int64 milliseconds (about 292
        million years), waits forever. Negative or NaN: InvalidArgumentError; bool or a
        non-number: TypeError."""
        k = _key(key)
        out = ctypes.c_void_p()
        status = lib.zc_get(self._p(), k, len(k), _timeout_ms(timeout), ctypes.byref(out))
        if status:
            _raise(status)
        return Buffer(out.value, key, False)

    def delete(self, key):
        """Removes `key` at once; readers keep their bytes until they let go."""
        k = _key(key)
        status = lib.zc_delete(self._p(), k, len(k))
        if status:
            _raise(status)

    def contains(self, key):
        """Whether `key` is sealed (visible to `get`)."""
        k = _key(key)
        return bool(lib.zc_contains(self._p(), k, len(k)))

    __contains__ = contains

    def put(self, key, data):
        """Stores a copy of a bytes-like object (the one-copy path). Does not fit: a MemoryError,
        TooLargeError or OutOfMemoryError, as for `create`."""
        k = _key(key)
        src = np.frombuffer(data, dtype=np.uint8) if not isinstance(data, np.ndarray) else data
        if not src.flags.c_contiguous:
            src = np.ascontiguousarray(src)
        status = lib.zc_put(self._p(), k, len(k), src.ctypes.data, src.nbytes)
        if status:
            self._create_failed(status, src.nbytes)

    def get_bytes(self, key, timeout=None):
        """A copy of the sealed object's bytes."""
        with self.get(key, timeout) as buf:
            return buf.tobytes()

    def stats(self):
        """The pool's counters as a dict."""
        s = _lib.PoolStats()
        status = lib.zc_pool_get_stats(self._p(), ctypes.byref(s))
        if status:
            _raise(status)
        return {name: getattr(s, name) for name, _ in _lib.PoolStats._fields_ if name != "reserved"}

    def region(self):
        """(address, length) of the pool's whole mapped region."""
        base, length = ctypes.c_void_p(), ctypes.c_size_t()
        status = lib.zc_pool_region(self._p(), ctypes.byref(base), ctypes.byref(length))
        if status:
            _raise(status)
        return base.value, length.value

    @property
    def rdma_count(self):
        """RDMA registrations of the pool (0 in local mode)."""
        return lib.zc_pool_rdma_count(self._p())

    def __repr__(self):
        if self._fork_child:
            return "<zcopy.Pool of process %d, from before a fork: unusable in this process>" % self._pid
        if self._ptr is None:
            return "<zcopy.Pool closed>"
        s = self.stats()
        return "<zcopy.Pool %d of %d bytes used, %d objects>" % (s["used_bytes"], s["capacity_bytes"], s["object_count"])
