//! The public listener: accepts connections, decides each request, and forwards the allowed ones.

mod echo;
pub mod headers;
mod io;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::auth::password::PasswordVerifier;
use crate::auth::{self, Outcome, RequestFacts, credential};
use crate::config::ConfigErrors;
use crate::config::reload::{self, ConfigStore, ReloadOutcome, ReloadTrigger};
use crate::refusal::Refusal;
use crate::snapshot::UpstreamTarget;

/// Every response body: the upstream's, streamed, or one the gateway made.
pub type ResponseBody = Either<Incoming, Full<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(ConfigErrors),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot watch the configuration file: {0}")]
    Watch(#[from] notify::Error),
}

/// How `start` runs the gateway.
#[derive(Debug, Clone)]
pub struct Options {
    /// Reload when the configuration file changes.
    pub watch_config: bool,
    /// Reload on SIGHUP.
    pub reload_on_sighup: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            watch_config: true,
            reload_on_sighup: true,
        }
    }
}

/// A running gateway.
pub struct Gateway {
    local_addr: SocketAddr,
    store: Arc<ConfigStore>,
    shutdown: watch::Sender<bool>,
    serving: JoinHandle<()>,
    reload_triggers: mpsc::UnboundedSender<ReloadTrigger>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl Gateway {
    /// Loads the configuration, binds (or adopts) the listener and starts serving.
    pub async fn start(
        config_path: &Path,
        listener: Option<std::net::TcpListener>,
        options: Options,
    ) -> Result<Gateway, StartError> {
        let store = ConfigStore::open(config_path).map_err(StartError::Config)?;
        let settings = store.load().server.clone();
        let listener = match listener {
            Some(l) => {
                l.set_nonblocking(true).map_err(|source| StartError::Bind {
                    addr: settings.listen,
                    source,
                })?;
                TcpListener::from_std(l)
            }
            None => bind(settings.listen),
        }
        .map_err(|source| StartError::Bind {
            addr: settings.listen,
            source,
        })?;
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: settings.listen,
            source,
        })?;

        let (reload_triggers, triggers_rx) = mpsc::unbounded_channel();
        let watcher = if options.watch_config {
            Some(reload::watch_file(config_path, reload_triggers.clone())?)
        } else {
            None
        };
        tokio::spawn(reload::reload_loop(
            Arc::clone(&store),
            triggers_rx,
            |_: &ReloadOutcome| {},
        ));
        if options.reload_on_sighup {
            spawn_sighup_forwarder(reload_triggers.clone());
        }

        let proxy = Arc::new(Proxy::new(Arc::clone(&store), &settings));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let serving = tokio::spawn(accept_loop(proxy, listener, shutdown_rx));
        tracing::info!(
            listen = %local_addr,
            config = %config_path.display(),
            users = store.load().users.len(),
            "apiward is serving"
        );
        Ok(Gateway {
            local_addr,
            store,
            shutdown,
            serving,
            reload_triggers,
            _watcher: watcher,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn store(&self) -> &Arc<ConfigStore> {
        &self.store
    }

    /// Asks for a reload, as SIGHUP does.
    pub fn request_reload(&self) {
        let _ = self.reload_triggers.send(ReloadTrigger::Signal);
    }

    /// Stops accepting, lets in-flight requests finish (up to `shutdown_timeout`), and returns.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.serving.await;
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        // "[::]:8080" serves IPv4 clients too (as ::ffff:a.b.c.d), whatever the host's default.
        socket.set_only_v6(false)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

#[cfg(unix)]
fn spawn_sighup_forwarder(triggers: mpsc::UnboundedSender<ReloadTrigger>) {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(mut hangups) => {
            tokio::spawn(async move {
                while hangups.recv().await.is_some() {
                    if triggers.send(ReloadTrigger::Signal).is_err() {
                        return;
                    }
                }
            });
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload by editing the file")
        }
    }
}

#[cfg(not(unix))]
fn spawn_sighup_forwarder(_: mpsc::UnboundedSender<ReloadTrigger>) {}

async fn accept_loop(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = GracefulShutdown::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => serve_connection(&proxy, &graceful, stream, peer),
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    let grace = proxy.store.load().server.shutdown_timeout;
    tracing::info!(
        open_connections = graceful.count(),
        "shutting down: no new connections, letting requests finish"
    );
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "shutdown_timeout reached with requests still in flight; closing them"),
    }
}

fn serve_connection(
    proxy: &Arc<Proxy>,
    graceful: &GracefulShutdown,
    stream: TcpStream,
    peer: SocketAddr,
) {
    let _ = stream.set_nodelay(true);
    let (header_read_timeout, idle_timeout, max_header_bytes) = {
        let s = &proxy.store.load().server;
        (s.header_read_timeout, s.idle_timeout, s.max_header_bytes)
    };
    let io = TokioIo::new(io::IdleTimeout::new(stream, idle_timeout));
    let per_connection = Arc::clone(proxy);
    let service = service_fn(move |request| {
        let proxy = Arc::clone(&per_connection);
        async move { Ok::<_, Infallible>(proxy.handle(request, peer).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_header_size(max_header_bytes)
        .keep_alive(true)
        .serve_connection(io, service);
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
    });
}

/// Shared by every connection: the configuration and the upstream connection pools.
struct Proxy {
    store: Arc<ConfigStore>,
    /// One pool for all upstreams, keyed by host and port; it outlives reloads, so an upstream
    /// whose URL did not change keeps its warm connections.
    client: Client<HttpConnector, Incoming>,
    /// Basic-auth verification: Argon2id behind a success cache and a failure limiter. It lives
    /// as long as the process, not a snapshot: its cache is keyed by the stored hash, so a
    /// reload that changes a password misses it while other reloads keep it warm.
    passwords: PasswordVerifier,
}

/// Everything needed to forward an allowed request, taken out of the snapshot so that the
/// snapshot is not held while the upstream answers.
struct Forward {
    target: UpstreamTarget,
    path_and_query: PathAndQuery,
    user: HeaderValue,
    group: HeaderValue,
    peer_is_trusted: bool,
    upstream_timeout: std::time::Duration,
    key_header: http::HeaderName,
    credential_source: credential::CredentialSource,
}

impl Proxy {
    fn new(store: Arc<ConfigStore>, settings: &crate::snapshot::ServerSettings) -> Proxy {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(settings.connect_timeout));
        connector.enforce_http(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .set_host(false)
            .build(connector);
        Proxy {
            store,
            client,
            passwords: PasswordVerifier::new(),
        }
    }

    async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<ResponseBody> {
        if !framing_is_unambiguous(request.headers()) {
            return refusal_response(Refusal::BadFraming);
        }
        let forward = match self.decide(&request, peer) {
            Ok(f) => f,
            Err(refusal) => return refusal_response(refusal),
        };
        self.forward(request, peer, forward).await
    }

    /// Runs the decision against the current snapshot and keeps only what forwarding needs.
    fn decide(&self, request: &Request<Incoming>, peer: SocketAddr) -> Result<Forward, Refusal> {
        let snapshot = self.store.load();
        let client = headers::client_address(&snapshot, peer, request.headers());
        let mut scratch = String::new();
        let (credential, credential_source) =
            credential::extract(request.headers(), &snapshot.server.key_header, &mut scratch);
        let facts = RequestFacts {
            method: request.method(),
            path: request.uri().path(),
            credential,
            client,
            now: reload::now_unix(),
        };
        let decision = auth::decide(&snapshot, &facts, &self.passwords);
        let grant = match decision.outcome {
            Outcome::Allowed(grant) => grant,
            Outcome::Refused(refusal) => return Err(refusal),
        };
        let user = decision.user.map_or("", |u| &u.id);
        Ok(Forward {
            target: grant.upstream.target.clone(),
            path_and_query: forwarded_path(&grant.upstream.target, &grant.path, request.uri())?,
            user: HeaderValue::from_str(user).map_err(|_| Refusal::Forbidden)?,
            group: HeaderValue::from_str(&grant.group.name).map_err(|_| Refusal::Forbidden)?,
            peer_is_trusted: snapshot.is_trusted_proxy(peer.ip()),
            upstream_timeout: snapshot.server.upstream_timeout,
            key_header: snapshot.server.key_header.clone(),
            credential_source,
        })
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        forward: Forward,
    ) -> Response<ResponseBody> {
        let (mut parts, body) = request.into_parts();
        let original_host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        headers::strip_request(
            &mut parts.headers,
            &forward.key_header,
            forward.credential_source,
        );
        headers::add_forwarding(
            &mut parts.headers,
            original_host,
            &headers::Forwarded {
                peer: crate::auth::address::canonical(peer.ip()),
                peer_is_trusted: forward.peer_is_trusted,
                proto: "http",
                user: forward.user.to_str().unwrap_or_default(),
                group: forward.group.to_str().unwrap_or_default(),
            },
        );
        match forward.target {
            UpstreamTarget::Echo => {
                parts.uri = Uri::from(forward.path_and_query);
                echo::respond(Request::from_parts(parts, body))
                    .await
                    .map(|b| Either::Right(Full::new(b)))
            }
            UpstreamTarget::Http {
                scheme, authority, ..
            } => {
                if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                    parts.headers.insert(HOST, host);
                }
                let mut uri_parts = http::uri::Parts::default();
                uri_parts.scheme = Some(scheme);
                uri_parts.authority = Some(authority);
                uri_parts.path_and_query = Some(forward.path_and_query);
                parts.uri = match Uri::from_parts(uri_parts) {
                    Ok(u) => u,
                    Err(_) => return refusal_response(Refusal::BadPath),
                };
                parts.version = http::Version::HTTP_11;
                let upstream_request = Request::from_parts(parts, body);
                match tokio::time::timeout(
                    forward.upstream_timeout,
                    self.client.request(upstream_request),
                )
                .await
                {
                    Ok(Ok(response)) => {
                        let (mut parts, body) = response.into_parts();
                        headers::remove_hop_by_hop(&mut parts.headers);
                        Response::from_parts(parts, Either::Left(body))
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, connect = e.is_connect(), "upstream request failed");
                        refusal_response(Refusal::UpstreamUnavailable)
                    }
                    Err(_) => refusal_response(Refusal::UpstreamTimeout),
                }
            }
        }
    }
}

/// hyper already refuses conflicting lengths and `Content-Length` with `Transfer-Encoding`
/// (vendor/hyper); what it still accepts is a coding list ending in chunked, such as
/// `gzip, chunked`, which a proxy must not pass on.
fn framing_is_unambiguous(headers: &http::HeaderMap) -> bool {
    let mut codings = headers.get_all(http::header::TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(only), None) => only.as_bytes().eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    }
}

/// The upstream's base path, then the normalised path, then the query exactly as received.
fn forwarded_path(
    target: &UpstreamTarget,
    path: &str,
    original: &Uri,
) -> Result<PathAndQuery, Refusal> {
    let base = match target {
        UpstreamTarget::Http { base_path, .. } => &**base_path,
        UpstreamTarget::Echo => "",
    };
    if base.is_empty() && path == original.path() {
        if let Some(pq) = original.path_and_query() {
            return Ok(pq.clone());
        }
    }
    let mut text = String::with_capacity(
        base.len() + path.len() + original.query().map_or(0, |q| q.len() + 1),
    );
    text.push_str(base);
    text.push_str(path);
    if let Some(q) = original.query() {
        text.push('?');
        text.push_str(q);
    }
    PathAndQuery::try_from(text).map_err(|_| Refusal::BadPath)
}

fn refusal_response(refusal: Refusal) -> Response<ResponseBody> {
    refusal.response::<Full<Bytes>>().map(Either::Right)
}
