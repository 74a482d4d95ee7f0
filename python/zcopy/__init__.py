"""zcopy: zero-copy numpy arrays, tensors and pickled objects over a pre-registered memory pool.

    import zcopy, numpy as np
    pool = zcopy.Pool(1 << 30)
    pool.put_array("weights", np.arange(10, dtype=np.float32))   # one copy, in place
    a = pool.get_array("weights")                                  # no copy, read-only

Shared between processes, by name (the file /dev/shm/zcopy.kv):

    pool = zcopy.Pool(1 << 30, name="kv")          # creates it
    other = zcopy.Pool.attach("kv")                 # in any process: the same objects, no copy
    zcopy.unlink("kv")                              # removes the file
"""

from ._core import (
    AlreadyExistsError,
    AlreadySealedError,
    Buffer,
    Error,
    FormatError,
    InternalError,
    InvalidArgumentError,
    NoSuchPoolError,
    NotFoundError,
    NotSealedError,
    OutOfMemoryError,
    Pool,
    PoolClosedError,
    PoolExistsError,
    PoolForkedError,
    RdmaError,
    SystemCallError,
    TimeoutError,
    TooLargeError,
    unlink,
)
from ._lib import path as library_path
from ._objects import get_array, get_object, get_tensor, parse_parts, put_array, put_object, put_tensor

__version__ = "0.1.0"

__all__ = [
    "AlreadyExistsError",
    "AlreadySealedError",
    "Buffer",
    "Error",
    "FormatError",
    "InternalError",
    "InvalidArgumentError",
    "NoSuchPoolError",
    "NotFoundError",
    "NotSealedError",
    "OutOfMemoryError",
    "Pool",
    "PoolClosedError",
    "PoolExistsError",
    "PoolForkedError",
    "RdmaError",
    "SystemCallError",
    "TimeoutError",
    "TooLargeError",
    "get_array",
    "get_object",
    "get_tensor",
    "library_path",
    "parse_parts",
    "put_array",
    "put_object",
    "put_tensor",
    "unlink",
]
