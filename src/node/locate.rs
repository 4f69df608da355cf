//! Which cgroup is a pod's, or its container's, in the node's tree mounted at `--cgroup-root`:
//! the kubelet's names for both cgroup drivers (cgroupfs and systemd) and the container
//! runtimes' names for a container's directory.

use std::path::{Path, PathBuf};

use crate::memory::cgroup::{CgroupDir, Version};

/// Where the memory hierarchy is under the agent's cgroup root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    pub memory: PathBuf,
    pub version: Version,
    /// Mounted read-only: the notifications that need a write (v1 `cgroup.event_control`, PSI
    /// triggers) cannot be armed, and the interval covers for them.
    pub read_only: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("{0} holds no cgroup tree: neither cgroup.controllers (v2) nor memory/ (v1) nor memory.usage_in_bytes (a v1 memory hierarchy)")]
    NoTree(PathBuf),
}

impl Root {
    /// v2 when the root has `cgroup.controllers`, v1 when it has the memory hierarchy under
    /// `memory/`, or is one itself (a DaemonSet that mounts `/sys/fs/cgroup/memory` only).
    pub fn detect(root: &Path) -> Result<Root, RootError> {
        let (memory, version) = if root.join("cgroup.controllers").exists() {
            (root.to_owned(), Version::V2)
        } else if root.join("memory/memory.usage_in_bytes").exists() {
            (root.join("memory"), Version::V1)
        } else if root.join("memory.usage_in_bytes").exists() {
            (root.to_owned(), Version::V1)
        } else {
            return Err(RootError::NoTree(root.to_owned()));
        };
        let read_only = rustix::fs::statvfs(&memory)
            .is_ok_and(|s| s.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY));
        Ok(Root {
            memory,
            version,
            read_only,
        })
    }

    /// The pod's directory, by its uid, under either driver and any QoS class.
    pub fn pod_dir(&self, uid: &str) -> Option<PathBuf> {
        if !plain(uid) {
            return None;
        }
        let underscored = uid.replace('-', "_");
        let candidates = [
            format!("kubepods/pod{uid}"),
            format!("kubepods/burstable/pod{uid}"),
            format!("kubepods/besteffort/pod{uid}"),
            format!("kubepods.slice/kubepods-pod{underscored}.slice"),
            format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{underscored}.slice"),
            format!("kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{underscored}.slice"),
        ];
        candidates
            .iter()
            .map(|c| self.memory.join(c))
            .find(|p| p.is_dir())
    }

    /// The container's directory inside its pod's, by the runtime's ID.
    pub fn container_dir(pod: &Path, id: &str) -> Option<PathBuf> {
        if !plain(id) {
            return None;
        }
        let candidates = [
            id.to_owned(),
            format!("cri-containerd-{id}.scope"),
            format!("crio-{id}.scope"),
            format!("crio-{id}"),
            format!("docker-{id}.scope"),
            format!("libpod-{id}.scope"),
            // podman with the cgroupfs driver names it without `.scope` (its conmon sits beside).
            format!("libpod-{id}"),
        ];
        candidates.iter().map(|c| pod.join(c)).find(|p| p.is_dir())
    }

    /// The cgroup to read: the container's when an ID is given, else the pod's. Its ancestors
    /// up to the pod's come with it, so a pod-level limit binds too.
    pub fn locate(&self, uid: &str, container_id: Option<&str>) -> Result<CgroupDir, String> {
        let pod = self
            .pod_dir(uid)
            .ok_or_else(|| format!("no cgroup of pod uid {uid} under {}", self.memory.display()))?;
        let dir = match container_id {
            None => pod,
            Some(id) => Self::container_dir(&pod, id)
                .ok_or_else(|| format!("no cgroup of container {id} under {}", pod.display()))?,
        };
        Ok(CgroupDir::new(dir, self.version))
    }
}

/// A uid or ID becomes a path component: letters, digits and dashes only.
fn plain(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::sample::Scope;

    fn tree(name: &str, dirs: &[&str], files: &[&str]) -> PathBuf {
        let root =
            std::env::temp_dir().join(format!("sidewatch-locate-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        for d in dirs {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for f in files {
            std::fs::write(root.join(f), "").unwrap();
        }
        root
    }

    #[test]
    fn systemd_names_under_v2_with_the_pod_as_ancestor() {
        let pod = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod12ab_34cd.slice";
        let app = format!("{pod}/cri-containerd-feed01.scope");
        let root = tree("v2", &[&app], &["cgroup.controllers"]);
        let r = Root::detect(&root).unwrap();
        assert_eq!(r.version, Version::V2);
        let dir = r.locate("12ab-34cd", Some("feed01")).unwrap();
        assert_eq!(dir.path, root.join(&app));
        assert_eq!(dir.ancestors, [(root.join(pod), Scope::Pod)]);
        assert_eq!(r.locate("12ab-34cd", None).unwrap().path, root.join(pod));
        assert!(r.locate("12ab-34cd", Some("other")).is_err());
        assert!(r.locate("../..", None).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn cgroupfs_names_under_v1() {
        let app = "memory/kubepods/besteffort/poduid-9/crio-abc.scope";
        let root = tree("v1", &[app], &["memory/memory.usage_in_bytes"]);
        let r = Root::detect(&root).unwrap();
        assert_eq!(
            (r.version, r.memory.clone()),
            (Version::V1, root.join("memory"))
        );
        assert_eq!(r.locate("uid-9", Some("abc")).unwrap().path, root.join(app));
        assert!(Root::detect(&root.join("memory/kubepods")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn podman_cgroupfs_names_beside_its_conmon() {
        let pod = "memory/kubepods/burstable/poduid-7";
        let app = format!("{pod}/libpod-feed02");
        let root = tree(
            "libpod",
            &[&app, &format!("{pod}/conmon")],
            &["memory/memory.usage_in_bytes"],
        );
        let r = Root::detect(&root).unwrap();
        assert_eq!(
            r.locate("uid-7", Some("feed02")).unwrap().path,
            root.join(&app)
        );
        assert!(r.locate("uid-7", Some("feed03")).is_err());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
