"""zcopy pools moved between two processes by Mooncake Transfer Engine (TCP, loopback only).

Runs examples/python/mooncake_transfer.py as a subprocess. Skipped, with the reason, where the
wheel (`pip install mooncake-transfer-engine-non-cuda`) is not importable or its engine cannot
initialise here. Both are probed in a subprocess: a broken native library cannot take pytest down.
"""

import json
import os
import re
import subprocess
import sys

import pytest

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(PYTHON_DIR)
EXAMPLE = os.path.join(ROOT, "examples", "python", "mooncake_transfer.py")
SKIP_EXIT = 77  # the example's "cannot run here"

PROBE = r"""
import json, os, sys, tempfile
out = {"stage": "import"}
try:
    from mooncake.engine import TransferEngine
except BaseException as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
    print(json.dumps(out)); sys.exit(0)
out["stage"] = "initialize"
sys.stderr.flush()
saved = os.dup(2)
with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
        rc = TransferEngine().initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
    except BaseException as e:
        rc = "%s: %s" % (type(e).__name__, e)
    finally:
        os.dup2(saved, 2)
    tmp.seek(0)
    log = tmp.read().decode("utf-8", "replace").splitlines()
if rc != 0:
    lines = [l for l in log if l[:1] in "EF"] or log[-3:]
    out["error"] = "initialize returned %s: %s" % (rc, " | ".join(lines) or "no message")
print(json.dumps(out))
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PYTHON_DIR, env.get("PYTHONPATH")) if p)
    return env


def _probe():
    """None when the engine imports and initialises here, else the reason it does not."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", PROBE], env=_env(), capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "probing mooncake.engine (import + initialize) did not finish in 60 s"
    lines = proc.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return "probing mooncake.engine crashed (exit %d): %s" % (proc.returncode, tail)
    if "error" not in out:
        return None
    if out["stage"] == "import":
        return "mooncake.engine is not importable (%s); pip install mooncake-transfer-engine-non-cuda" % out["error"]
    return "Mooncake TransferEngine cannot initialise here (P2PHANDSHAKE, tcp, 127.0.0.1): %s" % out["error"]


@pytest.fixture(scope="module")
def engine_usable():
    reason = _probe()
    if reason is not None:
        print("skipping the Mooncake interop test: " + reason)
        pytest.skip(reason)


def test_mooncake_moves_sealed_objects_between_two_pools(engine_usable):
    proc = subprocess.run(
        [sys.executable, EXAMPLE, "--timeout", "90"],
        env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    out = proc.stdout
    report = "exit %d\n--- stdout\n%s\n--- stderr (tail)\n%s" % (proc.returncode, out, proc.stderr[-4000:])
    if proc.returncode == SKIP_EXIT:
        reason = re.search(r"skipped: (.*)", out)
        pytest.skip(reason.group(1) if reason else report)
    assert proc.returncode == 0, report
    assert "mooncake interop: 8 passed, 0 failed" in out, report
    assert "FAILED" not in out, report
    # A -> B: every sealed object of A read into a created buffer of B, identical after the seal.
    for name, size in (("obj-1MiB", 1 << 20), ("obj-4KiB", 4096), ("obj-odd", 3 * 65536 + 17)):
        assert re.search(r"ok: +B read %s from A: %d bytes identical after seal" % (name, size), out), report
    # B -> A: a sealed object of B written into A's created buffer, which A sealed and compared.
    assert re.search(r"ok: +B wrote to-a into A: transfer_sync_write returned 0", out), report
    assert re.search(r"ok: +A got to-a written by B: %d bytes identical after seal" % (1 << 20), out), report
    assert "read-only get at the written address: True" in out, report
    # Every engine connection was between loopback addresses.
    assert len(re.findall(r"ok: +[AB] loopback: \d+ engine connections, all between loopback", out)) == 2, report
