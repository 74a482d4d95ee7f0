"""zcopy.mooncake.ZeroCopyStore against a real Mooncake Store: a mooncake_master and its clients
on loopback, in a private network namespace that holds only `lo`.

pytest starts one helper process, `unshare -rn python this_file --serve`, which brings `lo` up,
starts a mooncake_master, a client A (in the helper) and, for the two-process cases, a client B
(a spawned child with its own segment). Each test sends the helper the name of a case, the helper
runs it and answers the values it measured as one JSON line; the test asserts on them. Every
process is stopped by its PID when the module ends (the helper stops its master and B on exit).

Skipped, with the reason, where the Mooncake Store bindings or mooncake_master cannot run here
(probed in a subprocess: a broken native library cannot take pytest down) or where `unshare -rn`
is not possible.
"""

import gc
import hashlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(PYTHON_DIR)
TRANSFER_EXAMPLE = os.path.join(ROOT, "examples", "python", "mooncake_transfer.py")
PORT = 50051  # the shared master; the master-killed case starts its own on PORT + 10
MiB = 1 << 20
POOL_OPTIONS = dict(rdma="off", pages="small", prefault=False)
CASE_TIMEOUT = 60.0

PROBE = r"""
import json, os, shutil, subprocess, sys
out = {}
try:
    from mooncake.store import MooncakeDistributedStore
    import zcopy.mooncake as zm
    out["master"] = zm.master_binary()
except BaseException as e:
    out["error"] = ("Mooncake Store bindings not usable (%s: %s); they need pip install "
                    "mooncake-transfer-engine-non-cuda and the system libraries its store.so links "
                    "(libibverbs1, libnuma1, libcurl4)" % (type(e).__name__, e))
    print(json.dumps(out)); sys.exit(0)
unshare = shutil.which("unshare")
if unshare is None:
    out["error"] = "no unshare(1): the master and clients run only in a private network namespace"
else:
    p = subprocess.run([unshare, "-rn", "true"], capture_output=True, text=True, timeout=30)
    if p.returncode:
        out["error"] = "unshare -rn failed: %s" % (p.stderr.strip().splitlines() or ["exit %d" % p.returncode])[-1]
print(json.dumps(out))
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PYTHON_DIR, env.get("PYTHONPATH")) if p)
    return env


def _probe():
    try:
        proc = subprocess.run([sys.executable, "-c", PROBE], env=_env(), capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "probing mooncake.store did not finish in 60 s"
    try:
        out = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return "probing mooncake.store crashed (exit %d): %s" % (proc.returncode, tail)
    return out.get("error")


# --- the pytest side -----------------------------------------------------------------------------


class Helper:
    """The namespaced helper process: one JSON command line in, one JSON answer line out."""

    def __init__(self):
        cmd = ["unshare", "-rn", sys.executable, os.path.abspath(__file__), "--serve"]
        self.log = open(os.path.join(os.environ.get("TMPDIR", "/tmp"), "zcopy-mooncake-store-%d.log" % os.getpid()), "w+")
        self.proc = subprocess.Popen(
            cmd, env=_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT
        )  # unshare execs python: proc.pid is the helper itself
        self.buffer = b""
        ready = self._read(60.0)
        if "skip" in ready:
            self.stop()
            pytest.skip(ready["skip"])
        self.info = ready

    def _read(self, timeout):
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("the helper answered nothing in %.0f s\n%s" % (timeout, self.log_tail()))
            ready, _, _ = select.select([self.proc.stdout], [], [], remaining)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    raise AssertionError("the helper exited (code %s)\n%s" % (self.proc.wait(5), self.log_tail()))
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def log_tail(self):
        self.log.flush()
        self.log.seek(0)
        lines = [l for l in self.log.read().splitlines() if not l.startswith(("I", "W"))]
        return "\n".join(lines[-40:])

    def run(self, case, timeout=CASE_TIMEOUT):
        self.proc.stdin.write((json.dumps({"case": case}) + "\n").encode())
        self.proc.stdin.flush()
        out = self._read(timeout)
        assert "error" not in out, "case %s raised:\n%s\n--- helper log\n%s" % (case, out["error"], self.log_tail())
        return out

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # EOF: the helper stops B and the master, then exits
            except OSError:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        self.log.close()


@pytest.fixture(scope="module")
def mc():
    reason = _probe()
    if reason is not None:
        print("skipping the Mooncake Store tests: " + reason)
        pytest.skip(reason)
    helper = Helper()
    try:
        yield helper
    finally:
        helper.stop()


def test_every_size_from_1_byte_to_64_MiB_reads_back_identical_over_the_pool(mc):
    out = mc.run("sizes")
    for row in out["rows"]:
        assert row["same"], row
        assert row["in_pool"] and not row["writable"], row
        assert row["bytes"] == row["size"], row
    assert [r["size"] for r in out["rows"]] == out["sizes"]
    assert out["sizes"][0] == 1 and out["sizes"][-1] == 64 * MiB
    assert out["buffer_1B"] == {"size": 1, "value": 0xAB, "sealed": True}
    assert out["objects_after"] == out["objects_before"]


def test_batch_of_1000_keys_is_one_size_query_and_one_transfer_call(mc):
    out = mc.run("batch")
    assert out["count"] == 1000 and out["all_same"]
    # One existence check per batch put call, whatever the batch size (its rollback must know
    # which keys are new); a single-key put is one call, plus the check with if_exists="raise".
    assert out["put_calls"] == {"batch_is_exist": 1, "batch_put_from": 1}
    assert out["single_put_calls"] == {"put_from": 1}
    assert out["single_raise_calls"] == {"batch_is_exist": 1, "put_from": 1}
    assert out["get_calls"] == {"batch_get_replica_desc": 1, "batch_get_into": 1}
    assert out["again_calls"] == {"batch_get_into": 1}
    assert out["objects_after"] == out["objects_before"]


def test_values_written_by_another_process_travel_into_this_pool(mc):
    out = mc.run("two_process")
    assert out["reader_host"] != out["writer_host"]
    # The writer put every value in its own segment (ReplicateConfig.preferred_segment), so
    # each one reached the reader's pool through the transfer engine.
    assert set(out["endpoints"]) == {out["writer_endpoint"]}
    assert out["writer_endpoint"] != out["reader_endpoint"]
    assert out["arrays_same"] and out["object_same"] and out["parts_same"]
    assert out["in_pool"]


def test_views_outlive_the_store_and_release_their_buffers_when_collected(mc):
    out = mc.run("lifetime")
    assert out["readable_after_close"] and out["owned_readable_after_close"]
    assert out["objects_while_alive"] == out["objects_before"] + 3
    assert out["objects_after_gc"] == out["objects_before"]
    assert out["used_after_gc"] == out["used_before"]
    assert out["closed"] and out["close_twice_ok"]


def test_missing_key_raises_not_found_and_leaves_no_buffer(mc):
    out = mc.run("missing")
    assert out["single"] == {"type": "MooncakeNotFoundError", "code": -704, "not_found": True, "key_error": True}
    assert out["batch"]["type"] == "MooncakeNotFoundError" and "'absent-2'" in out["batch"]["message"]
    assert out["objects_after"] == out["objects_before"]
    assert out["transfers"] == 0


def test_pool_and_mooncake_space_errors(mc):
    out = mc.run("space")
    # Larger than the pool: refused by zcopy before Mooncake is called.
    assert out["too_large"]["type"] == "TooLargeError" and out["too_large"]["exists"] == 0
    assert out["too_large"]["out_of_memory"]
    # The pool full while a batch is encoded: refused before Mooncake is called, nothing left.
    assert out["pool_full_put"]["type"] == "OutOfMemoryError" and out["pool_full_put"]["exists"] == [0, 0, 0]
    assert out["pool_full_put"]["objects_after"] == out["pool_full_put"]["objects_before"]
    # Larger than every Mooncake segment, in a batch: the whole batch is undone.
    assert out["no_space"]["type"] == "MooncakeOutOfMemoryError" and out["no_space"]["code"] == -200
    assert out["no_space"]["exists_after"] == [0, 0, 0]
    assert "the 2 new keys it stored were removed" in out["no_space"]["message"]
    # The pool too full for a get: OutOfMemoryError, and the get left nothing behind.
    assert out["get_pool_full"]["type"] == "OutOfMemoryError"
    assert out["get_pool_full"]["objects_after"] == out["get_pool_full"]["objects_before"]
    # Other Mooncake codes keep their code; bad arguments are zcopy's InvalidArgumentError.
    assert out["empty_key"] == {"type": "MooncakeError", "code": -600}
    assert out["unsealed"] == "InvalidArgumentError" and out["foreign"] == "InvalidArgumentError"


def test_a_remembered_size_gone_stale_costs_one_retry_and_reads_the_new_value(mc):
    out = mc.run("stale_size")
    assert out["first"] == list(range(10)) and out["second"] == "replaced by another client"
    assert out["calls"] == {"batch_get_into": 2, "batch_get_replica_desc": 1}
    assert out["objects_after"] == out["objects_before"]


def test_values_put_by_mooncake_itself_read_back_as_bytes(mc):
    out = mc.run("foreign_formats")
    assert out["array"] == {"dtype": "uint8", "bytes": "hello mooncake"}
    assert out["parts"] == ["ab" + "cde"]  # Mooncake's put_parts keeps no part bounds
    assert out["buffer"] == "hello mooncake"
    assert out["object_error"] == "FormatError" and out["objects_after"] == out["objects_before"]


def test_pool_full_while_views_are_alive_loses_nothing(mc):
    out = mc.run("pool_full")
    assert out["no_cache_error"] == "OutOfMemoryError"
    assert out["views_intact"] and out["views_intact_after_eviction"]
    assert out["cache_hit_calls"] == {} and out["cache_hit_same_address"]
    assert out["evicted"] >= 1 and out["big_same"]
    assert out["objects_after"] == out["objects_before"]


def test_master_killed_mid_run_raises_within_bounded_time(mc):
    out = mc.run("master_killed", timeout=90)
    assert out["before"] == "ok"
    for op in ("get", "put", "batch_get"):
        assert out[op]["type"] == "MooncakeError" and out[op]["code"] == -900, out
        assert out[op]["seconds"] < 20, out
    assert out["objects_after"] == out["objects_before"]
    assert out["pid_stopped"]


def test_example_moves_values_between_two_processes(mc):
    example = os.path.join(ROOT, "examples", "python", "mooncake_store.py")
    proc = subprocess.run([sys.executable, example, "--timeout", "60"], env=_env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=240)
    out = proc.stdout
    report = "exit %d\n--- stdout\n%s\n--- stderr (tail)\n%s" % (proc.returncode, out, proc.stderr[-3000:])
    assert proc.returncode == 0, report
    assert "mooncake store: 15 passed, 0 failed" in out and "FAILED" not in out, report
    assert "ok:     values in the writer's segment" in out, report
    assert re.search(r"ok: +got plain-16777216: 16777216 bytes put by Mooncake's put", out), report
    assert re.search(r"ok: +views released: pool objects [78] -> 0 ", out), report


def test_remembered_sizes_never_yield_wrong_bytes(mc):
    out = mc.run("stale_every_way")
    # Replaced by another client with a larger value, with one of the same size, removed.
    assert out["grown"] == {"size": 5000, "all_g": True, "calls": {"batch_get_into": 2, "batch_get_replica_desc": 1}}
    assert out["same_size"] == {"new_bytes": True, "calls": {"batch_get_into": 1}}
    assert out["removed"] == {"type": "MooncakeNotFoundError", "remembered_after": False}
    # Three stale sizes in a batch of 50: one more round for the whole batch, every value right.
    assert out["batch"] == {"same": True, "calls": {"batch_get_into": 2, "batch_get_replica_desc": 1}}
    assert out["not_remembered"] == [{"batch_get_replica_desc": 1, "batch_get_into": 1}] * 2
    first = ["int64", [3, 4], [[4 * r + c for c in range(4)] for r in range(3)]]
    assert out["relayout"] == [first, first, ["float64", [4, 3], [[(3 * r + c) / 2 for c in range(3)] for r in range(4)]],
                               ["float64", [4, 3], [[3 * r + c + 1.0 for c in range(3)] for r in range(4)]]]
    assert out["objects_after"] == out["objects_before"]


def test_tensors_of_both_formats_read_back_in_place(mc):
    out = mc.run("tensors")
    if "skip" in out:
        pytest.skip(out["skip"])
    assert all(out["ours"].values()), out["ours"]
    assert all(out["ours_in_pool"].values()), out["ours_in_pool"]
    # Every dtype Mooncake's put_tensor writes, 0 to 8 dimensions, read over the pool's bytes.
    assert len(out["theirs"]) == 15 + 2 and all(out["theirs"].values()), out["theirs"]
    assert all(out["theirs_in_pool"].values()), out["theirs_in_pool"]
    assert all(out["same_as_mooncake_get_tensor"].values()), out["same_as_mooncake_get_tensor"]
    assert out["mooncake_0d_shape"] == [1]  # and ours keeps the 0-d shape put (checked above)
    assert out["mixed_batch"]
    assert out["tensor_relayout"] == [True] * 6  # same size, other dtype and shape, then other data
    assert out["array_of_mooncake_tensor"] == 304 + 4 * 6 * 4  # plain bytes: its header and data
    assert out["objects_after"] == out["objects_before"]


def test_one_dimensional_tensors_of_every_dtype_read_back_as_pool_views_that_hold_their_buffer(mc):
    out = mc.run("flat_tensors")
    if "skip" in out:
        pytest.skip(out["skip"])
    assert len(out["same"]) == 2 * 15 and all(got == [True] * 3 for got in out["same"].values()), out["same"]
    assert all(out["batch_same"].values()), out["batch_same"]
    assert all(out["in_pool"].values()), out["in_pool"]
    assert out["empty"] == [["torch.int32", [0]]] * 2
    # One buffer while the tensor lives, still one while only a slice of it does, none after.
    before = out["objects_before"]
    assert out["objects_with_tensor"] == out["objects_with_slice_only"] == before + 1
    assert out["slice_same"]
    assert out["objects_after"] == before


def test_mooncake_tensor_header_is_checked_field_by_field_before_any_view(mc):
    out = mc.run("tensor_header")
    assert out["valid"] == [304, "float32", [2, 3]] and out["valid_offset_320"] == [320, "float32", [2, 3]]
    refused = out["refused"]
    assert sorted(refused) == sorted(out["variants"]) and all(r == "FormatError" for r in refused.values()), refused
    if out["torch"]:
        assert out["packed_like_mooncake"]
        assert out["get_tensor_refused"] == refused
        assert out["get_tensor_valid"] and out["get_tensor_offset_320"]
    assert out["objects_after"] == out["objects_before"]


def test_put_of_an_existing_key_keeps_the_old_value_and_answers_success_by_default(mc):
    out = mc.run("existing_key")
    # Mooncake's rule: every single-key put form answers success and the stored value stays.
    for form, row in out["single"].items():
        assert row["type"] is None, (form, row)
        assert row["value_after"] == row["value_before"], (form, row)
    assert sorted(out["single"]) == sorted(out["forms"])
    # No question asked first: one put_from, which Mooncake answers 0 without storing.
    assert out["refused_calls"] == {"put_from": 1}
    assert out["after_remove"] == [7, 7, 7]
    assert out["objects_after"] == out["objects_before"]


def test_put_of_an_existing_key_with_if_exists_raise_raises_already_exists_and_keeps_the_old_value(mc):
    out = mc.run("existing_key_raise")
    # Every single-key put form: MooncakeAlreadyExistsError naming the key, the old value intact.
    for form, row in out["single"].items():
        assert row["type"] == "MooncakeAlreadyExistsError" and row["code"] == -705, (form, row)
        assert row["already_exists"] and row["names_key"], (form, row)
        assert row["value_after"] == row["value_before"], (form, row)
    assert sorted(out["single"]) == sorted(out["forms"])
    # The refusal costs one existence query and no put.
    assert out["refused_calls"] == {"batch_is_exist": 1}
    # After remove(force=True) the key takes a new value.
    assert out["after_remove"] == [7, 7, 7]
    assert out["objects_after"] == out["objects_before"]


def test_if_exists_accepts_keep_or_raise_and_refuses_anything_else_before_registering(mc):
    out = mc.run("if_exists_modes")
    assert out["default"] == "keep" and out["strict"] == "raise"
    for which in ("bad_mode", "bad_set", "bad_setup"):
        assert out[which]["type"] == "InvalidArgumentError", (which, out[which])
        assert "if_exists" in out[which]["message"], (which, out[which])
    assert out["after_bad_set"] == "keep"


def test_batch_put_naming_an_existing_key_stores_the_new_keys_and_keeps_the_old_value_by_default(mc):
    out = mc.run("existing_key_batch")
    for form, row in out["batches"].items():
        assert row["type"] is None, (form, row)
        assert row["old_value_after"] == [1, 2, 3], (form, row)
        assert row["new_keys_exist"] == [1, 1], (form, row)
    assert out["batches"]["batch_put_arrays"]["new_key_value"] == [0, 1, 2, 3]
    assert out["twice"] == {"type": "InvalidArgumentError", "exists": 0}
    assert out["objects_after"] == out["objects_before"]


def test_batch_put_naming_an_existing_key_with_if_exists_raise_stores_none_of_its_keys(mc):
    out = mc.run("existing_key_batch_raise")
    for form, row in out["batches"].items():
        assert row["type"] == "MooncakeAlreadyExistsError" and row["code"] == -705, (form, row)
        assert "'old-b'" in row["message"], (form, row)
        assert row["old_value_after"] == [1, 2, 3], (form, row)
        assert row["new_keys_exist"] == [0, 0], (form, row)
    # The same key twice in one batch: refused before anything is stored.
    assert out["twice"] == {"type": "InvalidArgumentError", "exists": 0}
    assert out["objects_after"] == out["objects_before"]


def test_failed_batch_put_leaves_every_key_stored_before_with_its_old_value(mc):
    out = mc.run("failed_batch_keeps_old")
    # The audit's case: a stored key and a value no segment can hold, in one batch with new keys.
    # By default the stored key is left out of the put; Mooncake refuses the huge value, and the
    # rollback removes the new keys it stored and nothing else.
    keep = out["with_stored_key_keep"]
    assert keep["type"] == "MooncakeOutOfMemoryError" and keep["code"] == -200, keep
    assert keep["pre_after"] == list(range(10))
    assert keep["exists_after"] == [0, 1, 0, 0]
    # With if_exists="raise" the stored key refuses the batch before anything is stored.
    strict = out["with_stored_key_raise"]
    assert strict["type"] == "MooncakeAlreadyExistsError", strict
    assert strict["pre_after"] == list(range(10))
    assert strict["exists_after"] == [0, 1, 0, 0]
    # A batch of new keys that Mooncake refuses in part: the new keys it stored are removed, the
    # keys stored before (outside the batch) keep their values.
    assert out["new_keys"]["type"] == "MooncakeOutOfMemoryError" and out["new_keys"]["code"] == -200
    assert out["new_keys"]["exists_after"] == [0, 0, 0]
    assert out["new_keys"]["pre_after"] == list(range(10))
    assert out["objects_after"] == out["objects_before"]


# --- the helper (inside the namespace) -----------------------------------------------------------


def _sha(data):
    return hashlib.sha256(memoryview(data).cast("B")).hexdigest()


def _pattern(seed, size):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def _exc(e):
    return {"type": type(e).__name__, "code": getattr(e, "code", None), "message": str(e)}


class Counting:
    """A MooncakeDistributedStore wrapper counting the calls made through it."""

    def __init__(self, store):
        self._store = store
        self.calls = {}

    def __getattr__(self, name):
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*args, **kwargs)

        return call

    def take(self):
        calls, self.calls = self.calls, {}
        return calls


def _objects(pool):
    gc.collect()
    return pool.stats()["object_count"]


def _in_pool(pool, address):
    base, length = pool.region()
    return base <= address < base + length


class Ctx:
    def __init__(self, master):
        import zcopy
        from zcopy.mooncake import ZeroCopyStore

        self.master = master
        self.a = ZeroCopyStore.setup(
            256 * MiB, local_hostname="127.0.0.1", master_server_address=master.address,
            global_segment_size=96 * MiB, local_buffer_size=16 * MiB, pool_options=POOL_OPTIONS,
        )
        self.zcopy = zcopy
        self.b = None  # (process, connection), started by the first two-process case

    def b_call(self, **msg):
        import multiprocessing as mp

        if self.b is None:
            ctx = mp.get_context("spawn")
            here, there = ctx.Pipe()
            proc = ctx.Process(target=_side_b, args=(there, self.master.address), daemon=True)
            proc.start()
            there.close()
            self.b = (proc, here)
        proc, conn = self.b
        conn.send(msg)
        if not conn.poll(CASE_TIMEOUT):
            raise RuntimeError("process B did not answer %r in %.0f s" % (msg.get("op"), CASE_TIMEOUT))
        answer = conn.recv()
        if "error" in answer:
            raise RuntimeError("process B: " + answer["error"])
        return answer

    def close(self):
        if self.b is not None:
            proc, conn = self.b
            try:
                conn.send({"op": "quit"})
            except OSError:
                pass
            proc.join(15)
            if proc.is_alive():
                proc.terminate()
                proc.join(5)
        self.a.close()


def _side_b(conn, master_address):
    """Process B: a client with its own segment; puts what it is told into that segment."""
    import traceback

    import numpy as np

    from zcopy.mooncake import ReplicateConfig, ZeroCopyStore

    store = ZeroCopyStore.setup(
        64 * MiB, local_hostname="127.0.0.1", master_server_address=master_address,
        global_segment_size=64 * MiB, pool_options=POOL_OPTIONS,
    )
    try:
        while True:
            msg = conn.recv()
            if msg["op"] == "quit":
                break
            try:
                host = store.store.get_hostname()
                config = ReplicateConfig()
                config.replica_num = 1
                config.preferred_segment = host
                keys = ["b-arr-%d" % i for i in range(len(msg["sizes"]))]
                arrays = [_pattern(i, n) for i, n in enumerate(msg["sizes"])]
                store.batch_put_arrays(keys, arrays, config)
                obj = {"w": np.arange(1000, dtype=np.float64), "name": "from B"}
                store.put_object("b-obj", obj, config)
                store.put_parts("b-parts", b"head", np.arange(300, dtype=np.uint16), config=config)
                own = store.store.batch_get_replica_desc(keys)[keys[0]][0]
                endpoint = own.get_memory_descriptor().buffer_descriptor.transport_endpoint
                conn.send({"host": host, "endpoint": endpoint, "keys": keys, "sha": [_sha(a) for a in arrays]})
            except BaseException:
                conn.send({"error": traceback.format_exc()})
    finally:
        store.close()


def case_sizes(ctx):
    import numpy as np

    st = ctx.a
    before = _objects(st.pool)
    sizes = [1, 63, 64, 4095, 4096, 65537, MiB, 3 * 65536 + 17, 16 * MiB, 64 * MiB]
    rows = []
    for i, size in enumerate(sizes):
        src = _pattern(100 + i, size)
        st.put_array("size-%d" % size, src)
        got = st.get_array("size-%d" % size)
        rows.append({
            "size": size, "bytes": int(got.nbytes), "same": _sha(got) == _sha(src) and got.dtype == np.uint8,
            "in_pool": _in_pool(st.pool, got.ctypes.data), "writable": bool(got.flags.writeable),
        })
        del got
        st.remove("size-%d" % size, force=True)
    one = st.pool.create("one-byte", 1)
    one.array()[:] = 0xAB
    one.seal()
    st.put_buffer("one-byte", one)  # no copy: Mooncake reads the sealed buffer in place
    one.release()
    st.pool.delete("one-byte")
    got = st.get_buffer("one-byte")
    out = {"size": got.size, "value": int(got.array()[0]), "sealed": got.sealed}
    del got
    return {"sizes": sizes, "rows": rows, "buffer_1B": out, "objects_before": before, "objects_after": _objects(st.pool)}


def case_batch(ctx):
    import numpy as np

    from zcopy.mooncake import ZeroCopyStore

    st = ctx.a
    counting = st.store = Counting(st.store)  # the same store, its calls counted
    try:
        before = _objects(st.pool)
        keys = ["batch-%d" % i for i in range(1000)]
        st.batch_put_arrays(keys, [np.full(1024, i, np.int32) for i in range(1000)])  # 4 KiB each
        put_calls = counting.take()
        st.batch_put_arrays([k + "-again" for k in keys], [np.full(1024, i, np.int32) for i in range(1000)])
        assert counting.take() == put_calls
        st.put_array("batch-single", np.arange(3))
        single_put_calls = counting.take()
        _in_mode(ctx, "raise", lambda ctx: st.put_array("batch-single-raise", np.arange(3)))
        single_raise_calls = counting.take()
        for k in keys:
            st.forget(k)  # as if another client had put them: sizes come from the master
        arrays = st.batch_get_arrays(keys)
        get_calls = counting.take()
        same = all(a.shape == (1024,) and int(a[0]) == i and int(a[-1]) == i for i, a in enumerate(arrays))
        del arrays
        arrays = st.batch_get_arrays(keys)  # sizes remembered from the get above
        again_calls = counting.take()
        same = same and all(int(a[0]) == i for i, a in enumerate(arrays))
        del arrays
        return {"count": 1000, "all_same": same, "put_calls": put_calls, "get_calls": get_calls,
                "again_calls": again_calls, "single_put_calls": single_put_calls,
                "single_raise_calls": single_raise_calls, "objects_before": before, "objects_after": _objects(st.pool)}
    finally:
        st.store = counting._store


def case_two_process(ctx):
    import numpy as np

    sizes = [4096, MiB, 3 * 65536 + 17]
    told = ctx.b_call(op="put", sizes=sizes)
    from zcopy.mooncake import ReplicateConfig

    st = ctx.a
    config = ReplicateConfig()
    config.preferred_segment = st.store.get_hostname()
    st.put_array("a-own", np.arange(3), config)

    def endpoint(key):
        return descs[key][0].get_memory_descriptor().buffer_descriptor.transport_endpoint

    descs = st.store.batch_get_replica_desc(told["keys"] + ["b-obj", "b-parts", "a-own"])
    endpoints = [endpoint(k) for k in told["keys"] + ["b-obj", "b-parts"]]
    arrays = st.batch_get_arrays(told["keys"])
    obj = st.get_object("b-obj")
    parts = st.get_parts("b-parts")
    return {
        "reader_host": st.store.get_hostname(), "writer_host": told["host"], "endpoints": endpoints,
        # Each replica names the transfer endpoint of the segment holding it: B's, as B saw it.
        "writer_endpoint": told["endpoint"], "reader_endpoint": endpoint("a-own"),
        "arrays_same": [_sha(a) for a in arrays] == told["sha"],
        "object_same": obj["name"] == "from B" and bool((obj["w"] == np.arange(1000.0)).all()),
        "parts_same": [p.tobytes() for p in parts] == [b"head", np.arange(300, dtype=np.uint16).tobytes()],
        "in_pool": all(_in_pool(st.pool, a.ctypes.data) for a in arrays + [obj["w"]] + parts),
    }


def case_lifetime(ctx):
    import numpy as np

    from zcopy.mooncake import ZeroCopyStore

    pool = ctx.zcopy.Pool(32 * MiB, **POOL_OPTIONS)
    st = ZeroCopyStore(ctx.a.store, pool)
    st.put_array("life-a", np.arange(1000.0))
    st.put_object("life-o", {"x": np.arange(10)})
    before = _objects(pool)
    used_before = pool.stats()["used_bytes"]
    a = st.get_array("life-a")
    o = st.get_object("life-o")
    buf = st.get_buffer("life-a")
    st.close()
    st.close()
    alive = _objects(pool)
    readable = bool((a == np.arange(1000.0)).all()) and list(o["x"]) == list(range(10)) and buf.size > 0
    del a, o, buf
    after = _objects(pool)
    used_after = pool.stats()["used_bytes"]
    pool.close()
    # A store made by setup() closes its own pool; views stay readable after that too.
    # (with the argument names of Mooncake's own setup)
    owned = ZeroCopyStore.setup(16 * MiB, local_hostname="127.0.0.1", master_server_addr=ctx.master.address,
                                rdma_devices="", global_segment_size=0, pool_options=POOL_OPTIONS)
    v = owned.get_array("life-a")
    owned.close()
    owned_ok = bool((v == np.arange(1000.0)).all())
    del v
    gc.collect()
    return {"readable_after_close": readable, "owned_readable_after_close": owned_ok, "objects_before": before,
            "objects_while_alive": alive, "objects_after_gc": after, "used_before": used_before,
            "used_after_gc": used_after, "closed": st.closed and owned.closed, "close_twice_ok": True}


def case_missing(ctx):
    import numpy as np

    from zcopy.mooncake import ZeroCopyStore

    st = ctx.a
    counting = st.store = Counting(st.store)
    try:
        st.batch_put_arrays(["present-1", "present-2"], [np.arange(10), np.arange(20)])
        before = _objects(st.pool)
        counting.take()
        try:
            st.get_array("absent-1")
            single = None
        except ctx.zcopy.NotFoundError as e:
            single = {"type": type(e).__name__, "code": e.code, "not_found": isinstance(e, ctx.zcopy.NotFoundError),
                      "key_error": isinstance(e, KeyError)}
        try:
            st.batch_get_arrays(["present-1", "absent-2", "present-2"])
            batch = None
        except ctx.zcopy.Error as e:
            batch = _exc(e)
        transfers = counting.take().get("batch_get_into", 0)
        return {"single": single, "batch": batch, "transfers": transfers,
                "objects_before": before, "objects_after": _objects(st.pool)}
    finally:
        st.store = counting._store


def case_space(ctx):
    import numpy as np

    zcopy = ctx.zcopy
    st = ctx.a
    out = {}
    try:
        st.put_array("too-large", np.zeros(300 * MiB, np.uint8))  # pool: 256 MiB
    except zcopy.Error as e:
        out["too_large"] = dict(_exc(e), exists=st.store.is_exist("too-large"),
                                out_of_memory=isinstance(e, zcopy.OutOfMemoryError))
    before = _objects(st.pool)
    try:  # each fits the pool, the three do not: the third encode fails, nothing was put
        st.batch_put_arrays(["enc-1", "enc-2", "enc-3"], [np.ones(100 * MiB, np.uint8)] * 3)
    except zcopy.Error as e:
        out["pool_full_put"] = dict(_exc(e), exists=st.store.batch_is_exist(["enc-1", "enc-2", "enc-3"]),
                                    objects_before=before, objects_after=_objects(st.pool))
    try:  # 100 MiB fits the pool but no 96 MiB segment
        st.batch_put_arrays(["small-1", "huge", "small-2"], [np.zeros(10), np.zeros(100 * MiB, np.uint8), np.zeros(10)])
    except zcopy.Error as e:
        out["no_space"] = dict(_exc(e), exists_after=st.store.batch_is_exist(["small-1", "huge", "small-2"]))
    st.put_array("sixty", np.zeros(60 * MiB, np.uint8))
    hold = [st.get_array("sixty") for _ in range(3)]  # 180 MiB of 256 held by views
    st.remove("sixty", force=True)  # room in Mooncake's 96 MiB segment
    for key in ("forty-1", "forty-2"):
        st.put_array(key, np.zeros(40 * MiB, np.uint8))
    before = _objects(st.pool)
    try:
        st.batch_get_arrays(["forty-1", "forty-2"])
    except zcopy.Error as e:
        out["get_pool_full"] = dict(_exc(e), objects_before=before, objects_after=_objects(st.pool))
    del hold
    for key in ("forty-1", "forty-2"):
        st.remove(key, force=True)
    try:
        st.put_array("", np.arange(3))
    except zcopy.Error as e:
        out["empty_key"] = {"type": type(e).__name__, "code": e.code}
    w = st.pool.create("unsealed", 10)
    try:
        st.put_buffer("x", w)
    except zcopy.Error as e:
        out["unsealed"] = type(e).__name__
    w.abort()
    other = zcopy.Pool(1 * MiB, **POOL_OPTIONS)
    f = other.create("f", 10)
    f.seal()
    try:
        st.put_buffer("x", f)
    except zcopy.Error as e:
        out["foreign"] = type(e).__name__
    f.release()
    other.close()
    return out


def case_stale_size(ctx):
    import numpy as np

    st = ctx.a
    counting = st.store = Counting(st.store)
    try:
        st.put_array("stale", np.arange(10))
        before = _objects(st.pool)
        first = st.get_array("stale").tolist()
        # Another client replaces the value (Mooncake never overwrites: remove, then put).
        assert counting._store.remove("stale", True) == 0
        assert counting._store.put("stale", b"replaced by another client") == 0
        counting.take()
        second = st.get_array("stale").tobytes().decode()
        return {"first": first, "second": second, "calls": counting.take(),
                "objects_before": before, "objects_after": _objects(st.pool)}
    finally:
        st.store = counting._store


def case_foreign_formats(ctx):
    zcopy = ctx.zcopy
    st = ctx.a
    st.store.put("mc-put", b"hello mooncake")
    st.store.put_parts("mc-parts", b"ab", b"cde")
    before = _objects(st.pool)
    arr = st.get_array("mc-put")
    parts = st.get_parts("mc-parts")
    buf = st.get_buffer("mc-put")
    out = {"array": {"dtype": str(arr.dtype), "bytes": arr.tobytes().decode()},
           "parts": [p.tobytes().decode() for p in parts], "buffer": buf.tobytes().decode()}
    del arr, parts, buf
    try:
        st.get_object("mc-put")
    except zcopy.Error as e:
        out["object_error"] = type(e).__name__
    out.update(objects_before=before, objects_after=_objects(st.pool))
    return out


def case_pool_full(ctx):
    import numpy as np

    from zcopy.mooncake import ZeroCopyStore

    zcopy = ctx.zcopy
    pool = zcopy.Pool(16 * MiB, **POOL_OPTIONS)
    base = _objects(pool)
    keys = ["full-%d" % i for i in range(3)]
    srcs = [_pattern(200 + i, 4 * MiB) for i in range(3)]
    ctx.a.batch_put_arrays(keys, srcs)
    ctx.a.put_array("full-big", _pattern(300, 6 * MiB))
    out = {}
    plain = ZeroCopyStore(ctx.a.store, pool)
    views = plain.batch_get_arrays(keys)  # 12 MiB of 16 held
    try:
        plain.get_array("full-big")
    except zcopy.Error as e:
        out["no_cache_error"] = type(e).__name__
    out["views_intact"] = [_sha(v) for v in views] == [_sha(s) for s in srcs]
    del views
    plain.close()

    counting = Counting(ctx.a.store)
    cached = ZeroCopyStore(counting, pool, cache=True)
    first = cached.batch_get_arrays(keys[:2])
    counting.take()
    again = cached.get_array(keys[0])
    out["cache_hit_calls"] = counting.take()
    out["cache_hit_same_address"] = again.ctypes.data == first[0].ctypes.data
    del again
    held = first[1]  # a view of a cached copy stays alive through the eviction
    del first
    third = cached.get_array(keys[2])
    del third  # 12 MiB of 16 in the pool now, all of it cached, 4 MiB of it held by a view
    big = cached.get_array("full-big")  # 6 MiB: needs the room of cached copies
    out["evicted"] = 3 - len(cached.cached_keys) + 1
    out["big_same"] = _sha(big) == _sha(_pattern(300, 6 * MiB))
    out["views_intact_after_eviction"] = _sha(held) == _sha(srcs[1])
    del held, big
    cached.close()
    out["objects_before"] = base
    out["objects_after"] = _objects(pool)
    pool.close()
    return out


def case_master_killed(ctx):
    import numpy as np

    from zcopy.mooncake import LocalMaster, ZeroCopyStore

    zcopy = ctx.zcopy
    master = LocalMaster(PORT + 10, log=sys.stderr).start()
    try:
        st = ZeroCopyStore.setup(16 * MiB, local_hostname="127.0.0.1", master_server_address=master.address,
                                 global_segment_size=16 * MiB, pool_options=POOL_OPTIONS)
        st.put_array("v", np.arange(10))
        out = {"before": "ok" if list(st.get_array("v")) == list(range(10)) else "wrong"}
        before = _objects(st.pool)
        master.kill()
        for op, call in (("get", lambda: st.get_array("v")), ("put", lambda: st.put_array("w", np.arange(3))),
                         ("batch_get", lambda: st.batch_get_arrays(["v", "w"]))):
            t0 = time.monotonic()
            try:
                call()
                out[op] = {"type": "no error"}
            except zcopy.Error as e:
                out[op] = dict(_exc(e), seconds=time.monotonic() - t0)
        out["objects_before"] = before
        out["objects_after"] = _objects(st.pool)
        st.close()
    finally:
        master.stop()
    out["pid_stopped"] = master.proc.poll() is not None
    return out


def case_stale_every_way(ctx):
    import numpy as np

    st = ctx.a
    counting = st.store = Counting(st.store)
    other = counting._store  # calls made through it stand for another client's
    out = {}
    try:
        before = _objects(st.pool)
        st.put_array("grow", np.arange(10))
        st.get_array("grow")
        assert other.remove("grow", True) == 0 and other.put("grow", b"g" * 5000) == 0
        counting.take()
        got = st.get_array("grow")
        out["grown"] = {"size": int(got.nbytes), "all_g": got.tobytes() == b"g" * 5000, "calls": counting.take()}
        st.put_parts("same", b"a" * 100)
        size = st.get_buffer("same").size
        assert other.remove("same", True) == 0 and other.put("same", b"b" * size) == 0
        counting.take()
        got = st.get_buffer("same")
        out["same_size"] = {"new_bytes": got.tobytes() == b"b" * size, "calls": counting.take()}
        del got
        st.put_array("gone", np.arange(10))
        st.get_array("gone")
        assert other.remove("gone", True) == 0
        try:
            st.get_array("gone")
            out["removed"] = {"type": "no error"}
        except ctx.zcopy.Error as e:
            out["removed"] = {"type": type(e).__name__, "remembered_after": "gone" in st._hints}
        # The view a get makes before its transfer, from the layout it saw last time, is kept
        # only if the header that arrives is the one it was made from.
        relayout = []
        st.put_array("relayout", np.arange(12, dtype=np.int64).reshape(3, 4))
        for _ in range(2):
            got = st.get_array("relayout")
            relayout.append([str(got.dtype), list(got.shape), got.tolist()])
        assert other.remove("relayout", True) == 0
        st.put_array("relayout", np.arange(12, dtype=np.float64).reshape(4, 3) / 2)  # the same size
        got = st.get_array("relayout")
        relayout.append([str(got.dtype), list(got.shape), got.tolist()])
        assert other.remove("relayout", True) == 0
        st.put_array("relayout", np.arange(12, dtype=np.float64).reshape(4, 3) + 1)  # the same header
        got = st.get_array("relayout")
        relayout.append([str(got.dtype), list(got.shape), got.tolist()])
        out["relayout"] = relayout
        del got
        st.remove("relayout", force=True)
        keys = ["stale-batch-%d" % i for i in range(50)]
        st.batch_put_arrays(keys, [np.full(100, i, np.int64) for i in range(50)])
        st.batch_get_arrays(keys)
        for i in (3, 17, 49):
            assert other.remove(keys[i], True) == 0 and other.put(keys[i], b"r%d" % i) == 0
        counting.take()
        arrays = st.batch_get_arrays(keys)
        same = all(a.tobytes() == b"r%d" % i if i in (3, 17, 49) else (a.shape == (100,) and int(a[0]) == i)
                   for i, a in enumerate(arrays))
        out["batch"] = {"same": same, "calls": counting.take()}
        del arrays
        st.remember_sizes = False
        try:
            out["not_remembered"] = []
            for _ in range(2):
                st.get_array(keys[0])
                out["not_remembered"].append(counting.take())
        finally:
            st.remember_sizes = True
        for k in ["grow", "same"] + keys:
            st.remove(k, force=True)
        out["objects_before"] = before
        out["objects_after"] = _objects(st.pool)
        return out
    finally:
        st.store = counting._store


MOONCAKE_DTYPES = ["float32", "float64", "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64",
                   "uint64", "bool", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"]


def _same_tensor(a, b):
    import torch

    flat = lambda t: t.contiguous().reshape(-1).view(torch.uint8)  # noqa: E731 - bytes, for every dtype
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and bool(torch.equal(flat(a), flat(b)))


def case_tensors(ctx):
    try:
        import torch
    except ImportError:
        return {"skip": "torch is not installed"}
    st = ctx.a
    before = _objects(st.pool)
    ours = {
        "f32": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "bf16": torch.linspace(-1, 1, 64).to(torch.bfloat16).reshape(8, 8),
        "scalar": torch.tensor(3.25, dtype=torch.float64),
        "strided": torch.arange(30, dtype=torch.int16).reshape(5, 6).t(),
        "empty": torch.zeros(0, 5, dtype=torch.int32),
        "4MiB": torch.from_numpy(_pattern(7, 4 * MiB)).view(torch.float32).reshape(1024, 1024),
    }
    for name, t in ours.items():
        st.put_tensor("zt-" + name, t)
    got = {name: st.get_tensor("zt-" + name) for name in ours}
    out = {"ours": {name: _same_tensor(got[name], t) for name, t in ours.items()},
           "ours_in_pool": {name: _in_pool(st.pool, got[name].data_ptr()) for name, t in ours.items() if t.numel()}}
    theirs = {}
    for i, name in enumerate(MOONCAKE_DTYPES):
        raw = torch.from_numpy(_pattern(300 + i, 2 * 3 * 5 * 8))
        dtype = getattr(torch, name)
        theirs[name] = (raw % 2).bool() if dtype == torch.bool else raw.view(dtype).reshape(2, 3, 5, -1)
    theirs["0-d"] = torch.tensor(-7, dtype=torch.int64)
    theirs["8-d"] = torch.arange(2 ** 8, dtype=torch.float32).reshape([2] * 8)
    for name, t in theirs.items():
        assert st.store.put_tensor("mt-" + name, t) == 0, name
    keys = ["mt-" + name for name in theirs]
    read = st.batch_get_tensors(keys)
    out["theirs"] = {name: _same_tensor(r, t) for (name, t), r in zip(theirs.items(), read)}
    out["theirs_in_pool"] = {name: _in_pool(st.pool, r.data_ptr()) for name, r in zip(theirs, read)}
    out["same_as_mooncake_get_tensor"] = {k: _same_tensor(r, st.store.get_tensor(k)) for k, r in zip(keys, read)
                                          if k != "mt-0-d"}
    # Mooncake's own get_tensor gives a 0-d tensor back with shape (1,); the header says 0-d.
    out["mooncake_0d_shape"] = list(st.store.get_tensor("mt-0-d").shape)
    mixed = st.batch_get_tensors(["zt-f32", "mt-float32", "zt-bf16"])
    out["mixed_batch"] = (_same_tensor(mixed[0], ours["f32"]) and _same_tensor(mixed[1], theirs["float32"])
                          and _same_tensor(mixed[2], ours["bf16"]))
    relayout = []
    for t in (torch.arange(24, dtype=torch.float32).reshape(4, 6), torch.arange(24, dtype=torch.int32).reshape(6, 4),
              torch.arange(24, dtype=torch.int32).reshape(6, 4) * 3):
        st.store.remove("mt-relayout", True)
        assert st.store.put_tensor("mt-relayout", t) == 0  # the same size each time, as another client
        relayout += [_same_tensor(st.get_tensor("mt-relayout"), t) for _ in range(2)]
    out["tensor_relayout"] = relayout
    st.remove("mt-relayout", force=True)
    st.store.put_tensor("mt-small", torch.zeros(4, 6))
    out["array_of_mooncake_tensor"] = int(st.get_array("mt-small").nbytes)
    del got, read, mixed
    for k in ["zt-" + name for name in ours] + keys + ["mt-small"]:
        st.remove(k, force=True)
    out["objects_before"] = before
    out["objects_after"] = _objects(st.pool)
    return out


def case_flat_tensors(ctx):
    try:
        import torch
    except ImportError:
        return {"skip": "torch is not installed"}
    st = ctx.a
    before = _objects(st.pool)
    values = {}
    for i, name in enumerate(MOONCAKE_DTYPES):
        raw = torch.from_numpy(_pattern(400 + i, 8 * 40))
        dtype = getattr(torch, name)
        values[name] = (raw % 2).bool() if dtype == torch.bool else raw.view(dtype)
    for name, t in values.items():
        st.put_tensor("zf-" + name, t)
        assert st.store.put_tensor("mf-" + name, t) == 0, name
    keys = [prefix + name for name in values for prefix in ("zf-", "mf-")]
    # Three gets of each: the first decodes the value, the next ones make the view before the
    # transfer from the layout the first one learned.
    out = {"same": {k: [_same_tensor(st.get_tensor(k), values[k[3:]]) for _ in range(3)] for k in keys}}
    batch = st.batch_get_tensors(keys)
    out["batch_same"] = {k: _same_tensor(t, values[k[3:]]) for k, t in zip(keys, batch)}
    out["in_pool"] = {k: _in_pool(st.pool, t.data_ptr()) for k, t in zip(keys, batch)}
    del batch
    st.put_tensor("zf-empty", torch.zeros(0, dtype=torch.int32))
    empty = [st.get_tensor("zf-empty") for _ in range(2)]
    out["empty"] = [[str(t.dtype), list(t.shape)] for t in empty]
    del empty
    whole = st.get_tensor("zf-float32")
    out["objects_with_tensor"] = _objects(st.pool)
    part = whole[3:7]
    del whole
    out["objects_with_slice_only"] = _objects(st.pool)
    out["slice_same"] = _same_tensor(part, values["float32"][3:7])
    del part
    for k in keys + ["zf-empty"]:
        st.remove(k, force=True)
    out["objects_before"] = before
    out["objects_after"] = _objects(st.pool)
    return out


def _moon_header(dtype=0, ndim=2, flags=0, offset=304, nbytes=24, whole=(2, 3), shape=(2, 3), reserved=0,
                 magic=b"NOOM", version=1, header_size=304, pad=-1):
    """A header as Mooncake's put_tensor writes it (zcopy.mooncake's comment gives the layout)."""
    import struct

    def dims(d):
        return list(d) + [pad] * (8 - len(d))

    head = struct.pack("<4sHHiiQqq8q8qq", magic, version, header_size, dtype, ndim, flags, offset, nbytes,
                       *dims(whole), *dims(shape), reserved)
    return head + bytes(304 - len(head))


def case_tensor_header(ctx):
    import numpy as np

    from zcopy.mooncake import mooncake_tensor_layout

    st = ctx.a
    zcopy = ctx.zcopy
    before = _objects(st.pool)
    data = np.arange(6, dtype=np.float32).tobytes()
    variants = {
        "magic": _moon_header(magic=b"MOON") + data,
        "version": _moon_header(version=2) + data,
        "header_size": _moon_header(header_size=512) + data,
        "dtype": _moon_header(dtype=15) + data,
        "ndim": _moon_header(ndim=9) + data,
        "shard_flags": _moon_header(flags=1) + data,
        "reserved": _moon_header(reserved=1) + data,
        "offset_inside_header": _moon_header(offset=200) + data,
        "more_data_than_value": _moon_header(nbytes=28) + data,
        "data_past_end": _moon_header(offset=312) + data,
        "shape_not_data_size": _moon_header(shape=(3, 3)) + data,
        "negative_dims": _moon_header(shape=(-2, -3)) + data,
        "negative_whole_dims": _moon_header(whole=(-1, 3)) + data,
        "padding_not_minus_1": _moon_header(pad=0) + data,
        "truncated": _moon_header()[:200],
    }
    out = {"variants": sorted(variants), "refused": {}, "torch": False}
    for name, value in variants.items():
        try:
            mooncake_tensor_layout(value[:256], len(value))
            out["refused"][name] = "accepted"
        except zcopy.Error as e:
            out["refused"][name] = type(e).__name__
    valid = _moon_header() + data
    at_320 = _moon_header(offset=320) + bytes(16) + data
    out["valid"] = list(mooncake_tensor_layout(valid[:256], len(valid)))
    out["valid_offset_320"] = list(mooncake_tensor_layout(at_320[:256], len(at_320)))
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        import mooncake.store as ms

        out["torch"] = True
        expected = torch.arange(6, dtype=torch.float32).reshape(2, 3)
        out["packed_like_mooncake"] = ms._serialize_tensor(expected)[0] == _moon_header()
        out["get_tensor_refused"] = {}
        for name, value in variants.items():
            assert st.store.put("bad-" + name, value) == 0
            try:
                st.get_tensor("bad-" + name)
                out["get_tensor_refused"][name] = "accepted"
            except zcopy.Error as e:
                out["get_tensor_refused"][name] = type(e).__name__
        assert st.store.put("good", valid) == 0 and st.store.put("good-320", at_320) == 0
        out["get_tensor_valid"] = _same_tensor(st.get_tensor("good"), expected)
        out["get_tensor_offset_320"] = _same_tensor(st.get_tensor("good-320"), expected)
        for k in ["bad-" + name for name in variants] + ["good", "good-320"]:
            st.remove(k, force=True)
    out["objects_before"] = before
    out["objects_after"] = _objects(st.pool)
    return out


def _value_of(st, key):
    try:
        return st.get_array(key).tolist()
    except Exception as e:  # noqa: BLE001 - reported, the test asserts on it
        return "%s: %s" % (type(e).__name__, e)


def _in_mode(ctx, mode, case):
    """case(ctx) with client A's puts in if_exists `mode`, then back to the default."""
    ctx.a.if_exists = mode
    try:
        return case(ctx)
    finally:
        ctx.a.if_exists = "keep"


def case_existing_key(ctx):
    return _existing_key(ctx)


def case_existing_key_raise(ctx):
    return _in_mode(ctx, "raise", _existing_key)


def _existing_key(ctx):
    import numpy as np

    zcopy = ctx.zcopy
    st = ctx.a
    before = _objects(st.pool)
    forms = {
        "put_array": lambda k: st.put_array(k, np.array([2, 2, 2])),
        "put_object": lambda k: st.put_object(k, {"v": 2}),
        "put_parts": lambda k: st.put_parts(k, b"new", b"parts"),
        "put_buffer": None,
    }
    try:
        import torch

        forms["put_tensor"] = lambda k: st.put_tensor(k, torch.tensor([2, 2, 2]))
    except ImportError:
        pass
    single = {}
    for form, put in forms.items():
        key = "exists-" + form
        st.put_array(key, np.array([1, 1, 1]))
        value_before = _value_of(st, key)
        buf = None
        if put is None:
            buf = st.pool.create("exists-buffer", 3)
            buf.array()[:] = 2
            buf.seal()
            put = lambda k, b=buf: st.put_buffer(k, b)  # noqa: E731
        try:
            put(key)
            row = {"type": None}
        except zcopy.Error as e:
            row = dict(_exc(e), already_exists=isinstance(e, zcopy.AlreadyExistsError), names_key=repr(key) in str(e))
        if buf is not None:
            st.pool.delete("exists-buffer")
            buf.release()
        row.update(value_before=value_before, value_after=_value_of(st, key))
        single[form] = row
    counting = st.store = Counting(st.store)
    try:
        try:
            st.put_array("exists-put_array", np.arange(3))
        except zcopy.Error:
            pass
        refused_calls = counting.take()
    finally:
        st.store = counting._store
    st.remove("exists-put_array", force=True)
    st.put_array("exists-put_array", np.array([7, 7, 7]))
    after_remove = _value_of(st, "exists-put_array")
    for form in forms:
        st.remove("exists-" + form, force=True)
    return {"single": single, "forms": list(forms), "refused_calls": refused_calls, "after_remove": after_remove,
            "objects_before": before, "objects_after": _objects(st.pool)}


def case_if_exists_modes(ctx):
    zcopy = ctx.zcopy
    from zcopy.mooncake import ZeroCopyStore

    st = ctx.a
    out = {"default": st.if_exists}
    pool = zcopy.Pool(1 << 20, rdma="off")
    try:
        try:
            ZeroCopyStore(st.store, pool, if_exists="replace")
            out["bad_mode"] = None
        except zcopy.Error as e:
            out["bad_mode"] = _exc(e)
        # Nothing was registered by the refused constructor: the same region registers now.
        with ZeroCopyStore(st.store, pool, if_exists="raise") as strict:
            out["strict"] = strict.if_exists
    finally:
        pool.close()
    try:
        st.if_exists = "overwrite"
        out["bad_set"] = None
    except zcopy.Error as e:
        out["bad_set"] = _exc(e)
    out["after_bad_set"] = st.if_exists
    try:
        ZeroCopyStore.setup(1 << 20, local_hostname="127.0.0.1", if_exists=True)
        out["bad_setup"] = None
    except zcopy.Error as e:
        out["bad_setup"] = _exc(e)
    return out


def case_existing_key_batch(ctx):
    return _existing_key_batch(ctx)


def case_existing_key_batch_raise(ctx):
    return _in_mode(ctx, "raise", _existing_key_batch)


def _existing_key_batch(ctx):
    import numpy as np

    zcopy = ctx.zcopy
    st = ctx.a
    before = _objects(st.pool)
    st.put_array("old-b", np.array([1, 2, 3]))
    batches = {
        "batch_put_arrays": lambda ks: st.batch_put_arrays(ks, [np.arange(4)] * 3),
        "batch_put_objects": lambda ks: st.batch_put_objects(ks, [{"x": 1}] * 3),
        "batch_put_parts": lambda ks: st.batch_put_parts(ks, [[b"a", b"b"]] * 3),
        "batch_put_buffers": None,
    }
    try:
        import torch

        batches["batch_put_tensors"] = lambda ks: st.batch_put_tensors(ks, [torch.arange(4)] * 3)
    except ImportError:
        pass
    out = {}
    for form, put in batches.items():
        keys = [form + "-new-1", "old-b", form + "-new-2"]
        bufs = []
        if put is None:
            for i in range(3):
                b = st.pool.create("batch-buf-%d" % i, 4)
                b.array()[:] = i
                b.seal()
                bufs.append(b)
            put = lambda ks: st.batch_put_buffers(ks, bufs)  # noqa: E731
        try:
            put(keys)
            row = {"type": None}
        except zcopy.Error as e:
            row = _exc(e)
        for i, b in enumerate(bufs):
            st.pool.delete("batch-buf-%d" % i)
            b.release()
        row.update(old_value_after=_value_of(st, "old-b"),
                   new_keys_exist=st.store.batch_is_exist([keys[0], keys[2]]))
        if row["type"] is None:
            row["new_key_value"] = _value_of(st, keys[0])
            st.store.batch_remove([keys[0], keys[2]], True)
        out[form] = row
    try:
        st.batch_put_arrays(["twice", "twice"], [np.arange(3), np.arange(4)])
        twice = {"type": None}
    except zcopy.Error as e:
        twice = {"type": type(e).__name__}
    twice["exists"] = st.store.is_exist("twice")
    st.remove("old-b", force=True)
    return {"batches": out, "twice": twice, "objects_before": before, "objects_after": _objects(st.pool)}


def case_repeated_keys(ctx):
    import numpy as np

    zcopy = ctx.zcopy
    from zcopy.mooncake import ZeroCopyStore

    st = ctx.a
    st.put_array("rep-secret", np.full(256, 7.0, np.float32))
    st.put_array("rep-public", np.full(256, 1.0, np.float32))
    st.put_object("rep-obj", {"n": 3})
    # The secret passes through the pool first, so a buffer Mooncake left unfilled would show it.
    del_me = st.get_array("rep-secret")
    del del_me
    gc.collect()
    before = _objects(st.pool)
    got = st.batch_get_arrays(["rep-public", "rep-secret", "rep-public", "rep-public"])
    out = {"values": [float(a[0]) for a in got], "same_bytes": got[0].ctypes.data == got[2].ctypes.data,
           "all_equal": all(np.array_equal(got[i], np.full(256, 1.0, np.float32)) for i in (0, 2, 3))}
    del got
    objs = st.batch_get_objects(["rep-obj", "rep-obj"])
    out["objects"] = objs
    out["objects_after"], out["objects_before"] = _objects(st.pool), before
    pool = zcopy.Pool(16 * MiB, **POOL_OPTIONS)
    cached = ZeroCopyStore(st.store, pool, cache=True)
    secret = cached.get_array("rep-secret")
    cached.forget("rep-secret")
    del secret
    gc.collect()
    twice = cached.batch_get_arrays(["rep-public", "rep-public"])
    out["cached_values"] = [float(a[0]) for a in twice]
    del twice
    out["cached_later"] = float(cached.get_array("rep-public")[0])
    cached.close()
    pool.close()
    return out


def test_a_batch_naming_a_key_twice_reads_its_value_for_both_never_other_bytes(mc):
    out = mc.run("repeated_keys")
    assert out["values"] == [1.0, 7.0, 1.0, 1.0] and out["all_equal"], out
    assert out["same_bytes"], "a key named twice is transferred once and referenced twice"
    assert out["objects"] == [{"n": 3}, {"n": 3}]
    assert out["objects_after"] == out["objects_before"]
    assert out["cached_values"] == [1.0, 1.0] and out["cached_later"] == 1.0


def case_failed_batch_keeps_old(ctx):
    import numpy as np

    zcopy = ctx.zcopy
    st = ctx.a
    before = _objects(st.pool)
    st.put_array("keep-pre", np.arange(10))
    huge = np.zeros(100 * MiB, np.uint8)  # fits the 256 MiB pool, no 96 MiB segment
    out = {}
    mixed = ["keep-mixed-1", "keep-pre", "keep-huge", "keep-mixed-2"]

    def put_mixed(ctx):
        try:
            st.batch_put_arrays(mixed, [np.arange(3), np.arange(10) * 100, huge, np.arange(4)])
            return {"type": None}
        except zcopy.Error as e:
            return _exc(e)

    for mode in ("keep", "raise"):
        row = _in_mode(ctx, mode, put_mixed)
        row.update(pre_after=_value_of(st, "keep-pre"), exists_after=st.store.batch_is_exist(mixed))
        out["with_stored_key_" + mode] = row
    keys = ["keep-new-1", "keep-huge", "keep-new-2"]
    try:
        st.batch_put_arrays(keys, [np.arange(5), huge, np.arange(6)])
        out["new_keys"] = {"type": None}
    except zcopy.Error as e:
        out["new_keys"] = _exc(e)
    out["new_keys"].update(exists_after=st.store.batch_is_exist(keys), pre_after=_value_of(st, "keep-pre"))
    del huge
    st.store.remove("keep-pre", True)  # whatever happened to it
    out.update(objects_before=before, objects_after=_objects(st.pool))
    return out


CASES = {name[5:]: fn for name, fn in list(globals().items()) if name.startswith("case_")}


def serve():
    """The helper: starts the master and client A, then runs cases named on stdin."""
    import runpy
    import traceback

    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # native libraries that print must not garble the answers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    runpy.run_path(TRANSFER_EXAMPLE)["bring_loopback_up"]()
    from zcopy.mooncake import LocalMaster

    master = LocalMaster(PORT, log=sys.stderr)
    ctx = None
    try:
        try:
            master.start()
            ctx = Ctx(master)
        except BaseException as e:
            out.write(json.dumps({"skip": "Mooncake Store cannot run here: %s: %s" % (type(e).__name__, e)}) + "\n")
            return
        out.write(json.dumps({"ready": True, "master_pid": master.pid}) + "\n")
        for line in sys.stdin:
            name = json.loads(line)["case"]
            try:
                answer = CASES[name](ctx)
            except BaseException:
                answer = {"error": traceback.format_exc()}
            gc.collect()
            out.write(json.dumps(answer) + "\n")
    finally:
        if ctx is not None:
            ctx.close()
        master.stop()


if __name__ == "__main__" and sys.argv[1:] == ["--serve"]:
    serve()
