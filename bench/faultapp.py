#!/usr/bin/env python3
"""A fault-cycling app for bench/soak.py: one plain HTTP port and one HTTPS port on 127.0.0.1 whose
behaviour the soak switches through every failure class sidewatch tells apart.

usage: faultapp.py --port P --tls-port Q --cert leaf.pem --key leaf.key --bad-cert bad.pem --bad-key bad.key

Prints `ready` once both ports listen, then reads commands on stdin, one a line, and answers `ok`
once the new behaviour is in effect (new connections get it; one already accepted keeps its own):

  app ok        200 "healthy"                     tls ok        TLS with the certificate the probe trusts, 200 "healthy"
  app refused   the listener is closed            tls badcert   TLS with a self-signed certificate nobody trusts
  app reset     reads the request, then RST       tls plain     answers the ClientHello with plain HTTP bytes
  app invalid   answers an SSH banner, not HTTP
  app 5xx       503
  app status    404
  app body      200 "starting" (no "healthy")
  app hang      reads the request, never answers

Exits when stdin closes, so it never outlives the soak that started it.
"""

import argparse
import select
import socket
import ssl
import struct
import sys
import threading
import time

OK_BODY = b"healthy\n"
APP_MODES = ("ok", "refused", "reset", "invalid", "5xx", "status", "body", "hang")
TLS_MODES = ("ok", "badcert", "plain")


def response(code, body):
    return b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
        code, len(body), body)


def read_request(conn):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk or len(data) > 65536:
            return False
        data += chunk
    return True


def answer_app(conn, mode):
    if not read_request(conn):
        return
    if mode == "ok":
        conn.sendall(response(200, OK_BODY))
    elif mode == "reset":
        # SO_LINGER 0: close() sends RST instead of FIN.
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    elif mode == "invalid":
        conn.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")
    elif mode == "5xx":
        conn.sendall(response(503, b"unavailable\n"))
    elif mode == "status":
        conn.sendall(response(404, b"not found\n"))
    elif mode == "body":
        conn.sendall(response(200, b"starting\n"))
    elif mode == "hang":
        # Until the prober gives up and closes: its timeout, not ours, ends the connection.
        conn.settimeout(60)
        while conn.recv(4096):
            pass


class Tls:
    def __init__(self, cert, key, bad_cert, bad_key):
        self.good = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.good.load_cert_chain(cert, key)
        self.bad = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.bad.load_cert_chain(bad_cert, bad_key)

    def answer(self, conn, mode):
        if mode == "plain":
            if conn.recv(4096):  # the ClientHello
                conn.sendall(response(200, OK_BODY))
            return
        ctx = self.good if mode == "ok" else self.bad
        s = ctx.wrap_socket(conn, server_side=True)  # raises when the client rejects the certificate
        try:
            if read_request(s):
                s.sendall(response(200, OK_BODY))
        finally:
            s.close()


class Port:
    """One listening port served by its own accept thread, in one mode at a time. The accept thread
    owns the listener (closing a socket another thread waits on is a race), so a mode change is
    applied there and acknowledged through `applied`."""

    def __init__(self, port, mode, answer):
        self.port, self.mode, self.answer = port, mode, answer
        self.sock = None
        self.generation, self.applied = 1, 0  # generation 1: listening in the first mode
        self.cond = threading.Condition()
        threading.Thread(target=self.accept_loop, daemon=True).start()

    def set(self, mode, timeout=10.0):
        with self.cond:
            self.mode = mode
            self.generation += 1
            want = self.generation
            if not self.cond.wait_for(lambda: self.applied >= want, timeout):
                raise RuntimeError(f"port {self.port}: mode {mode} not applied within {timeout}s")

    def wait_applied(self, timeout=10.0):
        with self.cond:
            if not self.cond.wait_for(lambda: self.applied >= self.generation, timeout):
                raise RuntimeError(f"port {self.port}: not listening within {timeout}s")

    def listen(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", self.port))
        except OSError:
            s.close()
            return None
        s.listen(128)
        return s

    def accept_loop(self):
        while True:
            with self.cond:
                mode, generation = self.mode, self.generation
            if mode == "refused" and self.sock is not None:
                self.sock.close()
                self.sock = None
            elif mode != "refused" and self.sock is None:
                self.sock = self.listen()
                if self.sock is None:
                    time.sleep(0.01)  # the port is briefly held elsewhere; try again
                    continue
            with self.cond:
                if self.applied < generation:
                    self.applied = generation
                    self.cond.notify_all()
            if self.sock is None:
                time.sleep(0.01)
                continue
            if not select.select([self.sock], [], [], 0.02)[0]:
                continue
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            threading.Thread(target=self.serve_one, args=(conn, mode), daemon=True).start()

    def serve_one(self, conn, mode):
        try:
            conn.settimeout(10)
            self.answer(conn, mode)
        except (OSError, ssl.SSLError):
            pass  # the prober hung up or rejected us: that is the point of most modes
        finally:
            conn.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--tls-port", type=int, required=True)
    for name in ("cert", "key", "bad-cert", "bad-key"):
        ap.add_argument(f"--{name}", required=True)
    args = ap.parse_args()
    tls = Tls(args.cert, args.key, args.bad_cert, args.bad_key)
    ports = {"app": Port(args.port, "ok", answer_app), "tls": Port(args.tls_port, "ok", tls.answer)}
    for p in ports.values():
        p.wait_applied()
    print("ready", flush=True)
    for line in sys.stdin:
        which, _, mode = line.strip().partition(" ")
        modes = APP_MODES if which == "app" else TLS_MODES if which == "tls" else ()
        if mode not in modes:
            print(f"error: unknown command {line.strip()!r}", flush=True)
            continue
        ports[which].set(mode)
        print("ok", flush=True)


if __name__ == "__main__":
    main()
