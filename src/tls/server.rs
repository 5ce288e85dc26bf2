//! The public listener's TLS: the certificate chosen by SNI (exact names, then wildcards, then
//! the first pair as the default), protocol versions, ALPN, session resumption and the optional
//! client-certificate verifier, as one immutable rustls `ServerConfig` per snapshot.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use super::material::{CertificateInfo, LoadedPair};
use super::provider::{TlsError, provider};

/// A certificate expiring within this many seconds (14 days) is warned about.
pub const EXPIRY_WARNING: i64 = 14 * 86_400;

/// `min_version`: the oldest TLS version accepted. Nothing older than 1.2 is ever offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MinVersion {
    #[default]
    Tls12,
    Tls13,
}

impl MinVersion {
    pub fn parse(text: &str) -> Option<MinVersion> {
        match text {
            "1.2" => Some(MinVersion::Tls12),
            "1.3" => Some(MinVersion::Tls13),
            _ => None,
        }
    }
}

/// Everything of `[server.tls]` but the certificate pairs.
#[derive(Debug, Clone)]
pub struct ServerTlsOptions {
    pub min_version: MinVersion,
    /// ALPN protocol ids in order of preference (`h2`, `http/1.1`).
    pub alpn: Vec<Vec<u8>>,
    /// Trust anchors for client certificates; `None` asks for none.
    pub client_ca: Option<RootCertStore>,
}

/// The loaded certificates, indexed by the DNS names each one carries.
#[derive(Debug)]
pub struct CertificateStore {
    keys: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, usize>,
    /// `*.example.org` is kept as `example.org`: it answers `a.example.org`, not `a.b.example.org`.
    wildcard: HashMap<String, usize>,
}

impl CertificateStore {
    /// When two certificates carry the same name, the one listed first answers for it.
    pub fn new(pairs: &[LoadedPair]) -> CertificateStore {
        let mut store = CertificateStore {
            keys: Vec::with_capacity(pairs.len()),
            exact: HashMap::new(),
            wildcard: HashMap::new(),
        };
        for (i, pair) in pairs.iter().enumerate() {
            store.keys.push(Arc::clone(&pair.key));
            for name in &pair.info.names {
                match name.strip_prefix("*.") {
                    Some(parent) => store.wildcard.entry(parent.to_string()).or_insert(i),
                    None => store.exact.entry(name.clone()).or_insert(i),
                };
            }
        }
        store
    }

    /// The certificate for a client's SNI name; the first certificate without SNI or without
    /// a match (as nginx's default server does).
    pub fn choose(&self, server_name: Option<&str>) -> Option<&Arc<CertifiedKey>> {
        let index = server_name
            .and_then(|name| {
                let lower;
                let name = if name.bytes().any(|b| b.is_ascii_uppercase()) {
                    lower = name.to_ascii_lowercase();
                    lower.as_str()
                } else {
                    name
                };
                let name = name.trim_end_matches('.');
                self.exact.get(name).copied().or_else(|| {
                    let (_, parent) = name.split_once('.')?;
                    self.wildcard.get(parent).copied()
                })
            })
            .unwrap_or(0);
        self.keys.get(index)
    }
}

impl ResolvesServerCert for CertificateStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.choose(client_hello.server_name()).cloned()
    }
}

/// The compiled `[server.tls]`: what the accept loop hands each new connection.
#[derive(Debug)]
pub struct ServerTls {
    config: Arc<ServerConfig>,
    certificates: Box<[CertificateInfo]>,
    asks_client_certificate: bool,
    files: Box<[PathBuf]>,
}

/// The session cache and the ticket maker.
type SessionState = (
    Arc<dyn StoresServerSessions>,
    Option<Arc<dyn ProducesTickets>>,
);

/// Session state shared by every `ServerConfig` the process builds, so that a reload does not
/// make every client do a full handshake again.
fn session_state() -> &'static SessionState {
    static STATE: OnceLock<SessionState> = OnceLock::new();
    STATE.get_or_init(|| {
        let cache: Arc<dyn StoresServerSessions> =
            rustls::server::ServerSessionMemoryCache::new(16 * 1024);
        let ticketer = match rustls::crypto::ring::Ticketer::new() {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::warn!(error = %e, "no TLS session tickets (resumption uses the session cache only)");
                None
            }
        };
        (cache, ticketer)
    })
}

impl ServerTls {
    /// `pairs` is not empty; the first is the default certificate. `files` are the PEM files
    /// it was read from, watched for changes.
    pub fn new(
        pairs: Vec<LoadedPair>,
        options: ServerTlsOptions,
        files: Vec<PathBuf>,
    ) -> Result<ServerTls, TlsError> {
        let versions: &[&'static rustls::SupportedProtocolVersion] = match options.min_version {
            MinVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
            MinVersion::Tls13 => &[&rustls::version::TLS13],
        };
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(versions)
            .map_err(|e| TlsError::Rustls(e.to_string()))?;
        let asks_client_certificate = options.client_ca.is_some();
        let builder = match options.client_ca {
            None => builder.with_no_client_auth(),
            Some(roots) => {
                // Asked for, never required: a client without one still reaches the decision,
                // which wants a key or a certificate from it.
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .allow_unauthenticated()
                .build()
                .map_err(|e| TlsError::Rustls(format!("client_ca: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let certificates: Box<[CertificateInfo]> = pairs.iter().map(|p| p.info.clone()).collect();
        let mut config = builder.with_cert_resolver(Arc::new(CertificateStore::new(&pairs)));
        config.alpn_protocols = options.alpn;
        let (cache, ticketer) = session_state();
        config.session_storage = Arc::clone(cache);
        if let Some(ticketer) = ticketer {
            config.ticketer = Arc::clone(ticketer);
        }
        Ok(ServerTls {
            config: Arc::new(config),
            certificates,
            asks_client_certificate,
            files: files.into_boxed_slice(),
        })
    }

    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(Arc::clone(&self.config))
    }

    /// In the order of the file; the first is the default.
    pub fn certificates(&self) -> &[CertificateInfo] {
        &self.certificates
    }

    /// Whether `client_ca` is set.
    pub fn asks_client_certificate(&self) -> bool {
        self.asks_client_certificate
    }

    /// What an operator must hear about the certificates at `now` (Unix seconds): each one
    /// expired, not valid yet, or expiring within `EXPIRY_WARNING`.
    pub fn expiry_warnings(&self, now: i64) -> Vec<String> {
        let mut warnings = Vec::new();
        for c in self.certificates.iter() {
            let what = format!("{} ({})", c.cert_file.display(), c.names.join(", "));
            let not_after = crate::snapshot::users::rfc3339(c.not_after);
            if c.not_after <= now {
                warnings.push(format!(
                    "{what} expired at {not_after}: clients refuse it; renew it"
                ));
            } else if c.not_after - now <= EXPIRY_WARNING {
                let days = (c.not_after - now) / 86_400;
                warnings.push(format!(
                    "{what} expires at {not_after}, in {days} day(s): renew it"
                ));
            }
            if c.not_before > now {
                warnings.push(format!(
                    "{what} is not valid before {}: clients refuse it until then",
                    crate::snapshot::users::rfc3339(c.not_before)
                ));
            }
        }
        warnings
    }

    /// The PEM files this was loaded from.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
}
