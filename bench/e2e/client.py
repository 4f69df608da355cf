#!/usr/bin/env python3
"""The traffic of the end-to-end benchmark: GET / on 127.0.0.1:PORT at a steady RATE a second,
each on a new connection (the load balancer pools its own to the backends), open loop: a slow
answer does not slow the sending. Records every request: when it was sent (CLOCK_MONOTONIC, the
clock the harness uses too), how long it took, and its status code or error.

usage: client.py PORT RATE OUT_FILE [TIMEOUT_S]
Runs until SIGTERM, then stops sending, waits for the requests in flight (at most TIMEOUT_S) and
writes OUT_FILE: one line per request, `sent_s duration_s outcome`, outcome being the status code
or one of refused, reset, eof, timeout, garbled, error.
"""

import asyncio
import signal
import sys
import time

REQUEST = b"GET / HTTP/1.1\r\nHost: e2e\r\nConnection: close\r\n\r\n"


async def one(port, timeout, records):
    sent = time.monotonic()
    outcome = "error"
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(REQUEST)
            line = await reader.readline()
            if not line:
                outcome = "eof"
            else:
                parts = line.split()
                if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
                    await reader.read()  # the body, to the close
                    outcome = parts[1].decode()
                else:
                    outcome = "garbled"
    except TimeoutError:
        outcome = "timeout"
    except ConnectionRefusedError:
        outcome = "refused"
    except (ConnectionResetError, BrokenPipeError):
        outcome = "reset"
    except OSError:
        outcome = "error"
    finally:
        if writer is not None:
            writer.close()
    records.append((sent, time.monotonic() - sent, outcome))


async def main():
    port, rate, out = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 5.0
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    records, tasks = [], set()
    t0, i = time.monotonic(), 0
    while not stop.is_set():
        due = t0 + i / rate
        now = time.monotonic()
        if due > now:
            try:
                await asyncio.wait_for(stop.wait(), due - now)
                break
            except TimeoutError:
                pass
        t = asyncio.create_task(one(port, timeout, records))
        tasks.add(t)
        t.add_done_callback(tasks.discard)
        i += 1
    if tasks:
        await asyncio.wait(tasks, timeout=timeout + 1)
    with open(out, "w") as f:
        for sent, took, outcome in sorted(records):
            f.write(f"{sent:.6f} {took:.6f} {outcome}\n")


if __name__ == "__main__":
    asyncio.run(main())
