"""Pools and buffers are handles to this process's memory: pickling or copying one would carry a
raw pointer without its ownership (used after the original's release, or in another process, it
crashed). They refuse with TypeError; the arrays and objects read through them copy as usual."""

import copy
import multiprocessing.reduction
import pickle

import numpy as np
import pytest

import zcopy

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


def refuses(obj, what):
    for protocol in PROTOCOLS:
        with pytest.raises(TypeError, match=what):
            pickle.dumps(obj, protocol=protocol)
    with pytest.raises(TypeError, match=what):
        multiprocessing.reduction.ForkingPickler.dumps(obj)  # what multiprocessing sends
    with pytest.raises(TypeError, match=what):
        copy.copy(obj)
    with pytest.raises(TypeError, match=what):
        copy.deepcopy(obj)
    with pytest.raises(TypeError, match=what):
        copy.deepcopy({"nested": [obj]})


def test_pool_refuses_pickle_copy_and_deepcopy_with_type_error_and_keeps_working(pool):
    pool.put("k", b"value")
    refuses(pool, "zcopy.Pool")
    assert pool.get_bytes("k") == b"value"


def test_closed_pool_refuses_pickle_too(make_pool):
    p = make_pool(1 << 20)
    p.close()
    refuses(p, "zcopy.Pool")


def test_reader_and_writer_buffers_refuse_pickle_copy_and_deepcopy(pool):
    writer = pool.create("w", 16)
    refuses(writer, "zcopy.Buffer")
    writer.array()[:] = 7
    writer.seal()
    reader = pool.get("w")
    refuses(reader, "zcopy.Buffer")
    assert reader.tobytes() == b"\x07" * 16
    reader.release()
    refuses(reader, "zcopy.Buffer")  # released: nothing to copy either
    writer.release()
    assert pool.get_bytes("w") == b"\x07" * 16


def test_the_handle_under_an_array_refuses_copies(pool, handle_under):
    pool.put_array("a", np.arange(6, dtype=np.int32))
    arr = pool.get_array("a")
    refuses(handle_under(arr), "zcopy")
    view = pool.get("a").part(1)
    refuses(view.base, "zcopy")
    assert arr.tolist() == list(range(6))


def test_array_from_the_pool_pickles_to_equal_data_at_every_protocol(pool):
    src = np.arange(12, dtype=np.float32).reshape(3, 4)
    pool.put_array("a", src)
    arr = pool.get_array("a")
    for protocol in PROTOCOLS:
        back = pickle.loads(pickle.dumps(arr, protocol=protocol))
        assert back.dtype == src.dtype and back.shape == src.shape
        assert np.array_equal(back, src)
    back = pickle.loads(multiprocessing.reduction.ForkingPickler.dumps(arr))
    assert np.array_equal(back, src)


def test_deepcopy_and_copy_of_a_pool_array_are_independent_writable_copies(pool, in_pool):
    pool.put_array("a", np.arange(8, dtype=np.int64))
    arr = pool.get_array("a")
    for dup in (copy.deepcopy(arr), copy.copy(arr)):
        assert np.array_equal(dup, arr)
        assert not in_pool(dup.__array_interface__["data"][0], dup.nbytes)
        assert dup.flags.writeable
        dup[:] = -1
        assert arr.tolist() == list(range(8))
    assert not arr.flags.writeable


def test_object_from_the_pool_pickles_and_deepcopies_to_equal_values(pool, in_pool):
    value = {"w": np.arange(5, dtype=np.float64), "s": "text", "n": [1, 2]}
    pool.put_object("o", value)
    got = pool.get_object("o")
    assert in_pool(got["w"].__array_interface__["data"][0])
    back = pickle.loads(pickle.dumps(got, protocol=5))
    assert np.array_equal(back["w"], value["w"]) and back["s"] == "text" and back["n"] == [1, 2]
    dup = copy.deepcopy(got)
    assert np.array_equal(dup["w"], value["w"])
    assert not in_pool(dup["w"].__array_interface__["data"][0])
