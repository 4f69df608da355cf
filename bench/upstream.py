#!/usr/bin/env python3
"""A tiny upstream for the benchmarks: answers 200 "ok" to any request on 127.0.0.1:PORT.

usage: upstream.py PORT [ARRIVALS_FILE]
With ARRIVALS_FILE, appends the CLOCK_MONOTONIC time (ns) at which each connection was accepted,
one per line: the arrival time of each probe, read by bench/lateness.py.
"""

import socket
import sys
import time

RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"


def main():
    port = int(sys.argv[1])
    log = open(sys.argv[2], "a", buffering=1) if len(sys.argv) > 2 else None
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(128)
    while True:
        conn, _ = srv.accept()
        at = time.monotonic_ns()
        conn.settimeout(1.0)
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            if data:
                conn.sendall(RESPONSE)
                if log:
                    log.write(f"{at}\n")
        except OSError:
            pass
        finally:
            conn.close()


if __name__ == "__main__":
    main()
