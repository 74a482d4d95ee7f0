"""Python ints are unbounded and ctypes silently keeps only the low bits of one passed as a C
integer: every int the package hands to C is range-checked first, so an out-of-range value is
refused and never wraps to a small valid one."""

import numpy as np
import pytest

import zcopy


@pytest.fixture
def two_parts(pool):
    buf = pool.create_parts("two", [16, 16])
    buf.part(0)[:] = 1
    buf.part(1)[:] = 2
    buf.seal()
    buf.release()
    return pool.get("two")


@pytest.mark.parametrize("index", [1 << 64, (1 << 64) + 1, 1 << 100], ids=["2^64", "2^64+1", "2^100"])
def test_part_index_past_64_bits_is_refused_not_part_0_or_1(two_parts, index):
    with pytest.raises(zcopy.InvalidArgumentError, match="part index"):
        two_parts.part_range(index)
    with pytest.raises(zcopy.InvalidArgumentError, match="part index"):
        two_parts.part(index)
    assert two_parts.part(0).tolist() == [1] * 16 and two_parts.part(1).tolist() == [2] * 16


def test_negative_part_index_is_refused(two_parts):
    for index in (-1, -(1 << 64)):
        with pytest.raises(zcopy.InvalidArgumentError, match="part index"):
            two_parts.part(index)


def test_part_index_of_numpy_int_works(two_parts):
    assert two_parts.part(np.int64(1)).tolist() == [2] * 16


@pytest.mark.parametrize("index", [1 << 32, (1 << 64) + 0, -1], ids=["2^32", "2^64", "-1"])
def test_rdma_registration_index_outside_32_bits_is_refused(pool, index):
    pool.put("k", b"v")
    with pool.get("k") as buf:
        with pytest.raises(zcopy.InvalidArgumentError, match="registration index"):
            buf.rdma_desc(index)


@pytest.mark.parametrize("size", [(1 << 64) + (4 << 20), 1 << 65], ids=["2^64+4MiB", "2^65"])
def test_pool_size_past_64_bits_is_refused_not_a_small_pool(size):
    with pytest.raises(zcopy.InvalidArgumentError, match="size"):
        zcopy.Pool(size, pages="small", prefault=False)


def test_negative_pool_size_is_an_invalid_argument():
    with pytest.raises(zcopy.InvalidArgumentError, match="size"):
        zcopy.Pool(-1, pages="small", prefault=False)


@pytest.mark.parametrize("max_objects", [(1 << 64) + 2, -1], ids=["2^64+2", "-1"])
def test_max_objects_outside_64_bits_is_refused_not_wrapped(max_objects):
    with pytest.raises(zcopy.InvalidArgumentError, match="max_objects"):
        zcopy.Pool(4 << 20, pages="small", prefault=False, max_objects=max_objects)


def test_pool_options_at_the_64_bit_edge_pass_through_unchanged(make_pool):
    pool = make_pool(4 << 20, max_objects=3)
    assert pool.stats()["max_objects"] == 3


def test_ctypes_view_struct_matches_the_header(repo_root):
    # zc_view is filled by C through ctypes' declaration: a size or offset off by one would read
    # the wrong bytes as the address.
    import ctypes
    import re

    from zcopy import _lib

    with open("%s/include/zcopy.h" % repo_root) as f:
        header = f.read()
    head = int(re.search(r"#define ZC_VIEW_HEAD_BYTES (\d+)", header).group(1))
    assert _lib.VIEW_HEAD_BYTES == head
    fields = re.search(r"typedef struct zc_view \{(.*?)\} zc_view;", header, re.S).group(1)
    declared = re.findall(r"^\s*([\w ]+?\*?)\s*(\w+)(\[\w+\])?;", fields, re.M)
    assert [name for _, name, _ in declared] == ["buffer", "data", "size", "head"]
    assert [name for name, _ in _lib.View._fields_] == ["buffer", "data", "size", "head"]
    pointer = ctypes.sizeof(ctypes.c_void_p)
    assert ctypes.sizeof(_lib.View) == 3 * pointer + head
    assert _lib.View.head.offset == 3 * pointer and _lib.View.head.size == head
