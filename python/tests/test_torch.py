"""put_tensor/get_tensor (skipped where torch is not installed)."""

import pytest

import zcopy

try:
    import torch
except Exception as e:  # not installed, or installed without the libraries it needs
    pytest.skip("torch is not usable here (%s: %s); the tensor paths are optional" % (type(e).__name__, e), allow_module_level=True)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "int8", "float16", "int64", "bool"])
def test_tensor_round_trip_keeps_dtype_shape_values_zero_copy(pool, in_pool, dtype):
    dt = getattr(torch, dtype)
    src = (torch.arange(24) % 7).reshape(2, 3, 4).to(dt)
    pool.put_tensor("t", src)
    got = pool.get_tensor("t")
    assert got.dtype == dt
    assert tuple(got.shape) == (2, 3, 4)
    assert torch.equal(got, src)
    assert in_pool(got.data_ptr(), got.numel() * got.element_size())
    buf = pool.get("t")
    assert got.data_ptr() == buf.part_range(1)[0]


def test_non_contiguous_tensor_round_trips(pool, in_pool):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    src = base[1:5, ::3].t()
    assert not src.is_contiguous()
    pool.put_tensor("nc", src)
    got = pool.get_tensor("nc")
    assert tuple(got.shape) == tuple(src.shape)
    assert torch.equal(got, src)
    assert got.is_contiguous()
    assert in_pool(got.data_ptr(), got.numel() * 4)


def test_get_tensor_twice_shares_memory(pool):
    pool.put_tensor("t", torch.ones(100, dtype=torch.float32))
    a = pool.get_tensor("t")
    b = pool.get_tensor("t")
    assert a.data_ptr() == b.data_ptr()


def test_zero_d_and_empty_tensors(pool):
    pool.put_tensor("scalar", torch.tensor(3.5))
    got = pool.get_tensor("scalar")
    assert got.shape == () and got.item() == 3.5
    pool.put_tensor("empty", torch.empty(0, 3, dtype=torch.int32))
    got = pool.get_tensor("empty")
    assert tuple(got.shape) == (0, 3) and got.dtype == torch.int32


def test_tensor_keeps_object_alive_after_delete(pool):
    import gc

    pool.put_tensor("t", torch.arange(1000, dtype=torch.int64))
    t = pool.get_tensor("t")
    pool.delete("t")
    gc.collect()
    assert pool.stats()["used_bytes"] > 0
    assert torch.equal(t, torch.arange(1000, dtype=torch.int64))
    del t
    gc.collect()
    assert pool.stats()["used_bytes"] == 0


def test_nested_tensor_refused_and_nothing_stored(pool):
    nested = torch.nested.nested_tensor([torch.ones(2), torch.ones(3)])
    with pytest.raises(zcopy.InvalidArgumentError):
        pool.put_tensor("n", nested)
    assert "n" not in pool
    assert pool.stats()["object_count"] == 0


def test_non_tensor_refused(pool):
    with pytest.raises(zcopy.InvalidArgumentError):
        pool.put_tensor("x", [1, 2, 3])


def test_tensors_in_objects_come_back_equal(pool):
    obj = {"w": torch.arange(10, dtype=torch.float32), "b": torch.zeros(3, dtype=torch.bfloat16)}
    pool.put_object("o", obj)
    got = pool.get_object("o")
    assert torch.equal(got["w"], obj["w"]) and torch.equal(got["b"], obj["b"])


def test_get_tensor_on_array_key_refused(pool):
    import numpy as np

    pool.put_array("a", np.arange(3))
    with pytest.raises(zcopy.InvalidArgumentError):
        pool.get_tensor("a")


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tensors_of_one_layout_under_many_keys_each_read_their_own_bytes(pool, dtype):
    # get_tensor caches parsed layouts by the object's bytes before its data and its size: keys
    # whose headers are identical share one entry and must still each come back over their own
    # data.
    from zcopy import _objects

    _objects._tensor_layouts.clear()
    dt = getattr(torch, dtype)
    tensors = [torch.full((8, 16), float(i), dtype=dt) for i in range(20)]
    for i, t in enumerate(tensors):
        pool.put_tensor("same-%d" % i, t)
    for _ in range(2):
        got = [pool.get_tensor("same-%d" % i) for i in range(20)]
        for g, t in zip(got, tensors):
            assert g.dtype == dt and torch.equal(g, t)
        assert len({g.data_ptr() for g in got}) == 20
    assert len(_objects._tensor_layouts) == 1


def test_tensor_whose_header_runs_past_the_copied_head_round_trips(pool, in_pool):
    src = torch.arange(6, dtype=torch.int16).reshape((1,) * 30 + (2, 3))
    pool.put_tensor("many-dims", src)
    for _ in range(2):
        got = pool.get_tensor("many-dims")
        assert tuple(got.shape) == tuple(src.shape) and torch.equal(got, src)
        assert in_pool(got.data_ptr(), 12)


def test_get_tensor_reads_a_plain_buffer_holding_the_tensor_format(pool):
    # A value that arrived as bytes (a transfer, an RDMA WRITE) into a plain buffer.
    src = torch.arange(12, dtype=torch.float64).reshape(3, 4)
    pool.put_tensor("made", src)
    raw = pool.get_bytes("made")
    pool.put("plain", raw)
    got = pool.get_tensor("plain")
    assert torch.equal(got, src)


def test_get_tensor_refusal_releases_its_reference(pool):
    import gc

    pool.put("junk", b"\x00" * 300)
    with pytest.raises(zcopy.FormatError):
        pool.get_tensor("junk")
    pool.delete("junk")
    gc.collect()
    assert pool.stats()["used_bytes"] == 0
