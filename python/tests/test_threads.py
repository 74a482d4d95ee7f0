"""Concurrent puts and gets from several threads keep every key's content and leak nothing."""

import gc
import threading
import time

import numpy as np

import zcopy

THREADS = 4
OPS = 2000
TIME_CAP = 20.0
SHARED_KEYS = ["shared-%d" % i for i in range(4)]


def content_for(key):
    """Every writer of a key writes the same content, so any reader can check it."""
    seed = sum(key.encode()) % 97
    n = 16 + seed * 3
    return (np.arange(n, dtype=np.int64) * (seed + 1)).astype(np.int64)


def test_four_threads_put_and_get_distinct_and_shared_keys(pool):
    errors = []
    counts = [0] * THREADS
    checked = [0] * THREADS
    start = threading.Barrier(THREADS)
    deadline = time.monotonic() + TIME_CAP

    def worker(tid):
        try:
            start.wait()
            rng = np.random.default_rng(tid)
            held = []
            for i in range(OPS):
                if time.monotonic() > deadline:
                    break
                if i % 2 == 0:
                    key = "t%d-%d" % (tid, i % 50)
                    expected = content_for(key)
                    try:
                        pool.put_array(key, expected)
                    except zcopy.AlreadyExistsError:
                        pass
                    got = pool.get_array(key)
                    assert np.array_equal(got, expected), key
                    checked[tid] += 1
                    if rng.random() < 0.5:
                        pool.delete(key)
                    if len(held) < 8:
                        held.append((got, expected))
                else:
                    key = SHARED_KEYS[int(rng.integers(len(SHARED_KEYS)))]
                    expected = content_for(key)
                    action = rng.random()
                    try:
                        if action < 0.4:
                            pool.put_array(key, expected)
                        elif action < 0.9:
                            got = pool.get_array(key)
                            assert np.array_equal(got, expected), key
                            checked[tid] += 1
                        else:
                            pool.delete(key)
                    except (zcopy.AlreadyExistsError, zcopy.NotFoundError, zcopy.NotSealedError):
                        pass
                counts[tid] += 1
            # Views taken earlier still hold their bytes, whatever happened to their keys.
            for got, expected in held:
                assert np.array_equal(got, expected)
        except BaseException as e:  # noqa: BLE001 - reported to the main thread
            errors.append((tid, repr(e)))

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIME_CAP + 10)
    assert not any(t.is_alive() for t in threads), "a worker hung"
    assert errors == []
    assert all(c > 0 for c in counts)
    assert sum(checked) > 0

    for tid in range(THREADS):
        for i in range(50):
            try:
                pool.delete("t%d-%d" % (tid, i))
            except zcopy.NotFoundError:
                pass
    for key in SHARED_KEYS:
        try:
            pool.delete(key)
        except zcopy.NotFoundError:
            pass
    gc.collect()
    stats = pool.stats()
    assert stats["key_count"] == 0
    assert stats["object_count"] == 0
    assert stats["used_bytes"] == 0
