"""put_object/get_object: pickle protocol 5 with out-of-band buffers in the pool."""

import numpy as np
import pytest

import zcopy

STRUCT = np.dtype([("id", "<i4"), ("score", ">f8"), ("tag", "S3"), ("xy", "<f4", (2,))])


def arrays_in(obj):
    if isinstance(obj, np.ndarray):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from arrays_in(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from arrays_in(v)


def assert_same(got, want):
    if isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray)
        assert got.dtype == want.dtype and got.shape == want.shape
        assert np.array_equal(got, want)
    elif isinstance(want, dict):
        assert isinstance(got, dict) and got.keys() == want.keys()
        for k in want:
            assert_same(got[k], want[k])
    elif isinstance(want, (list, tuple)):
        assert type(got) is type(want) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_same(g, w)
    else:
        assert type(got) is type(want)
        assert got == want


def structured():
    a = np.zeros(5, STRUCT)
    a["id"] = np.arange(5)
    a["score"] = np.linspace(0, 1, 5)
    a["tag"] = [b"abc", b"de", b"f", b"", b"xyz"]
    a["xy"] = np.arange(10, dtype=np.float32).reshape(5, 2)
    return a


def test_nested_dicts_and_lists_of_arrays_round_trip_zero_copy(pool, in_pool):
    obj = {
        "f32": np.arange(100, dtype=np.float32),
        "be": (np.arange(50) / 3).astype(">f8"),
        "struct": structured(),
        "layers": [
            {"w": np.arange(12, dtype=np.int16).reshape(3, 4), "b": np.ones(4, dtype=np.complex128)},
            {"w": np.eye(3, dtype=np.uint8), "b": np.array([True, False, True])},
        ],
        "fortran": np.asfortranarray(np.arange(12, dtype=np.int32).reshape(3, 4)),
        "tuple": (np.arange(3, dtype=np.int64), "label"),
    }
    pool.put_object("o", obj)
    out = pool.get_object("o")
    assert_same(out, obj)
    assert out["be"].dtype.byteorder == ">"
    assert out["struct"].dtype == STRUCT
    assert out["struct"]["tag"].tolist() == [b"abc", b"de", b"f", b"", b"xyz"]
    got_arrays = list(arrays_in(out))
    assert len(got_arrays) == len(list(arrays_in(obj)))
    for arr in got_arrays:
        assert in_pool(arr.ctypes.data, arr.nbytes), "array %s was copied" % (arr.dtype,)
        assert not arr.flags.writeable
    assert out["fortran"].flags.f_contiguous


def test_non_contiguous_array_comes_back_equal(pool):
    base = np.arange(100, dtype=np.float64).reshape(10, 10)
    nc = base[::2, 1::3]
    assert not nc.flags.c_contiguous and not nc.flags.f_contiguous
    pool.put_object("nc", {"nc": nc, "also": base[:, 3]})
    out = pool.get_object("nc")
    assert out["nc"].shape == nc.shape and out["nc"].dtype == nc.dtype
    assert np.array_equal(out["nc"], nc)
    assert np.array_equal(out["also"], base[:, 3])


def test_bytearray_comes_back_equal_as_a_copy(pool, in_pool):
    data = bytearray(b"hello zcopy" * 10)
    pool.put_object("ba", {"ba": data, "bytes": b"immutable"})
    out = pool.get_object("ba")
    assert type(out["ba"]) is bytearray
    assert out["ba"] == data
    assert out["bytes"] == b"immutable"
    out["ba"][0] = ord("J")  # a copy by nature: writing it leaves the pool alone
    assert pool.get_object("ba")["ba"] == data


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        -3.5,
        "unicode ✓",
        b"\x00bytes",
        [1, [2, [3]]],
        {"a": (1, 2), "b": {3, 4}, "c": frozenset([5])},
        (),
        {"empty": []},
        complex(1, -2),
        2**100,
    ],
    ids=lambda v: type(v).__name__,
)
def test_plain_python_objects_round_trip(pool, value):
    pool.put_object("plain", value)
    assert_same(pool.get_object("plain"), value)


def test_object_with_many_arrays_and_empty_array(pool):
    obj = [np.full(i, i, dtype=np.int32) for i in range(0, 20)]
    pool.put_object("many", obj)
    out = pool.get_object("many")
    assert len(out) == 20
    for i, arr in enumerate(out):
        assert arr.dtype == np.int32 and arr.shape == (i,)
        assert np.all(arr == i)


def test_object_arrays_keep_object_alive_after_delete(pool, in_pool):
    pool.put_object("o", {"a": np.arange(1000, dtype=np.float64)})
    a = pool.get_object("o")["a"]
    pool.delete("o")
    assert pool.stats()["used_bytes"] > 0
    assert np.array_equal(a, np.arange(1000, dtype=np.float64))
    assert in_pool(a.ctypes.data, a.nbytes)


def test_refused_get_object_and_get_parts_release_their_reference_before_raising(pool):
    # The exception (and the frame its traceback holds) outlives the call: the object must not.
    pool.put("plain", b"not a pickled object, not parts" * 4)
    errors = []
    for get in (pool.get_object, pool.get_parts):
        try:
            get("plain")
        except zcopy.FormatError as e:
            errors.append(e)
    assert len(errors) == 2
    pool.delete("plain")
    assert pool.stats()["used_bytes"] == 0
    assert errors[0].__traceback__ is not None
