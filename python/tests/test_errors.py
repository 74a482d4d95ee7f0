"""Every C status maps to its exception class; failing calls lose nothing already stored."""

import builtins
import gc
import math
import threading
import time

import numpy as np
import pytest

import zcopy

STATUS = {
    zcopy.InvalidArgumentError: 1,
    zcopy.NotFoundError: 2,
    zcopy.AlreadyExistsError: 3,
    zcopy.NotSealedError: 4,
    zcopy.AlreadySealedError: 5,
    zcopy.OutOfMemoryError: 6,
    zcopy.TimeoutError: 7,
    zcopy.PoolClosedError: 8,
    zcopy.RdmaError: 9,
    zcopy.SystemCallError: 10,
    zcopy.InternalError: 11,
}


@pytest.fixture
def stored(pool):
    """Puts a few values; calling the result checks they and the pool's counters are unchanged."""
    arr = np.arange(1000, dtype=np.float64)
    pool.put_array("keep-array", arr)
    pool.put("keep-bytes", b"precious bytes")
    pool.put_object("keep-object", {"x": np.arange(10), "s": "text"})
    snapshot = {k: v for k, v in pool.stats().items() if k in ("used_bytes", "object_count", "key_count")}

    def check():
        gc.collect()  # failed calls leave tracebacks whose frames hold buffers
        assert np.array_equal(pool.get_array("keep-array"), arr)
        assert pool.get_bytes("keep-bytes") == b"precious bytes"
        obj = pool.get_object("keep-object")
        assert np.array_equal(obj["x"], np.arange(10)) and obj["s"] == "text"
        now = {k: v for k, v in pool.stats().items() if k in snapshot}
        assert now == snapshot

    return check


def expect(cls, fn, *args, **kwargs):
    with pytest.raises(cls) as info:
        fn(*args, **kwargs)
    err = info.value
    assert isinstance(err, zcopy.Error)
    assert err.status == STATUS[cls]
    assert str(err)
    return err


@pytest.mark.parametrize("cls", list(STATUS), ids=lambda c: c.__name__)
def test_every_error_class_derives_from_zcopy_error_and_has_its_status(cls):
    assert issubclass(cls, zcopy.Error)
    assert cls.status == STATUS[cls]
    assert cls("detail").status == STATUS[cls]
    assert str(cls("detail")) == "detail"


def test_python_base_classes():
    assert issubclass(zcopy.NotFoundError, KeyError)
    assert issubclass(zcopy.InvalidArgumentError, ValueError)
    assert issubclass(zcopy.OutOfMemoryError, MemoryError)
    assert issubclass(zcopy.TimeoutError, builtins.TimeoutError)
    assert issubclass(zcopy.SystemCallError, OSError)
    assert zcopy.TimeoutError is not builtins.TimeoutError


def test_refined_error_classes_keep_the_base_class_and_status_they_refine():
    # FormatError: stored bytes that are not what the call reads; a ValueError as before.
    assert issubclass(zcopy.FormatError, zcopy.InvalidArgumentError) and zcopy.FormatError.status == 1
    # TooLargeError: larger than the whole pool. A MemoryError like every "does not fit", and a
    # ValueError with the C status ZC_ERR_INVALID_ARGUMENT, as it was before it had a class.
    assert issubclass(zcopy.TooLargeError, zcopy.OutOfMemoryError) and issubclass(zcopy.TooLargeError, MemoryError)
    assert issubclass(zcopy.TooLargeError, zcopy.InvalidArgumentError) and issubclass(zcopy.TooLargeError, ValueError)
    assert zcopy.TooLargeError.status == 1 and zcopy.TooLargeError("x").status == 1
    # PoolForkedError: a pool or buffer from before a fork, used in the child.
    assert issubclass(zcopy.PoolForkedError, zcopy.PoolClosedError) and zcopy.PoolForkedError.status == 8


def test_not_found_for_absent_get_and_delete(pool, stored):
    err = expect(zcopy.NotFoundError, pool.get, "absent")
    assert isinstance(err, KeyError)
    expect(zcopy.NotFoundError, pool.delete, "absent")
    expect(zcopy.NotFoundError, pool.get_array, "absent")
    expect(zcopy.NotFoundError, pool.get_object, "absent")
    expect(zcopy.NotFoundError, pool.get_bytes, "absent")
    assert "absent" not in pool
    with pytest.raises(KeyError):
        pool.get("absent")
    stored()


def test_not_sealed_for_get_and_delete_of_created_key(pool, stored):
    buf = pool.create("pending", 64)
    expect(zcopy.NotSealedError, pool.get, "pending")
    expect(zcopy.NotSealedError, pool.get, "pending", timeout=None)
    expect(zcopy.NotSealedError, pool.delete, "pending")
    assert "pending" not in pool
    assert buf.writable
    buf.array()[:] = 1
    buf.seal()
    assert pool.get_bytes("pending") == b"\x01" * 64
    pool.delete("pending")
    buf.release()
    stored()


def test_timeout_for_absent_key_waits_its_timeout(pool, stored):
    t0 = time.monotonic()
    err = expect(zcopy.TimeoutError, pool.get, "absent", timeout=0.05)
    elapsed = time.monotonic() - t0
    assert isinstance(err, builtins.TimeoutError)
    assert 0.045 <= elapsed < 2.0
    stored()


def test_timeout_for_created_but_unsealed_key(pool, stored):
    buf = pool.create("pending", 8)
    t0 = time.monotonic()
    expect(zcopy.TimeoutError, pool.get, "pending", timeout=0.05)
    assert time.monotonic() - t0 >= 0.045
    buf.abort()
    stored()


def test_timeout_zero_waits_and_then_times_out_or_answers_at_once(pool, stored):
    with pytest.raises((zcopy.TimeoutError, zcopy.NotFoundError)):
        pool.get("absent", timeout=0)
    assert np.array_equal(pool.get_array("keep-array", timeout=0), np.arange(1000, dtype=np.float64))
    stored()


def test_already_exists_for_sealed_and_created_keys(pool, stored):
    expect(zcopy.AlreadyExistsError, pool.create, "keep-bytes", 10)
    expect(zcopy.AlreadyExistsError, pool.put, "keep-bytes", b"other")
    expect(zcopy.AlreadyExistsError, pool.put_array, "keep-array", np.zeros(3))
    expect(zcopy.AlreadyExistsError, pool.put_object, "keep-object", "other")
    expect(zcopy.AlreadyExistsError, pool.create_parts, "keep-array", [1, 2])
    buf = pool.create("pending", 8)
    expect(zcopy.AlreadyExistsError, pool.create, "pending", 8)
    buf.abort()
    stored()


def test_already_sealed_for_seal_twice_abort_after_seal_and_reader_handles(pool, stored):
    buf = pool.create("k", 8)
    buf.array()[:] = 2
    buf.seal()
    expect(zcopy.AlreadySealedError, buf.seal)
    expect(zcopy.AlreadySealedError, buf.abort)
    expect(zcopy.AlreadySealedError, pool.seal, buf)
    reader = pool.get("k")
    expect(zcopy.AlreadySealedError, reader.seal)
    expect(zcopy.AlreadySealedError, reader.abort)
    assert pool.get_bytes("k") == b"\x02" * 8
    pool.delete("k")
    buf.release()
    reader.release()
    stored()


def test_out_of_memory_for_full_pool(pool, stored):
    big = pool.create("big", 48 << 20)
    err = expect(zcopy.OutOfMemoryError, pool.create, "more", 32 << 20)
    assert isinstance(err, MemoryError)
    assert "pool full" in str(err)
    expect(zcopy.OutOfMemoryError, pool.put_array, "more", np.zeros(32 << 17))
    assert "more" not in pool
    big.seal()
    assert "big" in pool
    pool.delete("big")
    big.release()
    stored()


def test_out_of_memory_for_object_limit(make_pool):
    pool = make_pool(4 << 20, max_objects=2)
    pool.put("a", b"1")
    pool.put("b", b"2")
    expect(zcopy.OutOfMemoryError, pool.put, "c", b"3")
    assert pool.get_bytes("a") == b"1" and pool.get_bytes("b") == b"2"
    assert "c" not in pool


def test_invalid_argument_for_size_larger_than_pool(pool, stored):
    err = expect(zcopy.InvalidArgumentError, pool.create, "huge", 128 << 20)
    assert isinstance(err, ValueError)
    expect(zcopy.InvalidArgumentError, pool.create_parts, "huge", [100 << 20])
    stored()


@pytest.mark.parametrize("key", ["", b""], ids=["str", "bytes"])
def test_invalid_argument_for_empty_key(pool, stored, key):
    expect(zcopy.InvalidArgumentError, pool.create, key, 8)
    expect(zcopy.InvalidArgumentError, pool.get, key)
    expect(zcopy.InvalidArgumentError, pool.put, key, b"x")
    expect(zcopy.InvalidArgumentError, pool.delete, key)
    stored()


def test_invalid_argument_for_5000_byte_key_and_4096_is_the_limit(pool, stored):
    expect(zcopy.InvalidArgumentError, pool.create, "k" * 5000, 8)
    expect(zcopy.InvalidArgumentError, pool.put_array, b"k" * 5000, np.arange(3))
    expect(zcopy.InvalidArgumentError, pool.get, "k" * 5000)
    expect(zcopy.InvalidArgumentError, pool.create, "k" * 4097, 8)
    stored()
    pool.put("k" * 4096, b"longest key")
    assert pool.get_bytes("k" * 4096) == b"longest key"


def test_keys_with_nul_bytes_and_unicode_are_distinct(pool):
    pool.put(b"a\0b", b"1")
    pool.put(b"a\0c", b"2")
    pool.put("ключ", b"3")
    assert pool.get_bytes(b"a\0b") == b"1" and pool.get_bytes(b"a\0c") == b"2"
    assert pool.get_bytes("ключ".encode()) == b"3"
    expect(zcopy.NotFoundError, pool.get, b"a")


@pytest.mark.parametrize("kwargs", [{"pages": "gigantic"}, {"pages": "SMALL"}, {"rdma": "maybe"}])
def test_invalid_argument_for_bad_pool_option(kwargs):
    err = expect(zcopy.InvalidArgumentError, zcopy.Pool, 1 << 20, **kwargs)
    assert isinstance(err, ValueError)


@pytest.mark.parametrize("timeout", [-1, -0.5, float("nan"), -math.inf])
def test_invalid_argument_for_bad_timeout(pool, stored, timeout):
    expect(zcopy.InvalidArgumentError, pool.get, "keep-bytes", timeout=timeout)
    expect(zcopy.InvalidArgumentError, pool.get, "absent", timeout=timeout)
    stored()


def test_pool_closed_after_close(make_pool):
    pool = make_pool(4 << 20)
    pool.put("k", b"v")
    pool.close()
    pool.close()  # idempotent
    assert pool.closed
    for call in (
        lambda: pool.create("n", 8),
        lambda: pool.create_parts("n", [8]),
        lambda: pool.get("k"),
        lambda: pool.get("k", timeout=1),
        lambda: pool.delete("k"),
        lambda: pool.contains("k"),
        lambda: pool.put("n", b"x"),
        lambda: pool.get_bytes("k"),
        lambda: pool.put_array("n", np.arange(3)),
        lambda: pool.get_array("k"),
        lambda: pool.put_object("n", 1),
        lambda: pool.get_object("k"),
        lambda: pool.stats(),
        lambda: pool.region(),
        lambda: pool.rdma_count,
    ):
        expect(zcopy.PoolClosedError, call)
    assert "closed" in repr(pool)


def test_rdma_required_fails_on_host_without_rdma_device():
    err = expect(zcopy.RdmaError, zcopy.Pool, 1 << 20, pages="small", rdma="required")
    assert "RDMA" in str(err) or "rdma" in str(err)


def test_rdma_desc_in_local_mode_is_rdma_error(pool, stored):
    assert pool.rdma_count == 0
    assert pool.stats()["rdma_registrations"] == 0
    buf = pool.create("r", 64)
    expect(zcopy.RdmaError, buf.rdma_desc, 0)
    expect(zcopy.RdmaError, buf.rdma_desc)
    buf.seal()
    with pool.get("r") as reader:
        expect(zcopy.RdmaError, reader.rdma_desc, 0)
    pool.delete("r")
    buf.release()
    stored()


def test_hugetlb_without_reserved_huge_pages_is_system_call_error():
    with open("/proc/meminfo") as f:
        free = [line for line in f if line.startswith("HugePages_Free:")]
    if not free or int(free[0].split()[1]) > 0:
        pytest.skip("this host has huge pages reserved")
    err = expect(zcopy.SystemCallError, zcopy.Pool, 2 << 20, pages="hugetlb")
    assert isinstance(err, OSError)


def test_type_error_for_non_string_key(pool, stored):
    with pytest.raises(TypeError):
        pool.create(123, 8)
    stored()


def test_error_message_carries_library_detail(pool):
    err = expect(zcopy.NotFoundError, pool.get, "who-knows")
    assert "who-knows" in str(err)


def test_blocking_get_woken_by_put_from_another_thread(pool):
    def writer():
        time.sleep(0.3)
        pool.put_array("late", np.arange(5, dtype=np.int32))

    t = threading.Thread(target=writer)
    t0 = time.monotonic()
    t.start()
    got = pool.get_array("late", timeout=5)
    elapsed = time.monotonic() - t0
    t.join(5)
    assert got.tolist() == [0, 1, 2, 3, 4]
    assert 0.25 <= elapsed < 2.5, elapsed


def test_blocking_get_waits_for_created_key_to_be_sealed(pool):
    buf = pool.create("pending", 4)
    buf.array()[:] = 7

    def sealer():
        time.sleep(0.2)
        buf.seal()

    t = threading.Thread(target=sealer)
    t0 = time.monotonic()
    t.start()
    got = pool.get("pending", timeout=5)
    elapsed = time.monotonic() - t0
    t.join(5)
    assert got.tobytes() == b"\x07" * 4
    assert 0.15 <= elapsed < 2.5, elapsed


def test_blocking_get_with_infinite_timeout(pool):
    def writer():
        time.sleep(0.2)
        pool.put_object("inf", {"v": np.arange(3)})

    t = threading.Thread(target=writer)
    t0 = time.monotonic()
    t.start()
    got = pool.get_object("inf", timeout=math.inf)
    elapsed = time.monotonic() - t0
    t.join(5)
    assert got["v"].tolist() == [0, 1, 2]
    assert 0.15 <= elapsed < 2.5, elapsed


def test_blocking_get_returns_at_once_for_sealed_key(pool):
    pool.put("now", b"x")
    t0 = time.monotonic()
    assert pool.get("now", timeout=math.inf).tobytes() == b"x"
    assert pool.get("now", timeout=5).tobytes() == b"x"
    assert time.monotonic() - t0 < 1.0
