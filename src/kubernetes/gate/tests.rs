use std::time::Duration;

use super::*;
use crate::engine::{Cause, Signal};

fn t(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_694_400 + secs)
}

fn verdict(ready: bool, reason: Reason) -> Verdict {
    let reasons = match ready {
        true => Vec::new(),
        false => vec![Cause {
            signal: Signal::Probe("app".into()),
            reason,
            message: "connection refused".into(),
            since: t(0),
        }],
    };
    Verdict {
        ready,
        draining: false,
        reasons,
        warnings: Vec::new(),
    }
}

fn stored(status: &str, since: Option<SystemTime>) -> Stored {
    Stored {
        status: status.into(),
        since,
    }
}

#[test]
fn reasons_become_pascal_case() {
    assert_eq!(pascal("memory_high"), "MemoryHigh");
    assert_eq!(pascal("http_5xx"), "Http5xx");
    assert_eq!(pascal("refused"), "Refused");
}

#[test]
fn the_first_condition_is_set_now() {
    let c = Condition::of(&verdict(true, Reason::Refused));
    assert_eq!(c.since(None, t(5)), t(5));
}

#[test]
fn the_same_status_keeps_its_time_whatever_the_reason() {
    let before = stored("False", Some(t(1)));
    for reason in [Reason::Refused, Reason::Http5xx, Reason::Timeout] {
        let c = Condition::of(&verdict(false, reason));
        assert_eq!(c.since(Some(&before), t(60)), t(1), "{reason:?}");
    }
    let ready = Condition::of(&verdict(true, Reason::Refused));
    assert_eq!(ready.since(Some(&stored("True", Some(t(2)))), t(60)), t(2));
}

#[test]
fn a_flip_or_a_foreign_status_sets_a_new_time() {
    let ready = Condition::of(&verdict(true, Reason::Refused));
    let unready = Condition::of(&verdict(false, Reason::Refused));
    assert_eq!(ready.since(Some(&stored("False", Some(t(1)))), t(9)), t(9));
    assert_eq!(unready.since(Some(&stored("True", Some(t(1)))), t(9)), t(9));
    assert_eq!(
        ready.since(Some(&stored("Unknown", Some(t(1)))), t(9)),
        t(9)
    );
    // A condition someone wrote without a time gets one.
    assert_eq!(ready.since(Some(&stored("True", None)), t(9)), t(9));
}

#[test]
fn the_patch_carries_the_time_given() {
    let c = Condition::of(&verdict(false, Reason::Http5xx));
    let patch = c.patch("sidewatch.io/healthy", t(1));
    let condition = &patch["status"]["conditions"][0];
    assert_eq!(condition["type"], "sidewatch.io/healthy");
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "Http5xx");
    assert_eq!(condition["lastTransitionTime"], "2026-11-26T12:00:01Z");
    assert!(condition["message"]
        .as_str()
        .unwrap()
        .starts_with("probe:app=http_5xx"));
}

#[test]
fn the_stored_condition_is_read_from_the_pod() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-1"},
        "status": {"conditions": [
            {"type": "Ready", "status": "True", "lastTransitionTime": "2026-11-26T12:00:00Z"},
            {"type": "sidewatch.io/healthy", "status": "False", "lastTransitionTime": "2026-11-26T12:00:07Z"},
        ]}
    }))
    .unwrap();
    assert_eq!(
        Stored::find(&pod, "sidewatch.io/healthy"),
        Some(stored("False", Some(t(7))))
    );
    assert_eq!(Stored::find(&pod, "example.com/other"), None);
    assert_eq!(Stored::find(&Pod::default(), "sidewatch.io/healthy"), None);
}

/// What the server stores is what the next patch compares with: a round trip keeps the time to
/// the second.
#[test]
fn a_written_time_reads_back_the_same() {
    let c = Condition::of(&verdict(true, Reason::Refused));
    let mut patch = c.patch("g", t(3));
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "web-1"},
        "status": patch["status"].take(),
    }))
    .unwrap();
    assert_eq!(Stored::find(&pod, "g"), Some(c.stored(t(3))));
}
