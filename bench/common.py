"""Shared helpers for the sidewatch benchmarks: processes, ports, HTTP, /proc, statistics.

Every benchmark talks only to 127.0.0.1 and stops everything it started.
"""

import http.client
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
OUT = os.environ.get("BENCH_OUT", "/tmp/sidewatch-bench")
# One probe's CPU, in us, as bench/cpu_probe.py measured it last: bench/idle_memory.py's second
# unit.
PROBE_US = os.path.join(OUT, "probe_us")
CLK_TCK = os.sysconf("SC_CLK_TCK")
_procs = []


def binary():
    """The sidewatch to measure: $BENCH_BIN, else $CARGO_TARGET_DIR (or target)/release.
    (Not SIDEWATCH_*: sidewatch rejects unknown SIDEWATCH_ variables in its environment.)"""
    path = os.environ.get("BENCH_BIN") or os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target")), "release", "sidewatch")
    if not os.access(path, os.X_OK):
        sys.exit(f"no sidewatch binary at {path}: run `cargo build --release` or set BENCH_BIN")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(argv, log=None, **kw):
    os.makedirs(OUT, exist_ok=True)
    out = open(os.path.join(OUT, log), "ab") if log else subprocess.DEVNULL
    p = subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, **kw)
    _procs.append(p)
    return p


def stop(p, sig=signal.SIGTERM):
    if p.poll() is None:
        p.send_signal(sig)
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in _procs:
        _procs.remove(p)


def stop_all():
    for p in list(_procs):
        stop(p)


def upstream(port, arrivals=None, prio=False):
    """bench/upstream.py on 127.0.0.1:port; `prio` runs it SCHED_FIFO 50 so a flood cannot starve it."""
    argv = [sys.executable, os.path.join(BENCH, "upstream.py"), str(port)]
    if arrivals:
        argv.append(arrivals)
    if prio:
        argv = ["chrt", "-f", "50"] + argv
    p = spawn(argv, log="upstream.log")
    wait_port(port, p)
    return p


def peer(package, *names):
    """A peer run by hand: the path of its executable (the first of `names` found) and a temp dir
    of its own for its config; exits naming the Debian `package` to install when none is found."""
    path = os.environ.get("PATH", "") + ":/usr/sbin"
    exe = next(filter(None, (shutil.which(n, path=path) for n in names)), None)
    if not exe:
        sys.exit(f"{names[0]} not found: apt-get install -y {package}")
    return exe, tempfile.mkdtemp(prefix=f"sidewatch-bench-{names[0]}-")


def write(path, text):
    with open(path, "w") as f:
        f.write(text)
    return path


def nginx(port):
    """nginx (Debian package) by hand on 127.0.0.1:port: one worker, `return 200` on /healthz."""
    exe, d = peer("nginx", "nginx")
    conf = write(os.path.join(d, "nginx.conf"), f"""daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d};
  uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{
    listen 127.0.0.1:{port};
    location = /healthz {{ return 200 "ok\\n"; }}
  }}
}}
""")
    p = spawn([exe, "-p", d, "-c", conf, "-e", f"{d}/error.log"], log="nginx.log")
    wait_port(port, p)
    return p


def sidewatch(target_port, listen_port, interval, timeout="500ms", log="sidewatch.log"):
    p = spawn([binary(), "run", "--target", f"http://127.0.0.1:{target_port}/healthz",
               "--listen", f"127.0.0.1:{listen_port}", "--interval", interval,
               "--timeout", timeout, "--failure-threshold", "1", "--success-threshold", "1"],
              log=log)
    wait_port(listen_port, p)
    return p


def wait_port(port, proc, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}; see {OUT}/*.log")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.005)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


class Admin:
    """A keep-alive client of sidewatch's admin port."""

    def __init__(self, port):
        self.port = port
        self.conn = None

    def get(self, path):
        for attempt in (0, 1):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                self.conn.request("GET", path)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (OSError, http.client.HTTPException):
                self.conn = None
                if attempt:
                    raise

    def wait_ready(self, want=200, timeout=10.0, every=0.002, path="/readyz"):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.get(path)[0] == want:
                return
            time.sleep(every)
        raise RuntimeError(f"{path} never answered {want} within {timeout}s")

    def metric(self, name):
        """Sum of every sample of `name` in /metrics."""
        total = 0.0
        for line in self.get("/metrics")[1].decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                total += float(line.rsplit(" ", 1)[1])
        return total


def blackbox(modules):
    """Debian's prometheus-blackbox-exporter on a free loopback port with `modules` (YAML text
    under `modules:`); returns (process, port). The peer most sidewatch users already run."""
    exe, d = peer("prometheus-blackbox-exporter", "prometheus-blackbox-exporter", "blackbox_exporter")
    conf = write(os.path.join(d, "blackbox.yml"), "modules:\n" + modules)
    port = free_port()
    p = spawn([exe, f"--config.file={conf}", f"--web.listen-address=127.0.0.1:{port}"],
              log="blackbox.log")
    wait_port(port, p)
    return p, port


def blackbox_cpu(bb, port, path, window, server_pid):
    """CPU per probe of blackbox_exporter `bb`: `path` (a /probe?module=...&target=... request)
    asked in a loop, one at a time over one kept-alive connection, for `window` seconds, less its
    idle CPU over an equal window; the probed server's CPU per probe too."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def probe():
        conn.request("GET", path)
        return "probe_success 1" in conn.getresponse().read().decode()

    for _ in range(50):  # warm up
        probe()
    i0 = cpu_seconds(bb.pid)
    time.sleep(window)
    idle = cpu_seconds(bb.pid) - i0
    t0, c0, s0, n, ok = time.monotonic(), cpu_seconds(bb.pid), cpu_seconds(server_pid), 0, 0
    while time.monotonic() - t0 < window:
        ok += probe()
        n += 1
    t1, c1, s1 = time.monotonic(), cpu_seconds(bb.pid), cpu_seconds(server_pid)
    return {"wall": t1 - t0, "cpu": c1 - c0, "idle": idle * (t1 - t0) / window, "probes": n,
            "failed": n - ok, "server": s1 - s0,
            "per_probe": (c1 - c0 - idle * (t1 - t0) / window) / n}


def haproxy(config):
    """Debian's haproxy in the foreground with `config` (its global section included)."""
    exe, d = peer("haproxy", "haproxy")
    conf = write(os.path.join(d, "haproxy.cfg"), config)
    return spawn([exe, "-db", "-f", conf], log="haproxy.log")


def memory(pid):
    """Resident memory of one process in MiB: RSS, its anonymous part, and PSS (its share of
    pages it shares with others, from smaps_rollup), the figure a cgroup's limit is closest to."""
    st = proc_status(pid, "VmRSS", "RssAnon", "RssFile", "VmHWM")
    out = {k: int(v.split()[0]) / 1024 for k, v in st.items()}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                out["Pss"] = int(line.split()[1]) / 1024
    return out


def fmt_memory(m):
    return (f"RSS {m['VmRSS']:.2f} MiB (anonymous {m['RssAnon']:.2f}, file {m['RssFile']:.2f}), "
            f"PSS {m['Pss']:.2f} MiB, peak {m['VmHWM']:.2f} MiB")


def _stat(pid):
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def cpu_seconds(pid):
    """utime + stime of the whole process (all threads), from /proc/PID/stat."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # fields 14 and 15 of proc(5)


def sys_seconds(pid):
    """stime alone: the CPU the process spent in the kernel."""
    return int(_stat(pid)[12]) / CLK_TCK


def pin_apart(server_pid):
    """Puts the server (every thread of `server_pid` and of its children) on the last CPU and this
    process, with every client it starts from now on (sidewatch, the floor, the peers), on the
    first: client and server on CPUs of their own, as a sidecar and its app are on a node with CPUs
    to spare. Left to the scheduler on two CPUs, they share them, and the server's work evicts the
    client's code from the caches between two checks (BENCHMARKS.md, section 12.1.3)."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        sys.exit("--pin needs two CPUs")
    pids = [server_pid]
    try:
        with open(f"/proc/{server_pid}/task/{server_pid}/children") as f:
            pids += [int(c) for c in f.read().split()]
    except FileNotFoundError:
        pass
    for pid in pids:
        for task in os.listdir(f"/proc/{pid}/task"):
            os.sched_setaffinity(int(task), {cpus[-1]})
    os.sched_setaffinity(0, {cpus[0]})
    return f"placement: the server on CPU {cpus[-1]}, sidewatch, the floor and the peer on CPU {cpus[0]}"


def run_seconds(pid):
    """CPU time of all of a process's threads from their schedstat, in seconds at nanosecond
    resolution (utime+stime count 10 ms clock ticks, too coarse for an idle process)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # a thread that ended meanwhile
    return total / 1e9


def proc_status(pid, *keys):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in keys:
                out[k] = v.strip()
    return out


def others_busy(seconds, every=0.5):
    """Sleep `seconds` while sampling /proc; return [(cpu_seconds, name)] of other processes (not
    this benchmark's) that used CPU meanwhile, biggest first: a shared machine skews the figures."""
    me, first, last, end = os.getpid(), {}, {}, time.monotonic() + seconds
    initial, names = True, {}
    while True:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    head, _, rest = f.read().rpartition(")")
                fields = rest.split()
                ppid, cpu = int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK
            except (OSError, ValueError, IndexError):
                continue
            if int(pid) == me or ppid == me or ppid in {p.pid for p in _procs}:
                continue
            name = head.partition("(")[2]
            if name.startswith("kworker/"):
                name = name.split("-")[0]  # kworker/u8:0-events_unbound: the suffix changes
            first.setdefault(pid, cpu if initial else 0.0)
            last[pid], names[pid] = cpu, name
        initial = False
        left = end - time.monotonic()
        if left <= 0:
            break
        time.sleep(min(every, left))
    used = {}
    for pid, cpu in last.items():
        used[names[pid]] = used.get(names[pid], 0.0) + cpu - first[pid]
    return sorted(((round(c, 2), n) for n, c in used.items() if c >= 0.05), reverse=True)


def percentile(xs, p):
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def summary(xs, unit_scale=1e3, unit="ms"):
    return {k: round(v * unit_scale, 2) for k, v in (
        ("median", percentile(xs, 50)), ("p90", percentile(xs, 90)),
        ("p99", percentile(xs, 99)), ("max", max(xs)))} | {"n": len(xs), "unit": unit}


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"nproc={os.cpu_count()} kernel={os.uname().release} cpu={model!r} loadavg={load}"


def main(fn):
    """Run a benchmark body, always stopping every process it started."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: sys.exit(130))
    print(f"# {os.path.basename(sys.argv[0])}  {machine()}  bin={binary()}", flush=True)
    try:
        fn()
    finally:
        stop_all()


def floor(mode, *args):
    """Runs bench/floor.c's client (built here with cc -O2 when missing or older than its source):
    `mode` http or grpc, with its arguments; returns its checks, failures and CPU per check (the
    scheduler's count, as run_seconds; user and system as getrusage samples them)."""
    src, exe = os.path.join(BENCH, "floor.c"), os.path.join(OUT, "floor")
    os.makedirs(OUT, exist_ok=True)
    if not os.path.exists(exe) or os.path.getmtime(exe) < os.path.getmtime(src):
        subprocess.run(["cc", "-O2", "-o", exe, src], check=True)
    out = subprocess.run([exe, mode, *map(str, args)], capture_output=True, text=True, check=True)
    f = out.stdout.split()
    checks, failed = int(f[1]), int(f[3])
    user, system, ran = float(f[5]) / 1e6, float(f[7]) / 1e6, float(f[9]) / 1e6
    return {"probes": checks, "failed": failed, "user": user / checks, "sys": system / checks,
            "per_probe": ran / checks}
