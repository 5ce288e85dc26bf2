//! The one mapping from every refusal to its HTTP status, error code, message and headers.

use bytes::Bytes;
use http::header::{CONNECTION, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
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
    /// Framing two parsers could read differently (`Transfer-Encoding` other than exactly `chunked`).
    BadFraming,
}

impl Refusal {
    pub const ALL: [Refusal; 11] = [
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
        Refusal::BadFraming,
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
            Refusal::BadPath | Refusal::BadFraming => StatusCode::BAD_REQUEST,
            Refusal::UpstreamUnavailable => StatusCode::BAD_GATEWAY,
            Refusal::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
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
            Refusal::BadFraming => "bad_framing",
        }
    }

    /// One sentence a person can act on.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::MissingCredentials => {
                "No API key was presented: send it in the X-Api-Key header or as Authorization: Bearer <key>."
            }
            Refusal::InvalidCredentials => {
                "The credentials presented are not valid: check the API key, or ask the operator for a new one."
            }
            Refusal::KeyExpired => {
                "This API key has expired: use the key that replaced it, or ask the operator for a new one."
            }
            Refusal::UserInactive => {
                "The API user for this key is not active: ask the operator to activate it."
            }
            Refusal::UnregisteredSource => {
                "Authentication call is being made from an unregistered source address for this API key"
            }
            Refusal::NoRoute => "No API is served at this path: check the URL.",
            Refusal::Forbidden => {
                "This API user's permission group does not allow this method on this path."
            }
            Refusal::BadPath => {
                "The request path is ambiguous (an encoded '/' or '\\', a NUL, or '..' above the root): send it in plain form."
            }
            Refusal::UpstreamUnavailable => {
                "The API behind the gateway is unavailable: retry later, and tell the operator if it persists."
            }
            Refusal::UpstreamTimeout => {
                "The API behind the gateway did not answer in time: retry later, and tell the operator if it persists."
            }
            Refusal::BadFraming => {
                "The request's framing is ambiguous: send either Content-Length or Transfer-Encoding: chunked, not both or another coding."
            }
        }
    }

    /// Whether the connection closes after this answer: what follows a request whose framing is
    /// ambiguous cannot be delimited with certainty.
    pub fn closes_connection(self) -> bool {
        match self {
            Refusal::BadFraming => true,
            Refusal::MissingCredentials
            | Refusal::InvalidCredentials
            | Refusal::KeyExpired
            | Refusal::UserInactive
            | Refusal::UnregisteredSource
            | Refusal::NoRoute
            | Refusal::Forbidden
            | Refusal::BadPath
            | Refusal::UpstreamUnavailable
            | Refusal::UpstreamTimeout => false,
        }
    }

    /// The JSON body: `{"error": code, "message": sentence}`.
    pub fn body(self) -> Bytes {
        let body = serde_json::json!({ "error": self.code(), "message": self.message() });
        Bytes::from(body.to_string())
    }

    pub fn response<B: From<Bytes>>(self) -> Response<B> {
        let mut response = Response::new(B::from(self.body()));
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
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"apiward\", error=\"invalid_token\""),
                );
            }
            Refusal::BadFraming
            | Refusal::BadPath
            | Refusal::UserInactive
            | Refusal::UnregisteredSource
            | Refusal::NoRoute
            | Refusal::Forbidden
            | Refusal::UpstreamUnavailable
            | Refusal::UpstreamTimeout => {}
        }
        if self.closes_connection() {
            headers.insert(CONNECTION, HeaderValue::from_static("close"));
        }
        response
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
        assert_eq!(
            Refusal::UnregisteredSource.message(),
            "Authentication call is being made from an unregistered source address for this API key"
        );
    }
}
