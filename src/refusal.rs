//! The one mapping from every refusal to its HTTP status, error code, message and headers.

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{Response, StatusCode};

/// Why the gateway answered instead of the upstream. Matched exhaustively: a new refusal
/// cannot fall into a catch-all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    MissingCredentials,
    InvalidCredentials,
    KeyExpired,
    UserInactive,
    UnregisteredSource,
    NoRoute,
    Forbidden,
    BadPath,
    UpstreamUnavailable,
    UpstreamTimeout,
    /// No target of the upstream is healthy, and the one tried anyway (the least recently
    /// failed) failed too.
    NoHealthyUpstream,
    /// `max_upstream_connections` of the upstream were in use for all of `connect_timeout`.
    UpstreamBusy,
    /// `Upgrade: websocket` without what the handshake needs (RFC 6455 4.1).
    BadUpgrade,
    /// Framing two parsers could read differently (`Transfer-Encoding` other than exactly `chunked`).
    BadFraming,
    /// The user's `rate_limit` is spent for now.
    RateLimited,
    /// The user's `quota` is spent for this period.
    QuotaExhausted,
    /// The user has `max_concurrent` requests in flight already.
    TooManyConcurrent,
    /// The shared limit store is unreachable and `on_store_error = "deny"`.
    LimitStoreUnavailable,
    /// This source address sent too many invalid credentials lately.
    TooManyFailedAttempts,
    /// `Host` missing from an HTTP/1.1 request, repeated, not a host, or disagreeing with an
    /// absolute-form target (RFC 9112 3.2).
    BadHost,
    /// A header name with `_`, under `underscore_headers = "refuse"`.
    UnderscoreHeader,
    /// The upstream answered with a head no proxy may relay (malformed, too large, two framings,
    /// conflicting lengths): 502, and its connection is not reused.
    UpstreamInvalidResponse,
    /// A client certificate and a key (or password) that identify different users.
    AmbiguousCredentials,
}

impl Refusal {
    pub const ALL: [Refusal; 23] = [
        Refusal::MissingCredentials,
        Refusal::InvalidCredentials,
        Refusal::KeyExpired,
        Refusal::UserInactive,
        Refusal::UnregisteredSource,
        Refusal::NoRoute,
        Refusal::Forbidden,
        Refusal::BadPath,
        Refusal::UpstreamUnavailable,
        Refusal::UpstreamTimeout,
        Refusal::NoHealthyUpstream,
        Refusal::UpstreamBusy,
        Refusal::BadUpgrade,
        Refusal::BadFraming,
        Refusal::RateLimited,
        Refusal::QuotaExhausted,
        Refusal::TooManyConcurrent,
        Refusal::LimitStoreUnavailable,
        Refusal::TooManyFailedAttempts,
        Refusal::BadHost,
        Refusal::UnderscoreHeader,
        Refusal::UpstreamInvalidResponse,
        Refusal::AmbiguousCredentials,
    ];

    pub fn status(self) -> StatusCode {
        match self {
            Refusal::MissingCredentials | Refusal::InvalidCredentials | Refusal::KeyExpired => {
                StatusCode::UNAUTHORIZED
            }
            Refusal::UserInactive | Refusal::UnregisteredSource | Refusal::Forbidden => {
                StatusCode::FORBIDDEN
            }
            Refusal::NoRoute => StatusCode::NOT_FOUND,
            Refusal::BadPath
            | Refusal::BadFraming
            | Refusal::BadUpgrade
            | Refusal::BadHost
            | Refusal::UnderscoreHeader
            | Refusal::AmbiguousCredentials => StatusCode::BAD_REQUEST,
            Refusal::UpstreamUnavailable | Refusal::UpstreamInvalidResponse => {
                StatusCode::BAD_GATEWAY
            }
            Refusal::NoHealthyUpstream | Refusal::UpstreamBusy => StatusCode::SERVICE_UNAVAILABLE,
            Refusal::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::RateLimited
            | Refusal::QuotaExhausted
            | Refusal::TooManyConcurrent
            | Refusal::TooManyFailedAttempts => StatusCode::TOO_MANY_REQUESTS,
            Refusal::LimitStoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The stable error code clients and dashboards match on.
    pub fn code(self) -> &'static str {
        match self {
            Refusal::MissingCredentials => "missing_credentials",
            Refusal::InvalidCredentials => "invalid_credentials",
            Refusal::KeyExpired => "key_expired",
            Refusal::UserInactive => "user_inactive",
            Refusal::UnregisteredSource => "unregistered_source",
            Refusal::NoRoute => "no_route",
            Refusal::Forbidden => "forbidden",
            Refusal::BadPath => "bad_path",
            Refusal::UpstreamUnavailable => "upstream_unavailable",
            Refusal::UpstreamTimeout => "upstream_timeout",
            Refusal::NoHealthyUpstream => "no_healthy_upstream",
            Refusal::UpstreamBusy => "upstream_busy",
            Refusal::BadUpgrade => "bad_upgrade",
            Refusal::BadFraming => "bad_framing",
            Refusal::RateLimited => "rate_limited",
            Refusal::QuotaExhausted => "quota_exhausted",
            Refusal::TooManyConcurrent => "too_many_concurrent",
            Refusal::LimitStoreUnavailable => "limit_store_unavailable",
            Refusal::TooManyFailedAttempts => "too_many_failed_attempts",
            Refusal::BadHost => "bad_host",
            Refusal::UnderscoreHeader => "underscore_header",
            Refusal::UpstreamInvalidResponse => "upstream_invalid_response",
            Refusal::AmbiguousCredentials => "ambiguous_credentials",
        }
    }

    /// One sentence a person can act on, for a request that presented an API key (or nothing).
    pub fn message(self) -> &'static str {
        self.message_for(Presented::Key)
    }

    /// One sentence a person can act on, in terms of what the request presented: a refused
    /// password is not told to check its API key.
    pub fn message_for(self, presented: Presented) -> &'static str {
        use Presented::{Key, Nothing, Password};
        match (self, presented) {
            (Refusal::MissingCredentials, _) => {
                "No credentials were presented: send an API key in the X-Api-Key header or as Authorization: Bearer <key>, or a user name and password as Authorization: Basic."
            }
            (Refusal::InvalidCredentials, Key) => {
                "The API key presented is not valid: check it, or ask the operator for a new one."
            }
            (Refusal::InvalidCredentials, Password) => {
                "The user name and password presented are not valid: check them, or ask the operator to set a new password."
            }
            (Refusal::InvalidCredentials, Nothing) => {
                "The credentials presented are not valid: send an API key, or a user name and password as Authorization: Basic."
            }
            (Refusal::KeyExpired, _) => {
                "This API key has expired: use the key that replaced it, or ask the operator for a new one."
            }
            (Refusal::UserInactive, Key | Nothing) => {
                "The API user for this key is not active: ask the operator to activate it."
            }
            (Refusal::UserInactive, Password) => {
                "This API user is not active: ask the operator to activate it."
            }
            (Refusal::UnregisteredSource, Key | Nothing) => {
                "Authentication call is being made from an unregistered source address for this API key"
            }
            (Refusal::UnregisteredSource, Password) => {
                "Authentication call is being made from an unregistered source address for this API user"
            }
            (Refusal::NoRoute, _) => "No API is served at this path: check the URL.",
            (Refusal::Forbidden, _) => {
                "This API user's permission group does not allow this method on this path."
            }
            (Refusal::BadPath, _) => {
                "The request path is ambiguous (an encoded '/' or '\\', a NUL, or '..' above the root): send it in plain form."
            }
            (Refusal::UpstreamUnavailable, _) => {
                "The API behind the gateway is unavailable: retry later, and tell the operator if it persists."
            }
            (Refusal::UpstreamTimeout, _) => {
                "The API behind the gateway did not answer in time: retry later, and tell the operator if it persists."
            }
            (Refusal::NoHealthyUpstream, _) => {
                "No server behind this API is healthy now: retry later, and tell the operator if it persists."
            }
            (Refusal::UpstreamBusy, _) => {
                "The API behind the gateway is handling as many requests as it may at once: retry shortly."
            }
            (Refusal::BadUpgrade, _) => {
                "A WebSocket upgrade needs GET over HTTP/1.1 with Connection: Upgrade, Sec-WebSocket-Version: 13 and a well-formed handshake nonce (RFC 6455 4.1)."
            }
            (Refusal::BadFraming, _) => {
                "The request's framing is ambiguous: send either Content-Length or Transfer-Encoding: chunked, not both or another coding."
            }
            (Refusal::RateLimited, _) => {
                "This API user is over its rate limit: wait as long as Retry-After says, and pace requests by the RateLimit header."
            }
            (Refusal::QuotaExhausted, _) => {
                "This API user's quota for the current period is used up: wait as long as Retry-After says, or ask the operator for a larger quota."
            }
            (Refusal::TooManyConcurrent, _) => {
                "This API user has as many requests in flight as it may: wait for one to finish before sending another."
            }
            (Refusal::LimitStoreUnavailable, _) => {
                "The gateway cannot check this API user's limits right now: retry after Retry-After seconds, and tell the operator if it persists."
            }
            (Refusal::TooManyFailedAttempts, _) => {
                "Too many invalid credentials came from this address: wait as long as Retry-After says, then send a valid credential."
            }
            (Refusal::BadHost, _) => {
                "An HTTP/1.1 request needs exactly one Host header holding a host name or address (and the same authority as an absolute-form target): send one."
            }
            (Refusal::UpstreamInvalidResponse, _) => {
                "The API behind the gateway answered with a response the gateway does not relay (malformed, too large, or framed two ways): tell the operator."
            }
            (Refusal::UnderscoreHeader, _) => {
                "A header name contains '_', which this gateway refuses (backends read it as '-'): send the name with '-'."
            }
            (Refusal::AmbiguousCredentials, Key | Nothing) => {
                "The client certificate and the API key presented belong to different API users: present one of them."
            }
            (Refusal::AmbiguousCredentials, Password) => {
                "The client certificate and the user name presented belong to different API users: present one of them."
            }
        }
    }

    /// Whether the connection closes after this answer: what follows a request whose framing is
    /// ambiguous cannot be delimited with certainty.
    pub fn closes_connection(self) -> bool {
        match self {
            Refusal::BadFraming => true,
            Refusal::BadHost
            | Refusal::UnderscoreHeader
            | Refusal::UpstreamInvalidResponse
            | Refusal::MissingCredentials
            | Refusal::InvalidCredentials
            | Refusal::KeyExpired
            | Refusal::UserInactive
            | Refusal::UnregisteredSource
            | Refusal::NoRoute
            | Refusal::Forbidden
            | Refusal::BadPath
            | Refusal::AmbiguousCredentials
            | Refusal::UpstreamUnavailable
            | Refusal::UpstreamTimeout
            | Refusal::RateLimited
            | Refusal::QuotaExhausted
            | Refusal::TooManyConcurrent
            | Refusal::LimitStoreUnavailable
            | Refusal::TooManyFailedAttempts
            | Refusal::NoHealthyUpstream
            | Refusal::UpstreamBusy
            | Refusal::BadUpgrade => false,
        }
    }

    /// The JSON body for a request that presented a key: `{"error": code, "message": sentence}`.
    pub fn body(self) -> Bytes {
        self.body_for(Presented::Key)
    }

    /// The JSON body, worded for what was presented.
    pub fn body_for(self, presented: Presented) -> Bytes {
        let body =
            serde_json::json!({ "error": self.code(), "message": self.message_for(presented) });
        Bytes::from(body.to_string())
    }

    /// Whether the refusal carries `Retry-After` (its value comes from the limit that refused).
    pub fn has_retry_after(self) -> bool {
        matches!(
            self,
            Refusal::RateLimited
                | Refusal::QuotaExhausted
                | Refusal::TooManyConcurrent
                | Refusal::LimitStoreUnavailable
                | Refusal::TooManyFailedAttempts
        )
    }

    /// `response`, with `Retry-After: seconds` when the refusal has one (at least 1).
    pub fn response_retry_after<B: From<Bytes>>(self, seconds: u64) -> Response<B> {
        let mut response = self.response::<B>();
        if self.has_retry_after() {
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        response
    }

    pub fn response<B: From<Bytes>>(self) -> Response<B> {
        self.response_for(Presented::Key)
    }

    /// The whole response, worded for what was presented. A refused password is challenged
    /// with `WWW-Authenticate: Basic`, so that a browser or client asks again.
    pub fn response_for<B: From<Bytes>>(self, presented: Presented) -> Response<B> {
        let mut response = Response::new(B::from(self.body_for(presented)));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        match self {
            Refusal::MissingCredentials => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"apiward\""),
                );
            }
            Refusal::InvalidCredentials | Refusal::KeyExpired => {
                let challenge = match presented {
                    Presented::Password => "Basic realm=\"apiward\", charset=\"UTF-8\"",
                    Presented::Key | Presented::Nothing => {
                        "Bearer realm=\"apiward\", error=\"invalid_token\""
                    }
                };
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            }
            Refusal::BadFraming
            | Refusal::BadHost
            | Refusal::UnderscoreHeader
            | Refusal::UpstreamInvalidResponse
            | Refusal::BadPath
            | Refusal::AmbiguousCredentials
            | Refusal::UserInactive
            | Refusal::UnregisteredSource
            | Refusal::NoRoute
            | Refusal::Forbidden
            | Refusal::UpstreamUnavailable
            | Refusal::UpstreamTimeout
            | Refusal::RateLimited
            | Refusal::QuotaExhausted
            | Refusal::TooManyConcurrent
            | Refusal::LimitStoreUnavailable
            | Refusal::TooManyFailedAttempts
            | Refusal::NoHealthyUpstream
            | Refusal::UpstreamBusy
            | Refusal::BadUpgrade => {}
        }
        if self.closes_connection() {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// What a request presented to identify itself. Refusal messages and the request log say which,
/// so that a refused password is never told about API keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Presented {
    /// No credential, or one that could not be read (a malformed Authorization header).
    #[default]
    Nothing,
    /// An API key (the key header, or Authorization: Bearer).
    Key,
    /// A user name and password (Authorization: Basic).
    Password,
}

impl Presented {
    /// The request log's `credential` field; `None` when nothing was presented.
    pub fn as_log(self) -> Option<&'static str> {
        match self {
            Presented::Nothing => None,
            Presented::Key => Some("key"),
            Presented::Password => Some("password"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_refusal_has_a_distinct_code_and_a_json_body() {
        let mut codes: Vec<&str> = Refusal::ALL.iter().map(|r| r.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Refusal::ALL.len());
        for r in Refusal::ALL {
            let v: serde_json::Value = serde_json::from_slice(&r.body()).unwrap();
            assert_eq!(v["error"], r.code());
            assert_eq!(v["message"], r.message());
            assert!(r.status().is_client_error() || r.status().is_server_error());
        }
        for r in [
            Refusal::RateLimited,
            Refusal::QuotaExhausted,
            Refusal::TooManyConcurrent,
        ] {
            assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
            let response: Response<Bytes> = r.response_retry_after(7);
            assert_eq!(response.headers()[RETRY_AFTER], "7");
        }
        assert_eq!(
            Refusal::UnregisteredSource.message(),
            "Authentication call is being made from an unregistered source address for this API key"
        );
    }

    #[test]
    fn a_refused_password_is_never_told_about_api_keys() {
        for r in Refusal::ALL {
            let m = r.message_for(Presented::Password).to_lowercase();
            if r != Refusal::MissingCredentials && r != Refusal::KeyExpired {
                assert!(!m.contains("key"), "{r:?}: {m}");
            }
        }
        let challenge = |p| {
            Refusal::InvalidCredentials
                .response_for::<Bytes>(p)
                .headers()[WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .to_string()
        };
        assert!(challenge(Presented::Password).starts_with("Basic realm=\"apiward\""));
        assert!(challenge(Presented::Key).starts_with("Bearer "));
    }
}
