#!/usr/bin/env python3
"""CPU of the drain's traffic watcher with many open connections on the app port.

What it measures. In a network namespace of its own (`ip netns add`, loopback up, deleted at the
end even on failure): an HTTP/1.1 keep-alive app (http.server, ThreadingHTTPServer, its own
process, listen backlog 4096, RLIMIT_NOFILE raised), sidewatch (`run --target
http://127.0.0.1:8080/ --listen 127.0.0.1:9102 --cgroup none`, SIDEWATCH_DRAIN_QUIET=120s,
SIDEWATCH_DRAIN_MAX=60s so that a drain polls the port every 100 ms for the whole window, and
SIDEWATCH_DRAIN_GRACE_PERIOD=90s, which drain.max may not exceed), and a
holder process that opens N (default 1,000) keep-alive connections to the app, sends one request
on each and then leaves them idle (RLIMIT_NOFILE raised).
  1. idle: sidewatch's utime+stime (/proc/PID/stat) over --window (30) s with the connections open
     and no drain (it refreshes sidewatch_app_connections once a second and probes the app once a
     second);
  2. draining: GET /drain, then utime+stime over the next --window s (the drain is still running
     at the end: max is 60 s, quiet 120 s).
Reported: both as % of one core, their difference (the figure held to the target: <= 1 %), the
sum of the threads' schedstat run time (ns resolution) as a cross-check, per-thread ticks, CPU per
100 ms poll, and sidewatch's VmRSS / VmHWM with the connections open.
Variants: --peer puts the holder in a second namespace of its own joined by a veth pair
(10.231.9.0/24), as in a pod whose clients are elsewhere: sidewatch's sock_diag dump then meets
only the app's N sockets, not the clients' N as well. --kubelet-probe GETs sidewatch's /readyz
once a second in both windows, as the kubelet's readinessProbe of the README's pod spec would.
--traffic RPS sends that many requests a second over the held connections in both windows (every
poll then has segments to see). --unrelated N adds N sockets that are not the app's: 45 % of N
connections to another port held open (both ends in the namespace) and a tenth of N in TIME_WAIT,
to see whether the cost follows the namespace's socket count or only the app's.
--dump-cost ROUNDS measures instead what one poll's pieces cost in such a namespace: sidewatch's
sock_diag dump request per family (and the same with the kernel-side source-port filter, and
without the LISTEN state, which spares the kernel its walk of the listening hash), and
reading /proc/net/snmp and /proc/net/tcp, in CPU (user+system) per operation from Python.

How to run (root, iproute2; about 65 s a run):
  cargo build --release --target-dir /tmp/bench-drain-target
  python3 bench/drain_cpu.py [--connections 1000] [--window 30] [--peer] [--kubelet-probe] [--bin /tmp/bench-drain-target/release/sidewatch]
  python3 bench/drain_cpu.py --connections 1000 --dump-cost 300
Logs go to $BENCH_OUT (default /tmp/sidewatch-bench-drain).
"""

import argparse
import glob
import json
import os
import socket
import subprocess
import sys
import threading
import time

import common
import netns
from netns import APP_PORT, SW_PORT, http_get, stop_process

HERE = os.path.abspath(__file__)
DRAIN_ENV = {"SIDEWATCH_DRAIN_QUIET": "120s", "SIDEWATCH_DRAIN_MAX": "60s",
             "SIDEWATCH_DRAIN_GRACE_PERIOD": "90s"}
POD_ADDR, PEER_ADDR = "10.231.9.1", "10.231.9.2"
WITHIN = 30.0  # how long to wait for the app, sidewatch, the connections
UNRELATED_PORT = 9000


# ---------------------------------------------------------------- the idle connections

def hold(n, host, rps=0):
    """Opens n keep-alive connections to the app, one request each, prints "held" and keeps them
    open until stdin closes; with `rps`, also sends that many requests a second over them in turn
    (real traffic: segments arrive, so every poll of a drain dumps the sockets)."""
    netns.raise_nofile()
    held = []
    for _ in range(n):
        s = socket.create_connection((host, APP_PORT), timeout=10)
        s.sendall(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        netns.read_response(s)
        held.append(s)
    print("held", len(held), flush=True)
    if rps:
        threading.Thread(target=trickle, args=(held, rps), daemon=True).start()
    sys.stdin.read()


def unrelated(n, time_wait):
    """Fills the namespace with sockets that are not the app's, as a busy node's neighbours or the
    app's own outbound connections would: a listener on UNRELATED_PORT with n connections to it
    held open (2n ESTABLISHED sockets), and time_wait more opened and closed by the client
    (TIME_WAIT, which lasts 60 s); prints "held" and keeps them until stdin closes."""
    netns.raise_nofile()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", UNRELATED_PORT))
    listener.listen(4096)
    accepted, seen = [], [0]

    def accept():
        while True:
            conn = listener.accept()[0]
            seen[0] += 1
            if len(accepted) < n:
                accepted.append(conn)  # the held ones' server ends
            else:
                conn.close()  # a TIME_WAIT one's: closing it spares a descriptor

    threading.Thread(target=accept, daemon=True).start()
    held = [socket.create_connection(("127.0.0.1", UNRELATED_PORT)) for _ in range(n)]
    for _ in range(time_wait):
        socket.create_connection(("127.0.0.1", UNRELATED_PORT)).close()
    while seen[0] < n + time_wait:
        time.sleep(0.01)  # the accept thread catching up, not a synchronisation with sidewatch
    print("held", len(held), flush=True)
    sys.stdin.read()


def trickle(held, rps):
    i, due = 0, time.monotonic()
    while True:
        s = held[i % len(held)]
        i += 1
        s.sendall(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
        netns.read_response(s)
        due += 1 / rps
        time.sleep(max(0.0, due - time.monotonic()))


# ---------------------------------------------------------------- /proc readings

def cpu(pid):
    """(utime+stime ticks of the whole process, sum of its threads' schedstat run ns,
    {thread name: utime+stime ticks})."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of stat
    run_ns, threads = 0, {}
    for task in glob.glob(f"/proc/{pid}/task/*"):
        try:
            with open(f"{task}/schedstat") as f:
                run_ns += int(f.read().split()[0])
            with open(f"{task}/stat") as f:
                head, rest = f.read().rsplit(")", 1)
            name = head.split("(", 1)[1]
            t = rest.split()
            threads[name] = threads.get(name, 0) + int(t[11]) + int(t[12])
        except (FileNotFoundError, ProcessLookupError):
            pass
    return (utime, stime), run_ns, threads


def metric(name):
    _, body = http_get(SW_PORT, "/metrics")
    for line in body.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    return None


def window(pid, seconds):
    t0, ((u0, s0), n0, th0) = time.monotonic(), cpu(pid)
    time.sleep(seconds)
    t1, ((u1, s1), n1, th1) = time.monotonic(), cpu(pid)
    wall = t1 - t0
    return {
        "wall_s": wall,
        "ticks": (u1 - u0) + (s1 - s0),
        "utime_ticks": u1 - u0,
        "stime_ticks": s1 - s0,
        "pct_stat": ((u1 - u0) + (s1 - s0)) / common.CLK_TCK / wall * 100,
        "pct_schedstat": (n1 - n0) / 1e9 / wall * 100,
        "threads": {k: v - th0.get(k, 0) for k, v in th1.items() if v - th0.get(k, 0)},
    }


# ---------------------------------------------------------------- --dump-cost: what one poll costs

ALL_STATES = 0xFFFFFFFF
NO_LISTEN = ALL_STATES & ~(1 << 10)  # TCP_LISTEN: the kernel then skips the listening hash


def diag_dump(sock, family, sport=0, states=ALL_STATES):
    """One NETLINK_SOCK_DIAG dump of `family`'s TCP sockets in `states` with tcp_info: by default
    the request sidewatch sends (src/traffic.rs); optionally with the kernel-side source-port
    filter of inet_diag_sockid, or without LISTEN; returns how many sockets came back."""
    import struct
    req = struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 1 << (2 - 1), 0, states)
    req += struct.pack("!HH", sport, 0) + bytes(32) + struct.pack("=III", 0, 0, 0)
    sock.send(struct.pack("=IHHII", 16 + len(req), 20, 0x301, 1, 0) + req)
    n = 0
    while True:
        data = sock.recv(1 << 16)
        off = 0
        while off < len(data):
            length, kind = struct.unpack_from("=IH", data, off)
            if kind == 3:  # NLMSG_DONE
                return n
            if kind == 2:  # NLMSG_ERROR
                raise OSError("sock_diag error")
            n += 1
            off += (length + 3) & ~3


def dump_cost(n_conns, rounds):
    """Times, inside this namespace with n_conns idle connections on the app port, the pieces of
    one sidewatch poll: CPU (user+system of this process) per operation."""
    app = subprocess.Popen([sys.executable, HERE, "--app", str(APP_PORT)], stdin=subprocess.DEVNULL)
    holder = None
    try:
        netns.wait_for("the app", lambda: http_get(APP_PORT, "/")[0] == 200, WITHIN)
        if n_conns:
            holder = subprocess.Popen([sys.executable, HERE, "--hold", str(n_conns)],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            if not holder.stdout.readline().startswith("held"):
                raise RuntimeError("holder failed")
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 4)  # NETLINK_SOCK_DIAG
        nl.bind((0, 0))

        def read(path):
            with open(path, "rb") as f:
                f.read()

        ops = {
            "sock_diag dump AF_INET (as sidewatch)": lambda: diag_dump(nl, socket.AF_INET),
            "sock_diag dump AF_INET6 (as sidewatch)": lambda: diag_dump(nl, socket.AF_INET6),
            "sock_diag dump AF_INET, sport filter": lambda: diag_dump(nl, socket.AF_INET, APP_PORT),
            "sock_diag dump AF_INET6, sport filter": lambda: diag_dump(nl, socket.AF_INET6, APP_PORT),
            "sock_diag dump AF_INET, no LISTEN": lambda: diag_dump(nl, socket.AF_INET,
                                                                   states=NO_LISTEN),
            "sock_diag dump AF_INET6, no LISTEN": lambda: diag_dump(nl, socket.AF_INET6,
                                                                    states=NO_LISTEN),
            "read /proc/net/snmp": lambda: read("/proc/net/snmp"),
            "read /proc/net/tcp": lambda: read("/proc/net/tcp"),
            "python loop overhead (no-op)": lambda: None,
        }
        out = {}
        for name, op in ops.items():
            got = op()
            c0 = time.process_time()
            for _ in range(rounds):
                op()
            out[name] = {"cpu_us": (time.process_time() - c0) / rounds * 1e6, "sockets": got}
        return out
    finally:
        if holder:
            holder.stdin.close()
            stop_process(holder)
        stop_process(app)


# ---------------------------------------------------------------- one run, inside the namespace

class Kubelet(threading.Thread):
    """GET /readyz once a second, as the kubelet's readinessProbe (periodSeconds: 1) of the
    README's pod spec would: TCP segments into the namespace that are not app traffic."""

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()

    def run(self):
        while not self.stop.wait(1.0):
            try:
                http_get(SW_PORT, "/readyz")
            except OSError:
                pass


def run(bin_path, n, seconds, peer_ns, tag, kubelet_probe=False, traffic=0, others=0):
    app, sw, log = netns.start_processes(HERE, bin_path, DRAIN_ENV, tag, WITHIN)
    holder = neighbours = None
    kubelet = Kubelet()
    try:
        if others:
            neighbours = subprocess.Popen([sys.executable, HERE, "--unrelated-serve", str(others)],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            line = neighbours.stdout.readline()
            if not line.startswith("held"):
                raise RuntimeError(f"the unrelated sockets' holder failed: {line!r}")
        if n:
            argv = [sys.executable, HERE, "--hold", str(n), "--traffic", str(traffic)]
            if peer_ns:
                argv = ["ip", "netns", "exec", peer_ns] + argv + ["--host", POD_ADDR]
            holder = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True)
            line = holder.stdout.readline()
            if not line.startswith("held"):
                raise RuntimeError(f"holder failed: {line!r}")
        netns.wait_for(f"sidewatch_app_connections >= {n}",
                       lambda: (metric("sidewatch_app_connections") or 0) >= n, WITHIN)
        if kubelet_probe:
            kubelet.start()
        time.sleep(2)
        idle_conns = metric("sidewatch_app_connections")
        idle = window(sw.pid, seconds)
        drain = netns.DrainCall()
        drain.start()
        time.sleep(0.5)
        busy = window(sw.pid, seconds)
        drain_conns = metric("sidewatch_app_connections")
        mem = common.proc_status(sw.pid, "VmRSS", "VmHWM", "Threads")
        return {
            "connections": n,
            "peer_netns": bool(peer_ns),
            "kubelet_probe": kubelet_probe,
            "traffic_rps": traffic,
            "unrelated_sockets": others,
            "sockstat": open("/proc/net/sockstat").read().splitlines()[1],
            "app_connections_idle": idle_conns,
            "app_connections_draining": drain_conns,
            "drain_returned_early": drain.returned is not None,
            "drain_answer": drain.body,
            "idle": idle,
            "draining": busy,
            "status": mem,
            "traffic_source": netns.traffic_source(log),
        }
    finally:
        kubelet.stop.set()
        for p in (holder, neighbours):
            if p:
                p.stdin.close()
                stop_process(p)
        stop_process(sw)
        stop_process(app)


# ---------------------------------------------------------------- the namespaces, from outside

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--connections", type=int, default=1000)
    ap.add_argument("--window", type=float, default=30.0)
    ap.add_argument("--peer", action="store_true", help="holder in a second namespace over veth")
    ap.add_argument("--kubelet-probe", action="store_true",
                    help="GET sidewatch's /readyz once a second in both windows, as a kubelet would")
    ap.add_argument("--traffic", type=int, default=0, metavar="RPS",
                    help="requests a second over the held connections in both windows")
    ap.add_argument("--unrelated", type=int, default=0, metavar="N",
                    help="also N sockets not the app's in the namespace (ESTABLISHED pairs to another "
                         "port, and a tenth of N in TIME_WAIT)")
    ap.add_argument("--unrelated-serve", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--bin", default=os.environ.get("BENCH_BIN", netns.DEFAULT_BIN))
    ap.add_argument("--dump-cost", type=int, metavar="ROUNDS", default=0,
                    help="instead: time ROUNDS sock_diag dumps (sidewatch's request, and with a "
                         "kernel-side port filter) and /proc reads with the connections open")
    ap.add_argument("--app", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--hold", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--peer-ns", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.app:
        return netns.run_app(args.app, host="0.0.0.0")
    if args.unrelated_serve is not None:
        n = args.unrelated_serve
        return unrelated(n * 9 // 20, n // 10)
    if args.hold is not None:
        return hold(args.hold, args.host, args.traffic)
    if args.inner and args.dump_cost:
        print(json.dumps(dump_cost(args.connections, args.dump_cost)), flush=True)
        return
    if args.inner:
        tag = (f"cpu-{args.connections}{'-peer' if args.peer_ns else ''}"
               f"{'-kubelet' if args.kubelet_probe else ''}"
               f"{'-%drps' % args.traffic if args.traffic else ''}"
               f"{'-%dunrelated' % args.unrelated if args.unrelated else ''}")
        print(json.dumps(run(args.bin, args.connections, args.window, args.peer_ns, tag,
                             args.kubelet_probe, args.traffic, args.unrelated)), flush=True)
        return
    netns.outer(args.bin)
    pod = f"swbench-{os.getpid()}"
    peer = f"swbench-{os.getpid()}-peer" if args.peer else None
    with netns.namespaces(pod, peer, quiet=True):
        if peer:
            a, b = f"swc{os.getpid() % 100000}a", f"swc{os.getpid() % 100000}b"
            for cmd in (["-n", pod, "link", "add", a, "type", "veth", "peer", "name", b,
                         "netns", peer],
                        ["-n", pod, "addr", "add", POD_ADDR + "/24", "dev", a],
                        ["-n", peer, "addr", "add", PEER_ADDR + "/24", "dev", b],
                        ["-n", pod, "link", "set", a, "up"],
                        ["-n", peer, "link", "set", b, "up"]):
                subprocess.run(["ip"] + cmd, check=True)
        argv = [sys.executable, HERE, "--inner", "--bin", args.bin,
                "--connections", str(args.connections), "--window", str(args.window)]
        if peer:
            argv += ["--peer-ns", peer]
        if args.dump_cost:
            argv += ["--dump-cost", str(args.dump_cost)]
        if args.kubelet_probe:
            argv += ["--kubelet-probe"]
        if args.traffic:
            argv += ["--traffic", str(args.traffic)]
        if args.unrelated:
            argv += ["--unrelated", str(args.unrelated)]
        done = subprocess.run(["ip", "netns", "exec", pod] + argv, stdout=subprocess.PIPE,
                              text=True, timeout=4 * args.window + 120)
    r = netns.result(done)
    if r is None:
        sys.exit(f"inner run failed (status {done.returncode})")
    if args.dump_cost:
        print(f"CPU per operation, {args.connections} idle connections on the app port "
              f"(holder on the same loopback), {args.dump_cost} rounds each:")
        for name, v in r.items():
            print(f"  {name:42s} {v['cpu_us']:9.1f} us   ({v['sockets']} sockets)")
        return
    idle, busy = r["idle"], r["draining"]
    extra = busy["pct_stat"] - idle["pct_stat"]
    extra_ns = busy["pct_schedstat"] - idle["pct_schedstat"]
    where = ("holder in a peer namespace over veth" if r["peer_netns"]
             else "holder on the same loopback")
    if r["kubelet_probe"]:
        where += "; GET /readyz once a second"
    if r["traffic_rps"]:
        where += f"; {r['traffic_rps']} requests a second over them"
    if r["unrelated_sockets"]:
        where += f"; {r['unrelated_sockets']} unrelated sockets ({r['sockstat']})"
    print(f"drain cpu: {r['connections']} idle keep-alive connections ({where}), "
          f"window {args.window:g} s, traffic source {r['traffic_source']}")
    print(f"sidewatch_app_connections: idle {r['app_connections_idle']}, "
          f"draining {r['app_connections_draining']}; "
          f"drain returned early: {r['drain_returned_early']}")
    for label, w in (("idle     (1 s refresh + 1 s probe)", idle),
                     ("draining (100 ms polls, no probe) ", busy)):
        print(f"{label}: {w['ticks']:4d} ticks (user {w['utime_ticks']}, system {w['stime_ticks']}) "
              f"in {w['wall_s']:.1f} s = {w['pct_stat']:.3f} % "
              f"of a core (schedstat {w['pct_schedstat']:.3f} %)  threads {w['threads']}")
    print(f"drain minus idle: {extra:.3f} % of one core (schedstat {extra_ns:.3f} %); "
          f"CPU per 100 ms poll while draining: {busy['pct_schedstat'] / 100 * 0.1 * 1000:.3f} ms")
    print(f"sidewatch memory with the connections open: {r['status']}")
    print(f"target drain minus idle <= 1 % of one core: {'MET' if extra <= 1 else 'MISSED'}")
    os.makedirs(netns.OUT, exist_ok=True)
    rps = r["traffic_rps"]
    name = (f"drain_cpu-{r['connections']}{'-peer' if r['peer_netns'] else ''}"
            f"{'-kubelet' if r['kubelet_probe'] else ''}{f'-{rps}rps' if rps else ''}"
            f"{'-%dunrelated' % r['unrelated_sockets'] if r['unrelated_sockets'] else ''}.json")
    with open(os.path.join(netns.OUT, name), "w") as f:
        json.dump(r, f, indent=1)


if __name__ == "__main__":
    main()
