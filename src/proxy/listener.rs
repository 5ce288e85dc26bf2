//! The public listener: accepts connections (TLS first when `[server.tls]` is set) and serves
//! each on any stream, the HTTP/1 engine first and hyper's server for whatever the engine hands
//! over (or for HTTP/2); counts what `/status` shows, and shuts down gracefully.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use http::HeaderValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};

use super::balance::{Assigned, Balance, Handed, Slot};
use super::conn_limit::{Admitted, ConnectionLimits};
use super::h1::{self, Engine};
use super::https;
use super::hyper_path::{self, HyperPath};
use super::io::{Prefixed, starts_as_h2};
use super::policy::Policy;
use crate::config::reload::ConfigStore;
use crate::observe::Telemetry;
use crate::snapshot::ConnectionBalance;
use crate::tls::ClientSession;

/// What every worker shares: the policy (configuration, limit and upstream state, telemetry)
/// and the client connection limits, which count the connections of all workers together.
pub(crate) struct Shared {
    policy: Arc<Policy>,
    connections: Arc<ConnectionLimits>,
}

impl Shared {
    /// Made once, on the runtime that keeps the gateway's background work: the upstreams' upkeep
    /// (a reload's new targets and their health checks, ended ejections) runs there every
    /// second, however many workers serve.
    pub(crate) fn new(
        store: Arc<ConfigStore>,
        telemetry: Arc<Telemetry>,
        limits: Arc<crate::limits::Limiter>,
    ) -> Arc<Shared> {
        let fd_limit = super::conn_limit::raise_fd_limit();
        let default_max = super::conn_limit::default_max_connections(fd_limit);
        let configured = store.load().server.limits.max_connections;
        tracing::info!(
            open_files_limit = fd_limit,
            max_connections = configured.unwrap_or(default_max),
            "client connections above max_connections are closed at once"
        );
        let policy = Arc::new(Policy::new(store, telemetry, limits));
        tokio::spawn(upstream_upkeep(Arc::downgrade(&policy)));
        Arc::new(Shared {
            policy,
            connections: ConnectionLimits::new(default_max),
        })
    }

    pub(crate) fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }
}

/// One worker's proxy: the policy and the two transports behind it, with their upstream
/// pools. Each worker has its own, so a worker's upstream connections are registered with its
/// own runtime and never cross to another thread (nginx's workers keep theirs the same way).
pub(crate) struct Proxy {
    policy: Arc<Policy>,
    engine: Engine,
    hyper: Arc<HyperPath>,
    /// Connections the engine handed to hyper (`/status`).
    handovers: AtomicU64,
    /// Client connections this worker accepted, or was handed by another
    /// (`/status` `worker_connections`).
    accepted: AtomicU64,
    /// Client connections this worker serves now (`/status` `worker_open_connections`).
    open: AtomicUsize,
    /// `max_connections` and `max_connections_per_source`, shared by every worker.
    connections: Arc<ConnectionLimits>,
    /// This worker's number, and the balance it shares with the other per-worker runtimes
    /// (`None` when it is the only one, or on the shared runtime).
    worker: usize,
    balance: Option<Arc<Balance>>,
}

impl Proxy {
    pub(crate) fn new(shared: &Shared, worker: usize, balance: Option<Arc<Balance>>) -> Arc<Proxy> {
        let policy = Arc::clone(&shared.policy);
        Arc::new(Proxy {
            connections: Arc::clone(&shared.connections),
            engine: Engine::new(Arc::clone(&policy)),
            hyper: Arc::new(HyperPath::new(Arc::clone(&policy))),
            policy,
            handovers: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            open: AtomicUsize::new(0),
            worker,
            balance,
        })
    }

    pub(crate) fn idle_upstream_connections(&self) -> usize {
        self.engine.idle_upstream_connections() + self.hyper.idle_upstream_connections()
    }

    pub(crate) fn fast_path_requests(&self) -> u64 {
        self.engine.requests_served()
    }

    pub(crate) fn connections_handed_over(&self) -> u64 {
        self.handovers.load(Ordering::Relaxed)
    }

    pub(crate) fn connections_accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    pub(crate) fn connections_open(&self) -> u64 {
        self.open.load(Ordering::Relaxed) as u64
    }
}

/// Serves the public `listener` with `proxy` on the current runtime until `shutdown`, then lets
/// its connections finish (up to `shutdown_timeout`); the upkeep of the worker's upstream pools
/// runs beside it. `inbox` brings the connections other workers accepted for this one
/// (`connection_balance`).
pub(crate) async fn serve(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    inbox: Option<mpsc::UnboundedReceiver<Handed>>,
    shutdown: watch::Receiver<bool>,
) {
    tokio::spawn(pool_upkeep(Arc::downgrade(&proxy)));
    accept_loop(proxy, listener, inbox, shutdown).await;
}

/// Every second, while the policy lives: brings the targets' state in line with the
/// configuration (a reload's new targets get their health checks, ended ejections are logged).
async fn upstream_upkeep(policy: std::sync::Weak<Policy>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        match policy.upgrade() {
            Some(policy) => policy.upstreams.refresh_current(),
            None => return,
        }
    }
}

/// Every second, while the worker's proxy lives: closes expired and closed idle upstream
/// connections, and those to a target a reload removed, once its requests have given them back.
async fn pool_upkeep(proxy: std::sync::Weak<Proxy>) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    loop {
        tick.tick().await;
        match proxy.upgrade() {
            Some(proxy) => {
                let upstreams = &proxy.policy.upstreams;
                proxy.hyper.sweep_pool(|a| upstreams.serves(a));
                proxy.engine.sweep_pool(|a| upstreams.serves(a));
            }
            None => return,
        }
    }
}

/// Graceful shutdown's view of the open connections: each one's task holds a clone of `tx`
/// (when the last is gone, the receiver ends); the worker's `open` counts them.
#[derive(Clone)]
struct OpenConnections {
    tx: mpsc::Sender<()>,
}

async fn accept_loop(
    proxy: Arc<Proxy>,
    listener: TcpListener,
    mut inbox: Option<mpsc::UnboundedReceiver<Handed>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (tx, mut all_closed) = mpsc::channel::<()>(1);
    let open = OpenConnections { tx };
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (admitted, balance) = {
                        let snapshot = proxy.policy.store.load();
                        let admitted = proxy
                            .connections
                            .admit(&snapshot, crate::auth::address::canonical(peer.ip()));
                        (admitted, snapshot.server.connection_balance)
                    };
                    match admitted {
                        Ok(place) => {
                            let _ = stream.set_nodelay(true);
                            let slot = match &proxy.balance {
                                None => None,
                                Some(b) => match b.assign(proxy.worker, balance, incoming_cpu(&stream, balance)) {
                                    Assigned::Here(slot) => Some(slot),
                                    Assigned::There(slot) => {
                                        match hand_over(b, stream, peer, place, slot) {
                                            None => continue,
                                            Some((stream, place)) => {
                                                let slot = b.slot(proxy.worker);
                                                serve_here(&proxy, stream, peer, &shutdown, &open, place, Some(slot));
                                                continue;
                                            }
                                        }
                                    }
                                },
                            };
                            serve_here(&proxy, stream, peer, &shutdown, &open, place, slot);
                        }
                        Err(refused) => {
                            // Closed at once, before a byte is read: no task, no buffer.
                            drop(stream);
                            proxy.policy.telemetry.metrics.connection_refused(refused.as_str());
                        }
                    }
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
            Some(handed) = next_handed(&mut inbox) => {
                let Handed { stream, peer, place, slot } = handed;
                match TcpStream::from_std(stream) {
                    Ok(stream) => serve_here(&proxy, stream, peer, &shutdown, &open, place, Some(slot)),
                    Err(e) => tracing::warn!(error = %e, %peer, "a connection handed over by another worker could not join this one's poller; closed"),
                }
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    proxy.engine.begin_shutdown();
    let OpenConnections { tx } = open;
    drop(tx);
    let grace = proxy.policy.store.load().server.shutdown_timeout;
    tracing::info!(
        open_connections = proxy.open.load(Ordering::Relaxed),
        "shutting down: no new connections, letting requests finish"
    );
    tokio::select! {
        _ = all_closed.recv() => tracing::info!("all connections closed"),
        _ = tokio::time::sleep(grace) => tracing::warn!(?grace, "shutdown_timeout reached with requests still in flight; closing them"),
    }
}

/// The next connection another worker handed to this one; never, for a worker without an inbox.
async fn next_handed(inbox: &mut Option<mpsc::UnboundedReceiver<Handed>>) -> Option<Handed> {
    match inbox {
        Some(inbox) => inbox.recv().await,
        None => std::future::pending().await,
    }
}

/// Gives an accepted connection to the worker `slot` counts it on; gives it back (`Some`) when
/// it cannot leave this runtime's poller or that worker has stopped taking connections.
/// The CPU that received `stream`'s packets (`SO_INCOMING_CPU`), asked only when the balance
/// uses it.
fn incoming_cpu(stream: &TcpStream, how: ConnectionBalance) -> Option<usize> {
    if how != ConnectionBalance::Cpu {
        return None;
    }
    socket2::SockRef::from(stream).cpu_affinity().ok()
}

fn hand_over(
    balance: &Balance,
    stream: TcpStream,
    peer: SocketAddr,
    place: Admitted,
    slot: Slot,
) -> Option<(TcpStream, Admitted)> {
    let stream = match stream.into_std() {
        Ok(stream) => stream,
        Err(e) => {
            tracing::warn!(error = %e, %peer, "an accepted connection could not leave its worker's poller; closed");
            return None;
        }
    };
    let handed = Handed {
        stream,
        peer,
        place,
        slot,
    };
    match balance.hand(handed) {
        Ok(()) => None,
        Err(back) => {
            let Handed { stream, place, .. } = back;
            match TcpStream::from_std(stream) {
                Ok(stream) => Some((stream, place)),
                Err(_) => None,
            }
        }
    }
}

/// Counts a connection this worker serves (`/status`) and serves it.
fn serve_here(
    proxy: &Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: &watch::Receiver<bool>,
    open: &OpenConnections,
    place: Admitted,
    slot: Option<Slot>,
) {
    proxy.accepted.fetch_add(1, Ordering::Relaxed);
    serve_connection(
        proxy,
        stream,
        peer,
        shutdown.clone(),
        open.clone(),
        place,
        slot,
    );
}

/// Serves one client connection: on the TLS listener, the handshake first (`https.rs`); then
/// the HTTP/1 engine, and hyper for whatever the engine hands over, or hyper's HTTP/2 server
/// when ALPN chose `h2` (or a plain connection starts with the HTTP/2 preface). The connection
/// counts as open (graceful shutdown waits for it) for as long as it lives.
fn serve_connection(
    proxy: &Arc<Proxy>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    open: OpenConnections,
    place: Admitted,
    slot: Option<Slot>,
) {
    let proxy = Arc::clone(proxy);
    let peer_text = HeaderValue::from_str(&crate::auth::address::canonical(peer.ip()).to_string())
        .expect("an IP address is a valid header value");
    let gauge = proxy.policy.telemetry.metrics.open_connections();
    gauge.increment(1.0);
    proxy.open.fetch_add(1, Ordering::Relaxed);
    // Read once per connection: a reload that adds or removes [server.tls], or changes
    // fast_path, applies to the connections accepted after it.
    let (tls, handshake_timeout, idle_timeout, fast_path) = {
        let snapshot = proxy.policy.store.load();
        (
            snapshot.tls.clone(),
            snapshot.server.header_read_timeout,
            snapshot.server.idle_timeout,
            snapshot.server.fast_path,
        )
    };
    tokio::spawn(async move {
        let served = async {
            match tls {
                None if !fast_path => {
                    // Without the engine nothing has read the connection yet: a peek tells h2c.
                    // A connection that sends nothing for idle_timeout is closed, as hyper's
                    // server would close it.
                    let mut first = [0u8; 24];
                    let h2c =
                        match tokio::time::timeout(idle_timeout, stream.peek(&mut first)).await {
                            Ok(Ok(n)) => starts_as_h2(&first[..n]),
                            Ok(Err(_)) => false,
                            Err(_) => return,
                        };
                    let hyper = Arc::clone(&proxy.hyper);
                    if h2c {
                        hyper_path::serve_h2(hyper, stream, peer, peer_text, None, shutdown).await;
                    } else {
                        hyper_path::serve(hyper, stream, peer, peer_text, None, shutdown).await;
                    }
                }
                None => serve_stream(&proxy, stream, peer, peer_text, None, shutdown).await,
                Some(tls) => {
                    let metrics = &proxy.policy.telemetry.metrics;
                    if let Some(done) =
                        https::accept(stream, peer, &tls, handshake_timeout, metrics).await
                    {
                        let session = Some(done.session);
                        let hyper = Arc::clone(&proxy.hyper);
                        if done.h2 {
                            hyper_path::serve_h2(
                                hyper,
                                done.stream,
                                peer,
                                peer_text,
                                session,
                                shutdown,
                            )
                            .await;
                        } else if !fast_path {
                            hyper_path::serve(
                                hyper,
                                done.stream,
                                peer,
                                peer_text,
                                session,
                                shutdown,
                            )
                            .await;
                        } else {
                            serve_stream(&proxy, done.stream, peer, peer_text, session, shutdown)
                                .await;
                        }
                    }
                }
            }
        };
        served.await;
        gauge.decrement(1.0);
        proxy.open.fetch_sub(1, Ordering::Relaxed);
        drop(place);
        drop(slot);
        drop(open);
    });
}

/// HTTP/1 on any stream (TCP, or TLS after the handshake): the engine first, hyper for whatever
/// the engine hands over; hyper's HTTP/2 server for a plain connection that starts with the
/// HTTP/2 preface (h2c with prior knowledge).
async fn serve_stream<S>(
    proxy: &Arc<Proxy>,
    stream: S,
    peer: SocketAddr,
    peer_text: HeaderValue,
    session: Option<ClientSession>,
    shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let outcome = h1::serve(&proxy.engine, stream, peer, peer_text.clone(), session).await;
    if let h1::Outcome::HandOver(stream, read) = outcome {
        proxy.handovers.fetch_add(1, Ordering::Relaxed);
        let hyper = Arc::clone(&proxy.hyper);
        let h2c = session.is_none() && starts_as_h2(&read);
        let stream = Prefixed::new(read, stream);
        if h2c {
            hyper_path::serve_h2(hyper, stream, peer, peer_text, None, shutdown).await;
        } else {
            hyper_path::serve(hyper, stream, peer, peer_text, session, shutdown).await;
        }
    }
}
