//! TLS material and rustls configuration: certificate pairs chosen by SNI on the public listener,
//! and the verifying client that upstream connections use. Nothing here knows HTTP.

mod material;
mod provider;
mod server;
mod upstream;

pub use material::{
    CertificateInfo, LoadedPair, fingerprint, load_pair, load_roots, read_certificates,
};
pub use provider::{TlsError, provider};
pub use server::{CertificateStore, MinVersion, ServerTls, ServerTlsOptions};
pub use upstream::{UpstreamProtocol, UpstreamStream, UpstreamTls};

/// What a client connection's TLS session tells the requests on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientSession {
    /// `TLSv1.2` or `TLSv1.3`, for the request log.
    pub version: &'static str,
    /// The fingerprint of the certificate the client presented, verified against `client_ca`.
    pub certificate: Option<crate::snapshot::users::KeyDigest>,
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
