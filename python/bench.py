"""Benchmark of the zcopy Python package against the copying paths it replaces.

    PYTHONPATH=python python3 python/bench.py [--quick]

Prints a markdown table. Every zcopy figure sits next to baselines measured in the same run, in
the same process, interleaved with it (batch after batch, case after case), so drift of the
machine (frequency, noisy neighbours) hits both sides alike; each figure is the median of several
batches timed with time.perf_counter_ns. The ratio column is baseline time / zcopy time (> 1:
zcopy is faster). Runtime is bounded by the fixed number of cases times repeats times the batch
length: about 40 s by default, about 10 s with --quick.
"""

import argparse
import gc
import os
import pickle
import platform
import statistics
import sys
import time

import numpy as np

import zcopy

SIZES = (4 << 10, 1 << 20, 64 << 20)
POOL_SIZE = 512 << 20

# (repeats, batch length in ms) per mode.
DEFAULT = (7, 250)
QUICK = (5, 80)

GET_TARGET_NS = 5_000
PUT_4K_TARGET_NS = 10_000
COPYTO_TARGET_RATIO = 0.8


def fmt_size(n):
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return "%d %s" % (n >> shift, unit)
    return "%d B" % n


def fmt_time(ns):
    for unit, scale in (("s", 1e9), ("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return "%.3g %s" % (ns / scale, unit)
    return "%.3g ns" % ns


def fmt_ratio(r):
    if r >= 100:
        return "{:,.0f}×".format(r).replace(",", " ")
    return "%.3g×" % r


def fmt_rate(nbytes, ns):
    return "%.1f GB/s" % (nbytes / ns)  # bytes per ns == GB/s


def _batch(op, n):
    """Mean ns per call of `op` over `n` back-to-back calls."""
    t0 = time.perf_counter_ns()
    for _ in range(n):
        op()
    return (time.perf_counter_ns() - t0) / n


def _calibrate(op, batch_ns):
    """Calls per batch so that a batch lasts about `batch_ns` (at least one call)."""
    op()  # warm-up: first-call costs (imports, dtype caches, first touch of fresh memory)
    n = 1
    while True:
        per_call = _batch(op, n)
        if per_call * n >= batch_ns / 8 or n >= 1 << 20:
            return max(1, int(batch_ns / per_call))
        n *= 4


def samples(cases, repeats, batch_ms):
    """ns per call of each op in `cases` ({name: op}), one sample per batch: `repeats` batches
    each, the cases interleaved. The cyclic GC is off while a batch runs (as timeit does); the
    package releases pool objects by reference counting, so nothing waits for it."""
    batch_ns = batch_ms * 1e6
    counts = {name: _calibrate(op, batch_ns) for name, op in cases.items()}
    out = {name: [] for name in cases}
    for _ in range(repeats):
        for name, op in cases.items():
            gc.collect()
            gc.disable()
            try:
                out[name].append(_batch(op, counts[name]))
            finally:
                gc.enable()
    return out


def measure(cases, repeats, batch_ms):
    """Median ns per call of each op in `cases`: the median of its `samples`."""
    return {name: statistics.median(s) for name, s in samples(cases, repeats, batch_ms).items()}


def _source(nbytes):
    """A float32 array of `nbytes` bytes with non-trivial contents."""
    return np.arange(nbytes // 4, dtype=np.float32)


def bench_get(pool, nbytes, repeats, batch_ms):
    """get_array (then drop the array) against two copying reads of the same bytes: pickle.loads
    of the pickled array, and pool.get_bytes (the package's one-copy get)."""
    arr = _source(nbytes)
    key = "get-%d" % nbytes
    pool.put_array(key, arr)
    try:
        got = pool.get_array(key)
        if not np.array_equal(got, arr):
            raise AssertionError("get_array returned different contents")
        del got
        pickled = pickle.dumps(arr, protocol=5)  # in-band: loads must copy the data out
        t = measure(
            {
                "zcopy": lambda: pool.get_array(key),
                "pickle": lambda: pickle.loads(pickled),
                "get_bytes": lambda: pool.get_bytes(key),
            },
            repeats,
            batch_ms,
        )
    finally:
        pool.delete(key)
    met = t["zcopy"] <= GET_TARGET_NS
    name = "get_array + drop, %s" % fmt_size(nbytes)
    target = "get ≤ 5 µs at every size"
    return [
        row(name, t["zcopy"], t["pickle"], "pickle.loads", target, met),
        row(name, t["zcopy"], t["get_bytes"], "pool.get_bytes copy", target, met),
    ]


def bench_put(pool, nbytes, repeats, batch_ms):
    """put_array + delete against pickle.dumps (protocol 5, in-band) and arr.tobytes(); at the
    largest size also against np.copyto into a prefaulted array (the bandwidth bound)."""
    arr = _source(nbytes)
    key = "put-%d" % nbytes

    def put():
        pool.put_array(key, arr)
        pool.delete(key)

    cases = {
        "zcopy": put,
        "pickle": lambda: pickle.dumps(arr, protocol=5),
        "tobytes": arr.tobytes,
    }
    with_copyto = nbytes == max(SIZES)
    if with_copyto:
        dst = np.empty_like(arr)
        dst.fill(1)  # prefault: the pool's pages are prefaulted too
        cases["copyto"] = lambda: np.copyto(dst, arr)
    t = measure(cases, repeats, batch_ms)

    name = "put_array + delete, %s" % fmt_size(nbytes)
    if nbytes == 4 << 10:
        target, met = "put_array 4 KiB ≤ 10 µs", t["zcopy"] <= PUT_4K_TARGET_NS
    else:
        target, met = "—", None
    rows = [
        row(name, t["zcopy"], t["pickle"], "pickle.dumps in-band", target, met),
        row(name, t["zcopy"], t["tobytes"], "arr.tobytes()", target, met),
    ]
    if with_copyto:
        ratio = t["copyto"] / t["zcopy"]
        r = row(name, t["zcopy"], t["copyto"], "np.copyto, prefaulted", "≥ 0.8× np.copyto", ratio >= COPYTO_TARGET_RATIO)
        r["zcopy"] += " (%s)" % fmt_rate(nbytes, t["zcopy"])
        r["baseline"] += " (%s)" % fmt_rate(nbytes, t["copyto"])
        rows.append(r)
    return rows


def row(name, zcopy_ns, baseline_ns, baseline_name, target, met):
    return {
        "benchmark": name,
        "zcopy": fmt_time(zcopy_ns),
        "baseline": "%s (%s)" % (fmt_time(baseline_ns), baseline_name),
        "ratio": fmt_ratio(baseline_ns / zcopy_ns),
        "target": target,
        "met": "—" if met is None else ("yes" if met else "no"),
        "zcopy_ns": zcopy_ns,
        "baseline_ns": baseline_ns,
    }


COLUMNS = ("benchmark", "zcopy", "baseline", "ratio", "target", "met")
TABLE_HEADER = "| benchmark | zcopy | baseline (same run) | ratio | target | met |"


def format_table(rows):
    lines = [TABLE_HEADER, "|" + "---|" * len(COLUMNS)]
    for r in rows:
        lines.append("| " + " | ".join(r[c] for c in COLUMNS) + " |")
    return "\n".join(lines)


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib():
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / (1 << 30)
    except (ValueError, OSError):
        return float("nan")


def header(repeats, batch_ms):
    return "\n".join(
        [
            "machine: %s, %d CPUs, %.0f GiB, %s %s %s"
            % (_cpu_model(), os.cpu_count() or 0, _memory_gib(), platform.system(), platform.release(), platform.machine()),
            "Python %s (%s); numpy %s; zcopy %s, library %s"
            % (platform.python_version(), platform.python_implementation(), np.__version__, zcopy.__version__, zcopy.library_path),
            "pool %s, default options; arrays are float32; each figure is the median of %d batches of ~%d ms, "
            "interleaved with its baselines; ratio = baseline time / zcopy time (> 1: zcopy faster)"
            % (fmt_size(POOL_SIZE), repeats, batch_ms),
        ]
    )


def run(repeats, batch_ms, sizes=SIZES):
    """All rows of the table, measured with one pool."""
    rows = []
    with zcopy.Pool(POOL_SIZE) as pool:
        for nbytes in sizes:
            rows += bench_get(pool, nbytes, repeats, batch_ms)
        for nbytes in sizes:
            rows += bench_put(pool, nbytes, repeats, batch_ms)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter batches (~10 s)")
    p.add_argument("--repeats", type=int, help="batches per figure (overrides the mode)")
    p.add_argument("--batch-ms", type=float, help="length of one batch in ms (overrides the mode)")
    args = p.parse_args(argv)
    repeats, batch_ms = QUICK if args.quick else DEFAULT
    repeats = args.repeats or repeats
    batch_ms = args.batch_ms or batch_ms

    print(header(repeats, batch_ms))
    print()
    t0 = time.perf_counter()
    print(format_table(run(repeats, batch_ms)))
    print()
    print("measured in %.1f s" % (time.perf_counter() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
