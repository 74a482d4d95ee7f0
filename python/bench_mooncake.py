"""zcopy.mooncake.ZeroCopyStore against Mooncake Store's own Python calls, in the same run.

A writer process W holds the values in its own segment (its Mooncake client serves them over the
transfer engine, protocol tcp); a reader process R, with its own client and zcopy pool, gets them
and puts new ones into W's segment. Everything runs on 127.0.0.1 in a private network namespace
(`unshare -rn`, like examples/python/mooncake_store.py), with a mooncake_master started here.

Per value size (4 KiB, 1 MiB, 64 MiB), R times, alternating the methods round by round:
  get: ZeroCopyStore.get_array (read-only array over R's pool) against Mooncake's get (bytes),
       get_buffer (a handle over Mooncake's client buffer), get_into (into one numpy buffer
       registered once), batch_get_into of one key (the call ZeroCopyStore makes: the difference
       is its own cost) and get_tensor where torch is installed;
  put: ZeroCopyStore.put_array against Mooncake's put (of the array) and put_from after copying
       the array into a buffer registered once;
and a batch of 1000 x 4 KiB values: batch_get_arrays against batch_get_buffer and batch_get_into.
Ratios are the method's median time over ZeroCopyStore's (above 1: zcopy is faster). "copied"
is the bytes each call copies in user space after the transfer (get) or before it (put).

    PYTHONPATH=python python3 python/bench_mooncake.py [--quick]
"""

import argparse
import multiprocessing as mp
import os
import runpy
import statistics
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SKIP_EXIT = 77
KiB, MiB = 1 << 10, 1 << 20
SIZES = [4 * KiB, MiB, 64 * MiB]
POOL_OPTIONS = dict(rdma="off", pages="small", prefault=True)
BATCH = 1000


def ops_for(size, quick):
    if size <= 64 * KiB:
        return 100 if quick else 1000
    if size <= 4 * MiB:
        return 20 if quick else 200
    return 3 if quick else 12


def setup_store(master, pool_size, segment, local_buffer):
    from zcopy.mooncake import ZeroCopyStore

    return ZeroCopyStore.setup(
        pool_size, local_hostname="127.0.0.1", master_server_address=master, global_segment_size=segment,
        local_buffer_size=local_buffer, pool_options=POOL_OPTIONS,
    )


def writer(conn, master):
    try:
        import numpy as np

        from zcopy.mooncake import ReplicateConfig

        st = setup_store(master, 96 * MiB, 640 * MiB, 80 * MiB)
        try:
            host = st.store.get_hostname()
            config = ReplicateConfig()
            config.preferred_segment = host
            for size in SIZES:
                st.put_array("zc-%d" % size, np.full(size, 7, np.uint8), config)  # the parts format
                raw = np.full(size, 9, np.uint8)
                rc = st.store.put("mc-%d" % size, raw, config)  # plain bytes, for Mooncake's gets
                if rc != 0:
                    raise RuntimeError("put mc-%d returned %d" % (size, rc))
            keys = ["zcb-%d" % i for i in range(BATCH)]
            st.batch_put_arrays(keys, [np.full(4 * KiB, i % 251, np.uint8) for i in range(BATCH)], config)
            rcs = st.store.put_batch(["mcb-%d" % i for i in range(BATCH)],
                                     [np.full(4 * KiB, i % 251, np.uint8) for i in range(BATCH)], config)
            if rcs != 0:
                raise RuntimeError("put_batch returned %s" % rcs)
            conn.send({"host": host})
            conn.recv()  # the reader is done
        finally:
            st.close()
    except BaseException:
        conn.send({"error": traceback.format_exc()})


def _median_us(samples):
    return statistics.median(samples) * 1e6


def reader(conn, master, w_host, quick):
    try:
        import numpy as np

        from zcopy.mooncake import ReplicateConfig

        try:
            import torch  # noqa: F401

            has_torch = True
        except ImportError:
            has_torch = False
        st = setup_store(master, 512 * MiB, 0, 160 * MiB)
        store = st.store
        rows = []
        scratch = np.zeros(64 * MiB + 4096, np.uint8)
        rc = store.register_buffer(scratch.ctypes.data, scratch.nbytes)
        if rc != 0:
            raise RuntimeError("register_buffer(scratch) returned %d" % rc)
        to_w = ReplicateConfig()
        to_w.preferred_segment = w_host
        try:
            for size in SIZES:
                n = ops_for(size, quick)
                zk, mk = "zc-%d" % size, "mc-%d" % size
                # Every method's answer, checked once outside the timings.
                assert int(st.get_array(zk)[size - 1]) == 7
                assert store.get(mk)[-1] == 9
                assert store.get_into(mk, scratch.ctypes.data, scratch.nbytes) == size and scratch[size - 1] == 9
                h = store.get_buffer(mk)
                assert h is not None and h.size() == size, h
                del h
                gets = {
                    "zcopy get_array": (lambda: st.get_array(zk), 0),
                    "mooncake get (bytes)": (lambda: store.get(mk), size),
                    "mooncake get_buffer": (lambda: store.get_buffer(mk), 0),
                    "mooncake get_into (registered)": (lambda: store.get_into(mk, scratch.ctypes.data, scratch.nbytes), 0),
                    "mooncake batch_get_into of 1 (registered)":
                        (lambda: store.batch_get_into([mk], [scratch.ctypes.data], [size]), 0),
                }
                if has_torch:
                    gets["mooncake get_tensor"] = (lambda: store.get_tensor(mk), size)
                rows += _time_methods("get", size, gets, n)

                src = np.full(size, 5, np.uint8)
                counter = [0]

                def fresh(prefix):
                    counter[0] += 1
                    return "%s-%d-%d" % (prefix, size, counter[0])

                def mc_put_from():
                    np.copyto(scratch[:size], src)
                    rc = store.put_from(fresh("pf"), scratch.ctypes.data, size, to_w)
                    assert rc == 0, rc

                def mc_put():
                    rc = store.put(fresh("pp"), src, to_w)
                    assert rc == 0, rc

                puts = {
                    "zcopy put_array": (lambda: st.put_array(fresh("zp"), src, to_w), size),
                    "mooncake put": (mc_put, size),
                    "mooncake put_from (copy + registered)": (mc_put_from, size),
                }
                rows += _time_methods("put", size, puts, n, cleanup=lambda: store.remove_by_regex("^(zp|pp|pf)-.*", True))

            zkeys = ["zcb-%d" % i for i in range(BATCH)]
            mkeys = ["mcb-%d" % i for i in range(BATCH)]
            arrays = st.batch_get_arrays(zkeys)
            assert all(int(a[0]) == i % 251 for i, a in enumerate(arrays))
            del arrays
            addrs = [scratch.ctypes.data + i * 4 * KiB for i in range(BATCH)]
            sizes = [4 * KiB] * BATCH
            batch = {
                "zcopy batch_get_arrays": (lambda: st.batch_get_arrays(zkeys), 0),
                "mooncake batch_get_buffer": (lambda: store.batch_get_buffer(mkeys), 0),
                "mooncake batch_get_into (registered)": (lambda: store.batch_get_into(mkeys, addrs, sizes), 0),
            }
            rows += _time_methods("batch get 1000 x", 4 * KiB, batch, 3 if quick else 12, per=BATCH)
        finally:
            store.unregister_buffer(scratch.ctypes.data)
            st.close()
        conn.send({"rows": rows, "torch": has_torch})
    except BaseException:
        conn.send({"error": traceback.format_exc()})


def _time_methods(op, size, methods, n, per=1, cleanup=None):
    """Median seconds per call of each method, the methods alternating in 5 rounds."""
    samples = {name: [] for name in methods}
    rounds = 5
    for r in range(rounds):
        for name, (fn, _) in methods.items():
            for _ in range(max(1, n // rounds)):
                t0 = time.perf_counter()
                fn()
                samples[name].append((time.perf_counter() - t0) / per)
            if cleanup is not None:
                cleanup()
    return [{"op": op, "size": size, "method": name, "us": _median_us(samples[name]), "copied": methods[name][1],
             "calls": len(samples[name])} for name in methods]


def fmt_size(n):
    return "%d MiB" % (n >> 20) if n >= MiB else "%d KiB" % (n >> 10)


def table(rows):
    print("| op | size | method | median µs/op | GB/s | ratio vs zcopy | user-space bytes copied/op |")
    print("|---|---|---|---|---|---|---|")
    base = {}
    for r in rows:
        if r["method"].startswith("zcopy"):
            base[(r["op"], r["size"])] = r["us"]
    for r in rows:
        zc = base.get((r["op"], r["size"]))
        ratio = "1.00× (baseline)" if r["method"].startswith("zcopy") else "%.2f×" % (r["us"] / zc)
        gbs = r["size"] / (r["us"] * 1e-6) / 1e9
        print("| %s | %s | %s | %.1f | %.2f | %s | %s |" % (
            r["op"], fmt_size(r["size"]), r["method"], r["us"], gbs, ratio, r["copied"]))


def run(args):
    try:
        from zcopy.mooncake import LocalMaster
    except ImportError as e:
        print("bench_mooncake: skipped: %s" % e)
        return SKIP_EXIT
    ctx = mp.get_context("spawn")
    master = LocalMaster(50051, log=open(os.devnull, "w"))
    procs = []
    try:
        master.start()
        wc, wchild = ctx.Pipe()
        w = ctx.Process(target=writer, args=(wchild, master.address), daemon=True)
        w.start()
        procs.append(w)
        if not wc.poll(120):
            raise RuntimeError("the writer did not start in 120 s")
        hello = wc.recv()
        if "error" in hello:
            print(hello["error"])
            return 1
        rc, rchild = ctx.Pipe()
        r = ctx.Process(target=reader, args=(rchild, master.address, hello["host"], args.quick), daemon=True)
        r.start()
        procs.append(r)
        if not rc.poll(600):
            raise RuntimeError("the reader did not finish in 600 s")
        result = rc.recv()
        wc.send("done")
        if "error" in result:
            print(result["error"])
            return 1
        print("bench_mooncake: writer pid %d, reader pid %d, master pid %d, tcp on 127.0.0.1%s; torch %s"
              % (w.pid, r.pid, master.pid, " (--quick)" if args.quick else "",
                 "installed" if result["torch"] else "not installed: no Mooncake get_tensor row"))
        table(result["rows"])
        return 0
    finally:
        for p in procs:
            p.join(20)
            if p.is_alive():
                p.terminate()
                p.join(5)
        master.stop()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls per method (about a minute)")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.inside:
        import shutil
        import subprocess

        unshare = shutil.which("unshare")
        if unshare is None or subprocess.run([unshare, "-rn", "true"], capture_output=True).returncode:
            print("bench_mooncake: skipped: unshare -rn is not possible here (the master listens on wildcards)")
            return SKIP_EXIT
        cmd = [unshare, "-rn", sys.executable, os.path.abspath(__file__), "--inside"] + (["--quick"] if args.quick else [])
        proc = subprocess.Popen(cmd)
        try:
            return proc.wait(900)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(20)
    runpy.run_path(os.path.join(ROOT, "examples", "python", "mooncake_transfer.py"))["bring_loopback_up"]()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
