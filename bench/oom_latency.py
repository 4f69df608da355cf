#!/usr/bin/env python3
# Measures OOM kill -> /readyz 503 (oom_killed) and -> sidewatch_oom_kills_total latency on cgroup v1.
# Run (root): BENCH_BIN=/tmp/bench-mem-target/release/sidewatch python3 bench/oom_latency.py
"""OOM kill -> /readyz latency: how long after the kernel OOM-kills a process in the watched cgroup
sidewatch answers /readyz 503 with `oom_killed`, and counts it in `sidewatch_oom_kills_total`.

Creates a cgroup v1 memory cgroup (/sys/fs/cgroup/memory/swbench-<pid>, limit 64 MiB), starts
bench/upstream.py and `sidewatch run --target ... --interval 200ms --cgroup <that dir>` with
SIDEWATCH_MEMORY_OOM_COOLDOWN=1s, SIDEWATCH_MEMORY_UNREADY_ABOVE=1.0, _READY_BELOW=0.99 and
_PREDICT_OOM_WITHIN=null, so that only the OOM kill can make it unready. Each trial puts a fresh
python3 child into the cgroup that allocates 128 MiB at once (`b"x" * n`), so the kernel kills
it. The bench polls, every 1 ms: `oom_kill` of memory.oom_control (the moment of the kill is the
first poll that shows it incremented), /readyz (first 503 whose body names oom_killed) and
/metrics (sidewatch_oom_kills_total incremented). It also arms its own eventfd on
memory.oom_control to time the start of the OOM (the kernel notifies before it picks a victim).
Between trials it waits for /readyz 200 (cooldown) plus a random 0-500 ms so kills fall at random
phases of sidewatch's sampling ticks.

Runs twice: default SIDEWATCH_MEMORY_INTERVAL (250 ms; the eventfd "event path" wakes sidewatch)
and SIDEWATCH_MEMORY_INTERVAL=1s (event path still armed, polling rarer). Targets: kill -> 503
<= 50 ms on the event path, <= one memory interval on the fallback.

Needs root and cgroup v1 at /sys/fs/cgroup/memory. The helpers it shares with leak_lead.py and
memory_overhead.py (cgroup, sidewatch with a cgroup, children in it) are in cgroup.py.

usage: BENCH_BIN=/tmp/bench-mem-target/release/sidewatch python3 bench/oom_latency.py \
           [--trials 30] [--intervals default,1s] [--limit-mib 64]
"""

import argparse
import os
import random
import signal
import sys
import threading
import time

import common
from cgroup import MIB, Cgroup, child_in, oom_eventfd, reasons, sidewatch


def fmt(stats):
    return " ".join(f"{k}={stats[k]}" for k in ("median", "p90", "p99", "max")) + \
        f" {stats['unit']} (n={stats['n']})"


# ---------------------------------------------------------------- the benchmark

ALLOC = "import time; time.sleep(0.05); x = b'x' * ({n}); time.sleep(5)"


def trial(cg, admin, efd, limit, timeout=10.0):
    kills0 = cg.oom_kills()
    metric0 = admin.metric("sidewatch_oom_kills_total")
    # Drain any stale eventfd count, then watch for the OOM start in a thread.
    os.set_blocking(efd, False)
    try:
        os.read(efd, 8)
    except BlockingIOError:
        pass
    os.set_blocking(efd, True)
    oom_start = []
    waiter = threading.Thread(target=lambda: (os.read(efd, 8), oom_start.append(time.monotonic())),
                              daemon=True)
    waiter.start()
    child = child_in(cg, ALLOC.format(n=2 * limit))
    t_kill = t_kill_prev = t_503 = t_metric = t_reaped = None
    status = None
    prev = time.monotonic()
    end = prev + timeout
    nxt = prev
    while time.monotonic() < end:
        now = time.monotonic()
        if t_kill is None and cg.oom_kills() > kills0:
            t_kill, t_kill_prev = now, prev
        if t_503 is None:
            t0 = time.monotonic()
            code, body = admin.get("/readyz")
            if code == 503 and "oom_killed" in reasons(body):
                t_503 = t0
        if t_metric is None:
            t0 = time.monotonic()
            if admin.metric("sidewatch_oom_kills_total") > metric0:
                t_metric = t0
        if t_reaped is None and child.poll() is not None:
            t_reaped, status = time.monotonic(), child.returncode
        if None not in (t_kill, t_503, t_metric, t_reaped):
            break
        prev = now
        nxt += 0.001
        delay = nxt - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            nxt = time.monotonic()
    if child.poll() is None:
        child.kill()
        child.wait()
    waiter.join(0.5)
    return {
        "kill": t_kill, "kill_prev": t_kill_prev, "ready503": t_503, "metric": t_metric,
        "reaped": t_reaped, "status": status, "oom_start": oom_start[0] if oom_start else None,
        "kills": cg.oom_kills() - kills0,
    }


def run_interval(args, interval, limit):
    up_port, admin_port = common.free_port(), common.free_port()
    up = common.upstream(up_port)
    with Cgroup(limit) as cg:
        efd, ctl = oom_eventfd(cg)
        try:
            memory = dict(oom_cooldown="1s", unready_above="1.0", ready_below="0.99",
                          predict_oom_within="null")
            if interval != "default":
                memory["interval"] = interval
            sw = sidewatch(up_port, admin_port, cg.path, log=f"mem-oom-{interval}.log", **memory)
            admin = common.Admin(admin_port)
            admin.wait_ready(200, timeout=15)
            rows = []
            for i in range(args.trials):
                time.sleep(random.uniform(0, 0.5))
                r = trial(cg, admin, efd, limit)
                rows.append(r)
                ms = lambda a, b: f"{(r[a] - r[b]) * 1e3:7.1f}" if r[a] and r[b] else "   none"
                sig = (f"-{signal.Signals(-r['status']).name}" if r["status"] and r["status"] < 0
                       else r["status"])
                print(f"  [{interval}] trial {i + 1:2d}: kills+{r['kills']} child={sig} "
                      f"oom_start->kill={ms('kill', 'oom_start')} ms  kill->503={ms('ready503', 'kill')} ms  "
                      f"kill->metric={ms('metric', 'kill')} ms  kill->reaped={ms('reaped', 'kill')} ms",
                      flush=True)
                admin.wait_ready(200, timeout=15)
            common.stop(sw)
        finally:
            os.close(efd)
            os.close(ctl)
    common.stop(up)
    return rows


def report(interval, rows, target_ms):
    good = [r for r in rows if r["kill"] and r["ready503"] and r["metric"]]
    missed = len(rows) - len(good)
    to503 = [r["ready503"] - r["kill"] for r in good]
    tometric = [r["metric"] - r["kill"] for r in good]
    # Lower bound of the kill moment: the poll before the one that showed it.
    to503_lo = [r["ready503"] - r["kill_prev"] for r in good]
    start = [r["ready503"] - r["oom_start"] for r in good if r["oom_start"]]
    s503 = common.summary(to503)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"memory interval={interval}: {len(good)} kills measured ({missed} incomplete); "
          f"loadavg at the end {load}")
    instant = sum(1 for x in to503 if x <= 0.005)
    print(f"  503 within 5 ms of the kill (the sample woken by the eventfd saw the kill): "
          f"{instant}/{len(good)}")
    print(f"  kill -> /readyz 503 oom_killed : {fmt(s503)}")
    print(f"  kill -> oom_kills_total +1     : {fmt(common.summary(tometric))}")
    print(f"  (kill from the previous 1 ms poll: {fmt(common.summary(to503_lo))})")
    if start:
        print(f"  OOM eventfd -> 503             : {fmt(common.summary(start))}")
    ok = s503["max"] <= target_ms and s503["p99"] <= target_ms and not missed
    print(f"  target max kill->503 <= {target_ms:g} ms: {'MET' if ok else 'MISSED'}", flush=True)


def run():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=30)
    ap.add_argument("--intervals", default="default,1s",
                    help="comma-separated SIDEWATCH_MEMORY_INTERVAL values; default = unset (250ms)")
    ap.add_argument("--limit-mib", type=int, default=64)
    args = ap.parse_args()
    sys.setswitchinterval(0.0005)  # let the eventfd thread timestamp promptly
    limit = args.limit_mib * MIB
    for interval in args.intervals.split(","):
        rows = run_interval(args, interval, limit)
        target = 50.0 if interval == "default" else 1000.0 * parse_secs(interval)
        report(interval, rows, target)


def parse_secs(text):
    for suffix, scale in (("ms", 1e-3), ("s", 1.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * scale
    raise ValueError(text)


if __name__ == "__main__":
    common.main(run)
