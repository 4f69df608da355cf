#!/usr/bin/env python3
"""sidewatch in real containers (podman, runc; the images of `scripts/image --testapp`):

- image size, uncompressed and gzip-compressed (what a registry stores);
- container start -> first /readyz 200: the app's container running, the sidecar's started, /readyz
  polled every 2 ms from the node's end of the pod's veth (--starts times, fresh pods);
- the sidecar's RSS, PSS and anonymous memory inside its container, after --idle seconds at one
  probe a second, app-root memory source on (smaps_rollup of its process);
- OOM kill -> /readyz 503 for a worker OOM-killed inside the app container, read with the
  restricted source (app-root, no hostPath): the kill's moment is when the app container's cgroup
  counts it (polled every 1 ms from the host), the detection when /readyz first says oom_killed.

Targets: image <= 10 MB compressed. Run as root after `scripts/image --testapp`.

usage: bench/containers.py [--starts 10] [--kills 10] [--idle 20]
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import time

import common

CONF = os.path.join(common.REPO, "tests", "fixtures", "containers.conf")
# The images' tag and the pods' name prefix can be changed so that a run does not touch what the
# container tests use at the same time (their :dev images).
TAG = os.environ.get("BENCH_IMAGE_TAG", "dev")
SIDEWATCH, APP = f"localhost/sidewatch:{TAG}", f"localhost/sidewatch-testapp:{TAG}"
PREFIX = os.environ.get("BENCH_POD_PREFIX", "swbench")
ENV = dict(os.environ, CONTAINERS_CONF=CONF)


def podman(*args, check=True):
    out = subprocess.run(["podman", *args], env=ENV, capture_output=True, text=True, timeout=120)
    if check and out.returncode != 0:
        raise RuntimeError(f"podman {args}: {out.stderr}")
    return out.stdout.strip()


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


class Pod:
    """A podman pod sharing net and PIDs, on a veth 10.233.N.0/24 from the host."""

    n = 0

    def __init__(self):
        Pod.n += 1
        self.name = f"{PREFIX}-{os.getpid()}-{Pod.n}"
        self.ip, self.host = f"10.233.{Pod.n}.2", f"10.233.{Pod.n}.1"
        podman("pod", "create", "--name", self.name, "--network", "none", "--share", "net,ipc,uts,pid")
        podman("pod", "start", self.name)
        infra = podman("pod", "inspect", self.name, "--format", "{{.InfraContainerID}}")
        pid = podman("inspect", infra, "--format", "{{.State.Pid}}")
        self.veth = f"swb{os.getpid() % 1000}h{Pod.n}"
        peer = f"swb{os.getpid() % 1000}p{Pod.n}"
        ip("netns", "attach", self.name, pid)
        ip("link", "add", self.veth, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", self.name)
        ip("addr", "add", f"{self.host}/24", "dev", self.veth)
        ip("link", "set", self.veth, "up")
        ip("-n", self.name, "addr", "add", f"{self.ip}/24", "dev", peer)
        ip("-n", self.name, "link", "set", peer, "up")

    def run(self, name, image, *args, user="1000:1000", memory=None, env=(), opts=()):
        argv = ["run", "--detach", "--pull", "never", "--pod", self.name, "--name", f"{self.name}-{name}",
                f"--user={user}", "--read-only", "--read-only-tmpfs=false", "--cap-drop=ALL",
                "--security-opt=no-new-privileges"]
        if memory:
            argv += [f"--memory={memory}", f"--memory-swap={memory}"]
        for k, v in env:
            argv.append(f"--env={k}={v}")
        return podman(*argv, *opts, image, *args)

    def pid(self, name):
        return int(podman("inspect", f"{self.name}-{name}", "--format", "{{.State.Pid}}"))

    def close(self):
        podman("pod", "rm", "--force", "--time", "0", self.name, check=False)
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def get(host, port, path, timeout=1.0):
    try:
        c = http.client.HTTPConnection(host, port, timeout=timeout)
        c.request("GET", path)
        r = c.getresponse()
        return r.status, r.read()
    except OSError:
        return 0, b""


def post(host, port, path):
    c = http.client.HTTPConnection(host, port, timeout=5)
    c.request("POST", path)
    return c.getresponse().read()


def sidecar(pod, interval="1s"):
    return pod.run("sidewatch", SIDEWATCH, "run", "--target", "http://127.0.0.1:8080/healthz",
                   "--interval", interval, env=[("SIDEWATCH_MEMORY_SOURCE", "app-root"),
                                                ("SIDEWATCH_LISTEN", "[::]:9102"),
                                                ("SIDEWATCH_KUBERNETES_ENABLED", "false")])


def image_size():
    raw = int(podman("image", "inspect", SIDEWATCH, "--format", "{{.Size}}"))
    save = subprocess.Popen(["podman", "save", SIDEWATCH], env=ENV, stdout=subprocess.PIPE)
    gz = subprocess.run(["gzip", "-9", "-c"], stdin=save.stdout, capture_output=True).stdout
    save.wait()
    return raw, len(gz)


def start_to_ready(n):
    times = []
    for _ in range(n):
        pod = Pod()
        try:
            pod.run("web", APP, memory="64m")
            while get(pod.ip, 8080, "/healthz")[0] != 200:
                time.sleep(0.005)
            t0 = time.monotonic()
            sidecar(pod, interval="100ms")
            while get(pod.ip, 9102, "/readyz", timeout=0.2)[0] != 200:
                time.sleep(0.002)
            times.append(time.monotonic() - t0)
        finally:
            pod.close()
    return times


def memory(idle):
    pod = Pod()
    try:
        pod.run("web", APP, memory="64m")
        sidecar(pod)
        while get(pod.ip, 9102, "/readyz")[0] != 200:
            time.sleep(0.01)
        time.sleep(idle)
        pid = pod.pid("sidewatch")
        out = {}
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("Rss", "Pss", "Anonymous"):
                    out[k] = int(v.split()[0]) / 1024
        with open(f"/proc/{pid}/status") as f:
            threads = next(int(l.split()[1]) for l in f if l.startswith("Threads:"))
        return out, threads
    finally:
        pod.close()


def oom_latency(n):
    out = []
    for _ in range(n):
        pod = Pod()
        try:
            pod.run("web", APP, memory="64m")
            sidecar(pod, interval="1s")
            while get(pod.ip, 9102, "/readyz")[0] != 200:
                time.sleep(0.01)
            web = pod.pid("web")
            with open(f"/proc/{web}/cgroup") as f:
                path = next(l.split(":", 2)[2].strip() for l in f if ":memory:" in l)
            control = f"/sys/fs/cgroup/memory{path}/memory.oom_control"
            # One 48 MiB step under a 64 MiB limit, then the next: killed at once, before any
            # trend can be predicted or 92% seen in a sample.
            post(pod.ip, 8081, "/mode/worker-leak/48")
            killed = None
            while killed is None:
                with open(control) as f:
                    if "oom_kill 1" in f.read():
                        killed = time.monotonic()
                        break
                time.sleep(0.001)
            while True:
                status, body = get(pod.ip, 9102, "/readyz", timeout=0.5)
                if status == 503 and b"oom_killed" in body:
                    out.append(time.monotonic() - killed)
                    break
                time.sleep(0.001)
        finally:
            pod.close()
    return out


def run():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=10)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--idle", type=float, default=20)
    args = ap.parse_args()
    raw, gz = image_size()
    print(f"image {SIDEWATCH}: {raw / 1e6:.2f} MB, {gz / 1e6:.2f} MB gzip-compressed  "
          f"target <=10 MB compressed  {'MET' if gz <= 10e6 else 'MISSED'}")
    starts = start_to_ready(args.starts)
    print(f"container start -> first /readyz 200: {common.summary(starts)}")
    mem, threads = memory(args.idle)
    print(f"sidecar in its container after {args.idle:.0f}s: RSS {mem['Rss']:.2f} MiB, PSS {mem['Pss']:.2f} MiB, "
          f"anonymous {mem['Anonymous']:.2f} MiB, {threads} threads")
    kills = oom_latency(args.kills)
    print(f"worker OOM kill -> /readyz 503 (app-root, v1, polled at 250 ms): {common.summary(kills)}")


if __name__ == "__main__":
    common.main(run)
