//! A throw-away CA and the certificates it signs, for the TLS servers of the tests.
#![allow(dead_code)] // each test crate uses its own subset

use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

pub struct Pki {
    pub ca: CertifiedIssuer<'static, KeyPair>,
}

/// One certificate and its key, as PEM files hold them.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Pki {
    pub fn new() -> Pki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        Pki { ca }
    }

    /// A leaf for 127.0.0.1.
    pub fn leaf(&self) -> Leaf {
        self.leaf_for(&["127.0.0.1"])
    }

    /// A leaf for these names (DNS names or IP addresses).
    pub fn leaf_for(&self, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let cert = CertificateParams::new(names)
            .expect("leaf params")
            .signed_by(&key, &self.ca)
            .expect("leaf certificate");
        Leaf::new(cert, key)
    }

    /// A leaf for 127.0.0.1 that expires on the day of `at` (00:00 UTC).
    pub fn leaf_expiring(&self, at: std::time::SystemTime) -> Leaf {
        // "2026-12-08T10:00:00Z": the date, without a calendar crate.
        let day = humantime::format_rfc3339_seconds(at).to_string();
        let part = |r: std::ops::Range<usize>| day[r].parse::<u16>().expect("an RFC 3339 date");
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned()]).expect("leaf params");
        params.not_after =
            rcgen::date_time_ymd(part(0..4) as i32, part(5..7) as u8, part(8..10) as u8);
        self.leaf_with(params)
    }

    /// A leaf of these parameters (its names, validity…), signed by the CA.
    pub fn leaf_with(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.ca).expect("leaf certificate");
        Leaf::new(cert, key)
    }

    pub fn ca_pem(&self) -> String {
        self.ca.pem()
    }
}

impl Leaf {
    /// A certificate for `names` that no CA signed.
    pub fn self_signed(names: &[&str]) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let names = names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        let cert = CertificateParams::new(names)
            .expect("leaf params")
            .self_signed(&key)
            .expect("self-signed certificate");
        Leaf::new(cert, key)
    }

    fn new(cert: rcgen::Certificate, key: KeyPair) -> Leaf {
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    /// A rustls server serving this certificate, offering `alpn` (e.g. `h2`, `http/1.1`).
    pub fn acceptor(&self, alpn: &[&str]) -> tokio_rustls::TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("TLS versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![self.der.clone()],
                PrivateKeyDer::Pkcs8(self.key_der.clone().into()),
            )
            .expect("server certificate");
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }
}
