#!/usr/bin/env python3
"""CPU per HTTP probe on a fresh connection: sidewatch probing nginx (`return 200`) at --interval 1ms.

Busy run: sidewatch at 1 ms against nginx; over a --window (default 15 s) take sidewatch's
CPU (its threads' schedstat run time) and the change in sidewatch_probe_duration_seconds_count
from /metrics. Idle run: a fresh sidewatch at 1 s, same window length, same CPU reading.
CPU per probe = (busy CPU - idle CPU scaled to the busy window) / probes in the busy window.
In the same run, the floor: bench/floor.c, a C client that makes the same exchange at the same
rate and nothing else (connect, the same GET, read the whole answer, close; blocking system
calls), its own user+system CPU per check. Most of any client's CPU here is the kernel's loopback
TCP of both ends, which runs in the connecting process: the floor is what is left to compare.
For context, the peers: nginx's own worker CPU per request it served (what answering the probe
costs the app), and blackbox_exporter's http prober asked `/probe?module=http&target=...` of the
same nginx in a loop (bench/common.py: blackbox_cpu). Target (issue 28): <= 1.3x the floor.

--pin puts nginx on the last CPU and every client on the first (bench/common.py: pin_apart).

usage: bench/cpu_probe.py [--window 15] [--interval 1ms] [--rounds 3] [--pin]   (cc builds bench/floor.c)
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
    t0, cpu0, n0 = time.monotonic(), common.run_seconds(sw.pid), admin.metric(COUNT)
    ng0 = common.cpu_seconds(nginx_pid) if nginx_pid else 0
    time.sleep(window)
    t1, cpu1, n1 = time.monotonic(), common.run_seconds(sw.pid), admin.metric(COUNT)
    ng1 = common.cpu_seconds(nginx_pid) if nginx_pid else 0
    failures = admin.metric("sidewatch_probe_failures_total")
    common.stop(sw)
    return {"wall": t1 - t0, "cpu": cpu1 - cpu0, "probes": n1 - n0, "failures": failures,
            "nginx_cpu": ng1 - ng0}


def run():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=float, default=15.0)
    ap.add_argument("--interval", default="1ms")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--pin", action="store_true",
                    help="nginx on a CPU of its own, every client on another (bench/common.py: pin_apart)")
    args = ap.parse_args()
    up_port = common.free_port()
    ng = common.nginx(up_port)
    # nginx runs a master and one worker: count the worker, which does the serving.
    with open(f"/proc/{ng.pid}/task/{ng.pid}/children") as f:
        worker = int(f.read().split()[0])
    print(common.pin_apart(ng.pid) if args.pin else "placement: the scheduler's, on every CPU")
    interval_us = int(args.interval.removesuffix("ms")) * 1000 if args.interval.endswith("ms") else 1000
    idle = measure(up_port, "1s", args.window)
    print(f"idle (1s): {idle['probes']:.0f} probes in {idle['wall']:.2f}s, CPU {idle['cpu'] * 1e3:.1f} ms")
    # Rounds of sidewatch then the floor, back to back: the machine's drift over a minute moves
    # both of a round alike; the median round is the figure.
    rounds = []
    for r in range(args.rounds):
        busy = measure(up_port, args.interval, args.window, worker)
        fl = common.floor("http", up_port, "/healthz", interval_us, args.window)
        per_probe = (busy["cpu"] - idle["cpu"] * busy["wall"] / idle["wall"]) / busy["probes"]
        nginx_per = busy["nginx_cpu"] / busy["probes"]
        rounds.append((per_probe / fl["per_probe"], per_probe, fl["per_probe"], nginx_per))
        print(f"round {r + 1}: sidewatch {busy['probes']:.0f} probes ({busy['probes'] / busy['wall']:.0f}/s, "
              f"{busy['failures']:.0f} failed), {per_probe * 1e6:.1f} us each; floor client "
              f"{fl['probes']} checks ({fl['failed']} failed), {fl['per_probe'] * 1e6:.1f} us each "
              f"(getrusage: user {fl['user'] * 1e6:.1f}, system {fl['sys'] * 1e6:.1f}); "
              f"ratio {per_probe / fl['per_probe']:.2f}; nginx worker {nginx_per * 1e6:.1f} us a request")
    ratio, per_probe, floor_per, nginx_per = sorted(rounds)[len(rounds) // 2]
    if not args.pin:
        # For bench/idle_memory.py, which run-all runs next: the idle also in probes' worth at this rate.
        with open(common.PROBE_US, "w") as f:
            f.write(f"{per_probe * 1e6:.1f}\n")
    bb, bb_port = common.blackbox("  http:\n    prober: http\n    timeout: 5s\n")
    b = common.blackbox_cpu(bb, bb_port, f"/probe?module=http&target=http://127.0.0.1:{up_port}/healthz",
                            args.window, worker)
    print(f"blackbox_exporter: {b['probes']} probes ({b['probes'] / b['wall']:.0f}/s, {b['failed']} "
          f"failed) in {b['wall']:.1f}s, CPU {b['cpu']:.2f}s (idle {b['idle']:.3f}s)")
    print(f"CPU per probe (median round): sidewatch {per_probe * 1e6:.1f} us, floor {floor_per * 1e6:.1f} us, "
          f"nginx worker per request {nginx_per * 1e6:.1f} us, blackbox_exporter {b['per_probe'] * 1e6:.1f} us")
    print(f"sidewatch / floor: {ratio:.2f} (rounds {', '.join(f'{r[0]:.2f}' for r in rounds)})  "
          f"target <=1.3  {'MET' if ratio <= 1.3 else 'MISSED'}; sidewatch / nginx's own: "
          f"{per_probe / nginx_per:.2f}; blackbox_exporter / sidewatch: {b['per_probe'] / per_probe:.1f}")


if __name__ == "__main__":
    common.main(run)
