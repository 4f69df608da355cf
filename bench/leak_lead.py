#!/usr/bin/env python3
# Measures how long before a steady leak's OOM kill sidewatch turns not ready (memory_high/oom_predicted).
# Run (root): BENCH_BIN=/tmp/bench-mem-target/release/sidewatch python3 bench/leak_lead.py
"""Steady leak lead time: how many seconds before the OOM kill sidewatch leaves the rotation
(first /readyz 503 naming memory_high or oom_predicted) when the app leaks at a steady rate.

Creates a cgroup v1 memory cgroup (/sys/fs/cgroup/memory/swbench-<pid>, limit 64 MiB) and runs
`sidewatch run --target ... --interval 200ms --cgroup <that dir>` with the default memory
thresholds (unready_above 0.92, ready_below 0.85, predict_oom_within 30s, interval 250ms) and only
SIDEWATCH_MEMORY_OOM_COOLDOWN=1s to shorten the wait between trials. Each trial starts a python3
child in the cgroup that allocates 1 MiB (`b"x" * n`, pages touched) on a fixed schedule, at the
rate that fills the limit in FILL seconds (limit / FILL; 64 MiB in 20 s = 1 MiB every 312 ms),
until the kernel OOM-kills it. The bench polls /readyz and `oom_kill` of memory.oom_control every
10 ms; lead = time of the kill - time of the first such 503. It also reports which reason came
first, and whether /readyz went back to 200 before the kill.

Target: lead >= 2 s at the 20 s fill. Needs root and cgroup v1 (helpers in cgroup.py).

usage: BENCH_BIN=/tmp/bench-mem-target/release/sidewatch python3 bench/leak_lead.py \
           [--fills 20,5,60] [--trials 5] [--limit-mib 64]
"""

import argparse
import random
import statistics
import time

import common
from cgroup import MIB, Cgroup, child_in, reasons, sidewatch

LEAK = """
import time
chunk, period = {chunk}, {period}
hold = []
t0 = time.monotonic()
while True:
    hold.append(b"x" * chunk)
    time.sleep(max(0.0, t0 + len(hold) * period - time.monotonic()))
"""

SIGNS = ("memory_high", "oom_predicted")


def trial(cg, admin, fill, limit, poll):
    chunk = MIB
    period = fill * chunk / limit
    kills0 = cg.oom_kills()
    start = time.monotonic()
    child = child_in(cg, LEAK.format(chunk=chunk, period=period))
    first = {}          # reason -> first time seen in a 503
    t_first = first_reasons = t_kill = None
    back_to_200 = 0
    peak = 0
    end = start + 2 * fill + 15
    nxt = start
    while time.monotonic() < end:
        now = time.monotonic()
        if cg.oom_kills() > kills0:
            t_kill = now
            break
        code, body = admin.get("/readyz")
        rs = reasons(body) if code == 503 else []
        for r in rs:
            first.setdefault(r, now)
        if t_first is None and any(r in SIGNS for r in rs):
            t_first, first_reasons = now, rs
        elif t_first is not None and code == 200:
            back_to_200 += 1
        peak = max(peak, int(cg.read("memory.usage_in_bytes")))
        nxt += poll
        time.sleep(max(0.0, nxt - time.monotonic()))
    child.kill()
    child.wait()
    return {
        "start": start, "kill": t_kill, "first": t_first, "first_reasons": first_reasons,
        "first_by_reason": first, "back_to_200": back_to_200, "peak": peak,
    }


def run_fill(fill, args, limit):
    up_port, admin_port = common.free_port(), common.free_port()
    up = common.upstream(up_port)
    leads = []
    with Cgroup(limit) as cg:
        sw = sidewatch(up_port, admin_port, cg.path, log=f"mem-leak-{fill:g}s.log",
                       oom_cooldown="1s")
        admin = common.Admin(admin_port)
        admin.wait_ready(200, timeout=15)
        for i in range(args.trials):
            time.sleep(1 + random.uniform(0, 0.5))
            r = trial(cg, admin, fill, limit, args.poll)
            if r["kill"] is None:
                print(f"  [fill {fill:g}s] trial {i + 1}: no OOM kill within the timeout", flush=True)
                continue
            if r["first"] is None:
                print(f"  [fill {fill:g}s] trial {i + 1}: killed after {r['kill'] - r['start']:.2f}s "
                      f"with NO prior 503 (lead 0)", flush=True)
                leads.append(0.0)
            else:
                lead = r["kill"] - r["first"]
                leads.append(lead)
                per = ", ".join(f"{k} {r['kill'] - t:.2f}s" for k, t in sorted(r["first_by_reason"].items()))
                print(f"  [fill {fill:g}s] trial {i + 1}: child start->kill {r['kill'] - r['start']:.2f}s, "
                      f"lead {lead:.2f}s (first 503: {'+'.join(r['first_reasons'])}; lead per reason: {per}; "
                      f"back to 200 before the kill: {r['back_to_200']} polls; peak usage "
                      f"{r['peak'] / MIB:.1f} MiB)", flush=True)
            admin.wait_ready(200, timeout=20)
        common.stop(sw)
    common.stop(up)
    return leads


def run():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fills", default="20,5,60", help="fill times in seconds, comma-separated")
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--limit-mib", type=int, default=64)
    ap.add_argument("--poll", type=float, default=0.01, help="poll period of /readyz, seconds")
    args = ap.parse_args()
    limit = args.limit_mib * MIB
    results = {}
    for fill in (float(x) for x in args.fills.split(",")):
        print(f"fill {fill:g}s: {args.limit_mib} MiB limit, 1 MiB every {fill * MIB / limit * 1e3:.0f} ms",
              flush=True)
        results[fill] = run_fill(fill, args, limit)
    for fill, leads in results.items():
        if not leads:
            print(f"fill {fill:g}s: no kill measured")
            continue
        line = (f"fill {fill:g}s: lead min={min(leads):.2f}s median={statistics.median(leads):.2f}s "
                f"max={max(leads):.2f}s (n={len(leads)})")
        if fill == 20:
            line += f"  target min lead >= 2 s: {'MET' if min(leads) >= 2 else 'MISSED'}"
        print(line, flush=True)


if __name__ == "__main__":
    common.main(run)
