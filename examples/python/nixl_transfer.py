"""zcopy pools moved between two processes by NIXL (UCX backend, host memory, loopback only).

Process A and process B each open a zcopy pool and register its whole region, once, with their
own `nixl_agent` (`zcopy.nixl.register_pool`: one "DRAM" registration descriptor of
`pool.region()`). They exchange agent metadata (`get_agent_metadata` / `add_remote_agent`) and
object descriptors over a pipe; NIXL's own listener is not used. Then B, the initiator:

  * reads (NIXL "READ") A's sealed objects of 1 B, 4 KiB, 1 MiB and 64 MiB into buffers it
    created in its own pool, seals them and compares their bytes (SHA-256) with A's;
  * writes (NIXL "WRITE") sealed objects of its own of the same sizes into buffers A created and
    left unsealed, with a NIXL notification per object; A waits for each notification, seals the
    buffer and compares;
  * reads 1,000 sealed 4 KiB objects of A in one transfer request (1,000-descriptor lists);
  * prepares descriptor lists once (`prep_xfer_dlist`: 1,000 created buffers of B, A's 1,000
    objects) and reuses them for four `make_prepped_xfer` requests of 250 objects each, the path
    NIXL users take for KV-cache blocks.

Every poll is bounded (`zcopy.nixl.wait`, --timeout). UCX moves the bytes between the two
processes on this host and carries its control messages over TCP on `lo` (UCX_NET_DEVICES=lo
unless set); the script checks its own sockets. Where `unshare -rn` works it re-runs itself in a
private network namespace holding only `lo` (--netns auto, the default; --netns off stays in the
host's namespace).

    pip install --no-deps nixl-cu12==1.5.1      # next to numpy; torch is not needed for DRAM
    cargo build --release --lib
    PYTHONPATH=python python3 examples/python/nixl_transfer.py [--timeout SECONDS] [--netns auto|on|off]

Prints one line per check and `nixl interop: N passed, M failed`; exits 0 when all passed, 1 on a
failure, 77 (skipped) when NIXL is not importable or its agent cannot initialise here, with the
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
POOL_SIZE = 256 << 20
SIZES = [("1B", 1), ("4KiB", 4096), ("1MiB", 1 << 20), ("64MiB", 64 << 20)]
BATCH = 1000  # objects of BATCH_SIZE in one request
BATCH_SIZE = 4096
PREPPED_REQUESTS = 4  # make_prepped_xfer requests over the same prepared lists
TESTED_VERSION = "1.5.1"
NOTIFY_TIMEOUT = 20.0  # seconds A waits for each WRITE's notification, once B reported it DONE


class Skip(Exception):
    """NIXL cannot run here: the whole example is skipped with this reason."""


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
    """Runs fn() with fd 2 sent to a temporary file; returns (result or raised exception, the
    text it wrote), and writes that text back to the real stderr (NIXL logs through glog, to fd 2)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            try:
                result = fn()
            except Exception as e:
                result = e
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        tmp.seek(0)
        text = tmp.read().decode("utf-8", "replace")
    sys.stderr.write(text)
    sys.stderr.flush()
    return result, text


def import_nixl():
    """zcopy.nixl, or Skip with the reason."""
    try:
        import zcopy.nixl
    except BaseException as e:  # missing, or a wheel whose libraries do not load here
        raise Skip("NIXL is not importable (%s: %s); pip install --no-deps nixl-cu12==%s"
                   % (type(e).__name__, e, TESTED_VERSION))
    return zcopy.nixl


def start_agent(name, progress_thread=True):
    """A nixl_agent with the UCX backend, no listener thread. Raises Skip when it cannot
    initialise here (no UCX plugin, no transport)."""
    os.environ.setdefault("UCX_NET_DEVICES", "lo")
    zn = import_nixl()
    config = zn.nixl_agent_config(enable_prog_thread=progress_thread, enable_listen_thread=False, backends=["UCX"])
    agent, log = call_capturing_stderr(lambda: zn.nixl_agent(name, config))
    if isinstance(agent, Exception) or "UCX" not in getattr(agent, "backends", {}):
        lines = log.splitlines()
        errors = [line for line in lines if line[:1] in ("E", "F") or "ERROR" in line] or lines[-3:]
        what = "%s: %s" % (type(agent).__name__, agent) if isinstance(agent, Exception) else "no UCX backend"
        raise Skip("nixl_agent(%r, backends=['UCX']) failed (%s): %s"
                   % (name, what, " | ".join(errors) or "no message"))
    return zn, agent


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


def agent_name(name):
    """add_remote_agent answers bytes; notifications are keyed by str."""
    return name.decode() if isinstance(name, bytes) else name


def batch_name(i):
    return "batch-%04d" % i


# --- loopback check: this process's TCP sockets, from /proc --------------------------------------


def _decode_address(hex_addr):
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1]), int(port, 16)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))  # four host-order 32-bit words
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
                local, remote = _decode_address(fields[1]), _decode_address(fields[2])
                found.append((fields[3], local[0], local[1], remote[0], remote[1]))
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
        "%d UCX connections, all between loopback addresses%s; listening on %s"
        % (len(peers), "" if not outside else " EXCEPT " + ", ".join(outside), ", ".join(listening) or "nothing"),
    )


# --- the two processes ---------------------------------------------------------------------------


def side_a(peer, report, timeout):
    """Owner of the sealed objects B reads, and of the created buffers B writes into."""
    results, info, held = [], {}, []
    try:
        pool = make_pool()
        zn, agent = start_agent("zcopy-A")
        with zn.register_pool(agent, pool) as reg:
            info.update(agent=agent.name, region=reg.region, nixl="%s %s" % (zn.package, zn.version))
            reads = []
            for label, size in SIZES:
                name = "r-" + label
                buf = fill(pool, name, size)
                held.append(buf)
                reads.append((name, buf.address, size, sha(pattern(name, size))))
            targets = {}
            for label, size in SIZES:
                targets["w-" + label] = pool.create("w-" + label, size)  # unsealed: B writes into it
            batch = [fill(pool, batch_name(i), BATCH_SIZE) for i in range(BATCH)]
            held.extend(batch)
            check(
                results,
                all(reg.contains(b.address, b.size) for b in list(targets.values()) + held),
                "A buffers in the registered region",
                "%d sealed objects and %d created buffers inside %#x + %d"
                % (len(held), len(targets), reg.region[0], reg.region[1]),
            )
            peer.send({
                "metadata": agent.get_agent_metadata(),
                "reads": reads,
                "write_targets": [(name, b.address, b.size) for name, b in targets.items()],
                "batch": zn.desc_array(batch),
                "batch_sha": [sha(pattern(batch_name(i), BATCH_SIZE)) for i in range(BATCH)],
            })
            b_name = agent_name(agent.add_remote_agent(recv(peer, timeout, "B's metadata")))
            info["peer"] = b_name

            done = recv(peer, timeout, "B's writes")
            for name, b_sha, seconds, detail in done["written"]:
                target = targets.pop(name)
                if b_sha is None:
                    target.abort()
                    check(results, False, "A got %s written by B" % name, "B's write failed: %s" % detail)
                    continue
                # NIXL's notification is what tells the target a WRITE has landed.
                tag = ("zcopy-write:" + name).encode()
                deadline = time.monotonic() + min(timeout, NOTIFY_TIMEOUT)
                while not agent.check_remote_xfer_done(b_name, tag, tag_is_prefix=False):
                    if time.monotonic() > deadline:
                        raise RuntimeError("no NIXL notification %r from B within %.0f s" % (tag, NOTIFY_TIMEOUT))
                    time.sleep(0.001)
                address, size = target.address, target.size
                target.seal()
                got = pool.get(name)
                data = got.tobytes()
                expected = pattern(name, size)
                check(
                    results,
                    data == expected and sha(data) == b_sha and got.address == address,
                    "A got %s written by B" % name,
                    "%d bytes %s after notification and seal (B sealed sha256 %s, A has %s; read-only get "
                    "at the written address: %s)"
                    % (size, "identical" if data == expected else "DIFFERENT", b_sha[:12], sha(data)[:12],
                       got.address == address),
                    nbytes=size,
                    seconds=seconds,
                )
                got.release()
            for target in targets.values():
                target.abort()
            check_loopback(results, "A")
            peer.send("checked")
            recv(peer, timeout, "B's goodbye")  # B is done with A's memory: deregister now
        report.send({"side": "A", "results": results, "info": info})
    except Skip as e:
        report.send({"side": "A", "skip": str(e)})
    except BaseException:
        report.send({"side": "A", "results": results, "info": info, "error": traceback.format_exc()})


def side_b(peer, report, timeout):
    """The initiator: reads A's objects into its own created buffers and writes its own into A's."""
    results, info = [], {}
    try:
        pool = make_pool()
        zn, agent = start_agent("zcopy-B")
        with zn.register_pool(agent, pool) as reg:
            info.update(agent=agent.name, region=reg.region, nixl="%s %s" % (zn.package, zn.version))
            offer = recv(peer, timeout, "A's objects")
            a_name = agent_name(agent.add_remote_agent(offer["metadata"]))
            info["peer"] = a_name
            peer.send(agent.get_agent_metadata())

            # READ: each sealed object of A into a buffer created here, then sealed and compared.
            for name, a_address, size, a_sha in offer["reads"]:
                buf = pool.create(name, size)
                handle = agent.initialize_xfer(
                    "READ", reg.xfer_descs([buf]), zn.remote_xfer_descs(agent, [(a_address, size)]), a_name)
                try:
                    seconds = zn.wait(agent, handle, timeout)
                finally:
                    handle.release()
                landed_at = buf.address
                buf.seal()
                got = pool.get(name)
                data = got.tobytes()
                same = data == pattern(name, size) and sha(data) == a_sha
                check(
                    results,
                    same and got.address == landed_at and reg.contains(landed_at, size),
                    "B read %s from A" % name,
                    "%d bytes %s after seal (A %#x -> B %#x)"
                    % (size, "identical" if same else "DIFFERENT", a_address, landed_at),
                    nbytes=size,
                    seconds=seconds,
                )
                got.release()

            # WRITE: a sealed object of B into each created buffer of A, with a notification.
            written = []
            for name, a_address, size in offer["write_targets"]:
                src = fill(pool, name, size)
                handle = agent.initialize_xfer(
                    "WRITE", reg.xfer_descs([src]), zn.remote_xfer_descs(agent, [(a_address, size)]), a_name,
                    ("zcopy-write:" + name).encode())
                try:
                    seconds = zn.wait(agent, handle, timeout)
                    written.append((name, sha(src.tobytes()), seconds, "DONE"))
                    check(results, True, "B wrote %s into A" % name, "DONE (B %#x -> A %#x)"
                          % (src.address, a_address), nbytes=size, seconds=seconds)
                except (RuntimeError, TimeoutError) as e:
                    written.append((name, None, None, str(e)))
                    check(results, False, "B wrote %s into A" % name, str(e))
                finally:
                    handle.release()
            peer.send({"written": written})

            # One request moving 1,000 objects: 1,000-descriptor lists on both sides.
            remote_batch = offer["batch"]
            bufs = [pool.create("b-" + batch_name(i), BATCH_SIZE) for i in range(BATCH)]
            handle = agent.initialize_xfer(
                "READ", reg.xfer_descs(bufs), zn.remote_xfer_descs(agent, remote_batch), a_name)
            try:
                seconds = zn.wait(agent, handle, timeout)
            finally:
                handle.release()
            bad = compare_batch(pool, bufs, offer["batch_sha"], "b-")
            check(
                results,
                not bad,
                "B read %d objects from A in one request" % BATCH,
                "%d x %d bytes, %s after seal"
                % (BATCH, BATCH_SIZE, "all identical" if not bad else "DIFFERENT: " + bad),
                nbytes=BATCH * BATCH_SIZE,
                seconds=seconds,
            )

            # Prepared once, reused: the remote list over A's objects and the local list over
            # created buffers of B; each request picks its objects by index.
            bufs = [pool.create("p-" + batch_name(i), BATCH_SIZE) for i in range(BATCH)]
            local = reg.prep_local(bufs)
            remote = zn.prep_remote(agent, a_name, remote_batch)
            per = BATCH // PREPPED_REQUESTS
            times = []
            try:
                for r in range(PREPPED_REQUESTS):
                    indices = list(range(r * per, (r + 1) * per))
                    handle = agent.make_prepped_xfer("READ", local, indices, remote, indices)
                    try:
                        times.append(zn.wait(agent, handle, timeout))
                    finally:
                        handle.release()
            finally:
                local.release()
                remote.release()
            bad = compare_batch(pool, bufs, offer["batch_sha"], "p-")
            check(
                results,
                not bad and len(times) == PREPPED_REQUESTS,
                "B read %d objects from A with prepared lists reused" % BATCH,
                "%d make_prepped_xfer requests of %d over one prep_xfer_dlist pair; %s after seal; "
                "requests took %s ms"
                % (PREPPED_REQUESTS, per, "all identical" if not bad else "DIFFERENT: " + bad,
                   "/".join("%.2f" % (t * 1e3) for t in times)),
                nbytes=BATCH * BATCH_SIZE,
                seconds=sum(times),
            )
            check_loopback(results, "B")
            recv(peer, timeout, "A's check")  # keep the agent up until A is done
            agent.remove_remote_agent(a_name)
            peer.send("bye")
        report.send({"side": "B", "results": results, "info": info})
    except Skip as e:
        report.send({"side": "B", "skip": str(e)})
    except BaseException:
        report.send({"side": "B", "results": results, "info": info, "error": traceback.format_exc()})


def compare_batch(pool, bufs, expected_sha, prefix):
    """Seals every buffer and compares it with its source; '' when all match, else the first
    mismatches."""
    bad = []
    for i, buf in enumerate(bufs):
        buf.seal()
        with pool.get(prefix + batch_name(i)) as got:
            if got.address != buf.address or sha(got.tobytes()) != expected_sha[i]:
                bad.append(batch_name(i))
    return ", ".join(bad[:5]) + (" and %d more" % (len(bad) - 5) if len(bad) > 5 else "")


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


def run_in_private_netns(script, argv, netns, timeout, label):
    """Re-runs `script argv` under `unshare -rn` (a user and a network namespace) and returns its
    exit code; None (run here) when that is not possible and netns is "auto"."""
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
        if netns == "on":
            print("%s: skipped: --netns on, but %s" % (label, reason))
            return SKIP_EXIT
        print("%s: host network namespace (%s); UCX restricted to lo" % (label, reason))
        return None
    cmd = [unshare, "-rn", sys.executable, os.path.abspath(script)] + list(argv) + ["--netns", "inside"]
    sys.stdout.flush()
    proc = subprocess.Popen(cmd)  # unshare execs python: proc.pid is the inner parent
    try:
        return proc.wait(timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        print("%s: the namespaced run did not finish in %.0f s" % (label, timeout + 30))
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


def run_pair(target_a, target_b, args_a, args_b, timeout, label):
    """Starts A and B (spawn), waits for both reports within `timeout` seconds, and stops both on
    every way out. Returns ({side: report}, {side: why it has none}, seconds)."""
    ctx = mp.get_context("spawn")
    a_peer, b_peer = ctx.Pipe()
    a_report_r, a_report_w = ctx.Pipe(duplex=False)
    b_report_r, b_report_w = ctx.Pipe(duplex=False)
    pa = ctx.Process(target=target_a, args=(a_peer, a_report_w) + tuple(args_a), name=label + "-A", daemon=True)
    pb = ctx.Process(target=target_b, args=(b_peer, b_report_w) + tuple(args_b), name=label + "-B", daemon=True)
    procs = [pa, pb]
    reports, missing = {}, {}
    t_start = time.monotonic()
    try:
        pa.start()
        pb.start()
        for c in (a_peer, b_peer, a_report_w, b_report_w):
            c.close()  # the children hold these now: EOF reaches a side when the other exits
        print("%s: A pid %d, B pid %d" % (label, pa.pid, pb.pid))
        sys.stdout.flush()
        deadline = t_start + timeout
        pending = {a_report_r: ("A", pa), b_report_r: ("B", pb)}
        while pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                for side, _ in pending.values():
                    missing[side] = "no report within %.0f s" % timeout
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
    return reports, missing, time.monotonic() - t_start


def rate(entry):
    s = entry.get("seconds")
    if not s or not entry.get("bytes"):
        return ""
    return " [%.2f ms, %.0f MB/s]" % (s * 1e3, entry["bytes"] / s / 1e6)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--timeout", type=float, default=120.0, help="overall limit in seconds (default 120)")
    parser.add_argument(
        "--netns",
        choices=("auto", "on", "off", "inside"),
        default="auto",
        help="run in a private network namespace holding only lo (unshare -rn): auto (when possible), "
        "on (required), off",
    )
    args = parser.parse_args()
    # SIGTERM (from the outer run or a harness) unwinds through the `finally` blocks, which stop the
    # namespaced run, or A and B, by their handles.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if args.netns in ("auto", "on"):
        argv = ["--timeout", str(args.timeout)]
        code = run_in_private_netns(__file__, argv, args.netns, args.timeout, "nixl interop")
        if code is not None:
            return code
    elif args.netns == "inside":
        bring_loopback_up()
        print("nixl interop: private network namespace (only lo, brought up here)")

    step = max(5.0, args.timeout - 10)
    reports, missing, elapsed = run_pair(side_a, side_b, (step,), (step,), args.timeout, "nixl interop")

    skips = [r["skip"] for r in reports.values() if "skip" in r]
    if skips:
        print("nixl interop: skipped: %s" % skips[0])
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
            print("  %s: %s agent %s (peer %s), pool region %#x + %d registered once" % (
                side, info.get("nixl"), info.get("agent"), info.get("peer"), region[0], region[1]))
        for entry in report.get("results", []):
            mark = "ok:    " if entry["ok"] else "FAILED:"
            print("  %s %s: %s%s" % (mark, entry["name"], entry["detail"], rate(entry)))
            passed += entry["ok"]
            failed += not entry["ok"]
        if report.get("error"):
            print("  FAILED: process %s raised:\n%s" % (side, report["error"]))
            failed += 1
    # reads, writes (B's and A's checks), batch, prepped, A's region check, two loopback checks
    expected = 3 * len(SIZES) + 5
    if failed == 0 and passed < expected:
        print("  FAILED: only %d of %d checks ran" % (passed, expected))
        failed += 1
    moved = {"read": 0, "write": 0}
    for entry in reports.get("B", {}).get("results", []):
        if entry["ok"] and entry["bytes"]:
            moved["read" if entry["name"].startswith("B read") else "write"] += entry["bytes"]
    print("nixl interop: moved %d bytes A->B (READ), %d bytes B->A (WRITE); %.2f s with process start"
          % (moved["read"], moved["write"], elapsed))
    print("nixl interop: %d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
