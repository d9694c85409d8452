//! A certificate authority made in the test (rcgen), its leaf certificates, and a
//! client that trusts it.

#![allow(dead_code)] // each test file uses its own part of the harness

use super::ip;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use rustls::pki_types::CertificateDer;
use std::path::Path;
use std::sync::Arc;
use tokio_rustls::TlsConnector;

pub struct TestCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf certificate and its key, PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCa {
    pub fn new() -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "ipgate test CA");
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Self { issuer }
    }

    /// A leaf for `localhost`, 127.0.0.1 and ::1, with `name` as its common name.
    pub fn leaf(&self, name: &str) -> Leaf {
        self.leaf_for(name, &["localhost"], &["127.0.0.1", "::1"])
    }

    /// A leaf valid for exactly these names and addresses.
    pub fn leaf_for(&self, name: &str, dns: &[&str], ips: &[&str]) -> Leaf {
        let dns: Vec<String> = dns.iter().map(|d| d.to_string()).collect();
        let mut params = CertificateParams::new(dns).unwrap();
        for a in ips {
            params.subject_alt_names.push(SanType::IpAddress(ip(a)));
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }

    pub fn write_pem(&self, path: &Path) {
        std::fs::write(path, self.issuer.pem()).unwrap();
    }

    pub fn client(&self, alpn: &[&[u8]]) -> TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuer.der().clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsConnector::from(Arc::new(config))
    }
}
