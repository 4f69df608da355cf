#!/usr/bin/env python3
"""Admin-port throughput: wrk against /readyz and /metrics of a sidewatch probing at 100 ms.

Runs `wrk -tT -c50 -d10s --latency` for T in 1, 2 on each path and reports req/s, p99 latency
and sidewatch's CPU use during the run. The peer, in the same run with the same wrk: nginx (one
worker, `return 200` on /healthz), the fastest a small HTTP answer gets on this machine; each
sidewatch figure is also given as a fraction of it. Targets: /readyz >= 20k req/s, /metrics >= 10k
req/s.

usage: bench/throughput.py [--duration 10s] [--connections 50]
"""

import argparse
import re
import subprocess
import time

import common

TARGETS = {"/readyz": 20_000, "/metrics": 10_000}
UNIT = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def wrk(url, threads, conns, duration):
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{conns}", f"-d{duration}", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    value, unit = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return rps, float(value) * UNIT[unit], (bad.group(1) if bad else "0"), (
        errors.group(1) if errors else "none")


def run():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", default="10s")
    ap.add_argument("--connections", type=int, default=50)
    args = ap.parse_args()
    up_port, admin_port, nginx_port = common.free_port(), common.free_port(), common.free_port()
    common.upstream(up_port)
    common.nginx(nginx_port)
    floor = {}
    for threads in (1, 2):
        rps, p99, _, _ = wrk(f"http://127.0.0.1:{nginx_port}/healthz", threads, args.connections,
                             args.duration)
        floor[threads] = rps
        print(f"nginx     wrk -t{threads} -c{args.connections}: {rps:9.0f} req/s  p99 {p99:.2f} ms",
              flush=True)
    sw = common.sidewatch(up_port, admin_port, "100ms", log="throughput.log")
    common.Admin(admin_port).wait_ready(200)
    for path, target in TARGETS.items():
        for threads in (1, 2):
            cpu0, t0 = common.cpu_seconds(sw.pid), time.monotonic()
            rps, p99, bad, errors = wrk(f"http://127.0.0.1:{admin_port}{path}", threads,
                                        args.connections, args.duration)
            cpu = (common.cpu_seconds(sw.pid) - cpu0) / (time.monotonic() - t0)
            print(f"{path:9} wrk -t{threads} -c{args.connections}: {rps:9.0f} req/s  p99 {p99:.2f} ms"
                  f"  ({rps / floor[threads]:.2f} of nginx)"
                  f"  non-2xx {bad}  socket errors {errors}  sidewatch CPU {cpu * 100:.0f}%"
                  f"  target >= {target} req/s  {'MET' if rps >= target else 'MISSED'}", flush=True)


if __name__ == "__main__":
    common.main(run)
