//! The gateway's Prometheus metrics, in a registry of its own (not the process-global recorder),
//! so that several gateways in one process, as in the tests, never mix their counts.

use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use metrics::{Key, Label, Metadata, Recorder};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

pub const REQUESTS: &str = "apiward_requests_total";
pub const REQUEST_DURATION: &str = "apiward_request_duration_seconds";
pub const UPSTREAM_DURATION: &str = "apiward_upstream_duration_seconds";
pub const UPSTREAM_ERRORS: &str = "apiward_upstream_errors_total";
pub const RELOADS: &str = "apiward_reloads_total";
pub const CONFIG_GENERATION: &str = "apiward_config_generation";
pub const OPEN_CONNECTIONS: &str = "apiward_open_connections";

/// Every metric name exported, for documentation and tests.
pub const ALL: [&str; 7] = [
    REQUESTS,
    REQUEST_DURATION,
    UPSTREAM_DURATION,
    UPSTREAM_ERRORS,
    RELOADS,
    CONFIG_GENERATION,
    OPEN_CONNECTIONS,
];

static METADATA: Metadata<'static> = Metadata::new("apiward", metrics::Level::INFO, None);

/// Label value used when a request had no user or no route.
pub const NONE: &str = "none";

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
    request_handles:
        DashMap<RequestKey, RequestHandles, BuildHasherDefault<crate::snapshot::DigestHasher>>,
}

/// Identifies a request's label set by the addresses of its parts: the user id and route prefix
/// are `Arc<str>`s of the snapshot (kept alive by the cached entry, so an address is never
/// reused while it is a key), the decision and status class are `'static` strings.
#[derive(Clone, Copy, PartialEq, Eq)]
struct RequestKey {
    user: usize,
    route: usize,
    decision: usize,
    class: usize,
}

impl Hash for RequestKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // One well-mixed word, for the identity hasher behind the map.
        let mut h = self.user as u64;
        for part in [self.route, self.decision, self.class] {
            h = (h ^ part as u64)
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .rotate_left(29);
        }
        state.write_u64(h);
    }
}

struct RequestHandles {
    requests: metrics::Counter,
    total: metrics::Histogram,
    upstream: metrics::Histogram,
    _user: Option<Arc<str>>,
    _route: Option<Arc<str>>,
}

impl RequestHandles {
    fn record(&self, total: Duration, upstream: Option<Duration>) {
        self.requests.increment(1);
        self.total.record(total.as_secs_f64());
        if let Some(u) = upstream {
            self.upstream.record(u.as_secs_f64());
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let buckets = [
            0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            5.0, 10.0, 30.0,
        ];
        let recorder = PrometheusBuilder::new()
            .set_buckets(&buckets)
            .map(PrometheusBuilder::build_recorder)
            .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder());
        let handle = recorder.handle();
        let metrics = Metrics {
            recorder,
            handle,
            request_handles: DashMap::default(),
        };
        metrics.describe();
        metrics
    }

    fn describe(&self) {
        let help = [
            (
                REQUESTS,
                "Requests by API user, route, decision (allowed or the error code) and status class.",
            ),
            (
                REQUEST_DURATION,
                "Time from a request's head to the end of its response, by route.",
            ),
            (
                UPSTREAM_DURATION,
                "Time from forwarding a request to the upstream's response head, by route.",
            ),
            (
                UPSTREAM_ERRORS,
                "Upstream requests that failed, by upstream and kind (connect, timeout, other).",
            ),
            (
                RELOADS,
                "Configuration reloads by outcome (applied, refused, missing).",
            ),
            (
                CONFIG_GENERATION,
                "Generation of the configuration serving now; 1 is the file loaded at start.",
            ),
            (OPEN_CONNECTIONS, "Client connections open now."),
        ];
        for (name, text) in help {
            let name = metrics::KeyName::from_const_str(name);
            let text: metrics::SharedString = text.into();
            match name.as_str() {
                REQUESTS | UPSTREAM_ERRORS | RELOADS => {
                    self.recorder.describe_counter(name, None, text)
                }
                CONFIG_GENERATION | OPEN_CONNECTIONS => {
                    self.recorder.describe_gauge(name, None, text)
                }
                _ => self
                    .recorder
                    .describe_histogram(name, Some(metrics::Unit::Seconds), text),
            }
        }
        // Gauges exist from the start, so a scrape before any traffic already shows them.
        self.gauge(OPEN_CONNECTIONS).set(0.0);
    }

    /// The Prometheus text exposition of everything recorded.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    fn gauge(&self, name: &'static str) -> metrics::Gauge {
        self.recorder
            .register_gauge(&Key::from_static_name(name), &METADATA)
    }

    /// One finished request. The metric handles for a (user, route, decision, status class)
    /// are looked up once and cached, so a request costs a map lookup and three atomic updates,
    /// not three label sets built, copied and hashed by the registry.
    pub fn request(
        &self,
        user: Option<&Arc<str>>,
        route: Option<&Arc<str>>,
        decision: &'static str,
        status: u16,
        total: Duration,
        upstream: Option<Duration>,
    ) {
        let class = status_class(status);
        let key = RequestKey {
            user: user.map_or(0, |u| Arc::as_ptr(u) as *const u8 as usize),
            route: route.map_or(0, |r| Arc::as_ptr(r) as *const u8 as usize),
            decision: decision.as_ptr() as usize,
            class: class.as_ptr() as usize,
        };
        if let Some(handles) = self.request_handles.get(&key) {
            handles.record(total, upstream);
            return;
        }
        let handles = self.register_request(user, route, decision, class);
        handles.record(total, upstream);
        self.request_handles.insert(key, handles);
    }

    fn register_request(
        &self,
        user: Option<&Arc<str>>,
        route: Option<&Arc<str>>,
        decision: &'static str,
        class: &'static str,
    ) -> RequestHandles {
        let route_label = || match route {
            Some(r) => Label::new("route", Arc::clone(r)),
            None => Label::from_static_parts("route", NONE),
        };
        let labels = vec![
            match user {
                Some(u) => Label::new("user", Arc::clone(u)),
                None => Label::from_static_parts("user", NONE),
            },
            route_label(),
            Label::from_static_parts("decision", decision),
            Label::from_static_parts("status_class", class),
        ];
        RequestHandles {
            requests: self
                .recorder
                .register_counter(&Key::from_parts(REQUESTS, labels), &METADATA),
            total: self.recorder.register_histogram(
                &Key::from_parts(REQUEST_DURATION, vec![route_label()]),
                &METADATA,
            ),
            upstream: self.recorder.register_histogram(
                &Key::from_parts(UPSTREAM_DURATION, vec![route_label()]),
                &METADATA,
            ),
            _user: user.cloned(),
            _route: route.cloned(),
        }
    }

    /// Drops the cached handles; the counts stay in the registry. Called after a reload, whose
    /// new snapshot has new user and route ids.
    pub fn forget_handles(&self) {
        self.request_handles.clear();
    }

    /// Folds recorded histogram samples into their buckets. Without it they pile up until the
    /// next scrape; the gateway runs it every few seconds.
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
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
