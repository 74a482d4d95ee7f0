"""Pool and Buffer: the C ABI's lifecycle in Python, with views that keep their buffer alive.

Lifetime: a `_Handle` owns one `zc_buffer *` and calls `zc_release` exactly once, from its
`__del__`, when it is garbage collected. Every view (numpy array, memoryview, tensor)
reaches its handle through its base chain (array.base -> _Span -> _Handle; an array from
get_array has the handle as its base, or with numpy 2 the pair (handle, capsule) of the
`__array_struct__` it was made from), and a `Buffer` holds it too, so the release happens when
the last of them is gone, whichever order they die in.
`Buffer.release()` only drops the Buffer's own reference: it is safe with live views.

Fork: the pool region is mapped MADV_DONTFORK, so a forked child has none of its parent's pool
memory, and the C handles it inherits point into the parent's process state. A hook run in the
child (os.register_at_fork) bumps `_generation` and marks every open Pool as forked; Buffers and
handles carry the generation they were made in. In the child, every method of a Pool or Buffer
from before the fork raises PoolForkedError, a handle of an earlier generation never calls the
library when collected (the parent still owns what it points to), and the hook detaches the
pools' finalizers; close() and release() are harmless no-ops there. Arrays and memoryviews taken
before the fork cannot be guarded: their memory is absent in the child, and touching them there
is a segmentation fault. A shared pool (see Pool) is attached again by name in the child, which gets
its own mapping and process slot.

Shared pools: `Pool(size, name=...)` and `Pool.attach(name)` wrap the same `zc_pool *` as a private
pool, so every method, view and lifetime rule above holds for them unchanged; only `name`,
`reclaim()`, `check()`, the two process counters in `stats()` and the errors about the pool file
(NoSuchPoolError, PoolExistsError) are theirs.
"""

import atexit
import builtins
import ctypes
import errno
import math
import numbers
import operator
import os
import re
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
    """A system call failed (ZC_ERR_SYSTEM). `errno` is its error number when the message
    names one ("... (os error 2)"), else None; `filename` is the pool file for shared-pool
    calls."""

    status = _lib.ERR_SYSTEM


class NoSuchPoolError(SystemCallError, FileNotFoundError):
    """`Pool.attach` or `zcopy.unlink` of a name that has no pool file (ENOENT): also a
    FileNotFoundError. Create it with `zcopy.Pool(size, name=...)` first."""


class PoolExistsError(SystemCallError, FileExistsError):
    """`zcopy.Pool(size, name=...)` of a name whose pool file exists (EEXIST): also a
    FileExistsError. Attach it with `zcopy.Pool.attach(name)`, or remove it with
    `zcopy.unlink(name)` first."""


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


_OS_ERROR = re.compile(r"\(os error (\d+)\)$")


def _raise(status):
    message = lib.zc_last_error_message().decode("utf-8", "replace")
    error = _BY_STATUS.get(status, Error)(message, status)
    if status == _lib.ERR_SYSTEM:
        error.errno = _errno_of(message)
    raise error


def _errno_of(message):
    """The error number at the end of a system error's message, as the library words it."""
    found = _OS_ERROR.search(message)
    return int(found.group(1)) if found else None


def _raise_pool_file(status, name, path, creating):
    """Raises for a call on the file of shared pool `name`: when `creating`, an existing file is
    PoolExistsError; otherwise a missing one is NoSuchPoolError. Both name the file."""
    message = lib.zc_last_error_message().decode("utf-8", "replace")
    if status != _lib.ERR_SYSTEM:
        raise _BY_STATUS.get(status, Error)(message, status)
    number = _errno_of(message)
    cls = SystemCallError
    if number == errno.EEXIST and creating:
        cls = PoolExistsError
        message = "a shared pool named %r exists: %s. Attach it with zcopy.Pool.attach(%r), or remove it with zcopy.unlink(%r)" % (
            name,
            message,
            name,
            name,
        )
    elif number == errno.ENOENT and not creating:
        cls = NoSuchPoolError
        message = "no shared pool named %r: %s. Create it with zcopy.Pool(size, name=%r)" % (name, message, name)
    error = cls(message, status)
    error.errno = number
    error.strerror = os.strerror(number) if number is not None else None
    error.filename = path
    raise error


_SHM_DIR = "/dev/shm"


def _pool_name(name):
    """A shared pool's name as str and as the C string the library reads. The library checks
    what it may contain."""
    if isinstance(name, bytes):
        try:
            name = name.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidArgumentError("pool name %r: not ASCII" % (name,)) from None
    if not isinstance(name, str):
        raise builtins.TypeError("a pool name is a str, not %s" % type(name).__name__)
    return name, name.encode("utf-8")


def _pool_path(name, hugetlbfs_dir=None):
    """Where the library keeps shared pool `name`: zcopy.<name> in /dev/shm or the hugetlbfs
    directory."""
    return os.path.join(_SHM_DIR if hugetlbfs_dir is None else str(hugetlbfs_dir), "zcopy." + name)


def unlink(name):
    """Removes shared pool `name`'s file, /dev/shm/zcopy.<name>. Its objects are gone for later
    attaches; processes attached keep using the pool (and their views stay valid) until they
    close it, and a new pool of that name can be created at once. NoSuchPoolError (a
    FileNotFoundError) when there is no such pool, InvalidArgumentError for a bad name."""
    name, c_name = _pool_name(name)
    status = lib.zc_pool_unlink(c_name)
    if status:
        _raise_pool_file(status, name, _pool_path(name), creating=False)


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
            "Send the key instead and read it through a Pool in the other process (for a shared "
            "pool, send its name: zcopy.Pool.attach(name) there maps the same objects), or copy "
            "the values (an array from get_array pickles and deep-copies as a plain array)" % what
        )

    return refuse


# Bumped in every forked child; handles, buffers and pools made before it are the parent's.
_generation = 0
_open_pools = weakref.WeakSet()
_zc_release = lib.zc_release
_zc_pool_close = lib.zc_pool_close


# What a handle's `__del__` reads, kept in a list it holds (module globals may be gone when the
# last handles are collected at interpreter exit): the fork generation, and whether the
# interpreter is exiting. At exit the process frees everything; releasing then could pull memory
# from under views that other exit handlers still read, so handles collected after this module's
# exit handler ran release nothing.
_handle_state = [0, False]


def _after_fork_in_child():
    global _generation
    _generation += 1
    _handle_state[0] = _generation
    for pool in list(_open_pools):
        pool._forked()


os.register_at_fork(after_in_child=_after_fork_in_child)
atexit.register(_handle_state.__setitem__, 1, True)


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
    directly (`__array_interface__`, or `__array_struct__` in the subclass get_array uses), when
    nothing else needs to sit between them. `__del__` rather than a `weakref.finalize`: a
    finalizer costs about three times as much to make, on every get."""

    __slots__ = ("ptr", "generation", "views", "__array_interface__", "__weakref__")

    def __init__(self, ptr):
        self.ptr = ptr
        self.generation = _generation
        self.views = None

    def __del__(self, _release=_zc_release, _state=_handle_state):
        ptr = self.ptr
        if ptr is not None and self.generation == _state[0] and not _state[1]:
            _release(ptr)

    def forget(self):
        """The C side consumed the handle (zc_abort): never release it again."""
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


def _options(prefault, lock_memory, rdma, rdma_devices, shared_mode):
    """Pool options with the library's defaults and the fields open and attach share."""
    if rdma not in _lib.RDMA:
        raise InvalidArgumentError("rdma must be one of %s" % sorted(_lib.RDMA))
    opts = _lib.PoolOptions()
    lib.zc_pool_options_init(ctypes.byref(opts))
    opts.prefault = bool(prefault)
    opts.lock_memory = bool(lock_memory)
    opts.rdma = _lib.RDMA[rdma]
    if rdma_devices is not None and not isinstance(rdma_devices, str):
        rdma_devices = ",".join(rdma_devices)
    opts.rdma_devices = None if rdma_devices is None else rdma_devices.encode()
    opts.shared_mode = _c_index(shared_mode, _U32_MAX, "shared_mode")
    return opts


class Pool:
    """A zcopy pool: one mapped (and, where devices exist, RDMA-registered) memory region.
    `eviction="lru"` lets a create that does not fit evict sealed objects nobody holds, least
    recently used first (off by default: nothing is ever dropped silently).

    Shared pools: `Pool(size, name="kv")` creates a pool backed by the file /dev/shm/zcopy.kv,
    and `Pool.attach("kv")` maps it in another process (or this one): the same objects, at that
    process's own address, with no copy and no server. Every method works the same on either.
    Objects stay in the file after every process has closed it, until `zcopy.unlink("kv")`.

    Every method may be called from several threads at once; `close()` must not race with them.
    Buffers and views may outlive the pool: their memory stays mapped until they are gone.
    Pools and buffers cannot be pickled or copied (TypeError): each process opens its own, or
    attaches a shared pool by name.
    In a child forked after the pool was opened, every method of the pool and of its buffers
    raises PoolForkedError: open a new Pool in the child, or attach a shared pool there by name.
    """

    __reduce__ = __reduce_ex__ = __getstate__ = __copy__ = __deepcopy__ = _not_copyable("a zcopy.Pool")

    def __init__(
        self,
        size=DEFAULT_POOL_SIZE,
        *,
        name=None,
        shared_mode=0o600,
        pages="thp",
        prefault=True,
        lock_memory=False,
        max_objects=0,
        hugetlbfs_dir=None,
        rdma="auto",
        rdma_devices=None,
        eviction="none",
    ):
        """Opens a pool of `size` bytes. Without `name`, the pool is private to this process.
        With `name` (ASCII letters, digits, '_', '-', '.'; at most 128 bytes), it creates the
        shared pool of that name, /dev/shm/zcopy.<name> (or zcopy.<name> in `hugetlbfs_dir`
        with pages="hugetlb"), whose file mode is `shared_mode`: 0o600, only this user may
        attach, or 0o660, the file's group too. A name that exists is PoolExistsError (a
        FileExistsError)."""
        if pages not in _lib.PAGES:
            raise InvalidArgumentError("pages must be one of %s" % sorted(_lib.PAGES))
        if eviction not in _lib.EVICTION:
            raise InvalidArgumentError("eviction must be one of %s" % sorted(_lib.EVICTION))
        opts = _options(prefault, lock_memory, rdma, rdma_devices, shared_mode)
        opts.eviction = _lib.EVICTION[eviction]
        opts.size = _c_index(size, _U64_MAX, "pool size")
        opts.page_mode = _lib.PAGES[pages]
        opts.max_objects = _c_index(max_objects, _U64_MAX, "max_objects")
        opts.hugetlbfs_dir = None if hugetlbfs_dir is None else str(hugetlbfs_dir).encode()
        if name is not None:
            name, opts.name = _pool_name(name)
        ptr = ctypes.c_void_p()
        status = lib.zc_pool_open(ctypes.byref(opts), ctypes.byref(ptr))
        if status:
            if name is None:
                _raise(status)
            _raise_pool_file(status, name, _pool_path(name, hugetlbfs_dir if pages == "hugetlb" else None), creating=True)
        self._adopt(ptr.value, name)

    @classmethod
    def attach(cls, name, *, prefault=False, lock_memory=False, rdma="auto", rdma_devices=None, shared_mode=0o600, hugetlbfs_dir=None):
        """Attaches the shared pool `name`, created by `zcopy.Pool(size, name=name)` in this
        process or another: a Pool over the same objects, mapped at this process's own address.
        Its size and limits are the creator's; `prefault`, `lock_memory`, `rdma` and
        `rdma_devices` apply to this process's mapping, and `shared_mode=0o660` accepts a
        group-shared file of another user. A pool made with pages="hugetlb" is found in its
        `hugetlbfs_dir`. No such pool: NoSuchPoolError (a FileNotFoundError and a
        SystemCallError) naming the file; a bad name or a file that is not a pool of this
        version: InvalidArgumentError."""
        name, c_name = _pool_name(name)
        opts = _options(prefault, lock_memory, rdma, rdma_devices, shared_mode)
        if hugetlbfs_dir is not None:
            opts.page_mode = _lib.PAGES["hugetlb"]
            opts.hugetlbfs_dir = str(hugetlbfs_dir).encode()
            opts.name = c_name
        ptr = ctypes.c_void_p()
        status = lib.zc_pool_attach(c_name, ctypes.byref(opts), ctypes.byref(ptr))
        if status:
            _raise_pool_file(status, name, _pool_path(name, hugetlbfs_dir), creating=False)
        pool = cls.__new__(cls)
        pool._adopt(ptr.value, name)
        return pool

    def _adopt(self, ptr, name):
        """Takes ownership of the `zc_pool *` just opened or attached."""
        self._ptr = ptr
        self._name = name
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
                shared = "" if self._name is None else " (or attach this shared pool there: zcopy.Pool.attach(%r))" % self._name
                raise PoolForkedError(
                    "this zcopy.Pool was opened in process %d, which then forked: the pool's memory is "
                    "not mapped in a forked child (pid %d), so the pool cannot be used here. Open a new "
                    "zcopy.Pool in the child%s; arrays and buffers taken from the parent's pool before the "
                    "fork must not be touched in the child either" % (self._pid, os.getpid(), shared)
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
        forked child, closing a pool of the parent does nothing (it is the parent's to close).
        A shared pool is only detached from this process: its objects stay in the file for the
        other processes and for later attaches, until `zcopy.unlink(name)`."""
        self._ptr = None
        self._finalizer()

    @property
    def closed(self):
        return self._ptr is None

    @property
    def name(self):
        """The shared pool's name (what `Pool.attach` takes); None for a private pool."""
        return self._name

    def reclaim(self):
        """Reclaims what processes that died while attached to this shared pool held: their
        unsealed creates are aborted (the keys can be created again), their references dropped
        and their slots freed. Returns how many processes were reclaimed (0 for a private pool).
        The library also does this at every open, attach and close, and when a create runs out
        of room."""
        count = ctypes.c_uint64()
        status = lib.zc_pool_reclaim(self._p(), ctypes.byref(count))
        if status:
            _raise(status)
        return count.value

    def check(self):
        """Verifies every invariant of a shared pool's state (records, index, allocators,
        reference ledgers, counters). Returns None when all hold; raises InternalError naming
        the first broken one. A private pool always passes."""
        status = lib.zc_pool_check(self._p())
        if status:
            _raise(status)

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
        """The pool's counters as a dict: capacity_bytes, used_bytes, largest_free_block,
        object_count, key_count, max_objects, page_size, open_nanos, rdma_registrations,
        rdma_register_nanos, evictions, creates_refused, and for a shared pool
        processes_attached (the live attachments now, this one included: each open or attach
        counts once, a dead process not at all) and processes_reclaimed (dead processes
        reclaimed over the pool's life); both 0 for a private pool."""
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
        shared = "" if self._name is None else "shared %r, %d processes, " % (self._name, s["processes_attached"])
        return "<zcopy.Pool %s%d of %d bytes used, %d objects>" % (shared, s["used_bytes"], s["capacity_bytes"], s["object_count"])
