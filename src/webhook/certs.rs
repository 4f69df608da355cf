//! The webhook's serving certificate and key: loaded at start, handed to each new TLS handshake,
//! and replaced when a new matching pair appears on disk (a rotated Secret, a cert-manager renewal).

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::metrics::WebhookMetrics;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: not a PEM certificate chain: {source}", path.display())]
    CertPem { path: PathBuf, source: pem::Error },
    #[error("{}: holds no certificate", path.display())]
    NoCert { path: PathBuf },
    #[error("{}: unusable certificate: {source}", path.display())]
    Cert {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("{}: not a PEM private key: {source}", path.display())]
    KeyPem { path: PathBuf, source: pem::Error },
    #[error("{}: unusable private key: {source}", path.display())]
    Key {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("the key in {} does not match the certificate in {}", key.display(), cert.display())]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("no TLS 1.2 or 1.3 in the crypto provider: {0}")]
    Versions(rustls::Error),
}

/// The serving certificate: every new handshake takes the current pair, which is replaced whole
/// when a good new one appears on disk (connections already open keep theirs).
#[derive(Debug)]
pub(super) struct Certs {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Arc<CertifiedKey>>,
    /// The file contents of the pair loaded at start, where the watch begins.
    loaded: (Vec<u8>, Vec<u8>),
    metrics: Arc<WebhookMetrics>,
}

impl ResolvesServerCert for Certs {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

impl Certs {
    pub(super) fn load(
        cert_path: PathBuf,
        key_path: PathBuf,
        provider: Arc<CryptoProvider>,
        metrics: Arc<WebhookMetrics>,
    ) -> Result<Certs, TlsError> {
        let (cert, key) = (read(&cert_path)?, read(&key_path)?);
        let current = certified(&cert_path, &cert, &key_path, &key, &provider)?;
        metrics.not_after.set(not_after(&current));
        Ok(Certs {
            metrics,
            cert_path,
            key_path,
            provider,
            current: RwLock::new(Arc::new(current)),
            loaded: (cert, key),
        })
    }

    /// Polls the files rather than watching them with inotify: a Secret volume swaps a `..data`
    /// symlink, cert-manager and people rewrite files, and a poll of two small files sees both
    /// without re-arming watches on directories that come and go.
    pub(super) async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut served = self.loaded.clone();
        // What the files held at the last look, so that a bad pair is reported once, not per poll.
        let mut seen = Ok(served.clone());
        loop {
            tick.tick().await;
            let now = match (read(&self.cert_path), read(&self.key_path)) {
                (Ok(cert), Ok(key)) => Ok((cert, key)),
                (Err(e), _) | (_, Err(e)) => Err(e.to_string()),
            };
            if now == seen {
                continue;
            }
            seen = now;
            let (cert, key) = match &seen {
                Ok(pair) if *pair == served => continue,
                Ok(pair) => pair,
                Err(e) => {
                    self.metrics.reloaded(false);
                    tracing::warn!(error = %e, "new TLS certificate not used, still serving the previous pair");
                    continue;
                }
            };
            match certified(&self.cert_path, cert, &self.key_path, key, &self.provider) {
                Ok(next) => {
                    let expires = not_after(&next);
                    *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(next);
                    served = (cert.clone(), key.clone());
                    self.metrics.not_after.set(expires);
                    self.metrics.reloaded(true);
                    tracing::info!(cert = %self.cert_path.display(), not_after = expires, "TLS certificate reloaded");
                }
                Err(e) => {
                    self.metrics.reloaded(false);
                    tracing::warn!(error = %e, "new TLS certificate not used, still serving the previous pair")
                }
            }
        }
    }
}

/// The served (leaf) certificate's notAfter in seconds since the epoch; 0 when rustls took a
/// certificate x509-parser cannot read, which the expiry alert then reports as expired.
fn not_after(pair: &CertifiedKey) -> f64 {
    pair.end_entity_cert()
        .ok()
        .and_then(|der| x509_parser::parse_x509_certificate(der).ok())
        .map_or(0.0, |(_, cert)| {
            cert.validity().not_after.timestamp() as f64
        })
}

/// A few KB from a local volume (a Secret's tmpfs): read in place, not on the blocking pool, and
/// refused past 1 MiB, far beyond any certificate chain.
fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    crate::util::read_bounded(path, 1024 * 1024).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// A pair that is whole and whose key belongs to the certificate, or why not.
fn certified(
    cert_path: &Path,
    cert: &[u8],
    key_path: &Path,
    key: &[u8],
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::CertPem {
            path: cert_path.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            path: cert_path.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|source| TlsError::KeyPem {
        path: key_path.to_owned(),
        source,
    })?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|source| TlsError::Key {
            path: key_path.to_owned(),
            source,
        })?;
    let pair = CertifiedKey::new(chain, signer);
    match pair.keys_match() {
        // A key type whose public half rustls cannot derive is taken on trust, as rustls does.
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(pair)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(TlsError::Mismatch {
            cert: cert_path.to_owned(),
            key: key_path.to_owned(),
        }),
        Err(source) => Err(TlsError::Cert {
            path: cert_path.to_owned(),
            source,
        }),
    }
}
