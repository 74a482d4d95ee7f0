"""Mooncake Store values read into, and written from, a zcopy pool with no user-space copy.

    from zcopy.mooncake import ZeroCopyStore
    with ZeroCopyStore.setup(pool_size=1 << 30, local_hostname="127.0.0.1",
                             metadata_server="P2PHANDSHAKE", master_server_address="127.0.0.1:50051",
                             global_segment_size=1 << 30) as store:
        store.put_array("w", np.arange(10.0))
        a = store.get_array("w")          # read-only, over the pool; no copy after the transfer

A `ZeroCopyStore` joins one `mooncake.store.MooncakeDistributedStore` and one `zcopy.Pool`, whose
whole region it registers with the store once (`register_buffer`; one ZeroCopyStore per store
and pool: Mooncake refuses the same region twice). A put encodes the value once, in place, into a
buffer of the pool (the parts format of docs/FORMAT.md, the encoders of `Pool.put_array` /
`put_tensor` / `put_object`) and hands its address to `put_from` (`batch_put_from` for a batch);
`put_buffer` puts a sealed buffer the caller wrote in place, with no copy at all.

A put never replaces a value. By default (`if_exists="keep"`, Mooncake's own rule) a put of a
key the store already holds keeps the stored value and answers success, as Mooncake's `put`
does: a single-key put is one Mooncake call (`put_from`), with no question asked first. With
`if_exists="raise"` every put (`put_array`, `put_tensor`, `put_object`, `put_parts`, `put_buffer`
and their `batch_put_*` forms) of a key the store already holds raises
`MooncakeAlreadyExistsError` (an `AlreadyExistsError`, code OBJECT_ALREADY_EXISTS) naming the key
and stores nothing; that costs one metadata round trip per call (`batch_is_exist`, for one key or
a whole batch, before anything is encoded). A batch put asks that question in both modes, once
per call: with "keep" it then puts only the keys the store does not hold, so that a batch which
Mooncake refuses in part can remove what it stored without touching a value stored before the
call (Mooncake answers success for an existing key too, so without asking a rollback could not
tell them apart). A batch naming one key twice is refused (InvalidArgumentError) in both modes.
To change a value, `remove(key, force=True)` then put it again (readers in between see it
missing; without force, Mooncake refuses to remove a value read in the last few seconds).
Upsert is not used: when Mooncake finds no space for the new value it loses the old one, so a
failed put could not leave the store as it was. A key another client creates between the
question and the put keeps that client's value, and the put answers success (Mooncake's answer
is the same for both). TransferQueue's backend (`zcopy.transferqueue`) replaces values, as
TransferQueue needs: it puts through `batch_upsert_from`, not these methods.

A get creates
one plain buffer per value under a private key of the pool (a batch's in one `zc_create_batch`),
has Mooncake transfer each value into it (`batch_get_into`, one call per batch), seals it,
deletes the private key (so nothing else can find it) and returns read-only views of it: the
buffer lives until the last view is gone. The sizes come from the master (`batch_get_replica_desc`,
one call per batch) unless this object remembers them from an earlier put or get; a remembered
size is checked by the transfer itself (see `ZeroCopyStore`).

Formats, as a get sees them: a value starting with the ZCPARTS header (every put of this class)
is decoded by the package's getters. A value written by Mooncake's `put_tensor` (its 304-byte
tensor header, then the data; see `mooncake_tensor_layout`) is a tensor to `get_tensor` and
`batch_get_tensors`, over the pool's bytes like any other, once every header field has been
checked against the value's size (sharded values of `put_tensor_with_tp` are refused); to the
other getters it is plain bytes. Any other value (Mooncake's own `put`, `put_parts`,
`put_batch`) is plain bytes: `get_array` returns it as a 1-D uint8 array, `get_parts` as one part
(Mooncake's `put_parts` concatenates its parts without recording their bounds), `get_buffer` as
a sealed buffer; `get_object` and `get_tensor` refuse it (FormatError, an InvalidArgumentError). Mooncake's own
`get_tensor` gives a 0-d tensor back with shape (1,); `get_tensor` here keeps it 0-d.

Errors are exceptions of the `zcopy.Error` family: `MooncakeNotFoundError` (a `NotFoundError`)
for a missing key, `MooncakeOutOfMemoryError` (an `OutOfMemoryError`) when Mooncake has no space,
`zcopy.OutOfMemoryError` when the pool is full, `zcopy.TooLargeError` (one of those) when the
value is larger than the whole pool (checked
before encoding for arrays, tensors and parts; a pickled object that turns out larger raises what
`Pool.put_object` raises), and
`MooncakeAlreadyExistsError` (an `AlreadyExistsError`) for a put of a key already stored (with
`if_exists="raise"`), and `MooncakeError` for every other negative code; each Mooncake one
carries `.code`. A get that fails leaves no buffer behind. A put that fails leaves Mooncake as it
was: one that fails before Mooncake is called (a key already stored with "raise", pool full, a
value that cannot be encoded) stored nothing; a batch put that Mooncake refuses for some keys
removes the keys it answered success for (`batch_remove(force=True)`), then raises. Those keys
are all new ones, absent when the put began: every key stored before the call keeps its value.

Not thread-safe: use one `ZeroCopyStore` per thread, or a lock (the Pool and the Mooncake store
under it are thread-safe). Buffers and views it returned may outlive it and its pool.
"""

import collections
import ctypes
import itertools
import os
import pickle
import struct
import threading

import numpy as np

from . import _lib, _objects
from ._core import (
    AlreadyExistsError, Buffer, Error, FormatError, InvalidArgumentError, NotFoundError, OutOfMemoryError, Pool,
    TooLargeError, _raise,
)

try:
    from mooncake.store import MooncakeDistributedStore, ReplicateConfig
except ImportError as _e:  # the whole module needs the wheel; `import zcopy` never does
    raise ImportError(
        "zcopy.mooncake needs the Mooncake Store bindings (pip install mooncake-transfer-engine-non-cuda): %s" % _e
    ) from _e

__all__ = [
    "MooncakeAlreadyExistsError",
    "MooncakeError",
    "MooncakeNotFoundError",
    "MooncakeOutOfMemoryError",
    "LocalMaster",
    "ReplicateConfig",
    "ZeroCopyStore",
    "master_binary",
    "mooncake_tensor_layout",
]

# Mooncake's ErrorCode (mooncake-store/include/types.h) for the codes named in messages.
CODES = {
    -1: "INTERNAL_ERROR",
    -10: "BUFFER_OVERFLOW",
    -100: "SHARD_INDEX_OUT_OF_RANGE",
    -101: "SEGMENT_NOT_FOUND",
    -102: "SEGMENT_ALREADY_EXISTS",
    -103: "CLIENT_NOT_FOUND",
    -200: "NO_AVAILABLE_HANDLE",
    -300: "INVALID_VERSION",
    -400: "INVALID_KEY",
    -500: "WRITE_FAIL",
    -600: "INVALID_PARAMS",
    -601: "ILLEGAL_CLIENT",
    -700: "INVALID_WRITE",
    -701: "INVALID_READ",
    -702: "INVALID_REPLICA",
    -703: "REPLICA_IS_NOT_READY",
    -704: "OBJECT_NOT_FOUND",
    -705: "OBJECT_ALREADY_EXISTS",
    -706: "OBJECT_HAS_LEASE",
    -707: "LEASE_EXPIRED",
    -800: "TRANSFER_FAIL",
    -900: "RPC_FAIL",
    -901: "RPC_TIMEOUT",
}
OBJECT_NOT_FOUND = -704
OBJECT_ALREADY_EXISTS = -705
NO_AVAILABLE_HANDLE = -200
RPC_FAIL = -900
_PARTS_MAGIC = _objects.PARTS_MAGIC


class MooncakeError(Error):
    """A Mooncake call answered a negative code (`.code`; its name is in the message)."""

    def __init__(self, message, code=None):
        if code is not None:
            message = "%s: Mooncake %s (%d)" % (message, CODES.get(code, "error"), code)
        super().__init__(message)
        self.code = code


class MooncakeNotFoundError(MooncakeError, NotFoundError):
    """The key is not in the store (OBJECT_NOT_FOUND)."""


class MooncakeOutOfMemoryError(MooncakeError, OutOfMemoryError):
    """Mooncake found no space for the value (NO_AVAILABLE_HANDLE)."""


class MooncakeAlreadyExistsError(MooncakeError, AlreadyExistsError):
    """A put named a key the store already holds (OBJECT_ALREADY_EXISTS): nothing was stored."""


def _error(message, code):
    if code == OBJECT_NOT_FOUND:
        return MooncakeNotFoundError(message, code)
    if code == OBJECT_ALREADY_EXISTS:
        return MooncakeAlreadyExistsError(message, code)
    if code == NO_AVAILABLE_HANDLE:
        return MooncakeOutOfMemoryError(message, code)
    return MooncakeError(message, code)


def _mooncake_key(key):
    if isinstance(key, str):
        return key
    if isinstance(key, (bytes, bytearray)):
        return bytes(key).decode("utf-8")
    raise InvalidArgumentError("a Mooncake key is str (or UTF-8 bytes), not %s" % type(key).__name__)


def _data_bytes(kind, value):
    """The data bytes a value will take in the pool (a lower bound), where known before encoding."""
    if kind == "array":
        return value.nbytes if isinstance(value, np.ndarray) else None
    if kind == "tensor":
        return value.numel() * value.element_size() if hasattr(value, "element_size") else None
    if kind == "parts":
        return sum(memoryview(p).nbytes for p in value)
    return None


_MAX_HINTS = 1 << 16


def _c_function(name, restype, argtypes):
    """A function of libzcopy taking its pointers as plain integers. `lib[name]` is a fresh
    function object: these declarations leave those of `zcopy._lib` as they are."""
    f = _lib.lib[name]
    f.restype = restype
    f.argtypes = argtypes
    return f


_P, _S, _U32 = ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint32
_zc_create = _c_function("zc_create_buffer", _U32, [_P, _P, _S, _S, _P])
_zc_create_parts = _c_function("zc_create_parts", _U32, [_P, _P, _S, _P, _S, _P])
_zc_create_batch = _c_function("zc_create_batch", _U32, [_P, _P, _P, _P, _S, _P, _P])
_zc_get = _c_function("zc_get", _U32, [_P, _P, _S, ctypes.c_int64, _P])
_zc_delete = _c_function("zc_delete", _U32, [_P, _P, _S])
_zc_seal = _c_function("zc_seal", _U32, [_P])
_zc_release = _c_function("zc_release", None, [_P])
_zc_data = _c_function("zc_buffer_data", _P, [_P])
_zc_size = _c_function("zc_buffer_size", _S, [_P])
_string_at = ctypes.string_at
_asarray = np.asarray

# Private pool keys are 16 bytes (zcopy keeps keys this short inside its records): 8 bytes naming
# the ZeroCopyStore, then a counter.
_NAME_LEN = 16
_instances = itertools.count(1)
_Sizes2 = ctypes.c_size_t * 2
# docs/FORMAT.md: the header of every two-part object is exactly 64 bytes (the fixed fields and
# two (offset, length) entries).
_TWO_PARTS = struct.Struct("<8sHHIIIQQQQQ")
_HEAD = 256  # leading bytes that key the caches of parsed layouts


class _Ref:
    """Owns one read reference (`zc_buffer *`) to a sealed object of the pool and releases it
    when collected; arrays and tensors over the object's bytes hold it as their base.
    `__del__` rather than the `weakref.finalize` of `zcopy.Buffer`: a finalizer costs a registry
    entry and several tracked objects per value, and with a batch's thousands alive the garbage
    collector's passes were the largest cost of a get."""

    __slots__ = ("ptr", "__array_interface__")

    def __init__(self, ptr):
        self.ptr = ptr

    def __del__(self, _release=_zc_release):
        if self.ptr is not None:
            _release(self.ptr)


class _Scratch:
    """The base of a view that never leaves a put (its buffer is held until the put ends)."""

    __slots__ = ("__array_interface__",)


def _bytes_at(owner, address, nbytes, readonly=True):
    """A uint8 array over `nbytes` at `address`, whose base is `owner` (several may share one)."""
    owner.__array_interface__ = {"data": (address, readonly), "shape": (nbytes,), "typestr": "|u1", "version": 3}
    return _asarray(owner)


def _torch():
    import torch  # noqa: PLC0415 - optional dependency

    return torch


# Mooncake's own tensor values (put_tensor, put_tensor_from; what its get_tensor and
# get_tensor_into read), as the store.so of mooncake-transfer-engine 0.3.13 writes and checks
# them (found by serializing known tensors with mooncake.store._serialize_tensor, and by changing
# each field and seeing which ones its _deserialize_tensor refuses). Little-endian:
#   0    4 bytes "NOOM" (the u32 0x4D4F4F4E), u16 version 1, u16 header size 304
#   8    i32 dtype (_MOONCAKE_DTYPES), i32 ndim (0..8)
#   16   u64 flags: 0 as put_tensor writes them (else sharding metadata, refused here)
#   24   i64 data offset (>= 304), 32 i64 data bytes; the value ends where the data does
#   40   i64[8] whole-tensor shape (for shards), -1 past ndim: checked, not used
#   104  i64[8] the data's shape, -1 past ndim: the tensor's shape
#   168  i64, 0 as put_tensor writes it (refused otherwise); bytes 176..303 are not read
# numpy's name of each torch dtype numpy has (a tensor over them is made by one from_numpy).
_MOONCAKE_MAGIC = b"NOOM"
_MOONCAKE_HEADER = 304
_MOONCAKE_FIELDS = struct.Struct("<4sHHiiQqq8q8qq")
_MOONCAKE_DTYPES = [
    ("float32", 4), ("float64", 8), ("int8", 1), ("uint8", 1), ("int16", 2), ("uint16", 2), ("int32", 4),
    ("uint32", 4), ("int64", 8), ("uint64", 8), ("bool", 1), ("float16", 2), ("bfloat16", 2),
    ("float8_e4m3fn", 1), ("float8_e5m2", 1),
]


def mooncake_tensor_layout(head, size):
    """(data offset, torch dtype name, shape) of a value of `size` bytes written by Mooncake's
    `put_tensor`, from its first bytes `head` (176 or more), every field checked against `size`.
    FormatError if it is not such a value."""

    def refuse(why):
        raise FormatError("not a Mooncake tensor value of %d bytes: %s" % (size, why))

    if size < _MOONCAKE_HEADER or len(head) < _MOONCAKE_FIELDS.size:
        refuse("shorter than its %d-byte header" % _MOONCAKE_HEADER)
    magic, version, header_size, dtype, ndim, flags, offset, nbytes, *dims = _MOONCAKE_FIELDS.unpack_from(head)
    whole, shape, reserved = dims[:8], dims[8:16], dims[16]
    if magic != _MOONCAKE_MAGIC:
        refuse("no MOON magic")
    if version != 1 or header_size != _MOONCAKE_HEADER:
        refuse("header version %d of %d bytes (this reader knows version 1, 304 bytes)" % (version, header_size))
    if not 0 <= dtype < len(_MOONCAKE_DTYPES):
        refuse("dtype number %d" % dtype)
    if not 0 <= ndim <= 8:
        refuse("%d dimensions" % ndim)
    if flags or reserved:
        refuse("flags %#x, field at 168 %d: sharding metadata this reader does not know" % (flags, reserved))
    if offset < _MOONCAKE_HEADER or nbytes < 0 or offset + nbytes != size:
        refuse("data of %d bytes at offset %d" % (nbytes, offset))
    if any(d < 0 for d in shape[:ndim] + whole[:ndim]) or any(d != -1 for d in shape[ndim:] + whole[ndim:]):
        refuse("shape %s (whole tensor %s) for %d dimensions" % (shape, whole, ndim))
    name, itemsize = _MOONCAKE_DTYPES[dtype]
    count = 1
    for d in shape[:ndim]:
        count *= d
    if count * itemsize != nbytes:
        refuse("shape %s of %s is not %d bytes" % (tuple(shape[:ndim]), name, nbytes))
    return offset, name, tuple(shape[:ndim])


def _meta(head):
    """The leading bytes of a value that its layout depends on (with its size, the key of the
    layout caches), None if not known: a two-part zcopy object's table and header part, up to
    its data (see zcopy._objects._layout_key), or the fields of Mooncake's tensor header. The
    data itself never takes part."""
    if head[:8] == _PARTS_MAGIC:
        return _objects._layout_key(head)
    if head[:4] == _MOONCAKE_MAGIC and len(head) >= _MOONCAKE_FIELDS.size:
        return head[:_MOONCAKE_FIELDS.size]
    return None


class _StaleSize(Exception):
    """A remembered size no longer matches the value: read again, asking the master."""

    def __init__(self, keys):
        super().__init__(keys)
        self.keys = keys


def _raises_if_exists(mode):
    """Whether `if_exists` mode `mode` raises on a key the store holds; InvalidArgumentError for
    a mode other than "keep" and "raise"."""
    if mode not in ("keep", "raise"):
        raise InvalidArgumentError('if_exists must be "keep" or "raise", not %r' % (mode,))
    return mode == "raise"


class ZeroCopyStore:
    """A Mooncake store whose puts and gets go through the registered memory of one zcopy pool.

    `ZeroCopyStore(store, pool)` uses objects the caller set up (a store whose `setup()`
    succeeded); `close()` then only unregisters the pool. `ZeroCopyStore.setup(...)` makes both and
    `close()` closes both. `cache=True` keeps a sealed copy of each value read, which serves the
    next gets of that key with no transfer (for immutable keys: a value removed or replaced
    through another client stays cached until `remove()`/`forget()` here); the least recently
    used copies are dropped when the pool needs room.

    A put never replaces a value: `if_exists="keep"` (the default, Mooncake's rule) keeps the
    stored value of a key the store already holds and answers success; `if_exists="raise"`
    raises MooncakeAlreadyExistsError and stores nothing, for one more metadata round trip per
    put call (see the module). The attribute `if_exists` may be changed at any time.

    The size of each value this object put or read is remembered (up to 65,536 keys, the
    oldest dropped first), so that getting it again needs no size query: one Mooncake call
    instead of two. A remembered size is only a guess: Mooncake's `batch_get_into` answers the
    size it moved, and any answer other than the size asked (the key removed, or put again with
    another size, by another client) costs one more round: every buffer of the batch is
    discarded, the stale sizes forgotten, and the batch read again with sizes from the master.
    A value replaced by one of the same size is read whole, as it is now. `remember_sizes =
    False` turns this off.
    """

    def __init__(self, store, pool, *, cache=False, if_exists="keep", _owns=False):
        if not isinstance(pool, Pool):
            raise InvalidArgumentError("pool must be a zcopy.Pool, not %s" % type(pool).__name__)
        self.if_exists = if_exists  # checked before anything is registered
        self.store = store
        self.pool = pool
        self._owns = _owns
        self._region = pool.region()
        rc = store.register_buffer(self._region[0], self._region[1])
        if rc != 0:
            raise _error("register_buffer(%#x, %d) of the pool's region" % self._region, rc)
        self._registered = True
        # Private pool keys: "\0zcm", this object's number, then a counter (see _NAME_LEN).
        self._prefix = b"\0zcm" + struct.pack("<I", next(_instances) & 0xFFFFFFFF)
        self._prefix_word = struct.unpack("<Q", self._prefix)[0]
        self._next = 0
        self._out = ctypes.c_void_p()  # out-parameter of the one-value creates
        self._out_at = ctypes.addressof(self._out)
        self._cache_on = bool(cache)
        self._cache = collections.OrderedDict()  # Mooncake key -> private pool key of a sealed copy
        self._hints = {}  # Mooncake key -> its value's size, as last seen (insertion order: oldest first)
        self._specs = {}  # Mooncake key -> (decoder, metadata bytes, layout, view maker, size), as last seen
        self.remember_sizes = True
        self._lock = threading.Lock()

    @property
    def if_exists(self):
        """What a put of a key the store already holds does: "keep" (the stored value stays and
        the put answers success, as Mooncake's put does) or "raise" (MooncakeAlreadyExistsError,
        nothing stored, one more metadata round trip per put call)."""
        return "raise" if self._raise_if_exists else "keep"

    @if_exists.setter
    def if_exists(self, mode):
        self._raise_if_exists = _raises_if_exists(mode)

    @classmethod
    def setup(
        cls,
        pool_size=256 << 20,
        *,
        local_hostname,
        metadata_server="P2PHANDSHAKE",
        global_segment_size=16 << 20,
        local_buffer_size=16 << 20,
        protocol="tcp",
        device_name="",
        master_server_address="127.0.0.1:50051",
        pool_options=None,
        cache=False,
        if_exists="keep",
        rdma_devices=None,
        master_server_addr=None,
        **setup_options,
    ):
        """Makes a pool of `pool_size` bytes (`pool_options`: keyword arguments of `zcopy.Pool`)
        and a `MooncakeDistributedStore` set up with the other arguments, and joins them.
        `rdma_devices` and `master_server_addr` (the names of Mooncake's own `setup`) are
        accepted for `device_name` and `master_server_address`; any other keyword argument of
        Mooncake's `setup` (`engine`, `tenant_id`, `enable_ssd_offload`, `ssd_offload_path`,
        `enable_client_http_server`, `client_http_port`, ...) is passed on to it as it is, and one
        it does not know is refused with Mooncake's own TypeError."""
        _raises_if_exists(if_exists)  # refused before anything is made
        if rdma_devices is not None:
            device_name = rdma_devices
        if master_server_addr is not None:
            master_server_address = master_server_addr
        options = {"max_objects": 1 << 16}
        options.update(pool_options or {})
        pool = Pool(pool_size, **options)
        store = MooncakeDistributedStore()
        try:
            rc = store.setup(
                local_hostname, metadata_server, int(global_segment_size), int(local_buffer_size),
                protocol, device_name, master_server_address, **setup_options,
            )
        except BaseException:
            pool.close()
            raise
        if rc != 0:
            # A store whose setup failed is not safe to call again (not even close): drop it.
            pool.close()
            raise _error(
                "MooncakeDistributedStore.setup(%r, %r, master %r, %s)"
                % (local_hostname, metadata_server, master_server_address, protocol),
                rc,
            )
        try:
            return cls(store, pool, cache=cache, if_exists=if_exists, _owns=True)
        except BaseException:
            store.close()
            pool.close()
            raise

    # --- lifecycle --------------------------------------------------------------------------

    def close(self):
        """Unregisters the pool from the store (idempotent); closes the store and the pool if
        `setup()` made them. Buffers and views handed out stay valid."""
        if not getattr(self, "_registered", False):
            return
        self._registered = False
        with self._lock:
            cached, self._cache = list(self._cache.values()), collections.OrderedDict()
        for name in cached:
            self._drop(name)
        rc = self.store.unregister_buffer(self._region[0])
        if self._owns:
            self.store.close()
            self.pool.close()
        if rc != 0:
            raise _error("unregister_buffer(%#x)" % self._region[0], rc)

    @property
    def closed(self):
        return not self._registered

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def _check_open(self):
        if not self._registered:
            raise InvalidArgumentError("the ZeroCopyStore is closed")

    # --- private pool objects ---------------------------------------------------------------

    def _name(self):
        n = self._next
        self._next = n + 1
        return self._prefix + n.to_bytes(8, "little")

    def _evict_one(self):
        """Drops the least recently used cached copy; False if nothing is cached."""
        with self._lock:
            if not self._cache:
                return False
            _, name = self._cache.popitem(last=False)
        self._drop(name)
        return True

    def _drop(self, name):
        try:
            self.pool.delete(name)
        except Error:
            pass  # the pool was closed, or the key already gone

    def _check_fits(self, key, nbytes):
        capacity = self._region[1]
        if nbytes is not None and nbytes > capacity:
            raise TooLargeError(
                "the value of %r (%d bytes) is larger than the whole pool (%d bytes): it can never fit, "
                "open a larger pool" % (key, nbytes, capacity)
            )

    def _create(self, pool, sizes):
        """Creates one plain buffer per size under new private keys: (handles, private keys).
        The keys are one bytes object for one buffer, else an array of 16-byte rows. When the
        pool is full, cached copies are dropped (least recently used first) until it fits."""
        n = len(sizes)
        while True:
            if n == 1:
                name = self._name()
                status = _zc_create(pool, name, _NAME_LEN, sizes[0], self._out_at)
                if not status:
                    return [self._out.value], name
            else:
                names = np.empty((n, 2), np.uint64)
                names[:, 0] = self._prefix_word
                names[:, 1] = np.arange(self._next, self._next + n, dtype=np.uint64)
                self._next += n
                at = names.ctypes.data
                key_ptrs = np.arange(at, at + _NAME_LEN * n, _NAME_LEN, dtype=np.uint64)
                key_lens = np.full(n, _NAME_LEN, np.uint64)
                size_arr = np.array(sizes, np.uint64)
                handles = np.zeros(n, np.uint64)
                statuses = np.zeros(n, np.uint32)
                status = _zc_create_batch(pool, key_ptrs.ctypes.data, key_lens.ctypes.data, size_arr.ctypes.data, n,
                                          handles.ctypes.data, statuses.ctypes.data)
                ptrs = handles.tolist()
                if not status:
                    return ptrs, names
                for p in ptrs:
                    if p:
                        _zc_release(p)  # unsealed: aborted
            if status != _lib.ERR_OUT_OF_MEMORY or not self._evict_one():
                _raise(status)

    @staticmethod
    def _key_at(names, i):
        """Private key `i` of what `_create` made, as an argument of the C functions."""
        return names if type(names) is bytes else names.ctypes.data + _NAME_LEN * i

    def _discard(self, pool, ptrs, names):
        """Undoes `_create` whatever happened since: every handle released (an unsealed buffer
        is aborted by it), every private key deleted (a sealed object keeps its key until then)."""
        for i, p in enumerate(ptrs):
            _zc_release(p)
            _zc_delete(pool, self._key_at(names, i), _NAME_LEN)  # not found for aborted ones

    # --- puts -------------------------------------------------------------------------------

    def _encode_two(self, pool, head, nbytes, fill):
        """One two-part object (`head`, then `nbytes` written by fill(address)) under a private
        key: (reference, address, size); the caller releases the reference. The object is left
        unsealed: only Mooncake reads it, from this process's put, and the release that follows
        the put aborts it, which also takes its key away. A seal and a delete (two calls into the
        pool, 5 to 10 µs right after a transfer) would change nothing Mooncake reads."""
        name = self._name()
        sizes = _Sizes2(len(head), nbytes)
        while True:
            status = _zc_create_parts(pool, name, _NAME_LEN, ctypes.addressof(sizes), 2, self._out_at)
            if status != _lib.ERR_OUT_OF_MEMORY or not self._evict_one():
                break
        if status:
            _raise(status)
        ptr = self._out.value
        try:
            address = _zc_data(ptr)
            # Where the parts start depends only on their lengths (docs/FORMAT.md): read from
            # the header the library wrote, once per pair of lengths.
            spans = self._two_part_spans.get((len(head), nbytes))
            if spans is None:
                fields = _TWO_PARTS.unpack(_string_at(address, _TWO_PARTS.size))
                spans = (fields[7], fields[9], _zc_size(ptr))
                if len(self._two_part_spans) < 4096:
                    self._two_part_spans[(len(head), nbytes)] = spans
            head_at, data_at, size = spans
            ctypes.memmove(address + head_at, head, len(head))
            if nbytes:
                fill(address + data_at)
        except BaseException:
            _zc_release(ptr)  # unsealed: aborted
            raise
        return ptr, address, size

    _two_part_spans = {}

    def _encode_array(self, pool, arr):
        if type(arr) is not np.ndarray:
            arr = np.asarray(arr)
        dtype, shape = arr.dtype, arr.shape
        if dtype.hasobject:
            raise InvalidArgumentError("arrays of Python objects (dtype %s) cannot be stored; use put_object" % dtype)

        def fill(address):
            np.copyto(_objects._array_at(_Scratch(), address, dtype, shape, False), arr, casting="no")

        return self._encode_two(pool, _objects._array_head(dtype, shape), arr.nbytes, fill)

    _tensor_heads = {}

    def _encode_tensor(self, pool, tensor):
        torch = _torch()
        _objects._check_storable_tensor(torch, tensor)
        tensor = tensor.resolve_conj().resolve_neg()  # the bytes as the values are
        dtype, shape = tensor.dtype, tuple(tensor.shape)
        head = self._tensor_heads.get((dtype, shape))
        if head is None:
            name = str(dtype).replace("torch.", "").encode("ascii")
            head = _objects._encode_shape_header(_objects.TENSOR_MAGIC, name, shape)
            if len(self._tensor_heads) < 4096:
                self._tensor_heads[(dtype, shape)] = head
        nbytes = tensor.numel() * tensor.element_size()

        def fill(address):
            if tensor.is_contiguous():
                # One memcpy. torch's copy_ splits a copy across its threads, whose wake-ups
                # cost milliseconds a copy when other work runs between puts.
                ctypes.memmove(address, tensor.data_ptr(), nbytes)
                return
            dst = torch.from_numpy(_bytes_at(_Scratch(), address, nbytes, False))
            if dtype != torch.uint8:
                dst = dst.view(dtype)
            with torch.no_grad():
                dst.view(shape).copy_(tensor)

        return self._encode_two(pool, head, nbytes, fill)

    def _encode_named(self, pool, write):
        """write(private key) with one of the package's in-place encoders, then a read reference
        to what it sealed, its key deleted: (reference, address, size); the caller releases the
        reference."""
        name = self._name()
        while True:
            try:
                write(name)
                break
            except OutOfMemoryError:
                if not self._evict_one():
                    raise
        status = _zc_get(pool, name, _NAME_LEN, 0, self._out_at)
        if status:
            _raise(status)
        ptr = self._out.value
        _zc_delete(pool, name, _NAME_LEN)
        return ptr, _lib.lib.zc_buffer_const_data(ptr), _zc_size(ptr)

    def _encode_parts(self, name, parts):
        views = [memoryview(p).cast("B") for p in parts]
        buf = self.pool.create_parts(name, [v.nbytes for v in views])
        try:
            for i, v in enumerate(views):
                if v.nbytes:
                    buf.part(i)[:] = np.frombuffer(v, np.uint8)
            buf.seal()
        finally:
            buf.release()

    def _encode(self, pool, kind, value):
        if kind == "array":
            return self._encode_array(pool, value)
        if kind == "tensor":
            return self._encode_tensor(pool, value)
        if kind == "object":
            return self._encode_named(pool, lambda name: self.pool.put_object(name, value))
        return self._encode_named(pool, lambda name: self._encode_parts(name, value))

    def _absent(self, keys):
        """The positions of `keys` a put stores, asked before anything is encoded or stored: with
        "raise", all of them or MooncakeAlreadyExistsError if the store holds any; with "keep",
        those the store does not hold. A batch naming a key twice is refused. One batch_is_exist
        call for the whole batch: Mooncake's put keeps a key's first value and answers success
        all the same, so only asking first tells a key this put stored from one it did not, which
        a rollback must not remove. One key with "keep" needs no question: a put of one key has
        nothing to roll back, and Mooncake keeps a stored value."""
        if len(keys) == 1 and not self._raise_if_exists:
            return [0]
        if len(set(keys)) != len(keys):
            seen = set()
            twice = next(k for k in keys if k in seen or seen.add(k))
            raise InvalidArgumentError("key %r is named twice in one batch put" % (twice,))
        found = self.store.batch_is_exist(keys)
        if len(found) != len(keys):
            raise MooncakeError("batch_is_exist answered %d results for %d keys" % (len(found), len(keys)))
        for k, e in zip(keys, found):
            if e < 0:
                raise MooncakeError("querying key %r before the put (is the master reachable?); nothing was stored"
                                    % (k,), RPC_FAIL)
        present = [k for k, e in zip(keys, found) if e > 0]
        if present and self._raise_if_exists:
            more = "" if len(present) == 1 else " (and %d more of the %d keys)" % (len(present) - 1, len(keys))
            raise MooncakeAlreadyExistsError(
                "put of %r: the key is already in the store%s; a put never replaces a value (remove the key "
                "first: remove(key, force=True)); nothing was stored" % (present[0], more), OBJECT_ALREADY_EXISTS)
        return [i for i, e in enumerate(found) if e == 0]

    def _put_from(self, keys, spans, config):
        """put_from (batch_put_from for several keys) of sealed pool bytes, spans being
        (address, size) pairs, of keys `_absent` found absent; on a partial failure removes the
        keys this call stored (none of them was in the store before it)."""
        addrs, sizes = [s[0] for s in spans], [s[1] for s in spans]
        if len(keys) == 1:  # put_from: the same put, with less work around it than a batch of one
            args = (keys[0], addrs[0], sizes[0])
            results = [self.store.put_from(*args) if config is None else self.store.put_from(*args, config)]
        else:
            args = (keys, addrs, sizes)
            results = self.store.batch_put_from(*args) if config is None else self.store.batch_put_from(*args, config)
        if len(results) != len(keys):
            raise MooncakeError("batch_put_from answered %d results for %d keys" % (len(results), len(keys)))
        if any(results):
            failed = [(k, rc) for k, rc in zip(keys, results) if rc != 0]
            done = [k for k, rc in zip(keys, results) if rc == 0]
            note = ""
            if done:
                removed = self.store.batch_remove(done, True)
                left = [k for k, rc in zip(done, removed) if rc != 0]
                note = "; the %d new keys it stored were removed" % len(done) if not left else (
                    "; %d new keys stored, %d of them could not be removed (%s)" % (len(done), len(left), left[:3]))
            key, rc = failed[0]
            raise _error("put of %r (%d of %d keys failed%s)" % (key, len(failed), len(keys), note), rc)
        if self._cache_on:
            for k in keys:
                self.forget(k)
        self._remember(keys, sizes)

    def _put_many(self, kind, keys, values, config):
        self._check_open()
        keys = [k if type(k) is str else _mooncake_key(k) for k in keys]
        values = list(values)
        if len(keys) != len(values):
            raise InvalidArgumentError("%d keys for %d values" % (len(keys), len(values)))
        if not keys:
            return
        for k, v in zip(keys, values):
            self._check_fits(k, _data_bytes(kind, v))
        new = self._absent(keys)
        if len(new) != len(keys):  # "keep": the keys the store holds are not put
            keys, values = [keys[i] for i in new], [values[i] for i in new]
            if not keys:
                return
        pool = self.pool._p()
        refs = []
        try:
            for v in values:
                refs.append(self._encode(pool, kind, v))
            self._put_from(keys, [(address, size) for _, address, size in refs], config)
        finally:
            for ptr, _, _ in refs:
                _zc_release(ptr)

    def _put_one(self, kind, key, value, config):
        """_put_many of one value, in the fewest calls: put_from (after batch_is_exist with
        "raise"), its reference released as soon as Mooncake has the bytes. With "keep" there is
        nothing to ask first: one key needs no rollback, and Mooncake keeps a stored value."""
        self._check_open()
        if type(key) is not str:
            key = _mooncake_key(key)
        self._check_fits(key, _data_bytes(kind, value))
        self._absent([key])
        ptr, address, size = self._encode(self.pool._p(), kind, value)
        try:
            args = (key, address, size) if config is None else (key, address, size, config)
            rc = self.store.put_from(*args)
        finally:
            _zc_release(ptr)
        if rc:
            raise _error("put of %r (1 of 1 keys failed)" % key, rc)
        if self._cache_on:
            self.forget(key)
        self._remember((key,), (size,))

    def put_array(self, key, array, config=None):
        """Stores a numpy array (written once into the pool, then put from there) under `key`. A
        put never replaces a value: if the store already holds `key`, it keeps that value (the
        default, if_exists="keep") or raises MooncakeAlreadyExistsError (if_exists="raise")."""
        self._put_one("array", key, array, config)

    def put_tensor(self, key, tensor, config=None):
        """Stores a CPU torch tensor under a new key (like put_array)."""
        self._put_one("tensor", key, tensor, config)

    def put_object(self, key, obj, config=None):
        """Stores any picklable object (pickle 5; out-of-band buffers in their own parts) under a
        new key (like put_array)."""
        self._put_one("object", key, obj, config)

    def put_parts(self, key, *parts, config=None):
        """Stores bytes-like parts as one value whose part bounds `get_parts` gives back, under a
        new key (like put_array)."""
        self._put_one("parts", key, parts, config)

    def _put_buffers(self, keys, bufs, config):
        self._check_open()
        keys = [k if type(k) is str else _mooncake_key(k) for k in keys]
        base, length = self._region
        spans = []
        for buf in bufs:
            address, size = (buf.address, buf.size) if buf.sealed else (None, None)
            if address is None or not (base <= address and address + size <= base + length):
                raise InvalidArgumentError("buffer for %r is not a sealed buffer of this store's pool" % (buf.key,))
            spans.append((address, size))
        if len(keys) != len(spans):
            raise InvalidArgumentError("%d keys for %d buffers" % (len(keys), len(spans)))
        if keys:
            new = self._absent(keys)
            if new:
                self._put_from([keys[i] for i in new], [spans[i] for i in new], config)

    def put_buffer(self, key, buf, config=None):
        """Stores a sealed buffer of this store's pool as it is (no copy at all) under a new key
        (like put_array)."""
        self._put_buffers([key], [buf], config)

    def batch_put_arrays(self, keys, arrays, config=None):
        """put_array for many keys, in one Mooncake call (after one batch_is_exist). A key the
        store already holds keeps its value: with if_exists="keep" it is left out of the put, with
        "raise" it refuses the whole batch before anything is stored; a key named twice refuses
        the batch. A batch Mooncake refuses in part is undone (the new keys it stored are
        removed), and every key stored before the call keeps its value."""
        self._put_many("array", keys, arrays, config)

    def batch_put_tensors(self, keys, tensors, config=None):
        """put_tensor for many keys (all or nothing, like batch_put_arrays)."""
        self._put_many("tensor", keys, tensors, config)

    def batch_put_objects(self, keys, objects, config=None):
        """put_object for many keys (all or nothing, like batch_put_arrays)."""
        self._put_many("object", keys, objects, config)

    def batch_put_parts(self, keys, parts_lists, config=None):
        """put_parts for many keys, each with a list of parts (all or nothing, like batch_put_arrays)."""
        self._put_many("parts", keys, parts_lists, config)

    def batch_put_buffers(self, keys, bufs, config=None):
        """put_buffer for many keys (all or nothing, like batch_put_arrays)."""
        self._put_buffers(keys, list(bufs), config)

    def remove(self, key, force=False):
        """Removes `key` from Mooncake (and from the local cache)."""
        self._check_open()
        key = _mooncake_key(key)
        self.forget(key)
        rc = self.store.remove(key, force)
        if rc != 0:
            raise _error("remove(%r)" % key, rc)

    # --- gets -------------------------------------------------------------------------------

    def _sizes(self, keys):
        """Each key's size, from one batch_get_replica_desc call; batch_is_exist (a second
        call) only for keys it did not answer, to tell a missing key from a failed query."""
        descs = self.store.batch_get_replica_desc(keys)
        sizes, unanswered = {}, []
        for k in dict.fromkeys(keys):
            size = None
            for replica in descs.get(k, ()):
                if replica.is_memory_replica():
                    size = replica.get_memory_descriptor().buffer_descriptor.size
                    break
                if replica.is_disk_replica():
                    size = replica.get_disk_descriptor().object_size
                    break
            if size is None:
                unanswered.append(k)
            else:
                sizes[k] = int(size)
        if unanswered:
            exists = self.store.batch_is_exist(unanswered)
            for k, e in zip(unanswered, exists):
                if e == 0:
                    raise MooncakeNotFoundError("key %r is not in the store" % k, OBJECT_NOT_FOUND)
                if e < 0:
                    raise MooncakeError("querying key %r (is the master reachable?)" % k, RPC_FAIL)
                raise MooncakeError("key %r exists but has no replica to read yet" % k, -703)
        return sizes

    def _remember(self, keys, sizes):
        if not self.remember_sizes:
            return
        hints = self._hints
        for k, size in zip(keys, sizes):
            if hints.get(k) != size:
                hints.pop(k, None)
                hints[k] = size
        if len(hints) > _MAX_HINTS:
            with self._lock:
                for k in list(itertools.islice(hints, len(hints) - _MAX_HINTS)):
                    del hints[k]

    def _transfer(self, pool, keys, keep):
        """Reads the values of `keys` into new sealed buffers of the pool: (read references,
        addresses, sizes, private keys). The private keys are deleted unless `keep`. All or
        nothing: on any failure every buffer made here is discarded."""
        use_hints = self.remember_sizes
        while True:
            hinted = None
            if use_hints:
                hints = self._hints
                sizes = [hints.get(k) for k in keys]
                if None in sizes or 0 in sizes:  # a remembered 0 is not worth checking by a read
                    hinted = [bool(s) for s in sizes]
                    asked = self._sizes([k for k, h in zip(keys, hinted) if not h])
                    sizes = [s if h else asked[k] for k, s, h in zip(keys, sizes, hinted)]
            else:
                asked = self._sizes(keys)
                sizes = [asked[k] for k in keys]
                hinted = [False] * len(keys)
            if max(sizes) > self._region[1]:
                for k, n in zip(keys, sizes):
                    self._check_fits(k, n)
            ptrs, names = self._create(pool, sizes)
            try:
                addrs = [_zc_data(p) for p in ptrs]
                if 0 in sizes:  # nothing to move for an empty value
                    moving = [i for i, n in enumerate(sizes) if n]
                    asked_keys = [keys[i] for i in moving]
                    results = self.store.batch_get_into(asked_keys, [addrs[i] for i in moving],
                                                        [sizes[i] for i in moving]) if moving else []
                    wanted = [sizes[i] for i in moving]
                else:
                    moving = None
                    results = self.store.batch_get_into(keys, addrs, sizes)
                    wanted = sizes
                if results != wanted:
                    # batch_get_into, not get_into, even for one key: in the tests, get_into read
                    # a key replaced by another client from where its old value had been
                    # (reporting the old size), and answered success after the master had died.
                    index = moving or range(len(keys))
                    wrong = [(i, n, rc) for i, n, rc in zip(index, wanted, results) if rc != n]
                    if len(results) != len(wanted):
                        raise MooncakeError(
                            "batch_get_into answered %d results for %d keys" % (len(results), len(wanted)))
                    stale = [keys[i] for i, _, _ in wrong if hinted is None or hinted[i]]
                    if stale and use_hints:
                        for k in stale:
                            self._hints.pop(k, None)
                        raise _StaleSize(stale)
                    i, n, rc = wrong[0]
                    what = "get of %r into a %d-byte buffer" % (keys[i], n)
                    if rc >= 0:
                        what += " moved %d bytes" % rc
                    raise _error(what, rc if rc < 0 else None)
                for p in ptrs:
                    status = _zc_seal(p)
                    if status:
                        _raise(status)
            except _StaleSize:
                self._discard(pool, ptrs, names)
                use_hints = False
                continue
            except BaseException:
                self._discard(pool, ptrs, names)
                raise
            if not keep:
                if type(names) is bytes:
                    _zc_delete(pool, names, _NAME_LEN)
                else:
                    at = names.ctypes.data
                    for i in range(len(ptrs)):
                        _zc_delete(pool, at + _NAME_LEN * i, _NAME_LEN)
            self._remember(keys, sizes)
            return ptrs, addrs, sizes, names

    def _fetch(self, keys):
        """One sealed read reference per key, in order: (keys, references, addresses, sizes),
        the references owned by the caller. Cached copies are referenced again; the other values
        are transferred by one batch_get_into. All or nothing."""
        self._check_open()
        keys = [k if type(k) is str else _mooncake_key(k) for k in keys]
        pool = self.pool._p()
        if not keys:
            return keys, [], [], []
        if len(keys) > 1 and len(set(keys)) < len(keys):
            return self._fetch_repeated(pool, keys)
        if not self._cache_on:
            ptrs, addrs, sizes, _ = self._transfer(pool, keys, False)
            return keys, ptrs, addrs, sizes
        n = len(keys)
        ptrs, addrs, sizes = [None] * n, [None] * n, [None] * n
        with self._lock:
            hits = [(i, self._cache.get(k)) for i, k in enumerate(keys)]
            for i, name in hits:
                if name is not None:
                    self._cache.move_to_end(keys[i])
        for i, name in hits:
            if name is not None and not _zc_get(pool, name, len(name), 0, self._out_at):
                p = self._out.value
                ptrs[i], addrs[i], sizes[i] = p, _lib.lib.zc_buffer_const_data(p), _zc_size(p)
        todo = [i for i in range(n) if ptrs[i] is None]
        if todo:
            try:
                fresh = self._transfer(pool, [keys[i] for i in todo], True)
            except BaseException:
                for p in ptrs:
                    if p is not None:
                        _zc_release(p)
                raise
            names = fresh[3]
            cached = set()
            with self._lock:
                for j, i in enumerate(todo):
                    ptrs[i], addrs[i], sizes[i] = fresh[0][j], fresh[1][j], fresh[2][j]
                    name = names if type(names) is bytes else names[j].tobytes()
                    if keys[i] not in self._cache:
                        self._cache[keys[i]] = name
                        cached.add(j)
            for j in range(len(todo)):
                if j not in cached:  # another thread cached the key meanwhile: one copy is kept
                    _zc_delete(pool, self._key_at(names, j), _NAME_LEN)
        return keys, ptrs, addrs, sizes

    def _fetch_repeated(self, pool, keys):
        """`_fetch` of a batch that names some keys more than once. Each distinct key is
        transferred once, and every further mention gets its own read reference to that same
        object: Mooncake's batch_get_into, given two buffers for one key, fills one and answers
        success for both, which would leave the other holding whatever the pool had there. The
        cache is not consulted or filled here."""
        distinct = list(dict.fromkeys(keys))
        uptrs, uaddrs, usizes, names = self._transfer(pool, distinct, True)
        first = {k: j for j, k in enumerate(distinct)}
        taken = [False] * len(distinct)
        ptrs, addrs, sizes = [], [], []
        try:
            for k in keys:
                j = first[k]
                if taken[j]:
                    status = _zc_get(pool, self._key_at(names, j), _NAME_LEN, 0, self._out_at)
                    if status:
                        _raise(status)
                    ptrs.append(self._out.value)
                else:
                    taken[j] = True
                    ptrs.append(uptrs[j])
                addrs.append(uaddrs[j])
                sizes.append(usizes[j])
        except BaseException:
            for p in ptrs:
                _zc_release(p)
            for j, p in enumerate(uptrs):
                if not taken[j]:
                    _zc_release(p)
            raise
        finally:
            for j in range(len(distinct)):
                _zc_delete(pool, self._key_at(names, j), _NAME_LEN)
        return keys, ptrs, addrs, sizes

    def _read(self, keys, decode):
        """decode(key, reference, address, size) for each value of `keys`; each decode owns its
        reference (also when it raises)."""
        keys, ptrs, addrs, sizes = self._fetch(keys)
        out = []
        i = 0
        try:
            for i, key in enumerate(keys):
                out.append(decode(key, ptrs[i], addrs[i], sizes[i]))
        except BaseException:
            for p in ptrs[i + 1:]:
                _zc_release(p)
            raise
        return out

    def _read_one(self, key, decode):
        """decode(...) of one value: `_read` of one key, with its common case (its size
        remembered, no cache) in the fewest calls; every other case goes to `_read`.

        For a key read before by get_array or get_tensor, the view is made before the transfer
        from the layout seen last time, and kept only if the header bytes that arrive are those
        the layout was parsed from (else the value is decoded afresh): made after the transfer,
        the same Python objects took three times as long, their caches cold."""
        size = self._hints.get(key) if type(key) is str and not self._cache_on and self.remember_sizes else None
        pool = self.pool._ptr
        if not size or pool is None or not self._registered:
            return self._read([key], decode)[0]
        n = self._next
        self._next = n + 1
        name = self._prefix + n.to_bytes(8, "little")
        if _zc_create(pool, name, _NAME_LEN, size, self._out_at):
            return self._read([key], decode)[0]  # raises what the create answers, after any eviction
        ptr = self._out.value
        address = _zc_data(ptr)
        owner = _Ref(ptr)  # from here on, dropping it aborts the unsealed buffer
        func = getattr(decode, "__func__", decode)
        spec = self._specs.get(key)
        early = None
        if spec is not None and spec[0] is func and spec[4] == size:
            early = spec[3](owner, address, spec[2])
        # batch_get_into even for one key: see _transfer.
        moved = self.store.batch_get_into([key], [address], [size])
        if moved != [size] or _zc_seal(ptr):
            if len(moved) == 1 and moved[0] != size:  # not the size remembered: ask the master
                self._hints.pop(key, None)
            del early, owner
            return self._read([key], decode)[0]
        _zc_delete(pool, name, _NAME_LEN)
        if early is not None and _string_at(address, len(spec[1])) == spec[1]:
            return early
        del early
        out = decode(key, owner, address, size)
        learn = self._LEARN.get(func)
        if learn is not None:
            learned = learn(type(self), address, size)
            if learned is not None:
                if len(self._specs) >= _MAX_HINTS:
                    self._specs.clear()
                self._specs[key] = (func,) + learned + (size,)
        return out

    # Decoders: each takes (key, read reference or _Ref, address, size) and owns the reference.

    _array_layouts = {}
    _tensor_layouts = {}

    @classmethod
    def _as_array(cls, key, ref, address, size):
        owner = ref if type(ref) is _Ref else _Ref(ref)
        head = _string_at(address, size if size < _HEAD else _HEAD)
        if head[:8] != _PARTS_MAGIC:
            return _bytes_at(owner, address, size)
        meta = _meta(head)
        layout = cls._array_layouts.get((meta, size))
        if layout is None:
            layout = _objects._array_layout(address, size, head, key)
            if meta is not None and len(cls._array_layouts) < 4096:
                cls._array_layouts[(meta, size)] = layout
        return cls._array_from(owner, address, layout)

    @staticmethod
    def _array_from(owner, address, layout):
        data_at, _data_len, dtype, shape = layout
        if not dtype.itemsize or 0 in shape:  # no bytes to share
            empty = np.empty(shape, dtype)
            empty.flags.writeable = False
            return empty
        return _objects._array_at(owner, address + data_at, dtype, shape, True)

    @classmethod
    def _learn_array(cls, address, size):
        """(metadata bytes, layout, view maker) of the array value at `address`, if cached."""
        head = _string_at(address, size if size < _HEAD else _HEAD)
        meta = _meta(head) if head[:8] == _PARTS_MAGIC else None
        layout = cls._array_layouts.get((meta, size)) if meta is not None else None
        return None if layout is None else (meta, layout, cls._array_from)

    @classmethod
    def _tensor_layout(cls, key, address, size, head):
        """(data offset, torch dtype, shape, data bytes, numpy typestr) of a tensor value in
        either format."""
        torch = _torch()
        if head[:8] == _PARTS_MAGIC:
            return _objects._tensor_layout(torch, address, size, head, key)
        if head[:4] != _MOONCAKE_MAGIC:
            raise FormatError(
                "key %r holds neither a zcopy tensor nor one put by Mooncake's put_tensor" % (key,))
        data_at, name, shape = mooncake_tensor_layout(head, size)
        dtype = getattr(torch, name)
        nbytes = size - data_at
        return (data_at, dtype, tuple(shape), nbytes, _objects.TENSOR_TYPESTR.get(str(dtype)))

    @classmethod
    def _as_tensor(cls, key, ref, address, size):
        owner = ref if type(ref) is _Ref else _Ref(ref)
        head = _string_at(address, size if size < _HEAD else _HEAD)
        meta = _meta(head)
        layout = cls._tensor_layouts.get((meta, size))
        if layout is None:
            layout = cls._tensor_layout(key, address, size, head)
            if meta is not None and len(cls._tensor_layouts) < 4096:
                cls._tensor_layouts[(meta, size)] = layout
        return cls._tensor_from(owner, address, layout)

    # Byte count -> (a ctypes array type of that many bytes with a slot for the owner,
    # torch.frombuffer): what _tensor_from needs for a 1-D tensor, in one lookup.
    _flat_tensor_types = {}

    @staticmethod
    def _tensor_from(owner, address, layout, _flat=_flat_tensor_types):
        """The tensor of `layout` over the bytes at `address`, `owner` keeping them alive. A 1-D
        tensor is one torch.frombuffer of a ctypes array over its bytes that holds `owner`: made
        right after a transfer, when every cache is cold, that took two thirds of the time of
        numpy's __array_interface__ and torch.from_numpy, and it takes every dtype (bfloat16
        too). Other shapes keep the numpy way: frombuffer's view(shape) took twice as long."""
        data_at, dtype, shape, nbytes, _ = layout
        flat = _flat.get(nbytes) if len(shape) == 1 else None
        if flat is None:
            if len(shape) != 1 or not nbytes:
                return _objects._tensor_from(_torch(), owner, address, layout)
            if len(_flat) >= 4096:
                _flat.clear()
            kind = type("_TensorBytes", (ctypes.c_char * nbytes,), {"__slots__": ("owner",)})
            flat = _flat[nbytes] = (kind, _torch().frombuffer)
        span = flat[0].from_address(address + data_at)
        span.owner = owner
        return flat[1](span, dtype=dtype)

    @classmethod
    def _learn_tensor(cls, address, size):
        """(metadata bytes, layout, view maker) of the tensor value at `address`, if cached."""
        head = _string_at(address, size if size < _HEAD else _HEAD)
        meta = _meta(head)
        layout = cls._tensor_layouts.get((meta, size)) if meta is not None else None
        return None if layout is None else (meta, layout, cls._tensor_from)

    @staticmethod
    def _as_parts(key, ref, address, size):
        owner = ref if type(ref) is _Ref else _Ref(ref)
        if size < 8 or _string_at(address, 8) != _PARTS_MAGIC:
            return [_bytes_at(owner, address, size)]
        layout = _objects._layout_in_memory(address, size, "multi-part object")
        return [_bytes_at(owner, address + at, n) for at, n in layout]

    @staticmethod
    def _as_object(key, ref, address, size):
        owner = ref if type(ref) is _Ref else _Ref(ref)
        if size < 8 or _string_at(address, 8) != _PARTS_MAGIC:
            raise FormatError("key %r does not hold a zcopy pickled object (no ZCPARTS magic)" % (key,))
        parts = _objects._layout_in_memory(address, size, "pickled object")
        if len(parts) < 2 or _string_at(address + parts[0][0], parts[0][1]) != _objects.OBJECT_MAGIC:
            raise FormatError("key %r does not hold a zcopy pickled object" % (key,))
        stream = memoryview(_bytes_at(owner, address + parts[1][0], parts[1][1]))
        buffers = [memoryview(_bytes_at(owner, address + at, n)) for at, n in parts[2:]]
        return pickle.loads(stream, buffers=buffers)

    @staticmethod
    def _as_buffer(key, ref, address, size):
        if type(ref) is _Ref:  # the Buffer takes the reference over
            ptr, ref.ptr = ref.ptr, None
            return Buffer(ptr, key, False)
        return Buffer(ref, key, False)

    _LEARN = {_as_array.__func__: _learn_array.__func__, _as_tensor.__func__: _learn_tensor.__func__}

    def get_array(self, key):
        """The array under `key`, read-only, over the pool's bytes. A value not written in the
        parts format (Mooncake's own put) comes back as its bytes, a 1-D uint8 array."""
        return self._read_one(key, self._as_array)

    def get_tensor(self, key):
        """The tensor under `key`, over the pool's bytes (torch has no read-only tensors: do not
        write to it): a value of put_tensor here, or of Mooncake's own put_tensor (its header
        checked against the value's size first)."""
        return self._read_one(key, self._as_tensor)

    def get_object(self, key):
        """The object stored by put_object; its out-of-band buffers are read-only pool views."""
        return self._read_one(key, self._as_object)

    def get_parts(self, key):
        """The parts of the value under `key`, read-only uint8 arrays; a value not in the parts
        format is one part."""
        return self._read_one(key, self._as_parts)

    def get_buffer(self, key):
        """The value's bytes as a sealed, read-only zcopy Buffer (any format)."""
        return self._read_one(key, self._as_buffer)

    def batch_get_arrays(self, keys):
        """get_array for many keys: one transfer call for the batch (and one size query for
        the keys whose sizes are not remembered)."""
        return self._read(keys, self._as_array)

    def batch_get_tensors(self, keys):
        return self._read(keys, self._as_tensor)

    def batch_get_objects(self, keys):
        return self._read(keys, self._as_object)

    def batch_get_parts(self, keys):
        return self._read(keys, self._as_parts)

    def batch_get_buffers(self, keys):
        return self._read(keys, self._as_buffer)

    def forget(self, key):
        """Drops the cached copy of `key`, if any (views of it stay valid), and its remembered
        size."""
        key = _mooncake_key(key)
        with self._lock:
            self._hints.pop(key, None)
            self._specs.pop(key, None)
            name = self._cache.pop(key, None)
        if name is not None:
            self._drop(name)

    @property
    def cached_keys(self):
        with self._lock:
            return list(self._cache)

    def __repr__(self):
        state = "closed" if not self._registered else "%d cached" % len(self._cache)
        return "<zcopy.mooncake.ZeroCopyStore pool %#x+%d, %s>" % (self._region[0], self._region[1], state)

def master_binary():
    """Path of the `mooncake_master` the wheel ships (next to its Python package, or on PATH)."""
    import shutil

    import mooncake

    here = os.path.join(os.path.dirname(os.path.abspath(mooncake.__file__)), "mooncake_master")
    if os.access(here, os.X_OK):
        return here
    found = shutil.which("mooncake_master")
    if found is None:
        raise FileNotFoundError("mooncake_master is neither in the mooncake package nor on PATH")
    return found


def _die_with_parent():
    """In the child before exec: SIGTERM when the process that started it dies, so that a
    crashed test or example never leaves a master behind."""
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)


class LocalMaster:
    """A `mooncake_master` on 127.0.0.1 (or the IPv4 address `host`) for tests and examples:
    started by `start()`, stopped (by its PID) by `stop()` or the `with` block, and sent SIGTERM
    if the thread that started it ends first. `args` are extra master flags."""

    def __init__(self, port=50051, args=(), log=None, timeout=15.0, host="127.0.0.1"):
        self.port = port
        self.host = host
        self.address = "%s:%d" % (host, port)
        self.args = list(args)
        self.log = log
        self.timeout = timeout
        self.proc = None

    def start(self):
        import socket
        import subprocess
        import time

        cmd = [
            master_binary(), "--rpc_address=%s" % self.host, "--rpc_port=%d" % self.port,
            "--metrics_port=%d" % (self.port + 1), "--logtostderr=true",
        ] + self.args
        out = subprocess.DEVNULL if self.log is None else self.log
        self.proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        deadline = time.monotonic() + self.timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("mooncake_master exited with code %d at start" % self.proc.returncode)
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("mooncake_master did not listen on %s within %.0f s" % (self.address, self.timeout))
                time.sleep(0.05)

    @property
    def pid(self):
        return None if self.proc is None else self.proc.pid

    def kill(self):
        """SIGKILL, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self):
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
        return False
