"""Mooncake Store values moved between two processes' zcopy pools, with no user-space copy.

Starts a `mooncake_master` on 127.0.0.1, then two client processes, each a
`zcopy.mooncake.ZeroCopyStore` (its own zcopy pool registered with its own Mooncake client, and
its own Mooncake segment). The writer puts arrays (tensors too, where torch is installed) and a
pickled object into its own segment (`ReplicateConfig.preferred_segment`); the reader gets them in
one batch: the master gives their sizes, the transfer engine writes each value straight into a
buffer created in the reader's pool, which is sealed and read in place. The reader checks the
bytes, that every view is read-only and inside its pool, and that every value came from the
writer's segment (the replica's transfer endpoint is the writer's, not its own).

The writer also puts the same bytes with Mooncake's own `put` (keys "plain-N"); the reader gets
those with Mooncake's own `get` and with `get_array`, and compares both with the writer's checksums.

Like mooncake_transfer.py, the script re-runs itself under `unshare -rn` in a private network
namespace holding only `lo` (the master and the engines listen on wildcard addresses otherwise).

    pip install mooncake-transfer-engine-non-cuda numpy
    cargo build --release --lib
    PYTHONPATH=python python3 examples/python/mooncake_store.py [--timeout SECONDS] [--netns auto|on|off]

Over RDMA (`--protocol rdma --device DEV --host ADDR`: the transfer engines use the verbs device
DEV, and the master and both clients the address ADDR, which must be the IPv4 address of DEV's
netdev; no private namespace then, since it would not hold DEV's address):

    PYTHONPATH=python python3 examples/python/mooncake_store.py --protocol rdma --device rxe0 --host 10.99.0.1

With a device, the reader also reads the port counters of DEV (sysfs hw_counters, where the
driver has them: Soft-RoCE does) around its batch get, to show that the bytes crossed DEV.
scripts/mooncake-rdma-vm.sh runs this in a VM with a Soft-RoCE device.

Prints one line per check and `mooncake store: N passed, M failed`; exits 0 when all passed, 1 on a
failure, 77 (skipped) with the reason where the Mooncake Store cannot run here. The master and both
clients are stopped by their handles on every way out.
"""

import argparse
import hashlib
import multiprocessing as mp
import os
import runpy
import signal
import sys
import time
import traceback

SKIP_EXIT = 77
PORT = 50051
MiB = 1 << 20
POOL_OPTIONS = dict(rdma="off", pages="small", prefault=False)
SIZES = [1, 4096, MiB, 16 * MiB, 3 * 65536 + 17]
HERE = os.path.dirname(os.path.abspath(__file__))


class Skip(Exception):
    """The Mooncake Store cannot run here."""


def sha(data):
    return hashlib.sha256(memoryview(data).cast("B")).hexdigest()


def pattern(i, size):
    import numpy as np

    return np.random.default_rng(1000 + i).integers(0, 256, size, dtype=np.uint8)


def open_store(master, pool_size, segment, net):
    try:
        from zcopy.mooncake import ZeroCopyStore
    except ImportError as e:
        raise Skip(str(e))
    try:
        return ZeroCopyStore.setup(
            pool_size, local_hostname=net["host"], metadata_server="P2PHANDSHAKE",
            master_server_address=master, global_segment_size=segment, protocol=net["protocol"],
            device_name=net["device"], pool_options=POOL_OPTIONS,
        )
    except Exception as e:
        raise Skip("ZeroCopyStore.setup(protocol %r, device %r, host %r) failed: %s"
                   % (net["protocol"], net["device"], net["host"], e))


def port_counters(device):
    """{name: value} of the sysfs hw_counters of port 1 of the verbs device (empty if none)."""
    folder = "/sys/class/infiniband/%s/ports/1/hw_counters" % device
    out = {}
    if device and os.path.isdir(folder):
        for name in ("sent_pkts", "rcvd_pkts"):
            try:
                with open(os.path.join(folder, name)) as f:
                    out[name] = int(f.read())
            except (OSError, ValueError):
                pass
    return out


def have_torch():
    try:
        import torch  # noqa: F401

        return True
    except ImportError:
        return False


def writer(conn, master, net):
    """Puts every value into its own segment, then waits until the reader is done."""
    try:
        import numpy as np

        from zcopy.mooncake import ReplicateConfig

        store = open_store(master, 64 * MiB, 96 * MiB, net)
        try:
            host = store.store.get_hostname()
            config = ReplicateConfig()
            config.replica_num = 1
            config.preferred_segment = host
            keys = ["array-%d" % n for n in SIZES]
            values = [pattern(i, n) for i, n in enumerate(SIZES)]
            t0 = time.perf_counter()
            store.batch_put_arrays(keys, values, config)
            seconds = time.perf_counter() - t0
            digests = {k: sha(v) for k, v in zip(keys, values)}
            # The same bytes through Mooncake's own put (from its own registered buffer).
            t0 = time.perf_counter()
            for n, v in zip(SIZES, values):
                rc = store.store.put("plain-%d" % n, v.tobytes(), config)
                if rc != 0:
                    raise RuntimeError("Mooncake put of plain-%d answered %d" % (n, rc))
            plain_seconds = time.perf_counter() - t0
            if have_torch():
                import torch

                t = torch.arange(256 * 1024, dtype=torch.float32).reshape(256, 1024)
                store.put_tensor("tensor-1MiB", t, config)
                digests["tensor-1MiB"] = sha(t.numpy())
            store.put_object("object", {"weights": np.linspace(0, 1, 1000), "step": 7}, config)
            endpoint = store.store.get_replica_desc(keys[0])[0].get_memory_descriptor().buffer_descriptor.transport_endpoint
            conn.send({"host": host, "endpoint": endpoint, "digests": digests, "put_seconds": seconds,
                       "put_bytes": sum(SIZES), "plain_put_seconds": plain_seconds})
            conn.recv()  # the reader is done: our segment may go
        finally:
            store.close()
    except Skip as e:
        conn.send({"skip": str(e)})
    except BaseException:
        conn.send({"error": traceback.format_exc()})


def reader(conn, master, offer, net):
    """Gets everything the writer put, in one batch, and checks it."""
    results = []

    def check(ok, name, detail):
        results.append((bool(ok), name, detail))

    try:
        import numpy as np

        store = open_store(master, 128 * MiB, 16 * MiB, net)
        try:
            base, length = store.pool.region()
            keys = sorted(k for k in offer["digests"] if k.startswith("array-"))
            descs = store.store.batch_get_replica_desc(keys)
            endpoints = {d[0].get_memory_descriptor().buffer_descriptor.transport_endpoint for d in descs.values()}
            check(endpoints == {offer["endpoint"]}, "values in the writer's segment",
                  "replica endpoints %s, writer's %s (reader client %s)" % (sorted(endpoints), offer["endpoint"],
                                                                  store.store.get_hostname()))
            counters = port_counters(net["device"])
            t0 = time.perf_counter()
            arrays = store.batch_get_arrays(keys)
            seconds = time.perf_counter() - t0
            after = port_counters(net["device"])
            for k, a in zip(keys, arrays):
                inside = base <= a.ctypes.data and a.ctypes.data + a.nbytes <= base + length
                check(sha(a) == offer["digests"][k] and inside and not a.flags.writeable, "got " + k,
                      "%d bytes identical, read-only view inside the reader's pool: %s" % (a.nbytes, inside))
            total = sum(a.nbytes for a in arrays)
            check(True, "batch get", "%d values, %d bytes in %.1f ms (%.0f MB/s, with the size query)"
                  % (len(arrays), total, seconds * 1e3, total / seconds / 1e6))
            if counters and after:
                # Every RDMA packet of the get is sent and received by this one device (both
                # clients use it); payloads are at most 4096 bytes (the largest RoCE MTU).
                received = after["rcvd_pkts"] - counters["rcvd_pkts"]
                check(received * 4096 >= total, "bytes crossed %s" % net["device"],
                      "%d packets received, %d sent by %s during the batch get (at least %d needed for %d bytes)"
                      % (received, after["sent_pkts"] - counters["sent_pkts"], net["device"], -(-total // 4096), total))
            for n in SIZES:
                key = "plain-%d" % n
                t0 = time.perf_counter()
                raw = store.store.get(key)
                mc_seconds = time.perf_counter() - t0
                t0 = time.perf_counter()
                a = store.get_array(key)
                zc_seconds = time.perf_counter() - t0
                want = offer["digests"]["array-%d" % n]
                check(sha(raw) == want and sha(a) == want and a.nbytes == n, "got " + key,
                      "%d bytes put by Mooncake's put: its get %.2f ms, get_array %.2f ms, both identical"
                      % (n, mc_seconds * 1e3, zc_seconds * 1e3))
            del raw
            t = None
            if "tensor-1MiB" in offer["digests"]:
                t = store.get_tensor("tensor-1MiB")
                check(sha(t.numpy()) == offer["digests"]["tensor-1MiB"] and tuple(t.shape) == (256, 1024),
                      "got tensor-1MiB", "%s %s identical" % (tuple(t.shape), t.dtype))
            else:
                check(True, "tensors", "torch is not installed: arrays only")
            obj = store.get_object("object")
            w = obj["weights"]
            check(obj["step"] == 7 and np.array_equal(w, np.linspace(0, 1, 1000)) and base <= w.ctypes.data < base + length,
                  "got object", "pickle 5 object; its array is a view of the reader's pool")
            before = store.pool.stats()["object_count"]
            del arrays, obj, w, a, t
            import gc

            gc.collect()
            after = store.pool.stats()["object_count"]
            check(after == 0, "views released", "pool objects %d -> %d once the views were gone"
                  % (before, after))
        finally:
            store.close()
        conn.send({"results": results})
    except Skip as e:
        conn.send({"skip": str(e)})
    except BaseException:
        conn.send({"results": results, "error": traceback.format_exc()})


def receive(conn, proc, timeout, what):
    if not conn.poll(timeout):
        raise RuntimeError("%s: no answer in %.0f s (process alive: %s)" % (what, timeout, proc.is_alive()))
    return conn.recv()


def run(args):
    try:
        from zcopy.mooncake import LocalMaster
    except ImportError as e:
        print("mooncake store: skipped: %s" % e)
        return SKIP_EXIT
    ctx = mp.get_context("spawn")
    procs = []
    net = {"host": args.host, "protocol": args.protocol, "device": args.device}
    master = LocalMaster(PORT, log=sys.stderr, host=args.host)
    try:
        try:
            master.start()
        except (OSError, RuntimeError) as e:
            print("mooncake store: skipped: mooncake_master cannot run here: %s" % e)
            return SKIP_EXIT
        print("mooncake store: master pid %d on %s; clients on %s, protocol %s%s"
              % (master.pid, master.address, args.host, args.protocol, ", device " + args.device if args.device else ""))
        w_conn, w_child = ctx.Pipe()
        w = ctx.Process(target=writer, args=(w_child, master.address, net), name="writer", daemon=True)
        w.start()
        procs.append(w)
        offer = receive(w_conn, w, args.timeout, "writer")
        if "skip" in offer:
            print("mooncake store: skipped: %s" % offer["skip"])
            return SKIP_EXIT
        if "error" in offer:
            print("  FAILED: the writer raised:\n%s" % offer["error"])
            print("mooncake store: 0 passed, 1 failed")
            return 1
        print("  writer pid %d (%s) put %d bytes in %.1f ms (Mooncake's put: %.1f ms)"
              % (w.pid, offer["host"], offer["put_bytes"], offer["put_seconds"] * 1e3,
                 offer["plain_put_seconds"] * 1e3))
        r_conn, r_child = ctx.Pipe()
        r = ctx.Process(target=reader, args=(r_child, master.address, offer, net), name="reader", daemon=True)
        r.start()
        procs.append(r)
        report = receive(r_conn, r, args.timeout, "reader")
        w_conn.send("done")
        if "skip" in report:
            print("mooncake store: skipped: %s" % report["skip"])
            return SKIP_EXIT
        print("  reader pid %d" % r.pid)
        passed = failed = 0
        for ok, name, detail in report.get("results", []):
            print("  %s %s: %s" % ("ok:    " if ok else "FAILED:", name, detail))
            passed += ok
            failed += not ok
        if "error" in report:
            print("  FAILED: the reader raised:\n%s" % report["error"])
            failed += 1
        print("mooncake store: %d passed, %d failed" % (passed, failed))
        return 0 if failed == 0 and passed else 1
    finally:
        for p in procs:
            p.join(15)
            if p.is_alive():
                p.terminate()
                p.join(5)
        master.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=60.0, help="limit per step in seconds (default 60)")
    parser.add_argument("--netns", choices=("auto", "on", "off", "inside"), default="auto",
                        help="run in a private network namespace holding only lo: auto (when possible, and "
                        "--host is 127.0.0.1), on, off")
    parser.add_argument("--protocol", default="tcp", help="the transfer engine's protocol: tcp (default) or rdma")
    parser.add_argument("--device", default="", help="the verbs device(s) of the rdma protocol, e.g. rxe0")
    parser.add_argument("--host", default="127.0.0.1",
                        help="the IPv4 address of the master and both clients (default 127.0.0.1)")
    args = parser.parse_args()
    if args.host != "127.0.0.1":
        if args.netns == "on":
            print("mooncake store: skipped: --netns on holds only lo, not --host %s" % args.host)
            return SKIP_EXIT
        if args.netns == "auto":
            args.netns = "off"
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    transfer = runpy.run_path(os.path.join(HERE, "mooncake_transfer.py"))
    if args.netns in ("auto", "on"):
        # The same re-run as mooncake_transfer.py: this script, under unshare -rn.
        import shutil
        import subprocess

        unshare = shutil.which("unshare")
        ok = unshare is not None and subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode == 0
        if not ok:
            if args.netns == "on":
                print("mooncake store: skipped: --netns on, but unshare -rn is not possible here")
                return SKIP_EXIT
            print("mooncake store: host network namespace (unshare -rn not possible); everything on 127.0.0.1")
        else:
            cmd = [unshare, "-rn", sys.executable, os.path.abspath(__file__), "--netns", "inside",
                   "--timeout", str(args.timeout), "--protocol", args.protocol, "--device", args.device]
            sys.stdout.flush()
            proc = subprocess.Popen(cmd)
            try:
                return proc.wait(timeout=3 * args.timeout + 30)
            except subprocess.TimeoutExpired:
                print("mooncake store: the namespaced run did not finish in time")
                return 1
            finally:
                if proc.poll() is None:
                    proc.terminate()
                    try:
                        proc.wait(10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(10)
    elif args.netns == "inside":
        transfer["bring_loopback_up"]()
        print("mooncake store: private network namespace (only lo, brought up here)")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
