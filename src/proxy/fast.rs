//! The fast path: the common request (a bodiless GET, HEAD, DELETE or OPTIONS over HTTP/1.1 to an
//! HTTP upstream) is read, decided, forwarded and answered here directly on the sockets, with
//! `httparse` and no per-request tasks, channels or header maps beyond what the decision reads.
//! Everything else (a request body, `Expect`, `Upgrade`, HTTP/1.0, a `Connection` header naming
//! other headers, an absolute-form target, a head too large or malformed, the built-in echo
//! upstream) goes to hyper: the connection, with the bytes already read, is handed to hyper's
//! server for the rest of its life, and hyper's path (`handler.rs`) does what it always did.
//!
//! Both paths decide with the same `Proxy::decide`, write the same refusals
//! (`refusal_response`), strip and add the same headers, and record the same metrics and log
//! line; the integration tests run through both (tests/fast_path.rs checks which one served).
//!
//! Upstream connections come from `RawPool` for each request and go back to it as soon as the
//! response has been read, before its last bytes reach the client (so the client's next request
//! finds it). A request on a reused connection that fails before any byte of the answer arrived
//! is sent once more on a new connection (all fast-path methods are idempotent), as nginx does
//! for a cached connection.

use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::Authority;
use http::{Method, Uri};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

use super::handler::{Forward, Proxy, X_REQUEST_ID, refusal_response};
use super::headers::X_FORWARDED_FOR;
use super::upstream::{IdlePool, Limits, connect_tcp};
use crate::auth::credential::CredentialSource;
use crate::observe::RequestRecord;
use crate::observe::metrics::UpstreamErrorKind;
use crate::refusal::Refusal;
use crate::snapshot::{Snapshot, UpstreamTarget};

type SnapshotGuard = arc_swap::Guard<Arc<Snapshot>>;

const MAX_HEADERS: usize = 64;

/// What the fast path did with a connection.
pub(super) enum Outcome {
    /// The connection ended here (closed by either side, timed out, or shut down).
    Done,
    /// A request the fast path does not serve: hyper takes the connection, starting with these
    /// bytes (the unread rest of what the client sent).
    HandOver(TcpStream, Bytes),
}

/// Graceful shutdown as the fast path sees it: a flag, and a notification that wakes every
/// connection waiting for a request. Each connection registers for the notification once, when
/// it starts, instead of once per wait.
#[derive(Default)]
pub struct Stop {
    stopping: AtomicBool,
    notify: Arc<Notify>,
}

impl Stop {
    /// Shutdown has begun: connections finish the request in flight, then close.
    pub fn begin(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn has_begun(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// A future that ends when shutdown begins, registered now (so a `begin` from here on is
    /// not missed; check `has_begun` after calling this for one that came before).
    fn watch(&self) -> Pin<Box<OwnedNotified>> {
        let mut notified = Box::pin(Arc::clone(&self.notify).notified_owned());
        notified.as_mut().enable();
        notified
    }
}

/// The fast path's idle upstream connections: plain sockets, checked with `is_open`.
pub type RawPool = IdlePool<TcpStream>;

/// An idle connection is open when reading from it would block: no end of stream, no stray bytes.
pub(super) fn is_open(stream: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// Where a request's upstream connection goes back to, and on what terms.
struct Upstream<'a> {
    authority: &'a Authority,
    limits: Limits,
}

/// Per-connection state.
struct Conn<'p> {
    proxy: &'p Proxy,
    client: TcpStream,
    peer: SocketAddr,
    peer_text: HeaderValue,
    /// Ends when graceful shutdown begins.
    stop: StopWatch,
    /// Bytes read from the client and not yet used.
    buf: BytesMut,
    /// Bytes read from the upstream and not yet used.
    up_buf: BytesMut,
    /// The response head (and the body bytes that came with it) on its way to the client.
    out: Vec<u8>,
    /// The request head on its way upstream.
    up_out: Vec<u8>,
    /// The upstream connection the current request is using, taken from the pool or opened
    /// for it.
    held: Option<TcpStream>,
    /// The headers the decision reads (credential, `X-Forwarded-For`, `X-Request-Id`).
    decision_headers: HeaderMap,
    /// The current request's headers as (name, value) ranges of `Head::bytes`, in order, with
    /// what each is.
    req_headers: Vec<(Range<usize>, Range<usize>, Known)>,
    /// The current response's headers to pass on, as ranges of `up_buf`.
    resp_headers: Vec<(Range<usize>, Range<usize>)>,
    /// Deadline timers, armed once and re-armed only when they fire early (see `wait`).
    idle_timer: Timer,
    upstream_timer: Timer,
    /// The timeouts of the snapshot whose generation is `timeouts.generation`: read again only
    /// after a reload, so that waiting for a request costs no snapshot load.
    timeouts: Timeouts,
    /// When the connection was last busy (accepted, or its last response recorded): the idle
    /// timeout counts from there. Kept so that waiting for a request needs no clock read.
    last_active: Instant,
}

/// Serves `client` until it closes, or until a request needs hyper.
pub(super) async fn serve(
    proxy: &Proxy,
    client: TcpStream,
    peer: SocketAddr,
    peer_text: HeaderValue,
) -> Outcome {
    let accepted = Instant::now();
    let far = tokio::time::Instant::from_std(accepted) + Duration::from_secs(3600);
    let mut conn = Conn {
        proxy,
        client,
        peer,
        peer_text,
        stop: StopWatch {
            notified: proxy.stop.watch(),
            polled: false,
        },
        // Small to start: most heads fit in 4 KiB, and a connection that never forwards (refused,
        // or handed to hyper) never needs an upstream buffer. Reads grow them when needed.
        buf: BytesMut::with_capacity(4 * 1024),
        up_buf: BytesMut::new(),
        out: Vec::with_capacity(1024),
        up_out: Vec::with_capacity(1024),
        held: None,
        decision_headers: HeaderMap::with_capacity(4),
        req_headers: Vec::with_capacity(16),
        resp_headers: Vec::with_capacity(16),
        idle_timer: Timer::new(far),
        upstream_timer: Timer::new(far),
        last_active: accepted,
        timeouts: Timeouts::current(proxy),
    };
    let outcome = conn.run().await;
    // Between requests the upstream connection is back in the pool; one still held here was cut
    // off mid-request, its state unknown, so it is closed.
    conn.held = None;
    match outcome {
        Step::Close => Outcome::Done,
        Step::HandOver => Outcome::HandOver(conn.client, conn.buf.freeze()),
        Step::Next => unreachable!("run loops on Next"),
    }
}

enum Step {
    Next,
    Close,
    HandOver,
}

/// A request head as the fast path needs it, copied out of the read buffer.
struct Head {
    method: Method,
    uri: Uri,
    /// The head as received; `Conn::req_headers` holds where its headers are.
    bytes: Bytes,
    close: bool,
    len: usize,
}

// Returned by value and matched at once: boxing `Head` would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// The head, and the snapshot it was read with (the request is decided against it).
    Fast(Head, SnapshotGuard),
    Partial,
    Slow,
}

impl Conn<'_> {
    async fn run(&mut self) -> Step {
        loop {
            let step = self.one_request().await;
            if !matches!(step, Step::Next) {
                return step;
            }
        }
    }

    async fn one_request(&mut self) -> Step {
        if self.proxy.store.generation() != self.timeouts.generation {
            self.timeouts = Timeouts::current(self.proxy);
        }
        let settings = self.timeouts;
        // Wait for a request head: idle_timeout until its first byte, header_read_timeout from
        // there to its end.
        let mut head_started: Option<tokio::time::Instant> = None;
        let (head, snapshot) = loop {
            if !self.buf.is_empty() {
                match self.parse(settings.max_header_bytes) {
                    Parsed::Fast(head, snapshot) => break (head, snapshot),
                    Parsed::Slow => return Step::HandOver,
                    Parsed::Partial => {
                        if self.buf.len() > settings.max_header_bytes {
                            return Step::HandOver; // hyper answers 431
                        }
                    }
                }
            }
            if self.proxy.stop.has_begun() && self.buf.is_empty() {
                return Step::Close;
            }
            let deadline = match head_started {
                Some(t) => t + settings.header_read_timeout,
                None => tokio::time::Instant::from_std(self.last_active) + settings.idle_timeout,
            };
            match read_until(
                &mut self.client,
                &mut self.buf,
                &mut self.idle_timer,
                deadline,
                Some((&self.proxy.stop, &mut self.stop)),
            )
            .await
            {
                Read::Data => {
                    head_started.get_or_insert_with(tokio::time::Instant::now);
                }
                Read::Eof | Read::Error | Read::TimedOut | Read::ShutDown => return Step::Close,
            }
        };
        // The request's time counts from its first byte, as nginx's $request_time does.
        let arrived = head_started.map_or_else(Instant::now, tokio::time::Instant::into_std);
        self.handle(head, snapshot, arrived).await
    }

    /// Parses the buffered request head and decides whether the fast path can serve it. The
    /// snapshot it reads the key header from is the one the request is then decided against.
    fn parse(&mut self, max_header_bytes: usize) -> Parsed {
        // Left uninitialised: httparse writes only the entries it fills (2 KiB of stores saved).
        let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut []);
        let len = match request.parse_with_uninit_headers(&self.buf, &mut headers) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Parsed::Partial,
            Err(_) => return Parsed::Slow,
        };
        if len > max_header_bytes || request.version != Some(1) {
            return Parsed::Slow;
        }
        let method = match request.method {
            Some("GET") => Method::GET,
            Some("HEAD") => Method::HEAD,
            Some("DELETE") => Method::DELETE,
            Some("OPTIONS") => Method::OPTIONS,
            _ => return Parsed::Slow,
        };
        let Some(path) = request.path.filter(|p| p.starts_with('/')) else {
            return Parsed::Slow;
        };
        let base = self.buf.as_ptr() as usize;
        let range = |s: &[u8]| {
            let start = s.as_ptr() as usize - base;
            start..start + s.len()
        };
        let path_range = range(path.as_bytes());
        let snapshot = self.proxy.store.load();
        let key_header = &snapshot.server.key_header;
        // Cleared, not made anew: its tables stay allocated from one request to the next.
        let decision_headers = &mut self.decision_headers;
        decision_headers.clear();
        self.req_headers.clear();
        let mut close = false;
        for h in request.headers.iter() {
            let name = h.name.as_bytes();
            // Not `same_token`: a configured name may hold `_` and other bytes bit 5 would change.
            let known = if name.eq_ignore_ascii_case(key_header.as_str().as_bytes()) {
                Known::Key
            } else {
                classify(name)
            };
            match known {
                Known::TransferEncoding | Known::Expect | Known::Upgrade => return Parsed::Slow,
                Known::ContentLength if h.value != b"0" => return Parsed::Slow,
                Known::Connection => {
                    for token in h.value.split(|b| *b == b',') {
                        let token = token.trim_ascii();
                        if token.eq_ignore_ascii_case(b"close") {
                            close = true;
                        } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                            return Parsed::Slow; // names headers to remove: hyper's path does that
                        }
                    }
                }
                Known::Key | Known::Authorization | Known::XForwardedFor | Known::XRequestId => {
                    // The name is known already: no need to parse it again.
                    let name = match known {
                        Known::Key => key_header.clone(),
                        Known::Authorization => header::AUTHORIZATION,
                        Known::XForwardedFor => X_FORWARDED_FOR.clone(),
                        _ => X_REQUEST_ID.clone(),
                    };
                    let Ok(value) = HeaderValue::from_bytes(h.value) else {
                        return Parsed::Slow;
                    };
                    decision_headers.append(name, value);
                }
                _ => {}
            }
            self.req_headers.push((range(name), range(h.value), known));
        }
        // The head's bytes leave the read buffer without a copy; the target is parsed in place.
        let bytes = self.buf.split_to(len).freeze();
        let Ok(uri) = Uri::from_maybe_shared(bytes.slice(path_range)) else {
            // Give the bytes back for hyper, in front of whatever followed them.
            let mut unread = BytesMut::with_capacity(bytes.len() + self.buf.len());
            unread.extend_from_slice(&bytes);
            unread.extend_from_slice(&self.buf);
            self.buf = unread;
            return Parsed::Slow;
        };
        Parsed::Fast(
            Head {
                method,
                uri,
                bytes,
                close,
                len,
            },
            snapshot,
        )
    }

    /// `snapshot` is the one `parse` read the head with; it is released once the request is
    /// decided, before anything waits.
    async fn handle(&mut self, head: Head, snapshot: SnapshotGuard, arrived: Instant) -> Step {
        let (outcome, mut record) = self.proxy.decide(
            &snapshot,
            &head.method,
            &head.uri,
            &self.decision_headers,
            self.peer,
            arrived,
        );
        drop(snapshot);
        let forward = match outcome {
            Ok(forward) => forward,
            Err(refusal) => return self.refuse(refusal, &mut record, head.close).await,
        };
        let authority = match &forward.target {
            UpstreamTarget::Http { authority, .. } => authority,
            UpstreamTarget::Echo => {
                // hyper's path serves the echo upstream; give it this request back unread.
                let mut unread = BytesMut::with_capacity(head.len + self.buf.len());
                unread.extend_from_slice(&head.bytes);
                unread.extend_from_slice(&self.buf);
                self.buf = unread;
                return Step::HandOver;
            }
        };
        self.build_upstream_head(&head, &forward, authority, &record);
        // One clock read serves the record, the upstream deadline and the pool's expiry check.
        let sent = Instant::now();
        let exchanged = self.exchange(authority, &head.method, &forward, sent).await;
        let received = Instant::now();
        record.upstream_time = Some(received.saturating_duration_since(sent));
        let response = match exchanged {
            Ok(response) => response,
            Err(kind) => {
                let refusal = match kind {
                    UpstreamErrorKind::Timeout => Refusal::UpstreamTimeout,
                    UpstreamErrorKind::Connect | UpstreamErrorKind::Other => {
                        Refusal::UpstreamUnavailable
                    }
                };
                if let Some(upstream) = &record.upstream {
                    self.proxy.telemetry.metrics.upstream_error(upstream, kind);
                }
                record.decision = refusal.code();
                return self.refuse(refusal, &mut record, head.close).await;
            }
        };
        let upstream = Upstream {
            authority,
            limits: forward.limits,
        };
        self.relay(response, head.close, &mut record, &upstream, received)
            .await
    }

    /// Sends the request head upstream and reads the response head, retrying once on a new
    /// connection when a reused one turns out closed before answering.
    async fn exchange(
        &mut self,
        authority: &Authority,
        method: &Method,
        forward: &Forward,
        sent: Instant,
    ) -> Result<ResponseHead, UpstreamErrorKind> {
        let deadline = tokio::time::Instant::from_std(sent) + forward.upstream_timeout;
        let limits = forward.limits;
        // Between requests the connection is in the pool, so nothing is held here. The first
        // attempt may reuse one; a retry always opens a new one.
        let mut may_reuse = true;
        loop {
            let pooled = if may_reuse {
                self.proxy.raw_pool.take(authority, sent, |s| is_open(s))
            } else {
                None
            };
            let reused = pooled.is_some();
            let stream = match pooled {
                Some(stream) => stream,
                None => match tokio::time::timeout_at(
                    deadline.min(tokio::time::Instant::now() + limits.connect_timeout),
                    connect_tcp(authority),
                )
                .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(_)) => return Err(UpstreamErrorKind::Connect),
                    Err(_) if tokio::time::Instant::now() >= deadline => {
                        return Err(UpstreamErrorKind::Timeout);
                    }
                    Err(_) => return Err(UpstreamErrorKind::Connect),
                },
            };
            self.up_buf.clear();
            let held = self.held.insert(stream);
            // An upstream that stops reading is given what is left of upstream_timeout.
            let head =
                match write_until(held, &self.up_out, &mut self.upstream_timer, deadline).await {
                    Written::All => {
                        read_response_head(
                            held,
                            &mut self.up_buf,
                            &mut self.resp_headers,
                            &mut self.upstream_timer,
                            deadline,
                            method,
                        )
                        .await
                    }
                    Written::TimedOut => Err(HeadError::TimedOut),
                    Written::Failed => Err(HeadError::ClosedEarly),
                };
            match head {
                Ok(head) => return Ok(head),
                Err(e) => {
                    self.held = None; // an upstream connection that failed is not reused
                    match e {
                        HeadError::TimedOut => return Err(UpstreamErrorKind::Timeout),
                        HeadError::ClosedEarly if reused => may_reuse = false,
                        HeadError::ClosedEarly | HeadError::Invalid => {
                            return Err(UpstreamErrorKind::Other);
                        }
                    }
                }
            }
        }
    }

    fn build_upstream_head(
        &mut self,
        head: &Head,
        forward: &Forward,
        authority: &Authority,
        record: &RequestRecord,
    ) {
        let user = record.user.as_deref().unwrap_or_default();
        let out = &mut self.up_out;
        out.clear();
        out.extend_from_slice(head.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(forward.path_and_query.as_str().as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nhost: ");
        out.extend_from_slice(authority.as_str().as_bytes());
        out.extend_from_slice(b"\r\n");
        let trusted = forward.peer_is_trusted;
        let strip_authorization = forward.credential_source == CredentialSource::Authorization;
        let mut original_host: Option<&[u8]> = None;
        let mut forwarded_for: Vec<&[u8]> = Vec::new();
        let (mut has_proto, mut has_host) = (false, false);
        let mut lines = Lines::new(&head.bytes, out);
        for (name, value_range, known) in &self.req_headers {
            let value = &head.bytes[value_range.clone()];
            match known {
                Known::Host => {
                    original_host.get_or_insert(value);
                    continue;
                }
                Known::Key
                | Known::Hop
                | Known::Connection
                | Known::TransferEncoding
                | Known::Upgrade
                | Known::Identity
                | Known::XRequestId => continue,
                Known::Authorization if strip_authorization => continue,
                Known::XForwardedFor => {
                    if trusted {
                        forwarded_for.push(value);
                    }
                    continue;
                }
                Known::XForwardedProto if !trusted => continue,
                Known::XForwardedProto => has_proto = true,
                Known::XForwardedHost if !trusted => continue,
                Known::XForwardedHost => has_host = true,
                _ => {}
            }
            lines.header(name.clone(), value_range.clone());
        }
        lines.flush();
        out.extend_from_slice(b"x-forwarded-for: ");
        for previous in &forwarded_for {
            out.extend_from_slice(previous);
            out.extend_from_slice(b", ");
        }
        out.extend_from_slice(self.peer_text.as_bytes());
        out.extend_from_slice(b"\r\n");
        if !has_proto {
            out.extend_from_slice(b"x-forwarded-proto: http\r\n");
        }
        if !has_host {
            if let Some(host) = original_host {
                push_header(out, b"x-forwarded-host", host);
            }
        }
        push_header(out, b"x-apiward-user", user.as_bytes());
        push_header(out, b"x-apiward-group", forward.group.as_bytes());
        push_header(out, b"x-request-id", record.request_id.as_bytes());
        out.extend_from_slice(b"\r\n");
    }

    /// Writes the response head and relays the body, then decides whether the connection goes on.
    /// `received` is when the response head arrived.
    async fn relay(
        &mut self,
        response: ResponseHead,
        client_close: bool,
        record: &mut RequestRecord,
        upstream: &Upstream<'_>,
        received: Instant,
    ) -> Step {
        let close = client_close || response.framing == Framing::UntilClose || self.shutting_down();
        record.status = response.status;
        // The head as received minus its hop-by-hop lines: status line and kept headers were
        // recorded by `read_response_head` as ranges of the upstream buffer.
        let rebuilt = &mut self.out;
        rebuilt.clear();
        let mut lines = Lines::new(&self.up_buf, rebuilt);
        let status_end = response.status_line.end;
        if self.up_buf.starts_with(b"HTTP/1.1 ")
            && self.up_buf.get(status_end..status_end + 2) == Some(b"\r\n")
        {
            lines.raw(0..status_end + 2);
        } else {
            lines.out.extend_from_slice(b"HTTP/1.1 ");
            lines
                .out
                .extend_from_slice(&self.up_buf[response.status_line.clone()]);
            lines.out.extend_from_slice(b"\r\n");
        }
        for (name, value) in &self.resp_headers {
            lines.header(name.clone(), value.clone());
        }
        lines.flush();
        push_header(rebuilt, b"x-request-id", record.request_id.as_bytes());
        if !response.has_date {
            push_header(rebuilt, b"date", &http_date());
        }
        if close {
            rebuilt.extend_from_slice(b"connection: close\r\n");
        }
        rebuilt.extend_from_slice(b"\r\n");
        self.up_buf.advance(response.head_len);
        let mut bytes_out = 0u64;
        let mut tracker = match response.framing {
            Framing::Chunked => Some(ChunkTracker::default()),
            _ => None,
        };
        let mut remaining = match response.framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        // The part of the body that arrived with the head goes out in the same write.
        let (first, done) = body_part(
            &response.framing,
            &mut tracker,
            &mut remaining,
            &self.up_buf,
        );
        let first = match first {
            Ok(n) => n,
            Err(()) => {
                self.held = None;
                return self.abort(record, 0);
            }
        };
        rebuilt.extend_from_slice(&self.up_buf[..first]);
        self.up_buf.advance(first);
        bytes_out += first as u64;
        let mut recorded = false;
        if done {
            // The whole response is in this one write: the upstream connection goes back to the
            // pool and the request is recorded before the client sees the answer (so the client's
            // next request finds the connection, and its next scrape finds the count).
            let reusable = self.up_buf.is_empty() && !response.upstream_closes;
            self.release_upstream(reusable, upstream, received);
            self.answered(record, bytes_out, received);
            recorded = true;
        }
        if self.send_out(received).await != Written::All {
            self.held = None;
            return if recorded {
                Step::Close
            } else {
                self.abort(record, bytes_out)
            };
        }
        let idle = self.timeouts.idle_timeout;
        let mut done = done;
        while !done {
            let Some(held) = self.held.as_mut() else {
                return self.abort(record, bytes_out);
            };
            self.up_buf.clear();
            let read = read_until(
                held,
                &mut self.up_buf,
                &mut self.upstream_timer,
                tokio::time::Instant::now() + idle,
                None,
            )
            .await;
            match read {
                Read::Data => {}
                Read::Eof if response.framing == Framing::UntilClose => {
                    self.held = None;
                    break;
                }
                _ => {
                    self.held = None;
                    return self.abort(record, bytes_out);
                }
            }
            let (n, d) = body_part(
                &response.framing,
                &mut tracker,
                &mut remaining,
                &self.up_buf,
            );
            let Ok(n) = n else {
                self.held = None;
                return self.abort(record, bytes_out);
            };
            if d {
                let reusable = self.up_buf.len() == n && !response.upstream_closes;
                self.release_upstream(reusable, upstream, Instant::now());
            }
            // A client that stops reading is given idle_timeout, as one that stops sending is.
            let deadline = tokio::time::Instant::now() + idle;
            let body = &self.up_buf[..n];
            let wrote = write_until(&mut self.client, body, &mut self.idle_timer, deadline).await;
            if wrote != Written::All {
                self.held = None;
                return self.abort(record, bytes_out);
            }
            self.up_buf.advance(n);
            bytes_out += n as u64;
            done = d;
        }
        self.held = None; // released above when reusable; an until-close body ended it
        if !recorded {
            self.answered(record, bytes_out, Instant::now());
        }
        if close {
            let _ = self.client.shutdown().await;
            Step::Close
        } else {
            Step::Next
        }
    }

    /// Writes a refusal, with the same status, headers and body as hyper's path.
    async fn refuse(&mut self, refusal: Refusal, record: &mut RequestRecord, close: bool) -> Step {
        let response = refusal_response(refusal);
        record.status = response.status().as_u16();
        let close = close || refusal == Refusal::BadFraming || self.shutting_down();
        let body = refusal.body();
        let out = &mut self.out;
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(response.status().as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(
            response
                .status()
                .canonical_reason()
                .unwrap_or("")
                .as_bytes(),
        );
        out.extend_from_slice(b"\r\n");
        for (name, value) in response.headers() {
            if name == header::CONNECTION {
                continue;
            }
            push_header(out, name.as_str().as_bytes(), value.as_bytes());
        }
        push_header(out, b"x-request-id", record.request_id.as_bytes());
        push_header(out, b"content-length", body.len().to_string().as_bytes());
        push_header(out, b"date", &http_date());
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&body);
        // Recorded before the client can see the answer, as hyper's path does (a client that
        // reads /metrics right after its response finds the request counted).
        let now = Instant::now();
        self.answered(record, body.len() as u64, now);
        let written = self.send_out(now).await;
        if close || written != Written::All {
            let _ = self.client.shutdown().await;
            Step::Close
        } else {
            Step::Next
        }
    }

    /// Writes `self.out` (an answer's head, or a whole refusal) to the client. A client that stops
    /// reading is given idle_timeout from `since`, as one that stops sending is.
    async fn send_out(&mut self, since: Instant) -> Written {
        let deadline = tokio::time::Instant::from_std(since) + self.timeouts.idle_timeout;
        write_until(&mut self.client, &self.out, &mut self.idle_timer, deadline).await
    }

    /// A request answered by the fast path at `now`: counted for `/status`, and recorded
    /// (metrics, log).
    fn answered(&mut self, record: &RequestRecord, bytes_out: u64, now: Instant) {
        self.proxy.fast_requests.fetch_add(1, Ordering::Relaxed);
        self.proxy.telemetry.finish_at(record, now, 0, bytes_out);
        self.last_active = now;
    }

    /// The response could not be completed: record it and close the client connection, which
    /// is how a client learns that a response it started receiving was cut short.
    fn abort(&mut self, record: &RequestRecord, bytes_out: u64) -> Step {
        self.proxy.telemetry.finish(record, 0, bytes_out);
        Step::Close
    }

    /// Ends this request's use of the upstream connection: back to the pool when `reusable`
    /// (the response ended exactly where it should and the upstream did not say it closes),
    /// closed otherwise.
    fn release_upstream(&mut self, reusable: bool, to: &Upstream<'_>, now: Instant) {
        if let Some(held) = self.held.take() {
            if reusable {
                self.proxy.raw_pool.put(to.authority, held, to.limits, now);
            }
        }
    }

    fn shutting_down(&self) -> bool {
        self.proxy.stop.has_begun()
    }
}

/// The timeouts and limits a connection waits with, read from the snapshot once per reload.
#[derive(Clone, Copy)]
struct Timeouts {
    generation: u64,
    idle_timeout: Duration,
    header_read_timeout: Duration,
    max_header_bytes: usize,
}

impl Timeouts {
    fn current(proxy: &Proxy) -> Timeouts {
        // The generation first: a reload between the two reads makes it stale, not wrong.
        let generation = proxy.store.generation();
        let server = &proxy.store.load().server;
        Timeouts {
            generation,
            idle_timeout: server.idle_timeout,
            header_read_timeout: server.header_read_timeout,
            max_header_bytes: server.max_header_bytes,
        }
    }
}

/// Copies header lines out of a received head: a run of lines that are next to each other and
/// already in the form `name: value\r\n` goes out in one copy; any other line is rewritten in
/// that form by `push_header`. The bytes written are the same either way.
struct Lines<'a> {
    src: &'a [u8],
    out: &'a mut Vec<u8>,
    run: Range<usize>,
}

impl<'a> Lines<'a> {
    fn new(src: &'a [u8], out: &'a mut Vec<u8>) -> Lines<'a> {
        Lines {
            src,
            out,
            run: 0..0,
        }
    }

    /// Copies `src[line]` (one whole line, its CRLF included) as it is.
    fn raw(&mut self, line: Range<usize>) {
        if self.run.is_empty() || self.run.end != line.start {
            self.flush();
            self.run.start = line.start;
        }
        self.run.end = line.end;
    }

    fn header(&mut self, name: Range<usize>, value: Range<usize>) {
        let src = self.src;
        let canonical = src.get(name.end..value.start) == Some(b": ")
            && src.get(value.end..value.end + 2) == Some(b"\r\n");
        if canonical {
            self.raw(name.start..value.end + 2);
        } else {
            self.flush();
            push_header(self.out, &src[name], &src[value]);
        }
    }

    fn flush(&mut self) {
        if !self.run.is_empty() {
            self.out.extend_from_slice(&self.src[self.run.clone()]);
            self.run = 0..0;
        }
    }
}

fn push_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The header names the fast path acts on. Found by length first, so a name is compared with at
/// most two candidates instead of every one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    /// The configured key header.
    Key,
    Host,
    Date,
    Connection,
    /// Hop-by-hop besides `Connection` and `Transfer-Encoding`.
    Hop,
    TransferEncoding,
    ContentLength,
    Expect,
    Upgrade,
    Authorization,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    XRequestId,
    /// `X-Apiward-User` and `X-Apiward-Group`: ours only.
    Identity,
    Other,
}

fn classify(name: &[u8]) -> Known {
    use Known::*;
    let candidates: &[(&[u8], Known)] = match name.len() {
        2 => &[(b"te", Hop)],
        4 => &[(b"host", Host), (b"date", Date)],
        6 => &[(b"expect", Expect)],
        7 => &[(b"trailer", Hop), (b"upgrade", Upgrade)],
        10 => &[(b"connection", Connection), (b"keep-alive", Hop)],
        12 => &[(b"x-request-id", XRequestId)],
        13 => &[(b"authorization", Authorization)],
        14 => &[
            (b"content-length", ContentLength),
            (b"x-apiward-user", Identity),
        ],
        15 => &[
            (b"x-forwarded-for", XForwardedFor),
            (b"x-apiward-group", Identity),
        ],
        16 => &[
            (b"proxy-connection", Hop),
            (b"x-forwarded-host", XForwardedHost),
        ],
        17 => &[
            (b"transfer-encoding", TransferEncoding),
            (b"x-forwarded-proto", XForwardedProto),
        ],
        18 => &[(b"proxy-authenticate", Hop)],
        19 => &[(b"proxy-authorization", Hop)],
        _ => &[],
    };
    candidates
        .iter()
        .find(|(n, _)| same_token(name, n))
        .map_or(Other, |(_, k)| *k)
}

/// Whether header name `name` equals `lower`, a name of lower-case letters and `-` only, ignoring
/// ASCII case. Setting bit 5 lower-cases a letter and leaves `-` as it is; the only other bytes it
/// would turn into those (controls) cannot be in a header name, which `httparse` has checked.
fn same_token(name: &[u8], lower: &[u8]) -> bool {
    name.len() == lower.len() && name.iter().zip(lower).all(|(a, b)| a | 0x20 == *b)
}

enum Read {
    Data,
    Eof,
    Error,
    TimedOut,
    ShutDown,
}

/// A connection's deadline timer: armed once, and moved only when it fires before the deadline
/// that counts now, so a request costs no timer registration.
struct Timer {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// Polled (so its waker is this task's) since it was last set: until it is set again or
    /// fires, it need not be polled on every wait.
    registered: bool,
}

impl Timer {
    fn new(deadline: tokio::time::Instant) -> Timer {
        Timer {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            registered: false,
        }
    }

    fn set(&mut self, deadline: tokio::time::Instant) {
        self.sleep.as_mut().reset(deadline);
        self.registered = false;
    }

    /// Makes sure the timer fires by `deadline`: moved only if it is armed for later.
    fn arm_by(&mut self, deadline: tokio::time::Instant) {
        if self.sleep.deadline() > deadline {
            self.set(deadline);
        }
    }

    /// Whether `deadline` has passed; otherwise the timer will wake this task by then.
    fn poll_passed(&mut self, cx: &mut Context<'_>, deadline: tokio::time::Instant) -> bool {
        loop {
            if self.registered && !self.sleep.is_elapsed() {
                return false;
            }
            match self.sleep.as_mut().poll(cx) {
                Poll::Pending => {
                    self.registered = true;
                    return false;
                }
                Poll::Ready(()) if tokio::time::Instant::now() >= deadline => return true,
                // It fired for an earlier deadline than this wait's: set it again.
                Poll::Ready(()) => self.set(deadline),
            }
        }
    }
}

/// A connection's view of graceful shutdown: the notification, polled once so that it wakes
/// this task, then the flag (`Stop::has_begun`) on every wait.
struct StopWatch {
    notified: Pin<Box<OwnedNotified>>,
    polled: bool,
}

impl StopWatch {
    fn poll_begun(&mut self, cx: &mut Context<'_>, stop: &Stop) -> bool {
        if stop.has_begun() {
            return true;
        }
        if !self.polled {
            self.polled = true;
            return self.notified.as_mut().poll(cx).is_ready();
        }
        false
    }
}

/// How a wait for a socket ended.
enum Until<T> {
    Done(T),
    TimedOut,
    ShutDown,
}

/// Runs `op` (a read or a write), giving up at `deadline` and, with `stop`, when the gateway
/// shuts down. Once `op` is pending, the timer and the shutdown notification are polled only
/// when they need to be (see `Timer` and `StopWatch`): a task's waker is the same from one poll
/// to the next, so what they registered stays valid.
async fn until<F: Future>(
    op: F,
    timer: &mut Timer,
    deadline: tokio::time::Instant,
    mut stop: Option<(&Stop, &mut StopWatch)>,
) -> Until<F::Output> {
    timer.arm_by(deadline);
    let mut op = std::pin::pin!(op);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(output) = op.as_mut().poll(cx) {
            return Poll::Ready(Until::Done(output));
        }
        if timer.poll_passed(cx, deadline) {
            return Poll::Ready(Until::TimedOut);
        }
        if let Some((stop, watch)) = stop.as_mut() {
            if watch.poll_begun(cx, stop) {
                return Poll::Ready(Until::ShutDown);
            }
        }
        Poll::Pending
    })
    .await
}

/// Reads once into `buf`, giving up at `deadline` (and, for a client between requests, when the
/// gateway shuts down).
/// (`read_buf` goes through tokio's `poll_read`, which forgets the socket's readiness after a
/// short read: the next read waits for epoll instead of trying a `recvfrom` that would fail.)
async fn read_until(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    timer: &mut Timer,
    deadline: tokio::time::Instant,
    stop: Option<(&Stop, &mut StopWatch)>,
) -> Read {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8192);
    }
    match until(stream.read_buf(buf), timer, deadline, stop).await {
        Until::Done(Ok(0)) => Read::Eof,
        Until::Done(Ok(_)) => Read::Data,
        Until::Done(Err(_)) => Read::Error,
        Until::TimedOut => Read::TimedOut,
        Until::ShutDown => Read::ShutDown,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    All,
    Failed,
    TimedOut,
}

/// Writes all of `bytes`, giving up at `deadline`. The timer is involved only if the write has
/// to wait (the socket's buffer is full), which a request and its answer almost never do.
async fn write_until(
    stream: &mut TcpStream,
    bytes: &[u8],
    timer: &mut Timer,
    deadline: tokio::time::Instant,
) -> Written {
    // Almost always the socket takes it all at once: then no future and no timer are involved.
    let bytes = match stream.try_write(bytes) {
        Ok(n) if n == bytes.len() => return Written::All,
        Ok(n) => &bytes[n..],
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => bytes,
        Err(_) => return Written::Failed,
    };
    match until(stream.write_all(bytes), timer, deadline, None).await {
        Until::Done(Ok(())) => Written::All,
        Until::TimedOut => Written::TimedOut,
        Until::Done(Err(_)) | Until::ShutDown => Written::Failed,
    }
}

/// How a response body ends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

struct ResponseHead {
    status: u16,
    head_len: usize,
    /// `200 OK`: the status line after the version.
    status_line: std::ops::Range<usize>,
    has_date: bool,
    framing: Framing,
    upstream_closes: bool,
}

enum HeadError {
    /// The connection closed or failed before any byte of a response arrived.
    ClosedEarly,
    Invalid,
    TimedOut,
}

async fn read_response_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    kept: &mut Vec<(Range<usize>, Range<usize>)>,
    timer: &mut Timer,
    deadline: tokio::time::Instant,
    method: &Method,
) -> Result<ResponseHead, HeadError> {
    loop {
        match read_until(stream, buf, timer, deadline, None).await {
            Read::Data => {}
            Read::Eof | Read::Error if buf.is_empty() => return Err(HeadError::ClosedEarly),
            Read::Eof | Read::Error | Read::ShutDown => return Err(HeadError::Invalid),
            Read::TimedOut => return Err(HeadError::TimedOut),
        }
        loop {
            match parse_response_head(buf, method, kept) {
                Ok(Some(head)) if (100..200).contains(&head.status) && head.status != 101 => {
                    // An interim response (103 Early Hints): skip it, the final one follows.
                    buf.advance(head.head_len);
                }
                Ok(Some(head)) if head.status == 101 => return Err(HeadError::Invalid),
                Ok(Some(head)) => return Ok(head),
                Ok(None) => break,
                Err(()) => return Err(HeadError::Invalid),
            }
        }
        if buf.len() > 64 * 1024 {
            return Err(HeadError::Invalid);
        }
    }
}

/// A `Content-Length` value: `1*DIGIT` (RFC 9110, 8.6) between optional spaces or tabs, that fits
/// in a `u64`. A sign, an empty value or anything else is refused, as hyper refuses it.
fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// Parses a response head; the headers to pass on go to `kept` as ranges of `buf`.
fn parse_response_head(
    buf: &[u8],
    method: &Method,
    kept: &mut Vec<(Range<usize>, Range<usize>)>,
) -> Result<Option<ResponseHead>, ()> {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut []);
    let head_len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut response,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(_) => return Err(()),
    };
    let status = response.code.ok_or(())?;
    let base = buf.as_ptr() as usize;
    let range = |s: &[u8]| {
        let start = s.as_ptr() as usize - base;
        start..start + s.len()
    };
    // "HTTP/1.1 " is 9 bytes; the status line runs to the first LF, less the CR before it
    // (httparse accepts a bare LF too).
    let lf = buf.iter().position(|b| *b == b'\n').ok_or(())?;
    let line_end = if buf[..lf].ends_with(b"\r") {
        lf - 1
    } else {
        lf
    };
    if line_end < 12 {
        return Err(());
    }
    let status_line = 9..line_end;
    kept.clear();
    let mut has_date = false;
    let mut length: Option<u64> = None;
    let mut chunked = false;
    let mut other_coding = false;
    let mut upstream_closes = response.version == Some(0);
    let mut named: Vec<&[u8]> = Vec::new();
    for h in response.headers.iter() {
        let n = h.name.as_bytes();
        let known = classify(n);
        if known == Known::Connection {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    upstream_closes = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    if response.version == Some(0) {
                        upstream_closes = false;
                    }
                } else if !token.is_empty() {
                    named.push(token);
                }
            }
            continue;
        }
        if known == Known::TransferEncoding {
            let last = h
                .value
                .rsplit(|b| *b == b',')
                .next()
                .unwrap_or(b"")
                .trim_ascii();
            if last.eq_ignore_ascii_case(b"chunked") {
                chunked = true;
            } else {
                other_coding = true;
            }
            kept.push((range(h.name.as_bytes()), range(h.value)));
            continue;
        }
        if known == Known::ContentLength {
            let value = content_length(h.value).ok_or(())?;
            if length.is_some_and(|l| l != value) {
                return Err(());
            }
            length = Some(value);
        }
        match known {
            Known::Date => has_date = true,
            Known::Hop | Known::Upgrade | Known::XRequestId => continue,
            _ => {}
        }
        kept.push((range(h.name.as_bytes()), range(h.value)));
    }
    if !named.is_empty() {
        kept.retain(|(name, _)| {
            !named
                .iter()
                .any(|token| buf[name.clone()].eq_ignore_ascii_case(token))
        });
    }
    let framing = if *method == Method::HEAD || status == 204 || status == 304 || status < 200 {
        Framing::None
    } else if chunked && !other_coding {
        Framing::Chunked
    } else if chunked || other_coding {
        // A coding that does not end in chunked: the body runs to the end of the connection.
        kept.retain(|(name, _)| !buf[name.clone()].eq_ignore_ascii_case(b"transfer-encoding"));
        Framing::UntilClose
    } else {
        match length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None => Framing::UntilClose,
        }
    };
    if framing != Framing::Chunked {
        kept.retain(|(name, _)| !buf[name.clone()].eq_ignore_ascii_case(b"transfer-encoding"));
    }
    if matches!(framing, Framing::Chunked | Framing::UntilClose) {
        // A length beside a transfer coding is wrong and ignored (RFC 9112 6.3); passing it on
        // would let the client frame the body differently from us.
        kept.retain(|(name, _)| !buf[name.clone()].eq_ignore_ascii_case(b"content-length"));
    }
    if framing == Framing::UntilClose {
        upstream_closes = true;
    }
    Ok(Some(ResponseHead {
        status,
        head_len,
        status_line,
        has_date,
        framing,
        upstream_closes,
    }))
}

/// How many of `available`'s bytes belong to the body, and whether the body ends with them.
fn body_part(
    framing: &Framing,
    tracker: &mut Option<ChunkTracker>,
    remaining: &mut u64,
    available: &[u8],
) -> (Result<usize, ()>, bool) {
    match framing {
        Framing::None => (Ok(0), true),
        Framing::Length(_) => {
            let n = (*remaining).min(available.len() as u64);
            *remaining -= n;
            (Ok(n as usize), *remaining == 0)
        }
        Framing::UntilClose => (Ok(available.len()), false),
        Framing::Chunked => match tracker
            .as_mut()
            .expect("a tracker for chunked bodies")
            .feed(available)
        {
            Ok(Some(end)) => (Ok(end), true),
            Ok(None) => (Ok(available.len()), false),
            Err(()) => (Err(()), false),
        },
    }
}

/// Follows a chunked body as it streams past, byte for byte, to find where it ends.
#[derive(Debug, Default)]
struct ChunkTracker {
    state: ChunkState,
    size: u64,
    digits: u8,
    line: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    Trailer,
    TrailerLf,
    Done,
}

impl ChunkTracker {
    /// Consumes `bytes`; `Some(n)` when the body ends after the first `n` of them.
    fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, ()> {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match self.state {
                ChunkState::Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (b as char).to_digit(16).expect("hex digit") as u64;
                        self.digits += 1;
                        if self.digits > 15 {
                            return Err(());
                        }
                        self.size = self.size * 16 + digit;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => self.state = ChunkState::Extension,
                    b'\r' if self.digits > 0 => self.state = ChunkState::SizeLf,
                    _ => return Err(()),
                },
                ChunkState::Extension => {
                    if b == b'\r' {
                        self.state = ChunkState::SizeLf;
                    } else if b == b'\n' {
                        return Err(());
                    }
                }
                ChunkState::SizeLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = if self.size == 0 {
                        self.line = 0;
                        ChunkState::Trailer
                    } else {
                        ChunkState::Data
                    };
                }
                ChunkState::Data => {
                    let take = self.size.min((bytes.len() - i) as u64);
                    self.size -= take;
                    i += take as usize;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::DataCr => {
                    if b != b'\r' {
                        return Err(());
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    self.state = ChunkState::Size;
                    self.digits = 0;
                    self.size = 0;
                }
                ChunkState::Trailer => {
                    if b == b'\r' {
                        self.state = ChunkState::TrailerLf;
                    } else {
                        self.line += 1;
                        if self.line > 64 * 1024 {
                            return Err(());
                        }
                    }
                }
                ChunkState::TrailerLf => {
                    if b != b'\n' {
                        return Err(());
                    }
                    if self.line == 0 {
                        self.state = ChunkState::Done;
                        return Ok(Some(i + 1));
                    }
                    self.line = 0;
                    self.state = ChunkState::Trailer;
                }
                ChunkState::Done => return Ok(Some(i)),
            }
            i += 1;
        }
        Ok(None)
    }
}

/// The current time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), formatted at most once a
/// second per thread.
fn http_date() -> [u8; 29] {
    use std::cell::Cell;
    thread_local! {
        static CACHE: Cell<(u64, [u8; 29])> = const { Cell::new((u64::MAX, [0; 29])) };
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHE.with(|cache| {
        let (at, text) = cache.get();
        if at == now {
            return text;
        }
        let text = format_http_date(now);
        cache.set((now, text));
        text
    })
}

/// `httpdate` is what hyper formats its own `Date` headers with.
fn format_http_date(unix: u64) -> [u8; 29] {
    let at = std::time::UNIX_EPOCH + Duration::from_secs(unix);
    let mut out = [b' '; 29];
    let text = httpdate::fmt_http_date(at);
    let n = text.len().min(29);
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out
}

/// A client connection handed to hyper: the bytes the fast path already read come first.
pub(super) struct Prefixed {
    prefix: Bytes,
    inner: TcpStream,
}

impl Prefixed {
    pub(super) fn new(prefix: Bytes, inner: TcpStream) -> Self {
        Prefixed { prefix, inner }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chunk_tracker_finds_the_end_of_a_chunked_body_however_it_is_split() {
        let body = b"4\r\nWiki\r\n5;name=value\r\npedia\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let end = body.len() - 4;
        for split in 0..=body.len() {
            let mut t = ChunkTracker::default();
            let (a, b) = body.split_at(split);
            let found = match t.feed(a).unwrap() {
                Some(n) => Some(n),
                None => t.feed(b).unwrap().map(|n| n + a.len()),
            };
            assert_eq!(found, Some(end), "split at {split}");
        }
        let mut t = ChunkTracker::default();
        assert_eq!(t.feed(b"0\r\n\r\n").unwrap(), Some(5));
        for bad in [&b"x\r\n"[..], b"4\r\nWikiXX", b"\r\n", b"4\n"] {
            assert!(ChunkTracker::default().feed(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn header_names_are_classified_whatever_their_case() {
        for (name, known) in [
            ("Host", Known::Host),
            ("TE", Known::Hop),
            ("Keep-Alive", Known::Hop),
            ("Proxy-Authorization", Known::Hop),
            ("connection", Known::Connection),
            ("Transfer-Encoding", Known::TransferEncoding),
            ("X-Forwarded-Proto", Known::XForwardedProto),
            ("x-apiward-GROUP", Known::Identity),
            ("X-Request-ID", Known::XRequestId),
            ("x-forwarded-fox", Known::Other),
            ("accept", Known::Other),
            ("", Known::Other),
            ("x_request_id", Known::Other),
            ("X-REQUEST-ID", Known::XRequestId),
            ("x-request-i^", Known::Other),
        ] {
            assert_eq!(classify(name.as_bytes()), known, "{name}");
        }
    }

    #[test]
    fn every_hop_by_hop_header_of_hypers_path_is_one_here_too() {
        // Two spellings of one list: `headers::HOP_BY_HOP` for hyper's path, `classify` here.
        for name in super::super::headers::HOP_BY_HOP {
            assert!(
                matches!(
                    classify(name.as_str().as_bytes()),
                    Known::Hop | Known::Connection | Known::TransferEncoding | Known::Upgrade
                ),
                "{name}"
            );
        }
    }

    #[test]
    fn http_dates_are_imf_fixdates() {
        assert_eq!(
            &format_http_date(784_111_777),
            b"Sun, 06 Nov 1994 08:49:37 GMT"
        );
        assert_eq!(
            &format_http_date(1_795_341_600),
            b"Sun, 22 Nov 2026 10:00:00 GMT"
        );
    }

    #[test]
    fn header_lines_come_out_as_push_header_writes_them_however_they_came_in() {
        let src: &[u8] = b"HTTP/1.1 200 OK\r\na: 1\r\nb: 2\r\nc:   3  \r\nd: 4\ne:\r\nf: 6\r\n\r\n";
        let mut headers = [httparse::EMPTY_HEADER; 8];
        let mut response = httparse::Response::new(&mut headers);
        assert!(response.parse(src).unwrap().is_complete());
        let base = src.as_ptr() as usize;
        let range = |s: &[u8]| s.as_ptr() as usize - base..s.as_ptr() as usize - base + s.len();
        // Every subset of the headers, in order, as the request and response paths keep them.
        let all = response.headers;
        for mask in 0u32..(1 << all.len()) {
            let kept: Vec<_> = (0..all.len()).filter(|i| mask & (1 << i) != 0).collect();
            let mut expected = Vec::new();
            for &i in &kept {
                push_header(&mut expected, all[i].name.as_bytes(), all[i].value);
            }
            let mut out = Vec::new();
            let mut lines = Lines::new(src, &mut out);
            for &i in &kept {
                lines.header(range(all[i].name.as_bytes()), range(all[i].value));
            }
            lines.flush();
            assert_eq!(
                String::from_utf8_lossy(&out),
                String::from_utf8_lossy(&expected),
                "headers {kept:?}"
            );
        }
    }

    #[test]
    fn the_status_line_ends_at_its_line_end_whatever_the_line_ends_are() {
        for text in [
            "HTTP/1.1 404 Not Found\r\nx: 1\r\n\r\n",
            "HTTP/1.1 404 Not Found\nx: 1\r\n\n",
        ] {
            let head = parse_response_head(text.as_bytes(), &Method::GET, &mut Vec::new())
                .unwrap()
                .unwrap();
            assert_eq!(&text[head.status_line], "404 Not Found", "{text:?}");
        }
    }

    #[test]
    fn content_length_is_digits_only() {
        assert_eq!(content_length(b"20"), Some(20));
        assert_eq!(content_length(b" \t0020 "), Some(20));
        assert_eq!(content_length(b"18446744073709551615"), Some(u64::MAX));
        for bad in [
            &b""[..],
            b" ",
            b"+20",
            b"-1",
            b"2 0",
            b"20;",
            b"0x14",
            b"18446744073709551616",
        ] {
            assert_eq!(
                content_length(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn response_framing_follows_rfc_9112() {
        let get = Method::GET;
        let parse = |text: &str, m: &Method| {
            parse_response_head(text.as_bytes(), m, &mut Vec::new())
                .unwrap()
                .unwrap()
                .framing
        };
        assert_eq!(
            parse("HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n", &get),
            Framing::Length(5)
        );
        assert_eq!(
            parse(
                "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n",
                &get
            ),
            Framing::Chunked
        );
        assert_eq!(parse("HTTP/1.1 200 OK\r\n\r\n", &get), Framing::UntilClose);
        assert_eq!(
            parse("HTTP/1.1 204 No Content\r\n\r\n", &get),
            Framing::None
        );
        assert_eq!(
            parse(
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
                &Method::HEAD
            ),
            Framing::None
        );
        assert!(
            parse_response_head(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n",
                &get,
                &mut Vec::new()
            )
            .is_err()
        );
        let mut kept = Vec::new();
        let both = parse_response_head(
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n",
            &get,
            &mut kept,
        )
        .unwrap()
        .unwrap();
        assert_eq!(both.framing, Framing::Chunked);
        assert_eq!(kept.len(), 1, "the length is dropped, the coding kept");
        parse_response_head(
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Internal\r\nX-Internal: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: 1\r\ncontent-length: 0\r\n\r\n",
            &get,
            &mut kept,
        )
        .unwrap()
        .unwrap();
        assert_eq!(kept.len(), 2, "x-kept and content-length only");
    }
}
