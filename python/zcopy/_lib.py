"""Finds libzcopy.so and declares the C ABI of include/zcopy.h for ctypes."""

import ctypes
import ctypes.util
import os
from ctypes import POINTER, c_bool, c_char_p, c_int64, c_size_t, c_uint8, c_uint32, c_uint64, c_void_p

HERE = os.path.dirname(os.path.abspath(__file__))

zc_status = c_uint32


class PoolOptions(ctypes.Structure):
    _fields_ = [
        ("size", c_uint64),
        ("max_objects", c_uint64),
        ("hugetlbfs_dir", c_char_p),
        ("page_mode", c_uint32),
        ("prefault", c_bool),
        ("lock_memory", c_bool),
        ("rdma", c_uint32),
        ("rdma_devices", c_char_p),
        ("eviction", c_uint32),
        ("shared_mode", c_uint32),
        ("name", c_char_p),
        ("reserved", c_uint64 * 4),
    ]


class PoolStats(ctypes.Structure):
    _fields_ = [
        ("capacity_bytes", c_uint64),
        ("used_bytes", c_uint64),
        ("largest_free_block", c_uint64),
        ("object_count", c_uint64),
        ("key_count", c_uint64),
        ("max_objects", c_uint64),
        ("page_size", c_uint64),
        ("open_nanos", c_uint64),
        ("rdma_registrations", c_uint64),
        ("rdma_register_nanos", c_uint64),
        ("evictions", c_uint64),
        ("creates_refused", c_uint64),
        ("processes_attached", c_uint64),
        ("processes_reclaimed", c_uint64),
        ("lock_repairs", c_uint64),
        ("reserved", c_uint64 * 1),
    ]


class RdmaDesc(ctypes.Structure):
    _fields_ = [("addr", c_uint64), ("length", c_uint64), ("lkey", c_uint32), ("rkey", c_uint32)]


VIEW_HEAD_BYTES = 256  # ZC_VIEW_HEAD_BYTES


class View(ctypes.Structure):
    _fields_ = [("buffer", c_void_p), ("data", c_void_p), ("size", c_size_t), ("head", c_uint8 * VIEW_HEAD_BYTES)]


def _candidates():
    env = os.environ.get("ZCOPY_LIBRARY")
    if env:
        yield env
        return
    yield os.path.join(HERE, "libzcopy.so")
    # The repository's build tree, when the package is used from a checkout.
    root = os.path.dirname(os.path.dirname(HERE))
    for profile in ("release", "debug"):
        yield os.path.join(root, "target", profile, "libzcopy.so")
    found = ctypes.util.find_library("zcopy")
    if found:
        yield found


def _load():
    tried = []
    for path in _candidates():
        if os.path.sep in path and not os.path.exists(path):
            tried.append(path + " (missing)")
            continue
        try:
            return ctypes.CDLL(path), path
        except OSError as e:
            tried.append("%s (%s)" % (path, e))
    raise ImportError(
        "zcopy: libzcopy.so not found; build it with `cargo build --release` and reinstall the "
        "package, or set ZCOPY_LIBRARY to its path. Tried: " + "; ".join(tried or ["nothing"])
    )


lib, path = _load()

_P = POINTER
_buf = c_void_p  # zc_buffer *
_pool = c_void_p  # zc_pool *

_SIGNATURES = {
    "zc_pool_options_init": (None, [_P(PoolOptions)]),
    "zc_pool_open": (zc_status, [_P(PoolOptions), _P(_pool)]),
    "zc_pool_close": (None, [_pool]),
    "zc_pool_attach": (zc_status, [c_char_p, _P(PoolOptions), _P(_pool)]),
    "zc_pool_unlink": (zc_status, [c_char_p]),
    "zc_pool_reclaim": (zc_status, [_pool, _P(c_uint64)]),
    "zc_pool_check": (zc_status, [_pool]),
    "zc_pool_get_stats": (zc_status, [_pool, _P(PoolStats)]),
    "zc_create_buffer": (zc_status, [_pool, c_char_p, c_size_t, c_size_t, _P(_buf)]),
    "zc_create_parts": (zc_status, [_pool, c_char_p, c_size_t, _P(c_size_t), c_size_t, _P(_buf)]),
    "zc_seal": (zc_status, [_buf]),
    "zc_abort": (zc_status, [_buf]),
    "zc_get": (zc_status, [_pool, c_char_p, c_size_t, c_int64, _P(_buf)]),
    "zc_get_view": (zc_status, [_pool, c_char_p, c_size_t, c_int64, _P(View)]),
    "zc_release": (None, [_buf]),
    "zc_delete": (zc_status, [_pool, c_char_p, c_size_t]),
    "zc_contains": (c_bool, [_pool, c_char_p, c_size_t]),
    "zc_put": (zc_status, [_pool, c_char_p, c_size_t, c_void_p, c_size_t]),
    "zc_get_into": (zc_status, [_pool, c_char_p, c_size_t, c_int64, c_void_p, c_size_t, _P(c_size_t)]),
    "zc_buffer_data": (c_void_p, [_buf]),
    "zc_buffer_const_data": (c_void_p, [_buf]),
    "zc_buffer_size": (c_size_t, [_buf]),
    "zc_buffer_part_count": (c_size_t, [_buf]),
    "zc_buffer_part": (zc_status, [_buf, c_size_t, _P(c_void_p), _P(c_size_t)]),
    "zc_buffer_part_mut": (zc_status, [_buf, c_size_t, _P(c_void_p), _P(c_size_t)]),
    "zc_parts_count": (zc_status, [c_void_p, c_size_t, _P(c_size_t)]),
    "zc_parts_locate": (zc_status, [c_void_p, c_size_t, c_size_t, _P(c_size_t), _P(c_size_t)]),
    "zc_buffer_rdma_desc": (zc_status, [_buf, c_uint32, _P(RdmaDesc)]),
    "zc_pool_rdma_count": (c_uint32, [_pool]),
    "zc_pool_region": (zc_status, [_pool, _P(c_void_p), _P(c_size_t)]),
    "zc_status_str": (c_char_p, [zc_status]),
    "zc_last_error_message": (c_char_p, []),
}

for _name, (_res, _args) in _SIGNATURES.items():
    _f = getattr(lib, _name)
    _f.restype = _res
    _f.argtypes = _args

del _name, _res, _args, _f

# Constants of include/zcopy.h.
OK = 0
ERR_INVALID_ARGUMENT = 1
ERR_NOT_FOUND = 2
ERR_ALREADY_EXISTS = 3
ERR_NOT_SEALED = 4
ERR_ALREADY_SEALED = 5
ERR_OUT_OF_MEMORY = 6
ERR_TIMEOUT = 7
ERR_POOL_CLOSED = 8
ERR_RDMA = 9
ERR_SYSTEM = 10
ERR_INTERNAL = 11

PAGES = {"thp": 0, "small": 1, "hugetlb": 2}
RDMA = {"auto": 0, "off": 1, "required": 2}
EVICTION = {"none": 0, "lru": 1}

c_uint8_p = _P(c_uint8)
