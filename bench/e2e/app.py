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
On SIGTERM it exits at once, as most apps do: connections in flight are cut.
"""

import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MIB = 1 << 20
mode = "ok"
hold = []


TAG = f"ok {sys.argv[2]}\n".encode()  # tells the harness this is its app, not another on the port


def leak(rate_mib):
    """Touches every page, so the memory is charged at once, not on first write."""
    t0 = time.monotonic()
    while True:
        hold.append(bytearray(b"x" * MIB))
        time.sleep(max(0.0, t0 + len(hold) / rate_mib - time.monotonic()))


def reread(*_):
    global mode
    with open(sys.argv[3]) as f:
        mode = f.read().strip() or "ok"
    if mode.startswith("leak:"):
        threading.Thread(target=leak, args=(float(mode[5:]),), daemon=True).start()


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
    srv = Server(("127.0.0.1", int(sys.argv[1])), Handler)
    srv.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()
