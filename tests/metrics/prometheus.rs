//! A real Prometheus server (Debian's, run here on loopback with a config of its own) scrapes
//! real sidewatch processes through real faults, with the chart's rules loaded (every `for:`
//! shortened through the chart's `prometheusRule.for`): the alerts reach `firing` on its API,
//! a healthy pod raises none, and every panel of the chart's dashboard, queried over the run as
//! Grafana would, returns data, no NaN, and the labels its legend names.
//!
//! The pods, each a scrape target labelled as a PodMonitor labels it (namespace, pod, job):
//! a 503 app, a crash-looping app, a flapping one, one failing a check in eight, a leaking app
//! in a real 128 MiB cgroup (OOM predicted, near the limit, a worker OOM-killed), a drain that
//! traffic holds to drain.max, a sidecar that is down, an app sidewatch cannot find the memory
//! of, an app whose page cache thrashes under its limit in a real cgroup (PSI on the v2
//! hierarchy), an app whose accept queue is full, a readiness gate the API server refuses to
//! patch (and an OOMKilled restart), a watch the API server refuses; and the webhook, serving a
//! certificate that expires in a week, sent what is not an admission review.

#[allow(unused_imports)]
use crate::{common, fake_api, pki, prom, webhook};
use std::collections::BTreeMap;
use std::time::{Duration, Instant, SystemTime};

use common::cgroup::{Cgroup, Stall};
use common::{client, eventually, healthy, skip_or_fail, tempdir, which};
use common::{Behaviour, Hog, Sidewatch, Upstream};
use fake_api::FakeApi;
use nix::sys::signal::Signal;
use prom::{free_port, has, short_rules, Prometheus};
use serde_json::{json, Value};

/// Firing takes the scenario's time plus a few evaluations; the leak is the slowest (~40 s).
const WITHIN: Duration = Duration::from_secs(180);

/// Switches `up` between healthy for `good` and 503 for `bad`, for ever (a fault pattern, not a
/// wait: nothing is synchronised on it).
fn toggle(up: &Upstream, good: Duration, bad: Duration) -> tokio::task::JoinHandle<()> {
    let behaviour = up.handle();
    tokio::spawn(async move {
        loop {
            behaviour.send_replace(healthy());
            tokio::time::sleep(good).await;
            behaviour.send_replace(Behaviour::Status(503, "down"));
            tokio::time::sleep(bad).await;
        }
    })
}

fn probe_args(url: &str) -> Vec<String> {
    [
        "--target",
        url,
        "--interval",
        "100ms",
        "--failure-threshold",
        "1",
        "--cgroup",
        "none",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn start(args: &[String], env: &[(&str, &str)]) -> Sidewatch {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut all = vec![("SIDEWATCH_DRAIN_PASSIVE_OPENS", "false")];
    all.extend_from_slice(env);
    Sidewatch::start(&args, &all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_fire_in_a_real_prometheus_and_the_dashboard_has_data() {
    let Some(rules) = short_rules() else { return };
    if which("prometheus").is_none() {
        skip_or_fail("prometheus is not installed (scripts/install-test-tools)");
        return;
    }
    let Some(cgroup) = Cgroup::create("sidewatch-prom-leak", 128 << 20).and_then(Cgroup::with_psi)
    else {
        return;
    };
    let began = SystemTime::now();
    let mut targets: Vec<(String, &str)> = Vec::new();
    let mut keep: Vec<Sidewatch> = Vec::new();

    let ok = Upstream::start(healthy()).await;
    keep.push(start(&probe_args(&ok.url()), &[]));
    targets.push((keep[0].addr.to_string(), "healthy"));

    let failing = Upstream::start(Behaviour::Status(503, "down")).await;
    let sw = start(&probe_args(&failing.url()), &[]);
    targets.push((sw.addr.to_string(), "not-ready"));
    keep.push(sw);

    let crash = Upstream::start(healthy()).await;
    let _crashing = toggle(&crash, Duration::from_secs(1), Duration::from_secs(3));
    let sw = start(&probe_args(&crash.url()), &[]);
    targets.push((sw.addr.to_string(), "crash-loop"));
    keep.push(sw);

    let flap = Upstream::start(healthy()).await;
    let _flapping = toggle(&flap, Duration::from_secs(3), Duration::from_secs(1));
    let sw = start(&probe_args(&flap.url()), &[]);
    targets.push((sw.addr.to_string(), "flapping"));
    keep.push(sw);

    // One check in eight fails; three in a row would be needed to turn the pod not ready.
    let mut script = Vec::new();
    for _ in 0..5000 {
        script.extend(std::iter::repeat_n(healthy(), 7));
        script.push(Behaviour::Status(500, "oops"));
    }
    let sparse = Upstream::scripted(script).await;
    let mut args = probe_args(&sparse.url());
    args[5] = "3".into();
    let sw = start(&args, &[]);
    targets.push((sw.addr.to_string(), "sparse"));
    keep.push(sw);

    // The leak: an app process and a worker in a 128 MiB cgroup; the worker grows 1 MiB every
    // 300 ms to 118 MiB (92%) and holds; later a second worker pushes the cgroup over.
    let marker = format!("sidewatch-prom-app-{}", std::process::id());
    let Some(mut app) = Hog::spawn(1, 1000, 1, &marker) else {
        return;
    };
    cgroup.add(app.pid());
    app.go();
    let Some(mut worker) = Hog::spawn(1, 300, 118, "worker") else {
        return;
    };
    cgroup.add(worker.pid());
    let sw = start(
        &probe_args(&ok.url())[..6],
        &[
            ("SIDEWATCH_PROCESS_MATCH", &marker),
            ("SIDEWATCH_MEMORY_SOURCE", "cgroup"),
        ],
    );
    targets.push((sw.addr.to_string(), "leak"));
    keep.push(sw);

    // The stall: page cache thrashing under a 64 MiB limit, PSI from the cgroup's v2 twin.
    if which("python3").is_none() {
        return skip_or_fail("python3 is needed to make a memory stall");
    }
    let Some(stalled) = Cgroup::create("sidewatch-prom-stall", 64 << 20).and_then(Cgroup::with_psi)
    else {
        return;
    };
    let stall_marker = format!("sidewatch-prom-stall-{}", std::process::id());
    let mut stall = Stall::spawn(&stalled.dirs(), 52, &stall_marker);
    let sw = start(
        &probe_args(&ok.url())[..6],
        &[
            ("SIDEWATCH_PROCESS_MATCH", &stall_marker),
            ("SIDEWATCH_MEMORY_SOURCE", "cgroup"),
        ],
    );
    targets.push((sw.addr.to_string(), "stall"));
    keep.push(sw);

    // Traffic that never stops, on the port the drain watches.
    let busy = Upstream::start(healthy()).await;
    let port = busy.addr.port().to_string();
    let mut draining = start(
        &probe_args(&busy.url()),
        &[
            ("SIDEWATCH_DRAIN_PORT", &port),
            ("SIDEWATCH_DRAIN_DELAY", "1s"),
            ("SIDEWATCH_DRAIN_MAX", "2s"),
        ],
    );
    targets.push((draining.addr.to_string(), "drain-max"));
    let traffic = {
        let url = busy.url();
        let http = client();
        tokio::spawn(async move {
            loop {
                let _ = http.get(&url).send().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };

    // An app that stopped accepting: two connections fill its backlog of 1 and wait there.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let stuck = socket.local_addr().unwrap();
    let _listener = socket.listen(1).unwrap();
    let mut _queued = Vec::new();
    for _ in 0..2 {
        _queued.push(tokio::net::TcpStream::connect(stuck).await.unwrap());
    }
    let port = stuck.port().to_string();
    let sw = start(
        &probe_args(&ok.url()),
        &[
            ("SIDEWATCH_DRAIN_PORT", &port),
            ("SIDEWATCH_OVERLOAD_HOLD", "1s"),
        ],
    );
    targets.push((sw.addr.to_string(), "overloaded"));
    keep.push(sw);

    targets.push((free_port().to_string(), "down"));

    let sw = start(
        &probe_args(&ok.url())[..6],
        &[
            ("SIDEWATCH_PROCESS_MATCH", "no-such-app-anywhere"),
            ("SIDEWATCH_MEMORY_SOURCE", "cgroup"),
        ],
    );
    targets.push((sw.addr.to_string(), "blind"));
    keep.push(sw);

    let dir = tempdir::Dir::new();
    let gate_api = FakeApi::start(fake_api::pod(true)).await;
    gate_api.fail_patches_with(Some(403));
    let kubeconfig = gate_api.kubeconfig(dir.path());
    let sw = Sidewatch::start_sidecar(&ok.url(), "100ms", &kubeconfig, &[]);
    targets.push((sw.addr.to_string(), "gate"));
    keep.push(sw);

    let other = tempdir::Dir::new();
    let refusing_api = FakeApi::start(fake_api::pod(false)).await;
    refusing_api.fail_with(Some(403));
    let kubeconfig = refusing_api.kubeconfig(other.path());
    let sw = Sidewatch::start_sidecar(&ok.url(), "100ms", &kubeconfig, &[]);
    targets.push((sw.addr.to_string(), "watch-fail"));
    keep.push(sw);

    // The webhook, serving a certificate that expires in a week; later a client that is not the
    // API server sends it what is not a review.
    let pki = pki::Pki::new();
    let week = SystemTime::now() + Duration::from_secs(7 * 86400);
    let leaf = pki.leaf_expiring(week);
    let tls = tempdir::Dir::new();
    let (cert, key) = (tls.path().join("tls.crt"), tls.path().join("tls.key"));
    std::fs::write(&cert, &leaf.cert_pem).unwrap();
    std::fs::write(&key, &leaf.key_pem).unwrap();
    let hook = webhook::Webhook::launch(&pki, &cert, &key, &[]);
    targets.push((hook.metrics_addr.to_string(), "webhook"));

    let Some(prometheus) = Prometheus::start(&targets, &rules) else {
        return;
    };
    prometheus.wait_ready().await;
    worker.go();
    stall.go();

    // The gate pod's app is OOM-killed and restarted by the kubelet, once sidewatch watches.
    // (after a scrape saw its restart counter at 0: increase() has nothing before a first sample).
    gate_api.wait_watching().await;
    eventually("a scrape of the gate pod's restarts", WITHIN, || async {
        let q = r#"sidewatch_container_restarts_total{pod="gate",reason="oom_killed"}"#;
        (!prometheus.query(q).await.is_empty()).then_some(())
    })
    .await;
    gate_api.update_pod(|pod| {
        fake_api::app_restarted(pod, 1, 137, "OOMKilled", SystemTime::now());
    });

    // The drain starts once Prometheus holds its counters at 0.
    eventually("a scrape of the drain pod", WITHIN, || async {
        let q = r#"sidewatch_drains_total{pod="drain-max",outcome="max"}"#;
        (!prometheus.query(q).await.is_empty()).then_some(())
    })
    .await;
    draining.signal(Signal::SIGTERM);

    eventually("a scrape of the webhook's errors", WITHIN, || async {
        let q = r#"sidewatch_webhook_admissions_total{pod="webhook",outcome="error"}"#;
        (!prometheus.query(q).await.is_empty()).then_some(())
    })
    .await;
    let (status, _) = hook.post("/mutate", b"{\"kind\": \"Pod\"}".to_vec()).await;
    assert_eq!(status, 400);

    // Near the limit and predicted: then a second worker pushes the cgroup over.
    eventually("the leak's alerts", WITHIN, || async {
        let firing = prometheus.firing().await;
        (has(&firing, "SidewatchOOMPredicted", &[("pod", "leak")])
            && has(&firing, "SidewatchMemoryNearLimit", &[("pod", "leak")]))
        .then_some(())
    })
    .await;
    let Some(mut killer) = Hog::spawn(32, 10, 32, "killer") else {
        return;
    };
    cgroup.add(killer.pid());
    killer.go();

    let expected: [(&str, &[(&str, &str)]); 17] = [
        ("SidewatchPodNotReady", &[("pod", "not-ready")]),
        ("SidewatchPodMostlyOutOfRotation", &[("pod", "crash-loop")]),
        ("SidewatchFlapping", &[("pod", "flapping")]),
        (
            "SidewatchProbeFailingBelowThreshold",
            &[("pod", "sparse"), ("probe", "app")],
        ),
        ("SidewatchOOMPredicted", &[("pod", "leak")]),
        ("SidewatchMemoryNearLimit", &[("pod", "leak")]),
        ("SidewatchMemoryPressure", &[("pod", "stall")]),
        ("SidewatchOOMKills", &[("pod", "leak")]),
        ("SidewatchOOMKills", &[("pod", "gate")]),
        ("SidewatchDrainEndedAtMax", &[("namespace", "shop")]),
        ("SidewatchSidecarDown", &[("pod", "down")]),
        ("SidewatchAppOverloaded", &[("pod", "overloaded")]),
        ("SidewatchMemorySignalsBlind", &[("pod", "blind")]),
        ("SidewatchReadinessGateNotSet", &[("pod", "gate")]),
        (
            "SidewatchKubernetesAPIFailing",
            &[("pod", "watch-fail"), ("op", "watch")],
        ),
        ("SidewatchWebhookCertificateExpiring", &[("pod", "webhook")]),
        ("SidewatchWebhookAdmissionErrors", &[("pod", "webhook")]),
    ];
    // An alert counts once it fired: the leak's memory alerts end with the kill, as they should.
    let started = Instant::now();
    let seen = std::sync::Mutex::new(vec![false; expected.len()]);
    let firing = eventually("every expected alert firing", WITHIN, || async {
        let firing = prometheus.firing().await;
        let mut seen = seen.lock().unwrap();
        for (i, (name, labels)) in expected.iter().enumerate() {
            seen[i] |= has(&firing, name, labels);
        }
        let missing: Vec<_> = expected
            .iter()
            .zip(seen.iter())
            .filter(|(_, s)| !**s)
            .collect();
        if !missing.is_empty() && started.elapsed() > WITHIN - Duration::from_secs(2) {
            eprintln!("still missing: {missing:?}\nfiring: {firing:#?}");
        }
        missing.is_empty().then_some(firing)
    })
    .await;
    assert!(draining.wait_exit(WITHIN).await.success());
    drop(traffic);
    drop(stall);

    // The healthy pod raises nothing; the summary names the reason, through the rule's query.
    let healthy_alerts: Vec<_> = firing
        .iter()
        .filter(|a| a["labels"]["pod"] == "healthy")
        .collect();
    assert!(healthy_alerts.is_empty(), "{healthy_alerts:#?}");
    let not_ready = firing
        .iter()
        .find(|a| {
            a["labels"]["alertname"] == "SidewatchPodNotReady" && a["labels"]["pod"] == "not-ready"
        })
        .unwrap();
    assert_eq!(
        not_ready["annotations"]["summary"],
        "sidewatch keeps shop/not-ready out of rotation: http_5xx"
    );
    for alert in &firing {
        let url = alert["annotations"]["runbook_url"].as_str().unwrap_or("");
        assert!(
            url.starts_with("https://sidewatch.io/docs/runbooks#sidewatch"),
            "{alert:#}"
        );
        assert!(alert["labels"]["severity"].is_string(), "{alert:#}");
    }

    check_dashboard(&prometheus, began).await;
    drop(keep);
}

/// Every panel target of the chart's dashboard over the run: data, no NaN or infinity, and
/// every label its legend names on every series.
async fn check_dashboard(prometheus: &Prometheus, since: SystemTime) {
    let dashboard: Value = serde_json::from_str(include_str!(
        "../../charts/sidewatch/dashboards/sidewatch.json"
    ))
    .unwrap();
    let namespaces = prometheus
        .get(
            "/api/v1/label/namespace/values",
            &[("match[]", "sidewatch_build_info".into())],
        )
        .await
        .unwrap();
    assert_eq!(namespaces, json!(["shop"]));
    let mut problems = BTreeMap::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$namespace", ".*")
                .replace("$job", "sidewatch");
            let legend = target["legendFormat"].as_str().unwrap();
            let labels: Vec<&str> = legend
                .split("{{")
                .skip(1)
                .filter_map(|s| s.split("}}").next())
                .collect();
            let result = prometheus.query_range(&expr, since).await;
            let series = result["result"].as_array().unwrap();
            let key = format!("{} / {}", panel["title"].as_str().unwrap(), legend);
            if series.is_empty() {
                problems.insert(key, format!("no data: {expr}"));
                continue;
            }
            for s in series {
                if let Some(l) = labels.iter().find(|l| s["metric"][**l].is_null()) {
                    problems.insert(
                        key.clone(),
                        format!("a series without {l}: {}", s["metric"]),
                    );
                }
                let bad = s["values"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter_map(|v| v[1].as_str())
                    .find(|v| !v.parse::<f64>().is_ok_and(f64::is_finite));
                if let Some(v) = bad {
                    problems.insert(key.clone(), format!("value {v} in {}", s["metric"]));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
