#!/usr/bin/env python3
"""Soak: sidewatch probing every 50 ms for an hour while the app cycles through every failure
class, with its RSS, open file descriptors and threads sampled throughout; the slopes say whether
anything leaks.

What runs (all on 127.0.0.1, all removed at the end, also on failure):
- bench/faultapp.py, a plain HTTP port and an HTTPS port whose behaviour changes on command;
- a cgroup v1 memory cgroup (/sys/fs/cgroup/memory/swsoak-<pid>, 64 MiB, swappiness 0) where
  python3 hogs allocate;
- a small python3 process whose command line carries a marker (`process.match`);
- sidewatch (`--bin`, $BENCH_BIN, else the release build) with three probes: `app` (HTTP,
  `body_contains: healthy`), `tls` (HTTPS against a throw-away CA) at 50 ms with a 250 ms timeout,
  and `dns` (non-critical, a name under .invalid, every 1 s); `--cgroup` on that cgroup with
  `oom_cooldown: 2s`, and `process.match` on the marker;
- steady load like a cluster's: a Prometheus-like scraper (GET /metrics every 1 s on a keep-alive
  connection), a kubelet-like prober (GET /readyz every 1 s on a fresh connection, /livez every
  10 s), and once per cycle 4 clients that send half a request header and 4 that connect and reset.

One cycle (about 30 s) walks through, with a ready phase between each: refused, reset,
invalid_response, http_5xx, unexpected_status, body_mismatch, timeout (app probe); tls twice
(untrusted certificate, then plain bytes on the TLS port); memory_high (a hog held at 95% of the
limit); oom_predicted (a hog growing 10 MiB/s, stopped short of the limit); oom_killed (a hog that
grows until the kernel kills it); process_exited (the marked process killed, then restarted).
Each phase waits (with a deadline) until /readyz names the expected reason, holds it 0.5 s, ends
the fault and waits for /readyz 200. `dns` fails all along (a warning, never a veto).

Measured: every `--sample-every` s, VmRSS, RssAnon, VmHWM, open fds (/proc/PID/fd), threads
(/proc/PID/task) and CPU time; at the end of every cycle a quiescent count: the load is paused,
admin connections are closed, and the fds and threads are counted every 10 ms for 1 s (the minimum
is what sidewatch holds, not a probe connection in flight), with each fd classified.

After a warm-up (the later of 10% of the run and the end of the first cycle), least-squares slopes
per hour. Flat means: the quiescent fd count never rises above the first cycle's (fds held at rest
must come back to the same number; 0 fds/h), the quiescent thread count never above the first
cycle's, and RSS slope under 1 byte per check (about 144 KiB/h at this rate; a per-check leak of
anything allocated shows above that).

usage: python3 bench/soak.py [--duration 3600] [--bin PATH] [--json FILE] [--markdown FILE]
Needs root, cgroup v1 memory at /sys/fs/cgroup/memory, python3, and openssl unless --certs is given.
"""

import argparse
import collections
import ctypes
import http.client
import json
import math
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import common
from cgroup import CG_ROOT, MIB, Cgroup, reasons, sidewatch_env

LIMIT = 64 * MIB
INTERVAL = 0.05
# Probe checks per hour: app and tls every 50 ms, dns every second.
CHECKS_PER_HOUR = 2 * 3600 / INTERVAL + 3600
PROBE_REASONS = {"app": ["refused", "reset", "invalid_response", "http_5xx", "unexpected_status",
                         "body_mismatch", "timeout"], "tls": ["tls"], "dns": ["dns"]}

_libc = ctypes.CDLL(None, use_errno=True)


def die_with_parent():
    """preexec_fn: the child gets SIGKILL when the soak dies, even by SIGKILL."""
    _libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


# ---------------------------------------------------------------- setup


def certificates(d):
    """A CA, a leaf for 127.0.0.1 it signed (what the tls probe trusts), and a self-signed leaf."""
    cnf = os.path.join(d, "openssl.cnf")
    with open(cnf, "w") as f:
        f.write("""[req]
distinguished_name = dn
prompt = no
[dn]
CN = sidewatch soak
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
[leaf]
subjectAltName = IP:127.0.0.1
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
""")
    p = lambda name: os.path.join(d, name)  # noqa: E731
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-config", cnf]
    steps = [
        ["req", "-x509", *ec, "-extensions", "ca", "-subj", "/CN=sidewatch soak CA",
         "-keyout", p("ca.key"), "-out", p("ca.pem"), "-days", "3"],
        ["req", *ec, "-subj", "/CN=127.0.0.1", "-keyout", p("leaf.key"), "-out", p("leaf.csr")],
        ["x509", "-req", "-in", p("leaf.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
         "-CAcreateserial", "-out", p("leaf.pem"), "-days", "3", "-extfile", cnf,
         "-extensions", "leaf"],
        ["req", "-x509", *ec, "-extensions", "leaf", "-subj", "/CN=127.0.0.1",
         "-keyout", p("bad.key"), "-out", p("bad.pem"), "-days", "3"],
    ]
    for argv in steps:
        r = subprocess.run(["openssl", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if r.returncode:
            raise RuntimeError(f"openssl {argv[0]} failed: {r.stderr.decode()}")
    return p


class Piped:
    """A child process spoken to line by line over stdin/stdout. Its stdin closing (our exit) ends it."""

    def __init__(self, argv, log, preexec_fn=die_with_parent):
        with open(os.path.join(common.OUT, log), "ab") as out:
            self.p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=out,
                                      preexec_fn=preexec_fn, text=True, bufsize=1)
        common._procs.append(self.p)

    def say(self, line):
        self.p.stdin.write(line + "\n")
        self.p.stdin.flush()

    def ask(self, line):
        self.say(line)
        answer = self.p.stdout.readline().strip()
        if not answer:
            raise RuntimeError(f"{self.p.args[:2]} exited ({self.p.poll()}) on {line!r}")
        return answer

    def kill(self):
        common.stop(self.p, signal.SIGKILL)
        for f in (self.p.stdin, self.p.stdout):
            try:
                f.close()
            except OSError:
                pass  # a dead child's pipe: nothing left to flush


HOG = r"""
import sys
held = []
for line in sys.stdin:
    for _ in range(int(line)):
        held.append(b"x" * (1 << 20))   # touched: charged to the cgroup at once
    print(len(held), flush=True)
"""

APP = "import sys; sys.stdin.read()"  # the marked 'app': lives until killed or its stdin closes


def hog_in(cg):
    procs = os.path.join(cg.path, "cgroup.procs")

    def join():
        die_with_parent()
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    return Piped([sys.executable, "-c", HOG], "soak-hog.log", preexec_fn=join)


def config_yaml(app_port, tls_port, admin_port, ca, cg, marker):
    return f"""listen: 127.0.0.1:{admin_port}
probes:
  - name: app
    http: {{url: "http://127.0.0.1:{app_port}/healthz", body_contains: healthy}}
    interval: 50ms
    timeout: 250ms
    failure_threshold: 2
  - name: tls
    http: {{url: "https://127.0.0.1:{tls_port}/healthz", ca_file: "{ca}"}}
    interval: 50ms
    timeout: 250ms
    failure_threshold: 2
  - name: dns
    http: {{url: "http://sidewatch-soak.invalid:{app_port}/healthz"}}
    interval: 1s
    timeout: 250ms
    critical: false
memory:
  cgroup: "{cg}"
  oom_cooldown: 2s
process:
  match: "{marker}"
drain:
  # Only the final SIGTERM drains. PassiveOpens counts the whole network namespace, here the
  # host's, where other programs keep connecting: the drain would always run to max.
  delay: 1s
  max: 5s
"""


# ---------------------------------------------------------------- measuring


def read_status(pid):
    s = common.proc_status(pid, "VmRSS", "RssAnon", "RssFile", "VmHWM")
    return {k: int(v.split()[0]) for k, v in s.items()}  # kB


def count(path):
    return len(os.listdir(path))


def net_sockets():
    """inode -> short description, from /proc/net (TCP with ports and state)."""
    states = {"01": "ESTABLISHED", "02": "SYN_SENT", "06": "TIME_WAIT", "08": "CLOSE_WAIT",
              "0A": "LISTEN", "09": "LAST_ACK", "04": "FIN_WAIT1", "05": "FIN_WAIT2"}
    out = {}
    for proto in ("tcp", "tcp6", "udp", "udp6"):
        try:
            with open(f"/proc/net/{proto}") as f:
                next(f)
                for line in f:
                    x = line.split()
                    lport, rport = int(x[1].split(":")[1], 16), int(x[2].split(":")[1], 16)
                    st = states.get(x[3], x[3]) if proto.startswith("tcp") else "udp"
                    out[x[9]] = f"{proto} {st} :{lport}->:{rport}"
        except OSError:
            pass
    for proto in ("unix", "netlink"):
        try:
            with open(f"/proc/net/{proto}") as f:
                next(f)
                for line in f:
                    x = line.split()
                    inode = x[6] if proto == "unix" else x[-1]
                    out[inode] = proto
        except OSError:
            pass
    return out


def fd_kinds(pid, ports):
    """Counter of what each fd is: eventfd, epoll, pidfd, a socket by role, a file path..."""
    names = {v: k for k, v in ports.items()}
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass
    socks = net_sockets() if any(x.startswith("socket:") for x in links) else {}
    kinds = collections.Counter()
    for link in links:
        if link.startswith("socket:["):
            desc = socks.get(link[8:-1], "socket (closing)")
            parts = desc.split()
            if len(parts) == 3:
                lport, rport = (int(x) for x in parts[2].replace(":", "").split("->"))
                if parts[1] == "LISTEN":
                    role = f"{names.get(lport, lport)}-listener"
                elif lport in names:
                    role = f"{names[lport]}-conn"
                else:
                    role = f"to-{names[rport]}" if rport in names else "other"
                desc = f"{parts[0]} {parts[1]} {role}"
            kinds[desc] += 1
        elif link.startswith("anon_inode:"):
            kinds[link[len("anon_inode:"):].strip("[]")] += 1
        elif link.startswith("pipe:"):
            kinds["pipe"] += 1
        else:
            kinds[link] += 1
    return dict(sorted(kinds.items()))


def thread_names(pid):
    names = collections.Counter()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                names[f.read().strip()] += 1
        except OSError:
            pass
    return dict(sorted(names.items()))


def admin_connections(port):
    """TCP sockets on sidewatch's admin port other than the listener and TIME_WAIT."""
    n = 0
    for proto in ("tcp", "tcp6"):
        with open(f"/proc/net/{proto}") as f:
            next(f)
            for line in f:
                x = line.split()
                if int(x[1].split(":")[1], 16) == port and x[3] not in ("0A", "06"):
                    n += 1
    return n


def slope_per_hour(points):
    """Least-squares slope of [(t_seconds, value)], per hour; None under 3 points."""
    if len(points) < 3:
        return None
    n = len(points)
    mt = sum(t for t, _ in points) / n
    mv = sum(v for _, v in points) / n
    var = sum((t - mt) ** 2 for t, _ in points)
    if var == 0:
        return None
    return sum((t - mt) * (v - mv) for t, v in points) / var * 3600


# ---------------------------------------------------------------- load


class Load:
    """The cluster's steady traffic on the admin port: a Prometheus-like scraper (keep-alive) and a
    kubelet-like prober (fresh connection per probe). `pause` holds both between requests."""

    def __init__(self, port, scrape_every=1.0, probe_every=1.0, livez_every=10.0):
        self.port = port
        self.stop = threading.Event()
        self.gates = {"prometheus": threading.Lock(), "kubelet": threading.Lock()}
        self.prom = common.Admin(port)
        self.stats = collections.Counter()
        self.readyz_reasons = collections.Counter()
        self.errors = []
        self.threads = [
            threading.Thread(target=self.loop, args=("prometheus", scrape_every, self.scrape), daemon=True),
            threading.Thread(target=self.loop, args=("kubelet", probe_every, self.probe), daemon=True),
        ]
        self.livez_every, self.next_livez = livez_every, time.monotonic()
        for t in self.threads:
            t.start()

    def loop(self, name, every, fn):
        nxt = time.monotonic()
        while not self.stop.is_set():
            with self.gates[name]:
                try:
                    fn()
                except (OSError, http.client.HTTPException, ValueError) as e:
                    self.stats[f"{name}_errors"] += 1
                    self.errors.append(f"{time.strftime('%H:%M:%S')} {name}: {e!r}")
            nxt += every
            self.stop.wait(max(0.0, nxt - time.monotonic()))

    def scrape(self):
        status, body = self.prom.get("/metrics")
        self.stats["metrics"] += 1
        if status != 200 or b"sidewatch_ready " not in body:
            raise ValueError(f"/metrics answered {status}")

    def fresh_get(self, path):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            c.request("GET", path, headers={"Connection": "close"})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def probe(self):
        status, body = self.fresh_get("/readyz")
        self.stats[f"readyz_{status}"] += 1
        if status not in (200, 503):
            raise ValueError(f"/readyz answered {status}")
        for r in reasons(body):
            self.readyz_reasons[r] += 1
        if time.monotonic() >= self.next_livez:
            self.next_livez += self.livez_every
            status, body = self.fresh_get("/livez")
            self.stats[f"livez_{status}"] += 1
            if status != 200:
                raise ValueError(f"/livez answered {status}: {body[:200]!r}")

    def pause(self):
        for g in self.gates.values():
            g.acquire()
        if self.prom.conn is not None:
            self.prom.conn.close()
            self.prom.conn = None

    def resume(self):
        for g in self.gates.values():
            g.release()

    def close(self):
        self.stop.set()
        for t in self.threads:
            t.join(10)


class SlowClients:
    """What port scanners and slow clients do: half a request header (the server must close it
    within its 5 s header timeout), and connections reset at once. A thread notes when the server
    closes each half-sent request."""

    def __init__(self, port, n=4):
        self.partial, self.opened, self.closed = [], time.monotonic(), []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), 2)
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: soak\r\n")
            self.partial.append(s)
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), 2)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
        self.watcher = threading.Thread(target=self.watch, daemon=True)
        self.watcher.start()

    def watch(self, within=15.0):
        for s in self.partial:
            s.settimeout(max(0.01, self.opened + within - time.monotonic()))
            try:
                while s.recv(4096):
                    pass
                self.closed.append(time.monotonic() - self.opened)
            except ConnectionResetError:
                self.closed.append(time.monotonic() - self.opened)
            except OSError:
                return  # still open at the deadline

    def closed_by_server(self):
        """Seconds until the server had closed every half-sent request, or None (not within 15 s)."""
        self.watcher.join(20)
        for s in self.partial:
            s.close()
        return max(self.closed) if len(self.closed) == len(self.partial) else None


# ---------------------------------------------------------------- the soak


class Soak:
    def __init__(self, args, tmp):
        self.args, self.tmp = args, tmp
        self.t0 = time.monotonic()
        self.samples, self.quiescent, self.phases, self.findings = [], [], [], []
        self.phase_name, self.cycle = "start", 0
        self.marker = f"sidewatch-soak-app-{os.getpid()}"
        self.fault = self.app = self.cg = self.load = None
        self.exit_code = None

    def setup(self):
        tmp = self.tmp
        certs = self.args.certs
        cert = (lambda name: os.path.join(certs, name)) if certs else certificates(tmp)
        self.ports = {"app": common.free_port(), "tls": common.free_port(), "admin": common.free_port()}
        self.fault = Piped([sys.executable, os.path.join(common.BENCH, "faultapp.py"),
                            "--port", str(self.ports["app"]), "--tls-port", str(self.ports["tls"]),
                            "--cert", cert("leaf.pem"), "--key", cert("leaf.key"),
                            "--bad-cert", cert("bad.pem"), "--bad-key", cert("bad.key")], "soak-faultapp.log")
        if self.fault.p.stdout.readline().strip() != "ready":
            raise RuntimeError("faultapp.py did not start; see soak-faultapp.log")
        self.cg = Cgroup(LIMIT, name=f"swsoak-{os.getpid()}")
        try:
            self.cg.write("memory.swappiness", "0")  # nothing to escape to: the limit is the limit
        except OSError:
            pass
        self.app = self.start_app()
        self.config = os.path.join(tmp, "sidewatch.yaml")
        with open(self.config, "w") as f:
            f.write(config_yaml(self.ports["app"], self.ports["tls"], self.ports["admin"],
                                cert("ca.pem"), self.cg.path, self.marker))
        env = sidewatch_env()
        env["RUST_LOG"] = "info"
        env.update(kv.split("=", 1) for kv in self.args.sidewatch_env)
        self.log = os.path.join(common.OUT, "soak-sidewatch.log")
        if os.path.exists(self.log):
            os.remove(self.log)
        self.sw = common.spawn([common.binary(), "run", "--config", self.config],
                               log="soak-sidewatch.log", env=env, preexec_fn=die_with_parent)
        common.wait_port(self.ports["admin"], self.sw)
        self.pid = self.sw.pid
        self.admin = common.Admin(self.ports["admin"])
        self.admin.wait_ready(200, timeout=30)
        self.stop_sampling = threading.Event()
        self.sampler = threading.Thread(target=self.sample_loop, daemon=True)
        self.sampler.start()
        self.load = Load(self.ports["admin"])

    def now(self):
        return time.monotonic() - self.t0

    def start_app(self):
        return Piped([sys.executable, "-c", APP, self.marker], "soak-app.log")

    # -- sampling

    def sample(self):
        st = read_status(self.pid)
        return {"t": round(self.now(), 2), "rss_kib": st["VmRSS"], "anon_kib": st["RssAnon"],
                "file_kib": st["RssFile"], "hwm_kib": st["VmHWM"],
                "fds": count(f"/proc/{self.pid}/fd"), "tasks": count(f"/proc/{self.pid}/task"),
                "cpu_s": round(common.cpu_seconds(self.pid), 2), "cycle": self.cycle,
                "phase": self.phase_name}

    def sample_loop(self):
        nxt = time.monotonic()
        while not self.stop_sampling.is_set():
            try:
                self.samples.append(self.sample())
            except OSError as e:
                self.findings.append(f"sampling failed at {self.now():.0f}s: {e!r} (sidewatch gone?)")
                return
            nxt += self.args.sample_every
            self.stop_sampling.wait(max(0.0, nxt - time.monotonic()))

    def measure_quiescent(self):
        """fds and threads sidewatch holds at rest: load paused, admin connections gone, the
        minimum over 1 s of 10 ms samples (a probe connection lives ~1 ms of every 50)."""
        self.load.pause()
        try:
            self.admin.conn and self.admin.conn.close()
            self.admin.conn = None
            end = time.monotonic() + 10
            while admin_connections(self.ports["admin"]) and time.monotonic() < end:
                time.sleep(0.01)
            lingering = admin_connections(self.ports["admin"])
            best = None
            tasks = []
            for _ in range(100):
                fds = count(f"/proc/{self.pid}/fd")
                tasks.append(count(f"/proc/{self.pid}/task"))
                if best is None or fds < best[0]:
                    best = (fds, fd_kinds(self.pid, {"admin": self.ports["admin"], "app": self.ports["app"],
                                                     "tls": self.ports["tls"]}))
                time.sleep(0.01)
            st = read_status(self.pid)
            q = {"cycle": self.cycle, "t": round(self.now(), 1), "fds": best[0], "tasks_min": min(tasks),
                 "tasks_max": max(tasks), "rss_kib": st["VmRSS"], "anon_kib": st["RssAnon"],
                 "admin_conns_left": lingering, "fd_kinds": best[1], "threads": thread_names(self.pid)}
            self.quiescent.append(q)
            return q
        finally:
            self.load.resume()

    # -- waiting on /readyz

    def wait_for(self, want, timeout):
        """Polls /readyz every 20 ms until `want(status, reasons)`; seconds taken, or None."""
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            status, body = self.admin.get("/readyz")
            if want(status, reasons(body) if status == 503 else []):
                return time.monotonic() - start
            time.sleep(0.02)
        return None

    def wait_reason(self, reason, timeout=15.0):
        return self.wait_for(lambda s, rs: s == 503 and reason in rs, timeout)

    def wait_ready(self, timeout=30.0):
        return self.wait_for(lambda s, rs: s == 200, timeout)

    def phase(self, name, reason, begin, end, timeout=15.0):
        self.phase_name = name
        rec = {"cycle": self.cycle, "phase": name, "reason": reason, "t": round(self.now(), 1)}
        try:
            seen = begin(reason, timeout)
            rec["detect_s"] = None if seen is None else round(seen, 3)
            if seen is not None:
                time.sleep(self.args.hold)  # the fault lasts a while: this is the workload, not a wait
        finally:
            end()
        back = self.wait_ready()
        rec["recover_s"] = None if back is None else round(back, 3)
        self.phases.append(rec)
        if seen is None or back is None:
            what = f"never saw {reason}" if seen is None else "never ready again"
            self.findings.append(f"cycle {self.cycle} phase {name}: {what} (at {rec['t']}s)")
            print(f"  ! cycle {self.cycle} {name}: {what}", flush=True)
        self.phase_name = "ready"
        time.sleep(self.args.gap)

    def switch(self, port, mode):
        def begin(reason, timeout):
            if self.fault.ask(f"{port} {mode}") != "ok":
                raise RuntimeError(f"faultapp refused {port} {mode}")
            return self.wait_reason(reason, timeout)
        return begin, lambda: self.fault.ask(f"{port} ok")

    # -- memory and process phases

    def working_set(self):
        return int(self.cg.read("memory.usage_in_bytes")) - self.cg.keyed("memory.stat", "total_inactive_file")

    def memory_high(self):
        hog = hog_in(self.cg)

        def begin(reason, timeout):
            end = time.monotonic() + timeout
            while self.working_set() < 0.95 * LIMIT and time.monotonic() < end:
                hog.ask("1")
            return self.wait_reason(reason, max(1.0, end - time.monotonic()))
        self.phase("memory_high", "memory_high", begin, hog.kill)

    def oom_predicted(self):
        hog = hog_in(self.cg)

        def begin(reason, timeout):
            start = time.monotonic()
            tick = start
            while time.monotonic() - start < timeout:
                status, body = self.admin.get("/readyz")
                if status == 503 and reason in reasons(body):
                    return time.monotonic() - start
                if self.working_set() < 0.85 * LIMIT:
                    hog.ask("1")  # 1 MiB every 100 ms: a steady 10 MiB/s leak
                tick += 0.1
                time.sleep(max(0.0, tick - time.monotonic()))
            return None
        self.phase("oom_predicted", "oom_predicted", begin, hog.kill)

    def oom_killed(self):
        hog = hog_in(self.cg)
        kills = self.cg.oom_kills()

        def begin(reason, timeout):
            start = time.monotonic()
            hog.say(str(4 * LIMIT // MIB))  # far past the limit: the kernel kills it
            while hog.p.poll() is None and time.monotonic() - start < timeout:
                time.sleep(0.01)
            if hog.p.returncode != -signal.SIGKILL or self.cg.oom_kills() <= kills:
                self.findings.append(f"cycle {self.cycle}: the hog was not OOM-killed "
                                     f"(exit {hog.p.returncode}, kills {self.cg.oom_kills()})")
            seen = self.wait_reason(reason, max(1.0, timeout - (time.monotonic() - start)))
            return None if seen is None else time.monotonic() - start
        self.phase("oom_killed", "oom_killed", begin, hog.kill)

    def process_exited(self):
        def begin(reason, timeout):
            self.app.kill()
            return self.wait_reason(reason, timeout)

        def end():
            self.app = self.start_app()
        self.phase("process_exited", "process_exited", begin, end)

    def run_cycle(self):
        self.cycle += 1
        slow = SlowClients(self.ports["admin"])
        for mode, reason in (("refused", "refused"), ("reset", "reset"), ("invalid", "invalid_response"),
                             ("5xx", "http_5xx"), ("status", "unexpected_status"), ("body", "body_mismatch"),
                             ("hang", "timeout")):
            self.phase(f"app_{mode}", reason, *self.switch("app", mode))
        for mode in ("badcert", "plain"):
            self.phase(f"tls_{mode}", "tls", *self.switch("tls", mode))
        self.memory_high()
        self.oom_predicted()
        self.oom_killed()
        self.process_exited()
        closed = slow.closed_by_server()
        if closed is None:
            self.findings.append(f"cycle {self.cycle}: half-sent admin requests still open after 15 s")
        self.phase_name = "quiescent"
        q = self.measure_quiescent()
        q["slow_clients_closed_s"] = None if closed is None else round(closed, 2)
        self.phase_name = "ready"
        return q

    def run(self):
        cycle_times = []
        while True:
            started = self.now()
            q = self.run_cycle()
            cycle_times.append(self.now() - started)
            s = self.samples[-1] if self.samples else {}
            print(f"[{self.now():7.1f}s] cycle {self.cycle} ({cycle_times[-1]:.1f}s): quiescent fds {q['fds']} "
                  f"threads {q['tasks_min']}-{q['tasks_max']} RSS {q['rss_kib']} KiB (anon {q['anon_kib']}); "
                  f"last sample fds {s.get('fds')} threads {s.get('tasks')}", flush=True)
            mean = sum(cycle_times) / len(cycle_times)
            if self.cycle >= self.args.min_cycles and self.now() + mean > self.args.duration:
                break

    def finish(self):
        self.stop_sampling.set()
        self.sampler.join(10)
        self.load.close()
        self.metrics_text = self.admin.get("/metrics")[1].decode()
        self.sw.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.sw.wait(60)
        except subprocess.TimeoutExpired:
            self.exit_code = None
            self.findings.append("sidewatch did not exit within 60 s of SIGTERM")
        self.fault.p.stdin.close()
        self.app.kill()

    def close(self):
        if self.load is not None:
            self.load.close()
        for p in (self.fault, self.app):
            if p is not None:
                p.kill()
        if self.cg is not None:
            self.cg.remove()


# ---------------------------------------------------------------- report


def failures_series(probe, reason):
    return 'sidewatch_probe_failures_total{probe="%s",reason="%s"}' % (probe, reason)


def metric_values(text):
    out = {}
    for line in text.splitlines():
        if line.startswith("sidewatch_") and " " in line:
            k, v = line.rsplit(" ", 1)
            try:
                x = float(v)
            except ValueError:
                continue
            out[k] = x if math.isfinite(x) else v  # JSON has no Infinity
    return out


def analyse(soak, duration):
    samples, quiet = soak.samples, soak.quiescent
    first_cycle_end = quiet[0]["t"] if quiet else 0
    warm = max(0.1 * duration, first_cycle_end)
    after = [s for s in samples if s["t"] >= warm]
    series = {}
    for key in ("rss_kib", "anon_kib", "fds", "tasks"):
        pts = [(s["t"], s[key]) for s in after]
        vals = [v for _, v in pts]
        series[key] = {"slope_per_h": None if len(pts) < 3 else round(slope_per_hour(pts), 2),
                       "at_warmup": vals[0] if vals else None, "end": vals[-1] if vals else None,
                       "min": min(vals, default=None), "max": max(vals, default=None),
                       "n": len(vals)}
    qa = [q for q in quiet if q["t"] >= warm] or quiet
    qseries = {}
    for key in ("fds", "tasks_min", "tasks_max", "rss_kib", "anon_kib"):
        pts = [(q["t"], q[key]) for q in qa]
        qseries[key] = {"slope_per_h": None if len(pts) < 3 else round(slope_per_hour(pts), 2),
                        "first": pts[0][1] if pts else None, "last": pts[-1][1] if pts else None,
                        "min": min((v for _, v in pts), default=None),
                        "max": max((v for _, v in pts), default=None)}
    rss_limit_kib = CHECKS_PER_HOUR / 1024  # 1 byte per check
    verdict = {
        "fds": bool(quiet) and max(q["fds"] for q in quiet[1:] or quiet) <= quiet[0]["fds"],
        "tasks": bool(quiet) and max(q["tasks_min"] for q in quiet[1:] or quiet) <= quiet[0]["tasks_min"],
        "rss": all(series[k]["slope_per_h"] is not None and series[k]["slope_per_h"] < rss_limit_kib
                   for k in ("rss_kib", "anon_kib")),
    }
    return {"warmup_s": round(warm, 1), "samples": series, "quiescent": qseries,
            "rss_flat_below_kib_per_h": round(rss_limit_kib, 1), "flat": verdict}


def windows(soak, width):
    """Rows of a table over time: one per `width` seconds."""
    rows, samples = [], soak.samples
    if not samples:
        return rows
    t_end = samples[-1]["t"]
    start = 0.0
    while start < t_end:
        w = [s for s in samples if start <= s["t"] < start + width]
        if w:
            q = [q for q in soak.quiescent if start <= q["t"] < start + width]
            cpu = (w[-1]["cpu_s"] - w[0]["cpu_s"]) / max(1e-9, w[-1]["t"] - w[0]["t"]) * 100
            rows.append({"from_s": start, "to_s": min(start + width, t_end),
                         "rss_kib_mean": round(sum(s["rss_kib"] for s in w) / len(w)),
                         "anon_kib_mean": round(sum(s["anon_kib"] for s in w) / len(w)),
                         "fds_min": min(s["fds"] for s in w), "fds_max": max(s["fds"] for s in w),
                         "tasks_min": min(s["tasks"] for s in w), "tasks_max": max(s["tasks"] for s in w),
                         "quiescent_fds": sorted({x["fds"] for x in q}),
                         "cycles": len(q), "cpu_pct": round(cpu, 2)})
        start += width
    return rows


def markdown(report):
    a = report["analysis"]
    lines = [f"Run: {report['started']}, {report['elapsed_s'] / 60:.1f} min, {report['cycles']} cycles, "
             f"binary `{report['binary']}`, {report['machine']}.", "",
             f"Warm-up excluded from the slopes: the first {a['warmup_s']} s.", "",
             "| series | at warm-up | end | min | max | slope per hour |", "| --- | --- | --- | --- | --- | --- |"]
    for key, label in (("rss_kib", "VmRSS (KiB)"), ("anon_kib", "RssAnon (KiB)"), ("fds", "open fds"),
                       ("tasks", "threads")):
        s = a["samples"][key]
        lines.append(f"| {label}, every {report['sample_every']} s | {s['at_warmup']} | {s['end']} | "
                     f"{s['min']} | {s['max']} | {s['slope_per_h']} |")
    for key, label in (("fds", "open fds at rest (per cycle)"), ("tasks_min", "threads at rest (per cycle)"),
                       ("anon_kib", "RssAnon at rest (KiB, per cycle)")):
        s = a["quiescent"][key]
        lines.append(f"| {label} | {s['first']} | {s['last']} | {s['min']} | {s['max']} | {s['slope_per_h']} |")
    lines += ["", f"Flat: fds {a['flat']['fds']}, threads {a['flat']['tasks']}, RSS {a['flat']['rss']} "
              f"(RSS threshold {a['rss_flat_below_kib_per_h']} KiB/h = 1 byte per check).", "",
              "| minutes | VmRSS mean (KiB) | RssAnon mean (KiB) | fds min–max | fds at rest | threads min–max | "
              "cycles | sidewatch CPU |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["windows"]:
        lines.append(f"| {r['from_s'] / 60:.0f}–{r['to_s'] / 60:.0f} | {r['rss_kib_mean']} | {r['anon_kib_mean']} | "
                     f"{r['fds_min']}–{r['fds_max']} | {', '.join(map(str, r['quiescent_fds']))} | "
                     f"{r['tasks_min']}–{r['tasks_max']} | {r['cycles']} | {r['cpu_pct']}% |")
    q0, ql = report["quiescent"][0], report["quiescent"][-1]
    lines += ["", f"fds at rest after cycle 1: {q0['fds']} {json.dumps(q0['fd_kinds'])}",
              f"fds at rest after cycle {ql['cycle']}: {ql['fds']} {json.dumps(ql['fd_kinds'])}",
              f"threads at rest after cycle {ql['cycle']}: {json.dumps(ql['threads'])}", "",
              "| phase | reason | n | seen | detect median (ms) | detect max (ms) | recover median (ms) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    by = collections.defaultdict(list)
    for p in report["phases"]:
        by[(p["phase"], p["reason"])].append(p)
    for (phase, reason), ps in by.items():
        d = sorted(p["detect_s"] for p in ps if p["detect_s"] is not None)
        r = sorted(p["recover_s"] for p in ps if p["recover_s"] is not None)
        med = lambda xs: f"{xs[len(xs) // 2] * 1000:.0f}" if xs else "–"  # noqa: E731
        lines.append(f"| {phase} | {reason} | {len(ps)} | {len(d)} | {med(d)} | "
                     f"{f'{d[-1] * 1000:.0f}' if d else '–'} | {med(r)} |")
    m = report["metrics"]
    lines += ["", "Counters at the end: " + ", ".join(
        f"{k} {m.get(k, 0):g}" for k in (
            "sidewatch_oom_kills_total", "sidewatch_process_exits_total",
            'sidewatch_ready_transitions_total{to="not_ready"}', "sidewatch_admin_evictions_total"))
        + "; probe failures: " + ", ".join(
        f"{p}/{r} {m.get(failures_series(p, r), 0):g}" for p, rs in PROBE_REASONS.items() for r in rs),
              f"Load: {json.dumps(report['load'])}; sidewatch exit status after SIGTERM: {report['exit_code']}.",
              "", "Findings: " + ("none" if not report["findings"] else "; ".join(report["findings"]))]
    return "\n".join(lines) + "\n"


def run():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=3600, help="seconds (the last cycle may run over)")
    ap.add_argument("--bin", help="sidewatch binary (default $BENCH_BIN, else the release build)")
    ap.add_argument("--sample-every", type=float, default=2.0, help="seconds between samples")
    ap.add_argument("--hold", type=float, default=0.5, help="seconds each fault lasts once seen")
    ap.add_argument("--gap", type=float, default=0.5, help="seconds ready between faults")
    ap.add_argument("--min-cycles", type=int, default=2)
    ap.add_argument("--table-every", type=float, default=None, help="seconds per table row (default duration/12)")
    ap.add_argument("--json", help="write the full report (samples included) here")
    ap.add_argument("--markdown", help="write the summary tables here")
    ap.add_argument("--out", help="directory for logs (default $BENCH_OUT)")
    ap.add_argument("--sidewatch-env", action="append", default=[], metavar="KEY=VALUE",
                    help="extra environment for sidewatch, e.g. a heap profiler's LD_PRELOAD (repeatable)")
    ap.add_argument("--certs", help="directory with ca.pem, leaf.pem, leaf.key (127.0.0.1, signed by "
                    "ca.pem) and bad.pem, bad.key (self-signed); default: made with openssl")
    args = ap.parse_args()
    if args.out:
        common.OUT = args.out
    os.makedirs(common.OUT, exist_ok=True)
    if os.geteuid() != 0 or not os.path.exists(os.path.join(CG_ROOT, "memory.limit_in_bytes")):
        sys.exit("the soak needs root and cgroup v1 memory at /sys/fs/cgroup/memory")
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    with tempfile.TemporaryDirectory(prefix="sidewatch-soak-") as tmp:
        soak = Soak(args, tmp)
        try:
            soak.setup()
            print(f"sidewatch pid {soak.pid}, ports {soak.ports}, cgroup {soak.cg.path}, "
                  f"logs in {common.OUT}", flush=True)
            soak.run()
            soak.finish()
        finally:
            soak.close()
    elapsed = soak.now()
    report = {
        "started": started, "elapsed_s": round(elapsed, 1), "duration_arg": args.duration,
        "binary": common.binary(), "machine": common.machine(), "sample_every": args.sample_every,
        "cycles": soak.cycle, "findings": soak.findings, "exit_code": soak.exit_code,
        "load": dict(soak.load.stats), "load_errors": soak.load.errors[:20],
        "readyz_reasons_seen_by_kubelet": dict(soak.load.readyz_reasons),
        "log": soak.log, "metrics_text": soak.metrics_text, "metrics": metric_values(soak.metrics_text),
        "quiescent": soak.quiescent, "phases": soak.phases, "samples": soak.samples,
    }
    report["analysis"] = analyse(soak, elapsed)
    report["windows"] = windows(soak, args.table_every or max(60.0, round(args.duration / 12)))
    md = markdown(report)
    print(md)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(md)


if __name__ == "__main__":
    if "--bin" in sys.argv:
        os.environ["BENCH_BIN"] = sys.argv[sys.argv.index("--bin") + 1]
    common.main(run)
