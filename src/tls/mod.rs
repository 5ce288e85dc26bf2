//! TLS material and rustls configuration: certificate pairs chosen by SNI on the public listener,
//! and the verifying client that upstream connections use. Nothing here knows HTTP.

mod material;
mod server;
mod upstream;

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;

pub use material::{
    CertificateInfo, LoadedPair, fingerprint, load_pair, load_roots, read_certificates,
};
pub use server::{CertificateStore, MinVersion, ServerTls, ServerTlsOptions};
pub use upstream::{UpstreamProtocol, UpstreamStream, UpstreamTls};

/// Why TLS material could not be loaded. Each names the file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    Certificate { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("{}: the key does not belong to the certificate {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("{0}")]
    Rustls(String),
}

/// The one cryptography provider of the process: ring (small, quick to build; no C toolchain
/// beyond what ring itself needs).
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

/// What a client connection's TLS session tells the requests on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSession {
    /// `TLSv1.2` or `TLSv1.3`, for the request log.
    pub version: &'static str,
    /// The fingerprint of the certificate the client presented, verified against `client_ca`.
    pub certificate: Option<crate::snapshot::KeyDigest>,
}

impl ClientSession {
    /// What a finished handshake on `connection` agreed.
    pub fn of(connection: &rustls::ServerConnection) -> ClientSession {
        ClientSession {
            version: match connection.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "TLS",
            },
            certificate: connection
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|der| fingerprint(der)),
        }
    }
}
