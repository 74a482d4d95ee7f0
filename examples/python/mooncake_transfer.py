"""zcopy pools moved between two processes by Mooncake Transfer Engine (TCP, loopback only).

Process A and process B each open a zcopy pool and register its whole region with their own
`mooncake.engine.TransferEngine` (P2P handshake metadata: no etcd or metadata server; protocol
"tcp"; hostname 127.0.0.1). A stores sealed objects and sends B their (address, length) and its
engine session name over a pipe; B creates buffers of the same sizes in its own pool, has the
engine read A's bytes straight into them (`transfer_sync_read`), seals them and compares the bytes
`pool.get` returns. B then seals an object of its own and writes it (`transfer_sync_write`) into a
buffer A created and left unsealed; A seals it and compares. Every engine connection must be to a
loopback address; the script checks its own sockets.

The engine listens on wildcard addresses (its handshake port on 0.0.0.0, its TCP transport on ::)
and, in 0.3.13.post1, MC_TCP_BIND_ADDRESS=127.0.0.1 does not change that; so where `unshare -rn` works the script re-runs itself
in a private network namespace that holds only `lo` (--netns auto, the default; --netns off runs in
the host's namespace, where the engines still connect to 127.0.0.1 only).

    pip install mooncake-transfer-engine-non-cuda
    cargo build --release --lib
    PYTHONPATH=python python3 examples/python/mooncake_transfer.py [--timeout SECONDS] [--netns auto|on|off]

Prints one line per check and `mooncake interop: N passed, M failed`; exits 0 when all passed, 1 on
a failure, 77 (skipped) when the engine is not importable or cannot initialise here, with the
reason. Both processes are started with the "spawn" method (a forked child has no pool mapping:
the region is MADV_DONTFORK) and are terminated by their handles on every way out.
"""

import argparse
import hashlib
import ipaddress
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import tempfile
import time
import traceback

SKIP_EXIT = 77
POOL_SIZE = 64 << 20
HOST = "127.0.0.1"
# A -> B by transfer_sync_read: sealed objects of A read into created buffers of B.
READ_OBJECTS = [("obj-1MiB", 1 << 20), ("obj-4KiB", 4096), ("obj-odd", 3 * 65536 + 17)]
# B -> A by transfer_sync_write: a sealed object of B written into a created buffer of A.
WRITE_OBJECT = ("to-a", 1 << 20)


class Skip(Exception):
    """The engine cannot run here: the whole example is skipped with this reason."""


def pattern(name, size):
    """Deterministic, non-constant bytes for an object name (never what a fresh pool holds)."""
    import numpy as np

    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes()


def sha(data):
    return hashlib.sha256(data).hexdigest()


def check(results, ok, name, detail, nbytes=0, seconds=None):
    results.append({"ok": bool(ok), "name": name, "detail": detail, "bytes": nbytes, "seconds": seconds})
    return ok


def recv(conn, timeout, what):
    if not conn.poll(timeout):
        raise RuntimeError("timed out after %.0f s waiting for %s" % (timeout, what))
    return conn.recv()


def call_capturing_stderr(fn):
    """Runs fn() with fd 2 sent to a temporary file; returns (result, the text it wrote), and
    writes that text back to the real stderr (the engine logs through glog, straight to fd 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            result = fn()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode("utf-8", "replace")
    sys.stderr.write(text)
    sys.stderr.flush()
    return result, text


def start_engine(pool):
    """A TransferEngine on 127.0.0.1 (P2P handshake, TCP) with the pool's region registered.
    Returns (engine, session name, region). Raises Skip when the engine cannot run here."""
    try:
        from mooncake.engine import TransferEngine
    except BaseException as e:  # missing, or a wheel whose libraries do not load here
        raise Skip("mooncake.engine is not importable (%s: %s)" % (type(e).__name__, e))
    engine = TransferEngine()
    rc, log = call_capturing_stderr(lambda: engine.initialize(HOST, "P2PHANDSHAKE", "tcp", ""))
    if rc != 0:
        errors = [line for line in log.splitlines() if line[:1] in ("E", "F")] or log.splitlines()[-3:]
        raise Skip(
            "TransferEngine.initialize(%r, 'P2PHANDSHAKE', 'tcp', '') returned %d: %s"
            % (HOST, rc, " | ".join(errors) or "no message")
        )
    session = "%s:%d" % (HOST, engine.get_rpc_port())
    base, length = pool.region()
    rc = engine.register_memory(base, length)
    if rc != 0:
        raise RuntimeError("register_memory(%#x, %d) returned %d" % (base, length, rc))
    return engine, session, (base, length)


def make_pool():
    import zcopy

    return zcopy.Pool(POOL_SIZE, rdma="off", pages="small", prefault=False)


def fill(pool, name, size):
    """A sealed object `name` holding pattern(name, size)."""
    import numpy as np

    buf = pool.create(name, size)
    buf.array()[:] = np.frombuffer(pattern(name, size), dtype=np.uint8)
    buf.seal()
    return buf


def in_region(region, address, size):
    base, length = region
    return base <= address and address + size <= base + length


# --- loopback check: this process's TCP sockets, from /proc --------------------------------------


def _decode_address(hex_addr):
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1]), int(port, 16)
    # IPv6: four 32-bit words, each in host (little-endian) order
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    addr = ipaddress.IPv6Address(raw)
    return (addr.ipv4_mapped or addr), int(port, 16)


def own_tcp_sockets():
    """[(state, local ip, local port, remote ip, remote port)] of this process's TCP sockets."""
    inodes = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink("/proc/self/fd/" + fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes:
                local, rport = _decode_address(fields[1]), _decode_address(fields[2])
                found.append((fields[3], local[0], local[1], rport[0], rport[1]))
    return found


def check_loopback(results, side):
    try:
        sockets = own_tcp_sockets()
    except OSError as e:
        return check(results, True, "%s loopback" % side, "not checked: /proc unreadable (%s)" % e)
    listening = sorted({"%s:%d" % (ip, port) for state, ip, port, _, _ in sockets if state == "0A"})
    peers = [(ip, port, rip, rport) for state, ip, port, rip, rport in sockets if state != "0A"]
    outside = ["%s:%d->%s:%d" % p for p in peers if not (p[0].is_loopback and p[2].is_loopback)]
    return check(
        results,
        not outside,
        "%s loopback" % side,
        "%d engine connections, all between loopback addresses%s; listening on %s"
        % (len(peers), "" if not outside else " EXCEPT " + ", ".join(outside), ", ".join(listening) or "nothing"),
    )


# --- the two processes ---------------------------------------------------------------------------


def side_a(peer, report, timeout):
    """Owner of the sealed objects B reads, and of the created buffer B writes into."""
    results, info = [], {}
    try:
        pool = make_pool()
        engine, session, region = start_engine(pool)
        info.update(session=session, region=region)
        objects, held = [], []
        for name, size in READ_OBJECTS:
            buf = fill(pool, name, size)
            held.append(buf)
            objects.append((name, buf.address, size, sha(pattern(name, size))))
        wname, wsize = WRITE_OBJECT
        target = pool.create(wname, wsize)  # writable and unsealed: B's engine writes into it
        check(results, in_region(region, target.address, wsize), "A target in region", "%#x" % target.address)
        peer.send({"session": session, "objects": objects, "write_target": (wname, target.address, wsize)})

        done = recv(peer, timeout, "B's write")  # B has read everything and written target
        if done.get("written"):
            target.seal()
            got = pool.get(wname)
            data = got.tobytes()
            expected = pattern(wname, wsize)
            check(
                results,
                data == expected and sha(data) == done["sha256"] and got.address == target.address,
                "A got %s written by B" % wname,
                "%d bytes %s after seal (B sealed sha256 %s, A has %s; read-only get at the written address: %s)"
                % (wsize, "identical" if data == expected else "DIFFERENT", done["sha256"][:12], sha(data)[:12],
                   got.address == target.address),
                nbytes=wsize,
                seconds=done.get("seconds"),
            )
        else:
            target.abort()
            check(results, False, "A got %s written by B" % wname, "B's write failed: %s" % done.get("detail"))
        check_loopback(results, "A")
        peer.send("bye")
        engine.unregister_memory(region[0])
        report.send({"side": "A", "results": results, "info": info})
    except Skip as e:
        report.send({"side": "A", "skip": str(e)})
    except BaseException:
        report.send({"side": "A", "results": results, "info": info, "error": traceback.format_exc()})


def side_b(peer, report, timeout):
    """Reads A's sealed objects into its own created buffers, then writes one object into A."""
    results, info = [], {}
    try:
        pool = make_pool()
        engine, session, region = start_engine(pool)
        info.update(session=session, region=region)
        offer = recv(peer, timeout, "A's objects")
        a_session = offer["session"]
        info["peer"] = a_session

        for name, a_address, size, a_sha in offer["objects"]:
            buf = pool.create(name, size)
            t0 = time.perf_counter()
            rc = engine.transfer_sync_read(a_session, buf.address, a_address, size)
            seconds = time.perf_counter() - t0
            if rc != 0:
                buf.abort()
                check(results, False, "B read %s from A" % name, "transfer_sync_read returned %d" % rc)
                continue
            landed_at = buf.address
            buf.seal()
            data = pool.get(name).tobytes()
            same = data == pattern(name, size) and sha(data) == a_sha
            check(
                results,
                same and in_region(region, landed_at, size),
                "B read %s from A" % name,
                "%d bytes %s after seal (A %#x -> B %#x)"
                % (size, "identical" if same else "DIFFERENT", a_address, landed_at),
                nbytes=size,
                seconds=seconds,
            )

        wname, wsize = WRITE_OBJECT
        _, a_target, tsize = offer["write_target"]
        src = fill(pool, wname, wsize)  # a sealed object of B is the source
        t0 = time.perf_counter()
        rc = engine.transfer_sync_write(a_session, src.address, a_target, min(wsize, tsize))
        seconds = time.perf_counter() - t0
        peer.send(
            {"written": rc == 0, "detail": "transfer_sync_write returned %d" % rc,
             "sha256": sha(src.tobytes()), "seconds": seconds}
        )
        check(results, rc == 0, "B wrote %s into A" % wname, "transfer_sync_write returned %d (%#x -> A %#x)"
              % (rc, src.address, a_target), nbytes=wsize if rc == 0 else 0, seconds=seconds)
        check_loopback(results, "B")
        recv(peer, timeout, "A's check")  # keep the engine up until A is done with it
        engine.unregister_memory(region[0])
        report.send({"side": "B", "results": results, "info": info})
    except Skip as e:
        report.send({"side": "B", "skip": str(e)})
    except BaseException:
        report.send({"side": "B", "results": results, "info": info, "error": traceback.format_exc()})


# --- the parent: start, wait (bounded), report, always terminate ---------------------------------


def bring_loopback_up():
    """Sets IFF_UP on lo (a new network namespace starts with it down)."""
    import fcntl
    import socket
    import struct

    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        flags = struct.unpack("16sH22x", fcntl.ioctl(s, siocgifflags, struct.pack("16sH22x", b"lo", 0)))[1]
        if not flags & iff_up:
            fcntl.ioctl(s, siocsifflags, struct.pack("16sH22x", b"lo", flags | iff_up))


def run_in_private_netns(args):
    """Re-runs this script under `unshare -rn` (a user and a network namespace) and returns its
    exit code; None (run here) when that is not possible and --netns is auto."""
    import shutil
    import subprocess

    unshare = shutil.which("unshare")
    reason = None
    if unshare is None:
        reason = "no unshare(1)"
    else:
        probe_code = "import runpy; runpy.run_path(%r)['bring_loopback_up']()" % os.path.abspath(__file__)
        try:
            probe = subprocess.run([unshare, "-rn", sys.executable, "-c", probe_code],
                                   capture_output=True, text=True, timeout=30)
            if probe.returncode != 0:
                lines = probe.stderr.strip().splitlines() or ["exit %d" % probe.returncode]
                reason = "unshare -rn failed: %s" % lines[-1]
        except (OSError, subprocess.SubprocessError) as e:
            reason = "unshare -rn failed: %s" % e
    if reason is not None:
        if args.netns == "on":
            print("mooncake interop: skipped: --netns on, but %s" % reason)
            return SKIP_EXIT
        print("mooncake interop: host network namespace (%s); engines connect to %s only" % (reason, HOST))
        return None
    script = os.path.abspath(__file__)
    cmd = [unshare, "-rn", sys.executable, script, "--netns", "inside", "--timeout", str(args.timeout)]
    sys.stdout.flush()
    proc = subprocess.Popen(cmd)  # unshare execs python: proc.pid is the inner parent
    try:
        return proc.wait(timeout=args.timeout + 30)
    except subprocess.TimeoutExpired:
        print("mooncake interop: the namespaced run did not finish in %.0f s" % (args.timeout + 30))
        print("mooncake interop: 0 passed, 1 failed")
        return 1
    finally:
        if proc.poll() is None:
            proc.terminate()  # the inner parent stops its children on SIGTERM
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def stop(procs):
    for p in procs:
        if p.is_alive():
            p.terminate()
    for p in procs:
        p.join(5)
        if p.is_alive():
            p.kill()
            p.join(5)


def rate(entry):
    s = entry.get("seconds")
    if not s or not entry.get("bytes"):
        return ""
    return " [%.2f ms, %.0f MB/s]" % (s * 1e3, entry["bytes"] / s / 1e6)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=90.0, help="overall limit in seconds (default 90)")
    parser.add_argument(
        "--netns",
        choices=("auto", "on", "off", "inside"),
        default="auto",
        help="run in a private network namespace holding only lo (unshare -rn), so that the engine's "
        "wildcard listeners are unreachable from outside: auto (when possible), on (required), off",
    )
    args = parser.parse_args()
    # SIGTERM (from the outer run or a harness) unwinds through the `finally` blocks, which stop the
    # namespaced run, or A and B, by their handles.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if args.netns in ("auto", "on"):
        code = run_in_private_netns(args)
        if code is not None:
            return code
    elif args.netns == "inside":
        bring_loopback_up()
        print("mooncake interop: private network namespace (only lo, brought up here)")

    ctx = mp.get_context("spawn")
    a_peer, b_peer = ctx.Pipe()
    a_report_r, a_report_w = ctx.Pipe(duplex=False)
    b_report_r, b_report_w = ctx.Pipe(duplex=False)
    step = max(5.0, args.timeout - 10)
    pa = ctx.Process(target=side_a, args=(a_peer, a_report_w, step), name="mooncake-A", daemon=True)
    pb = ctx.Process(target=side_b, args=(b_peer, b_report_w, step), name="mooncake-B", daemon=True)
    procs = [pa, pb]
    reports, missing = {}, {}
    t_start = time.monotonic()
    try:
        pa.start()
        pb.start()
        for c in (a_peer, b_peer, a_report_w, b_report_w):
            c.close()  # the children hold these now: EOF reaches a side when the other exits
        print("mooncake interop: A pid %d, B pid %d, %d MiB pools, TCP on %s" % (pa.pid, pb.pid, POOL_SIZE >> 20, HOST))
        deadline = t_start + args.timeout
        pending = {a_report_r: ("A", pa), b_report_r: ("B", pb)}
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for side, _ in pending.values():
                    missing[side] = "no report within %.0f s" % args.timeout
                break
            waitables = list(pending) + [p.sentinel for _, p in pending.values()]
            ready = mp.connection.wait(waitables, timeout=remaining)
            for conn in list(pending):
                side, proc = pending[conn]
                if conn in ready or proc.sentinel in ready:
                    try:
                        if conn.poll(0.5):
                            reports[side] = conn.recv()
                        else:
                            proc.join(1)
                            missing[side] = "exited (code %s) without a report" % proc.exitcode
                    except EOFError:
                        proc.join(1)
                        missing[side] = "exited (code %s) without a report" % proc.exitcode
                    del pending[conn]
            if any("skip" in r for r in reports.values()):
                break  # the other side would only wait for its peer
    finally:
        stop(procs)
    elapsed = time.monotonic() - t_start

    skips = [r["skip"] for r in reports.values() if "skip" in r]
    if skips:
        print("mooncake interop: skipped: %s" % skips[0])
        return SKIP_EXIT

    passed = failed = 0
    for side in ("A", "B"):
        report = reports.get(side)
        if report is None:
            print("  FAILED: process %s %s" % (side, missing.get(side, "sent no report")))
            failed += 1
            continue
        info = report.get("info", {})
        if info:
            region = info.get("region") or (0, 0)
            print("  %s: engine session %s, pool region %#x + %d registered" % (
                side, info.get("session"), region[0], region[1]))
        for entry in report.get("results", []):
            mark = "ok:    " if entry["ok"] else "FAILED:"
            print("  %s %s: %s%s" % (mark, entry["name"], entry["detail"], rate(entry)))
            passed += entry["ok"]
            failed += not entry["ok"]
        if report.get("error"):
            print("  FAILED: process %s raised:\n%s" % (side, report["error"]))
            failed += 1
    expected = len(READ_OBJECTS) + 5  # reads, write, A's check, A target, two loopback checks
    if failed == 0 and passed < expected:
        print("  FAILED: only %d of %d checks ran" % (passed, expected))
        failed += 1
    moved = {"A->B": 0, "B->A": 0}
    for entry in reports.get("B", {}).get("results", []):
        if entry["ok"] and entry["bytes"]:
            moved["A->B" if entry["name"].startswith("B read") else "B->A"] += entry["bytes"]
    print("mooncake interop: moved %d bytes A->B (read), %d bytes B->A (write); %.2f s with process start"
          % (moved["A->B"], moved["B->A"], elapsed))
    print("mooncake interop: %d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
