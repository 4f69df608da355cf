#!/usr/bin/env python3
# Measures the RSS and CPU the cgroup memory watcher adds to sidewatch (--cgroup DIR vs --cgroup none).
# Run (root): BENCH_BIN=/tmp/bench-mem-target/release/sidewatch python3 bench/memory_overhead.py
"""Memory watcher overhead: RSS and CPU of sidewatch watching an idle cgroup v1 memory cgroup at
the default 250 ms memory interval, against the same sidewatch with `--cgroup none`.

Starts bench/upstream.py, a cgroup /sys/fs/cgroup/memory/swbench-<pid> (limit 256 MiB) holding an
idle python3 child (16 MiB allocated, then asleep), and two sidewatch processes side by side,
each with one HTTP probe at 1 s against the upstream: A `--cgroup none`, B `--cgroup <that dir>`
(its eventfds armed, sampling every 250 ms). After both answer /readyz 200 it waits --settle
seconds (30) and reads VmRSS (and VmHWM, RssAnon) from /proc/PID/status, then measures CPU over
--window seconds (60): utime+stime from /proc/PID/stat (10 ms ticks) and, more finely, the
summed sum_exec_runtime of every thread from /proc/PID/task/*/schedstat. Repeats --rounds times
with fresh processes. Target: RSS(B) - RSS(A) <= 1 MiB.

Needs root and cgroup v1 (helpers in cgroup.py).

usage: BENCH_BIN=/tmp/bench-mem-target/release/sidewatch python3 bench/memory_overhead.py \
           [--rounds 3] [--settle 30] [--window 60]
"""

import argparse
import os
import statistics
import time

import common
from cgroup import MIB, Cgroup, child_in, sidewatch

IDLE = "import time; x = b'x' * (16 << 20); time.sleep(10 ** 6)"


def run_ns(pid):
    """CPU time of all live threads in ns (schedstat's first field)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except FileNotFoundError:
            pass
    return total


def kib(pid):
    st = common.proc_status(pid, "VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads")
    return {k: (int(v.split()[0]) if v.endswith("kB") else int(v)) for k, v in st.items()}


def one_round(args, cg, up_port):
    pa, pb = common.free_port(), common.free_port()
    a = sidewatch(up_port, pa, "none", log="mem-overhead-none.log", probe_interval="1s")
    b = sidewatch(up_port, pb, cg.path, log="mem-overhead-cgroup.log", probe_interval="1s")
    for port in (pa, pb):
        common.Admin(port).wait_ready(200, timeout=15)
    time.sleep(args.settle)
    mem = {"none": kib(a.pid), "cgroup": kib(b.pid)}
    cpu0 = {k: (common.cpu_seconds(p.pid), run_ns(p.pid)) for k, p in (("none", a), ("cgroup", b))}
    time.sleep(args.window)
    cpu1 = {k: (common.cpu_seconds(p.pid), run_ns(p.pid)) for k, p in (("none", a), ("cgroup", b))}
    common.stop(a)
    common.stop(b)
    cpu = {k: ((cpu1[k][0] - cpu0[k][0]) * 1e3, (cpu1[k][1] - cpu0[k][1]) / 1e6) for k in cpu0}
    return mem, cpu


def run():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--settle", type=float, default=30.0)
    ap.add_argument("--window", type=float, default=60.0)
    args = ap.parse_args()
    up_port = common.free_port()
    common.upstream(up_port)
    diffs_rss, diffs_tick, diffs_ns = [], [], []
    with Cgroup(256 * MIB) as cg:
        idle = child_in(cg, IDLE)
        time.sleep(1)
        print(f"idle cgroup {cg.path}: usage {int(cg.read('memory.usage_in_bytes')) / MIB:.1f} MiB, "
              f"pids {cg.pids()}", flush=True)
        for i in range(args.rounds):
            mem, cpu = one_round(args, cg, up_port)
            for k in ("none", "cgroup"):
                m = mem[k]
                print(f"  round {i + 1} --cgroup {k:6s}: VmRSS {m['VmRSS'] / 1024:.2f} MiB "
                      f"(VmHWM {m['VmHWM'] / 1024:.2f}, RssAnon {m['RssAnon'] / 1024:.2f}, "
                      f"RssFile {m['RssFile'] / 1024:.2f} MiB, threads {m['Threads']}); "
                      f"CPU over {args.window:g}s: utime+stime {cpu[k][0]:.0f} ms, "
                      f"schedstat {cpu[k][1]:.1f} ms", flush=True)
            d_rss = (mem["cgroup"]["VmRSS"] - mem["none"]["VmRSS"]) / 1024
            diffs_rss.append(d_rss)
            diffs_tick.append(cpu["cgroup"][0] - cpu["none"][0])
            diffs_ns.append(cpu["cgroup"][1] - cpu["none"][1])
            print(f"  round {i + 1} difference: VmRSS {d_rss:+.2f} MiB, CPU {diffs_tick[-1]:+.0f} ms "
                  f"(utime+stime), {diffs_ns[-1]:+.1f} ms (schedstat) per {args.window:g}s", flush=True)
        idle.kill()
        idle.wait()
    med = statistics.median
    print(f"median difference (cgroup - none) over {args.rounds} rounds: VmRSS {med(diffs_rss):+.2f} MiB "
          f"(max {max(diffs_rss):+.2f}); CPU {med(diffs_tick):+.0f} ms utime+stime, "
          f"{med(diffs_ns):+.1f} ms schedstat per {args.window:g}s "
          f"= {med(diffs_ns) / args.window / 10:.3f}% of one core")
    print(f"target VmRSS growth <= 1 MiB: {'MET' if max(diffs_rss) <= 1.0 else 'MISSED'}", flush=True)


if __name__ == "__main__":
    common.main(run)
