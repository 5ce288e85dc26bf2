//! The gateway's Prometheus metrics, in a registry of its own (not the process-global recorder),
//! so that several gateways in one process, as in the tests, never mix their counts.

use std::sync::Arc;
use std::time::Duration;

use metrics::{Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use super::names;
use super::series::Series;

pub use super::names::{
    ADMIN_LOGINS, ALL, CONFIG_GENERATION, CONNECTIONS_REFUSED, NONE, OPEN_CONNECTIONS,
    PROTOCOL_REQUESTS, RELOADS, REQUEST_DURATION, REQUEST_LOG_DROPPED, REQUESTS, SHADOW_REFUSALS,
    TARGET_TRANSITIONS, TARGET_UP, TLS_CERTIFICATE_EXPIRY, TLS_HANDSHAKE_FAILURES, TLS_HANDSHAKES,
    UPSTREAM_DURATION, UPSTREAM_ERRORS, UPSTREAM_RETRIES, WEBSOCKET_SECONDS, WEBSOCKETS,
    WEBSOCKETS_OPEN,
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
    /// Requests by protocol and transport, registered once: h1/tcp, h1/tls, h2/tcp, h2/tls.
    protocols: [metrics::Counter; 4],
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
        let protocols = [("h1", "tcp"), ("h1", "tls"), ("h2", "tcp"), ("h2", "tls")].map(
            |(protocol, transport)| {
                let labels = vec![
                    Label::from_static_parts("protocol", protocol),
                    Label::from_static_parts("transport", transport),
                ];
                recorder.register_counter(&Key::from_parts(PROTOCOL_REQUESTS, labels), &METADATA)
            },
        );
        let metrics = Metrics {
            recorder,
            handle,
            series: Series::default(),
            protocols,
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
            TARGET_UP,
            TARGET_TRANSITIONS,
            UPSTREAM_RETRIES,
            WEBSOCKETS,
            WEBSOCKETS_OPEN,
            WEBSOCKET_SECONDS,
            REQUEST_LOG_DROPPED,
            TLS_HANDSHAKES,
            TLS_HANDSHAKE_FAILURES,
            PROTOCOL_REQUESTS,
        ];
        for name in described {
            let text: metrics::SharedString = names::help(name).into();
            let name = metrics::KeyName::from_const_str(name);
            match name.as_str() {
                REQUESTS
                | UPSTREAM_ERRORS
                | RELOADS
                | ADMIN_LOGINS
                | CONNECTIONS_REFUSED
                | TARGET_TRANSITIONS
                | UPSTREAM_RETRIES
                | WEBSOCKETS
                | REQUEST_LOG_DROPPED
                | TLS_HANDSHAKES
                | TLS_HANDSHAKE_FAILURES
                | PROTOCOL_REQUESTS => self.recorder.describe_counter(name, None, text),
                WEBSOCKET_SECONDS => {
                    self.recorder
                        .describe_histogram(name, Some(metrics::Unit::Seconds), text)
                }
                CONFIG_GENERATION | OPEN_CONNECTIONS | TARGET_UP | WEBSOCKETS_OPEN => {
                    self.recorder.describe_gauge(name, None, text)
                }
                _ => unreachable!("the other histograms are per-request series"),
            }
        }
        // Gauges exist from the start, so a scrape before any traffic already shows them.
        self.gauge(OPEN_CONNECTIONS).set(0.0);
        self.gauge(WEBSOCKETS_OPEN).set(0.0);
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

    /// One request answered over `protocol` (`h1` or `h2`), on TLS or plain TCP.
    pub fn protocol(&self, protocol: &str, tls: bool) {
        let index = usize::from(protocol == "h2") * 2 + usize::from(tls);
        self.protocols[index].increment(1);
    }

    /// A completed TLS handshake; `session` says whether it was `full` or `resumed` a session.
    pub fn tls_handshake(
        &self,
        version: &'static str,
        protocol: &'static str,
        session: &'static str,
    ) {
        let labels = vec![
            Label::from_static_parts("version", version),
            Label::from_static_parts("protocol", protocol),
            Label::from_static_parts("session", session),
        ];
        self.recorder
            .register_counter(&Key::from_parts(TLS_HANDSHAKES, labels), &METADATA)
            .increment(1);
    }

    /// A TLS connection that ended before its handshake completed.
    pub fn tls_handshake_failure(&self, reason: &'static str) {
        let labels = vec![Label::from_static_parts("reason", reason)];
        self.recorder
            .register_counter(&Key::from_parts(TLS_HANDSHAKE_FAILURES, labels), &METADATA)
            .increment(1);
    }

    pub fn set_generation(&self, generation: u64) {
        self.gauge(CONFIG_GENERATION).set(generation as f64);
    }

    /// An admitted request of `user` in `group` that the group's `shadow_allow` would refuse.
    pub fn shadow_refusal(&self, user: &Arc<str>, group: &str) {
        let labels = vec![
            Label::new("user", Arc::clone(user)),
            Label::new("group", group.to_string()),
        ];
        self.recorder
            .register_counter(&Key::from_parts(SHADOW_REFUSALS, labels), &METADATA)
            .increment(1);
    }

    /// A new client connection closed at once, for `reason`.
    pub fn connection_refused(&self, reason: &'static str) {
        self.counter_of(CONNECTIONS_REFUSED, "reason", reason)
            .increment(1);
    }

    /// Whether balancing may choose a target now.
    pub fn target_up(&self, upstream: &Arc<str>, target: &str, up: bool) {
        let labels = vec![
            Label::new("upstream", Arc::clone(upstream)),
            Label::new("target", target.to_string()),
        ];
        self.recorder
            .register_gauge(&Key::from_parts(TARGET_UP, labels), &METADATA)
            .set(if up { 1.0 } else { 0.0 });
    }

    /// A target entered state `to`.
    pub fn target_transition(&self, upstream: &Arc<str>, target: &str, to: &'static str) {
        let labels = vec![
            Label::new("upstream", Arc::clone(upstream)),
            Label::new("target", target.to_string()),
            Label::from_static_parts("to", to),
        ];
        self.recorder
            .register_counter(&Key::from_parts(TARGET_TRANSITIONS, labels), &METADATA)
            .increment(1);
    }

    /// A request was sent again, to another target of `upstream`.
    pub fn upstream_retry(&self, upstream: &Arc<str>) {
        let labels = vec![Label::new("upstream", Arc::clone(upstream))];
        self.recorder
            .register_counter(&Key::from_parts(UPSTREAM_RETRIES, labels), &METADATA)
            .increment(1);
    }

    /// A WebSocket connection on `route` began relaying.
    pub fn websocket_opened(&self, route: &Arc<str>) {
        let labels = vec![Label::new("route", Arc::clone(route))];
        self.recorder
            .register_counter(&Key::from_parts(WEBSOCKETS, labels), &METADATA)
            .increment(1);
        self.gauge(WEBSOCKETS_OPEN).increment(1.0);
    }

    /// A WebSocket connection on `route` ended after `lasted`.
    pub fn websocket_closed(&self, route: &Arc<str>, lasted: Duration) {
        let labels = vec![Label::new("route", Arc::clone(route))];
        self.recorder
            .register_histogram(&Key::from_parts(WEBSOCKET_SECONDS, labels), &METADATA)
            .record(lasted.as_secs_f64());
        self.gauge(WEBSOCKETS_OPEN).decrement(1.0);
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

/// Each loaded certificate's not-after time, from the snapshot serving (so a certificate that
/// is replaced or removed leaves no stale series behind).
pub fn render_certificates(out: &mut String, snapshot: &crate::snapshot::Snapshot) {
    use std::fmt::Write;
    let Some(tls) = &snapshot.tls else { return };
    let _ = writeln!(
        out,
        "# HELP {TLS_CERTIFICATE_EXPIRY} {}\n# TYPE {TLS_CERTIFICATE_EXPIRY} gauge",
        names::help(TLS_CERTIFICATE_EXPIRY)
    );
    for c in tls.certificates() {
        let name = c.names.first().map_or("", String::as_str);
        let file = c.cert_file.display().to_string();
        let _ = writeln!(
            out,
            "{TLS_CERTIFICATE_EXPIRY}{{name=\"{}\",file=\"{}\"}} {}",
            escape(name),
            escape(&file),
            c.not_after
        );
    }
}

fn escape(label: &str) -> String {
    label
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
