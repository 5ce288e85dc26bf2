//! What every request gets, whatever carried it: admission (`admission.rs`, its limit step in
//! `limits.rs`), the header rules (`headers.rs`), what an upstream failure becomes and the
//! response-head rules (`upstream.rs`), the state all of it shares and the request's record
//! (`context.rs`). Transports call it with `http` types and byte slices; it never sees a socket
//! or a transport's types. This file only names the parts: none of them imports it.

mod admission;
mod context;
pub mod headers;
mod limits;
mod refused;
pub mod upstream;
mod websocket;

pub use admission::{Forward, HeadChecked};
pub use context::Policy;
pub use headers::X_REQUEST_ID;
pub use refused::Refused;
pub use upstream::{
    ConnectError, HeadLimits, InvalidResponse, UpstreamFailure, check_response_framing,
};
pub use websocket::is_websocket_upgrade;
