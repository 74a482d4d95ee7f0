"""Readers get the very bytes the writer wrote: same addresses, shared memory, inside the pool."""

import numpy as np


def pattern(n, seed=0):
    return ((np.arange(n, dtype=np.int64) * 31 + seed) % 251).astype(np.uint8)


def test_get_array_has_the_writers_address_and_shares_its_memory(pool):
    buf = pool.create("k", 4096)
    writable = buf.array()
    writable[:] = pattern(4096)
    writer_address = writable.ctypes.data
    buf.seal()

    reader = pool.get("k")
    reader_view = reader.array()
    assert reader_view.ctypes.data == writer_address
    assert reader.address == writer_address == buf.address
    assert np.shares_memory(reader_view, writable)
    assert np.array_equal(reader_view, pattern(4096))


def test_typed_reader_view_has_the_writers_address(pool):
    buf = pool.create("typed", 8 * 6)
    w = buf.array(np.float64, (2, 3))
    w[...] = [[1.5, 2.5, 3.5], [4.5, 5.5, 6.5]]
    buf.seal()
    r = pool.get("typed").array(np.float64, (2, 3))
    assert r.ctypes.data == w.ctypes.data
    assert np.shares_memory(r, w)
    assert r.tolist() == [[1.5, 2.5, 3.5], [4.5, 5.5, 6.5]]


def test_buffer_data_is_inside_pool_region_and_64_byte_aligned(pool, in_pool):
    buf = pool.create("aligned", 100)
    assert buf.address % 64 == 0
    assert in_pool(buf.address, 100)
    buf.seal()


def test_two_readers_see_the_same_bytes_without_copy(pool):
    pool.put("p", bytes(pattern(1000)))
    a = pool.get("p").array()
    b = pool.get("p").array()
    assert a.ctypes.data == b.ctypes.data
    assert np.shares_memory(a, b)
    assert np.array_equal(a, pattern(1000))


def test_get_array_is_zero_copy_over_part_1_inside_the_pool(pool, in_pool):
    src = np.arange(10_000, dtype=np.float32).reshape(100, 100)
    pool.put_array("arr", src)
    out = pool.get_array("arr")
    assert np.array_equal(out, src)
    assert out.dtype == src.dtype and out.shape == src.shape
    assert in_pool(out.ctypes.data, out.nbytes)
    assert out.ctypes.data % 64 == 0
    assert not out.flags.owndata
    buf = pool.get("arr")
    assert buf.part_count == 2
    address, length = buf.part_range(1)
    assert out.ctypes.data == address
    assert length == src.nbytes


def test_two_get_array_calls_share_memory(pool):
    pool.put_array("arr", np.arange(100, dtype=np.int64))
    a = pool.get_array("arr")
    b = pool.get_array("arr")
    assert a.ctypes.data == b.ctypes.data
    assert np.shares_memory(a, b)


def test_get_object_arrays_are_zero_copy_read_only_views_of_the_pool(pool, in_pool):
    obj = {
        "weights": np.arange(4096, dtype=np.float32),
        "ids": np.arange(1000, dtype=np.int64).reshape(10, 100),
        "mask": np.arange(777) % 3 == 0,
        "nested": {"bias": np.linspace(0, 1, 333, dtype=np.float64)},
    }
    pool.put_object("obj", obj)
    out = pool.get_object("obj")
    got = [out["weights"], out["ids"], out["mask"], out["nested"]["bias"]]
    want = [obj["weights"], obj["ids"], obj["mask"], obj["nested"]["bias"]]
    for g, w in zip(got, want):
        assert np.array_equal(g, w)
        assert g.dtype == w.dtype and g.shape == w.shape
        assert in_pool(g.ctypes.data, g.nbytes), "array was copied out of the pool"
        assert not g.flags.writeable
    # Each array is its own part of the object: their data lie in distinct parts.
    buf = pool.get("obj")
    part_addresses = {buf.part_range(i)[0] for i in range(buf.part_count)}
    assert {g.ctypes.data for g in got} <= part_addresses


def test_get_object_twice_gives_views_of_the_same_bytes(pool):
    pool.put_object("obj", {"a": np.arange(64, dtype=np.uint16)})
    a = pool.get_object("obj")["a"]
    b = pool.get_object("obj")["a"]
    assert a.ctypes.data == b.ctypes.data
    assert np.shares_memory(a, b)
