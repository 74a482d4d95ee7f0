"""zcopy pools moved by NIXL, and the zcopy.nixl helpers.

Runs examples/python/nixl_transfer.py as a subprocess (two processes, READ and WRITE of 1 B to
64 MiB, 1,000 objects in one request, prepared descriptor lists reused), the helpers in a child
process with one agent, and python/bench_nixl.py for one round. Skipped, with the reason, where
the wheel (`pip install --no-deps nixl-cu12==1.5.1`) is not importable or its agent cannot
initialise here; both are probed in a subprocess, and every NIXL agent lives in a child process,
so that a broken native library (or one that crashes at exit) cannot take pytest down. The tests
that need no wheel (`import zcopy` never imports NIXL; the helpers say what to install) always run.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

PYTHON_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(PYTHON_DIR)
EXAMPLE = os.path.join(ROOT, "examples", "python", "nixl_transfer.py")
SKIP_EXIT = 77  # the example's "cannot run here"

PROBE = r"""
import json, os, sys, tempfile
out = {"stage": "import"}
try:
    import zcopy.nixl as zn
except BaseException as e:
    out["error"] = "%s: %s" % (type(e).__name__, e)
    print(json.dumps(out)); sys.exit(0)
out["stage"] = "agent"
out["package"] = zn.package
sys.stderr.flush()
saved = os.dup(2)
with tempfile.TemporaryFile() as tmp:
    os.dup2(tmp.fileno(), 2)
    try:
        agent = zn.nixl_agent("zcopy-probe", zn.nixl_agent_config(backends=["UCX"]))
        error = None if "UCX" in agent.backends else "no UCX backend"
    except BaseException as e:
        error = "%s: %s" % (type(e).__name__, e)
    finally:
        os.dup2(saved, 2)
    tmp.seek(0)
    log = tmp.read().decode("utf-8", "replace").splitlines()
if error:
    lines = [l for l in log if l[:1] in "EF" or "ERROR" in l] or log[-3:]
    out["error"] = "%s: %s" % (error, " | ".join(lines) or "no message")
print(json.dumps(out))
sys.stdout.flush()
os._exit(0)  # skip the wheel's teardown: only the answer matters here
"""

# One agent, one pool: the helpers' values, and a loopback READ inside the registered pool,
# then the same request after close() (refused: the region is no longer registered).
HELPERS = r"""
import json, os, sys
import numpy as np
import zcopy, zcopy.nixl as zn
out = {}
pool = zcopy.Pool(16 << 20, rdma="off", pages="small", prefault=False)
agent = zn.nixl_agent("zcopy-helpers", zn.nixl_agent_config(backends=["UCX"]))
reg = zn.register_pool(agent, pool)
base, length = pool.region()
out["region"] = [base, length]
out["reg_region"] = list(reg.region)
out["reg_descs"] = [list(reg.descs[i])[:3] for i in range(reg.descs.descCount())]
bufs = [pool.create("h%d" % i, size) for i, size in enumerate((1, 4096, 65537))]
out["buffers"] = [[b.address, b.size] for b in bufs]
out["desc_array"] = zn.desc_array(bufs).tolist()
out["desc_array_dtype"] = str(zn.desc_array(bufs).dtype)
out["desc_array_pairs"] = zn.desc_array([(b.address, b.size) for b in bufs]).tolist()
xd = reg.xfer_descs(bufs)
out["xfer_descs"] = [list(xd[i]) for i in range(xd.descCount())]
rd = zn.remote_xfer_descs(agent, [(base + 64, 100), (base + 4096, 1)])
out["remote_xfer_descs"] = [list(rd[i]) for i in range(rd.descCount())]
outside = np.zeros(4096, dtype=np.uint8)
try:
    reg.desc_array([bufs[0], (outside.ctypes.data, outside.nbytes)])
    out["outside"] = None
except ValueError as e:
    out["outside"] = str(e)
out["repr"] = repr(reg)
out["version"] = zn.version

# Loopback READ (the agent names itself as the peer) from a sealed object into a created buffer.
src = pool.create("src", 65537)
src.array()[:] = np.arange(65537, dtype=np.uint64).astype(np.uint8)
src.seal()
dst = pool.create("dst", 65537)
handle = agent.initialize_xfer("READ", reg.xfer_descs([dst]), zn.remote_xfer_descs(agent, [src]), agent.name)
zn.wait(agent, handle, 20)
handle.release()
out["loopback_equal"] = bool((dst.array() == src.array()).all())
# Prepared lists, reused for two requests picking different indices.
parts = [pool.create("part%d" % i, 4096) for i in range(4)]
local = reg.prep_local(parts)
remote = zn.prep_remote(agent, agent.name, [(src.address + 4096 * i, 4096) for i in range(4)])
for indices in ([0, 2], [1, 3]):
    h = agent.make_prepped_xfer("READ", local, indices, remote, indices)
    zn.wait(agent, h, 20)
    h.release()
local.release(); remote.release()
whole = src.array()
out["prepped_equal"] = [bool((p.array() == whole[4096 * i : 4096 * (i + 1)]).all()) for i, p in enumerate(parts)]
try:
    remote = zn.remote_xfer_descs(agent, [src])
    never_posted = agent.initialize_xfer("READ", reg.xfer_descs([dst]), remote, agent.name)
    zn.wait(agent, never_posted, 0.0, post=False)
except Exception as e:
    out["wait_unposted"] = type(e).__name__

reg.close()
reg.close()  # idempotent
out["closed"] = reg.closed
try:
    reg.xfer_descs([dst])
    out["after_close_descs"] = None
except ValueError as e:
    out["after_close_descs"] = str(e)
try:
    local = zn.remote_xfer_descs(agent, [dst])  # the same descriptors, without the closed registration
    agent.initialize_xfer("READ", local, zn.remote_xfer_descs(agent, [src]), agent.name)
    out["after_close_xfer"] = None
except Exception as e:
    out["after_close_xfer"] = type(e).__name__
with zn.register_pool(agent, pool) as again:
    out["with_open"] = not again.closed
out["with_closed"] = again.closed
print("HELPERS " + json.dumps(out))
sys.stdout.flush()
os._exit(0)
"""


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (PYTHON_DIR, env.get("PYTHONPATH")) if p)
    env.setdefault("UCX_NET_DEVICES", "lo")  # UCX's TCP stays on loopback
    return env


def _in_private_netns(argv):
    """argv run under `unshare -rn` with lo brought up, where that works (as the example does)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return argv
    up = "import runpy; runpy.run_path(%r)['bring_loopback_up']()" % EXAMPLE
    try:
        probe = subprocess.run([unshare, "-rn", sys.executable, "-c", up], capture_output=True, timeout=30)
        ok = probe.returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    if not ok:
        return argv
    then_exec = up + "; import os, sys; os.execv(sys.argv[1], sys.argv[1:])"
    return [unshare, "-rn", sys.executable, "-c", then_exec] + argv


def _probe():
    """None when zcopy.nixl imports and a UCX agent initialises here, else the reason it does not."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", PROBE], env=_env(), capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "probing NIXL (import + nixl_agent) did not finish in 60 s"
    lines = proc.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1])
    except (IndexError, ValueError):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return "probing NIXL crashed (exit %d): %s" % (proc.returncode, tail)
    if "error" not in out:
        return None
    if out["stage"] == "import":
        return "NIXL is not importable (%s); pip install --no-deps nixl-cu12==1.5.1" % out["error"]
    return "a NIXL agent with the UCX backend cannot initialise here: %s" % out["error"]


@pytest.fixture(scope="module")
def nixl_usable():
    reason = _probe()
    if reason is not None:
        print("skipping the NIXL tests: " + reason)
        pytest.skip(reason)


def test_import_zcopy_does_not_import_nixl():
    code = "import sys, zcopy; print(sorted(m for m in sys.modules if m.startswith(('nixl', 'zcopy.nixl'))))"
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_zcopy_nixl_without_the_wheel_says_what_to_install():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('nixl', 'nixl_cu12', 'nixl_cu13'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "try:\n"
        "    import zcopy.nixl\n"
        "except ImportError as e:\n"
        "    print('ImportError', e)\n"
        "import zcopy\n"
        "print('zcopy ok', zcopy.Pool is not None)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "ImportError zcopy.nixl needs a NIXL wheel (pip install nixl-cu12; tested with 1.5.1)" in proc.stdout
    assert "zcopy ok True" in proc.stdout


def test_nixl_helpers_describe_buffers_and_register_the_region_once(nixl_usable):
    proc = subprocess.run(
        _in_private_netns([sys.executable, "-c", HELPERS]),
        env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    found = re.search(r"^HELPERS (.*)$", proc.stdout, re.M)
    assert found, "exit %d\n%s\n%s" % (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    out = json.loads(found.group(1))
    base, length = out["region"]
    # The registration is the pool's whole region, one DRAM descriptor on device 0.
    assert out["reg_region"] == [base, length]
    assert out["reg_descs"] == [[base, length, 0]]
    # Descriptors carry each buffer's own address and size, in order, device 0.
    expected = [[address, size, 0] for address, size in out["buffers"]]
    assert [size for _, size in out["buffers"]] == [1, 4096, 65537]
    assert all(base <= a and a + s <= base + length for a, s in out["buffers"])
    assert out["desc_array"] == expected
    assert out["desc_array_dtype"] == "uint64"
    assert out["desc_array_pairs"] == expected
    assert out["xfer_descs"] == expected
    assert out["remote_xfer_descs"] == [[base + 64, 100, 0], [base + 4096, 1, 0]]
    assert out["outside"] is not None and re.match(
        r"descriptor 1 \(0x[0-9a-f]+ \+ 4096\) is outside the registered region 0x%x \+ %d" % (base, length),
        out["outside"],
    ), out["outside"]
    assert "with agent 'zcopy-helpers', open" in out["repr"]
    assert re.match(r"\d+\.\d+", out["version"]), out["version"]
    # NIXL moves bytes between buffers of the registered pool, also through reused prepared lists.
    assert out["loopback_equal"] is True
    assert out["prepped_equal"] == [True, True, True, True]
    assert out["wait_unposted"] == "nixlNotPostedError"  # polling a request never posted
    # After close(): no more descriptors from it, and NIXL refuses the pool's memory.
    assert out["closed"] is True
    assert out["after_close_descs"] == "the registration of %#x + %d is closed" % (base, length)
    assert out["after_close_xfer"] == "nixlNotFoundError"
    assert out["with_open"] is True and out["with_closed"] is True


def test_nixl_moves_sealed_objects_between_two_pools(nixl_usable):
    proc = subprocess.run(
        [sys.executable, EXAMPLE, "--timeout", "120"],
        env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=170,
    )
    out = proc.stdout
    report = "exit %d\n--- stdout\n%s\n--- stderr (tail)\n%s" % (proc.returncode, out, proc.stderr[-4000:])
    if proc.returncode == SKIP_EXIT:
        reason = re.search(r"skipped: (.*)", out)
        pytest.skip(reason.group(1) if reason else report)
    assert proc.returncode == 0, report
    assert "nixl interop: 17 passed, 0 failed" in out, report
    assert "FAILED" not in out, report
    sizes = (("1B", 1), ("4KiB", 4096), ("1MiB", 1 << 20), ("64MiB", 64 << 20))
    # READ: every sealed object of A read into a created buffer of B, identical after the seal.
    for label, size in sizes:
        assert re.search(r"ok: +B read r-%s from A: %d bytes identical after seal" % (label, size), out), report
    # WRITE: a sealed object of B written into A's created buffer; A sealed it after NIXL's
    # notification and found the same bytes at the address written.
    for label, size in sizes:
        assert re.search(r"ok: +B wrote w-%s into A: DONE" % label, out), report
        assert re.search(
            r"ok: +A got w-%s written by B: %d bytes identical after notification and seal .*"
            r"read-only get at the written address: True" % (label, size), out), report
    assert re.search(
        r"ok: +B read 1000 objects from A in one request: 1000 x 4096 bytes, all identical", out), report
    assert re.search(
        r"ok: +B read 1000 objects from A with prepared lists reused: 4 make_prepped_xfer requests of 250 "
        r"over one prep_xfer_dlist pair; all identical after seal", out), report
    # Both pools were registered once, whole.
    assert len(re.findall(r"pool region 0x[0-9a-f]+ \+ 268435456 registered once", out)) == 2, report
    # Every UCX connection was between loopback addresses.
    assert len(re.findall(r"ok: +[AB] loopback: \d+ UCX connections, all between loopback", out)) == 2, report


def test_nixl_benchmark_prints_its_table_with_identical_bytes(nixl_usable):
    bench = os.path.join(PYTHON_DIR, "bench_nixl.py")
    proc = subprocess.run(
        [sys.executable, bench, "--rounds", "1"],
        env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=150,
    )
    out = proc.stdout
    report = "exit %d\n--- stdout\n%s\n--- stderr (tail)\n%s" % (proc.returncode, out, proc.stderr[-4000:])
    if proc.returncode == SKIP_EXIT:
        reason = re.search(r"skipped: (.*)", out)
        pytest.skip(reason.group(1) if reason else report)
    assert proc.returncode == 0, report
    number = r"\d+\.\d\d \(\d+\.\d\d-\d+\.\d\d\)"
    for label in ("1000 x 4 KiB, one request", "1000 x 4 KiB, prepared lists", "1 x 64 MiB"):
        row = r"^\| %s \| %s \| %s \| %s \| \d+\.\d\dx \|$" % (label, number, number, number)
        assert re.search(row, out, re.M), report
    assert "Bytes checked: all identical" in out, report
