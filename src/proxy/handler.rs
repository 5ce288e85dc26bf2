//! One request's way through the gateway: decide against the current snapshot, then refuse or
//! forward to the route's upstream, and record what happened.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use bytes::Bytes;
use http::header::{HOST, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use super::body::{Counted, Finish, Logged};
use super::upstream::{Limits, Pool};
use super::{LoggedBody, ResponseBody, echo, headers};
use crate::auth::password::PasswordVerifier;
use crate::auth::{self, Outcome, RequestFacts, credential};
use crate::config::reload::{self, ConfigStore};
use crate::observe::metrics::UpstreamErrorKind;
use crate::observe::{RequestRecord, Telemetry};
use crate::refusal::Refusal;
use crate::snapshot::{AccessLogTarget, Snapshot, UpstreamTarget};

/// Shared by every connection: the configuration, the upstream connection pools, telemetry.
pub struct Proxy {
    pub(super) store: Arc<ConfigStore>,
    /// One pool for all upstreams, keyed by host and port; it outlives reloads, so an upstream
    /// whose URL did not change keeps its warm connections.
    pub(super) pool: Arc<Pool>,
    /// The fast path's upstream connections (`fast.rs`), kept apart from hyper's.
    pub(super) raw_pool: super::fast::RawPool,
    /// Requests the fast path served, and connections it handed to hyper (`/status`).
    pub(super) fast_requests: std::sync::atomic::AtomicU64,
    pub(super) handovers: std::sync::atomic::AtomicU64,
    /// Graceful shutdown, for the fast path's connections.
    pub(super) stop: super::fast::Stop,
    /// Basic-auth verification: Argon2id behind a success cache and a failure limiter. It lives
    /// as long as the process, not a snapshot: its cache is keyed by the stored hash, so a
    /// reload that changes a password misses it while other reloads keep it warm.
    passwords: PasswordVerifier,
    pub(super) telemetry: Arc<Telemetry>,
}

/// Everything needed to forward an allowed request, taken out of the snapshot so that the
/// snapshot is not held while the upstream answers.
pub(super) struct Forward {
    pub(super) target: UpstreamTarget,
    pub(super) path_and_query: PathAndQuery,
    pub(super) group: HeaderValue,
    pub(super) peer_is_trusted: bool,
    pub(super) upstream_timeout: std::time::Duration,
    pub(super) limits: Limits,
    pub(super) key_header: http::HeaderName,
    pub(super) credential_source: credential::CredentialSource,
}

pub(super) static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

impl Proxy {
    pub(super) fn new(store: Arc<ConfigStore>, telemetry: Arc<Telemetry>) -> Proxy {
        Proxy {
            store,
            pool: Pool::new(),
            raw_pool: super::fast::RawPool::default(),
            fast_requests: std::sync::atomic::AtomicU64::new(0),
            handovers: std::sync::atomic::AtomicU64::new(0),
            stop: super::fast::Stop::default(),
            passwords: PasswordVerifier::new(),
            telemetry,
        }
    }

    /// `peer_text` is `peer`'s address as sent in `X-Forwarded-For`, made once per connection.
    pub(super) async fn handle(
        &self,
        request: Request<Incoming>,
        peer: SocketAddr,
        peer_text: HeaderValue,
    ) -> Response<LoggedBody> {
        let (outcome, mut record) = self.decide(
            &self.store.load(),
            request.method(),
            request.uri(),
            request.headers(),
            peer,
            Instant::now(),
        );
        let bytes_in = Arc::new(AtomicU64::new(0));
        let mut response = match outcome {
            Ok(forward) => {
                self.forward(request, peer_text, forward, &mut record, &bytes_in)
                    .await
            }
            Err(refusal) => refusal_response(refusal),
        };
        response
            .headers_mut()
            .insert(&X_REQUEST_ID, record.request_id.clone());
        record.status = response.status().as_u16();
        let finish = Finish {
            telemetry: Arc::clone(&self.telemetry),
            record,
            bytes_in,
        };
        response.map(|body| Logged::new(body, finish))
    }

    /// Runs the decision against the current snapshot and keeps only what forwarding needs,
    /// and what the request's log line and metrics need. `arrived` is when the request began
    /// (its total time, in metrics and the log, counts from there).
    pub(super) fn decide(
        &self,
        snapshot: &Snapshot,
        method: &http::Method,
        uri: &Uri,
        request_headers: &http::HeaderMap,
        peer: SocketAddr,
        arrived: Instant,
    ) -> (Result<Forward, Refusal>, RequestRecord) {
        let client = headers::client_address(snapshot, peer, request_headers);
        let peer_is_trusted = snapshot.is_trusted_proxy(peer.ip());
        // Only a trusted proxy's request id is kept, so the header is not even looked up otherwise.
        let request_id = peer_is_trusted
            .then(|| request_headers.get(&X_REQUEST_ID))
            .flatten()
            .filter(|id| is_reasonable_request_id(id))
            .cloned()
            .unwrap_or_else(|| self.telemetry.next_request_id());
        let mut record = RequestRecord {
            started: arrived,
            request_id,
            client,
            user: None,
            key_prefix: None,
            method: method.clone(),
            path: String::new(),
            route: None,
            upstream: None,
            decision: Refusal::BadFraming.code(),
            status: 0,
            upstream_time: None,
            log: snapshot.server.access_log != AccessLogTarget::Off,
            sample: snapshot.server.access_log_sample,
        };
        if !framing_is_unambiguous(request_headers) {
            if record.log {
                record.path = uri.path().to_string();
            }
            return (Err(Refusal::BadFraming), record);
        }
        let mut scratch = String::new();
        let (credential, credential_source) =
            credential::extract(request_headers, &snapshot.server.key_header, &mut scratch);
        // Only the request log reads it.
        let presented_prefix = match credential {
            credential::Credential::Key(k) if record.log => Some(credential::key_prefix(k)),
            _ => None,
        };
        let facts = RequestFacts {
            method,
            path: uri.path(),
            credential,
            client,
            now: reload::now_unix(),
        };
        let decision = auth::decide(snapshot, &facts, &self.passwords);
        record.user = decision.user.map(|u| Arc::clone(&u.id));
        if record.log {
            // Only the request log reads it.
            record.key_prefix = decision
                .key
                .and_then(|k| k.prefix.map(|p| Box::from(&*p)))
                .or_else(|| presented_prefix.map(Into::into));
        }
        if let (Some(_), Some(digest)) = (decision.key, decision.key_digest.as_ref()) {
            self.telemetry.key_usage.touch(digest, facts.now);
        }
        let grant = match decision.outcome {
            Outcome::Allowed(grant) => grant,
            Outcome::Refused(refusal) => {
                record.decision = refusal.code();
                if record.log {
                    record.path = uri.path().to_string();
                }
                return (Err(refusal), record);
            }
        };
        record.decision = "allowed";
        if record.log {
            // Only the request log reads it.
            record.path = grant.path.to_string();
        }
        record.route = Some(Arc::clone(&grant.route.prefix));
        record.upstream = Some(Arc::clone(&grant.upstream.name));
        let forward = (|| {
            // The user id goes upstream in X-Apiward-User, from `record.user`; the upstream's
            // name, for its error metrics, is `record.upstream`.
            if !decision.user.is_some_and(|u| is_header_value(&u.id)) {
                return Err(Refusal::Forbidden);
            }
            Ok::<_, Refusal>(Forward {
                target: grant.upstream.target.clone(),
                path_and_query: forwarded_path(&grant.upstream.target, &grant.path, uri)?,
                group: grant.group.header.clone().ok_or(Refusal::Forbidden)?,
                peer_is_trusted,
                upstream_timeout: snapshot.server.upstream_timeout,
                limits: Limits::of(&snapshot.server),
                key_header: snapshot.server.key_header.clone(),
                credential_source,
            })
        })();
        if let Err(refusal) = &forward {
            record.decision = refusal.code();
        }
        (forward, record)
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
        let body = Counted::new(body, Arc::clone(bytes_in));
        let original_host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        headers::strip_request(
            &mut parts.headers,
            &forward.key_header,
            forward.credential_source,
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
                let result = tokio::time::timeout(
                    forward.upstream_timeout,
                    self.pool.send(&authority, forward.limits, upstream_request),
                )
                .await;
                record.upstream_time = Some(sent.elapsed());
                let failure = match result {
                    Ok(Ok(response)) => {
                        let (mut parts, body) = response.into_parts();
                        headers::remove_hop_by_hop(&mut parts.headers);
                        return Response::from_parts(parts, Either::Left(body));
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, connect = e.is_connect(), upstream = record.upstream.as_deref().unwrap_or_default(), "upstream request failed");
                        let kind = if e.is_connect() {
                            UpstreamErrorKind::Connect
                        } else {
                            UpstreamErrorKind::Other
                        };
                        (Refusal::UpstreamUnavailable, kind)
                    }
                    Err(_) => (Refusal::UpstreamTimeout, UpstreamErrorKind::Timeout),
                };
                if let Some(upstream) = &record.upstream {
                    self.telemetry.metrics.upstream_error(upstream, failure.1);
                }
                record.decision = failure.0.code();
                refusal_response(failure.0)
            }
        }
    }
}

/// Whether `HeaderValue::from_str` would accept `text` (checked without allocating one).
fn is_header_value(text: &str) -> bool {
    text.bytes().all(|b| (b >= 0x20 && b != 0x7f) || b == b'\t')
}

/// A request id from a trusted proxy is kept only if it is short and printable.
fn is_reasonable_request_id(id: &HeaderValue) -> bool {
    !id.is_empty() && id.len() <= 128 && id.as_bytes().iter().all(|b| b.is_ascii_graphic())
}

/// hyper already refuses conflicting lengths and `Content-Length` with `Transfer-Encoding`
/// (vendor/hyper); what it still accepts is a coding list ending in chunked, such as
/// `gzip, chunked`, which a proxy must not pass on.
fn framing_is_unambiguous(headers: &http::HeaderMap) -> bool {
    let mut codings = headers.get_all(http::header::TRANSFER_ENCODING).iter();
    match (codings.next(), codings.next()) {
        (None, _) => true,
        (Some(only), None) => only.as_bytes().eq_ignore_ascii_case(b"chunked"),
        (Some(_), Some(_)) => false,
    }
}

/// The upstream's base path, then the normalised path, then the query exactly as received.
fn forwarded_path(
    target: &UpstreamTarget,
    path: &str,
    original: &Uri,
) -> Result<PathAndQuery, Refusal> {
    let base = match target {
        UpstreamTarget::Http { base_path, .. } => &**base_path,
        UpstreamTarget::Echo => "",
    };
    if base.is_empty() && path == original.path() {
        if let Some(pq) = original.path_and_query() {
            return Ok(pq.clone());
        }
    }
    let mut text = String::with_capacity(
        base.len() + path.len() + original.query().map_or(0, |q| q.len() + 1),
    );
    text.push_str(base);
    text.push_str(path);
    if let Some(q) = original.query() {
        text.push('?');
        text.push_str(q);
    }
    PathAndQuery::try_from(text).map_err(|_| Refusal::BadPath)
}

pub(super) fn refusal_response(refusal: Refusal) -> Response<ResponseBody> {
    refusal.response::<Full<Bytes>>().map(Either::Right)
}
