#!/usr/bin/env python3
"""The node agent's cost per node and per pod watched, and an OOM kill's way through it.

Lays out N pods' cgroups as the kubelet's cgroupfs driver does on cgroup v1
(/sys/fs/cgroup/memory/kubepods/burstable/pod<uid>/<container id>, 64 MiB limit on each container),
serves a minimal API on loopback that answers the agent's TokenReviews (token `pod-<i>` is bound to
pod `bench/p<i>`) and its GETs of those pods, and runs `sidewatch node` over them.

1. Cost: with 1, 50 and 200 streams open (one per pod, as each pod's sidecar holds one), the
   agent's CPU (all threads' schedstat) over a window, per second and per pod, its lines a second,
   and its memory (RSS, anonymous, PSS).
2. Kill -> sidecar: a sidecar (`sidewatch run`, memory source `node`) of pod 0 beside the
   agent; each trial puts a python3 child into pod 0's container cgroup that allocates past the
   limit, so the kernel kills it. Measured from the kill (the first 1 ms poll of memory.oom_control
   that shows it): the agent's line that counts it (a stream of the bench's own), and the sidecar's
   /readyz 503 naming oom_killed. The same trials with the sidecar reading the cgroup itself
   (`--cgroup`), in the same run, give the ratio.

Needs root and cgroup v1 at /sys/fs/cgroup/memory.

usage: BENCH_BIN=target/release/sidewatch python3 bench/node_agent.py [--pods 1,50,200]
           [--window 20] [--trials 20]
"""

import argparse
import json
import os
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import common
from cgroup import CG_ROOT, MIB, Cgroup, child_in, reasons, sidewatch_env

NODE = "bench-node"
LIMIT = 64 * MIB
ALLOC = "import time; time.sleep(0.05); x = b'x' * ({n}); time.sleep(5)"


class Pods:
    """The bench's pods: uid, container ID and cgroup of each."""

    def __init__(self):
        self.pods = []
        self.made = []
        for d in ("kubepods", "kubepods/burstable"):
            path = os.path.join(CG_ROOT, d)
            if not os.path.isdir(path):
                os.mkdir(path)
                self.made.append(path)

    def add(self):
        i = len(self.pods)
        uid, cid = str(uuid.uuid4()), uuid.uuid4().hex + uuid.uuid4().hex
        pod_dir = os.path.join(CG_ROOT, "kubepods/burstable", f"pod{uid}")
        os.mkdir(pod_dir)
        cg = Cgroup(LIMIT, name=os.path.relpath(os.path.join(pod_dir, cid), CG_ROOT))
        self.pods.append({"i": i, "uid": uid, "cid": cid, "dir": pod_dir, "cg": cg})
        return self.pods[-1]

    def remove(self):
        for p in self.pods:
            p["cg"].remove()
            os.rmdir(p["dir"])
        for path in reversed(self.made):
            os.rmdir(path)


def api(pods):
    """The API the agent asks: TokenReviews and GETs of the bench's pods."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *_):
            pass

        def send_json(self, code, obj):
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def pod(self, i):
            if not 0 <= i < len(pods.pods):
                return None
            p = pods.pods[i]
            return p, {"apiVersion": "v1", "kind": "Pod",
                       "metadata": {"name": f"p{i}", "namespace": "bench", "uid": p["uid"]},
                       "spec": {"nodeName": NODE, "containers": [{"name": "app", "image": "app"}]},
                       "status": {"phase": "Running", "containerStatuses": [
                           {"name": "app", "image": "app", "imageID": "", "ready": True,
                            "restartCount": 0, "containerID": f"containerd://{p['cid']}",
                            "state": {"running": {}}}]}}

        def do_GET(self):
            name = self.path.split("?")[0].rsplit("/", 1)[-1]
            found = self.pod(int(name[1:])) if name[1:].isdigit() else None
            if found is None:
                return self.send_json(404, {"kind": "Status", "code": 404})
            self.send_json(200, found[1])

        def do_POST(self):
            review = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)))
            token = review["spec"]["token"]
            found = self.pod(int(token[4:])) if token.startswith("pod-") and token[4:].isdigit() else None
            review["status"] = {"authenticated": False}
            if found is not None:
                p, pod = found
                review["status"] = {
                    "authenticated": True, "audiences": review["spec"].get("audiences", []),
                    "user": {"username": "system:serviceaccount:bench:default",
                             "extra": {"authentication.kubernetes.io/pod-name": [f"p{p['i']}"],
                                       "authentication.kubernetes.io/pod-uid": [p["uid"]]}}}
            self.send_json(201, review)

    os.makedirs(common.OUT, exist_ok=True)
    port = common.free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = common.write(os.path.join(common.OUT, "node-agent-kubeconfig"), f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "http://127.0.0.1:{port}"}}}}]
users: [{{name: agent, user: {{token: bench}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: agent}}}}]
current-context: fake
""")
    return server, kubeconfig


class Stream:
    """One sidecar's stream from the agent, read by a thread: each line's arrival time and body."""

    def __init__(self, port, i, interval="250ms"):
        self.lines, self.error = [], None
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.sendall((f"GET /v1/memory?namespace=bench&pod=p{i}&container=app&interval={interval} "
                           f"HTTP/1.1\r\nHost: agent\r\nAuthorization: Bearer pod-{i}\r\n\r\n").encode())
        threading.Thread(target=self.read, daemon=True).start()

    def read(self):
        buf = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    line = line.strip()
                    if line.startswith(b"{"):
                        self.lines.append((time.monotonic(), json.loads(line)))
        except OSError as e:
            self.error = e

    def kills(self):
        counts = [body["sample"]["oom"]["kills"] for _, body in self.lines
                  if "sample" in body and body["sample"].get("oom")]
        return counts[-1] if counts else None

    def close(self):
        self.sock.close()


def cost(port, pid, pods, n, window):
    streams = [Stream(port, p["i"]) for p in pods.pods[:n]]
    end = time.monotonic() + 30
    while any(not s.lines for s in streams):
        if time.monotonic() > end:
            raise RuntimeError(f"{sum(not s.lines for s in streams)} of {n} streams never got a line")
        time.sleep(0.05)
    time.sleep(2)  # past the first lines' burst
    lines0 = sum(len(s.lines) for s in streams)
    c0, t0 = common.run_seconds(pid), time.monotonic()
    time.sleep(window)
    c1, t1 = common.run_seconds(pid), time.monotonic()
    lines = sum(len(s.lines) for s in streams) - lines0
    mem = common.memory(pid)
    threads = len(os.listdir(f"/proc/{pid}/task"))
    for s in streams:
        s.close()
    cpu = (c1 - c0) / (t1 - t0)
    print(f"streams={n}: agent CPU {cpu * 1e3:.2f} ms/s ({cpu * 1e3 / n:.3f} ms/s per pod), "
          f"{lines / (t1 - t0):.0f} lines/s, {threads} threads; {common.fmt_memory(mem)}", flush=True)


def kill_trials(port, pods, trials, sidecar_admin, label):
    pod = pods.pods[0]
    cg = pod["cg"]
    watch = Stream(port, 0)
    end = time.monotonic() + 10
    while watch.kills() is None and time.monotonic() < end:
        time.sleep(0.01)
    line_lat, ready_lat = [], []
    for _ in range(trials):
        sidecar_admin.wait_ready(200, timeout=30)
        kills0 = cg.oom_kills()
        stream_kills0 = watch.kills()
        time.sleep(0.1 + (time.monotonic() % 0.25))  # kills at random phases of the ticks
        child = child_in(cg, ALLOC.format(n=2 * LIMIT))
        killed = None
        ready_at = None
        end = time.monotonic() + 10
        while time.monotonic() < end and (killed is None or ready_at is None):
            now = time.monotonic()
            if killed is None and cg.oom_kills() > kills0:
                killed = now
            if ready_at is None:
                status, body = sidecar_admin.get("/readyz")
                if status == 503 and "oom_killed" in reasons(body):
                    ready_at = time.monotonic()
            time.sleep(0.001)
        child.wait()
        line_at = next((t for t, body in watch.lines if "sample" in body and body["sample"].get("oom")
                        and body["sample"]["oom"]["kills"] > (stream_kills0 or 0)), None)
        if killed is None or ready_at is None:
            print(f"# {label}: a trial missed: killed={killed} ready={ready_at}")
            continue
        if line_at is not None:
            line_lat.append(max(0.0, line_at - killed))
        ready_lat.append(max(0.0, ready_at - killed))
    watch.close()
    return line_lat, ready_lat


def fmt(stats):
    return " ".join(f"{k}={stats[k]}" for k in ("median", "p90", "max")) + f" {stats['unit']} (n={stats['n']})"


def run(args):
    pods = Pods()
    server, kubeconfig = api(pods)
    try:
        for _ in range(max(args.pods)):
            pods.add()
        port = common.free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SIDEWATCH_")}
        env.update({"KUBECONFIG": kubeconfig, "NODE_NAME": NODE})
        agent = common.spawn([common.binary(), "node", "--listen", f"127.0.0.1:{port}",
                              "--cgroup-root", "/sys/fs/cgroup", "--node-name", NODE],
                             log="node-agent.log", env=env)
        common.wait_port(port, agent)
        for n in args.pods:
            cost(port, agent.pid, pods, n, args.window)

        upstream_port = common.free_port()
        common.upstream(upstream_port)
        results = {}
        token = common.write(os.path.join(common.OUT, "node-agent-token"), "pod-0")
        node = f'{{agent: "http://127.0.0.1:{port}", token_file: "{token}"}}'
        for label, extra in (("node", {"SOURCE": "node", "NODE": node}),
                             ("cgroup", {"CGROUP": pods.pods[0]["cg"].path})):
            print(f"# {label}: {args.trials} kills", flush=True)
            admin_port = common.free_port()
            senv = sidewatch_env(oom_cooldown="1s", unready_above="1.0", ready_below="0.99",
                                 predict_oom_within="null", **{k.lower(): v for k, v in extra.items()})
            senv.update({"POD_NAME": "p0", "POD_NAMESPACE": "bench",
                         "SIDEWATCH_KUBERNETES_ENABLED": "false",
                         "SIDEWATCH_KUBERNETES_APP_CONTAINER": "app"})
            sidecar = common.spawn([common.binary(), "run", "--target",
                                    f"http://127.0.0.1:{upstream_port}/healthz", "--listen",
                                    f"127.0.0.1:{admin_port}", "--interval", "200ms"],
                                   log=f"node-agent-sidecar-{label}.log", env=senv)
            common.wait_port(admin_port, sidecar)
            results[label] = kill_trials(port, pods, args.trials, common.Admin(admin_port), label)
            common.stop(sidecar)
        line, node = results["node"]
        _, direct = results["cgroup"]
        print(f"kill -> agent's line: {fmt(common.summary(line))}")
        print(f"kill -> sidecar /readyz 503 through the agent (source node): {fmt(common.summary(node))}")
        print(f"kill -> sidecar /readyz 503 reading the cgroup itself (source cgroup): {fmt(common.summary(direct))}")
        # The kill's moment is a 1 ms poll of the kernel's counter: figures this small compare
        # by difference, not by ratio.
        print(f"through the agent, later by (medians): {(common.percentile(node, 50) - common.percentile(direct, 50)) * 1e3:.2f} ms")
    finally:
        common.stop_all()
        server.shutdown()
        pods.remove()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pods", default="1,50,200")
    ap.add_argument("--window", type=float, default=20)
    ap.add_argument("--trials", type=int, default=20)
    args = ap.parse_args()
    args.pods = [int(x) for x in args.pods.split(",")]
    common.main(lambda: run(args))


if __name__ == "__main__":
    main()
