//! Every parser of outside input, fed arbitrary and mutated input with a fixed case budget: it
//! answers or refuses, and never panics.

use std::path::Path;

use proptest::prelude::*;
use sidewatch::memory::read::{keyed, parse_limit, parse_pressure, vm_rss};

const VALID_CONFIG: &str = "listen: 127.0.0.1:9102\nprobes:\n  - name: app\n    http: {url: http://127.0.0.1:8080/healthz, expect_status: [\"200-399\"]}\n    interval: 250ms\nmemory: {unready_above: 0.9, ready_below: 0.8}\ndrain: {delay: 2s, max: 10s}\n";

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn config_text_never_panics(text in "\\PC{0,400}") {
        let _ = sidewatch::config::parse_str(&text, Path::new("fuzz.yaml"));
    }

    #[test]
    fn mutated_valid_configs_never_panic(at in 0usize..VALID_CONFIG.len(), junk in "[-:{}\\[\\]\"'#&*!|>%@`a-z0-9 \\n]{0,12}") {
        let mut text = VALID_CONFIG.to_owned();
        let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        text.insert_str(at, &junk);
        let _ = sidewatch::config::parse_str(&text, Path::new("fuzz.yaml"));
    }

    #[test]
    fn cgroup_and_proc_files_never_panic(text in "\\PC{0,200}", key in "[a-z_]{1,12}") {
        let p = Path::new("/fuzz");
        let _ = parse_limit(&text, p);
        let _ = keyed(&text, &key, p);
        let _ = parse_pressure(&text, p);
        let _ = vm_rss(&text, p);
    }

    #[test]
    fn psi_like_lines_never_panic(some in "[-0-9.e+a-z]{0,12}", full in "[-0-9.e+a-z]{0,12}") {
        let text = format!("some avg10={some} avg60=0.00 avg300=0.00 total=1\nfull avg10={full} avg60=0 avg300=0 total=2\n");
        if let Ok(p) = parse_pressure(&text, Path::new("/fuzz")) {
            prop_assert!(p.some_avg10.is_finite() && p.full_avg10.is_finite());
        }
    }

    #[test]
    fn admission_reviews_never_panic(body in proptest::collection::vec(any::<u8>(), 0..300)) {
        let settings = sidewatch::inject::Settings::default();
        let _ = sidewatch::webhook::review(&body, sidewatch::inject::Scope::Namespace, &settings, "t");
    }

    #[test]
    fn reviews_of_odd_pods_never_panic(
        name in "[a-z]{0,8}",
        port in any::<i32>(),
        path in "\\PC{0,20}",
        grace in prop_oneof![Just(i64::MIN), Just(i64::MAX), Just(0i64), any::<i64>()],
    ) {
        let review = serde_json::json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {"uid": "u", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"}, "operation": "CREATE",
                "userInfo": {}, "object": {"apiVersion": "v1", "kind": "Pod",
                    "metadata": {"annotations": {"sidewatch.io/inject": "true"}},
                    "spec": {"terminationGracePeriodSeconds": grace, "containers": [{"name": name,
                        "ports": [{"containerPort": port}],
                        "readinessProbe": {"httpGet": {"path": path, "port": port}}}]}}}
        });
        let settings = sidewatch::inject::Settings::default();
        let body = serde_json::to_vec(&review).unwrap();
        prop_assert!(sidewatch::webhook::review(&body, sidewatch::inject::Scope::Annotated, &settings, "t").is_ok());
    }
}
