//! The probes' TLS client: the app's certificate checked against `ca_file` or the system's roots,
//! or taken as it is (`insecure_skip_verify`, as the kubelet's HTTPS probe takes any).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::{read_ca_file, ProbeSetupError};

pub struct Settings<'a> {
    pub ca_file: Option<&'a Path>,
    pub insecure_skip_verify: bool,
    /// The protocols offered by ALPN, preferred first.
    pub alpn: &'a [&'a [u8]],
}

pub type Connector = (tokio_rustls::TlsConnector, ServerName<'static>);

/// The connector, and `name` as the server name it sends and checks the certificate against.
pub fn connector(
    probe: &str,
    settings: &Settings,
    name: String,
) -> Result<Connector, ProbeSetupError> {
    let tls_error = |source| ProbeSetupError::Tls {
        probe: probe.to_owned(),
        source,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(tls_error)?;
    let mut config = if settings.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    } else if let Some(path) = settings.ca_file {
        let mut roots = rustls::RootCertStore::empty();
        for der in read_ca_file(probe, path)? {
            roots.add(der).map_err(tls_error)?;
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        let verifier = rustls_platform_verifier::Verifier::new(provider).map_err(tls_error)?;
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth()
    };
    config.alpn_protocols = settings.alpn.iter().map(|p| p.to_vec()).collect();
    // Checked with the config; a name that still fails is an error, never a panic.
    let name = ServerName::try_from(name).map_err(|_| {
        tls_error(rustls::Error::General(
            "the server name is not a DNS name or IP address".into(),
        ))
    })?;
    Ok((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
}

/// `insecure_skip_verify`: any certificate is taken, as the kubelet takes any for HTTPS; the
/// handshake's signatures are still checked, so the peer holds the certificate's key.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
