//! hyper's path: hyper's HTTP/1.1 server for every connection the HTTP/1 engine hands over (a
//! request body, `Expect`, HTTP/1.0, the echo upstream, HTTPS and HTTP/2 upstreams, ...), or for
//! all of them with `fast_path = false`, and hyper's HTTP/2 server (ALPN `h2`, or h2c). The policy decides (`proxy/policy`); this module carries the request to
//! the upstream through hyper's client (`client.rs`) and streams the answer back.

mod body;
mod buffer;
mod client;
mod client_h2;
mod echo;
mod idle;
mod raw;
mod response;
mod websocket;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use http::header::{HOST, HeaderValue};
use http::uri::Uri;
use http::{Request, Response};
use http_body_util::{Either, Empty, Full};
use hyper::body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::observe::RequestRecord;
use crate::proxy::h1::{RawPool, is_open};
use crate::proxy::policy::headers;
use crate::proxy::policy::{
    Forward, HeadChecked, Policy, UpstreamFailure, X_REQUEST_ID, check_response_framing,
};
use crate::refusal::Refusal;
use crate::tls::{ClientSession, UpstreamProtocol};
use crate::upstream::{Outcome as Attempted, Tried};
use body::{Counted, Finish, Logged};
use buffer::Relayed;
use client::Pool;
use client_h2::H2Pool;
use hyper::body::Frame;

pub use response::ResponseBody;
use response::{refusal_response, refuse_forward};

/// What the client receives: a response body that records the request when it ends.
pub type LoggedBody = Logged<ResponseBody>;

/// What hyper's path keeps across connections: the policy it serves and hyper's upstream
/// connections (one pool for all upstreams, keyed by host and port; it outlives reloads, so an
/// upstream whose URL did not change keeps its warm connections).
pub struct HyperPath {
    policy: Arc<Policy>,
    pool: Arc<Pool>,
    /// HTTP/2 upstreams (`protocol = "h2"`): one multiplexed connection per address.
    h2_pool: H2Pool,
    /// Plain sockets to HTTP/1.1 upstreams for bodiless HTTP/2 requests (`raw.rs`).
    raw: Arc<RawPool>,
}

impl HyperPath {
    pub fn new(policy: Arc<Policy>) -> HyperPath {
        HyperPath {
            policy,
            pool: Pool::new(),
            h2_pool: H2Pool::default(),
            raw: Arc::new(RawPool::default()),
        }
    }

    /// Idle upstream connections in hyper's pool.
    pub fn idle_upstream_connections(&self) -> usize {
        self.pool.idle_connections() + self.raw.idle_connections()
    }

    /// Closes expired idle upstream connections, those the upstream has closed, and those to
    /// an authority `serves` rejects (a target removed by a reload); lets go of HTTP/2 upstream
    /// connections unused for `upstream_keepalive_timeout` or to such an authority.
    pub fn sweep_pool(&self, serves: impl Fn(&http::uri::Authority) -> bool) {
        self.pool.sweep(&serves);
        let idle = self.policy.store.load().server.upstream_keepalive_timeout;
        self.h2_pool.sweep(&serves, idle);
        self.raw.sweep(&serves, |s| is_open(s));
    }

    /// `peer_text` is `peer`'s address as sent in `X-Forwarded-For`, made once per connection;
    /// `session` is what its TLS handshake agreed, on the TLS listener.
    async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        peer_text: HeaderValue,
        session: Option<ClientSession>,
    ) -> Response<LoggedBody> {
        let (outcome, mut record) = self.policy.admit(
            &self.policy.store.load(),
            request.method(),
            request.uri(),
            request.headers(),
            HeadChecked::Nothing(request.version()),
            peer,
            Instant::now(),
            session,
        );
        if request.version() == http::Version::HTTP_2 {
            record.protocol = "h2";
        }
        let bytes_in = Arc::new(AtomicU64::new(0));
        let mut admitted = None;
        let mut response = match outcome {
            Ok(mut forward) => match if forward.limit_plan.shared {
                // Boxed: the shared store's exchange is a large future, and this one would carry
                // it inline for every request.
                Box::pin(self.policy.limit(&mut forward.limit_plan, &mut record)).await
            } else {
                self.policy
                    .limit_local(&mut forward.limit_plan, &mut record)
            } {
                Ok(admission) => {
                    let fields = admission.fields;
                    admitted = Some(admission);
                    let mut response = self
                        .forward(request, peer_text, forward, &mut record, &bytes_in)
                        .await;
                    fields.insert_into(response.headers_mut());
                    response
                }
                Err(limited) => refusal_response(limited, record.presented),
            },
            Err(refused) => refusal_response(refused, record.presented),
        };
        let mut request_id = record.request_id.clone();
        if record.protocol == "h2" {
            // HPACK: a value that differs in every response is sent "never indexed". Indexed, it
            // would only churn the encoder's table: each one inserted, evicting another, after a
            // walk through every earlier value under the same name (h2 compares them all).
            request_id.set_sensitive(true);
            if let Some(state) = response
                .headers_mut()
                .get_mut(&crate::limits::fields::RATELIMIT)
            {
                state.set_sensitive(true);
            }
        }
        response.headers_mut().insert(&X_REQUEST_ID, request_id);
        record.status = response.status().as_u16();
        // Made in its box (allocated first, as the stream's future in `serve_h2`): the record is
        // moved once, into the heap, instead of into a `Finish` on the stack and then the box.
        let place = Box::new_uninit();
        let finish = Box::write(
            place,
            Finish {
                policy: Arc::clone(&self.policy),
                record,
                bytes_in,
                _admitted: admitted,
            },
        );
        response.map(|body| Logged::new(body, finish))
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        peer_text: HeaderValue,
        mut forward: Forward,
        record: &mut RequestRecord,
        bytes_in: &Arc<AtomicU64>,
    ) -> Response<ResponseBody> {
        let mut request = request;
        let client_upgrade = forward.websocket.then(|| hyper::upgrade::on(&mut request));
        let (mut parts, body) = request.into_parts();
        let body = Counted::new(Either::Left(body), Arc::clone(bytes_in));
        // Admission read it: an absolute-form target's authority, else the one `Host`.
        let original_host = forward.host.take();
        // Sent upstream unless the upstream sets `host`: the client's (as HAProxy passes it).
        let client_host = original_host.clone();
        // `TE: trailers` is the one TE that crosses (gRPC needs it); any other coding is this hop's.
        let trailers_accepted = parts
            .headers
            .get_all(http::header::TE)
            .iter()
            .any(|v| headers::accepts_trailers(v.as_bytes()));
        // The policy's header rules are applied to the map only for a request that goes through
        // hyper's client (or the echo, or a WebSocket relay); a bodiless HTTP/2 request to a plain
        // HTTP/1.1 target has its head written straight from the client's map (`raw.rs`).
        let mut unapplied = Some((original_host, peer_text));
        let sent = Instant::now();
        // The echo and a WebSocket relay take the map with the rules applied.
        if forward.cluster.is_none() || forward.websocket {
            apply_header_rules(
                &mut parts,
                unapplied.take(),
                &forward,
                record,
                trailers_accepted,
            );
        }
        let Some(cluster) = forward.cluster.as_ref() else {
            parts.uri = Uri::from(forward.path_and_query);
            let response = echo::respond(Request::from_parts(parts, body)).await;
            record.upstream_time = Some(sent.elapsed());
            return response.map(|b| Either::Right(Full::new(b)));
        };
        if forward.websocket {
            // Boxed, as the other rare large futures here (hyper's client, the HTTP/2 upstream
            // pool): inline, every request's future would be as large as the largest of them,
            // and it is moved whole into its box and task (see `serve_h2`).
            return Box::pin(websocket::relay(
                &self.policy,
                parts,
                client_upgrade,
                &forward,
                cluster,
                record,
            ))
            .await;
        }
        let deadline = tokio::time::Instant::from_std(sent) + forward.upstream_timeout;
        // A bodiless request can be sent again whatever happened to the first; one with a body
        // only if none of it was sent (the pool gives it back).
        let bodiless = body.is_end_stream();
        let mut body = Some(body);
        // One place at the upstream for the request, whichever target its attempts go to.
        let limits = forward.limits;
        let place = match cluster
            .place(limits.max_upstream_connections, limits.connect_timeout)
            .await
        {
            Ok(place) => place,
            Err(_busy) => return refuse_forward(Refusal::UpstreamBusy, record),
        };
        let mut tried = Tried::default();
        let mut attempts = 0u32;
        loop {
            let Some(attempt) = cluster.pick(record.user.as_deref(), tried) else {
                return refuse_forward(Refusal::NoHealthyUpstream, record);
            };
            attempts += 1;
            tried = tried.with(attempt.index());
            let target = attempt.target();
            let host = attempt
                .host()
                .or(client_host.as_ref())
                .cloned()
                .or_else(|| HeaderValue::from_str(target.authority.as_str()).ok());
            let request_body = body
                .take()
                .unwrap_or_else(|| Counted::new(Either::Right(Empty::new()), Arc::clone(bytes_in)));
            let path = forward.path_for(&target.base_path);
            // Whether a failure of this attempt could be followed by another (to the next
            // target); when it cannot, the request's head is given away instead of copied.
            let may_try_again = forward.may_retry(&parts.method, attempts)
                && (attempts as usize) < cluster.config().targets.len();
            if record.protocol == "h2"
                && bodiless
                && matches!(target.protocol, UpstreamProtocol::Http1)
                && target.tls.is_none()
                && raw::serves(&parts.method)
            {
                // A bodiless request from an HTTP/2 client to a plain HTTP/1.1 target: sent the
                // HTTP/1 engine's way (`raw.rs`), not through hyper's client.
                drop(request_body);
                let mut head = Vec::with_capacity(512);
                match &unapplied {
                    Some((original_host, peer)) => raw::ClientHead {
                        method: &parts.method,
                        path: &path,
                        host: host.as_ref().map(HeaderValue::as_bytes),
                        headers: &parts.headers,
                        forward: &forward,
                        peer,
                        original_host: original_host.as_ref(),
                        user: record.user.as_deref().unwrap_or_default(),
                        request_id: &record.request_id,
                        remaining: forward.remaining_for_upstream(record),
                        trailers_accepted,
                    }
                    .write(&mut head),
                    // An earlier attempt went through hyper's client: the map has the rules applied.
                    None => {
                        if let Some(host) = host {
                            parts.headers.insert(HOST, host);
                        }
                        raw::head_from_map(&mut head, &parts.method, &path, &parts.headers);
                    }
                }
                let exchanged = tokio::time::timeout_at(
                    deadline,
                    raw::exchange(&self.raw, &target.authority, limits, &parts.method, &head),
                )
                .await;
                record.upstream_time = Some(sent.elapsed());
                let failure = match exchanged {
                    Ok(Ok(raw::Answer::Whole(response))) => {
                        attempt.report(Attempted::Answered(response.status().as_u16()));
                        // Read to its end: the connection is back in the pool, the place free.
                        return response
                            .map(|body| Either::Left(Relayed::Read(body.map(Frame::data))));
                    }
                    Ok(Ok(raw::Answer::Streamed(response))) => {
                        attempt.report(Attempted::Answered(response.status().as_u16()));
                        return (*response).map(|body| {
                            Either::Left(Relayed::raw(
                                body.holding(attempt, place),
                                limits.response_buffer,
                                limits.response_timeout,
                            ))
                        });
                    }
                    Ok(Err(failure)) => failure,
                    Err(_) => UpstreamFailure::Timeout,
                };
                tracing::debug!(error = %failure, upstream = record.upstream.as_deref().unwrap_or_default(), target = &*target.url, "upstream request failed");
                attempt.report(Attempted::Failed(&failure.to_string()));
                if !(failure.retryable() && may_try_again && tokio::time::Instant::now() < deadline)
                {
                    let refusal = self.policy.upstream_failed(
                        record,
                        target.authority.as_str(),
                        failure,
                        attempt.fallback,
                    );
                    return refusal_response(refusal, record.presented);
                }
                self.policy.retrying(record);
                continue;
            }
            apply_header_rules(
                &mut parts,
                unapplied.take(),
                &forward,
                record,
                trailers_accepted,
            );
            if let Some(host) = host {
                parts.headers.insert(HOST, host);
            }
            let result = match target.protocol {
                UpstreamProtocol::Http1 => {
                    // Origin form: the upstream is talked to directly, never as a proxy.
                    parts.uri = Uri::from(path);
                    parts.version = http::Version::HTTP_11;
                    let head = if may_try_again {
                        parts.clone()
                    } else {
                        std::mem::replace(&mut parts, Request::new(()).into_parts().0)
                    };
                    let upstream_request = Request::from_parts(head, request_body);
                    let sending = Box::pin(self.pool.send(
                        &target.authority,
                        target.tls.as_ref(),
                        forward.limits,
                        upstream_request,
                    ));
                    tokio::time::timeout_at(deadline, sending).await
                }
                UpstreamProtocol::Http2 => {
                    // HTTP/2 carries the host as `:authority`, from the URI.
                    let mut h2_parts = parts.clone();
                    let authority = h2_parts
                        .headers
                        .remove(HOST)
                        .and_then(|h| http::uri::Authority::try_from(h.as_bytes()).ok())
                        .unwrap_or_else(|| target.authority.clone());
                    h2_parts.uri = Uri::builder()
                        .scheme(target.scheme.clone())
                        .authority(authority)
                        .path_and_query(path)
                        .build()
                        .unwrap_or_default();
                    h2_parts.version = http::Version::HTTP_2;
                    let upstream_request = Request::from_parts(h2_parts, request_body);
                    let sending = Box::pin(self.h2_pool.send(
                        &target.authority,
                        target.tls.as_ref(),
                        forward.limits,
                        upstream_request,
                    ));
                    tokio::time::timeout_at(deadline, sending).await
                }
            };
            record.upstream_time = Some(sent.elapsed());
            let (failure, unsent) = match result {
                Ok(Ok(response)) => {
                    let (mut parts, upstream_body) = response.into_parts();
                    match check_response_framing(&parts.headers) {
                        Ok(()) => {
                            attempt.report(Attempted::Answered(parts.status.as_u16()));
                            headers::strip_response(&mut parts.headers);
                            // Whatever the upstream spoke, the client is answered in HTTP/1.1
                            // (the engine does the same).
                            parts.version = http::Version::HTTP_11;
                            return Response::from_parts(
                                parts,
                                Either::Left(
                                    buffer::Relayed::new(
                                        upstream_body.holding(attempt, place),
                                        limits.response_buffer,
                                        limits.response_timeout,
                                    )
                                    .await,
                                ),
                            );
                        }
                        // Dropping the body closes its connection: it is never reused.
                        Err(invalid) => (UpstreamFailure::Invalid(invalid), None),
                    }
                }
                Ok(Err((e, unsent))) => {
                    tracing::debug!(error = %e, upstream = record.upstream.as_deref().unwrap_or_default(), target = &*target.url, "upstream request failed");
                    (e.failure(), unsent)
                }
                Err(_) => (UpstreamFailure::Timeout, None),
            };
            attempt.report(Attempted::Failed(&failure.to_string()));
            let resendable = unsent.is_some() || bodiless;
            let again = resendable
                && failure.retryable()
                && may_try_again
                && tokio::time::Instant::now() < deadline;
            if !again {
                let refusal = self.policy.upstream_failed(
                    record,
                    target.authority.as_str(),
                    failure,
                    attempt.fallback,
                );
                return refusal_response(refusal, record.presented);
            }
            self.policy.retrying(record);
            body = unsent.map(Request::into_body);
        }
    }
}

/// The policy's header rules on the request's map, once (`unapplied` is the host the request is
/// for and the peer as text, until they are applied): what must not reach the upstream removed
/// (`headers::strip_request`), then the gateway's own added. `Host` is each attempt's.
fn apply_header_rules(
    parts: &mut http::request::Parts,
    unapplied: Option<(Option<HeaderValue>, HeaderValue)>,
    forward: &Forward,
    record: &RequestRecord,
    trailers_accepted: bool,
) {
    let Some((original_host, peer_text)) = unapplied else {
        return;
    };
    headers::strip_request(
        &mut parts.headers,
        &forward.key_header,
        forward.credential_headers.as_deref().unwrap_or_default(),
        forward.strip_authorization,
        forward.peer_is_trusted,
        forward.underscore_headers,
    );
    headers::add_forwarding(
        &mut parts.headers,
        original_host,
        headers::Forwarded {
            peer: peer_text,
            peer_is_trusted: forward.peer_is_trusted,
            proto: forward.proto,
            user: HeaderValue::try_from(record.user.as_deref().unwrap_or_default())
                .expect("checked by is_header_value when decided"),
            group: forward.group.clone(),
        },
    );
    parts
        .headers
        .insert(&X_REQUEST_ID, record.request_id.clone());
    if let Some(left) = forward.remaining_for_upstream(record) {
        parts.headers.insert(
            &headers::X_APIWARD_RATELIMIT_REMAINING,
            HeaderValue::from(left),
        );
    }
    if trailers_accepted {
        parts
            .headers
            .insert(http::header::TE, HeaderValue::from_static("trailers"));
    }
}

/// hyper's HTTP/1.1 server on the rest of a connection (any stream: TCP, or TLS), until it
/// closes or, after `shutdown`, its request in flight has been answered.
pub async fn serve<S>(
    path: Arc<HyperPath>,
    stream: S,
    peer: SocketAddr,
    peer_text: HeaderValue,
    session: Option<ClientSession>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (header_read_timeout, idle_timeout, max_header_bytes) = {
        let s = &path.policy.store.load().server;
        (s.header_read_timeout, s.idle_timeout, s.max_header_bytes)
    };
    let idle = idle::IdleSetting::new(idle_timeout);
    let io = TokioIo::new(idle::IdleTimeout::new(stream, idle.clone()));
    let service = service_fn(move |request| {
        // The wait after this request follows a reloaded idle_timeout, as the engine's does.
        idle.set(path.policy.store.load().server.idle_timeout);
        let path = Arc::clone(&path);
        let peer_text = peer_text.clone();
        async move { Ok::<_, Infallible>(path.handle(request, peer, peer_text, session).await) }
    });
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .max_header_size(max_header_bytes)
        .keep_alive(true)
        .serve_connection(io, service)
        // Only a WebSocket handshake the policy allowed is answered with 101 (`websocket.rs`).
        .with_upgrades();
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

/// hyper's HTTP/2 server on a connection: over TLS after ALPN `h2`, or h2c with prior knowledge.
/// Each stream is a request admitted and forwarded like any other; after `shutdown`, GOAWAY:
/// the streams in flight finish, no new ones start.
pub async fn serve_h2<S>(
    path: Arc<HyperPath>,
    stream: S,
    peer: SocketAddr,
    peer_text: HeaderValue,
    session: Option<ClientSession>,
    mut shutdown: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (idle_timeout, max_header_bytes) = {
        let s = &path.policy.store.load().server;
        (s.idle_timeout, s.max_header_bytes)
    };
    let io = TokioIo::new(idle::IdleTimeout::new(
        stream,
        idle::IdleSetting::new(idle_timeout),
    ));
    let service = service_fn(move |request| {
        let path = Arc::clone(&path);
        let peer_text = peer_text.clone();
        // Boxed: hyper moves each stream's future several times on its way into the task it
        // spawns for it (and tokio again as the task ends), and unboxed that is a copy of the
        // whole request state, kilobytes, every time. The box is allocated before the future is
        // made, so that the compiler can make it in place: `Box::pin(future)` makes it on the
        // stack first and copies all of it in, though only its arguments are set yet.
        let place = Box::new_uninit();
        Box::into_pin(Box::write(place, async move {
            Ok::<_, Infallible>(path.handle(request, peer, peer_text, session).await)
        }))
    });
    let connection = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(max_header_bytes).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .serve_connection(io, service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = async { let _ = shutdown.wait_for(|stopping| *stopping).await; } => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = result {
        tracing::debug!(%peer, error = %e, "HTTP/2 connection ended with an error");
    }
}
