//! Test certificates made on the spot with rcgen (a CA, server and client certificates, expired
//! ones), written as PEM files, and rustls clients that trust the test CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

/// A certificate authority made for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
    pub der: CertificateDer<'static>,
}

/// A certificate with its key, as PEM and DER.
pub struct TestCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
}

impl TestCert {
    /// Writes `<stem>.pem` and `<stem>.key` into `dir`; returns both paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write cert");
        std::fs::write(&key, &self.key_pem).expect("write key");
        (cert, key)
    }

    /// The hex SHA-256 of the DER, as `client_certificates` stores it.
    pub fn sha256(&self) -> String {
        apiward::tls::fingerprint(&self.der).to_hex()
    }

    pub fn key_der(&self) -> PrivateKeyDer<'static> {
        use rustls::pki_types::pem::PemObject;
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("test key")
    }
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("self-sign ca");
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes the CA certificate to `dir/<stem>.pem`.
    pub fn write(&self, dir: &Path, stem: &str) -> PathBuf {
        let path = dir.join(format!("{stem}.pem"));
        std::fs::write(&path, &self.pem).expect("write ca");
        path
    }

    /// A server certificate for `names`, valid from yesterday for `days` days (negative: expired).
    pub fn server_cert_valid_for(&self, names: &[&str], days: i64) -> TestCert {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("server params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("server"),
        );
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::days(1 + (-days).max(0));
        params.not_after = now + time::Duration::days(days);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    pub fn server_cert(&self, names: &[&str]) -> TestCert {
        self.server_cert_valid_for(names, 365)
    }

    /// A client certificate with `common_name`.
    pub fn client_cert(&self, common_name: &str) -> TestCert {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }

    fn sign(&self, params: CertificateParams) -> TestCert {
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server presenting `cert`, offering `alpn` (an independent server: an upstream).
pub fn server_config(cert: &TestCert, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der.clone()], cert.key_der())
        .expect("server certificate");
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A rustls client trusting `ca`, offering `alpn`, presenting `client` if given.
pub fn client_config(
    ca: &TestCa,
    alpn: &[&[u8]],
    client: Option<&TestCert>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).expect("trust test ca");
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(vec![c.der.clone()], c.key_der())
            .expect("client cert"),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A TLS connection to `addr`, sending `sni` (an IP address sends none).
pub async fn connect(
    addr: std::net::SocketAddr,
    sni: &str,
    config: Arc<rustls::ClientConfig>,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::try_from(sni.to_string())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// The certificate the server presented on `stream`.
pub fn peer_certificate(
    stream: &tokio_rustls::client::TlsStream<TcpStream>,
) -> CertificateDer<'static> {
    stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .cloned()
        .expect("the server presented a certificate")
}

/// Accepts any server certificate: only for tests that look at which certificate was sent.
#[derive(Debug)]
struct LooksOnly(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for LooksOnly {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
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
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS connection that sends `sni` (none for an IP address) and accepts whatever certificate
/// comes back, to see which one the server chose.
pub async fn connect_looking_only(
    addr: std::net::SocketAddr,
    sni: &str,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(LooksOnly(provider())))
        .with_no_client_auth();
    connect(addr, sni, Arc::new(config))
        .await
        .expect("handshake")
}

/// An HTTP/1.1 or HTTP/2 client connection, over TLS or plain TCP, sending whole requests.
pub struct HttpConnection {
    sender: Sender,
    /// `https://name` or `http://addr`: HTTP/2 requests carry it as `:scheme` and `:authority`.
    origin: String,
    host: String,
}

enum Sender {
    H1(hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<http_body_util::Full<bytes::Bytes>>),
}

impl HttpConnection {
    /// Over TLS to `addr` with SNI `name`, speaking what ALPN agreed (`alpn` offered).
    pub async fn tls(
        addr: std::net::SocketAddr,
        name: &str,
        config: Arc<rustls::ClientConfig>,
    ) -> HttpConnection {
        let stream = connect(addr, name, config).await.expect("TLS handshake");
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        HttpConnection::over(stream, h2, format!("https://{name}"), name.to_string()).await
    }

    /// HTTP/2 with prior knowledge (h2c) over plain TCP.
    pub async fn h2c(addr: std::net::SocketAddr) -> HttpConnection {
        let tcp = TcpStream::connect(addr).await.expect("connect");
        HttpConnection::over(tcp, true, format!("http://{addr}"), addr.to_string()).await
    }

    async fn over<S>(stream: S, h2: bool, origin: String, host: String) -> HttpConnection
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let io = hyper_util::rt::TokioIo::new(stream);
        let sender = if h2 {
            let (sender, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
                    .await
                    .expect("HTTP/2 handshake");
            tokio::spawn(conn);
            Sender::H2(sender)
        } else {
            let (sender, conn) = hyper::client::conn::http1::handshake(io)
                .await
                .expect("HTTP/1 handshake");
            tokio::spawn(conn);
            Sender::H1(sender)
        };
        HttpConnection {
            sender,
            origin,
            host,
        }
    }

    pub fn is_h2(&self) -> bool {
        matches!(self.sender, Sender::H2(_))
    }

    /// Sends one request and reads the whole response.
    pub async fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> super::Reply {
        use http_body_util::BodyExt;
        let mut builder = http::Request::builder().method(method);
        builder = match self.sender {
            Sender::H1(_) => builder.uri(path).header("host", &self.host),
            Sender::H2(_) => builder
                .uri(format!("{}{path}", self.origin))
                .version(http::Version::HTTP_2),
        };
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        let request = builder
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .expect("request");
        let sent = async {
            match &mut self.sender {
                Sender::H1(s) => {
                    s.ready().await?;
                    s.send_request(request).await
                }
                Sender::H2(s) => {
                    s.ready().await?;
                    s.send_request(request).await
                }
            }
        };
        let response = tokio::time::timeout(std::time::Duration::from_secs(20), sent)
            .await
            .expect("no response within 20s")
            .expect("request failed");
        let (parts, body) = response.into_parts();
        let body = body.collect().await.expect("body").to_bytes();
        super::Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }
}

/// Certificates for a gateway test: a CA, a pair for `api.example.org` and one for
/// `*.eu.example.org`, a client CA, all written to a directory of their own.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca: TestCa,
    pub api: TestCert,
    pub eu: TestCert,
    pub clients: TestCa,
}

impl Pki {
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new("apiward test CA");
        let api = ca.server_cert(&["api.example.org"]);
        let eu = ca.server_cert(&["*.eu.example.org"]);
        api.write(dir.path(), "api");
        eu.write(dir.path(), "eu");
        let clients = TestCa::new("apiward test client CA");
        clients.write(dir.path(), "clients-ca");
        Pki {
            dir,
            ca,
            api,
            eu,
            clients,
        }
    }

    pub fn path(&self, file: &str) -> String {
        self.dir.path().join(file).display().to_string()
    }

    /// `[server.tls]` with both pairs (api first, the default) and `extra` lines.
    pub fn server_tls(&self, extra: &str) -> String {
        format!(
            "[server.tls]\ncertificates = [\n  {{ cert = \"{}\", key = \"{}\" }},\n  {{ cert = \"{}\", key = \"{}\" }},\n]\n{extra}\n",
            self.path("api.pem"),
            self.path("api.key"),
            self.path("eu.pem"),
            self.path("eu.key"),
        )
    }

    /// `toml` (made by `common::config`) with `[server.tls]` added.
    pub fn with_tls(&self, toml: &str, extra: &str) -> String {
        toml.replacen(
            "\n[upstreams.api]",
            &format!("\n{}\n[upstreams.api]", self.server_tls(extra)),
            1,
        )
    }

    /// A client trusting the test CA, offering `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        client_config(&self.ca, alpn, None)
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}

/// An HTTP/2-only upstream that streams each request body frame back as it arrives, then
/// trailers; h2c with prior knowledge, or over TLS with `tls` (whose ALPN should offer `h2`).
/// Each response says the `te` it received (`x-seen-te`) and its HTTP version (`x-seen-version`).
pub async fn grpc_style_upstream(tls: Option<Arc<rustls::ServerConfig>>) -> std::net::SocketAddr {
    use hyper::body::{Body, Frame};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tls = tls.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let te = req
                            .headers()
                            .get("te")
                            .map(|v| v.to_str().unwrap_or("").to_string())
                            .unwrap_or_default();
                        let version = format!("{:?}", req.version());
                        let (mut tx, body) = http_body_util::channel::Channel::<
                            bytes::Bytes,
                            std::convert::Infallible,
                        >::new(4);
                        let mut incoming = req.into_body();
                        tokio::spawn(async move {
                            while let Some(Ok(frame)) = std::future::poll_fn(|cx| {
                                std::pin::Pin::new(&mut incoming).poll_frame(cx)
                            })
                            .await
                            {
                                if let Ok(data) = frame.into_data() {
                                    let _ = tx.send(Frame::data(data)).await;
                                }
                            }
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            trailers.insert("grpc-message", http::HeaderValue::from_static("done"));
                            let _ = tx.send_trailers(trailers).await;
                        });
                        let response = http::Response::builder()
                            .header("content-type", "application/grpc")
                            .header("x-seen-te", te)
                            .header("x-seen-version", version)
                            .body(body)
                            .expect("response");
                        Ok::<_, std::convert::Infallible>(response)
                    },
                );
                let h2 =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
                match tls {
                    None => {
                        let _ = h2
                            .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                            .await;
                    }
                    Some(config) => {
                        if let Ok(stream) =
                            tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                        {
                            let _ = h2
                                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                                .await;
                        }
                    }
                }
            });
        }
    });
    addr
}
