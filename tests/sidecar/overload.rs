//! Overload seen from inside the pod's network namespace (a fresh one per test, so that its
//! ListenOverflows are the test's alone): an app port whose listener has a backlog of 1 and never
//! accepts, flooded with connects, moves the accept-queue metrics, the listener's drops and the
//! namespace's overflows; opted in, `/readyz` fails with `overloaded`, and comes back once the
//! app accepts. Needs root and `ip`.

#[allow(unused_imports)]
use crate::{common, netns};
use std::time::Duration;

use common::{eventually, healthy, Sidewatch, Upstream};
use netns::Netns;
use tokio::net::{TcpSocket, TcpStream};

const WITHIN: Duration = Duration::from_secs(20);

#[test]
fn a_full_accept_queue_is_overload_and_fails_readiness_only_when_opted_in() {
    let Some(ns) = Netns::create("overload") else {
        return;
    };
    ns.run(|ns| async move {
        let up = Upstream::start(healthy()).await;
        let socket = TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let app = socket.local_addr().unwrap();
        let listener = socket.listen(1).unwrap();
        let port = app.port().to_string();
        let target = up.url();
        let args = [
            "--target",
            &target,
            "--interval",
            "100ms",
            "--cgroup",
            "none",
        ];
        let watch = [
            ("SIDEWATCH_DRAIN_PORT", port.as_str()),
            ("SIDEWATCH_OVERLOAD_HOLD", "1s"),
        ];
        let mut opted = watch.to_vec();
        opted.push(("SIDEWATCH_OVERLOAD_SIGNAL", "true"));
        let signal = Sidewatch::start_in(Some(&ns), "127.0.0.1:0", &args, &opted);
        let metrics_only = Sidewatch::start_in(Some(&ns), "127.0.0.1:0", &args, &watch);
        signal.wait_ready(WITHIN).await;
        metrics_only.wait_ready(WITHIN).await;
        for sw in [&signal, &metrics_only] {
            eventually("the backlog seen", WITHIN, || async {
                (sw.metric("sidewatch_app_accept_backlog").await == Some(1.0)).then_some(())
            })
            .await;
            assert_eq!(sw.metric("sidewatch_app_accept_queue").await, Some(0.0));
            assert_eq!(sw.metric("sidewatch_app_overloaded").await, Some(0.0));
        }

        // Two connections fill a backlog of 1; the SYNs of the others are dropped, and dropped
        // again at each retransmission.
        let flood: Vec<_> = (0..6)
            .map(|_| tokio::spawn(TcpStream::connect(app)))
            .collect();
        eventually("the queue full", WITHIN, || async {
            (signal.metric("sidewatch_app_accept_queue").await == Some(2.0)).then_some(())
        })
        .await;
        // The namespace's counters are read once in 10 s.
        for (series, what) in [
            ("sidewatch_app_accept_drops_total", "the listener's drops"),
            (
                "sidewatch_listen_overflows_total",
                "the namespace's overflows",
            ),
        ] {
            eventually(what, Duration::from_secs(30), || async {
                let n = signal.metric(series).await;
                n.is_some_and(|n| n > 0.0).then_some(())
            })
            .await;
        }
        let body = signal.wait_reason("overloaded", WITHIN).await;
        let message = body["reasons"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("accept queue 2/1"), "{body}");
        eventually(
            "judged overloaded without the signal too",
            WITHIN,
            || async {
                (metrics_only.metric("sidewatch_app_overloaded").await == Some(1.0)).then_some(())
            },
        )
        .await;
        assert_eq!(metrics_only.readyz().await.0, 200);

        // The app accepts at last: the queue empties, the connects complete, no more overflows.
        let accepting = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        for connect in flood {
            assert!(connect.await.unwrap().is_ok());
        }
        signal.wait_ready(WITHIN).await;
        assert_eq!(signal.metric("sidewatch_app_accept_queue").await, Some(0.0));
        assert_eq!(signal.metric("sidewatch_app_overloaded").await, Some(0.0));
        accepting.abort();
    });
}
