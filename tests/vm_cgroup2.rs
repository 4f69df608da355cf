//! cgroup v2 on a real kernel: Debian's kernel booted under qemu's software emulation (TCG) with
//! `cgroup_no_v1=all` and busybox as init, running the release binary against cgroups shaped as
//! the kubelet makes them (both cgroup drivers, `memory.oom.group` as the kubelet sets it and as
//! `singleProcessOOMKill` leaves it, limits on the container, on the pod, on both, memory QoS's
//! `memory.high`, a private cgroup namespace as runc makes one), with real OOM kills.
//!
//! One test binary plays three parts, chosen by `VMTEST_ROLE`: on the host (unset) it builds an
//! initramfs of busybox, itself (with its libraries), the release binary and the kernel's
//! sock_diag modules, boots it and reads back what the guest reports on the serial console; in
//! the guest (`guest`) it runs the scenarios of `vm/guest.rs`, each checking its own outcome and
//! printing one `VMTEST {json}` line of figures; as `hog` it is the app that leaks.
//!
//! Needs qemu-system-x86_64, cpio, busybox (static), the kernel unpacked by
//! scripts/install-test-tools under /var/cache/sidewatch-vm, and the static release binary that
//! scripts/image builds.

mod common;
#[path = "common/fake_api.rs"]
mod fake_api;
#[path = "vm/guest.rs"]
mod guest;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{skip_or_fail, tempdir, which};

/// The test's own name: the guest and the hog run this test binary filtered to it.
pub const TEST: &str = "cgroup_v2_on_a_real_kernel";
/// Where scripts/install-test-tools unpacks Debian's kernel (`vmlinuz`, `modules/*.ko`).
const KERNEL_DIR: &str = "/var/cache/sidewatch-vm";
/// The whole VM run, boot to power-off; about 2 minutes on a 2-core machine.
const VM_WITHIN: Duration = Duration::from_secs(420);

#[test]
fn cgroup_v2_on_a_real_kernel() {
    match std::env::var("VMTEST_ROLE").as_deref() {
        Ok("guest") => guest::run(),
        Ok("hog") => guest::hog(),
        _ => host(),
    }
}

/// What the host needs: `None` after `skip_or_fail` when something is missing.
struct Parts {
    qemu: PathBuf,
    busybox: PathBuf,
    kernel: PathBuf,
    modules: Vec<PathBuf>,
    sidewatch: PathBuf,
}

fn parts() -> Option<Parts> {
    let (Some(qemu), Some(busybox)) = (which("qemu-system-x86_64"), which("busybox")) else {
        skip_or_fail("qemu-system-x86_64 and busybox (busybox-static) are needed to boot the VM");
        return None;
    };
    if which("cpio").is_none() {
        skip_or_fail("cpio is needed to pack the VM's initramfs");
        return None;
    }
    let kernel = Path::new(KERNEL_DIR).join("vmlinuz");
    if !kernel.is_file() {
        skip_or_fail(&format!(
            "no kernel at {}: scripts/install-test-tools unpacks Debian's there",
            kernel.display()
        ));
        return None;
    }
    let modules = ["inet_diag.ko", "tcp_diag.ko"]
        .iter()
        .map(|m| Path::new(KERNEL_DIR).join("modules").join(m))
        .filter(|m| m.is_file())
        .collect();
    let sidewatch = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/x86_64-unknown-linux-gnu/release/sidewatch");
    if !sidewatch.is_file() {
        skip_or_fail(&format!(
            "no static release binary at {}: scripts/image builds it",
            sidewatch.display()
        ));
        return None;
    }
    Some(Parts {
        qemu,
        busybox,
        kernel,
        modules,
        sidewatch,
    })
}

fn host() {
    let Some(parts) = parts() else { return };
    let dir = tempdir::Dir::new();
    let initramfs = pack(&parts, dir.path());
    // The same kernel, initramfs and leaks with the memory controller on v1: the reference.
    let v1 = boot(&parts, &initramfs, "vmtest.cgroup=v1", &guest::SCENARIOS_V1);
    let v2 = boot(&parts, &initramfs, "cgroup_no_v1=all", &guest::SCENARIOS);
    let lead = |reports: &[serde_json::Value]| reports[0]["lead_s"].as_f64().expect("lead_s");
    let (lead_v1, lead_v2) = (lead(&v1), lead(&v2));
    eprintln!("the same steady leak: not ready {lead_v1:.2} s before the kill on v1, {lead_v2:.2} s on v2");
    // The lead is the predictor's, the same on both: what may differ is where the samples fall,
    // at most one sampling interval (250 ms) either way.
    assert!(
        lead_v2 >= lead_v1 - 0.5,
        "the lead on v2 ({lead_v2:.2} s) is shorter than on v1 ({lead_v1:.2} s)"
    );
}

/// Boots the VM with `cmdline` added to the kernel's; returns the scenarios' reports, in the
/// order of `expected`, once each has reported and the guest exited 0.
fn boot(
    parts: &Parts,
    initramfs: &Path,
    cmdline: &str,
    expected: &[&str],
) -> Vec<serde_json::Value> {
    let started = Instant::now();
    let mut qemu = Command::new(&parts.qemu)
        .args(["-accel", "tcg", "-smp", "2", "-m", "1536", "-nographic"])
        .args(["-no-reboot", "-nic", "none", "-kernel"])
        .arg(&parts.kernel)
        .arg("-initrd")
        .arg(initramfs)
        // loglevel=1: the kernel's console printk inside the OOM path would delay every kill by
        // tens of milliseconds.
        .arg("-append")
        .arg(format!("console=ttyS0 loglevel=1 panic=-1 {cmdline}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu");
    let (tx, rx) = mpsc::channel();
    let stdout = qemu.stdout.take().expect("piped stdout");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut console = Vec::new();
    let mut exit = None;
    let deadline = started + VM_WITHIN;
    while exit.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_owned();
                if let Some(code) = line.strip_prefix("VMTEST exit ") {
                    exit = Some(code.trim().to_owned());
                }
                eprintln!("guest | {line}");
                console.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = qemu.kill();
                panic!("the VM ({cmdline}) did not finish within {VM_WITHIN:?}");
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    // It powers itself off after the exit line; a kill only spares waiting for the firmware.
    let _ = qemu.kill();
    let _ = qemu.wait();
    assert_eq!(
        exit.as_deref(),
        Some("0"),
        "the guest's scenarios ({cmdline}) failed (see its console above)"
    );
    let reports: Vec<serde_json::Value> = console
        .iter()
        .filter_map(|l| l.strip_prefix("VMTEST "))
        .filter_map(|j| serde_json::from_str(j).ok())
        .collect();
    let names: Vec<&str> = reports
        .iter()
        .filter_map(|r| r["scenario"].as_str())
        .collect();
    assert_eq!(names, expected, "every scenario reports, in order");
    eprintln!(
        "VM ({cmdline}): {:.1} s from start to power-off",
        started.elapsed().as_secs_f64()
    );
    reports
}

/// Packs the initramfs: busybox as init, this test binary and its libraries, the release
/// binary, the kernel's sock_diag modules (sidewatch's overload and traffic watch).
fn pack(parts: &Parts, dir: &Path) -> PathBuf {
    let root = dir.join("root");
    for sub in ["bin", "proc", "sys", "dev", "tmp", "modules", "etc"] {
        std::fs::create_dir_all(root.join(sub)).expect("initramfs dirs");
    }
    let copy = |from: &Path, to: &Path| {
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).expect("initramfs dir");
        }
        std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    };
    copy(&parts.busybox, &root.join("bin/busybox"));
    copy(&parts.sidewatch, &root.join("bin/sidewatch"));
    let me = std::env::current_exe().expect("own path");
    copy(&me, &root.join("vmtest"));
    for lib in libraries(&me) {
        copy(&lib, &root.join(lib.strip_prefix("/").expect("absolute")));
    }
    for module in &parts.modules {
        copy(
            module,
            &root.join("modules").join(module.file_name().expect("name")),
        );
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/tmp:/bin/sh\n").expect("passwd");
    // The tests' HTTP client loads the system's CA certificates when it is built.
    let bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
    if bundle.is_file() {
        copy(bundle, &root.join("etc/ssl/certs/ca-certificates.crt"));
    }
    let init = root.join("init");
    std::fs::write(&init, init_script()).expect("init");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let image = dir.join("initramfs.cpio");
    let status = Command::new("sh")
        .arg("-c")
        .arg("find . | cpio -o -H newc --quiet > \"$0\"")
        .arg(&image)
        .current_dir(&root)
        .status()
        .expect("run cpio");
    assert!(status.success(), "cpio failed: {status}");
    image
}

/// The shared libraries a dynamic binary loads, as `ldd` lists them.
fn libraries(binary: &Path) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// PID 1 of the guest: the file systems, cgroup2 mounted as systemd and the kubelet's nodes
/// mount it (or the v1 memory hierarchy, for the reference run), loopback, the modules; then the
/// scenarios, their exit code, and power off.
fn init_script() -> String {
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
if grep -q vmtest.cgroup=v1 /proc/cmdline; then
  mount -t tmpfs cgroup /sys/fs/cgroup
  mkdir /sys/fs/cgroup/memory
  mount -t cgroup -o memory memory /sys/fs/cgroup/memory
  export VMTEST_CGROUP=v1
else
  mount -t cgroup2 -o nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup
  export VMTEST_CGROUP=v2
fi
ip link set lo up
for m in /modules/*.ko; do insmod "$m"; done
export PATH=/bin HOME=/tmp TMPDIR=/tmp VMTEST_ROLE=guest VMTEST_BIN=/bin/sidewatch
/vmtest --exact {TEST} --nocapture --test-threads=1
echo "VMTEST exit $?"
poweroff -f
"#
    )
}
