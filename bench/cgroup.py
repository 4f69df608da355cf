"""Shared helpers of the memory benchmarks (oom_latency.py, leak_lead.py, memory_overhead.py):
a cgroup v1 memory cgroup that is always removed, python3 children charged to it, sidewatch
watching it, and /readyz reasons. Needs root and cgroup v1 at /sys/fs/cgroup/memory.
"""

import json
import os
import signal
import subprocess
import sys
import time

import common

CG_ROOT = "/sys/fs/cgroup/memory"
MIB = 1 << 20


class Cgroup:
    """A child memory cgroup that is always removed: its processes are killed first."""

    def __init__(self, limit_bytes=None, name=None):
        self.path = os.path.join(CG_ROOT, name or f"swbench-{os.getpid()}")
        if os.path.isdir(self.path):
            self.remove()
        os.mkdir(self.path)
        if limit_bytes:
            self.write("memory.limit_in_bytes", str(limit_bytes))

    def write(self, name, value):
        with open(os.path.join(self.path, name), "w") as f:
            f.write(value)

    def read(self, name):
        with open(os.path.join(self.path, name)) as f:
            return f.read()

    def keyed(self, name, key):
        for line in self.read(name).splitlines():
            k, _, v = line.partition(" ")
            if k == key:
                return int(v)
        raise KeyError(f"{key} not in {name}")

    def oom_kills(self):
        return self.keyed("memory.oom_control", "oom_kill")

    def pids(self):
        return [int(x) for x in self.read("cgroup.procs").split()]

    def remove(self):
        for _ in range(100):
            pids = self.pids() if os.path.isdir(self.path) else []
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.05)  # busy until the killed tasks are gone
        print(f"WARNING: could not remove {self.path}", file=sys.stderr)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()


def child_in(cg, code, log=None):
    """A python3 child that joins `cg` before exec, so all its memory is charged there."""
    procs = os.path.join(cg.path, "cgroup.procs")

    def join():
        with open(procs, "w") as f:
            f.write(str(os.getpid()))

    out = open(os.path.join(common.OUT, log), "ab") if log else subprocess.DEVNULL
    return subprocess.Popen([sys.executable, "-c", code], preexec_fn=join,
                            stdin=subprocess.DEVNULL, stdout=out, stderr=out)


def sidewatch_env(**memory):
    """The bench's environment without any SIDEWATCH_* (sidewatch rejects unknown ones), plus
    SIDEWATCH_MEMORY_<KEY>=value for each keyword."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEWATCH_")}
    env.update({f"SIDEWATCH_MEMORY_{k.upper()}": str(v) for k, v in memory.items()})
    return env


def sidewatch(target_port, listen_port, cgroup, log, probe_interval="200ms", **memory):
    """sidewatch with one HTTP probe every `probe_interval` and `--cgroup cgroup` (a directory,
    or `none`); each keyword sets SIDEWATCH_MEMORY_<KEY> (interval=... is the memory interval)."""
    argv = [common.binary(), "run", "--target", f"http://127.0.0.1:{target_port}/healthz",
            "--listen", f"127.0.0.1:{listen_port}", "--interval", probe_interval,
            "--cgroup", cgroup]
    p = common.spawn(argv, log=log, env=sidewatch_env(**memory))
    common.wait_port(listen_port, p)
    return p


def reasons(body):
    """The `reason`s of a /readyz body ([] if it is not sidewatch's JSON)."""
    try:
        return [r["reason"] for r in json.loads(body).get("reasons", [])]
    except (ValueError, AttributeError):
        return []


def oom_eventfd(cg):
    """An eventfd the kernel signals when the cgroup goes OOM (before it kills anything)."""
    efd = os.eventfd(0)
    ctl = os.open(os.path.join(cg.path, "memory.oom_control"), os.O_RDONLY)
    cg.write("cgroup.event_control", f"{efd} {ctl}")
    return efd, ctl
