#!/usr/bin/env python3
"""Rollout time saved: the drain length sidewatch gives a pod whose traffic tapers off, against a
fixed `preStop: sleep 30`.

What it measures. A pod is modelled in a network namespace of its own per trial (`ip netns add`,
loopback up, deleted at the end even on failure): an HTTP/1.1 keep-alive app (http.server,
ThreadingHTTPServer, its own process), sidewatch (`run --target http://127.0.0.1:8080/ --listen
127.0.0.1:9102 --cgroup none`, drain delay 5s, quiet 1s, max 25s) and a load balancer sending
~50 req/s: four kept-alive upstream connections at 10 req/s each plus 10 new connections a second
(closed alternately by the app and the client). The load balancer runs 1 s, then the pod turns
unready (GET /drain, as the preStop hook would), and the load balancer keeps sending for T more
seconds (it has not yet learnt of the change), then stops; T in {1, 3, 5, 10} s.
The drain length is how long the preStop hook (GET /drain) takes: the time the kubelet waits
before it sends SIGTERM to the app, the same place `sleep 30` sits. Reported per T: the drain
length (the wall time of /drain and its duration_seconds), seconds saved per pod against 30 s,
and for a 10-replica rolling update with maxUnavailable=1 done one pod after the other (each
pod's termination on the critical path: 10 x the per-pod saving). Expected: max(delay, T + quiet)
plus up to one 100 ms poll.

How to run (root, iproute2; about 3 minutes with 5 trials per T):
  cargo build --release --target-dir /tmp/bench-drain-target
  python3 bench/drain_rollout.py [--trials 5] [--taper 1,3,5,10] [--bin /tmp/bench-drain-target/release/sidewatch]
Logs go to $BENCH_OUT (default /tmp/sidewatch-bench-drain).
"""

import argparse
import json
import os
import statistics
import threading
import time

import netns

HERE = os.path.abspath(__file__)
DRAIN_ENV = {"SIDEWATCH_DRAIN_DELAY": "5s", "SIDEWATCH_DRAIN_QUIET": "1s",
             "SIDEWATCH_DRAIN_MAX": "25s"}
PRESTOP_SLEEP = 30.0
REPLICAS = 10
KEEPALIVE_CONNS = 4      # the load balancer's upstream pool to this pod
PER_CONN_RATE = 10.0     # req/s on each kept-alive connection
NEW_CONN_RATE = 10.0     # new connections a second
WARMUP = 1.0


# ---------------------------------------------------------------- one trial, inside the namespace

def trial(bin_path, taper, tag):
    app, sw, log = netns.start_processes(HERE, bin_path, DRAIN_ENV, tag)
    try:
        stop = threading.Event()
        # The load balancer: its kept-alive upstream connections, and new connections.
        senders = [netns.Sender("keepalive", 1.0 / PER_CONN_RATE,
                                i / (KEEPALIVE_CONNS * PER_CONN_RATE), stop)
                   for i in range(KEEPALIVE_CONNS)]
        senders.append(netns.Sender("new", 1.0 / NEW_CONN_RATE, 0.5 / NEW_CONN_RATE, stop))
        for s in senders:
            s.start()
        time.sleep(WARMUP)
        drain = netns.DrainCall()
        drain.start()
        time.sleep(taper)  # the load balancer has not learnt yet
        stopped = time.monotonic()
        errors, last = netns.stop_senders(stop, senders)
        drain.join(60)
        errors += [drain.error] if drain.error else []
        sent = sum(s.sent for s in senders)
        return {
            "taper_s": taper,
            "drain_wall_s": drain.returned - drain.started if drain.returned else None,
            "traffic_after_unready_s": last - drain.started,
            "after_last_request_s": drain.returned - last if drain.returned else None,
            "rate_req_s": sent / (stopped - drain.started + WARMUP),
            "answer": drain.body,
            "errors": errors,
        }
    finally:
        netns.stop_process(sw)
        netns.stop_process(app)


# ---------------------------------------------------------------- the trials, from outside

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--taper", default="1,3,5,10", help="seconds of traffic after unready")
    ap.add_argument("--bin", default=os.environ.get("BENCH_BIN", netns.DEFAULT_BIN))
    ap.add_argument("--app", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--inner", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--tag", default="rollout", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.app:
        return netns.run_app(args.app)
    if args.inner is not None:
        print(json.dumps(trial(args.bin, args.inner, args.tag)), flush=True)
        return
    netns.outer(args.bin)
    tapers = [float(t) for t in args.taper.split(",")]
    print(f"rollout: drain {DRAIN_ENV}, load balancer ~"
          f"{KEEPALIVE_CONNS * PER_CONN_RATE + NEW_CONN_RATE:.0f} req/s for T s after unready, "
          f"{args.trials} trials per T, against preStop sleep {PRESTOP_SLEEP:.0f} s")
    results, rows = [], []
    for taper in tapers:
        walls = []
        for i in range(args.trials):
            r = netns.run_trial(HERE, args.bin, taper, f"rollout-T{taper:g}-{i}",
                                f"swbench-{os.getpid()}-{len(results)}", f"T={taper:g} trial {i}")
            if r is None:
                continue
            results.append(r)
            a = r["answer"] or {}
            print(f"T={taper:4g} s trial {i}: /drain took {r['drain_wall_s']:.3f} s "
                  f"(duration_seconds {a.get('duration_seconds', 0):.3f}, outcome {a.get('outcome')}, "
                  f"new_conn {a.get('new_connections')}, bytes_in {a.get('bytes_in')}); traffic ran "
                  f"{r['traffic_after_unready_s']:.3f} s after unready at {r['rate_req_s']:.1f} req/s; "
                  f"answer {r['after_last_request_s']:.3f} s after the last request"
                  f"{'  ERR ' + str(r['errors']) if r['errors'] else ''}", flush=True)
            if r["drain_wall_s"] is not None and not r["errors"]:
                walls.append(r["drain_wall_s"])
        if walls:
            med = statistics.median(walls)
            rows.append((taper, med, min(walls), max(walls), len(walls)))
    print(f"\n| T (s) | drain, median (min-max) | preStop sleep | saved per pod | saved per "
          f"{REPLICAS}-replica rollout (maxUnavailable=1, sequential) |")
    print("|---|---|---|---|---|")
    for taper, med, lo, hi, n in rows:
        saved = PRESTOP_SLEEP - med
        print(f"| {taper:g} | {med:.2f} s ({lo:.2f}-{hi:.2f}, n={n}) | {PRESTOP_SLEEP:.0f} s | "
              f"{saved:.2f} s | {saved * REPLICAS:.1f} s ({saved * REPLICAS / 60:.1f} min) |")
    os.makedirs(netns.OUT, exist_ok=True)
    with open(os.path.join(netns.OUT, "drain_rollout.json"), "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
