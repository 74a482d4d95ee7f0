"""A TransferQueue storage backend that keeps field values in Mooncake Store through a zcopy pool.

    import transfer_queue as tq
    import zcopy.transferqueue                  # registers "ZcopyMooncakeStore"
    tq.init({"backend": {"storage_backend": "ZcopyMooncakeStore",
                         "ZcopyMooncakeStore": {"master_server_address": "127.0.0.1:50051",
                                                "local_hostname": "127.0.0.1",
                                                "pool_size": 1 << 30}}})

TransferQueue (the `transferqueue` package, Ascend/TransferQueue) stores each field of each
sample under the key "{global_index}@{field}" through a storage client (`StorageKVClient`) owned
by a `KVStorageManager`. This module registers both under one name, `BACKEND` (also used for the
client, `CLIENT`), in the factories of the installed TransferQueue, after checking that its
version and plug-in contract are ones this module was written against (`check_contract`).

The client (`ZcopyMooncakeStoreClient`) joins one `MooncakeDistributedStore` and one zcopy pool
(`zcopy.mooncake.ZeroCopyStore`, the pool registered with Mooncake once, at start-up). A put
encodes every value once, in place, into a buffer of the pool (metadata and data as separate
parts): a CPU tensor or numpy array by one copy of its bytes (a non-contiguous one is made
contiguous by that same copy), anything else (a nested tensor, a string, a dict, ...) by pickle
protocol 5. The whole batch is then one `batch_upsert_from` (TransferQueue updates fields in
place; without upsert in the wheel, `batch_remove` then `batch_put_from`). A get creates one
buffer per value in the pool, has Mooncake transfer all of them in one `batch_get_into`, seals
them and returns tensors (or read-only arrays, or the unpickled objects) that are views of the
pool and keep their buffers alive. Each put answers the value's size as TransferQueue's
`custom_backend_meta`, so a get in any process knows the sizes without asking the master.
`clear` removes the keys from Mooncake (`batch_remove`, force) and forgets what this process
remembered of them.

Config keys (the manager's section, `backend.ZcopyMooncakeStore`): `master_server_address`,
`local_hostname`, `metadata_server` ("P2PHANDSHAKE" by default), `protocol` ("tcp"),
`device_name`, `global_segment_size`, `local_buffer_size` (as for TransferQueue's own
MooncakeStore backend), `pool_size` (bytes of the zcopy pool, 1 GiB by default) and
`pool_options` (keyword arguments of `zcopy.Pool`). The mooncake_master is the caller's to run:
this backend never starts nor stops one.

A put replaces the value of a key that exists (TransferQueue writes "{index}@{field}" again when a
field is updated), unlike the puts of `ZeroCopyStore`, which refuse an existing key.

Errors: a pool too small for a batch raises `zcopy.OutOfMemoryError` before Mooncake is called
(nothing stored before is touched); a key that is not in Mooncake raises
`zcopy.mooncake.MooncakeNotFoundError`. A batch that Mooncake refuses in part (no space) raises
`MooncakeOutOfMemoryError`; its other keys hold their new values, and a refused key that held a
value before is left missing (Mooncake's upsert drops the old value when it finds no room for
the new one). Not thread-safe beyond what TransferQueue does with it
(one client per manager, its calls made one at a time).
"""

import ctypes
import importlib.metadata
import inspect

import numpy as np

from . import _objects
from ._core import FormatError, OutOfMemoryError, TooLargeError
from .mooncake import MooncakeError, ReplicateConfig, ZeroCopyStore, _error, _zc_release

try:
    import torch
except ImportError as _e:
    raise ImportError("zcopy.transferqueue needs torch (pip install torch): %s" % _e) from _e

try:
    import transfer_queue
    from transfer_queue.storage.bootstrap.provider import StorageBootstrapProvider
    from transfer_queue.storage.clients.base import StorageClientFactory, StorageKVClient
    from transfer_queue.storage.managers.base import KVStorageManager, StorageManagerFactory
except ImportError as _e:
    raise ImportError("zcopy.transferqueue needs TransferQueue (pip install transferqueue==0.1.11): %s" % _e) from _e

__all__ = ["BACKEND", "CLIENT", "IncompatibleTransferQueue", "ZcopyMooncakeStoreClient",
           "ZcopyMooncakeStorageManager", "check_contract", "KNOWN_VERSIONS"]

BACKEND = "ZcopyMooncakeStore"
CLIENT = "ZcopyMooncakeStoreClient"
KNOWN_VERSIONS = ("0.1.11",)
OBJECT_NOT_FOUND = -704


class IncompatibleTransferQueue(ImportError):
    """The installed TransferQueue's plug-in contract is not one this module knows."""


def _version():
    try:
        return importlib.metadata.version("transferqueue")
    except importlib.metadata.PackageNotFoundError:
        return getattr(transfer_queue, "__version__", None)


def check_contract():
    """Raises IncompatibleTransferQueue unless the installed TransferQueue is a known version
    and its storage plug-in classes have the methods and parameters this backend implements."""
    version = _version()
    if version not in KNOWN_VERSIONS:
        raise IncompatibleTransferQueue(
            "zcopy.transferqueue knows the storage plug-in contract of TransferQueue %s, not %s: "
            "install transferqueue==%s or check its StorageKVClient and KVStorageManager first"
            % (", ".join(KNOWN_VERSIONS), version, KNOWN_VERSIONS[-1]))
    expected = {
        "put": ["self", "keys", "values"],
        "get": ["self", "keys", "shapes", "dtypes", "custom_backend_meta"],
        "clear": ["self", "keys", "custom_backend_meta"],
    }
    problems = []
    if set(getattr(StorageKVClient, "__abstractmethods__", ())) != set(expected):
        problems.append("StorageKVClient's abstract methods are %s, not %s"
                        % (sorted(getattr(StorageKVClient, "__abstractmethods__", ())), sorted(expected)))
    for name, params in expected.items():
        method = getattr(StorageKVClient, name, None)
        got = list(inspect.signature(method).parameters) if method is not None else None
        if got != params:
            problems.append("StorageKVClient.%s%s, not (%s)" % (name, "(%s)" % ", ".join(got) if got else " is missing",
                                                              ", ".join(params)))
    got = list(inspect.signature(KVStorageManager.__init__).parameters)
    if got[:3] != ["self", "controller_info", "config"]:
        problems.append("KVStorageManager.__init__(%s) does not start (self, controller_info, config)" % ", ".join(got))
    for cls, attr in ((StorageClientFactory, "register"), (StorageManagerFactory, "register"),
                      (StorageBootstrapProvider, "register_provider")):
        if not callable(getattr(cls, attr, None)):
            problems.append("%s.%s is missing" % (cls.__name__, attr))
    if problems:
        raise IncompatibleTransferQueue(
            "TransferQueue %s does not have the storage plug-in contract zcopy.transferqueue was written for: %s"
            % (version, "; ".join(problems)))


check_contract()


class _Nested:
    """A nested tensor as its components (pickled: they have no single dense buffer)."""

    def __init__(self, tensor):
        self.layout = "jagged" if tensor.layout == torch.jagged else "strided"
        self.parts = [t.contiguous() for t in tensor.unbind()]

    def rebuild(self):
        layout = torch.jagged if self.layout == "jagged" else torch.strided
        return torch.nested.as_nested_tensor(self.parts, layout=layout)


def _kind(value):
    """The encoder of a value: "tensor" (dense CPU torch tensor), "array" (numpy array of plain
    data) or "object" (pickled, pickle 5: its out-of-band buffers in their own parts). Tensors
    that are nested, of another layout (sparse) or that require grad are pickled, so that they
    come back as they went in (copies, not views of the pool)."""
    if isinstance(value, torch.Tensor):
        if value.is_nested or value.layout != torch.strided or value.requires_grad:
            return "object"
        return "tensor"
    if type(value) is np.ndarray and not value.dtype.hasobject:
        return "array"
    return "object"


def _prepare(kind, value):
    if kind == "tensor" and value.device.type != "cpu":
        return value.cpu()
    if kind == "object" and isinstance(value, torch.Tensor) and value.is_nested:
        return _Nested(value)
    return value


_MAGICS = {_objects.TENSOR_MAGIC: ZeroCopyStore._as_tensor, _objects.ARRAY_MAGIC: ZeroCopyStore._as_array,
           _objects.OBJECT_MAGIC: ZeroCopyStore._as_object}


def _decode(key, ref, address, size):
    """The value of any kind a put here wrote, over the pool's bytes; owns `ref`."""
    decode = None
    try:
        if size >= 8 and ctypes.string_at(address, 8) == _objects.PARTS_MAGIC:
            parts = _objects._layout_in_memory(address, size, "TransferQueue value")
            if parts and parts[0][1] >= 8:
                decode = _MAGICS.get(ctypes.string_at(address + parts[0][0], 8))
        if decode is None:
            raise FormatError("key %r does not hold a value written by %s" % (key, CLIENT))
    except BaseException:
        _zc_release(ref)
        raise
    value = decode(key, ref, address, size)
    if isinstance(value, _Nested):
        return value.rebuild()
    return value


@StorageClientFactory.register(CLIENT)
class ZcopyMooncakeStoreClient(StorageKVClient):
    """TransferQueue's storage client over `zcopy.mooncake.ZeroCopyStore` (see the module)."""

    def __init__(self, config):
        super().__init__(config)
        get = config.get
        master = get("master_server_address", None)
        if not master or not isinstance(master, str):
            raise ValueError("%s needs 'master_server_address' (host:port of a running mooncake_master)" % CLIENT)
        hostname = get("local_hostname", "") or "127.0.0.1"
        metadata = get("metadata_server", None) or "P2PHANDSHAKE"
        if str(metadata).strip().upper() == "P2PHANDSHAKE":
            metadata = "P2PHANDSHAKE"
        elif not str(metadata).startswith(("http://", "etcd://")):
            metadata = "http://%s/metadata" % metadata
        options = dict(get("pool_options", None) or {})
        self.zstore = ZeroCopyStore.setup(
            int(get("pool_size", 1 << 30)),
            local_hostname=hostname,
            metadata_server=metadata,
            global_segment_size=int(get("global_segment_size", 1 << 30)),
            local_buffer_size=int(get("local_buffer_size", 16 << 20)),
            protocol=get("protocol", "tcp") or "tcp",
            device_name=get("device_name", "") or "",
            master_server_address=master,
            pool_options=options,
        )
        self.replica_config = ReplicateConfig()
        self._upsert = hasattr(self.zstore.store, "batch_upsert_from")

    # --- put ----------------------------------------------------------------------------------

    def put(self, keys, values):
        """Encodes each value once into the pool, then one batch_upsert_from. Returns, per key,
        {"zc_size": bytes}: the size a get in any process transfers without asking the master."""
        if not isinstance(keys, list) or not isinstance(values, list):
            raise ValueError("keys and values must be lists")
        if len(keys) != len(values):
            raise ValueError("%d keys for %d values" % (len(keys), len(values)))
        if not keys:
            return []
        zs = self.zstore
        zs._check_open()
        pool = zs.pool._p()
        refs = []
        try:
            for key, value in zip(keys, values):
                kind = _kind(value)
                value = _prepare(kind, value)
                if kind == "tensor":
                    zs._check_fits(key, value.numel() * value.element_size())
                elif kind == "array":
                    zs._check_fits(key, value.nbytes)
                try:
                    refs.append(zs._encode(pool, kind, value))
                except TooLargeError:
                    raise
                except OutOfMemoryError as e:
                    raise OutOfMemoryError(
                        "the zcopy pool (%d bytes) is full at value %d of %d (key %r); nothing of this batch "
                        "was stored and the values stored before are untouched: %s"
                        % (zs._region[1], len(refs) + 1, len(keys), key, e)) from None
            sizes = [size for _, _, size in refs]
            self._store_spans(keys, [address for _, address, _ in refs], sizes)
        finally:
            for ptr, _, _ in refs:
                _zc_release(ptr)
        zs._remember(keys, sizes)
        return [{"zc_size": s} for s in sizes]

    def _store_spans(self, keys, addrs, sizes):
        store = self.zstore.store
        if self._upsert:
            results = store.batch_upsert_from(keys, addrs, sizes, self.replica_config)
        else:  # Mooncake's put keeps an older value: remove it first
            store.batch_remove(keys, True)
            results = store.batch_put_from(keys, addrs, sizes, self.replica_config)
        if len(results) != len(keys):
            raise MooncakeError("batch put answered %d results for %d keys" % (len(results), len(keys)))
        failed = [(k, rc) for k, rc in zip(keys, results) if rc != 0]
        if failed:
            key, rc = failed[0]
            raise _error("put of %r (%d of %d keys failed)" % (key, len(failed), len(keys)), rc)

    # --- get ----------------------------------------------------------------------------------

    def get(self, keys, shapes=None, dtypes=None, custom_backend_meta=None):
        """The values of `keys`, in order: tensors over the pool's bytes (do not write to them),
        read-only numpy arrays, or the objects put. One batch_get_into for the batch."""
        if not isinstance(keys, list):
            raise ValueError("keys must be a list")
        if not keys:
            return []
        zs = self.zstore
        if custom_backend_meta is not None:
            if len(custom_backend_meta) != len(keys):
                raise ValueError("%d custom_backend_meta entries for %d keys" % (len(custom_backend_meta), len(keys)))
            known = [(k, m["zc_size"]) for k, m in zip(keys, custom_backend_meta)
                     if isinstance(m, dict) and m.get("zc_size")]
            if known:
                zs._remember([k for k, _ in known], [s for _, s in known])
        return zs._read(keys, _decode)

    # --- clear --------------------------------------------------------------------------------

    def clear(self, keys, custom_backend_meta=None):
        """Removes `keys` from Mooncake (a missing key is not an error) and forgets their sizes.
        Views already handed out stay valid: they hold their own buffers."""
        if not keys:
            return
        zs = self.zstore
        for k in keys:
            zs.forget(k)
        results = zs.store.batch_remove(list(keys), True)
        failed = [(k, rc) for k, rc in zip(keys, results) if rc not in (0, OBJECT_NOT_FOUND)]
        if failed:
            key, rc = failed[0]
            raise _error("clear of %r (%d of %d keys failed)" % (key, len(failed), len(keys)), rc)

    def close(self):
        zs, self.zstore = getattr(self, "zstore", None), None
        if zs is not None:
            zs.close()


@StorageManagerFactory.register(BACKEND)
class ZcopyMooncakeStorageManager(KVStorageManager):
    """TransferQueue's KV storage manager with `ZcopyMooncakeStoreClient` as its client."""

    def __init__(self, controller_info, config, zmq_context=None):
        config["client_name"] = CLIENT
        super().__init__(controller_info, config, zmq_context=zmq_context)

    def _merge_tensors_to_tensordict(self, metadata, values):
        """TransferQueue's merge, except for a batch of one sample: there each tensor field
        becomes the jagged nested tensor TransferQueue's merge makes, but over the value's
        own bytes (`nested_tensor_from_jagged` of one component) instead of a copy of them."""
        fields = sorted(metadata.field_names)
        if len(metadata.global_indexes) != 1 or len(values) != len(fields) or not all(
                isinstance(v, torch.Tensor) and not v.is_nested and v.dim() >= 1 for v in values):
            return super()._merge_tensors_to_tensordict(metadata, values)
        from tensordict import TensorDict

        merged = {}
        for field, v in zip(fields, values):
            offsets = torch.tensor([0, v.shape[0]], dtype=torch.int64)
            merged[field] = torch.nested.nested_tensor_from_jagged(v, offsets)
        return TensorDict(merged, batch_size=1)

    def close(self):
        client = getattr(self, "storage_client", None)
        if client is not None:
            client.close()
        super().close()


@StorageBootstrapProvider.register_provider(BACKEND)
def _bootstrap(conf):
    """Nothing to start: the mooncake_master is the caller's. Returns the section, so that
    TransferQueue records the backend as set up."""
    return dict(conf.backend[BACKEND])
