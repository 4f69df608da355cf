#!/usr/bin/env python3
"""The sample backend of the end-to-end benchmark: an HTTP/1.1 keep-alive app on 127.0.0.1:PORT
whose behaviour the harness switches at run time, one fault at a time.

usage: app.py PORT TAG MODE_FILE
TAG only makes the command line unique (sidewatch's `process.match` finds the app by it).
On SIGUSR1 the app reads MODE_FILE, one word:
  ok       200 "ok" to every path (the default)
  garbage  every request gets bytes that are not HTTP, then the connection closes
  503      503 to every path, /healthz included (an app that knows it is sick)
  hang     accepts, reads the request, never answers (a deadlock, a stuck event loop)
  leak:N   keeps answering 200 while a thread allocates N MiB a second until the kernel's
           OOM killer ends the process (its memory cgroup's limit)
  cold:S:C an app slow on its first requests (a JIT, caches filling): for the first S seconds
           of traffic (from its first request that is not /healthz) every such request takes
           500 ms at first, falling linearly to 200 ms at S, at most C at once (the warm-up
           is CPU-bound: more requests queue); /healthz stays fast, as health handlers do
The mode file is read at start too, so a pod can start cold.
On SIGTERM it exits at once, as most apps do: connections in flight are cut.
"""

import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MIB = 1 << 20
COLD_SLOW, COLD_FAST = 0.5, 0.2   # a cold request's time at the window's start, and at its end
mode = "ok"
hold = []
cold = None                       # (window_s, semaphore) while the app may be cold
cold_t0 = None                    # when its first real request came
cold_lock = threading.Lock()


TAG = f"ok {sys.argv[2]}\n".encode()  # tells the harness this is its app, not another on the port


def leak(rate_mib):
    """Touches every page, so the memory is charged at once, not on first write."""
    t0 = time.monotonic()
    while True:
        hold.append(bytearray(b"x" * MIB))
        time.sleep(max(0.0, t0 + len(hold) / rate_mib - time.monotonic()))


def reread(*_):
    global mode, cold
    with open(sys.argv[3]) as f:
        mode = f.read().strip() or "ok"
    if mode.startswith("leak:"):
        threading.Thread(target=leak, args=(float(mode[5:]),), daemon=True).start()
    elif mode.startswith("cold:"):
        _, window, at_once = mode.split(":")
        cold = (float(window), threading.Semaphore(int(at_once)))


def warm_up():
    """A cold app's extra time for one request: measured from the first real request, since
    an app warms with the traffic it serves, not with the time it has been idle."""
    global cold_t0
    if cold is None:
        return
    window, at_once = cold
    with cold_lock:
        if cold_t0 is None:
            cold_t0 = time.monotonic()
    if time.monotonic() - cold_t0 >= window:
        return
    with at_once:
        share = (time.monotonic() - cold_t0) / window
        if share < 1:
            time.sleep(COLD_SLOW - (COLD_SLOW - COLD_FAST) * share)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        m = mode
        if m == "garbage":
            self.wfile.write(b"\x00\x17garbage\xff\xfe not http at all\r\n\r\n")
            self.close_connection = True
            return
        if m == "hang":
            while True:
                time.sleep(3600)
        if self.path != "/healthz":
            warm_up()
        code, body = (503, b"unavailable\n") if m == "503" else (200, TAG)
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024


def main():
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGUSR1, reread)
    reread()
    srv = Server(("127.0.0.1", int(sys.argv[1])), Handler)
    srv.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()
