//! Pooled upstream connections, for both transports: the idle-connection pool (generic over what a connection is, keyed by the target's
//! authority, so a target unchanged by a reload keeps its warm connections), and how a TCP
//! connection to a target is opened.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::uri::Authority;
use tokio::net::TcpStream;

/// How long an idle connection is kept, and how many per target (`[server]`
/// `upstream_keepalive_timeout` and `upstream_keepalive_connections`).
#[derive(Debug, Clone, Copy)]
pub struct KeepAlive {
    pub timeout: Duration,
    pub connections: usize,
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

    /// Keeps `conn` for `keep.timeout` from `now`; when `keep.connections` are
    /// already kept for `authority`, the least recently used goes. With 0 allowed, `conn` is
    /// closed.
    pub fn put(&self, authority: &Authority, conn: T, keep: KeepAlive, now: Instant) {
        if keep.connections == 0 {
            return;
        }
        let idle = (conn, now + keep.timeout);
        let mut pools = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        match pools
            .iter_mut()
            .find(|(a, _)| a.as_str() == authority.as_str())
        {
            Some((_, list)) => {
                if list.len() >= keep.connections {
                    list.remove(0);
                }
                list.push(idle);
            }
            None => pools.push((authority.clone(), vec![idle])),
        }
    }

    /// Closes the connections that have expired, those `usable` rejects, and every one to an
    /// authority `serves` says no current target has (a target a reload removed: its
    /// connections go once idle, not at their keep-alive timeout). Closed outside the lock.
    pub fn sweep(
        &self,
        serves: impl Fn(&Authority) -> bool,
        mut usable: impl FnMut(&mut T) -> bool,
    ) {
        let now = Instant::now();
        let mut closed: Vec<T> = Vec::new();
        {
            let mut pools = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            for (authority, list) in pools.iter_mut() {
                if !serves(authority) {
                    closed.extend(list.drain(..).map(|(conn, _)| conn));
                    continue;
                }
                list.retain_mut(|(conn, expires)| *expires > now && usable(conn));
            }
            pools.retain(|(_, list)| !list.is_empty());
        }
        drop(closed);
    }

    /// Idle connections now kept, over all upstreams.
    pub fn idle_connections(&self) -> usize {
        let pools = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        pools.iter().map(|(_, list)| list.len()).sum()
    }
}

/// A TCP connection to `authority` (an IP address or a name to resolve, and a port: if none, 443
/// for `https`, else 80), with Nagle's algorithm off. Both pools open their connections with it.
pub async fn connect_tcp(authority: &Authority, https: bool) -> std::io::Result<TcpStream> {
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
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
