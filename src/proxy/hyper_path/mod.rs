//! hyper's path: hyper's HTTP/1.1 server for every connection the HTTP/1 engine hands over (a
//! request body, `Expect`, HTTP/1.0, the echo upstream, ...), or for all of them with
//! `fast_path = false`. The policy decides (`proxy/policy`); this module carries the request to
//! the upstream through hyper's client (`client.rs`) and streams the answer back.

mod body;
mod client;
mod echo;
mod idle;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::uri::Uri;
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::observe::RequestRecord;
use crate::proxy::policy::headers;
use crate::proxy::policy::{
    Forward, Policy, Refused, UpstreamFailure, X_REQUEST_ID, check_response_framing,
};
use crate::refusal::{Presented, Refusal};
use crate::snapshot::UpstreamTarget;
use body::{Counted, Finish, Logged};
use client::Pool;

/// A response body before it is wrapped for logging: the upstream's, streamed, or one the
/// gateway made.
pub type ResponseBody = Either<client::UpstreamBody, Full<Bytes>>;

/// What the client receives: a response body that records the request when it ends.
pub type LoggedBody = Logged<ResponseBody>;

/// What hyper's path keeps across connections: the policy it serves and hyper's upstream
/// connections (one pool for all upstreams, keyed by host and port; it outlives reloads, so an
/// upstream whose URL did not change keeps its warm connections).
pub struct HyperPath {
    policy: Arc<Policy>,
    pool: Arc<Pool>,
}

impl HyperPath {
    pub fn new(policy: Arc<Policy>) -> HyperPath {
        HyperPath {
            policy,
            pool: Pool::new(),
        }
    }

    /// Idle upstream connections in hyper's pool.
    pub fn idle_upstream_connections(&self) -> usize {
        self.pool.idle_connections()
    }

    /// Closes expired idle upstream connections and those the upstream has closed.
    pub fn sweep_pool(&self) {
        self.pool.sweep();
    }

    /// `peer_text` is `peer`'s address as sent in `X-Forwarded-For`, made once per connection.
    async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        peer_text: HeaderValue,
    ) -> Response<LoggedBody> {
        let (outcome, mut record) = self.policy.admit(
            &self.policy.store.load(),
            request.method(),
            request.uri(),
            request.headers(),
            peer,
            Instant::now(),
        );
        let bytes_in = Arc::new(AtomicU64::new(0));
        let mut admitted = None;
        let mut response = match outcome {
            Ok(forward) => match self.policy.limit(&forward, &mut record).await {
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
        response
            .headers_mut()
            .insert(&X_REQUEST_ID, record.request_id.clone());
        record.status = response.status().as_u16();
        let finish = Finish {
            policy: Arc::clone(&self.policy),
            record,
            bytes_in,
            _admitted: admitted,
        };
        response.map(|body| Logged::new(body, finish))
    }

    async fn forward(
        &self,
        request: Request<Incoming>,
        peer_text: HeaderValue,
        forward: Forward,
        record: &mut RequestRecord,
        bytes_in: &Arc<AtomicU64>,
    ) -> Response<ResponseBody> {
        let (mut parts, body) = request.into_parts();
        let body = Counted::new(Either::Left(body), Arc::clone(bytes_in));
        let original_host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        headers::strip_request(
            &mut parts.headers,
            &forward.key_header,
            forward.credential_headers.as_deref().unwrap_or_default(),
            forward.strip_authorization,
            forward.peer_is_trusted,
        );
        headers::add_forwarding(
            &mut parts.headers,
            original_host,
            headers::Forwarded {
                peer: peer_text,
                peer_is_trusted: forward.peer_is_trusted,
                proto: "http",
                user: HeaderValue::try_from(record.user.as_deref().unwrap_or_default())
                    .expect("checked by is_header_value when decided"),
                group: forward.group,
            },
        );
        parts
            .headers
            .insert(&X_REQUEST_ID, record.request_id.clone());
        let sent = Instant::now();
        match forward.target {
            UpstreamTarget::Echo => {
                parts.uri = Uri::from(forward.path_and_query);
                let response = echo::respond(Request::from_parts(parts, body)).await;
                record.upstream_time = Some(sent.elapsed());
                response.map(|b| Either::Right(Full::new(b)))
            }
            UpstreamTarget::Http { authority, .. } => {
                if let Ok(host) = HeaderValue::from_str(authority.as_str()) {
                    parts.headers.insert(HOST, host);
                }
                // Origin form: the upstream is talked to directly, never as a proxy.
                parts.uri = Uri::from(forward.path_and_query);
                parts.version = http::Version::HTTP_11;
                let upstream_request = Request::from_parts(parts, body);
                let limits = &forward.limits;
                let taken = match record.upstream.as_ref() {
                    Some(name) => {
                        self.policy
                            .upstream_slots
                            .take(
                                name,
                                limits.max_upstream_connections,
                                limits.connect_timeout,
                            )
                            .await
                    }
                    None => Err(Refusal::UpstreamUnavailable),
                };
                let slot = match taken {
                    Ok(slot) => slot,
                    Err(refusal) => {
                        record.decision = refusal.code();
                        return refusal_response(refusal, record.presented);
                    }
                };
                let result = tokio::time::timeout(
                    forward.upstream_timeout,
                    self.pool.send(&authority, forward.limits, upstream_request),
                )
                .await;
                record.upstream_time = Some(sent.elapsed());
                let failure = match result {
                    Ok(Ok(response)) => {
                        let (mut parts, body) = response.into_parts();
                        match check_response_framing(&parts.headers) {
                            Ok(()) => {
                                headers::strip_response(&mut parts.headers);
                                // Whatever the upstream spoke, the client is answered in
                                // HTTP/1.1 (the engine does the same).
                                parts.version = http::Version::HTTP_11;
                                let body =
                                    body.within(forward.limits.response_timeout).holding(slot);
                                return Response::from_parts(parts, Either::Left(body));
                            }
                            // Dropping the body closes its connection: it is never reused.
                            Err(invalid) => UpstreamFailure::Invalid(invalid),
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, upstream = record.upstream.as_deref().unwrap_or_default(), "upstream request failed");
                        e.failure()
                    }
                    Err(_) => UpstreamFailure::Timeout,
                };
                let refusal = self
                    .policy
                    .upstream_failed(record, authority.as_str(), failure);
                refusal_response(refusal, record.presented)
            }
        }
    }
}

/// hyper's HTTP/1.1 server on the rest of a connection (any stream: TCP, or TLS), until it
/// closes or, after `shutdown`, its request in flight has been answered.
pub async fn serve<S>(
    path: Arc<HyperPath>,
    stream: S,
    peer: SocketAddr,
    peer_text: HeaderValue,
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
        async move { Ok::<_, Infallible>(path.handle(request, peer, peer_text).await) }
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

fn refusal_response(refused: impl Into<Refused>, presented: Presented) -> Response<ResponseBody> {
    refused
        .into()
        .response::<Full<Bytes>>(presented)
        .map(Either::Right)
}
