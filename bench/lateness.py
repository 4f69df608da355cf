#!/usr/bin/env python3
"""Probe schedule lateness: how late sidewatch's 100 ms probes reach the upstream, idle and under
a wrk flood of /readyz and /metrics.

bench/upstream.py runs SCHED_FIFO 50 (`chrt -f 50`) so the flood cannot delay its clock readings,
and logs the CLOCK_MONOTONIC time of each accepted probe. Two phases of --phase seconds each on
one sidewatch: quiet, then flooded by two wrk processes (`wrk -t1 -c50` on /readyz and on
/metrics) at once.

Lateness (the figure held to the target) is the gap excess: arrival_i - arrival_(i-1) - interval,
how much longer than one interval the app went unprobed. sidewatch's ticker (tokio Interval,
MissedTickBehavior::Delay) restarts its schedule from "now" after a tick more than 5 ms late, so
the fixed grid arrival_0 + i*interval is not the schedule it keeps; measured against that grid
every such restart would count again for every later probe. The grid figure is printed too, as an
upper bound: arrival_i - i*interval minus its smallest value over the phase (a timer fires late,
never early, so the least-late probe is the on-time reference; both ends use CLOCK_MONOTONIC of
one host, so there is no clock drift to correct). Target: p99 gap excess <= 5 ms under the flood.

Two experiment switches, to see what gives the probe thread precedence (not part of the figures):
--serve-nice N renices the admin server threads (sidewatch-serve) to N, --watch-fifo makes the
probe thread (sidewatch-watch) SCHED_FIFO 10.

usage: bench/lateness.py [--phase 60] [--serve-nice N] [--watch-fifo]
"""

import argparse
import os
import subprocess
import time

import common

INTERVAL = 0.1


def arrivals(path, start, end):
    with open(path) as f:
        ts = [int(line) / 1e9 for line in f if line.strip()]
    return [t for t in ts if start <= t <= end]


def report(name, ts):
    excess = [b - a - INTERVAL for a, b in zip(ts, ts[1:])]
    phase = [t - i * INTERVAL for i, t in enumerate(ts)]
    grid = [p - min(phase) for p in phase]
    e, g = common.summary(excess), common.summary(grid)
    print(f"{name:6} {len(ts)} probes | gap excess p50 {e['median']} p99 {e['p99']} max {e['max']} ms"
          f" | vs fixed grid p50 {g['median']} p99 {g['p99']} max {g['max']} ms", flush=True)
    return e


def run():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--phase", type=float, default=60.0)
    ap.add_argument("--serve-nice", type=int)
    ap.add_argument("--watch-fifo", action="store_true")
    args = ap.parse_args()
    os.makedirs(common.OUT, exist_ok=True)
    log = os.path.join(common.OUT, "lateness-arrivals.txt")
    open(log, "w").close()
    up_port, admin_port = common.free_port(), common.free_port()
    common.upstream(up_port, arrivals=log, prio=True)
    sw = common.sidewatch(up_port, admin_port, "100ms", log="lateness.log")
    common.Admin(admin_port).wait_ready(200)
    for tid in os.listdir(f"/proc/{sw.pid}/task"):
        with open(f"/proc/{sw.pid}/task/{tid}/comm") as f:
            name = f.read().strip()
        if args.serve_nice is not None and name == "sidewatch-serve":
            subprocess.run(["renice", "-n", str(args.serve_nice), "-p", tid], check=True,
                           stdout=subprocess.DEVNULL)
        if args.watch_fifo and name == "sidewatch-watch":
            subprocess.run(["chrt", "-f", "-p", "10", tid], check=True)
    time.sleep(1)

    quiet = (time.monotonic(), time.monotonic() + args.phase)
    print(f"quiet: other processes' CPU seconds: {common.others_busy(args.phase)[:5]}")

    wrk_logs = [os.path.join(common.OUT, f"lateness-wrk{i}.log") for i in (0, 1)]
    for path in wrk_logs:
        open(path, "w").close()
    cpu0 = common.cpu_seconds(sw.pid)
    floods = [common.spawn(["wrk", "-t1", "-c50", f"-d{args.phase + 2:g}s",
                            f"http://127.0.0.1:{admin_port}{path}"], log=f"lateness-wrk{i}.log")
              for i, path in enumerate(("/readyz", "/metrics"))]
    time.sleep(1)  # let wrk ramp up
    flood = (time.monotonic(), time.monotonic() + args.phase)
    print(f"flood: other processes' CPU seconds: {common.others_busy(args.phase)[:5]}")
    cpu = (common.cpu_seconds(sw.pid) - cpu0) / (args.phase + 1)
    for w in floods:
        w.wait()
    rps = []
    for path in wrk_logs:
        with open(path) as f:
            rps += [line.split()[-1] for line in f if line.startswith("Requests/sec")]
    print(f"flood: /readyz {rps[0]} req/s + /metrics {rps[1]} req/s, sidewatch CPU {cpu * 100:.0f}%")

    report("quiet", arrivals(log, *quiet))
    s = report("flood", arrivals(log, *flood))
    print(f"target flood p99 <= 5 ms  {'MET' if s['p99'] <= 5 else 'MISSED'}")


if __name__ == "__main__":
    common.main(run)
