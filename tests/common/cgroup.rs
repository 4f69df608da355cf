//! Real cgroup v1 memory cgroups for the tests (root and the v1 memory controller at
//! /sys/fs/cgroup/memory), with an optional twin in the cgroup2 hierarchy of a hybrid node for
//! per-cgroup PSI.
#![allow(dead_code)] // each test crate uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::skip_or_fail;

const V1_ROOT: &str = "/sys/fs/cgroup/memory";
const V2_ROOT: &str = "/sys/fs/cgroup/unified";

/// A child memory cgroup with a limit and no swap, removed (its processes killed first) even
/// when the test fails.
pub struct Cgroup {
    path: PathBuf,
    limit: u64,
    /// Its twin in the cgroup2 hierarchy, where the kernel keeps its processes' PSI.
    v2: Option<PathBuf>,
}

impl Cgroup {
    /// `None` (after `skip_or_fail`) without root or the v1 memory controller.
    pub fn create(name: &str, limit: u64) -> Option<Cgroup> {
        let root = PathBuf::from(V1_ROOT);
        if !root.join("memory.limit_in_bytes").exists() {
            skip_or_fail("no cgroup v1 memory controller at /sys/fs/cgroup/memory");
            return None;
        }
        let path = root.join(format!("{name}-{}", std::process::id()));
        if let Err(e) = std::fs::create_dir(&path) {
            skip_or_fail(&format!(
                "cannot create {} (root needed): {e}",
                path.display()
            ));
            return None;
        }
        let cgroup = Cgroup {
            path,
            limit,
            v2: None,
        };
        cgroup.limit();
        Some(cgroup)
    }

    /// Also a cgroup2 twin that the processes join, so that their PSI is their own; `None`
    /// (after `skip_or_fail`) where the hybrid hierarchy has no per-cgroup PSI.
    pub fn with_psi(mut self) -> Option<Cgroup> {
        let name = self.path.file_name().unwrap().to_owned();
        let v2 = Path::new(V2_ROOT).join(name);
        if let Err(e) = std::fs::create_dir(&v2) {
            skip_or_fail(&format!("cannot create {}: {e}", v2.display()));
            return None;
        }
        self.v2 = Some(v2.clone());
        if !v2.join("memory.pressure").exists() {
            skip_or_fail(&format!("{} has no memory.pressure", v2.display()));
            return None;
        }
        Some(self)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn limit(&self) {
        self.write("memory.limit_in_bytes", &self.limit.to_string());
        // No swap to escape to: the limit is the limit.
        let _ = std::fs::write(self.path.join("memory.swappiness"), "0");
    }

    /// Kills what runs in it and removes it, as a container runtime does at a restart.
    pub fn remove(&self) {
        self.kill_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Err(e) = std::fs::remove_dir(&self.path) {
            assert!(
                Instant::now() < deadline,
                "rmdir {}: {e}",
                self.path.display()
            );
            std::thread::sleep(Duration::from_millis(5)); // a poll, not a spin
        }
    }

    /// A new cgroup at the same path, with the same limit, as the runtime makes for the new
    /// container.
    pub fn make_again(&self) {
        std::fs::create_dir(&self.path).unwrap();
        self.limit();
    }

    fn kill_all(&self) {
        if let Ok(procs) = std::fs::read_to_string(self.path.join("cgroup.procs")) {
            for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }

    pub fn write(&self, file: &str, value: &str) {
        std::fs::write(self.path.join(file), value)
            .unwrap_or_else(|e| panic!("write {file} in {}: {e}", self.path.display()));
    }

    /// The cgroup and its cgroup2 twin, if any.
    pub fn dirs(&self) -> Vec<&Path> {
        std::iter::once(self.path.as_path())
            .chain(self.v2.as_deref())
            .collect()
    }

    /// Moves `pid` into the cgroup (and its cgroup2 twin).
    pub fn add(&self, pid: u32) {
        self.write("cgroup.procs", &pid.to_string());
        if let Some(v2) = &self.v2 {
            std::fs::write(v2.join("cgroup.procs"), pid.to_string())
                .unwrap_or_else(|e| panic!("join {}: {e}", v2.display()));
        }
    }
}

/// A real memory stall for a 64 MiB limit: writes a 56 MiB file from inside the cgroups (so its
/// page cache is theirs), holds `argv[2]` MiB, then reads the file over and over once a line
/// comes on stdin: the cache thrashes, each read refaulting pages evicted for the last. Holding
/// 52 MiB, PSI "some" reaches 30% within 20 s on a 2-core test machine; 40 MiB, about 12%.
pub const STALL: &str = r#"
import os, sys
path, held, marker = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(path, "wb") as f:
    for _ in range(56):
        f.write(os.urandom(1 << 20))
held = bytearray(held << 20)
for i in range(0, len(held), 4096):
    held[i] = 1
sys.stdin.readline()
while True:
    with open(path, "rb") as f:
        while f.read(1 << 20):
            pass
"#;

/// [`STALL`] running in cgroups; killed, and its file removed, on drop.
pub struct Stall {
    child: Child,
    file: PathBuf,
}

impl Stall {
    /// Runs [`STALL`] in `cgroups` from its first instruction (`sh` joins them, then becomes
    /// python), with `marker` on its command line and its file in target/ (on disk, not tmpfs:
    /// its pages must be page cache, to be evicted and refaulted).
    pub fn spawn(cgroups: &[&Path], held_mib: u64, marker: &str) -> Stall {
        let file = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("target")
            .join(format!("{marker}.stall"));
        let joins: Vec<String> = cgroups
            .iter()
            .map(|c| format!("echo $$ > {}/cgroup.procs && ", c.display()))
            .collect();
        let script = format!(
            "{}exec python3 -c \"$0\" \"$1\" \"$2\" \"$3\"",
            joins.concat()
        );
        let child = Command::new("sh")
            .args([
                "-c",
                &script,
                STALL,
                file.to_str().unwrap(),
                &held_mib.to_string(),
                marker,
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("spawn the stall");
        Stall { child, file }
    }

    /// Starts the thrashing.
    pub fn go(&mut self) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("the stall's stdin");
        stdin.write_all(b"go\n").expect("start the stall");
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.file);
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        self.kill_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        let dirs = [Some(self.path.clone()), self.v2.clone()];
        for dir in dirs.into_iter().flatten() {
            while dir.exists() && std::fs::remove_dir(&dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5)); // a poll, not a spin
            }
        }
    }
}
