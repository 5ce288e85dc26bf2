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

use super::{Policy, Refused, X_REQUEST_ID};
use crate::auth::{self, Outcome, RequestFacts, credential};
use crate::config::reload;
use crate::limits::{LimitPlan, Limited};
use crate::observe::RequestRecord;
use crate::proxy::upstream::Limits;
use crate::refusal::{Presented, Refusal};
use crate::snapshot::{AccessLogTarget, Snapshot, UpstreamTarget};
use crate::tls::ClientSession;

/// Everything needed to forward an allowed request, taken out of the snapshot so that the
/// snapshot is not held while the upstream answers.
pub struct Forward {
    pub target: UpstreamTarget,
    pub path_and_query: PathAndQuery,
    pub group: HeaderValue,
    pub peer_is_trusted: bool,
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
    /// `X-Forwarded-Proto`: `https` when the client's connection is TLS.
    pub proto: &'static str,
}

impl Policy {
    /// Runs the decision against the current snapshot and keeps only what forwarding needs,
    /// and what the request's log line and metrics need. `arrived` is when the request began
    /// (its total time, in metrics and the log, counts from there). `session` is what the TLS
    /// handshake of the client's connection agreed (its client certificate is a credential).
    #[allow(clippy::too_many_arguments)]
    pub fn admit(
        &self,
        snapshot: &Snapshot,
        method: &http::Method,
        uri: &Uri,
        request_headers: &http::HeaderMap,
        peer: SocketAddr,
        arrived: Instant,
        session: Option<ClientSession>,
    ) -> (Result<Forward, Refused>, RequestRecord) {
        let client = super::headers::client_address(snapshot, peer, request_headers);
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
            protocol: "h1",
            tls: session.map(|s| s.version),
        };
        if !framing_is_unambiguous(request_headers) {
            if record.log {
                record.path = uri.path().to_string();
            }
            return (Err(Refusal::BadFraming.into()), record);
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
        // Only the request log reads it.
        let presented_prefix = match credential {
            credential::Credential::Key(k) if record.log => Some(credential::key_prefix(k)),
            _ => None,
        };
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
                    record.key_prefix = presented_prefix.map(Into::into);
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
                .and_then(|k| k.prefix.map(|p| Box::from(&*p)))
                .or_else(|| presented_prefix.map(Into::into));
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
        let forward = (|| {
            // The user id goes upstream in X-Apiward-User, from `record.user`; the upstream's
            // name, for its error metrics, is `record.upstream`.
            let Some(user) = decision.user.filter(|u| is_header_value(&u.id)) else {
                return Err(Refusal::Forbidden);
            };
            Ok::<_, Refusal>(Forward {
                target: grant.upstream.target.clone(),
                path_and_query: forwarded_path(&grant.upstream.target, &grant.path, uri)?,
                group: grant.group.header.clone().ok_or(Refusal::Forbidden)?,
                peer_is_trusted,
                upstream_timeout: snapshot.server.upstream_timeout,
                limits: Limits::of(&snapshot.server),
                key_header: snapshot.server.key_header.clone(),
                credential_headers: (!snapshot.server.credential_headers.is_empty())
                    .then(|| Arc::clone(&snapshot.server.credential_headers)),
                strip_authorization: super::headers::authorization_is_ours(request_headers),
                limit_plan: LimitPlan::of(user, &snapshot.rate_limits),
                proto: if session.is_some() { "https" } else { "http" },
            })
        })();
        if let Err(refusal) = &forward {
            record.decision = refusal.code();
        }
        (forward.map_err(Refused::from), record)
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
