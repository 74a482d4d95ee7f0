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
`put_buffer` puts a sealed buffer the caller wrote in place, with no copy at all. A get asks the
master for the sizes of all its keys in one call (`batch_get_replica_desc`; sizes this object
already saw are remembered and not asked again), creates one plain buffer per value under a
private key of the pool, has Mooncake transfer each value into it (`batch_get_into`), seals it
and returns read-only views of it: the buffer lives until the last view is gone. The private key
is deleted at once, so nothing else can find it.

Formats, as a get sees them: a value starting with the ZCPARTS header (every put of this class)
is decoded by the package's getters. Any other value (Mooncake's own `put`, `put_parts`,
`put_batch`) is plain bytes: `get_array` returns it as a 1-D uint8 array, `get_parts` as one part
(Mooncake's `put_parts` concatenates its parts without recording their bounds), `get_buffer` as
a sealed buffer; `get_object` and `get_tensor` refuse it (InvalidArgumentError). Values written by
Mooncake's `put_tensor` (its own tensor header, then the data) are plain bytes here too.

Errors are exceptions of the `zcopy.Error` family: `MooncakeNotFoundError` (a `NotFoundError`)
for a missing key, `MooncakeOutOfMemoryError` (an `OutOfMemoryError`) when Mooncake has no space,
`zcopy.OutOfMemoryError` when the pool is full or the value larger than the pool (checked
before encoding for arrays, tensors and parts; a pickled object that turns out larger raises what
`Pool.put_object` raises), and
`MooncakeError` for every other negative code; each Mooncake one carries `.code`. A get that fails
leaves no buffer behind. A put that fails before Mooncake is called (pool full, a value that cannot
be encoded) leaves Mooncake unchanged. A batch put that Mooncake refuses for some keys removes the
keys it answered success for (`batch_remove(force=True)`), then raises: Mooncake never replaces a
value, and answers success for a key that already held one, so such a key is removed too.

Not thread-safe: use one `ZeroCopyStore` per thread, or a lock (the Pool and the Mooncake store
under it are thread-safe). Buffers and views it returned may outlive it and its pool.
"""

import collections
import ctypes
import itertools
import os
import threading

import numpy as np

from . import _lib, _objects
from ._core import Error, InvalidArgumentError, NotFoundError, OutOfMemoryError, Pool, _raise

try:
    from mooncake.store import MooncakeDistributedStore, ReplicateConfig
except ImportError as _e:  # the whole module needs the wheel; `import zcopy` never does
    raise ImportError(
        "zcopy.mooncake needs the Mooncake Store bindings (pip install mooncake-transfer-engine-non-cuda): %s" % _e
    ) from _e

__all__ = [
    "MooncakeError",
    "MooncakeNotFoundError",
    "MooncakeOutOfMemoryError",
    "LocalMaster",
    "ReplicateConfig",
    "ZeroCopyStore",
    "master_binary",
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
NO_AVAILABLE_HANDLE = -200
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


def _error(message, code):
    if code == OBJECT_NOT_FOUND:
        return MooncakeNotFoundError(message, code)
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


class _StaleSize(Exception):
    """A remembered size no longer matches the value: read again, asking the master."""

    def __init__(self, keys):
        super().__init__(keys)
        self.keys = keys


class ZeroCopyStore:
    """A Mooncake store whose puts and gets go through the registered memory of one zcopy pool.

    `ZeroCopyStore(store, pool)` uses objects the caller set up (a store whose `setup()`
    succeeded); `close()` then only unregisters the pool. `ZeroCopyStore.setup(...)` makes both and
    `close()` closes both. `cache=True` keeps a sealed copy of each value read, which serves the
    next gets of that key with no transfer (for immutable keys: a value removed or replaced
    through another client stays cached until `remove()`/`forget()` here); the least recently
    used copies are dropped when the pool needs room.

    The size of each value this object put or read is remembered (the last 65,536 keys), so
    that getting it again needs no size query: one Mooncake call instead of two. A remembered
    size that no longer matches (the key removed and put again, with another size, by another
    client) costs one more round: every buffer of the batch is aborted and the batch read again
    with sizes from the master. `remember_sizes = False` turns this off.
    """

    def __init__(self, store, pool, *, cache=False, _owns=False):
        if not isinstance(pool, Pool):
            raise InvalidArgumentError("pool must be a zcopy.Pool, not %s" % type(pool).__name__)
        self.store = store
        self.pool = pool
        self._owns = _owns
        self._region = pool.region()
        rc = store.register_buffer(self._region[0], self._region[1])
        if rc != 0:
            raise _error("register_buffer(%#x, %d) of the pool's region" % self._region, rc)
        self._registered = True
        self._names = itertools.count()
        self._prefix = "\0zcopy.mooncake/%d/%x/" % (os.getpid(), id(self))
        self._cache_on = bool(cache)
        self._cache = collections.OrderedDict()  # Mooncake key -> private pool key of a sealed copy
        self._hints = collections.OrderedDict()  # Mooncake key -> its value's size, as last seen
        self._format = {}  # private pool key -> whether its bytes start with the ZCPARTS magic
        self.remember_sizes = True
        self._lock = threading.Lock()

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
        rdma_devices=None,
        master_server_addr=None,
    ):
        """Makes a pool of `pool_size` bytes (`pool_options`: keyword arguments of `zcopy.Pool`)
        and a `MooncakeDistributedStore` set up with the other arguments, and joins them.
        `rdma_devices` and `master_server_addr` (the names of Mooncake's own `setup`) are
        accepted for `device_name` and `master_server_address`."""
        if rdma_devices is not None:
            device_name = rdma_devices
        if master_server_addr is not None:
            master_server_address = master_server_addr
        options = {"max_objects": 1 << 16}
        options.update(pool_options or {})
        pool = Pool(pool_size, **options)
        store = MooncakeDistributedStore()
        rc = store.setup(
            local_hostname, metadata_server, int(global_segment_size), int(local_buffer_size),
            protocol, device_name, master_server_address,
        )
        if rc != 0:
            # A store whose setup failed is not safe to call again (not even close): drop it.
            pool.close()
            raise _error(
                "MooncakeDistributedStore.setup(%r, %r, master %r, %s)"
                % (local_hostname, metadata_server, master_server_address, protocol),
                rc,
            )
        try:
            return cls(store, pool, cache=cache, _owns=True)
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

    # --- puts -------------------------------------------------------------------------------

    def _name(self):
        return self._prefix + str(next(self._names))

    def _sealed(self, write):
        """Runs write(private key) (one of the package's in-place encoders), then returns a
        read reference to what it sealed, its key already deleted."""
        name = self._name()
        self._create_with_room(lambda: write(name))
        buf = self.pool.get(name)
        self.pool.delete(name)
        return buf

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

    _ENCODERS = {
        "array": lambda self, name, value: self.pool.put_array(name, value),
        "tensor": lambda self, name, value: self.pool.put_tensor(name, value),
        "object": lambda self, name, value: self.pool.put_object(name, value),
        "parts": lambda self, name, value: self._encode_parts(name, value),
    }

    def _put_sealed(self, keys, bufs, config):
        """put_from (batch_put_from for several keys) of sealed pool buffers; on a partial
        failure removes what it put."""
        for buf in bufs:
            base, length = self._region
            if not (buf.sealed and base <= buf.address and buf.address + buf.size <= base + length):
                raise InvalidArgumentError("buffer for %r is not a sealed buffer of this store's pool" % (buf.key,))
        args = (keys, [b.address for b in bufs], [b.size for b in bufs])
        if len(keys) == 1:  # put_from: the same put, with less work around it than a batch of one
            args = tuple(a[0] for a in args)
            results = [self.store.put_from(*args) if config is None else self.store.put_from(*args, config)]
        else:
            results = self.store.batch_put_from(*args) if config is None else self.store.batch_put_from(*args, config)
        if len(results) != len(keys):
            raise MooncakeError("batch_put_from answered %d results for %d keys" % (len(results), len(keys)))
        failed = [(k, rc) for k, rc in zip(keys, results) if rc != 0]
        if failed:
            done = [k for k, rc in zip(keys, results) if rc == 0]
            note = ""
            if done:
                removed = self.store.batch_remove(done, True)
                left = [k for k, rc in zip(done, removed) if rc != 0]
                note = "; the %d keys put were removed" % len(done) if not left else (
                    "; %d keys put, %d of them could not be removed (%s)" % (len(done), len(left), left[:3]))
            key, rc = failed[0]
            raise _error("put of %r (%d of %d keys failed%s)" % (key, len(failed), len(keys), note), rc)
        if self._cache_on:
            for k in keys:
                self.forget(k)
        self._remember(keys, [b.size for b in bufs])

    def _put_many(self, kind, keys, values, config):
        self._check_open()
        keys = [_mooncake_key(k) for k in keys]
        values = list(values)
        if len(keys) != len(values):
            raise InvalidArgumentError("%d keys for %d values" % (len(keys), len(values)))
        encode = self._ENCODERS[kind]
        for k, v in zip(keys, values):
            self._check_fits(k, _data_bytes(kind, v))
        bufs = []
        try:
            for v in values:
                bufs.append(self._sealed(lambda name, v=v: encode(self, name, v)))
            self._put_sealed(keys, bufs, config)
        finally:
            for b in bufs:
                b.release()

    def put_array(self, key, array, config=None):
        """Stores a numpy array (written once into the pool, then put from there)."""
        self._put_many("array", [key], [array], config)

    def put_tensor(self, key, tensor, config=None):
        """Stores a CPU torch tensor (like put_array)."""
        self._put_many("tensor", [key], [tensor], config)

    def put_object(self, key, obj, config=None):
        """Stores any picklable object (pickle 5; out-of-band buffers in their own parts)."""
        self._put_many("object", [key], [obj], config)

    def put_parts(self, key, *parts, config=None):
        """Stores bytes-like parts as one value whose part bounds `get_parts` gives back."""
        self._put_many("parts", [key], [parts], config)

    def put_buffer(self, key, buf, config=None):
        """Stores a sealed buffer of this store's pool as it is: no copy at all."""
        self._check_open()
        self._put_sealed([_mooncake_key(key)], [buf], config)

    def batch_put_arrays(self, keys, arrays, config=None):
        """put_array for many keys, in one Mooncake call."""
        self._put_many("array", keys, arrays, config)

    def batch_put_tensors(self, keys, tensors, config=None):
        self._put_many("tensor", keys, tensors, config)

    def batch_put_objects(self, keys, objects, config=None):
        self._put_many("object", keys, objects, config)

    def batch_put_parts(self, keys, parts_lists, config=None):
        self._put_many("parts", keys, parts_lists, config)

    def batch_put_buffers(self, keys, bufs, config=None):
        self._check_open()
        self._put_sealed([_mooncake_key(k) for k in keys], list(bufs), config)

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
                    raise MooncakeError("querying key %r (is the master reachable?)" % k, -900)
                raise MooncakeError("key %r exists but has no replica to read yet" % k, -703)
        return sizes

    def _check_fits(self, key, nbytes):
        capacity = self._region[1]
        if nbytes is not None and nbytes > capacity:
            raise OutOfMemoryError(
                "the value of %r (%d bytes) is larger than the whole pool (%d bytes)" % (key, nbytes, capacity)
            )

    def _create_with_room(self, create):
        """Runs create(); when the pool is full, drops cached copies (least recently used first)
        and tries again, until it fits or nothing is cached."""
        while True:
            try:
                return create()
            except OutOfMemoryError:
                with self._lock:
                    if not self._cache:
                        raise
                    _, name = self._cache.popitem(last=False)
                self._drop(name)

    def _drop(self, name):
        self._format.pop(name, None)
        try:
            self.pool.delete(name)
        except Error:
            pass  # the pool was closed, or the key already gone

    def _fetch(self, keys):
        """[private pool key] of sealed copies of the values of `keys`, in order: cached ones as
        they are, the others transferred by one batch_get_into. All or nothing: on any failure
        every buffer created here is aborted."""
        self._check_open()
        keys = [_mooncake_key(k) for k in keys]
        names = [None] * len(keys)
        if self._cache_on:
            with self._lock:
                for i, k in enumerate(keys):
                    name = self._cache.get(k)
                    if name is not None:
                        self._cache.move_to_end(k)
                        names[i] = name
        todo = [i for i, n in enumerate(names) if n is None]
        if not todo:
            return keys, names, []
        try:
            fresh = self._transfer(keys, names, todo, True)
        except _StaleSize as stale:
            with self._lock:
                for k in stale.keys:
                    self._hints.pop(k, None)
            fresh = self._transfer(keys, names, todo, False)
        return keys, names, fresh

    def _transfer(self, keys, names, todo, use_hints):
        sizes = {}
        if use_hints and self.remember_sizes:
            with self._lock:
                for i in todo:
                    size = self._hints.get(keys[i])
                    if size is not None:
                        sizes[keys[i]] = size
        hinted = set(sizes)
        unknown = [keys[i] for i in todo if keys[i] not in hinted]
        if unknown:
            sizes.update(self._sizes(unknown))
        # Raw handles rather than Buffer objects: a batch creates thousands, and each is sealed
        # and released here (or aborted), never handed out.
        created = []  # (index, private key, zc_buffer *, address, size)
        try:
            for i in todo:
                name = self._name()
                size = sizes[keys[i]]
                self._check_fits(keys[i], size)
                ptr = self._create_with_room(lambda name=name, size=size: self._create_raw(name, size))
                created.append((i, name, ptr, _lib.lib.zc_buffer_data(ptr) or 0, size))
            moving = [(i, address, size) for i, _, _, address, size in created if size or keys[i] in hinted]
            if moving:
                # batch_get_into even for one key: in the tests, get_into read a key replaced
                # by another client from where its old value had been (reporting the old size),
                # and answered success after the master had died; batch_get_into did neither.
                results = self.store.batch_get_into(
                    [keys[i] for i, _, _ in moving], [a for _, a, _ in moving], [n for _, _, n in moving]
                )
                wrong = [(i, n, rc) for (i, _, n), rc in zip(moving, results) if rc != n]
                if any(keys[i] in hinted for i, _, _ in wrong):
                    raise _StaleSize([keys[i] for i, _, _ in wrong if keys[i] in hinted])
                for i, n, rc in wrong:
                    code = rc if rc < 0 else None
                    what = "get of %r into a %d-byte buffer" % (keys[i], n)
                    if code is None:
                        what += " moved %d bytes" % rc
                    raise _error(what, code)
        except BaseException:
            for _, _, ptr, _, _ in created:
                _lib.lib.zc_abort(ptr)  # consumes the handle
            raise
        fresh = []
        for i, name, ptr, address, size in created:
            self._format[name] = size >= 8 and ctypes.string_at(address, 8) == _PARTS_MAGIC
            status = _lib.lib.zc_seal(ptr)
            _lib.lib.zc_release(ptr)
            if status:
                _raise(status)
            names[i] = name
            fresh.append(name)
        self._remember([keys[i] for i in todo], [sizes[keys[i]] for i in todo])
        return fresh

    def _create_raw(self, name, size):
        k = name.encode()
        out = ctypes.c_void_p()
        status = _lib.lib.zc_create_buffer(self.pool._p(), k, len(k), size, ctypes.byref(out))
        if status:
            _raise(status)
        return out.value

    def _remember(self, keys, sizes):
        if not self.remember_sizes:
            return
        with self._lock:
            hints = self._hints
            for k, size in zip(keys, sizes):
                hints[k] = size
                hints.move_to_end(k)
            while len(hints) > _MAX_HINTS:
                hints.popitem(last=False)

    def _read(self, keys, decode):
        """decode(private key) for each value of `keys`; fresh private keys are deleted (or
        cached) afterwards, so only the returned views hold their buffers."""
        keys, names, fresh = self._fetch(keys)
        try:
            return [decode(name) for name in names]
        finally:
            if self._cache_on:
                kept = set()
                with self._lock:
                    for k, name in zip(keys, names):
                        if k not in self._cache and name not in kept:
                            self._cache[k] = name
                            kept.add(name)
                fresh = [name for name in fresh if name not in kept]
            for name in fresh:
                self._drop(name)

    def _is_parts(self, name):
        parts = self._format.get(name)
        if parts is None:
            with self.pool.get(name) as buf:
                parts = buf.size >= 8 and ctypes.string_at(buf.address, 8) == _PARTS_MAGIC
        return parts

    def _as_array(self, name):
        if self._is_parts(name):
            return self.pool.get_array(name)
        return self.pool.get(name).array()

    def _as_parts(self, name):
        if self._is_parts(name):
            return self.pool.get_parts(name)
        return [self.pool.get(name).array()]

    def get_array(self, key):
        """The array under `key`, read-only, over the pool's bytes. A value not written in the
        parts format (Mooncake's own put) comes back as its bytes, a 1-D uint8 array."""
        return self._read([key], self._as_array)[0]

    def get_tensor(self, key):
        """The tensor under `key`, over the pool's bytes (torch has no read-only tensors: do not
        write to it)."""
        return self._read([key], self.pool.get_tensor)[0]

    def get_object(self, key):
        """The object stored by put_object; its out-of-band buffers are read-only pool views."""
        return self._read([key], self.pool.get_object)[0]

    def get_parts(self, key):
        """The parts of the value under `key`, read-only uint8 arrays; a value not in the parts
        format is one part."""
        return self._read([key], self._as_parts)[0]

    def get_buffer(self, key):
        """The value's bytes as a sealed, read-only zcopy Buffer (any format)."""
        return self._read([key], self.pool.get)[0]

    def batch_get_arrays(self, keys):
        """get_array for many keys: one size query and one transfer call for the batch."""
        return self._read(keys, self._as_array)

    def batch_get_tensors(self, keys):
        return self._read(keys, self.pool.get_tensor)

    def batch_get_objects(self, keys):
        return self._read(keys, self.pool.get_object)

    def batch_get_parts(self, keys):
        return self._read(keys, self._as_parts)

    def batch_get_buffers(self, keys):
        return self._read(keys, self.pool.get)

    def forget(self, key):
        """Drops the cached copy of `key`, if any (views of it stay valid), and its remembered
        size."""
        key = _mooncake_key(key)
        with self._lock:
            self._hints.pop(key, None)
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
    """A `mooncake_master` on 127.0.0.1 for tests and examples: started by `start()`, stopped
    (by its PID) by `stop()` or the `with` block, and sent SIGTERM if the thread that started it
    ends first. `args` are extra master flags."""

    def __init__(self, port=50051, args=(), log=None, timeout=15.0):
        self.port = port
        self.address = "127.0.0.1:%d" % port
        self.args = list(args)
        self.log = log
        self.timeout = timeout
        self.proc = None

    def start(self):
        import socket
        import subprocess
        import time

        cmd = [
            master_binary(), "--rpc_address=127.0.0.1", "--rpc_port=%d" % self.port,
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
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
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
