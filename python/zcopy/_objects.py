"""Arrays, tensors and pickled objects stored as multi-part objects (docs/FORMAT.md).

Every kind is one object whose part 0 is a small header naming the kind:
  array:  b"ZCARRAY\\0", u16 descr length, u16 ndim, numpy descr (repr), shape (i64 each)
  tensor: b"ZCTENSR\\0", u16 dtype-name length, u16 ndim, torch dtype name, shape (i64 each)
  object: b"ZCPICKL\\0"; part 1 is a pickle protocol 5 stream, parts 2.. its out-of-band buffers
and the data follows in its own 64-byte aligned part, written once, in place, read in place.

Readers treat every stored field as a claim: part offsets and lengths, dtype, shape and name are
checked against the bytes the handle holds before a view is built (FormatError otherwise).
"""

import ast
import ctypes
import pickle
import struct

import numpy as np

from ._core import Buffer, FormatError, InvalidArgumentError, Pool, _Handle, _key, _parts_total, _raise, _Span, _timeout_ms, _view
from . import _lib
from ._lib import lib

ARRAY_MAGIC = b"ZCARRAY\0"
TENSOR_MAGIC = b"ZCTENSR\0"
OBJECT_MAGIC = b"ZCPICKL\0"
_HEAD = struct.Struct("<8sHH")

_dtype_cache = {}
_CACHE_LIMIT = 4096
_MAX_NDIM = 64  # numpy's own limit; a header claiming more is not one of ours
_INTP_MAX = np.iinfo(np.intp).max

# docs/FORMAT.md: the fixed header, then (offset, length) per part.
PARTS_MAGIC = b"ZCPARTS\0"
_PARTS_FIXED = struct.Struct("<8sHHIII Q")
_PARTS_ENTRY = struct.Struct("<QQ")
_PEEK = 64  # the fixed header and two entries: all of a two-part header
_MAX_PARTS = 65536  # docs/FORMAT.md


def _parts_of(header, size, what="multi-part object"):
    """[(offset, length)] from the header bytes at the start of an object of `size` bytes,
    checked as docs/FORMAT.md says. `header` may be shorter than the header length only if it
    holds every entry."""
    if len(header) < _PARTS_FIXED.size:
        raise FormatError("not a zcopy %s: %d bytes is shorter than the header" % (what, size))
    magic, version, _flags, n, header_len, _reserved, total = _PARTS_FIXED.unpack_from(header)
    if magic != PARTS_MAGIC:
        raise FormatError("not a zcopy %s: no ZCPARTS magic" % what)
    if version != 1:
        raise FormatError("not a zcopy %s: format version %d, this package reads 1" % (what, version))
    if n > _MAX_PARTS:
        raise FormatError("not a zcopy %s: its header claims %d parts, the format allows %d" % (what, n, _MAX_PARTS))
    end_of_table = _PARTS_FIXED.size + _PARTS_ENTRY.size * n
    if header_len % 64 or header_len < end_of_table or header_len > size or total > size:
        raise FormatError("not a zcopy %s: header of %d bytes for %d parts in %d bytes" % (what, header_len, n, size))
    if len(header) < end_of_table:
        raise FormatError("not a zcopy %s: header bytes cut short" % what)
    parts = []
    for i in range(n):
        offset, length = _PARTS_ENTRY.unpack_from(header, _PARTS_FIXED.size + _PARTS_ENTRY.size * i)
        if offset % 64 or offset < header_len or offset + length > size:
            raise FormatError(
                "not a zcopy %s: part %d at %d+%d is outside its %d bytes or unaligned" % (what, i, offset, length, size)
            )
        parts.append((offset, length))
    return parts


def _layout_in_memory(address, size, what, header=None):
    """Parts of the object at `address` (`size` bytes), read from its header in place (or from
    `header`, its first bytes already copied out, when they hold the whole table)."""
    if header is None:
        header = ctypes.string_at(address, min(size, _PEEK))
    if len(header) >= 16:
        n = struct.unpack_from("<I", header, 12)[0]
        wanted = _PARTS_FIXED.size + _PARTS_ENTRY.size * n
        if wanted > len(header) and wanted <= size:
            header = ctypes.string_at(address, wanted)
    return _parts_of(header, size, what)


_zc_get_view = lib.zc_get_view
_View = _lib.View
_c_void_p = ctypes.c_void_p
_byref = ctypes.byref
_VIEW_HEAD = _lib.VIEW_HEAD_BYTES
_VIEW = struct.Struct("@PPN%ds" % _VIEW_HEAD)  # zc_view, read in one go
_string_at = ctypes.string_at
_asarray = np.asarray


def _get_view(pool, key, timeout):
    """zc_get_view wrapped straight in a handle (no Buffer): (handle, address, size, head), head
    the object's first bytes (at most VIEW_HEAD_BYTES, never past its size). One C call."""
    k = key.encode("utf-8") if type(key) is str else key if type(key) is bytes else _key(key)
    view = _View()
    ptr = pool._ptr
    if ptr is None:
        pool._p()
    status = _zc_get_view(ptr, k, len(k), 0 if timeout is None else _timeout_ms(timeout), view)
    if status:
        _raise(status)
    buffer, address, size, head = _VIEW.unpack_from(view)
    handle = _Handle(buffer)
    return handle, address, size, (head if size >= _VIEW_HEAD else head[:size])


def _encode_shape_header(magic, name, shape):
    return _HEAD.pack(magic, len(name), len(shape)) + name + struct.pack("<%dq" % len(shape), *shape)


def _decode_shape_header(raw, magic, what):
    """(name, shape) from a header part, each field checked to lie inside the part."""
    if len(raw) < _HEAD.size:
        raise FormatError("not a zcopy %s: its header part is too short" % what)
    got, name_len, ndim = _HEAD.unpack_from(raw)
    if got != magic:
        raise FormatError("not a zcopy %s (its header says %r)" % (what, got.rstrip(b"\0")))
    if ndim > _MAX_NDIM:
        raise FormatError("not a zcopy %s: its header claims %d dimensions" % (what, ndim))
    end = _HEAD.size + name_len + 8 * ndim
    if end > len(raw):
        raise FormatError(
            "not a zcopy %s: its header part holds %d bytes, its name and %d dimensions need %d" % (what, len(raw), ndim, end)
        )
    name = raw[_HEAD.size : _HEAD.size + name_len]
    shape = struct.unpack_from("<%dq" % ndim, raw, _HEAD.size + name_len)
    return name, shape


def _check_shape(shape, itemsize, nbytes, what, key):
    """Refuses a stored shape unless its elements fill exactly the `nbytes` of the data part."""
    count = nonzero = 1
    for d in shape:
        if d < 0:
            raise FormatError("key %r: its %s header claims shape %s, with a negative dimension" % (key, what, shape))
        count *= d
        nonzero *= d or 1
    # numpy multiplies dimensions and item size in a C integer, whatever a zero among them makes.
    if count * itemsize != nbytes or nonzero * max(itemsize, 1) > _INTP_MAX:
        raise FormatError(
            "key %r: its %s header claims shape %s of %d-byte elements, but its data part holds %d bytes"
            % (key, what, shape, itemsize, nbytes)
        )


def _dtype_from(descr):
    """The numpy dtype a stored description names. The text is parsed as a literal, never run;
    anything it fails on is a FormatError, and dtypes holding Python objects (whose stored bytes
    would be dereferenced as pointers) or sub-array dtypes (which put_array never writes) are
    refused."""
    dtype = _dtype_cache.get(descr)
    if dtype is None:
        try:
            dtype = np.lib.format.descr_to_dtype(ast.literal_eval(descr.decode("ascii")))
        except Exception as e:  # untrusted text: whatever the parsers raise means "not a dtype"
            raise FormatError("not a zcopy array: its dtype %r is not one (%s)" % (descr[:80], type(e).__name__)) from None
        if dtype.hasobject:
            raise FormatError("not a zcopy array: its dtype %s holds Python objects" % dtype)
        if dtype.subdtype is not None:
            raise FormatError("not a zcopy array: its dtype %s is a sub-array dtype" % dtype)
        if len(_dtype_cache) < _CACHE_LIMIT:
            _dtype_cache[descr] = dtype
    return dtype


_Sizes2 = ctypes.c_size_t * 2
# Every two-part object's header is exactly 64 bytes: the fixed fields and two entries.
_TWO_PARTS = struct.Struct("<8sHHIIIQQQQQ")
_array_heads = {}
_zc_create_parts = lib.zc_create_parts
_zc_data = lib.zc_buffer_data
_zc_seal = lib.zc_seal
_zc_release = lib.zc_release


def _array_head(dtype, shape):
    """The header part of an array of `dtype` and `shape` (cached: arrays repeat their shapes)."""
    head = _array_heads.get((dtype, shape))
    if head is None:
        descr = repr(np.lib.format.dtype_to_descr(dtype)).encode("ascii")
        head = _encode_shape_header(ARRAY_MAGIC, descr, shape)
        if len(_array_heads) < _CACHE_LIMIT:
            _array_heads[(dtype, shape)] = head
    return head


def _array_at(owner, address, dtype, shape, readonly):
    """An ndarray of `dtype`/`shape` over pool memory at `address`, whose base is `owner` (which
    must keep the memory alive for as long as the array lives)."""
    if dtype.fields is None and dtype.subdtype is None:
        owner.__array_interface__ = {"data": (address, readonly), "shape": shape, "typestr": dtype.str, "version": 3}
        return _asarray(owner)
    nbytes = dtype.itemsize
    for d in shape:
        nbytes *= d
    return _asarray(_Span(owner, address, nbytes, readonly)).view(dtype).reshape(shape)


class _Scratch:
    """The base of a view that never leaves `put_array` (its buffer is released there)."""

    __slots__ = ("__array_interface__",)


def put_array(pool, key, arr):
    """Stores a numpy array: dtype, shape and byte order in a header part, the data in its own
    aligned part, copied exactly once (a non-contiguous array is made contiguous by that copy).
    Object dtypes are refused: their elements are pointers, not data."""
    if type(arr) is not np.ndarray:
        arr = np.asarray(arr)
    dtype = arr.dtype
    if dtype.hasobject:
        raise InvalidArgumentError("arrays of Python objects (dtype %s) cannot be stored; use put_object" % dtype)
    head = _array_head(dtype, arr.shape)
    k = key if type(key) is bytes else _key(key)
    out = _c_void_p()
    status = _zc_create_parts(pool._p(), k, len(k), _Sizes2(len(head), arr.nbytes), 2, _byref(out))
    if status:
        pool._create_failed(status, _parts_total((len(head), arr.nbytes)))
    ptr = out.value
    # Released below whatever happens: an unsealed object is aborted by its release.
    try:
        address = _zc_data(ptr)
        fields = _TWO_PARTS.unpack(_string_at(address, _TWO_PARTS.size))
        head_at, data_at = fields[7], fields[9]
        ctypes.memmove(address + head_at, head, len(head))
        if arr.nbytes:
            np.copyto(_array_at(_Scratch(), address + data_at, dtype, arr.shape, False), arr, casting="no")
        status = _zc_seal(ptr)
        if status:
            _raise(status)
    finally:
        _zc_release(ptr)


# Parsed layouts of array objects, by the bytes their layout depends on and their size (see
# _layout_key): an array read again, or one of the same dtype and shape, is found without
# parsing; its data never takes part, so values that differ only in their data share an entry.
# Every cached layout was checked against its size like any other.
_array_layouts = {}


_PART_SPANS = struct.Struct("<QQQ")  # part 0's offset and length, part 1's offset (docs/FORMAT.md)


def _layout_key(head):
    """The leading bytes that the layout of a two-part object starting with `head` depends on:
    its parts table and its header part, up to its data part, never the data. None when `head`
    does not hold all of them, or the header part does not lie before the data part (such an
    object is parsed on every read)."""
    if len(head) < _PEEK or head[:8] != PARTS_MAGIC:
        return None
    head_at, head_len, data_at = _PART_SPANS.unpack_from(head, 32)
    if head_at + head_len <= data_at <= len(head):
        return head[:data_at]
    return None


def _two_part_layout(address, size, head, key, magic, what):
    """(data offset, data length, name, shape) of a two-part
    object (a shape header part, then the data part) at `address`: the parts table and the
    header checked against the object's `size`. `head` is its first bytes, already copied out."""
    parts = _layout_in_memory(address, size, what, head if len(head) >= _PEEK else None)
    if len(parts) != 2:
        raise FormatError("key %r does not hold a zcopy %s (%d parts)" % (key, what, len(parts)))
    (head_at, head_len), (data_at, data_len) = parts
    if head_at + head_len <= len(head):
        raw = head[head_at : head_at + head_len]
    else:
        raw = ctypes.string_at(address + head_at, head_len)
    name, shape = _decode_shape_header(raw, magic, what)
    return data_at, data_len, name, shape


def _array_layout(address, size, head, key):
    """(data offset, data length, dtype, shape) of the array object at `address`, parsed and
    checked: the parts lie inside the `size` bytes and the dtype and shape fill the data part."""
    data_at, data_len, descr, shape = _two_part_layout(address, size, head, key, ARRAY_MAGIC, "array")
    dtype = _dtype_from(descr)
    shape = tuple(shape)
    _check_shape(shape, dtype.itemsize, data_len, "array", key)
    layout = (data_at, data_len, dtype, shape)
    cached = _layout_key(head)
    if cached is not None and len(_array_layouts) < _CACHE_LIMIT:
        _array_layouts[(cached, size)] = layout
    return layout


class _ArrayHandle(_Handle):
    """The handle under an array from `get_array`. numpy makes the array from the capsule in its
    `__array_struct__` (numpy 2 keeps that capsule beside the handle as the array's base:
    `array.base == (handle, capsule)`); `struct` holds the memory the capsule points into, so
    that it outlives every array the handle is under, whatever the cache of them drops (see
    _array_structs)."""

    __slots__ = ("__array_struct__", "struct")


# numpy's array interface struct (PyArrayInterface, the C side of `__array_struct__`): two, nd,
# typekind, itemsize, flags, shape, strides, data, descr; the shape (npy_intp each) follows it.
_INTERFACE = struct.Struct("@iiciiPPPP")
_INTERFACE_SHAPES = [struct.Struct("@iiciiPPPP%dn" % n) for n in range(_MAX_NDIM + 1)]
# NPY_ARRAY_NOTSWAPPED | NPY_ARR_HAS_DESCR, without NPY_ARRAY_WRITEABLE: read-only, the dtype
# (descr) given as the dtype object itself (numpy takes whatever np.dtype() does), so numpy
# neither parses a type string nor writes to the struct. No strides: C order, and numpy works
# out contiguity and alignment itself.
_INTERFACE_FLAGS = 0x0200 | 0x0800
_addressof = ctypes.addressof
# CPython's own capsule constructor (the package counts on CPython already: releases follow
# reference counts).
_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
# (capsule, memory, dtype, meta) of the arrays read, by the address and size of the object read
# (see _array_struct): a get at the same place whose bytes start with `meta` finds its capsule
# made. Cleared when full: arrays keep their own entry through their handle.
_array_structs = {}


def _array_struct(layout, data, meta):
    """(capsule, memory, dtype, meta): the array interface of an array of `layout` (as
    _array_layout answers it) whose data is at address `data`, in a capsule, and the bytes
    before the data part the layout was found in (`meta`, None when not cached)."""
    dtype, shape = layout[2], layout[3]
    ndim = len(shape)
    pack = _INTERFACE_SHAPES[ndim]
    memory = (ctypes.c_char * pack.size)()
    at = _addressof(memory)
    # The descr pointer is the dtype object's address (its id in CPython): the entry holds the
    # dtype with the memory, wherever it is.
    pack.pack_into(
        memory, 0, 2, ndim, dtype.kind.encode("ascii"), dtype.itemsize, _INTERFACE_FLAGS,
        at + _INTERFACE.size if ndim else 0, 0, data, id(dtype), *shape,
    )
    return _capsule_new(at, None, None), memory, dtype, meta


def get_array(pool, key, timeout=None):
    """The array stored under `key`, read-only, over the pool's bytes (no copy). It keeps the
    object alive; the object is released when the array and every view of it are gone. Raises
    FormatError when the bytes under `key` are not an array whose dtype and shape fill its data."""
    # _get_view and _layout_key written out: their calls were a tenth of the time of a get.
    k = key.encode("utf-8") if type(key) is str else key if type(key) is bytes else _key(key)
    view = _View()
    ptr = pool._ptr
    if ptr is None:
        pool._p()
    status = _zc_get_view(ptr, k, len(k), 0 if timeout is None else _timeout_ms(timeout), view)
    if status:
        _raise(status)
    buffer, address, size, head = _VIEW.unpack_from(view)
    handle = _ArrayHandle(buffer)
    # An object read before at this address and size, whose bytes start with the same bytes
    # before the data part (its parts table included, so the data part starts at the same
    # place): the same layout, the same capsule.
    entry = _array_structs.get((address, size))
    if entry is None or not head.startswith(entry[3]):
        head_at, head_len, data_at = _PART_SPANS.unpack_from(head, 32)
        # The bytes before the data part, when they are all copied out and are the object's
        # own (not the padding after a smaller one): what the layout depends on. Bytes without
        # the ZCPARTS magic miss like any others: every key cached starts with it.
        meta = head[:data_at] if head_at + head_len <= data_at <= size and data_at <= _VIEW_HEAD else None
        layout = _array_layouts.get((meta, size)) if meta is not None else None
        if layout is None:
            layout = _array_layout(address, size, head if size >= _VIEW_HEAD else head[:size], key)
        if not layout[1]:  # no bytes to share
            empty = np.empty(layout[3], layout[2])
            empty.flags.writeable = False
            return empty
        entry = _array_struct(layout, address + layout[0], meta)
        if meta is not None:
            if len(_array_structs) >= _CACHE_LIMIT:
                _array_structs.clear()
            _array_structs[(address, size)] = entry
    handle.struct = entry
    handle.__array_struct__ = entry[0]
    return _asarray(handle)


def _torch():
    import torch  # noqa: PLC0415 - optional dependency

    return torch


def _check_storable_tensor(torch, tensor):
    """Refuses what put_tensor cannot store as dtype, shape and bytes: non-tensors, nested,
    sparse and non-CPU tensors."""
    if not isinstance(tensor, torch.Tensor):
        raise InvalidArgumentError("put_tensor takes a torch.Tensor, not %s" % type(tensor).__name__)
    if getattr(tensor, "is_nested", False):
        raise InvalidArgumentError("nested (jagged) tensors cannot be stored: store each component")
    if tensor.layout != torch.strided:
        raise InvalidArgumentError("only dense (strided) tensors can be stored, not %s" % tensor.layout)
    if tensor.device.type != "cpu":
        raise InvalidArgumentError("only CPU tensors can be stored, not %s ones" % tensor.device)


def put_tensor(pool, key, tensor):
    """Stores a CPU tensor like `put_array` (dtype name and shape in the header part, the data in
    its own part, copied once). Nested, sparse and non-CPU tensors are refused."""
    torch = _torch()
    _check_storable_tensor(torch, tensor)
    tensor = tensor.detach()
    name = str(tensor.dtype).replace("torch.", "").encode("ascii")
    head = _encode_shape_header(TENSOR_MAGIC, name, tuple(tensor.shape))
    nbytes = tensor.numel() * tensor.element_size()
    buf = pool.create_parts(key, (len(head), nbytes))
    try:
        address, _ = buf.part_range(0)
        ctypes.memmove(address, head, len(head))
        if nbytes:
            dst = torch.from_numpy(buf.part(1)).view(tensor.dtype).view(tensor.shape)
            dst.copy_(tensor)
        buf.seal()
    finally:
        buf.release()


# torch dtypes that numpy has too, as the array interface's typestr (stored little-endian).
TENSOR_TYPESTR = {
    "torch.float32": "<f4", "torch.float64": "<f8", "torch.float16": "<f2", "torch.int8": "|i1",
    "torch.uint8": "|u1", "torch.int16": "<i2", "torch.uint16": "<u2", "torch.int32": "<i4",
    "torch.uint32": "<u4", "torch.int64": "<i8", "torch.uint64": "<u8", "torch.bool": "|b1",
}
_tensor_layouts = {}


def _tensor_layout(torch, address, size, head, key):
    """(data offset, torch dtype, shape, data bytes, numpy typestr or None) of the zcopy tensor
    object at `address`, parsed and checked like an array's (see _array_layout), and cached like one
    (see _layout_key)."""
    data_at, nbytes, name, shape = _two_part_layout(address, size, head, key, TENSOR_MAGIC, "tensor")
    dtype = _torch_dtype(torch, name)
    itemsize = getattr(dtype, "itemsize", None) or torch.empty((), dtype=dtype).element_size()
    _check_shape(shape, itemsize, nbytes, "tensor", key)
    layout = (data_at, dtype, tuple(shape), nbytes, TENSOR_TYPESTR.get(str(dtype)))
    cached = _layout_key(head)
    if cached is not None and len(_tensor_layouts) < _CACHE_LIMIT:
        _tensor_layouts[(cached, size)] = layout
    return layout


def _tensor_from(torch, owner, address, layout):
    """The tensor of `layout` over the object's bytes at `address`, `owner` (which keeps them
    alive) its numpy base. The numpy view is writable only as the way in: torch has no read-only
    tensors, and warns about read-only arrays (silencing that warning costs more than the rest
    of a get); the bytes are sealed all the same."""
    data_at, dtype, shape, nbytes, typestr = layout
    if not nbytes:
        return torch.empty(shape, dtype=dtype)
    if typestr is not None:
        owner.__array_interface__ = {"data": (address + data_at, False), "shape": shape, "typestr": typestr, "version": 3}
        return torch.from_numpy(_asarray(owner))
    raw = torch.from_numpy(_asarray(_Span(owner, address + data_at, nbytes, False)))
    return (raw if dtype == torch.uint8 else raw.view(dtype)).view(shape)


def get_tensor(pool, key, timeout=None):
    """The tensor stored under `key`, over the pool's bytes (no copy). torch has no read-only
    tensors: do not write to it (the object is sealed)."""
    torch = _torch()
    handle, address, size, head = _get_view(pool, key, timeout)
    layout = _tensor_layouts.get((_layout_key(head), size))
    if layout is None:
        layout = _tensor_layout(torch, address, size, head, key)
    return _tensor_from(torch, handle, address, layout)


def _torch_dtype(torch, name):
    """The torch dtype a stored name names (the name is looked up, never run)."""
    try:
        text = name.decode("ascii")
    except UnicodeDecodeError:
        text = None
    dtype = getattr(torch, text, None) if text and text.isidentifier() and not text.startswith("_") else None
    if not isinstance(dtype, torch.dtype):
        raise FormatError("not a zcopy tensor: its dtype name %r is not a torch dtype" % name[:80])
    return dtype


def put_object(pool, key, obj):
    """Pickles `obj` with protocol 5: every out-of-band buffer (numpy arrays, tensors,
    bytearrays) goes in its own aligned part, copied once; the rest of the pickle in another."""
    buffers = []

    def out_of_band(pb):
        try:
            buffers.append(pb.raw())
        except BufferError:  # not contiguous: pickle it in-band
            return True
        return False

    stream = pickle.dumps(obj, protocol=5, buffer_callback=out_of_band)
    sizes = [len(OBJECT_MAGIC), len(stream)] + [m.nbytes for m in buffers]
    buf = pool.create_parts(key, sizes)
    try:
        address, _ = buf.part_range(0)
        ctypes.memmove(address, OBJECT_MAGIC, len(OBJECT_MAGIC))
        address, _ = buf.part_range(1)
        ctypes.memmove(address, stream, len(stream))
        for i, m in enumerate(buffers):
            if m.nbytes:
                buf.part(2 + i)[:] = np.frombuffer(m, dtype=np.uint8)
        buf.seal()
    finally:
        buf.release()


def _release_now(handle):
    """Releases the handle of a refused get at once: no view of it exists yet."""
    ptr = handle.ptr
    handle.forget()
    _zc_release(ptr)


def _parts_of_view(handle, address, size, head, what):
    """[(offset, length)] of the multi-part object a get just viewed, from its copied head (and
    the rest of its table in place); a refusal releases the handle before it raises."""
    try:
        return _layout_in_memory(address, size, what, head if len(head) >= _PEEK else None)
    except BaseException:
        _release_now(handle)
        raise


def get_object(pool, key, timeout=None):
    """The object stored by `put_object`. Its out-of-band buffers come back as read-only views of
    the pool's bytes: numpy arrays (and tensors rebuilt from them) share the pool's memory."""
    handle, address, size, head = _get_view(pool, key, timeout)
    parts = _parts_of_view(handle, address, size, head, "pickled object")
    if len(parts) < 2 or _string_at(address + parts[0][0], parts[0][1]) != OBJECT_MAGIC:
        _release_now(handle)
        raise FormatError("key %r does not hold a zcopy pickled object (%d parts)" % (key, len(parts)))
    stream = memoryview(_view(handle, address + parts[1][0], parts[1][1], True))
    buffers = [memoryview(_view(handle, address + at, n, True)) for at, n in parts[2:]]
    try:
        return pickle.loads(stream, buffers=buffers)
    except pickle.UnpicklingError as e:
        raise FormatError("key %r: its pickle stream is damaged or asks for buffers it does not hold (%s)" % (key, e)) from None


def get_parts(pool, key, timeout=None):
    """The parts of the multi-part object under `key` (made by `create_parts`, or a plain object
    holding the bytes of docs/FORMAT.md), as read-only uint8 arrays over the pool's bytes."""
    handle, address, size, head = _get_view(pool, key, timeout)
    return [_view(handle, address + at, n, True) for at, n in _parts_of_view(handle, address, size, head, "multi-part object")]


def parse_parts(data):
    """[(offset, length)] of the parts of a multi-part object given as raw bytes (for example
    the target of an RDMA READ), after checking its header as docs/FORMAT.md says."""
    view = memoryview(data).cast("B")
    return _parts_of(view, view.nbytes)


Pool.put_array = put_array
Pool.get_array = get_array
Pool.put_tensor = put_tensor
Pool.get_tensor = get_tensor
Pool.put_object = put_object
Pool.get_object = get_object
Pool.get_parts = get_parts
Buffer.__module__ = "zcopy"
Pool.__module__ = "zcopy"
