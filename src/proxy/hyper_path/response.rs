//! What hyper's path answers with: the response body type (the upstream's, streamed through the
//! bounded buffer, or one the gateway made) and a refusal as such a response. A leaf, so that the
//! path's parts (`mod.rs`, `websocket.rs`) share it without importing each other.

use bytes::Bytes;
use http::Response;
use http_body_util::{Either, Full};

use super::buffer::Relayed;
use crate::observe::RequestRecord;
use crate::proxy::policy::Refused;
use crate::refusal::{Presented, Refusal};

/// A response body before it is wrapped for logging: the upstream's, streamed, or one the
/// gateway made.
pub type ResponseBody = Either<Relayed, Full<Bytes>>;

/// A refusal (of the policy, a limit or the upstream) as hyper's path answers it.
pub fn refusal_response(
    refused: impl Into<Refused>,
    presented: Presented,
) -> Response<ResponseBody> {
    refused
        .into()
        .response::<Full<Bytes>>(presented)
        .map(Either::Right)
}

/// A refusal the forward makes itself (no place at the upstream, no healthy target), recorded as
/// the request's decision and answered.
pub fn refuse_forward(refusal: Refusal, record: &mut RequestRecord) -> Response<ResponseBody> {
    record.decision = refusal.code();
    refusal_response(refusal, record.presented)
}
