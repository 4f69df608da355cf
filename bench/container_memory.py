#!/usr/bin/env python3
"""The memory a node charges for the sidecar's container: its own memory cgroup, idle, with every
feature on that runs in a pod, in the real container the tests run.

The pod: the test app's image at a 64 MiB limit, and the sidecar from the sidewatch image with the
injector's settings (its 32 MiB limit, the app's uid, the env the webhook writes): one HTTP probe
at 1 s, app-root memory source, the app's process watched (`sidewatch.io/process-match`), overload
signal, the drain's traffic watch and token, the agent port, and Kubernetes on against
bench/fake_api.py on the host's end of the pod's veth, over TLS (the pod listed and watched, the
readiness gate patched).

Before each start the binary's pages are dropped from the page cache (posix_fadvise DONTNEED on
the image layer's file, its residency checked with mincore after): a file page is charged to the
cgroup that first faults it, so this is what the first such pod on a node is charged. After --idle
seconds: the sidecar container's cgroup v1 memory.usage_in_bytes less total_inactive_file (the
kubelet's working set), with its parts (rss, cache, mapped_file, active/inactive file, kernel),
and the process's smaps (the mappings with the most Rss). Target: <= 8 MiB.

Page cache that nothing maps stays on the inactive list, but a reclaim scan activates mapped pages
whose accessed bit is set, and fault-around sets it on every page it maps. So it also reports
what the process really touches idle: its accessed bits cleared (/proc/PID/clear_refs) once the
--idle seconds are over, the pages referenced --window seconds later.

--squeeze MIB then lowers the container's limit to MIB (memory.limit_in_bytes) for another
--window: the kernel reclaims what the process does not use, and what stays charged, the major
faults it took meanwhile (pages it needed back from disk) and /readyz (asked every 0.5 s, 1 s
timeout) tell whether it fits.

--binary PATH (repeatable) measures that binary instead, bind-mounted over the image's /sidewatch,
each in a fresh pod, in the same run: build variants side by side; or a private copy of the
image's binary, whose pages no other container on the node shares (an image built from the same
binary as another is the same image, and shares its page cache with that one's containers).

usage: bench/container_memory.py [--idle 30] [--window 10] [--squeeze MIB] [--runs 1] [--binary PATH ...]
"""

import argparse
import ctypes
import mmap
import os
import subprocess
import sys
import tempfile
import time

import common
import containers
from containers import Pod, get, podman

MIB = 1 << 20
STAT = ("total_rss", "total_cache", "total_mapped_file", "total_active_file",
        "total_inactive_file", "total_active_anon", "total_inactive_anon")


def image_binary():
    """The image layer's file behind the container's /sidewatch (overlay's lower layer)."""
    upper = podman("image", "inspect", containers.SIDEWATCH, "--format", "{{.GraphDriver.Data.UpperDir}}")
    return os.path.join(upper, "sidewatch")


def resident(path):
    """Bytes of `path` in the page cache (mincore over a fresh read-only mapping)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    size = os.path.getsize(path)
    pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
    buf = (ctypes.c_ubyte * pages)()
    with open(path, "rb") as f:
        addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, f.fileno(), 0)
        if addr in (None, ctypes.c_void_p(-1).value):
            raise OSError(ctypes.get_errno(), "mmap")
        try:
            if libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), buf) != 0:
                raise OSError(ctypes.get_errno(), "mincore")
        finally:
            libc.munmap(ctypes.c_void_p(addr), ctypes.c_size_t(size))
    return sum(b & 1 for b in buf) * mmap.PAGESIZE


def drop_cache(path):
    with open(path, "rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return resident(path)


def certificates(d, host):
    """A CA and a server certificate for `host` (an IP address) it signs, as PEM files in `d`."""
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    ca, ca_key, cert, key, csr = (os.path.join(d, n) for n in ("ca.pem", "ca.key", "cert.pem", "key.pem", "csr.pem"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-subj", "/CN=bench-ca", "-days", "1")
    openssl("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=fake-api")
    ext = os.path.join(d, "ext.cnf")
    with open(ext, "w") as f:
        f.write(f"subjectAltName=IP:{host}\nbasicConstraints=critical,CA:FALSE\n")
    openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
            "-days", "1", "-extfile", ext)
    return cert, key, ca


def fake_api(host):
    port = common.free_port()
    d = tempfile.mkdtemp(prefix="sidewatch-bench-kube-")
    kubeconfig = os.path.join(d, "kubeconfig")
    p = subprocess.Popen([sys.executable, os.path.join(common.BENCH, "fake_api.py"), str(port),
                          kubeconfig, host, *certificates(d, host)], stdout=subprocess.PIPE, text=True)
    common._procs.append(p)
    line = p.stdout.readline()
    if not line.startswith("listening"):
        raise RuntimeError(f"the fake API said {line!r}")
    os.chmod(os.path.dirname(kubeconfig), 0o755)
    os.chmod(kubeconfig, 0o644)
    return p, kubeconfig


def sidecar_env(pod):
    """What the webhook writes for a pod with every annotation on (src/webhook/inject/sidecar.rs),
    the names those of bench/fake_api.py's pod."""
    return [("POD_NAME", "web-1"), ("POD_NAMESPACE", "shop"), ("POD_IP", pod.ip),
            ("CONTAINER_NAME", "sidewatch"), ("KUBECONFIG", "/kubeconfig"),
            ("SIDEWATCH_TARGET", "http://127.0.0.1:8080/healthz"), ("SIDEWATCH_INTERVAL", "1s"),
            ("SIDEWATCH_LISTEN", "[::]:9102"), ("SIDEWATCH_KUBERNETES_APP_CONTAINER", "app"),
            ("SIDEWATCH_DRAIN_DELAY", "5s"), ("SIDEWATCH_DRAIN_MAX", "25s"),
            ("SIDEWATCH_DRAIN_GRACE_PERIOD", "30s"),
            ("SIDEWATCH_DRAIN_TOKEN_ENV", "SIDEWATCH_INJECTED_DRAIN_TOKEN"),
            ("SIDEWATCH_INJECTED_DRAIN_TOKEN", "bench-token"),
            ("SIDEWATCH_OVERLOAD_SIGNAL", "true"), ("SIDEWATCH_AGENT_LISTEN", "[::]:9466"),
            ("SIDEWATCH_MEMORY_SOURCE", "app-root"), ("SIDEWATCH_PROCESS_MATCH", "/testapp")]


def cgroup_of(pid):
    with open(f"/proc/{pid}/cgroup") as f:
        path = next(l.split(":", 2)[2].strip() for l in f if ":memory:" in l)
    return f"/sys/fs/cgroup/memory{path}"


def charge(pid):
    cg = cgroup_of(pid)
    read = lambda name: int(open(os.path.join(cg, name)).read())
    out = {"usage": read("memory.usage_in_bytes"), "kernel": read("memory.kmem.usage_in_bytes")}
    with open(os.path.join(cg, "memory.stat")) as f:
        for line in f:
            k, v = line.split()
            if k in STAT:
                out[k.removeprefix("total_")] = int(v)
    out["charge"] = out["usage"] - out["inactive_file"]
    return out


def smaps(pid, top=6):
    """The mappings with the most Rss (KiB), with their anonymous and referenced parts."""
    maps, cur = [], None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if not head[0].endswith(":") or len(head) > 3:
                cur = {"name": " ".join(head[5:]) or "[anon]", "perms": head[1], "range": head[0]}
                maps.append(cur)
            elif head[0] in ("Rss:", "Anonymous:", "Referenced:"):
                cur[head[0][:-1]] = int(head[1])
    maps.sort(key=lambda m: -m.get("Rss", 0))
    return maps[:top]


def referenced(pid):
    """KiB referenced since clear_refs: file-backed, anonymous."""
    file = anon = 0
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split()
            if not head[0].endswith(":") or len(head) > 3:
                is_file = len(head) > 5 and head[5].startswith("/")
            elif head[0] == "Referenced:":
                if is_file:
                    file += int(head[1])
                else:
                    anon += int(head[1])
    return file, anon


def major_faults(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[9])


def squeeze(pod, pid, mib, window):
    cg = cgroup_of(pid)
    faults = major_faults(pid)
    with open(os.path.join(cg, "memory.limit_in_bytes"), "w") as f:
        f.write(str(mib * MIB))
    # /readyz asked every 0.5 s meanwhile, as a kubelet would: how many answered 200 in 1 s.
    end, asked, ok, slowest = time.monotonic() + window, 0, 0, 0.0
    while time.monotonic() < end:
        t0 = time.monotonic()
        status = get(pod.ip, 9102, "/readyz")[0]
        took = time.monotonic() - t0
        asked, ok, slowest = asked + 1, ok + (status == 200), max(slowest, took)
        time.sleep(max(0.0, 0.5 - took))
    with open(os.path.join(cg, "memory.oom_control")) as f:
        kills = next(int(l.split()[1]) for l in f if l.startswith("oom_kill "))
    return {"charge": charge(pid), "faults": major_faults(pid) - faults, "kills": kills,
            "readyz": (ok, asked, slowest), "mib": mib}


def measure(idle, window, binary=None, squeeze_mib=None):
    pod, api = Pod(), None
    try:
        api, kubeconfig = fake_api(pod.host)
        pod.run("web", containers.APP, memory="64m")
        while get(pod.ip, 8080, "/healthz")[0] != 200:
            time.sleep(0.01)
        opts = ["--volume", f"{kubeconfig}:/kubeconfig:ro"]
        if binary:
            opts += ["--volume", f"{binary}:/sidewatch:ro"]
        left = drop_cache(binary or image_binary())
        pod.run("sidewatch", containers.SIDEWATCH, "run", memory="32m", env=sidecar_env(pod), opts=opts)
        deadline = time.monotonic() + 30
        while get(pod.ip, 9102, "/readyz")[0] != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(podman("logs", f"{pod.name}-sidewatch"))
            time.sleep(0.01)
        time.sleep(idle)
        pid = pod.pid("sidewatch")
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("1")
        time.sleep(window)
        features = [l.split("{")[1].split("}")[0] + "=" + l.split()[-1]
                    for l in get(pod.ip, 9102, "/metrics")[1].decode().splitlines()
                    if l.startswith("sidewatch_features{")]
        # Nothing failing in the background (the API server's TLS, the app's cgroup) unseen.
        logs = podman("logs", f"{pod.name}-sidewatch").splitlines()
        warnings = [l for l in logs if " WARN " in l or " ERROR " in l]
        return {"warnings": warnings, "left": left, "charge": charge(pid), "smaps": smaps(pid),
                "memory": common.memory(pid), "features": features, "touched": referenced(pid),
                "squeezed": squeeze(pod, pid, squeeze_mib, window) if squeeze_mib else None}
    finally:
        pod.close()
        if api:
            common.stop(api)


def report(label, size, window, m):
    c = m["charge"]
    mib = lambda k: f"{c[k] / MIB:.2f}"
    print(f"{label} ({size / 1e6:.2f} MB binary; {m['left'] / 1024:.0f} KiB of it cached at the start):")
    print(f"  charge (usage - inactive_file) {mib('charge')} MiB  target <= 8 MiB  "
          f"{'MET' if c['charge'] <= 8 * MIB else 'MISSED'}")
    print(f"  usage {mib('usage')} = rss {mib('rss')} + cache {mib('cache')} + kernel {mib('kernel')} MiB; "
          f"cache: mapped {mib('mapped_file')}, active {mib('active_file')}, inactive {mib('inactive_file')}; "
          f"anon active {mib('active_anon')}, inactive {mib('inactive_anon')}")
    print(f"  process: {common.fmt_memory(m['memory'])}")
    for w in m["warnings"]:
        print(f"  logged: {w}")
    print(f"  touched in {window:g}s idle: {m['touched'][0] / 1024:.2f} MiB file-backed, "
          f"{m['touched'][1] / 1024:.2f} MiB anonymous")
    if m["memory"]["Pss"] < 0.9 * m["memory"]["VmRSS"]:
        print("  WARNING: PSS well under RSS: another process maps this binary's pages, and which "
              "cgroup they are charged to, and on which list, depends on it")
    for s in m["smaps"]:
        print(f"  {s['Rss']:6d} KiB rss ({s.get('Anonymous', 0)} anonymous, {s.get('Referenced', 0)} "
              f"referenced) {s['perms']} {s['name']}")
    if q := m["squeezed"]:
        c = q["charge"]
        print(f"  at a {q['mib']} MiB limit for {window:g}s: usage {mib('usage')}, charge {mib('charge')} MiB "
              f"(rss {mib('rss')}, mapped {mib('mapped_file')}, kernel {mib('kernel')}); "
              f"{q['faults']} major faults, {q['kills']} OOM kills, /readyz 200 {q['readyz'][0]} of "
              f"{q['readyz'][1]} times (slowest {q['readyz'][2] * 1e3:.0f} ms)")


def run():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--idle", type=float, default=30)
    ap.add_argument("--window", type=float, default=10)
    ap.add_argument("--squeeze", type=int)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--binary", action="append", default=[])
    args = ap.parse_args()
    for i in range(args.runs):
        for binary in args.binary or [None]:
            m = measure(args.idle, args.window, binary, args.squeeze)
            if i == 0 and binary == (args.binary or [None])[0]:
                print(f"features: {' '.join(m['features'])}")
            path = binary or image_binary()
            report(f"{binary or containers.SIDEWATCH} after {args.idle:g}s idle", os.path.getsize(path), args.window, m)


if __name__ == "__main__":
    common.main(run)
