"""Multi-part objects read back from raw bytes, per docs/FORMAT.md, by zcopy and by an
independent parser written here from the document."""

import struct

import numpy as np
import pytest

import zcopy

MAGIC = b"ZCPARTS\0"


class FormatError(Exception):
    pass


def round64(n):
    return (n + 63) // 64 * 64


def parse(raw):
    """docs/FORMAT.md's reader, independently: [(offset, length)] or FormatError."""
    if len(raw) < 32 or raw[:8] != MAGIC:
        raise FormatError("short or bad magic")
    version, flags, count, header_len, reserved, total = struct.unpack_from("<HHIIIQ", raw, 8)
    if version != 1:
        raise FormatError("version")
    if header_len % 64 or header_len < 32 + 16 * count or header_len > len(raw):
        raise FormatError("header length")
    if total > len(raw):
        raise FormatError("total length")
    parts = []
    for i in range(count):
        offset, length = struct.unpack_from("<QQ", raw, 32 + 16 * i)
        if offset % 64 or offset < header_len or offset + length > len(raw):
            raise FormatError("part %d" % i)
        parts.append((offset, length))
    return parts


def header_fields(raw):
    version, flags, count, header_len, reserved, total = struct.unpack_from("<HHIIIQ", raw, 8)
    return dict(version=version, flags=flags, count=count, header_len=header_len, reserved=reserved, total=total)


def expected_layout(sizes):
    header_len = round64(32 + 16 * len(sizes))
    parts, offset = [], header_len
    for n in sizes:
        parts.append((offset, n))
        offset = round64(offset + n)
    return header_len, parts, offset


def fill(i, n):
    return ((np.arange(n, dtype=np.int64) * (2 * i + 3) + i) % 256).astype(np.uint8)


SIZES = [
    [10, 0, 64, 65],
    [1],
    [100, 200],
    [63, 64, 65, 0, 0, 1, 4097],
    [0],
    [7] * 9,
]


def make_object(pool, key, sizes):
    buf = pool.create_parts(key, sizes)
    assert buf.part_count == len(sizes)
    for i, n in enumerate(sizes):
        if n:
            buf.part(i)[:] = fill(i, n)
    buf.seal()
    buf.release()
    return pool.get(key).tobytes()


def test_documented_example_layout(pool):
    raw = make_object(pool, "ex", [10, 0, 64, 65])
    assert len(raw) == 384
    f = header_fields(raw)
    assert raw[:8] == bytes([0x5A, 0x43, 0x50, 0x41, 0x52, 0x54, 0x53, 0x00])
    assert f == dict(version=1, flags=0, count=4, header_len=128, reserved=0, total=384)
    assert parse(raw) == [(128, 10), (192, 0), (192, 64), (256, 65)]
    assert zcopy.parse_parts(raw) == [(128, 10), (192, 0), (192, 64), (256, 65)]


@pytest.mark.parametrize("sizes", SIZES, ids=lambda s: "-".join(map(str, s)))
def test_raw_bytes_parse_the_same_with_zcopy_and_independent_parser(pool, sizes):
    raw = make_object(pool, "k", sizes)
    header_len, parts, total = expected_layout(sizes)
    f = header_fields(raw)
    assert f["version"] == 1 and f["flags"] == 0 and f["reserved"] == 0
    assert f["count"] == len(sizes)
    assert f["header_len"] == header_len
    assert f["total"] == total == len(raw)
    assert raw[32 + 16 * len(sizes) : header_len] == bytes(header_len - 32 - 16 * len(sizes))

    mine = parse(raw)
    theirs = zcopy.parse_parts(raw)
    assert mine == theirs == parts
    for i, (offset, length) in enumerate(mine):
        assert offset % 64 == 0
        assert np.array_equal(np.frombuffer(raw[offset : offset + length], np.uint8), fill(i, length))


@pytest.mark.parametrize("sizes", SIZES[:3], ids=lambda s: "-".join(map(str, s)))
def test_handle_parts_match_raw_offsets(pool, sizes):
    raw = make_object(pool, "k", sizes)
    buf = pool.get("k")
    assert buf.size == len(raw)
    assert buf.part_count == len(sizes)
    for i, (offset, length) in enumerate(parse(raw)):
        address, n = buf.part_range(i)
        assert (address - buf.address, n) == (offset, length)
        assert np.array_equal(buf.part(i), fill(i, length))


def test_parse_parts_accepts_bytearray_and_ndarray(pool):
    raw = make_object(pool, "k", [5, 6])
    want = parse(raw)
    assert zcopy.parse_parts(bytearray(raw)) == want
    assert zcopy.parse_parts(np.frombuffer(raw, np.uint8)) == want
    assert zcopy.parse_parts(pool.get("k").array()) == want


def test_plain_object_has_no_parts(pool):
    pool.put("plain", b"just bytes, no header at all, 40 bytes.")
    assert pool.get("plain").part_count == 0
    with pytest.raises(zcopy.InvalidArgumentError):
        zcopy.parse_parts(pool.get_bytes("plain"))


def damaged(raw, offset, fmt, value):
    b = bytearray(raw)
    struct.pack_into(fmt, b, offset, value)
    return bytes(b)


def damages(raw):
    f = header_fields(raw)
    n = f["count"]
    return {
        "bad-magic": b"X" + raw[1:],
        "magic-nul-missing": raw[:7] + b"!" + raw[8:],
        "truncated-by-one": raw[:-1],
        "truncated-to-31": raw[:31],
        "truncated-into-header": raw[: f["header_len"] - 1],
        "empty": b"",
        "version-2": damaged(raw, 8, "<H", 2),
        "version-0": damaged(raw, 8, "<H", 0),
        "header-len-not-64-multiple": damaged(raw, 16, "<I", f["header_len"] + 1),
        "header-len-too-small": damaged(raw, 16, "<I", 0),
        "header-len-past-end": damaged(raw, 16, "<I", round64(len(raw) + 1)),
        "count-too-large-for-header": damaged(raw, 12, "<I", f["header_len"]),
        "total-past-end": damaged(raw, 24, "<Q", len(raw) + 1),
        "part-offset-unaligned": damaged(raw, 32 + 16 * (n - 1), "<Q", f["header_len"] + 1),
        "part-offset-inside-header": damaged(raw, 32, "<Q", 0),
        "part-length-past-end": damaged(raw, 40 + 16 * (n - 1), "<Q", len(raw)),
        "part-length-overflow": damaged(raw, 40, "<Q", 2**64 - 1),
    }


# A well-formed one-part object (10 bytes at 64), only to name the kinds of damage.
_SAMPLE = MAGIC + struct.pack("<HHIIIQQQ", 1, 0, 1, 64, 0, 128, 64, 10) + bytes(128 - 48)
DAMAGE_KINDS = list(damages(_SAMPLE))


def test_sample_header_is_well_formed():
    assert parse(_SAMPLE) == zcopy.parse_parts(_SAMPLE) == [(64, 10)]


@pytest.mark.parametrize("kind", DAMAGE_KINDS)
def test_damaged_bytes_are_refused(pool, kind):
    raw = make_object(pool, "k", [10, 0, 64, 65])
    bad = damages(raw)[kind]
    with pytest.raises(FormatError):
        parse(bad)
    with pytest.raises(zcopy.InvalidArgumentError):
        zcopy.parse_parts(bad)


def test_flags_are_ignored_by_readers(pool):
    raw = make_object(pool, "k", [10, 20])
    flagged = damaged(raw, 10, "<H", 0xFFFF)
    assert zcopy.parse_parts(flagged) == parse(raw)


def test_array_and_object_values_are_multi_part_objects(pool):
    arr = np.arange(30, dtype=np.int32)
    pool.put_array("a", arr)
    raw = pool.get_bytes("a")
    parts = zcopy.parse_parts(raw)
    assert parts == parse(raw) and len(parts) == 2
    offset, length = parts[1]
    assert length == arr.nbytes
    assert np.array_equal(np.frombuffer(raw[offset : offset + length], np.int32), arr)

    pool.put_object("o", {"x": np.arange(5, dtype=np.float64), "y": np.arange(3, dtype=np.uint8)})
    raw = pool.get_bytes("o")
    parts = zcopy.parse_parts(raw)
    assert parts == parse(raw) and len(parts) == 4  # magic, pickle stream, one per array
