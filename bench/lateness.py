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

usage: bench/lateness.py [--phase 60]
"""

import argparse
import os
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
    args = ap.parse_args()
    os.makedirs(common.OUT, exist_ok=True)
    log = os.path.join(common.OUT, "lateness-arrivals.txt")
    open(log, "w").close()
    up_port, admin_port = common.free_port(), common.free_port()
    common.upstream(up_port, arrivals=log, prio=True)
    sw = common.sidewatch(up_port, admin_port, "100ms", log="lateness.log")
    common.Admin(admin_port).wait_ready(200)
    time.sleep(1)

    quiet = (time.monotonic(), time.monotonic() + args.phase)
    time.sleep(args.phase)

    wrk_logs = [os.path.join(common.OUT, f"lateness-wrk{i}.log") for i in (0, 1)]
    for path in wrk_logs:
        open(path, "w").close()
    cpu0 = common.cpu_seconds(sw.pid)
    floods = [common.spawn(["wrk", "-t1", "-c50", f"-d{args.phase + 2:g}s",
                            f"http://127.0.0.1:{admin_port}{path}"], log=f"lateness-wrk{i}.log")
              for i, path in enumerate(("/readyz", "/metrics"))]
    time.sleep(1)  # let wrk ramp up
    flood = (time.monotonic(), time.monotonic() + args.phase)
    time.sleep(args.phase)
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
