"""A shared pool across processes: one producer puts arrays into a named pool, several consumer
processes attach it by name and read them, and each consumer proves that what it got is the
pool file's own pages, not a copy: the array's address lies in the pool's data region of that
process, /proc/self/maps shows /dev/shm/zcopy.<name> mapped shared over that address, at the
same file offset where the producer's array lies, and the bytes hash to the producer's checksum.
Exits 1 on any mismatch; removes its pool file at the end.

    cargo build --release --lib
    PYTHONPATH=python python3 examples/python/shared_pool.py [--consumers N]
"""

import argparse
import hashlib
import multiprocessing
import os
import sys

import numpy as np

import zcopy

SHAPES = {"weights": ((512, 256), np.float32), "ids": ((100000,), np.int64), "mask": ((64, 64, 8), np.uint8)}
TIMEOUT = 60  # seconds: the bound of every wait for another process


def checksum(arr):
    return hashlib.sha256(memoryview(np.ascontiguousarray(arr)).cast("B")).hexdigest()


def where_in_file(name, address):
    """(mapping line, offset in the pool file) of `address` in this process, from /proc/self/maps;
    (None, None) when no mapping of the pool file covers it."""
    path = "/dev/shm/zcopy." + name
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == path:
                start, end = (int(x, 16) for x in fields[0].split("-"))
                if start <= address < end:
                    return line.strip(), int(fields[2], 16) + address - start
    return None, None


def producer(name, ready):
    """Creates the pool and puts one array per key; sends each array's checksum and file offset."""
    pool = zcopy.Pool(64 << 20, name=name)
    rng = np.random.default_rng(7)
    sent = {}
    for key, (shape, dtype) in SHAPES.items():
        arr = (rng.random(shape) * 1000).astype(dtype)
        pool.put_array(key, arr)
        stored = pool.get_array(key)  # the bytes in the pool, to say where they are in the file
        _, offset = where_in_file(name, stored.__array_interface__["data"][0])
        sent[key] = (checksum(arr), offset)
        print("producer %d: put %-8s %s %s, sha256 %s..., at file offset %#x" % (os.getpid(), key, dtype.__name__, shape, sent[key][0][:16], offset))
    del stored
    ready.put(sent)
    # Closing detaches this process only: the objects stay in the file for the consumers.
    pool.close()


def consumer(index, name, expected, results):
    """Attaches the pool by name and checks every array: a view of the file, with the right bytes."""
    try:
        results.put(check_arrays(index, name, expected))
    except Exception as e:
        results.put(["consumer %d raised %s: %s" % (index, type(e).__name__, e)])
        raise


def check_arrays(index, name, expected):
    failures, lines = [], []
    pool = zcopy.Pool.attach(name)
    base, length = pool.region()
    lines.append("consumer %d (pid %d): attached %r, data region %#x-%#x" % (index, os.getpid(), name, base, base + length))
    for key, (want_sum, want_offset) in expected.items():
        arr = pool.get_array(key)
        address = arr.__array_interface__["data"][0]
        line, offset = where_in_file(name, address)
        got_sum = checksum(arr)
        checks = {
            "inside the pool's data region": base <= address and address + arr.nbytes <= base + length,
            "the pool file is mapped shared over it": line is not None and line.split()[1].endswith("s"),
            "same file offset as the producer's array": offset == want_offset,
            "a view, not a copy (owndata False)": not arr.flags.owndata,
            "read-only": not arr.flags.writeable,
            "checksum equals the producer's": got_sum == want_sum,
        }
        lines.append("consumer %d: %-8s at %#x, file offset %s" % (index, key, address, "%#x" % offset if offset is not None else None))
        lines.append("consumer %d:   /proc/self/maps: %s" % (index, line))
        for what, ok in checks.items():
            lines.append("consumer %d:   %s %s" % (index, "ok:    " if ok else "FAILED:", what))
            if not ok:
                failures.append("consumer %d, %s: %s" % (index, key, what))
    del arr
    pool.close()
    # One write per consumer, so the consumers' reports do not interleave.
    sys.stdout.write("\n".join(lines) + "\n")
    sys.stdout.flush()
    return failures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--consumers", type=int, default=3)
    args = parser.parse_args()
    name = "example-shared-%d" % os.getpid()
    ctx = multiprocessing.get_context("spawn")  # a forked child could not use its parent's pool
    ready, results = ctx.Queue(), ctx.Queue()
    procs = []
    failures = []
    try:
        prod = ctx.Process(target=producer, args=(name, ready))
        prod.start()
        procs.append(prod)
        expected = ready.get(timeout=TIMEOUT)
        for i in range(args.consumers):
            proc = ctx.Process(target=consumer, args=(i, name, expected, results))
            proc.start()
            procs.append(proc)
        for _ in range(args.consumers):
            failures += results.get(timeout=TIMEOUT)
        for proc in procs:
            proc.join(TIMEOUT)
            if proc.exitcode != 0:
                failures.append("process %d exited %s" % (proc.pid, proc.exitcode))
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join(TIMEOUT)
        try:
            zcopy.unlink(name)
            print("unlinked /dev/shm/zcopy.%s" % name)
        except zcopy.NoSuchPoolError:
            pass
    print()
    if failures:
        print("FAILED: %d checks" % len(failures))
        for f in failures:
            print("  " + f)
        return 1
    print("ok: %d consumers read %d arrays each as views of the producer's bytes in the shared pool file" % (args.consumers, len(SHAPES)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
