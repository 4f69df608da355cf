#!/usr/bin/env python3
"""What a probe thread with blocking sockets would cost, beside the floor: examples/probe_thread.rs
(hyper's HTTP/1.1 client over blocking sockets, on a thread of its own, no event loop) and
bench/floor.c against the same nginx at the same rate, in rounds, each its CPU per check as the
scheduler counts it. The restructure BENCHMARKS.md section 12.1 weighs; sidewatch itself is
bench/cpu_probe.py.

usage: bench/probe_thread.py [--window 15] [--rounds 3]   (builds the example with cargo)
"""

import argparse
import os
import subprocess

import common


def run():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=int, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "probe_thread"],
                   cwd=common.REPO, check=True)
    exe = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(common.REPO, "target")),
                       "release", "examples", "probe_thread")
    up_port = common.free_port()
    common.nginx(up_port)
    rounds = []
    for r in range(args.rounds):
        out = subprocess.run([exe, str(up_port), "/healthz", "1000", str(args.window)],
                             capture_output=True, text=True, check=True).stdout.split()
        checks, failed, ran_us = int(out[1]), int(out[3]), float(out[5])
        thread = ran_us / checks
        fl = common.floor("http", up_port, "/healthz", 1000, args.window)
        ratio = thread / (fl["per_probe"] * 1e6)
        rounds.append(ratio)
        print(f"round {r + 1}: probe thread {checks} checks ({failed} failed), {thread:.1f} us each; "
              f"floor {fl['probes']} checks ({fl['failed']} failed), {fl['per_probe'] * 1e6:.1f} us each; "
              f"ratio {ratio:.2f}")
    print(f"probe thread / floor: {sorted(rounds)[len(rounds) // 2]:.2f} "
          f"(rounds {', '.join(f'{x:.2f}' for x in rounds)})")


if __name__ == "__main__":
    common.main(run)
