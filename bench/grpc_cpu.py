#!/usr/bin/env python3
"""CPU per gRPC health probe on a fresh connection: sidewatch and blackbox_exporter's grpc prober,
side by side in one run, against the same server (grpcio's own health servicer).

sidewatch probes `grpc://127.0.0.1:PORT` every 1 ms (one check at a time); blackbox_exporter
(Debian's prometheus-blackbox-exporter) is asked `/probe?module=grpc&target=…` by a client in a
loop, one request at a time, over one kept-alive connection. For each, over a --window: its CPU
(sidewatch's threads' schedstat run time; blackbox_exporter's utime+stime from /proc), minus its
idle CPU over the same time (sidewatch at 1 s, blackbox_exporter with no requests), divided by
the probes made. The gRPC server's CPU per probe is printed for scale.

The floor, in the same run: bench/floor.c in its grpc mode, a C client that sends the
exchange's bytes, built once, on a fresh connection each time (connect; preface, SETTINGS, HEADERS
and DATA in one write; the SETTINGS acknowledgement HTTP/2 requires; read to the trailers; close),
at the same rate as sidewatch (1 ms), and counts its own user+system CPU. On loopback the kernel
runs the receiving end of every packet in the sender's system call, so most of that is what any
client must spend on this exchange. Target (issue 28): sidewatch <= 1.5x the floor.

--pin puts the server on the last CPU and every client on the first (bench/common.py: pin_apart).

usage: bench/grpc_cpu.py [--window 15] [--pin]
"""

import argparse
import os
import subprocess
import sys
import time

import common

COUNT = "sidewatch_probe_duration_seconds_count"
SERVER = os.path.join(common.REPO, "tests", "fixtures", "grpc_health_server.py")


def grpc_server():
    p = subprocess.Popen([sys.executable, SERVER, "127.0.0.1:0"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    common._procs.append(p)
    line = p.stdout.readline()
    if not line.startswith("listening "):
        raise RuntimeError(f"the gRPC server said {line!r}")
    return p, int(line.split()[1])


def sidewatch(port, interval, admin_port):
    p = common.spawn([common.binary(), "run", "--target", f"grpc://127.0.0.1:{port}",
                      "--listen", f"127.0.0.1:{admin_port}", "--interval", interval,
                      "--timeout", "1s", "--failure-threshold", "1"], log=f"grpc_cpu-{interval}.log")
    common.wait_port(admin_port, p)
    return p


def measure_sidewatch(port, interval, window, server_pid):
    admin_port = common.free_port()
    sw = sidewatch(port, interval, admin_port)
    admin = common.Admin(admin_port)
    admin.wait_ready(200)
    time.sleep(1)
    t0, c0, n0, s0 = time.monotonic(), common.run_seconds(sw.pid), admin.metric(COUNT), common.cpu_seconds(server_pid)
    k0 = common.sys_seconds(sw.pid)
    time.sleep(window)
    t1, c1, n1, s1 = time.monotonic(), common.run_seconds(sw.pid), admin.metric(COUNT), common.cpu_seconds(server_pid)
    k1 = common.sys_seconds(sw.pid)
    failed = admin.metric("sidewatch_probe_failures_total")
    common.stop(sw)
    return {"wall": t1 - t0, "cpu": c1 - c0, "sys": k1 - k0, "probes": n1 - n0, "failed": failed,
            "server": s1 - s0}


def run():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--window", type=float, default=15.0)
    ap.add_argument("--pin", action="store_true",
                    help="the gRPC server on a CPU of its own, every client on another (bench/common.py: pin_apart)")
    args = ap.parse_args()
    server, port = grpc_server()
    print(common.pin_apart(server.pid) if args.pin else "placement: the scheduler's, on every CPU")
    busy = measure_sidewatch(port, "1ms", args.window, server.pid)
    idle = measure_sidewatch(port, "1s", args.window, server.pid)
    sw_cpu = busy["cpu"] - idle["cpu"] * busy["wall"] / idle["wall"]
    sw_per = sw_cpu / busy["probes"]
    sw_sys = (busy["sys"] - idle["sys"] * busy["wall"] / idle["wall"]) / busy["probes"]
    fl = common.floor("grpc", port, 1000, args.window)
    bb, listen = common.blackbox("  grpc:\n    prober: grpc\n    timeout: 5s\n"
                                 "    grpc:\n      tls: false\n      preferred_ip_protocol: ip4\n")
    b = common.blackbox_cpu(bb, listen, f"/probe?module=grpc&target=127.0.0.1:{port}",
                            args.window, server.pid)
    bb_per = b["per_probe"]
    print(f"sidewatch: {busy['probes']:.0f} probes ({busy['probes'] / busy['wall']:.0f}/s, "
          f"{busy['failed']:.0f} failed) in {busy['wall']:.1f}s, CPU {busy['cpu']:.2f}s "
          f"(idle {idle['cpu']:.3f}s per {idle['wall']:.1f}s)")
    print(f"blackbox_exporter: {b['probes']} probes ({b['probes'] / b['wall']:.0f}/s, "
          f"{b['failed']} failed) in {b['wall']:.1f}s, CPU {b['cpu']:.2f}s (idle {b['idle']:.3f}s)")
    print(f"gRPC server CPU per probe: {busy['server'] / busy['probes'] * 1e6:.0f} us under sidewatch, "
          f"{b['server'] / b['probes'] * 1e6:.0f} us under blackbox_exporter")
    print(f"floor client: {fl['probes']} checks ({fl['failed']} failed), CPU per check "
          f"{fl['per_probe'] * 1e6:.1f} us (user {fl['user'] * 1e6:.1f}, system {fl['sys'] * 1e6:.1f}); "
          f"sidewatch's own system CPU per probe {sw_sys * 1e6:.1f} us")
    ratio = sw_per / fl["per_probe"]
    print(f"CPU per gRPC probe: sidewatch {sw_per * 1e6:.1f} us, floor {fl['per_probe'] * 1e6:.1f} us: "
          f"{ratio:.2f}x  target <=1.5x  {'MET' if ratio <= 1.5 else 'MISSED'}; blackbox_exporter "
          f"{bb_per * 1e6:.1f} us, {bb_per / sw_per:.1f}x sidewatch")


if __name__ == "__main__":
    common.main(run)
