#!/usr/bin/env python3
"""Admission latency of `sidewatch webhook`, as the API server sees it: one kept-alive TLS
connection, a review sent and its answer read, one at a time, timed at the client.

Two loads: a pod of 50 containers (each with ports, probes, env, resources; the app container
first), sent --count times; and every pod of tests/fixtures/pods, --rounds times each. Reports
median, p90, p99 and max per load. Target: p99 <= 5 ms.

usage: bench/webhook_latency.py [--count 2000] [--rounds 40]
"""

import argparse
import glob
import http.client
import json
import os
import ssl
import subprocess
import tempfile
import time

import yaml

import common

FIXTURES = os.path.join(common.REPO, "tests", "fixtures", "pods")


def review(pod, uid="b6f7e3f2-0d1e-4c4e-9c55-000000000000"):
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "shop", "operation": "CREATE", "userInfo": {"username": "bench"},
                    "object": pod, "dryRun": False}}).encode()


def big_pod(n=50):
    containers = []
    for i in range(n):
        containers.append({
            "name": f"c{i}", "image": f"example.org/app-{i}:1.0",
            "ports": [{"name": f"http{i}", "containerPort": 8000 + i}, {"containerPort": 9000 + i}],
            "readinessProbe": {"httpGet": {"path": "/healthz?full=true", "port": f"http{i}",
                                           "httpHeaders": [{"name": "Host", "value": "app.example"}]}},
            "livenessProbe": {"tcpSocket": {"port": 8000 + i}},
            "env": [{"name": f"VAR{j}", "value": "x" * 32} for j in range(10)]
                   + [{"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
            "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "128Mi"}},
            "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]}},
            "volumeMounts": [{"name": f"v{i}", "mountPath": f"/data/{i}"}],
        })
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": "big-", "namespace": "shop",
                         "annotations": {"sidewatch.io/inject": "true", "sidewatch.io/readiness-gate": "true"}},
            "spec": {"containers": containers,
                     "volumes": [{"name": f"v{i}", "emptyDir": {}} for i in range(n)]}}


def webhook():
    d = tempfile.mkdtemp(prefix="sidewatch-bench-webhook-")
    cert, key = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    port = common.free_port()
    p = common.spawn([common.binary(), "webhook", "--listen", f"127.0.0.1:{port}",
                      "--tls-cert", cert, "--tls-key", key], log="webhook.log")
    common.wait_port(port, p)
    return p, port


def timed(conn, body):
    t0 = time.perf_counter()
    conn.request("POST", "/mutate", body, {"content-type": "application/json"})
    r = conn.getresponse()
    answer = r.read()
    dt = time.perf_counter() - t0
    if r.status != 200 or b'"allowed":true' not in answer:
        raise RuntimeError(f"webhook answered {r.status}: {answer[:300]!r}")
    return dt, answer


def run():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=40)
    args = ap.parse_args()
    hook, port = webhook()
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    big = review(big_pod())
    fixtures = []
    for path in sorted(glob.glob(os.path.join(FIXTURES, "*.yaml"))):
        with open(path) as f:
            fixtures.append(review(yaml.safe_load(f)["pod"]))
    for _ in range(200):  # warm up: TLS, allocator, page cache
        timed(conn, big)
    samples, answer = [], b""
    cpu0 = common.cpu_seconds(hook.pid)
    for _ in range(args.count):
        dt, answer = timed(conn, big)
        samples.append(dt)
    cpu = (common.cpu_seconds(hook.pid) - cpu0) / args.count
    injected = b'"patch"' in answer
    s = common.summary(samples)
    print(f"50-container pod ({len(big) // 1024} KiB review, injected: {injected}): {s}, "
          f"webhook CPU {cpu * 1e3:.2f} ms per admission  "
          f"target p99 <=5 ms  {'MET' if s['p99'] <= 5 else 'MISSED'}")
    samples = []
    cpu0 = common.cpu_seconds(hook.pid)
    for _ in range(args.rounds):
        for body in fixtures:
            samples.append(timed(conn, body)[0])
    cpu = (common.cpu_seconds(hook.pid) - cpu0) / len(samples)
    s = common.summary(samples)
    print(f"corpus ({len(fixtures)} pods x {args.rounds}): {s}, webhook CPU {cpu * 1e3:.2f} ms "
          f"per admission  target p99 <=5 ms  {'MET' if s['p99'] <= 5 else 'MISSED'}")


if __name__ == "__main__":
    common.main(run)
