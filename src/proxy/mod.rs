//! The public listener: accepts connections, decides each request, and forwards the allowed ones.

mod body;
mod echo;
pub mod headers;
mod io;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

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

use crate::admin::{self, AdminState};
use crate::auth::password::PasswordVerifier;
use crate::auth::{self, Outcome, RequestFacts, credential};
use crate::config::ConfigErrors;
use crate::config::reload::{self, ConfigStore, ReloadOutcome, ReloadTrigger};
use crate::observe::metrics::UpstreamErrorKind;
use crate::observe::{RequestRecord, Telemetry};
use crate::refusal::Refusal;
use crate::snapshot::AccessLogTarget;
use crate::snapshot::UpstreamTarget;
use body::{Counted, Finish, Logged};

/// A response body before it is wrapped for logging: the upstream's, streamed, or one the
/// gateway made.
pub type ResponseBody = Either<Incoming, Full<Bytes>>;

/// What the client receives: a response body that records the request when it ends.
pub type LoggedBody = Logged<ResponseBody>;

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
    admin_addr: Option<SocketAddr>,
    store: Arc<ConfigStore>,
    admin: Arc<AdminState>,
    shutdown: watch::Sender<bool>,
    admin_shutdown: watch::Sender<bool>,
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
        Gateway::start_with_store(store, listener, options).await
    }

    /// Starts serving a configuration already loaded by `ConfigStore::open`.
    pub async fn start_with_store(
        store: Arc<ConfigStore>,
        listener: Option<std::net::TcpListener>,
        options: Options,
    ) -> Result<Gateway, StartError> {
        let config_path = store.path().to_path_buf();
        let config_path = config_path.as_path();
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

        let admin_listener = match settings.admin_listen {
            Some(addr) => Some(bind(addr).map_err(|source| StartError::Bind { addr, source })?),
            None => None,
        };
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

        let telemetry = Arc::new(Telemetry::new());
        telemetry.metrics.set_generation(store.generation());
        tokio::spawn(metrics_upkeep(Arc::downgrade(&telemetry)));
        let (reload_triggers, triggers_rx) = mpsc::unbounded_channel();
        let watcher = if options.watch_config {
            Some(reload::watch_file(config_path, reload_triggers.clone())?)
        } else {
            None
        };
        let reload_store = Arc::clone(&store);
        let reload_telemetry = Arc::clone(&telemetry);
        tokio::spawn(reload::reload_loop(
            Arc::clone(&store),
            triggers_rx,
            move |outcome: &ReloadOutcome| {
                reload_telemetry.reloaded(outcome, &reload_store.load(), reload_store.generation());
            },
        ));
        if options.reload_on_sighup {
            spawn_sighup_forwarder(reload_triggers.clone());
        }

        let proxy = Arc::new(Proxy::new(
            Arc::clone(&store),
            &settings,
            Arc::clone(&telemetry),
        ));
        let (shutdown, shutdown_rx) = watch::channel(false);
        // The admin listener outlives the public one during shutdown, so /readyz can say 503
        // while requests drain.
        let (admin_shutdown, admin_shutdown_rx) = watch::channel(false);
        let admin = Arc::new(AdminState {
            store: Arc::clone(&store),
            telemetry: Arc::clone(&telemetry),
            started: Instant::now(),
            public_addr: local_addr,
            ready: AtomicBool::new(true),
        });
        if let Some(listener) = admin_listener {
            tokio::spawn(admin::serve(
                listener,
                Arc::clone(&admin),
                admin_shutdown_rx,
            ));
        }
        let serving = tokio::spawn(accept_loop(proxy, listener, shutdown_rx));
        tracing::info!(
            listen = %local_addr,
            admin = %admin_addr.map_or_else(|| "off".to_string(), |a| a.to_string()),
            config = %config_path.display(),
            users = store.load().users.len(),
            "apiward is serving"
        );
        Ok(Gateway {
            local_addr,
            admin_addr,
            store,
            admin,
            shutdown,
            admin_shutdown,
            serving,
            reload_triggers,
            _watcher: watcher,
        })
    }

    /// The admin listener's address, when `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Metrics, key usage and request ids of this gateway.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.admin.telemetry
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
        self.admin.ready.store(false, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        let _ = self.serving.await;
        let _ = self.admin_shutdown.send(true);
    }
}

/// Folds histogram samples into buckets every few seconds, for as long as the gateway lives.
async fn metrics_upkeep(telemetry: std::sync::Weak<Telemetry>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tick.tick().await;
        match telemetry.upgrade() {
            Some(t) => t.metrics.run_upkeep(),
            None => return,
        }
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
    let open = proxy.telemetry.metrics.open_connections();
    open.increment(1.0);
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(%peer, error = %e, "connection ended with an error");
        }
        open.decrement(1.0);
    });
}

/// Shared by every connection: the configuration, the upstream connection pools, telemetry.
struct Proxy {
    store: Arc<ConfigStore>,
    /// One pool for all upstreams, keyed by host and port; it outlives reloads, so an upstream
    /// whose URL did not change keeps its warm connections.
    client: Client<HttpConnector, Counted<Incoming>>,
    /// Basic-auth verification: Argon2id behind a success cache and a failure limiter. It lives
    /// as long as the process, not a snapshot: its cache is keyed by the stored hash, so a
    /// reload that changes a password misses it while other reloads keep it warm.
    passwords: PasswordVerifier,
    telemetry: Arc<Telemetry>,
}

/// Everything needed to forward an allowed request, taken out of the snapshot so that the
/// snapshot is not held while the upstream answers.
struct Forward {
    target: UpstreamTarget,
    upstream_name: Arc<str>,
    path_and_query: PathAndQuery,
    user: HeaderValue,
    group: HeaderValue,
    peer_is_trusted: bool,
    upstream_timeout: std::time::Duration,
    key_header: http::HeaderName,
    credential_source: credential::CredentialSource,
}

static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

impl Proxy {
    fn new(
        store: Arc<ConfigStore>,
        settings: &crate::snapshot::ServerSettings,
        telemetry: Arc<Telemetry>,
    ) -> Proxy {
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
            telemetry,
        }
    }

    async fn handle(&self, request: Request<Incoming>, peer: SocketAddr) -> Response<LoggedBody> {
        let (outcome, mut record) = self.decide(&request, peer);
        let bytes_in = Arc::new(AtomicU64::new(0));
        let mut response = match outcome {
            Ok(forward) => {
                self.forward(request, peer, forward, &mut record, &bytes_in)
                    .await
            }
            Err(refusal) => refusal_response(refusal),
        };
        response
            .headers_mut()
            .insert(&X_REQUEST_ID, record.request_id.clone());
        record.status = response.status().as_u16();
        let finish = Finish {
            telemetry: Arc::clone(&self.telemetry),
            record,
            bytes_in,
        };
        response.map(|body| Logged::new(body, finish))
    }

    /// Runs the decision against the current snapshot and keeps only what forwarding needs,
    /// and what the request's log line and metrics need.
    fn decide(
        &self,
        request: &Request<Incoming>,
        peer: SocketAddr,
    ) -> (Result<Forward, Refusal>, RequestRecord) {
        let snapshot = self.store.load();
        let client = headers::client_address(&snapshot, peer, request.headers());
        let peer_is_trusted = snapshot.is_trusted_proxy(peer.ip());
        let request_id = request
            .headers()
            .get(&X_REQUEST_ID)
            .filter(|id| peer_is_trusted && is_reasonable_request_id(id))
            .cloned()
            .unwrap_or_else(|| self.telemetry.next_request_id());
        let mut record = RequestRecord {
            started: Instant::now(),
            request_id,
            client,
            user: None,
            key_prefix: None,
            method: request.method().clone(),
            path: String::new(),
            route: None,
            upstream: None,
            decision: Refusal::BadFraming.code(),
            status: 0,
            upstream_time: None,
            log: snapshot.server.access_log != AccessLogTarget::Off,
            sample: snapshot.server.access_log_sample,
        };
        if !framing_is_unambiguous(request.headers()) {
            record.path = request.uri().path().to_string();
            return (Err(Refusal::BadFraming), record);
        }
        let mut scratch = String::new();
        let (credential, credential_source) =
            credential::extract(request.headers(), &snapshot.server.key_header, &mut scratch);
        let presented_prefix = match credential {
            credential::Credential::Key(k) => Some(credential::key_prefix(k)),
            _ => None,
        };
        let facts = RequestFacts {
            method: request.method(),
            path: request.uri().path(),
            credential,
            client,
            now: reload::now_unix(),
        };
        let decision = auth::decide(&snapshot, &facts, &self.passwords);
        record.user = decision.user.map(|u| Arc::clone(&u.id));
        record.key_prefix = decision
            .key
            .and_then(|k| k.prefix.clone())
            .or_else(|| presented_prefix.map(Into::into));
        if let (Some(_), Some(digest)) = (decision.key, decision.key_digest.as_ref()) {
            self.telemetry.key_usage.touch(digest, facts.now);
        }
        let grant = match decision.outcome {
            Outcome::Allowed(grant) => grant,
            Outcome::Refused(refusal) => {
                record.decision = refusal.code();
                record.path = request.uri().path().to_string();
                return (Err(refusal), record);
            }
        };
        record.decision = "allowed";
        record.path = grant.path.to_string();
        record.route = Some(Arc::clone(&grant.route.prefix));
        record.upstream = Some(Arc::clone(&grant.upstream.name));
        let user = decision.user.map_or("", |u| &u.id);
        let forward = (|| {
            Ok::<_, Refusal>(Forward {
                target: grant.upstream.target.clone(),
                upstream_name: Arc::clone(&grant.upstream.name),
                path_and_query: forwarded_path(&grant.upstream.target, &grant.path, request.uri())?,
                user: HeaderValue::from_str(user).map_err(|_| Refusal::Forbidden)?,
                group: HeaderValue::from_str(&grant.group.name).map_err(|_| Refusal::Forbidden)?,
                peer_is_trusted,
                upstream_timeout: snapshot.server.upstream_timeout,
                key_header: snapshot.server.key_header.clone(),
                credential_source,
            })
        })();
        if let Err(refusal) = &forward {
            record.decision = refusal.code();
        }
        (forward, record)
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        forward: Forward,
        record: &mut RequestRecord,
        bytes_in: &Arc<AtomicU64>,
    ) -> Response<ResponseBody> {
        let (mut parts, body) = request.into_parts();
        let body = Counted::new(body, Arc::clone(bytes_in));
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
        parts
            .headers
            .insert(&X_REQUEST_ID, record.request_id.clone());
        let sent = Instant::now();
        match forward.target {
            UpstreamTarget::Echo => {
                parts.uri = Uri::from(forward.path_and_query);
                let response = echo::respond(Request::from_parts(parts, body)).await;
                record.upstream_time = Some(sent.elapsed());
                response.map(|b| Either::Right(Full::new(b)))
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
                    Err(_) => {
                        record.decision = Refusal::BadPath.code();
                        return refusal_response(Refusal::BadPath);
                    }
                };
                parts.version = http::Version::HTTP_11;
                let upstream_request = Request::from_parts(parts, body);
                let result = tokio::time::timeout(
                    forward.upstream_timeout,
                    self.client.request(upstream_request),
                )
                .await;
                record.upstream_time = Some(sent.elapsed());
                let failure = match result {
                    Ok(Ok(response)) => {
                        let (mut parts, body) = response.into_parts();
                        headers::remove_hop_by_hop(&mut parts.headers);
                        return Response::from_parts(parts, Either::Left(body));
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, connect = e.is_connect(), upstream = %forward.upstream_name, "upstream request failed");
                        let kind = if e.is_connect() {
                            UpstreamErrorKind::Connect
                        } else {
                            UpstreamErrorKind::Other
                        };
                        (Refusal::UpstreamUnavailable, kind)
                    }
                    Err(_) => (Refusal::UpstreamTimeout, UpstreamErrorKind::Timeout),
                };
                self.telemetry
                    .metrics
                    .upstream_error(&forward.upstream_name, failure.1);
                record.decision = failure.0.code();
                refusal_response(failure.0)
            }
        }
    }
}

/// A request id from a trusted proxy is kept only if it is short and printable.
fn is_reasonable_request_id(id: &HeaderValue) -> bool {
    !id.is_empty() && id.len() <= 128 && id.as_bytes().iter().all(|b| b.is_ascii_graphic())
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
