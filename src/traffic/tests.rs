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
