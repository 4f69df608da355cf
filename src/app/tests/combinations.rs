//! Every combination of inputs on and off registers, at zero, every reason the inputs that run
//! can report, and no other; and says which features run. What "can report" means is written
//! here apart from the declarations (`emitters`, an exhaustive match), so a reason added to an
//! input without its declaration, or to the vocabulary without an emitter, fails here.

use std::collections::BTreeSet;
use std::time::SystemTime;

use crate::app::inputs;
use crate::engine::Engine;
use crate::kubernetes::Identity;
use crate::memory::Plan;
use crate::metrics::{Feature, Registry};
use crate::probe::ProbeMetrics;
use crate::reason::Reason;

/// What can be turned on, one bit each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Knob {
    /// An HTTP, a gRPC and a TCP probe.
    Probes,
    Memory,
    Process,
    /// `overload.signal` on an app port of its own (`drain.port`).
    Overload,
    Kubernetes,
}

const KNOBS: [Knob; 5] = [
    Knob::Probes,
    Knob::Memory,
    Knob::Process,
    Knob::Overload,
    Knob::Kubernetes,
];

/// Who reports a reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Emitter {
    Http,
    Grpc,
    Tcp,
    Memory,
    Process,
    Overload,
    /// The pod watch.
    Kube,
    /// The engine itself: at start-up and in a drain, whatever runs.
    Engine,
}

fn emitters(reason: Reason) -> &'static [Emitter] {
    use Emitter::*;
    match reason {
        Reason::Refused | Reason::Timeout | Reason::Reset | Reason::Dns => &[Http, Grpc, Tcp],
        Reason::InvalidResponse | Reason::UnexpectedStatus | Reason::Tls => &[Http, Grpc],
        Reason::Http5xx | Reason::BodyMismatch => &[Http],
        Reason::NotServing | Reason::UnknownService => &[Grpc],
        Reason::MemoryHigh | Reason::MemoryPressure | Reason::OomPredicted => &[Memory],
        // The cgroup's OOM events, and the kubelet's OOMKilled for the app container.
        Reason::OomKilled => &[Memory, Kube],
        Reason::ProcessExited => &[Process],
        Reason::Overloaded => &[Overload],
        Reason::ContainerRestarted | Reason::Terminating => &[Kube],
        Reason::Starting | Reason::Draining => &[Engine],
    }
}

fn runs(emitter: Emitter, on: &[Knob]) -> bool {
    match emitter {
        Emitter::Http | Emitter::Grpc | Emitter::Tcp => on.contains(&Knob::Probes),
        Emitter::Memory => on.contains(&Knob::Memory),
        Emitter::Process => on.contains(&Knob::Process),
        Emitter::Overload => on.contains(&Knob::Overload),
        Emitter::Kube => on.contains(&Knob::Kubernetes),
        Emitter::Engine => true,
    }
}

fn feature_on(feature: Feature, on: &[Knob]) -> bool {
    match feature {
        Feature::Probes => on.contains(&Knob::Probes),
        Feature::Memory => on.contains(&Knob::Memory),
        Feature::Process => on.contains(&Knob::Process),
        Feature::Kubernetes => on.contains(&Knob::Kubernetes),
        // The drain's and an output's, not an input's: not started here.
        Feature::DrainTraffic | Feature::Agent => false,
        // The accept queue is watched wherever there is an app port: a critical probe's.
        Feature::Overload => on.contains(&Knob::Overload) || on.contains(&Knob::Probes),
    }
}

fn config(on: &[Knob]) -> crate::config::Config {
    let mut yaml = String::new();
    if on.contains(&Knob::Probes) {
        yaml.push_str(
            "probes:\n\
             - {name: web, http: {url: 'http://127.0.0.1:8080/'}}\n\
             - {name: rpc, grpc: {address: '127.0.0.1:8081'}}\n\
             - {name: conn, tcp: {address: '127.0.0.1:8082'}}\n",
        );
    }
    if on.contains(&Knob::Process) {
        yaml.push_str("process: {match: 'app'}\n");
    }
    if on.contains(&Knob::Overload) {
        yaml.push_str("overload: {signal: true}\ndrain: {port: 8080}\n");
    }
    crate::config::parse_str(&yaml, std::path::Path::new("t.yaml")).unwrap()
}

/// A pod's identity with a client that is never used: declaring does not connect.
fn identity() -> Identity {
    let config = kube::Config::new("http://127.0.0.1:9".parse().unwrap());
    Identity {
        client: kube::Client::try_from(config).unwrap(),
        namespace: "default".into(),
        pod: "app-0".into(),
        container: "sidewatch".into(),
    }
}

/// The label values of `metric`'s series with `label`, and their values.
fn series(text: &str, metric: &str, label: &str) -> BTreeSet<(String, String)> {
    let prefix = format!("{metric}{{{label}=\"");
    text.lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(v, n)| (v.to_owned(), n.to_owned()))
        .collect()
}

#[tokio::test]
async fn every_reason_an_input_can_report_is_a_series_before_it_happens() {
    let combinations = 1 << KNOBS.len();
    for bits in 0..combinations {
        let on: Vec<Knob> = (0..KNOBS.len())
            .filter(|i| bits & (1 << i) != 0)
            .map(|i| KNOBS[i])
            .collect();
        let config = config(&on);
        let plan = on.contains(&Knob::Memory).then_some(Plan::Process {
            pattern: None,
            cgroup: true,
            app_root: false,
            proc: false,
        });
        let identity = on.contains(&Knob::Kubernetes).then(identity);
        let (parts, _) = inputs::declare(&config, plan, identity).unwrap();
        let registry = Registry::new();
        let mut engine = Engine::new();
        let metrics = inputs::register(&parts, &registry, &mut engine, SystemTime::now());
        metrics.verdict(engine.verdict());
        ProbeMetrics::new(&registry, &config.probes.0);
        let text = String::from_utf8(registry.encode()).unwrap();

        let expected: BTreeSet<(String, String)> = Reason::ALL
            .iter()
            .filter(|r| emitters(**r).iter().any(|e| runs(*e, &on)))
            .map(|r| {
                // At start-up every critical signal is starting; nothing else holds yet.
                let holds = *r == Reason::Starting && !engine.verdict().ready;
                (r.to_string(), u8::from(holds).to_string())
            })
            .collect();
        let registered = series(&text, "sidewatch_not_ready_reason", "reason");
        assert_eq!(registered, expected, "with {on:?}");

        let features = series(&text, "sidewatch_features", "feature");
        let expected: BTreeSet<(String, String)> = Feature::ALL
            .iter()
            .map(|f| (f.to_string(), u8::from(feature_on(*f, &on)).to_string()))
            .collect();
        assert_eq!(features, expected, "with {on:?}");

        for (probe, emitter) in [
            ("web", Emitter::Http),
            ("rpc", Emitter::Grpc),
            ("conn", Emitter::Tcp),
        ] {
            let expected: BTreeSet<(String, String)> = Reason::ALL
                .iter()
                .filter(|r| emitters(**r).contains(&emitter) && runs(emitter, &on))
                .map(|r| (format!("{probe}\",reason=\"{r}"), "0".to_owned()))
                .collect();
            let counted = series(&text, "sidewatch_probe_failures_total", "probe")
                .into_iter()
                .filter(|(labels, _)| labels.starts_with(&format!("{probe}\"")))
                .collect::<BTreeSet<_>>();
            assert_eq!(counted, expected, "{probe} with {on:?}");
        }
    }
}
