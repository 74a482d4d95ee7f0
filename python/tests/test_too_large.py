"""Every way a value can fail to fit is a MemoryError, and its message says which one: larger than
the whole pool (zcopy.TooLargeError: it never fits), pool full now, or object limit reached. The
C status for "larger than the pool" stays ZC_ERR_INVALID_ARGUMENT, so TooLargeError is a
ValueError (InvalidArgumentError) too."""

import gc

import numpy as np
import pytest

import zcopy

POOL = 4 << 20


@pytest.fixture
def small(make_pool):
    p = make_pool(POOL)
    p.put("keep", b"kept bytes")
    assert p.stats()["capacity_bytes"] == POOL
    return p


def too_large(pool, call, asked=None):
    """Runs `call`, which must fail as TooLargeError, and checks nothing was stored."""
    before = {k: v for k, v in pool.stats().items() if k in ("used_bytes", "object_count", "key_count")}
    try:
        call()
    except MemoryError as e:  # the one clause a fallback path writes
        err = e
    else:
        raise AssertionError("no MemoryError")
    assert isinstance(err, zcopy.TooLargeError)
    assert isinstance(err, zcopy.OutOfMemoryError) and isinstance(err, zcopy.Error)
    assert isinstance(err, zcopy.InvalidArgumentError) and isinstance(err, ValueError)
    assert err.status == 1  # ZC_ERR_INVALID_ARGUMENT, as the C API reports it
    text = str(err)
    assert text.startswith("larger than the whole pool: asked "), text
    assert "pool is %d bytes" % POOL in text, text
    if asked is not None:
        assert "asked %d bytes" % asked in text, text
    gc.collect()
    after = {k: v for k, v in pool.stats().items() if k in before}
    assert after == before
    assert pool.get_bytes("keep") == b"kept bytes"
    return err


def test_create_larger_than_the_pool_is_too_large_memory_error(small):
    too_large(small, lambda: small.create("big", POOL + 1), asked=POOL + 1)
    too_large(small, lambda: small.create("big", 1 << 40), asked=1 << 40)
    buf = small.create("fits", POOL // 2)  # the pool still works
    buf.abort()


def test_create_of_2_to_the_64_plus_8_bytes_is_too_large_not_an_8_byte_buffer(small):
    too_large(small, lambda: small.create("big", (1 << 64) + 8), asked=(1 << 64) + 8)
    assert "big" not in small


def test_create_parts_larger_than_the_pool_counting_header_and_padding(small):
    too_large(small, lambda: small.create_parts("big", [POOL]), asked=POOL + 64)
    too_large(small, lambda: small.create_parts("big", [POOL // 2, POOL // 2]), asked=POOL + 64)
    too_large(small, lambda: small.create_parts("big", [1 << 63, 1 << 63]))  # sum past 64 bits
    too_large(small, lambda: small.create_parts("big", [8, (1 << 64) + 8]))


def test_put_bytes_larger_than_the_pool(small):
    too_large(small, lambda: small.put("big", bytes(POOL + 1)), asked=POOL + 1)


def test_put_array_larger_than_the_pool(small):
    too_large(small, lambda: small.put_array("big", np.zeros(POOL // 8 + 1, dtype=np.float64)))
    too_large(small, lambda: zcopy.put_array(small, "big", np.zeros((1024, 1025), dtype=np.uint32)))


def test_put_object_larger_than_the_pool_out_of_band_and_in_band(small):
    too_large(small, lambda: small.put_object("big", {"w": np.zeros(POOL, dtype=np.uint8)}))
    too_large(small, lambda: small.put_object("big", b"x" * POOL))


def test_put_tensor_larger_than_the_pool(small):
    torch = pytest.importorskip("torch")
    too_large(small, lambda: small.put_tensor("big", torch.zeros(POOL // 4 + 1, dtype=torch.float32)))


def test_pool_full_now_is_an_out_of_memory_error_saying_so_not_too_large(small):
    held = small.create("held", POOL * 3 // 4)
    for call in (
        lambda: small.create("more", POOL // 2),
        lambda: small.put("more", bytes(POOL // 2)),
        lambda: small.put_array("more", np.zeros(POOL // 2, dtype=np.uint8)),
        lambda: small.put_object("more", np.zeros(POOL // 2, dtype=np.uint8)),
    ):
        with pytest.raises(MemoryError) as info:
            call()
        assert type(info.value) is zcopy.OutOfMemoryError
        assert not isinstance(info.value, ValueError)
        assert str(info.value).startswith("pool full"), str(info.value)
    held.abort()
    small.put("more", bytes(POOL // 2))  # fits once the space is back
    assert small.get("more").size == POOL // 2


def test_object_limit_is_an_out_of_memory_error_saying_so(make_pool):
    pool = make_pool(POOL, max_objects=2)
    pool.put("a", b"1")
    pool.put("b", b"2")
    for call in (lambda: pool.put("c", b"3"), lambda: pool.put_array("c", np.arange(3)), lambda: pool.create("c", 8)):
        with pytest.raises(MemoryError) as info:
            call()
        assert type(info.value) is zcopy.OutOfMemoryError
        assert str(info.value).startswith("object limit reached"), str(info.value)
    assert pool.get_bytes("a") == b"1" and "c" not in pool


def test_negative_sizes_are_invalid_arguments_not_memory_errors(small):
    for call in (lambda: small.create("neg", -1), lambda: small.create_parts("neg", [8, -1])):
        with pytest.raises(zcopy.InvalidArgumentError) as info:
            call()
        assert not isinstance(info.value, MemoryError)
        assert "negative" in str(info.value) or ">= 0" in str(info.value)
    assert "neg" not in small


def test_a_size_fitting_the_pool_exactly_is_not_too_large(small):
    small.delete("keep")
    gc.collect()
    buf = small.create("whole", POOL)
    assert buf.size == POOL
    buf.abort()
