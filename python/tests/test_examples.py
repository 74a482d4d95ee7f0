"""Runs the Python examples and a tiny benchmark as subprocesses, as a user would."""

import importlib.util
import os
import subprocess
import sys

import pytest

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(PYTHON_DIR)
EXAMPLES = os.path.join(ROOT, "examples", "python")
ZERO_COPY_LINE = "zero-copy: reader pointer == writer pointer"


def run(script, *args, timeout=60):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PYTHON_DIR, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, script, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, "%s exited %d\n--- stdout\n%s\n--- stderr\n%s" % (
        script,
        proc.returncode,
        proc.stdout,
        proc.stderr,
    )
    return proc.stdout


def test_walkthrough():
    out = run(os.path.join(EXAMPLES, "walkthrough.py"))
    assert ZERO_COPY_LINE in out
    assert "FAILED" not in out


def test_shared_pool_example_consumers_read_views_of_the_producers_bytes_and_the_file_is_removed():
    out = run(os.path.join(EXAMPLES, "shared_pool.py"), "--consumers", "2", timeout=180)
    assert "ok: 2 consumers read 3 arrays each as views of the producer's bytes" in out
    assert out.count("ok:     same file offset as the producer's array") == 6
    assert out.count("ok:     checksum equals the producer's") == 6
    assert "FAILED" not in out
    name = out.split("unlinked /dev/shm/zcopy.")[1].split()[0]
    assert not os.path.exists("/dev/shm/zcopy." + name)


@pytest.mark.skipif(importlib.util.find_spec("cffi") is None, reason="cffi is not installed (pip install cffi)")
def test_cffi_numpy():
    out = run(os.path.join(EXAMPLES, "cffi_numpy.py"))
    assert ZERO_COPY_LINE in out
    assert "FAILED" not in out


def test_bench_smoke():
    # One batch of ~1 ms per figure: checks the benchmark runs and prints its table (a few s).
    out = run(os.path.join(PYTHON_DIR, "bench.py"), "--repeats", "1", "--batch-ms", "1")
    assert "| benchmark | zcopy | baseline (same run) | ratio | target | met |" in out
    assert out.count("\n| get_array") == 6 and out.count("\n| put_array") == 7
    assert "machine:" in out and "numpy" in out
