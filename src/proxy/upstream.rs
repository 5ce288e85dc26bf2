//! Upstream HTTP/1.1 connections, kept alive and reused, driven by the task of the request that
//! uses them.
//!
//! hyper's ready-made client (`hyper_util::client::legacy`) runs every upstream connection in its
//! own task: each request then wakes that task and is woken back by it, twice, and the pool
//! behind it takes a lock, hashes its key and allocates on every checkout. Here a connection is
//! checked out by the task serving the client's request, which polls it itself until the
//! response body has been read, then puts it back: no task hand-off and no channel wake-up per
//! request (docs/benchmarks.md measures what that gives).
//!
//! An idle connection is polled by nobody. Whether the upstream closed it meanwhile is found out
//! when it is checked out (it is polled once then, and dropped if it finished), and by the sweep
//! that drops connections idle for longer than `upstream_keepalive_timeout`. A request that could
//! not be written because the connection was no longer usable is sent again on another one.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::body::Counted;

/// What a request sends upstream: the client's body, counted as it streams.
pub type RequestBody = Counted<Incoming>;

type Connection = http1::Connection<TokioIo<TcpStream>, RequestBody>;

/// The `[server]` settings the pool follows, read from the snapshot for each request, so a
/// reload changes them for the next request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub connect_timeout: Duration,
    /// How long a connection may stay idle in the pool.
    pub keepalive_timeout: Duration,
    /// Idle connections kept per upstream address; more are closed when their response ends.
    pub keepalive_connections: usize,
}

impl Limits {
    pub fn of(server: &crate::snapshot::ServerSettings) -> Limits {
        Limits {
            connect_timeout: server.connect_timeout,
            keepalive_timeout: server.upstream_keepalive_timeout,
            keepalive_connections: server.upstream_keepalive_connections,
        }
    }
}

/// One HTTP/1.1 connection: the half that sends requests and the half that does the I/O.
struct Conn {
    sender: http1::SendRequest<RequestBody>,
    io: Pin<Box<Connection>>,
}

impl Conn {
    /// Polls the I/O half once. False when the connection has finished (closed or failed).
    fn poll_io(&mut self, cx: &mut Context<'_>) -> bool {
        self.io.as_mut().poll(cx).is_pending()
    }
}

/// Idle upstream connections per upstream address, most recently used last, each with when it
/// expires. Both pools are one of these: hyper's connections here (`Pool`), the fast path's
/// sockets in `fast.rs`. Whether a connection is still usable is the caller's to say.
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

/// hyper's client connections, kept alive between requests.
#[derive(Default)]
pub struct Pool {
    idle: IdlePool<Conn>,
}

/// Why an upstream did not answer.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to {authority}: {source}")]
    Connect {
        authority: Authority,
        source: std::io::Error,
    },
    #[error("connecting to {authority} took longer than {timeout:?}")]
    ConnectTimeout {
        authority: Authority,
        timeout: Duration,
    },
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

impl UpstreamError {
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            UpstreamError::Connect { .. } | UpstreamError::ConnectTimeout { .. }
        )
    }
}

impl Pool {
    pub fn new() -> Arc<Pool> {
        Arc::new(Pool::default())
    }

    /// Sends `request` (origin-form URI, `Host` set) to `authority` and returns the response head
    /// with a body that keeps driving the connection and returns it to the pool when it ends.
    pub async fn send(
        self: &Arc<Self>,
        authority: &Authority,
        limits: Limits,
        mut request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, UpstreamError> {
        // A pooled connection that turns out unusable before the request was written gets the
        // request back; then a new connection is tried, once.
        let mut fresh_tried = false;
        loop {
            let mut conn = match self.checkout(authority).await {
                Some(conn) => conn,
                None => {
                    fresh_tried = true;
                    connect(authority, limits.connect_timeout).await?
                }
            };
            let sending = conn.sender.try_send_request(request);
            let mut sending = std::pin::pin!(sending);
            let mut io_alive = true;
            let answer = poll_fn(|cx| {
                if io_alive {
                    io_alive = conn.poll_io(cx);
                }
                sending.as_mut().poll(cx)
            })
            .await;
            match answer {
                Ok(response) => {
                    let pooled = io_alive.then(|| Checkin {
                        pool: Arc::downgrade(self),
                        authority: authority.clone(),
                        limits,
                        conn,
                    });
                    return Ok(response.map(|body| UpstreamBody::new(body, pooled)));
                }
                Err(mut failed) => match failed.take_message() {
                    Some(unsent) if !fresh_tried => request = unsent,
                    _ => return Err(UpstreamError::Http(failed.into_error())),
                },
            }
        }
    }

    /// The most recently used idle connection to `authority` that is still open and ready.
    async fn checkout(&self, authority: &Authority) -> Option<Conn> {
        let now = Instant::now();
        // Polling each candidate lets it notice a close or an error that arrived while it was
        // idle, and registers its I/O with this task.
        poll_fn(|cx| {
            Poll::Ready(self.idle.take(authority, now, |conn| {
                conn.poll_io(cx) && conn.sender.is_ready()
            }))
        })
        .await
    }

    fn checkin(&self, authority: Authority, limits: Limits, conn: Conn) {
        self.idle.put(&authority, conn, limits, Instant::now());
    }

    /// Closes connections idle for longer than their keep-alive timeout, and those the upstream
    /// has closed.
    pub fn sweep(&self) {
        let mut cx = Context::from_waker(Waker::noop());
        self.idle.sweep(|conn| conn.poll_io(&mut cx));
    }

    /// Idle connections now held, over all upstreams.
    pub fn idle_connections(&self) -> usize {
        self.idle.idle_connections()
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

async fn connect(authority: &Authority, timeout: Duration) -> Result<Conn, UpstreamError> {
    let stream = match tokio::time::timeout(timeout, connect_tcp(authority)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => {
            return Err(UpstreamError::Connect {
                authority: authority.clone(),
                source,
            });
        }
        Err(_) => {
            return Err(UpstreamError::ConnectTimeout {
                authority: authority.clone(),
                timeout,
            });
        }
    };
    let (sender, io) = http1::handshake(TokioIo::new(stream)).await?;
    Ok(Conn {
        sender,
        io: Box::pin(io),
    })
}

/// A connection on its way back to the pool once its response has been read.
struct Checkin {
    pool: Weak<Pool>,
    authority: Authority,
    limits: Limits,
    conn: Conn,
}

/// An upstream response body. Polling it also drives the connection it arrives on; when it has
/// been read to the end the connection goes back to the pool, and when it is dropped before
/// that the connection is closed (its rest of the response cannot be skipped cheaply).
pub struct UpstreamBody {
    inner: Incoming,
    conn: Option<Checkin>,
}

impl UpstreamBody {
    fn new(inner: Incoming, conn: Option<Checkin>) -> Self {
        let mut body = UpstreamBody { inner, conn };
        if body.inner.is_end_stream() {
            // No body (HEAD, 204, 304, Content-Length: 0): the connection is free already.
            body.release();
        }
        body
    }

    fn release(&mut self) {
        if let Some(Checkin {
            pool,
            authority,
            limits,
            conn,
        }) = self.conn.take()
        {
            if let Some(pool) = pool.upgrade() {
                pool.checkin(authority, limits, conn);
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        if let Some(checkin) = this.conn.as_mut() {
            if !checkin.conn.poll_io(cx) {
                // Finished: whatever it read is in the body's channel; it cannot be reused.
                this.conn = None;
            }
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(_))) if this.inner.is_end_stream() => this.release(),
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Err(_))) => this.conn = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
