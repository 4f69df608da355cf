use super::*;

#[test]
fn a_drain_cut_at_max_is_a_warning() {
    let now = std::time::Instant::now();
    let end = crate::drain::DrainEnd {
        outcome: "max",
        duration_seconds: 25.04,
        new_connections: 312,
        bytes_in: 40_960,
        began: now,
        ended: now,
    };
    let event = drained_event(&end);
    assert_eq!(event.type_, EventType::Warning);
    assert_eq!(event.reason, "DrainEndedAtMax");
    let note = event.note.unwrap();
    assert!(
        note.starts_with("drain ended after 25.0 s, traffic never stopped"),
        "{note}"
    );
    assert!(
        note.contains("312 new connection(s), 40960 byte(s)"),
        "{note}"
    );
}
