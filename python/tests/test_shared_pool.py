"""Shared pools across processes: a pool made with `zcopy.Pool(size, name=...)` is attached by
name in other processes (`zcopy.Pool.attach`), which read the objects in place: the arrays they
get are views of the pool file's pages that the writer filled, not copies.

Children are started with multiprocessing's "spawn" method (a forked child cannot use its
parent's pool; the fork case has its own test). Each child runs one of the `_child_*` functions
below, reports through a queue, and is joined, or killed, in a finally block; every wait has a
timeout. Every pool name holds this process's pid and is unlinked after its test, even on failure.
"""

import gc
import hashlib
import itertools
import multiprocessing
import os
import pickle
import signal
import stat
import struct
import time
import traceback

import numpy as np
import pytest

import zcopy

SIZE = 32 << 20
WAIT = 60  # seconds: the bound of every wait for another process
SPAWN = multiprocessing.get_context("spawn")
_names = itertools.count()


@pytest.fixture
def name():
    """A pool name no other test or run uses; its file is removed after the test."""
    pool_name = "pytest-%d-%d" % (os.getpid(), next(_names))
    try:
        yield pool_name
    finally:
        gc.collect()
        try:
            zcopy.unlink(pool_name)
        except zcopy.NoSuchPoolError:
            pass


def create(name, size=SIZE, **kwargs):
    kwargs.setdefault("pages", "small")
    kwargs.setdefault("prefault", False)
    return zcopy.Pool(size, name=name, **kwargs)


def pool_file(name):
    return "/dev/shm/zcopy." + name


def digest(data):
    return hashlib.sha256(memoryview(data).cast("B")).hexdigest()


def file_offset(name, address):
    """Where `address` of this process lies in the pool file: (offset in the file, whether the
    mapping is shared), from /proc/self/maps; None when no mapping of the file covers it."""
    path = pool_file(name)
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) < 6 or fields[5] != path:
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if start <= address < end:
                return int(fields[2], 16) + (address - start), fields[1].endswith("s")
    return None


def view_facts(pool, name, arr):
    """What proves a numpy array is the pool's bytes in this process, as plain values."""
    address = arr.__array_interface__["data"][0]
    base, length = pool.region()
    return {
        "in_region": base <= address and address + arr.nbytes <= base + length,
        "file": file_offset(name, address),
        "owndata": bool(arr.flags.owndata),
        "writeable": bool(arr.flags.writeable),
    }


class Children:
    """Spawned children, each running `_child(function name, pool name, inbox, outbox, *args)`;
    joined at the end, and killed when they do not finish in time."""

    def __init__(self):
        self.procs = []

    def start(self, function, name, *args):
        inbox, outbox = SPAWN.Queue(), SPAWN.Queue()
        proc = SPAWN.Process(target=_child, args=(function.__name__, name, inbox, outbox) + args, daemon=True)
        proc.start()
        self.procs.append(proc)
        return proc, inbox, outbox

    def close(self):
        for proc in self.procs:
            proc.join(10)  # a child that finished exits at once; one that hangs is killed
        for proc in self.procs:
            if proc.is_alive():
                proc.kill()
                proc.join(WAIT)


@pytest.fixture
def children():
    group = Children()
    try:
        yield group
    finally:
        group.close()


def receive(outbox, proc=None):
    """The child's next report; its traceback as a test failure when it raised."""
    try:
        kind, value = outbox.get(timeout=WAIT)
    except Exception:
        state = "" if proc is None else " (exit code %s)" % proc.exitcode
        raise AssertionError("no report from the child within %d s%s" % (WAIT, state)) from None
    if kind == "error":
        raise AssertionError("the child failed:\n" + value)
    return value


def _child(function, name, inbox, outbox, *args):
    try:
        globals()[function](name, inbox, outbox, *args)
    except BaseException:
        outbox.put(("error", traceback.format_exc()))
        raise


# --- a producer and a consumer process -------------------------------------------------------


def _values():
    """What the producer stores, the same in every process."""
    rng = np.random.default_rng(1234)
    return {
        "matrix": rng.standard_normal((256, 64)).astype(np.float32),
        "big-endian": np.arange(1000, dtype=">i8").reshape(10, 100),
        "large": rng.integers(0, 1 << 60, size=(1 << 20) // 8, dtype=np.int64),
    }


def _part_sizes():
    return [100, 4096, 1, 70000]


def _child_producer(name, inbox, outbox, with_torch):
    """Creates the pool, puts arrays, parts, objects (and tensors), reports each one's digest and
    where its bytes are in the file, then closes the pool and exits: the objects stay."""
    pool = create(name)
    report = {}
    for key, arr in _values().items():
        pool.put_array(key, arr)
        got = pool.get_array(key)
        report[key] = (digest(arr), file_offset(name, got.__array_interface__["data"][0]))
    sizes = _part_sizes()
    with pool.create_parts("parts", sizes) as buf:
        for i, n in enumerate(sizes):
            buf.part(i)[:] = np.arange(n, dtype=np.uint64).astype(np.uint8) ^ (i + 1)
        buf.seal()
    parts = pool.get_parts("parts")
    report["parts"] = [(digest(p), file_offset(name, p.__array_interface__["data"][0])) for p in parts]
    obj = {"x": np.linspace(0, 1, 5000), "meta": ["run", 7, {"nested": True}]}
    pool.put_object("object", obj)
    got = pool.get_object("object")
    report["object"] = (digest(obj["x"]), file_offset(name, got["x"].__array_interface__["data"][0]))
    pool.put("bytes", b"plain bytes from the producer")
    if with_torch:
        import torch

        tensor = torch.arange(4096, dtype=torch.float64).reshape(64, 64) * 0.5
        pool.put_tensor("tensor", tensor)
        got = pool.get_tensor("tensor")
        report["tensor"] = (digest(tensor.numpy()), file_offset(name, got.data_ptr()))
    del got, parts
    pool.close()
    outbox.put(("ok", report))


def _child_consumer(name, inbox, outbox, with_torch):
    """Attaches the pool and reads everything, reporting each value's digest and the facts that
    show it is a view of the pool's bytes."""
    pool = zcopy.Pool.attach(name)
    report = {}
    for key in _values():
        arr = pool.get_array(key)
        report[key] = (digest(arr), view_facts(pool, name, arr), str(arr.dtype), arr.shape)
    report["parts"] = [(digest(p), view_facts(pool, name, p)) for p in pool.get_parts("parts")]
    obj = pool.get_object("object")
    report["object"] = (digest(obj["x"]), view_facts(pool, name, obj["x"]), obj["meta"])
    report["bytes"] = pool.get_bytes("bytes")
    if with_torch:
        tensor = pool.get_tensor("tensor")
        address = tensor.data_ptr()
        base, length = pool.region()
        report["tensor"] = (
            digest(tensor.numpy()),
            {"in_region": base <= address < base + length, "file": file_offset(name, address)},
            str(tensor.dtype),
            tuple(tensor.shape),
        )
    report["attached"] = pool.stats()["processes_attached"]
    outbox.put(("ok", report))


def _has_torch():
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def test_consumer_process_gets_views_of_the_bytes_a_producer_process_put(name, children):
    with_torch = _has_torch()
    proc, _, outbox = children.start(_child_producer, name, with_torch)
    made = receive(outbox, proc)
    proc.join(WAIT)
    assert proc.exitcode == 0
    proc, _, outbox = children.start(_child_consumer, name, with_torch)
    got = receive(outbox, proc)

    for key, arr in _values().items():
        produced_digest, produced_at = made[key]
        consumed_digest, facts, dtype, shape = got[key]
        assert consumed_digest == produced_digest == digest(arr), key
        assert (dtype, shape) == (str(arr.dtype), arr.shape)
        # The consumer's array is the very bytes of the file the producer wrote, read in place.
        assert facts == {"in_region": True, "file": produced_at, "owndata": False, "writeable": False}, key
        assert produced_at[1] is True  # a shared mapping of the file
    assert len(got["parts"]) == len(_part_sizes())
    for (produced_digest, produced_at), (consumed_digest, facts) in zip(made["parts"], got["parts"]):
        assert consumed_digest == produced_digest
        assert facts == {"in_region": True, "file": produced_at, "owndata": False, "writeable": False}
    assert got["object"][0] == made["object"][0]
    assert got["object"][1] == {"in_region": True, "file": made["object"][1], "owndata": False, "writeable": False}
    assert got["object"][2] == ["run", 7, {"nested": True}]
    assert got["bytes"] == b"plain bytes from the producer"
    if with_torch:
        assert got["tensor"][0] == made["tensor"][0]
        assert got["tensor"][1] == {"in_region": True, "file": made["tensor"][1]}
        assert got["tensor"][2:] == ("torch.float64", (64, 64))
    assert got["attached"] == 1  # the producer closed and left; only the consumer is attached


# --- two processes creating one key at once -------------------------------------------------


ROUNDS = 16


def _child_racer(name, inbox, outbox, barrier):
    pool = zcopy.Pool.attach(name)
    outcomes = []
    for i in range(ROUNDS):
        barrier.wait(WAIT)
        try:
            buf = pool.create("race-%d" % i, 64)
        except zcopy.AlreadyExistsError as e:
            outcomes.append(("exists", str(e)))
            continue
        buf.array()[:8] = np.frombuffer(struct.pack("<q", os.getpid()), dtype=np.uint8)
        buf.seal()
        buf.release()
        outcomes.append(("won", os.getpid()))
    outbox.put(("ok", outcomes))


def test_two_processes_creating_the_same_key_at_once_exactly_one_wins_the_other_gets_already_exists(name, children):
    pool = create(name)
    try:
        barrier = SPAWN.Barrier(2)
        runs = [children.start(_child_racer, name, barrier) for _ in range(2)]
        results = [receive(outbox, proc) for proc, _, outbox in runs]
        for i in range(ROUNDS):
            kinds = sorted(results[0][i][0:1] + results[1][i][0:1])
            assert kinds == ["exists", "won"], (i, results[0][i], results[1][i])
            winner = next(r[i][1] for r in results if r[i][0] == "won")
            loser_message = next(r[i][1] for r in results if r[i][0] == "exists")
            assert "race-%d" % i in loser_message
            assert struct.unpack("<q", pool.get_bytes("race-%d" % i)[:8])[0] == winner
        assert pool.stats()["object_count"] == ROUNDS
        pool.check()
    finally:
        pool.close()


# --- a get waiting in one process, woken by a seal in another --------------------------------


def _child_waiter(name, inbox, outbox, key):
    pool = zcopy.Pool.attach(name)
    try:
        pool.get(key)
        before = "visible"
    except zcopy.NotFoundError:
        before = "absent"
    except zcopy.NotSealedError:
        before = "unsealed"
    outbox.put(("ok", before))
    # One get, the key not sealed when it starts: it returns only once the seal woke it.
    arr = pool.get_array(key, timeout=WAIT)
    outbox.put(("ok", (digest(arr), view_facts(pool, name, arr)["in_region"])))


@pytest.mark.parametrize("before", ["absent", "unsealed"])
def test_get_with_a_timeout_in_one_process_is_woken_by_a_seal_in_another(name, children, before):
    pool = create(name)
    try:
        value = np.arange(5000, dtype=np.int32)
        writer = None
        if before == "unsealed":
            # The bytes put_array writes, in an object created now and sealed later.
            pool.put_array("model", value)
            model = pool.get("model").tobytes()
            writer = pool.create("k", len(model))
            writer.array()[:] = np.frombuffer(model, dtype=np.uint8)
        proc, _, outbox = children.start(_child_waiter, name, "k")
        assert receive(outbox, proc) == before
        time.sleep(0.2)  # lets the child block in its get; the checks do not depend on it
        if writer is None:
            pool.put_array("k", value)
        else:
            writer.seal()
        assert receive(outbox, proc) == (digest(value), True)
    finally:
        pool.close()


# --- delete and close in one process while another holds views ------------------------------


def _child_holder(name, inbox, outbox, key):
    """Holds a view of `key` until told, checking its bytes at each step."""
    pool = zcopy.Pool.attach(name)
    arr = pool.get_array(key)
    outbox.put(("ok", digest(arr)))
    while True:
        command = inbox.get(timeout=WAIT)
        if command == "check":
            outbox.put(("ok", digest(arr)))
        elif command == "get":
            outbox.put(("ok", digest(pool.get_array(key))))
        elif command == "release":
            del arr
            gc.collect()
            outbox.put(("ok", "released"))
        elif command == "exit":
            pool.close()
            outbox.put(("ok", "closed"))
            return


def test_delete_in_one_process_leaves_the_view_another_process_holds_unchanged_until_released(name, children):
    pool = create(name)
    try:
        old, new = np.full(4096, 7, dtype=np.int64), np.full(4096, -1, dtype=np.int64)
        pool.put_array("k", old)
        proc, inbox, outbox = children.start(_child_holder, name, "k")
        assert receive(outbox, proc) == digest(old)
        used_one = pool.stats()["used_bytes"]

        pool.delete("k")
        pool.put_array("k", new)  # a new object under the same key, while the old one is held
        assert "k" in pool
        stats = pool.stats()
        assert (stats["key_count"], stats["object_count"], stats["used_bytes"]) == (1, 2, 2 * used_one)
        inbox.put("check")
        assert receive(outbox, proc) == digest(old)  # the held view still shows the old bytes
        inbox.put("get")
        assert receive(outbox, proc) == digest(new)  # a new get reads the new object

        inbox.put("release")
        assert receive(outbox, proc) == "released"
        stats = pool.stats()
        assert (stats["object_count"], stats["used_bytes"]) == (1, used_one)  # the old one is freed
        inbox.put("exit")
        assert receive(outbox, proc) == "closed"
        pool.check()
    finally:
        pool.close()


def test_close_in_the_creator_leaves_its_objects_to_a_process_holding_them_and_to_new_attaches(name, children):
    value = np.arange(100000, dtype=np.float64)
    pool = create(name)
    pool.put_array("k", value)
    proc, inbox, outbox = children.start(_child_holder, name, "k")
    assert receive(outbox, proc) == digest(value)
    pool.close()
    assert pool.closed
    inbox.put("check")
    assert receive(outbox, proc) == digest(value)
    inbox.put("get")
    assert receive(outbox, proc) == digest(value)
    with zcopy.Pool.attach(name) as again:
        assert digest(again.get_array("k")) == digest(value)
        assert again.stats()["processes_attached"] == 2
    inbox.put("exit")
    assert receive(outbox, proc) == "closed"
    with zcopy.Pool.attach(name) as again:
        assert digest(again.get_array("k")) == digest(value)
        assert again.stats()["object_count"] == 1
        again.check()


# --- names, files and errors -----------------------------------------------------------------


def test_attach_of_a_missing_name_raises_no_such_pool_error_naming_the_file(name):
    with pytest.raises(zcopy.NoSuchPoolError) as info:
        zcopy.Pool.attach(name)
    e = info.value
    assert isinstance(e, FileNotFoundError) and isinstance(e, zcopy.SystemCallError) and isinstance(e, zcopy.Error)
    assert e.status == 10  # ZC_ERR_SYSTEM
    assert e.errno == 2  # ENOENT
    assert e.filename == pool_file(name)
    assert pool_file(name) in str(e) and "zcopy.Pool(size, name=%r)" % name in str(e)
    with pytest.raises(FileNotFoundError):
        zcopy.unlink(name)


@pytest.mark.parametrize("bad", ["a/b", "..", "", "x" * 129, "sp ace"])
def test_attach_and_create_with_a_bad_name_raise_invalid_argument(bad):
    with pytest.raises(zcopy.InvalidArgumentError, match="name"):
        zcopy.Pool.attach(bad)
    with pytest.raises(zcopy.InvalidArgumentError):
        zcopy.Pool(1 << 20, name=bad)
    with pytest.raises(zcopy.InvalidArgumentError):
        zcopy.unlink(bad)


def test_attach_of_a_file_that_is_not_a_pool_raises_invalid_argument(name):
    fd = os.open(pool_file(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(b"not a pool" * 1000)
    with pytest.raises(zcopy.InvalidArgumentError):
        zcopy.Pool.attach(name)


def test_attach_of_a_file_with_a_mode_no_pool_has_raises_system_call_error(name):
    fd = os.open(pool_file(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.close(fd)
    os.chmod(pool_file(name), 0o644)
    with pytest.raises(zcopy.SystemCallError) as info:
        zcopy.Pool.attach(name)
    assert not isinstance(info.value, zcopy.NoSuchPoolError)
    assert (info.value.errno, info.value.filename) == (13, pool_file(name))  # EACCES
    assert "0644" in str(info.value)


def test_creating_an_existing_name_raises_pool_exists_error_and_leaves_the_pool_alone(name):
    with create(name) as pool:
        pool.put("k", b"first")
        with pytest.raises(zcopy.PoolExistsError) as info:
            create(name)
        e = info.value
        assert isinstance(e, FileExistsError) and isinstance(e, zcopy.SystemCallError)
        assert (e.status, e.errno, e.filename) == (10, 17, pool_file(name))
        assert "zcopy.Pool.attach(%r)" % name in str(e)
        assert pool.get_bytes("k") == b"first"


def _child_create_put_close(name, inbox, outbox):
    pool = create(name)
    pool.put_array("k", np.arange(10))
    pool.put("bytes", b"left behind")
    pool.close()
    outbox.put(("ok", None))


def test_the_last_process_closing_leaves_the_file_and_its_objects_until_unlink(name, children):
    proc, _, outbox = children.start(_child_create_put_close, name)
    receive(outbox, proc)
    proc.join(WAIT)
    assert proc.exitcode == 0
    assert os.path.exists(pool_file(name))
    pool = zcopy.Pool.attach(name)
    assert pool.get_array("k").tolist() == list(range(10))
    assert pool.get_bytes("bytes") == b"left behind"
    assert pool.stats()["processes_attached"] == 1
    pool.close()
    gc.collect()
    assert os.path.exists(pool_file(name))
    zcopy.unlink(name)
    assert not os.path.exists(pool_file(name))
    with pytest.raises(zcopy.NoSuchPoolError):
        zcopy.Pool.attach(name)
    with create(name) as fresh:  # the name is free again, and the new pool is empty
        assert fresh.stats()["object_count"] == 0


def test_name_property_repr_and_file_mode(name):
    with zcopy.Pool(1 << 20, pages="small", prefault=False) as private:
        assert private.name is None
        assert private.reclaim() == 0
        assert private.check() is None
        assert private.stats()["processes_attached"] == 0
    with create(name) as pool, zcopy.Pool.attach(name) as other:
        assert pool.name == other.name == name
        assert "shared %r, 2 processes" % name in repr(pool)
        assert stat.S_IMODE(os.stat(pool_file(name)).st_mode) == 0o600
        with pytest.raises(TypeError, match="attach"):
            pickle.dumps(pool)


def test_shared_mode_0660_lets_the_group_attach_and_other_modes_are_refused(name):
    with pytest.raises(zcopy.InvalidArgumentError, match="shared_mode"):
        create(name, shared_mode=0o644)
    assert not os.path.exists(pool_file(name))
    with create(name, shared_mode=0o660), zcopy.Pool.attach(name, shared_mode=0o660) as other:
        assert stat.S_IMODE(os.stat(pool_file(name)).st_mode) == 0o660
        assert other.name == name


def test_attach_finds_a_pool_made_in_a_hugetlbfs_dir_there(tmp_path):
    name = "pytest-%d-huge" % os.getpid()
    with zcopy.Pool(4 << 20, name=name, pages="hugetlb", hugetlbfs_dir=tmp_path, prefault=False) as pool:
        pool.put("k", b"in the directory")
        assert os.listdir(tmp_path) == ["zcopy." + name]
        with zcopy.Pool.attach(name, hugetlbfs_dir=tmp_path, prefault=True) as other:
            assert other.get_bytes("k") == b"in the directory"
        with pytest.raises(zcopy.NoSuchPoolError) as info:
            zcopy.Pool.attach(name)  # not in /dev/shm
        assert info.value.filename == pool_file(name)


# --- processes that die, and the ones that stay ---------------------------------------------


def _child_dies_holding(name, inbox, outbox):
    """Holds views, a Buffer and an unsealed create, then waits to be killed."""
    pool = zcopy.Pool.attach(name)
    views = [pool.get_array("kept"), pool.get_object("object")["x"]]
    buf = pool.get("bytes")
    half = pool.create("half", 100000)
    half.array()[:] = 9
    outbox.put(("ok", (os.getpid(), [digest(v) for v in views], buf.size, pool.stats()["processes_attached"])))
    inbox.get(timeout=WAIT)  # never answered: the test kills this process
    outbox.put(("ok", (views, buf, half)))


def test_a_process_killed_holding_views_and_an_unsealed_create_is_reclaimed_by_a_survivor(name, children):
    pool = create(name)
    try:
        pool.put_array("kept", np.arange(5000))
        pool.put_object("object", {"x": np.ones(3000)})
        pool.put("bytes", b"held by the child")
        survivor_view = pool.get_array("kept")
        baseline = pool.stats()
        proc, _, outbox = children.start(_child_dies_holding, name)
        pid, _, size, attached = receive(outbox, proc)
        assert (size, attached) == (len(b"held by the child"), 2)
        assert pool.stats()["processes_attached"] == 2
        assert pool.stats()["object_count"] == baseline["object_count"] + 1  # the unsealed create
        with pytest.raises(zcopy.AlreadyExistsError):
            pool.create("half", 10)

        os.kill(pid, signal.SIGKILL)
        proc.join(WAIT)
        assert proc.exitcode == -signal.SIGKILL
        assert pool.stats()["processes_attached"] == 1  # the dead do not count

        assert pool.reclaim() == 1
        stats = pool.stats()
        assert stats["processes_reclaimed"] >= 1
        assert stats["processes_attached"] == 1
        assert (stats["object_count"], stats["used_bytes"], stats["key_count"]) == (
            baseline["object_count"],
            baseline["used_bytes"],
            baseline["key_count"],
        )
        pool.check()
        assert pool.reclaim() == 0  # nothing left to reclaim

        # The dead process's references are gone: deleting what only it held frees it at once.
        pool.delete("bytes")
        assert pool.stats()["object_count"] == baseline["object_count"] - 1
        # Its unsealed key can be created again.
        with pool.create("half", 16) as buf:
            buf.array()[:] = 1
            buf.seal()
        assert pool.get_bytes("half") == b"\x01" * 16
        assert survivor_view.tolist() == list(range(5000))
        pool.check()
    finally:
        pool.close()


def _child_forks_a_worker_then_dies_holding(name, inbox, outbox):
    """Holds a view and an unsealed create, forks a worker that only sleeps (it inherits this
    process's descriptors, as a fork-context multiprocessing worker does), then waits to be
    killed."""
    pool = zcopy.Pool.attach(name)
    view = pool.get_array("kept")
    half = pool.create("half", 1000)
    ready_r, ready_w = os.pipe()
    worker = os.fork()
    if worker == 0:
        os.write(ready_w, b"g")  # it runs: the fork handlers ran in it
        # Keeps only what the pool left it (the pool file's descriptor, as the fork found it),
        # so that waiting for this process's parent does not wait for it too.
        for fd in map(int, os.listdir("/proc/self/fd")):
            try:
                if fd > 2 and "zcopy." + name not in os.readlink("/proc/self/fd/%d" % fd):
                    os.close(fd)
            except OSError:
                pass
        time.sleep(WAIT)
        os._exit(0)
    os.close(ready_w)
    assert os.read(ready_r, 1) == b"g"
    outbox.put(("ok", (os.getpid(), worker)))
    inbox.get(timeout=WAIT)  # never answered: the test kills this process
    outbox.put(("ok", (view, half)))


def test_a_killed_process_is_reclaimed_while_a_worker_it_forked_lives_on(name, children):
    # A fork child shares its parent's open files: it must not keep the dead parent's process
    # slot looking alive (the library points the child's copy of the pool file at /dev/null).
    pool = create(name)
    worker = None
    try:
        pool.put_array("kept", np.arange(100))
        baseline = pool.stats()
        proc, _, outbox = children.start(_child_forks_a_worker_then_dies_holding, name)
        pid, worker = receive(outbox, proc)
        os.kill(pid, signal.SIGKILL)
        proc.join(WAIT)
        assert proc.exitcode == -signal.SIGKILL
        os.kill(worker, 0)  # the worker lives on
        assert pool.reclaim() == 1
        stats = pool.stats()
        assert stats["processes_attached"] == 1
        assert (stats["object_count"], stats["used_bytes"]) == (baseline["object_count"], baseline["used_bytes"])
        with pool.create("half", 16) as buf:
            buf.seal()
        pool.check()
    finally:
        if worker is not None:
            try:
                os.kill(worker, signal.SIGKILL)  # not this process's child: init reaps it
            except ProcessLookupError:
                pass
        pool.close()


def _child_attach_and_wait(name, inbox, outbox):
    pool = zcopy.Pool.attach(name)
    outbox.put(("ok", pool.stats()["processes_attached"]))
    command = inbox.get(timeout=WAIT)
    if command == "close":
        pool.close()
        outbox.put(("ok", "closed"))
    inbox.get(timeout=WAIT)


def test_processes_attached_counts_live_processes(name, children):
    pool = create(name)
    try:
        assert pool.stats()["processes_attached"] == 1
        runs = []
        for i in range(3):
            runs.append(children.start(_child_attach_and_wait, name))
            assert receive(runs[-1][2], runs[-1][0]) == i + 2
        assert pool.stats()["processes_attached"] == 4

        proc, inbox, outbox = runs[0]
        inbox.put("close")
        assert receive(outbox, proc) == "closed"
        assert pool.stats()["processes_attached"] == 3
        inbox.put("exit")
        proc.join(WAIT)

        proc, inbox, _ = runs[1]
        inbox.put("stay")
        inbox.put("exit")  # returns without closing the pool
        proc.join(WAIT)
        assert proc.exitcode == 0
        assert pool.stats()["processes_attached"] == 2

        proc = runs[2][0]
        proc.kill()
        proc.join(WAIT)
        assert pool.stats()["processes_attached"] == 1
        assert pool.stats()["processes_reclaimed"] == 0
        assert pool.reclaim() == 1
        assert pool.stats()["processes_reclaimed"] == 1
        pool.check()
    finally:
        pool.close()


# --- fork, check -----------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_gets_pool_forked_error_on_the_parent_handle_but_can_attach_by_name(name):
    from test_fork import exited_cleanly, in_child

    pool = create(name)
    try:
        pool.put_array("k", np.arange(100, dtype=np.int16))

        def child(report):
            try:
                pool.get_array("k")
                report("parent handle", "returned")
            except zcopy.PoolForkedError as e:
                report("parent handle", "zcopy.Pool.attach(%r)" % name in str(e))
            attached = zcopy.Pool.attach(name)
            arr = attached.get_array("k")
            report("values", arr.tolist())
            report("view", view_facts(attached, name, arr)["in_region"])
            report("attached", attached.stats()["processes_attached"])
            del arr
            attached.close()

        reports, status = in_child(child)
        assert exited_cleanly(status) == 0, reports
        assert dict(reports) == {"parent handle": True, "values": list(range(100)), "view": True, "attached": 2}
        assert pool.get_array("k").tolist() == list(range(100))
        assert pool.stats()["processes_attached"] == 1
        pool.check()
    finally:
        pool.close()


def _ledgers_area(path):
    """(offset, length) of the ledgers area, read from the pool file's header (layout 7:
    the area table starts at byte 64, 16 bytes an area, the ledgers second)."""
    with open(path, "rb") as f:
        head = f.read(64 + 16 * 8)
    assert head[:8] == b"ZCOPYSHM" and struct.unpack_from("<I", head, 8)[0] == 7, "not a layout-7 pool file"
    return struct.unpack_from("<QQ", head, 64 + 16)


def test_check_raises_internal_error_naming_a_broken_invariant(name):
    with create(name) as pool:
        pool.put("k", b"v")
        pool.check()
        offset, length = _ledgers_area(pool_file(name))
        assert length >= 64
        # The first ledger's header keeps reserved fields that must stay zero.
        fd = os.open(pool_file(name), os.O_RDWR)
        try:
            os.pwrite(fd, struct.pack("<Q", 1), offset + 16)
            with pytest.raises(zcopy.InternalError, match="reserved"):
                pool.check()
            os.pwrite(fd, struct.pack("<Q", 0), offset + 16)
        finally:
            os.close(fd)
        pool.check()
        assert pool.get_bytes("k") == b"v"
