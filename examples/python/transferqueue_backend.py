"""TransferQueue with zcopy's Mooncake Store backend, on one machine: one process puts a batch of
tensor fields, another reads them.

    cargo build --release --lib
    pip install torch numpy mooncake-transfer-engine-non-cuda==0.3.13.post1 transferqueue==0.1.11
    PYTHONPATH=python python examples/python/transferqueue_backend.py

The script re-runs itself under `unshare -rn` (a private network namespace holding only `lo`),
brings `lo` up and starts, all on 127.0.0.1 and CPU only: a mooncake_master (LocalMaster), a Ray
head (`ray.init`), and TransferQueue (`tq.init`) with `storage_backend: ZcopyMooncakeStore`. The
driver puts a batch of samples with `kv_batch_put`; a Ray task (another process) joins the same
TransferQueue with `tq.init()`, reads them with `kv_batch_get` into its own zcopy pool and sends
back checksums that the driver compares with its own. At the end the driver closes TransferQueue,
shuts Ray down (which stops the processes Ray started) and stops the master by its PID.

Exits 0 when the reader saw every value, 1 on a mismatch or failure, 77 (skipped) with the reason
where torch, TransferQueue, the Mooncake Store bindings or a private network namespace are not
available.
"""

import os
import shutil
import subprocess
import sys

SKIP_EXIT = 77
HERE = os.path.dirname(os.path.abspath(__file__))
PORT = 50081
MiB = 1 << 20


def skip(reason):
    print("transferqueue backend: skipped: %s" % reason)
    sys.exit(SKIP_EXIT)


def backend_config():
    return {
        "master_server_address": "127.0.0.1:%d" % PORT,
        "local_hostname": "127.0.0.1",
        "metadata_server": "P2PHANDSHAKE",
        "global_segment_size": 256 * MiB,
        "local_buffer_size": 16 * MiB,
        "pool_size": 256 * MiB,
        "pool_options": {"rdma": "off", "pages": "small", "prefault": False},
    }


def reader(keys, partition):
    """In a Ray worker process: join the running TransferQueue and read the batch."""
    import torch
    import transfer_queue as tq

    import zcopy.transferqueue  # noqa: F401  (registers the backend in this process too)

    tq.init()  # finds the controller the driver started; the backend config comes from it
    data = tq.kv_batch_get(keys=keys, partition_id=partition)
    out = {}
    for field in sorted(data.keys()):
        rows = data[field].unbind() if data[field].is_nested else list(data[field])
        out[field] = [float(r.double().sum()) for r in rows]
    pool = tq.get_client().storage_manager.storage_client.zstore
    out["pid"] = os.getpid()
    out["pool"] = repr(pool)
    # Not tq.close(): in a process that joined, it would kill the shared controller too.
    del data, pool, torch
    return out


def inside():
    import runpy
    import time

    runpy.run_path(os.path.join(HERE, "mooncake_transfer.py"))["bring_loopback_up"]()
    try:
        import ray
        import torch
        import transfer_queue as tq
        from tensordict import TensorDict

        import zcopy.transferqueue  # noqa: F401
        from zcopy.mooncake import LocalMaster
    except ImportError as e:
        skip(str(e))

    with LocalMaster(PORT) as master:
        print("mooncake_master pid %d on %s" % (master.pid, master.address))
        ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
        try:
            tq.init({"backend": {"storage_backend": "ZcopyMooncakeStore", "ZcopyMooncakeStore": backend_config()}})
            n = 16
            keys = ["sample_%d" % i for i in range(n)]
            fields = TensorDict({
                "input_ids": torch.randint(0, 32000, (n, 512)),
                "logprobs": torch.randn(n, 512),
                "hidden": torch.randn(n, 4, 1024, dtype=torch.bfloat16),
            }, batch_size=n)
            t0 = time.perf_counter()
            tq.kv_batch_put(keys=keys, partition_id="train", fields=fields)
            print("driver (pid %d): kv_batch_put of %d samples x %d fields in %.1f ms"
                  % (os.getpid(), n, len(fields.keys()), (time.perf_counter() - t0) * 1e3))
            got = ray.get(ray.remote(reader).remote(keys, "train"), timeout=120)
            expected = {f: [float(r.double().sum()) for r in fields[f]] for f in sorted(fields.keys())}
            ok = all(got[f] == expected[f] for f in expected)
            print("reader (pid %d, %s): %s" % (got["pid"], got["pool"], "every value equal" if ok else "MISMATCH"))
            tq.kv_clear(keys=keys, partition_id="train")
        finally:
            try:
                tq.close()
            finally:
                ray.shutdown()
    print("stopped: TransferQueue, Ray, mooncake_master")
    return 0 if ok else 1


def main():
    if sys.argv[1:] == ["--inside"]:
        return inside()
    try:
        import ray  # noqa: F401
        import torch  # noqa: F401
        import transfer_queue  # noqa: F401
        from mooncake.store import MooncakeDistributedStore  # noqa: F401
    except ImportError as e:
        skip("%s (pip install torch mooncake-transfer-engine-non-cuda==0.3.13.post1 transferqueue==0.1.11)" % e)
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode:
        skip("unshare -rn is not possible here: Ray and the master run only in a private network namespace")
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    python_dir = os.path.join(os.path.dirname(os.path.dirname(HERE)), "python")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (python_dir, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([unshare, "-rn", sys.executable, os.path.abspath(__file__), "--inside"], env=env)
    try:
        return proc.wait(180)
    except subprocess.TimeoutExpired:
        print("transferqueue backend: no result in 180 s")
        proc.terminate()
        proc.wait(30)
        return 1


if __name__ == "__main__":
    sys.exit(main())
