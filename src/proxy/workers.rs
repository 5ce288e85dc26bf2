//! The public listener's workers: either every connection on the runtime that starts the
//! gateway, or N threads, each a current-thread runtime with a listening socket of its own
//! (`SO_REUSEPORT`, so the kernel spreads the connections) and its own upstream pools, the way
//! nginx's worker processes and HAProxy's threads run. Binds those sockets, starts and ends the
//! threads, and adds up what `/status` shows of them.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use super::balance::Balance;
use super::listener::{self, Proxy, Shared};

/// What `/status` reports of the proxy.
pub trait ProxyStats: Send + Sync {
    /// Idle upstream connections held in every worker's pools.
    fn idle_upstream_connections(&self) -> usize;
    /// Requests the fast path answered (the rest went through hyper).
    fn fast_path_requests(&self) -> u64;
    /// Client connections the fast path gave to hyper for a request it does not serve.
    fn connections_handed_over(&self) -> u64;
    /// Client connections each worker's runtime accepted, in worker order (one entry when every
    /// connection is served on one runtime).
    fn worker_connections(&self) -> Vec<u64>;
    /// Client connections each worker serves now, in worker order.
    fn worker_open_connections(&self) -> Vec<u64>;
    /// Every upstream target with its health, ejection and requests in flight.
    fn upstream_targets(&self) -> Vec<crate::upstream::TargetStatus>;
}

/// Every worker's proxy, for `/status`.
struct Workers {
    shared: Arc<Shared>,
    proxies: Vec<Arc<Proxy>>,
}

impl ProxyStats for Workers {
    fn idle_upstream_connections(&self) -> usize {
        self.proxies
            .iter()
            .map(|p| p.idle_upstream_connections())
            .sum()
    }

    fn fast_path_requests(&self) -> u64 {
        self.proxies.iter().map(|p| p.fast_path_requests()).sum()
    }

    fn connections_handed_over(&self) -> u64 {
        self.proxies
            .iter()
            .map(|p| p.connections_handed_over())
            .sum()
    }

    fn worker_connections(&self) -> Vec<u64> {
        self.proxies
            .iter()
            .map(|p| p.connections_accepted())
            .collect()
    }

    fn worker_open_connections(&self) -> Vec<u64> {
        self.proxies.iter().map(|p| p.connections_open()).collect()
    }

    fn upstream_targets(&self) -> Vec<crate::upstream::TargetStatus> {
        self.shared.policy().upstreams.status()
    }
}

/// Why the workers did not start.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot start worker {worker}: {source}")]
    Start { worker: usize, source: io::Error },
}

/// The public listener's sockets, bound before any worker starts, so that a port in use (on any
/// of them) fails the start with nothing serving.
pub(crate) struct Listeners {
    sockets: Vec<std::net::TcpListener>,
    local_addr: SocketAddr,
}

impl Listeners {
    /// `workers` sockets for `addr`, or for the listener handed over (`given`, e.g. bound to port
    /// 0 by a test, or inherited). With more than one, each is bound with `SO_REUSEPORT` to the
    /// same port (the first one's, when `addr` says port 0). A handed-over listener without
    /// `SO_REUSEPORT` cannot be joined by other sockets: its workers then share it, each
    /// accepting from the one queue.
    pub(crate) fn bind(
        addr: SocketAddr,
        given: Option<std::net::TcpListener>,
        workers: usize,
    ) -> Result<Listeners, WorkerError> {
        let error = |addr| move |source| WorkerError::Bind { addr, source };
        let first = match given {
            Some(l) => l,
            None if workers == 1 => bind(addr, false).map_err(error(addr))?,
            None => {
                if addr.port() != 0 {
                    // SO_REUSEPORT would let this bind join a socket another process (an apiward
                    // still running, say) listens on, and the two would share the connections
                    // silently: a bind without it tells first.
                    drop(probe(addr).map_err(error(addr))?);
                }
                bind(addr, true).map_err(error(addr))?
            }
        };
        first.set_nonblocking(true).map_err(error(addr))?;
        let local_addr = first.local_addr().map_err(error(addr))?;
        let joinable = workers > 1
            && socket2::SockRef::from(&first)
                .reuse_port()
                .map_err(error(local_addr))?;
        if workers > 1 && !joinable {
            tracing::info!(
                listen = %local_addr,
                workers,
                "the listener handed over has no SO_REUSEPORT: every worker accepts from its one queue"
            );
        }
        let mut sockets = Vec::with_capacity(workers);
        for _ in 1..workers {
            let socket = if joinable {
                bind(local_addr, true)
            } else {
                first.try_clone()
            }
            .map_err(error(local_addr))?;
            sockets.push(socket);
        }
        sockets.insert(0, first);
        Ok(Listeners {
            sockets,
            local_addr,
        })
    }

    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }
}

/// Binds a listening socket (`SO_REUSEADDR` always, so a restart does not wait for the old
/// connections' TIME_WAIT; `SO_REUSEPORT` when several workers listen on the port).
pub(crate) fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<std::net::TcpListener> {
    let socket = socket(addr)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// A socket bound to `addr` without `SO_REUSEPORT`, never listening: it fails, as the listener
/// would without `SO_REUSEPORT`, when another socket listens there.
fn probe(addr: SocketAddr) -> io::Result<socket2::Socket> {
    let socket = socket(addr)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

fn socket(addr: SocketAddr) -> io::Result<socket2::Socket> {
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
    Ok(socket)
}

/// Where the public listener's connections are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// On the runtime that starts the gateway, whatever its kind.
    Caller,
    /// On threads of their own, one per socket, each a current-thread runtime.
    Threads,
}

/// The workers serving, until shutdown has drained them.
pub(crate) struct Serving {
    ends: Vec<End>,
}

enum End {
    Task(JoinHandle<()>),
    Thread {
        done: oneshot::Receiver<()>,
        thread: std::thread::JoinHandle<()>,
    },
}

impl Serving {
    /// Waits until every worker has stopped accepting and its connections have finished (or
    /// `shutdown_timeout` has closed them), and its thread, if it has one, has ended.
    pub(crate) async fn finished(self) {
        for end in self.ends {
            match end {
                End::Task(task) => {
                    let _ = task.await;
                }
                End::Thread { done, thread } => {
                    // Err: the thread ended without saying so (a panic); it is over either way.
                    let _ = done.await;
                    let _ = tokio::task::spawn_blocking(move || thread.join()).await;
                }
            }
        }
    }
}

/// Starts serving `listeners`, one worker each: on the caller's runtime (`Layout::Caller`, which
/// takes one socket), or on a thread and runtime of its own per socket. Each worker stops
/// accepting when `shutdown` changes (or its sender is dropped) and ends once its connections
/// have finished.
pub(crate) fn start(
    shared: &Arc<Shared>,
    listeners: Listeners,
    layout: Layout,
    shutdown: &watch::Receiver<bool>,
) -> Result<(Arc<dyn ProxyStats>, Serving), WorkerError> {
    let local_addr = listeners.local_addr;
    let mut proxies = Vec::with_capacity(listeners.sockets.len());
    let mut ends = Vec::with_capacity(listeners.sockets.len());
    match layout {
        Layout::Caller => {
            for socket in listeners.sockets {
                let listener =
                    TcpListener::from_std(socket).map_err(|source| WorkerError::Bind {
                        addr: local_addr,
                        source,
                    })?;
                let proxy = Proxy::new(shared, proxies.len(), None);
                proxies.push(Arc::clone(&proxy));
                ends.push(End::Task(tokio::spawn(listener::serve(
                    proxy,
                    listener,
                    None,
                    shutdown.clone(),
                ))));
            }
        }
        Layout::Threads => {
            // Every runtime is built and every socket registered with its runtime before the
            // first thread starts, so that no failure leaves some workers serving.
            let mut prepared = Vec::with_capacity(listeners.sockets.len());
            for (worker, socket) in listeners.sockets.into_iter().enumerate() {
                let start_error = |source| WorkerError::Start { worker, source };
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(start_error)?;
                let listener = {
                    let _inside = runtime.enter();
                    TcpListener::from_std(socket).map_err(start_error)?
                };
                prepared.push((worker, runtime, listener));
            }
            // Several workers share one balance (`connection_balance`); each has an inbox.
            let (balance, inboxes) = match prepared.len() {
                1 => (None, vec![None]),
                n => {
                    let (balance, inboxes) = Balance::new(n);
                    (Some(balance), inboxes.into_iter().map(Some).collect())
                }
            };
            for ((worker, runtime, listener), inbox) in prepared.into_iter().zip(inboxes) {
                let proxy = Proxy::new(shared, worker, balance.clone());
                proxies.push(Arc::clone(&proxy));
                let shutdown = shutdown.clone();
                let (tell_done, done) = oneshot::channel();
                let thread = std::thread::Builder::new()
                    // `apiward-w0`, `apiward-w1`, …: short enough for the kernel's 15-byte thread
                    // names (`top -H`, `/proc/PID/task/*/comm`).
                    .name(format!("apiward-w{worker}"))
                    .spawn(move || {
                        runtime.block_on(listener::serve(proxy, listener, inbox, shutdown));
                        // What is left after the drain (connections shutdown_timeout closed) is
                        // dropped with the runtime; a blocking task gets a moment to end.
                        runtime.shutdown_timeout(Duration::from_secs(1));
                        let _ = tell_done.send(());
                    })
                    .map_err(|source| WorkerError::Start { worker, source })?;
                ends.push(End::Thread { done, thread });
            }
        }
    }
    let stats = Arc::new(Workers {
        shared: Arc::clone(shared),
        proxies,
    }) as Arc<dyn ProxyStats>;
    Ok((stats, Serving { ends }))
}
