//! The client side: a verifying rustls configuration for one HTTPS upstream, trusting the
//! system's store or the upstream's own `ca`. Verification cannot be turned off.

use std::sync::{Arc, OnceLock};

use http::uri::Authority;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::ServerName;

use super::provider::{TlsError, provider};

/// `protocol` of an upstream: what is spoken to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
}

impl UpstreamProtocol {
    pub fn parse(text: &str) -> Option<UpstreamProtocol> {
        match text {
            "http/1.1" | "h1" => Some(UpstreamProtocol::Http1),
            "h2" => Some(UpstreamProtocol::Http2),
            _ => None,
        }
    }
}

/// How to open TLS to one upstream.
#[derive(Debug)]
pub struct UpstreamTls {
    config: Arc<ClientConfig>,
    /// The same trust and name with ALPN `http/1.1` only, whatever `protocol` says: a WebSocket
    /// handshake is HTTP/1.1's.
    http1_config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

/// The system's trust store (Debian's ca-certificates and the like), read once per process;
/// Mozilla's roots as compiled into webpki-roots when the system has none.
fn system_roots() -> Arc<RootCertStore> {
    static ROOTS: OnceLock<Arc<RootCertStore>> = OnceLock::new();
    Arc::clone(ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        let mut roots = RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            tracing::warn!(
                errors = found.errors.len(),
                "no system trust store found; HTTPS upstreams without `ca` are verified against Mozilla's root certificates as built in"
            );
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        Arc::new(roots)
    }))
}

impl UpstreamTls {
    /// `ca`: the upstream's own trust anchors; `None` trusts the system's store. `server_name`
    /// is sent as SNI and is the name the certificate must carry.
    pub fn new(
        ca: Option<Arc<RootCertStore>>,
        server_name: &str,
        protocol: UpstreamProtocol,
    ) -> Result<UpstreamTls, TlsError> {
        let server_name = ServerName::try_from(server_name.to_string())
            .map_err(|e| TlsError::Rustls(format!("{server_name:?} is not a server name: {e}")))?;
        let roots = match ca {
            Some(roots) => roots,
            None => system_roots(),
        };
        let mut config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let http1_config = Arc::new(config.clone());
        let config = match protocol {
            UpstreamProtocol::Http1 => Arc::clone(&http1_config),
            UpstreamProtocol::Http2 => {
                config.alpn_protocols = vec![b"h2".to_vec()];
                Arc::new(config)
            }
        };
        Ok(UpstreamTls {
            config,
            http1_config,
            server_name,
        })
    }

    pub fn server_name(&self) -> &ServerName<'static> {
        &self.server_name
    }

    /// The pools' key for TLS connections to `authority`, `server_name@host:port`: kept apart
    /// from plain ones to the same address, and by the name they were verified for.
    pub fn pool_key(&self, authority: &Authority) -> Authority {
        let name = self.server_name.to_str();
        Authority::try_from(format!("{name}@{}", authority.as_str()).as_str())
            .unwrap_or_else(|_| authority.clone())
    }

    /// Opens TLS over a connected stream, verifying the upstream's certificate.
    pub async fn connect<S>(&self, stream: S) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        tokio_rustls::TlsConnector::from(Arc::clone(&self.config))
            .connect(self.server_name.clone(), stream)
            .await
    }

    /// As `connect`, offering only `http/1.1` in ALPN (a WebSocket handshake, an HTTP/1.1
    /// health check).
    pub async fn connect_http1<S>(
        &self,
        stream: S,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        tokio_rustls::TlsConnector::from(Arc::clone(&self.http1_config))
            .connect(self.server_name.clone(), stream)
            .await
    }
}

/// A connection to an upstream: plain TCP, or TLS over it.
#[derive(Debug)]
pub enum UpstreamStream {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
}

impl UpstreamStream {
    /// The protocol ALPN agreed (`h2`), if TLS and any.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            UpstreamStream::Plain(_) => None,
            UpstreamStream::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }
}

impl tokio::io::AsyncRead for UpstreamStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for UpstreamStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            UpstreamStream::Plain(s) => s.is_write_vectored(),
            UpstreamStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            UpstreamStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
