"""Timeouts cross into C as int64 milliseconds (-1: forever). Python numbers are unbounded: a
timeout too large for int64 must wait (forever), never wrap around to a short one."""

import fractions
import math
import threading
import time

import numpy as np
import pytest

import zcopy

HUGE = [
    18446744073709552,  # seconds whose milliseconds wrap 2**64 to 384 ms
    (1 << 63) // 1000 + 1,  # the first whole second past int64 milliseconds
    1 << 63,
    1 << 64,
    1 << 200,
    1e300,
    float(1 << 70),
    np.float64(1e30),
    fractions.Fraction(10**30, 3),
]


def wait_in_thread(call):
    """Runs `call` in a thread; returns (thread, outcome) where outcome fills in when it ends."""
    outcome = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as e:  # reported to the test, not lost in the thread
            outcome["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, outcome


@pytest.mark.parametrize("timeout", HUGE, ids=lambda t: "%s:%r" % (type(t).__name__, t))
def test_huge_timeout_still_waits_after_half_a_second_and_returns_the_key_once_put(pool, timeout):
    t, outcome = wait_in_thread(lambda: pool.get_bytes("late", timeout=timeout))
    time.sleep(0.5)
    assert outcome == {}
    assert t.is_alive()
    pool.put("late", b"arrived")
    t.join(5)
    assert not t.is_alive()
    assert outcome == {"value": b"arrived"}


@pytest.mark.parametrize("read", ["get", "get_bytes", "get_array", "get_object"])
def test_every_read_accepts_a_timeout_past_int64_milliseconds(pool, read):
    pool.put_array("a", np.arange(3))
    pool.put_object("o", [1, 2, 3])
    key = {"get_array": "a", "get_object": "o"}.get(read, "a")
    assert getattr(pool, read)(key, timeout=1 << 64) is not None
    t, outcome = wait_in_thread(lambda: getattr(pool, read)("missing", timeout=18446744073709552))
    time.sleep(0.5)
    assert outcome == {} and t.is_alive()
    if read == "get_object":
        pool.put_object("missing", [4])
    else:
        pool.put_array("missing", np.arange(4))
    t.join(5)
    assert "value" in outcome, outcome


@pytest.mark.parametrize("timeout", [True, False, "1", b"1", [1], 1j])
def test_timeout_of_bool_string_or_complex_is_refused_with_type_error(pool, timeout):
    pool.put("k", b"v")
    with pytest.raises(TypeError, match="timeout"):
        pool.get("k", timeout=timeout)
    with pytest.raises(TypeError, match="timeout"):
        pool.get_array("k", timeout=timeout)
    assert pool.get_bytes("k") == b"v"


@pytest.mark.parametrize("timeout", [-1, -1e-9, -(1 << 64), float("nan"), -math.inf, np.float64("nan")])
def test_negative_and_nan_timeouts_are_invalid_arguments(pool, timeout):
    with pytest.raises(zcopy.InvalidArgumentError, match="timeout"):
        pool.get("absent", timeout=timeout)


def test_small_and_numpy_timeouts_still_time_out_in_about_their_time(pool):
    for timeout in (0.05, np.float32(0.05), fractions.Fraction(1, 20), 1e-9):
        t0 = time.monotonic()
        with pytest.raises(zcopy.TimeoutError):
            pool.get("absent", timeout=timeout)
        assert time.monotonic() - t0 < 2.0
