//! Finding the app's memory cgroup: which hierarchy carries the memory controller (v1, v2 or
//! hybrid, from `/proc/self/mountinfo`), and which directory belongs to a process.

use std::path::{Path, PathBuf};

use procfs::process::{MountInfos, Process};
use procfs::ProcessCGroups;

use super::sample::Scope;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl std::fmt::Display for Version {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Version::V1 => "cgroup v1",
            Version::V2 => "cgroup v2",
        })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupDir {
    pub path: PathBuf,
    pub version: Version,
    /// v1 memory on a hybrid node: the `memory.pressure` of the process's cgroup in the v2
    /// hierarchy, which has PSI per cgroup even without controllers (v1 has none).
    pub psi: Option<PathBuf>,
    /// The directories above it up to the pod's, innermost first, whose limits also bind (a
    /// pod-level limit, with the container's `max`); empty when it is the pod's, or not in one.
    pub ancestors: Vec<(PathBuf, Scope)>,
}

impl CgroupDir {
    pub fn new(path: PathBuf, version: Version) -> CgroupDir {
        let ancestors = up_to_pod(&path);
        CgroupDir {
            path,
            version,
            psi: None,
            ancestors,
        }
    }
}

/// A Kubernetes pod's cgroup: `pod<uid>` (cgroupfs driver) or `kubepods-…-pod<uid>.slice`
/// (systemd driver), under a `kubepods` tree.
fn is_pod_dir(dir: &Path) -> bool {
    let Some(name) = dir.file_name().map(|n| n.to_string_lossy()) else {
        return false;
    };
    (name.starts_with("pod") || name.contains("-pod")) && dir.to_string_lossy().contains("kubepods")
}

/// The ancestors of `dir` up to the first pod cgroup, innermost first; none when no ancestor is
/// a pod's (the directory is the pod's itself, or outside Kubernetes' tree): above the pod,
/// the QoS classes' cgroups have no limits of the app's.
fn up_to_pod(dir: &Path) -> Vec<(PathBuf, Scope)> {
    let mut ancestors = Vec::new();
    for parent in dir.ancestors().skip(1) {
        if is_pod_dir(parent) {
            ancestors.push((parent.to_owned(), Scope::Pod));
            return ancestors;
        }
        ancestors.push((parent.to_owned(), Scope::Parent));
    }
    Vec::new()
}

/// Where the memory controller's hierarchy is mounted: `root` is the cgroup path the mount shows
/// (not `/` inside a cgroup namespace or for a bind mount of a sub-tree).
#[derive(Clone, Debug, PartialEq, Eq)]
struct Mount {
    root: String,
    mount_point: PathBuf,
    version: Version,
}

/// The memory hierarchy's mount. With v1 and v2 both mounted (hybrid), memory is on v1 when a v1
/// hierarchy has it, since a controller lives in one hierarchy only.
fn memory_mount(mounts: &MountInfos) -> Option<Mount> {
    let v1 = mounts
        .iter()
        .find(|m| m.fs_type == "cgroup" && m.super_options.contains_key("memory"));
    let v2 = mounts.iter().find(|m| m.fs_type == "cgroup2");
    let (m, version) = match (v1, v2) {
        (Some(m), _) => (m, Version::V1),
        (None, Some(m)) => (m, Version::V2),
        (None, None) => return None,
    };
    Some(Mount {
        root: m.root.clone(),
        mount_point: m.mount_point.clone(),
        version,
    })
}

/// The directory of a process's memory cgroup, given its `/proc/<pid>/cgroup` lines; `None` when
/// that cgroup lies outside the mounted part of the tree.
fn dir_in(mount: &Mount, cgroups: &ProcessCGroups) -> Option<CgroupDir> {
    let entry = cgroups.0.iter().find(|c| match mount.version {
        Version::V1 => c.controllers.iter().any(|n| n == "memory"),
        Version::V2 => c.hierarchy == 0,
    })?;
    let relative = if mount.root == "/" {
        entry.pathname.as_str()
    } else {
        entry.pathname.strip_prefix(&mount.root)?
    };
    let relative = relative.trim_start_matches('/');
    Some(CgroupDir::new(
        mount.mount_point.join(relative),
        mount.version,
    ))
}

/// The v2 hierarchy's `memory.pressure` of a process whose memory is on v1 (a hybrid node).
fn hybrid_psi(mounts: &MountInfos, cgroups: &ProcessCGroups) -> Option<PathBuf> {
    let m = mounts.iter().find(|m| m.fs_type == "cgroup2")?;
    let v2 = Mount {
        root: m.root.clone(),
        mount_point: m.mount_point.clone(),
        version: Version::V2,
    };
    let file = dir_in(&v2, cgroups)?.path.join("memory.pressure");
    file.exists().then_some(file)
}

/// The memory cgroup directory of `pid`, as this process's mounts show it.
pub fn of_process(pid: i32) -> Option<CgroupDir> {
    let mounts = Process::myself().ok()?.mountinfo().ok()?;
    let cgroups = Process::new(pid).ok()?.cgroups().ok()?;
    let mut dir = dir_in(&memory_mount(&mounts)?, &cgroups)?;
    if dir.version == Version::V1 {
        dir.psi = hybrid_psi(&mounts, &cgroups);
    }
    dir.path.is_dir().then_some(dir)
}

/// The memory cgroup of `pid` as its own container sees it, through its mount namespace
/// (`/proc/<pid>/root/sys/fs/cgroup/…`): the sidecar reads the app container's cgroup with no
/// hostPath, as long as it may enter the app's root (the same uid, no capability needed).
/// The app's own mounts say where its memory hierarchy is; a tree that is no cgroup file system
/// there (a test's fixture) is looked for at the two usual places.
pub fn in_root_of(pid: i32) -> Option<CgroupDir> {
    let root = PathBuf::from(format!("/proc/{pid}/root"));
    let inside = |path: &Path| root.join(path.strip_prefix("/").unwrap_or(path));
    let process = Process::new(pid).ok()?;
    if let (Ok(mounts), Ok(cgroups)) = (process.mountinfo(), process.cgroups()) {
        if let Some(dir) = memory_mount(&mounts).and_then(|m| dir_in(&m, &cgroups)) {
            let path = inside(&dir.path);
            if has_memory_files(&path, dir.version) {
                return Some(CgroupDir::new(path, dir.version));
            }
        }
    }
    [
        ("sys/fs/cgroup", Version::V2),
        ("sys/fs/cgroup/memory", Version::V1),
    ]
    .into_iter()
    .map(|(dir, version)| (root.join(dir), version))
    .find(|(path, version)| has_memory_files(path, *version))
    .map(|(path, version)| CgroupDir::new(path, version))
}

fn has_memory_files(dir: &Path, version: Version) -> bool {
    match version {
        Version::V2 => dir.join("memory.current").exists(),
        Version::V1 => dir.join("memory.usage_in_bytes").exists(),
    }
}

/// The pod's cgroup: the parent of sidewatch's own, when the path shows a Kubernetes pod cgroup
/// (`kubepods…/pod<uid>/<container>`). Elsewhere the parent is some unrelated slice.
pub fn of_own_pod() -> Option<CgroupDir> {
    let own = of_process(std::process::id() as i32)?;
    let parent = own.path.parent()?;
    is_pod_dir(parent).then(|| CgroupDir::new(parent.to_owned(), own.version))
}

/// The version of an explicit `--cgroup` directory, from the files it holds; `None` when it holds
/// neither version's.
pub fn explicit(path: &Path) -> Option<CgroupDir> {
    let version = if has_memory_files(path, Version::V2) {
        Version::V2
    } else if has_memory_files(path, Version::V1) {
        Version::V1
    } else {
        return None;
    };
    Some(CgroupDir::new(path.to_owned(), version))
}

/// True when `path` is on a real cgroup2 file system, where PSI triggers can be armed (a fixture
/// tree of regular files would make poll(2) spin).
pub fn on_cgroup2_fs(path: &Path) -> bool {
    const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
    // f_type is i64 on x86_64 and narrower on some other targets.
    #[allow(clippy::useless_conversion)]
    rustix::fs::statfs(path).is_ok_and(|s| i64::from(s.f_type) == CGROUP2_SUPER_MAGIC)
}

#[cfg(test)]
mod tests {
    use procfs::FromBufRead;

    use super::*;

    fn mounts(text: &str) -> MountInfos {
        MountInfos::from_buf_read(text.as_bytes()).unwrap()
    }

    fn cgroups(text: &str) -> ProcessCGroups {
        ProcessCGroups::from_buf_read(text.as_bytes()).unwrap()
    }

    // As read on this project's CI machines (cgroup v1).
    const V1_MOUNTS: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
";
    const V1_CGROUPS: &str = "\
9:name=systemd:/
4:memory:/process_api/d920872a47e2257892f0d2f1dc23b2de
1:cpu:/
0::/
";
    // A containerd node with cgroup v2 and a cgroup namespace: the container sees its own root.
    const V2_NS_MOUNTS: &str = "\
1200 1190 0:26 / /sys/fs/cgroup ro,nosuid,nodev,noexec,relatime - cgroup2 cgroup rw,nsdelegate,memory_recursiveprot
";
    // Hybrid systemd layout: v2 at unified without controllers, memory on v1.
    const HYBRID_MOUNTS: &str = "\
25 24 0:22 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:5 - cgroup2 cgroup2 rw,nsdelegate
30 24 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,memory
";
    // A read-only hostPath of the node's v2 tree mounted into a container.
    const V2_HOSTPATH_MOUNTS: &str = "\
1300 1190 0:26 / /host/cgroup ro,relatime - cgroup2 cgroup rw,nsdelegate
";

    #[test]
    fn v1_memory_hierarchy_is_found() {
        let m = memory_mount(&mounts(V1_MOUNTS)).unwrap();
        assert_eq!(m.version, Version::V1);
        let dir = dir_in(&m, &cgroups(V1_CGROUPS)).unwrap();
        assert_eq!(
            dir.path,
            Path::new("/sys/fs/cgroup/memory/process_api/d920872a47e2257892f0d2f1dc23b2de")
        );
    }

    #[test]
    fn on_a_hybrid_node_psi_comes_from_the_v2_cgroup_when_it_has_one() {
        // Nothing exists under /sys/fs/cgroup/unified/nowhere: no PSI file, no PSI.
        let cg = cgroups("4:memory:/a\n0::/nowhere\n");
        assert_eq!(hybrid_psi(&mounts(HYBRID_MOUNTS), &cg), None);
        assert_eq!(hybrid_psi(&mounts(V1_MOUNTS), &cg), None);
    }

    #[test]
    fn hybrid_uses_v1_for_memory() {
        let m = memory_mount(&mounts(HYBRID_MOUNTS)).unwrap();
        assert_eq!(
            (m.version, m.mount_point.as_path()),
            (Version::V1, Path::new("/sys/fs/cgroup/memory"))
        );
    }

    #[test]
    fn v2_inside_a_cgroup_namespace_sees_its_own_root() {
        let m = memory_mount(&mounts(V2_NS_MOUNTS)).unwrap();
        let dir = dir_in(&m, &cgroups("0::/\n")).unwrap();
        assert_eq!(
            (dir.path.as_path(), dir.version),
            (Path::new("/sys/fs/cgroup"), Version::V2)
        );
    }

    #[test]
    fn v2_host_tree_maps_the_app_path_under_the_mount() {
        let m = memory_mount(&mounts(V2_HOSTPATH_MOUNTS)).unwrap();
        let app = "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-abcd.scope\n";
        let dir = dir_in(&m, &cgroups(app)).unwrap();
        assert_eq!(
            dir.path,
            Path::new("/host/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-abcd.scope")
        );
    }

    #[test]
    fn the_ancestors_up_to_the_pod_are_those_whose_limits_bind() {
        let systemd = Path::new("/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-abcd.scope");
        assert_eq!(
            up_to_pod(systemd),
            [(systemd.parent().unwrap().to_owned(), Scope::Pod)]
        );
        let cgroupfs = Path::new("/host/cgroup/kubepods/burstable/pod1234/abcd/worker");
        assert_eq!(
            up_to_pod(cgroupfs),
            [
                (
                    PathBuf::from("/host/cgroup/kubepods/burstable/pod1234/abcd"),
                    Scope::Parent
                ),
                (
                    PathBuf::from("/host/cgroup/kubepods/burstable/pod1234"),
                    Scope::Pod
                ),
            ]
        );
        // The pod's own cgroup, and a cgroup outside Kubernetes' tree, have no pod above them.
        assert!(up_to_pod(Path::new("/sys/fs/cgroup/kubepods/pod1234")).is_empty());
        assert!(up_to_pod(Path::new("/sys/fs/cgroup/system.slice/app.service")).is_empty());
        assert!(up_to_pod(Path::new("/proc/7/root/sys/fs/cgroup")).is_empty());
    }

    #[test]
    fn a_cgroup_outside_a_bind_mounted_subtree_is_not_found() {
        let m = memory_mount(&mounts(
            "50 24 0:27 /kubepods/pod1 /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n",
        ))
        .unwrap();
        assert!(dir_in(&m, &cgroups("4:memory:/kubepods/pod2/c\n")).is_none());
        let dir = dir_in(&m, &cgroups("4:memory:/kubepods/pod1/c\n")).unwrap();
        assert_eq!(dir.path, Path::new("/sys/fs/cgroup/memory/c"));
    }

    #[test]
    fn no_memory_hierarchy_means_none() {
        assert!(memory_mount(&mounts(
            "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
        ))
        .is_none());
    }

    #[test]
    fn an_explicit_directory_without_memory_files_is_refused() {
        assert_eq!(explicit(Path::new("/proc")), None);
    }
}
