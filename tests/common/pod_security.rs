//! The Pod Security Standards (kubernetes.io/docs/concepts/security/pod-security-standards, the
//! `latest` version as of Kubernetes 1.33–1.37): the level a pod meets, `restricted`, `baseline`
//! or `privileged`, and which control keeps it from the next one. Written from the published
//! controls, field by field, for the tests to compare a pod before and after injection: what
//! the injector adds must not lower the level.
#![allow(dead_code)] // each test crate uses its own subset

use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
const SAFE_SYSCTLS: [&str; 10] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
const SELINUX_TYPES: [&str; 5] = [
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];
const RESTRICTED_VOLUMES: [&str; 9] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "persistentVolumeClaim",
    "projected",
    "secret",
    "image",
];

fn containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers", "ephemeralContainers"]
        .into_iter()
        .flat_map(move |k| spec[k].as_array().into_iter().flatten())
}

fn strings(v: &Value) -> impl Iterator<Item = &str> {
    v.as_array().into_iter().flatten().filter_map(Value::as_str)
}

/// What keeps `pod` out of the baseline level (empty: none).
pub fn baseline_violations(pod: &Value) -> Vec<String> {
    let spec = &pod["spec"];
    let mut out = Vec::new();
    let mut no = |bad: bool, what: String| {
        if bad {
            out.push(what)
        }
    };
    let psc = &spec["securityContext"];
    no(
        psc["windowsOptions"]["hostProcess"] == true,
        "hostProcess".into(),
    );
    for ns in ["hostNetwork", "hostPID", "hostIPC"] {
        no(spec[ns] == true, ns.into());
    }
    for v in spec["volumes"].as_array().into_iter().flatten() {
        no(
            !v["hostPath"].is_null(),
            format!("hostPath volume {}", v["name"]),
        );
    }
    let apparmor_ok =
        |p: &Value| p.is_null() || p["type"] == "RuntimeDefault" || p["type"] == "Localhost";
    let selinux_ok = |o: &Value| {
        o.is_null()
            || (SELINUX_TYPES.contains(&o["type"].as_str().unwrap_or(""))
                && o["user"].is_null()
                && o["role"].is_null())
    };
    no(
        !apparmor_ok(&psc["appArmorProfile"]),
        "pod appArmorProfile".into(),
    );
    no(
        !selinux_ok(&psc["seLinuxOptions"]),
        "pod seLinuxOptions".into(),
    );
    no(
        psc["seccompProfile"]["type"] == "Unconfined",
        "pod seccomp Unconfined".into(),
    );
    for s in psc["sysctls"].as_array().into_iter().flatten() {
        let name = s["name"].as_str().unwrap_or_default();
        no(!SAFE_SYSCTLS.contains(&name), format!("sysctl {name}"));
    }
    for (key, value) in pod["metadata"]["annotations"]
        .as_object()
        .into_iter()
        .flatten()
    {
        if key.starts_with("container.apparmor.security.beta.kubernetes.io/") {
            let v = value.as_str().unwrap_or_default();
            no(
                v != "runtime/default" && !v.starts_with("localhost/"),
                format!("annotation {key}: {v}"),
            );
        }
    }
    for c in containers(spec) {
        let name = &c["name"];
        let sc = &c["securityContext"];
        no(
            sc["windowsOptions"]["hostProcess"] == true,
            format!("{name} hostProcess"),
        );
        no(sc["privileged"] == true, format!("{name} privileged"));
        for cap in strings(&sc["capabilities"]["add"]) {
            no(
                !BASELINE_CAPABILITIES.contains(&cap),
                format!("{name} adds {cap}"),
            );
        }
        for p in c["ports"].as_array().into_iter().flatten() {
            no(
                p["hostPort"].as_i64().unwrap_or(0) != 0,
                format!("{name} hostPort"),
            );
        }
        no(
            !apparmor_ok(&sc["appArmorProfile"]),
            format!("{name} appArmorProfile"),
        );
        no(
            !selinux_ok(&sc["seLinuxOptions"]),
            format!("{name} seLinuxOptions"),
        );
        no(
            !(sc["procMount"].is_null() || sc["procMount"] == "Default"),
            format!("{name} procMount"),
        );
        no(
            sc["seccompProfile"]["type"] == "Unconfined",
            format!("{name} seccomp Unconfined"),
        );
    }
    out
}

/// What keeps `pod` out of the restricted level, the baseline's controls included.
pub fn restricted_violations(pod: &Value) -> Vec<String> {
    let spec = &pod["spec"];
    let mut out = baseline_violations(pod);
    let mut no = |bad: bool, what: String| {
        if bad {
            out.push(what)
        }
    };
    for v in spec["volumes"].as_array().into_iter().flatten() {
        let kinds: Vec<&String> = v
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
            .filter(|k| *k != "name")
            .collect();
        no(
            !kinds
                .iter()
                .all(|k| RESTRICTED_VOLUMES.contains(&k.as_str())),
            format!("volume {} of kind {kinds:?}", v["name"]),
        );
    }
    let psc = &spec["securityContext"];
    no(psc["runAsUser"] == 0, "pod runAsUser 0".into());
    let seccomp_ok = |p: &Value| p["type"] == "RuntimeDefault" || p["type"] == "Localhost";
    for c in containers(spec) {
        let name = &c["name"];
        let sc = &c["securityContext"];
        no(
            sc["allowPrivilegeEscalation"] != false,
            format!("{name} allowPrivilegeEscalation"),
        );
        let non_root = match sc["runAsNonRoot"].as_bool() {
            Some(v) => v,
            None => psc["runAsNonRoot"] == true,
        };
        no(!non_root, format!("{name} runAsNonRoot"));
        no(sc["runAsUser"] == 0, format!("{name} runAsUser 0"));
        let seccomp = if sc["seccompProfile"].is_null() {
            &psc["seccompProfile"]
        } else {
            &sc["seccompProfile"]
        };
        no(!seccomp_ok(seccomp), format!("{name} seccompProfile"));
        no(
            !strings(&sc["capabilities"]["drop"]).any(|d| d == "ALL"),
            format!("{name} does not drop ALL"),
        );
        for cap in strings(&sc["capabilities"]["add"]) {
            no(cap != "NET_BIND_SERVICE", format!("{name} adds {cap}"));
        }
    }
    out
}

/// The highest level `pod` meets.
pub fn level(pod: &Value) -> Level {
    if !baseline_violations(pod).is_empty() {
        Level::Privileged
    } else if !restricted_violations(pod).is_empty() {
        Level::Baseline
    } else {
        Level::Restricted
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn restricted_pod() -> Value {
        json!({"spec": {"securityContext": {"runAsNonRoot": true,
            "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{"name": "a", "securityContext": {"allowPrivilegeEscalation": false,
                "capabilities": {"drop": ["ALL"]}}}]}})
    }

    #[test]
    fn each_control_lowers_the_level() {
        assert_eq!(level(&restricted_pod()), Level::Restricted);
        let mut p = restricted_pod();
        p["spec"]["shareProcessNamespace"] = true.into();
        p["spec"]["volumes"] = json!([{"name": "t", "projected": {"sources": []}}]);
        assert_eq!(level(&p), Level::Restricted);
        let mut p = restricted_pod();
        p["spec"]["containers"][0]["securityContext"]["runAsUser"] = 0.into();
        assert_eq!(level(&p), Level::Baseline);
        let mut p = restricted_pod();
        p["spec"]["volumes"] = json!([{"name": "h", "hostPath": {"path": "/sys/fs/cgroup"}}]);
        assert_eq!(level(&p), Level::Privileged);
        let mut p = restricted_pod();
        p["spec"]["hostNetwork"] = true.into();
        assert_eq!(level(&p), Level::Privileged);
        let mut p = restricted_pod();
        p["spec"]["containers"][0]["securityContext"]["capabilities"]["add"] =
            json!(["SYS_PTRACE"]);
        assert_eq!(level(&p), Level::Privileged);
    }
}
