//! The HTTP/1 engine (the fast path): the common request (a bodiless GET, HEAD, DELETE or OPTIONS
//! over HTTP/1.1 to an HTTP upstream) is read, admitted, forwarded and answered here directly on
//! the streams, with `httparse` and no per-request tasks, channels or header maps beyond what the
//! decision reads. Everything else (a request body, `Expect`, `Upgrade`, HTTP/1.0, a `Connection`
//! header naming other headers, an absolute-form target, a `Host` missing, repeated or not plainly
//! a host, a header name with `_`, a head too large or malformed, the built-in echo upstream) is
//! handed over: `serve` returns the stream with the bytes already read, and the caller gives it
//! to hyper's server for the rest of its life; admission checks there what the engine did not.
//!
//! What a request gets is the policy's (`proxy/policy`): admission, the header rules, what an
//! upstream failure becomes, the response-head rules, the request record. The engine only moves
//! bytes: `conn.rs` drives a client connection, generic over its stream; `forward.rs` writes the
//! upstream request and relays the answer; `client.rs` holds the upstream connections (pooled,
//! retried once where safe); `codec.rs` and `chunked.rs` read heads and framing; `deadline.rs`
//! bounds every wait.
//!
//! Upstream connections come from the engine's pool for each request and go back to it as soon as
//! the response has been read, before its last bytes reach the client (so the client's next
//! request finds it). A request on a reused connection that fails before any byte of the answer
//! arrived is sent once more on a new connection (all methods served here are idempotent), as
//! nginx does for a cached connection.

mod chunked;
mod client;
mod codec;
mod conn;
mod deadline;
mod engine;
mod forward;
#[doc(hidden)]
pub mod fuzzing;

// hyper's path sends bodiless HTTP/2 requests to plain upstreams the engine's way (`hyper_path/raw.rs`).
pub(crate) use codec::{Framing, parse_response_head};
pub use conn::{Outcome, serve};
pub use engine::Engine;
pub(crate) use engine::{RawPool, is_open};
