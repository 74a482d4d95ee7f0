"""TransferQueue's KV put and get with zcopy's Mooncake backend against TransferQueue's own
MooncakeStore and SimpleStorage backends, measured in the same run.

    PYTHONPATH=python python python/bench_transferqueue.py --quick

Runs itself under `unshare -rn` (loopback only), starts two mooncake_masters (one for each
Mooncake backend, so that each client's values stay in its own segment and neither pays for the
other's traffic), a Ray head, and for each backend its own TransferQueue controller and client
(TransferQueueClient + initialize_storage_manager, what tq.init does, once per backend so that
the three live side by side). One put is what kv_batch_put does (kv_retrieve_meta with
create=True, then put); one get is what kv_batch_get does (kv_retrieve_meta, then get_data).
Every value is a float32 tensor field of the given size; a round measures every backend at every
size, in an order that rotates from round to round; the first round is a warm-up and not counted.

Printed per size: the median time of put and get per backend with the spread (min-max) over the
rounds, the ratios zcopy/MooncakeStore and zcopy/SimpleStorage (>1: zcopy is faster), the share
of each call spent on TransferQueue's control path (controller round trips: kv_retrieve_meta, and
the manager's notify_data_update on put), and the bytes copied in user space per get after the
transfer (the returned field's bytes are counted as not copied when they lie in zcopy's pool).
Every process is stopped by its PID (Ray by ray.shutdown) at the end. Exits 77 where it cannot run.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time

SKIP_EXIT = 77
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MiB = 1 << 20
PORTS = {"zcopy": 50091, "MooncakeStore": 50095}
BACKENDS = ("zcopy", "MooncakeStore", "SimpleStorage")
SIZES = ((4 << 10, 8), (1 << 20, 8), (64 << 20, 1))  # value bytes, samples per batch


def _conf(backend):
    from importlib import resources

    from omegaconf import OmegaConf

    conf = OmegaConf.merge(OmegaConf.create({}, flags={"allow_objects": True}),
                           OmegaConf.load(resources.files("transfer_queue") / "config.yaml"))
    if backend == "zcopy":
        conf.backend.storage_backend = "ZcopyMooncakeStore"
        conf.backend.ZcopyMooncakeStore = {
            "master_server_address": "127.0.0.1:%d" % PORTS["zcopy"], "local_hostname": "127.0.0.1",
            "metadata_server": "P2PHANDSHAKE", "global_segment_size": 768 * MiB, "local_buffer_size": 16 * MiB,
            "pool_size": 768 * MiB, "pool_options": {"rdma": "off", "pages": "small", "prefault": True}}
    elif backend == "MooncakeStore":
        conf.backend.storage_backend = "MooncakeStore"
        conf.backend.MooncakeStore.update({
            "auto_init": False,  # its auto_init would pkill every mooncake_master on the machine
            "master_server_address": "127.0.0.1:%d" % PORTS["MooncakeStore"], "local_hostname": "127.0.0.1",
            "metadata_server": "P2PHANDSHAKE", "global_segment_size": 768 * MiB, "local_buffer_size": 256 * MiB})
    else:
        conf.backend.storage_backend = "SimpleStorage"
        conf.backend.SimpleStorage.num_data_storage_units = 1
    return conf


class Backend:
    """One controller, one client and one storage manager: what tq.init makes, per backend."""

    def __init__(self, name):
        import ray
        from transfer_queue.client import TransferQueueClient
        from transfer_queue.controller import TransferQueueController
        from transfer_queue.sampler import SequentialSampler
        from transfer_queue.storage.bootstrap import StorageBootstrapProvider
        from transfer_queue.utils.zmq_utils import process_zmq_server_info

        self.name = name
        conf = _conf(name)
        self.controller = TransferQueueController.options(name="bench_%s" % name, namespace="zcopy_bench").remote(
            sampler=SequentialSampler(), polling_mode=False)
        conf.controller.zmq_info = process_zmq_server_info(self.controller)
        backend = conf.backend.storage_backend
        provider = StorageBootstrapProvider.get_provider(backend)
        self.units = provider(conf) if backend == "SimpleStorage" else None  # the others: masters run here
        ray.get(self.controller.store_config.remote(conf))
        self.client = TransferQueueClient(client_id="bench_%s_%d" % (name, os.getpid()),
                                          controller_info=conf.controller.zmq_info)
        self.client.initialize_storage_manager(manager_type=backend, config=conf.backend[backend])
        self.control = 0.0
        manager = self.client.storage_manager
        notify = manager.notify_data_update

        async def timed_notify(*a, **kw):
            t0 = time.perf_counter()
            try:
                return await notify(*a, **kw)
            finally:
                self.control += time.perf_counter() - t0

        manager.notify_data_update = timed_notify

    def meta(self, keys, create):
        t0 = time.perf_counter()
        meta = self.client.kv_retrieve_meta(keys=keys, partition_id="bench", create=create)
        self.control += time.perf_counter() - t0
        return meta

    def put(self, keys, fields):
        self.client.put(fields, self.meta(keys, True))

    def get(self, keys):
        return self.client.get_data(self.meta(keys, False))

    def copied_per_get(self, data, nbytes):
        """User-space bytes copied after the transfer: 0 when the field lies in zcopy's pool."""
        if self.name != "zcopy":
            return None
        t = data["x"]
        values = t.values() if t.is_nested else t
        base, size = self.client.storage_manager.storage_client.zstore._region
        return 0 if base <= values.data_ptr() < base + size else nbytes

    def close(self):
        import ray

        self.client.close()
        if self.units:
            handles = list(self.units.values())
            try:
                ray.get([h.shutdown.remote() for h in handles], timeout=15)
            except Exception:
                pass
            for h in handles:
                ray.kill(h)
        ray.kill(self.controller)


def measure(rounds):
    import torch
    from tensordict import TensorDict

    backends = {}
    for name in BACKENDS:
        print("starting %s" % name, file=sys.stderr, flush=True)
        backends[name] = Backend(name)
    times = {(b, s, op): [] for b in BACKENDS for s, _ in SIZES for op in ("put", "get", "put_ctl", "get_ctl")}
    copied = {}
    try:
        for r in range(rounds + 1):
            order = BACKENDS[r % 3:] + BACKENDS[:r % 3]
            for size, n in SIZES:
                fields = TensorDict({"x": torch.randn(n, size // 4)}, batch_size=n)
                keys = ["s%d_%d" % (size, i) for i in range(n)]
                for name in order:
                    print("round %d, %d bytes x %d, %s" % (r, size, n, name), file=sys.stderr, flush=True)
                    b = backends[name]
                    b.control = 0.0
                    t0 = time.perf_counter()
                    b.put(keys, fields)
                    t1 = time.perf_counter()
                    put_ctl, b.control = b.control, 0.0
                    data = b.get(keys)
                    t2 = time.perf_counter()
                    got = data["x"]
                    ok = torch.equal(got.values() if got.is_nested else got, fields["x"].reshape(got.values().shape
                                     if got.is_nested else got.shape))
                    if not ok:
                        raise AssertionError("%s read back other values at %d bytes" % (name, size))
                    copied[(name, size)] = b.copied_per_get(data, size * n)
                    del data, got
                    if r:
                        times[(name, size, "put")].append(t1 - t0)
                        times[(name, size, "get")].append(t2 - t1)
                        times[(name, size, "put_ctl")].append(put_ctl)
                        times[(name, size, "get_ctl")].append(b.control)
    finally:
        for b in backends.values():
            b.close()
    return times, copied


def report(times, copied, rounds):
    def med(b, s, op):
        return statistics.median(times[(b, s, op)])

    def fmt(b, s, op):
        xs = times[(b, s, op)]
        return "%.2f ms (%.2f-%.2f)" % (med(b, s, op) * 1e3, min(xs) * 1e3, max(xs) * 1e3)

    label = {4 << 10: "4 KiB", 1 << 20: "1 MiB", 64 << 20: "64 MiB"}
    print("TransferQueue KV put/get, %d rounds (median, min-max); ratio > 1: zcopy faster" % rounds)
    rows = []
    for op in ("put", "get"):
        print("\n%s" % op)
        print("| value x samples | zcopy | MooncakeStore | SimpleStorage | vs Mooncake | vs Simple | control path z/M/S |"
              + (" user-space bytes copied per get (zcopy) |" if op == "get" else ""))
        for s, n in SIZES:
            ctl = "/".join("%.0f%%" % (100 * med(b, s, op + "_ctl") / med(b, s, op)) for b in BACKENDS)
            line = "| %s x %d | %s | %s | %s | %.2fx | %.2fx | %s |" % (
                label[s], n, fmt("zcopy", s, op), fmt("MooncakeStore", s, op), fmt("SimpleStorage", s, op),
                med("MooncakeStore", s, op) / med("zcopy", s, op), med("SimpleStorage", s, op) / med("zcopy", s, op), ctl)
            if op == "get":
                line += " %s |" % copied.get(("zcopy", s))
            print(line)
            rows.append({"op": op, "size": s, "samples": n,
                         **{b: med(b, s, op) for b in BACKENDS},
                         **{b + "_control": med(b, s, op + "_ctl") for b in BACKENDS}})
    print("\nJSON " + json.dumps(rows))


def inside(rounds):
    import runpy

    runpy.run_path(os.path.join(ROOT, "examples", "python", "mooncake_transfer.py"))["bring_loopback_up"]()
    try:
        import ray

        import zcopy.transferqueue  # noqa: F401
        from zcopy.mooncake import LocalMaster
    except ImportError as e:
        print("bench_transferqueue: skipped: %s" % e)
        return SKIP_EXIT
    with LocalMaster(PORTS["zcopy"]), LocalMaster(PORTS["MooncakeStore"]):
        # Logical CPUs: each controller and storage unit is an actor asking for one.
        ray.init(num_cpus=8, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                 object_store_memory=512 * MiB,
                 runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", "")}})
        try:
            times, copied = measure(rounds)
        finally:
            ray.shutdown()
    report(times, copied, rounds)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 9")
    parser.add_argument("--inside", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside is not None:
        return inside(args.inside)
    try:
        import ray  # noqa: F401
        import transfer_queue  # noqa: F401
        from mooncake.store import MooncakeDistributedStore  # noqa: F401
    except ImportError as e:
        print("bench_transferqueue: skipped: %s" % e)
        return SKIP_EXIT
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode:
        print("bench_transferqueue: skipped: unshare -rn is not possible here")
        return SKIP_EXIT
    env = dict(os.environ, RAY_USAGE_STATS_ENABLED="0")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (HERE, env.get("PYTHONPATH")) if p)
    rounds = 3 if args.quick else 9
    proc = subprocess.Popen([unshare, "-rn", sys.executable, os.path.abspath(__file__), "--inside", str(rounds)],
                            env=env)
    try:
        return proc.wait(600)
    except subprocess.TimeoutExpired:
        proc.terminate()
        proc.wait(30)
        return 1


if __name__ == "__main__":
    sys.exit(main())
