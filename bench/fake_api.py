#!/usr/bin/env python3
"""A minimal Kubernetes API server for benchmarks, on loopback: one pod (`shop/web-1`, with the
readiness gate) that sidewatch lists and watches, its pods/status patches and its Events
accepted. Speaks the wire format (JSON, a chunked watch stream opened with a BOOKMARK); no
auth, no persistence. The tests use their own fake in tests/common/fake_api.rs.

usage: bench/fake_api.py PORT KUBECONFIG [HOST [CERT KEY CA]]   (prints "listening PORT" once it serves)
HOST (default 127.0.0.1): the address it serves on, e.g. a pod's veth peer on the host. CERT, KEY
and CA (PEM files): serve HTTPS, as a cluster's API server does, the kubeconfig trusting CA.
"""

import base64
import json
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

POD = {
    "apiVersion": "v1", "kind": "Pod",
    "metadata": {"name": "web-1", "namespace": "shop", "uid": "0b5e4a8e-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
                 "resourceVersion": "1"},
    "spec": {"readinessGates": [{"conditionType": "sidewatch.io/healthy"}],
             "initContainers": [{"name": "sidewatch", "image": "sidewatch", "restartPolicy": "Always"}],
             "containers": [{"name": "app", "image": "app"}]},
    "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
               "initContainerStatuses": [{"name": "sidewatch", "image": "s", "imageID": "",
                                          "ready": True, "restartCount": 0}],
               "containerStatuses": [{"name": "app", "image": "a", "imageID": "", "ready": True,
                                      "restartCount": 0, "state": {"running": {}}}]},
}
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def body(self):
        n = int(self.headers.get("content-length") or 0)
        return json.loads(self.rfile.read(n) or b"{}")

    def send_json(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if "watch=true" in self.path:
            return self.watch()
        if self.path.split("?")[0].endswith("/pods"):
            with LOCK:
                return self.send_json(200, {"kind": "PodList", "apiVersion": "v1",
                                            "metadata": {"resourceVersion": POD["metadata"]["resourceVersion"]},
                                            "items": [POD]})
        self.send_json(404, {"kind": "Status", "code": 404})

    def watch(self):
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        with LOCK:
            rv = POD["metadata"]["resourceVersion"]
        line = json.dumps({"type": "BOOKMARK", "object": {"kind": "Pod", "apiVersion": "v1",
                                                           "metadata": {"resourceVersion": rv}}}) + "\n"
        self.wfile.write(f"{len(line):x}\r\n{line}\r\n".encode())
        self.wfile.flush()
        # Held open, as a real watch is until its timeoutSeconds; nothing changes here.
        end = time.monotonic() + 290
        while time.monotonic() < end:
            time.sleep(1)
        self.wfile.write(b"0\r\n\r\n")

    def do_PATCH(self):
        patch = self.body()
        if self.path.endswith("/status"):
            with LOCK:
                for c in patch.get("status", {}).get("conditions", []):
                    conds = [x for x in POD["status"]["conditions"] if x["type"] != c["type"]]
                    POD["status"]["conditions"] = conds + [c]
                POD["metadata"]["resourceVersion"] = str(int(POD["metadata"]["resourceVersion"]) + 1)
                return self.send_json(200, POD)
        self.send_json(200, patch)

    def do_POST(self):
        event = self.body()
        event.setdefault("metadata", {}).setdefault("name", "event-1")
        self.send_json(201, event)


def main():
    port, kubeconfig = int(sys.argv[1]), sys.argv[2]
    host = sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1"
    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    scheme, trust = "http", ""
    if len(sys.argv) > 6:
        cert, key, ca = sys.argv[4:7]
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
        with open(ca, "rb") as f:
            scheme, trust = "https", f", certificate-authority-data: {base64.b64encode(f.read()).decode()}"
    with open(kubeconfig, "w") as f:
        f.write(f"""apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: "{scheme}://{host}:{port}"{trust}}}}}]
users: [{{name: sidewatch, user: {{token: bench}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: sidewatch, namespace: shop}}}}]
current-context: fake
""")
    print(f"listening {port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
