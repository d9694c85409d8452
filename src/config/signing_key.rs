//! `auth.response_signing_key`: the RSA key the management API signs its answers with,
//! as bunq's server does, so bunq's SDKs can verify them (`X-Bunq-Server-Signature`).
//!
//! Read and checked when the configuration is, so a key that cannot sign is a problem
//! `check-config` lists, never a failure at the first answer. This owns the key and the
//! signature's form; which answers are signed is the management API's business. The
//! private key never leaves this type: its `Debug` prints `<redacted>`, and nothing
//! here logs.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{KeyPair as _, RsaKeyPair, RSA_PKCS1_SHA256};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

/// A loaded RSA private key (2048 to 4096 bits) that signs answer bodies.
#[derive(Clone)]
pub struct ResponseSigningKey {
    pair: Arc<RsaKeyPair>,
    rng: SystemRandom,
}

impl ResponseSigningKey {
    /// Reads a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`, what `openssl genpkey`
    /// writes) or PKCS#1 (`BEGIN RSA PRIVATE KEY`). The error names the file and says
    /// what is wrong with it, never anything of the key.
    pub fn load(path: &Path) -> Result<Self, String> {
        let shown = path.display();
        let der = PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
            rustls::pki_types::pem::Error::Io(e) => format!("{shown} cannot be read: {e}"),
            rustls::pki_types::pem::Error::NoItemsFound => {
                format!("{shown} holds no PEM private key")
            }
            other => format!("{shown} is not a PEM private key ({other})"),
        })?;
        let pair = match &der {
            PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
            PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
            _ => {
                return Err(format!(
                    "{shown} is not an RSA key; bunq's SDKs verify RSA signatures only"
                ))
            }
        }
        .map_err(|e| {
            format!("{shown} is not a usable RSA private key of 2048 to 4096 bits ({e})")
        })?;
        Ok(Self {
            pair: Arc::new(pair),
            rng: SystemRandom::new(),
        })
    }

    /// `X-Bunq-Server-Signature` of an answer whose body is `body`: RSASSA-PKCS1-v1_5
    /// with SHA-256 over exactly the body's bytes, in standard base64 with padding.
    /// That is what bunq's server signs today (request and response bodies only since
    /// 2020) and what the SDKs accept (bunq-sdk's `security.is_valid_response_body`).
    pub fn sign(&self, body: &[u8]) -> Result<String, ring::error::Unspecified> {
        let mut signature = vec![0; self.pair.public().modulus_len()];
        self.pair
            .sign(&RSA_PKCS1_SHA256, &self.rng, body, &mut signature)?;
        Ok(STANDARD.encode(signature))
    }

    /// The public key as DER `RSAPublicKey` (PKCS#1), for comparing keys and for a
    /// verifier.
    pub fn public_key_der(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The public key as key holders are given it: a PEM `PUBLIC KEY`
    /// (SubjectPublicKeyInfo), as bunq's installation hands out its server key and as
    /// `openssl pkey -pubout` prints it.
    pub fn public_key_pem(&self) -> String {
        // SEQUENCE { SEQUENCE { rsaEncryption, NULL }, BIT STRING { RSAPublicKey } }
        const RSA_ENCRYPTION: &[u8] = &[
            0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05, 0x00,
        ];
        let mut bits = vec![0]; // no unused bits
        bits.extend_from_slice(self.public_key_der());
        let mut info = der(0x30, RSA_ENCRYPTION);
        info.extend(der(0x03, &bits));
        let spki = der(0x30, &info);
        let mut pem = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in STANDARD.encode(spki).as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END PUBLIC KEY-----\n");
        pem
    }
}

/// One DER element: tag, definite length, content.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(content);
    out
}

impl fmt::Debug for ResponseSigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The same key pair: a public key has one private key.
impl PartialEq for ResponseSigningKey {
    fn eq(&self, other: &Self) -> bool {
        self.public_key_der() == other.public_key_der()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
    use std::process::Command;

    /// A new RSA key written by `openssl genpkey` (PKCS#8 PEM), as the README says.
    fn openssl_key(dir: &Path, name: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .arg("-out")
            .arg(&path)
            .output()
            .expect("openssl, to make a test key");
        assert!(out.status.success(), "{out:?}");
        path
    }

    #[test]
    fn signs_the_body_so_the_public_key_verifies_it() {
        let dir = tempfile::tempdir().unwrap();
        let key = ResponseSigningKey::load(&openssl_key(dir.path(), "k.pem")).unwrap();
        let body = br#"{"Response":[{"Id":{"id":7}}]}"#;
        let signature = STANDARD.decode(key.sign(body).unwrap()).unwrap();
        assert_eq!(signature.len(), 256);
        let public = UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, key.public_key_der());
        public.verify(body, &signature).unwrap();
        assert!(public.verify(b"{}", &signature).is_err());
        assert_eq!(format!("{key:?}"), "<redacted>");
        assert_eq!(key, key.clone());
        let other = ResponseSigningKey::load(&openssl_key(dir.path(), "o.pem")).unwrap();
        assert_ne!(key, other);
    }

    #[test]
    fn the_public_key_pem_is_what_openssl_prints() {
        let dir = tempfile::tempdir().unwrap();
        for bits in ["2048", "3072", "4096"] {
            let path = dir.path().join(format!("{bits}.pem"));
            let out = Command::new("openssl")
                .args(["genpkey", "-algorithm", "RSA", "-pkeyopt"])
                .arg(format!("rsa_keygen_bits:{bits}"))
                .arg("-out")
                .arg(&path)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let out = Command::new("openssl")
                .args(["pkey", "-pubout", "-in"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            let key = ResponseSigningKey::load(&path).unwrap();
            assert_eq!(key.public_key_pem(), String::from_utf8(out.stdout).unwrap());
        }
    }

    #[test]
    fn what_cannot_sign_is_refused_with_the_file_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = ResponseSigningKey::load(&missing).unwrap_err();
        assert!(
            e.contains("missing.pem") && e.contains("cannot be read"),
            "{e}"
        );
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a key\n").unwrap();
        let e = ResponseSigningKey::load(&junk).unwrap_err();
        assert!(
            e.contains("junk.pem") && e.contains("no PEM private key"),
            "{e}"
        );
        let ec = dir.path().join("ec.pem");
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .arg("-out")
            .arg(&ec)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let e = ResponseSigningKey::load(&ec).unwrap_err();
        assert!(e.contains("ec.pem") && e.contains("RSA"), "{e}");
        let small = dir.path().join("small.pem");
        let out = Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:1024",
            ])
            .arg("-out")
            .arg(&small)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        let e = ResponseSigningKey::load(&small).unwrap_err();
        assert!(e.contains("small.pem") && e.contains("2048 to 4096"), "{e}");
    }

    #[test]
    fn the_key_is_read_relative_to_the_file_listed_by_its_path_and_kept_on_reload() {
        use crate::config::Config;
        let dir = tempfile::tempdir().unwrap();
        openssl_key(dir.path(), "server-key.pem");
        openssl_key(dir.path(), "next-key.pem");
        std::fs::write(dir.path().join("junk.pem"), "-----BEGIN PRIVATE KEY-----\n").unwrap();
        let with = |name: &str| format!("[auth]\nresponse_signing_key = \"{name}\"\n");

        let unsigned = Config::parse("", dir.path()).unwrap();
        assert_eq!(unsigned.auth.response_signing_key, None);
        let signed = Config::parse(&with("server-key.pem"), dir.path()).unwrap();
        assert!(signed.auth.response_signing_key.is_some());
        assert!(
            !format!("{signed:?}").contains("PRIVATE"),
            "the key shows in the config's Debug"
        );

        for bad in ["junk.pem", "absent.pem"] {
            let e = Config::parse(&with(bad), dir.path()).unwrap_err();
            assert_eq!(e.0.len(), 1, "{e}");
            assert_eq!(e.0[0].key, "auth.response_signing_key", "{e}");
            assert_eq!(e.0[0].line, Some(2), "{e}");
            assert!(e.0[0].message.contains(bad), "{e}");
        }

        // A reload keeps the running key and names it; the same key again is no change.
        let next = Config::parse(&with("next-key.pem"), dir.path()).unwrap();
        assert_eq!(
            signed.fixed_differences(&next),
            ["auth.response_signing_key"]
        );
        assert_eq!(
            signed.fixed_differences(&unsigned),
            ["auth.response_signing_key"]
        );
        let again = Config::parse(&with("server-key.pem"), dir.path()).unwrap();
        assert!(signed.fixed_differences(&again).is_empty());
        let applied = signed.reloaded(&next);
        assert_eq!(
            applied.auth.response_signing_key,
            signed.auth.response_signing_key
        );
        assert_eq!(unsigned.reloaded(&signed).auth.response_signing_key, None);
    }
}
