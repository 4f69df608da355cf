#!/usr/bin/env python3
"""Drain lag: how long after the traffic stops /drain answers, beyond drain.quiet.

What it measures. Each trial gets a network namespace of its own (`ip netns add`, loopback up,
deleted at the end even on failure), so the namespace's TCP counters see nothing but the trial.
Inside it: an HTTP/1.1 keep-alive app (http.server, ThreadingHTTPServer, its own process),
sidewatch (`run --target http://127.0.0.1:8080/ --listen 127.0.0.1:9102 --cgroup none`, drain
delay 300ms, quiet 1s) and a client mixing
  - a new connection every 20 ms (closed alternately by the app and by the client), and
  - one kept-alive connection sending a request every 20 ms.
The client runs 0.5 s, then GET /drain starts the drain, the traffic flows a random 1-3 s more and
stops. lag = (time /drain returned) - (time the client's last request byte was sent) - quiet,
all on CLOCK_MONOTONIC (one clock for every process on the host, namespaces or not).
Target: median lag <= 100 ms. Also checked: /drain never returns while traffic flows, and the
outcome is "quiet".

How to run (root, iproute2; about 4 s a trial):
  cargo build --release --target-dir /tmp/bench-drain-target
  python3 bench/drain_lag.py [--trials 40] [--seed 1] [--bin /tmp/bench-drain-target/release/sidewatch]
  (--rust-log 'info,sidewatch=debug' makes sidewatch log every poll that saw traffic, to see which
  poll ended the quiet: a diagnostic, not for the figures.)
Logs go to $BENCH_OUT (default /tmp/sidewatch-bench-drain).
"""

import argparse
import json
import os
import random
import threading
import time

import netns

HERE = os.path.abspath(__file__)
QUIET = 1.0
DELAY = "300ms"
TICK = 0.020


# ---------------------------------------------------------------- one trial, inside the namespace

def trial(bin_path, flow, tag, rust_log=None):
    env = {"SIDEWATCH_DRAIN_DELAY": DELAY, "SIDEWATCH_DRAIN_QUIET": f"{int(QUIET * 1000)}ms"}
    if rust_log:
        env["RUST_LOG"] = rust_log
    app, sw, log = netns.start_processes(HERE, bin_path, env, tag)
    try:
        stop = threading.Event()
        # A new connection every TICK, and one kept-alive connection sending a request every TICK.
        clients = [netns.Sender(kind, TICK, TICK, stop) for kind in ("new", "keepalive")]
        for c in clients:
            c.start()
        time.sleep(0.5)  # traffic established before the pod turns unready
        drain = netns.DrainCall()
        drain.start()
        time.sleep(flow)  # the traffic's duration after the drain started
        early = drain.returned is not None
        errors, last = netns.stop_senders(stop, clients)
        drain.join(60)
        errors += [drain.error] if drain.error else []
        return {
            "flow_s": flow,
            "lag_ms": (drain.returned - last - QUIET) * 1000 if drain.returned else None,
            "drain_wall_s": drain.returned - drain.started if drain.returned else None,
            "returned_while_flowing": early,
            "answer": drain.body,
            "requests": sum(c.sent for c in clients),
            "traffic_source": netns.traffic_source(log),
            "errors": errors,
        }
    finally:
        netns.stop_process(sw)
        netns.stop_process(app)


# ---------------------------------------------------------------- the trials, from outside

def pct(values, p):
    s = sorted(values)
    k = (len(s) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--bin", default=os.environ.get("BENCH_BIN", netns.DEFAULT_BIN))
    ap.add_argument("--app", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--inner", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--rust-log", default=None,
                    help="RUST_LOG for sidewatch, e.g. info,sidewatch=debug to log each poll "
                         "that saw traffic (a diagnostic: not for the figures)")
    ap.add_argument("--tag", default="lag", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.app:
        return netns.run_app(args.app)
    if args.inner is not None:
        print(json.dumps(trial(args.bin, args.inner, args.tag, args.rust_log)), flush=True)
        return
    netns.outer(args.bin)
    rng = random.Random(args.seed)
    results = []
    print(f"drain lag: {args.trials} trials, delay {DELAY}, quiet {QUIET}s, "
          f"short connections + keep-alive every {TICK * 1000:.0f} ms, flow 1-3 s after /drain")
    for i in range(args.trials):
        flow = round(rng.uniform(1.0, 3.0), 3)
        extra = ["--rust-log", args.rust_log] if args.rust_log else []
        r = netns.run_trial(HERE, args.bin, flow, f"lag-{i}", f"swbench-{os.getpid()}-{i}",
                            f"trial {i}", extra)
        if r is None:
            continue
        results.append(r)
        a = r["answer"] or {}
        print(f"trial {i:2d}: flow {flow:5.3f} s  lag {r['lag_ms']:7.1f} ms  "
              f"outcome {a.get('outcome')}  drain {a.get('duration_seconds', 0):.3f} s  "
              f"new_conn {a.get('new_connections')}  bytes_in {a.get('bytes_in')}  "
              f"requests {r['requests']}  early {r['returned_while_flowing']}  "
              f"{r['traffic_source']}{'  ERR ' + str(r['errors']) if r['errors'] else ''}",
              flush=True)
    good = [r for r in results if r["lag_ms"] is not None and not r["errors"]
            and not r["returned_while_flowing"] and (r["answer"] or {}).get("outcome") == "quiet"]
    lags = [r["lag_ms"] for r in good]
    print(f"\nvalid trials: {len(good)} of {args.trials} "
          f"(early returns: {sum(r['returned_while_flowing'] for r in results)}, "
          f"non-quiet outcomes: {sum((r['answer'] or {}).get('outcome') != 'quiet' for r in results)})")
    if lags:
        med = pct(lags, 50)
        print(f"lag beyond quiet: min {min(lags):.1f} ms  median {med:.1f} ms  "
              f"p90 {pct(lags, 90):.1f} ms  max {max(lags):.1f} ms")
        print(f"target median <= 100 ms: {'MET' if med <= 100 else 'MISSED'}")
    os.makedirs(netns.OUT, exist_ok=True)
    with open(os.path.join(netns.OUT, "drain_lag.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
