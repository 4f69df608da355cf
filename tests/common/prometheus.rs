//! A real Prometheus server (Debian's, run on loopback with a config of its own) for the tests that
//! load the chart's rules and watch them fire on real exposition: scrape targets labelled as the
//! chart's PodMonitors label them (namespace, pod, job), and the rules with every `for:` short.

#![allow(dead_code)] // each test crate uses its own subset

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime};

use serde_json::{json, Value};

use crate::common::{chart, client, eventually, skip_or_fail, tempdir, which};

/// One scrape job: its name, the namespace of its pods, and (address, pod name) per target.
pub struct Job<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub targets: &'a [(String, &'a str)],
}

pub struct Prometheus {
    child: Child,
    addr: SocketAddr,
    client: reqwest::Client,
    _dir: tempdir::Dir,
}

impl Prometheus {
    /// `targets`: (address, pod name), all of job `sidewatch` in namespace `shop`. `None` (after
    /// `skip_or_fail`) without prometheus.
    pub fn start(targets: &[(String, &str)], rules: &Value) -> Option<Prometheus> {
        let job = Job {
            name: "sidewatch",
            namespace: "shop",
            targets,
        };
        Prometheus::start_jobs(&[job], rules)
    }

    pub fn start_jobs(jobs: &[Job], rules: &Value) -> Option<Prometheus> {
        let Some(bin) = which("prometheus") else {
            skip_or_fail("prometheus is not installed (scripts/install-test-tools)");
            return None;
        };
        let dir = tempdir::Dir::new();
        std::fs::write(dir.path().join("rules.json"), rules.to_string()).unwrap();
        let scrape_configs: Vec<Value> = jobs
            .iter()
            .map(|job| {
                let static_configs: Vec<Value> = job
                    .targets
                    .iter()
                    .map(|(addr, pod)| {
                        json!({"targets": [addr], "labels": {"namespace": job.namespace, "pod": pod}})
                    })
                    .collect();
                json!({"job_name": job.name, "static_configs": static_configs})
            })
            .collect();
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": ["rules.json"],
            "scrape_configs": scrape_configs,
        });
        // JSON is YAML.
        std::fs::write(dir.path().join("prometheus.yml"), config.to_string()).unwrap();
        let addr = free_port();
        let child = Command::new(bin)
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn prometheus");
        Some(Prometheus {
            child,
            addr,
            client: client(),
            _dir: dir,
        })
    }

    pub async fn get(&self, path: &str, query: &[(&str, String)]) -> Option<Value> {
        let url = reqwest::Url::parse_with_params(&format!("http://{}{path}", self.addr), query)
            .expect("a query URL");
        let resp = self.client.get(url).send().await.ok()?;
        let body: Value = serde_json::from_str(&resp.text().await.ok()?).ok()?;
        (body["status"] == "success").then(|| body["data"].clone())
    }

    pub async fn wait_ready(&self) {
        eventually(
            "prometheus to be ready",
            Duration::from_secs(60),
            || async {
                let resp = self
                    .client
                    .get(format!("http://{}/-/ready", self.addr))
                    .send()
                    .await
                    .ok()?;
                resp.status().is_success().then_some(())
            },
        )
        .await;
    }

    pub async fn firing(&self) -> Vec<Value> {
        let data = self.get("/api/v1/alerts", &[]).await.unwrap_or_default();
        data["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|a| a["state"] == "firing")
            .cloned()
            .collect()
    }

    pub async fn query(&self, expr: &str) -> Vec<Value> {
        let data = self
            .get("/api/v1/query", &[("query", expr.to_owned())])
            .await
            .unwrap_or_default();
        data["result"].as_array().cloned().unwrap_or_default()
    }

    pub async fn query_range(&self, expr: &str, since: SystemTime) -> Value {
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .unwrap()
                .as_secs_f64()
                .to_string()
        };
        self.get(
            "/api/v1/query_range",
            &[
                ("query", expr.to_owned()),
                ("start", secs(since)),
                ("end", secs(SystemTime::now())),
                ("step", "1".into()),
            ],
        )
        .await
        .unwrap_or_else(|| panic!("query_range failed: {expr}"))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The chart's rules with every alert's `for:` at 2 s.
pub fn short_rules() -> Option<Value> {
    let file: Value = serde_saphyr::from_str(include_str!(
        "../../charts/sidewatch/rules/sidewatch.rules.yaml"
    ))
    .unwrap();
    let sets: Vec<String> = chart::alerts(&file)
        .iter()
        .map(|a| format!("prometheusRule.for.{}=2s", a["alert"].as_str().unwrap()))
        .collect();
    let mut args = vec!["-f", chart::ALL_ON];
    for set in &sets {
        args.extend(["--set", set.as_str()]);
    }
    chart::render(&args).map(|r| chart::rule_file(&r))
}

/// Whether `alerts` has one named `name` with every label of `labels`.
pub fn has(alerts: &[Value], name: &str, labels: &[(&str, &str)]) -> bool {
    alerts.iter().any(|a| {
        a["labels"]["alertname"] == name && labels.iter().all(|(k, v)| a["labels"][k] == *v)
    })
}
