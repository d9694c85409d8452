//! TLS on the public listener: rustls, TLS 1.2 and 1.3, ALPN `h2` and `http/1.1`.
//!
//! The certificate lives behind an `ArcSwap` that rustls asks for on every handshake,
//! so [`TlsCertificates::reload`] (SIGHUP) swaps it for new handshakes while open
//! connections keep the one they negotiated. A pair that fails to load is logged and
//! the old one keeps serving.

use crate::config::TlsConfig;
use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::path::PathBuf;
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificate chain {path}")]
    Cert {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCert { path: PathBuf },
    #[error("cannot read private key {path}")]
    Key {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("the key in {key} does not fit the certificate in {cert}")]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS setup failed")]
    Setup(#[source] rustls::Error),
}

/// The certificate currently served, reloadable (from other files, too).
pub struct TlsCertificates {
    files: std::sync::Mutex<TlsConfig>,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
}

impl std::fmt::Debug for TlsCertificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsCertificates")
            .field("cert", &self.cert_path())
            .finish_non_exhaustive()
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load(files: &TlsConfig, provider: &CryptoProvider) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|it| it.collect())
        .map_err(|source| TlsError::Cert {
            path: files.cert.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCert {
            path: files.cert.clone(),
        });
    }
    let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|source| TlsError::Key {
        path: files.key.clone(),
        source,
    })?;
    let mismatch = |source| TlsError::Mismatch {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    };
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(mismatch)?;
    Ok(certified)
}

impl TlsCertificates {
    pub fn load(files: &TlsConfig) -> Result<Arc<Self>, TlsError> {
        let provider = provider();
        let first = load(files, &provider)?;
        Ok(Arc::new(Self {
            files: std::sync::Mutex::new(files.clone()),
            provider,
            current: ArcSwap::from_pointee(first),
        }))
    }

    /// Reads `files` (the same ones again, or others) and serves that pair to new
    /// handshakes. On failure the served certificate and its files are unchanged.
    pub fn reload(&self, files: &TlsConfig) -> Result<(), TlsError> {
        let next = load(files, &self.provider)?;
        self.current.store(Arc::new(next));
        *self.files.lock().unwrap_or_else(|p| p.into_inner()) = files.clone();
        Ok(())
    }

    pub fn cert_path(&self) -> PathBuf {
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .cert
            .clone()
    }

    /// An acceptor that always serves the current certificate.
    pub fn acceptor(self: &Arc<Self>) -> Result<TlsAcceptor, TlsError> {
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::clone(&self.provider))
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(TlsError::Setup)?
            .with_no_client_auth()
            .with_cert_resolver(Arc::clone(self) as Arc<dyn ResolvesServerCert>);
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsAcceptor::from(Arc::new(config)))
    }
}

impl ResolvesServerCert for TlsCertificates {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}
