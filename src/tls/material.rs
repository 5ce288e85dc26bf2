//! Reading PEM files: certificate chains, private keys and trust anchors, each checked so that a
//! broken file is refused with its name and reason before anything uses it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::provider::TlsError;
use crate::snapshot::users::KeyDigest;

/// What `/status`, `check` and the metrics say of one loaded certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    pub cert_file: PathBuf,
    /// The DNS names of the certificate's subjectAltName, lowercase, as written (`*.example.org`).
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_after: i64,
    /// Unix seconds.
    pub not_before: i64,
}

/// A certificate chain with the key that belongs to it.
#[derive(Debug, Clone)]
pub struct LoadedPair {
    pub key: Arc<CertifiedKey>,
    pub info: CertificateInfo,
}

/// The SHA-256 of a certificate's DER: what `client_certificates` stores.
pub fn fingerprint(der: &[u8]) -> KeyDigest {
    use sha2::Digest;
    KeyDigest(sha2::Sha256::digest(der).into())
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Every certificate of a PEM file, in order; an empty file is an error.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&bytes) {
        certs.push(cert.map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            reason: format!("not a readable PEM certificate: {e}"),
        })?);
    }
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            reason: "no \"BEGIN CERTIFICATE\" block in this file".into(),
        });
    }
    Ok(certs)
}

/// Loads a certificate chain and its key, and checks that the key belongs to the first
/// certificate, that every certificate of the chain parses, and that the first has DNS names.
pub fn load_pair(cert_path: &Path, key_path: &Path) -> Result<LoadedPair, TlsError> {
    let chain = read_certificates(cert_path)?;
    let mut info = None;
    for (i, der) in chain.iter().enumerate() {
        let (_, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Certificate {
                path: cert_path.to_path_buf(),
                reason: format!("certificate {} of the chain does not parse: {e}", i + 1),
            })?;
        if i == 0 {
            let names = dns_names(&cert).map_err(|reason| TlsError::Certificate {
                path: cert_path.to_path_buf(),
                reason,
            })?;
            info = Some(CertificateInfo {
                cert_file: cert_path.to_path_buf(),
                names,
                not_after: cert.validity().not_after.timestamp(),
                not_before: cert.validity().not_before.timestamp(),
            });
        }
    }
    let info = info.ok_or_else(|| TlsError::Pem {
        path: cert_path.to_path_buf(),
        reason: "no certificate in this file".into(),
    })?;
    let key_bytes = read(key_path)?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| TlsError::Key {
        path: key_path.to_path_buf(),
        reason: format!(
            "no private key (PKCS#8, PKCS#1 or SEC1 \"BEGIN … PRIVATE KEY\" block) could be read: {e}"
        ),
    })?;
    let provider = super::provider::provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| TlsError::Key {
            path: key_path.to_path_buf(),
            reason: format!("unusable private key: {e}"),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(_) => {
            return Err(TlsError::KeyMismatch {
                cert: cert_path.to_path_buf(),
                key: key_path.to_path_buf(),
            });
        }
    }
    Ok(LoadedPair {
        key: Arc::new(certified),
        info,
    })
}

/// The DNS names a certificate answers for: its subjectAltName entries (browsers and rustls
/// ignore the common name).
fn dns_names(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<Vec<String>, String> {
    use x509_parser::extensions::GeneralName;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("the subjectAltName extension does not parse: {e}"))?;
    let names: Vec<String> = san
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(name) => Some(name.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        return Err("the certificate has no DNS name in its subjectAltName: clients cannot verify it for any host name".into());
    }
    Ok(names)
}

/// Trust anchors from a PEM file of CA certificates (`client_ca`, an upstream's `ca`).
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let certs = read_certificates(path)?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| TlsError::Certificate {
            path: path.to_path_buf(),
            reason: format!("certificate {} is not a usable CA certificate: {e}", i + 1),
        })?;
    }
    Ok(roots)
}
