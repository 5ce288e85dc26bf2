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
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use crate::config::reload::ConfigStore;
use crate::observe::Telemetry;
use body::Logged;
use handler::Proxy;

/// A response body before it is wrapped for logging: the upstream's, streamed, or one the
/// gateway made.
pub type ResponseBody = Either<upstream::UpstreamBody, Full<Bytes>>;

/// What the client receives: a response body that records the request when it ends.
pub type LoggedBody = Logged<ResponseBody>;

/// Starts serving the public `listener`: the accept loop, and the upkeep of the upstream
/// pools. What it returns reports the proxy's counts (for `/status`) and ends when the
/// listener has shut down (on `shutdown`) and its connections have finished.
pub(crate) fn spawn(
    store: Arc<ConfigStore>,
    telemetry: Arc<Telemetry>,
    listener: TcpListener,
    shutdown: watch::Receiver<bool>,
) -> (Arc<dyn ProxyStats>, JoinHandle<()>) {
    let proxy = Arc::new(Proxy::new(store, telemetry));
    tokio::spawn(pool_upkeep(Arc::downgrade(&proxy)));
    let stats = Arc::clone(&proxy) as Arc<dyn ProxyStats>;
    (stats, tokio::spawn(accept_loop(proxy, listener, shutdown)))
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
