"""Sealed objects cannot be written through any view zcopy hands out."""

import numpy as np
import pytest


def sealed(pool, key="k", n=256):
    buf = pool.create(key, n)
    buf.array()[:] = 9
    buf.seal()
    buf.release()


def test_get_array_view_refuses_assignment(pool):
    sealed(pool)
    view = pool.get("k").array()
    assert not view.flags.writeable
    with pytest.raises(ValueError):
        view[0] = 1
    with pytest.raises(ValueError):
        view[:] = 0
    assert np.all(view == 9)


def test_get_view_cannot_be_made_writeable_again(pool):
    sealed(pool)
    view = pool.get("k").array()
    with pytest.raises(ValueError):
        view.flags.writeable = True
    assert np.all(view == 9)


def test_get_typed_and_part_views_refuse_assignment(pool):
    sealed(pool, n=64)
    buf = pool.get("k")
    typed = buf.array(np.uint32, (4, 4))
    with pytest.raises(ValueError):
        typed[0, 0] = 1
    parts = pool.create_parts("parts", [16, 32])
    parts.part(0)[:] = 1
    parts.part(1)[:] = 2
    parts.seal()
    rparts = pool.get("parts")
    for i in range(2):
        view = rparts.part(i)
        with pytest.raises(ValueError):
            view[0] = 0
        assert np.all(view == i + 1)


def test_get_memoryview_is_read_only(pool):
    sealed(pool)
    mv = pool.get("k").memoryview()
    assert mv.readonly
    with pytest.raises(TypeError):
        mv[0] = 1
    assert mv[0] == 9


def test_get_array_result_refuses_assignment(pool):
    pool.put_array("arr", np.zeros((4, 4), dtype=np.float64))
    arr = pool.get_array("arr")
    assert not arr.flags.writeable
    with pytest.raises(ValueError):
        arr[1, 1] = 5.0
    with pytest.raises(ValueError):
        arr += 1
    assert np.all(pool.get_array("arr") == 0)


def test_get_object_arrays_refuse_assignment(pool):
    pool.put_object("obj", {"a": np.ones(10, dtype=np.int32), "l": [np.ones((2, 2))]})
    out = pool.get_object("obj")
    for arr in (out["a"], out["l"][0]):
        assert not arr.flags.writeable
        with pytest.raises(ValueError):
            arr[0] = 7
    fresh = pool.get_object("obj")
    assert np.all(fresh["a"] == 1) and np.all(fresh["l"][0] == 1)


def test_writable_array_view_becomes_read_only_at_seal(pool):
    buf = pool.create("w", 128)
    assert buf.writable
    view = buf.array()
    assert view.flags.writeable
    view[:] = 3
    buf.seal()
    assert not buf.writable and buf.sealed
    assert not view.flags.writeable
    with pytest.raises(ValueError):
        view[0] = 4
    assert np.all(pool.get("w").array() == 3)


def test_writable_part_views_become_read_only_at_seal(pool):
    buf = pool.create_parts("p", [10, 100])
    p0, p1 = buf.part(0), buf.part(1)
    p0[:] = 1
    p1[:] = 2
    buf.seal()
    for view, value in ((p0, 1), (p1, 2)):
        assert not view.flags.writeable
        with pytest.raises(ValueError):
            view[0] = 0
        assert np.all(view == value)


def test_writable_typed_view_becomes_read_only_at_seal(pool):
    # Buffer.array(dtype, shape) is a view zcopy hands out: "writable while unsealed, read-only after".
    buf = pool.create("typed", 64)
    typed = buf.array(np.uint32, (4, 4))
    typed[...] = 5
    buf.seal()
    assert not typed.flags.writeable
    with pytest.raises(ValueError):
        typed[0, 0] = 6
    assert np.all(pool.get("typed").array(np.uint32) == 5)


def test_writable_typed_part_view_becomes_read_only_at_seal(pool):
    buf = pool.create_parts("typed-part", [8, 64])
    part = buf.part(1, np.float64, (2, 4))
    part[...] = 1.25
    buf.seal()
    assert not part.flags.writeable
    with pytest.raises(ValueError):
        part[0, 0] = 2.0


def test_writable_memoryview_is_released_at_seal_so_it_cannot_write(pool):
    # A memoryview's read-only flag is fixed when it is made, so seal() releases a writable one
    # (Buffer.memoryview's docstring): any later use raises ValueError, and a new one is read-only.
    buf = pool.create("mv", 32)
    mv = buf.memoryview()
    assert not mv.readonly
    mv[:] = b"\x01" * 32
    buf.seal()
    with pytest.raises(ValueError):
        mv[0] = 99
    with pytest.raises(ValueError):
        bytes(mv)
    assert bytes(pool.get("mv").memoryview()) == b"\x01" * 32, "a sealed object was modified"
    assert buf.memoryview().readonly


def test_array_taken_after_seal_from_the_writer_buffer_is_read_only(pool):
    buf = pool.create("late", 16)
    buf.array()[:] = 1
    buf.seal()
    view = buf.array()
    assert not view.flags.writeable
    with pytest.raises(ValueError):
        view[0] = 2
