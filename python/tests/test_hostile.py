"""Stored bytes are claims, not facts: any writer (a C program, a store client, an RDMA peer) can
put bytes that look like a zcopy array, tensor or object and lie about their shape, dtype or part
layout. Every read must either return a view that lies wholly inside the object's bytes or raise
zcopy.FormatError; it must never return a larger view, and the pool must keep working."""

import gc
import pickle
import random
import struct

import numpy as np
import pytest

import zcopy

PARTS_MAGIC = b"ZCPARTS\0"
ARRAY_MAGIC = b"ZCARRAY\0"
TENSOR_MAGIC = b"ZCTENSR\0"
OBJECT_MAGIC = b"ZCPICKL\0"


def round64(n):
    return (n + 63) // 64 * 64


def parts_bytes(parts, offsets=None, count=None, header_len=None, total=None):
    """A ZCPARTS object holding `parts` (bytes each), laid out as docs/FORMAT.md says, with any
    field overridable to lie."""
    n = len(parts)
    hlen = round64(32 + 16 * n)
    at, table, body = hlen, [], b""
    for p in parts:
        table.append((at, len(p)))
        body += p + bytes(round64(len(p)) - len(p))
        at = round64(at + len(p))
    if offsets is not None:
        table = offsets
    count = n if count is None else count
    header_len = hlen if header_len is None else header_len
    total = at if total is None else total
    raw = PARTS_MAGIC + struct.pack("<HHIIIQ", 1, 0, count, header_len, 0, total)
    for off, length in table:
        raw += struct.pack("<QQ", off, length)
    raw += bytes(hlen - len(raw))
    return raw + body


def shape_head(magic, name, shape, ndim=None):
    ndim = len(shape) if ndim is None else ndim
    return magic + struct.pack("<HH", len(name), ndim) + name + struct.pack("<%dq" % len(shape), *shape)


def array_object(descr, shape, data, ndim=None):
    return parts_bytes([shape_head(ARRAY_MAGIC, descr, shape, ndim), data])


@pytest.fixture
def stored(pool):
    """Puts a few honest values; calling the result checks they and the pool still work."""
    arr = np.arange(1000, dtype=np.float64)
    pool.put_array("keep-array", arr)
    pool.put("keep-bytes", b"precious bytes")
    pool.put_object("keep-object", {"x": np.arange(10), "s": "text"})

    def check():
        gc.collect()
        assert np.array_equal(pool.get_array("keep-array"), arr)
        assert pool.get_bytes("keep-bytes") == b"precious bytes"
        obj = pool.get_object("keep-object")
        assert np.array_equal(obj["x"], np.arange(10)) and obj["s"] == "text"
        pool.put_array("after", np.arange(7, dtype=np.int16))
        assert pool.get_array("after").tolist() == list(range(7))
        pool.delete("after")

    return check


def refused(pool, raw, read="get_array", key="hostile"):
    """Puts `raw` with a plain put, reads it back with `read`, and returns the FormatError."""
    pool.put(key, raw)
    with pytest.raises(zcopy.FormatError) as info:
        getattr(pool, read)(key)
    err = info.value
    assert isinstance(err, zcopy.InvalidArgumentError) and isinstance(err, ValueError)
    assert str(err)
    pool.delete(key)
    return err


DATA64 = bytes(range(64))


@pytest.mark.parametrize(
    "shape",
    [(131072,), (1 << 40,), (1 << 61,), (1 << 62, 4), (1 << 32, 1 << 32, 1 << 32), (9,), (7,), (2, 5)],
    ids=["1MiB", "1TiB", "2^64-bytes", "product-past-int64", "product-2^96", "one-too-many", "one-too-few", "2x5"],
)
def test_get_array_refuses_shape_that_does_not_match_the_data_part(pool, stored, shape):
    err = refused(pool, array_object(b"'<f8'", shape, DATA64))
    assert "64" in str(err)
    stored()


@pytest.mark.parametrize("shape", [(-1,), (-8, -1), (8, -1, -1), (-(1 << 63),)], ids=["-1", "-8x-1", "8x-1x-1", "int64-min"])
def test_get_array_refuses_negative_dimensions(pool, stored, shape):
    refused(pool, array_object(b"'<f8'", shape, DATA64))
    stored()


def test_get_array_refuses_shape_of_2_to_40_over_an_empty_data_part(pool, stored):
    # No data bytes at all: the old path made np.empty(shape) of a size the header chose.
    refused(pool, array_object(b"'<f8'", (1 << 40,), b""))
    refused(pool, array_object(b"'|u1'", (1 << 62, 1 << 62), b""))
    stored()


@pytest.mark.parametrize(
    "descr",
    [b"'|O'", b"[('a', '<i8'), ('b', '|O')]", b"'<f8\xff'", b"'not a dtype'", b"__import__('os')", b"((((", b"", b"'|V0'"],
    ids=["object", "struct-with-object", "non-ascii", "unknown", "call", "syntax", "empty", "void0-count-mismatch"],
)
def test_get_array_refuses_hostile_dtype_descriptions(pool, stored, descr):
    # Object dtypes would turn stored bytes into pointers that numpy dereferences.
    refused(pool, array_object(descr, (8,), DATA64))
    stored()


def test_get_array_refuses_header_whose_shape_runs_past_its_part(pool, stored):
    refused(pool, array_object(b"'<f8'", (8,), DATA64, ndim=5))
    refused(pool, array_object(b"'<f8'", (8,), DATA64, ndim=65535))
    head = shape_head(ARRAY_MAGIC, b"'<f8'", (8,))
    long_name = head[:8] + struct.pack("<HH", 60000, 1) + head[12:]
    refused(pool, parts_bytes([long_name, DATA64]))
    refused(pool, parts_bytes([ARRAY_MAGIC + b"\x04", DATA64]))
    stored()


def test_get_array_refuses_lying_part_offsets_and_lengths(pool, stored):
    head = shape_head(ARRAY_MAGIC, b"'<f8'", (8,))
    good = parts_bytes([head, DATA64])
    size = len(good)
    assert zcopy.parse_parts(good) == [(64, len(head)), (128, 64)] and size == 192
    for offsets in (
        [(64, len(head)), (128, 1 << 20)],  # data part length past the end
        [(64, len(head)), (128, 65)],
        [(64, len(head)), (size, 64)],  # data part starting at the end
        [(64, len(head)), (1 << 40, 64)],
        [(64, len(head)), ((1 << 64) - 64, 64)],  # offset + length wraps 64 bits
        [(64, len(head)), (128, (1 << 64) - 1)],
        [(64, 1 << 20), (128, 64)],  # header part past the end
        [(64, len(head)), (0, 64)],  # data part over the parts table
        [(64, len(head)), (129, 64)],  # unaligned
    ):
        bad = parts_bytes([head, DATA64], offsets=offsets)
        refused(pool, bad)
        with pytest.raises(zcopy.FormatError):
            zcopy.parse_parts(bad)
    stored()


def test_get_array_refuses_part_count_larger_than_the_buffer(pool, stored):
    good = array_object(b"'<f8'", (8,), DATA64)
    for count in (3, 1000, 65536, 65537, (1 << 32) - 1):
        bad = good[:12] + struct.pack("<I", count) + good[16:]
        refused(pool, bad)
        with pytest.raises(zcopy.FormatError):
            zcopy.parse_parts(bad)
    stored()


def test_get_array_refuses_header_length_and_total_past_the_buffer(pool, stored):
    head = shape_head(ARRAY_MAGIC, b"'<f8'", (8,))
    for fields in ({"header_len": 1 << 20}, {"header_len": 64 * 1000}, {"total": 1 << 40}, {"header_len": 65}):
        refused(pool, parts_bytes([head, DATA64], **fields))
    stored()


def test_get_array_refuses_truncated_encodings(pool, stored):
    good = array_object(b"'<i4'", (4, 4), DATA64)
    assert len(good) == 192
    for n in (191, 128, 129, 127, 64, 31, 8, 1):
        refused(pool, good[:n])
    stored()


def laid_out(total, table, placed):
    """`total` bytes: a ZCPARTS header with this part table, and `placed` [(offset, bytes)]."""
    raw = bytearray(total)
    hlen = round64(32 + 16 * len(table))
    raw[:32] = PARTS_MAGIC + struct.pack("<HHIIIQ", 1, 0, len(table), hlen, 0, total)
    for i, (off, length) in enumerate(table):
        struct.pack_into("<QQ", raw, 32 + 16 * i, off, length)
    for at, data in placed:
        raw[at : at + len(data)] = data
    return bytes(raw)


def test_layout_cache_is_not_reused_for_an_object_whose_header_part_lies_past_the_cached_prefix(pool, stored):
    # A layout is cached by the object's size and its bytes up to its data part. These two
    # objects share their first 256 bytes and their size, but their header parts (at 320, past
    # the data part's offset and the copied head) differ: the second's shape is a lie.
    honest = shape_head(ARRAY_MAGIC, b"'<f8'", (0,))
    lying = shape_head(ARRAY_MAGIC, b"'<f8'", (1 << 40,))
    assert len(honest) == len(lying)
    table = [(320, len(honest)), (128, 0)]
    a = laid_out(384, table, [(320, honest)])
    b = laid_out(384, table, [(320, lying)])
    assert a[:256] == b[:256] and a != b
    assert zcopy.parse_parts(a) == zcopy.parse_parts(b) == table
    pool.put("honest", a)
    assert pool.get_array("honest").shape == (0,)
    assert pool.get_array("honest").shape == (0,)
    refused(pool, b)
    stored()


def test_honest_arrays_of_every_kind_still_read_back(pool):
    values = {
        "f8": np.arange(8, dtype=np.float64),
        "empty": np.zeros((0, 3), dtype=np.int32),
        "scalar": np.array(2.5),
        "struct": np.zeros(4, dtype=[("a", "<i4"), ("b", ">f8"), ("c", "S3"), ("d", "<f4", (2,))]),
        "big-endian": np.arange(6, dtype=">u2").reshape(2, 3),
        "void": np.zeros(3, dtype="V5"),
        "3d": np.arange(24, dtype=np.int8).reshape(2, 3, 4),
    }
    for key, value in values.items():
        pool.put_array(key, value)
        for _ in range(2):  # parsed, then from the layout cache
            got = pool.get_array(key)
            assert got.dtype == value.dtype and got.shape == value.shape
            assert got.tobytes() == value.tobytes()


def test_parse_parts_refuses_more_parts_than_the_format_allows(pool):
    n = 65537
    hlen = round64(32 + 16 * n)
    raw = PARTS_MAGIC + struct.pack("<HHIIIQ", 1, 0, n, hlen, 0, hlen) + struct.pack("<QQ", hlen, 0) * n
    raw += bytes(hlen - len(raw))
    with pytest.raises(zcopy.FormatError):
        zcopy.parse_parts(raw)


def test_get_object_reads_plain_bytes_holding_an_honest_pickled_object(pool, stored):
    # A value that arrived into a plain buffer (a transfer, an RDMA WRITE) is read from its bytes.
    stream = pickle.dumps({"a": 1}, protocol=5)
    pool.put("plain-object", parts_bytes([OBJECT_MAGIC, stream]))
    assert pool.get_object("plain-object") == {"a": 1}
    stored()


def test_get_object_refuses_plain_bytes_with_a_lying_part_table(pool, stored):
    stream = pickle.dumps({"a": 1}, protocol=5)
    raw = bytearray(parts_bytes([OBJECT_MAGIC, stream]))
    struct.pack_into("<Q", raw, 32 + 16 + 8, 1 << 20)  # part 1's length: 1 MiB in a small object
    refused(pool, bytes(raw), read="get_object")
    stored()


def test_get_object_refuses_wrong_magic_and_missing_out_of_band_buffers(pool, stored):
    buf = pool.create_parts("wrong-magic", [8, 4])
    buf.part(0)[:] = np.frombuffer(b"ZCPICKX\0", np.uint8)
    buf.seal()
    buf.release()
    with pytest.raises(zcopy.FormatError):
        pool.get_object("wrong-magic")

    buffers = []
    stream = pickle.dumps(pickle.PickleBuffer(np.arange(4, dtype=np.int64)), protocol=5, buffer_callback=buffers.append)
    assert len(buffers) == 1
    buf = pool.create_parts("no-buffers", [len(OBJECT_MAGIC), len(stream)])  # the buffer's part left out
    buf.part(0)[:] = np.frombuffer(OBJECT_MAGIC, np.uint8)
    buf.part(1)[:] = np.frombuffer(stream, np.uint8)
    buf.seal()
    buf.release()
    with pytest.raises(zcopy.FormatError):
        pool.get_object("no-buffers")
    stored()


def test_plain_object_has_no_parts_and_asking_for_one_is_refused(pool, stored):
    pool.put("plain", array_object(b"'<f8'", (8,), DATA64))
    buf = pool.get("plain")
    assert buf.part_count == 0
    with pytest.raises(zcopy.InvalidArgumentError):
        buf.part(0)
    stored()


def test_get_tensor_refuses_lying_shape_and_non_dtype_names(pool, stored):
    torch = pytest.importorskip("torch")

    def tensor_object(key, name, shape, data):
        head = shape_head(TENSOR_MAGIC, name, shape)
        buf = pool.create_parts(key, [len(head), len(data)])
        buf.part(0)[:] = np.frombuffer(head, np.uint8)
        if data:
            buf.part(1)[:] = np.frombuffer(data, np.uint8)
        buf.seal()
        buf.release()

    cases = [
        (b"float32", (1 << 20,)),
        (b"float32", (1 << 40,)),
        (b"float32", (-1,)),
        (b"float32", (1 << 62, 4)),
        (b"load", (16,)),
        (b"__class__", (16,)),
        (b"float32\xff", (16,)),
    ]
    for i, (name, shape) in enumerate(cases):
        tensor_object("t%d" % i, name, shape, DATA64)
        with pytest.raises(zcopy.FormatError):
            pool.get_tensor("t%d" % i)
    tensor_object("ok", b"float32", (4, 4), DATA64)
    assert torch.equal(pool.get_tensor("ok"), torch.frombuffer(bytearray(DATA64), dtype=torch.float32).view(4, 4))
    # An honest tensor in a plain buffer (as a transfer leaves it) reads back; a lying one does not.
    pool.put("plain", parts_bytes([shape_head(TENSOR_MAGIC, b"float32", (16,)), DATA64]))
    assert torch.equal(pool.get_tensor("plain"), torch.frombuffer(bytearray(DATA64), dtype=torch.float32))
    pool.put("plain-lying", parts_bytes([shape_head(TENSOR_MAGIC, b"float32", (1 << 20,)), DATA64]))
    with pytest.raises(zcopy.FormatError):
        pool.get_tensor("plain-lying")
    stored()


# --- bounded fuzzing: random damage to honest encodings ------------------------------------------

INTERESTING = [0, 1, 2, 7, 8, 63, 64, 65, 127, 128, 192, 255, 256, 4096, 65535, 65536]
INTERESTING += [1 << 31, 1 << 32, 1 << 40, (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


def honest_encodings(pool):
    values = [
        np.arange(8, dtype=np.float64),
        np.arange(24, dtype=np.int16).reshape(2, 3, 4),
        np.zeros((0, 5), dtype=np.float32),
        np.array(3.25),
        np.zeros(3, dtype=[("a", "<i4"), ("b", ">f8")]),
        np.arange(100, dtype=np.uint8),
    ]
    out = []
    for i, v in enumerate(values):
        pool.put_array("seed%d" % i, v)
        out.append(pool.get_bytes("seed%d" % i))
        pool.delete("seed%d" % i)
    return out


def mutate(rng, raw):
    b = bytearray(raw)
    for _ in range(rng.randint(1, 4)):
        kind = rng.random()
        if kind < 0.35 and b:
            b[rng.randrange(min(len(b), 256))] = rng.randrange(256)
        elif kind < 0.8 and len(b) >= 8:
            fmt = rng.choice("<Q <q <I <H".split())
            width = struct.calcsize(fmt)
            if rng.random() < 0.5:
                at = rng.randrange(0, min(len(b), 256) - width + 1)
            else:  # a field of the part table
                at = rng.choice([12, 16, 24, 32, 40, 48, 56])
            if at + width > len(b):
                continue
            value = rng.choice(INTERESTING + [len(b), len(b) - 64, len(b) + 64, rng.randrange(1 << 16)])
            if fmt == "<q":
                value = rng.choice([-1, -(1 << 63), -8, value & ((1 << 63) - 1)])
            struct.pack_into(fmt, b, at, value & ((1 << (8 * width)) - 1) if fmt != "<q" else value)
        elif kind < 0.9:
            del b[rng.randrange(len(b) + 1) :]
        else:
            b += bytes(rng.randrange(1, 200))
    return bytes(b)


def test_fuzzed_encodings_give_views_inside_the_object_or_format_errors(pool, stored):
    rng = random.Random(20260812)
    seeds = honest_encodings(pool)
    outcomes = {"view": 0, "refused": 0}
    escapes = []
    for i in range(3000):
        raw = mutate(rng, rng.choice(seeds))
        if not raw:
            continue
        key = "fuzz%d" % (i % 7)
        pool.put(key, raw)
        with pool.get(key) as buf:
            base, size = buf.address, buf.size
        try:
            arr = pool.get_array(key)
        except zcopy.Error:
            outcomes["refused"] += 1
        else:
            outcomes["view"] += 1
            address, nbytes = arr.__array_interface__["data"][0], arr.nbytes
            if nbytes and not (base <= address and address + nbytes <= base + size):
                escapes.append("mutation %d: view at %d+%d, object at %d+%d" % (i, address - base, nbytes, 0, size))
            del arr
        try:
            parts = zcopy.parse_parts(raw)
        except zcopy.Error:
            pass
        else:
            for off, length in parts:
                if off + length > len(raw):
                    escapes.append("mutation %d: parse_parts gave %d+%d of %d bytes" % (i, off, length, len(raw)))
        pool.delete(key)
    assert escapes == []
    assert outcomes["view"] > 50 and outcomes["refused"] > 500, outcomes
    stored()
