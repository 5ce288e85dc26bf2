//! What every request gets, whatever carried it: admission (`admission.rs`), the header rules
//! (`headers.rs`), what an upstream failure becomes and the response-head rules
//! (`upstream.rs`), and the request's record (metrics and log line). Transports call it with
//! `http` types and byte slices; it never sees a socket or a transport's types.

mod admission;
pub mod headers;
mod limits;
mod upstream;
mod websocket;

use std::sync::Arc;
use std::time::Instant;

use crate::auth::password::PasswordVerifier;
use crate::config::reload::ConfigStore;
use crate::limits::Limiter;
use crate::observe::{RequestRecord, Telemetry};
use crate::upstream::Upstreams;

pub use admission::{Forward, HeadChecked};
pub use limits::Refused;
pub use upstream::{
    ConnectError, HeadLimits, InvalidResponse, UpstreamFailure, check_response_framing,
};
pub use websocket::is_websocket_upgrade;

pub static X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// Shared by every connection of every transport: the configuration, the password verifier,
/// telemetry.
pub struct Policy {
    pub store: Arc<ConfigStore>,
    /// Basic-auth verification: Argon2id behind a success cache and a failure limiter. It lives
    /// as long as the process, not a snapshot: its cache is keyed by the stored hash, so a
    /// reload that changes a password misses it while other reloads keep it warm.
    passwords: PasswordVerifier,
    pub telemetry: Arc<Telemetry>,
    /// The rate limit of upstream-failure warnings.
    upstream_failures: upstream::FailureLog,
    /// Rate, quota and concurrency state, and the failed-auth limiter; outlives every snapshot.
    pub limits: Arc<Limiter>,
    /// The targets' running state: health, requests in flight, ejection.
    pub upstreams: Arc<Upstreams>,
}

impl Policy {
    pub fn new(store: Arc<ConfigStore>, telemetry: Arc<Telemetry>, limits: Arc<Limiter>) -> Policy {
        Policy {
            upstreams: Arc::new(Upstreams::new(Arc::clone(&store), Arc::clone(&telemetry))),
            store,
            passwords: PasswordVerifier::new(),
            telemetry,
            upstream_failures: upstream::FailureLog::default(),
            limits,
        }
    }

    /// Records a finished request at `now` (when it ended): metrics always, a log line unless
    /// sampled out.
    pub fn finish(&self, record: &RequestRecord, now: Instant, bytes_in: u64, bytes_out: u64) {
        self.telemetry.finish_at(record, now, bytes_in, bytes_out);
    }
}
