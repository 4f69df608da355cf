"""Shared helpers of the drain benchmarks (drain_lag.py, drain_rollout.py, drain_cpu.py): a network
namespace per run, the HTTP/1.1 keep-alive app, sidewatch started inside the namespace, the
client side of the traffic and the /drain call.

Each script runs itself again inside the namespace (`ip netns exec NAME python3 SCRIPT --inner
...`) and starts the app as `python3 SCRIPT --app PORT`, so the script's path is passed in where a
process is started. Needs root and iproute2.
"""

import contextlib
import http.client
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time

OUT = os.environ.get("BENCH_OUT", "/tmp/sidewatch-bench-drain")
DEFAULT_BIN = "/tmp/bench-drain-target/release/sidewatch"
APP_PORT = 8080
SW_PORT = 9102


# ---------------------------------------------------------------- the app (its own process)

def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def run_app(port, host="127.0.0.1"):
    """HTTP/1.1 keep-alive app answering `ok` to everything."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    raise_nofile()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"ok\n")

        def log_message(self, *args):
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True
        request_queue_size = 4096

    Server((host, port), Handler).serve_forever()


# ---------------------------------------------------------------- processes inside the namespace

def sidewatch_env(extra):
    # sidewatch rejects unknown SIDEWATCH_* variables: pass none but ours.
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEWATCH_")}
    env.update(extra)
    return env


def http_get(port, path, timeout=2.0):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def wait_for(what, check, within=15.0):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def start_app(script, within=15.0):
    """`python3 script --app APP_PORT`, once it answers."""
    app = subprocess.Popen([sys.executable, script, "--app", str(APP_PORT)],
                           stdin=subprocess.DEVNULL)
    wait_for("the app", lambda: http_get(APP_PORT, "/")[0] == 200, within)
    return app


def start_processes(script, bin_path, env, tag, within=15.0):
    """The app (`python3 script --app APP_PORT`) and sidewatch watching it with the environment
    `env`, logging to $BENCH_OUT/tag.log; returns (app, sidewatch, log path) once both answer."""
    os.makedirs(OUT, exist_ok=True)
    app = start_app(script, within)
    log = open(os.path.join(OUT, f"{tag}.log"), "wb")
    sw = subprocess.Popen(
        [bin_path, "run", "--target", f"http://127.0.0.1:{APP_PORT}/",
         "--listen", f"127.0.0.1:{SW_PORT}", "--cgroup", "none"],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=sidewatch_env(env))
    wait_for("sidewatch ready", lambda: http_get(SW_PORT, "/readyz")[0] == 200, within)
    return app, sw, log.name


def stop_process(p):
    if p.poll() is None:
        p.kill()  # a SIGTERM would join a drain still under way
    p.wait()


def traffic_source(log):
    """Which traffic source sidewatch's log names: "sock_diag" or "other"."""
    with open(log, "rb") as f:
        return "sock_diag" if b"sock_diag" in f.read() else "other"


# ---------------------------------------------------------------- the client side

def read_response(s):
    buf = b""
    while not buf.endswith(b"ok\n"):
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("app closed early")
        buf += chunk


class Sender(threading.Thread):
    """One stream of requests to the app: a kept-alive connection ("keepalive"), or a new
    connection per request ("new", closed alternately by the app and by the client), one request
    every `period` s from `phase` s on, until `stop` is set. `last_sent` is when its last request's
    last byte went out (CLOCK_MONOTONIC)."""

    def __init__(self, kind, period, phase, stop):
        super().__init__(daemon=True)
        self.kind, self.period, self.phase, self.stop = kind, period, phase, stop
        self.last_sent, self.sent, self.error = None, 0, None

    def run(self):
        try:
            self.loop()
        except Exception as e:  # reported by the trial
            self.error = repr(e)

    def loop(self):
        kept = None
        n = 0
        next_at = time.monotonic() + self.phase
        while True:
            pause = next_at - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            next_at += self.period
            if self.stop.is_set():
                if kept:
                    kept.close()
                return
            n += 1
            if self.kind == "new":
                s = socket.create_connection(("127.0.0.1", APP_PORT))
                if n % 2 == 0:
                    # The app closes first: its side stays in TIME_WAIT.
                    s.sendall(b"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
                    self.last_sent = time.monotonic()
                    while s.recv(4096):
                        pass
                else:
                    # The client closes first: the app's socket is gone by the next poll.
                    s.sendall(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
                    self.last_sent = time.monotonic()
                    read_response(s)
                s.close()
            else:
                if kept is None:
                    kept = socket.create_connection(("127.0.0.1", APP_PORT))
                kept.sendall(b"GET / HTTP/1.1\r\nHost: app\r\n\r\n")
                self.last_sent = time.monotonic()
                read_response(kept)
            self.sent += 1


def stop_senders(stop, senders):
    """Stops the senders; returns (their errors, the latest `last_sent` of them)."""
    stop.set()
    for s in senders:
        s.join(10)
    return ([s.error for s in senders if s.error],
            max(s.last_sent for s in senders if s.last_sent is not None))


class DrainCall(threading.Thread):
    def __init__(self):
        super().__init__(daemon=True)
        self.started = self.returned = self.body = self.error = None

    def run(self):
        try:
            self.started = time.monotonic()
            status, body = http_get(SW_PORT, "/drain", timeout=120)
            self.returned = time.monotonic()
            self.body = json.loads(body) if status == 200 else {"status": status}
        except Exception as e:
            self.error = repr(e)


# ---------------------------------------------------------------- the namespace, from outside

@contextlib.contextmanager
def namespaces(*names, quiet=False):
    """Fresh namespaces `names` (None entries skipped), loopback up in each; deleted on the way
    out, last first, whatever happens."""
    made = []
    try:
        for name in filter(None, names):
            subprocess.run(["ip", "netns", "add", name], check=True)
            made.append(name)
            subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield
    finally:
        for name in reversed(made):
            cleanup(name, quiet)


def cleanup(name, quiet=False):
    """Anything still in the namespace is ours (an inner run that died): end it by pid; delete.
    `quiet` hides ip's complaints."""
    err = subprocess.DEVNULL if quiet else None
    pids = subprocess.run(["ip", "netns", "pids", name], stdout=subprocess.PIPE,
                          stderr=err, text=True).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    subprocess.run(["ip", "netns", "del", name], stderr=err)


def in_namespace(name, argv, timeout=300):
    """Runs `argv` inside a fresh namespace `name`, its stdout captured; deletes the namespace
    afterwards, whatever happens."""
    with namespaces(name):
        return subprocess.run(["ip", "netns", "exec", name] + argv, stdout=subprocess.PIPE,
                              text=True, timeout=timeout)


def run_trial(script, bin_path, inner, tag, name, label, extra=()):
    """Runs `python3 script --bin BIN --inner INNER --tag TAG [extra]` in a fresh namespace
    `name`; returns the JSON object on the last line of its stdout, or None, said as
    "LABEL: inner run failed (status N)", if it failed."""
    argv = [sys.executable, script, "--bin", bin_path, "--inner", str(inner), "--tag", tag]
    done = in_namespace(name, argv + list(extra))
    r = result(done)
    if r is None:
        print(f"{label}: inner run failed (status {done.returncode})")
    return r


def result(done):
    """The JSON object on the last stdout line of an inner run, or None if it failed."""
    if done.returncode != 0 or not done.stdout.strip():
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def outer(path):
    """Start of a run from outside: the binary must exist; SIGTERM ends the run through its
    `finally` blocks (the namespaces are deleted)."""
    if not os.access(path, os.X_OK):
        sys.exit(f"no sidewatch binary at {path}")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
