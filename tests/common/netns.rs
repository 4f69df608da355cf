//! Network namespaces of the test's own (root and iproute2 needed): a fresh namespace per test
#![allow(dead_code)] // each test crate uses its own subset
//! keeps the namespace's TCP counters to that test's traffic, and a veth pair between two of
//! them stands for the node calling into the pod.

use crate::common::{Within, COMMAND_WITHIN};
use std::process::Command;

use super::common::{skip_or_fail, which};

/// A network namespace with its loopback up, deleted on drop.
pub struct Netns(pub String);

impl Netns {
    pub fn create(tag: &str) -> Option<Netns> {
        if which("ip").is_none() {
            skip_or_fail("the ip command (iproute2) is needed for network namespaces");
            return None;
        }
        let name = format!("sw-{tag}-{}", std::process::id());
        if !ip(&["netns", "add", &name]) {
            skip_or_fail(&format!(
                "cannot create network namespace {name} (root needed)"
            ));
            return None;
        }
        let ns = Netns(name);
        assert!(
            ip(&["-n", &ns.0, "link", "set", "lo", "up"]),
            "lo up in {}",
            ns.0
        );
        Some(ns)
    }

    /// Runs `f` on a thread of its own inside the namespace, with a tokio runtime there, and
    /// waits for it (a panic inside fails the test).
    pub fn run<F, Fut>(&self, f: F)
    where
        F: FnOnce(String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        if let Err(panic) = in_netns(&self.0, f).join() {
            std::panic::resume_unwind(panic);
        }
    }
}

/// A thread inside namespace `name` running `f(name)` on a runtime of its own.
pub fn in_netns<F, Fut>(name: &str, f: F) -> std::thread::JoinHandle<()>
where
    F: FnOnce(String) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let name = name.to_owned();
    std::thread::spawn(move || {
        let file = std::fs::File::open(format!("/run/netns/{name}")).expect("open netns");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f(name));
    })
}

impl Drop for Netns {
    fn drop(&mut self) {
        ip(&["netns", "del", &self.0]);
    }
}

pub fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status_within(COMMAND_WITHIN)
        .is_ok_and(|s| s.success())
}

/// Joins two namespaces with a veth pair on 10.231.`subnet`.0/24: `pod` gets .1, `node` .2.
/// These addresses exist only inside the two namespaces this test created.
pub fn link(pod: &Netns, node: &Netns, subnet: u8) -> String {
    let n = std::process::id() % 10_000;
    let (a, b) = (format!("swa{n}x{subnet}"), format!("swb{n}x{subnet}"));
    let (pod_ip, node_ip) = (format!("10.231.{subnet}.1"), format!("10.231.{subnet}.2"));
    let (pod_cidr, node_cidr) = (format!("{pod_ip}/24"), format!("{node_ip}/24"));
    for args in [
        vec![
            "link",
            "add",
            a.as_str(),
            "type",
            "veth",
            "peer",
            "name",
            b.as_str(),
        ],
        vec!["link", "set", a.as_str(), "netns", pod.0.as_str()],
        vec!["link", "set", b.as_str(), "netns", node.0.as_str()],
        vec![
            "-n",
            pod.0.as_str(),
            "addr",
            "add",
            pod_cidr.as_str(),
            "dev",
            a.as_str(),
        ],
        vec![
            "-n",
            node.0.as_str(),
            "addr",
            "add",
            node_cidr.as_str(),
            "dev",
            b.as_str(),
        ],
        vec!["-n", pod.0.as_str(), "link", "set", a.as_str(), "up"],
        vec!["-n", node.0.as_str(), "link", "set", b.as_str(), "up"],
    ] {
        assert!(ip(&args), "ip {args:?}");
    }
    pod_ip
}
