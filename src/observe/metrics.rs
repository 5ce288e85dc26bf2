//! The gateway's Prometheus metrics, in a registry of its own (not the process-global recorder),
//! so that several gateways in one process, as in the tests, never mix their counts.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use super::names;
use super::series::Series;

pub use super::names::{
    ADMIN_LOGINS, ALL, CONFIG_GENERATION, CONNECTIONS_REFUSED, NONE, OPEN_CONNECTIONS, RELOADS,
    REQUEST_DURATION, REQUEST_LOG_DROPPED, REQUESTS, UPSTREAM_DURATION, UPSTREAM_ERRORS,
};

static METADATA: Metadata<'static> = Metadata::new("apiward", metrics::Level::INFO, None);

/// Why an upstream request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    Connect,
    Timeout,
    Other,
}

impl UpstreamErrorKind {
    fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::Other => "other",
        }
    }
}

pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// The per-request series, outside the recorder (see `series.rs`).
    series: Series,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        // It keeps no histogram: the two duration histograms are per-request series.
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let metrics = Metrics {
            recorder,
            handle,
            series: Series::default(),
        };
        metrics.describe();
        metrics
    }

    fn describe(&self) {
        // The per-request series are described where they are rendered (`series.rs`).
        let described = [
            UPSTREAM_ERRORS,
            RELOADS,
            CONFIG_GENERATION,
            OPEN_CONNECTIONS,
            ADMIN_LOGINS,
            CONNECTIONS_REFUSED,
            REQUEST_LOG_DROPPED,
        ];
        for name in described {
            let text: metrics::SharedString = names::help(name).into();
            let name = metrics::KeyName::from_const_str(name);
            match name.as_str() {
                REQUESTS | UPSTREAM_ERRORS | RELOADS | ADMIN_LOGINS | CONNECTIONS_REFUSED
                | REQUEST_LOG_DROPPED => self.recorder.describe_counter(name, None, text),
                CONFIG_GENERATION | OPEN_CONNECTIONS => {
                    self.recorder.describe_gauge(name, None, text)
                }
                _ => unreachable!("no histogram is kept by the recorder"),
            }
        }
        // Gauges exist from the start, so a scrape before any traffic already shows them.
        self.gauge(OPEN_CONNECTIONS).set(0.0);
        self.request_log_dropped().absolute(0);
        // Failed logins and refused connections are worth an alert from zero on, so the series
        // exist before the first.
        for outcome in ["success", "failure", "throttled"] {
            self.counter_of(ADMIN_LOGINS, "outcome", outcome)
                .increment(0);
        }
        for reason in ["max_connections", "max_connections_per_source"] {
            self.counter_of(CONNECTIONS_REFUSED, "reason", reason)
                .increment(0);
        }
    }

    fn counter_of(
        &self,
        name: &'static str,
        label: &'static str,
        value: &'static str,
    ) -> metrics::Counter {
        let labels = vec![Label::from_static_parts(label, value)];
        self.recorder
            .register_counter(&Key::from_parts(name, labels), &METADATA)
    }

    /// Counts a console login attempt: `success`, `failure` or `throttled`.
    pub fn admin_login(&self, outcome: &'static str) {
        self.counter_of(ADMIN_LOGINS, "outcome", outcome)
            .increment(1);
    }

    /// The Prometheus text exposition of everything recorded.
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        self.series.render(&mut text, names::help);
        text
    }

    fn gauge(&self, name: &'static str) -> metrics::Gauge {
        self.recorder
            .register_gauge(&Key::from_static_name(name), &METADATA)
    }

    /// One finished request: a count and two durations, each an increment of this thread's own
    /// cells (`series.rs`), with no atomic read-modify-write.
    pub fn request(
        &self,
        user: Option<&Arc<str>>,
        route: Option<&Arc<str>>,
        decision: &'static str,
        status: u16,
        total: Duration,
        upstream: Option<Duration>,
    ) {
        self.series
            .record(user, route, decision, status_class(status), total, upstream);
    }

    /// Drops the cached cells of every thread; the counts stay. Called after a reload, whose
    /// new snapshot has new user and route ids.
    pub fn forget_handles(&self) {
        self.series.forget();
    }

    pub fn upstream_error(&self, upstream: &Arc<str>, kind: UpstreamErrorKind) {
        let labels = vec![
            Label::new("upstream", Arc::clone(upstream)),
            Label::from_static_parts("kind", kind.as_str()),
        ];
        self.recorder
            .register_counter(&Key::from_parts(UPSTREAM_ERRORS, labels), &METADATA)
            .increment(1);
    }

    pub fn reload(&self, outcome: &'static str) {
        let labels = vec![Label::from_static_parts("outcome", outcome)];
        self.recorder
            .register_counter(&Key::from_parts(RELOADS, labels), &METADATA)
            .increment(1);
    }

    pub fn set_generation(&self, generation: u64) {
        self.gauge(CONFIG_GENERATION).set(generation as f64);
    }

    /// A new client connection closed at once, for `reason`.
    pub fn connection_refused(&self, reason: &'static str) {
        self.counter_of(CONNECTIONS_REFUSED, "reason", reason)
            .increment(1);
    }

    /// The count of request log lines dropped; a handle the log's threads keep.
    pub fn request_log_dropped(&self) -> metrics::Counter {
        self.recorder
            .register_counter(&Key::from_static_name(REQUEST_LOG_DROPPED), &METADATA)
    }

    pub fn open_connections(&self) -> metrics::Gauge {
        self.gauge(OPEN_CONNECTIONS)
    }
}

fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}
