//! The metric reference in docs/metrics.md against what the parts register: here, where every
//! part is in reach.

use std::collections::BTreeSet;

use crate::drain::DrainMetrics;
use crate::engine::task::EngineMetrics;
use crate::kubernetes::KubeMetrics;
use crate::memory::MemoryMetrics;
use crate::metrics::Registry;
use crate::probe::ProbeMetrics;
use crate::server::AdminMetrics;

const METRICS_DOC: &str = include_str!("../../docs/metrics.md");

/// What a registry holds with the parts `build` starts.
fn names(build: impl Fn(&Registry)) -> BTreeSet<String> {
    let r = Registry::new();
    build(&r);
    let text = String::from_utf8(r.encode()).unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// docs/metrics.md's table lists every metric sidewatch registers, each under the part that
/// exports it (its third column).
#[test]
fn the_metric_table_lists_exactly_the_registered_metrics() {
    let always = |r: &Registry, traffic: bool| {
        EngineMetrics::new(r, &[]);
        AdminMetrics::new(r);
        DrainMetrics::new(r, traffic);
    };
    let config = crate::config::parse_str(
        "probes: [{name: app, http: {url: 'http://127.0.0.1:8080/'}}]\n",
        std::path::Path::new("t.yaml"),
    )
    .unwrap();
    let base = names(|r| always(r, false));
    let memory = names(|r| {
        always(r, false);
        MemoryMetrics::new(r);
    });
    let parts: [(&str, BTreeSet<String>, &BTreeSet<String>); 10] = [
        ("always", base.clone(), &BTreeSet::new()),
        (
            "probes",
            names(|r| {
                always(r, false);
                ProbeMetrics::new(r, &config.probes.0);
            }),
            &base,
        ),
        ("memory", memory.clone(), &base),
        (
            "memory with PSI",
            names(|r| {
                always(r, false);
                MemoryMetrics::new(r).pressure(Some(Default::default()));
            }),
            &memory,
        ),
        (
            "memory source `node`",
            names(|r| {
                always(r, false);
                MemoryMetrics::new(r).node();
            }),
            &memory,
        ),
        (
            "process",
            names(|r| {
                always(r, false);
                crate::process::exits_metric(r);
            }),
            &base,
        ),
        (
            "kubernetes",
            names(|r| {
                always(r, false);
                KubeMetrics::new(r).containers(&["app".into()]);
            }),
            &base,
        ),
        ("drain traffic", names(|r| always(r, true)), &base),
        (
            "app port",
            names(|r| {
                always(r, false);
                crate::overload::OverloadMetrics::new(r);
            }),
            &base,
        ),
        (
            "agent",
            names(|r| {
                always(r, false);
                crate::agent::AgentMetrics::new(r);
            }),
            &base,
        ),
    ];
    let expected: BTreeSet<(String, String)> = parts
        .iter()
        .flat_map(|(part, with, without)| {
            with.difference(without)
                .map(|name| (name.clone(), part.to_string()))
        })
        .collect();
    let documented: BTreeSet<(String, String)> = METRICS_DOC
        .split("\n## ")
        .next()
        .unwrap()
        .lines()
        .filter_map(|l| l.strip_prefix("| `"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split(" | ").collect();
            Some((
                cells[0].strip_suffix('`')?.to_owned(),
                cells.get(2)?.to_string(),
            ))
        })
        .collect();
    assert_eq!(documented, expected);
}

/// docs/metrics.md names every value of `sidewatch_features`' label, in `Feature`'s order.
#[test]
fn the_metric_table_lists_every_feature() {
    let row = METRICS_DOC
        .lines()
        .find(|l| l.starts_with("| `sidewatch_features` |"))
        .unwrap();
    let listed = row.split(" | ").nth(3).unwrap();
    let features: Vec<String> = crate::metrics::Feature::ALL
        .iter()
        .map(|f| format!("`{f}`"))
        .collect();
    assert_eq!(listed, format!("`feature` = {}", features.join("/")));
}

mod combinations;
