"""zcopy through cffi (ABI mode, no compiler): numpy arrays over pool memory, whose lifetime holds
the zc_buffer handle they point into. Exits 1 if a check fails.

    pip install cffi numpy
    cargo build --release --lib
    PYTHONPATH=python python3 examples/python/cffi_numpy.py

The declarations are read from zcopy.h at run time, so they are always the library's own.
"""

import os
import re
import sys

import cffi
import numpy as np

import zcopy  # only to find the library (and the header installed next to the package)

HERE = os.path.dirname(os.path.abspath(__file__))


def find_header():
    candidates = [
        os.path.join(os.path.dirname(os.path.abspath(zcopy.__file__)), "zcopy.h"),  # installed package
        os.path.join(HERE, os.pardir, os.pardir, "include", "zcopy.h"),  # this repository
    ]
    for path in candidates:
        if os.path.exists(path):
            return os.path.normpath(path)
    raise SystemExit("zcopy.h not found; tried " + ", ".join(candidates))


def cdef_source(header_text):
    """What cffi's cdef accepts of zcopy.h: no comments, no preprocessor lines except
    `#define NAME <integer>` (cffi turns those into lib.NAME), and no `extern "C" {` ... `}`
    (the lines inside `#ifdef __cplusplus` blocks)."""
    text = re.sub(r"/\*.*?\*/", "", header_text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    out, in_cplusplus = [], False
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#ifdef __cplusplus"):
            in_cplusplus = True
        elif in_cplusplus:
            in_cplusplus = not s.startswith("#endif")
        elif re.fullmatch(r"#define\s+ZC_\w+\s+\d+", s):
            out.append(s)
        elif not s.startswith("#"):
            out.append(line)
    return "\n".join(out)


HEADER = find_header()
ffi = cffi.FFI()
with open(HEADER) as f:
    ffi.cdef(cdef_source(f.read()))
lib = ffi.dlopen(zcopy.library_path)  # the very library the zcopy package loaded

failures = []


def check(ok, what):
    print("  %s %s" % ("ok:    " if ok else "FAILED:", what))
    if not ok:
        failures.append(what)
    return ok


def call(status):
    """Raises on a non-zero zc_status, with the library's message (which names its kind)."""
    if status != lib.ZC_OK:
        raise RuntimeError(ffi.string(lib.zc_last_error_message()).decode())


def address(ptr):
    return int(ffi.cast("uintptr_t", ptr))


def pool_array(handle, ptr, nbytes, dtype, readonly):
    """An ndarray over `nbytes` of pool memory at `ptr`, which belongs to the gc'd `handle`.

    How the array keeps the handle alive: np.frombuffer keeps the ffi.buffer as the array's
    base, and the ffi.buffer keeps the pointer cdata it was made from. `ptr` itself is a plain
    pointer (from zc_buffer_data), owning nothing, so we re-wrap it with ffi.gc: a gc'd cdata
    keeps its destructor alive as long as itself, and this destructor's closure holds `handle`.
    The chain is therefore

        array.base -> ffi.buffer -> data cdata -> destructor closure -> handle cdata

    and the handle's own ffi.gc destructor (zc_release) runs only once the array and every view
    of it are gone, however long the caller keeps them: the pool bytes cannot vanish under it.
    """
    owned = ffi.gc(ptr, lambda _ptr, _keep=handle: None)
    arr = np.frombuffer(ffi.buffer(owned, nbytes), dtype=dtype)
    if readonly:
        # ffi.buffer is always writable; sealed objects must not be written.
        arr.flags.writeable = False
    return arr


def stats(pool):
    s = ffi.new("zc_pool_stats *")
    call(lib.zc_pool_get_stats(pool, s))
    return s


def main():
    print("header  %s\nlibrary %s" % (HEADER, zcopy.library_path))

    opts = ffi.new("zc_pool_options *")
    lib.zc_pool_options_init(opts)
    opts.size = 64 << 20
    out_pool = ffi.new("zc_pool **")
    call(lib.zc_pool_open(opts, out_pool))
    pool = out_pool[0]  # closed explicitly at the end (buffers may outlive it anyway)
    try:
        run(pool)
    finally:
        lib.zc_pool_close(pool)
    if failures:
        print("%d check(s) FAILED: %s" % (len(failures), "; ".join(failures)))
        return 1
    print("all checks passed")
    return 0


def run(pool):
    key = b"tensor"
    n = 1 << 18
    nbytes = n * 4

    print("\n== create %d bytes under %r and write a numpy view in place" % (nbytes, key))
    out = ffi.new("zc_buffer **")
    call(lib.zc_create_buffer(pool, key, len(key), nbytes, out))
    writer = ffi.gc(out[0], lib.zc_release)  # released when the last array over it is gone
    wptr = lib.zc_buffer_data(writer)
    w = pool_array(writer, wptr, nbytes, np.float32, readonly=False)
    w[:] = np.arange(n, dtype=np.float32)
    check(w.ctypes.data == address(wptr), "the array is the buffer's bytes (%#x)" % address(wptr))

    print("\n== seal")
    call(lib.zc_seal(writer))
    w.flags.writeable = False  # our array; the C side no longer hands out a writable pointer
    check(lib.zc_buffer_data(writer) == ffi.NULL, "zc_buffer_data is NULL once sealed")

    print("\n== get it back")
    call(lib.zc_get(pool, key, len(key), 0, out))
    reader = ffi.gc(out[0], lib.zc_release)
    rptr = lib.zc_buffer_const_data(reader)
    r = pool_array(reader, rptr, lib.zc_buffer_size(reader), np.float32, readonly=True)
    print("  writer pointer %#x, reader pointer %#x" % (address(wptr), address(rptr)))
    same = check(address(rptr) == address(wptr), "reader pointer == writer pointer")
    same &= check(r.ctypes.data == w.ctypes.data and np.shares_memory(r, w), "the arrays share memory")
    same &= check(np.array_equal(r, np.arange(n, dtype=np.float32)), "the reader sees what was written")
    if same:
        print("zero-copy: reader pointer == writer pointer (%#x)" % address(rptr))

    print("\n== the arrays hold the handles")
    del writer, reader  # our names are gone: only the arrays' base chains hold the handles now
    call(lib.zc_delete(pool, key, len(key)))
    held = stats(pool).object_count
    check(held == 1 and np.array_equal(r, w), "after delete, with the arrays alive: 1 object, bytes intact")
    view = r[10:20]  # a slice chains to r, so it holds the reader handle too
    del w, r
    check(stats(pool).object_count == 1 and view[0] == 10.0, "a slice alone still holds the object")
    del view
    check(stats(pool).object_count == 0, "last view gone: both handles released, memory freed")


if __name__ == "__main__":
    sys.exit(main())
