//! What is known of each target while it serves: requests in flight, what the health checks
//! said, passive ejection after consecutive failures (with backoff), and when it last failed.
//! Kept under the target's stable id, outside the snapshot, so a reload keeps it; every change
//! of state is logged once and counted.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::observe::Telemetry;
use crate::snapshot::{Eject, HealthCheck};

/// Milliseconds since the first call (never 0: 0 means "never" in the fields below).
pub(super) fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    epoch.elapsed().as_millis() as u64 + 1
}

/// Ejection lasts at most this many times `eject.for` (doubling: 1, 2, 4, 8).
const MAX_BACKOFF_DOUBLINGS: u32 = 3;

/// A state change worth one log line and one count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// Health checks failed `unhealthy_after` times in a row.
    Unhealthy,
    /// Health checks passed `healthy_after` times in a row.
    Healthy,
    /// Passive: `eject.consecutive_failures` failed requests in a row.
    Ejected,
    /// The ejection ended (its time ran out, or a request to it succeeded).
    Returned,
}

impl Transition {
    pub fn as_str(self) -> &'static str {
        match self {
            Transition::Unhealthy => "unhealthy",
            Transition::Healthy => "healthy",
            Transition::Ejected => "ejected",
            Transition::Returned => "returned",
        }
    }
}

/// The health check a target runs, what it was started with, and its task.
pub(super) struct Checker {
    pub(super) config: HealthCheck,
    pub(super) host: http::HeaderValue,
    /// The TLS settings it uses, replaced in place by a reload that changes only them.
    pub(super) tls: Arc<arc_swap::ArcSwapOption<crate::tls::UpstreamTls>>,
    pub(super) protocol: crate::tls::UpstreamProtocol,
    pub(super) task: tokio::task::AbortHandle,
}

/// One target's running state.
pub struct TargetState {
    pub(super) upstream: Arc<str>,
    pub(super) url: Box<str>,
    pub(super) outstanding: AtomicU32,
    /// The health checks' verdict (true: failed `unhealthy_after` in a row).
    pub(super) check_down: AtomicBool,
    /// Failed requests in a row (passive).
    pub(super) failures: AtomicU32,
    /// Ejections in a row without a success between them (the backoff).
    pub(super) ejections: AtomicU32,
    /// `now_ms` when the ejection ends; 0: not ejected.
    pub(super) ejected_until: AtomicU64,
    /// `now_ms` of the last failure; 0: never.
    pub(super) last_failure: AtomicU64,
    pub(super) checker: Mutex<Option<Checker>>,
    telemetry: Arc<Telemetry>,
}

impl TargetState {
    pub(super) fn new(upstream: Arc<str>, url: &str, telemetry: Arc<Telemetry>) -> TargetState {
        TargetState {
            upstream,
            url: url.into(),
            outstanding: AtomicU32::new(0),
            check_down: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            ejections: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
            last_failure: AtomicU64::new(0),
            checker: Mutex::new(None),
            telemetry,
        }
    }

    /// Whether balancing may choose it at `now` (`now_ms`).
    pub(super) fn is_available(&self, now: u64) -> bool {
        !self.check_down.load(Ordering::Relaxed)
            && self.ejected_until.load(Ordering::Relaxed) <= now
    }

    /// `is_available` at `now()`, which is called only when the target has an ejection on record
    /// (`ejected_until` is 0 otherwise, which every `now_ms()` is past).
    pub(super) fn is_available_by(&self, now: impl FnOnce() -> u64) -> bool {
        if self.check_down.load(Ordering::Relaxed) {
            return false;
        }
        let until = self.ejected_until.load(Ordering::Relaxed);
        until == 0 || until <= now()
    }

    fn is_ejected(&self, now: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now
    }

    /// A request to it got an answer that is not a 5xx.
    pub(super) fn succeeded(&self) {
        // Loads first: a healthy target's success writes nothing (no contended cache line).
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.ejections.load(Ordering::Relaxed) != 0 {
            self.ejections.store(0, Ordering::Relaxed);
        }
        if self.ejected_until.load(Ordering::Relaxed) != 0
            && self.ejected_until.swap(0, Ordering::Relaxed) != 0
        {
            self.transition(Transition::Returned, "a request to it succeeded");
        }
    }

    /// A request to it failed (no answer, or a 5xx): counted towards ejection.
    pub(super) fn failed(&self, eject: Option<Eject>, why: &str) {
        let now = now_ms();
        self.last_failure.store(now, Ordering::Relaxed);
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let Some(eject) = eject else { return };
        if failures < eject.consecutive_failures || self.is_ejected(now) {
            return;
        }
        self.failures.store(0, Ordering::Relaxed);
        let doublings = self
            .ejections
            .fetch_add(1, Ordering::Relaxed)
            .min(MAX_BACKOFF_DOUBLINGS);
        let lasts = eject.duration.saturating_mul(1 << doublings);
        self.ejected_until
            .store(now + lasts.as_millis() as u64, Ordering::Relaxed);
        self.transition(
            Transition::Ejected,
            &format!("{failures} failures in a row, the last: {why}; out for {lasts:?}"),
        );
    }

    /// Called every second: an ejection whose time has run out ends (logged once), and the
    /// gauge says what balancing sees.
    pub(super) fn tick(&self, now: u64) {
        let until = self.ejected_until.load(Ordering::Relaxed);
        if until != 0
            && until <= now
            && self
                .ejected_until
                .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.transition(Transition::Returned, "its ejection time ran out");
        }
        self.telemetry
            .metrics
            .target_up(&self.upstream, &self.url, self.is_available(now));
    }

    /// A health check passed: a passive ejection ends with it (as Envoy's
    /// `successful_active_health_check_uneject_host`), so a restarted target is back within the
    /// checks' `healthy_after` rather than the rest of its ejection.
    pub(super) fn check_passed(&self) {
        if self.ejected_until.load(Ordering::Relaxed) != 0
            && self.ejected_until.swap(0, Ordering::Relaxed) != 0
        {
            self.failures.store(0, Ordering::Relaxed);
            self.transition(Transition::Returned, "its health check passed");
        }
    }

    /// The health checks' verdict changed (or was repeated: then nothing happens).
    pub(super) fn set_check_down(&self, down: bool, why: &str) {
        if self.check_down.swap(down, Ordering::Relaxed) != down {
            let to = if down {
                Transition::Unhealthy
            } else {
                Transition::Healthy
            };
            self.transition(to, why);
        }
    }

    fn transition(&self, to: Transition, why: &str) {
        match to {
            Transition::Unhealthy | Transition::Ejected => tracing::warn!(
                upstream = &*self.upstream,
                target = &*self.url,
                state = to.as_str(),
                "upstream target out of rotation: {why}"
            ),
            Transition::Healthy | Transition::Returned => tracing::info!(
                upstream = &*self.upstream,
                target = &*self.url,
                state = to.as_str(),
                "upstream target back in rotation: {why}"
            ),
        }
        self.telemetry
            .metrics
            .target_transition(&self.upstream, &self.url, to.as_str());
        self.telemetry
            .metrics
            .target_up(&self.upstream, &self.url, self.is_available(now_ms()));
    }

    /// Stops its health check, if one runs; without checks it counts as passing.
    pub(super) fn stop_checker(&self) {
        let mut checker = self.checker.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = checker.take() {
            running.task.abort();
        }
        self.check_down.store(false, Ordering::Relaxed);
    }

    pub(super) fn status(&self, weight: u32, checked: bool) -> TargetStatus {
        let now = now_ms();
        let until = self.ejected_until.load(Ordering::Relaxed);
        TargetStatus {
            upstream: self.upstream.to_string(),
            url: self.url.to_string(),
            weight,
            healthy: self.is_available(now),
            health_check: checked.then(|| {
                if self.check_down.load(Ordering::Relaxed) {
                    "failing"
                } else {
                    "passing"
                }
            }),
            ejected_for_seconds: (until > now)
                .then(|| Duration::from_millis(until - now).as_secs_f64()),
            outstanding: self.outstanding.load(Ordering::Relaxed),
            consecutive_failures: self.failures.load(Ordering::Relaxed),
        }
    }
}

impl Drop for TargetState {
    fn drop(&mut self) {
        let checker = self.checker.get_mut().unwrap_or_else(|e| e.into_inner());
        if let Some(running) = checker.take() {
            running.task.abort();
        }
    }
}

/// What `/status` shows of a target.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TargetStatus {
    pub upstream: String,
    pub url: String,
    pub weight: u32,
    /// Balancing may choose it: health checks pass (or none run) and it is not ejected.
    pub healthy: bool,
    /// What the health checks say ("passing", "failing"); `None` when none run.
    pub health_check: Option<&'static str>,
    /// Seconds of ejection left; `None` when not ejected.
    pub ejected_for_seconds: Option<f64>,
    pub outstanding: u32,
    pub consecutive_failures: u32,
}
