#!/usr/bin/env python3
"""Detection latency: time from SIGKILL of the upstream to the first 503 on sidewatch's /readyz,
and the same for HAProxy's health check in the same run.

For each interval (default 100ms and 1s), sidewatch runs with --failure-threshold 1 against
bench/upstream.py. Each trial: start the upstream, wait for /readyz 200, sleep a random time in
[0, interval) so the kill lands at a uniformly random phase of the probe cycle, SIGKILL the
upstream, then poll /readyz every 1 ms and record kill -> first 503. The peer: HAProxy (Debian's)
checking the same upstream with `option httpchk`, `check inter <interval> fall 1 rise 1`, its
verdict read the same way from a `monitor-uri` that fails while the backend has no server up.

usage: bench/detection.py [--series 100ms:200,1s:60]
"""

import argparse
import os
import random
import signal
import time

import common

UNITS = {"ms": 1e-3, "s": 1.0}


def seconds(text):
    for suffix in ("ms", "s"):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * UNITS[suffix]
    raise ValueError(text)


def trial(up_port, admin, interval, path):
    up = common.upstream(up_port)
    admin.wait_ready(200, path=path)
    time.sleep(random.uniform(0, interval))
    killed = time.monotonic()
    os.kill(up.pid, signal.SIGKILL)
    next_poll = killed
    while True:
        if admin.get(path)[0] == 503:
            detected = time.monotonic()
            break
        if time.monotonic() - killed > interval + 5:
            raise RuntimeError(f"no 503 within {interval + 5}s of the kill")
        next_poll += 0.001
        time.sleep(max(0.0, next_poll - time.monotonic()))
    common.stop(up)
    return detected - killed


def haproxy(up_port, interval_text):
    """HAProxy checking the upstream; its verdict on http://127.0.0.1:PORT/health."""
    port = common.free_port()
    inter = interval_text
    p = common.haproxy(f"""global
  maxconn 256
defaults
  mode http
  timeout connect 500ms
  timeout check 500ms
  timeout client 5s
  timeout server 5s
backend app
  option httpchk GET /healthz
  server up 127.0.0.1:{up_port} check inter {inter} fastinter {inter} downinter {inter} fall 1 rise 1
frontend health
  bind 127.0.0.1:{port}
  monitor-uri /health
  monitor fail if {{ nbsrv(app) lt 1 }}
""")
    common.wait_port(port, p)
    return p, port


def series(interval_text, trials):
    interval = seconds(interval_text)
    up_port, admin_port = common.free_port(), common.free_port()
    sw = common.sidewatch(up_port, admin_port, interval_text, timeout="500ms",
                          log=f"detection-{interval_text}.log")
    admin = common.Admin(admin_port)
    results = [trial(up_port, admin, interval, "/readyz") for _ in range(trials)]
    common.stop(sw)
    hp, hp_port = haproxy(up_port, interval_text)
    peer = [trial(up_port, common.Admin(hp_port), interval, "/health") for _ in range(trials)]
    common.stop(hp)
    s, h = common.summary(results), common.summary(peer)
    target_med, target_p99 = interval / 2 * 1e3 + 20, interval * 1e3 + 20
    met = s["median"] <= target_med and s["p99"] <= target_p99
    print(f"interval {interval_text}: sidewatch {s}  target median<={target_med:g}ms "
          f"p99<={target_p99:g}ms  {'MET' if met else 'MISSED'}", flush=True)
    print(f"interval {interval_text}: haproxy   {h}", flush=True)
    print(f"interval {interval_text}: sidewatch / haproxy: median {s['median'] / h['median']:.2f}, "
          f"p99 {s['p99'] / h['p99']:.2f}", flush=True)


def run():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", default="100ms:200,1s:60", help="INTERVAL:TRIALS,...")
    args = ap.parse_args()
    for item in args.series.split(","):
        interval_text, trials = item.split(":")
        series(interval_text, int(trials))


if __name__ == "__main__":
    common.main(run)
