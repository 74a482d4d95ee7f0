"""zcopy.transferqueue (a TransferQueue storage backend over zcopy.mooncake) against a real
Mooncake Store and a real TransferQueue, on loopback in a private network namespace.

pytest starts one runner, `unshare -rn python this_file --run`, which brings `lo` up, starts a
mooncake_master (LocalMaster), runs each case in its own child process (so that a case's
Mooncake clients, Ray and TransferQueue threads never meet another case's), stops the master by
its PID and prints one JSON object: case name -> the values it measured. Each test asserts on
its case's values.

Skipped, with the reason, where torch, TransferQueue, the Mooncake Store bindings or `unshare
-rn` are not available (probed in a subprocess first).
"""

import json
import os
import subprocess
import sys
import time

import pytest

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(PYTHON_DIR)
LOOPBACK = os.path.join(ROOT, "examples", "python", "mooncake_transfer.py")
PORT = 50071
MiB = 1 << 20
POOL_OPTIONS = {"rdma": "off", "pages": "small", "prefault": False}
CASE_TIMEOUT = 90

PROBE = r"""
import json, shutil, subprocess, sys
out = {}
try:
    import torch, transfer_queue
    import zcopy.mooncake as zm
    zm.master_binary()
    import zcopy.transferqueue
except BaseException as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
else:
    if shutil.which("unshare") is None:
        out["error"] = "no unshare(1): the master and clients run only in a private network namespace"
    else:
        p = subprocess.run(["unshare", "-rn", "true"], capture_output=True, text=True, timeout=30)
        if p.returncode:
            out["error"] = "unshare -rn failed: " + (p.stderr.strip() or "exit %d" % p.returncode)
print(json.dumps(out))
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PYTHON_DIR, env.get("PYTHONPATH")) if p)
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def _config(pool_size=256 * MiB, segment=256 * MiB):
    return {
        "master_server_address": "127.0.0.1:%d" % PORT,
        "local_hostname": "127.0.0.1",
        "metadata_server": "P2PHANDSHAKE",
        "global_segment_size": segment,
        "local_buffer_size": 16 * MiB,
        "pool_size": pool_size,
        "pool_options": POOL_OPTIONS,
    }


# --- the cases (each runs in its own process inside the namespace) ---------------------------


def _same(a, b):
    import numpy as np
    import torch

    if isinstance(a, torch.Tensor):
        if not isinstance(b, torch.Tensor) or a.dtype != b.dtype or a.is_nested != b.is_nested:
            return False
        if a.is_nested:  # a jagged shape holds a symbol of its own: compare the components
            x, y = a.unbind(), b.unbind()
            return a.layout == b.layout and len(x) == len(y) and all(_same(i, j) for i, j in zip(x, y))
        if a.shape != b.shape or a.layout != b.layout or a.requires_grad != b.requires_grad:
            return False
        if a.layout != torch.strided:
            return bool(torch.equal(a.to_dense(), b.to_dense()))
        return bool(torch.equal(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _kinds():
    import numpy as np
    import torch

    base = torch.arange(48, dtype=torch.float32).reshape(6, 8)
    return {
        "float32": torch.randn(64, 33),
        "bfloat16": torch.randn(5, 7).to(torch.bfloat16),
        "int64_scalar": torch.tensor(7),
        "bool": torch.tensor([True, False, True]),
        "empty": torch.empty(0, 4),
        "transposed": base.t(),
        "strided_slice": base[::2, 1::3],
        "jagged": torch.nested.nested_tensor([torch.arange(3.0), torch.arange(5.0)], layout=torch.jagged),
        "sparse": torch.sparse_coo_tensor([[0, 2], [1, 0]], [3.0, 4.0], (3, 2)),
        "requires_grad": torch.ones(3, requires_grad=True),
        "numpy": np.arange(20, dtype=np.int16).reshape(4, 5),
        "string": "a prompt of the sample",
        "dict": {"score": 0.5, "ids": [1, 2, 3], "t": torch.ones(2)},
        "none": None,
        "bytes": b"\x00\x01raw",
    }


def _client(**kw):
    from zcopy.transferqueue import ZcopyMooncakeStoreClient

    return ZcopyMooncakeStoreClient(_config(**kw))


def _in_pool(client, ptr):
    base, size = client.zstore._region
    return base <= ptr < base + size


def case_kinds():
    import gc

    import torch

    c = _client()
    values = _kinds()
    keys = ["%d@%s" % (i, name) for i, name in enumerate(values)]
    meta = c.put(keys, list(values.values()))
    got = c.get(keys, custom_backend_meta=meta)
    out = {"same": {n: _same(v, g) for (n, v), g in zip(values.items(), got)}}
    out["types"] = {n: type(g).__name__ for n, g in zip(values, got)}
    out["in_pool"] = {n: _in_pool(c, g.data_ptr()) for n, g in zip(values, got)
                      if isinstance(g, torch.Tensor) and not g.is_nested and g.layout == torch.strided
                      and not g.requires_grad and g.numel()}
    # A key named twice in one get reads its own value both times (Mooncake fills one buffer per
    # key named in a batch: the backend transfers it once and references it twice).
    twice = c.get([keys[0], keys[1], keys[0]])
    out["twice"] = _same(values["float32"], twice[0]) and _same(values["float32"], twice[2]) \
        and twice[0].data_ptr() == twice[2].data_ptr()
    del twice
    out["meta_sizes"] = all(isinstance(m, dict) and m["zc_size"] > 0 for m in meta)
    # Read again without the sizes: they come from what this client remembers or the master.
    out["same_without_meta"] = all(_same(v, g) for v, g in zip(values.values(), c.get(keys)))
    # A view outlives clear(): it holds its own buffer.
    first = got[0].clone()
    view = got[0]
    del got
    c.clear(keys)
    gc.collect()
    out["view_after_clear"] = bool(torch.equal(view, first))
    c.close()
    return out


def case_upsert():
    import torch

    c = _client()
    c.put(["0@f"], [torch.zeros(4)])
    meta = c.put(["0@f"], [torch.ones(6)])
    out = {"new_value": _same(c.get(["0@f"], custom_backend_meta=meta)[0], torch.ones(6))}
    # A batch replacing two stored keys (one with a value of the same size) next to a new key,
    # read back by this client and by another one that remembers no sizes (it asks the master).
    c.put(["1@f", "1@g"], [torch.zeros(5), torch.zeros(3)])
    keys = ["1@f", "2@f", "1@g"]
    c.put(keys, [torch.full((5,), 3.0), torch.arange(4.0), torch.ones(8)])
    out["batch_same_client"] = [t.tolist() for t in c.get(keys)]
    other = _client(pool_size=32 * MiB, segment=32 * MiB)
    out["batch_other_client"] = [t.tolist() for t in other.get(keys)]
    other.close()
    c.clear(["0@f"] + keys)
    c.close()
    return out


def case_batch_10000():
    import torch

    c = _client()
    n = 10000
    keys = ["%d@input_ids" % i for i in range(n)]
    values = [torch.full((16,), i, dtype=torch.int64) for i in range(n)]
    t0 = time.perf_counter()
    meta = c.put(keys, values)
    t1 = time.perf_counter()
    got = c.get(keys, custom_backend_meta=meta)
    t2 = time.perf_counter()
    out = {"count": len(got), "all_same": all(bool(torch.equal(a, b)) for a, b in zip(values, got)),
           "put_s": round(t1 - t0, 3), "get_s": round(t2 - t1, 3)}
    c.clear(keys)
    c.close()
    return out


def _reader(keys, meta, queue):
    try:
        c = _client()
        got = c.get(keys, custom_backend_meta=meta)
        queue.put({"sums": [float(t.double().sum()) for t in got], "in_pool": all(_in_pool(c, t.data_ptr()) for t in got),
                   "pid": os.getpid()})
        got_plain = c.get(keys)  # no sizes given: asked of the master
        queue.put({"same_without_meta": all(bool((a == b).all()) for a, b in zip(got, got_plain))})
        del got, got_plain
        c.close()
    except BaseException as e:  # the parent asserts on it
        queue.put({"error": "%s: %s" % (type(e).__name__, e)})


def case_two_processes():
    import multiprocessing

    import torch

    c = _client()
    keys = ["%d@x" % i for i in range(8)]
    values = [torch.randn(1024 * (i + 1)) for i in range(8)]
    meta = c.put(keys, values)
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_reader, args=(keys, meta, q))
    p.start()
    try:
        first = q.get(timeout=60)
        second = q.get(timeout=60) if "error" not in first else {}
    finally:
        p.join(30)
        if p.is_alive():
            p.kill()
            p.join(10)
    out = dict(first, **second)
    out["expected"] = [float(v.double().sum()) for v in values]
    out["writer_pid"] = os.getpid()
    c.clear(keys)
    c.close()
    return out


def case_missing_and_clear():
    import torch

    from zcopy import NotFoundError
    from zcopy.mooncake import MooncakeNotFoundError

    c = _client()
    out = {}
    try:
        c.get(["404@nothing"])
        out["missing"] = "no error"
    except MooncakeNotFoundError as e:
        out["missing"] = {"type": type(e).__name__, "not_found": isinstance(e, NotFoundError), "code": e.code}
    c.put(["1@a", "2@a"], [torch.ones(3), torch.zeros(3)])
    c.clear(["1@a", "2@a", "3@never-put"])
    try:
        c.get(["1@a"])
        out["after_clear"] = "still there"
    except MooncakeNotFoundError as e:
        out["after_clear"] = type(e).__name__
    c.close()
    return out


def case_pool_full():
    import torch

    from zcopy import OutOfMemoryError

    c = _client(pool_size=8 * MiB)
    kept = torch.arange(MiB // 4, dtype=torch.int32)  # 1 MiB
    c.put(["0@kept"], [kept])
    big = [torch.full((3 * MiB // 4,), i, dtype=torch.int32) for i in range(4)]  # 4 x 3 MiB
    out = {}
    try:
        c.put(["%d@big" % i for i in range(4)], big)
        out["error"] = None
    except OutOfMemoryError as e:
        out["error"] = {"type": type(e).__name__, "message": str(e)}
    out["kept_same"] = bool(torch.equal(c.get(["0@kept"])[0], kept))
    out["none_of_batch"] = all(rc != 1 for rc in c.zstore.store.batch_is_exist(["%d@big" % i for i in range(4)]))
    # The pool is whole again: a value larger than the pool is refused before anything is written.
    try:
        c.put(["0@huge"], [torch.zeros(3 * MiB, dtype=torch.int32)])
        out["too_large"] = None
    except OutOfMemoryError as e:
        out["too_large"] = str(e)
    c.put(["1@big"], [big[1]])
    out["fits_after"] = bool(torch.equal(c.get(["1@big"])[0], big[1]))
    c.clear(["0@kept", "1@big"])
    c.close()
    return out


def case_contract():
    import zcopy.transferqueue as ztq

    out = {"registered_client": ztq.CLIENT in ztq.StorageClientFactory._registry,
           "registered_manager": ztq.BACKEND in ztq.StorageManagerFactory._registry}
    real = ztq._version
    ztq._version = lambda: "9.9.9"
    try:
        ztq.check_contract()
        out["unknown_version"] = None
    except ztq.IncompatibleTransferQueue as e:
        out["unknown_version"] = str(e)
    finally:
        ztq._version = real
    saved = ztq.StorageKVClient.get
    ztq.StorageKVClient.get = lambda self, keys: None
    try:
        ztq.check_contract()
        out["changed_get"] = None
    except ztq.IncompatibleTransferQueue as e:
        out["changed_get"] = str(e)
    finally:
        ztq.StorageKVClient.get = saved
    return out


def case_transferqueue_api():
    """The backend chosen by TransferQueue's `storage_backend` setting and used through its own
    public KV API (tq.init / kv_batch_put / kv_batch_get / kv_clear), Ray on loopback."""
    import ray
    import torch
    import transfer_queue as tq
    from tensordict import TensorDict

    import zcopy.transferqueue  # noqa: F401  (registers the backend)

    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": _env()["PYTHONPATH"]}})
    out = {}
    try:
        conf = {"backend": {"storage_backend": "ZcopyMooncakeStore", "ZcopyMooncakeStore": _config()}}
        tq.init(conf)
        client = tq.get_client()
        out["manager"] = type(client.storage_manager).__name__
        n = 4
        keys = ["sample_%d" % i for i in range(n)]
        ids = torch.arange(n * 8, dtype=torch.int64).reshape(n, 8)
        mask = torch.ones(n, 8, dtype=torch.bool)
        tq.kv_batch_put(keys=keys, partition_id="train", fields=TensorDict({"input_ids": ids, "mask": mask},
                                                                           batch_size=n))
        got = tq.kv_batch_get(keys=keys, partition_id="train")
        read_ids = got["input_ids"]
        read_ids = torch.stack(list(read_ids.unbind())) if read_ids.is_nested else read_ids
        read_mask = got["mask"]
        read_mask = torch.stack(list(read_mask.unbind())) if read_mask.is_nested else read_mask
        out["fields"] = sorted(got.keys())
        out["ids_same"] = bool(torch.equal(read_ids, ids))
        out["mask_same"] = bool(torch.equal(read_mask, mask))
        store = client.storage_manager.storage_client.zstore.store
        out["in_mooncake"] = [int(x) for x in store.batch_is_exist(["0@input_ids", "3@mask"])]
        tq.kv_clear(keys=keys, partition_id="train")
        out["after_clear"] = [int(x) for x in store.batch_is_exist(["0@input_ids", "3@mask"])]
    finally:
        try:
            tq.close()
        finally:
            ray.shutdown()
    return out


CASES = {name[5:]: f for name, f in dict(globals()).items() if name.startswith("case_")}


# --- the runner (inside the namespace) -------------------------------------------------------


def run_all(names):
    import runpy

    runpy.run_path(LOOPBACK)["bring_loopback_up"]()
    from zcopy.mooncake import LocalMaster

    results = {}
    with LocalMaster(PORT, log=sys.stderr):
        for name in names:
            t0 = time.monotonic()
            try:
                p = subprocess.run([sys.executable, os.path.abspath(__file__), "--case", name], env=_env(),
                                   stdout=subprocess.PIPE, timeout=CASE_TIMEOUT)
                lines = p.stdout.decode(errors="replace").strip().splitlines()
                results[name] = json.loads(lines[-1]) if lines else {"error": "exit %d, no answer" % p.returncode}
            except subprocess.TimeoutExpired:
                results[name] = {"error": "did not finish in %d s" % CASE_TIMEOUT}
            except ValueError as e:
                results[name] = {"error": "unreadable answer: %s" % e}
            results[name]["_seconds"] = round(time.monotonic() - t0, 1)
    print(json.dumps(results))


def run_case(name):
    import traceback

    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # native libraries and loggers that print must not garble the answer
    try:
        answer = CASES[name]()
    except BaseException:
        answer = {"error": traceback.format_exc()}
    out.write(json.dumps(answer) + "\n")
    out.flush()
    os._exit(0)  # no teardown of native threads at exit


# --- the pytest side -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results():
    try:
        probe = subprocess.run([sys.executable, "-c", PROBE], env=_env(), capture_output=True, text=True, timeout=120)
        reason = json.loads(probe.stdout.strip().splitlines()[-1]).get("error")
    except (subprocess.TimeoutExpired, IndexError, ValueError):
        reason = "probing torch/transfer_queue/mooncake failed: %s" % (probe.stderr.strip().splitlines() or [""])[-1]
    if reason:
        pytest.skip("TransferQueue backend cannot run here: " + reason)
    log = os.path.join(os.environ.get("TMPDIR", "/tmp"), "zcopy-transferqueue-%d.log" % os.getpid())
    with open(log, "w") as err:
        p = subprocess.run(["unshare", "-rn", sys.executable, os.path.abspath(__file__), "--run"] + list(CASES),
                           env=_env(), stdout=subprocess.PIPE, stderr=err, timeout=CASE_TIMEOUT * len(CASES) + 60,
                           cwd=ROOT)
    lines = p.stdout.decode().strip().splitlines()
    with open(log, "a") as err:
        err.write("\n".join(lines[-1:]) + "\n")
    assert lines, "the runner answered nothing (exit %d); see %s" % (p.returncode, log)
    return json.loads(lines[-1])


def _case(results, name):
    out = results[name]
    assert "error" not in out or name == "pool_full", out.get("error")
    return out


def test_every_value_kind_reads_back_equal_and_tensors_are_views_of_the_pool(results):
    out = _case(results, "kinds")
    assert all(out["same"].values()), out["same"]
    assert out["in_pool"] and all(out["in_pool"].values()), out["in_pool"]
    assert out["types"]["numpy"] == "ndarray" and out["types"]["jagged"] == "NestedTensor"
    assert out["twice"], "a key named twice in one get reads its own value both times"
    assert out["meta_sizes"] and out["same_without_meta"]
    assert out["view_after_clear"]


def test_put_of_an_existing_key_replaces_its_value(results):
    assert _case(results, "upsert")["new_value"]


def test_batch_put_of_existing_keys_replaces_them_for_every_reader(results):
    out = _case(results, "upsert")
    expected = [[3.0] * 5, [0.0, 1.0, 2.0, 3.0], [1.0] * 8]
    assert out["batch_same_client"] == expected
    assert out["batch_other_client"] == expected


def test_batch_of_10000_keys_round_trips(results):
    out = _case(results, "batch_10000")
    assert out["count"] == 10000 and out["all_same"], out


def test_values_put_by_one_process_are_read_by_another(results):
    out = _case(results, "two_processes")
    assert "error" not in out, out
    assert out["pid"] != out["writer_pid"]
    assert out["sums"] == out["expected"]
    assert out["in_pool"] and out["same_without_meta"]


def test_missing_keys_raise_not_found_and_clear_removes_keys(results):
    out = _case(results, "missing_and_clear")
    assert out["missing"] == {"type": "MooncakeNotFoundError", "not_found": True, "code": -704}
    assert out["after_clear"] == "MooncakeNotFoundError"


def test_full_pool_raises_a_clear_error_and_loses_nothing_stored(results):
    out = results["pool_full"]
    assert isinstance(out["error"], dict), out
    assert out["error"]["type"] == "OutOfMemoryError" and "pool" in out["error"]["message"]
    assert "nothing of this batch was stored" in out["error"]["message"]
    assert out["kept_same"] and out["none_of_batch"]
    assert out["too_large"] and "larger than the whole pool" in out["too_large"]
    assert out["fits_after"]


def test_unknown_transferqueue_contract_is_refused_with_a_clear_message(results):
    out = _case(results, "contract")
    assert out["registered_client"] and out["registered_manager"]
    assert out["unknown_version"] and "9.9.9" in out["unknown_version"] and "0.1.11" in out["unknown_version"]
    assert out["changed_get"] and "StorageKVClient.get" in out["changed_get"]


def test_backend_works_through_transferqueue_public_kv_api(results):
    out = _case(results, "transferqueue_api")
    assert out["manager"] == "ZcopyMooncakeStorageManager"
    assert out["fields"] == ["input_ids", "mask"]
    assert out["ids_same"] and out["mask_same"]
    assert out["in_mooncake"] == [1, 1]
    assert out["after_clear"] == [0, 0]


if __name__ == "__main__":
    if sys.argv[1:2] == ["--run"]:
        run_all(sys.argv[2:])
    elif sys.argv[1:2] == ["--case"]:
        run_case(sys.argv[2])
