//! What both transports share about upstreams: the `[server]` limits their connection pools
//! follow, the idle-connection pool itself (generic over what a connection is), and how a TCP
//! connection to an upstream is opened.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::uri::Authority;
use tokio::net::TcpStream;

/// The `[server]` settings the pool follows, read from the snapshot for each request, so a
/// reload changes them for the next request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect_timeout: Duration,
    /// How long a connection may stay idle in the pool.
    pub keepalive_timeout: Duration,
    /// Idle connections kept per upstream address; more are closed when their response ends.
    pub keepalive_connections: usize,
    /// The response head limits, the same on both paths.
    pub response_head: crate::proxy::policy::HeadLimits,
    /// `response_timeout`: the longest a response may take to relay, from its head on.
    pub response_timeout: Option<Duration>,
    /// `max_upstream_connections`.
    pub max_upstream_connections: usize,
}

impl Limits {
    pub fn of(server: &crate::snapshot::ServerSettings) -> Limits {
        Limits {
            connect_timeout: server.connect_timeout,
            keepalive_timeout: server.upstream_keepalive_timeout,
            keepalive_connections: server.upstream_keepalive_connections,
            response_head: crate::proxy::policy::HeadLimits::of(&server.limits),
            response_timeout: server.limits.response_timeout,
            max_upstream_connections: server.limits.max_upstream_connections,
        }
    }
}

/// Idle upstream connections per upstream address, most recently used last, each with when it
/// expires. Both pools are one of these: hyper's client connections
/// (`hyper_path/client.rs`) and the HTTP/1 engine's sockets (`h1/client.rs`). Whether a connection is still usable is the caller's to say.
pub struct IdlePool<T> {
    idle: Mutex<Vec<(Authority, IdleList<T>)>>,
}

type IdleList<T> = Vec<(T, Instant)>;

impl<T> Default for IdlePool<T> {
    fn default() -> Self {
        IdlePool {
            idle: Mutex::new(Vec::new()),
        }
    }
}

impl<T> IdlePool<T> {
    /// The most recently used connection to `authority` that has not expired by `now` and that
    /// `usable` accepts; the others met on the way are closed (outside the lock).
    pub fn take(
        &self,
        authority: &Authority,
        now: Instant,
        mut usable: impl FnMut(&mut T) -> bool,
    ) -> Option<T> {
        loop {
            let (mut conn, expires) = {
                let mut pools = self.idle.lock().unwrap_or_else(|e| e.into_inner());
                let (_, list) = pools
                    .iter_mut()
                    .find(|(a, _)| a.as_str() == authority.as_str())?;
                list.pop()?
            };
            if expires > now && usable(&mut conn) {
                return Some(conn);
            }
        }
    }

    /// Keeps `conn` for `limits.keepalive_timeout` from `now`; when `keepalive_connections` are
    /// already kept for `authority`, the least recently used goes. With 0 allowed, `conn` is
    /// closed.
    pub fn put(&self, authority: &Authority, conn: T, limits: Limits, now: Instant) {
        if limits.keepalive_connections == 0 {
            return;
        }
        let idle = (conn, now + limits.keepalive_timeout);
        let mut pools = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        match pools
            .iter_mut()
            .find(|(a, _)| a.as_str() == authority.as_str())
        {
            Some((_, list)) => {
                if list.len() >= limits.keepalive_connections {
                    list.remove(0);
                }
                list.push(idle);
            }
            None => pools.push((authority.clone(), vec![idle])),
        }
    }

    /// Closes the connections that have expired and those `usable` rejects.
    pub fn sweep(&self, mut usable: impl FnMut(&mut T) -> bool) {
        let now = Instant::now();
        let mut pools = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        for (_, list) in pools.iter_mut() {
            list.retain_mut(|(conn, expires)| *expires > now && usable(conn));
        }
        pools.retain(|(_, list)| !list.is_empty());
    }

    /// Idle connections now kept, over all upstreams.
    pub fn idle_connections(&self) -> usize {
        let pools = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        pools.iter().map(|(_, list)| list.len()).sum()
    }
}

/// A TCP connection to `authority` (an IP address or a name to resolve, and a port, 80 if none),
/// with Nagle's algorithm off. Both pools open their connections with it.
pub async fn connect_tcp(authority: &Authority) -> std::io::Result<TcpStream> {
    let port = authority.port_u16().unwrap_or(80);
    // A bracketed IPv6 literal is what `Authority::host` returns; `TcpStream::connect` wants it
    // without brackets.
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let stream = TcpStream::connect((host, port)).await?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}
