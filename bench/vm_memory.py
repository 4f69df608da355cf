#!/usr/bin/env python3
"""Memory on cgroup v1 and v2, side by side on one kernel: runs tests/vm_cgroup2.rs (Debian's
kernel under qemu's software emulation, booted once with the memory controller on v1 and once on
v2) --runs times and summarises what its scenarios report: the lead before the kill for the same
steady leak, and kill -> /readyz 503 and kill -> sidewatch_oom_kills_total.

Every figure is under emulation (TCG): several times a real machine's, on both sides alike, so
read them as v2 beside v1, not as absolutes (BENCHMARKS.md section 8 has v1 on the host).

Needs what the test needs: root, qemu-system-x86, busybox-static, cpio, the kernel that
scripts/install-test-tools unpacks, and the static release binary that scripts/image builds.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The scenarios compared, v1's first: (label, v1 scenario, v2 scenario).
PAIRS = [
    ("steady leak, 1 MiB / 300 ms into 64 MiB, three processes",
     "v1: steady leak, container limit, three processes (cgroupfs driver)",
     "steady leak, container limit, oom.group=1, three processes (systemd driver)"),
    ("fast leak, 4 MiB / 100 ms into 48 MiB, one process",
     "v1: fast leak, one process",
     "oom.group=1, one process"),
]


def run_once():
    out = subprocess.run(
        ["cargo", "test", "--locked", "--quiet", "--test", "vm_cgroup2", "--", "--nocapture"],
        cwd=REPO, capture_output=True, text=True, check=False)
    reports = {}
    for line in (out.stdout + out.stderr).splitlines():
        _, sep, rest = line.partition("guest | VMTEST ")
        if sep and rest.startswith("{"):
            report = json.loads(rest)
            reports[report["scenario"]] = report
    if out.returncode != 0:
        sys.exit(f"the VM test failed:\n{out.stderr[-3000:]}")
    return reports


def fmt(values):
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f} to {max(values):.2f})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    runs = [run_once() for _ in range(args.runs)]
    print(f"# vm_memory: {args.runs} runs of tests/vm_cgroup2.rs; median (min to max)")
    print("| leak | figure | cgroup v1 | cgroup v2 | v2 / v1 (medians) |")
    print("| --- | --- | --- | --- | --- |")
    for label, v1, v2 in PAIRS:
        for key, name in [("lead_s", "not ready before the kill, s"),
                          ("kill_to_readyz_ms", "kill -> /readyz 503 oom_killed, ms"),
                          ("kill_to_metric_ms", "kill -> oom_kills_total +1 (upper bound), ms")]:
            a = [r[v1][key] for r in runs if key in r.get(v1, {})]
            b = [r[v2][key] for r in runs if key in r.get(v2, {})]
            if not a or not b:
                continue
            ma, mb = statistics.median(a), statistics.median(b)
            ratio = f"{mb / ma:.2f}" if ma > 0 and mb > 0 else "-"
            print(f"| {label} | {name} | {fmt(a)} | {fmt(b)} | {ratio} |")
    pod = [r["limit on the pod only"]["lead_s"] for r in runs]
    print(f"# limit on the pod only (2 MiB / 200 ms into 80 MiB): lead {fmt(pod)} s")
    qos = [r["memory QoS: memory.high as the kubelet sets it"]["burst_to_memory_high_s"] for r in runs]
    print(f"# memory QoS, polling at an hour: burst -> memory_high {fmt(qos)} s")


if __name__ == "__main__":
    main()
