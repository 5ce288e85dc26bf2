//! What the HTTP/1 engine keeps across connections: the policy it serves, its upstream pool,
//! graceful shutdown, and the count of requests it answered.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::TcpStream;

use super::deadline::Stop;
use crate::proxy::policy::Policy;
use crate::upstream::IdlePool;

/// The engine's idle upstream connections: plain sockets, checked with `is_open`.
pub type RawPool = IdlePool<TcpStream>;

/// An idle connection is open when reading from it would block: no end of stream, no stray bytes.
pub(crate) fn is_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

pub struct Engine {
    pub(super) policy: Arc<Policy>,
    /// Idle upstream connections, plain sockets; kept apart from hyper's client connections.
    pub(super) pool: RawPool,
    /// Graceful shutdown, for the engine's connections.
    pub(super) stop: Stop,
    /// Requests the engine answered (`/status`).
    pub(super) served: AtomicU64,
}

impl Engine {
    pub fn new(policy: Arc<Policy>) -> Engine {
        Engine {
            policy,
            pool: RawPool::default(),
            stop: Stop::default(),
            served: AtomicU64::new(0),
        }
    }

    /// Shutdown has begun: each connection finishes the request in flight, then closes; one
    /// waiting for a request closes now.
    pub fn begin_shutdown(&self) {
        self.stop.begin();
    }

    /// Requests the engine answered (the rest went to hyper).
    pub fn requests_served(&self) -> u64 {
        self.served.load(Ordering::Relaxed)
    }

    /// Idle upstream connections in the engine's pool.
    pub fn idle_upstream_connections(&self) -> usize {
        self.pool.idle_connections()
    }

    /// Closes expired idle upstream connections, those the upstream has closed, and those to
    /// an authority `serves` rejects (a target removed by a reload).
    pub fn sweep_pool(&self, serves: impl Fn(&http::uri::Authority) -> bool) {
        self.pool.sweep(serves, |s| is_open(s));
    }
}
