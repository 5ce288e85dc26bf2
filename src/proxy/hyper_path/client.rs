//! hyper's path to the upstream: HTTP/1.1 client connections, kept alive and reused, driven by
//! the task of the request that uses them.
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
use std::sync::{Arc, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::uri::Authority;
use http::{Method, Request, Response};
use http_body_util::{Either, Empty};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;

use super::body::Counted;
use crate::proxy::policy::{ConnectError, InvalidResponse, UpstreamFailure};
use crate::proxy::upstream::Limits;
use crate::tls::{UpstreamStream, UpstreamTls};
use crate::upstream::{Attempt, IdlePool, Slot, connect_tcp};

/// What a request sends upstream: the client's body, counted as it streams (or none, when a
/// bodiless request is sent again).
pub type RequestBody = Counted<Either<Incoming, Empty<Bytes>>>;

type Connection = http1::Connection<TokioIo<UpstreamStream>, RequestBody>;

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
    /// What the policy makes of it.
    pub fn failure(&self) -> UpstreamFailure {
        match self {
            UpstreamError::Connect { source, .. } => {
                UpstreamFailure::Connect(ConnectError::from_io(source))
            }
            UpstreamError::ConnectTimeout { .. } => {
                UpstreamFailure::Connect(ConnectError::TimedOut)
            }
            UpstreamError::Http(e) if e.is_parse_too_large() => {
                UpstreamFailure::Invalid(InvalidResponse::TooLarge)
            }
            UpstreamError::Http(e) if e.is_parse() => {
                UpstreamFailure::Invalid(InvalidResponse::Malformed)
            }
            UpstreamError::Http(e) if e.is_incomplete_message() || is_reset(e) => {
                UpstreamFailure::Reset
            }
            UpstreamError::Http(_) => UpstreamFailure::Broken,
        }
    }
}

/// Whether hyper's error is the connection reset or closed under it.
fn is_reset(error: &hyper::Error) -> bool {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                std::io::ErrorKind::ConnectionReset
                    | std::io::ErrorKind::ConnectionAborted
                    | std::io::ErrorKind::BrokenPipe
            );
        }
        source = e.source();
    }
    false
}

/// A request that got no response, with the request itself when none of it was sent (it may
/// then go to another target as it is).
pub type SendError = (UpstreamError, Option<Request<RequestBody>>);

impl Pool {
    pub fn new() -> Arc<Pool> {
        Arc::new(Pool::default())
    }

    /// Sends `request` (origin-form URI, `Host` set) to `authority`, over `tls` if given, and
    /// returns the response head with a body that keeps driving the connection and returns it
    /// to the pool when it ends.
    pub async fn send(
        self: &Arc<Self>,
        authority: &Authority,
        tls: Option<&Arc<UpstreamTls>>,
        limits: Limits,
        mut request: Request<RequestBody>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let tls_key;
        let authority = match tls {
            None => authority,
            Some(tls) => {
                tls_key = pool_key(authority, tls);
                &tls_key
            }
        };
        // A pooled connection that turns out unusable before the request was written gets the
        // request back; then a new connection is tried, once. One that the upstream closed as the
        // request was written, before answering, is the race no pool avoids: a bodiless
        // idempotent request is sent once more, on a new connection (as the HTTP/1 engine does).
        let mut fresh_tried = false;
        let mut replay = Replay::of(&request);
        let mut may_reuse = true;
        loop {
            let pooled = if may_reuse {
                self.checkout(authority).await
            } else {
                None
            };
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(conn) => conn,
                None => {
                    fresh_tried = true;
                    match connect(authority, tls, limits).await {
                        Ok(conn) => conn,
                        Err(e) => return Err((e, Some(request))),
                    }
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
                    None if reused && failed.error().is_incomplete_message() => {
                        match replay.take().map(Replay::into_request) {
                            Some(again) => {
                                request = again;
                                may_reuse = false;
                            }
                            None => return Err((UpstreamError::Http(failed.into_error()), None)),
                        }
                    }
                    unsent => return Err((UpstreamError::Http(failed.into_error()), unsent)),
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
        self.idle
            .put(&authority, conn, limits.keepalive(), Instant::now());
    }

    /// Closes connections idle for longer than their keep-alive timeout, and those the upstream
    /// has closed.
    pub fn sweep(&self, serves: impl Fn(&Authority) -> bool) {
        let mut cx = Context::from_waker(Waker::noop());
        self.idle.sweep(serves, |conn| conn.poll_io(&mut cx));
    }

    /// Idle connections now held, over all upstreams.
    pub fn idle_connections(&self) -> usize {
        self.idle.idle_connections()
    }
}

/// The pool's key for TLS connections (`UpstreamTls::pool_key`).
pub(super) fn pool_key(authority: &Authority, tls: &UpstreamTls) -> Authority {
    tls.pool_key(authority)
}

/// The address part of a pool key (what follows `server_name@`).
fn address_of(key: &Authority) -> Authority {
    match key.as_str().rsplit_once('@') {
        Some((_, address)) => Authority::try_from(address).unwrap_or_else(|_| key.clone()),
        None => key.clone(),
    }
}

/// A connection to the address of `key` (a pool key), with TLS when `tls` is given, within
/// `timeout` (the TLS handshake included).
pub(super) async fn connect_stream(
    key: &Authority,
    tls: Option<&Arc<UpstreamTls>>,
    timeout: Duration,
) -> Result<UpstreamStream, UpstreamError> {
    let address = address_of(key);
    let opened = async {
        // `https://host` means port 443.
        let tcp = connect_tcp(&address, tls.is_some()).await?;
        match tls {
            None => Ok(UpstreamStream::Plain(tcp)),
            Some(tls) => Ok(UpstreamStream::Tls(Box::new(tls.connect(tcp).await?))),
        }
    };
    match tokio::time::timeout(timeout, opened).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(UpstreamError::Connect {
            authority: address,
            source,
        }),
        Err(_) => Err(UpstreamError::ConnectTimeout {
            authority: address,
            timeout,
        }),
    }
}

async fn connect(
    authority: &Authority,
    tls: Option<&Arc<UpstreamTls>>,
    limits: Limits,
) -> Result<Conn, UpstreamError> {
    let stream = connect_stream(authority, tls, limits.connect_timeout).await?;
    // The same head limits as the HTTP/1 engine's: a larger head is an invalid answer there too.
    let (sender, io) = http1::Builder::new()
        .max_headers(limits.response_head.headers)
        .max_header_size(limits.response_head.bytes)
        .handshake(TokioIo::new(stream))
        .await?;
    Ok(Conn {
        sender,
        io: Box::pin(io),
    })
}

/// A copy of a request that may be sent again: a bodiless GET, HEAD, DELETE or OPTIONS (the
/// methods the HTTP/1 engine serves, all idempotent).
struct Replay {
    parts: http::request::Parts,
    counter: Arc<std::sync::atomic::AtomicU64>,
}

impl Replay {
    fn of(request: &Request<RequestBody>) -> Option<Replay> {
        let idempotent = matches!(
            *request.method(),
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
        );
        if !idempotent || !request.body().is_end_stream() {
            return None;
        }
        let mut parts = Request::new(()).into_parts().0;
        parts.method = request.method().clone();
        parts.uri = request.uri().clone();
        parts.version = request.version();
        parts.headers = request.headers().clone();
        Some(Replay {
            parts,
            counter: request.body().counter(),
        })
    }

    fn into_request(self) -> Request<RequestBody> {
        let body = Counted::new(Either::Right(Empty::new()), self.counter);
        Request::from_parts(self.parts, body)
    }
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
    /// The request's attempt on its target: outstanding there until the body is done with.
    attempt: Option<Attempt>,
    /// The request's place at its upstream (`max_upstream_connections`), given back with the
    /// connection.
    place: Option<Slot>,
    /// `response_timeout`: when the relay of this body must have ended.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// Why a response body stopped before its end.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("the upstream connection failed: {0}")]
    Upstream(#[from] hyper::Error),
    #[error("the response was not relayed within response_timeout")]
    ResponseTimeout,
    #[error("the upstream connection closed before the end of the response")]
    Closed,
    #[error("the response's chunked framing is malformed")]
    Malformed,
}

impl UpstreamBody {
    /// A body whose connection is not pooled here (HTTP/2: the connection is shared).
    pub fn unpooled(inner: Incoming) -> Self {
        UpstreamBody::new(inner, None)
    }

    fn new(inner: Incoming, conn: Option<Checkin>) -> Self {
        let mut body = UpstreamBody {
            inner,
            conn,
            attempt: None,
            place: None,
            deadline: None,
        };
        if body.inner.is_end_stream() {
            // No body (HEAD, 204, 304, Content-Length: 0): the connection is free already.
            body.release();
        }
        body
    }

    /// Bounds the whole relay of this body (`response_timeout`), from now.
    pub fn within(mut self, timeout: Option<std::time::Duration>) -> Self {
        self.deadline = timeout.map(|t| Box::pin(tokio::time::sleep(t)));
        self
    }

    /// Keeps `attempt` outstanding on its target, and `place` taken at its upstream, until the
    /// body has been read or dropped.
    pub fn holding(mut self, attempt: Attempt, place: Slot) -> Self {
        if self.conn.is_some() || !self.inner.is_end_stream() {
            self.attempt = Some(attempt);
            self.place = Some(place);
        }
        self
    }

    fn release(&mut self) {
        self.attempt = None;
        self.place = None;
        if let Some(Checkin {
            pool,
            authority,
            limits,
            conn,
        }) = self.conn.take()
            && let Some(pool) = pool.upgrade()
        {
            pool.checkin(authority, limits, conn);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = RelayError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, RelayError>>> {
        let this = &mut *self;
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
            && !this.inner.is_end_stream()
        {
            // An error, not an early end: hyper's server then closes the client connection
            // instead of framing a truncated body as complete. The upstream connection,
            // mid-response, is closed too.
            this.conn = None;
            this.deadline = None;
            return Poll::Ready(Some(Err(RelayError::ResponseTimeout)));
        }
        if let Some(checkin) = this.conn.as_mut()
            && !checkin.conn.poll_io(cx)
        {
            // Finished: whatever it read is in the body's channel; it cannot be reused.
            this.conn = None;
        }
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            // Trailers end an HTTP/1.1 body: hyper's server finishes the response with them and
            // never asks for more, so the connection goes back now or not at all.
            Poll::Ready(Some(Ok(frame))) if frame.is_trailers() || this.inner.is_end_stream() => {
                this.release()
            }
            Poll::Ready(None) => this.release(),
            Poll::Ready(Some(Err(_))) => {
                this.conn = None;
                this.attempt = None;
                this.place = None;
            }
            _ => {}
        }
        polled.map(|p| p.map(|r| r.map_err(RelayError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
