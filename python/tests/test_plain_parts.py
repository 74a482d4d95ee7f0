"""A plain buffer holding the bytes of docs/FORMAT.md (a value that arrived by a transfer) reads
back through every getter, and a plain buffer whose header lies is refused."""

import gc
import struct

import numpy as np
import pytest

import zcopy


@pytest.fixture
def pool():
    p = zcopy.Pool(8 << 20, rdma="off", pages="small", prefault=False)
    yield p
    p.close()


def _copy_as_plain(pool, src_key, dst_key):
    raw = pool.get_bytes(src_key)
    buf = pool.create(dst_key, len(raw))
    buf.array()[:] = np.frombuffer(raw, np.uint8)
    buf.seal()
    buf.release()
    return raw


def test_plain_buffer_holding_a_pickled_object_reads_back_in_place(pool):
    obj = {"a": np.arange(1000, dtype=np.float64), "s": "text", "b": bytearray(b"xyz")}
    pool.put_object("o", obj)
    _copy_as_plain(pool, "o", "plain")
    got = pool.get_object("plain")
    assert got["s"] == "text" and bytes(got["b"]) == b"xyz"
    np.testing.assert_array_equal(got["a"], obj["a"])
    assert not got["a"].flags.writeable
    base, length = pool.region()
    assert base <= got["a"].ctypes.data < base + length  # a view of the pool, not a copy


def test_get_parts_is_the_same_for_a_parts_object_and_its_plain_copy(pool):
    buf = pool.create_parts("p", [3, 0, 100])
    for i, fill in ((0, 1), (2, 7)):
        buf.part(i)[:] = fill
    buf.seal()
    buf.release()
    _copy_as_plain(pool, "p", "plain")
    for key in ("p", "plain"):
        parts = pool.get_parts(key)
        assert [p.nbytes for p in parts] == [3, 0, 100]
        assert parts[0].tolist() == [1, 1, 1] and set(parts[2].tolist()) == {7}
        assert not any(p.flags.writeable for p in parts)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"x" * 31,
        b"ZCPARTS\0" + b"\x02\x00\x00\x00",  # version 2, cut short
        # one part claimed at offset 64 + 1000 bytes in a 128-byte buffer
        struct.pack("<8sHHIIIQQQ", b"ZCPARTS\0", 1, 0, 1, 64, 0, 128, 64, 1000) + b"\0" * 80,
        # header length larger than the buffer
        struct.pack("<8sHHIIIQ", b"ZCPARTS\0", 1, 0, 2, 4096, 0, 64) + b"\0" * 32,
    ],
)
def test_plain_buffer_with_a_lying_header_is_refused_and_released(pool, raw):
    before = pool.stats()["object_count"]
    buf = pool.create("bad", len(raw))
    if raw:
        buf.array()[:] = np.frombuffer(raw, np.uint8)
    buf.seal()
    buf.release()
    for get in (pool.get_object, pool.get_parts):
        with pytest.raises(zcopy.InvalidArgumentError):
            get("bad")
    pool.delete("bad")
    gc.collect()
    assert pool.stats()["object_count"] == before
