//! `Policy`: what every connection of every transport shares to decide and record its
//! requests (the configuration, the password verifier, telemetry, limit and upstream state),
//! and what it does with an upstream's failure and a finished request.

use std::sync::Arc;
use std::time::Instant;

use super::upstream::{FailureLog, UpstreamFailure};
use crate::auth::password::PasswordVerifier;
use crate::config::reload::ConfigStore;
use crate::limits::Limiter;
use crate::observe::{RequestRecord, Telemetry};
use crate::refusal::Refusal;
use crate::upstream::Upstreams;

/// Shared by every connection of every transport: the configuration, the password verifier,
/// telemetry.
pub struct Policy {
    pub store: Arc<ConfigStore>,
    /// Basic-auth verification: Argon2id behind a success cache and a failure limiter. It lives
    /// as long as the process, not a snapshot: its cache is keyed by the stored hash, so a
    /// reload that changes a password misses it while other reloads keep it warm.
    pub(super) passwords: PasswordVerifier,
    pub telemetry: Arc<Telemetry>,
    /// The rate limit of upstream-failure warnings.
    pub(super) upstream_failures: FailureLog,
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
            upstream_failures: FailureLog::default(),
            limits,
        }
    }

    /// Records a finished request at `now` (when it ended): metrics always, a log line unless
    /// sampled out. The record's path is handed over to the recent-requests ring.
    pub fn finish(&self, record: &mut RequestRecord, now: Instant, bytes_in: u64, bytes_out: u64) {
        self.telemetry.finish_at(record, now, bytes_in, bytes_out);
    }
}

impl Policy {
    /// An upstream failed for this request (its last attempt), at `target` (its address):
    /// counted against its upstream, logged at warn (rate-limited by `FAILURE_LOG_INTERVAL`),
    /// made the request's decision, and answered with the refusal returned. `fallback`: no
    /// target was healthy, and the one tried anyway failed too (503 `no_healthy_upstream`).
    pub fn upstream_failed(
        &self,
        record: &mut RequestRecord,
        target: &str,
        failure: UpstreamFailure,
        fallback: bool,
    ) -> Refusal {
        let refusal = if fallback {
            Refusal::NoHealthyUpstream
        } else {
            failure.refusal()
        };
        let upstream = record
            .upstream
            .as_deref()
            .unwrap_or(crate::observe::names::NONE);
        if let Some(upstream) = &record.upstream {
            self.telemetry
                .metrics
                .upstream_error(upstream, failure.metric_kind());
        }
        if let Some(suppressed) = self.upstream_failures.admit(upstream, Instant::now()) {
            tracing::warn!(
                upstream,
                target = %target,
                cause = %failure,
                status = refusal.status().as_u16(),
                suppressed,
                request_id = record.request_id.to_str().unwrap_or(""),
                "upstream request failed, answered {} {}{}",
                refusal.status().as_u16(),
                refusal.code(),
                match suppressed {
                    0 => String::new(),
                    n => format!(" ({n} more failures of this upstream since the last line)"),
                }
            );
        }
        record.decision = refusal.code();
        refusal
    }

    /// A request is sent again, to another target.
    pub fn retrying(&self, record: &RequestRecord) {
        if let Some(upstream) = &record.upstream {
            self.telemetry.metrics.upstream_retry(upstream);
        }
    }
}
