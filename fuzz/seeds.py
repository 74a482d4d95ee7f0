#!/usr/bin/env python3
"""Writes the hand-made scenario seeds of the abi_model fuzz target (fuzz/corpus/abi_model/s-*).

Each seed is a sequence of operations in the byte encoding of `Op::decode` in
fuzz_targets/abi_model.rs: one tag byte, then the fields (u8: one byte, u16: two bytes
little-endian, bool: one byte). Run it again after changing that encoding.

    python3 fuzz/seeds.py [corpus dir]
"""

import os
import struct
import sys

# Tag bytes (tag % 32 picks the operation).
CREATE, PARTS, BATCH, SEAL, ABORT, RELEASE, WRITE, READ = 0, 3, 4, 5, 7, 8, 10, 12
GET, GET_BATCH, GET_INTO, PUT, DELETE, CONTAINS, STATS = 13, 15, 16, 17, 19, 21, 22
LARGEST, REOPEN, OPEN_BAD, MISC, PARSE = 23, 24, 26, 27, 29

# Size selectors (u16 < 0x8000: an index into the target's table).
S0, S1, S63, S64, S65, S100, S4095, S4096, S4097, S64K = range(10)
HALF, QUARTER1, CAP_64, CAP_1, CAP, CAP1, MIB, MIB1, MAX, HALFMAX = range(10, 20)
NULL = 0xFF  # pool or handle selector for a NULL argument
K_NULL, K_TOO_LONG = 248, 255  # key selectors: NULL pointer, 4097 bytes
K_EMPTY = 7


def raw(n):
    """A size of n*33 bytes (u16 with the high bit set)."""
    return 0x8000 | n


def create(p, k, size, out_null=0):
    return bytes([CREATE, p, k]) + struct.pack("<H", size) + bytes([out_null])


def parts(p, k, sizes, null=0):
    s = list(sizes) + [0] * (4 - len(sizes))
    return bytes([PARTS, p, k]) + struct.pack("<4H", *s) + bytes([len(sizes), null])


def batch(p, items, null=7):
    it = list(items) + [(0, 0)] * (4 - len(items))
    return bytes([BATCH, p]) + b"".join(bytes([k]) + struct.pack("<H", s) for k, s in it) + bytes([len(items), null])


def h_op(tag, h):
    return bytes([tag, h])


def get(p, k, timeout=0, out_null=0):
    return bytes([GET, p, k, timeout, out_null])


def get_batch(p, keys, timeout=0, null=7):
    ks = list(keys) + [0] * (4 - len(keys))
    return bytes([GET_BATCH, p]) + bytes(ks) + bytes([len(keys), timeout, null])


def get_into(p, k, dst, timeout=0):
    return bytes([GET_INTO, p, k, timeout, dst])


def put(p, k, size, data_null=0):
    return bytes([PUT, p, k]) + struct.pack("<H", size) + bytes([data_null])


def key_op(tag, p, k):
    return bytes([tag, p, k])


def stats(p, nulls=1):
    return bytes([STATS, p, nulls])


def reopen(slot, size_sel, max_sel):
    return bytes([REOPEN, slot, size_sel, max_sel])


def misc(h, index):
    return bytes([MISC, h, index])


def parse(h, at, data, cut=0):
    return bytes([PARSE, h, at]) + bytes(data) + bytes([cut])


seal = lambda h: h_op(SEAL, h)
abort = lambda h: h_op(ABORT, h)
release = lambda h: h_op(RELEASE, h)
write = lambda h: h_op(WRITE, h)
read = lambda h: h_op(READ, h)
delete = lambda p, k: key_op(DELETE, p, k)
contains = lambda p, k: key_op(CONTAINS, p, k)
largest = lambda p, k: key_op(LARGEST, p, k)

# Handle selectors index the table (h % len), which shifts as handles are released: the
# scenarios below keep few handles so the indices stay obvious.
SCENARIOS = {
    "double-seal": [create(0, 0, S4096), write(0), seal(0), seal(0), get(0, 0), read(1), seal(1),
                    abort(1), contains(0, 0), stats(0)],
    "abort-after-seal": [create(0, 1, S100), write(0), seal(0), abort(0), read(0), delete(0, 1),
                         read(0), release(0), stats(0), contains(0, 1)],
    "abort-then-recreate": [create(0, 2, S65), abort(0), abort(NULL), create(0, 2, S65), create(0, 2, S1),
                            write(0), seal(0), get(0, 2), stats(0)],
    "release-after-close": [create(0, 3, S4096), put(0, 4, S64K), get(0, 4), write(0), reopen(0, 0, 0),
                            seal(0), read(1), abort(0), release(0), create(0, 4, S64), stats(0)],
    "close-with-writer": [create(0, 0, S63), write(0), reopen(0, 1, 0), seal(0), write(0), read(0),
                          release(0), stats(0)],
    "close-with-parts-writer": [parts(0, 5, [10, 0, 64, 65]), write(0), reopen(0, 0, 0), seal(0), misc(0, 0),
                                misc(0, 3), read(0), release(0)],
    "object-limit": [reopen(0, 0, 3), create(0, 0, S0), create(0, 1, S0), put(0, 1, S1), release(0),
                     create(0, 1, S0), stats(0)],
    "object-limit-deleted-ref": [reopen(0, 1, 4), put(0, 0, S64), get(0, 0), delete(0, 0), put(0, 1, S64),
                                 put(0, 2, S64), release(0), put(0, 2, S64), stats(0)],
    "pool-full": [put(0, 0, CAP), create(0, 1, S1), create(0, 1, S0), delete(0, 0), create(0, 2, S1),
                  stats(0), largest(0, 3)],
    "fragmentation": [put(0, 0, QUARTER1), put(0, 1, QUARTER1), put(0, 2, QUARTER1), delete(0, 0),
                      delete(0, 2), create(0, 3, HALF), stats(0), largest(0, 4), release(0)],
    "too-big": [create(0, 0, CAP1), create(0, 0, MAX), put(0, 0, MIB1), create(1, 0, CAP), create(1, 1, S1),
                parts(0, 1, [MAX, S1]), parts(0, 1, [HALFMAX, HALFMAX]), stats(1)],
    "delete-while-referenced": [put(0, 0, S4097), get(0, 0), delete(0, 0), read(0), delete(0, 0),
                                put(0, 0, S4097), get(0, 0), read(0), read(1), release(0), read(0),
                                stats(0)],
    "delete-unsealed": [create(0, 6, S4096), delete(0, 6), get(0, 6), get_into(0, 6, 4), contains(0, 6),
                        seal(0), delete(0, 6), get(0, 6), stats(0)],
    "binary-keys": [put(0, 2, S1), put(0, 3, S63), put(0, 4, S64), put(0, 5, S65), put(0, 6, S100),
                    get(0, 2), get(0, 3), get(0, 4), get(0, 5), get(0, 6), contains(0, K_EMPTY),
                    put(0, K_EMPTY, S1), stats(0)],
    "bad-keys": [create(0, K_NULL, S64), create(0, K_TOO_LONG, S64), create(0, 251, S64), get(0, K_NULL),
                 put(0, K_TOO_LONG, S1), delete(0, K_EMPTY), contains(0, K_NULL), get_into(0, K_TOO_LONG, 4)],
    "null-args": [create(NULL, 0, S64), create(0, 0, S64, 1), get(0, 0, 0, 1), stats(NULL), stats(0, 0),
                  seal(NULL), abort(NULL), release(NULL), read(NULL), write(NULL), misc(NULL, 0),
                  put(0, 0, S64, 1), put(0, 0, S0, 1), get_into(0, 0, 1), get_into(0, 0, 7)],
    "timeouts": [put(0, 0, S64), get(0, 0, 12), get(0, 0, 14), get(0, 0, 15), get(0, 1, 15), get(0, 1, 12),
                 get_into(0, 0, 4, 13), get_batch(0, [0, 0], 14), get_batch(0, [0, 1], 15)],
    "get-into": [put(0, 0, S4097), get_into(0, 0, 0), get_into(0, 0, 2), get_into(0, 0, 3), get_into(0, 0, 4),
                 get_into(0, 0, 5), get_into(0, 0, 6), get_into(0, 0, 8), put(0, 1, S0), get_into(0, 1, 0),
                 get_into(0, 1, 8)],
    "parts": [parts(0, 3, [10, 0, 64, 65]), misc(0, 0), write(0), misc(0, 1), seal(0), misc(0, 2), get(0, 3),
              misc(1, 3), misc(1, 4), misc(1, 6), misc(1, 12), read(1), parse(1, 12, [255] * 8),
              parse(1, 32, [0] * 8, 7), get_into(0, 3, 5), parts(0, 4, [], 0), parts(0, 5, [1], 1), seal(2)],
    "batch-create": [batch(0, [(0, S64), (0, S64), (K_EMPTY, S1), (1, CAP1)]), batch(0, [(2, S0)], 0),
                     batch(0, [(2, S0)], 3), batch(0, []), batch(NULL, [(2, S1)]), seal(0), get_batch(0, [0, 1, 2])],
    "batch-get": [put(0, 0, S64), put(0, 1, S65), create(0, 2, S1), get_batch(0, [0, 1, 2, 3]),
                  get_batch(0, [0, K_NULL], 0, 2), get_batch(0, [0], 0, 0), get_batch(NULL, [0])],
    "two-pools": [put(0, 0, S4096), put(1, 0, S4096), get(1, 0), get(0, 0), delete(1, 0), read(0), read(1),
                  reopen(1, 1, 2), read(0), put(1, 0, S64), stats(1), stats(0)],
    "reopen-variants": [reopen(0, 2, 0), put(0, 0, CAP), stats(0), reopen(0, 3, 1), put(0, 0, S64),
                        reopen(1, 0x45, 4), put(1, 1, S64K), stats(1), reopen(0, 0xf4, 5), stats(0)],
    "open-bad": [bytes([OPEN_BAD, w]) for w in range(7)] + [stats(0)],
    "handles-full": [put(0, 0, S64)] + [get(0, 0) for _ in range(18)] + [stats(0), delete(0, 0), stats(0)],
    # A free range of exactly the request's size, in the same size class as the request: it must
    # be served.
    "size-class": [create(0, 0, S1), create(0, 1, CAP_64), put(0, 2, raw(30000)), stats(0)],
    "largest": [put(0, 0, raw(9000)), largest(0, 1), largest(0, 2), stats(0), largest(1, 1), largest(1, 2)],
}


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "corpus", "abi_model")
    os.makedirs(out, exist_ok=True)
    for name, ops in SCENARIOS.items():
        with open(os.path.join(out, f"s-{name}"), "wb") as f:
            f.write(b"".join(ops))
    print(f"{len(SCENARIOS)} scenario seeds in {out}")


if __name__ == "__main__":
    main()
