//! Who may call `/drain`.

use std::net::IpAddr;

use subtle::ConstantTimeEq;

/// Who may start a drain: loopback always; others with the drain token, or once the API server
/// says the pod is terminating (the kubelet's preStop hook comes from the node).
pub struct Access {
    pub token: Option<Vec<u8>>,
}

impl Access {
    /// `terminating`: the verdict says the pod is being deleted.
    pub fn allows(&self, peer: IpAddr, presented: Option<&[u8]>, terminating: bool) -> bool {
        if crate::net::is_loopback(peer) || terminating {
            return true;
        }
        match (&self.token, presented) {
            // Constant time: the comparison must not tell a caller how much of a guess was right.
            (Some(token), Some(given)) => bool::from(token.as_slice().ct_eq(given)),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(token: Option<&str>) -> Access {
        Access {
            token: token.map(|t| t.as_bytes().to_vec()),
        }
    }

    #[test]
    fn loopback_may_always_drain() {
        let a = access(None);
        for ip in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            assert!(a.allows(ip.parse().unwrap(), None, false), "{ip}");
        }
    }

    #[test]
    fn others_need_the_exact_token() {
        let a = access(Some("s3cret"));
        let node: IpAddr = "10.1.2.3".parse().unwrap();
        assert!(a.allows(node, Some(b"s3cret"), false));
        assert!(!a.allows(node, Some(b"s3cre"), false));
        assert!(!a.allows(node, Some(b"s3cret!"), false));
        assert!(!a.allows(node, Some(b""), false));
        assert!(!a.allows(node, None, false));
        assert!(
            !access(None).allows(node, Some(b"anything"), false),
            "no token configured"
        );
    }

    #[test]
    fn a_terminating_pod_may_be_drained_from_the_node() {
        assert!(access(None).allows("10.1.2.3".parse().unwrap(), None, true));
    }
}
