"""A forked child has none of its parent's pool memory (the region is MADV_DONTFORK) and its copy
of every handle points into the parent's process state. Every Pool and Buffer method called in
the child must raise zcopy.PoolForkedError (a PoolClosedError) saying to open a new pool, and the
child's garbage collection and exit must not call into the library for them."""

import gc
import json
import multiprocessing
import os
import signal
import sys
import textwrap

import numpy as np
import pytest

import zcopy
from zcopy import _core

from test_lifetime import run_python

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")


def in_child(body):
    """Forks; the child runs body(report) and exits 0, report(name, outcome) sending one line to
    the parent as it goes (so a crash still shows how far it got). Returns (reports, wait status)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(r)

            def report(name, outcome):
                os.write(w, (json.dumps([name, outcome]) + "\n").encode())

            body(report)
        except BaseException as e:
            os.write(w, (json.dumps(["child", "%s: %s" % (type(e).__name__, e)]) + "\n").encode())
            code = 3
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(r)
    _, status = os.waitpid(pid, 0)
    reports = [json.loads(line) for line in b"".join(chunks).decode().splitlines()]
    return reports, status


def outcome_of(call):
    try:
        call()
    except zcopy.Error as e:
        return "%s|%s|%s" % (type(e).__name__, isinstance(e, zcopy.PoolClosedError), e)
    except Exception as e:
        return "other %s: %s" % (type(e).__name__, e)
    return "returned"


def exited_cleanly(status):
    if os.WIFSIGNALED(status):
        return "killed by %s" % signal.Signals(os.WTERMSIG(status)).name
    return os.WEXITSTATUS(status)


@pytest.fixture
def parent_state(pool):
    pool.put("bytes", b"parent bytes")
    pool.put_array("array", np.arange(10, dtype=np.int32))
    pool.put_object("object", {"v": np.arange(3)})
    pool.create_parts("parts", [8, 8]).seal()
    reader = pool.get("bytes")
    parts = pool.get("parts")
    writer = pool.create("unsealed", 16)
    arr = pool.get_array("array")
    gc.collect()
    before = pool.stats()
    return pool, reader, parts, writer, arr, before


def pool_calls(pool):
    return {
        "put": lambda: pool.put("new", b"x"),
        "get": lambda: pool.get("bytes"),
        "get-timeout": lambda: pool.get("bytes", timeout=1),
        "get_bytes": lambda: pool.get_bytes("bytes"),
        "get_array": lambda: pool.get_array("array"),
        "zcopy.get_array": lambda: zcopy.get_array(pool, "array"),
        "get_object": lambda: pool.get_object("object"),
        "put_array": lambda: pool.put_array("new", np.arange(3)),
        "put_object": lambda: pool.put_object("new", [1]),
        "create": lambda: pool.create("new", 8),
        "create_parts": lambda: pool.create_parts("new", [8]),
        "delete": lambda: pool.delete("bytes"),
        "contains": lambda: pool.contains("bytes"),
        "in": lambda: "bytes" in pool,
        "stats": lambda: pool.stats(),
        "region": lambda: pool.region(),
        "rdma_count": lambda: pool.rdma_count,
    }


def buffer_calls(reader, parts, writer):
    return {
        "reader.size": lambda: reader.size,
        "reader.len": lambda: len(reader),
        "reader.address": lambda: reader.address,
        "reader.array": lambda: reader.array(),
        "reader.memoryview": lambda: reader.memoryview(),
        "reader.tobytes": lambda: reader.tobytes(),
        "reader.part_count": lambda: reader.part_count,
        "parts.part_range": lambda: parts.part_range(0),
        "parts.part": lambda: parts.part(1),
        "reader.rdma_desc": lambda: reader.rdma_desc(),
        "reader.seal": lambda: reader.seal(),
        "reader.abort": lambda: reader.abort(),
        "writer.array": lambda: writer.array(),
        "writer.seal": lambda: writer.seal(),
        "writer.abort": lambda: writer.abort(),
    }


def test_every_pool_and_buffer_method_in_a_forked_child_raises_pool_forked_error(parent_state):
    pool, reader, parts, writer, arr, before = parent_state

    def child(report):
        for name, call in {**pool_calls(pool), **buffer_calls(reader, parts, writer)}.items():
            report(name, outcome_of(call))
        report("writer.writable", writer.writable)
        report("repr", repr(pool))

    reports, status = in_child(child)
    assert exited_cleanly(status) == 0, (exited_cleanly(status), reports)
    got = dict(reports)
    expected_calls = set(pool_calls(pool)) | set(buffer_calls(reader, parts, writer))
    assert set(got) == expected_calls | {"writer.writable", "repr"}
    for name in expected_calls:
        kind, is_closed_error, message = got[name].split("|", 2)
        assert (name, kind, is_closed_error) == (name, "PoolForkedError", "True")
        assert "fork" in message and "open a new zcopy.pool in the child" in message.lower(), (name, message)
    assert got["writer.writable"] is False
    assert "fork" in got["repr"]

    # The parent's pool, buffers and array are untouched by all of it.
    assert pool.get_bytes("bytes") == b"parent bytes"
    assert reader.tobytes() == b"parent bytes"
    assert arr.tolist() == list(range(10))
    writer.array()[:] = 5
    writer.seal()
    assert pool.get_bytes("unsealed") == b"\x05" * 16
    after = pool.stats()
    assert after["object_count"] == before["object_count"]
    assert after["key_count"] == before["key_count"]


def test_forked_child_releases_nothing_of_the_parent_when_it_drops_and_collects_handles(parent_state):
    pool, reader, parts, writer, arr, before = parent_state

    def child(report):
        nonlocal pool, reader, parts, writer, arr
        reader.release()
        with parts:
            pass
        pool.close()
        pool.close()
        report("closed", pool.closed)
        report("released", reader.released)
        del pool, reader, parts, writer, arr
        gc.collect()
        report("collected", True)

    reports, status = in_child(child)
    assert exited_cleanly(status) == 0, (exited_cleanly(status), reports)
    assert dict(reports) == {"closed": True, "released": True, "collected": True}
    assert pool.stats()["object_count"] == before["object_count"]
    assert pool.get_bytes("parts") == pool.get("parts").tobytes()
    assert reader.tobytes() == b"parent bytes"
    writer.abort()


def test_forked_child_never_releases_its_parents_handles_and_detaches_its_pool_finalizer(parent_state, handle_under):
    pool, reader, parts, writer, arr, before = parent_state
    handles = [reader._handle, parts._handle, writer._handle, handle_under(arr)]
    assert all(h.generation == _core._generation for h in handles) and pool._finalizer.alive

    def child(report):
        report("handles", [h.generation == _core._generation for h in handles])
        report("pool", pool._finalizer.alive)
        # Collecting them here must not call the library with the parent's pointers.
        for h in handles:
            h.__del__()
        report("collected", True)

    reports, status = in_child(child)
    assert exited_cleanly(status) == 0, reports
    assert dict(reports) == {"handles": [False] * 4, "pool": False, "collected": True}
    assert all(h.generation == _core._generation for h in handles) and pool._finalizer.alive
    assert reader.tobytes() == b"parent bytes"


def test_a_handle_of_an_earlier_generation_is_never_passed_to_the_library():
    # A handle from before a fork, collected in the child: this bogus pointer would crash.
    h = _core._Handle(0xDEAD0000)
    h.generation = _core._generation - 1
    del h
    gc.collect()


def test_forked_child_can_open_and_use_its_own_pool(parent_state):
    pool = parent_state[0]

    def child(report):
        with zcopy.Pool(4 << 20, pages="small", prefault=False) as own:
            own.put_array("mine", np.arange(4))
            report("own", own.get_array("mine").tolist())
            report("parent", outcome_of(lambda: pool.get_bytes("bytes")).split("|")[0])

    reports, status = in_child(child)
    assert exited_cleanly(status) == 0, reports
    assert dict(reports) == {"own": [0, 1, 2, 3], "parent": "PoolForkedError"}
    assert pool.get_bytes("bytes") == b"parent bytes"


def test_grandchild_refuses_the_pool_its_parent_opened_after_the_first_fork(pool):
    def child(report):
        own = zcopy.Pool(4 << 20, pages="small", prefault=False)
        own.put("k", b"child")
        reports, status = in_child(lambda rep: rep("grandchild", outcome_of(lambda: own.get_bytes("k")).split("|")[0]))
        report("grandchild", dict(reports)["grandchild"])
        report("status", exited_cleanly(status))
        report("child", own.get_bytes("k").decode())

    reports, status = in_child(child)
    assert exited_cleanly(status) == 0, reports
    assert dict(reports) == {"grandchild": "PoolForkedError", "status": 0, "child": "child"}


def _mp_child(pool, buf, queue):
    out = {}
    for name, call in (
        ("get_bytes", lambda: pool.get_bytes("bytes")),
        ("get_array", lambda: pool.get_array("array")),
        ("put", lambda: pool.put("n", b"x")),
        ("stats", lambda: pool.stats()),
        ("buf.tobytes", lambda: buf.tobytes()),
    ):
        out[name] = outcome_of(call).split("|")[0]
    with zcopy.Pool(4 << 20, pages="small", prefault=False) as own:
        own.put("k", b"own")
        out["own"] = own.get_bytes("k").decode()
    queue.put(out)


def test_multiprocessing_fork_child_gets_pool_forked_error_and_parent_pool_keeps_working(parent_state):
    pool, reader = parent_state[0], parent_state[1]
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_mp_child, args=(pool, reader, queue))
    proc.start()
    try:
        out = queue.get(timeout=60)
    finally:
        proc.join(60)
    assert proc.exitcode == 0
    assert out == {
        "get_bytes": "PoolForkedError",
        "get_array": "PoolForkedError",
        "put": "PoolForkedError",
        "stats": "PoolForkedError",
        "buf.tobytes": "PoolForkedError",
        "own": "own",
    }
    assert pool.get_bytes("bytes") == b"parent bytes"
    assert reader.tobytes() == b"parent bytes"


def test_multiprocessing_cannot_send_a_pool_to_a_worker(pool):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as workers:
        with pytest.raises(TypeError, match="zcopy.Pool"):
            workers.apply(len, (pool,))
    assert pool.stats()["capacity_bytes"] > 0


FORK_EXIT_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    import zcopy

    pool = zcopy.Pool(4 << 20, pages="small", prefault=False)
    pool.put_array("a", np.arange(5))
    arr = pool.get_array("a")
    buf = pool.get("a")
    pid = os.fork()
    if pid == 0:
        # A normal interpreter exit: atexit hooks and module teardown run in the child.
        sys.exit(0)
    _, status = os.waitpid(pid, 0)
    print("CHILD", status, flush=True)
    print("PARENT", pool.get_array("a").tolist(), arr.tolist(), buf.size > 0, flush=True)
    """
)


def test_forked_child_that_exits_normally_does_not_close_the_parents_pool(tmp_path):
    proc = run_python(FORK_EXIT_SCRIPT, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "CHILD 0\n" in proc.stdout, (proc.stdout, proc.stderr)
    assert "PARENT [0, 1, 2, 3, 4] [0, 1, 2, 3, 4] True" in proc.stdout
