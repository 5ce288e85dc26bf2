//! The public listener: accepts connections, decides each request, and forwards the allowed ones.

mod body;
mod echo;
mod fast;
mod handler;
pub mod headers;
mod io;
pub mod upstream;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::admin::{self, AdminState};
use crate::config::ConfigErrors;
use crate::config::reload::{self, ConfigStore, ReloadOutcome, ReloadTrigger};
use crate::observe::Telemetry;
use body::Logged;
use handler::Proxy;

/// A response body before it is wrapped for logging: the upstream's, streamed, or one the
/// gateway made.
pub type ResponseBody = Either<upstream::UpstreamBody, Full<Bytes>>;

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

        let proxy = Arc::new(Proxy::new(Arc::clone(&store), Arc::clone(&telemetry)));
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
            proxy: Arc::clone(&proxy) as Arc<dyn ProxyStats>,
        });
        if let Some(listener) = admin_listener {
            tokio::spawn(admin::serve(
                listener,
                Arc::clone(&admin),
                admin_shutdown_rx,
            ));
        }
        tokio::spawn(pool_upkeep(Arc::downgrade(&proxy)));
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

/// What `/status` reports of the proxy.
pub trait ProxyStats: Send + Sync {
    /// Idle upstream connections held in both pools.
    fn idle_upstream_connections(&self) -> usize;
    /// Requests the fast path answered (the rest went through hyper).
    fn fast_path_requests(&self) -> u64;
    /// Client connections the fast path gave to hyper for a request it does not serve.
    fn connections_handed_over(&self) -> u64;
}

impl ProxyStats for Proxy {
    fn idle_upstream_connections(&self) -> usize {
        self.pool.idle_connections() + self.raw_pool.idle_connections()
    }

    fn fast_path_requests(&self) -> u64 {
        self.fast_requests.load(Ordering::Relaxed)
    }

    fn connections_handed_over(&self) -> u64 {
        self.handovers.load(Ordering::Relaxed)
    }
}

/// Closes expired and closed idle upstream connections every second, while the proxy lives.
async fn pool_upkeep(proxy: std::sync::Weak<Proxy>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        match proxy.upgrade() {
            Some(proxy) => {
                proxy.pool.sweep();
                proxy.raw_pool.sweep(|s| fast::is_open(s));
            }
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
    // Every connection task holds a clone of `open_tx`; when the last is gone, `open_rx` ends.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => serve_connection(&proxy, stream, peer, shutdown.clone(), open_tx.clone(), Arc::clone(&open)),
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
    proxy.stop.begin();
    drop(open_tx);
    let grace = proxy.store.load().server.shutdown_timeout;
    tracing::info!(
        open_connections = open.load(Ordering::Relaxed),
        "shutting down: no new connections, letting requests finish"
    );
    tokio::select! {
        _ = open_rx.recv() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "shutdown_timeout reached with requests still in flight; closing them"),
    }
}

/// Serves one client connection: the fast path first, hyper for whatever the fast path hands
/// over. `_open` is held for as long as the connection lives (graceful shutdown waits for it).
fn serve_connection(
    proxy: &Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    open_tx: mpsc::Sender<()>,
    open: Arc<std::sync::atomic::AtomicUsize>,
) {
    let _ = stream.set_nodelay(true);
    let proxy = Arc::clone(proxy);
    let peer_text =
        http::HeaderValue::from_str(&crate::auth::address::canonical(peer.ip()).to_string())
            .expect("an IP address is a valid header value");
    let gauge = proxy.telemetry.metrics.open_connections();
    gauge.increment(1.0);
    open.fetch_add(1, Ordering::Relaxed);
    tokio::spawn(async move {
        let _open = open_tx;
        let outcome = fast::serve(&proxy, stream, peer, peer_text.clone()).await;
        if let fast::Outcome::HandOver(stream, read) = outcome {
            proxy.handovers.fetch_add(1, Ordering::Relaxed);
            serve_with_hyper(
                proxy,
                fast::Prefixed::new(read, stream),
                peer,
                peer_text,
                shutdown,
            )
            .await;
        }
        gauge.decrement(1.0);
        open.fetch_sub(1, Ordering::Relaxed);
    });
}

/// hyper's HTTP/1.1 server on the rest of a connection, with `handler.rs` behind it.
async fn serve_with_hyper(
    proxy: Arc<Proxy>,
    stream: fast::Prefixed,
    peer: SocketAddr,
    peer_text: http::HeaderValue,
    mut shutdown: watch::Receiver<bool>,
) {
    let (header_read_timeout, idle_timeout, max_header_bytes) = {
        let s = &proxy.store.load().server;
        (s.header_read_timeout, s.idle_timeout, s.max_header_bytes)
    };
    let io = TokioIo::new(io::IdleTimeout::new(stream, idle_timeout));
    let service = service_fn(move |request| {
        let proxy = Arc::clone(&proxy);
        let peer_text = peer_text.clone();
        async move { Ok::<_, Infallible>(proxy.handle(request, peer, peer_text).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_header_size(max_header_bytes)
        .keep_alive(true)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = async { let _ = shutdown.wait_for(|stopping| *stopping).await; } => {
            // Finish the request in flight, if any, then close.
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}
