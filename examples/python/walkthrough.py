"""A walkthrough of the zcopy Python package: every step prints what happens, and every claim of
zero copy is checked (addresses compared, np.shares_memory); the script exits 1 if one fails.

    cargo build --release --lib
    PYTHONPATH=python python3 examples/python/walkthrough.py
"""

import gc
import sys

import numpy as np

import zcopy

failures = []


def check(ok, what):
    print("  %s %s" % ("ok:    " if ok else "FAILED:", what))
    if not ok:
        failures.append(what)
    return ok


def in_region(pool, address):
    base, length = pool.region()
    return base <= address < base + length


def step(title):
    print()
    print("== " + title)


def main():
    step("open a pool")
    pool = zcopy.Pool(64 << 20)  # default options: THP, prefaulted, RDMA if a device exists
    base, length = pool.region()
    print("  64 MiB pool mapped at %#x (%d bytes), %d RDMA registrations" % (base, length, pool.rdma_count))

    step("create a buffer and write a numpy view of it in place")
    shape = (256, 1024)
    nbytes = int(np.prod(shape)) * 4
    writer = pool.create("frame", nbytes)  # writable, invisible to get() until sealed
    w = writer.array(np.float32, shape)  # an ndarray over the pool bytes, not a copy
    w[:] = np.arange(w.size, dtype=np.float32).reshape(shape)  # the only write: in place
    print("  key 'frame': %d bytes at %#x; the writer's array starts at %#x" % (nbytes, writer.address, w.ctypes.data))
    check(w.ctypes.data == writer.address, "the writer's array is the buffer's bytes")
    check(in_region(pool, w.ctypes.data), "and they lie inside the pool")
    check("frame" not in pool, "an unsealed key is invisible to readers")

    step("seal: immutable and visible")
    writer.seal()
    print("  sealed; the writer's array is now read-only: writeable=%s" % w.flags.writeable)
    check(not w.flags.writeable, "views handed out before the seal became read-only")
    check("frame" in pool, "the key is visible")

    step("get: a read-only reference to the same bytes")
    reader = pool.get("frame")
    r = reader.array(np.float32, shape)
    print("  writer pointer %#x, reader pointer %#x" % (writer.address, reader.address))
    same = check(reader.address == writer.address, "reader pointer == writer pointer")
    same &= check(r.ctypes.data == w.ctypes.data, "the reader's array starts at the writer's array's address")
    same &= check(np.shares_memory(r, w), "np.shares_memory(reader array, writer array)")
    same &= check(np.array_equal(r, np.arange(r.size, dtype=np.float32).reshape(shape)), "the reader sees what was written")
    if same:
        print("zero-copy: reader pointer == writer pointer (%#x)" % reader.address)
    try:
        r[0, 0] = 1.0
        check(False, "writing through a reader's array is refused")
    except ValueError:
        check(True, "writing through a reader's array is refused (ValueError)")
    writer.release()  # drops this reference only; the arrays keep the object alive
    reader.release()

    step("put_array / get_array: one copy in, none out")
    weights = np.random.default_rng(0).standard_normal((512, 256)).astype(np.float32)
    pool.put_array("weights", weights)  # dtype and shape in a header part, the data copied once
    g1 = pool.get_array("weights")
    g2 = pool.get_array("weights")
    print("  stored %s %s; two gets give arrays at %#x and %#x" % (weights.dtype, weights.shape, g1.ctypes.data, g2.ctypes.data))
    check(g1.dtype == weights.dtype and g1.shape == weights.shape, "dtype and shape come back")
    check(np.array_equal(g1, weights), "contents come back")
    check(np.shares_memory(g1, g2) and g1.ctypes.data == g2.ctypes.data, "two gets share the same pool bytes")
    check(in_region(pool, g1.ctypes.data) and not np.shares_memory(g1, weights), "which are in the pool, not the source array")
    check(not g1.flags.writeable, "and are read-only")

    step("put_object / get_object: a dict of arrays, pickled with out-of-band buffers")
    model = {"w": weights, "b": np.ones(256, np.float64), "name": "layer0", "step": 7}
    pool.put_object("model", model)  # each array's data in its own 64-byte aligned part
    m1 = pool.get_object("model")
    m2 = pool.get_object("model")
    print("  got keys %s; m['w'] at %#x, m['b'] at %#x" % (sorted(m1), m1["w"].ctypes.data, m1["b"].ctypes.data))
    check(m1["name"] == "layer0" and m1["step"] == 7, "plain values come back")
    check(all(np.array_equal(m1[k], model[k]) for k in ("w", "b")), "arrays come back equal")
    check(all(np.shares_memory(m1[k], m2[k]) for k in ("w", "b")), "two get_object calls share the arrays' bytes (no copy)")
    check(all(in_region(pool, m1[k].ctypes.data) and m1[k].ctypes.data % 64 == 0 for k in ("w", "b")), "the arrays are 64-byte aligned pool memory")
    check(not m1["w"].flags.writeable, "and read-only")

    step("delete while a view lives")
    before = pool.stats()["object_count"]
    pool.delete("weights")
    during = pool.stats()["object_count"]
    print("  deleted 'weights' with g1, g2 alive: 'weights' in pool = %s, object_count %d -> %d" % ("weights" in pool, before, during))
    check("weights" not in pool, "the key is gone at once")
    check(during == before, "the object still holds memory while views of it live")
    check(np.array_equal(g1, weights), "the views still read the same bytes")
    del g1, g2
    gc.collect()  # not needed in CPython (reference counting releases at once); harmless
    after = pool.stats()["object_count"]
    print("  dropped the views: object_count %d -> %d" % (during, after))
    check(after == during - 1, "the last view gone, the object is freed")

    step("stats")
    for name, value in pool.stats().items():
        print("  %-20s %d" % (name, value))

    step("close")
    w_model = m1["w"]
    del m1, m2, r, w
    pool.close()
    print("  pool closed: %r" % pool)
    try:
        pool.get("frame")
        check(False, "calls on a closed pool fail")
    except zcopy.PoolClosedError as e:
        check(True, "calls on a closed pool fail (PoolClosedError: %s)" % e)
    check(np.array_equal(w_model, weights), "a view kept past close still reads its bytes (mapped until it goes)")
    del w_model

    print()
    if failures:
        print("%d check(s) FAILED: %s" % (len(failures), "; ".join(failures)))
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
