use super::*;

fn key(remote_port: u16) -> SockKey {
    (
        "127.0.0.1:8080".parse().unwrap(),
        SocketAddr::new([127, 0, 0, 1].into(), remote_port),
    )
}

fn snap(socks: &[(u16, bool, Option<u64>)], opens: Option<u64>) -> Snapshot {
    Snapshot {
        sockets: socks
            .iter()
            .map(|(p, open, bytes_in)| {
                (
                    key(*p),
                    Sock {
                        open: *open,
                        bytes_in: *bytes_in,
                    },
                )
            })
            .collect(),
        passive_opens: opens,
        dumped: true,
    }
}

#[test]
fn idle_keep_alive_connections_are_quiet() {
    let a = snap(&[(1000, true, Some(500)), (1001, true, Some(90))], Some(7));
    let activity = compare(&a, &a.clone());
    assert!(activity.is_quiet());
    assert_eq!(activity.open, 2);
}

#[test]
fn bytes_on_a_kept_alive_connection_are_traffic() {
    let a = snap(&[(1000, true, Some(500))], None);
    let b = snap(&[(1000, true, Some(620))], None);
    assert_eq!(compare(&a, &b).bytes_in, 120);
}

#[test]
fn a_new_socket_in_any_state_is_a_new_connection() {
    let a = snap(&[(1000, true, Some(1))], None);
    let b = snap(
        &[
            (1000, true, Some(1)),
            (1001, false, None),
            (1002, true, Some(0)),
        ],
        None,
    );
    let activity = compare(&a, &b);
    assert_eq!((activity.new_connections, activity.open), (2, 2));
    // A socket that went away is no arrival.
    assert_eq!(compare(&b, &a).new_connections, 0);
}

#[test]
fn passive_opens_catch_connections_that_left_no_socket() {
    let a = snap(&[], Some(100));
    let b = snap(&[(1001, false, None)], Some(104));
    assert_eq!(
        compare(&a, &b).new_connections,
        4,
        "one seen, three gone between polls"
    );
    let c = snap(&[(1001, false, None)], Some(104));
    assert!(compare(&b, &c).is_quiet());
}

fn last(in_segs: u64, opens: u64, dumped_opens: u64, ago: Duration) -> Last {
    Last {
        dumped_at: Instant::now() - ago,
        in_segs,
        opens,
        dumped_opens,
        sockets: HashMap::new(),
        known: HashMap::new(),
        hot: Vec::new(),
    }
}

#[test]
fn a_drain_dumps_only_once_arrivals_stop() {
    let fresh = Duration::ZERO;
    let known = last(50, 7, 7, fresh);
    // No segment in: nothing to look at.
    assert_eq!(plan(Need::Bytes, &known, 50, 7, true), Look::Reuse);
    // Segments, no arrival since the last dump: only the known sockets can have had bytes.
    assert_eq!(plan(Need::Bytes, &known, 60, 7, true), Look::Lookup);
    // Arrivals now: they are the activity; no look at the sockets is needed.
    assert_eq!(plan(Need::Bytes, &known, 60, 9, true), Look::Reuse);
    // Arrivals before, none now: the sockets they left are learnt.
    let after = last(60, 9, 7, fresh);
    assert_eq!(plan(Need::Bytes, &after, 70, 9, true), Look::Dump);
    // Without the opens counted, or from /proc, every segment means a dump.
    assert_eq!(plan(Need::Bytes, &known, 60, 7, false), Look::Dump);
    // A fall of the opens (sidewatch's own connect counted before the kernel's) is no arrival.
    assert_eq!(plan(Need::Bytes, &known, 60, 6, true), Look::Lookup);
}

#[test]
fn between_drains_each_look_looks_up_or_dumps() {
    let recent = last(50, 7, 7, CONNECTIONS_SEEN_WITHIN);
    let with_arrivals = last(50, 9, 7, CONNECTIONS_SEEN_WITHIN);
    assert_eq!(plan(Need::Connections, &recent, 90, 7, true), Look::Lookup);
    // Arrivals since the last dump: their sockets are learnt.
    assert_eq!(
        plan(Need::Connections, &with_arrivals, 90, 9, true),
        Look::Dump
    );
    assert_eq!(plan(Need::Connections, &recent, 90, 7, false), Look::Dump);
    // Once in DUMP_WITHIN, whatever the counters say: they can hide an arrival.
    let long_ago = last(50, 7, 7, DUMP_WITHIN);
    assert_eq!(plan(Need::Connections, &long_ago, 90, 7, true), Look::Dump);
}

#[test]
fn the_look_that_can_end_a_drain_dumps_whatever_the_counters_say() {
    let known = last(50, 7, 7, Duration::ZERO);
    assert_eq!(plan(Need::All, &known, 50, 7, true), Look::Dump);
}
