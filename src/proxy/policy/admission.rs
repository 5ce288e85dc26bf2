//! Admission: what the gateway decides about a request before anything is forwarded. The pure
//! `auth::decide` against the snapshot, plus what only a running gateway has: the request id,
//! the key's last use, the request record that metrics and the log line are made from, and what
//! forwarding needs (taken out of the snapshot so it is not held while the upstream answers).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use http::header::HeaderValue;
use http::uri::{PathAndQuery, Uri};

use super::context::Policy;
use super::headers::{self, X_REQUEST_ID};
use super::refused::Refused;
use crate::auth::{self, Outcome, RequestFacts, credential};
use crate::config::reload;
use crate::limits::{LimitPlan, Limited};
use crate::observe::{LoggedPrefix, RequestRecord};
use crate::proxy::upstream::Limits;
use crate::refusal::{Presented, Refusal};
use crate::snapshot::{AccessLogTarget, Route, Snapshot, UnderscoreHeaders};
use crate::tls::ClientSession;
use crate::upstream::ClusterState;

/// Everything needed to forward an allowed request, taken out of the snapshot so that the
/// snapshot is not held while the upstream answers.
pub struct Forward {
    /// The upstream's targets and their state; `None`: the built-in echo upstream.
    pub cluster: Option<Arc<ClusterState>>,
    /// The checked path (after `strip_prefix`) and the query as received; each target's base
    /// path goes in front of it (`Forward::path_for`).
    pub path_and_query: PathAndQuery,
    pub group: HeaderValue,
    pub peer_is_trusted: bool,
    /// The whole time the upstream side may take, retries included: the route's
    /// `upstream_timeout`, else `[server]`'s.
    pub upstream_timeout: std::time::Duration,
    pub limits: Limits,
    pub key_header: http::HeaderName,
    /// `credential_headers`, when any are configured.
    pub credential_headers: Option<Arc<[http::HeaderName]>>,
    /// An `Authorization` line uses Bearer or Basic: it is a credential of ours, never forwarded,
    /// whichever credential was used.
    pub strip_authorization: bool,
    /// The user's limits, for the limit step (`Policy::limit`) after this decision.
    pub limit_plan: LimitPlan,
    /// The request is a WebSocket handshake, on a route that allows it.
    pub websocket: bool,
    /// `[server] idle_timeout`: how long a WebSocket may stay silent both ways.
    pub idle_timeout: std::time::Duration,
    /// `[server] underscore_headers`, for `headers::strip_request`.
    pub underscore_headers: UnderscoreHeaders,
    /// The host the request is for (`headers::request_host`), when admission read it: hyper's
    /// path sends it as `X-Forwarded-Host`. The engine reads its own `Host`.
    pub host: Option<HeaderValue>,
    /// `X-Forwarded-Proto`: `https` when the client's connection is TLS.
    pub proto: &'static str,
}

impl Forward {
    /// The path and query sent to a target whose URL has `base_path`.
    pub fn path_for(&self, base_path: &str) -> PathAndQuery {
        if base_path.is_empty() {
            return self.path_and_query.clone();
        }
        let mut text = String::with_capacity(base_path.len() + self.path_and_query.as_str().len());
        text.push_str(base_path);
        text.push_str(self.path_and_query.as_str());
        // A valid path with a valid base path (checked when compiled) in front is still valid.
        PathAndQuery::try_from(text).unwrap_or_else(|_| self.path_and_query.clone())
    }

    /// Whether a failed attempt may be sent again to another target: idempotent methods only
    /// (RFC 9110 9.2.2), and only as many times as the upstream's `retries` says.
    pub fn may_retry(&self, method: &http::Method, attempts: u32) -> bool {
        let idempotent = matches!(
            *method,
            http::Method::GET
                | http::Method::HEAD
                | http::Method::OPTIONS
                | http::Method::PUT
                | http::Method::DELETE
                | http::Method::TRACE
        );
        idempotent
            && self
                .cluster
                .as_ref()
                .is_some_and(|c| attempts <= c.config().retries)
    }
}

/// What the transport has already checked of a request head, so that admission checks the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadChecked {
    /// The HTTP/1 engine serves only origin-form HTTP/1.1 with exactly one `Host`, a valid one,
    /// and no `_` in a header name; it hands every other head to hyper's path, where admission
    /// checks it. Its `decision_headers` hold only what the decision reads.
    ByEngine,
    /// Nothing: admission checks `Host` and the header names (hyper's path).
    Nothing(http::Version),
}

impl Policy {
    /// Runs the decision against the current snapshot and keeps only what forwarding needs,
    /// and what the request's log line and metrics need. `arrived` is when the request began
    /// (its total time, in metrics and the log, counts from there). `session` is what the TLS
    /// handshake of the client's connection agreed (its client certificate is a credential).
    // Two callers, one per transport, each passing what it has in hand: a struct would only be
    // built on the engine's hot path to be taken apart again here.
    #[allow(clippy::too_many_arguments)]
    pub fn admit(
        &self,
        snapshot: &Snapshot,
        method: &http::Method,
        uri: &Uri,
        request_headers: &http::HeaderMap,
        checked: HeadChecked,
        peer: SocketAddr,
        arrived: Instant,
        session: Option<ClientSession>,
    ) -> (Result<Forward, Refused>, RequestRecord) {
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
            presented: Presented::Nothing,
            method: method.clone(),
            path: String::new(),
            route: None,
            upstream: None,
            decision: Refusal::BadFraming.code(),
            status: 0,
            upstream_time: None,
            log: snapshot.server.access_log != AccessLogTarget::Off,
            sample: snapshot.server.access_log_sample,
            limit: None,
            limit_remaining: None,
            shadow_refusal: None,
            protocol: "h1",
            tls: session.map(|s| s.version),
        };
        // The engine hands every request with `Transfer-Encoding` or `Upgrade` to hyper's path,
        // and its `decision_headers` hold only the credential, `Authorization`,
        // `X-Forwarded-For` and `X-Request-Id` (a key_header is never `transfer-encoding`, and
        // `upgrade` only if configured so): those two lookups are hyper's path's only.
        let by_engine = checked == HeadChecked::ByEngine;
        let may_upgrade = !by_engine || snapshot.server.key_header == http::header::UPGRADE;
        if !by_engine && !framing_is_unambiguous(request_headers) {
            if record.log {
                record.path = uri.path().to_string();
            }
            return (Err(Refusal::BadFraming.into()), record);
        }
        let mut host = None;
        if let HeadChecked::Nothing(version) = checked {
            let refusal = match headers::request_host(version, uri, request_headers) {
                Ok(h) => {
                    host = h;
                    underscore_refusal(snapshot, request_headers)
                }
                Err(headers::BadHost) => Some(Refusal::BadHost),
            };
            if let Some(refusal) = refusal {
                record.decision = refusal.code();
                if record.log {
                    record.path = uri.path().to_string();
                }
                return (Err(refusal.into()), record);
            }
        }
        let mut scratch = String::new();
        let (credential, _) =
            credential::extract(request_headers, &snapshot.server.key_header, &mut scratch);
        record.presented = match credential {
            credential::Credential::Key(_) => Presented::Key,
            credential::Credential::Basic { .. } => Presented::Password,
            credential::Credential::Missing | credential::Credential::Malformed => {
                Presented::Nothing
            }
        };
        // Only the request log reads its prefix, and only when the key is no known key's.
        let presented_key = match credential {
            credential::Credential::Key(k) if record.log => Some(k),
            _ => None,
        };
        let presented_prefix =
            || presented_key.map(|k| LoggedPrefix::new(credential::key_prefix(k)));
        let facts = RequestFacts {
            method,
            path: uri.path(),
            credential,
            certificate: session.and_then(|s| s.certificate),
            client,
            now: reload::now_unix(),
        };
        // An address that sent many invalid credentials lately is refused, unless this
        // credential is valid for a user that registered the address (limits/failed_auth.rs).
        let blocked = client
            .ip()
            .and_then(|ip| Some((ip, self.limits.failed_auth.blocked_for(ip)?)));
        let decision = auth::decide(snapshot, &facts, &self.passwords);
        if let Some((ip, wait)) = blocked {
            if !decision.user.is_some_and(|u| u.sources.registers(ip)) {
                self.limits
                    .failed_auth
                    .refused
                    .fetch_add(1, Ordering::Relaxed);
                let limited = Limited::failed_attempts(wait);
                record.decision = limited.refusal().code();
                record.limit = Some(limited.kind.as_str());
                if record.log {
                    record.path = uri.path().to_string();
                    record.key_prefix = presented_prefix();
                }
                return (Err(limited.into()), record);
            }
        } else if let (Outcome::Refused(Refusal::InvalidCredentials), Some(ip)) =
            (&decision.outcome, client.ip())
        {
            self.limits.failed_auth.failed(ip);
        }
        record.user = decision
            .user
            .or(decision.named_by_refused_password)
            .map(|u| Arc::clone(&u.id));
        if record.log {
            // Only the request log reads it.
            record.key_prefix = decision
                .key
                .and_then(|k| k.prefix.map(LoggedPrefix::from))
                .or_else(presented_prefix);
        }
        // A known key's last use counts admitted requests only; a refusal is kept apart.
        if let (Some(_), Some(digest)) = (decision.key, decision.key_digest.as_ref()) {
            match decision.outcome {
                Outcome::Allowed(_) => self.telemetry.key_usage.touch(digest, facts.now),
                Outcome::Refused(_) => self.telemetry.key_usage.refused(digest, facts.now),
            }
        }
        // A password that identified its user was right: a use if the request was admitted,
        // a refusal if something after it refused the request.
        if let (Presented::Password, Some(user)) = (record.presented, decision.user) {
            match decision.outcome {
                Outcome::Allowed(_) => self.telemetry.key_usage.touch_password(user, facts.now),
                Outcome::Refused(_) => self.telemetry.key_usage.refused_password(user, facts.now),
            }
        }
        let grant = match decision.outcome {
            Outcome::Allowed(grant) => grant,
            Outcome::Refused(refusal) => {
                record.decision = refusal.code();
                if record.log {
                    // Refused after the path was normalised: the path it was judged on.
                    record.path = match refusal {
                        Refusal::NoRoute | Refusal::Forbidden => auth::path::normalise(uri.path())
                            .map_or_else(|_| uri.path().to_string(), |p| p.into_owned()),
                        _ => uri.path().to_string(),
                    };
                }
                return (Err(refusal.into()), record);
            }
        };
        record.decision = "allowed";
        if record.log {
            // Only the request log reads it.
            record.path = grant.path.to_string();
        }
        record.route = Some(Arc::clone(&grant.route.prefix));
        record.upstream = Some(Arc::clone(&grant.upstream.name));
        if grant.shadow_refused {
            // Admitted by `allow`; the group's `shadow_allow` would have answered 403.
            record.shadow_refusal = Some(Refusal::Forbidden.code());
            if let Some(user) = &record.user {
                self.telemetry
                    .metrics
                    .shadow_refusal(user, &grant.group.name);
            }
        }
        let forward = (|| {
            // The user id goes upstream in X-Apiward-User, from `record.user`; the upstream's
            // name, for its error metrics, is `record.upstream`.
            let Some(user) = decision.user.filter(|u| is_header_value(&u.id)) else {
                return Err(Refusal::Forbidden);
            };
            let websocket =
                may_upgrade && super::websocket::check(request_headers, method, grant.route)?;
            Ok::<_, Refusal>(Forward {
                cluster: self.upstreams.cluster(snapshot, grant.route.upstream),
                path_and_query: forwarded_path(grant.route, &grant.path, uri)?,
                group: grant.group.header.clone().ok_or(Refusal::Forbidden)?,
                peer_is_trusted,
                upstream_timeout: grant
                    .route
                    .upstream_timeout
                    .unwrap_or(snapshot.server.upstream_timeout),
                limits: Limits::of(&snapshot.server),
                key_header: snapshot.server.key_header.clone(),
                credential_headers: (!snapshot.server.credential_headers.is_empty())
                    .then(|| Arc::clone(&snapshot.server.credential_headers)),
                strip_authorization: super::headers::authorization_is_ours(request_headers),
                limit_plan: self.limits.plan(user, &snapshot.rate_limits),
                websocket,
                idle_timeout: snapshot.server.idle_timeout,
                underscore_headers: snapshot.server.underscore_headers,
                host,
                proto: if session.is_some() { "https" } else { "http" },
            })
        })();
        if let Err(refusal) = &forward {
            record.decision = refusal.code();
        }
        (forward.map_err(Refused::from), record)
    }
}

/// Under `underscore_headers = "refuse"`, a header name with `_` (besides a configured key or
/// credential header that has one) refuses the request.
fn underscore_refusal(snapshot: &Snapshot, request_headers: &http::HeaderMap) -> Option<Refusal> {
    let server = &snapshot.server;
    let refused = server.underscore_headers == UnderscoreHeaders::Refuse
        && request_headers.keys().any(|name| {
            headers::has_underscore(name.as_str().as_bytes())
                && *name != server.key_header
                && !server.credential_headers.contains(name)
        });
    refused.then_some(Refusal::UnderscoreHeader)
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

/// The normalised path (the one the permission was checked on), without the route's prefix
/// when the route says `strip_prefix`, then the query exactly as received.
fn forwarded_path(route: &Route, path: &str, original: &Uri) -> Result<PathAndQuery, Refusal> {
    let path = if route.strip_prefix {
        // The route matched, so the path starts with its prefix (or is the prefix without its
        // final '/', which strips to the root).
        path.get(route.prefix.len()..).unwrap_or("")
    } else {
        path
    };
    if !route.strip_prefix
        && path == original.path()
        && let Some(pq) = original.path_and_query()
    {
        return Ok(pq.clone());
    }
    let slash = if path.starts_with('/') { "" } else { "/" };
    let mut text = String::with_capacity(
        slash.len() + path.len() + original.query().map_or(0, |q| q.len() + 1),
    );
    text.push_str(slash);
    text.push_str(path);
    if let Some(q) = original.query() {
        text.push('?');
        text.push_str(q);
    }
    PathAndQuery::try_from(text).map_err(|_| Refusal::BadPath)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(prefix: &str, strip_prefix: bool) -> Route {
        Route {
            prefix: prefix.into(),
            upstream: 0,
            strip_prefix,
            upstream_timeout: None,
            websocket: false,
        }
    }

    #[test]
    fn strip_prefix_forwards_the_checked_path_without_the_route_prefix() {
        let uri: Uri = "/supporters/42?x=1".parse().unwrap();
        let strip = route("/supporters/", true);
        assert_eq!(
            forwarded_path(&strip, "/supporters/42", &uri).unwrap(),
            "/42?x=1"
        );
        assert_eq!(
            forwarded_path(&strip, "/supporters", &"/supporters".parse().unwrap()).unwrap(),
            "/"
        );
        let keep = route("/supporters/", false);
        assert_eq!(
            forwarded_path(&keep, "/supporters/42", &uri).unwrap(),
            "/supporters/42?x=1"
        );
        // The normalised path is what goes on, not the one received.
        let odd: Uri = "/supporters/a/../42".parse().unwrap();
        assert_eq!(
            forwarded_path(&strip, "/supporters/42", &odd).unwrap(),
            "/42"
        );
        let no_slash = route("/api", true);
        assert_eq!(
            forwarded_path(&no_slash, "/api/v1", &"/api/v1".parse().unwrap()).unwrap(),
            "/v1"
        );
    }
}
