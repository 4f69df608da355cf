#!/usr/bin/env python3
"""Idle memory: VmRSS and VmHWM of sidewatch with one HTTP probe at 1 s against a healthy upstream.

Starts bench/upstream.py and sidewatch, waits for /readyz 200, then leaves it alone for --settle
seconds (default 30) and reads /proc/PID/status. Target: VmRSS <= 8 MiB.

usage: bench/idle_rss.py [--settle 30]
"""

import argparse
import time

import common


def run():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settle", type=float, default=30.0)
    args = ap.parse_args()
    up_port, admin_port = common.free_port(), common.free_port()
    common.upstream(up_port)
    sw = common.sidewatch(up_port, admin_port, "1s", log="idle_rss.log")
    common.Admin(admin_port).wait_ready(200)
    time.sleep(args.settle)
    st = common.proc_status(sw.pid, "VmRSS", "VmHWM", "RssAnon", "RssFile", "Threads")
    kib = {k: int(v.split()[0]) for k, v in st.items() if v.endswith("kB")}
    rss_mib = kib["VmRSS"] / 1024
    print(f"after {args.settle:g}s: VmRSS={rss_mib:.2f} MiB VmHWM={kib['VmHWM'] / 1024:.2f} MiB "
          f"(RssAnon={kib['RssAnon'] / 1024:.2f} RssFile={kib['RssFile'] / 1024:.2f} MiB, "
          f"threads={st['Threads']})  target VmRSS<=8 MiB  {'MET' if rss_mib <= 8 else 'MISSED'}")


if __name__ == "__main__":
    common.main(run)
