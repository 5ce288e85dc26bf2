//! The engine's connection driver: reads request heads from any stream (TCP now, TLS next),
//! hands what the engine does not serve to hyper, has the policy admit the rest, and refuses or
//! forwards each (`forward.rs`), one request after another on the connection.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderValue};
use http::{Method, Uri};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::codec::{RequestHead, http_date, push_header, read_request_head};
use super::deadline::{Read, StopWatch, Timer, Written, read_until, write_until};
use super::engine::Engine;
use crate::config::reload::ConfigStore;
use crate::limits::Admitted;
use crate::observe::RequestRecord;
use crate::proxy::policy::headers::Known;
use crate::proxy::policy::{HeadChecked, Policy, Refused};
use crate::refusal::Refusal;
use crate::snapshot::Snapshot;
use crate::tls::ClientSession;
use crate::upstream::{Outcome as Attempted, Tried};

type SnapshotGuard = arc_swap::Guard<Arc<Snapshot>>;

/// What the engine did with a connection.
pub enum Outcome<S> {
    /// The connection ended here (closed by either side, timed out, or shut down).
    Done,
    /// A request the fast path does not serve: hyper takes the connection, starting with these
    /// bytes (the unread rest of what the client sent).
    HandOver(S, Bytes),
}

/// Per-connection state.
pub(super) struct Conn<'p, S> {
    pub(super) engine: &'p Engine,
    pub(super) policy: &'p Policy,
    pub(super) client: S,
    pub(super) peer: SocketAddr,
    pub(super) peer_text: HeaderValue,
    /// What the TLS handshake agreed, on the TLS listener.
    pub(super) session: Option<ClientSession>,
    /// Ends when graceful shutdown begins.
    pub(super) stop: StopWatch,
    /// Bytes read from the client and not yet used.
    pub(super) buf: BytesMut,
    /// Bytes read from the upstream and not yet used.
    pub(super) up_buf: BytesMut,
    /// The response head (and the body bytes that came with it) on its way to the client.
    pub(super) out: Vec<u8>,
    /// The request head on its way upstream.
    pub(super) up_out: Vec<u8>,
    /// The upstream connection the current request is using, taken from the pool or opened
    /// for it.
    pub(super) held: Option<TcpStream>,
    /// The headers the decision reads (credential, `X-Forwarded-For`, `X-Request-Id`).
    pub(super) decision_headers: HeaderMap,
    /// The current request's headers as (name, value) ranges of `Head::bytes`, in order, with
    /// what each is.
    pub(super) req_headers: Vec<(Range<usize>, Range<usize>, Known)>,
    /// The current response's headers to pass on, as ranges of `up_buf`.
    pub(super) resp_headers: Vec<(Range<usize>, Range<usize>)>,
    /// Deadline timers, armed once and re-armed only when they fire early (see `wait`).
    pub(super) idle_timer: Timer,
    pub(super) upstream_timer: Timer,
    /// The timeouts of the snapshot whose generation is `timeouts.generation`: read again only
    /// after a reload, so that waiting for a request costs no snapshot load.
    pub(super) timeouts: Timeouts,
    /// When the connection was last busy (accepted, or its last response recorded): the idle
    /// timeout counts from there. Kept so that waiting for a request needs no clock read.
    pub(super) last_active: Instant,
}

/// Serves `client` until it closes, or until a request needs hyper. `peer_text` is `peer`'s
/// address as sent in `X-Forwarded-For`, made once per connection.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(
    engine: &Engine,
    client: S,
    peer: SocketAddr,
    peer_text: HeaderValue,
    session: Option<ClientSession>,
) -> Outcome<S> {
    let accepted = Instant::now();
    let far = tokio::time::Instant::from_std(accepted) + Duration::from_secs(3600);
    let mut conn = Conn {
        engine,
        policy: &engine.policy,
        client,
        peer,
        peer_text,
        session,
        stop: StopWatch {
            notified: engine.stop.watch(),
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
        timeouts: Timeouts::current(&engine.policy.store),
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

pub(super) enum Step {
    Next,
    Close,
    HandOver,
}

/// A request head as the engine needs it, copied out of the read buffer.
pub(super) struct Head {
    pub(super) method: Method,
    pub(super) uri: Uri,
    /// The head as received; `Conn::req_headers` holds where its headers are.
    pub(super) bytes: Bytes,
    pub(super) close: bool,
    pub(super) len: usize,
}

// Returned by value and matched at once: boxing `Head` would only add an allocation.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// The head, and the snapshot it was read with (the request is decided against it).
    Fast(Head, SnapshotGuard),
    Partial,
    Slow,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<'_, S> {
    async fn run(&mut self) -> Step {
        loop {
            let step = self.one_request().await;
            if !matches!(step, Step::Next) {
                return step;
            }
        }
    }

    async fn one_request(&mut self) -> Step {
        if self.policy.store.generation() != self.timeouts.generation {
            self.timeouts = Timeouts::current(&self.policy.store);
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
            if self.engine.stop.has_begun() && self.buf.is_empty() {
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
                Some((&self.engine.stop, &mut self.stop)),
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
        let snapshot = self.policy.store.load();
        let read = read_request_head(
            &self.buf,
            max_header_bytes,
            &snapshot.server.key_header,
            &snapshot.server.credential_headers,
            &mut self.decision_headers,
            &mut self.req_headers,
        );
        let (method, path_range, close, len) = match read {
            RequestHead::Fast {
                method,
                path,
                close,
                len,
            } => (method, path, close, len),
            RequestHead::Partial => return Parsed::Partial,
            RequestHead::Slow => return Parsed::Slow,
        };
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
        let (outcome, mut record) = self.policy.admit(
            &snapshot,
            &head.method,
            &head.uri,
            &self.decision_headers,
            HeadChecked::ByEngine,
            self.peer,
            arrived,
            self.session,
        );
        drop(snapshot);
        let mut forward = match outcome {
            Ok(forward) => forward,
            Err(refusal) => return self.refuse(refusal, &mut record, head.close).await,
        };
        let Some(cluster) = forward.cluster.as_ref().filter(|c| c.config().plain_http1) else {
            // hyper's path serves the echo upstream, and upstreams with HTTPS or HTTP/2
            // targets; give it this request back unread.
            let mut unread = BytesMut::with_capacity(head.len + self.buf.len());
            unread.extend_from_slice(&head.bytes);
            unread.extend_from_slice(&self.buf);
            self.buf = unread;
            return Step::HandOver;
        };
        // The limit step, here and not before the hand-over, so that hyper's path counts it
        // once. A user without limits skips it; the local store's needs no future.
        let plan = &mut forward.limit_plan;
        let limited = if plan.limits.is_unlimited() {
            Ok(Admitted::default())
        } else if plan.shared {
            self.policy.limit(plan, &mut record).await
        } else {
            self.policy.limit_local(plan, &mut record)
        };
        let admitted = match limited {
            Ok(admitted) => admitted,
            Err(limited) => return self.refuse(limited, &mut record, head.close).await,
        };
        // One place at the upstream for the request, whichever target its attempts go to.
        let place = match cluster
            .place(
                forward.limits.max_upstream_connections,
                forward.limits.connect_timeout,
            )
            .await
        {
            Ok(place) => place,
            Err(_busy) => {
                let refusal = Refusal::UpstreamBusy;
                record.decision = refusal.code();
                return self.refuse(refusal, &mut record, head.close).await;
            }
        };
        // One clock read serves the record, the upstream deadline and the pool's expiry check.
        let sent = Instant::now();
        let deadline = sent + forward.upstream_timeout;
        let mut tried = Tried::default();
        let mut attempts = 0u32;
        loop {
            let Some(attempt) = cluster.pick(record.user.as_deref(), tried) else {
                // Only when every target was tried, which the retry condition below rules out.
                let refusal = Refusal::NoHealthyUpstream;
                record.decision = refusal.code();
                return self.refuse(refusal, &mut record, head.close).await;
            };
            attempts += 1;
            tried = tried.with(attempt.index());
            let target = attempt.target();
            self.build_upstream_head(&head, &forward, target, attempt.host(), &record);
            let exchanged = self
                .exchange(&target.authority, &head.method, &forward, sent)
                .await;
            let received = Instant::now();
            record.upstream_time = Some(received.saturating_duration_since(sent));
            match exchanged {
                Ok(response) => {
                    attempt.report(Attempted::Answered(response.status));
                    // The attempt stays outstanding on its target, and `admitted` holds its
                    // limits, until the answer is relayed or the client has gone.
                    return self
                        .relay(
                            response,
                            head.close,
                            &mut record,
                            (&target.authority, forward.limits, place),
                            received,
                            &admitted,
                        )
                        .await;
                }
                Err(failure) => {
                    attempt.report(Attempted::Failed(&failure.to_string()));
                    let again = failure.retryable()
                        && forward.may_retry(&head.method, attempts)
                        && (attempts as usize) < cluster.config().targets.len()
                        && received < deadline;
                    if again {
                        self.policy.retrying(&record);
                        continue;
                    }
                    let refusal = self.policy.upstream_failed(
                        &mut record,
                        target.authority.as_str(),
                        failure,
                        attempt.fallback,
                    );
                    return self.refuse(refusal, &mut record, head.close).await;
                }
            }
        }
    }

    /// Writes a refusal: its status, headers and body are `Refusal::response`'s, as on hyper's
    /// path.
    pub(super) async fn refuse(
        &mut self,
        refused: impl Into<Refused>,
        record: &mut RequestRecord,
        close: bool,
    ) -> Step {
        let refused = refused.into();
        let refusal = refused.refusal();
        let response = refused.response::<Bytes>(record.presented);
        record.status = response.status().as_u16();
        let close = close || refusal.closes_connection() || self.shutting_down();
        let body = response.body();
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
            if name == http::header::CONNECTION {
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
        out.extend_from_slice(body);
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
    pub(super) async fn send_out(&mut self, since: Instant) -> Written {
        let deadline = tokio::time::Instant::from_std(since) + self.timeouts.idle_timeout;
        write_until(&mut self.client, &self.out, &mut self.idle_timer, deadline).await
    }

    /// A request answered by the engine at `now`: counted for `/status`, and recorded
    /// (metrics, log).
    pub(super) fn answered(&mut self, record: &mut RequestRecord, bytes_out: u64, now: Instant) {
        self.engine.served.fetch_add(1, Ordering::Relaxed);
        self.policy.finish(record, now, 0, bytes_out);
        self.last_active = now;
    }

    /// The response could not be completed: record it and close the client connection, which
    /// is how a client learns that a response it started receiving was cut short.
    pub(super) fn abort(&mut self, record: &mut RequestRecord, bytes_out: u64) -> Step {
        self.policy.finish(record, Instant::now(), 0, bytes_out);
        Step::Close
    }

    pub(super) fn shutting_down(&self) -> bool {
        self.engine.stop.has_begun()
    }
}

/// The timeouts and limits a connection waits with, read from the snapshot once per reload.
#[derive(Clone, Copy)]
pub(super) struct Timeouts {
    generation: u64,
    pub(super) idle_timeout: Duration,
    header_read_timeout: Duration,
    max_header_bytes: usize,
}

impl Timeouts {
    fn current(store: &ConfigStore) -> Timeouts {
        // The generation first: a reload between the two reads makes it stale, not wrong.
        let generation = store.generation();
        let server = &store.load().server;
        Timeouts {
            generation,
            idle_timeout: server.idle_timeout,
            header_read_timeout: server.header_read_timeout,
            max_header_bytes: server.max_header_bytes,
        }
    }
}
