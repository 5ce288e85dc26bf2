//! What an upstream's failure becomes (the refusal the client gets, the error counted), once for
//! every transport, and the rules a response head must pass before any of it is relayed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use http::HeaderMap;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};

use crate::observe::metrics::UpstreamErrorKind;
use crate::refusal::Refusal;

/// At most one warning per upstream in this long; the failures in between are counted and the
/// count is reported with the next warning, so an outage is visible without flooding the log.
pub const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// The limits a relayed response head must keep (`max_response_headers`,
/// `max_response_header_bytes`), the same on both paths; a larger head is an invalid answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Header lines at most.
    pub headers: usize,
    /// Bytes at most, status line included.
    pub bytes: usize,
}

impl HeadLimits {
    pub fn of(limits: &crate::snapshot::ServerLimits) -> HeadLimits {
        HeadLimits {
            headers: limits.max_response_headers,
            bytes: limits.max_response_header_bytes,
        }
    }
}

/// Why the upstream gave no answer the gateway can relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamFailure {
    #[error("cannot connect to the upstream: {0}")]
    Connect(ConnectError),
    #[error("the upstream did not answer within upstream_timeout")]
    Timeout,
    #[error("the upstream connection closed or was reset before any byte of a response")]
    Reset,
    #[error("the upstream connection failed before a whole response head arrived")]
    Broken,
    #[error("the upstream's response is not one to relay: {0}")]
    Invalid(#[from] InvalidResponse),
}

/// Why a connection to the upstream could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// Nothing listens at the address.
    #[error("connection refused")]
    Refused,
    /// `connect_timeout` passed before the connection was established.
    #[error("no connection within connect_timeout")]
    TimedOut,
    /// Any other socket error (unreachable network, no route, a name that does not resolve).
    #[error("{0}")]
    Other(std::io::ErrorKind),
}

impl ConnectError {
    pub fn from_io(e: &std::io::Error) -> ConnectError {
        match e.kind() {
            std::io::ErrorKind::ConnectionRefused => ConnectError::Refused,
            std::io::ErrorKind::TimedOut => ConnectError::TimedOut,
            kind => ConnectError::Other(kind),
        }
    }
}

/// Why a response head is refused instead of relayed. The connection it came on is never used
/// again: what follows it cannot be delimited with certainty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidResponse {
    #[error("the head does not parse")]
    Malformed,
    #[error(
        "the head is larger than max_response_header_bytes or has more than max_response_headers headers"
    )]
    TooLarge,
    #[error("a Content-Length is not a number")]
    BadLength,
    #[error("the Content-Length values disagree")]
    ConflictingLengths,
    #[error(
        "Content-Length beside Transfer-Encoding (RFC 9112 6.3: a smuggling or splitting attempt)"
    )]
    LengthWithCoding,
    #[error("101 Switching Protocols to a request that asked for no upgrade")]
    UnaskedUpgrade,
    #[error("the chunked body does not follow RFC 9112 7.1 (a bare LF in its trailers, say)")]
    BadChunks,
}

impl UpstreamFailure {
    /// The one refusal each failure becomes.
    pub fn refusal(self) -> Refusal {
        match self {
            UpstreamFailure::Timeout => Refusal::UpstreamTimeout,
            UpstreamFailure::Connect(_) | UpstreamFailure::Reset | UpstreamFailure::Broken => {
                Refusal::UpstreamUnavailable
            }
            UpstreamFailure::Invalid(_) => Refusal::UpstreamInvalidResponse,
        }
    }

    /// Whether another target may be tried after it (for an idempotent request): nothing of an
    /// answer arrived, and the time was not used up waiting.
    pub fn retryable(self) -> bool {
        match self {
            UpstreamFailure::Connect(_) | UpstreamFailure::Reset => true,
            UpstreamFailure::Timeout | UpstreamFailure::Broken | UpstreamFailure::Invalid(_) => {
                false
            }
        }
    }

    /// The `kind` label of `apiward_upstream_errors_total`.
    pub fn metric_kind(self) -> UpstreamErrorKind {
        match self {
            UpstreamFailure::Connect(_) => UpstreamErrorKind::Connect,
            UpstreamFailure::Timeout => UpstreamErrorKind::Timeout,
            UpstreamFailure::Reset | UpstreamFailure::Broken | UpstreamFailure::Invalid(_) => {
                UpstreamErrorKind::Other
            }
        }
    }
}

/// When each upstream's failures were last logged, and how many were not since.
#[derive(Debug, Default)]
pub struct FailureLog {
    by_upstream: Mutex<HashMap<Box<str>, Window>>,
}

#[derive(Debug)]
struct Window {
    logged_at: Instant,
    suppressed: u64,
}

impl FailureLog {
    /// Whether a failure of `upstream` at `now` is logged: `Some(failures suppressed since the
    /// last line)` if so, `None` (and counted) if a line was written less than
    /// `FAILURE_LOG_INTERVAL` ago.
    pub fn admit(&self, upstream: &str, now: Instant) -> Option<u64> {
        let mut by_upstream = self.by_upstream.lock().unwrap_or_else(|p| p.into_inner());
        match by_upstream.get_mut(upstream) {
            Some(w) if now.saturating_duration_since(w.logged_at) < FAILURE_LOG_INTERVAL => {
                w.suppressed += 1;
                None
            }
            Some(w) => {
                w.logged_at = now;
                Some(std::mem::take(&mut w.suppressed))
            }
            None => {
                by_upstream.insert(
                    upstream.into(),
                    Window {
                        logged_at: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
        }
    }
}

/// The framing rule for a response head whose headers a parser has already read (hyper's
/// path; the HTTP/1 engine applies the same rule as it parses): a length beside a transfer
/// coding is refused, never resolved.
pub fn check_response_framing(headers: &HeaderMap) -> Result<(), InvalidResponse> {
    if headers.contains_key(TRANSFER_ENCODING) && headers.contains_key(CONTENT_LENGTH) {
        return Err(InvalidResponse::LengthWithCoding);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_upstream_per_interval_with_the_count_of_the_others() {
        let log = FailureLog::default();
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(log.admit("api", at(0)), Some(0));
        assert_eq!(log.admit("api", at(10)), None);
        assert_eq!(log.admit("api", at(999)), None);
        // Another upstream has its own window.
        assert_eq!(log.admit("billing", at(500)), Some(0));
        assert_eq!(log.admit("api", at(1000)), Some(2));
        assert_eq!(log.admit("api", at(1500)), None);
        assert_eq!(log.admit("api", at(5000)), Some(1));
        assert_eq!(log.admit("api", at(9000)), Some(0));
    }

    #[test]
    fn a_connect_failure_says_why() {
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let f = UpstreamFailure::Connect(ConnectError::from_io(&refused));
        assert_eq!(
            f.to_string(),
            "cannot connect to the upstream: connection refused"
        );
        assert_eq!(f.refusal(), Refusal::UpstreamUnavailable);
        assert_eq!(
            UpstreamFailure::Connect(ConnectError::TimedOut).to_string(),
            "cannot connect to the upstream: no connection within connect_timeout"
        );
    }
}
