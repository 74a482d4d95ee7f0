"""NIXL transfers between two processes: a zcopy pool registered once against registering each
buffer around its transfer.

Process A holds sealed objects (1,000 of 4 KiB and one of 64 MiB) in a zcopy pool registered once
with its agent. Process B reads them (NIXL "READ", UCX backend, host memory) into buffers of its
own pool, with two agents that differ only in how B's memory is registered:

  * pool:       B's whole pool region registered once, before the run;
  * per-buffer: B's destination buffers registered right before each transfer request and
                deregistered right after it, as an engine without a pool does for the tensors it
                moves (one `register_memory` call with one descriptor per buffer: its cheapest form).

Rows: 1,000 x 4 KiB in one request (`initialize_xfer`, 1,000-descriptor lists), the same through
prepared descriptor lists (`make_prepped_xfer`; with the pool they are prepared once, per buffer
they have to be prepared again after every registration), and 1 x 64 MiB. Each timing covers one
request from building its descriptor lists to releasing it; B's agents run without a progress
thread (the polling caller makes progress; BENCH_NIXL_PROGRESS_THREAD=1 turns it on). Modes
alternate within each round; the table gives medians over the rounds, the spread (min-max), the
cost of registering and deregistering the same buffers alone, and the ratio per-buffer / pool
measured in the same run. A's side is registered once in both modes, so the ratio counts only
one side's registrations. Bytes are checked (SHA-256) after a warm-up and after the timed rounds,
in each mode.

    pip install --no-deps nixl-cu12==1.5.1
    cargo build --release --lib
    PYTHONPATH=python python3 python/bench_nixl.py [--quick] [--rounds N] [--netns auto|on|off]

Runs in a private network namespace holding only `lo` where `unshare -rn` works (as
examples/python/nixl_transfer.py, whose process handling it uses). Exits 77 when NIXL cannot run
here, 1 when a transfer fails or moves the wrong bytes.
"""

import argparse
import hashlib
import importlib.util
import os
import signal
import statistics
import sys
import time
import traceback

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE_PATH = os.path.join(ROOT, "examples", "python", "nixl_transfer.py")
_spec = importlib.util.spec_from_file_location("nixl_transfer_example", EXAMPLE_PATH)
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)

SMALL, SMALL_SIZE = 1000, 4096
LARGE_SIZE = 64 << 20
ROWS = [
    ("small", "%d x 4 KiB, one request" % SMALL),
    ("prepped", "%d x 4 KiB, prepared lists" % SMALL),
    ("large", "1 x 64 MiB"),
]
MODES = ("pool", "per-buffer")
PROGRESS_THREAD = os.environ.get("BENCH_NIXL_PROGRESS_THREAD", "0") == "1"


def small_name(i):
    return "s-%04d" % i


def side_a(peer, report, timeout):
    """Serves sealed objects from a pool registered once; B does all the transfers."""
    try:
        pool = example.make_pool()
        zn, agent = example.start_agent("bench-A")
        with zn.register_pool(agent, pool):
            small = [example.fill(pool, small_name(i), SMALL_SIZE) for i in range(SMALL)]
            large = example.fill(pool, "large", LARGE_SIZE)
            peer.send({
                "metadata": agent.get_agent_metadata(),
                "small": zn.desc_array(small),
                "small_sha": hashlib.sha256(b"".join(b.tobytes() for b in small)).hexdigest(),
                "large": zn.desc_array([large]),
                "large_sha": hashlib.sha256(large.tobytes()).hexdigest(),
            })
            example.recv(peer, timeout, "B's goodbye")
        report.send({"side": "A"})
    except example.Skip as e:
        report.send({"side": "A", "skip": str(e)})
    except BaseException:
        report.send({"side": "A", "error": traceback.format_exc()})


def side_b(peer, report, timeout, rounds):
    results = {}
    try:
        pool = example.make_pool()
        # No progress threads: the polling request makes progress, so that two idle threads do
        # not compete with it for this machine's cores.
        zn, pooled = example.start_agent("bench-B-pool", PROGRESS_THREAD)
        _, each = example.start_agent("bench-B-each", PROGRESS_THREAD)
        with zn.register_pool(pooled, pool) as reg:
            offer = example.recv(peer, timeout, "A's objects")
            names = {a: example.agent_name(a.add_remote_agent(offer["metadata"])) for a in (pooled, each)}
            small = [pool.create("d-" + small_name(i), SMALL_SIZE) for i in range(SMALL)]
            large = [pool.create("d-large", LARGE_SIZE)]
            remote = {"small": offer["small"], "prepped": offer["small"], "large": offer["large"]}
            local = {"small": small, "prepped": small, "large": large}
            # The pool's prepared lists are made once: its registration never changes.
            prepped_pool = (reg.prep_local(small), zn.prep_remote(pooled, names[pooled], offer["small"]))
            indices = list(range(SMALL))

            def one(mode, row):
                """Seconds for one request of `row` in `mode`, registration included."""
                agent = pooled if mode == "pool" else each
                t0 = time.perf_counter()
                if mode == "per-buffer":
                    registered = agent.register_memory(
                        [(b.address, b.size, 0, "") for b in local[row]], zn.MEM_TYPE)
                try:
                    if row == "prepped":
                        if mode == "pool":
                            lh, rh = prepped_pool
                        else:
                            lh = agent.prep_xfer_dlist("NIXL_INIT_AGENT", zn.desc_array(local[row]), zn.MEM_TYPE)
                            rh = zn.prep_remote(agent, names[agent], remote[row])
                        handle = agent.make_prepped_xfer("READ", lh, indices, rh, indices)
                    else:
                        ldescs = (reg.xfer_descs(local[row]) if mode == "pool"
                                  else agent.get_xfer_descs(zn.desc_array(local[row]), zn.MEM_TYPE))
                        handle = agent.initialize_xfer(
                            "READ", ldescs, zn.remote_xfer_descs(agent, remote[row]), names[agent])
                    try:
                        zn.wait(agent, handle, timeout)
                    finally:
                        handle.release()
                        if row == "prepped" and mode == "per-buffer":
                            lh.release()
                            rh.release()
                finally:
                    if mode == "per-buffer":
                        agent.deregister_memory(registered)
                return time.perf_counter() - t0

            def same_bytes(row):
                if row == "large":
                    return hashlib.sha256(large[0].tobytes()).hexdigest() == offer["large_sha"]
                return hashlib.sha256(b"".join(b.tobytes() for b in small)).hexdigest() == offer["small_sha"]

            # Warm-up, untimed: connections, first touch of B's pages, and a first byte check.
            checks = {}
            for mode in MODES:
                for row, _ in ROWS:
                    for b in local[row]:
                        b.array()[:] = 0
                    one(mode, row)
                    checks["%s %s (warm-up)" % (row, mode)] = same_bytes(row)
            times = {(row, mode): [] for row, _ in ROWS for mode in MODES}
            for r in range(rounds):
                for row, _ in ROWS:
                    for mode in (MODES if r % 2 == 0 else MODES[::-1]):
                        times[(row, mode)].append(one(mode, row))
            for mode in MODES:  # the last timed round's bytes, per mode
                for row, _ in ROWS:
                    for b in local[row]:
                        b.array()[:] = 0
                    one(mode, row)
                    checks["%s %s" % (row, mode)] = same_bytes(row)
            # Registration and deregistration alone, for the fourth column.
            reg_times = {row: [] for row, _ in ROWS if row != "prepped"}
            for r in range(rounds):
                for row in reg_times:
                    t0 = time.perf_counter()
                    d = each.register_memory([(b.address, b.size, 0, "") for b in local[row]], zn.MEM_TYPE)
                    each.deregister_memory(d)
                    reg_times[row].append(time.perf_counter() - t0)
            reg_times["prepped"] = reg_times["small"]
            for h in prepped_pool:
                h.release()
            for a in (pooled, each):
                a.remove_remote_agent(names[a])
            results = {"times": {"%s|%s" % k: v for k, v in times.items()}, "reg": reg_times, "checks": checks,
                       "nixl": "%s %s" % (zn.package, zn.version)}
            peer.send("bye")
        report.send({"side": "B", "results": results})
    except example.Skip as e:
        report.send({"side": "B", "skip": str(e)})
    except BaseException:
        report.send({"side": "B", "error": traceback.format_exc()})


def fmt_ms(values):
    return "%.2f (%.2f-%.2f)" % (statistics.median(values) * 1e3, min(values) * 1e3, max(values) * 1e3)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds (the demo's short run)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 15, 5 with --quick)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="overall limit in seconds (default 60 + 2 per round)")
    parser.add_argument("--netns", choices=("auto", "on", "off", "inside"), default="auto",
                        help="run in a private network namespace holding only lo (unshare -rn)")
    args = parser.parse_args()
    rounds = max(1, min(args.rounds or (5 if args.quick else 15), 50))
    timeout = args.timeout or 60.0 + 2 * rounds
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    if args.netns in ("auto", "on"):
        argv = ["--rounds", str(rounds), "--timeout", str(timeout)]
        code = example.run_in_private_netns(__file__, argv, args.netns, timeout, "nixl bench")
        if code is not None:
            return code
    elif args.netns == "inside":
        example.bring_loopback_up()

    step = max(5.0, timeout - 10)
    reports, missing, elapsed = example.run_pair(side_a, side_b, (step,), (step, rounds), timeout, "nixl bench")
    skips = [r["skip"] for r in reports.values() if "skip" in r]
    if skips:
        print("nixl bench: skipped: %s" % skips[0])
        return example.SKIP_EXIT
    failed = False
    for side in ("A", "B"):
        r = reports.get(side)
        if r is None:
            print("nixl bench: FAILED: process %s %s" % (side, missing.get(side, "sent no report")))
            failed = True
        elif r.get("error"):
            print("nixl bench: FAILED: process %s raised:\n%s" % (side, r["error"]))
            failed = True
    if failed:
        return 1
    res = reports["B"]["results"]
    bad = [name for name, ok in res["checks"].items() if not ok]
    print()
    print("NIXL READ between two processes (%s, UCX, host memory), %d rounds, medians in ms (min-max):"
          % (res["nixl"], rounds))
    print()
    print("| transfer | pool registered once | register per buffer | register + deregister alone | ratio |")
    print("|---|---|---|---|---|")
    for row, label in ROWS:
        pool_t = res["times"]["%s|pool" % row]
        each_t = res["times"]["%s|per-buffer" % row]
        ratio = statistics.median(each_t) / statistics.median(pool_t)
        cells = (label, fmt_ms(pool_t), fmt_ms(each_t), fmt_ms(res["reg"][row]), ratio)
        print("| %s | %s | %s | %s | %.2fx |" % cells)
    print()
    print("ratio: per-buffer median / pool median, same run; only B's side differs (A's pool is registered "
          "once in both). Bytes checked: %s; %.1f s with process start."
          % ("all identical" if not bad else "DIFFERENT in " + ", ".join(bad), elapsed))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
