//! What an upstream's failure becomes (the refusal the client gets, the error counted), once for
//! every transport, and the rules a response head must pass before any of it is relayed.

use http::HeaderMap;
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};

use super::Policy;
use crate::observe::RequestRecord;
use crate::observe::metrics::UpstreamErrorKind;
use crate::refusal::Refusal;

/// The largest response head relayed, status line included; a larger one is an invalid answer.
pub const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;

/// The most header lines a relayed response head may have.
pub const MAX_RESPONSE_HEADERS: usize = 64;

/// Why the upstream gave no answer the gateway can relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamFailure {
    #[error("cannot connect to the upstream")]
    Connect,
    #[error("the upstream did not answer within upstream_timeout")]
    Timeout,
    #[error("the upstream connection failed before a whole response head arrived")]
    Broken,
    #[error("the upstream's response is not one to relay: {0}")]
    Invalid(#[from] InvalidResponse),
}

/// Why a response head is refused instead of relayed. The connection it came on is never used
/// again: what follows it cannot be delimited with certainty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum InvalidResponse {
    #[error("the head does not parse")]
    Malformed,
    #[error(
        "the head is larger than {MAX_RESPONSE_HEAD_BYTES} bytes or has more than {MAX_RESPONSE_HEADERS} headers"
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
}

impl UpstreamFailure {
    /// The one refusal each failure becomes.
    pub fn refusal(self) -> Refusal {
        match self {
            UpstreamFailure::Timeout => Refusal::UpstreamTimeout,
            UpstreamFailure::Connect | UpstreamFailure::Broken | UpstreamFailure::Invalid(_) => {
                Refusal::UpstreamUnavailable
            }
        }
    }

    /// The `kind` label of `apiward_upstream_errors_total`.
    pub fn metric_kind(self) -> UpstreamErrorKind {
        match self {
            UpstreamFailure::Connect => UpstreamErrorKind::Connect,
            UpstreamFailure::Timeout => UpstreamErrorKind::Timeout,
            UpstreamFailure::Broken | UpstreamFailure::Invalid(_) => UpstreamErrorKind::Other,
        }
    }
}

impl Policy {
    /// An upstream failed for this request: counted against its upstream, made the request's
    /// decision, and answered with the refusal returned.
    pub fn upstream_failed(&self, record: &mut RequestRecord, failure: UpstreamFailure) -> Refusal {
        let refusal = failure.refusal();
        if let Some(upstream) = &record.upstream {
            self.telemetry
                .metrics
                .upstream_error(upstream, failure.metric_kind());
        }
        record.decision = refusal.code();
        refusal
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
