#!/usr/bin/env python3
"""CPU per HTTP probe on a fresh connection: sidewatch probing nginx (`return 200`) at --interval 1ms.

Busy run: sidewatch at 1 ms against nginx; over a --window (default 15 s) take sidewatch's
utime+stime from /proc/PID/stat and the change in sidewatch_probe_duration_seconds_count from
/metrics. Idle run: a fresh sidewatch at 1 s, same window length, same CPU reading.
CPU per probe = (busy CPU - idle CPU scaled to the busy window) / probes in the busy window.
Target: <= 100 us per probe.

usage: bench/cpu_probe.py [--window 15] [--interval 1ms]
"""

import argparse
import time

import common

COUNT = "sidewatch_probe_duration_seconds_count"


def measure(up_port, interval, window, nginx_pid=None):
    admin_port = common.free_port()
    sw = common.sidewatch(up_port, admin_port, interval, log=f"cpu_probe-{interval}.log")
    admin = common.Admin(admin_port)
    admin.wait_ready(200)
    time.sleep(1)  # past start-up
    t0, cpu0, n0 = time.monotonic(), common.cpu_seconds(sw.pid), admin.metric(COUNT)
    ng0 = common.cpu_seconds(nginx_pid) if nginx_pid else 0
    time.sleep(window)
    t1, cpu1, n1 = time.monotonic(), common.cpu_seconds(sw.pid), admin.metric(COUNT)
    ng1 = common.cpu_seconds(nginx_pid) if nginx_pid else 0
    failures = admin.metric("sidewatch_probe_failures_total")
    common.stop(sw)
    return {"wall": t1 - t0, "cpu": cpu1 - cpu0, "probes": n1 - n0, "failures": failures,
            "nginx_cpu": ng1 - ng0}


def run():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=float, default=15.0)
    ap.add_argument("--interval", default="1ms")
    args = ap.parse_args()
    up_port = common.free_port()
    ng = common.nginx(up_port)
    # nginx runs a master and one worker: count the worker, which does the serving.
    with open(f"/proc/{ng.pid}/task/{ng.pid}/children") as f:
        worker = int(f.read().split()[0])
    busy = measure(up_port, args.interval, args.window, worker)
    idle = measure(up_port, "1s", args.window)
    idle_cpu = idle["cpu"] * busy["wall"] / idle["wall"]
    per_probe = (busy["cpu"] - idle_cpu) / busy["probes"]
    print(f"busy ({args.interval}): {busy['probes']:.0f} probes ({busy['probes'] / busy['wall']:.0f}/s, "
          f"{busy['failures']:.0f} failed) in {busy['wall']:.2f}s, sidewatch CPU {busy['cpu']:.2f}s, "
          f"nginx worker CPU {busy['nginx_cpu']:.2f}s")
    print(f"idle (1s): {idle['probes']:.0f} probes in {idle['wall']:.2f}s, CPU {idle['cpu']:.2f}s")
    print(f"CPU per probe: {per_probe * 1e6:.1f} us (nginx worker: "
          f"{busy['nginx_cpu'] / busy['probes'] * 1e6:.1f} us)  target <=100 us  "
          f"{'MET' if per_probe <= 100e-6 else 'MISSED'}"
          f"{'' if busy['probes'] >= 10000 else '  (fewer than 10,000 probes: raise --window)'}")


if __name__ == "__main__":
    common.main(run)
