"""put_array/get_array keep dtype, shape, byte order and values; refuse what is not an array."""

import gc

import numpy as np
import pytest

import zcopy


def same_array(got, want):
    assert got.dtype == want.dtype, (got.dtype, want.dtype)
    assert got.dtype.str == want.dtype.str  # byte order included
    assert got.shape == want.shape
    assert np.array_equal(got, want)


CASES = {
    "float16": np.linspace(-2, 2, 17, dtype=np.float16),
    "float32-2d": np.arange(24, dtype=np.float32).reshape(4, 6),
    "int64": np.array([np.iinfo(np.int64).min, -1, 0, 1, np.iinfo(np.int64).max], dtype=np.int64),
    "uint8-3d": (np.arange(60) % 256).astype(np.uint8).reshape(3, 4, 5),
    "bool": np.array([True, False, False, True, True]),
    "complex64": (np.arange(6) + 1j * np.arange(6)[::-1]).astype(np.complex64),
    "complex128": np.array([1 + 2j, -3.5 - 0j]),
    "big-endian-i4": np.arange(-5, 5, dtype=">i4"),
    "big-endian-f8": (np.arange(7) / 7).astype(">f8"),
    "little-endian-u2": np.arange(9, dtype="<u2"),
    "0-d-float": np.array(3.25),
    "0-d-big-endian": np.array(-7, dtype=">i4"),
    "empty-0x3": np.empty((0, 3), dtype=np.float32),
    "empty-1d": np.empty(0, dtype=np.int8),
    "structured": np.array([(1, 2.5), (3, -1.0)], dtype=[("a", "<i2"), ("b", ">f4")]),
    "bytes-S4": np.array([b"ab", b"cdef"], dtype="S4"),
    "unicode-U3": np.array(["x", "yz", "✓✓✓"]),
    "datetime64": np.array(["2024-01-01", "2025-06-30"], dtype="datetime64[D]"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_put_get_array_preserves_dtype_shape_byte_order_and_values(pool, in_pool, name):
    src = CASES[name]
    pool.put_array(name, src)
    got = pool.get_array(name)
    same_array(got, src)
    assert not got.flags.writeable
    if src.nbytes:
        assert in_pool(got.ctypes.data, got.nbytes)


def test_big_endian_array_stays_big_endian(pool):
    src = np.array([1, 256, -2], dtype=">i4")
    pool.put_array("be", src)
    got = pool.get_array("be")
    assert got.dtype.byteorder == ">"
    assert got.tolist() == [1, 256, -2]
    buf = pool.get("be")
    address, length = buf.part_range(1)
    assert length == 12
    assert bytes(buf.part(1)) == src.tobytes() == b"\x00\x00\x00\x01\x00\x00\x01\x00\xff\xff\xff\xfe"


def test_zero_d_array_round_trip(pool):
    pool.put_array("scalar", np.array(42, dtype=np.int64))
    got = pool.get_array("scalar")
    assert got.shape == () and got.ndim == 0
    assert got.dtype == np.int64
    assert int(got) == 42


def test_empty_array_with_shape_0_3(pool):
    pool.put_array("empty", np.zeros((0, 3), dtype=np.float64))
    got = pool.get_array("empty")
    assert got.shape == (0, 3)
    assert got.dtype == np.float64
    assert got.size == 0
    assert not got.flags.writeable


def test_fortran_ordered_input_round_trips(pool):
    src = np.asfortranarray(np.arange(20, dtype=np.int32).reshape(4, 5))
    assert src.flags.f_contiguous and not src.flags.c_contiguous
    pool.put_array("f", src)
    same_array(pool.get_array("f"), src)


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.arange(100, dtype=np.float64)[::3],
        lambda: np.arange(60, dtype=np.int16).reshape(6, 10)[1:5, ::2],
        lambda: np.arange(24, dtype=np.uint32).reshape(2, 3, 4).transpose(2, 0, 1),
        lambda: np.arange(10, dtype=np.float32)[::-1],
        lambda: np.broadcast_to(np.arange(3, dtype=np.int64), (4, 3)),
    ],
    ids=["step", "2d-slice", "transpose", "reversed", "broadcast"],
)
def test_sliced_and_strided_inputs_round_trip(pool, make):
    src = make()
    pool.put_array("s", src)
    got = pool.get_array("s")
    same_array(got, src)
    assert got.flags.c_contiguous


def test_put_array_copies_its_input(pool):
    src = np.arange(10, dtype=np.int64)
    pool.put_array("c", src)
    src[:] = -1
    assert pool.get_array("c").tolist() == list(range(10))


def test_put_array_accepts_lists_and_scalars(pool):
    pool.put_array("l", [[1, 2], [3, 4]])
    assert pool.get_array("l").tolist() == [[1, 2], [3, 4]]
    pool.put_array("x", 2.5)
    assert float(pool.get_array("x")) == 2.5


def test_object_dtype_refused_mentioning_put_object_and_nothing_stored(pool):
    before = pool.stats()
    with pytest.raises(zcopy.InvalidArgumentError) as info:
        pool.put_array("obj", np.array([1, "a", None], dtype=object))
    assert "put_object" in str(info.value)
    with pytest.raises(zcopy.InvalidArgumentError):
        pool.put_array("obj", np.zeros(2, dtype=[("a", "O"), ("b", "i4")]))
    assert "obj" not in pool
    after = pool.stats()
    assert (after["object_count"], after["used_bytes"]) == (before["object_count"], before["used_bytes"])
    pool.put_object("obj", np.array([1, "a", None], dtype=object))
    assert pool.get_object("obj").tolist() == [1, "a", None]


def test_get_array_on_plain_object_refused_without_leak(pool):
    pool.put("plain", b"not an array, just some bytes here")
    with pytest.raises(zcopy.InvalidArgumentError):
        pool.get_array("plain")
    pool.put("tiny", b"x")
    with pytest.raises(zcopy.InvalidArgumentError):
        pool.get_array("tiny")
    pool.delete("plain")
    pool.delete("tiny")
    gc.collect()
    assert pool.stats()["used_bytes"] == 0


def test_get_array_on_pickled_object_refused_without_leak(pool):
    pool.put_object("pickled", {"a": np.arange(4)})
    pool.put_object("pickled-plain", [1, 2, 3])
    for key in ("pickled", "pickled-plain"):
        with pytest.raises(zcopy.InvalidArgumentError):
            pool.get_array(key)
    assert pool.get_object("pickled-plain") == [1, 2, 3]
    pool.delete("pickled")
    pool.delete("pickled-plain")
    gc.collect()
    assert pool.stats()["used_bytes"] == 0


def test_get_array_on_raw_multi_part_object_refused(pool):
    buf = pool.create_parts("parts", [16, 16])
    buf.part(0)[:] = 0
    buf.part(1)[:] = 1
    buf.seal()
    with pytest.raises(zcopy.InvalidArgumentError):
        pool.get_array("parts")


def test_get_object_on_array_or_plain_key_refused(pool):
    pool.put_array("arr", np.arange(3))
    pool.put("plain", b"abc")
    for key in ("arr", "plain"):
        with pytest.raises(zcopy.InvalidArgumentError):
            pool.get_object(key)


def test_module_level_functions_match_methods(pool):
    zcopy.put_array(pool, "m", np.arange(5, dtype=np.int8))
    assert zcopy.get_array(pool, "m").tolist() == [0, 1, 2, 3, 4]
    zcopy.put_object(pool, "o", {"k": "v"})
    assert zcopy.get_object(pool, "o") == {"k": "v"}


@pytest.mark.parametrize("ndim", [20, 24, 25, 40, 64])
def test_array_whose_header_runs_past_the_bytes_a_get_copies_out_round_trips(pool, in_pool, ndim):
    # get_array parses the layout from the leading bytes zc_get_view copies out (256); a header
    # with many dimensions ends past them (64 + 15 + 8 * ndim bytes) and is read in place.
    src = np.arange(6, dtype="<i2").reshape((1,) * (ndim - 2) + (2, 3))
    pool.put_array("many-dims", src)
    for _ in range(2):  # the second read may come from the layout cache
        got = pool.get_array("many-dims")
        same_array(got, src)
        assert in_pool(got.ctypes.data, got.nbytes)
    del got
    pool.delete("many-dims")
    gc.collect()
    assert pool.stats()["used_bytes"] == 0


def test_get_array_of_objects_shorter_than_the_copied_head_reads_only_their_bytes(pool):
    # A 2-element int8 array's whole object is 192 bytes, less than the 256 copied out: the zero
    # padding after it must not be taken for bytes of the value.
    src = np.array([5, -5], dtype=np.int8)
    pool.put_array("small", src)
    got = pool.get_array("small")
    same_array(got, src)
    assert pool.get("small").size < 256


def test_arrays_that_differ_only_in_their_data_share_one_cached_layout_and_read_their_own_bytes(pool):
    # The layout cache is keyed by the bytes before the data part: values that differ only in
    # their data (the common case, and all of a 4 KiB array's first bytes after its header)
    # must neither each add an entry nor be read with another value's bytes.
    from zcopy import _objects

    _objects._array_layouts.clear()
    for i in range(50):
        pool.put_array("v%d" % i, np.full(1024, i, np.float32))
    for i in range(50):
        got = pool.get_array("v%d" % i)
        assert got.shape == (1024,) and got.dtype == np.float32
        assert float(got[0]) == float(got[-1]) == float(i)
    assert len(_objects._array_layouts) == 1
    pool.put_array("other", np.full((4, 256), 1, np.float32))
    assert pool.get_array("other").shape == (4, 256)
    assert len(_objects._array_layouts) == 2


def test_an_address_read_again_under_another_layout_gets_that_layout(pool):
    # get_array caches the interface numpy reads, which holds the data's address; an object
    # stored where another was, with another dtype and shape, must not be read as the first.
    first = np.arange(1024, dtype=np.float32)
    pool.put_array("first", first)
    got = pool.get_array("first")
    same_array(got, first)
    address = got.ctypes.data
    del got
    pool.delete("first")
    gc.collect()
    second = np.arange(2048, dtype=">i2").reshape(32, 64)
    pool.put_array("second", second)
    got = pool.get_array("second")
    assert got.ctypes.data == address  # the freed block again: same address, another layout
    same_array(got, second)


def test_arrays_keep_the_interface_they_were_made_from_when_its_cache_drops_it(pool, handle_under, monkeypatch):
    # The capsule under an array points into memory that the cache of them holds; the handle
    # holds it too, so that clearing the cache (at its limit) leaves the array's capsule valid.
    from zcopy import _objects

    monkeypatch.setattr(_objects, "_CACHE_LIMIT", 4)
    _objects._array_structs.clear()
    arrays = {}
    for i in range(12):
        pool.put_array("v%d" % i, np.full((3, 5), i, np.int32))
        arrays[i] = pool.get_array("v%d" % i)
    assert len(_objects._array_structs) <= 4
    for i, arr in arrays.items():
        again = np.asarray(handle_under(arr))  # numpy reads the capsule's memory once more
        assert again.shape == (3, 5) and again.dtype == np.int32 and not again.flags.writeable
        assert again.ctypes.data == arr.ctypes.data and np.all(again == i) and np.all(arr == i)


def test_get_array_results_are_read_only_and_cannot_be_made_writeable(pool):
    for name in ("float32-2d", "structured", "0-d-float"):
        pool.put_array(name, CASES[name])
        arr = pool.get_array(name)
        assert not arr.flags.writeable and arr.flags.c_contiguous
        with pytest.raises(ValueError):
            arr.flags.writeable = True
        same_array(arr, CASES[name])
