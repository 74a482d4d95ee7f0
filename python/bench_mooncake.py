"""zcopy.mooncake.ZeroCopyStore against Mooncake Store's own Python calls, in the same run.

A writer process W holds the values in its own segment (its Mooncake client serves them over the
transfer engine, protocol tcp); a reader process R, with its own client, zcopy pool and no segment,
gets them and puts new ones into W's segment. Everything runs on 127.0.0.1 in a private network
namespace (`unshare -rn`, like examples/python/mooncake_store.py), with a mooncake_master started
here.

Per value size (4 KiB, 1 MiB, 64 MiB of tensor data), R times, the methods interleaved (each round
runs every method once in a block of calls, in an order rotated round by round):
  get: ZeroCopyStore.get_tensor of a value Mooncake's put_tensor wrote (the baseline) and of one
       its own put_tensor wrote, against Mooncake's get_tensor, get_tensor_into (into one buffer
       registered once), get_buffer, get (bytes), and batch_get_into of one key into the
       registered buffer (the call ZeroCopyStore makes: the difference is its own cost);
  put: ZeroCopyStore.put_tensor (one copy into the pool, then put_from; also with
       if_exists="raise", which asks batch_is_exist first) and put_buffer of a value produced in
       place in the pool (no copy), against Mooncake's put_tensor and put_from after copying the
       tensor into a buffer registered once;
and a batch of 1000 x 4 KiB: batch_get_tensors (both formats) against Mooncake's
batch_get_tensor, batch_get_buffer and batch_get_into (registered). Without torch the same runs
with arrays (get_array, put_array) and Mooncake's byte calls.

"ratio" is the method's time over the baseline's (above 1: zcopy is faster), as the median over
rounds of the ratio of each round's medians, with the lowest and highest round in brackets.
"copied" is the bytes each call copies in user space after the transfer (get) or before it (put).
The targets of the Mooncake Store integration are checked at the end.

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
HEADER = 304  # Mooncake's tensor header


def ops_for(size, quick):
    if size <= 64 * KiB:
        return 100 if quick else 600
    if size <= 4 * MiB:
        return 25 if quick else 120
    return 5 if quick else 14


def have_torch():
    try:
        import torch  # noqa: F401

        return True
    except ImportError:
        return False


def setup_store(master, pool_size, segment, local_buffer):
    from zcopy.mooncake import ZeroCopyStore

    return ZeroCopyStore.setup(
        pool_size, local_hostname="127.0.0.1", master_server_address=master, global_segment_size=segment,
        local_buffer_size=local_buffer, pool_options=POOL_OPTIONS,
    )


def value(size, fill, torch_ok):
    import numpy as np

    if torch_ok:
        import torch

        return torch.full((size // 4,), fill, dtype=torch.float32)
    return np.full(size, fill, np.uint8)


def writer(conn, master):
    try:
        from zcopy.mooncake import ReplicateConfig

        torch_ok = have_torch()
        st = setup_store(master, 96 * MiB, 768 * MiB, 96 * MiB)
        try:
            host = st.store.get_hostname()
            config = ReplicateConfig()
            config.preferred_segment = host
            for size in SIZES:
                v = value(size, 7.0, torch_ok)
                if torch_ok:
                    st.put_tensor("zc-%d" % size, v, config)  # zcopy's parts format
                    rc = st.store.put_tensor("mc-%d" % size, v)  # Mooncake's tensor format
                else:
                    st.put_array("zc-%d" % size, v, config)
                    rc = st.store.put("mc-%d" % size, v, config)  # plain bytes
                if rc != 0:
                    raise RuntimeError("put mc-%d returned %d" % (size, rc))
            values = [value(4 * KiB, i % 251, torch_ok) for i in range(BATCH)]
            zkeys = ["zcb-%d" % i for i in range(BATCH)]
            mkeys = ["mcb-%d" % i for i in range(BATCH)]
            if torch_ok:
                st.batch_put_tensors(zkeys, values, config)
                rcs = st.store.batch_put_tensor(mkeys, values)
            else:
                st.batch_put_arrays(zkeys, values, config)
                rcs = st.store.put_batch(mkeys, values, config)
            if (rcs if isinstance(rcs, int) else any(rcs)) != 0:
                raise RuntimeError("the Mooncake batch put returned %s" % rcs)
            conn.send({"host": host})
            conn.recv()  # the reader is done
        finally:
            st.close()
    except BaseException:
        conn.send({"error": traceback.format_exc()})


def reader(conn, master, w_host, quick):
    try:
        import numpy as np

        from zcopy.mooncake import ReplicateConfig

        torch_ok = have_torch()
        if torch_ok:
            import torch
        st = setup_store(master, 512 * MiB, 0, 192 * MiB)
        store = st.store
        rows = []
        scratch = np.zeros(64 * MiB + 64 * KiB, np.uint8)
        at = scratch.ctypes.data
        rc = store.register_buffer(at, scratch.nbytes)
        if rc != 0:
            raise RuntimeError("register_buffer(scratch) returned %d" % rc)
        to_w = ReplicateConfig()
        to_w.preferred_segment = w_host
        counter = [0]

        def fresh(prefix):
            counter[0] += 1
            return "%s-%d" % (prefix, counter[0])

        def cleanup():
            store.remove_by_regex("^(zp|zb|mp|pf)-.*", True)

        try:
            for size in SIZES:
                n = ops_for(size, quick)
                zk, mk = "zc-%d" % size, "mc-%d" % size
                stored = size + HEADER if torch_ok else size
                # Every method's answer, checked once outside the timings.
                assert store.get_buffer(mk).size() == stored
                assert store.batch_get_into([mk], [at], [stored]) == [stored]
                if torch_ok:
                    ours, theirs = st.get_tensor(mk), store.get_tensor(mk)
                    assert ours.shape == theirs.shape == (size // 4,) and float(ours[-1]) == float(theirs[-1]) == 7.0
                    assert float(st.get_tensor(zk)[-1]) == 7.0
                    assert float(store.get_tensor_into(mk, at, scratch.nbytes)[-1]) == 7.0
                    del ours, theirs
                    gets = {
                        "zcopy get_tensor (Mooncake put_tensor value)": (lambda: st.get_tensor(mk), 0),
                        "zcopy get_tensor (zcopy put_tensor value)": (lambda: st.get_tensor(zk), 0),
                        "mooncake get_tensor": (lambda: store.get_tensor(mk), size),
                        "mooncake get_tensor_into (registered)": (lambda: store.get_tensor_into(mk, at, scratch.nbytes), 0),
                    }
                else:
                    assert int(st.get_array(zk)[size - 1]) == 7
                    gets = {"zcopy get_array": (lambda: st.get_array(zk), 0),
                            "mooncake get_into (registered)": (lambda: store.get_into(mk, at, scratch.nbytes), 0)}
                gets.update({
                    "mooncake get_buffer": (lambda: store.get_buffer(mk), 0),
                    "mooncake get (bytes)": (lambda: store.get(mk), stored),
                    "mooncake batch_get_into of 1 (registered)": (lambda: store.batch_get_into([mk], [at], [stored]), 0),
                })
                rows += time_methods("get", size, gets, n)

                src = value(size, 5.0, torch_ok)
                src_bytes = src.numpy().view(np.uint8) if torch_ok else src
                made = st.pool.create("in-place-%d" % size, size)
                made.array()[:] = 5  # produced in place: what put_buffer puts as it is
                made.seal()

                def mc_put_from():
                    np.copyto(scratch[:size], src_bytes)
                    assert store.put_from(fresh("pf"), at, size, to_w) == 0

                def strict(put):
                    """The put with if_exists="raise": one batch_is_exist before it."""
                    def run():
                        st.if_exists = "raise"
                        try:
                            put()
                        finally:
                            st.if_exists = "keep"
                    return run

                if torch_ok:
                    puts = {
                        "zcopy put_tensor": (lambda: st.put_tensor(fresh("zp"), src, to_w), size),
                        'zcopy put_tensor (if_exists="raise")': (strict(lambda: st.put_tensor(fresh("zp"), src, to_w)), size),
                        "zcopy put_buffer (produced in place)": (lambda: st.put_buffer(fresh("zb"), made, to_w), 0),
                        "mooncake put_tensor": (lambda: store.put_tensor(fresh("mp"), src), size),
                        "mooncake put_from (copy + registered)": (mc_put_from, size),
                    }
                else:
                    puts = {
                        "zcopy put_array": (lambda: st.put_array(fresh("zp"), src, to_w), size),
                        'zcopy put_array (if_exists="raise")': (strict(lambda: st.put_array(fresh("zp"), src, to_w)), size),
                        "zcopy put_buffer (produced in place)": (lambda: st.put_buffer(fresh("zb"), made, to_w), 0),
                        "mooncake put (bytes)": (lambda: store.put(fresh("mp"), src, to_w), size),
                        "mooncake put_from (copy + registered)": (mc_put_from, size),
                    }
                rows += time_methods("put", size, puts, n, cleanup=cleanup)
                made.release()
                st.pool.delete("in-place-%d" % size)

            zkeys = ["zcb-%d" % i for i in range(BATCH)]
            mkeys = ["mcb-%d" % i for i in range(BATCH)]
            stored = 4 * KiB + (HEADER if torch_ok else 0)
            addrs = [at + i * stored for i in range(BATCH)]
            sizes = [stored] * BATCH
            if torch_ok:
                got = st.batch_get_tensors(mkeys)
                assert all(float(t[0]) == i % 251 for i, t in enumerate(got))
                del got
                batch = {
                    "zcopy batch_get_tensors (Mooncake put_tensor values)": (lambda: st.batch_get_tensors(mkeys), 0),
                    "zcopy batch_get_tensors (zcopy values)": (lambda: st.batch_get_tensors(zkeys), 0),
                    "mooncake batch_get_tensor": (lambda: store.batch_get_tensor(mkeys), 4 * KiB),
                }
            else:
                batch = {"zcopy batch_get_arrays": (lambda: st.batch_get_arrays(zkeys), 0)}
            batch.update({
                "mooncake batch_get_buffer": (lambda: store.batch_get_buffer(mkeys), 0),
                "mooncake batch_get_into (registered)": (lambda: store.batch_get_into(mkeys, addrs, sizes), 0),
            })
            rows += time_methods("batch get 1000 x", 4 * KiB, batch, 10 if quick else 30, per=BATCH)
        finally:
            store.unregister_buffer(at)
            st.close()
        conn.send({"rows": rows, "torch": torch_ok})
    except BaseException:
        conn.send({"error": traceback.format_exc()})


def time_methods(op, size, methods, n, per=1, cleanup=None):
    """Seconds per call of each method, in rounds: each round runs every method for a block of
    calls, the order rotated from round to round. The first method is the baseline: each
    other's ratio is taken round by round, from the two medians of that round."""
    names = list(methods)
    rounds = 10 if n >= 100 else 5
    block = max(1, n // rounds)
    samples = {name: [[] for _ in range(rounds)] for name in names}
    for name in names:  # one untimed call each: first-call costs out of the rounds
        methods[name][0]()
    if cleanup is not None:
        cleanup()
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            fn = methods[name][0]
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                samples[name][r].append((time.perf_counter() - t0) / per)
            if cleanup is not None:
                cleanup()
    base = [statistics.median(s) for s in samples[names[0]]]
    rows = []
    for name in names:
        medians = [statistics.median(s) for s in samples[name]]
        ratios = sorted(m / b for m, b in zip(medians, base))
        every = [x for s in samples[name] for x in s]
        rows.append({"op": op, "size": size, "method": name, "us": statistics.median(every) * 1e6,
                     "ratio": statistics.median(ratios), "lo": ratios[0], "hi": ratios[-1],
                     "copied": methods[name][1], "calls": len(every), "baseline": names[0]})
    return rows


def fmt_size(n):
    return "%d MiB" % (n >> 20) if n >= MiB else "%d KiB" % (n >> 10)


def table(rows):
    print("| op | size | method | median µs/op | GB/s | time / baseline's [lowest–highest round] | user-space bytes copied/op |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = "1.00× (baseline)" if r["method"] == r["baseline"] else "%.2f× [%.2f–%.2f]" % (r["ratio"], r["lo"], r["hi"])
        gbs = r["size"] / (r["us"] * 1e-6) / 1e9
        print("| %s | %s | %s | %.1f | %.2f | %s | %s |" % (
            r["op"], fmt_size(r["size"]), r["method"], r["us"], gbs, ratio, r["copied"]))


def targets(rows, torch_ok):
    """The targets of the Mooncake Store integration, each as met or not by the median ratio."""
    if not torch_ok:
        print("targets: they compare tensor calls; torch is not installed")
        return

    def find(op, size, method):
        return next(r for r in rows if r["op"] == op and r["size"] == size and r["method"] == method)

    def ratio(op, size, method, over=None):
        r = find(op, size, method)
        if over is None:
            return r["ratio"], r["lo"], r["hi"]
        o = find(op, size, over)  # method's time over `over`'s, from the two rows' ratios to the baseline
        return r["ratio"] / o["ratio"], r["lo"] / o["hi"], r["hi"] / o["lo"]

    checks = [("get 64 MiB: Mooncake get_tensor / zcopy get_tensor >= 1.8",
               ratio("get", 64 * MiB, "mooncake get_tensor"), 1.8)]
    for size in SIZES:
        checks.append(("get %s: Mooncake get_tensor_into / zcopy get_tensor >= 0.95 (zcopy at most 5%% slower)" % fmt_size(size),
                       ratio("get", size, "mooncake get_tensor_into (registered)"), 1 / 1.05))
    for size in SIZES:
        for other in ("mooncake put_tensor", "mooncake put_from (copy + registered)"):
            checks.append(("put %s: %s / zcopy put_tensor >= 1" % (fmt_size(size), other.replace("mooncake", "Mooncake")),
                           ratio("put", size, other), 1.0))
    checks.append(("put 64 MiB: Mooncake put_tensor / zcopy put_buffer (in place) >= 1.3",
                   ratio("put", 64 * MiB, "mooncake put_tensor", "zcopy put_buffer (produced in place)"), 1.3))
    print()
    print("| target | median ratio [lowest–highest round] | met |")
    print("|---|---|---|")
    for what, (mid, lo, hi), bound in checks:
        print("| %s | %.2f× [%.2f–%.2f] | %s |" % (what, mid, lo, hi, "yes" if mid >= bound else "NO"))


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
        if not wc.poll(180):
            raise RuntimeError("the writer did not start in 180 s")
        hello = wc.recv()
        if "error" in hello:
            print(hello["error"])
            return 1
        rc, rchild = ctx.Pipe()
        r = ctx.Process(target=reader, args=(rchild, master.address, hello["host"], args.quick), daemon=True)
        r.start()
        procs.append(r)
        if not rc.poll(900):
            raise RuntimeError("the reader did not finish in 900 s")
        result = rc.recv()
        wc.send("done")
        if "error" in result:
            print(result["error"])
            return 1
        print("bench_mooncake: writer pid %d, reader pid %d, master pid %d, tcp on 127.0.0.1%s; torch %s"
              % (w.pid, r.pid, master.pid, " (--quick)" if args.quick else "",
                 "installed" if result["torch"] else "not installed: arrays and bytes instead of tensors"))
        table(result["rows"])
        targets(result["rows"], result["torch"])
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
            return proc.wait(1200)
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(20)
    runpy.run_path(os.path.join(ROOT, "examples", "python", "mooncake_transfer.py"))["bring_loopback_up"]()
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
