"""Views keep their object alive; the memory goes back when the last one dies, in any order."""

import gc
import itertools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import zcopy

N = 4096
EXPECTED = ((np.arange(N) * 7 + 3) % 256).astype(np.uint8)


def used(pool):
    return pool.stats()["used_bytes"]


def objects(pool):
    return pool.stats()["object_count"]


def is_mapped(address):
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= address < hi:
                return True
    return False


def test_used_bytes_back_to_zero_after_last_view_of_unsealed_buffer(pool):
    buf = pool.create("k", N)
    whole = buf.array()
    whole[:] = EXPECTED
    derived = whole[100:200]
    strided = whole[::3]
    typed = buf.array(np.uint32)
    mv = buf.memoryview()
    mv_slice = mv[10:20]
    assert used(pool) >= N
    buf.release()
    assert buf.released
    gc.collect()
    assert used(pool) >= N, "released while views were alive"
    assert np.array_equal(whole, EXPECTED)

    del whole, strided, typed
    gc.collect()
    assert used(pool) >= N
    assert np.array_equal(derived, EXPECTED[100:200])
    del derived, mv
    gc.collect()
    assert used(pool) >= N, "a memoryview slice still holds the object"
    assert bytes(mv_slice) == bytes(EXPECTED[10:20])
    del mv_slice
    gc.collect()
    assert used(pool) == 0
    assert objects(pool) == 0


def test_used_bytes_back_to_zero_after_last_reader_view_of_deleted_key(pool):
    w = pool.create("k", N)
    w.array()[:] = EXPECTED
    w.seal()
    w.release()
    reader = pool.get("k")
    view = reader.array()
    sliced = view[N // 2 :]
    mv = memoryview(view)
    arr_from_mv = np.frombuffer(reader.memoryview(), dtype=np.uint16)
    reader.release()
    pool.delete("k")
    assert "k" not in pool
    gc.collect()
    assert used(pool) >= N
    del view
    gc.collect()
    assert used(pool) >= N
    assert np.array_equal(sliced, EXPECTED[N // 2 :])
    assert bytes(mv) == bytes(EXPECTED)
    assert np.array_equal(arr_from_mv, EXPECTED.view(np.uint16))
    del sliced, mv
    gc.collect()
    assert used(pool) >= N
    del arr_from_mv
    gc.collect()
    assert used(pool) == 0
    assert objects(pool) == 0


def test_used_bytes_back_to_zero_after_get_array_and_get_object_views_die(pool):
    pool.put_array("a", np.arange(1000, dtype=np.float64))
    pool.put_object("o", {"x": np.arange(500, dtype=np.int32), "y": [np.ones(3)]})
    a = pool.get_array("a")[::2]
    o = pool.get_object("o")
    x = o["x"]
    pool.delete("a")
    pool.delete("o")
    del o
    gc.collect()
    assert used(pool) > 0
    assert np.array_equal(a, np.arange(0, 1000, 2, dtype=np.float64))
    assert np.array_equal(x, np.arange(500, dtype=np.int32))
    del a, x
    gc.collect()
    assert used(pool) == 0
    assert objects(pool) == 0


def test_with_block_releases_buffer_but_views_keep_bytes(pool):
    pool.put("k", bytes(EXPECTED))
    with pool.get("k") as buf:
        view = buf.array()
    assert buf.released
    pool.delete("k")
    gc.collect()
    assert np.array_equal(view, EXPECTED)
    assert used(pool) > 0
    del view
    gc.collect()
    assert used(pool) == 0


def drop_buffer(how, names):
    if how == "del":
        names.pop("buffer")
    else:
        names["buffer"].release()
        names.pop("buffer")


@pytest.mark.parametrize("delete_key", [False, True], ids=["key-kept", "key-deleted"])
@pytest.mark.parametrize("how", ["del", "release"])
@pytest.mark.parametrize("order", list(itertools.permutations(["view", "buffer", "pool"])), ids="-".join)
def test_every_destruction_order_is_safe(make_pool, order, how, delete_key):
    pool = make_pool(4 << 20)
    w = pool.create("k", N)
    w.array()[:] = EXPECTED
    w.seal()
    w.release()
    names = {"buffer": pool.get("k")}
    names["view"] = names["buffer"].array()
    names["slice"] = names["view"][N - 10 :]
    if delete_key:
        pool.delete("k")
    del w

    for step in order:
        if step == "view":
            assert np.array_equal(names["view"], EXPECTED)
            del names["view"], names["slice"]
        elif step == "buffer":
            drop_buffer(how, names)
        else:
            pool.close()
            assert pool.closed
            with pytest.raises(zcopy.PoolClosedError):
                pool.stats()
        gc.collect()
        if "view" in names:
            # Alive views read the right bytes, whatever died before them (even the pool).
            assert np.array_equal(names["view"], EXPECTED)
            assert np.array_equal(names["slice"], EXPECTED[N - 10 :])
        if not pool.closed:
            s = pool.stats()
            held = "view" in names or "buffer" in names
            assert s["object_count"] == (1 if (held or not delete_key) else 0)
            assert (s["used_bytes"] > 0) == (held or not delete_key)
    assert pool.closed


def test_views_read_right_bytes_after_pool_close(pool):
    pool.put_array("a", np.arange(256, dtype=np.int16))
    pool.put_object("o", {"w": np.full(100, 2.5), "meta": "text"})
    raw = pool.create("raw", N)
    raw.array()[:] = EXPECTED
    raw.seal()
    a = pool.get_array("a")
    o = pool.get_object("o")
    r = pool.get("raw").array()
    unsealed = pool.create("unsealed", 64)
    uview = unsealed.array()
    uview[:] = 5
    pool.close()
    gc.collect()
    assert np.array_equal(a, np.arange(256, dtype=np.int16))
    assert np.array_equal(o["w"], np.full(100, 2.5)) and o["meta"] == "text"
    assert np.array_equal(r, EXPECTED)
    assert np.all(uview == 5)
    uview[0] = 6  # still the creator's writable memory
    assert uview[0] == 6
    with pytest.raises(zcopy.PoolClosedError):
        unsealed.seal()
    unsealed.release()
    del a, o, r, uview
    gc.collect()


def test_pool_mapping_stays_until_last_view_after_close_then_goes(make_pool):
    pool = make_pool(4 << 20)
    base, _ = pool.region()
    buf = pool.create("k", N)
    view = buf.array()
    view[:] = EXPECTED
    buf.seal()
    buf.release()
    pool.close()
    gc.collect()
    assert is_mapped(base)
    assert np.array_equal(view, EXPECTED)
    del view
    gc.collect()
    assert not is_mapped(base), "the pool's mapping leaked after its last buffer was released"


def test_release_twice_releases_once(pool):
    pool.put("k", bytes(EXPECTED))
    first = pool.get("k")
    second = pool.get("k")
    keep = second.array()
    first.release()
    first.release()
    gc.collect()
    pool.delete("k")
    # A double release would have dropped the reference `second` still holds.
    assert objects(pool) == 1 and used(pool) > 0
    assert np.array_equal(keep, EXPECTED)
    second.release()
    second.release()
    gc.collect()
    assert objects(pool) == 1
    del keep
    gc.collect()
    assert objects(pool) == 0 and used(pool) == 0


def test_abort_then_release_frees_once_and_key_is_reusable(pool):
    pool.put("other", b"x" * 100)
    buf = pool.create("k", 1000)
    assert objects(pool) == 2
    buf.abort()
    assert buf.released
    buf.release()
    buf.release()
    gc.collect()
    assert objects(pool) == 1
    assert "k" not in pool
    again = pool.create("k", 10)
    again.array()[:] = 1
    again.seal()
    assert pool.get_bytes("k") == b"\x01" * 10
    assert pool.get_bytes("other") == b"x" * 100
    assert objects(pool) == 2


def test_abort_with_live_view_frees_when_view_dies_and_keeps_key_taken(pool):
    buf = pool.create("k", 1000)
    view = buf.array()
    view[:] = 1
    buf.abort()
    buf.release()
    gc.collect()
    assert "k" not in pool
    assert objects(pool) == 1
    with pytest.raises(zcopy.AlreadyExistsError):
        pool.create("k", 10)
    del view
    gc.collect()
    assert objects(pool) == 0 and used(pool) == 0
    pool.create("k", 10).abort()
    assert objects(pool) == 0


def test_releasing_unsealed_buffer_aborts_it(pool):
    buf = pool.create("k", 100)
    buf.release()
    gc.collect()
    assert objects(pool) == 0 and used(pool) == 0
    with pytest.raises(zcopy.NotFoundError):
        pool.get("k")
    pool.create("k", 100).seal()
    assert "k" in pool


def test_released_buffer_refuses_use(pool):
    buf = pool.create("k", 16)
    buf.seal()
    buf.release()
    with pytest.raises(zcopy.InvalidArgumentError):
        buf.array()
    with pytest.raises(zcopy.InvalidArgumentError):
        buf.tobytes()
    assert pool.get_bytes("k") == pool.get("k").tobytes()
    assert objects(pool) == 1


EXIT_SCRIPT = textwrap.dedent(
    """
    import atexit, gc, threading
    import numpy as np

    EXPECTED = (np.arange(4096) % 256).astype(np.uint8)
    keep = {}

    def late():
        # Registered before zcopy is imported, so it runs after zcopy's exit hooks closed the pools.
        assert np.array_equal(keep["view"], EXPECTED)
        assert np.array_equal(keep["arr"], np.arange(100.0))
        assert keep["obj"]["w"].sum() == 4950
        print("LATE-OK", flush=True)

    atexit.register(late)
    import zcopy

    pool = zcopy.Pool(8 << 20, pages="small", prefault=False)
    w = pool.create("raw", 4096)
    w.array()[:] = EXPECTED
    w.seal()
    buf = pool.get("raw")
    keep["view"] = buf.array()
    keep["slice"] = keep["view"][10:]
    pool.put_array("arr", np.arange(100.0))
    keep["arr"] = pool.get_array("arr")
    pool.put_object("obj", {"w": np.arange(100)})
    keep["obj"] = pool.get_object("obj")
    unsealed = pool.create("unsealed", 128)
    uview = unsealed.array()
    uview[:] = 1
    mv = pool.get("raw").memoryview()

    cycle = [keep["view"]]
    cycle.append(cycle)

    closed = zcopy.Pool(4 << 20, pages="small", prefault=False)
    closed.put_array("c", np.arange(10))
    closed_view = closed.get_array("c")
    closed.close()

    unclosed = zcopy.Pool(4 << 20, pages="small", prefault=False)
    unclosed.put("x", b"abc")
    xbuf = unclosed.get("x")

    def holder():
        local = pool.get_array("arr")
        ready.set()
        done.wait()

    ready, done = threading.Event(), threading.Event()
    t = threading.Thread(target=holder, daemon=True)
    t.start()
    ready.wait(5)

    @atexit.register
    def early():
        assert np.array_equal(keep["slice"], EXPECTED[10:])
        assert np.array_equal(closed_view, np.arange(10))
        print("EARLY-OK", flush=True)

    del w
    gc.collect()
    print("MAIN-OK", flush=True)
    """
)


def run_python(code, cwd):
    """Runs `python -c code` with this package importable, in a fresh interpreter."""
    env = dict(os.environ)
    pkg_parent = os.path.dirname(os.path.dirname(os.path.abspath(zcopy.__file__)))
    env["PYTHONPATH"] = pkg_parent + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=cwd, env=env)


def test_interpreter_exit_with_live_views_and_unclosed_pools_is_clean(tmp_path):
    proc = run_python(EXIT_SCRIPT, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Segmentation" not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "Exception ignored" not in proc.stderr
    assert proc.stdout.split() == ["MAIN-OK", "EARLY-OK", "LATE-OK"]


def test_interpreter_exit_with_pool_closed_and_buffer_released_but_views_alive(tmp_path):
    code = textwrap.dedent(
        """
        import numpy as np, zcopy
        p = zcopy.Pool(4 << 20, pages="small", prefault=False)
        b = p.create("k", 64)
        v = b.array()
        v[:] = 7
        b.seal()
        b.release()
        p.delete("k")
        p.close()
        assert int(v.sum()) == 7 * 64
        print("OK")
        """
    )
    proc = run_python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Segmentation" not in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout.strip() == "OK"
