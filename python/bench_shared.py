"""Cross-process get_array of a shared zcopy pool against multiprocessing.shared_memory.

    cargo build --release --lib
    PYTHONPATH=python python3 python/bench_shared.py [--quick]

The writer (this process) opens a shared pool by name (`zcopy.Pool(size, name=..., rdma="off")`)
and stores float32 arrays of 4 KiB and 64 MiB with `put_array`; it writes the same bytes into one
`multiprocessing.shared_memory.SharedMemory` block per size. A reader process, started with the
"spawn" method, attaches both once (`zcopy.Pool.attach(name)`, `SharedMemory(name=...)`), checks
that it sees the writer's bytes, and times per call:

  * zcopy:    `pool.get_array(key)`, the array dropped at once (its reference is released);
  * baseline: `np.ndarray(shape, dtype, buffer=shm.buf)` over the block attached once, dropped;
  * reference: `get_array` on a private pool of the reader's own, the path without sharing.

The cases alternate batch after batch in the reader; each figure is the median of the batches,
with their spread (min-max). The ratio is zcopy's time / the baseline's (how many times slower
than wrapping a block already mapped). Runtime is bounded by cases x repeats x batch length:
about 15 s, about 5 s with --quick. Exits 77 when this build of the package has no
`zcopy.Pool.attach` (shared pools in Python), with a message.
"""

import argparse
import multiprocessing as mp
import os
import statistics
import sys
import time
import traceback
from multiprocessing import shared_memory

import numpy as np

import zcopy
from bench import fmt_ratio, fmt_size, fmt_time, format_table, header, samples

SIZES = (4 << 10, 64 << 20)
POOL_SIZE = 160 << 20
GET_TARGET_US = 5.0
READER_TIMEOUT_S = 300

# (repeats, batch length in ms) per mode.
DEFAULT = (9, 150)
QUICK = (5, 40)


def _key(nbytes):
    return "arr-%d" % nbytes


def _source(nbytes):
    return np.arange(nbytes // 4, dtype=np.float32)


def _attach_shm(name):
    """Attaches a block the writer made. Before Python 3.13 attaching registers the block with the
    resource tracker; a spawned child shares its parent's tracker, where the writer's own
    registration already stands and its unlink removes it, so there is nothing to undo here."""
    if sys.version_info >= (3, 13):
        return shared_memory.SharedMemory(name=name, track=False)
    return shared_memory.SharedMemory(name=name)


def reader(conn, pool_name, shm_names, repeats, batch_ms):
    """The reading process: attaches the writer's pool and blocks once, checks the bytes, times."""
    try:
        pool = zcopy.Pool.attach(pool_name)
        private = zcopy.Pool(POOL_SIZE, rdma="off")
        results = {}
        for nbytes in SIZES:
            key = _key(nbytes)
            shm = _attach_shm(shm_names[nbytes])
            src = _source(nbytes)
            shape, dtype = src.shape, src.dtype
            private.put_array(key, src)
            got = pool.get_array(key)
            wrapped = np.ndarray(shape, dtype, buffer=shm.buf)
            if not (np.array_equal(got, src) and np.array_equal(wrapped, src)):
                raise AssertionError("the reader does not see the writer's bytes for %s" % fmt_size(nbytes))
            del got, wrapped, src
            results[nbytes] = samples(
                {
                    "zcopy": lambda: pool.get_array(key),
                    "shm": lambda: np.ndarray(shape, dtype, buffer=shm.buf),
                    "private": lambda: private.get_array(key),
                },
                repeats,
                batch_ms,
            )
            shm.close()
        private.close()
        pool.close()
        conn.send(("ok", os.getpid(), results))
    except BaseException:  # reported to the writer, which prints it and exits non-zero
        conn.send(("error", os.getpid(), traceback.format_exc()))
    finally:
        conn.close()


def spread(samples):
    return "%s (%s–%s)" % (fmt_time(statistics.median(samples)), fmt_time(min(samples)), fmt_time(max(samples)))


def rows_for(nbytes, s):
    z, b, p = (statistics.median(s[k]) for k in ("zcopy", "shm", "private"))
    met = z <= GET_TARGET_US * 1e3
    return [
        {
            "benchmark": "get_array + drop, %s, other process (shared pool)" % fmt_size(nbytes),
            "zcopy": spread(s["zcopy"]),
            "baseline": "%s (SharedMemory attached once + np.ndarray per call)" % spread(s["shm"]),
            "ratio": fmt_ratio(z / b) + " the baseline's time",
            "target": "≤ 5 µs per call",
            "met": "yes" if met else "no",
        },
        {
            "benchmark": "get_array + drop, %s, private pool of the reader (reference)" % fmt_size(nbytes),
            "zcopy": spread(s["private"]),
            "baseline": "%s (other process, shared pool)" % spread(s["zcopy"]),
            "ratio": fmt_ratio(z / p) + " (shared / private)",
            "target": "report",
            "met": "—",
        },
    ]


def unlink_pool(name):
    """Removes the shared pool's file (the package's Pool.unlink when it has one)."""
    unlink = getattr(zcopy.Pool, "unlink", None)
    if unlink is not None:
        try:
            unlink(name)
        except zcopy.NotFoundError:
            pass
        except zcopy.SystemCallError:
            pass
        return
    zcopy._lib.lib.zc_pool_unlink(name.encode())  # noqa: SLF001 - the C ABI's unlink


def run(repeats, batch_ms):
    pool_name = "bench-py-%d" % os.getpid()
    pool = None
    blocks = {}
    proc = None
    try:
        pool = zcopy.Pool(POOL_SIZE, name=pool_name, rdma="off")
        for nbytes in SIZES:
            src = _source(nbytes)
            pool.put_array(_key(nbytes), src)
            shm = shared_memory.SharedMemory(create=True, size=nbytes)
            np.ndarray(src.shape, src.dtype, buffer=shm.buf)[:] = src
            blocks[nbytes] = shm
            del src
        ctx = mp.get_context("spawn")
        parent_end, child_end = ctx.Pipe(duplex=False)
        proc = ctx.Process(
            target=reader,
            args=(child_end, pool_name, {n: b.name for n, b in blocks.items()}, repeats, batch_ms),
        )
        proc.start()
        child_end.close()
        if not parent_end.poll(READER_TIMEOUT_S):
            raise RuntimeError("the reader (pid %d) did not answer in %d s" % (proc.pid, READER_TIMEOUT_S))
        try:
            status, pid, payload = parent_end.recv()
        except EOFError:
            proc.join(30)
            raise RuntimeError("the reader (pid %d) died without answering (exit code %s)" % (proc.pid, proc.exitcode)) from None
        if status != "ok":
            raise RuntimeError("the reader (pid %d) failed:\n%s" % (pid, payload))
        proc.join(30)
        return [r for nbytes in SIZES for r in rows_for(nbytes, payload[nbytes])]
    finally:
        if proc is not None and proc.is_alive():
            proc.kill()  # by its pid; only this reader, which this process started
        if proc is not None:
            proc.join()
        for shm in blocks.values():
            shm.close()
            shm.unlink()
        if pool is not None:
            pool.close()
            unlink_pool(pool_name)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer, shorter batches (~5 s)")
    p.add_argument("--repeats", type=int, help="batches per figure (overrides the mode)")
    p.add_argument("--batch-ms", type=float, help="length of one batch in ms (overrides the mode)")
    args = p.parse_args(argv)
    if not hasattr(zcopy.Pool, "attach"):
        print(
            "bench_shared.py: this zcopy package has no zcopy.Pool.attach (shared pools in Python); "
            "nothing to measure",
            file=sys.stderr,
        )
        return 77
    repeats, batch_ms = QUICK if args.quick else DEFAULT
    repeats = args.repeats or repeats
    batch_ms = args.batch_ms or batch_ms
    print("\n".join(header(repeats, batch_ms).splitlines()[:2]))
    print(
        "shared pool %s, RDMA off; arrays are float32; the reader is another process (multiprocessing "
        "spawn); each figure is the median of %d batches of ~%d ms with their spread (min–max), "
        "interleaved with its baseline; ratio = zcopy time / baseline time" % (fmt_size(POOL_SIZE), repeats, batch_ms)
    )
    print("load average at the start: %.2f %.2f %.2f" % os.getloadavg())
    print()
    t0 = time.perf_counter()
    rows = run(repeats, batch_ms)
    for r in rows:
        print("  %s: %s vs %s: %s [%s]" % (r["benchmark"], r["zcopy"], r["baseline"], r["ratio"], r["target"]))
    print()
    print(format_table(rows))
    print()
    print("measured in %.1f s; load average at the end: %.2f %.2f %.2f" % ((time.perf_counter() - t0,) + os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
