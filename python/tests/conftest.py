"""Shared fixtures for the zcopy Python tests.

The package finds libzcopy.so in the repository's target/ tree; build it first with
`cargo build --release --lib` at the repository root.
"""

import gc
import os

import pytest

import zcopy

POOL_SIZE = 64 << 20
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def open_pool(size=POOL_SIZE, **kwargs):
    """A small pool on 4 KiB pages; prefault off keeps each test's open cheap."""
    kwargs.setdefault("pages", "small")
    kwargs.setdefault("prefault", False)
    return zcopy.Pool(size, **kwargs)


@pytest.fixture
def pool():
    p = open_pool()
    try:
        yield p
    finally:
        gc.collect()
        p.close()


@pytest.fixture
def in_pool(pool):
    """in_pool(address, nbytes=1): whether [address, address + nbytes) lies inside the pool."""
    base, length = pool.region()

    def check(address, nbytes=1):
        return base <= address and address + max(nbytes, 1) <= base + length

    return check


@pytest.fixture
def handle_under():
    """handle_under(arr): the zcopy handle that keeps the bytes of an array from get_array alive.
    numpy 2 makes such an array's base (handle, capsule), numpy 1 the handle itself."""

    def find(arr):
        base = arr.base
        return base[0] if type(base) is tuple else base

    return find


@pytest.fixture
def make_pool():
    """make_pool(size=..., **options): opens extra pools, each closed after the test."""
    pools = []

    def make(size=POOL_SIZE, **kwargs):
        p = open_pool(size, **kwargs)
        pools.append(p)
        return p

    yield make
    gc.collect()
    for p in pools:
        p.close()


@pytest.fixture
def repo_root():
    return REPO_ROOT
